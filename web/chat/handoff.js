// Moving a chat to another device. This device asks the server for a short single-use code
// (`handoff` frame) and shows it three ways: the code itself, big enough to type; a QR code of
// the link (`/api/qr.svg`, drawn by the appliance: nothing leaves the store); and when it
// expires. The other device redeems the code over HTTP (`POST /api/handoff/{code}`), either
// because it opened the link `/h/{code}` or because the customer typed the code, and gets a
// resume token for the same customer and conversation.

import { api } from "/common/api.js";
import { t, formatTime } from "/common/i18n.js";

/** The code in a `/h/{code}` path, or null. */
export function codeFromPath(pathname = location.pathname) {
  const m = /^\/h\/([^/]+)\/?$/.exec(pathname);
  return m ? decodeURIComponent(m[1]) : null;
}

/** Codes are shown in capitals and may be typed with spaces or dashes. */
export function normalizeCode(text) {
  return String(text).toUpperCase().replace(/[^0-9A-Z]/g, "");
}

/** Redeems a code: resolves with `{customer_id, conversation_id, resume_token}`. */
export async function redeem(code) {
  return await api(`/api/handoff/${encodeURIComponent(normalizeCode(code))}`, { method: "POST" });
}

/** What to tell the customer when a code does not work. */
export function redeemErrorText(err) {
  switch (err.code) {
    case "not_found": return t("code.not_found");
    case "handoff_used": return t("code.used");
    case "handoff_expired": return t("code.expired");
    case "hub_unavailable": return t("code.hub_unavailable");
    default: return t("code.error", { code: err.code || err.status });
  }
}

/** The QR image address for the absolute link of a hand-off `url` ("/h/K7Q4M2XP"). */
export function qrSrc(url) {
  return `/api/qr.svg?text=${encodeURIComponent(location.origin + url)}`;
}

/**
 * The "continue on another device" panel: `open()` asks the session for a code and fills
 * the panel; the expiry line counts down and says when a new code is needed.
 */
export class HandoffPanel {
  constructor(root, session) {
    this.root = root;
    this.session = session;
    this.codeEl = root.querySelector("[data-testid=handoff-code]");
    this.qrEl = root.querySelector("[data-testid=handoff-qr]");
    this.expiryEl = root.querySelector(".handoff-expiry");
    this.statusEl = root.querySelector(".handoff-status");
    this.linkEl = root.querySelector(".handoff-link");
    this.current = null;
    this.tick = null;
    root.querySelector(".handoff-close").addEventListener("click", () => this.close());
    root.querySelector(".handoff-new").addEventListener("click", () => this.request());
    root.addEventListener("keydown", (e) => { if (e.key === "Escape") this.close(); });
  }

  open() {
    this.root.classList.remove("hidden");
    this.root.querySelector(".handoff-close").focus();
    if (!this.current || this.current.expires_at_ms <= Date.now()) this.request();
  }

  /** Another conversation now: the code on screen is not for it. */
  forget() {
    this.current = null;
    this.close();
  }

  close() {
    this.root.classList.add("hidden");
    clearInterval(this.tick);
    this.tick = null;
  }

  async request() {
    this.current = null;
    this.codeEl.textContent = "";
    this.qrEl.classList.add("hidden");
    this.qrEl.removeAttribute("src");
    this.linkEl.textContent = "";
    this.expiryEl.textContent = "";
    this.statusEl.textContent = t("handoff.waiting");
    try {
      this.current = await this.session.handoff();
      this.render();
    } catch (err) {
      this.statusEl.textContent = err.code === "offline" || err.code === "timeout" ? t("handoff.offline") : t("err.generic", { code: err.code });
    }
  }

  /** Redraws the texts (also on a language switch). */
  render() {
    const h = this.current;
    if (!h) return;
    this.statusEl.textContent = "";
    this.codeEl.textContent = h.code;
    this.qrEl.src = qrSrc(h.url);
    this.qrEl.alt = t("handoff.qr_alt");
    this.qrEl.classList.remove("hidden");
    this.linkEl.textContent = location.origin + h.url;
    this.updateExpiry();
    clearInterval(this.tick);
    this.tick = setInterval(() => this.updateExpiry(), 15_000);
  }

  updateExpiry() {
    const h = this.current;
    if (!h) return;
    const left = h.expires_at_ms - Date.now();
    if (left <= 0) {
      this.expiryEl.textContent = t("handoff.expired");
      this.root.classList.add("expired");
      clearInterval(this.tick);
      return;
    }
    this.root.classList.remove("expired");
    this.expiryEl.textContent = t("handoff.expires", { time: formatTime(h.expires_at_ms), minutes: Math.max(1, Math.round(left / 60_000)) });
  }
}
