//! The stream stage: the ordered parallel parse loop that turns any byte stream into published
//! events, shared by every byte-stream source (the Unix socket today).
//!
//! A source supplies the bytes (an [`AsyncRead`]), the format of its lines ([`LineFormat`])
//! and where rejected lines go ([`Reporter`]); [`run_stream`] does the rest. It reads in
//! chunks that grow while a producer keeps them full, numbers lines exactly across reads,
//! rejects and skips lines longer than `max-line-bytes`, parses small reads inline and larger
//! ones on the parse threads (`ingest::pool`), several chunks at a time, and publishes the
//! parsed chunks strictly in read order, so sequence numbers follow the producer's order. When
//! the ring is full it stops reading until there is room, so backpressure reaches the producer
//! through whatever buffers the stream has, and nothing read is dropped.

use super::lines::{parse_chunk, LineFormat};
use super::{LineError, ParsedBatch};
use crate::event::encode::now_secs;
use crate::hub::Hub;
use crate::hub::IngestStats;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Where a stream's rejected lines go: the Unix socket writes them back to the producer; a
/// followed file would log them. The stage has already counted them in the hub's `rejected`
/// counter when this is called.
pub trait Reporter {
    /// Takes the rejections of one chunk (at most [`super::MAX_REPORTED_ERRORS`] of them, in
    /// line order). It is called on the stream's reading task, so it must not wait.
    fn report(&mut self, errors: &[LineError]);
}

impl<F: FnMut(&[LineError])> Reporter for F {
    fn report(&mut self, errors: &[LineError]) {
        self(errors)
    }
}

/// Why [`run_stream`] returned.
#[derive(Debug)]
pub enum StreamEnd {
    /// The stream ended and everything read from it was published (and its rejections
    /// reported).
    Eof,
    /// The hub began shutting down. What was read but not yet published was dropped: nothing
    /// acknowledged it.
    Shutdown,
    /// A read failed; what was read before it was published only if its chunk was already
    /// done, the rest dropped.
    ReadFailed(std::io::Error),
    /// A chunk's parse job failed (it panicked, or the parse threads are gone), so the stream
    /// could no longer be published in order and was abandoned.
    ParseFailed,
}

/// Bodies smaller than this are parsed on the reading task itself when nothing is in flight:
/// a thread hand-off costs more than parsing a few events, and a trickle of events should not
/// pay it in latency.
const INLINE_PARSE_BYTES: usize = 16 * 1024;

/// How many chunks of one stream may be parsed at once. Parsing and building are the most
/// expensive per-event work (~0.8 µs), so one busy producer connection would otherwise be
/// limited to one core however many the host has. Twice the cores, because a chunk that is
/// only queued costs nothing, while a core left idle between the oldest chunk's publication
/// and the next read's hand-off is lost: with one chunk per core, `max-ingest` left a fifth of
/// the machine idle (`perf/RESULTS.md` §10).
fn parse_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_mul(2).clamp(2, 16)
}

/// A stream's reads start at this size, and an idle or trickling producer never holds more.
const CHUNK_MIN: usize = 64 * 1024;
/// A busy producer's reads grow up to this size: each chunk handed to the parse threads then
/// carries about 800 events instead of 200, so the hand-off (a thread wake-up each way) is paid
/// a quarter as often. Larger chunks measured no better (`perf/RESULTS.md` §10).
const CHUNK_MAX: usize = 256 * 1024;

/// The size of the next read: doubled while reads fill the buffer, halved while they fill less
/// than a quarter of it, between [`CHUNK_MIN`] and [`CHUNK_MAX`].
#[derive(Debug, Clone, Copy)]
struct ChunkSize(usize);

impl ChunkSize {
    fn new() -> ChunkSize {
        ChunkSize(CHUNK_MIN)
    }

    /// Adapts to a read that returned `n` bytes into `room` free bytes.
    fn after_read(&mut self, n: usize, room: usize) {
        if n >= room {
            self.0 = (self.0 * 2).min(CHUNK_MAX);
        } else if n < room / 4 {
            self.0 = (self.0 / 2).max(CHUNK_MIN);
        }
    }
}

/// A chunk of complete lines, parsed inline or on the parse threads; published in read order.
enum Pending {
    Ready(ParsedBatch),
    Running(tokio::sync::oneshot::Receiver<ParsedBatch>),
}

/// Reads `reader` to its end, parsing its lines with `format` and publishing their events in
/// order through `hub`, and gives rejected lines to `reporter`. Lines are numbered from 1;
/// the last line may lack its newline. Returns at the end of the stream once everything read
/// is published, at a read error, or when the hub shuts down.
pub async fn run_stream<R, F, E>(hub: Arc<Hub>, mut reader: R, format: F, mut reporter: E) -> StreamEnd
where
    R: AsyncRead + Unpin,
    F: LineFormat,
    E: Reporter,
{
    let max_line = hub.config.max_line_bytes;
    // A sequential format's chunks are parsed one at a time: its next chunk is handed out
    // only once the one before it is parsed, so its state sees the lines in order.
    let depth = if F::SEQUENTIAL { 1 } else { parse_parallelism() };
    let mut size = ChunkSize::new();
    let mut buf: Vec<u8> = Vec::with_capacity(size.0);
    let mut line_no = 1usize;
    let mut skipping = false;
    let mut eof = false;
    let mut inflight: VecDeque<Pending> = VecDeque::new();
    let mut shutdown = hub.shutdown_signal();
    loop {
        // Publish finished chunks in the order they were read: a chunk parsed faster than the
        // one before it waits, so sequence numbers follow the producer's order.
        let must_wait = eof || inflight.len() >= depth;
        match inflight.front_mut() {
            Some(Pending::Ready(_)) => {
                let Some(Pending::Ready(parsed)) = inflight.pop_front() else { unreachable!() };
                if !publish(&hub, &mut reporter, parsed).await {
                    return StreamEnd::Shutdown;
                }
                continue;
            }
            Some(Pending::Running(handle)) if must_wait => {
                // Nothing more to read (or enough in flight): wait for the oldest chunk.
                let parsed = tokio::select! {
                    r = handle => r,
                    _ = shutdown.changed() => return StreamEnd::Shutdown,
                };
                inflight.pop_front();
                match parsed {
                    Ok(parsed) => inflight.push_front(Pending::Ready(parsed)),
                    Err(e) => {
                        tracing::error!(error = %e, "ingest parse task failed; closing the connection");
                        return StreamEnd::ParseFailed;
                    }
                }
                continue;
            }
            None if eof => return StreamEnd::Eof,
            _ => {}
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().min(max_line));
        } else if buf.capacity() < size.0 {
            buf.reserve(size.0 - buf.len());
        }
        let room = buf.capacity() - buf.len();
        let n = if let Some(Pending::Running(handle)) = inflight.front_mut() {
            // Read on while the oldest chunk is parsed, but publish it as soon as it is done so
            // a producer pausing after a burst does not hold its events back.
            tokio::select! {
                biased;
                r = handle => {
                    inflight.pop_front();
                    match r {
                        Ok(parsed) => inflight.push_front(Pending::Ready(parsed)),
                        Err(e) => {
                            tracing::error!(error = %e, "ingest parse task failed; closing the connection");
                            return StreamEnd::ParseFailed;
                        }
                    }
                    continue;
                }
                r = reader.read_buf(&mut buf) => match r { Ok(n) => n, Err(e) => return StreamEnd::ReadFailed(e) },
                _ = shutdown.changed() => return StreamEnd::Shutdown,
            }
        } else {
            tokio::select! {
                r = reader.read_buf(&mut buf) => match r { Ok(n) => n, Err(e) => return StreamEnd::ReadFailed(e) },
                _ = shutdown.changed() => return StreamEnd::Shutdown,
            }
        };
        eof = n == 0;
        size.after_read(n, room);
        // Process every complete line; at EOF, the unterminated tail too.
        let end = if eof { buf.len() } else { memchr::memrchr(b'\n', &buf).map_or(0, |p| p + 1) };
        if end > 0 {
            let mut start = 0;
            if skipping {
                // Drop the rest of an over-long line.
                match memchr::memchr(b'\n', &buf[..end]) {
                    Some(p) => {
                        start = p + 1;
                        line_no += 1;
                        skipping = false;
                    }
                    None => start = end,
                }
            }
            // memchr's vectorised scans: a byte-at-a-time loop here cost about 4 % of the hub's
            // CPU at 500,000 events/s (perf, max-ingest).
            let lines = memchr::memchr_iter(b'\n', &buf[start..end]).count();
            let first_line = line_no;
            line_no += lines;
            if end - start <= INLINE_PARSE_BYTES && inflight.is_empty() {
                let parsed = parse_chunk(
                    &format,
                    &mut buf[start..end],
                    first_line,
                    max_line,
                    &mut hub.builder(),
                    now_secs(),
                );
                buf.drain(..end);
                inflight.push_back(Pending::Ready(parsed));
            } else {
                // Hand the complete lines to the parse threads and keep the partial tail.
                let tail = buf[end..].to_vec();
                let mut chunk = std::mem::replace(&mut buf, Vec::with_capacity(size.0));
                buf.extend_from_slice(&tail);
                chunk.truncate(end);
                let h = hub.clone();
                let format = format.clone();
                inflight.push_back(Pending::Running(hub.parse_pool.spawn(move |home| {
                    parse_chunk(
                        &format,
                        &mut chunk[start..],
                        first_line,
                        max_line,
                        &mut h.builder().with_home(home),
                        now_secs(),
                    )
                })));
            }
        } else if skipping {
            // Still inside an over-long line that was already reported: discard quietly.
            buf.clear();
        } else if buf.len() > max_line {
            IngestStats::add(&hub.ingest.rejected, 1);
            reporter
                .report(&[LineError { line: line_no, reason: format!("line longer than {max_line} bytes") }]);
            buf.clear();
            skipping = true;
        }
    }
}

/// Publishes one parsed chunk, waiting for ring space (in slices when it holds more events than
/// the ring), and reports its rejected lines. Returns false when the hub is shutting down (what
/// was not accepted is not acknowledged).
async fn publish<E: Reporter>(hub: &Hub, reporter: &mut E, mut parsed: ParsedBatch) -> bool {
    // The events a publish displaces are freed by the parse threads that built them
    // (`Hub::publish`), not on this task, which is the stream's one serial stage.
    // A chunk can hold more events than the ring (a busy producer's read is up to a few
    // megabytes of short lines), so it is published in ring-sized slices, each waiting for room.
    if !parsed.events.is_empty() && hub.publish_stream(&mut parsed.events).await.is_err() {
        return false;
    }
    // Metric records (`{"metric":...}` lines) count once their chunk is accepted.
    parsed.apply_samples(&hub.metrics);
    if parsed.rejected > 0 {
        IngestStats::add(&hub.ingest.rejected, parsed.rejected as u64);
        reporter.report(&parsed.errors);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_grows_with_full_reads_and_shrinks_with_small_ones() {
        let mut s = ChunkSize::new();
        assert_eq!(s.0, CHUNK_MIN);
        // Reads that fill the buffer double the next one, up to the maximum.
        s.after_read(CHUNK_MIN, CHUNK_MIN);
        assert_eq!(s.0, 2 * CHUNK_MIN);
        for _ in 0..10 {
            s.after_read(s.0, s.0);
        }
        assert_eq!(s.0, CHUNK_MAX);
        // A read that fills half the buffer keeps the size.
        s.after_read(CHUNK_MAX / 2, CHUNK_MAX);
        assert_eq!(s.0, CHUNK_MAX);
        // A trickle halves it, down to the minimum and no lower.
        s.after_read(100, CHUNK_MAX);
        assert_eq!(s.0, CHUNK_MAX / 2);
        for _ in 0..10 {
            s.after_read(100, s.0);
        }
        assert_eq!(s.0, CHUNK_MIN);
        // End of stream (a zero read) shrinks too, never below the minimum.
        s.after_read(0, CHUNK_MIN);
        assert_eq!(s.0, CHUNK_MIN);
    }

    #[test]
    fn parse_parallelism_is_bounded() {
        let d = parse_parallelism();
        assert!((2..=16).contains(&d), "{d}");
    }
}
