//! The live-stream query language: its syntax tree ([`ast`]) and its parser ([`parse`]), and
//! the strict query-string decoder ([`urlenc`]) every endpoint reads its parameters with.
//!
//! A request's query string (the URL pair form, possibly with a `q=` expression) becomes one
//! [`ast::Expr`]; [`ast::Expr::eval`] is its reference meaning, which the compiled index in
//! `matcher` must reproduce on every event (property tests and a fuzz target check it). The
//! grammar is in [`parse`]'s documentation and in the README. A subscription's tree is widened
//! once by [`generations`], so that a type Stalwart renamed in v0.16 is found under either
//! name. Nothing here does I/O or async, so parsing is unit-testable, benchable and fuzzable
//! directly.

pub mod ast;
pub mod generations;
pub mod parse;
pub mod plan;
pub mod suggest;
pub mod urlenc;

pub use ast::Expr;
pub use parse::{parse_expr, parse_live_request, parse_pairs, Limits, ParseError, ParsedQuery};
pub use urlenc::{pairs, Pairs};

/// Guarded conjuncts one subscriber's query may combine; the matcher keeps one bit per guard,
/// and further conjuncts are still honoured, by evaluation after the guards.
pub const MAX_CLAUSES: usize = 32;
