// Browser tests of the customer chat (web/chat) against the real aisle-edge binary, with the
// staff side played by the staff console (web/console) on a tablet, through the test ids of
// web/README.md. Every test ends with no request off the page's origin and no page error.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import {
  startEdge, launchBrowser, newPage, shot, EDGE_ADMIN_PASSWORD, TABLET_LANDSCAPE, PHONE,
} from "./lib/harness.mjs";
import { png } from "./lib/png.mjs";

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** Retries `fn` (an async assertion) until it passes or `timeout` ms have gone by. */
async function eventually(fn, timeout = 10_000, interval = 100) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try { return await fn(); } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, interval));
    }
  }
}

async function waitText(locator, expected, timeout = 10_000) {
  await eventually(async () => {
    const text = ((await locator.textContent()) ?? "").trim();
    assert.ok(text.includes(expected), `expected "${expected}" in "${text}"`);
  }, timeout);
}

function assertClean(...pages) {
  for (const p of pages) {
    assert.deepEqual(p.offOrigin, [], "no request may leave the origin");
    assert.deepEqual(p.errors, [], "no page error");
  }
}

// ---- the customer's phone ----

/** A phone (its own browser context: another device) on the chat page, not yet started. */
async function openPhone(edge, path = "/chat", { origins = [edge.url], locale = "en-US" } = {}) {
  const p = await newPage(browser, { origins, viewport: PHONE, mobile: true, locale });
  await p.page.goto(`${edge.url}${path}`);
  return p;
}

async function waitOnline(page, timeout = 10_000) {
  await eventually(async () => assert.equal(await page.getByTestId("connection-state").getAttribute("data-state"), "online"), timeout);
}

/** A customer phone that started a chat. */
async function startCustomer(edge, name = "Lin") {
  const p = await openPhone(edge);
  await p.page.getByTestId("chat-name").fill(name);
  await p.page.getByTestId("chat-start").click();
  await waitOnline(p.page);
  return p;
}

/** Types and sends a message from the chat page; waits for the ack (the message gets its seq). */
async function customerSays(page, text) {
  await page.getByTestId("composer-input").fill(text);
  await page.getByTestId("composer-send").click();
  return await seqOf(page.locator('[data-testid="message"][data-sender-kind="customer"][data-seq]', { hasText: text }));
}

async function seqOf(locator) {
  await locator.waitFor();
  return Number(await locator.getAttribute("data-seq"));
}

/** Every message on a page: [seq, sender kind, text]. */
async function transcript(page) {
  return await page.locator('[data-testid="message"]').evaluateAll((els) => els.map((e) => [
    e.dataset.seq ? Number(e.dataset.seq) : null, e.dataset.senderKind,
    (e.querySelector('[data-testid="message-body"]')?.textContent ?? "").trim(),
  ]));
}

// ---- the staff member's tablet (the console) ----

/** The staff console on a tablet, logged in as the store admin. */
async function openConsole(edge) {
  const p = await newPage(browser, { origins: [edge.url], viewport: TABLET_LANDSCAPE });
  await p.page.goto(`${edge.url}/`);
  await p.page.getByTestId("login-username").fill("admin");
  await p.page.getByTestId("login-password").fill(EDGE_ADMIN_PASSWORD);
  await p.page.getByTestId("login-submit").click();
  await p.page.getByTestId("tab-queue").waitFor();
  return p;
}

/** Opens the (only) conversation in "mine": routing gives a new chat to the one online staff member. */
async function openConversation(page) {
  await page.getByTestId("tab-mine").click();
  await page.getByTestId("conv-item").first().click();
}

async function staffSays(page, text) {
  await page.getByTestId("composer-input").fill(text);
  await page.getByTestId("composer-send").click();
  await page.locator('[data-testid="message"][data-sender-kind="staff"][data-seq]', { hasText: text }).waitFor();
}

// ---- tests ----

test("a customer on a phone and a staff member on a tablet chat: both ways, typing, read, who answers", async () => {
  const edge = await startEdge();
  try {
    const staff = await openConsole(edge);
    const customer = await startCustomer(edge, "Lin");
    const cp = customer.page;
    const sp = staff.page;
    await waitText(cp.getByTestId("composer-send"), "Send");

    assert.equal(await customerSays(cp, "Hi! Do you have the blue trail shoe in size 40?"), 1);
    await openConversation(sp);
    await waitText(sp.getByTestId("message-body").first(), "blue trail shoe");
    // Routing gave the chat to the admin: the customer sees who answers.
    await waitText(cp.locator(".who-agent"), "Store admin is helping you");

    // Typing, customer → staff: shown in the console.
    await cp.getByTestId("composer-input").pressSequentially("Also", { delay: 30 });
    await waitText(sp.getByTestId("typing-indicator"), "Lin is typing");
    await cp.getByTestId("composer-input").fill("");
    // Typing, staff → customer.
    await sp.getByTestId("composer-input").pressSequentially("Yes", { delay: 30 });
    await cp.getByTestId("typing-indicator").waitFor({ state: "visible" });
    await waitText(cp.getByTestId("typing-indicator"), "Store admin is typing");
    await sp.getByTestId("composer-input").fill("");

    await staffSays(sp, "Yes, we have it in blue. Size 40 is on the shelf by the window.");
    const reply = cp.locator('[data-testid="message"][data-sender-kind="staff"]', { hasText: "by the window" });
    await reply.waitFor();
    await waitText(reply, "Store admin");
    // The console shows the chat, so the staff has read the customer's message.
    await cp.getByTestId("read-receipt").waitFor();
    await waitText(cp.getByTestId("read-receipt"), "Read");
    await cp.getByTestId("typing-indicator").waitFor({ state: "hidden" });
    // The page is visible, so the customer has read the reply: the console shows it.
    await sp.locator('[data-testid="message"][data-seq="2"] [data-testid="read-receipt"]').waitFor();

    assert.equal(await customerSays(cp, "Great, can you hold a pair until 6 pm?"), 3);
    await staffSays(sp, "Of course — it is waiting for you at the till.");
    await cp.locator('[data-testid="message"][data-seq="4"]').waitFor();
    assert.equal(await customerSays(cp, "Thank you! 谢谢"), 5);
    await sp.locator('[data-testid="message"][data-seq="5"]').waitFor();

    const seen = await transcript(cp);
    assert.deepEqual(seen.map(([seq, kind]) => [seq, kind]),
      [[1, "customer"], [2, "staff"], [3, "customer"], [4, "staff"], [5, "customer"]]);
    // The newest message is in view (autoscroll) and the read mark follows the staff's cursor.
    assert.ok(await cp.locator('[data-testid="message"][data-seq="5"]').isVisible());
    await eventually(async () => assert.equal(
      await cp.locator('[data-testid="message"][data-seq="5"] [data-testid="read-receipt"]').count(), 1));
    assert.equal(await cp.getByTestId("read-receipt").count(), 1);
    await shot(cp, "chat-phone");
    await shot(sp, "chat-staff");

    // A reload shows the same history at once and resumes after it: nothing twice.
    await cp.reload();
    await waitOnline(cp);
    await cp.locator('[data-testid="message"][data-seq="5"]').waitFor();
    await staffSays(sp, "See you soon!");
    await cp.locator('[data-testid="message"][data-seq="6"]').waitFor();
    assert.deepEqual((await transcript(cp)).map(([seq]) => seq), [1, 2, 3, 4, 5, 6]);

    // Closed by the staff: the customer is told, and writing reopens it.
    await sp.getByTestId("action-resolve").click();
    await waitText(cp.locator("#closed-banner"), "This chat was closed; write to reopen.");
    await waitText(cp.locator(".messages .event").last(), "This chat was closed");
    assert.equal(await customerSays(cp, "One more question"), 7);
    await cp.locator("#closed-banner").waitFor({ state: "hidden" });

    // Language switch: every text, live.
    await cp.getByTestId("lang-switch").selectOption("zh-CN");
    await waitText(cp.getByTestId("composer-send"), "发送");
    await waitText(cp.getByTestId("connection-state"), "在线");
    assert.equal(await cp.getByTestId("composer-input").getAttribute("placeholder"), "输入消息…");
    await shot(cp, "chat-phone-zh");

    assertClean(customer, staff);
    await customer.context.close();
    await staff.context.close();
  } finally {
    await edge.cleanup();
  }
});

test("hand-off: a code and QR on one phone; the link and the typed code open the whole chat on others", async () => {
  // Two messages per resume at most: the new device must follow `resumed.more` for the history.
  const edge = await startEdge({ env: { AISLE_LIMITS__MAX_HISTORY_FRAMES: "2" } });
  try {
    const staff = await openConsole(edge);
    const first = await startCustomer(edge, "Chen");
    const fp = first.page;
    const sp = staff.page;
    await customerSays(fp, "I'm looking for a rain jacket, size M.");
    await openConversation(sp);
    await staffSays(sp, "We have two models in M, in green and navy.");
    await fp.locator('[data-testid="message"][data-seq="2"]').waitFor();
    await customerSays(fp, "Navy please. I'll continue on my other phone.");

    await fp.getByTestId("handoff-open").click();
    const codeEl = fp.getByTestId("handoff-code");
    await eventually(async () => assert.match(((await codeEl.textContent()) ?? "").trim(), /^[0-9A-Z]{8}$/));
    const code = ((await codeEl.textContent()) ?? "").trim();
    const qr = fp.getByTestId("handoff-qr");
    assert.equal(await qr.getAttribute("src"), `/api/qr.svg?text=${encodeURIComponent(`${edge.url}/h/${code}`)}`);
    await eventually(async () => assert.ok(await qr.evaluate((img) => img.complete && img.naturalWidth > 0)));
    await waitText(fp.locator(".handoff-expiry"), "Valid until");
    await shot(fp, "chat-handoff");
    await fp.locator(".handoff-close").click();

    // The link (what the QR code holds) on another phone: redeemed at once, the whole history.
    const second = await openPhone(edge, `/h/${code}`);
    const p2 = second.page;
    await p2.locator('[data-testid="message"][data-seq="3"]').waitFor();
    await waitOnline(p2);
    assert.equal(new URL(p2.url()).pathname, "/chat", "the used link leaves the address bar");
    assert.deepEqual(await transcript(p2), await transcript(fp));
    // Written on the second phone: on the first as the customer's own, and at the staff.
    assert.equal(await customerSays(p2, "Hello from my other phone"), 4);
    await fp.locator('[data-testid="message"][data-seq="4"][data-sender-kind="customer"]', { hasText: "other phone" }).waitFor();
    await sp.locator('[data-testid="message"][data-seq="4"]', { hasText: "other phone" }).waitFor();
    // And the staff's answer reaches both.
    await staffSays(sp, "Navy M is reserved for you.");
    await fp.locator('[data-testid="message"][data-seq="5"]').waitFor();
    await p2.locator('[data-testid="message"][data-seq="5"]').waitFor();

    // The same link again: used.
    const third = await openPhone(edge, `/h/${code}`);
    await waitText(third.page.locator("#code-error"), "already used");
    assert.equal(await third.page.locator('[data-testid="message"]').count(), 0);

    // A typed code, on a phone that opens the chat page itself.
    await fp.getByTestId("handoff-open").click();
    await fp.locator(".handoff-new").click();
    await eventually(async () => {
      const next = ((await codeEl.textContent()) ?? "").trim();
      assert.match(next, /^[0-9A-Z]{8}$/);
      assert.notEqual(next, code);
    });
    const typed = ((await codeEl.textContent()) ?? "").trim();
    const fourth = await openPhone(edge);
    const p4 = fourth.page;
    await p4.getByTestId("handoff-input").fill("ZZZZ-ZZZZ");
    await p4.getByTestId("handoff-submit").click();
    await waitText(p4.locator("#code-error"), "does not exist");
    await p4.getByTestId("handoff-input").fill(typed.toLowerCase());
    await p4.getByTestId("handoff-submit").click();
    await p4.locator('[data-testid="message"][data-seq="5"]').waitFor();
    assert.deepEqual((await transcript(p4)).map(([seq]) => seq), [1, 2, 3, 4, 5]);
    await waitText(p4.locator('[data-testid="message"][data-seq="4"]'), "Hello from my other phone");

    // From inside a chat, the hand-off sheet leads to the code form and back.
    await p2.getByTestId("handoff-open").click();
    await p2.locator("#have-code").click();
    await p2.getByTestId("handoff-input").waitFor({ state: "visible" });
    assert.equal(await p2.getByTestId("chat-start").isVisible(), false);
    await p2.locator("#code-back").click();
    await p2.getByTestId("composer-input").waitFor({ state: "visible" });

    assertClean(first, second, third, fourth, staff);
    for (const p of [first, second, third, fourth, staff]) await p.context.close();
  } finally {
    await edge.cleanup();
  }
});

test("hand-off: an expired code is explained, in the browser's language", async () => {
  const edge = await startEdge({ env: { AISLE_HANDOFF_TTL_SECS: "1" } });
  try {
    const first = await startCustomer(edge, "Ma");
    await customerSays(first.page, "Hello");
    await first.page.getByTestId("handoff-open").click();
    const codeEl = first.page.getByTestId("handoff-code");
    await eventually(async () => assert.match(((await codeEl.textContent()) ?? "").trim(), /^[0-9A-Z]{8}$/));
    const code = ((await codeEl.textContent()) ?? "").trim();
    await new Promise((r) => setTimeout(r, 1_500));
    // A phone set to Chinese: the page follows the browser's language.
    const other = await openPhone(edge, `/h/${code}`, { locale: "zh-CN" });
    await waitText(other.page.locator("#code-error"), "此代码已过期");
    await waitText(other.page.getByTestId("chat-start"), "开始聊天");
    assertClean(first, other);
    await first.context.close();
    await other.context.close();
  } finally {
    await edge.cleanup();
  }
});

test("a photo from the customer is shown on the phone and at the staff; refused files are explained", async () => {
  const edge = await startEdge();
  try {
    const staff = await openConsole(edge);
    const customer = await startCustomer(edge, "Sun");
    const cp = customer.page;
    const sp = staff.page;
    await customerSays(cp, "Is this lamp in stock?");
    await openConversation(sp);

    await cp.getByTestId("attach-input").setInputFiles({ name: "lamp.png", mimeType: "image/png", buffer: png(120, 80, [230, 140, 40]) });
    const mine = cp.locator('[data-testid="message"][data-seq="2"] [data-testid="message-image"]');
    await mine.waitFor();
    await eventually(async () => assert.ok(await mine.evaluate((img) => img.complete && img.naturalWidth === 120)));
    assert.match(await mine.getAttribute("src"), /^\/api\/attachments\//);
    const theirs = sp.locator('[data-testid="message"][data-seq="2"] [data-testid="message-image"]');
    await theirs.waitFor();
    await eventually(async () => assert.ok(await theirs.evaluate((img) => img.complete && img.naturalWidth > 0)));

    // Not an image: refused by the server (415), said in words, nothing sent.
    await cp.getByTestId("attach-input").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("not a picture") });
    await waitText(cp.locator('[data-testid="message"][data-status="failed"]'), "This file type cannot be sent");
    // Too large (413).
    const big = Buffer.concat([png(4, 4, [0, 0, 0]), Buffer.alloc(5 * 1024 * 1024 + 16)]);
    await cp.getByTestId("attach-input").setInputFiles({ name: "huge.png", mimeType: "image/png", buffer: big });
    await waitText(cp.locator('[data-testid="message"][data-status="failed"]').last(), "too large");
    await shot(cp, "chat-image");
    // A refused file can be removed.
    await cp.locator('[data-testid="message"][data-status="failed"] button', { hasText: "Remove" }).first().click();
    await eventually(async () => assert.equal(await cp.locator('[data-testid="message"][data-status="failed"]').count(), 1));

    // The staff got the photo and no trace of the refused files.
    assert.equal(await sp.locator('[data-testid="message"]').count(), 2);
    assertClean(customer, staff);
    await customer.context.close();
    await staff.context.close();
  } finally {
    await edge.cleanup();
  }
});

test("reconnect: what the staff wrote while the phone was offline arrives once, in order; the phone's own message is sent once", async () => {
  const edge = await startEdge();
  try {
    const staff = await openConsole(edge);
    const customer = await startCustomer(edge, "Zhao");
    const cp = customer.page;
    const sp = staff.page;
    await customerSays(cp, "Do you deliver?");
    await openConversation(sp);
    await staffSays(sp, "Yes, within the city.");
    await cp.locator('[data-testid="message"][data-seq="2"]').waitFor();

    await customer.context.setOffline(true);
    await eventually(async () => assert.equal(await cp.getByTestId("connection-state").getAttribute("data-state"), "offline"));
    // Written while offline: shown at once as sending.
    await cp.getByTestId("composer-input").fill("How much does it cost?");
    await cp.getByTestId("composer-send").click();
    await cp.locator('[data-testid="message"][data-status="pending"]', { hasText: "How much" }).waitFor();
    await staffSays(sp, "Delivery is free over 200 yuan.");
    await staffSays(sp, "Otherwise it is 15 yuan.");
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await cp.locator('[data-testid="message"][data-sender-kind="staff"]').count(), 1, "nothing arrives while offline");

    await customer.context.setOffline(false);
    await waitOnline(cp, 20_000);
    await cp.locator('[data-testid="message"][data-seq="5"]').waitFor();
    await sp.locator('[data-testid="message"]', { hasText: "How much" }).waitFor();
    const seen = await transcript(cp);
    assert.deepEqual(seen.map(([seq]) => seq), [1, 2, 3, 4, 5]);
    assert.deepEqual(seen.filter(([, kind]) => kind === "staff").map(([, , text]) => text),
      ["Yes, within the city.", "Delivery is free over 200 yuan.", "Otherwise it is 15 yuan."]);
    assert.equal(seen.filter(([, , text]) => text === "How much does it cost?").length, 1);

    // The appliance restarts while a message is on its way: resent with the same id, stored once.
    await edge.stop();
    await eventually(async () => assert.equal(await cp.getByTestId("connection-state").getAttribute("data-state") === "online", false));
    await cp.getByTestId("composer-input").fill("I'll come by tomorrow.");
    await cp.getByTestId("composer-send").click();
    await edge.start();
    await waitOnline(cp, 30_000);
    await cp.locator('[data-testid="message"][data-seq="6"]', { hasText: "tomorrow" }).waitFor({ timeout: 15_000 });
    await sp.locator('[data-testid="message"][data-seq="6"]', { hasText: "tomorrow" }).waitFor({ timeout: 15_000 });
    assert.deepEqual((await transcript(cp)).map(([seq]) => seq), [1, 2, 3, 4, 5, 6]);
    assert.equal(await sp.locator('[data-testid="message"]', { hasText: "tomorrow" }).count(), 1);

    assertClean(customer, staff);
    await customer.context.close();
    await staff.context.close();
  } finally {
    await edge.cleanup();
  }
});

test("embed.js on a store's own site (another origin): the button opens the chat and a message goes through", async () => {
  const edge = await startEdge();
  const site = createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end(`<!doctype html><html><head><meta charset="utf-8"><title>Riverside Shoes</title>
<link rel="icon" href="data:,"></head><body><h1>Riverside Shoes</h1><p>Our shop on the web.</p>
<script src="${edge.url}/chat/embed.js" async></script></body></html>`);
  });
  await new Promise((ok) => site.listen(0, "127.0.0.1", ok));
  const siteUrl = `http://127.0.0.1:${site.address().port}`;
  try {
    const staff = await openConsole(edge);
    const visitor = await newPage(browser, { origins: [edge.url, siteUrl], viewport: TABLET_LANDSCAPE });
    const { page } = visitor;
    await page.goto(`${siteUrl}/`);
    await page.getByTestId("embed-open").click();
    const frame = page.frameLocator('[data-testid="embed-frame"]');
    await frame.getByTestId("chat-name").fill("Guo");
    await frame.getByTestId("chat-start").click();
    await eventually(async () => assert.equal(await frame.getByTestId("connection-state").getAttribute("data-state"), "online"));
    await frame.getByTestId("composer-input").fill("Hello from your web site!");
    await frame.getByTestId("composer-send").click();
    await frame.locator('[data-testid="message"][data-seq="1"]', { hasText: "web site" }).waitFor();
    await openConversation(staff.page);
    await staff.page.locator('[data-testid="message"]', { hasText: "web site" }).waitFor();
    await staffSays(staff.page, "Welcome! How can we help?");
    await frame.locator('[data-testid="message"][data-seq="2"]', { hasText: "Welcome" }).waitFor();
    await shot(page, "chat-embed");

    // Closed and opened again: the same chat.
    await page.getByTestId("embed-close").click();
    await page.getByTestId("embed-frame").waitFor({ state: "hidden" });
    await page.getByTestId("embed-open").click();
    await frame.locator('[data-testid="message"][data-seq="2"]').waitFor();

    // On a phone the chat fills the screen.
    await page.setViewportSize(PHONE);
    await eventually(async () => {
      const box = await page.getByTestId("embed-frame").boundingBox();
      assert.equal(Math.round(box.width), PHONE.width);
      assert.ok(box.height > PHONE.height - 60, `frame height ${box.height}`);
    });
    await shot(page, "chat-embed-phone");

    assertClean(visitor, staff);
    await visitor.context.close();
    await staff.context.close();
  } finally {
    site.close();
    await edge.cleanup();
  }
});

test("kiosk: the chat is forgotten on the shared screen after a few quiet minutes, and by Leave", async () => {
  const edge = await startEdge();
  try {
    const kiosk = await newPage(browser, { origins: [edge.url], viewport: { width: 1080, height: 1920 } });
    const { page } = kiosk;
    await page.clock.install();
    await page.goto(`${edge.url}/chat?kiosk`);
    await page.getByTestId("chat-start").click();
    await waitOnline(page);
    await customerSays(page, "Where are the fitting rooms?");
    await shot(page, "chat-kiosk");
    await page.clock.runFor(4 * 60_000);
    await page.getByTestId("chat-start").waitFor();
    assert.equal(await page.locator('[data-testid="message"]').count(), 0);
    await page.reload();
    await page.getByTestId("chat-start").waitFor();

    // The next shopper starts afresh; "Leave" clears at once.
    await page.getByTestId("chat-start").click();
    await waitOnline(page);
    assert.equal(await customerSays(page, "Do you sell gift cards?"), 1);
    await page.locator("#leave").click();
    await page.getByTestId("chat-start").waitFor();
    assert.equal(await page.locator('[data-testid="message"]').count(), 0);

    assertClean(kiosk);
    await kiosk.context.close();
  } finally {
    await edge.cleanup();
  }
});
