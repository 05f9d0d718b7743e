//! Recognising the events a webhook sender resends after livetap already accepted them.
//!
//! Stalwart's webhook sender resends a failed batch whole, merged with everything newer, and
//! it counts as failed any answer that is not 2xx and any answer that arrives after its
//! timeout (30 s by default). So the same events come back when livetap published part of a
//! batch and then refused the rest (the ring stayed full), when the connection broke
//! mid-body, and when livetap accepted a batch but answered too late for the sender. The ids
//! cannot tell such a resend apart: v0.15 ids repeat for two events of one type within one
//! second, and from v0.16.11 a resent event gets a new id (`../shared/spec/stalwart-v016.md`
//! §5). What stays the same in a resend is the event itself: its type, its `createdAt`
//! second, its span and every key and value.
//!
//! So an event is known by a fingerprint of its content ([`fingerprint`]), and a source earns
//! a **credit** for a fingerprint each time livetap published such an event in a request whose
//! outcome the sender may not know (a refusal after a partial publish, a broken body, an
//! answer slower than [`Dedupe::slow_answer`], a third of the sender's timeout). A later request from the same source that
//! carries an event with that fingerprint spends one credit instead of publishing it. Credits
//! are counted, not flags: a resend that holds three identical events of which two were
//! published publishes one. A request the sender surely saw succeed (a prompt 2xx) earns
//! nothing, since the sender will not resend it; the credits it spent are gone.
//!
//! What this cannot tell apart: two events identical in type, second, span and every value,
//! sent in different requests from one source within the window, when the first request's
//! outcome was uncertain. They carry nothing that distinguishes them from a resend, so the
//! second is taken for one. Credits expire after the window (default 10 minutes, past the
//! sender's 5-minute discard) and their number is capped; past the cap the oldest are
//! forgotten first, and their resends would be published again. One request remembers at most
//! [`MAX_SEEN_PER_REQUEST`] events, so its memory is bounded whatever the body's length.
//!
//! Pure bookkeeping: no I/O, no waiting beyond one short lock per call.

use crate::event::Event;
use ahash::AHashMap;
use parking_lot::Mutex;
use std::hash::{BuildHasher, Hash, Hasher};

/// The fingerprint of an event's content: its serialised JSON (type, `createdAt`, level and
/// every data key and value, written by livetap in one canonical form whatever the input's
/// spacing or key order within values) and its span. The producer's `id` is not part of it.
pub fn fingerprint(ev: &Event) -> u64 {
    // Fixed seeds: a fingerprint means the same thing for the whole process.
    let state = ahash::RandomState::with_seeds(0x6c69_7665, 0x7461_7021, 0x6465_6475, 0x7065_2121);
    let mut h = state.build_hasher();
    ev.json.hash(&mut h);
    ev.span_id.hash(&mut h);
    h.finish()
}

/// Most fingerprints one request remembers (2 MiB): a body with more events than that has its
/// first this-many protected against a resend; the rest, if resent, are published again.
pub const MAX_SEEN_PER_REQUEST: usize = 1 << 18;

/// Who resends: a principal, or the address of a signed webhook.
pub type SourceKey = String;

#[derive(Debug, Clone, Copy)]
struct Credit {
    count: u32,
    /// Seconds (Unix) after which the credit is void.
    expires: i64,
}

#[derive(Debug, Default)]
struct Credits {
    by_fingerprint: AHashMap<u64, Credit>,
}

/// Every source's credits and their total.
#[derive(Debug, Default)]
struct Book {
    sources: AHashMap<SourceKey, Credits>,
    /// Fingerprints held over all sources.
    entries: usize,
}

/// The credits of every source (see the module docs).
#[derive(Debug)]
pub struct Dedupe {
    /// Written and read under the lock by request tasks only, one short section per chunk of
    /// events.
    book: Mutex<Book>,
    window_secs: i64,
    max_entries: usize,
    slow: std::time::Duration,
    /// When expired credits were last dropped (Unix seconds). Relaxed: it only spaces the
    /// sweeps out, and two requests sweeping at once is harmless.
    last_sweep: std::sync::atomic::AtomicI64,
}

/// One request's dealings with the credits of its source. Dropped without
/// [`Attempt::finish`] (the request's task was cancelled, say because the sender closed the
/// connection after its timeout), it counts as a request whose outcome the sender does not
/// know.
#[derive(Debug)]
pub struct Attempt<'d> {
    dedupe: &'d Dedupe,
    source: SourceKey,
    /// Fingerprints of the events of this request that were published or recognised as
    /// resends, in order: what the sender will send again if it did not see the answer.
    seen: Vec<u64>,
    /// Events recognised as resends and not published.
    pub duplicates: usize,
    finished: bool,
}

impl Attempt<'_> {
    /// Sorts `events` (parsed from the request, in order) into resends, which are dropped and
    /// spend a credit, and new events, which stay in `events` to be published. `fps` receives
    /// the fingerprints of the events that stay, in order, for [`Attempt::published`].
    pub fn filter(&mut self, events: &mut Vec<std::sync::Arc<Event>>, fps: &mut Vec<u64>) {
        fps.clear();
        let mut book = self.dedupe.book.lock();
        let Book { sources, entries } = &mut *book;
        let Some(credits) = sources.get_mut(&self.source) else {
            fps.extend(events.iter().map(|e| fingerprint(e)));
            return;
        };
        let mut removed = 0;
        events.retain(|ev| {
            let fp = fingerprint(ev);
            if let Some(c) = credits.by_fingerprint.get_mut(&fp) {
                c.count -= 1;
                if c.count == 0 {
                    credits.by_fingerprint.remove(&fp);
                    removed += 1;
                }
                if self.seen.len() < MAX_SEEN_PER_REQUEST {
                    self.seen.push(fp);
                }
                self.duplicates += 1;
                false
            } else {
                fps.push(fp);
                true
            }
        });
        if credits.by_fingerprint.is_empty() {
            sources.remove(&self.source);
        }
        *entries = entries.saturating_sub(removed);
    }

    /// Notes that the events with fingerprints `fps` were published.
    pub fn published(&mut self, fps: &[u64]) {
        let room = MAX_SEEN_PER_REQUEST.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&fps[..fps.len().min(room)]);
    }

    /// Ends the request. `certain` is true when the sender surely saw it succeed (a 2xx
    /// answered faster than [`Dedupe::slow_answer`]); otherwise every event of it that was
    /// published or recognised becomes a credit, since the sender will send them again.
    pub fn finish(mut self, certain: bool, now: i64) {
        self.finished = true;
        if !certain {
            let seen = std::mem::take(&mut self.seen);
            self.dedupe.credit(std::mem::take(&mut self.source), seen, now);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let seen = std::mem::take(&mut self.seen);
            self.dedupe.credit(std::mem::take(&mut self.source), seen, crate::event::encode::now_secs());
        }
    }
}

impl Dedupe {
    /// Credits that last `window_secs`, at most `max_entries` fingerprints in all, for senders
    /// that give up on an answer after `sender_timeout`.
    pub fn new(window_secs: u64, max_entries: usize, sender_timeout: std::time::Duration) -> Dedupe {
        Dedupe {
            book: Mutex::new(Book::default()),
            window_secs: window_secs as i64,
            max_entries: max_entries.max(1),
            slow: sender_timeout / 3,
            last_sweep: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// An answer at least this slow may have come after the sender gave up: a third of the
    /// sender's timeout (`webhook-sender-timeout-secs`, Stalwart's `timeout`, 30 s by default),
    /// which leaves room for the network and a busy sender. A request answered after its
    /// sender closed the connection is answered all the same (nothing tells the handler), so
    /// the time it took is what decides.
    pub fn slow_answer(&self) -> std::time::Duration {
        self.slow
    }

    /// Starts a request from `source`.
    pub fn begin(&self, source: SourceKey) -> Attempt<'_> {
        Attempt { dedupe: self, source, seen: Vec::new(), duplicates: 0, finished: false }
    }

    /// Gives `source` a credit for each fingerprint in `seen`.
    fn credit(&self, source: SourceKey, seen: Vec<u64>, now: i64) {
        if seen.is_empty() {
            return;
        }
        let expires = now + self.window_secs;
        let mut book = self.book.lock();
        let credits = book.sources.entry(source).or_default();
        let mut added = 0;
        for fp in seen {
            let c = credits.by_fingerprint.entry(fp).or_insert_with(|| {
                added += 1;
                Credit { count: 0, expires }
            });
            c.count = c.count.saturating_add(1);
            c.expires = expires;
        }
        book.entries += added;
        if book.entries > self.max_entries {
            Self::sweep(&mut book, now, self.max_entries);
        }
    }

    /// Drops expired credits when the last sweep is ten seconds old or more: a sweep visits
    /// every credit, so it is not made per request.
    pub fn maybe_expire(&self, now: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        if now - self.last_sweep.load(Relaxed) >= 10 {
            self.last_sweep.store(now, Relaxed);
            self.expire(now);
        }
    }

    /// Drops expired credits and, past the cap, the ones that expire first.
    pub fn expire(&self, now: i64) {
        Self::sweep(&mut self.book.lock(), now, self.max_entries);
    }

    fn sweep(book: &mut Book, now: i64, max: usize) {
        let sources = &mut book.sources;
        let mut left = 0;
        for c in sources.values_mut() {
            c.by_fingerprint.retain(|_, v| v.expires > now);
            left += c.by_fingerprint.len();
        }
        if left > max {
            // Forget the credits that expire first until the cap holds.
            let mut all: Vec<i64> =
                sources.values().flat_map(|c| c.by_fingerprint.values().map(|v| v.expires)).collect();
            all.sort_unstable();
            let cut = all[left - max];
            left = 0;
            for c in sources.values_mut() {
                c.by_fingerprint.retain(|_, v| v.expires > cut);
                left += c.by_fingerprint.len();
            }
        }
        sources.retain(|_, c| !c.by_fingerprint.is_empty());
        book.entries = left;
    }

    /// Fingerprints holding credits now (statistics and tests).
    pub fn len(&self) -> usize {
        self.book.lock().entries
    }

    /// True when no credit is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder, RawValue};
    use std::sync::Arc;

    const T: std::time::Duration = std::time::Duration::from_secs(30);

    fn events(specs: &[(&str, u64)]) -> Vec<Arc<Event>> {
        let (c, k) = Catalogue::with_keys(64);
        let mut b = EventBuilder::new(&c, &k);
        specs
            .iter()
            .map(|(ty, n)| {
                let text = format!(
                    r#"{{"id":"{n}{n}","createdAt":"2026-12-07T10:00:00Z","type":"{ty}","data":{{"spanId":9,"messageId":{n}}}}}"#
                );
                Arc::new(b.build(&RawValue::parse_serde(text.as_bytes()).unwrap(), 0).unwrap())
            })
            .collect()
    }

    /// Runs one request: returns the message ids published.
    fn request(d: &Dedupe, src: &str, body: &[(&str, u64)], certain: bool) -> Vec<u64> {
        let mut a = d.begin(src.to_string());
        let mut evs = events(body);
        let mut fps = Vec::new();
        a.filter(&mut evs, &mut fps);
        a.published(&fps);
        a.finish(certain, 1000);
        evs.iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.json).unwrap();
                v["data"]["messageId"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn the_producer_id_is_not_part_of_the_fingerprint() {
        let (c, k) = Catalogue::with_keys(64);
        let mut b = EventBuilder::new(&c, &k);
        let mk = |b: &mut EventBuilder<'_>, t: &str| {
            fingerprint(&b.build(&RawValue::parse_serde(t.as_bytes()).unwrap(), 0).unwrap())
        };
        let a = mk(&mut b, r#"{"id":"1","createdAt":"2026-12-07T10:00:00Z","type":"a.b","data":{"x":1}}"#);
        let same =
            mk(&mut b, r#"{"id":"2", "type":"a.b","createdAt":"2026-12-07T10:00:00Z","data":{"x":1}}"#);
        let other =
            mk(&mut b, r#"{"id":"1","createdAt":"2026-12-07T10:00:01Z","type":"a.b","data":{"x":1}}"#);
        assert_eq!(a, same);
        assert_ne!(a, other);
    }

    #[test]
    fn a_resend_after_an_uncertain_outcome_publishes_only_what_is_new() {
        let d = Dedupe::new(600, 1000, T);
        // Published, but the sender did not see the answer.
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 2)], false), vec![1, 2]);
        assert_eq!(d.len(), 2);
        // The resend, merged with a newer event, also fails: its old part stays credited.
        assert_eq!(request(&d, "s", &[("a.b", 3), ("a.b", 1), ("a.b", 2)], false), vec![3]);
        assert_eq!(d.len(), 3);
        // Another source's identical events are its own.
        assert_eq!(request(&d, "t", &[("a.b", 1)], true), vec![1]);
        // The next resend succeeds: nothing old is published and the credits are spent.
        assert_eq!(request(&d, "s", &[("a.b", 4), ("a.b", 1), ("a.b", 2), ("a.b", 3)], true), vec![4]);
        assert!(d.is_empty());
        // After a success, an identical event is new again.
        assert_eq!(request(&d, "s", &[("a.b", 1)], true), vec![1]);
    }

    #[test]
    fn identical_events_are_counted_not_flagged() {
        let d = Dedupe::new(600, 1000, T);
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 1)], false), vec![1, 1]);
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 1), ("a.b", 1)], true), vec![1]);
    }

    #[test]
    fn a_request_dropped_unfinished_counts_as_uncertain() {
        let d = Dedupe::new(600, 1000, T);
        let mut a = d.begin("s".into());
        let mut evs = events(&[("a.b", 1)]);
        let mut fps = Vec::new();
        a.filter(&mut evs, &mut fps);
        a.published(&fps);
        drop(a);
        assert_eq!(d.len(), 1);
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 2)], true), vec![2]);
    }

    #[test]
    fn credits_expire_and_are_capped() {
        let d = Dedupe::new(600, 1000, T);
        request(&d, "s", &[("a.b", 1), ("a.b", 2)], false);
        d.expire(1000 + 599);
        assert_eq!(d.len(), 2);
        d.expire(1000 + 600);
        assert!(d.is_empty());
        let d = Dedupe::new(600, 3, T);
        let mut a = d.begin("s".into());
        let evs = events(&[("a.b", 1), ("a.b", 2)]);
        a.published(&evs.iter().map(|e| fingerprint(e)).collect::<Vec<_>>());
        a.finish(false, 10);
        let mut a = d.begin("s".into());
        let evs = events(&[("a.b", 3), ("a.b", 4)]);
        a.published(&evs.iter().map(|e| fingerprint(e)).collect::<Vec<_>>());
        a.finish(false, 20);
        // The two that expire first go; the newer two stay.
        assert_eq!(d.len(), 2);
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 3)], true), vec![1]);
    }
}
