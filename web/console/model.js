// What the console knows about conversations, built only from server frames (welcome, state,
// message, ack, typing, read, resumed, error) plus the staff member's own pending sends.
//
// Rules that keep it right across reconnects:
// - messages are keyed by `seq`: a frame for a seq already held is dropped (no duplicates);
// - after every `welcome` each listed or open conversation is resumed from the last seq held
//   (no gaps), and a live message that skips a seq triggers a resume from the gap;
// - a send is pending until its `ack` (or a `message` with its `client_msg_id`, seen when the
//   ack was lost with the connection); pending sends are sent again after a reconnect with the
//   SAME client_msg_id, which the server answers with the original ack instead of a copy.

import { api } from "/common/api.js";
import { newId } from "/common/id.js";

const TYPING_SHOWN_MS = 6_000;
const RESEND_AFTER_MS = 10_000;

export class Model {
  constructor(session, token) {
    this.session = session;
    this.token = token;
    this.me = null;
    this.convs = new Map();
    this.openId = null;
    this.listeners = new Set();
    this.errors = [];
    this.readCursors = {};
  }

  /** `fn(conversationId | null)` after every change (null: the lists or the session). */
  onChange(fn) { this.listeners.add(fn); }
  emit(id = null) { for (const fn of this.listeners) fn(id); }

  conv(id) {
    let c = this.convs.get(id);
    if (!c) {
      c = {
        id, status: null, agent: null, previousAgent: null, snoozedUntil: null, customer: null,
        createdAt: null, queuedAt: null, lastMessageAt: null,
        messages: new Map(), lastSeq: 0, pending: new Map(),
        customerRead: 0, typingUntil: 0, listed: false, subscribed: false, loading: false,
        fetchingSummary: false,
      };
      c.myRead = this.readCursors[id] || 0;
      this.convs.set(id, c);
    }
    return c;
  }

  // ---- derived views -------------------------------------------------------------------

  isMine(c) { return !!(this.me && c.agent && c.agent.id === this.me.id); }
  isQueued(c) { return c.status === "queued" || (c.status === "reopened" && !c.agent); }

  queue() { return this.sorted([...this.convs.values()].filter((c) => c.listed && this.isQueued(c))); }
  mine() {
    return this.sorted([...this.convs.values()].filter((c) => c.listed && this.isMine(c)
      && c.status !== "resolved" && !this.isQueued(c)));
  }
  /** Longest waiting first, then newest activity. */
  sorted(list) {
    const now = Date.now();
    return list.sort((a, b) => ((this.waitingSince(a) ?? now) - (this.waitingSince(b) ?? now))
      || ((b.lastMessageAt || b.createdAt || 0) - (a.lastMessageAt || a.createdAt || 0)));
  }

  /** Customer messages after this staff member's read cursor. */
  unread(c) {
    let n = 0;
    for (const m of c.messages.values()) if (m.sender.kind === "customer" && m.seq > c.myRead) n += 1;
    return n;
  }

  /**
   * Since when the customer has been waiting for an answer: the first of their messages after
   * the last staff/bot message, or, for a queued chat with no message yet, when it was queued.
   * Null when nobody is waiting.
   */
  waitingSince(c) {
    const seqs = [...c.messages.keys()].sort((a, b) => a - b);
    let since = null;
    for (let i = seqs.length - 1; i >= 0; i -= 1) {
      const m = c.messages.get(seqs[i]);
      if (m.sender.kind !== "customer") break;
      since = m.sent_at_ms;
    }
    if (since === null && c.pending.size === 0 && this.isQueued(c) && seqs.length === 0) since = c.queuedAt || c.createdAt;
    if (c.status === "resolved" || c.status === "snoozed") return null;
    return since;
  }

  /** Messages in seq order, then pending sends in the order they were written. */
  timeline(c) {
    const msgs = [...c.messages.values()].sort((a, b) => a.seq - b.seq);
    const pending = [...c.pending.values()].sort((a, b) => a.createdAt - b.createdAt);
    return { msgs, pending };
  }

  isTyping(c) { return c.typingUntil > Date.now(); }

  /**
   * What the model read in the customer's latest classified message (`intent` is
   * `{label, confidence, model}`, set by the appliance on customer messages), and whether the
   * chat is urgent (a complaint or a request for a person anywhere in it).
   */
  assist(c) {
    const msgs = [...c.messages.values()].sort((a, b) => b.seq - a.seq);
    const read = (m) => (m.intent && typeof m.intent === "object" && typeof m.intent.label === "string" ? m.intent : null);
    const latest = msgs.map(read).find(Boolean) || null;
    const urgent = msgs.some((m) => { const i = read(m); return i && (i.label === "complaint" || i.label === "human_agent"); });
    return {
      intent: latest ? latest.label : null,
      confidence: latest ? latest.confidence : null,
      urgent,
    };
  }

  // ---- frames in -----------------------------------------------------------------------

  handle(frame) {
    switch (frame.type) {
      case "welcome": return this.onWelcome(frame);
      case "state": return this.onState(frame);
      case "message": return this.onMessage(frame);
      case "ack": return this.onAck(frame);
      case "typing": return this.onTyping(frame);
      case "read": return this.onRead(frame);
      case "resumed": return this.onResumed(frame);
      case "error": return this.onError(frame);
      default: return undefined;
    }
  }

  onWelcome(frame) {
    this.me = frame.staff;
    this.loadReadCursors();
    for (const c of this.convs.values()) { c.listed = false; c.subscribed = false; c.loading = false; }
    for (const s of frame.conversations || []) {
      const c = this.conv(s.id);
      this.applySummary(c, s);
      c.listed = true;
    }
    for (const c of this.convs.values()) {
      if (c.listed || c.id === this.openId) this.subscribe(c);
    }
    this.resendPending();
    this.emit();
  }

  applySummary(c, s) {
    c.status = s.status;
    c.agent = s.agent || null;
    if (s.customer) c.customer = s.customer;
    c.createdAt = s.created_at_ms ?? c.createdAt;
    c.lastMessageAt = s.last_message_at_ms ?? c.lastMessageAt;
  }

  onState(f) {
    const known = this.convs.has(f.conversation_id);
    const c = this.conv(f.conversation_id);
    const wasQueued = c.status !== null && this.isQueued(c);
    c.status = f.status;
    c.agent = f.agent || null;
    c.previousAgent = f.previous_agent || null;
    c.snoozedUntil = f.snoozed_until_ms || null;
    c.version = f.version;
    if (this.isQueued(c) && !wasQueued) c.queuedAt = Date.now();
    if (f.event && f.event.kind === "transfer") c.transferNote = f.event.note || null;
    const relevant = this.isQueued(c) || this.isMine(c);
    if (relevant) c.listed = true;
    if ((!known || !c.customer) && (relevant || c.id === this.openId)) this.fetchSummary(c);
    // A transfer or release away from us ends our subscription on the server.
    if (!relevant && c.id !== this.openId) c.subscribed = false;
    if (!relevant && c.id === this.openId && f.event && ["transfer", "release"].includes(f.event.kind)) {
      c.subscribed = false;
    }
    if ((relevant || c.id === this.openId) && !c.subscribed) this.subscribe(c);
    this.emit(c.id);
  }

  onMessage(f) {
    const c = this.conv(f.conversation_id);
    if (f.client_msg_id && c.pending.has(f.client_msg_id)) c.pending.delete(f.client_msg_id);
    if (c.messages.has(f.seq)) return;
    const contiguous = this.contiguousSeq(c);
    const m = { ...f };
    delete m.type;
    c.messages.set(f.seq, m);
    c.lastSeq = Math.max(c.lastSeq, f.seq);
    c.lastMessageAt = Math.max(c.lastMessageAt || 0, f.sent_at_ms || 0);
    if (this.me && m.sender.kind === "staff" && m.sender.id === this.me.id) this.advanceMyRead(c, m.seq, false);
    if (m.sender.kind === "customer") c.typingUntil = 0;
    if (!c.loading && f.seq > contiguous + 1 && c.subscribed) this.resume(c, contiguous);
    this.emit(c.id);
  }

  onAck(f) {
    const c = this.conv(f.conversation_id);
    const p = c.pending.get(f.client_msg_id);
    if (p) {
      c.pending.delete(f.client_msg_id);
      if (!c.messages.has(f.seq)) {
        c.messages.set(f.seq, {
          conversation_id: c.id, seq: f.seq, id: f.message_id, client_msg_id: f.client_msg_id,
          sender: { kind: "staff", id: this.me.id }, body: p.body, sent_at_ms: f.sent_at_ms,
          ...(p.attachment ? { attachment: p.attachment } : {}),
        });
      }
      c.lastSeq = Math.max(c.lastSeq, f.seq);
      c.lastMessageAt = Math.max(c.lastMessageAt || 0, f.sent_at_ms || 0);
      this.advanceMyRead(c, f.seq, false);
    }
    this.emit(c.id);
  }

  onTyping(f) {
    if (!f.from || f.from.kind !== "customer") return;
    const c = this.conv(f.conversation_id);
    c.typingUntil = f.active ? Date.now() + TYPING_SHOWN_MS : 0;
    this.emit(c.id);
    if (f.active) setTimeout(() => this.emit(c.id), TYPING_SHOWN_MS + 50);
  }

  onRead(f) {
    const c = this.conv(f.conversation_id);
    if (f.by && f.by.kind === "customer") c.customerRead = Math.max(c.customerRead, f.seq);
    else if (f.by && this.me && f.by.kind === "staff" && f.by.id === this.me.id) this.advanceMyRead(c, f.seq, false);
    this.emit(c.id);
  }

  onResumed(f) {
    const c = this.conv(f.conversation_id);
    if (f.more) { this.resume(c, Math.max(f.last_seq, this.contiguousSeq(c))); return; }
    c.loading = false;
    this.emit(c.id);
  }

  onError(f) {
    if (f.request_id) return; // answered to the caller of session.request
    const c = f.conversation_id ? this.conv(f.conversation_id) : null;
    if (c && f.client_msg_id && c.pending.has(f.client_msg_id)) {
      const p = c.pending.get(f.client_msg_id);
      if (f.code === "overloaded") {
        // Not stored; the same client_msg_id goes again shortly.
        setTimeout(() => this.sendPending(c, p), 1000);
      } else {
        p.status = "failed";
        p.error = f;
      }
      this.emit(c.id);
      return;
    }
    if (f.code === "unauthorized" || f.code === "token_expired") return; // the session handles it
    this.errors.push({ ...f, at: Date.now() });
    this.emit(c ? c.id : null);
  }

  // ---- frames out ----------------------------------------------------------------------

  contiguousSeq(c) {
    let s = 0;
    while (c.messages.has(s + 1)) s += 1;
    return s;
  }

  subscribe(c) {
    c.subscribed = true;
    this.resume(c, this.contiguousSeq(c));
  }

  resume(c, afterSeq) {
    c.loading = true;
    if (!this.session.send({ type: "resume", conversation_id: c.id, after_seq: afterSeq })) {
      c.loading = false;
      c.subscribed = false;
    }
  }

  /** Fills in who the customer is for a chat first seen through a `state` frame. */
  async fetchSummary(c) {
    if (c.fetchingSummary) return;
    c.fetchingSummary = true;
    try {
      const res = await api(`/api/conversations/${encodeURIComponent(c.id)}`, { token: this.token });
      const s = res.conversation;
      if (s.customer) c.customer = s.customer;
      c.createdAt = s.created_at_ms ?? c.createdAt;
      c.lastMessageAt = s.last_message_at_ms ?? c.lastMessageAt;
      // The note of the latest transfer, for a chat opened after the live `state` went by.
      const transfer = (res.events || []).filter((e) => e.applied && e.kind && e.kind.kind === "transfer").pop();
      if (transfer && transfer.kind.note && !c.transferNote) c.transferNote = transfer.kind.note;
      this.emit(c.id);
    } catch { /* the list shows it without a name until the next welcome */ }
    c.fetchingSummary = false;
  }

  open(id) {
    this.openId = id;
    if (id) {
      const c = this.conv(id);
      if (!c.subscribed) this.subscribe(c);
      if (!c.customer) this.fetchSummary(c);
    }
    this.emit(id);
  }

  /** Sends `read` for the last seq when it is past this staff member's cursor. */
  markRead(c) {
    if (c.lastSeq <= c.myRead) return;
    this.advanceMyRead(c, c.lastSeq, true);
    if (c.myRead === c.lastSeq) this.emit(null); // the unread badge in the list
  }

  advanceMyRead(c, seq, send) {
    if (seq <= c.myRead) return;
    if (send && !this.session.send({ type: "read", conversation_id: c.id, seq })) return;
    c.myRead = seq;
    this.readCursors[c.id] = seq;
    this.saveReadCursors();
  }

  // The server keeps each staff read cursor but does not hand it back (not in `welcome`, the
  // summary or `resume`), so this tablet remembers its own to count unread messages.
  readKey() { return `aisle.console.read.${this.me ? this.me.id : "?"}`; }
  loadReadCursors() {
    try { this.readCursors = JSON.parse(localStorage.getItem(this.readKey()) || "{}") || {}; } catch { this.readCursors = {}; }
    for (const c of this.convs.values()) c.myRead = Math.max(c.myRead, this.readCursors[c.id] || 0);
  }
  saveReadCursors() {
    try { localStorage.setItem(this.readKey(), JSON.stringify(this.readCursors)); } catch { /* not kept */ }
  }

  /** Optimistic send: shown at once as pending, delivered (and redelivered) by client_msg_id. */
  sendMessage(id, body, attachment = null) {
    const c = this.conv(id);
    const p = {
      client_msg_id: newId(), body, attachment, createdAt: Date.now(),
      status: "sending", error: null, sentAt: 0,
    };
    c.pending.set(p.client_msg_id, p);
    this.sendPending(c, p);
    this.emit(c.id);
  }

  sendPending(c, p) {
    if (!c.pending.has(p.client_msg_id)) return;
    p.status = "sending";
    p.error = null;
    const frame = { type: "send", conversation_id: c.id, client_msg_id: p.client_msg_id, body: p.body };
    if (p.attachment) frame.attachment_id = p.attachment.id;
    if (this.session.send(frame)) {
      p.sentAt = Date.now();
      clearTimeout(p.timer);
      // No ack on a live connection: send again (same id, so never twice in the chat).
      p.timer = setTimeout(() => { if (c.pending.has(p.client_msg_id) && p.status === "sending") this.sendPending(c, p); }, RESEND_AFTER_MS);
    }
  }

  retry(id, clientMsgId) {
    const c = this.conv(id);
    const p = c.pending.get(clientMsgId);
    if (p) { this.sendPending(c, p); this.emit(c.id); }
  }

  discard(id, clientMsgId) {
    const c = this.conv(id);
    c.pending.delete(clientMsgId);
    this.emit(c.id);
  }

  resendPending() {
    for (const c of this.convs.values()) {
      for (const p of c.pending.values()) if (p.status === "sending") this.sendPending(c, p);
    }
  }

  typing(id, active) {
    this.session.send({ type: "typing", conversation_id: id, active });
  }

  /** A state action (claim, transfer, …); resolves on `ok`, rejects with the error frame. */
  action(id, type, extra = {}) {
    return this.session.request({ type, conversation_id: id, ...extra });
  }

  dismissError(index) {
    this.errors.splice(index, 1);
    this.emit(this.openId);
  }
}
