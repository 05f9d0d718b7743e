//! Mail logs (Postfix, Dovecot) as an event source: the types every stage of a log line's
//! way into the hub shares.
//!
//! A log line takes four steps, each in its own file and each free of I/O:
//!
//! 1. [`frame`] cuts the line's syslog framing (a log file's `Mmm dd hh:mm:ss host prog[pid]:`
//!    prefix, an RFC 3339 prefix, RFC 3164 or RFC 5424 as a syslog listener receives them, or
//!    one journal export entry) into a [`LogRecord`]: time, host, program, pid and message.
//! 2. The program's parser, [`postfix`] or [`dovecot`], turns the record's message into a
//!    [`Parsed`] line: an event type from Stalwart's catalogue where the meaning is the same
//!    (a `postfix.*` or `dovecot.*` name otherwise), its keys, and what the line means for the
//!    spans (it opens or closes a session or a message, it belongs to a queue id). These
//!    parsers are stateless, so any line can be parsed alone, tested alone and fuzzed.
//! 3. [`correlate`] keeps the only state: which smtpd process or Dovecot session is open, and
//!    which queue id is which message. It gives each event its span, links a message to the
//!    session that submitted it, and never lets a reused queue id join two messages.
//! 4. [`format`] is the [`super::lines::LineFormat`] that runs the three steps for every line
//!    of a followed file, a journal reader or a syslog listener, and builds the events.
//!
//! Dovecot has a second way in, [`exporter`]: its event exporter's JSON, posted to
//! `POST /api/livetap/ingest/dovecot` and mapped onto the same catalogue, with the same span
//! for a Dovecot session as its log lines name ([`exporter::session_span`]).
//!
//! Because step 3 needs the lines in order, mail-log streams are parsed one chunk at a time
//! (`LineFormat::SEQUENTIAL`); a mail host writes a few hundred lines a second, and one core
//! parses about a million (`benches/maillog.rs`).

pub mod correlate;
pub mod demo;
pub mod dovecot;
pub mod exporter;
pub mod format;
pub mod frame;
pub mod postfix;

use crate::event::Level;
use smallvec::SmallVec;

/// One log line's syslog framing, cut apart; every string borrows from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// When the line was written, in seconds since the Unix epoch, if the framing says (the
    /// caller uses the time of reading otherwise).
    pub time: Option<i64>,
    /// The host that wrote the line (`mx1`); empty when the framing has none.
    pub host: &'a str,
    /// The syslog tag without its pid: `postfix/smtpd`, `postfix/submission/smtpd`,
    /// `postfix-out/qmgr`, `dovecot`.
    pub program: &'a str,
    /// The pid in `program[pid]:`, when present.
    pub pid: Option<u32>,
    /// Everything after `program[pid]: `.
    pub message: &'a str,
}

impl<'a> LogRecord<'a> {
    /// The program's last path component: `smtpd` for `postfix/submission/smtpd`, `dovecot`
    /// for `dovecot`.
    pub fn service(&self) -> &'a str {
        self.program.rsplit('/').next().unwrap_or(self.program)
    }
}

/// A value of one of a parsed line's keys; strings borrow from the line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    /// A string, written as it is (escaped when serialised).
    Str(&'a str),
    /// An integer: a size, a count, a port, a duration in milliseconds.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// Which session a line belongs to, for the correlator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Session<'a> {
    /// None: the line stands alone unless it names a queue id.
    #[default]
    None,
    /// The session of the process that wrote it (host, program and pid): an smtpd process
    /// serves one client at a time.
    Process,
    /// A session named in the line, within a scope: postscreen's `[ip]:port`, Dovecot's
    /// `session=<id>`, which the login process and the mail process both log.
    Named {
        /// What the name is unique within (`"postscreen"`, `"dovecot"`), together with the
        /// host.
        scope: &'static str,
        /// The name.
        id: &'a str,
    },
}

/// What a line does to the span it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Opens {
    /// Nothing: it joins whatever span its session or queue id has.
    #[default]
    Nothing,
    /// It starts its session (smtpd's `connect from`, postscreen's `CONNECT`, a Dovecot
    /// login); a session still open under the same key is ended first.
    Session,
    /// It starts the message [`Parsed::queue_id`] names (smtpd's `client=`, pickup's
    /// `uid= from=`); a message still open under the same queue id is an older message whose
    /// `removed` was not seen, and is ended first.
    Message,
}

/// Most keys a parsed line carries.
pub const MAX_FIELDS: usize = 16;

/// What a program's parser makes of one log line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed<'a> {
    /// The event type: a catalogue type (`smtp.connection-start`, `delivery.delivered`) where
    /// the meaning is the same, else a `postfix.*` or `dovecot.*` name.
    pub ty: &'static str,
    /// A level other than the catalogue's for the type (`warning:` lines are `warn`).
    pub level: Option<Level>,
    /// The event's keys, catalogue names first (`remoteIp`, `to`, `queueId`, ...), at most
    /// [`MAX_FIELDS`]; the correlator adds `spanId` (and `parentSpanId`) itself.
    pub fields: SmallVec<[(&'static str, Val<'a>); MAX_FIELDS]>,
    /// The Postfix queue id the line names, if any: the event belongs to that message.
    pub queue_id: Option<&'a str>,
    /// The session the line belongs to when it names no queue id, or the session a message it
    /// opens was submitted in.
    pub session: Session<'a>,
    /// What the line starts.
    pub opens: Opens,
    /// True when the line ends its span: the session (smtpd's `disconnect`, Dovecot's
    /// `Disconnected`) or, with a queue id, the message (qmgr's `removed`).
    pub closes: bool,
    /// A queue id this line creates from its own message (bounce's `sender non-delivery
    /// notification: 5B3C`), so the new message is linked to the one that caused it.
    pub child_queue_id: Option<&'a str>,
}

impl<'a> Parsed<'a> {
    /// An event of type `ty` with no keys yet.
    pub fn new(ty: &'static str) -> Parsed<'a> {
        Parsed { ty, ..Parsed::default() }
    }

    /// Adds a key, unless [`MAX_FIELDS`] are already there (the parsers never need that many;
    /// the cap keeps a hostile line from growing an event).
    pub fn push(&mut self, key: &'static str, value: Val<'a>) {
        if self.fields.len() < MAX_FIELDS {
            self.fields.push((key, value));
        }
    }

    /// Adds a string key unless the string is empty (Stalwart leaves empty values out too).
    pub fn push_str(&mut self, key: &'static str, value: &'a str) {
        if !value.is_empty() {
            self.push(key, Val::Str(value));
        }
    }

    /// The value of `key`, if the line has it.
    pub fn get(&self, key: &str) -> Option<Val<'a>> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}
