//! The worst-case memory formula: how much memory the configured limits allow livetap to use,
//! whatever its clients do. SECURITY.md documents the same terms; the bad-input tests check the
//! process against [`MemoryBound::total`].
//!
//! Every term is a product of configured caps and a per-item size. The per-item sizes are
//! upper estimates of the data structures (a queued event handle, a connection's buffers),
//! not measurements; the event size is the caller's, since it depends on what producers send
//! (an event holds its JSON, its key values and its search text: about three times its JSON).

use super::Config;

/// Base memory: code, the catalogue, the runtime and thread stacks, the live metrics registry.
pub const BASE: u64 = 96 << 20;
/// Per ring slot beyond the event itself (the slot, its stamp, the `Arc`).
pub const RING_SLOT: u64 = 64;
/// Per queued item (a sequence number and a `Bytes` handle), doubled for `VecDeque` growth.
pub const QUEUE_ITEM: u64 = 80;
/// Per live stream: the subscriber, its compiled plan and its share of the index (a query of
/// `max-query-terms` terms), its SSE body and frame buffers.
pub const STREAM: u64 = 64 << 10;
/// Per connection beyond its buffers: task, hyper state, socket.
pub const CONN_FIXED: u64 = 16 << 10;
/// Per TLS connection: rustls record buffers.
pub const TLS_CONN: u64 = 48 << 10;
/// HTTP/2: most concurrent streams per connection.
pub const H2_STREAMS: u32 = 16;
/// HTTP/2: the receive window of a connection (request bytes a client may send unread).
pub const H2_CONN_WINDOW: u32 = 256 << 10;
/// HTTP/2: the receive window of a stream.
pub const H2_STREAM_WINDOW: u32 = 64 << 10;
/// HTTP/2: bytes buffered for sending per stream. The data are mostly handles to event JSON
/// counted in the ring and queue terms; only frame heads are copies.
pub const H2_SEND_BUF: usize = 64 << 10;
/// Per source address tracked by the failed-authentication limiter.
pub const FAILURE_ENTRY: u64 = 64;
/// Per event built from an ingest body and not yet published, beyond three times its share of
/// the body: the `Event` with its inline field list, its `Arc`, its handle in the batch, and
/// what the builder adds to every event (text, details, time, level). A body of 13-byte events
/// measured about 450 bytes per event.
pub const BUILT_EVENT: u64 = 1024;
/// The forms other wire dialects may add to an event, in multiples of its JSON: Stalwart
/// v0.16's array and object forms (about twice the JSON each) and the classic rewrite of an
/// event outside the classic contract (about the JSON).
pub const DIALECT_FORMS: u64 = 5;
/// The table of those forms and their handles, once any is asked for.
pub const DIALECT_TABLE: u64 = 8 * 40 + 64;
/// Per fingerprint kept for recognising webhook resends (`ingest::dedupe`): the key, the
/// credit, and the hash map's share, doubled for its growth.
pub const DEDUPE_ENTRY: u64 = 64;
/// The shortest input one event can come from: `{"type":"a"}` and a newline.
pub const MIN_EVENT_INPUT: u64 = 13;
/// Tape bytes per input byte at worst: a 16-byte token per two input bytes (`0,`), doubled for
/// the vector's growth.
pub const TAPE_PER_BYTE: u64 = 16;

/// The terms of the worst case, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    /// [`BASE`].
    pub base: u64,
    /// `ring-capacity × (event + slot)`.
    pub ring: u64,
    /// `replay-bytes`: the replay log accounts each event's JSON, match text and bookkeeping.
    pub replay: u64,
    /// Live streams (trace and metrics): `2 × max-subscribers × (subscriber-queue × item + stream)`.
    pub streams: u64,
    /// Event JSON held only by subscriber queues after the ring moved on:
    /// `max-subscribers × subscriber-queue × 2 × event JSON` (a queue holds its stream's
    /// dialect's form, up to twice the classic JSON).
    pub queued_json: u64,
    /// `max-connections × per-connection buffers` (the larger of HTTP/1.1 and HTTP/2).
    pub connections: u64,
    /// Ingest bodies (`http::gate`): two byte budgets of `max-concurrent-ingest ×
    /// max-body-bytes` being read (trusted and not yet verified), doubled for a buffer's growth;
    /// plus, per parse slot (`max-concurrent-ingest`), the tape over the longest document it
    /// parses whole (`8 × max-event-bytes`, larger ones are split), the events' JSON and text
    /// (three times the body) and at most a ring's worth of built events (a body with more is
    /// refused as soon as it holds that many).
    pub ingest: u64,
    /// Concurrent password verifications × the largest Argon2 memory cost configured.
    pub passwords: u64,
    /// The failed-authentication table.
    pub limiter: u64,
    /// Webhook resend credits: `webhook-dedupe-entries × DEDUPE_ENTRY`.
    pub dedupe: u64,
}

impl MemoryBound {
    /// The sum of the terms.
    pub fn total(&self) -> u64 {
        self.base
            + self.ring
            + self.replay
            + self.streams
            + self.queued_json
            + self.connections
            + self.ingest
            + self.passwords
            + self.limiter
            + self.dedupe
    }
}

impl Config {
    /// The read buffer hyper may grow to for one HTTP/1.1 connection: room for the largest
    /// allowed request head, at least 64 KiB.
    pub fn http1_buffer(&self) -> usize {
        (self.max_header_bytes + self.max_url_bytes + 8192).max(64 << 10)
    }

    /// The ingest term of [`Config::memory_bound`]: the same for any event size, since the
    /// worst case is many tiny events.
    pub fn ingest_bound(&self) -> u64 {
        let slots = self.max_concurrent_ingest as u64;
        let body = self.max_body_bytes as u64;
        let reading = 2 * slots * body * 2;
        let whole = (crate::ingest::LARGE_FACTOR as u64 * self.max_event_bytes as u64).min(body);
        let built = (self.ring_capacity.max(2).next_power_of_two() as u64).min(body / MIN_EVENT_INPUT);
        reading + slots * (TAPE_PER_BYTE * whole + 3 * body + built * BUILT_EVENT)
    }

    /// The worst case for events whose JSON is `event_json` bytes.
    pub fn memory_bound(&self, event_json: u64) -> MemoryBound {
        // Its JSON, match view and bookkeeping, plus the forms the wire dialects may add to it
        // (`event::dialect`): v0.16's array and object forms (about twice the JSON each) and
        // the classic rewrite (about the JSON), with their table.
        let event = 3 * event_json + 512 + DIALECT_FORMS * event_json + DIALECT_TABLE;
        let ring_slots = self.ring_capacity.max(2).next_power_of_two() as u64;
        let subs = self.max_subscribers as u64;
        let queue = self.subscriber_queue as u64;
        let head = (self.max_header_bytes + self.max_url_bytes) as u64;
        let h1 = 2 * self.http1_buffer() as u64;
        // A stream's request head is held while it is decoded and routed; its send buffer holds
        // handles to event JSON (counted above) and frame heads, so 8 KiB of it is copies.
        let h2 = H2_CONN_WINDOW as u64 + H2_STREAMS as u64 * (head + (8 << 10));
        let tls = if self.tls.is_some() { TLS_CONN } else { 0 };
        let m_cost = self
            .principal
            .iter()
            .filter_map(|p| p.password_hash.as_deref())
            .filter_map(|h| argon2::password_hash::PasswordHash::new(h).ok())
            .filter_map(|h| argon2::Params::try_from(&h).ok())
            .map(|p| p.m_cost() as u64 * 1024)
            .max()
            .unwrap_or(0);
        MemoryBound {
            base: BASE,
            ring: ring_slots * (event + RING_SLOT),
            replay: self.replay_bytes as u64,
            streams: 2 * subs * (queue * QUEUE_ITEM + STREAM),
            // A queue holds its stream's form: v0.16's is about twice the classic JSON.
            queued_json: subs * queue * 2 * event_json,
            connections: self.max_connections as u64 * (CONN_FIXED + tls + h1.max(h2)),
            ingest: self.ingest_bound(),
            passwords: crate::auth::password::MAX_CONCURRENT_VERIFICATIONS as u64 * m_cost,
            limiter: crate::auth::ratelimit::MAX_TRACKED_SOURCES as u64 * FAILURE_ENTRY,
            dedupe: self.webhook_dedupe_entries as u64 * DEDUPE_ENTRY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_follow_the_config() {
        let c = Config::default();
        let m = c.memory_bound(300);
        assert_eq!(m.ring, 65_536 * (3 * 300 + 512 + DIALECT_FORMS * 300 + DIALECT_TABLE + RING_SLOT));
        // Reading: 2 budgets of 8 × 8 MiB, doubled; per slot: a 512 KiB tape document, three
        // times the body, 65,536 built events.
        assert_eq!(
            m.ingest,
            4 * 8 * (8 << 20) + 8 * (16 * (512 << 10) + 3 * (8 << 20) + 65_536 * BUILT_EVENT)
        );
        assert_eq!(m.passwords, 0);
        assert!(m.total() > m.ring + m.connections);
        let small = Config { max_connections: 100, max_subscribers: 10, ..Config::default() };
        assert!(small.memory_bound(300).total() < m.total());
    }
}
