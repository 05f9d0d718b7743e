//! The HTTP surface: routing, the permission each route needs, request limits, ingest
//! endpoints, live tokens and the live SSE endpoints.
//!
//! Every failure is an [`HttpError`] that knows its status and renders the JSON body
//! `{"error": "...", "detail": "..."}`; nothing a client sends can make a handler panic.
//! Who the caller is comes from [`crate::auth::Security`]; which permission a route needs is
//! decided here, in [`route`]. `server.rs` owns the listener and the connection-level limits,
//! `limits.rs` the connection caps and the write timeout, `tls.rs` the certificates and `cors.rs`
//! the browser-origin rules.

pub mod cors;
mod dashboard;
pub mod direct;
pub mod gate;
mod history;
pub mod limits;
mod metrics;
pub mod server;
pub mod tls;

use crate::auth::principal::{acquire_stream, StreamSlot};
use crate::auth::{self, AuthError, Grant, Permission, PresentedToken, Principal, Security};
use crate::event::encode::now_secs;
use crate::hub::{Hub, PublishError};
use crate::ingest::{self, LineError, ParsedBatch};
use crate::metrics::stream::MetricsBody;
use crate::query::{parse_pairs, Expr, ParseError};
use crate::sse::{SseBody, SseChunk};
use crate::subscriber::registry::RegistryError;
use crate::subscriber::replay::{self, ResumeFrom};
use crate::subscriber::ConnHandle;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Authentication failed (401).
    #[error("unauthorized")]
    Unauthorized(#[from] AuthError),
    /// Authenticated, but without the permission the route needs (403).
    #[error("forbidden")]
    Forbidden(Permission),
    /// The request's `Origin` may not call the API (403).
    #[error("origin not allowed")]
    OriginNotAllowed,
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
    /// The body did not arrive within `body-timeout-secs` (408).
    #[error("request timeout")]
    Timeout(u64),
    /// The body is larger than the configured cap (413).
    #[error("payload too large")]
    PayloadTooLarge(usize),
    /// The request target is longer than `max-url-bytes` (414).
    #[error("URI too long")]
    UriTooLong(usize),
    /// The header fields are larger than `max-header-bytes` (431).
    #[error("headers too large")]
    HeadersTooLarge(usize),
    /// A rate or count limit; retry after the given seconds (429).
    #[error("too many requests")]
    TooMany {
        /// What was limited.
        detail: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The ring is full, or the hub is shutting down; retry later (503 with Retry-After).
    #[error("busy")]
    Busy(PublishError),
    /// The ingest gate's memory budget or parse slots stayed in use for `ingest-wait-ms`
    /// (503 with Retry-After); the detail says which.
    #[error("ingest busy")]
    IngestBusy(String),
    /// A body held more events than the ring can ever take at once (413).
    #[error("batch too large")]
    BatchTooLarge(u64),
    /// Too many subscribers (503).
    #[error("subscriber limit")]
    Subscribers(RegistryError),
    /// Reading the request failed.
    #[error("bad request")]
    Io(String),
    /// Something on livetap's side failed (500).
    #[error("internal error")]
    Internal(String),
    /// The history API was asked for while no history store is open.
    #[error("history is not enabled")]
    HistoryOff,
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
            HttpError::Forbidden(_) | HttpError::OriginNotAllowed => StatusCode::FORBIDDEN,
            HttpError::BadQuery(_) | HttpError::BadBody(_) | HttpError::Io(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            HttpError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            HttpError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HttpError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            HttpError::Busy(PublishError::TooLarge(_)) | HttpError::BatchTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            HttpError::Busy(_) | HttpError::Subscribers(_) | HttpError::IngestBusy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HttpError::HistoryOff => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Renders the error as a JSON response.
    pub fn into_response(self) -> Response<LiveBody> {
        let (error, detail) = match &self {
            HttpError::Unauthorized(e) => ("unauthorized", e.to_string()),
            HttpError::Forbidden(p) => {
                ("forbidden", format!("this principal lacks the `{}` permission", p.name()))
            }
            HttpError::OriginNotAllowed => ("forbidden", "this origin is not in cors-origins".to_string()),
            HttpError::BadQuery(e) => ("invalid query parameter", e.to_string()),
            HttpError::BadBody(d) => ("invalid body", d.clone()),
            HttpError::NotFound => ("not found", "no such endpoint".into()),
            HttpError::MethodNotAllowed(allow) => ("method not allowed", format!("use {allow}")),
            HttpError::Timeout(s) => ("request timeout", format!("the body must arrive within {s} s")),
            HttpError::PayloadTooLarge(n) => ("payload too large", format!("the limit is {n} bytes")),
            HttpError::UriTooLong(n) => ("URI too long", format!("the limit is {n} bytes of path and query")),
            HttpError::HeadersTooLarge(n) => {
                ("headers too large", format!("the limit is {n} bytes of header fields"))
            }
            HttpError::TooMany { detail, .. } => ("too many requests", detail.clone()),
            HttpError::Busy(PublishError::TooLarge(n)) => ("batch too large", too_many_events(*n)),
            HttpError::BatchTooLarge(n) => ("batch too large", too_many_events(*n)),
            HttpError::Busy(e) => ("unavailable", e.to_string()),
            HttpError::IngestBusy(d) => ("ingest busy", d.clone()),
            HttpError::Subscribers(e) => ("unavailable", e.to_string()),
            HttpError::Io(d) => ("bad request", d.clone()),
            HttpError::Internal(d) => ("internal error", d.clone()),
            HttpError::HistoryOff => (
                "unavailable",
                "history is not enabled: start livetap with --data-dir (and keep [history] enabled)"
                    .to_string(),
            ),
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
            HttpError::Busy(PublishError::Busy | PublishError::ShuttingDown)
            | HttpError::Subscribers(_)
            | HttpError::IngestBusy(_) => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            HttpError::TooMany { retry_after, .. } => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            HttpError::MethodNotAllowed(allow) => {
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

/// The detail of a 413 for a batch the ring can never hold.
fn too_many_events(ring: u64) -> String {
    format!("the body's batch of events is larger than the event ring ({ring} slots); send smaller batches")
}

/// Request bodies: hyper's, or none for a live-stream request read by [`direct`] (a `GET`
/// whose head livetap parsed itself). One type, so the handlers exist once.
pub type RequestBody = http_body_util::Either<Incoming, http_body_util::Empty<Bytes>>;

/// Response bodies: a whole buffer, or a live SSE stream.
pub enum LiveBody {
    /// A complete body, sent once.
    Full(Option<Bytes>),
    /// A live stream, holding its principal's stream place while it lasts.
    Sse(Box<SseBody>, StreamSlot),
    /// A live metrics stream, holding its principal's stream place while it lasts.
    Metrics(Box<MetricsBody>, StreamSlot),
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
            LiveBody::Sse(s, _) => Pin::new(s.as_mut()).poll_frame(cx),
            LiveBody::Metrics(m, _) => Pin::new(m.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LiveBody::Full(b) => b.is_none(),
            LiveBody::Sse(s, _) => s.is_end_stream(),
            LiveBody::Metrics(m, _) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LiveBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            LiveBody::Full(None) => SizeHint::with_exact(0),
            LiveBody::Sse(..) | LiveBody::Metrics(..) => SizeHint::default(),
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

/// What every request handler shares: the pipeline, the access rules and the ingest gate.
pub struct Ctx {
    /// The pipeline.
    pub hub: Arc<Hub>,
    /// Who may do what.
    pub security: Arc<Security>,
    /// Which browser origins may call.
    pub cors: cors::Cors,
    /// What ingest bodies may hold while they are read and parsed, and who may hold it.
    pub gate: gate::IngestGate,
}

impl Ctx {
    /// The shared state of the handlers of one server.
    pub fn new(hub: Arc<Hub>, security: Arc<Security>) -> Ctx {
        let cors = cors::Cors::new(&hub.config);
        let gate = gate::IngestGate::new(&hub.config);
        Ctx { hub, security, cors, gate }
    }
}

/// The connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Lets the hub close the connection (stalled subscribers).
    pub handle: Arc<ConnHandle>,
}

/// Routes one request. Never fails: errors become JSON responses, with the CORS headers the
/// request's origin is entitled to.
pub async fn handle(
    ctx: Arc<Ctx>,
    conn: Arc<ConnInfo>,
    req: Request<RequestBody>,
) -> Result<Response<LiveBody>, Infallible> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = route(&ctx, &conn, req).await.unwrap_or_else(HttpError::into_response);
    if resp.status() == StatusCode::UNAUTHORIZED && ctx.security.principals.has_passwords() {
        resp.headers_mut()
            .append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"livetap\""));
    }
    ctx.cors.decorate(origin.as_ref(), resp.headers_mut());
    Ok(resp)
}

/// What a route needs: a permission, and the grant of the live tokens it accepts (if any).
type Access = Option<(Permission, Option<Grant>)>;

/// The routes: path, method, and the access each needs.
const ROUTES: &[(&str, Method, Access)] = &[
    ("/healthz", Method::GET, None),
    // The dashboard's files hold no data, so they need no credentials (see dashboard.rs).
    ("/", Method::GET, None),
    ("/assets/{path}", Method::GET, None),
    ("/api/livetap/query-check", Method::GET, Some((Permission::TracingLive, None))),
    ("/api/livetap/span", Method::POST, Some((Permission::TracingLive, None))),
    ("/api/telemetry/traces/live", Method::GET, Some((Permission::TracingLive, Some(Grant::Tracing)))),
    ("/api/tracing/live", Method::GET, Some((Permission::TracingLive, Some(Grant::Tracing)))),
    ("/api/telemetry/metrics/live", Method::GET, Some((Permission::MetricsLive, Some(Grant::Metrics)))),
    ("/api/telemetry/live/tracing-token", Method::GET, Some((Permission::TracingLive, None))),
    ("/api/telemetry/live/metrics-token", Method::GET, Some((Permission::MetricsLive, None))),
    ("/metrics", Method::GET, Some((Permission::MetricsLive, None))),
    ("/api/telemetry/ingest", Method::POST, Some((Permission::Ingest, None))),
    // The webhook's permission applies only when no webhook key is set (else: X-Signature).
    ("/api/telemetry/webhook", Method::POST, Some((Permission::Ingest, None))),
    ("/api/livetap/stats", Method::GET, Some((Permission::Admin, None))),
    ("/api/telemetry/traces", Method::GET, Some((Permission::History, None))),
    ("/api/telemetry/trace/{id}", Method::GET, Some((Permission::History, None))),
    ("/api/telemetry/metrics", Method::GET, Some((Permission::History, None))),
];

fn allow_header(m: &Method) -> &'static str {
    if m == Method::POST {
        "POST"
    } else {
        "GET"
    }
}

async fn route(
    ctx: &Arc<Ctx>,
    conn: &ConnInfo,
    req: Request<RequestBody>,
) -> Result<Response<LiveBody>, HttpError> {
    check_head(ctx, &req)?;
    let full_path = req.uri().path().to_string();
    // `/api/telemetry/trace/{id}` and `/assets/{path}` are the routes with a parameter in their path.
    let path = match full_path.strip_prefix("/api/telemetry/trace/") {
        Some(id) if !id.is_empty() && !id.contains('/') => "/api/telemetry/trace/{id}",
        _ if full_path.starts_with("/assets/") => "/assets/{path}",
        _ => full_path.as_str(),
    };
    let Some((path, method, access)) = ROUTES.iter().find(|r| r.0 == path).cloned() else {
        return Err(HttpError::NotFound);
    };
    if req.method() == Method::OPTIONS {
        return ctx.cors.preflight(&req, allow_header(&method));
    }
    if !(req.method() == method || (method == Method::GET && req.method() == Method::HEAD)) {
        return Err(HttpError::MethodNotAllowed(allow_header(&method)));
    }
    if let Some(o) = req.headers().get(header::ORIGIN) {
        // A browser on an origin that is not allowed gets nothing, not even with credentials
        // it may have been tricked into sending.
        if !ctx.cors.is_empty() && !ctx.cors.allows(o) {
            return Err(HttpError::OriginNotAllowed);
        }
    }
    let hub = &ctx.hub;
    if path == "/api/telemetry/webhook" && hub.config.webhook_key.is_some() {
        return webhook(ctx, conn, req, None).await;
    }
    let principal = match access {
        None => None,
        Some((perm, grant)) => Some(authorize(ctx, conn, &req, perm, grant).await?),
    };
    let principal = || principal.clone().expect("routes with a permission are authorized");
    match path {
        "/healthz" => Ok(json_ok(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        "/" => Ok(dashboard::index(req.headers())),
        "/assets/{path}" => Ok(dashboard::asset(&full_path["/assets/".len()..], req.headers())),
        "/api/livetap/query-check" => dashboard::query_check(hub, req.uri().query().unwrap_or("")),
        "/api/livetap/span" => dashboard::span_lookup(hub, &principal(), req).await,
        "/api/telemetry/traces/live" | "/api/tracing/live" => live_traces(ctx, conn, principal(), req).await,
        "/api/telemetry/metrics/live" => {
            let slot = stream_slot(&principal())?;
            metrics::live_metrics(hub.clone(), req, slot)
        }
        "/api/telemetry/live/tracing-token" => live_token(ctx, &principal(), Grant::Tracing),
        "/api/telemetry/live/metrics-token" => live_token(ctx, &principal(), Grant::Metrics),
        "/metrics" => Ok(metrics::prometheus(hub)),
        "/api/telemetry/ingest" => ingest_ndjson(ctx, principal(), req).await,
        "/api/telemetry/webhook" => webhook(ctx, conn, req, Some(principal())).await,
        "/api/livetap/stats" => Ok(json_ok(StatusCode::OK, &hub.stats())),
        "/api/telemetry/traces" => history::traces(hub, req.uri().query().unwrap_or("")).await,
        "/api/telemetry/trace/{id}" => history::trace(hub, &full_path["/api/telemetry/trace/".len()..]).await,
        "/api/telemetry/metrics" => history::metrics(hub, req.uri().query().unwrap_or("")).await,
        _ => Err(HttpError::NotFound),
    }
}

/// Refuses request targets and header sections over their caps, with a JSON answer (hyper's
/// own buffer cap, which answers without a body, sits well above these).
fn check_head(ctx: &Ctx, req: &Request<RequestBody>) -> Result<(), HttpError> {
    let c = &ctx.hub.config;
    let url = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if url > c.max_url_bytes {
        bump(&ctx.hub.ingest.limit_refusals);
        return Err(HttpError::UriTooLong(c.max_url_bytes));
    }
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if headers > c.max_header_bytes {
        bump(&ctx.hub.ingest.limit_refusals);
        return Err(HttpError::HeadersTooLarge(c.max_header_bytes));
    }
    Ok(())
}

/// Adds one to a counter of the hub's statistics.
fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The single `token` parameter of a query, if any (twice is an error: which one would count?).
pub fn query_token(query: &str) -> Result<Option<String>, HttpError> {
    let mut found = None;
    // Strict decoding, as for every other parameter: a broken escape is a 400 naming the
    // parameter, not a token that then fails to verify.
    for pair in crate::query::pairs(query) {
        let (k, v) = pair?;
        if k == "token" {
            if found.is_some() {
                return Err(HttpError::BadQuery(ParseError {
                    parameter: "token".into(),
                    position: 0,
                    expected: "one token parameter".into(),
                }));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

/// Authenticates the request and checks `perm`. Live tokens count only on the live endpoint of
/// their `grant`. A source address with too many recent failures is refused before anything
/// is checked, so it cannot keep guessing.
async fn authorize(
    ctx: &Ctx,
    conn: &ConnInfo,
    req: &Request<RequestBody>,
    perm: Permission,
    grant: Option<Grant>,
) -> Result<Arc<Principal>, HttpError> {
    let sec = &ctx.security;
    let ip = conn.peer.ip();
    if let Some(wait) = sec.failures.locked(ip) {
        bump(&ctx.hub.ingest.auth_locked);
        return Err(HttpError::TooMany {
            detail: "too many failed authentications from this address".into(),
            retry_after: wait.as_secs().max(1),
        });
    }
    let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let token = match (grant, authorization) {
        (Some(_), None) => query_token(req.uri().query().unwrap_or(""))?,
        _ => None,
    };
    let reconnect = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.is_empty() && v.len() <= 20 && v.parse::<u64>().is_ok());
    let presented = match (&token, grant) {
        (Some(t), Some(g)) => Some(PresentedToken { token: t, grant: g, reconnect }),
        _ => None,
    };
    match sec.authenticate(authorization, presented, now_secs().max(0) as u64).await {
        Ok(p) if p.can(perm) => Ok(p),
        Ok(_) => Err(HttpError::Forbidden(perm)),
        Err(e) => {
            bump(&ctx.hub.ingest.auth_failures);
            sec.failures.fail(ip);
            Err(HttpError::Unauthorized(e))
        }
    }
}

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
fn stream_slot(p: &Arc<Principal>) -> Result<StreamSlot, HttpError> {
    acquire_stream(p).map_err(|cap| HttpError::TooMany {
        detail: format!("principal `{}` holds its maximum of {cap} live streams", p.name),
        retry_after: 5,
    })
}

/// `GET /api/telemetry/live/{tracing,metrics}-token`: `{"data":"<token>"}`.
fn live_token(ctx: &Ctx, p: &Principal, grant: Grant) -> Result<Response<LiveBody>, HttpError> {
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

async fn live_traces(
    ctx: &Ctx,
    conn: &ConnInfo,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
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
        .subscribe(expr, follow, Some(conn.handle.clone()))
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
        metrics: had_records.then_some(applied),
        error: all_bad.then_some("no valid event in the body"),
    };
    let status = if all_bad { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    Ok(json_ok(status, &answer))
}

/// Refuses a principal that is over its ingest rate (before its body is read).
fn check_rate(ctx: &Ctx, p: Option<&Principal>) -> Result<(), HttpError> {
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
fn content_length(req: &Request<RequestBody>) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
}

/// The source an authenticated request's body is counted against (`None` for the admin
/// token, which is exempt as for its streams).
fn principal_source(p: Option<&Principal>) -> Option<gate::Source> {
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

async fn ingest_ndjson(
    ctx: &Ctx,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
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
    let parsed = ingest::parse_ndjson_capped(&mut body.bytes, &mut hub.builder(), now_secs(), cap);
    let body_len = body.bytes.len();
    drop(body);
    if parsed.overflow {
        return Err(refuse_overflow(hub, parsed, body_len));
    }
    charge(Some(&principal), &parsed);
    let answer = publish_batch(hub, parsed).await;
    gate::give_back_after(body_len);
    answer
}

/// `POST /api/telemetry/webhook`. With `webhook-key` set, the signature authenticates
/// Stalwart (and `principal` is `None`); without one, the caller was authorized for `ingest`.
///
/// A signed body is read before anything proves who sent it, so until its signature checks it
/// is counted against its source address and draws from the gate's unverified budget, which
/// no authenticated producer uses ([`gate`]). It is parsed and published only once verified.
async fn webhook(
    ctx: &Ctx,
    conn: &ConnInfo,
    req: Request<RequestBody>,
    principal: Option<Arc<Principal>>,
) -> Result<Response<LiveBody>, HttpError> {
    let hub = &ctx.hub;
    let ip = conn.peer.ip();
    if principal.is_none() {
        if let Some(wait) = ctx.security.failures.locked(ip) {
            bump(&hub.ingest.auth_locked);
            return Err(HttpError::TooMany {
                detail: "too many failed authentications from this address".into(),
                retry_after: wait.as_secs().max(1),
            });
        }
    }
    check_rate(ctx, principal.as_deref())?;
    if !hub.is_accepting() {
        return Err(HttpError::Busy(PublishError::ShuttingDown));
    }
    let signed = hub.config.webhook_key.is_some();
    let (source, budget) = if signed {
        (Some(gate::Source::address(ip)), gate::Budget::Unverified)
    } else {
        (principal_source(principal.as_deref()), gate::Budget::Trusted)
    };
    let _place = ctx.gate.enter(hub, source)?;
    let sig = req.headers().get("x-signature").map(|v| v.as_bytes().to_vec());
    let length = content_length(&req);
    let mut body = ctx.gate.read(hub, req.into_body(), length, budget).await?;
    if let Some(key) = &hub.config.webhook_key {
        auth::verify_signature(sig.as_deref(), key, &body.bytes).map_err(|e| {
            bump(&hub.ingest.auth_failures);
            ctx.security.failures.fail(ip);
            HttpError::Unauthorized(e)
        })?;
    }
    let _slot = ctx.gate.parse_slot(hub).await?;
    let cap = hub.ring.capacity() as usize;
    let parsed = ingest::parse_webhook_capped(&mut body.bytes, &mut hub.builder(), now_secs(), cap)
        .map_err(HttpError::BadBody)?;
    let body_len = body.bytes.len();
    drop(body);
    if parsed.overflow {
        return Err(refuse_overflow(hub, parsed, body_len));
    }
    charge(principal.as_deref(), &parsed);
    let answer = publish_batch(hub, parsed).await;
    gate::give_back_after(body_len);
    answer
}
