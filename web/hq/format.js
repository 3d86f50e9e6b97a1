// Numbers, durations and times as people read them, in the current language.

import { t, lang, formatDateTime } from "/common/i18n.js";

/** "350 ms", "1.5 s", "4 min 10 s", "2 h 5 min"; "—" when there is no value. */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return t("none");
  if (ms < 1000) return t("dur.ms", { n: number(Math.round(ms)) });
  const secs = Math.round(ms / 1000);
  if (secs < 60) return t("dur.s", { n: number(ms / 1000, secs < 10 ? 1 : 0) });
  const mins = Math.floor(secs / 60);
  if (mins < 60) {
    const rest = secs % 60;
    return mins < 10 && rest ? `${t("dur.min", { n: mins })} ${t("dur.s", { n: rest })}` : t("dur.min", { n: mins });
  }
  const hours = Math.floor(mins / 60);
  if (hours < 48) {
    const rest = mins % 60;
    return rest ? `${t("dur.h", { n: hours })} ${t("dur.min", { n: rest })}` : t("dur.h", { n: hours });
  }
  return t("dur.d", { n: number(hours / 24, 1) });
}

/** "just now", "3 min ago", "5 h ago", "2 d ago". */
export function ago(ms, now = Date.now()) {
  if (!ms) return t("never");
  const secs = Math.max(0, Math.round((now - ms) / 1000));
  if (secs < 45) return t("ago.now");
  const mins = Math.round(secs / 60);
  if (mins < 60) return t("ago.min", { n: mins });
  const hours = Math.round(mins / 60);
  if (hours < 48) return t("ago.h", { n: hours });
  return t("ago.d", { n: Math.round(hours / 24) });
}

export function number(n, digits = 0) {
  return Number(n).toLocaleString(lang(), { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function dateTime(ms) {
  return ms ? formatDateTime(ms) : t("none");
}

/** "14:00" in local time. */
export function hourLabel(ms) {
  return new Date(ms).toLocaleTimeString(lang(), { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
}

/** "11/27" / "11月27日". */
export function dayLabel(ms) {
  return new Date(ms).toLocaleDateString(lang(), { month: "numeric", day: "numeric" });
}

/** The status name of a conversation state (`queued`, `assigned`, …). */
export function statusName(status) {
  return t(`status.${status}`);
}

/** An intent's name; `null` (not classified yet) is "unknown". */
export function intentName(intent) {
  const key = intent || "unknown";
  return key === "unknown" ? t("intent.unknown") : key;
}
