//! Syslog framing: a log line's time, host, program and pid, in every form a mail host
//! writes them, and one `journalctl -o json` entry.
//!
//! [`parse_line`] recognises, line by line:
//!
//! - the traditional log-file form, `Dec  7 13:00:00 mx postfix/smtpd[812]: msg` (rsyslog's
//!   `RSYSLOG_TraditionalFileFormat`), also with a zero-padded day, `Dec 07`, as Postfix's own
//!   `maillog_file` (postlogd) writes it, and with fractional seconds;
//! - the same with an RFC 3339 time, `2026-12-07T13:00:00.123456+01:00 mx postfix/smtpd[812]:
//!   msg`, as Debian's rsyslog writes by default;
//! - RFC 3164 as a syslog listener receives it, `<22>Dec  7 13:00:00 mx postfix/smtpd[812]:
//!   msg`, also without the host (what a local program sends to `/dev/log`), without the pid,
//!   and with an RFC 3339 time (rsyslog's `RSYSLOG_ForwardFormat`);
//! - RFC 5424, `<22>1 2026-12-07T13:00:00.1Z mx postfix/smtpd 812 - - msg`, with or without
//!   structured data, with `-` (NILVALUE) for any header field, and with a BOM before the
//!   message;
//! - Dovecot's own `log_path` file, `Dec 07 13:00:00 imap-login: Info: Login: ...` (its default
//!   `log_timestamp` is `"%b %d %H:%M:%S "`; an ISO `log_timestamp` such as
//!   `"%Y-%m-%d %H:%M:%S "` is read too). Such a line has no host and no pid: it becomes a
//!   record of program `dovecot`, an empty host, and the whole text after the time as its
//!   message (`imap-login: Info: Login: ...`). It is told from a host-less syslog line by the
//!   Dovecot level word after the first `prefix:` (`Info:`, `Warning:`, `Error:`, `Fatal:`,
//!   `Panic:`, `Debug:`), and only in the file form (no `<PRI>`).
//!
//! **Timestamps.** The ISO forms carry their year and zone and are taken as written. The
//! traditional form has neither: its wall-clock time is read in the zone `Clock::utc_offset`
//! names (by default the host's, computed once at start), and it is given whichever year
//! (last year, this year or next year) puts it nearest to `Clock::now`, so a December line
//! read in January is last year's and a January line read on 31 December (a host whose clock
//! runs ahead) is next year's. A followed file holds days or weeks of lines, so its dates are
//! never half a year from now, where "nearest" would turn. A date that exists in none of those years (29 February away
//! from a leap year, 31 April) keeps its line, with no time: the event gets the time it was
//! read. Times are whole seconds; fractions are dropped.
//!
//! Everything here is pure, allocation-free and panic-free on any input (the property tests
//! below feed it cut, altered and random lines): a line that fits none of the forms is `None`,
//! never an error.

use super::LogRecord;

/// What a yearless, zoneless timestamp (`Dec  7 13:00:00`) is read against.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now, in seconds since the Unix epoch: a yearless time is given the year that puts it
    /// nearest to now.
    pub now: i64,
    /// The offset from UTC, in seconds, of the zone the log was written in.
    pub utc_offset: i32,
}

/// Cuts one log line into a [`LogRecord`], or `None` when it has no recognisable framing.
///
/// The forms and the timestamp rules are described in the [module documentation](self).
pub fn parse_line<'a>(line: &'a str, clock: &Clock) -> Option<LogRecord<'a>> {
    if line.as_bytes().first() == Some(&b'<') {
        let rest = &line[pri_end(line.as_bytes())?..];
        if let Some(r) = rest.strip_prefix("1 ") {
            return rfc5424(r, clock);
        }
        // RFC 3164 as received, or rsyslog's forwarding format with an RFC 3339 time. A sender
        // that left the time out (which RFC 3164 allows) still has its header read.
        return match timestamp(rest, clock) {
            Some((time, after)) => header(after, time, false),
            None => header(rest, None, false),
        };
    }
    let (time, after) = timestamp(line, clock)?;
    header(after, time, true)
}

/// The index just past `<PRI>`: one to three digits, at most 191 (facility 23, severity 7).
fn pri_end(b: &[u8]) -> Option<usize> {
    let mut value = 0u32;
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'0'..=b'9' if i <= 3 => value = value * 10 + u32::from(c - b'0'),
            b'>' if i > 1 && value <= 191 => return Some(i + 1),
            _ => return None,
        }
        i += 1;
    }
    None
}

/// Reads a timestamp at the start of `s` (traditional or ISO) and the space after it;
/// returns the time (`None` for a date that exists in no nearby year) and the rest.
fn timestamp<'a>(s: &'a str, clock: &Clock) -> Option<(Option<i64>, &'a str)> {
    let b = s.as_bytes();
    let (time, end) = if b.first().is_some_and(u8::is_ascii_digit) {
        let (t, end) = iso(b, clock)?;
        (Some(t), end)
    } else {
        let (month, day, sod, end) = traditional(b)?;
        (nearest_year(month, day, sod, clock), end)
    };
    // One space ends the timestamp (`get` keeps a line that ends here from slicing past it).
    if b.get(end) != Some(&b' ') {
        return None;
    }
    Some((time, s.get(end + 1..)?))
}

/// `Mmm dd hh:mm:ss[.frac]`, the day space-padded (`Dec  7`), zero-padded (`Dec 07`) or bare
/// (`Dec 7`). Returns the month (1-12), the day, the second of the day and the end index.
fn traditional(b: &[u8]) -> Option<(u32, u32, i64, usize)> {
    let month = month(b.get(..3)?)?;
    if b.get(3) != Some(&b' ') {
        return None;
    }
    let mut i = 4;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut day = 0u32;
    let start = i;
    while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
        if i - start == 2 {
            return None;
        }
        day = day * 10 + u32::from(c - b'0');
        i += 1;
    }
    if i == start || !(1..=31).contains(&day) || b.get(i) != Some(&b' ') {
        return None;
    }
    let (sod, end) = clock_time(b, i + 1)?;
    Some((month, day, sod, end))
}

/// A month's English abbreviation, in any case, as its number.
fn month(m: &[u8]) -> Option<u32> {
    const NAMES: [&[u8; 3]; 12] =
        [b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"];
    let lower = [m[0].to_ascii_lowercase(), m[1].to_ascii_lowercase(), m[2].to_ascii_lowercase()];
    NAMES.iter().position(|n| **n == lower).map(|i| i as u32 + 1)
}

/// Two ASCII digits at `i` as a number.
fn two(b: &[u8], i: usize) -> Option<u32> {
    let (h, l) = (*b.get(i)?, *b.get(i + 1)?);
    (h.is_ascii_digit() && l.is_ascii_digit()).then(|| u32::from(h - b'0') * 10 + u32::from(l - b'0'))
}

/// `hh:mm:ss` at `i`, then optional fractional digits, which are skipped. Returns the second
/// of the day and the end index. A leap second (`:60`) counts as the next minute's first.
fn clock_time(b: &[u8], i: usize) -> Option<(i64, usize)> {
    let (h, m, s) = (two(b, i)?, two(b, i + 3)?, two(b, i + 6)?);
    if b.get(i + 2) != Some(&b':') || b.get(i + 5) != Some(&b':') || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut end = i + 8;
    if b.get(end) == Some(&b'.') {
        end += 1;
        let digits = end;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == digits {
            return None;
        }
    }
    Some((i64::from(h * 3600 + m * 60 + s), end))
}

/// `YYYY-MM-DD(T|t| )hh:mm:ss[.frac][Z|±hh:mm|±hhmm]`: the time in seconds since the epoch and
/// the end index. Without a zone (Dovecot's ISO `log_timestamp`), the clock's zone is used.
fn iso(b: &[u8], clock: &Clock) -> Option<(i64, usize)> {
    let year = i64::from(two(b, 0)? * 100 + two(b, 2)?);
    let (month, day) = (two(b, 5)?, two(b, 8)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let (sod, mut end) = clock_time(b, 11)?;
    let offset = match b.get(end) {
        Some(b'Z' | b'z') => {
            end += 1;
            0
        }
        Some(&sign) if sign == b'+' || sign == b'-' => {
            let h = two(b, end + 1)?;
            let colon = usize::from(b.get(end + 3) == Some(&b':'));
            let m = two(b, end + 3 + colon)?;
            if h > 23 || m > 59 {
                return None;
            }
            end += 5 + colon;
            let secs = i64::from(h * 3600 + m * 60);
            if sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => i64::from(clock.utc_offset),
    };
    Some((days_from_civil(year, month, day) * 86_400 + sod - offset, end))
}

/// Whether `year` is a leap year in the proleptic Gregorian calendar.
fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The number of days of `month` (1-12) in `year`.
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
/// Callers keep `year` within a few thousand years of now, so nothing overflows.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a day counted from 1970-01-01 (the inverse of [`days_from_civil`], year only).
fn year_of(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    yoe + era * 400 + i64::from(mp >= 10)
}

/// Seconds in 10,000 years: a clock beyond this is not a clock, and keeping within it keeps
/// the calendar arithmetic far from overflow.
const SANE_SECONDS: i64 = 10_000 * 366 * 86_400;

/// The time of a yearless date read in the clock's zone, in the year (last, this or next)
/// that puts it nearest to now; `None` if the date exists in none of them.
fn nearest_year(month: u32, day: u32, sod: i64, clock: &Clock) -> Option<i64> {
    if !(-SANE_SECONDS..=SANE_SECONDS).contains(&clock.now) {
        return None;
    }
    let offset = i64::from(clock.utc_offset);
    let this = year_of((clock.now + offset).div_euclid(86_400));
    let mut best: Option<i64> = None;
    for year in [this - 1, this, this + 1] {
        if day > days_in_month(year, month) {
            continue;
        }
        let t = days_from_civil(year, month, day) * 86_400 + sod - offset;
        if best.map_or(true, |b| (t - clock.now).abs() < (b - clock.now).abs()) {
            best = Some(t);
        }
    }
    best
}

/// The first space-delimited word of `s` and what follows its one space (`""` at the end).
fn word(s: &str) -> (&str, &str) {
    match memchr::memchr(b' ', s.as_bytes()) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

/// Dovecot's level words, which follow a `log_path` line's `prefix:`.
fn is_dovecot_level(s: &str) -> bool {
    let w = word(s).0;
    matches!(w, "Info:" | "Warning:" | "Error:" | "Fatal:" | "Panic:" | "Debug:")
}

/// What follows the timestamp: `host tag: msg`, a host-less `tag: msg`, or (in the file form)
/// Dovecot's `prefix: Level: msg`.
fn header(s: &str, time: Option<i64>, file_form: bool) -> Option<LogRecord<'_>> {
    let s = s.trim_start_matches(' ');
    let (first, after) = word(s);
    if first.len() > 1 && first.ends_with(':') {
        // Dovecot's prefixes name a pid as `imap(1234)`, never as a syslog tag's `[1234]`.
        if file_form && !first.ends_with("]:") && is_dovecot_level(after) {
            return Some(LogRecord { time, host: "", program: "dovecot", pid: None, message: s });
        }
        return tagged(time, "", first, after);
    }
    if first.is_empty() {
        return None;
    }
    let (tag, message) = word(after.trim_start_matches(' '));
    if !tag.ends_with(':') {
        return None;
    }
    tagged(time, first, tag, message)
}

/// A record from its `tag:` (`program[pid]:` or `program:`) and the message after it.
fn tagged<'a>(time: Option<i64>, host: &'a str, tag: &'a str, message: &'a str) -> Option<LogRecord<'a>> {
    let tag = tag.strip_suffix(':')?;
    let (program, pid) = split_tag(tag);
    if program.is_empty() {
        return None;
    }
    Some(LogRecord { time, host, program, pid, message })
}

/// `program[pid]` into the program and the pid; a pid that is not a number that fits in 32
/// bits is left out, the program kept.
fn split_tag(tag: &str) -> (&str, Option<u32>) {
    if let Some(inner) = tag.strip_suffix(']') {
        if let Some(open) = inner.rfind('[') {
            return (&inner[..open], parse_pid(&inner[open + 1..]));
        }
    }
    (tag, None)
}

/// A decimal pid (digits only, at most `u32::MAX`).
fn parse_pid(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One RFC 5424 header field and the rest after its space; the last header fields may end
/// the line (a message with no structured data and no text is still a record).
fn field(s: &str) -> (&str, &str) {
    word(s)
}

/// `TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]`, after `<PRI>1 `.
fn rfc5424<'a>(s: &'a str, clock: &Clock) -> Option<LogRecord<'a>> {
    let (ts, s) = field(s);
    let time = match ts {
        "-" => None,
        ts => match iso(ts.as_bytes(), clock) {
            Some((t, end)) if end == ts.len() => Some(t),
            _ => return None,
        },
    };
    let (host, s) = field(s);
    let (app, s) = field(s);
    let (procid, s) = field(s);
    let (msgid, s) = field(s);
    if host.is_empty() || app.is_empty() || procid.is_empty() || msgid.is_empty() {
        return None;
    }
    let nil = |f: &'a str| if f == "-" { "" } else { f };
    let message = skip_structured_data(s)?;
    let message = message.strip_prefix(' ').unwrap_or(message);
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    Some(LogRecord { time, host: nil(host), program: nil(app), pid: parse_pid(procid), message })
}

/// Skips RFC 5424 structured data: `-`, or `[id k="v" ...]` elements one after another, with
/// `\"`, `\]` and `\\` escaped inside values. A sender that left it out entirely (not
/// allowed, but seen) has its message kept whole. `None` when an element is not closed.
fn skip_structured_data(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    match b.first() {
        Some(b'-') if matches!(b.get(1), None | Some(b' ')) => return Some(&s[1..]),
        Some(b'[') => {}
        _ => return Some(s),
    }
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        i += 1;
        let mut quoted = false;
        loop {
            match *b.get(i)? {
                b'\\' if quoted => i += 2,
                b'"' => {
                    quoted = !quoted;
                    i += 1;
                }
                b']' if !quoted => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
    }
    // `i` is just past an ASCII `]`, so on a character boundary.
    s.get(i..)
}

/// The journal fields a record is made of.
#[derive(Default, Clone, Copy)]
struct JournalFields {
    message: Option<(usize, usize)>,
    identifier: Option<(usize, usize)>,
    comm: Option<(usize, usize)>,
    syslog_pid: Option<(usize, usize)>,
    pid: Option<(usize, usize)>,
    hostname: Option<(usize, usize)>,
    realtime: Option<(usize, usize)>,
}

/// Reads one `journalctl -o json` entry (its `MESSAGE`, `SYSLOG_IDENTIFIER`, `_PID`,
/// `_HOSTNAME` and `__REALTIME_TIMESTAMP`), unescaping its strings in place.
///
/// The program is `SYSLOG_IDENTIFIER` (`_COMM` when it is missing), the pid `SYSLOG_PID` (the
/// pid the line names, as in a log file) or else `_PID`, the time `__REALTIME_TIMESTAMP`
/// (microseconds) in whole seconds. A `MESSAGE` that is not UTF-8 comes as an array of byte
/// values: it is decoded in place, each invalid sequence replaced by U+FFFD. `None` for
/// anything that is not such an entry, or that has no `MESSAGE` (a `null` one, which
/// journalctl writes for a field too large to show, included).
pub fn parse_journal(line: &mut [u8]) -> Option<LogRecord<'_>> {
    let mut f = JournalFields::default();
    let mut i = skip_ws(line, 0);
    if line.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(line, i + 1);
    if line.get(i) == Some(&b'}') {
        return None;
    }
    loop {
        if line.get(i) != Some(&b'"') {
            return None;
        }
        let key_start = i + 1;
        i = skip_string(line, key_start)?;
        let key_end = i - 1;
        i = skip_ws(line, i);
        if line.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(line, i + 1);
        let slot = match &line[key_start..key_end] {
            b"MESSAGE" => Some(&mut f.message),
            b"SYSLOG_IDENTIFIER" => Some(&mut f.identifier),
            b"_COMM" => Some(&mut f.comm),
            b"SYSLOG_PID" => Some(&mut f.syslog_pid),
            b"_PID" => Some(&mut f.pid),
            b"_HOSTNAME" => Some(&mut f.hostname),
            b"__REALTIME_TIMESTAMP" => Some(&mut f.realtime),
            _ => None,
        };
        let is_message = &line[key_start..key_end] == b"MESSAGE";
        match (line.get(i).copied(), slot) {
            (Some(b'"'), Some(slot)) => {
                let (range, next) = unescape_in_place(line, i + 1)?;
                *slot = Some(range);
                i = next;
            }
            (Some(b'['), Some(slot)) if is_message => {
                let (range, next) = decode_bytes_in_place(line, i)?;
                *slot = Some(range);
                i = next;
            }
            (Some(b'"'), None) => i = skip_string(line, i + 1)?,
            (Some(b'[' | b'{'), _) => i = skip_composite(line, i)?,
            (Some(_), slot) => {
                // A bare scalar (`null`, a number): a field of ours given as one is not a
                // string, so the entry does not have it (a later duplicate cannot revive an
                // earlier value either).
                if let Some(slot) = slot {
                    *slot = None;
                }
                i = skip_scalar(line, i);
            }
            (None, _) => return None,
        }
        i = skip_ws(line, i);
        match line.get(i) {
            Some(b',') => i = skip_ws(line, i + 1),
            Some(b'}') => break,
            _ => return None,
        }
    }
    let line: &[u8] = line;
    let text = |r: Option<(usize, usize)>| r.and_then(|(s, e)| std::str::from_utf8(&line[s..e]).ok());
    let message = text(f.message)?;
    let program = text(f.identifier).or_else(|| text(f.comm)).unwrap_or("");
    let pid = text(f.syslog_pid).and_then(parse_pid).or_else(|| text(f.pid).and_then(parse_pid));
    let time = text(f.realtime).and_then(parse_u64).map(|us| (us / 1_000_000) as i64);
    Some(LogRecord { time, host: text(f.hostname).unwrap_or(""), program, pid, message })
}

/// A decimal `u64` (digits only).
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The index of the first byte at or after `i` that is not JSON white space.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// The index just past the closing quote of a string whose content starts at `i`.
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// The index just past an array or object starting at `i` (nesting counted, strings skipped;
/// no recursion, so depth costs nothing).
fn skip_composite(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *b.get(i)? {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'"' => {
                i = skip_string(b, i + 1)?;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

/// The index just past a bare scalar (`null`, `true`, a number).
fn skip_scalar(b: &[u8], mut i: usize) -> usize {
    while let Some(c) = b.get(i) {
        if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
            break;
        }
        i += 1;
    }
    i
}

/// The value of four hex digits at `i`.
fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let digits = b.get(i..i + 4)?;
    let mut v = 0;
    for &d in digits {
        v = v * 16 + char::from(d).to_digit(16)?;
    }
    Some(v)
}

/// Unescapes the JSON string whose content starts at `i` into its own bytes: every escape is
/// at least as long as what it stands for (`\u00e9` is six bytes for two, a surrogate pair
/// twelve for four), so the write position never passes the read position. Returns the
/// unescaped range and the index past the closing quote. A lone surrogate becomes U+FFFD
/// (three bytes for `\uD800`'s six).
fn unescape_in_place(b: &mut [u8], start: usize) -> Option<((usize, usize), usize)> {
    let (mut r, mut w) = (start, start);
    loop {
        let run = memchr::memchr2(b'"', b'\\', b.get(r..)?)?;
        if w != r {
            b.copy_within(r..r + run, w);
        }
        r += run;
        w += run;
        if b[r] == b'"' {
            return Some(((start, w), r + 1));
        }
        let (c, len) = match *b.get(r + 1)? {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => {
                let hi = hex4(b, r + 2)?;
                if (0xD800..0xDC00).contains(&hi)
                    && b.get(r + 6) == Some(&b'\\')
                    && b.get(r + 7) == Some(&b'u')
                {
                    match hex4(b, r + 8) {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            (char::from_u32(c).unwrap_or('\u{fffd}'), 12)
                        }
                        _ => ('\u{fffd}', 6),
                    }
                } else {
                    (char::from_u32(hi).unwrap_or('\u{fffd}'), 6)
                }
            }
            _ => return None,
        };
        let mut utf8 = [0u8; 4];
        let enc = c.encode_utf8(&mut utf8).as_bytes();
        b[w..w + enc.len()].copy_from_slice(enc);
        w += enc.len();
        r += len;
    }
}

/// Decodes journalctl's form of a non-UTF-8 field, an array of byte values (`[72,105]`)
/// starting at `i`, into the array's own bytes, replacing each invalid UTF-8 sequence with
/// U+FFFD. Returns the decoded range and the index past the `]`.
///
/// Every byte took at least two characters (its digits and a separator) and the brackets two
/// more, so the bytes fit. The replacements fit too: an invalid sequence is made of bytes of
/// 0x80 or more, written with three digits each, and it grows by at most two bytes, which is
/// less than the slack its digits left.
fn decode_bytes_in_place(b: &mut [u8], i: usize) -> Option<((usize, usize), usize)> {
    let start = i;
    let mut r = skip_ws(b, i + 1);
    let mut w = start;
    if b.get(r) != Some(&b']') {
        loop {
            let mut v = 0u32;
            let digits = r;
            while let Some(c) = b.get(r).filter(|c| c.is_ascii_digit()) {
                v = v * 10 + u32::from(c - b'0');
                if v > 255 {
                    return None;
                }
                r += 1;
            }
            if r == digits {
                return None;
            }
            b[w] = v as u8;
            w += 1;
            r = skip_ws(b, r);
            match b.get(r) {
                Some(b',') => r = skip_ws(b, r + 1),
                Some(b']') => break,
                _ => return None,
            }
        }
    }
    let end = r + 1;
    if std::str::from_utf8(&b[start..w]).is_ok() {
        return Some(((start, w), end));
    }
    // Move the bytes to the end of the array's span, then write them back from its start
    // with the replacements: the reading position stays ahead of the writing one.
    let n = w - start;
    b.copy_within(start..w, end - n);
    let (mut r, mut w) = (end - n, start);
    while r < end {
        match std::str::from_utf8(&b[r..end]) {
            Ok(_) => {
                b.copy_within(r..end, w);
                w += end - r;
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                b.copy_within(r..r + valid, w);
                w += valid;
                r += valid + e.error_len().unwrap_or(end - r - valid);
                b[w..w + 3].copy_from_slice("\u{fffd}".as_bytes());
                w += 3;
            }
        }
    }
    Some(((start, w), end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-12-07T13:00:00Z.
    const DEC7: i64 = 1_796_648_400;

    fn utc(now: i64) -> Clock {
        Clock { now, utc_offset: 0 }
    }

    /// The epoch second of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s
    }

    fn rec<'a>(
        time: Option<i64>,
        host: &'a str,
        program: &'a str,
        pid: Option<u32>,
        message: &'a str,
    ) -> LogRecord<'a> {
        LogRecord { time, host, program, pid, message }
    }

    #[test]
    fn calendar_helpers_agree_with_known_dates() {
        assert_eq!(at(2026, 12, 7, 13, 0, 0), DEC7);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-800_000, -1, 0, 59, 60, 11_016, 11_017, 20_000, 2_932_896] {
            let y = year_of(days);
            assert!(days_from_civil(y, 1, 1) <= days && days < days_from_civil(y + 1, 1, 1), "{days}");
        }
        assert!(is_leap(2000) && is_leap(2028) && !is_leap(1900) && !is_leap(2026));
    }

    #[test]
    fn traditional_file_lines() {
        let c = utc(DEC7 + 60);
        let want = rec(Some(DEC7), "mx", "postfix/smtpd", Some(812), "connect from unknown[203.0.113.7]");
        for line in [
            "Dec  7 13:00:00 mx postfix/smtpd[812]: connect from unknown[203.0.113.7]",
            // Postfix's own maillog_file (postlogd), checked against Postfix 3.7's postlog.
            "Dec 07 13:00:00 mx postfix/smtpd[812]: connect from unknown[203.0.113.7]",
            "Dec 7 13:00:00 mx postfix/smtpd[812]: connect from unknown[203.0.113.7]",
            "dec  7 13:00:00.123456 mx postfix/smtpd[812]: connect from unknown[203.0.113.7]",
        ] {
            assert_eq!(parse_line(line, &c), Some(want), "{line}");
        }
        // Subprograms, multiple instances and no pid.
        let r = parse_line("Dec  7 13:00:00 mx postfix/submission/smtpd[9]: x", &c).unwrap();
        assert_eq!((r.program, r.service(), r.pid), ("postfix/submission/smtpd", "smtpd", Some(9)));
        let r = parse_line("Dec  7 13:00:00 mx postfix-out/qmgr: 4F2A1C0: removed", &c).unwrap();
        assert_eq!((r.program, r.pid, r.message), ("postfix-out/qmgr", None, "4F2A1C0: removed"));
        // The message is kept as written, colons and brackets included; it may be empty.
        let r = parse_line("Dec  7 13:00:00 mx postfix/smtp[7]: 4F2A: to=<a@b>, relay=x[1.2.3.4]:25", &c)
            .unwrap();
        assert_eq!(r.message, "4F2A: to=<a@b>, relay=x[1.2.3.4]:25");
        assert_eq!(parse_line("Dec  7 13:00:00 mx postfix/smtpd[1]:", &c).unwrap().message, "");
        // A host-less file line.
        let r = parse_line("Dec  7 13:00:00 postfix/pickup[5]: 4F2A: uid=0 from=<root>", &c).unwrap();
        assert_eq!((r.host, r.program, r.pid), ("", "postfix/pickup", Some(5)));
    }

    #[test]
    fn rfc3339_file_lines_carry_their_zone() {
        // The clock's zone does not apply to a time that names its own.
        let c = Clock { now: DEC7, utc_offset: -5 * 3600 };
        let line = "2026-12-07T13:00:00.123456+01:00 mx postfix/smtpd[812]: disconnect from x";
        assert_eq!(
            parse_line(line, &c),
            Some(rec(Some(DEC7 - 3600), "mx", "postfix/smtpd", Some(812), "disconnect from x"))
        );
        for (ts, t) in [
            ("2026-12-07T13:00:00Z", DEC7),
            ("2026-12-07t13:00:00.5z", DEC7),
            ("2026-12-07T13:00:00-0230", DEC7 + 9000),
            ("2026-12-07T13:00:00+00:00", DEC7),
            // No zone: the clock's.
            ("2026-12-07T13:00:00", DEC7 + 5 * 3600),
            // Dovecot's ISO log_timestamp, with a space.
            ("2026-12-07 13:00:00", DEC7 + 5 * 3600),
        ] {
            let line = format!("{ts} mx postfix/qmgr[3]: m");
            assert_eq!(parse_line(&line, &c).and_then(|r| r.time), Some(t), "{line}");
        }
    }

    #[test]
    fn rfc3164_as_received() {
        let c = utc(DEC7);
        let want = rec(Some(DEC7), "mx", "postfix/smtpd", Some(812), "msg here");
        assert_eq!(parse_line("<22>Dec  7 13:00:00 mx postfix/smtpd[812]: msg here", &c), Some(want));
        // What a local program sends to /dev/log: no host.
        let r = parse_line("<22>Dec  7 13:00:00 postfix/smtpd[812]: msg here", &c).unwrap();
        assert_eq!(r, LogRecord { host: "", ..want });
        // No pid.
        let r = parse_line("<22>Dec  7 13:00:00 mx postfix/smtpd: msg here", &c).unwrap();
        assert_eq!(r, LogRecord { pid: None, ..want });
        let r = parse_line("<22>Dec  7 13:00:00 postfix/smtpd: msg here", &c).unwrap();
        assert_eq!(r, LogRecord { host: "", pid: None, ..want });
        // rsyslog's RSYSLOG_ForwardFormat.
        let r = parse_line("<22>2026-12-07T14:00:00.000001+01:00 mx postfix/smtpd[812]: msg here", &c);
        assert_eq!(r, Some(want));
        // No time at all.
        let r = parse_line("<22>mx postfix/smtpd[812]: msg here", &c).unwrap();
        assert_eq!(r, LogRecord { time: None, ..want });
        // A Dovecot-looking line with a priority is a syslog tag, not Dovecot's file form.
        let r = parse_line("<22>Dec  7 13:00:00 imap-login: Info: Login", &c).unwrap();
        assert_eq!((r.program, r.message), ("imap-login", "Info: Login"));
        for bad in ["<22", "<>Dec  7 13:00:00 mx p: m", "<1922>x", "<192>Dec  7 13:00:00 mx p: m", "<2a>x"] {
            assert_eq!(parse_line(bad, &c), None, "{bad}");
        }
        assert!(parse_line("<191>Dec  7 13:00:00 mx p: m", &c).is_some());
        assert!(parse_line("<0>Dec  7 13:00:00 mx p: m", &c).is_some());
    }

    #[test]
    fn rfc5424() {
        let c = utc(DEC7);
        let want = rec(Some(DEC7), "mx", "postfix/smtpd", Some(812), "connect from x");
        assert_eq!(
            parse_line("<22>1 2026-12-07T13:00:00.1Z mx postfix/smtpd 812 - - connect from x", &c),
            Some(want)
        );
        // Structured data, several elements, escapes inside values.
        let line = r#"<22>1 2026-12-07T14:00:00+01:00 mx postfix/smtpd 812 ID47 [a@1 k="v \"q\" \]"][b@2 x="]"] connect from x"#;
        assert_eq!(parse_line(line, &c), Some(want));
        // A BOM before the message.
        let line = "<22>1 2026-12-07T13:00:00Z mx postfix/smtpd 812 - - \u{feff}connect from x";
        assert_eq!(parse_line(line, &c), Some(want));
        // NILVALUE everywhere.
        let r = parse_line("<22>1 - - - - - - m", &c).unwrap();
        assert_eq!(r, rec(None, "", "", None, "m"));
        // A pid that is not a number, no message at all, structured data at the end.
        let r = parse_line("<22>1 2026-12-07T13:00:00Z mx app abc - -", &c).unwrap();
        assert_eq!((r.pid, r.message), (None, ""));
        let r = parse_line("<22>1 2026-12-07T13:00:00Z mx app 1 - [a@1 k=\"v\"]", &c).unwrap();
        assert_eq!(r.message, "");
        // A sender that leaves out the structured data keeps its message whole.
        let r = parse_line("<22>1 2026-12-07T13:00:00Z mx app 1 - hello there", &c).unwrap();
        assert_eq!(r.message, "hello there");
        for bad in [
            "<22>1 ",
            "<22>1 2026-12-07T13:00:00Z",
            "<22>1 2026-12-07T13:00:00Z mx",
            "<22>1 2026-12-07T13:00:00Z mx app 1",
            "<22>1 2026-12-07T13:00:00Z mx app 1 - [a@1 k=\"v]",
            "<22>1 yesterday mx app 1 - - m",
            "<22>1 2026-02-30T13:00:00Z mx app 1 - - m",
            "<22>1 2026-12-07T13:00:00Zjunk mx app 1 - - m",
        ] {
            assert_eq!(parse_line(bad, &c), None, "{bad}");
        }
    }

    #[test]
    fn dovecot_log_path_lines() {
        let c = utc(DEC7);
        // Written by Dovecot 2.3.19.1 with its default log_timestamp ("%b %d %H:%M:%S ").
        let line = "Dec 07 13:00:00 master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for imap";
        let want = rec(
            Some(DEC7),
            "",
            "dovecot",
            None,
            "master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for imap",
        );
        assert_eq!(parse_line(line, &c), Some(want));
        for msg in [
            "imap-login: Info: Login: user=<bob>, method=PLAIN, rip=203.0.113.7, lip=127.0.0.1, session=<abc>",
            "imap(bob)<4242><abcDEF12>: Info: Disconnected: Logged out in=12 out=345",
            "auth: Error: passwd-file(bob,203.0.113.7): unknown user",
            "lmtp(4243): Debug: none",
            "log(21117): Warning: Killed with signal 15 (by pid=21111 uid=0 code=kill)",
        ] {
            let line = format!("Dec 07 13:00:00 {msg}");
            assert_eq!(parse_line(&line, &c), Some(rec(Some(DEC7), "", "dovecot", None, msg)), "{line}");
        }
        let r = parse_line("2026-12-07 13:00:00 lmtp(4243): Info: Connect from local", &c).unwrap();
        assert_eq!(
            (r.time, r.program, r.message),
            (Some(DEC7), "dovecot", "lmtp(4243): Info: Connect from local")
        );
        // Dovecot through syslog is an ordinary tagged line.
        let r = parse_line("Dec  7 13:00:00 mx dovecot[77]: imap-login: Login: user=<bob>", &c).unwrap();
        assert_eq!(
            (r.host, r.program, r.pid, r.message),
            ("mx", "dovecot", Some(77), "imap-login: Login: user=<bob>")
        );
    }

    #[test]
    fn yearless_times_take_the_nearest_year() {
        // A December line read in January is last year's.
        let jan2 = at(2027, 1, 2, 0, 0, 0);
        let r = parse_line("Dec 31 23:59:59 mx p[1]: m", &utc(jan2)).unwrap();
        assert_eq!(r.time, Some(at(2026, 12, 31, 23, 59, 59)));
        // A January line read on 31 December (a writer whose clock is ahead) is next year's.
        let dec31 = at(2026, 12, 31, 23, 0, 0);
        let r = parse_line("Jan  1 00:00:05 mx p[1]: m", &utc(dec31)).unwrap();
        assert_eq!(r.time, Some(at(2027, 1, 1, 0, 0, 5)));
        // An ordinary line of this year, and one of a few months ago.
        assert_eq!(parse_line("Dec  7 13:00:00 mx p[1]: m", &utc(DEC7)).unwrap().time, Some(DEC7));
        let r = parse_line("Sep  1 00:00:00 mx p[1]: m", &utc(DEC7)).unwrap();
        assert_eq!(r.time, Some(at(2026, 9, 1, 0, 0, 0)));
        // Nearest means nearest: a date more than half a year back is nearer next year.
        let r = parse_line("Mar  1 00:00:00 mx p[1]: m", &utc(DEC7)).unwrap();
        assert_eq!(r.time, Some(at(2027, 3, 1, 0, 0, 0)));
        // The wall-clock time is read in the clock's zone.
        let c = Clock { now: DEC7, utc_offset: 3600 };
        assert_eq!(parse_line("Dec  7 14:00:00 mx p[1]: m", &c).unwrap().time, Some(DEC7));
        // The year is that of the writer's local date: at 23:30 UTC on 31 December it is
        // already 1 January in UTC+1, so a line of 1 January 00:10 is minutes old.
        let now = at(2026, 12, 31, 23, 30, 0);
        let c = Clock { now, utc_offset: 3600 };
        assert_eq!(parse_line("Jan  1 00:10:00 mx p[1]: m", &c).unwrap().time, Some(now - 20 * 60));
        // A leap second counts as the next minute's first.
        assert_eq!(parse_line("Dec  7 12:59:60 mx p[1]: m", &utc(DEC7)).unwrap().time, Some(DEC7));
    }

    #[test]
    fn february_29() {
        // In a leap year.
        let now = at(2028, 3, 1, 0, 0, 0);
        assert_eq!(
            parse_line("Feb 29 12:00:00 mx p[1]: m", &utc(now)).unwrap().time,
            Some(at(2028, 2, 29, 12, 0, 0))
        );
        // Read in January of the year before: next year's is the nearest that exists.
        let now = at(2027, 1, 5, 0, 0, 0);
        assert_eq!(
            parse_line("Feb 29 12:00:00 mx p[1]: m", &utc(now)).unwrap().time,
            Some(at(2028, 2, 29, 12, 0, 0))
        );
        // Read on New Year's Day after a leap year: last year's.
        let now = at(2029, 1, 1, 0, 0, 0);
        assert_eq!(
            parse_line("Feb 29 12:00:00 mx p[1]: m", &utc(now)).unwrap().time,
            Some(at(2028, 2, 29, 12, 0, 0))
        );
        // Far from any leap year, and a day no month has: the line is kept, without a time.
        let r = parse_line("Feb 29 12:00:00 mx p[1]: m", &utc(at(2026, 6, 1, 0, 0, 0))).unwrap();
        assert_eq!((r.time, r.program), (None, "p"));
        assert_eq!(parse_line("Apr 31 12:00:00 mx p[1]: m", &utc(DEC7)).unwrap().time, None);
        // The ISO forms say their year, so an impossible date there is no timestamp.
        assert_eq!(parse_line("2026-02-29T12:00:00Z mx p[1]: m", &utc(DEC7)), None);
        assert!(parse_line("2028-02-29T12:00:00Z mx p[1]: m", &utc(DEC7)).is_some());
    }

    #[test]
    fn odd_lines() {
        let c = utc(DEC7);
        for bad in [
            "",
            "Dec",
            "Dec  7",
            "Dec  7 13:00:00",
            "Dec  7 13:00:00 ",
            "Dec  7 13:00:00 mx",
            "Dec  7 13:00:00 mx postfix/smtpd[812] no colon after the tag",
            "Dec  7 13:00:00 mx no tag at all",
            "Foo  7 13:00:00 mx p[1]: m",
            "Dec 32 13:00:00 mx p[1]: m",
            "Dec  0 13:00:00 mx p[1]: m",
            "Dec 123 13:00:00 mx p[1]: m",
            "Dec  7 24:00:00 mx p[1]: m",
            "Dec  7 13:60:00 mx p[1]: m",
            "Dec  7 13:00:61 mx p[1]: m",
            "Dec  7 13:00 mx p[1]: m",
            "Dec  7 13:00:00. mx p[1]: m",
            "Dec  7 1:00:00 mx p[1]: m",
            "Dec  713:00:00 mx p[1]: m",
            "Dec  7 13:00:00 mx [812]: empty program",
            "Dec  7 13:00:00 mx :",
            "2026-13-07T13:00:00Z mx p[1]: m",
            "2026-12-07T13:00:00+25:00 mx p[1]: m",
            "2026-12-07X13:00:00Z mx p[1]: m",
            "2026-12-07T13:00:00Z",
            "just some text",
            "é",
            "Déc  7 13:00:00 mx p[1]: m",
        ] {
            assert_eq!(parse_line(bad, &c), None, "{bad:?}");
        }
        // Pids that are not 32-bit numbers are left out; the line is kept.
        for (tag, program, pid) in [
            ("p[99999999999]", "p", None),
            ("p[4294967295]", "p", Some(u32::MAX)),
            ("p[abc]", "p", None),
            ("p[]", "p", None),
            ("p[12", "p[12", None),
            ("a[b][3]", "a[b]", Some(3)),
        ] {
            let line = format!("Dec  7 13:00:00 mx {tag}: m");
            let r = parse_line(&line, &c).unwrap();
            assert_eq!((r.program, r.pid), (program, pid), "{line}");
        }
        // Non-ASCII text where the framing is ASCII does not break character boundaries.
        assert!(parse_line("Dec  7 13:00:00 mé p[1]: ünïcode", &c).is_some());
        // An absurd clock gives no time rather than an overflow.
        assert_eq!(parse_line("Dec  7 13:00:00 mx p[1]: m", &utc(i64::MAX)).unwrap().time, None);
        assert_eq!(parse_line("Dec  7 13:00:00 mx p[1]: m", &utc(i64::MIN)).unwrap().time, None);
    }

    /// A journal entry's record, owned: time, host, program, pid, message.
    type Owned = (Option<i64>, String, String, Option<u32>, String);

    fn journal(line: &str) -> Option<Owned> {
        let mut bytes = line.as_bytes().to_vec();
        parse_journal(&mut bytes)
            .map(|r| (r.time, r.host.to_string(), r.program.to_string(), r.pid, r.message.to_string()))
    }

    #[test]
    fn journal_entries() {
        let line = r#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1796648400123456","__MONOTONIC_TIMESTAMP":"5","_BOOT_ID":"x","_HOSTNAME":"mx","SYSLOG_FACILITY":"2","SYSLOG_IDENTIFIER":"postfix/smtpd","SYSLOG_PID":"812","_PID":"812","_COMM":"smtpd","MESSAGE":"connect from unknown[203.0.113.7]"}"#;
        assert_eq!(
            journal(line),
            Some((
                Some(DEC7),
                "mx".into(),
                "postfix/smtpd".into(),
                Some(812),
                "connect from unknown[203.0.113.7]".into()
            ))
        );
        // White space anywhere JSON allows it, and other kinds of values that are skipped.
        let line = " { \"MESSAGE\" : \"m\" , \"X\" : [1, {\"a\": [\"]\"]}], \"Y\": null, \"Z\": {\"q\": \"}\"} , \"_PID\" : \"9\" } ";
        assert_eq!(journal(line), Some((None, "".into(), "".into(), Some(9), "m".into())));
        // SYSLOG_PID names the line's pid; _COMM stands in for a missing identifier.
        let line = r#"{"MESSAGE":"m","_PID":"1","SYSLOG_PID":"2","_COMM":"smtpd"}"#;
        assert_eq!(journal(line).map(|j| (j.2, j.3)), Some(("smtpd".into(), Some(2))));
        let line = r#"{"MESSAGE":"m","_PID":"1","SYSLOG_PID":"x","_COMM":"smtpd","SYSLOG_IDENTIFIER":"postfix/qmgr"}"#;
        assert_eq!(journal(line).map(|j| (j.2, j.3)), Some(("postfix/qmgr".into(), Some(1))));
    }

    #[test]
    fn journal_strings_are_unescaped_in_place() {
        let line = r#"{"MESSAGE":"a\"b\\c\/d\n\t\u00e9\ud83d\ude00 \ud800 \udc00x \u0041","SYSLOG_IDENTIFIER":"post\u0066ix/smtpd"}"#;
        let j = journal(line).unwrap();
        assert_eq!(j.4, "a\"b\\c/d\n\té😀 \u{fffd} \u{fffd}x A");
        assert_eq!(j.2, "postfix/smtpd");
        // A string left as it is, escapes after a long plain run.
        let long = "x".repeat(5000);
        let j = journal(&format!(r#"{{"MESSAGE":"{long}\n{long}"}}"#)).unwrap();
        assert_eq!(j.4, format!("{long}\n{long}"));
        for bad in
            [r#"{"MESSAGE":"\x"}"#, r#"{"MESSAGE":"\u12"}"#, r#"{"MESSAGE":"\u12g4"}"#, r#"{"MESSAGE":"abc"#]
        {
            assert_eq!(journal(bad), None, "{bad}");
        }
    }

    #[test]
    fn journal_binary_messages() {
        // "Hi é" as bytes: valid UTF-8.
        let j = journal(r#"{"MESSAGE":[72,105,32,195,169],"_COMM":"smtpd"}"#).unwrap();
        assert_eq!(j.4, "Hi é");
        // Latin-1 bytes: each invalid sequence becomes U+FFFD.
        let j = journal(r#"{"MESSAGE":[ 72 , 233 , 108 , 232 , 110 , 101 ]}"#).unwrap();
        assert_eq!(j.4, "H\u{fffd}l\u{fffd}ne");
        // Nothing but invalid bytes, and a truncated sequence at the end.
        let j = journal(r#"{"MESSAGE":[255,254,253,226,130]}"#).unwrap();
        assert_eq!(j.4, "\u{fffd}\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(journal(r#"{"MESSAGE":[]}"#).unwrap().4, "");
        for bad in [
            r#"{"MESSAGE":[256]}"#,
            r#"{"MESSAGE":[1,,2]}"#,
            r#"{"MESSAGE":[1,2"#,
            r#"{"MESSAGE":[-1]}"#,
            // Several values of one field come as an array of strings: not a message.
            r#"{"MESSAGE":["a","b"]}"#,
        ] {
            assert_eq!(journal(bad), None, "{bad}");
        }
        // Another field as bytes is skipped, not decoded.
        let j = journal(r#"{"_HOSTNAME":[109,120],"MESSAGE":"m"}"#).unwrap();
        assert_eq!((j.1.as_str(), j.4.as_str()), ("", "m"));
    }

    #[test]
    fn odd_journal_lines() {
        for bad in [
            "",
            "{",
            "{}",
            "[]",
            "not json",
            r#"{"MESSAGE":null}"#,
            r#"{"MESSAGE":12}"#,
            r#"{"_PID":"1"}"#,
            r#"{"MESSAGE":"m""#,
            r#"{"MESSAGE":"m" "x":1}"#,
            r#"{"MESSAGE" "m"}"#,
            r#"{MESSAGE:"m"}"#,
            r#"{"MESSAGE":"m",}"#,
            r#"{"MESSAGE":"m","X":[1,[2}"#,
            r#"{"MESSAGE":"m","X":"#,
        ] {
            assert_eq!(journal(bad), None, "{bad}");
        }
        // A time that is not a number is left out; a huge pid is left out.
        let j = journal(r#"{"MESSAGE":"m","__REALTIME_TIMESTAMP":"soon","_PID":"99999999999"}"#).unwrap();
        assert_eq!((j.0, j.3), (None, None));
    }

    /// Lines of every form, for the property tests below.
    const SAMPLES: [&str; 7] = [
        "Dec  7 13:00:00 mx postfix/smtpd[812]: connect from unknown[203.0.113.7]",
        "2026-12-07T13:00:00.123456+01:00 mx postfix/smtpd[812]: msg",
        "<22>Dec  7 13:00:00 postfix/smtpd[812]: msg",
        "<22>1 2026-12-07T13:00:00.1Z mx postfix/smtpd 812 - [a@1 k=\"v\\]\"] \u{feff}msg",
        "Dec 07 13:00:00 imap-login: Info: Login: user=<bob>",
        "<22>2026-12-07T13:00:00Z mx postfix/smtpd: msg",
        "Feb 29 12:00:00 mx p[1]: m",
    ];

    proptest! {
        /// No prefix of a valid line, and no line with a byte changed, makes the parser panic;
        /// what it returns borrows from the line.
        #[test]
        fn never_panics_on_cut_or_changed_lines(which in 0..SAMPLES.len(), cut in 0usize..120, at in 0usize..120, byte in any::<u8>(), now in any::<i64>(), offset in -86_400i32..86_400) {
            let clock = Clock { now, utc_offset: offset };
            let s = SAMPLES[which];
            let cut = s.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(s.len());
            let _ = parse_line(&s[..cut], &clock);
            let mut bytes = s.as_bytes().to_vec();
            let at = at % bytes.len();
            bytes[at] = byte;
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = parse_line(text, &clock);
            }
        }

        /// Any text at all.
        #[test]
        fn never_panics_on_any_text(s in ".{0,200}", now in any::<i64>()) {
            let _ = parse_line(&s, &Clock { now, utc_offset: 0 });
            let _ = parse_journal(&mut s.clone().into_bytes());
        }

        /// Any bytes as a journal entry, and journal entries with a byte changed.
        #[test]
        fn journal_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), at in 0usize..200, byte in any::<u8>()) {
            let _ = parse_journal(&mut bytes.clone());
            let mut line = br#"{"MESSAGE":[72,233,108,"x"],"MESSAGE":"a\u00e9\ud83d\ude00","_PID":"1","X":[{"a":"]"}]}"#.to_vec();
            let at = at % line.len();
            line[at] = byte;
            let _ = parse_journal(&mut line);
        }
    }
}
