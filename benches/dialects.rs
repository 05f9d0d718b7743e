//! What a second wire dialect costs: an event serialised in Stalwart's classic form at ingest,
//! and the same event encoded in Stalwart v0.16's form for `/api/live/tracing`.
//!
//! Two groups, the same four benchmarks each: `one` on a single realistic Stalwart session
//! event (an SMTP `RCPT TO` with its span's keys, as Stalwart's webhook sends it), `mix_1000`
//! on the demo generator's first 1,000 events (every family, lists, nested errors):
//! - `classic_build`: `EventBuilder::build` from an already parsed tape, as ingest does; the
//!   classic form is written there, with the match view (canonical values, search text);
//! - `v016_array`: encoding the built event in the v0.16 form the web UI reads, exactly as the
//!   first stream of that dialect makes `Event::wire_in` do it (`dialect::encode_wire`: the
//!   thread's scratch buffer, the leading comma, the encoder, one exact-size copy);
//! - `v016_object`: the same in Stalwart's index-keyed object form;
//! - `both`: build, then v0.16 encoding: an event sent in both dialects.
//!
//! The targets (issue 23): `v016_array` no more than `classic_build`; `both` at most twice
//! `classic_build`. `cargo bench --bench dialects -- --test` runs each once as a smoke test.

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use livetap::event::v016::{KeyValues, V016};
use livetap::event::{Catalogue, Event, EventBuilder, Tape};
use livetap::ingest::demo::DemoGenerator;
use std::hint::black_box;

/// `now` for the builder: every event carries its own `createdAt`.
const NOW: i64 = 1_777_629_600;

/// One event as Stalwart's webhook sends it: the event's keys, then its span's.
const RCPT_TO: &[u8] = br#"{"id":"17776296001234567","createdAt":"2026-05-01T10:00:00Z","type":"smtp.rcpt-to","data":{"spanId":7349281165203894272,"to":"alice@example.org","result":"250 2.1.5 Recipient accepted","elapsed":3,"listenerId":"smtp","localPort":25,"remoteIp":"203.0.113.9","remotePort":51234,"hostname":"mx1.example.net"}}"#;

/// What `Event::wire_in` does the first time a stream asks for the dialect.
#[inline]
fn wire_in(enc: &V016, ev: &Event) -> Bytes {
    livetap::event::dialect::encode_wire(enc, ev)
}

fn four<M: criterion::measurement::Measurement>(
    g: &mut BenchmarkGroup<'_, M>,
    catalogue: &Catalogue,
    keys: &livetap::event::KeyRegistry,
    inputs: &[Vec<u8>],
) {
    let (array, object) = (
        V016::from_catalogue(KeyValues::Array, catalogue),
        V016::from_catalogue(KeyValues::Object, catalogue),
    );
    let mut builder = EventBuilder::new(catalogue, keys);
    let mut tapes: Vec<Tape> = inputs.iter().map(|_| Tape::new()).collect();
    let raws: Vec<_> =
        tapes.iter_mut().zip(inputs).map(|(t, src)| t.parse(src).expect("valid JSON")).collect();
    let built: Vec<Event> = raws.iter().map(|r| builder.build(*r, NOW).expect("an event")).collect();
    g.bench_function("classic_build", |b| {
        b.iter(|| {
            for r in &raws {
                black_box(builder.build(*r, NOW).unwrap());
            }
        })
    });
    g.bench_function("v016_array", |b| {
        b.iter(|| {
            for ev in &built {
                black_box(wire_in(&array, ev));
            }
        })
    });
    g.bench_function("v016_object", |b| {
        b.iter(|| {
            for ev in &built {
                black_box(wire_in(&object, ev));
            }
        })
    });
    g.bench_function("both", |b| {
        b.iter(|| {
            for r in &raws {
                let ev = builder.build(*r, NOW).unwrap();
                black_box(wire_in(&array, &ev));
                black_box(ev);
            }
        })
    });
}

fn dialects(c: &mut Criterion) {
    let (catalogue, keys) = Catalogue::with_keys(1024);
    let mut g = c.benchmark_group("dialects/one");
    g.throughput(Throughput::Elements(1));
    four(&mut g, &catalogue, &keys, &[RCPT_TO.to_vec()]);
    g.finish();

    let mut gen = DemoGenerator::new(0x5eed);
    let mix: Vec<Vec<u8>> = (0..1000).map(|_| gen.ndjson_line(NOW).into_bytes()).collect();
    let mut g = c.benchmark_group("dialects/mix_1000");
    g.throughput(Throughput::Elements(mix.len() as u64));
    four(&mut g, &catalogue, &keys, &mix);
    g.finish();
}

criterion_group!(benches, dialects);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
