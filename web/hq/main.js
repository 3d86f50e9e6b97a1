// The HQ dashboard: sign-in, then four views (overview = stores and charts, conversations,
// search, settings); conversations and search share one transcript pane. The view is kept in the URL hash so a reload or the back
// button returns to it.

import { applyTranslations, langSwitch, onLangChange, t } from "/common/i18n.js";
import "./strings.js";
import { current, login, clear, onExpired } from "./session.js";
import { mountStores, startStores, stopStores } from "./stores.js";
import { mountCharts, startCharts, stopCharts, onIntents } from "./charts.js";
import { mountConversations, showConversations, setKnownIntents, markSelected } from "./conversations.js";
import { mountSearch, focusSearch } from "./search.js";
import { mountTranscript, onTranscriptClosed } from "./transcript.js";
import { mountSettings, showSettings } from "./settings.js";

const VIEWS = ["overview", "conversations", "search", "settings"];
const $ = (id) => document.getElementById(id);

function boot() {
  applyTranslations();
  $("lang-slot").append(langSwitch());
  onLangChange(() => { document.title = t("app.pageTitle"); showWho(); });
  document.title = t("app.pageTitle");

  mountStores($("stores"));
  mountCharts($("figures"));
  mountConversations($("conversations"));
  mountSearch($("search"));
  mountTranscript($("transcript-pane"));
  mountSettings($("settings-view"));
  onIntents(setKnownIntents);
  onTranscriptClosed(() => markSelected(null));

  $("login-form").addEventListener("submit", submitLogin);
  $("logout").addEventListener("click", logout);
  onExpired(() => showLogin(t("login.expired")));
  window.addEventListener("hashchange", showView);

  if (current()) showApp();
  else showLogin();
}

async function submitLogin(e) {
  e.preventDefault();
  const error = $("login-error");
  const button = $("login-submit");
  error.classList.add("hidden");
  button.disabled = true;
  try {
    await login($("login-username").value.trim(), $("login-password").value);
    $("login-password").value = "";
    showApp();
  } catch (err) {
    error.textContent = err.code === "invalid_credentials" ? t("login.invalid")
      : err.code === "network" ? t("error.network") : t("login.failed", { message: err.message });
    error.classList.remove("hidden");
  } finally {
    button.disabled = false;
  }
}

function logout() {
  clear();
  showLogin();
}

function showLogin(message) {
  stopStores();
  stopCharts();
  $("app").classList.add("hidden");
  $("tabs").classList.add("hidden");
  $("logout").classList.add("hidden");
  $("who").classList.add("hidden");
  $("login-view").classList.remove("hidden");
  const error = $("login-error");
  error.textContent = message || "";
  error.classList.toggle("hidden", !message);
  $("login-username").focus();
}

function showApp() {
  $("login-view").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("tabs").classList.remove("hidden");
  $("logout").classList.remove("hidden");
  showWho();
  startStores();
  startCharts();
  showView();
}

function showWho() {
  const s = current();
  const who = $("who");
  if (!s) return;
  who.textContent = `${s.account.username} · ${t(`role.${s.account.role}`)}`;
  who.classList.remove("hidden");
}

function showView() {
  const name = location.hash.slice(1);
  const view = VIEWS.includes(name) ? name : "overview";
  document.body.dataset.view = view;
  for (const el of document.querySelectorAll(".view")) el.classList.toggle("hidden", el.dataset.view !== view);
  for (const a of document.querySelectorAll("#tabs a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  $("work").classList.toggle("hidden", view === "overview" || view === "settings");
  if (view === "conversations") showConversations();
  if (view === "search") focusSearch();
  if (view === "settings") showSettings();
}

boot();
