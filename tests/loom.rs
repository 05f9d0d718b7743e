//! loom models of the two lock-free hand-overs: the ring's reserve, publish and consume (with
//! a consumer's park and wake-up), and a subscriber queue's push, drain and close.
//!
//! Run with `RUSTFLAGS="--cfg livetap_loom" cargo test --release --test loom`, in a target
//! directory of its own (the flag rebuilds everything; `.ci/run` has the exact command). Under
//! that cfg `ring::sync` hands the ring and the subscribers loom's atomics, `UnsafeCell`, lock,
//! waker and parking, so loom runs the real code through every interleaving (up to
//! `LOOM_MAX_PREEMPTIONS` preemptions per run) and every value that a weak ordering lets a load
//! see. It fails a model on a write to a slot that is not ordered after every read of it, on a
//! lost wake-up (a thread parked or a task pending forever), and on any assertion below. The
//! first wake-up model found one: `Ring::wait_consumer` lacked the SeqCst fence after it set
//! `sleeping` (see the comment there).
//!
//! What the models leave out, and why:
//! - The park timeout. loom has no timed park, so `ring::sync` parks until unparked. Each
//!   model here must therefore finish without a timeout, which makes them stricter on
//!   wake-ups; but the paths that count on the timeout cannot be modelled: a matcher thread
//!   left parked after a producer matched everything for it (`matcher::Helper`), and
//!   `Ring::wake_all` racing a thread that is about to park at shutdown. Both only delay that
//!   thread until its timeout, and the next publish wakes it anyway.
//! - A consumer that parks more than once. loom orders the stores to one atomic by vector
//!   clocks, so a producer's `swap(false)` of `Gate::sleeping` and the consumer's later
//!   `store(true)` (which did not read the swap) come out unordered, and a producer's load
//!   after its SeqCst fence may then return the swap's `false` (tokio-rs/loom issues 282 and
//!   389). In the memory model both stores are in one modification order, where the store
//!   comes after the swap (the swap read the consumer's own earlier `false`), and the fences
//!   make the load see it. loom reports that execution as a lost wake-up; it is not one. So
//!   the park protocol is checked with one wake-up per consumer (`a_parked_consumer_is_woken`,
//!   `a_quiet_publish_wakes_a_consumer_it_finds_asleep`), and the models with several events
//!   per consumer have their consumers yield instead of park.
//! - SeqCst loads and stores. loom treats them as Acquire/Release (its SeqCst fences are
//!   exact), so `Ring::head`'s SeqCst, which `matcher::load_consistent` and the registry
//!   rely on, is not checked here; neither is the matcher or the registry at all.
//! - The spin before a park. `Ring::wait_consumer` spins zero times under loom (see
//!   `SPINS_BEFORE_PARK`): a yield makes loom hand the yielding thread the newest values, which
//!   would hide the stale last look the sleep protocol must survive.
//! - The `atomic-waker` crate. The subscriber models check our protocol against loom's
//!   `AtomicWaker`, which makes the same promise, not against that crate's code.
//! - Sizes. Rings of two slots and three events, a queue of one slot and three pushes, so
//!   that each model explores every interleaving within its bound in seconds; the wrap-around,
//!   the full ring and the full queue are all reached.
//!
//! Under a normal build this file is empty.

#![cfg(livetap_loom)]

use bytes::Bytes;
use livetap::query::ast::Expr;
use livetap::ring::{Consumer, Ring, RingError};
use livetap::subscriber::{ConnHandle, Item, Subscriber};
use loom::thread;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// How long a consumer asks to wait; loom ignores it (see the module comment).
const WAIT: Duration = Duration::from_millis(200);

/// An event in the ring: who published it, its index among that producer's events, and the
/// sequence number its producer was handed for it (so a consumer can tell a stale turn).
type Ev = (u32, u32, u64);

/// Publishes `n` events of producer `p`, numbered from `first`, as one batch, retrying while
/// the ring is full. Returns the batch's first sequence number.
fn publish(ring: &Ring<Ev>, p: u32, first: u32, n: usize) -> u64 {
    loop {
        let mut i = first;
        match ring.try_publish(n, |seq| {
            i += 1;
            (p, i - 1, seq)
        }) {
            Ok(head) => return head,
            Err(RingError::Full { .. }) => thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// How a model's consumer waits when nothing is published.
#[derive(Clone, Copy)]
enum Idle {
    /// `Consumer::wait`: the real park protocol (which loom parks without a timeout).
    Park,
    /// `Consumer::consume_published` (which does not wait for a reserved slot's stamp), then
    /// yield and look again. For the models with more than one wake-up per consumer: see the
    /// module comment for why those do not park.
    Spin,
}

/// Consumes until `total` events are read and returns them. Checks what holds for any
/// reader: sequence numbers follow one another from the start and each value is the one
/// published for its own sequence number, not a stale turn's.
fn consume_all(ring: &Ring<Ev>, consumer: &mut Consumer<Ev>, total: usize, idle: Idle) -> Vec<Ev> {
    let mut seen: Vec<Ev> = Vec::new();
    while seen.len() < total {
        let read = |seq: u64, &ev: &Ev| {
            assert_eq!(seq, seen.len() as u64, "sequence numbers follow one another");
            assert_eq!(ev.2, seq, "the value is the one published for this sequence number");
            seen.push(ev);
        };
        let n = match idle {
            Idle::Park => consumer.consume(ring.head(), 8, read),
            Idle::Spin => consumer.consume_published(ring.head(), 8, read),
        };
        if n == 0 {
            match idle {
                Idle::Park => consumer.wait(WAIT),
                Idle::Spin => thread::yield_now(),
            }
        }
    }
    seen
}

/// Two producers race for the ring (one event, and a batch of two) through a ring of two
/// slots, so the second reservation wraps and the batch can find the ring full; one consumer
/// reads them. Every event arrives once, in one total order, and the batch's two events are
/// adjacent.
#[test]
fn producers_reserve_disjoint_ranges_and_one_consumer_reads_them_in_order() {
    loom::model(|| {
        let (ring, mut consumers) = Ring::<Ev>::new(2, 1);
        let mut consumer = consumers.pop().unwrap();
        let single = {
            let ring = ring.clone();
            thread::spawn(move || publish(&ring, 0, 0, 1))
        };
        let batch = {
            let ring = ring.clone();
            thread::spawn(move || publish(&ring, 1, 0, 2))
        };
        let seen = consume_all(&ring, &mut consumer, 3, Idle::Spin);
        let single_at = single.join().unwrap();
        let batch_at = batch.join().unwrap();
        assert_eq!(seen[single_at as usize], (0, 0, single_at));
        assert_eq!(seen[batch_at as usize], (1, 0, batch_at));
        assert_eq!(seen[batch_at as usize + 1], (1, 1, batch_at + 1));
        assert_eq!(ring.head(), 3);
    });
}

/// A ring of two slots, read by two consumers, holds two events; while the consumers read
/// them, the producer tries once to publish a third, which reuses the first slot. If it gets
/// in, it wrote that slot after both consumers had read it (loom's `UnsafeCell` fails the
/// model on a write not ordered after those reads); if it is refused, it gets in once both
/// consumers are done. Either way the value it replaces comes back to it. (Only one try while
/// the consumers run: a producer that retries in a loop makes loom explore ever longer spins.)
#[test]
fn a_slot_is_reused_only_after_every_consumer_has_read_it() {
    loom::model(|| {
        let (ring, consumers) = Ring::<Ev>::new(2, 2);
        let mut displaced = Vec::new();
        let mut items = vec![(0, 0, 0), (0, 1, 1)];
        assert_eq!(ring.try_publish_vec(&mut items, &mut displaced), Ok(0));
        let readers: Vec<_> = consumers
            .into_iter()
            .map(|mut consumer| {
                let ring = ring.clone();
                thread::spawn(move || consume_all(&ring, &mut consumer, 2, Idle::Spin))
            })
            .collect();
        let mut third = vec![(0, 2, 2)];
        let raced = match ring.try_publish_vec(&mut third, &mut displaced) {
            Ok(head) => {
                assert_eq!(head, 2);
                true
            }
            Err(RingError::Full { free: 0, wanted: 1 }) => false,
            Err(e) => panic!("{e}"),
        };
        for reader in readers {
            assert_eq!(reader.join().unwrap(), vec![(0, 0, 0), (0, 1, 1)]);
        }
        if !raced {
            assert_eq!(ring.try_publish_vec(&mut third, &mut displaced), Ok(2));
        }
        assert_eq!(displaced, vec![(0, 0, 0)]);
    });
}

/// The wake-up protocol alone: a consumer that finds nothing parks, a producer publishes one
/// event. The consumer must not sleep through it (loom parks without a timeout, so a lost
/// wake-up is a deadlock).
#[test]
fn a_parked_consumer_is_woken() {
    loom::model(|| {
        let (ring, mut consumers) = Ring::<Ev>::new(2, 1);
        let mut consumer = consumers.pop().unwrap();
        let reader = {
            let ring = ring.clone();
            thread::spawn(move || consume_all(&ring, &mut consumer, 1, Idle::Park))
        };
        publish(&ring, 0, 0, 1);
        assert_eq!(reader.join().unwrap(), vec![(0, 0, 0)]);
    });
}

/// The quiet publish of `matcher::Helper`: the producer publishes without waking, asks
/// whether the consumer sleeps, and wakes it only then. A consumer that the producer judged
/// awake must find the event by itself.
#[test]
fn a_quiet_publish_wakes_a_consumer_it_finds_asleep() {
    loom::model(|| {
        let (ring, mut consumers) = Ring::<Ev>::new(2, 1);
        let mut consumer = consumers.pop().unwrap();
        let reader = {
            let ring = ring.clone();
            thread::spawn(move || consume_all(&ring, &mut consumer, 1, Idle::Park))
        };
        let mut items = vec![(0, 0, 0)];
        ring.try_publish_vec_quiet(&mut items, &mut Vec::new()).unwrap();
        if ring.consumer_sleeping(0) {
            ring.wake_consumer(0);
        }
        assert_eq!(reader.join().unwrap(), vec![(0, 0, 0)]);
    });
}

/// An event's wire bytes, as a matcher pushes them into a stream's queue.
const WIRE: Bytes = Bytes::from_static(b",{}");

/// What a writer took from its subscriber's queue, as text: `e<seq>` or `lag<n>`.
fn names(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            Item::Event { seq, .. } | Item::Tapped { seq, .. } => format!("e{seq}"),
            Item::Lagged(n) => format!("lag{n}"),
        })
        .collect()
}

/// Polls like the SSE writer (`sse::SseBody`): registers its waker, drains at most `max`
/// items, and ends once `done` says so or the subscriber is closed with nothing queued.
/// Returns everything it took, in order.
fn write_until(sub: &Subscriber, max: usize, done: impl Fn(&[Item]) -> bool) -> Vec<Item> {
    let mut got = Vec::new();
    loom::future::block_on(std::future::poll_fn(|cx| {
        sub.register_waker(cx.waker());
        let mut batch = Vec::new();
        sub.drain_into(&mut batch, max);
        let took = !batch.is_empty();
        got.append(&mut batch);
        if done(&got) || (!took && sub.is_closed()) {
            Poll::Ready(())
        } else if took {
            // A writer that took items returns a frame and is polled again at once.
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Pending
        }
    }));
    got
}

/// Events plus the events that lag markers stand for.
fn accounted(items: &[Item]) -> u64 {
    items.iter().map(|i| if let Item::Lagged(n) = i { *n } else { 1 }).sum()
}

/// A matcher pushes three events into a queue of one while the writer drains one item at a
/// time. Whatever the interleaving, the writer is woken for what is queued, receives the
/// events in order, and is told of every drop by a lag marker at the place of the drops.
#[test]
fn a_writer_is_woken_for_every_push_and_told_of_every_drop() {
    loom::model(|| {
        let sub = Arc::new(Subscriber::new(1, Expr::True, false, 1, None));
        let matcher = {
            let sub = sub.clone();
            thread::spawn(move || (0..3).filter(|&seq| sub.push(seq, &WIRE, 0)).count() as u64)
        };
        let got = write_until(&sub, 1, |got| accounted(got) == 3);
        let queued = matcher.join().unwrap();
        assert_eq!(accounted(&got), 3, "{:?}", names(&got));
        assert_eq!(sub.delivered(), queued);
        assert_eq!(sub.dropped(), 3 - queued);
        // In order, and no two lag markers in a row (one stands for a whole run of drops).
        let mut last = None;
        let mut after_lag = false;
        for item in &got {
            match item {
                Item::Event { seq, .. } | Item::Tapped { seq, .. } => {
                    assert!(last.is_none_or(|l| *seq > l), "{:?}", names(&got));
                    last = Some(*seq);
                    after_lag = false;
                }
                Item::Lagged(_) => {
                    assert!(!after_lag, "{:?}", names(&got));
                    after_lag = true;
                }
            }
        }
        assert_eq!(got.first().map(|i| matches!(i, Item::Event { seq: 0, .. })), Some(true));
    });
}

/// The reaper kills a stalled subscriber while its matcher still pushes and its writer
/// waits: the writer must see the close (it is woken, or it reads the flag) and end, having
/// received at most the one event, and the connection task waiting on the kill must end too.
#[test]
fn a_kill_ends_the_writer_and_the_connection_task() {
    loom::model(|| {
        let conn = Arc::new(ConnHandle::default());
        let sub = Arc::new(Subscriber::new(1, Expr::True, false, 4, Some(conn.clone())));
        let reaper = {
            let sub = sub.clone();
            thread::spawn(move || sub.kill_connection())
        };
        let matcher = {
            let sub = sub.clone();
            thread::spawn(move || {
                if !sub.is_closed() {
                    sub.push(0, &WIRE, 0);
                }
            })
        };
        let got = write_until(&sub, 16, |_| false);
        assert!(names(&got).iter().all(|n| n == "e0"), "{:?}", names(&got));
        loom::future::block_on(conn.killed());
        reaper.join().unwrap();
        matcher.join().unwrap();
    });
}
