//! The parse threads: NDJSON chunks from the Unix socket are parsed and built here, off the
//! async I/O threads, and old events leaving the ring are freed on the thread that built them.
//!
//! Why a pool of its own rather than Tokio's blocking pool: an event is four allocations
//! (the handle, its match text, its JSON, the JSON's shared count), made by the thread that
//! builds it. When the ring later displaces it, freeing those four blocks on any other thread
//! is mimalloc's cross-thread path, an atomic compare-and-swap on the owning page's free list
//! that the owner also writes. In `max-ingest` that swap took nearly a tenth of the hub's CPU,
//! second only to building events (`perf/RESULTS.md` §11). Each event here records which parse
//! thread built it ([`crate::event::Event::home`]), and [`ParsePool::free`] sends displaced
//! events back to that thread, where a free is a plain store on a thread-local list.
//!
//! Parse jobs go to whichever thread is free first (one shared queue), so a thread that the
//! scheduler holds back does not hold the chunks behind it. Frees have their own queue per
//! thread and go first: they are cheap and they bound memory.

use crate::event::Event;
use crossbeam_channel::{Receiver, Sender};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Re-exported from `event`, where the field it marks lives.
pub use crate::event::NO_HOME;

type Job = Box<dyn FnOnce(u8) + Send>;

/// Up to this many events built elsewhere are freed by the caller itself.
const INLINE_FREE: usize = 64;

/// The parse threads and their queues. Dropping the pool closes the job queue, and each thread
/// ends once it has run the jobs already queued.
pub struct ParsePool {
    jobs: Sender<Job>,
    frees: Vec<Sender<Vec<Arc<Event>>>>,
}

impl std::fmt::Debug for ParsePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsePool").field("threads", &self.frees.len()).finish()
    }
}

impl ParsePool {
    /// Starts `threads` parse threads (at least one, at most 254, since a thread's index must
    /// fit an event's `home` beside [`NO_HOME`]).
    pub fn start(threads: usize) -> std::io::Result<ParsePool> {
        let threads = threads.clamp(1, NO_HOME as usize - 1);
        let (jobs, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (frees, free_rx): (Vec<_>, Vec<_>) = (0..threads).map(|_| crossbeam_channel::unbounded()).unzip();
        // Each thread can hand events on to the others. Those senders keep the free queues
        // open, so the threads end when the job queue closes, which only the pool holds.
        let peers: Arc<[Sender<Vec<Arc<Event>>>]> = frees.clone().into();
        for (i, rx) in free_rx.into_iter().enumerate() {
            let job_rx = job_rx.clone();
            let peers = peers.clone();
            std::thread::Builder::new()
                .name(format!("livetap-parse-{i}"))
                .spawn(move || work(i as u8, &job_rx, &rx, &peers))?;
        }
        Ok(ParsePool { jobs, frees })
    }

    /// Runs `f` on the first free parse thread, passing that thread's index (for
    /// [`crate::event::EventBuilder::with_home`]). The receiver fails if `f` panicked or the
    /// pool is gone.
    pub fn spawn<T, F>(&self, f: F) -> tokio::sync::oneshot::Receiver<T>
    where
        T: Send + 'static,
        F: FnOnce(u8) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |home| {
            let _ = tx.send(f(home));
        });
        // The threads hold the receiving side for as long as the pool exists, so a send
        // fails only while the pool is being dropped; the caller's receiver then fails.
        let _ = self.jobs.send(job);
        rx
    }

    /// Frees `events` (leaving the vector empty) on the parse threads: each event built by one
    /// of them is freed by it, the rest by whichever thread receives them. This reads only the
    /// first event: the others are cold (the ring displaced them long after they were built)
    /// and the caller is the socket connection's serial stage, so sorting them is left to the
    /// receiving thread, which touches each event anyway to free it.
    pub fn free(&self, events: &mut Vec<Arc<Event>>) {
        let Some(first) = events.first() else { return };
        let home = first.home();
        if home == NO_HOME && events.len() <= INLINE_FREE {
            // A trickle parsed on the reading task: waking a thread costs more than this.
            events.clear();
            return;
        }
        let to = if (home as usize) < self.frees.len() { home as usize } else { 0 };
        let _ = self.frees[to].send(std::mem::take(events));
    }
}

/// Frees the events of `batch` that thread `me` built (and those no parse thread built), and
/// sends each of the others to the thread that built it. `forward` is scratch space, one
/// vector per peer, left empty.
fn free_batch(
    me: u8,
    batch: Vec<Arc<Event>>,
    peers: &[Sender<Vec<Arc<Event>>>],
    forward: &mut [Vec<Arc<Event>>],
) {
    for ev in batch {
        let h = ev.home() as usize;
        if h == me as usize || h >= peers.len() {
            drop(ev);
        } else {
            forward[h].push(ev);
        }
    }
    for (tx, fwd) in peers.iter().zip(forward.iter_mut()) {
        if !fwd.is_empty() {
            let _ = tx.send(std::mem::take(fwd));
        }
    }
}

/// One parse thread: frees first, then the next parse job; returns when the pool is dropped
/// (the job queue is closed).
fn work(me: u8, jobs: &Receiver<Job>, frees: &Receiver<Vec<Arc<Event>>>, peers: &[Sender<Vec<Arc<Event>>>]) {
    // Events of another thread found in a batch, per thread; sent on after the batch.
    let mut forward: Vec<Vec<Arc<Event>>> = peers.iter().map(|_| Vec::new()).collect();
    let mut free = |batch| free_batch(me, batch, peers, &mut forward);
    loop {
        while let Ok(batch) = frees.try_recv() {
            free(batch);
        }
        crossbeam_channel::select! {
            recv(frees) -> batch => if let Ok(batch) = batch { free(batch) },
            recv(jobs) -> job => match job {
                // A panicking job drops its reply sender, which the caller sees as a failed
                // parse; the thread itself carries on.
                Ok(job) => {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(me))).is_err() {
                        tracing::error!(thread = me, "a parse job panicked");
                    }
                }
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing;

    #[tokio::test]
    async fn jobs_run_and_report_their_thread() {
        let pool = ParsePool::start(2).unwrap();
        let mut homes = Vec::new();
        for i in 0..20u32 {
            let rx = pool.spawn(move |home| (i * 2, home));
            let (v, home) = rx.await.unwrap();
            assert_eq!(v, i * 2);
            homes.push(home);
        }
        assert!(homes.iter().all(|&h| h < 2), "{homes:?}");
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_receiver_and_the_pool_carries_on() {
        let pool = ParsePool::start(1).unwrap();
        let rx = pool.spawn(|_| -> u32 { panic!("boom") });
        assert!(rx.await.is_err());
        assert_eq!(pool.spawn(|_| 7u32).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn every_event_handed_over_is_freed() {
        let pool = ParsePool::start(2).unwrap();
        // Build events on the pool, as the socket reader does, and keep the only handles.
        let mut built = Vec::new();
        for _ in 0..8 {
            built.extend(pool.spawn(testing::event_with_home).await.unwrap());
        }
        let weak: Vec<_> = built.iter().map(Arc::downgrade).collect();
        let foreign = testing::event_with_home(NO_HOME).remove(0);
        let foreign_weak = Arc::downgrade(&foreign);
        built.push(foreign);
        pool.free(&mut built);
        assert!(built.is_empty());
        // The frees are asynchronous: wait until every thread has emptied its queue.
        for _ in 0..200 {
            if weak.iter().all(|w| w.strong_count() == 0) && foreign_weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("events were not freed");
    }

    #[test]
    fn a_thread_frees_its_own_events_and_sends_the_others_home() {
        let (peers, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| crossbeam_channel::unbounded()).unzip();
        let homes = [0, 1, 2, NO_HOME, 1, 0];
        let batch: Vec<Arc<Event>> = homes.iter().flat_map(|&h| testing::event_with_home(h)).collect();
        let weak: Vec<_> = batch.iter().map(Arc::downgrade).collect();
        let mut forward = vec![Vec::new(), Vec::new(), Vec::new()];
        free_batch(1, batch, &peers, &mut forward);
        // Thread 1 freed its own two and the one no parse thread built.
        for i in [1, 3, 4] {
            assert_eq!(weak[i].strong_count(), 0, "event {i} is freed");
        }
        // The rest went home, one send per thread, and nothing was sent to itself.
        let to0: Vec<_> = rxs[0].try_iter().collect();
        let to2: Vec<_> = rxs[2].try_iter().collect();
        assert_eq!(to0.len(), 1);
        assert_eq!(to0[0].iter().map(|e| e.home()).collect::<Vec<_>>(), [0, 0]);
        assert_eq!(to2.len(), 1);
        assert_eq!(to2[0][0].home(), 2);
        assert!(rxs[1].try_recv().is_err());
        assert!(forward.iter().all(Vec::is_empty));
    }
}
