//! `POST /api/livetap/webhooks/{name}/test`: sends one test event to an outgoing webhook now
//! (not through its spool) and answers what the receiver said (`tap::webhook::TestReport`).

use super::body::json_ok;
use super::{Ctx, HttpError, LiveBody};
use http::{Response, StatusCode};

/// The webhook name in a test-send path, if the path is one.
pub fn name_in(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/api/livetap/webhooks/")?.strip_suffix("/test")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Sends the test event and answers the report; an unknown name is a 404. A receiver that
/// cannot be reached is still a 200: the report's `error` says why (the endpoint worked; the
/// receiver did not).
pub async fn test_send(ctx: &Ctx, path: &str) -> Result<Response<LiveBody>, HttpError> {
    let name = name_in(path).ok_or(HttpError::NotFound)?;
    match ctx.webhooks.test_send(&ctx.hub, name).await {
        Some(report) => Ok(json_ok(StatusCode::OK, &report)),
        None => Err(HttpError::UnknownWebhook(name.to_string())),
    }
}
