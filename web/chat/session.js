// The customer's connection to the store (docs/protocol.md): one WebSocket that says `hello`
// (with the remembered resume token when there is one), opens or finds the conversation
// (`start`), and `resume`s it from the last sequence number this device has seen, so a reload or
// a reconnect gets exactly the missed messages. Messages the customer writes go to an outbox
// first (shown at once as "sending") and leave it only when the server's `ack` says they are
// on disk; after a reconnect the outbox is sent again with the *same* `client_msg_id`, which
// the server answers with the original ack instead of storing a copy.
//
// The session owns the data (see storage.js) and tells the page what changed through `on()`
// listeners: "status", "messages", "state", "typing", "read", "ready", "reset" (another
// conversation from now on), "error", "expired".

import { wsUrl } from "/common/api.js";
import { newId } from "/common/id.js";
import * as storage from "./storage.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;
/** No frame for this long: ask with a ping. Twice as long: the socket is dead, reconnect. */
const PING_AFTER_MS = 20_000;
const DEAD_AFTER_MS = 45_000;
/** An unacknowledged send is shown as failed after this; it is still resent on reconnect. */
const ACK_TIMEOUT_MS = 15_000;
/** Errors after which a send is worth repeating by itself a little later. */
const TRANSIENT = new Set(["overloaded", "rate_limited", "internal"]);

export class ChatSession {
  constructor() {
    this.data = storage.load();
    this.status = "offline";
    /** The conversation's state frame (status, agent, …), null until known. */
    this.conv = null;
    /** Staff names by id, learnt from state frames (message senders carry only the id). */
    this.names = new Map();
    this.ws = null;
    this.ready = false; // welcomed and the conversation resumed: sends may go out
    this.stopped = true;
    this.attempt = 0;
    this.timer = null;
    this.lastFrameAt = 0;
    this.readSent = 0;
    this.handoffWaiters = [];
    this.listeners = {};
    this.ackTimers = new Map();
    window.addEventListener("online", () => { if (!this.stopped && !this.ws) this.connectNow(); });
    // The browser knows the network is gone before any socket timeout does.
    window.addEventListener("offline", () => { if (this.ws) this.drop(); });
    setInterval(() => this.heartbeat(), 5_000);
  }

  on(name, fn) { (this.listeners[name] ||= []).push(fn); }
  emit(name, ...args) { for (const fn of this.listeners[name] || []) fn(...args); }

  get hasToken() { return !!this.data.token; }
  get conversationId() { return this.data.conversationId; }
  get messages() { return this.data.messages; }
  get outbox() { return this.data.outbox; }

  /**
   * The highest `seq` up to which this device holds every message: what `resume` asks after.
   * A gap (a frame lost between reconnects) keeps it below the gap, so the next resume fills it.
   */
  get lastSeq() {
    const m = this.data.messages;
    if (!m.length) return 0;
    let last = m[0].seq;
    for (let i = 1; i < m.length && m[i].seq === last + 1; i++) last = m[i].seq;
    return last;
  }

  /** The highest seq shown at all (what the customer has read once the page is visible). */
  get maxSeq() {
    const m = this.data.messages;
    return m.length ? m[m.length - 1].seq : 0;
  }

  /** Starts (or restarts) talking to the store. `name` is sent with a first hello. */
  start(name) {
    if (name !== undefined) this.data.name = name;
    this.persist();
    this.stopped = false;
    this.connectNow();
  }

  /** Forget this device's chat (kiosk, "leave"): the store keeps the conversation. */
  forget() {
    this.stopped = true;
    this.drop();
    this.data = storage.clear();
    this.conv = null;
    this.emit("reset");
    this.emit("messages");
    this.emit("state", null);
  }

  /**
   * Take over a conversation redeemed with a hand-off code: from now on this device is that
   * customer. Cached messages of another conversation are dropped; the resume from 0 brings
   * the whole history.
   */
  adopt({ resume_token, customer_id, conversation_id }) {
    if (this.data.conversationId !== conversation_id || this.data.customerId !== customer_id) {
      this.data.messages = [];
      this.data.outbox = [];
      this.data.staffRead = 0;
      this.emit("reset");
    }
    this.data.token = resume_token;
    this.data.customerId = customer_id;
    this.data.conversationId = conversation_id;
    this.conv = null;
    this.persist();
    this.emit("messages");
    this.drop();
    this.start();
  }

  connectNow() {
    clearTimeout(this.timer);
    this.timer = null;
    this.attempt = 0;
    if (!this.ws) this.connect();
  }

  connect() {
    if (this.stopped) return;
    this.setStatus("connecting");
    let ws;
    try {
      ws = new WebSocket(wsUrl("/ws"));
    } catch {
      this.closed();
      return;
    }
    this.ws = ws;
    this.ready = false;
    ws.onopen = () => {
      this.lastFrameAt = Date.now();
      const hello = { type: "hello", role: "customer" };
      if (this.data.token) hello.resume_token = this.data.token;
      else if (this.data.name) hello.display_name = this.data.name;
      this.raw(hello);
    };
    ws.onmessage = (e) => {
      this.lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(e.data); } catch { return; }
      this.handle(frame);
    };
    ws.onclose = () => { if (this.ws === ws) this.closed(); };
    ws.onerror = () => { /* onclose follows */ };
  }

  /** Drops the socket at once (no closing handshake to wait for on a dead network). */
  drop() {
    const ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(); } catch { /* already closed */ }
    this.closed();
  }

  closed() {
    this.ws = null;
    this.ready = false;
    for (const w of this.handoffWaiters.splice(0)) w.reject(new Error("offline"));
    this.setStatus("offline");
    this.emit("typing", null);
    if (this.stopped || this.timer) return;
    // Offline by the browser's own account: wait for the "online" event (with a slow retry in
    // case it never comes); otherwise back off exponentially, with jitter so a store full of
    // phones does not reconnect in one burst after the appliance restarts.
    const delay = navigator.onLine === false
      ? 30_000
      : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt++;
    this.timer = setTimeout(() => { this.timer = null; if (!this.ws) this.connect(); }, delay);
  }

  heartbeat() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const quiet = Date.now() - this.lastFrameAt;
    if (quiet > DEAD_AFTER_MS) this.drop();
    else if (quiet > PING_AFTER_MS) this.raw({ type: "ping" });
  }

  raw(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  setStatus(s) {
    if (this.status === s) return;
    this.status = s;
    this.emit("status", s);
  }

  persist() { storage.save(this.data); }

  handle(f) {
    switch (f.type) {
      case "welcome": return this.onWelcome(f);
      case "started": return this.onStarted(f);
      case "message": return this.onMessage(f);
      case "ack": return this.onAck(f);
      case "state": return this.onState(f);
      case "resumed": return this.onResumed(f);
      case "typing":
        if (f.conversation_id === this.data.conversationId && f.from && f.from.kind !== "customer") this.emit("typing", f);
        return;
      case "read":
        if (f.conversation_id === this.data.conversationId && f.by && f.by.kind !== "customer" && f.seq > this.data.staffRead) {
          this.data.staffRead = f.seq;
          this.persist();
          this.emit("read");
        }
        return;
      case "handoff": {
        const w = this.handoffWaiters.shift();
        if (w) w.resolve(f);
        return;
      }
      case "error": return this.onError(f);
      default: return; // pong, bye (the close follows), frames of newer servers
    }
  }

  onWelcome(f) {
    this.attempt = 0;
    if (this.data.customerId && this.data.customerId !== f.customer_id) {
      // Another customer's token (should not happen): do not mix their chats.
      this.data.conversationId = null;
      this.data.messages = [];
      this.data.outbox = [];
    }
    this.data.token = f.resume_token;
    this.data.customerId = f.customer_id;
    this.setStatus("online");
    const convs = f.conversations || [];
    if (!this.data.conversationId) {
      // A returning customer whose device forgot which chat: the newest open one, if any.
      const open = convs.find((c) => c.status !== "resolved");
      if (open) this.data.conversationId = open.id;
    }
    const mine = convs.find((c) => c.id === this.data.conversationId);
    if (mine && mine.agent) this.names.set(mine.agent.id, mine.agent.name);
    this.persist();
    if (this.data.conversationId) this.resume();
    else this.raw({ type: "start", request_id: newId(), ...(this.data.name ? { display_name: this.data.name } : {}) });
  }

  onStarted(f) {
    if (f.conversation_id !== this.data.conversationId) {
      this.data.conversationId = f.conversation_id;
      this.data.messages = [];
      this.data.staffRead = 0;
      this.readSent = 0;
      this.conv = null;
      this.persist();
      this.emit("reset");
      this.emit("messages");
    }
    // `started` subscribes; the resume brings any earlier history (an existing open chat).
    this.resume();
  }

  resume() {
    this.raw({ type: "resume", conversation_id: this.data.conversationId, after_seq: this.lastSeq });
  }

  onResumed(f) {
    if (f.conversation_id !== this.data.conversationId) return;
    if (f.more) { this.resume(); return; }
    this.ready = true;
    this.readSent = 0;
    // Resend what was not acknowledged; a message the server refused for good waits for a tap.
    for (const item of this.data.outbox) if (!item.failed || item.failed === "timeout" || TRANSIENT.has(item.failed)) this.transmit(item);
    this.emit("ready");
  }

  /** Adds a server message once (by id), replacing the outbox copy of one of ours. */
  onMessage(f) {
    if (f.conversation_id !== this.data.conversationId) return;
    this.store(f);
  }

  store(m) {
    const msgs = this.data.messages;
    if (msgs.some((x) => x.id === m.id)) return;
    const rec = { id: m.id, seq: m.seq, client_msg_id: m.client_msg_id || null, sender: m.sender, body: m.body || "", sent_at_ms: m.sent_at_ms, attachment: m.attachment || null };
    let i = msgs.length;
    while (i > 0 && msgs[i - 1].seq > rec.seq) i--;
    msgs.splice(i, 0, rec);
    if (rec.sender && rec.sender.kind === "customer" && rec.client_msg_id) this.unqueue(rec.client_msg_id);
    this.persist();
    this.emit("messages");
  }

  onAck(f) {
    const item = this.data.outbox.find((x) => x.client_msg_id === f.client_msg_id);
    if (!item && this.data.messages.some((x) => x.id === f.message_id)) return;
    this.store({
      id: f.message_id, seq: f.seq, client_msg_id: f.client_msg_id,
      sender: { kind: "customer", id: this.data.customerId },
      body: item ? item.body : "", sent_at_ms: f.sent_at_ms, attachment: item ? item.attachment : null,
    });
  }

  unqueue(clientMsgId) {
    const i = this.data.outbox.findIndex((x) => x.client_msg_id === clientMsgId);
    if (i >= 0) {
      const [item] = this.data.outbox.splice(i, 1);
      // The local preview is no longer shown (the server's copy is, or nothing): free it.
      if (item.preview) setTimeout(() => URL.revokeObjectURL(item.preview), 5_000);
    }
    clearTimeout(this.ackTimers.get(clientMsgId));
    this.ackTimers.delete(clientMsgId);
  }

  onState(f) {
    if (f.conversation_id !== this.data.conversationId) return;
    for (const a of [f.agent, f.previous_agent]) if (a) this.names.set(a.id, a.name);
    const previous = this.conv;
    this.conv = f;
    this.emit("state", f, previous);
  }

  onError(f) {
    if (!this.ready && (f.code === "unauthorized" || f.code === "token_expired") && !f.conversation_id) {
      // The remembered token is no good any more: start over on this device.
      this.stopped = true;
      this.drop();
      this.data = storage.clear();
      this.conv = null;
      this.emit("messages");
      this.emit("expired", f.code);
      return;
    }
    if (f.code === "not_found" && f.conversation_id && f.conversation_id === this.data.conversationId && !f.client_msg_id) {
      // Not this customer's conversation (or gone): open a fresh one.
      this.data.conversationId = null;
      this.data.messages = [];
      this.persist();
      this.emit("reset");
      this.emit("messages");
      this.raw({ type: "start", request_id: newId(), ...(this.data.name ? { display_name: this.data.name } : {}) });
      return;
    }
    if (f.client_msg_id) {
      const item = this.data.outbox.find((x) => x.client_msg_id === f.client_msg_id);
      if (item) {
        if (TRANSIENT.has(f.code)) {
          setTimeout(() => { if (this.data.outbox.includes(item) && this.ready) this.transmit(item); }, 2_000);
        } else {
          item.failed = f.code;
          this.persist();
          this.emit("messages");
        }
        return;
      }
    }
    const w = this.handoffWaiters.length && f.conversation_id ? this.handoffWaiters.shift() : null;
    if (w) { w.reject(Object.assign(new Error(f.message), { code: f.code })); return; }
    this.emit("error", f);
  }

  // ---- what the page asks for ----

  /**
   * Queues a message; returns its outbox entry. With `upload` (a promise of the attachment
   * the image upload returns), the send waits for the upload and fails with its error code.
   */
  send(body, { upload, preview, fileName } = {}) {
    const item = { client_msg_id: newId(), body, attachment_id: null, attachment: null, created_ms: Date.now(), failed: null };
    if (upload) {
      item.uploading = true;
      item.preview = preview || null; // a blob: URL, shown until the server's copy is known
      item.fileName = fileName || "";
    }
    this.data.outbox.push(item);
    this.persist();
    this.emit("messages");
    if (upload) {
      upload.then((att) => {
        item.uploading = false;
        item.attachment_id = att.id;
        item.attachment = att;
        this.persist();
        this.emit("messages");
        if (this.ready) this.transmit(item);
      }, (err) => {
        item.uploading = false;
        item.failed = err.code || "upload";
        item.uploadFailed = true;
        this.persist();
        this.emit("messages");
      });
    } else if (this.ready) {
      this.transmit(item);
    }
    return item;
  }

  transmit(item) {
    if (item.uploading || item.uploadFailed) return;
    const frame = { type: "send", conversation_id: this.data.conversationId, client_msg_id: item.client_msg_id, body: item.body };
    if (item.attachment_id) frame.attachment_id = item.attachment_id;
    if (!this.raw(frame)) return;
    if (item.failed) { item.failed = null; this.emit("messages"); }
    clearTimeout(this.ackTimers.get(item.client_msg_id));
    this.ackTimers.set(item.client_msg_id, setTimeout(() => {
      if (this.data.outbox.includes(item) && !item.failed) {
        item.failed = "timeout";
        this.emit("messages");
      }
    }, ACK_TIMEOUT_MS));
  }

  /** The customer tapped a failed message: send it again (same client_msg_id). */
  retry(clientMsgId) {
    const item = this.data.outbox.find((x) => x.client_msg_id === clientMsgId);
    if (!item) return;
    if (item.uploadFailed) return;
    item.failed = null;
    this.emit("messages");
    if (this.ready) this.transmit(item);
    else this.connectNow();
  }

  discard(clientMsgId) {
    this.unqueue(clientMsgId);
    this.persist();
    this.emit("messages");
  }

  typing(active) {
    if (this.ready) this.raw({ type: "typing", conversation_id: this.data.conversationId, active });
  }

  /** "Read up to here": sent when the page is visible and shows messages past the last cursor. */
  markRead() {
    const seq = this.maxSeq;
    if (!this.ready || seq <= this.readSent) return;
    if (this.raw({ type: "read", conversation_id: this.data.conversationId, seq })) this.readSent = seq;
  }

  /** Asks for a hand-off code; resolves with the `handoff` frame (code, url, expires_at_ms). */
  handoff() {
    return new Promise((resolve, reject) => {
      if (!this.ready || !this.raw({ type: "handoff", conversation_id: this.data.conversationId })) {
        reject(Object.assign(new Error("offline"), { code: "offline" }));
        return;
      }
      const w = { resolve, reject };
      this.handoffWaiters.push(w);
      setTimeout(() => {
        const i = this.handoffWaiters.indexOf(w);
        if (i >= 0) { this.handoffWaiters.splice(i, 1); reject(Object.assign(new Error("timeout"), { code: "timeout" })); }
      }, 10_000);
    });
  }
}
