//! Span correlation for mail logs: sessions, messages and the links between them.
//! (Being written: issue 24.)

use super::{LogRecord, Parsed};

/// The spans the correlator gives one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// The event's span.
    pub span: Option<u64>,
    /// The span this event's span was opened from (a message's session).
    pub parent: Option<u64>,
    /// True when the event ends its span.
    pub ends: bool,
}

/// The correlator's state.
#[derive(Debug, Default)]
pub struct Correlator {}

impl Correlator {
    /// The spans of the event `parsed` makes of `rec`.
    pub fn link(&mut self, _rec: &LogRecord<'_>, _parsed: &Parsed<'_>, _now: i64) -> Link {
        Link::default()
    }
}
