//! Starting the hub under test as a child process, and reading its CPU time and memory from
//! `/proc`, so the numbers are the hub's alone and not the harness's.

use anyhow::{bail, Context};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A hub process the harness started (killed on drop).
pub struct HubProcess {
    child: Child,
    /// Where it listens for HTTP.
    pub addr: SocketAddr,
    /// Its NDJSON ingest socket, if any.
    pub socket: Option<PathBuf>,
    /// Its admin token.
    pub token: String,
    _dir: TempDir,
}

/// A private temporary directory removed on drop (sockets and state of one run).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!(
            "livetap-perf-{tag}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (up to 10 s) until a started hub accepts TCP on `addr` and has created `socket`.
pub fn wait_listening(addr: SocketAddr, socket: Option<&Path>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() && socket.is_none_or(Path::exists) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("hub did not start listening on {addr}")
}

/// Restricts the calling thread, and every thread and child it starts later, to `cpus` (call
/// it before starting threads to pin a whole process).
pub fn pin_to_cpus(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `set` is a plain bit set on the stack, sized as the call is told.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A free loopback port (bound then released; fine for a benchmark on a private machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl HubProcess {
    /// Starts `bin` (the livetap binary) on a free port with an ingest socket and `extra`
    /// flags, and waits until `/healthz` answers.
    pub fn start(bin: &Path, extra: &[String], cpus: Option<&[usize]>) -> anyhow::Result<HubProcess> {
        let dir = TempDir::new("hub")?;
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let socket = dir.0.join("ingest.sock");
        let token = "perf-harness-token-0123456789".to_string();
        let mut cmd = Command::new(bin);
        if let Some(cpus) = cpus {
            let cpus = cpus.to_vec();
            // SAFETY: between fork and exec the closure only makes one system call on the
            // child itself and allocates nothing.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || pin_to_cpus(&cpus));
            }
        }
        let child = cmd
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-token")
            .arg(&token)
            .arg("--ingest-socket")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let hub = HubProcess { child, addr, socket: Some(socket), token, _dir: dir };
        wait_listening(hub.addr, hub.socket.as_deref())?;
        Ok(hub)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) and memory of a process, from `/proc/PID`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User plus system CPU time, in seconds.
    pub cpu_secs: f64,
    /// Resident set size now, in bytes.
    pub rss: u64,
    /// Peak resident set size, in bytes.
    pub peak_rss: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; zeroes when the process is gone.
pub fn sample(pid: u32) -> ProcSample {
    let mut s = ProcSample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th
        // fields of the whole line, in clock ticks.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // SAFETY: sysconf has no preconditions; it only reads a system constant.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            s.cpu_secs = (ticks(11) + ticks(12)) as f64 / hz;
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb =
                || line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
            if line.starts_with("VmRSS:") {
                s.rss = kb();
            } else if line.starts_with("VmHWM:") {
                s.peak_rss = kb();
            }
        }
    }
    s
}
