// HQ's live settings of the stores (docs/hub-api.md, "HQ live settings"): the region layer and
// one chosen store's layer as JSON an admin edits and saves, and that store's effective settings
// with the layer each value comes from. The hub checks every layer with the stores' own code;
// its refusal names the setting at fault and is shown as it is, and the saved layer stays.
// A viewer sees the same, read only.

import { t, onLangChange } from "/common/i18n.js";
import { h, fill } from "./dom.js";
import { current, hq, hqSend } from "./session.js";
import { storeList, onStores } from "./stores.js";
import { dateTime } from "./format.js";

let root = null;
let region = null; // { layer, error, saving, message }
let store = null; // { id, view, error, saving, message }
let regionText, storeText, storeSelect;
let loadSeq = 0;

function isAdmin() {
  return current()?.account?.role === "hq_admin";
}

export function mountSettings(el) {
  root = el;
  regionText = editor("settings-region-text", "settings.region.label");
  storeText = editor("settings-store-text", "settings.store.label");
  storeSelect = h("select", { id: "settings-store", testid: "settings-store", on: { change: () => loadStore(storeSelect.value) } });
  onStores(() => { fillStores(); render(); });
  onLangChange(() => { fillStores(); render(); });
}

function editor(id, label) {
  return h("textarea", {
    id, testid: id, class: "mono settings-text", rows: "12", spellcheck: "false",
    autocomplete: "off", "aria-label": t(label),
  });
}

/** Loads the region layer and the chosen store's settings (called when the view opens). */
export async function showSettings() {
  fillStores();
  render();
  await Promise.all([loadRegion(), loadStore(storeSelect.value)]);
}

function fillStores() {
  const value = storeSelect.value || store?.id || "";
  const stores = storeList();
  storeSelect.replaceChildren(...stores.map((s) => new Option(s.name || s.id, s.id)));
  storeSelect.value = stores.some((s) => s.id === value) ? value : (stores[0]?.id || "");
  // The list arrived or changed while the view is open: show the chosen store.
  const open = document.body.dataset.view === "settings";
  if (open && storeSelect.value && storeSelect.value !== store?.id) loadStore(storeSelect.value);
}

async function loadRegion() {
  try {
    const res = await hq("/api/settings/region");
    region = { layer: res.layer };
    regionText.value = pretty(res.layer?.settings ?? {});
  } catch (err) {
    if (err.status === 401) return;
    region = { error: t("error.load") };
  }
  render();
}

async function loadStore(id) {
  if (!id) { store = null; render(); return; }
  const seq = ++loadSeq;
  store = { id, loading: true };
  render();
  try {
    const view = await hq(`/api/stores/${encodeURIComponent(id)}/settings`);
    if (seq !== loadSeq) return;
    store = { id, view };
    storeText.value = pretty(view.store?.settings ?? {});
  } catch (err) {
    if (err.status === 401 || seq !== loadSeq) return;
    store = { id, error: t("error.load") };
  }
  render();
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** The textarea's JSON, or a message saying where it is not JSON. */
function parsed(text) {
  try {
    return { value: JSON.parse(text.trim() || "{}") };
  } catch (err) {
    return { error: t("settings.notJson", { message: err.message }) };
  }
}

async function saveRegion() {
  const body = parsed(regionText.value);
  if (body.error) { region = { ...region, error: body.error, message: null }; render(); return; }
  region = { ...region, saving: true, error: null, message: null };
  render();
  try {
    const res = await hqSend("/api/settings/region", "PUT", { settings: body.value });
    region = { layer: res.layer, message: t("settings.savedStores", { n: res.stores.length }) };
    regionText.value = pretty(res.layer.settings);
    if (store?.id) loadStore(store.id);
  } catch (err) {
    region = { ...region, saving: false, error: refusal(err) };
  }
  render();
}

async function saveStore() {
  const id = store?.id;
  if (!id) return;
  const body = parsed(storeText.value);
  if (body.error) { store = { ...store, error: body.error, message: null }; render(); return; }
  store = { ...store, saving: true, error: null, message: null };
  render();
  try {
    const view = await hqSend(`/api/stores/${encodeURIComponent(id)}/settings`, "PUT", { settings: body.value });
    store = { id, view, message: t("settings.saved") };
    storeText.value = pretty(view.store?.settings ?? {});
  } catch (err) {
    store = { ...store, saving: false, error: refusal(err) };
  }
  render();
}

/** The hub's refusal as it said it (it names the setting), or a network message. */
function refusal(err) {
  if (err.code === "network") return t("error.network");
  if (err.code === "invalid_settings") return t("settings.refused", { message: err.message });
  return t("settings.failed", { message: err.message });
}

function render() {
  if (!root) return;
  fill(root,
    h("p", { class: "muted small" }, t("settings.intro")),
    h("div", { class: "settings-grid" }, regionCard(), storeCard()));
}

function regionCard() {
  return h("section", { class: "card settings-card", testid: "settings-region", "aria-labelledby": "settings-region-heading" },
    h("h2", { id: "settings-region-heading" }, t("settings.region.title")),
    h("p", { class: "muted small" }, t("settings.region.note")),
    layerFacts(region?.layer, "settings-region-meta"),
    h("label", { class: "field", for: "settings-region-text" }, h("span", {}, t("settings.region.label")), regionText),
    actions(region, saveRegion, "settings-region"));
}

function storeCard() {
  const view = store?.view;
  return h("section", { class: "card settings-card", testid: "settings-store-card", "aria-labelledby": "settings-store-heading" },
    h("h2", { id: "settings-store-heading" }, t("settings.store.title")),
    h("label", { class: "field", for: "settings-store" }, h("span", {}, t("filter.store")), storeSelect),
    storeList().length ? null : h("p", { class: "empty" }, t("stores.none")),
    view ? layerFacts(view.store, "settings-store-meta") : null,
    h("label", { class: "field", for: "settings-store-text" }, h("span", {}, t("settings.store.label")), storeText),
    h("p", { class: "muted small" }, t("settings.store.note")),
    actions(store, saveStore, "settings-store"),
    view ? effectiveTable(view) : null);
}

/** Version, author and time of a layer, or "not set". */
function layerFacts(layer, testid) {
  if (!layer) return h("p", { class: "muted small", testid }, t("settings.notSet"));
  return h("dl", { class: "facts", testid, data: { version: String(layer.version) } },
    h("div", {}, h("dt", {}, t("settings.version")), h("dd", { class: "mono", testid: `${testid}-version` }, String(layer.version))),
    h("div", {}, h("dt", {}, t("settings.author")), h("dd", { class: "mono" }, layer.author)),
    h("div", {}, h("dt", {}, t("settings.updated")), h("dd", {}, dateTime(layer.updated_at_ms))));
}

function actions(state, save, prefix) {
  const admin = isAdmin();
  regionText.readOnly = !admin;
  storeText.readOnly = !admin;
  return h("div", { class: "settings-actions" },
    admin ? h("button", {
      type: "button", class: "primary", testid: `${prefix}-save`,
      disabled: !!state?.saving || (prefix === "settings-store" && !store?.id),
      on: { click: save },
    }, state?.saving ? t("settings.saving") : t("settings.save")) : h("span", { class: "muted small" }, t("settings.readOnly")),
    state?.message ? h("span", { class: "ok-text small", testid: `${prefix}-saved`, role: "status" }, state.message) : null,
    state?.error ? h("p", { class: "error-text", testid: `${prefix}-error`, role: "alert" }, state.error) : null);
}

function effectiveTable(view) {
  if (!view.effective) {
    return h("p", { class: "error-text", testid: "settings-effective-error" }, view.effective_error || t("error.load"));
  }
  const rows = Object.entries(view.effective.sources).map(([path, source]) => {
    const value = valueAt(view.effective.settings, path);
    return h("tr", { testid: "effective-row", data: { path, source } },
      h("td", { class: "mono" }, path),
      h("td", { class: "mono settings-value" }, JSON.stringify(value)),
      h("td", {}, h("span", { class: `badge source-${source}` }, t(`settings.source.${source}`))));
  });
  return h("div", { class: "settings-effective" },
    h("h3", {}, t("settings.effective.title")),
    h("p", { class: "muted small" }, t("settings.effective.note")),
    h("div", { class: "table-wrap" }, h("table", { class: "table", testid: "settings-effective" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, t("settings.col.setting")),
        h("th", { scope: "col" }, t("settings.col.value")),
        h("th", { scope: "col" }, t("settings.col.source")))),
      h("tbody", {}, rows))));
}

function valueAt(tree, path) {
  return path.split(".").reduce((node, key) => (node == null ? node : node[key]), tree);
}
