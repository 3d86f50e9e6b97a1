// A tiny element builder, so views read like the markup they make without innerHTML (no
// injection from chat text) and without a framework.

/**
 * `h("button", { class: "primary", testid: "action-claim", onclick }, t("action.claim"))`.
 * `testid` sets data-testid, `dataset` sets data-*, `on*` functions become listeners, other
 * keys are attributes (false/null/undefined ones are skipped). Children may be strings,
 * nodes, arrays or null.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "testid") el.setAttribute("data-testid", value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (key === "checked" || key === "selected" || key === "disabled" || key === "hidden") el[key] = !!value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** `$("#id")`, scoped to `root`. */
export const $ = (sel, root = document) => root.querySelector(sel);
