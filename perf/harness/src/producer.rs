//! Producers: push template events into a hub at a fixed or maximum rate over the Unix socket,
//! HTTP NDJSON, the Stalwart webhook path, or (for Nchan) one HTTP publish per event.
//!
//! Each producer runs on its own OS thread with blocking I/O, builds lines from templates
//! (stamping `n` and the send time `t`), and paces itself against the run's clock. HTTP
//! producers retry a batch refused with 503, so what counts as sent is what the hub accepted.

use crate::pool::Template;
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where and how events are pushed.
#[derive(Debug, Clone)]
pub enum Via {
    /// NDJSON lines into the hub's Unix socket.
    Socket(PathBuf),
    /// `POST /api/telemetry/ingest` with NDJSON bodies.
    Http { addr: SocketAddr, token: String },
    /// `POST /api/telemetry/webhook` with `{"events":[...]}` bodies.
    Webhook { addr: SocketAddr, token: String },
    /// Nchan: one `POST /pub?id=CHANNELS` per event (channels, comma-separated: the filters it
    /// matches, and `all` for the firehose; split into requests of at most 255 channels, none
    /// when the list is empty).
    Nchan { addr: SocketAddr, channels: Arc<Vec<String>> },
}

/// Counters shared with the coordinator.
#[derive(Debug, Default)]
pub struct Sent {
    /// Events accepted by the hub (the run's `n` values are `0..accepted`).
    pub accepted: AtomicU64,
    /// Events the hub rejected (should stay zero).
    pub rejected: AtomicU64,
    /// Batches refused with 503 and retried.
    pub retries: AtomicU64,
}

/// Settings of one producer thread.
pub struct Producer {
    /// Where to send.
    pub via: Via,
    /// Events per second; `None` means as fast as the hub takes them.
    pub rate: Option<u64>,
    /// Events per write or request.
    pub batch: usize,
    /// Event templates.
    pub templates: Arc<Vec<Template>>,
    /// Closed-loop pacing: the producer never runs more than `window` events ahead of the
    /// slowest unfiltered subscriber's count (kept up to date by the coordinator).
    pub window: Option<(Arc<AtomicU64>, u64)>,
}

impl Producer {
    /// Runs until `stop`; returns the error that ended it early, if any.
    pub fn run(self, epoch: Instant, sent: Arc<Sent>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
        match self.via.clone() {
            Via::Socket(path) => self.socket(&path, epoch, &sent, &stop),
            Via::Http { addr, token } => {
                self.http(addr, "/api/telemetry/ingest", &token, false, epoch, &sent, &stop)
            }
            Via::Webhook { addr, token } => {
                self.http(addr, "/api/telemetry/webhook", &token, true, epoch, &sent, &stop)
            }
            Via::Nchan { addr, channels } => self.nchan(addr, &channels, epoch, &sent, &stop),
        }
    }

    /// Sleeps until event `n` is due at the configured rate, and with a window until the
    /// slowest reader is close enough.
    fn pace(&self, epoch: Instant, start: Duration, n: u64) {
        if let Some((slowest, window)) = &self.window {
            while n > slowest.load(Ordering::Relaxed) + window {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        if let Some(rate) = self.rate {
            let due = start + Duration::from_nanos(n.saturating_mul(1_000_000_000) / rate.max(1));
            let now = epoch.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }

    /// Replaces `out` with events `n..n + batch` stamped `t`: NDJSON lines, or a webhook body
    /// `{"events":[...]}`.
    fn write_batch(&self, out: &mut Vec<u8>, n: u64, t: u64, webhook: bool) {
        out.clear();
        if webhook {
            out.extend_from_slice(b"{\"events\":[");
        }
        let k = self.templates.len() as u64;
        for i in 0..self.batch as u64 {
            if webhook && i > 0 {
                out.push(b',');
            }
            self.templates[((n + i) % k) as usize].write_line(out, n + i, t);
            if !webhook {
                out.push(b'\n');
            }
        }
        if webhook {
            out.extend_from_slice(b"]}");
        }
    }

    fn socket(&self, path: &PathBuf, epoch: Instant, sent: &Sent, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut s = UnixStream::connect(path).with_context(|| format!("connecting {}", path.display()))?;
        // The hub writes a report line for each rejected line; read them so it never blocks.
        let reader = s.try_clone()?;
        let rejected = Arc::new(AtomicU64::new(0));
        let r2 = rejected.clone();
        std::thread::spawn(move || {
            // A thread blocked in `read` on a Unix socket is woken each time the hub reads from
            // it (the kernel signals "writable" on the same wait queue), 14,000 times a second at
            // one event per write: a wake-up of this thread and a cost on the hub's reading
            // thread that belong to neither. `poll` for input only is not woken by those.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
            let mut reader = reader;
            let mut buf = [0u8; 4096];
            // Counts non-empty lines across reads: a newline ends one unless it follows another.
            let mut at_line_start = true;
            loop {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd, and `fd` stays open while `reader` owns it.
                if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for &b in &buf[..n] {
                    if b == b'\n' {
                        if !at_line_start {
                            r2.fetch_add(1, Ordering::Relaxed);
                        }
                        at_line_start = true;
                    } else if !b.is_ascii_whitespace() {
                        at_line_start = false;
                    }
                }
            }
        });
        let start = epoch.elapsed();
        let mut n = 0u64;
        let mut buf = Vec::with_capacity(self.batch * 400);
        while !stop.load(Ordering::Relaxed) {
            self.pace(epoch, start, n);
            self.write_batch(&mut buf, n, epoch.elapsed().as_nanos() as u64, false);
            s.write_all(&buf)?;
            n += self.batch as u64;
            sent.accepted.store(n, Ordering::Relaxed);
        }
        s.flush()?;
        sent.rejected.store(rejected.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn http(
        &self,
        addr: SocketAddr,
        path: &str,
        token: &str,
        webhook: bool,
        epoch: Instant,
        sent: &Sent,
        stop: &AtomicBool,
    ) -> anyhow::Result<()> {
        let mut conn = Http::connect(addr)?;
        let start = epoch.elapsed();
        let mut n = 0u64;
        let mut body = Vec::with_capacity(self.batch * 400);
        while !stop.load(Ordering::Relaxed) {
            self.pace(epoch, start, n);
            self.write_batch(&mut body, n, epoch.elapsed().as_nanos() as u64, webhook);
            let ctype = if webhook { "application/json" } else { "application/x-ndjson" };
            loop {
                let (status, answer) = conn.request("POST", path, Some(token), ctype, &body)?;
                match status {
                    200 => {
                        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
                        let rej = v["rejected"].as_u64().unwrap_or(0);
                        sent.rejected.fetch_add(rej, Ordering::Relaxed);
                        break;
                    }
                    503 => {
                        sent.retries.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    s => bail!("{path} answered {s}: {}", String::from_utf8_lossy(&answer)),
                }
            }
            n += self.batch as u64;
            sent.accepted.store(n, Ordering::Relaxed);
        }
        Ok(())
    }

    fn nchan(
        &self,
        addr: SocketAddr,
        channels: &[String],
        epoch: Instant,
        sent: &Sent,
        stop: &AtomicBool,
    ) -> anyhow::Result<()> {
        // Nchan splits `?id=a,b,c` on the comma (`nchan_channel_id_split_delimiter` in
        // perf/nchan/nginx.conf) and publishes the message to each channel, at most 255 per
        // request (1.3.6 does not check that bound when splitting). Per template: the publish
        // paths, normally one; none when no subscriber wants the event.
        const MAX_CHANNELS: usize = 255;
        let paths: Vec<Vec<String>> = channels
            .iter()
            .map(|list| {
                let ids: Vec<&str> = list.split(',').filter(|c| !c.is_empty()).collect();
                ids.chunks(MAX_CHANNELS).map(|c| format!("/pub?id={}", c.join(","))).collect()
            })
            .collect();
        let mut conn = Http::connect(addr)?;
        let start = epoch.elapsed();
        let mut n = 0u64;
        let mut body = Vec::with_capacity(512);
        let k = self.templates.len() as u64;
        while !stop.load(Ordering::Relaxed) {
            self.pace(epoch, start, n);
            body.clear();
            let t = epoch.elapsed().as_nanos() as u64;
            let tpl = (n % k) as usize;
            // Nchan carries the same event bytes livetap sends: the event object in an array,
            // the shape of a livetap trace frame's data.
            body.push(b'[');
            self.templates[tpl].write_line(&mut body, n, t);
            body.push(b']');
            for path in &paths[tpl] {
                let (status, answer) = conn.request("POST", path, None, "application/json", &body)?;
                if !(200..300).contains(&status) {
                    bail!("nchan publish answered {status}: {}", String::from_utf8_lossy(&answer));
                }
            }
            n += 1;
            sent.accepted.store(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A minimal blocking HTTP/1.1 keep-alive client (requests with Content-Length bodies,
/// answers with Content-Length or chunked bodies).
pub struct Http {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Http {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Http { stream: BufReader::with_capacity(1 << 16, s), addr })
    }

    /// Sends one request and reads the whole answer: `(status, body)`.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        ctype: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut line = String::new();
        // A server may close a keep-alive connection between requests (nginx does after
        // `keepalive_requests`); then the request is sent again on a fresh connection. Nothing
        // was processed in that case: the close came before any answer.
        for attempt in 0..2 {
            let sent = {
                let w = self.stream.get_mut();
                w.write_all(head.as_bytes()).and_then(|_| w.write_all(body))
            };
            line.clear();
            let answered = sent.is_ok() && self.stream.read_line(&mut line).map(|n| n > 0).unwrap_or(false);
            if answered {
                break;
            }
            if attempt == 1 {
                bail!("connection to {} closed without an answer", self.addr);
            }
            *self = Http::connect(self.addr)?;
        }
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status == 0 {
            bail!("no HTTP answer (got {line:?})");
        }
        let mut len = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk)?;
                out.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = len {
            out.resize(n, 0);
            self.stream.read_exact(&mut out)?;
        }
        Ok((status, out))
    }
}
