//! One SSE subscriber over a raw TCP connection: sends the request, de-chunks the body, splits
//! frames, and for every delivered event reads its `n` and `t` fields to count it, check order,
//! and record its end-to-end latency.
//!
//! The scan does not build JSON values: it looks for `"total":` (`n`) and `"uid":` (`t`) in each `data:` line,
//! which is what lets one harness core keep up with a hub delivering millions of events.
//!
//! All subscribers record into one shared pair of histograms ([`Latencies`]), once per read. A
//! histogram of this range is about 140 KB; one per subscriber made the harness fault in fresh
//! pages of 1,010 of them whenever latencies reached a new range, which held its reader back at
//! the start of a run and put that in the measured tail (`perf/RESULTS.md` §11).

use hdrhistogram::Histogram;
use memchr::memmem;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Live counters of one subscriber, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events received.
    pub received: AtomicU64,
    /// Events whose `n` was not above the previous one (duplicates or reordering).
    pub out_of_order: AtomicU64,
    /// Events the hub reported as dropped for this subscriber (`event: lagged`).
    pub lagged: AtomicU64,
    /// Payload bytes received (after de-chunking).
    pub bytes: AtomicU64,
    /// Set when the stream ended or failed.
    pub ended: AtomicBool,
}

/// What a finished subscriber hands back.
pub struct Outcome {
    /// Why the stream ended, if it failed.
    pub error: Option<String>,
}

/// The run's end-to-end latencies in microseconds, shared by every subscriber: every event, and
/// separately the events sent after the warm-up (the steady state).
pub struct Latencies {
    /// Every event of the run.
    pub all: Mutex<Histogram<u64>>,
    /// Events sent at or after `steady_from_ns`.
    pub steady: Mutex<Histogram<u64>>,
    /// Send time (nanoseconds since the run's epoch) from which an event counts as steady
    /// state; `u64::MAX` until the load starts.
    pub steady_from_ns: AtomicU64,
    /// Per [`SLICE_NS`] of send time since the run's epoch: where in the run the slow
    /// deliveries were, so a burst at the start can be told from one spread over the run.
    pub timeline: Mutex<Vec<Slice>>,
}

/// Width of one timeline slice: 100 ms of send time.
pub const SLICE_NS: u64 = 100_000_000;

/// A latency at or above this is counted as slow in the timeline (the `fanout-1k` target).
pub const SLOW_US: u64 = 5_000;

/// The deliveries of events sent within one slice of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slice {
    /// Events delivered.
    pub events: u64,
    /// Of those, delivered [`SLOW_US`] or more after they were sent.
    pub slow: u64,
    /// The slowest delivery, microseconds.
    pub max_us: u64,
}

impl Latencies {
    /// Empty histograms (1 µs to 60 s, three significant digits) whose memory is already faulted
    /// in, so recording never waits for the kernel.
    pub fn new() -> Arc<Latencies> {
        let h = || {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            // The counts are allocated zeroed but untouched; recording the range's top and
            // resetting writes every count once.
            let _ = h.record(60_000_000);
            h.reset();
            Mutex::new(h)
        };
        Arc::new(Latencies {
            all: h(),
            steady: h(),
            steady_from_ns: AtomicU64::new(u64::MAX),
            // 10 minutes of slices, so recording never grows the vector.
            timeline: Mutex::new(vec![Slice::default(); 6_000]),
        })
    }

    /// Records `(send time ns, latency µs)` pairs, taking each lock once.
    fn record(&self, lat: &mut Vec<(u64, u64)>) {
        let from = self.steady_from_ns.load(Ordering::Relaxed);
        {
            let mut all = self.all.lock().expect("no recorder panics while holding the histogram");
            for &(_, v) in lat.iter() {
                let _ = all.record(v);
            }
        }
        {
            let mut timeline = self.timeline.lock().expect("no recorder panics while holding the timeline");
            for &(t, v) in lat.iter() {
                if let Some(slice) = timeline.get_mut((t / SLICE_NS) as usize) {
                    slice.events += 1;
                    slice.slow += u64::from(v >= SLOW_US);
                    slice.max_us = slice.max_us.max(v);
                }
            }
        }
        if lat.iter().any(|&(t, _)| t >= from) {
            let mut steady = self.steady.lock().expect("no recorder panics while holding the histogram");
            for &(_, v) in lat.iter().filter(|&&(t, _)| t >= from) {
                let _ = steady.record(v);
            }
        }
        lat.clear();
    }
}

/// How the subscriber talks to its hub.
#[derive(Debug, Clone)]
pub struct Target {
    /// Hub address.
    pub addr: SocketAddr,
    /// Request path and query.
    pub path: String,
    /// Bearer token, if the hub needs one.
    pub token: Option<String>,
}

/// An open stream after a 200: the socket, body bytes that came with the headers, and whether
/// the body is chunked.
pub type Connected = (TcpStream, Vec<u8>, bool);

/// Connects and sends the request; returns the stream once the response headers said 200,
/// plus any body bytes that arrived with the headers.
pub async fn connect(target: &Target) -> anyhow::Result<Connected> {
    let mut s = TcpStream::connect(target.addr).await?;
    s.set_nodelay(true)?;
    let auth = target.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{auth}\r\n",
        target.path, target.addr
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(8192);
    let mut tmp = [0u8; 4096];
    let end = loop {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            anyhow::bail!("connection closed before the response headers");
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            anyhow::bail!("response headers too large");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        anyhow::bail!("{} -> {}", target.path, head.lines().next().unwrap_or(""));
    }
    let chunked = head.contains("transfer-encoding: chunked");
    Ok((s, buf[end..].to_vec(), chunked))
}

/// Incremental de-chunker for `Transfer-Encoding: chunked`.
#[derive(Default)]
struct Dechunk {
    /// Bytes left in the current chunk's data.
    left: usize,
    /// Bytes of the `\r\n` after a chunk's data still to skip.
    crlf: usize,
    /// A partial size line.
    line: Vec<u8>,
}

impl Dechunk {
    /// Appends the payload in `input` to `out`.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.left > 0 {
                let n = self.left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n;
                input = &input[n..];
                if self.left == 0 {
                    self.crlf = 2;
                }
            } else if self.crlf > 0 {
                let n = self.crlf.min(input.len());
                self.crlf -= n;
                input = &input[n..];
            } else {
                match memchr::memchr(b'\n', input) {
                    Some(i) => {
                        self.line.extend_from_slice(&input[..i]);
                        input = &input[i + 1..];
                        let text = String::from_utf8_lossy(&self.line);
                        let hex = text.trim().split(';').next().unwrap_or("");
                        self.left = usize::from_str_radix(hex, 16).unwrap_or(0);
                        self.line.clear();
                    }
                    None => {
                        self.line.extend_from_slice(input);
                        input = &[];
                    }
                }
            }
        }
    }
}

/// Reads the digits right after `key` in `s` starting at `from`; returns the value and the
/// position after it.
#[inline]
fn number_after(finder: &memmem::Finder<'_>, s: &[u8], from: usize) -> Option<(u64, usize)> {
    let at = from + finder.find(&s[from..])? + finder.needle().len();
    let mut v = 0u64;
    let mut i = at;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v * 10 + u64::from(s[i] - b'0');
        i += 1;
    }
    (i > at).then_some((v, i))
}

/// Where the line starting at `start` in `body` ends (the position of its newline), searching
/// only from `searched` on when the first `searched` bytes are known to hold none.
#[inline]
fn line_end(body: &[u8], start: usize, searched: usize) -> Option<usize> {
    let from = start.max(searched);
    memchr::memchr(b'\n', &body[from..]).map(|i| from + i)
}

/// Runs one subscriber until `stop` is set or the stream ends. `epoch` is the run's clock
/// origin shared with the producers (event `t` fields are nanoseconds since it).
pub async fn run(
    conn: Connected,
    progress: Arc<Progress>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    latencies: Arc<Latencies>,
) -> Outcome {
    let error = match stream(conn, &progress, epoch, &stop, &latencies).await {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    };
    progress.ended.store(true, Ordering::SeqCst);
    Outcome { error }
}

async fn stream(
    conn: Connected,
    progress: &Progress,
    epoch: Instant,
    stop: &AtomicBool,
    hist: &Latencies,
) -> anyhow::Result<()> {
    let (mut s, first, chunked) = conn;
    let n_key = memmem::Finder::new(b"\"total\":");
    let t_key = memmem::Finder::new(b"\"uid\":");
    let mut dechunk = Dechunk::default();
    let mut body: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut raw = vec![0u8; 1 << 16];
    let mut last_n: Option<u64> = None;
    let mut event_name: Vec<u8> = Vec::new();
    // This read's latencies, recorded into the shared histogram under one lock.
    let mut lat: Vec<(u64, u64)> = Vec::new();
    // Bytes go from the socket buffer straight into the de-chunked body: one copy.
    let mut feed = |input: &[u8], body: &mut Vec<u8>| {
        if chunked {
            dechunk.feed(input, body);
        } else {
            body.extend_from_slice(input);
        }
    };
    feed(&first, &mut body);
    // Bytes at the start of `body` already searched for a newline: a frame's `data:` line holds
    // up to 1,024 events (300 KB and more), which arrives over several reads, and searching it
    // from its start after every read made the reader's work grow with the square of the line.
    let mut searched = 0;
    loop {
        // Handle every complete line in the body buffer.
        let mut start = 0;
        let mut received = 0u64;
        let mut disorder = 0u64;
        while let Some(end) = line_end(&body, start, searched) {
            let line = &body[start..end];
            start = end + 1;
            if line.is_empty() {
                event_name.clear();
            } else if let Some(name) = line.strip_prefix(b"event: ") {
                event_name.clear();
                event_name.extend_from_slice(name);
            } else if let Some(data) = line.strip_prefix(b"data: ").or_else(|| line.strip_prefix(b"data:")) {
                if event_name == b"lagged" {
                    let k = memmem::Finder::new(b"\"dropped\":");
                    if let Some((d, _)) = number_after(&k, data, 0) {
                        progress.lagged.fetch_add(d, Ordering::Relaxed);
                    }
                    continue;
                }
                if !(event_name.is_empty() || event_name == b"trace" || event_name == b"message") {
                    continue;
                }
                let now = epoch.elapsed().as_nanos() as u64;
                let mut pos = 0;
                while let Some((n, after)) = number_after(&n_key, data, pos) {
                    pos = after;
                    if last_n.is_some_and(|l| n <= l) {
                        disorder += 1;
                    }
                    last_n = Some(n);
                    received += 1;
                    if let Some((t, after)) = number_after(&t_key, data, pos) {
                        pos = after;
                        lat.push((t, (now.saturating_sub(t) / 1000).max(1)));
                    }
                }
            }
        }
        body.drain(..start);
        // What is left is one incomplete line with no newline in it.
        searched = body.len();
        if !lat.is_empty() {
            hist.record(&mut lat);
        }
        if received > 0 {
            progress.received.fetch_add(received, Ordering::Relaxed);
        }
        if disorder > 0 {
            progress.out_of_order.fetch_add(disorder, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // The stop flag is checked at least every 200 ms even on a silent stream.
        let read = tokio::time::timeout(std::time::Duration::from_millis(200), s.read(&mut raw)).await;
        match read {
            Err(_) => continue,
            Ok(Ok(0)) => anyhow::bail!("stream closed by the hub"),
            Ok(Ok(n)) => {
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                feed(&raw[..n], &mut body);
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_reads() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for split in 1..body.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            d.feed(&body[..split], &mut out);
            d.feed(&body[split..], &mut out);
            assert_eq!(out, b"hello world", "split at {split}");
        }
    }

    #[test]
    fn line_ends_skip_what_was_searched() {
        let body = b"data: [1,2,3]\nevent: x\n\npartial";
        assert_eq!(line_end(body, 0, 0), Some(13));
        assert_eq!(line_end(body, 14, 0), Some(22));
        assert_eq!(line_end(body, 23, 0), Some(23));
        assert_eq!(line_end(body, 24, 0), None);
        // The first 10 bytes were searched before more arrived: the answer is the same.
        assert_eq!(line_end(body, 0, 10), Some(13));
        assert_eq!(line_end(b"0123456789\n", 0, 10), Some(10));
    }

    #[test]
    fn finds_numbers() {
        let k = memmem::Finder::new(b"\"total\":");
        let s = br#"[{"data":{"total":12,"uid":5}},{"data":{"total":13,"uid":6}}]"#;
        let (a, p) = number_after(&k, s, 0).unwrap();
        let (b, _) = number_after(&k, s, p).unwrap();
        assert_eq!((a, b), (12, 13));
    }
}
