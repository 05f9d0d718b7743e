//! Fuzz target `alert_expr`: arbitrary text through the alert condition parser against the
//! embedded catalogue's metric names. Nothing may panic; an error's position lies within the
//! input; an accepted condition refers only to its own terms, every windowed term has a
//! window, and evaluating it with or without data never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livetap::alert::expr::{parse, Expr, Func, Operand};
use livetap::alert::CatalogueKinds;
use livetap::event::Catalogue;
use std::sync::OnceLock;

/// The metric names, built once per process (loading the catalogue parses a large JSON file).
fn kinds() -> &'static CatalogueKinds {
    static KINDS: OnceLock<CatalogueKinds> = OnceLock::new();
    KINDS.get_or_init(|| CatalogueKinds::new(&Catalogue::embedded()))
}

/// Asserts that every operand of `e` names a term that exists.
fn check_refs(e: &Expr, terms: usize) {
    match e {
        Expr::Cmp(a, _, b) => {
            for o in [a, b] {
                if let Operand::Term(i) = o {
                    assert!(*i < terms, "term {i} of {terms}");
                }
            }
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            check_refs(a, terms);
            check_refs(b, terms);
        }
        Expr::Not(a) => check_refs(a, terms),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse(&text, kinds()) {
        Ok(c) => {
            check_refs(&c.expr, c.terms.len());
            for t in &c.terms {
                assert_eq!(t.func == Func::Gauge, t.window.is_zero(), "{t:?}");
                assert!(text.contains(t.text.as_str()), "{t:?}");
            }
            let none = vec![None; c.terms.len()];
            let _ = c.expr.eval(&none);
            let some: Vec<Option<f64>> = (0..c.terms.len()).map(|i| Some(i as f64 - 1.5)).collect();
            let _ = c.expr.eval(&some);
        }
        Err(e) => assert!(e.position <= text.len(), "{e} for {} bytes", text.len()),
    }
});
