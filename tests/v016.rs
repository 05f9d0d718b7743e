//! Stalwart v0.16's live API over real HTTP: the raw-text token endpoints (auth, permissions,
//! lifetime, grant binding), `/api/live/tracing` (initial ping, v0.16 event JSON in both
//! `keyValues` forms, `spanId`, every event exactly once, resume), `/api/live/metrics`
//! samples; and what the same work changed for every live client: camelCase key parameters,
//! unknown parameters ignored unless they look like typos, classic metrics as unsigned
//! integers beside livetap's full-precision stream, and `/metrics/prometheus` with Basic
//! authentication. The last tests replay the v0.16 web UI's exact request sequences.

mod common;

use common::*;
use livetap::auth::{AuthError, Grant};
use livetap::config::PrincipalConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TRACING: &str = "/api/live/tracing";
const METRICS: &str = "/api/live/metrics";

/// The ten gauges the v0.16 web UI's dashboard asks for (its cards with `source: "live"`).
const UI_GAUGES: &str = "server.memory,queue.count,user.count,domain.count,smtp.active-connections,\
delivery.active-connections,imap.active-connections,pop3.active-connections,http.active-connections,\
sieve.active-connections";

fn principal(name: &str, key: &str, perms: &[&str]) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        api_key: Some(key.into()),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

/// A server with a principal per live permission.
async fn server() -> livetap::Server {
    start_server(|c| {
        c.principal.push(principal("viewer", "viewer-key-0123456789", &["tracing-live"]));
        c.principal.push(principal("grafana", "grafana-key-0123456789", &["metrics-live"]));
    })
    .await
}

/// A session event of span `span` from `ip`.
fn session(span: u64, ip: &str, extra: Value) -> Value {
    let mut data = json!({"spanId": span, "listenerId": "smtp", "remoteIp": ip, "remotePort": 40000 + span});
    if let (Some(d), Some(x)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(x.clone());
    }
    json!({"type": "smtp.connection-start", "createdAt": "2026-08-20T10:00:00Z", "data": data})
}

/// Pushes metric records, asserting every one was applied.
async fn push(addr: SocketAddr, body: &[u8]) {
    let r = ingest(addr, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["errors"].as_array().map_or(true, |e| e.is_empty()), "{}", r.text());
}

/// `GET` (or `POST`) of a token endpoint with `Authorization: Bearer key`.
async fn token_as(addr: SocketAddr, method: &str, path: &str, key: &str) -> Response {
    request(addr, method, path, &[("Authorization", &format!("Bearer {key}"))], b"").await
}

/// A v0.16 token as the web UI reads it: the body as text.
async fn v016_token(addr: SocketAddr, grant: &str) -> String {
    let r = token_as(addr, "GET", &format!("/api/token/{grant}"), TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// A list in the array form (`.length`, index access), as the v0.16 web UI reads it.
fn array<'v>(v: &'v Value, what: &str) -> &'v Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("{what} is not a JSON array: {v}"))
}

/// The value of the entry named `key` in an event's `keyValues` (array form).
fn kv<'v>(event: &'v Value, key: &str) -> &'v Value {
    let list = array(&event["keyValues"], "keyValues");
    &list.iter().find(|e| e["key"] == key).unwrap_or_else(|| panic!("no `{key}` in {event}"))["value"]
}

/// Opens a stream and reads its first bytes up to the end of the opening comment block;
/// returns the status and the text read (for a non-200 answer: the whole answer).
async fn opening(addr: SocketAddr, pq: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {pq} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if text.contains("retry: 2000\n\n") {
                return (200, text);
            }
            let n = s.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (status, text);
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, fut).await.expect("an opening within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoints_answer_raw_text() {
    let server = server().await;
    let addr = server.addr;
    for (grant, key) in [("tracing", "viewer-key-0123456789"), ("metrics", "grafana-key-0123456789")] {
        let path = format!("/api/token/{grant}");
        for method in ["GET", "POST"] {
            let r = token_as(addr, method, &path, key).await;
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
            assert_eq!(r.header("cache-control"), Some("no-cache"));
            assert_eq!(r.header("content-type"), None, "no content type, as Stalwart");
            let t = r.text();
            assert!(!t.is_empty() && !t.contains(['{', '"', ' ', '\n']), "a raw token: {t:?}");
            let g = if grant == "tracing" { Grant::Tracing } else { Grant::Metrics };
            let now = livetap::event::encode::now_secs() as u64;
            assert!(server.security.tokens.verify(&t, g, now, false).is_ok(), "a live token for its grant");
        }
        // A POST body is read and ignored; more than 1 MiB is refused.
        let auth = format!("Bearer {key}");
        let r = request(addr, "POST", &path, &[("Authorization", &auth)], &[b'x'; 100_000]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = request(addr, "POST", &path, &[("Authorization", &auth)], &vec![b'x'; (1 << 20) + 1]).await;
        assert_eq!(r.status, 413, "{}", r.text());
        // Another method is refused, naming both.
        let r = request(addr, "PUT", &path, &[("Authorization", &auth)], b"").await;
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST")));
        // The same authentication and permissions as the classic token endpoints.
        assert_eq!(request(addr, "GET", &path, &[], b"").await.status, 401);
        assert_eq!(token_as(addr, "GET", &path, "wrong-key-wrong-key-0").await.status, 401);
        let other = if grant == "tracing" { "grafana-key-0123456789" } else { "viewer-key-0123456789" };
        let r = token_as(addr, "GET", &path, other).await;
        assert_eq!(r.status, 403, "{}", r.text());
        let classic = token_as(addr, "GET", &format!("/api/telemetry/live/{grant}-token"), other).await;
        assert_eq!(classic.status, 403, "the classic endpoint agrees");
        // A `?token=` does not replace the headers here.
        let t = v016_token(addr, grant).await;
        assert_eq!(request(addr, "GET", &format!("{path}?token={t}"), &[], b"").await.status, 401);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_last_sixty_seconds_and_open_only_their_stream() {
    let server = server().await;
    let addr = server.addr;
    assert_eq!(server.hub.config.live_token_ttl_secs, 60, "the default lifetime is Stalwart's");
    let tracing = v016_token(addr, "tracing").await;
    let metrics = v016_token(addr, "metrics").await;
    // The lifetime, checked by the token machinery at fixed instants rather than by waiting.
    let now = livetap::event::encode::now_secs() as u64;
    let tokens = &server.security.tokens;
    assert!(tokens.verify(&tracing, Grant::Tracing, now + 59, false).is_ok());
    assert_eq!(tokens.verify(&tracing, Grant::Tracing, now + 62, false), Err(AuthError::Expired));
    // Each opens its own stream, without any header, and not the other's.
    let s = SseClient::connect_with(addr, &format!("{TRACING}?token={tracing}"), &[]).await;
    assert_eq!(s.status, 200);
    let s = SseClient::connect_with(addr, &format!("{METRICS}?token={metrics}"), &[]).await;
    assert_eq!(s.status, 200);
    let s = SseClient::connect_with(addr, &format!("{METRICS}?token={tracing}"), &[]).await;
    assert_eq!(s.status, 401, "a tracing token is refused on the metrics stream");
    assert!(s.error_json()["detail"].as_str().unwrap().contains("other live stream"));
    let s = SseClient::connect_with(addr, &format!("{TRACING}?token={metrics}"), &[]).await;
    assert_eq!(s.status, 401);
    // With `?token=`, only the token counts: a good header does not rescue a bad token…
    let s = SseClient::connect(addr, &format!("{TRACING}?token={metrics}"), Some(TOKEN)).await;
    assert_eq!(s.status, 401, "the token alone counts on /api/live/*");
    // …while the classic stream still tries the header first.
    let s =
        SseClient::connect(addr, &format!("/api/telemetry/traces/live?token={metrics}"), Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    // Without a token, the headers, with the permission.
    assert_eq!(SseClient::connect(addr, TRACING, Some("viewer-key-0123456789")).await.status, 200);
    assert_eq!(SseClient::connect(addr, METRICS, Some("viewer-key-0123456789")).await.status, 403);
    assert_eq!(SseClient::connect(addr, METRICS, Some("grafana-key-0123456789")).await.status, 200);
    assert_eq!(SseClient::connect(addr, TRACING, None).await.status, 401);
    // Only GET is routed.
    let r = request_auth(addr, "POST", TRACING, b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracing_stream_speaks_v016_and_sends_each_event_once() {
    let server = server().await;
    let addr = server.addr;
    let mut s = SseClient::connect(addr, &format!("{TRACING}?remote-ip=10.0.0.5"), Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-store"));
    // The stream opens with a ping at once, before any event exists.
    let first = s.next_frame(DEADLINE).await.expect("the opening ping");
    assert_eq!((first.event.as_str(), first.data.as_str()), ("ping", "{\"interval\": 30000}"));

    // Three batches; each event must arrive once, however many frames carry them (Stalwart
    // v0.16 repeats every earlier match in each frame).
    let mut sent = 0u64;
    let mut got = Vec::new();
    for batch in 0..3 {
        let events: Vec<Value> = (0..4)
            .map(|i| {
                sent += 1;
                let ip = if i % 2 == 0 { "10.0.0.5" } else { "10.0.0.6" };
                session(100 * batch + i, ip, json!({"n": sent, "elapsed": 12, "tls": true}))
            })
            .collect();
        ingest_ok(addr, &events).await;
        let c = s.collect(2, DEADLINE).await;
        assert_increasing(&c.ids);
        got.extend(c.events);
    }
    assert_eq!(got.len(), 6, "{got:?}");
    let ns: Vec<u64> = got.iter().map(|e| kv(e, "n")["value"].as_u64().unwrap()).collect();
    assert_eq!(ns, [1, 3, 5, 7, 9, 11], "each match once, in order");
    // A last event, to see that nothing earlier comes again with it.
    ingest_ok(addr, &[session(999, "10.0.0.5", json!({"n": 0}))]).await;
    let c = s.collect(1, DEADLINE).await;
    assert_eq!(c.events.len(), 1, "{:?}", c.events);
    assert_eq!(kv(&c.events[0], "spanId")["value"], 999);

    // The v0.16 event JSON.
    let e = &got[0];
    assert_eq!(e["event"], "smtp.connection-start");
    assert_eq!(e["timestamp"], "2026-08-20T10:00:00Z");
    assert_eq!(e.as_object().unwrap().len(), 3, "event, timestamp, keyValues: {e}");
    let list = array(&e["keyValues"], "keyValues");
    assert_eq!(list[0], json!({"key": "spanId", "value": {"@type": "UnsignedInt", "value": 0}}));
    assert_eq!(kv(e, "remoteIp"), &json!({"@type": "IpAddr", "value": "10.0.0.5"}));
    assert_eq!(kv(e, "listenerId"), &json!({"@type": "String", "value": "smtp"}));
    assert_eq!(kv(e, "elapsed"), &json!({"@type": "Duration", "value": 12}));
    assert_eq!(kv(e, "tls"), &json!({"@type": "Boolean", "value": true}));
    drop(s);

    // Stalwart's own object form, in either spelling of the parameter, and extra path
    // segments ignored as Stalwart ignores them.
    for pq in [
        format!("{TRACING}?key-values=object&remote-ip=10.0.0.7"),
        format!("{TRACING}/any/thing?keyValues=object&remoteIp=10.0.0.7"),
    ] {
        let mut s = SseClient::connect(addr, &pq, Some(TOKEN)).await;
        assert_eq!(s.status, 200, "{pq}");
        ingest_ok(addr, &[session(7, "10.0.0.7", json!({"to": ["a@x.org", "b@y.net"]}))]).await;
        let e = &s.collect(1, DEADLINE).await.events[0];
        let kvs = e["keyValues"].as_object().expect("an index-keyed object");
        assert_eq!(kvs["0"]["key"], "spanId");
        let to = kvs.values().find(|v| v["key"] == "to").unwrap();
        assert_eq!(
            to["value"],
            json!({"@type": "List", "value": {"0": {"@type": "String", "value": "a@x.org"},
                                               "1": {"@type": "String", "value": "b@y.net"}}})
        );
    }
    let s = SseClient::connect(addr, &format!("{TRACING}?key-values=map"), Some(TOKEN)).await;
    assert_eq!((s.status, s.error_json()["parameter"].as_str()), (400, Some("key-values")));
    // Served by livetap's lean path (an error closes the connection there).
    assert_eq!(s.header("connection"), Some("close"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v016_stream_resumes_after_last_event_id() {
    let server = server().await;
    let addr = server.addr;
    let mut s = SseClient::connect(addr, &format!("{TRACING}?remoteIp=10.0.0.9"), Some(TOKEN)).await;
    let events: Vec<Value> = (0..5).map(|i| session(i, "10.0.0.9", json!({"n": i}))).collect();
    ingest_ok(addr, &events).await;
    let c = s.collect(5, DEADLINE).await;
    let last = *c.ids.last().expect("frames carry ids");
    drop(s);
    // Missed while away: five more, then a reconnect as an EventSource makes it.
    let more: Vec<Value> = (5..10).map(|i| session(i, "10.0.0.9", json!({"n": i}))).collect();
    ingest_ok(addr, &more).await;
    let auth = format!("Bearer {TOKEN}");
    let id = last.to_string();
    let mut s = SseClient::connect_with(
        addr,
        &format!("{TRACING}?remoteIp=10.0.0.9"),
        &[("Authorization", &auth), ("Last-Event-ID", &id)],
    )
    .await;
    assert_eq!(s.status, 200);
    let c = s.collect(5, DEADLINE).await;
    let ns: Vec<u64> = c.events.iter().map(|e| kv(e, "n")["value"].as_u64().unwrap()).collect();
    assert_eq!(ns, [5, 6, 7, 8, 9], "exactly the missed events");
    assert!(c.ids[0] > last);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_stream_sends_v016_samples() {
    // Pings every second, so a stream that sent them would do so between its frames.
    let server = start_server(|c| c.ping_interval_secs = 1).await;
    let addr = server.addr;
    push(
        addr,
        b"{\"metric\":\"queue.count\",\"type\":\"gauge\",\"value\":12.6}\n\
          {\"metric\":\"delivery.total-time\",\"type\":\"histogram\",\"values\":[10,20.4]}\n",
    )
    .await;
    ingest_ok(addr, &[session(1, "10.0.0.1", json!({}))]).await;
    wait_stats(addr, "counted", |s| s["matched"].as_u64() >= Some(1)).await;
    let pq = format!("{METRICS}?metrics=queue.count,delivery.total-time,smtp.connection-start&interval=3");
    let mut s = SseClient::connect(addr, &pq, Some(TOKEN)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let f = s.next_frame(DEADLINE).await.expect("metrics frames");
        assert_eq!(f.event, "metrics", "no ping or other frame on the v0.16 metrics stream: {f:?}");
        assert!(f.id.is_none());
        frames.push(f.data);
    }
    for data in &frames {
        let samples: Vec<Value> = serde_json::from_str(data).unwrap();
        let by: HashMap<&str, &Value> = samples.iter().map(|v| (v["metric"].as_str().unwrap(), v)).collect();
        assert_eq!(by["queue.count"], &json!({"metric": "queue.count", "@type": "Gauge", "count": 13}));
        assert_eq!(
            by["delivery.total-time"],
            &json!({"metric": "delivery.total-time", "@type": "Histogram", "count": 2, "sum": 30})
        );
        assert_eq!(
            by["smtp.connection-start"],
            &json!({"metric": "smtp.connection-start", "@type": "Counter", "count": 1})
        );
        // The fields in Stalwart's order.
        assert!(data.contains(r#"{"metric":"queue.count","@type":"Gauge","count":13}"#), "{data}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camel_case_keys_work_on_every_live_endpoint() {
    let server = server().await;
    let addr = server.addr;
    for base in ["/api/telemetry/traces/live", "/api/tracing/live", TRACING] {
        for (query, want) in [
            ("remoteIp=10.0.0.5", 2),
            ("remote-ip=10.0.0.5", 2),
            ("queueId=7", 1),
            ("queue-id=7", 1),
            ("q=remoteIp%3A10.0.0.6", 1),
        ] {
            let mut s = SseClient::connect(addr, &format!("{base}?{query}"), Some(TOKEN)).await;
            assert_eq!(s.status, 200, "{base}?{query}");
            // `reason` is a catalogue key, which the classic streams keep.
            let marker = format!("{base}?{query}");
            let events = [
                session(1, "10.0.0.5", json!({"reason": marker})),
                session(2, "10.0.0.5", json!({"reason": marker, "queueId": 7})),
                session(3, "10.0.0.6", json!({"reason": marker})),
            ];
            ingest_ok(addr, &events).await;
            // Last events every query matches one of, so everything before them has been sent.
            let ends = [
                session(4, "10.0.0.5", json!({"reason": "end", "queueId": 7})),
                session(5, "10.0.0.6", json!({"reason": "end", "queueId": 7})),
            ];
            ingest_ok(addr, &ends).await;
            let c = s
                .collect_until(DEADLINE, |c| c.events.iter().any(|e| e.to_string().contains("\"end\"")))
                .await;
            let mine = c.events.iter().filter(|e| e.to_string().contains(&marker)).count();
            assert_eq!(mine, want, "{base}?{query}: {:?}", c.events);
        }
        // Lower-cased (Stalwart v0.16 lower-cases every name first) is no key: a clear 400.
        let s = SseClient::connect(addr, &format!("{base}?remoteip=10.0.0.5"), Some(TOKEN)).await;
        assert_eq!(s.status, 400);
        let e = s.error_json();
        assert_eq!(e["parameter"], "remoteip");
        assert!(e["expected"].as_str().unwrap().contains("did you mean `remoteIp`"), "{e}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parameters_are_ignored_unless_they_look_like_typos() {
    let server = server().await;
    let addr = server.addr;
    for base in ["/api/telemetry/traces/live", TRACING] {
        let (status, text) =
            opening(addr, &format!("{base}?_=1700000000&utm_source=x&remote-ip=10.0.0.5")).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(": ignored parameter \"_\"\n: ignored parameter \"utm_source\"\n"), "{text}");
        // Ignored, not misread: the known parameter still filters.
        let mut s =
            SseClient::connect(addr, &format!("{base}?lang=de&remote-ip=10.0.0.5"), Some(TOKEN)).await;
        assert_eq!(s.status, 200);
        ingest_ok(addr, &[session(1, "10.0.0.6", json!({"k": 1})), session(2, "10.0.0.5", json!({"k": 2}))])
            .await;
        let events = s.collect(1, DEADLINE).await.events;
        assert!(events[0].to_string().contains("10.0.0.5"), "{events:?}");
        // A typo is refused, with the name it probably meant.
        for (query, near) in
            [("domian=example.org", "domain"), ("filtre=x", "filter"), ("remote_ip=1", "remote-ip")]
        {
            let s = SseClient::connect(addr, &format!("{base}?{query}"), Some(TOKEN)).await;
            assert_eq!(s.status, 400, "{query}");
            let e = s.error_json();
            assert!(e["expected"].as_str().unwrap().contains(&format!("did you mean `{near}`")), "{e}");
        }
    }
    // Empty values are ignored on Stalwart's paths, as Stalwart drops them.
    for base in ["/api/telemetry/traces/live", TRACING] {
        let (status, text) = opening(addr, &format!("{base}?remoteIp=&filter=")).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(": ignored parameter \"remoteIp\"\n"), "{text}");
    }
    // livetap's own endpoint stays strict: an unknown name may be a key no producer sent yet.
    for query in ["clientName=mx1", "_=1700000000", "remote-ip="] {
        let s = SseClient::connect(addr, &format!("/api/livetap/live?{query}"), Some(TOKEN)).await;
        assert_eq!(s.status, 400, "{query}");
    }
    // An empty `token=` on a v0.16 path is no token: the header counts (Stalwart drops it).
    let s = SseClient::connect_with(
        addr,
        &format!("{TRACING}?token="),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(s.status, 200);
    for base in ["/api/telemetry/metrics/live", METRICS, "/api/livetap/live/metrics"] {
        let (status, text) = opening(addr, &format!("{base}?filter=smtp&interval=5")).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(": ignored parameter \"filter\"\n"), "{text}");
        let s = SseClient::connect(addr, &format!("{base}?intervall=5"), Some(TOKEN)).await;
        assert_eq!(s.status, 400);
        assert!(s.error_json()["expected"].as_str().unwrap().contains("did you mean `interval`"));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_metrics_are_unsigned_integers_and_livetaps_are_full() {
    /// Stalwart's old web admin's sample type (`LiveMetric` in its dashboard): a frame holding
    /// one sample it cannot decode is dropped whole.
    #[derive(serde::Deserialize, Debug)]
    #[serde(tag = "type", rename_all = "camelCase")]
    #[allow(dead_code)]
    enum LiveMetric {
        Counter { id: String, value: u64 },
        Gauge { id: String, value: u64 },
        Histogram { id: String, count: u64, sum: u64 },
    }
    let server = server().await;
    let addr = server.addr;
    push(
        addr,
        b"{\"metric\":\"x.ratio\",\"value\":0.25}\n{\"metric\":\"x.half\",\"value\":2.5}\n\
          {\"metric\":\"x.negative\",\"value\":-7.5}\n{\"metric\":\"delivery.total-time\",\"type\":\"histogram\",\"values\":[0.4,10]}\n",
    )
    .await;
    let q = "metrics=x.*,delivery.total-time,livetap.*&interval=1";
    let mut classic =
        SseClient::connect(addr, &format!("/api/telemetry/metrics/live?{q}"), Some(TOKEN)).await;
    let mut full = SseClient::connect(addr, &format!("/api/livetap/live/metrics?{q}"), Some(TOKEN)).await;
    let frame = classic.next_frame(DEADLINE).await.unwrap();
    assert_eq!(frame.event, "metrics");
    let decoded: Vec<LiveMetric> =
        serde_json::from_str(&frame.data).expect("the old web admin decodes the frame");
    assert!(decoded.len() >= 4, "{decoded:?}");
    let samples: Vec<Value> = serde_json::from_str(&frame.data).unwrap();
    let by: HashMap<&str, &Value> = samples.iter().map(|v| (v["id"].as_str().unwrap(), v)).collect();
    assert_eq!(by["x.ratio"]["value"], 0);
    assert_eq!(by["x.half"]["value"], 3);
    assert_eq!(by["x.negative"]["value"], 0);
    assert_eq!(by["delivery.total-time"]["sum"], 10);
    let frame = full.next_frame(DEADLINE).await.unwrap();
    assert_eq!(frame.event, "metrics");
    let samples: Vec<Value> = serde_json::from_str(&frame.data).unwrap();
    let by: HashMap<&str, &Value> = samples.iter().map(|v| (v["id"].as_str().unwrap(), v)).collect();
    assert_eq!(by["x.ratio"]["value"], 0.25);
    assert_eq!(by["x.half"]["value"], 2.5);
    assert_eq!(by["x.negative"]["value"], -7.5);
    assert_eq!(by["delivery.total-time"]["sum"], 10.4);
    assert!(by["delivery.total-time"]["p50"].is_number());
    // livetap's stream takes the same credentials as the classic one.
    let grafana = SseClient::connect(addr, "/api/livetap/live/metrics", Some("grafana-key-0123456789")).await;
    assert_eq!(grafana.status, 200);
    let viewer = SseClient::connect(addr, "/api/livetap/live/metrics", Some("viewer-key-0123456789")).await;
    assert_eq!(viewer.status, 403);
    let t = request_auth(addr, "GET", "/api/telemetry/live/metrics-token", b"").await.json()["data"].clone();
    let s = SseClient::connect_with(
        addr,
        &format!("/api/livetap/live/metrics?token={}", t.as_str().unwrap()),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_path_takes_basic_authentication() {
    let hash = livetap::auth::password::hash_password("scrape-secret").unwrap();
    let server = start_server(|c| {
        c.principal.push(PrincipalConfig {
            name: "prometheus".into(),
            password_hash: Some(hash),
            permissions: vec!["metrics-live".into()],
            ..Default::default()
        });
    })
    .await;
    let addr = server.addr;
    ingest_ok(addr, &[session(1, "10.0.0.1", json!({}))]).await;
    push(addr, b"{\"metric\":\"queue.count\",\"value\":12}\n").await;
    wait_stats(addr, "counted", |s| s["matched"].as_u64() >= Some(1)).await;
    use base64::Engine;
    let basic =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("prometheus:scrape-secret"));
    let r = request(addr, "GET", "/metrics/prometheus", &[("Authorization", &basic)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let get = |name: &str| scrape.samples.iter().find(|s| s.metric == name).map(|s| s.value.clone());
    use prometheus_parse::Value as P;
    // Stalwart's exporter names a counter like its event, without `_total`.
    assert_eq!(get("smtp_connection_start"), Some(P::Counter(1.0)));
    assert_eq!(get("smtp_connection_start_total"), None);
    assert_eq!(get("queue_count"), Some(P::Gauge(12.0)));
    assert!(matches!(get("server_memory"), Some(P::Gauge(v)) if v > 0.0));
    let same = request(addr, "GET", "/metrics", &[("Authorization", &basic)], b"").await;
    assert_eq!(same.status, 200, "the same metrics as /metrics");
    assert!(
        same.text().contains("\nsmtp_connection_start_total 1\n"),
        "/metrics keeps the conventional names"
    );
    let r = request(addr, "GET", "/metrics/prometheus", &[], b"").await;
    assert_eq!(r.status, 401);
    assert!(
        r.headers.iter().any(|(k, v)| k == "www-authenticate" && v.starts_with("Basic")),
        "{:?}",
        r.headers
    );
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("prometheus:nope"));
    assert_eq!(
        request(addr, "GET", "/metrics/prometheus", &[("Authorization", &wrong)], b"").await.status,
        401
    );
    server.shutdown().await;
}

/// The v0.16 web UI's live tracing page (webui v1.0.8, `LiveTracingPage.tsx`), step by step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_the_v016_web_ui_live_tracing() {
    let server = server().await;
    let addr = server.addr;
    // 1. `fetch("/api/token/tracing", {headers: {Authorization: "Bearer " + oauth}})`, then
    //    `.text()` without looking at the status.
    let r = request(addr, "GET", "/api/token/tracing", &[("Authorization", &format!("Bearer {TOKEN}"))], b"")
        .await;
    let token = r.text();
    // 2. `new EventSource(origin + "/api/live/tracing?" + params)`: the token, the keyword box
    //    as `filter`, and each key filter under its camelCase schema name. An EventSource sends
    //    no Authorization header.
    let url = format!("{TRACING}?token={token}&filter=mx.example.org&remoteIp=203.0.113.9");
    let mut es = SseClient::connect_with(addr, &url, &[("Cache-Control", "no-cache")]).await;
    assert_eq!(es.status, 200);
    ingest_ok(
        addr,
        &[
            session(1, "203.0.113.9", json!({"hostname": "mx.example.org", "queueId": 42})),
            session(2, "203.0.113.9", json!({"hostname": "other.example.net"})),
            session(3, "198.51.100.1", json!({"hostname": "mx.example.org"})),
            session(4, "203.0.113.9", json!({"hostname": "mx.example.org", "elapsed": 2500})),
        ],
    )
    .await;
    // 3. `addEventListener("trace", e => JSON.parse(e.data) as TraceEvent[])`; every other
    //    event name is ignored by the page.
    let mut shown: Vec<Value> = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while shown.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = es.next_frame(left).await.expect("trace frames before the deadline");
        if f.event != "trace" {
            continue;
        }
        let events: Value = serde_json::from_str(&f.data).expect("JSON");
        shown.extend(array(&events, "trace data").iter().cloned());
    }
    assert_eq!(shown.len(), 2, "{shown:?}");
    // 4. Per event: `event` (looked up in the schema), `new Date(timestamp)`, and
    //    `keyValues.length` / `keyValues.map(kv => render(kv.key, kv.value))`, where
    //    `List.value` and `Event.value` are arrays too.
    for (e, span, elapsed) in [(&shown[0], 1, None), (&shown[1], 4, Some(2500))] {
        assert_eq!(e["event"], "smtp.connection-start");
        assert!(time::OffsetDateTime::parse(
            e["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok());
        let kvs = array(&e["keyValues"], "keyValues");
        let rendered: Vec<(String, String, String)> = (0..kvs.len())
            .map(|i| {
                let kv = &kvs[i];
                let v = &kv["value"];
                (
                    kv["key"].as_str().unwrap().into(),
                    v["@type"].as_str().unwrap().into(),
                    v["value"].to_string(),
                )
            })
            .collect();
        let has = |k: &str, t: &str, v: &str| rendered.contains(&(k.into(), t.into(), v.into()));
        assert!(has("spanId", "UnsignedInt", &span.to_string()), "{rendered:?}");
        assert!(has("remoteIp", "IpAddr", "\"203.0.113.9\""), "{rendered:?}");
        assert!(has("hostname", "String", "\"mx.example.org\""), "{rendered:?}");
        assert!(has("listenerId", "String", "\"smtp\""), "{rendered:?}");
        if let Some(ms) = elapsed {
            assert!(has("elapsed", "Duration", &ms.to_string()), "{rendered:?}");
        } else {
            // `queueId` is shown in base32 by the UI, which needs an integer.
            assert!(has("queueId", "UnsignedInt", "42"), "{rendered:?}");
        }
    }
    server.shutdown().await;
}

/// The v0.16 web UI's dashboard (`liveMetricsStore.ts`), step by step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_the_v016_web_ui_live_metrics() {
    let server = server().await;
    let addr = server.addr;
    push(addr, b"{\"metric\":\"queue.count\",\"type\":\"gauge\",\"value\":12}\n").await;
    // 1. The token, as text.
    let r = request(addr, "GET", "/api/token/metrics", &[("Authorization", &format!("Bearer {TOKEN}"))], b"")
        .await;
    let token = r.text();
    // 2. `new EventSource(origin + "/api/live/metrics?token=…&interval=30&metrics=<ids>")`,
    //    the ids joined by "," (URL-encoded as %2C by URLSearchParams).
    let ids = UI_GAUGES.replace(',', "%2C");
    let url = format!("{METRICS}?token={token}&interval=30&metrics={ids}");
    let mut es = SseClient::connect_with(addr, &url, &[]).await;
    assert_eq!(es.status, 200);
    // 3. `addEventListener("metrics", …)`: an array of `{ '@type', metric, count, sum? }`; the
    //    latest sample per metric is kept, the scalar being `count` (`sum / count` for a
    //    histogram).
    let f = es.next_frame(DEADLINE).await.expect("the first frame at once");
    assert_eq!(f.event, "metrics");
    let samples: Value = serde_json::from_str(&f.data).unwrap();
    let mut latest: HashMap<String, f64> = HashMap::new();
    for s in array(&samples, "metrics data") {
        let metric = s["metric"].as_str().expect("metric");
        let count = s["count"].as_f64().expect("count is a number");
        let scalar = match s["@type"].as_str().unwrap() {
            "Histogram" => s["sum"].as_f64().unwrap() / count.max(1.0),
            "Counter" | "Gauge" => count,
            other => panic!("unknown @type {other}"),
        };
        latest.insert(metric.to_string(), scalar);
    }
    assert_eq!(latest.get("queue.count"), Some(&12.0), "{latest:?}");
    assert!(latest.get("server.memory").is_some_and(|m| *m > 0.0), "livetap's own memory: {latest:?}");
    for name in latest.keys() {
        assert!(UI_GAUGES.split(',').any(|g| g == name), "only what was asked for: {name}");
    }
    server.shutdown().await;
}
