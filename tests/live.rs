//! The live SSE endpoint over real TCP: concurrent filtered subscribers each receive exactly
//! the events the reference filter semantics select, in ingest order with increasing ids;
//! span following on and off; 400s naming the parameter; the `/api/tracing/live` alias;
//! response headers; ping frames on an idle stream.

mod common;

use common::*;
use livetap::event::{Catalogue, EventBuilder, KeyRegistry, RawValue};
use livetap::query::{parse_pairs, Limits};
use serde_json::{json, Value};

/// Deterministic, varied mail-server events. Each carries a unique `id` (a catalogue key, so classic streams send it).
fn varied_events(count: usize) -> Vec<Value> {
    let mut rng = fastrand::Rng::with_seed(0x011f_e7a9);
    let types = [
        "smtp.connection-start",
        "smtp.ehlo",
        "smtp.mail-from",
        "smtp.rcpt-to",
        "smtp.rcpt-to-duplicate",
        "delivery.delivered",
        "delivery.domain-delivery-start",
        "auth.success",
        "auth.failed",
        "queue.queue-message",
        "custom.thing",
    ];
    let ips = ["10.0.0.5", "10.0.0.6", "10.0.0.7", "::ffff:10.0.0.5", "2001:db8::1", "10.0.0.50"];
    let domains =
        ["example.org", "EXAMPLE.ORG", "Example.Org", "example.com", "sub.example.org", "rcpt.example.net"];
    let addrs = ["alice@example.org", "Bob@Example.ORG", "carol@example.com", "dave@other.net"];
    let reasons = ["Delivery failed", "RCPT rejected", "ok", "quota exceeded"];
    (0..count)
        .map(|n| {
            let mut data = serde_json::Map::new();
            data.insert("id".into(), json!(n));
            if rng.u8(..4) > 0 {
                data.insert("remoteIp".into(), json!(ips[rng.usize(..ips.len())]));
            }
            if rng.bool() {
                data.insert("domain".into(), json!(domains[rng.usize(..domains.len())]));
            }
            if rng.u8(..3) == 0 {
                let k = rng.usize(1..3);
                let to: Vec<_> = (0..k).map(|_| addrs[rng.usize(..addrs.len())]).collect();
                data.insert("to".into(), json!(to));
            }
            if rng.u8(..3) == 0 {
                data.insert("queueId".into(), json!(rng.u64(40..44)));
            }
            if rng.u8(..4) == 0 {
                data.insert("reason".into(), json!(reasons[rng.usize(..reasons.len())]));
            }
            if rng.bool() {
                data.insert("spanId".into(), json!(rng.u64(1..20)));
            }
            json!({
                "type": types[rng.usize(..types.len())],
                "createdAt": 1_795_091_696 + n as i64,
                "data": Value::Object(data),
            })
        })
        .collect()
}

/// The reference: which of `events` a subscriber with `query` must receive (follow off), as
/// the exact JSON the stream carries.
struct Reference {
    catalogue: Catalogue,
    keys: KeyRegistry,
}

impl Reference {
    fn new() -> Reference {
        let catalogue = Catalogue::embedded();
        let keys = KeyRegistry::new(1024);
        catalogue.register_keys(&keys);
        Reference { catalogue, keys }
    }

    fn expected(&self, query: &str, events: &[Value]) -> Vec<Value> {
        let q = parse_pairs(query, &self.keys, &Limits::default()).expect("valid query");
        assert!(!q.follow, "the reference models follow=false only");
        let mut b = EventBuilder::new(&self.catalogue, &self.keys);
        events
            .iter()
            .filter_map(|e| {
                let text = serde_json::to_vec(e).unwrap();
                let ev = b.build(&RawValue::parse_serde(&text).unwrap(), 0).expect("valid event");
                q.expr.eval(&ev).then(|| serde_json::from_slice(&ev.json).unwrap())
            })
            .collect()
    }
}

const LIVE: &str = "/api/telemetry/traces/live";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_filtered_subscribers_get_exactly_their_events() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let queries = [
        "remote-ip=10.0.0.5&follow=false",
        "domain=example.org&follow=false",
        "remote-ip=10.0.0.5&remote-ip=10.0.0.6&follow=false",
        "filter=rcpt&follow=false",
        "domain=EXAMPLE.org&filter=delivery&follow=false",
        "follow=false",
        "to=ALICE@example.org&remote-ip=10.0.0.7&follow=false",
        "queue-id=42&filter=RCPT&filter=auth&follow=false",
        "remote-ip=2001:DB8:0::1&follow=false",
        // The query language's operators, each through its own index structure.
        "remote-ip=10.0.0.0/28&domain=*.org&follow=false",
        "domain=*example.*&domain=!example.com&event=!smtp.rcpt-to&follow=false",
        "event=delivery.*,auth.*&queue-id=*&follow=false",
        "to=*@example.org&level=info&follow=false",
        "queue-id=%3E%3D42&remote-ip=!10.0.0.6&follow=false",
        "q=%28remote-ip%3A2001%3Adb8%3A%3A%2F32+OR+domain%3Aexample.*%29+AND+NOT+reason%3A*rejected&follow=false",
    ];
    let mut events = varied_events(400);
    // A last event every filter above accepts, so each stream can be read up to it and no
    // unexpected event can hide after the expected ones.
    events.push(json!({
        "type": "delivery.rcpt-auth-sentinel",
        "createdAt": 1_800_000_000,
        "data": {"id": "sentinel", "remoteIp": ["10.0.0.5", "10.0.0.7", "2001:db8::1"], "domain": "example.org",
                 "to": ["alice@example.org"], "queueId": 42}
    }));
    let reference = Reference::new();
    let expected: Vec<Vec<Value>> = queries.iter().map(|q| reference.expected(q, &events)).collect();
    for (q, exp) in queries.iter().zip(&expected) {
        assert_eq!(exp.last().unwrap()["data"]["id"], "sentinel", "the sentinel must match {q}");
        assert!(exp.len() > 2, "{q} selects too little to be a meaningful test: {}", exp.len());
    }
    assert_eq!(expected[5].len(), events.len());

    let mut subs = Vec::new();
    for q in &queries {
        let s = SseClient::connect(addr, &format!("{LIVE}?{q}"), Some(TOKEN)).await;
        assert_eq!(
            s.status,
            200,
            "{q}: {:?}",
            s.error_body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
        );
        subs.push(s);
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let c = s
                    .collect_until(DEADLINE, |c| {
                        c.events.last().is_some_and(|e| e["data"]["id"] == "sentinel")
                    })
                    .await;
                (s, c)
            })
        })
        .collect();

    let mut last_id = 0;
    for batch in events.chunks(37) {
        last_id = ingest_ok(addr, batch).await["lastId"].as_u64().unwrap();
    }

    for ((q, exp), reader) in queries.iter().zip(&expected).zip(readers) {
        let (_s, got) = reader.await.unwrap();
        assert!(got.lagged.is_empty(), "{q}: lagged");
        let got_n = field(&got.events, "id");
        let exp_n = field(exp, "id");
        assert_eq!(got_n, exp_n, "{q}: wrong selection or order");
        assert_eq!(&got.events, exp, "{q}: event JSON differs from the reference encoding");
        assert_increasing(&got.ids);
        assert_eq!(*got.ids.last().unwrap(), last_id, "{q}");
    }

    let deliveries = expected.iter().map(Vec::len).sum::<usize>();
    let s = wait_stats(addr, "deliveries counted", |s| s["deliveries"] == deliveries).await;
    assert_eq!(s["accepted"], events.len());
    assert_eq!(s["matched"], events.len(), "every event was matched by every matcher thread");
    assert_eq!(s["dropped"], 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_following_on_and_off() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut follow = SseClient::connect(addr, &format!("{LIVE}?remote-ip=10.0.0.5"), Some(TOKEN)).await;
    let mut nofollow =
        SseClient::connect(addr, &format!("{LIVE}?remote-ip=10.0.0.5&follow=false"), Some(TOKEN)).await;
    assert_eq!((follow.status, nofollow.status), (200, 200));

    let ev = |n: u32, ty: &str, span: Option<u64>, ip: Option<&str>| {
        let mut data = json!({"id": n});
        if let Some(s) = span {
            data["spanId"] = json!(s);
        }
        if let Some(ip) = ip {
            data["remoteIp"] = json!(ip);
        }
        json!({"type": ty, "data": data})
    };
    let events = [
        ev(0, "smtp.ehlo", Some(100), None), // before the match: not pulled in
        ev(1, "smtp.connection-start", Some(100), Some("10.0.0.5")),
        ev(2, "smtp.connection-start", Some(200), Some("10.0.0.9")),
        ev(3, "smtp.ehlo", Some(100), None),
        ev(4, "smtp.ehlo", Some(200), None),
        ev(5, "smtp.mail-from", Some(100), None),
        ev(6, "smtp.rcpt-to", Some(300), None),
        ev(7, "smtp.connection-end", Some(100), None),
        ev(8, "smtp.rcpt-to", Some(100), None), // after the span ended
        ev(9, "smtp.connection-end", Some(200), None),
        ev(10, "auth.success", None, Some("10.0.0.5")),
    ];
    // Split across requests, as a producer would.
    ingest_ok(addr, &events[..3]).await;
    ingest_ok(addr, &events[3..7]).await;
    ingest_ok(addr, &events[7..]).await;

    let until_last = |c: &Collected| c.events.last().is_some_and(|e| e["data"]["id"] == 10);
    let got = follow.collect_until(DEADLINE, until_last).await;
    assert_eq!(field(&got.events, "id"), [json!(1), json!(3), json!(5), json!(7), json!(10)]);
    assert!(got.events[1]["data"].get("remoteIp").is_none());
    let got = nofollow.collect_until(DEADLINE, until_last).await;
    assert_eq!(field(&got.events, "id"), [json!(1), json!(10)]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_400_naming_the_parameter() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    for (query, param) in [
        ("remote_ip=10.0.0.5", Some("remote_ip")),
        // An unknown name near a known one is a typo; names near none are ignored
        // (`tests/v016.rs`, `unknown_parameters_are_ignored_unless_they_look_like_typos`).
        ("domian=example.org", Some("domian")),
        ("domain=example.org&level=loud", Some("level")),
        ("remote-ip=10.0.0.999", Some("remote-ip")),
        ("remote-port=abc", Some("remote-port")),
        ("follow=maybe", Some("follow")),
        ("filter=a%01b", Some("filter")),
    ] {
        let s = SseClient::connect(addr, &format!("{LIVE}?{query}"), Some(TOKEN)).await;
        assert_eq!(s.status, 400, "{query}");
        assert_eq!(s.header("content-type"), Some("application/json"), "{query}");
        let j = s.error_json();
        assert_eq!(j["error"], "invalid query parameter", "{query}: {j}");
        assert!(j["detail"].is_string(), "{query}: {j}");
        assert_eq!(j["parameter"].as_str(), param, "{query}: {j}");
    }
    // Errors say where in the parameter's value the problem is, and what was expected.
    for (query, param, position, expected) in [
        ("remote-ip=10.0.0.0/33", "remote-ip", 9, "a prefix length of at most 32"),
        ("size=%3Eabc", "size", 1, "a number"),
        ("q=%28domain%3Aa.org", "q", 13, "`)` closing the `(` at byte 0"),
        ("q=domain%3Aa.org+OR", "q", 15, "a term, `(` or NOT"),
        ("domain=a.org,,b.org", "domain", 6, "a value"),
    ] {
        let s = SseClient::connect(addr, &format!("{LIVE}?{query}"), Some(TOKEN)).await;
        assert_eq!(s.status, 400, "{query}");
        let j = s.error_json();
        assert_eq!(j["parameter"], param, "{query}: {j}");
        assert_eq!(j["position"], position, "{query}: {j}");
        assert_eq!(j["expected"], expected, "{query}: {j}");
    }
    let many = vec!["filter=x"; 100].join("&");
    let s = SseClient::connect(addr, &format!("{LIVE}?{many}"), Some(TOKEN)).await;
    assert_eq!(s.status, 400);
    assert_eq!(stats(addr).await["subscribers"], 0, "refused queries leave no subscriber");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_alias_and_unfiltered_delivery() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut current = SseClient::connect(addr, LIVE, Some(TOKEN)).await;
    let mut old = SseClient::connect(addr, "/api/tracing/live?filter=AUTH", Some(TOKEN)).await;
    // Stalwart's web UI sends an empty filter box.
    let mut empty = SseClient::connect(addr, &format!("{LIVE}?filter="), Some(TOKEN)).await;
    for s in [&current, &old, &empty] {
        assert_eq!(s.status, 200);
        assert_eq!(s.header("content-type"), Some("text/event-stream"));
        assert_eq!(s.header("cache-control"), Some("no-store"));
        assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    }
    assert_eq!(stats(addr).await["subscribers"], 3);
    let events = [
        json!({"type": "smtp.ehlo", "data": {"id": 0}}),
        json!({"type": "auth.success", "data": {"id": 1}}),
        json!({"type": "delivery.delivered", "data": {"id": 2, "reason": "Auth ok"}}),
    ];
    ingest_ok(addr, &events).await;
    let all = current.collect_events(3, DEADLINE).await;
    assert_eq!(field(&all, "id"), [json!(0), json!(1), json!(2)]);
    let e = empty.collect_events(3, DEADLINE).await;
    assert_eq!(field(&e, "id"), [json!(0), json!(1), json!(2)]);
    let auth = old.collect_events(2, DEADLINE).await;
    assert_eq!(field(&auth, "id"), [json!(1), json!(2)]);
    assert!(current.comments >= 1, "the stream opens with a comment line");

    // Closing a stream unsubscribes it.
    drop(old);
    wait_stats(addr, "closed stream unsubscribed", |s| s["subscribers"] == 2).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_gets_ping_frames() {
    let server = start_server(|c| c.ping_interval_secs = 1).await;
    let mut s = SseClient::connect(server.addr, LIVE, Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    let f = s.next_frame(DEADLINE).await.expect("a frame on the idle stream");
    assert_eq!(f.event, "ping");
    assert_eq!(f.id, None);
    let data: Value = serde_json::from_str(&f.data).expect("ping data is JSON");
    assert_eq!(data, json!({"interval": 1000}));
    let got = s.collect_until(DEADLINE, |c| c.pings >= 1).await;
    assert_eq!((got.pings, got.events.len()), (1, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_limit_is_503_with_retry_after() {
    let server = start_server(|c| c.max_subscribers = 2).await;
    let addr = server.addr;
    let a = SseClient::connect(addr, LIVE, Some(TOKEN)).await;
    let b = SseClient::connect(addr, &format!("{LIVE}?filter=x"), Some(TOKEN)).await;
    assert_eq!((a.status, b.status), (200, 200));
    let c = SseClient::connect(addr, LIVE, Some(TOKEN)).await;
    assert_eq!(c.status, 503);
    assert_eq!(c.header("retry-after"), Some("1"));
    assert_eq!(c.error_json()["error"], "unavailable");
    assert_eq!(stats(addr).await["subscribers"], 2);
    drop(a);
    wait_stats(addr, "a closed stream frees its slot", |s| s["subscribers"] == 1).await;
    let mut d = SseClient::connect(addr, LIVE, Some(TOKEN)).await;
    assert_eq!(d.status, 200);
    ingest_ok(addr, &[json!({"type": "auth.success"})]).await;
    assert_eq!(d.collect_events(1, DEADLINE).await.len(), 1);
    server.shutdown().await;
}

/// HEAD is accepted wherever GET is; on the live endpoint it must not leave a subscriber behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_the_live_endpoint_leaves_no_subscriber() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let r = request(addr, "HEAD", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // Read the head only: a HEAD answer has no body, whatever its headers say.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "HEAD {LIVE} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await.expect("HEAD answered and closed").unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a HEAD answer carries no body: {text:?}");
    wait_stats(addr, "no subscriber left by HEAD", |s| s["subscribers"] == 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_limits_are_configurable_and_index_stats_are_exposed() {
    let server = start_server(|c| {
        c.max_query_terms = 3;
        c.max_query_depth = 2;
    })
    .await;
    let addr = server.addr;
    let s = SseClient::connect(addr, &format!("{LIVE}?domain=a.org,b.org,c.org,d.org"), Some(TOKEN)).await;
    assert_eq!(s.status, 400);
    let j = s.error_json();
    assert_eq!((j["parameter"].as_str(), j["expected"].as_str()), (Some("domain"), Some("at most 3 terms")));
    let s = SseClient::connect(addr, &format!("{LIVE}?q=NOT+NOT+NOT+x"), Some(TOKEN)).await;
    assert_eq!(s.status, 400);
    assert_eq!(s.error_json()["expected"], "at most 2 levels of nesting");

    // One indexed subscriber, one verified after its guard, one that only a per-event
    // evaluation can decide (a lone negation): the stats say which is which.
    let _a = SseClient::connect(addr, &format!("{LIVE}?domain=*.example.org"), Some(TOKEN)).await;
    let _b = SseClient::connect(addr, &format!("{LIVE}?level=warn&domain=!example.org"), Some(TOKEN)).await;
    let _c = SseClient::connect(addr, &format!("{LIVE}?domain=!example.org"), Some(TOKEN)).await;
    let s = wait_stats(addr, "three subscribers indexed", |s| s["index"]["subscribers"] == 3).await;
    assert_eq!(s["index"]["fallback"], 1, "{s}");
    assert_eq!(s["index"]["verified"], 1, "{s}");
    assert_eq!(s["index"]["residual_terms"], 2, "{s}");
    assert!(s["index_rebuilds"].as_u64().unwrap() >= 1, "{s}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_is_batched_and_loses_nothing_for_others() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut watcher = SseClient::connect(addr, &format!("{LIVE}?follow=false"), Some(TOKEN)).await;
    assert_eq!(watcher.status, 200);
    let reader = tokio::spawn(async move {
        let c = watcher
            .collect_until(DEADLINE, |c| c.events.last().is_some_and(|e| e["data"]["id"] == 1999))
            .await;
        (watcher, c)
    });
    // 400 subscribers connect at once while events flow.
    let connects: Vec<_> = (0..400)
        .map(|i| {
            tokio::spawn(async move {
                let q = format!("{LIVE}?remote-ip=10.9.{}.{}&follow=false", i / 200, i % 200 + 1);
                SseClient::connect(addr, &q, Some(TOKEN)).await
            })
        })
        .collect();
    let events: Vec<Value> =
        (0..2000).map(|n| json!({"type": "smtp.ehlo", "data": {"id": n, "remoteIp": "10.1.1.1"}})).collect();
    for batch in events.chunks(100) {
        ingest_ok(addr, batch).await;
    }
    let mut clients = Vec::new();
    for c in connects {
        let c = c.await.unwrap();
        assert_eq!(c.status, 200);
        clients.push(c);
    }
    let (_w, got) = reader.await.unwrap();
    assert!(got.lagged.is_empty());
    assert_eq!(field(&got.events, "id"), (0..2000).map(|n| json!(n)).collect::<Vec<_>>());
    let s = wait_stats(addr, "all indexed", |s| s["index"]["subscribers"] == 401).await;
    // Connects arriving together share rebuilds (at most one per matcher shard per batch).
    let rebuilds = s["index_rebuilds"].as_u64().unwrap();
    eprintln!("{rebuilds} index rebuilds for 401 connects");
    assert!(rebuilds < 400, "{rebuilds} rebuilds for 401 connects");
    drop(clients);
    server.shutdown().await;
}
