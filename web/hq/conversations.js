// The merged conversation list of every store of the region, newest first, with the filters the
// hub offers (store, state, intent, date range) and "load more" paging by `next_before`.

import { t, onLangChange } from "/common/i18n.js";
import { h, fill } from "./dom.js";
import { hq } from "./session.js";
import { storeList, storeName, onStores } from "./stores.js";
import { dateTime, statusName, intentName, number } from "./format.js";
import { openTranscript, firstResponse } from "./transcript.js";

const PAGE = 50;
const STALE_MS = 60_000;
const STATES = ["open", "queued", "assigned", "transferred", "snoozed", "reopened", "resolved"];

let root = null;
let controls = {};
let rows = [];
let nextBefore = null;
let loading = false;
let error = null;
let loaded = false;
let loadedAt = 0;
let selected = null;
let knownIntents = ["unknown"];
let loadSeq = 0;

export function mountConversations(el) {
  root = el;
  controls.store = h("select", { testid: "filter-store", id: "filter-store" });
  controls.state = h("select", { testid: "filter-state", id: "filter-state" });
  controls.intent = h("select", { testid: "filter-intent", id: "filter-intent" });
  controls.from = h("input", { type: "date", testid: "filter-from", id: "filter-from" });
  controls.to = h("input", { type: "date", testid: "filter-to", id: "filter-to" });
  for (const c of Object.values(controls)) c.addEventListener("change", () => reload());
  controls.clear = h("button", { type: "button", on: { click: clearFilters } });
  controls.list = h("div", { class: "conv-list" });
  controls.more = h("button", { type: "button", class: "more", testid: "conv-more", on: { click: () => loadPage(true) } });
  fill(root,
    h("div", { class: "filters", role: "group", "aria-labelledby": "conv-heading" },
      field("filter-store", "filter.store", controls.store),
      field("filter-state", "filter.state", controls.state),
      field("filter-intent", "filter.intent", controls.intent),
      field("filter-from", "filter.from", controls.from),
      field("filter-to", "filter.to", controls.to),
      controls.clear),
    controls.list,
    controls.more);
  onStores(() => { fillSelects(); render(); }); // names may arrive after the first page
  onLangChange(() => { fillSelects(); render(); });
  fillSelects();
  render();
}

/** Intents seen in the figures (so the filter offers them once the hub classifies). */
export function setKnownIntents(intents) {
  const next = ["unknown", ...intents.filter((i) => i !== "unknown").sort()];
  if (next.join() === knownIntents.join()) return;
  knownIntents = next;
  fillSelects();
}

/** Shows the list: loads the first page the first time, and again when it is a minute old. */
export function showConversations() {
  if (!loaded || Date.now() - loadedAt > STALE_MS) reload();
}

export function markSelected(id) {
  selected = id;
  for (const tr of root.querySelectorAll("tr[data-conversation-id]")) {
    tr.classList.toggle("selected", tr.dataset.conversationId === id);
  }
}

function field(id, key, control) {
  return h("label", { for: id, class: "field" }, h("span", { data: { i18n: key } }, t(key)), control);
}

function fillSelects() {
  if (!controls.store) return;
  setOptions(controls.store, [["", t("filter.allStores")], ...storeList().map((s) => [s.id, s.name || s.id])]);
  setOptions(controls.state, [["", t("filter.allStates")], ...STATES.map((s) => [s, s === "open" ? t("filter.stateOpen") : statusName(s)])]);
  setOptions(controls.intent, [["", t("filter.allIntents")], ...knownIntents.map((i) => [i, intentName(i)])]);
  controls.clear.textContent = t("filter.clear");
  controls.more.textContent = t("conv.more");
}

/** Rebuilds a select's options, keeping its value. */
function setOptions(select, options) {
  const value = select.value;
  select.replaceChildren(...options.map(([v, label]) => new Option(label, v)));
  select.value = options.some(([v]) => v === value) ? value : "";
}

function clearFilters() {
  for (const key of ["store", "state", "intent", "from", "to"]) controls[key].value = "";
  reload();
}

/** Local midnight of an `<input type=date>` value, in ms. */
function dayStart(value, plusDays = 0) {
  if (!value) return null;
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).getTime();
}

function params() {
  let [first, last] = [controls.from.value, controls.to.value];
  if (first && last && first > last) [first, last] = [last, first]; // ISO dates sort as text
  const from = dayStart(first);
  const to = dayStart(last, 1); // the whole "to" day is included
  return {
    store: controls.store.value,
    state: controls.state.value,
    intent: controls.intent.value,
    from,
    to,
    limit: PAGE,
  };
}

function reload() {
  rows = [];
  nextBefore = null;
  loadPage(false);
}

async function loadPage(more) {
  const seq = ++loadSeq;
  loading = true;
  error = null;
  render();
  try {
    const res = await hq("/api/conversations", { ...params(), before: more ? nextBefore : null });
    if (seq !== loadSeq) return;
    rows = more ? rows.concat(res.conversations) : res.conversations;
    nextBefore = res.next_before;
    loaded = true;
    if (!more) loadedAt = Date.now();
  } catch (err) {
    if (seq !== loadSeq) return;
    error = err;
  }
  loading = false;
  render();
}

function render() {
  if (!root) return;
  controls.more.classList.toggle("hidden", !nextBefore);
  controls.more.disabled = loading;
  const status = h("p", { class: "muted small", role: "status" },
    loading ? t("loading") : t("conv.count", { n: number(rows.length) }) + (nextBefore ? ` · ${t("conv.moreAvailable")}` : ""));
  if (error) {
    fill(controls.list, status, h("p", { class: "error-text" }, error.code === "bad_request" ? error.message : t("error.load")));
    return;
  }
  if (!rows.length) {
    fill(controls.list, status, h("p", { class: "empty" }, loading ? "" : t("conv.none")));
    return;
  }
  const head = ["col.store", "col.status", "col.agent", "col.created", "col.firstResponse", "col.messages", "col.intent"];
  fill(controls.list, status, h("div", { class: "table-wrap" }, h("table", { class: "table clickable" },
    h("thead", {}, h("tr", {}, head.map((k) => h("th", { scope: "col" }, t(k))))),
    h("tbody", {}, rows.map(row)))));
}

function row(c) {
  const open = () => { markSelected(c.id); openTranscript(c.id); };
  return h("tr", {
    testid: "conv-row",
    data: { conversationId: c.id },
    class: c.id === selected ? "selected" : null,
    tabindex: "0",
    "aria-label": t("conv.open", { store: storeName(c.store_id), when: dateTime(c.created_at_ms) }),
    on: { click: open, keydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } } },
  },
  h("td", {}, storeName(c.store_id)),
  h("td", {}, h("span", { class: `status status-${c.status}` }, statusName(c.status))),
  h("td", {}, c.agent_name || h("span", { class: "muted" }, t("none"))),
  h("td", {}, dateTime(c.created_at_ms)),
  h("td", {}, firstResponse(c)),
  h("td", { class: "num" }, number(c.message_count)),
  h("td", {}, h("span", { class: c.intent ? "" : "muted" }, intentName(c.intent))));
}
