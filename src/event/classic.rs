//! The classic contract: what Stalwart's old web admin (and any client written against
//! Stalwart's classic telemetry API) can decode in a live `trace` frame or a history answer,
//! and the encoder that fits any event into it.
//!
//! The old web admin decodes an event's `data` into a closed set of 66 keys and each value
//! into an untagged union of string, unsigned integer, float, boolean, nested event
//! (`{type, text?, details?, data}`) and array of those. One value outside that (an unknown
//! key, a `null`, an object that is not a nested event) fails the whole frame or answer, so
//! the user sees nothing. Producers other than Stalwart (Postfix or Dovecot adapters,
//! scripts) send whatever keys they like, so livetap keeps two forms of an event:
//!
//! - the **full form** ([`Event::wire`](super::Event::wire)), built once at ingest with every
//!   key the producer sent; livetap's own stream (`/api/livetap/live`), the dashboard and the
//!   history store use it;
//! - the **classic form**, what the classic endpoints send. For the common case (a Stalwart
//!   event whose keys are all catalogue keys and whose values are strings, numbers, booleans
//!   or arrays of those) it *is* the full form: the builder marks such an event
//!   ([`Event::is_classic`](super::Event::is_classic)) and the classic streams share its
//!   ingest bytes. Any other event is rewritten here, once, the first time a classic stream
//!   or answer needs it ([`write_event`]).
//!
//! The rewrite's rules, which the README's "Classic clients" section repeats:
//! - a `data` key outside the 66 is left out (in nested events' `data` too);
//! - `null` array items are dropped, and a key whose value is then an empty array is left out;
//! - an object that has a string `type`, a `text` and a `details` that are strings when
//!   present, a `data` that is an object when present, and none of those four twice, is a
//!   nested event: it is written as `{"type","text"?,"details"?,"data"}` with its `data`
//!   rewritten by the same rules (and `{}` when it had none); its other members are left out;
//! - any other object is sent as a string holding its JSON text;
//! - strings, numbers and booleans are sent unchanged (a negative or fractional number
//!   decodes as the union's float).

use super::encode::{format_timestamp, write_str, write_text, write_value};
use super::json::{JsonRef, Node, Text};
use super::raw::RawValue;
use super::Event;

/// The 66 `data` keys of Stalwart's classic catalogue (v0.10 to v0.15), which is the closed
/// key set of the old web admin; sorted, for [`is_classic_key`]. A unit test holds it equal to
/// `data/stalwart-catalogue.json`.
pub const CLASSIC_KEYS: [&str; 66] = [
    "accountId",
    "accountName",
    "blobId",
    "causedBy",
    "changeId",
    "code",
    "collection",
    "contents",
    "details",
    "dkimFail",
    "dkimNone",
    "dkimPass",
    "dmarcNone",
    "dmarcPass",
    "dmarcQuarantine",
    "dmarcReject",
    "documentId",
    "domain",
    "due",
    "elapsed",
    "expires",
    "from",
    "hostname",
    "id",
    "key",
    "limit",
    "listenerId",
    "localIp",
    "localPort",
    "mailboxId",
    "mailboxName",
    "messageId",
    "nextDsn",
    "nextRetry",
    "path",
    "policy",
    "queueId",
    "queueName",
    "rangeFrom",
    "rangeTo",
    "reason",
    "remoteIp",
    "remotePort",
    "reportId",
    "result",
    "size",
    "source",
    "spanId",
    "spfFail",
    "spfNone",
    "spfPass",
    "strict",
    "tls",
    "to",
    "total",
    "totalFailures",
    "totalSuccesses",
    "type",
    "uid",
    "uidNext",
    "uidValidity",
    "url",
    "validFrom",
    "validTo",
    "value",
    "version",
];

/// True when `name` is one of the [`CLASSIC_KEYS`]. Called when a key is registered (and by
/// the rewrite), never per event on the ingest path: the builder reads the registry's flag.
pub fn is_classic_key(name: &str) -> bool {
    CLASSIC_KEYS.binary_search(&name).is_ok()
}

/// Why an event's JSON could not be rewritten in the classic form. livetap's own bytes never
/// fail; a history database edited by hand could.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassicError {
    /// The bytes are not JSON.
    #[error("event is not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object.
    #[error("event is not a JSON object")]
    NotAnObject,
}

/// Writes `json`, an event in livetap's full form (live or stored), in the classic form to
/// `out`. With `span_id`, `data` starts with `"spanId": span_id` (the history list's items
/// carry it; the live stream leaves it out, as Stalwart does). On an error `out` is left as
/// it was.
pub fn write_event(json: &[u8], span_id: Option<u64>, out: &mut Vec<u8>) -> Result<(), ClassicError> {
    let raw = RawValue::parse_serde(json).map_err(ClassicError::Json)?;
    write_event_value(&raw, span_id, out)
}

/// [`write_event`] of an already parsed event.
pub fn write_event_value<'t, J: JsonRef<'t>>(
    event: J,
    span_id: Option<u64>,
    out: &mut Vec<u8>,
) -> Result<(), ClassicError> {
    let Node::Object(members) = event.node() else {
        return Err(ClassicError::NotAnObject);
    };
    out.push(b'{');
    // The decoder refuses a struct field given twice, so only the first of each name is kept
    // (livetap's own events have no duplicates; this guards hand-edited history).
    let mut seen: smallvec::SmallVec<[Text<'t>; 8]> = smallvec::SmallVec::new();
    let mut data = None;
    for (k, v) in members {
        if seen.iter().any(|s| s.as_str() == k.as_str()) {
            continue;
        }
        seen.push(k);
        if k.as_str() == "data" {
            data = Some(v);
            continue;
        }
        write_text(out, k);
        out.push(b':');
        write_value(out, v);
        out.push(b',');
    }
    // `data` is required by the decoder, so it is always written, last (where the builder
    // puts it, which keeps a clean event's bytes identical).
    out.extend_from_slice(b"\"data\":");
    write_data(data, span_id, out);
    out.push(b'}');
    Ok(())
}

/// The classic form of an event that the rewrite cannot read (impossible for livetap's own
/// bytes): its type, time and level with an empty `data`, still decodable.
fn write_fallback(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"createdAt\":\"");
    out.extend_from_slice(&format_timestamp(event.created_at));
    out.extend_from_slice(b"\",\"type\":");
    write_str(out, &event.kind);
    out.extend_from_slice(b",\"level\":\"");
    out.extend_from_slice(event.level.as_str().as_bytes());
    out.extend_from_slice(b"\",\"data\":{}}");
}

/// Appends `event`'s classic form to `out` (no separator before it). Used once per event that
/// is not [`Event::is_classic`], by the first classic stream that queues it.
pub fn encode(event: &Event, out: &mut Vec<u8>) {
    let mark = out.len();
    if write_event(&event.json, None, out).is_err() {
        out.truncate(mark);
        write_fallback(event, out);
    }
}

/// Writes a `data` object: `spanId` first when given, then the members of `data` (if it is an
/// object) that the classic contract allows, rewritten by its rules.
fn write_data<'t, J: JsonRef<'t>>(data: Option<J>, span_id: Option<u64>, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    if let Some(span) = span_id {
        out.extend_from_slice(b"\"spanId\":");
        out.extend_from_slice(itoa::Buffer::new().format(span).as_bytes());
        first = false;
    }
    if let Some(Node::Object(members)) = data.map(JsonRef::node) {
        for (k, v) in members {
            if !is_classic_key(&k) || (span_id.is_some() && k.as_str() == "spanId") || v.is_empty_value() {
                continue;
            }
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            write_text(out, k);
            out.push(b':');
            let at = out.len();
            // Stalwart leaves empty values out; a list of nulls is empty once they are dropped.
            if !write_item(v, out) || &out[at..] == b"[]" {
                out.truncate(mark);
                continue;
            }
            first = false;
        }
    }
    out.push(b'}');
}

/// Writes one value in the classic contract. Returns false, having written nothing, for a
/// value that has no classic form (`null`).
fn write_item<'t, J: JsonRef<'t>>(v: J, out: &mut Vec<u8>) -> bool {
    match v.node() {
        Node::Null => false,
        Node::Array(items) => {
            out.push(b'[');
            let mut first = true;
            for item in items {
                let mark = out.len();
                if !first {
                    out.push(b',');
                }
                if write_item(item, out) {
                    first = false;
                } else {
                    out.truncate(mark);
                }
            }
            out.push(b']');
            true
        }
        Node::Object(_) => {
            match SubEvent::of(v) {
                Some(sub) => sub.write(out),
                None => write_json_text(v, out),
            }
            true
        }
        Node::Bool(_) | Node::Int(_) | Node::UInt(_) | Node::Float(_) | Node::Str(_) => {
            write_value(out, v);
            true
        }
    }
}

/// Writes an object that is not a nested event as a JSON string holding its JSON text, so its
/// content still reaches the client.
fn write_json_text<'t, J: JsonRef<'t>>(v: J, out: &mut Vec<u8>) {
    let mut text = Vec::with_capacity(64);
    write_value(&mut text, v);
    // Parsed JSON strings are UTF-8 and `write_value` writes only them and ASCII.
    write_str(out, std::str::from_utf8(&text).unwrap_or_default());
}

/// An object shaped like the old web admin's nested event.
struct SubEvent<'t, J> {
    ty: Text<'t>,
    text: Option<Text<'t>>,
    details: Option<Text<'t>>,
    data: Option<J>,
}

impl<'t, J: JsonRef<'t>> SubEvent<'t, J> {
    /// The nested event `v` is, if it is one (see the module's rules).
    fn of(v: J) -> Option<SubEvent<'t, J>> {
        let Node::Object(members) = v.node() else { return None };
        let (mut ty, mut text, mut details, mut data) = (None, None, None, None);
        let mut seen = [false; 4];
        for (k, m) in members {
            let slot = match k.as_str() {
                "type" => 0,
                "text" => 1,
                "details" => 2,
                "data" => 3,
                _ => continue,
            };
            if std::mem::replace(&mut seen[slot], true) {
                return None;
            }
            match (slot, m.node()) {
                (0, Node::Str(s)) => ty = Some(s),
                (1, Node::Str(s)) => text = Some(s),
                (2, Node::Str(s)) => details = Some(s),
                (3, Node::Object(_)) => data = Some(m),
                (1..=3, Node::Null) => {}
                _ => return None,
            }
        }
        Some(SubEvent { ty: ty?, text, details, data })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":");
        write_text(out, self.ty);
        if let Some(t) = self.text {
            out.extend_from_slice(b",\"text\":");
            write_text(out, t);
        }
        if let Some(d) = self.details {
            out.extend_from_slice(b",\"details\":");
            write_text(out, d);
        }
        out.extend_from_slice(b",\"data\":");
        write_data(self.data, None, out);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder};
    use serde::Deserialize;

    /// A strict decoder with the old web admin's rules: a closed key set, an untagged value
    /// union without null, nested events that need `type` and `data`, RFC 3339 `createdAt`.
    mod admin {
        use serde::{Deserialize, Deserializer};

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        pub struct Event {
            #[serde(rename = "type")]
            pub typ: String,
            pub text: Option<String>,
            pub details: Option<String>,
            #[serde(rename = "createdAt", deserialize_with = "rfc3339")]
            pub created_at: i64,
            #[serde(deserialize_with = "pairs")]
            pub data: Vec<(Key, Value)>,
        }

        #[derive(Debug, Deserialize, PartialEq)]
        #[allow(dead_code)]
        pub struct SubEvent {
            #[serde(rename = "type")]
            pub typ: String,
            pub text: Option<String>,
            pub details: Option<String>,
            #[serde(deserialize_with = "pairs")]
            pub data: Vec<(Key, Value)>,
        }

        #[derive(Debug, PartialEq)]
        pub struct Key(pub String);

        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
                let s = String::deserialize(d)?;
                if super::is_classic_key(&s) {
                    Ok(Key(s))
                } else {
                    Err(serde::de::Error::custom(format!("unknown key {s}")))
                }
            }
        }

        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(untagged)]
        #[allow(dead_code)]
        pub enum Value {
            String(String),
            Int(u64),
            Float(f64),
            Bool(bool),
            Event(SubEvent),
            Array(Vec<Value>),
        }

        fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
            let s = <&str>::deserialize(d)?;
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(serde::de::Error::custom)
        }

        fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Key, Value)>, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Vec<(Key, Value)>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                    let mut out = Vec::new();
                    while let Some(pair) = m.next_entry()? {
                        out.push(pair);
                    }
                    Ok(out)
                }
            }
            d.deserialize_map(V)
        }
    }

    fn build(json: &str) -> Event {
        let (c, k) = Catalogue::with_keys(1024);
        crate::event::testing::event(&c, &k, json)
    }

    fn classic(ev: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        encode(ev, &mut out);
        out
    }

    fn decodes(bytes: &[u8]) -> admin::Event {
        serde_json::from_slice::<admin::Event>(bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
    }

    #[test]
    fn the_key_set_is_the_catalogue_s() {
        #[derive(Deserialize)]
        struct File {
            keys: Vec<K>,
        }
        #[derive(Deserialize)]
        struct K {
            name: String,
        }
        let f: File = serde_json::from_str(crate::event::catalogue::CATALOGUE_JSON).unwrap();
        let mut names: Vec<String> = f.keys.into_iter().map(|k| k.name).collect();
        names.sort();
        assert_eq!(names, CLASSIC_KEYS.map(String::from).to_vec());
        assert!(CLASSIC_KEYS.windows(2).all(|w| w[0] < w[1]), "sorted, for the binary search");
        assert!(is_classic_key("remoteIp") && is_classic_key("causedBy") && !is_classic_key("clientName"));
    }

    #[test]
    fn clean_events_keep_their_bytes() {
        // Every demo event is a Stalwart event: all catalogue keys, decodable values.
        let (c, k) = Catalogue::with_keys(1024);
        let mut demo = crate::ingest::demo::DemoGenerator::new(5);
        let mut b = EventBuilder::new(&c, &k);
        let mut clean = 0;
        for i in 0..2_000 {
            let line = demo.ndjson_line(1_790_000_000 + i);
            let raw = RawValue::parse_serde(line.as_bytes()).unwrap();
            let ev = b.build(&raw, 0).unwrap();
            let out = classic(&ev);
            decodes(&out);
            if ev.is_classic() {
                assert_eq!(out, &ev.json[..], "{line}");
                clean += 1;
            }
        }
        assert_eq!(clean, 2_000, "the demo's Stalwart events all take the shared path");
        for text in [
            r#"{"type":"smtp.rcpt-to","data":{"to":["a@x.org",["b@y.org"],[]],"size":-3,"elapsed":1.5,"tls":true}}"#,
            r#"{"type":"x.y","text":"q\"uote\\","details":"tab\t","data":{"reason":"ctl\u0001","total":18446744073709551615}}"#,
        ] {
            let ev = build(text);
            assert!(ev.is_classic(), "{text}");
            assert_eq!(classic(&ev), &ev.json[..], "{text}");
            decodes(&ev.json);
        }
    }

    /// The rewrite of one event's `data`, as JSON.
    fn data_of(json: &str) -> serde_json::Value {
        let ev = build(json);
        assert!(!ev.is_classic(), "{json} needs the rewrite");
        let out = classic(&ev);
        decodes(&out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let full: serde_json::Value = serde_json::from_slice(&ev.json).unwrap();
        for top in ["text", "details", "createdAt", "type", "level"] {
            assert_eq!(v[top], full[top], "{top} is copied");
        }
        v["data"].clone()
    }

    #[test]
    fn every_value_shape_is_made_decodable() {
        use serde_json::json;
        // Non-catalogue keys are left out, at the top and inside nested events.
        assert_eq!(
            data_of(r#"{"type":"postfix.qmgr","data":{"clientName":"mx","queueId":5,"n":{"a":1}}}"#),
            json!({"queueId": 5})
        );
        // Null list items are dropped; a list of nulls leaves its key out.
        assert_eq!(
            data_of(
                r#"{"type":"a.b","data":{"to":["a@x",null,["b@y",null]],"from":[null,null],"code":"5"}}"#
            ),
            json!({"to": ["a@x", ["b@y"]], "code": "5"})
        );
        // Objects that are not nested events become their JSON text (the full form's, which
        // leaves empty members out); escapes survive.
        assert_eq!(
            data_of(
                r#"{"type":"a.b","data":{"reason":{"code":5,"why":"q\"x","e":""},"value":[{"k":null},1]}}"#
            ),
            json!({"reason": "{\"code\":5,\"why\":\"q\\\"x\"}", "value": ["{}", 1]})
        );
        // Nested events: non-catalogue keys dropped, a missing `data` written, extra members
        // left out, and the rules applied at every depth.
        assert_eq!(
            data_of(
                r#"{"type":"a.b","data":{"causedBy":{"type":"store.io","text":"Boom","x":1,"data":{"path":"/p","inode":7,
                "causedBy":{"type":"io.deep","data":{"to":[null,"z"],"reason":{"a":"b"}}}}}}}"#
            ),
            json!({"causedBy": {"type": "store.io", "text": "Boom", "data": {"path": "/p",
                "causedBy": {"type": "io.deep", "data": {"to": ["z"], "reason": "{\"a\":\"b\"}"}}}}})
        );
        assert_eq!(
            data_of(r#"{"type":"a.b","data":{"causedBy":{"type":"x.y","details":"d"},"id":[{"type":"s"}]}}"#),
            json!({"causedBy": {"type": "x.y", "details": "d", "data": {}}, "id": [{"type": "s", "data": {}}]})
        );
        // Objects that are almost nested events: a non-string type or text, a non-object
        // data, a duplicated member, no type at all.
        for odd in [
            r#"{"type":5,"data":{}}"#,
            r#"{"type":"t","text":1}"#,
            r#"{"type":"t","data":[1]}"#,
            r#"{"type":"t","type":"u"}"#,
            r#"{"text":"no type"}"#,
        ] {
            let d = data_of(&format!(r#"{{"type":"a.b","data":{{"causedBy":{odd}}}}}"#));
            assert!(d["causedBy"].is_string(), "{odd} is sent as text: {d}");
        }
        // Numbers of every kind are decodable as they are.
        assert_eq!(
            data_of(r#"{"type":"a.b","data":{"size":-1,"total":1e300,"limit":18446744073709551615,"nx":0}}"#),
            json!({"size": -1, "total": 1e300, "limit": 18446744073709551615u64})
        );
    }

    #[test]
    fn history_items_carry_the_span() {
        let ev = build(r#"{"type":"delivery.attempt-start","data":{"spanId":9,"from":"a@x","custom":1}}"#);
        let mut out = Vec::new();
        write_event(&ev.json, ev.span_id, &mut out).unwrap();
        let decoded = decodes(&out);
        assert_eq!(decoded.data[0], (admin::Key("spanId".into()), admin::Value::Int(9)));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], serde_json::json!({"spanId": 9, "from": "a@x"}));
        // A stored copy that already names a span keeps one `spanId`, the given one.
        let mut out = Vec::new();
        write_event(br#"{"type":"t","data":{"spanId":3,"to":"x"}}"#, Some(4), &mut out).unwrap();
        assert_eq!(out, br#"{"type":"t","data":{"spanId":4,"to":"x"}}"#);
        // Bad stored bytes are an error, and leave the output alone.
        let mut out = b"[".to_vec();
        assert!(matches!(write_event(b"{", None, &mut out), Err(ClassicError::Json(_))));
        assert_eq!(write_event(b"[1]", None, &mut out), Err(ClassicError::NotAnObject));
        assert_eq!(out, b"[");
    }

    #[test]
    fn the_fallback_decodes() {
        let mut ev = build(r#"{"type":"auth.failed","createdAt":"2026-11-20T10:00:00Z"}"#);
        ev.set_json(b"not json");
        let out = classic(&ev);
        let d = decodes(&out);
        assert_eq!((d.typ.as_str(), d.data.len()), ("auth.failed", 0));
    }
}
