//! The shared model of the live metrics: a metric's [`Kind`], its [`Reading`], the named
//! [`MetricValue`] that is streamed, stored and exported, and the Prometheus form of a name
//! ([`sanitize`]).
//!
//! These types sit below every other metrics module (the registry, the text format, pushed
//! records) and below their users outside it (the store, the SSE body, the scraper), so none
//! of those has to import another's module just for the shape of a value.

use super::histogram::HistogramSnapshot;
use std::sync::Arc;

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A monotonic count (event types, pushed increments).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

impl Kind {
    /// Parses `counter`, `gauge` or `histogram`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "counter" => Some(Kind::Counter),
            "gauge" => Some(Kind::Gauge),
            "histogram" => Some(Kind::Histogram),
            _ => None,
        }
    }

    /// The lowercase name, as in the catalogue and the samples.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric's reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// Total since start.
    Counter(u64),
    /// Current value.
    Gauge(f64),
    /// Distribution so far.
    Histogram(HistogramSnapshot),
}

impl Reading {
    /// The kind of this reading.
    pub fn kind(&self) -> Kind {
        match self {
            Reading::Counter(_) => Kind::Counter,
            Reading::Gauge(_) => Kind::Gauge,
            Reading::Histogram(_) => Kind::Histogram,
        }
    }
}

/// A named reading, as streamed and exported.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    /// Dotted name (`delivery.total-time`).
    pub name: Arc<str>,
    /// Unit, when known (`milliseconds`, `bytes`, …).
    pub unit: Option<Arc<str>>,
    /// A description for Prometheus' `# HELP`, when there is a better one than the name.
    pub help: Option<&'static str>,
    /// The value.
    pub reading: Reading,
}

/// Appends the Prometheus-sanitised form of `name` to `out`.
pub fn sanitize(name: &str, out: &mut String) {
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
}
