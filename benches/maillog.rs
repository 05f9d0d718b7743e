//! What reading a mail log costs per line (issue 24's target: 1,000,000 Postfix lines a second
//! or more on one core, parsing into built events), on the corpus in `tests/data/maillog/`
//! (the lines a real Postfix wrote in the CI scenarios, and the hand-picked rare ones).
//!
//! Three benchmarks, each over the whole corpus, counted in lines:
//! - `postfix_parse`: `ingest::maillog::postfix::parse` alone, on records already framed;
//! - `postfix_parse_build`: that, then the event object of each parse built by
//!   `EventBuilder::build` (its JSON, match view and search text), as the mail-log format does
//!   it, without the correlator's span keys;
//! - `parse_chunk`: whole lines through `ingest::lines::parse_chunk` with the `MailLog` format:
//!   framing, parsing, correlating and building, as a followed log file's chunks go.
//!
//! `cargo bench --bench maillog -- --test` runs each once as a smoke test.

use criterion::{criterion_group, Criterion, Throughput};
use livetap::event::{Catalogue, EventBuilder, RawValue};
use livetap::ingest::lines::parse_chunk;
use livetap::ingest::maillog::format::{Framing, MailLog};
use livetap::ingest::maillog::{frame, postfix, LogRecord, Parsed, Val};
use std::borrow::Cow;
use std::hint::black_box;

/// `now` for the builder and the framing: the corpus's day.
const NOW: i64 = 1_796_652_532;

/// The corpus, real lines first.
fn corpus() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/maillog/");
    ["postfix-real.log", "postfix-rare.log"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{dir}{f}")).expect("the corpus"))
        .collect()
}

/// Cuts a corpus line's framing with the sources' framing (`maillog::frame`), so
/// `postfix_parse` measures the parser alone.
fn record(line: &str) -> LogRecord<'_> {
    frame::parse_line(line, &frame::Clock { now: NOW, utc_offset: 0 }).expect("a framed corpus line")
}

/// The event object of a parse, shaped as the mail-log format shapes it.
fn event<'a>(p: &Parsed<'a>) -> RawValue<'a> {
    let data = p
        .fields
        .iter()
        .map(|&(k, v)| {
            let v = match v {
                Val::Str(s) => RawValue::Str(Cow::Borrowed(s)),
                Val::Int(i) => RawValue::Int(i),
                Val::Bool(b) => RawValue::Bool(b),
            };
            (Cow::Borrowed(k), v)
        })
        .collect();
    let mut top = vec![
        (Cow::Borrowed("type"), RawValue::Str(Cow::Borrowed(p.ty))),
        (Cow::Borrowed("createdAt"), RawValue::Int(NOW)),
        (Cow::Borrowed("data"), RawValue::Object(data)),
    ];
    if let Some(level) = p.level {
        top.push((Cow::Borrowed("level"), RawValue::Str(Cow::Borrowed(level.as_str()))));
    }
    RawValue::Object(top)
}

fn maillog(c: &mut Criterion) {
    let text = corpus();
    let records: Vec<LogRecord<'_>> = text.lines().map(record).collect();
    let lines = records.len() as u64;
    let (catalogue, keys) = Catalogue::with_keys(1024);
    let mut builder = EventBuilder::new(&catalogue, &keys);
    // Every parsed line builds (the smoke run checks it).
    for r in &records {
        builder.build(&event(&postfix::parse(r)), NOW).expect("an event");
    }

    let mut g = c.benchmark_group("maillog");
    g.throughput(Throughput::Elements(lines));
    g.bench_function("postfix_parse", |b| {
        b.iter(|| {
            for r in &records {
                black_box(postfix::parse(black_box(r)));
            }
        })
    });
    g.bench_function("postfix_parse_build", |b| {
        b.iter(|| {
            for r in &records {
                black_box(builder.build(&event(&postfix::parse(r)), NOW).unwrap());
            }
        })
    });
    let format = MailLog::new(Framing::Text, 0);
    let mut chunk = text.clone().into_bytes();
    g.bench_function("parse_chunk", |b| {
        b.iter(|| {
            // The format may rewrite a line in place (a journal entry's escapes), so each
            // round starts from the corpus again; the copy is a memcpy of 30 KB.
            chunk.copy_from_slice(text.as_bytes());
            black_box(parse_chunk(&format, &mut chunk, 1, 1 << 16, &mut builder, NOW))
        })
    });
    g.finish();
}

criterion_group!(benches, maillog);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
