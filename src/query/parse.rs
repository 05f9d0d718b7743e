//! Parsing live-stream queries into an [`Expr`]: the URL pair form and the `q=` expression form.
//!
//! The pair form is sugar for the expression form: [`parse_pairs`] turns every parameter into
//! terms and ANDs the groups together with every `q=` expression. The parser is pure (no I/O),
//! linear in the input, and its recursion is bounded by [`Limits::max_depth`], so no input can
//! overflow the stack.
//!
//! # Grammar (EBNF)
//!
//! ```text
//! (* URL pair form; names and values are URL-decoded first, strictly: a bad %-escape or
//!    bytes that are not UTF-8 are an error naming the parameter *)
//! query    = [ pair { "&" pair } ] ;
//! pair     = "filter=" text            (* substring, taken literally; empty means no filter *)
//!          | "q=" [ expr ]             (* ANDed with the other pairs *)
//!          | "follow=" bool | "token=" token
//!          | ( key | "event" | "level" ) "=" items ;
//! items    = item { "," item } ;       (* comma = OR, like repeating the parameter *)
//! item     = [ "!" ] positive ;        (* "!": the key is absent or no value matches *)
//! positive = "*"                       (* key present; for event: any type *)
//!          | cmp number                (* size=>1000000, elapsed=>=500, code=<500 *)
//!          | cmp level | level         (* level=warn means warn and above *)
//!          | ip "/" prefix             (* CIDR, IP keys only, IPv4 and IPv6 *)
//!          | pattern ;                 (* exact value, or a glob when it has * or ? *)
//! cmp      = ">=" | "<=" | ">" | "<" ;
//! number   = [ "-" ] digit { digit } [ "." digit { digit } ] ;
//! level    = "trace" | "debug" | "info" | "warn" | "error" ;
//!
//! (* expression form, the value of q= *)
//! expr     = or ;
//! or       = and { "OR" and } ;
//! and      = unary { [ "AND" ] unary } ;           (* juxtaposition is AND *)
//! unary    = "NOT" unary | "(" [ expr ] ")" | term ; (* "()" is the empty query *)
//! term     = field ( ":" | "=" ) items             (* same items as the pair form *)
//!          | field cmp ( number | level )          (* size>1000000, level>=warn *)
//!          | word ;                                (* bare word or "quoted": text search *)
//! field    = key | "event" | "level" | "filter" ;  (* key: kebab-case, e.g. remote-ip,
//!                                                    or the camelCase key exactly, remoteIp *)
//! ```
//!
//! **Names.** A key is named by its kebab-case parameter (`remote-ip`) or by its camelCase
//! key exactly (`remoteIp`, as Stalwart v0.16's web UI sends it), in pairs and in `q=` alike;
//! no other spelling (`remoteip`, `REMOTE-IP`) is a key. An unknown name is refused, with the
//! nearest known name when there is one ([`super::suggest`]); on a live stream
//! ([`parse_live_request`]) an unknown name that is near no known one is ignored instead.
//!
//! Keywords `AND`, `OR`, `NOT` are case-insensitive; `NOT` binds tightest, then `AND`, then
//! `OR`. In `q=`, a word ends at whitespace or a parenthesis.
//!
//! **Values.** For a key, several items combine per key as *positives ORed, negatives ANDed*:
//! `domain=*.example.org&domain=!spam.example.org` is "any `.example.org` domain except
//! `spam.example.org`", and `domain=!a,!b` excludes both. Exact values are canonicalised per
//! key kind (case-insensitive domains and addresses, IPs by address, integers by value); globs
//! (`*` any run, `?` one character) are case-insensitive for domain/address keys, IP keys and
//! event types, and case-sensitive otherwise. `<`, `>`, `<=`, `>=` compare any key whose value
//! is a decimal number (`code<500` works although `code` is text).
//!
//! **Quoting.** A backslash makes the next character literal (`reason=a\,b` is the one value
//! `a,b`; `to=\*bob` starts with a literal `*`). Double quotes make everything inside literal,
//! with `\"` and `\\` inside: `reason="a, b*"`. Quoted and unquoted pieces may be mixed
//! (`from="*"*` is a glob for values starting with `*`). Special characters in values are
//! `! * ? , < > \ "`, and `/` in IP keys; in `q=` also whitespace, `(` and `)`. `filter=` is
//! always literal; in `q=`, a quoted word (`"mailbox full"`) is a text search.
//!
//! # Examples a mail admin would type
//!
//! ```text
//! remote-ip=203.0.113.0/24&event=smtp.*
//! domain=*.example.org&domain=!lists.example.org&level=warn
//! from=*@bank.*&size=>1000000&queue-id=*
//! event=auth.failed,security.*&account-name=!alice
//! q=(remote-ip:10.0.0.0/8 OR domain:*.example.org) AND NOT event:smtp.rcpt-to AND size>1000000
//! ```

use super::ast::{Cidr, CmpOp, Expr, Field, Glob, GlobPart, Number, Pred, Term};
use crate::event::keys::{lowercase_into, KeyKind, KeyRegistry};
use crate::event::Level;
use std::fmt;
use std::net::IpAddr;

/// Hard ceiling on [`Limits::max_depth`], whatever the configuration says, so the recursive
/// descent parser cannot exhaust the stack.
pub const MAX_DEPTH_CAP: usize = 256;

/// Size limits on one query, so a hostile URL cannot make parsing or matching expensive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted query string (or `q=` expression), in bytes.
    pub max_query_bytes: usize,
    /// Most terms in one query, and most parameters in the pair form.
    pub max_terms: usize,
    /// Longest text (`filter=` or a bare word), in bytes.
    pub max_text_bytes: usize,
    /// Deepest nesting of parentheses and `NOT` (capped at [`MAX_DEPTH_CAP`]).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_query_bytes: 8192, max_terms: 64, max_text_bytes: 256, max_depth: 32 }
    }
}

/// Why a query was refused: the parameter, the byte offset within its (URL-decoded) value,
/// and what was expected there. The parameter is empty for errors about the whole query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The parameter name (`q`, `remote-ip`, ...), or empty for the whole query.
    pub parameter: String,
    /// Byte offset within the parameter's value (or within the query when `parameter` is empty).
    /// A name that cannot be URL-decoded is reported with the part of it that can, and the
    /// offset within the name (see [`super::urlenc::pairs`]).
    pub position: usize,
    /// What was expected at that position.
    pub expected: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parameter.is_empty() {
            write!(f, "invalid query at byte {}: expected {}", self.position, self.expected)
        } else {
            write!(f, "invalid `{}` at byte {}: expected {}", self.parameter, self.position, self.expected)
        }
    }
}

impl std::error::Error for ParseError {}

fn err(parameter: &str, position: usize, expected: impl Into<String>) -> ParseError {
    ParseError { parameter: parameter.to_string(), position, expected: expected.into() }
}

/// A parsed live-stream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedQuery {
    /// What to match: every pair and every `q=` expression, ANDed.
    pub expr: Expr,
    /// Whether a match pulls in the rest of its span (`follow=false` turns it off).
    pub follow: bool,
    /// A live token (`?token=`), for browsers that cannot send headers.
    pub token: Option<String>,
    /// `last-event-id=`: resume after this event id, for clients that cannot send the
    /// `Last-Event-ID` header.
    pub last_event_id: Option<u64>,
    /// `since=`: start the stream with the retained events created at or after this time
    /// (Unix seconds, from an RFC 3339 value or a number).
    pub since: Option<i64>,
    /// Parameter names that were ignored ([`parse_live_request`] only): unknown, and not near
    /// any known name. The stream says so in a comment line.
    pub ignored: Vec<String>,
}

/// The parameters of a live request besides keys (`q`, `filter`, …), for "did you mean".
pub const LIVE_PARAMS: &[&str] =
    &["filter", "q", "event", "level", "follow", "token", "last-event-id", "since"];

/// What an unknown parameter name expects.
const EXPECTED_NAME: &str =
    "a known key (such as remote-ip or remoteIp) or one of filter, event, level, q, follow, token, last-event-id, since";

/// Shared state of one parse: where to look keys up, the limits, and the terms counted so far.
struct Ctx<'a> {
    keys: &'a KeyRegistry,
    limits: &'a Limits,
    terms: usize,
}

impl Ctx<'_> {
    fn count(&mut self, param: &str, pos: usize) -> Result<(), ParseError> {
        self.terms += 1;
        if self.terms > self.limits.max_terms {
            return Err(err(param, pos, format!("at most {} terms", self.limits.max_terms)));
        }
        Ok(())
    }

    fn resolve(&self, name: &str) -> Option<Field> {
        Some(match name {
            "event" => Field::Event,
            "level" => Field::Level,
            "filter" => Field::Text,
            _ => {
                // The kebab-case parameter (`remote-ip`), or the camelCase key itself
                // (`remoteIp`, as Stalwart v0.16's web UI sends it), matched exactly: a name is
                // never lower-cased first, which would make every multi-word key unreachable.
                let (id, info) = match self.keys.lookup_param(name) {
                    Some(found) => found,
                    None => {
                        let (id, _) = self.keys.lookup(name)?;
                        (id, self.keys.info(id)?)
                    }
                };
                Field::Key { id, param: info.param, kind: info.kind }
            }
        })
    }

    /// A text (substring) term; `pos` is where the text starts.
    fn text(&mut self, param: &str, text: &str, pos: usize) -> Result<Expr, ParseError> {
        if text.is_empty() {
            return Err(err(param, pos, "a non-empty text"));
        }
        if text.len() > self.limits.max_text_bytes {
            return Err(err(param, pos, format!("at most {} bytes of text", self.limits.max_text_bytes)));
        }
        if let Some((i, _)) = text.char_indices().find(|(_, c)| c.is_control()) {
            return Err(err(param, pos + i, "text without control characters"));
        }
        self.count(param, pos)?;
        let mut needle = String::with_capacity(text.len());
        lowercase_into(text, &mut needle);
        Ok(Expr::Term(Term { field: Field::Text, pred: Pred::Contains(needle) }))
    }
}

/// Parses a query in the pair form (possibly with `q=`): a principal's filter, a tap's query,
/// a query to check. Every parameter must be known; an unknown one is an error, which
/// suggests the nearest known name when there is one.
pub fn parse_pairs(query: &str, keys: &KeyRegistry, limits: &Limits) -> Result<ParsedQuery, ParseError> {
    parse_query(query, keys, limits, None)
}

/// Parses the query string of a live-stream request, as [`parse_pairs`] does with two
/// differences. Names in `own` are the endpoint's own parameters (read by its handler): they
/// are skipped here. A name that is unknown is still refused when it is near a known one (a
/// typo, see [`super::suggest`]), and otherwise ignored and listed in
/// [`ParsedQuery::ignored`]: classic clients add parameters of their own that Stalwart
/// ignores, and a stream must not break on them.
pub fn parse_live_request(
    query: &str,
    keys: &KeyRegistry,
    limits: &Limits,
    own: &[&str],
) -> Result<ParsedQuery, ParseError> {
    parse_query(query, keys, limits, Some(own))
}

/// The error for the unknown parameter `name`, or `None` when a live request may ignore it
/// (`own` is `Some` for a live request: its endpoint's own parameters).
fn unknown_name(name: &str, keys: &KeyRegistry, own: Option<&[&str]>) -> Option<ParseError> {
    let infos: Vec<_> = (0..keys.len()).filter_map(|id| keys.info(id as crate::event::KeyId)).collect();
    let candidates = LIVE_PARAMS
        .iter()
        .copied()
        .chain(own.unwrap_or_default().iter().copied())
        .chain(infos.iter().flat_map(|k| [&*k.param, &*k.name]));
    match (super::suggest::nearest(name, candidates), own) {
        (Some(near), _) => Some(err(name, 0, format!("{EXPECTED_NAME} (did you mean `{near}`?)"))),
        (None, None) => Some(err(name, 0, EXPECTED_NAME)),
        (None, Some(_)) => None,
    }
}

fn parse_query(
    query: &str,
    keys: &KeyRegistry,
    limits: &Limits,
    own: Option<&[&str]>,
) -> Result<ParsedQuery, ParseError> {
    if query.len() > limits.max_query_bytes {
        return Err(err("", limits.max_query_bytes, format!("at most {} bytes", limits.max_query_bytes)));
    }
    let mut ctx = Ctx { keys, limits, terms: 0 };
    let mut out = ParsedQuery {
        expr: Expr::True,
        follow: true,
        token: None,
        last_event_id: None,
        since: None,
        ignored: Vec::new(),
    };
    // Per field, in order of first appearance: positive terms (ORed) and negated ones (ANDed).
    let mut groups: Vec<(Field, Vec<Expr>, Vec<Expr>)> = Vec::new();
    let mut exprs = Vec::new();
    for (pairs, pair) in super::urlenc::pairs(query).enumerate() {
        let (name, value) = pair?;
        if pairs >= limits.max_terms {
            return Err(err(&name, 0, format!("at most {} parameters", limits.max_terms)));
        }
        let (field, items) = match name.as_ref() {
            n if own.is_some_and(|own| own.contains(&n)) => continue,
            "follow" => {
                out.follow = match value.as_ref() {
                    "true" | "1" | "yes" | "" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(err(&name, 0, "true or false")),
                };
                continue;
            }
            "token" => {
                out.token = Some(value.into_owned());
                continue;
            }
            "last-event-id" => {
                out.last_event_id = Some(value.parse().map_err(|_| err(&name, 0, "an event id (digits)"))?);
                continue;
            }
            "since" => {
                let raw = match value.parse::<i64>() {
                    Ok(n) => crate::event::RawValue::Int(n),
                    Err(_) => crate::event::RawValue::Str(value.clone()),
                };
                out.since = Some(
                    crate::event::encode::parse_timestamp(&raw)
                        .ok_or_else(|| err(&name, 0, "an RFC 3339 time such as 2026-11-21T10:00:00Z"))?,
                );
                continue;
            }
            "q" => {
                let e = parse_q(&mut ctx, "q", &value)?;
                if e != Expr::True {
                    exprs.push(e);
                }
                continue;
            }
            // Stalwart's own web UI sends `filter=` with an empty box; it means no filter.
            "filter" if value.is_empty() => continue,
            "filter" => (Field::Text, vec![(false, ctx.text("filter", &value, 0)?)]),
            param => {
                let Some(field) = ctx.resolve(param) else {
                    match unknown_name(param, keys, own) {
                        Some(e) => return Err(e),
                        None => {
                            out.ignored.push(param.to_string());
                            continue;
                        }
                    }
                };
                if value.is_empty() {
                    // Stalwart drops parameters with empty values, and so does a live request
                    // on its endpoints (the v0.16 UI sends an empty box as `key=`).
                    if own.is_some() {
                        out.ignored.push(param.to_string());
                        continue;
                    }
                    return Err(err(param, 0, "a non-empty value"));
                }
                let vs = decode(param, &value, 0, value.len())?;
                (field.clone(), value_items(&mut ctx, param, &field, &vs, 0)?)
            }
        };
        let idx = match groups.iter().position(|g| g.0 == field) {
            Some(i) => i,
            None => {
                groups.push((field, Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        for (neg, e) in items {
            if neg {
                groups[idx].2.push(e);
            } else {
                groups[idx].1.push(e);
            }
        }
    }
    let mut all: Vec<Expr> = groups.into_iter().map(|(_, pos, neg)| combine(pos, neg)).collect();
    all.extend(exprs);
    out.expr = Expr::and(all);
    Ok(out)
}

/// Parses one `q=` expression (already URL-decoded); errors name the parameter `q`.
pub fn parse_expr(q: &str, keys: &KeyRegistry, limits: &Limits) -> Result<Expr, ParseError> {
    parse_q(&mut Ctx { keys, limits, terms: 0 }, "q", q)
}

/// Positives ORed, then each negated item ANDed.
fn combine(pos: Vec<Expr>, neg: Vec<Expr>) -> Expr {
    let mut all = Vec::with_capacity(1 + neg.len());
    if !pos.is_empty() {
        all.push(Expr::or(pos));
    }
    all.extend(neg);
    Expr::and(all)
}

/// One character of a decoded value: `lit` when it was escaped or quoted (never an operator),
/// `pos` its byte offset in the parameter's value.
#[derive(Debug, Clone, Copy)]
struct VChar {
    c: char,
    lit: bool,
    pos: usize,
}

impl VChar {
    fn is(&self, c: char) -> bool {
        !self.lit && self.c == c
    }
}

fn text_of(vs: &[VChar]) -> String {
    vs.iter().map(|v| v.c).collect()
}

/// Decodes `src[start..end]`: `\x` is a literal `x`, `"..."` is literal (with `\"`, `\\`).
fn decode(param: &str, src: &str, start: usize, end: usize) -> Result<Vec<VChar>, ParseError> {
    let mut out = Vec::with_capacity(end - start);
    let mut it = src[start..end].char_indices().map(|(i, c)| (i + start, c));
    while let Some((i, c)) = it.next() {
        match c {
            '\\' => match it.next() {
                Some((_, d)) => out.push(VChar { c: d, lit: true, pos: i }),
                None => return Err(err(param, i, "a character after `\\`")),
            },
            '"' => loop {
                match it.next() {
                    None => return Err(err(param, i, "a closing `\"` for this quote")),
                    Some((_, '"')) => break,
                    Some((j, '\\')) => match it.next() {
                        Some((_, d)) => out.push(VChar { c: d, lit: true, pos: j }),
                        None => return Err(err(param, i, "a closing `\"` for this quote")),
                    },
                    Some((j, d)) => out.push(VChar { c: d, lit: true, pos: j }),
                }
            },
            c => out.push(VChar { c, lit: false, pos: i }),
        }
    }
    Ok(out)
}

/// Splits a decoded value at unescaped commas and parses each item for `field`; returns
/// `(negated, expr)` where a negated expr is already wrapped in `Not`.
fn value_items(
    ctx: &mut Ctx<'_>,
    param: &str,
    field: &Field,
    vs: &[VChar],
    start: usize,
) -> Result<Vec<(bool, Expr)>, ParseError> {
    let mut out = Vec::new();
    let (mut from, mut item_start) = (0, start);
    for i in 0..=vs.len() {
        if i < vs.len() && !vs[i].is(',') {
            continue;
        }
        let item = &vs[from..i];
        if item.is_empty() {
            return Err(err(param, item_start, "a value"));
        }
        ctx.count(param, item_start)?;
        let (neg, rest) = match item.split_first() {
            Some((b, rest)) if b.is('!') => (true, rest),
            _ => (false, item),
        };
        let Some(first) = rest.first() else {
            return Err(err(param, item[0].pos + 1, "a value after `!`"));
        };
        if first.is('!') {
            return Err(err(param, first.pos, "a value (write `\\!` for a literal `!`)"));
        }
        let pred = positive(param, field, rest)?;
        let term = Expr::Term(Term { field: field.clone(), pred });
        out.push((neg, if neg { Expr::negate(term) } else { term }));
        if i < vs.len() {
            from = i + 1;
            item_start = vs[i].pos + 1;
        }
    }
    Ok(out)
}

/// A leading comparison operator, and how many characters it takes.
fn cmp_prefix(vs: &[VChar]) -> Option<(CmpOp, usize)> {
    let eq = vs.get(1).is_some_and(|v| v.is('='));
    match vs.first() {
        Some(v) if v.is('>') => Some(if eq { (CmpOp::Ge, 2) } else { (CmpOp::Gt, 1) }),
        Some(v) if v.is('<') => Some(if eq { (CmpOp::Le, 2) } else { (CmpOp::Lt, 1) }),
        _ => None,
    }
}

/// The position just after the last character of `vs` (or of `before` when `vs` is empty).
fn end_pos(vs: &[VChar], before: usize) -> usize {
    vs.last().map_or(before, |v| v.pos + 1)
}

const LEVELS: &str = "a level: trace, debug, info, warn or error";

fn number(param: &str, vs: &[VChar], before: usize) -> Result<Number, ParseError> {
    Number::parse(&text_of(vs)).ok_or_else(|| err(param, vs.first().map_or(before, |v| v.pos), "a number"))
}

fn level(param: &str, vs: &[VChar], before: usize) -> Result<Level, ParseError> {
    Level::parse(&text_of(vs)).ok_or_else(|| err(param, vs.first().map_or(before, |v| v.pos), LEVELS))
}

/// Builds a glob from a decoded value, lowercasing its literals when `fold`.
fn glob(vs: &[VChar], fold: bool) -> Glob {
    let mut parts = Vec::new();
    let mut lit = String::new();
    for v in vs {
        let wild = if v.is('*') {
            Some(GlobPart::Star)
        } else if v.is('?') {
            Some(GlobPart::One)
        } else {
            None
        };
        match wild {
            Some(w) => {
                parts.push(GlobPart::Lit(std::mem::take(&mut lit)));
                parts.push(w);
            }
            None if fold => lowercase_into(v.c.encode_utf8(&mut [0; 4]), &mut lit),
            None => lit.push(v.c),
        }
    }
    parts.push(GlobPart::Lit(lit));
    Glob::new(parts)
}

/// Parses one non-negated, non-empty item for `field`.
fn positive(param: &str, field: &Field, vs: &[VChar]) -> Result<Pred, ParseError> {
    let at = vs[0].pos;
    let wild = vs.iter().any(|v| v.is('*') || v.is('?'));
    match field {
        Field::Level => match cmp_prefix(vs) {
            Some((op, n)) => Ok(Pred::Level(op, level(param, &vs[n..], end_pos(vs, at))?)),
            None => Ok(Pred::Level(CmpOp::Ge, level(param, vs, at)?)),
        },
        Field::Event => {
            if cmp_prefix(vs).is_some() {
                return Err(err(
                    param,
                    at,
                    "an event type or glob (comparisons apply to numbers and levels)",
                ));
            }
            if wild {
                return Ok(Pred::Glob(glob(vs, true)));
            }
            let mut lower = String::with_capacity(vs.len());
            lowercase_into(&text_of(vs), &mut lower);
            Ok(Pred::Eq(lower))
        }
        Field::Text => {
            let mut lower = String::with_capacity(vs.len());
            lowercase_into(&text_of(vs), &mut lower);
            Ok(Pred::Contains(lower))
        }
        Field::Key { kind, .. } => {
            if vs.len() == 1 && vs[0].is('*') {
                return Ok(Pred::Present);
            }
            if let Some((op, n)) = cmp_prefix(vs) {
                return Ok(Pred::Cmp(op, number(param, &vs[n..], end_pos(vs, at))?));
            }
            if *kind == KeyKind::Ip {
                if let Some(slash) = vs.iter().position(|v| v.is('/')) {
                    return cidr(param, vs, slash);
                }
            }
            if wild {
                let g = glob(vs, matches!(kind, KeyKind::Folded | KeyKind::Ip));
                // `**` is a lone `*` once normalised: the key is present.
                if g.parts() == [GlobPart::Star] {
                    return Ok(Pred::Present);
                }
                return Ok(Pred::Glob(g));
            }
            kind.canonical_query(&text_of(vs)).map(Pred::Eq).map_err(|e| err(param, at, e))
        }
    }
}

fn cidr(param: &str, vs: &[VChar], slash: usize) -> Result<Pred, ParseError> {
    let addr: IpAddr =
        text_of(&vs[..slash]).parse().map_err(|_| err(param, vs[0].pos, "an IP address before `/`"))?;
    let len_at = vs[slash].pos + 1;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let expected = || err(param, len_at, format!("a prefix length of at most {max}"));
    let digits = &vs[slash + 1..];
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(|v| v.c.is_ascii_digit()) {
        return Err(expected());
    }
    let len: u8 = text_of(digits).parse().map_err(|_| expected())?;
    Cidr::new(addr, len).map(Pred::Cidr).ok_or_else(expected)
}

/// A text term from a decoded word, reporting a control character where it was written.
fn text_term(ctx: &mut Ctx<'_>, param: &str, vs: &[VChar], start: usize) -> Result<Expr, ParseError> {
    if let Some(v) = vs.iter().find(|v| v.c.is_control()) {
        return Err(err(param, v.pos, "text without control characters"));
    }
    ctx.text(param, &text_of(vs), vs.first().map_or(start, |v| v.pos))
}

/// Where a word of `q=` ends: at whitespace, `(` or `)` outside quotes.
fn scan_word(param: &str, src: &str, start: usize) -> Result<usize, ParseError> {
    let mut it = src[start..].char_indices().map(|(i, c)| (i + start, c));
    while let Some((i, c)) = it.next() {
        match c {
            // The guard consumes the escaped character, so it can never end the word.
            '\\' if it.next().is_none() => return Err(err(param, i, "a character after `\\`")),
            '"' => loop {
                match it.next() {
                    None => return Err(err(param, i, "a closing `\"` for this quote")),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => {
                        it.next();
                    }
                    Some(_) => {}
                }
            },
            c if c.is_whitespace() || c == '(' || c == ')' => return Ok(i),
            _ => {}
        }
    }
    Ok(src.len())
}

/// Parses one expression; an empty (or all-blank) one is [`Expr::True`].
fn parse_q(ctx: &mut Ctx<'_>, param: &str, src: &str) -> Result<Expr, ParseError> {
    if src.len() > ctx.limits.max_query_bytes {
        let max = ctx.limits.max_query_bytes;
        return Err(err(param, max, format!("at most {max} bytes")));
    }
    let max_depth = ctx.limits.max_depth.min(MAX_DEPTH_CAP);
    let mut p = Parser { ctx, param, src, pos: 0, depth: 0, max_depth };
    p.skip_ws();
    if p.peek().is_none() {
        return Ok(Expr::True);
    }
    let e = p.or()?;
    p.skip_ws();
    match p.peek() {
        None => Ok(e),
        Some(')') => Err(err(param, p.pos, "the end of the expression (this `)` has no `(`)")),
        Some(_) => Err(err(param, p.pos, "AND, OR or the end of the expression")),
    }
}

/// Recursive descent over one `q=` value; `depth` counts open parentheses and `NOT`s.
struct Parser<'s, 'c, 'k> {
    ctx: &'c mut Ctx<'k>,
    param: &'s str,
    src: &'s str,
    pos: usize,
    depth: usize,
    max_depth: usize,
}

impl Parser<'_, '_, '_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn skip_ws(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// True when the next word is exactly the keyword `kw` (lowercase, any case in input).
    fn at_keyword(&self, kw: &str) -> bool {
        let rest = &self.src.as_bytes()[self.pos..];
        rest.len() >= kw.len()
            && rest[..kw.len()].eq_ignore_ascii_case(kw.as_bytes())
            && rest.get(kw.len()).map_or(true, |&b| b.is_ascii_whitespace() || b == b'(' || b == b')')
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(err(self.param, self.pos, format!("at most {} levels of nesting", self.max_depth)));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.and()?];
        loop {
            self.skip_ws();
            if !self.at_keyword("or") {
                return Ok(Expr::or(items));
            }
            self.pos += 2;
            items.push(self.and()?);
        }
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.unary()?];
        loop {
            self.skip_ws();
            match self.peek() {
                None | Some(')') => break,
                _ if self.at_keyword("or") => break,
                _ if self.at_keyword("and") => {
                    self.pos += 3;
                    items.push(self.unary()?);
                }
                _ => items.push(self.unary()?),
            }
        }
        Ok(Expr::and(items))
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        match self.peek() {
            None | Some(')') => Err(err(self.param, self.pos, "a term, `(` or NOT")),
            Some('(') => {
                self.enter()?;
                let open = self.pos;
                self.pos += 1;
                self.skip_ws();
                let e = if self.peek() == Some(')') { Expr::True } else { self.or()? };
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err(err(self.param, self.pos, format!("`)` closing the `(` at byte {open}")));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(e)
            }
            _ if self.at_keyword("not") => {
                self.enter()?;
                self.pos += 3;
                let e = self.unary()?;
                self.depth -= 1;
                Ok(Expr::negate(e))
            }
            _ if self.at_keyword("and") || self.at_keyword("or") => {
                Err(err(self.param, self.pos, "a term before AND/OR (quote the word to search for it)"))
            }
            _ => self.term(),
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let (param, src, start) = (self.param, self.src, self.pos);
        let end = scan_word(param, src, start)?;
        self.pos = end;
        let word = &src[start..end];
        let ident =
            word.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_').count();
        let rest = &word.as_bytes()[ident..];
        // (comparison, operator length); `None` for `:` and `=`.
        let op = match rest {
            _ if ident == 0 => None,
            [b'>', b'=', ..] => Some((Some(CmpOp::Ge), 2)),
            [b'<', b'=', ..] => Some((Some(CmpOp::Le), 2)),
            [b'>', ..] => Some((Some(CmpOp::Gt), 1)),
            [b'<', ..] => Some((Some(CmpOp::Lt), 1)),
            [b':' | b'=', ..] => Some((None, 1)),
            _ => None,
        };
        let Some((cmp, op_len)) = op else {
            let vs = decode(param, src, start, end)?;
            return text_term(self.ctx, param, &vs, start);
        };
        let name = &word[..ident];
        let Some(field) = self.ctx.resolve(name) else {
            return Err(err(
                param,
                start,
                "a known key, event, level or filter before the operator (quote text that contains one)",
            ));
        };
        let vstart = start + ident + op_len;
        let vs = decode(param, src, vstart, end)?;
        match (cmp, &field) {
            (None, Field::Text) => text_term(self.ctx, param, &vs, vstart),
            (None, _) => {
                if vs.is_empty() {
                    return Err(err(param, vstart, "a value after the operator"));
                }
                let items = value_items(self.ctx, param, &field, &vs, vstart)?;
                let (mut pos, mut neg) = (Vec::new(), Vec::new());
                for (n, e) in items {
                    if n {
                        neg.push(e);
                    } else {
                        pos.push(e);
                    }
                }
                Ok(combine(pos, neg))
            }
            (Some(op), Field::Key { .. }) => {
                self.ctx.count(param, start)?;
                let n = number(param, &vs, vstart)?;
                Ok(Expr::Term(Term { field, pred: Pred::Cmp(op, n) }))
            }
            (Some(op), Field::Level) => {
                self.ctx.count(param, start)?;
                let l = level(param, &vs, vstart)?;
                Ok(Expr::Term(Term { field, pred: Pred::Level(op, l) }))
            }
            (Some(_), Field::Event | Field::Text) => Err(err(
                param,
                start + ident,
                format!("`:` after `{name}` (comparisons apply to numbers and levels)"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Catalogue;

    fn setup() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    use crate::event::testing::event;

    fn q(k: &KeyRegistry, s: &str) -> Expr {
        parse_expr(s, k, &Limits::default()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn pairs(k: &KeyRegistry, s: &str) -> Expr {
        parse_pairs(s, k, &Limits::default()).unwrap_or_else(|e| panic!("{s}: {e}")).expr
    }

    fn key(k: &KeyRegistry, param: &str) -> Field {
        let (id, info) = k.lookup_param(param).unwrap();
        Field::Key { id, param: info.param, kind: info.kind }
    }

    fn t(field: Field, pred: Pred) -> Expr {
        Expr::Term(Term { field, pred })
    }

    fn not(e: Expr) -> Expr {
        Expr::negate(e)
    }

    fn lit(s: &str) -> GlobPart {
        GlobPart::Lit(s.into())
    }

    fn num(s: &str) -> Number {
        Number::parse(s).unwrap()
    }

    fn net(s: &str, len: u8) -> Pred {
        Pred::Cidr(Cidr::new(s.parse().unwrap(), len).unwrap())
    }

    #[test]
    fn the_issue_example() {
        let (_, k) = setup();
        let s = "(remote-ip:10.0.0.0/8 OR domain:*.example.org) AND NOT event:smtp.rcpt-to AND size>1000000";
        let e = q(&k, s);
        let want = Expr::And(vec![
            Expr::Or(vec![
                t(key(&k, "remote-ip"), net("10.0.0.0", 8)),
                t(key(&k, "domain"), Pred::Glob(Glob::new([GlobPart::Star, lit(".example.org")]))),
            ]),
            not(t(Field::Event, Pred::Eq("smtp.rcpt-to".into()))),
            t(key(&k, "size"), Pred::Cmp(CmpOp::Gt, num("1000000"))),
        ]);
        assert_eq!(e, want);
        assert_eq!(e.to_string(), s);
        // Keywords in any case, juxtaposition as AND, `=` as `:`.
        let loose = "( remote-ip=10.0.0.0/8 or domain:*.EXAMPLE.org )  not event:SMTP.rcpt-to size>1000000";
        assert_eq!(q(&k, loose), want);
    }

    #[test]
    fn every_operator_in_pairs() {
        let (_, k) = setup();
        let dom = key(&k, "domain");
        let cases: Vec<(&str, Expr)> = vec![
            ("domain=Example.ORG", t(dom.clone(), Pred::Eq("example.org".into()))),
            (
                "domain=*.Example.org",
                t(dom.clone(), Pred::Glob(Glob::new([GlobPart::Star, lit(".example.org")]))),
            ),
            (
                "domain=ex?mple.org",
                t(dom.clone(), Pred::Glob(Glob::new([lit("ex"), GlobPart::One, lit("mple.org")]))),
            ),
            ("domain=!example.org", not(t(dom.clone(), Pred::Eq("example.org".into())))),
            (
                "domain=!*.example.org",
                not(t(dom.clone(), Pred::Glob(Glob::new([GlobPart::Star, lit(".example.org")])))),
            ),
            ("remote-ip=10.1.2.3/8", t(key(&k, "remote-ip"), net("10.0.0.0", 8))),
            ("remote-ip=2001:DB8::/32", t(key(&k, "remote-ip"), net("2001:db8::", 32))),
            ("remote-ip=::ffff:10.0.0.0/104", t(key(&k, "remote-ip"), net("10.0.0.0", 8))),
            (
                "remote-ip=10.0.*",
                t(key(&k, "remote-ip"), Pred::Glob(Glob::new([lit("10.0."), GlobPart::Star]))),
            ),
            ("size=%3E1000000", t(key(&k, "size"), Pred::Cmp(CmpOp::Gt, num("1000000")))),
            ("size=>1000000", t(key(&k, "size"), Pred::Cmp(CmpOp::Gt, num("1000000")))),
            ("elapsed=>=500", t(key(&k, "elapsed"), Pred::Cmp(CmpOp::Ge, num("500")))),
            ("code=<500", t(key(&k, "code"), Pred::Cmp(CmpOp::Lt, num("500")))),
            ("code=<=500.50", t(key(&k, "code"), Pred::Cmp(CmpOp::Le, num("500.5")))),
            ("queue-id=*", t(key(&k, "queue-id"), Pred::Present)),
            ("queue-id=**", t(key(&k, "queue-id"), Pred::Present)),
            ("queue-id=!*", not(t(key(&k, "queue-id"), Pred::Present))),
            ("queue-id=042", t(key(&k, "queue-id"), Pred::Eq("42".into()))),
            ("level=warn", t(Field::Level, Pred::Level(CmpOp::Ge, Level::Warn))),
            ("level=<info", t(Field::Level, Pred::Level(CmpOp::Lt, Level::Info))),
            ("level=!error", not(t(Field::Level, Pred::Level(CmpOp::Ge, Level::Error)))),
            ("event=SMTP.Rcpt-To", t(Field::Event, Pred::Eq("smtp.rcpt-to".into()))),
            ("event=*", t(Field::Event, Pred::Glob(Glob::new([GlobPart::Star])))),
            ("filter=Spam*", t(Field::Text, Pred::Contains("spam*".into()))),
            ("reason=a\\,b", t(key(&k, "reason"), Pred::Eq("a,b".into()))),
            ("reason=\"*!,\\\"\"", t(key(&k, "reason"), Pred::Eq("*!,\"".into()))),
            ("reason=\\!x", t(key(&k, "reason"), Pred::Eq("!x".into()))),
            ("reason=!\"*\"", not(t(key(&k, "reason"), Pred::Eq("*".into())))),
            ("reason=\\>5", t(key(&k, "reason"), Pred::Eq(">5".into()))),
            ("reason=\"*\"*", t(key(&k, "reason"), Pred::Glob(Glob::new([lit("*"), GlobPart::Star])))),
            ("url=https://x/y", t(key(&k, "url"), Pred::Eq("https://x/y".into()))),
            ("q=", Expr::True),
            ("", Expr::True),
            ("filter=&follow=false", Expr::True),
        ];
        for (s, want) in cases {
            assert_eq!(pairs(&k, s), want, "{s}");
        }
    }

    #[test]
    fn pair_grouping() {
        let (_, k) = setup();
        let dom = key(&k, "domain");
        let eq = |f: &Field, v: &str| t(f.clone(), Pred::Eq(v.into()));
        let ev = |v: &str| t(Field::Event, Pred::Eq(v.into()));
        let evg = |g: Vec<GlobPart>| t(Field::Event, Pred::Glob(Glob::new(g)));
        // Comma and repetition are both OR; distinct keys AND; negatives AND within a key.
        assert_eq!(
            pairs(&k, "event=smtp.*,auth.failed"),
            Expr::Or(vec![evg(vec![lit("smtp."), GlobPart::Star]), ev("auth.failed")])
        );
        assert_eq!(
            pairs(&k, "domain=a.org&remote-ip=10.0.0.5&domain=b.org"),
            Expr::And(vec![
                Expr::Or(vec![eq(&dom, "a.org"), eq(&dom, "b.org")]),
                eq(&key(&k, "remote-ip"), "10.0.0.5")
            ])
        );
        let star_org = t(dom.clone(), Pred::Glob(Glob::new([GlobPart::Star, lit(".org")])));
        assert_eq!(
            pairs(&k, "domain=*.org&domain=!spam.org,!junk.org"),
            Expr::And(vec![star_org, not(eq(&dom, "spam.org")), not(eq(&dom, "junk.org"))])
        );
        assert_eq!(
            pairs(&k, "filter=a&filter=B&q=size>1"),
            Expr::And(vec![
                Expr::Or(vec![
                    t(Field::Text, Pred::Contains("a".into())),
                    t(Field::Text, Pred::Contains("b".into()))
                ]),
                t(key(&k, "size"), Pred::Cmp(CmpOp::Gt, num("1")))
            ])
        );
        let p = parse_pairs("follow=no&token=abc&q=x&q=y", &k, &Limits::default()).unwrap();
        assert!(!p.follow);
        assert_eq!(p.token.as_deref(), Some("abc"));
        assert_eq!(p.expr.to_string(), "x AND y");
        // Comma lists in q= follow the same rule.
        assert_eq!(q(&k, "domain:*.org,!spam.org").to_string(), "domain:*.org AND NOT domain:spam.org");
        assert_eq!(q(&k, "event:a,b").to_string(), "event:a OR event:b");
    }

    #[test]
    fn expression_forms() {
        let (_, k) = setup();
        let a = || t(Field::Text, Pred::Contains("a".into()));
        let b = || t(Field::Text, Pred::Contains("b".into()));
        let c = || t(Field::Text, Pred::Contains("c".into()));
        assert_eq!(q(&k, ""), Expr::True);
        assert_eq!(q(&k, "   "), Expr::True);
        assert_eq!(q(&k, "()"), Expr::True);
        assert_eq!(q(&k, "a b c"), Expr::And(vec![a(), b(), c()]));
        assert_eq!(q(&k, "a AND b OR c"), Expr::Or(vec![Expr::And(vec![a(), b()]), c()]));
        assert_eq!(q(&k, "a OR b AND c"), Expr::Or(vec![a(), Expr::And(vec![b(), c()])]));
        assert_eq!(q(&k, "a AND (b AND c)"), Expr::And(vec![a(), Expr::And(vec![b(), c()])]));
        assert_eq!(q(&k, "NOT a AND b"), Expr::And(vec![not(a()), b()]));
        assert_eq!(q(&k, "not not a"), not(not(a())));
        assert_eq!(q(&k, "NOT(a OR b)"), not(Expr::Or(vec![a(), b()])));
        assert_eq!(q(&k, "((a))"), a());
        assert_eq!(q(&k, "A"), a(), "bare words are lowercase text terms");
        assert_eq!(q(&k, "\"and\""), t(Field::Text, Pred::Contains("and".into())));
        assert_eq!(q(&k, "\"mailbox full\""), t(Field::Text, Pred::Contains("mailbox full".into())));
        assert_eq!(q(&k, "filter:\"a b\""), t(Field::Text, Pred::Contains("a b".into())));
        assert_eq!(q(&k, "filter:x*,y"), t(Field::Text, Pred::Contains("x*,y".into())));
        assert_eq!(q(&k, "10.0.0.5"), t(Field::Text, Pred::Contains("10.0.0.5".into())));
        assert_eq!(q(&k, "a\\:b"), t(Field::Text, Pred::Contains("a:b".into())));
        assert_eq!(q(&k, "level>=warn"), t(Field::Level, Pred::Level(CmpOp::Ge, Level::Warn)));
        assert_eq!(q(&k, "level>info"), t(Field::Level, Pred::Level(CmpOp::Gt, Level::Info)));
        assert_eq!(q(&k, "level:error"), t(Field::Level, Pred::Level(CmpOp::Ge, Level::Error)));
        assert_eq!(q(&k, "level<=debug"), t(Field::Level, Pred::Level(CmpOp::Le, Level::Debug)));
        assert_eq!(q(&k, "size>=-5"), t(key(&k, "size"), Pred::Cmp(CmpOp::Ge, num("-5"))));
        assert_eq!(q(&k, "size<5"), t(key(&k, "size"), Pred::Cmp(CmpOp::Lt, num("5"))));
        assert_eq!(q(&k, "size<=5"), t(key(&k, "size"), Pred::Cmp(CmpOp::Le, num("5"))));
        assert_eq!(q(&k, "size:>5"), t(key(&k, "size"), Pred::Cmp(CmpOp::Gt, num("5"))));
        assert_eq!(q(&k, "size=>5"), t(key(&k, "size"), Pred::Cmp(CmpOp::Gt, num("5"))));
        assert_eq!(q(&k, "size=5"), t(key(&k, "size"), Pred::Eq("5".into())));
        assert_eq!(q(&k, "queue-id:!*"), not(t(key(&k, "queue-id"), Pred::Present)));
        assert_eq!(q(&k, "reason:\"a b\""), t(key(&k, "reason"), Pred::Eq("a b".into())));
        assert_eq!(q(&k, "reason:a\\ b\\)"), t(key(&k, "reason"), Pred::Eq("a b)".into())));
        assert_eq!(q(&k, "(reason:x)"), t(key(&k, "reason"), Pred::Eq("x".into())));
        assert_eq!(q(&k, "remote-ip:2001:db8::1"), t(key(&k, "remote-ip"), Pred::Eq("2001:db8::1".into())));
        assert_eq!(q(&k, "remote-ip:::ffff:10.0.0.5"), t(key(&k, "remote-ip"), Pred::Eq("10.0.0.5".into())));
    }

    fn error(k: &KeyRegistry, s: &str, param: &str, position: usize, expected: &str) {
        let e = match s.strip_prefix("q=") {
            Some(expr) if !expr.contains('&') => parse_expr(expr, k, &Limits::default()),
            _ => parse_pairs(s, k, &Limits::default()).map(|p| p.expr),
        }
        .unwrap_err();
        assert_eq!((e.parameter.as_str(), e.position), (param, position), "{s}: {e}");
        assert!(e.expected.contains(expected), "{s}: {e}");
    }

    #[test]
    fn errors_name_parameter_and_position() {
        let (_, k) = setup();
        let cases: &[(&str, &str, usize, &str)] = &[
            ("remote_ip=1", "remote_ip", 0, "a known key"),
            ("domain=", "domain", 0, "a non-empty value"),
            ("follow=maybe", "follow", 0, "true or false"),
            ("filter=a%01b", "filter", 1, "without control characters"),
            ("remote-ip=10.0.0.999", "remote-ip", 0, "an IP address"),
            ("remote-ip=10.0.0.0/33", "remote-ip", 9, "at most 32"),
            ("remote-ip=2001:db8::/129", "remote-ip", 11, "at most 128"),
            ("remote-ip=10.0.0.0/", "remote-ip", 9, "prefix length"),
            ("remote-ip=10.0.0.0/+8", "remote-ip", 9, "prefix length"),
            ("remote-ip=10.0.0/8", "remote-ip", 0, "an IP address before `/`"),
            ("remote-port=abc", "remote-port", 0, "an integer"),
            ("remote-port=1,abc", "remote-port", 2, "an integer"),
            ("domain=a,,b", "domain", 2, "a value"),
            ("domain=a,", "domain", 2, "a value"),
            ("domain=!", "domain", 1, "a value after `!`"),
            ("domain=!!a", "domain", 1, "literal `!`"),
            ("size=>", "size", 1, "a number"),
            ("size=>=1e3", "size", 2, "a number"),
            ("size=<abc", "size", 1, "a number"),
            ("level=loud", "level", 0, "a level"),
            ("level=>=", "level", 2, "a level"),
            ("level=warn,,", "level", 5, "a value"),
            ("event=>a", "event", 0, "an event type"),
            ("reason=a\\", "reason", 1, "a character after"),
            ("reason=x\"abc", "reason", 1, "a closing `\"`"),
            ("q=domain:", "q", 7, "a value after the operator"),
            ("q=domain:a OR", "q", 11, "a term"),
            ("q=(a OR b", "q", 7, "`)` closing the `(` at byte 0"),
            ("q=a)", "q", 1, "has no `(`"),
            ("q=AND a", "q", 0, "a term before AND/OR"),
            ("q=a OR OR b", "q", 5, "a term before AND/OR"),
            ("q=nope:x", "q", 0, "a known key"),
            ("q=a b size>x", "q", 9, "a number"),
            ("q=event>x", "q", 5, "`:` after `event`"),
            ("q=filter<x", "q", 6, "`:` after `filter`"),
            ("q=level>=loud", "q", 7, "a level"),
            ("q=\"unterminated", "q", 0, "a closing `\"`"),
            ("q=a \\", "q", 2, "a character after"),
            ("q=\"\"", "q", 0, "a non-empty text"),
            ("q=remote-ip:1.2.3.4/40", "q", 18, "at most 32"),
            ("q=x size:1,2,zz", "q", 11, "an integer"),
            ("q=()a)", "q", 3, "has no `(`"),
            ("q=x&q=(y", "q", 2, "`)` closing"),
            ("follow=1&q=x%20%22a%01%22", "q", 4, "without control characters"),
            ("follow=1&q=filter:\\%01", "q", 7, "without control characters"),
        ];
        for &(s, param, pos, expected) in cases {
            error(&k, s, param, pos, expected);
        }
        let e = parse_pairs("remote-ip=10.0.0.0/33", &k, &Limits::default()).unwrap_err();
        assert_eq!(e.to_string(), "invalid `remote-ip` at byte 9: expected a prefix length of at most 32");
    }

    #[test]
    fn camel_case_keys_are_exact() {
        let (_, k) = setup();
        let ip = t(key(&k, "remote-ip"), Pred::Eq("10.0.0.5".into()));
        assert_eq!(pairs(&k, "remoteIp=10.0.0.5"), ip);
        assert_eq!(q(&k, "remoteIp:10.0.0.5"), ip);
        assert_eq!(pairs(&k, "queueId=7"), pairs(&k, "queue-id=7"));
        // Lower-casing first (Stalwart v0.16's bug) would reach no multi-word key: refused, with
        // the exact name to use.
        for wrong in ["remoteip", "REMOTE-IP", "Remoteip", "remote_ip"] {
            let e = parse_pairs(&format!("{wrong}=10.0.0.5"), &k, &Limits::default()).unwrap_err();
            assert_eq!(e.parameter, wrong);
            assert!(e.expected.contains("did you mean `remote"), "{wrong}: {e}");
        }
    }

    #[test]
    fn live_requests_ignore_far_unknown_names_only() {
        let (_, k) = setup();
        let lim = Limits::default();
        let p =
            parse_live_request("_=1700000000&remoteIp=10.0.0.5&utm_source=x&lang=de", &k, &lim, &[]).unwrap();
        assert_eq!(p.expr, t(key(&k, "remote-ip"), Pred::Eq("10.0.0.5".into())));
        assert_eq!(p.ignored, ["_", "utm_source", "lang"]);
        // Near names are typos: refused, as everywhere.
        for (query, near) in [
            ("domian=x", "domain"),
            ("filtre=x", "filter"),
            ("folow=0", "follow"),
            ("remote_ip=1", "remote-ip"),
        ] {
            let e = parse_live_request(query, &k, &lim, &[]).unwrap_err();
            assert!(e.expected.contains(&format!("did you mean `{near}`")), "{query}: {e}");
        }
        // The endpoint's own names are skipped, and count as known for typos.
        let p = parse_live_request("key-values=object&domain=x", &k, &lim, &["key-values"]).unwrap();
        assert!(p.ignored.is_empty());
        assert!(parse_live_request("key-value=object", &k, &lim, &["key-values"]).is_err());
        // The strict form refuses every unknown name.
        let e = parse_pairs("_=1", &k, &lim).unwrap_err();
        assert_eq!((e.parameter.as_str(), e.expected.contains("did you mean")), ("_", false));
    }

    #[test]
    fn broken_url_encoding_is_refused_naming_the_parameter() {
        let (_, k) = setup();
        let cases = [
            ("domain=%c3%28", "domain", 0, "UTF-8 text"),
            ("filter=%ff%fe", "filter", 0, "UTF-8 text"),
            ("q=%ff", "q", 0, "UTF-8 text"),
            ("follow=1&q=level%3Derror%", "q", 11, "a valid percent-encoding (%XX)"),
            ("domain=%zz", "domain", 0, "a valid percent-encoding (%XX)"),
            ("domain=50%", "domain", 2, "a valid percent-encoding (%XX)"),
            ("token=%ff", "token", 0, "UTF-8 text"),
            ("do%ffmain=x", "do", 2, "a parameter name in UTF-8 text"),
            // The decoding is checked before the parameter is looked up.
            ("no-such-key=%ff", "no-such-key", 0, "UTF-8 text"),
        ];
        for (s, param, pos, expected) in cases {
            let e = parse_pairs(s, &k, &Limits::default()).unwrap_err();
            assert_eq!(
                (e.parameter.as_str(), e.position, e.expected.as_str()),
                (param, pos, expected),
                "{s}"
            );
        }
        // Escapes that decode to UTF-8 mean what they meant before.
        assert_eq!(pairs(&k, "domain=ex%61mple.org"), pairs(&k, "domain=example.org"));
        assert_eq!(
            pairs(&k, "q=level%3Derror+OR+domain:%C3%A9.org"),
            pairs(&k, "q=level=error OR domain:é.org")
        );
    }

    #[test]
    fn limits_are_enforced() {
        let (_, k) = setup();
        let l = Limits::default();
        let e = parse_pairs(&"a=b&".repeat(5000), &k, &l).unwrap_err();
        assert_eq!((e.parameter.as_str(), e.position), ("", 8192));
        assert!(e.to_string().starts_with("invalid query at byte 8192"));
        let many = (0..65).map(|i| format!("queue-id={i}")).collect::<Vec<_>>().join("&");
        assert_eq!(parse_pairs(&many, &k, &l).unwrap_err().expected, "at most 64 parameters");
        let list = (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let e = parse_pairs(&format!("queue-id={list}"), &k, &l).unwrap_err();
        assert_eq!(e.expected, "at most 64 terms");
        assert_eq!(e.position, list.rfind(',').unwrap() + 1);
        let e = parse_expr(&"x ".repeat(65), &k, &l).unwrap_err();
        assert_eq!((e.position, e.expected.as_str()), (128, "at most 64 terms"));
        let e = parse_pairs(&format!("filter={}", "x".repeat(257)), &k, &l).unwrap_err();
        assert_eq!(e.expected, "at most 256 bytes of text");
        // Nesting: 32 levels pass, 33 fail at the 33rd opening.
        let ok = format!("{}x{}", "(".repeat(32), ")".repeat(32));
        assert!(parse_expr(&ok, &k, &l).is_ok());
        let deep = format!("{}x{}", "(".repeat(33), ")".repeat(33));
        let e = parse_expr(&deep, &k, &l).unwrap_err();
        assert_eq!((e.position, e.expected.as_str()), (32, "at most 32 levels of nesting"));
        let e = parse_expr(&format!("{}x", "NOT ".repeat(40)), &k, &l).unwrap_err();
        assert_eq!(e.position, 128);
        // A huge depth limit is capped, so hostile input cannot overflow the stack.
        let big = Limits { max_query_bytes: 1 << 20, max_terms: 1 << 20, max_depth: usize::MAX, ..l };
        let e = parse_expr(&"(".repeat(100_000), &k, &big).unwrap_err();
        assert_eq!(e.expected, format!("at most {MAX_DEPTH_CAP} levels of nesting"));
        assert!(parse_expr(&"NOT ".repeat(100_000), &k, &big).is_err());
        // Long flat inputs parse in linear time (this would time out if quadratic).
        let flat = "a OR b ".repeat(60_000);
        let e = parse_expr(&flat, &k, &Limits { max_terms: usize::MAX, ..big }).unwrap();
        assert_eq!(e.term_count(), 120_000);
        let commas = vec!["1"; 200_000].join(",");
        let e = parse_pairs(&format!("queue-id={commas}"), &k, &Limits { max_query_bytes: 1 << 20, ..big });
        assert_eq!(e.unwrap().expr.term_count(), 200_000);
    }

    #[test]
    fn backwards_compatible_with_simple_filters() {
        let (c, k) = setup();
        let events = [
            r#"{"type":"smtp.rcpt-to","data":{"to":["x@Example.org"],"remoteIp":"10.0.0.5"}}"#,
            r#"{"type":"smtp.connection-start","data":{"remoteIp":"::ffff:10.0.0.6","domain":"B.org"}}"#,
            r#"{"type":"queue.queue-message","data":{"queueId":42,"size":1000,"from":"a@b.org"}}"#,
            r#"{"type":"auth.failed","level":"warn","data":{"accountName":"Alice","reason":"bad, password"}}"#,
        ];
        // Expected results per event, as the issue-2 filter (exact keys ORed per key, ANDed
        // across keys, text ORed) decided them; the pair form must keep meaning the same.
        let queries: [(&str, [bool; 4]); 13] = [
            ("", [true, true, true, true]),
            ("to=X@example.ORG", [true, false, false, false]),
            ("to=nobody@x&to=x@example.org", [true, false, false, false]),
            ("to=x@example.org&remote-ip=10.0.0.6", [false, false, false, false]),
            ("remote-ip=10.0.0.5&filter=RCPT", [true, false, false, false]),
            ("remote-ip=10.0.0.6&remote-ip=10.0.0.5", [true, true, false, false]),
            ("filter=example.org", [true, false, false, false]),
            ("filter=alice&filter=queue", [false, false, true, true]),
            ("queue-id=042", [false, false, true, false]),
            ("queue-id=42&size=1000", [false, false, true, false]),
            ("domain=b.ORG&follow=false", [false, true, false, false]),
            ("account-name=ALICE", [false, false, false, true]),
            ("size=999", [false, false, false, false]),
        ];
        let l = Limits::default();
        for (i, json) in events.iter().enumerate() {
            let ev = event(&c, &k, json);
            for (s, want) in &queries {
                let got = parse_pairs(s, &k, &l).unwrap().expr.eval(&ev);
                assert_eq!(got, want[i], "{s} on {json}");
            }
        }
    }

    #[test]
    fn evaluates_parsed_queries() {
        let (c, k) = setup();
        let ev = event(
            &c,
            &k,
            r#"{"type":"SMTP.Rcpt-To","data":{"to":["x@Example.org","y@bank.com"],"remoteIp":"10.0.0.5",
                "domain":"Mail.Example.org","size":1500000,"code":"250","elapsed":499,"reason":"Mailbox Full"}}"#,
        );
        let quiet = event(&c, &k, r#"{"type":"auth.failed","data":{"remoteIp":"2001:db8::7"}}"#);
        let m = |s: &str| pairs(&k, s).eval(&ev);
        let mq = |s: &str| q(&k, s).eval(&ev);
        assert!(m("domain=*.example.org"));
        assert!(m("domain=MAIL.*"));
        assert!(!m("domain=!*.example.org"));
        assert!(m("domain=!example.org"));
        assert!(m("account-name=!alice"), "absent key: negation holds");
        assert!(m("to=*@bank.*"));
        assert!(!m("to=!y@bank.com"), "one value equals");
        assert!(m("reason=Mailbox*"));
        assert!(!m("reason=mailbox*"), "String keys are case-sensitive");
        assert!(m("remote-ip=10.0.0.0/8"));
        assert!(m("remote-ip=10.0.0.0/8,192.168.0.0/16"));
        assert!(!m("remote-ip=192.168.0.0/16"));
        assert!(m("remote-ip=::ffff:10.0.0.0/104"));
        assert!(m("size=>1000000"));
        assert!(!m("size=<1000000"));
        assert!(m("elapsed=<500"));
        assert!(!m("elapsed=>=500"));
        assert!(m("code=<500&code=>=200"));
        assert!(m("code=250"));
        assert!(m("to=*"));
        assert!(m("queue-id=!*"));
        assert!(!m("queue-id=*"));
        assert!(m("event=smtp.*,auth.failed"));
        assert!(m("event=smtp.rcpt-to"));
        assert!(!m("event=auth.*"));
        assert!(m("event=smtp.*,!smtp.connection-*"));
        assert!(!m("event=smtp.*,!smtp.rcpt-*"));
        assert!(m("level=debug"), "smtp.rcpt-to is info in the catalogue");
        assert!(m("level=info"));
        assert!(!m("level=warn"));
        assert!(m("filter=mailbox"));
        assert!(m("domain=*.org&filter=FULL&size=>1&level=info&event=smtp.*"));
        assert!(mq("(remote-ip:10.0.0.0/8 OR domain:*.example.net) AND NOT event:auth.* AND size>1000000"));
        assert!(!mq(
            "(remote-ip:10.0.0.0/8 OR domain:*.example.net) AND NOT event:smtp.rcpt-to AND size>1000000"
        ));
        assert!(mq("\"mailbox full\" to:y@BANK.com"));
        assert!(mq("NOT level>=warn"));
        assert!(!mq("()  AND NOT ()"));
        let mquiet = |s: &str| pairs(&k, s).eval(&quiet);
        assert!(mquiet("remote-ip=2001:db8::/32&level=debug&event=AUTH.*"), "auth.failed is debug");
        assert!(!mquiet("level=info"));
        assert!(mquiet("remote-ip=::/0"));
        assert!(!mquiet("remote-ip=0.0.0.0/0"));
        assert!(mquiet("size=!>5"), "no size at all");
    }

    #[test]
    fn round_trips_examples() {
        let (_, k) = setup();
        let cases = [
            "(remote-ip:10.0.0.0/8 OR domain:*.example.org) AND NOT event:smtp.rcpt-to AND size>1000000",
            "a OR b AND c",
            "(a OR b) AND c",
            "a AND (b AND c)",
            "(a OR b) OR c",
            "NOT NOT a",
            "NOT (a AND b)",
            "NOT (a OR b) OR NOT c",
            "a AND ()",
            "\"and\" OR \"or\" OR \"not\"",
            "\"a b\" \"x:y\" \"q\\\"uote\" \"back\\\\slash\"",
            "reason:\"a,b\" reason:\"*\" reason:\"!x\" reason:\" lead\"",
            "reason:a\\,b* reason:\\!* reason:\\ x? url:http\\:\\/\\/*",
            "from:*@bank.* to:x?@y.org event:smtp.* event:* event:\"*\"",
            "remote-ip:2001:db8::/32 remote-ip:::1 remote-ip:0.0.0.0/0 local-ip:::/0",
            "size>=5 size<-5.5 size<=0 code>1 elapsed>0.25",
            "queue-id:* NOT queue-id:* queue-id:42 tls:true",
            "level:trace level>debug level<error level<=warn",
            "filter:\"x*y\" \"10.0.0.5\" 10.0.0.5 é",
        ];
        for s in cases {
            let e = q(&k, s);
            let printed = e.to_string();
            assert_eq!(q(&k, &printed), e, "{s} printed as {printed}");
            assert_eq!(q(&k, &printed).to_string(), printed);
        }
        // The pair form prints as its expression form.
        for s in
            ["domain=*.org&domain=!a.org&remote-ip=10.0.0.0/8&filter=X", "event=smtp.*,auth.*&level=warn"]
        {
            let e = pairs(&k, s);
            assert_eq!(q(&k, &e.to_string()), e, "{s}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        const CHARS: &[char] = &[
            'a', 'B', 'z', '0', '9', ' ', '\t', '.', ',', '*', '?', '!', '"', '\\', '(', ')', '<', '>', ':',
            '=', '/', '@', '-', '_', 'é', 'ß', 'Ω', '\'', '&', '%',
        ];

        fn string(lo: usize, hi: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(CHARS), lo..hi).prop_map(|v| v.into_iter().collect())
        }

        fn lower(s: &str) -> String {
            let mut out = String::new();
            lowercase_into(s, &mut out);
            out
        }

        fn glob_of(fold: bool, keyed: bool) -> impl Strategy<Value = Glob> {
            let part = prop_oneof![
                string(1, 4).prop_map(move |s| GlobPart::Lit(if fold { lower(&s) } else { s })),
                Just(GlobPart::Star),
                Just(GlobPart::One),
            ];
            prop::collection::vec(part, 1..5).prop_map(move |mut parts| {
                let mut g = Glob::new(parts.clone());
                if !g.has_wildcard() {
                    parts.push(GlobPart::One);
                    g = Glob::new(parts);
                }
                if keyed && g.parts() == [GlobPart::Star] {
                    g = Glob::new([GlobPart::Lit("x".into()), GlobPart::Star]);
                }
                g
            })
        }

        fn op() -> impl Strategy<Value = CmpOp> {
            prop::sample::select(&[CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge][..])
        }

        fn leaf(fields: Vec<Field>) -> impl Strategy<Value = Expr> {
            let f = move |name: &str| {
                fields
                    .iter()
                    .find(|f| matches!(f, Field::Key { param, .. } if &**param == name))
                    .unwrap()
                    .clone()
            };
            let (dom, ip, size, reason, tls) =
                (f("domain"), f("remote-ip"), f("size"), f("reason"), f("tls"));
            let term = |field: Field, pred: Pred| Expr::Term(Term { field, pred });
            let d1 = dom.clone();
            let d2 = dom.clone();
            let i1 = ip.clone();
            let i2 = ip.clone();
            let i3 = ip.clone();
            let r1 = reason.clone();
            let r2 = reason.clone();
            let s1 = size.clone();
            let s2 = size.clone();
            let levels = prop::sample::select(
                &[Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error][..],
            );
            prop_oneof![
                string(1, 10).prop_map(move |s| term(r1.clone(), Pred::Eq(s))),
                string(1, 10).prop_map(move |s| term(
                    d1.clone(),
                    Pred::Eq(KeyKind::Folded.canonical_query(&s).unwrap())
                )),
                any::<u32>().prop_map(move |a| term(
                    i1.clone(),
                    Pred::Eq(KeyKind::Ip.canonical_query(&std::net::Ipv4Addr::from(a).to_string()).unwrap())
                )),
                any::<u128>().prop_map(move |a| term(
                    i2.clone(),
                    Pred::Eq(KeyKind::Ip.canonical_query(&std::net::Ipv6Addr::from(a).to_string()).unwrap())
                )),
                any::<i64>().prop_map(move |n| term(s1.clone(), Pred::Eq(n.to_string()))),
                any::<bool>().prop_map(move |b| term(tls.clone(), Pred::Eq(b.to_string()))),
                glob_of(false, true).prop_map(move |g| term(r2.clone(), Pred::Glob(g))),
                glob_of(true, true).prop_map(move |g| term(d2.clone(), Pred::Glob(g))),
                (any::<u32>(), 0..=32u8).prop_map(move |(a, l)| term(
                    i3.clone(),
                    Pred::Cidr(Cidr::new(std::net::Ipv4Addr::from(a).into(), l).unwrap())
                )),
                (any::<u128>(), 0..=128u8).prop_map(move |(a, l)| term(
                    ip.clone(),
                    Pred::Cidr(Cidr::new(std::net::Ipv6Addr::from(a).into(), l).unwrap())
                )),
                (op(), any::<i64>(), prop::option::of(0..1000u32)).prop_map(move |(o, n, frac)| {
                    let text = match frac {
                        Some(f) => format!("{n}.{f:03}"),
                        None => n.to_string(),
                    };
                    term(size.clone(), Pred::Cmp(o, Number::parse(&text).unwrap()))
                }),
                Just(term(s2.clone(), Pred::Present)),
                string(1, 10).prop_map(move |s| term(Field::Event, Pred::Eq(lower(&s)))),
                glob_of(true, false).prop_map(move |g| term(Field::Event, Pred::Glob(g))),
                (op(), levels).prop_map(move |(o, l)| term(Field::Level, Pred::Level(o, l))),
                string(1, 10)
                    .prop_filter("no control", |s| !s.chars().any(char::is_control))
                    .prop_map(move |s| term(Field::Text, Pred::Contains(lower(&s)))),
            ]
        }

        fn expr(fields: Vec<Field>) -> impl Strategy<Value = Expr> {
            leaf(fields).prop_recursive(5, 64, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::And),
                    prop::collection::vec(inner.clone(), 2..5).prop_map(Expr::Or),
                    inner.prop_map(Expr::negate),
                ]
            })
        }

        #[test]
        fn generated_asts_round_trip() {
            let (_, k) = setup();
            let fields: Vec<Field> =
                ["domain", "remote-ip", "size", "reason", "tls"].iter().map(|p| key(&k, p)).collect();
            let limits = Limits { max_query_bytes: 1 << 20, max_terms: 1 << 16, ..Limits::default() };
            let mut runner = TestRunner::new(Config { cases: 1000, ..Config::default() });
            runner
                .run(&expr(fields), |e| {
                    let printed = e.to_string();
                    let back = parse_expr(&printed, &k, &limits);
                    prop_assert_eq!(back.as_ref(), Ok(&e), "printed: {}", printed);
                    Ok(())
                })
                .unwrap();
        }

        #[test]
        fn arbitrary_input_never_panics() {
            let (_, k) = setup();
            let mut runner = TestRunner::new(Config { cases: 2000, ..Config::default() });
            let src = prop::collection::vec(
                prop_oneof![
                    prop::sample::select(CHARS).prop_map(|c| c.to_string()),
                    prop::sample::select(
                        &[
                            " AND ",
                            " OR ",
                            "NOT ",
                            "domain:",
                            "size>",
                            "remote-ip:",
                            "level:",
                            "event:",
                            "(",
                            ")",
                            "&q="
                        ][..]
                    )
                    .prop_map(str::to_string),
                ],
                0..40,
            )
            .prop_map(|v| v.concat());
            runner
                .run(&src, |s| {
                    if let Ok(e) = parse_expr(&s, &k, &Limits::default()) {
                        let printed = e.to_string();
                        let again =
                            parse_expr(&printed, &k, &Limits { max_terms: 1 << 16, ..Limits::default() });
                        prop_assert_eq!(again.as_ref(), Ok(&e), "{} printed as {}", s, printed);
                    }
                    let _ = parse_pairs(&s, &k, &Limits::default());
                    Ok(())
                })
                .unwrap();
        }
    }
}
