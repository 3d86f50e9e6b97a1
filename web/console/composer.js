// The reply box: text with a per-conversation draft, the typing indicator we send, canned
// replies opened by "/" at the start, and one image attachment uploaded before the send.

import { api } from "/common/api.js";
import { t, onLangChange, applyTranslations } from "/common/i18n.js";
import { h, replace } from "./dom.js";

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
const TYPING_IDLE_MS = 3000;
const TYPING_REFRESH_MS = 4000;
const CANNED_MAX_AGE_MS = 20_000;

/** A picture icon drawn inline (no icon font, no emoji font on the tablet needed). */
function imageIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "24");
  svg.setAttribute("height", "24");
  svg.setAttribute("aria-hidden", "true");
  for (const [tag, attrs] of [
    ["rect", { x: "3", y: "5", width: "18", height: "14", rx: "2" }],
    ["circle", { cx: "9", cy: "10", r: "1.8" }],
    ["path", { d: "M4 17l5-5 4 4 3-3 4 4" }],
  ]) {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    el.setAttribute("fill", "none");
    el.setAttribute("stroke", "currentColor");
    el.setAttribute("stroke-width", "1.8");
    svg.append(el);
  }
  return svg;
}

export function mountComposer(root, model, { token }) {
  let convId = null;
  let enabled = false;
  const drafts = new Map();
  let attachment = null; // {id, mime, bytes, url, preview}
  let uploading = false;
  let typingSentAt = 0;
  let typingActive = false;
  let idleTimer = null;
  let canned = [];
  let cannedAt = 0;
  let menuItems = [];
  let menuIndex = 0;

  const input = h("textarea", {
    id: "composer-input", testid: "composer-input", rows: 1,
    "data-i18n-placeholder": "composer.placeholder", "aria-autocomplete": "list",
    "aria-controls": "canned-menu", "aria-expanded": "false",
  });
  const label = h("label", { for: "composer-input", class: "visually-hidden", "data-i18n": "composer.label" });
  const send = h("button", { type: "submit", class: "primary", testid: "composer-send", "data-i18n": "composer.send" });
  const fileInput = h("input", {
    type: "file", id: "attach-input", testid: "attach-input", class: "visually-hidden attach-input",
    accept: IMAGE_TYPES.join(","), tabindex: "-1", "aria-hidden": "true",
  });
  const attachButton = h("button", {
    type: "button", class: "attach-button", "data-i18n-aria-label": "composer.attach",
    "data-i18n-title": "composer.attach", onclick: () => fileInput.click(),
  }, imageIcon());
  const menu = h("ul", { id: "canned-menu", class: "canned-menu hidden", role: "listbox", testid: "canned-menu", "data-i18n-aria-label": "canned.label" });
  const chip = h("div", { class: "attachment-chip hidden" });
  const problem = h("p", { class: "composer-error hidden", role: "alert" });
  const form = h("form", { class: "composer", novalidate: true },
    menu, chip, problem,
    h("div", { class: "composer-row" }, fileInput, attachButton, label, input, send));
  replace(root, form);
  applyTranslations(form);

  // ---- typing ---------------------------------------------------------------------------
  function typing(active) {
    if (!convId) return;
    if (active) {
      if (!typingActive || Date.now() - typingSentAt > TYPING_REFRESH_MS) {
        model.typing(convId, true);
        typingSentAt = Date.now();
        typingActive = true;
      }
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => typing(false), TYPING_IDLE_MS);
    } else if (typingActive) {
      clearTimeout(idleTimer);
      model.typing(convId, false);
      typingActive = false;
    }
  }

  // ---- canned replies -------------------------------------------------------------------
  async function loadCanned(force = false) {
    if (!force && Date.now() - cannedAt < CANNED_MAX_AGE_MS) return;
    try {
      const res = await api("/api/canned-replies", { token });
      canned = res.canned_replies || [];
      cannedAt = Date.now();
    } catch { /* keep the last list */ }
  }

  function cannedQuery() {
    const v = input.value;
    if (!v.startsWith("/") || v.includes("\n")) return null;
    return v.slice(1).trim().toLowerCase();
  }

  function matches(q) {
    const scored = [];
    for (const r of canned) {
      const s = (r.shortcut || "").toLowerCase();
      const rest = `${r.title || ""} ${r.body || ""}`.toLowerCase();
      if (!q || s.startsWith(q)) scored.push([0, r]);
      else if (s.includes(q)) scored.push([1, r]);
      else if (rest.includes(q)) scored.push([2, r]);
    }
    return scored.sort((a, b) => a[0] - b[0]).map(([, r]) => r);
  }

  function renderMenu() {
    const q = cannedQuery();
    if (q === null || !enabled) { closeMenu(); return; }
    menuItems = matches(q);
    if (menuIndex >= menuItems.length) menuIndex = 0;
    replace(menu, menuItems.length
      ? menuItems.map((r, i) => h("li", {
        role: "option", id: `canned-${i}`, class: "canned-item", testid: "canned-item",
        "aria-selected": i === menuIndex ? "true" : "false", dataset: { shortcut: r.shortcut || "" },
        onpointerdown: (e) => e.preventDefault(), // keep the keyboard up on the tablet
        onclick: () => choose(i),
      }, h("span", { class: "shortcut" }, `/${r.shortcut || ""}`), h("span", {}, r.title || ""),
      h("span", { class: "body" }, r.body || "")))
      : h("li", { class: "empty", role: "presentation" }, t("canned.empty")));
    menu.classList.remove("hidden");
    input.setAttribute("aria-expanded", "true");
    if (menuItems.length) input.setAttribute("aria-activedescendant", `canned-${menuIndex}`);
    const selected = menu.querySelector('[aria-selected="true"]');
    if (selected) selected.scrollIntoView({ block: "nearest" });
  }

  function closeMenu() {
    menu.classList.add("hidden");
    menuItems = [];
    menuIndex = 0;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
  }

  function menuOpen() { return !menu.classList.contains("hidden"); }

  function choose(i) {
    const r = menuItems[i];
    if (!r) return;
    input.value = r.body || "";
    drafts.set(convId, input.value);
    closeMenu();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
    autosize();
  }

  // ---- attachments ----------------------------------------------------------------------
  function showProblem(text) {
    problem.textContent = text || "";
    problem.classList.toggle("hidden", !text);
  }

  function renderChip() {
    if (!attachment && !uploading) { chip.classList.add("hidden"); chip.replaceChildren(); return; }
    chip.classList.remove("hidden");
    replace(chip,
      attachment ? h("img", { src: attachment.preview || attachment.url, alt: "" }) : null,
      h("span", {}, uploading ? t("composer.uploading") : `${attachment.mime} · ${Math.ceil(attachment.bytes / 1024)} KB`),
      attachment ? h("button", { type: "button", onclick: clearAttachment }, t("composer.remove_attachment")) : null);
  }

  function clearAttachment() {
    if (attachment && attachment.preview) URL.revokeObjectURL(attachment.preview);
    attachment = null;
    renderChip();
  }

  async function upload(file) {
    showProblem("");
    // The appliance tells the type from the bytes; only a file the browser knows is something
    // else (a PDF, a HEIC photo) is refused before uploading it.
    if (file.type && !IMAGE_TYPES.includes(file.type)) { showProblem(t("attach.error.unsupported_media_type")); return; }
    clearAttachment();
    uploading = true;
    renderChip();
    try {
      const res = await api("/api/attachments", { method: "POST", raw: file, headers: { "Content-Type": file.type || "application/octet-stream" }, token });
      attachment = { ...res.attachment, preview: URL.createObjectURL(file) };
    } catch (err) {
      if (err.status === 413 || err.code === "payload_too_large") showProblem(t("attach.error.payload_too_large"));
      else if (err.status === 415 || err.code === "unsupported_media_type") showProblem(t("attach.error.unsupported_media_type"));
      else if (err.status === 404 || err.status === 405) showProblem(t("attach.error.unavailable"));
      else showProblem(t("attach.error.other", { message: err.message || err.code }));
    }
    uploading = false;
    renderChip();
  }

  // ---- sending --------------------------------------------------------------------------
  function submit() {
    if (!convId || !enabled || uploading) return;
    const body = input.value.trim();
    if (!body && !attachment) return;
    const sent = attachment ? { id: attachment.id, mime: attachment.mime, bytes: attachment.bytes, url: attachment.url } : null;
    model.sendMessage(convId, body, sent);
    input.value = "";
    drafts.delete(convId);
    if (attachment && attachment.preview) URL.revokeObjectURL(attachment.preview);
    attachment = null; // the pending bubble shows the uploaded image by its server URL
    renderChip();
    showProblem("");
    typing(false);
    closeMenu();
    autosize();
    input.focus();
  }

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, 160)}px`;
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  input.addEventListener("input", () => {
    drafts.set(convId, input.value);
    typing(input.value.length > 0);
    if (input.value.startsWith("/")) loadCanned().then(renderMenu);
    renderMenu();
    autosize();
  });
  input.addEventListener("keydown", (e) => {
    if (menuOpen() && menuItems.length) {
      if (e.key === "ArrowDown") { e.preventDefault(); menuIndex = (menuIndex + 1) % menuItems.length; renderMenu(); return; }
      if (e.key === "ArrowUp") { e.preventDefault(); menuIndex = (menuIndex - 1 + menuItems.length) % menuItems.length; renderMenu(); return; }
      if (e.key === "Enter" || e.key === "Tab") { e.preventDefault(); choose(menuIndex); return; }
    }
    if (menuOpen() && e.key === "Escape") { e.preventDefault(); closeMenu(); return; }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  input.addEventListener("blur", () => typing(false));
  fileInput.addEventListener("change", () => {
    const file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (file) upload(file);
  });
  onLangChange(() => { renderChip(); if (menuOpen()) renderMenu(); });

  return {
    /** Switches to another conversation, keeping each one's draft. */
    setConversation(id) {
      if (id === convId) return;
      typing(false);
      if (convId) drafts.set(convId, input.value);
      convId = id;
      input.value = drafts.get(id) || "";
      clearAttachment();
      showProblem("");
      closeMenu();
      autosize();
    },
    setEnabled(on) {
      enabled = on;
      input.disabled = !on;
      send.disabled = !on;
      attachButton.disabled = !on;
      fileInput.disabled = !on;
      if (!on) { closeMenu(); typing(false); }
    },
    /** Puts `text` in the box (a suggested reply), ready to edit and send. */
    insert(text) {
      input.value = text;
      drafts.set(convId, text);
      input.focus();
      autosize();
    },
    refreshCanned() { cannedAt = 0; },
  };
}
