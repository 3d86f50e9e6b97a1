// Activity figures of the region (GET /api/figures): message volume per hour, first-response time
// and resolution time, each split by store and by intent, for the last 24 hours or 7 days.
// Redrawn when the data, the language or the available width changes.

import { t, onLangChange } from "/common/i18n.js";
import { h, fill } from "./dom.js";
import { hq } from "./session.js";
import { storeList, storeName, onStores } from "./stores.js";
import { ago, dateTime, dayLabel, duration, hourLabel, intentName, number } from "./format.js";
import { barList, countTicks, durationTicks, timeChart } from "./chart.js";

const HOUR = 3600_000;
const RANGES = { "24h": 24 * HOUR, "7d": 7 * 24 * HOUR };
const REFRESH_MS = 60_000;

let root = null;
let el = {};
let range = "24h";
let data = null;
let error = null;
let loadedAt = 0;
let timer = null;
let lastWidth = 0;
let loadSeq = 0;
let splitOpen = false; // the by-store / by-intent volume stays open across redraws
const intentListeners = new Set();

export function mountCharts(container) {
  root = container;
  el.range = h("div", { class: "segmented", role: "group", testid: "figures-range" },
    Object.keys(RANGES).map((key) => h("button", {
      type: "button", data: { range: key }, "aria-pressed": String(key === range),
      on: { click: () => setRange(key) },
    })));
  el.store = h("select", { id: "figures-store", testid: "figures-store", on: { change: load } });
  el.status = h("span", { class: "muted small", role: "status" });
  el.tiles = h("div", { class: "tiles" });
  el.volume = h("figure", { class: "card chart-card wide", testid: "chart-volume" });
  el.first = h("figure", { class: "card chart-card", testid: "chart-first-response" });
  el.resolution = h("figure", { class: "card chart-card", testid: "chart-resolution" });
  el.grid = h("div", { class: "chart-grid" }, el.volume, el.first, el.resolution);
  fill(root,
    h("div", { class: "section-head" },
      h("h2", { id: "figures-heading", data: { i18n: "figures.title" } }, t("figures.title")),
      el.range,
      h("label", { for: "figures-store", class: "field inline" }, h("span", { data: { i18n: "filter.store" } }, t("filter.store")), el.store),
      el.status),
    el.tiles,
    el.grid);
  onStores(fillStores);
  onLangChange(() => { fillStores(); render(); });
  new ResizeObserver(() => {
    const width = el.grid.clientWidth;
    if (width && width !== lastWidth) { lastWidth = width; render(); }
  }).observe(el.grid);
  fillStores();
  render();
}

/** Listeners get the intents present in the figures (the conversation filter offers them). */
export function onIntents(fn) { intentListeners.add(fn); }

export function startCharts() {
  stopCharts();
  load();
  timer = setInterval(load, REFRESH_MS);
}

export function stopCharts() {
  if (timer) clearInterval(timer);
  timer = null;
}

function setRange(key) {
  range = key;
  load();
}

function fillStores() {
  const value = el.store.value;
  el.store.replaceChildren(new Option(t("filter.allStores"), ""), ...storeList().map((s) => new Option(s.name || s.id, s.id)));
  el.store.value = [...el.store.options].some((o) => o.value === value) ? value : "";
}

async function load() {
  const seq = ++loadSeq;
  const to = Date.now();
  try {
    const res = await hq("/api/figures", { from: to - RANGES[range], to, store: el.store.value });
    if (seq !== loadSeq) return;
    data = res;
    error = null;
    loadedAt = Date.now();
    for (const fn of intentListeners) fn(Object.keys(res.by_intent || {}));
  } catch (err) {
    if (seq !== loadSeq) return;
    error = err;
  }
  render();
}

function render() {
  if (!root) return;
  for (const b of el.range.querySelectorAll("button")) {
    b.textContent = t(`figures.range.${b.dataset.range}`);
    b.setAttribute("aria-pressed", String(b.dataset.range === range));
  }
  el.status.textContent = error ? t("error.load") : loadedAt ? t("stores.updated", { when: ago(loadedAt) }) : t("loading");
  el.status.classList.toggle("error-text", !!error);
  if (!data) {
    for (const f of [el.volume, el.first, el.resolution]) fill(f, h("p", { class: "empty" }, error ? t("error.load") : t("loading")));
    return;
  }
  renderTiles();
  const width = el.grid.clientWidth;
  if (!width) return; // hidden: drawn when shown (the ResizeObserver fires)
  const wide = el.volume.clientWidth - 32;
  const half = el.first.clientWidth - 32;
  renderVolume(Math.max(280, wide));
  renderDuration(el.first, "first_response", "figures.firstResponse", "figures.firstResponseNote", Math.max(280, half));
  renderDuration(el.resolution, "resolution", "figures.resolution", "figures.resolutionNote", Math.max(280, half));
}

function renderTiles() {
  const tot = data.totals;
  const tile = (key, value, sub) => h("div", { class: "tile" },
    h("div", { class: "tile-label" }, t(key)), h("div", { class: "tile-value" }, value), sub ? h("div", { class: "muted small" }, sub) : null);
  fill(el.tiles,
    tile("figures.messages", number(tot.messages)),
    tile("figures.newConversations", number(tot.new_conversations)),
    tile("figures.firstResponseMedian", duration(tot.first_response.p50_ms), t("figures.nConversations", { n: number(tot.first_response.count) })),
    tile("figures.resolutionMedian", duration(tot.resolution.p50_ms), t("figures.nConversations", { n: number(tot.resolution.count) })));
}

function scope() {
  return data.store ? storeName(data.store) : t("figures.allStores");
}

function renderVolume(width) {
  const hours = data.hours || [];
  const band = (width - 66) / Math.max(1, hours.length);
  const step = [1, 2, 3, 4, 6, 12, 24].find((n) => n * band >= 46) || 24;
  const points = hours.map((hr) => ({
    at: hr.hour_start_ms,
    bar: hr.messages,
    point: hr.new_conversations,
    tip: t("figures.hourTip", {
      when: `${dayLabel(hr.hour_start_ms)} ${hourLabel(hr.hour_start_ms)}–${hourLabel(hr.hour_start_ms + HOUR)}`,
      messages: number(hr.messages), conversations: number(hr.new_conversations),
    }),
  }));
  const busiest = hours.reduce((best, hr) => (!best || hr.messages > best.messages ? hr : best), null);
  const title = t("figures.volume");
  const desc = t("figures.volumeDesc", {
    scope: scope(), from: dateTime(data.from_ms), to: dateTime(data.to_ms),
    messages: number(data.totals.messages), conversations: number(data.totals.new_conversations),
    busiest: busiest && busiest.messages ? `${dayLabel(busiest.hour_start_ms)} ${hourLabel(busiest.hour_start_ms)}` : t("none"),
  });
  const svg = timeChart({
    width, title, desc, points,
    bar: t("figures.messages"), point: t("figures.newConversations"),
    xAxis: t("figures.hourAxis"), yAxis: t("figures.countAxis"),
    xTick: (at) => {
      const d = new Date(at);
      if (d.getHours() % step !== 0) return null;
      return d.getHours() === 0 || step >= 24 ? dayLabel(at) : hourLabel(at);
    },
  });
  const split = barList({
    width,
    title: t("figures.volumeSplit"),
    desc: t("figures.volumeSplitDesc", { scope: scope() }),
    groups: groups((f) => [f.messages, f.new_conversations], false),
    series: [t("figures.messages"), t("figures.newConversations")],
    format: (v) => number(v),
    ticks: (max) => countTicks(max),
    axis: t("figures.countAxis"),
    empty: t("figures.noData"),
  });
  fill(el.volume,
    h("figcaption", {}, h("h3", {}, title), h("p", { class: "muted small" }, t("figures.volumeNote", { scope: scope() }))),
    svg,
    h("details", {
      class: "split", open: splitOpen,
      on: { toggle: (e) => { splitOpen = e.target.open; } },
    }, h("summary", {}, t("figures.volumeSplit")), split));
}

function renderDuration(figure, key, titleKey, noteKey, width) {
  const tot = data.totals[key];
  const title = t(titleKey);
  const summary = tot.count
    ? t("figures.durationSummary", {
      scope: scope(), p50: duration(tot.p50_ms), p90: duration(tot.p90_ms), avg: duration(tot.avg_ms), n: number(tot.count),
    })
    : t("figures.durationNone", { scope: scope() });
  const svg = barList({
    width, title, desc: `${t(noteKey)} ${summary}`,
    groups: groups((f) => [f[key].p50_ms, f[key].p90_ms], true, key),
    series: [t("figures.p50"), t("figures.p90")],
    format: duration,
    ticks: (max) => durationTicks(max),
    axis: t("figures.durationAxis"),
    empty: t("figures.noData"),
  });
  fill(figure,
    h("figcaption", {}, h("h3", {}, title), h("p", { class: "muted small" }, t(noteKey)), h("p", { class: "small" }, summary)),
    svg);
}

/** "By store" and "By intent" rows; `values(f)` picks the numbers of one entry of the figures. */
function groups(values, counted, key) {
  const sub = (f) => (counted ? t("figures.n", { n: number(f[key].count) }) : null);
  const byStore = Object.entries(data.by_store || {})
    .sort(([a], [b]) => storeName(a).localeCompare(storeName(b)))
    .map(([id, f]) => ({ label: storeName(id), sub: sub(f), values: values(f) }));
  const byIntent = Object.entries(data.by_intent || {})
    .sort(([a], [b]) => (a === "unknown") - (b === "unknown") || a.localeCompare(b))
    .map(([intent, f]) => ({ label: intentName(intent), sub: sub(f), values: values(f) }));
  return [{ label: t("figures.byStore"), rows: byStore }, { label: t("figures.byIntent"), rows: byIntent }];
}
