//! The alert condition language: parses `rate(auth.failed, 5m) > 50 or queue.count > 1000`
//! into a [`Condition`] (a boolean tree over comparisons of metric terms and numbers).
//!
//! This is a pure parser: no I/O, no clock. Metric names are checked against a
//! [`MetricKinds`] (the catalogue's metrics, the event-type counters and livetap's own), so a
//! typo or a function applied to the wrong kind of metric is refused with the byte position
//! and the reason, as the live query parser refuses a bad query.
//!
//! Grammar (precedence `not` > `and` > `or`; keywords are case-insensitive):
//!
//! ```text
//! or      = and { "or" and }
//! and     = not { "and" not }
//! not     = "not" not | "(" or ")" | compare
//! compare = operand ( ">" | ">=" | "<" | "<=" | "==" | "!=" ) operand
//! operand = number [unit] | gauge-name
//!         | "rate" "(" counter-name "," duration ")"
//!         | ( "p50" | "p90" | "p95" | "p99" | "p999" | "avg" | "count" ) "(" histogram-name "," duration ")"
//! ```
//!
//! Units: durations `ms`, `s`, `m`, `h`, `d` and sizes `B`, `KB`, `MB`, `GB` (powers of 1000)
//! and `KiB`, `MiB`, `GiB` (powers of 1024). A number with a unit compared with a metric is
//! converted to that metric's unit (`p99(delivery.total-time, 10m) > 60s` compares with 60000,
//! since the histogram counts milliseconds); a unit that does not fit the metric's is refused.

use crate::metrics::Kind;
use std::fmt;
use std::time::Duration;

/// The longest condition accepted, in bytes.
pub const MAX_CONDITION_BYTES: usize = 4096;
/// The deepest nesting of `not` and parentheses accepted (the parser recurses once per level).
pub const MAX_DEPTH: usize = 64;
/// The most metric terms in one condition.
pub const MAX_TERMS: usize = 64;

/// Why a condition was refused: the byte offset in the condition and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {position}: {reason}")]
pub struct ExprError {
    /// Byte offset within the condition.
    pub position: usize,
    /// What is wrong there.
    pub reason: String,
}

fn err<T>(position: usize, reason: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError { position, reason: reason.into() })
}

/// What the parser needs to know about metric names: the kind of a name and its unit.
pub trait MetricKinds {
    /// The kind and unit of `name`, or `None` when no such metric exists.
    fn kind_of(&self, name: &str) -> Option<(Kind, Option<&str>)>;
}

/// What a term computes from the samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Func {
    /// A gauge's latest value.
    Gauge,
    /// A counter's increase over the window, per second.
    Rate,
    /// A histogram's quantile (0..1) over the observations made in the window.
    Quantile(f64),
    /// The mean of a histogram's observations made in the window.
    Avg,
    /// How many observations a histogram got in the window.
    Count,
}

/// One metric term of a condition, such as `rate(auth.failed, 5m)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// What is computed.
    pub func: Func,
    /// The metric's dotted name.
    pub metric: String,
    /// The window (zero for a gauge).
    pub window: Duration,
    /// The term as written in the condition, for the notification and the API.
    pub text: String,
}

/// A side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    /// A constant, already in the unit of the metric it is compared with.
    Number(f64),
    /// The term with this index in [`Condition::terms`].
    Term(usize),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    /// Applies the operator.
    pub fn apply(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// The boolean tree of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A comparison.
    Cmp(Operand, CmpOp, Operand),
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// Either holds.
    Or(Box<Expr>, Box<Expr>),
    /// Does not hold.
    Not(Box<Expr>),
}

impl Expr {
    /// Evaluates the tree with the terms' current values (`None`: no data yet, such as a gauge
    /// nobody set or a histogram without observations in the window). A comparison with a
    /// term that has no data is false.
    pub fn eval(&self, values: &[Option<f64>]) -> bool {
        let v = |o: &Operand| match *o {
            Operand::Number(n) => Some(n),
            Operand::Term(i) => values.get(i).copied().flatten(),
        };
        match self {
            Expr::Cmp(a, op, b) => match (v(a), v(b)) {
                (Some(a), Some(b)) => op.apply(a, b),
                _ => false,
            },
            Expr::And(a, b) => a.eval(values) && b.eval(values),
            Expr::Or(a, b) => a.eval(values) || b.eval(values),
            Expr::Not(a) => !a.eval(values),
        }
    }
}

/// A parsed condition: the tree and the terms it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The boolean tree.
    pub expr: Expr,
    /// The distinct metric terms, in order of first appearance.
    pub terms: Vec<Term>,
}

impl Condition {
    /// The longest window any term needs.
    pub fn longest_window(&self) -> Duration {
        self.terms.iter().map(|t| t.window).max().unwrap_or_default()
    }
}

/// Parses `text` against the metric names of `kinds`.
pub fn parse(text: &str, kinds: &dyn MetricKinds) -> Result<Condition, ExprError> {
    if text.len() > MAX_CONDITION_BYTES {
        return err(MAX_CONDITION_BYTES, format!("a condition is at most {MAX_CONDITION_BYTES} bytes"));
    }
    let tokens = lex(text)?;
    let mut p = Parser { text, tokens, at: 0, kinds, terms: Vec::new() };
    if p.tokens.len() == 1 {
        return err(0, "empty condition: expected a comparison such as `queue.count > 1000`");
    }
    let expr = p.or(0)?;
    let t = p.peek();
    if t.tok != Tok::End {
        return err(t.pos, format!("expected `and`, `or` or the end, found {}", t.tok));
    }
    Ok(Condition { expr, terms: p.terms })
}

/// A unit a number may carry.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    /// Seconds times the factor.
    Time(f64),
    /// Bytes times the factor.
    Size(f64),
}

fn unit(s: &str) -> Option<Unit> {
    Some(match s {
        "ms" => Unit::Time(0.001),
        "s" => Unit::Time(1.0),
        "m" => Unit::Time(60.0),
        "h" => Unit::Time(3600.0),
        "d" => Unit::Time(86_400.0),
        "B" | "b" => Unit::Size(1.0),
        "KB" | "kB" | "kb" => Unit::Size(1e3),
        "MB" | "mb" => Unit::Size(1e6),
        "GB" | "gb" => Unit::Size(1e9),
        "KiB" => Unit::Size(1024.0),
        "MiB" => Unit::Size(1024.0 * 1024.0),
        "GiB" => Unit::Size(1024.0 * 1024.0 * 1024.0),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A number, its unit and the unit's text.
    Num(f64, Option<Unit>),
    Ident(String),
    LParen,
    RParen,
    Comma,
    Cmp(CmpOp),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(..) => f.write_str("a number"),
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Cmp(_) => f.write_str("a comparison operator"),
            Tok::End => f.write_str("the end"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    end: usize,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

fn lex(text: &str) -> Result<Vec<Token>, ExprError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b'>' | b'<' | b'=' | b'!' => {
                let eq = b.get(i + 1) == Some(&b'=');
                let op = match (c, eq) {
                    (b'>', true) => CmpOp::Ge,
                    (b'>', false) => CmpOp::Gt,
                    (b'<', true) => CmpOp::Le,
                    (b'<', false) => CmpOp::Lt,
                    (b'=', true) => CmpOp::Eq,
                    (b'!', true) => CmpOp::Ne,
                    (b'=', false) => return err(i, "`=` is not an operator: write `==`"),
                    _ => return err(i, "`!` is not an operator: write `!=` or `not`"),
                };
                i += if eq { 2 } else { 1 };
                Tok::Cmp(op)
            }
            b'0'..=b'9' | b'-' | b'+' => {
                if matches!(c, b'-' | b'+') {
                    i += 1;
                }
                let digits = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                if i == digits {
                    return err(start, "expected a number after the sign");
                }
                let n: f64 = match text[start..i].parse() {
                    Ok(n) => n,
                    Err(_) => return err(start, format!("`{}` is not a number", &text[start..i])),
                };
                let u_at = i;
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                if i < b.len() && is_name_byte(b[i]) {
                    return err(
                        start,
                        "a number is digits, an optional `.` and decimals, then an optional unit",
                    );
                }
                let u = if u_at == i {
                    None
                } else {
                    match unit(&text[u_at..i]) {
                        Some(u) => Some(u),
                        None => {
                            return err(
                                u_at,
                                format!(
                                    "unknown unit `{}`: use ms, s, m, h, d (times) or B, KB, MB, GB, KiB, \
                                     MiB, GiB (sizes)",
                                    &text[u_at..i]
                                ),
                            )
                        }
                    }
                };
                Tok::Num(n, u)
            }
            c if is_name_byte(c) => {
                while i < b.len() && is_name_byte(b[i]) {
                    i += 1;
                }
                Tok::Ident(text[start..i].to_string())
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return err(i, format!("unexpected character `{}`", ch.escape_default()));
            }
        };
        out.push(Token { tok, pos: start, end: i });
    }
    out.push(Token { tok: Tok::End, pos: text.len(), end: text.len() });
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    at: usize,
    kinds: &'a dyn MetricKinds,
    terms: Vec<Term>,
}

/// A parsed operand before units are settled: a number with its unit, or a term with the
/// unit of its metric.
enum Side {
    Num(f64, Option<Unit>, usize),
    Term(usize, Option<String>),
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        // The token list always ends with `End`, and `at` never passes it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        t
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s.eq_ignore_ascii_case(word))
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.and(depth)?;
        while self.keyword("or") {
            self.next();
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.not(depth)?;
        while self.keyword("and") {
            self.next();
            let right = self.not(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self, depth: usize) -> Result<Expr, ExprError> {
        if depth >= MAX_DEPTH {
            return err(self.peek().pos, format!("nested more than {MAX_DEPTH} levels deep"));
        }
        if self.keyword("not") {
            self.next();
            return Ok(Expr::Not(Box::new(self.not(depth + 1)?)));
        }
        if self.peek().tok == Tok::LParen {
            self.next();
            let e = self.or(depth + 1)?;
            let t = self.next();
            if t.tok != Tok::RParen {
                return err(t.pos, format!("expected `)`, found {}", t.tok));
            }
            return Ok(e);
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Expr, ExprError> {
        let left = self.operand()?;
        let t = self.next();
        let Tok::Cmp(op) = t.tok else {
            return err(
                t.pos,
                format!("expected a comparison (`>`, `>=`, `<`, `<=`, `==`, `!=`), found {}", t.tok),
            );
        };
        let right = self.operand()?;
        let (a, b) = self.settle_units(left, right)?;
        Ok(Expr::Cmp(a, op, b))
    }

    /// Converts a number with a unit into the unit of the metric on the other side.
    fn settle_units(&self, left: Side, right: Side) -> Result<(Operand, Operand), ExprError> {
        let unit_of = |s: &Side| match s {
            Side::Term(_, u) => u.clone(),
            Side::Num(..) => None,
        };
        let (lu, ru) = (unit_of(&right), unit_of(&left));
        Ok((self.settle(left, lu.as_deref())?, self.settle(right, ru.as_deref())?))
    }

    fn settle(&self, side: Side, other_unit: Option<&str>) -> Result<Operand, ExprError> {
        match side {
            Side::Term(i, _) => Ok(Operand::Term(i)),
            Side::Num(n, None, _) => Ok(Operand::Number(n)),
            Side::Num(n, Some(u), pos) => {
                let scale = match (u, other_unit) {
                    (Unit::Time(f), Some("milliseconds")) => f * 1000.0,
                    (Unit::Time(f), Some("seconds")) => f,
                    (Unit::Size(f), Some("bytes")) => f,
                    // A number compared with a number (or with a metric of no unit) is taken in
                    // the unit's base: seconds or bytes.
                    (Unit::Time(f) | Unit::Size(f), None) => f,
                    (Unit::Time(_), Some(other)) => {
                        return err(pos, format!("a duration compared with a metric counted in {other}"))
                    }
                    (Unit::Size(_), Some(other)) => {
                        return err(pos, format!("a size compared with a metric counted in {other}"))
                    }
                };
                Ok(Operand::Number(n * scale))
            }
        }
    }

    fn operand(&mut self) -> Result<Side, ExprError> {
        let t = self.next();
        match t.tok {
            Tok::Num(n, u) => Ok(Side::Num(n, u, t.pos)),
            Tok::Ident(name) => {
                if self.peek().tok == Tok::LParen {
                    self.call(&name, t.pos)
                } else {
                    self.bare(&name, t.pos, t.end)
                }
            }
            other => err(
                t.pos,
                format!("expected a metric, a function such as `rate(...)` or a number, found {other}"),
            ),
        }
    }

    fn bare(&mut self, name: &str, pos: usize, end: usize) -> Result<Side, ExprError> {
        if ["and", "or", "not"].iter().any(|k| name.eq_ignore_ascii_case(k)) {
            return err(pos, format!("expected a metric or a number, found the keyword `{name}`"));
        }
        match self.kinds.kind_of(name) {
            None => err(pos, format!("unknown metric `{name}`")),
            Some((Kind::Gauge, unit)) => {
                let unit = unit.map(str::to_string);
                let i = self.term(Func::Gauge, name, Duration::ZERO, pos, end)?;
                Ok(Side::Term(i, unit))
            }
            Some((Kind::Counter, _)) => err(
                pos,
                format!("`{name}` is a counter: compare its rate over a window, such as `rate({name}, 5m)`"),
            ),
            Some((Kind::Histogram, _)) => err(
                pos,
                format!("`{name}` is a histogram: compare a quantile or the mean over a window, such as `p99({name}, 5m)`"),
            ),
        }
    }

    fn call(&mut self, func: &str, pos: usize) -> Result<Side, ExprError> {
        let f = match func.to_ascii_lowercase().as_str() {
            "rate" => Func::Rate,
            "p50" => Func::Quantile(0.5),
            "p90" => Func::Quantile(0.9),
            "p95" => Func::Quantile(0.95),
            "p99" => Func::Quantile(0.99),
            "p999" => Func::Quantile(0.999),
            "avg" => Func::Avg,
            "count" => Func::Count,
            _ => {
                return err(
                    pos,
                    format!("unknown function `{func}`: use rate, p50, p90, p95, p99, p999, avg or count"),
                )
            }
        };
        self.next(); // `(`
        let name_tok = self.next();
        let Tok::Ident(name) = name_tok.tok else {
            return err(name_tok.pos, format!("expected a metric name, found {}", name_tok.tok));
        };
        let Some((kind, unit)) = self.kinds.kind_of(&name) else {
            return err(name_tok.pos, format!("unknown metric `{name}`"));
        };
        let unit = unit.map(str::to_string);
        let want = if f == Func::Rate { Kind::Counter } else { Kind::Histogram };
        if kind != want {
            let hint = match kind {
                Kind::Gauge => format!("compare it directly, such as `{name} > 100`"),
                Kind::Counter => format!("use `rate({name}, 5m)`"),
                Kind::Histogram => format!("use a quantile, such as `p99({name}, 5m)`"),
            };
            return err(
                name_tok.pos,
                format!("`{func}` needs a {}, but `{name}` is a {}: {hint}", want.as_str(), kind.as_str()),
            );
        }
        let t = self.next();
        if t.tok != Tok::Comma {
            return err(t.pos, format!("expected `,` and a window such as `5m`, found {}", t.tok));
        }
        let w = self.next();
        let window = match w.tok {
            // At least a millisecond: a tinier window (`0.0000001m`, found by the fuzzer) would
            // round to a zero `Duration`, which means "no window" (a gauge) everywhere else.
            Tok::Num(n, Some(Unit::Time(f)))
                if (n * f).is_finite() && (0.001..=7.0 * 86_400.0).contains(&(n * f)) =>
            {
                Duration::from_secs_f64(n * f)
            }
            Tok::Num(_, Some(Unit::Time(_))) => return err(w.pos, "a window is at least 1ms and at most 7d"),
            Tok::Num(_, None) => return err(w.pos, "a window needs a unit, such as `30s` or `5m`"),
            other => return err(w.pos, format!("expected a window such as `5m`, found {other}")),
        };
        let close = self.next();
        if close.tok != Tok::RParen {
            return err(close.pos, format!("expected `)`, found {}", close.tok));
        }
        // A rate is per second whatever the counter counts; the other functions keep the
        // histogram's unit (`count` has none).
        let unit = match f {
            Func::Rate | Func::Count => None,
            _ => unit,
        };
        let i = self.term(f, &name, window, pos, close.end)?;
        Ok(Side::Term(i, unit))
    }

    fn term(
        &mut self,
        func: Func,
        metric: &str,
        window: Duration,
        pos: usize,
        end: usize,
    ) -> Result<usize, ExprError> {
        let text = self.text[pos..end].to_string();
        if let Some(i) =
            self.terms.iter().position(|t| t.func == func && t.metric == metric && t.window == window)
        {
            return Ok(i);
        }
        if self.terms.len() >= MAX_TERMS {
            return err(pos, format!("a condition reads at most {MAX_TERMS} metric terms"));
        }
        self.terms.push(Term { func, metric: metric.to_string(), window, text });
        Ok(self.terms.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kinds;
    impl MetricKinds for Kinds {
        fn kind_of(&self, name: &str) -> Option<(Kind, Option<&str>)> {
            match name {
                "auth.failed" | "auth.success" => Some((Kind::Counter, None)),
                "queue.count" => Some((Kind::Gauge, Some("messages"))),
                "server.memory" => Some((Kind::Gauge, Some("bytes"))),
                "delivery.total-time" => Some((Kind::Histogram, Some("milliseconds"))),
                "message.size" => Some((Kind::Histogram, Some("bytes"))),
                _ => None,
            }
        }
    }

    fn p(s: &str) -> Result<Condition, ExprError> {
        parse(s, &Kinds)
    }

    #[test]
    fn the_issue_example_parses() {
        let c = p("rate(auth.failed, 5m) > 50 or queue.count > 1000 or p99(delivery.total-time, 10m) > 60s")
            .unwrap();
        assert_eq!(c.terms.len(), 3);
        assert_eq!(c.terms[0].func, Func::Rate);
        assert_eq!(c.terms[0].window, Duration::from_secs(300));
        assert_eq!(c.terms[0].text, "rate(auth.failed, 5m)");
        assert_eq!(c.terms[1].func, Func::Gauge);
        assert_eq!(c.terms[2].func, Func::Quantile(0.99));
        assert_eq!(c.longest_window(), Duration::from_secs(600));
        // `or` is left-associative and 60s is converted to the histogram's milliseconds.
        let Expr::Or(left, right) = &c.expr else { panic!("{:?}", c.expr) };
        assert!(matches!(**left, Expr::Or(..)));
        assert_eq!(**right, Expr::Cmp(Operand::Term(2), CmpOp::Gt, Operand::Number(60_000.0)));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let c = p("queue.count > 1 or queue.count > 2 and not queue.count > 3").unwrap();
        let cmp = |n| Expr::Cmp(Operand::Term(0), CmpOp::Gt, Operand::Number(n));
        let want = Expr::Or(
            Box::new(cmp(1.0)),
            Box::new(Expr::And(Box::new(cmp(2.0)), Box::new(Expr::Not(Box::new(cmp(3.0)))))),
        );
        assert_eq!(c.expr, want);
        let c = p("(queue.count > 1 or queue.count > 2) and queue.count > 3").unwrap();
        assert!(matches!(c.expr, Expr::And(ref a, _) if matches!(**a, Expr::Or(..))));
        // Keywords are case-insensitive.
        assert!(p("queue.count > 1 OR NOT queue.count < 2 AND queue.count != 5").is_ok());
    }

    #[test]
    fn units_convert_to_the_metric_unit() {
        let num = |s: &str| match p(s).unwrap().expr {
            Expr::Cmp(_, _, Operand::Number(n)) => n,
            e => panic!("{e:?}"),
        };
        assert_eq!(num("p50(delivery.total-time, 1m) >= 500ms"), 500.0);
        assert_eq!(num("p50(delivery.total-time, 1m) >= 2h"), 7_200_000.0);
        assert_eq!(num("avg(message.size, 1h) > 10MB"), 10_000_000.0);
        assert_eq!(num("server.memory > 1GiB"), 1024.0 * 1024.0 * 1024.0);
        assert_eq!(num("rate(auth.failed, 30s) > 0.5"), 0.5);
        assert_eq!(p("rate(auth.failed, 500ms) > 1").unwrap().terms[0].window, Duration::from_millis(500));
        // A window that would round to nothing is refused at its position (a fuzzer's find).
        let e = p("rate(auth.failed,0.0000000000000000001m) > 1").unwrap_err();
        assert_eq!(e.position, 17, "{e}");
        assert!(e.to_string().contains("at least 1ms"), "{e}");
        assert!(p("rate(auth.failed, 0.5ms) > 1").is_err());
        assert_eq!(p("rate(auth.failed, 1ms) > 1").unwrap().terms[0].window, Duration::from_millis(1));
        assert_eq!(p("count(message.size, 1d) > 1").unwrap().terms[0].window, Duration::from_secs(86_400));
        // A number on the left converts too.
        assert!(matches!(p("60s < p99(delivery.total-time, 5m)").unwrap().expr,
            Expr::Cmp(Operand::Number(n), CmpOp::Lt, Operand::Term(0)) if n == 60_000.0));
    }

    #[test]
    fn repeated_terms_are_read_once() {
        let c = p("rate(auth.failed, 1m) > 1 and rate(auth.failed, 1m) < 10 and rate(auth.failed, 2m) > 0")
            .unwrap();
        assert_eq!(c.terms.len(), 2);
    }

    #[test]
    fn errors_carry_the_position_and_the_reason() {
        let e = |s: &str| p(s).unwrap_err();
        assert_eq!(e("rate(auth.faild, 5m) > 1").position, 5);
        assert!(e("rate(auth.faild, 5m) > 1").reason.contains("unknown metric `auth.faild`"));
        let g = e("rate(queue.count, 5m) > 1");
        assert_eq!(g.position, 5);
        assert!(g.reason.contains("needs a counter") && g.reason.contains("is a gauge"), "{g}");
        assert_eq!(e("p99(auth.failed, 5m) > 1").position, 4);
        assert!(e("auth.failed > 1").reason.contains("rate(auth.failed, 5m)"));
        assert!(e("delivery.total-time > 1").reason.contains("histogram"));
        assert_eq!(e("queue.count > 1 and").position, 19);
        assert_eq!(e("queue.count 1").position, 12);
        assert_eq!(e("queue.count = 1").position, 12);
        assert_eq!(e("rate(auth.failed, 5) > 1").position, 18);
        assert!(e("rate(auth.failed, 5) > 1").reason.contains("unit"));
        assert_eq!(e("rate(auth.failed 5m) > 1").position, 17);
        assert_eq!(e("queue.count > 5 parsecs").position, 16);
        assert_eq!(e("queue.count > 5xyz").position, 15);
        assert_eq!(e("p99(delivery.total-time, 5m) > 5MB").position, 31);
        assert_eq!(e("median(delivery.total-time, 5m) > 5").position, 0);
        assert_eq!(e("(queue.count > 1").position, 16);
        assert_eq!(e("queue.count > 1)").position, 15);
        assert_eq!(e("   ").position, 0);
        assert_eq!(e("queue.count > 1 € 2").position, 16);
        assert_eq!(e("queue.count > 1 and or queue.count > 2").position, 20);
        let deep = format!("{}queue.count > 1", "not ".repeat(MAX_DEPTH + 1));
        assert!(e(&deep).reason.contains("nested"));
        let long = "x".repeat(MAX_CONDITION_BYTES + 1);
        assert!(e(&long).reason.contains("at most"));
    }

    #[test]
    fn evaluation_follows_the_tree_and_missing_data_is_false() {
        let c = p("rate(auth.failed, 1m) > 5 and not queue.count >= 10").unwrap();
        assert!(c.expr.eval(&[Some(6.0), Some(9.0)]));
        assert!(!c.expr.eval(&[Some(6.0), Some(10.0)]));
        assert!(!c.expr.eval(&[Some(5.0), Some(0.0)]));
        assert!(!c.expr.eval(&[None, Some(0.0)]));
        // No gauge value: the comparison is false, so its negation holds.
        assert!(c.expr.eval(&[Some(6.0), None]));
    }
}
