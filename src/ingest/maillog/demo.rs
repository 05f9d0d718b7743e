//! The mail-log demo: recorded Postfix and Dovecot lines replayed as live traffic, so the
//! dashboard shows what a Postfix host looks like (`livetap --demo --demo-source postfix`).
//!
//! The recording (`data/maillog/demo.log`, lines the real Postfix and Dovecot wrote in the
//! test runs) is embedded in the binary and replayed in a loop at the demo rate, in lines per
//! second, through exactly the path a followed log file takes: the mail-log format frames,
//! parses, correlates and builds each line. Each event gets the time it is replayed at. Queue
//! ids and pids repeat from loop to loop, as Postfix's own do, and the correlator tells the
//! rounds apart because every message and session is opened again.

use super::format::{Framing, MailLog};
use crate::hub::{Hub, IngestStats};
use crate::ingest::demo::{Pacer, TICK};
use crate::ingest::lines::parse_chunk;
use crate::ingest::Source;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::time::{Instant, MissedTickBehavior};

/// The recorded lines.
pub const RECORDING: &str = include_str!("../../../data/maillog/demo.log");

/// Replays [`RECORDING`] at `rate` lines per second until shutdown.
pub struct MailLogDemo {
    rate: u32,
}

impl MailLogDemo {
    /// A replay of `rate` lines per second.
    pub fn new(rate: u32) -> MailLogDemo {
        MailLogDemo { rate }
    }
}

/// The recording, replayed round after round.
///
/// Postfix's queue ids and pids may repeat (the correlator opens them anew), but Dovecot's
/// session ids are unique in real life and their spans are hashes of them, so each round
/// gives every Dovecot session id a suffix of its own: the rounds' sessions stay apart.
struct Replay {
    lines: Vec<&'static str>,
    /// Every Dovecot session id of the recording (`session=<ID>`, `(user)<pid><ID>`).
    sessions: Vec<&'static str>,
    round: u64,
    current: Vec<String>,
    at: usize,
}

impl Replay {
    fn new(text: &'static str) -> Replay {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut sessions = Vec::new();
        for line in &lines {
            let mut rest = *line;
            while let Some(i) = rest.find("session=<") {
                rest = &rest[i + 9..];
                if let Some(end) = rest.find('>') {
                    sessions.push(&rest[..end]);
                }
            }
            // `imap(user)<pid><ID>:` names the session as the last `<…>` before the colon.
            if let Some(i) = line.find(">:") {
                if let Some(start) = line[..i].rfind('<') {
                    let id = &line[start + 1..i];
                    if line[..start].ends_with('>') {
                        sessions.push(id);
                    }
                }
            }
        }
        sessions.retain(|s| !s.is_empty());
        sessions.sort_unstable();
        sessions.dedup();
        let mut r = Replay { lines, sessions, round: 0, current: Vec::new(), at: 0 };
        r.render();
        r
    }

    /// This round's lines: the recording with every Dovecot session id given the round as a
    /// suffix (the first round is the recording as it is).
    fn render(&mut self) {
        let suffix = if self.round == 0 { String::new() } else { format!("-{}", self.round) };
        self.current = self
            .lines
            .iter()
            .map(|l| {
                let mut l = (*l).to_string();
                if !suffix.is_empty() {
                    for id in &self.sessions {
                        l = l.replace(&format!("<{id}>"), &format!("<{id}{suffix}>"));
                    }
                }
                l
            })
            .collect();
    }

    /// The next `n` lines, newline-terminated, wrapping round into the next round.
    fn next_lines(&mut self, n: usize, out: &mut Vec<u8>) {
        out.clear();
        for _ in 0..n {
            out.extend_from_slice(self.current[self.at].as_bytes());
            out.push(b'\n');
            self.at += 1;
            if self.at == self.current.len() {
                self.at = 0;
                self.round += 1;
                self.render();
            }
        }
    }
}

impl Source for MailLogDemo {
    fn name(&self) -> &'static str {
        "demo (Postfix and Dovecot log replay)"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let rate = self.rate;
        Box::pin(async move {
            let mut replay = Replay::new(RECORDING);
            if replay.lines.is_empty() {
                return;
            }
            let format = MailLog::replaying(Framing::Text);
            let mut shutdown = hub.shutdown_signal();
            let mut pacer = Pacer::new(rate);
            let chunk = (hub.ring.capacity() / 2).clamp(1, 1024) as usize;
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let (start, mut buf) = (Instant::now(), Vec::new());
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            return;
                        }
                        continue;
                    }
                }
                let mut due = pacer.due(start.elapsed()) as usize;
                while due > 0 {
                    let n = due.min(chunk);
                    due -= n;
                    replay.next_lines(n, &mut buf);
                    let mut parsed = {
                        let now = crate::event::encode::now_secs();
                        let max = hub.config.max_line_bytes;
                        parse_chunk(&format, &mut buf, 1, max, &mut hub.builder(), now)
                    };
                    if parsed.rejected > 0 {
                        IngestStats::add(&hub.ingest.rejected, parsed.rejected as u64);
                    }
                    if hub.publish_stream(&mut parsed.events).await.is_err() {
                        return;
                    }
                    parsed.apply_samples(&hub.metrics);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Catalogue;

    /// Every recorded line parses into an event, round after round, and the rounds' spans
    /// differ (reused queue ids and pids open new spans).
    #[test]
    fn the_recording_replays_without_rejections() {
        let (c, k) = Catalogue::with_keys(1024);
        let mut replay = Replay::new(RECORDING);
        let lines = replay.lines.len();
        assert!(replay.sessions.len() >= 4, "{:?}", replay.sessions);
        let format = MailLog::replaying(Framing::Text);
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for _ in 0..2 {
            replay.next_lines(lines, &mut buf);
            let mut b = crate::event::EventBuilder::new(&c, &k);
            let parsed = parse_chunk(&format, &mut buf, 1, 1 << 16, &mut b, 1_800_000_000);
            assert!(parsed.errors.is_empty(), "rejected lines: {:?}", parsed.errors.first());
            assert_eq!(parsed.events.len(), lines);
            assert!(parsed.events.iter().all(|e| e.created_at == 1_800_000_000));
            spans.push(
                parsed.events.iter().filter_map(|e| e.span_id).collect::<std::collections::HashSet<_>>(),
            );
        }
        assert!(!spans[0].is_empty());
        assert!(spans[0].is_disjoint(&spans[1]));
    }
}
