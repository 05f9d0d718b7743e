//! "Did you mean": the known parameter name nearest to one a request used, which decides
//! whether an unknown live-stream parameter is a typo (refused, with the suggestion) or a name
//! some client adds for its own purposes (ignored).
//!
//! Stalwart ignores every parameter it does not know, and classic clients rely on that
//! (cache busters such as `_=1700000000`, a proxy's or a framework's own parameters). livetap
//! used to refuse them all with a `400`, which breaks those clients; ignoring them all would
//! turn a mistyped key (`remote_ip=`, `domian=`) into an unfiltered stream without a word. The
//! line between the two is an edit distance: case is ignored, an adjacent transposition
//! counts as one edit, and how many edits still count as "near" grows with the name's length
//! ([`allowed_edits`]), so that short unrelated names (`_`, `t`, `ts`) are never mistaken for
//! short keys (`q`, `to`, `id`).

/// How many edits a name of `len` characters may be from a known one and still be taken for a
/// typo of it: none below three characters (only a different case), one up to five, two
/// beyond.
pub fn allowed_edits(len: usize) -> usize {
    match len {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    }
}

/// The optimal-string-alignment distance between `a` and `b`, ASCII case ignored, if it is at
/// most `max`; `None` when it is larger. Names are compared as bytes; at most 64 of them are
/// looked at (longer names are never near a known one, whose names are shorter).
pub fn distance_within(a: &[u8], b: &[u8], max: usize) -> Option<usize> {
    const CAP: usize = 64;
    if a.len() > CAP || b.len() > CAP || a.len().abs_diff(b.len()) > max {
        return None;
    }
    let eq = |i: usize, j: usize| a[i].eq_ignore_ascii_case(&b[j]);
    // Three rows of the dynamic programme (the one before the previous is needed for a
    // transposition), on the stack: this runs for every known name when a request has an
    // unknown one, and must not allocate per name.
    let mut prev2 = [0usize; CAP + 1];
    let mut prev: [usize; CAP + 1] = std::array::from_fn(|j| j);
    let mut cur = [0usize; CAP + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        let mut row_min = cur[0];
        for j in 1..=b.len() {
            let cost = usize::from(!eq(i - 1, j - 1));
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && eq(i - 1, j - 2) && eq(i - 2, j - 1) {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
            row_min = row_min.min(d);
        }
        if row_min > max {
            return None;
        }
        prev2 = prev;
        prev = cur;
    }
    Some(prev[b.len()]).filter(|&d| d <= max)
}

/// The candidate nearest to `name` within [`allowed_edits`] of its length (the first of
/// equally near ones), if any.
pub fn nearest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let max = allowed_edits(name.chars().count());
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if let Some(d) = distance_within(name.as_bytes(), c.as_bytes(), max) {
            match best {
                Some((bd, _)) if bd <= d => {}
                _ => best = Some((d, c)),
            }
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance_within(b"remote_ip", b"remote-ip", 2), Some(1));
        assert_eq!(distance_within(b"remoteip", b"remoteIp", 0), Some(0), "case is ignored");
        assert_eq!(distance_within(b"domian", b"domain", 2), Some(1), "a transposition is one edit");
        assert_eq!(distance_within(b"filtre", b"filter", 1), Some(1));
        assert_eq!(distance_within(b"kitten", b"sitting", 3), Some(3));
        assert_eq!(distance_within(b"kitten", b"sitting", 2), None);
        assert_eq!(distance_within(b"", b"", 0), Some(0));
        assert_eq!(distance_within(b"abc", b"", 3), Some(3));
        assert_eq!(distance_within(&[b'a'; 65], &[b'a'; 65], 2), None, "too long to be a key");
    }

    #[test]
    fn near_and_far_names() {
        let known = ["remote-ip", "remoteIp", "q", "to", "id", "filter", "follow", "domain", "token"];
        let near = |n: &str| nearest(n, known);
        assert_eq!(near("remote_ip"), Some("remote-ip"));
        assert_eq!(near("remoteip"), Some("remoteIp"));
        assert_eq!(near("REMOTE-IP"), Some("remote-ip"));
        assert_eq!(near("domian"), Some("domain"));
        assert_eq!(near("filtr"), Some("filter"));
        assert_eq!(near("folow"), Some("follow"));
        assert_eq!(near("tokn"), Some("token"));
        assert_eq!(near("Q"), Some("q"));
        for far in ["_", "t", "ts", "v", "cb", "lang", "page", "utm_source", "access_token", "format", ""] {
            assert_eq!(near(far), None, "{far}");
        }
    }
}
