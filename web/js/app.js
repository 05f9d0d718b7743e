// The dashboard's entry point: sign-in, the live traces stream and what it feeds (the event
// list, the rates chart, the lag and reconnection banner), "follow this session", and the
// metrics panel. Everything it shows comes from livetap's authenticated API.

import { Api, ApiError, LiveStream } from "./api.js";
import { EventView } from "./events.js";
import { FilterBar } from "./filter.js";
import { LineChart } from "./chart.js";
import { MetricsPanel } from "./metrics.js";
import { AlertsPanel } from "./alerts.js";
import { family, fmtCount } from "./util.js";

/** Rows kept in the page; older rows are dropped from view, not from the stream. */
const ROW_CAP = 500;
/** Events kept while paused; beyond this the oldest waiting ones are dropped. */
const MAX_WAITING = 10000;
/** Families drawn separately in the rates chart; the rest are summed as "other". */
const TOP_FAMILIES = 5;
/** The tab's sessionStorage key for the Authorization header value. */
const AUTH_KEY = "livetap.auth";

const $ = (id) => document.getElementById(id);

let api = null;
let stream = null;
let prevFrame = null;
let following = null; // {spanId, previous: {text, follow}} while following a session
let lagged = 0; // events dropped for this page since the banner was last closed

// Counting for the rates chart: events per family since the last tick.
let tickTotal = 0;
let tickFamilies = new Map();
const familyTotals = new Map();

const view = new EventView($("rows"), {
  cap: ROW_CAP,
  maxWaiting: MAX_WAITING,
  onFollow: (rec) => followSession(rec),
  onChange: () => scheduleCounts(),
});
$("cap-note").textContent =
  `Keeps the newest ${fmtCount(ROW_CAP)} rows; older ones are dropped from view, not from the stream. ` +
  `While paused, up to ${fmtCount(MAX_WAITING)} events wait.`;

const rates = new LineChart($("rates-chart"), { maxPoints: 60, unit: "/s", colors: { all: "#e0e6eb" } });

const filter = new FilterBar({
  form: $("filter-form"),
  input: $("filter"),
  follow: $("follow-spans"),
  status: $("filter-status"),
  onApply: (params, after) => startTraces(params, after),
});

const alerts = new AlertsPanel({
  panel: $("alerts-panel"),
  list: $("alerts-list"),
  status: $("alerts-status"),
  banner: $("alert-banner"),
  bannerText: $("alert-banner-text"),
});
const metrics = new MetricsPanel({
  form: $("metrics-form"),
  names: $("metrics-names"),
  interval: $("metrics-interval"),
  status: $("metrics-status"),
  container: $("metric-charts"),
});

// ---- sign-in -------------------------------------------------------------------------------

function showSignIn(message) {
  $("main").hidden = true;
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("signin-error").textContent = message || "";
  setConn("off", "signed out");
}

async function signIn(candidate, remember) {
  try {
    // Fetching a live token proves the credential and the permission in one request.
    await candidate.token("tracing");
  } catch (e) {
    const why =
      e instanceof ApiError && e.status === 401
        ? "Wrong key, user or password."
        : e instanceof ApiError && e.status === 403
          ? "This principal lacks the tracing-live permission."
          : `Cannot sign in: ${e.message}`;
    showSignIn(why);
    return;
  }
  api = candidate;
  if (remember) sessionStorage.setItem(AUTH_KEY, api.auth);
  $("signin").hidden = true;
  $("main").hidden = false;
  $("signout").hidden = false;
  $("signin-form").reset();
  showMode();
  filter.api = api;
  stream = new LiveStream(api, {
    grant: "tracing",
    path: "api/livetap/live",
    events: ["trace", "lagged", "gap"],
    resume: true,
    onMessage: onTraceMessage,
    onState: onTraceState,
  });
  metrics.start(api);
  alerts.start(api);
  // An invalid filter from a shared URL is shown with the parser's message, not streamed.
  await filter.apply();
}

function signOut() {
  if (stream) stream.close();
  metrics.stop();
  alerts.stop();
  stream = null;
  api = null;
  sessionStorage.removeItem(AUTH_KEY);
  following = null;
  view.clear();
  rates.clear();
  showSignIn("");
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const candidate =
    mode === "key" ? Api.bearer($("key").value) : Api.basic($("user").value, $("password").value);
  signIn(candidate, true);
});
/** Shows the fields of the chosen sign-in mode. */
function showMode() {
  const key = document.querySelector('input[name="mode"]:checked').value === "key";
  $("key-fields").hidden = !key;
  $("user-fields").hidden = key;
}
for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", showMode);
$("signout").addEventListener("click", signOut);

// ---- the traces stream ---------------------------------------------------------------------

function startTraces(params, after) {
  if (!stream) return;
  // A new stream starts a fresh view, shown as it arrives (following a session from a paused
  // list shows the session).
  view.clear();
  setPaused(false);
  // Which stream the rows come from, for anyone who needs to tell the views apart.
  $("rows").dataset.stream = String(Number($("rows").dataset.stream || 0) + 1);
  prevFrame = after;
  const text = params.get("q") || "";
  if (following && text !== `span-id=${following.spanId}`) {
    following = null;
  }
  $("following").hidden = !following;
  if (following) $("following-text").textContent = `Following session ${following.spanId}`;
  stream.open(params, after);
}

function onTraceMessage(name, data, id) {
  if (name === "trace") {
    const events = JSON.parse(data);
    const frame = id ? Number(id) : null;
    view.add(events, frame, prevFrame);
    prevFrame = frame;
    tickTotal += events.length;
    for (const ev of events) {
      const f = family(ev.type || "");
      tickFamilies.set(f, (tickFamilies.get(f) || 0) + 1);
    }
  } else if (name === "lagged") {
    const n = JSON.parse(data).dropped || 0;
    lagged += n;
    banner(
      "warn",
      `The stream lagged: ${fmtCount(lagged)} events were dropped for this page because it read ` +
        "too slowly. Narrow the filter to see everything.",
    );
  } else if (name === "gap") {
    const g = JSON.parse(data);
    banner(
      "warn",
      `Resumed with a gap: ${fmtCount(g.missed || 0)} events after #${g.lastEventId} are no longer ` +
        "retained and could not be replayed.",
    );
  }
}

function onTraceState(state, info) {
  if (state === "live") {
    setConn("live", "live");
    if (info.reconnect) {
      banner(
        "info",
        info.resumedAfter !== null
          ? `Reconnected and resumed after event #${info.resumedAfter}: nothing retained was missed.`
          : "Reconnected.",
      );
    }
  } else if (state === "connecting") {
    setConn("connecting", "connecting…");
  } else if (state === "reconnecting") {
    setConn("connecting", "reconnecting…");
  } else if (state === "down") {
    setConn("down", "disconnected");
    banner("warn", `Connection lost; reconnecting in ${Math.round(info.retryInMs / 1000) || 1} s…`);
  } else if (state === "refused") {
    const e = info.error;
    if (e instanceof ApiError && e.status === 401) {
      signOut();
      showSignIn("The credential is no longer accepted; sign in again.");
      return;
    }
    setConn("down", "refused");
    banner("error", `The stream was refused: ${e ? e.message : "unknown error"}`);
  }
}

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

// ---- banner --------------------------------------------------------------------------------

function banner(kind, text) {
  const b = $("banner");
  b.className = `banner ${kind}`;
  b.dataset.kind = kind;
  $("banner-text").textContent = text;
  b.hidden = false;
}
$("banner-close").addEventListener("click", () => {
  $("banner").hidden = true;
  lagged = 0;
});

// ---- toolbar -------------------------------------------------------------------------------

function setPaused(paused) {
  if (paused === view.paused) return;
  if (paused) view.pause();
  else view.resume();
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").setAttribute("aria-pressed", String(paused));
}
$("pause").addEventListener("click", () => setPaused(!view.paused));
$("clear").addEventListener("click", () => view.clear());
$("order").addEventListener("change", (e) => view.setOrder(e.target.value));
$("unfollow").addEventListener("click", () => {
  if (!following) return;
  const prev = following.previous;
  following = null;
  $("follow-spans").checked = prev.follow;
  filter.set(prev.text);
});

let countsRequested = false;
function scheduleCounts() {
  if (countsRequested) return;
  countsRequested = true;
  // The counters change with every frame; a few updates a second are plenty.
  setTimeout(() => {
    countsRequested = false;
    const c = $("counts");
    c.textContent = view.describe();
    c.dataset.received = String(view.received);
    c.dataset.waiting = String(view.waiting.length);
    c.dataset.shown = String(view.box.childElementCount);
  }, 200);
}

// ---- follow this session -------------------------------------------------------------------

async function followSession(rec) {
  if (!api) return;
  let answer;
  try {
    answer = await api.post("api/livetap/span", { before: rec.frame, after: rec.prev, event: rec.ev });
  } catch (e) {
    banner("info", `Cannot follow this event's session: ${e.message}`);
    return;
  }
  const previous = following ? following.previous : { text: filter.applied || "", follow: $("follow-spans").checked };
  following = { spanId: answer.spanId, previous };
  // Replay from just before the session's first retained event, then continue live.
  filter.set(`span-id=${answer.spanId}`, Math.max(0, answer.firstId - 1));
}

// ---- rates ---------------------------------------------------------------------------------

setInterval(() => {
  if (!stream) return;
  const values = { all: tickTotal };
  // Recent traffic per family, decaying, decides which families get a line of their own.
  for (const [f, v] of familyTotals) {
    if (v < 0.01) familyTotals.delete(f);
    else familyTotals.set(f, v * 0.95);
  }
  for (const [f, n] of tickFamilies) familyTotals.set(f, (familyTotals.get(f) || 0) + n);
  // The families with the most recent traffic get their own line.
  const top = [...familyTotals.entries()].sort((a, b) => b[1] - a[1]).slice(0, TOP_FAMILIES);
  let other = tickTotal;
  for (const [f] of top) {
    values[f] = tickFamilies.get(f) || 0;
    other -= values[f];
  }
  if (familyTotals.size > TOP_FAMILIES) values.other = other;
  rates.push(Date.now(), values);
  tickTotal = 0;
  tickFamilies = new Map();
}, 1000);

// ---- start ---------------------------------------------------------------------------------

const saved = sessionStorage.getItem(AUTH_KEY);
if (saved) signIn(new Api(saved), false);
else showSignIn("");
document.body.dataset.ready = "true";
