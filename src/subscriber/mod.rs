//! One live subscriber: its filter, its bounded queue of pre-serialised events, and lag state.
//!
//! The matcher thread that owns a subscriber pushes reference-counted event bytes into its
//! queue (no copy, no allocation once the queue has grown to its working size); the SSE writer
//! drains it. The queue is bounded: when it is full the subscriber is *lagged*, newer events
//! are dropped for it alone and counted, and a `Lagged` marker takes their place in the queue so
//! the client is told in-band, at the right position, how many it missed. A queue that stays
//! full past the stall timeout gets the subscriber's connection closed by the reaper.
//! Nothing here blocks: ingest and the other subscribers never wait for a slow one.

pub mod registry;
pub mod replay;

use crate::matcher::plan::Plan;
use crate::query::ast::Expr;
use atomic_waker::AtomicWaker;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

pub use registry::Registry;

/// One entry of a subscriber's queue.
#[derive(Debug, Clone)]
pub enum Item {
    /// An event: its sequence number and its bytes (shared with every other subscriber).
    Event {
        /// Global sequence number.
        seq: u64,
        /// The event's wire form ([`crate::event::Event::wire`]): a comma, then its JSON object.
        wire: Bytes,
    },
    /// This many events were dropped here because the queue was full.
    Lagged(u64),
}

struct Queue {
    items: VecDeque<Item>,
    /// Drops not yet reported by a `Lagged` item.
    pending_drop: u64,
    /// Milliseconds (hub clock) since the queue has been full, or `None`.
    full_since: Option<u64>,
}

/// Closes a subscriber's connection from outside its task (for stalled clients). One task
/// waits on it: the one serving the connection.
#[derive(Debug, Default)]
pub struct ConnHandle {
    waker: AtomicWaker,
    killed: AtomicBool,
}

impl ConnHandle {
    /// Asks the connection task to drop the connection.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Ready once [`ConnHandle::kill`] was called; otherwise wakes the caller when it is.
    pub fn poll_killed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Register before looking, so a kill between the look and the return still wakes us.
        self.waker.register(cx.waker());
        if self.killed.load(Ordering::SeqCst) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Resolves when [`ConnHandle::kill`] was called.
    pub async fn killed(&self) {
        std::future::poll_fn(|cx| self.poll_killed(cx)).await
    }
}

/// What [`Subscriber::push_quiet`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; `wake` is true when the queue was empty, so the writer may be asleep.
    Queued {
        /// The writer must be woken.
        wake: bool,
    },
    /// Refused because the queue is full (counted as dropped, reported in-band later).
    Dropped,
}

/// What [`Subscriber::push_batch_quiet`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPush {
    /// Events queued.
    pub queued: u64,
    /// Events refused because the queue was full (counted, reported in-band later).
    pub dropped: u64,
    /// The queue was empty before, so the writer may be asleep and must be woken.
    pub wake: bool,
}

/// A live subscriber.
pub struct Subscriber {
    /// Unique id (also selects the matcher thread that owns it).
    pub id: u64,
    /// What it wants (the parsed query).
    pub filter: Expr,
    /// How the compiled index evaluates `filter`, computed once at subscription.
    pub plan: Plan,
    /// Whether a match pulls in the rest of the span.
    pub follow: bool,
    capacity: usize,
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    closed: AtomicBool,
    /// Set while the queue is full (under the queue's lock; cleared by a drain). Read without
    /// the lock by the matcher threads, so an event for a lagging subscriber is counted as
    /// dropped without taking a reference to it; see [`Subscriber::is_full`].
    full: AtomicBool,
    delivered: AtomicU64,
    dropped: AtomicU64,
    /// The first sequence number the stream sends from its queue (its live start); 0 until
    /// the subscription is answered. See [`Subscriber::set_live_start`].
    live_start: AtomicU64,
    conn: Option<Arc<ConnHandle>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("id", &self.id).field("filter", &self.filter).finish()
    }
}

impl Subscriber {
    /// A subscriber whose queue holds at most `capacity` events. The queue allocates as it
    /// fills, so an idle subscriber costs only this struct.
    pub fn new(
        id: u64,
        filter: Expr,
        follow: bool,
        capacity: usize,
        conn: Option<Arc<ConnHandle>>,
    ) -> Subscriber {
        Subscriber {
            id,
            plan: Plan::compile(&filter),
            filter,
            follow,
            capacity: capacity.max(1),
            queue: Mutex::new(Queue { items: VecDeque::new(), pending_drop: 0, full_since: None }),
            waker: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            live_start: AtomicU64::new(0),
            conn,
        }
    }

    /// Queues one event (called by the owning matcher thread) and wakes the writer if the
    /// queue was empty. Returns false if it was dropped because the queue is full. `now_ms` is
    /// the hub's coarse clock.
    #[inline]
    pub fn push(&self, seq: u64, wire: &Bytes, now_ms: u64) -> bool {
        match self.push_quiet(seq, wire, now_ms) {
            Push::Dropped => false,
            Push::Queued { wake } => {
                if wake {
                    self.wake();
                }
                true
            }
        }
    }

    /// Queues one event without waking the writer; the caller must call [`Subscriber::wake`]
    /// when the result says so (the matcher threads wake once per batch rather than once per
    /// event: a wake is a cross-thread notification, the most expensive part of a delivery).
    #[inline]
    pub fn push_quiet(&self, seq: u64, wire: &Bytes, now_ms: u64) -> Push {
        let was_empty;
        {
            let mut q = self.queue.lock();
            if q.items.len() >= self.capacity {
                q.pending_drop += 1;
                q.full_since.get_or_insert(now_ms);
                drop(q);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Push::Dropped;
            }
            was_empty = q.items.is_empty();
            if q.pending_drop > 0 {
                let n = std::mem::take(&mut q.pending_drop);
                q.items.push_back(Item::Lagged(n));
            }
            q.items.push_back(Item::Event { seq, wire: wire.clone() });
            if q.items.len() >= self.capacity {
                self.full.store(true, Ordering::Relaxed);
            }
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Push::Queued { wake: was_empty }
    }

    /// Queues a batch of events, in order, under one lock, without waking the writer, and
    /// leaves `items` empty. What does not fit in the queue is dropped and reported in-band,
    /// as with [`Subscriber::push_quiet`]. The matcher threads stage a batch's deliveries per
    /// subscriber and hand each subscriber its share at once: one lock and one counter update
    /// per subscriber per batch instead of per event, on memory the subscriber's writer also
    /// touches from the other core.
    ///
    /// An entry without bytes (`None`) is an event the matcher saw this subscriber's queue
    /// full for ([`Subscriber::is_full`]); it is counted as dropped wherever it falls.
    pub fn push_batch_quiet(&self, items: &mut Vec<(u64, Option<Bytes>)>, now_ms: u64) -> BatchPush {
        let n = items.len() as u64;
        if n == 0 {
            return BatchPush { queued: 0, dropped: 0, wake: false };
        }
        let (queued, was_empty) = {
            let mut q = self.queue.lock();
            let was_empty = q.items.is_empty();
            // The same rule as `push_quiet`, event by event: once the queue is full the rest
            // of the batch is dropped (nothing drains it while the lock is held).
            let room = self.capacity.saturating_sub(q.items.len()).min(items.len());
            q.items.reserve(room + 1);
            let mut queued = 0u64;
            for (seq, wire) in items.drain(..) {
                let Some(wire) = wire.filter(|_| q.items.len() < self.capacity) else {
                    q.pending_drop += 1;
                    q.full_since.get_or_insert(now_ms);
                    continue;
                };
                if q.pending_drop > 0 {
                    let lost = std::mem::take(&mut q.pending_drop);
                    q.items.push_back(Item::Lagged(lost));
                }
                q.items.push_back(Item::Event { seq, wire });
                queued += 1;
            }
            self.full.store(q.items.len() >= self.capacity, Ordering::Relaxed);
            (queued, was_empty)
        };
        let dropped = n - queued;
        if queued > 0 {
            self.delivered.fetch_add(queued, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        BatchPush { queued, dropped, wake: was_empty && queued > 0 }
    }

    /// Moves up to `max` queued items into `out` (called by the writer), oldest first. A lag
    /// that happened after the last queued event is reported at the end, once the queue is
    /// empty. Returns how many items were moved.
    ///
    /// Why a bound: a subscriber that fell behind has up to `subscriber-queue` events waiting,
    /// and taking them all at once built a frame of that many parts, megabytes of vectors that
    /// the allocator handed back to the system after the write and faulted in again for the
    /// next one (`perf/RESULTS.md` §13). A writer takes one frame's worth at a time instead and
    /// comes back for the rest as soon as it is written.
    pub fn drain_into(&self, out: &mut Vec<Item>, max: usize) -> usize {
        let mut q = self.queue.lock();
        let start = self.live_start.load(Ordering::Relaxed);
        if matches!(q.items.front(), Some(Item::Event { seq, .. }) if *seq < start) {
            q.items.retain(|i| !matches!(i, Item::Event { seq, .. } if *seq < start));
        }
        let n = q.items.len().min(max);
        out.extend(q.items.drain(..n));
        if n > 0 {
            q.full_since = None;
            self.full.store(false, Ordering::Relaxed);
        }
        if q.items.is_empty() {
            if q.pending_drop > 0 {
                out.push(Item::Lagged(std::mem::take(&mut q.pending_drop)));
            }
            q.full_since = None;
            self.full.store(false, Ordering::Relaxed);
            // Give back memory a burst grew, so an idle subscriber stays small.
            if q.items.capacity() > 1024 {
                q.items.shrink_to(64);
            }
        }
        n
    }

    /// Registers the writer's waker; call before checking the queue to avoid a lost wake-up.
    pub fn register_waker(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Wakes the writer (shutdown, kill).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Milliseconds (hub clock) since the queue has been continuously full, if it is.
    pub fn full_since(&self) -> Option<u64> {
        self.queue.lock().full_since
    }

    /// Number of queued items.
    pub fn queued(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Marks the subscriber gone (its stream ended); matchers skip it from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// True while the queue is full, as last seen under its lock: a hint, read without the
    /// lock. A matcher that sees it stages the event as dropped without cloning its bytes (two
    /// atomic operations on a count other cores are changing); a drain in the meantime only
    /// means one more event is reported as lagged than strictly had to be.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// True once the stream has ended.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Events queued for this subscriber so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Events dropped for this subscriber because it lagged.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sets the live start `H` the subscription was answered with: queued events below it are
    /// left out when drained. Why: the index that adds this subscriber is stored before `H` is
    /// read, so a matcher thread still behind `H` matches some earlier events with it. A plain
    /// stream can take those, but a resuming one gets everything below `H` from the replay,
    /// and would receive them twice (seen in `tests/resume.rs` under load).
    pub fn set_live_start(&self, seq: u64) {
        self.live_start.store(seq, Ordering::Relaxed);
    }

    /// Closes the connection carrying this subscriber, if it has one.
    pub fn kill_connection(&self) {
        self.close();
        if let Some(c) = &self.conn {
            c.kill();
        }
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(s: &Subscriber) -> Vec<String> {
        let mut out = vec![];
        s.drain_into(&mut out, usize::MAX);
        out.into_iter()
            .map(|i| match i {
                Item::Event { seq, .. } => format!("e{seq}"),
                Item::Lagged(n) => format!("lag{n}"),
            })
            .collect()
    }

    #[test]
    fn a_bounded_drain_takes_the_oldest_and_reports_lag_when_empty() {
        let b = Bytes::from_static(b",{}");
        let s = Subscriber::new(1, Expr::True, true, 3, None);
        for q in 0..5 {
            s.push(q, &b, 1);
        }
        assert!(s.is_full());
        let mut out = vec![];
        assert_eq!(s.drain_into(&mut out, 2), 2);
        assert_eq!(out.len(), 2, "no lag marker while events are still queued");
        assert!(!s.is_full() && s.full_since().is_none());
        assert_eq!(s.queued(), 1);
        let rest: Vec<_> = {
            let mut more = vec![];
            s.drain_into(&mut more, 2);
            more.into_iter()
                .map(|i| match i {
                    Item::Event { seq, .. } => format!("e{seq}"),
                    Item::Lagged(n) => format!("lag{n}"),
                })
                .collect()
        };
        assert_eq!(rest, vec!["e2", "lag2"]);
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn a_batch_push_behaves_like_pushes_one_by_one() {
        let b = Bytes::from_static(b",{}");
        let batch = |seqs: std::ops::Range<u64>| seqs.map(|q| (q, Some(b.clone()))).collect::<Vec<_>>();
        // Capacity 3: a batch of 5 into an empty queue queues 3, drops 2, and asks for a wake.
        let s = Subscriber::new(1, Expr::True, true, 3, None);
        let mut items_in = batch(0..5);
        let r = s.push_batch_quiet(&mut items_in, 9);
        assert!(items_in.is_empty());
        assert_eq!(r, BatchPush { queued: 3, dropped: 2, wake: true });
        assert_eq!((s.delivered(), s.dropped(), s.full_since()), (3, 2, Some(9)));
        // The same through single pushes gives the same queue.
        let t = Subscriber::new(2, Expr::True, true, 3, None);
        for q in 0..5 {
            t.push(q, &b, 9);
        }
        assert_eq!(items(&t), vec!["e0", "e1", "e2", "lag2"]);
        assert_eq!(items(&s), vec!["e0", "e1", "e2", "lag2"]);
        // After a drain, a non-empty queue asks for no wake, and an empty batch does nothing.
        let mut more = batch(5..6);
        assert_eq!(s.push_batch_quiet(&mut more, 10), BatchPush { queued: 1, dropped: 0, wake: true });
        let mut more = batch(6..7);
        assert_eq!(s.push_batch_quiet(&mut more, 10), BatchPush { queued: 1, dropped: 0, wake: false });
        assert_eq!(s.push_batch_quiet(&mut Vec::new(), 10), BatchPush { queued: 0, dropped: 0, wake: false });
        assert_eq!(items(&s), vec!["e5", "e6"]);
        // A drop not yet reported goes in front of the next batch's first event. A drain
        // reports pending drops itself, so the state is reached here by emptying the queue
        // directly.
        let u = Subscriber::new(3, Expr::True, true, 1, None);
        u.push(0, &b, 0);
        u.push(1, &b, 0);
        let mut first = vec![];
        u.drain_into(&mut first, usize::MAX);
        assert_eq!(first.len(), 2, "the event and its lag marker");
        u.push(2, &b, 0);
        u.push(3, &b, 0);
        u.queue.lock().items.clear();
        let mut more = batch(4..5);
        u.push_batch_quiet(&mut more, 0);
        assert_eq!(items(&u), vec!["lag1", "e4"]);
    }

    #[test]
    fn bounded_queue_reports_lag_in_place() {
        let s = Subscriber::new(1, Expr::True, true, 2, None);
        let b = Bytes::from_static(b"{}");
        assert!(s.push(0, &b, 0));
        assert!(s.push(1, &b, 0));
        assert!(!s.push(2, &b, 5));
        assert!(!s.push(3, &b, 6));
        assert_eq!(s.full_since(), Some(5));
        assert_eq!(items(&s), vec!["e0", "e1", "lag2"]);
        assert_eq!(s.full_since(), None);
        assert!(s.push(4, &b, 7));
        assert_eq!(items(&s), vec!["e4"]);
        // A drop followed by a successful push puts the marker before the new event.
        let s = Subscriber::new(2, Expr::True, true, 1, None);
        s.push(0, &b, 0);
        s.push(1, &b, 0);
        let mut out = vec![];
        s.drain_into(&mut out, usize::MAX);
        assert_eq!(out.len(), 2);
        assert_eq!(s.dropped(), 1);
        assert_eq!(s.delivered(), 1);
    }

    #[test]
    fn events_below_the_live_start_are_left_out() {
        let s = Subscriber::new(1, Expr::True, true, 16, None);
        let b = Bytes::from_static(b"{}");
        // Queued by a matcher that was still behind the live start when the index changed.
        for seq in 5..8 {
            s.push(seq, &b, 0);
        }
        s.set_live_start(7);
        for seq in 8..10 {
            s.push(seq, &b, 0);
        }
        assert_eq!(items(&s), vec!["e7", "e8", "e9"]);
        s.push(10, &b, 0);
        assert_eq!(items(&s), vec!["e10"]);
    }
}
