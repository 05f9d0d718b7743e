//! Syslog framing: a log line's time, host, program and pid, in every form a mail host
//! writes them. (Being written: issue 24.)

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
pub fn parse_line<'a>(_line: &'a str, _clock: &Clock) -> Option<LogRecord<'a>> {
    None
}

/// Reads one `journalctl -o json` entry (its `MESSAGE`, `SYSLOG_IDENTIFIER`, `_PID`,
/// `_HOSTNAME` and `__REALTIME_TIMESTAMP`), unescaping its strings in place.
pub fn parse_journal(_line: &mut [u8]) -> Option<LogRecord<'_>> {
    None
}
