//! Issue 25's alerts end to end: conditions over the live metrics fire, repeat and resolve on
//! real traffic, publish `telemetry.alert` / `telemetry.alert-resolved` into the hub (seen by a
//! live subscriber), show in `GET /api/livetap/alerts`, and mail a real SMTP server; bad
//! conditions stop livetap at start-up with their line and position.
//!
//! - The real-traffic test runs a throwaway real Postfix and Dovecot (`tests/common/maillog.rs`),
//!   the real `livetap` binary following Postfix's log, and Debian's `aiosmtpd` as the SMTP
//!   server the alert mails go to. Failed SASL logins (AUTH PLAIN with a wrong password, each
//!   answered 535) are made until the alert fired and notified again; then they stop, and the
//!   alert must resolve.
//! - The NDJSON test needs no daemons: a pushed gauge and events that feed a histogram drive a
//!   gauge and a quantile condition.
//!
//! Every wait has a deadline; nothing sleeps for a fixed time to let something happen.

mod common;

use common::maillog::MailHost;
use common::{ingest, livetap_command, request, start_server, Livetap, SseClient, DEADLINE, TOKEN};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

/// The system python, which has Debian's `python3-aiosmtpd` (a pyenv shim may come first in
/// `PATH`).
const PYTHON: &str = "/usr/bin/python3";

/// True when the SMTP server can run; in CI a missing one fails the test.
fn aiosmtpd_available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("the alert tests need Debian's python3-aiosmtpd (apt-get install python3-aiosmtpd)");
    }
    ok
}

/// A real SMTP server (aiosmtpd) storing every message in a Maildir; killed on drop.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        // A free port: bound and released (aiosmtpd cannot report the port it picked).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let maildir = tempfile::tempdir().unwrap();
        let child = Command::new(PYTHON)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("box"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let server = SmtpServer { child, port, maildir };
        // Ready when it greets.
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let mut line = String::new();
                let mut r = BufReader::new(s);
                if r.read_line(&mut line).await.is_ok() && line.starts_with("220") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// The messages received so far, as raw text.
    fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("box").join("new");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok()).filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Waits until `pred` holds for the messages received (deadline), and returns them.
    async fn wait_messages(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let m = self.messages();
            if pred(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "no {what} in the SMTP server's mailbox; it has: {m:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A header's value in a raw message (unfolded lines are enough for the ones checked).
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    let head = msg.split("\n\n").next().unwrap_or(msg);
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a raw message (after the blank line), with quoted-printable soft breaks
/// removed.
fn body(msg: &str) -> String {
    let msg = msg.replace("\r\n", "\n");
    let b = msg.split_once("\n\n").map(|(_, b)| b).unwrap_or("");
    b.replace("=\n", "").replace("=3D", "=")
}

/// Standard base64 (for AUTH PLAIN), so the test needs no crate for it.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Reads one SMTP reply (all its lines) and returns its code.
async fn reply(r: &mut BufReader<tokio::net::TcpStream>) -> u16 {
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(DEADLINE, r.read_line(&mut line))
            .await
            .expect("SMTP reply in time")
            .unwrap();
        assert!(n > 0, "the SMTP server closed the connection");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

/// One failed SASL login against Postfix: AUTH PLAIN with a wrong password, answered 535.
/// Each login comes from an address of its own in 127.1.0.0/16: Dovecot delays the answers
/// to an address that failed before more and more, which would slow the burst down.
async fn failed_login(port: u16, user: String, password: String, n: usize) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let from = std::net::Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 2) as u8);
    socket.bind((from, 0).into()).expect("bind a loopback source address");
    let s = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect to Postfix");
    let mut r = BufReader::new(s);
    assert_eq!(reply(&mut r).await, 220);
    r.get_mut().write_all(b"EHLO client.livetap.test\r\n").await.unwrap();
    assert_eq!(reply(&mut r).await, 250);
    let auth = base64(format!("\0{user}\0{password}-wrong").as_bytes());
    r.get_mut().write_all(format!("AUTH PLAIN {auth}\r\n").as_bytes()).await.unwrap();
    assert_eq!(reply(&mut r).await, 535, "a wrong password is refused");
    r.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    let _ = reply(&mut r).await;
}

/// Reads `trace` frames from `sub` into `seen` until `done(seen)` holds; panics at the
/// deadline with what was seen.
async fn events_until(
    sub: &mut SseClient,
    seen: &mut Vec<Value>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: not seen in time; events so far: {seen:#?}");
        let Some(f) = sub.next_frame(left.min(Duration::from_millis(500))).await else { continue };
        if f.event == "trace" {
            let events: Vec<Value> = serde_json::from_str(&f.data).expect("trace data is a JSON array");
            seen.extend(events);
        }
    }
}

async fn alerts_api(addr: SocketAddr) -> Value {
    let r =
        request(addr, "GET", "/api/livetap/alerts", &[("Authorization", &format!("Bearer {TOKEN}"))], b"")
            .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_fire_repeat_resolve_and_mail_a_real_smtp_server() {
    if let Err(e) = common::maillog::available() {
        eprintln!("skipped: {e}");
        return;
    }
    if !aiosmtpd_available() {
        eprintln!("skipped: python3-aiosmtpd is not installed");
        return;
    }
    let smtp = SmtpServer::start().await;
    let dir = MailHost::fresh_dir();
    let postfix_log = MailHost::postfix_log_in(dir.path());
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("livetap.toml");
    let condition = "rate(auth.failed, 4s) > 0.25";
    std::fs::write(
        &conf,
        format!(
            "alert-interval = \"250ms\"\n\n\
             [smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"livetap <alerts@livetap.test>\"\ntimeout-secs = 10\n\n\
             [[alert]]\nname = \"sasl-failures\"\ncondition = \"{condition}\"\nfor = \"1s\"\nrepeat = \"1500ms\"\n\
             email = [\"ops@livetap.test\"]\n",
            smtp.port
        ),
    )
    .unwrap();
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    let lt = Livetap::start(&["-c", &arg(&conf), "--postfix-log", &arg(&postfix_log)]);
    let addr = lt.addr;
    let mut sub = SseClient::connect(addr, "/api/livetap/live?event=telemetry.alert*", Some(TOKEN)).await;
    assert_eq!(sub.status, 200);
    let before = alerts_api(addr).await;
    assert_eq!(before["alerts"][0]["name"], "sasl-failures");
    assert_eq!(before["alerts"][0]["state"], "ok");
    assert_eq!(before["firing"], false);

    let host = MailHost::start_in(dir, None, &[]);
    // Failed logins from four clients, each one after the other, until the alert fired and
    // notified again (Dovecot delays each refusal, so the clients keep the rate up together).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let logins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, logins) = (stop.clone(), logins.clone());
            let (port, user, password) = (host.smtp_port, host.user.clone(), host.password.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    failed_login(port, user.clone(), password.clone(), n).await;
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    events_until(&mut sub, &mut seen, "the alert firing and repeating", |s| s.len() >= 2).await;
    // Still under way: the API says so.
    let firing = alerts_api(addr).await;
    assert_eq!(firing["firing"], true, "{firing}");
    assert_eq!(firing["alerts"][0]["state"], "firing");
    assert_eq!(firing["alerts"][0]["values"][0]["term"], "rate(auth.failed, 4s)");
    assert!(firing["alerts"][0]["values"][0]["value"].as_f64().is_some_and(|v| v > 0.25), "{firing}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let logins = logins.load(std::sync::atomic::Ordering::Relaxed);
    // The traffic stops: the alert resolves once the window holds no more failures.
    events_until(&mut sub, &mut seen, "telemetry.alert-resolved", |s| {
        s.iter().any(|e| e["type"] == "telemetry.alert-resolved")
    })
    .await;
    assert!(logins >= 2, "{logins} failed logins");
    // Exactly one firing, then repeats only, then the resolution, last.
    let types: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let last = types.len() - 1;
    assert_eq!(types[last], "telemetry.alert-resolved", "{types:?}");
    assert!(types[..last].iter().all(|t| *t == "telemetry.alert"), "{types:?}");
    let notes: Vec<&str> = seen.iter().map(|e| e["data"]["notification"].as_str().unwrap_or("?")).collect();
    assert_eq!(notes[0], "fired", "{seen:#?}");
    assert!(notes[1..last].iter().all(|n| *n == "repeated"), "{notes:?}");
    assert!(last >= 2, "at least one repeat: {notes:?}");
    assert_eq!(notes[last], "resolved");
    for e in &seen {
        assert_eq!(e["data"]["id"], "sasl-failures");
        assert_eq!(e["data"]["details"], condition);
        assert!(e["data"]["value"].as_str().unwrap().starts_with("rate(auth.failed, 4s) = "), "{e}");
    }
    assert_eq!(seen[0]["level"], "warn");
    assert_eq!(seen[last]["level"], "info");
    let after = alerts_api(addr).await;
    assert_eq!(after["alerts"][0]["state"], "resolved", "{after}");
    assert_eq!(after["firing"], false);
    assert_eq!(after["alerts"][0]["notifications"].as_u64(), Some(seen.len() as u64), "{after}");

    // One email per notification, with the alert's name, condition and values.
    let mails = smtp.wait_messages("email per notification", |m| m.len() >= seen.len()).await;
    assert_eq!(mails.len(), seen.len(), "{mails:#?}");
    let subjects: Vec<&str> = mails.iter().map(|m| header(m, "Subject").unwrap_or("")).collect();
    assert_eq!(subjects.iter().filter(|s| **s == "[livetap] sasl-failures fired").count(), 1, "{subjects:?}");
    assert_eq!(
        subjects.iter().filter(|s| **s == "[livetap] sasl-failures resolved").count(),
        1,
        "{subjects:?}"
    );
    assert_eq!(subjects.iter().filter(|s| **s == "[livetap] sasl-failures still firing").count(), last - 1);
    for m in &mails {
        assert!(header(m, "From").unwrap_or("").contains("alerts@livetap.test"), "{m}");
        assert_eq!(header(m, "To"), Some("ops@livetap.test"), "{m}");
        let b = body(m);
        assert!(b.contains(&format!("Condition: {condition}")), "{b}");
        assert!(b.contains("Values: rate(auth.failed, 4s) = "), "{b}");
        assert!(b.contains("Alert sasl-failures "), "{b}");
    }
    let api = alerts_api(addr).await;
    assert_eq!(api["emails_sent"].as_u64(), Some(seen.len() as u64), "{api}");
    assert_eq!(api["emails_failed"], 0);
}

/// Ingests `lines` (events and metric records) as NDJSON; every line must be taken.
async fn push(addr: SocketAddr, lines: &[Value]) {
    let r = ingest(addr, &common::ndjson(lines)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let a = r.json();
    let taken = a["accepted"].as_u64().unwrap_or(0) + a["metrics"].as_u64().unwrap_or(0);
    assert_eq!(taken, lines.len() as u64, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauge_and_quantile_conditions_over_ndjson_ingest() {
    let text = r#"
        alert-interval = "200ms"

        [[alert]]
        name = "queue"
        condition = "queue.count > 1000"

        [[alert]]
        name = "slow-delivery"
        condition = "p99(delivery.total-time, 2s) > 60s and count(delivery.total-time, 2s) >= 3"
    "#;
    let file = livetap::Config::from_toml(text).unwrap();
    let server = start_server(|c| {
        c.alert = file.alert.clone();
        c.alert_interval = file.alert_interval;
    })
    .await;
    let addr = server.addr;
    let mut sub = SseClient::connect(addr, "/api/livetap/live?event=telemetry.alert*", Some(TOKEN)).await;
    assert_eq!(sub.status, 200);
    let mut seen = Vec::new();

    // A gauge over its threshold fires at once (no `for`).
    push(addr, &[json!({"metric": "queue.count", "type": "gauge", "value": 5000})]).await;
    events_until(&mut sub, &mut seen, "queue fired", |s| s.iter().any(|e| e["data"]["id"] == "queue")).await;
    let fired = seen.iter().find(|e| e["data"]["id"] == "queue").unwrap().clone();
    assert_eq!(fired["type"], "telemetry.alert");
    assert_eq!(fired["data"]["value"], "queue.count = 5000");
    assert_eq!(fired["data"]["state"], "firing");
    // Three deliveries of 90 s (the histogram counts milliseconds): the p99 passes 60s.
    let slow: Vec<Value> =
        (0..3).map(|_| json!({"type": "delivery.completed", "data": {"elapsed": 90_000}})).collect();
    push(addr, &slow).await;
    events_until(&mut sub, &mut seen, "slow-delivery fired", |s| {
        s.iter().any(|e| e["data"]["id"] == "slow-delivery")
    })
    .await;
    let api = alerts_api(addr).await;
    let slow_status =
        api["alerts"].as_array().unwrap().iter().find(|a| a["name"] == "slow-delivery").unwrap().clone();
    assert_eq!(slow_status["state"], "firing", "{api}");
    let p99 = slow_status["values"][0]["value"].as_f64().unwrap();
    assert!((p99 - 90_000.0).abs() / 90_000.0 < 0.04, "{p99}");
    assert_eq!(slow_status["values"][1]["value"].as_f64(), Some(3.0));
    // The gauge goes down: the queue alert resolves; the slow deliveries leave the window and
    // that one resolves too.
    push(addr, &[json!({"metric": "queue.count", "type": "gauge", "value": 10})]).await;
    events_until(&mut sub, &mut seen, "both resolved", |s| {
        s.iter().filter(|e| e["type"] == "telemetry.alert-resolved").count() == 2
    })
    .await;
    let resolved: Vec<&Value> = seen.iter().filter(|e| e["type"] == "telemetry.alert-resolved").collect();
    assert!(resolved.iter().any(|e| e["data"]["id"] == "queue" && e["data"]["value"] == "queue.count = 10"));
    assert!(resolved.iter().any(|e| e["data"]["id"] == "slow-delivery"));
    let api = alerts_api(addr).await;
    assert_eq!(api["firing"], false, "{api}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_alerts_api_needs_credentials_and_lists_nothing_without_alerts() {
    let server = start_server(|_| {}).await;
    let r = request(server.addr, "GET", "/api/livetap/alerts", &[], b"").await;
    assert_eq!(r.status, 401);
    let api = alerts_api(server.addr).await;
    assert_eq!(api["alerts"], json!([]));
    assert_eq!(api["firing"], false);
    server.shutdown().await;
}

/// Runs the binary with `config` and returns its exit status and stderr; it must exit.
async fn refused(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("livetap.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = livetap_command(1).arg("-c").arg(&path).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("livetap started with a bad alert:\n{config}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    err
}

#[tokio::test]
async fn bad_conditions_stop_livetap_with_their_line_and_position() {
    let err = refused(
        "alert-interval = \"1s\"\n\n[[alert]]\nname = \"a\"\ncondition = \"rate(queue.count, 5m) > 1\"\n",
    )
    .await;
    assert!(err.contains("alert `a` (line 5): condition at byte 5"), "{err}");
    assert!(err.contains("`rate` needs a counter, but `queue.count` is a gauge"), "{err}");
    let err = refused("[[alert]]\nname = \"b\"\ncondition = \"queue.count > 1 and\"\n").await;
    assert!(err.contains("(line 3): condition at byte 19"), "{err}");
    let err = refused("[[alert]]\nname = \"c\"\ncondition = \"rate(auth.faild, 1m) > 1\"\n").await;
    assert!(err.contains("unknown metric `auth.faild`"), "{err}");
    // A webhook that no [[webhook]] table defines is refused with the fix.
    let err = refused("[[alert]]\nname = \"d\"\ncondition = \"queue.count > 1\"\nwebhook = \"ops\"\n").await;
    assert!(err.contains("names the webhook `ops`"), "{err}");
}
