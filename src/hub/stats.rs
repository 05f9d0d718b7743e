//! livetap's own operating counters (ingest, rejections, backpressure), read by `/api/livetap/stats`.
//!
//! Updated once per ingest batch, never per event per subscriber. The same snapshot also feeds
//! livetap's own samples in the live metrics (`livetap.*`, see `hub::own`).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the ingest side.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Events accepted into the ring.
    pub accepted: AtomicU64,
    /// Events rejected as malformed.
    pub rejected: AtomicU64,
    /// Batches refused because the ring was full (HTTP 503).
    pub refused_batches: AtomicU64,
    /// Requests refused for authentication (bad or missing credentials, tokens, signatures).
    pub auth_failures: AtomicU64,
    /// Requests refused because their source address had too many failed authentications.
    pub auth_locked: AtomicU64,
    /// Ingest requests refused for their principal's ingest rate (429).
    pub rate_limited: AtomicU64,
    /// Requests refused for a size cap (URL, header fields, body).
    pub limit_refusals: AtomicU64,
    /// Ingest bodies that did not arrive within `body-timeout-secs`.
    pub request_timeouts: AtomicU64,
    /// Connections dropped because a write stayed blocked for `write-timeout-secs`.
    pub write_timeouts: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections refused by `max-connections` or `max-connections-per-ip`.
    pub connections_refused: AtomicU64,
    /// Connections closed after `header-timeout-secs` with no request in flight (HTTP/1
    /// keep-alive and HTTP/2 alike).
    pub idle_closed: AtomicU64,
    /// Syslog datagrams dropped because their listener's parse queue was full
    /// (`ingest::syslog`).
    pub syslog_dropped: AtomicU64,
}

impl IngestStats {
    /// Adds to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A point-in-time view of the hub, serialised as the stats endpoint's JSON.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Events accepted into the ring since start.
    pub accepted: u64,
    /// Events rejected as malformed since start.
    pub rejected: u64,
    /// Ingest batches refused for backpressure.
    pub refused_batches: u64,
    /// Authentication failures.
    pub auth_failures: u64,
    /// Requests refused while their source address was locked out for failed authentications.
    pub auth_locked: u64,
    /// Ingest requests refused for their principal's rate (429).
    pub rate_limited: u64,
    /// Requests refused for a size cap (URL, header fields, body).
    pub limit_refusals: u64,
    /// Ingest bodies not received within the body timeout.
    pub request_timeouts: u64,
    /// Connections dropped for a blocked write.
    pub write_timeouts: u64,
    /// Open connections.
    pub connections: u64,
    /// Connections refused by the connection caps.
    pub connections_refused: u64,
    /// Connections closed for being idle (no request in flight for `header-timeout-secs`).
    pub idle_closed: u64,
    /// Syslog datagrams dropped for a full parse queue.
    pub syslog_dropped: u64,
    /// Events matched by every matcher thread (the ring's tail).
    pub matched: u64,
    /// Shard-events matched by the producer that published them while the matcher threads
    /// slept (each thread's share counts once per shard; see `matcher::Helper`).
    pub matched_inline: u64,
    /// Events queued to subscribers (summed over subscribers).
    pub deliveries: u64,
    /// Events dropped for lagging subscribers.
    pub dropped: u64,
    /// Live subscribers.
    pub subscribers: usize,
    /// Open live metrics streams (`/api/telemetry/metrics/live`).
    pub metric_streams: usize,
    /// Ring capacity in events.
    pub ring_capacity: u64,
    /// Events in the ring not yet read by every matcher thread.
    pub ring_occupancy: u64,
    /// Next sequence number to be assigned.
    pub ring_head: u64,
    /// Span-follow entries held (summed over threads).
    pub followed_spans: u64,
    /// What the compiled subscription indexes hold, summed over matcher shards; `fallback`
    /// counts the subscribers evaluated on every event because nothing in their query could
    /// be indexed.
    pub index: crate::matcher::index::IndexStats,
    /// Shard index rebuilds since start (one per changed shard per batch of connects).
    pub index_rebuilds: u64,
    /// Duration of the longest batch of index rebuilds, in microseconds.
    pub index_rebuild_max_micros: u64,
    /// Per live subscriber: id, delivered, dropped, queued.
    pub subscriber_detail: Vec<SubscriberStats>,
    /// The history writer's counters (written, dropped for a full queue, pruned, ...), when
    /// history is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::store::WriterStats>,
    /// Per tap (`crate::tap`: the history writer, webhooks, sinks): its query, events matched,
    /// dropped for a full queue, queued, delivered.
    pub taps: Vec<crate::tap::TapStats>,
}

/// Counters of one subscriber.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Subscriber id.
    pub id: u64,
    /// Events queued to it.
    pub delivered: u64,
    /// Events dropped because it lagged.
    pub dropped: u64,
    /// Events waiting in its queue.
    pub queued: usize,
}
