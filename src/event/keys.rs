//! The registry of event keys (`remoteIp` ⇄ `remote-ip`), their kinds, and value canonicalisation.
//!
//! Events and filters both go through [`KeyKind::canonical`], so a filter value and an event
//! value compare equal exactly when they mean the same thing (`10.0.0.5` vs `10.000.0.5` is
//! not the same string, but `2001:DB8::1` and `2001:db8::1` are the same address).
//! The registry grows when producers send keys it has not seen; it is copy-on-write behind
//! `arc-swap`, so the hot path reads it without locks and registration is rare.

use ahash::AHashMap;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Dense identifier of a key, assigned at registration.
pub type KeyId = u16;

/// How a key's values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Case-sensitive string.
    String,
    /// Case-insensitive string: domains, host names and mail addresses.
    Folded,
    /// An IP address, compared by parsed value.
    Ip,
    /// An integer (also durations in milliseconds).
    Integer,
    /// A boolean.
    Bool,
    /// A timestamp string, compared as text.
    Timestamp,
    /// An identifier that is an integer for one producer and opaque text for another: a queue
    /// id is a number in Stalwart and `4F2A1C0` or `4dQp3x1Zkz` in Postfix. A string of
    /// digits compares as the number it spells (`0042` is `42`, as Stalwart's integer would
    /// be written); anything else compares as it is, case and all.
    Id,
}

impl KeyKind {
    /// Parses the kind names used in the data files and in the config (`[[keys]] kind = ...`).
    pub fn from_name(name: &str) -> Option<KeyKind> {
        Some(match name {
            "string" => KeyKind::String,
            "folded" | "domain" | "address" => KeyKind::Folded,
            "ip" => KeyKind::Ip,
            "integer" | "duration-ms" => KeyKind::Integer,
            "bool" => KeyKind::Bool,
            "timestamp" => KeyKind::Timestamp,
            "id" => KeyKind::Id,
            _ => return None,
        })
    }

    /// Appends the canonical text of a string value to `out`. Used for events and filters alike.
    pub fn canonical_str(self, v: &str, out: &mut String) {
        match self {
            KeyKind::Folded => push_lower(v, out),
            KeyKind::Ip => match v.trim().parse::<IpAddr>() {
                // Rust's IPv4 parser accepts only the canonical dotted form (no leading zeros),
                // so the input is already canonical and needs no formatting on the hot path.
                Ok(IpAddr::V4(_)) => out.push_str(v.trim()),
                Ok(ip) => {
                    use std::fmt::Write;
                    let _ = write!(out, "{}", canonical_ip(ip));
                }
                Err(_) => push_lower(v, out),
            },
            KeyKind::Id => {
                let t = v.trim();
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                    let digits = t.trim_start_matches('0');
                    out.push_str(if digits.is_empty() { "0" } else { digits });
                } else {
                    out.push_str(v);
                }
            }
            _ => out.push_str(v),
        }
    }

    /// Validates and canonicalises a filter value typed by a user; `Err` says what was expected.
    pub fn canonical_query(self, v: &str) -> Result<String, &'static str> {
        let mut out = String::with_capacity(v.len());
        match self {
            KeyKind::Integer => {
                let n: i64 = v.trim().parse().map_err(|_| "an integer")?;
                out.push_str(itoa::Buffer::new().format(n));
            }
            KeyKind::Bool => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => out.push_str("true"),
                "false" | "0" | "no" => out.push_str("false"),
                _ => return Err("true or false"),
            },
            KeyKind::Ip => {
                let ip: IpAddr = v.trim().parse().map_err(|_| "an IP address")?;
                use std::fmt::Write;
                let _ = write!(out, "{}", canonical_ip(ip));
            }
            _ => self.canonical_str(v, &mut out),
        }
        Ok(out)
    }
}

/// Maps IPv4-mapped IPv6 addresses to IPv4 so that `::ffff:10.0.0.5` matches `10.0.0.5`.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn push_lower(v: &str, out: &mut String) {
    if v.is_ascii() {
        // One copy, then an in-place pass the compiler vectorises; far cheaper than pushing
        // character by character, and nearly every mail value is ASCII.
        let start = out.len();
        out.push_str(v);
        out[start..].make_ascii_lowercase();
    } else {
        out.extend(v.chars().flat_map(char::to_lowercase));
    }
}

/// Lowercases `v` into `out` (exported for the substring haystack and `filter=` needles).
pub fn lowercase_into(v: &str, out: &mut String) {
    push_lower(v, out);
}

/// Converts `remoteIp` to `remote-ip`.
pub fn kebab_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else if c == '_' {
            out.push('-');
        } else {
            out.push(c);
        }
    }
    out
}

/// What the registry knows about one key.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// The name in event `data` (camelCase).
    pub name: Arc<str>,
    /// The query parameter name (kebab-case).
    pub param: Arc<str>,
    /// How values compare.
    pub kind: KeyKind,
    /// True for one of the 66 keys classic clients decode ([`super::classic::is_classic_key`]),
    /// decided once at registration so the event builder reads it with the key's kind.
    pub classic: bool,
}

/// One immutable version of the registry's contents.
#[derive(Default, Clone)]
pub struct KeyTable {
    keys: Vec<KeyInfo>,
    by_name: AHashMap<Arc<str>, KeyId>,
    by_param: AHashMap<Arc<str>, KeyId>,
}

impl KeyTable {
    /// Looks a key up by its camelCase name in this version.
    #[inline]
    pub fn lookup(&self, name: &str) -> Option<(KeyId, KeyKind)> {
        self.by_name.get(name).map(|&id| (id, self.keys[id as usize].kind))
    }

    /// True when key `id` is one of the 66 keys classic clients decode; false for an id this
    /// version does not hold.
    #[inline]
    pub fn is_classic(&self, id: KeyId) -> bool {
        self.keys.get(id as usize).is_some_and(|k| k.classic)
    }
}

/// The set of known keys; lookups are lock-free, registration is copy-on-write.
pub struct KeyRegistry {
    table: ArcSwap<KeyTable>,
    /// Bumped after every registration, so holders of a [`KeyTable`] snapshot can tell, with
    /// one atomic load, whether it is still current.
    version: AtomicU64,
    write: Mutex<()>,
    cap: usize,
}

/// Parameter names that are never keys, whatever a producer sends.
pub const RESERVED_PARAMS: &[&str] = &["filter", "follow", "token", "q", "event", "level"];

impl KeyRegistry {
    /// An empty registry that accepts at most `cap` keys (producer-invented keys past the cap
    /// are still stored and streamed, but cannot be filtered on).
    pub fn new(cap: usize) -> KeyRegistry {
        KeyRegistry {
            table: ArcSwap::from_pointee(KeyTable::default()),
            version: AtomicU64::new(0),
            write: Mutex::new(()),
            cap: cap.min(KeyId::MAX as usize),
        }
    }

    /// Looks a key up by its camelCase name.
    #[inline]
    pub fn lookup(&self, name: &str) -> Option<(KeyId, KeyKind)> {
        self.table.load().lookup(name)
    }

    /// The current contents and their version, for a reader that looks up many keys (the event
    /// builder keeps one and refreshes it when [`KeyRegistry::version`] moves).
    pub fn snapshot(&self) -> (Arc<KeyTable>, u64) {
        // Read the version first: a registration between the two loads makes the snapshot
        // newer than its version, which only causes one extra refresh later.
        let v = self.version();
        (self.table.load_full(), v)
    }

    /// The registration count, bumped after each new key is visible.
    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Looks a key up by its kebab-case query parameter name.
    pub fn lookup_param(&self, param: &str) -> Option<(KeyId, KeyInfo)> {
        let t = self.table.load();
        t.by_param.get(param).map(|&id| (id, t.keys[id as usize].clone()))
    }

    /// Returns the info of a key by id.
    pub fn info(&self, id: KeyId) -> Option<KeyInfo> {
        self.table.load().keys.get(id as usize).cloned()
    }

    /// Number of registered keys.
    pub fn len(&self) -> usize {
        self.table.load().keys.len()
    }

    /// True when no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a key (or returns the existing one). `None` when the registry is full or the
    /// name is unusable (empty, too long, or its parameter name is reserved).
    pub fn register(&self, name: &str, kind: KeyKind) -> Option<(KeyId, KeyKind)> {
        if let Some(found) = self.lookup(name) {
            return Some(found);
        }
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return None;
        }
        let param = kebab_case(name);
        if RESERVED_PARAMS.contains(&param.as_str()) {
            return None;
        }
        let _guard = self.write.lock();
        let current = self.table.load_full();
        if let Some(&id) = current.by_name.get(name) {
            return Some((id, current.keys[id as usize].kind));
        }
        if current.keys.len() >= self.cap || current.by_param.contains_key(param.as_str()) {
            return None;
        }
        let mut next = (*current).clone();
        let id = next.keys.len() as KeyId;
        let classic = super::classic::is_classic_key(name);
        let info = KeyInfo { name: Arc::from(name), param: Arc::from(param.as_str()), kind, classic };
        next.by_name.insert(info.name.clone(), id);
        next.by_param.insert(info.param.clone(), id);
        next.keys.push(info);
        self.table.store(Arc::new(next));
        self.version.fetch_add(1, Ordering::Release);
        Some((id, kind))
    }

    /// Guesses the kind of a key first seen in producer data from its value.
    pub fn kind_for_new<'t, J: super::json::JsonRef<'t>>(value: J) -> KeyKind {
        use super::json::Node;
        match value.node() {
            Node::Int(_) | Node::UInt(_) => KeyKind::Integer,
            Node::Bool(_) => KeyKind::Bool,
            Node::Array(mut items) => items.next().map_or(KeyKind::String, Self::kind_for_new),
            _ => KeyKind::String,
        }
    }
}

/// Keys whose values are domains, host names or addresses, compared case-insensitively.
pub const FOLDED_KEYS: &[&str] = &["domain", "hostname", "from", "to", "accountName"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab() {
        assert_eq!(kebab_case("remoteIp"), "remote-ip");
        assert_eq!(kebab_case("dmarcQuarantine"), "dmarc-quarantine");
        assert_eq!(kebab_case("to"), "to");
    }

    #[test]
    fn canonical_forms_agree() {
        let mut a = String::new();
        KeyKind::Ip.canonical_str("2001:DB8::1", &mut a);
        assert_eq!(KeyKind::Ip.canonical_query("2001:db8:0::1").unwrap(), a);
        assert_eq!(KeyKind::Ip.canonical_query("::ffff:10.0.0.5").unwrap(), "10.0.0.5");
        let mut v4 = String::new();
        KeyKind::Ip.canonical_str(" 10.0.0.5 ", &mut v4);
        assert_eq!(v4, "10.0.0.5");
        assert!("010.0.0.5".parse::<IpAddr>().is_err(), "non-canonical IPv4 must not parse");
        assert!(KeyKind::Ip.canonical_query("10.0.0.300").is_err());
        assert_eq!(KeyKind::Integer.canonical_query(" 0042 ").unwrap(), "42");
        assert!(KeyKind::Integer.canonical_query("4x").is_err());
        // Queue ids: Stalwart's numbers and Postfix's text compare in one kind.
        assert_eq!(KeyKind::Id.canonical_query(" 0042 ").unwrap(), "42");
        assert_eq!(KeyKind::Id.canonical_query("4F2A1C0").unwrap(), "4F2A1C0");
        assert_eq!(KeyKind::Id.canonical_query("4dQp3x1Zkz").unwrap(), "4dQp3x1Zkz");
        assert_eq!(KeyKind::Id.canonical_query("000").unwrap(), "0");
        let mut out = String::new();
        KeyKind::Id.canonical_str("0042", &mut out);
        assert_eq!(out, "42");
        assert_eq!(KeyKind::Folded.canonical_query("Example.ORG").unwrap(), "example.org");
        assert_eq!(KeyKind::String.canonical_query("AbC").unwrap(), "AbC");
    }

    #[test]
    fn registry_grows_and_caps() {
        let r = KeyRegistry::new(2);
        let (a, _) = r.register("remoteIp", KeyKind::Ip).unwrap();
        assert_eq!(r.register("remoteIp", KeyKind::String).unwrap(), (a, KeyKind::Ip));
        assert_eq!(r.lookup_param("remote-ip").unwrap().0, a);
        assert!(r.register("domain", KeyKind::Folded).is_some());
        assert!(r.register("third", KeyKind::String).is_none());
        assert!(r.register("filter", KeyKind::String).is_none());
        assert!(r.register("bad key", KeyKind::String).is_none());
    }
}
