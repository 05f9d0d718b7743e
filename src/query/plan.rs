//! Per-subscriber match plans: how one query [`Expr`] splits into indexable guards and a residual.
//!
//! A plan is computed once, when a subscriber connects, so that rebuilding a shard's index only
//! merges ready plans. The query's top-level conjuncts are examined one by one:
//! - a conjunct that is a disjunction of *indexable terms* (exact key values, key globs, CIDR,
//!   numeric comparisons, presence, event type, level, text) becomes one **exact guard**: the
//!   index alone decides it, by setting the conjunct's bit;
//! - a conjunct that is not, but is only true when one of some indexable terms holds (such as
//!   `(a AND NOT b) OR c`, which needs `a` or `c`), becomes a **loose guard** on those terms and
//!   is also kept in the **residual**, evaluated only for subscribers whose guard bits are all
//!   set;
//! - anything else (a negation such as `domain=!example.org`) goes to the residual alone.
//!
//! Only the guards of the lowest cost are posted in the index (several when they tie, and the
//! counting pass ANDs them); a broader guard beside them is checked after a hit instead, so a
//! `level=info` next to an exact account does not touch the subscriber on every info event.
//!
//! A plan without guards but with a residual is a *fallback*: the index evaluates it on every
//! event. Those are the only per-event costs that grow with the number of subscribers, so the
//! index counts them and the stats endpoint shows the count.

use crate::query::ast::{Expr, Field, Pred, Term};
use crate::query::MAX_CLAUSES;

/// How one subscriber's query is evaluated by the compiled index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One entry per guarded conjunct: the conjunct can only hold when one of these indexable
    /// terms holds. At most [`MAX_CLAUSES`] entries, one bit each in the matcher.
    pub guards: Vec<Vec<Term>>,
    /// Conjuncts the index does not decide by itself; all must hold (evaluated after the
    /// guards): unindexable ones, and indexable ones less selective than the posted guards.
    pub residual: Vec<Expr>,
    /// Terms of conjuncts that could not be indexed at all (for stats).
    pub residual_terms: usize,
}

impl Plan {
    /// Splits `expr` into guards and residual.
    pub fn compile(expr: &Expr) -> Plan {
        let mut conjuncts = Vec::new();
        flatten_and(expr, &mut conjuncts);
        // Each conjunct with its guard (if any), whether the guard decides it exactly, and
        // the guard's cost.
        let mut guarded: Vec<(&Expr, Vec<Term>, bool, u32)> = Vec::new();
        let mut plan = Plan::default();
        for c in conjuncts {
            if let Some(terms) = exact_terms(c) {
                let cost = terms.iter().map(cost).sum();
                guarded.push((c, terms, true, cost));
            } else if let Some((terms, cost)) = necessary(c) {
                guarded.push((c, terms, false, cost));
                plan.push_residual(c, true);
            } else {
                plan.push_residual(c, true);
            }
        }
        // Only the most selective guards are posted in the index: a broad guard beside a
        // selective one (`level=info&account-name=alice`) would touch the subscriber on most
        // events for nothing. The others are checked after a hit, like the residual.
        let best = guarded.iter().map(|g| g.3).min().unwrap_or(0);
        let mut demoted = Vec::new();
        for (c, terms, exact, cost) in guarded {
            if cost == best && plan.guards.len() < MAX_CLAUSES {
                plan.guards.push(terms);
            } else if exact {
                demoted.push(c);
            }
        }
        // Demoted exact guards are cheap to check; check them before the residual proper.
        let mut residual: Vec<Expr> = demoted.into_iter().cloned().collect();
        residual.append(&mut plan.residual);
        plan.residual = residual;
        plan
    }

    /// Adds a conjunct to the residual; `unindexable` ones count in [`Plan::residual_terms`].
    fn push_residual(&mut self, e: &Expr, unindexable: bool) {
        if unindexable {
            self.residual_terms += e.term_count();
        }
        self.residual.push(e.clone());
    }

    /// True when the plan accepts every event without looking at it.
    pub fn is_always(&self) -> bool {
        self.guards.is_empty() && self.residual.is_empty()
    }

    /// True when only per-event evaluation can decide the plan (no guard narrows it).
    pub fn is_fallback(&self) -> bool {
        self.guards.is_empty() && !self.residual.is_empty()
    }
}

/// Collects the conjuncts of nested `And`s; `True` contributes nothing.
fn flatten_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::True => {}
        Expr::And(xs) => xs.iter().for_each(|x| flatten_and(x, out)),
        other => out.push(other),
    }
}

/// True when the index can decide the term by itself.
pub fn indexable(t: &Term) -> bool {
    matches!(
        (&t.field, &t.pred),
        (Field::Key { .. }, Pred::Eq(_) | Pred::Glob(_) | Pred::Cidr(_) | Pred::Cmp(..) | Pred::Present)
            | (Field::Event, Pred::Eq(_) | Pred::Glob(_) | Pred::Renamed(_))
            | (Field::Level, Pred::Level(..))
            | (Field::Text, Pred::Contains(_))
    )
}

/// When `e` is exactly a disjunction of indexable terms, those terms.
fn exact_terms(e: &Expr) -> Option<Vec<Term>> {
    fn walk(e: &Expr, out: &mut Vec<Term>) -> bool {
        match e {
            Expr::Term(t) if indexable(t) => {
                if !out.contains(t) {
                    out.push(t.clone());
                }
                true
            }
            Expr::Or(xs) => xs.iter().all(|x| walk(x, out)),
            _ => false,
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out).then_some(out)
}

/// A rough cost of a term as a guard: how many events it lets through, from exact values
/// (few) to presence and levels (many). Used to pick the most selective side of an `AND`.
fn cost(t: &Term) -> u32 {
    match (&t.field, &t.pred) {
        (Field::Key { .. }, Pred::Eq(_)) => 1,
        (Field::Key { .. }, Pred::Cidr(_)) => 2,
        (Field::Key { .. }, Pred::Glob(_)) | (Field::Text, _) => 3,
        (Field::Event, Pred::Eq(_) | Pred::Renamed(_)) => 4,
        (Field::Event, _) => 6,
        (Field::Key { .. }, Pred::Cmp(..)) => 8,
        (Field::Key { .. }, Pred::Present) => 12,
        _ => 16,
    }
}

/// A set of indexable terms at least one of which holds whenever `e` holds, with its cost;
/// `None` when there is no such set (negations, the constant true).
fn necessary(e: &Expr) -> Option<(Vec<Term>, u32)> {
    match e {
        Expr::Term(t) if indexable(t) => Some((vec![t.clone()], cost(t))),
        Expr::Term(_) | Expr::True => None,
        Expr::Not(x) => match &**x {
            Expr::Not(inner) => necessary(inner),
            _ => None,
        },
        Expr::Or(xs) => {
            let mut terms = Vec::new();
            let mut total = 0u32;
            for x in xs {
                let (ts, c) = necessary(x)?;
                total = total.saturating_add(c);
                for t in ts {
                    if !terms.contains(&t) {
                        terms.push(t);
                    }
                }
            }
            Some((terms, total))
        }
        Expr::And(xs) => xs.iter().filter_map(necessary).min_by_key(|(_, c)| *c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Catalogue;
    use crate::query::parse::{parse_pairs, Limits};

    fn plan(q: &str) -> Plan {
        let (_, k) = Catalogue::with_keys(1024);
        Plan::compile(&parse_pairs(q, &k, &Limits::default()).unwrap().expr)
    }

    #[test]
    fn splits_guards_and_residual() {
        assert!(plan("").is_always());
        let p = plan("remote-ip=10.0.0.5&domain=example.org");
        assert_eq!(p.guards.len(), 2, "equally selective guards are counted together");
        assert!(p.residual.is_empty());
        let p = plan("remote-ip=10.0.0.5&remote-ip=10.0.0.6&domain=*.example.org");
        assert_eq!(p.guards.len(), 1, "the broader glob is checked after a hit");
        assert_eq!(p.guards[0].len(), 2, "repeated key is one OR guard");
        assert_eq!(p.residual.len(), 1);
        assert_eq!(p.residual_terms, 0, "a demoted guard is still indexable");
        let p = plan("level=info&account-name=alice");
        let g: Vec<String> = p.guards[0].iter().map(ToString::to_string).collect();
        assert_eq!(g, vec!["account-name:alice"]);
        let p = plan("domain=!example.org");
        assert!(p.is_fallback());
        assert_eq!(p.residual_terms, 1);
        let p = plan("level=warn&domain=!example.org");
        assert_eq!(p.guards.len(), 1);
        assert_eq!(p.residual.len(), 1);
        // A loose guard: `(a AND NOT b) OR c` needs a or c, and is verified afterwards.
        let p = plan("q=(domain:a.org AND NOT event:smtp.*) OR remote-ip:10.0.0.0/8");
        assert_eq!(p.guards.len(), 1);
        assert_eq!(p.guards[0].len(), 2);
        assert_eq!(p.residual.len(), 1);
        // The most selective side of an AND guards it.
        let p = plan("q=(queue-id:* AND domain:a.org) OR filter:spam");
        let g: Vec<String> = p.guards[0].iter().map(ToString::to_string).collect();
        assert_eq!(g, vec!["domain:a.org", "spam"]);
        // An OR with a negated side cannot be guarded.
        assert!(plan("q=domain:a.org OR NOT level:warn").is_fallback());
    }
}
