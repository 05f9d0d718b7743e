//! The HTTP surface: routing, authentication, ingest endpoints and the live SSE endpoints.
//!
//! Every failure is an [`HttpError`] that knows its status and renders the JSON body
//! `{"error": "...", "detail": "..."}`; nothing a client sends can make a handler panic.

mod metrics;
pub mod server;

use crate::auth::{self, AuthError};
use crate::event::encode::now_secs;
use crate::hub::{Hub, PublishError};
use crate::ingest::{self, LineError, ParsedBatch};
use crate::metrics::stream::MetricsBody;
use crate::query::{parse_pairs, ParseError};
use crate::sse::{SseBody, SseChunk};
use crate::subscriber::registry::RegistryError;
use crate::subscriber::ConnHandle;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::Serialize;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Authentication failed (401).
    #[error("unauthorized")]
    Unauthorized(#[from] AuthError),
    /// A bad query parameter (400).
    #[error("invalid query")]
    BadQuery(#[from] ParseError),
    /// A malformed request body (400).
    #[error("invalid body")]
    BadBody(String),
    /// No such endpoint (404).
    #[error("not found")]
    NotFound,
    /// The endpoint exists for another method (405).
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// The body is larger than the configured cap (413).
    #[error("payload too large")]
    PayloadTooLarge(usize),
    /// The ring is full; retry later (503 with Retry-After).
    #[error("busy")]
    Busy(PublishError),
    /// Too many subscribers (503).
    #[error("subscriber limit")]
    Subscribers(RegistryError),
    /// Reading the request failed.
    #[error("bad request")]
    Io(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<&'a str>,
}

impl HttpError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HttpError::BadQuery(_) | HttpError::BadBody(_) | HttpError::Io(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Busy(PublishError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Busy(_) | HttpError::Subscribers(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Renders the error as a JSON response.
    pub fn into_response(self) -> Response<LiveBody> {
        let (error, detail) = match &self {
            HttpError::Unauthorized(e) => ("unauthorized", e.to_string()),
            HttpError::BadQuery(e) => ("invalid query parameter", e.to_string()),
            HttpError::BadBody(d) => ("invalid body", d.clone()),
            HttpError::NotFound => ("not found", "no such endpoint".into()),
            HttpError::MethodNotAllowed(allow) => ("method not allowed", format!("use {allow}")),
            HttpError::PayloadTooLarge(n) => ("payload too large", format!("the limit is {n} bytes")),
            HttpError::Busy(e) => ("unavailable", e.to_string()),
            HttpError::Subscribers(e) => ("unavailable", e.to_string()),
            HttpError::Io(d) => ("bad request", d.clone()),
        };
        // Query errors also say where in the parameter's value the problem is and what was
        // expected there, so a dashboard can point at it.
        let (parameter, position, expected) = match &self {
            HttpError::BadQuery(q) => (
                Some(q.parameter.as_str()).filter(|p| !p.is_empty()),
                Some(q.position),
                Some(q.expected.as_str()),
            ),
            _ => (None, None, None),
        };
        let body = serde_json::to_vec(&ErrorBody { error, detail, parameter, position, expected })
            .unwrap_or_default();
        let mut resp = json_response(self.status(), body);
        match &self {
            HttpError::Unauthorized(_) => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            HttpError::Busy(PublishError::Busy | PublishError::ShuttingDown) | HttpError::Subscribers(_) => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            HttpError::MethodNotAllowed(allow) => {
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

/// Response bodies: a whole buffer, or a live SSE stream.
pub enum LiveBody {
    /// A complete body, sent once.
    Full(Option<Bytes>),
    /// A live stream.
    Sse(Box<SseBody>),
    /// A live metrics stream.
    Metrics(Box<MetricsBody>),
}

impl Body for LiveBody {
    type Data = SseChunk;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<SseChunk>, Infallible>>> {
        match self.get_mut() {
            LiveBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(SseChunk::single(b))))),
            LiveBody::Sse(s) => Pin::new(s.as_mut()).poll_frame(cx),
            LiveBody::Metrics(m) => Pin::new(m.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LiveBody::Full(b) => b.is_none(),
            LiveBody::Sse(s) => s.is_end_stream(),
            LiveBody::Metrics(m) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LiveBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            LiveBody::Full(None) => SizeHint::with_exact(0),
            LiveBody::Sse(_) | LiveBody::Metrics(_) => SizeHint::default(),
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<LiveBody> {
    let mut r = Response::new(LiveBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_ok<T: Serialize>(status: StatusCode, v: &T) -> Response<LiveBody> {
    json_response(status, serde_json::to_vec(v).unwrap_or_default())
}

/// Routes one request. Never fails: errors become JSON responses.
pub async fn handle(
    hub: Arc<Hub>,
    conn: Arc<ConnHandle>,
    req: Request<Incoming>,
) -> Result<Response<LiveBody>, Infallible> {
    Ok(route(hub, conn, req).await.unwrap_or_else(HttpError::into_response))
}

async fn route(
    hub: Arc<Hub>,
    conn: Arc<ConnHandle>,
    req: Request<Incoming>,
) -> Result<Response<LiveBody>, HttpError> {
    let path = req.uri().path();
    match path {
        "/healthz" => {
            expect_method(&req, &Method::GET, "GET")?;
            Ok(json_ok(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        "/api/telemetry/traces/live" | "/api/tracing/live" => {
            expect_method(&req, &Method::GET, "GET")?;
            admin(&hub, &req)?;
            live_traces(hub, conn, req).await
        }
        "/api/telemetry/webhook" => {
            expect_method(&req, &Method::POST, "POST")?;
            webhook(hub, req).await
        }
        "/api/telemetry/ingest" => {
            expect_method(&req, &Method::POST, "POST")?;
            admin(&hub, &req)?;
            ingest_ndjson(hub, req).await
        }
        "/api/telemetry/metrics/live" => {
            expect_method(&req, &Method::GET, "GET")?;
            admin(&hub, &req)?;
            metrics::live_metrics(hub, req)
        }
        "/metrics" => {
            expect_method(&req, &Method::GET, "GET")?;
            admin(&hub, &req)?;
            Ok(metrics::prometheus(&hub))
        }
        "/api/livetap/stats" => {
            expect_method(&req, &Method::GET, "GET")?;
            admin(&hub, &req)?;
            Ok(json_ok(StatusCode::OK, &hub.stats()))
        }
        _ => Err(HttpError::NotFound),
    }
}

fn expect_method(req: &Request<Incoming>, m: &Method, allow: &'static str) -> Result<(), HttpError> {
    if req.method() == m || (m == Method::GET && req.method() == Method::HEAD) {
        Ok(())
    } else {
        Err(HttpError::MethodNotAllowed(allow))
    }
}

fn admin(hub: &Hub, req: &Request<Incoming>) -> Result<(), HttpError> {
    let h = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    auth::check_bearer(h, &hub.admin_token).map_err(|e| {
        hub.ingest.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HttpError::Unauthorized(e)
    })
}

async fn live_traces(
    hub: Arc<Hub>,
    conn: Arc<ConnHandle>,
    req: Request<Incoming>,
) -> Result<Response<LiveBody>, HttpError> {
    let q = parse_pairs(req.uri().query().unwrap_or(""), &hub.keys, &hub.config.query_limits())?;
    let subscription =
        hub.registry.subscribe(q.expr, q.follow, Some(conn)).await.map_err(HttpError::Subscribers)?;
    let body = SseBody::new(subscription, hub.closing.clone(), hub.config.ping_interval());
    let mut r = Response::new(LiveBody::Sse(Box::new(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style reverse proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

async fn read_body(hub: &Hub, req: Request<Incoming>) -> Result<Vec<u8>, HttpError> {
    let limit = hub.config.max_body_bytes;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        if len.to_str().ok().and_then(|s| s.parse::<u64>().ok()).is_some_and(|n| n > limit as u64) {
            return Err(HttpError::PayloadTooLarge(limit));
        }
    }
    let body = http_body_util::Limited::new(req.into_body(), limit);
    match body.collect().await {
        Ok(c) => Ok(c.to_bytes().into()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError::PayloadTooLarge(limit)),
        Err(e) => Err(HttpError::Io(e.to_string())),
    }
}

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
    /// Metric records applied (present when the body had any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<usize>,
    /// Present when nothing was valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

async fn publish_batch(hub: &Hub, mut parsed: ParsedBatch) -> Result<Response<LiveBody>, HttpError> {
    let wait = Duration::from_millis(hub.config.ingest_wait_ms);
    let (first_id, last_id) = if parsed.events.is_empty() {
        (None, None)
    } else {
        let first = hub.publish(&parsed.events, Some(wait)).await.map_err(HttpError::Busy)?;
        (Some(first + 1), Some(first + parsed.events.len() as u64))
    };
    // Metric records count only once the batch is accepted, so a refused batch that the
    // producer sends again does not add its counter increments twice.
    let had_records = !parsed.samples.is_empty();
    let applied = metrics::apply_records(hub, &mut parsed);
    hub.ingest.rejected.fetch_add(parsed.rejected as u64, std::sync::atomic::Ordering::Relaxed);
    let all_bad = parsed.events.is_empty() && applied == 0 && parsed.rejected > 0;
    let answer = IngestAnswer {
        accepted: parsed.events.len(),
        rejected: parsed.rejected,
        errors: parsed.errors,
        first_id,
        last_id,
        metrics: had_records.then_some(applied),
        error: all_bad.then_some("no valid event in the body"),
    };
    let status = if all_bad { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok(json_ok(status, &answer))
}

async fn ingest_ndjson(hub: Arc<Hub>, req: Request<Incoming>) -> Result<Response<LiveBody>, HttpError> {
    if !hub.is_accepting() {
        return Err(HttpError::Busy(PublishError::ShuttingDown));
    }
    let mut body = read_body(&hub, req).await?;
    let parsed = ingest::parse_ndjson(&mut body, &mut hub.builder(), now_secs());
    publish_batch(&hub, parsed).await
}

async fn webhook(hub: Arc<Hub>, req: Request<Incoming>) -> Result<Response<LiveBody>, HttpError> {
    // With a key configured, the signature authenticates Stalwart; without one, the admin
    // bearer token is required like everywhere else.
    let sig = req.headers().get("x-signature").map(|v| v.as_bytes().to_vec());
    let key = hub.config.webhook_key.clone();
    if key.is_none() {
        admin(&hub, &req)?;
    }
    if !hub.is_accepting() {
        return Err(HttpError::Busy(PublishError::ShuttingDown));
    }
    let mut body = read_body(&hub, req).await?;
    if let Some(key) = key {
        auth::verify_signature(sig.as_deref(), &key, &body).map_err(|e| {
            hub.ingest.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            HttpError::Unauthorized(e)
        })?;
    }
    let parsed =
        ingest::parse_webhook(&mut body, &mut hub.builder(), now_secs()).map_err(HttpError::BadBody)?;
    publish_batch(&hub, parsed).await
}
