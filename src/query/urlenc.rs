//! Strict decoding of query strings (`name=value&...`, `application/x-www-form-urlencoded`).
//!
//! `form_urlencoded::parse` is lenient: it turns decoded bytes that are not UTF-8 into U+FFFD
//! and keeps a `%` that is not followed by two hex digits as a literal `%`. A query would then
//! mean something other than what the client sent (`domain=%c3%28` became a search for
//! `\u{FFFD}(`), and SECURITY.md promises a `400` naming the parameter instead. [`pairs`]
//! splits and decodes the same way for every valid input, and refuses the rest with a
//! [`ParseError`]. Every reader of a client's query string goes through it.

use super::ParseError;
use std::borrow::Cow;
use std::iter::FusedIterator;

/// What a value must be, in [`ParseError::expected`], when a `%` is not followed by two hex
/// digits.
pub const EXPECTED_ESCAPE: &str = "a valid percent-encoding (%XX)";
/// What a value must be when its decoded bytes are not UTF-8.
pub const EXPECTED_UTF8: &str = "UTF-8 text";
/// What a name must be when a `%` in it is not followed by two hex digits.
pub const EXPECTED_NAME_ESCAPE: &str = "a parameter name with a valid percent-encoding (%XX)";
/// What a name must be when its decoded bytes are not UTF-8.
pub const EXPECTED_NAME_UTF8: &str = "a parameter name in UTF-8 text";

/// The decoded `(name, value)` pairs of `query`, in order, splitting and decoding as
/// `form_urlencoded::parse` does: pairs are separated by `&` (empty ones are skipped), a name
/// ends at its first `=` (none means an empty value), `+` is a space and `%XX` (hex, either
/// case) is the byte XX.
///
/// A `%` without two hex digits after it, or decoded bytes that are not UTF-8, is an error:
/// [`ParseError::parameter`] is the name (as far as it decodes, when the name itself is bad),
/// [`ParseError::position`] the byte offset in the decoded value (in the decoded name, when
/// the name is bad) where the bad escape or byte starts. The iterator ends after an error.
/// A name or value without `%` or `+` is borrowed from `query`, not copied.
pub fn pairs(query: &str) -> Pairs<'_> {
    Pairs { rest: query }
}

/// The iterator of [`pairs`].
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(Cow<'a, str>, Cow<'a, str>), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (pair, rest) = self.rest.split_once('&').unwrap_or((self.rest, ""));
            self.rest = rest;
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = match decode(name) {
                Err(bad) => {
                    let expected = if bad.utf8 { EXPECTED_NAME_UTF8 } else { EXPECTED_NAME_ESCAPE };
                    Err(ParseError { parameter: bad.prefix, position: bad.at, expected: expected.into() })
                }
                Ok(name) => match decode(value) {
                    Err(bad) => {
                        let expected = if bad.utf8 { EXPECTED_UTF8 } else { EXPECTED_ESCAPE };
                        Err(ParseError {
                            parameter: name.into_owned(),
                            position: bad.at,
                            expected: expected.into(),
                        })
                    }
                    Ok(value) => Ok((name, value)),
                },
            };
            // A caller that goes on after an error must not read the pairs behind it as if
            // the query were well-formed.
            if decoded.is_err() {
                self.rest = "";
            }
            return Some(decoded);
        }
    }
}

impl FusedIterator for Pairs<'_> {}

/// Why one name or value could not be decoded.
struct Bad {
    /// The decoded bytes were not UTF-8 (otherwise: a `%` without two hex digits).
    utf8: bool,
    /// Offset in the decoded bytes where the bad escape or byte starts.
    at: usize,
    /// The decoded text before the problem, for naming a bad parameter.
    prefix: String,
}

/// Decodes one name or value: `+` is a space, `%XX` is a byte, and the result must be UTF-8.
fn decode(raw: &str) -> Result<Cow<'_, str>, Bad> {
    let bytes = raw.as_bytes();
    let Some(first) = memchr::memchr2(b'%', b'+', bytes) else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            out.push(b' ');
            i += 1;
        } else if bytes[i] == b'%' {
            match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                _ => return Err(bad_escape(out)),
            }
            i += 3;
        } else {
            // Copies the run up to the next special byte in one go.
            let run = memchr::memchr2(b'%', b'+', &bytes[i..]).unwrap_or(bytes.len() - i);
            out.extend_from_slice(&bytes[i..i + run]);
            i += run;
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Bad { utf8: true, at, prefix: valid_prefix(e.into_bytes(), at) }
    })
}

/// The error for a `%` without two hex digits after `out`, unless a byte before it is already
/// not UTF-8: the first problem in reading order is the one reported.
fn bad_escape(out: Vec<u8>) -> Bad {
    match std::str::from_utf8(&out) {
        Err(e) if e.error_len().is_some() => {
            let at = e.valid_up_to();
            Bad { utf8: true, at, prefix: valid_prefix(out, at) }
        }
        // A sequence cut short by the bad escape is the escape's fault, not the text's.
        Err(e) => {
            let at = out.len();
            Bad { utf8: false, at, prefix: valid_prefix(out, e.valid_up_to()) }
        }
        Ok(_) => Bad { utf8: false, at: out.len(), prefix: valid_prefix(out, usize::MAX) },
    }
}

/// The first `len` bytes of `bytes` (all of them if fewer), which the caller knows are UTF-8.
fn valid_prefix(mut bytes: Vec<u8>, len: usize) -> String {
    bytes.truncate(len);
    String::from_utf8(bytes).unwrap_or_default()
}

/// The value of one hex digit, either case.
fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(query: &str) -> Vec<(String, String)> {
        pairs(query)
            .map(|p| p.map(|(n, v)| (n.into_owned(), v.into_owned())))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{query:?}: {e}"))
    }

    fn bad(query: &str) -> (String, usize, String) {
        let e = pairs(query)
            .find_map(Result::err)
            .unwrap_or_else(|| panic!("{query:?} was accepted: {:?}", ok(query)));
        (e.parameter, e.position, e.expected)
    }

    fn lenient(query: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn splits_and_decodes_like_form_urlencoded() {
        let cases: [(&str, &[(&str, &str)]); 12] = [
            ("", &[]),
            ("&&&", &[]),
            ("a", &[("a", "")]),
            ("a=", &[("a", "")]),
            ("=", &[("", "")]),
            ("=x", &[("", "x")]),
            ("a=1&&b=2&", &[("a", "1"), ("b", "2")]),
            ("a=b=c", &[("a", "b=c")]),
            ("q=level%3Derror+OR+a%2Bb", &[("q", "level=error OR a+b")]),
            ("domain=ex%61mple.org&DOMAIN=%C3%A9", &[("domain", "example.org"), ("DOMAIN", "é")]),
            ("n%61me=%e2%82%ac&%2B=+", &[("name", "€"), ("+", " ")]),
            ("raw=é;x&x=%00", &[("raw", "é;x"), ("x", "\0")]),
        ];
        for (query, want) in cases {
            assert_eq!(ok(query), owned(want), "{query:?}");
            assert_eq!(ok(query), lenient(query), "{query:?}");
        }
    }

    #[test]
    fn borrows_what_needs_no_decoding() {
        let query = "domain=example.org&q=a+b&x=%41";
        let got: Vec<_> = pairs(query).map(Result::unwrap).collect();
        assert!(matches!(got[0], (Cow::Borrowed("domain"), Cow::Borrowed("example.org"))));
        assert!(matches!(&got[1], (Cow::Borrowed("q"), Cow::Owned(v)) if v == "a b"));
        assert!(matches!(&got[2], (Cow::Borrowed("x"), Cow::Owned(v)) if v == "A"));
    }

    #[test]
    fn refuses_bad_escapes_and_bytes_naming_the_parameter() {
        let cases = [
            ("domain=%c3%28", "domain", 0, EXPECTED_UTF8),
            ("filter=%ff%fe", "filter", 0, EXPECTED_UTF8),
            ("q=%ff", "q", 0, EXPECTED_UTF8),
            ("q=ab+%ff", "q", 3, EXPECTED_UTF8),
            ("q=%c3", "q", 0, EXPECTED_UTF8),
            ("domain=%zz", "domain", 0, EXPECTED_ESCAPE),
            ("domain=50%", "domain", 2, EXPECTED_ESCAPE),
            ("domain=5%4", "domain", 1, EXPECTED_ESCAPE),
            ("domain=%+41", "domain", 0, EXPECTED_ESCAPE),
            ("a=1&domain=%%41", "domain", 0, EXPECTED_ESCAPE),
            ("q=%41%4%41", "q", 1, EXPECTED_ESCAPE),
            ("q=%e2%82%zz", "q", 2, EXPECTED_ESCAPE),
            ("q=%ff%zz", "q", 0, EXPECTED_UTF8),
            ("q=%e9", "q", 0, EXPECTED_UTF8),
            ("q=%ed%a0%80", "q", 0, EXPECTED_UTF8),
            ("q=%c0%80", "q", 0, EXPECTED_UTF8),
            ("do%ffmain=x", "do", 2, EXPECTED_NAME_UTF8),
            ("%ff%fe=1", "", 0, EXPECTED_NAME_UTF8),
            ("d%C3%A9j%zz=1", "déj", 4, EXPECTED_NAME_ESCAPE),
            ("a=1&b%=2", "b", 1, EXPECTED_NAME_ESCAPE),
            ("q%e2%82=1", "q", 1, EXPECTED_NAME_UTF8),
        ];
        for (query, param, position, expected) in cases {
            assert_eq!(bad(query), (param.to_string(), position, expected.to_string()), "{query:?}");
        }
    }

    #[test]
    fn the_pairs_before_an_error_decode_and_nothing_comes_after_it() {
        let mut it = pairs("a=1&b=%zz&c=3");
        assert_eq!(it.next().unwrap().unwrap(), (Cow::Borrowed("a"), Cow::Borrowed("1")));
        assert_eq!(it.next().unwrap().unwrap_err().parameter, "b");
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        fn encode(s: &str) -> String {
            form_urlencoded::byte_serialize(s.as_bytes()).collect()
        }

        #[test]
        fn encoded_pairs_round_trip() {
            let mut runner = TestRunner::new(Config { cases: 2000, ..Config::default() });
            let list = prop::collection::vec((any::<String>(), any::<String>()), 0..6);
            runner
                .run(&list, |list| {
                    let query: Vec<String> =
                        list.iter().map(|(n, v)| format!("{}={}", encode(n), encode(v))).collect();
                    let query = query.join("&");
                    // An empty pair (`=`) is kept: only a pair with nothing at all is skipped.
                    prop_assert_eq!(ok(&query), list.clone(), "{}", query);
                    prop_assert_eq!(ok(&query), lenient(&query), "{}", query);
                    Ok(())
                })
                .unwrap();
        }

        /// Pieces of hostile queries. No piece sequence can decode to U+FFFD (which `%ef`,
        /// `%bf` and `%bd` together would), so U+FFFD in the lenient reading means that it
        /// replaced bytes that were not UTF-8.
        const PIECES: &[&str] = &[
            "a", "Z", "0", "9", "f", "F", "=", "&", "+", "%", "%2", "%41", "%2b", "%3D", "%26", "%c3", "%A9",
            "%28", "%e2", "%82", "%ac", "%ff", "%zz", "%%", "é", "€", " ", ";",
        ];

        /// True when every `%` in `query` is followed by two hex digits.
        fn escapes_are_whole(query: &str) -> bool {
            let b = query.as_bytes();
            (0..b.len()).filter(|&i| b[i] == b'%').all(|i| {
                b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
            })
        }

        #[test]
        fn strict_is_lenient_on_valid_input_and_refuses_exactly_the_rest() {
            let mut runner = TestRunner::new(Config { cases: 4000, ..Config::default() });
            let query = prop::collection::vec(prop::sample::select(PIECES), 0..24).prop_map(|v| v.concat());
            runner
                .run(&query, |query| {
                    let loose = lenient(&query);
                    let valid = escapes_are_whole(&query)
                        && loose.iter().all(|(n, v)| !n.contains('\u{FFFD}') && !v.contains('\u{FFFD}'));
                    let strict: Result<Vec<_>, _> =
                        pairs(&query).map(|p| p.map(|(n, v)| (n.into_owned(), v.into_owned()))).collect();
                    match strict {
                        Ok(got) => {
                            prop_assert!(valid, "{} was accepted", query);
                            prop_assert_eq!(got, loose, "{}", query);
                        }
                        Err(e) => {
                            prop_assert!(!valid, "{} was refused: {}", query, e);
                            prop_assert!(
                                [EXPECTED_ESCAPE, EXPECTED_UTF8, EXPECTED_NAME_ESCAPE, EXPECTED_NAME_UTF8]
                                    .contains(&e.expected.as_str()),
                                "{}",
                                e
                            );
                        }
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
}
