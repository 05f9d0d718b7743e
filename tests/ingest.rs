//! HTTP ingest over real TCP: NDJSON and JSON-array bodies with per-line errors, body limits,
//! bearer authentication, routing errors (404/405) and the unauthenticated health check.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_with_malformed_lines_reports_them_and_delivers_the_rest() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    assert_eq!(sub.status, 200);

    let body = concat!(
        "{\"type\":\"auth.success\",\"createdAt\":\"2026-11-20T12:34:56Z\",\"data\":{\"accountName\":\"alice\"}}\n",
        "{\"type\":\"smtp.ehlo\",\"data\":{\"domain\":\"mx.example.org\",\"remoteIp\":\"10.0.0.5\"}}\n",
        "{\"type\":\n",
        "\n",
        "{\"data\":{\"remoteIp\":\"10.0.0.6\"}}\n",
        "  {\"type\":\"auth.failed\",\"level\":\"warn\",\"data\":{\"accountName\":\"bob\"}}  \r\n",
        "{\"type\":\"x.y\",\"level\":\"loud\"}\n",
    );
    let r = ingest(addr, body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let a = r.json();
    assert_eq!(a["accepted"], 3, "{a}");
    assert_eq!(a["rejected"], 3, "{a}");
    let errors = a["errors"].as_array().expect("errors array");
    assert_eq!(errors.len(), 3, "{a}");
    assert_eq!(errors[0]["line"], 3);
    assert!(errors[0]["reason"].as_str().unwrap().starts_with("malformed JSON"), "{a}");
    assert_eq!(errors[1]["line"], 5);
    assert!(errors[1]["reason"].as_str().unwrap().contains("missing \"type\""), "{a}");
    assert_eq!(errors[2]["line"], 7);
    assert!(errors[2]["reason"].as_str().unwrap().contains("level"), "{a}");
    let (first, last) = (a["firstId"].as_u64().unwrap(), a["lastId"].as_u64().unwrap());
    assert_eq!(last - first, 2);

    let got = sub.collect(3, DEADLINE).await;
    assert_eq!(got.events.len(), 3, "{:?}", got.events);
    let types: Vec<_> = got.events.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["auth.success", "smtp.ehlo", "auth.failed"]);
    assert_eq!(got.events[0]["createdAt"], "2026-11-20T12:34:56Z");
    assert_eq!(got.events[0]["data"]["accountName"], "alice");
    assert_eq!(got.events[0]["text"], "Auth success");
    assert_eq!(got.events[2]["level"], "warn");
    assert_increasing(&got.ids);
    assert_eq!(*got.ids.last().unwrap(), last, "the last frame id is the last event's id");
    assert!(got.lagged.is_empty());

    let s = stats(addr).await;
    assert_eq!(s["accepted"], 3);
    assert_eq!(s["rejected"], 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_body_and_all_invalid_body() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let mut sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    assert_eq!(sub.status, 200);

    let body = json!([
        {"type": "delivery.delivered", "data": {"domain": "example.org", "queueId": 7}},
        {"type": "smtp.rcpt-to", "data": {"to": ["a@example.org", "b@example.org"]}},
        5,
        {"events": [{"type": "auth.success"}, {"type": "auth.failed"}]}
    ]);
    let r = ingest(addr, body.to_string().as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let a = r.json();
    assert_eq!(a["accepted"], 4, "{a}");
    assert_eq!(a["rejected"], 1, "{a}");
    assert_eq!(a["errors"][0]["line"], 3, "{a}");

    // Nothing valid at all: 400 with the per-line errors and a summary.
    let r = ingest(addr, b"nope\n{\"type\":5}\n").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let a = r.json();
    assert_eq!(a["accepted"], 0);
    assert_eq!(a["rejected"], 2);
    assert!(a["error"].is_string(), "{a}");
    assert!(a.get("firstId").is_none(), "{a}");

    let events = sub.collect_events(4, DEADLINE).await;
    let types: Vec<_> = events.iter().map(|e| e["type"].clone()).collect();
    assert_eq!(
        types,
        [json!("delivery.delivered"), json!("smtp.rcpt-to"), json!("auth.success"), json!("auth.failed")]
    );
    assert_eq!(events[0]["data"]["queueId"], 7);
    assert_eq!(events[1]["data"]["to"], json!(["a@example.org", "b@example.org"]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let server = start_server(|c| c.max_body_bytes = 2048).await;
    let addr = server.addr;
    let line = json!({"type": "auth.success", "data": {"accountName": "x".repeat(200)}}).to_string() + "\n";
    let big = line.repeat(20);
    assert!(big.len() > 2048);

    // Declared length over the limit.
    let r = ingest(addr, big.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let j = r.json();
    assert!(j["error"].is_string() && j["detail"].is_string(), "{j}");
    assert!(j["detail"].as_str().unwrap().contains("2048"), "{j}");

    // Chunked body, so the limit is found while reading.
    let r = ingest_chunked(addr, big.as_bytes(), 500).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let j = r.json();
    assert!(j["error"].is_string() && j["detail"].is_string(), "{j}");

    // Just under the limit is fine.
    let ok = line.repeat(2);
    let r = ingest(addr, ok.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], 2);
    assert_eq!(stats(addr).await["accepted"], 2, "nothing of the refused bodies was accepted");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;
    let body = b"{\"type\":\"auth.success\"}\n";
    let check = |r: &Response| {
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let j = r.json();
        assert_eq!(j["error"], "unauthorized", "{j}");
        assert!(j["detail"].is_string(), "{j}");
    };
    check(&request(addr, "POST", "/api/telemetry/ingest", &[], body).await);
    check(
        &request(
            addr,
            "POST",
            "/api/telemetry/ingest",
            &[("Authorization", "Bearer wrong-token-wrong-token")],
            body,
        )
        .await,
    );
    check(
        &request(
            addr,
            "POST",
            "/api/telemetry/ingest",
            &[("Authorization", &format!("Basic {TOKEN}"))],
            body,
        )
        .await,
    );
    check(&request(addr, "GET", "/api/livetap/stats", &[], b"").await);
    check(&request(addr, "GET", "/api/telemetry/traces/live", &[], b"").await);
    let sub = SseClient::connect(addr, "/api/telemetry/traces/live", Some("not-the-token-at-all")).await;
    assert_eq!(sub.status, 401);
    assert_eq!(sub.error_json()["error"], "unauthorized");

    let s = stats(addr).await;
    assert_eq!(s["accepted"], 0);
    assert!(s["authFailures"].as_u64().or(s["auth_failures"].as_u64()).unwrap() >= 6, "{s}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_errors_and_health() {
    let server = start_server(|_| {}).await;
    let addr = server.addr;

    let r = request(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));

    let r = request_auth(addr, "GET", "/api/nope", b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j: Value = r.json();
    assert_eq!(j["error"], "not found", "{j}");
    assert!(j["detail"].is_string());
    // `/` is the dashboard's page (tests/dashboard_browser.rs); other paths outside the API are 404.
    assert_eq!(request(addr, "GET", "/index.html", &[], b"").await.status, 404);

    let r = request_auth(addr, "GET", "/api/telemetry/ingest", b"").await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.json()["error"], "method not allowed");
    let r = request_auth(addr, "POST", "/api/telemetry/traces/live", b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = request(addr, "DELETE", "/healthz", &[], b"").await;
    assert_eq!(r.status, 405);
    let r = request(addr, "PUT", "/api/telemetry/webhook", &[], b"{}").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    server.shutdown().await;
}
