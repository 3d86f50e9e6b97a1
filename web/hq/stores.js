// The region's stores: a table with online / offline, last sync and enrollment, refreshed every
// REFRESH_MS while signed in. The list is also what the other sections use for store names and
// their store filters, so it is kept here and announced with `onStores`.

import { t, onLangChange } from "/common/i18n.js";
import { h, fill } from "./dom.js";
import { hq } from "./session.js";
import { ago, dateTime } from "./format.js";

const REFRESH_MS = 15_000;

let stores = [];
let loadedAt = 0;
let failed = null;
let timer = null;
let root = null;
const listeners = new Set();

export function storeList() { return stores; }

/** The store's name for people, its id when it has none or is unknown. */
export function storeName(id) {
  const s = stores.find((x) => x.id === id);
  return s && s.name ? s.name : id;
}

/** `fn(stores)` runs when the set of stores or a name changes. */
export function onStores(fn) { listeners.add(fn); }

export function mountStores(el) {
  root = el;
  onLangChange(render);
}

/** Loads now, then every REFRESH_MS (and re-renders "n min ago" with it). */
export function startStores() {
  stopStores();
  load();
  timer = setInterval(load, REFRESH_MS);
}

export function stopStores() {
  if (timer) clearInterval(timer);
  timer = null;
}

async function load() {
  try {
    const res = await hq("/api/stores");
    const before = names();
    stores = res.stores || [];
    loadedAt = Date.now();
    failed = null;
    // Others redraw only when a store or a name changed, not on every refresh.
    if (names() !== before) for (const fn of listeners) fn(stores);
  } catch (err) {
    if (err.status === 401) return;
    failed = err;
  }
  render();
}

function names() {
  return JSON.stringify(stores.map((x) => [x.id, x.name]));
}

function render() {
  if (!root) return;
  const online = stores.filter((s) => s.online).length;
  const caption = h("p", { class: "muted small" },
    t("stores.summary", { online, total: stores.length }),
    loadedAt ? ` · ${t("stores.updated", { when: ago(loadedAt) })}` : "");
  if (failed) caption.append(h("span", { class: "error-text" }, ` · ${t("error.load")}`));
  if (!stores.length) {
    fill(root, caption, h("p", { class: "empty" }, loadedAt ? t("stores.none") : t("loading")));
    return;
  }
  const rows = stores.map((s) => h("tr", { testid: "store-row", data: { storeId: s.id } },
    h("td", {}, h("div", { class: "strong" }, s.name || s.id), h("div", { class: "muted small mono" }, s.id)),
    h("td", {}, h("span", {
      class: `badge ${s.online ? "ok" : "off"}`,
      testid: "store-online",
      data: { online: String(!!s.online) },
    }, s.online ? t("stores.online") : t("stores.offline"))),
    h("td", { title: s.last_sync_at_ms ? dateTime(s.last_sync_at_ms) : null }, s.last_sync_at_ms ? ago(s.last_sync_at_ms) : t("never")),
    h("td", {}, enrollment(s))));
  fill(root, caption, h("div", { class: "table-wrap" }, h("table", { class: "table" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, t("stores.col.store")),
      h("th", { scope: "col" }, t("stores.col.status")),
      h("th", { scope: "col" }, t("stores.col.lastSync")),
      h("th", { scope: "col" }, t("stores.col.enrollment")))),
    h("tbody", {}, rows))));
}

function enrollment(s) {
  if (s.revoked) return h("span", { class: "badge bad" }, t("stores.revoked"));
  if (s.enrolled) return h("span", { title: dateTime(s.enrolled_at_ms) }, t("stores.enrolled"));
  return h("span", { class: "muted" }, t("stores.notEnrolled"));
}
