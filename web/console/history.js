// The customer's other conversations (GET /api/customers/{id}/conversations), each openable
// read-only in a dialog with its transcript from the HTTP history endpoint.

import { api } from "/common/api.js";
import { t, onLangChange, formatDateTime, formatTime } from "/common/i18n.js";
import { h, replace } from "./dom.js";
import { statusText, errorText } from "./format.js";

export function mountHistory(root, dialog, model, { token }) {
  let convId = null;
  let customerId = null;
  let items = null; // null: loading
  let failure = null;

  async function load() {
    const forCustomer = customerId;
    items = null;
    failure = null;
    render();
    try {
      const res = await api(`/api/customers/${encodeURIComponent(forCustomer)}/conversations`, { token });
      if (forCustomer !== customerId) return;
      items = res.conversations || [];
    } catch (err) {
      if (forCustomer !== customerId) return;
      failure = err;
      items = [];
    }
    render();
  }

  function render() {
    const parts = [h("h2", { id: "history-heading" }, t("history.heading"))];
    if (!customerId) { replace(root, parts); return; }
    if (failure) parts.push(h("p", { class: "error" }, t("history.error", { message: errorText(failure) })));
    else if (items === null) parts.push(h("p", { class: "muted" }, t("conv.loading")));
    else {
      const others = items.filter((s) => s.id !== convId);
      parts.push(others.length
        ? h("ul", {}, others.map((s) => h("li", {},
          h("button", { type: "button", class: "history-item", testid: "history-item", dataset: { conversationId: s.id }, onclick: () => show(s) },
            h("span", {}, formatDateTime(s.created_at_ms)),
            h("small", {}, `${statusText(s.status)}${s.agent ? ` · ${s.agent.name}` : ""}`)))))
        : h("p", { class: "muted" }, t("history.empty")));
    }
    replace(root, parts);
  }

  /** A read-only transcript: no subscription, no actions, no composer. */
  async function show(summary) {
    const list = h("div", { class: "messages", role: "log" }, h("p", { class: "muted" }, t("conv.loading")));
    replace(dialog,
      h("header", {},
        h("h2", {}, t("history.transcript", { date: formatDateTime(summary.created_at_ms) }),
          " ", h("span", { class: `status status-${summary.status}` }, statusText(summary.status))),
        h("button", { type: "button", testid: "history-close", onclick: () => dialog.close() }, t("history.close"))),
      list);
    dialog.showModal();
    try {
      const msgs = [];
      let after = 0;
      for (;;) {
        const res = await api(`/api/conversations/${encodeURIComponent(summary.id)}/messages?after_seq=${after}&limit=200`, { token });
        msgs.push(...(res.messages || []));
        if (!res.more || !res.messages || !res.messages.length) break;
        after = res.last_seq;
      }
      replace(list, msgs.map((m) => h("div", { class: "msg", testid: "message", dataset: { seq: String(m.seq), senderKind: m.sender.kind } },
        h("div", { class: "msg-meta" }, formatTime(m.sent_at_ms)),
        m.attachment ? h("img", { testid: "message-image", src: m.attachment.url, alt: m.attachment.mime || "" }) : null,
        m.body ? h("div", { class: "msg-body", testid: "message-body" }, m.body) : null)));
      if (!msgs.length) replace(list, h("p", { class: "muted" }, t("list.no_messages")));
    } catch (err) {
      replace(list, h("p", { class: "error" }, t("history.error", { message: errorText(err) })));
    }
  }

  model.onChange((id) => {
    if (id !== convId || !convId) return;
    const c = model.convs.get(convId);
    const cust = c && c.customer ? c.customer.id : null;
    if (cust && cust !== customerId) { customerId = cust; load(); }
  });
  onLangChange(render);
  render();
  return {
    open(id) {
      convId = id;
      const c = id ? model.convs.get(id) : null;
      const cust = c && c.customer ? c.customer.id : null;
      customerId = cust;
      if (cust) load(); else render(); // reloaded on every open: the list changes as chats close
    },
  };
}
