//! Cutting a Stalwart webhook body (`{"events":[…]}`) into its events while it arrives, chunk by chunk, without ever holding the whole body.
//!
//! Stalwart's webhook sender puts everything pending into one POST, with no size cap, and
//! after a refusal resends the same events merged with everything newer (see
//! `../shared/spec/stalwart-v016.md` §5). A body can therefore be hundreds of megabytes, and
//! the webhook endpoint must take it at the memory cost of one event. [`BatchSplitter`] is fed
//! the body's chunks as they come; it follows only the document's structure (strings with
//! their escapes, and nesting) and hands each complete element of the `events` array to its
//! caller, who parses it strictly. It keeps at most one element's bytes between chunks (an
//! element that spans chunks), and none of an element longer than its limit, which it
//! reports instead. No I/O, no allocation per element beyond that carry buffer.

use memchr::memchr2;

/// Why a body is not a batch of events, found at some point of the scan. Elements handed out
/// before the error stand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamSplitError {
    /// The body is not a JSON object.
    #[error("expected an object {{\"events\": [...]}}")]
    NotABatch,
    /// A byte that the structure does not allow at this point.
    #[error("malformed JSON after event {after}: expected {expected}")]
    Malformed {
        /// Events completed before the error.
        after: usize,
        /// What was expected there.
        expected: &'static str,
    },
    /// The body ended inside the document.
    #[error("the body ends inside the document (after event {0})")]
    Unterminated(usize),
    /// An object body without an `events` array.
    #[error("expected an object {{\"events\": [...]}}: no \"events\" array")]
    NoEvents,
}

/// One element of the `events` array.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete element's bytes; `index` counts from 0.
    Element {
        /// Position in the array.
        index: usize,
        /// The element's JSON text.
        bytes: &'a [u8],
    },
    /// An element longer than the limit, skipped without being kept.
    TooLong {
        /// Position in the array.
        index: usize,
    },
}

/// Where the scan is in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the document.
    Start,
    /// In the top-level object, before a member (or its closing brace).
    Key,
    /// Inside a member name.
    KeyText,
    /// After a member name, before the colon.
    Colon,
    /// After the colon, before the value.
    MemberValue,
    /// Inside a member value that is not the events array.
    SkipValue,
    /// After a member value: a comma or the closing brace.
    AfterMember,
    /// After the array's opening bracket: an element or the closing bracket.
    Elements,
    /// After a comma in the array: an element.
    ElementNext,
    /// Inside an element.
    Element,
    /// After an element: a comma or the closing bracket.
    AfterElement,
    /// After the whole document: only white space.
    End,
}

/// The structure of one JSON value being scanned across chunks.
#[derive(Debug, Clone, Copy, Default)]
struct ValueScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A number or a literal: it ends at the first delimiter.
    scalar: bool,
}

impl ValueScan {
    fn new(first: u8) -> ValueScan {
        ValueScan { scalar: !matches!(first, b'{' | b'[' | b'"'), ..ValueScan::default() }
    }

    /// Scans `b`, which continues the value. Returns how many bytes of `b` belong to the value
    /// when it ends within `b`, or `None` when all of `b` does and the value goes on.
    fn scan(&mut self, b: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < b.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                // Strings are most of a mail event's bytes: find their end with a vectorised
                // search instead of a byte at a time.
                let p = memchr2(b'"', b'\\', &b[i..])?;
                i += p;
                if b[i] == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                i += 1;
                continue;
            }
            if self.scalar {
                if matches!(b[i], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                    return Some(i);
                }
                i += 1;
                continue;
            }
            match b[i] {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        None
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The longest member name kept while looking for `events`.
const MAX_KEY: usize = 16;

/// Splits a webhook body into its events as it arrives (see the module docs).
#[derive(Debug)]
pub struct BatchSplitter {
    state: State,
    /// The bytes of an element that spans chunks, or of a member name.
    carry: Vec<u8>,
    value: ValueScan,
    /// Elements completed so far.
    index: usize,
    /// Longest element kept; a longer one is reported as [`Piece::TooLong`].
    max_element: usize,
    /// The current element passed `max_element`: its bytes are no longer kept.
    too_long: bool,
    /// The member whose value comes next is `events`.
    events_member: bool,
    seen_events: bool,
}

impl BatchSplitter {
    /// A splitter that keeps elements of up to `max_element` bytes.
    pub fn new(max_element: usize) -> BatchSplitter {
        BatchSplitter {
            state: State::Start,
            carry: Vec::new(),
            value: ValueScan::default(),
            index: 0,
            max_element,
            too_long: false,
            events_member: false,
            seen_events: false,
        }
    }

    /// Elements completed so far.
    pub fn elements(&self) -> usize {
        self.index
    }

    /// Bytes kept between chunks (for memory accounting and tests).
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    fn malformed(&self, expected: &'static str) -> StreamSplitError {
        StreamSplitError::Malformed { after: self.index, expected }
    }

    /// Scans the next `chunk` of the body, calling `out` for every element it completes.
    pub fn feed(&mut self, chunk: &[u8], mut out: impl FnMut(Piece<'_>)) -> Result<(), StreamSplitError> {
        let mut i = 0;
        // Where the current element started in this chunk, when it did: an element that starts
        // and ends in the same chunk is handed out from the chunk itself, without a copy.
        let mut started_here: Option<usize> = None;
        while i < chunk.len() {
            let c = chunk[i];
            match self.state {
                State::Start => match c {
                    c if is_ws(c) => i += 1,
                    b'{' => {
                        self.state = State::Key;
                        i += 1;
                    }
                    _ => return Err(StreamSplitError::NotABatch),
                },
                State::Key => match c {
                    c if is_ws(c) => i += 1,
                    b'"' => {
                        self.carry.clear();
                        self.value = ValueScan { in_string: true, ..ValueScan::default() };
                        self.state = State::KeyText;
                        i += 1;
                    }
                    b'}' => {
                        self.state = State::End;
                        i += 1;
                    }
                    _ => return Err(self.malformed("a member name")),
                },
                State::KeyText => {
                    let rest = &chunk[i..];
                    let (n, done) = match self.value.scan(rest) {
                        Some(n) => (n, true),
                        None => (rest.len(), false),
                    };
                    if self.carry.len() + n <= MAX_KEY + 1 {
                        self.carry.extend_from_slice(&rest[..n]);
                    } else {
                        // Too long to be `events`: remember only that it is not.
                        self.carry.clear();
                        self.carry.extend_from_slice(b"\x00");
                    }
                    i += n;
                    if done {
                        // The closing quote is the last byte kept.
                        self.events_member = self.carry == b"events\"";
                        self.state = State::Colon;
                    }
                }
                State::Colon => match c {
                    c if is_ws(c) => i += 1,
                    b':' => {
                        self.state = State::MemberValue;
                        i += 1;
                    }
                    _ => return Err(self.malformed("`:` after a member name")),
                },
                State::MemberValue => match c {
                    c if is_ws(c) => i += 1,
                    b'[' if self.events_member && !self.seen_events => {
                        self.seen_events = true;
                        self.state = State::Elements;
                        i += 1;
                    }
                    b',' | b'}' | b']' | b':' => return Err(self.malformed("a value")),
                    c => {
                        self.value = ValueScan::new(c);
                        self.state = State::SkipValue;
                    }
                },
                State::SkipValue => match self.value.scan(&chunk[i..]) {
                    Some(n) => {
                        i += n;
                        self.state = State::AfterMember;
                    }
                    None => i = chunk.len(),
                },
                State::AfterMember => match c {
                    c if is_ws(c) => i += 1,
                    b',' => {
                        self.state = State::Key;
                        i += 1;
                    }
                    b'}' => {
                        self.state = State::End;
                        i += 1;
                    }
                    _ => return Err(self.malformed("`,` or `}` after a member")),
                },
                State::Elements | State::ElementNext => match c {
                    c if is_ws(c) => i += 1,
                    b']' if self.state == State::Elements => {
                        i += 1;
                        self.after_array();
                    }
                    b',' | b']' | b'}' | b':' => return Err(self.malformed("an event")),
                    c => {
                        self.value = ValueScan::new(c);
                        self.carry.clear();
                        self.too_long = false;
                        started_here = Some(i);
                        self.state = State::Element;
                    }
                },
                State::Element => {
                    let rest = &chunk[i..];
                    let end = self.value.scan(rest);
                    let n = end.unwrap_or(rest.len());
                    let index = self.index;
                    match (end, started_here) {
                        // Whole in this chunk: hand out the chunk's own bytes.
                        (Some(_), Some(s)) if i + n - s <= self.max_element => {
                            out(Piece::Element { index, bytes: &chunk[s..i + n] });
                        }
                        (Some(_), Some(_)) => out(Piece::TooLong { index }),
                        // Spanning chunks: kept in `carry` up to the limit.
                        (_, _) => {
                            let from = started_here.unwrap_or(i);
                            if !self.too_long && self.carry.len() + (i + n - from) <= self.max_element {
                                self.carry.extend_from_slice(&chunk[from..i + n]);
                            } else {
                                self.too_long = true;
                                self.carry = Vec::new();
                            }
                            if end.is_some() {
                                if self.too_long {
                                    out(Piece::TooLong { index });
                                } else {
                                    out(Piece::Element { index, bytes: &self.carry });
                                }
                                self.carry.clear();
                            }
                        }
                    }
                    started_here = None;
                    i += n;
                    if end.is_some() {
                        self.index += 1;
                        self.too_long = false;
                        self.state = State::AfterElement;
                    }
                }
                State::AfterElement => match c {
                    c if is_ws(c) => i += 1,
                    b',' => {
                        self.state = State::ElementNext;
                        i += 1;
                    }
                    b']' => {
                        i += 1;
                        self.after_array();
                    }
                    _ => return Err(self.malformed("`,` or `]` after an event")),
                },
                State::End => {
                    if !is_ws(c) {
                        return Err(self.malformed("nothing after the document"));
                    }
                    i += 1;
                }
            }
        }
        Ok(())
    }

    fn after_array(&mut self) {
        self.state = State::AfterMember;
    }

    /// Checks that the body ended where a document may end.
    pub fn finish(&self) -> Result<(), StreamSplitError> {
        match self.state {
            State::End if self.seen_events => Ok(()),
            State::End => Err(StreamSplitError::NoEvents),
            State::Start => Err(StreamSplitError::NotABatch),
            _ => Err(StreamSplitError::Unterminated(self.index)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `doc` fed in chunks of `size` bytes; elements as strings, `#` for a too-long one.
    fn split(doc: &[u8], size: usize, max: usize) -> (Vec<String>, Result<(), StreamSplitError>) {
        let mut s = BatchSplitter::new(max);
        let mut got = Vec::new();
        for chunk in doc.chunks(size.max(1)) {
            let r = s.feed(chunk, |p| match p {
                Piece::Element { index, bytes } => {
                    assert_eq!(index, got.len());
                    got.push(String::from_utf8(bytes.to_vec()).unwrap());
                }
                Piece::TooLong { index } => {
                    assert_eq!(index, got.len());
                    got.push("#".into());
                }
            });
            if let Err(e) = r {
                return (got, Err(e));
            }
            assert!(s.carried() <= max, "carry bounded");
        }
        let end = s.finish();
        (got, end)
    }

    #[test]
    fn elements_come_out_whatever_the_chunking() {
        let doc = br#" {"meta":{"a":[1,"]}"]},"events" : [ {"type":"a.b","data":{"s":"x\"],}"}} ,{"type":"c"},7,"str",[1,[2]] ],"tail":null } "#;
        let want =
            vec![r#"{"type":"a.b","data":{"s":"x\"],}"}}"#, r#"{"type":"c"}"#, "7", r#""str""#, "[1,[2]]"];
        for size in 1..doc.len() + 1 {
            let (got, end) = split(doc, size, 1000);
            assert_eq!(got, want, "chunk size {size}");
            assert_eq!(end, Ok(()), "chunk size {size}");
        }
        let (got, end) = split(br#"[{"type":"a"}, {"type":"b"}]"#, 3, 100);
        assert_eq!((got.len(), end), (0, Err(StreamSplitError::NotABatch)));
        let (got, end) = split(br#"{"events":[]}"#, 2, 100);
        assert!(got.is_empty());
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn long_elements_are_reported_not_kept() {
        let big = format!(r#"{{"type":"x","data":{{"s":"{}"}}}}"#, "y".repeat(500));
        let doc = format!(r#"{{"events":[{{"type":"a"}},{big},{{"type":"b"}}]}}"#);
        for size in [1, 7, 64, 4096] {
            let (got, end) = split(doc.as_bytes(), size, 100);
            assert_eq!(got, vec![r#"{"type":"a"}"#, "#", r#"{"type":"b"}"#], "chunk size {size}");
            assert_eq!(end, Ok(()));
        }
    }

    #[test]
    fn malformed_bodies_end_with_a_reason_and_earlier_events_stand() {
        let cases: &[(&[u8], usize, StreamSplitError)] = &[
            (b"x", 0, StreamSplitError::NotABatch),
            (b"", 0, StreamSplitError::NotABatch),
            (
                br#"{"events":[{"type":"a"} {"type":"b"}]}"#,
                1,
                StreamSplitError::Malformed { after: 1, expected: "`,` or `]` after an event" },
            ),
            (br#"{"events":[{"type":"a"},"#, 1, StreamSplitError::Unterminated(1)),
            (br#"{"events":[{"type":"a"}]"#, 1, StreamSplitError::Unterminated(1)),
            (
                br#"{"events":[{"type":"a"}]} x"#,
                1,
                StreamSplitError::Malformed { after: 1, expected: "nothing after the document" },
            ),
            (br#"{"other":[1]}"#, 0, StreamSplitError::NoEvents),
            (br#"{"events":[,]}"#, 0, StreamSplitError::Malformed { after: 0, expected: "an event" }),
            (br#"{"events":[1,]}"#, 1, StreamSplitError::Malformed { after: 1, expected: "an event" }),
            (
                br#"{"events" [1]}"#,
                0,
                StreamSplitError::Malformed { after: 0, expected: "`:` after a member name" },
            ),
            (br#"{5:1}"#, 0, StreamSplitError::Malformed { after: 0, expected: "a member name" }),
        ];
        for (doc, n, want) in cases {
            for size in [1, 3, 100] {
                let (got, end) = split(doc, size, 100);
                assert_eq!(got.len(), *n, "{:?}", String::from_utf8_lossy(doc));
                assert_eq!(end.unwrap_err(), *want, "{:?}", String::from_utf8_lossy(doc));
            }
        }
    }

    #[test]
    fn a_second_events_member_is_skipped_and_long_names_are_not_events() {
        let (got, end) = split(br#"{"events":[1],"events":[2]}"#, 4, 100);
        assert_eq!((got, end), (vec!["1".to_string()], Ok(())));
        let (got, end) = split(br#"{"eventseventsevents":[1],"events":[2]}"#, 4, 100);
        assert_eq!((got, end), (vec!["2".to_string()], Ok(())));
    }

    #[test]
    fn random_chunkings_agree_with_the_whole_body_split() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut demo = crate::ingest::demo::DemoGenerator::new(1);
        let events: Vec<String> = (0..300).map(|i| demo.ndjson_line(1_790_000_000 + i)).collect();
        let doc = format!("{{\"events\":[{}]}}", events.join(","));
        for _ in 0..50 {
            let mut s = BatchSplitter::new(1 << 20);
            let mut got = Vec::new();
            let mut at = 0;
            while at < doc.len() {
                let n = rng.usize(1..2000).min(doc.len() - at);
                s.feed(&doc.as_bytes()[at..at + n], |p| {
                    if let Piece::Element { bytes, .. } = p {
                        got.push(String::from_utf8(bytes.to_vec()).unwrap());
                    }
                })
                .unwrap();
                at += n;
            }
            s.finish().unwrap();
            assert_eq!(got, events);
        }
    }
}
