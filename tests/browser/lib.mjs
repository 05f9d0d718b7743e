// What the browser tests share: launching Debian's Chromium headless through Playwright's
// library with a fresh profile, collecting the page's errors, and signing in.

import { chromium } from "playwright-core";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** The flags CI runs Chromium with: no sandbox (root in a container), no GPU, no network noise. */
export const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

/** The settings the Rust harness passes in the environment. */
export function settings() {
  const env = process.env;
  const need = (k) => {
    if (!env[k]) throw new Error(`${k} is not set; run these tests through cargo test --test dashboard_browser`);
    return env[k];
  };
  return {
    url: need("LIVETAP_URL"),
    token: need("LIVETAP_TOKEN"),
    chromium: env.LIVETAP_CHROMIUM || "/usr/bin/chromium",
    artifacts: env.LIVETAP_ARTIFACTS || join(tmpdir(), "livetap-browser-artifacts"),
    docsScreenshot: env.LIVETAP_DOCS_SCREENSHOT || "",
    user: env.LIVETAP_USER || "",
    password: env.LIVETAP_PASSWORD || "",
  };
}

/** A headless Chromium with a new, empty profile; `close()` also removes the profile. */
export async function launch(executablePath, viewport = { width: 1440, height: 900 }) {
  const profile = await mkdtemp(join(tmpdir(), "livetap-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: FLAGS,
    viewport,
    deviceScaleFactor: 1,
  });
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Opens a page that records its uncaught errors and console errors (a CSP violation is one),
 * so a test can assert there were none.
 */
export async function openPage(context) {
  const page = context.pages()[0] || (await context.newPage());
  // Keeps a handle on every EventSource the page opens, so a test can make one fail the way
  // a dropped connection does. Injected by the browser, not by the page, so the page itself
  // carries no test hooks (and its content security policy does not apply to it).
  await page.addInitScript(() => {
    const Native = window.EventSource;
    window.__eventSources = [];
    window.EventSource = class extends Native {
      constructor(...args) {
        super(...args);
        window.__eventSources.push(this);
      }
    };
  });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    // The browser logs every 4xx answer; a 400 from the query check is the page asking the
    // server whether a filter parses, and the answer is the expected "no".
    const from = m.location().url || "";
    if (from.includes("/api/livetap/query-check") && /status of 400/.test(m.text())) return;
    problems.push(`console error: ${m.text()} (${from})`);
  });
  return { page, problems };
}

/** Signs in with an API key and waits for the traces stream to be live. */
export async function signIn(page, url, token) {
  await page.goto(url);
  await page.waitForSelector("#signin:not([hidden])");
  await page.fill("#key", token);
  await page.click("#signin-button");
  await page.waitForSelector('#conn[data-state="live"]', { timeout: 15000 });
}

/** The `data-type` of every row on screen, top to bottom. */
export function rowTypes(page) {
  return page.$$eval("#rows .row", (rows) => rows.map((r) => r.dataset.type));
}
