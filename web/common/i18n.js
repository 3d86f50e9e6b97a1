// Translations for every page: zh-CN and en.
//
// Each page registers its own strings with `addStrings({ en: {...}, "zh-CN": {...} })` and
// marks static text with `data-i18n="key"` (also `data-i18n-placeholder`, `data-i18n-title`,
// `data-i18n-aria-label`). The language comes from the user's choice (kept in localStorage),
// else from the browser's languages; `setLang` switches it live and re-renders every marked
// element, then calls the listeners registered with `onLangChange` for text built in code.

export const LANGS = ["zh-CN", "en"];
const STORAGE_KEY = "aisle.lang";
const dictionaries = { en: {}, "zh-CN": {} };
const listeners = new Set();

function detect() {
  const saved = safeGet(STORAGE_KEY);
  if (LANGS.includes(saved)) return saved;
  for (const l of navigator.languages || [navigator.language || "en"]) {
    const lower = String(l).toLowerCase();
    if (lower.startsWith("zh")) return "zh-CN";
    if (lower.startsWith("en")) return "en";
  }
  return "en";
}

function safeGet(key) {
  try { return localStorage.getItem(key); } catch { return null; }
}

let current = detect();
document.documentElement.lang = current;

export function lang() { return current; }

export function addStrings(table) {
  for (const l of LANGS) Object.assign(dictionaries[l], table[l] || {});
}

/** The text for `key` in the current language; `{name}` placeholders are filled from `vars`. */
export function t(key, vars = {}) {
  let text = dictionaries[current][key];
  if (text === undefined) {
    console.warn(`i18n: no ${current} text for "${key}"`);
    text = dictionaries.en[key] ?? key;
  }
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/** Fills every `data-i18n*` element under `root`. */
export function applyTranslations(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
}

export function setLang(next) {
  if (!LANGS.includes(next) || next === current) return;
  current = next;
  try { localStorage.setItem(STORAGE_KEY, next); } catch { /* private mode: not remembered */ }
  document.documentElement.lang = next;
  applyTranslations();
  for (const fn of listeners) fn(next);
}

export function onLangChange(fn) { listeners.add(fn); return () => listeners.delete(fn); }

/** A `<select>` switching the language; put it in every page's header. */
export function langSwitch() {
  const select = document.createElement("select");
  select.className = "lang-switch";
  select.setAttribute("data-testid", "lang-switch");
  select.setAttribute("aria-label", "Language / 语言");
  for (const [value, label] of [["zh-CN", "中文"], ["en", "English"]]) {
    const option = new Option(label, value, false, value === current);
    select.add(option);
  }
  select.addEventListener("change", () => setLang(select.value));
  onLangChange((l) => { select.value = l; });
  return select;
}

/** Dates and durations in the current language. */
export function formatTime(ms) {
  return new Date(ms).toLocaleTimeString(current, { hour: "2-digit", minute: "2-digit" });
}
export function formatDateTime(ms) {
  return new Date(ms).toLocaleString(current, { dateStyle: "short", timeStyle: "short" });
}
