//! What a webhook sends: each event in Stalwart's webhook shape (an encoder registered as a
//! wire dialect, so the shape is written once per event whatever the number of webhooks), the
//! request body around a batch (`{"events":[…]}` or NDJSON), the `X-Signature` HMAC, and the
//! reading of a receiver's `Retry-After` plus the retry delay with full jitter.
//!
//! Everything here is pure: no I/O, no waiting.

use crate::event::dialect::Encoder;
use crate::event::encode::{format_timestamp, write_str, write_text, write_value};
use crate::event::json::{JsonRef, Node};
use crate::event::tape::Tape;
use crate::event::Event;
use base64::Engine;
use hmac::{Hmac, Mac};
use std::time::{Duration, SystemTime};

thread_local! {
    /// The tape an encoding thread parses events' full form onto, reused.
    static TAPE: std::cell::RefCell<Tape> = std::cell::RefCell::new(Tape::new());
}

/// The dialect name of [`StalwartWebhookShape`] in the hub's registry.
pub const DIALECT: &str = "stalwart-webhook";

/// Appends `event` in Stalwart's webhook event shape with the public id `id`:
/// `{"id":"<id>","createdAt","type","data"}`, `spanId` kept in `data`, no `text` or `details`.
/// Written straight into the caller's buffer (the tap's, reused), so a webhook's per-event
/// work allocates nothing once its buffers have grown, and nothing is added to the event
/// (which the ring and the replay log keep alive).
pub fn write_webhook_event(id: u64, event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(b"\",");
    write_members(event, out);
}

/// The same shape without `id`, as a wire dialect (for a stream or a tool that wants
/// Stalwart's webhook shape; the webhooks themselves use [`write_webhook_event`]).
pub struct StalwartWebhookShape;

impl Encoder for StalwartWebhookShape {
    fn name(&self) -> &str {
        DIALECT
    }

    fn encode(&self, event: &Event, out: &mut Vec<u8>) {
        out.push(b'{');
        write_members(event, out);
    }
}

/// Writes `"createdAt":…,"type":…,"data":{…}}` (the object's members and its closing brace).
fn write_members(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"createdAt\":\"");
    out.extend_from_slice(&format_timestamp(event.created_at));
    out.extend_from_slice(b"\",\"type\":");
    write_str(out, &event.kind);
    out.extend_from_slice(b",\"data\":{");
    let mut first = true;
    if let Some(span) = event.span_id {
        out.extend_from_slice(b"\"spanId\":");
        out.extend_from_slice(itoa::Buffer::new().format(span).as_bytes());
        first = false;
    }
    // The full form's `data` is already what Stalwart writes (camelCase keys, empty values
    // left out, `spanId` taken out into `span_id`), so its members are copied as they are.
    // Parsing the event again for them was a third of a webhook tap's time per event (the
    // UTF-8 check of every string, RESULTS §19).
    match full_form_data(&event.json) {
        Some(members) => {
            if !members.is_empty() {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(members);
            }
        }
        // Not in the builder's shape (an event made some other way): parsed onto a tape the
        // thread keeps, keeping what the builder would. An event whose bytes do not parse
        // keeps an empty `data`.
        None => TAPE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut tape) => write_data_members(&mut tape, &event.json, first, out),
            // Only an encoding nested in another on the same thread would get here (none is).
            Err(_) => write_data_members(&mut Tape::new(), &event.json, first, out),
        }),
    }
    out.extend_from_slice(b"}}");
}

/// The members of `data` in an event's full form as `EventBuilder::build` writes it
/// (`{"text":…,"details":…,"createdAt":…,"type":…,"level":…,"data":{…}}`), without the braces,
/// or `None` for bytes in another shape.
///
/// `data` is the last member and every member before it is a string, so its key is the first
/// `,"data":{` in the bytes: inside a JSON string every `"` is escaped, so that sequence, whose
/// quote follows a comma, cannot occur in one. The members end before the closing `}}`.
fn full_form_data(json: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b",\"data\":{";
    if !json.starts_with(b"{\"text\":") || !json.ends_with(b"}}") {
        return None;
    }
    let at = memchr::memmem::find(json, KEY)? + KEY.len();
    json.get(at..json.len() - 2)
}

/// Appends the members of the `data` object of `json` (an event's full form), leaving out
/// `spanId` and empty values, after a comma unless `first`.
fn write_data_members(tape: &mut Tape, json: &[u8], mut first: bool, out: &mut Vec<u8>) {
    let Ok(root) = tape.parse(json) else { return };
    if let Some(Node::Object(members)) = root.get("data").map(JsonRef::node) {
        for (k, v) in members {
            if k.as_str() == "spanId" || v.is_empty_value() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_text(out, k);
            out.push(b':');
            write_value(out, v);
        }
    }
}

/// The body format of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `{"events":[…]}`, as Stalwart's webhook sends (receivers written for it work unchanged).
    #[default]
    Stalwart,
    /// One event object per line, each line ending in `\n`.
    Ndjson,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Stalwart => "application/json",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// Bytes this format adds around a batch and per event.
    pub fn overhead(self, events: usize) -> usize {
        match self {
            Format::Stalwart => 13 + events.saturating_sub(1),
            Format::Ndjson => events,
        }
    }

    /// Writes the body of a batch whose events are `events` (each one JSON object) into
    /// `out`, which is cleared first (a buffer the sender reuses).
    pub fn write_body<'a>(self, events: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Format::Stalwart => {
                out.extend_from_slice(b"{\"events\":[");
                for (i, e) in events.enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(e);
                }
                out.extend_from_slice(b"]}");
            }
            Format::Ndjson => {
                for e in events {
                    out.extend_from_slice(e);
                    out.push(b'\n');
                }
            }
        }
    }
}

/// `X-Signature` as Stalwart computes it: standard base64 of HMAC-SHA256 over the exact body
/// bytes, keyed with the raw key bytes.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The wait a `Retry-After` value asks for, read at `now`: delay seconds or an HTTP date (a
/// date in the past means now). `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: seconds. A number too large for u64 is "very long".
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delay before retry number `attempt` (0 for the first retry): a uniformly random wait
/// between zero and `min(max, initial × 2^attempt)` ("full jitter", so receivers that come
/// back are not hit by every sender at once). `unit` is a random number in `[0, 1)`.
pub fn backoff(initial: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let ceiling = initial.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX)).min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// What to do after a receiver's answer with `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the batch is delivered.
    Delivered,
    /// A 4xx other than 408 and 429: the receiver will never take this batch; it is skipped.
    Refused,
    /// Anything else (5xx, 408, 429, 1xx/3xx): try again later.
    Retry,
}

/// The verdict on `status`.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Retry,
        400..=499 => Verdict::Refused,
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::raw::RawValue;
    use crate::event::{Catalogue, EventBuilder};

    fn event(json: &str) -> Event {
        let (cat, keys) = Catalogue::with_keys(64);
        let raw = RawValue::parse_serde(json.as_bytes()).unwrap();
        EventBuilder::new(&cat, &keys).build(&raw, 0).unwrap()
    }

    /// `data`'s members copied from the full form are what parsing it gives, whatever its
    /// strings hold (a text that spells `,"data":{`, escapes, nested `data`, no data at all).
    #[test]
    fn copied_data_members_equal_parsed_ones() {
        let cases = [
            r#"{"type":"smtp.ehlo","data":{"spanId":1,"domain":"x.org"}}"#,
            r#"{"type":"smtp.ehlo","text":",\"data\":{\"evil\":1}","details":"\\\",\"data\":{","data":{"a":"b"}}"#,
            r#"{"type":"smtp.ehlo","data":{"causedBy":{"type":"x.y","data":{"deep":[1,{"data":{}}]}},"to":["a@x",null]}}"#,
            r#"{"type":"smtp.ehlo"}"#,
            r#"{"type":"smtp.ehlo","data":{"spanId":5}}"#,
            r#"{"type":"smtp.ehlo","data":{"q":"\u0001 tab\t \u00e9 \ud83d\ude00","n":-1.5e300}}"#,
        ];
        for json in cases {
            let e = event(json);
            let copied = full_form_data(&e.json).expect("the builder's shape");
            for first in [true, false] {
                let mut parsed = Vec::new();
                write_data_members(&mut Tape::new(), &e.json, first, &mut parsed);
                let mut fast = Vec::new();
                if !copied.is_empty() {
                    if !first {
                        fast.push(b',');
                    }
                    fast.extend_from_slice(copied);
                }
                assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&parsed), "{json}");
            }
        }
        // Bytes in another shape are parsed instead.
        assert_eq!(full_form_data(br#"{"type":"x","data":{"a":1}}"#), None);
        assert_eq!(full_form_data(b"{\"text\":\"t\""), None);
    }

    #[test]
    fn stalwart_shape_keeps_span_and_drops_text() {
        let e = event(
            r#"{"type":"smtp.ehlo","createdAt":"2026-11-20T11:34:57Z","text":"hi","details":"d",
               "data":{"spanId":42,"domain":"example.org","empty":"","remoteIp":"192.0.2.1"}}"#,
        );
        let mut out = Vec::new();
        write_webhook_event(7, &e, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"7","createdAt":"2026-11-20T11:34:57Z","type":"smtp.ehlo",
                "data":{"spanId":42,"domain":"example.org","remoteIp":"192.0.2.1"}})
        );
        // The dialect is the same object without the id.
        let mut form = Vec::new();
        StalwartWebhookShape.encode(&e, &mut form);
        let mut d: serde_json::Value = serde_json::from_slice(&form).unwrap();
        d.as_object_mut().unwrap().insert("id".into(), "7".into());
        assert_eq!(d, v);
    }

    #[test]
    fn bodies_in_both_formats() {
        let events: [&[u8]; 2] = [b"{\"id\":\"1\"}", b"{\"id\":\"2\"}"];
        let mut out = Vec::new();
        Format::Stalwart.write_body(events.iter().copied(), &mut out);
        assert_eq!(out, br#"{"events":[{"id":"1"},{"id":"2"}]}"#);
        assert_eq!(out.len(), 20 + Format::Stalwart.overhead(2));
        Format::Ndjson.write_body(events.iter().copied(), &mut out);
        assert_eq!(out, b"{\"id\":\"1\"}\n{\"id\":\"2\"}\n");
        Format::Stalwart.write_body(std::iter::empty(), &mut out);
        assert_eq!(out, br#"{"events":[]}"#);
    }

    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2, in base64.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        let hex = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let bytes: Vec<u8> =
            (0..32).map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap()).collect();
        assert_eq!(sig, base64::engine::general_purpose::STANDARD.encode(bytes));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        // 2015-10-21 07:28:00 GMT is `now`; 30 s later.
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(Duration::from_secs(u64::MAX)));
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(60);
        assert_eq!(backoff(i, m, 0, 0.999_999), Duration::from_millis(500).mul_f64(0.999_999));
        assert_eq!(backoff(i, m, 3, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(i, m, 40, 0.5), Duration::from_secs(30));
        assert_eq!(backoff(i, m, 7, 0.0), Duration::ZERO);
        assert!(backoff(i, m, u32::MAX, 1.0) <= m);
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(200), Verdict::Delivered);
        assert_eq!(verdict(204), Verdict::Delivered);
        assert_eq!(verdict(400), Verdict::Refused);
        assert_eq!(verdict(404), Verdict::Refused);
        assert_eq!(verdict(408), Verdict::Retry);
        assert_eq!(verdict(429), Verdict::Retry);
        assert_eq!(verdict(503), Verdict::Retry);
        assert_eq!(verdict(302), Verdict::Retry);
    }
}
