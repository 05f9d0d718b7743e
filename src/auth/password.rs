//! Passwords of Basic-authenticated users: Argon2 hashing (`livetap hash-password`), checking
//! configured hashes, and verification with bounded cost.
//!
//! One Argon2 verification costs tens of milliseconds and its `m` parameter in memory (19 MiB
//! with the defaults), so an unbounded number of concurrent Basic requests would be a way to
//! exhaust memory. Verifications therefore run on the blocking pool behind a semaphore of
//! [`MAX_CONCURRENT_VERIFICATIONS`], configured hashes may use at most [`MAX_M_COST_KIB`], and a
//! successful (user, password) pair is remembered for [`CACHE_TTL`] under a keyed digest, so a
//! dashboard sending Basic on every request pays the cost once. Unknown users are verified
//! against a dummy hash, so the answer time does not tell which user names exist.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Argon2 verifications running at once, at most.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// Largest Argon2 memory parameter accepted in a configured hash (256 MiB).
pub const MAX_M_COST_KIB: u32 = 256 * 1024;
/// How long a verified (user, password) pair is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Verified pairs remembered at most.
pub const CACHE_CAP: usize = 1024;

/// Why a password could not be hashed or a hash is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The password is empty.
    #[error("the password is empty")]
    Empty,
    /// The hash is not a PHC string livetap can verify.
    #[error("not an Argon2 PHC hash ({0}); create one with `livetap hash-password`")]
    BadHash(String),
    /// The OS random source failed.
    #[error("no randomness: {0}")]
    Random(String),
}

/// Hashes `password` with Argon2id (the `argon2` crate's defaults: m=19456 KiB, t=2, p=1)
/// and a random 16-byte salt; returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| PasswordError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Random(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::BadHash(e.to_string()))
}

/// Checks that `phc` is an Argon2 hash within the memory cap.
pub fn check_hash(phc: &str) -> Result<(), PasswordError> {
    let h = PasswordHash::new(phc).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    if !matches!(h.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(PasswordError::BadHash(format!("algorithm {}", h.algorithm)));
    }
    let params = argon2::Params::try_from(&h).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    if params.m_cost() > MAX_M_COST_KIB {
        return Err(PasswordError::BadHash(format!("m={} KiB is above {MAX_M_COST_KIB}", params.m_cost())));
    }
    Ok(())
}

/// Verifies `password` against `phc` (blocking; tens of milliseconds).
pub fn verify_blocking(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Bounded, cached password verification.
pub struct PasswordVerifier {
    permits: tokio::sync::Semaphore,
    cache_key: [u8; 32],
    cache: Mutex<HashMap<[u8; 32], Instant>>,
    dummy: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for PasswordVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordVerifier").finish_non_exhaustive()
    }
}

impl PasswordVerifier {
    /// A verifier with a fresh random cache key.
    pub fn new() -> std::io::Result<PasswordVerifier> {
        let mut cache_key = [0u8; 32];
        getrandom::fill(&mut cache_key).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(PasswordVerifier {
            permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            cache_key,
            cache: Mutex::new(HashMap::new()),
            dummy: Arc::new(OnceLock::new()),
        })
    }

    fn cache_entry(&self, user: &str, password: &str, phc: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("HMAC takes any key length");
        // The hash is part of the entry, so a changed password hash never matches an old entry.
        for part in [user.as_bytes(), password.as_bytes(), phc.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Verifies `password` for a user whose hash is `phc` (`None`: unknown user, which is
    /// verified against a dummy hash and always fails).
    pub async fn verify(&self, user: &str, phc: Option<&str>, password: &str) -> bool {
        let entry = phc.map(|h| self.cache_entry(user, password, h));
        if let Some(e) = &entry {
            if self.cache.lock().get(e).is_some_and(|t| t.elapsed() < CACHE_TTL) {
                return true;
            }
        }
        let Ok(_permit) = self.permits.acquire().await else { return false };
        let phc = phc.map(str::to_owned);
        let password = password.to_owned();
        let dummy = self.dummy.clone();
        let ok = tokio::task::spawn_blocking(move || match phc {
            Some(h) => verify_blocking(&h, &password),
            None => {
                let d = dummy.get_or_init(|| hash_password("livetap-dummy-password").unwrap_or_default());
                let _ = verify_blocking(d, &password);
                false
            }
        })
        .await
        .unwrap_or(false);
        if let (true, Some(e)) = (ok, entry) {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_CAP {
                cache.retain(|_, t| t.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_CAP {
                    cache.clear();
                }
            }
            cache.insert(e, Instant::now());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_check_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(check_hash(&h).is_ok());
        assert!(verify_blocking(&h, "correct horse"));
        assert!(!verify_blocking(&h, "wrong horse"));
        assert_eq!(hash_password(""), Err(PasswordError::Empty));
        assert!(check_hash("plain-text").is_err());
        assert!(check_hash("$argon2id$v=19$m=1048576,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA").is_err());
    }

    #[tokio::test]
    async fn verifier_caches_successes_only() {
        let v = PasswordVerifier::new().unwrap();
        let h = hash_password("pw").unwrap();
        assert!(v.verify("alice", Some(&h), "pw").await);
        assert!(v.verify("alice", Some(&h), "pw").await, "from the cache");
        assert!(!v.verify("alice", Some(&h), "px").await);
        assert!(!v.verify("bob", None, "pw").await);
        assert_eq!(v.cache.lock().len(), 1);
    }
}
