//! Metrics: the live metrics registry behind `/api/telemetry/metrics/live` and `/metrics`.
//!
//! - [`model`]: the shared types ([`Kind`], [`Reading`], [`MetricValue`]) and the Prometheus
//!   form of a name; every other metrics module builds on them and none on another just for them.
//! - [`registry`]: the registry of event-type counters, gauges and histograms, with the
//!   per-matcher-thread counting handle ([`registry::EventCounter`]).
//! - [`histogram`]: log-linear atomic histograms (documented error ±3.125 %).
//! - [`derive`]: which events feed which catalogue histogram.
//! - [`push`]: metric records in the ingest body.
//! - [`prometheus`]: the text exposition format, written and read.
//! - [`query`]: the live request's parameters and the name filter.
//!
//! What feeds or reads the registry lives with its layer: the counters of `/api/livetap/stats`
//! and livetap's own samples with the hub (`hub::stats`, `hub::own`), the upstream scraper
//! with the sources (`ingest::scrape`), and the `event: metrics` SSE body with the other
//! stream bodies (`sse::metrics`).

pub mod derive;
pub mod histogram;
pub mod model;
pub mod prometheus;
pub mod push;
pub mod query;
pub mod registry;

pub use model::{Kind, MetricValue, Reading};
pub use registry::{EventCounter, MetricsRegistry};
