//! Results of a run: one row per measured configuration, printed as a table and saved as JSON.

use crate::subscriber::{Slice, SLICE_NS, SLOW_US};
use hdrhistogram::Histogram;
use serde::Serialize;

/// The deliveries of the events sent in one slice of the load (see `subscriber::SLICE_NS`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimelineSlice {
    /// Start of the slice, milliseconds after the load started.
    pub from_ms: u64,
    /// Events delivered.
    pub events: u64,
    /// Of those, delivered 5 ms or more after they were sent.
    pub slow: u64,
    /// The slowest delivery, microseconds.
    pub max_us: u64,
}

/// The numbers of one run against one hub.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Hub measured (livetap, naive, nchan) and variant.
    pub peer: String,
    /// Subscribers connected (including stalled ones).
    pub subscribers: usize,
    /// Events accepted by the hub.
    pub events: u64,
    /// Requested events per second (`None`: as fast as possible).
    pub target_rate: Option<u64>,
    /// Events per second accepted over the producing period.
    pub ingest_rate: f64,
    /// Events received by all subscribers.
    pub delivered: u64,
    /// Events the subscribers should have received.
    pub expected: u64,
    /// Deliveries per second over the producing period.
    pub deliveries_per_sec: f64,
    /// Bytes received by all subscribers.
    pub bytes: u64,
    /// Bytes per second received by all subscribers.
    pub bytes_per_sec: f64,
    /// Expected events neither received nor reported as lagged.
    pub lost: u64,
    /// Events received beyond the expected count.
    pub extra: u64,
    /// Events received out of order or twice.
    pub out_of_order: u64,
    /// Events the hub reported dropped for lagging subscribers.
    pub lagged: u64,
    /// End-to-end latency percentiles, microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// The same percentiles over the events sent after the warm-up (`warmup_secs`).
    pub steady_p50_us: u64,
    /// 99th percentile after the warm-up.
    pub steady_p99_us: u64,
    /// 99.9th percentile after the warm-up.
    pub steady_p999_us: u64,
    /// Seconds at the start of the load left out of the steady-state percentiles.
    pub warmup_secs: f64,
    /// Deliveries 5 ms or more after their event was sent, over the whole run.
    pub slow_deliveries: u64,
    /// Of those, the ones whose event was sent in the load's first second.
    pub slow_first_second: u64,
    /// Per 100 ms of the load (by send time): deliveries, slow deliveries and the slowest.
    pub timeline: Vec<TimelineSlice>,
    /// Harness threads that read the subscribers' streams.
    pub reader_threads: usize,
    /// Hub CPU seconds while producing.
    pub hub_cpu_secs: f64,
    /// Hub CPU seconds until the last delivery.
    pub hub_cpu_secs_total: f64,
    /// Hub peak resident memory, bytes.
    pub hub_peak_rss: u64,
    /// Hub RSS before connecting (idle-10k).
    pub hub_rss_before: u64,
    /// Hub RSS after connecting (idle-10k).
    pub hub_rss_after: u64,
    /// Hub memory per idle subscriber, bytes (idle-10k).
    pub bytes_per_subscriber: f64,
    /// Producing period, seconds.
    pub duration_secs: f64,
    /// First subscriber errors, if any.
    pub errors: Vec<String>,
    /// livetap's stats endpoint at the end (without per-subscriber detail).
    pub hub_stats: Option<serde_json::Value>,
}

impl Row {
    /// An empty row.
    pub fn new(scenario: &str, peer: String) -> Row {
        Row { scenario: scenario.into(), peer, ..Row::default() }
    }

    /// Fills the latency percentiles: the whole run's from `all`, the steady state's from
    /// `steady`.
    pub fn set_latency(&mut self, all: &Histogram<u64>, steady: &Histogram<u64>) {
        if !all.is_empty() {
            self.p50_us = all.value_at_quantile(0.50);
            self.p99_us = all.value_at_quantile(0.99);
            self.p999_us = all.value_at_quantile(0.999);
            self.max_us = all.max();
        }
        if !steady.is_empty() {
            self.steady_p50_us = steady.value_at_quantile(0.50);
            self.steady_p99_us = steady.value_at_quantile(0.99);
            self.steady_p999_us = steady.value_at_quantile(0.999);
        }
    }

    /// Fills the timeline from the harness's slices, from the slice holding `load_from_ns`
    /// (nanoseconds since the run's epoch) to the last one with deliveries.
    pub fn set_timeline(&mut self, slices: &[Slice], load_from_ns: u64) {
        let first = (load_from_ns / SLICE_NS) as usize;
        let last = slices.iter().rposition(|s| s.events > 0).unwrap_or(0);
        self.timeline = (first..=last.max(first))
            .filter_map(|i| {
                let s = slices.get(i)?;
                Some(TimelineSlice {
                    from_ms: ((i as u64 * SLICE_NS).saturating_sub(load_from_ns)) / 1_000_000,
                    events: s.events,
                    slow: s.slow,
                    max_us: s.max_us,
                })
            })
            .collect();
        self.slow_deliveries = self.timeline.iter().map(|s| s.slow).sum();
        // The slice holding the start counts as the first; ten slices make the first second.
        self.slow_first_second = self.timeline.iter().take(10).map(|s| s.slow).sum();
    }
}

/// A run's report: its rows, and for comparisons the ratios that matter.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Measured configurations.
    pub rows: Vec<Row>,
    /// Derived comparisons, e.g. the slow consumer's effect in percent.
    pub notes: Vec<String>,
}

impl Report {
    /// One row.
    pub fn single(row: Row) -> Report {
        Report { scenario: row.scenario.clone(), rows: vec![row], notes: Vec::new() }
    }

    /// Two runs of the same load, without and with a disturbance (the stalled subscriber).
    pub fn compare(scenario: &str, mut base: Report, mut other: Report) -> Report {
        let mut a = base.rows.remove(0);
        let mut b = other.rows.remove(0);
        a.peer.push_str(" (baseline)");
        b.peer.push_str(" (+1 stalled)");
        let pct = |x: f64, y: f64| if x > 0.0 { (y - x) / x * 100.0 } else { 0.0 };
        let notes = vec![
            format!(
                "ingest rate change with the stalled subscriber: {:+.1}%",
                pct(a.ingest_rate, b.ingest_rate)
            ),
            format!("p99 latency change for the others: {:+.1}%", pct(a.p99_us as f64, b.p99_us as f64)),
            format!("p50 latency change for the others: {:+.1}%", pct(a.p50_us as f64, b.p50_us as f64)),
        ];
        Report { scenario: scenario.into(), rows: vec![a, b], notes }
    }

    /// Prints the table.
    pub fn print(&self) {
        println!();
        println!(
            "{:<14} {:<22} {:>6} {:>11} {:>12} {:>10} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>10} {:>7} {:>9}",
            "scenario",
            "peer",
            "subs",
            "ingest/s",
            "deliver/s",
            "MB/s",
            "lost",
            "dup",
            "lagged",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "p99 steady",
            "cpu s",
            "peak MiB"
        );
        for r in &self.rows {
            println!(
                "{:<14} {:<22} {:>6} {:>11.0} {:>12.0} {:>10.1} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>10} {:>7.2} {:>9.1}",
                r.scenario,
                r.peer,
                r.subscribers,
                r.ingest_rate,
                r.deliveries_per_sec,
                r.bytes_per_sec / 1e6,
                r.lost,
                r.out_of_order + r.extra,
                r.lagged,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.steady_p99_us,
                r.hub_cpu_secs,
                r.hub_peak_rss as f64 / (1 << 20) as f64
            );
            if r.bytes_per_subscriber > 0.0 {
                println!(
                    "    rss before {:.1} MiB, after {:.1} MiB: {:.0} bytes per idle subscriber",
                    r.hub_rss_before as f64 / (1 << 20) as f64,
                    r.hub_rss_after as f64 / (1 << 20) as f64,
                    r.bytes_per_subscriber
                );
            }
            if r.slow_deliveries > 0 {
                let worst = r.timeline.iter().max_by_key(|s| s.max_us).cloned().unwrap_or_default();
                println!(
                    "    {} deliveries took {} ms or more, {} of them sent in the first second; slowest {} µs, sent {}-{} ms into the load",
                    r.slow_deliveries,
                    SLOW_US / 1000,
                    r.slow_first_second,
                    worst.max_us,
                    worst.from_ms,
                    worst.from_ms + SLICE_NS / 1_000_000
                );
            }
            for e in &r.errors {
                println!("    subscriber error: {e}");
            }
        }
        for n in &self.notes {
            println!("  {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_starts_with_the_load_and_counts_its_first_second() {
        // The load starts 250 ms into the run: slice 2 holds its start.
        let mut slices = vec![Slice::default(); 20];
        slices[2] = Slice { events: 10, slow: 4, max_us: 9_000 };
        slices[11] = Slice { events: 10, slow: 1, max_us: 6_000 };
        slices[12] = Slice { events: 10, slow: 2, max_us: 5_500 };
        let mut row = Row::default();
        row.set_timeline(&slices, 250_000_000);
        assert_eq!(row.timeline.len(), 11, "slices 2 to 12");
        assert_eq!((row.timeline[0].from_ms, row.timeline[1].from_ms), (0, 50));
        assert_eq!(row.slow_deliveries, 7);
        // Slices 2-11 are the first ten; slice 12 is not.
        assert_eq!(row.slow_first_second, 5);
    }
}
