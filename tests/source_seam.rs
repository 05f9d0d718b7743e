//! The byte-stream seam, proven from outside the crate: a source and a line format that live
//! only in this test (`key=value` text read from an in-process pipe) run through the public
//! stream stage against a real hub, with no change to the pipeline's code. Events arrive in
//! order, a bad line is reported with its exact number, and a burst larger than the ring
//! arrives whole.

mod common;

use common::*;
use livetap::event::{EventBuilder, RawValue};
use livetap::ingest::lines::LineFormat;
use livetap::ingest::stage::{run_stream, StreamEnd};
use livetap::ingest::{LineError, ParsedBatch, Source};
use livetap::Hub;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream};

/// A line of space-separated `key=value` pairs: `type=smtp.ehlo host=x` is an event of type
/// `smtp.ehlo` whose `data` is `{"host":"x"}`. Blank lines are skipped; a line without a type
/// or with a word that is not a pair is rejected.
#[derive(Debug, Clone, Copy)]
struct KeyValue;

impl LineFormat for KeyValue {
    type Scratch = ();

    fn parse_line(
        &self,
        _: &mut (),
        line: &mut [u8],
        number: usize,
        b: &mut EventBuilder<'_>,
        now: i64,
        out: &mut ParsedBatch,
    ) {
        let Ok(text) = std::str::from_utf8(line) else { return out.reject(number, "not UTF-8") };
        let mut ty = None;
        let mut data = Vec::new();
        for word in text.split_ascii_whitespace() {
            match word.split_once('=') {
                Some(("type", v)) => ty = Some(v),
                Some((k, v)) => data.push((k.into(), RawValue::Str(v.into()))),
                None => return out.reject(number, format!("expected key=value, found {word:?}")),
            }
        }
        if text.trim().is_empty() {
            return;
        }
        let Some(ty) = ty else { return out.reject(number, "no type=") };
        // The values borrow the line: the builder walks this tree as it walks a JSON tape.
        let raw = RawValue::Object(vec![
            ("type".into(), RawValue::Str(ty.into())),
            ("data".into(), RawValue::Object(data)),
        ]);
        out.push_built(&raw, number, b, now);
    }
}

/// A byte-stream source: it only hands its reader to the stage, and keeps the rejections it
/// is given and how the stream ended, for the test to look at.
struct PipeSource<R> {
    reader: R,
    reports: Arc<Mutex<Vec<LineError>>>,
    end: Arc<Mutex<Option<StreamEnd>>>,
}

impl<R: AsyncRead + Unpin + Send + 'static> Source for PipeSource<R> {
    fn name(&self) -> &'static str {
        "test-pipe"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let reports = self.reports.clone();
            let report = move |errors: &[LineError]| reports.lock().unwrap().extend_from_slice(errors);
            let end = run_stream(hub, self.reader, KeyValue, report).await;
            *self.end.lock().unwrap() = Some(end);
        })
    }
}

/// Runs `text`, written into a pipe in writes of `piece` bytes, through a [`PipeSource`]
/// until the pipe's end, and returns the rejections the source was given.
async fn run_pipe(hub: Arc<Hub>, text: String, piece: usize) -> Vec<LineError> {
    let (mut tx, rx): (DuplexStream, DuplexStream) = tokio::io::duplex(1 << 20);
    let writer = tokio::spawn(async move {
        for part in text.as_bytes().chunks(piece) {
            tx.write_all(part).await.unwrap();
        }
        tx.shutdown().await.unwrap();
    });
    let reports = Arc::new(Mutex::new(Vec::new()));
    let end = Arc::new(Mutex::new(None));
    let source = Box::new(PipeSource { reader: rx, reports: reports.clone(), end: end.clone() });
    assert_eq!(source.name(), "test-pipe");
    tokio::time::timeout(DEADLINE, source.run(hub)).await.expect("the stage returns at the pipe's end");
    writer.await.unwrap();
    assert!(matches!(*end.lock().unwrap(), Some(StreamEnd::Eof)), "{:?}", end.lock().unwrap());
    let reports = reports.lock().unwrap().clone();
    reports
}

fn numbers(events: &[Value]) -> Vec<u64> {
    field(events, "n").iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_and_bad_lines_carry_their_numbers() {
    let server = start_server(|_| {}).await;
    // A line format's keys (`host`, `n`) are its own, not Stalwart's: livetap's full form
    // carries them (the classic streams send only the catalogue's keys).
    let mut sub = SseClient::connect(server.addr, "/api/livetap/live", Some(TOKEN)).await;
    let mut text = String::new();
    for n in 1..=9 {
        match n {
            3 => text.push('\n'),
            4 => text.push_str("type=smtp.ehlo oops\n"),
            7 => text.push_str("host=mx.example.org n=7\n"),
            _ => text.push_str(&format!("type=smtp.ehlo host=mx.example.org n={n}\n")),
        }
    }
    text.push_str("type=smtp.ehlo n=10"); // no final newline: taken at the pipe's end
                                          // Writes of 5 bytes, so lines straddle writes and reads.
    let reports = run_pipe(server.hub.clone(), text, 5).await;
    let got: Vec<_> = reports.iter().map(|e| (e.line, e.reason.as_str())).collect();
    assert_eq!(got, [(4, "expected key=value, found \"oops\""), (7, "no type=")]);

    let events = sub.collect_events(7, DEADLINE).await;
    assert_eq!(numbers(&events), [1, 2, 5, 6, 8, 9, 10]);
    assert_eq!(events[0]["type"], "smtp.ehlo");
    assert_eq!(events[0]["data"]["host"], json!("mx.example.org"));
    let s = stats(server.addr).await;
    assert_eq!((s["accepted"].as_u64(), s["rejected"].as_u64()), (Some(7), Some(2)), "{s}");
    server.shutdown().await;
}

/// Ten times the ring in one write: the stage parses it in parallel chunks, publishes them in
/// ring-sized slices as the ring drains, and loses nothing; a bad line deep in a later chunk
/// keeps its true number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_ring_arrives_whole_and_in_order() {
    const LINES: u64 = 10_000;
    const BAD: u64 = 7_777;
    // The subscriber's queue holds the whole burst, so it never lags while this test's client
    // reads more slowly than the hub ingests.
    let server = start_server(|c| {
        c.ring_capacity = 1024;
        c.subscriber_queue = 16_384;
    })
    .await;
    // A line format's keys (`host`, `n`) are its own, not Stalwart's: livetap's full form
    // carries them (the classic streams send only the catalogue's keys).
    let mut sub = SseClient::connect(server.addr, "/api/livetap/live", Some(TOKEN)).await;
    let mut text = String::new();
    for n in 1..=LINES {
        if n == BAD {
            text.push_str("n=7777\n");
        } else {
            text.push_str(&format!("type=smtp.ehlo host=mx.example.org n={n}\n"));
        }
    }
    assert!(text.len() > 256 * 1024, "the burst is larger than the largest read");
    let reports = run_pipe(server.hub.clone(), text, usize::MAX).await;
    let got: Vec<_> = reports.iter().map(|e| (e.line as u64, e.reason.as_str())).collect();
    assert_eq!(got, [(BAD, "no type=")]);

    let events = sub.collect_events(LINES as usize - 1, DEADLINE).await;
    let want: Vec<u64> = (1..=LINES).filter(|&n| n != BAD).collect();
    let ns = numbers(&events);
    assert_eq!(ns.len(), want.len(), "every accepted event arrives once");
    assert!(ns == want, "events arrive in the producer's order");
    let s = stats(server.addr).await;
    assert_eq!((s["accepted"].as_u64(), s["rejected"].as_u64()), (Some(LINES - 1), Some(1)), "{s}");
    server.shutdown().await;
}
