// JSON over HTTP to the same origin. Every server error is `{"error":{"code","message"}}`;
// it is thrown as an ApiError carrying the status and the stable code.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** `api("/api/me", { token })`, `api("/api/staff", { method: "POST", body: {...}, token })`. */
export async function api(path, { method = "GET", body, token, headers = {}, raw } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  let payload;
  if (raw !== undefined) {
    payload = raw;
  } else if (body !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, headers: h, body: payload });
  } catch (err) {
    throw new ApiError(0, "network", String(err && err.message || err));
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    const e = json && json.error;
    throw new ApiError(res.status, e ? e.code : "http_" + res.status, e ? e.message : text.slice(0, 200));
  }
  return json;
}

/** The WebSocket URL of this origin's `path`. */
export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
