//! Postfix's log messages: what each line of smtpd, qmgr, smtp and the other daemons means.
//! (Being written: issue 24.)

use super::{LogRecord, Parsed};

/// Parses the message of a record whose program is a Postfix daemon (`postfix/*`, or any
/// `syslog_name` ending in a Postfix service name). Never fails: a line it does not know
/// becomes a `postfix.log` event carrying the program, pid and text.
pub fn parse<'a>(rec: &LogRecord<'a>) -> Parsed<'a> {
    let mut p = Parsed::new("postfix.log");
    p.push_str("details", rec.message);
    p
}
