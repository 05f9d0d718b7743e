//! Slow subscribers over real sockets: a stalled one (stops reading) has events dropped for it
//! alone and is disconnected by the reaper while a normal subscriber receives every event; a
//! paused one is told in-band (`lagged` frames) exactly how many events it missed.

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const EVENTS: usize = 40_000;
const BATCH: usize = 200;
const QUEUE: usize = 256;

/// Opens a live stream with a tiny receive buffer, reads only the response head, and returns
/// the socket without ever reading from it again.
async fn stalled_subscriber(addr: std::net::SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET /api/telemetry/traces/live HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut byte)).await.expect("head in time").unwrap();
        assert_eq!(n, 1, "closed before the head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    s
}

fn subscriber_detail(s: &Value) -> Vec<Value> {
    s["subscriber_detail"].as_array().expect("subscriber_detail").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_dropped_for_and_disconnected_while_others_get_everything() {
    let server = start_server(|c| {
        c.subscriber_queue = QUEUE;
        c.stall_timeout_secs = 2;
        c.ring_capacity = 4096;
    })
    .await;
    let addr = server.addr;

    let mut normal = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    assert_eq!(normal.status, 200);
    let detail = subscriber_detail(&stats(addr).await);
    assert_eq!(detail.len(), 1);
    let normal_id = detail[0]["id"].as_u64().unwrap();

    let mut stalled = stalled_subscriber(addr).await;
    assert_eq!(stats(addr).await["subscribers"], 2);

    let blob = "x".repeat(1000);
    let mut received = 0usize;
    let mut lag_frames = 0usize;
    let mut stalled_dropped_seen = 0u64;
    for b in 0..EVENTS / BATCH {
        let events: Vec<Value> = (0..BATCH)
            .map(|i| json!({"type": "smtp.rcpt-to", "data": {"id": b * BATCH + i, "reason": blob}}))
            .collect();
        ingest_ok(addr, &events).await;
        // Pace the producer on the normal subscriber, so its queue (as small as the stalled
        // one's) never overflows: a lag there would be the test's doing, not the server's.
        let target = (b + 1) * BATCH;
        let (n, _, lag) = normal.count_events(target - received, DEADLINE).await;
        received += n;
        lag_frames += lag;
        assert_eq!(received, target, "the normal subscriber stopped receiving");
        for d in subscriber_detail(&stats(addr).await) {
            if d["id"] != normal_id {
                stalled_dropped_seen = stalled_dropped_seen.max(d["dropped"].as_u64().unwrap());
            } else {
                assert_eq!(d["dropped"], 0, "the normal subscriber lagged: {d}");
            }
        }
    }
    assert_eq!(received, EVENTS);
    assert_eq!(lag_frames, 0);
    assert!(stalled_dropped_seen > 0, "the stalled subscriber never showed drops in subscriber_detail");

    // The reaper closes the stalled connection: one subscriber left.
    let s = wait_stats(addr, "stalled subscriber disconnected", |s| s["subscribers"] == 1).await;
    let detail = subscriber_detail(&s);
    assert_eq!(detail.len(), 1);
    assert_eq!(detail[0]["id"], normal_id);
    assert_eq!(detail[0]["delivered"], EVENTS);
    assert_eq!(detail[0]["dropped"], 0);
    assert!(s["dropped"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["accepted"], EVENTS);

    // The stalled client finds its connection closed once it drains what the kernel buffered.
    let mut buf = vec![0u8; 256 * 1024];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection was not closed");

    // The normal subscriber still works.
    ingest_ok(addr, &[json!({"type": "auth.success", "data": {"id": "after"}})]).await;
    let after = normal.collect_events(1, DEADLINE).await;
    assert_eq!(after[0]["data"]["id"], "after");
    server.shutdown().await;
}

/// A subscriber that pauses reading (but within the stall timeout) is told in-band, at the
/// right position, how many events it missed: what it receives plus what the `lagged` frames
/// count is exactly what was ingested, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_subscriber_is_told_how_many_events_it_missed() {
    const TOTAL: usize = 3_000;
    let server = start_server(|c| {
        c.subscriber_queue = 64;
        c.stall_timeout_secs = 3600;
    })
    .await;
    let addr = server.addr;
    let mut paused =
        SseClient::connect_small_buffer(addr, "/api/telemetry/traces/live", Some(TOKEN), 4096).await;
    assert_eq!(paused.status, 200);

    let blob = "y".repeat(4000);
    for b in 0..TOTAL / 100 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"type": "delivery.delivered", "data": {"id": b * 100 + i, "reason": blob}}))
            .collect();
        ingest_ok(addr, &events).await;
    }
    // Every event has been matched (pushed or dropped) before the client reads anything.
    let s = wait_stats(addr, "all events matched", |s| s["matched"] == TOTAL).await;
    let dropped = s["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "the paused subscriber should have lagged (12 MB against a 64-event queue): {s}");
    assert_eq!(s["deliveries"].as_u64().unwrap() + dropped, TOTAL as u64, "{s}");

    let got = paused
        .collect_until(DEADLINE, |c| c.events.len() as u64 + c.lagged.iter().sum::<u64>() >= TOTAL as u64)
        .await;
    assert!(!got.lagged.is_empty(), "no lagged frame");
    assert_eq!(got.lagged.iter().sum::<u64>(), dropped);
    assert_eq!(got.events.len() as u64 + dropped, TOTAL as u64);
    let ns: Vec<u64> = got.events.iter().map(|e| e["data"]["id"].as_u64().unwrap()).collect();
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "events out of order");
    assert_eq!(ns[0], 0, "the first events were queued before the lag");
    assert_increasing(&got.ids);
    server.shutdown().await;
}
