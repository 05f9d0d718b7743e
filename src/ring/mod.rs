//! The event log: a bounded, lock-free, multi-producer ring read by every matcher thread.
//!
//! Producers reserve a contiguous range of sequence numbers with one compare-and-swap (a whole
//! NDJSON body or webhook batch at once), write their slots and stamp them published. The
//! position in the ring *is* the event's global sequence number, so every subscriber sees
//! events in one total order, and `id:`/`Last-Event-ID` mean the same thing on every stream.
//!
//! Each consumer (matcher thread) has its own cursor; a slot is reused only once every
//! consumer has passed it. When the slowest consumer is a full ring behind, a reservation
//! fails with [`RingError::Full`]: backpressure to the producer, never a silent drop.
//!
//! Consumers spin briefly and then park; producers unpark only consumers that said they
//! sleep, so a busy pipeline makes no wake-up system calls.
//!
//! Every field that threads share says in its comment who writes it, who reads it and with
//! which memory ordering, and why that ordering is enough. The synchronisation primitives come
//! from [`sync`], so the loom model tests (`tests/loom.rs`) check this very code.

pub mod lease;
use self::sync::thread::{self, Thread};
use self::sync::{fence, spin_loop, AtomicBool, AtomicU64, Mutex, Ordering, UnsafeCell};
use crossbeam_utils::CachePadded;
use std::time::Duration;

/// The synchronisation primitives of the ring and of the subscriber queues
/// (`crate::subscriber`).
///
/// A normal build takes std's atomics and threads and parking_lot's lock, each re-exported or
/// behind a wrapper that inlines to the call it wraps, so the shim costs nothing. Under
/// `--cfg livetap_loom` (the model tests in `tests/loom.rs`) the same names are loom's, whose
/// atomics explore every interleaving and every value a weak ordering lets a load see, whose
/// `UnsafeCell` reports a write that is not ordered against a read, and whose lock and parking
/// report a deadlock.
pub(crate) mod sync {
    #[cfg(livetap_loom)]
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
    #[cfg(not(livetap_loom))]
    pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

    #[cfg(livetap_loom)]
    pub(crate) use loom::hint::spin_loop;
    #[cfg(not(livetap_loom))]
    pub(crate) use std::hint::spin_loop;

    #[cfg(livetap_loom)]
    pub(crate) use loom::cell::UnsafeCell;

    /// An `UnsafeCell` with loom's interface: its contents are reached only inside `with` (to
    /// read) or `with_mut` (to write), which is how loom's cell knows when each access starts
    /// and ends.
    #[cfg(not(livetap_loom))]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(livetap_loom))]
    impl<T> UnsafeCell<T> {
        /// A cell holding `value`.
        pub(crate) const fn new(value: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a pointer to read the contents through.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a pointer to write the contents through.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    #[cfg(not(livetap_loom))]
    pub(crate) use parking_lot::Mutex;

    /// loom's lock with parking_lot's interface (`lock` returns the guard). Why not keep
    /// parking_lot under loom: loom runs every modelled thread on one OS thread, so a real lock
    /// held across one of its switches would block that thread for good, and loom could not
    /// see the lock order either.
    #[cfg(livetap_loom)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    #[cfg(livetap_loom)]
    impl<T> Mutex<T> {
        /// A lock around `value`.
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        /// Takes the lock. A model thread that panics with it held fails the model anyway,
        /// so poisoning is unwrapped.
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }

    #[cfg(not(livetap_loom))]
    pub(crate) use atomic_waker::AtomicWaker;

    /// loom's `AtomicWaker` with the interface of the `atomic-waker` crate. The models check
    /// the subscriber's protocol against loom's waker, which promises what that crate does (a
    /// wake after a registration, in happens-before order, wakes the registered task), not
    /// against that crate's code.
    #[cfg(livetap_loom)]
    #[derive(Debug, Default)]
    pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

    #[cfg(livetap_loom)]
    impl AtomicWaker {
        /// A waker cell with no waker registered.
        pub(crate) fn new() -> AtomicWaker {
            AtomicWaker(loom::future::AtomicWaker::new())
        }

        /// Stores `waker` as the one to wake.
        pub(crate) fn register(&self, waker: &std::task::Waker) {
            self.0.register_by_ref(waker);
        }

        /// Wakes the registered waker, if any.
        pub(crate) fn wake(&self) {
            self.0.wake();
        }
    }

    /// Threads: the one that parks when a consumer has nothing to read, and the handle that
    /// producers unpark it through.
    pub(crate) mod thread {
        #[cfg(livetap_loom)]
        pub(crate) use loom::thread::{current, yield_now, Thread};
        #[cfg(not(livetap_loom))]
        pub(crate) use std::thread::{current, park_timeout, yield_now, Thread};

        /// loom has no timed park, so the model parks until unparked. That is stricter than
        /// the real timeout: a wake-up the protocol loses is a deadlock loom reports, where the
        /// timeout would only have delayed the consumer.
        #[cfg(livetap_loom)]
        pub(crate) fn park_timeout(_timeout: std::time::Duration) {
            loom::thread::park();
        }
    }
}

/// How many times a waiting consumer looks at the ring before it parks. The loom models go
/// straight to the park path: loom makes a thread that yielded (as a spin does) see the newest
/// stores afterwards, which would hide the stale last look that the sleep protocol must
/// survive, and the spinning itself only repeats the look that `consume` makes.
const SPINS_BEFORE_PARK: u32 = if cfg!(livetap_loom) { 0 } else { 200 };

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Not enough free slots now; the producer should wait or push back.
    #[error("ring full: {free} free slots, {wanted} wanted")]
    Full {
        /// Slots free at the time of the attempt.
        free: u64,
        /// Slots the batch needs.
        wanted: u64,
    },
    /// The batch is larger than the whole ring and can never fit.
    #[error("batch of {wanted} events is larger than the ring ({capacity})")]
    TooLarge {
        /// Slots the batch needs.
        wanted: u64,
        /// Ring capacity.
        capacity: u64,
    },
}

/// One place in the ring, holding the event of sequence numbers `i`, `i + capacity`, … in turn.
struct Slot<T> {
    /// `seq + 1` once the value for `seq` is in `value`; 0 while the slot was never written.
    ///
    /// Written by the one producer that reserved `seq` (`fill`), with a Release store made after
    /// it wrote `value`. Read by consumers (`consume_inner`, `ready`, `consumer_ready`) with
    /// Acquire loads. The pair is what publishes the value: a consumer that loads `seq + 1` also
    /// sees the value written before the store, and a consumer that loads anything else leaves
    /// `value` alone. Because it holds the sequence number and not a flag, an older turn's stamp
    /// is never taken for this turn's, so a stamp needs no reset between turns.
    stamp: AtomicU64,
    /// The value of the slot's latest turn (`None` before the first).
    ///
    /// No lock guards it; the reservation protocol does. Only the producer that reserved `seq`
    /// writes it (`fill`), and only after it saw every consumer's cursor past `seq - capacity`,
    /// the previous turn: its Acquire load of the cursors (`Gate::cursor`, directly or through
    /// `Ring::gate_cache`) orders each consumer's reads of the old value before this write.
    /// Consumers read it only after their Acquire load of `stamp` saw `seq + 1`, and never once
    /// they have stored a cursor past `seq`. So a write never overlaps a read, which is what the
    /// `Sync` impl of [`Ring`] rests on.
    value: UnsafeCell<Option<T>>,
}

/// What the producers know of one consumer: how far it has read and whether it sleeps.
struct Gate {
    /// The next sequence number this consumer reads: every slot below it is released.
    ///
    /// Written only by the thread that holds the [`Consumer`] (`consume_inner`), with a Release
    /// store made once it has finished with the values below it. Read with Acquire by producers
    /// (`Ring::tail` from `reserve`), by `consumer_ready` (a thread that waits for a consumer it
    /// does not hold) and by the stats. The Release/Acquire pair is what lets a producer
    /// overwrite the released slots: a load that sees the new cursor orders the consumer's reads
    /// of the old values before the producer's writes. The consumer reads its own copy
    /// (`Consumer::cursor`), so this is stored once per batch, not per event. Padded to a cache
    /// line of its own, so a consumer's stores do not slow another consumer's.
    cursor: CachePadded<AtomicU64>,
    /// True while the consumer is parked or about to park: producers must then unpark it.
    ///
    /// Set by the consumer's thread in `wait_consumer` (SeqCst store, then a SeqCst fence)
    /// before its last look at the ring, and cleared by that thread (Relaxed) when it stops
    /// waiting. Cleared by a producer with a swap (AcqRel) before it unparks the thread
    /// (`unpark`), and by `wake_all`. Read by producers (Relaxed) after a SeqCst fence that
    /// follows their stamps (`wake_consumers`, `consumer_sleeping`).
    ///
    /// The two SeqCst fences are the protocol: they fall one way or the other in the single
    /// SeqCst order, so either the consumer's last look sees the producer's stamp, or the
    /// producer's load sees `true` and it unparks the consumer. A wake-up is never lost. The
    /// orderings of the loads and stores themselves add nothing to that, so Relaxed suffices
    /// for the clearing stores and the producers' load: a stale `true` costs a spurious
    /// unpark, and a producer that loads a later `false` leaves the event to a consumer that is
    /// awake and will look again before it can park. The swap is AcqRel so that the producer
    /// that wins it sees the `thread` the consumer registered before setting the flag.
    sleeping: AtomicBool,
    /// The thread that waits for this consumer, registered on its first wait, for producers
    /// to unpark.
    ///
    /// Written by the waiting thread (`wait_consumer`) and read by a producer that won the
    /// `sleeping` swap and by `wake_all`, each under the lock, which orders them. Why a lock
    /// and not an atomic: a `Thread` is not one word, and the lock is taken on the sleep path
    /// only, never per event.
    thread: Mutex<Option<Thread>>,
}

/// The shared ring. Create with [`Ring::new`], which also hands out the consumers.
pub struct Ring<T> {
    /// The slots; a sequence number's slot is `seq & mask`. The box never changes after
    /// construction, only what its slots hold (see [`Slot`]).
    slots: Box<[Slot<T>]>,
    /// `capacity - 1`, capacity being a power of two. Never changes.
    mask: u64,
    /// The next sequence number to reserve: every number below it belongs to some producer.
    ///
    /// Written only by producers, with the compare-and-swap in `reserve` (AcqRel) that moves
    /// it past their batch. The swap being one read-modify-write is what keeps reserved ranges
    /// disjoint; its ordering publishes nothing, because nothing is read through `claim` (the
    /// stamps publish values, the cursors release slots). Read by producers in `reserve`, and
    /// by everyone else through [`Ring::head`] with SeqCst: the registry's index builder
    /// (a SeqCst fence, then `head`) and `matcher::load_consistent` (an index load, `head`,
    /// an index load) rely on that load taking its place in the single SeqCst order to agree on
    /// which index matches which events. A head says an event is reserved, not that it is
    /// published; consumers still wait for the stamp. Padded so that producers' swaps do not
    /// slow the consumers' reads of `gate_cache` or the slots.
    claim: CachePadded<AtomicU64>,
    /// A recent value of [`Ring::tail`] (the slowest cursor), so a producer with room to
    /// spare need not read every consumer's cursor line.
    ///
    /// Written by producers in `reserve` (Release), only when the cached value says the batch
    /// does not fit, with the tail they have just computed from the cursors; read by producers
    /// in `reserve` (Acquire). Only values computed from the cursors are stored, and cursors
    /// only grow, so it is never ahead of the true tail (two producers may store out of order
    /// and move it back, which is only conservative: a producer then looks at the cursors
    /// again). The Release/Acquire pair matters: a producer that trusts the cache reuses slots
    /// on the strength of another producer's Acquire loads of the cursors, and the pair hands
    /// those loads' happens-before (each consumer's reads of the old values) on to it.
    gate_cache: CachePadded<AtomicU64>,
    /// One gate per consumer, indexed by [`Consumer::index`]; the box never changes.
    gates: Box<[Gate]>,
}

// SAFETY: a slot's value is written only by the producer that reserved its sequence number,
// and only after every consumer's cursor has passed the previous occupant (checked in
// `reserve`); consumers read it only after the Release store of its stamp. So no slot
// is ever written while it is read, and values cross threads, hence `T: Send + Sync`.
unsafe impl<T: Send + Sync> Sync for Ring<T> {}
unsafe impl<T: Send + Sync> Send for Ring<T> {}

impl<T: Send + Sync> Ring<T> {
    /// A ring of `capacity` slots (rounded up to a power of two) read by `consumers` cursors.
    pub fn new(capacity: usize, consumers: usize) -> (std::sync::Arc<Ring<T>>, Vec<Consumer<T>>) {
        Self::starting_at(capacity, consumers, 0)
    }

    /// [`Ring::new`] whose first sequence number is `start`, so ids stay unique and increasing
    /// across restarts when earlier events were kept (the history store knows the next one).
    pub fn starting_at(
        capacity: usize,
        consumers: usize,
        start: u64,
    ) -> (std::sync::Arc<Ring<T>>, Vec<Consumer<T>>) {
        let cap = capacity.max(2).next_power_of_two();
        let slots =
            (0..cap).map(|_| Slot { stamp: AtomicU64::new(0), value: UnsafeCell::new(None) }).collect();
        let gates = (0..consumers.max(1))
            .map(|_| Gate {
                cursor: CachePadded::new(AtomicU64::new(start)),
                sleeping: AtomicBool::new(false),
                thread: Mutex::new(None),
            })
            .collect();
        let ring = std::sync::Arc::new(Ring {
            slots,
            mask: cap as u64 - 1,
            claim: CachePadded::new(AtomicU64::new(start)),
            gate_cache: CachePadded::new(AtomicU64::new(start)),
            gates,
        });
        let consumers =
            (0..consumers.max(1)).map(|i| Consumer { ring: ring.clone(), index: i, cursor: start }).collect();
        (ring, consumers)
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The next sequence number to be reserved (= number of events ever reserved).
    pub fn head(&self) -> u64 {
        self.claim.load(Ordering::SeqCst)
    }

    /// The position of the slowest consumer: every event before it has been matched.
    pub fn tail(&self) -> u64 {
        self.gates.iter().map(|g| g.cursor.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    /// Events reserved but not yet passed by every consumer.
    pub fn occupancy(&self) -> u64 {
        self.head().saturating_sub(self.tail())
    }

    /// Reserves `n` consecutive sequence numbers, calls `make(seq)` for each in order and
    /// publishes them. Returns the first sequence number. `make` runs inside the reservation,
    /// so it must be quick and must not panic (consumers wait for every reserved slot).
    pub fn try_publish(&self, n: usize, mut make: impl FnMut(u64) -> T) -> Result<u64, RingError> {
        let head = self.reserve(n as u64)?;
        for seq in head..head + n as u64 {
            // The value this one replaces is dropped here.
            self.fill(seq, make(seq));
        }
        self.wake_consumers();
        Ok(head)
    }

    /// Publishes every item of `items` as one batch, moving them into the ring (`items` is
    /// left empty), and appends the values they replace to `displaced`. Returns the first
    /// sequence number; on an error `items` is untouched.
    ///
    /// Why: a replaced slot holds an event a whole ring old, whose reference count lives on a
    /// cache line no core has touched since, and whose last reference this may be (its frees
    /// are cross-thread: it was allocated by a parser thread). Dropping 700 of those inside
    /// a producer's publish, as [`Ring::try_publish`] does, took about 250 µs of the one
    /// task that reads a busy producer's socket; moving the new events in (no reference-count
    /// increment) and handing the old ones back lets the caller drop them on another thread.
    pub fn try_publish_vec(&self, items: &mut Vec<T>, displaced: &mut Vec<T>) -> Result<u64, RingError> {
        let head = self.try_publish_vec_quiet(items, displaced)?;
        self.wake_consumers();
        Ok(head)
    }

    /// [`Ring::try_publish_vec`] without waking sleeping consumers. The caller must then, for
    /// every consumer that [`Ring::consumer_sleeping`] says sleeps, either consume the batch on
    /// its behalf or call [`Ring::wake_consumer`] (the matcher pool's producers help a sleeping
    /// matcher this way, see `matcher`).
    pub fn try_publish_vec_quiet(
        &self,
        items: &mut Vec<T>,
        displaced: &mut Vec<T>,
    ) -> Result<u64, RingError> {
        // Room for the replaced values first: nothing inside a reservation may fail.
        displaced.reserve(items.len());
        let head = self.reserve(items.len() as u64)?;
        for (seq, item) in (head..).zip(items.drain(..)) {
            if let Some(old) = self.fill(seq, item) {
                displaced.push(old);
            }
        }
        Ok(head)
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    fn reserve(&self, n: u64) -> Result<u64, RingError> {
        let cap = self.capacity();
        if n > cap {
            return Err(RingError::TooLarge { wanted: n, capacity: cap });
        }
        if n == 0 {
            return Ok(self.claim.load(Ordering::Acquire));
        }
        let mut head = self.claim.load(Ordering::Acquire);
        loop {
            let mut tail = self.gate_cache.load(Ordering::Acquire);
            if head + n > tail + cap {
                tail = self.tail();
                self.gate_cache.store(tail, Ordering::Release);
                if head + n > tail + cap {
                    return Err(RingError::Full { free: (tail + cap).saturating_sub(head), wanted: n });
                }
            }
            match self.claim.compare_exchange_weak(head, head + n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(head),
                Err(now) => head = now,
            }
        }
    }

    /// Writes the value of reserved sequence number `seq`, stamps it published, and returns
    /// the value it replaced.
    fn fill(&self, seq: u64, value: T) -> Option<T> {
        let slot = &self.slots[(seq & self.mask) as usize];
        // SAFETY: `seq` is reserved by this producer alone, and every consumer has passed
        // `seq - capacity` (checked in `reserve` against the gates), so nobody reads this slot.
        let old = slot.value.with_mut(|v| unsafe { (*v).replace(value) });
        slot.stamp.store(seq + 1, Ordering::Release);
        old
    }

    fn wake_consumers(&self) {
        // Pairs with the fence after the store of `sleeping` in `wait_consumer`: either the
        // consumer sees our stamps on its last look, or we see it sleeping here and unpark it.
        fence(Ordering::SeqCst);
        for gate in self.gates.iter() {
            Self::unpark(gate);
        }
    }

    fn unpark(gate: &Gate) {
        if gate.sleeping.load(Ordering::Relaxed) && gate.sleeping.swap(false, Ordering::AcqRel) {
            if let Some(t) = gate.thread.lock().as_ref() {
                t.unpark();
            }
        }
    }

    /// True when consumer `index` has said it parks (or is about to), after everything this
    /// thread published: a consumer that does not sleep is sure to see those events by itself.
    pub fn consumer_sleeping(&self, index: usize) -> bool {
        // The same pairing as in `wake_consumers`.
        fence(Ordering::SeqCst);
        self.gates[index].sleeping.load(Ordering::Relaxed)
    }

    /// Unparks consumer `index` if it still sleeps (the counterpart of
    /// [`Ring::try_publish_vec_quiet`]). Call it after [`Ring::consumer_sleeping`] said the
    /// consumer sleeps: that call's fence already ordered the publication before the look, so
    /// this one adds none.
    pub fn wake_consumer(&self, index: usize) {
        Self::unpark(&self.gates[index]);
    }

    /// True when the event at consumer `index`'s cursor is published. Reads the cursor the
    /// consumer last stored, so it works from a thread that does not own the consumer.
    pub fn consumer_ready(&self, index: usize) -> bool {
        let cursor = self.gates[index].cursor.load(Ordering::Acquire);
        self.slots[(cursor & self.mask) as usize].stamp.load(Ordering::Acquire) == cursor + 1
    }

    /// Waits until an event is available to consumer `index` or `timeout` passes: spins a
    /// little, then parks. Called by the thread that consumes for `index`, which need not hold
    /// the [`Consumer`] while it waits (a producer may be consuming on its behalf meanwhile).
    pub fn wait_consumer(&self, index: usize, timeout: Duration) {
        // Empty under loom, on purpose (see `SPINS_BEFORE_PARK`).
        #[cfg_attr(livetap_loom, allow(clippy::reversed_empty_ranges))]
        for _ in 0..SPINS_BEFORE_PARK {
            if self.consumer_ready(index) {
                return;
            }
            spin_loop();
        }
        let gate = &self.gates[index];
        {
            let mut t = gate.thread.lock();
            if t.is_none() {
                *t = Some(thread::current());
            }
        }
        gate.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `wake_consumers` and `consumer_sleeping`. The SeqCst store
        // alone does not order the Acquire loads of the look below after it (only SeqCst
        // operations and fences take part in the single order), so without this fence the
        // look could miss a stamp while the producer misses `sleeping`: the lost wake-up that
        // the loom model `a_parked_consumer_is_woken` found.
        fence(Ordering::SeqCst);
        if self.consumer_ready(index) {
            gate.sleeping.store(false, Ordering::Relaxed);
            return;
        }
        thread::park_timeout(timeout);
        gate.sleeping.store(false, Ordering::Relaxed);
    }

    /// Wakes every consumer (used at shutdown so parked threads notice promptly).
    pub fn wake_all(&self) {
        for gate in self.gates.iter() {
            gate.sleeping.store(false, Ordering::SeqCst);
            if let Some(t) = gate.thread.lock().as_ref() {
                t.unpark();
            }
        }
    }
}

/// One reader of the ring; owned by exactly one thread.
pub struct Consumer<T> {
    /// The ring it reads.
    ring: std::sync::Arc<Ring<T>>,
    /// Its gate in `ring.gates`.
    index: usize,
    /// The next sequence number it reads. Only the thread holding the consumer reads or
    /// writes this copy; others see the gate's cursor, stored from it once per batch.
    cursor: u64,
}

impl<T: Send + Sync> Consumer<T> {
    /// The next sequence number this consumer will read.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The ring this consumer reads.
    pub fn ring(&self) -> &Ring<T> {
        &self.ring
    }

    /// Which of the ring's consumers this is (for [`Ring::wait_consumer`] and its kin).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Calls `f(seq, &value)` for up to `max` published events below `limit`, in order, then
    /// releases their slots. Returns how many were consumed. Slots that are reserved but not
    /// yet stamped (a producer between reservation and publication) are waited for briefly.
    pub fn consume(&mut self, limit: u64, max: usize, f: impl FnMut(u64, &T)) -> usize {
        self.consume_inner(limit, max, true, f)
    }

    /// [`Consumer::consume`] that stops at the first slot not yet stamped instead of waiting
    /// for its producer: for a thread that must not spin, such as an async task's.
    pub fn consume_published(&mut self, limit: u64, max: usize, f: impl FnMut(u64, &T)) -> usize {
        self.consume_inner(limit, max, false, f)
    }

    fn consume_inner(&mut self, limit: u64, max: usize, wait: bool, mut f: impl FnMut(u64, &T)) -> usize {
        let end = limit.min(self.cursor + max as u64);
        let start = self.cursor;
        let mut seq = start;
        while seq < end {
            let slot = &self.ring.slots[(seq & self.ring.mask) as usize];
            let mut spins = 0u32;
            while wait && slot.stamp.load(Ordering::Acquire) != seq + 1 {
                spins += 1;
                if spins > 64 {
                    thread::yield_now();
                } else {
                    spin_loop();
                }
                if spins > 1_000_000 {
                    // A producer reserved but never published: impossible without a bug, but
                    // stop here rather than spin forever.
                    break;
                }
            }
            if slot.stamp.load(Ordering::Acquire) != seq + 1 {
                break;
            }
            slot.value.with(|v| {
                // SAFETY: the stamp says the value for `seq` is written, and no producer may
                // write this slot again until our cursor (stored below) has passed `seq`.
                if let Some(v) = unsafe { (*v).as_ref() } {
                    f(seq, v);
                }
            });
            seq += 1;
        }
        if seq != start {
            self.cursor = seq;
            self.ring.gates[self.index].cursor.store(seq, Ordering::Release);
        }
        (seq - start) as usize
    }

    /// True when an event at the cursor is published.
    pub fn ready(&self) -> bool {
        let slot = &self.ring.slots[(self.cursor & self.ring.mask) as usize];
        slot.stamp.load(Ordering::Acquire) == self.cursor + 1
    }

    /// Waits until an event is available or `timeout` passes: spins a little, then parks.
    pub fn wait(&self, timeout: Duration) {
        self.ring.wait_consumer(self.index, timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn publishing_a_vec_moves_the_items_in_and_hands_the_replaced_ones_back() {
        let (ring, mut cons) = Ring::<Arc<u64>>::new(4, 1);
        let mut displaced = Vec::new();
        let mut items: Vec<Arc<u64>> = (0..3).map(Arc::new).collect();
        let first_item = items[0].clone();
        assert_eq!(ring.try_publish_vec(&mut items, &mut displaced), Ok(0));
        assert!(items.is_empty() && displaced.is_empty(), "fresh slots replace nothing");
        // Moved, not cloned: the ring holds the only other reference.
        assert_eq!(Arc::strong_count(&first_item), 2);
        // Full: the batch is refused and left as it was.
        let mut more: Vec<Arc<u64>> = (3..5).map(Arc::new).collect();
        assert!(matches!(ring.try_publish_vec(&mut more, &mut displaced), Err(RingError::Full { .. })));
        assert_eq!(more.len(), 2);
        let mut seen = vec![];
        cons[0].consume(ring.head(), 100, |s, v| seen.push((s, **v)));
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2)]);
        // Slots 3, 0 are reused: the event of slot 0 comes back, slot 3 was empty.
        assert_eq!(ring.try_publish_vec(&mut more, &mut displaced), Ok(3));
        assert!(more.is_empty());
        assert_eq!(displaced.iter().map(|v| **v).collect::<Vec<_>>(), vec![0]);
        assert!(Arc::ptr_eq(&displaced[0], &first_item));
        seen.clear();
        cons[0].consume(ring.head(), 100, |s, v| seen.push((s, **v)));
        assert_eq!(seen, vec![(3, 3), (4, 4)]);
        // An empty batch reserves nothing.
        assert_eq!(ring.try_publish_vec(&mut Vec::new(), &mut displaced), Ok(5));
    }

    #[test]
    fn a_ring_can_start_at_any_sequence() {
        let start = 1_000_003;
        let (ring, mut cons) = Ring::<u64>::starting_at(4, 1, start);
        assert_eq!((ring.head(), ring.tail(), cons[0].cursor()), (start, start, start));
        assert!(!cons[0].ready());
        for round in 0..3u64 {
            let first = ring.try_publish(4, |s| s).unwrap();
            assert_eq!(first, start + 4 * round);
            assert!(matches!(ring.try_publish(1, |s| s), Err(RingError::Full { .. })));
            let mut seen = vec![];
            cons[0].consume(ring.head(), 100, |s, v| seen.push((s, *v)));
            assert_eq!(seen, (first..first + 4).map(|s| (s, s)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn publish_consume_and_backpressure() {
        let (ring, mut cons) = Ring::<u64>::new(8, 2);
        assert_eq!(ring.try_publish(5, |s| s * 10).unwrap(), 0);
        assert_eq!(ring.try_publish(3, |s| s * 10).unwrap(), 5);
        assert!(matches!(ring.try_publish(1, |s| s), Err(RingError::Full { free: 0, wanted: 1 })));
        assert!(matches!(ring.try_publish(9, |s| s), Err(RingError::TooLarge { .. })));
        let mut seen = vec![];
        cons[0].consume(ring.head(), 100, |s, v| seen.push((s, *v)));
        assert_eq!(seen.len(), 8);
        // The second consumer has not moved, so the ring is still full.
        assert!(ring.try_publish(1, |s| s).is_err());
        cons[1].consume(ring.head(), 4, |_, _| {});
        assert_eq!(ring.try_publish(4, |s| s).unwrap(), 8);
        assert_eq!(ring.occupancy(), 8);
    }

    #[test]
    fn concurrent_producers_total_order() {
        let (ring, cons) = Ring::<(u32, u64)>::new(1024, 2);
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    let mut sent = 0u64;
                    while sent < 20_000 {
                        let n = 1 + (sent % 7) as usize;
                        let mut i = sent;
                        if ring
                            .try_publish(n, |_| {
                                i += 1;
                                (p, i - 1)
                            })
                            .is_ok()
                        {
                            sent += n as u64;
                        } else {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = cons
            .into_iter()
            .map(|mut c| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    let mut next = [0u64; 3];
                    let mut count = 0u64;
                    let mut last_seq = None;
                    while count < 3 * 20_004 {
                        let n = c.consume(ring.head(), 64, |seq, &(p, i)| {
                            assert!(last_seq.is_none_or(|l| seq == l + 1));
                            last_seq = Some(seq);
                            // Each producer's own events arrive in the order it sent them.
                            assert_eq!(i, next[p as usize]);
                            next[p as usize] += 1;
                        });
                        count += n as u64;
                        if n == 0 {
                            if next.iter().all(|&n| n >= 20_000) {
                                break;
                            }
                            c.wait(Duration::from_millis(10));
                        }
                    }
                    next
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        for c in consumers {
            let next = c.join().unwrap();
            assert!(next.iter().all(|&n| n >= 20_000));
        }
        let _ = Arc::strong_count(&ring);
    }
}
