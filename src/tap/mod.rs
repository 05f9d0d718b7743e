//! Taps: consumers of the event stream inside livetap (the history writer; next, outgoing
//! webhooks, log sinks, alerts and cluster forwarders), fed by the matcher through one trait.
//!
//! A tap declares a query in the live query language. Its query is compiled into a matcher
//! shard's index exactly like a live subscriber's (a tap is a [`Subscriber`] whose queue holds
//! event handles instead of wire bytes), so a tap that wants `level=error` costs nothing for
//! the other events, and the matcher knows no concrete tap: it pushes into a bounded queue and
//! moves on. The queue is the subscriber's: when it is full, newer events are dropped for that
//! tap alone, counted, and reported to it in-band ([`Tap::lagged`]) and in the stats. A tap
//! never slows ingest, the matcher or the subscribers.
//!
//! Each tap runs on its own OS thread ([`spawn`]), which drains the queue in sequence order
//! and calls [`Tap::deliver`]. What a tap does there may block (disk, network): only its own
//! queue fills. A tap that must not lose events (webhooks out, cluster forwarding) keeps its
//! durability behind this trait, on its thread: it spools to disk before it acknowledges.

pub mod history;
pub mod sink;
pub mod webhook;

use crate::event::Event;
use crate::matcher::registry::Subscription;
use crate::subscriber::{Item, Subscriber};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Duration;

/// One event handed to a tap: its position in the stream (the public id is `seq + 1`) and
/// the event itself.
#[derive(Debug, Clone)]
pub struct TapEvent {
    /// Global sequence number.
    pub seq: u64,
    /// The event, shared with the ring and the other consumers.
    pub event: Arc<Event>,
}

/// Outgoing channels that other parts of livetap hand an event to by name, outside the
/// channel's own query: an alert notifies the webhook its `[[alert]]` table names this way.
/// `tap::webhook` implements it for the configured webhooks; the alert evaluator holds it as
/// an `Arc<dyn Notify>`, so neither module knows the other's types.
pub trait Notify: Send + Sync {
    /// Queues `event` for the target called `name` (durably, for a webhook, before it
    /// returns). False when no target has that name or it could not take the event; the
    /// caller logs that, since the event itself was published into the hub anyway.
    fn notify(&self, name: &str, event: TapEvent) -> bool;

    /// The names of the targets, so a configuration that names an unknown one is refused.
    fn names(&self) -> Vec<String>;
}

/// A [`Notify`] with no targets (no webhooks configured).
pub struct NoTargets;

impl Notify for NoTargets {
    fn notify(&self, _name: &str, _event: TapEvent) -> bool {
        false
    }

    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A consumer of the event stream, run on its own thread.
pub trait Tap: Send + 'static {
    /// A short, unique name for logs and statistics (`history`, `webhook:alerts`, …).
    fn name(&self) -> &str;

    /// The events it wants, as a live query in the pair form (`level=error`,
    /// `event=auth.*&domain=example.org`); the empty string wants every event.
    fn query(&self) -> &str;

    /// The most events its queue holds before newer ones are dropped for it.
    fn queue_capacity(&self) -> usize {
        65_536
    }

    /// The next matching events, in sequence order. Called on the tap's thread; may block.
    fn deliver(&mut self, events: &[TapEvent]);

    /// `n` matching events were dropped here because the queue was full (in order: events
    /// delivered after this call came after the dropped ones).
    fn lagged(&mut self, n: u64) {
        let _ = n;
    }

    /// The queue is empty for now: a moment to flush what the tap buffers. Called at most
    /// every [`IDLE_TICK`] while nothing arrives.
    fn idle(&mut self) {}

    /// Everything accepted before shutdown was delivered; the tap's thread ends after this.
    fn stop(&mut self) {}

    /// Counters of the tap's own (a sink's events, bytes, rotations, errors), shown in its
    /// statistics beside the queue's. Asked once, before the tap's thread starts.
    fn counters(&self) -> Option<Arc<dyn TapCounters>> {
        None
    }
}

/// A tap's own counters, read by the statistics while the tap's thread updates them.
pub trait TapCounters: Send + Sync {
    /// `(name, value)` pairs, in a fixed order.
    fn readings(&self) -> Vec<(&'static str, u64)>;
}

/// How often an idle tap's thread wakes by itself (for [`Tap::idle`] and to notice shutdown).
pub const IDLE_TICK: Duration = Duration::from_millis(100);

/// Events a tap's thread takes from its queue at once.
const DRAIN_MAX: usize = 4096;

/// What the statistics say about one tap.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct TapStats {
    /// The tap's name.
    pub name: String,
    /// Its query, as configured.
    pub query: String,
    /// Events queued to it so far.
    pub matched: u64,
    /// Events dropped for it because its queue was full.
    pub dropped: u64,
    /// Events waiting in its queue now.
    pub queued: u64,
    /// Events its thread handed to [`Tap::deliver`] so far.
    pub delivered: u64,
    /// The tap's own counters ([`Tap::counters`]), when it has any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counters: std::collections::BTreeMap<&'static str, u64>,
}

/// A running tap, as the hub holds it.
pub struct TapHandle {
    name: String,
    query: String,
    sub: Arc<Subscriber>,
    delivered: Arc<AtomicU64>,
    counters: Option<Arc<dyn TapCounters>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set by the hub to end this tap alone (a reload removed or replaced it); the tap's
    /// thread reads it (Acquire) only when its queue is empty, and then ends like at shutdown.
    stop: Arc<AtomicBool>,
    /// Disconnected when the tap's thread has ended (its sender is dropped with the thread):
    /// a replacement's thread waits on it before its first delivery, so the two never write
    /// the same file or spool at once and the replacement's events follow the old tap's.
    finished: Option<std::sync::mpsc::Receiver<()>>,
}

impl TapHandle {
    /// The tap's counters.
    pub fn stats(&self) -> TapStats {
        TapStats {
            name: self.name.clone(),
            query: self.query.clone(),
            matched: self.sub.delivered(),
            dropped: self.sub.dropped(),
            queued: self.sub.queued() as u64,
            delivered: self.delivered.load(Ordering::Relaxed),
            counters: self.counters.as_ref().map(|c| c.readings().into_iter().collect()).unwrap_or_default(),
        }
    }

    /// The tap's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's subscriber id in the registry.
    pub fn id(&self) -> u64 {
        self.sub.id
    }

    /// Asks the tap's thread to end once its queue is empty (after its last events were
    /// matched: see `Hub::remove_tap`).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.sub.wake();
    }

    /// Takes what tells that the thread ended, for a replacement to wait on.
    pub fn take_finished(&mut self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.finished.take()
    }

    /// Waits for the tap's thread to end (after the stop signal turned true and the queue was
    /// drained).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wakes a parked thread: the tap's thread registers it as its queue's waker.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Starts `tap`'s thread over `subscription` (its queue, created by
/// `Registry::subscribe_tap`). The thread ends once `stopping()` is true and the queue is
/// empty; the hub turns it true after everything accepted was matched.
pub fn spawn(
    tap: Box<dyn Tap>,
    subscription: Subscription,
    stopping: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<TapHandle> {
    spawn_after(tap, subscription, stopping, None)
}

/// [`spawn`], with the thread's first delivery held back until `after` disconnects (the
/// thread of the tap this one replaces has ended: [`TapHandle::take_finished`]).
pub fn spawn_after(
    mut tap: Box<dyn Tap>,
    subscription: Subscription,
    stopping: impl Fn() -> bool + Send + 'static,
    after: Option<std::sync::mpsc::Receiver<()>>,
) -> std::io::Result<TapHandle> {
    let name = tap.name().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let own_stop = stop.clone();
    let stopping = move || stopping() || own_stop.load(Ordering::Acquire);
    let (finished_tx, finished) = std::sync::mpsc::channel::<()>();
    let query = tap.query().to_string();
    let counters = tap.counters();
    let sub = subscription.sub.clone();
    let delivered = Arc::new(AtomicU64::new(0));
    let count = delivered.clone();
    let thread = std::thread::Builder::new().name(format!("livetap-tap-{name}")).spawn(move || {
        // Dropped when this thread ends, which is what a replacement waits for.
        let _finished = finished_tx;
        if let Some(previous) = after {
            // Returns when the previous tap's thread has ended (its sender is gone).
            let _ = previous.recv();
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut items: Vec<Item> = Vec::with_capacity(DRAIN_MAX);
        let mut batch: Vec<TapEvent> = Vec::with_capacity(DRAIN_MAX);
        loop {
            // Register before looking, so a push after the look wakes this thread.
            subscription.sub.register_waker(&waker);
            subscription.sub.drain_into(&mut items, DRAIN_MAX);
            if items.is_empty() {
                // Read the stop signal before the final look: events matched before it turned
                // true are in the queue by then.
                if stopping() {
                    subscription.sub.drain_into(&mut items, DRAIN_MAX);
                    if items.is_empty() {
                        break;
                    }
                } else {
                    tap.idle();
                    std::thread::park_timeout(IDLE_TICK);
                    continue;
                }
            }
            for item in items.drain(..) {
                match item {
                    Item::Tapped { seq, event } => batch.push(TapEvent { seq, event }),
                    Item::Lagged(n) => {
                        if !batch.is_empty() {
                            count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            tap.deliver(&batch);
                            batch.clear();
                        }
                        tap.lagged(n);
                    }
                    // A tap's queue holds only event handles; wire bytes are for streams.
                    Item::Event { .. } => {}
                }
            }
            if !batch.is_empty() {
                count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                tap.deliver(&batch);
                batch.clear();
            }
        }
        tap.stop();
        drop(subscription);
    })?;
    Ok(TapHandle {
        name,
        query,
        sub,
        delivered,
        counters,
        thread: Some(thread),
        stop,
        finished: Some(finished),
    })
}
