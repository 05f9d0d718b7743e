//! The mail-log line format: frame, parse, correlate and build, for each line in order.
//!
//! [`MailLog`] is the [`LineFormat`] every mail-log source (a followed file, the journal, a
//! syslog listener) hands to `stage::run_stream`. It is sequential (`SEQUENTIAL = true`):
//! the correlator's state must see a host's lines in the order they were written.

use super::correlate::{Correlator, Gauges, Link};
use super::{dovecot, frame, postfix, LogRecord, Parsed, Val};
use crate::event::{EventBuilder, RawValue};
use crate::ingest::lines::LineFormat;
use crate::ingest::ParsedBatch;
use crate::metrics::model::Kind;
use crate::metrics::push::MetricRecord;
use parking_lot::Mutex;
use std::borrow::Cow;
use std::sync::Arc;

/// How a source's lines are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Text: a log file's lines, or syslog messages (RFC 3164 or RFC 5424) as a listener
    /// receives them; the form is recognised line by line.
    Text,
    /// `journalctl -o json`: one JSON object per line.
    Journal,
}

/// Which parser a record's program goes to.
fn is_dovecot(program: &str) -> bool {
    program == "dovecot" || program.starts_with("dovecot/") || program.starts_with("dovecot-")
}

/// The mail-log [`LineFormat`]: cheap to clone (its state is shared).
#[derive(Clone)]
pub struct MailLog {
    framing: Framing,
    utc_offset: i32,
    state: Arc<Mutex<Correlator>>,
}

impl MailLog {
    /// A format for one source; `utc_offset` (seconds east of UTC) is the zone of yearless,
    /// zoneless timestamps.
    pub fn new(framing: Framing, utc_offset: i32) -> MailLog {
        MailLog { framing, utc_offset, state: Arc::new(Mutex::new(Correlator::default())) }
    }

    /// A format for another source of the same mail system, sharing this one's correlator:
    /// a host's Postfix file and Dovecot file, or a file and a syslog listener, keep one set
    /// of sessions, messages and gauges (their keys include the host and program, so they
    /// do not mix).
    pub fn sharing(&self, framing: Framing) -> MailLog {
        MailLog { framing, utc_offset: self.utc_offset, state: self.state.clone() }
    }

    /// Forgets sessions and messages idle past their time-outs (a lost `disconnect` must not
    /// keep a connection counted for ever); sources call it now and then.
    pub fn expire(&self, now: i64) {
        self.state.lock().expire(now);
    }
}

/// The gauges the correlator derives, by catalogue name.
fn gauge_records(g: Gauges) -> [(&'static str, u64); 4] {
    [
        ("smtp.active-connections", g.smtp),
        ("imap.active-connections", g.imap),
        ("pop3.active-connections", g.pop3),
        ("queue.count", g.messages),
    ]
}

/// Records the gauges in the chunk's metric samples (applied once the chunk is published),
/// replacing this chunk's earlier readings so a chunk carries one of each.
fn push_gauges(out: &mut ParsedBatch, number: usize, g: Gauges) {
    for (name, value) in gauge_records(g) {
        match out.samples.iter_mut().find(|(_, r)| r.name == name) {
            Some((_, r)) => r.values[0] = value as f64,
            None => out.samples.push((
                number,
                MetricRecord {
                    name: name.to_string(),
                    kind: Some(Kind::Gauge),
                    values: smallvec::smallvec![value as f64],
                    unit: None,
                },
            )),
        }
    }
}

impl LineFormat for MailLog {
    type Scratch = ();
    const SEQUENTIAL: bool = true;

    fn parse_line(
        &self,
        _scratch: &mut (),
        line: &mut [u8],
        number: usize,
        b: &mut EventBuilder<'_>,
        now: i64,
        out: &mut ParsedBatch,
    ) {
        let line = crate::ingest::trim_mut(line);
        if line.is_empty() {
            return;
        }
        let record = match self.framing {
            Framing::Text => {
                let Ok(text) = std::str::from_utf8(line) else {
                    return out.reject(number, "not UTF-8");
                };
                frame::parse_line(text, &frame::Clock { now, utc_offset: self.utc_offset })
            }
            Framing::Journal => frame::parse_journal(line),
        };
        let Some(record) = record else {
            return out.reject(number, "not a syslog line (no program[pid]: prefix)");
        };
        let parsed =
            if is_dovecot(record.program) { dovecot::parse(&record) } else { postfix::parse(&record) };
        let at = record.time.unwrap_or(now);
        let mut state = self.state.lock();
        let before = state.gauges();
        let link = state.link(&record, &parsed, at);
        let after = state.gauges();
        drop(state);
        let raw = to_raw(&record, &parsed, link, at);
        let events = out.events.len();
        out.push_built(&raw, number, b, now);
        if link.ends {
            if let Some(ev) = out.events.get_mut(events).and_then(Arc::get_mut) {
                // The message's `removed` line ends its span though its type does not.
                ev.span_end = true;
            }
        }
        if before != after {
            push_gauges(out, number, after);
        }
    }
}

/// The event object for a parsed line, with the spans the correlator gave it.
fn to_raw<'a>(_rec: &LogRecord<'a>, p: &Parsed<'a>, link: Link, at: i64) -> RawValue<'a> {
    let mut data: Vec<(Cow<'a, str>, RawValue<'a>)> = Vec::with_capacity(p.fields.len() + 4);
    if let Some(span) = link.span {
        data.push((Cow::Borrowed("spanId"), RawValue::UInt(span)));
    }
    if let Some(parent) = link.parent {
        data.push((Cow::Borrowed("parentSpanId"), RawValue::UInt(parent)));
    }
    for &(k, v) in &p.fields {
        let v = match v {
            Val::Str(s) => RawValue::Str(Cow::Borrowed(s)),
            Val::Int(i) => RawValue::Int(i),
            Val::Bool(b) => RawValue::Bool(b),
        };
        data.push((Cow::Borrowed(k), v));
    }
    if let Some(ms) = link.elapsed_ms {
        data.push((Cow::Borrowed("elapsed"), RawValue::Int(ms)));
    }
    let mut top = vec![
        (Cow::Borrowed("type"), RawValue::Str(Cow::Borrowed(link.retype.unwrap_or(p.ty)))),
        (Cow::Borrowed("createdAt"), RawValue::Int(at)),
        (Cow::Borrowed("data"), RawValue::Object(data)),
    ];
    if let Some(level) = p.level {
        top.push((Cow::Borrowed("level"), RawValue::Str(Cow::Borrowed(level.as_str()))));
    }
    RawValue::Object(top)
}
