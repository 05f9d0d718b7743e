// Talking to livetap: authenticated fetches, live tokens, and live streams that reconnect.
//
// The credential (an API key as Bearer, or a user and password as Basic) stays in this
// module's memory and in the tab's sessionStorage (see app.js); it is only ever sent in the
// Authorization header. EventSource cannot send headers, so each stream connection first
// fetches a short-lived live token and puts it in the stream's own URL, never in the page's
// address bar.

/** An answer that was not 2xx, with the server's JSON error body when it sent one. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export class Api {
  /** `auth` is the whole Authorization header value. */
  constructor(auth) {
    this.auth = auth;
  }

  static bearer(key) {
    return new Api("Bearer " + key.trim());
  }

  static basic(user, password) {
    // btoa only takes Latin-1, so the UTF-8 bytes are passed through as such.
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return new Api("Basic " + btoa(bin));
  }

  async request(path, init = {}) {
    const headers = Object.assign({ Authorization: this.auth }, init.headers || {});
    // No cookies or stored credentials: the Authorization header is the credential. This also
    // keeps the browser from answering a 401 that offers Basic with its own password dialog.
    const resp = await fetch(path, Object.assign({}, init, { headers, cache: "no-store", credentials: "omit" }));
    let body = null;
    const type = resp.headers.get("content-type") || "";
    if (type.startsWith("application/json")) body = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, body);
    return body;
  }

  get(path) {
    return this.request(path);
  }

  post(path, value) {
    return this.request(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(value),
    });
  }

  /** A fresh live token for `grant` ("tracing" or "metrics"). */
  async token(grant) {
    const body = await this.get(`api/telemetry/live/${grant}-token`);
    return body.data;
  }
}

/** Reconnect delays: quick at first, then backing off to 15 s. */
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];

/**
 * One live SSE stream that keeps itself connected.
 *
 * Every (re)connection fetches a new token first, since a token is valid for a minute only.
 * The browser's own EventSource retry is not used: it would reuse the old token. A traces
 * stream resumes after the last `id:` it saw (`last-event-id=`), so a reconnect loses nothing
 * the server still retains. When a connection is refused, the same URL is fetched once with
 * the Authorization header to read the server's JSON error, which EventSource cannot see.
 */
export class LiveStream {
  constructor(api, { grant, path, events, resume, onMessage, onState }) {
    this.api = api;
    this.grant = grant;
    this.path = path;
    this.events = events;
    this.resume = resume;
    this.onMessage = onMessage;
    this.onState = onState;
    this.es = null;
    this.gen = 0;
    this.tries = 0;
    this.timer = 0;
    this.lastId = null;
    this.params = new URLSearchParams();
  }

  /** (Re)starts the stream with these query parameters; `after` resumes after an event id. */
  open(params, after = null) {
    this.params = new URLSearchParams(params);
    this.lastId = after;
    this.tries = 0;
    this.connect(false);
  }

  close() {
    this.gen++;
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    this.es = null;
  }

  async connect(reconnect) {
    this.close();
    const gen = this.gen;
    this.onState(reconnect ? "reconnecting" : "connecting", {});
    let token;
    try {
      token = await this.api.token(this.grant);
    } catch (e) {
      if (gen !== this.gen) return;
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        this.onState("refused", { error: e });
        return;
      }
      this.retry(gen, e);
      return;
    }
    if (gen !== this.gen) return;
    const q = new URLSearchParams(this.params);
    const resumedAfter = this.resume ? this.lastId : null;
    if (resumedAfter !== null) q.set("last-event-id", resumedAfter);
    q.set("token", token);
    const es = new EventSource(`${this.path}?${q}`);
    this.es = es;
    let opened = false;
    es.onopen = () => {
      if (gen !== this.gen) return;
      opened = true;
      this.tries = 0;
      this.onState("live", { reconnect, resumedAfter });
    };
    for (const name of this.events) {
      es.addEventListener(name, (m) => {
        if (gen !== this.gen) return;
        if (name === "trace" && m.lastEventId) this.lastId = m.lastEventId;
        this.onMessage(name, m.data, m.lastEventId);
      });
    }
    es.onerror = () => {
      if (gen !== this.gen) return;
      es.close();
      if (opened) this.retry(gen, null);
      else this.diagnose(gen);
    };
  }

  /** Learns why a connection was refused; a 4xx other than 408 and 429 is not retried. */
  async diagnose(gen) {
    const ctl = new AbortController();
    let error = null;
    try {
      const resp = await fetch(`${this.path}?${this.params}`, {
        headers: { Authorization: this.api.auth },
        signal: ctl.signal,
        cache: "no-store",
        credentials: "omit",
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => null);
        error = new ApiError(resp.status, body);
      }
    } catch (e) {
      error = e;
    } finally {
      ctl.abort();
    }
    if (gen !== this.gen) return;
    const s = error instanceof ApiError ? error.status : 0;
    if (s >= 400 && s < 500 && s !== 408 && s !== 429) {
      this.onState("refused", { error });
    } else {
      this.retry(gen, error);
    }
  }

  retry(gen, error) {
    const wait = BACKOFF_MS[Math.min(this.tries, BACKOFF_MS.length - 1)];
    this.tries++;
    this.onState("down", { error, retryInMs: wait });
    this.timer = setTimeout(() => {
      if (gen === this.gen) this.connect(true);
    }, wait);
  }
}
