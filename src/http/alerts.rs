//! `GET /api/livetap/alerts`: each configured alert's state, term values, since when and last
//! notification, and the alert emails sent and failed (the dashboard's banner and list read it).

use super::{json_ok, LiveBody};
use crate::alert::{AlertStatus, Alerts};
use http::{Response, StatusCode};
use serde::Serialize;
use std::sync::atomic::Ordering;

/// The answer's body.
#[derive(Serialize)]
struct Answer {
    /// True when any alert is firing.
    firing: bool,
    /// Seconds between evaluations.
    interval_secs: f64,
    alerts: Vec<AlertStatus>,
    emails_sent: u64,
    emails_failed: u64,
}

/// The alerts' states as JSON.
pub(super) fn list(alerts: &Alerts) -> Response<LiveBody> {
    let list = alerts.status();
    let answer = Answer {
        firing: list.iter().any(|a| a.state == crate::alert::State::Firing),
        interval_secs: alerts.interval.as_secs_f64(),
        alerts: list,
        emails_sent: alerts.mail.sent.load(Ordering::Relaxed),
        emails_failed: alerts.mail.failed.load(Ordering::Relaxed),
    };
    json_ok(StatusCode::OK, &answer)
}
