//! The replay log: the most recent events, kept so a reconnecting client resumes without loss.
//!
//! One matcher thread (shard 0) appends every event it reads, in sequence order, once per
//! batch, so the log is always a contiguous run of sequence numbers `start..end`. It is bounded
//! by bytes and by age; what falls out is gone from memory (a history store can hold it longer).
//! A resuming subscriber copies the handles of the range it missed under the lock, then matches
//! them outside it with its own compiled index, the same code as live matching, and receives the
//! same pre-serialised bytes.

use super::{Item, Subscriber};
use crate::event::Event;
use crate::matcher::index::{CompiledIndex, Scratch};
use crate::matcher::spans::SpanTable;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

/// Bookkeeping cost of one retained event beyond its JSON and match text (the `Event` struct
/// of about 210 bytes with its inline field list, the `Arc` and `Bytes` headers, allocator
/// rounding, and the log's own slot), counted so the byte bound holds for small events.
const OVERHEAD_BYTES: usize = 320;

/// What the log retains, as configured.
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    /// Most bytes of retained events (JSON, match text and overhead); 0 disables the log.
    pub max_bytes: usize,
    /// Events older than this (by arrival) are dropped, in milliseconds of the hub's clock.
    pub max_age_ms: u64,
}

struct Entry {
    event: Arc<Event>,
    at_ms: u64,
    bytes: usize,
}

struct Inner {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]` (or of the next event when empty).
    start: u64,
    bytes: usize,
}

/// The bounded log of recent events.
pub struct ReplayLog {
    limits: ReplayLimits,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ReplayLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (start, held, bytes) = self.usage();
        f.debug_struct("ReplayLog")
            .field("start", &start)
            .field("held", &held)
            .field("bytes", &bytes)
            .finish()
    }
}

/// A range copied out of the log for one resuming subscriber.
pub struct ReplayRange {
    /// Sequence number of the first event in `events`.
    pub first: u64,
    /// The events, in sequence order.
    pub events: Vec<Arc<Event>>,
    /// The first sequence number the log still held, when the request reached further back
    /// (those events are gone and the client must be told).
    pub gap_until: Option<u64>,
}

impl ReplayLog {
    /// An empty log.
    pub fn new(limits: ReplayLimits) -> ReplayLog {
        ReplayLog { limits, inner: Mutex::new(Inner { entries: VecDeque::new(), start: 0, bytes: 0 }) }
    }

    /// Whether the log retains anything at all.
    pub fn enabled(&self) -> bool {
        self.limits.max_bytes > 0
    }

    /// Appends events `first..first + events.len()` (the caller reads the ring in order, so
    /// calls are contiguous) and evicts what the bounds no longer allow.
    pub fn append(&self, first: u64, events: &[Arc<Event>], now_ms: u64) {
        if !self.enabled() || events.is_empty() {
            return;
        }
        let mut g = self.inner.lock();
        if g.entries.is_empty() {
            g.start = first;
        }
        debug_assert_eq!(g.start + g.entries.len() as u64, first, "appends are contiguous");
        for ev in events {
            let bytes = ev.json.len() + ev.text_len() + OVERHEAD_BYTES;
            g.bytes += bytes;
            g.entries.push_back(Entry { event: ev.clone(), at_ms: now_ms, bytes });
        }
        let oldest = now_ms.saturating_sub(self.limits.max_age_ms);
        while let Some(front) = g.entries.front() {
            if g.bytes <= self.limits.max_bytes && front.at_ms >= oldest {
                break;
            }
            g.bytes -= front.bytes;
            g.entries.pop_front();
            g.start += 1;
        }
    }

    /// The next sequence number the log will hold: everything below it has been appended.
    pub fn end(&self) -> u64 {
        let g = self.inner.lock();
        g.start + g.entries.len() as u64
    }

    /// `(first sequence held, events held, bytes held)`.
    pub fn usage(&self) -> (u64, usize, usize) {
        let g = self.inner.lock();
        (g.start, g.entries.len(), g.bytes)
    }

    /// Copies the handles of events `from..until` that are still held. Call only once
    /// [`ReplayLog::end`] has reached `until`.
    pub fn range(&self, from: u64, until: u64) -> ReplayRange {
        let g = self.inner.lock();
        let first = from.max(g.start);
        let gap_until = (from < g.start).then_some(g.start.min(until));
        let end = until.min(g.start + g.entries.len() as u64);
        let events = if first < end {
            g.entries
                .range((first - g.start) as usize..(end - g.start) as usize)
                .map(|e| e.event.clone())
                .collect()
        } else {
            Vec::new()
        };
        ReplayRange { first, events, gap_until }
    }

    /// The first sequence number at or after `from` whose event was created at or after
    /// `since` (Unix seconds), searching the held events; `None` when none qualifies.
    pub fn first_since(&self, since: i64, until: u64) -> Option<u64> {
        let g = self.inner.lock();
        let end = until.min(g.start + g.entries.len() as u64);
        (g.start..end).find(|&s| g.entries[(s - g.start) as usize].event.created_at >= since)
    }

    /// `(sequence, creation time)` of the oldest held event.
    pub fn oldest(&self) -> Option<(u64, i64)> {
        let g = self.inner.lock();
        g.entries.front().map(|e| (g.start, e.event.created_at))
    }
}

/// Where a resuming stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// After the event with this id (the `id:` of the last frame the client saw).
    AfterId(u64),
    /// At the first retained event created at or after this time (Unix seconds).
    Since(i64),
}

/// What a resuming stream sends before its live events.
#[derive(Debug, Default)]
pub struct Resume {
    /// When part of the requested range is no longer retained: the `event: gap` frame's JSON.
    pub gap: Option<String>,
    /// The missed events that match the subscriber's filter, in order.
    pub items: VecDeque<Item>,
}

/// Longest a resuming subscriber waits for the log to reach its live start (the log's writer
/// is a matcher thread, normally microseconds behind the ring head).
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// Builds the replay of a new subscriber that receives live events from ring position `live`:
/// the retained events from `from` up to `live` that match its filter (with the same compiled
/// index code and span following as live matching, and the same pre-serialised bytes), and a
/// gap notice when the log no longer reaches back that far.
pub async fn prepare(log: &ReplayLog, sub: &Arc<Subscriber>, from: ResumeFrom, live: u64) -> Resume {
    let mut out = Resume::default();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while log.enabled() && log.end() < live && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let start = match from {
        // Ids are sequence numbers plus one: after id N comes sequence N.
        ResumeFrom::AfterId(id) => id.min(live),
        ResumeFrom::Since(t) => {
            let oldest = log.oldest();
            match oldest {
                // Something older was retained once but is gone, and may have been after `t`.
                Some((first, created)) if first > 0 && created > t => {
                    out.gap = Some(format!(
                        r#"{{"since":{t},"resumedAfter":{first},"reason":"older events are no longer retained"}}"#
                    ));
                    first
                }
                _ => log.first_since(t, live).unwrap_or(live),
            }
        }
    };
    if start >= live {
        return out;
    }
    let range = log.range(start, live.min(log.end()));
    if let Some(held_from) = range.gap_until.or((range.events.is_empty()).then_some(live)) {
        if out.gap.is_none() && held_from > start {
            out.gap = Some(format!(
                r#"{{"lastEventId":{start},"resumedAfter":{held_from},"missed":{},"reason":"older events are no longer retained"}}"#,
                held_from - start
            ));
        }
    }
    let idx = CompiledIndex::build(vec![sub.clone()], u64::MAX);
    let mut scratch = Scratch::default();
    let mut spans = SpanTable::new(4096, u64::MAX / 2);
    for (i, ev) in range.events.iter().enumerate() {
        idx.begin(&mut scratch);
        idx.match_event(ev, &mut scratch);
        if let Some(span) = ev.span_id {
            spans.follow(span, ev.span_end, 0, &idx, &mut scratch);
        }
        if !scratch.out.is_empty() {
            out.items.push_back(Item::Event { seq: range.first + i as u64, json: ev.json.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{testing, Catalogue};

    fn events(n: usize) -> Vec<Arc<Event>> {
        let (c, k) = Catalogue::with_keys(64);
        (0..n)
            .map(|i| {
                Arc::new(testing::event(
                    &c,
                    &k,
                    &format!(r#"{{"type":"smtp.ehlo","createdAt":{},"data":{{"n":{i}}}}}"#, 1_000 + i),
                ))
            })
            .collect()
    }

    #[test]
    fn keeps_a_contiguous_bounded_window() {
        let evs = events(100);
        let one = evs[0].json.len() + evs[0].text_len() + OVERHEAD_BYTES;
        let log = ReplayLog::new(ReplayLimits { max_bytes: one * 10 + one / 2, max_age_ms: 60_000 });
        log.append(0, &evs[..50], 0);
        log.append(50, &evs[50..], 0);
        let (start, held, bytes) = log.usage();
        assert!((9..=10).contains(&held), "about ten events fit: {held}");
        assert!(bytes <= one * 10 + one / 2);
        assert_eq!(start + held as u64, 100);
        assert_eq!(log.end(), 100);
        // Asking for more than is held reports the gap and returns what is left, in order.
        let r = log.range(80, 100);
        assert_eq!(r.gap_until, Some(start));
        assert_eq!(r.first, start);
        assert_eq!(r.events.len(), held);
        assert!(Arc::ptr_eq(&r.events[0], &evs[start as usize]));
        // A range inside the window has no gap.
        let r = log.range(98, 100);
        assert_eq!((r.gap_until, r.first, r.events.len()), (None, 98, 2));
    }

    #[test]
    fn ages_out_and_finds_by_time() {
        let evs = events(10);
        let log = ReplayLog::new(ReplayLimits { max_bytes: usize::MAX, max_age_ms: 1_000 });
        log.append(0, &evs[..5], 0);
        log.append(5, &evs[5..], 1_500);
        assert_eq!(log.usage().0, 5, "the first five are older than a second");
        assert_eq!(log.oldest(), Some((5, 1_005)));
        assert_eq!(log.first_since(1_007, 10), Some(7));
        assert_eq!(log.first_since(5_000, 10), None);
        assert_eq!(ReplayLog::new(ReplayLimits { max_bytes: 0, max_age_ms: 1 }).end(), 0);
    }
}
