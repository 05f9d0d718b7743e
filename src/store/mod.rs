//! The history store (issue 7): the backend-neutral `HistoryStore` trait, its query and answer types, `HistoryConfig`, and `History` (an opened store plus its writer).
//!
//! What is kept, and why it is kept this way:
//! - **Spans that carry a `queueId`**, whole, like Stalwart's trace history: every event of
//!   an SMTP session or a delivery attempt once one of its events names a queued message, up
//!   to `max-span-events` events per span. Optionally also every event matching a keep query.
//!   The selection runs on the writer thread ([`writer`]), never on the ingest or matcher path.
//! - **Metric samples**, one row per metric name per sampling tick.
//!
//! The trait is synchronous because the embedded backend (SQLite, [`sqlite`]) is: an async
//! caller runs queries on its blocking pool. A PostgreSQL or ClickHouse backend implements the
//! same trait (see the README's "History" section); the writer, the selection and the HTTP
//! answers do not change.
//!
//! [`open_store`] is the one place that picks the backend; everything above `store/` (the hub,
//! the HTTP API, the `livetap history` command) holds an `Arc<dyn HistoryStore>` and never
//! names a backend. A backend's own errors reach callers boxed in [`StoreError::Backend`].
//!
//! Sequence numbers: `seq` is the event's ring position, and the public id in the stream is
//! `seq + 1`. The store keys events by `seq`, so `seq` must keep growing across restarts: a
//! hub that reopens an existing store starts its ring at [`HistoryStore::next_seq`].
//!
//! JSON answers follow Stalwart's list shape, wrapped by the caller in [`Data`]:
//! `{"data":{"items":[…],"total":N}}` ([`Page`]) for the traces and metrics lists, and
//! `{"data":[…events…]}` for one trace.

pub mod datadir;
pub mod sqlite;
pub mod writer;

use crate::event::encode;
use crate::event::{Event, EventBuilder, KeyId, KeyKind, KeyRegistry, RawValue};
use crate::metrics::{MetricValue, Reading};
use crate::query::ParseError;
use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use sqlite::SqliteStore;
pub use writer::{HistoryWriter, KeepFn, WriterStats};

/// The most items one page of a list answer holds; `limit=0` (Stalwart's "everything") and
/// larger limits are capped here so one request cannot read the whole database into memory.
pub const MAX_PAGE_ITEMS: usize = 10_000;

/// The most span ids one traces list may select (`id=a,b,…`, all `id` parameters together).
pub const MAX_SPAN_IDS: usize = 1_000;

/// The window a traces list covers when it names no time and no span (`after`, `before`,
/// `queue_id`, `id`): the last 24 hours, as Stalwart's list does ([`TraceQuery::default_window`]).
pub const DEFAULT_WINDOW_SECS: i64 = 86_400;

/// The file name of the history database inside the data directory.
pub const DEFAULT_FILE_NAME: &str = "history.sqlite3";

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O error, full disk, corrupt or foreign file, a newer schema, …).
    /// It carries the backend's own error (for SQLite, [`sqlite::SqliteError`]) and shows its
    /// message unchanged, so callers above `store/` need no backend's types.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The configured keep query does not parse.
    #[error("invalid history keep query: {0}")]
    KeepQuery(#[source] ParseError),
    /// A history setting is out of range.
    #[error("invalid history setting `{key}`: {message}")]
    Config {
        /// The setting (kebab-case, as in the `[history]` table).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A sequence number or span id does not fit the store's integer columns.
    #[error("value {0} does not fit the history store")]
    OutOfRange(u64),
    /// The writer's thread could not be started.
    #[error("cannot start the history {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The spawn error.
        source: std::io::Error,
    },
}

/// The `[history]` settings. Every field has a default, so an empty table (or none) works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep history at all (it also needs a place: `path` or the data directory).
    pub enabled: bool,
    /// The database file; default `history.sqlite3` in the data directory.
    pub path: Option<PathBuf>,
    /// Days a trace is kept after its first event; 0 keeps traces until the size bound
    /// removes them.
    pub trace_retention_days: u32,
    /// Days a metric sample is kept; 0 keeps samples until the size bound removes them.
    pub metric_retention_days: u32,
    /// Most bytes of the database file plus its write-ahead log; 0 means no size bound.
    pub max_bytes: u64,
    /// Most events kept of one span (Stalwart keeps 2,048); later ones are counted and dropped.
    pub max_span_events: usize,
    /// Most spans whose state the writer holds at once (spans waiting for a `queueId`, and
    /// spans being kept); the oldest is forgotten past it.
    pub max_open_spans: usize,
    /// Most events buffered for spans still waiting for a `queueId`; the oldest waiting span
    /// is discarded past it. This is the writer's memory bound.
    pub max_buffered_events: usize,
    /// Events written per transaction, at most.
    pub batch_size: usize,
    /// A partly filled batch is written after this many milliseconds.
    pub flush_interval_ms: u64,
    /// Events waiting for the writer thread, at most; past it events are dropped and counted.
    pub queue_capacity: usize,
    /// Seconds between metric samples (the caller's timer reads this).
    pub metric_interval_secs: u64,
    /// Seconds between retention runs (age and size).
    pub prune_interval_secs: u64,
    /// A live-URL query (pair form, such as `level=warn` or `q=auth.failed OR event=queue.*`);
    /// every event matching it is kept too, with or without a span.
    pub keep: Option<String>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            enabled: true,
            path: None,
            trace_retention_days: 30,
            metric_retention_days: 90,
            max_bytes: 1 << 30,
            max_span_events: 2048,
            max_open_spans: 16_384,
            max_buffered_events: 131_072,
            batch_size: 4096,
            flush_interval_ms: 100,
            queue_capacity: 65_536,
            metric_interval_secs: 60,
            prune_interval_secs: 300,
            keep: None,
        }
    }
}

impl HistoryConfig {
    /// Checks the ranges; the error names the setting.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |key, message: &str| Err(StoreError::Config { key, message: message.to_string() });
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return bad("batch-size", "must be between 1 and 1000000");
        }
        if self.flush_interval_ms == 0 || self.flush_interval_ms > 60_000 {
            return bad("flush-interval-ms", "must be between 1 and 60000");
        }
        if self.queue_capacity == 0 || self.queue_capacity > 16_777_216 {
            return bad("queue-capacity", "must be between 1 and 16777216");
        }
        if self.max_span_events == 0 {
            return bad("max-span-events", "must be at least 1");
        }
        if self.max_open_spans == 0 {
            return bad("max-open-spans", "must be at least 1");
        }
        if self.metric_interval_secs == 0 {
            return bad("metric-interval-secs", "must be at least 1");
        }
        if self.prune_interval_secs == 0 {
            return bad("prune-interval-secs", "must be at least 1");
        }
        if self.max_bytes != 0 && self.max_bytes < 1 << 20 {
            return bad("max-bytes", "must be 0 (no bound) or at least 1048576 (1 MiB)");
        }
        Ok(())
    }

    /// Where the database lives: `path` when set (relative to `data_dir` when relative and a
    /// data directory is given), otherwise `history.sqlite3` in `data_dir`; `None` when
    /// history is disabled or has no place.
    pub fn resolve_path(&self, data_dir: Option<&Path>) -> Option<PathBuf> {
        if !self.enabled {
            return None;
        }
        match (&self.path, data_dir) {
            (Some(p), Some(dir)) if p.is_relative() => Some(dir.join(p)),
            (Some(p), _) => Some(p.clone()),
            (None, Some(dir)) => Some(dir.join(DEFAULT_FILE_NAME)),
            (None, None) => None,
        }
    }

    /// The retention bounds these settings ask for.
    pub fn retention(&self) -> Retention {
        Retention {
            trace_max_age_secs: i64::from(self.trace_retention_days) * 86_400,
            metric_max_age_secs: i64::from(self.metric_retention_days) * 86_400,
            max_bytes: self.max_bytes,
        }
    }
}

/// What a prune removes: anything older than the ages (0: no age bound), then the oldest
/// history until the database is under `max_bytes` (0: no size bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// A trace is removed, whole, when its first event is older than this (seconds).
    pub trace_max_age_secs: i64,
    /// A metric sample is removed when older than this (seconds).
    pub metric_max_age_secs: i64,
    /// Most bytes of the database file plus its write-ahead log.
    pub max_bytes: u64,
}

/// What one prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Events removed.
    pub events: u64,
    /// Spans (traces) removed.
    pub spans: u64,
    /// Metric samples removed.
    pub samples: u64,
    /// Database bytes (file plus log) before.
    pub bytes_before: u64,
    /// Database bytes (file plus log) after.
    pub bytes_after: u64,
}

/// What the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    /// Stored events.
    pub events: u64,
    /// Stored spans (traces).
    pub spans: u64,
    /// Stored metric samples.
    pub samples: u64,
    /// Database bytes (file plus log).
    pub bytes: u64,
    /// Lowest stored sequence number.
    pub oldest_seq: Option<u64>,
    /// Highest stored sequence number.
    pub newest_seq: Option<u64>,
}

/// The JSON envelope of every answer: `{"data": …}`.
#[derive(Debug, Clone, Serialize)]
pub struct Data<T> {
    /// The answer.
    pub data: T,
}

/// One page of a list answer: `{"items":[…],"total":N}`, `total` counting every match.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// Matches over all pages.
    pub total: u64,
}

impl<T> Page<T> {
    /// The same page with every item mapped (for Stalwart's classic answer, which lists the
    /// span ids: `page.map(|t| t.id)`).
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), total: self.total }
    }
}

/// One word of a `filter=` keyword search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keyword {
    /// The word, lowercased.
    pub text: String,
    /// `"quoted"`: the whole keyword value must equal it; otherwise the value must contain
    /// it at a word boundary (`example.org` finds `alice@example.org`, `exam` finds
    /// `example.org`).
    pub exact: bool,
}

/// Splits a Stalwart `filter=` value into keywords: words separated by whitespace, double
/// quotes group an exact value (`"alice@example.org"`). Every keyword must match (AND).
pub fn parse_keywords(filter: &str) -> Vec<Keyword> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut quoted = false;
    let mut push = |buf: &mut String, exact: bool| {
        if !buf.is_empty() {
            out.push(Keyword { text: buf.to_lowercase(), exact });
            buf.clear();
        }
    };
    for c in filter.chars() {
        match c {
            '"' => {
                push(&mut buf, quoted);
                quoted = !quoted;
            }
            c if c.is_whitespace() && !quoted => push(&mut buf, false),
            c => buf.push(c),
        }
    }
    push(&mut buf, quoted);
    out
}

/// A traces list query (`GET /api/telemetry/traces`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceQuery {
    /// The span's first event type (`smtp.connection-start`, `delivery.attempt-start`, …).
    pub event_type: Option<String>,
    /// A queue id any event of the span carries.
    pub queue_id: Option<String>,
    /// Keywords, all of which the span's from/to/domain/hostname/remoteIp values must match.
    pub keywords: Vec<Keyword>,
    /// Spans that started at or after this time (Unix seconds).
    pub after: Option<i64>,
    /// Spans that started before this time (Unix seconds).
    pub before: Option<i64>,
    /// Only these spans (`id=a,b`), when not empty; at most [`MAX_SPAN_IDS`].
    pub span_ids: Vec<u64>,
    /// The page, from 1 (0 is read as 1).
    pub page: usize,
    /// Items per page; 0 means [`MAX_PAGE_ITEMS`], and larger values are capped there.
    pub limit: usize,
    /// `values=1`: the answer lists each span's first event (the classic form, with
    /// `data.spanId`) instead of its summary. The store ignores it; the HTTP answer reads it.
    pub values: bool,
}

/// A metrics history query (`GET /api/telemetry/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricQuery {
    /// Samples taken at or after this time (Unix seconds).
    pub after: Option<i64>,
    /// Samples taken before this time (Unix seconds).
    pub before: Option<i64>,
    /// Metric names or globs (`queue.*`); empty selects all.
    pub metrics: Vec<String>,
    /// The page, from 1 (0 is read as 1).
    pub page: usize,
    /// Items per page; 0 means [`MAX_PAGE_ITEMS`], and larger values are capped there.
    pub limit: usize,
}

impl TraceQuery {
    /// Parses Stalwart's query string: `type`, `queue_id` (also `queue-id`), `filter`,
    /// `before`, `after`, `page`, `limit`, `values`, and livetap's `id` (span ids,
    /// comma-separated; repeated parameters add up). Times are RFC 3339, a date
    /// (`2026-11-01`, UTC midnight) or Unix seconds. `values` is true unless empty, `0` or
    /// `false`. Unknown parameters are ignored, as Stalwart does, but every name and value
    /// must decode (whole `%XX` escapes, UTF-8), known or not.
    pub fn from_query_string(query: &str) -> Result<TraceQuery, ParseError> {
        let mut q = TraceQuery::default();
        for pair in crate::query::pairs(query) {
            let (name, value) = pair?;
            match name.as_ref() {
                "id" => parse_span_ids(&value, &mut q.span_ids)?,
                "values" => q.values = !matches!(value.trim(), "" | "0" | "false"),
                "type" if !value.is_empty() => q.event_type = Some(value.to_ascii_lowercase()),
                "queue_id" | "queue-id" if !value.is_empty() => q.queue_id = Some(value.into_owned()),
                "filter" => q.keywords.extend(parse_keywords(&value)),
                "before" => q.before = Some(parse_time("before", &value)?),
                "after" => q.after = Some(parse_time("after", &value)?),
                "page" => q.page = parse_count("page", &value)?,
                "limit" => q.limit = parse_count("limit", &value)?,
                _ => {}
            }
        }
        Ok(q)
    }

    /// Limits a list that names no time and no span (no `after`, `before`, `queue_id` or
    /// `id`) to spans that started in the last [`DEFAULT_WINDOW_SECS`] before `now`. A queue
    /// id or span id names spans the caller wants whatever their age (the old web admin's
    /// message page asks for a queued message's history, which can be days old).
    pub fn default_window(&mut self, now: i64) {
        if self.after.is_none()
            && self.before.is_none()
            && self.queue_id.is_none()
            && self.span_ids.is_empty()
        {
            self.after = Some(now.saturating_sub(DEFAULT_WINDOW_SECS));
        }
    }
}

/// Adds the span ids of one `id=` value (`a,b,…`) to `ids`: each a decimal `u64`; an empty
/// value adds none (like Stalwart's other empty parameters), an empty item is an error.
fn parse_span_ids(value: &str, ids: &mut Vec<u64>) -> Result<(), ParseError> {
    if value.trim().is_empty() {
        return Ok(());
    }
    for item in value.split(',') {
        let id = item.trim().parse::<u64>().map_err(|_| {
            param_error("id", "span ids: unsigned decimal integers separated by commas (id=4711,4712)")
        })?;
        if ids.len() >= MAX_SPAN_IDS {
            return Err(param_error("id", &format!("at most {MAX_SPAN_IDS} span ids")));
        }
        ids.push(id);
    }
    Ok(())
}

impl MetricQuery {
    /// Parses `after`, `before` (times as for traces), `metrics` (comma-separated names or
    /// globs), `page` and `limit`. Unknown parameters are ignored; every name and value must
    /// decode, as for traces.
    pub fn from_query_string(query: &str) -> Result<MetricQuery, ParseError> {
        let mut q = MetricQuery::default();
        for pair in crate::query::pairs(query) {
            let (name, value) = pair?;
            match name.as_ref() {
                "before" => q.before = Some(parse_time("before", &value)?),
                "after" => q.after = Some(parse_time("after", &value)?),
                "metrics" => q
                    .metrics
                    .extend(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)),
                "page" => q.page = parse_count("page", &value)?,
                "limit" => q.limit = parse_count("limit", &value)?,
                _ => {}
            }
        }
        Ok(q)
    }
}

fn param_error(parameter: &str, expected: &str) -> ParseError {
    ParseError { parameter: parameter.to_string(), position: 0, expected: expected.to_string() }
}

fn parse_count(parameter: &str, value: &str) -> Result<usize, ParseError> {
    value.trim().parse().map_err(|_| param_error(parameter, "a non-negative integer"))
}

/// Reads a time parameter: RFC 3339 (any offset), a date `YYYY-MM-DD` (midnight UTC), or
/// Unix seconds.
pub fn parse_time(parameter: &str, value: &str) -> Result<i64, ParseError> {
    let v = value.trim();
    let expected = "an RFC 3339 time (2026-11-01T10:00:00Z), a date (2026-11-01) or Unix seconds";
    if let Ok(n) = v.parse::<i64>() {
        return encode::parse_timestamp(&RawValue::Int(n)).ok_or_else(|| param_error(parameter, expected));
    }
    if let Some(t) = encode::parse_timestamp(&RawValue::Str(Cow::Borrowed(v))) {
        return Ok(t);
    }
    parse_date(v).ok_or_else(|| param_error(parameter, expected))
}

fn parse_date(v: &str) -> Option<i64> {
    let mut parts = v.splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

/// Serialises Unix seconds as Stalwart's `2026-11-20T12:34:56Z`.
fn serialize_time<S: Serializer>(secs: &i64, s: S) -> Result<S::Ok, S::Error> {
    let b = encode::format_timestamp(*secs);
    s.serialize_str(std::str::from_utf8(&b).unwrap_or("1970-01-01T00:00:00Z"))
}

/// One line of the traces list: a span's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    /// The span id (`GET /api/telemetry/trace/{id}` takes it).
    pub id: u64,
    /// The type of the span's first stored event.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The first queue id seen in the span.
    pub queue_id: Option<String>,
    /// Creation time of its earliest event.
    #[serde(serialize_with = "serialize_time")]
    pub started_at: i64,
    /// Creation time of its latest event.
    #[serde(serialize_with = "serialize_time")]
    pub ended_at: i64,
    /// Stored events.
    pub events: u64,
    /// Public id (`seq + 1`) of its first stored event.
    pub first_event_id: u64,
    /// Public id (`seq + 1`) of its last stored event.
    pub last_event_id: u64,
}

/// One stored event: the bytes livetap streamed, and what the store indexed it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Ring position; the stream's event id is `seq + 1`.
    pub seq: u64,
    /// Its span, if any.
    pub span_id: Option<u64>,
    /// Event type.
    pub event_type: String,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// The event's JSON object, byte for byte as the live stream sent it.
    pub json: Bytes,
}

impl StoredEvent {
    /// The public event id (`id:` in the stream).
    pub fn id(&self) -> u64 {
        self.seq + 1
    }

    /// Rebuilds the [`Event`] a matcher needs (keys, search text, span) from the stored
    /// bytes, so a resume from disk is matched by the same compiled index as live events.
    /// The result carries the stored bytes unchanged.
    pub fn to_event(&self, builder: &mut EventBuilder<'_>) -> Result<Event, crate::event::BuildError> {
        let mut raw = RawValue::parse_serde(&self.json).map_err(crate::event::BuildError::Json)?;
        // The stream's JSON leaves `spanId` out, as Stalwart does. Putting it back into
        // `data` gives the rebuilt event its span (span following) and its `span-id` key.
        if let (RawValue::Object(members), Some(span)) = (&mut raw, self.span_id) {
            let span = (Cow::Borrowed("spanId"), RawValue::UInt(span));
            match members.iter_mut().find(|(k, _)| k == "data") {
                Some((_, RawValue::Object(data))) => data.insert(0, span),
                _ => members.push((Cow::Borrowed("data"), RawValue::Object(vec![span]))),
            }
        }
        let mut ev = builder.build(&raw, self.created_at)?;
        ev.set_json(&self.json);
        Ok(ev)
    }
}

/// A stored event serialises as its JSON object (Stalwart's event shape).
impl Serialize for StoredEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v: serde_json::Value = serde_json::from_slice(&self.json).map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
}

/// Writes events as one JSON array of their stored bytes (`[a,b,…]`) without parsing them:
/// the body of `{"data":[…]}` for `GET /api/telemetry/trace/{id}`.
pub fn write_json_array(events: &[StoredEvent], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.json);
    }
    out.push(b']');
}

/// The kind of a metric sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// A count of occurrences.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution (count and sum).
    Histogram,
}

/// One metric reading handed to [`HistoryWriter::sample_metrics`]: totals since start for
/// counters and histograms (the writer stores the increase since the previous sample),
/// the current value for gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// Dotted name (`delivery.total-time`).
    pub name: Arc<str>,
    /// Its kind.
    pub kind: MetricKind,
    /// Counter total or gauge value (unused for histograms).
    pub value: f64,
    /// Histogram observations so far (unused otherwise).
    pub count: u64,
    /// Histogram sum of observations so far (unused otherwise).
    pub sum: f64,
}

impl From<&MetricValue> for MetricSample {
    fn from(m: &MetricValue) -> Self {
        let (kind, value, count, sum) = match &m.reading {
            Reading::Counter(v) => (MetricKind::Counter, *v as f64, 0, 0.0),
            Reading::Gauge(v) => (MetricKind::Gauge, *v, 0, 0.0),
            Reading::Histogram(h) => (MetricKind::Histogram, 0.0, h.count, h.sum),
        };
        MetricSample { name: m.name.clone(), kind, value, count, sum }
    }
}

/// One stored metric point, as the store writes and answers it. Serialises like Stalwart's
/// history: `{"type":"counter","id":NAME,"timestamp":RFC3339,"value":N}`, gauges likewise,
/// histograms with `count` and `sum` instead of `value`. Counter values and histogram
/// counts and sums are increases over the sampling interval that ends at `timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MetricPoint {
    /// Occurrences during the interval.
    Counter {
        /// Metric name.
        id: String,
        /// Sample time.
        #[serde(serialize_with = "serialize_time")]
        timestamp: i64,
        /// The increase.
        value: u64,
    },
    /// The value at sampling time.
    Gauge {
        /// Metric name.
        id: String,
        /// Sample time.
        #[serde(serialize_with = "serialize_time")]
        timestamp: i64,
        /// The value.
        value: f64,
    },
    /// Observations during the interval.
    Histogram {
        /// Metric name.
        id: String,
        /// Sample time.
        #[serde(serialize_with = "serialize_time")]
        timestamp: i64,
        /// Observations.
        count: u64,
        /// Their sum.
        sum: f64,
    },
}

impl MetricPoint {
    /// The metric's name.
    pub fn name(&self) -> &str {
        match self {
            MetricPoint::Counter { id, .. }
            | MetricPoint::Gauge { id, .. }
            | MetricPoint::Histogram { id, .. } => id,
        }
    }

    /// The sample time (Unix seconds).
    pub fn timestamp(&self) -> i64 {
        match self {
            MetricPoint::Counter { timestamp, .. }
            | MetricPoint::Gauge { timestamp, .. }
            | MetricPoint::Histogram { timestamp, .. } => *timestamp,
        }
    }
}

/// The key ids the history reads: `queueId` for the selection, and the keyword keys
/// (`from`, `to`, `domain`, `hostname`, `remoteIp`) for the traces search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryKeys {
    /// `queueId`.
    pub queue_id: Option<KeyId>,
    /// The keyword keys.
    pub keywords: SmallVec<[KeyId; 8]>,
}

impl HistoryKeys {
    /// The keys whose values the traces list can be searched by (Stalwart's set).
    pub const KEYWORD_NAMES: [&'static str; 5] = ["from", "to", "domain", "hostname", "remoteIp"];

    /// Looks the keys up by their JSON names, registering any the registry does not know yet
    /// (it normally has them all from the catalogue).
    pub fn resolve(keys: &KeyRegistry) -> HistoryKeys {
        let get =
            |name: &str, kind: KeyKind| keys.lookup(name).or_else(|| keys.register(name, kind)).map(|k| k.0);
        HistoryKeys {
            queue_id: get("queueId", KeyKind::Id),
            keywords: Self::KEYWORD_NAMES
                .iter()
                .filter_map(|n| get(n, if *n == "remoteIp" { KeyKind::Ip } else { KeyKind::Folded }))
                .collect(),
        }
    }

    /// True when `ev` carries a queue id.
    pub fn has_queue_id(&self, ev: &Event) -> bool {
        self.queue_id.is_some_and(|q| ev.fields().any(|(k, _)| k == q))
    }
}

/// One event on its way to the store, with what the store indexes it by.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// Ring position.
    pub seq: u64,
    /// The event (its bytes, type, time and span).
    pub event: Arc<Event>,
    /// The event's first queue id (canonical value): the `queue_id` of the event's row, and of
    /// its span's summary when it is the span's first.
    pub queue_id: Option<Box<str>>,
    /// Queue ids to add to the span's queue-id index: the event's distinct queue ids that the
    /// writer has not sent for the span yet (the store ignores repeats).
    pub span_queue_ids: SmallVec<[Box<str>; 1]>,
    /// Keyword values (lowercased) to add to the span's search index; the writer leaves out
    /// those it already sent for the span, and the store ignores repeats.
    pub keywords: SmallVec<[Box<str>; 2]>,
}

/// A history backend. Every method may block on I/O: async callers use their blocking pool.
///
/// Writes come from the one writer thread; reads may come from any thread at the same time.
pub trait HistoryStore: Send + Sync {
    /// Writes a batch atomically (all or nothing). An event whose `seq` is already stored is
    /// skipped.
    fn write_events(&self, batch: &[EventRecord]) -> Result<(), StoreError>;

    /// Writes metric points taken at one time, atomically.
    fn write_metrics(&self, points: &[MetricPoint]) -> Result<(), StoreError>;

    /// The traces list: span summaries, newest span first.
    fn traces(&self, query: &TraceQuery) -> Result<Page<TraceSummary>, StoreError>;

    /// Every stored event of one span, in sequence order (empty when unknown).
    fn trace(&self, span_id: u64) -> Result<Vec<StoredEvent>, StoreError>;

    /// The first stored event of each of `span_ids` that is stored, in any order (the
    /// `values=1` answer of the traces list). This default reads each whole span; a backend
    /// answers it in one query.
    fn first_events(&self, span_ids: &[u64]) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::with_capacity(span_ids.len());
        for &id in span_ids {
            if let Some(first) = self.trace(id)?.into_iter().next() {
                out.push(first);
            }
        }
        Ok(out)
    }

    /// Metric points, oldest first (then by name).
    fn metrics(&self, query: &MetricQuery) -> Result<Page<MetricPoint>, StoreError>;

    /// Up to `limit` stored events with `seq >= from_seq`, in sequence order. To resume a
    /// client whose `Last-Event-ID` is `N`, call it with `from_seq = N` (public ids are
    /// `seq + 1`), then again from the last returned `seq + 1`. Only selected events are
    /// stored, so the answer has holes where events were not kept.
    fn events_since_seq(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// When more than `n` stored events have `from <= seq < until`: the `seq` of the oldest of
    /// the newest `n` of them, where a bounded resume starts reading; `None` when `n` or fewer
    /// are stored there.
    fn floor_for_newest(&self, from: u64, until: u64, n: usize) -> Result<Option<u64>, StoreError>;

    /// The lowest stored `seq` among events created at or after `time` (Unix seconds), for
    /// `since=`; `None` when no stored event is that recent.
    fn first_seq_at_or_after(&self, time: i64) -> Result<Option<u64>, StoreError>;

    /// The first sequence number never stored: where a restarted hub starts its ring so ids
    /// keep growing.
    fn next_seq(&self) -> Result<u64, StoreError>;

    /// Removes what `retention` no longer allows; `now` is the current Unix time.
    fn prune(&self, retention: &Retention, now: i64) -> Result<PruneReport, StoreError>;

    /// Counts and size.
    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Bytes the store takes on disk now, as the size bound counts them (cheap: the writer
    /// asks after every twentieth of the bound it writes).
    fn disk_bytes(&self) -> Result<u64, StoreError>;

    /// [`HistoryStore::disk_bytes`] for reports and benchmarks that cannot act on an error:
    /// 0 when the store cannot tell.
    fn size_bytes(&self) -> u64 {
        self.disk_bytes().unwrap_or(0)
    }

    /// Runs the backend's own consistency check and returns its findings, `["ok"]` when
    /// sound. A backend with no check of its own has nothing to report, so it answers `["ok"]`.
    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        Ok(vec!["ok".to_string()])
    }

    /// The local file the store keeps its data in, for diagnostics and for tools that inspect
    /// it; an empty path for a store that keeps none (in memory, or on a server).
    fn path(&self) -> &Path {
        Path::new("")
    }
}

/// Opens (or creates) the store that `config` asks for at `path`, without a writer: the one
/// place that picks the backend. [`History::open`] starts a writer on what it returns, and
/// the `livetap history` command queries it directly (SQLite's write-ahead log lets it read
/// while a server writes).
///
/// There is one backend today, the embedded SQLite file; a second one would be chosen here
/// from a `[history]` setting, and nothing above `store/` would change.
pub fn open_store(config: &HistoryConfig, path: &Path) -> Result<Arc<dyn HistoryStore>, StoreError> {
    // The settings do not choose among backends yet; taking them here keeps every caller
    // ready for when they do.
    let _ = config;
    Ok(Arc::new(SqliteStore::open(path)?))
}

/// An opened history: the store (for queries) and its running writer (for feeding).
pub struct History {
    /// The store, shared with the writer; queries go here.
    pub store: Arc<dyn HistoryStore>,
    /// The writer; feed it events and metric samples.
    pub writer: HistoryWriter,
}

impl History {
    /// Opens the history `config` asks for, in `data_dir` unless `config` names its own
    /// place, and starts its writer; `None` when history is off or has no place. The keep
    /// query, if any, is parsed against `keys`.
    pub fn from_config(
        config: &HistoryConfig,
        data_dir: Option<&Path>,
        keys: &KeyRegistry,
    ) -> Result<Option<History>, StoreError> {
        match config.resolve_path(data_dir) {
            Some(path) => History::open(&path, config, keys).map(Some),
            None => Ok(None),
        }
    }

    /// Opens (or creates) the configured store at `path` ([`open_store`]) and starts the
    /// writer and retention threads with `config`. The keep query, if any, is parsed against
    /// `keys`.
    pub fn open(path: &Path, config: &HistoryConfig, keys: &KeyRegistry) -> Result<History, StoreError> {
        // Checked before the store is opened, so a bad setting never creates a file.
        config.validate()?;
        let keep = keep_predicate(config, keys)?;
        History::start_with(open_store(config, path)?, config, keys, keep)
    }

    /// Starts the writer and retention threads with `config` on a store that is already open,
    /// whatever its backend. The keep query, if any, is parsed against `keys`.
    pub fn start(
        store: Arc<dyn HistoryStore>,
        config: &HistoryConfig,
        keys: &KeyRegistry,
    ) -> Result<History, StoreError> {
        let keep = keep_predicate(config, keys)?;
        History::start_with(store, config, keys, keep)
    }

    fn start_with(
        store: Arc<dyn HistoryStore>,
        config: &HistoryConfig,
        keys: &KeyRegistry,
        keep: Option<KeepFn>,
    ) -> Result<History, StoreError> {
        let writer = HistoryWriter::start(store.clone(), HistoryKeys::resolve(keys), config, keep)?;
        Ok(History { store, writer })
    }
}

/// The configured keep query as a predicate (`Expr::eval`), or `None` when there is none.
pub fn keep_predicate(config: &HistoryConfig, keys: &KeyRegistry) -> Result<Option<KeepFn>, StoreError> {
    let Some(q) = config.keep.as_deref().filter(|q| !q.trim().is_empty()) else {
        return Ok(None);
    };
    let parsed = crate::query::parse_pairs(q, keys, &crate::query::Limits::default())
        .map_err(StoreError::KeepQuery)?;
    // Widened to both catalogue generations' names, as a stream's query is.
    let expr = crate::query::generations::across_generations(parsed.expr);
    Ok(Some(Arc::new(move |ev: &Event| expr.eval(ev))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_split_like_stalwart() {
        let k = parse_keywords(r#"  Example.org "Alice@Example.org"  10.0.0.5 "two words" "#);
        let got: Vec<(&str, bool)> = k.iter().map(|k| (k.text.as_str(), k.exact)).collect();
        assert_eq!(
            got,
            vec![
                ("example.org", false),
                ("alice@example.org", true),
                ("10.0.0.5", false),
                ("two words", true)
            ]
        );
        assert!(parse_keywords("   ").is_empty());
        assert_eq!(parse_keywords("\"open").len(), 1);
    }

    #[test]
    fn trace_query_from_stalwart_params() {
        let q = TraceQuery::from_query_string(
            "type=SMTP.connection-start&queue_id=42&filter=example.org+bob&after=2026-11-01&before=1793577600&page=2&limit=50&values=1",
        )
        .unwrap();
        assert_eq!(q.event_type.as_deref(), Some("smtp.connection-start"));
        assert_eq!(q.queue_id.as_deref(), Some("42"));
        assert_eq!(q.keywords.len(), 2);
        assert_eq!(q.after, Some(1_793_491_200));
        assert_eq!(q.before, Some(1_793_577_600));
        assert_eq!((q.page, q.limit), (2, 50));
        assert!(q.values && q.span_ids.is_empty());
        let q = TraceQuery::from_query_string("id=7,+18446744073709551615&id=9&values=0&id=").unwrap();
        assert_eq!((q.span_ids, q.values), (vec![7, u64::MAX, 9], false));
        for bad in ["id=x", "id=1,,2", "id=-1", "id=1.5"] {
            assert_eq!(TraceQuery::from_query_string(bad).unwrap_err().parameter, "id", "{bad}");
        }
        let many = vec!["1"; MAX_SPAN_IDS + 1].join(",");
        let e = TraceQuery::from_query_string(&format!("id={many}")).unwrap_err();
        assert!(e.parameter == "id" && e.expected.contains("at most"), "{e:?}");
        let e = TraceQuery::from_query_string("after=yesterday").unwrap_err();
        assert_eq!(e.parameter, "after");
        assert!(TraceQuery::from_query_string("limit=-1").is_err());
        let t = parse_time("before", "2026-11-01T01:00:00+01:00").unwrap();
        assert_eq!(t, 1_793_491_200);
    }

    #[test]
    fn the_default_window_applies_only_to_lists_that_name_no_time_and_no_span() {
        let now = 1_800_000_000;
        let windowed = |query: &str| {
            let mut q = TraceQuery::from_query_string(query).unwrap();
            q.default_window(now);
            q.after
        };
        assert_eq!(windowed(""), Some(now - 86_400));
        assert_eq!(windowed("type=delivery.attempt-start&filter=x&values=1"), Some(now - 86_400));
        assert_eq!(windowed("after=5"), Some(5));
        assert_eq!(windowed("before=5"), None);
        assert_eq!(windowed("queue_id=7"), None);
        assert_eq!(windowed("id=7"), None);
    }

    #[test]
    fn metric_query_params() {
        let q = MetricQuery::from_query_string("metrics=queue.count,+delivery.*&after=0&limit=10").unwrap();
        assert_eq!(q.metrics, vec!["queue.count", "delivery.*"]);
        assert_eq!(q.after, Some(0));
        assert_eq!(q.limit, 10);
    }

    #[test]
    fn config_defaults_and_kebab_case() {
        let c: HistoryConfig = toml::from_str("").unwrap();
        assert_eq!(c, HistoryConfig::default());
        assert_eq!(c.max_span_events, 2048);
        assert_eq!(c.retention().trace_max_age_secs, 30 * 86_400);
        let c: HistoryConfig =
            toml::from_str("max-bytes = 10485760\ntrace-retention-days = 7\nkeep = \"level=warn\"").unwrap();
        assert_eq!((c.max_bytes, c.trace_retention_days), (10 << 20, 7));
        assert!(toml::from_str::<HistoryConfig>("max_bytes = 1").is_err());
        assert!(HistoryConfig { batch_size: 0, ..HistoryConfig::default() }.validate().is_err());
        assert!(HistoryConfig { max_bytes: 1000, ..HistoryConfig::default() }.validate().is_err());
        let dir = Path::new("/var/lib/livetap");
        assert_eq!(c.resolve_path(Some(dir)), Some(dir.join(DEFAULT_FILE_NAME)));
        assert_eq!(c.resolve_path(None), None);
        let off = HistoryConfig { enabled: false, ..HistoryConfig::default() };
        assert_eq!(off.resolve_path(Some(dir)), None);
    }

    #[test]
    fn readme_keep_queries_parse() {
        let (_, k) = crate::event::Catalogue::with_keys(1024);
        for q in ["level=warn", "q=event:auth.* OR remote-ip:10.0.0.0/8"] {
            let c = HistoryConfig { keep: Some(q.into()), ..HistoryConfig::default() };
            assert!(keep_predicate(&c, &k).unwrap().is_some(), "{q}");
        }
        let none = HistoryConfig { keep: Some("  ".into()), ..HistoryConfig::default() };
        assert!(keep_predicate(&none, &k).unwrap().is_none());
    }

    #[test]
    fn metric_points_serialise_like_stalwart() {
        let p = MetricPoint::Histogram { id: "delivery.total-time".into(), timestamp: 0, count: 3, sum: 1.5 };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"type":"histogram","id":"delivery.total-time","timestamp":"1970-01-01T00:00:00Z","count":3,"sum":1.5}"#
        );
        let page = Data { data: Page { items: vec![1u64, 2], total: 7 } };
        assert_eq!(serde_json::to_string(&page).unwrap(), r#"{"data":{"items":[1,2],"total":7}}"#);
    }

    #[test]
    fn stored_event_rebuilds_the_same_event() {
        let (c, k) = crate::event::Catalogue::with_keys(1024);
        let ev = crate::event::testing::event(
            &c,
            &k,
            r#"{"type":"smtp.rcpt-to","createdAt":"2026-11-20T10:00:00Z","data":{"spanId":9,"to":["a@x.org","b@y.org"],"queueId":77,"size":1.5}}"#,
        );
        let stored = StoredEvent {
            seq: 4,
            span_id: ev.span_id,
            event_type: ev.kind.to_string(),
            created_at: ev.created_at,
            json: ev.json.clone(),
        };
        let mut b = EventBuilder::new(&c, &k);
        let back = stored.to_event(&mut b).unwrap();
        assert_eq!(back.json, ev.json);
        assert_eq!(back.span_id, Some(9));
        assert_eq!(back.fields().collect::<Vec<_>>(), ev.fields().collect::<Vec<_>>());
        assert_eq!(back.search_text(), ev.search_text());
        // The builder's own output, fed back, serialises to the same bytes.
        let raw = RawValue::parse_serde(&ev.json).unwrap();
        assert_eq!(b.build(&raw, 0).unwrap().json, ev.json);
        let mut out = Vec::new();
        write_json_array(&[stored.clone(), stored], &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
    }
}
