//! `hotpath`: the whole per-event path of livetap in one thread, for deterministic instruction
//! counts under `valgrind --tool=callgrind` (see `perf/callgrind.sh`).
//!
//! It parses NDJSON lines into events (the one serialisation), publishes them through the ring,
//! matches each against a compiled index of the `fanout-1k` subscriber mix, pushes the event
//! bytes into every matching subscriber's queue, and drains the queues into SSE chunks. No
//! sockets and no threads, so the count is the hub's own work and nothing else.
//! Usage: `hotpath EVENTS FILTERED UNFILTERED`. `HOTPATH_QUERY=<query>` adds one more
//! subscriber with that query (a webhook tap's, for `perf/webhook-callgrind.sh`).

#[path = "../pool.rs"]
#[allow(dead_code)]
mod pool;

use bytes::BytesMut;
use livetap::event::{Catalogue, EventBuilder};
use livetap::ingest::parse_ndjson;
use livetap::matcher::index::{CompiledIndex, Scratch};
use livetap::query::{parse_pairs, Limits};
use livetap::ring::Ring;
use livetap::sse::SseChunk;
use livetap::subscriber::{Item, Subscriber};
use std::sync::Arc;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let [events, filtered, unfiltered] = args[..] else {
        eprintln!("usage: hotpath EVENTS FILTERED UNFILTERED");
        std::process::exit(2);
    };
    let (catalogue, keys) = Catalogue::with_keys(1024);
    let templates = pool::templates(4096, 7);
    let mut filters = pool::filter_mix(filtered as usize, 7);
    filters.extend((0..unfiltered).map(|_| pool::firehose()));
    let extra = std::env::var("HOTPATH_QUERY").ok().filter(|q| !q.is_empty());
    let subs: Vec<Arc<Subscriber>> = filters
        .iter()
        .map(|f| f.query.as_str())
        .chain(extra.as_deref())
        .enumerate()
        .map(|(i, f)| {
            let q = parse_pairs(f, &keys, &Limits::default()).expect("valid filter");
            Arc::new(Subscriber::new(i as u64, q.expr, q.follow, 1 << 16, None))
        })
        .collect();
    let index = CompiledIndex::build(subs.clone(), 1);
    let (ring, mut consumers) = Ring::<Arc<livetap::event::Event>>::new(8192, 1);
    let mut consumer = consumers.remove(0);
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let mut scratch = Scratch::default();
    let mut items: Vec<Item> = Vec::new();
    let mut head = BytesMut::new();
    let mut body = Vec::with_capacity(256 * 400);
    let (mut delivered, mut bytes) = (0u64, 0u64);
    const BATCH: u64 = 256;
    let mut n = 0u64;
    while n < events {
        // Ingest: one NDJSON body of up to BATCH lines, parsed and built once.
        body.clear();
        let count = BATCH.min(events - n);
        for i in 0..count {
            templates[((n + i) % templates.len() as u64) as usize].write_line(&mut body, n + i, n + i);
            body.push(b'\n');
        }
        let batch = parse_ndjson(&mut body, &mut builder, 0);
        assert_eq!(batch.events.len() as u64, count, "every line is valid");
        let evs = batch.events;
        ring.try_publish(evs.len(), |i| evs[(i - n) as usize].clone()).expect("the ring has room");
        // Match and queue, as a matcher thread does.
        let limit = ring.head();
        consumer.consume(limit, 1 << 20, |seq, ev| {
            index.begin(&mut scratch);
            index.match_event(ev, &mut scratch);
            for &d in &scratch.out {
                if index.sub(d).push(seq, &ev.wire, 0) {
                    delivered += 1;
                }
            }
        });
        // Frame, as each subscriber's writer does.
        for s in &subs {
            items.clear();
            if s.drain_into(&mut items, usize::MAX) > 0 {
                if head.capacity() < 4096 {
                    head.reserve(1 << 16);
                }
                let mut chunk = SseChunk::default();
                chunk.append_items(&mut items, &mut head);
                bytes += bytes::Buf::remaining(&chunk) as u64;
            }
        }
        n += count;
    }
    println!("events={events} delivered={delivered} sse_bytes={bytes}");
}
