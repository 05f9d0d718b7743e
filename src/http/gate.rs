//! The ingest gate: what request bodies may hold while they are read, checked and parsed, and
//! who may hold it.
//!
//! A body arrives at the client's pace, so whatever a body holds while it is read, a slow or
//! stalled client holds for up to `body-timeout-secs`. The gate therefore never lets a body
//! hold a place that other producers need merely by being slow:
//! - **Memory is counted in bytes received, not in bodies.** Each body draws from a byte budget
//!   of `max-concurrent-ingest × max-body-bytes` as its buffer grows. A stalled body holds only
//!   what it sent; a body that cannot get bytes within `ingest-wait-ms` is answered `503`
//!   ("ingest memory in use") and gives its bytes back.
//! - **Unverified bodies have their own budget.** A signed webhook's signature covers the whole
//!   body, so the body must be read before anything proves who sent it. Such bodies draw from a
//!   second budget of the same size, which no authenticated producer uses: an unauthenticated
//!   client cannot take memory that the ingest endpoint or an authorized webhook needs.
//! - **Each source reads at most `max-ingest-bodies-per-source` bodies at once.** A source is a
//!   principal for an authenticated request (the admin token is exempt, as for its streams) and
//!   a source address (an IPv6 /64) for a webhook whose signature is not checked yet. The next
//!   body from the same source gets `429`. One party can therefore hold at most that many
//!   bodies' worth of a budget, however slowly it sends.
//! - **Parsing takes one of `max-concurrent-ingest` slots**, and only once the body is complete
//!   (and, for a signed webhook, verified): parsing runs at CPU speed and never waits for the
//!   client, so a slow client cannot hold a slot.
//!
//! Stalwart's own webhook sender sends one batch at a time per webhook, so its address never
//! needs more than one place.

use super::HttpError;
use crate::auth::ratelimit::ip_key;
use crate::hub::Hub;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Who a body is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// An authenticated principal (by name).
    Principal(String),
    /// A source address (IPv4, or the /64 of IPv6) whose request is not authenticated yet.
    Address(IpAddr),
}

impl Source {
    /// The source of a request from `ip` that nothing has authenticated yet.
    pub fn address(ip: IpAddr) -> Source {
        Source::Address(ip_key(ip))
    }
}

/// Which byte budget a body draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Bodies from authenticated producers.
    Trusted,
    /// Signed-webhook bodies whose signature is not checked yet.
    Unverified,
}

/// The shared state of the gate (one per server).
pub struct IngestGate {
    /// Bytes of authenticated bodies held (read or waiting to be parsed). Permits are bytes.
    trusted: Arc<Semaphore>,
    /// Bytes of not-yet-verified bodies held. Permits are bytes.
    unverified: Arc<Semaphore>,
    /// The size of each budget, in bytes.
    budget: usize,
    /// Bodies being parsed and published at once.
    parse: Semaphore,
    parse_slots: usize,
    /// Bodies in flight per source. Written and read under the lock by request tasks only;
    /// an entry exists only while its count is above zero, so the map holds at most one entry
    /// per body in flight.
    sources: Mutex<HashMap<Source, usize>>,
    per_source: usize,
}

/// A source's place for one body; gives it back when dropped.
pub struct SourcePlace<'a> {
    gate: &'a IngestGate,
    source: Option<Source>,
}

impl Drop for SourcePlace<'_> {
    fn drop(&mut self) {
        let Some(source) = self.source.take() else { return };
        let mut map = self.gate.sources.lock();
        if let Some(n) = map.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&source);
            }
        }
    }
}

/// A body read in full, with the budget bytes it holds until it is dropped.
pub struct ReadBody {
    /// The body.
    pub bytes: Vec<u8>,
    _held: Option<OwnedSemaphorePermit>,
}

impl IngestGate {
    /// The gate for `config`'s limits.
    pub fn new(config: &crate::Config) -> IngestGate {
        let budget =
            config.max_concurrent_ingest.saturating_mul(config.max_body_bytes).min(Semaphore::MAX_PERMITS);
        IngestGate {
            trusted: Arc::new(Semaphore::new(budget)),
            unverified: Arc::new(Semaphore::new(budget)),
            budget,
            parse: Semaphore::new(config.max_concurrent_ingest),
            parse_slots: config.max_concurrent_ingest,
            sources: Mutex::new(HashMap::new()),
            per_source: config.max_ingest_bodies_per_source,
        }
    }

    /// Takes one of `source`'s body places (`None`: an exempt source, the admin token), or
    /// refuses with `429`.
    pub fn enter(&self, hub: &Hub, source: Option<Source>) -> Result<SourcePlace<'_>, HttpError> {
        if let Some(s) = &source {
            let mut map = self.sources.lock();
            let n = map.entry(s.clone()).or_insert(0);
            if *n >= self.per_source {
                hub.ingest.limit_refusals.fetch_add(1, Ordering::Relaxed);
                let who = match s {
                    Source::Principal(name) => format!("principal `{name}`"),
                    Source::Address(_) => "this address".to_string(),
                };
                return Err(HttpError::TooMany {
                    detail: format!(
                        "{who} already sends {} ingest bodies at once (max-ingest-bodies-per-source)",
                        self.per_source
                    ),
                    retry_after: 1,
                });
            }
            *n += 1;
        }
        Ok(SourcePlace { gate: self, source })
    }

    /// Sources with a body in flight now (for tests and statistics).
    pub fn sources_in_flight(&self) -> usize {
        self.sources.lock().len()
    }

    /// Waits up to `ingest-wait-ms` for one of the parse slots. Refused with `503` when all
    /// stay busy, which only bodies being parsed or waiting for ring space can cause.
    pub async fn parse_slot(&self, hub: &Hub) -> Result<SemaphorePermit<'_>, HttpError> {
        let wait = Duration::from_millis(hub.current().ingest_wait_ms);
        match tokio::time::timeout(wait, self.parse.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                hub.ingest.refused_batches.fetch_add(1, Ordering::Relaxed);
                Err(HttpError::IngestBusy(format!(
                    "all {} ingest parse slots stayed busy for {} ms (max-concurrent-ingest)",
                    self.parse_slots, hub.config.ingest_wait_ms
                )))
            }
        }
    }

    /// Reads a whole body under `max-body-bytes` and `body-timeout-secs`, drawing its memory
    /// from `budget` as it arrives.
    pub async fn read<B>(
        &self,
        hub: &Hub,
        body: B,
        content_length: Option<u64>,
        budget: Budget,
    ) -> Result<ReadBody, HttpError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let limit = hub.current().max_body_bytes;
        if content_length.is_some_and(|n| n > limit as u64) {
            hub.ingest.limit_refusals.fetch_add(1, Ordering::Relaxed);
            return Err(HttpError::PayloadTooLarge(limit));
        }
        let expected = content_length.map_or(limit, |n| n as usize);
        let pool = match budget {
            Budget::Trusted => &self.trusted,
            Budget::Unverified => &self.unverified,
        };
        let secs = hub.current().body_timeout_secs;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let wait = Duration::from_millis(hub.current().ingest_wait_ms);
        let mut body = body;
        let mut buf: Vec<u8> = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut held_bytes = 0usize;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    hub.ingest.request_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(HttpError::Timeout(secs));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(HttpError::Io(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            let need = buf.len() + data.len();
            if need > limit {
                hub.ingest.limit_refusals.fetch_add(1, Ordering::Relaxed);
                return Err(HttpError::PayloadTooLarge(limit));
            }
            if need > held_bytes {
                // Grow by doubling (amortised copies), but never past what the body announced
                // or the cap, and draw the growth from the budget before allocating it.
                let target = need.max(held_bytes.saturating_mul(2).min(expected).min(limit));
                let more = target - held_bytes;
                let until = deadline.min(tokio::time::Instant::now() + wait);
                let permit = match tokio::time::timeout_at(until, acquire_bytes(pool, more)).await {
                    Ok(Some(p)) => p,
                    _ => {
                        hub.ingest.refused_batches.fetch_add(1, Ordering::Relaxed);
                        return Err(HttpError::IngestBusy(format!(
                            "request bodies being read hold the whole ingest memory budget ({} bytes) \
                             for {} ms",
                            self.budget, hub.config.ingest_wait_ms
                        )));
                    }
                };
                match held.as_mut() {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
                held_bytes = target;
                buf.reserve_exact(target - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(ReadBody { bytes: buf, _held: held })
    }
}

/// Budget bytes held by a body streamed piece by piece (Stalwart's webhook, `webhook.rs`),
/// given back when dropped.
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
}

impl IngestGate {
    /// Takes `bytes` of `budget` for a body that is parsed as it arrives and so never holds
    /// more than that, whatever its length. Waits up to `wait` for them, then answers `503`.
    pub async fn hold(
        &self,
        hub: &Hub,
        budget: Budget,
        bytes: usize,
        wait: Duration,
    ) -> Result<Held, HttpError> {
        let pool = match budget {
            Budget::Trusted => &self.trusted,
            Budget::Unverified => &self.unverified,
        };
        match tokio::time::timeout(wait, acquire_bytes(pool, bytes.min(self.budget))).await {
            Ok(Some(p)) => Ok(Held { _permit: Some(p) }),
            _ => {
                hub.ingest.refused_batches.fetch_add(1, Ordering::Relaxed);
                Err(HttpError::IngestBusy(format!(
                    "request bodies being read hold the whole ingest memory budget ({} bytes) for {} s",
                    self.budget,
                    wait.as_secs()
                )))
            }
        }
    }
}

/// `n` permits (bytes) from `pool`, taken in pieces a semaphore accepts.
async fn acquire_bytes(pool: &Arc<Semaphore>, n: usize) -> Option<OwnedSemaphorePermit> {
    let mut out: Option<OwnedSemaphorePermit> = None;
    let mut left = n;
    while left > 0 {
        let take = left.min(u32::MAX as usize) as u32;
        let p = pool.clone().acquire_many_owned(take).await.ok()?;
        match out.as_mut() {
            Some(o) => o.merge(p),
            None => out = Some(p),
        }
        left -= take as usize;
    }
    match out {
        Some(p) => Some(p),
        None => pool.clone().acquire_many_owned(0).await.ok(),
    }
}

/// Gives the calling thread's free allocator pages back to the system after a large body: a
/// refused body of tiny events builds hundreds of megabytes of short-lived events, and without
/// this the I/O thread's heap would keep them resident until that thread allocated as much
/// again.
pub fn give_back_after(bytes: usize) {
    if bytes >= LARGE_BODY {
        // SAFETY: `mi_collect` only walks and trims the calling thread's own heap; it takes no
        // pointers and is safe to call at any time.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

/// Bodies at least this large give their memory back when they are done ([`give_back_after`]).
const LARGE_BODY: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn hub(tweak: impl FnOnce(&mut Config)) -> Arc<Hub> {
        let mut c = Config { matcher_threads: 1, ..Config::default() };
        tweak(&mut c);
        Hub::start(c, "t".repeat(32)).unwrap()
    }

    #[tokio::test]
    async fn a_source_holds_at_most_its_places_and_gets_them_back() {
        let hub = hub(|c| c.max_ingest_bodies_per_source = 2);
        let gate = IngestGate::new(&hub.config);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let a = gate.enter(&hub, Some(Source::address(ip))).unwrap();
        // Another host of the same /64 is the same source.
        let b = gate.enter(&hub, Some(Source::address("2001:db8::2".parse().unwrap()))).unwrap();
        assert!(matches!(gate.enter(&hub, Some(Source::address(ip))), Err(HttpError::TooMany { .. })));
        // Other sources and exempt requests are not affected.
        let _c = gate.enter(&hub, Some(Source::Principal("p".into()))).unwrap();
        let _d = gate.enter(&hub, None).unwrap();
        drop(a);
        let _e = gate.enter(&hub, Some(Source::address(ip))).unwrap();
        drop((b, _e, _c));
        assert_eq!(gate.sources_in_flight(), 0);
    }

    #[tokio::test]
    async fn bodies_draw_bytes_as_they_arrive() {
        let hub = hub(|c| {
            c.max_concurrent_ingest = 1;
            c.max_body_bytes = 4096;
            c.ingest_wait_ms = 50;
        });
        let gate = IngestGate::new(&hub.config);
        let full = |n: usize| http_body_util::Full::new(Bytes::from(vec![b'x'; n]));
        // A body announcing the whole budget but sending little holds only what it sent.
        let small = gate.read(&hub, full(100), Some(100), Budget::Trusted).await.unwrap();
        assert_eq!(small.bytes.len(), 100);
        assert_eq!(gate.trusted.available_permits(), 4096 - 100);
        // The rest of the budget is available; more than that waits, then 503.
        let big = gate.read(&hub, full(3996), None, Budget::Trusted).await.unwrap();
        assert_eq!(gate.trusted.available_permits(), 0);
        let refused = gate.read(&hub, full(10), None, Budget::Trusted).await;
        assert!(matches!(refused, Err(HttpError::IngestBusy(_))));
        // The unverified budget is separate.
        assert!(gate.read(&hub, full(10), None, Budget::Unverified).await.is_ok());
        drop((small, big));
        assert_eq!(gate.trusted.available_permits(), 4096);
        // Over the cap: 413, announced or not.
        assert!(matches!(
            gate.read(&hub, full(10), Some(5000), Budget::Trusted).await,
            Err(HttpError::PayloadTooLarge(4096))
        ));
        assert!(matches!(
            gate.read(&hub, full(5000), None, Budget::Trusted).await,
            Err(HttpError::PayloadTooLarge(4096))
        ));
        assert_eq!(gate.trusted.available_permits(), 4096);
        hub.shutdown().await;
    }
}
