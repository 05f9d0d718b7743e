//! Server-Sent Events: frame assembly from pre-serialised event bytes, and the streaming body.
//!
//! A frame is `id: <seq>\nevent: trace\ndata: [` + event + `,` + event + … + `]\n\n`. The event
//! parts are the very `Bytes` built at ingest (a reference count each, no copy); only the short
//! head is written per frame. [`SseChunk`] implements `bytes::Buf` with `chunks_vectored`, so
//! hyper hands all parts of a frame to one `writev` call.
//!
//! [`SseBody`] drains a subscriber's queue whenever hyper can write, so a frame holds everything
//! pending at write time (milliseconds of latency, never a fixed 1-second batch), sends `ping`
//! after the idle interval, and ends cleanly at shutdown once the queue is empty.
//!
//! [`metrics`] is the other stream body: [`metrics::MetricsBody`], the `event: metrics` frames
//! of the live metrics endpoint.

pub mod metrics;
pub mod socket;

use crate::matcher::registry::Subscription;
use crate::matcher::replay::Resume;
use crate::subscriber::Item;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

static TAIL: Bytes = Bytes::from_static(b"]\n\n");

/// Most events placed in one `trace` frame; more pending events go into the next frame.
pub const MAX_EVENTS_PER_FRAME: usize = 1024;

/// Most queue items a writer takes at once. A chunk of that many events (one part each) with
/// its framing (frame head and tail, a trailing lag marker, the chunk's size line and CRLF)
/// fits the `IOV_MAX` parts of one `writev`: taking a full 1,024-event frame made every such
/// chunk a large write followed by a second of a few bytes (the last parts), a TCP segment and
/// a reader wake-up of its own (`perf/RESULTS.md` §13). Lag markers between events split the
/// frame and add parts; such a chunk still goes out, in more than one call.
const DRAIN_MAX: usize = socket::MAX_IOV - 8;
const _: () = assert!(DRAIN_MAX <= MAX_EVENTS_PER_FRAME, "a drained share is at most one frame");

/// A sequence of byte parts written as one HTTP body chunk with vectored I/O.
#[derive(Debug, Default)]
pub struct SseChunk {
    parts: SmallVec<[Bytes; 8]>,
    index: usize,
    remaining: usize,
}

impl SseChunk {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.remaining += b.len();
            self.parts.push(b);
        }
    }

    /// Parts not yet written completely.
    pub fn parts_left(&self) -> usize {
        self.parts.len() - self.index
    }

    /// A chunk holding one pre-built frame.
    pub fn single(b: Bytes) -> SseChunk {
        let mut c = SseChunk::default();
        c.push(b);
        c
    }

    /// Appends the frames for `items` (events and lag markers, in queue order) and leaves
    /// `items` empty. Returns the sequence number of the last event added, if any.
    ///
    /// The events' bytes are moved into the chunk, not cloned: each clone and drop of a shared
    /// `Bytes` is an atomic operation on a count that every subscriber of the event touches,
    /// from both cores, and a delivery that moves its reference costs one clone (the matcher's
    /// push) and one drop (after the write) instead of two of each.
    pub fn append_items(&mut self, items: &mut Vec<Item>, head: &mut BytesMut) -> Option<u64> {
        // Reserve the parts once: a frame of n events has about 2n parts (each event and its
        // separator), and growing the vector by doubling from 8 cost ~18 % of the hub's CPU in
        // `firehose-100` (perf: `reserve_one_unchecked` and fresh pages from the allocator).
        self.parts.reserve(2 * items.len() + 2 * (items.len() / MAX_EVENTS_PER_FRAME + 1));
        let mut last = None;
        let mut i = 0;
        while i < items.len() {
            match &items[i] {
                Item::Lagged(n) => {
                    head.extend_from_slice(b"event: lagged\ndata: {\"dropped\":");
                    head.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
                    head.extend_from_slice(b"}\n\n");
                    self.push(head.split().freeze());
                    i += 1;
                }
                // A stream's queue never holds a tap's event handles (`crate::tap`).
                Item::Tapped { .. } => i += 1,
                Item::Event { .. } => {
                    // A run of events up to the next marker forms one frame; its id is the
                    // sequence number of its last event, so a reconnect resumes after it.
                    let run_end = items[i..]
                        .iter()
                        .take(MAX_EVENTS_PER_FRAME)
                        .position(|it| !matches!(it, Item::Event { .. }))
                        .map_or((i + MAX_EVENTS_PER_FRAME).min(items.len()), |p| i + p);
                    let last_seq = match &items[run_end - 1] {
                        Item::Event { seq, .. } => *seq,
                        _ => unreachable!("a run holds only events"),
                    };
                    head.extend_from_slice(b"id: ");
                    head.extend_from_slice(itoa::Buffer::new().format(last_seq + 1).as_bytes());
                    head.extend_from_slice(b"\nevent: trace\ndata: [");
                    self.push(head.split().freeze());
                    // Each event's wire form carries its own leading comma, so an event is one
                    // part; the first of the frame drops the comma (a view, no copy).
                    for (k, it) in items[i..run_end].iter_mut().enumerate() {
                        // A placeholder takes the item's place; it owns nothing to drop.
                        if let Item::Event { mut wire, .. } = std::mem::replace(it, Item::Lagged(0)) {
                            if k == 0 {
                                wire.advance(1);
                            }
                            self.push(wire);
                        }
                    }
                    self.push(TAIL.clone());
                    last = Some(last_seq);
                    i = run_end;
                }
            }
        }
        items.clear();
        last
    }

    /// Copies the whole chunk into one contiguous buffer (tests and benchmarks).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.remaining);
        for p in &self.parts[self.index..] {
            out.extend_from_slice(p);
        }
        out
    }
}

impl Buf for SseChunk {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.get(self.index).map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of an SSE chunk");
        self.remaining -= cnt;
        while cnt > 0 {
            let p = &mut self.parts[self.index];
            if cnt < p.len() {
                p.advance(cnt);
                return;
            }
            cnt -= p.len();
            self.index += 1;
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for p in &self.parts[self.index..] {
            if n == dst.len() {
                break;
            }
            dst[n] = IoSlice::new(p);
            n += 1;
        }
        n
    }
}

/// The comment lines that open a stream: `: <what> open`, one `: ignored parameter "name"`
/// per parameter the request's query named and the endpoint ignored (the name as a JSON
/// string, so nothing in it can end the line), and `retry: 2000`.
pub fn prelude(what: &str, ignored: &[String]) -> Bytes {
    let mut out = Vec::with_capacity(64 + ignored.len() * 32);
    out.extend_from_slice(b": ");
    out.extend_from_slice(what.as_bytes());
    out.extend_from_slice(b" open\n");
    for name in ignored {
        out.extend_from_slice(b": ignored parameter ");
        let _ = serde_json::to_writer(&mut out, name);
        out.push(b'\n');
    }
    out.extend_from_slice(b"retry: 2000\n\n");
    Bytes::from(out)
}

/// The last frame of a stream closed on purpose (a configuration reload took its permission
/// away): `event: error` with the JSON error body `{"error": …, "detail": …}`.
pub fn error_frame(error: &str, detail: &str) -> Bytes {
    let body = serde_json::json!({"error": error, "detail": detail});
    Bytes::from(format!("event: error\ndata: {body}\n\n"))
}

/// Shutdown signal shared by all streams: once set, a stream ends after its queue is empty.
#[derive(Debug, Default)]
pub struct Closing(AtomicBool);

impl Closing {
    /// Starts closing.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once closing started.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The body of one live-traces response.
pub struct SseBody {
    subscription: Subscription,
    closing: Arc<Closing>,
    ping: Bytes,
    ping_every: Duration,
    timer: Pin<Box<Sleep>>,
    /// When the last frame went out. The timer is moved only when it fires: re-arming it on
    /// every frame took the timer driver's lock per frame (about 1 % of the hub's CPU in
    /// `fanout-1k`).
    last_sent: Instant,
    items: Vec<Item>,
    head: BytesMut,
    prelude: Option<Bytes>,
    /// Missed events (and a gap notice) of a resuming stream, sent before the live queue.
    resume: Option<Resume>,
    done: bool,
    /// The closing frame of [`crate::subscriber::Subscriber::close_with`] went out.
    farewell_sent: bool,
}

impl SseBody {
    /// A body streaming `subscription`'s queue, pinging after `ping_every` of silence.
    pub fn new(subscription: Subscription, closing: Arc<Closing>, ping_every: Duration) -> SseBody {
        let mut ping = BytesMut::with_capacity(48);
        ping.extend_from_slice(b"event: ping\ndata: {\"interval\": ");
        ping.extend_from_slice(itoa::Buffer::new().format(ping_every.as_millis()).as_bytes());
        ping.extend_from_slice(b"}\n\n");
        SseBody {
            subscription,
            closing,
            ping: ping.freeze(),
            ping_every,
            timer: Box::pin(tokio::time::sleep(ping_every)),
            last_sent: Instant::now(),
            items: Vec::new(),
            head: BytesMut::new(),
            // A comment line first, so clients see the stream open before the first event.
            prelude: Some(prelude("livetap stream", &[])),
            resume: None,
            done: false,
            farewell_sent: false,
        }
    }

    /// Opens the stream with the comment lines of [`prelude`] naming the parameters
    /// the request's query named and the endpoint ignored, and then, with `ping_first`, an
    /// `event: ping` frame at once (Stalwart v0.16's streams start with one).
    pub fn with_opening(mut self, ignored: &[String], ping_first: bool) -> SseBody {
        let prelude = prelude("livetap stream", ignored);
        self.prelude = Some(if ping_first {
            let mut both = BytesMut::with_capacity(prelude.len() + self.ping.len());
            both.extend_from_slice(&prelude);
            both.extend_from_slice(&self.ping);
            both.freeze()
        } else {
            prelude
        });
        self
    }

    /// Sends `resume` (a gap notice, then the missed events) before the live events. The
    /// live queue holds only events from the subscription's start on, and the replay only
    /// events before it, so the stream stays in order without duplicates.
    pub fn with_resume(mut self, resume: Resume) -> SseBody {
        if resume.gap.is_some() || !resume.items.is_empty() {
            self.resume = Some(resume);
        }
        self
    }
}

impl Body for SseBody {
    type Data = SseChunk;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<SseChunk>, Infallible>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(p) = this.prelude.take() {
            return Poll::Ready(Some(Ok(Frame::data(SseChunk::single(p)))));
        }
        if let Some(resume) = &mut this.resume {
            let mut chunk = SseChunk::default();
            if let Some(gap) = resume.gap.take() {
                chunk.push(Bytes::from(format!("event: gap\ndata: {gap}\n\n")));
            }
            let n = resume.items.len().min(MAX_EVENTS_PER_FRAME);
            if n > 0 {
                this.items.clear();
                this.items.extend(resume.items.drain(..n));
                if this.head.capacity() < 256 {
                    this.head.reserve(4096);
                }
                chunk.append_items(&mut this.items, &mut this.head);
            }
            if resume.items.is_empty() {
                this.resume = None;
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let sub = &this.subscription.sub;
        // Register before looking, so a push between the look and the return wakes us.
        sub.register_waker(cx.waker());
        this.items.clear();
        // A bounded share at a time: a backlog is sent in chunks that each fit one `writev`,
        // each written before the next is taken (see `Subscriber::drain_into`).
        sub.drain_into(&mut this.items, DRAIN_MAX);
        if !this.items.is_empty() {
            let mut chunk = SseChunk::default();
            if this.head.capacity() < 256 {
                this.head.reserve(4096);
            }
            chunk.append_items(&mut this.items, &mut this.head);
            if this.items.capacity() > 4096 {
                this.items.shrink_to(64);
            }
            this.last_sent = Instant::now();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if sub.is_closed() || this.closing.is_set() {
            // A stream closed with a reason (a configuration reload took its permission away)
            // says why in a last frame.
            if !this.farewell_sent {
                if let Some(last) = sub.farewell() {
                    this.farewell_sent = true;
                    return Poll::Ready(Some(Ok(Frame::data(SseChunk::single(last.clone())))));
                }
            }
            this.done = true;
            return Poll::Ready(None);
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let due = this.last_sent + this.ping_every;
            let now = Instant::now();
            if due > now {
                // Frames went out since the timer was set: wait the rest of the interval.
                this.timer.as_mut().reset(due);
                continue;
            }
            this.last_sent = now;
            this.timer.as_mut().reset(now + this.ping_every);
            return Poll::Ready(Some(Ok(Frame::data(SseChunk::single(this.ping.clone())))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_from_items() {
        // Wire forms: a comma, then the JSON object.
        let e = |seq, s: &'static str| Item::Event { seq, wire: Bytes::from_static(s.as_bytes()) };
        let mut items = vec![e(4, ",{\"a\":1}"), e(5, ",{\"b\":2}"), Item::Lagged(3), e(9, ",{}")];
        let mut chunk = SseChunk::default();
        let mut head = BytesMut::new();
        assert_eq!(chunk.append_items(&mut items, &mut head), Some(9));
        assert!(items.is_empty());
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        assert_eq!(
            text,
            "id: 6\nevent: trace\ndata: [{\"a\":1},{\"b\":2}]\n\n\
             event: lagged\ndata: {\"dropped\":3}\n\n\
             id: 10\nevent: trace\ndata: [{}]\n\n"
        );
        assert_eq!(chunk.remaining(), text.len());
        let mut slices = [IoSlice::new(&[]); 64];
        let n = chunk.chunks_vectored(&mut slices);
        assert_eq!(slices[..n].iter().map(|s| s.len()).sum::<usize>(), text.len());
        chunk.advance(10);
        assert_eq!(chunk.chunk(), &text.as_bytes()[10..26]);
        chunk.advance(text.len() - 10);
        assert_eq!(chunk.remaining(), 0);
    }

    #[test]
    fn a_full_drain_fits_one_writev() {
        let mut items: Vec<_> =
            (0..DRAIN_MAX as u64).map(|s| Item::Event { seq: s, wire: Bytes::from_static(b",{}") }).collect();
        items.push(Item::Lagged(7));
        let mut chunk = SseChunk::default();
        chunk.append_items(&mut items, &mut BytesMut::new());
        // The chunk's size line and its closing CRLF are the two parts `socket` adds.
        assert!(chunk.parts_left() + 2 <= socket::MAX_IOV, "{} parts", chunk.parts_left());
    }

    #[test]
    fn large_batches_split_into_frames() {
        let mut items: Vec<_> =
            (0..2500).map(|s| Item::Event { seq: s, wire: Bytes::from_static(b",{}") }).collect();
        let mut chunk = SseChunk::default();
        chunk.append_items(&mut items, &mut BytesMut::new());
        let text = String::from_utf8(chunk.to_vec()).unwrap();
        assert_eq!(text.matches("event: trace").count(), 3);
        assert!(text.contains("id: 1024\n") && text.contains("id: 2048\n") && text.contains("id: 2500\n"));
    }

    #[test]
    fn preludes_name_ignored_parameters_safely() {
        let p = prelude("livetap stream", &["_".into(), "a\nevent: x".into()]);
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            ": livetap stream open\n: ignored parameter \"_\"\n: ignored parameter \"a\\nevent: x\"\nretry: 2000\n\n"
        );
    }
}
