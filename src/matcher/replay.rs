//! The replay log: the most recent events, kept so a reconnecting client resumes without loss.
//!
//! One matcher thread (shard 0) appends every event it reads, in sequence order, once per
//! batch, so the log is always a contiguous run of sequence numbers `start..end`. It is bounded
//! by bytes and by age; what falls out is gone from memory (a history store can hold it longer).
//! A resuming subscriber copies the handles of the range it missed under the lock, then matches
//! them outside it with its own compiled index, the same code as live matching, and receives the
//! same pre-serialised bytes.
//!
//! When the range reaches back past the log, the older part is read from the history store
//! through [`OlderEvents`] (stored bytes, rebuilt for matching, matched by the same index), and
//! whatever neither kept is announced with an `event: gap` frame.

use super::index::{CompiledIndex, Scratch};
use super::spans::SpanTable;
use crate::event::Event;
use crate::subscriber::{Item, Subscriber};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

/// Bookkeeping cost of one retained event beyond its JSON and match text (the `Event` struct
/// of about 240 bytes with its inline field list and two `Bytes` views, the `Arc` and `Bytes`
/// headers, allocator rounding, and the log's own slot), counted so the byte bound holds for
/// small events.
const OVERHEAD_BYTES: usize = 352;

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
    /// Ids that earlier runs reserved and may not have handed out (after a crash; see
    /// `ring::lease`), sorted and disjoint. Set once before the log is shared; a gap over them
    /// is reported as not exact rather than counted as missed events.
    unknown: Vec<Range<u64>>,
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
        ReplayLog {
            limits,
            inner: Mutex::new(Inner { entries: VecDeque::new(), start: 0, bytes: 0 }),
            unknown: Vec::new(),
        }
    }

    /// An empty log whose first event will be `start` (the ring's first sequence number, which
    /// after a restart continues from the last run's ids).
    pub fn starting_at(limits: ReplayLimits, start: u64) -> ReplayLog {
        ReplayLog {
            limits,
            inner: Mutex::new(Inner { entries: VecDeque::new(), start, bytes: 0 }),
            unknown: Vec::new(),
        }
    }

    /// Sets the ranges of ids that may never have been handed out (sorted and disjoint, from
    /// `SeqLease::unknown_ids`).
    pub fn with_unknown_ids(mut self, ranges: &[Range<u64>]) -> ReplayLog {
        self.unknown = ranges.to_vec();
        self
    }

    /// How many ids of `from..until` lie in the unknown ranges.
    fn unknown_in(&self, from: u64, until: u64) -> u64 {
        self.unknown.iter().map(|r| r.end.min(until).saturating_sub(r.start.max(from))).sum()
    }

    /// Whether id position `seq` lies in an unknown range.
    fn is_unknown(&self, seq: u64) -> bool {
        let i = self.unknown.partition_point(|r| r.end <= seq);
        self.unknown.get(i).is_some_and(|r| r.start <= seq)
    }

    /// Whether the log retains anything at all.
    pub fn enabled(&self) -> bool {
        self.limits.max_bytes > 0
    }

    /// Appends events `first..first + events.len()` (the caller reads the ring in order, so
    /// calls are contiguous) and evicts what the bounds no longer allow.
    pub fn append(&self, first: u64, events: &mut Vec<Arc<Event>>, now_ms: u64) {
        if !self.enabled() || events.is_empty() {
            return;
        }
        let mut g = self.inner.lock();
        if g.entries.is_empty() {
            g.start = first;
        }
        debug_assert_eq!(g.start + g.entries.len() as u64, first, "appends are contiguous");
        // Moved in, not cloned: a reference-count increment per event on a line the parser
        // thread wrote last is a cache miss on the matcher thread.
        for ev in events.drain(..) {
            let bytes = ev.json.len() + ev.text_len() + OVERHEAD_BYTES;
            g.bytes += bytes;
            g.entries.push_back(Entry { event: ev, at_ms: now_ms, bytes });
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

/// Events older than the in-memory log, kept elsewhere (the history store), as a resume reads
/// them. A trait so the replay does not care which store holds them; `Hub` implements it over
/// its SQLite history. Calls block (disk reads), so [`prepare`] makes them off the async
/// threads. A store error reads as "nothing kept", which the gap frame then reports.
pub trait OlderEvents: Send + Sync {
    /// Up to `limit` kept events with `from <= seq < until`, oldest first, each with its
    /// `seq` and rebuilt for matching (carrying the stored bytes unchanged).
    fn page(&self, from: u64, until: u64, limit: usize) -> Vec<(u64, Event)>;
    /// When more than `n` kept events lie in `from..until`: the `seq` of the oldest of the
    /// newest `n` of them (where a bounded scan starts); `None` when `n` or fewer lie there.
    fn floor_for_newest(&self, from: u64, until: u64, n: usize) -> Option<u64>;
    /// The lowest kept `seq` of an event created at or after `time` (Unix seconds).
    fn first_since(&self, time: i64) -> Option<u64>;
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

/// Most stored events one resume reads from disk. Rebuilding an event for matching costs about
/// as much as ingesting it (a few microseconds), so this bounds a resume's work to about a
/// second; older stored events are reported in the gap frame instead.
pub const DISK_SCAN_MAX: usize = 250_000;

/// Most matching events one resume takes from disk (their bytes wait in the resume until the
/// client reads them: about 30 MB of typical events). Past it the oldest are dropped and counted
/// in the gap frame, so the replay always joins the live stream without a hole.
pub const DISK_MATCH_MAX: usize = 100_000;

/// Stored events read per disk query.
const DISK_PAGE: usize = 4096;

/// The bounds of one resume's disk phase ([`DISK_SCAN_MAX`], [`DISK_MATCH_MAX`]; smaller in
/// tests).
#[derive(Debug, Clone, Copy)]
struct DiskBounds {
    scan: usize,
    matches: usize,
}

const DISK_BOUNDS: DiskBounds = DiskBounds { scan: DISK_SCAN_MAX, matches: DISK_MATCH_MAX };

/// Builds the replay of a new subscriber that receives live events from ring position `live`:
/// the kept events from `from` up to `live` that match its filter (with the same compiled index
/// code and span following as live matching, and the same pre-serialised bytes), taken from the
/// in-memory log and, for what the log no longer holds, from `older` (the history store); and a
/// gap notice when neither kept everything in the range.
pub async fn prepare(
    log: &Arc<ReplayLog>,
    older: Option<Arc<dyn OlderEvents>>,
    sub: &Arc<Subscriber>,
    from: ResumeFrom,
    live: u64,
) -> Resume {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while log.enabled() && log.end() < live && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let (log2, sub) = (log.clone(), sub.clone());
    // Matching a whole log (64 MiB by default) or reading the store is too long for an async
    // thread: it runs on the blocking pool.
    let job =
        tokio::task::spawn_blocking(move || replay(&log2, older.as_deref(), &sub, from, live, DISK_BOUNDS));
    job.await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "resume failed; the stream starts live");
        let start = resume_start(from, live);
        let unknown = log.unknown_in(start, live);
        let missed = Missed { missed: live - start - unknown, unknown };
        Resume { gap: Some(gap_json(from, live, Some(missed), 0, "resume failed")), ..Default::default() }
    })
}

/// The requested start as a sequence number, before looking at what is kept.
fn resume_start(from: ResumeFrom, live: u64) -> u64 {
    match from {
        // Ids are sequence numbers plus one: after id N comes sequence N.
        ResumeFrom::AfterId(id) => id.min(live),
        ResumeFrom::Since(_) => live,
    }
}

/// How many events a gap lost: `missed` certainly existed and are not replayed; `unknown` more
/// ids in the gap were reserved by a run that crashed and may never have been handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Missed {
    missed: u64,
    unknown: u64,
}

/// The `event: gap` frame's JSON: where the client asked to start, after which id the stream
/// is complete, how many of the hub's events in between are not kept (whether or not the filter
/// would have matched them; unknown for a `since=` start), and how many came from the history
/// store. When part of the gap lies in ids a crashed run may not have used, the count is a
/// lower bound: `"exact":false` says so, and `missedAtMost` gives the upper bound.
fn gap_json(
    from: ResumeFrom,
    resumed_after: u64,
    missed: Option<Missed>,
    from_history: u64,
    reason: &str,
) -> String {
    let asked = match from {
        ResumeFrom::AfterId(id) => format!(r#""lastEventId":{id}"#),
        ResumeFrom::Since(t) => format!(r#""since":{t}"#),
    };
    let missed = match missed {
        None => String::new(),
        Some(Missed { missed, unknown: 0 }) => format!(r#","missed":{missed}"#),
        Some(Missed { missed, unknown }) => {
            format!(r#","missed":{missed},"exact":false,"missedAtMost":{}"#, missed + unknown)
        }
    };
    let history = if from_history > 0 { format!(r#","fromHistory":{from_history}"#) } else { String::new() };
    format!(r#"{{{asked},"resumedAfter":{resumed_after}{missed}{history},"reason":"{reason}"}}"#)
}

/// Matches events for one subscriber exactly as its live matcher thread would.
struct ReplayMatcher {
    idx: CompiledIndex,
    scratch: Scratch,
    spans: SpanTable,
    /// The resuming subscriber, whose dialect the replayed bytes are written in.
    sub: Arc<Subscriber>,
}

impl ReplayMatcher {
    fn new(sub: &Arc<Subscriber>) -> Self {
        ReplayMatcher {
            idx: CompiledIndex::build(vec![sub.clone()], u64::MAX),
            scratch: Scratch::default(),
            spans: SpanTable::new(4096, u64::MAX / 2),
            sub: sub.clone(),
        }
    }

    /// The event's bytes in the subscriber's dialect.
    fn wire_of(&self, ev: &Event) -> Bytes {
        self.sub.wire_of(ev)
    }

    fn matches(&mut self, ev: &Event) -> bool {
        self.idx.begin(&mut self.scratch);
        self.idx.match_event(ev, &mut self.scratch);
        if let Some(span) = ev.span_id {
            self.spans.follow(span, ev.parent_span, ev.span_end, 0, &self.idx, &mut self.scratch);
        }
        !self.scratch.out.is_empty()
    }
}

/// What the history store gave a resume.
#[derive(Default)]
struct FromDisk {
    /// Matching events, oldest first.
    items: VecDeque<Item>,
    /// Stored events read (matching or not).
    read: u64,
    /// Matching events dropped past the match bound (the oldest).
    dropped: u64,
    /// Of `read`, those whose ids lie in the log's unknown ranges (they existed after all).
    read_unknown: u64,
}

/// Reads and matches the kept events `from..until` from the store, oldest first, within the
/// scan and match bounds. Positions it does not read (older than the scan bound, or never
/// stored) are what the caller reports as missed.
fn read_older(
    older: &dyn OlderEvents,
    log: &ReplayLog,
    m: &mut ReplayMatcher,
    from: u64,
    until: u64,
    bounds: DiskBounds,
) -> FromDisk {
    let mut out = FromDisk::default();
    let mut next = older.floor_for_newest(from, until, bounds.scan).unwrap_or(from);
    while next < until {
        let page = older.page(next, until, DISK_PAGE);
        let Some(last) = page.last().map(|(seq, _)| *seq) else { break };
        for (seq, ev) in page {
            out.read += 1;
            if log.is_unknown(seq) {
                out.read_unknown += 1;
            }
            if m.matches(&ev) {
                if out.items.len() == bounds.matches {
                    out.items.pop_front();
                    out.dropped += 1;
                }
                out.items.push_back(Item::Event { seq, wire: m.wire_of(&ev) });
            }
        }
        next = last + 1;
    }
    out
}

fn replay(
    log: &ReplayLog,
    older: Option<&dyn OlderEvents>,
    sub: &Arc<Subscriber>,
    from: ResumeFrom,
    live: u64,
    bounds: DiskBounds,
) -> Resume {
    let mut out = Resume::default();
    // Where the in-memory log's events start (all of `mem_first..live` is held).
    let mem_first = match log.oldest() {
        _ if !log.enabled() => live,
        Some((first, _)) => first.min(live),
        None => log.end().min(live),
    };
    let start = match from {
        ResumeFrom::AfterId(_) => resume_start(from, live),
        ResumeFrom::Since(t) => {
            let in_memory = log.first_since(t, live);
            // The log reaches back to `t` when the ring never held anything before it or its
            // oldest event is older than `t`; otherwise events created at or after `t` may be
            // gone (creation times are in seconds, so an equal one does not prove it).
            let reaches = mem_first == 0 || log.oldest().is_some_and(|(_, created)| created < t);
            match older.and_then(|o| o.first_since(t)) {
                _ if reaches => in_memory.unwrap_or(live),
                Some(s) if s < mem_first => s,
                _ => {
                    out.gap = Some(gap_json(from, mem_first, None, 0, "older events are no longer retained"));
                    in_memory.unwrap_or(live)
                }
            }
        }
    };
    if start >= live {
        return out;
    }
    let mut m = ReplayMatcher::new(sub);
    let mem_from = mem_first.max(start);
    // Positions of the hub's events in `start..live` that the client will not get, and the id
    // after which it gets everything.
    let mut missed = 0;
    let mut complete_after = start;
    let mut from_history = 0;
    // Ids in the gap that a crashed run may never have handed out: not counted as missed.
    let mut unknown = 0;
    if start < mem_from {
        let reserved_unused = log.unknown_in(start, mem_from);
        if let Some(o) = older {
            let disk = read_older(o, log, &mut m, start, mem_from, bounds);
            from_history = disk.read;
            unknown = reserved_unused - disk.read_unknown.min(reserved_unused);
            missed += (mem_from - start) - disk.read.min(mem_from - start) + disk.dropped;
            out.items = disk.items;
        } else {
            unknown = reserved_unused;
            missed += mem_from - start;
        }
        missed -= unknown.min(missed);
        if missed + unknown > 0 {
            complete_after = mem_from;
        }
    }
    let range = log.range(mem_from, live.min(log.end()));
    // Usually `range.first == mem_from`. It is later when the log evicted events while the
    // store was read, and the range is empty when the log did not catch up with `live`.
    let held_until = if range.events.is_empty() { live } else { range.first };
    if held_until > mem_from {
        missed += held_until - mem_from;
        complete_after = held_until;
    }
    if missed + unknown > 0 && out.gap.is_none() {
        let reason = if missed == 0 {
            "livetap restarted after a crash; some ids before its restart may never have been used"
        } else if from_history > 0 {
            "older events are kept only in part (history keeps selected events)"
        } else {
            "older events are no longer retained"
        };
        out.gap =
            Some(gap_json(from, complete_after, Some(Missed { missed, unknown }), from_history, reason));
    }
    for (i, ev) in range.events.iter().enumerate() {
        if m.matches(ev) {
            out.items.push_back(Item::Event { seq: range.first + i as u64, wire: sub.wire_of(ev) });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{testing, Catalogue};

    /// Event `i` of a test run: created at second `1000 + i`.
    fn event(c: &Catalogue, k: &crate::event::KeyRegistry, i: usize) -> Event {
        testing::event(
            c,
            k,
            &format!(r#"{{"type":"smtp.ehlo","createdAt":{},"data":{{"n":{i}}}}}"#, 1_000 + i),
        )
    }

    fn events(n: usize) -> Vec<Arc<Event>> {
        let (c, k) = Catalogue::with_keys(64);
        (0..n).map(|i| Arc::new(event(&c, &k, i))).collect()
    }

    #[test]
    fn keeps_a_contiguous_bounded_window() {
        let evs = events(100);
        let one = evs[0].json.len() + evs[0].text_len() + OVERHEAD_BYTES;
        let log = ReplayLog::new(ReplayLimits { max_bytes: one * 10 + one / 2, max_age_ms: 60_000 });
        log.append(0, &mut evs[..50].to_vec(), 0);
        log.append(50, &mut evs[50..].to_vec(), 0);
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
        log.append(0, &mut evs[..5].to_vec(), 0);
        log.append(5, &mut evs[5..].to_vec(), 1_500);
        assert_eq!(log.usage().0, 5, "the first five are older than a second");
        assert_eq!(log.oldest(), Some((5, 1_005)));
        assert_eq!(log.first_since(1_007, 10), Some(7));
        assert_eq!(log.first_since(5_000, 10), None);
        assert_eq!(ReplayLog::new(ReplayLimits { max_bytes: 0, max_age_ms: 1 }).end(), 0);
    }

    /// A store holding every third position of `0..n`, as the history holds selected events.
    struct EveryThird(Vec<Arc<Event>>, Catalogue, crate::event::KeyRegistry);

    impl OlderEvents for EveryThird {
        fn page(&self, from: u64, until: u64, limit: usize) -> Vec<(u64, Event)> {
            (from..until.min(self.0.len() as u64))
                .filter(|s| s % 3 == 0)
                .take(limit)
                .map(|s| (s, event(&self.1, &self.2, s as usize)))
                .collect()
        }
        fn floor_for_newest(&self, from: u64, until: u64, n: usize) -> Option<u64> {
            let kept: Vec<u64> = (from..until.min(self.0.len() as u64)).filter(|s| s % 3 == 0).collect();
            (kept.len() > n && n > 0).then(|| kept[kept.len() - n])
        }
        fn first_since(&self, time: i64) -> Option<u64> {
            (0..self.0.len() as u64).find(|&s| s % 3 == 0 && self.0[s as usize].created_at >= time)
        }
    }

    fn seqs(r: &Resume) -> Vec<u64> {
        r.items
            .iter()
            .map(|i| match i {
                Item::Event { seq, .. } => *seq,
                _ => panic!("only events"),
            })
            .collect()
    }

    fn everything() -> Arc<Subscriber> {
        Arc::new(Subscriber::new(1, crate::query::ast::Expr::True, false, 16, None))
    }

    #[test]
    fn ids_a_crashed_run_may_not_have_used_are_not_counted_as_missed() {
        let evs = events(40);
        let limits = ReplayLimits { max_bytes: usize::MAX, max_age_ms: u64::MAX };
        // This run starts at 30; ids 12..30 were reserved by a run that crashed.
        let unknown = vec![Range { start: 12, end: 30 }];
        let log = ReplayLog::starting_at(limits, 30).with_unknown_ids(&unknown);
        log.append(30, &mut evs[30..].to_vec(), 0);
        let big = DiskBounds { scan: 1000, matches: 1000 };
        let r = replay(&log, None, &everything(), ResumeFrom::AfterId(5), 40, big);
        let gap: serde_json::Value = serde_json::from_str(r.gap.as_deref().unwrap()).unwrap();
        // 5..12 certainly existed; 12..30 may or may not have.
        assert_eq!((gap["missed"].as_u64(), gap["exact"].as_bool()), (Some(7), Some(false)));
        assert_eq!(gap["missedAtMost"], 25);
        // A store that kept some of the unknown ids proves they existed (and replays them).
        let (c, k) = Catalogue::with_keys(64);
        let disk = EveryThird(evs.clone(), c, k);
        let r = replay(&log, Some(&disk), &everything(), ResumeFrom::AfterId(5), 40, big);
        let gap: serde_json::Value = serde_json::from_str(r.gap.as_deref().unwrap()).unwrap();
        // Read from disk: 6, 9 (known) and 12..30 every third (6 ids, in the unknown range).
        assert_eq!(gap["fromHistory"], 8);
        assert_eq!((gap["missed"].as_u64(), gap["missedAtMost"].as_u64()), (Some(5), Some(17)));
        // A resume entirely within this run, or after a clean restart, is exact.
        let clean = ReplayLog::starting_at(limits, 30);
        clean.append(30, &mut evs[30..].to_vec(), 0);
        let r = replay(&clean, None, &everything(), ResumeFrom::AfterId(5), 40, big);
        let gap: serde_json::Value = serde_json::from_str(r.gap.as_deref().unwrap()).unwrap();
        assert_eq!((gap["missed"].as_u64(), gap.get("exact")), (Some(25), None));
        // A gap made only of unknown ids says so instead of claiming a loss.
        let r = replay(&log, None, &everything(), ResumeFrom::AfterId(12), 40, big);
        let gap: serde_json::Value = serde_json::from_str(r.gap.as_deref().unwrap()).unwrap();
        assert_eq!((gap["missed"].as_u64(), gap["missedAtMost"].as_u64()), (Some(0), Some(18)));
        assert!(gap["reason"].as_str().unwrap().contains("crash"));
        assert_eq!(seqs(&r), (30..40).collect::<Vec<_>>());
    }

    #[test]
    fn disk_fills_in_before_memory_and_the_gap_counts_what_neither_kept() {
        let evs = events(40);
        // The log holds 30..40 only, as if 0..30 had been evicted.
        let log = ReplayLog::starting_at(ReplayLimits { max_bytes: usize::MAX, max_age_ms: u64::MAX }, 30);
        log.append(30, &mut evs[30..].to_vec(), 0);
        let (c, k) = Catalogue::with_keys(64);
        let disk = EveryThird(evs.clone(), c, k);
        let big = DiskBounds { scan: 1000, matches: 1000 };
        let r = replay(&log, Some(&disk), &everything(), ResumeFrom::AfterId(5), 40, big);
        let want: Vec<u64> = (5..30).filter(|s| s % 3 == 0).chain(30..40).collect();
        assert_eq!(seqs(&r), want);
        let gap: serde_json::Value = serde_json::from_str(r.gap.as_deref().unwrap()).unwrap();
        // 25 positions before memory, 8 of them kept on disk.
        assert_eq!(gap["missed"], 17);
        assert_eq!(gap["fromHistory"], 8);
        assert_eq!(gap["resumedAfter"], 30);

        // Without a store the same resume is memory only, with all 25 missed.
        let r = replay(&log, None, &everything(), ResumeFrom::AfterId(5), 40, big);
        assert_eq!(seqs(&r), (30..40).collect::<Vec<_>>());
        let gap: serde_json::Value = serde_json::from_str(r.gap.as_deref().unwrap()).unwrap();
        assert_eq!((gap["missed"].as_u64(), gap.get("fromHistory")), (Some(25), None));

        // Scan bound: only the newest 3 kept events (21, 24, 27) are read; match bound: of
        // those, only the newest 2 are kept, the older counted as missed.
        let small = DiskBounds { scan: 3, matches: 2 };
        let r = replay(&log, Some(&disk), &everything(), ResumeFrom::AfterId(5), 40, small);
        assert_eq!(seqs(&r), [24, 27].into_iter().chain(30..40).collect::<Vec<_>>());
        let gap: serde_json::Value = serde_json::from_str(r.gap.as_deref().unwrap()).unwrap();
        assert_eq!((gap["fromHistory"].as_u64(), gap["missed"].as_u64()), (Some(3), Some(25 - 3 + 1)));

        // since= older than the log finds its start on disk.
        let r = replay(&log, Some(&disk), &everything(), ResumeFrom::Since(1_010), 40, big);
        assert_eq!(seqs(&r)[0], 12, "the first kept event created at or after 1010");
    }
}
