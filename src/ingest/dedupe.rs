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
//! So an event is known by a fingerprint of its content ([`fingerprint`]), and a source holds a
//! **credit** for a fingerprint for each such event livetap published in a request whose
//! outcome the sender may not know. A later request from the same source that carries an event
//! with that fingerprint spends one credit instead of publishing it. Credits are counted, not
//! flags: a resend that holds three identical events of which two were published publishes one.
//!
//! A credit is granted as soon as its event is published, not when the request ends: a sender
//! that gave up may resend while the first request is still being processed. When the request
//! then ends with a prompt 2xx (faster than [`Dedupe::slow_answer`], a third of the sender's
//! timeout, counted from the request's arrival), the sender saw it succeed and will not resend
//! it, so its credits are taken back. When it ends any other way (a refusal after a partial
//! publish, a broken body, a slow answer, a task dropped with its connection), they stay, and
//! the resends it recognised are credited again, since the sender will send them once more.
//!
//! What this cannot tell apart: two events identical in type, second, span and every value,
//! sent in different requests from one source within the window, when the first request's
//! outcome was uncertain. They carry nothing that distinguishes them from a resend, so the
//! second is taken for one. Credits expire after the window (default 10 minutes, past the
//! sender's 5-minute discard) and their number is capped; past the cap the ones granted first
//! are forgotten first, exactly as many as needed, and their resends would be published again. One request remembers at most
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
    /// When it was last granted, in grant order: what the cap forgets first.
    order: u64,
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
    /// The next grant's `Credit::order`.
    next_order: u64,
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
    /// Fingerprints of the events of this request that were published (and credited at once).
    published: Vec<u64>,
    /// Fingerprints of the events recognised as resends (their credits spent).
    recognised: Vec<u64>,
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
        let Book { sources, entries, .. } = &mut *book;
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
                if self.published.len() + self.recognised.len() < MAX_SEEN_PER_REQUEST {
                    self.recognised.push(fp);
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

    /// Notes that the events with fingerprints `fps` were published, and credits them at once.
    pub fn published(&mut self, fps: &[u64], now: i64) {
        let room = MAX_SEEN_PER_REQUEST.saturating_sub(self.published.len() + self.recognised.len());
        let fps = &fps[..fps.len().min(room)];
        self.published.extend_from_slice(fps);
        self.dedupe.credit(&self.source, fps, now);
    }

    /// Ends the request. `certain` is true when the sender surely saw it succeed (a 2xx
    /// answered faster than [`Dedupe::slow_answer`]): the credits of what it published are
    /// taken back. Otherwise they stay, and the resends it recognised are credited again.
    pub fn finish(mut self, certain: bool, now: i64) {
        self.finished = true;
        self.settle(certain, now);
    }

    fn settle(&mut self, certain: bool, now: i64) {
        if certain {
            let published = std::mem::take(&mut self.published);
            self.dedupe.uncredit(&self.source, &published);
        } else {
            let recognised = std::mem::take(&mut self.recognised);
            self.dedupe.credit(&self.source, &recognised, now);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.settle(false, crate::event::encode::now_secs());
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
        Attempt {
            dedupe: self,
            source,
            published: Vec::new(),
            recognised: Vec::new(),
            duplicates: 0,
            finished: false,
        }
    }

    /// Gives `source` a credit for each fingerprint in `fps`.
    fn credit(&self, source: &SourceKey, fps: &[u64], now: i64) {
        if fps.is_empty() {
            return;
        }
        let expires = now + self.window_secs;
        let mut book = self.book.lock();
        let Book { sources, entries, next_order } = &mut *book;
        if !sources.contains_key(source) {
            sources.insert(source.clone(), Credits::default());
        }
        let credits = sources.get_mut(source).expect("inserted above");
        for &fp in fps {
            let c = credits.by_fingerprint.entry(fp).or_insert_with(|| {
                *entries += 1;
                Credit { count: 0, expires, order: 0 }
            });
            c.count = c.count.saturating_add(1);
            c.expires = expires;
            c.order = *next_order;
            *next_order += 1;
        }
        if *entries > self.max_entries {
            Self::sweep(&mut book, now, self.max_entries);
        }
    }

    /// Takes back one credit of `source` for each fingerprint in `fps`.
    fn uncredit(&self, source: &SourceKey, fps: &[u64]) {
        if fps.is_empty() {
            return;
        }
        let mut book = self.book.lock();
        let Book { sources, entries, .. } = &mut *book;
        let Some(credits) = sources.get_mut(source) else { return };
        for fp in fps {
            if let Some(c) = credits.by_fingerprint.get_mut(fp) {
                c.count -= 1;
                if c.count == 0 {
                    credits.by_fingerprint.remove(fp);
                    *entries -= 1;
                }
            }
        }
        if credits.by_fingerprint.is_empty() {
            sources.remove(source);
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
            // Forget exactly the credits granted first until the cap holds (grant orders are
            // unique, so no tie takes more).
            let mut all: Vec<u64> =
                sources.values().flat_map(|c| c.by_fingerprint.values().map(|v| v.order)).collect();
            let n = left - max;
            all.select_nth_unstable(n - 1);
            let cut = all[n - 1];
            left = 0;
            for c in sources.values_mut() {
                c.by_fingerprint.retain(|_, v| v.order > cut);
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
        a.published(&fps, 1000);
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
        a.published(&fps, 1000);
        drop(a);
        assert_eq!(d.len(), 1);
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 2)], true), vec![2]);
    }

    #[test]
    fn credits_are_granted_as_events_are_published() {
        // A sender that gave up resends while its first request is still running: the slices
        // already published are recognised.
        let d = Dedupe::new(600, 1000, T);
        let mut first = d.begin("s".into());
        let evs = events(&[("a.b", 1), ("a.b", 2)]);
        first.published(&evs.iter().map(|e| fingerprint(e)).collect::<Vec<_>>(), 1000);
        assert_eq!(request(&d, "s", &[("a.b", 3), ("a.b", 1), ("a.b", 2)], true), vec![3]);
        // The resend succeeded, so the sender will not send those again: when the first ends
        // (slowly), nothing of it is left to recognise, and identical events later are new.
        first.finish(false, 1000);
        assert!(d.is_empty());
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 2)], true), vec![1, 2]);
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
        a.published(&evs.iter().map(|e| fingerprint(e)).collect::<Vec<_>>(), 10);
        a.finish(false, 10);
        let mut a = d.begin("s".into());
        let evs = events(&[("a.b", 3), ("a.b", 4)]);
        a.published(&evs.iter().map(|e| fingerprint(e)).collect::<Vec<_>>(), 10);
        a.finish(false, 10);
        // Exactly the one granted first goes, though all four expire together.
        assert_eq!(d.len(), 3);
        assert_eq!(request(&d, "s", &[("a.b", 1), ("a.b", 2), ("a.b", 3)], true), vec![1]);
    }
}
