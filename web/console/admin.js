// The store admin page (role admin only; the server refuses the others with 403 anyway):
// staff accounts (with the team and skills routing rules name, and whether their capacity
// follows the store's), canned replies (each optionally answering one intent) and the bot
// policy.
// HQ canned replies (`source: hq`) are synced from the hub and shown read-only.

import { api } from "/common/api.js";
import { t, lang, onLangChange } from "/common/i18n.js";
import { h, replace } from "./dom.js";

/** The labels of the appliance's intent model (docs/api.md, "Intents, suggestions and the bot"). */
const INTENTS = ["order_status", "return_refund", "product_availability", "product_info", "price_promotion",
  "store_info", "payment", "membership", "complaint", "human_agent", "greeting", "other"];
const percent = (x) => Math.round(x * 100); // 0.8500000238 (an f32 on the server) → 85
/** "returns, 退货，  vip" → ["returns", "退货", "vip"]: split on commas (also Chinese ones), trimmed, no repeats. */
const parseSkills = (text) => [...new Set(text.split(/[,，、]/).map((x) => x.trim()).filter(Boolean))];
const EMPTY_STAFF = { username: "", name: "", password: "", role: "staff", capacity: "", follows: true, team: "", skills: "" };

export function mountAdmin(root, { token, me, onCannedChanged }) {
  let staff = [];
  let canned = [];
  let editingStaff = null; // id
  let resettingStaff = null; // id
  let editingCanned = null; // id
  let staffMessage = null; // {ok, text}
  let cannedMessage = null;
  let bot = null; // {bot_policy:{intents, min_confidence}, never}
  let botAnswers = null; // null: not loaded (or not allowed)
  let botMessage = null;
  // The bot form's unsaved choices; reset from the server on each load of the policy.
  const botDraft = { intents: new Set(), threshold: "85" };
  // Values typed into the create forms survive re-renders (language switch, list reloads).
  // Capacity: empty and "follows" checked means the account follows the store's capacity.
  const staffDraft = { ...EMPTY_STAFF };
  const cannedDraft = { shortcut: "", title: "", body: "", intent: "" };

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

  async function loadBot() {
    try {
      bot = await api("/api/bot-policy", { token });
      botDraft.intents = new Set(bot.bot_policy.intents);
      botDraft.threshold = String(percent(bot.bot_policy.min_confidence));
    } catch (err) {
      botMessage = { ok: false, text: problem(err) };
    }
    try { botAnswers = (await api("/api/bot-answers?limit=10", { token })).bot_answers || []; } catch { botAnswers = null; }
    render();
  }

  async function saveBot() {
    const pct = Number(botDraft.threshold);
    if (!botDraft.threshold.trim() || !Number.isFinite(pct) || pct < 50 || pct > 100) {
      botMessage = { ok: false, text: t("admin.bot.error.threshold") };
      render();
      return;
    }
    const never = new Set(bot ? bot.never : []);
    const body = { intents: INTENTS.filter((i) => botDraft.intents.has(i) && !never.has(i)), min_confidence: Math.round(pct) / 100 };
    try {
      await api("/api/bot-policy", { method: "PUT", token, body });
      botMessage = { ok: true, text: t("admin.staff.saved") };
      await loadBot();
    } catch (err) {
      botMessage = { ok: false, text: problem(err) };
      render();
    }
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

  function intentSelect(value, testid, onchange, label) {
    return h("select", { testid, onchange, ...(label ? { "aria-label": label } : {}) },
      h("option", { value: "", selected: !value }, t("admin.canned.intent.none")),
      INTENTS.map((i) => h("option", { value: i, selected: i === value }, t(`intent.${i}`))));
  }

  function message(m, testid) {
    return m ? h("p", { class: `form-message ${m.ok ? "ok" : "bad"}`, testid, role: "status" }, m.text) : null;
  }

  /**
   * A capacity input and its "follows the store's capacity" box, kept consistent: typing a
   * capacity gives the account its own; checking the box empties the input.
   */
  function capacityInputs(draft, testids, { placeholder } = {}) {
    const follows = h("input", {
      type: "checkbox", testid: testids.follows, checked: draft.follows,
      onchange: (e) => { draft.follows = e.target.checked; if (draft.follows) { draft.capacity = ""; number.value = ""; } },
    });
    const number = h("input", {
      type: "number", min: "0", testid: testids.capacity, value: draft.capacity, autocomplete: "off",
      "aria-label": t("admin.staff.capacity"), ...(placeholder ? { placeholder } : {}),
      oninput: (e) => { draft.capacity = e.target.value; if (draft.capacity.trim()) { draft.follows = false; follows.checked = false; } },
    });
    return { number, follows: h("label", { class: "check" }, follows, t("admin.staff.follows")) };
  }

  function skillChips(skills) {
    return (skills || []).map((k) => h("span", { class: "staff-skill" }, k));
  }

  function staffRow(s) {
    const status = s.disabled ? t("admin.staff.disabled") : t(s.online ? "admin.staff.online" : "admin.staff.offline");
    if (editingStaff === s.id) {
      const edit = {
        name: s.name, role: s.role, capacity: s.capacity_follows_store ? "" : String(s.capacity), follows: !!s.capacity_follows_store,
        team: s.team || "", skills: (s.skills || []).join(", "),
      };
      const capacity = capacityInputs(edit, { capacity: "admin-staff-edit-capacity", follows: "admin-staff-edit-follows" }, { placeholder: String(s.capacity) });
      const save = async () => {
        const body = { name: edit.name.trim(), role: edit.role };
        if (edit.follows || !edit.capacity.trim()) {
          if (!s.capacity_follows_store) body.capacity_follows_store = true;
        } else if (s.capacity_follows_store || Number(edit.capacity) !== s.capacity) {
          body.capacity = Number(edit.capacity);
        }
        const team = edit.team.trim();
        if (team !== (s.team || "")) {
          body.team = team; // "" takes the account out of its team
        }
        const skills = parseSkills(edit.skills);
        if (JSON.stringify(skills) !== JSON.stringify(s.skills || [])) body.skills = skills;
        if (await run("staff", () => api(`/api/staff/${s.id}`, { method: "PATCH", token, body }))) { editingStaff = null; render(); }
      };
      return h("tr", { testid: "admin-staff-row", dataset: { staffId: s.id, username: s.username } },
        h("td", {}, s.username),
        h("td", {}, h("input", { testid: "admin-staff-edit-name", value: s.name, "aria-label": t("admin.staff.name"), oninput: (e) => { edit.name = e.target.value; } })),
        h("td", {}, roleSelect(s.role, "admin-staff-edit-role", (e) => { edit.role = e.target.value; })),
        h("td", {}, h("input", { testid: "admin-staff-edit-team", value: edit.team, autocomplete: "off", "aria-label": t("admin.staff.team"), oninput: (e) => { edit.team = e.target.value; } })),
        h("td", {}, h("input", { testid: "admin-staff-edit-skills", value: edit.skills, autocomplete: "off", "aria-label": t("admin.staff.skills"), oninput: (e) => { edit.skills = e.target.value; } })),
        h("td", {}, capacity.number, capacity.follows),
        h("td", {}, status),
        h("td", {}, String(s.open_chats ?? 0)),
        h("td", { class: "row-actions" },
          h("button", { type: "button", class: "primary", testid: "admin-staff-save", onclick: save }, t("admin.staff.save")),
          h("button", { type: "button", onclick: () => { editingStaff = null; render(); } }, t("action.cancel"))));
    }
    const pw = { value: "" };
    return h("tr", { testid: "admin-staff-row", dataset: { staffId: s.id, username: s.username } },
      h("td", {}, s.username),
      h("td", {}, s.name),
      h("td", {}, t(`admin.role.${s.role}`)),
      h("td", { testid: "admin-staff-row-team" }, s.team || t("admin.staff.team.none")),
      h("td", { testid: "admin-staff-row-skills", dataset: { skills: (s.skills || []).join(",") } }, skillChips(s.skills)),
      h("td", { testid: "admin-staff-row-capacity", dataset: { follows: String(!!s.capacity_follows_store) } },
        s.capacity_follows_store ? t("admin.staff.capacity.follows", { n: s.capacity }) : String(s.capacity)),
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
      const edit = { shortcut: r.shortcut, title: r.title, body: r.body, intent: r.intent || "" };
      return h("tr", { testid: "admin-canned-row", dataset: { id: r.id, source: r.source } },
        h("td", {}, h("input", { testid: "admin-canned-edit-shortcut", value: r.shortcut, "aria-label": t("admin.canned.shortcut"), oninput: (e) => { edit.shortcut = e.target.value; } })),
        h("td", {}, h("input", { testid: "admin-canned-edit-title", value: r.title, "aria-label": t("admin.canned.title"), oninput: (e) => { edit.title = e.target.value; } })),
        h("td", {}, h("textarea", { testid: "admin-canned-edit-body", value: r.body, "aria-label": t("admin.canned.body"), oninput: (e) => { edit.body = e.target.value; } })),
        h("td", {}, intentSelect(edit.intent, "admin-canned-edit-intent", (e) => { edit.intent = e.target.value; }, t("admin.canned.intent"))),
        h("td", {}, t("admin.canned.source.store")),
        h("td", { class: "row-actions" },
          h("button", {
            type: "button", class: "primary", testid: "admin-canned-save",
            onclick: async () => { if (await run("canned", () => api(`/api/canned-replies/${encodeURIComponent(r.id)}`, { method: "PUT", token, body: { shortcut: edit.shortcut.trim(), title: edit.title.trim(), body: edit.body, intent: edit.intent || null } }))) { editingCanned = null; render(); } },
          }, t("admin.canned.save")),
          h("button", { type: "button", onclick: () => { editingCanned = null; render(); } }, t("action.cancel"))));
    }
    return h("tr", { testid: "admin-canned-row", dataset: { id: r.id, source: r.source } },
      h("td", {}, `/${r.shortcut}`),
      h("td", {}, r.title),
      h("td", { style: "white-space:pre-wrap" }, r.body),
      h("td", { testid: "admin-canned-row-intent", dataset: { intent: r.intent || "" } }, r.intent ? t(`intent.${r.intent}`) : "—"),
      h("td", {}, t(hq ? "admin.canned.source.hq" : "admin.canned.source.store")),
      h("td", { class: "row-actions" }, hq ? null : [
        h("button", { type: "button", testid: "admin-canned-edit", onclick: () => { editingCanned = r.id; render(); } }, t("admin.canned.edit")),
        h("button", {
          type: "button", class: "danger", testid: "admin-canned-delete",
          onclick: () => run("canned", () => api(`/api/canned-replies/${encodeURIComponent(r.id)}`, { method: "DELETE", token })),
        }, t("admin.canned.delete"))]));
  }

  function render() {
    const newCapacity = capacityInputs(staffDraft, { capacity: "admin-staff-capacity", follows: "admin-staff-follows" },
      { placeholder: t("admin.staff.capacity.store") });
    const staffForm = h("form", {
      class: "admin-form", testid: "admin-staff-form", novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const body = {
          username: staffDraft.username.trim(), name: staffDraft.name.trim(), password: staffDraft.password,
          role: staffDraft.role, skills: parseSkills(staffDraft.skills),
        };
        // No capacity: the account follows the store's (routing.capacity_per_staff).
        if (!staffDraft.follows && staffDraft.capacity.trim()) body.capacity = Number(staffDraft.capacity);
        if (staffDraft.team.trim()) body.team = staffDraft.team.trim();
        if (await run("staff", () => api("/api/staff", { method: "POST", token, body }))) {
          Object.assign(staffDraft, EMPTY_STAFF);
          render();
        }
      },
    },
    field(staffDraft, "username", "admin-staff-username", "admin.staff.username"),
    field(staffDraft, "name", "admin-staff-name", "admin.staff.name"),
    field(staffDraft, "password", "admin-staff-password", "admin.staff.password", { type: "password" }),
    h("label", {}, t("admin.staff.role"), roleSelect(staffDraft.role, "admin-staff-role", (e) => { staffDraft.role = e.target.value; })),
    field(staffDraft, "team", "admin-staff-team", "admin.staff.team"),
    field(staffDraft, "skills", "admin-staff-skills", "admin.staff.skills"),
    h("label", {}, t("admin.staff.capacity"), newCapacity.number),
    newCapacity.follows,
    h("button", { type: "submit", class: "primary", testid: "admin-staff-create" }, t("admin.staff.create")));

    const cannedForm = h("form", {
      class: "admin-form", testid: "admin-canned-form", novalidate: true,
      onsubmit: async (e) => {
        e.preventDefault();
        const body = {
          shortcut: cannedDraft.shortcut.trim().replace(/^\//, ""), title: cannedDraft.title.trim(), body: cannedDraft.body,
          intent: cannedDraft.intent || null,
        };
        if (await run("canned", () => api("/api/canned-replies", { method: "POST", token, body }))) {
          Object.assign(cannedDraft, { shortcut: "", title: "", body: "", intent: "" });
          render();
        }
      },
    },
    field(cannedDraft, "shortcut", "admin-canned-shortcut", "admin.canned.shortcut"),
    field(cannedDraft, "title", "admin-canned-title", "admin.canned.title"),
    h("label", {}, t("admin.canned.intent"), intentSelect(cannedDraft.intent, "admin-canned-intent", (e) => { cannedDraft.intent = e.target.value; })),
    field(cannedDraft, "body", "admin-canned-body", "admin.canned.body", { multiline: true, wide: true }),
    h("button", { type: "submit", class: "primary", testid: "admin-canned-create" }, t("admin.canned.create")));

    replace(root,
      h("h1", {}, t("admin.heading")),
      h("section", { class: "admin-section", testid: "admin-staff", "aria-labelledby": "admin-staff-heading" },
        h("h2", { id: "admin-staff-heading" }, t("admin.staff.heading")),
        h("table", { class: "admin-table", testid: "admin-staff-list" },
          h("thead", {}, h("tr", {}, ["admin.staff.username", "admin.staff.name", "admin.staff.role", "admin.staff.team",
            "admin.staff.skills.short", "admin.staff.capacity",
            "admin.staff.status", "admin.staff.open_chats", "admin.actions"].map((k) => h("th", { scope: "col" }, t(k))))),
          h("tbody", {}, staff.map(staffRow))),
        message(staffMessage, "admin-staff-message"),
        staffForm),
      h("section", { class: "admin-section", testid: "admin-canned", "aria-labelledby": "admin-canned-heading" },
        h("h2", { id: "admin-canned-heading" }, t("admin.canned.heading")),
        canned.length
          ? h("table", { class: "admin-table", testid: "admin-canned-list" },
            h("thead", {}, h("tr", {}, ["admin.canned.shortcut", "admin.canned.title", "admin.canned.body", "admin.canned.intent", "admin.canned.source",
              "admin.actions"].map((k) => h("th", { scope: "col" }, t(k))))),
            h("tbody", {}, canned.map(cannedRow)))
          : h("p", { class: "muted" }, t("admin.canned.empty")),
        message(cannedMessage, "admin-canned-message"),
        cannedForm),
      botSection());
  }

  function botSection() {
    const never = new Set(bot ? bot.never : ["complaint", "human_agent"]);
    const tagged = new Set(canned.map((r) => r.intent).filter(Boolean));
    const box = (i) => {
      const off = never.has(i);
      const checked = !off && botDraft.intents.has(i);
      // Checked, but no canned reply answers this intent: the bot would have nothing to say.
      const hint = h("small", { class: "warn", hidden: !checked || tagged.has(i) }, t("admin.bot.untagged"));
      return h("label", { class: `bot-intent${off ? " off" : ""}` },
        h("input", {
          type: "checkbox", testid: "admin-bot-intent", dataset: { intent: i }, checked, disabled: off || !bot,
          onchange: (e) => {
            if (e.target.checked) botDraft.intents.add(i); else botDraft.intents.delete(i);
            hint.hidden = !e.target.checked || tagged.has(i);
          },
        }),
        h("span", {}, t(`intent.${i}`), off ? h("small", { class: "muted" }, t("admin.bot.never")) : null, hint));
    };
    const cannedName = (id) => { const r = canned.find((c) => c.id === id); return r ? `/${r.shortcut}` : "—"; };
    const when = (ms) => new Date(ms).toLocaleString(lang(), { dateStyle: "short", timeStyle: "short" });
    return h("section", { class: "admin-section", testid: "admin-bot", "aria-labelledby": "admin-bot-heading" },
      h("h2", { id: "admin-bot-heading" }, t("admin.bot.heading")),
      h("p", { class: "muted" }, t("admin.bot.explain")),
      h("form", {
        class: "bot-form", novalidate: true,
        onsubmit: (e) => { e.preventDefault(); saveBot(); },
      },
      h("fieldset", { class: "bot-intents" }, h("legend", {}, t("admin.bot.intents")), INTENTS.map(box)),
      h("label", { class: "bot-threshold" }, t("admin.bot.threshold"),
        h("span", {},
          h("input", {
            type: "number", min: "50", max: "100", step: "1", inputmode: "numeric", testid: "admin-bot-threshold",
            value: botDraft.threshold, disabled: !bot, oninput: (e) => { botDraft.threshold = e.target.value; },
          }), " %")),
      message(botMessage, "admin-bot-message"),
      h("button", { type: "submit", class: "primary", testid: "admin-bot-save", disabled: !bot }, t("admin.bot.save"))),
      botAnswers === null ? null : [
        h("h3", {}, t("admin.bot.recent")),
        botAnswers.length
          ? h("table", { class: "admin-table", testid: "admin-bot-answers" },
            h("thead", {}, h("tr", {}, ["admin.bot.at", "admin.canned.intent", "admin.bot.confidence", "admin.bot.reply"].map((k) => h("th", { scope: "col" }, t(k))))),
            h("tbody", {}, botAnswers.map((a) => h("tr", { testid: "admin-bot-answer", dataset: { conversationId: a.conversation_id } },
              h("td", {}, when(a.at_ms)), h("td", {}, t(`intent.${a.intent}`)), h("td", {}, `${percent(a.confidence)} %`), h("td", {}, cannedName(a.canned_reply_id))))))
          : h("p", { class: "muted" }, t("admin.bot.recent.empty"))]);
  }

  onLangChange(render);
  return {
    show() { staffMessage = null; cannedMessage = null; botMessage = null; render(); load(); loadBot(); },
  };
}
