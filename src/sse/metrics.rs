//! The live metrics stream: `event: metrics` frames, sent at once and then every interval,
//! with pings in between and a clean end at shutdown.
//!
//! A frame is `event: metrics\ndata: [sample,…]\n\n`. The samples take one of three forms
//! ([`SampleForm`]):
//! - **classic** (Stalwart up to v0.15, `/api/telemetry/metrics/live`):
//!   `{"id":"smtp.connection-start","type":"counter","value":N}`,
//!   `{"id":"server.memory","type":"gauge","value":N}` and
//!   `{"id":"delivery.total-time","type":"histogram","count":C,"sum":S,"p50":…,"p90":…,"p99":…}`
//!   (the percentiles are livetap's addition; classic clients ignore unknown fields). Stalwart's
//!   old web admin decodes `value`, `count` and `sum` as unsigned integers and drops the whole
//!   frame when one is not, so a gauge's value and a histogram's sum are rounded to the
//!   nearest integer here, and a negative one is sent as 0;
//! - **full** (livetap's own, `/api/livetap/live/metrics`): the classic shape with every value
//!   at full precision, fractions and negative gauges included;
//! - **v0.16** (`/api/live/metrics`): `{"metric":…,"@type":"Counter"|"Gauge"|"Histogram",
//!   "count":N[,"sum":S]}` in that field order, the gauge's value in `count`; Stalwart's
//!   values are unsigned integers there too, so they are rounded and clamped the same way.
//!
//! The body builds each frame from a closure the handler gives it, so it knows nothing of the
//! hub. Between frames it sleeps on one timer; when the interval is longer than the ping
//! interval, `event: ping` frames keep proxies from closing the idle connection (a comment line
//! instead on the v0.16 stream, which Stalwart sends without pings).

use crate::metrics::registry::StreamGuard;
use crate::metrics::{MetricValue, Reading};
use crate::sse::{prelude, SseChunk};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Which shape and precision the samples of a stream take (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleForm {
    /// Stalwart's classic shape, with unsigned integer values (what its old web admin decodes).
    Classic,
    /// The classic shape at full precision (livetap's own endpoint and dashboard).
    Full,
    /// Stalwart v0.16's shape (`metric`, `@type`, `count`, `sum`), with unsigned integers.
    V016,
}

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

/// `v` as the unsigned integer a classic or v0.16 client decodes: rounded to the nearest
/// integer, negative values and NaN as 0, past `u64::MAX` as `u64::MAX`.
pub fn as_unsigned(v: f64) -> u64 {
    if v > 0.0 {
        // `as` saturates at the type's bounds (and infinity is past the upper one).
        v.round() as u64
    } else {
        0
    }
}

/// Writes a gauge value or a histogram sum in `form`'s precision.
fn write_value(out: &mut Vec<u8>, v: f64, form: SampleForm) {
    match form {
        SampleForm::Full => write_number(out, v),
        SampleForm::Classic | SampleForm::V016 => {
            out.extend_from_slice(itoa::Buffer::new().format(as_unsigned(v)).as_bytes())
        }
    }
}

/// Writes the JSON array of samples (the `data:` of a frame) in `form`.
pub fn write_samples(values: &[MetricValue], form: SampleForm, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, m) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if form == SampleForm::V016 {
            write_v016(m, out);
            continue;
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
                write_value(out, *v, form);
            }
            Reading::Histogram(h) => {
                out.extend_from_slice(b",\"type\":\"histogram\",\"count\":");
                out.extend_from_slice(itoa::Buffer::new().format(h.count).as_bytes());
                out.extend_from_slice(b",\"sum\":");
                write_value(out, h.sum, form);
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

/// One sample in Stalwart v0.16's shape, its fields in the order Stalwart writes them.
fn write_v016(m: &MetricValue, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"metric\":");
    let _ = serde_json::to_writer(&mut *out, &*m.name);
    match &m.reading {
        Reading::Counter(v) => {
            out.extend_from_slice(b",\"@type\":\"Counter\",\"count\":");
            out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes());
        }
        Reading::Gauge(v) => {
            out.extend_from_slice(b",\"@type\":\"Gauge\",\"count\":");
            write_value(out, *v, SampleForm::V016);
        }
        Reading::Histogram(h) => {
            out.extend_from_slice(b",\"@type\":\"Histogram\",\"count\":");
            out.extend_from_slice(itoa::Buffer::new().format(h.count).as_bytes());
            out.extend_from_slice(b",\"sum\":");
            write_value(out, h.sum, SampleForm::V016);
        }
    }
    out.push(b'}');
}

/// A whole `event: metrics` frame.
pub fn frame(values: &[MetricValue], form: SampleForm) -> Bytes {
    let mut out = Vec::with_capacity(64 + values.len() * 64);
    out.extend_from_slice(b"event: metrics\ndata: ");
    write_samples(values, form, &mut out);
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
    /// Completes when the stream should end: with `None` at shutdown, with a last frame when
    /// a configuration reload took the stream's permission away.
    closed: Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>,
    /// The last frame went out; the next poll ends the stream.
    ending: bool,
    prelude: Option<Bytes>,
    done: bool,
    _guard: StreamGuard,
}

impl MetricsBody {
    /// A stream of frames from `source`: the first at once, then one per `interval`; a ping
    /// after `ping_every` without a write; it ends when `closed` completes (after the frame
    /// it completes with, if any).
    pub fn new(
        source: FrameSource,
        interval: Duration,
        ping_every: Duration,
        closed: Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>,
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
            ending: false,
            prelude: Some(prelude("livetap metrics stream", &[])),
            done: false,
            _guard: guard,
        }
    }

    /// Opens the stream with `prelude` (see [`prelude`]) instead of the bare one.
    pub fn with_prelude(mut self, prelude: Bytes) -> MetricsBody {
        self.prelude = Some(prelude);
        self
    }

    /// Keeps the connection alive with a comment line instead of `event: ping` frames
    /// (Stalwart v0.16's metrics stream has no pings; a comment is invisible to its clients).
    pub fn with_comment_pings(mut self) -> MetricsBody {
        self.ping = Bytes::from_static(b": ping\n\n");
        self
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
        if this.done || this.ending {
            this.done = true;
            return Poll::Ready(None);
        }
        if let Poll::Ready(last) = this.closed.as_mut().poll(cx) {
            return match last {
                Some(frame) => {
                    this.ending = true;
                    Poll::Ready(Some(Ok(Frame::data(SseChunk::single(frame)))))
                }
                None => {
                    this.done = true;
                    Poll::Ready(None)
                }
            };
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

    fn values() -> Vec<MetricValue> {
        let h = Histogram::new(1, bounds_for_unit(Some("milliseconds")));
        h.record(0, 10.0, 3, true);
        h.record(0, 0.4, 1, true);
        let v = |name: &str, reading| MetricValue { name: Arc::from(name), unit: None, help: None, reading };
        vec![
            v("smtp.connection-start", Reading::Counter(3)),
            v("server.memory", Reading::Gauge(1024.0)),
            v("x.ratio", Reading::Gauge(0.25)),
            v("x.half", Reading::Gauge(2.5)),
            v("x.negative", Reading::Gauge(-7.0)),
            v("x.bad", Reading::Gauge(f64::NAN)),
            v("delivery.total-time", Reading::Histogram(h.snapshot())),
        ]
    }

    fn data(f: &Bytes) -> serde_json::Value {
        let text = std::str::from_utf8(f).unwrap();
        let data = text.strip_prefix("event: metrics\ndata: ").unwrap().strip_suffix("\n\n").unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn samples_in_stalwart_shape() {
        let json = data(&frame(&values(), SampleForm::Full));
        assert_eq!(json[0], serde_json::json!({"id":"smtp.connection-start","type":"counter","value":3}));
        assert_eq!(json[1], serde_json::json!({"id":"server.memory","type":"gauge","value":1024}));
        assert_eq!(json[2]["value"], 0.25);
        assert_eq!(json[4]["value"], -7);
        assert_eq!(json[5]["value"], 0);
        assert_eq!(json[6]["count"], 4);
        assert_eq!(json[6]["sum"], 30.4);
        assert!(json[6]["p50"].is_number());
        let text = frame(&values(), SampleForm::Full);
        assert!(std::str::from_utf8(&text).unwrap().contains("\"value\":1024}"), "integers have no fraction");
    }

    #[test]
    fn classic_values_are_unsigned_integers() {
        /// Stalwart's old web admin's sample type: every value an unsigned integer, tagged by
        /// `type`; a frame with one sample it cannot decode is dropped whole.
        #[derive(serde::Deserialize)]
        #[serde(tag = "type", rename_all = "camelCase")]
        #[allow(dead_code)]
        enum LiveMetric {
            Counter { id: String, value: u64 },
            Gauge { id: String, value: u64 },
            Histogram { id: String, count: u64, sum: u64 },
        }
        let f = frame(&values(), SampleForm::Classic);
        let text = std::str::from_utf8(&f).unwrap();
        let array = text.strip_prefix("event: metrics\ndata: ").unwrap().trim_end();
        let decoded: Vec<LiveMetric> =
            serde_json::from_str(array).expect("the old web admin decodes the frame");
        assert_eq!(decoded.len(), 7);
        let json = data(&f);
        let by = |id: &str| json.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap().clone();
        assert_eq!(by("x.ratio")["value"], 0);
        assert_eq!(by("x.half")["value"], 3, "rounded to the nearest");
        assert_eq!(by("x.negative")["value"], 0, "clamped");
        assert_eq!(by("x.bad")["value"], 0);
        assert_eq!(by("delivery.total-time")["sum"], 30);
        // Full decoding fails on the full form, which is why the classic endpoint coerces.
        let full = frame(&values(), SampleForm::Full);
        let full =
            std::str::from_utf8(&full).unwrap().strip_prefix("event: metrics\ndata: ").unwrap().trim_end();
        assert!(serde_json::from_str::<Vec<LiveMetric>>(full).is_err());
        assert_eq!((as_unsigned(f64::INFINITY), as_unsigned(-0.4), as_unsigned(0.5)), (u64::MAX, 0, 1));
    }

    #[test]
    fn v016_samples() {
        let f = frame(&values(), SampleForm::V016);
        let text = std::str::from_utf8(&f).unwrap();
        assert!(text.contains(r#"{"metric":"smtp.connection-start","@type":"Counter","count":3}"#), "{text}");
        assert!(text.contains(r#"{"metric":"server.memory","@type":"Gauge","count":1024}"#), "{text}");
        assert!(text.contains(r#"{"metric":"x.half","@type":"Gauge","count":3}"#), "{text}");
        assert!(text.contains(r#"{"metric":"x.negative","@type":"Gauge","count":0}"#), "{text}");
        assert!(
            text.contains(r#"{"metric":"delivery.total-time","@type":"Histogram","count":4,"sum":30}"#),
            "{text}"
        );
        assert_eq!(data(&f).as_array().unwrap().len(), 7);
    }
}
