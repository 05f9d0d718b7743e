//! JSON writing for the one-time event serialisation, and the timestamp format of the live API.
//!
//! Hand-written because it runs once per ingested event and must not go through `format!`:
//! strings are escaped with a fast path for the common case of nothing to escape, numbers go
//! through `itoa`/`ryu`-backed writers, timestamps through a digit table.

use super::json::{JsonRef, Node, Text};
#[cfg(test)]
use super::raw::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Writes `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    loop {
        // Most values need no escaping at all: the clean run up to the next byte that needs
        // it is found eight bytes at a time and copied in one go.
        let i = start + first_escape(&bytes[start..]);
        out.extend_from_slice(&bytes[start..i]);
        let Some(&b) = bytes.get(i) else { break };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        start = i + 1;
    }
    out.push(b'"');
}

/// Writes a string value or key as a JSON string literal: a plain copy when it is known to
/// need no escapes, else [`write_str`].
#[inline]
pub fn write_text(out: &mut Vec<u8>, t: Text<'_>) {
    if t.is_clean() {
        let s = t.as_str().as_bytes();
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        write_str(out, t.as_str());
    }
}

/// The index of the first byte of `bytes` that a JSON string must escape (`"`, `\`, or below
/// 0x20), or `bytes.len()` if none does.
///
/// Eight bytes per step, as one `u64` (SWAR): for each test, a byte's high bit ends up set
/// when it matches. The subtractions can carry a borrow into the bytes *above* a match, so
/// only the lowest flagged byte is exact, and that is the one taken.
#[inline]
pub(crate) fn first_escape(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(word) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // Below 0x20: subtracting 0x20 wraps to a high byte, which `!w` keeps only for bytes
        // that did not have their high bit set already.
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let q = w ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q;
        let bs = w ^ (ONES * u64::from(b'\\'));
        let backslash = bs.wrapping_sub(ONES) & !bs;
        let m = (control | quote | backslash) & HIGH;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..].iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').unwrap_or(bytes.len() - i)
}

/// Writes any parsed JSON value as JSON, leaving out empty members of objects as Stalwart
/// does.
pub fn write_value<'t, J: JsonRef<'t>>(out: &mut Vec<u8>, v: J) {
    match v.node() {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(true) => out.extend_from_slice(b"true"),
        Node::Bool(false) => out.extend_from_slice(b"false"),
        Node::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Node::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
        Node::Float(f) => {
            // Parsed JSON numbers are always finite; serde_json writes them with ryu.
            let _ = serde_json::to_writer(&mut *out, &f);
        }
        Node::Str(s) => write_text(out, s),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Node::Object(members) => {
            out.push(b'{');
            let mut first = true;
            for (k, item) in members.filter(|(_, v)| !v.is_empty_value()) {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_text(out, k);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Families whose name is an acronym, written in capitals in the default `text`.
const ACRONYMS: &[&str] = &[
    "smtp",
    "imap",
    "pop3",
    "jmap",
    "http",
    "dns",
    "tls",
    "spf",
    "dkim",
    "dmarc",
    "arc",
    "mta-sts",
    "iprev",
    "acme",
    "ai",
    "tls-rpt",
    "mail-auth",
    "sieve",
    "webdav",
    "caldav",
    "carddav",
];

/// Writes a readable default `text` for an event type when the producer sent none:
/// `smtp.connection-start` becomes `"SMTP connection start"`.
pub fn write_humanized_type(out: &mut Vec<u8>, ty: &str) {
    let (family, event) = ty.split_once('.').unwrap_or((ty, ""));
    let mut text = String::with_capacity(ty.len() + 2);
    if ACRONYMS.contains(&family) {
        text.extend(family.chars().map(|c| if c == '-' { ' ' } else { c.to_ascii_uppercase() }));
    } else {
        let mut chars = family.chars();
        if let Some(c) = chars.next() {
            text.push(c.to_ascii_uppercase());
        }
        text.extend(chars.map(|c| if c == '-' { ' ' } else { c }));
    }
    if !event.is_empty() {
        text.push(' ');
        text.extend(event.chars().map(|c| if c == '-' || c == '.' { ' ' } else { c }));
    }
    write_str(out, &text);
}

/// Formats Unix seconds as `2026-11-20T12:34:56Z` (UTC, whole seconds).
pub fn format_timestamp(secs: i64) -> [u8; 20] {
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut b = *b"0000-00-00T00:00:00Z";
    let year = t.year().clamp(0, 9999) as u32;
    let put = |b: &mut [u8; 20], at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut b, 0, year, 4);
    put(&mut b, 5, u8::from(t.month()) as u32, 2);
    put(&mut b, 8, t.day() as u32, 2);
    put(&mut b, 11, t.hour() as u32, 2);
    put(&mut b, 14, t.minute() as u32, 2);
    put(&mut b, 17, t.second() as u32, 2);
    b
}

/// Reads a producer's `createdAt`: an RFC 3339 string (any offset, fractions dropped) or Unix
/// seconds as a number.
pub fn parse_timestamp<'t, J: JsonRef<'t>>(v: J) -> Option<i64> {
    match v.node() {
        Node::Str(s) => OffsetDateTime::parse(&s, &Rfc3339).ok().map(|t| t.unix_timestamp()),
        Node::Int(i) if (0..253_402_300_800).contains(&i) => Some(i),
        _ => None,
    }
}

/// The current time in Unix seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        let long = "0123456789abcdef0123456789abcdef";
        let cases = [
            "plain".to_string(),
            "q\"uote".into(),
            "back\\slash".into(),
            "nl\nx".into(),
            "ctl\u{1}\u{1f}".into(),
            "ünï".into(),
            String::new(),
            // Escapes after one or more clean 16-byte chunks, and at chunk edges.
            format!("{long}\"tail"),
            format!("{}\\{}", &long[..15], &long[..17]),
            format!("{long}{long}\u{7}"),
            long.to_string(),
        ];
        for s in &cases {
            let s = s.as_str();
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn escapes_match_serde_json_on_random_strings() {
        // Every byte class at every offset of the eight-byte steps, and runs of bytes with the
        // high bit set (UTF-8) beside the ones that need escaping.
        let pieces = ["a", "\"", "\\", "\n", "\u{1f}", "\u{0}", " ", "\u{7f}", "é", "€", "😀", "~"];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let n = rng.usize(0..40);
            let s: String = (0..n).map(|_| pieces[rng.usize(..pieces.len())]).collect();
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(&format_timestamp(0), b"1970-01-01T00:00:00Z");
        assert_eq!(&format_timestamp(1_795_091_696), b"2026-11-19T12:34:56Z");
        let v = RawValue::Str("2026-11-19T13:34:56.5+01:00".into());
        assert_eq!(parse_timestamp(&v), Some(1_795_091_696));
        assert_eq!(parse_timestamp(&RawValue::Int(5)), Some(5));
        assert_eq!(parse_timestamp(&RawValue::Str("nope".into())), None);
    }

    #[test]
    fn humanized() {
        let mut out = Vec::new();
        write_humanized_type(&mut out, "delivery.domain-delivery-start");
        assert_eq!(out, b"\"Delivery domain delivery start\"");
    }
}
