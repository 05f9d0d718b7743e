// A small live line chart drawn on a canvas: a rolling window of samples, one line per
// series, a y axis that fits the data, relative time labels and a legend with the latest
// values. Drawing is deferred to the next animation frame, so many pushes cost one redraw.

import { fmtNum, oncePerFrame } from "./util.js";

const PALETTE = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#90a4ae", "#f06292"];
const TEXT = "#9aa7b4";
const GRID = "#263039";
const FONT = "11px system-ui, sans-serif";

/** A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export class LineChart {
  /**
   * `maxPoints` samples are kept; `unit` is appended to the legend's values; `colors` fixes
   * the colour of named series (others take the palette in order of appearance).
   */
  constructor(canvas, { maxPoints = 120, unit = "", colors = {}, empty = "waiting for data…" } = {}) {
    this.canvas = canvas;
    this.maxPoints = maxPoints;
    this.unit = unit;
    this.colors = Object.assign({}, colors);
    this.empty = empty;
    this.times = [];
    this.series = new Map();
    this.nextColor = 0;
    this.schedule = oncePerFrame(() => this.draw());
    this.draws = 0;
    new ResizeObserver(() => this.schedule()).observe(canvas);
  }

  /** Adds a sample at time `t` (ms) with a value per series name; missing names get a gap. */
  push(t, values) {
    this.times.push(t);
    for (const [name, data] of this.series) data.push(name in values ? values[name] : NaN);
    for (const [name, v] of Object.entries(values)) {
      if (!this.series.has(name)) {
        const data = new Array(this.times.length - 1).fill(NaN);
        data.push(v);
        this.series.set(name, data);
        if (!(name in this.colors)) this.colors[name] = PALETTE[this.nextColor++ % PALETTE.length];
      }
    }
    if (this.times.length > this.maxPoints) {
      this.times.shift();
      for (const data of this.series.values()) data.shift();
    }
    // A series with nothing left in the window is forgotten.
    for (const [name, data] of this.series) {
      if (data.every((v) => Number.isNaN(v))) this.series.delete(name);
    }
    this.schedule();
  }

  clear() {
    this.times = [];
    this.series.clear();
    this.schedule();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const cssW = c.clientWidth;
    const cssH = c.clientHeight;
    if (!cssW || !cssH) return;
    if (c.width !== Math.round(cssW * dpr) || c.height !== Math.round(cssH * dpr)) {
      c.width = Math.round(cssW * dpr);
      c.height = Math.round(cssH * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    g.font = FONT;
    g.textBaseline = "middle";

    // The legend (name and latest value of each series) wraps onto as many lines as it needs,
    // and the plot starts below it.
    const legend = [];
    let lx = 44;
    let line = 0;
    for (const [name, data] of this.series) {
      const latest = [...data].reverse().find((v) => !Number.isNaN(v));
      const label = `${name} ${fmtNum(latest)}${this.unit}`;
      const width = g.measureText(label).width + 11;
      if (lx + width > cssW - 8 && lx > 44) {
        lx = 44;
        line++;
      }
      legend.push({ name, label, x: lx, y: 12 + line * 15 });
      lx += width + 14;
    }

    const left = 44;
    const right = 8;
    const top = 22 + line * 15;
    const bottom = 18;
    const w = cssW - left - right;
    const h = cssH - top - bottom;
    const n = this.times.length;

    let max = 0;
    let min = 0;
    for (const data of this.series.values()) {
      for (const v of data) {
        if (v > max) max = v;
        if (v < min) min = v;
      }
    }
    const hi = niceCeil(max);
    const lo = min < 0 ? -niceCeil(-min) : 0;
    const y = (v) => top + h - ((v - lo) / (hi - lo)) * h;

    // Grid and y labels.
    g.strokeStyle = GRID;
    g.fillStyle = TEXT;
    g.lineWidth = 1;
    g.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(left + w, yy);
      g.stroke();
      g.fillText(fmtNum(v), left - 6, yy);
    }

    // The newest sample sits at the right edge; slots to the left are older samples. Until the
    // window is full, it is only as long as the data (at least ten slots), so a new chart fills
    // its width and then scrolls.
    const slots = Math.max(10, Math.min(this.maxPoints, n));
    const x = (i) => left + (w * (i + slots - n)) / (slots - 1);

    // Time labels at fixed places along the whole window, relative to the newest sample; the
    // window's length follows from the samples' spacing.
    g.textAlign = "center";
    g.textBaseline = "alphabetic";
    if (n > 0) {
      const spacing = n > 1 ? (this.times[n - 1] - this.times[0]) / (n - 1) : 1000;
      const span = (slots - 1) * spacing;
      for (let k = 0; k <= 4; k++) {
        const ago = Math.round((span * (4 - k)) / 4 / 1000);
        const label = ago === 0 ? "now" : ago >= 120 ? `-${Math.round(ago / 60)}m` : `-${ago}s`;
        const xx = Math.min(Math.max(left + (w * k) / 4, left + 12), left + w - 12);
        g.fillText(label, xx, cssH - 4);
      }
    }

    if (this.series.size === 0) {
      g.textAlign = "center";
      g.textBaseline = "middle";
      g.fillText(this.empty, left + w / 2, top + h / 2);
    }

    // Lines; NaN leaves a gap, a lone point is drawn as a dot.
    g.lineWidth = 1.6;
    g.lineJoin = "round";
    for (const [name, data] of this.series) {
      g.strokeStyle = g.fillStyle = this.colors[name];
      g.beginPath();
      let open = false;
      for (let i = 0; i < n; i++) {
        const v = data[i];
        if (Number.isNaN(v)) {
          open = false;
          continue;
        }
        const lone = !open && (i + 1 >= n || Number.isNaN(data[i + 1]));
        if (lone) g.fillRect(x(i) - 1.5, y(v) - 1.5, 3, 3);
        if (open) g.lineTo(x(i), y(v));
        else g.moveTo(x(i), y(v));
        open = true;
      }
      g.stroke();
    }

    g.textAlign = "left";
    g.textBaseline = "middle";
    for (const item of legend) {
      g.fillStyle = this.colors[item.name];
      g.fillRect(item.x, item.y - 4, 8, 8);
      g.fillStyle = TEXT;
      g.fillText(item.label, item.x + 11, item.y);
    }

    // What was drawn, for anyone (tests included) that wants to know without reading pixels.
    this.draws++;
    c.dataset.points = String(n);
    c.dataset.series = [...this.series.keys()].join(",");
    c.dataset.draws = String(this.draws);
  }
}
