//! The errors the HTTP surface answers with: [`HttpError`], its status, and its JSON body
//! `{"error": "...", "detail": "..."}` (plus where a bad query went wrong).

use super::body::{json_response, LiveBody};
use crate::auth::{AuthError, Permission};
use crate::hub::PublishError;
use crate::matcher::registry::RegistryError;
use crate::query::ParseError;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

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
    /// No outgoing webhook has this name (404).
    #[error("unknown webhook")]
    UnknownWebhook(String),
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
    /// A streamed body (Stalwart's webhook) that failed after part of it was published: the
    /// answer is the cause's, and says how much of the body livetap kept.
    #[error("{cause}")]
    PartlyAccepted {
        /// Events of the body published before the failure.
        accepted: usize,
        /// Events of the body recognised as resends of events already published.
        duplicates: usize,
        /// What ended the body.
        cause: Box<HttpError>,
    },
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
            HttpError::NotFound | HttpError::UnknownWebhook(_) => StatusCode::NOT_FOUND,
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
            HttpError::PartlyAccepted { cause, .. } => cause.status(),
        }
    }

    /// Renders the error as a JSON response.
    pub fn into_response(self) -> Response<LiveBody> {
        if let HttpError::PartlyAccepted { accepted, duplicates, cause } = self {
            return partly_accepted(accepted, duplicates, *cause);
        }
        let (error, detail) = self.describe();
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

impl HttpError {
    /// The `error` and `detail` of the JSON answer.
    fn describe(&self) -> (&'static str, String) {
        match self {
            HttpError::PartlyAccepted { cause, .. } => cause.describe(),
            HttpError::Unauthorized(e) => ("unauthorized", e.to_string()),
            HttpError::Forbidden(p) => {
                ("forbidden", format!("this principal lacks the `{}` permission", p.name()))
            }
            HttpError::OriginNotAllowed => ("forbidden", "this origin is not in cors-origins".to_string()),
            HttpError::BadQuery(e) => ("invalid query parameter", e.to_string()),
            HttpError::BadBody(d) => ("invalid body", d.clone()),
            HttpError::NotFound => ("not found", "no such endpoint".into()),
            HttpError::UnknownWebhook(n) => ("not found", format!("no [[webhook]] is named `{n}`")),
            HttpError::MethodNotAllowed(allow) => ("method not allowed", format!("use {allow}")),
            HttpError::Timeout(s) => ("request timeout", format!("the body must arrive within {s} s")),
            HttpError::PayloadTooLarge(n) => ("payload too large", format!("the limit is {n} bytes")),
            HttpError::UriTooLong(n) => ("URI too long", format!("the limit is {n} bytes of path and query")),
            HttpError::HeadersTooLarge(n) => {
                ("headers too large", format!("the limit is {n} bytes of header fields"))
            }
            HttpError::TooMany { detail, .. } => ("too many requests", detail.clone()),
            // `TooLarge` carries the batch's size, not the ring's: its own message says so.
            HttpError::Busy(e @ PublishError::TooLarge(_)) => ("batch too large", e.to_string()),
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
        }
    }
}

/// The answer to a streamed body that failed after part of it was published: the cause's
/// status and headers, and a body that also says what was kept, so the producer's operator can
/// tell a partial acceptance from a refusal.
fn partly_accepted(accepted: usize, duplicates: usize, cause: HttpError) -> Response<LiveBody> {
    let (error, detail) = cause.describe();
    let detail = format!(
        "{detail}; {accepted} events of this body were accepted before that and {duplicates} were \
         recognised as resends, and a resend of the whole body publishes only the rest"
    );
    let status = cause.status();
    let plain = cause.into_response();
    let body =
        serde_json::json!({"error": error, "detail": detail, "accepted": accepted, "duplicates": duplicates});
    let mut resp = json_response(status, body.to_string().into_bytes());
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = plain.headers().get(&name) {
            resp.headers_mut().insert(name, v.clone());
        }
    }
    resp
}

/// The detail of a 413 for a batch the ring can never hold.
fn too_many_events(ring: u64) -> String {
    format!("the body's batch of events is larger than the event ring ({ring} slots); send smaller batches")
}
