//! The compiled subscription index: which subscribers an event matches, without scanning them.
//!
//! Built from the ready [`Plan`]s of one matcher shard's subscribers and swapped in whole
//! (`arc-swap`), it interns every distinct indexable term once (shared by all subscribers that
//! use it) and reaches terms through structures that an event can probe directly:
//! - per key, a hash map from canonical value to term (**exact values**), and the key's
//!   **presence** term;
//! - one Aho-Corasick automaton over the longest literal of every key **glob**, run over the
//!   values of keys that have globs; each hit is verified against its glob;
//! - per IP key, one hash table per prefix length in use (**CIDR**, IPv4 and IPv6), probed
//!   with the address masked to each length;
//! - per key, the **numeric comparison** bounds sorted by value, so the satisfied ones are a
//!   prefix or suffix found by binary search;
//! - per **level**, the level terms it satisfies;
//! - the **event type** terms, evaluated once per distinct type and cached per matcher thread;
//! - one Aho-Corasick automaton over every **text** (`filter=`) needle, run once over the
//!   event's search text.
//!
//! Each term carries postings `(subscriber, guard bit)`. Matching an event marks the bits of
//! the terms it satisfies in a scratch mask (a **counting pass** for conjunctions); a subscriber
//! is a candidate when all its guard bits are set, and matches when its residual (if any)
//! also holds. Only *fallback* subscribers, whose queries have no indexable guard at all, are
//! evaluated on every event; [`IndexStats`] counts them. The cost of an event is therefore
//! proportional to its keys and the postings it hits, not to the number of subscribers.
//! Matching allocates nothing per event (the scratch is reused; the type cache fills once per
//! distinct type) and does no I/O.

use crate::event::{Event, KeyId, Level, TypeName};
use crate::query::ast::{mask128, mask32, CmpOp, Decimal, Expr, Field, GlobPart, Number, Pred, Term};
use crate::query::plan::Plan;
use crate::subscriber::Subscriber;
use ahash::AHashMap;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

/// `(dense subscriber index, guard bit)`.
type Posting = (u32, u8);
/// Index of a distinct term in [`CompiledIndex::terms`].
type TermId = u32;
/// The `(key, glob term)` pairs whose chosen literal is one automaton pattern.
type GlobHits = SmallVec<[(KeyId, TermId); 1]>;

/// Distinct event types remembered per thread before the cache is cleared (producers may send
/// arbitrary types; the catalogue has about 590).
const TYPE_CACHE_CAP: usize = 8192;

/// Makes every build distinguishable, so a thread's type cache never outlives its index.
static BUILD_IDS: AtomicU64 = AtomicU64::new(1);

/// What an index holds, for the stats endpoint and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IndexStats {
    /// Subscribers in the index.
    pub subscribers: usize,
    /// Subscribers without a filter (they receive everything, no evaluation).
    pub always: usize,
    /// Subscribers whose queries have no indexable guard: evaluated on every event.
    pub fallback: usize,
    /// Subscribers with a residual checked after their guards matched.
    pub verified: usize,
    /// Distinct indexed terms.
    pub indexed_terms: usize,
    /// Terms that could not be indexed (inside residuals and fallbacks).
    pub residual_terms: usize,
}

impl std::ops::AddAssign for IndexStats {
    fn add_assign(&mut self, o: IndexStats) {
        self.subscribers += o.subscribers;
        self.always += o.always;
        self.fallback += o.fallback;
        self.verified += o.verified;
        self.indexed_terms += o.indexed_terms;
        self.residual_terms += o.residual_terms;
    }
}

/// Networks of one prefix length: network address -> the CIDR terms naming it.
type PrefixTable<A> = (u8, AHashMap<A, SmallVec<[TermId; 1]>>);

/// IPv4 and IPv6 networks of one key, grouped by prefix length.
#[derive(Default)]
struct CidrTable {
    v4: Vec<PrefixTable<u32>>,
    v6: Vec<PrefixTable<u128>>,
}

impl CidrTable {
    fn insert(&mut self, c: &crate::query::ast::Cidr, t: TermId) {
        use crate::query::ast::Cidr;
        match *c {
            Cidr::V4 { net, len } => table_for(&mut self.v4, len).entry(net).or_default().push(t),
            Cidr::V6 { net, len } => table_for(&mut self.v6, len).entry(net).or_default().push(t),
        }
    }

    /// Calls `f` for every network containing the address written in `value`, with the same
    /// meaning as [`crate::query::ast::Cidr::contains`].
    #[inline]
    fn probe(&self, value: &str, mut f: impl FnMut(TermId)) {
        let Ok(ip) = value.parse::<IpAddr>() else { return };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let v6 = match ip {
            IpAddr::V4(a) => {
                let a32 = u32::from(a);
                for (len, map) in &self.v4 {
                    if let Some(ts) = map.get(&(a32 & mask32(*len))) {
                        ts.iter().for_each(|&t| f(t));
                    }
                }
                u128::from(a.to_ipv6_mapped())
            }
            IpAddr::V6(a) => u128::from(a),
        };
        for (len, map) in &self.v6 {
            if let Some(ts) = map.get(&(v6 & mask128(*len))) {
                ts.iter().for_each(|&t| f(t));
            }
        }
    }
}

fn table_for<A>(tables: &mut Vec<PrefixTable<A>>, len: u8) -> &mut AHashMap<A, SmallVec<[TermId; 1]>> {
    let i = match tables.iter().position(|(l, _)| *l == len) {
        Some(i) => i,
        None => {
            tables.push((len, AHashMap::new()));
            tables.len() - 1
        }
    };
    &mut tables[i].1
}

/// Numeric comparison bounds of one key, each list sorted by bound.
#[derive(Default)]
struct CmpTable {
    gt: Vec<(Number, TermId)>,
    ge: Vec<(Number, TermId)>,
    lt: Vec<(Number, TermId)>,
    le: Vec<(Number, TermId)>,
}

impl CmpTable {
    fn insert(&mut self, op: CmpOp, n: &Number, t: TermId) {
        let list = match op {
            CmpOp::Gt => &mut self.gt,
            CmpOp::Ge => &mut self.ge,
            CmpOp::Lt => &mut self.lt,
            CmpOp::Le => &mut self.le,
        };
        list.push((n.clone(), t));
    }

    fn sort(&mut self) {
        for l in [&mut self.gt, &mut self.ge, &mut self.lt, &mut self.le] {
            l.sort_by(|a, b| a.0.cmp_number(&b.0));
        }
    }

    /// Calls `f` for every bound the numeric `value` satisfies: binary search per operator,
    /// then only the satisfied entries are visited.
    #[inline]
    fn probe(&self, value: &str, mut f: impl FnMut(TermId)) {
        // A value that is not a decimal satisfies nothing; otherwise it is split once and
        // compared with each probed bound (`value.cmp(bound)`).
        let Some(v) = Decimal::parse(value) else { return };
        let below = |l: &[(Number, TermId)], strict: bool| {
            l.partition_point(|(b, _)| match b.compare_decimal(&v) {
                Ordering::Greater => true,
                Ordering::Equal => !strict,
                Ordering::Less => false,
            })
        };
        // value > b for the first `p` (ascending) bounds.
        let p = below(&self.gt, true);
        self.gt[..p].iter().for_each(|&(_, t)| f(t));
        let p = below(&self.ge, false);
        self.ge[..p].iter().for_each(|&(_, t)| f(t));
        // value < b for the bounds after those with b <= value.
        let p = below(&self.lt, false);
        self.lt[p..].iter().for_each(|&(_, t)| f(t));
        let p = below(&self.le, true);
        self.le[p..].iter().for_each(|&(_, t)| f(t));
    }
}

/// Everything indexed about one key.
#[derive(Default)]
struct KeyIndex {
    exact: AHashMap<Box<str>, TermId>,
    present: Option<TermId>,
    /// Whether the shared glob automaton has patterns for this key.
    globs: bool,
    /// Globs of this key without any literal (`?*`), checked against every value.
    wild_globs: Vec<TermId>,
    cidr: Option<Box<CidrTable>>,
    cmp: Option<Box<CmpTable>>,
}

/// An immutable index over one shard's subscribers.
pub struct CompiledIndex {
    subs: Vec<Arc<Subscriber>>,
    /// Per subscriber: the guard bits that must all be set.
    required: Vec<u32>,
    /// Per subscriber: whether its residual must be checked after the guards.
    verify: Vec<bool>,
    always: Vec<u32>,
    fallback: Vec<u32>,
    terms: Vec<Term>,
    posts: Vec<SmallVec<[Posting; 2]>>,
    keys: Vec<Option<Box<KeyIndex>>>,
    /// Glob literal automaton; each pattern lists its `(key, term)` globs.
    globs: Option<(AhoCorasick, Vec<GlobHits>)>,
    /// Text automaton; pattern `i` is term `text.1[i]`.
    text: Option<(AhoCorasick, Vec<TermId>)>,
    levels: [Vec<TermId>; 5],
    events: Vec<TermId>,
    by_id: AHashMap<u64, u32>,
    generation: u64,
    build_id: u64,
    stats: IndexStats,
}

/// Mask words of the counting pass and the subscribers they touched.
#[derive(Default)]
struct Marks {
    masks: Vec<u32>,
    touched: Vec<u32>,
}

impl Marks {
    #[inline]
    fn term(&mut self, posts: &[SmallVec<[Posting; 2]>], t: TermId) {
        for &(s, bit) in &posts[t as usize] {
            let m = &mut self.masks[s as usize];
            if *m == 0 {
                self.touched.push(s);
            }
            *m |= 1 << bit;
        }
    }
}

/// Reusable per-thread scratch for [`CompiledIndex::match_event`].
#[derive(Default)]
pub struct Scratch {
    marks: Marks,
    /// Dense indices of the subscribers matched by the last call.
    pub out: Vec<u32>,
    stamp: Vec<u32>,
    epoch: u32,
    /// Per term: the value epoch in which a glob was last verified (de-duplicates hits).
    glob_stamp: Vec<u32>,
    glob_epoch: u32,
    /// Event type -> event terms it satisfies, valid for the index `types_build`.
    types: AHashMap<TypeName, Box<[TermId]>>,
    types_build: u64,
}

impl Scratch {
    fn fit(&mut self, subs: usize, terms: usize) {
        if self.marks.masks.len() < subs {
            self.marks.masks.resize(subs, 0);
            self.stamp.resize(subs, 0);
        }
        if self.glob_stamp.len() < terms {
            self.glob_stamp.resize(terms, 0);
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

    fn next_glob_epoch(&mut self) -> u32 {
        self.glob_epoch = self.glob_epoch.wrapping_add(1);
        if self.glob_epoch == 0 {
            self.glob_stamp.iter_mut().for_each(|s| *s = 0);
            self.glob_epoch = 1;
        }
        self.glob_epoch
    }
}

/// Interns distinct terms and collects their postings while an index is built.
#[derive(Default)]
struct TermTable {
    ids: AHashMap<Term, TermId>,
    terms: Vec<Term>,
    posts: Vec<SmallVec<[Posting; 2]>>,
}

impl TermTable {
    fn add(&mut self, t: &Term, posting: Posting) {
        let id = match self.ids.get(t) {
            Some(&id) => id,
            None => {
                let id = self.terms.len() as TermId;
                self.ids.insert(t.clone(), id);
                self.terms.push(t.clone());
                self.posts.push(SmallVec::new());
                id
            }
        };
        let p = &mut self.posts[id as usize];
        // A guard may list a term twice only through duplicates; keep postings unique.
        if p.last() != Some(&posting) {
            p.push(posting);
        }
    }
}

/// The longest literal of a glob: the most selective piece to search for.
fn longest_literal(parts: &[GlobPart]) -> Option<&str> {
    parts
        .iter()
        .filter_map(|p| match p {
            GlobPart::Lit(s) => Some(s.as_str()),
            _ => None,
        })
        .max_by_key(|s| s.len())
}

fn level_index(l: Level) -> usize {
    match l {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
    }
}

const LEVELS: [Level; 5] = [Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error];

impl CompiledIndex {
    /// An index with no subscribers.
    pub fn empty() -> CompiledIndex {
        Self::build(Vec::new(), 0)
    }

    /// Compiles the plans of `subs`; `generation` identifies this build.
    pub fn build(subs: Vec<Arc<Subscriber>>, generation: u64) -> CompiledIndex {
        let mut stats = IndexStats { subscribers: subs.len(), ..IndexStats::default() };
        let mut required = Vec::with_capacity(subs.len());
        let mut verify = Vec::with_capacity(subs.len());
        let mut always = Vec::new();
        let mut fallback = Vec::new();
        let mut table = TermTable::default();
        let mut by_id = AHashMap::with_capacity(subs.len());
        for (i, sub) in subs.iter().enumerate() {
            let i = i as u32;
            by_id.insert(sub.id, i);
            let plan: &Plan = &sub.plan;
            stats.residual_terms += plan.residual_terms;
            verify.push(!plan.residual.is_empty());
            if plan.is_always() {
                stats.always += 1;
                always.push(i);
            } else if plan.is_fallback() {
                stats.fallback += 1;
                fallback.push(i);
            } else if !plan.residual.is_empty() {
                stats.verified += 1;
            }
            for (bit, guard) in plan.guards.iter().enumerate() {
                for t in guard {
                    table.add(t, (i, bit as u8));
                }
            }
            let bits = plan.guards.len();
            required.push(if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 });
        }
        stats.indexed_terms = table.terms.len();

        let mut keys: Vec<Option<Box<KeyIndex>>> = Vec::new();
        fn slot(keys: &mut Vec<Option<Box<KeyIndex>>>, k: KeyId) -> &mut KeyIndex {
            let k = k as usize;
            if keys.len() <= k {
                keys.resize_with(k + 1, || None);
            }
            keys[k].get_or_insert_with(Box::default)
        }
        let mut glob_pats: Vec<String> = Vec::new();
        let mut glob_ids: AHashMap<String, usize> = AHashMap::new();
        let mut glob_posts: Vec<GlobHits> = Vec::new();
        let mut text_pats: Vec<String> = Vec::new();
        let mut text_terms: Vec<TermId> = Vec::new();
        let mut levels: [Vec<TermId>; 5] = Default::default();
        let mut events = Vec::new();
        for (tid, t) in table.terms.iter().enumerate() {
            let tid = tid as TermId;
            match (&t.field, &t.pred) {
                (Field::Key { id, .. }, Pred::Eq(v)) => {
                    slot(&mut keys, *id).exact.insert(Box::from(v.as_str()), tid);
                }
                (Field::Key { id, .. }, Pred::Present) => slot(&mut keys, *id).present = Some(tid),
                (Field::Key { id, .. }, Pred::Glob(g)) => match longest_literal(g.parts()) {
                    Some(lit) => {
                        slot(&mut keys, *id).globs = true;
                        let pid = *glob_ids.entry(lit.to_string()).or_insert_with(|| {
                            glob_pats.push(lit.to_string());
                            glob_posts.push(SmallVec::new());
                            glob_pats.len() - 1
                        });
                        glob_posts[pid].push((*id, tid));
                    }
                    None => slot(&mut keys, *id).wild_globs.push(tid),
                },
                (Field::Key { id, .. }, Pred::Cidr(c)) => {
                    slot(&mut keys, *id).cidr.get_or_insert_with(Box::default).insert(c, tid);
                }
                (Field::Key { id, .. }, Pred::Cmp(op, n)) => {
                    slot(&mut keys, *id).cmp.get_or_insert_with(Box::default).insert(*op, n, tid);
                }
                (Field::Level, Pred::Level(op, bound)) => {
                    for l in LEVELS {
                        if op.holds(l.cmp(bound)) {
                            levels[level_index(l)].push(tid);
                        }
                    }
                }
                (Field::Event, _) => events.push(tid),
                (Field::Text, Pred::Contains(needle)) => {
                    text_pats.push(needle.clone());
                    text_terms.push(tid);
                }
                // Plans only guard on indexable terms (see `plan::indexable`).
                _ => {}
            }
        }
        for k in keys.iter_mut().flatten() {
            if let Some(c) = &mut k.cmp {
                c.sort();
            }
        }
        CompiledIndex {
            subs,
            required,
            verify,
            always,
            fallback,
            posts: table.posts,
            terms: table.terms,
            keys,
            globs: automaton(&glob_pats).map(|ac| (ac, glob_posts)),
            text: automaton(&text_pats).map(|ac| (ac, text_terms)),
            levels,
            events,
            by_id,
            generation,
            build_id: BUILD_IDS.fetch_add(1, AtomicOrdering::Relaxed),
            stats,
        }
    }

    /// The build generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the index holds.
    pub fn stats(&self) -> IndexStats {
        self.stats
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
        scratch.fit(self.subs.len(), self.terms.len());
        scratch.out.clear();
        scratch.epoch = scratch.epoch.wrapping_add(1);
        if scratch.epoch == 0 {
            scratch.stamp.iter_mut().for_each(|s| *s = 0);
            scratch.epoch = 1;
        }
    }

    /// Appends to `scratch.out` every subscriber whose query accepts `ev`.
    /// Call [`CompiledIndex::begin`] first.
    pub fn match_event(&self, ev: &Event, scratch: &mut Scratch) {
        if self.subs.is_empty() {
            return;
        }
        let posts = &self.posts[..];
        if !self.terms.is_empty() {
            for (i, key) in ev.field_keys().enumerate() {
                if let Some(Some(ki)) = self.keys.get(key as usize) {
                    self.match_value(ki, key, ev.field_value(i), scratch);
                }
            }
            for &t in &self.levels[level_index(ev.level)] {
                scratch.marks.term(posts, t);
            }
            if !self.events.is_empty() {
                self.match_type(ev, scratch);
            }
            if let Some((ac, terms)) = &self.text {
                for m in ac.find_overlapping_iter(ev.search_text()) {
                    scratch.marks.term(posts, terms[m.pattern().as_usize()]);
                }
            }
        }
        for i in 0..scratch.marks.touched.len() {
            let s = scratch.marks.touched[i];
            let si = s as usize;
            if scratch.marks.masks[si] == self.required[si]
                && (!self.verify[si] || self.residual_holds(si, ev))
            {
                scratch.add_unique(s);
            }
            scratch.marks.masks[si] = 0;
        }
        scratch.marks.touched.clear();
        for i in 0..self.always.len() {
            scratch.add_unique(self.always[i]);
        }
        for i in 0..self.fallback.len() {
            let s = self.fallback[i];
            if self.residual_holds(s as usize, ev) {
                scratch.add_unique(s);
            }
        }
    }

    fn residual_holds(&self, s: usize, ev: &Event) -> bool {
        self.subs[s].plan.residual.iter().all(|e: &Expr| e.eval(ev))
    }

    /// Marks the terms one `(key, value)` pair of the event satisfies.
    #[inline]
    fn match_value(&self, ki: &KeyIndex, key: KeyId, value: &str, scratch: &mut Scratch) {
        let posts = &self.posts[..];
        if let Some(&t) = ki.exact.get(value) {
            scratch.marks.term(posts, t);
        }
        if let Some(t) = ki.present {
            scratch.marks.term(posts, t);
        }
        if ki.globs || !ki.wild_globs.is_empty() {
            let epoch = scratch.next_glob_epoch();
            let check = |t: TermId, scratch: &mut Scratch| {
                let st = &mut scratch.glob_stamp[t as usize];
                if *st == epoch {
                    return;
                }
                *st = epoch;
                if let Pred::Glob(g) = &self.terms[t as usize].pred {
                    if g.matches(value) {
                        scratch.marks.term(posts, t);
                    }
                }
            };
            if let (true, Some((ac, pats))) = (ki.globs, &self.globs) {
                for m in ac.find_overlapping_iter(value) {
                    for &(k, t) in &pats[m.pattern().as_usize()] {
                        if k == key {
                            check(t, scratch);
                        }
                    }
                }
            }
            for &t in &ki.wild_globs {
                check(t, scratch);
            }
        }
        if let Some(c) = &ki.cidr {
            c.probe(value, |t| scratch.marks.term(posts, t));
        }
        if let Some(c) = &ki.cmp {
            c.probe(value, |t| scratch.marks.term(posts, t));
        }
    }

    /// Marks the event-type terms the event's type satisfies, evaluating them once per
    /// distinct type and index on this thread.
    fn match_type(&self, ev: &Event, scratch: &mut Scratch) {
        if scratch.types_build != self.build_id {
            scratch.types.clear();
            scratch.types_build = self.build_id;
        }
        let Scratch { types, marks, .. } = scratch;
        if let Some(hits) = types.get(&*ev.kind) {
            for &t in hits.iter() {
                marks.term(&self.posts, t);
            }
            return;
        }
        // First event of this type for this index: evaluate the event terms once.
        if types.len() >= TYPE_CACHE_CAP {
            types.clear();
        }
        let hits: Box<[TermId]> =
            self.events.iter().copied().filter(|&t| self.terms[t as usize].eval(ev)).collect();
        for &t in hits.iter() {
            marks.term(&self.posts, t);
        }
        types.insert(ev.kind.clone(), hits);
    }

    /// Key ids that some subscriber in this index constrains (for diagnostics and tests).
    pub fn indexed_keys(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().enumerate().filter(|(_, k)| k.is_some()).map(|(k, _)| k as KeyId)
    }
}

/// One overlapping-capable automaton over `patterns`, or none when there are none.
fn automaton(patterns: &[String]) -> Option<AhoCorasick> {
    if patterns.is_empty() {
        return None;
    }
    // Standard semantics is required for overlapping search, which reports every pattern
    // that occurs, not only the leftmost.
    Some(
        AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(patterns)
            .expect("patterns are bounded in size and count by the query limits"),
    )
}

#[cfg(test)]
mod tests;
