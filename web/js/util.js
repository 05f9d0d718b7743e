// Small helpers shared by the dashboard's modules: element creation, number and time
// formatting, and mapping the server's byte positions onto JavaScript string positions.

/** Creates an element with an optional class and text. */
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

/** A compact number: 1234 → "1.23k", 0.5 → "0.5". */
export function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toPrecision(3) + "G";
  if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return (v / 1e3).toPrecision(3) + "k";
  if (a >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toPrecision(3).replace(/\.?0+$/, "");
}

/** A number with thousands separators, for counts. */
export function fmtCount(n) {
  return n.toLocaleString("en-US");
}

/** The family of an event type: the part before the first dot (`smtp` of `smtp.ehlo`). */
export function family(type) {
  const i = type.indexOf(".");
  return i < 0 ? type : type.slice(0, i);
}

/** `HH:MM:SS` in local time of an RFC 3339 timestamp (the stream's `createdAt`). */
export function clock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toTimeString().slice(0, 8);
}

/**
 * The server reports a parse error's position in bytes of the UTF-8 value; this returns the
 * matching index into the JavaScript string (which counts UTF-16 units).
 */
export function charIndexOfByte(text, byte) {
  const enc = new TextEncoder();
  let bytes = 0;
  let i = 0;
  for (const ch of text) {
    if (bytes >= byte) return i;
    bytes += enc.encode(ch).length;
    i += ch.length;
  }
  return text.length;
}

/** Calls `fn` once `ms` have passed without another call. */
export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/**
 * Returns a function that runs `fn` on the next animation frame, once however often it is
 * called before then: DOM and canvas work is done at most once per frame.
 */
export function oncePerFrame(fn) {
  let requested = false;
  return () => {
    if (requested) return;
    requested = true;
    requestAnimationFrame(() => {
      requested = false;
      fn();
    });
  };
}
