// The assist panel: the intent the appliance's model read in the customer's latest message,
// with its confidence, and suggested replies: the store's canned replies tagged with that
// intent (store admin page). Tapping one puts it in the reply box to edit and send. Nothing is
// sent by itself from here (the bot, when a store allows it, answers on the appliance).

import { api } from "/common/api.js";
import { t, onLangChange } from "/common/i18n.js";
import { h, replace } from "./dom.js";

/** Canned replies are re-read at most this often. */
const CANNED_MAX_AGE_MS = 60_000;

/** Confidence as a whole percentage, whether it comes as 0–1 or already as 0–100. */
function percent(confidence) {
  const p = confidence <= 1 ? confidence * 100 : confidence;
  return Math.round(Math.max(0, Math.min(100, p)));
}

export function mountAssist(root, model, { onSuggestion }) {
  let convId = null;
  let canned = [];
  let cannedAt = 0;

  async function loadCanned() {
    if (Date.now() - cannedAt < CANNED_MAX_AGE_MS) return;
    cannedAt = Date.now();
    try {
      canned = (await api("/api/canned-replies", { token: model.token })).canned_replies || [];
      render();
    } catch { cannedAt = 0; /* shown without suggestions; tried again next time */ }
  }

  function render() {
    const c = convId ? model.convs.get(convId) : null;
    const a = c ? model.assist(c) : { intent: null, urgent: false };
    const parts = [h("h2", { id: "assist-heading" }, t("assist.heading"))];
    if (a.urgent) parts.push(h("p", { class: "urgent", testid: "assist-urgent" }, t("assist.urgent")));
    if (a.intent) {
      parts.push(h("p", { class: "intent", testid: "assist-intent", "data-intent": a.intent },
        t("assist.intent", { intent: t(`intent.${a.intent}`), confidence: percent(a.confidence) })));
    }
    const suggestions = a.intent ? canned.filter((r) => r.intent === a.intent) : [];
    if (suggestions.length) {
      parts.push(h("h3", { class: "muted", style: "font-size:.9rem;margin:4px 0" }, t("assist.suggestions")),
        h("ul", {}, suggestions.map((r) => h("li", {},
          h("button", { type: "button", class: "suggestion", testid: "assist-suggestion", onclick: () => onSuggestion(r.body) }, r.body)))));
    }
    if (!a.intent) parts.push(h("p", { class: "muted", testid: "assist-empty" }, t("assist.empty")));
    replace(root, parts);
    if (a.intent) loadCanned();
  }

  model.onChange((id) => { if (id === null || id === convId) render(); });
  onLangChange(render);
  render();
  return {
    open(id) { convId = id; render(); },
    /** The admin page changed the canned replies: read them again next time. */
    refreshCanned() { cannedAt = 0; },
  };
}
