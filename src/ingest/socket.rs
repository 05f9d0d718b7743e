//! The Unix socket source: producers stream NDJSON events into `--ingest-socket PATH`.
//!
//! The socket only accepts connections and reads them; each connection runs through the
//! stream stage (`ingest::stage`) with the NDJSON line format, which parses its chunks on the
//! parse threads and publishes them in order. When the ring is full the stage stops reading
//! until there is room, so backpressure reaches the producer through the socket buffer and
//! nothing is dropped. A line longer than `max-line-bytes` is rejected and skipped up to its
//! newline. Rejections are reported back on the socket as NDJSON
//! (`{"line":N,"error":"..."}`) when the producer reads them; a producer that never reads
//! loses only the reports, never events.

use super::lines::Ndjson;
use super::stage::{run_stream, Reporter};
use super::{LineError, Source};
use crate::hub::Hub;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::unix::WriteHalf;
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

/// Serves one producer connection: the stream stage reads, parses and publishes it, and its
/// rejections are written back on the same socket.
async fn serve(hub: Arc<Hub>, mut stream: UnixStream) {
    // Borrowed halves cost nothing per read, unlike the owned ones' shared handle.
    let (reader, writer) = stream.split();
    let _ = run_stream(hub, reader, Ndjson, WriteBack(writer)).await;
}

/// Rejections written back to the producer as NDJSON (`{"line":N,"error":"..."}`).
struct WriteBack<'a>(WriteHalf<'a>);

impl Reporter for WriteBack<'_> {
    /// Writes without ever waiting for the producer to read the reports: one that never reads
    /// loses only them, and the stream is not held up.
    fn report(&mut self, errors: &[LineError]) {
        let mut out = Vec::new();
        for e in errors {
            let _ = serde_json::to_writer(&mut out, &serde_json::json!({"line": e.line, "error": e.reason}));
            out.push(b'\n');
        }
        let _ = self.0.try_write(&out);
    }
}
