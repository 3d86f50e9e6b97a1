// The assist panel: the intent detected for the customer's latest messages and suggested
// replies. Inference is not in the backend yet; when messages start carrying `intent` /
// `confidence` (and `suggestions`), they show here. Until then: a calm empty state.

import { t, onLangChange } from "/common/i18n.js";
import { h, replace } from "./dom.js";

/** Confidence as a whole percentage, whether it comes as 0–1 or already as 0–100. */
function percent(confidence) {
  const p = confidence <= 1 ? confidence * 100 : confidence;
  return Math.round(Math.max(0, Math.min(100, p)));
}

export function mountAssist(root, model, { onSuggestion }) {
  let convId = null;

  function render() {
    const c = convId ? model.convs.get(convId) : null;
    const a = c ? model.assist(c) : { intent: null, suggestions: [] };
    const parts = [h("h2", { id: "assist-heading" }, t("assist.heading"))];
    if (a.intent) {
      parts.push(h("p", { class: "intent", testid: "assist-intent" },
        t("assist.intent", { intent: a.intent, confidence: percent(a.confidence) })));
    }
    if (a.suggestions.length) {
      parts.push(h("h3", { class: "muted", style: "font-size:.9rem;margin:4px 0" }, t("assist.suggestions")),
        h("ul", {}, a.suggestions.map((s) => h("li", {},
          h("button", { type: "button", class: "suggestion", testid: "assist-suggestion", onclick: () => onSuggestion(s) }, s)))));
    }
    if (!a.intent && !a.suggestions.length) parts.push(h("p", { class: "muted", testid: "assist-empty" }, t("assist.empty")));
    replace(root, parts);
  }

  model.onChange((id) => { if (id === null || id === convId) render(); });
  onLangChange(render);
  render();
  return { open(id) { convId = id; render(); } };
}
