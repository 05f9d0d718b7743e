//! What an outgoing webhook's tap costs per matched event (issue 25), on the tap's thread:
//! the event written in Stalwart's webhook shape into a reused buffer, then appended to the
//! spool, with the spool's flush once per group of events the tap takes at once.
//!
//! Wall time on this host blurs a cost of a few per cent of `max-ingest` (`perf/webhook.sh`,
//! RESULTS §18), so this bench measures the tap's own work, per event, on one core:
//! - `event_json`: `format::write_webhook_event` alone;
//! - `append_group_never`: a group of 40 events (about what a 1 % webhook's tap takes per
//!   wake-up at `max-ingest`) written and appended, the group flushed to the file with
//!   `fsync = "never"` (the write system calls, no waiting on the disk);
//! - `append_group_always`: the same with `fsync = "always"` (one `fdatasync` per group; its
//!   time is mostly the disk's, which the tap's thread waits for, not CPU).
//!
//! A webhook matching a share `s` of the events costs the hub about `s × append_group_never`
//! per event (plus one wake-up per group), against the hub's CPU per event at `max-ingest`.
//!
//! `cargo bench --bench webhook -- --test` runs each once as a smoke test.

use criterion::{criterion_group, Criterion, Throughput};
use livetap::event::{Catalogue, Event, EventBuilder, RawValue};
use livetap::tap::webhook::format::write_webhook_event;
use livetap::tap::webhook::spool::{Fsync, Spool, SpoolSettings};
use livetap::tap::webhook::Counters;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// Events per group: a 1 % webhook at about 800,000 events/s takes about 8,000 a second, in
/// wake-ups at most every 5 ms (`COALESCE`): 40 per group.
const GROUP: usize = 40;

/// A typical matched event: an authentication failure with the keys a mail host's carry.
fn event() -> Event {
    let (catalogue, keys) = Catalogue::with_keys(1024);
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let json = br#"{"type":"auth.failed","data":{"listenerId":"submission","localPort":587,"remoteIp":"192.0.2.77","remotePort":51432,"accountName":"user-3@example.org","spanId":1234567890123,"details":"invalid credentials"}}"#;
    let raw = RawValue::parse_serde(json).expect("the sample event parses");
    builder.build(&raw, 1_796_652_532).expect("the sample event builds")
}

fn spool(dir: &std::path::Path, fsync: Fsync) -> Spool {
    let settings = SpoolSettings {
        max_events: 10_000,
        max_bytes: 1 << 20,
        max_delay: Duration::from_millis(200),
        // Large enough that no run of the bench drops anything.
        max_spool_bytes: 1 << 40,
        fsync,
    };
    Spool::open(dir, settings, Arc::new(Counters::default()), 1).expect("a spool in a temporary directory").0
}

fn webhook(c: &mut Criterion) {
    let ev = event();
    let mut scratch = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Elements(1));
    g.bench_function("event_json", |b| {
        let mut id = 0u64;
        b.iter(|| {
            id += 1;
            scratch.clear();
            write_webhook_event(id, black_box(&ev), &mut scratch);
            black_box(scratch.len())
        })
    });
    g.throughput(Throughput::Elements(GROUP as u64));
    for (name, fsync) in [("append_group_never", Fsync::Never), ("append_group_always", Fsync::Always)] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut sp = spool(dir.path(), fsync);
        let mut seq = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..GROUP {
                    seq += 1;
                    scratch.clear();
                    write_webhook_event(seq + 1, &ev, &mut scratch);
                    sp.append_event(seq, &scratch).expect("append");
                }
                sp.cut_if_due().expect("cut");
                black_box(sp.flush().expect("flush"))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, webhook);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
