//! Event-type terms across the two generations of Stalwart's catalogue: a query that names a
//! type Stalwart renamed between v0.15 and v0.16 also selects the type's other name.
//!
//! The widening is a rewrite of the query tree, done once when a subscription is compiled
//! ([`across_generations`], called by `Subscriber::new`), so matching an event costs what it
//! cost before: the index still evaluates event-type terms once per distinct type and caches
//! the answer, and nothing looks up a counterpart per event. The rewrite is:
//! - `event=x`, where `x` has a counterpart `y`, becomes one term `event ∈ {x, y}`
//!   ([`Pred::Renamed`], printed `(event:x OR event:y)`);
//! - a glob becomes `glob OR event ∈ {y, …}` with the counterpart `y` of each renamed pair
//!   whose one name it matches and whose other name it does not (`event=queue.queue-*` also
//!   selects `queue.message-queued`; `queue.*` matches both names of its pairs already and
//!   stays as it is);
//! - in a disjunction the sets are merged into one, less the names a glob beside them matches;
//! - everything else is unchanged, and a subtree that names no renamed type is returned as it
//!   was, so only queries that need it are touched.
//!
//! The set is a bit mask over the 46 names ([`RenamedNames`]), so widening adds at most one
//! small term (and, for a glob, a two-item `OR`) per event-type term: a query's size, and the
//! memory per stream that `config::memory` counts from `max-query-terms`, stay within a
//! small factor of what they were. An `OR` of exact names would add up to 23 terms per glob
//! (a glob such as `*e.*` matches one name of 13 pairs), so 64 globs could grow a query
//! twentyfold.
//!
//! Negation needs nothing more: `NOT event=x` becomes `NOT event ∈ {x, y}`, which excludes
//! both names. The rewritten tree is what the subscriber's filter holds, so the reference
//! evaluator (`Expr::eval`) and the compiled index agree on it as on any other query.

use crate::event::catalogue;
use crate::query::ast::{Expr, Field, Glob, Pred, Term};

/// A set of the names of the event types Stalwart renamed between v0.15 and v0.16: bit `2i` is
/// pair `i`'s v0.15 name and bit `2i + 1` its v0.16 name, in `catalogue::renamed()` order
/// (23 pairs, 46 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RenamedNames(u64);

impl RenamedNames {
    /// The set holding `name` and its counterpart, or `None` when `name` is no renamed type's.
    pub fn pair_of(name: &str) -> Option<RenamedNames> {
        let i = catalogue::renamed().iter().position(|r| r.v015 == name || r.v016 == name)?;
        (i < 32).then(|| RenamedNames(0b11 << (2 * i)))
    }

    /// The set holding `name` alone, or `None` when `name` is no renamed type's.
    fn one(name: &str) -> Option<RenamedNames> {
        let bit = catalogue::renamed().iter().enumerate().find_map(|(i, r)| match name {
            n if n == r.v015 => Some(2 * i),
            n if n == r.v016 => Some(2 * i + 1),
            _ => None,
        })?;
        (bit < 64).then(|| RenamedNames(1 << bit))
    }

    /// Both sets' names.
    pub fn union(self, other: RenamedNames) -> RenamedNames {
        RenamedNames(self.0 | other.0)
    }

    /// The set with every name's counterpart added.
    fn closed(self) -> RenamedNames {
        // Swap the two bits of every pair and add them.
        const V015: u64 = 0x5555_5555_5555_5555;
        RenamedNames(self.0 | ((self.0 & V015) << 1) | ((self.0 >> 1) & V015))
    }

    /// The set without the names `drop` says to drop.
    fn without(self, mut drop: impl FnMut(&str) -> bool) -> RenamedNames {
        let mut out = self;
        for (bit, name) in self.bits() {
            if drop(name) {
                out.0 &= !(1 << bit);
            }
        }
        out
    }

    /// Number of names.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True for the empty set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names, in catalogue order (each pair's v0.15 name first).
    pub fn iter(self) -> impl Iterator<Item = &'static str> {
        self.bits().map(|(_, n)| n)
    }

    fn bits(self) -> impl Iterator<Item = (u32, &'static str)> {
        let pairs = catalogue::renamed();
        (0..64u32).filter(move |b| self.0 & (1 << b) != 0).filter_map(move |b| {
            let r = pairs.get(b as usize / 2)?;
            Some((b, if b % 2 == 0 { r.v015 } else { r.v016 }))
        })
    }
}

/// `expr` with every event-type term widened to both generations' names of the types it
/// selects (see the module documentation).
pub fn across_generations(expr: Expr) -> Expr {
    widen(expr)
}

fn renamed_term(names: RenamedNames) -> Expr {
    Expr::Term(Term { field: Field::Event, pred: Pred::Renamed(names) })
}

fn widen(expr: Expr) -> Expr {
    match expr {
        Expr::Term(t) => widen_term(&t).unwrap_or(Expr::Term(t)),
        Expr::Not(x) => Expr::Not(Box::new(widen(*x))),
        Expr::And(xs) => Expr::And(xs.into_iter().map(widen).collect()),
        Expr::Or(xs) => {
            if !xs.iter().any(names_a_renamed_type) {
                return Expr::Or(xs);
            }
            // Widened terms are spliced into the enclosing disjunction and their sets merged,
            // so `event=a OR event=b` (the two names of one pair) is one term.
            let mut items: Vec<Expr> = Vec::with_capacity(xs.len() + 1);
            let mut names = RenamedNames::default();
            for x in xs {
                let spliced = match widen(x) {
                    Expr::Or(inner) => inner,
                    other => vec![other],
                };
                for e in spliced {
                    match e {
                        Expr::Term(Term { field: Field::Event, pred: Pred::Renamed(n) }) => {
                            names = names.union(n)
                        }
                        e if !items.contains(&e) => items.push(e),
                        _ => {}
                    }
                }
            }
            // Names a glob of this disjunction matches need no term of their own; dropping
            // them makes widening a widened query give it back unchanged.
            let globs: Vec<&Glob> = items
                .iter()
                .filter_map(|e| match e {
                    Expr::Term(Term { field: Field::Event, pred: Pred::Glob(g) }) => Some(g),
                    _ => None,
                })
                .collect();
            let names = names.without(|n| globs.iter().any(|g| g.matches(n)));
            if !names.is_empty() {
                items.push(renamed_term(names));
            }
            Expr::or(items)
        }
        Expr::True => Expr::True,
    }
}

/// True when some event-type term in `e` selects a renamed type.
fn names_a_renamed_type(e: &Expr) -> bool {
    match e {
        Expr::Term(t) => widen_term(t).is_some(),
        Expr::Not(x) => names_a_renamed_type(x),
        Expr::And(xs) | Expr::Or(xs) => xs.iter().any(names_a_renamed_type),
        Expr::True => false,
    }
}

/// What an event-type term becomes, or `None` when it needs no widening.
fn widen_term(t: &Term) -> Option<Expr> {
    match (&t.field, &t.pred) {
        (Field::Event, Pred::Eq(name)) => RenamedNames::pair_of(name).map(renamed_term),
        (Field::Event, Pred::Glob(g)) => {
            let mut missing = RenamedNames::default();
            for r in catalogue::renamed() {
                match (g.matches(r.v015), g.matches(r.v016)) {
                    (true, false) => missing = missing.union(RenamedNames::one(r.v016)?),
                    (false, true) => missing = missing.union(RenamedNames::one(r.v015)?),
                    _ => {}
                }
            }
            (!missing.is_empty()).then(|| Expr::Or(vec![Expr::Term(t.clone()), renamed_term(missing)]))
        }
        (Field::Event, Pred::Renamed(names)) => {
            let closed = names.closed();
            (closed != *names).then(|| renamed_term(closed))
        }
        _ => None,
    }
}

/// The meaning [`across_generations`] gives a query, evaluated directly for tests: an
/// event-type term holds when it holds for the event or for `twin`, the same event under its
/// type's other name; every other term as [`Expr::eval`] has it.
#[cfg(test)]
pub(crate) fn eval_across(e: &Expr, ev: &crate::event::Event, twin: Option<&crate::event::Event>) -> bool {
    match e {
        Expr::True => true,
        Expr::And(xs) => xs.iter().all(|x| eval_across(x, ev, twin)),
        Expr::Or(xs) => xs.iter().any(|x| eval_across(x, ev, twin)),
        Expr::Not(x) => !eval_across(x, ev, twin),
        Expr::Term(t @ Term { field: Field::Event, .. }) => t.eval(ev) || twin.is_some_and(|o| t.eval(o)),
        Expr::Term(t) => t.eval(ev),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing::event;
    use crate::event::{Catalogue, KeyRegistry};
    use crate::query::parse::{parse_expr, parse_pairs, Limits};
    use proptest::prelude::*;

    fn setup() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    fn q(k: &KeyRegistry, s: &str) -> Expr {
        parse_pairs(s, k, &Limits::default()).unwrap_or_else(|e| panic!("{s}: {e}")).expr
    }

    fn widened(k: &KeyRegistry, s: &str) -> String {
        across_generations(q(k, s)).to_string()
    }

    #[test]
    fn exact_names_gain_their_counterpart() {
        let (_, k) = setup();
        let pair = "(event:queue.queue-message OR event:queue.message-queued)";
        assert_eq!(widened(&k, "event=queue.queue-message"), pair);
        assert_eq!(widened(&k, "event=queue.message-queued"), pair);
        // One term, a set of the pair's names.
        assert!(matches!(
            across_generations(q(&k, "event=queue.message-queued")),
            Expr::Term(Term { field: Field::Event, pred: Pred::Renamed(n) }) if n.len() == 2
        ));
        // Both names given: still one term.
        assert_eq!(
            widened(&k, "q=event:telemetry.alert OR event:telemetry.alert-event"),
            "(event:telemetry.alert OR event:telemetry.alert-event)"
        );
        // Case does not matter, as for the match itself.
        assert_eq!(
            widened(&k, "event=TASK-QUEUE.TASK-FAILED"),
            "(event:task-queue.task-failed OR event:task-manager.task-failed)"
        );
        // Beside other names, in the pair form's list.
        assert_eq!(
            widened(&k, "event=smtp.ehlo,telemetry.alert"),
            "event:smtp.ehlo OR (event:telemetry.alert OR event:telemetry.alert-event)"
        );
    }

    #[test]
    fn globs_gain_the_counterparts_they_miss() {
        let (_, k) = setup();
        assert_eq!(widened(&k, "event=queue.*"), "event:queue.*", "both names already match");
        assert_eq!(widened(&k, "event=*"), "event:*");
        assert_eq!(
            widened(&k, "event=queue.queue-message*"),
            "event:queue.queue-message* OR \
             (event:queue.message-queued OR event:queue.authenticated-message-queued)"
        );
        let Expr::Or(items) = across_generations(q(&k, "event=acme.*")) else { panic!("not an OR") };
        let Expr::Term(Term { pred: Pred::Renamed(names), .. }) = &items[1] else { panic!("{items:?}") };
        let want: Vec<&str> =
            catalogue::renamed().iter().filter(|r| r.v015.starts_with("acme.")).map(|r| r.v016).collect();
        assert_eq!(names.iter().collect::<Vec<_>>(), want);
        assert_eq!(want.len(), 7);
        // A glob that splits many pairs still adds one term.
        let w = across_generations(q(&k, "event=*e.*"));
        assert!(matches!(&w, Expr::Or(items) if items.len() == 2), "{w}");
        assert_eq!(w.term_count(), 2);
    }

    #[test]
    fn printed_widened_queries_parse_back_to_the_same_meaning() {
        let (_, k) = setup();
        for s in [
            "event=queue.queue-message",
            "event=queue.queue-message*&level=info",
            "q=NOT (event:task-* OR event:telemetry.alert) AND domain:a.org",
        ] {
            let w = across_generations(q(&k, s));
            let printed = w.to_string();
            let back =
                parse_expr(&printed, &k, &Limits::default()).unwrap_or_else(|e| panic!("{printed}: {e}"));
            assert_eq!(across_generations(back), w, "{s} printed as {printed}");
        }
    }

    #[test]
    fn name_sets() {
        let pair = RenamedNames::pair_of("purge.auto-expunge").unwrap();
        assert_eq!(pair.iter().collect::<Vec<_>>(), ["purge.auto-expunge", "store.auto-expunge"]);
        let one = RenamedNames::one("store.auto-expunge").unwrap();
        assert_eq!((one.len(), one.closed()), (1, pair));
        assert_eq!(pair.without(|n| n.starts_with("purge.")), one);
        assert!(RenamedNames::pair_of("smtp.ehlo").is_none() && RenamedNames::default().is_empty());
        let all = catalogue::renamed()
            .iter()
            .fold(RenamedNames::default(), |s, r| s.union(RenamedNames::pair_of(r.v015).unwrap()));
        assert_eq!(all.len(), 46);
        assert_eq!(all.closed(), all);
    }

    #[test]
    fn untouched_queries_stay_as_they_were() {
        let (_, k) = setup();
        for s in [
            "",
            "remote-ip=10.0.0.5",
            "event=smtp.*&level=warn",
            "q=event:smtp.ehlo OR event:smtp.*",
            "q=NOT event:auth.success AND domain:example.org",
        ] {
            assert_eq!(across_generations(q(&k, s)), q(&k, s), "{s}");
        }
    }

    #[test]
    fn negation_excludes_both_names_and_widening_is_idempotent() {
        let (c, k) = setup();
        let not = across_generations(q(&k, "q=NOT event:queue.message-queued"));
        for ty in ["queue.queue-message", "queue.message-queued"] {
            assert!(!not.eval(&event(&c, &k, &format!(r#"{{"type":"{ty}"}}"#))), "{ty}");
        }
        assert!(not.eval(&event(&c, &k, r#"{"type":"queue.queue-dsn"}"#)));
        for s in [
            "event=queue.queue-message",
            "event=queue.queue-message*",
            "q=(event:task-* OR domain:a.org) AND NOT event:purge.auto-expunge",
        ] {
            let once = across_generations(q(&k, s));
            assert_eq!(across_generations(once.clone()), once, "{s}");
        }
    }

    /// Event-type patterns that touch renamed types in every way: exact names of both
    /// generations, globs matching one side, both sides, or neither.
    fn arb_event_term() -> impl Strategy<Value = String> {
        let names: Vec<String> = catalogue::renamed()
            .iter()
            .flat_map(|r| [r.v015.to_string(), r.v016.to_string()])
            .chain(["smtp.ehlo".into(), "queue.queue-dsn".into()])
            .collect();
        prop_oneof![
            prop::sample::select(names),
            prop::sample::select(vec![
                "queue.*",
                "queue.queue-*",
                "*-queued",
                "task-*",
                "task-queue.*",
                "task-manager.*",
                "acme.*",
                "dns.*",
                "dns.record-?reated",
                "*alert*",
                "*",
                "auth.m*",
                "*.auto-expunge",
                "smtp.*",
            ])
            .prop_map(String::from),
        ]
    }

    fn arb_q() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            3 => arb_event_term().prop_map(|t| format!("event:{t}")),
            1 => Just("domain:example.org".to_string()),
            1 => Just("level:>=info".to_string()),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(|v| format!("({})", v.join(" OR "))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(|v| format!("({})", v.join(" AND "))),
                inner.prop_map(|e| format!("NOT {e}")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn widened_query_means_either_generation(s in arb_q(), pick in 0usize..48, domain in any::<bool>()) {
            let (c, k) = setup();
            let pairs = catalogue::renamed();
            let ty = match pick {
                p if p < 2 * pairs.len() => if p % 2 == 0 { pairs[p / 2].v015 } else { pairs[p / 2].v016 },
                _ => "smtp.ehlo",
            };
            let data = if domain { r#","data":{"domain":"example.org"}"# } else { "" };
            let make = |t: &str| event(&c, &k, &format!(r#"{{"type":"{t}"{data}}}"#));
            let ev = make(ty);
            let twin = catalogue::counterpart(ty).map(make);
            let e = q(&k, &format!("q={s}"));
            let w = across_generations(e.clone());
            prop_assert_eq!(w.eval(&ev), eval_across(&e, &ev, twin.as_ref()), "{} widened to {}", s, w);
        }
    }
}
