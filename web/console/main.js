// Entry point of the staff console: login, then the chat console or (admins) the store admin
// page or the store's settings, chosen by the URL hash (#admin, #settings). Wires the socket, the model and the views together.

import "./strings.js";
import { t, langSwitch, applyTranslations, onLangChange } from "/common/i18n.js";
import { api } from "/common/api.js";
import { $ } from "./dom.js";
import * as auth from "./auth.js";
import { Session } from "./session.js";
import { Model } from "./model.js";
import { mountQueue } from "./queue.js";
import { mountConversation } from "./conversation.js";
import { mountAssist } from "./assist.js";
import { mountHistory } from "./history.js";
import { mountAdmin } from "./admin.js";
import { mountSettings } from "./settings.js";
import { watchHub } from "./health.js";

let app = null; // the signed-in console: {token, staff, session, model, views…}

function show(view) {
  for (const id of ["login-view", "console-view", "admin-view", "settings-view"]) $(`#${id}`).classList.toggle("hidden", id !== view);
  const signedIn = view !== "login-view";
  $("#topnav").classList.toggle("hidden", !signedIn);
  $("#logout").classList.toggle("hidden", !signedIn);
  $("#conn-state").classList.toggle("hidden", !signedIn);
  $("#nav-console").setAttribute("aria-current", view === "console-view" ? "page" : "false");
  $("#nav-admin").setAttribute("aria-current", view === "admin-view" ? "page" : "false");
  $("#nav-settings").setAttribute("aria-current", view === "settings-view" ? "page" : "false");
}

// ---- login -------------------------------------------------------------------------------

function showLogin(noticeKey = null) {
  show("login-view");
  $("#who").textContent = "";
  const notice = $("#login-notice");
  notice.classList.toggle("hidden", !noticeKey);
  if (noticeKey) notice.dataset.i18n = noticeKey; else delete notice.dataset.i18n;
  applyTranslations($("#login-view"));
  $("#login-error").classList.add("hidden");
  $("#login-password").value = "";
  $("#login-username").focus();
}

let loginErrorKey = null;
let loginErrorVars = {};
function renderLoginError() {
  const el = $("#login-error");
  el.classList.toggle("hidden", !loginErrorKey);
  el.textContent = loginErrorKey ? t(loginErrorKey, loginErrorVars) : "";
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const username = $("#login-username").value.trim();
  const password = $("#login-password").value;
  const submit = $("#login-submit");
  submit.disabled = true;
  submit.textContent = t("login.busy");
  try {
    const { token, staff } = await auth.login(username, password);
    loginErrorKey = null;
    renderLoginError();
    start(token, staff);
  } catch (err) {
    loginErrorKey = ["invalid_credentials", "rate_limited", "network"].includes(err.code) ? `login.error.${err.code}` : "login.error.other";
    loginErrorVars = { message: err.message || err.code };
    renderLoginError();
    $("#login-password").select();
  }
  submit.disabled = false;
  submit.textContent = t("login.submit");
});

// ---- signed in ---------------------------------------------------------------------------

function renderConn(status) {
  const el = $("#conn-state");
  el.className = `conn-state ${status.state}`;
  el.textContent = status.state === "offline"
    ? t("conn.offline", { secs: Math.ceil((status.retryInMs || 0) / 1000) })
    : t(status.state === "online" ? "conn.online" : "conn.connecting");
  el.dataset.state = status.state;
}

function start(token, staff) {
  stop();
  let connStatus = { state: "connecting" };
  const staffNames = new Map();
  const session = new Session(token, {
    onFrame: (frame) => model.handle(frame),
    onStatus: (s) => { connStatus = s; renderConn(s); },
    onFatal: () => { auth.forget(); stop(); showLogin("login.session_ended"); },
  });
  const model = new Model(session, token);
  const open = (id) => {
    model.open(id);
    conversation.open(id);
    assist.open(id);
    customerHistory.open(id);
    queue.render();
  };
  const queue = mountQueue($("#lists"), model, { onOpen: open });
  const conversation = mountConversation($("#conversation"), model, {
    token,
    staffName: (id) => staffNames.get(id),
    onActed: (id) => queue.showTabOf(id),
  });
  const assist = mountAssist($("#assist-panel"), model, { onSuggestion: (text) => conversation.insert(text) });
  const customerHistory = mountHistory($("#customer-history"), $("#transcript-dialog"), model, { token });
  const admin = mountAdmin($("#admin-view"), { token, me: staff, onCannedChanged: () => { conversation.refreshCanned(); assist.refreshCanned(); } });
  const settings = mountSettings($("#settings-view"), { token });
  const unsubscribeLang = onLangChange(() => { renderConn(connStatus); renderWho(); });

  // Names of colleagues for staff messages in the history (transfers bring their messages).
  api("/api/staff", { token }).then((res) => { for (const s of res.staff || []) staffNames.set(s.id, s.name); conversation.render(); }).catch(() => {});

  app = { token, staff, session, model, queue, conversation, admin, settings, unsubscribeLang };
  function renderWho() { $("#who").textContent = t("nav.signed_in_as", { name: app.staff.name }); }
  renderWho();
  $("#nav-admin").classList.toggle("hidden", staff.role !== "admin");
  $("#nav-settings").classList.toggle("hidden", staff.role !== "admin");
  session.start();
  conversation.open(null);
  route();
  if (!$("#console-view").classList.contains("hidden")) $("#tab-queue").focus();
}

function stop() {
  if (!app) return;
  app.session.close();
  app.queue.destroy();
  app.unsubscribeLang();
  app = null;
}

/** #admin shows the admin page, #settings the store's settings (admins only); anything else the console. */
function route() {
  if (!app) return;
  if (location.hash === "#admin" && app.staff.role === "admin") {
    show("admin-view");
    app.admin.show();
  } else if (location.hash === "#settings" && app.staff.role === "admin") {
    show("settings-view");
    app.settings.show();
  } else {
    show("console-view");
    app.conversation.render();
  }
}

window.addEventListener("hashchange", route);
$("#nav-admin").addEventListener("click", () => { location.hash = "#admin"; });
// Opening the view again (already at #settings: no hashchange) still refreshes it.
$("#nav-settings").addEventListener("click", () => { if (location.hash === "#settings") route(); else location.hash = "#settings"; });
$("#nav-console").addEventListener("click", () => {
  if (location.hash === "#admin" || location.hash === "#settings") history.pushState(null, "", location.pathname);
  route();
});
$("#logout").addEventListener("click", async () => {
  const token = app && app.token;
  stop();
  showLogin();
  if (token) await auth.logout(token);
});

// ---- boot --------------------------------------------------------------------------------

$("#lang-slot").replaceWith(langSwitch());
applyTranslations();
onLangChange(() => { renderLoginError(); document.title = t("app.title"); });
document.title = t("app.title");
watchHub($("#hub-banner"));

(async () => {
  const token = auth.savedToken();
  if (token) {
    try {
      const staff = await auth.resume(token);
      if (staff) { start(token, staff); return; }
    } catch { /* the appliance is unreachable: sign in again once it is back */ }
  }
  showLogin();
})();
