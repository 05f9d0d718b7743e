//! The matcher pool: plain OS threads that read the ring and hand events to subscriber queues.
//!
//! Subscribers are sharded across threads (`id % threads`); each thread reads *every* event
//! from the ring in sequence order and matches it against its own shard's compiled index, so
//! each subscriber is fed by exactly one shard and receives events in global order. Span
//! following state is per shard for the same reason: no reordering.
//!
//! While a thread sleeps, a producer that has just published a few events may match them for
//! the thread's shard itself ([`Helper`]), holding the lock the thread holds while it works:
//! one shard, one cursor, one order, whoever runs it.
//!
//! Matcher threads never await and never block on a subscriber: a full queue drops for that
//! subscriber alone (see `subscriber`). They park only when the ring is empty.

pub mod index;
pub mod registry;
pub mod replay;
pub mod spans;

use crate::event::Event;
use crate::matcher::replay::ReplayLog;
use crate::metrics::{EventCounter, MetricsRegistry};
use crate::ring::{Consumer, Ring};
use crate::subscriber::Push;
use crossbeam_utils::CachePadded;
use index::{CompiledIndex, Scratch};
use parking_lot::Mutex;
use registry::Registry;
use spans::SpanTable;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A monotonic millisecond clock shared by the hub (cheap to read, coarse enough for lag and
/// span expiry).
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    /// Milliseconds since the clock started.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Settings of the matcher pool.
#[derive(Debug, Clone)]
pub struct MatcherConfig {
    /// Events read from the ring per batch.
    pub batch: usize,
    /// Span-follow entries kept per thread at most.
    pub max_spans: usize,
    /// Span-follow entries idle longer than this expire.
    pub span_ttl: Duration,
    /// The replay log that thread 0 appends every event to, in order (for resuming streams).
    pub replay: Option<Arc<ReplayLog>>,
}

/// Counters of one matcher thread.
#[derive(Debug, Default)]
pub struct MatcherStats {
    /// Events read from the ring.
    pub events: AtomicU64,
    /// Events queued to subscribers (sum over subscribers).
    pub deliveries: AtomicU64,
    /// Events a full subscriber queue refused.
    pub drops: AtomicU64,
    /// Span-follow entries currently held.
    pub spans: AtomicU64,
    /// Events of this shard matched by a producer while the thread slept (included in
    /// `events`; see [`Helper`]).
    pub helped: AtomicU64,
}

/// How many events a producer matches on a sleeping matcher's behalf at most (see
/// [`Helper`]). A backlog larger than this goes to the matcher thread, so a busy producer's
/// task never takes on more than a few hundred microseconds of matching.
const HELP_MAX: u64 = 64;

/// One shard's matching state: the ring consumer, the index, and the scratch and span state
/// that go with them. It sits behind a mutex so that either the shard's thread or, while that
/// thread sleeps, a producer that has just published, runs it; whoever holds it matches the
/// shard's events in sequence order, so a subscriber still sees one order.
struct ShardWorker {
    consumer: Consumer<Arc<Event>>,
    shard: Arc<arc_swap::ArcSwap<CompiledIndex>>,
    config: MatcherConfig,
    clock: Clock,
    stats: Arc<MatcherStats>,
    counter: EventCounter,
    scratch: Scratch,
    spans: SpanTable,
    last_sweep: u64,
    to_wake: Vec<u32>,
    kept: Vec<Arc<Event>>,
}

impl ShardWorker {
    /// Matches one batch of the events published so far and wakes the subscribers it queued
    /// to; returns how many events it read. `wait` says whether a slot reserved but not yet
    /// stamped is waited for (the thread) or ends the batch (a producer's task).
    fn step(&mut self, wait: bool) -> usize {
        let (idx, limit) = load_consistent(&self.shard, self.consumer.ring());
        let now = self.clock.now_ms();
        let mut deliveries = 0u64;
        let mut drops = 0u64;
        let first = self.consumer.cursor();
        let keep = self.config.replay.is_some();
        let ShardWorker { scratch, spans, to_wake, kept, counter, .. } = self;
        let on_event = |seq: u64, ev: &Arc<Event>| {
            if keep {
                kept.push(ev.clone());
            }
            // Live metrics: this shard counts its sequence-number share of the events.
            counter.observe(seq, ev);
            idx.begin(scratch);
            idx.match_event(ev, scratch);
            if let Some(span) = ev.span_id {
                spans.follow(span, ev.parent_span, ev.span_end, now, &idx, scratch);
            }
            for &d in &scratch.out {
                let sub = idx.sub(d);
                if sub.is_closed() {
                    continue;
                }
                match sub.push_event_quiet(seq, ev, now) {
                    Push::Queued { wake } => {
                        deliveries += 1;
                        if wake {
                            to_wake.push(d);
                        }
                    }
                    Push::Dropped => drops += 1,
                }
            }
        };
        let batch = self.config.batch;
        let n = if wait {
            self.consumer.consume(limit, batch, on_event)
        } else {
            self.consumer.consume_published(limit, batch, on_event)
        };
        if let Some(log) = &self.config.replay {
            // Appended once per batch, before the wakes: a resuming subscriber waits until the
            // log has reached its start position, so it never waits on a sleeping writer. The
            // log takes the handles over (`kept` is left empty).
            log.append(first, &mut self.kept, now);
        }
        self.kept.clear();
        // One wake per subscriber per batch, after the batch: a subscriber matched by several
        // events of the batch costs one notification, and its writer finds all of them queued
        // when it runs.
        for d in self.to_wake.drain(..) {
            idx.sub(d).wake();
        }
        if n > 0 {
            self.stats.events.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.deliveries.fetch_add(deliveries, Ordering::Relaxed);
            self.stats.drops.fetch_add(drops, Ordering::Relaxed);
        }
        if now.saturating_sub(self.last_sweep) >= 1000 {
            self.last_sweep = now;
            self.spans.expire(now);
            self.stats.spans.store(self.spans.len() as u64, Ordering::Relaxed);
        }
        n
    }
}

/// A shard's worker, padded so two shards' locks never share a cache line.
type Shard = CachePadded<Mutex<ShardWorker>>;

/// What producers use to match on behalf of sleeping matcher threads.
///
/// Why: at a low event rate every matcher thread is asleep when an event arrives, and waking
/// it is a futex call, a scheduler hand-off and, on a VM, an inter-processor interrupt: tens of
/// microseconds before matching starts, and as much again for every subscriber writer the
/// thread then wakes on the I/O threads. A producer task that finds the thread asleep matches
/// the few events itself instead, on the I/O thread it already runs on, where the writers it
/// wakes are queued locally and run next. A larger backlog, or a thread that is awake, is left
/// to the thread, so at high rates matching stays off the producers' path.
#[derive(Clone)]
pub struct Helper {
    shards: Arc<[Shard]>,
    ring: Arc<Ring<Arc<Event>>>,
}

impl Helper {
    /// Called after a quiet publish ([`Ring::try_publish_vec_quiet`]) of the events below
    /// `end`: for each shard whose thread sleeps, matches them here when the backlog is small
    /// and the shard is free, and otherwise wakes the thread. Never blocks and never waits for
    /// another producer.
    pub fn after_publish(&self, end: u64) {
        for (i, shard) in self.shards.iter().enumerate() {
            if !self.ring.consumer_sleeping(i) {
                // Awake: it sees the new events on its own.
                continue;
            }
            if let Some(mut w) = shard.try_lock() {
                let from = w.consumer.cursor();
                if end.saturating_sub(from) <= HELP_MAX {
                    while w.consumer.cursor() < end && w.step(false) > 0 {}
                    let done = w.consumer.cursor();
                    w.stats.helped.fetch_add(done - from, Ordering::Relaxed);
                    if done >= end {
                        continue;
                    }
                }
            }
            // Held elsewhere, too much, or an earlier producer's slot not yet stamped.
            self.ring.wake_consumer(i);
        }
    }
}

/// The running pool.
pub struct MatcherPool {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    ring: Arc<Ring<Arc<Event>>>,
    helper: Helper,
    /// Per-thread counters.
    pub stats: Vec<Arc<MatcherStats>>,
}

impl MatcherPool {
    /// Starts one thread per consumer; thread `i` serves the registry's shard `i` and counts
    /// its share of the events into `metrics`.
    pub fn start(
        ring: Arc<Ring<Arc<Event>>>,
        consumers: Vec<Consumer<Arc<Event>>>,
        registry: &Registry,
        config: MatcherConfig,
        clock: Clock,
        metrics: &Arc<MetricsRegistry>,
    ) -> std::io::Result<MatcherPool> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut stats = Vec::new();
        let mut shards = Vec::new();
        for (i, consumer) in consumers.into_iter().enumerate() {
            let st = Arc::new(MatcherStats::default());
            stats.push(st.clone());
            let mut config = config.clone();
            if i != 0 {
                // One writer keeps the log in sequence order without coordination.
                config.replay = None;
            }
            shards.push(CachePadded::new(Mutex::new(ShardWorker {
                consumer,
                shard: registry.shard(i),
                spans: SpanTable::new(config.max_spans, config.span_ttl.as_millis() as u64),
                config,
                clock,
                stats: st,
                counter: metrics.event_counter(i),
                scratch: Scratch::default(),
                last_sweep: 0,
                to_wake: Vec::new(),
                kept: Vec::new(),
            })));
        }
        let helper = Helper { shards: shards.into(), ring: ring.clone() };
        let mut threads = Vec::new();
        for i in 0..helper.shards.len() {
            let shards = helper.shards.clone();
            let ring = ring.clone();
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("livetap-match-{i}"))
                .spawn(move || run(&shards[i], i, &ring, &stop))?;
            threads.push(t);
        }
        Ok(MatcherPool { threads, stop, ring, helper, stats })
    }

    /// The handle producers match through when a thread sleeps.
    pub fn helper(&self) -> Helper {
        self.helper.clone()
    }

    /// Asks the threads to finish what the ring holds and exit, and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.ring.wake_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Loads the shard's index and the ring head such that every event at or after the head
/// returned to a registering subscriber is matched with an index that contains it.
///
/// The registry stores a new index, then reads the ring head `H` and tells the subscriber that
/// it receives everything from `H` on. Here we load the index, read the head, and load the
/// index again: if both loads saw the same index, our head read came before the registry's
/// store, so our limit is at most `H` and all events we are about to match predate `H`.
fn load_consistent(
    shard: &arc_swap::ArcSwap<CompiledIndex>,
    ring: &Ring<Arc<Event>>,
) -> (Arc<CompiledIndex>, u64) {
    loop {
        let idx = shard.load_full();
        let limit = ring.head();
        if Arc::ptr_eq(&idx, &shard.load()) {
            return (idx, limit);
        }
    }
}

/// A matcher thread: matches its shard while there is work, holding the shard's lock, and
/// sleeps without it, so a producer may match a trickle of events meanwhile.
fn run(shard: &Shard, index: usize, ring: &Ring<Arc<Event>>, stop: &AtomicBool) {
    loop {
        {
            let mut w = shard.lock();
            while w.step(true) > 0 {}
            if stop.load(Ordering::SeqCst) && w.consumer.cursor() >= ring.head() {
                return;
            }
        }
        ring.wait_consumer(index, Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder, RawValue};
    use crate::matcher::registry::Subscription;
    use crate::query::ast::Expr;
    use crate::subscriber::Item;

    struct Setup {
        ring: Arc<Ring<Arc<Event>>>,
        registry: Registry,
        pool: MatcherPool,
        events: Vec<Arc<Event>>,
    }

    /// A ring and registry with `shards` matcher threads, and 64 distinct events to publish.
    fn setup(shards: usize, ring_slots: usize) -> Setup {
        let (catalogue, keys) = Catalogue::with_keys(64);
        let (ring, consumers) = Ring::new(ring_slots, shards);
        let registry = Registry::new(shards, 100, 1 << 20, ring.clone()).unwrap();
        let metrics = MetricsRegistry::new(&catalogue, &keys, shards, 16);
        let config =
            MatcherConfig { batch: 256, max_spans: 16, span_ttl: Duration::from_secs(60), replay: None };
        let pool =
            MatcherPool::start(ring.clone(), consumers, &registry, config, Clock::new(), &metrics).unwrap();
        let events = (0..64)
            .map(|i| {
                let json = format!(r#"{{"type":"smtp.connection-start","data":{{"remotePort":{i}}}}}"#);
                let raw = RawValue::parse_serde(json.as_bytes()).unwrap();
                Arc::new(EventBuilder::new(&catalogue, &keys).build(&raw, 0).unwrap())
            })
            .collect();
        Setup { ring, registry, pool, events }
    }

    /// Publishes `n` events the way the hub does: quietly, then helping or waking.
    fn publish(s: &Setup, helper: &Helper, n: usize) {
        let mut batch: Vec<_> = (0..n).map(|i| s.events[i % s.events.len()].clone()).collect();
        let mut displaced = Vec::new();
        loop {
            match s.ring.try_publish_vec_quiet(&mut batch, &mut displaced) {
                Ok(first) => {
                    helper.after_publish(first + n as u64);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    }

    /// Sequence numbers queued to `sub` so far.
    fn drained(sub: &Subscription, into: &mut Vec<u64>) {
        let mut items = Vec::new();
        sub.sub.drain_into(&mut items, usize::MAX);
        for item in items {
            match item {
                Item::Event { seq, .. } | Item::Tapped { seq, .. } => into.push(seq),
                Item::Lagged(n) => panic!("{n} events dropped"),
            }
        }
    }

    fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[tokio::test]
    async fn a_producer_matches_a_trickle_itself_while_the_thread_sleeps() {
        let s = setup(1, 1024);
        let helper = s.pool.helper();
        let sub = s.registry.subscribe(Expr::True, false, None).await.unwrap();
        let mut seen = Vec::new();
        // Whenever the thread sleeps, a small batch is matched before `after_publish` returns;
        // the thread may wake on its own between the check and the publish, so try a few times.
        let mut inline = 0;
        for round in 0..20u64 {
            until("the matcher thread to sleep", || s.ring.consumer_sleeping(0));
            publish(&s, &helper, 3);
            let before = seen.len();
            drained(&sub, &mut seen);
            if seen.len() == before + 3 {
                inline += 1;
            }
            until("the round's events", || {
                drained(&sub, &mut seen);
                seen.len() as u64 == 3 * (round + 1)
            });
        }
        assert!(inline > 0, "no batch was matched by its producer");
        assert_eq!(seen, (0..60).collect::<Vec<_>>());
        let st = &s.pool.stats[0];
        assert_eq!(st.events.load(Ordering::Relaxed), 60);
        assert!(st.helped.load(Ordering::Relaxed) >= 3 * inline);
        // A backlog over the bound is left to the thread, which is woken for it.
        until("the matcher thread to sleep", || s.ring.consumer_sleeping(0));
        let helped = st.helped.load(Ordering::Relaxed);
        publish(&s, &helper, HELP_MAX as usize + 1);
        until("the large batch", || {
            drained(&sub, &mut seen);
            seen.len() == 60 + HELP_MAX as usize + 1
        });
        assert_eq!(st.helped.load(Ordering::Relaxed), helped);
        s.pool.stop();
    }

    #[tokio::test]
    async fn producers_and_threads_sharing_the_matching_keep_order_and_lose_nothing() {
        // Two shards, a small ring (so producers also meet a full ring), and producers that
        // publish batches on both sides of the help bound, with pauses that let the threads
        // fall asleep: every subscriber must see every event once, in sequence order.
        let s = setup(2, 256);
        let helper = s.pool.helper();
        let mut subs = Vec::new();
        for _ in 0..4 {
            subs.push(s.registry.subscribe(Expr::True, false, None).await.unwrap());
        }
        let start = subs.iter().map(|x| x.start).max().unwrap();
        assert_eq!(start, 0);
        let mut seen = vec![Vec::new(); subs.len()];
        std::thread::scope(|scope| {
            let producers: Vec<_> = (0..3u64)
                .map(|p| {
                    let (s, helper) = (&s, &helper);
                    scope.spawn(move || {
                        let mut rng = fastrand::Rng::with_seed(p);
                        for _ in 0..300 {
                            let n = if rng.u8(..) < 200 { rng.usize(1..8) } else { rng.usize(60..200) };
                            publish(s, helper, n);
                            if rng.u8(..) < 30 {
                                std::thread::sleep(Duration::from_micros(rng.u64(50..3000)));
                            }
                        }
                    })
                })
                .collect();
            // Read while the producers run, so the queues stay short, then until every
            // subscriber has everything that was published.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                for (sub, seen) in subs.iter().zip(seen.iter_mut()) {
                    drained(sub, seen);
                }
                let finished = producers.iter().all(|p| p.is_finished());
                if finished && seen.iter().all(|v| v.len() as u64 >= s.ring.head()) {
                    break;
                }
                assert!(Instant::now() < deadline, "events went missing");
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let expected: Vec<u64> = (0..s.ring.head()).collect();
        for v in &seen {
            assert_eq!(v, &expected);
        }
        let helped: u64 = s.pool.stats.iter().map(|st| st.helped.load(Ordering::Relaxed)).sum();
        let events: u64 = s.pool.stats.iter().map(|st| st.events.load(Ordering::Relaxed)).sum();
        assert_eq!(events, 2 * s.ring.head());
        assert!(helped > 0 && helped < events, "helped {helped} of {events}");
        s.pool.stop();
    }
}
