//! The Unix socket source: producers stream NDJSON events into `--ingest-socket PATH`.
//!
//! Each connection is read in chunks; complete lines are parsed and published as one batch.
//! When the ring is full the reader simply stops reading until there is room, so backpressure
//! reaches the producer through the socket buffer and nothing is dropped. A line longer than
//! `max-line-bytes` is rejected and skipped up to its newline. Rejections are reported back on
//! the socket as NDJSON (`{"line":N,"error":"..."}`) when the producer reads them; a producer
//! that never reads loses only the reports, never events.

use super::{parse_ndjson_records, ParsedBatch, Source};
use crate::event::encode::now_secs;
use crate::hub::Hub;
use crate::metrics::IngestStats;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};

/// Listens on a Unix socket for NDJSON producers.
pub struct SocketSource {
    listener: UnixListener,
    path: PathBuf,
}

impl SocketSource {
    /// Binds `path`, replacing a stale socket file left by a previous run. Must be called
    /// within a Tokio runtime.
    pub fn bind(path: &Path) -> std::io::Result<SocketSource> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)?;
            } else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
        }
        let listener = UnixListener::bind(path)?;
        // Only the owner and its group may write events: they carry mail metadata.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        Ok(SocketSource { listener, path: path.to_owned() })
    }
}

impl Source for SocketSource {
    fn name(&self) -> &'static str {
        "unix-socket"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut shutdown = hub.shutdown_signal();
            loop {
                tokio::select! {
                    r = self.listener.accept() => match r {
                        Ok((stream, _)) => { tokio::spawn(serve(hub.clone(), stream)); }
                        Err(e) => {
                            tracing::warn!(error = %e, "unix socket accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    _ = shutdown.changed() => break,
                }
            }
            let _ = std::fs::remove_file(&self.path);
        })
    }
}

/// Bodies smaller than this are parsed on the reading task itself when nothing is in flight:
/// a thread hand-off costs more than parsing a few events, and a trickle of events should not
/// pay it in latency.
const INLINE_PARSE_BYTES: usize = 16 * 1024;

/// How many chunks of one connection may be parsed at once. Parsing and building are the
/// most expensive per-event work (~0.8 µs), so one busy producer connection would otherwise be
/// limited to one core however many the host has. Twice the cores, because a chunk that is
/// only queued costs nothing, while a core left idle between the oldest chunk's publication
/// and the next read's hand-off is lost: with one chunk per core, `max-ingest` left a fifth of
/// the machine idle (`perf/RESULTS.md` §10).
fn parse_parallelism() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_mul(2).clamp(2, 16)
}

/// A connection's reads start at this size, and an idle or trickling producer never holds more.
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

async fn serve(hub: Arc<Hub>, mut stream: UnixStream) {
    let max_line = hub.config.max_line_bytes;
    let depth = parse_parallelism();
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
                if !publish(&hub, &stream, parsed).await {
                    return;
                }
                continue;
            }
            Some(Pending::Running(handle)) if must_wait => {
                // Nothing more to read (or enough in flight): wait for the oldest chunk.
                let parsed = tokio::select! {
                    r = handle => r,
                    _ = shutdown.changed() => return,
                };
                inflight.pop_front();
                match parsed {
                    Ok(parsed) => inflight.push_front(Pending::Ready(parsed)),
                    Err(e) => {
                        tracing::error!(error = %e, "ingest parse task failed; closing the connection");
                        return;
                    }
                }
                continue;
            }
            None if eof => return,
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
                            return;
                        }
                    }
                    continue;
                }
                r = stream.read_buf(&mut buf) => match r { Ok(n) => n, Err(_) => return },
                _ = shutdown.changed() => return,
            }
        } else {
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r { Ok(n) => n, Err(_) => return },
                _ = shutdown.changed() => return,
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
                let parsed = parse_ndjson_records(
                    &mut buf[start..end],
                    first_line,
                    Some(max_line),
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
                inflight.push_back(Pending::Running(hub.parse_pool.spawn(move |home| {
                    parse_ndjson_records(
                        &mut chunk[start..],
                        first_line,
                        Some(max_line),
                        &mut h.builder().with_home(home),
                        now_secs(),
                    )
                })));
            }
        } else if skipping {
            // Still inside an over-long line that was already reported: discard quietly.
            buf.clear();
        } else if buf.len() > max_line {
            let mut errors = vec![super::LineError {
                line: line_no,
                reason: format!("line longer than {max_line} bytes"),
            }];
            IngestStats::add(&hub.ingest.rejected, 1);
            report(&stream, &mut errors);
            buf.clear();
            skipping = true;
        }
    }
}

/// Publishes one parsed chunk, waiting for ring space (in slices when it holds more events than
/// the ring), and reports its rejected lines. Returns false when the hub is shutting down (what
/// was not accepted is not acknowledged).
async fn publish(hub: &Hub, stream: &UnixStream, mut parsed: ParsedBatch) -> bool {
    // The events a publish displaces are freed by the parse threads that built them
    // (`Hub::publish`), not on this task, which is the connection's one serial stage.
    // A chunk can hold more events than the ring (a busy producer's read is up to a few
    // megabytes of short lines), so it is published in ring-sized slices, each waiting for room.
    if !parsed.events.is_empty() && hub.publish_stream(&mut parsed.events).await.is_err() {
        return false;
    }
    // Metric records (`{"metric":...}` lines) count once their chunk is accepted.
    parsed.apply_samples(&hub.metrics);
    if parsed.rejected > 0 {
        IngestStats::add(&hub.ingest.rejected, parsed.rejected as u64);
        report(stream, &mut parsed.errors);
    }
    true
}

/// Writes rejections back without ever waiting for the producer to read them.
fn report(stream: &UnixStream, errors: &mut Vec<super::LineError>) {
    let mut out = Vec::new();
    for e in errors.drain(..) {
        let _ = serde_json::to_writer(&mut out, &serde_json::json!({"line": e.line, "error": e.reason}));
        out.push(b'\n');
    }
    let _ = stream.try_write(&out);
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
