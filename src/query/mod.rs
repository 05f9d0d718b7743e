//! Live-stream filters: parsing the URL parameters into a [`Filter`], and its reference meaning.
//!
//! The semantics (documented in the README):
//! - `filter=TEXT`: case-insensitive substring over the event type and every string-like value;
//! - `kebab-key=VALUE`: exact match on that key, canonicalised per key kind (case-insensitive
//!   for domains and addresses, parsed for IPs and integers);
//! - the same parameter repeated means OR, distinct parameters combine with AND;
//! - `follow=false` turns span following off; `token` is reserved for live tokens.
//!
//! [`Filter::matches`] is the naive reference evaluator: the compiled index in `matcher` must
//! agree with it on every event, which the property tests check. It does no I/O and no async.

pub mod ast;
pub mod parse;
use crate::event::keys::{lowercase_into, KeyId, KeyRegistry};
use crate::event::Event;
use std::sync::Arc;

/// Size limits on one query, so a hostile URL cannot make compilation or matching expensive.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Longest accepted query string, in bytes.
    pub max_query_bytes: usize,
    /// Most parameters (terms) in one query.
    pub max_terms: usize,
    /// Longest `filter=` text, in bytes.
    pub max_text_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { max_query_bytes: 8192, max_terms: 64, max_text_bytes: 256 }
    }
}

/// Distinct constraints (keys plus `filter`) one subscriber may combine; the matcher keeps one
/// bit per constraint.
pub const MAX_CLAUSES: usize = 32;

/// A constraint on one key: the event must carry one of `values` (canonical form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClause {
    /// The key.
    pub key: KeyId,
    /// The parameter name it was given as (for messages).
    pub param: Arc<str>,
    /// Accepted canonical values (OR).
    pub values: Vec<String>,
}

/// A subscriber's filter: every key clause and, if present, the text clause must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Lowercase substrings; one of them must occur (OR). Empty: no text constraint.
    pub text: Vec<String>,
    /// Key constraints (AND across clauses).
    pub keys: Vec<KeyClause>,
}

impl Filter {
    /// True when the filter accepts every event.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.keys.is_empty()
    }

    /// The reference meaning of a filter, evaluated naively against one event.
    pub fn matches(&self, ev: &Event) -> bool {
        let keys_ok = self.keys.iter().all(|c| ev.values_of(c.key).any(|v| c.values.iter().any(|w| w == v)));
        let text_ok = self.text.is_empty() || self.text.iter().any(|t| ev.search_text().contains(t.as_str()));
        keys_ok && text_ok
    }
}

/// A parsed live-stream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveQuery {
    /// What to match.
    pub filter: Filter,
    /// Whether a match pulls in the rest of its span.
    pub follow: bool,
    /// A live token (`?token=`), for browsers that cannot send headers.
    pub token: Option<String>,
}

/// Why a query was refused; every variant is a 400 naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The parameter is neither a known key nor a reserved word.
    #[error("unknown parameter `{0}`")]
    UnknownParameter(String),
    /// The value does not fit the key's kind.
    #[error("invalid value for `{param}`: expected {expected}")]
    BadValue {
        /// The parameter.
        param: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The query string is too long.
    #[error("query longer than {0} bytes")]
    TooLong(usize),
    /// Too many parameters or clauses.
    #[error("too many terms (at most {0})")]
    TooManyTerms(usize),
}

impl QueryError {
    /// The parameter the error is about, when there is one.
    pub fn parameter(&self) -> Option<&str> {
        match self {
            QueryError::UnknownParameter(p) | QueryError::BadValue { param: p, .. } => Some(p),
            _ => None,
        }
    }
}

/// Parses the query string of a live-traces request.
pub fn parse_live_query(
    query: &str,
    keys: &KeyRegistry,
    limits: &QueryLimits,
) -> Result<LiveQuery, QueryError> {
    if query.len() > limits.max_query_bytes {
        return Err(QueryError::TooLong(limits.max_query_bytes));
    }
    let mut out = LiveQuery { filter: Filter::default(), follow: true, token: None };
    let mut terms = 0;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        terms += 1;
        if terms > limits.max_terms {
            return Err(QueryError::TooManyTerms(limits.max_terms));
        }
        let bad = |expected| QueryError::BadValue { param: name.to_string(), expected };
        match name.as_ref() {
            "filter" => {
                if value.is_empty() {
                    // Stalwart's own web UI sends `filter=` with an empty box; it means no filter.
                    continue;
                }
                if value.len() > limits.max_text_bytes {
                    return Err(bad("at most 256 bytes of text"));
                }
                if value.chars().any(char::is_control) {
                    return Err(bad("text without control characters"));
                }
                let mut needle = String::with_capacity(value.len());
                lowercase_into(&value, &mut needle);
                if !out.filter.text.contains(&needle) {
                    out.filter.text.push(needle);
                }
            }
            "follow" => {
                out.follow = match value.as_ref() {
                    "true" | "1" | "yes" | "" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            "token" => out.token = Some(value.into_owned()),
            param => {
                let Some((id, info)) = keys.lookup_param(param) else {
                    return Err(QueryError::UnknownParameter(param.to_string()));
                };
                if value.is_empty() {
                    return Err(bad("a non-empty value"));
                }
                let canon = info.kind.canonical_query(&value).map_err(bad)?;
                match out.filter.keys.iter_mut().find(|c| c.key == id) {
                    Some(c) => {
                        if !c.values.contains(&canon) {
                            c.values.push(canon);
                        }
                    }
                    None => {
                        out.filter.keys.push(KeyClause { key: id, param: info.param, values: vec![canon] })
                    }
                }
            }
        }
    }
    if out.filter.keys.len() + usize::from(!out.filter.text.is_empty()) > MAX_CLAUSES {
        return Err(QueryError::TooManyTerms(MAX_CLAUSES));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder, RawValue};

    fn keys() -> (Catalogue, KeyRegistry) {
        Catalogue::with_keys(1024)
    }

    #[test]
    fn parses_pairs() {
        let (_, k) = keys();
        let q = parse_live_query(
            "remote-ip=10.0.0.5&remote-ip=10.0.0.6&domain=Example.ORG&filter=Spam&follow=false",
            &k,
            &QueryLimits::default(),
        )
        .unwrap();
        assert!(!q.follow);
        assert_eq!(q.filter.text, vec!["spam"]);
        assert_eq!(q.filter.keys.len(), 2);
        assert_eq!(q.filter.keys[0].values, vec!["10.0.0.5", "10.0.0.6"]);
        assert_eq!(q.filter.keys[1].values, vec!["example.org"]);
    }

    #[test]
    fn errors_name_the_parameter() {
        let (_, k) = keys();
        let l = QueryLimits::default();
        let e = parse_live_query("remote_ip=1", &k, &l).unwrap_err();
        assert_eq!(e.parameter(), Some("remote_ip"));
        let e = parse_live_query("remote-ip=10.0.0.999", &k, &l).unwrap_err();
        assert_eq!(e, QueryError::BadValue { param: "remote-ip".into(), expected: "an IP address" });
        let e = parse_live_query("queue-id=abc", &k, &l).unwrap_err();
        assert_eq!(e.parameter(), Some("queue-id"));
        assert!(parse_live_query("domain=", &k, &l).is_err());
        assert!(parse_live_query("follow=maybe", &k, &l).is_err());
        assert!(parse_live_query(&"a=b&".repeat(5000), &k, &l).is_err());
        assert!(parse_live_query("filter=", &k, &l).unwrap().filter.is_empty());
    }

    #[test]
    fn reference_semantics() {
        let (c, k) = keys();
        let mut b = EventBuilder::new(&c, &k);
        let raw = RawValue::parse_serde(
            br#"{"type":"smtp.rcpt-to","data":{"to":["x@Example.org"],"remoteIp":"10.0.0.5"}}"#,
        )
        .unwrap();
        let ev = b.build(&raw, 0).unwrap();
        let l = QueryLimits::default();
        let m = |q: &str| parse_live_query(q, &k, &l).unwrap().filter.matches(&ev);
        assert!(m(""));
        assert!(m("to=X@example.ORG"));
        assert!(m("to=nobody@x&to=x@example.org"));
        assert!(!m("to=x@example.org&remote-ip=10.0.0.6"));
        assert!(m("remote-ip=10.0.0.5&filter=RCPT"));
        assert!(m("filter=example.org"));
        assert!(parse_live_query("filter=a%01b", &k, &l).is_err());
    }
}
