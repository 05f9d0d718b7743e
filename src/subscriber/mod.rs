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
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Push::Queued { wake: was_empty }
    }

    /// Moves up to `max` queued items into `out` (called by the writer), oldest first. A lag
    /// that happened after the last queued event is reported at the end, once the queue is
    /// empty. Returns how many items were moved.
    ///
    /// Why a bound: a subscriber that fell behind has up to `subscriber-queue` events waiting,
    /// and taking them all at once built a frame of that many parts, megabytes of vectors that
    /// the allocator handed back to the system after the write and faulted in again for the
    /// next one (`perf/RESULTS.md` §13). A writer takes what fits one `writev` at a time
    /// instead and comes back for the rest as soon as it is written.
    pub fn drain_into(&self, out: &mut Vec<Item>, max: usize) -> usize {
        let mut q = self.queue.lock();
        let start = self.live_start.load(Ordering::Relaxed);
        if matches!(q.items.front(), Some(Item::Event { seq, .. }) if *seq < start) {
            q.items.retain(|i| !matches!(i, Item::Event { seq, .. } if *seq < start));
        }
        let n = q.items.len().min(max);
        out.extend(q.items.drain(..n));
        if n > 0 {
            // There is room again: a stall is counted from the next refusal.
            q.full_since = None;
        }
        if q.items.is_empty() {
            if q.pending_drop > 0 {
                out.push(Item::Lagged(std::mem::take(&mut q.pending_drop)));
            }
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
        items_up_to(s, usize::MAX)
    }

    fn items_up_to(s: &Subscriber, max: usize) -> Vec<String> {
        let mut out = vec![];
        s.drain_into(&mut out, max);
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
        assert_eq!(s.full_since(), Some(1));
        // No lag marker while events are still queued: the drops came after them.
        assert_eq!(items_up_to(&s, 2), vec!["e0", "e1"]);
        assert!(s.full_since().is_none());
        assert_eq!(s.queued(), 1);
        assert_eq!(items_up_to(&s, 2), vec!["e2", "lag2"]);
        assert_eq!(s.queued(), 0);
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
