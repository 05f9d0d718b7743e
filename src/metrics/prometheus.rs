//! The Prometheus text exposition format: writing `/metrics`, and reading an upstream's.
//!
//! Names are sanitised the conventional way: every character outside `[a-zA-Z0-9_]` becomes
//! `_` (so `delivery.total-time` is `delivery_total_time`), and a leading digit gets a `_` in
//! front. Counters get the `_total` suffix; histograms are written as cumulative
//! `_bucket{le="..."}` series (livetap's own: the 12 fixed bounds of their unit; scraped ones:
//! the upstream's bounds) plus `_sum` and `_count`. Every family has `# HELP` (the dotted name
//! and the unit) and `# TYPE` lines. Format version 0.0.4.
//!
//! The reader is lenient: a line it cannot parse is skipped and counted, so one odd series
//! upstream never loses the rest of a scrape. Series of one name that differ only by labels
//! are summed (livetap's registry has no labels); summaries are skipped.

use super::histogram::External;
// `sanitize` was defined here; re-exported so `metrics::prometheus::sanitize` keeps working.
pub use super::model::sanitize;
use super::model::{Kind, MetricValue, Reading};
use ahash::{AHashMap, AHashSet};
use std::fmt::Write as _;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A number as Prometheus writes it (`+Inf`, `-Inf`, `NaN`, or the shortest decimal).
fn number(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

fn help(out: &mut String, family: &str, m: &MetricValue) {
    let _ = write!(out, "# HELP {family} ");
    let text = match (m.help, &m.unit) {
        (Some(h), Some(u)) => format!("{h} ({u})"),
        (Some(h), None) => h.to_string(),
        (None, Some(u)) => format!("{} ({u})", m.name),
        (None, None) if m.reading.kind() == Kind::Counter => {
            format!("{} since start", m.name)
        }
        (None, None) => m.name.to_string(),
    };
    // HELP text escapes backslashes and line breaks.
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\n');
}

/// How counters are named in the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The conventional form: a counter's family ends in `_total` (`/metrics`).
    Conventional,
    /// Stalwart's exporter's form: a counter is named like its event, with no suffix
    /// (`smtp_connection_start`), so scrape jobs, dashboards and alerts written for a Stalwart
    /// server find the same series (`/metrics/prometheus`).
    Stalwart,
}

/// Writes `values` in the text exposition format with conventional names. A family whose
/// sanitised name was already written (two dotted names that sanitise alike) is skipped, so
/// the output stays valid.
pub fn write_text(values: &[MetricValue], out: &mut String) {
    write_text_named(values, Naming::Conventional, out)
}

/// Writes `values` in the text exposition format, naming counters as `naming` says.
pub fn write_text_named(values: &[MetricValue], naming: Naming, out: &mut String) {
    let mut seen: AHashSet<String> = AHashSet::with_capacity(values.len());
    let mut base = String::new();
    for m in values {
        base.clear();
        sanitize(&m.name, &mut base);
        let family = match (&m.reading, naming) {
            (Reading::Counter(_), Naming::Conventional) => format!("{base}_total"),
            _ => base.clone(),
        };
        if !seen.insert(family.clone()) {
            continue;
        }
        help(out, &family, m);
        match &m.reading {
            Reading::Counter(v) => {
                let _ = write!(out, "# TYPE {family} counter\n{family} {v}\n");
            }
            Reading::Gauge(v) => {
                let _ = write!(out, "# TYPE {family} gauge\n{family} ");
                number(*v, out);
                out.push('\n');
            }
            Reading::Histogram(h) => {
                let _ = writeln!(out, "# TYPE {family} histogram");
                let mut last_inf = false;
                for (le, cum) in &h.le {
                    let _ = write!(out, "{family}_bucket{{le=\"");
                    number(*le, out);
                    out.push_str("\"} ");
                    number(*cum, out);
                    out.push('\n');
                    last_inf = le.is_infinite();
                }
                if !last_inf {
                    let _ = writeln!(out, "{family}_bucket{{le=\"+Inf\"}} {}", h.count);
                }
                let _ = write!(out, "{family}_sum ");
                number(h.sum, out);
                let _ = write!(out, "\n{family}_count {}\n", h.count);
            }
        }
    }
}

/// A family's type as declared by `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromType {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// `summary`.
    Summary,
    /// `untyped` or undeclared.
    Untyped,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSample<'a> {
    /// The series name.
    pub name: &'a str,
    /// Label pairs, values unescaped.
    pub labels: Vec<(&'a str, String)>,
    /// The value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct ParsedText<'a> {
    /// Declared types by family name.
    pub types: AHashMap<&'a str, PromType>,
    /// Sample lines in order.
    pub samples: Vec<TextSample<'a>>,
    /// Lines that could not be parsed.
    pub bad_lines: usize,
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn take_name(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if !b.first().is_some_and(|&c| is_name_start(c)) {
        return None;
    }
    let end = b.iter().position(|&c| !is_name_char(c)).unwrap_or(b.len());
    Some((&s[..end], &s[end..]))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        s => s.parse().ok(),
    }
}

/// Parses `{name="value",...}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut rest = s.strip_prefix('{')?;
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Some((labels, r));
        }
        let (name, r) = take_name(rest)?;
        let r = r.trim_start().strip_prefix('=')?.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name, value));
        rest = r[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        }
    }
}

/// Parses an exposition leniently.
pub fn parse_text(text: &str) -> ParsedText<'_> {
    let mut out = ParsedText::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                if let (Some(name), Some(ty)) = (words.next(), words.next()) {
                    let ty = match ty {
                        "counter" => PromType::Counter,
                        "gauge" => PromType::Gauge,
                        "histogram" => PromType::Histogram,
                        "summary" => PromType::Summary,
                        _ => PromType::Untyped,
                    };
                    out.types.insert(name, ty);
                }
            }
            continue;
        }
        let parsed = take_name(line).and_then(|(name, rest)| {
            let (labels, rest) = if rest.starts_with('{') { parse_labels(rest)? } else { (Vec::new(), rest) };
            let value = parse_value(rest.split_whitespace().next()?)?;
            Some(TextSample { name, labels, value })
        });
        match parsed {
            Some(s) => out.samples.push(s),
            None => out.bad_lines += 1,
        }
    }
    out
}

/// A family's aggregated value (series summed over labels).
#[derive(Debug, Clone, PartialEq)]
pub enum FamilyValue {
    /// A counter's total; the family name keeps any `_total` suffix.
    Counter(f64),
    /// A gauge's or an untyped series' value.
    Gauge(f64),
    /// A histogram.
    Histogram(External),
}

#[derive(Default)]
struct HistAcc {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// Groups samples into families and sums each family's series over their labels. Returns the
/// families in order of first appearance.
pub fn families(parsed: &ParsedText<'_>) -> Vec<(String, FamilyValue)> {
    let mut order: Vec<String> = Vec::new();
    let mut scalars: AHashMap<String, FamilyValue> = AHashMap::new();
    let mut hists: AHashMap<String, HistAcc> = AHashMap::new();
    let ty = |n: &str| parsed.types.get(n).copied();
    for s in &parsed.samples {
        let hist_part = [("_bucket", 0u8), ("_sum", 1), ("_count", 2)].iter().find_map(|(suffix, part)| {
            let base = s.name.strip_suffix(suffix)?;
            matches!(ty(base), Some(PromType::Histogram | PromType::Summary)).then_some((
                base,
                *part,
                ty(base),
            ))
        });
        if let Some((base, part, t)) = hist_part {
            if t == Some(PromType::Summary) {
                continue;
            }
            let acc = hists.entry(base.to_string()).or_insert_with(|| {
                order.push(base.to_string());
                HistAcc::default()
            });
            match part {
                0 => {
                    let Some(le) =
                        s.labels.iter().find(|(k, _)| *k == "le").and_then(|(_, v)| parse_value(v))
                    else {
                        continue;
                    };
                    match acc.buckets.iter_mut().find(|(b, _)| *b == le) {
                        Some(b) => b.1 += s.value,
                        None => acc.buckets.push((le, s.value)),
                    }
                }
                1 => acc.sum += s.value,
                _ => acc.count += s.value,
            }
            continue;
        }
        let (family, kind) = match ty(s.name) {
            Some(PromType::Counter) => (s.name, PromType::Counter),
            Some(PromType::Summary | PromType::Histogram) => continue,
            Some(t) => (s.name, t),
            // OpenMetrics declares `# TYPE x counter` and writes `x_total`.
            None => match s.name.strip_suffix("_total").filter(|b| ty(b) == Some(PromType::Counter)) {
                Some(_) => (s.name, PromType::Counter),
                None => (s.name, PromType::Untyped),
            },
        };
        if !s.value.is_finite() {
            continue;
        }
        let entry = scalars.entry(family.to_string()).or_insert_with(|| {
            order.push(family.to_string());
            if kind == PromType::Counter {
                FamilyValue::Counter(0.0)
            } else {
                FamilyValue::Gauge(0.0)
            }
        });
        match entry {
            FamilyValue::Counter(v) | FamilyValue::Gauge(v) => *v += s.value,
            FamilyValue::Histogram(_) => {}
        }
    }
    order
        .into_iter()
        .filter_map(|name| {
            if let Some(v) = scalars.remove(&name) {
                return Some((name, v));
            }
            let mut acc = hists.remove(&name)?;
            acc.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !acc.buckets.last().is_some_and(|b| b.0.is_infinite()) {
                acc.buckets.push((f64::INFINITY, acc.count));
            }
            let count = if acc.count.is_finite() && acc.count > 0.0 { acc.count as u64 } else { 0 };
            Some((name, FamilyValue::Histogram(External { count, sum: acc.sum, buckets: acc.buckets })))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::{bounds_for_unit, Histogram};
    use std::sync::Arc;

    #[test]
    fn sanitising() {
        let mut s = String::new();
        sanitize("delivery.total-time", &mut s);
        assert_eq!(s, "delivery_total_time");
        s.clear();
        sanitize("9lives.x", &mut s);
        assert_eq!(s, "_9lives_x");
    }

    #[test]
    fn writes_and_reads_back() {
        let h = Histogram::new(1, bounds_for_unit(Some("milliseconds")));
        for v in [3.0, 30.0, 300.0] {
            h.record(0, v, 1, true);
        }
        let values = vec![
            MetricValue {
                name: Arc::from("smtp.connection-start"),
                unit: None,
                help: None,
                reading: Reading::Counter(7),
            },
            MetricValue {
                name: Arc::from("queue.count"),
                unit: Some(Arc::from("messages")),
                help: None,
                reading: Reading::Gauge(12.5),
            },
            MetricValue {
                name: Arc::from("delivery.total-time"),
                unit: Some(Arc::from("milliseconds")),
                help: None,
                reading: Reading::Histogram(h.snapshot()),
            },
            // Sanitises like the first one's base name plus `_total`: skipped.
            MetricValue {
                name: Arc::from("smtp.connection-start.total"),
                unit: None,
                help: Some("x\ny"),
                reading: Reading::Gauge(1.0),
            },
        ];
        let mut text = String::new();
        write_text(&values, &mut text);
        assert!(text.contains("# TYPE smtp_connection_start_total counter\nsmtp_connection_start_total 7\n"));
        // Stalwart's exporter names a counter like its event.
        let mut stalwart = String::new();
        write_text_named(&values, Naming::Stalwart, &mut stalwart);
        assert!(
            stalwart.contains("# TYPE smtp_connection_start counter\nsmtp_connection_start 7\n"),
            "{stalwart}"
        );
        assert!(!stalwart.contains("smtp_connection_start_total 7"), "{stalwart}");
        assert!(stalwart.contains("delivery_total_time_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("# HELP queue_count queue.count (messages)\n"));
        assert!(text.contains("delivery_total_time_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("delivery_total_time_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("delivery_total_time_sum 333\ndelivery_total_time_count 3\n"));
        assert_eq!(text.matches("smtp_connection_start_total").count(), 3);

        let parsed = parse_text(&text);
        assert_eq!(parsed.bad_lines, 0);
        let fams = families(&parsed);
        assert_eq!(fams[0], ("smtp_connection_start_total".to_string(), FamilyValue::Counter(7.0)));
        assert_eq!(fams[1], ("queue_count".to_string(), FamilyValue::Gauge(12.5)));
        let FamilyValue::Histogram(e) = &fams[2].1 else { panic!("{fams:?}") };
        assert_eq!((e.count, e.sum, e.buckets.len()), (3, 333.0, 13));
    }

    #[test]
    fn reads_labels_summaries_and_junk() {
        let text = r#"
# HELP queue_count Messages in queue
# TYPE queue_count gauge
queue_count{queue="local"} 3
queue_count{queue="remote",note="a \"quoted\", value"} 4 1700000000000
# TYPE rpc summary
rpc{quantile="0.5"} 1
rpc_sum 10
rpc_count 2
# TYPE lat histogram
lat_bucket{le="1",node="a"} 1
lat_bucket{le="1",node="b"} 2
lat_bucket{le="+Inf",node="a"} 4
lat_sum 9
lat_count 4
# TYPE req counter
req_total 5
untyped_thing 2
this is not a sample
bad{unclosed="x} 1
"#;
        let parsed = parse_text(text);
        assert_eq!(parsed.bad_lines, 2);
        let fams = families(&parsed);
        let get = |n: &str| fams.iter().find(|f| f.0 == n).map(|f| f.1.clone());
        assert_eq!(get("queue_count"), Some(FamilyValue::Gauge(7.0)));
        assert_eq!(get("rpc"), None);
        assert_eq!(get("req_total"), Some(FamilyValue::Counter(5.0)));
        assert_eq!(get("untyped_thing"), Some(FamilyValue::Gauge(2.0)));
        let Some(FamilyValue::Histogram(e)) = get("lat") else { panic!("{fams:?}") };
        assert_eq!(e.buckets, vec![(1.0, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!((e.count, e.sum), (4, 9.0));
    }
}
