//! Span correlation for mail logs: which session and which message each line belongs to, the
//! links between them, and the gauges that follow from them.
//!
//! A log line names its process (an smtpd pid), sometimes a session (postscreen's client
//! address, Dovecot's `session=<id>`) and sometimes a Postfix queue id. The [`Correlator`]
//! turns those names into span ids, which the matcher follows:
//!
//! - A **session** runs from the line that opens it (smtpd's `connect from`) to the one that
//!   closes it (`disconnect from`). Lines of the same process or session in between join it.
//! - A **message** runs from the line that opens its queue id (smtpd's `client=`, pickup's
//!   `uid= from=`) to qmgr's `removed`. Its first event carries `parentSpanId`, the session it
//!   was submitted in, so a subscriber following the session follows the message and its
//!   deliveries too, long after the session has closed.
//! - **Reused queue ids.** Postfix's short queue ids are derived from inode numbers and come
//!   back. A queue id maps to a message only from its opening line to its `removed`: an
//!   opening line for a queue id that is still open ends the old message first, and a line
//!   after `removed` that does not open the id gets a span of its own. Two messages never
//!   share a span.
//! - A line of a session or message whose opening line was never seen (livetap started in
//!   the middle) opens it implicitly, so the rest of it is still followed.
//!
//! Names are hashed (host, scope, name) to 64-bit keys, so the state holds no strings; it is
//! bounded by a cap per map and an idle time-out per entry, and the oldest tenth is dropped at
//! the cap. All of it is plain data with no I/O, driven by [`Correlator::link`] one line at a
//! time, in the order the lines were written.

use super::{LogRecord, Opens, Parsed, Session};
use ahash::AHashMap;
use std::hash::{BuildHasher, Hash, Hasher};

/// The spans the correlator gives one event, and what it adds to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// The event's span.
    pub span: Option<u64>,
    /// The span this event's span was opened from: a message's session, or the message a
    /// bounce notification was made for.
    pub parent: Option<u64>,
    /// True when the event ends its span.
    pub ends: bool,
    /// Milliseconds since the span opened, for an event that ends it and carries no `elapsed`
    /// of its own (a session's `disconnect`, a message's `removed`). Log times have whole
    /// seconds, so this is a multiple of 1,000.
    pub elapsed_ms: Option<i64>,
    /// A type to use instead of the parsed one: a message's second `queue active` line is a new
    /// delivery attempt, not a second queued message (which would count its size twice).
    pub retype: Option<&'static str>,
}

/// Bounds on the correlator's state.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most open sessions remembered.
    pub sessions: usize,
    /// Most open messages remembered.
    pub messages: usize,
    /// Seconds a session may stay silent before it is forgotten (its closing line was lost).
    pub session_idle_secs: i64,
    /// Seconds a message may stay silent before it is forgotten. Deferred messages are retried
    /// at least every `maximal_backoff_time` (4,000 s by default), so a day is generous.
    pub message_idle_secs: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { sessions: 65_536, messages: 262_144, session_idle_secs: 3_600, message_idle_secs: 86_400 }
    }
}

/// What kind of session an entry is, for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionKind {
    Smtp,
    Imap,
    Pop3,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct SessionState {
    span: u64,
    opened_at: i64,
    last_seen: i64,
    kind: SessionKind,
}

#[derive(Debug, Clone, Copy)]
struct MessageState {
    span: u64,
    opened_at: i64,
    last_seen: i64,
    /// The message's `queue active` line was seen: a later one is a new delivery attempt.
    activated: bool,
    /// The message was submitted by an authenticated client (`sasl_username=` on `client=`).
    authenticated: bool,
    /// The span to name as the message's parent: its session, or the message a bounce
    /// notification was made for.
    parent: Option<u64>,
    /// The parent was named on an event already (the first event of the message that could
    /// name it).
    linked: bool,
}

/// Gauge values derived from the open spans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Open SMTP sessions (smtpd processes between `connect` and `disconnect`):
    /// `smtp.active-connections`.
    pub smtp: u64,
    /// Open IMAP sessions: `imap.active-connections`.
    pub imap: u64,
    /// Open POP3 sessions: `pop3.active-connections`.
    pub pop3: u64,
    /// Messages between their first line and `removed`: `queue.count`, as seen in the log.
    pub messages: u64,
}

/// The correlator's state: open sessions and messages, by hashed name.
#[derive(Debug)]
pub struct Correlator {
    sessions: AHashMap<u64, SessionState>,
    messages: AHashMap<u64, MessageState>,
    /// A message a bounce created (`sender non-delivery notification: 5B3C`), waiting for its
    /// first line: new queue id → the original message's span.
    children: AHashMap<u64, u64>,
    hasher: ahash::RandomState,
    next_span: u64,
    limits: Limits,
    gauges: Gauges,
    /// The latest line time seen: idleness is measured against the log's own clock, so a
    /// source catching up on old lines (`--from-start`) does not expire what it just read.
    newest: i64,
}

impl Default for Correlator {
    fn default() -> Correlator {
        Correlator::new(Limits::default())
    }
}

/// The scope of a session named by its process.
const PROCESS: &str = "\u{0}process";
/// The scope of queue ids.
const QUEUE: &str = "\u{0}queue";

impl Correlator {
    /// An empty correlator. Span ids start at a random point below 2^53 (so JavaScript reads
    /// them exactly) and count up, so they differ from run to run and from other producers'.
    pub fn new(limits: Limits) -> Correlator {
        Correlator {
            sessions: AHashMap::new(),
            messages: AHashMap::new(),
            children: AHashMap::new(),
            // Fixed seeds: the keys only need to be spread, and a fixed hash keeps a test's
            // state reproducible.
            hasher: ahash::RandomState::with_seeds(0x6c69_7665, 0x0074_6170, 0x6d61_696c, 0x006c_6f67),
            next_span: fastrand::u64((1 << 40)..(1 << 52)),
            limits,
            gauges: Gauges::default(),
            newest: i64::MIN,
        }
    }

    /// The gauges as they stand.
    pub fn gauges(&self) -> Gauges {
        self.gauges
    }

    fn key(&self, host: &str, scope: &str, a: &str, b: Option<u32>) -> u64 {
        let mut h = self.hasher.build_hasher();
        host.hash(&mut h);
        scope.hash(&mut h);
        a.hash(&mut h);
        b.hash(&mut h);
        h.finish()
    }

    fn new_span(&mut self) -> u64 {
        self.next_span += 1;
        self.next_span
    }

    /// A new session's span. A Dovecot session's is a hash of its id, so its log lines and
    /// its exporter events (`maillog::exporter`, which keeps no state) land in one span.
    fn session_span(&mut self, session: Session<'_>) -> u64 {
        match session {
            Session::Named { scope: "dovecot", id } => super::exporter::session_span(id),
            _ => self.new_span(),
        }
    }

    fn session_key(&self, rec: &LogRecord<'_>, session: Session<'_>) -> Option<u64> {
        match session {
            Session::None => None,
            Session::Process => Some(self.key(rec.host, PROCESS, rec.program, rec.pid)),
            Session::Named { scope, id } => Some(self.key(rec.host, scope, id, None)),
        }
    }

    fn kind_of(rec: &LogRecord<'_>, parsed: &Parsed<'_>) -> SessionKind {
        if parsed.ty.starts_with("smtp.") && rec.service() == "smtpd" {
            SessionKind::Smtp
        } else if parsed.ty.starts_with("imap.") || rec.message.starts_with("imap") {
            SessionKind::Imap
        } else if parsed.ty.starts_with("pop3.") || rec.message.starts_with("pop3") {
            SessionKind::Pop3
        } else {
            SessionKind::Other
        }
    }

    fn count_session(&mut self, kind: SessionKind, up: bool) {
        let g = match kind {
            SessionKind::Smtp => &mut self.gauges.smtp,
            SessionKind::Imap => &mut self.gauges.imap,
            SessionKind::Pop3 => &mut self.gauges.pop3,
            SessionKind::Other => return,
        };
        *g = if up { *g + 1 } else { g.saturating_sub(1) };
    }

    fn open_session(&mut self, key: u64, session: Session<'_>, kind: SessionKind, now: i64) -> u64 {
        if self.sessions.len() >= self.limits.sessions && !self.sessions.contains_key(&key) {
            self.evict_sessions(now);
        }
        let span = self.session_span(session);
        let st = SessionState { span, opened_at: now, last_seen: now, kind };
        if let Some(old) = self.sessions.insert(key, st) {
            self.count_session(old.kind, false);
        }
        self.count_session(kind, true);
        span
    }

    fn close_session(&mut self, key: u64) {
        if let Some(old) = self.sessions.remove(&key) {
            self.count_session(old.kind, false);
        }
    }

    fn open_message(&mut self, key: u64, parent: Option<u64>, now: i64) -> u64 {
        if self.messages.len() >= self.limits.messages && !self.messages.contains_key(&key) {
            self.evict_messages(now);
        }
        let span = self.new_span();
        let st = MessageState {
            span,
            opened_at: now,
            last_seen: now,
            activated: false,
            authenticated: false,
            parent,
            linked: false,
        };
        if self.messages.insert(key, st).is_none() {
            self.gauges.messages += 1;
        }
        span
    }

    fn close_message(&mut self, key: u64) {
        if self.messages.remove(&key).is_some() {
            self.gauges.messages = self.gauges.messages.saturating_sub(1);
        }
    }

    /// Forgets sessions idle past their time-out and, if still at the cap, the oldest tenth.
    fn evict_sessions(&mut self, now: i64) {
        let idle = self.limits.session_idle_secs;
        self.retain_sessions(|s| now.saturating_sub(s.last_seen) <= idle);
        if self.sessions.len() >= self.limits.sessions {
            let cut = tenth_oldest(self.sessions.values().map(|s| s.last_seen));
            self.retain_sessions(|s| s.last_seen > cut);
        }
    }

    /// Keeps the sessions `keep` accepts, taking the others off the gauges.
    fn retain_sessions(&mut self, keep: impl Fn(&SessionState) -> bool) {
        let mut dropped = Vec::new();
        self.sessions.retain(|_, s| {
            let kept = keep(s);
            if !kept {
                dropped.push(s.kind);
            }
            kept
        });
        for kind in dropped {
            self.count_session(kind, false);
        }
    }

    /// Forgets messages idle past their time-out and, if still at the cap, the oldest tenth.
    fn evict_messages(&mut self, now: i64) {
        let idle = self.limits.message_idle_secs;
        self.messages.retain(|_, m| now.saturating_sub(m.last_seen) <= idle);
        if self.messages.len() >= self.limits.messages {
            let cut = tenth_oldest(self.messages.values().map(|m| m.last_seen));
            self.messages.retain(|_, m| m.last_seen > cut);
        }
        if self.children.len() >= self.limits.messages {
            self.children.clear();
        }
        self.gauges.messages = self.messages.len() as u64;
    }

    /// Drops every entry idle past its time-out: called now and then by the source (a
    /// session whose `disconnect` was lost must not count as active for ever). Idleness is
    /// measured against the newest line seen, never later than `now`: a log read from its
    /// start is measured by its own clock, and a quiet log keeps its state until it speaks.
    pub fn expire(&mut self, now: i64) {
        let now = now.min(self.newest);
        let (s, m) = (self.limits.session_idle_secs, self.limits.message_idle_secs);
        self.retain_sessions(|st| now.saturating_sub(st.last_seen) <= s);
        self.messages.retain(|_, st| now.saturating_sub(st.last_seen) <= m);
        self.gauges.messages = self.messages.len() as u64;
    }

    /// The spans of the event `parsed` makes of `rec`, written at `at` (seconds): updates the
    /// state as the line says.
    pub fn link(&mut self, rec: &LogRecord<'_>, parsed: &Parsed<'_>, at: i64) -> Link {
        let mut link = Link::default();
        self.newest = self.newest.max(at);
        let session_key = self.session_key(rec, parsed.session);
        if let Some(queue_id) = parsed.queue_id.filter(|q| !q.is_empty()) {
            let key = self.key(rec.host, QUEUE, queue_id, None);
            // The session the message was submitted in, if the line names one.
            let session_span = session_key.and_then(|k| self.sessions.get(&k)).map(|s| s.span);
            if parsed.opens == Opens::Message || !self.messages.contains_key(&key) {
                if parsed.opens == Opens::Message {
                    // An open message under this id is an older one whose `removed` was lost.
                    self.close_message(key);
                }
                let parent = self.children.remove(&key).or(session_span);
                self.open_message(key, parent, at);
            }
            if let Some(child) = parsed.child_queue_id.filter(|q| !q.is_empty()) {
                let child_key = self.key(rec.host, QUEUE, child, None);
                let span = self.messages[&key].span;
                match self.messages.get_mut(&child_key) {
                    // Postfix's cleanup logs the notification's queue id before bounce names
                    // it, so the child is usually open already: its next event names the
                    // parent.
                    Some(c) if c.parent.is_none() && c.span != span => c.parent = Some(span),
                    Some(_) => {}
                    None if self.children.len() < self.limits.messages => {
                        self.children.insert(child_key, span);
                    }
                    None => {}
                }
            }
            let st = self.messages.get_mut(&key).expect("opened above");
            st.last_seen = at;
            link.span = Some(st.span);
            if !st.linked && st.parent.is_some() {
                st.linked = true;
                link.parent = st.parent;
            }
            if parsed.opens == Opens::Message && parsed.get("accountName").is_some() {
                st.authenticated = true;
            }
            if parsed.ty == "queue.queue-message" {
                if st.activated {
                    link.retype = Some("delivery.attempt-start");
                } else if parsed.get("from").is_none() {
                    // The null sender `from=<>`: a delivery status notification Postfix made
                    // (a bounce or a delay warning), queued as Stalwart queues its DSNs.
                    link.retype = Some("queue.queue-dsn");
                } else if st.authenticated {
                    link.retype = Some("queue.queue-message-authenticated");
                }
                st.activated = true;
            }
            if parsed.closes {
                link.ends = true;
                if parsed.get("elapsed").is_none() {
                    link.elapsed_ms = Some(at.saturating_sub(st.opened_at).saturating_mul(1000));
                }
                self.close_message(key);
            }
            return link;
        }
        let Some(key) = session_key else {
            return link;
        };
        if parsed.opens == Opens::Session || !self.sessions.contains_key(&key) {
            // An implicit session (its opening line came before livetap started) is not
            // counted as an active connection unless this line opens it.
            let kind =
                if parsed.opens == Opens::Session { Self::kind_of(rec, parsed) } else { SessionKind::Other };
            if parsed.closes && parsed.opens != Opens::Session {
                // A lone closing line: give it a span of its own and keep nothing.
                link.span = Some(self.session_span(parsed.session));
                link.ends = true;
                return link;
            }
            self.open_session(key, parsed.session, kind, at);
        }
        let st = self.sessions.get_mut(&key).expect("opened above");
        st.last_seen = at;
        link.span = Some(st.span);
        if parsed.closes {
            link.ends = true;
            if parsed.get("elapsed").is_none() {
                link.elapsed_ms = Some(at.saturating_sub(st.opened_at).saturating_mul(1000));
            }
            self.close_session(key);
        }
        link
    }
}

/// The `last_seen` at or below which the oldest tenth of the entries lie.
fn tenth_oldest(times: impl Iterator<Item = i64>) -> i64 {
    let mut ages: Vec<i64> = times.collect();
    if ages.is_empty() {
        return i64::MIN;
    }
    let k = ages.len() / 10;
    let (_, cut, _) = ages.select_nth_unstable(k);
    *cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::maillog::Val;

    fn rec<'a>(program: &'a str, pid: u32, message: &'a str) -> LogRecord<'a> {
        LogRecord { time: Some(0), host: "mx", program, pid: Some(pid), message }
    }

    fn line<'a>(
        ty: &'static str,
        queue_id: Option<&'a str>,
        session: Session<'a>,
        opens: Opens,
    ) -> Parsed<'a> {
        Parsed { queue_id, session, opens, ..Parsed::new(ty) }
    }

    /// A session, the message it submitted, the message's deliveries after the session ended,
    /// and the gauges along the way.
    #[test]
    fn session_then_message_then_delivery() {
        let mut c = Correlator::default();
        let smtpd = rec("postfix/smtpd", 812, "connect from a[192.0.2.7]");
        let connect =
            c.link(&smtpd, &line("smtp.connection-start", None, Session::Process, Opens::Session), 100);
        let session = connect.span.unwrap();
        assert_eq!(c.gauges().smtp, 1);
        let client =
            c.link(&smtpd, &line("postfix.client", Some("4F2A"), Session::Process, Opens::Message), 101);
        let message = client.span.unwrap();
        assert_ne!(message, session);
        assert_eq!(client.parent, Some(session));
        assert_eq!(c.gauges().messages, 1);
        let mut disconnect = line("smtp.connection-end", None, Session::Process, Opens::Nothing);
        disconnect.closes = true;
        let end = c.link(&smtpd, &disconnect, 103);
        assert_eq!((end.span, end.ends, end.elapsed_ms), (Some(session), true, Some(3000)));
        assert_eq!(c.gauges().smtp, 0);
        let qmgr = rec("postfix/qmgr", 5, "");
        let mut queued = line("queue.queue-message", Some("4F2A"), Session::None, Opens::Nothing);
        queued.push("from", Val::Str("a@example.org"));
        let active = c.link(&qmgr, &queued, 104);
        assert_eq!((active.span, active.parent, active.retype), (Some(message), None, None));
        let sent = c.link(
            &rec("postfix/smtp", 9, ""),
            &line("delivery.delivered", Some("4F2A"), Session::None, Opens::Nothing),
            105,
        );
        assert_eq!(sent.span, Some(message));
        // A second activation (after a deferral) is a new attempt, not a new message.
        let again = c.link(&qmgr, &queued, 160);
        assert_eq!(again.retype, Some("delivery.attempt-start"));
        let mut removed = line("delivery.completed", Some("4F2A"), Session::None, Opens::Nothing);
        removed.closes = true;
        let gone = c.link(&qmgr, &removed, 170);
        assert_eq!((gone.span, gone.ends, gone.elapsed_ms), (Some(message), true, Some(69_000)));
        assert_eq!(c.gauges(), Gauges::default());
    }

    /// A queue id that comes back is a new message: a new span, never the old one.
    #[test]
    fn a_reused_queue_id_never_joins_two_messages() {
        let mut c = Correlator::default();
        let smtpd = rec("postfix/smtpd", 1, "");
        let first =
            c.link(&smtpd, &line("postfix.client", Some("ABC"), Session::Process, Opens::Message), 0).span;
        let mut removed = line("delivery.completed", Some("ABC"), Session::None, Opens::Nothing);
        removed.closes = true;
        assert_eq!(c.link(&rec("postfix/qmgr", 2, ""), &removed, 1).span, first);
        // After `removed`, the id opens a new message ...
        let second =
            c.link(&smtpd, &line("postfix.client", Some("ABC"), Session::Process, Opens::Message), 2).span;
        assert_ne!(second, first);
        // ... and when `removed` was lost, the opening line still starts a new one.
        let third =
            c.link(&smtpd, &line("postfix.client", Some("ABC"), Session::Process, Opens::Message), 3).span;
        assert_ne!(third, second);
        assert_eq!(c.gauges().messages, 1);
        // A stray line after `removed` gets a span of its own.
        c.link(&rec("postfix/qmgr", 2, ""), &removed, 4);
        let stray = c
            .link(
                &rec("postfix/smtp", 3, ""),
                &line("delivery.delivered", Some("ABC"), Session::None, Opens::Nothing),
                5,
            )
            .span;
        assert!(stray != first && stray != second && stray != third);
    }

    /// Sessions of different processes, hosts and scopes are told apart; a named session is
    /// shared by every process that logs its name (Dovecot's login and mail processes).
    #[test]
    fn sessions_are_keyed_by_host_process_and_name() {
        let mut c = Correlator::default();
        let open = |c: &mut Correlator, r: &LogRecord<'_>, s: Session<'_>| {
            c.link(r, &line("smtp.connection-start", None, s, Opens::Session), 0).span.unwrap()
        };
        let a = open(&mut c, &rec("postfix/smtpd", 1, ""), Session::Process);
        let b = open(&mut c, &rec("postfix/smtpd", 2, ""), Session::Process);
        let other_host = LogRecord { host: "mx2", ..rec("postfix/smtpd", 1, "") };
        let d = open(&mut c, &other_host, Session::Process);
        assert!(a != b && a != d && b != d);
        let login = rec("dovecot", 0, "imap-login: Login");
        let named = Session::Named { scope: "dovecot", id: "abc" };
        let s = c.link(&login, &line("auth.success", None, named, Opens::Session), 0).span;
        let later = c
            .link(&rec("dovecot", 0, "imap(u)"), &line("imap.connection-end", None, named, Opens::Nothing), 1)
            .span;
        assert_eq!(s, later);
    }

    /// A bounce's notification is linked to the message that caused it.
    #[test]
    fn a_bounce_notification_is_a_child_of_its_message() {
        let mut c = Correlator::default();
        let original = c
            .link(
                &rec("postfix/pickup", 1, ""),
                &line("postfix.pickup", Some("AAA"), Session::None, Opens::Message),
                0,
            )
            .span;
        let mut bounce = line("postfix.bounce", Some("AAA"), Session::None, Opens::Nothing);
        bounce.child_queue_id = Some("BBB");
        assert_eq!(c.link(&rec("postfix/bounce", 2, ""), &bounce, 1).span, original);
        let child = c.link(
            &rec("postfix/cleanup", 3, ""),
            &line("postfix.cleanup", Some("BBB"), Session::None, Opens::Nothing),
            1,
        );
        assert_eq!(child.parent, original);
        assert_ne!(child.span, original);
    }

    /// An authenticated submission is queued as `queue.queue-message-authenticated`.
    #[test]
    fn an_authenticated_client_queues_authenticated_messages() {
        let mut c = Correlator::default();
        let mut client = line("postfix.client", Some("Q1"), Session::Process, Opens::Message);
        client.push("accountName", Val::Str("alice"));
        c.link(&rec("postfix/submission/smtpd", 1, ""), &client, 0);
        let mut queued = line("queue.queue-message", Some("Q1"), Session::None, Opens::Nothing);
        queued.push("from", Val::Str("alice@example.org"));
        let active = c.link(&rec("postfix/qmgr", 2, ""), &queued, 0);
        assert_eq!(active.retype, Some("queue.queue-message-authenticated"));
        // A message from the null sender is a DSN Postfix made.
        let dsn = line("queue.queue-message", Some("Q2"), Session::None, Opens::Nothing);
        assert_eq!(c.link(&rec("postfix/qmgr", 2, ""), &dsn, 0).retype, Some("queue.queue-dsn"));
    }

    /// Memory stays bounded: at the cap the oldest entries go, and idle ones expire with the
    /// gauges following.
    #[test]
    fn state_is_bounded_and_expires() {
        let limits = Limits { sessions: 100, messages: 100, session_idle_secs: 10, message_idle_secs: 10 };
        let mut c = Correlator::new(limits);
        for i in 0..1000u32 {
            let r = rec("postfix/smtpd", i, "");
            c.link(
                &r,
                &line("smtp.connection-start", None, Session::Process, Opens::Session),
                i as i64 / 100,
            );
            let q = i.to_string();
            c.link(&r, &line("postfix.client", Some(&q), Session::Process, Opens::Message), i as i64 / 100);
        }
        assert!(c.sessions.len() <= 100 && c.messages.len() <= 100);
        assert_eq!(c.gauges().smtp as usize, c.sessions.len());
        assert_eq!(c.gauges().messages as usize, c.messages.len());
        // Measured by the log's clock: nothing is idle yet at the newest line's time ...
        c.expire(1_000);
        assert!(c.gauges().smtp > 0);
        // ... and everything is once the log has moved on.
        c.link(&rec("postfix/qmgr", 1, ""), &line("postfix.log", None, Session::None, Opens::Nothing), 1_000);
        c.expire(1_000);
        assert_eq!(c.gauges(), Gauges::default());
    }
}
