//! The HTTP side of a webhook: a small client (plain TCP or TLS, one kept-alive HTTP/1.1
//! connection, connect and request timeouts) and the sender task that POSTs the spool's
//! closed batches in order, retries with capped full-jitter backoff or the receiver's
//! `Retry-After`, and skips a batch the receiver refuses for good (a 4xx other than 408 and
//! 429).
//!
//! Each webhook has its own task and connection, so a slow or dead receiver delays only its
//! own webhook; the tap's thread never waits for it (it only appends to the spool).

use super::format::{parse_retry_after, signature, verdict, Verdict};
use super::spool::{read_batch, Batch};
use super::{Running, WebhookConfig};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Bytes of a receiver's answer kept for logs and the test endpoint.
pub const EXCERPT_BYTES: usize = 512;
/// Bytes of a receiver's answer read at most (the rest is not waited for).
const READ_BYTES: usize = 64 << 10;
/// Longest `Retry-After` honoured: a receiver asking for more is asked again after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection within `connect-timeout`.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// Connecting failed (refused, unreachable, TLS handshake).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No complete answer within `request-timeout`.
    #[error("no answer within {0:?}")]
    RequestTimeout(Duration),
    /// The request or its answer failed on the wire.
    #[error("request failed: {0}")]
    Request(String),
}

/// A receiver's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: HeaderMap,
    /// The start of its body (at most [`EXCERPT_BYTES`], lossily decoded).
    pub excerpt: String,
}

/// Something both a TCP and a TLS stream are.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how a webhook connects.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    authority: HeaderValue,
    uri: http::Uri,
    tls: Option<tokio_rustls::TlsConnector>,
    server_name: Option<rustls_pki_types::ServerName<'static>>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Target {
    /// The target of `cfg`; fails for a URL or a CA file that cannot be used.
    pub fn new(cfg: &WebhookConfig) -> Result<Target, String> {
        let uri: http::Uri = cfg.url.parse().map_err(|e| format!("url: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("url: must start with http:// or https://".into()),
        };
        let host =
            uri.host().ok_or("url: no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = HeaderValue::from_str(uri.authority().map_or("", |a| a.as_str()))
            .map_err(|e| format!("url: {e}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let (tls, server_name) = if https {
            let roots = root_store(cfg.ca_file.as_deref())?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name =
                rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("url: {e}"))?;
            (Some(tokio_rustls::TlsConnector::from(Arc::new(config))), Some(name))
        } else {
            (None, None)
        };
        Ok(Target {
            host,
            port,
            authority,
            uri: path.parse().map_err(|e: http::uri::InvalidUri| format!("url: {e}"))?,
            tls,
            server_name,
            connect_timeout: cfg.connect_timeout(),
            request_timeout: cfg.request_timeout(),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let work = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| SendError::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match (&self.tls, &self.server_name) {
                (Some(tls), Some(name)) => Box::new(
                    tls.connect(name.clone(), tcp)
                        .await
                        .map_err(|e| SendError::Connect(format!("TLS: {e}")))?,
                ),
                _ => Box::new(tcp),
            };
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| SendError::Connect(e.to_string()))?;
            // The connection's driver ends when the connection closes or `send` is dropped.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(send)
        };
        tokio::time::timeout(self.connect_timeout, work)
            .await
            .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
    }
}

/// The trusted roots: `ca-file` when given, else the system's bundle.
fn root_store(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    const SYSTEM: [&str; 4] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    let mut roots = rustls::RootCertStore::empty();
    let files: Vec<&std::path::Path> = match ca_file {
        Some(f) => vec![f],
        None => SYSTEM.iter().map(std::path::Path::new).filter(|p| p.exists()).take(1).collect(),
    };
    for f in files {
        let certs = CertificateDer::pem_file_iter(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("{}: {e}", f.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates: set ca-file, or install the system bundle".into());
    }
    Ok(roots)
}

/// A connection to one receiver, reopened when it breaks.
pub struct Client {
    target: Target,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client for `target` (connects on first use).
    pub fn new(target: Target) -> Client {
        Client { target, conn: None }
    }

    /// POSTs `body` with `headers` and reads the answer (status, headers, an excerpt), within
    /// the connect and request timeouts.
    pub async fn post(&mut self, headers: &HeaderMap, body: Bytes) -> Result<Answer, SendError> {
        let mut send = match self.conn.take() {
            Some(s) => s,
            None => self.target.connect().await?,
        };
        if send.ready().await.is_err() {
            // The receiver closed the kept-alive connection meanwhile.
            send = self.target.connect().await?;
        }
        let mut req = http::Request::post(self.target.uri.clone())
            .body(Full::new(body))
            .map_err(|e| SendError::Request(e.to_string()))?;
        *req.headers_mut() = headers.clone();
        req.headers_mut().insert(http::header::HOST, self.target.authority.clone());
        let timeout = self.target.request_timeout;
        let work = async {
            let resp = send.send_request(req).await.map_err(|e| SendError::Request(e.to_string()))?;
            let (parts, mut body) = resp.into_parts();
            let mut read = Vec::new();
            let mut complete = true;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| SendError::Request(e.to_string()))?;
                if let Some(d) = frame.data_ref() {
                    read.extend_from_slice(&d[..d.len().min(READ_BYTES - read.len().min(READ_BYTES))]);
                    if read.len() >= READ_BYTES {
                        complete = false;
                        break;
                    }
                }
            }
            let excerpt = String::from_utf8_lossy(&read[..read.len().min(EXCERPT_BYTES)]).into_owned();
            Ok((Answer { status: parts.status.as_u16(), headers: parts.headers, excerpt }, complete))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok((answer, complete))) => {
                // Keep the connection only when its answer was read to the end.
                if complete {
                    self.conn = Some(send);
                }
                Ok(answer)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SendError::RequestTimeout(timeout)),
        }
    }
}

/// The headers of every request of `cfg`, in Stalwart's order (each overriding the last):
/// `Content-Type`, the custom headers, `Authorization`. `X-Signature` and `Idempotency-Key`
/// depend on the body and are added per request ([`request_headers`]).
pub fn static_headers(cfg: &WebhookConfig) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(cfg.format.content_type()));
    h.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("livetap/", env!("CARGO_PKG_VERSION"))),
    );
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("headers: invalid header name `{k}`"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("headers: invalid value for `{k}`"))?;
        h.insert(name, value);
    }
    if let Some(auth) = cfg.auth.as_ref().map(super::Auth::header_value) {
        let mut v = HeaderValue::from_str(&auth).map_err(|_| "auth: invalid characters".to_string())?;
        v.set_sensitive(true);
        h.insert(http::header::AUTHORIZATION, v);
    }
    Ok(h)
}

/// The headers of one request: the static ones, the idempotency key of the batch (the same
/// on every resend) and the body's signature when a key is set.
pub fn request_headers(base: &HeaderMap, cfg: &WebhookConfig, ids: (u64, u64), body: &[u8]) -> HeaderMap {
    let mut h = base.clone();
    let key = format!("{}-{}-{}", cfg.name, ids.0, ids.1);
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(HeaderName::from_static("idempotency-key"), v);
    }
    if let Some(k) = cfg.signature_key.as_deref().filter(|k| !k.is_empty()) {
        if let Ok(v) = HeaderValue::from_str(&signature(k.as_bytes(), body)) {
            h.insert(HeaderName::from_static("x-signature"), v);
        }
    }
    h
}

/// Acknowledges a batch off the async workers (the lock, the cursor file, a segment deletion).
async fn ack(running: &Arc<Running>, at: super::spool::BatchRef, end: u64, events: u64) {
    let r = running.clone();
    let _ = tokio::task::spawn_blocking(move || r.spool.lock().ack(&at, end, events)).await;
}

/// Sends `running`'s spooled batches until `stop` is cancelled.
pub async fn run(running: Arc<Running>, stop: tokio_util::sync::CancellationToken) {
    let cfg = &running.config;
    let c = &running.counters;
    let mut client = Client::new(running.target.clone());
    let mut batch = Batch::default();
    let mut body = Vec::new();
    let mut attempt: u32 = 0;
    let mut failing = false;
    loop {
        // The spool's lock may be held by the tap's thread across a write and an fsync, and
        // the batch is read from a file: both off the async workers.
        let r = running.clone();
        let Ok((next, b)) = tokio::task::spawn_blocking(move || {
            let next = r.spool.lock().next_batch();
            let read = next.as_ref().map(|at| read_batch(at, &mut batch));
            (next.map(|at| (at, read)), batch)
        })
        .await
        else {
            return;
        };
        batch = b;
        let Some((at, read)) = next else {
            c.oldest_ms.store(0, Ordering::Relaxed);
            tokio::select! {
                _ = running.wake.notified() => continue,
                _ = stop.cancelled() => return,
            }
        };
        match read {
            Some(Ok(Some(()))) => {}
            _ => {
                // Deleted by the cap while it was read, or damaged: look again from the cursor
                // (the cap moved it on), after a moment so a damaged file does not spin.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        }
        c.oldest_ms.store(batch.cut_ms.max(1), Ordering::Relaxed);
        cfg.format.write_body(batch.jsons(), &mut body);
        let ids = batch.id_range();
        let headers = request_headers(&running.headers, cfg, ids, &body);
        let n = batch.events.len() as u64;
        let result = tokio::select! {
            r = client.post(&headers, Bytes::copy_from_slice(&body)) => r,
            _ = stop.cancelled() => return,
        };
        let wait = match result {
            Ok(a) => match verdict(a.status) {
                Verdict::Delivered => {
                    c.sent_events.fetch_add(n, Ordering::Relaxed);
                    c.sent_batches.fetch_add(1, Ordering::Relaxed);
                    ack(&running, at, batch.end, n).await;
                    if failing {
                        tracing::info!(webhook = %cfg.name, "webhook receiver accepts batches again");
                    }
                    failing = false;
                    attempt = 0;
                    continue;
                }
                Verdict::Refused => {
                    c.failed_batches.fetch_add(1, Ordering::Relaxed);
                    c.failed_events.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        webhook = %cfg.name, status = a.status, first_id = ids.0, last_id = ids.1,
                        answer = %a.excerpt, "webhook receiver refused a batch; it is skipped"
                    );
                    ack(&running, at, batch.end, n).await;
                    attempt = 0;
                    continue;
                }
                Verdict::Retry => {
                    if !failing {
                        tracing::warn!(
                            webhook = %cfg.name, status = a.status, answer = %a.excerpt,
                            "webhook receiver failed; retrying"
                        );
                    }
                    let asked = a
                        .headers
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    asked.map(|d| d.min(MAX_RETRY_AFTER))
                }
            },
            Err(e) => {
                if !failing {
                    tracing::warn!(webhook = %cfg.name, error = %e, "webhook request failed; retrying");
                }
                None
            }
        };
        failing = true;
        c.retries.fetch_add(1, Ordering::Relaxed);
        let delay = wait.unwrap_or_else(|| cfg.backoff(attempt, fastrand::f64()));
        attempt = attempt.saturating_add(1);
        let until = Instant::now() + delay;
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = stop.cancelled() => return,
        }
    }
}
