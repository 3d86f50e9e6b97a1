// What every browser test needs: the real `aisle-edge` / `aisle-hub` binaries on free loopback
// ports with fresh data directories, Debian's Chromium driven by playwright-core, a guard that
// records every request leaving the page's own origin, and screenshots in `artifacts/`.
//
// Binaries: `$TEST_BIN_DIR` (default `<repo>/target/release`; ci/test builds them first).
// Pages: the copy embedded in the binaries, or the `web/` folder at `$TEST_WEB_DIR` when set
// (front-end work without a rebuild). `AISLE_*` variables are the servers' configuration, hence
// other names here.

import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../../..");
export const ARTIFACTS = resolve(here, "../artifacts");
const BIN_DIR = process.env.TEST_BIN_DIR || join(REPO, "target/release");
const CHROMIUM = process.env.TEST_CHROMIUM || "/usr/bin/chromium";
const WEB_DIR = process.env.TEST_WEB_DIR;
const READY_TIMEOUT_MS = 20_000;

export const EDGE_ADMIN_PASSWORD = "store-admin-pass";
export const HUB_ADMIN_PASSWORD = "hq-admin-pass";

/** A port nobody listens on right now. */
async function freePort() {
  return await new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

async function waitHealthy(url, child, log) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`process exited (${child.exitCode}):\n${log()}`);
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} not healthy after ${READY_TIMEOUT_MS} ms:\n${log()}`);
}

/** One server process that can be stopped and started again on the same port and data. */
class Server {
  constructor(binary, args, env) {
    this.binary = binary;
    this.args = args;
    this.env = env;
    this.output = "";
  }
  async start() {
    this.child = spawn(join(BIN_DIR, this.binary), this.args, {
      env: { ...process.env, ...this.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (chunk) => { this.output = (this.output + chunk).slice(-20_000); };
    this.child.stdout.on("data", keep);
    this.child.stderr.on("data", keep);
    await waitHealthy(this.url, this.child, () => this.output);
    return this;
  }
  /** SIGTERM and wait for the exit (the server drains). */
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGTERM");
    await exited;
  }
}

/** `aisle-hub` with an HQ admin (`admin` / HUB_ADMIN_PASSWORD) on a fresh data directory. */
export async function startHub({ region = "default" } = {}) {
  const port = await freePort();
  const data = mkdtempSync(join(tmpdir(), "aisle-hub-"));
  const hub = new Server("aisle-hub", ["--listen", `127.0.0.1:${port}`, "--data", data, "--region", region], {
    AISLE_HUB_FIRST_ADMIN_PASSWORD: HUB_ADMIN_PASSWORD,
    ...(WEB_DIR ? { AISLE_HUB_WEB_DIR: WEB_DIR } : {}),
  });
  hub.url = `http://127.0.0.1:${port}`;
  hub.data = data;
  await hub.start();
  /** An HQ session token for `admin`. */
  hub.login = async () => (await json(`${hub.url}/api/login`, { username: "admin", password: HUB_ADMIN_PASSWORD })).token;
  /** Registers a store; returns its one-time enrollment token. */
  hub.createStore = async (storeId, name = storeId) => {
    const token = await hub.login();
    return (await json(`${hub.url}/api/stores`, { store_id: storeId, name }, token)).enrollment_token;
  };
  hub.cleanup = async () => { await hub.stop(); rmSync(data, { recursive: true, force: true }); };
  return hub;
}

/**
 * `aisle-edge` with the store admin `admin` / EDGE_ADMIN_PASSWORD on a fresh data directory;
 * with `hub`, the store is registered there and enrolls at start. With `config` (TOML text),
 * the edge runs with `--config` on a file of its own, in a directory of its own (the edge
 * watches the file's directory); `edge.writeConfig(text)` saves a new version of it.
 */
export async function startEdge({ storeId = "store-1", hub, env = {}, config } = {}) {
  const port = await freePort();
  const data = mkdtempSync(join(tmpdir(), "aisle-edge-"));
  const args = ["--listen", `127.0.0.1:${port}`, "--data", data];
  if (hub) args.push("--hub", hub.url, "--enroll", await hub.createStore(storeId));
  let configDir = null;
  let configPath = null;
  if (config !== undefined) {
    configDir = mkdtempSync(join(tmpdir(), "aisle-edge-config-"));
    configPath = join(configDir, "aisle-edge.toml");
    writeFileSync(configPath, config);
    args.push("--config", configPath);
  }
  const edge = new Server("aisle-edge", args, {
    AISLE_FIRST_ADMIN_PASSWORD: EDGE_ADMIN_PASSWORD,
    AISLE_STORE_ID: storeId,
    AISLE_LIMITS__SYNC_RETRY_MIN_MS: "100",
    AISLE_LIMITS__SYNC_RETRY_MAX_MS: "1000",
    ...(WEB_DIR ? { AISLE_WEB_DIR: WEB_DIR } : {}),
    ...env,
  });
  edge.url = `http://127.0.0.1:${port}`;
  edge.data = data;
  await edge.start();
  /** A staff session token (`admin` by default). */
  edge.login = async (username = "admin", password = EDGE_ADMIN_PASSWORD) =>
    (await json(`${edge.url}/api/login`, { username, password })).token;
  /** Creates a staff account through the admin API; returns it. */
  edge.createStaff = async ({ username, name, password = "staff-pass-1", role = "staff", capacity = 8 }) => {
    const token = await edge.login();
    return (await json(`${edge.url}/api/staff`, { username, name, password, role, capacity }, token)).staff;
  };
  edge.configPath = configPath;
  /** Saves `text` as the configuration file the way editors do: a new file renamed over it. */
  edge.writeConfig = (text) => {
    if (!configPath) throw new Error("startEdge({ config }) runs the edge with a configuration file");
    const next = join(configDir, ".aisle-edge.toml.new");
    writeFileSync(next, text);
    renameSync(next, configPath);
  };
  edge.cleanup = async () => {
    await edge.stop();
    rmSync(data, { recursive: true, force: true });
    if (configDir) rmSync(configDir, { recursive: true, force: true });
  };
  return edge;
}

async function json(url, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST ${url}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/**
 * Debian's Chromium, headless, with nothing phoning home. Playwright gives every launch a fresh,
 * empty profile directory of its own (and refuses `--user-data-dir`).
 */
export async function launchBrowser() {
  return await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

export const TABLET_PORTRAIT = { width: 800, height: 1280 };
export const TABLET_LANDSCAPE = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/**
 * A new browser context (its own cookies and storage: another device) with one page.
 * `offOrigin` collects every request whose origin is not one of `origins` (the page's own
 * server); tests end with `assert.deepEqual(offOrigin, [])`.
 */
export async function newPage(browser, { origins, viewport = TABLET_LANDSCAPE, locale = "en-US", mobile = false } = {}) {
  const context = await browser.newContext({
    viewport,
    locale,
    isMobile: mobile,
    hasTouch: true,
    deviceScaleFactor: 1,
  });
  const allowed = new Set(origins.map((o) => new URL(o).origin));
  const offOrigin = [];
  context.on("request", (req) => {
    const url = req.url();
    if (url.startsWith("data:") || url.startsWith("blob:") || url === "about:blank") return;
    const u = new URL(url);
    const origin = `${u.protocol === "ws:" ? "http:" : u.protocol === "wss:" ? "https:" : u.protocol}//${u.host}`;
    if (!allowed.has(origin)) offOrigin.push(url);
  });
  // WebSockets are not `request` events: watch them per page.
  const watch = (page) => page.on("websocket", (ws) => {
    const u = new URL(ws.url());
    if (!allowed.has(`http://${u.host}`)) offOrigin.push(ws.url());
  });
  context.on("page", watch);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  return { context, page, offOrigin, errors };
}

/**
 * Saves `artifacts/<name>.png` (every test run; CI keeps the folder) and returns its path.
 * With `UPDATE_SCREENSHOTS=1` a screenshot that the README shows (`docs/screenshots/<name>.png`
 * exists) is refreshed too; otherwise tests never touch tracked files.
 */
export async function shot(page, name, { fullPage = false } = {}) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage });
  const readme = join(REPO, "docs/screenshots", `${name}.png`);
  if (process.env.UPDATE_SCREENSHOTS === "1" && existsSync(readme)) copyFileSync(path, readme);
  return path;
}
