//! The HTTP surface: routing, the permission each route needs, request limits, ingest
//! endpoints, live tokens and the live SSE endpoints.
//!
//! Every failure is an [`HttpError`] that knows its status and renders the JSON body
//! `{"error": "...", "detail": "..."}`; nothing a client sends can make a handler panic.
//! Who the caller is comes from [`crate::auth::Security`]; which permission a route needs is
//! decided here, in [`route`]. `server.rs` owns the listener and the connection-level limits,
//! `limits.rs` the connection caps and the write timeout, `tls.rs` the certificates and `cors.rs`
//! the browser-origin rules.
//!
//! The rest of the surface is split by what it serves: `error.rs` ([`HttpError`]), `body.rs`
//! ([`LiveBody`], [`RequestBody`], JSON responses), `ingest.rs` (the ingest and webhook
//! handlers, [`IngestAnswer`]), `dovecot.rs` (Dovecot's event exporter) and `live.rs` (the
//! live traces stream and the live tokens).

mod alerts;
mod body;
pub mod cors;
mod dashboard;
pub mod direct;
mod dovecot;
mod error;
pub mod gate;
mod history;
mod ingest;
pub mod limits;
mod live;
mod metrics;
mod reload;
pub mod server;
pub mod tls;
mod webhook;
mod webhook_test;

pub use body::{LiveBody, RequestBody};
pub use error::HttpError;
pub use ingest::IngestAnswer;
pub use reload::{ReloadError, Reloaded, RESTART_ONLY};

use crate::auth::{Grant, Permission, PresentedToken, Principal, Security};
use crate::event::dialect::WireForm;
use crate::event::encode::now_secs;
use crate::hub::Hub;
use crate::query::ParseError;
use crate::sse::metrics::SampleForm;
use crate::subscriber::ConnHandle;
use body::{json_ok, json_response};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use ingest::ingest_ndjson;
use live::{live_token, live_token_text, live_traces, live_tracing_v016, stream_slot};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use webhook::webhook;

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
    /// The webhook senders' resend credits (`ingest::dedupe`).
    pub dedupe: crate::ingest::dedupe::Dedupe,
    /// The alerts' states, for `/api/livetap/alerts`.
    pub alerts: Arc<crate::alert::Alerts>,
    /// The outgoing webhooks (`tap::webhook`), for their test send; none until the server
    /// sets them.
    pub webhooks: Arc<crate::tap::webhook::Webhooks>,
}

impl Ctx {
    /// The shared state of the handlers of one server.
    pub fn new(hub: Arc<Hub>, security: Arc<Security>) -> Ctx {
        let cors = cors::Cors::new(&hub.config);
        let gate = gate::IngestGate::new(&hub.config);
        let c = &hub.config;
        let timeout = std::time::Duration::from_secs(c.webhook_sender_timeout_secs);
        let dedupe =
            crate::ingest::dedupe::Dedupe::new(c.webhook_dedupe_secs, c.webhook_dedupe_entries, timeout);
        Ctx {
            hub,
            security,
            cors,
            gate,
            dedupe,
            alerts: crate::alert::Alerts::none(),
            webhooks: Arc::default(),
        }
    }

    /// The same, showing `alerts` in `/api/livetap/alerts`.
    pub fn with_alerts(mut self, alerts: Arc<crate::alert::Alerts>) -> Ctx {
        self.alerts = alerts;
        self
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
    if resp.status() == StatusCode::UNAUTHORIZED && ctx.security.principals.load().has_passwords() {
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
    ("/api/livetap/live", Method::GET, Some((Permission::TracingLive, Some(Grant::Tracing)))),
    ("/api/telemetry/metrics/live", Method::GET, Some((Permission::MetricsLive, Some(Grant::Metrics)))),
    ("/api/telemetry/live/tracing-token", Method::GET, Some((Permission::TracingLive, None))),
    ("/api/telemetry/live/metrics-token", Method::GET, Some((Permission::MetricsLive, None))),
    ("/metrics", Method::GET, Some((Permission::MetricsLive, None))),
    // Stalwart v0.16's live API (`/api/token/*` also take POST, see `takes_post_too`), livetap's
    // own full-precision metrics stream, and Stalwart's Prometheus path.
    ("/api/live/tracing", Method::GET, Some((Permission::TracingLive, Some(Grant::Tracing)))),
    ("/api/live/metrics", Method::GET, Some((Permission::MetricsLive, Some(Grant::Metrics)))),
    ("/api/token/tracing", Method::GET, Some((Permission::TracingLive, None))),
    ("/api/token/metrics", Method::GET, Some((Permission::MetricsLive, None))),
    ("/api/livetap/live/metrics", Method::GET, Some((Permission::MetricsLive, Some(Grant::Metrics)))),
    ("/metrics/prometheus", Method::GET, Some((Permission::MetricsLive, None))),
    ("/api/telemetry/ingest", Method::POST, Some((Permission::Ingest, None))),
    // The webhook's permission applies only when no webhook key is set (else: X-Signature).
    ("/api/telemetry/webhook", Method::POST, Some((Permission::Ingest, None))),
    // Dovecot's event exporter (http-post transport, JSON format): Basic from its URL.
    ("/api/livetap/ingest/dovecot", Method::POST, Some((Permission::Ingest, None))),
    ("/api/livetap/stats", Method::GET, Some((Permission::Admin, None))),
    ("/api/livetap/alerts", Method::GET, Some((Permission::MetricsLive, None))),
    ("/api/livetap/webhooks/{name}/test", Method::POST, Some((Permission::Admin, None))),
    ("/api/telemetry/traces", Method::GET, Some((Permission::History, None))),
    ("/api/telemetry/trace/{id}", Method::GET, Some((Permission::History, None))),
    ("/api/telemetry/metrics", Method::GET, Some((Permission::History, None))),
];

fn allow_header(path: &str, m: &Method) -> &'static str {
    if takes_post_too(path) {
        "GET, POST"
    } else if m == Method::POST {
        "POST"
    } else {
        "GET"
    }
}

/// Stalwart v0.16's token endpoints answer any method; the web UI uses GET, and a POST's body
/// is read and ignored.
fn takes_post_too(path: &str) -> bool {
    matches!(path, "/api/token/tracing" | "/api/token/metrics")
}

/// Stalwart v0.16's live streams ignore any path segment after `tracing` or `metrics`.
fn v016_live_path(path: &str) -> Option<&'static str> {
    ["/api/live/tracing", "/api/live/metrics"]
        .into_iter()
        .find(|base| path.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
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
        _ if webhook_test::name_in(&full_path).is_some() => "/api/livetap/webhooks/{name}/test",
        _ => v016_live_path(&full_path).unwrap_or(full_path.as_str()),
    };
    let Some((path, method, access)) = ROUTES.iter().find(|r| r.0 == path).cloned() else {
        return Err(HttpError::NotFound);
    };
    if req.method() == Method::OPTIONS {
        return ctx.cors.preflight(&req, allow_header(path, &method));
    }
    if !(req.method() == method
        || (method == Method::GET && req.method() == Method::HEAD)
        || (takes_post_too(path) && req.method() == Method::POST))
    {
        return Err(HttpError::MethodNotAllowed(allow_header(path, &method)));
    }
    if let Some(o) = req.headers().get(header::ORIGIN) {
        // A browser on an origin that is not allowed gets nothing, not even with credentials
        // it may have been tricked into sending.
        if !ctx.cors.is_empty() && !ctx.cors.allows(o) {
            return Err(HttpError::OriginNotAllowed);
        }
    }
    let hub = &ctx.hub;
    if path == "/api/telemetry/webhook" && hub.current().webhook_key.is_some() {
        return webhook(ctx, conn, req, None).await;
    }
    // Stalwart v0.16's streams take a `?token=` before any header (see `authorize`).
    let token_first = path.starts_with("/api/live/");
    let principal = match access {
        None => None,
        Some((perm, grant)) => Some(authorize(ctx, conn, &req, perm, grant, token_first).await?),
    };
    let principal = || principal.clone().expect("routes with a permission are authorized");
    match path {
        "/healthz" => Ok(json_ok(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        "/" => Ok(dashboard::index(req.headers())),
        "/assets/{path}" => Ok(dashboard::asset(&full_path["/assets/".len()..], req.headers())),
        "/api/livetap/query-check" => dashboard::query_check(hub, req.uri().query().unwrap_or("")),
        "/api/livetap/span" => dashboard::span_lookup(hub, &principal(), req).await,
        // Each wire dialect is one line here: the path and the form its events take.
        "/api/telemetry/traces/live" | "/api/tracing/live" => {
            live_traces(ctx, conn, principal(), req, WireForm::Classic).await
        }
        "/api/livetap/live" => live_traces(ctx, conn, principal(), req, WireForm::Full).await,
        "/api/live/tracing" => live_tracing_v016(ctx, conn, principal(), req).await,
        "/api/telemetry/metrics/live" => {
            let slot = stream_slot(&principal())?;
            metrics::live_metrics(ctx, req, slot, SampleForm::Classic)
        }
        "/api/livetap/live/metrics" => {
            let slot = stream_slot(&principal())?;
            metrics::live_metrics(ctx, req, slot, SampleForm::Full)
        }
        "/api/live/metrics" => {
            let slot = stream_slot(&principal())?;
            metrics::live_metrics(ctx, req, slot, SampleForm::V016)
        }
        "/api/telemetry/live/tracing-token" => live_token(ctx, &principal(), Grant::Tracing),
        "/api/telemetry/live/metrics-token" => live_token(ctx, &principal(), Grant::Metrics),
        "/api/token/tracing" => live_token_text(ctx, &principal(), Grant::Tracing, req).await,
        "/api/token/metrics" => live_token_text(ctx, &principal(), Grant::Metrics, req).await,
        "/metrics" => Ok(metrics::prometheus(hub, crate::metrics::prometheus::Naming::Conventional)),
        "/metrics/prometheus" => Ok(metrics::prometheus(hub, crate::metrics::prometheus::Naming::Stalwart)),
        "/api/telemetry/ingest" => ingest_ndjson(ctx, principal(), req).await,
        "/api/telemetry/webhook" => webhook(ctx, conn, req, Some(principal())).await,
        "/api/livetap/ingest/dovecot" => dovecot::ingest_dovecot(ctx, principal(), req).await,
        "/api/livetap/stats" => Ok(json_ok(StatusCode::OK, &hub.stats())),
        "/api/livetap/alerts" => Ok(alerts::list(&ctx.alerts)),
        "/api/livetap/webhooks/{name}/test" => webhook_test::test_send(ctx, &full_path).await,
        "/api/telemetry/traces" => history::traces(hub, req.uri().query().unwrap_or("")).await,
        "/api/telemetry/trace/{id}" => history::trace(hub, &full_path["/api/telemetry/trace/".len()..]).await,
        "/api/telemetry/metrics" => history::metrics(hub, req.uri().query().unwrap_or("")).await,
        _ => Err(HttpError::NotFound),
    }
}

/// Refuses request targets and header sections over their caps, with a JSON answer (hyper's
/// own buffer cap, which answers without a body, sits well above these).
fn check_head(ctx: &Ctx, req: &Request<RequestBody>) -> Result<(), HttpError> {
    let c = ctx.hub.current();
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

/// Refuses a source address with too many recent failed authentications (`429`), before
/// anything it sends is checked, so it cannot keep guessing.
fn check_lockout(ctx: &Ctx, ip: std::net::IpAddr) -> Result<(), HttpError> {
    match ctx.security.failures.locked(ip) {
        Some(wait) => {
            bump(&ctx.hub.ingest.auth_locked);
            Err(HttpError::TooMany {
                detail: "too many failed authentications from this address".into(),
                retry_after: wait.as_secs().max(1),
            })
        }
        None => Ok(()),
    }
}

/// Authenticates the request and checks `perm`. Live tokens count only on the live endpoint of
/// their `grant`. A source address with too many recent failures is refused before anything
/// is checked, so it cannot keep guessing.
///
/// Which credential counts when a request has both a `?token=` and an `Authorization` header:
/// on the classic streams the header (Stalwart up to v0.15 tried the headers first); with
/// `token_first` (Stalwart v0.16's `/api/live/*`) the token alone, the header ignored, as v0.16
/// does, so a bad token fails even beside a good header.
async fn authorize(
    ctx: &Ctx,
    conn: &ConnInfo,
    req: &Request<RequestBody>,
    perm: Permission,
    grant: Option<Grant>,
    token_first: bool,
) -> Result<Arc<Principal>, HttpError> {
    let sec = &ctx.security;
    let ip = conn.peer.ip();
    check_lockout(ctx, ip)?;
    let mut authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let token = match (grant, authorization) {
        (Some(_), None) => query_token(req.uri().query().unwrap_or(""))?,
        // Stalwart v0.16 drops parameters with empty values, so an empty `token=` there is no
        // token, and the header counts.
        (Some(_), Some(_)) if token_first => {
            query_token(req.uri().query().unwrap_or(""))?.filter(|t| !t.is_empty())
        }
        _ => None,
    };
    if token_first && token.is_some() {
        authorization = None;
    }
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
