//! The web dashboard: its files and API helpers over real HTTP, and the page itself in a real
//! browser (Debian's Chromium driven by Playwright's library from Node) against the real
//! `livetap` binary with its demo generator, once at a normal rate and once at 5,000 events/s.
//!
//! The browser part needs `chromium`, Node and `npm ci` in `tests/browser`. Without them it
//! says how to install them and passes, except in CI (`CI` set), where it fails: CI installs
//! them, so their absence there is a broken setup, not a reason to skip.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets_need_no_credentials_and_are_locked_down() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let r = request(addr, "GET", "/", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert!(r.text().contains("assets/js/app.js"));

    let r = request(addr, "GET", "/assets/js/app.js", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/javascript; charset=utf-8"));
    let etag = r.header("etag").expect("an ETag").to_string();
    let r = request(addr, "GET", "/assets/js/app.js", &[("If-None-Match", &etag)], b"").await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    for path in ["/assets/../Cargo.toml", "/assets/%2e%2e/Cargo.toml", "/assets/nope.css", "/assets/"] {
        let r = request(addr, "GET", path, &[], b"").await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not found", "{path}");
    }
    let r = request(addr, "POST", "/", &[], b"").await;
    assert_eq!(r.status, 405);
    let r = request(addr, "HEAD", "/assets/style.css", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_check_answers_like_the_live_endpoint() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let path = "/api/livetap/query-check?q=remote-ip%3D10.0.0.5+domain%3D*.example.org+error";
    assert_eq!(request(addr, "GET", path, &[], b"").await.status, 401);
    let r = request_auth(addr, "GET", path, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["ok"], true);
    let canonical = j["query"].as_str().unwrap();
    assert!(canonical.contains("remote-ip") && canonical.contains("error"), "{canonical}");

    let r = request_auth(addr, "GET", "/api/livetap/query-check?q=remote-ip%3D10.0.0.0%2F99", b"").await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["parameter"], "q", "{j}");
    assert_eq!(j["position"], 19, "{j}");
    assert_eq!(j["expected"], "a prefix length of at most 32", "{j}");
    // The same answer as the stream itself gives.
    let live = request_auth(addr, "GET", "/api/telemetry/traces/live?q=remote-ip%3D10.0.0.0%2F99", b"").await;
    assert_eq!(live.status, 400);
    assert_eq!(live.json(), j);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_lookup_names_the_session_of_a_streamed_event() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut sse = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    let sent = [
        json!({"type": "smtp.connection-start", "data": {"spanId": 77, "remoteIp": "10.0.0.5", "remotePort": 4000}}),
        json!({"type": "smtp.connection-start", "data": {"spanId": 78, "remoteIp": "10.0.0.6"}}),
        json!({"type": "smtp.ehlo", "data": {"spanId": 77, "domain": "mx.example.org"}}),
        json!({"type": "smtp.ehlo", "data": {"spanId": 78, "domain": "mx.example.net"}}),
        json!({"type": "dkim.pass", "data": {"domain": "example.org", "size": 2.5}}),
    ];
    let answer = ingest_ok(addr, &sent).await;
    let (first, last) = (answer["firstId"].as_u64().unwrap(), answer["lastId"].as_u64().unwrap());
    let got = sse.collect(sent.len(), DEADLINE).await;
    assert_eq!(got.events.len(), sent.len());
    assert!(got.events.iter().all(|e| e["data"].get("spanId").is_none()), "the stream leaves spanId out");
    let frame = *got.ids.last().unwrap();
    assert_eq!(frame, last);

    let lookup = |body: Value| async move {
        let auth = format!("Bearer {TOKEN}");
        let body = serde_json::to_vec(&body).unwrap();
        request(addr, "POST", "/api/livetap/span", &[("Authorization", &auth)], &body).await
    };
    // The first EHLO is span 77's, whose first event is the first one ingested.
    let r = lookup(json!({"before": frame, "event": got.events[2]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"spanId": "77", "id": first + 2, "firstId": first}));
    let r = lookup(json!({"before": frame, "after": first, "event": got.events[3]})).await;
    assert_eq!(r.json(), json!({"spanId": "78", "id": first + 3, "firstId": first + 1}));
    // Numbers compare by value, as a browser may print 2.5 or 2.50 alike.
    let r = lookup(json!({"before": frame, "event": got.events[4]})).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["detail"].as_str().unwrap().contains("no span"), "{}", r.text());
    // An event that was never streamed, or one outside the frame's range, is not found.
    let mut other = got.events[2].clone();
    other["data"]["domain"] = json!("elsewhere.example");
    let r = lookup(json!({"before": frame, "event": other})).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["detail"].as_str().unwrap().contains("no longer retained"));
    let r = lookup(json!({"before": first + 1, "event": got.events[2]})).await;
    assert_eq!(r.status, 404);
    // Bad bodies and missing credentials.
    assert_eq!(lookup(json!({"event": got.events[2]})).await.status, 400);
    assert_eq!(lookup(json!({"before": frame, "event": "x"})).await.status, 400);
    let r = request(addr, "POST", "/api/livetap/span", &[], b"{}").await;
    assert_eq!(r.status, 401);
    // The span the lookup names is followable with the query language.
    let q = format!("/api/telemetry/traces/live?span-id=77&last-event-id={}", first - 1);
    let mut follow = SseClient::connect(addr, &q, Some(TOKEN)).await;
    let session = follow.collect(2, DEADLINE).await.events;
    let types: Vec<_> = session.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["smtp.connection-start", "smtp.ehlo"]);
    drop((sse, follow));
    server.shutdown().await;
}

/// What the browser tests need, or why they cannot run here.
struct Browser {
    chromium: PathBuf,
    dir: PathBuf,
}

fn find_browser_setup() -> Result<Browser, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("LIVETAP_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set LIVETAP_CHROMIUM)",
            chromium.display()
        ));
    }
    let node = Command::new("node").arg("--version").output().map_err(|e| format!("no node ({e})"))?;
    let version = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let major: u32 =
        version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < 20 {
        return Err(format!("node {version} is too old; playwright-core needs 20 or later"));
    }
    if !dir.join("node_modules/playwright-core/package.json").exists() {
        return Err("playwright-core is not installed (run `npm ci` in tests/browser)".into());
    }
    Ok(Browser { chromium, dir })
}

/// The password of the `viewer` principal the browser test signs in as.
const VIEWER_PASSWORD: &str = "viewer-password-0123";

/// `livetap hash-password`, for a principal in a test config.
fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_livetap"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn livetap hash-password");
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A running `livetap --demo`; killed on drop.
struct Hub {
    child: Child,
    url: String,
}

impl Hub {
    fn start(rate: u32, extra: &[&str]) -> Hub {
        let mut child = livetap_command(1)
            .args(["--demo", "--demo-rate", &rate.to_string()])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn livetap");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // The banner's `dashboard:` line is the address to open.
                if let Some(url) = line.trim_start().strip_prefix("dashboard:") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("livetap printed no dashboard line in its banner");
        });
        Hub { child, url }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one Node test file against `hub`, printing its report; panics if it fails or hangs.
fn run_node(setup: &Browser, hub: &Hub, script: &str, artifacts: &Path, limit: Duration) -> String {
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-reporter=spec", script])
        .current_dir(&setup.dir)
        .env("LIVETAP_URL", &hub.url)
        .env("LIVETAP_TOKEN", TOKEN)
        .env("LIVETAP_CHROMIUM", &setup.chromium)
        .env("LIVETAP_ARTIFACTS", artifacts)
        .env("LIVETAP_USER", "viewer")
        .env("LIVETAP_PASSWORD", VIEWER_PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("LIVETAP_UPDATE_SCREENSHOT").is_some() {
        cmd.env("LIVETAP_DOCS_SCREENSHOT", Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"));
    }
    let mut child = cmd.spawn().expect("spawn node");
    let mut readers = Vec::new();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        readers.push(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        }));
    }
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for node") {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output: String = readers.into_iter().map(|r| r.join().unwrap_or_default()).collect();
    println!("---- node {script} ----\n{output}");
    match status {
        Some(s) if s.success() => output,
        Some(s) => panic!("{script} failed ({s}); its report is above"),
        None => panic!("{script} did not finish within {limit:?}; its report is above"),
    }
}

#[test]
fn dashboard_in_a_real_browser() {
    let setup = match find_browser_setup() {
        Ok(s) => s,
        Err(why) if std::env::var_os("CI").is_some() => panic!("browser tests cannot run in CI: {why}"),
        Err(why) => {
            eprintln!(
                "skipping the dashboard browser tests: {why}.\n  To run them: apt-get install chromium, \
                 then `npm ci` in tests/browser (see README, Dashboard)."
            );
            return;
        }
    };
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    // A password user who may watch traces but not metrics, to sign in with Basic as well, and
    // an alert that the demo's SMTP connections keep firing, for the alert banner and list.
    let config = artifacts.join("viewer.toml");
    std::fs::write(
        &config,
        format!(
            "alert-interval = \"1s\"\n\n[[alert]]\nname = \"demo-connections\"\n\
             condition = \"rate(smtp.connection-start, 5s) > 0\"\n\n\
             [[principal]]\nname = \"viewer\"\npassword-hash = \"{}\"\npermissions = [\"tracing-live\"]\n",
            hash_password(VIEWER_PASSWORD)
        ),
    )
    .unwrap();
    let hub = Hub::start(300, &["--config", config.to_str().unwrap()]);
    run_node(&setup, &hub, "dashboard.test.mjs", &artifacts, Duration::from_secs(300));
    drop(hub);
    assert!(artifacts.join("dashboard.png").exists(), "the screenshot was saved");

    // The same page against a hub generating 5,000 events a second.
    let fast = Hub::start(5000, &[]);
    let report = run_node(&setup, &fast, "perf.mjs", &artifacts, Duration::from_secs(120));
    assert!(report.contains("PERF {"), "the measurement was printed");
}
