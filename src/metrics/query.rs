//! The live metrics request (`?metrics=a,b&interval=N`) and the name filter it selects with.
//!
//! `metrics` takes exact names and globs (`delivery.*`, `*.request-time`), comma-separated or
//! repeated; empty or absent means every metric, as in Stalwart. `interval` is whole seconds
//! from 1 to the configured maximum (`metrics-max-interval-secs`, 3600 by default). A bad
//! value (a broken %-escape or bytes that are not UTF-8 included) is a 400 that names the
//! parameter, like the traces endpoint. An unknown parameter is a 400 too when it looks like a
//! typo of `metrics`, `interval` or `token` (`crate::query::suggest`); any other is ignored
//! and listed in [`LiveQuery::ignored`], as Stalwart ignores it. `token` is the live token,
//! checked by the HTTP layer.

use crate::query::ast::{Glob, GlobPart};
use crate::query::{pairs, ParseError};
use ahash::AHashSet;
use std::time::Duration;

/// The interval when the request gives none (Stalwart's default).
pub const DEFAULT_INTERVAL_SECS: u64 = 30;

/// Selects metric names: exact names and globs, or everything.
#[derive(Debug, Clone, Default)]
pub struct NameFilter {
    exact: AHashSet<Box<str>>,
    globs: Vec<Glob>,
}

impl NameFilter {
    /// The filter that selects every name.
    pub fn all() -> NameFilter {
        NameFilter::default()
    }

    /// A filter selecting `items` (exact names, or globs with `*` and `?`); no items selects all.
    pub fn new<'a>(items: impl IntoIterator<Item = &'a str>) -> NameFilter {
        let mut f = NameFilter::default();
        for item in items {
            f.add(item);
        }
        f
    }

    fn add(&mut self, item: &str) {
        if item.contains(['*', '?']) {
            let mut parts = Vec::new();
            let mut lit = String::new();
            for c in item.chars() {
                match c {
                    '*' | '?' => {
                        parts.push(GlobPart::Lit(std::mem::take(&mut lit)));
                        parts.push(if c == '*' { GlobPart::Star } else { GlobPart::One });
                    }
                    c => lit.push(c),
                }
            }
            parts.push(GlobPart::Lit(lit));
            self.globs.push(Glob::new(parts));
        } else {
            self.exact.insert(Box::from(item));
        }
    }

    /// True when the filter selects everything.
    pub fn is_all(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// True when `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        self.is_all() || self.exact.contains(name) || self.globs.iter().any(|g| g.matches(name))
    }
}

/// A parsed live metrics request.
#[derive(Debug, Clone)]
pub struct LiveQuery {
    /// Which metrics to send.
    pub filter: NameFilter,
    /// Time between frames.
    pub interval: Duration,
    /// Unknown parameter names that were ignored (not near any of this endpoint's).
    pub ignored: Vec<String>,
}

/// The parameters of a live metrics request.
const PARAMS: [&str; 3] = ["metrics", "interval", "token"];

fn err(parameter: &str, position: usize, expected: impl Into<String>) -> ParseError {
    ParseError { parameter: parameter.to_string(), position, expected: expected.into() }
}

/// Parses the query string of `/api/telemetry/metrics/live`. `max_names` bounds the number of
/// names and globs, `max_bytes` the query's length, `max_interval` the interval in seconds.
pub fn parse_live(
    query: &str,
    max_interval: u64,
    max_names: usize,
    max_bytes: usize,
) -> Result<LiveQuery, ParseError> {
    if query.len() > max_bytes {
        return Err(err("", max_bytes, format!("at most {max_bytes} bytes")));
    }
    let mut filter = NameFilter::default();
    let mut interval = None;
    let mut names = 0usize;
    let mut ignored = Vec::new();
    for pair in pairs(query) {
        let (name, value) = pair?;
        match name.as_ref() {
            "metrics" => {
                let mut pos = 0;
                for item in value.split(',') {
                    let start = pos;
                    pos += item.len() + 1;
                    let trimmed = item.trim();
                    if trimmed.is_empty() {
                        // `metrics=` (empty) means all; an empty item inside a list is a typo.
                        if value.trim().is_empty() {
                            continue;
                        }
                        return Err(err("metrics", start, "a metric name or glob between commas"));
                    }
                    let at = start + (item.len() - item.trim_start().len());
                    if let Some(bad) = trimmed.char_indices().find(|(_, c)| {
                        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*' | '?'))
                    }) {
                        return Err(err(
                            "metrics",
                            at + bad.0,
                            "a metric name: letters, digits, '.', '-', '_', or the globs '*' and '?'",
                        ));
                    }
                    names += 1;
                    if names > max_names {
                        return Err(err("metrics", at, format!("at most {max_names} names")));
                    }
                    filter.add(trimmed);
                }
            }
            "interval" => {
                let secs =
                    value.trim().parse::<u64>().ok().filter(|s| (1..=max_interval).contains(s)).ok_or_else(
                        || err("interval", 0, format!("whole seconds from 1 to {max_interval}")),
                    )?;
                if interval.replace(secs).is_some() {
                    return Err(err("interval", 0, "one interval (the parameter is repeated)"));
                }
            }
            // Accepted for EventSource clients, which cannot send headers; checked once live
            // tokens exist (as on the traces endpoint).
            "token" => {}
            other => match crate::query::suggest::nearest(other, PARAMS) {
                Some(near) => {
                    return Err(err(
                        other,
                        0,
                        format!("one of metrics, interval, token (did you mean `{near}`?)"),
                    ))
                }
                // Bounded like the names: a query string holds at most `max_bytes`.
                None => ignored.push(other.to_string()),
            },
        }
    }
    Ok(LiveQuery {
        filter,
        interval: Duration::from_secs(interval.unwrap_or(DEFAULT_INTERVAL_SECS.min(max_interval))),
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<LiveQuery, ParseError> {
        parse_live(q, 3600, 64, 8192)
    }

    #[test]
    fn names_globs_and_interval() {
        let q = parse("metrics=delivery.*,queue.count&metrics=%2A.request-time&interval=5").unwrap();
        assert_eq!(q.interval, Duration::from_secs(5));
        for yes in ["delivery.total-time", "queue.count", "imap.request-time"] {
            assert!(q.filter.matches(yes), "{yes}");
        }
        for no in ["queue.count2", "server.memory", "delivery"] {
            assert!(!q.filter.matches(no), "{no}");
        }
        let q = parse("").unwrap();
        assert!(q.filter.is_all());
        assert_eq!(q.interval, Duration::from_secs(30));
        assert!(parse("metrics=&token=abc").unwrap().filter.is_all());
        assert!(NameFilter::new(["smtp.?hlo"]).matches("smtp.ehlo"));
        assert_eq!(parse_live("", 10, 64, 8192).unwrap().interval, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_parameter() {
        let cases = [
            ("interval=0", "interval", 0),
            ("interval=3601", "interval", 0),
            ("interval=abc", "interval", 0),
            ("interval=5&interval=6", "interval", 0),
            ("metrics=a,,b", "metrics", 2),
            ("metrics=queue.count,bad%20name", "metrics", 15),
            ("metric=x", "metric", 0),
            ("intervall=5", "intervall", 0),
        ];
        for (q, param, pos) in cases {
            let e = parse(q).unwrap_err();
            assert_eq!((e.parameter.as_str(), e.position), (param, pos), "{q}: {e}");
        }
        assert!(parse("interval=-1").unwrap_err().expected.contains("from 1 to 3600"));
        assert!(parse("metric=x").unwrap_err().expected.contains("did you mean `metrics`"));
        // Names no typo explains are ignored, as Stalwart ignores them.
        let q = parse("filter=x&_=1700000000&interval=5").unwrap();
        assert_eq!(
            (q.ignored, q.interval),
            (vec!["filter".to_string(), "_".to_string()], Duration::from_secs(5))
        );
        let many: Vec<String> = (0..65).map(|i| format!("m{i}")).collect();
        assert!(parse(&format!("metrics={}", many.join(","))).is_err());
        assert!(parse_live(&"a".repeat(100), 3600, 64, 64).is_err());
    }

    #[test]
    fn broken_url_encoding_names_the_parameter() {
        let cases = [
            ("metrics=%c3%28", "metrics", 0),
            ("metrics=queue.count&interval=5%", "interval", 1),
            ("token=%ff", "token", 0),
            ("in%zzterval=5", "in", 2),
        ];
        for (q, param, pos) in cases {
            let e = parse(q).unwrap_err();
            assert_eq!((e.parameter.as_str(), e.position), (param, pos), "{q}: {e}");
        }
        assert!(parse("metrics=queue%2Ecount&interval=%35").unwrap().filter.matches("queue.count"));
    }
}
