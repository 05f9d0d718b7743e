//! The metrics endpoints: the live metrics stream, the Prometheus exposition, and applying
//! producers' metric records from an ingest body.

use super::{HttpError, LiveBody, RequestBody};
use crate::auth::principal::StreamSlot;
use crate::auth::Permission;
use crate::hub::Hub;
use crate::ingest::ParsedBatch;
use crate::matcher::registry::RegistryError;
use crate::metrics::prometheus;
use crate::metrics::query::parse_live;
use crate::sse::metrics::{frame, MetricsBody, SampleForm};
use crate::sse::prelude;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

/// `GET /api/telemetry/metrics/live?metrics=a,b&interval=N` (and its siblings
/// `/api/livetap/live/metrics` and `/api/live/metrics`, which differ only in `form`):
/// `event: metrics` frames, the first at once, then one per interval, until the client leaves
/// or shutdown.
pub(super) fn live_metrics(
    ctx: &super::Ctx,
    req: Request<RequestBody>,
    slot: StreamSlot,
    form: SampleForm,
) -> Result<Response<LiveBody>, HttpError> {
    let hub = ctx.hub.clone();
    let c = hub.current();
    let q = parse_live(
        req.uri().query().unwrap_or(""),
        c.metrics_max_interval_secs,
        c.max_query_terms,
        c.max_query_bytes,
    )?;
    if !hub.is_accepting() {
        return Err(HttpError::Subscribers(RegistryError::Closed));
    }
    // Metrics streams are bounded like trace subscribers: each holds a connection and a timer.
    if hub.metrics.streams() >= c.max_subscribers {
        return Err(HttpError::Subscribers(RegistryError::Full(c.max_subscribers)));
    }
    let guard = hub.metrics.open_stream();
    let mut closed = hub.streams_closed_signal();
    let mut principals = hub.principals_signal();
    let security = ctx.security.clone();
    let name = slot.principal().name.clone();
    let closed = Box::pin(async move {
        // Ends when shutdown has matched everything accepted, or when the hub is gone; or,
        // with a last frame, when a reload removed the principal or its permission. The first
        // check comes before any signal: the request was authenticated against the principals
        // in force then, and a reload that swapped them before `principals` subscribed would
        // not signal it (its swap comes before its signal, so the check sees the new set).
        let mut check = true;
        loop {
            if *closed.borrow_and_update() {
                return None;
            }
            if check {
                let set = security.principals.load();
                if let Some(detail) = super::reload::forbidden(&set, &name, Permission::MetricsLive) {
                    tracing::info!("{detail}: metrics stream closed");
                    return Some(crate::sse::error_frame("forbidden", &detail));
                }
            }
            tokio::select! {
                r = closed.changed() => {
                    if r.is_err() {
                        return None;
                    }
                    check = false;
                }
                r = principals.changed() => {
                    if r.is_err() {
                        return None;
                    }
                    check = true;
                }
            }
        }
    });
    let ping = c.ping_interval();
    let source_hub = hub.clone();
    let filter = q.filter;
    let source = Box::new(move || frame(&source_hub.metric_values(&filter), form));
    let mut body = MetricsBody::new(source, q.interval, ping, closed, guard)
        .with_prelude(prelude("livetap metrics stream", &q.ignored));
    if form == SampleForm::V016 {
        body = body.with_comment_pings();
    }
    let mut r = Response::new(LiveBody::Metrics(Box::new(body), slot));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style reverse proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// `GET /metrics` and `GET /metrics/prometheus`: every metric in the Prometheus text exposition
/// format, counters named conventionally (`_total`) on the first and as Stalwart's exporter
/// names them on the second, Stalwart's own path.
pub(super) fn prometheus(hub: &Hub, naming: prometheus::Naming) -> Response<LiveBody> {
    let values = hub.metric_values(&crate::metrics::query::NameFilter::all());
    let mut text = String::with_capacity(64 * 1024);
    prometheus::write_text_named(&values, naming, &mut text);
    let mut r = Response::new(LiveBody::Full(Some(Bytes::from(text))));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Applies the metric records of an accepted ingest body (see [`ParsedBatch::apply_samples`]).
pub(super) fn apply_records(hub: &Hub, parsed: &mut ParsedBatch) -> usize {
    parsed.apply_samples(&hub.metrics)
}
