//! Live metrics over real HTTP: event counters after a known ingest, pushed samples streamed,
//! histograms derived from events, the interval and pings (counted frames, no timing), the
//! Prometheus exposition read by an independent parser, bad parameters, scraping a tiny
//! upstream Prometheus endpoint started by the test, and a clean end at shutdown.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

const LIVE: &str = "/api/telemetry/metrics/live";

/// The next `event: metrics` frame's samples (pings skipped), or `None` when the stream ended
/// or `timeout` passed first.
async fn next_metrics(s: &mut SseClient, timeout: Duration) -> Option<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = s.next_frame(left).await?;
        match f.event.as_str() {
            "metrics" => {
                assert!(f.id.is_none(), "metrics frames carry no id, as in Stalwart");
                return Some(serde_json::from_str(&f.data).expect("metrics data is a JSON array"));
            }
            "ping" => continue,
            other => panic!("unexpected SSE event {other:?}: {f:?}"),
        }
    }
}

/// The samples by id.
fn by_id(samples: &[Value]) -> HashMap<String, Value> {
    samples.iter().map(|s| (s["id"].as_str().expect("sample id").to_string(), s.clone())).collect()
}

/// Waits until every matcher thread has read (and so counted) `n` events.
async fn wait_counted(addr: SocketAddr, n: u64) {
    wait_stats(addr, "events counted", |s| s["matched"].as_u64() >= Some(n)).await;
}

async fn connect(addr: SocketAddr, query: &str) -> SseClient {
    let s = SseClient::connect(addr, &format!("{LIVE}?{query}"), Some(TOKEN)).await;
    assert_eq!(s.status, 200, "{:?}", s.error_body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()));
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_after_a_known_ingest() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut events = Vec::new();
    for i in 0..7 {
        events.push(json!({"type": "smtp.connection-start", "data": {"remoteIp": "10.0.0.5", "spanId": i}}));
    }
    for _ in 0..3 {
        events.push(json!({"type": "auth.failed"}));
    }
    // A type no catalogue knows is counted under its own name.
    events.push(json!({"type": "postfix.qmgr-removed"}));
    events.push(json!({"type": "postfix.qmgr-removed"}));
    // Delivery attempts carry `elapsed`: they feed delivery.attempt-time.
    for ms in [100, 200, 300, 400] {
        events.push(json!({"type": "delivery.attempt-end", "data": {"elapsed": ms}}));
    }
    events.push(json!({"type": "queue.queue-message", "data": {"size": 12_000, "queueId": 1}}));
    ingest_ok(addr, &events).await;
    wait_counted(addr, events.len() as u64).await;

    // A long interval: the first frame still comes at once.
    let mut s = connect(
        addr,
        "metrics=smtp.connection-start,auth.*,postfix.*,delivery.*,message.size,smtp.ehlo&interval=3600",
    )
    .await;
    let samples = next_metrics(&mut s, DEADLINE).await.expect("a first frame at once");
    let m = by_id(&samples);
    assert_eq!(m["smtp.connection-start"], json!({"id":"smtp.connection-start","type":"counter","value":7}));
    assert_eq!(m["auth.failed"]["value"], 3);
    assert_eq!(m["postfix.qmgr-removed"]["value"], 2);
    assert_eq!(m["delivery.attempt-end"]["value"], 4);
    // Counters at zero are not sent.
    assert!(!m.contains_key("smtp.ehlo") && !m.contains_key("auth.success"), "{samples:?}");
    let h = &m["delivery.attempt-time"];
    assert_eq!(
        (h["type"].as_str(), h["count"].as_u64(), h["sum"].as_f64()),
        (Some("histogram"), Some(4), Some(1000.0))
    );
    for (p, want) in [("p50", 200.0), ("p90", 400.0), ("p99", 400.0)] {
        let got = h[p].as_f64().unwrap();
        assert!((got - want).abs() <= want * 0.03125, "{p}: {got} vs {want}");
    }
    assert_eq!(m["message.size"]["count"], 1);
    assert_eq!(m["message.size"]["p50"], 12_000);
    // Histograms without observations are not sent; the filter holds.
    assert!(!m.contains_key("delivery.total-time") && !m.contains_key("queue.queue-message"));

    // All metrics by default, livetap's own among them.
    let mut all = connect(addr, "").await;
    let m = by_id(&next_metrics(&mut all, DEADLINE).await.unwrap());
    assert_eq!(m["livetap.events-accepted"]["value"], events.len());
    assert_eq!(m["livetap.subscribers"]["value"], 0);
    assert_eq!(m["livetap.metric-streams"]["value"], 2);
    assert!(m["server.memory"]["value"].as_u64().unwrap() > 1 << 20);
    assert_eq!(m["smtp.connection-start"]["value"], 7);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_samples_are_streamed() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let body = b"{\"metric\":\"queue.count\",\"type\":\"gauge\",\"value\":12}\n\
                 {\"type\":\"auth.success\"}\n\
                 {\"metric\":\"delivery.total-time\",\"type\":\"histogram\",\"values\":[50,150]}\n\
                 {\"metric\":\"postfix.deferred\",\"value\":4}\n\
                 {\"metric\":\"queue.count\",\"type\":\"counter\",\"value\":1}\n\
                 {\"metric\":\"queue.count\",\"value\":\"twelve\"}\n";
    let r = ingest(addr, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(
        (j["accepted"].as_u64(), j["metrics"].as_u64(), j["rejected"].as_u64()),
        (Some(1), Some(3), Some(2))
    );
    let lines: Vec<u64> =
        j["errors"].as_array().unwrap().iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [5, 6], "{j}");
    assert!(j["errors"][0]["reason"].as_str().unwrap().contains("is a gauge"), "{j}");

    let mut s = connect(addr, "metrics=queue.count,delivery.total-time,postfix.*&interval=1").await;
    let m = by_id(&next_metrics(&mut s, DEADLINE).await.unwrap());
    assert_eq!(m["queue.count"], json!({"id":"queue.count","type":"gauge","value":12}));
    assert_eq!(
        (m["delivery.total-time"]["count"].as_u64(), m["delivery.total-time"]["sum"].as_u64()),
        (Some(2), Some(200))
    );
    // An unknown name without a type is a gauge.
    assert_eq!(m["postfix.deferred"]["type"], "gauge");

    // The same record form in a JSON array body; the stream shows the new value.
    let r = ingest(addr, br#"[{"metric":"queue.count","value":13}]"#).await;
    assert_eq!((r.status, r.json()["metrics"].as_u64()), (200, Some(1)), "{}", r.text());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = by_id(&next_metrics(&mut s, DEADLINE).await.expect("frames every second"));
        if m["queue.count"]["value"] == 13 {
            break;
        }
        assert!(Instant::now() < deadline, "the pushed gauge never reached the stream");
    }
    // A body of records only, all bad, is a 400 like a body of bad events.
    let r = ingest(addr, b"{\"metric\":\"livetap.memory\",\"value\":1}\n").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["errors"][0]["reason"].as_str().unwrap().contains("reserved"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_is_honoured_and_pings_fill_long_intervals() {
    let server = start_server(|c| c.ping_interval_secs = 1).await;
    let addr = server.addr;
    let mut fast = connect(addr, "metrics=livetap.*&interval=1").await;
    let mut slow = connect(addr, "metrics=livetap.*&interval=3600").await;
    // Three frames on the one-second stream (at least two seconds)…
    for i in 0..3 {
        let m = next_metrics(&mut fast, DEADLINE).await.unwrap_or_else(|| panic!("frame {i}"));
        assert!(m.iter().all(|s| s["id"].as_str().unwrap().starts_with("livetap.")), "{m:?}");
    }
    // …while the hour-long stream sent its first frame and then only pings.
    let mut metrics_frames = 0;
    let mut pings = 0;
    while metrics_frames + pings < 3 {
        let f = slow.next_frame(DEADLINE).await.expect("frames on the slow stream");
        match f.event.as_str() {
            "metrics" => metrics_frames += 1,
            "ping" => {
                assert_eq!(f.data, "{\"interval\": 1000}");
                pings += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((metrics_frames, pings), (1, 2));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_auth() {
    let server = start_server(|c| c.metrics_max_interval_secs = 600).await;
    let addr = server.addr;
    for (query, parameter) in [
        ("interval=0", "interval"),
        ("interval=601", "interval"),
        ("interval=soon", "interval"),
        ("interval=5&interval=6", "interval"),
        ("metrics=queue.count,,x", "metrics"),
        ("metrics=queue%20count", "metrics"),
        // A typo of a parameter; other unknown names are ignored (`tests/v016.rs`).
        ("metric=smtp.*", "metric"),
    ] {
        let s = SseClient::connect(addr, &format!("{LIVE}?{query}"), Some(TOKEN)).await;
        assert_eq!(s.status, 400, "{query}");
        let e = s.error_json();
        assert_eq!(e["parameter"], parameter, "{query}: {e}");
        assert_eq!(e["error"], "invalid query parameter");
        assert!(e["detail"].as_str().unwrap().contains(parameter), "{e}");
        assert!(e["expected"].is_string(), "{e}");
    }
    let s = SseClient::connect(addr, &format!("{LIVE}?interval=700"), Some(TOKEN)).await;
    assert!(s.error_json()["expected"].as_str().unwrap().contains("1 to 600"));
    let s = SseClient::connect(addr, LIVE, None).await;
    assert_eq!(s.status, 401);
    let s = SseClient::connect(addr, LIVE, Some("wrong-token-wrong-token")).await;
    assert_eq!(s.status, 401);
    assert_eq!(request(addr, "GET", "/metrics", &[], b"").await.status, 401);
    let r = request_auth(addr, "POST", LIVE, b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_exposition_parses() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let events: Vec<Value> = (0..5)
        .map(|_| json!({"type": "smtp.connection-start"}))
        .chain([100, 2000].iter().map(|ms| json!({"type": "delivery.completed", "data": {"elapsed": ms}})))
        .collect();
    ingest_ok(addr, &events).await;
    let r = ingest(addr, b"{\"metric\":\"queue.count\",\"value\":12}\n").await;
    assert_eq!(r.status, 200);
    wait_counted(addr, events.len() as u64).await;

    let r = request_auth(addr, "GET", "/metrics", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let get = |name: &str| scrape.samples.iter().find(|s| s.metric == name).map(|s| s.value.clone());
    use prometheus_parse::Value as P;
    assert_eq!(get("smtp_connection_start_total"), Some(P::Counter(5.0)));
    assert_eq!(get("queue_count"), Some(P::Gauge(12.0)));
    assert_eq!(get("livetap_events_accepted_total"), Some(P::Counter(7.0)));
    assert!(matches!(get("server_memory"), Some(P::Gauge(v)) if v > 1e6));
    let Some(P::Histogram(buckets)) = get("delivery_total_time") else { panic!("no histogram:\n{text}") };
    assert_eq!(buckets.len(), 13, "12 fixed buckets and +Inf");
    let le = |bound: f64| buckets.iter().find(|b| b.less_than == bound).map(|b| b.count);
    assert_eq!(
        (le(50.0), le(100.0), le(1000.0), le(5000.0), le(f64::INFINITY)),
        (Some(0.0), Some(1.0), Some(1.0), Some(2.0), Some(2.0))
    );
    assert_eq!(get("delivery_total_time_sum"), Some(P::Untyped(2100.0)));
    assert_eq!(get("delivery_total_time_count"), Some(P::Untyped(2.0)));
    // Every family has HELP and TYPE, every sample name is valid, and no family repeats.
    let mut types = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            types.push(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            assert!(types.iter().any(|t| name.starts_with(t.as_str())), "sample before its TYPE: {line}");
        }
    }
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(helps, types.len());
    let mut unique = types.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), types.len());
    assert!(text.contains("# HELP delivery_total_time delivery.total-time (milliseconds)\n"), "{text}");
    server.shutdown().await;
}

/// A tiny upstream serving a fixed Prometheus exposition, recording the requests' headers.
async fn upstream(text: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        // Bounded: the test needs a handful of scrapes.
        for _ in 0..200 {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                log.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_an_upstream_prometheus_endpoint() {
    let text = "# HELP stalwart_queue_count Messages in queue\n# TYPE stalwart_queue_count gauge\n\
                stalwart_queue_count 42\n\
                # TYPE stalwart_smtp_connection_start counter\nstalwart_smtp_connection_start 99\n\
                # TYPE stalwart_delivery_total_time histogram\n\
                stalwart_delivery_total_time_bucket{le=\"100\"} 3\n\
                stalwart_delivery_total_time_bucket{le=\"1000\"} 9\n\
                stalwart_delivery_total_time_bucket{le=\"+Inf\"} 10\n\
                stalwart_delivery_total_time_sum 4200\nstalwart_delivery_total_time_count 10\n\
                # TYPE stalwart_mail_backlog gauge\n\
                stalwart_mail_backlog{queue=\"a\"} 2\nstalwart_mail_backlog{queue=\"b\"} 3\n\
                # TYPE process_open_fds gauge\nprocess_open_fds 17\n";
    let (up, seen) = upstream(text).await;
    let server = start_server(|c| {
        c.scrape.push(livetap::config::ScrapeTarget {
            url: format!("http://{up}/metrics/prometheus"),
            interval_secs: 1,
            authorization: Some("Bearer upstream-secret".into()),
            prefix: Some("stalwart_".into()),
            keep_unmapped: false,
            map: [("mail_backlog".to_string(), "queue.backlog".to_string())].into_iter().collect(),
            ..Default::default()
        })
    })
    .await;
    let addr = server.addr;
    // livetap saw one connection itself; the upstream's count replaces it.
    ingest_ok(addr, &[json!({"type": "smtp.connection-start"})]).await;
    wait_counted(addr, 1).await;

    let mut s =
        connect(addr, "metrics=queue.*,smtp.connection-start,delivery.total-time,process*&interval=1").await;
    let deadline = Instant::now() + DEADLINE;
    let m = loop {
        let m = by_id(&next_metrics(&mut s, DEADLINE).await.expect("frames every second"));
        // A scrape's values are applied one by one, so a frame can fall between two of them;
        // wait for a frame after the whole first scrape: every mapped family present, and the
        // upstream's counter in place of livetap's own count of 1.
        let whole =
            ["queue.count", "queue.backlog", "delivery.total-time"].iter().all(|k| m.contains_key(*k))
                && m.get("smtp.connection-start").is_some_and(|c| c["value"] != 1);
        if whole {
            break m;
        }
        assert!(Instant::now() < deadline, "the scrape never reached the stream: {m:?}");
    };
    assert_eq!(m["queue.count"]["value"], 42);
    assert_eq!(m["queue.backlog"]["value"], 5, "labelled series are summed");
    assert_eq!(m["smtp.connection-start"]["value"], 99);
    let h = &m["delivery.total-time"];
    assert_eq!((h["count"].as_u64(), h["sum"].as_u64()), (Some(10), Some(4200)));
    // p50 interpolates inside the (100, 1000] bucket: 100 + 900 × (5 − 3) / 6.
    assert_eq!(h["p50"].as_f64(), Some(400.0));
    assert!(!m.contains_key("process_open_fds"), "keep-unmapped = false");
    let requests = seen.lock().unwrap().clone();
    let first = requests.first().expect("the upstream was scraped");
    assert!(first.starts_with("GET /metrics/prometheus HTTP/1.1\r\n"), "{first}");
    assert!(first.to_ascii_lowercase().contains("authorization: bearer upstream-secret"), "{first}");
    let stats = stats(addr).await;
    assert_eq!(stats["metric_streams"], 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_scrapes_are_counted() {
    // A port that was just free: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let server = start_server(|c| {
        c.scrape.push(livetap::config::ScrapeTarget {
            url: format!("http://{dead}/metrics"),
            interval_secs: 1,
            ..Default::default()
        })
    })
    .await;
    let mut s = connect(server.addr, "metrics=livetap.scrape*&interval=1").await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = by_id(&next_metrics(&mut s, DEADLINE).await.unwrap());
        if m.get("livetap.scrape-failures").is_some_and(|f| f["value"].as_u64() >= Some(1)) {
            assert!(!m.contains_key("livetap.scrapes"));
            break;
        }
        assert!(Instant::now() < deadline, "no failure counted: {m:?}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_cleanly_at_shutdown() {
    let server = start_server(|_| {}).await;
    let mut s = connect(server.addr, "interval=3600").await;
    assert!(next_metrics(&mut s, DEADLINE).await.is_some());
    let hub = server.hub.clone();
    server.shutdown().await;
    s.expect_end(DEADLINE).await;
    assert!(s.ended_cleanly(), "the stream ended without the chunked terminator");
    assert_eq!(hub.metrics.streams(), 0);
}
