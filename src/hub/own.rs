//! livetap's own samples in the live metrics: memory, ingest rate, subscribers, lag, ring.
//!
//! They are computed when a frame or `/metrics` is read, from the hub's stats snapshot, so
//! they cost nothing between readings. The ingest rate needs two points in time; a one-second
//! tick ([`OwnState::tick`](crate::metrics::registry::OwnState::tick)) keeps the last second's rate. `server.memory` is Stalwart's name
//! for the server's memory: livetap reports its own resident memory there unless a producer or
//! a scrape supplies the mail server's value, and always as `livetap.memory`.

use super::stats::StatsSnapshot;
use crate::metrics::query::NameFilter;
use crate::metrics::{MetricValue, MetricsRegistry, Reading};
// `OwnState` lives with the registry that holds it; the tests below name it through `super::*`.
#[cfg(test)]
use crate::metrics::registry::OwnState;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The process' resident memory in bytes, from `/proc/self/statm` (Linux); `None` elsewhere.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p)
}

fn value(
    name: &'static str,
    unit: Option<&'static str>,
    help: &'static str,
    reading: Reading,
) -> MetricValue {
    MetricValue { name: Arc::from(name), unit: unit.map(Arc::from), help: Some(help), reading }
}

/// livetap's own readings that `filter` selects. Counters at zero are left out, as for all
/// counters.
pub fn own_values(stats: &StatsSnapshot, reg: &MetricsRegistry, filter: &NameFilter) -> Vec<MetricValue> {
    let rss = rss_bytes();
    let lagged = stats.subscriber_detail.iter().filter(|s| s.dropped > 0).count();
    let g = |v: f64| Reading::Gauge(v);
    let c = Reading::Counter;
    let mut all = vec![
        value("livetap.events-accepted", Some("events"), "Events accepted into the ring", c(stats.accepted)),
        value("livetap.events-rejected", Some("events"), "Events rejected as malformed", c(stats.rejected)),
        value(
            "livetap.events-per-second",
            Some("events/s"),
            "Events ingested per second over the last second",
            g(reg.own.rate()),
        ),
        value(
            "livetap.refused-batches",
            Some("batches"),
            "Ingest batches refused because the ring was full",
            c(stats.refused_batches),
        ),
        value("livetap.deliveries", Some("events"), "Events queued to live subscribers", c(stats.deliveries)),
        value("livetap.dropped", Some("events"), "Events dropped for lagging subscribers", c(stats.dropped)),
        value(
            "livetap.subscribers",
            Some("subscribers"),
            "Live trace subscribers",
            g(stats.subscribers as f64),
        ),
        value(
            "livetap.lagged-subscribers",
            Some("subscribers"),
            "Live trace subscribers that have had events dropped",
            g(lagged as f64),
        ),
        value(
            "livetap.metric-streams",
            Some("streams"),
            "Open live metrics streams",
            g(stats.metric_streams as f64),
        ),
        value(
            "livetap.ring-occupancy",
            Some("events"),
            "Events in the ring not yet read by every matcher thread",
            g(stats.ring_occupancy as f64),
        ),
        value(
            "livetap.ring-capacity",
            Some("events"),
            "Events the ring holds",
            g(stats.ring_capacity as f64),
        ),
        value(
            "livetap.metric-samples",
            Some("records"),
            "Metric records accepted from producers",
            c(reg.pushed.load(Ordering::Relaxed)),
        ),
        value(
            "livetap.scrapes",
            Some("scrapes"),
            "Successful scrapes of upstream endpoints",
            c(reg.scrapes.load(Ordering::Relaxed)),
        ),
        value(
            "livetap.scrape-failures",
            Some("scrapes"),
            "Failed scrapes of upstream endpoints",
            c(reg.scrape_failures.load(Ordering::Relaxed)),
        ),
    ];
    if let Some(rss) = rss {
        all.push(value("livetap.memory", Some("bytes"), "livetap's resident memory", g(rss as f64)));
        if !reg.gauge_is_set("server.memory") {
            all.push(value(
                "server.memory",
                Some("bytes"),
                "Resident memory (livetap's own until a producer or scrape sets it)",
                g(rss as f64),
            ));
        }
    }
    // A tap's own counters (a log sink's events, bytes, rotations, errors) as
    // `livetap.<kind>.<name>.<counter>`: the tap `sink:errors` gives `livetap.sink.errors.events`.
    for tap in &stats.taps {
        for (counter, v) in &tap.counters {
            let name = format!("livetap.{}.{counter}", tap.name.replace(':', "."));
            all.push(MetricValue {
                name: Arc::from(name),
                unit: None,
                help: Some("A tap's own counter"),
                reading: c(*v),
            });
        }
    }
    all.retain(|m| filter.matches(&m.name) && m.reading != Reading::Counter(0));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_memory() {
        let s = OwnState::default();
        assert_eq!(s.rate(), 0.0);
        s.tick(100);
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.tick(200);
        assert!(s.rate() > 0.0);
        assert!(rss_bytes().is_some_and(|b| b > 1024 * 1024));
    }

    #[test]
    fn own_values_follow_the_filter() {
        let (c, k) = crate::event::Catalogue::with_keys(1024);
        let reg = MetricsRegistry::new(&c, &k, 1, 16);
        let stats = StatsSnapshot { accepted: 5, subscribers: 2, ..Default::default() };
        let all = own_values(&stats, &reg, &NameFilter::all());
        let names: Vec<&str> = all.iter().map(|m| &*m.name).collect();
        assert!(names.contains(&"livetap.events-accepted"));
        assert!(names.contains(&"server.memory"));
        // Zero counters are left out.
        assert!(!names.contains(&"livetap.dropped"));
        let some = own_values(&stats, &reg, &NameFilter::new(["livetap.sub*"]));
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].reading, Reading::Gauge(2.0));
    }

    #[test]
    fn a_taps_own_counters_are_metrics() {
        let (c, k) = crate::event::Catalogue::with_keys(1024);
        let reg = MetricsRegistry::new(&c, &k, 1, 16);
        let tap = crate::tap::TapStats {
            name: "sink:errors".into(),
            query: String::new(),
            matched: 3,
            dropped: 0,
            queued: 0,
            delivered: 3,
            counters: [("events", 3), ("errors", 0)].into_iter().collect(),
        };
        let stats = StatsSnapshot { taps: vec![tap], ..Default::default() };
        let all = own_values(&stats, &reg, &NameFilter::new(["livetap.sink.*"]));
        // Zero counters are left out, as for every counter.
        assert_eq!(all.len(), 1);
        assert_eq!((&*all[0].name, &all[0].reading), ("livetap.sink.errors.events", &Reading::Counter(3)));
    }
}
