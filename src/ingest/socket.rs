//! The Unix socket source: producers stream NDJSON events into `--ingest-socket PATH`.
//!
//! Each connection is read in chunks; complete lines are parsed and published as one batch.
//! When the ring is full the reader simply stops reading until there is room, so backpressure
//! reaches the producer through the socket buffer and nothing is dropped. A line longer than
//! `max-line-bytes` is rejected and skipped up to its newline. Rejections are reported back on
//! the socket as NDJSON (`{"line":N,"error":"..."}`) when the producer reads them; a producer
//! that never reads loses only the reports, never events.

use super::{parse_ndjson_from, Source};
use crate::event::encode::now_secs;
use crate::hub::Hub;
use crate::metrics::IngestStats;
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

async fn serve(hub: Arc<Hub>, mut stream: UnixStream) {
    let max_line = hub.config.max_line_bytes;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut line_no = 1usize;
    let mut skipping = false;
    let mut shutdown = hub.shutdown_signal();
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().min(max_line));
        }
        let n = tokio::select! {
            r = stream.read_buf(&mut buf) => match r { Ok(n) => n, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let eof = n == 0;
        // Process every complete line; at EOF, the unterminated tail too.
        let end = if eof { buf.len() } else { buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) };
        if end > 0 {
            let mut start = 0;
            if skipping {
                // Drop the rest of an over-long line.
                match buf[..end].iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        start = p + 1;
                        line_no += 1;
                        skipping = false;
                    }
                    None => start = end,
                }
            }
            let lines = buf[start..end].iter().filter(|&&b| b == b'\n').count();
            let mut parsed = parse_ndjson_from(
                &mut buf[start..end],
                line_no,
                Some(max_line),
                &mut hub.builder(),
                now_secs(),
            );
            line_no += lines;
            // At shutdown the publish fails: what was not accepted is not acknowledged either.
            if !parsed.events.is_empty() && hub.publish(&parsed.events, None).await.is_err() {
                return;
            }
            if parsed.rejected > 0 {
                IngestStats::add(&hub.ingest.rejected, parsed.rejected as u64);
                report(&stream, &mut parsed.errors);
            }
            buf.drain(..end);
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
        if eof {
            return;
        }
    }
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
