// The middle column: the open conversation's header (customer, status, agent), the state
// actions allowed for it, the message history with read receipts and the customer's typing,
// error frames, and the composer. The message list is rebuilt from the model on each change
// (a store chat is short) while the composer keeps its own state.

import { api } from "/common/api.js";
import { t, lang, onLangChange, formatTime, formatDateTime } from "/common/i18n.js";
import { h, replace } from "./dom.js";
import { statusText, errorText } from "./format.js";
import { mountComposer } from "./composer.js";

const NEAR_BOTTOM_PX = 80;

export function mountConversation(root, model, { token, staffName, onActed }) {
  let convId = null;
  let panel = null; // "transfer" | "snooze" | null
  let actionError = null;
  let busy = false;
  let colleagues = null;

  const head = h("div", { class: "conv-head" });
  const errors = h("div", { class: "errors", role: "alert" });
  const messages = h("div", { class: "messages", role: "log", "aria-live": "polite", id: "messages" });
  const typingEl = h("div", { class: "typing-indicator", testid: "typing-indicator", "aria-live": "polite" });
  const readOnly = h("div", { class: "read-only hidden" });
  const composerRoot = h("div");
  const placeholder = h("p", { class: "placeholder" });
  const body = h("div", { class: "conversation hidden", style: "flex:1;min-height:0" },
    head, errors, messages, typingEl, readOnly, composerRoot);
  replace(root, placeholder, body);
  const composer = mountComposer(composerRoot, model, { token });

  /** Who may write: the holder, or anyone on a queued chat (the send claims it first). */
  function canWrite(c) {
    if (c.status === "resolved" || !c.status) return false;
    return model.isMine(c) || model.isQueued(c);
  }

  function senderLabel(c, m) {
    switch (m.sender.kind) {
      case "customer": return (c.customer && c.customer.name) || t("msg.sender.customer");
      case "staff": return model.me && m.sender.id === model.me.id ? t("msg.you") : (staffName(m.sender.id) || t("msg.sender.staff"));
      case "bot": return t("msg.sender.bot");
      default: return t("msg.sender.system");
    }
  }

  function messageEl(c, m, pending) {
    const kind = pending ? "staff" : m.sender.kind;
    const attachment = m.attachment;
    const readByCustomer = !pending && kind === "staff" && m.seq <= c.customerRead;
    let foot = null;
    if (pending) {
      foot = pending.status === "failed"
        ? h("div", { class: "msg-foot" },
          h("span", { class: "failed-text" }, t("msg.failed", { message: errorText(pending.error) })),
          h("button", { type: "button", onclick: () => model.retry(c.id, pending.client_msg_id) }, t("msg.retry")),
          h("button", { type: "button", onclick: () => model.discard(c.id, pending.client_msg_id) }, t("error.dismiss")))
        : h("div", { class: "msg-foot" }, t("msg.sending"));
    } else if (readByCustomer) {
      foot = h("div", { class: "msg-foot" }, h("span", { class: "read-receipt", testid: "read-receipt" }, `✓ ${t("msg.read")}`));
    }
    return h("div", {
      class: `msg${pending ? " pending" : ""}${pending && pending.status === "failed" ? " failed" : ""}`,
      testid: "message", dataset: { senderKind: kind, ...(pending ? { pending: "true" } : { seq: String(m.seq) }) },
    },
    h("div", { class: "msg-meta" }, `${pending ? t("msg.you") : senderLabel(c, m)} · ${formatTime(pending ? pending.createdAt : m.sent_at_ms)}`),
    attachment ? h("img", { testid: "message-image", src: attachment.preview || attachment.url, alt: attachment.mime || "", onload: followImage }) : null,
    (m.body || !attachment) ? h("div", { class: "msg-body", testid: "message-body" }, m.body || "") : null,
    foot);
  }

  /** A loaded image makes the list taller: stay at the bottom if we were there. */
  function followImage(e) {
    const below = messages.scrollHeight - messages.scrollTop - messages.clientHeight;
    if (below < e.target.offsetHeight + NEAR_BOTTOM_PX) messages.scrollTop = messages.scrollHeight;
  }

  function actionButton(name, onclick, cls = "") {
    return h("button", { type: "button", testid: `action-${name}`, class: cls, disabled: busy, onclick }, t(`action.${name}`));
  }

  async function act(type, extra = {}) {
    busy = true;
    actionError = null;
    render();
    try {
      await model.action(convId, type, extra);
      panel = null;
      if (onActed) onActed(convId, type);
    } catch (err) {
      actionError = err;
    }
    busy = false;
    render();
  }

  async function loadColleagues() {
    try {
      const res = await api("/api/staff", { token });
      colleagues = (res.staff || []).filter((s) => !s.disabled && (!model.me || s.id !== model.me.id));
    } catch (err) {
      colleagues = [];
      actionError = err;
    }
    render();
  }

  function transferPanel() {
    if (colleagues === null) return h("div", { class: "action-panel" }, t("conv.loading"));
    if (!colleagues.length) {
      return h("div", { class: "action-panel" }, h("span", {}, t("transfer.none")),
        h("button", { type: "button", onclick: () => { panel = null; render(); } }, t("action.cancel")));
    }
    const sorted = [...colleagues].sort((a, b) => (b.online - a.online) || a.name.localeCompare(b.name));
    const select = h("select", { id: "transfer-target", testid: "transfer-target" },
      sorted.map((s) => h("option", { value: s.id }, t("transfer.option", {
        name: s.name, online: t(s.online ? "transfer.online" : "transfer.offline"), n: s.open_chats ?? 0,
      }))));
    const note = h("input", { id: "transfer-note", testid: "transfer-note", type: "text", maxlength: "500" });
    return h("div", { class: "action-panel", role: "group", "aria-label": t("transfer.heading") },
      h("label", { for: "transfer-target" }, t("transfer.target"), select),
      h("label", { for: "transfer-note" }, t("transfer.note"), note),
      h("button", {
        type: "button", class: "primary", testid: "transfer-confirm", disabled: busy,
        onclick: () => act("transfer", { to: select.value, ...(note.value.trim() ? { note: note.value.trim() } : {}) }),
      }, t("transfer.confirm")),
      h("button", { type: "button", onclick: () => { panel = null; render(); } }, t("action.cancel")));
  }

  function snoozePanel() {
    const tomorrow = new Date();
    tomorrow.setDate(tomorrow.getDate() + 1);
    tomorrow.setHours(9, 0, 0, 0);
    const choice = (key, until) => h("button", {
      type: "button", testid: `snooze-${key}`, disabled: busy, onclick: () => act("snooze", { until_ms: until }),
    }, t(`snooze.${key}`));
    return h("div", { class: "action-panel", role: "group", "aria-label": t("snooze.heading") },
      h("span", {}, t("snooze.heading")),
      choice("15m", Date.now() + 15 * 60_000), choice("1h", Date.now() + 60 * 60_000), choice("tomorrow", tomorrow.getTime()),
      h("button", { type: "button", onclick: () => { panel = null; render(); } }, t("action.cancel")));
  }

  function actions(c) {
    const admin = model.me && model.me.role === "admin";
    const mine = model.isMine(c);
    const list = [];
    const openPanel = (name) => () => {
      panel = panel === name ? null : name;
      if (panel === "transfer") { colleagues = null; loadColleagues(); }
      render();
    };
    if (c.status === "resolved") {
      list.push(actionButton("reopen", () => act("reopen")));
    } else if (model.isQueued(c)) {
      list.push(actionButton("claim", () => act("claim"), "primary"));
      if (admin) list.push(actionButton("transfer", openPanel("transfer")));
    } else if (mine || admin) {
      if (c.status === "snoozed") list.push(actionButton("wake", () => act("wake")));
      list.push(actionButton("transfer", openPanel("transfer")));
      list.push(actionButton("release", () => act("release")));
      if (c.status !== "snoozed") list.push(actionButton("snooze", openPanel("snooze")));
      list.push(actionButton("resolve", () => act("resolve"), "primary"));
    }
    return list;
  }

  function renderHead(c) {
    const name = (c.customer && c.customer.name) || t("conv.customer");
    const agent = c.agent ? t("conv.agent", { name: c.agent.name }) : t("conv.agent.none");
    replace(head,
      h("div", { class: "conv-title" },
        h("h2", { id: "conv-title" }, name),
        h("span", { class: `status status-${c.status || "unknown"}`, testid: "conv-status", dataset: { status: c.status || "" } }, statusText(c.status)),
        h("span", { class: "agent-line muted", testid: "conv-agent" },
          agent,
          c.previousAgent && c.status === "transferred" ? ` · ${t("conv.previous_agent", { name: c.previousAgent.name })}` : "",
          c.transferNote && c.status === "transferred" ? ` · ${t("conv.transfer_note", { note: c.transferNote })}` : "",
          c.snoozedUntil && c.status === "snoozed" ? ` · ${t("conv.snoozed_until", { time: formatDateTime(c.snoozedUntil) })}` : "")),
      h("div", { class: "actions" }, actions(c)),
      panel === "transfer" ? transferPanel() : null,
      panel === "snooze" ? snoozePanel() : null);
  }

  function renderErrors(c) {
    const items = [];
    if (actionError) {
      items.push(h("div", { class: "error-box", testid: "error-message" }, h("span", {}, errorText(actionError)),
        h("button", { type: "button", onclick: () => { actionError = null; render(); } }, t("error.dismiss"))));
    }
    model.errors.forEach((e, i) => {
      if (e.conversation_id && e.conversation_id !== c.id) return;
      items.push(h("div", { class: "error-box", testid: "error-message" }, h("span", {}, errorText(e)),
        h("button", { type: "button", onclick: () => model.dismissError(i) }, t("error.dismiss"))));
    });
    replace(errors, items);
  }

  // Message elements are kept between renders and rebuilt only when what they show changes,
  // so images are not reloaded and the scroll position holds while the staff member reads back.
  let cache = new Map(); // key -> {sig, el}
  let cacheConv = null;
  let lastCount = 0;

  function cached(key, sig, build) {
    const hit = cache.get(key);
    if (hit && hit.sig === sig) return hit.el;
    const el = build();
    cache.set(key, { sig, el });
    return el;
  }

  function renderMessages(c) {
    const switched = cacheConv !== c.id;
    if (switched) { cache = new Map(); cacheConv = c.id; lastCount = 0; }
    const nearBottom = switched || messages.scrollHeight - messages.scrollTop - messages.clientHeight < NEAR_BOTTOM_PX;
    const { msgs, pending } = model.timeline(c);
    const language = lang();
    const keep = new Map();
    const els = [];
    for (const m of msgs) {
      const key = `s:${m.seq}`;
      const sig = [language, m.sender.kind === "staff" && m.seq <= c.customerRead, senderLabel(c, m)].join("|");
      els.push(cached(key, sig, () => messageEl(c, m, null)));
      keep.set(key, cache.get(key));
    }
    for (const p of pending) {
      const key = `p:${p.client_msg_id}`;
      const sig = [language, p.status, p.error ? p.error.code : ""].join("|");
      els.push(cached(key, sig, () => messageEl(c, p, p)));
      keep.set(key, cache.get(key));
    }
    cache = keep;
    replace(messages, c.loading && msgs.length === 0 ? h("p", { class: "placeholder" }, t("conv.loading")) : null, els);
    const grew = els.length > lastCount;
    lastCount = els.length;
    if (grew && (nearBottom || pending.length)) messages.scrollTop = messages.scrollHeight;
  }

  function render() {
    const c = convId ? model.convs.get(convId) : null;
    placeholder.classList.toggle("hidden", !!c);
    body.classList.toggle("hidden", !c);
    if (!c) { placeholder.textContent = t("conv.none"); composer.setEnabled(false); return; }
    renderHead(c);
    renderErrors(c);
    renderMessages(c);
    const typingShown = model.isTyping(c);
    typingEl.textContent = typingShown ? t("typing.customer", { name: (c.customer && c.customer.name) || t("conv.customer") }) : "";
    typingEl.classList.toggle("active", typingShown);
    const writable = canWrite(c);
    composer.setEnabled(writable);
    readOnly.classList.toggle("hidden", writable);
    readOnly.textContent = writable ? "" : c.status === "resolved"
      ? t("conv.read_only.resolved") : t("conv.read_only", { name: c.agent ? c.agent.name : "?" });
    if (document.visibilityState === "visible" && !root.closest(".hidden")) model.markRead(c);
  }

  let scheduled = false;
  model.onChange((id) => {
    if (id !== null && id !== convId) return; // another chat changed
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => { scheduled = false; render(); }, 0);
  });
  onLangChange(render);
  document.addEventListener("visibilitychange", render);

  return {
    open(id) {
      if (id !== convId) { panel = null; actionError = null; }
      convId = id;
      composer.setConversation(id);
      render();
    },
    render,
    insert(text) { composer.insert(text); },
    refreshCanned() { composer.refreshCanned(); },
  };
}
