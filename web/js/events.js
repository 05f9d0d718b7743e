// The live event list. Events arrive in frames at any rate; the list shows them in batches
// once per animation frame and keeps at most `cap` rows in the page, so thousands of events a
// second cost a bounded amount of DOM work. Older rows are dropped from view, not from the
// stream. Pausing keeps what arrives in a bounded waiting list and shows how much is waiting.

import { el, clock, fmtCount, oncePerFrame } from "./util.js";

const LEVELS = new Set(["trace", "debug", "info", "warn", "error"]);

/** The text of a value in a one-line summary. */
function brief(v) {
  if (v === null || v === undefined) return "";
  if (Array.isArray(v)) return v.map(brief).join(",");
  if (typeof v === "object") return v.type ? `{${v.type}}` : "{…}";
  return String(v);
}

/** `key=value` pairs of an event's data, for its row. */
function summary(ev) {
  const parts = [];
  const data = ev.data || {};
  for (const k of Object.keys(data)) parts.push(`${k}=${brief(data[k])}`);
  let s = parts.join("  ");
  if (s.length > 300) s = s.slice(0, 300) + "…";
  return s;
}

/** Every key of a value as nested rows; a nested event (`causedBy`) gets its own block. */
function detailOf(value) {
  const box = el("dl", "kv");
  for (const [k, v] of Object.entries(value)) {
    if (v === "" || v === null || v === undefined) continue;
    box.append(el("dt", null, k));
    const dd = el("dd");
    if (v && typeof v === "object" && !Array.isArray(v)) {
      dd.className = "nested";
      dd.append(detailOf(v));
    } else if (Array.isArray(v)) {
      dd.textContent = v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", ");
    } else {
      dd.textContent = String(v);
    }
    box.append(dd);
  }
  return box;
}

export class EventView {
  /**
   * `container` holds the rows; `onFollow(record)` is called when a row's follow button is
   * pressed, with `{ev, frame, prev}`: the event and the ids of its frame and the one before.
   */
  constructor(container, { cap = 500, maxWaiting = 10000, onFollow, onChange }) {
    this.box = container;
    this.cap = cap;
    this.maxWaiting = maxWaiting;
    this.onFollow = onFollow;
    this.onChange = onChange;
    this.order = "newest";
    this.paused = false;
    this.pending = []; // received, not yet drawn
    this.waiting = []; // received while paused
    this.records = new WeakMap(); // row element → record
    this.received = 0;
    this.unseen = 0; // arrived faster than drawn: dropped from view before being shown
    this.droppedWhilePaused = 0;
    this.schedule = oncePerFrame(() => this.flush());
    container.addEventListener("click", (e) => this.click(e));
  }

  /** Adds one frame's events (oldest first, as the stream sends them). */
  add(events, frame, prev) {
    this.received += events.length;
    const recs = events.map((ev) => ({ ev, frame, prev }));
    if (this.paused) {
      for (const r of recs) this.waiting.push(r);
      const over = this.waiting.length - this.maxWaiting;
      if (over > 0) {
        this.waiting.splice(0, over);
        this.droppedWhilePaused += over;
      }
    } else {
      for (const r of recs) this.pending.push(r);
      this.trimPending();
      this.schedule();
    }
    this.changed();
  }

  /** Only the newest `cap` pending events can ever be on screen at once; the rest are skipped. */
  trimPending() {
    const over = this.pending.length - this.cap;
    if (over > 0) {
      this.pending.splice(0, over);
      this.unseen += over;
    }
  }

  flush() {
    if (this.paused || this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    const frag = document.createDocumentFragment();
    const box = this.box;
    if (this.order === "newest") {
      for (let i = batch.length - 1; i >= 0; i--) frag.append(this.row(batch[i]));
      box.prepend(frag);
      while (box.childElementCount > this.cap) box.lastElementChild.remove();
    } else {
      const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
      for (const r of batch) frag.append(this.row(r));
      box.append(frag);
      while (box.childElementCount > this.cap) box.firstElementChild.remove();
      if (atBottom) box.scrollTop = box.scrollHeight;
    }
    this.changed();
  }

  row(rec) {
    const ev = rec.ev;
    const level = LEVELS.has(ev.level) ? ev.level : "info";
    const row = el("div", `row lvl-${level}`);
    row.dataset.type = ev.type;
    const line = el("div", "line");
    const time = el("span", "c-time", clock(ev.createdAt));
    time.title = ev.createdAt;
    const type = el("span", "c-type", ev.type);
    type.title = ev.text || ev.type;
    const follow = el("button", "follow", "follow");
    follow.type = "button";
    follow.title = "Show this event's whole session (filters on its span)";
    line.append(time, el("span", "c-level", level), type, el("span", "c-fields", summary(ev)), follow);
    row.append(line);
    this.records.set(row, rec);
    return row;
  }

  click(e) {
    const row = e.target.closest(".row");
    if (!row) return;
    const rec = this.records.get(row);
    if (e.target.closest(".follow")) {
      if (rec) this.onFollow(rec);
      return;
    }
    // Selecting text in a row should not toggle it.
    if (String(window.getSelection() || "").length > 0) return;
    const open = row.querySelector(".detail");
    if (open) {
      open.remove();
      row.classList.remove("open");
    } else if (rec) {
      const d = el("div", "detail");
      const { data, ...head } = rec.ev;
      d.append(detailOf(head));
      if (data && Object.keys(data).length) {
        d.append(el("div", "detail-title", "data"));
        d.append(detailOf(data));
      }
      row.append(d);
      row.classList.add("open");
    }
  }

  pause() {
    this.paused = true;
    // What was received but not drawn yet waits too, so nothing jumps in after the click.
    this.waiting = this.pending;
    this.pending = [];
    this.changed();
  }

  resume() {
    this.paused = false;
    this.pending = this.waiting;
    this.waiting = [];
    this.trimPending();
    this.schedule();
    this.changed();
  }

  clear() {
    this.box.replaceChildren();
    this.pending = [];
    this.waiting = [];
    this.received = 0;
    this.unseen = 0;
    this.droppedWhilePaused = 0;
    this.changed();
  }

  setOrder(order) {
    if (order === this.order) return;
    this.order = order;
    // Reverse the rows in place so the view keeps what it shows.
    const rows = [...this.box.children].reverse();
    this.box.replaceChildren(...rows);
    if (order === "tail") this.box.scrollTop = this.box.scrollHeight;
    else this.box.scrollTop = 0;
  }

  changed() {
    if (this.onChange) this.onChange(this);
  }

  /** A one-line description of the counters, for the toolbar. */
  describe() {
    const shown = this.box.childElementCount;
    let s = `${fmtCount(this.received)} received · ${fmtCount(shown)} shown`;
    if (this.paused) {
      s += ` · ${fmtCount(this.waiting.length)} waiting`;
      if (this.droppedWhilePaused) s += ` (${fmtCount(this.droppedWhilePaused)} older dropped)`;
    }
    return s;
  }
}
