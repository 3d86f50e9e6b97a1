// The staff session: the token from POST /api/login, kept in sessionStorage so a reload keeps
// the tablet signed in but closing the tab (a shared tablet) signs out.

import { api } from "/common/api.js";

const KEY = "aisle.console.token";

export function savedToken() {
  try { return sessionStorage.getItem(KEY); } catch { return null; }
}

function saveToken(token) {
  try {
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
  } catch { /* storage disabled: the session lasts as long as the page */ }
}

/** Signs in; resolves to `{token, staff}` or throws an ApiError (`invalid_credentials`, …). */
export async function login(username, password) {
  const res = await api("/api/login", { method: "POST", body: { username, password } });
  saveToken(res.token);
  return { token: res.token, staff: res.staff };
}

/** The staff member behind a saved token, or null when it no longer works. */
export async function resume(token) {
  try {
    const res = await api("/api/me", { token });
    return res.staff;
  } catch (err) {
    if (err.status === 401) saveToken(null);
    if (err.status === 401 || err.status === 403) return null;
    throw err;
  }
}

export async function logout(token) {
  saveToken(null);
  try { await api("/api/logout", { method: "POST", token }); } catch { /* the token is dropped anyway */ }
}

export function forget() { saveToken(null); }
