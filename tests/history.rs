//! Integration tests of the history store (issue 7) through the library: selection, queries, metrics, retention, restart, resume helpers, and kill -9 recovery.
//!
//! Events are built the way ingest builds them (`EventBuilder` over producer JSON) and fed
//! to a real `HistoryWriter` over a real SQLite file in a temporary directory. Waiting is
//! done with `HistoryWriter::flush`, which returns once everything submitted before it is
//! committed, so no test depends on timing.

use livetap::event::{Catalogue, Event, EventBuilder, KeyRegistry, RawValue};
use livetap::query::{parse_pairs, Limits};
use livetap::store::{
    parse_keywords, History, HistoryConfig, HistoryKeys, HistoryStore, HistoryWriter, MetricKind,
    MetricPoint, MetricQuery, MetricSample, Retention, SqliteStore, StoreError, TraceQuery,
};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

/// Keys and catalogue as the hub sets them up.
fn setup() -> (Catalogue, KeyRegistry) {
    let c = Catalogue::embedded();
    let k = KeyRegistry::new(1024);
    c.register_keys(&k);
    (c, k)
}

/// Builds one event from producer JSON.
fn build(b: &mut EventBuilder<'_>, json: &str) -> Arc<Event> {
    let raw = RawValue::parse_serde(json.as_bytes()).expect("test JSON");
    Arc::new(b.build(&raw, 1_790_000_000).expect("valid test event"))
}

/// A small, quick configuration: short flush interval, small bounds. Age retention is off,
/// because the events carry fixed dates that the retention thread would otherwise prune
/// (whenever it happens to run) once they are older than the default ages; the retention
/// tests call `prune` themselves with a chosen "now".
fn config() -> HistoryConfig {
    HistoryConfig {
        flush_interval_ms: 10,
        batch_size: 64,
        max_span_events: 8,
        trace_retention_days: 0,
        metric_retention_days: 0,
        ..HistoryConfig::default()
    }
}

/// Feeds events with consecutive sequence numbers.
struct Feeder {
    seq: u64,
}

impl Feeder {
    fn feed(&mut self, w: &HistoryWriter, ev: Arc<Event>) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        assert!(w.submit(seq, ev), "queue full in a test that never fills it");
        seq
    }
}

/// Three stored stories and one that is not kept. Returns the sequence numbers per span.
fn mail_day(b: &mut EventBuilder<'_>, w: &HistoryWriter, f: &mut Feeder) -> Vec<Vec<u64>> {
    let span1 = [
        r#"{"type":"smtp.connection-start","createdAt":"2026-11-01T10:00:00Z","data":{"spanId":1,"remoteIp":"10.0.0.5","listenerId":"smtp"}}"#,
        r#"{"type":"smtp.mail-from","createdAt":"2026-11-01T10:00:01Z","data":{"spanId":1,"from":"Alice@Example.org"}}"#,
        r#"{"type":"smtp.rcpt-to","createdAt":"2026-11-01T10:00:02Z","data":{"spanId":1,"to":"bob@example.net"}}"#,
        r#"{"type":"queue.queue-message","createdAt":"2026-11-01T10:00:03Z","data":{"spanId":1,"queueId":100}}"#,
        r#"{"type":"smtp.connection-end","createdAt":"2026-11-01T10:00:04Z","data":{"spanId":1}}"#,
    ];
    let span2 = [
        r#"{"type":"delivery.attempt-start","createdAt":"2026-11-02T08:00:00Z","data":{"spanId":2,"queueId":100,"domain":"example.net"}}"#,
        r#"{"type":"delivery.mx-lookup","createdAt":"2026-11-02T08:00:01Z","data":{"spanId":2,"hostname":"mx1.example.net"}}"#,
        r#"{"type":"delivery.attempt-end","createdAt":"2026-11-02T08:00:02Z","data":{"spanId":2}}"#,
    ];
    let span3 = [
        r#"{"type":"smtp.connection-start","createdAt":"2026-11-03T09:00:00Z","data":{"spanId":3,"remoteIp":"10.0.0.6"}}"#,
        r#"{"type":"smtp.mail-from","createdAt":"2026-11-03T09:00:01Z","data":{"spanId":3,"from":"carol@example.com","queueId":101}}"#,
        r#"{"type":"smtp.connection-end","createdAt":"2026-11-03T09:00:02Z","data":{"spanId":3}}"#,
    ];
    // A session that queued nothing: not kept.
    let span4 = [
        r#"{"type":"smtp.connection-start","createdAt":"2026-11-03T09:30:00Z","data":{"spanId":4,"remoteIp":"10.0.0.5"}}"#,
        r#"{"type":"smtp.connection-end","createdAt":"2026-11-03T09:30:01Z","data":{"spanId":4}}"#,
    ];
    // Interleave spans 1 and 4 the way a busy server interleaves sessions.
    let mut seqs = vec![Vec::new(), Vec::new(), Vec::new()];
    seqs[0].push(f.feed(w, build(b, span1[0])));
    f.feed(w, build(b, span4[0]));
    seqs[0].push(f.feed(w, build(b, span1[1])));
    f.feed(w, build(b, r#"{"type":"server.startup","data":{"queueId":5}}"#));
    f.feed(w, build(b, span4[1]));
    for line in &span1[2..] {
        seqs[0].push(f.feed(w, build(b, line)));
    }
    for line in span2 {
        seqs[1].push(f.feed(w, build(b, line)));
    }
    for line in span3 {
        seqs[2].push(f.feed(w, build(b, line)));
    }
    seqs
}

fn open(dir: &Path, cfg: &HistoryConfig, keys: &KeyRegistry) -> History {
    History::open(&dir.join("history.sqlite3"), cfg, keys).expect("open history")
}

fn ids(page: &livetap::store::Page<livetap::store::TraceSummary>) -> Vec<u64> {
    page.items.iter().map(|t| t.id).collect()
}

#[test]
fn selection_keeps_whole_spans_that_carry_a_queue_id() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), &config(), &k);
    let mut b = EventBuilder::new(&c, &k);
    let mut f = Feeder { seq: 0 };
    let seqs = mail_day(&mut b, &h.writer, &mut f);
    assert!(h.writer.flush());

    let all = h.store.traces(&TraceQuery::default()).unwrap();
    assert_eq!(ids(&all), vec![3, 2, 1], "newest span first; span 4 had no queue id");
    // Span 1 is whole, including the events before its queue id appeared.
    let t1 = h.store.trace(1).unwrap();
    assert_eq!(t1.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs[0]);
    assert_eq!(t1[0].event_type, "smtp.connection-start");
    assert!(h.store.trace(4).unwrap().is_empty());
    let s1 = all.items.iter().find(|t| t.id == 1).unwrap();
    assert_eq!(
        (s1.event_type.as_str(), s1.queue_id.as_deref(), s1.events),
        ("smtp.connection-start", Some("100"), 5)
    );
    let stats = h.writer.stats();
    assert_eq!(stats.written, 11);
    assert_eq!(stats.spans_discarded, 1);
    assert_eq!(stats.dropped, 0);

    // The span bound: 8 events of a 12-event span are kept, 4 are counted.
    let first = build(&mut b, r#"{"type":"delivery.attempt-start","data":{"spanId":9,"queueId":7}}"#);
    f.feed(&h.writer, first);
    for _ in 0..11 {
        f.feed(&h.writer, build(&mut b, r#"{"type":"delivery.rcpt-status","data":{"spanId":9,"code":250}}"#));
    }
    assert!(h.writer.flush());
    assert_eq!(h.store.trace(9).unwrap().len(), 8);
    assert_eq!(h.writer.stats().span_truncated, 4);
}

#[test]
fn trace_answers_hold_the_streamed_bytes() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), &config(), &k);
    let mut b = EventBuilder::new(&c, &k);
    let a = build(
        &mut b,
        r#"{"type":"delivery.attempt-start","data":{"spanId":77,"queueId":1,"to":["x@a.org","y@b.org"]}}"#,
    );
    let z = build(&mut b, r#"{"type":"delivery.attempt-end","data":{"spanId":77}}"#);
    h.writer.submit(40, a.clone());
    h.writer.submit(41, z.clone());
    assert!(h.writer.flush());
    let t = h.store.trace(77).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].json.clone(), t[1].json.clone()), (a.json.clone(), z.json.clone()));
    assert_eq!((t[0].id(), t[1].id()), (41, 42));
    let mut body = Vec::new();
    livetap::store::write_json_array(&t, &mut body);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v[0]["data"]["to"][1], "y@b.org");
    assert_eq!(serde_json::to_value(&t[1]).unwrap()["type"], "delivery.attempt-end");
}

#[test]
fn traces_query_by_type_queue_id_keywords_time_and_page() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), &config(), &k);
    let mut b = EventBuilder::new(&c, &k);
    mail_day(&mut b, &h.writer, &mut Feeder { seq: 0 });
    assert!(h.writer.flush());
    let q = |s: &str| ids(&h.store.traces(&TraceQuery::from_query_string(s).unwrap()).unwrap());

    assert_eq!(q("type=smtp.connection-start"), vec![3, 1]);
    assert_eq!(q("type=delivery.attempt-start"), vec![2]);
    assert_eq!(q("queue_id=100"), vec![2, 1]);
    assert_eq!(q("queue_id=101"), vec![3]);
    assert_eq!(q("queue_id=999"), Vec::<u64>::new());
    // Keywords: word-boundary prefixes over from/to/domain/hostname/remoteIp (FTS5).
    assert_eq!(q("filter=example.net"), vec![2, 1], "a rcpt address and a delivery domain");
    assert_eq!(q("filter=mx1"), vec![2]);
    assert_eq!(q("filter=10.0.0.5"), vec![1]);
    assert_eq!(q("filter=alice"), vec![1], "addresses are searched case-insensitively");
    assert_eq!(q("filter=%22alice%40example.org%22"), vec![1], "quoted: the whole value");
    assert_eq!(q("filter=%22example.org%22"), Vec::<u64>::new());
    assert_eq!(q("filter=example+10.0.0.6"), vec![3], "every word must match");
    assert_eq!(q("filter=nobody"), Vec::<u64>::new());
    // Times: the span's first event; after is inclusive, before exclusive.
    assert_eq!(q("after=2026-11-02"), vec![3, 2]);
    assert_eq!(q("before=2026-11-02T08:00:00Z"), vec![1]);
    assert_eq!(q("after=2026-11-02&before=2026-11-03"), vec![2]);
    assert_eq!(q("type=smtp.connection-start&filter=example.net&after=2026-11-01"), vec![1]);
    // Pages count from 1; the total counts all matches.
    let p = h.store.traces(&TraceQuery::from_query_string("limit=2&page=2").unwrap()).unwrap();
    assert_eq!((ids(&p), p.total), (vec![1], 3));
    let p = h.store.traces(&TraceQuery::from_query_string("limit=2").unwrap()).unwrap();
    assert_eq!((ids(&p), p.total), (vec![3, 2], 3));
    let classic = serde_json::to_string(&livetap::store::Data { data: p.map(|t| t.id) }).unwrap();
    assert_eq!(classic, r#"{"data":{"items":[3,2],"total":3}}"#);
    let kw = TraceQuery { keywords: parse_keywords("EXAMPLE.NET"), ..TraceQuery::default() };
    assert_eq!(h.store.traces(&kw).unwrap().total, 2);
}

#[test]
fn metric_samples_store_increases_and_filter_by_name() {
    let (_, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), &config(), &k);
    let counter = |v: f64| MetricSample {
        name: "queue.count".into(),
        kind: MetricKind::Counter,
        value: v,
        count: 0,
        sum: 0.0,
    };
    let gauge = |v: f64| MetricSample {
        name: "server.memory".into(),
        kind: MetricKind::Gauge,
        value: v,
        count: 0,
        sum: 0.0,
    };
    let hist = |n: u64, s: f64| MetricSample {
        name: "delivery.total-time".into(),
        kind: MetricKind::Histogram,
        value: 0.0,
        count: n,
        sum: s,
    };
    assert!(h.writer.sample_metrics(1_000, vec![counter(5.0), gauge(10.0), hist(2, 10.0)]));
    assert!(h.writer.sample_metrics(1_060, vec![counter(8.0), gauge(12.0), hist(3, 25.0)]));
    // No increase: nothing stored for the counter and the histogram.
    assert!(h.writer.sample_metrics(1_120, vec![counter(8.0), gauge(12.0), hist(3, 25.0)]));
    // A restart of the source (the total went down) counts from zero again.
    let reading = livetap::metrics::MetricValue {
        name: "queue.count".into(),
        unit: None,
        help: None,
        reading: livetap::metrics::Reading::Counter(2),
    };
    assert!(h.writer.sample_metrics(1_180, vec![MetricSample::from(&reading)]));
    assert!(h.writer.flush());

    let q = |s: &str| h.store.metrics(&MetricQuery::from_query_string(s).unwrap()).unwrap();
    let counters: Vec<(i64, u64)> = q("metrics=queue.count")
        .items
        .iter()
        .map(|p| match p {
            MetricPoint::Counter { timestamp, value, .. } => (*timestamp, *value),
            other => panic!("not a counter: {other:?}"),
        })
        .collect();
    assert_eq!(counters, vec![(1_000, 5), (1_060, 3), (1_180, 2)]);
    assert_eq!(
        q("metrics=delivery.*&after=1060").items,
        vec![MetricPoint::Histogram {
            id: "delivery.total-time".into(),
            timestamp: 1_060,
            count: 1,
            sum: 15.0
        }]
    );
    assert_eq!(q("metrics=server.memory&before=1060").items.len(), 1);
    let all = q("");
    assert_eq!(all.total, 3 + 3 + 2);
    let json = serde_json::to_value(&all.items[0]).unwrap();
    assert_eq!(json["timestamp"], "1970-01-01T00:16:40Z");
    assert_eq!(h.writer.stats().metric_points, 8);
}

/// Writes `n` single-event spans (each with a queue id) directly into the store, `per_batch`
/// per transaction, with creation times from `at` on.
fn bulk(store: &SqliteStore, b: &mut EventBuilder<'_>, keys: &HistoryKeys, from: u64, n: u64, at: i64) {
    let mut batch = Vec::new();
    for i in from..from + n {
        let ev = build(
            b,
            &format!(
                r#"{{"type":"delivery.attempt-start","createdAt":{},"data":{{"spanId":{},"queueId":{},"remoteIp":"10.{}.{}.{}","domain":"d{}.example.org","from":"user{}@example.com","reason":"padding padding padding padding padding padding"}}}}"#,
                at + i as i64,
                i + 1,
                i,
                i % 200,
                (i / 200) % 200,
                i % 250 + 1,
                i % 97,
                i
            ),
        );
        let queue_id: Option<Box<str>> = ev.values_of(keys.queue_id.unwrap()).next().map(Box::from);
        batch.push(livetap::store::EventRecord {
            seq: i,
            event: ev,
            span_queue_ids: queue_id.iter().cloned().collect(),
            queue_id,
            keywords: [format!("d{}.example.org", i % 97), format!("user{i}@example.com")]
                .into_iter()
                .map(Box::from)
                .collect(),
        });
        if batch.len() == 1000 {
            store.write_events(&batch).unwrap();
            batch.clear();
        }
    }
    store.write_events(&batch).unwrap();
}

#[test]
fn retention_by_age_removes_whole_old_traces_and_old_samples() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), &config(), &k);
    let mut b = EventBuilder::new(&c, &k);
    let mut f = Feeder { seq: 0 };
    mail_day(&mut b, &h.writer, &mut f);
    // A span is judged by its start, whole: one that started on day 2 and ended on day 3 goes
    // with day 2.
    f.feed(&h.writer, build(&mut b, r#"{"type":"delivery.attempt-start","createdAt":"2026-11-02T10:00:00Z","data":{"spanId":8,"queueId":3}}"#));
    f.feed(
        &h.writer,
        build(
            &mut b,
            r#"{"type":"delivery.attempt-end","createdAt":"2026-11-03T10:00:00Z","data":{"spanId":8}}"#,
        ),
    );
    let day = |d: i64| 1_793_491_200 + (d - 1) * 86_400; // 2026-11-0d 00:00Z
    let gauge = |v| MetricSample {
        name: "server.memory".into(),
        kind: MetricKind::Gauge,
        value: v,
        count: 0,
        sum: 0.0,
    };
    assert!(h.writer.sample_metrics(day(1), vec![gauge(1.0)]));
    assert!(h.writer.sample_metrics(day(3), vec![gauge(2.0)]));
    assert!(h.writer.flush());

    // "Now" is 2026-11-04 12:00; keep traces 2 days (started after 11-02 12:00) and samples 1.5.
    let r = Retention { trace_max_age_secs: 2 * 86_400, metric_max_age_secs: 129_600, max_bytes: 0 };
    let report = h.store.prune(&r, day(4) + 43_200).unwrap();
    assert_eq!((report.spans, report.events, report.samples), (3, 10, 1));
    assert_eq!(ids(&h.store.traces(&TraceQuery::default()).unwrap()), vec![3]);
    assert!(h.store.trace(1).unwrap().is_empty());
    assert!(h.store.trace(8).unwrap().is_empty(), "span 8 went whole, its day-3 end included");
    assert_eq!(h.store.trace(3).unwrap().len(), 3);
    // Their keywords and queue ids went with them.
    assert_eq!(
        h.store.traces(&TraceQuery::from_query_string("filter=example.net").unwrap()).unwrap().total,
        0
    );
    assert_eq!(h.store.traces(&TraceQuery::from_query_string("queue_id=100").unwrap()).unwrap().total, 0);
    assert_eq!(h.store.traces(&TraceQuery::from_query_string("filter=10.0.0.6").unwrap()).unwrap().total, 1);
    assert_eq!(h.store.metrics(&MetricQuery::default()).unwrap().total, 1);
    assert_eq!(h.store.integrity_check().unwrap(), vec!["ok"]);
    fts_consistent(h.store.path());
}

/// The keyword index holds exactly the keyword rows (FTS5's own check of an external-content
/// index against its table).
fn fts_consistent(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("INSERT INTO keywords_fts (keywords_fts, rank) VALUES ('integrity-check', 1)")
        .unwrap();
}

#[test]
fn retention_by_size_keeps_the_file_under_the_bound() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("h.sqlite3")).unwrap();
    let keys = HistoryKeys::resolve(&k);
    let mut b = EventBuilder::new(&c, &k);
    bulk(&store, &mut b, &keys, 0, 20_000, 1_790_000_000);
    let max = 2u64 << 20;
    let before = store.stats().unwrap();
    assert!(before.bytes > 2 * max, "the test needs a database well over the bound ({} bytes)", before.bytes);

    let r = Retention { trace_max_age_secs: 0, metric_max_age_secs: 0, max_bytes: max };
    let report = store.prune(&r, 1_790_000_000).unwrap();
    let after = store.stats().unwrap();
    eprintln!("size prune: {before:?} -> {after:?}, {report:?}");
    assert!(report.bytes_after <= max, "{} bytes after pruning to {max}", report.bytes_after);
    assert!(store.size_bytes() <= max);
    // The oldest went, the newest stayed, spans whole.
    assert_eq!(after.newest_seq, Some(19_999));
    assert!(after.oldest_seq.unwrap() > 0);
    assert_eq!(after.events, after.spans);
    assert_eq!(report.events, before.events - after.events);
    // A second prune under the bound does nothing.
    let again = store.prune(&r, 1_790_000_000).unwrap();
    assert_eq!(again.events, 0);
    assert_eq!(store.integrity_check().unwrap(), vec!["ok"]);
    fts_consistent(store.path());
    // Writing more and pruning again stays under the bound.
    bulk(&store, &mut b, &keys, 20_000, 10_000, 1_790_100_000);
    store.prune(&r, 1_790_000_000).unwrap();
    assert!(store.size_bytes() <= max);
    assert_eq!(store.stats().unwrap().newest_seq, Some(29_999));
}

#[test]
fn restart_keeps_history() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    {
        let h = open(dir.path(), &config(), &k);
        let mut b = EventBuilder::new(&c, &k);
        mail_day(&mut b, &h.writer, &mut Feeder { seq: 0 });
        // Shutdown writes what is queued, without an explicit flush.
        h.writer.shutdown();
    }
    let h = open(dir.path(), &config(), &k);
    assert_eq!(ids(&h.store.traces(&TraceQuery::default()).unwrap()), vec![3, 2, 1]);
    assert_eq!(h.store.trace(1).unwrap().len(), 5);
    // 14 events were fed (0..=13), the last one stored; a restarted hub continues after it.
    assert_eq!(h.store.next_seq().unwrap(), 14);
    assert_eq!(h.store.integrity_check().unwrap(), vec!["ok"]);
}

#[test]
fn resume_helpers_read_stored_events_after_a_sequence_number() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path(), &config(), &k);
    let mut b = EventBuilder::new(&c, &k);
    let seqs = mail_day(&mut b, &h.writer, &mut Feeder { seq: 0 });
    assert!(h.writer.flush());
    let stored: Vec<u64> = seqs.concat();

    // Everything from a point on, in order, in pages.
    let first = h.store.events_since_seq(3, 4).unwrap();
    let want: Vec<u64> = stored.iter().copied().filter(|s| *s >= 3).collect();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), want[..4]);
    let next = h.store.events_since_seq(first.last().unwrap().seq + 1, 100).unwrap();
    assert_eq!(next.iter().map(|e| e.seq).collect::<Vec<_>>(), want[4..]);
    assert!(h.store.events_since_seq(1_000, 10).unwrap().is_empty());

    // The floor of a bounded resume: the oldest of the newest n stored in a range.
    let in_range: Vec<u64> = stored.iter().copied().filter(|s| (2..40).contains(s)).collect();
    assert!(in_range.len() > 3, "{in_range:?}");
    let n = in_range.len() - 2;
    assert_eq!(h.store.floor_for_newest(2, 40, n).unwrap(), Some(in_range[2]));
    assert_eq!(h.store.floor_for_newest(2, 40, in_range.len()).unwrap(), None);
    assert_eq!(h.store.floor_for_newest(2, 40, 0).unwrap(), None);

    // since=: the first stored event created at or after a time.
    let t = livetap::store::parse_time("since", "2026-11-02T00:00:00Z").unwrap();
    assert_eq!(h.store.first_seq_at_or_after(t).unwrap(), Some(seqs[1][0]));
    assert_eq!(h.store.first_seq_at_or_after(t + 10 * 86_400).unwrap(), None);

    // Stored events rebuild into events the matcher's reference evaluator accepts.
    let expr = parse_pairs("remote-ip=10.0.0.5&span-id=1", &k, &Limits::default()).unwrap().expr;
    let mut rb = EventBuilder::new(&c, &k);
    let rebuilt = h.store.events_since_seq(0, 1).unwrap()[0].to_event(&mut rb).unwrap();
    assert!(expr.eval(&rebuilt));
    assert_eq!(rebuilt.span_id, Some(1));
}

#[test]
fn keep_query_keeps_matching_events_without_spans() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let cfg = HistoryConfig { keep: Some("event=auth.*".into()), ..config() };
    let h = open(dir.path(), &cfg, &k);
    let mut b = EventBuilder::new(&c, &k);
    let mut f = Feeder { seq: 0 };
    let a = f.feed(&h.writer, build(&mut b, r#"{"type":"auth.failed","data":{"remoteIp":"10.9.9.9"}}"#));
    f.feed(&h.writer, build(&mut b, r#"{"type":"smtp.ehlo","data":{"domain":"x.org"}}"#));
    assert!(h.writer.flush());
    let got = h.store.events_since_seq(0, 10).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![a]);
    assert_eq!(got[0].span_id, None);

    let bad = HistoryConfig { keep: Some("no-such-key=1".into()), ..config() };
    assert!(matches!(
        History::open(&dir.path().join("other.sqlite3"), &bad, &k),
        Err(StoreError::KeepQuery(_))
    ));
}

/// A store whose writes wait for the test's go-ahead, to fill the writer's queue without
/// relying on timing.
struct GatedStore {
    inner: SqliteStore,
    entered: crossbeam_channel::Sender<()>,
    go: crossbeam_channel::Receiver<()>,
}

impl HistoryStore for GatedStore {
    fn write_events(&self, batch: &[livetap::store::EventRecord]) -> Result<(), StoreError> {
        let _ = self.entered.try_send(());
        let _ = self.go.recv();
        self.inner.write_events(batch)
    }
    fn write_metrics(&self, points: &[MetricPoint]) -> Result<(), StoreError> {
        self.inner.write_metrics(points)
    }
    fn traces(
        &self,
        q: &TraceQuery,
    ) -> Result<livetap::store::Page<livetap::store::TraceSummary>, StoreError> {
        self.inner.traces(q)
    }
    fn trace(&self, id: u64) -> Result<Vec<livetap::store::StoredEvent>, StoreError> {
        self.inner.trace(id)
    }
    fn metrics(&self, q: &MetricQuery) -> Result<livetap::store::Page<MetricPoint>, StoreError> {
        self.inner.metrics(q)
    }
    fn events_since_seq(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<livetap::store::StoredEvent>, StoreError> {
        self.inner.events_since_seq(from, limit)
    }
    fn floor_for_newest(&self, from: u64, until: u64, n: usize) -> Result<Option<u64>, StoreError> {
        self.inner.floor_for_newest(from, until, n)
    }
    fn first_seq_at_or_after(&self, t: i64) -> Result<Option<u64>, StoreError> {
        self.inner.first_seq_at_or_after(t)
    }
    fn next_seq(&self) -> Result<u64, StoreError> {
        self.inner.next_seq()
    }
    fn prune(&self, r: &Retention, now: i64) -> Result<livetap::store::PruneReport, StoreError> {
        self.inner.prune(r, now)
    }
    fn stats(&self) -> Result<livetap::store::StoreStats, StoreError> {
        self.inner.stats()
    }
    fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.inner.disk_bytes()
    }
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let (c, k) = setup();
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = crossbeam_channel::bounded(1);
    let (go_tx, go_rx) = crossbeam_channel::unbounded();
    let store = Arc::new(GatedStore {
        inner: SqliteStore::open(&dir.path().join("h.sqlite3")).unwrap(),
        entered: entered_tx,
        go: go_rx,
    });
    let cfg = HistoryConfig { queue_capacity: 8, batch_size: 1, ..config() };
    let w = HistoryWriter::start(store.clone(), HistoryKeys::resolve(&k), &cfg, None).unwrap();
    let mut b = EventBuilder::new(&c, &k);
    let ev = |b: &mut EventBuilder<'_>, s: u64| {
        build(b, &format!(r#"{{"type":"queue.queue-message","data":{{"spanId":{s},"queueId":{s}}}}}"#))
    };
    assert!(w.submit(0, ev(&mut b, 0)));
    // The writer is now inside the store, holding event 0: the queue takes 8 more, then drops.
    entered_rx.recv().unwrap();
    let accepted: Vec<bool> = (1..=13).map(|s| w.submit(s, ev(&mut b, s))).collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 8);
    assert!(accepted[8..].iter().all(|a| !a));
    assert_eq!(w.stats().dropped, 5);
    assert_eq!(w.stats().queued, 8);
    // Span-less events with no keep query are not even queued, so never dropped.
    assert!(w.submit(14, build(&mut b, r#"{"type":"server.startup","data":{}}"#)));
    drop(go_tx);
    assert!(w.flush());
    assert_eq!(w.stats().written, 9);
    assert_eq!(store.stats().unwrap().events, 9);
}

/// The environment variable that turns `crash_child` into the writing child process.
const CRASH_DB: &str = "LIVETAP_HISTORY_CRASH_DB";

/// The child side of `kill_9_loses_only_uncommitted_batches`: writes single-span events
/// that all qualify, as fast as the writer takes them, and prints each new commit point.
/// Without the environment variable it does nothing (a normal test run).
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CRASH_DB) else { return };
    let (c, k) = setup();
    let cfg = HistoryConfig {
        batch_size: 512,
        flush_interval_ms: 20,
        queue_capacity: 4096,
        ..HistoryConfig::default()
    };
    let h = History::open(Path::new(&path), &cfg, &k).unwrap();
    let mut b = EventBuilder::new(&c, &k);
    let mut last = 0;
    // Bounded so an orphaned child ends by itself; the parent kills it long before.
    for seq in 0..5_000_000u64 {
        let ev = build(
            &mut b,
            &format!(
                r#"{{"type":"delivery.attempt-start","data":{{"spanId":{},"queueId":{seq},"remoteIp":"10.0.{}.{}","domain":"d{}.example.org"}}}}"#,
                seq / 4,
                seq % 200,
                seq % 250,
                seq % 50
            ),
        );
        // Retry instead of dropping, so the stored events have no holes of their own.
        while !h.writer.submit(seq, ev.clone()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let committed = h.writer.stats().committed_next_seq;
        if committed != last {
            last = committed;
            println!("committed {committed}");
        }
    }
}

#[test]
fn kill_9_loses_only_uncommitted_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.sqlite3");
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_DB, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut reports = 0;
    let mut committed = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            committed = n.trim().parse().unwrap();
            reports += 1;
            if reports >= 5 && committed >= 20_000 {
                break;
            }
        }
    }
    assert!(committed >= 20_000, "the child stopped early at {committed}");
    // SIGKILL, mid-write: the child is submitting and committing without pause.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.integrity_check().unwrap(), vec!["ok"]);
    let s = store.stats().unwrap();
    // Everything committed before the last report is there, as a prefix without holes: each
    // batch was committed whole or not at all.
    assert!(s.events >= committed, "{} stored, {committed} committed", s.events);
    assert_eq!((s.oldest_seq, s.newest_seq), (Some(0), Some(s.events - 1)));
    // Span summaries were committed in the same transactions as their events.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let summed: i64 = conn.query_row("SELECT sum(events) FROM spans", [], |r| r.get(0)).unwrap();
    assert_eq!(summed as u64, s.events);
    assert_eq!(store.next_seq().unwrap(), s.events);
}
