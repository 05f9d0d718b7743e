//! The "Stores" seam (issue 22): a history backend that lives only in this test, an in-memory `HistoryStore`, driven through the public API by the real writer and selection.
//!
//! If anything between the writer and its store still depended on SQLite, the memory store
//! could not be plugged in here, or the events and samples it receives would differ from what
//! the selection keeps. The last test checks the other side of the seam: the store that the
//! configuration opens reports its own failures through the generic `StoreError`.

use livetap::event::{Catalogue, Event, EventBuilder, KeyRegistry, RawValue};
use livetap::query::{parse_pairs, Limits};
use livetap::store::{
    open_store, EventRecord, History, HistoryConfig, HistoryStore, MetricKind, MetricPoint, MetricQuery,
    MetricSample, Page, PruneReport, Retention, StoreError, StoreStats, StoredEvent, TraceQuery,
    TraceSummary,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A history kept in two ordered maps. It answers what the writer and the resume need, and
/// filters the traces list by queue id and type only (no keyword search, no paging).
#[derive(Default)]
struct MemoryStore {
    events: Mutex<BTreeMap<u64, Kept>>,
    metrics: Mutex<Vec<MetricPoint>>,
    batches: Mutex<usize>,
}

/// One stored event with the queue id the writer indexed it by.
struct Kept {
    event: StoredEvent,
    queue_id: Option<Box<str>>,
}

impl MemoryStore {
    fn span_summary(events: &[&Kept]) -> TraceSummary {
        let (first, last) = (&events[0].event, &events[events.len() - 1].event);
        TraceSummary {
            id: first.span_id.unwrap_or_default(),
            event_type: first.event_type.clone(),
            queue_id: events.iter().find_map(|k| k.queue_id.as_deref().map(str::to_string)),
            started_at: first.created_at,
            ended_at: last.created_at,
            events: events.len() as u64,
            first_event_id: first.id(),
            last_event_id: last.id(),
        }
    }
}

impl HistoryStore for MemoryStore {
    fn write_events(&self, batch: &[EventRecord]) -> Result<(), StoreError> {
        let mut events = self.events.lock().unwrap();
        for r in batch {
            let stored = StoredEvent {
                seq: r.seq,
                span_id: r.event.span_id,
                event_type: r.event.kind.to_string(),
                created_at: r.event.created_at,
                json: r.event.json.clone(),
            };
            events.entry(r.seq).or_insert(Kept { event: stored, queue_id: r.queue_id.clone() });
        }
        *self.batches.lock().unwrap() += 1;
        Ok(())
    }

    fn write_metrics(&self, points: &[MetricPoint]) -> Result<(), StoreError> {
        self.metrics.lock().unwrap().extend_from_slice(points);
        Ok(())
    }

    fn traces(&self, query: &TraceQuery) -> Result<Page<TraceSummary>, StoreError> {
        let events = self.events.lock().unwrap();
        let mut spans: BTreeMap<u64, Vec<&Kept>> = BTreeMap::new();
        for e in events.values() {
            if let Some(span) = e.event.span_id {
                spans.entry(span).or_default().push(e);
            }
        }
        let mut items: Vec<TraceSummary> = spans
            .values()
            .map(|evs| MemoryStore::span_summary(evs))
            .filter(|t| query.queue_id.is_none() || t.queue_id == query.queue_id)
            .filter(|t| query.event_type.is_none() || query.event_type.as_ref() == Some(&t.event_type))
            .collect();
        items.sort_by_key(|t| std::cmp::Reverse(t.first_event_id));
        Ok(Page { total: items.len() as u64, items })
    }

    fn trace(&self, span_id: u64) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.events.lock().unwrap();
        Ok(events.values().filter(|k| k.event.span_id == Some(span_id)).map(|k| k.event.clone()).collect())
    }

    fn metrics(&self, query: &MetricQuery) -> Result<Page<MetricPoint>, StoreError> {
        let items: Vec<MetricPoint> = self
            .metrics
            .lock()
            .unwrap()
            .iter()
            .filter(|p| query.metrics.is_empty() || query.metrics.iter().any(|m| m == p.name()))
            .cloned()
            .collect();
        Ok(Page { total: items.len() as u64, items })
    }

    fn events_since_seq(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.events.lock().unwrap();
        Ok(events.range(from_seq..).take(limit).map(|(_, k)| k.event.clone()).collect())
    }

    fn floor_for_newest(&self, from: u64, until: u64, n: usize) -> Result<Option<u64>, StoreError> {
        let events = self.events.lock().unwrap();
        let in_range: Vec<u64> = events.range(from..until).map(|(s, _)| *s).collect();
        if n == 0 || in_range.len() <= n {
            return Ok(None);
        }
        Ok(Some(in_range[in_range.len() - n]))
    }

    fn first_seq_at_or_after(&self, time: i64) -> Result<Option<u64>, StoreError> {
        let events = self.events.lock().unwrap();
        Ok(events.values().find(|k| k.event.created_at >= time).map(|k| k.event.seq))
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.events.lock().unwrap().keys().next_back().map_or(0, |s| s + 1))
    }

    fn prune(&self, _retention: &Retention, _now: i64) -> Result<PruneReport, StoreError> {
        Ok(PruneReport::default())
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let events = self.events.lock().unwrap();
        Ok(StoreStats {
            events: events.len() as u64,
            oldest_seq: events.keys().next().copied(),
            newest_seq: events.keys().next_back().copied(),
            samples: self.metrics.lock().unwrap().len() as u64,
            ..StoreStats::default()
        })
    }

    fn disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// Keys and catalogue as the hub sets them up.
fn setup() -> (Catalogue, KeyRegistry) {
    let c = Catalogue::embedded();
    let k = KeyRegistry::new(1024);
    c.register_keys(&k);
    (c, k)
}

fn build(b: &mut EventBuilder<'_>, json: &str) -> Arc<Event> {
    let raw = RawValue::parse_serde(json.as_bytes()).expect("test JSON");
    Arc::new(b.build(&raw, 1_790_000_000).expect("valid test event"))
}

/// A quick writer; retention by age is off because the memory store does not prune.
fn config() -> HistoryConfig {
    HistoryConfig {
        flush_interval_ms: 10,
        batch_size: 64,
        trace_retention_days: 0,
        metric_retention_days: 0,
        ..HistoryConfig::default()
    }
}

#[test]
fn the_writer_fills_a_store_that_is_not_sqlite() {
    let (c, k) = setup();
    let memory = Arc::new(MemoryStore::default());
    let h = History::start(memory.clone(), &config(), &k).expect("start on the memory store");
    let mut b = EventBuilder::new(&c, &k);
    let lines = [
        // Span 1 gets its queue id on its third event: kept whole, the first two included.
        r#"{"type":"smtp.connection-start","createdAt":"2026-11-01T10:00:00Z","data":{"spanId":1,"remoteIp":"10.0.0.5"}}"#,
        // Span 2 ends without a queue id: not kept.
        r#"{"type":"smtp.connection-start","createdAt":"2026-11-01T10:00:01Z","data":{"spanId":2,"remoteIp":"10.0.0.6"}}"#,
        r#"{"type":"smtp.mail-from","createdAt":"2026-11-01T10:00:02Z","data":{"spanId":1,"from":"alice@example.org"}}"#,
        r#"{"type":"smtp.connection-end","createdAt":"2026-11-01T10:00:03Z","data":{"spanId":2}}"#,
        r#"{"type":"queue.queue-message","createdAt":"2026-11-01T10:00:04Z","data":{"spanId":1,"queueId":100}}"#,
        r#"{"type":"smtp.connection-end","createdAt":"2026-11-01T10:00:05Z","data":{"spanId":1}}"#,
    ];
    for (seq, line) in lines.iter().enumerate() {
        assert!(h.writer.submit(seq as u64, build(&mut b, line)));
    }
    let sample = |v: f64| MetricSample {
        name: "queue.count".into(),
        kind: MetricKind::Counter,
        value: v,
        count: 0,
        sum: 0.0,
    };
    assert!(h.writer.sample_metrics(60, vec![sample(3.0)]));
    assert!(h.writer.sample_metrics(120, vec![sample(5.0)]));
    assert!(h.writer.flush());

    // What the writer wrote went into this store, through the trait.
    let stored: Vec<u64> = memory.events.lock().unwrap().keys().copied().collect();
    assert_eq!(stored, vec![0, 2, 4, 5], "span 1 whole, span 2 not at all");
    assert!(*memory.batches.lock().unwrap() >= 1);
    assert_eq!(h.writer.stats().written, 4);
    let written = memory.metrics.lock().unwrap().clone();
    let counter = |t: i64, v: u64| MetricPoint::Counter { id: "queue.count".into(), timestamp: t, value: v };
    assert_eq!(written, vec![counter(60, 3), counter(120, 2)], "increases, not totals");

    // Queries go through the same `Arc<dyn HistoryStore>` the hub and the HTTP API hold.
    let store: Arc<dyn HistoryStore> = h.store.clone();
    let page = store.traces(&TraceQuery::from_query_string("queue_id=100").unwrap()).unwrap();
    assert_eq!(page.items.len(), 1);
    let t = &page.items[0];
    assert_eq!((t.id, t.event_type.as_str(), t.events), (1, "smtp.connection-start", 4));
    assert_eq!((t.first_event_id, t.last_event_id), (1, 6), "public ids are seq + 1");
    assert_eq!(store.next_seq().unwrap(), 6, "a restarted hub would start its ring here");

    // A resume reads the stored bytes back in pages and rebuilds events the query language
    // matches, span included.
    let first = store.events_since_seq(1, 2).unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 4]);
    let rest = store.events_since_seq(first[1].seq + 1, 10).unwrap();
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
    let expr = parse_pairs("from=alice@example.org&span-id=1", &k, &Limits::default()).unwrap().expr;
    let rebuilt = first[0].to_event(&mut EventBuilder::new(&c, &k)).unwrap();
    assert!(expr.eval(&rebuilt));
    assert_eq!(rebuilt.json, first[0].json, "the stored bytes are sent unchanged");

    // A backend without a file of its own still answers the maintenance calls.
    assert_eq!(store.integrity_check().unwrap(), vec!["ok"]);
    assert_eq!(store.path(), std::path::Path::new(""));
    h.writer.shutdown();
}

#[test]
fn the_configured_backend_reports_its_errors_generically() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded backend opens and answers through the trait.
    let store = open_store(&HistoryConfig::default(), &dir.path().join("h.sqlite3")).unwrap();
    assert_eq!(store.next_seq().unwrap(), 0);
    assert!(store.path().ends_with("h.sqlite3"));
    // A database that is not livetap's is refused with the backend's own message, carried by
    // the generic error.
    let foreign = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute_batch("CREATE TABLE t (x)").unwrap();
    drop(conn);
    let err = open_store(&HistoryConfig::default(), &foreign).err().expect("a foreign database is refused");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("{} is not a livetap history database", foreign.display()));
}
