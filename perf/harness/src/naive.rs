//! Starting the naive baseline hub (`naivehub`, the linear design) as a child process.

use crate::hub::{free_port, wait_listening, TempDir};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
        wait_listening(hub.addr, Some(&hub.socket))?;
        Ok(hub)
    }
}

impl Drop for NaiveHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
