//! The live metrics stream: Stalwart's `event: metrics` frames, sent at once and then every
//! interval, with pings in between and a clean end at shutdown.
//!
//! A frame is `event: metrics\ndata: [sample,…]\n\n` with samples in Stalwart's shape:
//! `{"id":"smtp.connection-start","type":"counter","value":N}`,
//! `{"id":"server.memory","type":"gauge","value":N}` and
//! `{"id":"delivery.total-time","type":"histogram","count":C,"sum":S,"p50":…,"p90":…,"p99":…}`
//! (the percentiles are livetap's addition; classic clients ignore unknown fields). The body
//! builds each frame from a closure the handler gives it, so it knows nothing of the hub.
//! Between frames it sleeps on one timer; when the interval is longer than the ping interval,
//! `event: ping` frames keep proxies from closing the idle connection.

use crate::metrics::registry::StreamGuard;
use crate::metrics::{MetricValue, Reading};
use crate::sse::SseChunk;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Writes a number the way JSON wants it: integers without a fraction, others in the shortest
/// form that reads back exactly; non-finite values (which JSON cannot hold) as 0.
fn write_number(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.push(b'0');
    } else if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        out.extend_from_slice(itoa::Buffer::new().format(v as i64).as_bytes());
    } else {
        let _ = serde_json::to_writer(&mut *out, &v);
    }
}

/// Writes the JSON array of samples (the `data:` of a frame).
pub fn write_samples(values: &[MetricValue], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, m) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        let _ = serde_json::to_writer(&mut *out, &*m.name);
        match &m.reading {
            Reading::Counter(v) => {
                out.extend_from_slice(b",\"type\":\"counter\",\"value\":");
                out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes());
            }
            Reading::Gauge(v) => {
                out.extend_from_slice(b",\"type\":\"gauge\",\"value\":");
                write_number(out, *v);
            }
            Reading::Histogram(h) => {
                out.extend_from_slice(b",\"type\":\"histogram\",\"count\":");
                out.extend_from_slice(itoa::Buffer::new().format(h.count).as_bytes());
                out.extend_from_slice(b",\"sum\":");
                write_number(out, h.sum);
                for (field, q) in [(&b",\"p50\":"[..], 0.5), (b",\"p90\":", 0.9), (b",\"p99\":", 0.99)] {
                    if let Some(v) = h.quantile(q) {
                        out.extend_from_slice(field);
                        write_number(out, v);
                    }
                }
            }
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// A whole `event: metrics` frame.
pub fn frame(values: &[MetricValue]) -> Bytes {
    let mut out = Vec::with_capacity(64 + values.len() * 64);
    out.extend_from_slice(b"event: metrics\ndata: ");
    write_samples(values, &mut out);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Builds the next frame's bytes.
pub type FrameSource = Box<dyn FnMut() -> Bytes + Send>;

/// The body of one live metrics response.
pub struct MetricsBody {
    source: FrameSource,
    interval: Duration,
    ping_every: Duration,
    ping: Bytes,
    next_frame: Instant,
    last_write: Instant,
    timer: Pin<Box<Sleep>>,
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    prelude: Option<Bytes>,
    done: bool,
    _guard: StreamGuard,
}

impl MetricsBody {
    /// A stream of frames from `source`: the first at once, then one per `interval`; a ping
    /// after `ping_every` without a write; it ends when `closed` completes.
    pub fn new(
        source: FrameSource,
        interval: Duration,
        ping_every: Duration,
        closed: Pin<Box<dyn Future<Output = ()> + Send>>,
        guard: StreamGuard,
    ) -> MetricsBody {
        let mut ping = BytesMut::with_capacity(48);
        ping.extend_from_slice(b"event: ping\ndata: {\"interval\": ");
        ping.extend_from_slice(itoa::Buffer::new().format(ping_every.as_millis()).as_bytes());
        ping.extend_from_slice(b"}\n\n");
        let now = Instant::now();
        MetricsBody {
            source,
            interval,
            ping_every,
            ping: ping.freeze(),
            next_frame: now,
            last_write: now,
            timer: Box::pin(tokio::time::sleep_until(now)),
            closed,
            prelude: Some(Bytes::from_static(b": livetap metrics stream open\nretry: 2000\n\n")),
            done: false,
            _guard: guard,
        }
    }
}

impl Body for MetricsBody {
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
        if this.closed.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(None);
        }
        if let Some(p) = this.prelude.take() {
            return Poll::Ready(Some(Ok(Frame::data(SseChunk::single(p)))));
        }
        loop {
            let now = Instant::now();
            if now >= this.next_frame {
                // A stream that could not be written for longer than an interval does not
                // send the missed frames in a burst: the next one is an interval from now.
                this.next_frame += this.interval;
                if this.next_frame <= now {
                    this.next_frame = now + this.interval;
                }
                this.last_write = now;
                let bytes = (this.source)();
                return Poll::Ready(Some(Ok(Frame::data(SseChunk::single(bytes)))));
            }
            let ping_at = this.last_write + this.ping_every;
            if now >= ping_at {
                this.last_write = now;
                return Poll::Ready(Some(Ok(Frame::data(SseChunk::single(this.ping.clone())))));
            }
            this.timer.as_mut().reset(this.next_frame.min(ping_at));
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
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
    use crate::metrics::histogram::{bounds_for_unit, Histogram};
    use std::sync::Arc;

    #[test]
    fn samples_in_stalwart_shape() {
        let h = Histogram::new(1, bounds_for_unit(Some("milliseconds")));
        h.record(0, 10.0, 3, true);
        let v = |name: &str, reading| MetricValue { name: Arc::from(name), unit: None, help: None, reading };
        let values = [
            v("smtp.connection-start", Reading::Counter(3)),
            v("server.memory", Reading::Gauge(1024.0)),
            v("x.ratio", Reading::Gauge(0.25)),
            v("x.bad", Reading::Gauge(f64::NAN)),
            v("delivery.total-time", Reading::Histogram(h.snapshot())),
        ];
        let f = frame(&values);
        let text = std::str::from_utf8(&f).unwrap();
        let data = text.strip_prefix("event: metrics\ndata: ").unwrap().strip_suffix("\n\n").unwrap();
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(json[0], serde_json::json!({"id":"smtp.connection-start","type":"counter","value":3}));
        assert_eq!(json[1], serde_json::json!({"id":"server.memory","type":"gauge","value":1024}));
        assert_eq!(json[2]["value"], 0.25);
        assert_eq!(json[3]["value"], 0);
        assert_eq!(
            json[4],
            serde_json::json!({
                "id": "delivery.total-time", "type": "histogram",
                "count": 3, "sum": 30, "p50": 10, "p90": 10, "p99": 10
            })
        );
        assert!(data.contains("\"value\":1024}"), "integers have no fraction: {data}");
    }
}
