// The store's live settings as in force (GET /api/v1/settings), for the store admin: each value
// with the layer it came from (built-in default, this box's file, the store admin, HQ for the
// region, HQ for this store), the generation, HQ's version, the last change, and the last
// change the appliance refused. Read only: the file, the bot form on the admin page and HQ
// change them.

import { api } from "/common/api.js";
import { t, lang, onLangChange } from "/common/i18n.js";
import { h, replace } from "./dom.js";

const SOURCES = ["default", "file", "admin", "hq_region", "hq_store"];

export function mountSettings(root, { token }) {
  let data = null; // the last answer of GET /api/v1/settings
  let problem = null; // text of the last failed load
  let loading = false;
  let staffNames = new Map(); // staff id → name, for "changed by staff:<id>"
  let staffByUsername = new Map(); // username → name, for rules that name a person

  async function load() {
    loading = true;
    render();
    try {
      data = await api("/api/v1/settings", { token });
      problem = null;
    } catch (err) {
      problem = t("settings.error", { message: err.message || err.code });
    }
    // Names are a nicety: the page works without them (an id is shown instead).
    try {
      const res = await api("/api/staff", { token });
      staffNames = new Map((res.staff || []).map((s) => [s.id, s.name]));
      staffByUsername = new Map((res.staff || []).map((s) => [s.username, s.name]));
    } catch { /* keep the previous names */ }
    loading = false;
    render();
  }

  const when = (ms) => new Date(ms).toLocaleString(lang(), { dateStyle: "short", timeStyle: "medium" });

  function badge(source) {
    const known = SOURCES.includes(source) ? source : "default";
    return h("span", { class: `source-badge source-${known}`, testid: "settings-source", dataset: { source: source || "" } },
      t(`settings.source.${known}`));
  }

  /** The source of a dotted path: the path itself, else its nearest listed parent. */
  function sourceOf(path) {
    const sources = (data && data.sources) || {};
    for (let p = path; p; p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "") {
      if (sources[p]) return sources[p];
    }
    return "default";
  }

  function row(path, labelKey, value) {
    return h("tr", { testid: "settings-value", dataset: { path, source: sourceOf(path) } },
      h("th", { scope: "row" }, t(labelKey)),
      h("td", { class: "settings-v" }, value),
      h("td", { class: "settings-src" }, badge(sourceOf(path))));
  }

  function group(id, headingKey, rows) {
    return h("section", { class: "admin-section", testid: `settings-${id}`, "aria-labelledby": `settings-${id}-heading` },
      h("h2", { id: `settings-${id}-heading` }, t(headingKey)),
      h("table", { class: "admin-table settings-table" }, h("tbody", {}, rows)));
  }

  function changedBy(by) {
    if (!by) return "—";
    if (by === "start") return t("settings.by.start");
    if (by === "file") return t("settings.by.file");
    const [kind, ...rest] = by.split(":");
    const id = rest.join(":");
    if (kind === "staff") return t("settings.by.staff", { name: staffNames.get(id) || id });
    if (kind === "hq") return t("settings.by.hq", { id });
    return by;
  }

  const list = (items, label = (x) => x) => items.map(label).join(t("settings.list_sep"));

  function ruleText(rule) {
    const w = rule.when || {};
    const conds = [];
    if (w.intents && w.intents.length) conds.push(t("settings.rule.intents", { list: w.intents.map((i) => t(`intent.${i}`)).join(t("settings.rule.or")) }));
    if (w.languages && w.languages.length) conds.push(t("settings.rule.languages", { list: w.languages.map((l) => t(`settings.language.${l}`)).join(t("settings.rule.or")) }));
    if (w.stores && w.stores.length) conds.push(t("settings.rule.stores", { list: w.stores.join(t("settings.rule.or")) }));
    if (w.within_hours === true || w.within_hours === false) conds.push(t(`settings.rule.within_hours.${w.within_hours}`));
    if (w.min_queue_length !== null && w.min_queue_length !== undefined) conds.push(t("settings.rule.min_queue", { n: w.min_queue_length }));
    if (w.returning_customer === true || w.returning_customer === false) conds.push(t(`settings.rule.returning.${w.returning_customer}`));
    const a = rule.assign || {};
    const assign = a.staff ? t("settings.rule.assign.staff", { name: staffLabel(a.staff) })
      : a.team ? t("settings.rule.assign.team", { name: a.team })
        : a.skill ? t("settings.rule.assign.skill", { name: a.skill }) : "—";
    return t("settings.rule.line", { when: conds.length ? conds.join(t("settings.rule.and")) : t("settings.rule.any"), assign });
  }

  // Rules name a staff member by username: "Li Na (lina)", or the username alone if unknown.
  const staffLabel = (username) => (staffByUsername.has(username) ? `${staffByUsername.get(username)} (${username})` : username);

  function rules(routing) {
    if (!routing.rules.length) return h("span", { class: "muted" }, t("settings.routing.rules.none"));
    return h("ol", { class: "settings-rules", testid: "settings-rules" },
      routing.rules.map((r) => h("li", { testid: "settings-rule", dataset: { name: r.name } },
        h("strong", {}, r.name), " ", h("span", {}, ruleText(r)))));
  }

  function offset(minutes) {
    const sign = minutes < 0 ? "−" : "+";
    const m = Math.abs(minutes);
    return `UTC${sign}${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
  }

  function periods(hours) {
    if (!hours.open.length) return h("span", { class: "muted" }, t("settings.hours.always"));
    return h("ul", { class: "settings-periods" }, hours.open.map((p) =>
      h("li", {}, t("settings.hours.period", { days: list(p.days, (d) => t(`settings.day.${d}`)), from: p.from, to: p.to }))));
  }

  function span(secs) {
    if (!secs) return t("settings.retention.forever");
    const [n, unit] = secs % 86_400 === 0 ? [secs / 86_400, "days"] : secs % 3_600 === 0 ? [secs / 3_600, "hours"]
      : secs % 60 === 0 ? [secs / 60, "minutes"] : [secs, "seconds"];
    return t("settings.retention.after", { time: t(`settings.unit.${unit}`, { n }) });
  }

  function hqLayer(name) {
    const layer = data.layers && data.layers[name];
    return h("li", { testid: `settings-layer-${name}` }, badge(name), " ",
      layer ? t("settings.layer.hq", { version: layer.version, author: changedBy(layer.author), time: when(layer.updated_at_ms) })
        : h("span", { class: "muted" }, t("settings.layer.none")));
  }

  function refusal() {
    const r = data && data.refused;
    if (!r) return null;
    return h("div", { class: "settings-refused", role: "alert", testid: "settings-refused", dataset: { source: r.source } },
      h("strong", {}, t("settings.refused.heading")),
      h("p", {}, t("settings.refused.from", { time: when(r.at_ms) }), " ", badge(r.source)),
      h("code", { testid: "settings-refused-reason" }, r.reason),
      h("p", { class: "muted" }, t("settings.refused.kept")));
  }

  function render() {
    const head = h("div", { class: "settings-head" },
      h("h1", {}, t("settings.heading")),
      h("button", { type: "button", testid: "settings-refresh", disabled: loading, onclick: () => load() },
        t(loading ? "settings.refreshing" : "settings.refresh")));
    if (!data) {
      replace(root, head,
        problem ? h("p", { class: "form-message bad", role: "status", testid: "settings-error" }, problem)
          : h("p", { class: "muted" }, t("settings.loading")));
      return;
    }
    const s = data.settings;
    const meta = h("section", { class: "admin-section settings-meta", testid: "settings-meta", dataset: { generation: data.generation, hqVersion: data.hq_version } },
      h("p", { class: "muted" }, t("settings.explain")),
      h("dl", {},
        h("dt", {}, t("settings.generation")), h("dd", { testid: "settings-generation" }, String(data.generation)),
        h("dt", {}, t("settings.hq_version")), h("dd", { testid: "settings-hq-version" }, data.hq_version ? String(data.hq_version) : t("settings.hq_version.none")),
        h("dt", {}, t("settings.changed")), h("dd", { testid: "settings-changed" }, t("settings.changed.value", { by: changedBy(data.changed_by), time: when(data.changed_at_ms) }))),
      h("ul", { class: "settings-layers" }, hqLayer("hq_region"), hqLayer("hq_store")));
    replace(root, head,
      problem ? h("p", { class: "form-message bad", role: "status", testid: "settings-error" }, problem) : null,
      refusal(),
      meta,
      group("routing", "settings.routing.heading", [
        row("routing.capacity_per_staff", "settings.routing.capacity", h("span", { testid: "settings-capacity" }, t("settings.routing.capacity.value", { n: s.routing.capacity_per_staff }))),
        row("routing.fallback", "settings.routing.fallback", t(`settings.routing.fallback.${s.routing.fallback}`)),
        row("routing.rules", "settings.routing.rules", rules(s.routing))]),
      group("bot", "settings.bot.heading", [
        row("bot.intents", "settings.bot.intents", s.bot.intents.length ? list(s.bot.intents, (i) => t(`intent.${i}`)) : h("span", { class: "muted" }, t("settings.bot.off"))),
        row("bot.min_confidence", "settings.bot.min_confidence", `${Math.round(s.bot.min_confidence * 100)} %`)]),
      group("hours", "settings.hours.heading", [
        row("hours.utc_offset_minutes", "settings.hours.offset", offset(s.hours.utc_offset_minutes)),
        row("hours.open", "settings.hours.open", periods(s.hours)),
        row("hours.offline_message", "settings.hours.offline_message", s.hours.offline_message
          ? h("span", { style: "white-space:pre-wrap" }, s.hours.offline_message) : h("span", { class: "muted" }, t("settings.hours.offline_message.none")))]),
      group("retention", "settings.retention.heading", [
        row("retention.resolved_conversation_secs", "settings.retention.resolved", span(s.retention.resolved_conversation_secs))]));
  }

  onLangChange(render);
  return {
    /** Called each time the view is opened: shows what it has and asks again. */
    show() { load(); },
  };
}
