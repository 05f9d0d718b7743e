//! The `sd_notify` protocol, written out: one datagram of `KEY=value` lines sent to the
//! Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading
//! `@`). Without that variable every message is a no-op, so livetap outside systemd is
//! unchanged.
//!
//! No library is needed for it: the protocol is a single `sendto`, and taking it in-house
//! keeps the hardened unit's attack surface (and the dependency list) where it is.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Why the notification socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor an abstract name (`@…`).
    #[error("NOTIFY_SOCKET `{0}` is neither an absolute path nor an abstract socket name (@…)")]
    BadAddress(String),
    /// Sending the datagram failed.
    #[error("cannot notify the service manager: {0}")]
    Send(#[from] io::Error),
}

/// Where the service manager listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket: the name after the `@`, which the kernel sees behind a NUL.
    Abstract(Vec<u8>),
}

impl Target {
    /// Parses the value of `$NOTIFY_SOCKET`.
    fn parse(value: &str) -> Result<Target, NotifyError> {
        if let Some(name) = value.strip_prefix('@') {
            if name.is_empty() {
                return Err(NotifyError::BadAddress(value.to_owned()));
            }
            return Ok(Target::Abstract(name.as_bytes().to_vec()));
        }
        if value.starts_with('/') {
            return Ok(Target::Path(PathBuf::from(value)));
        }
        Err(NotifyError::BadAddress(value.to_owned()))
    }
}

/// The service manager's notification socket and watchdog period, read once from the
/// environment at start-up.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// `None`: not started by a service manager that listens (every send is a no-op).
    target: Option<Target>,
    /// `$WATCHDOG_USEC`, when it is meant for this process (`$WATCHDOG_PID` absent or ours).
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`, then removes them from the
    /// environment so the processes livetap starts (the journal source's `journalctl`) do not
    /// believe they are the service and talk to systemd in its name.
    ///
    /// Call it before any thread starts: changing the environment is only sound while the
    /// process has a single thread.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        Notifier::from_values(socket.as_deref(), usec.as_deref(), pid.as_deref(), std::process::id())
    }

    /// [`Notifier::from_env`] on given values (unit tests).
    fn from_values(
        socket: Option<&str>,
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Notifier, NotifyError> {
        let target = match socket {
            Some(s) if !s.is_empty() => Some(Target::parse(s)?),
            _ => None,
        };
        // systemd sets WATCHDOG_PID to the main process; a child that inherited the variables
        // from a parent that did not clear them must not take the parent's watchdog.
        let ours = match pid {
            Some(p) => p.trim().parse::<u32>().ok() == Some(own_pid),
            None => true,
        };
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours && target.is_some())
            .map(Duration::from_micros);
        Ok(Notifier { target, watchdog })
    }

    /// True when a service manager listens (a message would be sent).
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog period the service manager enforces (`WatchdogSec=`), if any. Keep-alives
    /// go out every half of it, as systemd recommends.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state`, newline-separated `KEY=value` assignments (`READY=1\nSTATUS=…`).
    /// Without a socket it does nothing and succeeds.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else { return Ok(()) };
        let socket = UnixDatagram::unbound()?;
        // The manager reads its socket promptly; the bound only keeps a wedged manager from
        // holding the runtime thread that sends the keep-alive.
        socket.set_write_timeout(Some(Duration::from_secs(1)))?;
        match target {
            Target::Path(p) => {
                socket.send_to(state.as_bytes(), p)?;
            }
            Target::Abstract(name) => send_abstract(&socket, name, state.as_bytes())?,
        }
        Ok(())
    }

    /// `READY=1` with a status line: start-up is complete, or a reload finished.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `RELOADING=1` with the monotonic time of the reload, which systemd 253 and later use to
    /// tell this reload from an earlier one.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading", monotonic_usec()))
    }

    /// `STOPPING=1`: shutdown started (draining what was accepted).
    pub fn stopping(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    /// A status line alone (`systemctl status` shows it).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }
}

/// A status must stay on one line: a newline would start another assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC` is on.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` writes one `timespec` that lives on this stack.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000).saturating_add(ts.tv_nsec as u64 / 1_000)
}

/// Sends to an abstract socket (Linux only).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(socket: &UnixDatagram, name: &[u8], data: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(data, &addr)?;
    Ok(())
}

/// Other systems have no abstract sockets, and no systemd to send to.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets are Linux-only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::from_values(None, Some("30000000"), None, 1).unwrap();
        assert!(!n.is_active());
        // A watchdog period without a socket to report to would be a keep-alive to nobody.
        assert_eq!(n.watchdog_period(), None);
        n.ready("x").unwrap();
        n.watchdog().unwrap();
    }

    #[test]
    fn addresses_parse_and_bad_ones_are_refused() {
        assert_eq!(Target::parse("/run/systemd/notify").unwrap(), Target::Path("/run/systemd/notify".into()));
        assert_eq!(Target::parse("@abc").unwrap(), Target::Abstract(b"abc".to_vec()));
        assert!(matches!(Target::parse("relative"), Err(NotifyError::BadAddress(_))));
        assert!(matches!(Target::parse("@"), Err(NotifyError::BadAddress(_))));
    }

    #[test]
    fn the_watchdog_belongs_to_the_process_systemd_named() {
        let mine = Notifier::from_values(Some("/x"), Some("20000000"), Some("42"), 42).unwrap();
        assert_eq!(mine.watchdog_period(), Some(Duration::from_secs(20)));
        let theirs = Notifier::from_values(Some("/x"), Some("20000000"), Some("41"), 42).unwrap();
        assert_eq!(theirs.watchdog_period(), None);
        let zero = Notifier::from_values(Some("/x"), Some("0"), None, 42).unwrap();
        assert_eq!(zero.watchdog_period(), None);
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_values(path.to_str(), None, None, 1).unwrap();
        n.ready("listening\non x").unwrap();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=listening on x");
        n.reloading().unwrap();
        let len = rx.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
        let usec: u64 = text.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..].parse().unwrap();
        assert!(usec > 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("livetap-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_values(Some(&format!("@{name}")), None, None, 1).unwrap();
        n.stopping("draining").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=draining");
    }
}
