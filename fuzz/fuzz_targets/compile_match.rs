//! Fuzz target `compile_match`: structured queries and events, checking that the compiled
//! subscriber index matches exactly the subscribers whose parsed filter accepts each event.
//!
//! Queries are assembled from a small vocabulary of keys, operators and values (so that most
//! of them parse and many of them match), plus one query of raw fuzz text so the parser still
//! sees arbitrary input. Events come from a similar vocabulary of types and data values. The
//! reference is [`Expr::eval`]; the index under test is [`CompiledIndex`].
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use livetap::event::{Catalogue, Event, EventBuilder, KeyRegistry, RawValue};
use livetap::matcher::index::{CompiledIndex, Scratch};
use livetap::query::{parse_expr, parse_pairs, Expr, Limits};
use livetap::subscriber::Subscriber;
use std::fmt::Write;
use std::sync::{Arc, OnceLock};

/// The catalogue and key registry, built once per process because loading the embedded
/// catalogue parses a large JSON file. Every key the events below use is a catalogue key, so
/// building events never registers new keys and runs stay reproducible.
fn setup() -> &'static (Catalogue, KeyRegistry) {
    static SETUP: OnceLock<(Catalogue, KeyRegistry)> = OnceLock::new();
    SETUP.get_or_init(|| Catalogue::with_keys(1024))
}

/// Realistic events every input is checked against, on top of its own, so that even an input
/// whose event specs are empty or invalid still tests the subscribers it produced.
const FIXED_EVENTS: &[&str] = &[
    r#"{"type":"smtp.rcpt-to","level":"warn","data":{"remoteIp":"10.0.0.5","domain":"Example.org","to":["a@b.org"],"queueId":42,"size":1500,"reason":"Mailbox full","spanId":7}}"#,
    r#"{"type":"smtp.connection-start","data":{"remoteIp":"2001:db8::7","localIp":"::ffff:10.0.0.6","domain":"mail.example.org"}}"#,
    r#"{"type":"delivery.delivered","data":{"from":"X@Example.org","to":["y@bank.com","a@b.org"],"size":1000001,"queueId":1000,"code":"250","tls":true}}"#,
    r#"{"type":"auth.failed","level":"error","data":{"accountName":"İstanbul.tr","reason":"a,b","remoteIp":"192.168.1.7"}}"#,
    r#"{"type":"unknown.custom","data":{}}"#,
];

/// Most structured queries per input; the raw query comes on top.
const MAX_QUERIES: usize = 16;
/// Most events per input.
const MAX_EVENTS: usize = 8;

/// Parameter and field names: the keys events carry, the special fields, and one unknown name
/// so that the parser's error path is taken now and then.
const KEYS: &[&str] = &[
    "remote-ip",
    "local-ip",
    "domain",
    "to",
    "from",
    "queue-id",
    "size",
    "code",
    "reason",
    "account-name",
    "tls",
    "span-id",
    "event",
    "level",
    "filter",
    "remote_ip",
];

/// Item values, written so that they need no URL encoding (no `&`, `+`, `%`, `#` or spaces
/// outside quotes) and so are read the same in the pair form and in `q=`. They cover exact
/// values in several canonical forms, CIDRs, globs, comparisons, levels, event types, quoting
/// and escapes, and case folding of non-ASCII text.
const VALUES: &[&str] = &[
    "10.0.0.5",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "10.1.2.3/16",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "10.0.*",
    "2001:db8::7",
    "2001:DB8::/32",
    "::/0",
    "::ffff:10.0.0.0/104",
    "::ffff:10.0.0.6",
    "example.org",
    "Example.ORG",
    "*.example.org",
    "mail.*",
    "ex?mple.org",
    "*.ORG",
    "lists.example.org",
    "a@b.org",
    "*@b.org",
    "X@Example.org",
    "*@bank.*",
    "*",
    "**",
    "?*",
    "*?",
    ">1000",
    ">=1500",
    "<42",
    "<=0",
    ">-1",
    ">1000000",
    "<1.5",
    "42",
    "042",
    "1500",
    "-1",
    "abc",
    "1e3",
    "\"Mailbox full\"",
    "Mailbox*",
    "mailbox*",
    "*full",
    "\"a,b\"",
    "a\\,b",
    "\\!x",
    "\"*\"",
    "\"*\"*",
    "trace",
    "debug",
    "info",
    "warn",
    "error",
    ">=warn",
    "<info",
    "smtp.*",
    "smtp.rcpt-to",
    "SMTP.Rcpt-To",
    "auth.failed",
    "unknown.custom",
    "delivery.*",
    "*.failed",
    "*-start",
    "true",
    "false",
    "yes",
    "full",
    "İ",
    "ß",
    "straße.de",
    "STRASSE.DE",
    "i̇",
];

/// Bare words for text search in `q=`.
const WORDS: &[&str] = &[
    "full",
    "mailbox",
    "\"mailbox full\"",
    "example",
    "10.0.0.5",
    "smtp",
    "rcpt-to",
    "a@b",
    "\"and\"",
    "é",
    "İ",
    "ß",
];

/// Event types: catalogue types of several levels, a span end, a case variant and a type the
/// catalogue does not know.
const TYPES: &[&str] = &[
    "smtp.connection-start",
    "smtp.connection-end",
    "smtp.rcpt-to",
    "delivery.delivered",
    "auth.failed",
    "unknown.custom",
    "Auth.Failed",
];

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// Event IP values, including forms that canonicalise (IPv4-mapped, uppercase, padded) and
/// one that is not an IP at all.
const IPS: &[&str] = &[
    "10.0.0.5",
    "10.1.2.3",
    "192.168.1.7",
    "2001:db8::7",
    "2001:DB8::1",
    "::ffff:10.0.0.6",
    "127.0.0.1",
    " 10.0.0.5 ",
    "not-an-ip",
];

/// Event text values for domains, addresses, reasons and account names.
const TEXTS: &[&str] = &[
    "Example.org",
    "mail.example.org",
    "lists.example.org",
    "b.org",
    "EXAMPLE.ORG",
    "Straße.de",
    "İstanbul.tr",
    "a@b.org",
    "X@Example.org",
    "y@bank.com",
    "Mailbox full",
    "mailbox FULL",
    "a,b",
    "*",
    "!x",
    "",
    "1500",
    "250",
    "042",
];

/// Event numbers around the thresholds the query vocabulary uses.
const NUMBERS: &[i64] = &[0, 1, 42, 999, 1000, 1001, 1500, 1_000_000, 1_000_001, -1, i64::MAX, i64::MIN];

fn pick<'a>(table: &[&'a str], i: u8) -> &'a str {
    table[i as usize % table.len()]
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    queries: Vec<QuerySpec>,
    events: Vec<EventSpec>,
    /// Bit `i` keeps subscriber `i` in the second index, which shares the first one's scratch.
    subset: u32,
    /// Raw text parsed as one more query (in both forms), so the parser sees arbitrary input.
    /// A byte slice, as the last field, takes all remaining input bytes verbatim (a `Vec<u8>`
    /// would interleave continuation bytes), so seeds can end with a readable query.
    raw: &'a [u8],
}

// The enums below implement `Arbitrary` by hand. The derived implementation spends four
// bytes of input on every variant choice, and libFuzzer keeps inputs short for a long while,
// so derived specs left most inputs with one or two subscribers. A hand-written choice costs
// one byte, and it can weight the variants towards the ones that tend to parse and match.

/// One byte of input as a choice among `n` cases (0 when the input is exhausted).
fn choice(u: &mut Unstructured<'_>, n: u8) -> arbitrary::Result<u8> {
    Ok(u8::arbitrary(u)? % n)
}

#[derive(Debug)]
enum QuerySpec {
    /// The URL pair form, optionally with a `q=` expression among the pairs.
    Pairs { pairs: Vec<PairSpec>, q: Option<ExprSpec>, follow: bool },
    /// A `q=` expression given directly to `parse_expr`.
    Expr(ExprSpec),
}

impl<'a> Arbitrary<'a> for QuerySpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match choice(u, 2)? {
            0 => QuerySpec::Pairs { pairs: u.arbitrary()?, q: u.arbitrary()?, follow: u.arbitrary()? },
            _ => QuerySpec::Expr(u.arbitrary()?),
        })
    }
}

#[derive(Arbitrary, Debug)]
struct PairSpec {
    key: u8,
    items: Items,
}

/// A `q=` expression as a tree, so that nearly every generated expression is grammatical:
/// ungrammatical text is the business of the raw query here and of the `query_parse` target.
#[derive(Debug)]
enum ExprSpec {
    /// `key:items`, `key=items`, or `key` followed by a comparison.
    Term {
        key: u8,
        op: TermOp,
        items: Items,
    },
    /// A bare or quoted word: a text search.
    Word(u8),
    Not(Box<ExprSpec>),
    /// Children joined by `AND` or, when `juxtaposed`, by a space.
    And {
        items: Vec<ExprSpec>,
        juxtaposed: bool,
    },
    Or(Vec<ExprSpec>),
    /// Redundant parentheses.
    Group(Box<ExprSpec>),
}

#[derive(Debug)]
enum TermOp {
    Colon,
    Equals,
    /// A comparison operator from [`CMP_OPS`] and a value from [`CMP_VALUES`] or a number.
    Cmp {
        op: u8,
        value: Result<u8, i16>,
    },
}

const CMP_OPS: &[&str] = &[">", ">=", "<", "<="];

/// Right-hand sides of comparisons: thresholds near the event numbers, decimals, levels, and
/// text that must be refused.
const CMP_VALUES: &[&str] =
    &["1000", "1500", "42", "0", "-1", "1000000", "1.5", "999.999", "warn", "info", "error", "trace", "x"];

/// Deepest generated expression; deeper nesting is the parser's business, not the index's.
const MAX_EXPR_DEPTH: u32 = 4;
/// Most children of one generated `AND` or `OR`.
const MAX_CHILDREN: usize = 4;

impl ExprSpec {
    fn generate(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Self> {
        let leaf_only = depth >= MAX_EXPR_DEPTH || u.is_empty();
        let kind = choice(u, if leaf_only { 6 } else { 10 })?;
        Ok(match kind {
            0..=4 => {
                let key = u.arbitrary()?;
                let op = match choice(u, 8)? {
                    0..=4 => TermOp::Colon,
                    5 => TermOp::Equals,
                    _ => TermOp::Cmp {
                        op: u.arbitrary()?,
                        value: if u.arbitrary()? { Ok(u.arbitrary()?) } else { Err(u.arbitrary()?) },
                    },
                };
                ExprSpec::Term { key, op, items: u.arbitrary()? }
            }
            5 => ExprSpec::Word(u.arbitrary()?),
            6 => ExprSpec::Not(Box::new(Self::generate(u, depth + 1)?)),
            7 | 8 => {
                let mut items = vec![Self::generate(u, depth + 1)?];
                while items.len() < MAX_CHILDREN && u.arbitrary::<bool>()? {
                    items.push(Self::generate(u, depth + 1)?);
                }
                if kind == 7 {
                    ExprSpec::And { items, juxtaposed: u.arbitrary()? }
                } else {
                    ExprSpec::Or(items)
                }
            }
            _ => ExprSpec::Group(Box::new(Self::generate(u, depth + 1)?)),
        })
    }

    fn write(&self, out: &mut String) {
        match self {
            ExprSpec::Term { key, op, items } => {
                out.push_str(pick(KEYS, *key));
                match op {
                    TermOp::Colon => {
                        out.push(':');
                        write_items(out, items);
                    }
                    TermOp::Equals => {
                        out.push('=');
                        write_items(out, items);
                    }
                    TermOp::Cmp { op, value } => {
                        out.push_str(pick(CMP_OPS, *op));
                        match value {
                            Ok(v) => out.push_str(pick(CMP_VALUES, *v)),
                            Err(n) => {
                                let _ = write!(out, "{n}");
                            }
                        }
                    }
                }
            }
            ExprSpec::Word(w) => out.push_str(pick(WORDS, *w)),
            ExprSpec::Not(e) => {
                out.push_str("NOT ");
                e.write_operand(out);
            }
            ExprSpec::And { items, juxtaposed } => {
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(if *juxtaposed { " " } else { " AND " });
                    }
                    e.write_operand(out);
                }
            }
            ExprSpec::Or(items) => {
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" or ");
                    }
                    e.write_operand(out);
                }
            }
            ExprSpec::Group(e) => {
                out.push('(');
                e.write(out);
                out.push(')');
            }
        }
    }

    /// Writes `self` as an operand of `NOT`, `AND` or `OR`, in parentheses when it is itself
    /// an `AND` or `OR` (the parser's precedence is tested elsewhere; here the tree must mean
    /// what it says).
    fn write_operand(&self, out: &mut String) {
        if matches!(self, ExprSpec::And { .. } | ExprSpec::Or(_)) {
            out.push('(');
            self.write(out);
            out.push(')');
        } else {
            self.write(out);
        }
    }
}

impl<'a> Arbitrary<'a> for ExprSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::generate(u, 0)
    }
}

/// A non-empty comma list of items (an empty one is always refused, which teaches nothing).
#[derive(Debug)]
struct Items(Vec<Item>);

/// Most items in one comma list.
const MAX_ITEMS: usize = 4;

impl<'a> Arbitrary<'a> for Items {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut items = vec![u.arbitrary()?];
        while items.len() < MAX_ITEMS && u.arbitrary::<bool>()? {
            items.push(u.arbitrary()?);
        }
        Ok(Items(items))
    }
}

#[derive(Debug)]
struct Item {
    /// Written with a leading `!`.
    neg: bool,
    value: ItemValue,
}

#[derive(Debug)]
enum ItemValue {
    Vocab(u8),
    Num { cmp: u8, n: i16, frac: Option<u8> },
    Cidr4 { a: [u8; 4], len: u8 },
    Cidr6 { a: [u16; 8], len: u8 },
}

impl<'a> Arbitrary<'a> for Item {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // One byte holds the negation flag and the kind of value.
        let tag = u8::arbitrary(u)?;
        let value = match (tag >> 1) % 16 {
            0..=11 => ItemValue::Vocab(u.arbitrary()?),
            12 | 13 => ItemValue::Num { cmp: u.arbitrary()?, n: u.arbitrary()?, frac: u.arbitrary()? },
            14 => ItemValue::Cidr4 { a: u.arbitrary()?, len: u.arbitrary()? },
            _ => ItemValue::Cidr6 { a: u.arbitrary()?, len: u.arbitrary()? },
        };
        Ok(Item { neg: tag & 1 == 1, value })
    }
}

#[derive(Debug)]
enum IpSpec {
    Vocab(u8),
    V4([u8; 4]),
    V6([u16; 8]),
}

impl<'a> Arbitrary<'a> for IpSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match choice(u, 4)? {
            0 | 1 => IpSpec::Vocab(u.arbitrary()?),
            2 => IpSpec::V4(u.arbitrary()?),
            _ => IpSpec::V6(u.arbitrary()?),
        })
    }
}

#[derive(Debug)]
enum NumSpec {
    Vocab(u8),
    Raw(i64),
    /// A number sent as a JSON string, which keys canonicalise as text.
    Text(u8),
}

impl<'a> Arbitrary<'a> for NumSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match choice(u, 4)? {
            0 | 1 => NumSpec::Vocab(u.arbitrary()?),
            2 => NumSpec::Raw(u.arbitrary()?),
            _ => NumSpec::Text(u.arbitrary()?),
        })
    }
}

#[derive(Debug, Default)]
struct EventSpec {
    ty: u8,
    level: Option<u8>,
    remote_ip: Option<IpSpec>,
    local_ip: Option<IpSpec>,
    domain: Option<u8>,
    to: Vec<u8>,
    to_as_list: bool,
    from: Option<u8>,
    queue_id: Option<NumSpec>,
    size: Option<NumSpec>,
    code: Option<NumSpec>,
    reason: Option<u8>,
    account: Option<u8>,
    tls: Option<bool>,
    span_id: Option<u8>,
}

impl<'a> Arbitrary<'a> for EventSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // A presence mask first, so absent fields cost no input at all.
        let mask = u16::arbitrary(u)?;
        let has = |bit: u32| mask >> bit & 1 == 1;
        let mut e = EventSpec { ty: u.arbitrary()?, ..EventSpec::default() };
        macro_rules! field {
            ($bit:expr, $name:ident) => {
                if has($bit) {
                    e.$name = Some(u.arbitrary()?);
                }
            };
        }
        field!(0, level);
        field!(1, remote_ip);
        field!(2, local_ip);
        field!(3, domain);
        field!(4, from);
        field!(5, queue_id);
        field!(6, size);
        field!(7, code);
        field!(8, reason);
        field!(9, account);
        field!(10, tls);
        field!(11, span_id);
        if has(12) {
            e.to_as_list = has(13);
            e.to = u.arbitrary()?;
        }
        Ok(e)
    }
}

fn write_item(out: &mut String, item: &Item) {
    if item.neg {
        out.push('!');
    }
    match &item.value {
        ItemValue::Vocab(v) => out.push_str(pick(VALUES, *v)),
        ItemValue::Num { cmp, n, frac } => {
            out.push_str(pick(&["", ">", ">=", "<", "<="], *cmp));
            let _ = write!(out, "{n}");
            if let Some(f) = frac {
                let _ = write!(out, ".{f}");
            }
        }
        // Prefix lengths run a little past the maximum so invalid ones are tried too.
        ItemValue::Cidr4 { a, len } => {
            let _ = write!(out, "{}/{}", std::net::Ipv4Addr::from(*a), len % 34);
        }
        ItemValue::Cidr6 { a, len } => {
            let _ = write!(out, "{}/{}", std::net::Ipv6Addr::from(*a), len % 130);
        }
    }
}

fn write_items(out: &mut String, items: &Items) {
    for (i, item) in items.0.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_item(out, item);
    }
}

/// Renders a query spec and parses it with the default limits; `None` when it is refused.
fn parse_spec(spec: &QuerySpec, keys: &KeyRegistry, limits: &Limits) -> Option<(String, Expr, bool)> {
    let mut s = String::new();
    match spec {
        QuerySpec::Pairs { pairs, q, follow } => {
            for pair in pairs.iter().take(6) {
                if !s.is_empty() {
                    s.push('&');
                }
                s.push_str(pick(KEYS, pair.key));
                s.push('=');
                write_items(&mut s, &pair.items);
            }
            if let Some(e) = q {
                if !s.is_empty() {
                    s.push('&');
                }
                s.push_str("q=");
                e.write(&mut s);
            }
            if !follow {
                s.push_str("&follow=false");
            }
            let parsed = parse_pairs(&s, keys, limits).ok()?;
            Some((s, parsed.expr, parsed.follow))
        }
        QuerySpec::Expr(e) => {
            e.write(&mut s);
            let e = parse_expr(&s, keys, limits).ok()?;
            Some((s, e, true))
        }
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_ip(out: &mut String, ip: &IpSpec) {
    match ip {
        IpSpec::Vocab(i) => json_str(out, pick(IPS, *i)),
        IpSpec::V4(a) => json_str(out, &std::net::Ipv4Addr::from(*a).to_string()),
        IpSpec::V6(a) => json_str(out, &std::net::Ipv6Addr::from(*a).to_string()),
    }
}

fn json_num(out: &mut String, n: &NumSpec) {
    match n {
        NumSpec::Vocab(i) => {
            let _ = write!(out, "{}", NUMBERS[*i as usize % NUMBERS.len()]);
        }
        NumSpec::Raw(n) => {
            let _ = write!(out, "{n}");
        }
        NumSpec::Text(i) => json_str(out, pick(TEXTS, *i)),
    }
}

/// Renders an event spec as producer JSON.
fn event_json(e: &EventSpec) -> String {
    let mut s = String::from("{\"type\":");
    json_str(&mut s, pick(TYPES, e.ty));
    if let Some(l) = e.level {
        s.push_str(",\"level\":");
        json_str(&mut s, pick(LEVELS, l));
    }
    s.push_str(",\"data\":{");
    let mut first = true;
    let mut key = |s: &mut String, name: &str| {
        if !first {
            s.push(',');
        }
        first = false;
        json_str(s, name);
        s.push(':');
    };
    if let Some(ip) = &e.remote_ip {
        key(&mut s, "remoteIp");
        json_ip(&mut s, ip);
    }
    if let Some(ip) = &e.local_ip {
        key(&mut s, "localIp");
        json_ip(&mut s, ip);
    }
    if let Some(d) = e.domain {
        key(&mut s, "domain");
        json_str(&mut s, pick(TEXTS, d));
    }
    if !e.to.is_empty() || e.to_as_list {
        key(&mut s, "to");
        if e.to_as_list || e.to.len() > 1 {
            s.push('[');
            for (i, t) in e.to.iter().take(3).enumerate() {
                if i > 0 {
                    s.push(',');
                }
                json_str(&mut s, pick(TEXTS, *t));
            }
            s.push(']');
        } else {
            json_str(&mut s, pick(TEXTS, e.to[0]));
        }
    }
    if let Some(f) = e.from {
        key(&mut s, "from");
        json_str(&mut s, pick(TEXTS, f));
    }
    if let Some(n) = &e.queue_id {
        key(&mut s, "queueId");
        json_num(&mut s, n);
    }
    if let Some(n) = &e.size {
        key(&mut s, "size");
        json_num(&mut s, n);
    }
    if let Some(n) = &e.code {
        key(&mut s, "code");
        json_num(&mut s, n);
    }
    if let Some(r) = e.reason {
        key(&mut s, "reason");
        json_str(&mut s, pick(TEXTS, r));
    }
    if let Some(a) = e.account {
        key(&mut s, "accountName");
        json_str(&mut s, pick(TEXTS, a));
    }
    if let Some(t) = e.tls {
        key(&mut s, "tls");
        s.push_str(if t { "true" } else { "false" });
    }
    if let Some(id) = e.span_id {
        key(&mut s, "spanId");
        let _ = write!(s, "{id}");
    }
    s.push_str("}}");
    s
}

/// Checks one index against the reference evaluator on one event, reusing `scratch` the way
/// a matcher thread does across events and index generations.
fn check(
    idx: &CompiledIndex,
    subs: &[Arc<Subscriber>],
    ev: &Event,
    scratch: &mut Scratch,
    queries: &[String],
) {
    idx.begin(scratch);
    idx.match_event(ev, scratch);
    let mut got: Vec<u64> = scratch
        .out
        .iter()
        .map(|&d| {
            assert!((d as usize) < idx.len(), "dense index {d} out of range {}", idx.len());
            idx.sub(d).id
        })
        .collect();
    let matched = got.len();
    got.sort_unstable();
    got.dedup();
    let mut want: Vec<u64> = subs.iter().filter(|s| s.filter.eval(ev)).map(|s| s.id).collect();
    want.sort_unstable();
    if got != want || matched != got.len() {
        let mut report = String::new();
        for s in subs {
            let _ = writeln!(
                report,
                "  id {} eval={} query {:?}\n    expr {}",
                s.id,
                s.filter.eval(ev),
                queries[(s.id - 1) as usize],
                s.filter
            );
        }
        panic!(
            "index and reference disagree (index {got:?}, {matched} entries; reference {want:?})\n \
             event {:?} level {:?} fields {:?}\n search {:?}\nsubscribers:\n{report}",
            ev.kind,
            ev.level,
            ev.fields().collect::<Vec<_>>(),
            ev.search_text()
        );
    }
}

fuzz_target!(|input: Input<'_>| {
    let (catalogue, keys) = setup();
    let limits = Limits::default();

    let mut queries: Vec<String> = Vec::new();
    let mut subs: Vec<Arc<Subscriber>> = Vec::new();
    let mut add = |text: String, e: Expr, follow: bool| {
        queries.push(text);
        // Ids start at 1 so that a zero id left over in the index would stand out.
        let id = queries.len() as u64;
        subs.push(Arc::new(Subscriber::new(id, e, follow, 1, None)));
    };
    for spec in input.queries.iter().take(MAX_QUERIES) {
        if let Some((text, e, follow)) = parse_spec(spec, keys, &limits) {
            add(text, e, follow);
        }
    }
    let raw = String::from_utf8_lossy(input.raw).into_owned();
    if let Ok(p) = parse_pairs(&raw, keys, &limits) {
        add(raw.clone(), p.expr, p.follow);
    }
    if let Ok(e) = parse_expr(&raw, keys, &limits) {
        add(raw, e, true);
    }

    // The fixed events are rebuilt for every input rather than cached: five small events cost
    // little next to building two indexes, and one code path then serves both kinds of event.
    let mut builder = EventBuilder::new(catalogue, keys);
    let specs = input.events.iter().take(MAX_EVENTS).map(event_json);
    let events: Vec<Event> = FIXED_EVENTS
        .iter()
        .map(|s| s.to_string())
        .chain(specs)
        .filter_map(|json| {
            let raw = RawValue::parse_serde(json.as_bytes()).expect("the generated event JSON is valid");
            builder.build(&raw, 0).ok()
        })
        .collect();

    let all = CompiledIndex::build(subs.clone(), 1);
    let some: Vec<Arc<Subscriber>> = subs
        .iter()
        .enumerate()
        .filter(|(i, _)| input.subset >> (i % 32) & 1 == 1)
        .map(|(_, s)| s.clone())
        .collect();
    let part = CompiledIndex::build(some.clone(), 2);
    for (idx, members) in [(&all, &subs), (&part, &some)] {
        assert_eq!(idx.len(), members.len());
        for d in 0..idx.len() as u32 {
            assert_eq!(idx.dense_of(idx.sub(d).id), Some(d));
        }
    }

    // One scratch serves both indexes, as a matcher thread keeps its scratch while the hub
    // swaps in rebuilt indexes. The full index sees each event before and after the partial
    // one, so a cache left stale by the switch would show.
    let mut scratch = Scratch::default();
    for ev in &events {
        check(&all, &subs, ev, &mut scratch, &queries);
        check(&part, &some, ev, &mut scratch, &queries);
        check(&all, &subs, ev, &mut scratch, &queries);
    }
});
