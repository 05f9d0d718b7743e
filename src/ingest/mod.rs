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
//!
//! A source of a byte stream (the Unix socket; later a followed file, a journal reader, a
//! syslog listener) only reads: [`stage::run_stream`] frames its bytes into lines, parses them
//! on the parse threads with the source's [`lines::LineFormat`] (NDJSON, [`lines::Ndjson`], for
//! the socket), publishes them in order with backpressure, and hands rejected lines, with
//! their numbers, to the source's [`stage::Reporter`].
//!
//! Mail logs come in through three such sources, [`tail`] (a followed file), [`journal`]
//! (`journalctl` as a child process) and [`syslog`] (a syslog listener), which share their
//! configuration, start-up errors and reporting in [`logsource`] and hand their lines to the
//! mail-log format ([`maillog`]).
//!
//! [`scrape`] is the one source that feeds the metrics registry rather than the ring: it polls
//! upstream Prometheus endpoints.

pub mod dedupe;
pub mod demo;
pub mod journal;
pub mod lines;
pub mod logsource;
pub mod maillog;
pub mod pool;
pub mod scrape;
pub mod socket;
pub mod split;
pub mod stage;
pub mod stream_split;
pub mod syslog;
pub mod tail;

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
    /// Most events this batch may build; past it parsing stops and [`ParsedBatch::overflow`]
    /// is set. `0` means no cap.
    max_events: usize,
    /// Set when the body held more events than `max_events`: parsing stopped there, and the
    /// events built so far should be refused with the batch, since it can never be published
    /// whole.
    pub overflow: bool,
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

    /// Records a rejection whose reason is only written out while the answer still lists
    /// reasons: a body of millions of bad elements would otherwise format (and drop) a message
    /// for each.
    pub fn reject_with(&mut self, line: usize, reason: impl FnOnce() -> String) {
        self.rejected += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(LineError { line, reason: reason() });
        }
    }

    /// Whether parsing should stop: the event cap was reached.
    fn full(&mut self) -> bool {
        if self.max_events != 0 && self.events.len() >= self.max_events {
            self.overflow = true;
        }
        self.overflow
    }

    /// Builds one event from `raw` into the batch, unless the batch's event cap is reached; an
    /// event the builder refuses becomes a rejection of line `line`. This is how a line format
    /// ([`lines::LineFormat`]) that parses its lines itself adds their events.
    pub fn push_built<'t, J: JsonRef<'t>>(
        &mut self,
        raw: J,
        line: usize,
        b: &mut EventBuilder<'_>,
        now: i64,
    ) {
        if self.full() {
            return;
        }
        match b.build(raw, now) {
            Ok(ev) => self.events.push(Arc::new(ev)),
            Err(e) => self.reject_with(line, || e.to_string()),
        }
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
                self.push_built(item, line, b, now);
            }
            return;
        }
        self.push_built(raw, line, b, now);
    }

    /// Parses one document (a line or a body) with `tape`. One longer than `large` bytes is
    /// never put on the tape whole: an array or a Stalwart batch is split into its elements
    /// ([`split`]), each parsed on its own, and anything else is rejected unparsed, since no
    /// event that long can be within `max-event-bytes` (see [`LARGE_FACTOR`]).
    fn add_document(&mut self, tape: &mut Tape, doc: &[u8], line: usize, b: &mut EventBuilder<'_>, now: i64) {
        let large = large_document(b);
        if doc.len() <= large {
            match tape.parse(doc) {
                Ok(raw) => self.add(raw, line, b, now),
                Err(e) => self.reject(line, BuildError::Json(e).to_string()),
            }
            return;
        }
        match split::shape(doc) {
            Ok(split::Shape::Batch(inner)) => self.add_elements(tape, &doc[inner], |_| line, true, b, now),
            Ok(split::Shape::Array(inner)) => self.add_elements(tape, &doc[inner], |_| line, false, b, now),
            Ok(split::Shape::Single) => self.reject(line, too_long(large)),
            Err(e) => self.reject(line, e.to_string()),
        }
    }

    /// Parses each element of the array whose inner bytes are `inner`; `number` gives the line
    /// number reported for element `i` (0-based). Elements of a batch are events; elements of
    /// an array body may also be batches or metric records, as in [`ParsedBatch::add`]. An
    /// element longer than `large` is rejected unparsed: splitting stops at one level, so a
    /// deeply nested document costs no stack.
    fn add_elements(
        &mut self,
        tape: &mut Tape,
        inner: &[u8],
        number: impl Fn(usize) -> usize,
        in_batch: bool,
        b: &mut EventBuilder<'_>,
        now: i64,
    ) {
        let large = large_document(b);
        for (i, r) in split::Elements::new(inner).enumerate() {
            if self.full() {
                return;
            }
            let element = match r {
                Ok(r) => &inner[r],
                Err(e) => {
                    self.reject(number(i), e.to_string());
                    return;
                }
            };
            if element.len() > large {
                self.reject_with(number(i), || too_long(large));
                continue;
            }
            match tape.parse(element) {
                Ok(raw) if in_batch => self.push_built(raw, number(i), b, now),
                Ok(raw) => self.add(raw, number(i), b, now),
                Err(e) => self.reject_with(number(i), || BuildError::Json(e).to_string()),
            }
        }
    }
}

/// A document longer than this many times `max-event-bytes` is not parsed whole. Its
/// serialised form drops white space and may shrink escapes (`\u0041` is one byte), so a valid
/// event's input can be a few times its serialised size, but not eight times in practice; and
/// a tape over it costs at most 16 bytes per two input bytes.
pub const LARGE_FACTOR: usize = 8;

/// The length past which a document is split or rejected unparsed.
fn large_document(b: &EventBuilder<'_>) -> usize {
    b.max_bytes().saturating_mul(LARGE_FACTOR)
}

fn too_long(large: usize) -> String {
    format!(
        "longer than {large} bytes ({LARGE_FACTOR} × max-event-bytes) and not an array or a batch of events"
    )
}

/// Parses an NDJSON body: one event object per line, or one JSON array of events, or lines
/// holding Stalwart webhook batches (`{"events":[...]}`). Blank lines are skipped. Metric
/// records are returned in [`ParsedBatch::samples`].
pub fn parse_ndjson(body: &mut [u8], b: &mut EventBuilder<'_>, now: i64) -> ParsedBatch {
    parse_lines(true, body, 1, None, 0, b, now)
}

/// [`parse_ndjson`] that builds at most `max_events` events: past that it stops and sets
/// [`ParsedBatch::overflow`], so a body that can never be published (more events than the
/// ring holds) costs at most that many built events, however small each is.
pub fn parse_ndjson_capped(
    body: &mut [u8],
    b: &mut EventBuilder<'_>,
    now: i64,
    max_events: usize,
) -> ParsedBatch {
    parse_lines(true, body, 1, None, max_events.max(1), b, now)
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
    parse_lines(true, body, first_line, max_line, 0, b, now)
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
    parse_lines(false, body, first_line, max_line, 0, b, now)
}

/// The entry points above differ only in whether metric records are taken and in the cap.
fn parse_lines(
    accept_records: bool,
    body: &mut [u8],
    first_line: usize,
    max_line: Option<usize>,
    max_events: usize,
    b: &mut EventBuilder<'_>,
    now: i64,
) -> ParsedBatch {
    let mut out = ParsedBatch { accept_records, max_events, ..ParsedBatch::default() };
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
    if max_line.is_none() && body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'[') {
        // One tape for the whole body: its buffers grow to the longest array element and are
        // reused.
        let mut tape = Tape::new();
        if body.len() > large_document(b) {
            // A large array is split, so the tape holds one element at a time.
            match split::shape(body) {
                Ok(split::Shape::Array(inner)) => {
                    out.add_elements(&mut tape, &body[inner], |i| i + 1, false, b, now)
                }
                Ok(_) => out.reject(1, "expected a JSON array"),
                Err(e) => out.reject(1, e.to_string()),
            }
            return;
        }
        match tape.parse(body).map(JsonRef::node) {
            Ok(Node::Array(items)) => {
                for (i, item) in items.enumerate() {
                    if out.full() {
                        break;
                    }
                    out.add(item, i + 1, b, now);
                }
            }
            Ok(_) => out.reject(1, "expected a JSON array"),
            Err(e) => out.reject(1, BuildError::Json(e).to_string()),
        }
        return;
    }
    // Lines go through the same loop and format as a stream's chunks (`lines`).
    lines::parse_lines_into(&lines::Ndjson, out, body, first_line, max_line, b, now);
}

/// Parses a Stalwart webhook body `{"events":[...]}`. `Err` when the body as a whole is not
/// such an object; invalid events inside are counted and reported, the rest accepted (a 4xx
/// would make Stalwart retry the batch forever for the sake of one bad event).
pub fn parse_webhook(body: &mut [u8], b: &mut EventBuilder<'_>, now: i64) -> Result<ParsedBatch, String> {
    parse_webhook_capped(body, b, now, 0)
}

/// [`parse_webhook`] that builds at most `max_events` events (`0`: no cap), as
/// [`parse_ndjson_capped`].
pub fn parse_webhook_capped(
    body: &mut [u8],
    b: &mut EventBuilder<'_>,
    now: i64,
    max_events: usize,
) -> Result<ParsedBatch, String> {
    const NOT_A_BATCH: &str = "expected an object {\"events\": [...]}";
    let mut out = ParsedBatch { max_events, ..ParsedBatch::default() };
    let mut tape = Tape::new();
    if body.len() > large_document(b) {
        // A large batch is split, so the tape holds one event at a time.
        match split::shape(body) {
            Ok(split::Shape::Batch(inner)) => {
                out.add_elements(&mut tape, &body[inner], |i| i + 1, false, b, now)
            }
            Ok(_) => return Err(NOT_A_BATCH.into()),
            Err(e) => return Err(e.to_string()),
        }
        return Ok(out);
    }
    let raw = tape.parse(body).map_err(|e| BuildError::Json(e).to_string())?;
    let Some(Node::Array(list)) = raw.get("events").map(JsonRef::node) else {
        return Err(NOT_A_BATCH.into());
    };
    for (i, item) in list.enumerate() {
        if out.full() {
            break;
        }
        out.add(item, i + 1, b, now);
    }
    Ok(out)
}

pub(crate) fn trim_mut(s: &mut [u8]) -> &mut [u8] {
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
    fn large_documents_are_split_with_the_same_result() {
        let (c, k) = setup();
        let items: Vec<String> =
            (0..200).map(|i| format!(r#"{{"type":"a.b","data":{{"n":{i},"s":"x,]\"}}"}}}}"#)).collect();
        let array = format!("[{}]", items.join(" ,\n "));
        let batch = format!(r#"{{"id":1,"events":[{}]}}"#, items.join(","));
        let lines = format!("{batch}\n{}\n{batch}", items[0]);
        let json = |p: &ParsedBatch| p.events.iter().map(|e| e.json.clone()).collect::<Vec<_>>();
        for body in [&array, &lines] {
            // A builder with a small max-event-bytes makes every document "large".
            let whole = parse_ndjson(&mut body.clone().into_bytes(), &mut EventBuilder::new(&c, &k), 0);
            let mut small = EventBuilder::new(&c, &k).with_max_bytes(200);
            let split = parse_ndjson(&mut body.clone().into_bytes(), &mut small, 0);
            assert!(whole.events.len() >= 200 && whole.rejected == 0, "{:?}", whole.errors);
            assert_eq!((json(&whole), split.rejected), (json(&split), 0), "{:?}", split.errors);
        }
        let whole =
            parse_webhook(&mut batch.clone().into_bytes(), &mut EventBuilder::new(&c, &k), 0).unwrap();
        let mut small = EventBuilder::new(&c, &k).with_max_bytes(200);
        let split = parse_webhook(&mut batch.clone().into_bytes(), &mut small, 0).unwrap();
        assert_eq!((whole.events.len(), json(&whole)), (200, json(&split)));
        assert!(parse_webhook(&mut array.clone().into_bytes(), &mut small, 0).is_err());
        // A long document that is neither is rejected unparsed; a broken array keeps what came
        // before the break.
        let long = format!(r#"{{"type":"a.b","data":{{"s":"{}"}}}}"#, "x".repeat(3000));
        let p = parse_ndjson(&mut long.into_bytes(), &mut small, 0);
        assert!(p.errors[0].reason.contains("longer than 1600 bytes"), "{:?}", p.errors);
        let broken = format!("[{},{} {}]", items[..60].join(","), items[60], items[61]);
        let p = parse_ndjson(&mut broken.into_bytes(), &mut small, 0);
        assert_eq!((p.events.len(), p.rejected), (61, 1), "{:?}", p.errors);
        assert_eq!(p.errors[0].line, 62);
    }

    #[test]
    fn the_event_cap_stops_building() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        let mut body = "{\"type\":\"a\"}\n".repeat(50).into_bytes();
        let p = parse_ndjson_capped(&mut body.clone(), &mut b, 0, 10);
        assert_eq!((p.events.len(), p.overflow), (10, true));
        let p = parse_ndjson_capped(&mut body, &mut b, 0, 50);
        assert_eq!((p.events.len(), p.overflow), (50, false));
        let mut array = format!("[{}]", vec!["{\"type\":\"a\"}"; 50].join(",")).into_bytes();
        let p = parse_ndjson_capped(&mut array, &mut b, 0, 49);
        assert_eq!((p.events.len(), p.overflow), (49, true));
        let mut hook = format!("{{\"events\":[{}]}}", vec!["{\"type\":\"a\"}"; 50].join(",")).into_bytes();
        let p = parse_webhook_capped(&mut hook, &mut b, 0, 7).unwrap();
        assert_eq!((p.events.len(), p.overflow), (7, true));
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
