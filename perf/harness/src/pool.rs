//! The workload: a pool of event templates, the subscriber filter mix, and which templates
//! each filter must receive (computed with livetap's own reference evaluator).
//!
//! Every sent event is template `n % templates` with two extra fields, `n` (its number in the
//! run) and `t` (send time in nanoseconds since the run's epoch). Because each template's
//! matching filters are known in advance, every subscriber knows exactly how many events it
//! must receive and in which order, so loss and duplication are counted, not guessed.

use livetap::event::{Catalogue, EventBuilder, KeyRegistry, RawValue};
use livetap::query::{parse_pairs, Expr, Limits};

/// Event types used by the templates (mail-server traffic without span ids, so span
/// following cannot change what a subscriber receives).
const TYPES: &[&str] = &[
    "smtp.connection-start",
    "smtp.ehlo",
    "smtp.mail-from",
    "smtp.rcpt-to",
    "smtp.data-end",
    "delivery.attempt-start",
    "delivery.delivered",
    "queue.queue-message",
    "auth.success",
    "auth.failed",
];

/// Sizes of the value pools; filters draw from the same pools so each matches a few events.
pub const IPS: usize = 4000;
/// Distinct domains.
pub const DOMAINS: usize = 800;
/// Distinct accounts.
pub const ACCOUNTS: usize = 500;
/// Distinct queue ids.
pub const QUEUE_IDS: usize = 8000;

/// One event template: the NDJSON line split around the `n` and `t` values, carried in the
/// catalogue keys `total` and `uid` so that every event stays inside Stalwart's classic contract
/// (a non-catalogue key would make the classic streams rewrite every event, `event::classic`).
pub struct Template {
    /// `{"type":"...","data":{"total":`
    pub head: String,
    /// `,"uid":`
    pub mid: &'static str,
    /// the rest of the data object and the closing braces, without a newline.
    pub tail: String,
    /// The same event as livetap's builder sees it (with `n` and `t` zero), for matching.
    json_for_match: String,
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / (254 * 254) % 256, i / 254 % 254, i % 254 + 1)
}

/// The event templates, deterministic for a seed.
pub fn templates(count: usize, seed: u64) -> Vec<Template> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| {
            let ty = TYPES[rng.usize(..TYPES.len())];
            let ip = ip(rng.usize(..IPS));
            let domain = format!("example-{}.org", rng.usize(..DOMAINS));
            let account = format!("user-{}", rng.usize(..ACCOUNTS));
            let queue = rng.usize(..QUEUE_IDS) + 1;
            let size = rng.u32(500..2_000_000);
            let tail = format!(
                r#","remoteIp":"{ip}","domain":"{domain}","accountName":"{account}","from":"{account}@{domain}","queueId":{queue},"size":{size},"reason":"load test event with some realistic padding"}}}}"#
            );
            let head = format!(r#"{{"type":"{ty}","data":{{"total":"#);
            let json_for_match = format!("{head}0,\"uid\":0{tail}");
            Template { head, mid: ",\"uid\":", tail, json_for_match }
        })
        .collect()
}

impl Template {
    /// Appends the NDJSON line of event `n` sent at `t` nanoseconds.
    #[inline]
    pub fn write_line(&self, out: &mut Vec<u8>, n: u64, t: u64) {
        let mut b = itoa::Buffer::new();
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(b.format(n).as_bytes());
        out.extend_from_slice(self.mid.as_bytes());
        out.extend_from_slice(b.format(t).as_bytes());
        out.extend_from_slice(self.tail.as_bytes());
    }
}

/// A subscriber's filter: the query string it connects with.
#[derive(Debug, Clone)]
pub struct FilterSpec {
    /// URL query string, already encoded.
    pub query: String,
    /// Nchan channel this filter maps to (one channel per filter value); `None` for the
    /// firehose, which Nchan serves from the `all` channel.
    pub channel: Option<String>,
}

fn enc(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// The realistic mix of filtered subscribers: mostly one exact key (remote-ip, domain,
/// account, queue id), some globs, CIDRs and `filter=` words.
pub fn filter_mix(count: usize, seed: u64) -> Vec<FilterSpec> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| {
            let (q, chan) = match rng.u32(..100) {
                0..=34 => {
                    let v = ip(rng.usize(..IPS));
                    (format!("remote-ip={v}"), format!("ip-{v}"))
                }
                35..=54 => {
                    let v = format!("example-{}.org", rng.usize(..DOMAINS));
                    (format!("domain={v}"), format!("domain-{v}"))
                }
                55..=69 => {
                    let v = format!("user-{}", rng.usize(..ACCOUNTS));
                    (format!("account-name={v}"), format!("account-{v}"))
                }
                70..=84 => {
                    let v = rng.usize(..QUEUE_IDS) + 1;
                    (format!("queue-id={v}"), format!("queue-{v}"))
                }
                85..=89 => {
                    let v = rng.usize(..DOMAINS);
                    (format!("from={}", enc(&format!("*@example-{v}.org"))), format!("from-{v}"))
                }
                90..=94 => {
                    let i = rng.usize(..IPS);
                    let net = format!("10.{}.{}.0/24", i / (254 * 254) % 256, i / 254 % 254);
                    (format!("remote-ip={}", enc(&net)), format!("net-{}", net.replace('/', "_")))
                }
                _ => {
                    let v = format!("user-{}@", rng.usize(..ACCOUNTS));
                    (format!("filter={}", enc(&v)), format!("word-{v}"))
                }
            };
            FilterSpec { query: format!("{q}&follow=false"), channel: Some(chan) }
        })
        .collect()
}

/// The unfiltered subscriber.
pub fn firehose() -> FilterSpec {
    FilterSpec { query: "follow=false".into(), channel: None }
}

/// Which templates each filter selects: `matches[f]` lists template indices, and
/// `per_template[t]` lists the filters template `t` reaches (for the Nchan publisher).
pub struct MatchTable {
    /// Per filter, whether each template matches.
    pub matches: Vec<Vec<bool>>,
    /// Per template, the filters it matches.
    pub per_template: Vec<Vec<usize>>,
}

/// Evaluates every filter on every template with livetap's reference evaluator.
pub fn match_table(templates: &[Template], filters: &[FilterSpec]) -> anyhow::Result<MatchTable> {
    let (catalogue, keys) = Catalogue::with_keys(1024);
    let exprs: Vec<Expr> = filters.iter().map(|f| parse(&keys, &f.query)).collect::<anyhow::Result<_>>()?;
    let mut builder = EventBuilder::new(&catalogue, &keys);
    let mut matches = vec![vec![false; templates.len()]; filters.len()];
    let mut per_template = vec![Vec::new(); templates.len()];
    for (t, tpl) in templates.iter().enumerate() {
        let raw = RawValue::parse_serde(tpl.json_for_match.as_bytes())
            .map_err(|e| anyhow::anyhow!("template {t}: {e}"))?;
        let ev = builder.build(&raw, 0).map_err(|e| anyhow::anyhow!("template {t}: {e}"))?;
        for (f, e) in exprs.iter().enumerate() {
            if e.eval(&ev) {
                matches[f][t] = true;
                per_template[t].push(f);
            }
        }
    }
    Ok(MatchTable { matches, per_template })
}

fn parse(keys: &KeyRegistry, q: &str) -> anyhow::Result<Expr> {
    parse_pairs(q, keys, &Limits::default()).map(|p| p.expr).map_err(|e| anyhow::anyhow!("filter {q}: {e}"))
}

/// How many of the events `0..sent` filter `f` must receive.
pub fn expected(table: &MatchTable, f: usize, sent: u64) -> u64 {
    let k = table.matches[f].len() as u64;
    let full = sent / k;
    let rest = sent % k;
    table.matches[f]
        .iter()
        .enumerate()
        .filter(|(_, m)| **m)
        .map(|(t, _)| full + u64::from((t as u64) < rest))
        .sum()
}
