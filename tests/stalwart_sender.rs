//! Stalwart's webhook sender, simulated with exactly its retry semantics, drives a real livetap
//! over real HTTP through the three ways a batch comes back: a 30 s outage in which the ring is
//! full, a burst of 50,000 events/s for 5 s, and answers slower than the sender's timeout.
//! Every event must reach a subscriber exactly once.
//!
//! The sender's behaviour is taken from Stalwart's source as described in
//! `../shared/spec/stalwart-v016.md` §5, and nothing else:
//! - everything pending goes into one POST, with no size cap; at most one batch starts per
//!   throttle (1 s), and only when no POST is in flight;
//! - the sender looks at its queue only when an event arrives: a batch whose throttle expired
//!   while a POST was in flight waits for the next event, and so does a failed batch, which is
//!   put back (after the newer events) just before the in-flight flag is cleared;
//! - any non-2xx answer, any transport error and any answer slower than the timeout count as
//!   a failure, with no backoff and no regard for `Retry-After`;
//! - whenever events enter the queue, new or put back, those older than `discard-after`
//!   (5 min) are dropped;
//! - ids are `<unix seconds><event index>` in v0.15 and `<unix seconds><counter><event id>`
//!   from v0.16.11, where the counter grows with every serialisation, so a resent event gets
//!   a new id.
//!
//! A real mail server always has some traffic, which is what wakes the sender; the simulator
//! has a trickle of idle events for that, besides the counted ones.
//!
//! The ring is filled the way `tests/webhook.rs` does it: a producer reserves one slot and does
//! not publish it until released, so matchers cannot pass it and everything behind it fills the
//! ring. The ring is then truly full, as when the matchers cannot keep up.

mod common;

use common::*;
use livetap::auth::sign;
use livetap::event::RawValue;
use livetap::Server;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const KEY: &str = "stalwart-sender-signing-key";
/// The counted events' type (in both catalogue generations).
const COUNTED: &str = "smtp.rcpt-to";

/// How the sender forms the `id` of an event.
#[derive(Debug, Clone, Copy)]
enum Ids {
    /// `<unix seconds><event index>`: two events of one type within a second share it.
    V015,
    /// `<unix seconds><counter><event id>`: a new id at every serialisation.
    V016Late,
}

/// One event in the sender's queue.
#[derive(Clone)]
struct SimEvent {
    created: i64,
    /// The event type's number, as in the id.
    type_id: u16,
    /// The event after its id: `,"createdAt":"…","type":"…","data":{…}}`.
    tail: Arc<str>,
}

/// What the sender did, for the report and the assertions.
#[derive(Debug, Default)]
struct Report {
    posts: u64,
    failures: u64,
    timeouts: u64,
    discarded: u64,
    /// Events livetap said it recognised as resends.
    duplicates: u64,
    largest_batch: usize,
}

struct Sender {
    addr: std::net::SocketAddr,
    ids: Ids,
    throttle: Duration,
    timeout: Duration,
    discard_after: i64,
    pending: Vec<SimEvent>,
    counter: u64,
    report: Arc<Mutex<Report>>,
    /// Set while nothing is queued or in flight.
    idle: Arc<AtomicBool>,
}

impl Sender {
    /// Adds events to the queue, then drops every queued event older than `discard-after`.
    fn enqueue(&mut self, events: impl IntoIterator<Item = SimEvent>) {
        self.pending.extend(events);
        let oldest = now() - self.discard_after;
        let before = self.pending.len();
        self.pending.retain(|e| e.created >= oldest);
        self.report.lock().unwrap().discarded += (before - self.pending.len()) as u64;
    }

    fn body(&mut self, batch: &[SimEvent]) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch.len() * 256 + 16);
        out.extend_from_slice(b"{\"events\":[");
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let id = match self.ids {
                Ids::V015 => format!("{}{}", e.created, e.type_id),
                Ids::V016Late => {
                    self.counter += 1;
                    format!("{}{}{}", e.created, self.counter, e.type_id)
                }
            };
            out.extend_from_slice(b"{\"id\":\"");
            out.extend_from_slice(id.as_bytes());
            out.push(b'"');
            out.extend_from_slice(e.tail.as_bytes());
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// The sender loop, until the event channel closes.
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Vec<SimEvent>>) {
        let mut in_flight: Option<tokio::task::JoinHandle<(Vec<SimEvent>, bool)>> = None;
        let mut last_start: Option<Instant> = None;
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(events) => self.enqueue(events),
                    None => {
                        // The test is over: let the last POST finish before the server stops.
                        if let Some(last) = in_flight.take() {
                            let _ = last.await;
                        }
                        break;
                    }
                },
                done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    let (batch, ok) = done.expect("the POST task does not panic");
                    if !ok {
                        // Put back, after the newer events; the retry waits for the next event.
                        self.enqueue(batch);
                    }
                    self.idle.store(self.pending.is_empty(), Ordering::SeqCst);
                    continue;
                }
            }
            // An event arrived: the only moment the sender looks at its queue.
            let throttled = last_start.is_some_and(|t| t.elapsed() < self.throttle);
            if in_flight.is_some() || throttled || self.pending.is_empty() {
                self.idle.store(in_flight.is_none() && self.pending.is_empty(), Ordering::SeqCst);
                continue;
            }
            let batch = std::mem::take(&mut self.pending);
            let body = self.body(&batch);
            last_start = Some(Instant::now());
            self.idle.store(false, Ordering::SeqCst);
            let (addr, timeout, report) = (self.addr, self.timeout, self.report.clone());
            {
                let mut r = report.lock().unwrap();
                r.posts += 1;
                r.largest_batch = r.largest_batch.max(batch.len());
            }
            in_flight = Some(tokio::spawn(async move {
                let sig = sign(KEY, &body);
                let headers = [("Content-Type", "application/json"), ("X-Signature", sig.as_str())];
                let answer = tokio::time::timeout(
                    timeout,
                    request(addr, "POST", "/api/telemetry/webhook", &headers, &body),
                )
                .await;
                let mut r = report.lock().unwrap();
                let ok = match answer {
                    Err(_) => {
                        r.timeouts += 1;
                        false
                    }
                    Ok(resp) => {
                        if std::env::var("SIM_DEBUG").is_ok() {
                            eprintln!(
                                "{} {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body[..resp.body.len().min(300)])
                            );
                        }
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body) {
                            r.duplicates += v["duplicates"].as_u64().unwrap_or(0);
                        }
                        (200..300).contains(&resp.status)
                    }
                };
                if !ok {
                    r.failures += 1;
                }
                (batch, ok)
            }));
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn rfc3339(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The counted event number `n`.
fn counted(n: u64, created: i64) -> SimEvent {
    let span = 10_000 + n / 8;
    let tail = format!(
        r#","createdAt":"{}","type":"{COUNTED}","data":{{"spanId":{span},"messageId":{n},"to":"user{}@example.org","remoteIp":"192.0.2.{}"}}}}"#,
        rfc3339(created),
        n % 97,
        n % 250
    );
    SimEvent { created, type_id: 312, tail: tail.into() }
}

/// An idle-traffic event (not counted).
fn idle_event(k: u64, created: i64) -> SimEvent {
    let tail =
        format!(r#","createdAt":"{}","type":"server.tick","data":{{"total":{k}}}}}"#, rfc3339(created));
    SimEvent { created, type_id: 7, tail: tail.into() }
}

/// Holds one ring slot unpublished until the returned sender is dropped, so the ring fills up
/// behind it.
fn block_ring(server: &Server) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let hub = server.hub.clone();
    let text = br#"{"type":"sim.blocker","data":{"total":0}}"#;
    let ev = Arc::new(hub.builder().build(&RawValue::parse_serde(text).unwrap(), 0).unwrap());
    let (reserved_tx, reserved_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let ring = hub.ring.clone();
    let t = std::thread::spawn(move || {
        ring.try_publish(1, |_| {
            let _ = reserved_tx.send(());
            let _ = release_rx.recv();
            ev.clone()
        })
        .expect("one slot");
    });
    reserved_rx.recv().unwrap();
    (release_tx, t)
}

/// A scenario: the sender's settings, the counted traffic, and what happens to the ring.
struct Scenario {
    ids: Ids,
    timeout: Duration,
    /// Counted events per second and for how many seconds.
    rate: u64,
    secs: u64,
    /// Ring outages: (start after, length), from the start of the traffic.
    outages: Vec<(Duration, Duration)>,
    ring_capacity: usize,
    ingest_wait_ms: u64,
}

/// Runs `s` against a fresh server; returns the sender's report after checking that every
/// counted event reached the subscriber exactly once.
async fn run(s: Scenario) -> Report {
    let server = start_server(|c| {
        c.webhook_key = Some(KEY.into());
        c.ring_capacity = s.ring_capacity;
        c.subscriber_queue = 1 << 20;
        c.ingest_wait_ms = s.ingest_wait_ms;
        // As the operator sets it: the sender's own timeout.
        c.webhook_sender_timeout_secs = s.timeout.as_secs();
    })
    .await;
    let addr = server.addr;
    let mut sub =
        SseClient::connect(addr, &format!("/api/telemetry/traces/live?event={COUNTED}"), Some(TOKEN)).await;
    assert_eq!(sub.status, 200);

    let report = Arc::new(Mutex::new(Report::default()));
    let idle = Arc::new(AtomicBool::new(true));
    let (tx, rx) = mpsc::unbounded_channel::<Vec<SimEvent>>();
    let sender = Sender {
        addr,
        ids: s.ids,
        throttle: Duration::from_secs(1),
        timeout: s.timeout,
        discard_after: 300,
        pending: Vec::new(),
        counter: 0,
        report: report.clone(),
        idle: idle.clone(),
    };
    let sender_task = tokio::spawn(sender.run(rx));

    // The idle trickle: one event every 50 ms until the test is over.
    let stop_idle = Arc::new(AtomicBool::new(false));
    let idle_task = {
        let (tx, stop) = (tx.clone(), stop_idle.clone());
        tokio::spawn(async move {
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                k += 1;
                if tx.send(vec![idle_event(k, now())]).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The counted traffic, in 10 ms steps, and the outages on their schedule.
    let total = s.rate * s.secs;
    let counted_task = {
        let tx = tx.clone();
        let rate = s.rate;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while sent < total {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                let created = now();
                let batch: Vec<_> = (sent..due).map(|n| counted(n, created)).collect();
                sent = due;
                if !batch.is_empty() {
                    tx.send(batch).unwrap();
                }
            }
        })
    };
    let started = Instant::now();
    for (at, length) in &s.outages {
        tokio::time::sleep_until(started + *at).await;
        let (release, blocker) = block_ring(&server);
        tokio::time::sleep(*length).await;
        drop(release);
        blocker.join().unwrap();
    }
    counted_task.await.unwrap();

    // Read the subscriber until every counted event arrived (or the deadline passed).
    let mut seen = vec![0u32; total as usize];
    let mut distinct = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let read = |frame: &Frame, seen: &mut Vec<u32>, distinct: &mut u64| {
        for part in frame.data.split("\"messageId\":").skip(1) {
            let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
            let n: usize = digits.parse().unwrap();
            if n < seen.len() {
                if seen[n] == 0 {
                    *distinct += 1;
                }
                seen[n] += 1;
            }
        }
    };
    while distinct < total && Instant::now() < deadline {
        if let Some(f) = sub.next_frame(Duration::from_secs(5)).await {
            assert_ne!(f.event, "lagged", "the subscriber fell behind: the test cannot count");
            if f.event == "trace" {
                read(&f, &mut seen, &mut distinct);
            }
        }
    }
    // The sender empties its queue (the idle trickle wakes it), then a marker published after
    // everything it sent shows that nothing more is on its way.
    let drained = Instant::now() + Duration::from_secs(60);
    while !idle.load(Ordering::SeqCst) && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_idle.store(true, Ordering::SeqCst);
    idle_task.await.unwrap();
    drop(tx);
    sender_task.await.unwrap();
    let marker = format!(r#"{{"type":"{COUNTED}","data":{{"messageId":{total},"to":"marker"}}}}"#);
    let r = ingest(addr, format!("{marker}\n").as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut marker_seen = false;
    while !marker_seen && Instant::now() < deadline + Duration::from_secs(30) {
        let Some(f) = sub.next_frame(Duration::from_secs(5)).await else { continue };
        assert_ne!(f.event, "lagged");
        if f.event == "trace" {
            marker_seen = f.data.contains("\"to\":\"marker\"");
            read(&f, &mut seen, &mut distinct);
        }
    }
    assert!(marker_seen, "the marker arrived");
    let report = std::mem::take(&mut *report.lock().unwrap());
    let missing: Vec<usize> = seen.iter().enumerate().filter(|(_, &c)| c == 0).map(|(i, _)| i).collect();
    let doubled: Vec<usize> = seen.iter().enumerate().filter(|(_, &c)| c > 1).map(|(i, _)| i).collect();
    let st = stats(addr).await;
    eprintln!("{report:?}; livetap accepted {} refused_batches {}", st["accepted"], st["refused_batches"]);
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "{} of {total} events missing (first {:?}), {} delivered more than once (first {:?}); {report:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        doubled.len(),
        &doubled[..doubled.len().min(5)],
    );
    assert_eq!(report.discarded, 0, "nothing was older than the sender's discard-after");
    server.shutdown().await;
    report
}

/// A 30 s outage in which the ring is full: livetap answers 503 for as long as it lasts, the
/// sender's batch grows with every resend, and once the ring drains the next resend goes
/// through. The request that filled the ring was partly published; its resends publish only
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_ring_full_outage_loses_and_repeats_nothing() {
    let r = run(Scenario {
        ids: Ids::V016Late,
        timeout: Duration::from_secs(30),
        rate: 2_000,
        secs: 40,
        outages: vec![(Duration::from_secs(4), Duration::from_secs(30))],
        ring_capacity: 4096,
        ingest_wait_ms: 250,
    })
    .await;
    assert!(r.failures >= 20, "the outage refused the sender's batches for its whole length: {r:?}");
    assert!(r.largest_batch >= 50_000, "the refused batch grew with every resend: {r:?}");
}

/// A burst of 50,000 events/s for 5 s, sent as v0.15 does (ids that repeat within a second):
/// batches of tens of thousands of events and megabytes, each taken as a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_fifty_thousand_events_a_second_arrives_exactly_once() {
    let r = run(Scenario {
        ids: Ids::V015,
        timeout: Duration::from_secs(30),
        rate: 50_000,
        secs: 5,
        outages: Vec::new(),
        ring_capacity: 65_536,
        ingest_wait_ms: 250,
    })
    .await;
    assert!(r.largest_batch >= 20_000, "the burst made large batches: {r:?}");
}

/// Answers slower than the sender's timeout: the ring is held for five seconds at a time (full
/// for about four of them) while livetap waits up to six for room, and the sender gives up
/// after two. livetap publishes
/// what it took (or what it had taken when the sender closed the connection), and the resends
/// of those events are recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_after_the_sender_timed_out_are_recognised() {
    let r = run(Scenario {
        ids: Ids::V016Late,
        timeout: Duration::from_secs(2),
        rate: 3_000,
        secs: 14,
        outages: (0..2).map(|i| (Duration::from_secs(2 + 7 * i), Duration::from_secs(5))).collect(),
        ring_capacity: 2048,
        ingest_wait_ms: 6_000,
    })
    .await;
    assert!(r.timeouts >= 3, "the sender timed out: {r:?}");
    assert!(r.duplicates > 0, "livetap recognised resends: {r:?}");
}
