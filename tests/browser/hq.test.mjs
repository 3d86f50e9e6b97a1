// The HQ dashboard against a real hub with one store (a real edge enrolled in it): a chat held at
// the store reaches the hub, and HQ sees the store online, lists the conversation, finds it by a
// long and a short Chinese term and by English words, reads the whole transcript, and sees the
// activity charts — in English and in Chinese, without a request leaving the hub's origin.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  HUB_ADMIN_PASSWORD, TABLET_LANDSCAPE, TABLET_PORTRAIT, launchBrowser, newPage, shot, startEdge, startHub,
} from "./lib/harness.mjs";

const CUSTOMER_ZH = "你好，我想退货，这件外套太小了";
const INTENTS = ["order_status", "return_refund", "product_availability", "product_info", "price_promotion",
  "store_info", "payment", "membership", "complaint", "human_agent", "greeting", "other"];
const CUSTOMER_EN = "Do you have this coat in a larger size?";
const STAFF_REPLY = "可以换大一号，请带上收据到服务台。Yes, please bring the receipt to the service desk.";

let hub;
let edge;
let browser;
let conversationId;

before(async () => {
  hub = await startHub();
  edge = await startEdge({ hub, storeId: "store-a" });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await edge?.cleanup();
  await hub?.cleanup();
});

/**
 * Runs in a page on the edge's origin: a customer opens a chat and writes two messages, staff
 * claims it, answers and resolves it, all over the store's WebSocket (docs/protocol.md).
 */
async function chatAtStore({ staffToken, customerMessages, staffReply }) {
  function connect() {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    const frames = [];
    const waiters = [];
    ws.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      const i = waiters.findIndex((w) => w.match(frame));
      if (i >= 0) waiters.splice(i, 1)[0].resolve(frame);
      else frames.push(frame);
    };
    const open = new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    return {
      open,
      send: (frame) => ws.send(JSON.stringify(frame)),
      close: () => ws.close(),
      next(match, what) {
        const i = frames.findIndex(match);
        if (i >= 0) return Promise.resolve(frames.splice(i, 1)[0]);
        return new Promise((resolve, reject) => {
          waiters.push({ match, resolve });
          setTimeout(() => reject(new Error(`no ${what} within 10 s`)), 10_000);
        });
      },
    };
  }
  const expectOk = (frame, what) => {
    if (frame.type === "error") throw new Error(`${what}: ${frame.code} ${frame.message}`);
    return frame;
  };

  const customer = connect();
  await customer.open;
  customer.send({ type: "hello", role: "customer", display_name: "Lin" });
  await customer.next((f) => f.type === "welcome", "customer welcome");
  customer.send({ type: "start", request_id: "start-1", display_name: "Lin" });
  const started = expectOk(await customer.next((f) => f.request_id === "start-1", "started"), "start");
  const id = started.conversation_id;
  for (const [i, body] of customerMessages.entries()) {
    customer.send({ type: "send", conversation_id: id, client_msg_id: `c-${i}`, body });
    expectOk(await customer.next((f) => f.client_msg_id === `c-${i}`, "customer ack"), "customer send");
  }

  const staff = connect();
  await staff.open;
  staff.send({ type: "hello", role: "staff", token: staffToken });
  expectOk(await staff.next((f) => f.type === "welcome" || f.type === "error", "staff welcome"), "staff hello");
  staff.send({ type: "claim", conversation_id: id, request_id: "claim-1" });
  const claimed = await staff.next((f) => f.request_id === "claim-1", "claim answer");
  // Routing may already have given the chat to the only staff member online: that is fine.
  if (claimed.type === "error" && claimed.code !== "illegal_transition") expectOk(claimed, "claim");
  staff.send({ type: "send", conversation_id: id, client_msg_id: "s-0", body: staffReply });
  expectOk(await staff.next((f) => f.client_msg_id === "s-0", "staff ack"), "staff send");
  staff.send({ type: "resolve", conversation_id: id, request_id: "resolve-1" });
  expectOk(await staff.next((f) => f.request_id === "resolve-1", "resolve answer"), "resolve");
  customer.close();
  staff.close();
  return id;
}

async function hubGet(path, token) {
  const res = await fetch(`${hub.url}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  const text = await res.text();
  assert.equal(res.status, 200, `GET ${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** Polls `check` (truthy = done) every 100 ms for up to `ms`. */
async function eventually(check, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("a chat at the store reaches the hub", async () => {
  const { page, offOrigin, errors } = await newPage(browser, { origins: [edge.url] });
  await page.goto(`${edge.url}/healthz`);
  conversationId = await page.evaluate(chatAtStore, {
    staffToken: await edge.login(),
    customerMessages: [CUSTOMER_ZH, CUSTOMER_EN],
    staffReply: STAFF_REPLY,
  });
  assert.match(conversationId, /^[0-9A-HJKMNP-TV-Z]{26}$/);
  assert.deepEqual(offOrigin, []);
  assert.deepEqual(errors, []);
  await page.context().close();

  const token = await hub.login();
  await eventually(async () => {
    const res = await hubGet(`/api/search?q=${encodeURIComponent("外套太小")}`, token);
    return res.results.some((r) => r.conversation_id === conversationId);
  }, "the hub to index the message");
  // The resolve is synced after the messages: wait until the hub's projection has all of it.
  await eventually(async () => {
    const { conversation } = await hubGet(`/api/conversations/${conversationId}`, token);
    return conversation.status === "resolved" && conversation.message_count === 3;
  }, "the resolved conversation at the hub");
});

test("HQ dashboard: stores, conversations, search, transcript, charts, both languages", async () => {
  assert.ok(conversationId, "the chat test ran first");
  const { page, offOrigin, errors } = await newPage(browser, { origins: [hub.url], viewport: TABLET_LANDSCAPE, locale: "en-US" });
  const byId = (id) => page.getByTestId(id);

  // Sign in (a wrong password first: the error is shown, nothing else).
  await page.goto(`${hub.url}/`);
  await byId("login-username").fill("admin");
  await byId("login-password").fill("not-the-password");
  await byId("login-submit").click();
  await assertVisibleText(byId("login-error"), /wrong username or password/i);
  await byId("login-password").fill(HUB_ADMIN_PASSWORD);
  await byId("login-submit").click();

  // Stores: store-a is online, with its last sync.
  const store = page.locator('[data-testid="store-row"][data-store-id="store-a"]');
  await store.waitFor();
  const online = store.getByTestId("store-online");
  await assertVisibleText(online, "Online");
  assert.equal(await online.getAttribute("data-online"), "true");
  assert.match(await store.innerText(), /just now|min ago/);
  assert.match(await store.innerText(), /Enrolled/);

  // Charts: volume bars and points, first-response and resolution bars, each an accessible SVG.
  const volume = byId("chart-volume");
  await volume.locator("svg rect.bar").first().waitFor();
  assert.ok(await volume.locator("svg circle.point").count() > 0, "new conversations are drawn as points");
  for (const id of ["chart-first-response", "chart-resolution"]) {
    const bars = byId(id).locator("svg rect.bar:not(.legend-mark)");
    await bars.first().waitFor();
    assert.ok(await bars.count() >= 2, `${id}: p50 and p90 bars`);
    assert.match(await byId(id).innerText(), /store-a/);
  }
  assert.equal(await volume.locator("svg > title").first().textContent(), "Volume per hour");
  assert.match(await volume.locator("svg > desc").first().textContent(), /Messages: 3; new conversations: 1;/);
  assert.match(await byId("chart-volume").innerText(), /Hour \(local time\)/);
  // Volume by store and by intent, folded under the hourly chart.
  await volume.locator("details summary").click();
  assert.ok(await volume.locator("details svg rect.bar:not(.legend-mark)").count() >= 4, "messages and new conversations for store-a and unknown");
  // The 7-day range redraws the hours.
  await page.getByRole("button", { name: "7 days" }).click();
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="chart-volume"] svg line.tick-mark').length > 0
    && document.querySelector('[data-testid="chart-volume"] svg > desc').textContent.includes("Messages: 3;"));
  await page.getByRole("button", { name: "24 h" }).click();
  await page.waitForFunction(() => document.querySelector('[data-testid="chart-volume"] svg line.tick-mark'));
  await page.evaluate(() => window.scrollTo(0, 0));
  await shot(page, "hq-dashboard", { fullPage: true });

  // Language: English ⇄ Chinese, static and drawn text alike.
  await assertVisibleText(byId("tab-overview"), "Overview");
  await byId("lang-switch").selectOption("zh-CN");
  await assertVisibleText(byId("tab-overview"), "概览");
  await assertVisibleText(online, "在线");
  await assertVisibleText(page.locator("#stores-heading"), "门店");
  assert.equal(await volume.locator("svg > title").first().textContent(), "每小时会话量");
  assert.equal(await page.title(), "Aisle 总部看板");
  await byId("lang-switch").selectOption("en");
  await assertVisibleText(byId("tab-overview"), "Overview");
  await assertVisibleText(online, "Online");

  // Conversations: the chat is listed with its figures; filters narrow the list.
  await byId("tab-conversations").click();
  const row = page.locator(`[data-testid="conv-row"][data-conversation-id="${conversationId}"]`);
  await row.waitFor();
  const rowText = await row.innerText();
  for (const part of ["store-a", "Resolved", "Store admin", "3"]) assert.ok(rowText.includes(part), `row shows ${part}: ${rowText}`);
  // The store's model read the customer's messages: the row names a real intent.
  const intent = INTENTS.find((label) => rowText.includes(label));
  assert.ok(intent, `row shows the intent the store read: ${rowText}`);
  assert.match(rowText, /\t\d+(\.\d)? (ms|s|min)\t/, "first response time");
  await byId("filter-state").selectOption("queued");
  await assertVisibleText(page.locator("#conversations"), /No conversations match/);
  assert.equal(await row.count(), 0);
  await byId("filter-state").selectOption("resolved");
  await byId("filter-store").selectOption("store-a");
  await byId("filter-intent").selectOption(intent);
  await row.waitFor();
  // Dates: a day long ago has nothing; today (in the browser's time zone) has the chat.
  await byId("filter-from").fill("2001-02-03");
  await byId("filter-to").fill("2001-02-03");
  await assertVisibleText(page.locator("#conversations"), /No conversations match/);
  const today = await page.evaluate(() => new Date().toLocaleDateString("sv")); // YYYY-MM-DD
  await byId("filter-to").fill(today);
  await row.waitFor();
  await row.click();
  await expectTranscript(page);

  // Search: a long Chinese term uses the index, a two-character one a scan (and says so).
  await byId("tab-search").click();
  await byId("search-input").fill("外套太小");
  await byId("search-submit").click();
  let result = page.locator(`[data-testid="search-result"][data-conversation-id="${conversationId}"]`);
  await result.waitFor();
  assert.equal(await result.locator("mark").innerText(), "外套太小");
  assert.match(await result.innerText(), /store-a/);
  assert.equal(await byId("search-scan-note").count(), 0);

  await byId("search-input").fill("退货");
  await byId("search-submit").click();
  await byId("search-scan-note").waitFor();
  result = page.locator(`[data-testid="search-result"][data-conversation-id="${conversationId}"]`);
  await result.waitFor();
  assert.equal(await result.locator("mark").innerText(), "退货");
  assert.ok((await result.innerText()).includes(CUSTOMER_ZH));
  await result.click();
  await expectTranscript(page);
  await page.waitForFunction(() => document.querySelector('[data-testid="transcript"] .message.hit'));
  assert.equal(await page.locator('[data-testid="transcript"] .message.hit [data-testid="message-body"]').innerText(), CUSTOMER_ZH);
  await shot(page, "hq-search");

  // English, case-insensitively.
  await byId("search-input").fill("LARGER size");
  await byId("search-submit").click();
  result = page.locator(`[data-testid="search-result"][data-conversation-id="${conversationId}"]`);
  await result.waitFor();
  assert.equal(await result.locator("mark").innerText(), "larger");

  // Log out: back to the sign-in form, and the token is gone.
  await byId("logout").click();
  await byId("login-submit").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);

  assert.deepEqual(offOrigin, []);
  assert.deepEqual(errors, []);
  await page.context().close();
});

test("HQ dashboard on a Chinese tablet (portrait): transcript over the list", async () => {
  const { page, offOrigin, errors } = await newPage(browser, { origins: [hub.url], locale: "zh-CN", viewport: TABLET_PORTRAIT });
  const byId = (id) => page.getByTestId(id);
  await page.goto(`${hub.url}/#conversations`);
  await assertVisibleText(byId("login-submit"), "登录");
  assert.equal(await byId("lang-switch").inputValue(), "zh-CN");
  await byId("login-username").fill("admin");
  await byId("login-password").fill(HUB_ADMIN_PASSWORD);
  await byId("login-submit").click();
  const row = page.locator(`[data-testid="conv-row"][data-conversation-id="${conversationId}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /已解决/);
  assert.ok(await byId("transcript").isHidden(), "no empty pane beside the list on a narrow screen");
  await row.click();
  await expectTranscript(page, { customer: "顾客" });
  await page.keyboard.press("Escape");
  await byId("transcript").waitFor({ state: "hidden" });
  await shot(page, "hq-tablet-conversations");
  assert.deepEqual(offOrigin, []);
  assert.deepEqual(errors, []);
  await page.context().close();
});

test("HQ dashboard: paging, images kept at the store, a store going offline", async () => {
  assert.ok(conversationId, "the chat test ran first");
  // 50 more conversations at the store: the list's first page (50) no longer holds them all.
  const helper = await newPage(browser, { origins: [edge.url] });
  await helper.page.goto(`${edge.url}/healthz`);
  await helper.page.evaluate(openChats, 50);
  await helper.page.context().close();
  const token = await hub.login();
  await eventually(async () => (await hubGet("/api/conversations?limit=200", token)).conversations.length === 51,
    "51 conversations at the hub");

  const { page, offOrigin, errors } = await newPage(browser, { origins: [hub.url], viewport: TABLET_LANDSCAPE });
  const byId = (id) => page.getByTestId(id);
  await page.goto(`${hub.url}/#conversations`);
  await byId("login-username").fill("admin");
  await byId("login-password").fill(HUB_ADMIN_PASSWORD);
  await byId("login-submit").click();
  await byId("conv-more").waitFor();
  assert.equal(await byId("conv-row").count(), 50);
  const first = page.locator(`[data-testid="conv-row"][data-conversation-id="${conversationId}"]`);
  assert.equal(await first.count(), 0, "the oldest conversation is on the second page");
  await byId("conv-more").click();
  await first.waitFor();
  assert.equal(await byId("conv-row").count(), 51);
  assert.ok(await byId("conv-more").isHidden(), "no third page");

  // Images: the hub's transcript will carry `attachment` (docs: the image stays at the store).
  // One on this origin that loads is shown; one that does not load, and one on another origin
  // (never requested), become the placeholder.
  const png = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==", "base64");
  await page.route("**/api/attachments/01JA4Q9J8N0P2Q4R6S8T0V2W4X", (route) => route.fulfill({ contentType: "image/png", body: png }));
  await page.route(`**/api/conversations/${conversationId}`, async (route) => {
    const res = await route.fetch();
    const json = await res.json();
    const urls = ["/api/attachments/01JA4Q9J8N0P2Q4R6S8T0V2W4X", "/api/attachments/01JA4QB7D1E3F5G7H9J1K3M5N7", "http://192.0.2.1/photo.png"];
    json.messages.forEach((m, i) => { m.attachment = { id: `a${i}`, mime: "image/png", bytes: png.length, url: urls[i] }; });
    await route.fulfill({ response: res, json });
  });
  await first.click();
  const transcript = byId("transcript");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="transcript"] .image-placeholder').length === 2);
  assert.equal(await transcript.getByTestId("message-image").count(), 1);
  assert.ok(await transcript.getByTestId("message-image").evaluate((img) => img.complete && img.naturalWidth === 1));
  assert.deepEqual(await transcript.locator(".image-placeholder").allInnerTexts(), ["Image (kept at the store)", "Image (kept at the store)"]);

  // The store goes away: after a reload (same tab, same session) it is offline.
  await edge.stop();
  await eventually(async () => !(await hubGet("/api/stores", token)).stores[0].online, "the hub to see store-a offline");
  await byId("tab-overview").click();
  await page.reload();
  const online = page.locator('[data-testid="store-row"][data-store-id="store-a"] [data-testid="store-online"]');
  await assertVisibleText(online, "Offline");
  assert.equal(await online.getAttribute("data-online"), "false");

  assert.deepEqual(offOrigin, []);
  assert.deepEqual(errors, []);
  await page.context().close();
});

/** Runs in a page on the edge's origin: `n` customers each open a chat and say hello. */
async function openChats(n) {
  const one = (i) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    let id = null;
    ws.onerror = reject;
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", role: "customer", display_name: `Guest ${i}` }));
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "error") reject(new Error(`${f.code}: ${f.message}`));
      else if (f.type === "welcome") ws.send(JSON.stringify({ type: "start", request_id: "s" }));
      else if (f.type === "started") {
        id = f.conversation_id;
        ws.send(JSON.stringify({ type: "send", conversation_id: id, client_msg_id: "m", body: `Hello, question ${i}` }));
      } else if (f.type === "ack") { ws.close(); resolve(id); }
    };
  });
  const ids = [];
  for (let i = 0; i < n; i += 10) ids.push(...await Promise.all(Array.from({ length: Math.min(10, n - i) }, (_, k) => one(i + k))));
  return ids;
}

/** The transcript pane holds the whole conversation, in order, with sender kinds. */
async function expectTranscript(page, { customer = "Customer" } = {}) {
  const messages = page.getByTestId("transcript").getByTestId("message");
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="transcript"] [data-testid="message"]').length === 3);
  const bodies = await messages.getByTestId("message-body").allInnerTexts();
  assert.deepEqual(bodies, [CUSTOMER_ZH, CUSTOMER_EN, STAFF_REPLY]);
  const kinds = await messages.evaluateAll((els) => els.map((el) => el.dataset.senderKind));
  assert.deepEqual(kinds, ["customer", "customer", "staff"]);
  const text = await page.getByTestId("transcript").innerText();
  assert.ok(text.includes(customer), `sender kind shown: ${customer}`);
  assert.match(text, /Store admin/);
}

async function assertVisibleText(locator, expected) {
  await locator.waitFor();
  const deadline = Date.now() + 5_000;
  let text;
  while (Date.now() < deadline) {
    text = (await locator.innerText()).trim();
    if (typeof expected === "string" ? text === expected : expected.test(text)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`expected ${expected}, got "${text}"`);
}

test("HQ settings: a region capacity saved with its version; a wrong rule refused, nothing changed", async () => {
  const { page, offOrigin, errors } = await newPage(browser, { origins: [hub.url], viewport: TABLET_LANDSCAPE, locale: "en-US" });
  const byId = (id) => page.getByTestId(id);
  const token = await hub.login();

  await page.goto(`${hub.url}/#settings`);
  await byId("login-username").fill("admin");
  await byId("login-password").fill(HUB_ADMIN_PASSWORD);
  await byId("login-submit").click();
  await assertVisibleText(byId("tab-settings"), "Settings");
  assert.equal(await byId("tab-settings").getAttribute("aria-current"), "page");

  // HQ sets a region capacity: saved, sent to the one store, with a version and its author.
  const before = (await hubGet("/api/settings/region", token)).layer;
  await byId("settings-region-text").fill(JSON.stringify({ routing: { capacity_per_staff: 12 } }, null, 2));
  await byId("settings-region-save").click();
  await assertVisibleText(byId("settings-region-saved"), /Saved and sent to 1 store/);
  const version = (await byId("settings-region-meta-version").innerText()).trim();
  const { layer } = await hubGet("/api/settings/region", token);
  assert.equal(String(layer.version), version);
  assert.ok(!before || layer.version > before.version, "the version grew");
  assert.deepEqual(layer.settings, { routing: { capacity_per_staff: 12 } });
  assert.match(await byId("settings-region-meta").innerText(), /hq:/);

  // The chosen store's effective settings: the capacity comes from HQ's region layer.
  assert.equal(await byId("settings-store").inputValue(), "store-a");
  const capacity = page.locator('[data-testid="effective-row"][data-path="routing.capacity_per_staff"]');
  await page.locator('[data-testid="effective-row"][data-path="routing.capacity_per_staff"][data-source="hq_region"]').waitFor();
  assert.match(await capacity.innerText(), /12[\s\S]*HQ region/);
  assert.equal(await page.locator('[data-testid="effective-row"][data-path="bot.min_confidence"]').getAttribute("data-source"), "default");
  await shot(page, "hq-settings", { fullPage: true });

  // A rule naming an intent the model does not know: the hub's message, and nothing changed.
  await byId("settings-region-text").fill(JSON.stringify({
    routing: { capacity_per_staff: 3, rules: [{ name: "refunds", when: { intents: ["refunds"] }, assign: { team: "desk" } }] },
  }, null, 2));
  await byId("settings-region-save").click();
  await assertVisibleText(byId("settings-region-error"), /routing\.rules\[0\]\.when\.intents: unknown intent "refunds"/);
  assert.equal((await byId("settings-region-meta-version").innerText()).trim(), version);
  assert.deepEqual((await hubGet("/api/settings/region", token)).layer, layer);
  assert.match(await capacity.innerText(), /12/);
  await shot(page, "hq-settings-refused");

  // Text that is not JSON never leaves the page.
  await byId("settings-region-text").fill("{ routing: ");
  await byId("settings-region-save").click();
  await assertVisibleText(byId("settings-region-error"), /not valid JSON/);
  assert.deepEqual((await hubGet("/api/settings/region", token)).layer, layer);

  // In Chinese.
  await byId("lang-switch").selectOption("zh-CN");
  await assertVisibleText(byId("tab-settings"), "设置");
  await assertVisibleText(page.locator("#settings-region-heading"), "区域设置");
  await byId("lang-switch").selectOption("en");

  assert.deepEqual(offOrigin, []);
  assert.deepEqual(errors, []);
  await page.context().close();
});
