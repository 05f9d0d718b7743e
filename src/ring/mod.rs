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

pub mod lease;
use crossbeam_utils::CachePadded;
use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Duration;

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

struct Slot<T> {
    /// `seq + 1` once the value for `seq` is written; 0 for never written.
    stamp: AtomicU64,
    value: UnsafeCell<Option<T>>,
}

struct Gate {
    cursor: CachePadded<AtomicU64>,
    sleeping: AtomicBool,
    thread: parking_lot::Mutex<Option<Thread>>,
}

/// The shared ring. Create with [`Ring::new`], which also hands out the consumers.
pub struct Ring<T> {
    slots: Box<[Slot<T>]>,
    mask: u64,
    claim: CachePadded<AtomicU64>,
    gate_cache: CachePadded<AtomicU64>,
    gates: Box<[Gate]>,
}

// SAFETY: a slot's value is written only by the producer that reserved its sequence number,
// and only after every consumer's cursor has passed the previous occupant (checked in
// `try_publish`); consumers read it only after the Release store of its stamp. So no slot
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
                thread: parking_lot::Mutex::new(None),
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
        let old = unsafe { (*slot.value.get()).replace(value) };
        slot.stamp.store(seq + 1, Ordering::Release);
        old
    }

    fn wake_consumers(&self) {
        // Pairs with the SeqCst store of `sleeping` in `wait_consumer`: either the consumer
        // sees our stamp on its re-check, or we see it sleeping here and unpark it.
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
        for _ in 0..200 {
            if self.consumer_ready(index) {
                return;
            }
            std::hint::spin_loop();
        }
        let gate = &self.gates[index];
        {
            let mut t = gate.thread.lock();
            if t.is_none() {
                *t = Some(std::thread::current());
            }
        }
        gate.sleeping.store(true, Ordering::SeqCst);
        if self.consumer_ready(index) {
            gate.sleeping.store(false, Ordering::Relaxed);
            return;
        }
        std::thread::park_timeout(timeout);
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
    ring: std::sync::Arc<Ring<T>>,
    index: usize,
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
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
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
            // SAFETY: the stamp says the value for `seq` is written, and no producer may write
            // this slot again until our cursor (stored below) has passed `seq`.
            let value = unsafe { (*slot.value.get()).as_ref() };
            if let Some(v) = value {
                f(seq, v);
            }
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
