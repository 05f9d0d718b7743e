//! Splitting a large JSON document into its events without parsing it whole.
//!
//! The token tape costs up to 16 bytes per token, and a token can be two bytes of input
//! (`0,`), so a tape over a whole 8 MiB body could take 64 MiB, and twice that while its
//! vector grows. A body or line longer than a few events (a JSON array of events, or a
//! Stalwart batch `{"events":[...]}`) is therefore cut here into one byte range per element,
//! and each element is parsed on its own: the tape then never holds more than one element.
//!
//! The scan only follows the structure (strings with their escapes, and nesting); it does not
//! validate scalars or match bracket kinds. Each element it yields is still parsed strictly by
//! the tape, so nothing invalid is accepted; a structural error between elements (a missing
//! comma, an unterminated array) ends the scan with a reason, and the elements before it stand,
//! as lines before a bad line of NDJSON do. No I/O, no allocation per element.

use std::ops::Range;

/// Why a document could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The bytes end inside a string or a nested value.
    #[error("malformed JSON: the document ends inside a value")]
    Unterminated,
    /// Something other than `,` or the closing bracket follows an element.
    #[error("malformed JSON: expected `,` or `]` after element {0}")]
    ExpectedComma(usize),
    /// Bytes other than white space follow the document.
    #[error("malformed JSON: trailing characters after the document")]
    Trailing,
}

/// What a document's first bytes say it is, as far as splitting is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A JSON array: its elements are in the given range (between the brackets).
    Array(Range<usize>),
    /// An object with an `events` member holding an array and no `type` or `metric` member
    /// (a Stalwart batch): the array's inner range.
    Batch(Range<usize>),
    /// Anything else: one value to parse whole.
    Single,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index just past the string that opens at `b[i]` (a `"`).
fn skip_string(b: &[u8], i: usize) -> Result<usize, SplitError> {
    let mut j = i + 1;
    loop {
        // memchr2 finds the next quote or backslash with a vectorised scan.
        match memchr::memchr2(b'"', b'\\', &b[j..]) {
            None => return Err(SplitError::Unterminated),
            Some(p) if b[j + p] == b'"' => return Ok(j + p + 1),
            Some(p) => j += p + 2,
        }
        if j > b.len() {
            return Err(SplitError::Unterminated);
        }
    }
}

/// The index just past the value that starts at `b[i]` (after white space). Scalars run to
/// the next structural byte; their validity is the tape's to check.
fn skip_value(b: &[u8], i: usize) -> Result<usize, SplitError> {
    let mut j = i;
    let mut depth = 0usize;
    while j < b.len() {
        match b[j] {
            b'"' => {
                j = skip_string(b, j)?;
                if depth == 0 {
                    return Ok(j);
                }
            }
            b'[' | b'{' => {
                depth += 1;
                j += 1;
            }
            b']' | b'}' => {
                if depth == 0 {
                    return Ok(j);
                }
                depth -= 1;
                j += 1;
                if depth == 0 {
                    return Ok(j);
                }
            }
            b',' if depth == 0 => return Ok(j),
            _ => j += 1,
        }
    }
    if depth == 0 {
        Ok(j)
    } else {
        Err(SplitError::Unterminated)
    }
}

/// Finds what `doc` is: an array, a Stalwart batch, or a single value. Only the top level of
/// an object is scanned; its member values are skipped.
pub fn shape(doc: &[u8]) -> Result<Shape, SplitError> {
    let i = skip_ws(doc, 0);
    match doc.get(i) {
        Some(b'[') => {
            let end = skip_value(doc, i)?;
            if skip_ws(doc, end) != doc.len() {
                return Err(SplitError::Trailing);
            }
            Ok(Shape::Array(i + 1..end - 1))
        }
        Some(b'{') => {
            let mut j = skip_ws(doc, i + 1);
            let mut events = None;
            let mut plain_event = false;
            while j < doc.len() && doc[j] == b'"' {
                let key_end = skip_string(doc, j)?;
                let key = &doc[j + 1..key_end - 1];
                let colon = skip_ws(doc, key_end);
                if doc.get(colon) != Some(&b':') {
                    return Ok(Shape::Single);
                }
                let v = skip_ws(doc, colon + 1);
                let v_end = skip_value(doc, v)?;
                match unescaped_key(key).as_deref() {
                    Some("events") if doc.get(v) == Some(&b'[') && events.is_none() => {
                        events = Some(v + 1..v_end - 1);
                    }
                    Some("type" | "metric") => plain_event = true,
                    _ => {}
                }
                j = skip_ws(doc, v_end);
                if doc.get(j) == Some(&b',') {
                    j = skip_ws(doc, j + 1);
                }
            }
            match events {
                Some(r) if !plain_event => Ok(Shape::Batch(r)),
                _ => Ok(Shape::Single),
            }
        }
        _ => Ok(Shape::Single),
    }
}

/// A member name with its escapes resolved (rare: only names with a backslash pay for it);
/// `None` when it is not a valid JSON string.
fn unescaped_key(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw).ok().map(std::borrow::Cow::Borrowed);
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).ok().map(std::borrow::Cow::Owned)
}

/// The elements of an array whose inner bytes (between the brackets) are `inner`, as ranges
/// of `inner`, trimmed of white space.
pub struct Elements<'a> {
    b: &'a [u8],
    at: usize,
    n: usize,
    done: bool,
    /// A structural error found after the element just yielded, reported on the next call.
    pending: Option<SplitError>,
}

impl<'a> Elements<'a> {
    /// The elements of the array whose inner bytes are `inner`.
    pub fn new(inner: &'a [u8]) -> Elements<'a> {
        let at = skip_ws(inner, 0);
        Elements { b: inner, at, n: 0, done: at == inner.len(), pending: None }
    }
}

impl Iterator for Elements<'_> {
    type Item = Result<Range<usize>, SplitError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        self.n += 1;
        let start = self.at;
        let end = match skip_value(self.b, start) {
            Ok(e) => e,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        // A scalar runs up to the next comma, so trailing white space is not part of it.
        let mut trimmed = end;
        while trimmed > start && matches!(self.b[trimmed - 1], b' ' | b'\t' | b'\n' | b'\r') {
            trimmed -= 1;
        }
        if trimmed == start {
            // `[,1]`, `[1,,2]` or a trailing comma `[1,]`: an element is missing.
            self.done = true;
            return Some(Err(SplitError::ExpectedComma(self.n - 1)));
        }
        let next = skip_ws(self.b, end);
        if next == self.b.len() {
            self.done = true;
        } else if self.b[next] == b',' {
            self.at = skip_ws(self.b, next + 1);
        } else {
            self.done = true;
            self.pending = Some(SplitError::ExpectedComma(self.n));
        }
        Some(Ok(start..trimmed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements(inner: &str) -> Vec<Result<&str, SplitError>> {
        Elements::new(inner.as_bytes()).map(|r| r.map(|r| &inner[r])).collect()
    }

    #[test]
    fn splits_arrays_of_values() {
        assert_eq!(elements(""), vec![]);
        assert_eq!(elements("  "), vec![]);
        assert_eq!(elements("1"), vec![Ok("1")]);
        assert_eq!(
            elements(r#" {"type":"a,]"} , [1,[2]], "x\"],", null "#),
            vec![Ok(r#"{"type":"a,]"}"#), Ok("[1,[2]]"), Ok(r#""x\"],""#), Ok("null")]
        );
        // Scalars run to the next comma; the tape then refuses `1 2` as one element.
        assert_eq!(elements("1 2"), vec![Ok("1 2")]);
        assert_eq!(elements("1,"), vec![Ok("1"), Err(SplitError::ExpectedComma(1))]);
        assert_eq!(elements(",1"), vec![Err(SplitError::ExpectedComma(0))]);
        assert_eq!(elements("1,,2"), vec![Ok("1"), Err(SplitError::ExpectedComma(1))]);
        assert_eq!(elements(r#"{"a":1} {"b":2}"#), vec![Ok(r#"{"a":1}"#), Err(SplitError::ExpectedComma(1))]);
        assert_eq!(elements(r#"{"a":1"#), vec![Err(SplitError::Unterminated)]);
        assert_eq!(elements(r#""abc"#), vec![Err(SplitError::Unterminated)]);
    }

    #[test]
    fn finds_the_shape_of_a_document() {
        let doc = br#" [ {"type":"a"}, {"type":"b"} ] "#;
        let Shape::Array(r) = shape(doc).unwrap() else { panic!() };
        assert_eq!(&doc[r], br#" {"type":"a"}, {"type":"b"} "#);
        let doc = br#"{"id":"x","events":[{"type":"a"}],"more":{"events":1}}"#;
        let Shape::Batch(r) = shape(doc).unwrap() else { panic!() };
        assert_eq!(&doc[r], br#"{"type":"a"}"#);
        // An escaped member name is read as its text.
        let doc = br#"{"ev\u0065nts":[1]}"#;
        assert!(matches!(shape(doc).unwrap(), Shape::Batch(_)));
        // A typed object or a metric record with an `events` member is one value.
        assert_eq!(shape(br#"{"type":"a","events":[1]}"#).unwrap(), Shape::Single);
        assert_eq!(shape(br#"{"events":[1],"metric":"m"}"#).unwrap(), Shape::Single);
        assert_eq!(shape(br#"{"events":5}"#).unwrap(), Shape::Single);
        assert_eq!(shape(b"42").unwrap(), Shape::Single);
        assert_eq!(shape(b"[1] x").unwrap_err(), SplitError::Trailing);
        assert_eq!(shape(b"[[[[").unwrap_err(), SplitError::Unterminated);
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        let doc = "[".repeat(1_000_000);
        assert_eq!(shape(doc.as_bytes()).unwrap_err(), SplitError::Unterminated);
        let inner = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(elements(&inner).len(), 1);
    }
}
