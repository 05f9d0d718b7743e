//! Request and response bodies: [`RequestBody`], [`LiveBody`] (a whole buffer or a live
//! stream holding its principal's stream place), and the JSON responses built from them.

use crate::auth::principal::StreamSlot;
use crate::sse::metrics::MetricsBody;
use crate::sse::{SseBody, SseChunk};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde::Serialize;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Request bodies: hyper's, or none for a live-stream request read by [`direct`](super::direct) (a `GET`
/// whose head livetap parsed itself). One type, so the handlers exist once.
pub type RequestBody = http_body_util::Either<Incoming, http_body_util::Empty<Bytes>>;

/// Response bodies: a whole buffer, or a live SSE stream.
pub enum LiveBody {
    /// A complete body, sent once.
    Full(Option<Bytes>),
    /// A live stream, holding its principal's stream place while it lasts.
    Sse(Box<SseBody>, StreamSlot),
    /// A live metrics stream, holding its principal's stream place while it lasts.
    Metrics(Box<MetricsBody>, StreamSlot),
}

impl Body for LiveBody {
    type Data = SseChunk;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<SseChunk>, Infallible>>> {
        match self.get_mut() {
            LiveBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(SseChunk::single(b))))),
            LiveBody::Sse(s, _) => Pin::new(s.as_mut()).poll_frame(cx),
            LiveBody::Metrics(m, _) => Pin::new(m.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LiveBody::Full(b) => b.is_none(),
            LiveBody::Sse(s, _) => s.is_end_stream(),
            LiveBody::Metrics(m, _) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LiveBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            LiveBody::Full(None) => SizeHint::with_exact(0),
            LiveBody::Sse(..) | LiveBody::Metrics(..) => SizeHint::default(),
        }
    }
}

/// A JSON response with the given status, never cached.
pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<LiveBody> {
    let mut r = Response::new(LiveBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `v` as a JSON response with the given status.
pub(super) fn json_ok<T: Serialize>(status: StatusCode, v: &T) -> Response<LiveBody> {
    json_response(status, serde_json::to_vec(v).unwrap_or_default())
}
