//! `POST /api/livetap/ingest/dovecot`: Dovecot 2.3's event exporter (`format = json`,
//! `transport = http-post`), mapped onto the catalogue by `ingest::maillog::exporter`.
//!
//! The exporter can send no header of its own, only the `Authorization: Basic` its HTTP
//! client makes from a user and password in the URL (`http://dovecot:secret@host:port/...`),
//! so the route takes the ordinary credentials (a password principal with the `ingest`
//! permission) and goes through the same gate, limits and rate as the NDJSON endpoint.
//! A body that is not an exporter event is answered `400` (`invalid body`), with what was
//! wrong; Dovecot logs the status and drops the event, so nothing is retried.

use super::ingest::ingest_body;
use super::{Ctx, HttpError, LiveBody, RequestBody};
use crate::auth::Principal;
use crate::ingest::maillog::exporter;
use http::{Request, Response};
use std::sync::Arc;

/// Reads one exporter body (or several events one after another) and publishes its events.
pub(super) async fn ingest_dovecot(
    ctx: &Ctx,
    principal: Arc<Principal>,
    req: Request<RequestBody>,
) -> Result<Response<LiveBody>, HttpError> {
    ingest_body(ctx, principal, req, |body, b, now, cap| {
        exporter::parse_body(body, b, now, cap).map_err(|e| HttpError::BadBody(e.to_string()))
    })
    .await
}
