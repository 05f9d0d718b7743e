//! The ingest endpoints: NDJSON bodies and Stalwart's webhook, read through the ingest gate,
//! parsed, charged to the principal's rate and published whole or refused whole
//! ([`IngestAnswer`]).

use super::{bump, gate, json_ok, metrics, Ctx, HttpError, LiveBody, RequestBody};
use crate::auth::{self, Principal};
use crate::event::encode::now_secs;
use crate::event::EventBuilder;
use crate::hub::{Hub, PublishError};
use crate::ingest::{self, LineError, ParsedBatch};
use http::header;
use http::{Request, Response, StatusCode};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The JSON answer of the ingest endpoints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestAnswer {
    /// Events accepted.
    pub accepted: usize,
    /// Lines or events rejected.
    pub rejected: usize,
    /// The first rejections, with line numbers and reasons.
    pub errors: Vec<LineError>,
    /// Stream id (`id:`) of the first accepted event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_id: Option<u64>,
    /// Stream id of the last accepted event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_id: Option<u64>,
    /// Events of a webhook body recognised as resends of events already published, and not
    /// published again (present when there were any; `ingest::dedupe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<usize>,
    /// Metric records applied (present when the body had any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<usize>,
    /// Present when nothing was valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

impl IngestAnswer {
    /// The answer as a response: `400` when nothing in the body was valid, else `200`.
    pub(super) fn respond(self) -> Response<LiveBody> {
        let status = if self.error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
        json_ok(status, &self)
    }
}

/// Publishes a parsed body and answers with what was accepted and rejected.
async fn publish_batch(hub: &Hub, mut parsed: ParsedBatch) -> Result<Response<LiveBody>, HttpError> {
    let wait = Duration::from_millis(hub.current().ingest_wait_ms);
    let accepted = parsed.events.len();
    let (first_id, last_id) = if accepted == 0 {
        (None, None)
    } else {
        let first = hub.publish(&mut parsed.events, Some(wait)).await.map_err(HttpError::Busy)?;
        (Some(first + 1), Some(first + accepted as u64))
    };
    // Metric records count only once the batch is accepted, so a refused batch that the
    // producer sends again does not add its counter increments twice.
    let had_records = !parsed.samples.is_empty();
    let applied = metrics::apply_records(hub, &mut parsed);
    hub.ingest.rejected.fetch_add(parsed.rejected as u64, Ordering::Relaxed);
    let all_bad = accepted == 0 && applied == 0 && parsed.rejected > 0;
    let answer = IngestAnswer {
        accepted,
        rejected: parsed.rejected,
        errors: parsed.errors,
        first_id,
        last_id,
        duplicates: None,
        metrics: had_records.then_some(applied),
        error: all_bad.then_some("no valid event in the body"),
    };
    Ok(answer.respond())
}

/// Refuses a principal that is over its ingest rate (before its body is read).
pub(super) fn check_rate(ctx: &Ctx, p: Option<&Principal>) -> Result<(), HttpError> {
    let Some(limiter) = p.and_then(|p| p.ingest_rate.as_ref()) else { return Ok(()) };
    limiter.take(0).map_err(|wait| {
        bump(&ctx.hub.ingest.rate_limited);
        HttpError::TooMany {
            detail: format!(
                "principal `{}` is over its ingest rate; send again after Retry-After",
                p.map_or("", |p| p.name.as_str())
            ),
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    })
}

/// Charges what a body brought to its principal's ingest rate.
fn charge(p: Option<&Principal>, parsed: &ParsedBatch) {
    if let Some(limiter) = p.and_then(|p| p.ingest_rate.as_ref()) {
        let _ = limiter.take((parsed.events.len() + parsed.samples.len()) as u64);
    }
}

/// The declared `Content-Length` of a request, if any.
pub(super) fn content_length(req: &Request<RequestBody>) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
}

/// The source an authenticated request's body is counted against (`None` for the admin
/// token, which is exempt as for its streams).
pub(super) fn principal_source(p: Option<&Principal>) -> Option<gate::Source> {
    p.filter(|p| p.name != auth::principal::ADMIN).map(|p| gate::Source::Principal(p.name.clone()))
}

/// Refuses a body that held more events than the ring can take: nothing of it is accepted, and
/// the memory its events took goes back to the system.
fn refuse_overflow(hub: &Hub, parsed: ParsedBatch, body_len: usize) -> HttpError {
    drop(parsed);
    bump(&hub.ingest.refused_batches);
    gate::give_back_after(body_len);
    HttpError::BatchTooLarge(hub.ring.capacity())
}

/// `POST /api/telemetry/ingest`: an NDJSON body of events and metric records.
pub(super) async fn ingest_ndjson(
    ctx: &Ctx,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
) -> Result<Response<LiveBody>, HttpError> {
    ingest_body(ctx, principal, req, |body, b, now, cap| Ok(ingest::parse_ndjson_capped(body, b, now, cap)))
        .await
}

/// What an authenticated ingest endpoint does with its body, whatever the body's format:
/// the principal's rate, the gate's place, budget and parse slot, `parse` (given the body,
/// a builder, the time and the most events the ring can take), the overflow check, and the
/// publication. `parse` refuses a body it cannot read with its own error.
pub(super) async fn ingest_body(
    ctx: &Ctx,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
    parse: impl FnOnce(&mut Vec<u8>, &mut EventBuilder<'_>, i64, usize) -> Result<ParsedBatch, HttpError>,
) -> Result<Response<LiveBody>, HttpError> {
    check_rate(ctx, Some(&principal))?;
    if !ctx.hub.is_accepting() {
        return Err(HttpError::Busy(PublishError::ShuttingDown));
    }
    let hub = &ctx.hub;
    let _place = ctx.gate.enter(hub, principal_source(Some(&principal)))?;
    let length = content_length(&req);
    let mut body = ctx.gate.read(hub, req.into_body(), length, gate::Budget::Trusted).await?;
    let _slot = ctx.gate.parse_slot(hub).await?;
    let cap = hub.ring.capacity() as usize;
    let parsed = parse(&mut body.bytes, &mut hub.builder(), now_secs(), cap);
    let body_len = body.bytes.len();
    drop(body);
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            gate::give_back_after(body_len);
            return Err(e);
        }
    };
    if parsed.overflow {
        return Err(refuse_overflow(hub, parsed, body_len));
    }
    charge(Some(&principal), &parsed);
    let answer = publish_batch(hub, parsed).await;
    gate::give_back_after(body_len);
    answer
}
