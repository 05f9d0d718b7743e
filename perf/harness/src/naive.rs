//! Starting the naive baseline hub (`naivehub`, the linear design) as a child process.

use crate::hub::{free_port, TempDir};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `naivehub` (killed on drop).
pub struct NaiveHub {
    child: Child,
    /// HTTP address (`GET /live?QUERY`).
    pub addr: SocketAddr,
    /// NDJSON ingest socket.
    pub socket: PathBuf,
    /// Process id, for CPU and memory.
    pub pid: u32,
    _dir: TempDir,
}

impl NaiveHub {
    /// Starts `naivehub` from next to this program.
    pub fn start() -> anyhow::Result<NaiveHub> {
        let bin = std::env::current_exe()?.with_file_name("naivehub");
        let dir = TempDir::new("naive")?;
        let socket = dir.0.join("ingest.sock");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(&bin)
            .arg(addr.to_string())
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let hub = NaiveHub { child, addr, socket, pid, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(hub.addr).is_ok() && hub.socket.exists() {
                return Ok(hub);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("naivehub did not start")
    }
}

impl Drop for NaiveHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
