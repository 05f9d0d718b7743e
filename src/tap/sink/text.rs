//! The log sinks' readable text format: one event on one line (time, level, type, then the
//! event's `data` as `key=value` pairs), written by a pure function with no I/O.
//!
//! A line looks like
//! `2026-12-07T17:00:00Z WARN  auth.failed accountName=bob remoteIp=192.0.2.7 reason="bad password"`.
//! The values come from the event's own JSON (the bytes every live subscriber gets), read with
//! the ingest tape parser, so a value is written as the producer sent it (not the folded form
//! the matcher compares). Whatever the event holds, the line never contains a line break or any
//! other control character: such values are quoted and escaped, and keys are reduced to a safe
//! alphabet, so one event is always exactly one line for `grep`, `tail` and journald.

use crate::event::encode::{format_timestamp, write_value};
use crate::event::{Event, JsonRef, Level, Node, Tape};

/// The level as written in a text line: upper case, padded to five columns so the types line
/// up.
fn level_word(level: Level) -> &'static str {
    match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO ",
        Level::Warn => "WARN ",
        Level::Error => "ERROR",
    }
}

/// True when `c` cannot appear in a bare (unquoted) value: separators (space, `=`), quoting
/// characters, and anything a terminal or a log reader could take as a line break or control.
fn needs_quote(c: char) -> bool {
    c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control() || c.is_whitespace()
}

/// Writes `s` as a value: bare when it is non-empty and holds no character [`needs_quote`]
/// flags, else in double quotes with `\"`, `\\`, `\n`, `\r`, `\t` and `\u{…}` escapes for every
/// other control or non-space whitespace character (U+2028 included).
pub fn write_value_text(out: &mut Vec<u8>, s: &str) {
    if !s.is_empty() && !s.chars().any(needs_quote) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    let mut buf = [0u8; 4];
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            ' ' => out.push(b' '),
            c if c.is_control() || c.is_whitespace() => {
                out.extend_from_slice(b"\\u{");
                let mut hex = itoa_hex(c as u32);
                out.append(&mut hex);
                out.push(b'}');
            }
            c => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
    out.push(b'"');
}

/// Lower-case hexadecimal digits of `v`, without leading zeros.
fn itoa_hex(v: u32) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = Vec::with_capacity(8);
    let mut v = v;
    loop {
        digits.push(HEX[(v & 0xf) as usize]);
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    digits.reverse();
    digits
}

/// Writes a key: letters, digits, `.`, `-` and `_` are kept and anything else becomes `_`, so
/// a producer's odd key can neither split the pair nor the line. An empty key is written `_`.
fn write_key(out: &mut Vec<u8>, k: &str) {
    if k.is_empty() {
        out.push(b'_');
    }
    for c in k.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
            out.push(c as u8);
        } else {
            out.push(b'_');
        }
    }
}

/// Appends one value's text to `scratch`, unquoted: scalars as their JSON text without the
/// string quotes, an array's elements joined by `,`, an object (a nested event) as its JSON.
/// Empty values inside arrays are skipped, as Stalwart leaves them out.
fn flatten<'t, J: JsonRef<'t>>(v: J, scratch: &mut Vec<u8>) {
    match v.node() {
        Node::Str(s) => scratch.extend_from_slice(s.as_str().as_bytes()),
        Node::Array(items) => {
            let mut first = true;
            for item in items {
                if item.node().is_empty_value() {
                    continue;
                }
                if !first {
                    scratch.push(b',');
                }
                first = false;
                flatten(item, scratch);
            }
        }
        _ => write_value(scratch, v),
    }
}

/// Appends `event` as one text line to `out`, without the final newline. The time is the
/// event's `createdAt` in UTC; the pairs are the members of its `data` in the order the event
/// has them, empty ones left out; a non-empty `details` comes last as `details=…`. `scratch`
/// is a buffer the caller keeps between calls.
pub fn write_line(event: &Event, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    out.extend_from_slice(&format_timestamp(event.created_at));
    out.push(b' ');
    out.extend_from_slice(level_word(event.level).as_bytes());
    out.push(b' ');
    write_value_text(out, &event.kind);
    let mut tape = Tape::new();
    // The event's JSON was written by livetap itself, so it always parses; an event that did
    // not would still get its time, level and type.
    let Ok(root) = tape.parse(&event.json) else { return };
    let mut details = None;
    if let Node::Object(members) = root.node() {
        for (k, v) in members {
            match k.as_str() {
                "data" => write_pairs(v, out, scratch),
                "details" => details = Some(v),
                _ => {}
            }
        }
    }
    if let Some(d) = details.filter(|d| !d.node().is_empty_value()) {
        out.extend_from_slice(b" details=");
        scratch.clear();
        flatten(d, scratch);
        write_value_text(out, &String::from_utf8_lossy(scratch));
    }
}

/// Writes ` key=value` for each non-empty member of `data`.
fn write_pairs<'t, J: JsonRef<'t>>(data: J, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    let Node::Object(members) = data.node() else { return };
    for (k, v) in members {
        if v.node().is_empty_value() {
            continue;
        }
        out.push(b' ');
        write_key(out, &k);
        out.push(b'=');
        scratch.clear();
        flatten(v, scratch);
        // Every piece of the scratch text came from UTF-8 strings or JSON writers, so the
        // lossy conversion never replaces anything; it only avoids an unchecked conversion.
        write_value_text(out, &String::from_utf8_lossy(scratch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder, RawValue};

    fn line(json: &str) -> String {
        let (c, k) = Catalogue::with_keys(64);
        let raw = RawValue::parse_serde(json.as_bytes()).unwrap();
        let ev = EventBuilder::new(&c, &k).build(&raw, 1_795_091_696).unwrap();
        let mut out = Vec::new();
        write_line(&ev, &mut out, &mut Vec::new());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_plain_event_reads_as_time_level_type_and_pairs() {
        assert_eq!(
            line(
                r#"{"type":"auth.failed","level":"warn","createdAt":"2026-11-19T12:34:56Z",
                    "data":{"accountName":"bob","remoteIp":"192.0.2.7","remotePort":4711}}"#
            ),
            "2026-11-19T12:34:56Z WARN  auth.failed accountName=bob remoteIp=192.0.2.7 remotePort=4711"
        );
    }

    #[test]
    fn values_with_spaces_quotes_and_controls_are_quoted_and_escaped() {
        let l = line(
            r#"{"type":"smtp.rcpt-to","level":"info","createdAt":0,
                "data":{"reason":"bad \"rcpt\" a\\b","nl":"x\ny\r\tz","sep":"a=b","ls":"u\u2028v","nul":"\u0000"}}"#,
        );
        assert_eq!(
            l,
            r#"1970-01-01T00:00:00Z INFO  smtp.rcpt-to reason="bad \"rcpt\" a\\b" nl="x\ny\r\tz" sep="a=b" ls="u\u{2028}v" nul="\u{0}""#
        );
        assert!(!l.contains('\n') && !l.contains('\r'));
    }

    #[test]
    fn lists_nested_events_and_empty_values() {
        let l = line(
            r#"{"type":"delivery.delivered","level":"error","createdAt":0,"details":"it broke",
                "data":{"to":["a@x","b@y"],"empty":"","none":null,"list":[],"ok":true,"size":1.5,
                "causedBy":{"type":"x.y","data":{"code":"1"}}}}"#,
        );
        assert_eq!(
            l,
            concat!(
                "1970-01-01T00:00:00Z ERROR delivery.delivered to=a@x,b@y ok=true size=1.5 ",
                r#"causedBy="{\"type\":\"x.y\",\"data\":{\"code\":\"1\"}}" details="it broke""#
            )
        );
    }

    #[test]
    fn odd_keys_cannot_split_a_pair() {
        let l = line(r#"{"type":"a.b","level":"info","createdAt":0,"data":{"k y=\n":"v","":"w"}}"#);
        assert_eq!(l, "1970-01-01T00:00:00Z INFO  a.b k_y__=v _=w");
    }

    #[test]
    fn no_input_yields_a_line_break() {
        // Every character class at every position of a value and a key: the line stays one
        // line and every quote it opens is closed.
        let pieces = ["a", " ", "\"", "\\", "\n", "\r", "\u{1}", "\u{85}", "\u{2028}", "=", "é", "😀", ","];
        let mut rng = fastrand::Rng::with_seed(25);
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..rng.usize(0..12) {
                s.push_str(pieces[rng.usize(..pieces.len())]);
            }
            let json = serde_json::json!({"type": "a.b", "createdAt": 0, "data": {&s: &s, "l": [&s, &s]}});
            let l = line(&json.to_string());
            assert!(!l.chars().any(|c| c.is_control() || (c.is_whitespace() && c != ' ')), "{l:?}");
        }
    }
}
