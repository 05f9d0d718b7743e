//! Outgoing webhooks against real HTTP receivers written here (hyper servers): every request's
//! `X-Signature` is checked with an HMAC-SHA256 built from SHA-256 alone (independent of
//! livetap's `hmac` crate); receivers that fail with 503 and `Retry-After`, hang, or refuse a
//! batch with 400; a `kill -9` of the real binary during an outage and a restart; the test
//! send; bad configuration refused with its line.

mod common;

use base64::Engine;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use livetap::tap::webhook::WebhookConfig;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// HMAC-SHA256 (RFC 2104) from SHA-256 alone.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut inner = Sha256::new();
    inner.update(&ipad);
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(&opad);
    outer.update(inner);
    outer.finalize().into()
}

#[test]
fn independent_hmac_matches_rfc4231() {
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

/// What a receiver answers.
#[derive(Clone)]
enum Reply {
    Status(u16, Vec<(&'static str, String)>, &'static str),
    Hang,
}

/// One request a receiver got, and what it answered.
#[derive(Clone, Debug)]
struct Got {
    at: Instant,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    status: u16,
}

impl Got {
    fn events(&self) -> Vec<Value> {
        let v: Value = serde_json::from_slice(&self.body).expect("a JSON body");
        v["events"].as_array().expect("an events array").clone()
    }
}

type Behaviour = Box<dyn Fn(usize, &Got) -> Reply + Send + Sync>;

struct State {
    behaviour: Mutex<Behaviour>,
    got: Mutex<Vec<Got>>,
    /// The key every request's signature is checked with.
    key: Option<Vec<u8>>,
    bad_signatures: AtomicUsize,
    hung: AtomicUsize,
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
}

/// Serves one receiver connection (plain or TLS) with hyper.
async fn serve_conn<I>(io: I, st: Arc<State>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let st = st.clone();
        async move {
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
            if let Some(key) = &st.key {
                let want = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &body));
                if headers.get("x-signature") != Some(&want) {
                    st.bad_signatures.fetch_add(1, Ordering::SeqCst);
                }
            }
            let mut got = Got { at: Instant::now(), headers, body, status: 0 };
            let n = st.got.lock().unwrap().len();
            let reply = (st.behaviour.lock().unwrap())(n, &got);
            let (status, extra, text) = match reply {
                Reply::Status(s, h, t) => (s, h, t),
                Reply::Hang => {
                    st.hung.fetch_add(1, Ordering::SeqCst);
                    // Longer than any test; livetap gives up first.
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    (500, vec![], "")
                }
            };
            got.status = status;
            st.got.lock().unwrap().push(got);
            let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from_static(text.as_bytes())));
            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            resp.headers_mut().insert("server", "test-receiver".parse().unwrap());
            for (k, v) in extra {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
}

impl Receiver {
    async fn start(key: Option<&str>, behaviour: Behaviour) -> Receiver {
        Receiver::start_with(key, behaviour, None).await
    }

    /// A receiver speaking HTTPS with `tls`.
    async fn start_with(
        key: Option<&str>,
        behaviour: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            behaviour: Mutex::new(behaviour),
            got: Mutex::new(Vec::new()),
            key: key.map(|k| k.as_bytes().to_vec()),
            bad_signatures: AtomicUsize::new(0),
            hung: AtomicUsize::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_conn(s, st).await;
                            }
                        }
                        None => serve_conn(stream, st).await,
                    }
                });
            }
        });
        Receiver { addr, state }
    }

    fn got(&self) -> Vec<Got> {
        self.state.got.lock().unwrap().clone()
    }

    /// Events of the requests it accepted (2xx).
    fn delivered(&self) -> Vec<Value> {
        self.got().iter().filter(|g| (200..300).contains(&g.status)).flat_map(Got::events).collect()
    }

    fn assert_signatures(&self) {
        assert_eq!(self.state.bad_signatures.load(Ordering::SeqCst), 0, "a request had a wrong X-Signature");
    }
}

fn ok() -> Behaviour {
    Box::new(|_, _| Reply::Status(200, vec![], "ok"))
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hook(table: &str) -> WebhookConfig {
    let c =
        livetap::config::Config::from_toml(&format!("[[webhook]]\n{table}\n")).expect("webhook table parses");
    c.webhook.into_iter().next().unwrap()
}

fn auth_failed(i: usize) -> Value {
    json!({"type": "auth.failed", "data": {"accountName": format!("u{i}"), "remoteIp": "192.0.2.7"}})
}

fn ehlo(i: usize) -> Value {
    json!({"type": "smtp.ehlo", "data": {"domain": format!("d{i}.example")}})
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["id"].as_str().unwrap().parse().unwrap()).collect()
}

#[tokio::test]
async fn signed_batches_in_stalwart_shape_with_only_matching_events() {
    let recv = Receiver::start(Some("k3y"), ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/hook?x=1", recv.addr);
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        c.webhook = vec![hook(&format!(
            r#"name = "sec"
url = "{url}"
query = "event=auth.failed"
signature-key = "k3y"
headers = {{ "X-Team" = "mail" }}
auth = {{ username = "ops", password = "pw" }}
max-events = 4
max-delay-ms = 50"#
        ))];
    })
    .await;
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(auth_failed(i));
        batch.push(ehlo(i));
    }
    ingest_ok(server.addr, &batch).await;
    wait_for("10 events", DEADLINE, || recv.delivered().len() >= 10).await;
    recv.assert_signatures();
    let got = recv.got();
    // Batches of at most 4, in order, each with its idempotency key and headers.
    let mut all = Vec::new();
    for g in &got {
        let events = g.events();
        assert!(events.len() <= 4, "{}", events.len());
        let ids = ids(&events);
        assert_eq!(g.headers["idempotency-key"], format!("sec-{}-{}", ids[0], ids[ids.len() - 1]));
        assert_eq!(g.headers["content-type"], "application/json");
        assert_eq!(g.headers["x-team"], "mail");
        assert_eq!(g.headers["authorization"], "Basic b3BzOnB3");
        all.extend(events);
    }
    assert_eq!(all.len(), 10);
    let ids = ids(&all);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["type"], "auth.failed");
        assert_eq!(e["data"]["accountName"], format!("u{i}"));
        assert!(e.get("text").is_none() && e.get("details").is_none(), "{e}");
        assert!(e["createdAt"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    // The counters reach the live metrics and the Prometheus exposition.
    let w = server.webhooks.get("sec").unwrap();
    wait_for("sent-events 10", DEADLINE, || w.counters.sent_events.load(Ordering::Relaxed) == 10).await;
    let mut text = String::new();
    let deadline = Instant::now() + DEADLINE;
    while !text.contains("webhook_sec_sent_events") {
        assert!(Instant::now() < deadline, "no webhook metrics in /metrics: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = request_auth(server.addr, "GET", "/metrics", b"").await.text();
    }
    assert!(text.contains("webhook_sec_spooled_bytes"), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_receiver_failing_with_503_for_20s_gets_everything_and_retry_after_is_honoured() {
    let first: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let f = first.clone();
    let recv = Receiver::start(
        None,
        Box::new(move |_, _| {
            let start = *f.lock().unwrap().get_or_insert_with(Instant::now);
            if start.elapsed() < Duration::from_secs(20) {
                Reply::Status(503, vec![("retry-after", "3".into())], "busy")
            } else {
                Reply::Status(200, vec![], "ok")
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", recv.addr);
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        // A tiny backoff, so only Retry-After can explain the spacing.
        c.webhook = vec![hook(&format!(
            "name = \"r\"\nurl = \"{url}\"\nmax-delay-ms = 50\nretry-initial-ms = 10\nretry-max-secs = 1"
        ))];
    })
    .await;
    let events: Vec<Value> = (0..30).map(auth_failed).collect();
    ingest_ok(server.addr, &events[..15]).await;
    wait_for("the first 503", DEADLINE, || !recv.got().is_empty()).await;
    ingest_ok(server.addr, &events[15..]).await;
    wait_for("all 30 events", Duration::from_secs(60), || recv.delivered().len() >= 30).await;
    let got = recv.got();
    let failed: Vec<&Got> = got.iter().filter(|g| g.status == 503).collect();
    assert!(failed.len() >= 2, "{}", failed.len());
    // A resent batch is the same bytes under the same idempotency key.
    let mut bodies: HashMap<&str, &[u8]> = HashMap::new();
    for g in &got {
        let prev = bodies.entry(g.headers["idempotency-key"].as_str()).or_insert(&g.body[..]);
        assert_eq!(*prev, &g.body[..], "a batch changed between sends");
    }
    assert_eq!(bodies[failed[0].headers["idempotency-key"].as_str()], &failed[1].body[..]);
    // Each retry came at least the 3 s Retry-After asked for after the previous answer.
    for w in got.windows(2) {
        if w[0].status == 503 {
            let gap = w[1].at - w[0].at;
            assert!(gap >= Duration::from_millis(2900), "retried after {gap:?}");
        }
    }
    let mut names: Vec<String> =
        recv.delivered().iter().map(|e| e["data"]["accountName"].as_str().unwrap().to_string()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 30);
    let w = server.webhooks.get("r").unwrap();
    assert!(w.counters.retries.load(Ordering::Relaxed) >= 2);
    server.shutdown().await;
}

#[tokio::test]
async fn a_hanging_receiver_times_out_and_does_not_delay_another_webhook() {
    let hang = Arc::new(AtomicBool::new(true));
    let h = hang.clone();
    let slow = Receiver::start(
        None,
        Box::new(
            move |_, _| {
                if h.load(Ordering::SeqCst) {
                    Reply::Hang
                } else {
                    Reply::Status(200, vec![], "ok")
                }
            },
        ),
    )
    .await;
    let fast = Receiver::start(None, ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let (su, fu) = (format!("http://{}/", slow.addr), format!("http://{}/", fast.addr));
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        c.webhook = vec![
            hook(&format!(
                "name = \"slow\"\nurl = \"{su}\"\nmax-events = 10\nmax-delay-ms = 50\nrequest-timeout-secs = 1\nretry-initial-ms = 50\nretry-max-secs = 1"
            )),
            hook(&format!("name = \"fast\"\nurl = \"{fu}\"\nmax-events = 10\nmax-delay-ms = 50")),
        ];
    })
    .await;
    let events: Vec<Value> = (0..50).map(auth_failed).collect();
    ingest_ok(server.addr, &events).await;
    wait_for("the fast receiver's 50 events", DEADLINE, || fast.delivered().len() >= 50).await;
    // All of it while the slow receiver held every request.
    assert!(slow.state.hung.load(Ordering::SeqCst) >= 1);
    assert!(slow.delivered().is_empty());
    let w = server.webhooks.get("slow").unwrap();
    wait_for("two timed-out requests", DEADLINE, || w.counters.retries.load(Ordering::Relaxed) >= 2).await;
    hang.store(false, Ordering::SeqCst);
    wait_for("the slow receiver's 50 events", Duration::from_secs(30), || {
        let mut ids = ids(&slow.delivered());
        ids.sort();
        ids.dedup();
        ids.len() == 50
    })
    .await;
    assert_eq!(ids(&fast.delivered()).len(), 50, "the fast receiver got nothing twice");
    server.shutdown().await;
}

#[tokio::test]
async fn a_refused_batch_is_skipped_and_counted_and_later_batches_still_go() {
    let recv = Receiver::start(
        None,
        Box::new(|n, _| {
            if n == 0 {
                Reply::Status(400, vec![], "bad batch: no thanks")
            } else {
                Reply::Status(200, vec![], "ok")
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", recv.addr);
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        c.webhook = vec![hook(&format!("name = \"f\"\nurl = \"{url}\"\nmax-events = 2\nmax-delay-ms = 50"))];
    })
    .await;
    ingest_ok(server.addr, &[auth_failed(0), auth_failed(1)]).await;
    wait_for("the refused batch", DEADLINE, || !recv.got().is_empty()).await;
    ingest_ok(server.addr, &[auth_failed(2), auth_failed(3)]).await;
    wait_for("the next batch", DEADLINE, || recv.delivered().len() >= 2).await;
    let got = recv.got();
    assert_eq!(got[0].status, 400);
    let refused: Vec<Value> = got[0].events();
    assert_eq!(refused[0]["data"]["accountName"], "u0");
    let delivered = recv.delivered();
    assert_eq!(
        delivered.iter().map(|e| e["data"]["accountName"].as_str().unwrap()).collect::<Vec<_>>(),
        ["u2", "u3"]
    );
    // The refused batch is never sent again.
    assert_eq!(got.iter().filter(|g| g.status == 400).count(), 1);
    let f = server.webhooks.get("f").unwrap();
    let c = &f.counters;
    wait_for("the counters", DEADLINE, || c.sent_events.load(Ordering::Relaxed) == 2).await;
    assert_eq!(c.failed_batches.load(Ordering::Relaxed), 1);
    assert_eq!(c.failed_events.load(Ordering::Relaxed), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn test_send_reports_the_receivers_answer() {
    let recv = Receiver::start(
        Some("t0p"),
        Box::new(|_, _| Reply::Status(202, vec![("retry-after", "7".into())], "thanks!")),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/in", recv.addr);
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        c.webhook = vec![hook(&format!(
            "name = \"t\"\nurl = \"{url}\"\nsignature-key = \"t0p\"\nformat = \"ndjson\""
        ))];
    })
    .await;
    let r = request_auth(server.addr, "POST", "/api/livetap/webhooks/t/test", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["status"], 202, "{j}");
    assert_eq!(j["delivered"], true);
    assert_eq!(j["body"], "thanks!");
    assert_eq!(j["headers"]["retry-after"], "7");
    assert_eq!(j["headers"]["server"], "test-receiver");
    assert!(j["elapsedMs"].as_f64().unwrap() >= 0.0);
    recv.assert_signatures();
    let got = recv.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["content-type"], "application/x-ndjson");
    let line: Value = serde_json::from_slice(got[0].body.strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(line["id"], "0");
    assert_eq!(line["type"], "livetap.webhook-test");
    // Not through the spool.
    assert_eq!(server.webhooks.get("t").unwrap().counters.spooled_events.load(Ordering::Relaxed), 0);
    let r = request_auth(server.addr, "POST", "/api/livetap/webhooks/nope/test", b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not found");
    assert!(r.json()["detail"].as_str().unwrap().contains("nope"));
    assert_eq!(request(server.addr, "POST", "/api/livetap/webhooks/t/test", &[], b"").await.status, 401);
    server.shutdown().await;
}

/// A counter of the Prometheus exposition whose name contains `part`.
async fn prometheus_value(addr: SocketAddr, part: &str) -> Option<f64> {
    let text = request_auth(addr, "GET", "/metrics", b"").await.text();
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(part))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn kill_9_during_an_outage_then_restart_delivers_every_event_at_least_once() {
    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    let recv = Receiver::start(
        Some("s3cret"),
        Box::new(move |_, _| {
            if d.load(Ordering::SeqCst) {
                Reply::Status(503, vec![], "down")
            } else {
                Reply::Status(200, vec![], "ok")
            }
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("livetap.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\n\n[[webhook]]\nname = \"k9\"\nurl = \"http://{}/hook\"\nquery = \"event=auth.failed\"\n\
             signature-key = \"s3cret\"\nmax-events = 7\nmax-delay-ms = 100\nretry-initial-ms = 50\nretry-max-secs = 1\n",
            dir.path().join("data").display(),
            recv.addr
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut lt = Livetap::start(&["--config", cfg]);
    let mut events = Vec::new();
    for i in 0..100 {
        events.push(auth_failed(i));
        events.push(ehlo(i));
    }
    ingest_ok(lt.addr, &events).await;
    // Every matching event is in the spool file before the kill.
    let deadline = Instant::now() + DEADLINE;
    while prometheus_value(lt.addr, "webhook_k9_spooled_events").await != Some(100.0) {
        assert!(Instant::now() < deadline, "the spool did not reach 100 events; stderr: {}", lt.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lt.child.kill().unwrap();
    lt.child.wait().unwrap();
    assert!(recv.delivered().is_empty());
    down.store(false, Ordering::SeqCst);
    let lt = Livetap::start(&["--config", cfg]);
    wait_for("100 distinct events after the restart", Duration::from_secs(30), || {
        let names: std::collections::BTreeSet<String> =
            recv.delivered().iter().map(|e| e["data"]["accountName"].as_str().unwrap().to_string()).collect();
        names.len() == 100
    })
    .await;
    recv.assert_signatures();
    // Duplicates, if any, carry the same id: an event's id never changes.
    let mut by_name: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for e in recv.delivered() {
        assert_eq!(e["type"], "auth.failed", "{e}");
        by_name
            .entry(e["data"]["accountName"].as_str().unwrap().into())
            .or_default()
            .insert(e["id"].as_str().unwrap().into());
    }
    assert!(by_name.values().all(|ids| ids.len() == 1), "{by_name:?}");
    let distinct: std::collections::BTreeSet<&String> = by_name.values().flatten().collect();
    assert_eq!(distinct.len(), 100);
    drop(lt);
}

#[test]
fn bad_webhook_configuration_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\n\n[[webhook]]\nname = \"ok\"\nurl = \"http://127.0.0.1:9/\"\n\n[[webhook]]\nname = \"no good\"\nurl = \"http://127.0.0.1:9/\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = livetap_command(1).args(["--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 8") && err.contains("webhook name `no good`"), "{err}");
    // A check across the table's fields names the table's line and the webhook.
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\n[[webhook]]\nname = \"big\"\nurl = \"http://127.0.0.1:9/\"\nmax-spool-bytes = 1000\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = livetap_command(1).args(["--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("webhook `big`: max-spool-bytes"), "{err}");
    // Without a data directory.
    std::fs::write(&config, "[[webhook]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/\"\n").unwrap();
    let out = livetap_command(1).args(["--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set data-dir"), "{err}");
}

#[test]
fn readme_webhook_example_is_a_valid_configuration() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rest = &readme[readme.find("Outgoing webhooks example:").expect("marker in README")..];
    let body = &rest[rest.find("```toml\n").expect("a toml block") + 8..];
    let text = &body[..body.find("```").unwrap()];
    let c = livetap::config::Config::from_toml(text).unwrap_or_else(|e| panic!("README example: {e}"));
    c.validate().unwrap();
    let w = &c.webhook[0];
    assert_eq!(w.name, "security");
    assert_eq!(w.max_spool_bytes, 1 << 30);
    // The example shows the defaults: the same table without them is equal.
    let minimal = "[[webhook]]\nname = \"security\"\nurl = \"https://siem.example.org/hooks/mail\"\nquery = \"event=auth.failed,security.*\"\nsignature-key = \"change-me\"\nheaders = { \"X-Source\" = \"livetap\" }\nauth = { token = \"s3cr3t-bearer\" }\n";
    let m = livetap::config::Config::from_toml(minimal).unwrap();
    assert_eq!(&m.webhook[0], w);
}

#[tokio::test]
async fn a_full_spool_drops_the_oldest_batches_and_reports_them() {
    let recv = Receiver::start(None, Box::new(|_, _| Reply::Status(503, vec![], "down"))).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", recv.addr);
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        c.webhook = vec![hook(&format!(
            "name = \"tiny\"\nurl = \"{url}\"\nmax-bytes = 1024\nmax-events = 5\nmax-spool-bytes = 8192\nmax-delay-ms = 50\nretry-initial-ms = 20\nretry-max-secs = 1"
        ))];
    })
    .await;
    let mut errors =
        SseClient::connect(server.addr, "/api/livetap/live?event=telemetry.webhook-error", Some(TOKEN)).await;
    for chunk in 0..10 {
        let events: Vec<Value> = (chunk * 20..chunk * 20 + 20).map(auth_failed).collect();
        ingest_ok(server.addr, &events).await;
    }
    let reported = errors.collect_events(1, DEADLINE).await;
    assert!(!reported.is_empty(), "no telemetry.webhook-error event");
    let e = &reported[0];
    assert!(e["data"]["details"].as_str().unwrap().contains("webhook tiny"), "{e}");
    assert!(e["data"]["total"].as_u64().unwrap() > 0, "{e}");
    let tiny = server.webhooks.get("tiny").unwrap();
    let c = &tiny.counters;
    assert!(c.dropped_events.load(Ordering::Relaxed) > 0);
    wait_for("the spool under its cap", DEADLINE, || {
        c.spooled_bytes.load(Ordering::Relaxed) <= 8192 + 1024 + 64
    })
    .await;
    // The error events are never sent to a webhook (this one wants every event).
    assert!(recv.got().iter().flat_map(Got::events).all(|e| e["type"] != "telemetry.webhook-error"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_notification_reaches_a_webhook_outside_its_query() {
    let recv = Receiver::start(None, ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", recv.addr);
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        c.webhook = vec![hook(&format!("name = \"n\"\nurl = \"{url}\"\nquery = \"event=nothing.ever\""))];
    })
    .await;
    use livetap::tap::Notify;
    let raw = json!({"type": "telemetry.alert", "data": {"details": "queue too long"}}).to_string();
    let raw = livetap::event::RawValue::parse_serde(raw.as_bytes()).unwrap();
    let ev = Arc::new(server.hub.builder().build(&raw, 1_700_000_000).unwrap());
    let hooks: Arc<dyn Notify> = server.webhooks.clone();
    assert_eq!(hooks.names(), ["n"]);
    assert!(hooks.notify("n", livetap::tap::TapEvent { seq: 41, event: ev.clone() }));
    assert!(!hooks.notify("other", livetap::tap::TapEvent { seq: 41, event: ev }));
    wait_for("the notification", DEADLINE, || !recv.delivered().is_empty()).await;
    let e = &recv.delivered()[0];
    assert_eq!(e["id"], "42");
    assert_eq!(e["type"], "telemetry.alert");
    assert_eq!(e["data"]["details"], "queue too long");
    server.shutdown().await;
}

/// An `[[alert]]` that names a webhook: the real evaluator fires on a gauge pushed over HTTP,
/// and the webhook, whose own query wants nothing, sends the `telemetry.alert` event signed.
/// When the gauge falls back, the `telemetry.alert-resolved` event follows on the same webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_notifies_the_webhook_it_names() {
    let recv = Receiver::start(Some("alert-key"), ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", recv.addr);
    let text = format!(
        r#"alert-interval = "200ms"

[[webhook]]
name = "ops"
url = "{url}"
query = "event=nothing.ever"
signature-key = "alert-key"
max-delay-ms = 50

[[alert]]
name = "queue-long"
condition = "queue.count > 100"
webhook = "ops"
"#
    );
    let file = livetap::Config::from_toml(&text).unwrap();
    let server = start_server(|c| {
        c.data_dir = Some(dir.path().to_path_buf());
        c.webhook = file.webhook.clone();
        c.alert = file.alert.clone();
        c.alert_interval = file.alert_interval;
    })
    .await;
    let gauge = |v: u64| common::ndjson(&[json!({"metric": "queue.count", "type": "gauge", "value": v})]);
    let r = ingest(server.addr, &gauge(5000)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the alert on the webhook", DEADLINE, || !recv.delivered().is_empty()).await;
    let fired = recv.delivered()[0].clone();
    assert_eq!(fired["type"], "telemetry.alert");
    assert_eq!(fired["data"]["id"], "queue-long");
    assert_eq!(fired["data"]["state"], "firing");
    assert_eq!(fired["data"]["value"], "queue.count = 5000");
    let r = ingest(server.addr, &gauge(3)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the resolution on the webhook", DEADLINE, || {
        recv.delivered().iter().any(|e| e["type"] == "telemetry.alert-resolved")
    })
    .await;
    let all = recv.delivered();
    // Exactly one firing and one resolution (no `repeat`), in that order, each with the id the
    // hub gave the published event.
    let types: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["telemetry.alert", "telemetry.alert-resolved"]);
    assert!(ids(&all)[0] < ids(&all)[1]);
    recv.assert_signatures();
    server.shutdown().await;
}

#[tokio::test]
async fn https_receivers_are_verified_against_the_ca_file() {
    use tokio_rustls::rustls;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
    let recv =
        Receiver::start_with(Some("k"), ok(), Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let port = recv.addr.port();
    let ca_path = ca.display().to_string();
    let data = dir.path().join("data");
    let server = start_server(|c| {
        c.data_dir = Some(data);
        c.webhook = vec![
            hook(&format!(
                "name = \"tls\"\nurl = \"https://localhost:{port}/\"\nca-file = \"{ca_path}\"\nsignature-key = \"k\"\nmax-delay-ms = 50"
            )),
            // The system bundle does not trust this certificate: no request gets through.
            hook(&format!(
                "name = \"untrusted\"\nurl = \"https://localhost:{port}/\"\nmax-delay-ms = 50\nretry-initial-ms = 20\nretry-max-secs = 1"
            )),
        ];
    })
    .await;
    ingest_ok(server.addr, &[auth_failed(1), auth_failed(2)]).await;
    wait_for("2 events over TLS", DEADLINE, || recv.delivered().len() >= 2).await;
    recv.assert_signatures();
    let untrusted = &server.webhooks.get("untrusted").unwrap().counters;
    wait_for("the untrusted webhook's retries", DEADLINE, || untrusted.retries.load(Ordering::Relaxed) >= 2)
        .await;
    assert_eq!(untrusted.sent_events.load(Ordering::Relaxed), 0);
    assert_eq!(recv.delivered().len(), 2, "only the trusting webhook's events arrived");
    let r = request_auth(server.addr, "POST", "/api/livetap/webhooks/untrusted/test", b"").await;
    let j = r.json();
    assert_eq!(j["delivered"], false, "{j}");
    assert!(j["error"].as_str().unwrap().contains("TLS"), "{j}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_graceful_shutdown_closes_the_open_batch_and_it_is_sent() {
    let recv = Receiver::start(None, ok()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", recv.addr);
    // A batch that only a shutdown closes: no count, size or delay limit is reached.
    let table = format!("name = \"g\"\nurl = \"{url}\"\nmax-delay-ms = 3600000");
    let data = dir.path().to_path_buf();
    let server = start_server(|c| {
        c.data_dir = Some(data.clone());
        c.webhook = vec![hook(&table)];
    })
    .await;
    ingest_ok(server.addr, &[auth_failed(1), auth_failed(2), auth_failed(3)]).await;
    let c = server.webhooks.get("g").unwrap().counters.clone();
    wait_for("3 spooled events", DEADLINE, || c.spooled_events.load(Ordering::Relaxed) == 3).await;
    assert!(recv.got().is_empty(), "the batch is still open");
    server.shutdown().await;
    let server = start_server(|c| {
        c.data_dir = Some(data.clone());
        c.webhook = vec![hook(&table)];
    })
    .await;
    wait_for("the 3 events", DEADLINE, || recv.delivered().len() >= 3).await;
    let mut names: Vec<String> =
        recv.delivered().iter().map(|e| e["data"]["accountName"].as_str().unwrap().to_string()).collect();
    // Sent once, either as the senders stopped or after the restart; a resend (the stop cut
    // the acknowledgement short) repeats them whole.
    names.sort();
    names.dedup();
    assert_eq!(names, ["u1", "u2", "u3"]);
    server.shutdown().await;
}
