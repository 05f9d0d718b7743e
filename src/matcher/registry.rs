//! The set of live subscribers and the thread that recompiles the shard indexes.
//!
//! Subscribing and unsubscribing send a command over a crossbeam channel to one index-builder
//! thread. It applies every pending command at once, recompiles only the shards that changed,
//! swaps them in with `arc-swap`, and then answers each new subscriber with the ring position
//! from which it is guaranteed to receive every matching event. A burst of connections costs
//! one rebuild per burst, not one per connection, and the matcher threads never wait for it.
//! After a rebuild it rests for four times that rebuild's duration (at most 50 ms), gathering
//! commands meanwhile, so a steady stream of connects keeps the builder's CPU share bounded;
//! a command that arrives after the rest is applied at once.

use crate::event::dialect::WireForm;
use crate::event::Event;
use crate::matcher::index::{CompiledIndex, IndexStats};
use crate::query::ast::Expr;
use crate::ring::Ring;
use crate::subscriber::{ConnHandle, StreamOwner, Subscriber};
use ahash::AHashMap;
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

enum Command {
    Add(Arc<Subscriber>, tokio::sync::oneshot::Sender<u64>),
    Remove(u64),
    /// Takes one subscriber out and (optionally) puts another in its shard in the same
    /// rebuild, so the shard's matcher hands every event to exactly one of them; answered
    /// with the ring head after the store, like `Add`.
    Swap {
        remove: u64,
        add: Option<Arc<Subscriber>>,
        reply: tokio::sync::oneshot::Sender<u64>,
    },
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The configured maximum of subscribers is reached.
    #[error("too many subscribers (at most {0})")]
    Full(usize),
    /// The hub is shutting down.
    #[error("the hub is shutting down")]
    Closed,
}

/// Counters of the index-builder thread.
#[derive(Debug, Default)]
pub struct RebuildStats {
    /// Shard indexes built since start.
    pub rebuilds: AtomicU64,
    /// Subscribe and unsubscribe commands applied since start.
    pub commands: AtomicU64,
    /// Duration of the last batch of rebuilds, in microseconds.
    pub last_micros: AtomicU64,
    /// Longest batch of rebuilds so far, in microseconds.
    pub max_micros: AtomicU64,
}

/// All live subscribers, sharded across matcher threads.
pub struct Registry {
    /// What the index builder has done.
    pub rebuild_stats: Arc<RebuildStats>,
    shards: Vec<Arc<ArcSwap<CompiledIndex>>>,
    all: Arc<Mutex<AHashMap<u64, Arc<Subscriber>>>>,
    tx: Mutex<Option<Sender<Command>>>,
    next_id: AtomicU64,
    max_subscribers: usize,
    queue_capacity: usize,
    builder: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Taps among `all` (`crate::tap`). Written (Relaxed) when a tap subscribes or its
    /// subscription ends, read by the subscriber cap: taps take no stream place. Relaxed
    /// suffices because the cap is checked under `all`'s lock, which orders both.
    taps: Arc<AtomicUsize>,
}

/// Removes its subscriber from the registry when dropped (the stream ended).
pub struct Subscription {
    /// The subscriber.
    pub sub: Arc<Subscriber>,
    /// Ring position from which every matching event reaches this subscriber.
    pub start: u64,
    tx: Option<Sender<Command>>,
    /// The registry's tap count, for a tap's subscription (given back on drop).
    taps: Option<Arc<AtomicUsize>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(t) = &self.taps {
            t.fetch_sub(1, Ordering::Relaxed);
        }
        self.sub.close();
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Remove(self.sub.id));
        }
    }
}

impl Registry {
    /// A registry with `shards` matcher shards, feeding indexes built over `ring` positions.
    pub fn new(
        shards: usize,
        max_subscribers: usize,
        queue_capacity: usize,
        ring: Arc<Ring<Arc<Event>>>,
    ) -> std::io::Result<Registry> {
        let shards: Vec<_> =
            (0..shards.max(1)).map(|_| Arc::new(ArcSwap::from_pointee(CompiledIndex::empty()))).collect();
        let (tx, rx) = crossbeam_channel::unbounded();
        let all = Arc::new(Mutex::new(AHashMap::new()));
        let rebuild_stats = Arc::new(RebuildStats::default());
        let builder = {
            let shards = shards.clone();
            let all = all.clone();
            let stats = rebuild_stats.clone();
            std::thread::Builder::new()
                .name("livetap-index".into())
                .spawn(move || build_loop(rx, shards, all, ring, stats))?
        };
        Ok(Registry {
            rebuild_stats,
            shards,
            all,
            tx: Mutex::new(Some(tx)),
            next_id: AtomicU64::new(1),
            max_subscribers,
            queue_capacity,
            builder: Mutex::new(Some(builder)),
            taps: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The index cell of matcher shard `i`.
    pub fn shard(&self, i: usize) -> Arc<ArcSwap<CompiledIndex>> {
        self.shards[i % self.shards.len()].clone()
    }

    /// Adds a subscriber; resolves once the matcher indexes include it.
    pub async fn subscribe(
        &self,
        filter: Expr,
        follow: bool,
        conn: Option<Arc<ConnHandle>>,
    ) -> Result<Subscription, RegistryError> {
        self.subscribe_in(filter, follow, conn, WireForm::Classic, None).await
    }

    /// [`Registry::subscribe`] for a stream written in `form` (a wire dialect), opened by
    /// `owner`. The owner is recorded before the stream is registered, so a configuration
    /// reload that lists the registered streams sees who holds each one.
    pub async fn subscribe_in(
        &self,
        filter: Expr,
        follow: bool,
        conn: Option<Arc<ConnHandle>>,
        form: WireForm,
        owner: Option<StreamOwner>,
    ) -> Result<Subscription, RegistryError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Subscriber::new(id, filter, follow, self.queue_capacity, conn).in_form(form);
        if let Some(owner) = owner {
            sub.set_owner(owner);
        }
        self.add(Arc::new(sub)).await
    }

    /// Adds a tap's queue (`crate::tap`): compiled into its shard's index like a stream, with
    /// a queue of `capacity` events, and not counted against `max-subscribers`. Resolves once
    /// the matcher indexes include it.
    pub async fn subscribe_tap(&self, filter: Expr, capacity: usize) -> Result<Subscription, RegistryError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.add(Arc::new(Subscriber::new_tap(id, filter, capacity))).await
    }

    /// Takes the tap `old` out of the index and, with `replacement = Some((filter, capacity))`,
    /// puts a new tap in its place in the same shard and the same index generation: every
    /// event the shard matches goes to the old tap (if matched with the index before the
    /// swap) or to the new one (with the index after it), never to both and never to neither.
    /// Returns the new tap's subscription (if any) and the ring head `H` read after the swap:
    /// once every matcher has passed `H` (`Ring::tail`), the old tap's queue holds all it will
    /// ever get. The new tap's queue keeps events below `H` (matched by a thread still
    /// behind), since the old tap does not get those.
    pub async fn swap_tap(
        &self,
        old: u64,
        replacement: Option<(Expr, usize)>,
    ) -> Result<(Option<Subscription>, u64), RegistryError> {
        let tx = self.tx.lock().clone().ok_or(RegistryError::Closed)?;
        let n = self.shards.len() as u64;
        let add = replacement.map(|(filter, capacity)| {
            // An id in the old tap's shard: the same matcher thread serves both, in order.
            let id = loop {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                if id % n == old % n {
                    break id;
                }
            };
            Arc::new(Subscriber::new_tap(id, filter, capacity))
        });
        let subscription = add.as_ref().map(|sub| {
            self.taps.fetch_add(1, Ordering::Relaxed);
            self.all.lock().insert(sub.id, sub.clone());
            Subscription { sub: sub.clone(), start: 0, tx: Some(tx.clone()), taps: Some(self.taps.clone()) }
        });
        let (reply, rx) = tokio::sync::oneshot::channel();
        tx.send(Command::Swap { remove: old, add, reply }).map_err(|_| RegistryError::Closed)?;
        let head = rx.await.map_err(|_| RegistryError::Closed)?;
        Ok((
            subscription.map(|mut s| {
                s.start = head;
                s
            }),
            head,
        ))
    }

    async fn add(&self, sub: Arc<Subscriber>) -> Result<Subscription, RegistryError> {
        let tx = self.tx.lock().clone().ok_or(RegistryError::Closed)?;
        let id = sub.id;
        let tap = sub.is_tap();
        {
            let mut all = self.all.lock();
            if !tap && all.len() - self.taps.load(Ordering::Relaxed) >= self.max_subscribers {
                return Err(RegistryError::Full(self.max_subscribers));
            }
            if tap {
                self.taps.fetch_add(1, Ordering::Relaxed);
            }
            all.insert(id, sub.clone());
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let mut subscription = Subscription {
            sub: sub.clone(),
            start: 0,
            tx: Some(tx.clone()),
            taps: tap.then(|| self.taps.clone()),
        };
        tx.send(Command::Add(sub, reply)).map_err(|_| RegistryError::Closed)?;
        subscription.start = rx.await.map_err(|_| RegistryError::Closed)?;
        // Before the stream can drain anything: it starts at `start` (see `set_live_start`).
        subscription.sub.set_live_start(subscription.start);
        Ok(subscription)
    }

    /// Number of live streams (taps not counted).
    pub fn len(&self) -> usize {
        let all = self.all.lock();
        all.len() - self.taps.load(Ordering::Relaxed)
    }

    /// True when nobody is subscribed, taps included (shutdown waits for this).
    pub fn is_empty(&self) -> bool {
        self.all.lock().is_empty()
    }

    /// What the current shard indexes hold, summed over shards.
    pub fn index_stats(&self) -> IndexStats {
        let mut total = IndexStats::default();
        for s in &self.shards {
            total += s.load().stats();
        }
        total
    }

    /// A snapshot of the live streams (taps are reported by the hub, each with its name).
    pub fn snapshot(&self) -> Vec<Arc<Subscriber>> {
        self.all.lock().values().filter(|s| !s.is_tap()).cloned().collect()
    }

    /// Closes the connections of subscribers whose queue has been full for `stall_ms` or more.
    /// Returns how many were closed.
    pub fn reap_stalled(&self, now_ms: u64, stall_ms: u64) -> usize {
        let mut n = 0;
        for sub in self.snapshot() {
            if let Some(since) = sub.full_since() {
                if now_ms.saturating_sub(since) >= stall_ms && !sub.is_closed() {
                    tracing::info!(subscriber = sub.id, "closing stalled subscriber");
                    sub.kill_connection();
                    n += 1;
                }
            }
        }
        n
    }

    /// Wakes every subscriber's writer (used at shutdown).
    pub fn wake_all(&self) {
        for sub in self.snapshot() {
            sub.wake();
        }
    }

    /// Refuses new subscriptions and stops the index builder once the current ones are gone.
    pub fn close(&self) {
        self.tx.lock().take();
    }

    /// Waits for the index-builder thread to exit (after [`Registry::close`] and once every
    /// [`Subscription`] has been dropped).
    pub fn join(&self) {
        if let Some(h) = self.builder.lock().take() {
            let _ = h.join();
        }
    }
}

/// How long the index builder waits without commands before giving memory back.
const COLLECT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns the memory this thread's allocator heap holds free to the system.
///
/// Every rebuild allocates a whole new index and frees the previous one, so after a burst of
/// connects the builder's heap holds several indexes' worth of free pages. mimalloc (the global
/// allocator, `lib.rs`) gives them back only when the owning thread allocates again, which an
/// idle builder never does: for 5,000 subscribers with distinct filters that was about 6 KB of
/// resident memory per subscriber (`perf/RESULTS.md` §8).
fn give_back_free_memory() {
    // SAFETY: `mi_collect` only walks and trims the calling thread's own heap; it takes no
    // pointers and is safe to call at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn build_loop(
    rx: Receiver<Command>,
    shards: Vec<Arc<ArcSwap<CompiledIndex>>>,
    all: Arc<Mutex<AHashMap<u64, Arc<Subscriber>>>>,
    ring: Arc<Ring<Arc<Event>>>,
    stats: Arc<RebuildStats>,
) {
    let n = shards.len() as u64;
    let mut members: Vec<BTreeMap<u64, Arc<Subscriber>>> = vec![BTreeMap::new(); shards.len()];
    let mut generation = 0u64;
    let mut rested_at = std::time::Instant::now();
    let mut built_since_collect = false;
    loop {
        let first = match rx.recv_timeout(COLLECT_AFTER) {
            Ok(cmd) => cmd,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if std::mem::take(&mut built_since_collect) {
                    give_back_free_memory();
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let mut dirty = vec![false; shards.len()];
        let mut replies = Vec::new();
        // Rebuild at once if the builder has rested long enough, else gather commands until it
        // has: a rebuild that took d is followed by at least 4d of rest (at most 50 ms). A
        // stream of connects then costs the builder at most a fifth of a core (rebuilds of a
        // large shard take milliseconds) instead of rebuilding back to back and competing with
        // the matcher threads, while a lone connect never waits for a window: at 10,000
        // subscribers it is answered after one rebuild (~12 ms), not after four more of rest.
        let mut batch = vec![first];
        while let Ok(cmd) = rx.recv_deadline(rested_at) {
            batch.push(cmd);
        }
        batch.extend(rx.try_iter());
        let began = std::time::Instant::now();
        let mut commands = 0u64;
        for cmd in batch {
            commands += 1;
            match cmd {
                Command::Add(sub, reply) => {
                    let s = (sub.id % n) as usize;
                    dirty[s] = true;
                    members[s].insert(sub.id, sub);
                    replies.push(reply);
                }
                Command::Remove(id) => {
                    let s = (id % n) as usize;
                    if members[s].remove(&id).is_some() {
                        dirty[s] = true;
                    }
                    all.lock().remove(&id);
                }
                Command::Swap { remove, add, reply } => {
                    let s = (remove % n) as usize;
                    dirty[s] = true;
                    members[s].remove(&remove);
                    all.lock().remove(&remove);
                    if let Some(sub) = add {
                        let t = (sub.id % n) as usize;
                        dirty[t] = true;
                        members[t].insert(sub.id, sub);
                    }
                    replies.push(reply);
                }
            }
        }
        for (s, d) in dirty.iter().enumerate() {
            if *d {
                generation += 1;
                let subs = members[s].values().cloned().collect();
                shards[s].store(Arc::new(CompiledIndex::build(subs, generation)));
                stats.rebuilds.fetch_add(1, Ordering::Relaxed);
            }
        }
        let last_build = began.elapsed();
        rested_at = std::time::Instant::now() + (last_build * 4).min(std::time::Duration::from_millis(50));
        built_since_collect = true;
        let micros = last_build.as_micros() as u64;
        stats.commands.fetch_add(commands, Ordering::Relaxed);
        stats.last_micros.store(micros, Ordering::Relaxed);
        stats.max_micros.fetch_max(micros, Ordering::Relaxed);
        // See `matcher::load_consistent`: the head must be read after the stores.
        fence(Ordering::SeqCst);
        let start = ring.head();
        for r in replies {
            let _ = r.send(start);
        }
    }
}
