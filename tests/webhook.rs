//! Stalwart webhook ingest over real TCP: X-Signature verification (valid, tampered, wrong,
//! missing), bearer auth without a key, Stalwart-shaped output (catalogue level, no spanId,
//! normalised createdAt), and backpressure answers (a batch larger than the ring goes through in slices,
//! 503 + Retry-After when the ring is full, with nothing of the refused batch delivered).

mod common;

use common::*;
use livetap::auth::sign;
use livetap::event::RawValue;
use serde_json::{json, Value};
use std::sync::Arc;

const KEY: &str = "webhook-signing-key";

async fn post_webhook(addr: std::net::SocketAddr, body: &[u8], sig: Option<&str>, bearer: bool) -> Response {
    let auth = format!("Bearer {TOKEN}");
    let mut h: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(s) = sig {
        h.push(("X-Signature", s));
    }
    if bearer {
        h.push(("Authorization", &auth));
    }
    request(addr, "POST", "/api/telemetry/webhook", &h, body).await
}

fn stalwart_batch(marker: &str) -> Vec<u8> {
    json!({"events": [
        {"id": "a1", "createdAt": "2026-11-20T12:34:56.789+01:00", "type": "smtp.connection-start",
         "data": {"spanId": 77, "remoteIp": "10.0.0.5", "listenerId": "smtp", "localPort": 25, "reason": marker}},
        {"id": "a2", "createdAt": "2026-11-20T11:34:57Z", "type": "smtp.ehlo",
         "data": {"spanId": 77, "domain": "mx.example.org", "reason": marker}},
        {"id": "a3", "createdAt": "2026-11-20T11:34:58Z", "type": "auth.failed",
         "data": {"spanId": 77, "accountName": "bob", "reason": marker}},
    ]})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_are_verified_and_normalised() {
    let server = start_server(|c| c.webhook_key = Some(KEY.into())).await;
    let addr = server.addr;
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    assert_eq!(sub.status, 200);

    // Refused first: none of these may reach the subscriber.
    let bad = stalwart_batch("refused");
    let good_sig_of_bad = sign(KEY, &bad);
    let mut tampered = bad.clone();
    let pos = tampered.windows(7).position(|w| w == b"refused").unwrap();
    tampered[pos] = b'R';
    for (what, body, sig, bearer) in [
        ("tampered body", &tampered, Some(good_sig_of_bad.clone()), false),
        ("wrong key", &bad, Some(sign("another-key", &bad)), false),
        ("not base64", &bad, Some("!!not-base64!!".to_string()), false),
        ("missing signature", &bad, None, false),
        ("bearer instead of signature", &bad, None, true),
    ] {
        let r = post_webhook(addr, body, sig.as_deref(), bearer).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let j = r.json();
        assert_eq!(j["error"], "unauthorized", "{what}: {j}");
        assert!(j["detail"].is_string(), "{what}: {j}");
    }

    let good = stalwart_batch("accepted");
    let r = post_webhook(addr, &good, Some(&sign(KEY, &good)), false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let a = r.json();
    assert_eq!(a["accepted"], 3, "{a}");
    assert_eq!(a["rejected"], 0, "{a}");

    let events = sub.collect_events(3, DEADLINE).await;
    assert_eq!(events.len(), 3, "{events:?}");
    for e in &events {
        assert_eq!(e["data"]["reason"], "accepted", "a refused batch leaked: {e}");
        assert!(e["data"].get("spanId").is_none(), "spanId must be left out: {e}");
        assert!(e.get("id").is_none(), "{e}");
        let ts = e["createdAt"].as_str().unwrap();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
    assert_eq!(events[0]["type"], "smtp.connection-start");
    assert_eq!(events[0]["level"], "debug", "level from the catalogue");
    assert_eq!(events[0]["createdAt"], "2026-11-20T11:34:56Z", "UTC, whole seconds");
    assert_eq!(events[0]["text"], "SMTP connection start");
    assert_eq!(events[0]["details"], "");
    assert_eq!(events[0]["data"]["remoteIp"], "10.0.0.5");
    assert_eq!(events[0]["data"]["localPort"], 25);
    assert_eq!(events[1]["level"], "info");
    assert_eq!(events[1]["createdAt"], "2026-11-20T11:34:57Z");
    assert_eq!(events[2]["level"], "debug");

    // Span following works on webhook events (spanId kept internally).
    let mut follower =
        SseClient::connect(addr, "/api/telemetry/traces/live?remote-ip=10.0.0.5", Some(TOKEN)).await;
    assert_eq!(follower.status, 200);
    let again = stalwart_batch("second");
    let r = post_webhook(addr, &again, Some(&sign(KEY, &again)), false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = follower.collect_events(3, DEADLINE).await;
    let types: Vec<_> = events.iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, [json!("smtp.connection-start"), json!("smtp.ehlo"), json!("auth.failed")]);

    // A body that is not a webhook batch.
    let r = post_webhook(addr, b"[1,2]", Some(&sign(KEY, b"[1,2]")), false).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["detail"].is_string());

    let s = stats(addr).await;
    assert_eq!(s["accepted"], 6, "{s}");
    assert!(s["auth_failures"].as_u64().unwrap() >= 5, "{s}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_bearer_token_is_required() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    let bad = stalwart_batch("refused");
    let r = post_webhook(addr, &bad, Some(&sign(KEY, &bad)), false).await;
    assert_eq!(r.status, 401, "a signature is no credential without a key: {}", r.text());
    let r = post_webhook(addr, &bad, None, false).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    let good = stalwart_batch("accepted");
    let r = post_webhook(addr, &good, None, true).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], 3);
    let events = sub.collect_events(3, DEADLINE).await;
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["data"]["reason"] == "accepted"), "{events:?}");
    server.shutdown().await;
}

/// Stalwart's sender has no batch size cap, so a batch larger than the ring is published in
/// slices the ring can take, in order, and answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_ring_is_published_in_slices() {
    let server = start_server(|c| {
        c.ring_capacity = 4;
        c.webhook_key = Some(KEY.into());
    })
    .await;
    let addr = server.addr;
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    let events: Vec<Value> = (0..50).map(|i| json!({"type": "auth.success", "data": {"uid": i}})).collect();
    let body = json!({ "events": events }).to_string();
    let r = post_webhook(addr, body.as_bytes(), Some(&sign(KEY, body.as_bytes())), false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], 50);
    let got = sub.collect_events(50, DEADLINE).await;
    assert_eq!(field(&got, "uid"), (0..50).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(stats(addr).await["accepted"], 50);
    server.shutdown().await;
}

/// Fills the ring deterministically: one slot is reserved by a producer that does not publish
/// until released (matchers cannot pass it), and the rest is filled behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_ring_is_503_with_retry_after_and_nothing_is_lost() {
    let server = start_server(|c| {
        c.ring_capacity = 4;
        c.ingest_wait_ms = 20;
        c.webhook_key = Some(KEY.into());
    })
    .await;
    let addr = server.addr;
    let hub = server.hub.clone();
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    assert_eq!(sub.status, 200);

    let build = |n: u64| {
        let text = format!(r#"{{"type":"auth.success","data":{{"uid":{n}}}}}"#);
        Arc::new(hub.builder().build(&RawValue::parse_serde(text.as_bytes()).unwrap(), 0).unwrap())
    };
    let first = build(0);
    let (reserved_tx, reserved_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let ring = hub.ring.clone();
    let blocker = std::thread::spawn(move || {
        ring.try_publish(1, |_| {
            reserved_tx.send(()).unwrap();
            // Dropping the sender (even on a test failure) releases the slot.
            let _ = release_rx.recv();
            first.clone()
        })
    });
    reserved_rx.recv().unwrap();
    let mut rest: Vec<_> = (1..4).map(build).collect();
    let mut displaced = Vec::new();
    assert_eq!(hub.try_publish(&mut rest, &mut displaced), Ok(1));
    assert!(rest.is_empty() && displaced.is_empty(), "moved into empty slots");
    assert_eq!(hub.ring.occupancy(), 4);

    let body = json!({"events": [{"type": "auth.success", "data": {"uid": 99}}]}).to_string();
    let sig = sign(KEY, body.as_bytes());
    let r = post_webhook(addr, body.as_bytes(), Some(&sig), false).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let j = r.json();
    assert_eq!(j["error"], "unavailable", "{j}");
    assert!(j["detail"].as_str().unwrap().contains("full"), "{j}");
    // The NDJSON endpoint answers the same.
    let r = ingest(addr, b"{\"type\":\"auth.success\",\"data\":{\"uid\":98}}\n").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(stats(addr).await["refused_batches"], 2);

    drop(release_tx);
    assert_eq!(blocker.join().unwrap(), Ok(0));

    // Stalwart retries the refused batch: now it goes through.
    let r = post_webhook(addr, body.as_bytes(), Some(&sig), false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = sub.collect_events(5, DEADLINE).await;
    let uids: Vec<_> = field(&events, "uid");
    assert_eq!(
        uids,
        [json!(0), json!(1), json!(2), json!(3), json!(99)],
        "the refused batches left no trace"
    );
    server.shutdown().await;
}

/// A body past `max-webhook-bytes` is not refused unread (Stalwart announces its length, and a
/// batch that grew past the limit would be refused for ever): what came before the limit is
/// published, the answer is 413 saying how much was kept, and a resend in Stalwart's order
/// (newer events first, the refused batch after them) publishes the newer events and
/// recognises the ones already published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_limit_keeps_what_came_before_it() {
    let server = start_server(|c| {
        c.webhook_key = Some(KEY.into());
        c.max_body_bytes = 1024;
        c.max_webhook_bytes = 4096;
    })
    .await;
    let addr = server.addr;
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    let ev = |i: u64| json!({"type": "auth.success", "createdAt": "2026-12-07T10:00:00Z", "data": {"uid": i, "reason": "x".repeat(60)}});
    let old: Vec<Value> = (0..100).map(ev).collect();
    let body = json!({ "events": old }).to_string();
    assert!(body.len() > 4096);
    let r = post_webhook(addr, body.as_bytes(), Some(&sign(KEY, body.as_bytes())), false).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let kept = r.json()["accepted"].as_u64().unwrap();
    assert!(kept > 10 && kept < 100, "{}", r.text());
    let got = sub.collect_events(kept as usize, DEADLINE).await;
    assert_eq!(field(&got, "uid"), (0..kept).map(|i| json!(i)).collect::<Vec<_>>());

    // The resend: five newer events first, then the refused batch; the newer ones and the
    // rest of the old ones that fit are published, the kept ones are recognised.
    let mut resend: Vec<Value> = (1000..1005).map(ev).collect();
    resend.extend(old.iter().cloned());
    let body = json!({ "events": resend }).to_string();
    let r = post_webhook(addr, body.as_bytes(), Some(&sign(KEY, body.as_bytes())), false).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let j = r.json();
    assert!(j["duplicates"].as_u64().unwrap() > 0, "{j}");
    let more = j["accepted"].as_u64().unwrap();
    let got = sub.collect_events(more as usize, DEADLINE).await;
    let uids = field(&got, "uid");
    assert_eq!(&uids[..5], &(1000..1005).map(|i| json!(i)).collect::<Vec<_>>()[..], "{uids:?}");
    assert!(uids.iter().all(|u| u.as_u64().unwrap() >= 1000), "nothing published twice: {uids:?}");
    server.shutdown().await;
}
