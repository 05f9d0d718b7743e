//! Fuzz target `maillog_line`: the mail-log line parsers on raw bytes. The input's first line
//! is a record's program and the rest its message, given to `postfix::parse` and
//! `dovecot::parse`; the whole input is also a chunk of log lines through
//! `ingest::lines::parse_chunk` with the `MailLog` format, in both framings, and as a body of
//! Dovecot's event exporter (`maillog::exporter::parse_body`). Nothing may panic, a parse
//! keeps to its key cap, and Postfix's keys borrow from the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livetap::event::{Catalogue, EventBuilder, KeyRegistry};
use livetap::ingest::lines::parse_chunk;
use livetap::ingest::maillog::format::{Framing, MailLog};
use livetap::ingest::maillog::{dovecot, exporter, postfix, LogRecord, Opens, Parsed, Val, MAX_FIELDS};
use std::sync::OnceLock;

/// One catalogue and key registry per process, as the hub has.
fn setup() -> &'static (Catalogue, KeyRegistry) {
    static SETUP: OnceLock<(Catalogue, KeyRegistry)> = OnceLock::new();
    SETUP.get_or_init(|| Catalogue::with_keys(1024))
}

/// True when `inner` lies within `outer`'s memory.
fn within(inner: &str, outer: &str) -> bool {
    let (i, o) = (inner.as_ptr() as usize, outer.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// What any parse must hold.
fn check(rec: &LogRecord<'_>, p: &Parsed<'_>, borrowed: bool) {
    assert!(!p.ty.is_empty());
    assert!(p.fields.len() <= MAX_FIELDS);
    if borrowed {
        for (k, v) in &p.fields {
            if let Val::Str(s) = v {
                assert!(!s.is_empty(), "{k} is empty");
                assert!(within(s, rec.message) || within(s, rec.program), "{k}={s:?} is not from the record");
            }
        }
        if p.opens == Opens::Message || p.child_queue_id.is_some() {
            assert!(p.queue_id.is_some());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (program, message) = text.split_once('\n').unwrap_or(("postfix/smtpd", &text));
    let rec = LogRecord { time: None, host: "mx", program, pid: Some(1), message };
    check(&rec, &postfix::parse(&rec), true);
    check(&rec, &dovecot::parse(&rec), false);

    let (catalogue, keys) = setup();
    for framing in [Framing::Text, Framing::Journal] {
        let mut chunk = data.to_vec();
        let lines = chunk.split(|&b| b == b'\n').count();
        let mut builder = EventBuilder::new(catalogue, keys).with_max_bytes(4096);
        let out = parse_chunk(&MailLog::new(framing, 3600), &mut chunk, 1, 4096, &mut builder, 1_796_652_532);
        assert!(out.events.len() + out.rejected <= lines);
    }
    // An exporter body is one JSON event: it is accepted as at most `max_events` events or
    // refused with a reason, never a panic.
    let mut builder = EventBuilder::new(catalogue, keys).with_max_bytes(4096);
    if let Ok(out) = exporter::parse_body(data, &mut builder, 1_796_652_532, 4) {
        assert!(out.events.len() <= 4);
    }
});
