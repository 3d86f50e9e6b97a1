// Full-text search over every store's messages (GET /api/search). Chinese needs no spaces: the
// hub matches substrings. Terms under 3 characters cannot use the hub's trigram index, so it
// scans only the newest messages (`method: "scan"`); we say so, since older matches are missing.

import { t, onLangChange } from "/common/i18n.js";
import { h, fill } from "./dom.js";
import { hq } from "./session.js";
import { storeList, storeName, onStores } from "./stores.js";
import { dateTime, number } from "./format.js";
import { openTranscript } from "./transcript.js";

const MAX_QUERY_CHARS = 200;
const LIMIT = 50;

let root = null;
let input, store, submit, list;
let state = null; // { q, res, error, loading }
let loadSeq = 0;

export function mountSearch(el) {
  root = el;
  input = h("input", {
    type: "search", id: "search-input", testid: "search-input", maxlength: String(MAX_QUERY_CHARS),
    autocomplete: "off", enterkeyhint: "search",
  });
  store = h("select", { id: "search-store", testid: "search-store" });
  submit = h("button", { type: "submit", class: "primary", testid: "search-submit" });
  list = h("div", { class: "search-results", "aria-live": "polite" });
  const form = h("form", { class: "search-form", role: "search", on: { submit: (e) => { e.preventDefault(); run(); } } },
    h("label", { for: "search-input", class: "field grow" }, h("span", { data: { i18n: "search.label" } }, t("search.label")), input),
    h("label", { for: "search-store", class: "field" }, h("span", { data: { i18n: "filter.store" } }, t("filter.store")), store),
    submit);
  fill(root, form, list);
  onStores(() => { fillControls(); render(); });
  onLangChange(() => { fillControls(); render(); });
  fillControls();
  render();
}

export function focusSearch() { input.focus(); }

function fillControls() {
  const value = store.value;
  store.replaceChildren(new Option(t("filter.allStores"), ""), ...storeList().map((s) => new Option(s.name || s.id, s.id)));
  store.value = [...store.options].some((o) => o.value === value) ? value : "";
  input.placeholder = t("search.placeholder");
  submit.textContent = t("search.submit");
}

async function run() {
  const q = input.value.trim();
  if (!q) {
    state = { q, error: { message: t("search.empty") } };
    render();
    return;
  }
  const seq = ++loadSeq;
  state = { q, loading: true };
  render();
  try {
    const res = await hq("/api/search", { q, store: store.value, limit: LIMIT });
    if (seq !== loadSeq) return;
    state = { q, res };
  } catch (err) {
    if (seq !== loadSeq) return;
    state = { q, error: err };
  }
  render();
}

function render() {
  if (!list) return;
  if (!state) {
    fill(list, h("p", { class: "muted" }, t("search.hint")));
    return;
  }
  if (state.loading) {
    fill(list, h("p", { class: "muted", role: "status" }, t("search.searching")));
    return;
  }
  if (state.error) {
    const e = state.error;
    fill(list, h("p", { class: "error-text" }, e.code === "bad_request" ? t("search.bad", { message: e.message }) : e.message && !e.code ? e.message : t("error.load")));
    return;
  }
  const { res } = state;
  const notes = [h("p", { class: "muted small", role: "status" }, t("search.count", { n: number(res.results.length), q: res.q }))];
  if (res.method === "scan") {
    notes.push(h("p", { class: "note", testid: "search-scan-note" },
      t("search.scanNote", { n: number(res.scanned_messages_max ?? 0) })));
  }
  if (!res.results.length) {
    fill(list, notes, h("p", { class: "empty" }, t("search.none")));
    return;
  }
  fill(list, notes, h("ol", { class: "results" }, res.results.map(result)));
}

function result(r) {
  const open = () => {
    for (const el of list.querySelectorAll(".result.selected")) el.classList.remove("selected");
    item.classList.add("selected");
    openTranscript(r.conversation_id, { highlight: r.message_id });
  };
  const kind = r.sender?.kind || "system";
  const item = h("li", { class: "result" },
    h("button", {
      type: "button", class: "result-open", testid: "search-result",
      data: { conversationId: r.conversation_id, messageId: r.message_id },
      on: { click: open },
    },
    h("span", { class: "meta" },
      h("span", { class: "strong" }, storeName(r.store_id)),
      h("span", {}, [t(`sender.${kind}`), r.sender?.display_name].filter(Boolean).join(" · ")),
      h("time", { datetime: new Date(r.sent_at_ms).toISOString() }, dateTime(r.sent_at_ms))),
    h("span", { class: "snippet" }, snippet(r.snippet, r.highlight))));
  return item;
}

/** The snippet with the match marked; `highlight` counts characters (code points), not UTF-16. */
function snippet(text, highlight) {
  const chars = Array.from(text || "");
  if (!Array.isArray(highlight) || highlight.length !== 2) return chars.join("");
  const [start, end] = highlight;
  if (!(start >= 0 && end > start && end <= chars.length)) return chars.join("");
  return [chars.slice(0, start).join(""), h("mark", {}, chars.slice(start, end).join("")), chars.slice(end).join("")];
}
