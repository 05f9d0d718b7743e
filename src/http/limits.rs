//! Connection-level limits: the caps on open connections (overall and per source address), the
//! write timeout that drops a client that stops reading, and the idle timeout of a connection
//! with no request in flight. (A plain connection's first request head is read under the
//! header timeout in `direct.rs`.)
//!
//! These act below HTTP, on the socket, so they hold for every route and both HTTP versions.

use crate::auth::ratelimit::{in_net, ip_key};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnRefused {
    /// `max-connections` are open.
    #[error("too many connections (at most {0})")]
    Total(usize),
    /// `max-connections-per-ip` are open from this address.
    #[error("too many connections from this address (at most {0})")]
    PerIp(usize),
}

/// Counts open connections, overall and per source address.
#[derive(Debug)]
pub struct ConnLimiter {
    /// The caps: written by the accept loop from the configuration in force (a reload may
    /// change them), read by `acquire` on the same task; relaxed, as a cap needs no order.
    max: AtomicUsize,
    per_ip: AtomicUsize,
    exempt: Vec<(IpAddr, u8)>,
    total: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// An open connection's place; released when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    ip: Option<IpAddr>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut m = self.limiter.by_ip.lock();
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl ConnLimiter {
    /// At most `max` connections, `per_ip` per address outside the `exempt` networks.
    pub fn new(max: usize, per_ip: usize, exempt: Vec<(IpAddr, u8)>) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max: AtomicUsize::new(max),
            per_ip: AtomicUsize::new(per_ip),
            exempt,
            total: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Sets the caps (a configuration reload changed them); open connections keep their
    /// places.
    pub fn set_caps(&self, max: usize, per_ip: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.per_ip.store(per_ip, Ordering::Relaxed);
    }

    /// Takes a place for a connection from `ip`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, ConnRefused> {
        let max = self.max.load(Ordering::Relaxed);
        let per_ip = self.per_ip.load(Ordering::Relaxed);
        if self.total.fetch_add(1, Ordering::Relaxed) >= max {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(ConnRefused::Total(max));
        }
        let mut guard = ConnGuard { limiter: self.clone(), ip: None };
        if !self.exempt.iter().any(|(net, len)| in_net(ip, *net, *len)) {
            let key = ip_key(ip);
            let mut m = self.by_ip.lock();
            let n = m.entry(key).or_insert(0);
            if *n >= per_ip {
                drop(m);
                return Err(ConnRefused::PerIp(per_ip));
            }
            *n += 1;
            guard.ip = Some(key);
        }
        Ok(guard)
    }
}

/// A stream whose writes may not stay blocked longer than `timeout`: a client that stops
/// reading (its receive window and our send buffer full) gets a `TimedOut` error, which makes
/// hyper drop the connection. Reads are not timed (an SSE client sends nothing for hours).
pub struct TimedIo<T> {
    inner: T,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    hub: Arc<crate::hub::Hub>,
}

impl<T> TimedIo<T> {
    /// Wraps `inner`; each timeout is counted in `hub`'s statistics.
    pub fn new(inner: T, timeout: Duration, hub: Arc<crate::hub::Hub>) -> TimedIo<T> {
        TimedIo { inner, timeout, timer: None, armed: false, hub }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        if !self.armed {
            self.armed = true;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = self.timer.as_mut().expect("armed above");
        if timer.as_mut().poll(cx).is_ready() {
            self.armed = false;
            self.hub.ingest.write_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

/// Requests in flight on one connection, and since when it has had none. HTTP/2 keeps a
/// connection open as long as the client answers pings, so without this a client could hold a
/// connection place forever by opening it and sending nothing; HTTP/1 keep-alive is closed by
/// the same rule.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when `in_flight` last fell to zero.
    idle_since_ms: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }
}

impl Activity {
    /// Counts a request until the returned guard is dropped (its handler was dropped, or its
    /// response body was sent or abandoned).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How long the connection has had no request in flight (`None` while it has one).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight() > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst));
        Some(self.epoch.elapsed().saturating_sub(since))
    }

    /// Resolves once the connection has had no request in flight for `limit`.
    pub async fn idle_past(&self, limit: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= limit => return,
                Some(idle) => limit - idle,
                // A request in flight (a live stream, typically): look again later; a
                // stream ending resets the idle clock, so this only delays the check.
                None => limit,
            };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

/// One request's place in its connection's [`Activity`].
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Stamp before the count falls, so a watcher that sees zero never reads an old stamp.
        a.idle_since_ms.store(a.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that holds its request's [`InFlight`] place until it is dropped.
pub struct Tracked<B> {
    body: B,
    _flight: InFlight,
}

impl<B> Tracked<B> {
    /// Wraps `body`, keeping `flight` alive as long as it.
    pub fn new(body: B, flight: InFlight) -> Self {
        Tracked { body, _flight: flight }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_overall_and_per_ip() {
        let l = ConnLimiter::new(3, 2, vec![("127.0.0.0".parse().unwrap(), 8)]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let g1 = l.acquire(a).unwrap();
        let _g2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).unwrap_err(), ConnRefused::PerIp(2));
        let _g3 = l.acquire("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(l.acquire("127.0.0.1".parse().unwrap()).unwrap_err(), ConnRefused::Total(3));
        drop(g1);
        assert_eq!(l.open(), 2);
        assert!(l.acquire(a).is_ok());
    }

    #[tokio::test]
    async fn idle_clock_runs_only_without_requests_in_flight() {
        let a = Arc::new(Activity::default());
        let limit = Duration::from_millis(60);
        let flight = a.begin();
        assert_eq!(a.idle_for(), None);
        // With a request in flight the watcher must not fire, however long it waits.
        assert!(tokio::time::timeout(Duration::from_millis(150), a.idle_past(limit)).await.is_err());
        drop(flight);
        let idle = a.idle_for().unwrap();
        assert!(idle < limit, "the idle clock restarts when the last request ends: {idle:?}");
        let started = std::time::Instant::now();
        a.idle_past(limit).await;
        assert!(started.elapsed() >= limit - Duration::from_millis(5));
    }
}
