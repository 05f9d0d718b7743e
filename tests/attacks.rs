//! Regressions of the holes an adversarial probe found in the release binary (issue 21), each
//! replayed against the real `livetap` binary over real sockets: stalled unverified webhook
//! bodies that locked out every producer, a Unix-socket write larger than the ring that lost
//! events silently, ingest bodies whose memory ran far past the documented bound, a `gap`
//! frame that counted ids that were never handed out, and wrong answers to odd requests.
//! SECURITY.md's table lists each with its outcome.

mod common;

use common::*;
use livetap::auth::sign;
use livetap::Config;
use serde_json::{json, Value};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const KEY: &str = "the-webhook-signing-key";

/// Connects from `from` (any address of 127.0.0.0/8 is this host), so a test can play
/// producers on different source addresses.
async fn connect_from(addr: SocketAddr, from: IpAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Sends a POST head announcing `length` bytes and then only `first` of them, and leaves the
/// body unfinished.
async fn stalled_post(
    addr: SocketAddr,
    from: IpAddr,
    path: &str,
    headers: &str,
    length: usize,
    first: &[u8],
) -> TcpStream {
    let mut s = connect_from(addr, from).await;
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {length}\r\n\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(first);
    s.write_all(&raw).await.unwrap();
    s
}

/// Reads whatever answer has arrived within `wait` (empty when none).
async fn answer_within(s: &mut TcpStream, wait: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

/// A complete request sent from `from`.
async fn post_from(
    addr: SocketAddr,
    from: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let mut s = connect_from(addr, from).await;
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await.expect("an answer").unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // The answer may be chunked; a JSON answer here is one chunk or a plain body.
    let json = body.lines().find(|l| l.starts_with('{')).and_then(|l| serde_json::from_str(l).ok());
    (status, json.unwrap_or(Value::Null))
}

fn config_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("livetap.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn ndjson_of(n: usize, tag: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        writeln!(out, r#"{{"type":"smtp.connection-start","data":{{"id":{i},"tag":"{tag}"}}}}"#).unwrap();
    }
    out
}

/// Item 1: stalled bodies, unauthenticated or from one principal, never hold what other
/// producers need; 503 only ever means a full ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_cannot_lock_out_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        r#"
[[principal]]
name = "shipper"
api-key = "shipper-key-0123456789"
permissions = ["ingest"]
"#,
    );
    let lt = Livetap::start(&["--config", &config, "--webhook-key", KEY]);
    let addr = lt.addr;
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    let stalwart: IpAddr = "127.0.0.2".parse().unwrap();

    // The probe's attack: unsigned webhook bodies that never finish, more of them than
    // `max-concurrent-ingest` (8). The first 4 (max-ingest-bodies-per-source) are held; the
    // rest are refused at once with 429, not queued.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut s = stalled_post(addr, attacker, "/api/telemetry/webhook", "", 100_000, b"{").await;
        let a = answer_within(&mut s, Duration::from_millis(300)).await;
        if a.starts_with("HTTP/1.1 429") {
            assert!(a.contains("max-ingest-bodies-per-source"), "{a}");
            refused += 1;
        } else {
            assert!(a.is_empty(), "a stalled body is answered only when it ends or times out: {a}");
            held.push(s);
        }
    }
    assert_eq!((held.len(), refused), (4, 8));

    // Meanwhile every authenticated producer is served at once.
    let body = ndjson_of(5, "during-attack");
    let auth = format!("Bearer {TOKEN}");
    let (status, answer) =
        post_from(addr, attacker, "/api/telemetry/ingest", &[("Authorization", &auth)], &body).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(5)), "{answer}");
    let shipper = "Bearer shipper-key-0123456789";
    let (status, _) =
        post_from(addr, attacker, "/api/telemetry/ingest", &[("Authorization", shipper)], &body).await;
    assert_eq!(status, 200);
    // Stalwart's signed webhook from its own address is accepted too.
    let hook = serde_json::to_vec(&json!({"events": [{"type": "auth.success", "data": {"id": 1}}]})).unwrap();
    let sig = sign(KEY, &hook);
    let (status, answer) =
        post_from(addr, stalwart, "/api/telemetry/webhook", &[("X-Signature", &sig)], &hook).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)), "{answer}");

    // A principal with `ingest` cannot do the same to others: its 5th stalled body is refused,
    // while the admin (exempt) and the webhook still get through.
    let mut shipper_held = Vec::new();
    for i in 0..5 {
        let headers = format!("Authorization: {shipper}\r\n");
        let mut s = stalled_post(addr, attacker, "/api/telemetry/ingest", &headers, 100_000, b"{").await;
        let a = answer_within(&mut s, Duration::from_millis(300)).await;
        if i < 4 {
            assert!(a.is_empty(), "{a}");
            shipper_held.push(s);
        } else {
            assert!(a.starts_with("HTTP/1.1 429") && a.contains("principal `shipper`"), "{a}");
        }
    }
    let (status, _) =
        post_from(addr, attacker, "/api/telemetry/ingest", &[("Authorization", &auth)], &body).await;
    assert_eq!(status, 200);
    let (status, _) =
        post_from(addr, stalwart, "/api/telemetry/webhook", &[("X-Signature", &sig)], &hook).await;
    assert_eq!(status, 200);

    // A stalled unsigned body that finally ends is checked and refused, and its place returns.
    let mut first = held.remove(0);
    first.write_all(&vec![b' '; 99_999]).await.unwrap();
    let a = answer_within(&mut first, DEADLINE).await;
    assert!(a.starts_with("HTTP/1.1 401"), "{a}");
    let mut s = stalled_post(addr, attacker, "/api/telemetry/webhook", "", 10, b"{").await;
    assert!(answer_within(&mut s, Duration::from_millis(300)).await.is_empty(), "the place came back");
    drop((held, shipper_held, s));
    let st = stats(addr).await;
    assert_eq!(st["accepted"], 5 + 5 + 1 + 5 + 1, "{st}");
}

/// Item 2: one socket write holding more events than the ring (and a chunk grown by a long
/// line) is published in ring-sized slices: every event arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_write_larger_than_the_ring_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("in.sock");
    let lt = Livetap::start(&[
        "--ingest-socket",
        sock.to_str().unwrap(),
        "--ring-capacity",
        "4096",
        "--subscriber-queue",
        "1000000",
    ]);
    let addr = lt.addr;
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    assert_eq!(sub.status, 200);
    // The probe's second case: a 2 MB line (rejected and reported), then 160,000 events, then
    // 3 × 200,000 more, all in single writes far larger than the ring.
    let mut data = Vec::new();
    data.extend_from_slice(&vec![b'x'; 2_000_000]);
    data.push(b'\n');
    for _ in 0..160_000 {
        data.extend_from_slice(b"{\"type\":\"a\"}\n");
    }
    let total = 160_000 + 3 * 200_000;
    let path = sock.clone();
    let writer = std::thread::spawn(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.write_all(&data).unwrap();
        let block = b"{\"type\":\"a\"}\n".repeat(200_000);
        for _ in 0..3 {
            s.write_all(&block).unwrap();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut report = String::new();
        std::io::Read::read_to_string(&mut s, &mut report).unwrap();
        report
    });
    let (events, _, lagged) = sub.count_events(total, Duration::from_secs(120)).await;
    assert_eq!((events, lagged), (total, 0), "every event written reached the subscriber");
    let report = writer.join().unwrap();
    assert!(report.contains(r#""line":1"#) && report.contains("longer than"), "{report}");
    let st = stats(addr).await;
    assert_eq!((st["accepted"].as_u64(), st["rejected"].as_u64()), (Some(total as u64), Some(1)), "{st}");
}

/// Item 3: the worst body shapes stay under `Config::memory_bound`, and the memory of a burst
/// goes back to the system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worst_body_shapes_stay_under_the_memory_bound() {
    // Few streams and connections, so the bound is mostly the ingest term under test.
    let dir = tempfile::tempdir().unwrap();
    let config =
        config_file(dir.path(), "max-subscribers = 8\nsubscriber-queue = 64\nmax-connections = 64\n");
    let lt = Livetap::start(&["--config", &config]);
    let addr = lt.addr;
    let pid = lt.child.id().to_string();
    let c = Config { max_subscribers: 8, subscriber_queue: 64, max_connections: 64, ..Config::default() };
    let bound = c.memory_bound(128).total();
    let auth = format!("Bearer {TOKEN}");
    let max = 8 << 20;
    // 645,000 13-byte events (more than the ring's 65,536): refused after at most a ring's
    // worth was built. The same as one JSON array; as a Stalwart batch, which the webhook takes
    // as a stream and publishes whole, slice by slice (`http/webhook.rs`). An array of 4
    // million zeros (the most tape tokens per byte). Eight of each at once.
    let lines = b"{\"type\":\"a\"}\n".repeat(max / 13);
    let mut array = b"[".to_vec();
    array.extend(b"{\"type\":\"a\"},".repeat(max / 13 - 2));
    array.extend(b"{\"type\":\"a\"}]");
    // The webhook's memory does not grow with the body (it is parsed as a stream), but every
    // event of it is published: a 1 MiB batch each keeps the run short in a debug build.
    let mut batch = b"{\"events\":[".to_vec();
    batch.extend(b"{\"type\":\"a\"},".repeat((1 << 20) / 13 - 2));
    batch.extend(b"{\"type\":\"a\"}]}");
    let mut zeros = b"[".to_vec();
    zeros.extend(b"0,".repeat(max / 2 - 2));
    zeros.extend(b"0]");
    for (what, path, body) in [
        ("lines", "/api/telemetry/ingest", &lines),
        ("array", "/api/telemetry/ingest", &array),
        ("zeros", "/api/telemetry/ingest", &zeros),
        ("batch", "/api/telemetry/webhook", &batch),
    ] {
        assert!(body.len() <= max, "{what}");
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let body = body.clone();
            let auth = auth.clone();
            tasks.push(tokio::spawn(async move {
                request(addr, "POST", path, &[("Authorization", &auth)], &body).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            let want = match what {
                "zeros" => 400,
                "batch" => 200,
                _ => 413,
            };
            if what == "batch" {
                // Eight identical batches from one principal at once: the webhook recognises
                // the copies as resends of one another (`ingest/dedupe.rs`), and a ring kept
                // full past `ingest-wait-ms` by eight producers ends a body with 503 after
                // what it published. Memory is what this test is about.
                assert!(r.status == 200 || r.status == 503, "{what}: {}", r.text());
                continue;
            }
            assert_eq!(r.status, want, "{what}: {}", r.text());
            if want == 413 {
                assert_eq!(r.json()["error"], "batch too large", "{what}");
            }
        }
        eprintln!("{what}: answered at {:?}", started.elapsed());
        let peak = vm_hwm(&pid);
        assert!(peak < bound, "{what}: peak {peak} over the documented bound {bound}");
        eprintln!("{what}: peak rss {} MiB (bound {} MiB)", peak >> 20, bound >> 20);
    }
    // Idle again, the process gives most of it back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_bytes_of(&pid);
    eprintln!("after: rss {} MiB", rss >> 20);
    assert!(rss < 200 << 20, "rss stays high after the burst: {} MiB", rss >> 20);
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn vm_hwm(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Resumes after `last_id`: the gap frame, if any, and the replayed events' count and last id.
async fn gap_of(addr: SocketAddr, last_id: u64) -> (Option<Value>, (usize, Option<u64>)) {
    let mut s = SseClient::connect_with(
        addr,
        "/api/telemetry/traces/live",
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Last-Event-ID", &last_id.to_string())],
    )
    .await;
    assert_eq!(s.status, 200);
    let mut gap = None;
    let (mut n, mut last) = (0, None);
    while let Some(f) = s.next_frame(Duration::from_millis(500)).await {
        match f.event.as_str() {
            "gap" => gap = Some(serde_json::from_str(&f.data).unwrap()),
            "trace" => {
                n += serde_json::from_str::<Vec<Value>>(&f.data).unwrap().len();
                last = f.id.and_then(|i| i.parse().ok());
            }
            _ => {}
        }
    }
    (gap, (n, last))
}

/// Item 4: `missed` counts events that existed; ids a restart skipped are not events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gap_counts_only_events_that_existed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    let mut lt = Livetap::start(&["--data-dir", &data]);
    let first =
        ingest_ok(lt.addr, &(0..10).map(|n| json!({"type": "a.b", "data": {"id": n}})).collect::<Vec<_>>())
            .await;
    assert_eq!(first["lastId"], 10);
    // Before any restart: everything after id 5 is replayed, with no gap.
    let (gap, replayed) = gap_of(lt.addr, 5).await;
    assert_eq!((gap, replayed), (None, (5, Some(10))));

    // A clean stop: the next run continues at id 11, and a resume from 5 misses exactly the 5
    // events history did not keep (none of them has a queue id).
    lt.sigterm();
    assert!(lt.wait_exit().await.success());
    let lt = Livetap::start(&["--data-dir", &data]);
    let next = ingest_ok(lt.addr, &[json!({"type": "a.b"}), json!({"type": "a.b"})]).await;
    assert_eq!(next["firstId"], 11, "no ids skipped after a clean stop");
    let (gap, ids) = gap_of(lt.addr, 5).await;
    let gap = gap.expect("a gap frame");
    assert_eq!((gap["missed"].as_u64(), gap.get("exact")), (Some(5), None), "{gap}");
    assert_eq!(ids, (2, Some(12)));

    // A crash: the ids after the last note of what was handed out may or may not have been
    // used. The count is then a lower bound, and the frame says so.
    wait_stats(lt.addr, "ids noted", |_| {
        std::fs::read_to_string(dir.path().join("sequence-used")).is_ok_and(|s| s.trim() == "12")
    })
    .await;
    let mut lt = lt;
    lt.child.kill().unwrap();
    lt.child.wait().unwrap();
    let lt = Livetap::start(&["--data-dir", &data]);
    let next = ingest_ok(lt.addr, &[json!({"type": "a.b"})]).await;
    let after_crash = next["firstId"].as_u64().unwrap();
    assert!(after_crash > 1 << 19, "ids continue after the reservation: {after_crash}");
    let (gap, ids) = gap_of(lt.addr, 5).await;
    let gap = gap.expect("a gap frame");
    assert_eq!(gap["missed"].as_u64(), Some(7), "ids 6..=12 existed: {gap}");
    assert_eq!(gap["exact"], false, "{gap}");
    assert_eq!(gap["missedAtMost"].as_u64(), Some(7 + after_crash - 1 - 12), "{gap}");
    assert_eq!(ids, (1, Some(after_crash)));
}

/// Item 5: odd requests get their own, correct answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_get_their_own_answers() {
    let lt = Livetap::start(&["--ring-capacity", "1024"]);
    let addr = lt.addr;
    // A batch larger than the ring: 413 named for what it is, nothing accepted.
    let r = ingest(addr, &ndjson_of(2000, "big")).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "batch too large");
    assert!(r.json()["detail"].as_str().unwrap().contains("1024"), "{}", r.text());
    assert_eq!(stats(addr).await["accepted"], 0);
    // A malformed Last-Event-ID header is refused like a malformed parameter.
    for bad in ["abc", "-1", "1.5", "99999999999999999999999"] {
        let s = SseClient::connect_with(
            addr,
            "/api/telemetry/traces/live",
            &[("Authorization", &format!("Bearer {TOKEN}")), ("Last-Event-ID", bad)],
        )
        .await;
        assert_eq!(s.status, 400, "Last-Event-ID: {bad}");
        assert_eq!(s.error_json()["parameter"], "Last-Event-ID");
    }
    let s = SseClient::connect_with(
        addr,
        "/api/telemetry/traces/live",
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Last-Event-ID", " 0 ")],
    )
    .await;
    assert_eq!(s.status, 200);
}
