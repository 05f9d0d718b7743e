// The metrics panel: one chart per chosen metric, fed by the live metrics stream at the
// chosen interval. Counters are shown as a rate per second (the stream sends totals), gauges
// as their value, and histograms as their p50, p90 and p99.

import { el } from "./util.js";
import { LiveStream } from "./api.js";
import { LineChart } from "./chart.js";

/** Charts shown at most, whatever the globs match. */
const MAX_CHARTS = 8;

const HIST_COLORS = { p50: "#81c784", p90: "#ffb74d", p99: "#e57373" };

/** A unit for a metric's values, guessed from its name (the catalogue's convention). */
function unitOf(name, type) {
  if (type === "counter") return "/s";
  if (/(time|elapsed)$/.test(name)) return " ms";
  if (/(size|memory)$/.test(name)) return " B";
  return "";
}

export class MetricsPanel {
  constructor({ form, names, interval, status, container, onState }) {
    this.form = form;
    this.names = names;
    this.interval = interval;
    this.status = status;
    this.container = container;
    this.onState = onState;
    this.cards = new Map(); // metric id → {card, chart, note, last}
    this.stream = null;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.restart();
    });
    interval.addEventListener("change", () => this.restart());
  }

  start(api) {
    if (this.stream) this.stream.close();
    this.stream = new LiveStream(api, {
      grant: "metrics",
      // livetap's own form: the classic samples at full precision (the classic endpoint
      // rounds gauges to unsigned integers for Stalwart's old web admin).
      path: "api/livetap/live/metrics",
      events: ["metrics"],
      resume: false,
      onMessage: (_name, data) => this.frame(JSON.parse(data)),
      onState: (state, info) => this.state(state, info),
    });
    this.restart();
  }

  stop() {
    if (this.stream) this.stream.close();
  }

  chosen() {
    return this.names.value
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
  }

  restart() {
    if (!this.stream) return;
    this.cards.clear();
    this.container.replaceChildren();
    const names = this.chosen();
    // Exact names get their card at once, so a metric with no samples yet says so.
    for (const n of names) if (!/[*?]/.test(n)) this.card(n, null);
    const p = new URLSearchParams();
    p.set("metrics", names.join(","));
    p.set("interval", this.interval.value);
    this.stream.open(p);
  }

  state(state, info) {
    if (state === "refused") {
      // Nothing will arrive, so empty charts would only mislead.
      this.cards.clear();
      this.container.replaceChildren();
      this.status.textContent = `metrics stream refused: ${info.error.message}`;
      this.status.className = "panel-status error-text";
    } else if (state === "down") {
      this.status.textContent = "metrics stream lost; reconnecting…";
      this.status.className = "panel-status warn-text";
    } else if (state === "live") {
      this.status.textContent = `every ${this.interval.value} s`;
      this.status.className = "panel-status";
    }
    if (this.onState) this.onState(state, info);
  }

  card(id, type) {
    let c = this.cards.get(id);
    if (c) return c;
    if (this.cards.size >= MAX_CHARTS) return null;
    const card = el("div", "metric-card");
    card.dataset.metric = id;
    const title = el("div", "metric-title");
    const name = el("span", "metric-name", id);
    const kind = el("span", "metric-kind", type || "");
    title.append(name, kind);
    const canvas = el("canvas", "chart small");
    canvas.dataset.metric = id;
    const note = el("div", "metric-note", "no samples yet");
    card.append(title, canvas, note);
    this.container.append(card);
    const chart = new LineChart(canvas, { maxPoints: 60, colors: HIST_COLORS });
    c = { card, chart, note, kind, last: null };
    this.cards.set(id, c);
    return c;
  }

  frame(samples) {
    const t = Date.now();
    const seen = new Set(samples.map((s) => s.id));
    for (const [id, c] of this.cards) {
      if (!seen.has(id) && c.chart.times.length === 0) {
        c.note.textContent = "no samples yet: livetap has none; producers push it or a scrape supplies it";
      }
    }
    for (const s of samples) {
      const c = this.card(s.id, s.type);
      if (!c) continue;
      c.kind.textContent = s.type;
      c.chart.unit = unitOf(s.id, s.type);
      const values = {};
      if (s.type === "counter") {
        // A rate needs two totals; the first frame only sets the baseline.
        if (c.last) {
          const dt = (t - c.last.t) / 1000;
          if (dt > 0) values["per s"] = Math.max(0, (s.value - c.last.value) / dt);
        }
        c.last = { t, value: s.value };
      } else if (s.type === "histogram") {
        for (const q of ["p50", "p90", "p99"]) if (typeof s[q] === "number") values[q] = s[q];
        c.note.textContent = `${s.count.toLocaleString("en-US")} observations`;
      } else {
        values.value = s.value;
      }
      if (s.type !== "histogram") c.note.textContent = "";
      if (Object.keys(values).length || c.chart.times.length) c.chart.push(t, values);
      c.card.dataset.state = "live";
    }
  }
}
