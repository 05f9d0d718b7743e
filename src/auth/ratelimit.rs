//! Rate limits of the access layer: the per-principal ingest rate and the per-source-IP count
//! of failed authentications.
//!
//! Both are small, bounded, lock-protected structures touched once per request, never per
//! event, so a mutex is cheaper than anything clever.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket with debt: a request is admitted while the bucket is not empty and then
/// takes all it needs, even below zero, so a batch larger than a second's allowance still
/// passes once and the producer then waits until the debt is paid back.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `per_second` units per second, with a burst of one second's worth.
    pub fn new(per_second: u64) -> RateLimiter {
        RateLimiter { rate: per_second as f64, state: Mutex::new((per_second as f64, Instant::now())) }
    }

    /// Units per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes `n` units now, or says how long to wait before trying again.
    pub fn take(&self, n: u64) -> Result<(), Duration> {
        self.take_at(n, Instant::now())
    }

    fn take_at(&self, n: u64, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.rate);
        s.1 = now;
        if s.0 <= 0.0 {
            return Err(Duration::from_secs_f64((-s.0 / self.rate).max(0.001)));
        }
        s.0 -= n as f64;
        Ok(())
    }
}

/// The address a per-IP limit counts under: the IPv4 address itself (also when written as
/// an IPv4-mapped IPv6 address), or the /64 network of an IPv6 address, since one IPv6 host
/// usually controls a whole /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

/// Most source addresses tracked at once; past this, new addresses are not tracked until
/// old windows expire (memory stays bounded whatever the number of attacking addresses).
pub const MAX_TRACKED_SOURCES: usize = 65_536;

/// Failed authentications per source address in fixed windows; a source that reached the
/// limit is refused (429) until its window ends, whatever credentials it sends.
#[derive(Debug)]
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// At most `max` failures per `window` per source (0: no limit).
    pub fn new(max: u32, window: Duration) -> FailureLimiter {
        FailureLimiter { max, window, map: Mutex::new(HashMap::new()) }
    }

    /// When `ip` is locked out: how long until it may try again.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let key = ip_key(ip);
        let map = self.map.lock();
        let (start, n) = map.get(&key)?;
        let left = self.window.checked_sub(start.elapsed())?;
        (*n >= self.max).then_some(left.max(Duration::from_secs(1)))
    }

    /// Counts one failure of `ip`.
    pub fn fail(&self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let key = ip_key(ip);
        let now = Instant::now();
        let mut map = self.map.lock();
        if let Some(e) = map.get_mut(&key) {
            if now.duration_since(e.0) >= self.window {
                *e = (now, 0);
            }
            e.1 = e.1.saturating_add(1);
            return;
        }
        if map.len() >= MAX_TRACKED_SOURCES {
            let window = self.window;
            map.retain(|_, (start, _)| now.duration_since(*start) < window);
            if map.len() >= MAX_TRACKED_SOURCES {
                return;
            }
        }
        map.insert(key, (now, 1));
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.map.lock().len()
    }
}

/// True when `ip` is inside `net/len` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len.min(128)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Parses `addr` or `addr/len`.
pub fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = a.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match l {
        Some(l) => l.trim().parse::<u8>().ok().filter(|&l| l <= max)?,
        None => max,
    };
    Some((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_with_debt() {
        let r = RateLimiter::new(100);
        let t0 = Instant::now();
        assert!(r.take_at(250, t0).is_ok(), "a full bucket admits a large batch once");
        let wait = r.take_at(1, t0).unwrap_err();
        assert!(wait >= Duration::from_millis(1400) && wait <= Duration::from_millis(1600), "{wait:?}");
        assert!(r.take_at(1, t0 + Duration::from_millis(1600)).is_ok());
    }

    #[test]
    fn failures_lock_a_source_for_its_window() {
        let f = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..2 {
            f.fail(ip);
        }
        assert!(f.locked(ip).is_none());
        f.fail("::ffff:192.0.2.7".parse().unwrap());
        assert!(f.locked(ip).is_some(), "mapped and plain IPv4 count together");
        assert!(f.locked("192.0.2.8".parse().unwrap()).is_none());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        for _ in 0..3 {
            f.fail(a);
        }
        assert!(f.locked("2001:db8:1:2:ffff::9".parse().unwrap()).is_some(), "one /64");
        assert!(f.locked("2001:db8:1:3::1".parse().unwrap()).is_none());
    }

    #[test]
    fn networks() {
        let (n, l) = parse_net("127.0.0.0/8").unwrap();
        assert!(in_net("127.1.2.3".parse().unwrap(), n, l));
        assert!(in_net("::ffff:127.0.0.1".parse().unwrap(), n, l));
        assert!(!in_net("10.0.0.1".parse().unwrap(), n, l));
        let (n, l) = parse_net("::1").unwrap();
        assert!(in_net("::1".parse().unwrap(), n, l) && l == 128);
        assert!(parse_net("10.0.0.0/33").is_none() && parse_net("x").is_none());
    }
}
