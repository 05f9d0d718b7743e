//! The live endpoints: the live traces stream (its query, the principal's filter, resuming
//! after `Last-Event-ID`), in the classic dialect or in Stalwart v0.16's, the stream places of
//! a principal, and the live-token endpoints (classic JSON, and v0.16's raw text).

use super::{json_ok, ConnInfo, Ctx, HttpError, LiveBody, RequestBody};
use crate::auth::principal::{acquire_stream, StreamSlot};
use crate::auth::{Grant, Permission, Principal};
use crate::event::dialect::WireForm;
use crate::event::encode::now_secs;
use crate::event::v016;
use crate::matcher::replay::{self, ResumeFrom};
use crate::query::{pairs, parse_live_request, Expr, ParseError};
use crate::sse::SseBody;
use crate::subscriber::StreamOwner;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

/// A `Last-Event-ID` header's value: an id livetap sent (decimal digits, surrounding spaces
/// allowed), or a 400 naming the header.
fn parse_last_event_id(v: &[u8]) -> Result<u64, HttpError> {
    std::str::from_utf8(v).ok().map(str::trim).and_then(|t| t.parse::<u64>().ok()).ok_or_else(|| {
        HttpError::BadQuery(ParseError {
            parameter: "Last-Event-ID".into(),
            position: 0,
            expected: "the numeric id of an event this stream sent".into(),
        })
    })
}

/// Takes one of the principal's live-stream places.
pub(super) fn stream_slot(p: &Arc<Principal>) -> Result<StreamSlot, HttpError> {
    acquire_stream(p).map_err(|cap| HttpError::TooMany {
        detail: format!("principal `{}` holds its maximum of {cap} live streams", p.name),
        retry_after: 5,
    })
}

/// `GET /api/telemetry/live/{tracing,metrics}-token`: `{"data":"<token>"}`.
pub(super) fn live_token(ctx: &Ctx, p: &Principal, grant: Grant) -> Result<Response<LiveBody>, HttpError> {
    let token = issue(ctx, p, grant)?;
    Ok(json_ok(StatusCode::OK, &serde_json::json!({ "data": token })))
}

fn issue(ctx: &Ctx, p: &Principal, grant: Grant) -> Result<String, HttpError> {
    ctx.security
        .tokens
        .issue(&p.name, grant, now_secs().max(0) as u64)
        .map_err(|e| HttpError::Internal(e.to_string()))
}

/// The most of a token request's body that is read (and ignored), as Stalwart v0.16 reads it.
pub(super) const MAX_TOKEN_BODY: usize = 1 << 20;

/// `GET|POST /api/token/{tracing,metrics}` (Stalwart v0.16): the token as the raw body text,
/// with `Cache-Control: no-cache` and no content type, as Stalwart answers. A POST body is read
/// (at most [`MAX_TOKEN_BODY`], within `body-timeout-secs`) and ignored.
pub(super) async fn live_token_text(
    ctx: &Ctx,
    p: &Principal,
    grant: Grant,
    req: Request<RequestBody>,
) -> Result<Response<LiveBody>, HttpError> {
    if req.method() == Method::POST {
        drain_body(req, MAX_TOKEN_BODY, ctx.hub.current().body_timeout_secs).await?;
    }
    let token = issue(ctx, p, grant)?;
    let mut r = Response::new(LiveBody::Full(Some(Bytes::from(token))));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// Reads a request body to its end without keeping it: at most `max` bytes, within `secs`.
async fn drain_body(req: Request<RequestBody>, max: usize, secs: u64) -> Result<(), HttpError> {
    let mut body = req.into_body();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut total = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(HttpError::Timeout(secs)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(HttpError::Io(e.to_string())),
            Ok(Some(Ok(frame))) => {
                total += frame.data_ref().map_or(0, |d| d.len());
                if total > max {
                    return Err(HttpError::PayloadTooLarge(max));
                }
            }
        }
    }
}

/// The parameter that picks the `keyValues` form of `/api/live/tracing` (either spelling).
pub(super) const KEY_VALUES: [&str; 2] = ["key-values", "keyValues"];

/// The registered dialect `/api/live/tracing` speaks: `key-values=array` (the default, what
/// the v0.16 web UI reads) or `key-values=object` (Stalwart's own index-keyed form). The last
/// one given counts.
fn key_values_dialect(query: &str) -> Result<&'static str, HttpError> {
    let mut name = v016::ARRAY;
    for pair in pairs(query) {
        let (k, v) = pair?;
        if KEY_VALUES.contains(&k.as_ref()) {
            name = match v.as_ref() {
                "array" => v016::ARRAY,
                "object" => v016::OBJECT,
                _ => {
                    return Err(HttpError::BadQuery(ParseError {
                        parameter: k.into_owned(),
                        position: 0,
                        expected: "array or object".into(),
                    }))
                }
            };
        }
    }
    Ok(name)
}

/// `GET /api/live/tracing` (Stalwart v0.16): the live traces stream in v0.16's event JSON,
/// opening with an `event: ping` frame as Stalwart's does; everything else (the query
/// language, `id:` lines and resume, lag reports) as on the classic endpoint.
pub(super) async fn live_tracing_v016(
    ctx: &Ctx,
    conn: &ConnInfo,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
) -> Result<Response<LiveBody>, HttpError> {
    let name = key_values_dialect(req.uri().query().unwrap_or(""))?;
    let form = ctx
        .hub
        .dialects
        .get(name)
        .ok_or_else(|| HttpError::Internal(format!("the `{name}` dialect is not registered")))?;
    let opening = Opening { ping_first: true, own: &KEY_VALUES };
    live_traces_with(ctx, conn, principal, req, form, opening).await
}

/// How a live traces stream opens, and which parameters its endpoint reads itself.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Opening {
    /// Send an `event: ping` frame at once (Stalwart v0.16's streams start with one).
    pub ping_first: bool,
    /// The endpoint's own query parameters, which the query parser skips.
    pub own: &'static [&'static str],
}

/// The principal's filter ANDed with the client's query: the index only ever sees both.
fn restrict(client: Expr, filter: Option<&Expr>) -> Expr {
    match (client, filter) {
        (c, None) => c,
        (Expr::True, Some(f)) => f.clone(),
        (Expr::And(mut items), Some(f)) => {
            items.push(f.clone());
            Expr::And(items)
        }
        (c, Some(f)) => Expr::And(vec![c, f.clone()]),
    }
}

/// `GET /api/telemetry/traces/live` (and its older path): a live SSE stream of the events
/// the query selects, in the wire form `form`, resumed after `Last-Event-ID` when asked.
pub(super) async fn live_traces(
    ctx: &Ctx,
    conn: &ConnInfo,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
    form: WireForm,
) -> Result<Response<LiveBody>, HttpError> {
    live_traces_with(ctx, conn, principal, req, form, Opening::default()).await
}

/// [`live_traces`], opening the stream as `opening` says. Unknown parameters that are near no
/// known name are ignored, and the stream's first lines name them (`: ignored parameter "x"`).
pub(super) async fn live_traces_with(
    ctx: &Ctx,
    conn: &ConnInfo,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
    form: WireForm,
    opening: Opening,
) -> Result<Response<LiveBody>, HttpError> {
    let hub = &ctx.hub;
    let query = req.uri().query().unwrap_or("");
    // Stalwart's endpoints ignore parameters Stalwart would ignore; livetap's own endpoint
    // keeps its strict rule, since an ignored name there could be a key no producer has sent
    // yet, and ignoring it would open the stream unfiltered.
    let q = if matches!(form, WireForm::Full) {
        crate::query::parse_pairs(query, &hub.keys, &hub.current().query_limits())?
    } else {
        parse_live_request(query, &hub.keys, &hub.current().query_limits(), opening.own)?
    };
    // An EventSource reconnect carries the last `id:` it saw as a header; it wins over the
    // parameter form. A header that is not one of our ids is refused like a bad
    // `last-event-id=`: starting a fresh stream instead would hide a gap from the client. A
    // browser does not retry a stream answered with an error status, so this cannot loop.
    let header_id = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => Some(parse_last_event_id(v.as_bytes())?),
    };
    let resume_from =
        header_id.or(q.last_event_id).map(ResumeFrom::AfterId).or(q.since.map(ResumeFrom::Since));
    drop(req);
    let slot = stream_slot(&principal)?;
    // A restricted principal does not follow spans: the rest of a span would reach it
    // unfiltered, including events its filter excludes.
    let follow = q.follow && principal.filter.is_none();
    let expr = restrict(q.expr, principal.filter.as_ref());
    // Who holds the stream and what it needs, for a configuration reload to check.
    let owner = StreamOwner {
        principal: principal.name.clone(),
        permission: Permission::TracingLive,
        filter: principal.filter.as_ref().map(|f| f.to_string()),
    };
    let subscription = hub
        .registry
        .subscribe_in(expr, follow, Some(conn.handle.clone()), form, Some(owner))
        .await
        .map_err(HttpError::Subscribers)?;
    // The request was authenticated against the principals in force then; a reload may have
    // replaced them since without seeing this stream, so it checks itself against the set in
    // force now (`reload::judge` says why that closes the gap).
    super::reload::judge(&subscription.sub, &ctx.security.principals.load());
    let resume = match resume_from {
        Some(from) => {
            let older = hub.older_events();
            Some(replay::prepare(&hub.replay, older, &subscription.sub, from, subscription.start).await)
        }
        None => None,
    };
    let mut body = SseBody::new(subscription, hub.closing.clone(), hub.current().ping_interval())
        .with_opening(&q.ignored, opening.ping_first);
    if let Some(resume) = resume {
        body = body.with_resume(resume);
    }
    let mut r = Response::new(LiveBody::Sse(Box::new(body), slot));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style reverse proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}
