//! Authentication: principals (API keys, password users, the admin token), live tokens,
//! Stalwart's webhook `X-Signature`, and the per-source limit on failed attempts.
//!
//! Secrets are compared in constant time so response timing reveals nothing about them.
//! [`Security`] bundles what the HTTP layer needs to decide who is calling; the mapping of
//! permissions onto routes lives with the routes (`src/http/mod.rs`).

pub mod password;
pub mod principal;
pub mod ratelimit;
pub mod token;

pub use principal::{Permission, Principal, Principals};
pub use token::{Grant, LiveTokens};

use arc_swap::ArcSwap;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were sent.
    #[error("missing credentials: send `Authorization: Bearer <token>` (or Basic, or a live `?token=`)")]
    Missing,
    /// The credentials are wrong.
    #[error("invalid credentials")]
    Invalid,
    /// The webhook signature is missing.
    #[error("missing X-Signature header")]
    MissingSignature,
    /// The webhook signature does not match the body.
    #[error("X-Signature does not match the body")]
    BadSignature,
    /// The live token is malformed, forged, or signed with a key that was rotated since.
    #[error("invalid live token")]
    BadToken,
    /// The live token expired.
    #[error("live token expired: fetch a new one from /api/telemetry/live/tracing-token or metrics-token")]
    Expired,
    /// The live token was issued for the other live endpoint.
    #[error("live token not valid for this endpoint (it was issued for the other live stream)")]
    WrongGrant,
}

/// Everything that decides who a caller is.
#[derive(Debug)]
pub struct Security {
    /// The admin principal and the configured ones. A configuration reload stores a new set
    /// (`Server::reload`); each request loads the set once, so it sees either the old or the
    /// new one whole.
    pub principals: ArcSwap<Principals>,
    /// Live token issuing and checking.
    pub tokens: LiveTokens,
    /// Failed authentications per source address.
    pub failures: ratelimit::FailureLimiter,
    /// Password verification (bounded, cached).
    pub passwords: password::PasswordVerifier,
}

/// A live token presented as `?token=`.
#[derive(Debug, Clone, Copy)]
pub struct PresentedToken<'a> {
    /// The token text.
    pub token: &'a str,
    /// What the endpoint it was presented on grants.
    pub grant: Grant,
    /// The request is an `EventSource` reconnect (numeric `Last-Event-ID`).
    pub reconnect: bool,
}

impl Security {
    /// Builds the principals (the admin token's and `config.principal`), the live-token key and
    /// the limiters. Errors are configuration mistakes or an unusable data directory.
    pub fn build(
        config: &crate::config::Config,
        admin_token: &str,
        keys: &crate::event::KeyRegistry,
    ) -> std::io::Result<Security> {
        let principals = Security::principals_of(config, admin_token, keys)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let tokens = LiveTokens::new(
            config.token_key.as_deref(),
            config.data_dir.as_deref(),
            config.live_token_ttl_secs,
            config.live_token_grace_secs,
        )?;
        Ok(Security {
            principals: ArcSwap::from_pointee(principals),
            tokens,
            failures: ratelimit::FailureLimiter::new(
                config.max_auth_failures,
                std::time::Duration::from_secs(config.auth_failure_window_secs),
            ),
            passwords: password::PasswordVerifier::new()?,
        })
    }

    /// The principals `config` defines, beside the admin token's.
    pub fn principals_of(
        config: &crate::config::Config,
        admin_token: &str,
        keys: &crate::event::KeyRegistry,
    ) -> Result<Principals, crate::config::ConfigError> {
        Principals::build(
            admin_token,
            &config.principal,
            keys,
            &config.query_limits(),
            config.max_subscribers_per_principal,
            config.ingest_rate_per_principal,
        )
    }

    /// Who sent the request: from its `Authorization` header if it has one, else from a live
    /// token. Permissions are checked by the caller.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        token: Option<PresentedToken<'_>>,
        now_secs: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        // One set of principals for the whole request, even across a reload.
        let principals = self.principals.load_full();
        if let Some(h) = authorization {
            return match principal::parse_authorization(h)? {
                principal::Credentials::Bearer(secret) => principals.by_api_key(secret).cloned(),
                principal::Credentials::Basic { user, password } => {
                    let p = principals.by_name(&user).filter(|p| p.password_hash.is_some()).cloned();
                    let phc = p.as_ref().and_then(|p| p.password_hash.as_deref());
                    if self.passwords.verify(&user, phc, &password).await {
                        p.ok_or(AuthError::Invalid)
                    } else {
                        Err(AuthError::Invalid)
                    }
                }
            };
        }
        let Some(t) = token else { return Err(AuthError::Missing) };
        let name = self.tokens.verify(t.token, t.grant, now_secs, t.reconnect)?;
        // The principal is looked up again, so one removed from the config (by a reload or a restart)
        // cannot use tokens it was issued before.
        principals.by_name(&name).cloned().ok_or(AuthError::BadToken)
    }
}

/// Checks an `Authorization` header value against the admin token.
pub fn check_bearer(header: Option<&[u8]>, token: &str) -> Result<(), AuthError> {
    let h = header.ok_or(AuthError::Missing)?;
    let presented =
        h.strip_prefix(b"Bearer ").or_else(|| h.strip_prefix(b"bearer ")).ok_or(AuthError::Invalid)?;
    if bool::from(presented.trim_ascii().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

/// Verifies Stalwart's webhook signature: standard base64 of HMAC-SHA256 over the raw body.
pub fn verify_signature(header: Option<&[u8]>, key: &str, body: &[u8]) -> Result<(), AuthError> {
    let mut check = SignatureCheck::new(key)?;
    check.update(body);
    check.verify(header)
}

/// A webhook signature computed over a body that arrives in pieces, so a streamed body is
/// checked without being held whole.
pub struct SignatureCheck {
    mac: Hmac<Sha256>,
}

impl SignatureCheck {
    /// Starts a check keyed with `key` (the configured `webhook-key`).
    pub fn new(key: &str) -> Result<SignatureCheck, AuthError> {
        let mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|_| AuthError::BadSignature)?;
        Ok(SignatureCheck { mac })
    }

    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.mac.update(piece);
    }

    /// Checks the `X-Signature` header against everything added.
    pub fn verify(self, header: Option<&[u8]>) -> Result<(), AuthError> {
        let h = header.ok_or(AuthError::MissingSignature)?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(h.trim_ascii())
            .map_err(|_| AuthError::BadSignature)?;
        // `verify_slice` compares in constant time.
        self.mac.verify_slice(&sig).map_err(|_| AuthError::BadSignature)
    }
}

/// Computes the signature header value for `body` (used by tests and the load harness).
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A new random token: 32 bytes from the OS, URL-safe base64.
pub fn generate_token() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// Where the admin token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOrigin {
    /// Given in the config or on the command line.
    Configured,
    /// Read from `admin-token` in the data directory (generated by an earlier run).
    Stored,
    /// Generated now (and stored in the data directory if one is set).
    Generated,
}

/// Finds the admin token: configured, else kept in `data_dir/admin-token`, else generated
/// (and kept there, readable by the owner only, so restarts keep it).
pub fn resolve_admin_token(
    configured: Option<&str>,
    data_dir: Option<&std::path::Path>,
) -> std::io::Result<(String, TokenOrigin)> {
    if let Some(t) = configured {
        return Ok((t.to_owned(), TokenOrigin::Configured));
    }
    let Some(dir) = data_dir else {
        return Ok((generate_token()?, TokenOrigin::Generated));
    };
    let path = dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => return Ok((t.trim().to_owned(), TokenOrigin::Stored)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let token = generate_token()?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    Ok((token, TokenOrigin::Generated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer() {
        assert_eq!(check_bearer(None, "t"), Err(AuthError::Missing));
        assert_eq!(check_bearer(Some(b"Bearer abc"), "abc"), Ok(()));
        assert_eq!(check_bearer(Some(b"Bearer abd"), "abc"), Err(AuthError::Invalid));
        assert_eq!(check_bearer(Some(b"Basic abc"), "abc"), Err(AuthError::Invalid));
    }

    #[test]
    fn signatures() {
        let body = br#"{"events":[]}"#;
        let s = sign("key", body);
        assert_eq!(verify_signature(Some(s.as_bytes()), "key", body), Ok(()));
        assert_eq!(verify_signature(Some(s.as_bytes()), "other", body), Err(AuthError::BadSignature));
        assert_eq!(verify_signature(Some(b"!!"), "key", body), Err(AuthError::BadSignature));
        assert_eq!(verify_signature(None, "key", body), Err(AuthError::MissingSignature));
        assert_eq!(generate_token().unwrap().len(), 43);
    }

    #[test]
    fn token_is_kept_in_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (a, o) = resolve_admin_token(None, Some(dir.path())).unwrap();
        assert_eq!(o, TokenOrigin::Generated);
        let (b, o) = resolve_admin_token(None, Some(dir.path())).unwrap();
        assert_eq!((a, o), (b, TokenOrigin::Stored));
        assert_eq!(resolve_admin_token(Some("x"), None).unwrap().1, TokenOrigin::Configured);
    }
}
