//! The web dashboard: the page, scripts and styles under `web/`, compiled into the binary and
//! served with a strict content security policy, plus the two small API helpers the page needs
//! (checking a query before streaming it, and finding the span of an event it shows).
//!
//! The files are embedded with `include_bytes!`, so `cargo build` alone builds the dashboard and
//! the binary never reads the file system to serve it. Paths are looked up in a fixed table, so
//! no request path can name any other file. The static files carry no data and need no
//! credentials; everything the page shows comes from the authenticated API.

use super::{json_ok, json_response, HttpError, LiveBody, RequestBody};
use crate::auth::Principal;
use crate::event::Event;
use crate::hub::Hub;
use crate::query::parse_pairs;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The content security policy of every dashboard file. Scripts, styles and connections may
/// come from this origin only; no inline script or style runs, the page cannot be framed, and
/// forms cannot post anywhere. Charts are drawn on canvas, which needs nothing more.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                       style-src 'self'; script-src 'self'; object-src 'none'; \
                       frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One embedded file: its path under `/assets/` (or `index.html` for `/`), bytes, media type
/// and a hash of its bytes computed at compile time (the `ETag`).
struct Asset {
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    hash: u64,
}

/// 64-bit FNV-1a: small enough to run at compile time over every embedded file, and good
/// enough to tell one version of a file from the next.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// An [`Asset`] for the file `web/$path`, embedded at compile time.
macro_rules! asset {
    ($path:literal, $ty:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path));
        const HASH: u64 = fnv1a(BODY);
        Asset { path: $path, body: BODY, content_type: $ty, hash: HASH }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the dashboard has. A path not in this table is a 404.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/app.js", JS),
    asset!("js/api.js", JS),
    asset!("js/alerts.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/events.js", JS),
    asset!("js/filter.js", JS),
    asset!("js/metrics.js", JS),
    asset!("js/util.js", JS),
];

/// The headers every dashboard answer carries, errors included.
fn harden(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
}

/// `GET /`: the page itself.
pub(super) fn index(headers: &HeaderMap) -> Response<LiveBody> {
    serve("index.html", headers)
}

/// `GET /assets/{path}`. The path is compared with the table as it is, so `..`, encoded
/// slashes or any other spelling of a file outside it can only ever be a 404.
pub(super) fn asset(path: &str, headers: &HeaderMap) -> Response<LiveBody> {
    if path == "index.html" {
        // The page has one address, `/`, so that relative links resolve the same way.
        return not_found();
    }
    serve(path, headers)
}

fn serve(path: &str, headers: &HeaderMap) -> Response<LiveBody> {
    let Some(a) = ASSETS.iter().find(|a| a.path == path) else { return not_found() };
    let etag = format!("\"{:016x}\"", a.hash);
    // `no-cache` makes the browser ask each time; the ETag makes that a bodiless 304 until an
    // upgraded binary serves different bytes.
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        let mut r = Response::new(LiveBody::Full(None));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(LiveBody::Full(Some(Bytes::from_static(a.body))));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
        r
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    harden(h);
    r
}

fn not_found() -> Response<LiveBody> {
    let mut r = HttpError::NotFound.into_response();
    harden(r.headers_mut());
    r
}

/// `GET /api/livetap/query-check?<live query>`: parses the query exactly as the live traces
/// endpoint would and answers `{"ok":true,"query":"<canonical q= form>"}`, or the same `400`
/// the stream would give. A browser's `EventSource` cannot read an error body, so the page
/// asks here first and shows the parser's message where the user typed.
pub(super) fn query_check(hub: &Hub, query: &str) -> Result<Response<LiveBody>, HttpError> {
    let q = parse_pairs(query, &hub.keys, &hub.config.query_limits())?;
    Ok(json_ok(StatusCode::OK, &serde_json::json!({"ok": true, "query": q.expr.to_string()})))
}

/// The largest span-lookup body: one event as the stream sent it, with room to spare.
const MAX_LOOKUP_BYTES: usize = 256 * 1024;

/// Events copied out of the replay log at a time while searching it, so its lock is held only
/// briefly and the comparisons run outside it.
const CHUNK: u64 = 4096;

/// Most events looked at while searching backwards for the start of a span.
const MAX_SPAN_SCAN: u64 = 1 << 20;

/// `POST /api/livetap/span` with `{"before": N, "after": M, "event": {...}}`: the span of an
/// event the page received. The live stream leaves `spanId` out (as Stalwart does), so the
/// page names the event by its JSON and the `id:` of the frame it came in (`before`; `after` is
/// the previous frame's id, when known). The answer is `{"spanId":"S","id":N,"firstId":F}`
/// (the event's id, and the id of the span's first retained event): the page then follows
/// `span-id=S` with `last-event-id=F-1`, and the replay log gives it the session's earlier
/// events as well as the rest, live.
pub(super) async fn span_lookup(
    hub: &Arc<Hub>,
    principal: &Principal,
    req: Request<RequestBody>,
) -> Result<Response<LiveBody>, HttpError> {
    let body = read_small(hub, req).await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| HttpError::BadBody(format!("not JSON: {e}")))?;
    let before = v
        .get("before")
        .and_then(Value::as_u64)
        .ok_or_else(|| HttpError::BadBody("`before` must be the id of the frame the event came in".into()))?;
    let after = v.get("after").and_then(Value::as_u64);
    if !v.get("event").is_some_and(Value::is_object) {
        return Err(HttpError::BadBody("`event` must be the event object as the stream sent it".into()));
    }
    // Matcher thread 0 appends to the replay log after its batch, so an event another thread
    // has just delivered may not be in the log yet; it will be within moments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while hub.replay.enabled() && hub.replay.end() < before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The search parses retained events' JSON, up to the whole log in the worst case, so it runs
    // on the blocking pool rather than on an I/O thread.
    let found = {
        let hub = hub.clone();
        tokio::task::spawn_blocking(move || {
            let event = &v["event"];
            let ty = event.get("type").and_then(Value::as_str).unwrap_or("");
            find_event(&hub, before, after, ty, event).map(|(pos, ev)| {
                let first = ev.span_id.map(|span| span_start(&hub, pos, &ev, span));
                (pos, ev, first)
            })
        })
        .await
        .map_err(|e| HttpError::Internal(e.to_string()))?
    };
    let Some((pos, ev, first)) = found else {
        return Ok(lookup_miss("that event is no longer retained; follow needs a recent event"));
    };
    // A principal restricted by a filter learns nothing about events it could not see.
    if principal.filter.as_ref().is_some_and(|f| !f.eval(&ev)) {
        return Ok(lookup_miss("that event is no longer retained; follow needs a recent event"));
    }
    let (Some(span), Some(first)) = (ev.span_id, first) else {
        return Ok(lookup_miss("that event belongs to no session (it has no span)"));
    };
    // Event ids are log positions plus one. The span id is sent as a string: JavaScript
    // numbers lose precision above 2^53.
    Ok(json_ok(
        StatusCode::OK,
        &serde_json::json!({"spanId": span.to_string(), "id": pos + 1, "firstId": first + 1}),
    ))
}

fn lookup_miss(detail: &str) -> Response<LiveBody> {
    let body =
        serde_json::to_vec(&serde_json::json!({"error": "not found", "detail": detail})).unwrap_or_default();
    json_response(StatusCode::NOT_FOUND, body)
}

/// Reads a small JSON body under [`MAX_LOOKUP_BYTES`] and the body timeout.
async fn read_small(hub: &Hub, req: Request<RequestBody>) -> Result<Vec<u8>, HttpError> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_LOOKUP_BYTES);
    let secs = hub.config.body_timeout_secs;
    match tokio::time::timeout(Duration::from_secs(secs), body.collect()).await {
        Err(_) => Err(HttpError::Timeout(secs)),
        Ok(Ok(c)) => Ok(c.to_bytes().into()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(HttpError::PayloadTooLarge(MAX_LOOKUP_BYTES))
        }
        Ok(Err(e)) => Err(HttpError::Io(e.to_string())),
    }
}

/// The newest retained event with id in `(after, before]` whose type is `ty` and whose JSON
/// equals `event`, with its position in the log (the event with id `n` is at position `n - 1`).
/// Two events with the same JSON in that range cannot be told apart; the newer one is taken.
fn find_event(
    hub: &Hub,
    before: u64,
    after: Option<u64>,
    ty: &str,
    event: &Value,
) -> Option<(u64, Arc<Event>)> {
    let log = &hub.replay;
    let floor = after.unwrap_or(0);
    let mut hi = before.min(log.end());
    while hi > floor {
        let lo = hi.saturating_sub(CHUNK).max(floor);
        let range = log.range(lo, hi);
        for (i, ev) in range.events.iter().enumerate().rev() {
            if &*ev.kind == ty && serde_json::from_slice::<Value>(&ev.json).is_ok_and(|j| same(&j, event)) {
                return Some((range.first + i as u64, ev.clone()));
            }
        }
        if range.gap_until.is_some() {
            // The log no longer holds anything older.
            return None;
        }
        hi = lo;
    }
    None
}

/// The log position of the first retained event of `span`, searching back from position `pos`
/// until the events are older than the span's time to live (a followed span ends after that
/// much silence).
fn span_start(hub: &Hub, pos: u64, ev: &Event, span: u64) -> u64 {
    let log = &hub.replay;
    let oldest = ev.created_at.saturating_sub(hub.config.span_ttl_secs as i64);
    let mut first = pos;
    let mut hi = pos;
    let mut scanned = 0;
    while hi > 0 && scanned < MAX_SPAN_SCAN {
        let lo = hi.saturating_sub(CHUNK);
        let range = log.range(lo, hi);
        scanned += range.events.len() as u64;
        let mut too_old = false;
        for (i, e) in range.events.iter().enumerate().rev() {
            if e.span_id == Some(span) {
                first = range.first + i as u64;
            }
            if e.created_at < oldest {
                too_old = true;
                break;
            }
        }
        if too_old || range.gap_until.is_some() || range.events.is_empty() {
            break;
        }
        hi = lo;
    }
    first
}

/// JSON equality that compares numbers by value, so `2` and `2.0` (a browser may print one
/// where the stream wrote the other) are the same.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(p), Some(q), _, _) => p == q,
            (_, _, Some(p), Some(q)) => p == q,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same(p, q)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn get(path: &str) -> Response<LiveBody> {
        match path.strip_prefix("/assets/") {
            Some(p) => asset(p, &HeaderMap::new()),
            None if path == "/" => index(&HeaderMap::new()),
            None => not_found(),
        }
    }

    async fn body(r: Response<LiveBody>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = r.into_body();
        while let Some(Ok(f)) = b.frame().await {
            if let Ok(mut d) = f.into_data() {
                use bytes::Buf;
                while d.has_remaining() {
                    let c = d.chunk().to_vec();
                    d.advance(c.len());
                    out.extend(c);
                }
            }
        }
        out
    }

    fn header<'a>(r: &'a Response<LiveBody>, name: &str) -> &'a str {
        r.headers().get(name).map_or("", |v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn serves_the_page_with_its_types_and_security_headers() {
        for (path, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/assets/style.css", "text/css; charset=utf-8"),
            ("/assets/js/app.js", "text/javascript; charset=utf-8"),
            ("/assets/js/chart.js", "text/javascript; charset=utf-8"),
            ("/assets/icon.svg", "image/svg+xml"),
        ] {
            let r = get(path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&r, "content-type"), ty, "{path}");
            assert_eq!(header(&r, "content-security-policy"), CSP, "{path}");
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            assert_eq!(header(&r, "referrer-policy"), "no-referrer");
            assert_eq!(header(&r, "cache-control"), "no-cache");
            assert!(header(&r, "etag").starts_with('"'), "{path}");
            assert!(!body(r).await.is_empty(), "{path}");
        }
        assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe"));
        let page = String::from_utf8(body(get("/")).await).unwrap();
        assert!(page.contains("assets/js/app.js"));
        assert!(!page.contains("<script>") && !page.contains("style="), "no inline script or style");
    }

    #[tokio::test]
    async fn every_module_the_page_imports_is_embedded() {
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let target = line.split(['\'', '"']).nth(1).unwrap();
                let name = target.strip_prefix("./").expect("relative import");
                let path = format!("js/{name}");
                assert!(ASSETS.iter().any(|b| b.path == path), "{} imports unknown {target}", a.path);
            }
        }
    }

    #[tokio::test]
    async fn unknown_assets_and_traversal_are_404() {
        for path in [
            "/assets/nope.js",
            "/assets/",
            "/assets/index.html",
            "/assets/../Cargo.toml",
            "/assets/js/../../Cargo.toml",
            "/assets/..%2f..%2fCargo.toml",
            "/assets/%2e%2e/src/main.rs",
            "/assets//etc/passwd",
            "/assets/JS/APP.JS",
            "/assets/js/app.js/",
            "/assets/js/app.js%00",
        ] {
            let r = get(path);
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(header(&r, "content-type"), "application/json", "{path}");
            assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
            let j: Value = serde_json::from_slice(&body(r).await).unwrap();
            assert_eq!(j["error"], "not found");
        }
    }

    #[tokio::test]
    async fn a_matching_etag_is_a_bodiless_304() {
        let r = get("/assets/style.css");
        let etag = header(&r, "etag").to_string();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap());
        let r = asset("style.css", &h);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&r, "etag"), etag);
        assert!(body(r).await.is_empty());
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0000000000000000\""));
        assert_eq!(asset("style.css", &h).status(), StatusCode::OK);
        // Different files have different tags.
        assert_ne!(header(&get("/assets/js/app.js"), "etag"), etag);
    }

    #[test]
    fn json_sameness_compares_numbers_by_value() {
        let a: Value = serde_json::from_str(r#"{"a":[1,2.0,{"b":"x"}],"c":-3}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"c":-3,"a":[1.0,2,{"b":"x"}]}"#).unwrap();
        assert!(same(&a, &b));
        let c: Value = serde_json::from_str(r#"{"c":-3,"a":[1,2,{"b":"y"}]}"#).unwrap();
        assert!(!same(&a, &c));
        let d: Value = serde_json::from_str(r#"{"c":-3,"a":[1,2,{"b":"x"}],"e":1}"#).unwrap();
        assert!(!same(&a, &d));
        assert!(same(&serde_json::json!(u64::MAX), &serde_json::json!(u64::MAX)));
        assert!(!same(&serde_json::json!(u64::MAX), &serde_json::json!(u64::MAX - 1)));
    }
}
