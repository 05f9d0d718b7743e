//! The tap seam (`livetap::tap`): a counting tap that lives only in this test, with its own
//! query, added to a real server's hub. It receives exactly the matching events, in order,
//! once each; a tap whose queue is too small loses events for itself alone, counted in the
//! stats and told in-band, while a stream beside it receives everything; and shutdown delivers
//! everything accepted before the tap stops.

mod common;

use common::*;
use livetap::tap::{Tap, TapEvent};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the counting tap saw.
#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    types: Vec<String>,
    lagged: u64,
    stopped: bool,
}

struct Counting {
    name: &'static str,
    query: &'static str,
    capacity: usize,
    /// `deliver` waits until this is true: a slow tap.
    open: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
}

impl Tap for Counting {
    fn name(&self) -> &str {
        self.name
    }
    fn query(&self) -> &str {
        self.query
    }
    fn queue_capacity(&self) -> usize {
        self.capacity
    }
    fn deliver(&mut self, events: &[TapEvent]) {
        while !self.open.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut s = self.seen.lock().unwrap();
        for e in events {
            s.seqs.push(e.seq);
            s.types.push(e.event.kind.to_string());
        }
    }
    fn lagged(&mut self, n: u64) {
        self.seen.lock().unwrap().lagged += n;
    }
    fn stop(&mut self) {
        self.seen.lock().unwrap().stopped = true;
    }
}

fn counting(
    name: &'static str,
    query: &'static str,
    capacity: usize,
) -> (Counting, Arc<Mutex<Seen>>, Arc<AtomicBool>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let open = Arc::new(AtomicBool::new(true));
    (Counting { name, query, capacity, open: open.clone(), seen: seen.clone() }, seen, open)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_gets_what_its_query_matches_and_only_its_own_queue_drops() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let (errors, seen, _) = counting("errors", "level=error", 1024);
    server.hub.add_tap(Box::new(errors)).await.unwrap();
    // A slow tap with a queue of 8, held back while 100 events arrive.
    let (slow, slow_seen, open) = counting("slow", "", 8);
    open.store(false, Ordering::Release);
    server.hub.add_tap(Box::new(slow)).await.unwrap();
    let mut stream = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;

    let events: Vec<_> = (0..100)
        .map(|i| {
            let level = if i % 10 == 3 { "error" } else { "info" };
            json!({"type": format!("test.e{i}"), "level": level})
        })
        .collect();
    let answer = ingest_ok(addr, &events).await;
    let first = answer["firstId"].as_u64().unwrap() - 1;
    // The stream beside the taps gets everything.
    assert_eq!(stream.count_events(100, DEADLINE).await.0, 100);
    // The error tap: exactly the 10 errors, in order, once each.
    wait_for("the error tap", || seen.lock().unwrap().seqs.len() == 10).await;
    {
        let s = seen.lock().unwrap();
        let want: Vec<u64> = (0..100).filter(|i| i % 10 == 3).map(|i| first + i).collect();
        assert_eq!(s.seqs, want);
        assert_eq!(s.types[0], "test.e3");
        assert_eq!(s.lagged, 0);
    }
    // The slow tap: its queue of 8 held what it could, the rest was dropped for it alone.
    open.store(true, Ordering::Release);
    wait_for("the slow tap", || {
        let s = slow_seen.lock().unwrap();
        s.seqs.len() as u64 + s.lagged == 100
    })
    .await;
    let st = stats(addr).await;
    let taps = st["taps"].as_array().unwrap();
    let slow_stats = taps.iter().find(|t| t["name"] == "slow").unwrap();
    let dropped = slow_stats["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{st}");
    assert_eq!(slow_seen.lock().unwrap().lagged, dropped, "told in-band exactly what the stats count");
    let error_stats = taps.iter().find(|t| t["name"] == "errors").unwrap();
    assert_eq!((error_stats["matched"].as_u64(), error_stats["dropped"].as_u64()), (Some(10), Some(0)));
    assert_eq!(error_stats["query"], "level=error");
    // Taps are not streams: the stream counters hold only the stream's deliveries.
    assert_eq!(
        (st["subscribers"].as_u64(), st["deliveries"].as_u64(), st["dropped"].as_u64()),
        (Some(1), Some(100), Some(0))
    );

    // Shutdown delivers everything accepted to the taps, then stops them.
    ingest_ok(addr, &[json!({"type": "test.last", "level": "error"})]).await;
    drop(stream);
    server.shutdown().await;
    let s = seen.lock().unwrap();
    assert_eq!((s.seqs.len(), s.types.last().map(String::as_str), s.stopped), (11, Some("test.last"), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_with_a_bad_query_is_refused() {
    let server = start_server(|_| {}).await;
    let (bad, _, _) = counting("bad", "level=loud", 16);
    let err = server.hub.add_tap(Box::new(bad)).await.unwrap_err();
    assert!(err.to_string().contains("tap `bad`: invalid query"), "{err}");
    server.shutdown().await;
}
