//! The Unix-socket NDJSON source in-process: events reach subscribers, rejected lines are
//! reported back with correct line numbers however the stream is split, and lines longer
//! than `max-line-bytes` are rejected once and skipped.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Writes `parts` (each with its own write call), closes the write half, and returns the
/// reports the server wrote back before closing its side.
async fn produce(sock: &Path, parts: &[Vec<u8>]) -> Vec<Value> {
    let fut = async {
        let mut s = UnixStream::connect(sock).await.expect("connect to the ingest socket");
        for p in parts {
            s.write_all(p).await.unwrap();
        }
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.lines().map(|l| serde_json::from_str(l).expect("report line is JSON")).collect()
    };
    tokio::time::timeout(DEADLINE, fut).await.expect("the server closes the socket after EOF")
}

fn line(n: usize) -> String {
    json!({"type": "smtp.ehlo", "data": {"id": n, "domain": "mx.example.org"}}).to_string() + "\n"
}

/// A server listening on a Unix socket in a fresh directory (with `max_line_bytes` when given),
/// and an unfiltered subscriber connected to it. The directory must outlive the test.
async fn socket_server(
    max_line: Option<usize>,
) -> (tempfile::TempDir, std::path::PathBuf, livetap::Server, SseClient) {
    socket_server_with(|c| {
        if let Some(m) = max_line {
            c.max_line_bytes = m;
        }
    })
    .await
}

/// [`socket_server`] with further settings.
async fn socket_server_with(
    tweak: impl FnOnce(&mut livetap::Config),
) -> (tempfile::TempDir, std::path::PathBuf, livetap::Server, SseClient) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("in.sock");
    let server = start_server(|c| {
        c.ingest_socket = Some(sock.clone());
        tweak(c);
    })
    .await;
    let sub = SseClient::connect(server.addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    (dir, sock, server, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_numbers_survive_any_split() {
    let (_dir, sock, server, mut sub) = socket_server(None).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is created with mode 0660");

    let mut text = String::new();
    for n in 1..=12 {
        match n {
            5 => text.push_str("{\"type\":\n"),
            9 => text.push_str("{\"data\":{}}\n"),
            7 => text.push('\n'), // blank lines count as lines
            _ => text.push_str(&line(n)),
        }
    }
    text.push_str(line(13).trim_end()); // no final newline: taken at EOF
                                        // One write per 7 bytes, so lines straddle writes (and probably reads).
    let parts: Vec<Vec<u8>> = text.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
    let reports = produce(&sock, &parts).await;
    let lines: Vec<_> = reports.iter().map(|r| r["line"].clone()).collect();
    assert_eq!(lines, [json!(5), json!(9)], "{reports:?}");
    assert!(reports[0]["error"].as_str().unwrap().starts_with("malformed JSON"));
    assert!(reports[1]["error"].as_str().unwrap().contains("type"));

    let want: Vec<Value> = [1, 2, 3, 4, 6, 8, 10, 11, 12, 13].into_iter().map(|n| json!(n)).collect();
    let got = sub.collect_events(want.len(), DEADLINE).await;
    assert_eq!(field(&got, "id"), want);
    let s = stats(server.addr).await;
    assert_eq!((s["accepted"].as_u64(), s["rejected"].as_u64()), (Some(10), Some(2)), "{s}");
    server.shutdown().await;
    assert!(!sock.exists(), "the socket file is removed at shutdown");
}

/// A line far larger than the read buffer: rejected with one report, skipped up to its
/// newline, and the lines around it are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_line_is_rejected_once_and_skipped() {
    let (_dir, sock, server, mut sub) = socket_server(Some(256)).await;
    let huge =
        json!({"type": "smtp.ehlo", "data": {"id": 2, "reason": "z".repeat(1 << 20)}}).to_string() + "\n";
    let parts = vec![line(1).into_bytes(), huge.into_bytes(), line(3).into_bytes()];
    let reports = produce(&sock, &parts).await;
    assert_eq!(
        reports.len(),
        1,
        "one report per over-long line, not one per read: {:?}",
        &reports[..reports.len().min(3)]
    );
    assert_eq!(reports[0]["line"], 2);
    assert_eq!(reports[0]["error"], "line longer than 256 bytes");
    let got = sub.collect_events(2, DEADLINE).await;
    assert_eq!(field(&got, "id"), [json!(1), json!(3)]);
    let s = stats(server.addr).await;
    assert_eq!((s["accepted"].as_u64(), s["rejected"].as_u64()), (Some(2), Some(1)), "{s}");
    server.shutdown().await;
}

/// A line over the limit that arrives complete in one read must be rejected too (the limit is
/// documented per line, not per read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_line_within_one_read_is_rejected() {
    let (_dir, sock, server, mut sub) = socket_server(Some(256)).await;
    let long = json!({"type": "smtp.ehlo", "data": {"id": 2, "reason": "z".repeat(1000)}}).to_string() + "\n";
    let all = line(1) + &long + &line(3);
    let reports = produce(&sock, &[all.into_bytes()]).await;
    let got = sub.collect_events(2, DEADLINE).await;
    assert_eq!(reports.len(), 1, "the 1 KB line passed a 256-byte max-line-bytes: {reports:?}");
    assert_eq!(reports[0]["line"], 2);
    assert_eq!(field(&got, "id"), [json!(1), json!(3)]);
    server.shutdown().await;
}

/// Large writes are parsed in parallel chunks on the parse threads; events must still be
/// published in the producer's order, none lost or duplicated, and a rejected line deep inside
/// a later chunk must carry its true line number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_chunks_keep_order_and_line_numbers() {
    // The whole burst fits the subscriber's queue: the hub ingests 20,000 events faster than
    // this test's client reads them, and with the default queue (8,192) the subscriber would
    // lag and be told so (`event: lagged`), which is not what this test is about.
    let (_dir, sock, _server, mut sub) = socket_server_with(|c| c.subscriber_queue = 32_768).await;
    const LINES: usize = 20_000;
    const BAD: usize = 15_001;
    let mut text = String::new();
    for n in 1..=LINES {
        if n == BAD {
            text.push_str("{\"type\": 7}\n");
        } else {
            text.push_str(&line(n));
        }
    }
    // Writes of 256 KB: each read the hub makes is far above its inline-parse threshold.
    let parts: Vec<Vec<u8>> = text.as_bytes().chunks(256 * 1024).map(<[u8]>::to_vec).collect();
    assert!(parts.len() >= 4, "the body spans several chunks");
    let reports = produce(&sock, &parts).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["line"], BAD);
    let events = sub.collect_events(LINES - 1, DEADLINE).await;
    let ns: Vec<u64> = field(&events, "id").iter().map(|v| v.as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=LINES as u64).filter(|&n| n != BAD as u64).collect();
    assert_eq!(ns.len(), want.len(), "every accepted event arrives once");
    assert!(ns == want, "events arrive in the producer's order");
}

/// Metric records work over the socket as over HTTP: applied once the chunk is accepted, and
/// a refused record is reported back with its line number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_records_over_the_socket() {
    let (_dir, sock, server, mut sub) = socket_server(None).await;
    let text = format!(
        "{}{}\n{}\n{}",
        line(1),
        r#"{"metric":"queue.count","type":"gauge","value":7}"#,
        r#"{"metric":"queue.count","type":"counter","value":1}"#,
        line(4).trim_end()
    );
    let reports = produce(&sock, &[text.into_bytes()]).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["line"], 3);
    assert_eq!(field(&sub.collect_events(2, DEADLINE).await, "id"), [json!(1), json!(4)]);
    let r = request_auth(server.addr, "GET", "/metrics", b"").await;
    assert_eq!(r.status, 200);
    assert!(r.text().lines().any(|l| l == "queue_count 7"), "{}", r.text());
}
