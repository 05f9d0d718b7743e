//! `POST /api/telemetry/webhook`: Stalwart's webhook sender, taken as a stream of events so
//! that no batch it can send is too large, and its resends are recognised.
//!
//! Why a stream: the sender puts everything pending into one request, without a size cap, and
//! after any refusal or timeout resends the whole batch merged with everything newer, with no
//! backoff (`../shared/spec/stalwart-v016.md` §5). Any fixed body limit near the usual sizes
//! would therefore turn a short outage into a permanent one: each refusal makes the next batch
//! larger. So the body is cut into events as it arrives ([`BatchSplitter`]), each event is
//! parsed strictly, and they are published in slices of at most [`SLICE_EVENTS`] events or
//! [`SLICE_BYTES`] of JSON. A body holds the same memory whatever its length (see
//! [`stream_hold`]); its only limit is `max-webhook-bytes` (256 MiB by default), which bounds
//! how long one request may keep a place.
//!
//! A signed body (`webhook-key` set) cannot be published before its signature is checked, and
//! the signature covers the whole body. Such a body is therefore written to an unlinked spool
//! file while its HMAC is computed, and read back and parsed once it checks: memory stays
//! bounded, the disk holds the body for the duration of the request, and nothing unverified is
//! ever published. A body whose producer authenticated with a header is parsed as it arrives.
//!
//! When the ring stays full for `ingest-wait-ms`, the request ends with `503` after the slices
//! already published; that is the only `503` the webhook answers besides shutdown and an
//! ingest memory budget full for `body-timeout-secs`. What was published, and every event of a
//! request the sender may think failed, is remembered by content ([`Dedupe`]), so the sender's
//! resend publishes only the rest.

use super::ingest::{check_rate, principal_source, IngestAnswer};
use super::{bump, gate, ConnInfo, Ctx, HttpError, LiveBody, RequestBody};
use crate::auth::{Principal, SignatureCheck};
use crate::event::encode::now_secs;
use crate::event::{BuildError, EventBuilder, Tape};
use crate::hub::{Hub, PublishError};
use crate::ingest::dedupe::Attempt;
use crate::ingest::stream_split::{BatchSplitter, Piece};
use crate::ingest::{ParsedBatch, LARGE_FACTOR};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Body;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::time::Instant;

/// Most events published at once from a webhook body.
pub const SLICE_EVENTS: usize = 1024;
/// Most event JSON bytes built before a slice is published.
pub const SLICE_BYTES: usize = 1 << 20;
/// Bytes read back from a spool file at a time.
const SPOOL_CHUNK: usize = 256 << 10;
/// Body bytes cut into events before the pending slice is checked: a piece of tiny events
/// builds at most about 1,300 of them (13 bytes each) before a slice can go out, whatever the
/// size of the frame or spool chunk it came in.
const FEED_PIECE: usize = 16 << 10;
/// The memory a signed body holds while it is spooled and its signature computed: one frame
/// in flight to the file. The rest of [`stream_hold`] is drawn, from the trusted budget, only
/// once the signature checks, so idle unauthenticated bodies hold next to nothing.
const SPOOL_HOLD: usize = 256 << 10;

/// The memory one streamed webhook body holds at most, drawn from the ingest gate's budget for
/// the whole request: the carried part of one element (up to `LARGE_FACTOR × max-event-bytes`),
/// a tape over it (16 bytes per two input bytes), a slice of built events (their JSON, match
/// text and handles), a read buffer, and the fingerprints the request remembers.
pub fn stream_hold(config: &crate::Config) -> usize {
    let element = LARGE_FACTOR * config.max_event_bytes;
    let seen = 8 * crate::ingest::dedupe::MAX_SEEN_PER_REQUEST;
    element + 8 * element + 3 * SLICE_BYTES + SLICE_EVENTS * 1024 + SPOOL_CHUNK + seen
}

/// One webhook request's progress.
struct Run<'a> {
    hub: &'a Hub,
    principal: Option<Arc<Principal>>,
    splitter: BatchSplitter,
    builder: EventBuilder<'a>,
    tape: Tape,
    /// Events built and not yet published, and every rejection of the body so far.
    pending: ParsedBatch,
    /// JSON bytes of the pending events.
    pending_bytes: usize,
    fps: Vec<u64>,
    attempt: Attempt<'a>,
    accepted: usize,
    first_id: Option<u64>,
    last_id: Option<u64>,
    /// Body bytes received.
    read: usize,
    /// The ingest budget the body holds while it is parsed (a signed body takes it once its
    /// signature checks).
    held: Option<gate::Held>,
    limit: usize,
    now: i64,
}

impl<'a> Run<'a> {
    /// Cuts `chunk` into events and builds them; a structural error ends the body.
    fn take(&mut self, chunk: &[u8]) -> Result<(), HttpError> {
        let Run { splitter, tape, builder, pending, now, .. } = self;
        let before = pending.events.len();
        let long = builder.max_bytes().saturating_mul(LARGE_FACTOR);
        let r = splitter.feed(chunk, |piece| match piece {
            Piece::Element { index, bytes } => match tape.parse(bytes) {
                Ok(raw) => pending.push_built(raw, index + 1, builder, *now),
                Err(e) => pending.reject_with(index + 1, || BuildError::Json(e).to_string()),
            },
            Piece::TooLong { index } => pending.reject_with(index + 1, || {
                format!("an event longer than {long} bytes ({LARGE_FACTOR} × max-event-bytes)")
            }),
        });
        self.pending_bytes += self.pending.events[before..].iter().map(|e| e.json.len()).sum::<usize>();
        r.map_err(|e| HttpError::BadBody(e.to_string()))
    }

    /// Publishes the pending events once a slice is full (or at the end of the body, `all`),
    /// leaving out the sender's resends.
    async fn flush(&mut self, all: bool) -> Result<(), HttpError> {
        // A quarter of the ring at most, as for the socket (`Hub::publish_stream`): a slice fits
        // while matchers still hold the rest of the ring.
        let most = SLICE_EVENTS.min((self.hub.ring.capacity() / 4).max(1) as usize);
        if !all && self.pending.events.len() < most && self.pending_bytes < SLICE_BYTES {
            return Ok(());
        }
        if self.pending.events.len() > most {
            // The last slice of a body (or one chunk's events) can exceed it: publish in parts.
            return Box::pin(self.flush_parts(most)).await;
        }
        self.pending_bytes = 0;
        self.attempt.filter(&mut self.pending.events, &mut self.fps);
        let n = self.pending.events.len();
        if n == 0 {
            return Ok(());
        }
        if let Some(limiter) = self.principal.as_ref().and_then(|p| p.ingest_rate.as_ref()) {
            let _ = limiter.take(n as u64);
        }
        let wait = Duration::from_millis(self.hub.current().ingest_wait_ms);
        match self.hub.publish(&mut self.pending.events, Some(wait)).await {
            Ok(first) => {
                self.first_id.get_or_insert(first + 1);
                self.last_id = Some(first + n as u64);
                self.accepted += n;
                self.attempt.published(&self.fps, now_secs());
                Ok(())
            }
            Err(e) => {
                // Not published: the sender sends them again, and they are new then.
                self.pending.events.clear();
                Err(HttpError::Busy(e))
            }
        }
    }

    /// Cuts `data` into events in pieces of [`FEED_PIECE`] bytes, publishing each full slice
    /// before the next piece is cut.
    async fn feed(&mut self, data: &[u8]) -> Result<(), HttpError> {
        for piece in data.chunks(FEED_PIECE) {
            self.take(piece)?;
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Publishes the pending events in slices of at most `most`.
    async fn flush_parts(&mut self, most: usize) -> Result<(), HttpError> {
        let mut rest = std::mem::take(&mut self.pending.events);
        while !rest.is_empty() {
            self.pending.events.extend(rest.drain(..most.min(rest.len())));
            self.flush(true).await?;
        }
        Ok(())
    }

    /// The next frame of data of the body, or `None` at its end. Each frame must come within
    /// `body-timeout-secs` of the previous one, and the whole body by `whole` (ten times that
    /// from the start: a 256 MiB body at 1 MB/s takes a little over four minutes).
    async fn next_frame<B>(&mut self, body: &mut B, whole: Instant) -> Result<Option<Bytes>, HttpError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let secs = self.hub.current().body_timeout_secs;
        loop {
            let until = whole.min(Instant::now() + Duration::from_secs(secs));
            let frame = match tokio::time::timeout_at(until, body.frame()).await {
                Err(_) => {
                    bump(&self.hub.ingest.request_timeouts);
                    return Err(HttpError::Timeout(secs));
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(HttpError::Io(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            self.read += data.len();
            return Ok(Some(data));
        }
    }

    /// When the whole body must have arrived.
    fn whole_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.hub.current().body_timeout_secs) * 10
    }

    /// A body whose producer is authenticated: parsed and published as it arrives.
    async fn stream<B>(&mut self, mut body: B) -> Result<(), HttpError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let whole = self.whole_deadline();
        let result = async {
            while let Some(data) = self.next_frame(&mut body, whole).await? {
                let room = self.limit - (self.read - data.len()).min(self.limit);
                if data.len() > room {
                    // Past `max-webhook-bytes`: what came before the limit is published (see
                    // `webhook`), and the answer is 413.
                    self.feed(&data[..room]).await?;
                    bump(&self.hub.ingest.limit_refusals);
                    return Err(HttpError::PayloadTooLarge(self.limit));
                }
                self.feed(&data).await?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            self.drain(&mut body).await;
        }
        result
    }

    /// Reads and drops what is left of a body that ended early (the ring stayed full, or the
    /// limit was passed), for up to two seconds: closing with unread bytes would make the
    /// kernel reset the connection, and the sender would lose the answer that says how much was
    /// kept.
    async fn drain<B>(&mut self, body: &mut B)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let until = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, body.frame()).await {
            if let Ok(data) = frame.into_data() {
                self.read += data.len();
            }
        }
    }

    /// A signed body: spooled while its signature is computed, then parsed from the spool.
    ///
    /// A body longer than `max-webhook-bytes` is still read and signed whole (the signature
    /// covers all of it), but only its first `max-webhook-bytes` are spooled and published,
    /// and the answer is 413: refusing it unread would refuse every resend of a batch that grew
    /// past the limit, for ever.
    async fn spooled<B>(
        &mut self,
        ctx: &Ctx,
        mut body: B,
        key: &str,
        signature: Option<&[u8]>,
    ) -> Result<(), HttpError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let dir = self.hub.config.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        let shown = dir.display().to_string();
        let file = tokio::task::spawn_blocking(move || spool_file(&dir))
            .await
            .map_err(|e| HttpError::Internal(e.to_string()))?
            .map_err(|e| {
                HttpError::Internal(format!("cannot create a webhook spool file in {shown}: {e}"))
            })?;
        let mut file = tokio::fs::File::from_std(file);
        let io = |e: std::io::Error| HttpError::Internal(format!("webhook spool file in {shown}: {e}"));
        let mut check = SignatureCheck::new(key)?;
        let whole = self.whole_deadline();
        // Written as it comes, so the memory held is a frame, not the body.
        let mut spooled = 0usize;
        while let Some(data) = self.next_frame(&mut body, whole).await? {
            check.update(&data);
            let keep = data.len().min(self.limit - spooled);
            if keep > 0 {
                file.write_all(&data[..keep]).await.map_err(io)?;
                spooled += keep;
            }
        }
        check.verify(signature)?;
        // Verified: the body is a producer's now, and its parsing memory comes from the trusted
        // budget; the unverified hold goes back first.
        self.held = None;
        let wait = Duration::from_secs(self.hub.current().body_timeout_secs);
        self.held =
            Some(ctx.gate.hold(self.hub, gate::Budget::Trusted, stream_hold(&self.hub.config), wait).await?);
        file.flush().await.map_err(io)?;
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        let mut buf = vec![0u8; SPOOL_CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            self.feed(&buf[..n]).await?;
        }
        if self.read > self.limit {
            bump(&self.hub.ingest.limit_refusals);
            return Err(HttpError::PayloadTooLarge(self.limit));
        }
        Ok(())
    }

    /// The end of the body: it must end where a document may, and the last slice goes out.
    async fn end(&mut self) -> Result<(), HttpError> {
        let done = self.splitter.finish().map_err(|e| HttpError::BadBody(e.to_string()));
        // Events before a structural error stand, as lines before a bad NDJSON line do.
        self.flush(true).await?;
        done
    }
}

/// A new spool file in `dir`, unlinked at once: its space goes back when the request drops the
/// handle, even if the process dies, and no other process can open it by name.
fn spool_file(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| std::io::Error::other(e.to_string()))?;
    let path = dir.join(format!(".livetap-webhook-{:016x}.spool", u64::from_le_bytes(rnd)));
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// `POST /api/telemetry/webhook`. With `webhook-key` set, the signature authenticates
/// Stalwart (and `principal` is `None`); without one, the caller was authorized for `ingest`.
pub(super) async fn webhook(
    ctx: &Ctx,
    conn: &ConnInfo,
    req: Request<RequestBody>,
    principal: Option<Arc<Principal>>,
) -> Result<Response<LiveBody>, HttpError> {
    // From the request's arrival: the sender's timeout runs from there, including any wait
    // for the ingest budget below.
    let started = Instant::now();
    let hub = &ctx.hub;
    let ip = conn.peer.ip();
    if principal.is_none() {
        super::check_lockout(ctx, ip)?;
    }
    check_rate(ctx, principal.as_deref())?;
    if !hub.is_accepting() {
        return Err(HttpError::Busy(PublishError::ShuttingDown));
    }
    let key = hub.current().webhook_key.clone();
    // Until its signature checks, a signed body is counted against its address and draws from
    // the budget no authenticated producer uses (`gate`).
    let (source, budget) = match key {
        Some(_) => (Some(gate::Source::address(ip)), gate::Budget::Unverified),
        None => (principal_source(principal.as_deref()), gate::Budget::Trusted),
    };
    let _place = ctx.gate.enter(hub, source)?;
    let limit = hub.current().max_webhook_bytes;
    // No refusal on the announced length: Stalwart always announces it, and a batch that grew
    // past the limit would then be refused unread for ever. The body is read, and what comes
    // past the limit is left out (`Run::stream`, `Run::spooled`).
    // A full budget is waited for as long as a body may take to arrive: a 503 would only make
    // the sender resend a larger batch at once. A signed body holds a frame's worth until its
    // signature checks.
    let body_wait = Duration::from_secs(hub.current().body_timeout_secs);
    let first_hold = if key.is_some() { SPOOL_HOLD } else { stream_hold(&hub.config) };
    let held = Some(ctx.gate.hold(hub, budget, first_hold, body_wait).await?);
    let signature = req.headers().get("x-signature").map(|v| v.as_bytes().to_vec());
    let now = now_secs();
    ctx.dedupe.maybe_expire(now);
    let who = match &principal {
        Some(p) => format!("principal {}", p.name),
        None => format!("address {}", crate::auth::ratelimit::ip_key(ip)),
    };
    let mut run = Run {
        hub,
        principal: principal.clone(),
        splitter: BatchSplitter::new(hub.config.max_event_bytes.saturating_mul(LARGE_FACTOR)),
        builder: hub.builder(),
        tape: Tape::new(),
        pending: ParsedBatch::default(),
        pending_bytes: 0,
        fps: Vec::with_capacity(SLICE_EVENTS),
        attempt: ctx.dedupe.begin(who),
        accepted: 0,
        first_id: None,
        last_id: None,
        read: 0,
        held,
        limit,
        now,
    };
    let body = req.into_body();
    let mut result = match &key {
        None => run.stream(body).await,
        Some(k) => run.spooled(ctx, body, k, signature.as_deref()).await,
    };
    match &result {
        Ok(()) => result = run.end().await,
        // The events cut out before a broken, stalled or oversized body ended are whole: they
        // are published, as lines before a bad NDJSON line are (their resend is recognised).
        Err(
            HttpError::BadBody(_) | HttpError::Timeout(_) | HttpError::Io(_) | HttpError::PayloadTooLarge(_),
        ) => {
            if let Err(e) = run.flush(true).await {
                result = Err(e);
            }
        }
        Err(_) => {}
    }
    if let Err(HttpError::Unauthorized(_)) = &result {
        bump(&hub.ingest.auth_failures);
        ctx.security.failures.fail(ip);
    }
    // A prompt success is one the sender saw; anything else may be sent again.
    let certain = result.is_ok() && started.elapsed() < ctx.dedupe.slow_answer();
    let Run { accepted, first_id, last_id, pending, attempt, read, .. } = run;
    let duplicates = attempt.duplicates;
    attempt.finish(certain, now_secs());
    hub.ingest.rejected.fetch_add(pending.rejected as u64, Ordering::Relaxed);
    gate::give_back_after(read);
    if let Err(cause) = result {
        if accepted + duplicates == 0 {
            return Err(cause);
        }
        return Err(HttpError::PartlyAccepted { accepted, duplicates, cause: Box::new(cause) });
    }
    let all_bad = accepted == 0 && duplicates == 0 && pending.rejected > 0;
    let answer = IngestAnswer {
        accepted,
        rejected: pending.rejected,
        errors: pending.errors,
        first_id,
        last_id,
        metrics: None,
        duplicates: (duplicates > 0).then_some(duplicates),
        error: all_bad.then_some("no valid event in the body"),
    };
    Ok(answer.respond())
}
