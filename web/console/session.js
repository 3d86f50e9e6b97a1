// The staff WebSocket: `hello` with the session token, frames in and out, and reconnecting
// with exponential backoff when the link drops (Wi-Fi blips, appliance restart). What to
// resume after a reconnect is the model's business: it gets every `welcome` again.

import { wsUrl } from "/common/api.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const REQUEST_TIMEOUT_MS = 15_000;

export class Session {
  /**
   * `onFrame(frame)` gets every server frame; `onStatus({state, retryInMs})` gets
   * "connecting" | "online" | "offline"; `onFatal(code)` is called when the token no longer
   * works (the page goes back to the login).
   */
  constructor(token, { onFrame, onStatus, onFatal }) {
    this.token = token;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.onFatal = onFatal;
    this.ws = null;
    this.ready = false;
    this.attempt = 0;
    this.closed = false;
    this.nextRequest = 1;
    this.requests = new Map();
  }

  start() { this.connect(); }

  connect() {
    if (this.closed) return;
    this.ready = false;
    this.onStatus({ state: "connecting" });
    const ws = new WebSocket(wsUrl("/ws"));
    this.ws = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "hello", role: "staff", token: this.token }));
    });
    ws.addEventListener("message", (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      this.handle(frame);
    });
    ws.addEventListener("close", (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.ready = false;
      this.failRequests("disconnected");
      if (this.closed) return;
      if (ev.code === 1008 && this.fatalCode) { this.fatal(this.fatalCode); return; }
      this.scheduleReconnect();
    });
  }

  handle(frame) {
    if (frame.type === "welcome") {
      this.ready = true;
      this.attempt = 0;
      this.onStatus({ state: "online" });
    }
    if (frame.type === "error" && (frame.code === "unauthorized" || frame.code === "token_expired")) {
      // At hello the token is dead; on an open connection the server closes with 1008 next.
      this.fatalCode = frame.code;
      if (!this.ready) { this.fatal(frame.code); return; }
    }
    if (frame.type === "bye") {
      this.onStatus({ state: "connecting" });
    }
    if (frame.request_id && this.requests.has(frame.request_id)) {
      const pending = this.requests.get(frame.request_id);
      if (frame.type === "ok") { this.requests.delete(frame.request_id); pending.ok(frame); }
      else if (frame.type === "error") { this.requests.delete(frame.request_id); pending.fail(frame); }
    }
    this.onFrame(frame);
  }

  fatal(code) {
    this.close();
    this.onFatal(code);
  }

  scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5)); // jitter: tablets don't stampede
    this.attempt += 1;
    this.onStatus({ state: "offline", retryInMs: delay });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Sends a frame if the session is up; false when it is not (the caller keeps it to retry). */
  send(frame) {
    if (!this.ready || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /**
   * An action frame with a `request_id`: resolves on `ok`, rejects with the `error` frame
   * (`{code, message}`) or with `{code:"disconnected"}` when it could not be sent or answered.
   */
  request(frame) {
    const request_id = `r${this.nextRequest++}`;
    return new Promise((ok, fail) => {
      if (!this.send({ ...frame, request_id })) { fail({ code: "disconnected", message: "not connected" }); return; }
      const timer = setTimeout(() => {
        this.requests.delete(request_id);
        fail({ code: "timeout", message: "no answer" });
      }, REQUEST_TIMEOUT_MS);
      this.requests.set(request_id, {
        ok: (f) => { clearTimeout(timer); ok(f); },
        fail: (f) => { clearTimeout(timer); fail(f); },
      });
    });
  }

  failRequests(code) {
    for (const [, pending] of this.requests) pending.fail({ code, message: code });
    this.requests.clear();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    if (ws) try { ws.close(1000); } catch { /* already closing */ }
    this.failRequests("closed");
  }
}
