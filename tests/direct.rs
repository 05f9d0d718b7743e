//! Live-trace requests on plain connections are read by livetap itself (`src/http/direct.rs`)
//! and streamed without hyper; every other request, and live requests it does not take
//! (HTTP/1.0, after another request on a keep-alive connection, pipelined), go to hyper. Both
//! kinds must stream the same events with the same framing, answer errors as whole JSON
//! responses, free the subscription when the client leaves, and drop a client that stops
//! reading once a write has waited for the write timeout.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIVE: &str = "/api/telemetry/traces/live";

/// Numbered by `total`, a catalogue key, which the classic stream sends.
fn events(from: u64, n: u64) -> Vec<Value> {
    (from..from + n)
        .map(|i| json!({"type": "smtp.ehlo", "data": {"total": i, "domain": "example.org"}}))
        .collect()
}

/// Sends `raw` on a new connection in pieces of `piece` bytes, then reads the answer's head.
async fn send_in_pieces(addr: std::net::SocketAddr, raw: &[u8], piece: usize) -> SseClient {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for part in raw.chunks(piece) {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::timeout(DEADLINE, SseClient::read_answer(s)).await.expect("an answer")
}

fn live_request(addr: std::net::SocketAddr, version: &str, query: &str) -> String {
    format!("GET {LIVE}?{query} {version}\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_hyper_streams_carry_the_same_events() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    // Read by livetap: a head sent a few bytes at a time still makes one request.
    let mut direct = send_in_pieces(addr, live_request(addr, "HTTP/1.1", "follow=false").as_bytes(), 7).await;
    // Left to hyper: HTTP/1.0 (no chunked coding), and a live request after another request on
    // one keep-alive connection, and one pipelined behind another.
    let mut http10 =
        send_in_pieces(addr, live_request(addr, "HTTP/1.0", "follow=false").as_bytes(), 4096).await;
    let mut kept = {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\"ok\"") {
            let n = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "healthz answered on a kept-alive connection");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(live_request(addr, "HTTP/1.1", "follow=false").as_bytes()).await.unwrap();
        SseClient::read_answer(s).await
    };
    let mut pipelined = {
        let mut raw = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        raw.push_str(&live_request(addr, "HTTP/1.1", "follow=false"));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let seen = read_until(&mut s, &[], "stream open").await;
        assert!(seen.starts_with("HTTP/1.1 200"), "healthz answered first: {seen}");
        assert!(seen.contains("\"ok\"") && seen.contains("text/event-stream"), "{seen}");
        s
    };
    assert_eq!(direct.status, 200);
    assert_eq!(direct.header("transfer-encoding"), Some("chunked"));
    assert_eq!(direct.header("content-type"), Some("text/event-stream"));
    assert_eq!(direct.header("x-accel-buffering"), Some("no"));
    assert!(direct.header("date").is_some(), "a date header, as hyper sends");
    assert_eq!(http10.status, 200);
    assert_eq!(http10.header("transfer-encoding"), None, "HTTP/1.0 has no chunked coding");
    assert_eq!(kept.status, 200);
    wait_stats(addr, "four live subscribers", |s| s["subscribers"] == 4).await;

    // A large batch makes frames bigger than one write, so partial writes happen on the
    // direct path; every subscriber gets all events, in order, once.
    let total = 3000;
    for batch in 0..3 {
        ingest_ok(addr, &events(batch * 1000, 1000)).await;
    }
    for (name, c) in [("direct", &mut direct), ("http/1.0", &mut http10), ("keep-alive", &mut kept)] {
        let got = c.collect(total as usize, DEADLINE).await;
        assert_eq!(got.events.len(), total as usize, "{name}");
        let ns: Vec<u64> = got.events.iter().map(|e| e["data"]["total"].as_u64().unwrap()).collect();
        assert_eq!(ns, (0..total).collect::<Vec<_>>(), "{name}: in order, once");
        assert_increasing(&got.ids);
    }
    let seen = read_until(&mut pipelined, &[], &format!("\"total\":{}", total - 1)).await;
    assert!(
        seen.contains("\"total\":0,") || seen.contains("\"total\":0}"),
        "the pipelined stream got the events"
    );

    // A client that sends bytes on an open stream is ignored; the stream goes on.
    direct.stream_mut().write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
    ingest_ok(addr, &events(total, 1)).await;
    let more = direct.collect_events(1, DEADLINE).await;
    assert_eq!(more[0]["data"]["total"], total);

    // At shutdown the direct stream ends with the chunked terminator.
    let shutdown = tokio::spawn(server.shutdown());
    direct.expect_end(DEADLINE).await;
    assert!(direct.ended_cleanly(), "the stream ends with the last chunk");
    shutdown.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_errors_are_whole_json_answers_and_leaving_frees_the_subscription() {
    let server = start_server(|c| c.cors_origins = vec!["https://dash.example.org".into()]).await;
    let addr = server.addr;
    // No credentials: 401 with its JSON body and the Bearer challenge, then the connection
    // closes (the direct path serves one request).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {LIVE} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await.expect("answered and closed").unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    assert!(head.contains("\r\nwww-authenticate: Bearer"), "{head}");
    assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"], "unauthorized");

    // A bad query: 400 naming the parameter.
    let bad = SseClient::connect(addr, &format!("{LIVE}?remote-ip=not-an-ip"), Some(TOKEN)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_json()["parameter"], "remote-ip");
    assert_eq!(bad.header("connection"), Some("close"));

    // A CORS request from an origin that is not allowed is refused the same way hyper's path
    // refuses it: the direct path goes through the same handler.
    let origin = SseClient::connect_with(
        addr,
        LIVE,
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Origin", "https://evil.example")],
    )
    .await;
    let hyper_origin = request(
        addr,
        "GET",
        "/api/livetap/query-check?filter=x",
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(origin.status, 403);
    assert_eq!(origin.status, hyper_origin.status);
    let allowed = SseClient::connect_with(
        addr,
        LIVE,
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Origin", "https://dash.example.org")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://dash.example.org"));
    drop(allowed);
    wait_stats(addr, "no subscriber left", |s| s["subscribers"] == 0).await;

    // Streams that leave (closed, or reset) free their subscription.
    let a = SseClient::connect(addr, LIVE, Some(TOKEN)).await;
    let b = SseClient::connect(addr, &format!("{LIVE}?domain=example.org"), Some(TOKEN)).await;
    wait_stats(addr, "two subscribers", |s| s["subscribers"] == 2).await;
    drop(a);
    wait_stats(addr, "a closed stream unsubscribed", |s| s["subscribers"] == 1).await;
    let sock = socket2_reset(b);
    drop(sock);
    wait_stats(addr, "a reset stream unsubscribed", |s| s["subscribers"] == 0).await;
    wait_stats(addr, "connections closed", |s| s["connections"].as_u64().unwrap() <= 1).await;
    server.shutdown().await;
}

/// Reads `s` until its bytes (after `already`) contain `needle`; returns them as text.
async fn read_until(s: &mut TcpStream, already: &[u8], needle: &str) -> String {
    let mut got = already.to_vec();
    let mut buf = vec![0u8; 64 * 1024];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await.expect("more bytes in time").unwrap();
        assert!(n > 0, "closed before {needle:?}: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Turns the client's socket into one that resets the connection when dropped.
fn socket2_reset(c: SseClient) -> TcpStream {
    let s = c.into_stream();
    socket_linger_zero(&s);
    s
}

/// `SO_LINGER` of zero: closing sends a reset instead of a FIN.
fn socket_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_hits_the_write_timeout_on_the_direct_path() {
    // The reaper would also close it once its queue stays full; keep the queue large and the
    // stall timeout long so that only the socket's write timeout can act.
    let server = start_server(|c| {
        c.write_timeout_secs = 1;
        c.stall_timeout_secs = 600;
        c.subscriber_queue = 100_000;
    })
    .await;
    let addr = server.addr;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    s.write_all(live_request(addr, "HTTP/1.1", "follow=false").as_bytes()).await.unwrap();
    let head = read_until(&mut s, &[], "stream open").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    wait_stats(addr, "one subscriber", |s| s["subscribers"] == 1).await;
    // About 10 MB, never read: more than twice the largest send buffer Linux grants by default
    // (`tcp_wmem` 4 MiB), so the hub's writes must block.
    let blob = "x".repeat(4000);
    for b in 0..8 {
        let batch: Vec<Value> = (0..300)
            .map(|i| json!({"type": "smtp.rcpt-to", "data": {"total": b * 300 + i, "reason": blob}}))
            .collect();
        ingest_ok(addr, &batch).await;
    }
    let st = wait_stats(addr, "the write timed out and the stream ended", |s| {
        s["write_timeouts"].as_u64().unwrap() >= 1 && s["subscribers"] == 0
    })
    .await;
    assert_eq!(st["dropped"], 0, "nothing was dropped for lag: the queue never filled");
    drop(s);
    server.shutdown().await;
}
