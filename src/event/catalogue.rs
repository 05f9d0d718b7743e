//! The embedded catalogue of Stalwart event types, keys and metrics (facts copied into `data/`).
//!
//! Webhook events arrive without a level, so the level of every known type comes from here.
//! Unknown types are accepted and interned up to a cap so a hostile producer cannot grow
//! the table without bound; past the cap they are still accepted, only not interned.

use super::keys::{KeyKind, KeyRegistry, FOLDED_KEYS};
use super::Level;
use ahash::AHashMap;
use parking_lot::RwLock;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;

/// `data/stalwart-catalogue.json`, embedded at compile time.
pub const CATALOGUE_JSON: &str = include_str!("../../data/stalwart-catalogue.json");
/// `data/stalwart-event-keys.json`, embedded at compile time.
pub const EVENT_KEYS_JSON: &str = include_str!("../../data/stalwart-event-keys.json");

/// How many producer-invented event types are interned at most.
const MAX_DYNAMIC_TYPES: usize = 4096;

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

/// The part of the catalogue file [`KNOWN_TYPES`] reads.
#[derive(Deserialize)]
struct CatalogueEvents<'a> {
    #[serde(borrow)]
    events: Vec<CatEvent<'a>>,
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
    /// Unit of the values (counters have none).
    pub unit: Option<String>,
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
    /// Default level when the producer sends none.
    pub level: Level,
    /// True when this event closes its span (span-follow state can be released).
    pub span_end: bool,
    /// True when the type is in Stalwart's catalogue.
    pub known: bool,
    /// The default `text` as a JSON string literal, computed once per type so building an
    /// event does not allocate or format it.
    pub default_text: Arc<[u8]>,
}

fn default_text(name: &str) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(name.len() + 4);
    super::encode::write_humanized_type(&mut out, name);
    Arc::from(out)
}

/// The catalogue's event types, read once per process from the embedded file; its names
/// borrow the embedded text.
static KNOWN_TYPES: std::sync::LazyLock<AHashMap<&'static str, TypeInfo>> = std::sync::LazyLock::new(|| {
    let cat: CatalogueEvents<'static> =
        serde_json::from_str(CATALOGUE_JSON).expect("embedded catalogue is valid JSON");
    let ek: EventKeysFile =
        serde_json::from_str(EVENT_KEYS_JSON).expect("embedded event keys are valid JSON");
    let span_end: ahash::AHashSet<&str> =
        ek.events.iter().filter(|e| e.span_end).map(|e| e.name.as_str()).collect();
    cat.events
        .iter()
        .map(|e| {
            let info = TypeInfo {
                name: TypeName::Known(e.name),
                level: Level::parse(&e.level).unwrap_or(Level::Info),
                span_end: span_end.contains(e.name),
                known: true,
                default_text: default_text(e.name),
            };
            (e.name, info)
        })
        .collect()
});

/// Event types, keys and metrics, loaded once at start.
pub struct Catalogue {
    types: &'static AHashMap<&'static str, TypeInfo>,
    dynamic: RwLock<AHashMap<Box<str>, TypeInfo>>,
    /// Per event type: the keys it is emitted with (for the demo generator and tests).
    pub event_keys: Vec<EventKeysEntry>,
    /// Kind of each catalogue key, by camelCase name, as named in the data file.
    pub key_kinds: AHashMap<String, String>,
    /// The catalogue's metrics.
    pub metrics: Vec<MetricDef>,
    key_names: Vec<String>,
}

impl Catalogue {
    /// Loads the embedded catalogue. The data is compiled in, so failure is a build defect.
    pub fn embedded() -> Catalogue {
        let cat: CatalogueFile =
            serde_json::from_str(CATALOGUE_JSON).expect("embedded catalogue is valid JSON");
        let ek: EventKeysFile =
            serde_json::from_str(EVENT_KEYS_JSON).expect("embedded event keys are valid JSON");
        Catalogue {
            types: &KNOWN_TYPES,
            dynamic: RwLock::new(AHashMap::new()),
            key_names: cat.keys.into_iter().map(|k| k.name).collect(),
            event_keys: ek.events,
            key_kinds: ek.key_kinds.into_iter().collect(),
            metrics: cat.metrics,
        }
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
            span_end: name.ends_with("-end"),
            known: false,
            default_text: default_text(name),
        };
        let mut dynamic = self.dynamic.write();
        if dynamic.len() < MAX_DYNAMIC_TYPES {
            dynamic.entry(Box::from(name)).or_insert_with(|| info.clone());
        }
        info
    }

    /// Number of event types in the catalogue.
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
        assert_eq!(keys.lookup_param("queue-id").unwrap().1.kind, KeyKind::Integer);
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
}
