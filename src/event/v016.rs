//! Stalwart v0.16's live-tracing event JSON: two [`Encoder`]s (the `keyValues` list as a JSON
//! array, or as Stalwart's own index-keyed object) that rewrite an event's classic JSON.
//!
//! A v0.16 event is `{"event":"smtp.connection-start","timestamp":"2026-08-20T10:00:00Z",
//! "keyValues":[{"key":"remoteIp","value":{"@type":"IpAddr","value":"10.0.0.5"}},…]}`. Every
//! value is tagged with its `@type` (spec §3): strings are `String`, or `IpAddr`,
//! `UTCDateTime` when the catalogue says the key holds an address or a time; numbers are
//! `UnsignedInt`, `Integer` (negative) or `Float`, or `Duration` for a key of kind
//! `duration-ms`; `true`/`false` are `Boolean`, `null` is `Null`, an array is a `List` and a
//! nested event (an object with a `type`, such as `causedBy`) is an `Event` with `event` and
//! `value`. `spanId` comes first as an `UnsignedInt` entry, from [`Event::span_id`] (the
//! classic form leaves it out).
//!
//! **Why an array by default.** Stalwart's server writes a list as an object keyed by index
//! (`{"0":{…},"1":{…}}`, empty `{}`), but the v0.16 web UI reads the live `keyValues`, and the
//! `value` of a `List` or an `Event`, with `.length` and `.map`, so against Stalwart itself it
//! shows no keys at all. [`KeyValues::Array`] is what that UI can read; [`KeyValues::Object`]
//! is Stalwart's exact shape, for scripts written against the real server.
//!
//! **How.** The input is the event's classic JSON ([`Event::json`]), which livetap itself
//! wrote at ingest (`{"text","details","createdAt","type","level","data":{…}}`), so it is
//! valid, compact JSON whose strings are already escaped. A small scanner walks it once and
//! copies every string and number token through unchanged, wrapping each in its tagged
//! object: no tree, no decoding of strings, no allocation beyond `out`. The event name and
//! the timestamp come from the [`Event`] itself. A non-empty top-level `details` becomes a
//! `details` entry (after the data's keys) unless the data has its own. A nested object
//! without a `type` has no v0.16 counterpart; it is sent as a `String` holding its JSON text.
//! Input the scanner cannot read (which livetap never writes) yields the event with only its
//! `spanId`, still valid JSON: an encoder must not fail or panic on a matcher thread.

use super::dialect::{DialectError, Dialects, Encoder, WireForm};
use super::encode::{first_escape, format_timestamp, write_str};
use super::{Catalogue, Event};
use ahash::AHashMap;
use std::sync::Arc;

/// The registered name of the array form (the default of `/api/live/tracing`).
pub const ARRAY: &str = "v016";
/// The registered name of Stalwart's index-keyed object form.
pub const OBJECT: &str = "v016-object";

/// Deepest nesting of lists and events the scanner follows; livetap's own parsers stop at 16
/// levels, so this is never reached by an event livetap built.
const MAX_DEPTH: u32 = 64;

/// How `keyValues` (and the `value` of a `List` or an `Event`) is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValues {
    /// A JSON array: what the v0.16 web UI reads.
    Array,
    /// Stalwart's own form: an object keyed by the index as a string, `{}` when empty.
    Object,
}

/// How a key's values are typed beyond their JSON token, from the catalogue's key kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// `ip`: strings are `IpAddr`.
    Ip,
    /// `timestamp`: strings are `UTCDateTime`.
    Timestamp,
    /// `duration-ms`: non-negative numbers are `Duration`.
    Duration,
}

impl ValueKind {
    fn from_name(kind: &str) -> Option<ValueKind> {
        match kind {
            "ip" => Some(ValueKind::Ip),
            "timestamp" => Some(ValueKind::Timestamp),
            "duration-ms" => Some(ValueKind::Duration),
            _ => None,
        }
    }
}

/// The v0.16 encoder in one of its two [`KeyValues`] forms.
#[derive(Debug, Clone)]
pub struct V016 {
    form: KeyValues,
    /// The keys whose values are typed by their kind (addresses, times, durations), by their
    /// camelCase name as bytes; every other key is typed by its JSON token alone.
    kinds: AHashMap<Box<[u8]>, ValueKind>,
    /// Per name length (below 64), a bit per first byte (modulo 64) of the names in `kinds`:
    /// most keys of an event have no kind, and this tells them apart without hashing them,
    /// which was a third of an event's encoding.
    maybe: [u64; 64],
}

impl V016 {
    /// An encoder writing `form`, typing values by `kinds`: `(camelCase key, kind name)` pairs
    /// as in the catalogue's `key_kinds` or the config's `[[keys]]` (`ip`, `timestamp`,
    /// `duration-ms`; other kinds need no more than the JSON token). A later pair for the same
    /// key wins.
    pub fn new<'a>(form: KeyValues, kinds: impl IntoIterator<Item = (&'a str, &'a str)>) -> V016 {
        let mut map = AHashMap::new();
        for (key, kind) in kinds {
            match ValueKind::from_name(kind) {
                Some(k) => map.insert(Box::from(key.as_bytes()), k),
                None => map.remove(key.as_bytes()),
            };
        }
        let mut maybe = [0u64; 64];
        for key in map.keys() {
            match key.first() {
                Some(&c) if key.len() < 64 => maybe[key.len()] |= 1 << (c & 63),
                // A name the filter cannot hold is always looked up.
                _ => maybe = [u64::MAX; 64],
            }
        }
        V016 { form, kinds: map, maybe }
    }

    /// An encoder writing `form`, typing values by the catalogue's key kinds.
    pub fn from_catalogue(form: KeyValues, catalogue: &Catalogue) -> V016 {
        V016::new(form, catalogue.key_kinds.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// How `keyValues` is written.
    pub fn form(&self) -> KeyValues {
        self.form
    }

    fn object(&self) -> bool {
        self.form == KeyValues::Object
    }

    fn kind_of(&self, key_inner: &[u8]) -> Option<ValueKind> {
        let &first = key_inner.first()?;
        let bits = self.maybe.get(key_inner.len()).copied().unwrap_or(u64::MAX);
        if bits & (1 << (first & 63)) == 0 {
            return None;
        }
        self.kinds.get(key_inner).copied()
    }
}

/// Registers both v0.16 forms with `dialects` ([`ARRAY`] and [`OBJECT`]), typing values by the
/// catalogue's key kinds and then by `extra` (the config's `[[keys]]`, `(name, kind)`).
/// Returns the two forms, array first.
pub fn register<'a>(
    dialects: &Dialects,
    catalogue: &'a Catalogue,
    extra: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
) -> Result<(WireForm, WireForm), DialectError> {
    let kinds = || catalogue.key_kinds.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra.clone());
    let array = dialects.register(Arc::new(Named(ARRAY, V016::new(KeyValues::Array, kinds()))))?;
    let object = dialects.register(Arc::new(Named(OBJECT, V016::new(KeyValues::Object, kinds()))))?;
    Ok((array, object))
}

/// An encoder under its registered name.
struct Named(&'static str, V016);

impl Encoder for Named {
    fn name(&self) -> &str {
        self.0
    }

    fn encode(&self, event: &Event, out: &mut Vec<u8>) {
        self.1.encode(event, out);
    }
}

impl Encoder for V016 {
    fn name(&self) -> &str {
        match self.form {
            KeyValues::Array => ARRAY,
            KeyValues::Object => OBJECT,
        }
    }

    fn encode(&self, event: &Event, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event\":");
        write_str(out, &event.kind);
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(&format_timestamp(event.created_at));
        out.extend_from_slice(b"\",\"keyValues\":");
        let mark = out.len();
        if self.key_values(event, out).is_none() {
            // Unreadable input: the event with its span alone, rather than broken JSON.
            out.truncate(mark);
            let mut list = List::open(out, self.object());
            write_span(event, &mut list, out);
            list.close(out);
        }
        out.push(b'}');
    }
}

/// A list being written: `[a,b]`, or `{"0":a,"1":b}` in the object form.
struct List {
    object: bool,
    n: u32,
}

impl List {
    fn open(out: &mut Vec<u8>, object: bool) -> List {
        out.push(if object { b'{' } else { b'[' });
        List { object, n: 0 }
    }

    /// Starts the next item: its separator and, in the object form, its index key.
    fn item(&mut self, out: &mut Vec<u8>) {
        if self.n > 0 {
            out.push(b',');
        }
        if self.object {
            out.push(b'"');
            out.extend_from_slice(itoa::Buffer::new().format(self.n).as_bytes());
            out.extend_from_slice(b"\":");
        }
        self.n += 1;
    }

    fn close(self, out: &mut Vec<u8>) {
        out.push(if self.object { b'}' } else { b']' });
    }
}

fn write_span(event: &Event, list: &mut List, out: &mut Vec<u8>) {
    if let Some(span) = event.span_id {
        list.item(out);
        out.extend_from_slice(b"{\"key\":\"spanId\",\"value\":{\"@type\":\"UnsignedInt\",\"value\":");
        out.extend_from_slice(itoa::Buffer::new().format(span).as_bytes());
        out.extend_from_slice(b"}}");
    }
}

/// A byte range of the input, a whole token (a string's range includes its quotes).
type Span = (usize, usize);

/// What kind of JSON number a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Unsigned,
    Negative,
    Float,
}

/// A cursor over JSON text. Every method returns `None` on input that is not valid JSON, and
/// never reads past the end.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The string token at the cursor (quotes included). Escapes are checked, so a token
    /// copied through is always a valid JSON string.
    fn string(&mut self) -> Option<Span> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i;
        let mut j = start + 1;
        loop {
            // The next quote, backslash or control character, eight bytes at a time.
            j += first_escape(self.b.get(j..)?);
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some((start, self.i));
                }
                b'\\' => match *self.b.get(j + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                    b'u' if self.b.get(j + 2..j + 6)?.iter().all(u8::is_ascii_hexdigit) => j += 6,
                    _ => return None,
                },
                // A raw control character: not JSON.
                _ => return None,
            }
        }
    }

    /// The number token at the cursor, and its kind.
    fn number(&mut self) -> Option<(Span, Num)> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let mut j = start;
        let negative = b.get(j) == Some(&b'-');
        j += usize::from(negative);
        // No leading zeros: `0` alone, or a digit from 1 to 9 first.
        if b.get(j) == Some(&b'0') && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let digits = |j: &mut usize| {
            let from = *j;
            while b.get(*j).is_some_and(u8::is_ascii_digit) {
                *j += 1;
            }
            *j > from
        };
        if !digits(&mut j) {
            return None;
        }
        let mut float = false;
        if b.get(j) == Some(&b'.') {
            j += 1;
            float = true;
            if !digits(&mut j) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(j) {
            j += 1;
            float = true;
            if let Some(b'+' | b'-') = b.get(j) {
                j += 1;
            }
            if !digits(&mut j) {
                return None;
            }
        }
        self.i = j;
        let kind = if float {
            Num::Float
        } else if negative {
            Num::Negative
        } else {
            Num::Unsigned
        };
        Some(((start, j), kind))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// Calls `f` on each member of the object at the cursor with the key's span; `f` must
    /// consume the member's value.
    fn members(&mut self, mut f: impl FnMut(&mut Self, Span) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            f(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Calls `f` on each item of the array at the cursor; `f` must consume the item.
    fn items(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skips any value.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.members(|s, _| s.skip(depth + 1)),
            b'[' => self.items(|s| s.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// The bytes between a string token's quotes.
    fn inner(&self, s: Span) -> &'a [u8] {
        &self.b[s.0 + 1..s.1 - 1]
    }

    fn text(&self, s: Span) -> &'a [u8] {
        &self.b[s.0..s.1]
    }
}

/// Classic members of a nested event that are not keys: its type (the `event`), the text
/// derived from the type, and what only the top level carries.
fn nested_skipped(key: &[u8]) -> bool {
    matches!(key, b"type" | b"text" | b"level" | b"createdAt" | b"id")
}

impl V016 {
    /// Writes the `keyValues` list of `event`; `None` if its JSON could not be read.
    fn key_values(&self, event: &Event, out: &mut Vec<u8>) -> Option<()> {
        let mut list = List::open(out, self.object());
        write_span(event, &mut list, out);
        let mut sc = Scan { b: &event.json, i: 0 };
        let mut details = None;
        let mut data_details = false;
        sc.members(|sc, key| match sc.inner(key) {
            b"data" if sc.peek()? == b'{' => sc.members(|sc, k| {
                data_details |= sc.inner(k) == b"details";
                list.item(out);
                self.entry(sc, k, out, 1)
            }),
            b"details" if sc.peek()? == b'"' => {
                let s = sc.string()?;
                details = (s.1 - s.0 > 2).then_some(s);
                Some(())
            }
            _ => sc.skip(1),
        })?;
        if let (Some(d), false) = (details, data_details) {
            list.item(out);
            out.extend_from_slice(b"{\"key\":\"details\",\"value\":{\"@type\":\"String\",\"value\":");
            out.extend_from_slice(sc.text(d));
            out.extend_from_slice(b"}}");
        }
        sc.ws();
        if sc.i != sc.b.len() {
            return None;
        }
        list.close(out);
        Some(())
    }

    /// One `{"key":…,"value":…}` entry for the member whose key is `key`, consuming its value.
    fn entry(&self, sc: &mut Scan<'_>, key: Span, out: &mut Vec<u8>, depth: u32) -> Option<()> {
        out.extend_from_slice(b"{\"key\":");
        out.extend_from_slice(sc.text(key));
        out.extend_from_slice(b",\"value\":");
        self.value(sc, self.kind_of(sc.inner(key)), out, depth)?;
        out.push(b'}');
        Some(())
    }

    /// The typed value at the cursor, for a key of kind `kind`.
    fn value(&self, sc: &mut Scan<'_>, kind: Option<ValueKind>, out: &mut Vec<u8>, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match sc.peek()? {
            b'"' => {
                let s = sc.string()?;
                out.extend_from_slice(match kind {
                    Some(ValueKind::Ip) => b"{\"@type\":\"IpAddr\",\"value\":",
                    Some(ValueKind::Timestamp) => b"{\"@type\":\"UTCDateTime\",\"value\":",
                    _ => b"{\"@type\":\"String\",\"value\":",
                });
                out.extend_from_slice(sc.text(s));
                out.push(b'}');
            }
            b't' => {
                sc.literal(b"true")?;
                out.extend_from_slice(b"{\"@type\":\"Boolean\",\"value\":true}");
            }
            b'f' => {
                sc.literal(b"false")?;
                out.extend_from_slice(b"{\"@type\":\"Boolean\",\"value\":false}");
            }
            b'n' => {
                sc.literal(b"null")?;
                out.extend_from_slice(b"{\"@type\":\"Null\"}");
            }
            b'[' => {
                out.extend_from_slice(b"{\"@type\":\"List\",\"value\":");
                let mut list = List::open(out, self.object());
                sc.items(|sc| {
                    list.item(out);
                    self.value(sc, kind, out, depth + 1)
                })?;
                list.close(out);
                out.push(b'}');
            }
            b'{' => self.nested(sc, out, depth)?,
            _ => {
                let (s, num) = sc.number()?;
                out.extend_from_slice(match (kind, num) {
                    (Some(ValueKind::Duration), Num::Unsigned | Num::Float) if sc.b[s.0] != b'-' => {
                        b"{\"@type\":\"Duration\",\"value\":"
                    }
                    (_, Num::Unsigned) => b"{\"@type\":\"UnsignedInt\",\"value\":",
                    (_, Num::Negative) => b"{\"@type\":\"Integer\",\"value\":",
                    (_, Num::Float) => b"{\"@type\":\"Float\",\"value\":",
                });
                out.extend_from_slice(sc.text(s));
                out.push(b'}');
            }
        }
        Some(())
    }

    /// A nested object: an `Event` when it has a string `type`, else a `String` of its JSON.
    fn nested(&self, sc: &mut Scan<'_>, out: &mut Vec<u8>, depth: u32) -> Option<()> {
        let start = sc.i;
        let mut ty = None;
        sc.members(|sc, k| {
            if ty.is_none() && sc.inner(k) == b"type" && sc.peek()? == b'"' {
                ty = Some(sc.string()?);
                Some(())
            } else {
                sc.skip(depth + 1)
            }
        })?;
        let Some(ty) = ty else {
            // No v0.16 type holds a map; its JSON text keeps what it says.
            let text = std::str::from_utf8(&sc.b[start..sc.i]).ok()?;
            out.extend_from_slice(b"{\"@type\":\"String\",\"value\":");
            write_str(out, text.trim_start());
            out.push(b'}');
            return Some(());
        };
        // Second pass over the same object, now that its type is written first.
        sc.i = start;
        out.extend_from_slice(b"{\"@type\":\"Event\",\"event\":");
        out.extend_from_slice(sc.text(ty));
        out.extend_from_slice(b",\"value\":");
        let mut list = List::open(out, self.object());
        sc.members(|sc, k| match sc.inner(k) {
            b"data" if sc.peek()? == b'{' => sc.members(|sc, k| {
                list.item(out);
                self.entry(sc, k, out, depth + 1)
            }),
            b"details" if sc.peek()? == b'"' => {
                let s = sc.string()?;
                if s.1 - s.0 > 2 {
                    list.item(out);
                    out.extend_from_slice(b"{\"key\":\"details\",\"value\":{\"@type\":\"String\",\"value\":");
                    out.extend_from_slice(sc.text(s));
                    out.extend_from_slice(b"}}");
                }
                Some(())
            }
            name if nested_skipped(name) => sc.skip(depth + 1),
            _ => {
                list.item(out);
                self.entry(sc, k, out, depth + 1)
            }
        })?;
        list.close(out);
        out.push(b'}');
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing::event;
    use crate::event::KeyRegistry;
    use serde_json::{json, Value};

    fn setup() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    fn encode(enc: &V016, ev: &Event) -> Value {
        let mut out = Vec::new();
        enc.encode(ev, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    fn array(c: &Catalogue) -> V016 {
        V016::from_catalogue(KeyValues::Array, c)
    }

    fn object(c: &Catalogue) -> V016 {
        V016::from_catalogue(KeyValues::Object, c)
    }

    /// The value of the entry named `key` in an array-form `keyValues`.
    fn kv<'v>(v: &'v Value, key: &str) -> &'v Value {
        let list = v["keyValues"].as_array().expect("keyValues is an array");
        &list.iter().find(|e| e["key"] == key).unwrap_or_else(|| panic!("no {key} in {v}"))["value"]
    }

    #[test]
    fn a_session_event_in_the_array_form() {
        let (c, k) = setup();
        let ev = event(
            &c,
            &k,
            r#"{"type":"smtp.connection-start","createdAt":"2026-08-20T10:00:00Z","data":{"spanId":77,
                "listenerId":"smtp","localPort":25,"remoteIp":"::ffff:10.0.0.5","remotePort":51000}}"#,
        );
        let v = encode(&array(&c), &ev);
        assert_eq!(
            v,
            json!({
                "event": "smtp.connection-start",
                "timestamp": "2026-08-20T10:00:00Z",
                "keyValues": [
                    {"key": "spanId", "value": {"@type": "UnsignedInt", "value": 77}},
                    {"key": "listenerId", "value": {"@type": "String", "value": "smtp"}},
                    {"key": "localPort", "value": {"@type": "UnsignedInt", "value": 25}},
                    {"key": "remoteIp", "value": {"@type": "IpAddr", "value": "::ffff:10.0.0.5"}},
                    {"key": "remotePort", "value": {"@type": "UnsignedInt", "value": 51000}},
                ]
            })
        );
        // The tag is the first field of every typed value, as Stalwart writes it.
        let mut out = Vec::new();
        array(&c).encode(&ev, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(r#"{"event":"smtp.connection-start","timestamp":"2026-08-20T10:00:00Z","keyValues":[{"key":"spanId","value":{"@type":"UnsignedInt","value":77}}"#), "{text}");
    }

    #[test]
    fn every_type_tag() {
        let (c, k) = setup();
        let ev = event(
            &c,
            &k,
            r#"{"type":"delivery.attempt-end","spanId":18446744073709551615,"details":"top level",
               "data":{"to":["a@x.org","b@y.net"],"elapsed":1520,"due":"2026-08-20T10:05:00Z",
               "size":-3,"ratio":0.25,"big":18446744073709551615,"tls":true,"strict":false,
               "localIp":"192.0.2.1","list":[null,1,"x"],"expo":1e3,
               "causedBy":{"type":"smtp.error","text":"SMTP error","details":"boom","data":{"code":"550","remoteIp":"10.1.1.1"}},
               "plain":{"a":1,"b":"q\"uote"}}}"#,
        );
        let v = encode(&array(&c), &ev);
        assert_eq!(kv(&v, "spanId"), &json!({"@type": "UnsignedInt", "value": 18446744073709551615u64}));
        assert_eq!(
            kv(&v, "to"),
            &json!({"@type": "List", "value": [
                {"@type": "String", "value": "a@x.org"}, {"@type": "String", "value": "b@y.net"}]})
        );
        assert_eq!(kv(&v, "elapsed"), &json!({"@type": "Duration", "value": 1520}));
        assert_eq!(kv(&v, "due"), &json!({"@type": "UTCDateTime", "value": "2026-08-20T10:05:00Z"}));
        assert_eq!(kv(&v, "size"), &json!({"@type": "Integer", "value": -3}));
        assert_eq!(kv(&v, "ratio"), &json!({"@type": "Float", "value": 0.25}));
        assert_eq!(kv(&v, "big"), &json!({"@type": "UnsignedInt", "value": 18446744073709551615u64}));
        assert_eq!(kv(&v, "tls"), &json!({"@type": "Boolean", "value": true}));
        assert_eq!(kv(&v, "strict"), &json!({"@type": "Boolean", "value": false}));
        assert_eq!(kv(&v, "localIp"), &json!({"@type": "IpAddr", "value": "192.0.2.1"}));
        assert_eq!(
            kv(&v, "list"),
            &json!({"@type": "List", "value": [
                {"@type": "Null"}, {"@type": "UnsignedInt", "value": 1}, {"@type": "String", "value": "x"}]})
        );
        assert_eq!(kv(&v, "expo")["@type"], "Float");
        assert_eq!(
            kv(&v, "causedBy"),
            &json!({"@type": "Event", "event": "smtp.error", "value": [
                {"key": "details", "value": {"@type": "String", "value": "boom"}},
                {"key": "code", "value": {"@type": "String", "value": "550"}},
                {"key": "remoteIp", "value": {"@type": "IpAddr", "value": "10.1.1.1"}},
            ]})
        );
        // A map without a type has no v0.16 counterpart: its JSON text, as a string.
        let plain = kv(&v, "plain");
        assert_eq!(plain["@type"], "String");
        let inner: Value = serde_json::from_str(plain["value"].as_str().unwrap()).unwrap();
        assert_eq!(inner, json!({"a": 1, "b": "q\"uote"}));
        // The top-level details, last, since the data has none of its own.
        let list = v["keyValues"].as_array().unwrap();
        assert_eq!(
            list.last().unwrap(),
            &json!({"key": "details", "value": {"@type": "String", "value": "top level"}})
        );
        assert_eq!(list.iter().filter(|e| e["key"] == "details").count(), 1);
        assert_eq!(list[0]["key"], "spanId", "spanId comes first");
    }

    #[test]
    fn the_object_form_is_stalwarts() {
        let (c, k) = setup();
        let ev = event(
            &c,
            &k,
            r#"{"type":"queue.message-queued","createdAt":"2026-08-20T10:00:00Z","data":{"spanId":5,
               "queueId":42,"to":["a@x.org"],"causedBy":{"type":"x.y","data":{"reason":"r"}}}}"#,
        );
        let v = encode(&object(&c), &ev);
        assert_eq!(
            v["keyValues"],
            json!({
                "0": {"key": "spanId", "value": {"@type": "UnsignedInt", "value": 5}},
                "1": {"key": "queueId", "value": {"@type": "UnsignedInt", "value": 42}},
                "2": {"key": "to", "value": {"@type": "List", "value": {"0": {"@type": "String", "value": "a@x.org"}}}},
                "3": {"key": "causedBy", "value": {"@type": "Event", "event": "x.y", "value":
                    {"0": {"key": "reason", "value": {"@type": "String", "value": "r"}}}}},
            })
        );
        // Index keys in order, as Stalwart writes them.
        let mut out = Vec::new();
        object(&c).encode(&ev, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""keyValues":{"0":{"key":"spanId""#), "{text}");
        // An empty list is `{}` in the object form and `[]` in the array form.
        let bare = event(&c, &k, r#"{"type":"server.startup","createdAt":0}"#);
        assert_eq!(encode(&object(&c), &bare)["keyValues"], json!({}));
        assert_eq!(encode(&array(&c), &bare)["keyValues"], json!([]));
        assert_eq!(encode(&array(&c), &bare)["timestamp"], "1970-01-01T00:00:00Z");
        assert_eq!((array(&c).name(), object(&c).name()), (ARRAY, OBJECT));
    }

    #[test]
    fn escapes_pass_through_unchanged() {
        let (c, k) = setup();
        let ev = event(
            &c,
            &k,
            r#"{"type":"a.b\"c","data":{"reason":"line\nbreak \"quoted\" back\\slash \u0001 é ✓ \ud83d\ude00",
               "we\"ird":"k","details":"own"},"details":"ignored: the data has its own"}"#,
        );
        let v = encode(&array(&c), &ev);
        assert_eq!(v["event"], "a.b\"c");
        assert_eq!(kv(&v, "reason")["value"], "line\nbreak \"quoted\" back\\slash \u{1} é ✓ 😀");
        assert_eq!(kv(&v, "we\"ird")["value"], "k");
        assert_eq!(kv(&v, "details")["value"], "own");
        assert_eq!(v["keyValues"].as_array().unwrap().iter().filter(|e| e["key"] == "details").count(), 1);
    }

    #[test]
    fn kinds_come_from_the_catalogue_and_the_config() {
        let (c, k) = setup();
        let ev = event(
            &c,
            &k,
            r#"{"type":"a.b","data":{"clientIp":"10.0.0.1","remoteIp":"10.0.0.2","elapsed":-5}}"#,
        );
        let plain = array(&c);
        let v = encode(&plain, &ev);
        assert_eq!(kv(&v, "clientIp")["@type"], "String", "an unknown key is typed by its token");
        assert_eq!(kv(&v, "remoteIp")["@type"], "IpAddr");
        assert_eq!(kv(&v, "elapsed")["@type"], "Integer", "a negative duration is not a Duration");
        let kinds = c.key_kinds.iter().map(|(a, b)| (a.as_str(), b.as_str()));
        let configured =
            V016::new(KeyValues::Array, kinds.chain([("clientIp", "ip"), ("remoteIp", "string")]));
        let v = encode(&configured, &ev);
        assert_eq!(kv(&v, "clientIp")["@type"], "IpAddr");
        assert_eq!(kv(&v, "remoteIp")["@type"], "String", "a later kind wins");
    }

    #[test]
    fn every_demo_event_encodes_to_valid_json_in_both_forms() {
        let (c, k) = setup();
        let mut demo = crate::ingest::demo::DemoGenerator::new(5);
        let (a, o) = (array(&c), object(&c));
        for i in 0..2_000 {
            let line = demo.ndjson_line(1_790_000_000 + i);
            let ev = event(&c, &k, &line);
            let classic: Value = serde_json::from_slice(&ev.json).unwrap();
            let va = encode(&a, &ev);
            let vo = encode(&o, &ev);
            assert_eq!(va["event"], classic["type"]);
            assert_eq!(va["timestamp"], classic["createdAt"]);
            let list = va["keyValues"].as_array().unwrap();
            let data = classic["data"].as_object().unwrap();
            let extra = usize::from(ev.span_id.is_some())
                + usize::from(classic["details"] != "" && !data.contains_key("details"));
            assert_eq!(list.len(), data.len() + extra, "{line}");
            assert_eq!(vo["keyValues"].as_object().unwrap().len(), list.len());
            for (i, e) in list.iter().enumerate() {
                assert_eq!(vo["keyValues"][i.to_string()]["key"], e["key"]);
                assert!(e["value"]["@type"].is_string(), "{e}");
            }
        }
    }

    #[test]
    fn unreadable_input_still_gives_valid_json() {
        let (c, k) = setup();
        let mut ev = event(&c, &k, r#"{"type":"a.b","spanId":9,"data":{"x":1}}"#);
        for bad in [
            &b"{\"data\":{\"x\":"[..],
            b"{\"data\":{\"x\":1}",
            b"{\"data\":{\"x\":1}} trailing",
            b"{\"data\":{\"x\":\"unterminated}}",
            b"{\"data\":{\"x\":-}}",
            b"{\"data\":{\"x\":1.}}",
            b"{\"data\":{\"x\":[1,]}}",
            b"{\"data\":{\"x\":tru}}",
            b"{\"data\":{\"x\":{\"type\":\"t\",\"data\":{\"y\":}}}}",
            b"",
            b"\"\\",
            &[b'['; 200],
        ] {
            ev.set_json(bad);
            for enc in [array(&c), object(&c)] {
                let v = encode(&enc, &ev);
                let list = &v["keyValues"];
                let first = if list.is_array() { &list[0] } else { &list["0"] };
                assert_eq!(first["key"], "spanId", "{}", String::from_utf8_lossy(bad));
            }
        }
        // Deep nesting past the scanner's bound is refused, not followed.
        let deep = format!("{{\"data\":{{\"x\":{}1{}}}}}", "[".repeat(100), "]".repeat(100));
        ev.set_json(deep.as_bytes());
        assert_eq!(encode(&array(&c), &ev)["keyValues"].as_array().unwrap().len(), 1);
        // And any byte string at all, valid JSON out.
        let mut rng = fastrand::Rng::with_seed(4);
        let good =
            event(&c, &k, r#"{"type":"a.b","data":{"to":["x",{"type":"t","data":{"q":[1,2.5]}}],"n":-1}}"#);
        for _ in 0..2_000 {
            let mut bytes = good.json.to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = b"{}[]\",:0-.\\ ateE"[rng.usize(..16)];
            }
            ev.set_json(&bytes);
            let mut out = Vec::new();
            array(&c).encode(&ev, &mut out);
            serde_json::from_slice::<Value>(&out)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        }
    }

    #[test]
    fn registers_both_forms_once() {
        let (c, _) = setup();
        let dialects = Dialects::default();
        let (a, o) = register(&dialects, &c, [("clientIp", "ip")]).unwrap();
        assert!(matches!(dialects.get(ARRAY), Some(WireForm::Other(..))));
        assert!(matches!(dialects.get(OBJECT), Some(WireForm::Other(..))));
        assert!(matches!((a, o), (WireForm::Other(..), WireForm::Other(..))));
        assert!(register(&dialects, &c, std::iter::empty()).is_err(), "names are unique");
    }
}
