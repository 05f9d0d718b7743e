//! The embedded catalogue of Stalwart event types, keys and metrics (facts copied into `data/`),
//! in both of its generations: v0.15 (the classic names) and v0.16 (23 types renamed, 28
//! removed, 74 added).
//!
//! Webhook events arrive without a level, so the level of every known type comes from here.
//! A known type is one that either generation defines: the union of both name sets, each name
//! with the level of the generation that defines it (the two agree on every name they share;
//! a renamed pair's two names keep their own generation's level). A renamed type knows its
//! counterpart in the other generation, which is how filters and metrics treat the two names
//! as one type (`query::generations`, `metrics::derive`, `metrics::registry`).
//! Unknown types are accepted and interned up to a cap so a hostile producer cannot grow
//! the table without bound; past the cap they are still accepted, only not interned.

use super::keys::{KeyKind, KeyRegistry, FOLDED_KEYS};
use super::Level;
use ahash::AHashMap;
use parking_lot::RwLock;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;

/// `data/stalwart-catalogue.json` (v0.15.5), embedded at compile time.
pub const CATALOGUE_JSON: &str = include_str!("../../data/stalwart-catalogue.json");
/// `data/stalwart-event-keys.json` (v0.15.5), embedded at compile time.
pub const EVENT_KEYS_JSON: &str = include_str!("../../data/stalwart-event-keys.json");
/// `data/stalwart-v016-catalogue.json` (v0.16.18), embedded at compile time.
pub const CATALOGUE_V016_JSON: &str = include_str!("../../data/stalwart-v016-catalogue.json");
/// `data/stalwart-v016-event-keys.json` (v0.16.18), embedded at compile time.
pub const EVENT_KEYS_V016_JSON: &str = include_str!("../../data/stalwart-v016-event-keys.json");

/// How many producer-invented event types are interned at most.
const MAX_DYNAMIC_TYPES: usize = 4096;

/// A generation of Stalwart's event catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Generation {
    /// Stalwart v0.10 to v0.15 (the classic names; the catalogue of v0.15.5).
    #[default]
    V015,
    /// Stalwart v0.16 (the catalogue of v0.16.18).
    V016,
}

impl Generation {
    /// Both generations, oldest first.
    pub const ALL: [Generation; 2] = [Generation::V015, Generation::V016];

    /// Parses `0.15` or `0.16` (a leading `v` is allowed).
    pub fn parse(s: &str) -> Option<Generation> {
        match s.strip_prefix('v').unwrap_or(s) {
            "0.15" => Some(Generation::V015),
            "0.16" => Some(Generation::V016),
            _ => None,
        }
    }

    /// `0.15` or `0.16`, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::V015 => "0.15",
            Generation::V016 => "0.16",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Generation::V015 => 1,
            Generation::V016 => 2,
        }
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Generation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Generation, D::Error> {
        let s = String::deserialize(d)?;
        Generation::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}`: expected \"0.15\" or \"0.16\"")))
    }
}

/// The generations that define an event type or a metric: none (a producer's own type),
/// one, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Generations(u8);

impl Generations {
    /// No generation: a type no catalogue defines.
    pub const NONE: Generations = Generations(0);

    /// The set holding only `g`.
    pub fn of(g: Generation) -> Generations {
        Generations(g.bit())
    }

    /// This set and `g`.
    pub fn with(self, g: Generation) -> Generations {
        Generations(self.0 | g.bit())
    }

    /// True when `g` defines the name.
    pub fn contains(self, g: Generation) -> bool {
        self.0 & g.bit() != 0
    }

    /// True for a name no generation defines.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The one generation that defines the name, when exactly one does.
    pub fn only(self) -> Option<Generation> {
        match self.0 {
            1 => Some(Generation::V015),
            2 => Some(Generation::V016),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct CatalogueFile {
    keys: Vec<CatKey>,
    metrics: Vec<MetricDef>,
}

#[derive(Deserialize)]
struct CatEvent<'a> {
    /// Borrowed from the embedded text, so the catalogue's names are `'static`.
    #[serde(borrow)]
    name: &'a str,
    level: String,
}

/// The part of a catalogue file [`KNOWN`] reads.
#[derive(Deserialize)]
struct CatalogueEvents<'a> {
    #[serde(borrow)]
    events: Vec<CatEvent<'a>>,
    /// Only the v0.16 file has it: the v0.15 → v0.16 renames.
    #[serde(borrow, default)]
    renamed: Vec<RenameEntry<'a>>,
}

/// One rename as the v0.16 file lists it (`level_change` and `commit` are not needed here).
#[derive(Deserialize)]
struct RenameEntry<'a> {
    #[serde(borrow)]
    from: &'a str,
    #[serde(borrow)]
    to: &'a str,
}

/// The part of an event-keys file [`KNOWN`] reads: which types open and close spans.
#[derive(Deserialize)]
struct SpanFlagsFile<'a> {
    #[serde(borrow)]
    events: Vec<SpanFlags<'a>>,
}

#[derive(Deserialize)]
struct SpanFlags<'a> {
    #[serde(borrow)]
    name: &'a str,
    span_start: bool,
    span_end: bool,
}

#[derive(Deserialize)]
struct CatKey {
    name: String,
}

/// A metric from the catalogue: name, kind (`counter`, `gauge`, `histogram`) and unit.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricDef {
    /// Dotted metric name, such as `queue.count`.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// Unit of the values: as the first generation that defines the metric says (v0.15 gives
    /// counters none, v0.16 gives its own counters `count`).
    pub unit: Option<String>,
    /// The generations whose catalogue lists the metric.
    #[serde(skip)]
    pub generations: Generations,
}

#[derive(Deserialize)]
struct EventKeysFile {
    key_kinds: std::collections::HashMap<String, String>,
    events: Vec<EventKeysEntry>,
}

/// The keys one event type is emitted with, and whether it opens or closes a span.
#[derive(Debug, Clone, Deserialize)]
pub struct EventKeysEntry {
    /// Event type name.
    pub name: String,
    /// Level in Stalwart's source.
    pub level: String,
    /// Keys the event carries.
    pub keys: Vec<String>,
    /// True when the event opens a span.
    pub span_start: bool,
    /// True when the event closes a span.
    pub span_end: bool,
}

/// A type Stalwart renamed between v0.15 and v0.16: the same event (mostly the same numeric
/// id in Stalwart's source) under two names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    /// The v0.15 name (`queue.queue-message`).
    pub v015: &'static str,
    /// The v0.16 name (`queue.message-queued`).
    pub v016: &'static str,
}

/// An event type's name: one of the catalogue's, a `'static` string, or one a producer
/// invented, shared.
///
/// Why not always `Arc<str>`: every event holds its type's name, and with a shared count a
/// busy type's count is one cache line that every parser thread increments and every thread
/// dropping an event decrements. In `max-ingest` that increment alone was 1.4 % of the hub's
/// CPU (`perf/RESULTS.md` §10). The catalogue's names cost nothing to copy.
#[derive(Debug, Clone)]
pub enum TypeName {
    /// A type in Stalwart's catalogue.
    Known(&'static str),
    /// A type a producer invented.
    Other(Arc<str>),
}

impl std::ops::Deref for TypeName {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            TypeName::Known(s) => s,
            TypeName::Other(s) => s,
        }
    }
}

impl std::borrow::Borrow<str> for TypeName {
    fn borrow(&self) -> &str {
        self
    }
}

impl PartialEq for TypeName {
    fn eq(&self, other: &TypeName) -> bool {
        **self == **other
    }
}

impl Eq for TypeName {}

impl std::hash::Hash for TypeName {
    /// Hashes as the `str` does, so maps keyed by `TypeName` are searched with a `&str`.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl std::fmt::Display for TypeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// What is known about an event type.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    /// The name, the same string (and pointer) for every event of the type while it is known
    /// or interned.
    pub name: TypeName,
    /// Default level when the producer sends none: the level of the generation that defines
    /// the name.
    pub level: Level,
    /// True when this event opens a span (in either generation's event-keys file).
    pub span_start: bool,
    /// True when this event closes its span (span-follow state can be released).
    pub span_end: bool,
    /// True when the type is in Stalwart's catalogue (either generation).
    pub known: bool,
    /// The generations that define the name ([`Generations::NONE`] for a producer's own type).
    pub generations: Generations,
    /// For a type Stalwart renamed between v0.15 and v0.16, its name in the other generation.
    pub counterpart: Option<&'static str>,
    /// The default `text` as a JSON string literal, computed once per type so building an
    /// event does not allocate or format it.
    pub default_text: Arc<[u8]>,
}

fn default_text(name: &str) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(name.len() + 4);
    super::encode::write_humanized_type(&mut out, name);
    Arc::from(out)
}

/// Event types livetap publishes itself that no Stalwart catalogue defines, with their
/// level: an alert's resolution (`alert`; Stalwart has `telemetry.alert` for the firing).
pub const OWN_TYPES: &[(&str, Level)] = &[("telemetry.alert-resolved", Level::Info)];

/// The catalogue's event types of both generations and the renames between them, read once
/// per process from the embedded files; every name borrows the embedded text.
struct Known {
    types: AHashMap<&'static str, TypeInfo>,
    renamed: Vec<Renamed>,
}

static KNOWN: std::sync::LazyLock<Known> = std::sync::LazyLock::new(|| {
    let parse = |text: &'static str| -> CatalogueEvents<'static> {
        serde_json::from_str(text).expect("embedded catalogue is valid JSON")
    };
    let spans = |text: &'static str| -> SpanFlagsFile<'static> {
        serde_json::from_str(text).expect("embedded event keys are valid JSON")
    };
    let files = [
        (Generation::V015, parse(CATALOGUE_JSON), spans(EVENT_KEYS_JSON)),
        (Generation::V016, parse(CATALOGUE_V016_JSON), spans(EVENT_KEYS_V016_JSON)),
    ];
    let renamed: Vec<Renamed> = files
        .iter()
        .flat_map(|(_, cat, _)| cat.renamed.iter())
        .map(|r| Renamed { v015: r.from, v016: r.to })
        .collect();
    let counterpart = |name: &str| {
        renamed.iter().find_map(|r| match name {
            n if n == r.v015 => Some(r.v016),
            n if n == r.v016 => Some(r.v015),
            _ => None,
        })
    };
    let mut types: AHashMap<&'static str, TypeInfo> = AHashMap::with_capacity(700);
    for (generation, cat, _) in &files {
        for e in &cat.events {
            // A name both generations define keeps the level the first (v0.15) gives it; the
            // data agree on every such name (a test checks).
            let info = types.entry(e.name).or_insert_with(|| TypeInfo {
                name: TypeName::Known(e.name),
                level: Level::parse(&e.level).unwrap_or(Level::Info),
                span_start: false,
                span_end: false,
                known: true,
                generations: Generations::NONE,
                counterpart: counterpart(e.name),
                default_text: default_text(e.name),
            });
            info.generations = info.generations.with(*generation);
        }
    }
    // livetap's own types, known (with their level) although neither generation defines
    // them: a subscriber or an `[[alert]]`'s webhook filters on them like on any known type.
    for &(name, level) in OWN_TYPES {
        types.entry(name).or_insert_with(|| TypeInfo {
            name: TypeName::Known(name),
            level,
            span_start: false,
            span_end: false,
            known: true,
            generations: Generations::NONE,
            counterpart: None,
            default_text: default_text(name),
        });
    }
    for (_, _, flags) in &files {
        for f in &flags.events {
            if let Some(info) = types.get_mut(f.name) {
                info.span_start |= f.span_start;
                info.span_end |= f.span_end;
            }
        }
    }
    Known { types, renamed }
});

/// The renamed types, in the order the v0.16 catalogue lists them.
pub fn renamed() -> &'static [Renamed] {
    &KNOWN.renamed
}

/// The other generation's name of a renamed type (`queue.queue-message` ⇄
/// `queue.message-queued`); `None` for every other name. Exact and case-sensitive, as the
/// catalogue's names are lowercase.
pub fn counterpart(name: &str) -> Option<&'static str> {
    KNOWN.types.get(name).and_then(|t| t.counterpart)
}

/// Event types, keys and metrics, loaded once at start.
pub struct Catalogue {
    types: &'static AHashMap<&'static str, TypeInfo>,
    dynamic: RwLock<AHashMap<Box<str>, TypeInfo>>,
    /// Per v0.15 event type: the keys it is emitted with (for the demo generator and tests).
    pub event_keys: Vec<EventKeysEntry>,
    /// Per v0.16 event type: the keys it is emitted with (the demo's v0.16 mode).
    pub event_keys_v016: Vec<EventKeysEntry>,
    /// Kind of each catalogue key, by camelCase name, as named in the data file (the 66 keys
    /// are the same in both generations).
    pub key_kinds: AHashMap<String, String>,
    /// The catalogue's metrics: the union of both generations', each with the generations that
    /// list it.
    pub metrics: Vec<MetricDef>,
    key_names: Vec<String>,
}

impl Catalogue {
    /// Loads the embedded catalogue. The data is compiled in, so failure is a build defect.
    pub fn embedded() -> Catalogue {
        let cat: CatalogueFile =
            serde_json::from_str(CATALOGUE_JSON).expect("embedded catalogue is valid JSON");
        let cat16: CatalogueFile =
            serde_json::from_str(CATALOGUE_V016_JSON).expect("embedded v0.16 catalogue is valid JSON");
        let ek: EventKeysFile =
            serde_json::from_str(EVENT_KEYS_JSON).expect("embedded event keys are valid JSON");
        let ek16: EventKeysFile =
            serde_json::from_str(EVENT_KEYS_V016_JSON).expect("embedded v0.16 event keys are valid JSON");
        // The union of both generations' metrics, in file order (v0.15 first); a name both
        // list keeps v0.15's kind and unit (the kinds agree, and so do the units but for a
        // counter's, which v0.15 leaves out and v0.16 calls `count`).
        let mut metrics: Vec<MetricDef> = Vec::with_capacity(cat.metrics.len() + 64);
        let mut at: AHashMap<String, usize> = AHashMap::new();
        for (generation, list) in [(Generation::V015, cat.metrics), (Generation::V016, cat16.metrics)] {
            for mut m in list {
                match at.get(&m.name) {
                    Some(&i) => metrics[i].generations = metrics[i].generations.with(generation),
                    None => {
                        m.generations = Generations::of(generation);
                        at.insert(m.name.clone(), metrics.len());
                        metrics.push(m);
                    }
                }
            }
        }
        Catalogue {
            types: &KNOWN.types,
            dynamic: RwLock::new(AHashMap::new()),
            key_names: cat.keys.into_iter().map(|k| k.name).collect(),
            event_keys: ek.events,
            event_keys_v016: ek16.events,
            key_kinds: ek.key_kinds.into_iter().collect(),
            metrics,
        }
    }

    /// The event types of one generation with the keys each is emitted with.
    pub fn event_keys_of(&self, generation: Generation) -> &[EventKeysEntry] {
        match generation {
            Generation::V015 => &self.event_keys,
            Generation::V016 => &self.event_keys_v016,
        }
    }

    /// Every catalogue event type name of either generation (about 688, and livetap's [`OWN_TYPES`]), in no order.
    pub fn known_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.types.keys().copied()
    }

    /// The renamed types (see [`renamed`]).
    pub fn renamed(&self) -> &'static [Renamed] {
        renamed()
    }

    /// The embedded catalogue and a key registry (capped at `key_cap` keys) that already holds
    /// its 66 keys: what the hub, the tests and the benchmarks all start from.
    pub fn with_keys(key_cap: usize) -> (Catalogue, KeyRegistry) {
        let c = Catalogue::embedded();
        let k = KeyRegistry::new(key_cap);
        c.register_keys(&k);
        (c, k)
    }

    /// Registers the 66 catalogue keys with their kinds into `keys`.
    pub fn register_keys(&self, keys: &KeyRegistry) {
        for name in &self.key_names {
            let kind = if FOLDED_KEYS.contains(&name.as_str()) {
                KeyKind::Folded
            } else if name == "queueId" {
                // A number in Stalwart, text in Postfix (`4F2A1C0`): see `KeyKind::Id`.
                KeyKind::Id
            } else {
                self.key_kinds.get(name).and_then(|k| KeyKind::from_name(k)).unwrap_or(KeyKind::String)
            };
            keys.register(name, kind);
        }
    }

    /// Looks an event type up, interning unknown ones (up to a cap). A known type is
    /// borrowed: no reference count is touched.
    pub fn type_info(&self, name: &str) -> Cow<'static, TypeInfo> {
        if let Some(t) = self.types.get(name) {
            return Cow::Borrowed(t);
        }
        Cow::Owned(self.dynamic_type(name))
    }

    #[cold]
    fn dynamic_type(&self, name: &str) -> TypeInfo {
        if let Some(t) = self.dynamic.read().get(name) {
            return t.clone();
        }
        let info = TypeInfo {
            name: TypeName::Other(Arc::from(name)),
            level: Level::Info,
            // Producer-invented types follow the catalogue naming: `*-end` closes a span.
            span_start: false,
            span_end: name.ends_with("-end"),
            known: false,
            generations: Generations::NONE,
            counterpart: None,
            default_text: default_text(name),
        };
        let mut dynamic = self.dynamic.write();
        if dynamic.len() < MAX_DYNAMIC_TYPES {
            dynamic.entry(Box::from(name)).or_insert_with(|| info.clone());
        }
        info
    }

    /// Number of event types in the catalogue (both generations, each name once).
    pub fn known_types(&self) -> usize {
        self.types.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_catalogue() {
        let c = Catalogue::embedded();
        assert!(c.known_types() > 500);
        let t = c.type_info("smtp.connection-start");
        assert!(t.known);
        assert_eq!(t.level, Level::Debug);
        assert!(c.type_info("smtp.connection-end").span_end);
        assert!(!c.type_info("custom.thing").known);
        let keys = KeyRegistry::new(1024);
        c.register_keys(&keys);
        assert_eq!(keys.len(), 66);
        assert_eq!(keys.lookup_param("remote-ip").unwrap().1.kind, KeyKind::Ip);
        assert_eq!(keys.lookup_param("domain").unwrap().1.kind, KeyKind::Folded);
        assert_eq!(keys.lookup_param("queue-id").unwrap().1.kind, KeyKind::Id);
    }

    #[test]
    fn known_names_are_static_and_invented_ones_interned() {
        let c = Catalogue::embedded();
        let a = c.type_info("smtp.connection-start");
        let b = Catalogue::embedded().type_info("smtp.connection-start");
        assert!(matches!(a, Cow::Borrowed(_)));
        assert!(matches!(a.name, TypeName::Known(_)));
        // One string per type for the whole process, whichever catalogue asked.
        assert_eq!(a.name.as_ptr(), b.name.as_ptr());
        let x = c.type_info("custom.thing");
        let y = c.type_info("custom.thing");
        assert!(matches!(x.name, TypeName::Other(_)));
        assert_eq!(x.name.as_ptr(), y.name.as_ptr(), "interned");
        assert_eq!(&*x.name, "custom.thing");
        assert_eq!(x.name, TypeName::Other(Arc::from("custom.thing")), "equal by content");
        assert!(matches!(c.type_info("smtp.ehlo").name, TypeName::Known(_)));
        // Maps keyed by name are searched with a `&str`.
        let mut m = ahash::AHashMap::new();
        m.insert(a.name.clone(), 1);
        m.insert(x.name.clone(), 2);
        assert_eq!((m.get("smtp.connection-start"), m.get("custom.thing")), (Some(&1), Some(&2)));
        assert_eq!(a.name.to_string(), "smtp.connection-start");
    }

    /// `(name, level)` of every event of one generation's catalogue file.
    fn file_levels(text: &str) -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["level"].as_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn both_generations_are_known_with_their_own_levels() {
        let c = Catalogue::embedded();
        let v15 = file_levels(CATALOGUE_JSON);
        let v16 = file_levels(CATALOGUE_V016_JSON);
        assert_eq!((v15.len(), v16.len()), (591, 637));
        let union: ahash::AHashSet<&str> = v15.iter().chain(&v16).map(|(n, _)| n.as_str()).collect();
        assert_eq!(union.len(), 688);
        // The catalogues' types and livetap's own.
        assert_eq!(c.known_types(), 688 + OWN_TYPES.len());
        assert_eq!(c.known_names().count(), 688 + OWN_TYPES.len());
        assert_eq!(c.type_info("telemetry.alert-resolved").level, Level::Info);
        assert!(c.type_info("telemetry.alert-resolved").known);
        for (generation, list) in [(Generation::V015, &v15), (Generation::V016, &v16)] {
            for (name, level) in list {
                let t = c.type_info(name);
                assert!(t.known && t.generations.contains(generation), "{name}");
                assert!(matches!(t, Cow::Borrowed(_)) && matches!(t.name, TypeName::Known(_)), "{name}");
                // Each name has the level its own generation gives it, so the two files agree
                // on every name they share.
                assert_eq!(t.level, Level::parse(level).unwrap(), "{name} in {generation}");
            }
        }
        let both = union.iter().filter(|n| c.type_info(n).generations.only().is_none()).count();
        assert_eq!(both, 540);
        // A v0.16-only type, a removed v0.15 type, a type of both.
        let t = c.type_info("registry.build-error");
        assert_eq!((t.level, t.generations.only()), (Level::Error, Some(Generation::V016)));
        let t = c.type_info("housekeeper.start");
        assert_eq!(t.generations.only(), Some(Generation::V015));
        assert_eq!(
            t.level,
            Level::parse(&v15.iter().find(|e| e.0 == "housekeeper.start").unwrap().1).unwrap()
        );
        let t = c.type_info("smtp.connection-start");
        assert!(t.generations.contains(Generation::V015) && t.generations.contains(Generation::V016));
        assert!(t.span_start && !t.span_end && t.counterpart.is_none());
        assert!(c.type_info("delivery.attempt-end").span_end);
        let x = c.type_info("custom.thing");
        assert!(x.generations.is_empty() && x.counterpart.is_none() && !x.span_start);
    }

    #[test]
    fn renamed_types_know_their_counterpart() {
        let c = Catalogue::embedded();
        let pairs = c.renamed();
        assert_eq!(pairs.len(), 23);
        for r in pairs {
            let (old, new) = (c.type_info(r.v015), c.type_info(r.v016));
            assert_eq!(old.generations.only(), Some(Generation::V015), "{}", r.v015);
            assert_eq!(new.generations.only(), Some(Generation::V016), "{}", r.v016);
            assert_eq!((old.counterpart, new.counterpart), (Some(r.v016), Some(r.v015)));
            assert_eq!((counterpart(r.v015), counterpart(r.v016)), (Some(r.v016), Some(r.v015)));
        }
        assert!(pairs.contains(&Renamed { v015: "queue.queue-message", v016: "queue.message-queued" }));
        // The one rename with a level change: each name keeps its own generation's level.
        assert_eq!(c.type_info("resource.webadmin-unpacked").level, Level::Info);
        assert_eq!(c.type_info("resource.application-unpacked").level, Level::Debug);
        assert_eq!(counterpart("smtp.connection-start"), None);
        assert_eq!(counterpart("custom.thing"), None);
        assert_eq!(counterpart("QUEUE.QUEUE-MESSAGE"), None, "exact, as the names are lowercase");
    }

    #[test]
    fn metrics_are_the_union_of_both_generations() {
        let c = Catalogue::embedded();
        assert_eq!(c.metrics.len(), 382);
        let kind = |k: &str| c.metrics.iter().filter(|m| m.kind == k).count();
        assert_eq!((kind("gauge"), kind("histogram"), kind("counter")), (10, 17, 355));
        let get = |n: &str| c.metrics.iter().find(|m| m.name == n).unwrap();
        assert_eq!(get("dkim.chain-too-long").generations.only(), Some(Generation::V016));
        assert_eq!(get("dkim.chain-too-long").unit.as_deref(), Some("count"));
        assert_eq!(get("queue.queue-message").generations.only(), Some(Generation::V015));
        assert_eq!(get("queue.message-queued").generations.only(), Some(Generation::V016));
        let q = get("queue.count");
        assert!(q.generations.contains(Generation::V015) && q.generations.contains(Generation::V016));
        assert_eq!((q.kind.as_str(), q.unit.as_deref()), ("gauge", Some("messages")));
        let per = |g| c.metrics.iter().filter(|m| m.generations.contains(g)).count();
        assert_eq!((per(Generation::V015), per(Generation::V016)), (337, 369));
        assert_eq!(c.event_keys_of(Generation::V015).len(), 591);
        assert_eq!(c.event_keys_of(Generation::V016).len(), 637);
    }

    #[test]
    fn generations_parse_and_deserialise() {
        assert_eq!(Generation::parse("0.15"), Some(Generation::V015));
        assert_eq!(Generation::parse("v0.16"), Some(Generation::V016));
        assert_eq!(Generation::parse("0.17"), None);
        assert_eq!(Generation::default(), Generation::V015);
        assert_eq!(Generation::V016.to_string(), "0.16");
        let g: Generation = serde_json::from_str("\"0.16\"").unwrap();
        assert_eq!(g, Generation::V016);
        let e = serde_json::from_str::<Generation>("\"16\"").unwrap_err().to_string();
        assert!(e.contains("expected \"0.15\" or \"0.16\""), "{e}");
        let both = Generations::of(Generation::V015).with(Generation::V016);
        assert!(both.contains(Generation::V016) && both.only().is_none() && !both.is_empty());
        assert!(Generations::NONE.is_empty() && Generations::NONE.only().is_none());
    }
}
