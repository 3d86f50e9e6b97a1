// Browser tests of the staff console (web/console) against the real aisle-edge / aisle-hub.
// The customer side is a raw WebSocket opened inside a page on the edge's own origin (the
// customer chat page is built separately), so these tests depend only on the protocol.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  startEdge, startHub, launchBrowser, newPage, shot,
  EDGE_ADMIN_PASSWORD, TABLET_LANDSCAPE, TABLET_PORTRAIT,
} from "./lib/harness.mjs";
import { png } from "./lib/png.mjs";

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** Retries `fn` (an async assertion) until it passes or `timeout` ms have gone by. */
async function eventually(fn, timeout = 20_000, interval = 100) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try { return await fn(); } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, interval));
    }
  }
}

async function textOf(locator) { return (await locator.textContent() ?? "").trim(); }

/** Waits until the element's text includes `expected`. */
async function waitText(locator, expected, timeout = 20_000) {
  await eventually(async () => {
    const text = await textOf(locator);
    assert.ok(text.includes(expected), `expected "${expected}" in "${text}"`);
  }, timeout);
}

/** A customer: a raw protocol WebSocket inside a page of the edge's origin. */
async function openCustomer(edge, name = "Lin") {
  const p = await newPage(browser, { origins: [edge.url] });
  await p.page.goto(`${edge.url}/healthz`);
  await p.page.evaluate(() => new Promise((ok, fail) => {
    window.__frames = [];
    const ws = new WebSocket(`ws://${location.host}/ws`);
    window.__ws = ws;
    ws.onmessage = (e) => window.__frames.push(JSON.parse(e.data));
    ws.onopen = ok;
    ws.onerror = fail;
  }));
  const send = (frame) => p.page.evaluate((f) => window.__ws.send(JSON.stringify(f)), frame);
  /** The first frame (after `from`) whose fields equal those of `match`. */
  const waitFrame = async (match, { from = 0, timeout = 20_000 } = {}) => {
    const handle = await p.page.waitForFunction(([m, start]) => window.__frames.slice(start).find(
      (f) => Object.entries(m).every(([k, v]) => JSON.stringify(f[k]) === JSON.stringify(v))) || null,
    [match, from], { timeout, polling: 50 });
    return await handle.jsonValue();
  };
  const frameCount = () => p.page.evaluate(() => window.__frames.length);
  await send({ type: "hello", role: "customer", display_name: name });
  const welcome = await waitFrame({ type: "welcome" });
  await send({ type: "start", request_id: "start-1", display_name: name });
  const started = await waitFrame({ type: "started", request_id: "start-1" });
  const conversationId = started.conversation_id;
  let n = 0;
  return {
    ...p,
    conversationId,
    send,
    waitFrame,
    frameCount,
    /** Sends a message and waits for its ack. */
    async say(body) {
      const client_msg_id = `cust-${Date.now()}-${n++}`;
      await send({ type: "send", conversation_id: conversationId, client_msg_id, body });
      return await waitFrame({ type: "ack", client_msg_id });
    },
    /** Waits for a staff message with this body. */
    async heard(body, timeout) {
      return await waitFrame({ type: "message", conversation_id: conversationId, body }, { timeout });
    },
    /** Uploads an image as this customer (resume token as bearer); returns the attachment. */
    async upload(bytes, mime) {
      return await p.page.evaluate(async ([data, type, token]) => {
        const res = await fetch("/api/attachments", {
          method: "POST", headers: { "Content-Type": type, Authorization: `Bearer ${token}` }, body: new Uint8Array(data),
        });
        return { status: res.status, json: await res.json() };
      }, [[...bytes], mime, welcome.resume_token]);
    },
    /** A new connection after the old one dropped: hello with the resume token, full resume. */
    async reconnect() {
      await p.page.evaluate(() => new Promise((ok, fail) => {
        window.__frames = [];
        const ws = new WebSocket(`ws://${location.host}/ws`);
        window.__ws = ws;
        ws.onmessage = (e) => window.__frames.push(JSON.parse(e.data));
        ws.onopen = ok;
        ws.onerror = fail;
      }));
      await send({ type: "hello", role: "customer", resume_token: welcome.resume_token });
      await waitFrame({ type: "welcome" });
      // Follow `resumed.more` until the whole history is in.
      let after = 0;
      for (;;) {
        const from = await frameCount();
        await send({ type: "resume", conversation_id: conversationId, after_seq: after });
        const resumed = await waitFrame({ type: "resumed", conversation_id: conversationId }, { from });
        if (!resumed.more) break;
        after = resumed.last_seq;
      }
      return await p.page.evaluate(() => window.__frames.filter((f) => f.type === "message"));
    },
    async close() { await p.context.close(); },
  };
}

async function login(page, edge, username = "admin", password = EDGE_ADMIN_PASSWORD) {
  await page.goto(`${edge.url}/`);
  await page.getByTestId("login-username").fill(username);
  await page.getByTestId("login-password").fill(password);
  await page.getByTestId("login-submit").click();
  await page.getByTestId("tab-queue").waitFor();
  await eventually(async () => assert.equal(await page.locator("#conn-state").getAttribute("data-state"), "online"));
}

async function patchStaff(edge, id, body) {
  const token = await edge.login();
  const res = await fetch(`${edge.url}/api/staff/${id}`, {
    method: "PATCH", headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` }, body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text).staff;
}

async function me(edge, token) {
  const res = await fetch(`${edge.url}/api/me`, { headers: { Authorization: `Bearer ${token}` } });
  return (await res.json()).staff;
}

const item = (page, id) => page.locator(`[data-testid="conv-item"][data-conversation-id="${id}"]`);

/** Sends a reply from the console and waits until it is acknowledged (shown with its seq). */
async function reply(page, text) {
  await page.getByTestId("composer-input").fill(text);
  await page.getByTestId("composer-send").click();
  await page.locator('[data-testid="message"][data-sender-kind="staff"][data-seq]', { hasText: text }).waitFor();
}

/** Opens a chat from "My chats". */
async function openChat(page, conversationId) {
  await page.getByTestId("tab-mine").click();
  await item(page, conversationId).click();
}

/** The admin signed in on a tablet, a customer who said `first`, and their chat open in the console. */
async function consoleWithChat(edge, name, first) {
  const staff = await newPage(browser, { origins: [edge.url] });
  await login(staff.page, edge);
  const customer = await openCustomer(edge, name);
  await customer.say(first);
  await openChat(staff.page, customer.conversationId);
  return { staff, page: staff.page, customer };
}

function assertClean(...pages) {
  for (const p of pages) {
    assert.deepEqual(p.offOrigin, [], "no request may leave the origin");
    assert.deepEqual(p.errors, [], "no page error");
  }
}

test("login, a queued customer message, claim and reply; landscape and portrait", async () => {
  const edge = await startEdge();
  try {
    // The admin is at capacity 0, so routing leaves the chat in the queue for a manual claim.
    const admin = await me(edge, await edge.login());
    await patchStaff(edge, admin.id, { capacity: 0 });

    const staff = await newPage(browser, { origins: [edge.url], viewport: TABLET_LANDSCAPE });
    const { page } = staff;
    await page.goto(`${edge.url}/`);
    await page.getByTestId("login-username").fill("admin");
    await page.getByTestId("login-password").fill("not-the-password");
    await page.getByTestId("login-submit").click();
    await waitText(page.getByTestId("login-error"), "Wrong username or password");
    assert.ok(await page.getByTestId("login-error").isVisible());
    await login(page, edge);
    assert.ok(!(await page.getByTestId("login-error").isVisible()));

    const customer = await openCustomer(edge, "Lin");
    await customer.say("Hello, do you have the blue trail shoe in size 40?");

    await page.getByTestId("tab-queue").click();
    const queued = item(page, customer.conversationId);
    await queued.waitFor();
    await waitText(queued.getByTestId("unread-count"), "1");
    await waitText(page.getByTestId("tab-queue"), "1");
    await waitText(queued.getByTestId("waiting-time"), "waiting");

    await queued.click();
    await waitText(page.getByTestId("conv-status"), "Queued");
    await waitText(page.getByTestId("message-body").first(), "blue trail shoe");
    await page.getByTestId("action-claim").click();
    await waitText(page.getByTestId("conv-status"), "Assigned");
    await waitText(page.getByTestId("tab-mine"), "1");
    await waitText(page.getByTestId("tab-queue"), "0");

    // The customer's typing shows in the console; the staff member's reaches the customer.
    const before = await customer.frameCount();
    assert.equal(await page.getByTestId("typing-indicator").isVisible(), false);
    await customer.send({ type: "typing", conversation_id: customer.conversationId, active: true });
    await waitText(page.getByTestId("typing-indicator"), "Lin is typing");
    assert.equal(await page.getByTestId("typing-indicator").isVisible(), true);
    await page.getByTestId("composer-input").pressSequentially("Yes");
    await customer.waitFrame({ type: "typing", active: true }, { from: before });
    await page.getByTestId("composer-input").fill("");
    await customer.waitFrame({ type: "typing", active: false }, { from: before });
    await customer.send({ type: "typing", conversation_id: customer.conversationId, active: false });
    await eventually(async () => assert.equal(await page.getByTestId("typing-indicator").isVisible(), false));

    await reply(page, "Yes, we have it in blue, size 40.");
    await customer.heard("Yes, we have it in blue, size 40.");
    const staffRead = await customer.waitFrame({ type: "read", conversation_id: customer.conversationId });
    assert.equal(staffRead.by.kind, "staff");

    // The customer reads the reply: the console shows the receipt under it.
    await customer.send({ type: "read", conversation_id: customer.conversationId, seq: 2 });
    await page.getByTestId("read-receipt").first().waitFor();
    await customer.say("Great! Can you hold a pair for me until 6 pm?");
    await page.locator('[data-testid="message"][data-seq="3"]').waitFor();
    await reply(page, "Of course — under which name?");
    await customer.heard("Of course — under which name?");
    await customer.say("Lin Wei. Thank you!");
    await page.locator('[data-testid="message"][data-seq="5"]').waitFor();
    // Open and visible: read at once, so no unread badge.
    await waitText(item(page, customer.conversationId).getByTestId("unread-count"), "0");

    // Every message exactly once, in order.
    const seqs = await page.locator('[data-testid="message"][data-seq]').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5]);
    assert.equal(await page.getByTestId("assist-panel").isVisible(), true);
    // The appliance's model read the customer's last message: the panel names its intent.
    await page.getByTestId("assist-intent").waitFor();
    assert.match(await page.getByTestId("assist-intent").getAttribute("data-intent"), /^[a-z_]+$/);

    await shot(page, "console-landscape");
    await page.setViewportSize(TABLET_PORTRAIT);
    await page.waitForTimeout(200);
    await shot(page, "console-portrait");

    assertClean(staff, customer);
    await staff.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
  }
});

test("reconnect after an appliance restart: the pending reply is sent once, nothing missed", async () => {
  // Two messages per resume at most: the console must follow `resumed.more` to get everything.
  const edge = await startEdge({ env: { AISLE_LIMITS__MAX_HISTORY_FRAMES: "2" } });
  try {
    const { staff, page, customer } = await consoleWithChat(edge, "Wu", "Is the café upstairs open?");
    await reply(page, "Let me check for you.");
    await customer.heard("Let me check for you.");

    await edge.stop();
    await eventually(async () => assert.equal(await page.locator("#conn-state").getAttribute("data-state") === "online", false));
    // Written while the appliance is down: shown at once as pending.
    await page.getByTestId("composer-input").fill("Yes, it is open until 20:00.");
    await page.getByTestId("composer-send").click();
    await page.locator('[data-testid="message"][data-pending="true"]', { hasText: "until 20:00" }).waitFor();
    await shot(page, "console-reconnecting");

    await edge.start();
    await eventually(async () => assert.equal(await page.locator("#conn-state").getAttribute("data-state"), "online"), 20_000);
    await page.locator('[data-testid="message"][data-seq="3"]', { hasText: "until 20:00" }).waitFor({ timeout: 15_000 });

    const history = await customer.reconnect();
    assert.deepEqual(history.map((m) => m.seq), [1, 2, 3]);
    assert.equal(history.filter((m) => m.body === "Yes, it is open until 20:00.").length, 1);
    await customer.say("Perfect, thanks!");
    await page.locator('[data-testid="message"][data-seq="4"]').waitFor();
    const seqs = await page.locator('[data-testid="message"]').evaluateAll((els) => els.map((e) => e.dataset.seq));
    assert.deepEqual(seqs, ["1", "2", "3", "4"]);

    // A reload keeps the session and loads the whole history again, page by page.
    await page.reload();
    await item(page, customer.conversationId).click();
    await page.locator('[data-testid="message"][data-seq="4"]').waitFor();
    const reloaded = await page.locator('[data-testid="message"]').evaluateAll((els) => els.map((e) => e.dataset.seq));
    assert.deepEqual(reloaded, ["1", "2", "3", "4"]);

    assertClean(staff, customer);
    await staff.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
  }
});

test("image attachments both ways, and a refused upload shown clearly", async () => {
  const edge = await startEdge();
  try {
    const { staff, page, customer } = await consoleWithChat(edge, "Sun", "Do you have this lamp?");

    // The customer sends a photo.
    const up = await customer.upload(png(64, 48, [220, 120, 30]), "image/png");
    assert.equal(up.status, 201, JSON.stringify(up.json));
    await customer.send({ type: "send", conversation_id: customer.conversationId, client_msg_id: "cust-photo", body: "", attachment_id: up.json.attachment.id });
    await customer.waitFrame({ type: "ack", client_msg_id: "cust-photo" });
    const theirs = page.locator('[data-testid="message"][data-seq="2"] [data-testid="message-image"]');
    await theirs.waitFor();
    assert.equal(await theirs.getAttribute("src"), up.json.attachment.url);
    await eventually(async () => assert.ok(await theirs.evaluate((img) => img.complete && img.naturalWidth === 64)));

    // The staff member answers with a photo and a caption.
    await page.getByTestId("attach-input").setInputFiles({ name: "lamp.png", mimeType: "image/png", buffer: png(80, 60, [30, 120, 220]) });
    await page.locator(".attachment-chip img").waitFor();
    await page.getByTestId("composer-input").fill("This one, in blue?");
    await page.getByTestId("composer-send").click();
    const heard = await customer.heard("This one, in blue?");
    assert.equal(heard.attachment.mime, "image/png");
    const mine = page.locator('[data-testid="message"][data-seq="3"] [data-testid="message-image"]');
    await mine.waitFor();
    await eventually(async () => assert.ok(await mine.evaluate((img) => img.complete && img.naturalWidth === 80)));

    // An image with no caption at all.
    await page.getByTestId("attach-input").setInputFiles({ name: "dot.png", mimeType: "image/png", buffer: png(8, 8, [0, 0, 0]) });
    await page.locator(".attachment-chip img").waitFor();
    await page.getByTestId("composer-send").click();
    const bare = await customer.waitFrame({ type: "message", seq: 4 });
    assert.equal(bare.body, "");
    assert.ok(bare.attachment && bare.attachment.id);
    await page.locator('[data-testid="message"][data-seq="4"] [data-testid="message-image"]').waitFor();

    // Not an image (whatever it claims): the server's 415 is shown, nothing is sent.
    await page.getByTestId("attach-input").setInputFiles({ name: "fake.png", mimeType: "image/png", buffer: Buffer.from("not an image at all") });
    await waitText(page.locator(".composer-error"), "Only PNG, JPEG, GIF and WebP");
    await shot(page, "console-images");
    assert.equal(await page.locator('[data-testid="message"]').count(), 4);

    assertClean(staff, customer);
    await staff.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
  }
});

test("transfer to a colleague, who sees it in my chats and resolves it", async () => {
  const edge = await startEdge();
  try {
    const lina = await edge.createStaff({ username: "lina", name: "Li Na" });
    const admin = await newPage(browser, { origins: [edge.url] });
    await login(admin.page, edge);

    // Only the admin is online: routing assigns the new chat to them.
    const customer = await openCustomer(edge, "Mei");
    await customer.say("I would like a refund for these headphones.");
    await admin.page.getByTestId("tab-mine").click();
    await item(admin.page, customer.conversationId).click();
    await waitText(admin.page.getByTestId("conv-status"), "Assigned");
    await reply(admin.page, "Let me get a colleague who handles refunds.");

    const colleague = await newPage(browser, { origins: [edge.url], viewport: TABLET_PORTRAIT });
    await login(colleague.page, edge, "lina", "staff-pass-1");
    assert.equal(await colleague.page.getByTestId("nav-admin").isVisible(), false, "no admin page for staff");
    await colleague.page.getByTestId("tab-mine").click();
    await waitText(colleague.page.getByTestId("tab-mine"), "0");

    await admin.page.getByTestId("action-transfer").click();
    const target = admin.page.getByTestId("transfer-target");
    await target.waitFor();
    await waitText(target.locator(`option[value="${lina.id}"]`), "Li Na (online");
    await target.selectOption(lina.id);
    await admin.page.locator("#transfer-note").fill("wants a refund");
    await admin.page.getByTestId("transfer-confirm").click();
    await waitText(admin.page.getByTestId("conv-status"), "Transferred");
    await waitText(admin.page.getByTestId("conv-agent"), "Li Na");
    const transferred = await customer.waitFrame({ type: "state", status: "transferred" });
    assert.equal(transferred.agent.id, lina.id);

    // The colleague has it in "My chats", with the whole history.
    await waitText(colleague.page.getByTestId("tab-mine"), "1");
    await item(colleague.page, customer.conversationId).click();
    await waitText(colleague.page.getByTestId("conv-status"), "Transferred");
    await waitText(colleague.page.getByTestId("conv-agent"), "from Store admin");
    await waitText(colleague.page.getByTestId("conv-agent"), "Note: wants a refund");
    await colleague.page.locator('[data-testid="message"][data-seq="2"]').waitFor();
    await waitText(colleague.page.locator('[data-testid="message"][data-seq="1"]'), "refund for these headphones");
    await reply(colleague.page, "Hi Mei, I can do the refund at the service desk.");
    await customer.heard("Hi Mei, I can do the refund at the service desk.");

    await colleague.page.getByTestId("action-resolve").click();
    await waitText(colleague.page.getByTestId("conv-status"), "Resolved");
    const resolved = await customer.waitFrame({ type: "state", status: "resolved" });
    assert.equal(resolved.conversation_id, customer.conversationId);
    await waitText(colleague.page.getByTestId("tab-mine"), "0");
    assert.ok(await colleague.page.getByTestId("action-reopen").isVisible());
    await shot(colleague.page, "console-transfer-resolved");

    assertClean(admin, colleague, customer);
    await admin.context.close();
    await colleague.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
  }
});

test("canned reply created on the admin page, chosen with / in the composer", async () => {
  const edge = await startEdge();
  try {
    const staff = await newPage(browser, { origins: [edge.url] });
    const { page } = staff;
    await login(page, edge);

    await page.getByTestId("nav-admin").click();
    await page.getByTestId("admin-canned-shortcut").fill("hours");
    await page.getByTestId("admin-canned-title").fill("Opening hours");
    await page.getByTestId("admin-canned-body").fill("We are open 9:00–21:00 every day, holidays included.");
    await page.getByTestId("admin-canned-create").click();
    await waitText(page.getByTestId("admin-canned-list"), "/hours");
    await page.getByTestId("admin-canned-shortcut").fill("returns");
    await page.getByTestId("admin-canned-title").fill("Returns");
    await page.getByTestId("admin-canned-body").fill("You can return unworn items within 30 days with the receipt.");
    await page.getByTestId("admin-canned-create").click();
    await waitText(page.getByTestId("admin-canned-list"), "/returns");
    await shot(page, "console-admin");

    await page.getByTestId("nav-console").click();
    const customer = await openCustomer(edge, "Chen");
    await customer.say("When are you open on Sunday?");
    await openChat(page, customer.conversationId);
    await waitText(page.getByTestId("conv-status"), "Assigned");

    const input = page.getByTestId("composer-input");
    await input.click();
    await input.pressSequentially("/");
    const menu = page.getByTestId("canned-menu");
    await menu.waitFor();
    await eventually(async () => assert.equal(await menu.getByTestId("canned-item").count(), 2));
    await input.pressSequentially("hou");
    await eventually(async () => assert.equal(await menu.getByTestId("canned-item").count(), 1));
    await waitText(menu.getByTestId("canned-item").first(), "Opening hours");
    await shot(page, "console-canned");
    await input.press("Enter");
    await eventually(async () => assert.equal(await input.inputValue(), "We are open 9:00–21:00 every day, holidays included."));
    assert.ok(!(await menu.isVisible()));
    await page.getByTestId("composer-send").click();
    await customer.heard("We are open 9:00–21:00 every day, holidays included.");

    // Tapping an item works too (arrow keys pick the second one first).
    await input.pressSequentially("/");
    await eventually(async () => assert.equal(await menu.getByTestId("canned-item").count(), 2));
    await input.press("ArrowDown");
    await eventually(async () => assert.equal(await menu.locator('[aria-selected="true"]').getAttribute("data-shortcut"), "returns"));
    await menu.getByTestId("canned-item").nth(1).tap();
    await eventually(async () => assert.equal(await input.inputValue(), "You can return unworn items within 30 days with the receipt."));

    // Edit one canned reply and delete the other on the admin page; the menu follows.
    await page.getByTestId("nav-admin").click();
    const returns = page.locator('[data-testid="admin-canned-row"]', { hasText: "/returns" });
    await returns.getByTestId("admin-canned-edit").click();
    const editing = page.locator('[data-testid="admin-canned-row"]:has([data-testid="admin-canned-edit-body"])');
    await editing.getByTestId("admin-canned-edit-body").fill("Returns: 30 days, with the receipt.");
    await editing.getByTestId("admin-canned-save").click();
    await waitText(page.getByTestId("admin-canned-list"), "Returns: 30 days, with the receipt.");
    await page.locator('[data-testid="admin-canned-row"]', { hasText: "/hours" }).getByTestId("admin-canned-delete").click();
    await eventually(async () => assert.equal(await page.getByTestId("admin-canned-row").count(), 1));
    await page.getByTestId("nav-console").click();
    await input.fill("");
    await input.pressSequentially("/");
    await eventually(async () => assert.equal(await menu.getByTestId("canned-item").count(), 1));
    await waitText(menu.getByTestId("canned-item").first(), "Returns: 30 days");

    assertClean(staff, customer);
    await staff.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
  }
});

test("bot: a canned reply tagged with an intent, the bot policy, a bot answer and the assist panel", async () => {
  const edge = await startEdge();
  try {
    const staff = await newPage(browser, { origins: [edge.url] });
    const { page } = staff;
    await login(page, edge);

    // Tag a canned reply with the intent it answers.
    const hours = "We are open 9:00–21:00 every day.";
    await page.getByTestId("nav-admin").click();
    await page.getByTestId("admin-canned-shortcut").fill("hours");
    await page.getByTestId("admin-canned-title").fill("Opening hours");
    await page.getByTestId("admin-canned-body").fill(hours);
    await page.getByTestId("admin-canned-intent").selectOption("store_info");
    await page.getByTestId("admin-canned-create").click();
    const row = page.locator('[data-testid="admin-canned-row"]', { hasText: "/hours" });
    await waitText(row, "store information");
    assert.equal(await row.getByTestId("admin-canned-row-intent").getAttribute("data-intent"), "store_info");

    // The bot policy: complaints and requests for a person can not be handed to the bot.
    const bot = page.getByTestId("admin-bot");
    const box = (intent) => bot.locator(`[data-testid="admin-bot-intent"][data-intent="${intent}"]`);
    await eventually(async () => assert.equal(await box("store_info").isEnabled(), true));
    assert.equal(await bot.getByTestId("admin-bot-intent").count(), 12);
    for (const intent of ["complaint", "human_agent"]) {
      assert.equal(await box(intent).isDisabled(), true, intent);
      assert.equal(await box(intent).isChecked(), false, intent);
    }
    await waitText(bot, "always goes to a person");
    assert.equal(await bot.getByTestId("admin-bot-threshold").inputValue(), "85");
    await box("store_info").check();
    // Out of range: refused clearly, nothing saved.
    await bot.getByTestId("admin-bot-threshold").fill("40");
    await bot.getByTestId("admin-bot-save").click();
    await waitText(bot.getByTestId("admin-bot-message"), "between 50 and 100");
    await bot.getByTestId("admin-bot-threshold").fill("50");
    await bot.getByTestId("admin-bot-save").click();
    await waitText(bot.getByTestId("admin-bot-message"), "Saved");
    const token = await edge.login();
    const policy = await (await fetch(`${edge.url}/api/bot-policy`, { headers: { Authorization: `Bearer ${token}` } })).json();
    assert.deepEqual(policy.bot_policy, { intents: ["store_info"], min_confidence: 0.5 });

    // A customer asks; the bot answers with the tagged reply.
    await page.getByTestId("nav-console").click();
    const customer = await openCustomer(edge, "Guo");
    await customer.say("what time do you open on sunday?");
    const answer = await customer.heard(hours);
    assert.equal(answer.sender.kind, "bot");

    // The console shows it as the bot's; the assist panel names the intent and suggests the reply.
    await openChat(page, customer.conversationId);
    const botMsg = page.locator('[data-testid="message"][data-sender-kind="bot"]', { hasText: hours });
    await botMsg.waitFor();
    await waitText(botMsg, "Bot");
    const assist = page.getByTestId("assist-panel");
    await eventually(async () => assert.equal(await assist.getByTestId("assist-intent").getAttribute("data-intent"), "store_info"));
    await waitText(assist.getByTestId("assist-suggestion").first(), hours);
    await shot(page, "console-bot");

    // The admin page lists the answer.
    await page.getByTestId("nav-admin").click();
    await waitText(bot.getByTestId("admin-bot-answer").first(), "/hours");

    assertClean(staff, customer);
    await staff.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
  }
});

test("hub banner while the regional hub is down; chatting keeps working", async () => {
  const hub = await startHub();
  const edge = await startEdge({ hub });
  try {
    const staff = await newPage(browser, { origins: [edge.url] });
    const { page } = staff;
    await login(page, edge);
    const banner = page.getByTestId("hub-banner");
    await eventually(async () => {
      const health = await (await fetch(`${edge.url}/healthz`)).json();
      assert.equal(health.hub.connected, true);
    }, 20_000);
    await eventually(async () => assert.equal(await banner.isVisible(), false), 10_000);

    const customer = await openCustomer(edge, "Zhao");
    await customer.say("Is the store open today?");
    await openChat(page, customer.conversationId);
    await reply(page, "Yes, until 21:00.");
    await customer.heard("Yes, until 21:00.");

    await hub.stop();
    await banner.waitFor({ state: "visible", timeout: 20_000 });
    await waitText(banner, "Regional hub unreachable");
    await customer.say("Great, and do you have umbrellas?");
    await waitText(page.locator('[data-testid="message"][data-seq="3"]'), "umbrellas");
    await reply(page, "Yes, at the entrance.");
    await customer.heard("Yes, at the entrance.");
    await shot(page, "console-hub-down");

    await hub.start();
    await banner.waitFor({ state: "hidden", timeout: 30_000 });

    assertClean(staff, customer);
    await staff.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
    await hub.cleanup();
  }
});

test("lifecycle actions, an error frame, the customer's other chats, staff admin", async () => {
  const edge = await startEdge();
  try {
    const { staff, page, customer } = await consoleWithChat(edge, "Ana", "First visit: where are the fitting rooms?");
    const status = page.getByTestId("conv-status");
    await waitText(status, "Assigned");

    // Snooze, then wake.
    await page.getByTestId("action-snooze").click();
    await page.getByTestId("snooze-15m").click();
    await waitText(status, "Snoozed");
    await waitText(page.getByTestId("conv-agent"), "Snoozed until");
    await customer.waitFrame({ type: "state", status: "snoozed" });
    await page.getByTestId("action-wake").click();
    await eventually(async () => assert.notEqual(await textOf(status), "Snoozed"));

    // Release to the queue (capacity 0, so routing leaves it there) and claim again.
    const admin = await me(edge, await edge.login());
    await patchStaff(edge, admin.id, { capacity: 0 });
    await page.getByTestId("action-release").click();
    await waitText(status, "Queued");
    await waitText(page.getByTestId("tab-queue"), "1");
    await page.getByTestId("action-claim").click();
    await waitText(status, "Assigned");

    // An error frame: too long a message is refused and shown on the message.
    await page.getByTestId("composer-input").fill("x".repeat(4001));
    await page.getByTestId("composer-send").click();
    const failed = page.locator('[data-testid="message"][data-pending="true"]');
    await waitText(failed, "Not sent: The message is too long");
    await failed.getByRole("button", { name: "Dismiss" }).click();
    await failed.waitFor({ state: "detached" });
    await reply(page, "Fitting rooms are at the back, next to the shoes.");

    // Resolve and reopen.
    await page.getByTestId("action-resolve").click();
    await waitText(status, "Resolved");
    assert.ok(await page.getByTestId("composer-input").isDisabled());
    await page.getByTestId("action-reopen").click();
    await eventually(async () => assert.notEqual(await textOf(status), "Resolved"));
    await page.getByTestId("action-claim").or(page.getByTestId("action-resolve")).first().waitFor();
    if (await page.getByTestId("action-claim").isVisible()) await page.getByTestId("action-claim").click();
    await page.getByTestId("action-resolve").click();
    await waitText(status, "Resolved");

    // The customer comes back with a new chat: the first one is in their history, read-only.
    const firstId = customer.conversationId;
    await customer.send({ type: "start", request_id: "start-2", display_name: "Ana" });
    const second = await customer.waitFrame({ type: "started", request_id: "start-2" });
    assert.notEqual(second.conversation_id, firstId);
    await customer.send({ type: "send", conversation_id: second.conversation_id, client_msg_id: "second-1", body: "Second visit: do you sell gift cards?" });
    await page.getByTestId("tab-queue").click();
    await item(page, second.conversation_id).click();
    const past = page.locator(`[data-testid="customer-history"] [data-conversation-id="${firstId}"]`);
    await past.waitFor();
    await past.click();
    const dialog = page.locator("#transcript-dialog");
    await waitText(dialog, "where are the fitting rooms");
    await waitText(dialog, "Fitting rooms are at the back");
    assert.equal(await dialog.locator("textarea, [data-testid^=action-]").count(), 0);
    await shot(page, "console-customer-history");
    await page.getByTestId("history-close").click();
    await eventually(async () => assert.equal(await dialog.isVisible(), false));

    // Staff admin: create, edit, reset the password, disable.
    await page.getByTestId("nav-admin").click();
    await page.getByTestId("admin-staff-username").fill("bo");
    await page.getByTestId("admin-staff-name").fill("Bo Yang");
    await page.getByTestId("admin-staff-password").fill("bo-password-1");
    await page.getByTestId("admin-staff-capacity").fill("5");
    await page.getByTestId("admin-staff-create").click();
    const row = page.locator('[data-testid="admin-staff-row"][data-username="bo"]');
    await waitText(row, "Bo Yang");
    await row.getByTestId("admin-staff-edit").click();
    await row.getByTestId("admin-staff-edit-name").fill("Bo Yang (floor 2)");
    await row.getByTestId("admin-staff-edit-capacity").fill("3");
    await row.getByTestId("admin-staff-save").click();
    await waitText(row, "Bo Yang (floor 2)");
    await row.getByTestId("admin-staff-reset").click();
    await row.getByTestId("admin-staff-new-password").fill("bo-password-2");
    await row.getByTestId("admin-staff-reset-save").click();
    await row.getByTestId("admin-staff-new-password").waitFor({ state: "detached" });
    await waitText(page.getByTestId("admin-staff-message"), "Saved");
    assert.ok(await edge.login("bo", "bo-password-2"));
    await row.getByTestId("admin-staff-disable").click();
    await waitText(row, "Disabled");
    await row.getByTestId("admin-staff-enable").waitFor();
    // A taken username is refused clearly.
    await page.getByTestId("admin-staff-username").fill("bo");
    await page.getByTestId("admin-staff-name").fill("Another Bo");
    await page.getByTestId("admin-staff-password").fill("bo-password-3");
    await page.getByTestId("admin-staff-create").click();
    await waitText(page.getByTestId("admin-staff-message"), "That username is taken");
    await shot(page, "console-admin-staff");

    assertClean(staff, customer);
    await staff.context.close();
    await customer.close();
  } finally {
    await edge.cleanup();
  }
});

test("settings: the box's file in force with its source, a refused edit of the file, staff team and skills", async () => {
  const config = [
    "[routing]",
    "capacity_per_staff = 5",
    "",
    "[[routing.rules]]",
    'name = "returns desk"',
    'when = { intents = ["return_refund"] }',
    'assign = { skill = "returns" }',
    "",
  ].join("\n");
  const edge = await startEdge({ config });
  try {
    const staff = await newPage(browser, { origins: [edge.url] });
    const { page } = staff;
    await login(page, edge);
    await page.getByTestId("nav-settings").click();
    const value = (path) => page.locator(`[data-testid="settings-value"][data-path="${path}"]`);
    const source = async (path) => await value(path).getByTestId("settings-source").getAttribute("data-source");

    // The file's values, each with its source; the rest are the built-in defaults.
    const capacity = value("routing.capacity_per_staff");
    await waitText(capacity.getByTestId("settings-capacity"), "5");
    assert.equal(await source("routing.capacity_per_staff"), "file");
    await waitText(capacity.getByTestId("settings-source"), "this box's file");
    assert.equal(await source("routing.rules"), "file");
    assert.equal(await source("routing.fallback"), "default");
    await waitText(value("routing.fallback").getByTestId("settings-source"), "default");
    assert.equal(await source("bot.intents"), "default");
    const rule = page.locator('[data-testid="settings-rule"][data-name="returns desk"]');
    await waitText(rule, "when the intent is return / refund → assign skill “returns”");
    assert.equal(await page.getByTestId("settings-rule").count(), 1);
    await waitText(page.getByTestId("settings-generation"), "1");
    await waitText(page.getByTestId("settings-hq-version"), "none");
    await waitText(page.getByTestId("settings-changed"), "the appliance starting");
    assert.equal(await page.getByTestId("settings-refused").count(), 0);
    await shot(page, "console-settings");

    // A bad edit of the file (an intent the model does not know) is refused and shown; the
    // rule in force stays. The edge reads the file a moment after it is saved: refresh until
    // the refusal is there.
    edge.writeConfig(config.replace('"return_refund"', '"refunds"'));
    const refused = page.getByTestId("settings-refused");
    await eventually(async () => {
      await page.getByTestId("settings-refresh").click();
      await refused.waitFor({ timeout: 1_000 });
    });
    assert.equal(await refused.getAttribute("data-source"), "file");
    await waitText(refused.getByTestId("settings-refused-reason"), "refunds");
    await waitText(refused, "this box's file");
    await waitText(refused, "A change was refused");
    await waitText(rule, "return / refund");
    assert.ok(!(await textOf(page.getByTestId("settings-rules"))).includes("refunds"));
    await waitText(capacity.getByTestId("settings-capacity"), "5");
    await waitText(page.getByTestId("settings-generation"), "1");
    await shot(page, "console-settings-refused");

    // In Chinese: the sources, the warning and the rule are translated (the reason is the server's).
    await page.getByTestId("lang-switch").selectOption("zh-CN");
    await waitText(page.getByTestId("nav-settings"), "门店设置");
    await waitText(capacity.getByTestId("settings-source"), "本机配置文件");
    await waitText(value("routing.fallback").getByTestId("settings-source"), "默认");
    await waitText(refused, "有一项修改被拒绝");
    await waitText(refused, "refunds");
    await waitText(rule, "当意图为退货 / 退款时 → 分配给技能“returns”");
    await shot(page, "console-settings-zh");
    await page.getByTestId("lang-switch").selectOption("en");
    await waitText(page.getByTestId("nav-settings"), "Settings");

    // Staff admin: a new account with a team and skills, following the store's capacity (5,
    // from the file); then its own capacity, new skills, and following the store again.
    await page.getByTestId("nav-admin").click();
    await page.getByTestId("admin-staff-username").fill("mei");
    await page.getByTestId("admin-staff-name").fill("Mei Chen");
    await page.getByTestId("admin-staff-password").fill("mei-password-1");
    await page.getByTestId("admin-staff-team").fill("floor 2");
    await page.getByTestId("admin-staff-skills").fill("returns, 退货,  returns ,");
    assert.ok(await page.getByTestId("admin-staff-follows").isChecked());
    await page.getByTestId("admin-staff-create").click();
    const row = page.locator('[data-testid="admin-staff-row"][data-username="mei"]');
    await waitText(row, "Mei Chen");
    await waitText(row.getByTestId("admin-staff-row-team"), "floor 2");
    assert.equal(await row.getByTestId("admin-staff-row-skills").getAttribute("data-skills"), "returns,退货");
    await waitText(row.getByTestId("admin-staff-row-skills"), "退货");
    assert.equal(await row.getByTestId("admin-staff-row-capacity").getAttribute("data-follows"), "true");
    await waitText(row.getByTestId("admin-staff-row-capacity"), "5 (store's)");

    await row.getByTestId("admin-staff-edit").click();
    assert.equal(await row.getByTestId("admin-staff-edit-skills").inputValue(), "returns, 退货");
    await row.getByTestId("admin-staff-edit-skills").fill("returns, gift cards");
    await row.getByTestId("admin-staff-edit-capacity").fill("3");
    assert.equal(await row.getByTestId("admin-staff-edit-follows").isChecked(), false);
    await row.getByTestId("admin-staff-save").click();
    await waitText(row.getByTestId("admin-staff-row-skills"), "gift cards");
    assert.equal(await row.getByTestId("admin-staff-row-skills").getAttribute("data-skills"), "returns,gift cards");
    assert.equal(await row.getByTestId("admin-staff-row-capacity").getAttribute("data-follows"), "false");
    assert.equal(await textOf(row.getByTestId("admin-staff-row-capacity")), "3");
    await shot(page, "console-admin-staff-skills");

    await row.getByTestId("admin-staff-edit").click();
    await row.getByTestId("admin-staff-edit-follows").check();
    assert.equal(await row.getByTestId("admin-staff-edit-capacity").inputValue(), "");
    await row.getByTestId("admin-staff-save").click();
    await waitText(row.getByTestId("admin-staff-row-capacity"), "5 (store's)");
    // The server agrees.
    const token = await edge.login();
    const listed = (await (await fetch(`${edge.url}/api/staff`, { headers: { Authorization: `Bearer ${token}` } })).json())
      .staff.find((x) => x.username === "mei");
    assert.deepEqual([listed.team, listed.skills, listed.capacity, listed.capacity_follows_store], ["floor 2", ["returns", "gift cards"], 5, true]);

    assertClean(staff);
    await staff.context.close();
  } finally {
    await edge.cleanup();
  }
});

test("language switch: English by default, Chinese and back", async () => {
  const edge = await startEdge();
  try {
    const staff = await newPage(browser, { origins: [edge.url], locale: "en-US" });
    const { page } = staff;
    await page.goto(`${edge.url}/`);
    await waitText(page.getByTestId("login-submit"), "Sign in");
    await waitText(page.locator("label[for=login-username]"), "Username");
    await page.getByTestId("lang-switch").selectOption("zh-CN");
    await waitText(page.getByTestId("login-submit"), "登录");
    await waitText(page.locator("label[for=login-username]"), "用户名");
    await waitText(page.locator(".login-card h1"), "店员登录");

    await page.getByTestId("login-username").fill("admin");
    await page.getByTestId("login-password").fill("wrong-password");
    await page.getByTestId("login-submit").click();
    await waitText(page.getByTestId("login-error"), "用户名或密码错误");
    await login(page, edge);
    await waitText(page.getByTestId("tab-queue"), "排队中");
    await waitText(page.getByTestId("tab-mine"), "我的会话");
    await waitText(page.getByTestId("logout"), "退出登录");
    await waitText(page.getByTestId("nav-admin"), "门店管理");
    await waitText(page.getByTestId("assist-panel"), "智能助手");
    await shot(page, "console-zh");

    await page.getByTestId("lang-switch").selectOption("en");
    await waitText(page.getByTestId("tab-queue"), "Queue");
    await waitText(page.getByTestId("tab-mine"), "My chats");
    await waitText(page.getByTestId("logout"), "Sign out");
    await waitText(page.getByTestId("nav-admin"), "Store admin");
    // The choice is remembered across a reload.
    await page.getByTestId("lang-switch").selectOption("zh-CN");
    await page.reload();
    await waitText(page.getByTestId("tab-queue"), "排队中");

    // Signing out returns to the login, and a reload does not sign back in.
    await page.getByTestId("logout").click();
    await waitText(page.getByTestId("login-submit"), "登录");
    await page.reload();
    await page.getByTestId("login-submit").waitFor();
    assert.equal(await page.getByTestId("tab-queue").isVisible(), false);

    // A tablet whose browser is set to Chinese starts in Chinese.
    const zh = await newPage(browser, { origins: [edge.url], locale: "zh-CN" });
    await zh.page.goto(`${edge.url}/`);
    await waitText(zh.page.getByTestId("login-submit"), "登录");
    assert.equal(await zh.page.getByTestId("lang-switch").inputValue(), "zh-CN");

    assertClean(staff, zh);
    await staff.context.close();
    await zh.context.close();
  } finally {
    await edge.cleanup();
  }
});
