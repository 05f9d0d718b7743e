//! Shared helpers of the integration tests: a tiny HTTP/1.1 client, an incremental SSE client
//! (chunked decoding + frame parsing), a server starter, and event builders.
//!
//! Every wait here has a safety deadline so a broken build fails instead of hanging; tests
//! never assert on elapsed time.

#![allow(dead_code)]

use livetap::{Config, Server};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub mod maillog;

/// The admin token every test server is started with.
pub const TOKEN: &str = "integration-test-admin-token-0123";

/// Safety deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Starts a real server on 127.0.0.1:0 with small, test-friendly settings.
pub async fn start_server(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        matcher_threads: 2,
        ring_capacity: 8192,
        drain_timeout_secs: 3,
        ..Config::default()
    };
    tweak(&mut c);
    Server::start(c, TOKEN.to_string()).await.expect("server starts")
}

/// `Authorization: Bearer TOKEN`.
pub fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The (de-chunked) body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request over a fresh connection with `Connection: close` and reads the answer.
/// `Content-Length` is added unless the caller passes a `Transfer-Encoding` header (then
/// `body` must already be encoded).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let chunked = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !chunked && (!body.is_empty() || method == "POST" || method == "PUT") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    request_raw_inner(addr, &raw, method == "HEAD").await
}

/// Convenience: a request with the admin bearer token.
pub async fn request_auth(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let auth = format!("Bearer {TOKEN}");
    request(addr, method, path, &[("Authorization", &auth)], body).await
}

/// POSTs NDJSON (or a JSON array) to the ingest endpoint with the admin token.
pub async fn ingest(addr: SocketAddr, body: &[u8]) -> Response {
    let auth = format!("Bearer {TOKEN}");
    request(
        addr,
        "POST",
        "/api/telemetry/ingest",
        &[("Authorization", &auth), ("Content-Type", "application/x-ndjson")],
        body,
    )
    .await
}

/// Ingests `events` as NDJSON and asserts they were all accepted.
pub async fn ingest_ok(addr: SocketAddr, events: &[Value]) -> Value {
    let r = ingest(addr, &ndjson(events)).await;
    assert_eq!(r.status, 200, "ingest failed: {}", r.text());
    let j = r.json();
    assert_eq!(j["accepted"], events.len(), "answer: {j}");
    assert_eq!(j["rejected"], 0, "answer: {j}");
    j
}

/// GET /api/livetap/stats.
pub async fn stats(addr: SocketAddr) -> Value {
    let r = request_auth(addr, "GET", "/api/livetap/stats", b"").await;
    assert_eq!(r.status, 200, "stats: {}", r.text());
    r.json()
}

/// Events as NDJSON.
pub fn ndjson(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        serde_json::to_writer(&mut out, e).unwrap();
        out.push(b'\n');
    }
    out
}

/// Sends raw request bytes and reads the whole response (until EOF, the connection is
/// `close`d). Tolerates a reset after the response (the server may close with unread body).
pub async fn request_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    request_raw_inner(addr, raw, false).await
}

async fn request_raw_inner(addr: SocketAddr, raw: &[u8], head: bool) -> Response {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may answer (and close) before reading the whole body: ignore write errors.
        let _ = s.write_all(raw).await;
        let mut buf = Vec::new();
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut tmp).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(_) if !buf.is_empty() => break,
                Err(e) => panic!("reading the response failed: {e}"),
            }
            if let Some(r) = parse_complete_response(&buf, false, head) {
                return r;
            }
        }
        parse_complete_response(&buf, true, head)
            .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&buf)))
    };
    tokio::time::timeout(DEADLINE, fut).await.expect("response within the safety deadline")
}

/// Parses status line and headers; returns `(status, headers, header length)`.
/// Headers with lowercased names, in order.
type Headers = Vec<(String, String)>;

fn parse_head(buf: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..end - 4]).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    assert!(version.starts_with("HTTP/1."), "status line: {status_line}");
    let status = parts.next()?.parse().expect("numeric status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, end))
}

fn parse_complete_response(buf: &[u8], at_eof: bool, head: bool) -> Option<Response> {
    let (status, headers, start) = parse_head(buf)?;
    if head {
        return Some(Response { status, headers, body: Vec::new() });
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let rest = &buf[start..];
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        d.feed(rest, &mut out);
        if !d.done {
            return None;
        }
        out
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("numeric content-length");
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if at_eof {
        // Close-delimited: complete at EOF.
        rest.to_vec()
    } else {
        return None;
    };
    Some(Response { status, headers, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Incremental decoder of `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
pub struct Dechunker {
    pending: Vec<u8>,
    /// Bytes left in the current chunk's data.
    in_chunk: usize,
    /// Expecting the CRLF after a chunk's data.
    want_crlf: bool,
    /// Saw the zero-size chunk and the end of the trailers.
    pub done: bool,
}

impl Dechunker {
    /// Feeds raw bytes, appending decoded body bytes to `out`.
    pub fn feed(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(raw);
        let mut pos = 0;
        loop {
            if self.done {
                break;
            }
            if self.in_chunk > 0 {
                let n = self.in_chunk.min(self.pending.len() - pos);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&self.pending[pos..pos + n]);
                pos += n;
                self.in_chunk -= n;
                if self.in_chunk == 0 {
                    self.want_crlf = true;
                }
                continue;
            }
            if self.want_crlf {
                if self.pending.len() - pos < 2 {
                    break;
                }
                assert_eq!(&self.pending[pos..pos + 2], b"\r\n", "chunk data not followed by CRLF");
                pos += 2;
                self.want_crlf = false;
                continue;
            }
            let Some(eol) = find(&self.pending[pos..], b"\r\n") else { break };
            let line = std::str::from_utf8(&self.pending[pos..pos + eol]).expect("ASCII chunk size");
            let size_text = line.split(';').next().unwrap().trim();
            let size = usize::from_str_radix(size_text, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                let Some(end) = find(&self.pending[pos..], b"\r\n\r\n") else { break };
                pos += end + 4;
                self.done = true;
                break;
            }
            pos += eol + 2;
            self.in_chunk = size;
        }
        self.pending.drain(..pos);
    }
}

/// One SSE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// What [`SseClient::collect`] gathered.
#[derive(Debug, Default)]
pub struct Collected {
    /// Events from `trace` frames, flattened, in order.
    pub events: Vec<Value>,
    /// `id:` of every `trace` frame, in order.
    pub ids: Vec<u64>,
    /// `ping` frames seen.
    pub pings: usize,
    /// `lagged` frames seen (their `dropped` counts).
    pub lagged: Vec<u64>,
}

/// A live-stream client over one raw TCP connection.
pub struct SseClient {
    /// Status of the answer.
    pub status: u16,
    /// Headers of the answer (names lowercased).
    pub headers: Vec<(String, String)>,
    /// For a non-200 answer: its body.
    pub error_body: Option<Vec<u8>>,
    stream: TcpStream,
    chunked: bool,
    dechunker: Dechunker,
    /// Decoded body bytes not yet parsed into frames.
    data: Vec<u8>,
    /// The connection reached EOF (or an error).
    pub eof: bool,
    /// Comment lines seen (`: ...`).
    pub comments: usize,
}

impl SseClient {
    /// Sends the GET and reads the status and headers. On a 200 answer the server has already
    /// registered the subscription in the matcher index, so events ingested afterwards reach it.
    pub async fn connect(addr: SocketAddr, path_and_query: &str, token: Option<&str>) -> SseClient {
        tokio::time::timeout(DEADLINE, Self::connect_inner(addr, path_and_query, token))
            .await
            .expect("SSE answer within the safety deadline")
    }

    /// Like [`SseClient::connect`], over a socket whose receive buffer is `rcvbuf` bytes, so
    /// that a client that pauses reading makes the server's writes block quickly.
    pub async fn connect_small_buffer(
        addr: SocketAddr,
        pq: &str,
        token: Option<&str>,
        rcvbuf: u32,
    ) -> SseClient {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(rcvbuf).unwrap();
        let fut = async {
            let stream = sock.connect(addr).await.expect("connect");
            Self::connect_over(stream, addr, pq, token).await
        };
        tokio::time::timeout(DEADLINE, fut).await.expect("SSE answer within the safety deadline")
    }

    async fn connect_inner(addr: SocketAddr, pq: &str, token: Option<&str>) -> SseClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::connect_over(stream, addr, pq, token).await
    }

    async fn connect_over(
        mut stream: TcpStream,
        addr: SocketAddr,
        pq: &str,
        token: Option<&str>,
    ) -> SseClient {
        let mut req = format!("GET {pq} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("send request");
        Self::read_answer(stream).await
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The error body as JSON.
    pub fn error_json(&self) -> Value {
        let b = self.error_body.as_ref().expect("an error answer");
        serde_json::from_slice(b)
            .unwrap_or_else(|e| panic!("error body not JSON ({e}): {:?}", String::from_utf8_lossy(b)))
    }

    /// The connection, to write on it.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The connection, taking the client apart.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// True when the body ended with the chunked terminator (a clean end of stream).
    pub fn ended_cleanly(&self) -> bool {
        self.chunked && self.dechunker.done
    }

    fn ingest_raw(&mut self, raw: &[u8]) {
        if self.chunked {
            self.dechunker.feed(raw, &mut self.data);
        } else {
            self.data.extend_from_slice(raw);
        }
    }

    async fn read_more(&mut self) {
        let mut tmp = vec![0u8; 64 * 1024];
        match self.stream.read(&mut tmp).await {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => self.ingest_raw(&tmp[..n]),
        }
    }

    fn finished(&self) -> bool {
        self.eof || (self.chunked && self.dechunker.done)
    }

    /// Parses one complete frame from the buffer, if there is one. Frames carrying no field
    /// (only comments or `retry:`) are skipped.
    fn parse_frame(&mut self) -> Option<Frame> {
        loop {
            let end = find(&self.data, b"\n\n")?;
            let block: Vec<u8> = self.data.drain(..end + 2).collect();
            let text = String::from_utf8(block).expect("UTF-8 SSE");
            let mut frame = Frame { id: None, event: "message".into(), data: String::new() };
            let mut has_data = false;
            let mut has_field = false;
            for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
                if line.is_empty() {
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (name, value) = match line.split_once(':') {
                    Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match name {
                    "id" => {
                        frame.id = Some(value.to_string());
                        has_field = true;
                    }
                    "event" => {
                        frame.event = value.to_string();
                        has_field = true;
                    }
                    "data" => {
                        if has_data {
                            frame.data.push('\n');
                        }
                        frame.data.push_str(value);
                        has_data = true;
                        has_field = true;
                    }
                    _ => {}
                }
            }
            if has_field {
                return Some(frame);
            }
        }
    }

    /// The next frame, or `None` when the stream ended or `timeout` passed first.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.parse_frame() {
                return Some(f);
            }
            if self.finished() {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(()) => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads frames until `n` events arrived, the stream ended, or `overall` passed.
    pub async fn collect(&mut self, n: usize, overall: Duration) -> Collected {
        self.collect_until(overall, |c| c.events.len() >= n).await
    }

    /// Reads frames until `done(&collected)` holds, the stream ended, or `overall` passed.
    pub async fn collect_until(
        &mut self,
        overall: Duration,
        mut done: impl FnMut(&Collected) -> bool,
    ) -> Collected {
        let deadline = Instant::now() + overall;
        let mut c = Collected::default();
        while !done(&c) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(f) = self.next_frame(left).await else { break };
            self.absorb(f, &mut c);
        }
        c
    }

    fn absorb(&mut self, f: Frame, c: &mut Collected) {
        match f.event.as_str() {
            "trace" => {
                let events: Vec<Value> = serde_json::from_str(&f.data)
                    .unwrap_or_else(|e| panic!("trace data is not a JSON array ({e}): {}", f.data));
                let id = f.id.as_deref().expect("trace frames carry an id");
                c.ids.push(id.parse().expect("numeric id"));
                c.events.extend(events);
            }
            "ping" => c.pings += 1,
            "lagged" => {
                let v: Value = serde_json::from_str(&f.data).expect("lagged data is JSON");
                c.lagged.push(v["dropped"].as_u64().expect("dropped count"));
            }
            other => panic!("unexpected SSE event {other:?}: {f:?}"),
        }
    }

    /// Flattened events of `trace` frames until `n` arrived (or the deadline).
    pub async fn collect_events(&mut self, n: usize, overall: Duration) -> Vec<Value> {
        self.collect(n, overall).await.events
    }

    /// Counts events without building JSON values (for large volumes). Returns
    /// `(events, trace frames, lagged frames)` once `n` events arrived or the deadline passed.
    pub async fn count_events(&mut self, n: usize, overall: Duration) -> (usize, usize, usize) {
        let deadline = Instant::now() + overall;
        let (mut events, mut frames, mut lagged) = (0, 0, 0);
        while events < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(f) = self.next_frame(left).await else { break };
            match f.event.as_str() {
                "trace" => {
                    let v: Vec<serde::de::IgnoredAny> =
                        serde_json::from_str(&f.data).expect("trace data is a JSON array");
                    events += v.len();
                    frames += 1;
                }
                "lagged" => lagged += 1,
                "ping" => {}
                other => panic!("unexpected SSE event {other:?}"),
            }
        }
        (events, frames, lagged)
    }

    /// Waits for the end of the stream (chunked terminator or EOF); returns the frames that
    /// arrived before it. Panics if the stream is still open at the deadline.
    pub async fn expect_end(&mut self, overall: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + overall;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Some(f) => frames.push(f),
                None => {
                    assert!(self.finished(), "the stream did not end before the safety deadline");
                    return frames;
                }
            }
        }
    }
}

/// Asserts the ids are strictly increasing.
pub fn assert_increasing(ids: &[u64]) {
    for w in ids.windows(2) {
        assert!(w[0] < w[1], "frame ids not strictly increasing: {ids:?}");
    }
}

/// The values of `data[key]` of each event.
pub fn field(events: &[Value], key: &str) -> Vec<Value> {
    events.iter().map(|e| e["data"][key].clone()).collect()
}

/// Polls the stats endpoint until `pred` holds (panics at the safety deadline with the last
/// snapshot). Counters that matcher threads update after delivering need this.
pub async fn wait_stats(addr: SocketAddr, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = stats(addr).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not reached before the safety deadline: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of this process (the in-process server included), from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    rss_bytes_of("self")
}

/// Resident memory of process `pid` (a number, or `self`), from /proc/PID/statm.
pub fn rss_bytes_of(pid: &str) -> u64 {
    let path = format!("/proc/{pid}/statm");
    let statm = std::fs::read_to_string(&path).expect(&path);
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// Raises this process's open-file soft limit to its hard limit (many-connection tests);
/// returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur
    }
}

impl SseClient {
    /// Like [`SseClient::connect`], with arbitrary request headers (no bearer token added).
    pub async fn connect_with(addr: SocketAddr, pq: &str, headers: &[(&str, &str)]) -> SseClient {
        let fut = async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let mut req = format!("GET {pq} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            req.push_str("\r\n");
            stream.write_all(req.as_bytes()).await.expect("send request");
            Self::read_answer(stream).await
        };
        tokio::time::timeout(DEADLINE, fut).await.expect("SSE answer within the safety deadline")
    }

    /// Reads the status and headers of an answer on `stream` (the request was sent).
    pub async fn read_answer(mut stream: TcpStream) -> SseClient {
        let mut buf = Vec::new();
        let mut tmp = vec![0u8; 16 * 1024];
        let (status, headers, start) = loop {
            if let Some(h) = parse_head(&buf) {
                break h;
            }
            let n = stream.read(&mut tmp).await.expect("read head");
            assert!(n > 0, "connection closed before the response head: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&tmp[..n]);
        };
        let chunked =
            headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let mut c = SseClient {
            status,
            headers,
            error_body: None,
            stream,
            chunked,
            dechunker: Dechunker::default(),
            data: Vec::new(),
            eof: false,
            comments: 0,
        };
        let rest = buf[start..].to_vec();
        c.ingest_raw(&rest);
        if status != 200 {
            let len = c.header("content-length").and_then(|v| v.parse::<usize>().ok());
            loop {
                let complete =
                    if c.chunked { c.dechunker.done } else { len.is_some_and(|l| c.data.len() >= l) };
                if complete || c.eof {
                    break;
                }
                c.read_more().await;
            }
            c.error_body = Some(std::mem::take(&mut c.data));
        }
        c
    }
}

/// The `livetap` binary started as the tests start it: on a free loopback port, with the test
/// admin token and `matcher_threads`, no token or log settings from the environment, stdin
/// closed and stdout piped (the banner gives the address). Add arguments and spawn.
pub fn livetap_command(matcher_threads: u32) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_livetap"));
    c.args(["--listen", "127.0.0.1:0", "--admin-token", TOKEN, "--matcher-threads"])
        .arg(matcher_threads.to_string())
        .env_remove("LIVETAP_ADMIN_TOKEN")
        .env_remove("LIVETAP_WEBHOOK_KEY")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    c
}

/// Asserts that each of `streams` was closed by the server without a byte sent to it (idle
/// connections cut off by a timeout).
pub async fn assert_closed_silently<'a>(streams: impl IntoIterator<Item = &'a mut TcpStream>) {
    let mut buf = [0u8; 16];
    for s in streams {
        let r = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await.expect("closed by the server");
        assert!(matches!(r, Ok(0) | Err(_)), "an idle connection got bytes");
    }
}

/// An HTTP/1.1 chunked body: `data` cut into chunks of `chunk` bytes, then the last chunk.
pub fn chunked_body(data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / chunk.max(1) * 10 + 5);
    for piece in data.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// POSTs `data` to the NDJSON ingest endpoint as a chunked body (chunks of `chunk` bytes), with
/// the admin token.
pub async fn ingest_chunked(addr: SocketAddr, data: &[u8], chunk: usize) -> Response {
    let auth = format!("Bearer {TOKEN}");
    let body = chunked_body(data, chunk);
    request(
        addr,
        "POST",
        "/api/telemetry/ingest",
        &[("Authorization", &auth), ("Transfer-Encoding", "chunked")],
        &body,
    )
    .await
}

/// A running `livetap` process; killed on drop if the test did not stop it.
pub struct Livetap {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Everything it printed on stdout so far.
    pub stdout: Arc<Mutex<String>>,
    /// Everything it printed on stderr so far.
    pub stderr: Arc<Mutex<String>>,
}

impl Livetap {
    /// Starts the binary with `extra` arguments (two matcher threads) and waits for its banner.
    pub fn start(extra: &[&str]) -> Livetap {
        let mut child = livetap_command(2).args(extra).stderr(Stdio::piped()).spawn().expect("spawn livetap");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let out = child.stdout.take().unwrap();
            let log = stdout.clone();
            std::thread::spawn(move || {
                let mut addr = None;
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        addr = Some(rest.trim().to_string());
                    }
                    // The `try:` line ends the banner.
                    if line.trim_start().starts_with("try:") {
                        if let Some(a) = addr.take() {
                            let _ = tx.send(a);
                        }
                    }
                }
            });
        }
        {
            let mut err = child.stderr.take().unwrap();
            let log = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a.parse().unwrap_or_else(|_| panic!("bad address in banner: {a}")),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no complete banner with a 'listening on' line; stderr: {}", stderr.lock().unwrap());
            }
        };
        Livetap { child, addr, stdout, stderr }
    }

    pub fn sigterm(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Waits for the process to exit (safety deadline), returning its status.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "livetap did not exit after SIGTERM; stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Livetap {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls the history traces list (`/api/telemetry/traces?{query}`, admin token) until `pred`
/// holds or the deadline passes, and returns the last answer (the history writer flushes on
/// its own schedule).
pub async fn traces_until(addr: SocketAddr, query: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = request_auth(addr, "GET", &format!("/api/telemetry/traces?{query}"), b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if pred(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
