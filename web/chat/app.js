// The customer chat page (`/chat`, `/h/{code}`): decides what to show first — the start form
// on a first visit, the conversation when this device remembers one, or the redemption of a
// hand-off code from the link — and wires the composer, photos, typing, read receipts and the
// hand-off panel to the session.

import "./strings.js";
import { t, applyTranslations, langSwitch, onLangChange } from "/common/i18n.js";
import { ChatSession } from "./session.js";
import { ChatView } from "./view.js";
import { HandoffPanel, codeFromPath, normalizeCode, redeem, redeemErrorText } from "./handoff.js";
import { uploadImage } from "./attach.js";
import { isKiosk, watchIdle } from "./kiosk.js";

/** After this long without a keystroke the staff's "typing…" line is switched off. */
const TYPING_IDLE_MS = 4_000;
/** While typing goes on, `typing: true` is repeated this often (the staff side expires it). */
const TYPING_REPEAT_MS = 3_000;

const $ = (sel) => document.querySelector(sel);
const session = new ChatSession();
const view = new ChatView(document, session, {
  onRetry: (id) => session.retry(id),
  onDiscard: (id) => session.discard(id),
});
const panel = new HandoffPanel($("#handoff"), session);

const startEl = $("#start");
const chatEl = $("#chat");
const connEl = $("[data-testid=connection-state]");
const input = $("[data-testid=composer-input]");
const codeInput = $("[data-testid=handoff-input]");
const codeSubmit = $("[data-testid=handoff-submit]");
const codeError = $("#code-error");

if (new URLSearchParams(location.search).has("embed")) document.body.classList.add("embedded");
const kiosk = isKiosk();
if (kiosk) document.body.classList.add("kiosk");
$(".lang-slot").append(langSwitch());
applyTranslations();

// ---- screens ----

function showStart({ notice = "", codeOnly = false } = {}) {
  chatEl.classList.add("hidden");
  startEl.classList.remove("hidden");
  startEl.classList.toggle("code-only", codeOnly);
  $("#code-back").classList.toggle("hidden", !codeOnly);
  const n = $("#start-notice");
  n.textContent = notice;
  n.classList.toggle("hidden", !notice);
  if (!codeOnly) $("[data-testid=chat-name]").value = session.data.name || "";
}

function showChat() {
  startEl.classList.add("hidden");
  chatEl.classList.remove("hidden");
  view.renderHeader();
  view.render({ follow: true });
}

function renderConn() {
  connEl.dataset.state = session.status;
  connEl.textContent = t(`conn.${session.status}`);
}

// ---- session → page ----

session.on("status", renderConn);
session.on("reset", () => { view.events = []; panel.forget(); });
session.on("messages", () => { view.render(); markRead(); });
session.on("state", (frame, previous) => view.stateChanged(frame, previous));
session.on("typing", (frame) => view.setTyping(frame));
session.on("read", () => view.render());
session.on("ready", () => { view.renderHeader(); markRead(); });
session.on("expired", () => showStart({ notice: t("start.expired") }));
session.on("error", (f) => flashError(t("err.generic", { code: f.code })));

let errorTimer = null;
function flashError(text) {
  const e = $("#composer-error");
  e.textContent = text;
  e.classList.remove("hidden");
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => e.classList.add("hidden"), 6_000);
}

/** Read receipts only for what the customer can actually see. */
function markRead() {
  if (document.visibilityState === "visible" && !chatEl.classList.contains("hidden")) session.markRead();
}
document.addEventListener("visibilitychange", () => {
  markRead();
  // A phone waking up: do not wait for the backoff timer.
  if (document.visibilityState === "visible" && session.status === "offline" && session.hasToken) session.connectNow();
});

// ---- start, codes ----

$("#start-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("[data-testid=chat-name]").value.trim();
  showChat();
  session.start(name);
  input.focus();
});

async function useCode(code) {
  const clean = normalizeCode(code);
  codeError.classList.add("hidden");
  if (!clean) {
    codeError.textContent = t("code.empty");
    codeError.classList.remove("hidden");
    return;
  }
  codeSubmit.disabled = true;
  const n = $("#start-notice");
  n.textContent = t("code.redeeming");
  n.classList.remove("hidden");
  try {
    const res = await redeem(clean);
    codeInput.value = "";
    session.adopt(res);
    showChat();
  } catch (err) {
    n.classList.add("hidden");
    codeInput.value = clean;
    codeError.textContent = redeemErrorText(err);
    codeError.classList.remove("hidden");
  } finally {
    codeSubmit.disabled = false;
  }
}

$("#code-form").addEventListener("submit", (e) => {
  e.preventDefault();
  useCode(codeInput.value);
});
$("#have-code").addEventListener("click", () => { panel.close(); showStart({ codeOnly: true }); codeInput.focus(); });
$("#code-back").addEventListener("click", showChat);
function leave() {
  panel.close();
  session.forget();
  showStart();
}
$("#leave").addEventListener("click", () => { if (kiosk || confirm(t("leave.confirm"))) leave(); });
if (kiosk) watchIdle(leave, () => session.hasToken);
$("[data-testid=handoff-open]").addEventListener("click", () => panel.open());

// ---- composer ----

let typingActive = false;
let typingSentAt = 0;
let typingIdle = null;

function setTyping(active) {
  clearTimeout(typingIdle);
  if (active) {
    if (!typingActive || Date.now() - typingSentAt > TYPING_REPEAT_MS) {
      session.typing(true);
      typingSentAt = Date.now();
    }
    typingActive = true;
    typingIdle = setTimeout(() => setTyping(false), TYPING_IDLE_MS);
  } else if (typingActive) {
    typingActive = false;
    session.typing(false);
  }
}

function grow() {
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight, 160) + "px";
}

input.addEventListener("input", () => {
  grow();
  setTyping(input.value.trim() !== "");
});
input.addEventListener("blur", () => setTyping(false));
input.addEventListener("keydown", (e) => {
  // Enter sends, Shift+Enter is a new line; never while an IME (pinyin) is composing.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    $("#composer").requestSubmit();
  }
});
$("#composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const body = input.value.trim();
  if (!body) return;
  input.value = "";
  grow();
  setTyping(false);
  view.follow();
  session.send(body);
  view.render({ follow: true });
  input.focus();
});

$("[data-testid=attach-input]").addEventListener("change", (e) => {
  const files = [...e.target.files];
  e.target.value = "";
  for (const file of files) {
    const preview = URL.createObjectURL(file);
    session.send("", { upload: uploadImage(file, session.data.token), preview, fileName: file.name });
  }
  view.render({ follow: true });
});

// ---- language ----

onLangChange(() => {
  renderConn();
  view.renderHeader();
  view.renderTyping();
  view.render({ force: true });
  panel.render();
});

// ---- first screen ----

renderConn();
const linkCode = codeFromPath();
if (linkCode) {
  // The link is single use: drop it from the address bar so a reload does not redeem it again.
  history.replaceState(null, "", "/chat" + location.search);
  showStart();
  codeInput.value = normalizeCode(linkCode);
  useCode(linkCode);
} else if (session.hasToken) {
  showChat();
  session.start();
} else {
  showStart();
}
