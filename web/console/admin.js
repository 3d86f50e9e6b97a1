// The store admin page (role admin only; the server refuses the others with 403 anyway):
// staff accounts and canned replies. HQ canned replies (`source: hq`) are synced from the hub
// and shown read-only.

import { api } from "/common/api.js";
import { t, onLangChange } from "/common/i18n.js";
import { h, replace } from "./dom.js";

export function mountAdmin(root, { token, me, onCannedChanged }) {
  let staff = [];
  let canned = [];
  let editingStaff = null; // id
  let resettingStaff = null; // id
  let editingCanned = null; // id
  let staffMessage = null; // {ok, text}
  let cannedMessage = null;
  // Values typed into the create forms survive re-renders (language switch, list reloads).
  const staffDraft = { username: "", name: "", password: "", role: "staff", capacity: "8" };
  const cannedDraft = { shortcut: "", title: "", body: "" };

  function problem(err) {
    if (err.code === "conflict") return t("admin.error.conflict");
    if (err.code === "forbidden") return t("admin.error.forbidden");
    if (err.code === "bad_request") return t("admin.error.bad_request", { message: err.message });
    return t("admin.error.other", { message: err.message || err.code });
  }

  async function load() {
    try {
      const [s, c] = await Promise.all([api("/api/staff", { token }), api("/api/canned-replies", { token })]);
      staff = s.staff || [];
      canned = c.canned_replies || [];
    } catch (err) {
      staffMessage = { ok: false, text: problem(err) };
    }
    render();
  }

  async function run(which, fn) {
    try {
      await fn();
      if (which === "staff") staffMessage = { ok: true, text: t("admin.staff.saved") };
      else { cannedMessage = { ok: true, text: t("admin.staff.saved") }; onCannedChanged(); }
      await load();
      return true;
    } catch (err) {
      if (which === "staff") staffMessage = { ok: false, text: problem(err) };
      else cannedMessage = { ok: false, text: problem(err) };
      render();
      return false;
    }
  }

  const field = (draft, key, testid, labelKey, attrs = {}) => h("label", { class: attrs.wide ? "wide" : "" },
    t(labelKey),
    h(attrs.multiline ? "textarea" : "input", {
      testid, value: draft[key], ...(attrs.type ? { type: attrs.type } : {}), ...(attrs.min ? { min: attrs.min } : {}),
      autocomplete: "off", oninput: (e) => { draft[key] = e.target.value; },
    }));

  function roleSelect(value, testid, onchange) {
    return h("select", { testid, onchange },
      ["staff", "admin"].map((r) => h("option", { value: r, selected: r === value }, t(`admin.role.${r}`))));
  }

  function message(m, testid) {
    return m ? h("p", { class: `form-message ${m.ok ? "ok" : "bad"}`, testid, role: "status" }, m.text) : null;
  }

  function staffRow(s) {
    const status = s.disabled ? t("admin.staff.disabled") : t(s.online ? "admin.staff.online" : "admin.staff.offline");
    if (editingStaff === s.id) {
      const edit = { name: s.name, role: s.role, capacity: String(s.capacity) };
      return h("tr", { testid: "admin-staff-row", dataset: { staffId: s.id, username: s.username } },
        h("td", {}, s.username),
        h("td", {}, h("input", { testid: "admin-staff-edit-name", value: s.name, "aria-label": t("admin.staff.name"), oninput: (e) => { edit.name = e.target.value; } })),
        h("td", {}, roleSelect(s.role, "admin-staff-edit-role", (e) => { edit.role = e.target.value; })),
        h("td", {}, h("input", { testid: "admin-staff-edit-capacity", type: "number", min: "0", value: String(s.capacity), "aria-label": t("admin.staff.capacity"), oninput: (e) => { edit.capacity = e.target.value; } })),
        h("td", {}, status),
        h("td", {}, String(s.open_chats ?? 0)),
        h("td", { class: "row-actions" },
          h("button", {
            type: "button", class: "primary", testid: "admin-staff-save",
            onclick: async () => {
              if (await run("staff", () => api(`/api/staff/${s.id}`, { method: "PATCH", token, body: { name: edit.name.trim(), role: edit.role, capacity: Number(edit.capacity) } }))) { editingStaff = null; render(); }
            },
          }, t("admin.staff.save")),
          h("button", { type: "button", onclick: () => { editingStaff = null; render(); } }, t("action.cancel"))));
    }
    const pw = { value: "" };
    return h("tr", { testid: "admin-staff-row", dataset: { staffId: s.id, username: s.username } },
      h("td", {}, s.username),
      h("td", {}, s.name),
      h("td", {}, t(`admin.role.${s.role}`)),
      h("td", {}, String(s.capacity)),
      h("td", {}, status),
      h("td", {}, String(s.open_chats ?? 0)),
      h("td", { class: "row-actions" },
        h("button", { type: "button", testid: "admin-staff-edit", onclick: () => { editingStaff = s.id; resettingStaff = null; render(); } }, t("admin.staff.edit")),
        s.id === me.id ? null : h("button", { // disabling yourself would end this very session
          type: "button", testid: s.disabled ? "admin-staff-enable" : "admin-staff-disable", class: s.disabled ? "" : "danger",
          onclick: () => run("staff", () => api(`/api/staff/${s.id}`, { method: "PATCH", token, body: { disabled: !s.disabled } })),
        }, t(s.disabled ? "admin.staff.enable" : "admin.staff.disable")),
        resettingStaff === s.id
          ? [h("input", { type: "password", testid: "admin-staff-new-password", autocomplete: "new-password", "aria-label": t("admin.staff.reset_prompt", { name: s.name }), oninput: (e) => { pw.value = e.target.value; } }),
            h("button", {
              type: "button", class: "primary", testid: "admin-staff-reset-save",
              onclick: async () => { if (await run("staff", () => api(`/api/staff/${s.id}`, { method: "PATCH", token, body: { password: pw.value } }))) { resettingStaff = null; render(); } },
            }, t("admin.staff.save")),
            h("button", { type: "button", onclick: () => { resettingStaff = null; render(); } }, t("action.cancel"))]
          : h("button", { type: "button", testid: "admin-staff-reset", onclick: () => { resettingStaff = s.id; editingStaff = null; render(); } }, t("admin.staff.reset"))));
  }

  function cannedRow(r) {
    const hq = r.source === "hq";
    if (editingCanned === r.id && !hq) {
      const edit = { shortcut: r.shortcut, title: r.title, body: r.body };
      return h("tr", { testid: "admin-canned-row", dataset: { id: r.id, source: r.source } },
        h("td", {}, h("input", { testid: "admin-canned-edit-shortcut", value: r.shortcut, "aria-label": t("admin.canned.shortcut"), oninput: (e) => { edit.shortcut = e.target.value; } })),
        h("td", {}, h("input", { testid: "admin-canned-edit-title", value: r.title, "aria-label": t("admin.canned.title"), oninput: (e) => { edit.title = e.target.value; } })),
        h("td", {}, h("textarea", { testid: "admin-canned-edit-body", value: r.body, "aria-label": t("admin.canned.body"), oninput: (e) => { edit.body = e.target.value; } })),
        h("td", {}, t("admin.canned.source.store")),
        h("td", { class: "row-actions" },
          h("button", {
            type: "button", class: "primary", testid: "admin-canned-save",
            onclick: async () => { if (await run("canned", () => api(`/api/canned-replies/${encodeURIComponent(r.id)}`, { method: "PUT", token, body: { shortcut: edit.shortcut.trim(), title: edit.title.trim(), body: edit.body } }))) { editingCanned = null; render(); } },
          }, t("admin.canned.save")),
          h("button", { type: "button", onclick: () => { editingCanned = null; render(); } }, t("action.cancel"))));
    }
    return h("tr", { testid: "admin-canned-row", dataset: { id: r.id, source: r.source } },
      h("td", {}, `/${r.shortcut}`),
      h("td", {}, r.title),
      h("td", { style: "white-space:pre-wrap" }, r.body),
      h("td", {}, t(hq ? "admin.canned.source.hq" : "admin.canned.source.store")),
      h("td", { class: "row-actions" }, hq ? null : [
        h("button", { type: "button", testid: "admin-canned-edit", onclick: () => { editingCanned = r.id; render(); } }, t("admin.canned.edit")),
        h("button", {
          type: "button", class: "danger", testid: "admin-canned-delete",
          onclick: () => run("canned", () => api(`/api/canned-replies/${encodeURIComponent(r.id)}`, { method: "DELETE", token })),
        }, t("admin.canned.delete"))]));
  }

  function render() {
    const staffForm = h("form", {
      class: "admin-form", testid: "admin-staff-form", novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const body = {
          username: staffDraft.username.trim(), name: staffDraft.name.trim(), password: staffDraft.password,
          role: staffDraft.role, capacity: Number(staffDraft.capacity || 8),
        };
        if (await run("staff", () => api("/api/staff", { method: "POST", token, body }))) {
          Object.assign(staffDraft, { username: "", name: "", password: "", role: "staff", capacity: "8" });
          render();
        }
      },
    },
    field(staffDraft, "username", "admin-staff-username", "admin.staff.username"),
    field(staffDraft, "name", "admin-staff-name", "admin.staff.name"),
    field(staffDraft, "password", "admin-staff-password", "admin.staff.password", { type: "password" }),
    h("label", {}, t("admin.staff.role"), roleSelect(staffDraft.role, "admin-staff-role", (e) => { staffDraft.role = e.target.value; })),
    field(staffDraft, "capacity", "admin-staff-capacity", "admin.staff.capacity", { type: "number", min: "0" }),
    h("button", { type: "submit", class: "primary", testid: "admin-staff-create" }, t("admin.staff.create")));

    const cannedForm = h("form", {
      class: "admin-form", testid: "admin-canned-form", novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const body = { shortcut: cannedDraft.shortcut.trim().replace(/^\//, ""), title: cannedDraft.title.trim(), body: cannedDraft.body };
        if (await run("canned", () => api("/api/canned-replies", { method: "POST", token, body }))) {
          Object.assign(cannedDraft, { shortcut: "", title: "", body: "" });
          render();
        }
      },
    },
    field(cannedDraft, "shortcut", "admin-canned-shortcut", "admin.canned.shortcut"),
    field(cannedDraft, "title", "admin-canned-title", "admin.canned.title"),
    field(cannedDraft, "body", "admin-canned-body", "admin.canned.body", { multiline: true, wide: true }),
    h("button", { type: "submit", class: "primary", testid: "admin-canned-create" }, t("admin.canned.create")));

    replace(root,
      h("h1", {}, t("admin.heading")),
      h("section", { class: "admin-section", testid: "admin-staff", "aria-labelledby": "admin-staff-heading" },
        h("h2", { id: "admin-staff-heading" }, t("admin.staff.heading")),
        h("table", { class: "admin-table", testid: "admin-staff-list" },
          h("thead", {}, h("tr", {}, ["admin.staff.username", "admin.staff.name", "admin.staff.role", "admin.staff.capacity",
            "admin.staff.status", "admin.staff.open_chats", "admin.actions"].map((k) => h("th", { scope: "col" }, t(k))))),
          h("tbody", {}, staff.map(staffRow))),
        message(staffMessage, "admin-staff-message"),
        staffForm),
      h("section", { class: "admin-section", testid: "admin-canned", "aria-labelledby": "admin-canned-heading" },
        h("h2", { id: "admin-canned-heading" }, t("admin.canned.heading")),
        canned.length
          ? h("table", { class: "admin-table", testid: "admin-canned-list" },
            h("thead", {}, h("tr", {}, ["admin.canned.shortcut", "admin.canned.title", "admin.canned.body", "admin.canned.source",
              "admin.actions"].map((k) => h("th", { scope: "col" }, t(k))))),
            h("tbody", {}, canned.map(cannedRow)))
          : h("p", { class: "muted" }, t("admin.canned.empty")),
        message(cannedMessage, "admin-canned-message"),
        cannedForm));
  }

  onLangChange(render);
  return {
    show() { staffMessage = null; cannedMessage = null; render(); load(); },
  };
}
