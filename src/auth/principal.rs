//! Principals: who may call livetap (API keys and password users), their permissions, their
//! optional event filter and their per-principal limits.
//!
//! The admin token is one more principal (`admin`) with every permission, no filter and no
//! per-principal limits, so configurations from before principals existed keep working.
//! API keys are looked up by comparing SHA-256 digests with every configured key in constant
//! time (no early exit), so the answer time says nothing about which key was close.

use super::ratelimit::RateLimiter;
use super::AuthError;
use crate::config::{ConfigError, PrincipalConfig};
use crate::event::KeyRegistry;
use crate::query::{parse_pairs, Expr, Limits};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The name of the principal the admin token authenticates.
pub const ADMIN: &str = "admin";

/// One permission of the fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `tracing-live`: the live traces stream and its live tokens.
    TracingLive,
    /// `metrics-live`: the live metrics stream, its live tokens, and `/metrics`.
    MetricsLive,
    /// `ingest`: the ingest endpoint and the webhook (when no webhook key is set).
    Ingest,
    /// `history`: stored events (reserved for the history endpoints).
    History,
    /// `admin`: livetap's own stats.
    Admin,
}

impl Permission {
    /// Every permission, in a fixed order.
    pub const ALL: [Permission; 5] = [
        Permission::TracingLive,
        Permission::MetricsLive,
        Permission::Ingest,
        Permission::History,
        Permission::Admin,
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Permission::TracingLive => "tracing-live",
            Permission::MetricsLive => "metrics-live",
            Permission::Ingest => "ingest",
            Permission::History => "history",
            Permission::Admin => "admin",
        }
    }

    /// Parses a configuration name.
    pub fn from_name(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions(u8);

impl Permissions {
    /// Every permission.
    pub fn all() -> Permissions {
        Permissions(Permission::ALL.iter().fold(0, |a, p| a | p.bit()))
    }

    /// Adds `p`.
    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    /// True when `p` is in the set.
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
}

/// One principal.
#[derive(Debug)]
pub struct Principal {
    /// Its unique name (`admin` for the admin token).
    pub name: String,
    /// What it may do.
    pub permissions: Permissions,
    /// The events it may see: ANDed with every live query it sends, in the index.
    pub filter: Option<Expr>,
    /// Most live streams (traces and metrics) it may hold at once; `None`: only the global cap.
    pub max_subscribers: Option<usize>,
    /// Its ingest rate limit (events and metric records per second); `None`: unlimited.
    pub ingest_rate: Option<RateLimiter>,
    /// Live streams it holds now.
    streams: Arc<AtomicUsize>,
    api_key_digest: Option<[u8; 32]>,
    /// The PHC string of its password (Argon2), for Basic authentication.
    pub password_hash: Option<String>,
}

impl Principal {
    /// True when the principal holds `p`.
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(p)
    }

    /// Live streams held now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

/// A live stream held by a principal; releases its place when dropped (the stream ended).
#[derive(Debug)]
pub struct StreamSlot(Arc<Principal>);

impl StreamSlot {
    /// The principal holding the stream.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.0
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes one of `p`'s stream places, or says how many it may hold.
pub fn acquire_stream(p: &Arc<Principal>) -> Result<StreamSlot, usize> {
    let cap = p.max_subscribers.unwrap_or(usize::MAX);
    let mut cur = p.streams.load(Ordering::Relaxed);
    loop {
        if cur >= cap {
            return Err(cap);
        }
        match p.streams.compare_exchange_weak(cur, cur + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(StreamSlot(p.clone())),
            Err(now) => cur = now,
        }
    }
}

/// Every principal, the admin first.
#[derive(Debug)]
pub struct Principals {
    list: Vec<Arc<Principal>>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: "principal", message: message.into() }
}

impl Principals {
    /// Builds the admin principal from `admin_token` and the configured ones; filters are
    /// parsed against `keys` under `limits`. `default_max_subscribers` and
    /// `default_ingest_rate` (0: unlimited) apply to configured principals that set none.
    pub fn build(
        admin_token: &str,
        configured: &[PrincipalConfig],
        keys: &KeyRegistry,
        limits: &Limits,
        default_max_subscribers: usize,
        default_ingest_rate: u64,
    ) -> Result<Principals, ConfigError> {
        let mut list = vec![Arc::new(Principal {
            name: ADMIN.into(),
            permissions: Permissions::all(),
            filter: None,
            max_subscribers: None,
            ingest_rate: None,
            streams: Arc::new(AtomicUsize::new(0)),
            api_key_digest: Some(digest(admin_token.as_bytes())),
            password_hash: None,
        })];
        for c in configured {
            let name = &c.name;
            if list.iter().any(|p| &p.name == name) {
                return Err(invalid(format!("`{name}` is defined twice (`admin` is the admin token's)")));
            }
            let mut permissions = Permissions::default();
            for p in &c.permissions {
                permissions.insert(Permission::from_name(p).ok_or_else(|| {
                    invalid(format!(
                        "`{name}`: unknown permission `{p}` (tracing-live, metrics-live, ingest, history, admin)"
                    ))
                })?);
            }
            let filter = match &c.filter {
                None => None,
                Some(f) => {
                    let q = parse_pairs(f, keys, limits)
                        .map_err(|e| invalid(format!("`{name}`: filter: {e}")))?;
                    if q.expr.is_true() {
                        return Err(invalid(format!("`{name}`: filter selects every event; remove it")));
                    }
                    // Widened across catalogue generations once here, so every check of it
                    // (the stream's index, the dashboard's span lookup) means the same.
                    Some(crate::query::generations::across_generations(q.expr))
                }
            };
            let api_key_digest = c.api_key.as_ref().map(|k| digest(k.as_bytes()));
            if let Some(d) = &api_key_digest {
                if list.iter().any(|p| p.api_key_digest.as_ref() == Some(d)) {
                    return Err(invalid(format!("`{name}`: api-key is already used by another principal")));
                }
            }
            let rate = c.ingest_rate.unwrap_or(default_ingest_rate);
            list.push(Arc::new(Principal {
                name: name.clone(),
                permissions,
                filter,
                max_subscribers: Some(c.max_subscribers.unwrap_or(default_max_subscribers)),
                ingest_rate: (rate > 0).then(|| RateLimiter::new(rate)),
                streams: Arc::new(AtomicUsize::new(0)),
                api_key_digest,
                password_hash: c.password_hash.clone(),
            }));
        }
        Ok(Principals { list })
    }

    /// The admin principal.
    pub fn admin(&self) -> &Arc<Principal> {
        &self.list[0]
    }

    /// The principal named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Principal>> {
        self.list.iter().find(|p| p.name == name)
    }

    /// Makes each principal that `previous` also has (by name) count its live streams on the
    /// same counter, so the streams it opened before a configuration reload still count
    /// against its `max-subscribers` after it.
    pub fn carry_stream_counts(&mut self, previous: &Principals) {
        for p in &mut self.list {
            let Some(old) = previous.by_name(&p.name) else { continue };
            if let Some(p) = Arc::get_mut(p) {
                p.streams = old.streams.clone();
            }
        }
    }

    /// True when `self` and `other` name the same principals with the same permissions,
    /// filters, caps, rates and credentials (what a reload compares to report a change).
    pub fn same_as(&self, other: &Principals) -> bool {
        self.list.len() == other.list.len()
            && self.list.iter().zip(&other.list).all(|(a, b)| {
                a.name == b.name
                    && a.permissions == b.permissions
                    && a.filter.as_ref().map(|f| f.to_string()) == b.filter.as_ref().map(|f| f.to_string())
                    && a.max_subscribers == b.max_subscribers
                    && a.ingest_rate.as_ref().map(|r| r.rate()) == b.ingest_rate.as_ref().map(|r| r.rate())
                    && a.api_key_digest == b.api_key_digest
                    && a.password_hash == b.password_hash
            })
    }

    /// True when some principal signs in with a password.
    pub fn has_passwords(&self) -> bool {
        self.list.iter().any(|p| p.password_hash.is_some())
    }

    /// Every principal.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Principal>> {
        self.list.iter()
    }

    /// The principal whose API key is `presented`. Every key is compared, in constant time.
    pub fn by_api_key(&self, presented: &[u8]) -> Result<&Arc<Principal>, AuthError> {
        let d = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, p) in self.list.iter().enumerate() {
            let Some(k) = &p.api_key_digest else { continue };
            let hit = k.ct_eq(&d);
            index.conditional_assign(&(i as u32), hit);
            found |= hit;
        }
        if bool::from(found) {
            Ok(&self.list[index as usize])
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// Credentials read from an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// `Bearer <api key or admin token>`.
    Bearer(&'a [u8]),
    /// `Basic base64(user:password)`.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

/// Parses an `Authorization` header value (scheme names are case-insensitive).
pub fn parse_authorization(h: &[u8]) -> Result<Credentials<'_>, AuthError> {
    let h = h.trim_ascii();
    let split = h.iter().position(|&b| b == b' ').ok_or(AuthError::Invalid)?;
    let (scheme, rest) = (&h[..split], h[split + 1..].trim_ascii());
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(Credentials::Bearer(rest));
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(rest).map_err(|_| AuthError::Invalid)?;
        let text = String::from_utf8(raw).map_err(|_| AuthError::Invalid)?;
        let (user, password) = text.split_once(':').ok_or(AuthError::Invalid)?;
        return Ok(Credentials::Basic { user: user.to_owned(), password: password.to_owned() });
    }
    Err(AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Catalogue;

    fn cfg(name: &str, key: &str, perms: &[&str]) -> PrincipalConfig {
        PrincipalConfig {
            name: name.into(),
            api_key: Some(key.into()),
            permissions: perms.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn lookup_and_permissions() {
        let (_, keys) = Catalogue::with_keys(64);
        let ps = Principals::build(
            "admin-token-0123456789",
            &[cfg("grafana", "grafana-key-0123456789", &["metrics-live"])],
            &keys,
            &Limits::default(),
            10,
            0,
        )
        .unwrap();
        let admin = ps.by_api_key(b"admin-token-0123456789").unwrap();
        assert_eq!(admin.name, ADMIN);
        assert!(Permission::ALL.iter().all(|p| admin.can(*p)));
        let g = ps.by_api_key(b"grafana-key-0123456789").unwrap();
        assert_eq!(g.name, "grafana");
        assert!(g.can(Permission::MetricsLive) && !g.can(Permission::Ingest));
        assert_eq!(ps.by_api_key(b"nope").unwrap_err(), AuthError::Invalid);
        let bad = Principals::build("t", &[cfg("x", "k", &["root"])], &keys, &Limits::default(), 1, 0);
        assert!(bad.is_err());
        let dup = Principals::build("t", &[cfg("admin", "k", &[])], &keys, &Limits::default(), 1, 0);
        assert!(dup.is_err());
    }

    #[test]
    fn stream_slots_are_capped_and_released() {
        let (_, keys) = Catalogue::with_keys(64);
        let ps =
            Principals::build("t", &[cfg("x", "key", &["tracing-live"])], &keys, &Limits::default(), 2, 0)
                .unwrap();
        let p = ps.by_name("x").unwrap();
        let a = acquire_stream(p).unwrap();
        let _b = acquire_stream(p).unwrap();
        assert_eq!(acquire_stream(p).unwrap_err(), 2);
        drop(a);
        assert!(acquire_stream(p).is_ok());
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(parse_authorization(b"Bearer abc").unwrap(), Credentials::Bearer(b"abc"));
        assert_eq!(parse_authorization(b"bearer  abc ").unwrap(), Credentials::Bearer(b"abc"));
        // "alice:pa:ss"
        assert_eq!(
            parse_authorization(b"Basic YWxpY2U6cGE6c3M=").unwrap(),
            Credentials::Basic { user: "alice".into(), password: "pa:ss".into() }
        );
        assert!(parse_authorization(b"Basic !!").is_err());
        assert!(parse_authorization(b"Digest x").is_err());
        assert!(parse_authorization(b"Bearer").is_err());
    }
}
