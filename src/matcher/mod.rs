//! The matcher pool: plain OS threads that read the ring and hand events to subscriber queues.
//!
//! Subscribers are sharded across threads (`id % threads`); each thread reads *every* event
//! from the ring in sequence order and matches it against its own shard's compiled index, so
//! each subscriber is fed by exactly one thread and receives events in global order. Span
//! following state is per thread for the same reason: no locks, no reordering.
//!
//! Matcher threads never await and never block on a subscriber: a full queue drops for that
//! subscriber alone (see `subscriber`). They park only when the ring is empty.

pub mod index;
pub mod plan;
pub mod spans;

use crate::event::Event;
use crate::metrics::{EventCounter, MetricsRegistry};
use crate::ring::{Consumer, Ring};
use crate::store::writer::HistoryWriter;
use crate::subscriber::replay::ReplayLog;
use crate::subscriber::{Push, Registry};
use index::{CompiledIndex, Scratch};
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
    /// The history writer that thread 0 offers every event to, in order (never blocking).
    pub history: Option<Arc<HistoryWriter>>,
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
}

/// The running pool.
pub struct MatcherPool {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    ring: Arc<Ring<Arc<Event>>>,
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
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        for (i, consumer) in consumers.into_iter().enumerate() {
            let shard = registry.shard(i);
            let st = Arc::new(MatcherStats::default());
            stats.push(st.clone());
            let stop = stop.clone();
            let mut config = config.clone();
            if i != 0 {
                // One writer keeps the log and the history in sequence order without coordination.
                config.replay = None;
                config.history = None;
            }
            let counter = metrics.event_counter(i);
            let t = std::thread::Builder::new()
                .name(format!("livetap-match-{i}"))
                .spawn(move || run(consumer, shard, config, clock, st, stop, counter))?;
            threads.push(t);
        }
        Ok(MatcherPool { threads, stop, ring, stats })
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

fn run(
    mut consumer: Consumer<Arc<Event>>,
    shard: Arc<arc_swap::ArcSwap<CompiledIndex>>,
    config: MatcherConfig,
    clock: Clock,
    stats: Arc<MatcherStats>,
    stop: Arc<AtomicBool>,
    mut counter: EventCounter,
) {
    let mut scratch = Scratch::default();
    let mut spans = SpanTable::new(config.max_spans, config.span_ttl.as_millis() as u64);
    let mut last_sweep = 0u64;
    let mut to_wake: Vec<u32> = Vec::new();
    let mut kept: Vec<Arc<Event>> = Vec::new();
    loop {
        let (idx, limit) = load_consistent(&shard, consumer.ring());
        let now = clock.now_ms();
        let mut deliveries = 0u64;
        let mut drops = 0u64;
        let first = consumer.cursor();
        let n = consumer.consume(limit, config.batch, |seq, ev| {
            if config.replay.is_some() || config.history.is_some() {
                kept.push(ev.clone());
            }
            // Live metrics: this thread counts its sequence-number share of the events.
            counter.observe(seq, ev);
            idx.begin(&mut scratch);
            idx.match_event(ev, &mut scratch);
            if let Some(span) = ev.span_id {
                spans.follow(span, ev.span_end, now, &idx, &mut scratch);
            }
            for &d in &scratch.out {
                let sub = idx.sub(d);
                if sub.is_closed() {
                    continue;
                }
                match sub.push_quiet(seq, &ev.wire, now) {
                    Push::Queued { wake } => {
                        deliveries += 1;
                        if wake {
                            to_wake.push(d);
                        }
                    }
                    Push::Dropped => drops += 1,
                }
            }
        });
        if let Some(w) = &config.history {
            // A full history queue drops (counted by the writer); matching never waits for disk.
            w.submit_batch(first, &kept);
        }
        if let Some(log) = &config.replay {
            // Appended once per batch, before the wakes: a resuming subscriber waits until the
            // log has reached its start position, so it never waits on a sleeping writer. The
            // log takes the handles over (`kept` is left empty).
            log.append(first, &mut kept, now);
        }
        kept.clear();
        // One wake per subscriber per batch, after the batch: a subscriber matched by several
        // events of the batch costs one cross-thread notification, and its writer finds all of
        // them queued when it runs.
        for d in to_wake.drain(..) {
            idx.sub(d).wake();
        }
        if n > 0 {
            stats.events.fetch_add(n as u64, Ordering::Relaxed);
            stats.deliveries.fetch_add(deliveries, Ordering::Relaxed);
            stats.drops.fetch_add(drops, Ordering::Relaxed);
        }
        if now.saturating_sub(last_sweep) >= 1000 {
            last_sweep = now;
            spans.expire(now);
            stats.spans.store(spans.len() as u64, Ordering::Relaxed);
        }
        if n == 0 {
            if stop.load(Ordering::SeqCst) && consumer.cursor() >= consumer.ring().head() {
                return;
            }
            consumer.wait(Duration::from_millis(200));
        }
    }
}
