// The dashboard in a real browser, against a real livetap with its demo generator: sign in,
// events arrive, the server's parse error shows inline, a filter leaves only matching rows and
// is kept in the page URL (never the token), a reload keeps it, follow a session, expand a row,
// pause and resume, reconnect and resume, charts draw, a firing alert's banner and list, and a
// screenshot. The steps share one
// page and run in order. Started by `cargo test --test dashboard_browser`, which passes the
// hub's URL and token in the environment.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, copyFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { settings, launch, openPage, signIn, rowTypes } from "./lib.mjs";

const cfg = settings();
let browser;
let page;
let problems;

/** Waits until `pred` (run in the page) is true, failing with `what` after `ms`. */
async function until(what, pred, arg, ms = 15000) {
  try {
    await page.waitForFunction(pred, arg, { timeout: ms, polling: 100 });
  } catch (e) {
    throw new Error(`timed out waiting for ${what}: ${e.message.split("\n")[0]}`);
  }
}

/** Types a filter, applies it with Enter, and waits until the list shows the new stream. */
async function applyFilter(text) {
  const stream = await page.getAttribute("#rows", "data-stream");
  await page.fill("#filter", text);
  await page.press("#filter", "Enter");
  await until("the new stream", (s) => document.querySelector("#rows").dataset.stream !== s, stream);
}

before(async () => {
  browser = await launch(cfg.chromium);
  ({ page, problems } = await openPage(browser.context));
});

after(async () => {
  if (browser) await browser.close();
});

test("signs in with an API key and goes live", async () => {
  await signIn(page, cfg.url, cfg.token);
  assert.ok(!page.url().includes(cfg.token), "the token is not in the URL bar");
  assert.equal(await page.isVisible("#main"), true);
});

test("demo events arrive as rows", async () => {
  await until("20 rows", () => document.querySelectorAll("#rows .row").length >= 20);
  const first = await page.$eval("#rows .row", (r) => ({
    time: r.querySelector(".c-time").textContent,
    level: r.querySelector(".c-level").textContent,
    type: r.querySelector(".c-type").textContent,
  }));
  assert.match(first.time, /^\d\d:\d\d:\d\d$/);
  assert.match(first.level, /^(trace|debug|info|warn|error)$/);
  assert.match(first.type, /^[a-z0-9-]+\.[a-z0-9-]+$/);
});

test("a bad filter shows the server's parse error inline and keeps the stream", async () => {
  await page.fill("#filter", "remote-ip=10.0.0.0/99");
  await until("the error state", () => document.querySelector("#filter-form").dataset.state === "error");
  const status = await page.textContent("#filter-status");
  assert.match(status, /invalid `q` at byte \d+: expected a prefix length of at most 32/);
  assert.ok(await page.isVisible("#filter-status mark"), "the position is marked in the text");
  // Enter does not apply an invalid filter: the stream goes on unfiltered.
  await page.press("#filter", "Enter");
  assert.equal(await page.getAttribute("#conn", "data-state"), "live");
  assert.ok(!page.url().includes("q="), "an invalid filter does not reach the URL");
});

test("a filter leaves only matching rows and is kept in the page URL", async () => {
  await page.uncheck("#follow-spans");
  await applyFilter("event=smtp.* level>=info");
  await until(
    "10 rows, all smtp.*",
    () => {
      const rows = [...document.querySelectorAll("#rows .row")];
      return rows.length >= 10 && rows.every((r) => r.dataset.type.startsWith("smtp."));
    },
    null,
    20000,
  );
  const types = await rowTypes(page);
  assert.ok(types.every((t) => t.startsWith("smtp.")), `only smtp rows: ${types.join(" ")}`);
  const levels = await page.$$eval("#rows .row .c-level", (l) => l.map((x) => x.textContent));
  assert.ok(levels.every((l) => ["info", "warn", "error"].includes(l)), `levels ${levels}`);
  const url = new URL(page.url());
  assert.equal(url.searchParams.get("q"), "event=smtp.* level>=info");
  assert.equal(url.searchParams.get("follow"), "false");
  assert.ok(!page.url().includes(cfg.token), "the token is not in the URL bar");
  assert.match(await page.textContent("#filter-status"), /matches/);
});

test("a reload keeps the filter from the URL and the sign-in of the tab", async () => {
  await page.reload();
  await page.waitForSelector('#conn[data-state="live"]', { timeout: 15000 });
  assert.equal(await page.inputValue("#filter"), "event=smtp.* level>=info");
  assert.equal(await page.isChecked("#follow-spans"), false);
  await until("smtp rows after the reload", () => {
    const rows = [...document.querySelectorAll("#rows .row")];
    return rows.length >= 5 && rows.every((r) => r.dataset.type.startsWith("smtp."));
  });
});

test("follow a session shows that session, from its start", async () => {
  await page.check("#follow-spans");
  await applyFilter("");
  // An EHLO is always inside an SMTP session, whose connection-start came just before it.
  await until("an smtp.ehlo row", () => document.querySelector('#rows .row[data-type="smtp.ehlo"]') !== null);
  // Rows move as events arrive; pausing holds them still for the click (as a person would).
  await page.click("#pause");
  const row = page.locator('#rows .row[data-type="smtp.ehlo"]').first();
  await row.hover();
  await row.locator(".follow").click();
  await until("the follow filter", () => /^span-id=\d+$/.test(document.querySelector("#filter").value));
  // The text is set at once, but the stream (and the "following" line) starts only after the
  // server has checked the filter: wait for that, not just for the text.
  await until("the following line", () => !document.querySelector("#following").hidden);
  assert.ok(await page.isVisible("#following"), "the page says it follows a session");
  const spanFilter = await page.inputValue("#filter");
  assert.equal(new URL(page.url()).searchParams.get("q"), spanFilter);
  await until("the session's rows, from its connection-start", () => {
    const rows = [...document.querySelectorAll("#rows .row")];
    return rows.length >= 2 && rows[rows.length - 1].dataset.type === "smtp.connection-start";
  });
  assert.equal(await page.textContent("#pause"), "Pause", "following shows the session live");
  const types = await rowTypes(page);
  assert.equal(types.filter((t) => t === "smtp.connection-start").length, 1, `one session: ${types}`);
  assert.equal(types.filter((t) => t === "smtp.ehlo").length, 1, `one session: ${types}`);
  const families = new Set(["smtp", "auth", "message-ingest", "queue"]);
  assert.ok(types.every((t) => families.has(t.split(".")[0])), `session events only: ${types}`);
});

test("a row expands to every key", async () => {
  const row = page.locator("#rows .row").last();
  await row.locator(".line").click();
  const keys = await row.locator(".detail dt").allTextContents();
  for (const k of ["text", "createdAt", "type", "level", "listenerId", "remoteIp"]) {
    assert.ok(keys.includes(k), `${k} in ${keys}`);
  }
  await row.locator(".line").click();
  assert.equal(await row.locator(".detail").count(), 0);
});

test("back to the filter, then pause buffers and resume shows", async () => {
  const stream = await page.getAttribute("#rows", "data-stream");
  await page.click("#unfollow");
  await until("the previous filter's stream", (s) => document.querySelector("#rows").dataset.stream !== s, stream);
  assert.equal(await page.inputValue("#filter"), "");
  assert.ok(!(await page.isVisible("#following")));
  await until("rows flowing", () => document.querySelectorAll("#rows .row").length >= 20);
  await page.click("#pause");
  const firstRow = await page.$eval("#rows .row", (r) => r.textContent);
  await page.waitForTimeout(400);
  const waiting1 = Number(await page.getAttribute("#counts", "data-waiting"));
  await until("more waiting", (w) => Number(document.querySelector("#counts").dataset.waiting) > w + 20, waiting1);
  assert.equal(await page.$eval("#rows .row", (r) => r.textContent), firstRow, "paused rows stay");
  assert.match(await page.textContent("#counts"), /waiting/);
  assert.equal(await page.textContent("#pause"), "Resume");
  await page.click("#pause");
  await until("nothing waiting", () => document.querySelector("#counts").dataset.waiting === "0");
  await until("new rows after resuming", (f) => document.querySelector("#rows .row").textContent !== f, firstRow);
});

/** Dispatches an event on the page's open traces EventSource: a message when `data` is given. */
async function onTraceSource(type, data) {
  await until("an open traces stream", () =>
    window.__eventSources.some((s) => new URL(s.url).pathname === "/api/livetap/live" && s.readyState === 1),
  );
  return page.evaluate(
    ([type, data]) => {
      // The dashboard reads livetap's own stream, which keeps every key (`/api/livetap/live`).
      const open = window.__eventSources.filter(
        (s) => new URL(s.url).pathname === "/api/livetap/live" && s.readyState === 1,
      );
      const es = open.pop();
      if (!es) throw new Error("no open traces stream");
      es.dispatchEvent(data === null ? new Event(type) : new MessageEvent(type, { data }));
      return es.url;
    },
    [type, data],
  );
}

test("a lagged frame shows a banner with the dropped count", async () => {
  await onTraceSource("lagged", '{"dropped":42}');
  await until("the lag banner", () => /42 events were dropped/.test(document.querySelector("#banner").textContent));
  assert.equal(await page.getAttribute("#banner", "data-kind"), "warn");
  await page.click("#banner-close");
});

test("a lost connection reconnects with a fresh token and resumes", async () => {
  // An error on an open EventSource is what a dropped connection looks like to the page.
  const before = await page.getAttribute("#counts", "data-received");
  const oldUrl = await onTraceSource("error", null);
  await until("the reconnect banner", () => {
    const b = document.querySelector("#banner");
    return !b.hidden && /Reconnected and resumed after event #\d+/.test(b.textContent);
  });
  assert.equal(await page.getAttribute("#conn", "data-state"), "live");
  const newUrl = await page.evaluate(() => window.__eventSources.at(-1).url);
  const oldToken = new URL(oldUrl).searchParams.get("token");
  const fresh = new URL(newUrl).searchParams;
  assert.ok(fresh.get("token") && fresh.get("token") !== oldToken, "a new token for the new connection");
  assert.match(fresh.get("last-event-id") || "", /^\d+$/, "resumes after the last id seen");
  await until("events after reconnecting", (n) => Number(document.querySelector("#counts").dataset.received) > Number(n) + 10, before);
  await page.click("#banner-close");
});

test("charts draw: events per second and a chosen metric", async () => {
  await until("the rates chart with points", () => Number(document.querySelector("#rates-chart").dataset.points) >= 3);
  assert.match(await page.getAttribute("#rates-chart", "data-series"), /all/);
  const sel = 'canvas[data-metric="livetap.events-per-second"]';
  await until("the metric chart with points", (s) => Number(document.querySelector(s)?.dataset.points) >= 2, sel);
  // Read the pixels too: the line must have been painted, not just counted.
  const painted = await page.$eval(sel, (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    // The line's colour (#4fc3f7): count pixels close to it.
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i + 2] > 200 && d[i] < 140) n++;
    return n;
  });
  assert.ok(painted > 20, `the line is painted (${painted} pixels)`);
  const hist = 'canvas[data-metric="delivery.attempt-time"]';
  await until("delivery percentiles", (s) => /p50/.test(document.querySelector(s)?.dataset.series || ""), hist, 30000);
  // Choosing another metric and interval restarts the metrics stream.
  await page.fill("#metrics-names", "smtp.connection-start");
  await page.selectOption("#metrics-interval", "1");
  await page.click("#metrics-form button");
  await until(
    "the counter as a rate",
    () => /per s/.test(document.querySelector('canvas[data-metric="smtp.connection-start"]')?.dataset.series || ""),
  );
  await page.fill("#metrics-names", "livetap.events-per-second, delivery.attempt-time, queue.count");
  await page.click("#metrics-form button");
  // The demo generator sets queue.count once a second: the gauge's chart draws a series.
  await until(
    "the queue.count gauge",
    () => Number(document.querySelector('canvas[data-metric="queue.count"]')?.dataset.points) >= 2,
    null,
    15000,
  );
});

test("a firing alert shows as a banner and in the alerts list", async () => {
  // The hub's config has an alert on the demo's SMTP connections, which keep coming.
  await until("the alert banner", () => {
    const b = document.querySelector("#alert-banner");
    return !b.hidden && /Alert firing: demo-connections/.test(b.textContent);
  });
  const item = page.locator('#alerts-list .alert-item[data-name="demo-connections"]');
  assert.equal(await item.getAttribute("data-state"), "firing");
  const text = await item.textContent();
  assert.match(text, /rate\(smtp\.connection-start, 5s\) > 0/);
  assert.match(text, /rate\(smtp\.connection-start, 5s\) = \d/);
  assert.match(text, /since \d{4}-\d\d-\d\dT/);
});

test("screenshot", async () => {
  // Let the charts fill a little and expand one row, for a picture that shows the features.
  await until("rates with history", () => Number(document.querySelector("#rates-chart").dataset.points) >= 12, null, 30000);
  await until(
    "metrics with history",
    () => Number(document.querySelector('canvas[data-metric="delivery.attempt-time"]')?.dataset.points) >= 8,
    null,
    30000,
  );
  await page.click("#pause");
  // Expand a row near the top that has a few keys to show.
  const index = await page.$$eval("#rows .row", (rows) =>
    Math.max(0, rows.slice(0, 8).findIndex((r) => r.querySelector(".c-fields").textContent.split("  ").length >= 4)),
  );
  await page.locator("#rows .row").nth(index).locator(".line").click();
  await mkdir(cfg.artifacts, { recursive: true });
  const path = join(cfg.artifacts, "dashboard.png");
  await page.screenshot({ path });
  if (cfg.docsScreenshot) {
    await mkdir(dirname(cfg.docsScreenshot), { recursive: true });
    await copyFile(path, cfg.docsScreenshot);
  }
  await page.click("#pause");
});

test("a password user signs in with Basic and sees why metrics are missing", { skip: !cfg.user }, async () => {
  // A new tab has its own sessionStorage, so it starts signed out.
  const tab = await browser.context.newPage();
  try {
    await tab.goto(cfg.url);
    await tab.waitForSelector("#signin:not([hidden])");
    await tab.check('input[name="mode"][value="password"]');
    await tab.fill("#user", cfg.user);
    await tab.fill("#password", "not-the-password");
    await tab.click("#signin-button");
    await tab.waitForFunction(() => /Wrong key, user or password/.test(document.querySelector("#signin-error").textContent));
    await tab.fill("#user", cfg.user);
    await tab.fill("#password", cfg.password);
    await tab.click("#signin-button");
    await tab.waitForSelector('#conn[data-state="live"]', { timeout: 15000 });
    await tab.waitForFunction(() => document.querySelectorAll("#rows .row").length >= 5);
    // This principal has tracing-live only: the metrics panel says so instead of charting.
    await tab.waitForFunction(() => /lacks the `metrics-live` permission/.test(document.querySelector("#metrics-status").textContent));
    assert.ok(!tab.url().includes(cfg.password), "the password is not in the URL bar");
    await tab.click("#signout");
    await tab.waitForSelector("#signin:not([hidden])");
    assert.equal(await tab.evaluate(() => sessionStorage.length), 0, "signing out forgets the credential");
  } finally {
    await tab.close();
  }
});

test("no script errors and no content security policy violations", () => {
  assert.deepEqual(problems, []);
});
