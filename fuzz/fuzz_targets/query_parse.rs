//! Fuzz target `query_parse`: arbitrary text through both query parsers, checking they never
//! panic, that every accepted query prints to a `q=` form that parses back to itself, and that
//! `q=` in the pair form means what `parse_expr` says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livetap::event::{Catalogue, KeyRegistry};
use livetap::query::{parse_expr, parse_pairs, Expr, Limits};
use std::sync::OnceLock;

/// The key registry the parser resolves names against. Loading the embedded catalogue parses
/// a large JSON file, so it is done once per process rather than once per input.
fn keys() -> &'static KeyRegistry {
    static SETUP: OnceLock<(Catalogue, KeyRegistry)> = OnceLock::new();
    &SETUP.get_or_init(|| Catalogue::with_keys(1024)).1
}

/// Limits for re-parsing printed expressions. Printing may add quotes, escapes and
/// parentheses, so the printed form of an accepted query can exceed the default limits
/// without that being a bug; only the depth stays capped (at the parser's hard cap of 256).
const GENEROUS: Limits =
    Limits { max_query_bytes: 1 << 20, max_terms: 1 << 16, max_text_bytes: 1 << 16, max_depth: 256 };

/// Asserts the round-trip property: printing `e` and parsing the result gives `e` again.
fn assert_round_trip(input: &str, form: &str, e: &Expr, keys: &KeyRegistry) {
    let printed = e.to_string();
    match parse_expr(&printed, keys, &GENEROUS) {
        Ok(back) => assert!(
            back == *e,
            "round trip changed the expression\n input ({form}): {input:?}\n printed: {printed:?}\n \
             reprinted: {:?}\n parsed: {e:?}\n reparsed: {back:?}",
            back.to_string()
        ),
        Err(err) => panic!(
            "printed form does not parse\n input ({form}): {input:?}\n printed: {printed:?}\n \
             error: {err}\n parsed: {e:?}"
        ),
    }
}

/// Percent-encodes every byte except ASCII letters and digits, so that the pair form decodes
/// the value back to exactly `s` (a literal `+` would otherwise become a space).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    // Invalid UTF-8 becomes U+FFFD, as a server would see after lossy decoding; the parsers
    // take `&str`, so this is the only way raw bytes reach them.
    let input = String::from_utf8_lossy(data);
    let limits = Limits::default();

    if let Ok(parsed) = parse_pairs(&input, keys, &limits) {
        assert_round_trip(&input, "pairs", &parsed.expr, keys);
    }
    let expr = parse_expr(&input, keys, &limits);
    if let Ok(e) = &expr {
        assert_round_trip(&input, "q=", e, keys);
    }

    // The same text as the one `q=` parameter of a URL must give the same expression, or be
    // refused likewise. Encoding triples the length, so the pair form gets a byte limit that
    // fits the encoded URL; text over the default byte limit is skipped, since only
    // `parse_expr` would refuse it. The term, text and depth limits are the same for both.
    if input.len() <= limits.max_query_bytes {
        let url = format!("q={}", percent_encode(&input));
        let long = Limits { max_query_bytes: url.len().max(limits.max_query_bytes), ..limits };
        let in_pairs = parse_pairs(&url, keys, &long).map(|p| p.expr);
        let same = match (&in_pairs, &expr) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        assert!(
            same,
            "q= in the pair form differs from parse_expr\n input: {input:?}\n pairs: {in_pairs:?}\n \
             parse_expr: {expr:?}"
        );
    }
});
