//! The query language's syntax tree ([`Expr`]), its naive reference evaluator and its printer.
//!
//! An [`Expr`] is what [`super::parse`] produces from both the URL pair form and the `q=`
//! expression form. [`Expr::eval`] is the reference meaning: any compiled index must agree with
//! it on every event. `Display` prints the canonical `q=` form, such that parsing the printed
//! text gives back the same tree (for trees the parser can produce: `And`/`Or` with at least two
//! children, `True` only at the top, key globs that are not a lone `*`).
//!
//! Key terms are existential over multi-valued keys (a `to` list matches when any element does);
//! negation is `Not`, so `NOT domain:example.org` holds when the key is absent or no value
//! equals, like a Prometheus `!=` matcher.

pub use super::generations::RenamedNames;
use crate::event::keys::{KeyId, KeyKind};
use crate::event::{Event, Level};
use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A boolean filter expression over one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// Accepts every event (the empty query).
    True,
    /// Every child holds.
    And(Vec<Expr>),
    /// At least one child holds.
    Or(Vec<Expr>),
    /// The child does not hold.
    Not(Box<Expr>),
    /// One field predicate.
    Term(Term),
}

impl Expr {
    /// A conjunction, simplified: no item is [`Expr::True`], one item is itself.
    pub fn and(mut items: Vec<Expr>) -> Expr {
        if items.len() == 1 {
            return items.swap_remove(0);
        }
        if items.is_empty() {
            return Expr::True;
        }
        Expr::And(items)
    }

    /// A disjunction, simplified: one item is itself, no item is `NOT ()` (never true).
    pub fn or(mut items: Vec<Expr>) -> Expr {
        if items.len() == 1 {
            return items.swap_remove(0);
        }
        if items.is_empty() {
            return Expr::negate(Expr::True);
        }
        Expr::Or(items)
    }

    /// The negation of `e`.
    pub fn negate(e: Expr) -> Expr {
        Expr::Not(Box::new(e))
    }

    /// The reference meaning of the expression, evaluated naively against one event.
    pub fn eval(&self, ev: &Event) -> bool {
        match self {
            Expr::True => true,
            Expr::And(xs) => xs.iter().all(|x| x.eval(ev)),
            Expr::Or(xs) => xs.iter().any(|x| x.eval(ev)),
            Expr::Not(x) => !x.eval(ev),
            Expr::Term(t) => t.eval(ev),
        }
    }

    /// True for the query that accepts everything.
    pub fn is_true(&self) -> bool {
        matches!(self, Expr::True)
    }

    /// Number of terms (leaves) in the expression.
    pub fn term_count(&self) -> usize {
        match self {
            Expr::True => 0,
            Expr::And(xs) | Expr::Or(xs) => xs.iter().map(Expr::term_count).sum(),
            Expr::Not(x) => x.term_count(),
            Expr::Term(_) => 1,
        }
    }
}

/// One predicate on one field of an event.
///
/// Valid combinations (the only ones the parser builds; others evaluate to false):
/// a key with [`Pred::Eq`], [`Pred::Glob`], [`Pred::Cidr`] (IP keys), [`Pred::Cmp`] or
/// [`Pred::Present`]; `event` with `Eq` or `Glob` (and [`Pred::Renamed`], which only the
/// widening across catalogue generations builds); `level` with [`Pred::Level`]; `text` with
/// [`Pred::Contains`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    /// What the predicate looks at.
    pub field: Field,
    /// What must hold of it.
    pub pred: Pred,
}

/// The part of an event a [`Term`] looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The values of one key.
    Key {
        /// The key.
        id: KeyId,
        /// Its query parameter name (kebab-case), for printing and messages.
        param: Arc<str>,
        /// How its values compare.
        kind: KeyKind,
    },
    /// The event type (`smtp.rcpt-to`), compared case-insensitively.
    Event,
    /// The event level.
    Level,
    /// The lowercase search text (`filter=`): the type and every string-like value.
    Text,
}

/// What a [`Term`] requires of its field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pred {
    /// Some value equals this canonical value (for `event`: the lowercase type).
    Eq(String),
    /// Some value matches this glob (already lowercase for case-insensitive fields).
    Glob(Glob),
    /// Some value is an IP address inside this network.
    Cidr(Cidr),
    /// Some value is a number that compares to the bound this way (`value OP bound`).
    Cmp(CmpOp, Number),
    /// The key has at least one value.
    Present,
    /// The event level compares to this level this way (`level OP bound`).
    Level(CmpOp, Level),
    /// The search text contains this lowercase needle.
    Contains(String),
    /// The event type is one of these names of types Stalwart renamed between catalogue
    /// generations (compared case-insensitively, as `Eq`). The parser never builds it:
    /// `super::generations` does, when it widens a subscription's query, because a set of
    /// catalogue names is one small term where an `OR` of exact names would be one per name.
    Renamed(RenamedNames),
}

/// An ordering comparison, read as `value OP bound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// True when `value.cmp(bound)` satisfies the operator.
    pub fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
        }
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Term {
    /// The reference meaning of the term on one event.
    pub fn eval(&self, ev: &Event) -> bool {
        match (&self.field, &self.pred) {
            (Field::Key { id, .. }, pred) => {
                let mut values = ev.values_of(*id);
                match pred {
                    Pred::Eq(w) => values.any(|v| v == w),
                    Pred::Glob(g) => values.any(|v| g.matches(v)),
                    Pred::Cidr(c) => values.any(|v| c.contains_str(v)),
                    Pred::Cmp(op, n) => values.any(|v| n.compare_value(v).is_some_and(|o| op.holds(o))),
                    Pred::Present => values.next().is_some(),
                    Pred::Level(..) | Pred::Contains(_) | Pred::Renamed(_) => false,
                }
            }
            (Field::Event, Pred::Eq(w)) => fold(&ev.kind).eq(w.chars()),
            (Field::Event, Pred::Glob(g)) => g.matches_chars(fold(&ev.kind)),
            (Field::Event, Pred::Renamed(names)) => names.iter().any(|n| fold(&ev.kind).eq(n.chars())),
            (Field::Level, Pred::Level(op, bound)) => op.holds(ev.level.cmp(bound)),
            (Field::Text, Pred::Contains(needle)) => ev.search_text().contains(needle.as_str()),
            _ => false,
        }
    }
}

/// The lowercase characters of `s`, without allocating.
fn fold(s: &str) -> impl Iterator<Item = char> + Clone + '_ {
    s.chars().flat_map(char::to_lowercase)
}

/// One piece of a [`Glob`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GlobPart {
    /// Literal text (never empty in a [`Glob`]).
    Lit(String),
    /// `*`: any run of characters, possibly empty.
    Star,
    /// `?`: exactly one character.
    One,
}

/// A glob pattern with `*` and `?`, normalised: adjacent literals merged, no empty literal,
/// no two `*` in a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    parts: Vec<GlobPart>,
}

/// The next pattern token at a cursor `(part, byte offset in a literal)`.
enum Tok {
    End,
    Star((usize, usize)),
    One((usize, usize)),
    Char(char, (usize, usize)),
}

impl Glob {
    /// Builds a normalised glob from its pieces.
    pub fn new(parts: impl IntoIterator<Item = GlobPart>) -> Glob {
        let mut out: Vec<GlobPart> = Vec::new();
        for p in parts {
            match (out.last_mut(), p) {
                (_, GlobPart::Lit(s)) if s.is_empty() => {}
                (Some(GlobPart::Lit(prev)), GlobPart::Lit(s)) => prev.push_str(&s),
                (Some(GlobPart::Star), GlobPart::Star) => {}
                (_, p) => out.push(p),
            }
        }
        Glob { parts: out }
    }

    /// The pieces, in order.
    pub fn parts(&self) -> &[GlobPart] {
        &self.parts
    }

    /// True when the pattern has a `*` or `?` (otherwise it is an exact value).
    pub fn has_wildcard(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, GlobPart::Lit(_)))
    }

    /// Matches `s` exactly as given (case-sensitively).
    pub fn matches(&self, s: &str) -> bool {
        self.matches_chars(s.chars())
    }

    fn tok(&self, (part, off): (usize, usize)) -> Tok {
        match self.parts.get(part) {
            None => Tok::End,
            Some(GlobPart::Star) => Tok::Star((part + 1, 0)),
            Some(GlobPart::One) => Tok::One((part + 1, 0)),
            Some(GlobPart::Lit(s)) => match s[off..].chars().next() {
                None => self.tok((part + 1, 0)),
                Some(c) => {
                    let next = off + c.len_utf8();
                    Tok::Char(c, if next == s.len() { (part + 1, 0) } else { (part, next) })
                }
            },
        }
    }

    /// Matches a character sequence: the classic backtrack-to-the-last-star algorithm, in
    /// O(pattern × value) time at worst and without allocating.
    pub fn matches_chars<I: Iterator<Item = char> + Clone>(&self, mut v: I) -> bool {
        let mut p = (0, 0);
        let mut star: Option<((usize, usize), I)> = None;
        loop {
            let ok = match self.tok(p) {
                Tok::Star(next) => {
                    star = Some((next, v.clone()));
                    p = next;
                    continue;
                }
                Tok::One(next) => {
                    let ok = v.next().is_some();
                    p = next;
                    ok
                }
                Tok::Char(c, next) => {
                    let ok = v.next() == Some(c);
                    p = next;
                    ok
                }
                Tok::End => {
                    if v.clone().next().is_none() {
                        return true;
                    }
                    false
                }
            };
            if ok {
                continue;
            }
            match &mut star {
                Some((sp, sv)) => {
                    if sv.next().is_none() {
                        return false;
                    }
                    v = sv.clone();
                    p = *sp;
                }
                None => return false,
            }
        }
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                GlobPart::Star => f.write_str("*")?,
                GlobPart::One => f.write_str("?")?,
                GlobPart::Lit(s) => {
                    for c in s.chars() {
                        if !is_value_safe(c) {
                            f.write_str("\\")?;
                        }
                        fmt::Write::write_char(f, c)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// An IP network; IPv4-mapped IPv6 networks of prefix 96 or more are stored as IPv4, and host
/// bits are always zero, so equal networks compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cidr {
    /// An IPv4 network.
    V4 {
        /// Network address, host bits zero.
        net: u32,
        /// Prefix length, 0 to 32.
        len: u8,
    },
    /// An IPv6 network.
    V6 {
        /// Network address, host bits zero.
        net: u128,
        /// Prefix length, 0 to 128.
        len: u8,
    },
}

pub(crate) fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

pub(crate) fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Cidr {
    /// The network of `addr` with prefix `len`; `None` when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        match addr {
            IpAddr::V4(a) if len <= 32 => Some(Cidr::V4 { net: u32::from(a) & mask32(len), len }),
            IpAddr::V6(a) if len <= 128 => match a.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Cidr::new(IpAddr::V4(v4), len - 96),
                _ => Some(Cidr::V6 { net: u128::from(a) & mask128(len), len }),
            },
            _ => None,
        }
    }

    /// True when `ip` is inside the network (IPv4 addresses are also seen as IPv4-mapped IPv6).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (*self, ip) {
            (Cidr::V4 { net, len }, IpAddr::V4(a)) => u32::from(a) & mask32(len) == net,
            (Cidr::V6 { net, len }, IpAddr::V6(a)) => u128::from(a) & mask128(len) == net,
            (Cidr::V6 { net, len }, IpAddr::V4(a)) => u128::from(a.to_ipv6_mapped()) & mask128(len) == net,
            (Cidr::V4 { .. }, IpAddr::V6(_)) => false,
        }
    }

    /// True when `v` parses as an IP address inside the network.
    pub fn contains_str(&self, v: &str) -> bool {
        v.parse::<IpAddr>().is_ok_and(|ip| self.contains(ip))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4 { net, len } => write!(f, "{}/{len}", Ipv4Addr::from(net)),
            Cidr::V6 { net, len } => write!(f, "{}/{len}", Ipv6Addr::from(net)),
        }
    }
}

/// A decimal number (`-?digits(.digits)?`) kept as canonical text, compared exactly (no
/// floating point, so 64-bit queue ids compare correctly).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Number(String);

/// Splits a decimal into (negative, integer digits without leading zeros, fraction digits
/// without trailing zeros); zero is never negative.
fn split_decimal(s: &str) -> Option<(bool, &str, &str)> {
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !frac.map_or(true, digits) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.unwrap_or("").trim_end_matches('0');
    Some((neg && !(int.is_empty() && frac.is_empty()), int, frac))
}

fn cmp_decimal(a: (bool, &str, &str), b: (bool, &str, &str)) -> Ordering {
    let magnitude = |x: (bool, &str, &str), y: (bool, &str, &str)| {
        x.1.len().cmp(&y.1.len()).then_with(|| x.1.cmp(y.1)).then_with(|| x.2.cmp(y.2))
    };
    match (a.0, b.0) {
        (false, false) => magnitude(a, b),
        (true, true) => magnitude(b, a),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    }
}

impl Number {
    /// Parses `-?digits(.digits)?`; `None` for anything else (no exponent, no `+`, no spaces).
    pub fn parse(s: &str) -> Option<Number> {
        let (neg, int, frac) = split_decimal(s)?;
        let mut out = String::with_capacity(s.len());
        if neg {
            out.push('-');
        }
        out.push_str(if int.is_empty() { "0" } else { int });
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
        Some(Number(out))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Orders two numbers by value (the index keeps comparison bounds sorted this way).
    pub fn cmp_number(&self, other: &Number) -> Ordering {
        match (split_decimal(&self.0), split_decimal(&other.0)) {
            (Some(a), Some(b)) => cmp_decimal(a, b),
            // Canonical numbers always split; keep a total order for safety anyway.
            _ => self.0.cmp(&other.0),
        }
    }

    /// Compares an event value to this number (`value.cmp(self)`); `None` when the value is
    /// not a number.
    pub fn compare_value(&self, value: &str) -> Option<Ordering> {
        Some(self.compare_decimal(&Decimal::parse(value)?))
    }

    /// Compares an already split event value to this number (`value.cmp(self)`), so a value
    /// checked against many bounds is split once.
    pub fn compare_decimal(&self, value: &Decimal<'_>) -> Ordering {
        match split_decimal(&self.0) {
            Some(me) => cmp_decimal(value.0, me),
            // Canonical numbers always split; order the impossible case below everything.
            None => Ordering::Greater,
        }
    }
}

/// An event value seen as a decimal number, split once for comparison with many bounds.
#[derive(Debug, Clone, Copy)]
pub struct Decimal<'a>((bool, &'a str, &'a str));

impl<'a> Decimal<'a> {
    /// `None` when `value` is not `-?digits(.digits)?`.
    pub fn parse(value: &'a str) -> Option<Decimal<'a>> {
        split_decimal(value).map(Decimal)
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Characters printed as-is in a value; everything else is escaped or quoted.
fn is_value_safe(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | ':' | '+' | '%')
}

/// Characters printed as-is in a bare text word.
fn is_word_safe(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | '+' | '%')
}

/// Writes `s` so that it reads back as exactly that literal: bare when it is plain, quoted
/// otherwise.
fn write_literal(f: &mut fmt::Formatter<'_>, s: &str, bare: bool) -> fmt::Result {
    if bare {
        return f.write_str(s);
    }
    f.write_str("\"")?;
    for c in s.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        fmt::Write::write_char(f, c)?;
    }
    f.write_str("\"")
}

/// True when `w` is one of the keywords `AND`, `OR`, `NOT` (any case).
fn is_keyword(w: &str) -> bool {
    ["and", "or", "not"].iter().any(|k| w.eq_ignore_ascii_case(k))
}

fn field_name(field: &Field) -> &str {
    match field {
        Field::Key { param, .. } => param,
        Field::Event => "event",
        Field::Level => "level",
        Field::Text => "filter",
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = field_name(&self.field);
        match (&self.field, &self.pred) {
            (Field::Text, Pred::Contains(s)) => {
                let bare = !s.is_empty() && s.chars().all(is_word_safe) && !is_keyword(s);
                write_literal(f, s, bare)
            }
            (Field::Level, Pred::Level(CmpOp::Ge, l)) => write!(f, "level:{}", l.as_str()),
            (_, Pred::Level(op, l)) => write!(f, "{name}{op}{}", l.as_str()),
            (_, Pred::Cmp(op, n)) => write!(f, "{name}{op}{n}"),
            (_, Pred::Present) => write!(f, "{name}:*"),
            (_, Pred::Cidr(c)) => write!(f, "{name}:{c}"),
            (_, Pred::Glob(g)) => write!(f, "{name}:{g}"),
            // Printed as the OR of exact names it stands for, which parses back to the same
            // meaning (and widens back to this term).
            (_, Pred::Renamed(names)) => match names.len() {
                0 => f.write_str("NOT ()"),
                1 => names.iter().try_for_each(|n| write!(f, "{name}:{n}")),
                _ => {
                    f.write_str("(")?;
                    for (i, n) in names.iter().enumerate() {
                        if i > 0 {
                            f.write_str(" OR ")?;
                        }
                        write!(f, "{name}:{n}")?;
                    }
                    f.write_str(")")
                }
            },
            (_, Pred::Eq(s) | Pred::Contains(s)) => {
                write!(f, "{name}:")?;
                write_literal(f, s, !s.is_empty() && s.chars().all(is_value_safe))
            }
        }
    }
}

fn write_expr(f: &mut fmt::Formatter<'_>, e: &Expr) -> fmt::Result {
    let group = |f: &mut fmt::Formatter<'_>, e: &Expr, paren: bool| {
        if paren {
            f.write_str("(")?;
            write_expr(f, e)?;
            f.write_str(")")
        } else {
            write_expr(f, e)
        }
    };
    match e {
        Expr::True => f.write_str("()"),
        Expr::And(xs) if xs.is_empty() => f.write_str("()"),
        Expr::Or(xs) if xs.is_empty() => f.write_str("NOT ()"),
        Expr::And(xs) => {
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    f.write_str(" AND ")?;
                }
                group(f, x, matches!(x, Expr::And(_) | Expr::Or(_)))?;
            }
            Ok(())
        }
        Expr::Or(xs) => {
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    f.write_str(" OR ")?;
                }
                group(f, x, matches!(x, Expr::Or(_)))?;
            }
            Ok(())
        }
        Expr::Not(x) => {
            f.write_str("NOT ")?;
            group(f, x, matches!(**x, Expr::And(_) | Expr::Or(_)))
        }
        Expr::Term(t) => write!(f, "{t}"),
    }
}

impl fmt::Display for Expr {
    /// The canonical `q=` form; [`Expr::True`] at the top prints as the empty string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::True => Ok(()),
            e => write_expr(f, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, KeyRegistry};

    fn setup() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    use crate::event::testing::event;

    fn key(k: &KeyRegistry, param: &str) -> Field {
        let (id, info) = k.lookup_param(param).unwrap();
        Field::Key { id, param: info.param, kind: info.kind }
    }

    fn term(field: Field, pred: Pred) -> Expr {
        Expr::Term(Term { field, pred })
    }

    fn glob(s: &str) -> Glob {
        Glob::new(s.chars().map(|c| match c {
            '*' => GlobPart::Star,
            '?' => GlobPart::One,
            c => GlobPart::Lit(c.to_string()),
        }))
    }

    #[test]
    fn glob_normalises_and_matches() {
        let g = glob("a**b?c");
        assert_eq!(
            g.parts(),
            &[
                GlobPart::Lit("a".into()),
                GlobPart::Star,
                GlobPart::Lit("b".into()),
                GlobPart::One,
                GlobPart::Lit("c".into())
            ]
        );
        assert!(g.has_wildcard());
        assert!(!glob("abc").has_wildcard());
        let cases: &[(&str, &str, bool)] = &[
            ("*.example.org", "mx.example.org", true),
            ("*.example.org", "example.org", false),
            ("*@bank.*", "joe@bank.com", true),
            ("*@bank.*", "joe@bank", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "aéc", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", true),
            ("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
            ("smtp.*", "smtp.rcpt-to", true),
            ("*-end", "smtp.connection-end", true),
            ("*x", "xyx", true),
            ("x*", "yx", false),
        ];
        for &(p, v, want) in cases {
            assert_eq!(glob(p).matches(v), want, "{p} vs {v}");
        }
    }

    #[test]
    fn cidr_containment() {
        let c = |s: &str, len| Cidr::new(s.parse().unwrap(), len).unwrap();
        assert_eq!(c("10.1.2.3", 8), Cidr::V4 { net: 10 << 24, len: 8 });
        assert_eq!(c("::ffff:10.1.2.3", 104), c("10.0.0.0", 8));
        assert!(Cidr::new("10.0.0.0".parse().unwrap(), 33).is_none());
        assert!(Cidr::new("::".parse().unwrap(), 129).is_none());
        assert!(c("10.0.0.0", 8).contains_str("10.255.0.1"));
        assert!(!c("10.0.0.0", 8).contains_str("11.0.0.1"));
        assert!(c("10.0.0.0", 8).contains_str("::ffff:10.0.0.1"));
        assert!(c("0.0.0.0", 0).contains_str("1.2.3.4"));
        assert!(!c("0.0.0.0", 0).contains_str("2001:db8::1"));
        assert!(c("2001:db8::", 32).contains_str("2001:db8:ffff::1"));
        assert!(!c("2001:db8::", 32).contains_str("2001:db9::1"));
        assert!(c("::", 0).contains_str("10.0.0.1"));
        assert!(c("10.0.0.5", 32).contains_str("10.0.0.5"));
        assert!(!c("10.0.0.5", 32).contains_str("10.0.0.6"));
        assert!(!c("10.0.0.0", 8).contains_str("not-an-ip"));
        assert_eq!(c("2001:db8::1", 32).to_string(), "2001:db8::/32");
        assert_eq!(c("10.9.9.9", 16).to_string(), "10.9.0.0/16");
    }

    #[test]
    fn numbers_compare_exactly() {
        let n = |s: &str| Number::parse(s).unwrap();
        assert_eq!(n("007").as_str(), "7");
        assert_eq!(n("-0.0").as_str(), "0");
        assert_eq!(n("1.500").as_str(), "1.5");
        assert_eq!(n("-02.50").as_str(), "-2.5");
        for bad in ["", "-", "1.", ".5", "1e3", "+1", " 1", "inf", "NaN", "1.2.3"] {
            assert!(Number::parse(bad).is_none(), "{bad}");
        }
        let cmp = |v: &str, b: &str| n(b).compare_value(v);
        assert_eq!(cmp("1000001", "1000000"), Some(Ordering::Greater));
        assert_eq!(cmp("999", "1000"), Some(Ordering::Less));
        assert_eq!(cmp("1000.0", "1000"), Some(Ordering::Equal));
        assert_eq!(cmp("-5", "-4"), Some(Ordering::Less));
        assert_eq!(cmp("-5", "4"), Some(Ordering::Less));
        assert_eq!(cmp("0.51", "0.5"), Some(Ordering::Greater));
        assert_eq!(cmp("18446744073709551615", "18446744073709551614"), Some(Ordering::Greater));
        assert_eq!(cmp("abc", "1"), None);
    }

    #[test]
    fn eval_every_predicate() {
        let (c, k) = setup();
        let ev = event(
            &c,
            &k,
            r#"{"type":"SMTP.Rcpt-To","level":"warn","data":{"to":["x@Example.org","y@bank.com"],
                "remoteIp":"10.0.0.5","size":1500000,"code":"250","reason":"Mailbox Full"}}"#,
        );
        let ip = key(&k, "remote-ip");
        let t = |f: &Field, p: Pred| term(f.clone(), p).eval(&ev);
        assert!(t(&key(&k, "to"), Pred::Eq("x@example.org".into())));
        assert!(!t(&key(&k, "to"), Pred::Eq("z@example.org".into())));
        assert!(t(&key(&k, "to"), Pred::Glob(glob("*@bank.*"))));
        assert!(t(&key(&k, "reason"), Pred::Glob(glob("Mailbox *"))));
        assert!(!t(&key(&k, "reason"), Pred::Glob(glob("mailbox *"))), "String keys are case-sensitive");
        assert!(t(&ip, Pred::Cidr(Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap())));
        assert!(!t(&ip, Pred::Cidr(Cidr::new("192.168.0.0".parse().unwrap(), 16).unwrap())));
        let size = key(&k, "size");
        let num = |s: &str| Number::parse(s).unwrap();
        assert!(t(&size, Pred::Cmp(CmpOp::Gt, num("1000000"))));
        assert!(t(&size, Pred::Cmp(CmpOp::Ge, num("1500000"))));
        assert!(!t(&size, Pred::Cmp(CmpOp::Gt, num("1500000"))));
        assert!(t(&size, Pred::Cmp(CmpOp::Le, num("1500000"))));
        assert!(!t(&size, Pred::Cmp(CmpOp::Lt, num("1500000"))));
        assert!(t(&key(&k, "code"), Pred::Cmp(CmpOp::Lt, num("500"))), "numeric text compares as a number");
        assert!(!t(&key(&k, "reason"), Pred::Cmp(CmpOp::Lt, num("500"))));
        assert!(t(&size, Pred::Present));
        assert!(!t(&key(&k, "queue-id"), Pred::Present));
        assert!(
            term(key(&k, "queue-id"), Pred::Present).eval(&ev)
                != Expr::negate(term(key(&k, "queue-id"), Pred::Present)).eval(&ev)
        );
        assert!(t(&Field::Event, Pred::Eq("smtp.rcpt-to".into())), "event types are case-insensitive");
        assert!(t(&Field::Event, Pred::Glob(glob("smtp.*"))));
        assert!(!t(&Field::Event, Pred::Glob(glob("auth.*"))));
        assert!(t(&Field::Level, Pred::Level(CmpOp::Ge, Level::Warn)));
        assert!(t(&Field::Level, Pred::Level(CmpOp::Ge, Level::Info)));
        assert!(!t(&Field::Level, Pred::Level(CmpOp::Ge, Level::Error)));
        assert!(t(&Field::Level, Pred::Level(CmpOp::Lt, Level::Error)));
        assert!(t(&Field::Text, Pred::Contains("mailbox full".into())));
        assert!(t(&Field::Text, Pred::Contains("rcpt".into())));
        assert!(!t(&Field::Text, Pred::Contains("nothing".into())));
        // Invalid combinations are simply false.
        assert!(!t(&Field::Event, Pred::Present));
        assert!(!t(&size, Pred::Contains("1".into())));
        // Negation is Prometheus-like: absent or no value equals.
        let not = |f: &Field, v: &str| Expr::negate(term(f.clone(), Pred::Eq(v.into()))).eval(&ev);
        assert!(not(&key(&k, "domain"), "example.org"), "absent key");
        assert!(not(&key(&k, "to"), "z@example.org"));
        assert!(!not(&key(&k, "to"), "y@bank.com"), "one of the values equals");
        // Combinators.
        let yes = term(Field::Text, Pred::Contains("rcpt".into()));
        let no = term(Field::Text, Pred::Contains("zzz".into()));
        assert!(Expr::True.eval(&ev));
        assert!(Expr::And(vec![yes.clone(), yes.clone()]).eval(&ev));
        assert!(!Expr::And(vec![yes.clone(), no.clone()]).eval(&ev));
        assert!(Expr::Or(vec![no.clone(), yes.clone()]).eval(&ev));
        assert!(!Expr::or(vec![]).eval(&ev));
        assert!(Expr::and(vec![]).eval(&ev));
        assert_eq!(Expr::and(vec![yes.clone()]), yes);
        assert_eq!(Expr::Or(vec![yes.clone(), no.clone()]).term_count(), 2);
    }

    #[test]
    fn prints_canonical_form() {
        let (_, k) = setup();
        let e = Expr::And(vec![
            Expr::Or(vec![
                term(key(&k, "remote-ip"), Pred::Cidr(Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap())),
                term(key(&k, "domain"), Pred::Glob(glob("*.example.org"))),
            ]),
            Expr::negate(term(Field::Event, Pred::Eq("smtp.rcpt-to".into()))),
            term(key(&k, "size"), Pred::Cmp(CmpOp::Gt, Number::parse("1000000").unwrap())),
        ]);
        assert_eq!(
            e.to_string(),
            "(remote-ip:10.0.0.0/8 OR domain:*.example.org) AND NOT event:smtp.rcpt-to AND size>1000000"
        );
        assert_eq!(Expr::True.to_string(), "");
        assert_eq!(Expr::and(vec![]).to_string(), "");
        assert_eq!(Expr::or(vec![]).to_string(), "NOT ()");
        let p = |f: Field, pred: Pred| Term { field: f, pred }.to_string();
        assert_eq!(p(Field::Text, Pred::Contains("spam".into())), "spam");
        assert_eq!(p(Field::Text, Pred::Contains("and".into())), "\"and\"");
        assert_eq!(p(Field::Text, Pred::Contains("a \"b\\".into())), r#""a \"b\\""#);
        assert_eq!(p(Field::Text, Pred::Contains("a:b".into())), "\"a:b\"");
        assert_eq!(p(Field::Level, Pred::Level(CmpOp::Ge, Level::Warn)), "level:warn");
        assert_eq!(p(Field::Level, Pred::Level(CmpOp::Lt, Level::Info)), "level<info");
        assert_eq!(p(key(&k, "queue-id"), Pred::Present), "queue-id:*");
        assert_eq!(p(key(&k, "reason"), Pred::Eq("a,b c".into())), "reason:\"a,b c\"");
        assert_eq!(p(key(&k, "reason"), Pred::Glob(glob("a,b *"))), "reason:a\\,b\\ *");
        assert_eq!(p(key(&k, "remote-ip"), Pred::Eq("2001:db8::1".into())), "remote-ip:2001:db8::1");
        assert_eq!(
            p(key(&k, "elapsed"), Pred::Cmp(CmpOp::Ge, Number::parse("500").unwrap())),
            "elapsed>=500"
        );
    }
}
