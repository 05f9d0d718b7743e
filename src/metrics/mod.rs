//! Metrics: livetap's operating counters and the live metrics registry behind
//! `/api/telemetry/metrics/live` and `/metrics`.
//!
//! - [`stats`]: the counters of `/api/livetap/stats` (ingest, rejections, backpressure).
//! - [`registry`]: the registry of event-type counters, gauges and histograms, with the
//!   per-matcher-thread counting handle ([`registry::EventCounter`]).
//! - [`histogram`]: log-linear atomic histograms (documented error ±3.125 %).
//! - [`derive`]: which events feed which catalogue histogram.
//! - [`push`]: metric records in the ingest body.
//! - [`scrape`]: scraping upstream Prometheus endpoints.
//! - [`prometheus`]: the text exposition format, written and read.
//! - [`own`]: livetap's own samples (memory, ingest rate, subscribers, lag, ring).
//! - [`query`]: the live request's parameters and the name filter.
//! - [`stream`]: the `event: metrics` SSE body.

pub mod derive;
pub mod histogram;
pub mod own;
pub mod prometheus;
pub mod push;
pub mod query;
pub mod registry;
pub mod scrape;
pub mod stats;
pub mod stream;

pub use registry::{EventCounter, Kind, MetricValue, MetricsRegistry, Reading};
pub use stats::{IngestStats, StatsSnapshot, SubscriberStats};
