//! Writing a live response body straight to a TCP socket, without hyper: HTTP/1.1 chunked
//! coding around each [`SseChunk`], all of a chunk's parts handed to `writev` (at most
//! `IOV_MAX` per call), a write timeout, and an end when the body ends, the client leaves or
//! the hub closes the connection.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for every HTTP/1 connection for
//! as long as it lives, and copies nothing of a stream's events but still stages each frame
//! in its own queue. A live stream needs neither: its request has been read, and its frames are
//! already reference-counted parts. Here the only state kept between frames is the body
//! itself; the `iovec` array lives on the stack of the call that writes.

use super::SseChunk;
use crate::subscriber::ConnHandle;
use bytes::Buf;
use hyper::body::Body;
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Most parts passed to one `writev` (Linux's `IOV_MAX`; more is `EINVAL`).
pub(crate) const MAX_IOV: usize = 1024;

/// The CRLF that ends a chunk's data.
const CRLF: &[u8] = b"\r\n";

/// One body chunk in HTTP/1.1 chunked coding: its size line, its parts, then CRLF. The size
/// line lives inline, so framing a chunk allocates nothing.
pub struct Chunked {
    line: [u8; 18],
    line_len: u8,
    line_pos: u8,
    data: SseChunk,
    tail_pos: u8,
}

impl Chunked {
    /// `data` as one chunk.
    pub fn new(data: SseChunk) -> Chunked {
        let mut c = Chunked::sized(data.remaining());
        c.data = data;
        c
    }

    /// `data` written as it is, without chunk framing (a response head).
    pub fn raw(data: SseChunk) -> Chunked {
        Chunked { line: [0; 18], line_len: 0, line_pos: 0, data, tail_pos: CRLF.len() as u8 }
    }

    /// The last chunk (`0\r\n\r\n`), which ends the body.
    pub fn last() -> Chunked {
        Chunked::sized(0)
    }

    fn sized(n: usize) -> Chunked {
        let mut line = [0u8; 18];
        let mut len = 0;
        // Hexadecimal, most significant digit first, no leading zeros (one digit for zero).
        let digits = if n == 0 { 1 } else { (usize::BITS - n.leading_zeros()).div_ceil(4) as usize };
        for i in (0..digits).rev() {
            line[len] = b"0123456789abcdef"[(n >> (4 * i)) & 0xf];
            len += 1;
        }
        line[len..len + 2].copy_from_slice(CRLF);
        Chunked { line, line_len: (len + 2) as u8, line_pos: 0, data: SseChunk::default(), tail_pos: 0 }
    }

    /// Bytes still to write.
    pub fn remaining(&self) -> usize {
        (self.line_len - self.line_pos) as usize + self.data.remaining() + CRLF.len() - self.tail_pos as usize
    }

    /// Fills `dst` with the parts still to write, in order; returns how many.
    pub fn fill<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if self.line_pos < self.line_len && n < dst.len() {
            dst[n] = IoSlice::new(&self.line[self.line_pos as usize..self.line_len as usize]);
            n += 1;
        }
        let parts = self.data.parts_left();
        // Room for the tail is kept only when every data part fits before it.
        let k = self.data.chunks_vectored(&mut dst[n..]);
        n += k;
        if k == parts && n < dst.len() && (self.tail_pos as usize) < CRLF.len() {
            dst[n] = IoSlice::new(&CRLF[self.tail_pos as usize..]);
            n += 1;
        }
        n
    }

    /// Marks `cnt` bytes as written.
    pub fn advance(&mut self, mut cnt: usize) {
        let line = ((self.line_len - self.line_pos) as usize).min(cnt);
        self.line_pos += line as u8;
        cnt -= line;
        let data = self.data.remaining().min(cnt);
        self.data.advance(data);
        cnt -= data;
        let tail = (CRLF.len() - self.tail_pos as usize).min(cnt);
        self.tail_pos += tail as u8;
        debug_assert_eq!(cnt, tail, "advance past the end of a chunk");
    }
}

/// How a stream written by [`stream_body`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The body ended (hub shutdown) and the last chunk was written.
    Finished,
    /// The client closed its side or reset the connection.
    ClientGone,
    /// The hub closed the connection (a stalled subscriber).
    Killed,
    /// A write failed or made no progress for the write timeout.
    WriteFailed,
}

/// Writes `head` (the response head, unframed), then `body` as a chunked HTTP/1.1 body, to
/// `stream` until the body ends, the client leaves, or `kill` fires. A write that makes no
/// progress for `write_timeout` ends the stream and is counted in `timeouts`.
///
/// A hand-written future rather than an `async` block with `select!`: its state (the chunk
/// being written and a lazily boxed timer) is what every idle stream keeps for its whole life,
/// and it is a third of what the generated state machine held.
pub fn stream_body<'a, B>(
    stream: &'a TcpStream,
    head: Chunked,
    body: &'a mut B,
    kill: &'a ConnHandle,
    write_timeout: Duration,
    timeouts: &'a AtomicU64,
) -> StreamBody<'a, B>
where
    B: Body<Data = SseChunk, Error = Infallible> + Unpin,
{
    StreamBody {
        stream,
        body,
        kill,
        write_timeout,
        timeouts,
        out: Some(head),
        last: false,
        deadline: None,
        armed: false,
    }
}

/// The future of [`stream_body`].
pub struct StreamBody<'a, B> {
    stream: &'a TcpStream,
    body: &'a mut B,
    kill: &'a ConnHandle,
    write_timeout: Duration,
    timeouts: &'a AtomicU64,
    /// The chunk being written, if any; `last` when it is the final one.
    out: Option<Chunked>,
    last: bool,
    /// Since when a write has waited for the socket without progress; allocated the first
    /// time one waits, and counting only while `armed`.
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<B> Future for StreamBody<'_, B>
where
    B: Body<Data = SseChunk, Error = Infallible> + Unpin,
{
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = &mut *self;
        if this.kill.poll_killed(cx).is_ready() {
            return Poll::Ready(End::Killed);
        }
        if this.poll_client_gone(cx).is_ready() {
            return Poll::Ready(End::ClientGone);
        }
        loop {
            if let Some(chunk) = &mut this.out {
                match try_write(this.stream, chunk) {
                    Ok(0) => return Poll::Ready(End::WriteFailed),
                    Ok(n) => {
                        chunk.advance(n);
                        // Progress: the timeout counts again from the next wait.
                        this.armed = false;
                        if chunk.remaining() > 0 {
                            continue;
                        }
                        this.out = None;
                        if this.last {
                            return Poll::Ready(End::Finished);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match this.stream.poll_write_ready(cx) {
                            Poll::Ready(Ok(())) => continue,
                            Poll::Ready(Err(_)) => return Poll::Ready(End::WriteFailed),
                            Poll::Pending => {}
                        }
                        let timeout = this.write_timeout;
                        let d = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        if !this.armed {
                            this.armed = true;
                            d.as_mut().reset(Instant::now() + timeout);
                        }
                        if d.as_mut().poll(cx).is_ready() {
                            this.timeouts.fetch_add(1, Ordering::Relaxed);
                            return Poll::Ready(End::WriteFailed);
                        }
                        return Poll::Pending;
                    }
                    Err(_) => return Poll::Ready(End::WriteFailed),
                }
            }
            match Pin::new(&mut *this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.out = Some(Chunked::last());
                    this.last = true;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Empty data and trailers carry nothing a live stream sends.
                    if let Ok(data) = frame.into_data() {
                        if data.remaining() > 0 {
                            this.out = Some(Chunked::new(data));
                        }
                    }
                }
                Poll::Ready(Some(Err(never))) => match never {},
            }
        }
    }
}

impl<B> StreamBody<'_, B> {
    /// Ready when the client has closed its side or the connection failed. Anything the client
    /// sends meanwhile is read and dropped: a live stream takes no further requests.
    fn poll_client_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            let mut sink = [0u8; 256];
            match self.stream.try_read(&mut sink) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

/// One `writev` of as much of `chunk` as fits in `IOV_MAX` parts. Not async, so the `iovec`
/// array is on the calling thread's stack, never in the connection's future; and sized to the
/// chunk, since most chunks have a few parts and filling 1,024 empty slices (16 KiB) for each
/// of them would cost more than the write.
fn try_write(stream: &TcpStream, chunk: &Chunked) -> io::Result<usize> {
    if chunk.data.parts_left() + 2 <= SMALL_IOV {
        write_parts::<SMALL_IOV>(stream, chunk)
    } else {
        write_parts::<MAX_IOV>(stream, chunk)
    }
}

/// Parts of the array used for most chunks.
const SMALL_IOV: usize = 64;

fn write_parts<const N: usize>(stream: &TcpStream, chunk: &Chunked) -> io::Result<usize> {
    let mut iov = [IoSlice::new(&[]); N];
    let n = chunk.fill(&mut iov);
    stream.try_write_vectored(&iov[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn data(parts: &[&'static str]) -> SseChunk {
        let mut c = SseChunk::default();
        for p in parts {
            c.push(Bytes::from_static(p.as_bytes()));
        }
        c
    }

    fn written(c: &Chunked, max_iov: usize) -> Vec<u8> {
        let mut iov = vec![IoSlice::new(&[]); max_iov];
        let n = c.fill(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn chunk_framing() {
        assert_eq!(written(&Chunked::last(), 8), b"0\r\n\r\n");
        assert_eq!(Chunked::last().remaining(), 5);
        let c = Chunked::new(data(&["hello ", "world"]));
        assert_eq!(written(&c, 8), b"b\r\nhello world\r\n");
        assert_eq!(c.remaining(), 16);
        let big = "x".repeat(0x1234);
        let c = Chunked::new(SseChunk::single(Bytes::from(big.clone())));
        assert_eq!(written(&c, 8), format!("1234\r\n{big}\r\n").as_bytes());
        let c = Chunked::raw(data(&["HTTP/1.1 200 OK\r\n", "\r\n"]));
        assert_eq!(written(&c, 8), b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(c.remaining(), 19);
    }

    #[test]
    fn partial_writes_resume_anywhere() {
        let whole = b"9\r\nab,cd,efg\r\n".to_vec();
        // Every split point, and a tiny iovec array, which forces several calls.
        for split in 0..whole.len() {
            for max_iov in [1, 2, 3, 8] {
                let mut c = Chunked::new(data(&["ab,", "cd,", "efg"]));
                let mut out = Vec::new();
                let first = written(&c, max_iov);
                let take = split.min(first.len());
                out.extend_from_slice(&first[..take]);
                c.advance(take);
                while c.remaining() > 0 {
                    let w = written(&c, max_iov);
                    assert!(!w.is_empty());
                    out.extend_from_slice(&w);
                    c.advance(w.len());
                }
                assert_eq!(out, whole, "split {split}, {max_iov} parts");
            }
        }
    }
}
