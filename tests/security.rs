//! The bad-input suite: hostile and broken clients against the real server on 127.0.0.1:0.
//!
//! Every test keeps a well-behaved "witness" subscriber connected throughout. After each attack
//! the server must still answer `/healthz`, the witness must have received exactly the events the
//! hub accepted (counted, in order, nothing lagged), and the process's resident memory must stay
//! under the documented worst case (`Config::memory_bound`). SECURITY.md has the table.

mod common;

use common::*;
use livetap::auth::Grant;
use livetap::config::PrincipalConfig;
use livetap::{Config, Server};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Limits small enough that the documented bound means something in a test process.
fn tight(c: &mut Config) {
    c.subscriber_queue = 4096;
    c.max_subscribers = 64;
    c.max_connections = 2600;
    c.max_body_bytes = 1 << 20;
    c.max_concurrent_ingest = 4;
    c.max_header_bytes = 8192;
    c.max_url_bytes = 4096;
}

fn principal(name: &str, key: &str, perms: &[&str]) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        api_key: Some(key.into()),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

fn events(n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"type": "smtp.connection-start", "data": {"remoteIp": "10.0.0.1", "id": i, "tag": tag}}))
        .collect()
}

/// The well-behaved subscriber connected through every attack.
struct Witness {
    sub: SseClient,
    got: u64,
    last_id: u64,
}

impl Witness {
    async fn connect(addr: SocketAddr) -> Witness {
        let sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
        assert_eq!(sub.status, 200);
        Witness { sub, got: 0, last_id: 0 }
    }

    /// Reads until it holds everything the hub accepted so far.
    async fn catch_up(&mut self, accepted: u64, what: &str) {
        let need = (accepted - self.got) as usize;
        let c = self.sub.collect(need, DEADLINE).await;
        assert!(c.lagged.is_empty(), "{what}: the witness lagged: {:?}", c.lagged);
        assert_increasing(&c.ids);
        if let Some(first) = c.ids.first() {
            assert!(*first > self.last_id, "{what}: ids went back");
            self.last_id = *c.ids.last().unwrap();
        }
        self.got += c.events.len() as u64;
        assert_eq!(self.got, accepted, "{what}: the witness received every accepted event");
    }
}

/// After an attack: the server serves, the witness has every accepted event (5 more are
/// ingested now), memory is under the documented bound.
async fn still_fine(server: &Server, w: &mut Witness, what: &str) {
    let addr = server.addr;
    let r = request(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200, "{what}: /healthz");
    ingest_ok(addr, &events(5, what)).await;
    let accepted = stats(addr).await["accepted"].as_u64().unwrap();
    w.catch_up(accepted, what).await;
    let rss = rss_bytes();
    let bound = server.hub.config.memory_bound(512).total();
    assert!(rss < bound, "{what}: resident memory {rss} is over the documented bound {bound}");
    eprintln!("{what}: ok, {accepted} events accepted and seen, rss {} MiB", rss >> 20);
}

/// Sends raw bytes and reads until EOF (or the safety deadline); never panics on resets.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn json_body_of(raw: &[u8]) -> Value {
    let text = String::from_utf8_lossy(raw);
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tokens_grants_expiry_grace_and_rotation() {
    let server = start_server(|c| {
        tight(c);
        c.live_token_grace_secs = 120;
        c.principal.push(principal("dash", "dash-api-key-0123456789", &["tracing-live"]));
        c.principal.push(principal("ops", "ops-api-key-0123456789", &["metrics-live"]));
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let dash = [("Authorization", "Bearer dash-api-key-0123456789")];

    let r = request(addr, "GET", "/api/telemetry/live/tracing-token", &dash, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["data"].as_str().unwrap().to_string();
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = request(addr, "GET", "/api/telemetry/live/metrics-token", &dash, b"").await;
    assert_eq!(r.status, 403, "dash lacks metrics-live: {}", r.text());
    assert_eq!(r.json()["error"], "forbidden");

    // The token opens the traces stream (both paths), and the stream carries events.
    let mut by_token =
        SseClient::connect_with(addr, &format!("/api/telemetry/traces/live?token={token}"), &[]).await;
    assert_eq!(by_token.status, 200);
    let alias =
        SseClient::connect_with(addr, &format!("/api/tracing/live?token={token}&follow=false"), &[]).await;
    assert_eq!(alias.status, 200);
    drop(alias);
    ingest_ok(addr, &events(3, "token")).await;
    assert_eq!(by_token.collect_events(3, DEADLINE).await.len(), 3);
    drop(by_token);

    let expect_401 = |c: &SseClient, detail: &str, what: &str| {
        assert_eq!(c.status, 401, "{what}");
        let j = c.error_json();
        assert_eq!(j["error"], "unauthorized", "{what}: {j}");
        assert!(j["detail"].as_str().unwrap().contains(detail), "{what}: {j}");
    };
    // Wrong grant, other endpoints, garbage, tampering.
    let c = SseClient::connect_with(addr, &format!("/api/telemetry/metrics/live?token={token}"), &[]).await;
    expect_401(&c, "other live stream", "tracing token on the metrics stream");
    let r = request(addr, "GET", &format!("/api/livetap/stats?token={token}"), &[], b"").await;
    assert_eq!(r.status, 401, "tokens count on live endpoints only");
    let r = request(addr, "GET", &format!("/api/telemetry/live/tracing-token?token={token}"), &[], b"").await;
    assert_eq!(r.status, 401, "a token does not mint tokens");
    for bad in ["", "x", "not.a-token", &format!("{token}x"), &token.replace('.', "")] {
        let c = SseClient::connect_with(addr, &format!("/api/telemetry/traces/live?token={bad}"), &[]).await;
        assert_eq!(c.status, 401, "token {bad:?}");
    }
    let mut tampered = token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let c = SseClient::connect_with(addr, &format!("/api/telemetry/traces/live?token={tampered}"), &[]).await;
    expect_401(&c, "invalid live token", "tampered");
    let r =
        request(addr, "GET", &format!("/api/telemetry/traces/live?token={token}&token={token}"), &[], b"")
            .await;
    assert_eq!(r.status, 400, "two tokens: {}", r.text());
    assert_eq!(r.json()["parameter"], "token");

    // Expired: refused, unless it is an EventSource reconnect within the grace period.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let tokens = &server.security.tokens;
    let expired = tokens.issue("dash", Grant::Tracing, now - 61 - 30).unwrap();
    let too_old = tokens.issue("dash", Grant::Tracing, now - 61 - 121).unwrap();
    let path = |t: &str| format!("/api/telemetry/traces/live?token={t}");
    expect_401(&SseClient::connect_with(addr, &path(&expired), &[]).await, "expired", "expired");
    let c = SseClient::connect_with(addr, &path(&expired), &[("Last-Event-ID", "17")]).await;
    assert_eq!(c.status, 200, "a reconnect within the grace period keeps its stream");
    drop(c);
    let c = SseClient::connect_with(addr, &path(&expired), &[("Last-Event-ID", "x")]).await;
    assert_eq!(c.status, 401, "Last-Event-ID must be an id");
    let c = SseClient::connect_with(addr, &path(&too_old), &[("Last-Event-ID", "17")]).await;
    expect_401(&c, "expired", "past the grace period");
    let metrics_expired = tokens.issue("ops", Grant::Metrics, now - 61 - 30).unwrap();
    let c = SseClient::connect_with(
        addr,
        &format!("/api/telemetry/traces/live?token={metrics_expired}"),
        &[("Last-Event-ID", "17")],
    )
    .await;
    assert_eq!(c.status, 401, "the grace period is for the token's own grant only");

    // Rotation revokes every token.
    tokens.rotate().unwrap();
    let c = SseClient::connect_with(addr, &path(&token), &[]).await;
    expect_401(&c, "invalid live token", "after rotation");
    still_fine(&server, &mut w, "live tokens").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_map_onto_every_route() {
    let hash = livetap::auth::password::hash_password("s3cret pass").unwrap();
    let server = start_server(|c| {
        tight(c);
        c.principal.push(principal("producer", "producer-key-0123456789", &["ingest"]));
        c.principal.push(principal("grafana", "grafana-key-0123456789", &["metrics-live"]));
        c.principal.push(principal("viewer", "viewer-key-0123456789", &["tracing-live"]));
        c.principal.push(principal("ops", "ops-key-0123456789abc", &["admin"]));
        c.principal.push(PrincipalConfig {
            name: "alice".into(),
            password_hash: Some(hash.clone()),
            permissions: vec!["tracing-live".into()],
            ..Default::default()
        });
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let routes: [(&str, &str, &str); 9] = [
        ("GET", "/api/telemetry/traces/live", "tracing-live"),
        ("GET", "/api/tracing/live", "tracing-live"),
        ("GET", "/api/telemetry/live/tracing-token", "tracing-live"),
        ("GET", "/api/telemetry/metrics/live", "metrics-live"),
        ("GET", "/api/telemetry/live/metrics-token", "metrics-live"),
        ("GET", "/metrics", "metrics-live"),
        ("POST", "/api/telemetry/ingest", "ingest"),
        ("POST", "/api/telemetry/webhook", "ingest"),
        ("GET", "/api/livetap/stats", "admin"),
    ];
    let who = [
        ("producer-key-0123456789", "ingest"),
        ("grafana-key-0123456789", "metrics-live"),
        ("viewer-key-0123456789", "tracing-live"),
        ("ops-key-0123456789abc", "admin"),
    ];
    for (method, path, needs) in routes {
        for (key, has) in who {
            let auth = format!("Bearer {key}");
            let body: &[u8] = if path.ends_with("webhook") { br#"{"events":[]}"# } else { b"" };
            let status = if path.contains("/live") && !path.contains("-token") {
                SseClient::connect(addr, path, Some(key)).await.status
            } else {
                request(addr, method, path, &[("Authorization", &auth)], body).await.status
            };
            let want = if has == needs { [200, 400] } else { [403, 403] };
            assert!(want.contains(&status), "{method} {path} as {has}: {status}");
        }
    }
    assert_eq!(request(addr, "GET", "/healthz", &[], b"").await.status, 200, "healthz is open");

    // Basic authentication for password users; the challenge names both schemes.
    let basic = |user: &str, pw: &str| {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
    };
    let ok = basic("alice", "s3cret pass");
    let r = request(addr, "GET", "/api/telemetry/live/tracing-token", &[("Authorization", &ok)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = SseClient::connect_with(addr, "/api/telemetry/traces/live", &[("Authorization", &ok)]).await;
    assert_eq!(c.status, 200);
    drop(c);
    for bad in
        [basic("alice", "wrong"), basic("mallory", "s3cret pass"), basic("producer", "x"), "Basic !!".into()]
    {
        let r =
            request(addr, "GET", "/api/telemetry/live/tracing-token", &[("Authorization", &bad)], b"").await;
        assert_eq!(r.status, 401, "{bad}");
        let challenges: Vec<_> =
            r.headers.iter().filter(|(k, _)| k == "www-authenticate").map(|(_, v)| v.as_str()).collect();
        assert_eq!(challenges, ["Bearer", "Basic realm=\"livetap\""]);
    }
    still_fine(&server, &mut w, "permissions").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_lock_out_the_source() {
    let server = start_server(|c| {
        tight(c);
        c.max_auth_failures = 5;
        c.auth_failure_window_secs = 2;
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let wrong = [("Authorization", "Bearer wrong-wrong-wrong-wrong")];
    for _ in 0..5 {
        assert_eq!(request(addr, "GET", "/api/livetap/stats", &wrong, b"").await.status, 401);
    }
    // Locked: even the right token is refused until the window ends.
    let r = request_auth(addr, "GET", "/api/livetap/stats", b"").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(r.json()["detail"].as_str().unwrap().contains("failed authentications"));
    assert_eq!(request(addr, "GET", "/healthz", &[], b"").await.status, 200, "open routes still answer");
    // The witness, authenticated before, keeps its stream; wait out the window.
    let deadline = Instant::now() + DEADLINE;
    while request_auth(addr, "GET", "/api/livetap/stats", b"").await.status == 429 {
        assert!(Instant::now() < deadline, "the lockout never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = stats(addr).await;
    assert!(s["auth_failures"].as_u64().unwrap() >= 5 && s["auth_locked"].as_u64().unwrap() >= 1, "{s}");
    still_fine(&server, &mut w, "failed authentications").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_webhook_signatures() {
    const KEY: &str = "webhook-signing-key";
    let server = start_server(|c| {
        tight(c);
        c.webhook_key = Some(KEY.into());
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let body = br#"{"events":[{"id":"1","createdAt":"2026-11-20T12:00:00Z","type":"auth.success","data":{"accountName":"bob"}}]}"#;
    let good = livetap::auth::sign(KEY, body);
    let mut flipped = good.clone().into_bytes();
    flipped[0] ^= 1;
    let flipped = String::from_utf8(flipped).unwrap();
    let huge = "A".repeat(6000);
    let empty_sig = livetap::auth::sign(KEY, b"");
    for sig in [flipped.as_str(), &good[..good.len() - 4], &empty_sig, &huge, "", "===="] {
        let r = request(
            addr,
            "POST",
            "/api/telemetry/webhook",
            &[("X-Signature", sig), ("Content-Type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 401, "signature {sig:.20}: {}", r.text());
    }
    let r = request(addr, "POST", "/api/telemetry/webhook", &[("X-Signature", &good)], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    still_fine(&server, &mut w, "tampered webhook signatures").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_strange_requests() {
    let server = start_server(tight).await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let auth = format!("Bearer {TOKEN}");

    // Request target and header caps: JSON answers.
    let long = format!("/api/telemetry/traces/live?filter={}", "a".repeat(5000));
    let r = request(addr, "GET", &long, &[("Authorization", &auth)], b"").await;
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (414, "URI too long"));
    let big = "b".repeat(9000);
    let r = request(addr, "GET", "/healthz", &[("X-Big", &big)], b"").await;
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (431, "headers too large"));
    // Far beyond hyper's buffer: refused at the parser, the connection closed.
    let huge = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n", "c".repeat(400_000));
    let raw = raw_exchange(addr, huge.as_bytes()).await;
    assert!(
        raw.is_empty() || status_of(&raw) == Some(431),
        "{:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(80)])
    );
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = raw_exchange(addr, format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    assert!(raw.is_empty() || status_of(&raw).is_some_and(|s| s >= 400), "too many header fields");

    // Bodies: declared too large, chunked too large, invalid UTF-8, deep nesting.
    let declared = format!(
        "POST /api/telemetry/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 5000000\r\n\r\n"
    );
    let raw = raw_exchange(addr, declared.as_bytes()).await;
    assert_eq!(status_of(&raw), Some(413), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(json_body_of(&raw)["error"], "payload too large");
    let r = ingest_chunked(addr, &vec![b'z'; 2_000_000], 100_000).await;
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (413, "payload too large"));
    let mut bad_utf8 = b"{\"type\":\"auth.success\",\"data\":{\"accountName\":\"\xff\xfe\"}}\n".to_vec();
    bad_utf8.extend_from_slice(b"\xc3\x28\n{\"type\":\"auth.success\"}\n");
    let r = ingest(addr, &bad_utf8).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["accepted"].as_u64(), r.json()["rejected"].as_u64()), (Some(1), Some(2)));
    // One event over `max-event-bytes` (64 KiB) among good ones: it alone is rejected, with
    // its line and the reason, and the others are accepted.
    let mut mixed = b"{\"type\":\"auth.success\"}\n".to_vec();
    mixed.extend_from_slice(
        format!("{{\"type\":\"auth.success\",\"details\":\"{}\"}}\n", "d".repeat(70_000)).as_bytes(),
    );
    mixed.extend_from_slice(b"{\"type\":\"auth.failed\"}\n");
    let r = ingest(addr, &mixed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["accepted"].as_u64(), r.json()["rejected"].as_u64()), (Some(2), Some(1)));
    assert!(r.text().contains("max-event-bytes"), "{}", r.text());
    let deep = format!(
        "{{\"type\":\"auth.success\",\"data\":{{\"x\":{}1{}}}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let r = ingest(addr, deep.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let deep_obj = "{\"a\":".repeat(50_000);
    let r = ingest(addr, deep_obj.as_bytes()).await;
    assert_eq!(r.status, 400);
    let r = request(
        addr,
        "POST",
        "/api/telemetry/webhook",
        &[("Authorization", &auth)],
        format!("{{\"events\":{}", "[".repeat(100_000)).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Mistyped (unknown, near a known name) and duplicated parameters.
    let r = request(addr, "GET", "/api/telemetry/traces/live?remote-ipp=1", &[("Authorization", &auth)], b"")
        .await;
    assert_eq!((r.status, r.json()["parameter"].as_str()), (400, Some("remote-ipp")));
    let r = request(
        addr,
        "GET",
        "/api/telemetry/metrics/live?interval=1&interval=2",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = request(addr, "GET", "/api/telemetry/traces/live?follow=maybe", &[("Authorization", &auth)], b"")
        .await;
    assert_eq!(r.status, 400);
    let dup = SseClient::connect(
        addr,
        "/api/telemetry/traces/live?domain=a.org&domain=b.org&level=info&level=warn",
        Some(TOKEN),
    )
    .await;
    assert_eq!(dup.status, 200, "repeated keys are ORed");
    drop(dup);
    let r =
        request(addr, "GET", "/api/telemetry/traces/live?%ff%fe=1", &[("Authorization", &auth)], b"").await;
    assert_eq!(r.status, 400);

    // Paths outside the API (`/` and `/assets/…` are the dashboard's), odd methods, odd
    // request lines.
    for path in [
        "/assets/../../etc/passwd",
        "/api",
        "/api/",
        "/../../etc/passwd",
        "/api/telemetry/traces/live/",
        "//healthz",
        "/%2e%2e/x",
        "/healthz%00",
        "/HEALTHZ",
    ] {
        let r = request(addr, "GET", path, &[], b"").await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not found");
    }
    let r = request(addr, "DELETE", "/api/telemetry/ingest", &[("Authorization", &auth)], b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = request(addr, "OPTIONS", "/api/telemetry/ingest", &[], b"").await;
    assert_eq!(r.status, 405, "no CORS configured");
    let lines: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ];
    for line in lines {
        let raw = raw_exchange(addr, line).await;
        assert!(raw.is_empty() || status_of(&raw).is_some_and(|s| s >= 400), "{line:?}");
    }
    still_fine(&server, &mut w, "oversized and malformed requests").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabyte_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ingest.sock");
    let server = start_server(|c| {
        tight(c);
        c.ingest_socket = Some(sock.clone());
        c.max_line_bytes = 1 << 20;
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let before = rss_bytes();
    let chunk = vec![b'a'; 64 * 1024];

    // Over HTTP, chunked, so no Content-Length gives it away: streamed, never held.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/telemetry/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, rd.read_to_end(&mut out)).await;
        out
    });
    let mut sent = 0usize;
    while sent < 100 << 20 {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&frame)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    drop(wr);
    let answer = reader.await.unwrap();
    assert_eq!(
        status_of(&answer),
        Some(413),
        "{:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    assert_eq!(json_body_of(&answer)["error"], "payload too large");
    eprintln!("HTTP: refused after {} MiB were sent", sent >> 20);

    // Over the Unix socket: the line is reported and skipped, the next line is accepted.
    let mut u = tokio::net::UnixStream::connect(&sock).await.unwrap();
    for _ in 0..(100 << 20) / chunk.len() {
        u.write_all(&chunk).await.unwrap();
    }
    u.write_all(b"\n{\"type\":\"auth.success\",\"data\":{\"tag\":\"after the long line\"}}\n").await.unwrap();
    let mut report = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, u.read(&mut report)).await.unwrap().unwrap();
    let report = String::from_utf8_lossy(&report[..n]).to_string();
    assert!(report.contains("\"line\":1") && report.contains("longer than"), "{report}");
    let deadline = Instant::now() + DEADLINE;
    while stats(addr).await["accepted"].as_u64().unwrap() < 1 {
        assert!(Instant::now() < deadline, "the line after the long one was not accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grew = rss_bytes().saturating_sub(before);
    assert!(grew < 64 << 20, "200 MB streamed in grew memory by {} MiB", grew >> 20);
    still_fine(&server, &mut w, "100 MB line").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_are_held_then_dropped() {
    let limit = raise_nofile();
    let n = 2000.min(limit.saturating_sub(200) as usize);
    let server = start_server(|c| {
        tight(c);
        c.header_timeout_secs = 3;
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let s = wait_stats(addr, "idle connections counted", |s| s["connections"].as_u64().unwrap() as usize > n)
        .await;
    eprintln!("{} connections open", s["connections"]);
    still_fine(&server, &mut w, "2,000 idle connections").await;
    // Connections that never send a request are closed after header-timeout-secs.
    wait_stats(addr, "idle connections dropped", |s| s["connections"].as_u64().unwrap() <= 3).await;
    assert_closed_silently(idle.iter_mut().take(50)).await;
    drop(idle);
    let mut buf = [0u8; 16];
    // Slow loris on the head and on the body.
    let mut head = TcpStream::connect(addr).await.unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let r = tokio::time::timeout(DEADLINE, head.read(&mut buf)).await.expect("a slow head is cut off");
    assert!(matches!(r, Ok(_) | Err(_)));
    still_fine(&server, &mut w, "slow-loris connections").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out() {
    let server = start_server(|c| {
        tight(c);
        c.body_timeout_secs = 1;
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/telemetry/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"type\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut answer)).await;
    assert_eq!(status_of(&answer), Some(408), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(json_body_of(&answer)["error"], "request timeout");
    // A body cut off mid-way: nothing of it is accepted.
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let body = "{\"type\":\"auth.success\"}\n".repeat(10);
        let head = format!(
            "POST /api/telemetry/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
            body.len() + 500
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        drop(s);
    }
    assert_eq!(stats(addr).await["accepted"], 0, "no event of a cut body");
    still_fine(&server, &mut w, "slow and cut bodies").await;
    assert!(stats(addr).await["request_timeouts"].as_u64().unwrap() >= 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_or_leave_mid_frame() {
    let server = start_server(|c| {
        tight(c);
        c.write_timeout_secs = 1;
        // The reaper would also close a stalled subscriber; keep it out of this test so the
        // write timeout is what drops the client that never reads.
        c.stall_timeout_secs = 3600;
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let mut never =
        SseClient::connect_small_buffer(addr, "/api/telemetry/traces/live", Some(TOKEN), 4096).await;
    assert_eq!(never.status, 200);
    let mut metrics_never = TcpStream::connect(addr).await.unwrap();
    metrics_never
        .write_all(format!("GET /api/telemetry/metrics/live?interval=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Clients that leave in the middle of a frame.
    let mut leavers = Vec::new();
    for _ in 0..10 {
        leavers.push(SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await);
    }
    let pad = "p".repeat(900);
    let mut sent = 0u64;
    let deadline = Instant::now() + DEADLINE * 3;
    while stats(addr).await["subscribers"].as_u64().unwrap() > 1 + leavers.len() as u64 || sent == 0 {
        assert!(Instant::now() < deadline, "the client that never reads was never dropped");
        let batch: Vec<Value> =
            (0..500).map(|i| json!({"type": "auth.success", "data": {"id": i, "reason": pad}})).collect();
        ingest_ok(addr, &batch).await;
        sent += 500;
        w.catch_up(sent, "never-reading client").await;
        if sent == 1000 {
            // Read a little of each leaver's stream, then drop it with a frame half-read.
            for mut l in leavers.drain(..) {
                let _ = l.next_frame(Duration::from_millis(1)).await;
            }
        }
    }
    let s = stats(addr).await;
    assert!(s["write_timeouts"].as_u64().unwrap() >= 1, "{s}");
    eprintln!("dropped after {sent} events; stats: write_timeouts {}", s["write_timeouts"]);
    let _ = never.next_frame(Duration::from_millis(1)).await;
    drop(metrics_never);
    still_fine(&server, &mut w, "never-reading and leaving clients").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_answer_in_json() {
    let server = start_server(|c| {
        tight(c);
        c.max_connections_per_ip = 4;
        c.per_ip_exempt = vec![];
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    // The witness holds one; three more fit, the fifth is refused.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let deadline = Instant::now() + DEADLINE;
    while server.hub.ingest.connections.load(std::sync::atomic::Ordering::Relaxed) < 4 {
        assert!(Instant::now() < deadline, "the held connections were not accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let raw = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&raw), Some(429), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(json_body_of(&raw)["error"], "too many connections");
    drop(held);
    // Places free again once the clients leave.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let raw = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        if status_of(&raw) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "connection places were not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    still_fine(&server, &mut w, "connection caps").await;
    assert!(stats(addr).await["connections_refused"].as_u64().unwrap() >= 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_principal_stream_and_ingest_limits() {
    let server = start_server(|c| {
        tight(c);
        let mut p = principal("small", "small-key-0123456789", &["tracing-live", "ingest"]);
        p.max_subscribers = Some(2);
        p.ingest_rate = Some(100);
        c.principal.push(p);
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let key = "small-key-0123456789";
    let a = SseClient::connect(addr, "/api/telemetry/traces/live", Some(key)).await;
    let b = SseClient::connect(addr, "/api/telemetry/traces/live", Some(key)).await;
    assert_eq!((a.status, b.status), (200, 200));
    let c = SseClient::connect(addr, "/api/telemetry/traces/live", Some(key)).await;
    assert_eq!(c.status, 429);
    assert!(c.error_json()["detail"].as_str().unwrap().contains("maximum of 2 live streams"));
    drop(a);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let c = SseClient::connect(addr, "/api/telemetry/traces/live", Some(key)).await;
        if c.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place of a closed stream was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 100 events/s: a 300-event body passes once (into debt), the next is refused.
    let auth = format!("Bearer {key}");
    let body = ndjson(&events(300, "rate"));
    let r = request(addr, "POST", "/api/telemetry/ingest", &[("Authorization", &auth)], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(addr, "POST", "/api/telemetry/ingest", &[("Authorization", &auth)], &body).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(stats(addr).await["rate_limited"], 1);
    // The admin token has no per-principal rate.
    ingest_ok(addr, &events(300, "admin")).await;
    still_fine(&server, &mut w, "per-principal limits").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_filter_is_enforced_in_the_index() {
    let server = start_server(|c| {
        tight(c);
        let mut p = principal("example", "example-key-0123456789", &["tracing-live"]);
        p.filter = Some("domain=example.org".into());
        c.principal.push(p);
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let key = "example-key-0123456789";
    let mut plain = SseClient::connect(addr, "/api/telemetry/traces/live", Some(key)).await;
    let mut other = SseClient::connect(addr, "/api/telemetry/traces/live?domain=other.org", Some(key)).await;
    let mut wide = SseClient::connect(
        addr,
        "/api/telemetry/traces/live?q=domain:other.org%20OR%20domain:example.org",
        Some(key),
    )
    .await;
    // A token carries the filter too.
    let r = request(
        addr,
        "GET",
        "/api/telemetry/live/tracing-token",
        &[("Authorization", &format!("Bearer {key}"))],
        b"",
    )
    .await;
    let token = r.json()["data"].as_str().unwrap().to_string();
    let mut by_token =
        SseClient::connect_with(addr, &format!("/api/telemetry/traces/live?token={token}"), &[]).await;
    for c in [&plain, &other, &wide, &by_token] {
        assert_eq!(c.status, 200);
    }
    let mut evs = Vec::new();
    for i in 0..60 {
        let domain = ["example.org", "other.org", "EXAMPLE.ORG"][i % 3];
        // Events of one span: the first names the domain, the second does not. A restricted
        // principal must not get the second through span following.
        evs.push(json!({"type": "smtp.connection-start", "data": {"domain": domain, "spanId": i, "id": i}}));
        evs.push(json!({"type": "smtp.ehlo", "data": {"spanId": i, "id": i}}));
    }
    ingest_ok(addr, &evs).await;
    let marker = json!({"type": "auth.success", "data": {"domain": "example.org", "id": 1000}});
    ingest_ok(addr, &[marker]).await;
    let until_marker = |c: &Collected| c.events.iter().any(|e| e["data"]["id"] == 1000);
    for (name, c) in [("plain", &mut plain), ("wide", &mut wide), ("token", &mut by_token)] {
        let got = c.collect_until(DEADLINE, until_marker).await;
        assert_eq!(got.events.len(), 41, "{name}: 40 example.org events and the marker");
        assert!(got
            .events
            .iter()
            .all(|e| e["data"]["domain"].as_str().unwrap().eq_ignore_ascii_case("example.org")));
    }
    let got = other.collect_until(Duration::from_millis(300), |_| false).await;
    assert!(got.events.is_empty(), "other.org is outside the principal's filter: {:?}", got.events);
    still_fine(&server, &mut w, "principal filter").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_origins() {
    let server = start_server(|c| {
        tight(c);
        c.cors_origins = vec!["https://dash.example.org".into()];
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let pre = [
        ("Origin", "https://dash.example.org"),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "authorization, last-event-id"),
    ];
    let r = request(addr, "OPTIONS", "/api/telemetry/traces/live", &pre, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://dash.example.org"));
    assert!(r.header("access-control-allow-headers").unwrap().contains("authorization"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("GET"));
    assert!(r.header("access-control-allow-credentials").is_none());
    let r =
        request(addr, "OPTIONS", "/api/telemetry/traces/live", &[("Origin", "https://evil.example")], b"")
            .await;
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("forbidden")));
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        addr,
        "GET",
        "/api/livetap/stats",
        &[("Authorization", &auth), ("Origin", "https://dash.example.org")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://dash.example.org"));
    let r = request(
        addr,
        "GET",
        "/api/livetap/stats",
        &[("Authorization", &auth), ("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403, "a disallowed origin gets nothing");
    assert!(r.header("access-control-allow-origin").is_none());
    still_fine(&server, &mut w, "CORS").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_key_is_kept_private_in_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let server = start_server(|c| c.data_dir = Some(data.clone())).await;
    let meta = std::fs::metadata(dir.path().join("token-key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let r = request_auth(server.addr, "GET", "/api/telemetry/live/tracing-token", b"").await;
    let token = r.json()["data"].as_str().unwrap().to_string();
    // Replacing the key file and reloading (SIGHUP) revokes every token.
    std::fs::remove_file(dir.path().join("token-key")).unwrap();
    assert!(server.reload_config((*server.hub.current()).clone()).await.unwrap().token_key_changed);
    let c =
        SseClient::connect_with(server.addr, &format!("/api/telemetry/traces/live?token={token}"), &[]).await;
    assert_eq!(c.status, 401);
    server.shutdown().await;
}

/// Issue 21, item 5: a query string whose percent-encoding is broken, or whose decoded bytes
/// are not UTF-8, is a `400` naming the parameter on every endpoint that reads one, instead of
/// being read with U+FFFD or a literal `%` in place of what the client meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_percent_encoding_is_refused_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let server = start_server(|c| {
        tight(c);
        c.data_dir = Some(data.clone());
    })
    .await;
    let addr = server.addr;
    let mut w = Witness::connect(addr).await;
    let auth = format!("Bearer {TOKEN}");
    // Each query with the parameter its answer must name: the name as far as it decodes.
    let broken = [
        ("domain=%c3%28", "domain"),
        ("filter=%ff%fe", "filter"),
        ("q=%ff", "q"),
        ("domain=%zz", "domain"),
        ("domain=50%", "domain"),
        ("do%ffmain=x", "do"),
        ("metrics=%c3%28", "metrics"),
        ("interval=5%", "interval"),
        ("token=%ff", "token"),
    ];
    let expect_400 = |status: u16, body: &Value, what: &str, param: &str| {
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid query parameter", "{what}: {body}");
        assert_eq!(body["parameter"].as_str(), Some(param), "{what}: {body}");
    };
    for (query, param) in broken {
        for live in ["/api/telemetry/traces/live", "/api/telemetry/metrics/live"] {
            let what = format!("{live}?{query}");
            let c = SseClient::connect(addr, &what, Some(TOKEN)).await;
            let body = if c.status == 200 { Value::Null } else { c.error_json() };
            expect_400(c.status, &body, &what, param);
        }
        for list in ["/api/telemetry/traces", "/api/telemetry/metrics", "/api/livetap/query-check"] {
            let what = format!("{list}?{query}");
            let r = request(addr, "GET", &what, &[("Authorization", &auth)], b"").await;
            expect_400(r.status, &r.json(), &what, param);
        }
    }
    // Valid encodings still work, `+` and `%2B` included.
    for path in [
        "/api/telemetry/traces/live?domain=ex%61mple.org",
        "/api/telemetry/traces/live?q=level%3Derror",
        "/api/telemetry/traces/live?filter=mailbox+full&reason=a%2Bb",
        "/api/telemetry/metrics/live?metrics=%2A.request-time&interval=5",
    ] {
        let c = SseClient::connect(addr, path, Some(TOKEN)).await;
        assert_eq!(c.status, 200, "{path}");
    }
    for path in [
        "/api/telemetry/traces?filter=ex%61mple.org&queue_id=Q%34%32",
        "/api/telemetry/metrics?metrics=queue%2E*&after=2026-11-01",
        "/api/livetap/query-check?q=level%3Derror",
    ] {
        let r = request(addr, "GET", path, &[("Authorization", &auth)], b"").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    still_fine(&server, &mut w, "broken percent-encoding").await;
    server.shutdown().await;
}
