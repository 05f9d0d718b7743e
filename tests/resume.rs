//! Resumable live streams over real HTTP: a reconnect with the last seen id gets exactly the
//! missed events that match its filter, in order, then live ones; `since=` starts from a time;
//! what is no longer retained is announced with an `event: gap` frame, never lost silently.

mod common;

use common::*;
use serde_json::{json, Value};

const LIVE: &str = "/api/telemetry/traces/live";

fn ev(n: u64) -> Value {
    let ip = if n % 2 == 1 { "10.0.0.1" } else { "10.0.0.2" };
    json!({"type": "smtp.ehlo", "data": {"id": n, "remoteIp": ip}})
}

async fn ingest_range(addr: std::net::SocketAddr, ns: std::ops::RangeInclusive<u64>) -> Value {
    let events: Vec<Value> = ns.map(ev).collect();
    ingest_ok(addr, &events).await
}

fn ns(events: &[Value]) -> Vec<u64> {
    field(events, "id").iter().map(|v| v.as_u64().expect("id is a number")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_id_gets_exactly_the_missed_matching_events() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let filter = "remote-ip=10.0.0.1";
    let mut a = SseClient::connect(addr, &format!("{LIVE}?{filter}"), Some(TOKEN)).await;
    ingest_range(addr, 1..=10).await;
    let first = a.collect(5, DEADLINE).await;
    assert_eq!(ns(&first.events), [1, 3, 5, 7, 9]);
    let last_id = *first.ids.last().expect("frames carry ids");
    drop(a);

    // Missed while disconnected: 11..=20, of which the odd ones match.
    ingest_range(addr, 11..=20).await;
    let mut b =
        SseClient::connect(addr, &format!("{LIVE}?{filter}&last-event-id={last_id}"), Some(TOKEN)).await;
    assert_eq!(b.status, 200);
    ingest_range(addr, 21..=24).await;
    let got = b.collect(7, DEADLINE).await;
    assert_eq!(ns(&got.events), [11, 13, 15, 17, 19, 21, 23], "replay then live, in order, once each");
    assert!(got.ids.windows(2).all(|w| w[0] < w[1]), "frame ids increase: {:?}", got.ids);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_starts_from_a_time() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let events: Vec<Value> = (1..=6)
        .map(|n| json!({"type": "smtp.ehlo", "createdAt": format!("2026-11-21T10:00:0{n}Z"), "data": {"id": n}}))
        .collect();
    ingest_ok(addr, &events).await;
    let mut s = SseClient::connect(addr, &format!("{LIVE}?since=2026-11-21T10:00:04Z"), Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    let got = s.collect(3, DEADLINE).await;
    assert_eq!(ns(&got.events), [4, 5, 6]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_frame_announces_what_is_no_longer_retained() {
    // Room for only a few events: the rest of the 50 fall out of the replay log.
    let server = start_server(|c| c.replay_bytes = 2_000).await;
    let addr = server.addr;
    ingest_range(addr, 1..=50).await;
    wait_stats(addr, "all 50 matched", |s| s["matched"] == 50).await;
    let mut s = SseClient::connect(addr, &format!("{LIVE}?last-event-id=0"), Some(TOKEN)).await;
    let gap = s.next_frame(DEADLINE).await.expect("a first frame");
    assert_eq!(gap.event, "gap", "{gap:?}");
    let g: Value = serde_json::from_str(&gap.data).unwrap();
    let resumed_after = g["resumedAfter"].as_u64().expect("resumedAfter");
    assert_eq!(g["lastEventId"], 0);
    assert_eq!(g["missed"].as_u64(), Some(resumed_after));
    assert!(resumed_after > 0 && resumed_after < 50, "{g}");
    // Every retained event follows, exactly once: ids are sequence + 1, and n = id here.
    let left = (50 - resumed_after) as usize;
    let got = s.collect(left, DEADLINE).await;
    let want: Vec<u64> = (resumed_after + 1..=50).collect();
    assert_eq!(ns(&got.events), want);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replay_off_a_resume_is_all_gap() {
    let server = start_server(|c| c.replay_bytes = 0).await;
    let addr = server.addr;
    ingest_range(addr, 1..=4).await;
    wait_stats(addr, "matched", |s| s["matched"] == 4).await;
    let mut s = SseClient::connect(addr, &format!("{LIVE}?last-event-id=1"), Some(TOKEN)).await;
    let gap = s.next_frame(DEADLINE).await.expect("a first frame");
    assert_eq!(gap.event, "gap");
    let g: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(
        (g["lastEventId"].as_u64(), g["resumedAfter"].as_u64(), g["missed"].as_u64()),
        (Some(1), Some(4), Some(3))
    );
    // Live events still flow after the notice.
    ingest_range(addr, 5..=5).await;
    assert_eq!(ns(&s.collect(1, DEADLINE).await.events), [5]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_resume_parameters_are_400s() {
    let server = start_server(|_| {}).await;
    for (q, param) in [("last-event-id=abc", "last-event-id"), ("since=yesterday", "since")] {
        let s = SseClient::connect(server.addr, &format!("{LIVE}?{q}"), Some(TOKEN)).await;
        assert_eq!(s.status, 400, "{q}");
        assert_eq!(s.error_json()["parameter"], param, "{q}");
    }
    server.shutdown().await;
}

/// What a browser does: `EventSource` reconnects on its own and sends the last `id:` as the
/// `Last-Event-ID` header, which takes precedence over the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_event_id_header_resumes_like_eventsource() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let answer = ingest_range(addr, 1..=6).await;
    let third = answer["firstId"].as_u64().unwrap() + 2;
    let auth = format!("Bearer {TOKEN}");
    let mut s = SseClient::connect_with(
        addr,
        &format!("{LIVE}?last-event-id=1"),
        &[("Authorization", &auth), ("Last-Event-ID", &third.to_string())],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        ns(&s.collect(3, DEADLINE).await.events),
        [4, 5, 6],
        "after the header's id, not the parameter's"
    );
    server.shutdown().await;
}

/// Waits until the history store holds `n` events (the writer flushes every few milliseconds).
async fn stored(server: &livetap::http::server::Server, n: u64) {
    let store = server.hub.history_store.as_ref().expect("history is on");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while store.stats().unwrap().events < n {
        assert!(tokio::time::Instant::now() < deadline, "history did not store {n} events");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A hub with a small replay log (a few events) and a history that keeps `keep`.
async fn with_history(dir: &std::path::Path, keep: &str) -> livetap::http::server::Server {
    let (dir, keep) = (dir.to_path_buf(), keep.to_string());
    start_server(move |c| {
        c.replay_bytes = 2_000;
        c.data_dir = Some(dir);
        c.history.flush_interval_ms = 5;
        c.history.keep = Some(keep);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_memory_reads_the_history_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_history(dir.path(), "event=smtp.ehlo").await;
    let addr = server.addr;
    ingest_range(addr, 1..=60).await;
    stored(&server, 60).await;
    let (mem_start, held, _) = server.hub.replay.usage();
    assert!(mem_start > 10 && held < 20, "the log holds only the newest few: {mem_start} {held}");

    // Everything is in the store, so the resume is complete: no gap frame, the 30 odd events
    // in order (disk first, then memory, then live), each exactly once.
    let mut s =
        SseClient::connect(addr, &format!("{LIVE}?remote-ip=10.0.0.1&last-event-id=0"), Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    ingest_range(addr, 61..=62).await;
    let first = s.next_frame(DEADLINE).await.expect("a first frame");
    assert_eq!(first.event, "trace", "no gap frame: {first:?}");
    let mut events: Vec<Value> = serde_json::from_str(&first.data).unwrap();
    let got = s.collect(31 - events.len(), DEADLINE).await;
    events.extend(got.events);
    let want: Vec<u64> = (1..=61).step_by(2).collect();
    assert_eq!(ns(&events), want);
    assert_increasing(&got.ids);

    // since= before the memory log starts also reads the store.
    let t0 = events[0]["createdAt"].as_str().unwrap().to_string();
    let mut s = SseClient::connect(addr, &format!("{LIVE}?event=smtp.ehlo&since={t0}"), Some(TOKEN)).await;
    let got = s.collect(62, DEADLINE).await;
    assert_eq!(ns(&got.events), (1..=62).collect::<Vec<_>>());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_history_did_not_keep_is_announced_and_a_restart_resumes_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_history(dir.path(), "remote-ip=10.0.0.1").await;
    let addr = server.addr;
    ingest_range(addr, 1..=60).await;
    stored(&server, 30).await;
    let (mem_start, _, _) = server.hub.replay.usage();

    // The store kept only the odd events; an unfiltered resume from 0 gets them from disk,
    // then everything the log holds, after a gap frame counting the even ones not kept.
    let mut s = SseClient::connect(addr, &format!("{LIVE}?last-event-id=0"), Some(TOKEN)).await;
    let gap = s.next_frame(DEADLINE).await.expect("a first frame");
    assert_eq!(gap.event, "gap", "{gap:?}");
    let g: Value = serde_json::from_str(&gap.data).unwrap();
    let odd_on_disk = (1..=mem_start).filter(|n| n % 2 == 1).count() as u64;
    assert_eq!(g["lastEventId"], 0);
    assert_eq!(g["resumedAfter"].as_u64(), Some(mem_start), "{g}");
    assert_eq!(g["fromHistory"].as_u64(), Some(odd_on_disk), "{g}");
    assert_eq!(g["missed"].as_u64(), Some(mem_start - odd_on_disk), "{g}");
    let want: Vec<u64> = (1..=mem_start).filter(|n| n % 2 == 1).chain(mem_start + 1..=60).collect();
    let got = s.collect(want.len(), DEADLINE).await;
    assert_eq!(ns(&got.events), want);
    drop(s);
    server.shutdown().await;

    // After a restart the log is empty and ids continue; a client that saw id 10 before the
    // restart resumes from the store: every kept event after it, with the gap counted.
    let server = with_history(dir.path(), "remote-ip=10.0.0.1").await;
    let addr = server.addr;
    let mut s = SseClient::connect(addr, &format!("{LIVE}?last-event-id=10"), Some(TOKEN)).await;
    let gap = s.next_frame(DEADLINE).await.expect("a first frame");
    assert_eq!(gap.event, "gap", "{gap:?}");
    let g: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(g["fromHistory"].as_u64(), Some(25), "odd events 11..=59 are stored: {g}");
    let got = s.collect(25, DEADLINE).await;
    assert_eq!(ns(&got.events), (11..=59).step_by(2).collect::<Vec<_>>());
    // Live events follow with ids past the old run's.
    let next = ingest_range(addr, 61..=61).await;
    assert!(next["lastId"].as_u64().unwrap() > 60);
    assert_eq!(ns(&s.collect(1, DEADLINE).await.events), [61]);
    server.shutdown().await;
}
