//! The line-format hook: how one line of a byte stream becomes events, and NDJSON, its first
//! format.
//!
//! A byte-stream source frames its input into lines and runs them through the stream stage
//! (`ingest::stage`), which parses chunks of complete lines on the parse threads. Inside a
//! chunk every line goes to the source's [`LineFormat`], which adds what it makes of the line
//! to the chunk's [`ParsedBatch`]: events built with the hub's one [`EventBuilder`], metric
//! records, or a rejection carrying the line's number. The format is a type parameter of the
//! chunk loop, so the call per line is static and can be inlined; nothing is dispatched
//! dynamically per line. Like every parser here, a format does no I/O and no async.

use super::{trim_mut, ParsedBatch};
use crate::event::{EventBuilder, Tape};

/// How the lines of one kind of byte stream become events.
///
/// The stage owns what is common to every stream: finding lines, numbering them, rejecting
/// lines longer than `max-line-bytes`, and parsing chunks in parallel and publishing them in
/// order. A format sees one line at a time, without its newline, and adds events
/// ([`ParsedBatch::push_built`]) or a rejection ([`ParsedBatch::reject`]) for it; a line it
/// adds nothing for (a blank line, say) is skipped. [`Ndjson`] is the first format. A Postfix
/// log format would be another: its `parse_line` would cut a line such as
/// `Mar  1 12:00:00 mx postfix/smtpd[812]: 4F2A1C0: client=mail.example.org[192.0.2.7]` into
/// its program, queue id and `key=value` pairs, put an event type and those pairs as `data`
/// into a [`crate::event::RawValue`] object borrowing the line's text, hand that object to
/// [`ParsedBatch::push_built`], and reject the lines it does not recognise; its source would
/// read the log and call `stage::run_stream` with it, with no change to the stage.
///
/// A format is cloned into each chunk's parse job, so a format holding configuration should
/// keep it behind an `Arc`; what a format reuses from line to line (buffers, a token tape)
/// is its [`LineFormat::Scratch`], made once per chunk on the thread that parses it.
pub trait LineFormat: Clone + Send + 'static {
    /// Per-chunk working space, reused for every line of the chunk (`()` if none is needed).
    type Scratch: Default;

    /// True when a line's meaning depends on the lines before it (a mail log's queue ids and
    /// sessions), so the stage parses one chunk at a time, in order, instead of several in
    /// parallel. Such a format keeps its state behind an `Arc` shared by its clones.
    const SEQUENTIAL: bool = false;

    /// Adds what line number `number` (1-based, counted over the whole stream) holds to `out`.
    /// `line` has no newline and is at most `max-line-bytes` long; it may be modified in
    /// place. `now` is the time to give events that carry none.
    fn parse_line(
        &self,
        scratch: &mut Self::Scratch,
        line: &mut [u8],
        number: usize,
        b: &mut EventBuilder<'_>,
        now: i64,
        out: &mut ParsedBatch,
    );
}

/// Newline-delimited JSON: each line is an event object, a Stalwart webhook batch
/// (`{"events":[...]}`) or a metric record (`{"metric":...}`); blank lines are skipped and
/// surrounding white space is ignored. This is the Unix socket's format, and the line loop of
/// [`super::parse_ndjson`] and its siblings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ndjson;

impl LineFormat for Ndjson {
    /// One tape per chunk: its buffers grow to the chunk's longest line and are reused.
    type Scratch = Tape;

    #[inline]
    fn parse_line(
        &self,
        tape: &mut Tape,
        line: &mut [u8],
        number: usize,
        b: &mut EventBuilder<'_>,
        now: i64,
        out: &mut ParsedBatch,
    ) {
        let line = trim_mut(line);
        if line.is_empty() {
            return;
        }
        out.add_document(tape, line, number, b, now);
    }
}

/// Parses a chunk of complete lines of a stream with `format`, numbering them from
/// `first_line` and rejecting any longer than `max_line` bytes. Metric records are accepted
/// (the stage applies them once the chunk's events are published). With [`Ndjson`] this is
/// exactly [`super::parse_ndjson_records`] with a line cap.
pub fn parse_chunk<F: LineFormat>(
    format: &F,
    chunk: &mut [u8],
    first_line: usize,
    max_line: usize,
    b: &mut EventBuilder<'_>,
    now: i64,
) -> ParsedBatch {
    let mut out = ParsedBatch { accept_records: true, ..ParsedBatch::default() };
    parse_lines_into(format, &mut out, chunk, first_line, Some(max_line), b, now);
    out
}

/// The one line loop: every line of `body` (the last may lack its newline) goes to `format`
/// with its number, unless it is longer than `max_line`, until the batch's event cap is
/// reached.
pub(super) fn parse_lines_into<F: LineFormat>(
    format: &F,
    out: &mut ParsedBatch,
    body: &mut [u8],
    first_line: usize,
    max_line: Option<usize>,
    b: &mut EventBuilder<'_>,
    now: i64,
) {
    let mut scratch = F::Scratch::default();
    // Lines are found with memchr (vectorised) rather than a byte-by-byte split.
    let mut rest: &mut [u8] = body;
    let mut i = 0usize;
    while !rest.is_empty() && !out.full() {
        let (line, tail) = match memchr::memchr(b'\n', rest) {
            Some(at) => {
                let (l, t) = std::mem::take(&mut rest).split_at_mut(at);
                (l, &mut t[1..])
            }
            None => (std::mem::take(&mut rest), &mut [][..]),
        };
        rest = tail;
        i += 1;
        let i = i - 1;
        if let Some(max) = max_line.filter(|&m| line.len() > m) {
            out.reject(first_line + i, format!("line longer than {max} bytes"));
            continue;
        }
        format.parse_line(&mut scratch, line, first_line + i, b, now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, RawValue};
    use crate::ingest::parse_ndjson_records;

    /// A stream's NDJSON chunks parse as `parse_ndjson_records` with a line cap, the socket's
    /// entry point before the stage existed: the same events, metric records and errors,
    /// numbered from the chunk's first line.
    #[test]
    fn ndjson_chunks_parse_as_parse_ndjson_records_did() {
        let (c, k) = Catalogue::with_keys(1024);
        let bodies = [
            "{\"type\":\"auth.success\"}\n\n{\"type\":\n{\"data\":{}}\r\n  {\"type\":\"auth.failed\"}  \n"
                .to_string(),
            "[{\"type\":\"a.b\"}]\n{\"events\":[{\"type\":\"a.b\"},{\"nope\":1}]}\n".to_string(),
            format!(
                "{}\n{}\n{{\"type\":\"a.b\",\"data\":{{\"s\":\"{}\"}}}}\n{{\"type\":\"c.d\"}}",
                r#"{"metric":"queue.count","type":"gauge","value":12}"#,
                r#"{"metric":"queue.count","value":"x"}"#,
                "y".repeat(300)
            ),
            "\n\n   \n".to_string(),
        ];
        for body in bodies {
            for (first, max) in [(1, 1 << 20), (41, 64), (7, 200)] {
                let mut b = EventBuilder::new(&c, &k).with_max_bytes(400);
                let old = parse_ndjson_records(&mut body.clone().into_bytes(), first, Some(max), &mut b, 5);
                let new = parse_chunk(&Ndjson, &mut body.clone().into_bytes(), first, max, &mut b, 5);
                let json = |p: &ParsedBatch| p.events.iter().map(|e| e.json.clone()).collect::<Vec<_>>();
                assert_eq!(json(&old), json(&new), "{body:?}");
                assert_eq!((&old.errors, old.rejected), (&new.errors, new.rejected), "{body:?}");
                let samples =
                    |p: &ParsedBatch| p.samples.iter().map(|(l, r)| (*l, r.name.clone())).collect::<Vec<_>>();
                assert_eq!(samples(&old), samples(&new), "{body:?}");
            }
        }
    }

    /// A format that is not JSON: `word` becomes an event of type `word.seen`, and a line
    /// starting with `!` is rejected.
    #[derive(Clone)]
    struct Words;

    impl LineFormat for Words {
        type Scratch = usize;

        fn parse_line(
            &self,
            seen: &mut usize,
            line: &mut [u8],
            number: usize,
            b: &mut EventBuilder<'_>,
            now: i64,
            out: &mut ParsedBatch,
        ) {
            *seen += 1;
            let Ok(word) = std::str::from_utf8(line) else { return out.reject(number, "not UTF-8") };
            if word.starts_with('!') {
                return out.reject(number, "shouted");
            }
            let ty = format!("{word}.seen");
            let n = RawValue::Int(*seen as i64);
            let data = RawValue::Object(vec![("n".into(), n)]);
            let raw =
                RawValue::Object(vec![("type".into(), RawValue::Str(ty.into())), ("data".into(), data)]);
            out.push_built(&raw, number, b, now);
        }
    }

    #[test]
    fn a_format_sees_each_line_with_its_number_and_the_cap_applies() {
        let (c, k) = Catalogue::with_keys(1024);
        let mut b = EventBuilder::new(&c, &k);
        let mut body = format!("auth\n!no\n{}\nsmtp", "x".repeat(50)).into_bytes();
        let p = parse_chunk(&Words, &mut body, 10, 20, &mut b, 0);
        let types: Vec<_> = p.events.iter().map(|e| String::from(&*e.kind)).collect();
        assert_eq!(types, ["auth.seen", "smtp.seen"]);
        let errors: Vec<_> = p.errors.iter().map(|e| (e.line, e.reason.as_str())).collect();
        assert_eq!(errors, [(11, "shouted"), (12, "line longer than 20 bytes")]);
        // The scratch lives for the chunk: the second event is the third line the format saw.
        let n = |i: usize| {
            let raw: serde_json::Value = serde_json::from_slice(&p.events[i].json).unwrap();
            raw["data"]["n"].clone()
        };
        assert_eq!((n(0), n(1)), (serde_json::json!(1), serde_json::json!(3)));
    }
}
