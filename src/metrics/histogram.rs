//! Histograms of the live metrics registry: log-linear buckets in atomics, one shard per writer.
//!
//! A value is filed under its binary exponent and the top four bits of its mantissa, so every
//! power of two is cut into 16 buckets of equal width. A bucket is at most 1/16 of its lower
//! bound wide, and a percentile is reported as the middle of its bucket, so **a reported
//! percentile is within ±3.125 % of the true sample value** (values below 2^-8 count as 0,
//! values at or above 2^48 are clamped to the largest value seen). Reported percentiles are
//! also clamped into the observed `[min, max]`, so a histogram of identical values reports them
//! exactly. The bucket index is a shift and a subtraction of the value's bits: no logarithm, no
//! search, no allocation.
//!
//! Beside the fine buckets each shard keeps exact counts for the 12 fixed Prometheus bounds of
//! the histogram's unit ([`bounds_for_unit`]), so `/metrics` reports `_bucket{le=...}` without
//! approximation.
//!
//! Writers never share a shard: each matcher thread records into its own (plain loads and
//! stores, no locked instruction), and producers' pushed observations go to one shared shard
//! updated with atomic read-modify-write operations. Shards are allocated on first use, so a
//! histogram nobody feeds costs a few pointers. Reading sums the shards. A histogram scraped
//! from an upstream Prometheus endpoint is held as that endpoint's buckets ([`External`]) and
//! replaces the local shards in readings: the upstream's own histogram is the complete one.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Mantissa bits that pick the bucket within a power of two (16 buckets per octave).
const SUB_BITS: u32 = 4;
/// Buckets per power of two.
const SUB: usize = 1 << SUB_BITS;
/// The smallest exponent with its own buckets: values below 2^-8 go to the zero bucket.
const MIN_EXP: i32 = -8;
/// Values at or above 2^48 go to the overflow bucket.
const MAX_EXP: i32 = 48;
/// Fine buckets: the zero bucket, 16 per power of two from 2^-8 to 2^48, and the overflow one.
pub const BUCKETS: usize = (MAX_EXP - MIN_EXP) as usize * SUB + 2;
const MIN_VALUE: f64 = 1.0 / 256.0;
const MAX_VALUE: f64 = (1u64 << 48) as f64;
/// The value bits shifted down to (biased exponent, top mantissa bits) for `MIN_VALUE`: its
/// biased exponent is 1023 + MIN_EXP and its mantissa is zero.
const BASE_KEY: u64 = ((1023 + MIN_EXP) as u64) << SUB_BITS;

/// Number of fixed Prometheus buckets (the `+Inf` bucket comes on top).
pub const PROM_BUCKETS: usize = 12;

/// Prometheus bounds for milliseconds: 1 ms to one minute.
const MS_BOUNDS: [f64; PROM_BUCKETS] =
    [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10000.0, 60000.0];
/// Prometheus bounds for bytes: 1 kB to 50 MB (mail sizes).
const BYTE_BOUNDS: [f64; PROM_BUCKETS] = [1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7];
/// Prometheus bounds for any other unit: powers of ten from 0.001 to 10^8.
const OTHER_BOUNDS: [f64; PROM_BUCKETS] = [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// The 12 fixed Prometheus bucket bounds for a unit (`milliseconds`, `bytes`, or other).
pub fn bounds_for_unit(unit: Option<&str>) -> &'static [f64; PROM_BUCKETS] {
    match unit {
        Some("milliseconds" | "ms") => &MS_BOUNDS,
        Some("bytes") => &BYTE_BOUNDS,
        _ => &OTHER_BOUNDS,
    }
}

/// The fine bucket of a value. Zero, negative and NaN values go to bucket 0.
#[inline]
pub fn bucket_of(v: f64) -> usize {
    if v.is_nan() || v < MIN_VALUE {
        return 0;
    }
    if v >= MAX_VALUE {
        return BUCKETS - 1;
    }
    // For a positive double the bits above the low 48 are the biased exponent followed by the
    // top four mantissa bits: consecutive integers for consecutive buckets.
    1 + ((v.to_bits() >> (52 - SUB_BITS)) - BASE_KEY) as usize
}

/// The half-open value range `[low, high)` of a fine bucket.
pub fn bucket_range(i: usize) -> (f64, f64) {
    if i == 0 {
        (0.0, MIN_VALUE)
    } else if i >= BUCKETS - 1 {
        (MAX_VALUE, f64::INFINITY)
    } else {
        let key = BASE_KEY + (i as u64 - 1);
        (f64::from_bits(key << (52 - SUB_BITS)), f64::from_bits((key + 1) << (52 - SUB_BITS)))
    }
}

/// Adds `n` to a counter: a plain load and store when the caller is the only writer (no locked
/// instruction on the matcher threads' path), an atomic add otherwise.
#[inline]
pub(crate) fn bump(c: &AtomicU64, n: u64, exclusive: bool) {
    if exclusive {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    } else {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One writer's share of a histogram.
struct Shard {
    buckets: [AtomicU64; BUCKETS],
    /// Non-cumulative counts per fixed Prometheus bound; the last slot is above every bound.
    /// The observation count is their sum (one store less per observation).
    prom: [AtomicU64; PROM_BUCKETS + 1],
    /// The sum of the values, as `f64` bits.
    sum: AtomicU64,
    /// Smallest and largest value, as `f64` bits (for non-negative doubles the bit order is the
    /// numeric order, so integer min/max works on them).
    min: AtomicU64,
    max: AtomicU64,
}

impl Shard {
    fn new() -> Arc<Shard> {
        Arc::new(Shard {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            prom: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0f64.to_bits()),
            min: AtomicU64::new(f64::INFINITY.to_bits()),
            max: AtomicU64::new(0f64.to_bits()),
        })
    }

    #[inline]
    fn record(&self, v: f64, n: u64, bounds: &[f64; PROM_BUCKETS], exclusive: bool) {
        bump(&self.buckets[bucket_of(v)], n, exclusive);
        // The first bound at or above v is after every bound below it: counting those is
        // branch-free, unlike a search that stops early.
        let slot: usize = bounds.iter().map(|&b| usize::from(v > b)).sum();
        bump(&self.prom[slot], n, exclusive);
        let add = v * n as f64;
        let bits = v.to_bits();
        if exclusive {
            let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + add;
            self.sum.store(sum.to_bits(), Ordering::Relaxed);
            if bits < self.min.load(Ordering::Relaxed) {
                self.min.store(bits, Ordering::Relaxed);
            }
            if bits > self.max.load(Ordering::Relaxed) {
                self.max.store(bits, Ordering::Relaxed);
            }
        } else {
            let _ = self.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + add).to_bits())
            });
            self.min.fetch_min(bits, Ordering::Relaxed);
            self.max.fetch_max(bits, Ordering::Relaxed);
        }
    }
}

/// One writer's handle on its shard of a histogram (held by a matcher thread per event type
/// that feeds the histogram).
#[derive(Clone)]
pub struct HistogramWriter {
    shard: Arc<Shard>,
    bounds: &'static [f64; PROM_BUCKETS],
    exclusive: bool,
}

impl HistogramWriter {
    /// Records one observation (negative and non-finite values as 0).
    #[inline]
    pub fn record(&self, v: f64) {
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        self.shard.record(v, 1, self.bounds, self.exclusive);
    }
}

/// A histogram as scraped from an upstream Prometheus endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct External {
    /// Observations.
    pub count: u64,
    /// Sum of the observations.
    pub sum: f64,
    /// `(le, cumulative count)` in increasing `le` order, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

/// A histogram: per-writer shards of fine buckets, or an upstream's scraped buckets.
pub struct Histogram {
    bounds: &'static [f64; PROM_BUCKETS],
    shards: Box<[OnceLock<Arc<Shard>>]>,
    external: Mutex<Option<External>>,
}

impl Histogram {
    /// A histogram with `writers` exclusive shards (one per matcher thread) plus one shared
    /// shard, reporting Prometheus buckets at `bounds`.
    pub fn new(writers: usize, bounds: &'static [f64; PROM_BUCKETS]) -> Histogram {
        Histogram {
            bounds,
            shards: (0..=writers).map(|_| OnceLock::new()).collect(),
            external: Mutex::new(None),
        }
    }

    /// The index of the shared shard (for observations from several threads at once).
    pub fn shared_shard(&self) -> usize {
        self.shards.len() - 1
    }

    /// Records `n` observations of `v` into shard `shard`. `exclusive` promises that no other
    /// thread writes this shard, which allows plain stores; the shared shard is never
    /// exclusive. Negative and non-finite values are recorded as 0.
    #[inline]
    pub fn record(&self, shard: usize, v: f64, n: u64, exclusive: bool) {
        let v = if v.is_finite() && v > 0.0 { v } else { 0.0 };
        let Some(slot) = self.shards.get(shard) else { return };
        let exclusive = exclusive && shard != self.shared_shard();
        slot.get_or_init(Shard::new).record(v, n, self.bounds, exclusive);
    }

    /// A handle on shard `shard` for one writer: recording through it skips finding the
    /// shard. `exclusive` as in [`Histogram::record`].
    pub fn writer(&self, shard: usize, exclusive: bool) -> Option<HistogramWriter> {
        let slot = self.shards.get(shard)?;
        Some(HistogramWriter {
            shard: slot.get_or_init(Shard::new).clone(),
            bounds: self.bounds,
            exclusive: exclusive && shard != self.shared_shard(),
        })
    }

    /// Replaces the local data in readings with an upstream's histogram (scraping).
    pub fn set_external(&self, e: External) {
        *self.external.lock() = Some(e);
    }

    /// A point-in-time reading: the scraped histogram if there is one, else the sum of the
    /// shards. Observations recorded while reading may be partly included.
    pub fn snapshot(&self) -> HistogramSnapshot {
        if let Some(e) = self.external.lock().clone() {
            return HistogramSnapshot {
                count: e.count,
                sum: e.sum,
                min: 0.0,
                max: f64::INFINITY,
                fine: None,
                le: e.buckets,
            };
        }
        let mut fine = vec![0u64; BUCKETS];
        let mut prom = [0u64; PROM_BUCKETS + 1];
        let (mut sum, mut min, mut max) = (0f64, f64::INFINITY, 0f64);
        for s in self.shards.iter().filter_map(OnceLock::get) {
            for (acc, b) in fine.iter_mut().zip(s.buckets.iter()) {
                *acc += b.load(Ordering::Relaxed);
            }
            for (acc, b) in prom.iter_mut().zip(s.prom.iter()) {
                *acc += b.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(s.sum.load(Ordering::Relaxed));
            min = min.min(f64::from_bits(s.min.load(Ordering::Relaxed)));
            max = max.max(f64::from_bits(s.max.load(Ordering::Relaxed)));
        }
        let mut le = Vec::with_capacity(PROM_BUCKETS + 1);
        let mut cumulative = 0u64;
        for (i, n) in prom.iter().enumerate() {
            cumulative += n;
            le.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative as f64));
        }
        HistogramSnapshot { count: cumulative, sum, min, max, fine: Some(fine), le }
    }
}

/// A reading of one histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations.
    pub count: u64,
    /// Sum of the observations.
    pub sum: f64,
    /// Smallest observation (`+inf` when empty; 0 for a scraped histogram).
    pub min: f64,
    /// Largest observation (`+inf` for a scraped histogram, where it is unknown).
    pub max: f64,
    /// The fine bucket counts (local histograms only).
    fine: Option<Vec<u64>>,
    /// `(le, cumulative count)` for Prometheus, `+Inf` last.
    pub le: Vec<(f64, f64)>,
}

impl HistogramSnapshot {
    /// The `q`-quantile (0 ≤ q ≤ 1), or `None` for an empty histogram. Local histograms answer
    /// from the fine buckets (±3.125 %, clamped to the observed range); scraped ones by linear
    /// interpolation inside the upstream's bucket, as Prometheus' `histogram_quantile` does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let q = q.clamp(0.0, 1.0);
        match &self.fine {
            Some(fine) => {
                let total: u64 = fine.iter().sum();
                if total == 0 {
                    return None;
                }
                // The rank of the wanted observation, 1-based: the smallest value with at
                // least q of the observations at or below it.
                let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
                let mut seen = 0u64;
                for (i, &n) in fine.iter().enumerate() {
                    seen += n;
                    if seen >= rank {
                        let (lo, hi) = bucket_range(i);
                        let mid = if i == 0 {
                            0.0
                        } else if hi.is_finite() {
                            (lo + hi) / 2.0
                        } else {
                            self.max
                        };
                        return Some(mid.clamp(self.min.min(self.max), self.max));
                    }
                }
                Some(self.max)
            }
            None => external_quantile(&self.le, q),
        }
    }
}

impl HistogramSnapshot {
    /// The observations made between `earlier` and this reading of the same histogram, for a
    /// quantile over a window (the alert evaluator). Bucket counts are subtracted (a bucket
    /// that shrank, after a scrape target restarted, counts zero); the minimum and maximum
    /// stay this reading's, which bound the window's observations too. A reading without the
    /// fine buckets subtracts the cumulative `le` counts instead.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let fine = match (&self.fine, &earlier.fine) {
            (Some(now), Some(then)) if now.len() == then.len() => {
                Some(now.iter().zip(then).map(|(a, b)| a.saturating_sub(*b)).collect::<Vec<u64>>())
            }
            _ => None,
        };
        let same_bounds = self.le.len() == earlier.le.len();
        let le = self
            .le
            .iter()
            .enumerate()
            .map(|(i, &(bound, cum))| {
                let before = if same_bounds { earlier.le[i].1 } else { 0.0 };
                (bound, (cum - before).max(0.0))
            })
            .collect();
        let count = match &fine {
            Some(f) => f.iter().sum(),
            None => self.count.saturating_sub(earlier.count),
        };
        HistogramSnapshot {
            count,
            sum: (self.sum - earlier.sum).max(0.0),
            min: self.min,
            max: self.max,
            fine,
            le,
        }
    }
}

/// `histogram_quantile` over cumulative `(le, count)` buckets.
fn external_quantile(le: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = le.last()?.1;
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0f64, 0.0f64);
    for &(bound, cum) in le {
        if cum >= rank {
            if !bound.is_finite() {
                // The answer lies above the highest finite bound: report that bound.
                return Some(prev.0);
            }
            let in_bucket = cum - prev.1;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            let low = if prev.0 > bound { 0.0 } else { prev.0 };
            return Some(low + (bound - low) * ((rank - prev.1) / in_bucket));
        }
        prev = (bound, cum);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        let mut v = MIN_VALUE;
        while v < MAX_VALUE {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order at {v}");
            let (lo, hi) = bucket_range(b);
            assert!(lo <= v && v < hi, "{v} not in bucket {b} = [{lo}, {hi})");
            assert!((hi - lo) / lo <= 1.0 / 16.0 + 1e-12, "bucket {b} too wide");
            last = b;
            v *= 1.013;
        }
        assert_eq!(BASE_KEY, MIN_VALUE.to_bits() >> (52 - SUB_BITS));
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(-3.0), 0);
        assert_eq!(bucket_of(f64::NAN), 0);
        assert_eq!(bucket_of(1e300), BUCKETS - 1);
        assert_eq!(bucket_range(bucket_of(1.0)).0, 1.0);
        // Integers up to 32 have a bucket each (exact).
        for i in 1..32u32 {
            assert_eq!(bucket_range(bucket_of(i as f64)).0, i as f64);
        }
    }

    #[test]
    fn percentiles_within_documented_error() {
        let h = Histogram::new(2, bounds_for_unit(Some("milliseconds")));
        for v in 1..=10_000u32 {
            h.record((v % 2) as usize, v as f64, 1, true);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.sum, 50_005_000.0);
        for (q, want) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0), (1.0, 10_000.0)] {
            let got = s.quantile(q).unwrap();
            assert!((got - want).abs() / want <= 0.03125, "p{q}: {got} vs {want}");
        }
        // Prometheus buckets are exact and cumulative.
        assert_eq!(s.le[0], (1.0, 1.0));
        assert_eq!(s.le[8], (1000.0, 1000.0));
        assert_eq!(s.le[9], (5000.0, 5000.0));
        assert_eq!(*s.le.last().unwrap(), (f64::INFINITY, 10_000.0));
    }

    #[test]
    fn identical_values_are_exact_and_empty_is_none() {
        let h = Histogram::new(1, bounds_for_unit(Some("bytes")));
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..5 {
            h.record(0, 1234.0, 1, true);
        }
        h.record(h.shared_shard(), 1234.0, 3, false);
        let s = h.snapshot();
        assert_eq!((s.count, s.quantile(0.5), s.quantile(0.99)), (8, Some(1234.0), Some(1234.0)));
        // Bad values count as zero instead of poisoning the sum.
        h.record(0, f64::NAN, 1, true);
        h.record(0, -5.0, 1, true);
        let s = h.snapshot();
        assert_eq!((s.count, s.sum, s.quantile(0.0)), (10, 8.0 * 1234.0, Some(0.0)));
    }

    #[test]
    fn external_histograms_interpolate() {
        let h = Histogram::new(1, bounds_for_unit(None));
        h.set_external(External {
            count: 100,
            sum: 2500.0,
            buckets: vec![(10.0, 20.0), (50.0, 80.0), (f64::INFINITY, 100.0)],
        });
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.quantile(0.1), Some(5.0));
        assert_eq!(s.quantile(0.5), Some(10.0 + 40.0 * 0.5));
        assert_eq!(s.quantile(0.99), Some(50.0));
        assert_eq!(external_quantile(&[], 0.5), None);
        assert_eq!(external_quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    }
}
