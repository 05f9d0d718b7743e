//! The event model: what one ingested event is once built, and the builder that makes it.
//!
//! An [`Event`] carries its Stalwart-shaped JSON bytes (serialised exactly once, here), and the
//! precomputed match view the matcher needs: canonical key values and a lowercase haystack for
//! `filter=` substring search. Matching therefore never looks at JSON and never allocates.

pub mod catalogue;
pub mod classic;
pub mod dialect;
pub mod encode;
pub mod json;
pub mod keys;
pub mod raw;
pub mod tape;
pub mod v016;

use bytes::Bytes;
use smallvec::SmallVec;
use std::sync::Arc;

pub use catalogue::{Catalogue, TypeInfo, TypeName};
pub use json::{JsonRef, Node, Text};
pub use keys::{KeyId, KeyKind, KeyRegistry};
pub use raw::RawValue;
pub use tape::{Tape, TapeRef};

/// Severity levels, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unusual.
    Warn,
    /// A failure.
    Error,
}

impl Level {
    /// Parses `trace`, `debug`, `info`, `warn`/`warning`, `error` (case-insensitive).
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "trace" => Level::Trace,
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" | "warning" => Level::Warn,
            "error" => Level::Error,
            _ => return None,
        })
    }

    /// The lowercase name, as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The [`Event::home`] of an event built outside the parse threads (HTTP ingest, the demo,
/// history): it is freed wherever its last handle goes.
pub const NO_HOME: u8 = u8::MAX;

/// One ingested event: the bytes subscribers receive, plus what the matcher looks at.
#[derive(Debug)]
pub struct Event {
    /// Event type, such as `smtp.connection-start`.
    pub kind: TypeName,
    /// Level from the producer or, failing that, the catalogue.
    pub level: Level,
    /// Span this event belongs to (`spanId` in the producer's data).
    pub span_id: Option<u64>,
    /// The span this event's span was opened from (`parentSpanId` in the producer's data): a
    /// Postfix message's SMTP session, a bounce's original message. A subscriber following
    /// the parent follows this span too (`matcher::spans`).
    pub parent_span: Option<u64>,
    /// True when the type closes its span (or the source says the event does: a mail log's
    /// `removed` line ends its message).
    pub span_end: bool,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// The event's JSON object in the live stream's shape, serialised once at ingest.
    pub json: Bytes,
    /// The same bytes with a comma in front (`json` is a view into this one allocation): the
    /// form an event takes after the first in a frame's `data: [a,b,...]`, so a frame needs one
    /// `writev` part per event instead of two. See `Event::set_json`.
    pub wire: Bytes,
    fields: SmallVec<[(KeyId, u32, u32); 8]>,
    /// The canonical key values (ranges in `fields`) followed by the search haystack from
    /// `search_at` on: one allocation per event instead of two.
    text: Box<str>,
    search_at: u32,
    /// The parse thread that built the event ([`NO_HOME`] for any other), so its
    /// memory can be freed on that thread.
    home: u8,
    /// True when `wire` is already in the classic contract ([`Event::is_classic`]).
    classic: bool,
    /// Its wire bytes in the other dialects streams use, encoded on first use
    /// ([`Event::wire_in`]).
    other_forms: dialect::OtherForms,
}

impl Event {
    /// The parse thread that built this event, or [`NO_HOME`]: freeing an event
    /// on the thread that allocated it avoids the allocator's cross-thread path (see
    /// `ingest::pool`).
    #[inline]
    pub fn home(&self) -> u8 {
        self.home
    }

    /// Replaces the event's JSON (a stored copy that must be sent byte for byte), keeping
    /// `wire` consistent with it.
    pub fn set_json(&mut self, json: &[u8]) {
        let mut wire = Vec::with_capacity(json.len() + 1);
        wire.push(b',');
        wire.extend_from_slice(json);
        self.wire = Bytes::from(wire);
        self.json = self.wire.slice(1..);
    }

    /// The event's matchable key values: `(key, canonical value)`; a list value appears once
    /// per element.
    #[inline]
    pub fn fields(&self) -> impl Iterator<Item = (KeyId, &str)> + '_ {
        self.fields.iter().map(move |&(k, a, b)| (k, &self.text[a as usize..b as usize]))
    }

    /// The keys of [`Event::fields`], in the same order, without their values: the matcher
    /// looks a key up first and takes the value ([`Event::field_value`]) only for a key some
    /// query names. Slicing every value (a bounds and UTF-8 boundary check each) was most of
    /// what one keyed subscriber cost per event (`perf/RESULTS.md` §19).
    #[inline]
    pub fn field_keys(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.fields.iter().map(|&(k, _, _)| k)
    }

    /// The value of field number `i` of [`Event::field_keys`].
    #[inline]
    pub fn field_value(&self, i: usize) -> &str {
        let (_, a, b) = self.fields[i];
        &self.text[a as usize..b as usize]
    }

    /// The lowercase haystack for `filter=`: the type, then every string-like value,
    /// separated by `\u{1}` so a needle cannot match across two values.
    #[inline]
    pub fn search_text(&self) -> &str {
        &self.text[self.search_at as usize..]
    }

    /// True when the event's full form is also its classic form: every `data` key is one of
    /// the 66 classic keys and every value a string, number, boolean or array of those (no
    /// `null`, no object). Classic streams then share [`Event::wire`]; any other event is
    /// rewritten once for them ([`classic`], [`Event::classic_wire`]).
    #[inline]
    pub fn is_classic(&self) -> bool {
        self.classic
    }

    /// Bytes of the match view (canonical values and search text), for memory accounting.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Canonical values of one key (a list value yields several).
    pub fn values_of(&self, key: KeyId) -> impl Iterator<Item = &str> + '_ {
        self.fields().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// Why one producer event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The value is not a JSON object.
    #[error("an event must be a JSON object")]
    NotAnObject,
    /// `type` is missing or not a string.
    #[error("missing \"type\" (a string such as \"smtp.connection-start\")")]
    MissingType,
    /// `type` is empty, too long or has control characters.
    #[error("invalid \"type\": {0}")]
    BadType(&'static str),
    /// `createdAt` is not an RFC 3339 timestamp.
    #[error("invalid \"createdAt\": expected an RFC 3339 timestamp or Unix seconds")]
    BadCreatedAt,
    /// `level` is not a known level.
    #[error("invalid \"level\": expected trace, debug, info, warn or error")]
    BadLevel,
    /// `data` is not an object.
    #[error("\"data\" must be an object")]
    DataNotObject,
    /// Too many keys in `data`.
    #[error("too many keys in \"data\" (at most {0})")]
    TooManyKeys(usize),
    /// The JSON text itself is malformed.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The event's serialised JSON is longer than `max-event-bytes`.
    #[error("event larger than {0} bytes (max-event-bytes)")]
    TooLarge(usize),
}

/// Most keys accepted in one event's `data`.
pub const MAX_KEYS: usize = 128;

/// Builds [`Event`]s from producer JSON, reusing its scratch buffers across a batch.
pub struct EventBuilder<'c> {
    catalogue: &'c Catalogue,
    keys: &'c KeyRegistry,
    json: Vec<u8>,
    canon: String,
    search: String,
    fields: SmallVec<[(KeyId, u32, u32); 8]>,
    ts_cache: (i64, [u8; 20]),
    /// A snapshot of the key registry and its version: one atomic load per event checks it,
    /// instead of an `arc-swap` load per key.
    key_table: (Arc<keys::KeyTable>, u64),
    /// Largest serialised event accepted (`max-event-bytes`).
    max_bytes: usize,
    /// Stamped on every event built ([`Event::home`]).
    home: u8,
}

impl<'c> EventBuilder<'c> {
    /// A builder reading levels from `catalogue` and keys from `keys`.
    pub fn new(catalogue: &'c Catalogue, keys: &'c KeyRegistry) -> Self {
        EventBuilder {
            catalogue,
            keys,
            json: Vec::with_capacity(512),
            canon: String::with_capacity(128),
            search: String::with_capacity(256),
            fields: SmallVec::new(),
            ts_cache: (i64::MIN, [0; 20]),
            key_table: keys.snapshot(),
            max_bytes: usize::MAX,
            home: NO_HOME,
        }
    }

    /// Marks the events this builder makes as built by parse thread `home` (see
    /// [`Event::home`]).
    pub fn with_home(mut self, home: u8) -> Self {
        self.home = home;
        self
    }

    /// Rejects events whose serialised JSON is longer than `max` bytes
    /// ([`BuildError::TooLarge`]).
    pub fn with_max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// The largest serialised event this builder accepts.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Builds one event from a producer object (`{"type", "createdAt"?, "level"?, "text"?,
    /// "details"?, "data"?}`), parsed either onto a [`Tape`] (ingest) or into a [`RawValue`];
    /// `now` is used when `createdAt` is absent.
    pub fn build<'t, J: JsonRef<'t>>(&mut self, raw: J, now: i64) -> Result<Event, BuildError> {
        let Node::Object(members) = raw.node() else {
            return Err(BuildError::NotAnObject);
        };
        let mut ty = None;
        let mut created = None;
        let mut level = None;
        let mut text = None;
        let mut details = None;
        let mut data = None;
        let mut top_span = None;
        for (k, v) in members {
            match k.as_str() {
                "type" => ty = Some(v.as_str().ok_or(BuildError::MissingType)?),
                "createdAt" => created = Some(v),
                "level" => {
                    let s = v.as_str().ok_or(BuildError::BadLevel)?;
                    level = Some(Level::parse(s).ok_or(BuildError::BadLevel)?);
                }
                "text" => text = v.as_text(),
                "details" => details = v.as_text(),
                "data" => data = Some(v),
                "spanId" => top_span = span_of(v),
                _ => {}
            }
        }
        let ty = ty.ok_or(BuildError::MissingType)?;
        validate_type(ty)?;
        let info = self.catalogue.type_info(ty);
        let created_at = match created {
            Some(v) if !v.is_null() => encode::parse_timestamp(v).ok_or(BuildError::BadCreatedAt)?,
            _ => now,
        };
        let data = match data.map(JsonRef::node) {
            None | Some(Node::Null) => None,
            Some(Node::Object(m)) => Some(m),
            Some(_) => return Err(BuildError::DataNotObject),
        };
        if data.as_ref().is_some_and(|m| m.len() > MAX_KEYS) {
            return Err(BuildError::TooManyKeys(MAX_KEYS));
        }

        self.json.clear();
        // The separator first: `wire` is these bytes, `json` the view after the comma.
        self.json.push(b',');
        self.canon.clear();
        self.search.clear();
        self.fields.clear();
        keys::lowercase_into(ty, &mut self.search);

        let level = level.unwrap_or(info.level);
        let out = &mut self.json;
        out.extend_from_slice(b"{\"text\":");
        match text {
            Some(t) => encode::write_text(out, t),
            None => out.extend_from_slice(&info.default_text),
        }
        out.extend_from_slice(b",\"details\":");
        encode::write_text(out, details.unwrap_or(Text::clean("")));
        out.extend_from_slice(b",\"createdAt\":\"");
        if self.ts_cache.0 != created_at {
            self.ts_cache = (created_at, encode::format_timestamp(created_at));
        }
        out.extend_from_slice(&self.ts_cache.1);
        out.extend_from_slice(b"\",\"type\":");
        encode::write_str(out, ty);
        out.extend_from_slice(b",\"level\":\"");
        out.extend_from_slice(level.as_str().as_bytes());
        out.extend_from_slice(b"\",\"data\":{");

        let mut span_id = top_span;
        let mut parent_span = None;
        let mut first = true;
        // Whether the full form is also the classic one, found by the walks this loop makes
        // anyway (the key lookup, the match-value walk): no pass of its own.
        let mut classic = true;
        if self.key_table.1 != self.keys.version() {
            self.key_table = self.keys.snapshot();
        }
        for (k, v) in data.into_iter().flatten() {
            if k.as_str() == "spanId" {
                span_id = span_of(v).or(span_id);
                // The span is also a matchable key (`span-id=`), but Stalwart leaves it out of
                // the live stream's JSON, and so does livetap.
                if let (Some(s), Some((id, _))) = (span_id, self.key_table.0.lookup("spanId")) {
                    let a = self.canon.len() as u32;
                    self.canon.push_str(itoa::Buffer::new().format(s));
                    self.fields.push((id, a, self.canon.len() as u32));
                }
                continue;
            }
            if k.as_str() == "parentSpanId" {
                // Kept in the JSON (it tells a reader where the span came from) and matchable
                // like any key; the matcher also reads it to carry span following over.
                parent_span = span_of(v);
            }
            if v.is_empty_value() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            encode::write_text(out, k);
            out.push(b':');
            encode::write_value(out, v);

            let key = match self.key_table.0.lookup(&k) {
                Some(found) => Some(found),
                None => {
                    let added = self.keys.register(&k, KeyRegistry::kind_for_new(v));
                    if self.keys.version() != self.key_table.1 {
                        self.key_table = self.keys.snapshot();
                    }
                    added
                }
            };
            classic &= key.is_some_and(|(id, _)| self.key_table.0.is_classic(id));
            classic &= collect_match(v, key, &mut self.canon, &mut self.fields, &mut self.search, 0);
        }
        out.extend_from_slice(b"}}");
        if out.len() - 1 > self.max_bytes {
            // Checked on the output because that is what every later stage holds in memory
            // (ring, queues, replay log, history), whatever the input's whitespace or escapes.
            return Err(BuildError::TooLarge(self.max_bytes));
        }

        let mut ev = Event {
            kind: info.name.clone(),
            level,
            span_id,
            parent_span,
            span_end: info.span_end,
            created_at,
            json: Bytes::new(),
            wire: Bytes::new(),
            // `from_slice` copies the `Copy` entries in one go; `clone` pushes them one by one.
            fields: SmallVec::from_slice(&self.fields),
            text: {
                let mut t = String::with_capacity(self.canon.len() + self.search.len());
                t.push_str(&self.canon);
                t.push_str(&self.search);
                t.into_boxed_str()
            },
            search_at: self.canon.len() as u32,
            home: self.home,
            classic,
            other_forms: dialect::OtherForms::default(),
        };
        ev.wire = Bytes::copy_from_slice(&self.json);
        ev.json = ev.wire.slice(1..);
        Ok(ev)
    }
}

fn validate_type(ty: &str) -> Result<(), BuildError> {
    if ty.is_empty() {
        return Err(BuildError::BadType("empty"));
    }
    if ty.len() > 128 {
        return Err(BuildError::BadType("longer than 128 bytes"));
    }
    // Printable ASCII, what every real type is, needs no character decoding.
    if ty.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    if ty.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BuildError::BadType("contains whitespace or control characters"));
    }
    Ok(())
}

fn span_of<'t, J: JsonRef<'t>>(v: J) -> Option<u64> {
    match v.node() {
        Node::Int(i) => u64::try_from(i).ok(),
        Node::UInt(u) => Some(u),
        Node::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// Records the canonical match values and the search text of one data value. Returns true
/// when the value is in the classic contract as it is: a string, number or boolean, or an
/// array (two levels deep at most) of those; a `null`, an object or deeper nesting is
/// rewritten for classic clients ([`classic`]).
fn collect_match<'t, J: JsonRef<'t>>(
    v: J,
    key: Option<(KeyId, KeyKind)>,
    canon: &mut String,
    fields: &mut SmallVec<[(KeyId, u32, u32); 8]>,
    search: &mut String,
    depth: u8,
) -> bool {
    let push_field = |canon: &mut String, fields: &mut SmallVec<_>, id: KeyId, a: usize| {
        fields.push((id, a as u32, canon.len() as u32));
    };
    match v.node() {
        Node::Str(s) => {
            search.push('\u{1}');
            keys::lowercase_into(&s, search);
            if let Some((id, kind)) = key {
                let a = canon.len();
                kind.canonical_str(&s, canon);
                push_field(canon, fields, id, a);
            }
            true
        }
        Node::Int(i) => {
            if let Some((id, _)) = key {
                let a = canon.len();
                canon.push_str(itoa::Buffer::new().format(i));
                push_field(canon, fields, id, a);
            }
            true
        }
        Node::UInt(u) => {
            if let Some((id, _)) = key {
                let a = canon.len();
                canon.push_str(itoa::Buffer::new().format(u));
                push_field(canon, fields, id, a);
            }
            true
        }
        Node::Bool(b) => {
            if let Some((id, _)) = key {
                let a = canon.len();
                canon.push_str(if b { "true" } else { "false" });
                push_field(canon, fields, id, a);
            }
            true
        }
        Node::Float(_) => true,
        Node::Array(items) if depth < 2 => {
            let mut classic = true;
            for item in items {
                classic &= collect_match(item, key, canon, fields, search, depth + 1);
            }
            classic
        }
        // A nested object (such as `causedBy`) is searchable by `filter=`, but its members are
        // not keys of this event.
        Node::Object(members) if depth < 2 => {
            for (_, item) in members {
                collect_match(item, None, canon, fields, search, depth + 1);
            }
            false
        }
        _ => false,
    }
}

/// Test helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Catalogue, Event, EventBuilder, KeyRegistry, RawValue};

    /// Builds one event from producer JSON, panicking on invalid input (tests only).
    pub(crate) fn event(c: &Catalogue, k: &KeyRegistry, json: &str) -> Event {
        let raw = RawValue::parse_serde(json.as_bytes()).unwrap();
        EventBuilder::new(c, k).build(&raw, 0).unwrap()
    }

    /// One event built as parse thread `home` would build it.
    pub(crate) fn event_with_home(home: u8) -> Vec<std::sync::Arc<Event>> {
        let (c, k) = Catalogue::with_keys(64);
        let raw =
            RawValue::parse_serde(br#"{"type":"smtp.connection-start","data":{"remoteIp":"10.0.0.1"}}"#)
                .unwrap();
        vec![std::sync::Arc::new(EventBuilder::new(&c, &k).with_home(home).build(&raw, 0).unwrap())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    #[test]
    fn builds_stalwart_shape() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        let mut text = br#"{"id":"x","createdAt":"2026-11-20T12:34:56.789+01:00","type":"smtp.connection-start","data":{"spanId":77,"remoteIp":"::ffff:10.0.0.5","listenerId":"smtp","localPort":25,"remotePort":4242,"empty":"","to":["A@Example.org","b@x.net"],"causedBy":{"type":"x","text":"Boom"}}}"#.to_vec();
        let raw = RawValue::parse_simd(&mut text).unwrap();
        let ev = b.build(&raw, 0).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&ev.json).unwrap();
        assert_eq!(json["createdAt"], "2026-11-20T11:34:56Z");
        assert_eq!(json["type"], "smtp.connection-start");
        assert_eq!(json["level"], "debug");
        assert_eq!(json["text"], "SMTP connection start");
        assert_eq!(json["data"]["remotePort"], 4242);
        assert!(json["data"].get("spanId").is_none());
        assert!(json["data"].get("empty").is_none());
        assert_eq!(ev.span_id, Some(77));
        let ip = k.lookup("remoteIp").unwrap().0;
        assert_eq!(ev.values_of(ip).collect::<Vec<_>>(), vec!["10.0.0.5"]);
        let to = k.lookup("to").unwrap().0;
        assert_eq!(ev.values_of(to).collect::<Vec<_>>(), vec!["a@example.org", "b@x.net"]);
        assert!(ev.search_text().starts_with("smtp.connection-start"));
        assert!(ev.search_text().contains("boom"));
        assert!(!ev.search_text().contains("4242"));
    }

    #[test]
    fn rejects_bad_events() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        let cases: &[(&str, BuildError)] = &[
            ("[1]", BuildError::NotAnObject),
            (r#"{"data":{}}"#, BuildError::MissingType),
            (r#"{"type":""}"#, BuildError::BadType("empty")),
            (r#"{"type":"a","createdAt":"yesterday"}"#, BuildError::BadCreatedAt),
            (r#"{"type":"a","data":[1]}"#, BuildError::DataNotObject),
            (r#"{"type":"a","level":"loud"}"#, BuildError::BadLevel),
        ];
        for (text, want) in cases {
            let raw = RawValue::parse_serde(text.as_bytes()).unwrap();
            assert_eq!(&b.build(&raw, 0).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn the_size_cap_counts_the_serialised_json() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k).with_max_bytes(600);
        let fits = format!(r#"{{"type":"auth.success","details":"{}"}}"#, "x".repeat(400));
        let raw = RawValue::parse_serde(fits.as_bytes()).unwrap();
        let ev = b.build(&raw, 0).unwrap();
        assert!(ev.json.len() <= 600);
        // 400 bytes of details fit; 600 do not once the envelope livetap writes is added.
        let big = format!(r#"{{"type":"auth.success","details":"{}"}}"#, "x".repeat(600));
        let raw = RawValue::parse_serde(big.as_bytes()).unwrap();
        assert_eq!(b.build(&raw, 0).unwrap_err(), BuildError::TooLarge(600));
        // The builder is reusable after a rejection.
        assert!(b.build(&RawValue::parse_serde(br#"{"type":"a"}"#).unwrap(), 0).is_ok());
    }

    /// Builds `text` through the tape and through serde_json's tree, each with its own fresh
    /// registry, and demands the same event (or the same rejection) and the same registered
    /// keys. Returns whether an event was built.
    fn same_build(c: &Catalogue, regs: &(KeyRegistry, KeyRegistry), text: &[u8]) -> bool {
        let mut tape = Tape::new();
        let via_tape = tape
            .parse(text)
            .map_err(BuildError::Json)
            .and_then(|raw| EventBuilder::new(c, &regs.0).with_max_bytes(2_000).build(raw, 7));
        let tree = RawValue::parse_serde(text);
        let via_tree = tree
            .map_err(BuildError::Json)
            .and_then(|raw| EventBuilder::new(c, &regs.1).with_max_bytes(2_000).build(&raw, 7));
        let shown = String::from_utf8_lossy(text);
        let built = match (&via_tape, &via_tree) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    (&a.kind, a.level, a.span_id, a.span_end),
                    (&b.kind, b.level, b.span_id, b.span_end),
                    "{shown}"
                );
                assert_eq!(a.created_at, b.created_at, "{shown}");
                assert_eq!(a.json, b.json, "{shown}");
                assert_eq!(a.wire, b.wire, "{shown}");
                assert!(a.fields().eq(b.fields()), "{shown}");
                assert_eq!(a.search_text(), b.search_text(), "{shown}");
                assert_eq!(a.is_classic(), b.is_classic(), "{shown}");
                true
            }
            // The two parsers word a syntax error differently; it is the same rejection.
            (Err(BuildError::Json(_)), Err(BuildError::Json(_))) => false,
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{shown}");
                false
            }
            _ => {
                panic!("{shown}: tape {:?} vs tree {:?}", via_tape.map(|e| e.json), via_tree.map(|e| e.json))
            }
        };
        assert_eq!(regs.0.len(), regs.1.len(), "{shown}");
        for id in 0..regs.0.len() as KeyId {
            let (a, b) = (regs.0.info(id).unwrap(), regs.1.info(id).unwrap());
            assert_eq!((&a.name, a.kind), (&b.name, b.kind), "{shown}");
        }
        built
    }

    #[test]
    fn tape_and_tree_build_the_same_events() {
        let c = Catalogue::with_keys(1024).0;
        let regs = (Catalogue::with_keys(1024).1, Catalogue::with_keys(1024).1);
        // Realistic traffic: the demo generator's Stalwart events.
        let mut demo = crate::ingest::demo::DemoGenerator::new(3);
        let mut lines: Vec<String> = (0..3_000).map(|i| demo.ndjson_line(1_790_000_000 + i)).collect();
        // The corners of the builder: spans at both levels and of every shape, duplicates,
        // members in any order, escapes in keys and values, empty values, nesting, unknown
        // keys, numbers of every kind, bad members and the size cap.
        lines.extend(
            [
                r#"{"data":{"spanId":5,"remoteIp":"10.0.0.1"},"type":"smtp.connection-start","spanId":9}"#,
                r#"{"type":"smtp.connection-start","spanId":9,"data":{"spanId":1.5,"remoteIp":"10.0.0.1"}}"#,
                r#"{"type":"smtp.connection-start","spanId":"12","data":{"spanId":"x"}}"#,
                r#"{"type":"smtp.connection-start","spanId":-1,"data":{"spanId":18446744073709551615}}"#,
                r#"{"type":"a.b","data":{"x":1},"data":{"y":"2"}}"#,
                r#"{"type":"a.b","type":"c.d","level":"WARNING","level":"error"}"#,
                r#"{"type":"a.b","data":{"kéy":"v"alA","to":["A@X.org","",null,["b@y.net",["deep@z"]]]}}"#,
                r#"{"type":"a.b","data":{"e1":"","e2":[],"e3":{},"e4":null,"n":{"a":"","b":{"c":"Hi"}}}}"#,
                r#"{"type":"a.b","data":{"i":-0,"f":1.5e3,"u":18446744073709551615,"big":-9223372036854775809,"t":true}}"#,
                r#"{"type":"a.b","createdAt":1790000000,"text":"t\tx","details":"d\u0000"}"#,
                r#"{"type":"a.b","createdAt":"2026-11-20T12:34:56.789+01:00"}"#,
                r#"{"type":"a.b","createdAt":null,"data":null}"#,
                r#"{"type":"a.b","createdAt":-5}"#,
                r#"{"type":"a.b","createdAt":"soon"}"#,
                r#"{"type":"a.b","data":[]}"#,
                r#"{"type":"a.b","level":5}"#,
                r#"{"type":7}"#,
                r#"{"level":"loud","type":7}"#,
                r#"{"type":"a b"}"#,
                r#"{"type":""}"#,
                r#"[{"type":"a.b"}]"#,
                r#""type""#,
                r#"{"type":"a.b","data":{"newNumber":5,"newList":[true],"newFlag":false,"newText":"x"}}"#,
            ]
            .map(String::from),
        );
        lines.push(format!(r#"{{"type":"a.b","details":"{}"}}"#, "x".repeat(3_000)));
        let many: Vec<String> = (0..MAX_KEYS + 1).map(|i| format!(r#""k{i}":{i}"#)).collect();
        lines.push(format!(r#"{{"type":"a.b","data":{{{}}}}}"#, many.join(",")));
        let mut built = 0;
        for line in &lines {
            built += usize::from(same_build(&c, &regs, line.as_bytes()));
        }
        assert!(built > 3_000, "{built}");
        // Every line again with one byte changed: mostly rejections, some other events.
        let mut rng = fastrand::Rng::with_seed(9);
        for line in &lines {
            let mut bytes = line.clone().into_bytes();
            let at = rng.usize(..bytes.len());
            let swap = b"{}[]\",:0-.\\ azu";
            bytes[at] = swap[rng.usize(..swap.len())];
            same_build(&c, &regs, &bytes);
        }
    }

    #[test]
    fn unknown_keys_are_registered_and_unknown_types_accepted() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        let raw =
            RawValue::parse_serde(br#"{"type":"postfix.qmgr","data":{"clientName":"mx.Example.org","n":3}}"#)
                .unwrap();
        let ev = b.build(&raw, 1_700_000_000).unwrap();
        assert_eq!(ev.level, Level::Info);
        let (id, kind) = k.lookup("clientName").unwrap();
        assert_eq!(kind, KeyKind::String);
        assert_eq!(ev.values_of(id).collect::<Vec<_>>(), vec!["mx.Example.org"]);
        assert_eq!(k.lookup_param("client-name").unwrap().0, id);
        let json: serde_json::Value = serde_json::from_slice(&ev.json).unwrap();
        assert_eq!(json["createdAt"], "2023-11-14T22:13:20Z");
    }
}
