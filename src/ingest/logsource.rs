//! What the three mail-log sources (a followed file, the journal, a syslog listener) share:
//! their configuration (`[[source]]` and the flags), their start-up errors, each with its fix,
//! the rate-limited warning for rejected lines, the zone of yearless timestamps, and
//! [`prepare`], which opens, probes and binds them all before the hub starts.
//!
//! Every source reads and frames only: its bytes go through `stage::run_stream` with the
//! mail-log line format (`maillog::format::MailLog`), and all sources share one correlator, so a
//! host's Postfix file and Dovecot file (or a file and a syslog listener) keep one set of
//! sessions, messages and gauges.

use super::journal::JournalSource;
use super::maillog::format::{Framing, MailLog};
use super::stage::Reporter;
use super::syslog::SyslogListener;
use super::tail::TailSource;
use super::{LineError, Source};
use crate::config::Config;
use crate::hub::Hub;
use serde::Deserialize;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One mail-log source (`[[source]]` in the config file; `kind` says which).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceConfig {
    /// `kind = "file"`: a log file followed like `tail -F` (`--postfix-log`, `--dovecot-log`).
    File(FileSource),
    /// `kind = "journal"`: the systemd journal, read with `journalctl` (`--journal`).
    Journal(JournalConfig),
    /// `kind = "syslog"`: a syslog listener (`--syslog-listen`).
    Syslog(SyslogConfig),
}

/// A followed log file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileSource {
    /// The file, such as `/var/log/mail.log`.
    pub path: PathBuf,
    /// Read it from its first line instead of its end.
    #[serde(default)]
    pub from_start: bool,
}

/// The systemd journal.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JournalConfig {
    /// Read every retained entry of the mail facility first, instead of starting at the end.
    #[serde(default)]
    pub from_start: bool,
    /// Start at this time instead (`journalctl --since` syntax: `today`, `-1h`,
    /// `2026-12-07 13:00`).
    pub since: Option<String>,
    /// The command run in place of `journalctl` (its arguments are appended). Not documented
    /// for users: the tests replace journalctl with a script that prints canned entries.
    pub command: Option<Vec<String>>,
}

/// A syslog listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SyslogConfig {
    /// `udp://HOST:PORT`, `tcp://HOST:PORT` or `unix:///PATH`.
    pub listen: ListenAddr,
}

/// Where a syslog listener listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum ListenAddr {
    /// `udp://127.0.0.1:5514`: one message per datagram.
    Udp(SocketAddr),
    /// `tcp://127.0.0.1:5514`: newline-framed or octet-counted (RFC 6587) messages.
    Tcp(SocketAddr),
    /// `unix:///run/livetap/syslog.sock`: a datagram socket like `/dev/log`.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<ListenAddr, SourceError> {
        let bad = |why: &str| SourceError::BadAddress { addr: s.to_string(), why: why.to_string() };
        let ip = |rest: &str| {
            rest.parse::<SocketAddr>()
                .map_err(|_| bad("expected an IP address and a port, such as 127.0.0.1:5514 or [::1]:5514"))
        };
        if let Some(rest) = s.strip_prefix("udp://") {
            Ok(ListenAddr::Udp(ip(rest)?))
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            Ok(ListenAddr::Tcp(ip(rest)?))
        } else if let Some(rest) = s.strip_prefix("unix://") {
            if !rest.starts_with('/') {
                return Err(bad("a unix socket needs an absolute path: unix:///run/livetap/syslog.sock"));
            }
            Ok(ListenAddr::Unix(PathBuf::from(rest)))
        } else {
            Err(bad("expected udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH"))
        }
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = SourceError;

    fn try_from(s: String) -> Result<ListenAddr, SourceError> {
        s.parse()
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Udp(a) => write!(f, "udp://{a}"),
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// The zone yearless, zoneless log timestamps (`Dec  7 13:00:00`) are read in
/// (`log-utc-offset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogZone {
    /// The host's zone, as `localtime_r` gives it when livetap starts.
    #[default]
    Local,
    /// A fixed offset east of UTC, in seconds.
    Fixed(i32),
}

impl std::str::FromStr for LogZone {
    type Err = SourceError;

    /// `local`, `UTC`, `Z`, or `+HH:MM`, `-HHMM`, `+HH`.
    fn from_str(s: &str) -> Result<LogZone, SourceError> {
        let bad = || SourceError::BadOffset { value: s.to_string() };
        match s {
            "local" => return Ok(LogZone::Local),
            "UTC" | "utc" | "Z" | "z" => return Ok(LogZone::Fixed(0)),
            _ => {}
        }
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        // `HH`, `HHMM` or `HH:MM`.
        let b = rest.as_bytes();
        let (hh, mm) = match b.len() {
            2 => (&b[..2], &b"00"[..]),
            4 => (&b[..2], &b[2..]),
            5 if b[2] == b':' => (&b[..2], &b[3..]),
            _ => return Err(bad()),
        };
        let num = |d: &[u8]| -> Result<i32, SourceError> {
            match d {
                [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Ok(i32::from(a - b'0') * 10 + i32::from(b - b'0')),
                _ => Err(bad()),
            }
        };
        let (h, m) = (num(hh)?, num(mm)?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(LogZone::Fixed(sign * (h * 3600 + m * 60)))
    }
}

impl TryFrom<String> for LogZone {
    type Error = SourceError;

    fn try_from(s: String) -> Result<LogZone, SourceError> {
        s.parse()
    }
}

impl LogZone {
    /// The offset in seconds east of UTC: a fixed one, or the host's now.
    pub fn offset(self) -> i32 {
        match self {
            LogZone::Fixed(o) => o,
            LogZone::Local => local_utc_offset(),
        }
    }
}

/// The host's offset from UTC now (`localtime_r`'s `tm_gmtoff`), 0 if it cannot be read.
pub fn local_utc_offset() -> i32 {
    // SAFETY: `time` and `localtime_r` write only to the values passed by pointer, which live
    // on this stack; `localtime_r` is the thread-safe form.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff as i32
    }
}

/// Why a mail-log source could not start. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The log file (or a directory on its way) cannot be read by livetap's user.
    #[error("cannot read {path}: permission denied. {fix}")]
    Unreadable {
        /// The log file.
        path: PathBuf,
        /// Which group to join, or what else to change.
        fix: String,
    },
    /// The log file could not be opened for another reason.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is a directory.
    #[error("{path} is a directory; give the log file itself (such as /var/log/mail.log)")]
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// `journalctl` cannot be run.
    #[error(
        "the journal source needs journalctl, which cannot be run ({program}: {source}); install \
         systemd's journalctl, or follow the log file with --postfix-log or receive syslog with \
         --syslog-listen"
    )]
    JournalMissing {
        /// The program that was run.
        program: String,
        /// Why it could not be run.
        source: std::io::Error,
    },
    /// journalctl found no journal.
    #[error(
        "there is no systemd journal to read (journalctl: \"{detail}\"): is systemd-journald \
         running? Without it, follow the log file with --postfix-log or receive syslog with \
         --syslog-listen"
    )]
    NoJournal {
        /// What journalctl said.
        detail: String,
    },
    /// journalctl may not read the system journal as livetap's user.
    #[error(
        "journalctl cannot read the system journal as user {user} (journalctl: \"{detail}\"): add \
         {user} to the systemd-journal group (or adm): `usermod -aG systemd-journal {user}`, then \
         restart livetap"
    )]
    JournalDenied {
        /// livetap's user.
        user: String,
        /// What journalctl said.
        detail: String,
    },
    /// journalctl failed in another way.
    #[error("journalctl failed ({status}): {detail}")]
    JournalFailed {
        /// Its exit status.
        status: String,
        /// What it said.
        detail: String,
    },
    /// A listen address is in use.
    #[error(
        "cannot listen on {addr}: the address is already in use. Another syslog daemon (rsyslog, \
         syslog-ng) or another livetap may hold it (`ss -lnp` shows which); choose another \
         address, such as port 5514, and point the forwarding there"
    )]
    AddrInUse {
        /// The address.
        addr: String,
    },
    /// A port below 1024 without the privilege to bind it.
    #[error(
        "cannot listen on {addr}: ports below 1024 need root or CAP_NET_BIND_SERVICE; listen on \
         a port above 1023 (such as 5514) and point the forwarding there, or grant the \
         capability (AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit)"
    )]
    PrivilegedPort {
        /// The address.
        addr: String,
    },
    /// Binding a listen address failed in another way.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
        /// What to do, when something can be said (empty otherwise).
        hint: String,
    },
    /// A listen address that is not one.
    #[error("bad syslog listen address `{addr}`: {why}")]
    BadAddress {
        /// What was given.
        addr: String,
        /// What is wrong, and the expected form.
        why: String,
    },
    /// A `log-utc-offset` that is not one.
    #[error("bad log-utc-offset `{value}`: expected local, UTC, or an offset such as +01:00 or -0500")]
    BadOffset {
        /// What was given.
        value: String,
    },
}

/// The name of group `gid` (`getgrgid_r`), if it has one.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `getgrgid_r` fills `grp` and writes its strings into `buf`, whose length is
        // passed; `result` points at `grp` on success. Nothing is read after `buf` is dropped.
        unsafe {
            let mut grp: libc::group = std::mem::zeroed();
            let mut result: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut result);
            if rc == libc::ERANGE && buf.len() < 1 << 20 {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 || result.is_null() || grp.gr_name.is_null() {
                return None;
            }
            return std::ffi::CStr::from_ptr(grp.gr_name).to_str().ok().map(str::to_owned);
        }
    }
}

/// The name of user `uid` (`getpwuid_r`), if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: as in `group_name`, for `getpwuid_r` and a `passwd`.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result);
            if rc == libc::ERANGE && buf.len() < 1 << 20 {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 || result.is_null() || pw.pw_name.is_null() {
                return None;
            }
            return std::ffi::CStr::from_ptr(pw.pw_name).to_str().ok().map(str::to_owned);
        }
    }
}

/// livetap's user, by name (or `uid N`).
pub fn current_user() -> String {
    // SAFETY: `geteuid` has no preconditions.
    let uid = unsafe { libc::geteuid() };
    user_name(uid).unwrap_or_else(|| format!("uid {uid}"))
}

/// What to do about a file `user` may not read, given its group and mode.
pub fn read_fix(user: &str, group: Option<&str>, gid: u32, mode: u32) -> String {
    // usermod takes a group's number as well as its name.
    let (named, join) = match group {
        Some(g) => (format!("group `{g}`"), g.to_string()),
        None => (format!("group id {gid} (which has no name)"), gid.to_string()),
    };
    if mode & 0o040 != 0 {
        format!(
            "The file belongs to {named} (mode {mode:04o}), which may read it: add {user} to that \
             group (`usermod -aG {join} {user}`; on Debian the mail logs belong to `adm`), then \
             restart livetap"
        )
    } else {
        format!(
            "The file (mode {mode:04o}, {named}) is not readable by its group: make it readable by \
             a group {user} belongs to (on Debian, rsyslog's $FileGroup adm and $FileCreateMode \
             0640; for Postfix's maillog_file, logrotate's `create 0640 root adm`), then restart \
             livetap"
        )
    }
}

/// Whether livetap's user may search directory `dir` (`access(2)`, `X_OK`).
fn searchable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: `access` reads the NUL-terminated path, which lives until the call returns.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// The start-up error for a log file whose opening was refused: which file or directory
/// refuses, and which group to join.
pub fn unreadable(path: &Path) -> SourceError {
    use std::os::unix::fs::MetadataExt;
    let user = current_user();
    if let Ok(meta) = std::fs::metadata(path) {
        let fix = read_fix(&user, group_name(meta.gid()).as_deref(), meta.gid(), meta.mode() & 0o7777);
        return SourceError::Unreadable { path: path.to_owned(), fix };
    }
    // The file cannot even be looked at: a directory on its way may not be searched. The
    // first such directory from the root down is the one to open up.
    let mut dirs: Vec<&Path> = path.ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()).collect();
    dirs.reverse();
    let blocked = dirs.into_iter().find(|d| !searchable(d));
    let fix = match blocked.and_then(|d| std::fs::metadata(d).ok().map(|m| (d, m))) {
        Some((dir, meta)) => format!(
            "Its directory {} (mode {:04o}, group {}) cannot be searched by {user}: make it \
             searchable by a group {user} belongs to, then restart livetap",
            dir.display(),
            meta.mode() & 0o7777,
            group_name(meta.gid()).map_or_else(|| format!("id {}", meta.gid()), |g| format!("`{g}`"))
        ),
        None => format!(
            "A directory on its way cannot be searched by {user}: make it searchable by a group \
             {user} belongs to, then restart livetap"
        ),
    };
    SourceError::Unreadable { path: path.to_owned(), fix }
}

/// At most one warning per `every`; counts what it held back.
#[derive(Debug)]
pub struct WarnLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// A limiter letting one warning through per `every`.
    pub fn new(every: Duration) -> WarnLimiter {
        WarnLimiter { every, last: None, suppressed: 0 }
    }

    /// `Some(n)` when a warning may be written now (`n` were held back since the last one),
    /// `None` when it should be held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|l| now.saturating_duration_since(l) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// How often a source warns about rejected lines at most.
const REJECT_WARN_EVERY: Duration = Duration::from_secs(10);

/// A mail-log source's [`Reporter`]: rejected lines (not syslog, not UTF-8, too long) are
/// logged as warnings, at most one per ten seconds per stream, with the count of those held
/// back; the hub counts them all in `rejected`.
pub struct LogReporter {
    source: Arc<str>,
    limiter: WarnLimiter,
}

impl LogReporter {
    /// A reporter naming `source` (a path, an address) in its warnings.
    pub fn new(source: impl Into<Arc<str>>) -> LogReporter {
        LogReporter { source: source.into(), limiter: WarnLimiter::new(REJECT_WARN_EVERY) }
    }
}

impl Reporter for LogReporter {
    fn report(&mut self, errors: &[LineError]) {
        let now = Instant::now();
        for e in errors {
            if let Some(held_back) = self.limiter.allow(now) {
                tracing::warn!(source = %self.source, line = e.line, reason = %e.reason, held_back, "mail-log line rejected");
            }
        }
    }
}

/// Sources reading old lines (a file from its start) right now. While any does, the
/// correlator's idle expiry is put off: it measures idleness against the wall clock, and
/// lines hours old would look idle the moment they were read. Written by the file sources
/// (increment when they start catching up, decrement once at the end), read by the expiry
/// task; `Relaxed` suffices, as a late view only moves one expiry by a tick.
#[derive(Debug, Default)]
pub struct CatchingUp(AtomicUsize);

impl CatchingUp {
    /// One more source is reading old lines.
    pub fn start(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A source has caught up.
    pub fn done(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// The mail-log sources, opened, probed and bound, ready to run.
pub struct Prepared {
    /// The sources, to be started with the others.
    pub sources: Vec<Box<dyn Source>>,
    /// What each reads, for the banner (`file /var/log/mail.log (from the end)`,
    /// `syslog udp://127.0.0.1:5514`).
    pub descriptions: Vec<String>,
    /// The table of each source, in the order of `sources` (the correlator's expiry, last,
    /// has none), so a reload can tell which sources changed.
    pub configs: Vec<SourceConfig>,
    /// The correlator the sources share and its expiry's state (`None` without sources), so
    /// sources a reload adds join the same correlator.
    pub shared: Option<Shared>,
}

/// What every mail-log source shares: the correlator and the catching-up count.
pub struct Shared {
    root: MailLog,
    catching_up: Arc<CatchingUp>,
}

impl Shared {
    fn new(config: &Config) -> Shared {
        // Computed once: a zone's offset changes at daylight-saving transitions, after which a
        // long-running livetap reads traditional timestamps an hour off until it restarts (the
        // RFC 3339 forms, Debian's default, carry their offset and are not affected).
        let offset = config.log_utc_offset.offset();
        Shared { root: MailLog::new(Framing::Text, offset), catching_up: Arc::new(CatchingUp::default()) }
    }

    fn expiry(&self) -> Box<dyn Source> {
        Box::new(Expiry { format: self.root.sharing(Framing::Text), catching_up: self.catching_up.clone() })
    }

    /// Opens (probes, binds) one source, sharing the correlator. Nothing is read until it
    /// runs.
    pub async fn open(&self, s: &SourceConfig) -> Result<(Box<dyn Source>, String), SourceError> {
        Ok(match s {
            SourceConfig::File(f) => {
                let t = TailSource::open(
                    &f.path,
                    f.from_start,
                    self.root.sharing(Framing::Text),
                    self.catching_up.clone(),
                )?;
                let d = t.describe();
                (Box::new(t), d)
            }
            SourceConfig::Journal(j) => {
                let t = JournalSource::start(j, self.root.sharing(Framing::Journal)).await?;
                let d = t.describe();
                (Box::new(t), d)
            }
            SourceConfig::Syslog(l) => {
                let t = SyslogListener::bind(&l.listen, self.root.sharing(Framing::Text)).await?;
                let d = t.describe();
                (Box::new(t), d)
            }
        })
    }

    /// The shared state for `config`'s sources, made on first use, and the correlator's
    /// expiry task to start when it was just made.
    pub fn ensure(shared: &mut Option<Shared>, config: &Config) -> Option<Box<dyn Source>> {
        if shared.is_some() {
            return None;
        }
        let s = Shared::new(config);
        let expiry = s.expiry();
        *shared = Some(s);
        Some(expiry)
    }
}

/// Opens every file, probes the journal and binds every listener of `config`, so that each
/// problem is a start-up error with its fix rather than a warning later. Must be called within
/// a Tokio runtime. Nothing is read until the sources run.
pub async fn prepare(config: &Config) -> Result<Prepared, SourceError> {
    let mut out =
        Prepared { sources: Vec::new(), descriptions: Vec::new(), configs: Vec::new(), shared: None };
    if config.source.is_empty() {
        return Ok(out);
    }
    let shared = Shared::new(config);
    for s in &config.source {
        let (source, description) = shared.open(s).await?;
        out.descriptions.push(description);
        out.sources.push(source);
        out.configs.push(s.clone());
    }
    out.sources.push(shared.expiry());
    out.shared = Some(shared);
    Ok(out)
}

/// How often the correlator forgets idle sessions and messages.
const EXPIRE_EVERY: Duration = Duration::from_secs(30);

/// The task that calls the shared correlator's expiry now and then.
struct Expiry {
    format: MailLog,
    catching_up: Arc<CatchingUp>,
}

impl Source for Expiry {
    fn name(&self) -> &'static str {
        "mail-log expiry"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut shutdown = hub.shutdown_signal();
            let mut tick = tokio::time::interval(EXPIRE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if !self.catching_up.any() {
                            self.format.expire(crate::event::encode::now_secs());
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "udp://127.0.0.1:5514".parse::<ListenAddr>().unwrap(),
            ListenAddr::Udp("127.0.0.1:5514".parse().unwrap())
        );
        assert_eq!(
            "tcp://[::1]:514".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::1]:514".parse().unwrap())
        );
        let u = "unix:///run/livetap/syslog.sock".parse::<ListenAddr>().unwrap();
        assert_eq!(u, ListenAddr::Unix("/run/livetap/syslog.sock".into()));
        assert_eq!(u.to_string(), "unix:///run/livetap/syslog.sock");
        assert_eq!("udp://0.0.0.0:514".parse::<ListenAddr>().unwrap().to_string(), "udp://0.0.0.0:514");
        for (bad, says) in [
            ("127.0.0.1:5514", "expected udp://HOST:PORT"),
            ("udp://localhost:514", "an IP address and a port"),
            ("tcp://127.0.0.1", "an IP address and a port"),
            ("unix://run/x.sock", "absolute path"),
            ("http://127.0.0.1:80", "expected udp://HOST:PORT"),
        ] {
            let e = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn log_zones() {
        for (s, z) in [
            ("local", LogZone::Local),
            ("UTC", LogZone::Fixed(0)),
            ("Z", LogZone::Fixed(0)),
            ("+01:00", LogZone::Fixed(3600)),
            ("-0530", LogZone::Fixed(-19_800)),
            ("+14", LogZone::Fixed(50_400)),
            ("-00:30", LogZone::Fixed(-1800)),
        ] {
            assert_eq!(s.parse::<LogZone>().unwrap(), z, "{s}");
        }
        for bad in ["", "01:00", "+1", "+24:00", "+01:60", "+01:0", "+0100:", "+ab:cd", "CET"] {
            let e = bad.parse::<LogZone>().unwrap_err().to_string();
            assert!(e.contains("expected local, UTC"), "{bad}: {e}");
        }
        assert_eq!(LogZone::Fixed(-3600).offset(), -3600);
        // The host's offset is a whole number of minutes within a day.
        let local = LogZone::Local.offset();
        assert!(local.abs() < 86_400 && local % 60 == 0, "{local}");
    }

    #[test]
    fn group_and_user_lookup() {
        assert_eq!(group_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(0).as_deref(), Some("root"));
        // An id no group has.
        assert_eq!(group_name(3_999_999_999), None);
        assert!(!current_user().is_empty());
    }

    #[test]
    fn the_fix_for_an_unreadable_file_names_the_group() {
        let fix = read_fix("livetap", Some("adm"), 4, 0o640);
        assert!(fix.contains("group `adm` (mode 0640)"), "{fix}");
        assert!(fix.contains("usermod -aG adm livetap"), "{fix}");
        let fix = read_fix("livetap", None, 4242, 0o640);
        assert!(
            fix.contains("group id 4242 (which has no name)") && fix.contains("usermod -aG 4242 livetap"),
            "{fix}"
        );
        let fix = read_fix("livetap", Some("root"), 0, 0o600);
        assert!(fix.contains("not readable by its group") && fix.contains("mode 0600"), "{fix}");
        // The whole message, as `livetap` prints it.
        let e = SourceError::Unreadable {
            path: "/var/log/mail.log".into(),
            fix: read_fix("livetap", Some("adm"), 4, 0o640),
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "cannot read /var/log/mail.log: permission denied. The file belongs to group `adm`"
            ),
            "{text}"
        );
    }

    #[test]
    fn unreadable_reads_the_files_group() {
        // Whoever runs the test may read this file; the error is built from its metadata alone.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mail.log");
        std::fs::write(&p, "x\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let gid = std::fs::metadata(&p).unwrap().gid();
        let text = unreadable(&p).to_string();
        let group = group_name(gid).unwrap_or_else(|| gid.to_string());
        assert!(text.contains(&format!("`{group}` (mode 0640)")), "{text}");
        assert!(text.contains(&format!("usermod -aG {group} {}", current_user())), "{text}");
    }

    #[test]
    fn warnings_are_rate_limited() {
        let mut w = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.allow(t0), Some(0));
        assert_eq!(w.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(w.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(w.allow(t0 + Duration::from_secs(11)), None);
        assert_eq!(w.allow(t0 + Duration::from_secs(30)), Some(1));
    }

    #[test]
    fn flags_add_sources_and_from_start_reads_every_log_from_its_start() {
        use crate::config::{ConfigError, Overrides};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[[source]]\nkind = \"file\"\npath = \"/a\"\n[[source]]\nkind = \"journal\"\n")
            .unwrap();
        let file = |p: &str| SourceConfig::File(FileSource { path: p.into(), from_start: false });
        let udp = || SourceConfig::Syslog(SyslogConfig { listen: "udp://127.0.0.1:5514".parse().unwrap() });
        let o = Overrides { sources: vec![file("/b"), udp()], from_start: true, ..Overrides::default() };
        let c = Config::load(Some(&p), o).unwrap();
        assert_eq!(
            c.source,
            vec![
                SourceConfig::File(FileSource { path: "/a".into(), from_start: true }),
                SourceConfig::Journal(JournalConfig { from_start: true, ..JournalConfig::default() }),
                SourceConfig::File(FileSource { path: "/b".into(), from_start: true }),
                udp(),
            ]
        );
        // The same log read twice would publish every line twice.
        for (twice, says) in [
            (vec![file("/a")], "/a is followed twice"),
            (vec![SourceConfig::Journal(JournalConfig::default())], "the journal is read twice"),
            (vec![udp(), udp()], "udp://127.0.0.1:5514 is listened on twice"),
        ] {
            let e = Config::load(Some(&p), Overrides { sources: twice, ..Overrides::default() }).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { key: "source", message } if message.contains(says)),
                "{e}"
            );
        }
        let o = Overrides { log_utc_offset: Some(LogZone::Fixed(-3600)), ..Overrides::default() };
        assert_eq!(Config::load(None, o).unwrap().log_utc_offset, LogZone::Fixed(-3600));
    }

    #[test]
    fn source_tables() {
        let c: Config = Config::from_toml(
            "log-utc-offset = \"+01:00\"\n\
             [[source]]\nkind = \"file\"\npath = \"/var/log/mail.log\"\n\
             [[source]]\nkind = \"file\"\npath = \"/var/log/dovecot.log\"\nfrom-start = true\n\
             [[source]]\nkind = \"journal\"\nsince = \"today\"\n\
             [[source]]\nkind = \"syslog\"\nlisten = \"udp://127.0.0.1:5514\"\n",
        )
        .unwrap();
        assert_eq!(c.log_utc_offset, LogZone::Fixed(3600));
        assert_eq!(
            c.source,
            vec![
                SourceConfig::File(FileSource { path: "/var/log/mail.log".into(), from_start: false }),
                SourceConfig::File(FileSource { path: "/var/log/dovecot.log".into(), from_start: true }),
                SourceConfig::Journal(JournalConfig {
                    since: Some("today".into()),
                    ..JournalConfig::default()
                }),
                SourceConfig::Syslog(SyslogConfig { listen: "udp://127.0.0.1:5514".parse().unwrap() }),
            ]
        );
        // Errors name the line and say what is expected.
        for (bad, says) in [
            ("[[source]]\nkind = \"syslog\"\nlisten = \"udp://nowhere\"\n", "line 1"),
            ("[[source]]\nkind = \"syslog\"\nlisten = \"udp://nowhere\"\n", "an IP address and a port"),
            ("[[source]]\nkind = \"pipe\"\n", "unknown variant `pipe`"),
            ("[[source]]\nkind = \"file\"\npath = \"/x\"\nfrom_start = true\n", "unknown field `from_start`"),
            ("[[source]]\nkind = \"file\"\n", "missing field `path`"),
            ("log-utc-offset = \"CET\"\n", "expected local, UTC"),
        ] {
            let e = Config::from_toml(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
