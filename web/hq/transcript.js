// One conversation as the hub holds it: summary, then every message in display order with its
// sender and time. Opened from the conversation list and from search results into the same pane.
//
// Images stay at the store (the hub keeps the message, not the file), so an attachment is shown
// only when its URL is on this origin and loads; otherwise a placeholder says where it is. An
// image on another origin is never requested (the CSP would refuse it anyway).

import { t, onLangChange } from "/common/i18n.js";
import { h, fill } from "./dom.js";
import { hq } from "./session.js";
import { storeName, onStores } from "./stores.js";
import { dateTime, duration, statusName, intentName } from "./format.js";

let pane = null;
let body = null;
let state = null; // { id, data, error, highlight }
let loadSeq = 0;
let closeButton = null;
const NARROW = "(max-width: 1000px)"; // as in hq.css: the pane is an overlay there
const closeListeners = new Set();

export function mountTranscript(el) {
  pane = el;
  const close = h("button", { class: "close", type: "button", on: { click: closeTranscript } }, t("transcript.close"));
  close.dataset.i18n = "transcript.close";
  body = h("div", { class: "transcript-body" });
  fill(pane, h("div", { class: "pane-head" }, h("h2", { id: "transcript-heading", data: { i18n: "transcript.title" } }, t("transcript.title")), close), body);
  // On a narrow screen the pane covers the list: Escape and the close button bring it back.
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state) closeTranscript(); });
  closeButton = close;
  onLangChange(render);
  onStores(render);
  render();
}

export function onTranscriptClosed(fn) { closeListeners.add(fn); }

export function closeTranscript() {
  loadSeq++; // a load still on its way is dropped
  state = null;
  pane.classList.remove("open");
  render();
  for (const fn of closeListeners) fn();
}

/** Loads and shows conversation `id`; `highlight` is a message id to mark and scroll to. */
export async function openTranscript(id, { highlight = null } = {}) {
  const seq = ++loadSeq;
  state = { id, data: null, error: null, highlight };
  pane.classList.add("open");
  render();
  if (window.matchMedia(NARROW).matches) closeButton.focus();
  try {
    const data = await hq(`/api/conversations/${encodeURIComponent(id)}`);
    if (seq !== loadSeq) return;
    state.data = data;
  } catch (err) {
    if (seq !== loadSeq) return;
    state.error = err;
  }
  render();
  const hit = body.querySelector(".message.hit");
  if (hit) hit.scrollIntoView({ block: "center" });
}

function render() {
  if (!body) return;
  if (!state) {
    fill(body, h("p", { class: "empty" }, t("transcript.pick")));
    return;
  }
  if (state.error) {
    fill(body, h("p", { class: "error-text" }, state.error.status === 404 ? t("transcript.notFound") : t("error.load")));
    return;
  }
  if (!state.data) {
    fill(body, h("p", { class: "empty" }, t("loading")));
    return;
  }
  const { conversation: c, messages = [] } = state.data;
  const facts = [
    [t("col.store"), storeName(c.store_id)],
    [t("col.status"), statusName(c.status)],
    [t("col.agent"), c.agent_name || t("none")],
    [t("col.created"), dateTime(c.created_at_ms)],
    [t("col.firstResponse"), firstResponse(c)],
    [t("col.resolution"), c.resolved_at_ms ? duration(c.resolved_at_ms - c.created_at_ms) : t("none")],
    [t("col.intent"), intentName(c.intent)],
  ];
  fill(body,
    h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    h("p", { class: "muted small mono" }, c.id),
    messages.length
      ? h("ol", { class: "messages" }, messages.map((m, i) => message(m, i)))
      : h("p", { class: "empty" }, t("transcript.noMessages")));
}

export function firstResponse(c) {
  if (c.first_response_at_ms && c.first_customer_message_at_ms) {
    return duration(c.first_response_at_ms - c.first_customer_message_at_ms);
  }
  return c.first_customer_message_at_ms ? t("conv.waiting") : t("none");
}

function message(m, index) {
  const kind = m.sender?.kind || "system";
  const who = m.sender?.display_name;
  const hit = state.highlight && m.id === state.highlight;
  return h("li", {
    class: `message from-${kind}${hit ? " hit" : ""}`,
    testid: "message",
    data: { seq: String(index + 1), senderKind: kind, messageId: m.id },
  },
  h("div", { class: "meta" },
    h("span", { class: "kind" }, t(`sender.${kind}`)),
    who ? h("span", { class: "who" }, who) : null,
    h("time", { datetime: new Date(m.sent_at_ms).toISOString() }, dateTime(m.sent_at_ms))),
  m.body ? h("div", { class: "body", testid: "message-body" }, m.body) : null,
  m.attachment ? attachment(m.attachment) : null);
}

function attachment(a) {
  const placeholder = () => h("div", { class: "image-placeholder", role: "img", "aria-label": t("transcript.imageAtStore") },
    t("transcript.imageAtStore"));
  let url = null;
  try { url = a.url ? new URL(a.url, location.href) : null; } catch { url = null; }
  if (!url || url.origin !== location.origin) return placeholder();
  const img = h("img", { src: url.href, alt: t("transcript.image"), testid: "message-image", loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(placeholder()), { once: true });
  return img;
}
