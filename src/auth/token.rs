//! Live tokens: short-lived, HMAC-signed credentials for browsers, whose `EventSource` cannot
//! send an `Authorization` header (Stalwart's `/api/telemetry/live/*-token` API).
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`, where the payload
//! is a version byte, the grant (tracing or metrics), the expiry (Unix seconds), 8 random bytes
//! and the principal's name. It is bound to that principal (its permissions, filter and limits
//! are looked up again when it is used) and to its grant (a tracing token opens no metrics
//! stream). It is stateless: nothing is stored per token, so revoking tokens means changing the
//! key, which invalidates every token at once.
//!
//! **Grace rule.** An expired token is still accepted for `grace` seconds after its expiry when
//! the request is an `EventSource` reconnect, recognised by a numeric `Last-Event-ID` header (a
//! browser sends it on reconnect once it received a frame with an `id:`), on the endpoint of
//! the token's grant. A network blip thus does not end a dashboard's stream, while a token
//! that leaked is useless `ttl + grace` seconds after it was issued.
//!
//! The key is, in order: derived from `token-key` in the config; read from
//! `DATA_DIR/token-key` (created with 32 random bytes, mode 0600, at first start); or, with no
//! data directory, random for this process.

use super::AuthError;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const VERSION: u8 = 1;
/// Longest token accepted (a principal name is at most 64 bytes).
pub const MAX_TOKEN_LEN: usize = 256;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a live token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The live traces stream.
    Tracing,
    /// The live metrics stream.
    Metrics,
}

impl Grant {
    fn code(self) -> u8 {
        match self {
            Grant::Tracing => 1,
            Grant::Metrics => 2,
        }
    }
}

/// Where the signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Derived from the configured `token-key`.
    Configured,
    /// Kept in this file (the data directory's `token-key`).
    File(PathBuf),
    /// Random, for this process only.
    Memory,
}

/// Issues and checks live tokens.
#[derive(Debug)]
pub struct LiveTokens {
    key: RwLock<[u8; 32]>,
    source: KeySource,
    ttl: u64,
    grace: u64,
}

fn random_key() -> std::io::Result<[u8; 32]> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(k)
}

/// Reads the key file, creating it (mode 0600) when missing or unusable.
fn load_or_create(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if let Ok(k) = B64.decode(text.trim()) {
                if let Ok(k) = <[u8; 32]>::try_from(k.as_slice()) {
                    let mode = std::fs::metadata(path)?.permissions().mode();
                    if mode & 0o077 != 0 {
                        tracing::warn!(path = %path.display(), "token key readable by others; setting mode 0600");
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                    }
                    return Ok(k);
                }
            }
            tracing::warn!(path = %path.display(), "token key file is not a key; writing a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_key(path, &random_key()?)
}

fn write_key(path: &Path, key: &[u8; 32]) -> std::io::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside the file and renamed over it, so a reader never sees half a key.
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(B64.encode(key).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(*key)
}

impl LiveTokens {
    /// Loads or creates the key (see the module docs). `ttl` and `grace` are in seconds.
    pub fn new(
        configured: Option<&str>,
        data_dir: Option<&Path>,
        ttl: u64,
        grace: u64,
    ) -> std::io::Result<LiveTokens> {
        let (key, source) = match (configured, data_dir) {
            (Some(k), _) => (Sha256::digest(k.as_bytes()).into(), KeySource::Configured),
            (None, Some(dir)) => {
                let path = dir.join("token-key");
                (load_or_create(&path)?, KeySource::File(path))
            }
            (None, None) => (random_key()?, KeySource::Memory),
        };
        Ok(LiveTokens { key: RwLock::new(key), source, ttl, grace })
    }

    /// Where the key comes from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Seconds a token is valid.
    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Re-reads the key file (after an operator replaced or deleted it; a deleted file gets a
    /// new key). Returns true when the key changed, which invalidates every issued token.
    pub fn reload(&self) -> std::io::Result<bool> {
        let key = self.read_key()?;
        Ok(self.install_key(key))
    }

    /// Reads the key file again without using it (`None` when the key is not kept in a file):
    /// a configuration reload reads everything that can fail before it changes anything, then
    /// calls [`LiveTokens::install_key`]. A deleted file is created with a new key here.
    pub fn read_key(&self) -> std::io::Result<Option<[u8; 32]>> {
        let KeySource::File(path) = &self.source else { return Ok(None) };
        load_or_create(path).map(Some)
    }

    /// Puts a key from [`LiveTokens::read_key`] in use. Returns true when it differs from the
    /// one in use, which invalidates every issued token.
    pub fn install_key(&self, key: Option<[u8; 32]>) -> bool {
        let Some(k) = key else { return false };
        let mut cur = self.key.write();
        let changed = *cur != k;
        *cur = k;
        changed
    }

    /// Replaces the key with a new random one (kept in the key file if there is one):
    /// every token issued so far stops working.
    pub fn rotate(&self) -> std::io::Result<()> {
        let k = random_key()?;
        if let KeySource::File(path) = &self.source {
            write_key(path, &k)?;
        }
        *self.key.write() = k;
        Ok(())
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&*self.key.read()).expect("HMAC takes any key length");
        mac.update(b"livetap live token\0");
        mac.update(payload);
        mac
    }

    /// A token for `principal` and `grant`, valid `ttl` seconds from `now` (Unix seconds).
    pub fn issue(&self, principal: &str, grant: Grant, now: u64) -> std::io::Result<String> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut payload = Vec::with_capacity(18 + principal.len());
        payload.push(VERSION);
        payload.push(grant.code());
        payload.extend_from_slice(&now.saturating_add(self.ttl).to_be_bytes());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(principal.as_bytes());
        let sig = self.mac(&payload).finalize().into_bytes();
        Ok(format!("{}.{}", B64.encode(&payload), B64.encode(sig)))
    }

    /// Checks `token` for `grant` at `now`; `reconnect` says the request is an `EventSource`
    /// reconnect (grace rule). Returns the principal's name.
    pub fn verify(&self, token: &str, grant: Grant, now: u64, reconnect: bool) -> Result<String, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::BadToken);
        }
        let (p, s) = token.split_once('.').ok_or(AuthError::BadToken)?;
        let payload = B64.decode(p).map_err(|_| AuthError::BadToken)?;
        let sig = B64.decode(s).map_err(|_| AuthError::BadToken)?;
        // `verify_slice` compares in constant time; nothing of the payload is trusted before.
        self.mac(&payload).verify_slice(&sig).map_err(|_| AuthError::BadToken)?;
        if payload.len() < 18 || payload[0] != VERSION {
            return Err(AuthError::BadToken);
        }
        if payload[1] != grant.code() {
            return Err(AuthError::WrongGrant);
        }
        let exp = u64::from_be_bytes(payload[2..10].try_into().expect("8 bytes"));
        let name = std::str::from_utf8(&payload[18..]).map_err(|_| AuthError::BadToken)?;
        if now <= exp || (reconnect && now <= exp.saturating_add(self.grace)) {
            Ok(name.to_owned())
        } else {
            Err(AuthError::Expired)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_grant_expiry_grace() {
        let t = LiveTokens::new(None, None, 60, 120).unwrap();
        let tok = t.issue("alice", Grant::Tracing, 1000).unwrap();
        assert_eq!(t.verify(&tok, Grant::Tracing, 1000, false).unwrap(), "alice");
        assert_eq!(t.verify(&tok, Grant::Tracing, 1060, false).unwrap(), "alice");
        assert_eq!(t.verify(&tok, Grant::Metrics, 1000, false), Err(AuthError::WrongGrant));
        assert_eq!(t.verify(&tok, Grant::Tracing, 1061, false), Err(AuthError::Expired));
        assert_eq!(t.verify(&tok, Grant::Tracing, 1180, true).unwrap(), "alice", "reconnect in grace");
        assert_eq!(t.verify(&tok, Grant::Tracing, 1181, true), Err(AuthError::Expired));
        // Any changed byte breaks the signature.
        let mut bytes = tok.clone().into_bytes();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(t.verify(&tampered, Grant::Tracing, 1000, false), Err(AuthError::BadToken));
        assert_eq!(t.verify("x", Grant::Tracing, 1000, false), Err(AuthError::BadToken));
        assert_eq!(t.verify(&"a".repeat(300), Grant::Tracing, 1000, false), Err(AuthError::BadToken));
        t.rotate().unwrap();
        assert_eq!(t.verify(&tok, Grant::Tracing, 1000, false), Err(AuthError::BadToken), "rotated");
    }

    #[test]
    fn key_file_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = LiveTokens::new(None, Some(dir.path()), 60, 0).unwrap();
        let path = dir.path().join("token-key");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let tok = a.issue("bob", Grant::Metrics, 5).unwrap();
        let b = LiveTokens::new(None, Some(dir.path()), 60, 0).unwrap();
        assert_eq!(b.verify(&tok, Grant::Metrics, 5, false).unwrap(), "bob", "same key after restart");
        std::fs::remove_file(&path).unwrap();
        assert!(b.reload().unwrap(), "a deleted key file means a new key");
        assert!(b.verify(&tok, Grant::Metrics, 5, false).is_err());
        let c = LiveTokens::new(Some("configured-token-key-0123456789abcdef"), None, 60, 0).unwrap();
        let d = LiveTokens::new(Some("configured-token-key-0123456789abcdef"), None, 60, 0).unwrap();
        assert!(d.verify(&c.issue("x", Grant::Tracing, 0).unwrap(), Grant::Tracing, 0, false).is_ok());
    }
}
