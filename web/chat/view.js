// Drawing the conversation: the message list (server messages by seq, then the outbox with its
// sending / failed marks), the lines saying what happened to the chat (joined, closed,
// reopened), the single "Read" mark under the newest of the customer's messages the staff has
// read, the typing line and who is answering. Elements are keyed and only redrawn when their
// content changes, so a new message does not reload every image or lose the scroll position;
// the list follows new messages only while the customer is at the bottom.

import { t, lang, formatTime } from "/common/i18n.js";

const NEAR_BOTTOM_PX = 80;
/** A typing line nobody switched off (a lost `active:false`) disappears by itself. */
const TYPING_STALE_MS = 8_000;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

/** What a failed send says, by the server's error code. */
function failureText(code) {
  switch (code) {
    case "payload_too_large": return t("err.too_large");
    case "unsupported_media_type": return t("err.unsupported");
    case "message_too_long": return t("err.message_too_long");
    case "conversation_full": return t("err.conversation_full");
    case "timeout": case "network": return t("msg.failed");
    default: return t("err.generic", { code });
  }
}

export class ChatView {
  constructor(root, session, { onRetry, onDiscard }) {
    this.session = session;
    this.list = root.querySelector("#messages");
    this.scroller = root.querySelector("#scroller");
    this.emptyEl = root.querySelector("#empty");
    this.typingEl = root.querySelector("[data-testid=typing-indicator]");
    this.typingText = this.typingEl.querySelector(".typing-text");
    this.bannerEl = root.querySelector("#closed-banner");
    this.agentEl = document.querySelector(".who-agent");
    this.onRetry = onRetry;
    this.onDiscard = onDiscard;
    /** State changes seen live, placed after the message that was newest when they happened. */
    this.events = [];
    this.nodes = new Map();
    this.typingFrame = null;
    this.typingTimer = null;
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom() { this.scroller.scrollTop = this.scroller.scrollHeight; }

  /** Everything to show, in order, each with a stable key and a signature of its content. */
  items() {
    const s = this.session;
    const out = [];
    let readSeq = 0;
    for (const m of s.messages) if (m.sender.kind === "customer" && m.seq <= s.data.staffRead) readSeq = m.seq;
    const events = [...this.events];
    const flushEvents = (upto) => {
      while (events.length && events[0].afterSeq <= upto) out.push({ type: "event", key: "e:" + events[0].id, ev: events.shift() });
    };
    flushEvents(0);
    for (const m of s.messages) {
      const own = m.sender.kind === "customer";
      out.push({
        type: "message", key: own && m.client_msg_id ? "c:" + m.client_msg_id : "m:" + m.id,
        own, kind: m.sender.kind, senderId: m.sender.id, seq: m.seq, body: m.body, attachment: m.attachment,
        at: m.sent_at_ms, status: "sent", read: own && m.seq === readSeq,
      });
      flushEvents(m.seq);
    }
    flushEvents(Infinity);
    for (const o of s.outbox) {
      out.push({
        type: "message", key: "c:" + o.client_msg_id, own: true, kind: "customer", seq: null, body: o.body,
        attachment: o.attachment, preview: o.uploadFailed ? null : o.preview, fileName: o.uploadFailed ? o.fileName : null, at: o.created_ms, clientMsgId: o.client_msg_id,
        status: o.uploading ? "uploading" : o.failed ? "failed" : "pending", failed: o.failed, uploadFailed: !!o.uploadFailed,
      });
    }
    return out;
  }

  /** Redraws what changed; `force` after a language switch. */
  render({ force = false, follow = false } = {}) {
    const stick = follow || this.atBottom();
    const items = this.items();
    const keep = new Set();
    let prev = null;
    for (const item of items) {
      keep.add(item.key);
      const sig = lang() + JSON.stringify(item, (k, v) => (k === "ev" ? v.id + v.kind : v)) + (item.kind === "staff" ? this.session.names.get(item.senderId) || "" : "");
      let node = this.nodes.get(item.key);
      if (!node || force || node.dataset.sig !== sig) {
        const fresh = item.type === "event" ? this.eventNode(item.ev) : this.messageNode(item);
        fresh.dataset.sig = sig;
        if (node) node.replaceWith(fresh);
        node = fresh;
        this.nodes.set(item.key, node);
      }
      const want = prev ? prev.nextSibling : this.list.firstChild;
      if (want !== node) this.list.insertBefore(node, want);
      prev = node;
    }
    for (const [key, node] of this.nodes) {
      if (!keep.has(key)) { node.remove(); this.nodes.delete(key); }
    }
    this.emptyEl.classList.toggle("hidden", items.length > 0);
    if (stick) { this.scrollToBottom(); this.follow(); }
  }

  senderLabel(item) {
    if (item.kind === "staff") return this.session.names.get(item.senderId) || t("header.staff");
    if (item.kind === "bot") return t("msg.bot");
    if (item.kind === "system") return t("msg.system");
    return null;
  }

  messageNode(item) {
    const bubble = el("div", { class: "bubble" });
    const label = this.senderLabel(item);
    if (label && item.kind !== "system") bubble.append(el("span", { class: "sender", text: label }));
    const src = item.attachment ? item.attachment.url : item.preview;
    if (src) {
      const img = el("img", { "data-testid": "message-image", src, alt: t("msg.image"), loading: "lazy", decoding: "async" });
      // A photo that arrives while the customer reads the newest messages keeps them in view.
      img.addEventListener("load", () => { if (this.followImages) this.scrollToBottom(); });
      bubble.append(item.attachment ? el("a", { href: item.attachment.url, target: "_blank", rel: "noopener" }, img) : img);
    }
    if (item.fileName) bubble.append(el("p", { class: "file", text: item.fileName }));
    if (item.body) bubble.append(el("p", { "data-testid": "message-body", class: "body", text: item.body }));

    const meta = el("div", { class: "meta" });
    if (item.at) meta.append(el("time", { datetime: new Date(item.at).toISOString(), text: formatTime(item.at) }));
    if (item.status === "uploading") meta.append(el("span", { class: "state", text: t("msg.uploading") }));
    if (item.status === "pending") meta.append(el("span", { class: "state", text: t("msg.sending") }));
    if (item.status === "failed") {
      meta.append(el("span", { class: "state failed", role: "alert", text: failureText(item.failed) }));
      if (!item.uploadFailed) meta.append(el("button", { type: "button", class: "link", text: t("msg.retry"), onclick: () => this.onRetry(item.clientMsgId) }));
      meta.append(el("button", { type: "button", class: "link", text: t("msg.remove"), onclick: () => this.onDiscard(item.clientMsgId) }));
    }
    if (item.read) meta.append(el("span", { class: "read", "data-testid": "read-receipt", text: t("msg.read") }));

    const li = el("li", {
      class: `msg ${item.own ? "own" : "other"} kind-${item.kind} status-${item.status}`,
      "data-testid": "message", "data-sender-kind": item.kind, "data-seq": item.seq ?? null,
      "data-status": item.status,
    }, bubble, meta);
    return li;
  }

  eventNode(ev) {
    const name = ev.agent || t("header.staff");
    const text = {
      assign: t("event.assigned", { name }), claim: t("event.assigned", { name }),
      transfer: t("event.transferred", { name }), release: t("event.queued"),
      resolve: t("event.resolved"), reopen: t("event.reopened"), snooze: t("event.snoozed"),
    }[ev.kind];
    return el("li", { class: "event", role: "note", text: text || "" });
  }

  /** A live `state` frame with an event: note it in the list and redraw the header. */
  stateChanged(frame, previous) {
    if (frame && frame.event && previous) {
      const kind = frame.event.kind;
      const known = ["assign", "claim", "transfer", "release", "resolve", "reopen", "snooze"];
      if (known.includes(kind) && !this.events.some((e) => e.id === frame.event.id)) {
        this.events.push({ id: frame.event.id, kind, agent: frame.agent && frame.agent.name, afterSeq: this.session.maxSeq });
      }
    }
    this.renderHeader();
    this.render();
  }

  renderHeader() {
    const c = this.session.conv;
    let text = "";
    if (c) {
      const name = c.agent ? c.agent.name : null;
      if (c.status === "resolved") text = t("header.closed");
      else if (c.status === "snoozed") text = t("header.snoozed", { name: name || t("header.staff") });
      else if (name && c.status !== "queued") text = t("header.agent", { name });
      else text = t("header.waiting");
    }
    this.agentEl.textContent = text;
    this.bannerEl.classList.toggle("hidden", !(c && c.status === "resolved"));
  }

  /** A `typing` frame from staff (or null to clear, e.g. when the socket drops). */
  setTyping(frame) {
    clearTimeout(this.typingTimer);
    this.typingFrame = frame && frame.active ? frame : null;
    if (this.typingFrame) this.typingTimer = setTimeout(() => this.setTyping(null), TYPING_STALE_MS);
    this.renderTyping();
  }

  renderTyping() {
    const f = this.typingFrame;
    const stick = this.atBottom();
    this.typingEl.classList.toggle("hidden", !f);
    if (f) {
      const name = f.from.kind === "staff" ? this.session.names.get(f.from.id) : f.from.kind === "bot" ? t("msg.bot") : null;
      this.typingText.textContent = name ? t("typing.named", { name }) : t("typing.staff");
    }
    if (stick) this.scrollToBottom();
  }

  get followImages() { return this.atBottom() || this._followUntil > Date.now(); }
  /** After drawing new messages at the bottom, images loading in the next moments keep following. */
  follow() { this._followUntil = Date.now() + 3_000; }
}
