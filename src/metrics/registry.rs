//! The live metrics registry: event-type counters, gauges and histograms, by dotted name.
//!
//! **Counting events costs ingest almost nothing.** Every event type gets a dense counter id
//! when it is first seen, so the counters of the types a host actually emits are neighbours in
//! memory. Counters live in per-writer shards: matcher thread `i` owns shard `i` and is its
//! only writer, so an increment is a plain load and store of an `AtomicU64` (no locked
//! instruction, no shared cache line); readers sum the shards. Every matcher thread reads every
//! event, so the threads split the counting by sequence number: thread `i` of `n` counts the
//! events with `seq % n == i` (a compare per event, no division). A thread finds an event's
//! counter id in its own small table keyed by the address of the event's interned type name
//! (`Arc<str>`), holding a clone of each name so an address cannot be reused while cached; only
//! the first event of a type takes the registry's lock. Counter pages (256 counters) are
//! allocated on first use per shard. Producers' pushed increments go to one more, shared shard.
//! `perf/RESULTS.md` (section 6) measures the cost: about 120 instructions per counted event.
//!
//! The same per-type entry says whether the type feeds a histogram
//! ([`super::derive::RULES`]); if so, the measure is read from the event's already canonical
//! key values and recorded into the thread's histogram shard.
//!
//! Names are one namespace: a name is a counter, a gauge or a histogram. The catalogue's gauges
//! and histograms are registered at start with their units; its event types (of both catalogue
//! generations, v0.15 and v0.16) are known from the start (a record pushed under such a name is
//! a counter) and get their counters when first seen. Producer-invented event types get
//! counters up to [`MAX_DYNAMIC_TYPES`] (the catalogue's own cap on interned types); later new
//! types are counted together under `livetap.other-events`. Names pushed by producers or
//! scraped are capped by `max-metrics`.
//!
//! **A renamed type is one counter under two names.** When Stalwart renamed a type in v0.16
//! (`queue.queue-message` → `queue.message-queued`), both names are registered together on one
//! counter, so each name reports the events sent under either: a dashboard or alert written
//! for one generation's names keeps counting whichever generation feeds livetap. Summing every
//! counter therefore counts such an event twice, once per name. The counter is found per type,
//! not per event, so this costs the matcher threads nothing.

use super::derive;
use super::histogram::{bounds_for_unit, bump, External, Histogram, HistogramWriter};
use super::push::{check_value, MetricRecord, PushError};
use super::query::NameFilter;
// The model types were defined here; re-exported so `metrics::registry::Reading` and the
// like keep naming them.
pub use super::model::{Kind, MetricValue, Reading};
use crate::event::{Catalogue, Event, KeyId, KeyRegistry};
use ahash::{AHashMap, AHashSet};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Producer-invented event types counted under their own names (the catalogue interns at most
/// this many unknown types too).
pub const MAX_DYNAMIC_TYPES: usize = 4096;
/// The counter of events whose type found no room in the registry.
pub const OVERFLOW_COUNTER: &str = "livetap.other-events";
/// Counters per lazily allocated page.
const PAGE: usize = 256;
/// Per-thread cache entries at most (the cache holds a clone of each type name).
const MAX_CACHED_TYPES: usize = 2 * (MAX_DYNAMIC_TYPES + 1024);

// The registry holds this state (the server's tick writes it, a reading reads it), so it is
// defined here rather than beside `hub::own`, which would make the registry import the hub.

/// What the own samples remember between readings.
#[derive(Debug, Default)]
pub struct OwnState {
    /// Events per second over the last tick, as `f64` bits.
    rate: AtomicU64,
    last: Mutex<Option<(Instant, u64)>>,
}

impl OwnState {
    /// Records the accepted-events total now; the rate is the increase since the last tick.
    pub fn tick(&self, accepted: u64) {
        let now = Instant::now();
        let mut last = self.last.lock();
        if let Some((then, before)) = *last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                let rate = accepted.saturating_sub(before) as f64 / secs;
                self.rate.store(rate.to_bits(), Ordering::Relaxed);
            }
        }
        *last = Some((now, accepted));
    }

    /// Events ingested per second over the last tick.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Counter(u32),
    Gauge(u32),
    Histogram(u32),
}

impl Slot {
    fn kind(self) -> Kind {
        match self {
            Slot::Counter(_) => Kind::Counter,
            Slot::Gauge(_) => Kind::Gauge,
            Slot::Histogram(_) => Kind::Histogram,
        }
    }
}

/// What a metric is besides its value.
#[derive(Debug, Clone)]
struct Meta {
    name: Arc<str>,
    unit: Option<Arc<str>>,
    help: Option<&'static str>,
}

/// A counter id and the histogram its event type feeds, if any: what a matcher thread caches
/// per event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TypeEntry {
    id: u32,
    derive: Option<(KeyId, u32)>,
}

struct Gauge {
    bits: AtomicU64,
    set: AtomicBool,
}

/// The name table, behind one lock taken only when a name is new or for a reading.
struct Names {
    map: AHashMap<Arc<str>, Slot>,
    counters: Vec<(Meta, Option<(KeyId, u32)>)>,
    gauges: Vec<(Meta, Arc<Gauge>)>,
    hists: Vec<(Meta, Arc<Histogram>)>,
    /// Prometheus-sanitised name → dotted name (the first name registered wins).
    prom: AHashMap<Box<str>, Arc<str>>,
    dynamic_types: usize,
    extra: usize,
}

impl Names {
    fn add(&mut self, meta: Meta, slot: Slot) {
        let mut s = String::with_capacity(meta.name.len() + 6);
        super::model::sanitize(&meta.name, &mut s);
        self.prom.entry(s.into_boxed_str()).or_insert_with(|| meta.name.clone());
        self.map.insert(meta.name.clone(), slot);
    }
}

/// One writer's counters, in pages allocated on first use.
struct CounterShard {
    pages: Box<[OnceLock<Arc<Page>>]>,
    claimed: AtomicBool,
}

/// A page of counters.
type Page = [AtomicU64; PAGE];

impl CounterShard {
    fn new(capacity: usize) -> CounterShard {
        CounterShard {
            pages: (0..capacity.div_ceil(PAGE)).map(|_| OnceLock::new()).collect(),
            claimed: AtomicBool::new(false),
        }
    }

    /// The page holding counter `id`, allocated on first use.
    fn page(&self, id: u32) -> Option<&Arc<Page>> {
        let page = self.pages.get(id as usize / PAGE)?;
        Some(page.get_or_init(|| Arc::new(std::array::from_fn(|_| AtomicU64::new(0)))))
    }

    fn slot(&self, id: u32) -> Option<&AtomicU64> {
        self.page(id).map(|p| &p[id as usize % PAGE])
    }

    fn read(&self, id: u32) -> u64 {
        let id = id as usize;
        self.pages.get(id / PAGE).and_then(OnceLock::get).map_or(0, |p| p[id % PAGE].load(Ordering::Relaxed))
    }
}

/// The registry.
pub struct MetricsRegistry {
    names: RwLock<Names>,
    /// The catalogue's event types (and counter names): counters, not capped as new types.
    catalogue_types: AHashSet<Box<str>>,
    /// `writers` exclusive shards, then the shared one.
    shards: Box<[CounterShard]>,
    writers: usize,
    capacity: usize,
    overflow: u32,
    /// Absolute counter values from scraping, which replace the local count in readings.
    totals: Mutex<AHashMap<u32, u64>>,
    max_extra: usize,
    keys: Vec<(&'static str, KeyId)>,
    streams: AtomicUsize,
    /// Metric records accepted from producers.
    pub pushed: AtomicU64,
    /// Scrapes that succeeded.
    pub scrapes: AtomicU64,
    /// Scrapes that failed (connection, status, timeout, body).
    pub scrape_failures: AtomicU64,
    /// State of livetap's own samples (the ingest rate).
    pub own: OwnState,
}

impl MetricsRegistry {
    /// A registry holding the catalogue's metrics and event types, with `writers` exclusive
    /// counting shards (one per matcher thread) and room for `max_extra` pushed or scraped names.
    pub fn new(catalogue: &Catalogue, keys: &KeyRegistry, writers: usize, max_extra: usize) -> Arc<Self> {
        let writers = writers.max(1);
        let capacity = catalogue.event_keys.len().max(catalogue.known_types())
            + catalogue.metrics.len()
            + MAX_DYNAMIC_TYPES
            + max_extra
            + 1;
        let mut names = Names {
            map: AHashMap::new(),
            counters: Vec::new(),
            gauges: Vec::new(),
            hists: Vec::new(),
            prom: AHashMap::new(),
            dynamic_types: 0,
            extra: 0,
        };
        let rule_keys: Vec<(&'static str, KeyId)> = derive::RULES
            .iter()
            .map(|r| r.key)
            .filter_map(|k| keys.lookup(k).map(|(id, _)| (k, id)))
            .collect();
        for m in &catalogue.metrics {
            let meta =
                Meta { name: Arc::from(m.name.as_str()), unit: m.unit.as_deref().map(Arc::from), help: None };
            match Kind::parse(&m.kind) {
                Some(Kind::Gauge) => {
                    let id = names.gauges.len() as u32;
                    names.gauges.push((meta.clone(), Arc::new(new_gauge())));
                    names.add(meta, Slot::Gauge(id));
                }
                Some(Kind::Histogram) => {
                    let id = names.hists.len() as u32;
                    let h = Histogram::new(writers, bounds_for_unit(m.unit.as_deref()));
                    names.hists.push((meta.clone(), Arc::new(h)));
                    names.add(meta, Slot::Histogram(id));
                }
                // Catalogue counters are event types, registered below with every event type.
                _ => {}
            }
        }
        let overflow = 0u32;
        let meta = Meta {
            name: Arc::from(OVERFLOW_COUNTER),
            unit: None,
            help: Some("Events whose type was not counted by name because the type table was full"),
        };
        names.counters.push((meta.clone(), None));
        names.add(meta, Slot::Counter(overflow));
        // Event types get their counters when first seen, so the counters of the types a host
        // actually emits are neighbours in memory (few cache lines per matcher thread). Their
        // names are known from the start for the kind of a pushed record and for mapping
        // scraped names back.
        let mut catalogue_types = AHashSet::new();
        let metric_counters =
            catalogue.metrics.iter().filter(|m| m.kind == "counter").map(|m| m.name.as_str());
        let types = catalogue.event_keys.iter().chain(&catalogue.event_keys_v016).map(|e| e.name.as_str());
        // livetap's own types (`telemetry.alert-resolved`) are counters like the catalogue's.
        let types = types.chain(crate::event::catalogue::OWN_TYPES.iter().map(|(n, _)| *n));
        for name in types.chain(metric_counters) {
            if catalogue_types.insert(Box::<str>::from(name)) {
                let mut s = String::with_capacity(name.len());
                super::model::sanitize(name, &mut s);
                names.prom.entry(s.into_boxed_str()).or_insert_with(|| Arc::from(name));
            }
        }
        let reg = MetricsRegistry {
            names: RwLock::new(names),
            catalogue_types,
            shards: (0..=writers).map(|_| CounterShard::new(capacity)).collect(),
            writers,
            capacity,
            overflow,
            totals: Mutex::new(AHashMap::new()),
            max_extra,
            keys: rule_keys,
            streams: AtomicUsize::new(0),
            pushed: AtomicU64::new(0),
            scrapes: AtomicU64::new(0),
            scrape_failures: AtomicU64::new(0),
            own: OwnState::default(),
        };
        Arc::new(reg)
    }

    /// Number of exclusive counting shards (matcher threads).
    pub fn writers(&self) -> usize {
        self.writers
    }

    /// Registers `name` as an event-type counter (under the write lock). Event types own their
    /// name: a gauge or histogram pushed earlier under the same name is dropped from readings.
    fn register_type(&self, names: &mut Names, name: &str) -> TypeEntry {
        let dynamic = !self.catalogue_types.contains(name);
        match names.map.get(name) {
            Some(Slot::Counter(id)) => {
                return TypeEntry { id: *id, derive: names.counters[*id as usize].1 };
            }
            Some(_) => {
                names.map.remove(name);
            }
            None => {}
        }
        if names.counters.len() >= self.capacity || (dynamic && names.dynamic_types >= MAX_DYNAMIC_TYPES) {
            return TypeEntry { id: self.overflow, derive: None };
        }
        let derive = self.derive_for(names, name);
        let id = names.counters.len() as u32;
        let meta = Meta { name: Arc::from(name), unit: None, help: None };
        names.counters.push((meta.clone(), derive));
        names.add(meta, Slot::Counter(id));
        if dynamic {
            names.dynamic_types += 1;
        }
        // The other generation's name of a renamed type is the same counter (see the module
        // documentation). Both are registered here, together, so neither can have a counter of
        // its own; a gauge or histogram pushed under it earlier gives way, as above.
        if let Some(other) = crate::event::catalogue::counterpart(name) {
            if !matches!(names.map.get(other), Some(Slot::Counter(_))) {
                names.map.remove(other);
                names.add(Meta { name: Arc::from(other), unit: None, help: None }, Slot::Counter(id));
            }
        }
        TypeEntry { id, derive }
    }

    /// The histogram an event type's measure feeds, with the key that carries it.
    fn derive_for(&self, names: &Names, name: &str) -> Option<(KeyId, u32)> {
        let r = derive::rule_for(name)?;
        let key = self.keys.iter().find(|(k, _)| *k == r.key)?.1;
        match names.map.get(r.histogram)? {
            Slot::Histogram(h) => Some((key, *h)),
            _ => None,
        }
    }

    /// The counter entry of an event type, registering the type when it is new.
    fn type_entry(&self, name: &str) -> TypeEntry {
        {
            let names = self.names.read();
            if let Some(Slot::Counter(id)) = names.map.get(name) {
                return TypeEntry { id: *id, derive: names.counters[*id as usize].1 };
            }
            // A full table answers without the write lock, so a flood of new types cannot make
            // the matcher threads queue on it.
            let full = names.dynamic_types >= MAX_DYNAMIC_TYPES && !self.catalogue_types.contains(name);
            if full || names.counters.len() >= self.capacity {
                return TypeEntry { id: self.overflow, derive: None };
            }
        }
        self.register_type(&mut self.names.write(), name)
    }

    /// A counting handle for matcher thread `writer` of [`MetricsRegistry::writers`]. It counts
    /// the events whose sequence number is `writer` modulo the number of writers. Claiming the
    /// same writer twice still counts correctly, only with atomic adds.
    pub fn event_counter(self: &Arc<Self>, writer: usize) -> EventCounter {
        let shard = writer.min(self.writers - 1);
        let exclusive = !self.shards[shard].claimed.swap(true, Ordering::AcqRel);
        EventCounter {
            reg: self.clone(),
            shard,
            exclusive,
            stride: self.writers as u64,
            next: shard as u64,
            table: vec![Seen::default(); FIRST_SLOTS].into_boxed_slice(),
            used: 0,
            pages: Vec::new(),
            hists: Vec::new(),
            keep: Vec::new(),
        }
    }

    /// Finds or creates the slot for a pushed or scraped name.
    fn slot_for(&self, name: &str, wanted: Option<Kind>, unit: Option<&str>) -> Result<Slot, PushError> {
        // Own metrics are computed by livetap; `livetap_` is what they sanitise to.
        if name.starts_with("livetap.") || name.starts_with("livetap_") {
            return Err(PushError::Reserved(name.to_string()));
        }
        let check = |slot: Slot| match wanted {
            Some(k) if k != slot.kind() => Err(PushError::KindConflict {
                name: name.to_string(),
                kind: slot.kind().as_str(),
                wanted: k.as_str(),
            }),
            _ => Ok(slot),
        };
        if let Some(slot) = self.names.read().map.get(name) {
            return check(*slot);
        }
        let mut names = self.names.write();
        if let Some(slot) = names.map.get(name) {
            return check(*slot);
        }
        // A catalogue event type not seen yet is a counter like the others.
        if self.catalogue_types.contains(name) {
            check(Slot::Counter(0))?;
            let entry = self.register_type(&mut names, name);
            return Ok(Slot::Counter(entry.id));
        }
        if names.extra >= self.max_extra {
            return Err(PushError::Full(self.max_extra));
        }
        let meta = Meta { name: Arc::from(name), unit: unit.map(Arc::from), help: None };
        let slot = match wanted.unwrap_or(Kind::Gauge) {
            Kind::Counter => {
                if names.counters.len() >= self.capacity {
                    return Err(PushError::Full(self.max_extra));
                }
                let derive = self.derive_for(&names, name);
                names.counters.push((meta.clone(), derive));
                Slot::Counter(names.counters.len() as u32 - 1)
            }
            Kind::Gauge => {
                names.gauges.push((meta.clone(), Arc::new(new_gauge())));
                Slot::Gauge(names.gauges.len() as u32 - 1)
            }
            Kind::Histogram => {
                let h = Histogram::new(self.writers, bounds_for_unit(unit));
                names.hists.push((meta.clone(), Arc::new(h)));
                Slot::Histogram(names.hists.len() as u32 - 1)
            }
        };
        names.extra += 1;
        names.add(meta, slot);
        Ok(slot)
    }

    /// Applies a producer's metric record.
    pub fn apply(&self, rec: &MetricRecord) -> Result<(), PushError> {
        let slot = self.slot_for(&rec.name, rec.kind, rec.unit.as_deref())?;
        check_value(slot.kind(), &rec.values)?;
        match slot {
            Slot::Counter(id) => {
                let shared = &self.shards[self.writers];
                if let Some(c) = shared.slot(id) {
                    bump(c, rec.values[0] as u64, false);
                }
            }
            Slot::Gauge(id) => self.set_gauge_slot(id, rec.values[rec.values.len() - 1]),
            Slot::Histogram(id) => {
                let h = self.names.read().hists[id as usize].1.clone();
                for v in &rec.values {
                    h.record(h.shared_shard(), *v, 1, false);
                }
            }
        }
        self.pushed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn set_gauge_slot(&self, id: u32, v: f64) {
        let g = self.names.read().gauges[id as usize].1.clone();
        g.bits.store(v.to_bits(), Ordering::Relaxed);
        g.set.store(true, Ordering::Release);
    }

    /// Applies a value scraped from an upstream Prometheus endpoint. A counter's scraped total
    /// replaces livetap's own count of it in readings, and a scraped histogram replaces the
    /// local one: the upstream counts everything, livetap only what it was sent. A value whose
    /// kind differs from the registered one is converted when that makes sense (counter ⇄
    /// gauge); histograms must match.
    pub fn apply_scraped(&self, name: &str, value: Scraped) -> Result<(), PushError> {
        let wanted = match &value {
            Scraped::Counter(_) => Kind::Counter,
            Scraped::Gauge(_) => Kind::Gauge,
            Scraped::Histogram(_) => Kind::Histogram,
        };
        let slot = match self.slot_for(name, Some(wanted), None) {
            Ok(s) => s,
            Err(PushError::KindConflict { .. }) => self.slot_for(name, None, None)?,
            Err(e) => return Err(e),
        };
        match (slot, value) {
            (Slot::Counter(id), Scraped::Counter(v) | Scraped::Gauge(v)) => {
                self.totals.lock().insert(id, if v.is_finite() && v > 0.0 { v as u64 } else { 0 });
            }
            (Slot::Gauge(id), Scraped::Counter(v) | Scraped::Gauge(v)) => self.set_gauge_slot(id, v),
            (Slot::Histogram(id), Scraped::Histogram(e)) => {
                self.names.read().hists[id as usize].1.set_external(e);
            }
            (slot, _) => {
                return Err(PushError::KindConflict {
                    name: name.to_string(),
                    kind: slot.kind().as_str(),
                    wanted: wanted.as_str(),
                })
            }
        }
        Ok(())
    }

    /// The dotted name registered under a Prometheus-sanitised name (`queue_count` →
    /// `queue.count`).
    pub fn resolve_prometheus(&self, sanitized: &str) -> Option<Arc<str>> {
        self.names.read().prom.get(sanitized).cloned()
    }

    /// True when `name` is registered (with any kind).
    pub fn contains(&self, name: &str) -> bool {
        self.names.read().map.contains_key(name)
    }

    /// True when a producer or a scrape has set the gauge `name`.
    pub fn gauge_is_set(&self, name: &str) -> bool {
        let names = self.names.read();
        match names.map.get(name) {
            Some(Slot::Gauge(id)) => names.gauges[*id as usize].1.set.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// The current readings of the names `filter` selects, sorted by name: counters that are
    /// not zero, gauges that have a value, histograms that have an observation.
    pub fn snapshot(&self, filter: &NameFilter) -> Vec<MetricValue> {
        let names = self.names.read();
        let totals = self.totals.lock().clone();
        let mut out = Vec::new();
        for (name, slot) in &names.map {
            if !filter.matches(name) {
                continue;
            }
            let (meta, reading) = match *slot {
                Slot::Counter(id) => {
                    let v = match totals.get(&id) {
                        Some(t) => *t,
                        None => self.shards.iter().map(|s| s.read(id)).fold(0u64, u64::wrapping_add),
                    };
                    if v == 0 {
                        continue;
                    }
                    // A renamed type's two names share this counter (and its meta); each is
                    // reported under its own name.
                    (&names.counters[id as usize].0, Reading::Counter(v))
                }
                Slot::Gauge(id) => {
                    let (meta, g) = &names.gauges[id as usize];
                    if !g.set.load(Ordering::Acquire) {
                        continue;
                    }
                    (meta, Reading::Gauge(f64::from_bits(g.bits.load(Ordering::Relaxed))))
                }
                Slot::Histogram(id) => {
                    let (meta, h) = &names.hists[id as usize];
                    let s = h.snapshot();
                    if s.count == 0 {
                        continue;
                    }
                    (meta, Reading::Histogram(s))
                }
            };
            out.push(MetricValue { name: name.clone(), unit: meta.unit.clone(), help: meta.help, reading });
        }
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Registers an open live metrics stream; the count drops when the guard is dropped.
    pub fn open_stream(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// Open live metrics streams.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

fn new_gauge() -> Gauge {
    Gauge { bits: AtomicU64::new(0), set: AtomicBool::new(false) }
}

/// A value read from an upstream Prometheus endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Scraped {
    /// A counter's total.
    Counter(f64),
    /// A gauge's (or untyped metric's) value.
    Gauge(f64),
    /// A histogram.
    Histogram(External),
}

/// Keeps a live metrics stream counted while it is open.
pub struct StreamGuard(Arc<MetricsRegistry>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Slots of a matcher thread's type table at first (a power of two; it doubles at half full).
const FIRST_SLOTS: usize = 256;
/// `Seen::hist` of a type that feeds no histogram.
const NO_HIST: u32 = u32::MAX;

/// One type a matcher thread has met: the address of its interned name, its counter id and
/// the thread's index of the histogram it feeds. 16 bytes, four to a cache line.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    key: usize,
    id: u32,
    hist: u32,
}

/// A matcher thread's counting handle: counts its share of the events by type, and records
/// the measures of the types that feed a histogram. Not shared between threads.
///
/// An event's type is found by the address of its interned name in a small open-addressing
/// table of the types this thread has met (a multiply, then usually one compare); only a type
/// met for the first time goes to the registry, under its lock. The handle keeps a clone of
/// every name in the table, so a cached address cannot be freed and reused by another name.
/// The table, this thread's counter pages and its histogram writers are all it touches per
/// event: a few cache lines for the types a host actually emits.
pub struct EventCounter {
    reg: Arc<MetricsRegistry>,
    shard: usize,
    exclusive: bool,
    stride: u64,
    /// The next sequence number this thread counts.
    next: u64,
    /// Open addressing with linear probing; a zero key marks a free slot.
    table: Box<[Seen]>,
    used: usize,
    /// This thread's counter pages, by page number.
    pages: Vec<Option<Arc<Page>>>,
    /// The histograms the met types feed: registry histogram id, key, this thread's writer.
    hists: Vec<(u32, KeyId, HistogramWriter)>,
    /// Clones of the cached names, so a cached address stays theirs.
    keep: Vec<crate::event::TypeName>,
}

/// The table slot where probing for `key` starts (Fibonacci hashing: the high bits of the
/// product depend on every bit of the address).
#[inline]
fn home(key: usize, mask: usize) -> usize {
    ((key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize & mask
}

impl EventCounter {
    /// Counts `ev` if its sequence number falls to this thread (called for every event the
    /// thread reads, in sequence order).
    #[inline]
    pub fn observe(&mut self, seq: u64, ev: &Event) {
        if seq == self.next {
            self.next += self.stride;
            self.count(ev);
        } else if seq > self.next {
            // Not reached while every thread reads every event in order; realign if a reader
            // ever starts late, so each sequence number still has exactly one counting thread.
            let mine = self.shard as u64;
            self.next = seq - seq % self.stride + mine;
            if self.next < seq {
                self.next += self.stride;
            }
            if seq == self.next {
                self.next += self.stride;
                self.count(ev);
            }
        }
    }

    /// Counts `ev` unconditionally (the benchmark's entry point; matcher threads call
    /// [`EventCounter::observe`]).
    #[inline]
    pub fn count(&mut self, ev: &Event) {
        let key = ev.kind.as_ptr() as usize;
        let mask = self.table.len() - 1;
        let mut i = home(key, mask);
        let seen = loop {
            let s = self.table[i];
            if s.key == key {
                break s;
            }
            if s.key == 0 {
                return self.first_sight(ev, key);
            }
            i = (i + 1) & mask;
        };
        self.add(seen, ev);
    }

    #[inline]
    fn add(&self, seen: Seen, ev: &Event) {
        let id = seen.id as usize;
        if let Some(Some(page)) = self.pages.get(id / PAGE) {
            bump(&page[id % PAGE], 1, self.exclusive);
        }
        if let Some((_, key, h)) = self.hists.get(seen.hist as usize) {
            measure(ev, *key, h);
        }
    }

    /// A type this thread has not met: look it up (registering it when new), remember it,
    /// and count the event.
    #[cold]
    fn first_sight(&mut self, ev: &Event, key: usize) {
        let entry = self.reg.type_entry(&ev.kind);
        let page_no = entry.id as usize / PAGE;
        if self.pages.len() <= page_no {
            self.pages.resize(page_no + 1, None);
        }
        if self.pages[page_no].is_none() {
            self.pages[page_no] = self.reg.shards[self.shard].page(entry.id).cloned();
        }
        let hist = match entry.derive {
            None => NO_HIST,
            Some((k, h)) => match self.hists.iter().position(|(id, key, _)| *id == h && *key == k) {
                Some(i) => i as u32,
                None => {
                    let writer = self
                        .reg
                        .names
                        .read()
                        .hists
                        .get(h as usize)
                        .and_then(|x| x.1.writer(self.shard, self.exclusive));
                    match writer {
                        Some(w) => {
                            self.hists.push((h, k, w));
                            self.hists.len() as u32 - 1
                        }
                        None => NO_HIST,
                    }
                }
            },
        };
        let seen = Seen { key, id: entry.id, hist };
        // Only a flood of names that are not interned fills the table: such events are counted
        // without being remembered.
        if self.keep.len() < MAX_CACHED_TYPES {
            if 2 * (self.used + 1) > self.table.len() {
                self.grow();
            }
            self.insert(seen);
            self.keep.push(ev.kind.clone());
        }
        self.add(seen, ev);
    }

    fn insert(&mut self, seen: Seen) {
        let mask = self.table.len() - 1;
        let mut i = home(seen.key, mask);
        while self.table[i].key != 0 {
            i = (i + 1) & mask;
        }
        self.table[i] = seen;
        self.used += 1;
    }

    fn grow(&mut self) {
        let bigger = vec![Seen::default(); self.table.len() * 2].into_boxed_slice();
        let old = std::mem::replace(&mut self.table, bigger);
        self.used = 0;
        for s in old.iter().filter(|s| s.key != 0) {
            self.insert(*s);
        }
    }
}

/// Records the event's measure, if it carries one. Kept out of line so the common path of
/// [`EventCounter::count`] (a type without a histogram) stays small.
#[inline(never)]
fn measure(ev: &Event, key: KeyId, h: &HistogramWriter) {
    if let Some(v) = ev.values_of(key).next().and_then(parse_measure) {
        h.record(v);
    }
}

/// A measure from a canonical key value: integers (the usual case, read digit by digit) or
/// decimals, not negative.
#[inline]
fn parse_measure(v: &str) -> Option<f64> {
    let b = v.as_bytes();
    if !b.is_empty() && b.len() <= 15 && b.iter().all(u8::is_ascii_digit) {
        // At most 15 digits: the value fits a u64 and converts to f64 exactly.
        return Some(b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')) as f64);
    }
    v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing::event;

    fn setup(writers: usize) -> (Catalogue, KeyRegistry, Arc<MetricsRegistry>) {
        let (c, k) = Catalogue::with_keys(1024);
        let r = MetricsRegistry::new(&c, &k, writers, 16);
        (c, k, r)
    }

    fn reading(r: &MetricsRegistry, name: &str) -> Option<Reading> {
        r.snapshot(&NameFilter::all()).into_iter().find(|m| &*m.name == name).map(|m| m.reading)
    }

    #[test]
    fn threads_split_the_counting_and_sum_on_read() {
        let (c, k, r) = setup(3);
        let evs: Vec<_> = (0..30)
            .map(|i| {
                let t = if i % 3 == 0 { "custom.thing" } else { "smtp.connection-start" };
                Arc::new(event(&c, &k, &format!(r#"{{"type":"{t}"}}"#)))
            })
            .collect();
        let mut counters: Vec<_> = (0..3).map(|w| r.event_counter(w)).collect();
        assert!(counters.iter().all(|c| c.exclusive));
        // Every thread sees every event; together they count each once.
        for counter in &mut counters {
            for (seq, ev) in evs.iter().enumerate() {
                counter.observe(seq as u64, ev);
            }
        }
        assert_eq!(reading(&r, "smtp.connection-start"), Some(Reading::Counter(20)));
        assert_eq!(reading(&r, "custom.thing"), Some(Reading::Counter(10)));
        // Zero counters are left out.
        assert_eq!(reading(&r, "auth.success"), None);
        // Event types are registered when first seen.
        assert!(!r.contains("auth.success"));
        assert!(r.contains("custom.thing"));
        // A second claim of a shard still counts, with atomic adds.
        let mut again = r.event_counter(0);
        assert!(!again.exclusive);
        again.count(&evs[0]);
        assert_eq!(reading(&r, "custom.thing"), Some(Reading::Counter(11)));
    }

    #[test]
    fn realigns_when_starting_late() {
        let (c, k, r) = setup(2);
        let ev = Arc::new(event(&c, &k, r#"{"type":"auth.success"}"#));
        let mut a = r.event_counter(0);
        let mut b = r.event_counter(1);
        for seq in 101..111 {
            a.observe(seq, &ev);
            b.observe(seq, &ev);
        }
        assert_eq!(reading(&r, "auth.success"), Some(Reading::Counter(10)));
    }

    #[test]
    fn events_feed_their_histograms() {
        let (c, k, r) = setup(1);
        let mut counter = r.event_counter(0);
        for (ty, key, v) in [
            ("delivery.attempt-end", "elapsed", 120),
            ("delivery.attempt-end", "elapsed", 80),
            ("queue.queue-message", "size", 5000),
        ] {
            let ev = event(&c, &k, &format!(r#"{{"type":"{ty}","data":{{"{key}":{v}}}}}"#));
            counter.count(&ev);
        }
        // An event without the measure is counted, not observed.
        counter.count(&event(&c, &k, r#"{"type":"delivery.attempt-end"}"#));
        let Some(Reading::Histogram(h)) = reading(&r, "delivery.attempt-time") else {
            panic!("no histogram")
        };
        assert_eq!((h.count, h.sum), (2, 200.0));
        assert_eq!(reading(&r, "delivery.attempt-end"), Some(Reading::Counter(3)));
        let Some(Reading::Histogram(h)) = reading(&r, "message.size") else { panic!("no histogram") };
        assert_eq!((h.count, h.quantile(0.5)), (1, Some(5000.0)));
        assert_eq!(reading(&r, "delivery.total-time"), None);
    }

    #[test]
    fn renamed_types_share_one_counter_and_feed_the_same_histograms() {
        let (c, k, r) = setup(2);
        let mut counters: Vec<_> = (0..2).map(|w| r.event_counter(w)).collect();
        let evs: Vec<_> = [
            ("queue.queue-message", 1_000),
            ("queue.message-queued", 3_000),
            ("queue.message-queued", 5_000),
            ("queue.authenticated-message-queued", 7_000),
            ("queue.report-queued", 9_000),
        ]
        .iter()
        .map(|(t, size)| Arc::new(event(&c, &k, &format!(r#"{{"type":"{t}","data":{{"size":{size}}}}}"#))))
        .collect();
        for counter in &mut counters {
            for (seq, ev) in evs.iter().enumerate() {
                counter.observe(seq as u64, ev);
            }
        }
        // Each name of the pair reports the events sent under either.
        assert_eq!(reading(&r, "queue.queue-message"), Some(Reading::Counter(3)));
        assert_eq!(reading(&r, "queue.message-queued"), Some(Reading::Counter(3)));
        assert_eq!(reading(&r, "queue.queue-message-authenticated"), Some(Reading::Counter(1)));
        assert_eq!(reading(&r, "queue.report-queued"), Some(Reading::Counter(1)));
        // The v0.16 names feed the histograms their v0.15 names feed.
        let Some(Reading::Histogram(h)) = reading(&r, "message.size") else { panic!("no histogram") };
        assert_eq!((h.count, h.sum), (3, 9_000.0));
        let Some(Reading::Histogram(h)) = reading(&r, "message.authenticated-size") else { panic!() };
        assert_eq!((h.count, h.sum), (1, 7_000.0));
        let Some(Reading::Histogram(h)) = reading(&r, "outgoing-report.size") else { panic!() };
        assert_eq!((h.count, h.sum), (1, 9_000.0));
        // A pushed increment under one name is seen under both, and scraped names map back.
        r.apply(&MetricRecord {
            name: "queue.queue-message".into(),
            kind: None,
            values: [2.0].into_iter().collect(),
            unit: None,
        })
        .unwrap();
        assert_eq!(reading(&r, "queue.message-queued"), Some(Reading::Counter(5)));
        assert_eq!(r.resolve_prometheus("queue_message_queued").as_deref(), Some("queue.message-queued"));
        assert_eq!(r.resolve_prometheus("queue_queue_message").as_deref(), Some("queue.queue-message"));
    }

    #[test]
    fn v016_only_types_are_catalogue_counters() {
        let (c, k, r) = setup(1);
        let mut counter = r.event_counter(0);
        for t in ["registry.build-error", "registry.build-error", "dkim.signature-created"] {
            counter.count(&event(&c, &k, &format!(r#"{{"type":"{t}"}}"#)));
        }
        assert_eq!(reading(&r, "registry.build-error"), Some(Reading::Counter(2)));
        assert_eq!(reading(&r, "dkim.signature-created"), Some(Reading::Counter(1)));
        // A record under a v0.16-only counter name is a counter, as for any catalogue type.
        let rec = MetricRecord {
            name: "dkim.chain-too-long".into(),
            kind: None,
            values: [4.0].into_iter().collect(),
            unit: None,
        };
        r.apply(&rec).unwrap();
        assert_eq!(reading(&r, "dkim.chain-too-long"), Some(Reading::Counter(4)));
        assert_eq!(
            r.resolve_prometheus("task_manager_task_failed").as_deref(),
            Some("task-manager.task-failed")
        );
        // None of them took a place among the producer-invented types.
        assert_eq!(r.names.read().dynamic_types, 0);
        // Every name of both generations has a Prometheus name of its own, which maps back.
        let all = c.known_names().map(str::to_string).chain(c.metrics.iter().map(|m| m.name.clone()));
        for name in all {
            let mut prom = String::new();
            crate::metrics::model::sanitize(&name, &mut prom);
            assert_eq!(r.resolve_prometheus(&prom).as_deref(), Some(name.as_str()), "{prom}");
        }
    }

    #[test]
    fn pushes_by_kind_and_conflicts() {
        let (_, _, r) = setup(1);
        let rec = |name: &str, kind: Option<Kind>, v: &[f64]| MetricRecord {
            name: name.into(),
            kind,
            values: v.iter().copied().collect(),
            unit: None,
        };
        r.apply(&rec("queue.count", None, &[12.0])).unwrap();
        assert_eq!(reading(&r, "queue.count"), Some(Reading::Gauge(12.0)));
        r.apply(&rec("queue.count", Some(Kind::Gauge), &[7.0])).unwrap();
        assert_eq!(reading(&r, "queue.count"), Some(Reading::Gauge(7.0)));
        r.apply(&rec("smtp.connection-start", Some(Kind::Counter), &[5.0])).unwrap();
        assert_eq!(reading(&r, "smtp.connection-start"), Some(Reading::Counter(5)));
        r.apply(&rec("delivery.total-time", None, &[10.0])).unwrap();
        assert!(matches!(reading(&r, "delivery.total-time"), Some(Reading::Histogram(h)) if h.count == 1));
        // Unknown names are gauges unless the record says otherwise.
        r.apply(&rec("postfix.deferred", None, &[3.0])).unwrap();
        assert_eq!(reading(&r, "postfix.deferred"), Some(Reading::Gauge(3.0)));
        assert!(matches!(
            r.apply(&rec("queue.count", Some(Kind::Counter), &[1.0])),
            Err(PushError::KindConflict { kind: "gauge", wanted: "counter", .. })
        ));
        assert!(matches!(r.apply(&rec("livetap.memory", None, &[1.0])), Err(PushError::Reserved(_))));
        assert!(matches!(r.apply(&rec("smtp.connection-start", None, &[-1.0])), Err(PushError::BadValue(_))));
        assert_eq!(r.pushed.load(Ordering::Relaxed), 5);
        // The cap on names beyond the catalogue.
        for i in 0..15 {
            r.apply(&rec(&format!("extra.g{i}"), None, &[1.0])).unwrap();
        }
        assert_eq!(r.apply(&rec("extra.more", None, &[1.0])), Err(PushError::Full(16)));
    }

    #[test]
    fn scraped_values_replace_local_ones() {
        let (c, k, r) = setup(1);
        let mut counter = r.event_counter(0);
        counter.count(&event(&c, &k, r#"{"type":"smtp.connection-start"}"#));
        r.apply_scraped("smtp.connection-start", Scraped::Counter(40.0)).unwrap();
        assert_eq!(reading(&r, "smtp.connection-start"), Some(Reading::Counter(40)));
        // An untyped upstream value for a catalogue counter still sets the counter.
        r.apply_scraped("auth.success", Scraped::Gauge(3.0)).unwrap();
        assert_eq!(reading(&r, "auth.success"), Some(Reading::Counter(3)));
        r.apply_scraped("queue.count", Scraped::Counter(9.0)).unwrap();
        assert_eq!(reading(&r, "queue.count"), Some(Reading::Gauge(9.0)));
        let e = External { count: 2, sum: 30.0, buckets: vec![(10.0, 1.0), (f64::INFINITY, 2.0)] };
        r.apply_scraped("delivery.total-time", Scraped::Histogram(e)).unwrap();
        assert!(matches!(reading(&r, "delivery.total-time"), Some(Reading::Histogram(h)) if h.count == 2));
        assert!(r
            .apply_scraped(
                "queue.count",
                Scraped::Histogram(External { count: 0, sum: 0.0, buckets: vec![] })
            )
            .is_err());
        assert_eq!(r.resolve_prometheus("queue_count").as_deref(), Some("queue.count"));
        assert_eq!(r.resolve_prometheus("smtp_connection_start").as_deref(), Some("smtp.connection-start"));
    }

    #[test]
    fn event_types_take_their_name_from_a_pushed_gauge() {
        let (c, k, r) = setup(1);
        r.apply(&MetricRecord {
            name: "custom.later".into(),
            kind: None,
            values: [1.0].into_iter().collect(),
            unit: None,
        })
        .unwrap();
        let mut counter = r.event_counter(0);
        counter.count(&event(&c, &k, r#"{"type":"custom.later"}"#));
        assert_eq!(reading(&r, "custom.later"), Some(Reading::Counter(1)));
    }

    #[test]
    fn new_types_beyond_the_cap_are_counted_together() {
        let (c, k, r) = setup(1);
        let mut counter = r.event_counter(0);
        for i in 0..MAX_DYNAMIC_TYPES + 3 {
            counter.count(&event(&c, &k, &format!(r#"{{"type":"flood.t{i}"}}"#)));
        }
        assert_eq!(reading(&r, "flood.t0"), Some(Reading::Counter(1)));
        assert_eq!(reading(&r, OVERFLOW_COUNTER), Some(Reading::Counter(3)));
        let total: u64 = r
            .snapshot(&NameFilter::new(["flood.*", OVERFLOW_COUNTER]))
            .iter()
            .map(|m| match m.reading {
                Reading::Counter(v) => v,
                _ => 0,
            })
            .sum();
        assert_eq!(total, MAX_DYNAMIC_TYPES as u64 + 3);
    }

    #[test]
    fn measures() {
        assert_eq!(parse_measure("0"), Some(0.0));
        assert_eq!(parse_measure("1234"), Some(1234.0));
        assert_eq!(parse_measure("999999999999999"), Some(999_999_999_999_999.0));
        assert_eq!(parse_measure("18446744073709551615"), Some(18_446_744_073_709_551_615.0));
        assert_eq!(parse_measure("12.5"), Some(12.5));
        assert_eq!(parse_measure("-3"), None);
        assert_eq!(parse_measure(""), None);
        assert_eq!(parse_measure("inf"), None);
        assert_eq!(parse_measure("12ms"), None);
    }

    #[test]
    fn filter_selects_names() {
        let (c, k, r) = setup(1);
        let mut counter = r.event_counter(0);
        for t in ["delivery.delivered", "delivery.attempt-end", "auth.success"] {
            counter.count(&event(&c, &k, &format!(r#"{{"type":"{t}"}}"#)));
        }
        let f = NameFilter::new(["delivery.*", "auth.success"].iter().copied());
        let names: Vec<_> = r.snapshot(&f).into_iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["auth.success", "delivery.attempt-end", "delivery.delivered"]);
    }
}
