// Small display helpers shared by the views.

import { t } from "/common/i18n.js";

/** "45 s", "3 min", "1 h 5 min", "2 d" for a duration in ms. */
export function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return t("duration.seconds", { n: s });
  const m = Math.floor(s / 60);
  if (m < 60) return t("duration.minutes", { n: m });
  const hrs = Math.floor(m / 60);
  if (hrs < 24) return t("duration.hours", { h: hrs, m: m % 60 });
  return t("duration.days", { n: Math.floor(hrs / 24) });
}

export function statusText(status) {
  return t(`status.${status || "unknown"}`);
}

/** The human text for an error frame or ApiError: a translated one for known codes. */
export function errorText(err) {
  const code = err && err.code;
  const key = `error.${code}`;
  const known = ["disconnected", "timeout", "already_claimed", "illegal_transition", "forbidden", "not_found", "message_too_long",
    "rate_limited", "overloaded", "conversation_full", "internal"];
  if (known.includes(code)) return t(key);
  return t("error.generic", { message: (err && (err.message || err.code)) || "?" });
}
