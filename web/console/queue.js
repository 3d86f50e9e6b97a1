// The left column: "Queue" and "My chats" tabs with counts, and the conversation items with
// their unread count and how long the customer has been waiting. Re-rendered from the model
// on every change and every few seconds (waiting times grow by themselves).

import { t, onLangChange } from "/common/i18n.js";
import { h, replace } from "./dom.js";
import { duration } from "./format.js";

const LONG_WAIT_MS = 5 * 60_000;

export function mountQueue(root, model, { onOpen }) {
  let tab = "queue";
  let userPickedTab = false;

  function item(c) {
    const unread = model.unread(c);
    const since = model.waitingSince(c);
    const { msgs } = model.timeline(c);
    const last = msgs[msgs.length - 1];
    const preview = last ? (last.body || (last.attachment ? t("list.image") : "")) : t("list.no_messages");
    const name = (c.customer && c.customer.name) || t("conv.customer");
    const waited = since ? Date.now() - since : 0;
    const urgent = c.priority === "high" || model.assist(c).urgent;
    return h("li", {},
      h("button", {
        type: "button", class: "conv-item", testid: "conv-item",
        dataset: { conversationId: c.id }, "aria-current": c.id === model.openId ? "true" : "false",
        onclick: () => onOpen(c.id),
      },
      h("span", { class: "name" }, name,
        urgent ? h("span", { class: "urgent-badge", testid: "urgent-badge" }, t("list.urgent")) : null),
      h("span", {
        class: `unread-count${unread ? "" : " zero"}`, testid: "unread-count",
        "aria-label": t("list.unread", { n: unread }),
      }, String(unread)),
      h("span", { class: "preview" }, preview),
      h("span", {
        class: `waiting-time${waited > LONG_WAIT_MS ? " long" : ""}`, testid: "waiting-time",
        dataset: { since: since || "" },
      }, since ? t("list.waiting", { time: duration(waited) }) : "")));
  }

  function render() {
    const queue = model.queue();
    const mine = model.mine();
    // Until the user picks a tab, show the one where work is.
    if (!userPickedTab && queue.length === 0 && mine.length > 0) tab = "mine";
    // Urgent chats (a complaint, a request for a person) first, then as the model orders them.
    const urgent = (c) => (c.priority === "high" || model.assist(c).urgent ? 1 : 0);
    const list = (tab === "queue" ? queue : mine).slice().sort((a, b) => urgent(b) - urgent(a));
    const tabButton = (id, label, n) => h("button", {
      type: "button", role: "tab", testid: `tab-${id}`, id: `tab-${id}`,
      "aria-selected": tab === id ? "true" : "false", "aria-controls": "conv-list",
      onclick: () => { tab = id; userPickedTab = true; render(); },
    }, h("span", {}, label), h("span", { class: "count", "aria-label": String(n) }, String(n)));
    replace(root,
      h("div", { class: "tabs", role: "tablist" },
        tabButton("queue", t("tab.queue"), queue.length),
        tabButton("mine", t("tab.mine"), mine.length)),
      list.length
        ? h("ul", { class: "conv-list", id: "conv-list", role: "tabpanel" }, list.map(item))
        : h("p", { class: "empty", id: "conv-list", role: "tabpanel" }, t(tab === "queue" ? "list.empty.queue" : "list.empty.mine")));
  }

  let scheduled = false;
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => { scheduled = false; render(); }, 0);
  };
  model.onChange(schedule);
  onLangChange(render);
  const tick = setInterval(render, 5000);
  render();
  return {
    render,
    /** Shows the tab holding `id` (after a claim the chat moves to "My chats"). */
    showTabOf(id) {
      const c = model.convs.get(id);
      if (!c) return;
      if (model.isQueued(c)) tab = "queue"; else if (model.isMine(c)) tab = "mine";
      render();
    },
    destroy() { clearInterval(tick); },
  };
}
