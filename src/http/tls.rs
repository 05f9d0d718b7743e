//! TLS with rustls: loading the certificate chain and key from PEM files, ALPN (`h2`, then
//! `http/1.1`), and reloading both files without a restart (SIGHUP).
//!
//! A reload builds a complete new server configuration first and swaps it in only when it is
//! valid, so a half-written or mismatched file leaves the running certificate in place.
//! Connections already open keep the configuration they were accepted with.

use crate::config::TlsConfig;
use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("TLS certificate {path}: {message}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key file is unreadable or holds no private key.
    #[error("TLS key {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (the key does not match the certificate, for instance).
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
    }
}

/// The current TLS acceptor, replaceable at run time.
pub struct TlsReloader {
    files: TlsConfig,
    current: ArcSwap<TlsAcceptor>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader").field("files", &self.files).finish_non_exhaustive()
    }
}

fn load(files: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let cert_path = files.cert.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| TlsError::Cert { path: cert_path.clone(), message: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert { path: cert_path.clone(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cert_path, message: "no CERTIFICATE block".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| TlsError::Key { path: files.key.display().to_string(), message: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsReloader {
    /// Loads the certificate and key named in `files`.
    pub fn new(files: &TlsConfig) -> Result<TlsReloader, TlsError> {
        Ok(TlsReloader { files: files.clone(), current: ArcSwap::from_pointee(load(files)?) })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.current.load_full()
    }

    /// Reads the files again without putting them in use: a configuration reload loads
    /// everything that can fail before it changes anything, then calls
    /// [`TlsReloader::install`].
    pub fn load_again(&self) -> Result<Arc<TlsAcceptor>, TlsError> {
        Ok(Arc::new(load(&self.files)?))
    }

    /// Puts a certificate read by [`TlsReloader::load_again`] in use for new connections;
    /// connections already open keep the one they were accepted with.
    pub fn install(&self, acceptor: Arc<TlsAcceptor>) {
        self.current.store(acceptor);
    }
}
