//! Span following: once an event of span S matched a subscriber, the rest of S reaches it.
//!
//! Each matcher thread keeps its own table (its subscribers only), so no locking is needed and
//! events of a span are handled in order. Memory is bounded: an entry is released when its span
//! ends (a catalogue `span_end` event such as `smtp.connection-end`), when it has been idle past
//! the TTL, or, if the table is at its cap, when it is among the oldest tenth.

use super::index::{CompiledIndex, Scratch};
use ahash::AHashMap;
use smallvec::SmallVec;

struct Entry {
    subs: SmallVec<[u64; 2]>,
    last_seen: u64,
}

/// Per-thread span-follow state.
pub struct SpanTable {
    map: AHashMap<u64, Entry>,
    cap: usize,
    ttl_ms: u64,
}

impl SpanTable {
    /// A table holding at most `cap` spans, each expiring after `ttl_ms` of silence.
    pub fn new(cap: usize, ttl_ms: u64) -> SpanTable {
        SpanTable { map: AHashMap::new(), cap: cap.max(16), ttl_ms }
    }

    /// Number of spans followed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no span is followed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// For an event of `span` already matched into `scratch.out`: adds the span's followers to
    /// the output, and records new followers among the filtered subscribers that matched.
    /// Subscribers without a filter are not recorded: they receive everything anyway.
    ///
    /// `parent` is the span `span` was opened from (a Postfix message's SMTP session): whoever
    /// follows the parent receives this event and, from now on, follows `span` too, so
    /// following a session also follows the messages it submitted and their deliveries. The
    /// link is made once, by the event that carries it, and costs one lookup on that event
    /// only.
    pub fn follow(
        &mut self,
        span: u64,
        parent: Option<u64>,
        span_end: bool,
        now: u64,
        idx: &CompiledIndex,
        scratch: &mut Scratch,
    ) {
        if let Some(parent) = parent.filter(|&p| p != span) {
            if let Some(entry) = self.map.get_mut(&parent) {
                entry.last_seen = now;
                // The parent's followers are now in the output, so the loop below records them
                // as the child's followers with the event's other filtered subscribers.
                for &id in &entry.subs {
                    if let Some(d) = idx.dense_of(id) {
                        scratch.add_unique(d);
                    }
                }
            }
        }
        if let Some(entry) = self.map.get_mut(&span) {
            entry.last_seen = now;
            for &id in &entry.subs {
                if let Some(d) = idx.dense_of(id) {
                    scratch.add_unique(d);
                }
            }
        }
        if span_end {
            self.map.remove(&span);
            return;
        }
        for i in 0..scratch.out.len() {
            let sub = idx.sub(scratch.out[i]);
            if !sub.follow || sub.filter.is_true() {
                continue;
            }
            if !self.map.contains_key(&span) && self.map.len() >= self.cap {
                self.evict(now);
            }
            let entry =
                self.map.entry(span).or_insert_with(|| Entry { subs: SmallVec::new(), last_seen: now });
            if !entry.subs.contains(&sub.id) {
                entry.subs.push(sub.id);
            }
        }
    }

    /// Drops spans idle for longer than the TTL.
    pub fn expire(&mut self, now: u64) {
        let ttl = self.ttl_ms;
        self.map.retain(|_, e| now.saturating_sub(e.last_seen) <= ttl);
    }

    fn evict(&mut self, now: u64) {
        self.expire(now);
        if self.map.len() < self.cap {
            return;
        }
        let mut ages: Vec<u64> = self.map.values().map(|e| e.last_seen).collect();
        let k = ages.len() / 10;
        let (_, cut, _) = ages.select_nth_unstable(k);
        let cut = *cut;
        self.map.retain(|_, e| e.last_seen > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder, RawValue};
    use crate::query::parse::{parse_pairs, Limits};
    use crate::subscriber::Subscriber;
    use std::sync::Arc;

    #[test]
    fn follows_until_span_end_and_stays_bounded() {
        let (c, k) = Catalogue::with_keys(1024);
        let q = parse_pairs("remote-ip=10.0.0.5", &k, &Limits::default()).unwrap();
        let sub = Arc::new(Subscriber::new(7, q.expr, true, 64, None));
        let idx = CompiledIndex::build(vec![sub], 1);
        let mut b = EventBuilder::new(&c, &k);
        let mut t = SpanTable::new(16, 1000);
        let mut s = Scratch::default();
        let mut run = |json: &str, now: u64, t: &mut SpanTable| {
            let ev = b.build(&RawValue::parse_serde(json.as_bytes()).unwrap(), 0).unwrap();
            idx.begin(&mut s);
            idx.match_event(&ev, &mut s);
            t.follow(ev.span_id.unwrap(), ev.parent_span, ev.span_end, now, &idx, &mut s);
            s.out.len()
        };
        assert_eq!(run(r#"{"type":"smtp.ehlo","data":{"spanId":1}}"#, 0, &mut t), 0);
        assert_eq!(
            run(r#"{"type":"smtp.connection-start","data":{"spanId":1,"remoteIp":"10.0.0.5"}}"#, 1, &mut t),
            1
        );
        assert_eq!(run(r#"{"type":"smtp.mail-from","data":{"spanId":1}}"#, 2, &mut t), 1);
        assert_eq!(run(r#"{"type":"smtp.mail-from","data":{"spanId":2}}"#, 2, &mut t), 0);
        assert_eq!(run(r#"{"type":"smtp.connection-end","data":{"spanId":1}}"#, 3, &mut t), 1);
        assert!(t.is_empty());
        assert_eq!(run(r#"{"type":"smtp.rcpt-to","data":{"spanId":1}}"#, 4, &mut t), 0);
        for span in 100..200 {
            run(
                &format!(r#"{{"type":"smtp.ehlo","data":{{"spanId":{span},"remoteIp":"10.0.0.5"}}}}"#),
                span,
                &mut t,
            );
        }
        assert!(t.len() <= 16);
        t.expire(10_000);
        assert!(t.is_empty());
    }

    /// Following a session follows the messages it opened (their first event names the session
    /// as `parentSpanId`) and their later events, after the session itself has ended.
    #[test]
    fn a_parent_span_hands_its_followers_to_the_child() {
        let (c, k) = Catalogue::with_keys(1024);
        let q = parse_pairs("remote-ip=10.0.0.5", &k, &Limits::default()).unwrap();
        let sub = Arc::new(Subscriber::new(7, q.expr, true, 64, None));
        let idx = CompiledIndex::build(vec![sub], 1);
        let mut b = EventBuilder::new(&c, &k);
        let mut t = SpanTable::new(16, 1000);
        let mut s = Scratch::default();
        let mut run = |json: &str, t: &mut SpanTable| {
            let ev = b.build(&RawValue::parse_serde(json.as_bytes()).unwrap(), 0).unwrap();
            idx.begin(&mut s);
            idx.match_event(&ev, &mut s);
            t.follow(ev.span_id.unwrap(), ev.parent_span, ev.span_end, 1, &idx, &mut s);
            s.out.len()
        };
        assert_eq!(
            run(r#"{"type":"smtp.connection-start","data":{"spanId":1,"remoteIp":"10.0.0.5"}}"#, &mut t),
            1
        );
        // A message of another session is not followed; one of this session is.
        assert_eq!(run(r#"{"type":"postfix.client","data":{"spanId":20,"parentSpanId":2}}"#, &mut t), 0);
        assert_eq!(run(r#"{"type":"postfix.client","data":{"spanId":10,"parentSpanId":1}}"#, &mut t), 1);
        assert_eq!(run(r#"{"type":"smtp.connection-end","data":{"spanId":1}}"#, &mut t), 1);
        assert_eq!(run(r#"{"type":"delivery.delivered","data":{"spanId":10,"to":"a@b.c"}}"#, &mut t), 1);
        assert_eq!(run(r#"{"type":"delivery.delivered","data":{"spanId":20,"to":"a@b.c"}}"#, &mut t), 0);
    }
}
