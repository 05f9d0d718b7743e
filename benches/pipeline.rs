//! Criterion benchmarks for each stage of the pipeline: parse+encode, ring, match, SSE frame,
//! plus the cost of subscribing (plan compilation, index rebuild).
//!
//! Every group measures one stage in isolation on realistic Stalwart-shaped mail events, and
//! puts the alternatives we chose between (simd-json vs serde_json, compiled index vs naive
//! scan) side by side in the same group, so their ratio is measured under the same machine
//! noise. `perf/RESULTS.md` records a full run. `cargo bench --bench pipeline -- --test` runs
//! each benchmark once as a smoke test.

use aho_corasick::{AhoCorasickBuilder, MatchKind};
use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use livetap::event::{Catalogue, Event, EventBuilder, KeyRegistry, RawValue, Tape};
use livetap::ingest::parse_ndjson;
use livetap::matcher::index::{CompiledIndex, Scratch};
use livetap::query::ast::{Field, Pred, Term};
use livetap::query::{parse_pairs, Expr, Limits};
use livetap::ring::Ring;
use livetap::sse::SseChunk;
use livetap::subscriber::{Item, Subscriber};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `now` passed to the builder; every sample event carries its own `createdAt`, so it is unused
/// except as the fallback the builder requires.
const NOW: i64 = 1_777_629_600;

/// The same short configuration for every group, so a full run stays within a few minutes on
/// a small VM; ratios within a group are what we read, not absolute precision.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
}

/// Catalogue and key registry set up as the hub does at start.
fn setup() -> (Catalogue, KeyRegistry) {
    let catalogue = Catalogue::embedded();
    let keys = KeyRegistry::new(1024);
    catalogue.register_keys(&keys);
    (catalogue, keys)
}

/// Deterministic xorshift64* generator: the inputs are the same on every run (no `rand` crate
/// needed, and no run-to-run variation from the data itself).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// Value pools shared by events and subscriptions, so subscriptions hit events at a realistic
// (low) rate: an admin watches one IP, one domain or one account among many.
const IPS: u64 = 4000;
/// IPv4 peers spread over this many `10.N.0.0/16` networks (the CIDR subscriptions' targets).
const V4_NETS: u64 = 64;
/// Native IPv6 peers come from this many `2001:db8:K::/48` networks.
const V6_NETS: u64 = 64;
const DOMAINS: u64 = 500;
/// Domains are `dN.example-M.org` with M below this: the targets of `*.example-M.org` globs.
const DOMAIN_SUFFIXES: u64 = 50;
/// Senders `alerts@bank-K.<tld>`: the targets of `from=*@bank-K.*` globs.
const BANKS: u64 = 100;
const ACCOUNTS: u64 = 1000;
const QUEUE_IDS: u64 = 5000;

fn ip(n: u64) -> String {
    let host = n / V4_NETS;
    format!("10.{}.{}.{}", n % V4_NETS, host / 250, host % 250 + 1)
}

fn ip6(net: u64, host: u64) -> String {
    format!("2001:db8:{net:x}::{:x}", host + 1)
}

fn domain(n: u64) -> String {
    format!("d{n}.example-{}.org", n % DOMAIN_SUFFIXES)
}

fn account(n: u64) -> String {
    format!("user{n}@{}", domain(n % DOMAINS))
}

fn queue_id(n: u64) -> u64 {
    1_000_000 + n
}

/// Number of event templates (the mail flow of one message: connect, rcpt, queue, deliver,
/// plus authentication).
const KINDS: usize = 8;

/// One NDJSON line in Stalwart's webhook event shape. `kind` selects the template, `i` the
/// timestamp (20 events per second), `rng` the values.
fn event_line(kind: usize, i: u64, rng: &mut Rng) -> String {
    let id = rng.next() >> 16;
    let ts = format!("2026-05-01T10:{:02}:{:02}Z", (i / 20 / 60) % 60, (i / 20) % 60);
    let span = rng.next() >> 2;
    let rip = rng.below(IPS);
    // Dual-stack listeners report IPv4 peers as IPv4-mapped IPv6; the key kind canonicalises
    // them, so about a quarter of the events exercise that path. One in eight peers is native
    // IPv6.
    let remote_ip = match rng.below(8) {
        0 => ip6(rng.below(V6_NETS), rng.below(4096)),
        1 | 2 => format!("::ffff:{}", ip(rip)),
        _ => ip(rip),
    };
    let dom = domain(rng.below(DOMAINS));
    let rcpt = account(rng.below(ACCOUNTS));
    let rcpt2 = account(rng.below(ACCOUNTS));
    let sender = match rng.below(4) {
        0 => format!("alerts@bank-{}.{}", rng.below(BANKS), ["com", "net", "co.uk"][rng.below(3) as usize]),
        _ => format!("newsletter@{}", domain(rng.below(DOMAINS))),
    };
    let qid = queue_id(rng.below(QUEUE_IDS));
    let size = 2_000 + rng.below(200_000);
    let head = format!("{{\"id\":\"{id:x}\",\"createdAt\":\"{ts}\",\"type\":");
    let data = match kind {
        0 => format!(
            "\"smtp.connection-start\",\"data\":{{\"listenerId\":\"smtp\",\"localPort\":25,\
             \"remoteIp\":\"{remote_ip}\",\"remotePort\":{},\"spanId\":{span}}}",
            1024 + rng.below(60_000)
        ),
        1 => format!("\"smtp.rcpt-to\",\"data\":{{\"spanId\":{span},\"to\":\"{rcpt}\"}}"),
        2 => format!(
            "\"queue.queue-message\",\"data\":{{\"spanId\":{span},\"queueId\":{qid},\
             \"from\":\"{sender}\",\"to\":[\"{rcpt}\",\"{rcpt2}\"],\"size\":{size},\
             \"nextRetry\":\"{ts}\",\"nextDsn\":\"2026-05-01T14:00:00Z\",\
             \"expires\":\"2026-05-06T10:00:00Z\"}}"
        ),
        3 => format!(
            "\"delivery.attempt-start\",\"data\":{{\"spanId\":{span},\"queueId\":{qid},\
             \"queueName\":\"default\",\"from\":\"{sender}\",\"to\":[\"{rcpt}\",\"{rcpt2}\"],\
             \"size\":{size},\"total\":2}}"
        ),
        4 => {
            format!("\"delivery.domain-delivery-start\",\"data\":{{\"spanId\":{span},\"domain\":\"{dom}\"}}")
        }
        5 => format!(
            "\"delivery.delivered\",\"data\":{{\"spanId\":{span},\"hostname\":\"mx1.{dom}\",\
             \"to\":[\"{rcpt}\"],\"code\":250,\"details\":\"2.0.0 Ok: queued as {:X}\",\
             \"elapsed\":{}}}",
            rng.next() >> 24,
            rng.below(3_000)
        ),
        6 => format!(
            "\"auth.success\",\"data\":{{\"spanId\":{span},\"accountName\":\"{rcpt}\",\
             \"accountId\":{},\"type\":\"plain\"}}",
            rng.below(100_000)
        ),
        // The one event with JSON escapes: simd-json unescapes in place, serde_json has to
        // allocate an owned string for it.
        _ => format!(
            "\"auth.failed\",\"data\":{{\"accountName\":\"{rcpt}\",\"remoteIp\":\"{remote_ip}\",\
             \"code\":535,\"details\":\"Authentication credentials invalid for \\\"{rcpt}\\\"\",\
             \"causedBy\":{{\"type\":\"auth.failed\",\"text\":\"Invalid password\"}}}}"
        ),
    };
    head + &data + "}"
}

/// `n` lines cycling through the templates.
fn event_lines(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..n).map(|i| event_line(i % KINDS, i as u64, &mut rng)).collect()
}

fn build_events(lines: &[String], catalogue: &Catalogue, keys: &KeyRegistry) -> Vec<Arc<Event>> {
    let mut b = EventBuilder::new(catalogue, keys);
    lines
        .iter()
        .map(|l| {
            let raw = RawValue::parse_serde(l.as_bytes()).expect("sample event is valid JSON");
            Arc::new(b.build(&raw, NOW).expect("sample event builds"))
        })
        .collect()
}

/// Stage 1: producer JSON → `RawValue` → built `Event` (JSON re-encoded once, match view).
fn parse_encode(c: &mut Criterion) {
    let (catalogue, keys) = setup();
    let lines = event_lines(KINDS, 1);
    let inputs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let avg = inputs.iter().map(|l| l.len()).sum::<usize>() / inputs.len();
    eprintln!("parse_encode: {} events per iteration, {avg} bytes per event on average", KINDS);

    // simd-json unescapes in place, so each iteration needs the original bytes again. We copy
    // them into buffers allocated once (`copy_from_slice`, no allocation in the loop) and
    // measure that copy alone (`copy_only`) so it can be subtracted. In production there is no
    // such copy: the body buffer is owned and parsed in place exactly once.
    let mut bufs: Vec<Vec<u8>> = inputs.iter().map(|l| l.to_vec()).collect();
    let mut builder = EventBuilder::new(&catalogue, &keys);

    let mut g = c.benchmark_group("parse_encode");
    configure(&mut g);
    g.throughput(Throughput::Elements(KINDS as u64));

    g.bench_function("copy_only", |b| {
        b.iter(|| {
            for (buf, src) in bufs.iter_mut().zip(&inputs) {
                buf.copy_from_slice(src);
                black_box(&mut buf[..]);
            }
        })
    });
    g.bench_function("simd_json_parse", |b| {
        b.iter(|| {
            for (buf, src) in bufs.iter_mut().zip(&inputs) {
                buf.copy_from_slice(src);
                black_box(RawValue::parse_simd(buf).unwrap());
            }
        })
    });
    g.bench_function("serde_json_parse", |b| {
        b.iter(|| {
            for src in &inputs {
                black_box(RawValue::parse_serde(src).unwrap());
            }
        })
    });
    // What ingest uses: the token tape, one per thread, reused for every line.
    let mut tape = Tape::new();
    g.bench_function("tape_parse", |b| {
        b.iter(|| {
            for src in &inputs {
                black_box(tape.parse(src).unwrap());
            }
        })
    });
    g.bench_function("tape_parse_build", |b| {
        b.iter(|| {
            for src in &inputs {
                let raw = tape.parse(src).unwrap();
                black_box(builder.build(raw, NOW).unwrap());
            }
        })
    });
    g.bench_function("simd_json_parse_build", |b| {
        b.iter(|| {
            for (buf, src) in bufs.iter_mut().zip(&inputs) {
                buf.copy_from_slice(src);
                let raw = RawValue::parse_simd(buf).unwrap();
                black_box(builder.build(&raw, NOW).unwrap());
            }
        })
    });
    g.bench_function("serde_json_parse_build", |b| {
        b.iter(|| {
            for src in &inputs {
                let raw = RawValue::parse_serde(src).unwrap();
                black_box(builder.build(&raw, NOW).unwrap());
            }
        })
    });
    // Not what the library does today: simd-json with its scratch buffers reused across
    // calls (`from_slice_with_buffers`), to see how much of its cost is per-call allocation.
    // `RawValue::parse_simd` uses `from_slice`, which allocates fresh buffers every time.
    let mut sj_buffers = simd_json::Buffers::new(512);
    g.bench_function("simd_json_buffers_parse", |b| {
        b.iter(|| {
            for (buf, src) in bufs.iter_mut().zip(&inputs) {
                buf.copy_from_slice(src);
                let raw: RawValue<'_> =
                    simd_json::serde::from_slice_with_buffers(buf, &mut sj_buffers).unwrap();
                black_box(raw);
            }
        })
    });
    g.bench_function("simd_json_buffers_parse_build", |b| {
        b.iter(|| {
            for (buf, src) in bufs.iter_mut().zip(&inputs) {
                buf.copy_from_slice(src);
                let raw: RawValue<'_> =
                    simd_json::serde::from_slice_with_buffers(buf, &mut sj_buffers).unwrap();
                black_box(builder.build(&raw, NOW).unwrap());
            }
        })
    });
    // Build alone, from values parsed once outside the loop: the encode + match-view share.
    let parsed: Vec<RawValue<'_>> = inputs.iter().map(|l| RawValue::parse_serde(l).unwrap()).collect();
    g.bench_function("build_only", |b| {
        b.iter(|| {
            for raw in &parsed {
                black_box(builder.build(raw, NOW).unwrap());
            }
        })
    });

    // A whole 1,000-line NDJSON body through the real ingest entry point (the tape, per-line
    // error handling, Arc per event). The body is restored into a reused buffer each
    // iteration; `body_copy_only` is that copy alone.
    const LINES: usize = 1000;
    let body = event_lines(LINES, 2).join("\n").into_bytes();
    let mut work = body.clone();
    {
        let check = parse_ndjson(&mut work, &mut builder, NOW);
        assert_eq!((check.events.len(), check.rejected), (LINES, 0));
    }
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("body_copy_only_1000", |b| {
        b.iter(|| {
            work.copy_from_slice(&body);
            black_box(&mut work[..]);
        })
    });
    g.bench_function("parse_ndjson_1000", |b| {
        b.iter(|| {
            work.copy_from_slice(&body);
            black_box(parse_ndjson(&mut work, &mut builder, NOW))
        })
    });
    g.finish();
}

/// Stage 2: the event log. Push+pop cost on one thread, then throughput across two threads.
fn ring(c: &mut Criterion) {
    let (catalogue, keys) = setup();
    let events = build_events(&event_lines(KINDS, 3), &catalogue, &keys);
    let mut g = c.benchmark_group("ring");
    configure(&mut g);

    // Same thread: publish a batch and consume it at once. The ring never fills, so this is
    // the bare reservation + stamp + Arc clone (and drop of the slot's previous occupant) +
    // cursor store, amortised over the batch.
    for batch in [1usize, 64, 256] {
        let (ring, mut consumers) = Ring::<Arc<Event>>::new(65536, 1);
        let mut cons = consumers.pop().unwrap();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::new("same_thread", batch), &batch, |b, &batch| {
            b.iter(|| {
                ring.try_publish(batch, |s| events[s as usize % KINDS].clone()).unwrap();
                let n = cons.consume(ring.head(), batch, |_, v| {
                    black_box(v);
                });
                debug_assert_eq!(n, batch);
            })
        });
    }

    // Two threads: the bench thread publishes, a consumer thread reads with the matcher's
    // wait strategy (spin, then park). One iteration is BLOCK events; the clock runs from
    // before spawning the consumer until it has seen every event, and a sample has at least
    // BLOCK events, so the spawn (tens of µs) is small next to the transfer. The consumer
    // handle goes back and forth so the ring's slots are allocated once.
    const BLOCK: u64 = 4096;
    for batch in [1usize, 64] {
        let (ring, mut consumers) = Ring::<Arc<Event>>::new(65536, 1);
        let mut cons = consumers.pop();
        g.throughput(Throughput::Elements(BLOCK));
        g.bench_with_input(BenchmarkId::new("two_threads", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let total = iters * BLOCK;
                let mut consumer = cons.take().unwrap();
                let reader = ring.clone();
                let start = Instant::now();
                let handle = std::thread::spawn(move || {
                    let mut seen = 0u64;
                    while seen < total {
                        let n = consumer.consume(reader.head(), 1024, |_, v| {
                            black_box(v.created_at);
                        });
                        seen += n as u64;
                        if n == 0 {
                            consumer.wait(Duration::from_millis(1));
                        }
                    }
                    consumer
                });
                let mut sent = 0u64;
                while sent < total {
                    let n = batch.min((total - sent) as usize);
                    match ring.try_publish(n, |s| events[s as usize % KINDS].clone()) {
                        Ok(_) => sent += n as u64,
                        // Backpressure: the consumer is a full ring behind.
                        Err(_) => std::thread::yield_now(),
                    }
                }
                cons = Some(handle.join().unwrap());
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// One subscription of the realistic mix, drawn per mille. Most constrain one exact value of
/// remote-ip, domain, account-name or queue-id; some search text; some use globs or CIDR; a
/// few add a level, an event-type pattern or a negation to an indexed key; a very few are `q=`
/// expressions with OR; 0.1 % have no filter at all. Every one has an indexable guard except
/// the unfiltered ones, so the index has no fallback subscribers (the bench prints the stats).
fn subscription_query(rng: &mut Rng) -> String {
    // Text searches that hit a fair share of the traffic (the type is in the haystack too).
    const WORDS: &[&str] = &["invalid password", "queued as", "credentials invalid", "mx1.d1", "bank-7."];
    let word = |rng: &mut Rng| -> String {
        // Mostly a specific domain or mailbox someone looks for, rarely a broad word.
        match rng.below(20) {
            0 => WORDS[rng.below(WORDS.len() as u64) as usize].to_string(),
            1..=11 => domain(rng.below(DOMAINS)),
            _ => format!("user{}@", rng.below(ACCOUNTS)),
        }
    };
    let r_ip = |rng: &mut Rng| ip(rng.below(IPS));
    let r_dom = |rng: &mut Rng| domain(rng.below(DOMAINS));
    let r_acc = |rng: &mut Rng| account(rng.below(ACCOUNTS));
    let r_net = |rng: &mut Rng| format!("10.{}.0.0/16", rng.below(V4_NETS));
    let r_suffix = |rng: &mut Rng| format!("*.example-{}.org", rng.below(DOMAIN_SUFFIXES));
    match rng.below(1000) {
        0 => String::new(),
        1..=329 => format!("remote-ip={}", r_ip(rng)),
        330..=479 => format!("domain={}", r_dom(rng)),
        480..=629 => format!("account-name={}", r_acc(rng)),
        630..=749 => format!("queue-id={}", queue_id(rng.below(QUEUE_IDS))),
        750..=799 => format!("filter={}", word(rng)),
        800..=829 => format!("remote-ip={}&filter={}", r_ip(rng), word(rng)),
        830..=859 => format!("domain={}", r_suffix(rng)),
        860..=879 => format!("from=*@bank-{}.*", rng.below(BANKS)),
        880..=909 => format!("remote-ip={}", r_net(rng)),
        910..=924 => format!("remote-ip=2001:db8:{:x}::/48", rng.below(V6_NETS)),
        925..=934 => format!("level=warn&remote-ip={}", r_ip(rng)),
        935..=944 => format!("level=info&account-name={}", r_acc(rng)),
        945..=954 => format!("event=smtp.*&remote-ip={}", r_ip(rng)),
        955..=964 => format!("event=auth.*,delivery.delivered&account-name={}", r_acc(rng)),
        965..=974 => format!("domain={}&event=!smtp.rcpt-to", r_dom(rng)),
        975..=984 => format!("account-name={}&event=!auth.success", r_acc(rng)),
        985..=989 => format!("remote-ip={}&remote-ip=!{}", r_net(rng), r_ip(rng)),
        990..=993 => format!(
            "q=(remote-ip:{} OR domain:{}) AND NOT event:smtp.rcpt-to AND size>100000",
            r_net(rng),
            r_suffix(rng)
        ),
        994..=996 => {
            let a = r_acc(rng);
            format!("q=account-name:{a} OR to:{a}")
        }
        _ => format!("q=queue-id:{} OR \"{}\"", queue_id(rng.below(QUEUE_IDS)), r_dom(rng)),
    }
}

/// `n` subscribers of the mix, built as the registry builds them (plan compiled in `new`).
fn subscribers(n: usize, keys: &KeyRegistry) -> Vec<Arc<Subscriber>> {
    let mut rng = Rng(5 + n as u64);
    let limits = Limits::default();
    (0..n)
        .map(|i| {
            let q = subscription_query(&mut rng);
            let p = parse_pairs(&q, keys, &limits).unwrap_or_else(|e| panic!("{q}: {e}"));
            Arc::new(Subscriber::new(i as u64, p.expr, p.follow, 1024, None))
        })
        .collect()
}

/// Asserts that the index and the naive evaluator select exactly the same subscribers on every
/// event; returns the average number of matches per event.
fn check_agree(
    index: &CompiledIndex,
    subs: &[Arc<Subscriber>],
    events: &[Arc<Event>],
    scratch: &mut Scratch,
) -> f64 {
    let mut total = 0usize;
    let mut naive = Vec::new();
    for ev in events {
        index.begin(scratch);
        index.match_event(ev, scratch);
        naive.clear();
        naive.extend((0..subs.len() as u32).filter(|&s| subs[s as usize].filter.eval(ev)));
        scratch.out.sort_unstable();
        assert_eq!(scratch.out, naive, "index and naive disagree on {}", ev.kind);
        total += naive.len();
    }
    total as f64 / events.len() as f64
}

/// Times `begin` + `match_event` on the rotating `events`, one event per iteration.
fn bench_indexed(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    index: &CompiledIndex,
    events: &[Arc<Event>],
    scratch: &mut Scratch,
) {
    let mut i = 0usize;
    g.bench_function(id, |b| {
        b.iter(|| {
            let ev = &events[i % events.len()];
            i = i.wrapping_add(1);
            index.begin(scratch);
            index.match_event(ev, scratch);
            black_box(scratch.out.len())
        })
    });
}

/// Stage 3: which subscribers an event matches. Compiled index vs the naive reference scan
/// (`Expr::eval` on every subscriber), on the same events and subscribers.
fn matching(c: &mut Criterion) {
    let (catalogue, keys) = setup();
    // 1,024 distinct events rotated through, so postings and automaton states are not all
    // hot in cache the way a single repeated event would make them.
    const EVENTS: usize = 1024;
    let events = build_events(&event_lines(EVENTS, 4), &catalogue, &keys);

    let mut g = c.benchmark_group("match");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 100, 10_000, 100_000] {
        let subs = subscribers(n, &keys);
        let index = CompiledIndex::build(subs.clone(), 1);
        let mut scratch = Scratch::default();

        // Both evaluators must agree, subscriber for subscriber, before either is timed.
        let per_event = check_agree(&index, &subs, &events, &mut scratch);
        eprintln!("match/{n}: {per_event:.2} matching subscribers per event on average; {:?}", index.stats());

        configure(&mut g);
        bench_indexed(&mut g, BenchmarkId::new("indexed", n), &index, &events, &mut scratch);
        if n >= 100_000 {
            // A few milliseconds per event: criterion's minimum of 10 samples, given the time
            // they need, rather than 20.
            g.sample_size(10);
            g.measurement_time(Duration::from_secs(4));
        }
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("naive", n), &n, |b, _| {
            b.iter(|| {
                let ev = &events[i % EVENTS];
                i = i.wrapping_add(1);
                black_box(subs.iter().filter(|s| s.filter.eval(ev)).count())
            })
        });
    }
    g.finish();
}

/// The query without its broad positive conjuncts (`level=...`, `event=...` but not
/// `event=!...`), for `match_parts`.
fn without_broad(q: String) -> String {
    if q.starts_with("q=") {
        return q;
    }
    let broad = |p: &str| p.starts_with("level=") || (p.starts_with("event=") && !p.starts_with("event=!"));
    q.split('&').filter(|p| !broad(p)).collect::<Vec<_>>().join("&")
}

/// Diagnostics for the 10,000-subscriber case, to see where `match/indexed` spends its time:
/// - `key_guards_only`: the same mix without the `level=` and `event=` conjuncts of the 4 % of
///   queries that AND one with an exact key (so their only guard is that key). The difference
///   to `match/indexed/10000` is what the broad terms' postings cost in the counting pass:
///   every `event=smtp.*` or `level=info` subscriber is touched on every event of that type or
///   level, although its key rarely matches.
/// - `text_automaton`: the index's text search alone, an overlapping Aho-Corasick automaton
///   (standard semantics, as `CompiledIndex` builds it) over all the mix's `filter=` needles,
///   run over each event's search text.
fn match_parts(c: &mut Criterion) {
    let (catalogue, keys) = setup();
    const EVENTS: usize = 1024;
    const N: usize = 10_000;
    let events = build_events(&event_lines(EVENTS, 4), &catalogue, &keys);
    let mut g = c.benchmark_group("match_parts");
    configure(&mut g);
    g.throughput(Throughput::Elements(1));

    let mut rng = Rng(5 + N as u64);
    let limits = Limits::default();
    let subs: Vec<Arc<Subscriber>> = (0..N)
        .map(|i| {
            let p = parse_pairs(&without_broad(subscription_query(&mut rng)), &keys, &limits).unwrap();
            Arc::new(Subscriber::new(i as u64, p.expr, p.follow, 1024, None))
        })
        .collect();
    let index = CompiledIndex::build(subs.clone(), 1);
    let mut scratch = Scratch::default();
    let per_event = check_agree(&index, &subs, &events, &mut scratch);
    eprintln!("match_parts/key_guards_only/{N}: {per_event:.2} matches per event; {:?}", index.stats());
    bench_indexed(&mut g, BenchmarkId::new("key_guards_only", N), &index, &events, &mut scratch);

    fn needles(e: &Expr, out: &mut Vec<String>) {
        match e {
            Expr::And(xs) | Expr::Or(xs) => xs.iter().for_each(|x| needles(x, out)),
            Expr::Not(x) => needles(x, out),
            Expr::Term(Term { field: Field::Text, pred: Pred::Contains(s) }) if !out.contains(s) => {
                out.push(s.clone())
            }
            _ => {}
        }
    }
    let mut pats = Vec::new();
    subscribers(N, &keys).iter().for_each(|s| needles(&s.filter, &mut pats));
    let ac = AhoCorasickBuilder::new().match_kind(MatchKind::Standard).build(&pats).unwrap();
    let hay = events.iter().map(|e| e.search_text().len()).sum::<usize>() / EVENTS;
    eprintln!("match_parts/text_automaton/{N}: {} needles, {hay} bytes of search text per event", pats.len());
    let mut i = 0usize;
    g.bench_with_input(BenchmarkId::new("text_automaton", N), &N, |b, _| {
        b.iter(|| {
            let ev = &events[i % EVENTS];
            i = i.wrapping_add(1);
            black_box(ac.find_overlapping_iter(ev.search_text()).count())
        })
    });
    g.finish();
}

/// What a burst of connects costs: compiling one subscriber's plan (`Subscriber::new`), and
/// rebuilding a shard's index from ready plans (`CompiledIndex::build`, a merge). The registry
/// batches pending connects into one rebuild per shard, off the matcher threads, which keep
/// matching on the previous index until the new one is swapped in.
fn rebuild(c: &mut Criterion) {
    let (_catalogue, keys) = setup();
    let mut g = c.benchmark_group("rebuild");
    configure(&mut g);

    // Per query of the mix: parse, and the plan compiled by `Subscriber::new`.
    const QUERIES: usize = 1000;
    let mut rng = Rng(7);
    let limits = Limits::default();
    let queries: Vec<String> = (0..QUERIES).map(|_| subscription_query(&mut rng)).collect();
    let exprs: Vec<Expr> = queries.iter().map(|q| parse_pairs(q, &keys, &limits).unwrap().expr).collect();
    g.throughput(Throughput::Elements(QUERIES as u64));
    g.bench_function("parse_pairs", |b| {
        b.iter(|| {
            for q in &queries {
                black_box(parse_pairs(q, &keys, &limits).unwrap());
            }
        })
    });
    // The expressions are cloned in the (untimed) setup and the subscribers dropped after
    // the timing, so this is `Subscriber::new` alone.
    g.bench_function("subscriber_new", |b| {
        b.iter_batched(
            || exprs.clone(),
            |exprs| {
                exprs
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| Subscriber::new(i as u64, e, true, 1024, None))
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });

    // Whole-shard rebuilds; the old index is dropped outside the timing as well.
    g.throughput(Throughput::Elements(1));
    for n in [10_000usize, 100_000] {
        let subs = subscribers(n, &keys);
        if n >= 100_000 {
            g.sample_size(10);
            g.measurement_time(Duration::from_secs(5));
        }
        g.bench_with_input(BenchmarkId::new("build", n), &n, |b, _| {
            b.iter_batched(|| subs.clone(), |s| CompiledIndex::build(s, 2), BatchSize::LargeInput)
        });
    }
    g.finish();
}

/// Stage 4: a subscriber's queue and the SSE frame built from it.
fn frame(c: &mut Criterion) {
    let (catalogue, keys) = setup();
    let events = build_events(&event_lines(256, 6), &catalogue, &keys);
    let mut g = c.benchmark_group("frame");
    configure(&mut g);

    for n in [1usize, 16, 256] {
        // Items share the events' `Bytes`, exactly as queued by the matcher (refcount only).
        let items: Vec<Item> = events[..n]
            .iter()
            .enumerate()
            .map(|(seq, e)| Item::Event { seq: seq as u64, wire: e.wire.clone() })
            .collect();
        // The head buffer is reused the way `SseBody` reuses it: topped up when low, so its
        // allocation is recycled once the previous chunk's parts are dropped.
        let mut head = BytesMut::new();
        g.throughput(Throughput::Elements(n as u64));
        // `append_items` moves the items' bytes into the chunk, so each iteration gets its own
        // copy of the items (made outside the timing); the chunk is dropped inside it, as the
        // writer drops it after the write.
        g.bench_with_input(BenchmarkId::new("append_items", n), &n, |b, _| {
            b.iter_batched_ref(
                || items.clone(),
                |batch| {
                    if head.capacity() < 256 {
                        head.reserve(4096);
                    }
                    let mut chunk = SseChunk::default();
                    chunk.append_items(batch, &mut head);
                    black_box(bytes::Buf::remaining(&chunk))
                },
                BatchSize::SmallInput,
            )
        });

        // Matcher side (`push`) plus writer side (`drain_into`), per event; the queue never
        // fills, and `out` is reused like `SseBody::items`.
        let sub = Subscriber::new(1, Expr::True, true, 4096, None);
        let jsons: Vec<Bytes> = events[..n].iter().map(|e| e.json.clone()).collect();
        let mut out: Vec<Item> = Vec::with_capacity(n + 1);
        g.bench_with_input(BenchmarkId::new("push_drain", n), &n, |b, _| {
            b.iter(|| {
                for (seq, json) in jsons.iter().enumerate() {
                    sub.push(seq as u64, json, 0);
                }
                sub.drain_into(&mut out, usize::MAX);
                black_box(out.len());
                out.clear();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse_encode, ring, matching, match_parts, rebuild, frame);
criterion_main!(benches);
