//! Pure evaluation of alert terms from metric samples: a bounded ring of readings per metric
//! an alert needs, long enough for the longest window over it, and the arithmetic of rates,
//! gauges and windowed histogram quantiles over that ring.
//!
//! No I/O and no clock: the evaluator task (`alert::run`) reads the registry every
//! `alert-interval` and hands the readings in with the time they were taken ([`Samples::record`]),
//! so the unit tests drive it with made-up times.

use super::expr::{Func, Term};
use crate::metrics::histogram::HistogramSnapshot;
use crate::metrics::{MetricValue, Reading};
use ahash::AHashMap;
use std::collections::VecDeque;
use std::time::Duration;

/// The most samples kept per metric, whatever the windows and the interval (a week's window at
/// a one-second interval would otherwise keep 604,800 histogram readings).
pub const MAX_SAMPLES: usize = 4096;

/// One metric's reading at one time. A counter nobody incremented reads zero; a gauge
/// nobody set and a histogram without observations read `None`.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value, if set.
    Gauge(Option<f64>),
    /// A histogram's distribution so far, if it has observations.
    Histogram(Option<HistogramSnapshot>),
}

/// The readings of one metric, oldest first.
#[derive(Debug)]
struct Series {
    func: Func,
    /// How far back readings are kept.
    keep: Duration,
    ring: VecDeque<(Duration, Sample)>,
    cap: usize,
}

/// The sample rings of every metric the alerts read.
#[derive(Debug, Default)]
pub struct Samples {
    series: AHashMap<String, Series>,
}

impl Samples {
    /// Rings for `terms` (of every alert), sampled every `interval`: each metric keeps its
    /// longest window plus two intervals of readings (so a reading at or before the window's
    /// start is still there), at most [`MAX_SAMPLES`].
    pub fn new<'a>(terms: impl IntoIterator<Item = &'a Term>, interval: Duration) -> Samples {
        let mut series: AHashMap<String, Series> = AHashMap::new();
        let interval = interval.max(Duration::from_millis(1));
        for t in terms {
            let keep = t.window + 2 * interval;
            let s = series.entry(t.metric.clone()).or_insert_with(|| Series {
                func: t.func,
                keep,
                ring: VecDeque::new(),
                cap: 2,
            });
            s.keep = s.keep.max(keep);
            let n = (s.keep.as_nanos() / interval.as_nanos()) as usize + 2;
            s.cap = n.clamp(2, MAX_SAMPLES);
        }
        Samples { series }
    }

    /// Takes over the readings `previous` holds of the metrics these rings also want with the
    /// same function, so a reload that adds or removes alerts does not restart the windows of
    /// the alerts it keeps (the next reading trims them to these rings' length).
    pub fn carry_from(&mut self, mut previous: Samples) {
        for (name, s) in self.series.iter_mut() {
            if let Some(old) = previous.series.remove(name) {
                if old.func == s.func {
                    s.ring = old.ring;
                }
            }
        }
    }

    /// The metric names the rings want, for the registry reading's filter.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    /// Records the readings `values` taken at `now` (time since any fixed start). A metric the
    /// rings want that is missing from `values` reads zero (counter) or no data.
    pub fn record(&mut self, now: Duration, values: &[MetricValue]) {
        for (name, s) in self.series.iter_mut() {
            let reading = values.iter().find(|v| &*v.name == name.as_str()).map(|v| &v.reading);
            let sample = match (s.func, reading) {
                (Func::Rate, Some(Reading::Counter(n))) => Sample::Counter(*n),
                (Func::Rate, _) => Sample::Counter(0),
                (Func::Gauge, Some(Reading::Gauge(g))) => Sample::Gauge(Some(*g)),
                (Func::Gauge, _) => Sample::Gauge(None),
                (_, Some(Reading::Histogram(h))) => Sample::Histogram(Some(h.clone())),
                (_, _) => Sample::Histogram(None),
            };
            s.ring.push_back((now, sample));
            while s.ring.len() > s.cap
                || s.ring.len() > 2 && s.ring.get(1).is_some_and(|(t, _)| now.saturating_sub(*t) >= s.keep)
            {
                s.ring.pop_front();
            }
        }
    }

    /// The value of `term` at the latest reading, or `None` without enough data.
    pub fn value(&self, term: &Term) -> Option<f64> {
        let s = self.series.get(&term.metric)?;
        let (now, latest) = s.ring.back()?;
        if term.func == Func::Gauge {
            return match latest {
                Sample::Gauge(g) => *g,
                _ => None,
            };
        }
        // The window starts at the latest reading taken at or before `now - window`; while
        // the rings are younger than the window, at the oldest reading (so an alert can fire
        // in its first window, on the part of it seen so far).
        let start = now.saturating_sub(term.window);
        let (then, base) = s.ring.iter().rev().find(|(t, _)| *t <= start).or_else(|| s.ring.front())?;
        let elapsed = now.saturating_sub(*then);
        if elapsed.is_zero() {
            return None;
        }
        match (term.func, base, latest) {
            (Func::Rate, Sample::Counter(a), Sample::Counter(b)) => {
                // A counter that went down was reset (a pushed counter's producer restarted):
                // its whole value is the increase since.
                let delta = if b >= a { b - a } else { *b };
                Some(delta as f64 / elapsed.as_secs_f64())
            }
            (f, Sample::Histogram(a), Sample::Histogram(Some(b))) => {
                let window = match a {
                    Some(a) => b.since(a),
                    None => b.clone(),
                };
                match f {
                    Func::Count => Some(window.count as f64),
                    _ if window.count == 0 => None,
                    Func::Avg => Some(window.sum / window.count as f64),
                    Func::Quantile(q) => window.quantile(q),
                    _ => None,
                }
            }
            (Func::Count, Sample::Histogram(_), Sample::Histogram(None)) => Some(0.0),
            _ => None,
        }
    }

    /// How many readings the ring of `metric` holds (for tests and the bound).
    pub fn len_of(&self, metric: &str) -> usize {
        self.series.get(metric).map_or(0, |s| s.ring.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::{bounds_for_unit, Histogram};
    use std::sync::Arc;

    fn term(func: Func, metric: &str, window_secs: u64) -> Term {
        Term { func, metric: metric.into(), window: Duration::from_secs(window_secs), text: String::new() }
    }

    fn counter(name: &str, n: u64) -> MetricValue {
        MetricValue { name: Arc::from(name), unit: None, help: None, reading: Reading::Counter(n) }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn kept_metrics_carry_their_readings_into_new_rings() {
        let kept = term(Func::Rate, "auth.failed", 60);
        let added = term(Func::Rate, "auth.success", 60);
        let mut old = Samples::new([&kept], secs(10));
        old.record(secs(0), &[]);
        old.record(secs(10), &[counter("auth.failed", 50)]);
        assert_eq!(old.value(&kept), Some(5.0));
        let mut new = Samples::new([&kept, &added], secs(10));
        new.carry_from(old);
        // The kept metric's window goes on; the added one starts empty.
        assert_eq!(new.value(&kept), Some(5.0));
        assert_eq!(new.value(&added), None);
        new.record(secs(20), &[counter("auth.failed", 100), counter("auth.success", 7)]);
        assert_eq!(new.value(&kept), Some(5.0), "100 over 20 s");
        assert_eq!(new.value(&added), None, "one reading is no rate");
    }

    #[test]
    fn rate_is_the_increase_over_the_window_per_second() {
        let t = term(Func::Rate, "auth.failed", 60);
        let mut s = Samples::new([&t], secs(10));
        assert_eq!(s.value(&t), None, "no reading yet");
        s.record(secs(0), &[]);
        assert_eq!(s.value(&t), None, "one reading is no rate");
        s.record(secs(10), &[counter("auth.failed", 50)]);
        // Younger than the window: the rate over what was seen.
        assert_eq!(s.value(&t), Some(5.0));
        for i in 2..=6 {
            s.record(secs(i * 10), &[counter("auth.failed", 50)]);
        }
        // At 60 s the window starts at the 0 s reading: 50 over 60 s.
        assert_eq!(s.value(&t), Some(50.0 / 60.0));
        s.record(secs(70), &[counter("auth.failed", 50)]);
        // At 70 s it starts at 10 s, after the burst: nothing new.
        assert_eq!(s.value(&t), Some(0.0));
        // The ring keeps the window plus two intervals, not every reading.
        for i in 8..100 {
            s.record(secs(i * 10), &[counter("auth.failed", 50 + i)]);
        }
        assert!(s.len_of("auth.failed") <= 10, "{}", s.len_of("auth.failed"));
        assert_eq!(s.value(&t), Some(6.0 / 60.0));
        // A counter that went down restarted: its value is the increase.
        s.record(secs(1000), &[counter("auth.failed", 3)]);
        assert!(s.value(&t).unwrap() > 0.0);
    }

    #[test]
    fn two_windows_over_one_counter_share_a_ring() {
        let short = term(Func::Rate, "auth.failed", 10);
        let long = term(Func::Rate, "auth.failed", 100);
        let mut s = Samples::new([&short, &long], secs(10));
        for i in 0..=20u64 {
            let n = if i <= 10 { i * 100 } else { 1000 };
            s.record(secs(i * 10), &[counter("auth.failed", n)]);
        }
        assert_eq!(s.value(&short), Some(0.0));
        assert_eq!(s.value(&long), Some(0.0));
        s.record(secs(210), &[counter("auth.failed", 1100)]);
        assert_eq!(s.value(&short), Some(10.0));
        assert_eq!(s.value(&long), Some(1.0));
    }

    #[test]
    fn gauges_read_their_latest_value_or_nothing() {
        let t = term(Func::Gauge, "queue.count", 0);
        let mut s = Samples::new([&t], secs(1));
        s.record(secs(0), &[]);
        assert_eq!(s.value(&t), None);
        let g = MetricValue {
            name: Arc::from("queue.count"),
            unit: None,
            help: None,
            reading: Reading::Gauge(7.5),
        };
        s.record(secs(1), &[g]);
        assert_eq!(s.value(&t), Some(7.5));
    }

    #[test]
    fn quantiles_count_only_the_window_observations() {
        let h = Histogram::new(1, bounds_for_unit(Some("milliseconds")));
        let read = |h: &Histogram| MetricValue {
            name: Arc::from("delivery.total-time"),
            unit: None,
            help: None,
            reading: Reading::Histogram(h.snapshot()),
        };
        let p99 = term(Func::Quantile(0.99), "delivery.total-time", 60);
        let p50 = term(Func::Quantile(0.5), "delivery.total-time", 60);
        let count = term(Func::Count, "delivery.total-time", 60);
        let avg = term(Func::Avg, "delivery.total-time", 60);
        let mut s = Samples::new([&p99, &p50, &count, &avg], secs(30));
        s.record(secs(0), &[]);
        // One reading is no window yet.
        assert_eq!(s.value(&count), None);
        assert_eq!(s.value(&p99), None);
        // An old, slow minute: 100 observations of 10 s.
        h.record(0, 10_000.0, 100, true);
        s.record(secs(30), &[read(&h)]);
        s.record(secs(60), &[read(&h)]);
        let slow = s.value(&p99).unwrap();
        assert!((slow - 10_000.0).abs() / 10_000.0 < 0.04, "{slow}");
        // The next minute is fast: 100 observations of 20 ms. The old ones leave the window.
        h.record(0, 20.0, 100, true);
        s.record(secs(90), &[read(&h)]);
        s.record(secs(120), &[read(&h)]);
        let fast = s.value(&p99).unwrap();
        assert!((fast - 20.0).abs() / 20.0 < 0.04, "{fast}");
        assert_eq!(s.value(&count), Some(100.0));
        assert!((s.value(&avg).unwrap() - 20.0).abs() < 1e-9);
        // A window with no new observation has no quantile, and counts zero.
        s.record(secs(150), &[read(&h)]);
        s.record(secs(180), &[read(&h)]);
        assert_eq!(s.value(&p50), None);
        assert_eq!(s.value(&count), Some(0.0));
    }
}
