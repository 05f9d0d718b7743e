//! What writing history (issue 7) costs ingest: the fanout-1k event mix parsed alone, parsed and handed to the `HistoryWriter`, and parsed, handed over and committed to SQLite.
//!
//! Two inputs of 1,000 NDJSON lines each, with the load harness's `fanout-1k` mix (the same
//! ten mail event types, keys, value pools and line size as `perf/harness/src/pool.rs`):
//! - **harness lines**, as the harness sends them: no span, so the default selection keeps
//!   none of them and `submit` does not even queue them;
//! - **spans**: the same lines where every five consecutive events form a span (a `spanId`
//!   and shared values, as one SMTP session or delivery has); every event carries a
//!   `queueId`, as in the harness, so the default selection keeps every event. This is the
//!   worst case for history. Span ids are fresh for every body, as a real stream's are.
//!
//! Benchmarks (group `history`):
//! - `harness_1000` and `harness_1000_submit`: the harness lines, parsed and read, without
//!   and with `HistoryWriter::submit` for every event;
//! - `ingest_1000`: the span lines, `parse_ndjson`, then one pass reading each event's keys
//!   (the least a matcher thread does with every event);
//! - `ingest_1000_submit`: the same, and each event handed to the writer, as the matcher
//!   thread that feeds history does; the writer thread selects and commits in the background
//!   (it cannot keep up with one core parsing flat out, so it drops and counts);
//! - `ingest_1000_stored`: the same, then `HistoryWriter::flush`, which returns when all of
//!   it is committed: the whole cost of storing, made serial.
//!
//! Before the group, each input's pair is timed interleaved (A-B-B-A rounds, medians), which
//! removes the drift between two benchmarks run one after the other
//! (`history/interleaved`). After the group, the writer thread's CPU time per event (from
//! `/proc`, and its own busy-time counter) is printed as `history/writer`. Two plain modes
//! skip criterion: `LIVETAP_HISTORY_EVENTS=N` (the writer alone, see [`writer_only`]) and
//! `LIVETAP_HISTORY_MODE` (instruction counts under callgrind, see [`instructions`]).
//!
//! `cargo bench --bench history -- --test` runs each benchmark once as a smoke test.

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use livetap::event::{Catalogue, Event, EventBuilder, KeyRegistry};
use livetap::ingest::parse_ndjson;
use livetap::store::{History, HistoryConfig};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// `now` for the builder, which stamps the events (the lines carry no `createdAt`): the real
/// time, so the store's age retention (30 days) does not prune them while the bench runs.
static NOW: std::sync::LazyLock<i64> = std::sync::LazyLock::new(livetap::event::encode::now_secs);
const LINES: usize = 1000;
const SPAN_LEN: u64 = 5;

/// The harness's event types (`perf/harness/src/pool.rs`).
const TYPES: &[&str] = &[
    "smtp.connection-start",
    "smtp.ehlo",
    "smtp.mail-from",
    "smtp.rcpt-to",
    "smtp.data-end",
    "delivery.attempt-start",
    "delivery.delivered",
    "queue.queue-message",
    "auth.success",
    "auth.failed",
];

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / (254 * 254) % 256, i / 254 % 254, i % 254 + 1)
}

/// One body of `LINES` events whose spans are numbered from `first_span`.
fn body(first_span: Option<u64>, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = String::with_capacity(LINES * 300);
    let mut values = (String::new(), String::new(), String::new(), 0usize, 0u32);
    for n in 0..LINES as u64 {
        // The harness draws every line's values afresh; a span's events share theirs.
        if first_span.is_none() || n % SPAN_LEN == 0 {
            values = (
                ip(rng.usize(..4000)),
                format!("example-{}.org", rng.usize(..800)),
                format!("user-{}", rng.usize(..500)),
                rng.usize(..8000) + 1,
                rng.u32(500..2_000_000),
            );
        }
        let (ip, domain, account, queue, size) = &values;
        let ty = TYPES[rng.usize(..TYPES.len())];
        let t = n * 1000;
        let span = first_span.map_or(String::new(), |f| format!(r#","spanId":{}"#, f + n / SPAN_LEN));
        out.push_str(&format!(
            r#"{{"type":"{ty}","data":{{"n":{n},"t":{t}{span},"remoteIp":"{ip}","domain":"{domain}","accountName":"{account}","from":"{account}@{domain}","queueId":{queue},"size":{size},"reason":"load test event with some realistic padding"}}}}"#
        ));
        out.push('\n');
    }
    out.into_bytes()
}

/// Fresh bodies: with spans, each call numbers its spans after the previous body's; without,
/// the lines are the harness's own (no span).
struct Bodies {
    next_span: Option<u64>,
    rng: fastrand::Rng,
}

impl Bodies {
    fn spans() -> Bodies {
        Bodies { next_span: Some(1), rng: fastrand::Rng::with_seed(7) }
    }

    fn harness() -> Bodies {
        Bodies { next_span: None, rng: fastrand::Rng::with_seed(7) }
    }

    fn next(&mut self) -> Vec<u8> {
        let b = body(self.next_span, &mut self.rng);
        if let Some(s) = &mut self.next_span {
            *s += LINES as u64 / SPAN_LEN;
        }
        b
    }
}

/// A matcher thread's least work per event: reading its type and every key value.
#[inline]
fn read(ev: &Event) -> usize {
    ev.kind.len() + ev.fields().map(|(k, v)| usize::from(k) + v.len()).sum::<usize>()
}

/// Parses `body` and reads every event; with `history`, also submits each one at the next
/// sequence number.
fn ingest(body: &mut [u8], builder: &mut EventBuilder<'_>, history: Option<(&History, &mut u64)>) -> usize {
    let parsed = parse_ndjson(body, builder, *NOW);
    let mut sum = 0;
    match history {
        None => {
            for ev in &parsed.events {
                sum += read(ev);
            }
        }
        Some((h, seq)) => {
            for ev in &parsed.events {
                sum += read(ev);
                h.writer.submit(*seq, ev.clone());
                *seq += 1;
            }
        }
    }
    black_box(parsed);
    sum
}

/// CPU seconds (user + system) the thread named `name` has used, from `/proc`.
fn thread_cpu_secs(name: &str) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        return Some((utime + stime) / tick);
    }
    None
}

/// Times `ingest_1000` (A) and `ingest_1000_submit` (B) in A-B-B-A rounds of ten fresh bodies
/// each; returns the medians (seconds per body), then waits for the writer to catch up.
fn interleaved(
    bodies: &mut Bodies,
    builder: &mut EventBuilder<'_>,
    history: &History,
    seq: &mut u64,
) -> (f64, f64) {
    const ROUNDS: usize = 41;
    const PER_ROUND: usize = 10;
    let mut time = |submit: bool, seq: &mut u64| {
        let mut inputs: Vec<Vec<u8>> = (0..PER_ROUND).map(|_| bodies.next()).collect();
        let start = Instant::now();
        for b in &mut inputs {
            let h = if submit { Some((history, &mut *seq)) } else { None };
            black_box(ingest(b, builder, h));
        }
        start.elapsed().as_secs_f64() / PER_ROUND as f64
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(time(false, seq));
        b.push(time(true, seq));
        b.push(time(true, seq));
        a.push(time(false, seq));
    }
    history.writer.flush();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut a), median(&mut b))
}

fn history(c: &mut Criterion) {
    let smoke = std::env::args().any(|a| a == "--test");
    let catalogue = Catalogue::embedded();
    let keys = KeyRegistry::new(1024);
    catalogue.register_keys(&keys);
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let dir = tempfile::tempdir().expect("temporary directory");
    // Defaults, except a size bound, so a long run keeps a realistic (and bounded) file and
    // pays for its retention as production does.
    let config = HistoryConfig { max_bytes: 256 << 20, ..HistoryConfig::default() };
    let history = History::open(&dir.path().join("history.sqlite3"), &config, &keys).expect("open history");
    let mut bodies = Bodies::spans();
    let mut seq = 0u64;
    {
        let mut check = bodies.next();
        let parsed = parse_ndjson(&mut check, &mut builder, *NOW);
        assert_eq!((parsed.events.len(), parsed.rejected), (LINES, 0));
        let line = std::str::from_utf8(&check).unwrap_or("").lines().next().unwrap_or("").len();
        eprintln!("history/input: {LINES} events, spans of {SPAN_LEN}, lines of about {line} bytes");
    }

    if !smoke {
        let mut harness = Bodies::harness();
        for (name, bodies) in
            [("harness lines, default selection", &mut harness), ("spans, all kept", &mut bodies)]
        {
            let (a, b) = interleaved(bodies, &mut builder, &history, &mut seq);
            eprintln!(
                "history/interleaved ({name}): ingest_1000 {:.1} µs, ingest_1000_submit {:.1} µs, submitting +{:.2} %",
                a * 1e6,
                b * 1e6,
                (b / a - 1.0) * 100.0
            );
        }
    }

    let mut g = c.benchmark_group("history");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(LINES as u64));
    let mut harness = Bodies::harness();
    g.bench_function("harness_1000", |bch| {
        bch.iter_batched_ref(
            || harness.next(),
            |b| black_box(ingest(b, &mut builder, None)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("harness_1000_submit", |bch| {
        bch.iter_batched_ref(
            || harness.next(),
            |b| black_box(ingest(b, &mut builder, Some((&history, &mut seq)))),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ingest_1000", |bch| {
        bch.iter_batched_ref(
            || bodies.next(),
            |b| black_box(ingest(b, &mut builder, None)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ingest_1000_submit", |bch| {
        bch.iter_batched_ref(
            || bodies.next(),
            |b| black_box(ingest(b, &mut builder, Some((&history, &mut seq)))),
            BatchSize::SmallInput,
        )
    });
    history.writer.flush();
    let cpu_before = thread_cpu_secs("livetap-history");
    let stats_before = history.writer.stats();
    g.bench_function("ingest_1000_stored", |bch| {
        bch.iter_batched_ref(
            || bodies.next(),
            |b| {
                let n = ingest(b, &mut builder, Some((&history, &mut seq)));
                history.writer.flush();
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    let cpu_after = thread_cpu_secs("livetap-history");
    let s = history.writer.stats();
    let processed = (s.processed - stats_before.processed).max(1) as f64;
    let cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => format!("{:.2} µs CPU per event (/proc)", (b - a) / processed * 1e6),
        _ => "thread CPU time unavailable".to_string(),
    };
    eprintln!(
        "history/writer: {cpu}, {:.2} µs busy per event; {} events written in {} batches, {} dropped, {} pruned, {} MiB on disk",
        (s.busy_ns - stats_before.busy_ns) as f64 / processed / 1e3,
        s.written,
        s.batches,
        s.dropped,
        s.pruned_events,
        history.store.size_bytes() >> 20
    );
    history.writer.shutdown();
}

/// `LIVETAP_HISTORY_EVENTS=N`: stores N events through the writer with no drops (waiting
/// when its queue is full) and prints the CPU time per event of the writer thread and of the
/// retention thread; the store's cost alone, without criterion. Retention is off unless
/// `LIVETAP_HISTORY_MAX_BYTES` sets a size bound (then the run shows the steady state of a
/// database kept at its bound).
fn writer_only(n: u64) {
    let catalogue = Catalogue::embedded();
    let keys = KeyRegistry::new(1024);
    catalogue.register_keys(&keys);
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let dir = tempfile::tempdir().expect("temporary directory");
    let max_bytes = std::env::var("LIVETAP_HISTORY_MAX_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let config = HistoryConfig { max_bytes, trace_retention_days: 0, ..HistoryConfig::default() };
    let history = History::open(&dir.path().join("history.sqlite3"), &config, &keys).expect("open history");
    let mut bodies = Bodies::spans();
    let mut seq = 0u64;
    // The thread names itself when it starts; a flush makes sure it has.
    history.writer.flush();
    let cpu0 = thread_cpu_secs("livetap-history");
    let retain0 = thread_cpu_secs("livetap-retain");
    let start = Instant::now();
    while seq < n {
        let mut b = bodies.next();
        for ev in parse_ndjson(&mut b, &mut builder, *NOW).events {
            while !history.writer.submit(seq, ev.clone()) {
                std::thread::sleep(Duration::from_micros(200));
            }
            seq += 1;
        }
    }
    history.writer.flush();
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs("livetap-history").zip(cpu0).map_or(f64::NAN, |(b, a)| b - a);
    let retain = thread_cpu_secs("livetap-retain").zip(retain0).map_or(f64::NAN, |(b, a)| b - a);
    let s = history.writer.stats();
    eprintln!(
        "history/writer-only: {seq} events in {wall:.2} s; writer thread {:.2} µs CPU per event ({:.2} µs busy), \
         retention thread {:.2} µs; {} batches; {} pruned; {} MiB",
        cpu / seq as f64 * 1e6,
        s.busy_ns as f64 / seq as f64 / 1e3,
        retain / seq as f64 * 1e6,
        s.batches,
        s.pruned_events,
        history.store.size_bytes() >> 20
    );
}

/// `LIVETAP_HISTORY_MODE=parse` or `submit` with `LIVETAP_HISTORY_ITERS=N`: ingests N fresh
/// bodies (without or with handing every event to the writer) and exits, for deterministic
/// instruction counts of the ingesting thread under callgrind (`--separate-threads=yes`; the
/// commands are in `perf/RESULTS.md`). The writer's queue is large enough that nothing is
/// dropped, so `submit` takes its normal path.
fn instructions(mode: &str, iters: usize) {
    let catalogue = Catalogue::embedded();
    let keys = KeyRegistry::new(1024);
    catalogue.register_keys(&keys);
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = HistoryConfig { queue_capacity: 1 << 22, ..HistoryConfig::default() };
    let history = History::open(&dir.path().join("history.sqlite3"), &config, &keys).expect("open history");
    let mut bodies = Bodies::spans();
    let mut inputs: Vec<Vec<u8>> = (0..iters).map(|_| bodies.next()).collect();
    let mut seq = 0u64;
    for b in &mut inputs {
        let h = if mode == "submit" { Some((&history, &mut seq)) } else { None };
        black_box(ingest(b, &mut builder, h));
    }
    history.writer.flush();
    assert_eq!(history.writer.stats().dropped, 0);
}

criterion_group!(benches, history);

fn main() {
    if let Ok(mode) = std::env::var("LIVETAP_HISTORY_MODE") {
        let iters = std::env::var("LIVETAP_HISTORY_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
        instructions(&mode, iters);
        return;
    }
    if let Some(n) = std::env::var("LIVETAP_HISTORY_EVENTS").ok().and_then(|v| v.parse().ok()) {
        writer_only(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
