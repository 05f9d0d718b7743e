//! The syslog listener source: rsyslog, syslog-ng or a program's `syslog()` sending RFC 3164
//! or RFC 5424 messages over UDP, TCP or a Unix datagram socket (`--syslog-listen ADDR`,
//! `[[source]] kind = "syslog"`).
//!
//! **Datagrams** (UDP, Unix): each carries one message. Its trailing NULs and newlines are
//! cut and any newline inside it becomes a space, so one datagram is one line; the lines go
//! through an in-process queue into one `stage::run_stream` per listener. The receive loop
//! never waits for parsing: the queue holds at most [`QUEUE_BYTES`], and a datagram arriving
//! when it is full is dropped and counted (`syslog_dropped` in `/api/livetap/stats`, and a
//! rate-limited warning). A sender cannot be slowed down over a datagram socket, and the
//! kernel drops datagrams in the same way when its own buffer is full.
//!
//! **TCP**: each connection runs through its own `run_stream`, so backpressure reaches the
//! sender. Messages are framed by a newline (or a NUL), or by RFC 6587 octet counting
//! (`123 <34>1 ...`); the framing is recognised per message, as rsyslog does. At most
//! [`MAX_TCP_CONNECTIONS`] connections are served at once; more are closed at once.
//!
//! All of a listener's streams share the mail-log format's correlator, as every mail-log
//! source does.

use super::logsource::{ListenAddr, LogReporter, SourceError, WarnLimiter};
use super::maillog::format::MailLog;
use super::stage::run_stream;
use super::Source;
use crate::hub::{Hub, IngestStats};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, UdpSocket, UnixDatagram};
use tokio::sync::mpsc;

/// Bytes of datagrams queued for parsing at most (each counted with a fixed overhead too).
pub const QUEUE_BYTES: usize = 4 << 20;
/// What a queued datagram costs beyond its bytes (its allocation and queue slot), so a flood
/// of tiny datagrams is bounded too.
const DATAGRAM_OVERHEAD: usize = 64;
/// The largest datagram read whole (a UDP datagram's payload is at most 65,507 bytes).
const DATAGRAM_MAX: usize = 64 * 1024;
/// TCP connections served at once. A host forwards through one connection per relay (rsyslog,
/// syslog-ng), so a few dozen is plenty; the cap bounds what connections can hold, each up to
/// `max-line-bytes` of a long line.
pub const MAX_TCP_CONNECTIONS: usize = 64;

/// A bound syslog listener.
pub struct SyslogListener {
    bound: ListenAddr,
    socket: Bound,
    format: MailLog,
}

enum Bound {
    Udp(UdpSocket),
    Tcp(TcpListener),
    Unix(UnixDatagram),
}

impl SyslogListener {
    /// Binds `addr` (a Unix socket replaces a stale socket file and gets mode 0660). Must be
    /// called within a Tokio runtime.
    pub async fn bind(addr: &ListenAddr, format: MailLog) -> Result<SyslogListener, SourceError> {
        let err = |e: io::Error| bind_error(addr, e);
        let (socket, bound) = match addr {
            ListenAddr::Udp(a) => {
                let s = UdpSocket::bind(a).await.map_err(err)?;
                let bound = ListenAddr::Udp(s.local_addr().map_err(err)?);
                (Bound::Udp(s), bound)
            }
            ListenAddr::Tcp(a) => {
                let s = TcpListener::bind(a).await.map_err(err)?;
                let bound = ListenAddr::Tcp(s.local_addr().map_err(err)?);
                (Bound::Tcp(s), bound)
            }
            ListenAddr::Unix(p) => (Bound::Unix(bind_unix(p).map_err(err)?), addr.clone()),
        };
        Ok(SyslogListener { bound, socket, format })
    }

    /// What it listens on, with the port it was given (for a port 0), for the banner.
    pub fn describe(&self) -> String {
        format!("syslog {}", self.bound)
    }
}

/// Binds a Unix datagram socket at `path`, replacing a stale socket file, with mode 0660: only
/// its owner and group may send, as the lines carry mail metadata.
fn bind_unix(path: &Path) -> io::Result<UnixDatagram> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the path exists and is not a socket"));
        }
        std::fs::remove_file(path)?;
    }
    let s = UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(s)
}

/// The start-up error for a failed bind, with what to do about it.
fn bind_error(addr: &ListenAddr, e: io::Error) -> SourceError {
    let port = match addr {
        ListenAddr::Udp(a) | ListenAddr::Tcp(a) => Some(a.port()),
        ListenAddr::Unix(_) => None,
    };
    let shown = addr.to_string();
    match e.kind() {
        io::ErrorKind::AddrInUse => SourceError::AddrInUse { addr: shown },
        io::ErrorKind::PermissionDenied if port.is_some_and(|p| p != 0 && p < 1024) => {
            SourceError::PrivilegedPort { addr: shown }
        }
        kind => {
            let hint = match (kind, addr) {
                (io::ErrorKind::NotFound, ListenAddr::Unix(_)) => {
                    "; create its directory first (RuntimeDirectory=livetap in the systemd unit)"
                }
                (io::ErrorKind::AlreadyExists, ListenAddr::Unix(_)) => {
                    "; remove that file or choose another path"
                }
                (io::ErrorKind::PermissionDenied, ListenAddr::Unix(_)) => {
                    "; livetap's user must be able to write to its directory"
                }
                (io::ErrorKind::AddrNotAvailable, _) => {
                    "; the address is not one of this host's (use 127.0.0.1, or 0.0.0.0 for every address)"
                }
                _ => "",
            };
            SourceError::Bind { addr: shown, source: e, hint: hint.to_string() }
        }
    }
}

impl Source for SyslogListener {
    fn name(&self) -> &'static str {
        "syslog listener"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let SyslogListener { bound, socket, format } = *self;
            let label = bound.to_string();
            match socket {
                Bound::Udp(s) => datagrams(hub, Datagrams::Udp(s), format, label).await,
                Bound::Unix(s) => {
                    datagrams(hub, Datagrams::Unix(s), format, label).await;
                    if let ListenAddr::Unix(path) = &bound {
                        let _ = std::fs::remove_file(path);
                    }
                }
                Bound::Tcp(l) => tcp(hub, l, format, label).await,
            }
        })
    }
}

/// A datagram socket of either kind.
enum Datagrams {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

impl Datagrams {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Datagrams::Udp(s) => s.recv_from(buf).await.map(|(n, _)| n),
            Datagrams::Unix(s) => s.recv_from(buf).await.map(|(n, _)| n),
        }
    }
}

/// One datagram as one line: trailing NULs and line ends cut, inner line ends and NULs made
/// spaces, a newline added. `None` for an empty datagram.
pub fn datagram_line(d: &[u8]) -> Option<Vec<u8>> {
    let end = d.iter().rposition(|c| !matches!(c, b'\0' | b'\n' | b'\r')).map_or(0, |p| p + 1);
    if end == 0 {
        return None;
    }
    let mut line = Vec::with_capacity(end + 1);
    line.extend_from_slice(&d[..end]);
    for i in memchr::memchr3_iter(b'\n', b'\r', b'\0', &d[..end]) {
        line[i] = b' ';
    }
    line.push(b'\n');
    Some(line)
}

/// Receives datagrams until shutdown, queueing each as a line for the listener's stream.
async fn datagrams(hub: Arc<Hub>, socket: Datagrams, format: MailLog, label: String) {
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = DatagramReader { rx, current: Vec::new(), at: 0, queued: queued.clone() };
    let stream = tokio::spawn(run_stream(hub.clone(), reader, format, LogReporter::new(label.clone())));
    let mut shutdown = hub.shutdown_signal();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut drop_warn = WarnLimiter::new(Duration::from_secs(10));
    let mut error_warn = WarnLimiter::new(Duration::from_secs(10));
    loop {
        let n = tokio::select! {
            r = socket.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    if let Some(held_back) = error_warn.allow(Instant::now()) {
                        tracing::warn!(listener = %label, error = %e, held_back, "syslog receive failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(line) = datagram_line(&buf[..n]) else { continue };
        let cost = line.len() + DATAGRAM_OVERHEAD;
        // This loop is the queue's only producer, so the check and the add cannot race with
        // another add; the reader only subtracts.
        if queued.load(Ordering::Acquire) + cost > QUEUE_BYTES {
            IngestStats::add(&hub.ingest.syslog_dropped, 1);
            if let Some(held_back) = drop_warn.allow(Instant::now()) {
                tracing::warn!(listener = %label, held_back, "syslog messages dropped: parsing is behind and the queue is full");
            }
            continue;
        }
        queued.fetch_add(cost, Ordering::AcqRel);
        if tx.send(line).is_err() {
            break;
        }
    }
    drop(tx);
    stream.abort();
}

/// The stream side of the datagram queue: the queued lines, one after another.
struct DatagramReader {
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    /// Bytes queued and not yet read (with each datagram's overhead). Written by the receive
    /// loop (add) and this reader (subtract, once a datagram is read whole); `AcqRel`/`Acquire`
    /// so the loop never sees less than was really freed.
    queued: Arc<AtomicUsize>,
}

impl AsyncRead for DatagramReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        loop {
            if this.at < this.current.len() {
                let n = buf.remaining().min(this.current.len() - this.at);
                buf.put_slice(&this.current[this.at..this.at + n]);
                this.at += n;
                if this.at == this.current.len() {
                    this.queued.fetch_sub(this.current.len() + DATAGRAM_OVERHEAD, Ordering::AcqRel);
                }
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            // Take every datagram already queued, so a burst is read as one chunk.
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(line)) => {
                    this.current = line;
                    this.at = 0;
                }
                // The queue is closed: the end of the stream, after what was filled.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending if buf.filled().len() > before => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Accepts TCP connections until shutdown, each read through its own stream. The connections'
/// tasks belong to this one (a `JoinSet`), so when a configuration reload removes the source
/// and aborts its task, its open connections close with the listener instead of lasting
/// until their clients hang up.
async fn tcp(hub: Arc<Hub>, listener: TcpListener, format: MailLog, label: String) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut shutdown = hub.shutdown_signal();
    let mut refuse_warn = WarnLimiter::new(Duration::from_secs(10));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            // Ended connections are collected so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = %label, error = %e, "syslog accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                // Each connection ends by itself at shutdown, once what it read is published;
                // dropping the set would abort them in the middle of that.
                connections.detach_all();
                return;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            if let Some(held_back) = refuse_warn.allow(Instant::now()) {
                tracing::warn!(listener = %label, %peer, held_back, "syslog connection closed: {MAX_TCP_CONNECTIONS} are open already");
            }
            continue;
        };
        let (hub, format) = (hub.clone(), format.clone());
        let source = format!("{label} from {peer}");
        connections.spawn(async move {
            let _ = run_stream(hub, Rfc6587::new(stream), format, LogReporter::new(source)).await;
            drop(place);
        });
    }
}

/// Where the framing of a TCP syslog stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Before a message: octet counting or not is decided by its first bytes.
    Start,
    /// Inside a message that ends at a newline (or a NUL).
    Line,
    /// Inside an octet-counted message, with this many bytes left.
    Counted(u64),
    /// An octet-counted message was copied; its newline is still to be written.
    EndCounted,
}

/// Turns a TCP syslog stream into newline-ended lines: RFC 6587 octet-counted messages
/// (`LEN SP MSG`, their inner newlines made spaces) and newline- or NUL-ended ones, recognised
/// message by message. The longest count read is nine digits; anything else is a line.
pub struct Rfc6587<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    frame: Frame,
    eof: bool,
}

/// The framing reader's buffer.
const FRAMING_BUF: usize = 16 * 1024;

impl<R> Rfc6587<R> {
    /// Frames `inner`.
    pub fn new(inner: R) -> Rfc6587<R> {
        Rfc6587 {
            inner,
            buf: vec![0u8; FRAMING_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            frame: Frame::Start,
            eof: false,
        }
    }

    /// Moves what the buffered bytes allow into `out`. False when it needs more input.
    fn step(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let data = &self.buf[self.start..self.end];
        match self.frame {
            Frame::Start => {
                let skip =
                    data.iter().position(|c| !matches!(c, b'\n' | b'\r' | b'\0')).unwrap_or(data.len());
                if skip > 0 {
                    self.start += skip;
                    return true;
                }
                let Some(first) = data.first() else { return false };
                if !(b'1'..=b'9').contains(first) {
                    self.frame = Frame::Line;
                    return true;
                }
                let digits = data.iter().take(10).take_while(|c| c.is_ascii_digit()).count();
                match data.get(digits) {
                    Some(b' ') if digits <= 9 => {
                        let n = data[..digits].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
                        self.start += digits + 1;
                        self.frame = Frame::Counted(n);
                    }
                    None if digits < 10 && !self.eof => return false,
                    _ => self.frame = Frame::Line,
                }
                true
            }
            Frame::Line => {
                if data.is_empty() {
                    return false;
                }
                let room = data.len().min(out.remaining());
                let (n, ended) = match memchr::memchr2(b'\n', b'\0', &data[..room]) {
                    Some(i) => (i + 1, true),
                    None => (room, false),
                };
                out.put_slice(&data[..n]);
                if ended {
                    // A NUL ends a message as a newline does.
                    let at = out.filled().len() - 1;
                    out.filled_mut()[at] = b'\n';
                    self.frame = Frame::Start;
                }
                self.start += n;
                n > 0
            }
            Frame::Counted(left) => {
                let n = data.len().min(out.remaining()).min(usize::try_from(left).unwrap_or(usize::MAX));
                if n == 0 {
                    return false;
                }
                let from = out.filled().len();
                out.put_slice(&data[..n]);
                for c in &mut out.filled_mut()[from..] {
                    if matches!(c, b'\n' | b'\r' | b'\0') {
                        *c = b' ';
                    }
                }
                self.start += n;
                let left = left - n as u64;
                self.frame = if left == 0 { Frame::EndCounted } else { Frame::Counted(left) };
                true
            }
            Frame::EndCounted => {
                if out.remaining() == 0 {
                    return false;
                }
                out.put_slice(b"\n");
                self.frame = Frame::Start;
                true
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Rfc6587<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = out.filled().len();
        loop {
            while out.remaining() > 0 && this.step(out) {}
            if out.remaining() == 0 || out.filled().len() > before || this.eof {
                return Poll::Ready(Ok(()));
            }
            // Everything buffered is used: read more, at the start of the buffer when it is
            // empty, else after what is kept (at most a count's first digits).
            if this.start == this.end {
                this.start = 0;
                this.end = 0;
            } else if this.start > 0 {
                this.buf.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            let mut rb = ReadBuf::new(&mut this.buf[this.end..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        this.eof = true;
                    }
                    this.end += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn one_datagram_is_one_line() {
        assert_eq!(datagram_line(b"<13>x: a\n").unwrap(), b"<13>x: a\n");
        assert_eq!(datagram_line(b"<13>x: a\0").unwrap(), b"<13>x: a\n");
        assert_eq!(datagram_line(b"<13>x: a\r\n\0\0").unwrap(), b"<13>x: a\n");
        assert_eq!(datagram_line(b"<13>x: a\nb\r\nc\0d").unwrap(), b"<13>x: a b  c d\n");
        assert_eq!(datagram_line(b"<13>x: a").unwrap(), b"<13>x: a\n");
        assert_eq!(datagram_line(b""), None);
        assert_eq!(datagram_line(b"\n\0\r"), None);
    }

    /// A reader giving its bytes `step` at a time, to cut frames at every place.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.step.min(self.data.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn framed(data: &[u8], step: usize, read_size: usize) -> String {
        let mut r = Rfc6587::new(Trickle { data: data.to_vec(), at: 0, step });
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn tcp_framing() {
        let m5424 = "<22>1 2026-12-07T13:00:00Z mx postfix/smtpd 812 - - a\nb";
        let n = m5424.len();
        // Newline framing, two octet-counted messages (the second followed by a newline of
        // its sender's, which is no message), NUL framing, and lines that start with digits
        // but no count.
        let input = format!(
            "<22>Dec  7 13:00:00 mx postfix/smtpd[812]: newline framed\n\
             {n} {m5424}{n} {m5424}\n\
             <22>Dec  7 13:00:00 mx p[1]: nul framed\0\
             1234567890 <22>ten digits are not a count\n\
             2026-12-07T13:00:00Z mx p[1]: a time is not a count\n\
             7 <1>x: y\
             0 zero is not a count\n"
        );
        let m = m5424.replace('\n', " ");
        let want = format!(
            "<22>Dec  7 13:00:00 mx postfix/smtpd[812]: newline framed\n\
             {m}\n{m}\n\
             <22>Dec  7 13:00:00 mx p[1]: nul framed\n\
             1234567890 <22>ten digits are not a count\n\
             2026-12-07T13:00:00Z mx p[1]: a time is not a count\n\
             <1>x: y\n\
             0 zero is not a count\n"
        );
        for step in [1, 2, 3, 7, 64, 100_000] {
            for read_size in [1, 5, 64, 4096] {
                assert_eq!(
                    framed(input.as_bytes(), step, read_size).await,
                    want,
                    "step {step}, reads of {read_size}"
                );
            }
        }
    }

    #[tokio::test]
    async fn tcp_framing_at_the_end() {
        // A count cut off by the end of the stream is a line; a counted message cut off is
        // what arrived of it.
        assert_eq!(framed(b"123", 1, 64).await, "123");
        assert_eq!(framed(b"5 ab", 1, 64).await, "ab");
        assert_eq!(framed(b"x\n\n\n", 1, 64).await, "x\n");
        // A long count copies through in pieces, its newlines made spaces.
        let body = "a\n".repeat(20_000);
        let input = format!("{} {body}next\n", body.len());
        let out = framed(input.as_bytes(), 3000, 1000).await;
        assert_eq!(out, format!("{}\nnext\n", "a ".repeat(20_000)));
    }

    #[tokio::test]
    async fn the_datagram_queue_reads_as_a_stream() {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut r = DatagramReader { rx, current: Vec::new(), at: 0, queued: queued.clone() };
        for d in ["a\n", "bb\n", "ccc\n"] {
            queued.fetch_add(d.len() + DATAGRAM_OVERHEAD, Ordering::AcqRel);
            tx.send(d.as_bytes().to_vec()).unwrap();
        }
        // A small read takes part of a datagram; a large one takes what is queued.
        let mut small = [0u8; 2];
        assert_eq!(r.read(&mut small).await.unwrap(), 2);
        assert_eq!(&small, b"a\n");
        let mut big = [0u8; 64];
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"bb\nccc\n");
        assert_eq!(queued.load(Ordering::Acquire), 0);
        drop(tx);
        assert_eq!(r.read(&mut big).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn bind_errors_say_what_to_do() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr: ListenAddr = format!("udp://{}", taken.local_addr().unwrap()).parse().unwrap();
        let e = SyslogListener::bind(
            &addr,
            crate::ingest::maillog::format::MailLog::new(crate::ingest::maillog::format::Framing::Text, 0),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains(&addr.to_string())
                && e.contains("already in use")
                && e.contains("Another syslog daemon"),
            "{e}"
        );
        let e = bind_error(&"tcp://0.0.0.0:514".parse().unwrap(), io::ErrorKind::PermissionDenied.into())
            .to_string();
        assert!(e.contains("ports below 1024") && e.contains("5514"), "{e}");
        let e = bind_error(&"unix:///nowhere/x.sock".parse().unwrap(), io::ErrorKind::NotFound.into())
            .to_string();
        assert!(e.contains("unix:///nowhere/x.sock") && e.contains("create its directory"), "{e}");
        // A file that is not a socket is left alone.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plain");
        std::fs::write(&p, "keep").unwrap();
        let addr = ListenAddr::Unix(p.clone());
        let e = SyslogListener::bind(
            &addr,
            crate::ingest::maillog::format::MailLog::new(crate::ingest::maillog::format::Framing::Text, 0),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep");
    }
}
