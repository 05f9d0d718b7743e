//! Classic clients (Stalwart's old web admin) decode every live `trace` frame and every history
//! answer, whatever producers send; livetap's own stream (`/api/livetap/live`) keeps the full
//! data. Over real HTTP against a real server, with a strict decoder that has the old web
//! admin's rules.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// A decoder with the old web admin's rules (its `Event`, `SubEvent`, `Key` and `Value` types):
/// a closed set of 66 keys, read here from `data/stalwart-catalogue.json`; an untagged value
/// union of string, unsigned integer, float, boolean, nested event and array, with no null;
/// nested events that need `type` and `data`; a struct field given twice is an error; an RFC
/// 3339 `createdAt`; unknown top-level members ignored.
// The types mirror the old web admin's field for field, read or not: decoding is the test.
#[allow(dead_code)]
mod admin {
    use serde::{Deserialize, Deserializer};
    use std::collections::HashSet;
    use std::sync::LazyLock;

    static KEYS: LazyLock<HashSet<String>> = LazyLock::new(|| {
        let cat: serde_json::Value =
            serde_json::from_str(include_str!("../data/stalwart-catalogue.json")).unwrap();
        let keys: HashSet<String> =
            cat["keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(keys.len(), 66);
        keys
    });

    /// One event of a `trace` frame or a history answer.
    #[derive(Debug, Deserialize)]
    pub struct Event {
        #[serde(rename = "type")]
        pub typ: String,
        pub text: Option<String>,
        pub details: Option<String>,
        #[serde(rename = "createdAt", deserialize_with = "rfc3339")]
        pub created_at: i64,
        #[serde(deserialize_with = "pairs")]
        pub data: Vec<(Key, Val)>,
    }

    /// A nested event (`causedBy`).
    #[derive(Debug, Deserialize)]
    pub struct SubEvent {
        #[serde(rename = "type")]
        pub typ: String,
        pub text: Option<String>,
        pub details: Option<String>,
        #[serde(deserialize_with = "pairs")]
        pub data: Vec<(Key, Val)>,
    }

    /// A key of the closed set.
    #[derive(Debug)]
    pub struct Key(pub String);

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
            let s = String::deserialize(d)?;
            if KEYS.contains(&s) {
                Ok(Key(s))
            } else {
                Err(serde::de::Error::custom(format!("unknown variant `{s}`")))
            }
        }
    }

    /// The value union, in the old web admin's order.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Val {
        String(String),
        Int(u64),
        Float(f64),
        Bool(bool),
        Event(SubEvent),
        Array(Vec<Val>),
    }

    /// The list answer of the traces history: `{"items":[…],"total":N}`.
    #[derive(Debug, Deserialize)]
    pub struct List<T> {
        pub items: Vec<T>,
        pub total: u64,
    }

    /// Every answer is wrapped in `{"data": …}`.
    #[derive(Debug, Deserialize)]
    pub struct Data<T> {
        pub data: T,
    }

    fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = <&str>::deserialize(d)?;
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .map_err(serde::de::Error::custom)
    }

    /// A map read as ordered pairs, as the old web admin reads `data`.
    fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Key, Val)>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<(Key, Val)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(pair) = m.next_entry()? {
                    out.push(pair);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }

    impl Event {
        /// The value of `key`, if the event carries it.
        pub fn get(&self, key: &str) -> Option<&Val> {
            self.data.iter().find(|(k, _)| k.0 == key).map(|(_, v)| v)
        }
    }
}

/// What producers send: Stalwart events, and events a classic client cannot decode as they
/// are (keys outside the catalogue, nulls in lists, objects that are not nested events,
/// nested events with such keys or without `data`). Each with the `data` a classic client
/// must receive.
fn mixed_events() -> Vec<(Value, Value)> {
    vec![
        (
            json!({"type": "smtp.connection-start", "data": {"spanId": 1, "listenerId": "smtp", "localPort": 25,
                "remoteIp": "10.0.0.5", "remotePort": 4242}}),
            json!({"listenerId": "smtp", "localPort": 25, "remoteIp": "10.0.0.5", "remotePort": 4242}),
        ),
        (
            json!({"type": "delivery.attempt-start", "data": {"spanId": 2, "from": "a@x.org",
                "to": ["b@y.org", "c@z.org"], "size": 1200, "queueId": 77, "queueName": "default", "total": 2}}),
            json!({"from": "a@x.org", "to": ["b@y.org", "c@z.org"], "size": 1200, "queueId": 77,
                "queueName": "default", "total": 2}),
        ),
        (
            json!({"type": "postfix.qmgr", "data": {"clientName": "mx.example.org", "queueId": 5,
                "from": "p@x.org", "nrcpt": 3}}),
            json!({"queueId": 5, "from": "p@x.org"}),
        ),
        (
            json!({"type": "smtp.rcpt-to", "data": {"to": ["a@x.org", null, "b@x.org"], "n": 1}}),
            json!({"to": ["a@x.org", "b@x.org"]}),
        ),
        (
            json!({"type": "store.data-corruption", "data": {"reason": {"errno": 5, "kind": "io"},
                "causedBy": {"type": "store.io", "text": "Boom", "data": {"path": "/var/x", "inode": 7}}}}),
            json!({"reason": "{\"errno\":5,\"kind\":\"io\"}",
                "causedBy": {"type": "store.io", "text": "Boom", "data": {"path": "/var/x"}}}),
        ),
        (
            json!({"type": "auth.failed", "data": {"causedBy": {"type": "auth.mismatch"}, "accountName": "alice",
                "to": [[null], {"type": "x.y", "data": {"k": 1}}], "from": [null]}}),
            json!({"causedBy": {"type": "auth.mismatch", "data": {}}, "accountName": "alice",
                "to": [[], {"type": "x.y", "data": {}}]}),
        ),
        (
            json!({"type": "dovecot.login", "text": "q\"t\\", "data": {"user": "bob", "remoteIp": "10.0.0.6",
                "elapsed": -1.5, "size": 18446744073709551615u64, "tls": true}}),
            json!({"remoteIp": "10.0.0.6", "elapsed": -1.5, "size": 18446744073709551615u64, "tls": true}),
        ),
    ]
}

/// The producer's `data` as livetap's full form holds it: everything, except `spanId` (left out
/// of the stream's JSON, as Stalwart does).
fn full_data(sent: &Value) -> Value {
    let mut d = sent["data"].clone();
    d.as_object_mut().unwrap().remove("spanId");
    d
}

/// Reads `trace` frames until `n` events arrived; every frame must decode by the old web
/// admin's rules. Returns the events as JSON, in order.
async fn classic_events(sub: &mut SseClient, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut events = Vec::new();
    while events.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = sub.next_frame(left).await.unwrap_or_else(|| panic!("{} of {n} events", events.len()));
        if frame.event != "trace" {
            continue;
        }
        let decoded: Vec<admin::Event> = serde_json::from_str(&frame.data)
            .unwrap_or_else(|e| panic!("the old web admin drops this frame ({e}): {}", frame.data));
        let raw: Vec<Value> = serde_json::from_str(&frame.data).unwrap();
        assert_eq!(decoded.len(), raw.len());
        events.extend(raw);
    }
    events
}

/// Reads `trace` frames of the full form until `n` events arrived.
async fn full_events(sub: &mut SseClient, n: usize) -> (Vec<Value>, Vec<String>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (mut events, mut frames) = (Vec::new(), Vec::new());
    while events.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = sub.next_frame(left).await.unwrap_or_else(|| panic!("{} of {n} events", events.len()));
        if frame.event == "trace" {
            events.extend(serde_json::from_str::<Vec<Value>>(&frame.data).unwrap());
            frames.push(frame.data);
        }
    }
    (events, frames)
}

/// A live token as the old web admin fetches it.
async fn tracing_token(addr: SocketAddr) -> String {
    let r = request_auth(addr, "GET", "/api/telemetry/live/tracing-token", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_trace_frames_decode_by_the_old_web_admin_s_rules() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    // The old web admin's way in: a live token, then the stream with `?token=`.
    let token = tracing_token(addr).await;
    let mut admin =
        SseClient::connect_with(addr, &format!("/api/telemetry/traces/live?token={token}"), &[]).await;
    assert_eq!(admin.status, 200);
    let mut older = SseClient::connect(addr, "/api/tracing/live", Some(TOKEN)).await;
    let mut full = SseClient::connect(addr, "/api/livetap/live", Some(TOKEN)).await;
    assert_eq!((older.status, full.status), (200, 200));

    let cases = mixed_events();
    let sent: Vec<Value> = cases.iter().map(|(s, _)| s.clone()).collect();
    let first_id = ingest_ok(addr, &sent).await["firstId"].as_u64().unwrap();

    for sub in [&mut admin, &mut older] {
        let got = classic_events(sub, cases.len()).await;
        for ((sent, want), ev) in cases.iter().zip(&got) {
            assert_eq!(ev["type"], sent["type"]);
            assert_eq!(ev["data"], *want, "classic data of {sent}");
        }
        assert_eq!(got[6]["text"], "q\"t\\", "strings keep their escapes");
        assert_eq!(got[6]["level"], "info", "livetap's extra top-level member stays (ignored)");
    }

    // livetap's own stream carries everything the producers sent, and the strict decoder
    // would drop its frames: the decoder is strict, and the classic rewrite is what saves them.
    let (got, frames) = full_events(&mut full, cases.len()).await;
    for ((sent, _), ev) in cases.iter().zip(&got) {
        assert_eq!(ev["data"], full_data(sent), "full data of {sent}");
    }
    assert_eq!(got[2]["data"]["clientName"], "mx.example.org");
    assert_eq!(got[3]["data"]["to"][1], Value::Null);
    assert!(frames.iter().any(|f| serde_json::from_str::<Vec<admin::Event>>(f).is_err()));
    let stalwart_only = serde_json::to_string(&got[..2]).unwrap();
    assert!(
        serde_json::from_str::<Vec<admin::Event>>(&stalwart_only).is_ok(),
        "Stalwart's events decode as sent"
    );

    // A resume replays each stream in its own form.
    let mut resumed = SseClient::connect_with(
        addr,
        "/api/telemetry/traces/live",
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Last-Event-ID", &(first_id - 1).to_string())],
    )
    .await;
    assert_eq!(resumed.status, 200);
    let again = classic_events(&mut resumed, cases.len()).await;
    for ((_, want), ev) in cases.iter().zip(&again) {
        assert_eq!(ev["data"], *want);
    }
    let mut resumed_full =
        SseClient::connect(addr, &format!("/api/livetap/live?last-event-id={}", first_id - 1), Some(TOKEN))
            .await;
    let (again, _) = full_events(&mut resumed_full, cases.len()).await;
    assert_eq!(again[2]["data"]["nrcpt"], 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_stream_takes_the_classic_stream_s_credentials() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let token = tracing_token(addr).await;
    let ok = SseClient::connect_with(addr, &format!("/api/livetap/live?token={token}"), &[]).await;
    assert_eq!(ok.status, 200);
    let none = SseClient::connect_with(addr, "/api/livetap/live", &[]).await;
    assert_eq!(none.status, 401);
    // A metrics token is for the metrics streams only.
    let r = request_auth(addr, "GET", "/api/telemetry/live/metrics-token", b"").await;
    let metrics = r.json()["data"].as_str().unwrap().to_string();
    let wrong = SseClient::connect_with(addr, &format!("/api/livetap/live?token={metrics}"), &[]).await;
    assert_eq!(wrong.status, 401);
    server.shutdown().await;
}

/// GETs `path` and decodes it strictly as the old web admin would.
async fn admin_get<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &str) -> T {
    let r = request_auth(addr, "GET", path, b"").await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let d: admin::Data<T> = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("the old web admin cannot decode {path} ({e}): {}", r.text()));
    d.data
}

fn span_ids(list: &admin::List<admin::Event>) -> Vec<u64> {
    list.items
        .iter()
        .map(|e| match e.get("spanId") {
            Some(admin::Val::Int(id)) => *id,
            other => panic!("an item without data.spanId: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_history_answers_decode_and_select_like_stalwart_s() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let server = start_server(|c| {
        c.data_dir = Some(data_dir.clone());
        c.history.flush_interval_ms = 10;
    })
    .await;
    let addr = server.addr;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let two_days_ago = now - 2 * 86_400;
    // Spans with a queue id are kept. Span 300 is two days old; 100 and 200 are recent and
    // carry what a classic client cannot decode as it is.
    let events = vec![
        json!({"type": "smtp.connection-start", "createdAt": two_days_ago, "data": {"spanId": 300, "remoteIp": "10.0.0.3"}}),
        json!({"type": "queue.queue-message", "createdAt": two_days_ago, "data": {"spanId": 300, "queueId": 300, "from": "old@x.org"}}),
        json!({"type": "delivery.attempt-start", "data": {"spanId": 100, "from": "a@x.org", "to": ["b@y.org", null],
            "size": 1200, "queueId": 100, "custom": {"x": 1}}}),
        json!({"type": "delivery.delivered", "data": {"spanId": 100, "to": "b@y.org", "code": "250",
            "causedBy": {"type": "x.y", "data": {"inode": 1}}}}),
        json!({"type": "smtp.connection-start", "data": {"spanId": 200, "remoteIp": "10.0.0.2", "clientName": "mx"}}),
        json!({"type": "queue.queue-message", "data": {"spanId": 200, "queueId": 200, "reason": {"a": [1, null]}}}),
    ];
    ingest_ok(addr, &events).await;
    let all = traces_until(addr, "id=100,200,300", |v| v["data"]["total"] == 3).await;
    assert_eq!(all["data"]["total"], 3, "{all}");

    // The old web admin's history list (list.rs): `values=1`, no time: the last 24 hours.
    let list: admin::List<admin::Event> =
        admin_get(addr, "/api/telemetry/traces?type=&page=1&limit=50&values=1").await;
    assert_eq!((span_ids(&list), list.total), (vec![200, 100], 2), "newest first, the old span outside");
    let first = &list.items[1];
    assert_eq!(first.typ, "delivery.attempt-start", "an item is the span's first event");
    assert!(matches!(first.get("size"), Some(admin::Val::Int(1200))));
    assert!(matches!(first.get("to"), Some(admin::Val::Array(to)) if to.len() == 1), "{first:?}");
    assert!(first.get("custom").is_none());
    let list: admin::List<admin::Event> =
        admin_get(addr, "/api/telemetry/traces?type=smtp.connection-start&values=1").await;
    assert_eq!(span_ids(&list), vec![200]);
    // Without `values` the items are span summaries, under the same window.
    let plain = traces_until(addr, "", |_| true).await;
    let ids: Vec<u64> =
        plain["data"]["items"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [200, 100]);
    // A time, a queue id (the old web admin's message page, manage.rs) or span ids lift it.
    let list: admin::List<admin::Event> =
        admin_get(addr, &format!("/api/telemetry/traces?values=1&after={}", now - 3 * 86_400)).await;
    assert_eq!(span_ids(&list), vec![200, 100, 300]);
    let list: admin::List<admin::Event> =
        admin_get(addr, "/api/telemetry/traces?queue_id=300&values=1").await;
    assert_eq!((span_ids(&list), list.total), (vec![300], 1));
    assert_eq!(list.items[0].created_at, two_days_ago);
    let list: admin::List<admin::Event> = admin_get(addr, "/api/telemetry/traces?id=300,100&values=1").await;
    assert_eq!(span_ids(&list), vec![100, 300], "newest first");
    let list: admin::List<admin::Event> = admin_get(addr, "/api/telemetry/traces?id=404&values=1").await;
    assert_eq!((list.items.len(), list.total), (0, 0));

    // A bad or oversized `id` is a 400 naming the parameter.
    for bad in ["id=abc", "id=1,,2", &format!("id={}", vec!["7"; 1001].join(","))] {
        let r = request_auth(addr, "GET", &format!("/api/telemetry/traces?{bad}"), b"").await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["parameter"], "id", "{bad}");
    }

    // One trace (display.rs): every event decodes; the store keeps the full form.
    for span in [100, 200, 300] {
        let trace: Vec<admin::Event> = admin_get(addr, &format!("/api/telemetry/trace/{span}")).await;
        assert_eq!(trace.len(), 2, "span {span}");
    }
    let r = request_auth(addr, "GET", "/api/telemetry/trace/200", b"").await;
    let trace = r.json();
    assert_eq!(trace["data"][0]["data"], json!({"remoteIp": "10.0.0.2"}));
    assert_eq!(trace["data"][1]["data"], json!({"queueId": 200, "reason": "{\"a\":[1,null]}"}));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_livetap"))
        .arg("history")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--json", "trace", "200"])
        .output()
        .expect("run livetap history");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["data"][0]["data"]["clientName"], "mx", "history keeps the full form: {stored}");
    server.shutdown().await;
}
