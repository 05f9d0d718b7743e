//! Tests of the compiled index: worked examples per structure, and a property test against the
//! reference evaluator ([`Expr::eval`]) over random queries of every operator.

use super::*;
use crate::event::testing::event;
use crate::event::{Catalogue, KeyRegistry};
use crate::query::parse::{parse_pairs, Limits};
use proptest::prelude::*;

fn setup() -> (Catalogue, KeyRegistry) {
    Catalogue::with_keys(1024)
}

fn sub(k: &KeyRegistry, id: u64, q: &str) -> Arc<Subscriber> {
    let q = parse_pairs(q, k, &Limits::default()).unwrap_or_else(|e| panic!("{q}: {e}"));
    Arc::new(Subscriber::new(id, q.expr, q.follow, 16, None))
}

fn matched(idx: &CompiledIndex, ev: &Event) -> Vec<u64> {
    let mut s = Scratch::default();
    idx.begin(&mut s);
    idx.match_event(ev, &mut s);
    let mut ids: Vec<u64> = s.out.iter().map(|&d| idx.sub(d).id).collect();
    ids.sort();
    ids
}

#[test]
fn index_matches_like_reference() {
    let (c, k) = setup();
    let subs = vec![
        sub(&k, 1, ""),
        sub(&k, 2, "remote-ip=10.0.0.5"),
        sub(&k, 3, "remote-ip=10.0.0.6&remote-ip=10.0.0.5&domain=example.org"),
        sub(&k, 4, "filter=connection"),
        sub(&k, 5, "filter=nope&filter=SMTP&remote-ip=10.0.0.5"),
        sub(&k, 6, "domain=other.org"),
    ];
    let idx = CompiledIndex::build(subs, 1);
    let ev = event(
        &c,
        &k,
        r#"{"type":"smtp.connection-start","data":{"remoteIp":"10.0.0.5","domain":"Example.org"}}"#,
    );
    assert_eq!(matched(&idx, &ev), vec![1, 2, 3, 4, 5]);
}

#[test]
fn every_operator_through_its_structure() {
    let (c, k) = setup();
    let queries = [
        (10, "domain=*.example.org"),
        (11, "from=*@bank.*"),
        (12, "remote-ip=10.0.0.0/8"),
        (13, "remote-ip=2001:db8::/32"),
        (14, "remote-ip=::/0"),
        (15, "size=>1000000"),
        (16, "size=<=1500000&size=>=1500000"),
        (17, "size=<10"),
        (18, "queue-id=*"),
        (19, "queue-id=!*&level=warn"),
        (20, "event=smtp.*"),
        (21, "event=auth.failed,delivery.*"),
        (22, "level=error"),
        (23, "domain=!example.org"),
        (24, "q=(remote-ip:10.0.0.0/8 OR domain:*.example.org) AND NOT event:smtp.rcpt-to AND size>1000000"),
        (25, "reason=?ailbox*"),
        (26, "reason=*"),
        (27, "to=???@example.org"),
    ];
    let subs: Vec<_> = queries.iter().map(|(id, q)| sub(&k, *id, q)).collect();
    let idx = CompiledIndex::build(subs.clone(), 1);
    let st = idx.stats();
    assert_eq!(st.subscribers, queries.len());
    assert_eq!(st.fallback, 1, "only the lone negation is evaluated on every event");
    assert!(st.verified >= 2);
    let events = [
        r#"{"type":"smtp.mail-from","level":"warn","data":{"remoteIp":"10.1.2.3","domain":"mx.Example.org",
            "from":"joe@bank.com","size":1500000,"reason":"Mailbox full"}}"#,
        r#"{"type":"smtp.rcpt-to","data":{"remoteIp":"2001:db8::7","to":["abc@example.org","x@y.org"],"size":5}}"#,
        r#"{"type":"auth.failed","level":"error","data":{"remoteIp":"::ffff:10.9.9.9","queueId":7}}"#,
        r#"{"type":"delivery.delivered","data":{"domain":"example.org","size":"2000000"}}"#,
        r#"{"type":"custom.thing","data":{}}"#,
    ];
    for json in events {
        let ev = event(&c, &k, json);
        let want: Vec<u64> = subs.iter().filter(|s| s.filter.eval(&ev)).map(|s| s.id).collect();
        assert_eq!(matched(&idx, &ev), want, "{json}");
    }
    // Spot checks that the expected structures fire.
    let ev = event(&c, &k, events[0]);
    let got = matched(&idx, &ev);
    for id in [10, 11, 12, 14, 15, 16, 20, 23, 24, 25, 26] {
        assert!(got.contains(&id), "{id} in {got:?}");
    }
    let ev = event(&c, &k, events[2]);
    let got = matched(&idx, &ev);
    for id in [12, 14, 18, 21, 22, 23] {
        assert!(got.contains(&id), "{id} in {got:?}");
    }
}

#[test]
fn type_cache_follows_the_index() {
    let (c, k) = setup();
    let mut s = Scratch::default();
    let ev = event(&c, &k, r#"{"type":"smtp.ehlo","data":{}}"#);
    let a = CompiledIndex::build(vec![sub(&k, 1, "event=smtp.*")], 1);
    a.begin(&mut s);
    a.match_event(&ev, &mut s);
    assert_eq!(s.out.len(), 1);
    // Same generation number, different build: the cached answer must not leak across.
    let b = CompiledIndex::build(vec![sub(&k, 2, "event=auth.*")], 1);
    b.begin(&mut s);
    b.match_event(&ev, &mut s);
    assert!(s.out.is_empty());
}

#[test]
fn more_guards_than_bits_still_match_exactly() {
    let (c, k) = setup();
    // 40 distinct conjuncts: 32 become guard bits, the rest are verified afterwards.
    let q: Vec<String> = (0..40).map(|i| format!("filter=w{i}")).collect();
    let q = format!("q={}", q.iter().map(|t| t.trim_start_matches("filter=")).collect::<Vec<_>>().join(" "));
    let limits = Limits { max_terms: 100, ..Limits::default() };
    let e = parse_pairs(&q, &k, &limits).unwrap().expr;
    let s = Arc::new(Subscriber::new(1, e, true, 16, None));
    assert_eq!(s.plan.guards.len(), crate::query::MAX_CLAUSES);
    let idx = CompiledIndex::build(vec![s], 1);
    let all: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let ev = event(&c, &k, &format!(r#"{{"type":"x.y","data":{{"reason":"{}"}}}}"#, all.join(" ")));
    assert_eq!(matched(&idx, &ev), vec![1]);
    let some = all[..39].join(" ");
    let ev = event(&c, &k, &format!(r#"{{"type":"x.y","data":{{"reason":"{some}"}}}}"#));
    assert!(matched(&idx, &ev).is_empty());
}

const IPS: &[&str] =
    &["10.0.0.1", "10.0.1.2", "192.168.1.1", "2001:db8::1", "2001:db9::1", "::ffff:10.0.0.3"];
const CIDRS: &[&str] =
    &["10.0.0.0/8", "10.0.0.0/24", "192.168.0.0/16", "2001:db8::/32", "::/0", "0.0.0.0/0", "::ffff:0:0/96"];
const DOMAINS: &[&str] = &["example.org", "Mail.Example.org", "bank.com", "mail.test"];
const DOMAIN_PATS: &[&str] =
    &["example.org", "*.example.org", "*example*", "?ank.com", "*", "!*", "!example.org", "!*.test"];
const WORDS: &[&str] = &["smtp", "delivery", "example", "10.0.0", "auth", "fail", "zzz", "mailbox"];
/// Event types, with both names of two types Stalwart renamed in v0.16 (and one name of a
/// third), so that queries are widened across catalogue generations (`query::generations`).
const TYPES: &[&str] = &[
    "smtp.connection-start",
    "delivery.delivered",
    "auth.failed",
    "smtp.rcpt-to",
    "custom.new-thing",
    "queue.queue-message",
    "queue.message-queued",
    "task-queue.task-failed",
    "task-manager.task-failed",
    "task-manager.task-ignored",
];
const TYPE_PATS: &[&str] = &[
    "smtp.*",
    "auth.failed",
    "*.delivered",
    "!smtp.rcpt-to",
    "custom.*",
    "*",
    "queue.queue-message",
    "queue.message-queued",
    "!queue.message-queued",
    "queue.queue-*",
    "task-queue.*",
    "*-queued",
];
const LEVELS_Q: &[&str] = &["trace", "info", "warn", "error", "<warn", ">=info", "<=debug"];
const SIZES: &[&str] = &[">1000", ">=1000", "<1000", "<=1000", "!>5000", ">-1", "<0.5"];
const REASONS: &[&str] = &["Mailbox full", "mailbox*", "*full", "?ailbox ful?", "\"a,b\"", "a\\,b"];

/// One pair-form parameter drawn from every operator the language has.
fn arb_pair() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(IPS).prop_map(|v| format!("remote-ip={v}")),
        prop::sample::select(CIDRS).prop_map(|v| format!("remote-ip={v}")),
        prop::sample::select(CIDRS).prop_map(|v| format!("remote-ip=!{v}")),
        prop::sample::select(DOMAIN_PATS).prop_map(|v| format!("domain={v}")),
        prop::sample::select(DOMAIN_PATS).prop_map(|v| format!("to={v}")),
        prop::sample::select(WORDS).prop_map(|v| format!("filter={v}")),
        (1u32..4).prop_map(|v| format!("queue-id={v}")),
        prop::sample::select(&["*", "!*", ">1", "<=2"][..]).prop_map(|v| format!("queue-id={v}")),
        prop::sample::select(TYPE_PATS).prop_map(|v| format!("event={v}")),
        prop::sample::select(LEVELS_Q).prop_map(|v| format!("level={v}")),
        prop::sample::select(SIZES).prop_map(|v| format!("size={v}")),
        prop::sample::select(REASONS).prop_map(|v| format!("reason={v}")),
    ]
}

/// A `q=` term in the expression syntax.
fn arb_q_term() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(CIDRS).prop_map(|v| format!("remote-ip:{v}")),
        prop::sample::select(IPS).prop_map(|v| format!("remote-ip:{v}")),
        prop::sample::select(DOMAIN_PATS).prop_map(|v| format!("domain:{v}")),
        prop::sample::select(TYPE_PATS).prop_map(|v| format!("event:{v}")),
        prop::sample::select(WORDS).prop_map(|v| v.to_string()),
        prop::sample::select(&["size>1000", "size<=1000", "level>=warn", "level<info", "queue-id:*"][..])
            .prop_map(|v| v.to_string()),
    ]
}

/// Random nested expressions with AND, OR, NOT and parentheses.
fn arb_q() -> impl Strategy<Value = String> {
    arb_q_term().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(|v| format!("({})", v.join(" OR "))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(|v| format!("({})", v.join(" AND "))),
            inner.prop_map(|v| format!("NOT {v}")),
        ]
    })
}

fn arb_query() -> impl Strategy<Value = String> {
    let pairs = prop::collection::vec(arb_pair(), 0..4);
    let q = prop::option::weighted(0.3, arb_q());
    (pairs, q).prop_map(|(mut p, q)| {
        if let Some(q) = q {
            p.push(format!("q={}", form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()));
        }
        p.iter()
            .map(|x| x.replacen('=', "\u{0}", 1))
            .map(|x| {
                // Values are URL-encoded the way a client would send them.
                let (name, value) = x.split_once('\u{0}').unwrap();
                if name == "q" {
                    format!("q={value}")
                } else {
                    format!(
                        "{name}={}",
                        form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn arb_event() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES),
        prop::option::of(prop::sample::select(&["trace", "debug", "info", "warn", "error"][..])),
        prop::option::of(prop::sample::select(IPS)),
        prop::option::of(prop::sample::select(DOMAINS)),
        prop::collection::vec(prop::sample::select(DOMAINS), 0..3),
        prop::option::of(1u32..4),
        prop::option::of(prop::sample::select(
            &["999", "1000", "1000.5", "5001", "-3", "0.25", "\"big\""][..],
        )),
        prop::option::of(prop::sample::select(&["Mailbox full", "mailbox ful!", "a,b", "x"][..])),
    )
        .prop_map(|(t, level, ip, d, to, q, size, reason)| {
            let mut data = vec![];
            if let Some(ip) = ip {
                data.push(format!("\"remoteIp\":\"{ip}\""));
            }
            if let Some(d) = d {
                data.push(format!("\"domain\":\"{d}\""));
            }
            if !to.is_empty() {
                let to: Vec<String> = to.iter().map(|d| format!("\"u@{d}\"")).collect();
                data.push(format!("\"to\":[{}]", to.join(",")));
            }
            if let Some(q) = q {
                data.push(format!("\"queueId\":{q}"));
            }
            if let Some(s) = size {
                data.push(format!("\"size\":{s}"));
            }
            if let Some(r) = reason {
                data.push(format!("\"reason\":\"{r}\""));
            }
            let level = level.map(|l| format!(",\"level\":\"{l}\"")).unwrap_or_default();
            format!("{{\"type\":\"{t}\"{level},\"data\":{{{}}}}}", data.join(","))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn indexed_agrees_with_naive(queries in prop::collection::vec(arb_query(), 1..40),
                                 events in prop::collection::vec(arb_event(), 1..20)) {
        let (c, k) = setup();
        let subs: Vec<_> = queries.iter().enumerate().map(|(i, q)| sub(&k, i as u64, q)).collect();
        // The queries as written, before the subscription widened them across generations.
        let written: Vec<Expr> =
            queries.iter().map(|q| parse_pairs(q, &k, &Limits::default()).unwrap().expr).collect();
        let idx = CompiledIndex::build(subs.clone(), 1);
        // One scratch for the whole run, as a matcher thread reuses it.
        let mut s = Scratch::default();
        for e in &events {
            let ev = event(&c, &k, e);
            let want: Vec<u64> = subs.iter().filter(|s| s.filter.eval(&ev)).map(|s| s.id).collect();
            idx.begin(&mut s);
            idx.match_event(&ev, &mut s);
            let mut got: Vec<u64> = s.out.iter().map(|&d| idx.sub(d).id).collect();
            got.sort();
            prop_assert_eq!(&got, &want, "event {}", e);
            // And the widening is the meaning across generations: an event-type term holds
            // for the event's type or for the type's other name.
            let twin = crate::event::catalogue::counterpart(&ev.kind)
                .map(|other| event(&c, &k, &e.replacen(&*ev.kind, other, 1)));
            let across: Vec<u64> = (0..written.len() as u64)
                .filter(|&i| crate::query::generations::eval_across(&written[i as usize], &ev, twin.as_ref()))
                .collect();
            prop_assert_eq!(got, across, "event {} across generations", e);
        }
    }
}
