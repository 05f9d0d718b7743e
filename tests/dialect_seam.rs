//! The dialect seam (`livetap::event::dialect`): a wire dialect that lives only in this test,
//! registered with a real server's hub. Streams that speak it receive its bytes; each event is
//! encoded once for all of them, not once per stream; a dialect no stream uses costs no
//! encoding; and a classic stream beside them is unchanged.

mod common;

use common::*;
use livetap::event::dialect::{Encoder, WireForm};
use livetap::event::Event;
use livetap::query::ast::Expr;
use livetap::subscriber::Item;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Writes `{"kind": <type>, "n": <data.total>}`, counting its calls.
struct Short(AtomicUsize, &'static str);

impl Encoder for Short {
    fn name(&self) -> &str {
        self.1
    }
    fn encode(&self, event: &Event, out: &mut Vec<u8>) {
        self.0.fetch_add(1, Ordering::Relaxed);
        let classic: Value = serde_json::from_slice(&event.json).unwrap();
        let short = json!({"kind": &*event.kind, "n": classic["data"]["total"]});
        out.extend(serde_json::to_vec(&short).unwrap());
    }
}

/// Every event queued so far, as the JSON each carries (the wire bytes minus their comma).
fn drain(sub: &livetap::matcher::registry::Subscription) -> Vec<Value> {
    let mut items = Vec::new();
    sub.sub.drain_into(&mut items, usize::MAX);
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Event { wire, .. } => Some(serde_json::from_slice(&wire[1..]).unwrap()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_encoding_per_event_per_dialect_in_use() {
    let server = start_server(|_| {}).await;
    let hub = server.hub.clone();
    let short = Arc::new(Short(AtomicUsize::new(0), "short"));
    let unused = Arc::new(Short(AtomicUsize::new(0), "unused"));
    let form = hub.dialects.register(short.clone()).unwrap();
    hub.dialects.register(unused.clone()).unwrap();
    assert!(matches!(hub.dialects.get("short"), Some(WireForm::Other(..))));

    // Three streams in the test dialect (two of them on different matcher shards), and a
    // classic one over real HTTP.
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(hub.registry.subscribe_in(Expr::True, false, None, form.clone(), None).await.unwrap());
    }
    let mut classic = SseClient::connect(server.addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    // `total` is a catalogue key, so the classic stream sends it.
    let events: Vec<Value> = (0..50).map(|n| json!({"type": "smtp.ehlo", "data": {"total": n}})).collect();
    ingest_ok(server.addr, &events).await;

    let got = classic.collect_events(50, DEADLINE).await;
    assert_eq!(got[7]["type"], "smtp.ehlo");
    assert_eq!(got[7]["data"]["total"], 7, "the classic stream is unchanged");
    wait_stats(server.addr, "all matched", |s| s["matched"].as_u64() >= Some(50)).await;
    for sub in &subs {
        let mine = drain(sub);
        assert_eq!(mine.len(), 50);
        assert_eq!(mine[7], json!({"kind": "smtp.ehlo", "n": 7}));
    }
    assert_eq!(short.0.load(Ordering::Relaxed), 50, "once per event, not once per stream");
    assert_eq!(unused.0.load(Ordering::Relaxed), 0, "a dialect nobody uses costs nothing");
    drop(subs);
    drop(classic);
    server.shutdown().await;
}
