//! The live endpoints: the live traces stream (its query, the principal's filter, resuming
//! after `Last-Event-ID`), the stream places of a principal, and the live-token endpoints.

use super::{json_ok, ConnInfo, Ctx, HttpError, LiveBody, RequestBody};
use crate::auth::principal::{acquire_stream, StreamSlot};
use crate::auth::{Grant, Principal};
use crate::event::dialect::WireForm;
use crate::event::encode::now_secs;
use crate::matcher::replay::{self, ResumeFrom};
use crate::query::{parse_pairs, Expr, ParseError};
use crate::sse::SseBody;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use std::sync::Arc;

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
    let token = ctx
        .security
        .tokens
        .issue(&p.name, grant, now_secs().max(0) as u64)
        .map_err(|e| HttpError::Internal(e.to_string()))?;
    Ok(json_ok(StatusCode::OK, &serde_json::json!({ "data": token })))
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
    let hub = &ctx.hub;
    let q = parse_pairs(req.uri().query().unwrap_or(""), &hub.keys, &hub.config.query_limits())?;
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
    let subscription = hub
        .registry
        .subscribe_in(expr, follow, Some(conn.handle.clone()), form)
        .await
        .map_err(HttpError::Subscribers)?;
    let resume = match resume_from {
        Some(from) => {
            let older = hub.older_events();
            Some(replay::prepare(&hub.replay, older, &subscription.sub, from, subscription.start).await)
        }
        None => None,
    };
    let mut body = SseBody::new(subscription, hub.closing.clone(), hub.config.ping_interval());
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
