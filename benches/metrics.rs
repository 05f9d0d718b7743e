//! What live metrics cost ingest: counting events by type (and recording the histograms their
//! measures feed) next to ingesting the same events.
//!
//! One group on the same 1,000 realistic NDJSON lines from the demo generator:
//! - `parse_ndjson_1000`: the ingest entry point alone;
//! - `ingest_1000`: the same, then one pass over the events reading each one's keys, the least
//!   a matcher thread does with every event (its index probes each key value);
//! - `ingest_1000_counted`: the same pass also counting each event, as the matcher threads do
//!   (the counting thread reads the event it is about to match, so it counts a warm event);
//! - `count_only_1000`: counting the already built events alone.
//!
//! `ingest_1000_counted` against `ingest_1000` is the cost of counting. Counting a whole body
//! in a second pass after parsing it would instead pay cache misses re-reading 1,000 events
//! that no longer fit the core's cache, which livetap never does (`perf/RESULTS.md` section 6).
//! A 1 % difference is within the drift of two benchmarks measured one after the other on a
//! shared machine, so the pair is also timed interleaved before the group (rounds in A-B-B-A
//! order, medians over the rounds) and printed as `metrics/interleaved`.
//!
//! For deterministic instruction counts under callgrind, `LIVETAP_METRICS_MODE=parse` or
//! `counted` with `LIVETAP_METRICS_ITERS=N` runs N bodies of `ingest_1000` or
//! `ingest_1000_counted` and exits (the commands are in `perf/RESULTS.md`).
//! `cargo bench --bench metrics -- --test` runs each benchmark once as a smoke test.

use criterion::{criterion_group, Criterion, Throughput};
use livetap::event::{Catalogue, Event, EventBuilder, KeyRegistry};
use livetap::ingest::demo::DemoGenerator;
use livetap::ingest::parse_ndjson;
use livetap::metrics::query::NameFilter;
use livetap::metrics::{EventCounter, MetricsRegistry, Reading};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `now` for the generator and the builder: every line carries its own `createdAt`.
const NOW: i64 = 1_777_629_600;
const LINES: usize = 1000;

/// The demo generator's first `LINES` events as one NDJSON body.
fn body() -> Vec<u8> {
    let mut gen = DemoGenerator::new(0x5eed);
    (0..LINES).map(|_| gen.ndjson_line(NOW)).collect::<Vec<_>>().join("\n").into_bytes()
}

/// A matcher thread's least work per event: reading its type and every key value.
#[inline]
fn read(ev: &Event) -> usize {
    ev.kind.len() + ev.fields().map(|(k, v)| usize::from(k) + v.len()).sum::<usize>()
}

/// One ingest of `body`: parse it into `work`, then read (and, with `counter`, count) each
/// event in one pass.
fn ingest(
    body: &[u8],
    work: &mut [u8],
    builder: &mut EventBuilder<'_>,
    mut counter: Option<&mut EventCounter>,
) -> usize {
    work.copy_from_slice(body);
    let parsed = parse_ndjson(work, builder, NOW);
    let mut sum = 0;
    for ev in &parsed.events {
        sum += read(ev);
        if let Some(c) = counter.as_deref_mut() {
            c.count(ev);
        }
    }
    black_box(parsed);
    sum
}

fn setup() -> (Catalogue, KeyRegistry) {
    Catalogue::with_keys(1024)
}

fn counting(c: &mut Criterion) {
    let (catalogue, keys) = setup();
    let body = body();
    let mut work = body.clone();
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let events: Vec<Arc<Event>> = {
        let check = parse_ndjson(&mut work, &mut builder, NOW);
        assert_eq!((check.events.len(), check.rejected), (LINES, 0));
        check.events
    };
    // One writer: this thread counts every event, the most a single matcher thread ever does.
    let registry = MetricsRegistry::new(&catalogue, &keys, 1, 4096);
    let mut counter = registry.event_counter(0);
    for ev in &events {
        counter.count(ev);
    }
    let snapshot = registry.snapshot(&NameFilter::all());
    let types = snapshot.iter().filter(|m| matches!(m.reading, Reading::Counter(_))).count();
    let observed: u64 = snapshot
        .iter()
        .filter_map(|m| match &m.reading {
            Reading::Histogram(h) => Some(h.count),
            _ => None,
        })
        .sum();
    eprintln!("metrics/input: {LINES} events of {types} types; {observed} histogram observations");

    // The interleaved A/B timing (skipped in the `--test` smoke run).
    if !std::env::args().any(|a| a == "--test") {
        const ROUNDS: usize = 101;
        const PER_ROUND: u32 = 10;
        let mut time = |counted: bool| {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                let c = if counted { Some(&mut counter) } else { None };
                black_box(ingest(&body, &mut work, &mut builder, c));
            }
            start.elapsed().as_secs_f64() / f64::from(PER_ROUND)
        };
        let (mut a, mut b) = (Vec::with_capacity(2 * ROUNDS), Vec::with_capacity(2 * ROUNDS));
        for _ in 0..ROUNDS {
            a.push(time(false));
            b.push(time(true));
            b.push(time(true));
            a.push(time(false));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (ma, mb) = (median(&mut a), median(&mut b));
        eprintln!(
            "metrics/interleaved: ingest_1000 {:.1} µs, ingest_1000_counted {:.1} µs, counting +{:.2} %",
            ma * 1e6,
            mb * 1e6,
            (mb / ma - 1.0) * 100.0
        );
    }

    let mut g = c.benchmark_group("metrics");
    g.sample_size(50);
    g.measurement_time(Duration::from_secs(6));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("parse_ndjson_1000", |b| {
        b.iter(|| {
            work.copy_from_slice(&body);
            black_box(parse_ndjson(&mut work, &mut builder, NOW))
        })
    });
    g.bench_function("ingest_1000", |b| b.iter(|| black_box(ingest(&body, &mut work, &mut builder, None))));
    g.bench_function("ingest_1000_counted", |b| {
        b.iter(|| black_box(ingest(&body, &mut work, &mut builder, Some(&mut counter))))
    });
    g.bench_function("count_only_1000", |b| {
        b.iter(|| {
            for ev in &events {
                counter.count(black_box(ev));
            }
        })
    });
    g.finish();
}

/// Runs `LIVETAP_METRICS_ITERS` bodies of one variant, for instruction counting.
fn instructions(mode: &str) {
    let iters: usize = std::env::var("LIVETAP_METRICS_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let (catalogue, keys) = setup();
    let body = body();
    let mut work = body.clone();
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let registry = MetricsRegistry::new(&catalogue, &keys, 1, 4096);
    let mut counter = registry.event_counter(0);
    // One counted warm-up body, so first-sight work (type registration, page allocation) is
    // paid in every run alike and cancels out of the differences.
    black_box(ingest(&body, &mut work, &mut builder, Some(&mut counter)));
    for _ in 0..iters {
        let c = if mode == "counted" { Some(&mut counter) } else { None };
        black_box(ingest(&body, &mut work, &mut builder, c));
    }
}

criterion_group!(benches, counting);

fn main() {
    if let Ok(mode) = std::env::var("LIVETAP_METRICS_MODE") {
        instructions(&mode);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
