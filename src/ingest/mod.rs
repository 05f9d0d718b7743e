//! Ingest: turning producer bytes into built events, and the event-source trait.
//!
//! Bodies are parsed onto a reusable token [`Tape`] (`event::tape`), which accepts what
//! serde_json accepts but builds no tree and allocates nothing per line; the parse benchmark
//! runs it beside serde_json and simd-json (see `perf/RESULTS.md`). The parse functions take
//! `&mut [u8]` so an in-place parser could slot in without changing callers. One bad line never spoils a body: it
//! is reported with its line number and reason while the valid lines are accepted. Parsing
//! does no I/O and no async, so it is unit-tested, benchmarked and fuzzed directly.
//!
//! A line (or array element) with a `metric` member is a metric record rather than an event
//! (`{"metric":"queue.count","type":"gauge","value":12}`, see `metrics::push`): it is checked
//! here and returned in [`ParsedBatch::samples`] for the caller to apply once the batch's events
//! are accepted. Only callers that apply samples ask for them ([`parse_ndjson`] and
//! [`parse_ndjson_records`]); elsewhere a record is rejected with a reason rather than dropped.
//!
//! Sources that push events on their own (the Unix socket, the demo generator, later NATS or
//! log tails) implement [`Source`] and publish through the hub, so new ones slot in without
//! touching the pipeline.

pub mod demo;
pub mod pool;
pub mod socket;

use crate::event::{BuildError, Event, EventBuilder, JsonRef, Node, Tape};
use crate::metrics::push::{self, MetricRecord};
use serde::Serialize;
use std::sync::Arc;

/// How many per-line errors an answer lists (the counts are always complete).
pub const MAX_REPORTED_ERRORS: usize = 100;

/// One rejected line (or array element) of an ingest body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// 1-based line number (or element number for a JSON array body).
    pub line: usize,
    /// Why it was rejected.
    pub reason: String,
}

/// The result of parsing one body.
#[derive(Debug, Default)]
pub struct ParsedBatch {
    /// Events built from the valid lines, in input order.
    pub events: Vec<Arc<Event>>,
    /// Rejected lines (at most [`MAX_REPORTED_ERRORS`] listed).
    pub errors: Vec<LineError>,
    /// Number of rejected lines.
    pub rejected: usize,
    /// Metric records, with their line numbers, in input order (see [`parse_ndjson_records`]).
    pub samples: Vec<(usize, MetricRecord)>,
    /// Whether metric records are accepted (else they are rejected lines).
    accept_records: bool,
}

impl ParsedBatch {
    /// Records a line rejected after parsing (a metric record the registry refused).
    pub fn reject(&mut self, line: usize, reason: impl Into<String>) {
        self.rejected += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(LineError { line, reason: reason.into() });
        }
    }

    /// Applies the metric records of an accepted batch to `registry`; a record the registry
    /// refuses (a kind conflict, a reserved name, the cap) becomes a rejected line. Returns
    /// how many were applied. Call it only once the batch's events were accepted, so a
    /// refused batch that the producer sends again does not count its increments twice.
    pub fn apply_samples(&mut self, registry: &crate::metrics::MetricsRegistry) -> usize {
        let mut applied = 0;
        let mut refused = false;
        for (line, rec) in std::mem::take(&mut self.samples) {
            match registry.apply(&rec) {
                Ok(()) => applied += 1,
                Err(e) => {
                    self.reject(line, e.to_string());
                    refused = true;
                }
            }
        }
        if refused {
            // Keep the errors in line order, as for events.
            self.errors.sort_by_key(|e| e.line);
        }
        applied
    }

    /// Adds the event (or events, for a `{"events":[...]}` object) in `raw`.
    fn add<'t, J: JsonRef<'t>>(&mut self, raw: J, line: usize, b: &mut EventBuilder<'_>, now: i64) {
        // One look at the top-level keys decides what the value is (three `get`s cost about
        // 450 instructions per event).
        let (mut record, mut events, mut typed) = (false, None, false);
        if let Node::Object(members) = raw.node() {
            for (k, v) in members {
                match k.as_str() {
                    "metric" => record = true,
                    "events" if events.is_none() => events = Some(v),
                    "type" => typed = true,
                    _ => {}
                }
            }
        }
        if record {
            if !self.accept_records {
                self.reject(line, "metric records are accepted by POST /api/telemetry/ingest only");
                return;
            }
            // Records are rare beside events; they are read from an owned tree.
            match push::parse_record(&raw.to_raw()) {
                Ok(rec) => self.samples.push((line, rec)),
                Err(e) => self.reject(line, e.to_string()),
            }
            return;
        }
        if let (Some(Node::Array(list)), false) = (events.map(JsonRef::node), typed) {
            for item in list {
                match b.build(item, now) {
                    Ok(ev) => self.events.push(Arc::new(ev)),
                    Err(e) => self.reject(line, e.to_string()),
                }
            }
            return;
        }
        match b.build(raw, now) {
            Ok(ev) => self.events.push(Arc::new(ev)),
            Err(e) => self.reject(line, e.to_string()),
        }
    }
}

/// Parses an NDJSON body: one event object per line, or one JSON array of events, or lines
/// holding Stalwart webhook batches (`{"events":[...]}`). Blank lines are skipped. Metric
/// records are returned in [`ParsedBatch::samples`].
pub fn parse_ndjson(body: &mut [u8], b: &mut EventBuilder<'_>, now: i64) -> ParsedBatch {
    parse_ndjson_records(body, 1, None, b, now)
}

/// [`parse_ndjson_from`] that also accepts metric records, returned in
/// [`ParsedBatch::samples`]; the caller applies them to the metrics registry.
pub fn parse_ndjson_records(
    body: &mut [u8],
    first_line: usize,
    max_line: Option<usize>,
    b: &mut EventBuilder<'_>,
    now: i64,
) -> ParsedBatch {
    parse_lines(true, body, first_line, max_line, b, now)
}

/// [`parse_ndjson`] numbering lines from `first_line` (for a stream read in pieces), and
/// rejecting lines longer than `max_line` bytes when a cap is given. Metric records are
/// rejected with a reason: this entry point is for callers that do not apply them.
pub fn parse_ndjson_from(
    body: &mut [u8],
    first_line: usize,
    max_line: Option<usize>,
    b: &mut EventBuilder<'_>,
    now: i64,
) -> ParsedBatch {
    parse_lines(false, body, first_line, max_line, b, now)
}

/// The two entry points above differ only in whether metric records are taken.
fn parse_lines(
    accept_records: bool,
    body: &mut [u8],
    first_line: usize,
    max_line: Option<usize>,
    b: &mut EventBuilder<'_>,
    now: i64,
) -> ParsedBatch {
    let mut out = ParsedBatch { accept_records, ..ParsedBatch::default() };
    parse_into(&mut out, body, first_line, max_line, b, now);
    out
}

fn parse_into(
    out: &mut ParsedBatch,
    body: &mut [u8],
    first_line: usize,
    max_line: Option<usize>,
    b: &mut EventBuilder<'_>,
    now: i64,
) {
    // One tape for the whole body: its buffers grow to the longest line and are reused.
    let mut tape = Tape::new();
    if max_line.is_none() && body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'[') {
        match tape.parse(body).map(JsonRef::node) {
            Ok(Node::Array(items)) => {
                for (i, item) in items.enumerate() {
                    out.add(item, i + 1, b, now);
                }
            }
            Ok(_) => out.reject(1, "expected a JSON array"),
            Err(e) => out.reject(1, BuildError::Json(e).to_string()),
        }
        return;
    }
    // Lines are found with memchr (vectorised) rather than a byte-by-byte split.
    let mut rest: &mut [u8] = body;
    let mut i = 0usize;
    while !rest.is_empty() {
        let (line, tail) = match memchr::memchr(b'\n', rest) {
            Some(at) => {
                let (l, t) = std::mem::take(&mut rest).split_at_mut(at);
                (l, &mut t[1..])
            }
            None => (std::mem::take(&mut rest), &mut [][..]),
        };
        rest = tail;
        i += 1;
        let i = i - 1;
        if let Some(max) = max_line.filter(|&m| line.len() > m) {
            out.reject(first_line + i, format!("line longer than {max} bytes"));
            continue;
        }
        let line = trim_mut(line);
        if line.is_empty() {
            continue;
        }
        match tape.parse(line) {
            Ok(raw) => out.add(raw, first_line + i, b, now),
            Err(e) => out.reject(first_line + i, BuildError::Json(e).to_string()),
        }
    }
}

/// Parses a Stalwart webhook body `{"events":[...]}`. `Err` when the body as a whole is not
/// such an object; invalid events inside are counted and reported, the rest accepted (a 4xx
/// would make Stalwart retry the batch forever for the sake of one bad event).
pub fn parse_webhook(body: &mut [u8], b: &mut EventBuilder<'_>, now: i64) -> Result<ParsedBatch, String> {
    let mut tape = Tape::new();
    let raw = tape.parse(body).map_err(|e| BuildError::Json(e).to_string())?;
    let Some(Node::Array(list)) = raw.get("events").map(JsonRef::node) else {
        return Err("expected an object {\"events\": [...]}".into());
    };
    let mut out = ParsedBatch::default();
    for (i, item) in list.enumerate() {
        out.add(item, i + 1, b, now);
    }
    Ok(out)
}

fn trim_mut(s: &mut [u8]) -> &mut [u8] {
    let start = s.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |p| p + 1);
    &mut s[start..end]
}

/// A producer that pushes events into the hub by itself (socket listener, demo generator,
/// later a NATS subscription or a log tail). It runs until the hub's shutdown signal.
pub trait Source: Send + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Runs the source to completion; it publishes through `hub` and returns at shutdown.
    fn run(
        self: Box<Self>,
        hub: Arc<crate::hub::Hub>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, KeyRegistry};

    fn setup() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    #[test]
    fn ndjson_with_a_bad_line() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        let mut body =
            b"{\"type\":\"auth.success\"}\n\n{\"type\":\n{\"data\":{}}\r\n  {\"type\":\"auth.failed\"}  \n"
                .to_vec();
        let p = parse_ndjson(&mut body, &mut b, 0);
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.rejected, 2);
        assert_eq!(p.errors[0].line, 3);
        assert!(p.errors[0].reason.starts_with("malformed JSON"));
        assert_eq!(p.errors[1].line, 4);
        assert!(p.errors[1].reason.contains("missing \"type\""));
    }

    #[test]
    fn array_and_batches() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        let mut body = b" [{\"type\":\"a.b\"}, 5, {\"type\":\"c.d\"}]".to_vec();
        let p = parse_ndjson(&mut body, &mut b, 0);
        assert_eq!((p.events.len(), p.rejected, p.errors[0].line), (2, 1, 2));
        let mut body = b"{\"events\":[{\"type\":\"a.b\"},{\"type\":\"c.d\"}]}\n".to_vec();
        assert_eq!(parse_ndjson(&mut body, &mut b, 0).events.len(), 2);
        let mut body = b"{\"events\":[{\"type\":\"a.b\"},{\"nope\":1}]}".to_vec();
        let p = parse_webhook(&mut body, &mut b, 0).unwrap();
        assert_eq!((p.events.len(), p.rejected), (1, 1));
        assert!(parse_webhook(&mut b"[]".to_vec(), &mut b, 0).is_err());
        assert!(parse_webhook(&mut b"{".to_vec(), &mut b, 0).is_err());
    }

    #[test]
    fn metric_records_beside_events() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        let mut body = [
            r#"{"type":"auth.success"}"#,
            r#"{"metric":"queue.count","type":"gauge","value":12}"#,
            r#"{"metric":"queue.count","value":"x"}"#,
        ]
        .join("\n")
        .into_bytes();
        let p = parse_ndjson(&mut body, &mut b, 0);
        assert_eq!((p.events.len(), p.samples.len(), p.rejected), (1, 1, 1));
        assert_eq!(p.samples[0].0, 2);
        assert_eq!(p.samples[0].1.name, "queue.count");
        assert_eq!(p.errors[0].line, 3);
        let mut body = b"[{\"metric\":\"a.b\",\"value\":1},{\"type\":\"c.d\"}]".to_vec();
        let p = parse_ndjson(&mut body, &mut b, 0);
        assert_eq!((p.events.len(), p.samples.len(), p.samples[0].0), (1, 1, 1));
        // Callers that do not apply records get them as rejected lines, never silently dropped.
        let mut body = b"{\"metric\":\"a.b\",\"value\":1}\n".to_vec();
        let p = parse_ndjson_from(&mut body, 1, Some(1024), &mut b, 0);
        assert_eq!((p.samples.len(), p.rejected), (0, 1));
        assert!(p.errors[0].reason.contains("metric records"));
    }
}
