//! `HistoryWriter`: the dedicated thread that selects events for history and writes them in batches, the metric-sample path, and the retention thread.
//!
//! The caller's cost is one `try_send` of `(seq, Arc<Event>)` into a bounded crossbeam
//! channel. A full channel never blocks: the event is dropped for history and counted. The
//! writer thread does not park on that channel. It polls it every few milliseconds and drains
//! it, so a sender never has to wake a sleeping thread (a system call on the sender's side),
//! which keeps the matcher thread that feeds it on its fast path.
//!
//! Selection (the [`Selector`]), like Stalwart's trace store:
//! - a span is kept, whole, once one of its events carries a `queueId`: its earlier events
//!   wait in a buffer until then and are written with it; its later events are written as
//!   they come;
//! - a span that ends without a `queueId` is discarded with its buffer;
//! - at most `max-span-events` events of one span are kept; later ones are counted
//!   (`span_truncated`);
//! - memory is bounded: at most `max-open-spans` spans of each state and
//!   `max-buffered-events` buffered events; past them the oldest span is forgotten
//!   (`spans_evicted`);
//! - with a keep predicate, every event it accepts is kept too, with or without a span.
//!
//! Batches: written in one transaction when `batch-size` events are ready, or when the oldest
//! ready event has waited `flush-interval-ms`. What a crash can lose is what was not yet
//! committed: the open batch (at most `batch-size` events, at most one flush interval old),
//! the events still in the channel (at most `queue-capacity`, in practice one poll tick of
//! ingest), and the buffers of spans still waiting for a `queueId`.

use super::{
    EventRecord, HistoryConfig, HistoryKeys, HistoryStore, MetricKind, MetricPoint, MetricSample, Retention,
    StoreError,
};
use crate::event::Event;
use ahash::AHashMap;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A keep predicate: events it accepts are kept whatever their span (see
/// [`super::keep_predicate`] for the configured query).
pub type KeepFn = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// How often the writer polls its queue while events arrive.
const BUSY_TICK: Duration = Duration::from_millis(5);

/// The longest the writer sleeps while idle (a new event waits at most this long to be seen).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Control messages waiting for the writer thread, at most.
const CONTROL_CAPACITY: usize = 64;

/// Distinct queue ids and keywords remembered per kept span to avoid resending them; past
/// this the store's unique indexes drop the repeats.
const VALUES_REMEMBERED: usize = 32;

/// Counters shared by the callers, the writer thread and the retention thread.
#[derive(Default)]
struct Shared {
    dropped: AtomicU64,
    processed: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    span_truncated: AtomicU64,
    spans_discarded: AtomicU64,
    spans_evicted: AtomicU64,
    metric_points: AtomicU64,
    metric_samples_dropped: AtomicU64,
    prunes: AtomicU64,
    prune_errors: AtomicU64,
    pruned_events: AtomicU64,
    committed_next_seq: AtomicU64,
    busy_ns: AtomicU64,
    buffered: AtomicU64,
}

/// A snapshot of the writer's counters (for `/api/telemetry/stats` and the bench).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriterStats {
    /// Events dropped because the writer's queue was full (or the writer had stopped).
    pub dropped: u64,
    /// Events waiting in the queue now.
    pub queued: u64,
    /// Events the writer thread has examined.
    pub processed: u64,
    /// Events committed to the store.
    pub written: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Batches or samples the store refused (each is logged and dropped).
    pub write_errors: u64,
    /// Events past `max-span-events` of their span, not kept.
    pub span_truncated: u64,
    /// Spans that ended without a `queueId`, with their buffers.
    pub spans_discarded: u64,
    /// Spans forgotten to respect the memory bounds.
    pub spans_evicted: u64,
    /// Events buffered for spans waiting for a `queueId`, now.
    pub buffered: u64,
    /// Metric points written.
    pub metric_points: u64,
    /// Metric sample sets dropped because the control queue was full.
    pub metric_samples_dropped: u64,
    /// Retention runs.
    pub prunes: u64,
    /// Retention runs that failed.
    pub prune_errors: u64,
    /// Events removed by retention.
    pub pruned_events: u64,
    /// One past the highest sequence number committed (0 before the first commit).
    pub committed_next_seq: u64,
    /// Time the writer thread spent working (selecting, building and committing), in ns.
    pub busy_ns: u64,
}

enum Control {
    Metrics(i64, Vec<MetricSample>),
    Flush(Sender<()>),
    Shutdown,
}

/// The settings the writer and selector use, taken from [`HistoryConfig`].
#[derive(Debug, Clone, Copy)]
struct Settings {
    batch_size: usize,
    flush_interval: Duration,
    max_span_events: usize,
    max_open_spans: usize,
    max_buffered_events: usize,
    max_bytes: u64,
}

/// The running history writer. Cloneable handles are not needed: share it in an `Arc`.
/// Dropping it shuts it down (flushing).
pub struct HistoryWriter {
    events: Sender<(u64, Arc<Event>)>,
    control: Sender<Control>,
    shared: Arc<Shared>,
    keep_any: bool,
    threads: Mutex<Threads>,
}

#[derive(Default)]
struct Threads {
    writer: Option<JoinHandle<()>>,
    retention: Option<JoinHandle<()>>,
    stop_retention: Option<Sender<()>>,
}

impl std::fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter").field("stats", &self.stats()).finish()
    }
}

impl HistoryWriter {
    /// Starts the writer thread (`livetap-history`) and the retention thread
    /// (`livetap-retain`, one prune at start, then every `prune-interval-secs`, and
    /// early when the writer has written about 5 % of `max-bytes` since the last one).
    pub fn start(
        store: Arc<dyn HistoryStore>,
        keys: HistoryKeys,
        config: &HistoryConfig,
        keep: Option<KeepFn>,
    ) -> Result<HistoryWriter, StoreError> {
        config.validate()?;
        let settings = Settings {
            batch_size: config.batch_size,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            max_span_events: config.max_span_events,
            max_open_spans: config.max_open_spans,
            max_buffered_events: config.max_buffered_events,
            max_bytes: config.max_bytes,
        };
        let (events_tx, events_rx) = bounded(config.queue_capacity);
        let (control_tx, control_rx) = bounded(CONTROL_CAPACITY);
        let (wake_tx, wake_rx) = bounded(1);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let shared = Arc::new(Shared::default());
        let keep_any = keep.is_some();

        let retention = {
            let store = store.clone();
            let shared = shared.clone();
            let r = config.retention();
            let every = Duration::from_secs(config.prune_interval_secs);
            std::thread::Builder::new()
                .name("livetap-retain".into())
                .spawn(move || {
                    lower_priority();
                    retention_loop(&*store, r, every, &stop_rx, &wake_rx, &shared)
                })
                .map_err(|source| StoreError::Thread { what: "retention", source })?
        };
        let writer = {
            let shared = shared.clone();
            let selector = Selector::new(keys, keep, settings);
            std::thread::Builder::new()
                .name("livetap-history".into())
                .spawn(move || {
                    lower_priority();
                    let mut w = WriterThread::new(store, selector, settings, shared, wake_tx);
                    w.run(&events_rx, &control_rx);
                })
                .map_err(|source| StoreError::Thread { what: "writer", source })?
        };
        Ok(HistoryWriter {
            events: events_tx,
            control: control_tx,
            shared,
            keep_any,
            threads: Mutex::new(Threads {
                writer: Some(writer),
                retention: Some(retention),
                stop_retention: Some(stop_tx),
            }),
        })
    }

    /// Offers one event (its ring position and the shared event). Never blocks. Returns
    /// `false` when the queue was full (or the writer stopped): the event is then not kept and
    /// counted in `dropped`. Events that can never be kept (no span, and no keep predicate)
    /// are not even queued.
    #[inline]
    pub fn submit(&self, seq: u64, event: Arc<Event>) -> bool {
        if event.span_id.is_none() && !self.keep_any {
            return true;
        }
        match self.events.try_send((seq, event)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Offers a run of consecutive events starting at `first_seq` (a ring batch); returns how
    /// many were dropped.
    pub fn submit_batch(&self, first_seq: u64, events: &[Arc<Event>]) -> usize {
        let mut dropped = 0;
        for (i, ev) in events.iter().enumerate() {
            if !self.submit(first_seq + i as u64, ev.clone()) {
                dropped += 1;
            }
        }
        dropped
    }

    /// Hands one metric sampling tick to the writer: `at` is the sample time (Unix seconds),
    /// `samples` the readings (totals for counters and histograms; the writer stores the
    /// increase since its previous sample of the same name and skips zero increases; gauges
    /// as they are). Never blocks; `false` when the control queue was full (counted).
    pub fn sample_metrics(&self, at: i64, samples: Vec<MetricSample>) -> bool {
        match self.control.try_send(Control::Metrics(at, samples)) {
            Ok(()) => true,
            Err(_) => {
                self.shared.metric_samples_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Blocks until every event submitted before this call has been selected and the
    /// selected ones committed (buffers of spans still waiting for a `queueId` stay buffered).
    /// Returns `false` when the writer has stopped. Async callers use their blocking pool.
    pub fn flush(&self) -> bool {
        let (tx, rx) = bounded(1);
        if self.control.send(Control::Flush(tx)).is_err() {
            return false;
        }
        rx.recv().is_ok()
    }

    /// Stops both threads after writing everything queued (idempotent). Spans still waiting
    /// for a `queueId` are not written: they have not qualified.
    pub fn shutdown(&self) {
        let mut t = self.threads.lock();
        if let Some(w) = t.writer.take() {
            let _ = self.control.send(Control::Shutdown);
            let _ = w.join();
        }
        drop(t.stop_retention.take());
        if let Some(r) = t.retention.take() {
            let _ = r.join();
        }
    }

    /// The counters.
    pub fn stats(&self) -> WriterStats {
        let s = &self.shared;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            dropped: g(&s.dropped),
            queued: self.events.len() as u64,
            processed: g(&s.processed),
            written: g(&s.written),
            batches: g(&s.batches),
            write_errors: g(&s.write_errors),
            span_truncated: g(&s.span_truncated),
            spans_discarded: g(&s.spans_discarded),
            spans_evicted: g(&s.spans_evicted),
            buffered: g(&s.buffered),
            metric_points: g(&s.metric_points),
            metric_samples_dropped: g(&s.metric_samples_dropped),
            prunes: g(&s.prunes),
            prune_errors: g(&s.prune_errors),
            pruned_events: g(&s.pruned_events),
            committed_next_seq: g(&s.committed_next_seq),
            busy_ns: g(&s.busy_ns),
        }
    }
}

impl Drop for HistoryWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How much lower than the rest of livetap the history threads run (a `nice` increment).
/// History must never slow ingest or live streams: on a busy machine its threads get what the
/// others leave, and when that is not enough the writer's queue drops and counts.
const HISTORY_NICENESS: i32 = 10;

/// Lowers the calling thread's scheduling priority (Linux sets `nice` per thread). Best
/// effort: a failure leaves the thread at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` has no preconditions, and `setpriority` only reads its arguments; a
    // thread id from `gettid` names the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HISTORY_NICENESS);
    }
}

/// Runs a prune at start, then whenever woken (the writer wrote a lot) or every `every`,
/// until the stop channel closes.
fn retention_loop(
    store: &dyn HistoryStore,
    retention: Retention,
    every: Duration,
    stop: &Receiver<()>,
    wake: &Receiver<()>,
    shared: &Shared,
) {
    loop {
        match store.prune(&retention, crate::event::encode::now_secs()) {
            Ok(r) => {
                shared.prunes.fetch_add(1, Ordering::Relaxed);
                shared.pruned_events.fetch_add(r.events, Ordering::Relaxed);
                if r.events + r.samples > 0 {
                    tracing::debug!(
                        events = r.events,
                        spans = r.spans,
                        samples = r.samples,
                        bytes = r.bytes_after,
                        "history pruned"
                    );
                }
            }
            Err(e) => {
                shared.prune_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("history retention failed: {e}");
            }
        }
        // The writer holds the wake sender: once it has stopped, so does retention (a
        // disconnected channel would otherwise answer at once, forever).
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(wake) -> m => if m.is_err() { return },
            default(every) => {}
        }
    }
}

/// The writer thread's state.
struct WriterThread {
    store: Arc<dyn HistoryStore>,
    selector: Selector,
    settings: Settings,
    shared: Arc<Shared>,
    wake_retention: Sender<()>,
    batch: Vec<EventRecord>,
    batch_since: Option<Instant>,
    bytes_since_check: u64,
    last_totals: AHashMap<Arc<str>, (f64, u64, f64)>,
}

impl WriterThread {
    fn new(
        store: Arc<dyn HistoryStore>,
        selector: Selector,
        settings: Settings,
        shared: Arc<Shared>,
        wake_retention: Sender<()>,
    ) -> Self {
        WriterThread {
            store,
            selector,
            settings,
            shared,
            wake_retention,
            batch: Vec::with_capacity(settings.batch_size.min(65_536)),
            batch_since: None,
            bytes_since_check: 0,
            last_totals: AHashMap::new(),
        }
    }

    fn run(&mut self, events: &Receiver<(u64, Arc<Event>)>, control: &Receiver<Control>) {
        let mut busy = false;
        loop {
            let tick = match self.batch_since {
                Some(t) => self.settings.flush_interval.saturating_sub(t.elapsed()).min(BUSY_TICK),
                None if busy => BUSY_TICK,
                None => IDLE_TICK.min(self.settings.flush_interval),
            };
            let msg = control.recv_timeout(tick);
            let start = Instant::now();
            let n = self.drain(events);
            busy = n > 0;
            let mut worked = n > 0;
            match msg {
                Ok(Control::Metrics(at, samples)) => {
                    self.write_metrics(at, &samples);
                    worked = true;
                }
                Ok(Control::Flush(ack)) => {
                    self.flush();
                    let _ = ack.send(());
                    worked = true;
                }
                Ok(Control::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    self.drain(events);
                    self.flush();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.batch_since.is_some_and(|t| t.elapsed() >= self.settings.flush_interval) {
                self.flush();
                worked = true;
            }
            if worked {
                self.shared.busy_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Takes everything queued now, writing full batches as they fill.
    fn drain(&mut self, events: &Receiver<(u64, Arc<Event>)>) -> usize {
        let mut n = 0usize;
        while let Ok((seq, ev)) = events.try_recv() {
            n += 1;
            let before = self.batch.len();
            self.selector.offer(seq, ev, &mut self.batch, &self.shared);
            if self.batch.len() > before && self.batch_since.is_none() {
                self.batch_since = Some(Instant::now());
            }
            if self.batch.len() >= self.settings.batch_size {
                self.flush();
            }
        }
        self.shared.processed.fetch_add(n as u64, Ordering::Relaxed);
        self.shared.buffered.store(self.selector.buffered as u64, Ordering::Relaxed);
        n
    }

    /// Commits the open batch (one transaction).
    fn flush(&mut self) {
        self.batch_since = None;
        if self.batch.is_empty() {
            return;
        }
        match self.store.write_events(&self.batch) {
            Ok(()) => {
                let max = self.batch.iter().map(|r| r.seq).max().unwrap_or(0);
                self.shared.committed_next_seq.fetch_max(max + 1, Ordering::Release);
                self.shared.written.fetch_add(self.batch.len() as u64, Ordering::Relaxed);
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                if self.settings.max_bytes > 0 {
                    // Indexes and summaries roughly double an event's bytes on disk.
                    self.bytes_since_check +=
                        self.batch.iter().map(|r| 2 * r.event.json.len() as u64 + 64).sum::<u64>();
                    if self.bytes_since_check > self.settings.max_bytes / 20 {
                        self.bytes_since_check = 0;
                        self.check_size();
                    }
                }
            }
            Err(e) => {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(events = self.batch.len(), "history batch not written: {e}");
            }
        }
        self.batch.clear();
    }

    /// Called after every twentieth of the size bound written: wakes the retention thread,
    /// or, when the store is already over the bound (the retention thread has fallen behind a
    /// burst), prunes here. That slows this thread, and its queue absorbs the delay or drops
    /// and counts: the bound holds, at the price of history under overload, never of ingest.
    fn check_size(&mut self) {
        let max_bytes = self.settings.max_bytes;
        match self.store.disk_bytes() {
            Ok(bytes) if bytes > max_bytes => {
                let r = Retention { trace_max_age_secs: 0, metric_max_age_secs: 0, max_bytes };
                match self.store.prune(&r, crate::event::encode::now_secs()) {
                    Ok(report) => {
                        self.shared.prunes.fetch_add(1, Ordering::Relaxed);
                        self.shared.pruned_events.fetch_add(report.events, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.shared.prune_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("history size bound not enforced: {e}");
                    }
                }
            }
            _ => {
                let _ = self.wake_retention.try_send(());
            }
        }
    }

    /// Turns totals into increases since the previous sample and writes them.
    fn write_metrics(&mut self, at: i64, samples: &[MetricSample]) {
        let mut points = Vec::with_capacity(samples.len());
        for s in samples {
            let last = self.last_totals.insert(s.name.clone(), (s.value, s.count, s.sum));
            let (lv, lc, ls) = last.unwrap_or((0.0, 0, 0.0));
            let id = s.name.to_string();
            match s.kind {
                MetricKind::Counter => {
                    // A total below the previous one means the counter restarted.
                    let delta = if s.value >= lv { s.value - lv } else { s.value };
                    if delta > 0.0 {
                        points.push(MetricPoint::Counter { id, timestamp: at, value: delta.round() as u64 });
                    }
                }
                MetricKind::Gauge => points.push(MetricPoint::Gauge { id, timestamp: at, value: s.value }),
                MetricKind::Histogram => {
                    let (count, sum) =
                        if s.count >= lc { (s.count - lc, s.sum - ls) } else { (s.count, s.sum) };
                    if count > 0 {
                        points.push(MetricPoint::Histogram { id, timestamp: at, count, sum });
                    }
                }
            }
        }
        match self.store.write_metrics(&points) {
            Ok(()) => {
                self.shared.metric_points.fetch_add(points.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("history metric sample not written: {e}");
            }
        }
    }
}

/// A span waiting for a `queueId`: its events so far.
struct Pending {
    first_seq: u64,
    events: Vec<(u64, Arc<Event>)>,
}

/// A span being kept: how many of its events were kept, and (hashes of) the queue ids and
/// keywords already sent for it.
struct Kept {
    first_seq: u64,
    events: usize,
    sent: SmallVec<[u64; 8]>,
}

/// The selection state: which spans are kept, which wait for a `queueId`, with what.
pub(crate) struct Selector {
    keys: HistoryKeys,
    keep: Option<KeepFn>,
    settings: Settings,
    pending: AHashMap<u64, Pending>,
    /// `(span, first_seq)` in arrival order, to find the oldest pending span; entries whose
    /// span is gone (or was reopened) are skipped when met.
    pending_order: VecDeque<(u64, u64)>,
    buffered: usize,
    kept: AHashMap<u64, Kept>,
    kept_order: VecDeque<(u64, u64)>,
    hasher: ahash::RandomState,
}

impl Selector {
    fn new(keys: HistoryKeys, keep: Option<KeepFn>, settings: Settings) -> Self {
        Selector {
            keys,
            keep,
            settings,
            pending: AHashMap::new(),
            pending_order: VecDeque::new(),
            buffered: 0,
            kept: AHashMap::new(),
            kept_order: VecDeque::new(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// Decides about one event, appending what is to be written now to `out`.
    fn offer(&mut self, seq: u64, ev: Arc<Event>, out: &mut Vec<EventRecord>, shared: &Shared) {
        let wanted = self.keep.as_ref().is_some_and(|k| k(&ev));
        let Some(span) = ev.span_id else {
            if wanted {
                out.push(self.record(seq, ev, None));
            }
            return;
        };
        if let Some(k) = self.kept.get_mut(&span) {
            if k.events >= self.settings.max_span_events {
                shared.span_truncated.fetch_add(1, Ordering::Relaxed);
            } else {
                k.events += 1;
                let end = ev.span_end;
                let rec = record_with(&self.keys, &self.hasher, seq, ev, Some(k));
                out.push(rec);
                if end {
                    self.kept.remove(&span);
                }
                return;
            }
            if ev.span_end {
                self.kept.remove(&span);
            }
            return;
        }
        if self.keys.has_queue_id(&ev) {
            self.promote(span, seq, ev, out, shared);
            return;
        }
        if wanted {
            // Kept for the keep predicate alone: written now, without waiting for the span.
            out.push(self.record(seq, ev, None));
            return;
        }
        self.buffer(span, seq, ev, shared);
    }

    /// The span has its `queueId`: write its buffer, then this event, and keep the rest.
    fn promote(&mut self, span: u64, seq: u64, ev: Arc<Event>, out: &mut Vec<EventRecord>, shared: &Shared) {
        let buffered = self.pending.remove(&span);
        let mut k = Kept { first_seq: seq, events: 0, sent: SmallVec::new() };
        if let Some(p) = buffered {
            self.buffered -= p.events.len();
            k.first_seq = p.first_seq;
            for (s, e) in p.events {
                k.events += 1;
                out.push(record_with(&self.keys, &self.hasher, s, e, Some(&mut k)));
            }
        }
        let end = ev.span_end;
        if k.events < self.settings.max_span_events {
            k.events += 1;
            out.push(record_with(&self.keys, &self.hasher, seq, ev, Some(&mut k)));
        } else {
            shared.span_truncated.fetch_add(1, Ordering::Relaxed);
        }
        if end {
            return;
        }
        if self.kept.len() >= self.settings.max_open_spans {
            evict_oldest(&mut self.kept, &mut self.kept_order, |_| {});
            shared.spans_evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.kept_order.push_back((span, k.first_seq));
        self.kept.insert(span, k);
        compact(&mut self.kept_order, &self.kept, |k| k.first_seq);
    }

    /// The span has no `queueId` yet: hold the event (within the bounds).
    fn buffer(&mut self, span: u64, seq: u64, ev: Arc<Event>, shared: &Shared) {
        let end = ev.span_end;
        if !self.pending.contains_key(&span) {
            if end {
                // A one-event span without a queue id: nothing to wait for.
                shared.spans_discarded.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if self.pending.len() >= self.settings.max_open_spans {
                self.evict_pending(shared);
            }
            self.pending.insert(span, Pending { first_seq: seq, events: Vec::new() });
            self.pending_order.push_back((span, seq));
        }
        let p = self.pending.get_mut(&span).expect("inserted above");
        if end {
            self.buffered -= p.events.len();
            self.pending.remove(&span);
            shared.spans_discarded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if p.events.len() >= self.settings.max_span_events {
            shared.span_truncated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.events.push((seq, ev));
        self.buffered += 1;
        while self.buffered > self.settings.max_buffered_events && !self.pending.is_empty() {
            self.evict_pending(shared);
        }
        compact(&mut self.pending_order, &self.pending, |p| p.first_seq);
    }

    fn evict_pending(&mut self, shared: &Shared) {
        let mut freed = 0;
        evict_oldest(&mut self.pending, &mut self.pending_order, |p| freed = p.events.len());
        self.buffered -= freed;
        shared.spans_evicted.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, seq: u64, ev: Arc<Event>, kept: Option<&mut Kept>) -> EventRecord {
        record_with(&self.keys, &self.hasher, seq, ev, kept)
    }
}

/// Removes the oldest live entry of `map` (per `order`), passing it to `gone`.
fn evict_oldest<T>(map: &mut AHashMap<u64, T>, order: &mut VecDeque<(u64, u64)>, mut gone: impl FnMut(&T))
where
    T: FirstSeq,
{
    while let Some((span, first)) = order.pop_front() {
        if map.get(&span).is_some_and(|v| v.first_seq() == first) {
            if let Some(v) = map.remove(&span) {
                gone(&v);
            }
            return;
        }
    }
}

/// Drops stale entries from an arrival-order queue once they outnumber the live ones, so it
/// stays within twice the map's size.
fn compact<T>(order: &mut VecDeque<(u64, u64)>, map: &AHashMap<u64, T>, first: impl Fn(&T) -> u64) {
    if order.len() > 2 * map.len() + 64 {
        order.retain(|(span, f)| map.get(span).is_some_and(|v| first(v) == *f));
    }
}

trait FirstSeq {
    fn first_seq(&self) -> u64;
}

impl FirstSeq for Pending {
    fn first_seq(&self) -> u64 {
        self.first_seq
    }
}

impl FirstSeq for Kept {
    fn first_seq(&self) -> u64 {
        self.first_seq
    }
}

/// Builds the store record of one event: its first queue id, and for a kept span the queue
/// ids and keyword values (lowercased) not yet sent for it.
fn record_with(
    keys: &HistoryKeys,
    hasher: &ahash::RandomState,
    seq: u64,
    event: Arc<Event>,
    mut kept: Option<&mut Kept>,
) -> EventRecord {
    let mut queue_id: Option<Box<str>> = None;
    let mut span_queue_ids: SmallVec<[Box<str>; 1]> = SmallVec::new();
    let mut keywords: SmallVec<[Box<str>; 2]> = SmallVec::new();
    for (k, v) in event.fields() {
        let is_queue = Some(k) == keys.queue_id;
        if !is_queue && !keys.keywords.contains(&k) {
            continue;
        }
        if is_queue && queue_id.is_none() {
            queue_id = Some(v.into());
        }
        // Only a kept span indexes values; each is sent once per span (as far as remembered).
        let Some(state) = kept.as_deref_mut() else { continue };
        let h = hasher.hash_one((is_queue, v));
        if state.sent.contains(&h) {
            continue;
        }
        if state.sent.len() < VALUES_REMEMBERED {
            state.sent.push(h);
        }
        if is_queue {
            span_queue_ids.push(v.into());
        } else if v.bytes().any(|b| b.is_ascii_uppercase()) || !v.is_ascii() {
            keywords.push(v.to_lowercase().into());
        } else {
            keywords.push(v.into());
        }
    }
    EventRecord { seq, event, queue_id, span_queue_ids, keywords }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing::event;
    use crate::event::{Catalogue, KeyRegistry};

    fn settings() -> Settings {
        Settings {
            batch_size: 16,
            flush_interval: Duration::from_millis(10),
            max_span_events: 5,
            max_open_spans: 3,
            max_buffered_events: 6,
            max_bytes: 0,
        }
    }

    struct Fixture {
        c: Catalogue,
        k: KeyRegistry,
        sel: Selector,
        shared: Shared,
        out: Vec<EventRecord>,
        seq: u64,
    }

    impl Fixture {
        fn new(keep: Option<KeepFn>) -> Self {
            let (c, k) = Catalogue::with_keys(1024);
            let sel = Selector::new(HistoryKeys::resolve(&k), keep, settings());
            Fixture { c, k, sel, shared: Shared::default(), out: Vec::new(), seq: 0 }
        }

        fn feed(&mut self, ty: &str, span: Option<u64>, extra: &str) -> u64 {
            let data = match span {
                Some(s) => format!(r#"{{"spanId":{s}{extra}}}"#),
                None => format!("{{{}}}", extra.trim_start_matches(',')),
            };
            let ev = event(&self.c, &self.k, &format!(r#"{{"type":"{ty}","data":{data}}}"#));
            let seq = self.seq;
            self.seq += 1;
            self.sel.offer(seq, Arc::new(ev), &mut self.out, &self.shared);
            seq
        }

        fn written(&mut self) -> Vec<u64> {
            self.out.drain(..).map(|r| r.seq).collect()
        }
    }

    #[test]
    fn a_span_is_kept_whole_once_it_has_a_queue_id() {
        let mut f = Fixture::new(None);
        let a = f.feed("smtp.connection-start", Some(1), r#","remoteIp":"10.0.0.5""#);
        let b = f.feed("smtp.ehlo", Some(1), r#","domain":"mx.Example.org""#);
        assert!(f.written().is_empty());
        let c = f.feed("smtp.mail-from", Some(1), r#","from":"a@example.org","queueId":7"#);
        let recs: Vec<_> =
            f.out.iter().map(|r| (r.seq, r.span_queue_ids.to_vec(), r.keywords.to_vec())).collect();
        assert_eq!(recs[0], (a, vec![], vec![Box::from("10.0.0.5")]));
        assert_eq!(recs[1], (b, vec![], vec![Box::from("mx.example.org")]));
        assert_eq!(recs[2], (c, vec![Box::from("7")], vec![Box::from("a@example.org")]));
        f.out.clear();
        let d = f.feed("smtp.rcpt-to", Some(1), r#","remoteIp":"10.0.0.5","queueId":7"#);
        assert!(f.out[0].keywords.is_empty(), "a keyword already sent for the span is not sent again");
        assert!(f.out[0].span_queue_ids.is_empty(), "nor a queue id");
        assert_eq!(f.out[0].queue_id.as_deref(), Some("7"));
        let e = f.feed("smtp.connection-end", Some(1), "");
        assert_eq!(f.written(), vec![d, e]);
        assert!(f.sel.kept.is_empty());
    }

    #[test]
    fn spans_without_queue_id_are_discarded_and_spanless_events_ignored() {
        let mut f = Fixture::new(None);
        f.feed("smtp.connection-start", Some(2), "");
        f.feed("smtp.ehlo", Some(2), "");
        f.feed("smtp.connection-end", Some(2), "");
        f.feed("queue.queue-message", None, r#","queueId":9"#);
        assert!(f.written().is_empty());
        assert_eq!(f.sel.buffered, 0);
        assert_eq!(f.shared.spans_discarded.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn span_bound_truncates() {
        let mut f = Fixture::new(None);
        for _ in 0..3 {
            f.feed("smtp.ehlo", Some(3), "");
        }
        f.feed("smtp.mail-from", Some(3), r#","queueId":1"#);
        for _ in 0..3 {
            f.feed("smtp.rcpt-to", Some(3), "");
        }
        assert_eq!(f.written(), vec![0, 1, 2, 3, 4]);
        assert_eq!(f.shared.span_truncated.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn memory_bounds_evict_the_oldest_waiting_span() {
        let mut f = Fixture::new(None);
        // Four open spans with a bound of three: span 10 (the oldest) goes.
        for s in [10, 11, 12, 13] {
            f.feed("smtp.connection-start", Some(s), "");
        }
        assert_eq!(f.sel.pending.len(), 3);
        assert!(!f.sel.pending.contains_key(&10));
        // Six buffered events at most: adding more evicts whole spans, oldest first.
        for _ in 0..4 {
            f.feed("smtp.ehlo", Some(13), "");
        }
        assert!(f.sel.buffered <= 6, "{}", f.sel.buffered);
        assert!(f.sel.pending.contains_key(&13));
        assert_eq!(f.shared.spans_evicted.load(Ordering::Relaxed), 2);
        // The evicted span never reaches the store, even when its queue id shows up.
        f.feed("smtp.mail-from", Some(10), r#","queueId":5"#);
        assert_eq!(f.written(), vec![8]);
    }

    #[test]
    fn keep_predicate_takes_any_matching_event() {
        let keep: KeepFn = Arc::new(|ev: &Event| ev.kind.starts_with("auth."));
        let mut f = Fixture::new(Some(keep));
        let a = f.feed("auth.failed", None, r#","remoteIp":"10.0.0.9""#);
        let b = f.feed("auth.success", Some(4), "");
        f.feed("smtp.ehlo", None, "");
        assert_eq!(f.written(), vec![a, b]);
    }
}
