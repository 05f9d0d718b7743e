//! TLS: a self-signed certificate made in the test, HTTP/1.1 and HTTP/2 chosen by ALPN, a live
//! stream over HTTP/2, certificate reload (what SIGHUP does), a broken reload that keeps the
//! old certificate, and the rule that plain HTTP is for loopback unless explicitly allowed.

mod common;

use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use livetap::config::{Config, Overrides, TlsConfig};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

/// A new self-signed certificate for localhost; returns its DER.
fn write_cert(dir: &Path) -> Vec<u8> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    ck.cert.der().to_vec()
}

/// A TLS connection trusting `ca` (DER), offering `alpn`.
async fn connect(addr: SocketAddr, ca: &[u8], alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(DEADLINE, connector.connect(name, tcp)).await.unwrap().expect("TLS handshake")
}

fn peer_cert(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn http1_get(mut s: TlsStream<TcpStream>, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_alpn_h1_h2_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let tls = TlsConfig { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem") };
    let server = start_server(|c| c.tls = Some(tls.clone())).await;
    let addr = server.addr;
    assert!(server.is_tls());

    // HTTP/1.1 when the client offers only that.
    let s = connect(addr, &first, &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(&s), first);
    let answer = http1_get(s, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // HTTP/2 by ALPN: a request, then a live stream that carries an ingested event.
    let s = connect(addr, &first, &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/healthz")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let req = http::Request::get("https://localhost/api/telemetry/traces/live?event=auth.success")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    ingest_https(addr, &first, &[json!({"type": "auth.success", "data": {"accountName": "h2"}})]).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !text.contains("event: trace") {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await.expect("a frame").unwrap().unwrap();
        if let Ok(d) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
    }
    assert!(text.contains("\"accountName\":\"h2\""), "{text}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut out)).await;
    assert!(!out.starts_with(b"HTTP/"), "plain HTTP was answered on the TLS port");

    // Reload (SIGHUP): new connections get the new certificate.
    let second = write_cert(dir.path());
    assert_ne!(first, second);
    assert!(server.reload_config((*server.hub.current()).clone()).await.unwrap().tls);
    let s = connect(addr, &second, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&s), second);
    assert!(http1_get(s, "/healthz").await.starts_with("HTTP/1.1 200"));
    // A broken file is refused and the running certificate stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    assert!(server.reload_config((*server.hub.current()).clone()).await.is_err());
    let s = connect(addr, &second, &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&s), second);
    drop(s);
    drop(body);
    server.shutdown().await;
}

async fn ingest_https(addr: SocketAddr, ca: &[u8], events: &[serde_json::Value]) {
    let mut s = connect(addr, ca, &[b"http/1.1"]).await;
    let body = ndjson(events);
    let head = format!(
        "POST /api/telemetry/ingest HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn plain_http_only_on_loopback_unless_allowed() {
    let listen = |addr: &str, allow: bool| Overrides {
        listen: Some(addr.parse().unwrap()),
        allow_plain_http: allow.then_some(true),
        ..Default::default()
    };
    let e = Config::load(None, listen("0.0.0.0:7070", false)).unwrap_err();
    assert!(e.to_string().contains("allow-plain-http"), "{e}");
    assert!(Config::load(None, listen("[::]:7070", false)).is_err());
    assert!(Config::load(None, listen("0.0.0.0:7070", true)).is_ok());
    assert!(Config::load(None, listen("127.0.0.1:7070", false)).is_ok());
    assert!(Config::load(None, listen("[::1]:7070", false)).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "listen = \"0.0.0.0:7443\"\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n").unwrap();
    assert!(Config::load(Some(&p), Overrides::default()).is_ok());
}

/// An HTTP/2 client connection over TLS: the request sender and the connection task, which
/// ends when the server closes the connection.
async fn h2_client(
    addr: SocketAddr,
    ca: &[u8],
) -> (hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>, tokio::task::JoinHandle<()>)
{
    let s = connect(addr, ca, &[b"h2"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(std::time::Duration::from_millis(200))
        .handshake(TokioIo::new(s))
        .await
        .unwrap();
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

fn h2_get(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection_caps_answer_and_idle_http2_closes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path());
    let tls = TlsConfig { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem") };
    let server = start_server(|c| {
        c.tls = Some(tls.clone());
        c.header_timeout_secs = 1;
        c.max_connections_per_ip = 2;
        c.per_ip_exempt = Vec::new();
    })
    .await;
    let addr = server.addr;

    // Two connections hold the address's two places with live streams (requests in flight).
    let (mut send_a, conn_a) = h2_client(addr, &ca).await;
    let live_a = send_a.send_request(h2_get("/api/telemetry/traces/live?event=auth.success")).await.unwrap();
    assert_eq!(live_a.status(), 200);
    let mut body_a = live_a.into_body();
    let (mut send_b, _conn_b) = h2_client(addr, &ca).await;
    let live_b = send_b.send_request(h2_get("/api/telemetry/traces/live")).await.unwrap();
    assert_eq!(live_b.status(), 200);

    // A third connection is refused with an answer, in the HTTP version ALPN chose.
    let answer = http1_get(connect(addr, &ca, &[b"http/1.1"]).await, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 5"), "{answer}");
    assert!(answer.contains("\"error\":\"too many connections\""), "{answer}");
    let (mut send_c, _conn_c) = h2_client(addr, &ca).await;
    let refused = send_c.send_request(h2_get("/healthz")).await.unwrap();
    assert_eq!(refused.status(), 429);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("too many connections from this address"));
    assert!(server.hub.stats().connections_refused >= 2);

    // Free one place; the stream on the other connection outlives the idle limit (1 s) because
    // its request is in flight, and still carries events.
    drop(live_b);
    drop(send_b);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(!conn_a.is_finished(), "a connection with a live stream was closed as idle");
    ingest_https(addr, &ca, &[json!({"type": "auth.success", "data": {"accountName": "kept"}})]).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !text.contains("kept") {
        let frame =
            tokio::time::timeout_at(deadline, body_a.frame()).await.expect("a frame").unwrap().unwrap();
        if let Ok(d) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
    }

    // An HTTP/2 connection with nothing in flight is closed after the idle limit, although its
    // client answers pings (hyper's client does).
    let (mut send_d, conn_d) = h2_client(addr, &ca).await;
    assert_eq!(send_d.send_request(h2_get("/healthz")).await.unwrap().status(), 200);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), conn_d).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection stayed open");
    assert!(server.hub.stats().idle_closed >= 1);
    drop(body_a);
    server.shutdown().await;
}
