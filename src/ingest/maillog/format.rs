//! The mail-log line format: frame, parse, correlate and build, for each line in order.
//!
//! [`MailLog`] is the [`LineFormat`] every mail-log source (a followed file, the journal, a
//! syslog listener) hands to `stage::run_stream`. It is sequential (`SEQUENTIAL = true`):
//! the correlator's state must see a host's lines in the order they were written.

use super::correlate::{Correlator, Gauges, Link};
use super::{dovecot, frame, postfix, Val};
use crate::event::json::{JsonRef, Node, Text};
use crate::event::{EventBuilder, Level};
use crate::ingest::lines::LineFormat;
use crate::ingest::ParsedBatch;
use crate::metrics::model::Kind;
use crate::metrics::push::MetricRecord;
use parking_lot::Mutex;
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
    /// Replaying recorded lines (the demo): every event is given the time of parsing, not the
    /// time in the line.
    restamp: bool,
    state: Arc<Mutex<Correlator>>,
}

impl MailLog {
    /// A format for one source; `utc_offset` (seconds east of UTC) is the zone of yearless,
    /// zoneless timestamps.
    pub fn new(framing: Framing, utc_offset: i32) -> MailLog {
        MailLog { framing, utc_offset, restamp: false, state: Arc::new(Mutex::new(Correlator::default())) }
    }

    /// A format for replaying recorded lines as if they were written now (the demo).
    pub fn replaying(framing: Framing) -> MailLog {
        MailLog { restamp: true, ..MailLog::new(framing, 0) }
    }

    /// A format for another source of the same mail system, sharing this one's correlator:
    /// a host's Postfix file and Dovecot file, or a file and a syslog listener, keep one set
    /// of sessions, messages and gauges (their keys include the host and program, so they
    /// do not mix).
    pub fn sharing(&self, framing: Framing) -> MailLog {
        MailLog { framing, utc_offset: self.utc_offset, restamp: self.restamp, state: self.state.clone() }
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
        let at = if self.restamp { now } else { record.time.unwrap_or(now) };
        let mut state = self.state.lock();
        let before = state.gauges();
        let link = state.link(&record, &parsed, at);
        let after = state.gauges();
        drop(state);
        let line = LineEvent {
            ty: link.retype.unwrap_or(parsed.ty),
            at,
            level: parsed.level.map(Level::as_str),
            link,
            fields: &parsed.fields,
        };
        let events = out.events.len();
        out.push_built(LineJson::Event(&line), number, b, now);
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

/// One parsed line as the event object the builder reads, without building a tree: the
/// builder walks it through [`JsonRef`] like any parsed JSON, so a log line costs no
/// allocation before the event's own.
struct LineEvent<'t> {
    ty: &'t str,
    at: i64,
    level: Option<&'static str>,
    link: Link,
    fields: &'t [(&'static str, Val<'t>)],
}

impl<'t> LineEvent<'t> {
    /// Members of the top object: `type`, `createdAt`, `level` (if overridden), `data`.
    fn top_len(&self) -> usize {
        3 + usize::from(self.level.is_some())
    }

    fn top(&'t self, i: usize) -> (Text<'t>, LineJson<'t>) {
        match (i, self.level) {
            (0, _) => (Text::clean("type"), LineJson::Str(Text::new(self.ty))),
            (1, _) => (Text::clean("createdAt"), LineJson::Int(self.at)),
            (2, Some(level)) => (Text::clean("level"), LineJson::Str(Text::clean(level))),
            _ => (Text::clean("data"), LineJson::Data(self)),
        }
    }

    /// Members of `data`: `spanId`, `parentSpanId`, the parsed keys, then `elapsed` when the
    /// correlator measured it.
    fn data_len(&self) -> usize {
        usize::from(self.link.span.is_some())
            + usize::from(self.link.parent.is_some())
            + self.fields.len()
            + usize::from(self.link.elapsed_ms.is_some())
    }

    fn data(&'t self, mut i: usize) -> (Text<'t>, LineJson<'t>) {
        if let Some(span) = self.link.span {
            if i == 0 {
                return (Text::clean("spanId"), LineJson::UInt(span));
            }
            i -= 1;
        }
        if let Some(parent) = self.link.parent {
            if i == 0 {
                return (Text::clean("parentSpanId"), LineJson::UInt(parent));
            }
            i -= 1;
        }
        match self.fields.get(i) {
            Some(&(k, v)) => (
                Text::clean(k),
                match v {
                    Val::Str(s) => LineJson::Str(Text::new(s)),
                    Val::Int(n) => LineJson::Int(n),
                    Val::Bool(b) => LineJson::Bool(b),
                },
            ),
            None => (Text::clean("elapsed"), LineJson::Int(self.link.elapsed_ms.unwrap_or(0))),
        }
    }
}

/// A handle on one value of a [`LineEvent`].
#[derive(Clone, Copy)]
enum LineJson<'t> {
    Event(&'t LineEvent<'t>),
    Data(&'t LineEvent<'t>),
    Str(Text<'t>),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

/// The members of a [`LineEvent`]'s top object or its `data`.
struct LineMembers<'t> {
    ev: &'t LineEvent<'t>,
    data: bool,
    i: usize,
    n: usize,
}

impl<'t> Iterator for LineMembers<'t> {
    type Item = (Text<'t>, LineJson<'t>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.i == self.n {
            return None;
        }
        let i = self.i;
        self.i += 1;
        Some(if self.data { self.ev.data(i) } else { self.ev.top(i) })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.n - self.i, Some(self.n - self.i))
    }
}

impl ExactSizeIterator for LineMembers<'_> {}

impl<'t> JsonRef<'t> for LineJson<'t> {
    type Items = std::iter::Empty<LineJson<'t>>;
    type Members = LineMembers<'t>;

    fn node(self) -> Node<'t, Self> {
        match self {
            LineJson::Event(ev) => Node::Object(LineMembers { ev, data: false, i: 0, n: ev.top_len() }),
            LineJson::Data(ev) => Node::Object(LineMembers { ev, data: true, i: 0, n: ev.data_len() }),
            LineJson::Str(s) => Node::Str(s),
            LineJson::Int(n) => Node::Int(n),
            LineJson::UInt(n) => Node::UInt(n),
            LineJson::Bool(b) => Node::Bool(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, RawValue};
    use crate::ingest::maillog::Parsed;

    /// A line's event built through [`LineJson`] is byte for byte the event built from the
    /// same object written as JSON: the walk has every member, in order, with its kind.
    #[test]
    fn line_events_build_as_their_json_does() {
        let (c, k) = Catalogue::with_keys(1024);
        let mut b = EventBuilder::new(&c, &k);
        let mut p = Parsed::new("delivery.delivered");
        p.push("to", Val::Str("a\"b@example.org"));
        p.push("size", Val::Int(42));
        p.push("tls", Val::Bool(true));
        p.level = Some(Level::Warn);
        let links = [
            Link::default(),
            Link { span: Some(7), parent: Some(3), ends: true, elapsed_ms: Some(2000), retype: None },
        ];
        for link in links {
            let line = LineEvent {
                ty: p.ty,
                at: 1_800_000_000,
                level: p.level.map(Level::as_str),
                link,
                fields: &p.fields,
            };
            let walked = b.build(LineJson::Event(&line), 0).unwrap();
            // Written by hand: the members' order matters, and serde_json's map sorts them.
            let mut data = String::new();
            if let Some(s) = link.span {
                data += &format!("\"spanId\":{s},");
            }
            if let Some(s) = link.parent {
                data += &format!("\"parentSpanId\":{s},");
            }
            data += r#""to":"a\"b@example.org","size":42,"tls":true"#;
            if let Some(ms) = link.elapsed_ms {
                data += &format!(",\"elapsed\":{ms}");
            }
            let json = format!(
                r#"{{"type":"delivery.delivered","createdAt":1800000000,"level":"warn","data":{{{data}}}}}"#
            );
            let tree = b.build(&RawValue::parse_serde(json.as_bytes()).unwrap(), 0).unwrap();
            assert_eq!(walked.json, tree.json);
            assert_eq!(walked.fields().collect::<Vec<_>>(), tree.fields().collect::<Vec<_>>());
            assert_eq!((walked.span_id, walked.parent_span), (tree.span_id, tree.parent_span));
            assert_eq!((walked.level, walked.created_at), (tree.level, tree.created_at));
        }
    }
}
