//! One live subscriber: its filter, its bounded queue of pre-serialised events, and lag state.
//!
//! The matcher thread that owns a subscriber pushes reference-counted event bytes into its
//! queue (no copy, no allocation once the queue has grown to its working size); the SSE writer
//! drains it. The queue is bounded: when it is full the subscriber is *lagged*, newer events
//! are dropped for it alone and counted, and a `Lagged` marker takes their place in the queue so
//! the client is told in-band, at the right position, how many it missed. A queue that stays
//! full past the stall timeout gets the subscriber's connection closed by the reaper.
//! Nothing here blocks: ingest and the other subscribers never wait for a slow one.
//!
//! Every field that threads share says in its comment who writes it, who reads it and with
//! which memory ordering, and why that ordering is enough. The lock, atomics and waker come
//! from `ring::sync`, so the loom model tests (`tests/loom.rs`) check this very code.

use crate::event::dialect::WireForm;
use crate::query::ast::Expr;
use crate::query::plan::Plan;
use crate::ring::sync::{AtomicBool, AtomicU64, AtomicWaker, Mutex, Ordering};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

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
    /// An event for a tap (`crate::tap`): its sequence number and the event itself, which a
    /// tap reads whole (keys, span, time), where a stream only needs the bytes.
    Tapped {
        /// Global sequence number.
        seq: u64,
        /// The event, shared with the ring.
        event: Arc<crate::event::Event>,
    },
}

/// What a subscriber's queue lock guards (`Subscriber::queue`): every field is read and
/// written only with that lock held, which orders all of it.
struct Queue {
    /// The items not yet taken by the writer, oldest first, at most `capacity` events (plus
    /// the `Lagged` markers between them).
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
    /// The waker of the task serving the connection.
    ///
    /// Registered by that task in `poll_killed`, before it loads `killed`; woken by `kill`
    /// (the reaper), after it stored `killed`. The waker's own read-modify-writes order the
    /// two: if the kill's wake comes after the registration, it wakes the task; if it comes
    /// before, the registration synchronises with it, and the task's load of `killed` that
    /// follows sees `true`. Either way the task does not sleep through a kill.
    waker: AtomicWaker,
    /// True once the connection is to be dropped.
    ///
    /// Stored by `kill` (any thread: the reaper, `kill_connection`), loaded by the connection
    /// task in `poll_killed`. Both are SeqCst, which is more than needed: as `waker` says, the
    /// waker's ordering already makes a task that registered before the kill's wake either see
    /// the flag or get woken. Nothing else is read through the flag.
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
    /// What it wants: the parsed query, with its event-type terms widened to both catalogue
    /// generations' names (`query::generations`), so this is the reference meaning the
    /// compiled `plan` reproduces.
    pub filter: Expr,
    /// How the compiled index evaluates `filter`, computed once at subscription.
    pub plan: Plan,
    /// Whether a match pulls in the rest of the span.
    pub follow: bool,
    /// The most events `queue` holds; never changes.
    capacity: usize,
    /// The queued items, the drops not yet reported and the start of a stall.
    ///
    /// Written by the one thread that matches for this subscriber (`push_quiet`: its shard's
    /// matcher thread, or a producer matching for that thread while it sleeps, never both at
    /// once, since both hold the shard's lock) and by the stream's writer task (`drain_into`);
    /// read by the reaper (`full_since`) and the stats (`queued`). Everything in it is read and
    /// written with the lock held, and the lock orders it all; no atomic ordering is involved.
    /// The lock is held for a few pointer moves, never across a wake or an await.
    queue: Mutex<Queue>,
    /// The writer task's waker.
    ///
    /// Registered by the writer task (`register_waker`) before each look at the queue; woken
    /// by the matcher after a push that found the queue empty (once per batch, after the
    /// batch), and by `kill_connection` and shutdown. No wake-up is lost: the writer returns
    /// pending only after a look that found the queue empty, so the first push after that look
    /// finds it empty too and says to wake, and since that push took the lock after the look,
    /// the registration happens before the wake, which therefore sees it. Pushes after that
    /// one and before the writer's next look find the queue non-empty and do not wake: the
    /// writer, already woken, takes their items on that look.
    waker: AtomicWaker,
    /// True once the stream has ended or the subscriber is killed; matchers skip it from then.
    ///
    /// Stored by `close` (the stream's `Subscription` dropped, or `kill_connection` from the
    /// reaper) with Release; loaded with Acquire by matchers before each push (`is_closed`), by
    /// the writer after it found the queue empty, and by the reaper. It publishes no data, so
    /// its ordering is not what matters: a writer must notice it, and `kill_connection` wakes
    /// the writer after storing it, while the writer loads it after registering its waker, so
    /// (as for `ConnHandle::waker`) it either sees `true` or is woken. A matcher that loads a
    /// stale `false` pushes an event or two more into a queue nobody drains, which its bound
    /// makes harmless.
    closed: AtomicBool,
    /// Events queued so far. Added to (Relaxed) by the matching thread after a push, read by
    /// the stats. Relaxed suffices: it is a count nothing is ordered by, and a reader may see
    /// it a few events behind.
    delivered: AtomicU64,
    /// Events dropped because the queue was full. Added to (Relaxed) by the matching thread,
    /// read by the stats; Relaxed for the same reason as `delivered`.
    dropped: AtomicU64,
    /// The first sequence number the stream sends from its queue (its live start); 0 until
    /// the subscription is answered. See [`Subscriber::set_live_start`].
    ///
    /// Stored once by the subscribing task (`set_live_start`), after the registry answered and
    /// before it builds the stream; loaded by the writer under the queue lock (`drain_into`).
    /// Relaxed suffices because the writer is that same task, or one it starts later, so the
    /// store happens before every load by program order or by the runtime's hand-over of the
    /// task. Matchers never read it: they may queue events below it, which the writer drops.
    live_start: AtomicU64,
    /// The connection to close when the subscriber stalls, if it has one; never changes.
    conn: Option<Arc<ConnHandle>>,
    /// True for a tap's queue (`crate::tap`), which holds event handles instead of wire
    /// bytes; never changes.
    tap: bool,
    /// The dialect its events are written in; never changes after subscription.
    form: WireForm,
    /// Who opened the stream and what it needs, set once by the HTTP handler right after the
    /// subscription (a configuration reload reads it to find the streams a principal lost).
    /// Never read by the matcher.
    owner: std::sync::OnceLock<StreamOwner>,
    /// The last frame to send before the stream ends, set once by whoever closes it with a
    /// reason ([`Subscriber::close_with`]) before `closed` is stored; read by the SSE body
    /// after it saw `closed` (the Release store and Acquire load of `closed` order the two).
    farewell: std::sync::OnceLock<Bytes>,
}

/// The principal a live stream belongs to and what it was opened with, so a configuration
/// reload can tell which streams the new principals still allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOwner {
    /// The principal's name.
    pub principal: String,
    /// The permission the stream's endpoint requires.
    pub permission: crate::auth::Permission,
    /// The principal's forced filter when the stream opened, printed canonically (`None`:
    /// the principal had none).
    pub filter: Option<String>,
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
        let filter = crate::query::generations::across_generations(filter);
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
            tap: false,
            form: WireForm::Classic,
            owner: std::sync::OnceLock::new(),
            farewell: std::sync::OnceLock::new(),
        }
    }

    /// Records who opened the stream (once; a later call is ignored).
    pub fn set_owner(&self, owner: StreamOwner) {
        let _ = self.owner.set(owner);
    }

    /// Who opened the stream, if the handler said.
    pub fn owner(&self) -> Option<&StreamOwner> {
        self.owner.get()
    }

    /// Closes the stream with a last frame: the matcher queues nothing more, the SSE body
    /// sends what is already queued, then `frame`, then ends. The connection is not killed,
    /// so the frame reaches the client.
    pub fn close_with(&self, frame: Bytes) {
        let _ = self.farewell.set(frame);
        self.close();
        self.wake();
    }

    /// The last frame set by [`Subscriber::close_with`], once the stream is closed.
    pub fn farewell(&self) -> Option<&Bytes> {
        if self.is_closed() {
            self.farewell.get()
        } else {
            None
        }
    }

    /// The same subscriber, written in `form` (a wire dialect) instead of the classic form.
    pub fn in_form(self, form: WireForm) -> Subscriber {
        Subscriber { form, ..self }
    }

    /// `event`'s bytes as this stream sends them (its dialect's wire form), shared with every
    /// other stream of that dialect.
    #[inline]
    pub fn wire_of(&self, event: &crate::event::Event) -> Bytes {
        self.form.wire(event).clone()
    }

    /// The queue of a tap (`crate::tap`): the same bounded queue, lag markers and counters as
    /// a stream's, holding event handles. A tap never follows spans and has no connection.
    pub fn new_tap(id: u64, filter: Expr, capacity: usize) -> Subscriber {
        Subscriber { tap: true, ..Subscriber::new(id, filter, false, capacity, None) }
    }

    /// True for a tap's queue.
    pub fn is_tap(&self) -> bool {
        self.tap
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
        self.push_item(|| Item::Event { seq, wire: wire.clone() }, now_ms)
    }

    /// [`Subscriber::push_quiet`] of an event as this subscriber takes it: a stream's queue
    /// takes the event's bytes in its dialect (a reference count, no copy), a tap's takes the
    /// event handle. This is what the matcher calls.
    #[inline]
    pub fn push_event_quiet(&self, seq: u64, event: &Arc<crate::event::Event>, now_ms: u64) -> Push {
        if self.tap {
            self.push_item(|| Item::Tapped { seq, event: event.clone() }, now_ms)
        } else {
            // Encoded (the first time any stream of the dialect asks) before the lock is taken.
            let wire = self.form.wire(event);
            self.push_item(|| Item::Event { seq, wire: wire.clone() }, now_ms)
        }
    }

    /// Queues the item `make` builds, unless the queue is full; `make` runs only when the
    /// item is queued, so a drop costs no reference count.
    #[inline]
    fn push_item(&self, make: impl FnOnce() -> Item, now_ms: u64) -> Push {
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
            q.items.push_back(make());
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
        let before = |i: &Item| match i {
            Item::Event { seq, .. } | Item::Tapped { seq, .. } => *seq < start,
            Item::Lagged(_) => false,
        };
        if q.items.front().is_some_and(before) {
            q.items.retain(|i| !before(i));
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
                Item::Tapped { seq, .. } => format!("t{seq}"),
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
