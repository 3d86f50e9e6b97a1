// The HQ session: the token from POST /api/login, kept in sessionStorage (gone with the tab,
// never shared with other tabs or written to disk by us). Every HQ request goes through `hq()`,
// which adds the token and turns a 401 into "log in again" in one place.

import { api } from "/common/api.js";

const KEY = "aisle.hq.session";
const expiredListeners = new Set();

/** `{ token, expires_at_ms, account: { id, username, role } }` or null. */
export function current() {
  let s = null;
  try { s = JSON.parse(sessionStorage.getItem(KEY) || "null"); } catch { s = null; }
  if (s && s.expires_at_ms && s.expires_at_ms <= Date.now()) {
    clear();
    return null;
  }
  return s;
}

export async function login(username, password) {
  const res = await api("/api/login", { method: "POST", body: { username, password } });
  try { sessionStorage.setItem(KEY, JSON.stringify(res)); } catch { /* storage off: this page only */ }
  return res;
}

export function clear() {
  try { sessionStorage.removeItem(KEY); } catch { /* nothing kept */ }
}

/** Called when the hub answers 401: the session expired or was never valid. */
export function onExpired(fn) { expiredListeners.add(fn); }

/** An authenticated GET of `path` with `params` (null / "" values left out). */
export async function hq(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const url = q.toString() ? `${path}?${q}` : path;
  return authenticated(() => api(url, { token: current()?.token }));
}

/** An authenticated `method` (PUT, POST, …) of `path` with a JSON `body`. */
export async function hqSend(path, method, body) {
  return authenticated(() => api(path, { method, body, token: current()?.token }));
}

async function authenticated(call) {
  try {
    return await call();
  } catch (err) {
    if (err.status === 401) {
      clear();
      for (const fn of expiredListeners) fn();
    }
    throw err;
  }
}
