//! Scraping upstream Prometheus endpoints (a mail server's `/metrics/prometheus`) into the
//! registry, every `interval-secs`, as configured by `[[scrape]]` tables.
//!
//! Each target is one tokio task with a pooled plain-HTTP client (hyper-util's legacy client;
//! `https` is not supported, so point it at a local or loopback endpoint). A scrape reads at
//! most 16 MiB within `timeout-secs`, parses the text leniently, sums series over labels and
//! maps each family back to a dotted name:
//!
//! 1. the target's `map` table, looked up with the family name as scraped and again after the
//!    steps below, wins;
//! 2. the target's `prefix` (such as `stalwart_`) is stripped, and `_total` from counters;
//! 3. a registered name that sanitises to the result is used (`queue_count` → `queue.count`,
//!    `smtp_connection_start` → `smtp.connection-start`): every catalogue metric and event
//!    type is registered, so Stalwart's names map back without configuration;
//! 4. otherwise the name is kept as scraped when `keep-unmapped` is true (the default), or
//!    skipped.
//!
//! Scraped counters and histograms replace livetap's own counts of the same name in readings
//! (the upstream's are complete); gauges are set. A failed scrape keeps the previous values,
//! counts a failure (`livetap.scrape-failures`) and logs a warning once per run of failures.

use crate::config::ScrapeTarget;
use crate::hub::Hub;
use crate::metrics::prometheus::{families, parse_text, FamilyValue};
use crate::metrics::push::check_name;
use crate::metrics::registry::{MetricsRegistry, Scraped};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Largest scrape body read.
pub const MAX_SCRAPE_BYTES: usize = 16 << 20;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The URL is not a plain-HTTP URL.
    #[error("invalid scrape URL: {0}")]
    Url(String),
    /// Connecting or sending failed.
    #[error("request failed: {0}")]
    Request(String),
    /// No complete answer within the timeout.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// The endpoint answered with a non-2xx status.
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    /// Reading the body failed or it was too large.
    #[error("reading the body failed: {0}")]
    Body(String),
}

/// What one scrape did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrapeReport {
    /// Families written to the registry.
    pub applied: usize,
    /// Families skipped: unmapped (with `keep-unmapped = false`), invalid names, kind
    /// conflicts, reserved names, or the registry's cap.
    pub skipped: usize,
    /// Lines that could not be parsed.
    pub bad_lines: usize,
}

/// The dotted name a scraped family is stored under, if any (see the module docs).
pub fn map_name(reg: &MetricsRegistry, target: &ScrapeTarget, family: &str, counter: bool) -> Option<String> {
    if let Some(m) = target.map.get(family) {
        return Some(m.clone());
    }
    let mut name = family;
    if let Some(p) = target.prefix.as_deref().filter(|p| !p.is_empty()) {
        name = name.strip_prefix(p).unwrap_or(name);
    }
    if counter {
        name = name.strip_suffix("_total").unwrap_or(name);
    }
    if let Some(m) = target.map.get(name) {
        return Some(m.clone());
    }
    if let Some(dotted) = reg.resolve_prometheus(name) {
        return Some(dotted.to_string());
    }
    (target.keep_unmapped && check_name(name).is_ok()).then(|| name.to_string())
}

/// Writes one scraped exposition into the registry.
pub fn apply_text(reg: &MetricsRegistry, target: &ScrapeTarget, text: &str) -> ScrapeReport {
    let parsed = parse_text(text);
    let mut report = ScrapeReport { bad_lines: parsed.bad_lines, ..Default::default() };
    for (family, value) in families(&parsed) {
        let counter = matches!(value, FamilyValue::Counter(_));
        let Some(name) = map_name(reg, target, &family, counter) else {
            report.skipped += 1;
            continue;
        };
        let scraped = match value {
            FamilyValue::Counter(v) => Scraped::Counter(v),
            FamilyValue::Gauge(v) => Scraped::Gauge(v),
            FamilyValue::Histogram(e) => Scraped::Histogram(e),
        };
        match reg.apply_scraped(&name, scraped) {
            Ok(()) => report.applied += 1,
            Err(e) => {
                tracing::debug!(url = %target.url, family, error = %e, "scraped family skipped");
                report.skipped += 1;
            }
        }
    }
    report
}

/// A client for scraping (plain HTTP, pooled connections).
pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Fetches the exposition text of `target` once.
pub async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    target: &ScrapeTarget,
) -> Result<String, ScrapeError> {
    let uri: http::Uri =
        target.url.parse().map_err(|e: http::uri::InvalidUri| ScrapeError::Url(e.to_string()))?;
    let mut req = http::Request::get(uri)
        .header(http::header::ACCEPT, "text/plain;version=0.0.4")
        .header(http::header::USER_AGENT, concat!("livetap/", env!("CARGO_PKG_VERSION")));
    if let Some(auth) = &target.authorization {
        req = req.header(http::header::AUTHORIZATION, auth);
    }
    let req = req.body(Empty::new()).map_err(|e| ScrapeError::Url(e.to_string()))?;
    let timeout = target.timeout();
    let work = async {
        let resp = client.request(req).await.map_err(|e| ScrapeError::Request(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status(resp.status().as_u16()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_SCRAPE_BYTES)
            .collect()
            .await
            .map_err(|e| ScrapeError::Body(e.to_string()))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::Body("not UTF-8".into()))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ScrapeError::Timeout(timeout.as_secs()))?
}

/// Scrapes target number `index` of the configuration until shutdown.
pub async fn run(hub: Arc<Hub>, index: usize) {
    let Some(target) = hub.config.scrape.get(index).cloned() else { return };
    let client = client();
    let mut shutdown = hub.shutdown_signal();
    let mut tick = tokio::time::interval(Duration::from_secs(target.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let reg = &hub.metrics;
        match fetch(&client, &target).await {
            Ok(text) => {
                let report = apply_text(reg, &target, &text);
                reg.scrapes.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::info!(url = %target.url, "scrape works again");
                }
                failing = false;
                tracing::debug!(url = %target.url, ?report, "scraped");
            }
            Err(e) => {
                reg.scrape_failures.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    let url = &target.url;
                    tracing::warn!(%url, error = %e, "scrape failed; keeping the previous values");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Catalogue;
    use crate::metrics::query::NameFilter;
    use crate::metrics::registry::Reading;

    fn target() -> ScrapeTarget {
        ScrapeTarget { url: "http://127.0.0.1:1/metrics".into(), ..ScrapeTarget::default() }
    }

    #[test]
    fn maps_names_back() {
        let (c, k) = Catalogue::with_keys(1024);
        let reg = MetricsRegistry::new(&c, &k, 1, 64);
        let mut t = target();
        assert_eq!(map_name(&reg, &t, "queue_count", false).as_deref(), Some("queue.count"));
        assert_eq!(
            map_name(&reg, &t, "smtp_connection_start_total", true).as_deref(),
            Some("smtp.connection-start")
        );
        assert_eq!(map_name(&reg, &t, "process_open_fds", false).as_deref(), Some("process_open_fds"));
        assert_eq!(map_name(&reg, &t, "_odd", false), None);
        t.keep_unmapped = false;
        assert_eq!(map_name(&reg, &t, "process_open_fds", false), None);
        t.prefix = Some("stalwart_".into());
        t.map.insert("mail_queue_size".into(), "queue.count".into());
        assert_eq!(
            map_name(&reg, &t, "stalwart_delivery_total_time", false).as_deref(),
            Some("delivery.total-time")
        );
        assert_eq!(map_name(&reg, &t, "stalwart_mail_queue_size", false).as_deref(), Some("queue.count"));
    }

    #[test]
    fn applies_an_exposition() {
        let (c, k) = Catalogue::with_keys(1024);
        let reg = MetricsRegistry::new(&c, &k, 1, 64);
        let text = "# TYPE queue_count gauge\nqueue_count 17\n# TYPE smtp_connection_start counter\n\
                    smtp_connection_start 5\n# TYPE delivery_total_time histogram\n\
                    delivery_total_time_bucket{le=\"100\"} 2\ndelivery_total_time_bucket{le=\"+Inf\"} 3\n\
                    delivery_total_time_sum 400\ndelivery_total_time_count 3\n# TYPE queue_count2 histogram\n\
                    # TYPE livetap_memory gauge\nlivetap_memory 1\n";
        let report = apply_text(&reg, &target(), text);
        assert_eq!(report, ScrapeReport { applied: 3, skipped: 1, bad_lines: 0 });
        let snap = reg.snapshot(&NameFilter::all());
        let get = |n: &str| snap.iter().find(|m| &*m.name == n).map(|m| m.reading.clone());
        assert_eq!(get("queue.count"), Some(Reading::Gauge(17.0)));
        assert_eq!(get("smtp.connection-start"), Some(Reading::Counter(5)));
        assert!(
            matches!(get("delivery.total-time"), Some(Reading::Histogram(h)) if h.count == 3 && h.sum == 400.0)
        );
    }
}
