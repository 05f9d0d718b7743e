//! The ingest parser: producer JSON scanned once into a flat, reusable token tape.
//!
//! serde_json into a [`RawValue`](super::RawValue) tree cost about a third of an ingested
//! event's instructions: a `Vec` per object and array, a `Cow` per string, then a recursive
//! drop, for a value the builder reads once and throws away (`perf/RESULTS.md` §9). The tape
//! is one `Vec` of fixed-size tokens, cleared and refilled per line, so parsing allocates
//! nothing in the steady state. Strings without escapes (nearly all of them) are ranges of the
//! input; escaped ones are unescaped into one arena `String` that is reused the same way.
//! Containers record where they end, so a reader skips a nested value in one step.
//!
//! It accepts exactly the documents serde_json accepts (RFC 8259, UTF-8, no trailing commas,
//! no lone surrogates) with the nesting limit of [`MAX_DEPTH`], and yields the same numbers:
//! plain integers are read here, anything else (fractions, exponents, long or negative-zero
//! integers) is handed to serde_json so rounding and range errors are its own. The
//! differential tests and the `ingest` fuzz target hold it to that.

use super::encode::first_escape;
use super::json::{JsonRef, Node, Text};
use super::raw::{RawValue, MAX_DEPTH};

/// One token. Strings and keys are ranges (of the input, or of the arena when unescaped);
/// containers carry their length and the index just past their last token.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str { start: u32, end: u32, arena: bool },
    Array { len: u32, end: u32 },
    Object { len: u32, end: u32 },
}

/// A reusable parse buffer. [`Tape::parse`] fills it and returns a handle on the root value.
#[derive(Debug, Default)]
pub struct Tape {
    toks: Vec<Tok>,
    arena: String,
}

impl Tape {
    /// An empty tape; its buffers grow to the largest document parsed and are then reused.
    pub fn new() -> Tape {
        Tape { toks: Vec::with_capacity(64), arena: String::new() }
    }

    /// Parses one JSON document (surrounding whitespace allowed). The error says what was
    /// wrong and at which byte.
    pub fn parse<'t>(&'t mut self, input: &'t [u8]) -> Result<TapeRef<'t>, String> {
        let text = match std::str::from_utf8(input) {
            Ok(text) => text,
            Err(e) => return Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
        };
        if input.len() > u32::MAX as usize {
            return Err("document larger than 4 GiB".into());
        }
        self.toks.clear();
        self.arena.clear();
        let mut p = Parser { text, b: input, pos: 0, toks: &mut self.toks, arena: &mut self.arena };
        p.value(0)?;
        p.ws();
        if p.pos != input.len() {
            return Err(p.err("trailing characters after the value"));
        }
        Ok(TapeRef { tape: self, text, at: 0 })
    }
}

struct Parser<'p> {
    text: &'p str,
    b: &'p [u8],
    pos: usize,
    toks: &'p mut Vec<Tok>,
    arena: &'p mut String,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("{what} at byte {}", self.pos)
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: u8) -> Result<(), String> {
        self.ws();
        match self.b.get(self.pos) {
            Some(b'{') => self.container(depth, true),
            Some(b'[') => self.container(depth, false),
            Some(b'"') => {
                let s = self.string()?;
                self.toks.push(s);
                Ok(())
            }
            Some(b't') => self.literal(b"true", Tok::Bool(true)),
            Some(b'f') => self.literal(b"false", Tok::Bool(false)),
            Some(b'n') => self.literal(b"null", Tok::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &[u8], tok: Tok) -> Result<(), String> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            self.toks.push(tok);
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }

    /// An object (`object`) or an array whose opening byte is under `pos`.
    fn container(&mut self, depth: u8, object: bool) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        let close = if object { b'}' } else { b']' };
        self.pos += 1;
        let at = self.toks.len();
        self.toks.push(Tok::Null);
        let mut len = 0u32;
        self.ws();
        if self.b.get(self.pos) == Some(&close) {
            self.pos += 1;
        } else {
            loop {
                if object {
                    self.key()?;
                }
                self.value(depth + 1)?;
                len += 1;
                self.ws();
                match self.b.get(self.pos) {
                    Some(b',') => self.pos += 1,
                    Some(&c) if c == close => {
                        self.pos += 1;
                        break;
                    }
                    _ => {
                        return Err(self.err(if object {
                            "expected ',' or '}'"
                        } else {
                            "expected ',' or ']'"
                        }))
                    }
                }
            }
        }
        let end = self.toks.len() as u32;
        self.toks[at] = if object { Tok::Object { len, end } } else { Tok::Array { len, end } };
        Ok(())
    }

    /// An object member's key and the colon after it.
    fn key(&mut self) -> Result<(), String> {
        self.ws();
        if self.b.get(self.pos) != Some(&b'"') {
            return Err(self.err("expected a string key"));
        }
        let key = self.string()?;
        self.toks.push(key);
        self.ws();
        if self.b.get(self.pos) != Some(&b':') {
            return Err(self.err("expected ':'"));
        }
        self.pos += 1;
        Ok(())
    }

    /// A string starting at the opening quote under `pos`.
    #[inline]
    fn string(&mut self) -> Result<Tok, String> {
        let start = self.pos + 1;
        let stop = start + first_escape(&self.b[start..]);
        match self.b.get(stop) {
            Some(b'"') => {
                self.pos = stop + 1;
                Ok(Tok::Str { start: start as u32, end: stop as u32, arena: false })
            }
            Some(b'\\') => self.escaped(start, stop),
            Some(_) => {
                self.pos = stop;
                Err(self.err("control character in a string"))
            }
            None => Err(self.err("unterminated string")),
        }
    }

    /// The rest of a string that has an escape at `stop`: unescaped into the arena.
    fn escaped(&mut self, start: usize, mut stop: usize) -> Result<Tok, String> {
        let from = self.arena.len();
        let mut run = start;
        loop {
            // Bytes run..stop are plain text and stop is at an ASCII byte, so both ends are
            // character boundaries of the validated input.
            self.arena.push_str(&self.text[run..stop]);
            match self.b.get(stop) {
                Some(b'"') => {
                    self.pos = stop + 1;
                    return Ok(Tok::Str { start: from as u32, end: self.arena.len() as u32, arena: true });
                }
                Some(b'\\') => {
                    self.pos = stop;
                    let c = match self.b.get(stop + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let (c, used) = self.unicode(stop)?;
                            self.arena.push(c);
                            stop += used;
                            run = stop;
                            stop = run + first_escape(&self.b[run..]);
                            continue;
                        }
                        Some(_) => return Err(self.err("invalid escape")),
                        None => return Err(self.err("unterminated string")),
                    };
                    self.arena.push(c);
                    stop += 2;
                }
                Some(_) => {
                    self.pos = stop;
                    return Err(self.err("control character in a string"));
                }
                None => return Err(self.err("unterminated string")),
            }
            run = stop;
            stop = run + first_escape(&self.b[run..]);
        }
    }

    /// A `\uXXXX` escape at `at` (a surrogate pair takes two); returns the character and the
    /// bytes used.
    fn unicode(&self, at: usize) -> Result<(char, usize), String> {
        let hex4 = |i: usize| -> Option<u32> {
            let digits = self.b.get(i..i + 4)?;
            let mut v = 0u32;
            for &d in digits {
                v = v * 16 + (d as char).to_digit(16)?;
            }
            Some(v)
        };
        let bad = || format!("invalid \\u escape at byte {at}");
        let hi = hex4(at + 2).ok_or_else(bad)?;
        match hi {
            0xD800..=0xDBFF => {
                if self.b.get(at + 6..at + 8) != Some(b"\\u") {
                    return Err(format!("lone leading surrogate at byte {at}"));
                }
                let lo = hex4(at + 8).ok_or_else(bad)?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(format!("lone leading surrogate at byte {at}"));
                }
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                Ok((char::from_u32(c).ok_or_else(bad)?, 12))
            }
            0xDC00..=0xDFFF => Err(format!("lone trailing surrogate at byte {at}")),
            _ => Ok((char::from_u32(hi).ok_or_else(bad)?, 6)),
        }
    }

    /// A number. Plain integers of up to 18 digits (every port, size, count and id a mail
    /// server sends) are read here; the rest goes to serde_json, so that floats round and
    /// out-of-range numbers fail exactly as they would in a serde_json parse.
    fn number(&mut self) -> Result<(), String> {
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        let neg = b[i] == b'-';
        if neg {
            i += 1;
        }
        let digits = i;
        let mut v: u64 = 0;
        while let Some(&d @ b'0'..=b'9') = b.get(i) {
            v = v.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            i += 1;
        }
        let n = i - digits;
        let leading_zero = n > 1 && b[digits] == b'0';
        let more = matches!(b.get(i), Some(b'.' | b'e' | b'E' | b'+' | b'-'));
        // serde_json reads `-0` as the float -0.0.
        let negative_zero = neg && v == 0;
        let plain = (1..=18).contains(&n) && !leading_zero && !more && !negative_zero;
        if plain {
            self.pos = i;
            // At most 18 digits, so the value fits an i64 either way.
            self.toks.push(Tok::Int(if neg { -(v as i64) } else { v as i64 }));
            return Ok(());
        }
        // Every character a JSON number can hold; a valid number is always followed by
        // something else, so this span is exactly the number when the input is valid.
        while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let tok = match serde_json::from_str::<RawValue<'_>>(&self.text[start..i]) {
            Ok(RawValue::Int(v)) => Tok::Int(v),
            Ok(RawValue::UInt(v)) => Tok::UInt(v),
            Ok(RawValue::Float(v)) => Tok::Float(v),
            _ => return Err(self.err("invalid number")),
        };
        self.pos = i;
        self.toks.push(tok);
        Ok(())
    }
}

/// A handle on one value of a parsed [`Tape`].
#[derive(Debug, Clone, Copy)]
pub struct TapeRef<'t> {
    tape: &'t Tape,
    text: &'t str,
    at: u32,
}

impl<'t> TapeRef<'t> {
    #[inline]
    fn tok(&self, at: u32) -> Tok {
        self.tape.toks[at as usize]
    }

    #[inline]
    fn str_at(&self, at: u32) -> Text<'t> {
        match self.tok(at) {
            Tok::Str { start, end, arena } => {
                let (start, end) = (start as usize, end as usize);
                let text = if arena { self.tape.arena.as_str() } else { self.text };
                debug_assert!(
                    text.is_char_boundary(start) && text.is_char_boundary(end) && end <= text.len()
                );
                // SAFETY: the parser made this range on this text (the validated input) or this
                // arena, from one quote or escape to the next: both ends are ASCII bytes or
                // the text's ends, so they are in bounds and on character boundaries. Every
                // builder reads every string, and the checked slice cost about 4 % of an
                // ingested event.
                let s = unsafe { text.get_unchecked(start..end) };
                // A string read without unescaping holds nothing JSON must escape.
                if arena {
                    Text::new(s)
                } else {
                    Text::clean(s)
                }
            }
            // Keys are always string tokens; the parser guarantees it.
            _ => Text::new(""),
        }
    }

    /// The index just past this value's tokens.
    #[inline]
    fn next_at(&self, at: u32) -> u32 {
        match self.tok(at) {
            Tok::Array { end, .. } | Tok::Object { end, .. } => end,
            _ => at + 1,
        }
    }
}

/// The elements of a tape array.
#[derive(Clone)]
pub struct TapeItems<'t> {
    tape: TapeRef<'t>,
    at: u32,
    left: u32,
}

impl<'t> Iterator for TapeItems<'t> {
    type Item = TapeRef<'t>;
    fn next(&mut self) -> Option<TapeRef<'t>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = TapeRef { at: self.at, ..self.tape };
        self.at = self.tape.next_at(self.at);
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for TapeItems<'_> {}

/// The members of a tape object.
#[derive(Clone)]
pub struct TapeMembers<'t> {
    tape: TapeRef<'t>,
    at: u32,
    left: u32,
}

impl<'t> Iterator for TapeMembers<'t> {
    type Item = (Text<'t>, TapeRef<'t>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = self.tape.str_at(self.at);
        let value = TapeRef { at: self.at + 1, ..self.tape };
        self.at = self.tape.next_at(self.at + 1);
        Some((key, value))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for TapeMembers<'_> {}

impl<'t> JsonRef<'t> for TapeRef<'t> {
    type Items = TapeItems<'t>;
    type Members = TapeMembers<'t>;

    #[inline]
    fn node(self) -> Node<'t, Self> {
        match self.tok(self.at) {
            Tok::Null => Node::Null,
            Tok::Bool(b) => Node::Bool(b),
            Tok::Int(i) => Node::Int(i),
            Tok::UInt(u) => Node::UInt(u),
            Tok::Float(f) => Node::Float(f),
            Tok::Str { .. } => Node::Str(self.str_at(self.at)),
            Tok::Array { len, .. } => Node::Array(TapeItems { tape: self, at: self.at + 1, left: len }),
            Tok::Object { len, .. } => Node::Object(TapeMembers { tape: self, at: self.at + 1, left: len }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` both ways and demands the same tree, or an error from both; true when
    /// the document was valid.
    fn same(text: &[u8]) -> bool {
        let mut tape = Tape::new();
        let ours = tape.parse(text).map(JsonRef::to_raw);
        let theirs = RawValue::parse_serde(text);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => {
                assert!(same_value(a, b), "{:?}: {a:?} vs {b:?}", String::from_utf8_lossy(text))
            }
            (Err(_), Err(_)) => {}
            _ => panic!("{:?}: tape {ours:?}, serde_json {theirs:?}", String::from_utf8_lossy(text)),
        }
        theirs.is_ok()
    }

    /// Equality that tells -0.0 from 0.0 and treats NaN as itself (neither can come from JSON
    /// except -0.0, but the check should not be the weak point).
    fn same_value(a: &RawValue<'_>, b: &RawValue<'_>) -> bool {
        match (a, b) {
            (RawValue::Float(x), RawValue::Float(y)) => x.to_bits() == y.to_bits(),
            (RawValue::Array(x), RawValue::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
            }
            (RawValue::Object(x), RawValue::Object(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|((ka, a), (kb, b))| ka == kb && same_value(a, b))
            }
            _ => a == b,
        }
    }

    #[test]
    fn agrees_with_serde_json_on_valid_documents() {
        for text in [
            r#"{"type":"smtp.connection-start","data":{"remoteIp":"10.0.0.5","remotePort":4242}}"#,
            r#"  [1, -2, 0, -0, 3.5, 1e3, -1E-2, 18446744073709551615, 9223372036854775807]  "#,
            r#"[9223372036854775808, -9223372036854775808, -9223372036854775809, 123456789012345678901234]"#,
            r#"[999999999999999999, 1000000000000000000, -999999999999999999]"#,
            r#"{"a":{"b":[[],{},[{}]]},"a":null,"":true,"f":false}"#,
            r#"["esc\"\\\/\b\f\n\r\t", "\u0041\u00e9\u20ac\ud83d\ude00", "\u0000", "tail\\"]"#,
            "\"plain ünï 😀\"",
            " \t\r\n{ \"k\" : [ 1 , 2 ] } \n",
            "0",
            "1.0",
            "-1.5e+300",
        ] {
            assert!(same(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "[1 2]",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "1e400",
            "-1e400",
            "tru",
            "nul",
            "truex",
            "[true false]",
            "\"abc",
            "\"a\u{1}b\"",
            "\"bad \\x escape\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\ud800\\u0041\"",
            "\"\\udc00\"",
            "\"\\ud800x\"",
            "{} {}",
            "[]]",
            "{\"a\":}",
            "[1,,2]",
            "NaN",
            "Infinity",
            "[--1]",
            "[1-2]",
            "[0x10]",
            "\"\\",
        ] {
            assert!(!same(text.as_bytes()), "{text}");
        }
        same(&[b'"', 0xff, b'"']);
        same(&[b'[', 0xc3, b']']);
    }

    #[test]
    fn nesting_limit_is_the_same() {
        for depth in [15usize, 16, 17, 100_000] {
            let text = "[".repeat(depth) + &"]".repeat(depth);
            same(text.as_bytes());
            let text = "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth);
            same(text.as_bytes());
        }
    }

    #[test]
    fn agrees_on_random_documents() {
        // Random documents built from JSON fragments, some valid and some not, every one
        // compared with serde_json.
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"k\"",
            "\"v\\n\"",
            "\"\\u00e9\"",
            "1",
            "-0",
            "2.5",
            "1e2",
            "true",
            "null",
            " ",
            "\"",
            "\\",
            "0",
            "-",
            "9999999999999999999",
            "é",
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        let mut valid = 0;
        for _ in 0..50_000 {
            let n = rng.usize(1..14);
            let text: String = (0..n).map(|_| pieces[rng.usize(..pieces.len())]).collect();
            valid += usize::from(same(text.as_bytes()));
        }
        // Mostly invalid by construction; enough valid ones that both sides are exercised.
        assert!(valid > 1_000, "{valid}");
    }

    /// A random valid JSON value, written with random spacing and escapes.
    fn random_json(rng: &mut fastrand::Rng, depth: u32, out: &mut String) {
        let space = |rng: &mut fastrand::Rng, out: &mut String| {
            for _ in 0..rng.usize(0..2) {
                out.push([' ', '\n', '\t', '\r'][rng.usize(..4)]);
            }
        };
        space(rng, out);
        match rng.u32(0..if depth < 4 { 8 } else { 6 }) {
            0 => out.push_str(["null", "true", "false"][rng.usize(..3)]),
            1 => out.push_str(&rng.i64(..).to_string()),
            2 => out.push_str(&(rng.i64(-1000..1000) / [1, 7, 1000][rng.usize(..3)]).to_string()),
            3 => {
                let f = rng.f64() * 10f64.powi(rng.i32(-30..30)) * if rng.bool() { 1.0 } else { -1.0 };
                out.push_str(&if rng.bool() { format!("{f:e}") } else { format!("{f}") });
            }
            4 | 5 => {
                out.push('"');
                for _ in 0..rng.usize(0..12) {
                    let piece = [
                        "a",
                        "Z",
                        " ",
                        "é",
                        "😀",
                        "\\\"",
                        "\\\\",
                        "\\/",
                        "\\n",
                        "\\t",
                        "\\u0041",
                        "\\u00e9",
                        "\\ud83d\\ude00",
                        "\\u0000",
                        "\\b",
                        "\\f",
                    ];
                    out.push_str(piece[rng.usize(..piece.len())]);
                }
                out.push('"');
            }
            6 => {
                out.push('[');
                for i in 0..rng.usize(0..4) {
                    if i > 0 {
                        out.push(',');
                    }
                    random_json(rng, depth + 1, out);
                }
                space(rng, out);
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..rng.usize(0..4) {
                    if i > 0 {
                        out.push(',');
                    }
                    space(rng, out);
                    out.push_str(["\"k\"", "\"type\"", "\"\\u006b\"", "\"\""][rng.usize(..4)]);
                    space(rng, out);
                    out.push(':');
                    random_json(rng, depth + 1, out);
                }
                space(rng, out);
                out.push('}');
            }
        }
        space(rng, out);
    }

    #[test]
    fn agrees_on_random_valid_documents_and_their_mutations() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20_000 {
            let mut text = String::new();
            random_json(&mut rng, 0, &mut text);
            assert!(same(text.as_bytes()), "{text}");
            // One byte changed, removed or doubled: usually invalid, sometimes not.
            let mut bytes = text.into_bytes();
            let at = rng.usize(..bytes.len());
            match rng.u8(0..3) {
                0 => {
                    let swap = b"{}[]\",:0-e.\\ u";
                    bytes[at] = swap[rng.usize(..swap.len())];
                }
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, bytes[at]),
            }
            same(&bytes);
        }
    }

    #[test]
    fn a_tape_is_reused() {
        let mut tape = Tape::new();
        let first = tape.parse(br#"{"a":"x\ty","b":[1,2,3]}"#).unwrap().to_raw();
        assert_eq!(
            first.get("b"),
            Some(&RawValue::Array(vec![RawValue::Int(1), RawValue::Int(2), RawValue::Int(3)]))
        );
        let second = tape.parse(br#"{"c":"\u0041"}"#).unwrap();
        assert_eq!(second.get("c").and_then(JsonRef::as_str), Some("A"));
        assert!(second.get("a").is_none());
    }
}
