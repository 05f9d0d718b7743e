//! Both generations of Stalwart's event catalogue over real HTTP: events sent under a type's
//! v0.15 name and under its v0.16 name reach a subscriber that filters with either name;
//! v0.16-only types get their catalogue level in the classic JSON and in `level=` filters;
//! counters and histograms move for v0.16 names on the live metrics stream and `/metrics`;
//! the demo generator speaks v0.16 when configured to, by file key and by flag; and the
//! README's mapping table is the catalogue's.

mod common;

use common::*;
use livetap::event::catalogue::{Generation, Generations};
use livetap::event::Catalogue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Opens a live trace stream with the admin token, without span following (so each stream
/// receives exactly what its filter selects).
async fn live(addr: SocketAddr, query: &str) -> SseClient {
    let s =
        SseClient::connect(addr, &format!("/api/telemetry/traces/live?follow=false&{query}"), Some(TOKEN))
            .await;
    assert_eq!(
        s.status,
        200,
        "{query}: {:?}",
        s.error_body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
    );
    s
}

/// Reads until the event whose `data.id` is `marker` arrives; returns everything received
/// up to and including it. Events reach a stream in ingest order, so once the marker (ingested
/// last) is in, every earlier event the filter selects is in too.
async fn until_marker(s: &mut SseClient, marker: &str) -> Vec<Value> {
    let got = s.collect_until(DEADLINE, |c| c.events.iter().any(|e| e["data"]["id"] == marker)).await.events;
    assert!(got.iter().any(|e| e["data"]["id"] == marker), "marker {marker} never arrived: {got:?}");
    got
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().expect("type")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_in_either_generation_finds_both_names() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut old = live(addr, "event=queue.queue-message").await;
    let mut new = live(addr, "event=queue.message-queued").await;
    // Negation excludes both names.
    let mut not = live(addr, "q=NOT%20event:queue.queue-message").await;
    // A glob of v0.15 names also selects the v0.16 names of the types it covers, and only
    // those: `task-manager.task-queued` is new in v0.16, not a renamed `task-queue.*` type.
    let mut glob = live(addr, "event=task-queue.*").await;
    // The pair form's list of both generations' names is one OR, as any list.
    let mut both = live(addr, "event=telemetry.alert,telemetry.alert-event").await;
    let events = vec![
        json!({"type": "queue.queue-message", "data": {"queueId": 1, "size": 1000}}),
        json!({"type": "queue.message-queued", "data": {"queueId": 2, "size": 2000}}),
        json!({"type": "smtp.ehlo", "data": {"domain": "mail.example.com"}}),
        json!({"type": "task-manager.task-failed", "data": {"id": "t1"}}),
        json!({"type": "task-manager.task-queued", "data": {"id": "t2"}}),
        json!({"type": "task-queue.task-locked", "data": {"accountId": 3}}),
        json!({"type": "telemetry.alert-event", "data": {"id": "a1"}}),
        json!({"type": "telemetry.alert", "data": {"id": "a2"}}),
    ];
    ingest_ok(addr, &events).await;
    // Markers, ingested last: one each filter selects, under the other generation's name
    // than the one it was written with where it can.
    ingest_ok(
        addr,
        &[
            json!({"type": "queue.message-queued", "data": {"id": "end-queue"}}),
            json!({"type": "task-manager.task-locked", "data": {"id": "end-task"}}),
            json!({"type": "telemetry.alert", "data": {"id": "end-alert"}}),
        ],
    )
    .await;

    let got = until_marker(&mut old, "end-queue").await;
    assert_eq!(types(&got), ["queue.queue-message", "queue.message-queued", "queue.message-queued"]);
    let got = until_marker(&mut new, "end-queue").await;
    assert_eq!(types(&got), ["queue.queue-message", "queue.message-queued", "queue.message-queued"]);
    // The events keep the name they were sent under.
    assert_eq!(got[0]["data"]["queueId"], 1);
    assert_eq!(got[1]["data"]["queueId"], 2);

    let got = until_marker(&mut not, "end-alert").await;
    assert_eq!(
        types(&got),
        [
            "smtp.ehlo",
            "task-manager.task-failed",
            "task-manager.task-queued",
            "task-queue.task-locked",
            "telemetry.alert-event",
            "telemetry.alert",
            "task-manager.task-locked",
            "telemetry.alert",
        ]
    );
    let got = until_marker(&mut glob, "end-task").await;
    assert_eq!(
        types(&got),
        ["task-manager.task-failed", "task-queue.task-locked", "task-manager.task-locked"]
    );
    let got = until_marker(&mut both, "end-alert").await;
    assert_eq!(types(&got), ["telemetry.alert-event", "telemetry.alert", "telemetry.alert"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v016_types_have_their_catalogue_levels() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut all = live(addr, "").await;
    let mut errors = live(addr, "level=error").await;
    let mut debug_only = live(addr, "q=level%3E%3Ddebug%20AND%20level%3Cinfo").await;
    // No `level` sent: each comes from the catalogue of the generation that defines the type.
    let sent = [
        ("registry.build-error", "error"),          // v0.16 only
        ("server.recovery-mode", "warn"),           // v0.16 only
        ("auth.credential-expired", "debug"),       // v0.16 only
        ("dkim.signature-created", "info"),         // v0.16 only
        ("resource.webadmin-unpacked", "info"),     // renamed: v0.15 name, v0.15 level
        ("resource.application-unpacked", "debug"), // its v0.16 name, v0.16 level
        ("config.parse-error", "error"),            // removed in v0.16: still accepted, v0.15 level
        ("housekeeper.start", "info"),              // removed in v0.16
        ("smtp.connection-start", "debug"),         // in both
    ];
    let events: Vec<Value> = sent.iter().map(|(t, _)| json!({"type": t, "data": {"id": t}})).collect();
    ingest_ok(addr, &events).await;
    ingest_ok(addr, &[json!({"type": "config.build-error", "data": {"id": "end"}})]).await;

    let got = until_marker(&mut all, "end").await;
    let levels: HashMap<&str, &str> =
        got.iter().map(|e| (e["type"].as_str().unwrap(), e["level"].as_str().unwrap())).collect();
    for (t, level) in sent {
        assert_eq!(levels.get(t), Some(&level), "{t}: {got:?}");
    }
    let got = until_marker(&mut errors, "end").await;
    assert_eq!(types(&got), ["registry.build-error", "config.parse-error", "config.build-error"]);
    // `config.build-error` is the marker, at error level: the debug-only stream needs its own.
    ingest_ok(addr, &[json!({"type": "auth.credential-expired", "data": {"id": "end-debug"}})]).await;
    let got = until_marker(&mut debug_only, "end-debug").await;
    assert_eq!(
        types(&got),
        [
            "auth.credential-expired",
            "resource.application-unpacked",
            "smtp.connection-start",
            "auth.credential-expired"
        ]
    );
    server.shutdown().await;
}

/// The first `event: metrics` frame of a live metrics stream, by sample id.
async fn metrics_frame(addr: SocketAddr, query: &str) -> HashMap<String, Value> {
    let path = format!("/api/telemetry/metrics/live?{query}");
    let mut s = SseClient::connect(addr, &path, Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    loop {
        let f = s.next_frame(DEADLINE).await.expect("a metrics frame before the deadline");
        if f.event == "metrics" {
            let samples: Vec<Value> = serde_json::from_str(&f.data).expect("metrics data is a JSON array");
            return samples.into_iter().map(|v| (v["id"].as_str().unwrap().to_string(), v)).collect();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_move_for_v016_names() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let events = vec![
        json!({"type": "queue.queue-message", "data": {"size": 1000}}),
        json!({"type": "queue.message-queued", "data": {"size": 3000}}),
        json!({"type": "queue.message-queued", "data": {"size": 5000}}),
        json!({"type": "queue.authenticated-message-queued", "data": {"size": 7000}}),
        json!({"type": "registry.build-error"}),
        json!({"type": "dkim.signature-created"}),
        json!({"type": "dkim.signature-created"}),
    ];
    ingest_ok(addr, &events).await;
    wait_stats(addr, "events counted", |s| s["matched"].as_u64() >= Some(events.len() as u64)).await;

    let m = metrics_frame(addr, "metrics=queue.*,message.*,registry.*,dkim.*&interval=3600").await;
    // A renamed type's two names are one counter: each reports the events sent under either.
    assert_eq!(m["queue.queue-message"]["value"], 3, "{m:?}");
    assert_eq!(m["queue.message-queued"]["value"], 3, "{m:?}");
    assert_eq!(m["queue.queue-message-authenticated"]["value"], 1, "{m:?}");
    assert_eq!(m["queue.authenticated-message-queued"]["value"], 1, "{m:?}");
    // v0.16-only types are counters under their own names.
    assert_eq!(
        m["registry.build-error"],
        json!({"id": "registry.build-error", "type": "counter", "value": 1})
    );
    assert_eq!(m["dkim.signature-created"]["value"], 2);
    // The v0.16 names feed the histograms their v0.15 names feed.
    assert_eq!(
        (m["message.size"]["count"].as_u64(), m["message.size"]["sum"].as_f64()),
        (Some(3), Some(9000.0))
    );
    let auth = &m["message.authenticated-size"];
    assert_eq!((auth["count"].as_u64(), auth["sum"].as_f64()), (Some(1), Some(7000.0)));

    let r = request_auth(addr, "GET", "/metrics", b"").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .to_string()
    };
    assert_eq!(value("queue_message_queued_total"), "3");
    assert_eq!(value("queue_queue_message_total"), "3");
    assert_eq!(value("registry_build_error_total"), "1");
    assert_eq!(value("dkim_signature_created_total"), "2");
    assert!(text.contains("# TYPE queue_message_queued_total counter"), "{text}");
    assert_eq!(value("message_size_count"), "3");
    assert_eq!(value("message_size_sum"), "9000");
    server.shutdown().await;
}

/// What a run of the demo generator's events looks like by catalogue generation.
struct Seen {
    v015_only: Vec<String>,
    v016_only: Vec<String>,
    total: usize,
}

fn classify(events: &[Value]) -> Seen {
    let c = Catalogue::embedded();
    let mut seen = Seen { v015_only: Vec::new(), v016_only: Vec::new(), total: events.len() };
    for e in events {
        let t = e["type"].as_str().expect("type");
        let g: Generations = c.type_info(t).generations;
        assert!(!g.is_empty(), "{t} is in no catalogue");
        match g.only() {
            Some(Generation::V015) => seen.v015_only.push(t.to_string()),
            Some(Generation::V016) => seen.v016_only.push(t.to_string()),
            None => {}
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_v016_mode_by_config_key() {
    let server = start_server(|c| {
        c.demo = true;
        c.demo_rate = 3000;
        c.demo_generation = Generation::V016;
    })
    .await;
    let addr = server.addr;
    let mut all = live(addr, "").await;
    // A v0.15 name finds the demo's v0.16 events.
    let mut queued = live(addr, "event=queue.queue-message").await;
    let got = all.collect(3000, DEADLINE).await.events;
    assert!(got.len() >= 3000, "only {} demo events", got.len());
    let seen = classify(&got);
    assert!(seen.v015_only.is_empty(), "v0.15-only names in v0.16 mode: {:?}", seen.v015_only);
    assert!(
        seen.v016_only.len() >= 20,
        "{} of {} events had v0.16-only names",
        seen.v016_only.len(),
        seen.total
    );
    let got = queued.collect(3, DEADLINE).await.events;
    assert!(got.len() >= 3, "no queued messages");
    assert!(types(&got).iter().all(|t| *t == "queue.message-queued"), "{got:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_v016_mode_by_flag_and_v015_by_default() {
    let mut lt = Livetap::start(&["--demo", "--demo-rate", "3000", "--demo-generation", "0.16"]);
    assert!(
        lt.stdout.lock().unwrap().contains("Stalwart v0.16 event names"),
        "{}",
        lt.stdout.lock().unwrap()
    );
    let mut all = live(lt.addr, "").await;
    let got = all.collect(2000, DEADLINE).await.events;
    assert!(got.len() >= 2000);
    let seen = classify(&got);
    assert!(seen.v015_only.is_empty(), "{:?}", seen.v015_only);
    assert!(!seen.v016_only.is_empty());
    lt.sigterm();
    all.expect_end(DEADLINE).await;
    assert!(lt.wait_exit().await.success(), "{}", lt.stderr());

    // Without the flag, the classic names only.
    let mut lt = Livetap::start(&["--demo", "--demo-rate", "3000"]);
    let mut all = live(lt.addr, "").await;
    let got = all.collect(2000, DEADLINE).await.events;
    let seen = classify(&got);
    assert!(seen.v016_only.is_empty(), "{:?}", seen.v016_only);
    assert!(
        seen.v015_only.iter().any(|t| t == "queue.queue-message"),
        "no queued message in {} events",
        seen.total
    );
    lt.sigterm();
    all.expect_end(DEADLINE).await;
    assert!(lt.wait_exit().await.success(), "{}", lt.stderr());

    // A wrong value is refused at start, naming the flag's values.
    let out = livetap_command(1).args(["--demo", "--demo-generation", "0.17"]).output().expect("run livetap");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected 0.15 or 0.16"), "{err}");
}

#[test]
fn readme_mapping_table_is_the_catalogue() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Stalwart catalogue generations").expect("the section")..];
    let table = &section[section.find("| v0.15 name | v0.16 name | level |").expect("the table")..];
    let rows: Vec<Vec<String>> = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_string()).collect())
        .collect();
    let c = Catalogue::embedded();
    let pairs = livetap::event::catalogue::renamed();
    assert_eq!(rows.len(), pairs.len());
    assert_eq!(rows.len(), 23);
    for (row, pair) in rows.iter().zip(pairs) {
        assert_eq!((row[0].as_str(), row[1].as_str()), (pair.v015, pair.v016));
        let (old, new) = (c.type_info(pair.v015).level.as_str(), c.type_info(pair.v016).level.as_str());
        let level = if old == new { old.to_string() } else { format!("{old} (v0.15), {new} (v0.16)") };
        assert_eq!(row[2], level, "{row:?}");
    }
}
