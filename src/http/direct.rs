//! Live-stream requests on plain connections, served without hyper's connection state.
//!
//! The accept task reads the first request head itself ([`sniff`]). When it is a complete
//! HTTP/1.1 `GET` of a live endpoint (traces, or metrics) with nothing after it, the request goes through the
//! same [`super::handle`] as every other (limits, CORS, authentication, the subscription), and
//! the answer is written here: a JSON error as a whole response, or the stream with
//! [`crate::sse::socket::stream_body`]. Anything else goes to hyper, with the bytes already
//! read put back in front of the socket ([`Rewind`]).
//!
//! Why: an idle live stream is the hub's most numerous connection, and a hyper HTTP/1
//! connection keeps 8 KiB read and 8 KiB write buffers for its whole life, which a stream whose
//! request has been read never uses again (`perf/RESULTS.md`, idle memory).

use super::{ConnInfo, Ctx, LiveBody};
use crate::sse::socket::{stream_body, Chunked, End};
use crate::sse::SseChunk;
use crate::subscriber::ConnHandle;
use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Version};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The request lines served here (the live streams); any other target goes to hyper. The
/// target must end right after one of these, or go on with its query.
const LIVE_PATHS: [&[u8]; 5] = [
    b"GET /api/telemetry/traces/live",
    b"GET /api/tracing/live",
    b"GET /api/livetap/live",
    b"GET /api/telemetry/metrics/live",
    b"GET /api/livetap/live/metrics",
];

/// Stalwart v0.16's live streams, whose target may also go on with more path segments (v0.16
/// ignores them, and so does the router).
const V016_LIVE_PATHS: [&[u8]; 2] = [b"GET /api/live/tracing", b"GET /api/live/metrics"];

/// Most header fields parsed (the same cap hyper is given).
const MAX_HEADERS: usize = 128;

/// What the bytes read so far say.
#[derive(Debug)]
pub enum Verdict {
    /// A live-stream request, complete, with nothing after its head.
    Live(Box<Request<()>>),
    /// Not ours: give the connection to hyper.
    Other,
    /// Still a candidate; read more.
    NeedMore,
}

/// Decides from the first bytes of a connection whether it is served here. Pure: no I/O.
/// `max_head` bounds the head; a longer one goes to hyper, which answers it with its limits.
pub fn judge(buf: &[u8], max_head: usize) -> Verdict {
    // A partial HTTP/2 preface waits for the rest under the sniffing deadline: hyper's own
    // version detection has none.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if buf.len() < PREFACE.len() && !buf.is_empty() && PREFACE.starts_with(buf) {
        return Verdict::NeedMore;
    }
    let candidate = |paths: &[&[u8]], more: &[u8]| {
        paths.iter().any(|p| {
            let n = p.len().min(buf.len());
            buf[..n] == p[..n]
                && (buf.len() <= p.len()
                    || matches!(buf[p.len()], b'?' | b' ')
                    || more.contains(&buf[p.len()]))
        })
    };
    let candidate = candidate(&LIVE_PATHS, b"") || candidate(&V016_LIVE_PATHS, b"/");
    if !candidate {
        return Verdict::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        // Pipelined bytes after the head, or a malformed head: hyper's answer is the right one.
        Ok(httparse::Status::Complete(_)) | Err(_) => return Verdict::Other,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Verdict::NeedMore,
        Ok(httparse::Status::Partial) => return Verdict::Other,
    }
    // HTTP/1.0 has no chunked coding, so its streams stay with hyper.
    if req.version != Some(1) {
        return Verdict::Other;
    }
    let mut out = Request::new(());
    *out.method_mut() = Method::GET;
    *out.version_mut() = Version::HTTP_11;
    match req.path.map(http::Uri::try_from) {
        Some(Ok(uri)) => *out.uri_mut() = uri,
        _ => return Verdict::Other,
    }
    for h in req.headers.iter() {
        // A body, an upgrade or an expectation on a GET is unusual enough to leave to hyper.
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || (name.eq_ignore_ascii_case(b"content-length") && h.value != b"0")
        {
            return Verdict::Other;
        }
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(h.value)) {
            (Ok(k), Ok(v)) => {
                out.headers_mut().append(k, v);
            }
            _ => return Verdict::Other,
        }
    }
    Verdict::Live(Box::new(out))
}

/// What [`sniff`] found on a new plain connection.
#[derive(Debug)]
pub enum Sniffed {
    /// A live-stream request to serve with [`serve_live`].
    Live(Box<Request<()>>),
    /// Another request (or protocol): these bytes were read and must be replayed to hyper.
    Other(Vec<u8>),
    /// The client sent nothing within the timeout, or closed, or the read failed.
    Gone,
}

/// Reads the start of a new connection until [`judge`] decides, for at most `timeout`.
pub async fn sniff(stream: &mut TcpStream, timeout: Duration, max_head: usize) -> Sniffed {
    let work = async {
        // Allocate only once the client has sent something: a connection that never does costs
        // its task and socket alone.
        stream.readable().await?;
        let mut buf = Vec::with_capacity(1024);
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity());
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok::<_, io::Error>(if buf.is_empty() { Sniffed::Gone } else { Sniffed::Other(buf) });
            }
            match judge(&buf, max_head) {
                Verdict::Live(req) => return Ok(Sniffed::Live(req)),
                Verdict::Other => return Ok(Sniffed::Other(buf)),
                Verdict::NeedMore => {}
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => Sniffed::Gone,
    }
}

/// Serves one live-stream request read by [`sniff`]: the answer, then the stream until it
/// ends. The connection closes afterwards.
pub async fn serve_live(ctx: &Arc<Ctx>, mut stream: TcpStream, peer: SocketAddr, req: Box<Request<()>>) {
    let hub = &ctx.hub;
    let handle = Arc::new(ConnHandle::default());
    let write_timeout = Duration::from_secs(hub.current().write_timeout_secs);
    // Boxed: answering (authentication, subscription, resume) takes a large future that is
    // needed until the stream starts, not for its whole life; this function's own state is
    // what an idle stream costs.
    let conn = Arc::new(ConnInfo { peer, handle: handle.clone() });
    let Some((mut body, head)) = Box::pin(answer(ctx, &mut stream, conn, req)).await else { return };
    let timeouts = &hub.ingest.write_timeouts;
    let end = stream_body(&stream, head, &mut body, &handle, write_timeout, timeouts).await;
    tracing::debug!(%peer, ?end, "live stream ended");
    if end == End::Finished {
        let _ = stream.shutdown().await;
    }
}

/// Handles the request. Returns the stream's body and response head, still to be written, or
/// `None` when the answer was whole (an error) and has been written.
async fn answer(
    ctx: &Arc<Ctx>,
    stream: &mut TcpStream,
    conn: Arc<ConnInfo>,
    req: Box<Request<()>>,
) -> Option<(LiveBody, Chunked)> {
    let req = (*req).map(|()| http_body_util::Either::Right(http_body_util::Empty::new()));
    let Ok(resp) = super::handle(ctx.clone(), conn, req).await;
    let (parts, mut body) = resp.into_parts();
    if let LiveBody::Full(full) = &mut body {
        let full = full.take().unwrap_or_default();
        let mut whole = head(&parts, Some(full.len()));
        whole.extend_from_slice(&full);
        answer_and_close(stream, &whole).await;
        return None;
    }
    Some((body, Chunked::raw(SseChunk::single(Bytes::from(head(&parts, None))))))
}

/// The response head: status line, the response's headers, `date`, and the framing. `length`
/// is the body's size, or `None` for a chunked stream.
fn head(parts: &http::response::Parts, length: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in &parts.headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    match length {
        Some(n) => {
            out.extend_from_slice(b"\r\ncontent-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        }
        None => out.extend_from_slice(b"\r\ntransfer-encoding: chunked\r\n\r\n"),
    }
    out
}

/// Writes a whole answer, then closes: the write side first, then reading (and dropping) what
/// the client still sends for a moment, so the close does not reset the connection before the
/// client has read the answer. Two seconds at most.
pub async fn answer_and_close(stream: &mut TcpStream, answer: &[u8]) {
    let work = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), work).await;
}

/// A stream with bytes already read from it put back in front: what [`sniff`] read is what
/// hyper reads first.
pub struct Rewind<T> {
    read: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, to be read from after `read`.
    pub fn new(read: Vec<u8>, inner: T) -> Rewind<T> {
        Rewind { read: Bytes::from(read), inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            if self.read.is_empty() {
                // Give the buffer back now rather than with the connection.
                self.read = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 << 10;

    fn live(raw: &str) -> Request<()> {
        match judge(raw.as_bytes(), MAX) {
            Verdict::Live(r) => *r,
            v => panic!("{raw:?} gave {v:?}"),
        }
    }

    fn is_other(raw: &[u8]) -> bool {
        matches!(judge(raw, MAX), Verdict::Other)
    }

    #[test]
    fn live_requests_are_recognised() {
        let r =
            live("GET /api/telemetry/traces/live?filter=x HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 7\r\n\r\n");
        assert_eq!(r.uri().path(), "/api/telemetry/traces/live");
        assert_eq!(r.uri().query(), Some("filter=x"));
        assert_eq!(r.headers()["last-event-id"], "7");
        let r = live("GET /api/tracing/live HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.uri().path(), "/api/tracing/live");
        let r = live("GET /api/telemetry/metrics/live?interval=1 HTTP/1.1\r\n\r\n");
        assert_eq!(r.uri().path(), "/api/telemetry/metrics/live");
        let r = live("GET /api/livetap/live/metrics?interval=1 HTTP/1.1\r\n\r\n");
        assert_eq!(r.uri().path(), "/api/livetap/live/metrics");
        // Stalwart v0.16's streams, with or without a query or more path segments.
        let r = live("GET /api/live/tracing?token=t&remoteIp=10.0.0.1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            (r.uri().path(), r.uri().query()),
            ("/api/live/tracing", Some("token=t&remoteIp=10.0.0.1"))
        );
        let r = live("GET /api/live/tracing/extra/segments?filter=x HTTP/1.1\r\n\r\n");
        assert_eq!(r.uri().path(), "/api/live/tracing/extra/segments");
        let r = live("GET /api/live/metrics?metrics=server.memory&interval=30 HTTP/1.1\r\n\r\n");
        assert_eq!(r.uri().path(), "/api/live/metrics");
        live("GET /api/live/metrics HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn partial_heads_wait_and_others_go_to_hyper() {
        let full = "GET /api/telemetry/traces/live?a=b HTTP/1.1\r\nHost: a\r\n\r\n";
        for n in 0..full.len() {
            assert!(matches!(judge(&full.as_bytes()[..n], MAX), Verdict::NeedMore), "{n}");
        }
        // So does a partial HTTP/2 preface, which then goes to hyper whole.
        assert!(matches!(judge(b"PRI * HTTP/2", MAX), Verdict::NeedMore));
        for raw in [
            &b"POST /api/telemetry/ingest HTTP/1.1\r\n"[..],
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"HEAD /api/telemetry/traces/live HTTP/1.1\r\n\r\n",
            b"GET /api/telemetry/traces/lively HTTP/1.1\r\n\r\n",
            b"GET /api/telemetry/traces/live/x HTTP/1.1\r\n\r\n",
            b"GET /api/livetap/live/metricsx HTTP/1.1\r\n\r\n",
            b"GET /api/live/tracings HTTP/1.1\r\n\r\n",
            b"GET /api/token/tracing HTTP/1.1\r\n\r\n",
            b"POST /api/live/tracing HTTP/1.1\r\n\r\n",
            b"GET /api/live/tracing HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PRI * HTTP/1.1\r\n",
            b"\x16\x03\x01",
            // HTTP/1.0, a body, an upgrade, a pipelined request, a bad head.
            b"GET /api/telemetry/traces/live HTTP/1.0\r\n\r\n",
            b"GET /api/telemetry/traces/live HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            b"GET /api/telemetry/traces/live HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /api/telemetry/traces/live HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /api/telemetry/traces/live HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            b"GET /api/telemetry/traces/live HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(is_other(raw), "{:?}", String::from_utf8_lossy(raw));
        }
        // A head that never ends is hyper's to refuse once it passes the bound.
        let long = format!("GET /api/telemetry/traces/live?{} HTTP/1.1\r\n", "a".repeat(MAX));
        assert!(is_other(long.as_bytes()));
    }

    #[test]
    fn heads_carry_status_headers_and_framing() {
        let resp = http::Response::builder()
            .status(401)
            .header("content-type", "application/json")
            .header("www-authenticate", "Bearer")
            .body(())
            .unwrap();
        let (parts, ()) = resp.into_parts();
        let text = String::from_utf8(head(&parts, Some(12))).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"));
        assert!(text.contains("\r\nwww-authenticate: Bearer\r\ndate: "));
        assert!(text.ends_with("\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"));
        let text = String::from_utf8(head(&parts, None)).unwrap();
        assert!(text.ends_with("\r\ntransfer-encoding: chunked\r\n\r\n"));
    }
}
