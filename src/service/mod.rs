//! Running under a service manager: the `sd_notify` messages (`notify.rs`) and the watchdog
//! task, which sends `WATCHDOG=1` only while the pipeline proves it is moving.
//!
//! A keep-alive from a bare timer would only prove that a timer fires. The one sent here also
//! proves, at each tick:
//! - that the async runtime still schedules tasks (the check runs as a task on it, so a
//!   runtime whose threads are all blocked sends nothing);
//! - that the hub still accepts events (it stops only at shutdown);
//! - that the matcher threads make progress: when events were waiting in the ring at the
//!   previous tick, the ring's tail (the slowest matcher's position) must have moved since.
//!   Matcher threads never wait on a subscriber (a full queue drops and counts), so a tail
//!   that stands still behind waiting events for half a watchdog period is a wedged or dead
//!   matcher thread, which systemd should restart.

pub mod notify;

pub use notify::{Notifier, NotifyError};

use crate::hub::Hub;
use std::sync::Arc;

/// What the watchdog concluded at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Everything checked moved: send `WATCHDOG=1`.
    Alive,
    /// The hub no longer accepts events (shutdown began).
    NotAccepting,
    /// Events waited in the ring at the previous tick and no matcher thread took any since.
    MatchersStalled {
        /// The slowest matcher's position, unchanged since the previous tick.
        tail: u64,
        /// The ring's head at the previous tick.
        head: u64,
    },
}

/// The ring positions seen at the previous tick; pure, so the rule is unit-tested.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    /// `(head, tail)` at the previous tick.
    last: Option<(u64, u64)>,
}

impl Progress {
    /// Judges one tick from the ring's `head` (events reserved) and `tail` (events every
    /// matcher passed) and whether the hub `accepting` events.
    pub fn check(&mut self, head: u64, tail: u64, accepting: bool) -> Liveness {
        let previous = self.last.replace((head, tail));
        if !accepting {
            return Liveness::NotAccepting;
        }
        match previous {
            Some((last_head, last_tail)) if last_tail < last_head && tail == last_tail => {
                Liveness::MatchersStalled { tail, head: last_head }
            }
            _ => Liveness::Alive,
        }
    }
}

/// Sends `WATCHDOG=1` every half of the service manager's watchdog period while
/// [`Progress::check`] finds the hub alive; returns at once when no watchdog is set. Runs
/// until the hub shuts down (the caller aborts it, or the shutdown signal ends it).
pub async fn watchdog(notifier: Notifier, hub: Arc<Hub>) {
    let Some(period) = notifier.watchdog_period() else { return };
    let mut tick = tokio::time::interval(period / 2);
    // A late tick (a busy runtime) is followed by the next on schedule, not a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = hub.shutdown_signal();
    let mut progress = Progress::default();
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        match progress.check(hub.ring.head(), hub.ring.tail(), hub.is_accepting()) {
            Liveness::Alive => {
                if stalled {
                    tracing::warn!("the matcher threads move again; watchdog keep-alives resume");
                    stalled = false;
                }
                if let Err(e) = notifier.watchdog() {
                    tracing::warn!(error = %e, "watchdog keep-alive not sent");
                }
            }
            Liveness::NotAccepting => return,
            Liveness::MatchersStalled { tail, head } => {
                if !stalled {
                    // Logged once per stall; systemd restarts the service if it lasts past
                    // `WatchdogSec=`.
                    tracing::error!(
                        tail,
                        head,
                        "no matcher thread took an event for half a watchdog period; \
                         withholding the watchdog keep-alive"
                    );
                    let _ = notifier.status("matcher threads stalled; watchdog withheld");
                    stalled = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_or_moving_ring_is_alive_and_a_stuck_one_is_not() {
        let mut p = Progress::default();
        // First tick: nothing to compare with.
        assert_eq!(p.check(10, 5, true), Liveness::Alive);
        // Events were waiting (5 < 10) and the tail moved.
        assert_eq!(p.check(20, 7, true), Liveness::Alive);
        // Events were waiting (7 < 20) and the tail stayed at 7: stalled.
        assert_eq!(p.check(20, 7, true), Liveness::MatchersStalled { tail: 7, head: 20 });
        // It moves again.
        assert_eq!(p.check(20, 20, true), Liveness::Alive);
        // Nothing was waiting at the previous tick (20 == 20): an idle ring is alive.
        assert_eq!(p.check(20, 20, true), Liveness::Alive);
        // Events arrive after the tick: not a stall until a whole tick passed with them.
        assert_eq!(p.check(30, 20, true), Liveness::Alive);
        assert_eq!(p.check(30, 20, false), Liveness::NotAccepting);
    }
}
