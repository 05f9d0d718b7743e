//! The compiled subscription index: which subscribers an event matches, without scanning them.
//!
//! Built from all subscribers of one matcher shard and swapped in whole (`arc-swap`), it holds:
//! - per key, a hash map from canonical value to the `(subscriber, clause)` pairs that accept it
//!   (posting lists);
//! - one Aho-Corasick automaton over every subscriber's `filter=` text, with each pattern's
//!   `(subscriber, clause)` pairs;
//! - the list of subscribers without any constraint.
//!
//! Matching an event looks up each of its key values once and runs the automaton once over its
//! haystack, setting one bit per satisfied clause in a scratch mask; a subscriber matches when
//! all its clause bits are set. The cost is proportional to the event's keys and the postings
//! they hit, not to the number of subscribers. Matching allocates nothing (the scratch is
//! reused) and does no I/O.

use crate::event::{Event, KeyId};
use crate::query::MAX_CLAUSES;
use crate::subscriber::Subscriber;
use ahash::AHashMap;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use smallvec::SmallVec;
use std::sync::Arc;

/// `(dense subscriber index, clause bit)`.
type Posting = (u32, u8);

/// An immutable index over one shard's subscribers.
pub struct CompiledIndex {
    subs: Vec<Arc<Subscriber>>,
    required: Vec<u32>,
    always: Vec<u32>,
    postings: Vec<AHashMap<Box<str>, SmallVec<[Posting; 2]>>>,
    text: Option<(AhoCorasick, Vec<SmallVec<[Posting; 2]>>)>,
    by_id: AHashMap<u64, u32>,
    generation: u64,
}

/// Reusable per-thread scratch for [`CompiledIndex::match_event`].
#[derive(Default)]
pub struct Scratch {
    masks: Vec<u32>,
    touched: Vec<u32>,
    /// Dense indices of the subscribers matched by the last call.
    pub out: Vec<u32>,
    stamp: Vec<u32>,
    epoch: u32,
}

impl Scratch {
    fn fit(&mut self, n: usize) {
        if self.masks.len() < n {
            self.masks.resize(n, 0);
            self.stamp.resize(n, 0);
        }
    }

    /// Adds `s` to `out` unless it is already there for this event (O(1) de-duplication).
    #[inline]
    pub fn add_unique(&mut self, s: u32) {
        let st = &mut self.stamp[s as usize];
        if *st != self.epoch {
            *st = self.epoch;
            self.out.push(s);
        }
    }
}

impl CompiledIndex {
    /// An index with no subscribers.
    pub fn empty() -> CompiledIndex {
        Self::build(Vec::new(), 0)
    }

    /// Compiles the filters of `subs`; `generation` identifies this build.
    pub fn build(subs: Vec<Arc<Subscriber>>, generation: u64) -> CompiledIndex {
        let mut required = Vec::with_capacity(subs.len());
        let mut always = Vec::new();
        let mut postings: Vec<AHashMap<Box<str>, SmallVec<[Posting; 2]>>> = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut pattern_ids: AHashMap<String, usize> = AHashMap::new();
        let mut pattern_posts: Vec<SmallVec<[Posting; 2]>> = Vec::new();
        let mut by_id = AHashMap::with_capacity(subs.len());
        for (i, sub) in subs.iter().enumerate() {
            let i = i as u32;
            by_id.insert(sub.id, i);
            let f = &sub.filter;
            if f.is_empty() {
                always.push(i);
                required.push(0);
                continue;
            }
            let mut bit = 0u8;
            for clause in f.keys.iter().take(MAX_CLAUSES) {
                let k = clause.key as usize;
                if postings.len() <= k {
                    postings.resize_with(k + 1, AHashMap::new);
                }
                for v in &clause.values {
                    postings[k].entry(Box::from(v.as_str())).or_default().push((i, bit));
                }
                bit += 1;
            }
            if !f.text.is_empty() {
                for t in &f.text {
                    let pid = *pattern_ids.entry(t.clone()).or_insert_with(|| {
                        patterns.push(t.clone());
                        pattern_posts.push(SmallVec::new());
                        patterns.len() - 1
                    });
                    pattern_posts[pid].push((i, bit));
                }
                bit += 1;
            }
            required.push(if bit >= 32 { u32::MAX } else { (1u32 << bit) - 1 });
        }
        let text = if patterns.is_empty() {
            None
        } else {
            // Standard semantics is required for overlapping search, which reports every
            // pattern that occurs, not only the leftmost.
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(&patterns)
                .expect("patterns are bounded in size and count by the query limits");
            Some((ac, pattern_posts))
        };
        CompiledIndex { subs, required, always, postings, text, by_id, generation }
    }

    /// The build generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of subscribers in the index.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// True when the index has no subscribers.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// The subscriber at a dense index.
    #[inline]
    pub fn sub(&self, dense: u32) -> &Arc<Subscriber> {
        &self.subs[dense as usize]
    }

    /// The dense index of a subscriber id, if it is in this index.
    #[inline]
    pub fn dense_of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// Starts a new event in `scratch`: clears `out`, advances the de-duplication epoch.
    pub fn begin(&self, scratch: &mut Scratch) {
        scratch.fit(self.subs.len());
        scratch.out.clear();
        scratch.epoch = scratch.epoch.wrapping_add(1);
        if scratch.epoch == 0 {
            scratch.stamp.iter_mut().for_each(|s| *s = 0);
            scratch.epoch = 1;
        }
    }

    /// Appends to `scratch.out` every subscriber whose filter accepts `ev`.
    /// Call [`CompiledIndex::begin`] first.
    pub fn match_event(&self, ev: &Event, scratch: &mut Scratch) {
        if self.subs.is_empty() {
            return;
        }
        for (key, value) in ev.fields() {
            let Some(map) = self.postings.get(key as usize) else { continue };
            if map.is_empty() {
                continue;
            }
            if let Some(list) = map.get(value) {
                for &(s, bit) in list {
                    mark(scratch, s, bit);
                }
            }
        }
        if let Some((ac, posts)) = &self.text {
            for m in ac.find_overlapping_iter(ev.search_text()) {
                for &(s, bit) in &posts[m.pattern().as_usize()] {
                    mark(scratch, s, bit);
                }
            }
        }
        for i in 0..scratch.touched.len() {
            let s = scratch.touched[i];
            if scratch.masks[s as usize] == self.required[s as usize] {
                scratch.add_unique(s);
            }
            scratch.masks[s as usize] = 0;
        }
        scratch.touched.clear();
        for i in 0..self.always.len() {
            scratch.add_unique(self.always[i]);
        }
    }

    /// Key ids that some subscriber in this index constrains (for diagnostics and tests).
    pub fn indexed_keys(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.postings.iter().enumerate().filter(|(_, m)| !m.is_empty()).map(|(k, _)| k as KeyId)
    }
}

#[inline]
fn mark(scratch: &mut Scratch, s: u32, bit: u8) {
    let m = &mut scratch.masks[s as usize];
    if *m == 0 {
        scratch.touched.push(s);
    }
    *m |= 1 << bit;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder, KeyRegistry, RawValue};
    use crate::query::{parse_live_query, QueryLimits};
    use proptest::prelude::*;

    fn setup() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    fn sub(k: &KeyRegistry, id: u64, q: &str) -> Arc<Subscriber> {
        let q = parse_live_query(q, k, &QueryLimits::default()).unwrap();
        Arc::new(Subscriber::new(id, q.filter, q.follow, 16, None))
    }

    fn matched(idx: &CompiledIndex, ev: &Event) -> Vec<u64> {
        let mut s = Scratch::default();
        idx.begin(&mut s);
        idx.match_event(ev, &mut s);
        let mut ids: Vec<u64> = s.out.iter().map(|&d| idx.sub(d).id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn index_matches_like_reference() {
        let (c, k) = setup();
        let subs = vec![
            sub(&k, 1, ""),
            sub(&k, 2, "remote-ip=10.0.0.5"),
            sub(&k, 3, "remote-ip=10.0.0.6&remote-ip=10.0.0.5&domain=example.org"),
            sub(&k, 4, "filter=connection"),
            sub(&k, 5, "filter=nope&filter=SMTP&remote-ip=10.0.0.5"),
            sub(&k, 6, "domain=other.org"),
        ];
        let idx = CompiledIndex::build(subs, 1);
        let mut b = EventBuilder::new(&c, &k);
        let raw = RawValue::parse_serde(
            br#"{"type":"smtp.connection-start","data":{"remoteIp":"10.0.0.5","domain":"Example.org"}}"#,
        )
        .unwrap();
        let ev = b.build(&raw, 0).unwrap();
        assert_eq!(matched(&idx, &ev), vec![1, 2, 3, 4, 5]);
    }

    const IPS: &[&str] = &["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1"];
    const DOMAINS: &[&str] = &["example.org", "Example.NET", "mail.test"];
    const WORDS: &[&str] = &["smtp", "delivery", "example", "10.0.0", "auth", "fail", "zzz"];
    const TYPES: &[&str] = &["smtp.connection-start", "delivery.delivered", "auth.failed", "smtp.rcpt-to"];

    fn arb_query() -> impl Strategy<Value = String> {
        let term = prop_oneof![
            prop::sample::select(IPS).prop_map(|v| format!("remote-ip={v}")),
            prop::sample::select(DOMAINS).prop_map(|v| format!("domain={v}")),
            prop::sample::select(WORDS).prop_map(|v| format!("filter={v}")),
            (1u32..4).prop_map(|v| format!("queue-id={v}")),
        ];
        prop::collection::vec(term, 0..4).prop_map(|t| t.join("&"))
    }

    fn arb_event() -> impl Strategy<Value = String> {
        (
            prop::sample::select(TYPES),
            prop::option::of(prop::sample::select(IPS)),
            prop::option::of(prop::sample::select(DOMAINS)),
            prop::option::of(1u32..4),
        )
            .prop_map(|(t, ip, d, q)| {
                let mut data = vec![];
                if let Some(ip) = ip {
                    data.push(format!("\"remoteIp\":\"{ip}\""));
                }
                if let Some(d) = d {
                    data.push(format!("\"domain\":\"{d}\""));
                }
                if let Some(q) = q {
                    data.push(format!("\"queueId\":{q}"));
                }
                format!("{{\"type\":\"{t}\",\"data\":{{{}}}}}", data.join(","))
            })
    }

    proptest! {
        #[test]
        fn indexed_agrees_with_naive(queries in prop::collection::vec(arb_query(), 1..40),
                                     events in prop::collection::vec(arb_event(), 1..20)) {
            let (c, k) = setup();
            let subs: Vec<_> = queries.iter().enumerate().map(|(i, q)| sub(&k, i as u64, q)).collect();
            let idx = CompiledIndex::build(subs.clone(), 1);
            let mut b = EventBuilder::new(&c, &k);
            for e in &events {
                let raw = RawValue::parse_serde(e.as_bytes()).unwrap();
                let ev = b.build(&raw, 0).unwrap();
                let want: Vec<u64> = subs.iter().filter(|s| s.filter.matches(&ev)).map(|s| s.id).collect();
                prop_assert_eq!(matched(&idx, &ev), want, "event {}", e);
            }
        }
    }
}
