//! The hub: wires ring, registry, matcher pool and counters together, publishes, shuts down.
//!
//! Everything that runs the pipeline hangs off one [`Hub`], shared as `Arc<Hub>` by the HTTP
//! handlers and the event sources. Its shutdown follows the promise made to producers: stop
//! accepting, match everything already accepted, let every subscriber receive what it was
//! queued, then close the streams. It also holds the live metrics registry, which the matcher
//! threads count events into and the metrics endpoints read.
//!
//! - [`stats`]: the counters of `/api/livetap/stats` (ingest, rejections, backpressure) and
//!   the snapshot [`Hub::stats`] reads from them.
//! - [`own`]: livetap's own samples in the live metrics, computed from that snapshot.

pub mod own;
pub mod stats;

pub use stats::{IngestStats, StatsSnapshot, SubscriberStats};

use crate::config::Config;
use crate::event::dialect::Dialects;
use crate::event::{Catalogue, Event, EventBuilder, KeyKind, KeyRegistry};
use crate::ingest::pool::ParsePool;
use crate::matcher::registry::Registry;
use crate::matcher::registry::RegistryError;
use crate::matcher::replay::{OlderEvents, ReplayLog};
use crate::matcher::{Clock, Helper, MatcherConfig, MatcherPool, MatcherStats};
use crate::metrics::query::NameFilter;
use crate::metrics::{MetricValue, MetricsRegistry};
use crate::query::{parse_pairs, ParseError};
use crate::ring::lease::{SeqLease, LEASE_BLOCK};
use crate::ring::{Ring, RingError};
use crate::sse::Closing;
use crate::store::writer::HistoryWriter;
use crate::store::{History, HistoryStore};
use crate::tap::{Tap, TapHandle, TapStats};
use own::own_values;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a batch could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The ring stayed full for the whole wait; nothing of the batch was accepted.
    #[error("the hub is busy: the event ring is full")]
    Busy,
    /// The batch can never fit in the ring.
    #[error("batch of {0} events is larger than the event ring; send smaller batches")]
    TooLarge(u64),
    /// The hub is shutting down and accepts nothing new.
    #[error("the hub is shutting down")]
    ShuttingDown,
}

/// A receiver of a one-way `false` → `true` signal that reports a change already made.
fn signal(tx: &tokio::sync::watch::Sender<bool>) -> tokio::sync::watch::Receiver<bool> {
    let mut rx = tx.subscribe();
    if *rx.borrow() {
        rx.mark_changed();
    }
    rx
}

/// Why a tap could not be added.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Its query does not parse.
    #[error("tap `{0}`: invalid query: {1}")]
    Query(String, ParseError),
    /// The hub is shutting down.
    #[error("tap `{0}`: {1}")]
    Registry(String, RegistryError),
    /// Its thread could not be started.
    #[error("tap `{0}`: cannot start its thread: {1}")]
    Thread(String, std::io::Error),
}

/// The running pipeline.
pub struct Hub {
    /// The configuration the hub started with. Settings that need a restart (listen address,
    /// ring capacity, threads, data directory, subscriber queue) are read here; settings a
    /// reload may change are read through [`Hub::current`].
    pub config: Config,
    /// The configuration in force: stored whole by a reload (`Server::reload`), loaded by
    /// request and connection handlers (never per event) for the limits they apply.
    live: arc_swap::ArcSwap<Config>,
    /// The admin bearer token.
    pub admin_token: String,
    /// Event types, keys and metrics of the catalogue.
    pub catalogue: Catalogue,
    /// Known event keys.
    pub keys: KeyRegistry,
    /// The event ring.
    pub ring: Arc<Ring<Arc<Event>>>,
    /// Live subscribers and their indexes.
    pub registry: Registry,
    /// The most recent events, for streams that resume (`Last-Event-ID`, `since=`).
    pub replay: Arc<ReplayLog>,
    /// Ingest counters.
    pub ingest: IngestStats,
    /// The hub's millisecond clock.
    pub clock: Clock,
    /// Set when streams should end once drained.
    pub closing: Arc<Closing>,
    /// The live metrics: event counters (fed by the matcher threads), gauges, histograms.
    pub metrics: Arc<MetricsRegistry>,
    /// The history store, for queries, whatever its backend (`None` when history is off or
    /// has no data dir).
    pub history_store: Option<Arc<dyn HistoryStore>>,
    /// The history writer, fed by matcher thread 0 and the metric sampler.
    pub history_writer: Option<Arc<HistoryWriter>>,
    /// The on-disk reservation of event ids (with a data directory).
    lease: Mutex<Option<SeqLease>>,
    /// The first id not reserved on disk (`u64::MAX` without a data directory).
    reserved: AtomicU64,
    accepting: AtomicBool,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    /// Counts configuration reloads that changed the principals; live metrics streams watch
    /// it and check their principal again when it moves.
    principals_tx: tokio::sync::watch::Sender<u64>,
    /// Turns `true` once everything accepted was matched, when live metrics streams end.
    streams_closed_tx: tokio::sync::watch::Sender<bool>,
    matchers: Mutex<Option<MatcherPool>>,
    /// Matches small batches on the publishing task while the matcher threads sleep.
    helper: Helper,
    matcher_stats: Vec<Arc<MatcherStats>>,
    /// The threads that parse socket ingest and free the events they built (`ingest::pool`).
    pub parse_pool: ParsePool,
    /// The running taps (`crate::tap`), in the order they were added.
    taps: Mutex<Vec<TapHandle>>,
    /// The wire dialects streams may speak besides the classic one (`event::dialect`).
    pub dialects: Dialects,
}

impl Hub {
    /// Builds the pipeline and starts the matcher threads and the index builder.
    pub fn start(config: Config, admin_token: String) -> std::io::Result<Arc<Hub>> {
        let threads = config.effective_matcher_threads();
        let (catalogue, keys) = Catalogue::with_keys(1024);
        for k in &config.keys {
            let kind = KeyKind::from_name(&k.kind).unwrap_or(KeyKind::String);
            keys.register(&k.name, kind);
        }
        // History first: its next sequence number is where the ring starts, so event ids stay
        // unique and increasing across restarts and a resume can reach into what is stored.
        let history = History::from_config(&config.history, config.data_dir.as_deref(), &keys)
            .map_err(std::io::Error::other)?;
        let start_seq = match &history {
            Some(h) => h.store.next_seq().map_err(std::io::Error::other)?,
            None => 0,
        };
        // With a data directory, ids are leased on disk so they stay unique across restarts
        // and crashes, including ids of events the history did not keep.
        let (lease, start_seq) = match config.data_dir.as_deref() {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let (mut lease, start) = SeqLease::open(dir, start_seq)?;
                lease.extend(start)?;
                (Some(lease), start)
            }
            None => (None, start_seq),
        };
        let reserved = AtomicU64::new(lease.as_ref().map_or(u64::MAX, |l| l.reserved()));
        let unknown_ids = lease.as_ref().map(|l| l.unknown_ids().to_vec()).unwrap_or_default();
        let history_store = history.as_ref().map(|h| h.store.clone());
        let history_writer = history.map(|h| Arc::new(h.writer));
        let (ring, consumers) = Ring::starting_at(config.ring_capacity, threads, start_seq);
        let registry = Registry::new(threads, config.max_subscribers, config.subscriber_queue, ring.clone())?;
        let clock = Clock::new();
        let replay = Arc::new(
            ReplayLog::starting_at(config.replay_limits(), start_seq).with_unknown_ids(&unknown_ids),
        );
        let metrics = MetricsRegistry::new(&catalogue, &keys, threads, config.max_metrics);
        let pool = MatcherPool::start(
            ring.clone(),
            consumers,
            &registry,
            MatcherConfig {
                batch: 256,
                max_spans: config.max_spans,
                span_ttl: Duration::from_secs(config.span_ttl_secs),
                replay: Some(replay.clone()),
            },
            clock,
            &metrics,
        )?;
        let parse_pool = ParsePool::start(std::thread::available_parallelism().map_or(2, |n| n.get()))?;
        let (shutdown_tx, _) = tokio::sync::watch::channel(false);
        let (streams_closed_tx, _) = tokio::sync::watch::channel(false);
        let (principals_tx, _) = tokio::sync::watch::channel(0u64);
        Ok(Arc::new(Hub {
            parse_pool,
            matcher_stats: pool.stats.clone(),
            helper: pool.helper(),
            matchers: Mutex::new(Some(pool)),
            live: arc_swap::ArcSwap::from_pointee(config.clone()),
            config,
            admin_token,
            catalogue,
            keys,
            ring,
            registry,
            replay,
            history_store,
            history_writer,
            lease: Mutex::new(lease),
            reserved,
            ingest: IngestStats::default(),
            clock,
            closing: Arc::new(Closing::default()),
            metrics,
            accepting: AtomicBool::new(true),
            shutdown_tx,
            streams_closed_tx,
            principals_tx,
            taps: Mutex::new(Vec::new()),
            dialects: Dialects::default(),
        }))
    }

    /// Adds a tap: its query is compiled into a matcher shard's index and its thread starts;
    /// from the moment this returns, every accepted event that matches the query reaches it
    /// (or is counted as dropped for it). Call before the sources start to miss nothing.
    pub async fn add_tap(self: &Arc<Self>, tap: Box<dyn Tap>) -> Result<(), TapError> {
        let name = tap.name().to_string();
        let query = parse_pairs(tap.query(), &self.keys, &self.config.query_limits())
            .map_err(|e| TapError::Query(name.clone(), e))?;
        let subscription = self
            .registry
            .subscribe_tap(query.expr, tap.queue_capacity())
            .await
            .map_err(|e| TapError::Registry(name.clone(), e))?;
        let closing = self.closing.clone();
        let handle = crate::tap::spawn(tap, subscription, move || closing.is_set())
            .map_err(|e| TapError::Thread(name, e))?;
        self.taps.lock().push(handle);
        Ok(())
    }

    /// The configuration in force (the start one until a reload stores another). Handlers
    /// load it once per request or connection.
    pub fn current(&self) -> Arc<Config> {
        self.live.load_full()
    }

    /// Puts `config` in force for every request and connection that starts from now on.
    pub fn set_current(&self, config: Config) {
        self.live.store(Arc::new(config));
    }

    /// The names of the running taps, in the order they were added.
    pub fn tap_names(&self) -> Vec<String> {
        self.taps.lock().iter().map(|t| t.name().to_string()).collect()
    }

    /// Removes the tap called `name`: its query leaves the index, and once every matcher has
    /// passed the last event matched with the old index its thread delivers what its queue
    /// holds, calls [`Tap::stop`] and ends. Returns once it ended; false when no tap has that
    /// name. Ingest and matching never wait for this.
    pub async fn remove_tap(&self, name: &str) -> Result<bool, TapError> {
        let Some(id) = self.taps.lock().iter().find(|t| t.name() == name).map(TapHandle::id) else {
            return Ok(false);
        };
        let (_, head) =
            self.registry.swap_tap(id, None).await.map_err(|e| TapError::Registry(name.to_string(), e))?;
        self.wait_matched(head).await;
        let handle = {
            let mut taps = self.taps.lock();
            let i = taps.iter().position(|t| t.id() == id);
            i.map(|i| taps.remove(i))
        };
        if let Some(mut h) = handle {
            h.stop();
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        Ok(true)
    }

    /// Replaces the tap called `name` by `tap` in one index generation of one shard: each
    /// event goes to exactly one of the two, the old tap delivers everything it was queued and
    /// stops before the new one's first delivery, so a file or spool they share is written in
    /// order. Without a tap of that name, `tap` is simply added.
    pub async fn replace_tap(self: &Arc<Self>, name: &str, tap: Box<dyn Tap>) -> Result<(), TapError> {
        let Some(id) = self.taps.lock().iter().find(|t| t.name() == name).map(TapHandle::id) else {
            return self.add_tap(tap).await;
        };
        let new_name = tap.name().to_string();
        let query = parse_pairs(tap.query(), &self.keys, &self.current().query_limits())
            .map_err(|e| TapError::Query(new_name.clone(), e))?;
        let (subscription, head) = self
            .registry
            .swap_tap(id, Some((query.expr, tap.queue_capacity())))
            .await
            .map_err(|e| TapError::Registry(new_name.clone(), e))?;
        let Some(subscription) = subscription else {
            return Err(TapError::Registry(new_name, RegistryError::Closed));
        };
        let mut old = {
            let mut taps = self.taps.lock();
            let i = taps.iter().position(|t| t.id() == id);
            i.map(|i| taps.remove(i))
        };
        let after = old.as_mut().and_then(TapHandle::take_finished);
        let closing = self.closing.clone();
        let spawned = crate::tap::spawn_after(tap, subscription, move || closing.is_set(), after)
            .map_err(|e| TapError::Thread(new_name, e));
        // On an error the old tap is out of the index already: it still ends below, as if
        // removed.
        let result = spawned.map(|handle| self.taps.lock().push(handle));
        // The old tap ends once no matcher can queue to it any more.
        self.wait_matched(head).await;
        if let Some(mut old) = old {
            old.stop();
            let _ = tokio::task::spawn_blocking(move || old.join()).await;
        }
        result
    }

    /// Waits until every matcher thread has matched every event below `head` (or shutdown
    /// began). A reload's wait, never ingest's.
    async fn wait_matched(&self, head: u64) {
        while self.ring.tail() < head && self.is_accepting() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The running taps' counters.
    pub fn tap_stats(&self) -> Vec<TapStats> {
        self.taps.lock().iter().map(TapHandle::stats).collect()
    }

    /// The history store as a resume's source of events older than the replay log (`None`
    /// without a history).
    pub fn older_events(self: &Arc<Self>) -> Option<Arc<dyn OlderEvents>> {
        self.history_store.is_some().then(|| self.clone() as Arc<dyn OlderEvents>)
    }

    /// A builder for events, reading this hub's catalogue and keys.
    pub fn builder(&self) -> EventBuilder<'_> {
        EventBuilder::new(&self.catalogue, &self.keys).with_max_bytes(self.config.max_event_bytes)
    }

    /// True until shutdown begins.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// A receiver that turns `true` when shutdown begins. Its `changed()` resolves at once
    /// when shutdown has already begun: a task started just before a shutdown (a server
    /// stopped right after it started) subscribes after the change, and would otherwise wait
    /// for a second change that never comes.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        signal(&self.shutdown_tx)
    }

    /// A receiver that turns `true` when live metrics streams should end (at shutdown, once
    /// everything accepted was matched and counted); already changed if that happened, as
    /// for [`Hub::shutdown_signal`].
    pub fn streams_closed_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        signal(&self.streams_closed_tx)
    }

    /// Tells the live metrics streams that the principals changed (a reload).
    pub fn principals_changed(&self) {
        self.principals_tx.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever a reload changed the principals.
    pub fn principals_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.principals_tx.subscribe()
    }

    /// The live metrics `filter` selects: the registry's readings and livetap's own, sorted by
    /// name.
    pub fn metric_values(&self, filter: &NameFilter) -> Vec<MetricValue> {
        let mut values = self.metrics.snapshot(filter);
        values.extend(own_values(&self.stats(), &self.metrics, filter));
        values.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        values
    }

    /// Publishes `events` as one batch (all or nothing), without waiting, and returns the
    /// sequence number of the first event. On success the events are moved into the ring
    /// (`events` is left empty) and the events they replace are appended to `displaced`, for
    /// the caller to drop where it costs least (see [`Ring::try_publish_vec`]: dropping them
    /// here would put a cache miss, and often the frees, of every old event on the
    /// producer's path). On an error `events` is untouched.
    ///
    /// A matcher thread that sleeps is not woken for a small batch: the batch is matched here,
    /// before this returns, and its subscribers' writers are woken from this thread
    /// ([`Helper::after_publish`]).
    pub fn try_publish(
        &self,
        events: &mut Vec<Arc<Event>>,
        displaced: &mut Vec<Arc<Event>>,
    ) -> Result<u64, PublishError> {
        if !self.is_accepting() {
            return Err(PublishError::ShuttingDown);
        }
        let n = events.len() as u64;
        if self.ring.head().saturating_add(n + LEASE_BLOCK / 2) > self.reserved.load(Ordering::Acquire) {
            self.extend_lease(n)?;
        }
        match self.ring.try_publish_vec_quiet(events, displaced) {
            Ok(first) => {
                IngestStats::add(&self.ingest.accepted, n);
                // Match a small batch here if the matcher threads sleep, or wake them.
                self.helper.after_publish(first + n);
                Ok(first)
            }
            Err(RingError::Full { .. }) => Err(PublishError::Busy),
            Err(RingError::TooLarge { wanted, .. }) => Err(PublishError::TooLarge(wanted)),
        }
    }

    /// Moves the on-disk id reservation ahead of the ring head plus `n`: one small synced
    /// write per half block (~500,000 events), made by whichever producer gets there first.
    #[cold]
    fn extend_lease(&self, n: u64) -> Result<(), PublishError> {
        let mut g = self.lease.lock();
        let Some(lease) = g.as_mut() else { return Ok(()) };
        // Producers may publish concurrently: reserve past anything they could claim now.
        let head = self.ring.head().saturating_add(n + self.ring.capacity());
        match lease.extend(head) {
            Ok(()) => {
                self.reserved.store(lease.reserved(), Ordering::Release);
                Ok(())
            }
            Err(e) => {
                // Without a reservation an id could repeat after a restart: refuse instead.
                tracing::error!(error = %e, "cannot reserve event ids in the data directory");
                Err(PublishError::Busy)
            }
        }
    }

    /// Publishes `events` as one batch, waiting for ring space up to `wait` (`None`: as long as
    /// it takes, until shutdown). This is how backpressure reaches producers.
    /// On success `events` is left empty, and the events they replaced go to the parse threads,
    /// which free each on the thread that built it ([`ParsePool::free`]), off the producer's
    /// path.
    pub async fn publish(
        &self,
        events: &mut Vec<Arc<Event>>,
        wait: Option<Duration>,
    ) -> Result<u64, PublishError> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut pause = Duration::from_micros(200);
        let mut displaced = Vec::new();
        loop {
            match self.try_publish(events, &mut displaced) {
                Err(PublishError::Busy) => {}
                Ok(first) => {
                    self.parse_pool.free(&mut displaced);
                    return Ok(first);
                }
                other => return other,
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                IngestStats::add(&self.ingest.refused_batches, 1);
                return Err(PublishError::Busy);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Publishes `events` in order, in slices the ring can always take, waiting for space as
    /// long as it takes (until shutdown), and returns the id of the first. For sources that
    /// stream and owe the producer no all-or-nothing answer (the Unix socket): one read of a
    /// busy producer can hold more events than the ring, and must wait for room rather than
    /// fail. On success `events` is left empty; at shutdown what was not published is dropped
    /// with the error, since nothing acknowledged it.
    pub async fn publish_stream(&self, events: &mut Vec<Arc<Event>>) -> Result<u64, PublishError> {
        // A quarter of the ring: a slice fits while matchers still hold the rest of the ring,
        // so the producer waits for a part of the ring to drain, not for all of it.
        let max = (self.ring.capacity() / 4).max(1) as usize;
        if events.len() <= max {
            return self.publish(events, None).await;
        }
        let mut first = None;
        while !events.is_empty() {
            let mut slice: Vec<Arc<Event>> = events.drain(..max.min(events.len())).collect();
            let id = self.publish(&mut slice, None).await?;
            first.get_or_insert(id);
        }
        Ok(first.unwrap_or_default())
    }

    /// Notes on disk (a hint, not synced) that every id below the ring head was handed out, so
    /// a restart after a crash knows which skipped ids may not have been used
    /// (`ring::lease`). Called about once a second; cheap when nothing changed.
    pub fn mark_ids_used(&self) {
        if let Some(lease) = self.lease.lock().as_mut() {
            lease.mark_used(self.ring.head());
        }
    }

    /// The current counters.
    pub fn stats(&self) -> StatsSnapshot {
        let subs = self.registry.snapshot();
        let mut s = StatsSnapshot {
            accepted: self.ingest.accepted.load(Ordering::Relaxed),
            rejected: self.ingest.rejected.load(Ordering::Relaxed),
            refused_batches: self.ingest.refused_batches.load(Ordering::Relaxed),
            auth_failures: self.ingest.auth_failures.load(Ordering::Relaxed),
            auth_locked: self.ingest.auth_locked.load(Ordering::Relaxed),
            rate_limited: self.ingest.rate_limited.load(Ordering::Relaxed),
            limit_refusals: self.ingest.limit_refusals.load(Ordering::Relaxed),
            request_timeouts: self.ingest.request_timeouts.load(Ordering::Relaxed),
            write_timeouts: self.ingest.write_timeouts.load(Ordering::Relaxed),
            connections: self.ingest.connections.load(Ordering::Relaxed),
            connections_refused: self.ingest.connections_refused.load(Ordering::Relaxed),
            idle_closed: self.ingest.idle_closed.load(Ordering::Relaxed),
            syslog_dropped: self.ingest.syslog_dropped.load(Ordering::Relaxed),
            subscribers: subs.len(),
            metric_streams: self.metrics.streams(),
            ring_capacity: self.ring.capacity(),
            ring_occupancy: self.ring.occupancy(),
            ring_head: self.ring.head(),
            index: self.registry.index_stats(),
            index_rebuilds: self.registry.rebuild_stats.rebuilds.load(Ordering::Relaxed),
            index_rebuild_max_micros: self.registry.rebuild_stats.max_micros.load(Ordering::Relaxed),
            ..Default::default()
        };
        s.history = self.history_writer.as_ref().map(|w| w.stats());
        s.taps = self.tap_stats();
        // Every matcher thread reads every event, so "matched" is how far the slowest got.
        s.matched = self.ring.tail();
        for m in &self.matcher_stats {
            s.deliveries += m.deliveries.load(Ordering::Relaxed);
            s.matched_inline += m.helped.load(Ordering::Relaxed);
            s.dropped += m.drops.load(Ordering::Relaxed);
            s.followed_spans += m.spans.load(Ordering::Relaxed);
        }
        // The matcher counts a tap's queue like a stream's; the totals are the streams'.
        for t in &s.taps {
            s.deliveries = s.deliveries.saturating_sub(t.matched);
            s.dropped = s.dropped.saturating_sub(t.dropped);
        }
        s.subscriber_detail = subs
            .iter()
            .map(|sub| SubscriberStats {
                id: sub.id,
                delivered: sub.delivered(),
                dropped: sub.dropped(),
                queued: sub.queued(),
            })
            .collect();
        s.subscriber_detail.sort_by_key(|d| d.id);
        s
    }

    /// Graceful shutdown: refuse new events and connections, match everything accepted, let
    /// subscribers drain their queues (bounded by `drain-timeout-secs`), end the streams, and
    /// stop the matcher threads.
    pub async fn shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        // `send_replace`, not `send`: `send` leaves the value unchanged when no receiver exists yet,
        // so a task that subscribes later (a server stopped right after it started) never stops.
        self.shutdown_tx.send_replace(true);
        self.registry.close();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.config.drain_timeout_secs);
        while self.ring.tail() < self.ring.head() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.closing.set();
        self.registry.wake_all();
        self.streams_closed_tx.send_replace(true);
        while (!self.registry.is_empty() || self.metrics.streams() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.registry.wake_all();
        }
        // Taps end once they have taken everything matched (`closing` is set and their queue
        // is empty); their threads may still be writing, so wait for them off the runtime.
        let taps = std::mem::take(&mut *self.taps.lock());
        let _ = tokio::task::spawn_blocking(move || {
            for mut t in taps {
                t.join();
            }
        })
        .await;
        if let Some(pool) = self.matchers.lock().take() {
            pool.stop();
        }
        // Record where ids stop, so the next run continues there and a resume across the
        // restart counts no ids that were never handed out. Producers check `accepting` before
        // reserving ids, so by now the head no longer moves (a producer would have to be
        // suspended between that check and its reservation for the whole drain).
        if let Some(lease) = self.lease.lock().as_mut() {
            if let Err(e) = lease.stop(self.ring.head()) {
                tracing::warn!(error = %e, "cannot record the clean stop in the data directory");
            }
        }
        if let Some(w) = &self.history_writer {
            // Everything matched was offered to the writer; write it before the process ends.
            let w = w.clone();
            let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
        }
    }
}

/// A resume reads what the replay log no longer holds from the history store: the stored
/// bytes, rebuilt into events so the subscriber's own index matches them.
impl OlderEvents for Hub {
    fn page(&self, from: u64, until: u64, limit: usize) -> Vec<(u64, Event)> {
        let Some(store) = &self.history_store else { return Vec::new() };
        let stored = match store.events_since_seq(from, limit) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "resume: cannot read history");
                return Vec::new();
            }
        };
        let mut b = self.builder();
        stored
            .iter()
            .take_while(|e| e.seq < until)
            .filter_map(|e| match e.to_event(&mut b) {
                Ok(ev) => Some((e.seq, ev)),
                Err(err) => {
                    tracing::warn!(seq = e.seq, error = %err, "resume: a stored event does not rebuild");
                    None
                }
            })
            .collect()
    }

    fn floor_for_newest(&self, from: u64, until: u64, n: usize) -> Option<u64> {
        let store = self.history_store.as_ref()?;
        store.floor_for_newest(from, until, n).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "resume: cannot read history");
            None
        })
    }

    fn first_since(&self, time: i64) -> Option<u64> {
        let store = self.history_store.as_ref()?;
        store.first_seq_at_or_after(time).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "resume: cannot read history");
            None
        })
    }
}
