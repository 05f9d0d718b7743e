//! Dovecot's log messages: logins, login failures, LMTP deliveries and disconnects.
//! (Being written: issue 24.)

use super::{LogRecord, Parsed};

/// Parses the message of a record whose program is Dovecot's. Never fails: a line it does
/// not know becomes a `dovecot.log` event carrying the text.
pub fn parse<'a>(rec: &LogRecord<'a>) -> Parsed<'a> {
    let mut p = Parsed::new("dovecot.log");
    p.push_str("details", rec.message);
    p
}
