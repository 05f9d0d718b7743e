//! The history query API over real HTTP: spans with a queue id are stored by the running hub
//! and answered by `/api/telemetry/traces` and `/api/telemetry/trace/{id}`; a restart on the
//! same data directory keeps them and continues the event ids; without a data directory the
//! API says history is off.

mod common;

use common::*;
use serde_json::{json, Value};

/// Numbered by `total`, a catalogue key, which the classic history answers keep.
fn span_events(span: u64, queue: &str, first_n: u64) -> Vec<Value> {
    vec![
        json!({"type": "smtp.connection-start", "data": {"spanId": span, "remoteIp": "10.0.0.9", "total": first_n}}),
        json!({"type": "smtp.mail-from", "data": {"spanId": span, "from": "alice@example.org", "total": first_n + 1}}),
        json!({"type": "queue.queue-message", "data": {"spanId": span, "queueId": queue, "size": 1200, "total": first_n + 2}}),
        json!({"type": "smtp.connection-end", "data": {"spanId": span, "total": first_n + 3}}),
    ]
}

/// A server keeping history in `data_dir`, flushing every 10 ms.
async fn history_server(data_dir: &std::path::Path) -> livetap::Server {
    let data_dir = data_dir.to_path_buf();
    start_server(|c| {
        c.data_dir = Some(data_dir);
        c.history.flush_interval_ms = 10;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_spans_are_queried_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let server = history_server(&data_dir).await;
    let addr = server.addr;
    let mut events = span_events(42, "Q42", 1);
    // A span without a queue id is not kept (Stalwart's selection).
    events.push(json!({"type": "smtp.connection-start", "data": {"spanId": 7, "total": 100}}));
    events.push(json!({"type": "smtp.connection-end", "data": {"spanId": 7, "total": 101}}));
    let first = ingest_ok(addr, &events).await;
    let last_id = first["lastId"].as_u64().unwrap();

    let list = traces_until(addr, "queue_id=Q42", |v| v["data"]["total"] == 1).await;
    assert_eq!(list["data"]["total"], 1, "{list}");
    let item = &list["data"]["items"][0];
    assert_eq!((item["id"].as_u64(), item["events"].as_u64()), (Some(42), Some(4)), "{item}");
    let none = traces_until(addr, "filter=nobody.example", |_| true).await;
    assert_eq!(none["data"]["total"], 0, "{none}");
    let kw = traces_until(addr, "filter=alice@example.org", |v| v["data"]["total"] == 1).await;
    assert_eq!(kw["data"]["items"][0]["id"], 42, "{kw}");

    let r = request_auth(addr, "GET", "/api/telemetry/trace/42", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let trace = r.json();
    let ns: Vec<u64> =
        trace["data"].as_array().unwrap().iter().map(|e| e["data"]["total"].as_u64().unwrap()).collect();
    assert_eq!(ns, [1, 2, 3, 4]);
    assert_eq!(request_auth(addr, "GET", "/api/telemetry/trace/7", b"").await.status, 404);
    assert_eq!(request_auth(addr, "GET", "/api/telemetry/trace/x", b"").await.status, 404);
    let bad = request_auth(addr, "GET", "/api/telemetry/traces?after=someday", b"").await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    // The CLI reads the same database while the server runs.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_livetap"))
            .arg("history")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .output()
            .expect("run livetap history");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let j: Value = serde_json::from_str(&cli(&["--json", "traces", "--queue-id", "Q42"])).unwrap();
    assert_eq!(j["data"]["items"][0]["id"], 42, "{j}");
    let table = cli(&["traces", "--domain", "example.org"]);
    assert!(table.lines().next().unwrap().starts_with("SPAN"), "{table}");
    assert!(table.contains("Q42") && table.contains("1 of 1 traces"), "{table}");
    let t = cli(&["trace", "42"]);
    assert_eq!(t.lines().count(), 5, "a header and four events: {t}");
    assert!(t.contains("queue.queue-message") && t.contains("queueId=Q42"), "{t}");
    server.shutdown().await;

    // Same data directory: history is still there, and new ids continue after the old ones.
    let server = history_server(&data_dir).await;
    let addr = server.addr;
    let list = traces_until(addr, "queue_id=Q42", |v| v["data"]["total"] == 1).await;
    assert_eq!(list["data"]["total"], 1, "history survives a restart: {list}");
    let again = ingest_ok(addr, &span_events(43, "Q43", 200)).await;
    assert!(again["firstId"].as_u64().unwrap() > last_id, "ids continue across restarts: {again}");
    let list = traces_until(addr, "", |v| v["data"]["total"] == 2).await;
    assert_eq!(list["data"]["total"], 2, "{list}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_data_dir_history_is_off() {
    let server = start_server(|_| {}).await;
    let r = request_auth(server.addr, "GET", "/api/telemetry/traces", b"").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("--data-dir"));
    server.shutdown().await;
}

/// A renamed type is one type under two names: `type=` with either name lists the spans that
/// start with both (README, catalogue generations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_type_parameter_finds_both_generations_names() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let server = history_server(&data_dir).await;
    let addr = server.addr;
    let events = [
        json!({"type": "queue.queue-message", "data": {"spanId": 50, "queueId": "Q50", "total": 1}}),
        json!({"type": "queue.message-queued", "data": {"spanId": 51, "queueId": "Q51", "total": 2}}),
        json!({"type": "smtp.connection-start", "data": {"spanId": 52, "queueId": "Q52", "total": 3}}),
    ];
    ingest_ok(addr, &events).await;
    for name in ["queue.queue-message", "queue.message-queued"] {
        let list = traces_until(addr, &format!("type={name}"), |v| v["data"]["total"] == 2).await;
        let mut ids: Vec<u64> =
            list["data"]["items"].as_array().unwrap().iter().map(|i| i["id"].as_u64().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, [50, 51], "type={name}: {list}");
    }
    let other = traces_until(addr, "type=smtp.connection-start", |v| v["data"]["total"] == 1).await;
    assert_eq!(other["data"]["items"][0]["id"], 52, "{other}");
    server.shutdown().await;
}
