//! Postfix's log messages: what each line of smtpd, postscreen, cleanup, qmgr, the delivery
//! agents and the other daemons means, as an event type, its keys and its span hints.
//!
//! The parser is stateless and reads one record's message with hand-written scanning
//! (`memchr` and `str` prefixes), so any line can be parsed, tested and fuzzed alone, and a
//! core parses several million lines a second (`benches/maillog.rs`). It never fails: a line
//! it does not know becomes a `postfix.log` event (or `postfix.warning`, `postfix.error`,
//! `postfix.fatal`, `postfix.panic` after those prefixes) carrying the program, the pid and
//! the text, with the queue id when the text starts with one.
//!
//! The rules the mapping follows (the whole table is in README.md, "Postfix and Dovecot
//! hosts"):
//! - A line gets a Stalwart catalogue type only where the meaning is the same (`connect from`
//!   is `smtp.connection-start`, `status=sent` is `delivery.delivered`); everything else is a
//!   `postfix.*` type. No `postfix.*` name ends in `-end`, which the builder would read as a
//!   span end.
//! - Keys are catalogue keys wherever the meaning matches (`remoteIp`, `hostname`, `from`,
//!   `to`, `size`, `code`, `details`, `reason`, `queueId`, `elapsed` in milliseconds,
//!   `accountName`, ...), so filters, metrics and classic clients see them; the few Postfix
//!   facts with no catalogue key use their own: `dsn`, `delays`, `origTo`, `origQueueId`,
//!   `childQueueId`, and `program` and `pid` on generic lines.
//! - The level is the catalogue's for the type (Postfix writes its info lines at one level),
//!   except after a `warning:` (warn) or `error:`, `fatal:`, `panic:` prefix (error).
//! - Every line naming a queue id carries it as `queueId` and as [`Parsed::queue_id`]; every
//!   smtpd line belongs to its process's session ([`Session::Process`]); every postscreen
//!   line naming a client belongs to the session named by its `[ip]:port`.

use super::{LogRecord, Opens, Parsed, Session, Val};
use crate::event::Level;
use memchr::{memchr, memchr_iter, memrchr_iter};

/// Parses the message of a record whose program is a Postfix daemon (`postfix/*`, or any
/// `syslog_name` ending in a Postfix service name, dispatched on [`LogRecord::service`]).
/// Never fails: a line it does not know becomes a `postfix.log` event carrying the program,
/// pid and text.
pub fn parse<'a>(rec: &LogRecord<'a>) -> Parsed<'a> {
    let text = rec.message.trim_end_matches(['\r', '\n', ' ']);
    let service = rec.service();
    let (severity, body) = severity(text);
    // One `Parsed` for the whole line, filled in place by the rule that reads it: it is
    // large (its keys are inline), and moving it from rule to rule was a third of the time.
    let mut p = Parsed::new("postfix.log");
    if known(&mut p, rec, service, body).is_none() {
        generic(&mut p, rec, severity.map_or("postfix.log", |s| s.ty), body);
    }
    if let Some(s) = severity {
        p.level.get_or_insert(s.level);
    }
    // An smtpd process serves one client at a time, so each of its lines belongs to the
    // session its `connect from` opened, whatever the line says.
    if service == "smtpd" && p.session == Session::None {
        p.session = Session::Process;
    }
    p
}

/// A severity prefix Postfix's `msg_warn`, `msg_error`, `msg_fatal` and `msg_panic` write.
#[derive(Clone, Copy)]
struct Severity {
    /// The generic type of a line with this prefix that is otherwise unknown.
    ty: &'static str,
    /// The level every line with this prefix gets.
    level: Level,
}

/// Cuts a severity prefix off `text`.
fn severity(text: &str) -> (Option<Severity>, &str) {
    const PREFIXES: [(&str, Severity); 4] = [
        ("warning: ", Severity { ty: "postfix.warning", level: Level::Warn }),
        ("error: ", Severity { ty: "postfix.error", level: Level::Error }),
        ("fatal: ", Severity { ty: "postfix.fatal", level: Level::Error }),
        ("panic: ", Severity { ty: "postfix.panic", level: Level::Error }),
    ];
    for (prefix, sev) in PREFIXES {
        if let Some(rest) = text.strip_prefix(prefix) {
            return (Some(sev), rest);
        }
    }
    (None, text)
}

/// The event for a line no rule knows: its text, program and pid, and its queue id when it
/// starts with one (so `postsuper`'s `4F2A: placed on hold` still joins its message).
fn generic<'a>(p: &mut Parsed<'a>, rec: &LogRecord<'a>, ty: &'static str, body: &'a str) {
    start(p, ty);
    if let Some((Some(qid), _)) = queue_prefix(body) {
        set_queue_id(p, qid);
    }
    p.push_str("details", body);
    p.push_str("program", rec.program);
    if let Some(pid) = rec.pid {
        p.push("pid", Val::Int(i64::from(pid)));
    }
}

/// The rules, in the order they are tried: lines after a queue id (or `NOQUEUE`) first,
/// whatever the program, then the program's own lines, then lines any program may write.
fn known<'a>(p: &mut Parsed<'a>, rec: &LogRecord<'a>, service: &'a str, body: &'a str) -> Option<()> {
    if let Some((qid, rest)) = queue_prefix(body) {
        if queued(p, service, qid, rest).is_some() {
            return Some(());
        }
    }
    let own = match service {
        "smtpd" => smtpd(p, rec, body),
        "postscreen" => postscreen(p, body),
        "anvil" => anvil(p, body),
        "master" => master(p, body),
        "dnsblog" => dnsblog(p, body),
        "tlsproxy" => tlsproxy(p, body),
        _ => None,
    };
    own.or_else(|| any_program(p, service, body))
}

// ---------------------------------------------------------------------------------------
// Lines after a queue id
// ---------------------------------------------------------------------------------------

/// Splits `4F2A1C0: rest` into the queue id and the rest, and `NOQUEUE: rest` into `None`
/// and the rest; `None` when the text starts with neither.
fn queue_prefix(s: &str) -> Option<(Option<&str>, &str)> {
    let b = s.as_bytes();
    let colon = memchr(b':', &b[..b.len().min(40)])?;
    if b.get(colon + 1) != Some(&b' ') {
        return None;
    }
    let (id, rest) = (&s[..colon], &s[colon + 2..]);
    if id == "NOQUEUE" {
        Some((None, rest))
    } else if is_queue_id(id) {
        Some((Some(id), rest))
    } else {
        None
    }
}

/// True for a Postfix queue id: a short one (`4F2A1C0`: upper-case hex, the microseconds
/// and the inode number) or a long one (`4bK1xY2zZ3z9`: a base-52 alphabet without vowels,
/// `z` between the time and the inode number). Words a log line starts with (`warning`,
/// `statistics`, `NOQUEUE`, `CONNECT`) are neither.
fn is_queue_id(id: &str) -> bool {
    let b = id.as_bytes();
    if !(6..=32).contains(&b.len()) {
        return false;
    }
    if b.iter().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)) {
        return true;
    }
    b.len() >= 11
        && b.contains(&b'z')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() && !b"AEIOUaeiou".contains(&c))
}

/// Sets the line's queue id, as a span hint and as the `queueId` key.
fn set_queue_id<'a>(p: &mut Parsed<'a>, qid: &'a str) {
    p.queue_id = Some(qid);
    p.push("queueId", Val::Str(qid));
}

/// Starts the line's event afresh as type `ty` (a rule tried before may have left keys).
fn start(p: &mut Parsed<'_>, ty: &'static str) {
    p.ty = ty;
    p.level = None;
    p.fields.clear();
    p.queue_id = None;
    p.session = Session::None;
    p.opens = Opens::Nothing;
    p.closes = false;
    p.child_queue_id = None;
}

/// Starts the line's event as type `ty` for the line's queue id, if it has one.
fn start_qid<'a>(p: &mut Parsed<'a>, ty: &'static str, qid: Option<&'a str>) {
    start(p, ty);
    if let Some(q) = qid {
        set_queue_id(p, q);
    }
}

/// Lines of the form `QUEUEID: ...` or `NOQUEUE: ...`, whatever program wrote them: most of
/// what follows a message's way through Postfix.
fn queued<'a>(p: &mut Parsed<'a>, service: &str, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    let b = rest.as_bytes();
    match b.first()? {
        b't' if rest.starts_with("to=<") => return delivery(p, qid, rest),
        b'f' if rest.starts_with("from=<") => return qmgr_from(p, qid, rest),
        b'c' if rest.starts_with("client=") => return client(p, qid, &rest[7..]),
        b'c' if rest.starts_with("conversation with ") => {
            return remote_trouble(p, qid, &rest[18..], "network.timeout", " timed out while ")
        }
        b'u' if rest.starts_with("uid=") => return pickup(p, qid, &rest[4..]),
        b'm' if rest.starts_with("message-id=") => {
            return message_id(p, qid, &rest[11..], "postfix.message-id")
        }
        b'r' if rest.starts_with("resent-message-id=") => {
            return message_id(p, qid, &rest[18..], "postfix.resent-message-id")
        }
        b'r' if rest.starts_with("removed") => return removed(p, service, qid, &rest[7..]),
        b'h' if rest.starts_with("host ") => return remote_reply(p, qid, &rest[5..]),
        b'l' if rest.starts_with("lost connection with ") => {
            return remote_trouble(p, qid, &rest[21..], "postfix.lost-connection", " while ")
        }
        b'T' if rest.starts_with("TLS is required, but ") => {
            start_qid(p, "delivery.start-tls-unavailable", qid);
            p.push_str("details", rest);
            return Some(());
        }
        _ => {}
    }
    if notification(p, qid, rest).is_some() {
        return Some(());
    }
    if session_trouble(p, service, qid, rest).is_some() {
        return Some(());
    }
    let colon = memchr(b':', &b[..b.len().min(24)])?;
    let word = &rest[..colon];
    let after = rest[colon + 1..].strip_prefix(' ').unwrap_or(&rest[colon + 1..]);
    let ty = action_type(word)?;
    action(p, service, qid, word, ty, after);
    Some(())
}

/// smtpd's (or qmqpd's) `4F2A: client=host[ip]`, `, sasl_method=PLAIN, sasl_username=u`,
/// `, orig_queue_id=...`, `, orig_client=...`: the message is born in the client's session.
/// Its type is Postfix's own: no catalogue event means "a queue file was opened for this
/// client". A SASL login shows here as `accountName` and `type` (the mechanism); Postfix logs
/// no line of its own for a successful AUTH, and an `auth.success` per message would count
/// one login many times.
fn client<'a>(p: &mut Parsed<'a>, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    start_qid(p, "postfix.client", qid);
    p.session = Session::Process;
    if qid.is_some() {
        p.opens = Opens::Message;
    }
    let Some((peer, mut tail)) = peer(rest) else {
        p.push_str("details", rest);
        return Some(());
    };
    push_peer(p, &peer, false);
    while let Some(r) = tail.strip_prefix(", ") {
        let (pair, next) = match find(r, ", ") {
            Some(i) => (&r[..i], &r[i..]),
            None => (r, ""),
        };
        if let Some((k, v)) = pair.split_once('=') {
            match k {
                "sasl_method" => p.push_str("type", v),
                "sasl_username" => p.push_str("accountName", v),
                "orig_queue_id" => p.push_str("origQueueId", v),
                _ => {}
            }
        }
        tail = next;
    }
    Some(())
}

/// pickup's `4F2A: uid=0 from=<root>` (` orig_id=...`): a message submitted with the local
/// `sendmail` command is born here.
fn pickup<'a>(p: &mut Parsed<'a>, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    let (uid, tail) = rest.split_once(' ')?;
    let from = tail.strip_prefix("from=<")?;
    let uid: i64 = uid.parse().ok()?;
    start_qid(p, "postfix.pickup", qid);
    if qid.is_some() {
        p.opens = Opens::Message;
    }
    p.push("uid", Val::Int(uid));
    p.push_str("from", angle(from).0);
    Some(())
}

/// cleanup's `4F2A: message-id=<...>` (and `resent-message-id=`): the header's value, without
/// its angle brackets, in `id`.
fn message_id<'a>(p: &mut Parsed<'a>, qid: Option<&'a str>, value: &'a str, ty: &'static str) -> Option<()> {
    start_qid(p, ty, qid);
    let id = value.strip_prefix('<').map_or(value, |v| v.strip_suffix('>').unwrap_or(v));
    p.push_str("id", id);
    Some(())
}

/// `4F2A: removed`: the queue file is gone, so the message's span ends. qmgr removes a message
/// once every recipient is delivered, bounced or expired, which is what Stalwart's
/// `delivery.completed` says; the correlator adds its `elapsed` (the message's time in the
/// queue), which feeds the `delivery.total-time` histogram. `postsuper -d` and cleanup
/// (`removed (discarded)`) end a message too, as `postfix.removed`.
fn removed<'a>(p: &mut Parsed<'a>, service: &str, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    let qid = qid?;
    let reason = match rest {
        "" => "",
        r => r.strip_prefix(" (")?.strip_suffix(')')?,
    };
    let ty = match service {
        "qmgr" | "nqmgr" | "oqmgr" if reason.is_empty() => "delivery.completed",
        _ => "postfix.removed",
    };
    start_qid(p, ty, Some(qid));
    p.push_str("reason", reason);
    p.closes = true;
    Some(())
}

/// qmgr's `4F2A: from=<a>, size=1234, nrcpt=1 (queue active)`, written each time the message
/// enters the active queue (the correlator tells the first time from a retry), and
/// `4F2A: from=<a>, status=expired, returned to sender`.
fn qmgr_from<'a>(p: &mut Parsed<'a>, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    let (from, mut tail) = angle(&rest[6..]);
    start_qid(p, "queue.queue-message", qid);
    p.push_str("from", from);
    while let Some(r) = tail.strip_prefix(", ") {
        let end = find(r, ", ").unwrap_or(r.len());
        let pair = &r[..end];
        tail = &r[end..];
        let (k, v) = pair.split_once('=')?;
        match k {
            "size" => p.push("size", Val::Int(v.parse().ok()?)),
            "nrcpt" => {
                // `nrcpt=1 (queue active)`: the count, then what qmgr did.
                let n = v.split(' ').next().unwrap_or(v);
                p.push("total", Val::Int(n.parse().ok()?));
            }
            "status" => {
                // Stalwart has no event for a message that outlived its queue lifetime.
                p.ty = "postfix.expired";
                p.push_str("reason", v);
                return Some(());
            }
            _ => {}
        }
    }
    p.get("size").is_some().then_some(())
}

/// A delivery agent's `4F2A: to=<b>, orig_to=<c>, relay=host[ip]:port, delay=1.2,
/// delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 5B3C)`: the outcome
/// of one recipient's delivery (or of a verify probe).
fn delivery<'a>(p: &mut Parsed<'a>, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    start_qid(p, "postfix.delivery", qid);
    let mut s = rest;
    let mut loopback = false;
    loop {
        let eq = memchr(b'=', s.as_bytes())?;
        let key = &s[..eq];
        let v = &s[eq + 1..];
        if key == "status" {
            let (word, text) = match v.split_once(' ') {
                Some((w, t)) => (w, t.strip_prefix('(').map_or(t, |t| t.strip_suffix(')').unwrap_or(t))),
                None => (v, ""),
            };
            p.ty = match word {
                "sent" => "delivery.delivered",
                "deferred" | "SOFTBOUNCE" => "delivery.dsn-temp-fail",
                "bounced" => "delivery.dsn-perm-fail",
                "deliverable" | "undeliverable" => "postfix.verify",
                _ => "postfix.delivery",
            };
            if p.ty.starts_with("postfix.") {
                p.push_str("status", word);
            }
            if let Some(code) = reply_code(text) {
                p.push("code", Val::Str(code));
            }
            p.push_str("details", text);
            p.child_queue_id = qid.and(child_of_delivery(text, loopback));
            return Some(());
        }
        let (val, next) = match v.strip_prefix('<') {
            Some(inner) => angle(inner),
            None => match find(v, ", ") {
                Some(i) => (&v[..i], &v[i..]),
                None => (v, ""),
            },
        };
        match key {
            "to" => p.push_str("to", val),
            "orig_to" => p.push_str("origTo", val),
            "relay" => loopback = push_relay(p, val),
            "delay" => {
                if let Some(ms) = seconds_ms(val) {
                    p.push("elapsed", Val::Int(ms));
                }
            }
            "delays" => p.push_str("delays", val),
            "dsn" => p.push_str("dsn", val),
            _ if key.contains(' ') => return None,
            _ => {}
        }
        s = next.strip_prefix(", ")?;
    }
}

/// The relay of a delivery line: `mx.example.com[192.0.2.1]:25` gives `hostname`, `remoteIp`
/// and `remotePort`; `mail.example.com[private/dovecot-lmtp]` gives `hostname` and `path`; a
/// transport name (`local`, `virtual`, `dovecot`) is the `hostname`; `none` gives nothing.
/// Returns true when the relay is a loopback address (a content filter on this host).
fn push_relay<'a>(p: &mut Parsed<'a>, relay: &'a str) -> bool {
    if relay == "none" || relay.is_empty() {
        return false;
    }
    match peer(relay) {
        Some((peer, "")) => {
            push_peer(p, &peer, true);
            peer.addr.starts_with("127.") || peer.addr == "::1"
        }
        _ => {
            p.push_str("hostname", relay);
            false
        }
    }
}

/// The message a delivery created on this host: `forwarded as 5C3D` (local's alias or
/// `.forward` expansion) or, from a relay on a loopback address (a content filter such as
/// amavis that reinjects into this Postfix), `queued as 5B3C`.
fn child_of_delivery(text: &str, loopback: bool) -> Option<&str> {
    let id = if let Some(rest) = text.strip_prefix("forwarded as ") {
        rest
    } else if loopback {
        let at = rfind(text, "queued as ")?;
        &text[at + 10..]
    } else {
        return None;
    };
    let end = id.find([' ', ')', ',', ';']).unwrap_or(id.len());
    let id = &id[..end];
    is_queue_id(id).then_some(id)
}

/// bounce's `4F2A: sender non-delivery notification: 5B3C` (and the delay, success and
/// postmaster notifications): a DSN message, 5B3C, was queued for 4F2A. That is Stalwart's
/// `queue.queue-dsn`; the line belongs to the original message, and the new one is its child.
fn notification<'a>(p: &mut Parsed<'a>, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    qid?;
    if !(rest.starts_with("sender ") || rest.starts_with("postmaster ")) {
        return None;
    }
    let at = find(rest, " notification: ")?;
    let kind = &rest[..at + 13];
    let child = &rest[at + 15..];
    start_qid(p, "queue.queue-dsn", qid);
    p.push_str("reason", kind);
    if is_queue_id(child) {
        p.push_str("childQueueId", child);
        p.child_queue_id = Some(child);
    }
    Some(())
}

/// smtp's non-final trouble with one server, before it tries the next: `host mx[ip] said:
/// 450 ... (in reply to RCPT TO command)` and `host mx[ip] refused to talk to me: 554 ...`.
/// The command the reply answered picks Stalwart's delivery event.
fn remote_reply<'a>(p: &mut Parsed<'a>, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    let (peer, tail) = peer(rest)?;
    let (ty, text) = if let Some(t) = tail.strip_prefix(" said: ") {
        let ty = match in_reply_to(t) {
            Some("RCPT TO") => "delivery.rcpt-to-rejected",
            Some("MAIL FROM") => "delivery.mail-from-rejected",
            Some("end of DATA" | "DATA") => "delivery.message-rejected",
            Some("EHLO" | "HELO" | "LHLO") => "delivery.ehlo-rejected",
            _ => "postfix.remote-reply",
        };
        (ty, t)
    } else if let Some(t) = tail.strip_prefix(" refused to talk to me: ") {
        ("delivery.greeting-failed", t)
    } else {
        return None;
    };
    start_qid(p, ty, qid);
    push_peer(p, &peer, true);
    if let Some(code) = reply_code(text) {
        p.push("code", Val::Str(code));
    }
    p.push_str("details", text);
    Some(())
}

/// The command of a reply's `(in reply to RCPT TO command)`.
fn in_reply_to(text: &str) -> Option<&str> {
    let at = rfind(text, "(in reply to ")?;
    text[at + 13..].strip_suffix(" command)")
}

/// smtp's `4F2A: conversation with mx[ip] timed out while sending RCPT TO` and `4F2A: lost
/// connection with mx[ip] while receiving the initial server greeting`.
fn remote_trouble<'a>(
    p: &mut Parsed<'a>,
    qid: Option<&'a str>,
    rest: &'a str,
    ty: &'static str,
    sep: &str,
) -> Option<()> {
    let (peer, tail) = peer(rest)?;
    let what = tail.strip_prefix(sep)?;
    start_qid(p, ty, qid);
    push_peer(p, &peer, true);
    p.push_str("details", what);
    Some(())
}

/// smtpd's abnormal ends of a session: `lost connection after DATA (1234 bytes) from
/// host[ip]`, `timeout after RCPT from host[ip]`, `too many errors after AUTH from host[ip]`,
/// and `improper command pipelining after CONNECT from host[ip]: text`. Postfix 3.10 and
/// later write them after the queue id (or `NOQUEUE`); earlier versions without one.
fn session_trouble<'a>(p: &mut Parsed<'a>, service: &str, qid: Option<&'a str>, rest: &'a str) -> Option<()> {
    if service != "smtpd" {
        return None;
    }
    let (ty, tail) = if let Some(t) = rest.strip_prefix("lost connection after ") {
        ("postfix.lost-connection", t)
    } else if let Some(t) = rest.strip_prefix("timeout after ") {
        ("network.timeout", t)
    } else if let Some(t) = rest.strip_prefix("too many errors after ") {
        ("postfix.too-many-errors", t)
    } else if let Some(t) = rest.strip_prefix("improper command pipelining after ") {
        ("postfix.improper-pipelining", t)
    } else {
        return None;
    };
    let at = find(tail, " from ")?;
    let mut stage = &tail[..at];
    let mut size = None;
    // `DATA (1234 bytes)`: the bytes received before the connection went.
    if let Some(open) = stage.find(" (") {
        size = stage[open + 2..].strip_suffix(" bytes)").and_then(|n| n.parse::<i64>().ok());
        stage = &stage[..open];
    }
    let (peer, after) = peer(&tail[at + 6..])?;
    start_qid(p, ty, qid);
    push_peer(p, &peer, false);
    p.push_str("details", stage);
    if let Some(n) = size {
        p.push("size", Val::Int(n));
    }
    if let Some(input) = after.strip_prefix(": ") {
        p.push_str("contents", input);
    }
    p.session = Session::Process;
    Some(())
}

// ---------------------------------------------------------------------------------------
// Access decisions: reject, milter-reject, hold, discard, ...
// ---------------------------------------------------------------------------------------

/// The type of an access decision's line, by the action word before its colon; `reject` is
/// refined by its reason ([`reject_type`]), `milter-reject` by its reply code.
fn action_type(word: &str) -> Option<&'static str> {
    Some(match word {
        "reject" => "postfix.reject",
        "reject_warning" => "postfix.reject-warning",
        "milter-reject" => "milter.action-reject",
        "milter-discard" => "milter.action-discard",
        "milter-hold" => "postfix.milter-hold",
        "hold" => "postfix.hold",
        "discard" => "postfix.discard",
        "filter" => "postfix.filter",
        "redirect" => "postfix.redirect",
        "bcc" => "postfix.bcc",
        "warn" | "warning" => "postfix.check-warning",
        "info" => "postfix.check-info",
        "hangup" => "postfix.hangup",
        "delay" => "postfix.delay",
        "prepend" => "postfix.prepend",
        "replace" => "postfix.replace",
        "strip" => "postfix.strip",
        "abort" => "postfix.abort",
        "proxy-reject" => "postfix.proxy-reject",
        "proxy-accept" => "postfix.proxy-accept",
        _ => return None,
    })
}

/// An access decision, in the three forms Postfix writes one:
/// - smtpd and postscreen: `NOQUEUE: reject: RCPT from host[ip]: 550 5.1.1 <u@d>: Recipient
///   address rejected: ...; from=<a> to=<b> proto=ESMTP helo=<h>` (postscreen separates the
///   trailing keys with commas);
/// - cleanup's header and body checks: `4F2A: reject: header Subject: ... from host[ip];
///   from=<a> to=<b> proto=ESMTP helo=<h>: 550 5.7.1 text`;
/// - smtpd's before-queue proxy: `4F2A: proxy-reject: END-OF-MESSAGE: 554 text; from=<a> ...`.
///
/// Keys: the reply's `code` and `dsn`, its text as `details`, the client (`remoteIp`,
/// `hostname`), `from`, `to`, the HELO name as `domain` (as in `smtp.ehlo`), the SASL login
/// as `accountName`, a matched header or body line as `contents`.
fn action<'a>(
    p: &mut Parsed<'a>,
    service: &str,
    qid: Option<&'a str>,
    word: &str,
    ty: &'static str,
    rest: &'a str,
) {
    start_qid(p, ty, qid);
    let (head, whatsup) = split_whatsup(rest);
    let cleanup_style = ["header ", "body ", "content ", "mime-error "].iter().any(|c| head.starts_with(c));
    let mut reply = head;
    let mut client = None;
    if cleanup_style {
        // `header Subject: buy now from host[ip]` (the origin may be `local`): the matched
        // content is everything before the last ` from `.
        match rfind(head, " from ") {
            Some(at) => {
                p.push_str("contents", &head[..at]);
                client = peer(&head[at + 6..]).map(|(peer, _)| peer);
            }
            None => p.push_str("contents", head),
        }
        reply = "";
    } else if let Some(at) = find(head, " from ") {
        // `RCPT from host[ip]: reply`.
        if let Some((peer, tail)) = peer(&head[at + 6..]) {
            client = Some(peer);
            reply = tail.strip_prefix(": ").unwrap_or(tail.trim_start());
        }
    } else if let Some((_, tail)) = head.split_once(": ") {
        // `END-OF-MESSAGE: reply`.
        reply = tail;
    }
    if let Some(peer) = &client {
        push_peer(p, peer, false);
        if service == "postscreen" && !peer.whole.is_empty() {
            p.session = Session::Named { scope: "postscreen", id: peer.whole };
        }
    }
    let tail = push_whatsup(p, whatsup);
    if cleanup_style {
        reply = tail.strip_prefix(": ").unwrap_or("");
    }
    let (code, dsn, text) = split_reply(reply);
    p.ty = match word {
        "reject" => reject_type(code, text),
        "milter-reject" => match (code, dsn) {
            (Some("421"), Some("4.7.0")) if text == "Server closing connection" => "milter.action-shutdown",
            (Some(c), _) if c.starts_with('4') => "milter.action-temp-fail",
            (None, Some(d)) if d.starts_with('4') => "milter.action-temp-fail",
            _ => "milter.action-reject",
        },
        // smtpd's `NOQUEUE: abort: TLS from host[ip]: reason`: the handshake failed.
        "abort" if head.starts_with("TLS from ") => "tls.handshake-error",
        _ => ty,
    };
    if let Some(c) = code {
        p.push("code", Val::Str(c));
    }
    p.push_str("dsn", dsn.unwrap_or(""));
    p.push_str(if p.ty == "tls.handshake-error" { "reason" } else { "details" }, text);
    if word == "warn" || word == "warning" {
        p.level = Some(Level::Warn);
    }
}

/// Which catalogue event a `reject` is, by its reason; `postfix.reject` when none means the
/// same.
fn reject_type(code: Option<&str>, text: &str) -> &'static str {
    let has = |needle: &str| find(text, needle).is_some();
    if has("reylist") {
        "smtp.rcpt-to-greylisted"
    } else if has("Relay access denied") {
        "smtp.relay-not-allowed"
    } else if has("User unknown") {
        "smtp.mailbox-does-not-exist"
    } else if has(" blocked using ") || has("Client host rejected: Access denied") {
        "security.ip-blocked"
    } else if has("Sender address rejected: not owned by user") {
        "smtp.mail-from-unauthorized"
    } else if has("Sender address rejected: not logged in") {
        "smtp.mail-from-unauthenticated"
    } else if has("Sender address rejected: need fully-qualified address") {
        "smtp.invalid-sender-address"
    } else if has("Recipient address rejected: need fully-qualified address") {
        "smtp.invalid-recipient-address"
    } else if has("Sender address rejected") {
        "smtp.mail-from-not-allowed"
    } else if has("Helo command rejected: need fully-qualified hostname")
        || has("Helo command rejected: Invalid name")
    {
        "smtp.invalid-ehlo"
    } else if has("Message size exceeds fixed limit") {
        "smtp.message-too-large"
    } else if code.is_none() && text == "too many connections" {
        "smtp.concurrency-limit-exceeded"
    } else {
        "postfix.reject"
    }
}

/// Splits a decision's text at the `;` before its trailing ` from=<...> to=<...> proto=...
/// helo=<...>` keys (the reply itself may hold `;`, as DNSBL replies do): the first `;` that
/// the line's end, one of those keys or cleanup's `: text` follows.
fn split_whatsup(s: &str) -> (&str, &str) {
    for at in memchr_iter(b';', s.as_bytes()) {
        let after = &s[at + 1..];
        let key = after.strip_prefix(' ').unwrap_or(after);
        if after.is_empty()
            || after.starts_with(':')
            || ["from=<", "to=<", "proto=", "helo=<", "sasl_"].iter().any(|k| key.starts_with(k))
        {
            return (&s[..at], after);
        }
    }
    (s, "")
}

/// Reads ` from=<a> to=<b> proto=ESMTP helo=<h> sasl_username=u` (or postscreen's
/// comma-separated form) into the event's keys; returns what follows them (cleanup's
/// `: text`).
fn push_whatsup<'a>(p: &mut Parsed<'a>, mut s: &'a str) -> &'a str {
    loop {
        s = s.trim_start_matches([' ', ',']);
        let Some(eq) = memchr(b'=', s.as_bytes()) else { return s };
        let key = &s[..eq];
        if key.is_empty() || key.bytes().any(|c| !(c.is_ascii_lowercase() || c == b'_')) {
            return s;
        }
        let v = &s[eq + 1..];
        let (val, next) = match v.strip_prefix('<') {
            Some(inner) => angle(inner),
            None => {
                let end = v.find([' ', ',', ':']).unwrap_or(v.len());
                (&v[..end], &v[end..])
            }
        };
        match key {
            "from" => p.push_str("from", val),
            "to" => p.push_str("to", val),
            "helo" => p.push_str("domain", val),
            "sasl_username" => p.push_str("accountName", val),
            _ => {}
        }
        if next.len() == s.len() {
            return next;
        }
        s = next;
    }
}

/// Splits an SMTP reply into its code (`550`), its enhanced status code (`5.1.1`) and its
/// text; either code may be missing (milters and postscreen write replies without them).
fn split_reply(s: &str) -> (Option<&str>, Option<&str>, &str) {
    let mut rest = s;
    let code = starts_with_code(s).then(|| &s[..3]);
    if code.is_some() {
        rest = rest[3..].trim_start_matches([' ', '-']);
    }
    let tok_end = rest.find(' ').unwrap_or(rest.len());
    let dsn = is_dsn(&rest[..tok_end]).then(|| &rest[..tok_end]);
    if dsn.is_some() {
        rest = rest[tok_end..].trim_start();
    }
    (code, dsn, rest)
}

/// The three-digit SMTP reply code a text starts with, or that follows its ` said: `
/// (a remote server's reply quoted in a delivery status).
fn reply_code(text: &str) -> Option<&str> {
    let at = if starts_with_code(text) {
        0
    } else {
        find(text, " said: ").map(|i| i + 7).filter(|&i| starts_with_code(&text[i..]))?
    };
    Some(&text[at..at + 3])
}

/// True when `s` starts with a reply code: `[2-5]dd` and then the end, a space or a dash.
fn starts_with_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && (b'2'..=b'5').contains(&b[0])
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && matches!(b.get(3), None | Some(b' ' | b'-'))
}

/// True for an enhanced status code (`5.1.1`, `4.7.0`).
fn is_dsn(s: &str) -> bool {
    let mut parts = s.split('.');
    let class = parts.next().unwrap_or("");
    matches!(class, "2" | "4" | "5")
        && parts
            .by_ref()
            .take(2)
            .filter(|p| (1..=3).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()))
            .count()
            == 2
        && parts.next().is_none()
}

// ---------------------------------------------------------------------------------------
// smtpd
// ---------------------------------------------------------------------------------------

/// smtpd's lines that name no queue id: the session's connect and disconnect, the ends of
/// abnormal sessions, and the warnings about a client.
fn smtpd<'a>(p: &mut Parsed<'a>, rec: &LogRecord<'a>, body: &'a str) -> Option<()> {
    if let Some(r) = body.strip_prefix("connect from ") {
        let (peer, _) = peer(r)?;
        start(p, "smtp.connection-start");
        // The listener is the program tag, `postfix/smtpd` or `postfix/submission/smtpd`:
        // master.cf's service name shows only when its `syslog_name` says so.
        p.push_str("listenerId", rec.program);
        push_peer(p, &peer, false);
        p.opens = Opens::Session;
        p.session = Session::Process;
        return Some(());
    }
    if let Some(r) = body.strip_prefix("disconnect from ") {
        let (peer, rest) = peer(r)?;
        start(p, "smtp.connection-end");
        push_peer(p, &peer, false);
        // `ehlo=1 mail=1 rcpt=0/1 data=1 quit=1 commands=4/5`: each command's successes (and
        // its count, when some failed); `total` is the number of commands.
        let stats = rest.trim_start();
        p.push_str("details", stats);
        if let Some(n) = commands_total(stats) {
            p.push("total", Val::Int(n));
        }
        p.closes = true;
        p.session = Session::Process;
        return Some(());
    }
    if session_trouble(p, "smtpd", None, body).is_some() {
        return Some(());
    }
    if let Some(r) = body.strip_prefix("Refusing STARTTLS request from ") {
        let (peer, _) = peer(r)?;
        start(p, "smtp.start-tls-unavailable");
        push_peer(p, &peer, false);
        return Some(());
    }
    if let Some(r) = body.strip_prefix("non-SMTP command from ") {
        let (peer, tail) = peer(r)?;
        start(p, "smtp.invalid-command");
        push_peer(p, &peer, false);
        p.push_str("contents", tail.strip_prefix(": ").unwrap_or(tail));
        return Some(());
    }
    if let Some(r) = body.strip_prefix("Illegal address syntax from ") {
        // `Illegal address syntax from host[ip] in MAIL command: <x>`.
        let (peer, tail) = peer(r)?;
        let (cmd, addr) = tail.strip_prefix(" in ")?.split_once(" command: ")?;
        let ty = if cmd == "MAIL" { "smtp.invalid-sender-address" } else { "smtp.invalid-recipient-address" };
        start(p, ty);
        push_peer(p, &peer, false);
        p.push_str("details", addr);
        return Some(());
    }
    if let Some(r) = body.strip_prefix("hostname ") {
        // `hostname mx.example.com does not resolve to address 192.0.2.1[: reason]`: the
        // forward-confirmed reverse lookup failed, which is Stalwart's `smtp.iprev-fail`.
        let (name, tail) = r.split_once(" does not resolve to address ")?;
        let (addr, reason) = tail.split_once(": ").unwrap_or((tail, ""));
        start(p, "smtp.iprev-fail");
        p.push_str("domain", name);
        p.push_str("remoteIp", addr);
        p.push_str("details", reason);
        return Some(());
    }
    if let Some(at) = find(body, " limit exceeded: ") {
        // `Connection rate limit exceeded: 31 from host[ip] for service smtp`: anvil's limits.
        let what = &body[..at];
        let (count, tail) = body[at + 17..].split_once(" from ")?;
        let (peer, _) = peer(tail)?;
        let ty = if what == "Connection concurrency" {
            "smtp.concurrency-limit-exceeded"
        } else {
            "smtp.rate-limit-exceeded"
        };
        start(p, ty);
        push_peer(p, &peer, false);
        p.push_str("reason", &body[..at + 15]);
        if let Ok(n) = count.parse::<i64>() {
            p.push("total", Val::Int(n));
        }
        return Some(());
    }
    sasl(p, body)
}

/// The command total of smtpd's per-command counts: `commands=4/5` is 5 commands of which 4
/// succeeded, `commands=5` is 5 that all did.
fn commands_total(stats: &str) -> Option<i64> {
    let at = find(stats, "commands=")?;
    let v = &stats[at + 9..];
    let v = &v[..v.find(' ').unwrap_or(v.len())];
    let total = v.split_once('/').map_or(v, |(_, t)| t);
    total.parse().ok()
}

/// `unknown[192.0.2.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6[, sasl_username=u]`
/// (after `warning:`) is `auth.failed`; `... SASL PLAIN authentication aborted` is Postfix's
/// own, since the client gave up rather than failed.
fn sasl<'a>(p: &mut Parsed<'a>, body: &'a str) -> Option<()> {
    let (peer, tail) = peer(body)?;
    let rest = tail.strip_prefix(": SASL ")?;
    let (mech, outcome) = rest.split_once(' ')?;
    if let Some(reason) = outcome.strip_prefix("authentication failed") {
        start(p, "auth.failed");
        let reason = reason.strip_prefix(": ").unwrap_or(reason);
        // Postfix 3.9 and later add the user name the client gave.
        let (reason, user) = match rfind(reason, ", sasl_username=") {
            Some(at) => (&reason[..at], &reason[at + 16..]),
            None => (reason, ""),
        };
        if user != "(unavailable)" {
            p.push_str("accountName", user);
        }
        p.push_str("details", reason);
    } else if outcome == "authentication aborted" {
        start(p, "postfix.auth-aborted");
    } else {
        return None;
    }
    push_peer(p, &peer, false);
    p.push_str("type", mech);
    Some(())
}

// ---------------------------------------------------------------------------------------
// postscreen
// ---------------------------------------------------------------------------------------

/// postscreen's lines. Each names its client as `[ip]:port`, and that text names the
/// postscreen session (`Session::Named { scope: "postscreen", id: "[ip]:port" }`) from
/// `CONNECT` to `DISCONNECT`, or to the `PASS` or allowlisting that hands the connection to
/// smtpd (postscreen writes nothing more about it then; when it does go on to a
/// `DISCONNECT`, that line closes nothing). postscreen's `CONNECT` is not
/// `smtp.connection-start`: a client that passes is counted again by smtpd's `connect from`.
fn postscreen<'a>(p: &mut Parsed<'a>, body: &'a str) -> Option<()> {
    if let Some(r) = body.strip_prefix("reject: ") {
        // `reject: connect from [ip]:port: all screening ports busy`, without `NOQUEUE`.
        action(p, "postscreen", None, "reject", "postfix.reject", r);
        return Some(());
    }
    if let Some(r) = body.strip_prefix("CONNECT from ") {
        let (client, tail) = endpoint(r)?;
        start(p, "postfix.postscreen-connect");
        push_endpoint(p, &client);
        if let Some((server, _)) = tail.strip_prefix(" to ").and_then(endpoint) {
            p.push_str("localIp", server.addr);
            push_port(p, "localPort", server.port);
        }
        p.opens = Opens::Session;
        return Some(());
    }
    if let Some(r) = body.strip_prefix("PASS ") {
        let (which, r) = r.split_once(' ')?;
        let (client, _) = endpoint(r)?;
        start(p, "postfix.postscreen-pass");
        push_endpoint(p, &client);
        p.push_str("result", which);
        p.closes = true;
        return Some(());
    }
    if let Some(r) = body.strip_prefix("DISCONNECT ") {
        let (client, _) = endpoint(r)?;
        start(p, "postfix.postscreen-disconnect");
        push_endpoint(p, &client);
        p.closes = true;
        return Some(());
    }
    for (prefix, ty, closes) in [
        ("WHITELISTED ", "postfix.postscreen-allowlisted", true),
        ("ALLOWLISTED ", "postfix.postscreen-allowlisted", true),
        ("WHITELIST VETO ", "postfix.postscreen-allowlist-veto", false),
        ("ALLOWLIST VETO ", "postfix.postscreen-allowlist-veto", false),
        // The client is on postscreen's access list as rejected: Stalwart's blocked IP.
        ("BLACKLISTED ", "security.ip-blocked", false),
        ("DENYLISTED ", "security.ip-blocked", false),
    ] {
        if let Some(r) = body.strip_prefix(prefix) {
            let (client, _) = endpoint(r)?;
            start(p, ty);
            push_endpoint(p, &client);
            p.closes = closes;
            return Some(());
        }
    }
    if let Some(r) = body.strip_prefix("PREGREET ") {
        // `PREGREET 11 after 0.12 from [ip]:port: EHLO x\r\n`: the client spoke first.
        let (count, r) = r.split_once(" after ")?;
        let (secs, r) = r.split_once(" from ")?;
        let (client, tail) = endpoint(r)?;
        start(p, "postfix.postscreen-pregreet");
        push_endpoint(p, &client);
        if let Ok(n) = count.parse::<i64>() {
            p.push("size", Val::Int(n));
        }
        if let Some(ms) = seconds_ms(secs) {
            p.push("elapsed", Val::Int(ms));
        }
        p.push_str("contents", tail.strip_prefix(": ").unwrap_or(tail));
        return Some(());
    }
    if let Some(r) = body.strip_prefix("DNSBL rank ") {
        // `DNSBL rank 3 for [ip]:port`: the sum of the weights of the lists naming the client.
        let (rank, r) = r.split_once(" for ")?;
        let (client, _) = endpoint(r)?;
        start(p, "postfix.postscreen-dnsbl");
        push_endpoint(p, &client);
        p.push("total", Val::Int(rank.parse().ok()?));
        return Some(());
    }
    if let Some(r) = body.strip_prefix("HANGUP after ") {
        // `HANGUP after 0.5 from [ip]:port in tests after SMTP handshake`.
        let (secs, r) = r.split_once(" from ")?;
        let (client, tail) = endpoint(r)?;
        start(p, "postfix.postscreen-hangup");
        push_endpoint(p, &client);
        if let Some(ms) = seconds_ms(secs) {
            p.push("elapsed", Val::Int(ms));
        }
        p.push_str("details", tail.strip_prefix(" in ").unwrap_or(tail));
        return Some(());
    }
    // A failed protocol test: `COMMAND PIPELINING from [ip]:port after EHLO: QUIT\r\n`,
    // `NON-SMTP COMMAND ...`, `BARE NEWLINE ...`, `COMMAND TIME LIMIT ...`, `DATA without
    // valid RCPT from [ip]:port`.
    let at = find(body, " from [")?;
    let test = &body[..at];
    if !(test.starts_with("COMMAND ")
        || test == "NON-SMTP COMMAND"
        || test == "BARE NEWLINE"
        || test.ends_with(" without valid RCPT"))
    {
        return None;
    }
    let (client, tail) = endpoint(&body[at + 6..])?;
    start(p, "postfix.postscreen-violation");
    push_endpoint(p, &client);
    p.push_str("reason", test);
    p.push_str("details", tail.trim_start());
    Some(())
}

/// A `[ip]:port` endpoint as postscreen writes it.
struct Endpoint<'a> {
    /// The whole `[ip]:port` text: the postscreen session's name.
    whole: &'a str,
    /// The address.
    addr: &'a str,
    /// The port, when written.
    port: Option<&'a str>,
}

/// Reads `[ip]:port` at the start of `s`; returns it and what follows.
fn endpoint(s: &str) -> Option<(Endpoint<'_>, &str)> {
    let (peer, rest) = peer(s)?;
    if !peer.name.is_empty() {
        return None;
    }
    Some((Endpoint { whole: peer.whole, addr: peer.addr, port: peer.port }, rest))
}

/// Adds a postscreen client's keys and names the line's session after it.
fn push_endpoint<'a>(p: &mut Parsed<'a>, e: &Endpoint<'a>) {
    p.push_str("remoteIp", e.addr);
    push_port(p, "remotePort", e.port);
    p.session = Session::Named { scope: "postscreen", id: e.whole };
}

// ---------------------------------------------------------------------------------------
// Other programs
// ---------------------------------------------------------------------------------------

/// anvil's `statistics: max connection rate 1/60s for (smtp:192.0.2.7) at Jan  1 12:00:00`,
/// `max connection count 5 for (...)`, `max cache size 3 at ...`: the peaks of the last
/// interval, as `postfix.anvil` with the measure in `reason`, the peak in `total`, the
/// `service:address` in `id` and the address as `remoteIp`.
fn anvil<'a>(p: &mut Parsed<'a>, body: &'a str) -> Option<()> {
    let r = body.strip_prefix("statistics: ")?;
    start(p, "postfix.anvil");
    p.push_str("details", r);
    let (measure, tail) = if let Some(at) = find(r, " rate ") {
        (&r[..at + 5], &r[at + 6..])
    } else if let Some(at) = find(r, " count ") {
        (&r[..at + 6], &r[at + 7..])
    } else if let Some(t) = r.strip_prefix("max cache size ") {
        (&r[..14], t)
    } else {
        return Some(());
    };
    p.push_str("reason", measure);
    let value = &tail[..tail.find([' ', '/']).unwrap_or(tail.len())];
    if let Ok(n) = value.parse::<i64>() {
        p.push("total", Val::Int(n));
    }
    if let Some(at) = find(tail, " for (") {
        let who = &tail[at + 6..];
        if let Some(end) = memchr(b')', who.as_bytes()) {
            let who = &who[..end];
            p.push_str("id", who);
            if let Some((_, addr)) = who.split_once(':') {
                p.push_str("remoteIp", addr);
            }
        }
    }
    Some(())
}

/// master's `daemon started -- version 3.7.11, configuration /etc/postfix` (Stalwart's
/// `server.startup`), `reload -- version ...` and `terminating on signal 15`
/// (`server.shutdown`).
fn master<'a>(p: &mut Parsed<'a>, body: &'a str) -> Option<()> {
    if let Some(r) = body.strip_prefix("daemon started -- ").or_else(|| body.strip_prefix("reload -- ")) {
        start(p, if body.starts_with("daemon") { "server.startup" } else { "postfix.reload" });
        if let Some(v) = r.strip_prefix("version ") {
            p.push_str("version", &v[..v.find(',').unwrap_or(v.len())]);
        }
        p.push_str("details", r);
        return Some(());
    }
    if let Some(r) = body.strip_prefix("terminating on ") {
        start(p, "server.shutdown");
        p.push_str("details", r);
        return Some(());
    }
    None
}

/// dnsblog's `addr 192.0.2.7 listed by domain zen.spamhaus.org as 127.0.0.2`: one DNSBL
/// answer for postscreen, Stalwart's `spam.dnsbl` (the list as `hostname`, the answer as
/// `result`).
fn dnsblog<'a>(p: &mut Parsed<'a>, body: &'a str) -> Option<()> {
    let r = body.strip_prefix("addr ")?;
    let (addr, r) = r.split_once(" listed by domain ")?;
    let (domain, answer) = r.split_once(" as ").unwrap_or((r, ""));
    start(p, "spam.dnsbl");
    p.push_str("remoteIp", addr);
    p.push_str("hostname", domain);
    p.push_str("result", answer);
    Some(())
}

/// tlsproxy's `CONNECT from [ip]:port` (or `to`) and `DISCONNECT [ip]:port`: the proxy's own
/// view of a TLS connection postscreen or smtp handed it.
fn tlsproxy<'a>(p: &mut Parsed<'a>, body: &'a str) -> Option<()> {
    let (ty, r) = if let Some(r) = body.strip_prefix("CONNECT ") {
        ("postfix.tlsproxy-connect", r.split_once(' ')?.1)
    } else {
        ("postfix.tlsproxy-disconnect", body.strip_prefix("DISCONNECT ")?)
    };
    let (peer, _) = peer(r)?;
    start(p, ty);
    push_peer(p, &peer, false);
    Some(())
}

/// Lines any program may write: TLS handshakes (smtpd, smtp, lmtp, tlsproxy), and smtp's
/// failed connections.
fn any_program<'a>(p: &mut Parsed<'a>, service: &str, body: &'a str) -> Option<()> {
    let b = body.as_bytes();
    match b.first()? {
        b'T' if body.starts_with("TLS library problem: ") => {
            start(p, "tls.handshake-error");
            p.push_str("reason", &body[21..]);
            Some(())
        }
        b'A' | b'T' | b'U' | b'V' => tls_established(p, body),
        b'S' if body.starts_with("SSL_accept error from ") => {
            tls_error(p, "tls.handshake-error", &body[22..])
        }
        b'S' if body.starts_with("SSL_connect error to ") => {
            tls_error(p, "delivery.start-tls-error", &body[21..])
        }
        b'c' if body.starts_with("connect to ") && matches!(service, "smtp" | "lmtp") => {
            // `connect to mx.example.com[192.0.2.1]:25: Connection refused`: one server of
            // several could not be reached (the last one's reason is in the deferral).
            let (peer, tail) = peer(&body[11..])?;
            start(p, "delivery.connect-error");
            push_peer(p, &peer, true);
            p.push_str("reason", tail.strip_prefix(": ").unwrap_or(tail));
            Some(())
        }
        _ => None,
    }
    .or_else(|| if service == "smtpd" { None } else { sasl(p, body) })
}

/// `Anonymous TLS connection established from host[ip]: TLSv1.3 with cipher ...` (a server
/// side: `tls.handshake`) and `Trusted TLS connection established to mx[ip]:25: ...` (a
/// client side: Stalwart's `delivery.start-tls`): `version` is the protocol, `details` the
/// cipher text, `result` the peer's trust (`Anonymous`, `Untrusted`, `Trusted`, `Verified`).
fn tls_established<'a>(p: &mut Parsed<'a>, body: &'a str) -> Option<()> {
    let (trust, r) = body.split_once(" TLS connection ")?;
    if !matches!(trust, "Anonymous" | "Untrusted" | "Trusted" | "Verified") {
        return None;
    }
    let r = r.strip_prefix("established ").or_else(|| r.strip_prefix("reused "))?;
    let (ty, r) = if let Some(r) = r.strip_prefix("from ") {
        ("tls.handshake", r)
    } else {
        ("delivery.start-tls", r.strip_prefix("to ")?)
    };
    let (peer, tail) = peer(r)?;
    start(p, ty);
    push_peer(p, &peer, ty == "delivery.start-tls");
    // Past the peer, and the SNI name a server may add (` to mail.example.org`).
    let at = find(tail, ": ")?;
    let (version, cipher) = tail[at + 2..].split_once(" with cipher ").unwrap_or((&tail[at + 2..], ""));
    p.push_str("version", version);
    p.push_str("details", cipher);
    p.push_str("result", trust);
    Some(())
}

/// `SSL_accept error from host[ip]: -1` and `SSL_connect error to mx[ip]:25: lost
/// connection`: a handshake that failed.
fn tls_error<'a>(p: &mut Parsed<'a>, ty: &'static str, r: &'a str) -> Option<()> {
    let (peer, tail) = peer(r)?;
    start(p, ty);
    push_peer(p, &peer, ty == "delivery.start-tls-error");
    p.push_str("reason", tail.strip_prefix(": ").unwrap_or(tail));
    Some(())
}

// ---------------------------------------------------------------------------------------
// Scanning helpers
// ---------------------------------------------------------------------------------------

/// A peer as Postfix writes it: `name[addr]`, `name[addr]:port`, or postscreen's `[addr]:port`.
struct Peer<'a> {
    /// The host name; `unknown` when the reverse lookup failed; empty in postscreen's form.
    name: &'a str,
    /// What is between the brackets: an address, or a Unix socket's path.
    addr: &'a str,
    /// The port, when written.
    port: Option<&'a str>,
    /// `[addr]:port` as written, the name of a postscreen session.
    whole: &'a str,
}

/// Reads a peer at the start of `s`; returns it and what follows. The name holds no space,
/// so a `[` further on in a sentence is not mistaken for one.
fn peer(s: &str) -> Option<(Peer<'_>, &str)> {
    let b = s.as_bytes();
    let open = memchr(b'[', b)?;
    if b[..open].contains(&b' ') {
        return None;
    }
    let close = open + 1 + memchr(b']', &b[open + 1..])?;
    let mut end = close + 1;
    let mut port = None;
    if b.get(end) == Some(&b':') {
        let digits = b[end + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            port = Some(&s[end + 1..end + 1 + digits]);
            end += 1 + digits;
        }
    }
    let peer = Peer { name: &s[..open], addr: &s[open + 1..close], port, whole: &s[open..end] };
    Some((peer, &s[end..]))
}

/// Adds a peer's keys: `hostname` (unless `unknown`), `remoteIp` and `remotePort`; for a relay
/// (`relay` true), what is between the brackets may be a Unix socket's `path` instead.
fn push_peer<'a>(p: &mut Parsed<'a>, peer: &Peer<'a>, relay: bool) {
    // `unknown` is Postfix's word for a failed reverse lookup; a destination given as an
    // address (`127.0.0.1[127.0.0.1]`) has no name either.
    if peer.name != "unknown" && peer.name != peer.addr {
        p.push_str("hostname", peer.name);
    }
    if looks_like_ip(peer.addr) {
        p.push_str("remoteIp", peer.addr);
    } else if relay {
        p.push_str("path", peer.addr);
    }
    push_port(p, "remotePort", peer.port);
}

/// Adds a port as an integer key.
fn push_port<'a>(p: &mut Parsed<'a>, key: &'static str, port: Option<&str>) {
    if let Some(n) = port.and_then(|s| s.parse::<u16>().ok()) {
        p.push(key, Val::Int(i64::from(n)));
    }
}

/// True when `s` has an IP address's characters (digits, hex letters, dots and colons, with a
/// dot or a colon); the builder parses it for real when it canonicalises `remoteIp`.
fn looks_like_ip(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 45
        && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'.' || c == b':')
        && s.bytes().any(|c| c == b'.' || c == b':')
}

/// Where `needle` first occurs in `hay`. A log line is short, and building a `memmem`
/// searcher for each call costs more than checking each place `memchr` finds the needle's
/// first byte.
fn find(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    memchr_iter(*n.first()?, h).find(|&i| h[i..].starts_with(n))
}

/// Where `needle` last occurs in `hay` (see [`find`]).
fn rfind(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    memrchr_iter(*n.first()?, h).find(|&i| h[i..].starts_with(n))
}

/// Reads the rest of an `<address>` whose `<` is already cut: the address, and what follows
/// its `>` (the first `>` that the end, a space, a comma or a colon follows, since an address may
/// itself hold a `>`). Without one, the address runs to the end.
fn angle(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    for at in memchr_iter(b'>', b) {
        if matches!(b.get(at + 1), None | Some(b' ' | b',' | b':')) {
            return (&s[..at], &s[at + 1..]);
        }
    }
    (s, "")
}

/// Postfix's decimal seconds (`1.2`, `0.05`, `1234`) in whole milliseconds, rounded; `None`
/// for anything else or a value too large.
fn seconds_ms(s: &str) -> Option<i64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || whole.len() > 15 || !whole.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut ms: i64 = whole.parse::<i64>().ok()? * 1000;
    let f = frac.as_bytes();
    for (i, scale) in [100, 10, 1].into_iter().enumerate() {
        if let Some(d) = f.get(i) {
            ms += i64::from(d - b'0') * scale;
        }
    }
    if f.get(3).is_some_and(|&d| d >= b'5') {
        ms += 1;
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Catalogue;
    use crate::ingest::maillog::MAX_FIELDS;
    use std::fmt::Write as _;

    /// Cuts a test corpus line's framing with the framing the sources use (`frame.rs`).
    fn record(line: &str) -> LogRecord<'_> {
        let clock = crate::ingest::maillog::frame::Clock { now: 1_796_652_532, utc_offset: 0 };
        crate::ingest::maillog::frame::parse_line(line, &clock).expect("a framed corpus line")
    }

    /// A record with just a program and a message.
    fn rec<'a>(program: &'a str, message: &'a str) -> LogRecord<'a> {
        LogRecord { time: None, host: "mx1", program, pid: Some(42), message }
    }

    /// One line of a `.expected` file: the type, a level other than the type's, every key in
    /// order, then the span hints after `|`.
    fn render(p: &Parsed<'_>) -> String {
        let mut s = String::from(p.ty);
        if let Some(level) = p.level {
            let _ = write!(s, " level={}", level.as_str());
        }
        for (k, v) in &p.fields {
            let _ = match v {
                Val::Str(x) => write!(s, " {k}={x:?}"),
                Val::Int(n) => write!(s, " {k}={n}"),
                Val::Bool(b) => write!(s, " {k}={b}"),
            };
        }
        let mut hints = Vec::new();
        if let Some(q) = p.queue_id {
            hints.push(format!("queue={q}"));
        }
        match p.session {
            Session::None => {}
            Session::Process => hints.push("session=process".into()),
            Session::Named { scope, id } => hints.push(format!("session={scope}:{id}")),
        }
        match p.opens {
            Opens::Nothing => {}
            Opens::Session => hints.push("opens=session".into()),
            Opens::Message => hints.push("opens=message".into()),
        }
        if p.closes {
            hints.push("closes".into());
        }
        if let Some(c) = p.child_queue_id {
            hints.push(format!("child={c}"));
        }
        if !hints.is_empty() {
            s.push_str(" |");
            for h in hints {
                s.push(' ');
                s.push_str(&h);
            }
        }
        s
    }

    /// True when `inner` lies within `outer`'s memory: a key value borrows from the record.
    fn within(inner: &str, outer: &str) -> bool {
        let (i, o) = (inner.as_ptr() as usize, outer.as_ptr() as usize);
        i >= o && i + inner.len() <= o + outer.len()
    }

    /// What every parse must hold, whatever the input: a type, at most the cap of keys, no
    /// empty string, every string borrowed from the message or the program, and span hints
    /// that agree with each other.
    fn check_invariants(r: &LogRecord<'_>, p: &Parsed<'_>) {
        assert!(!p.ty.is_empty() && !p.ty.ends_with("-end") || p.ty == "smtp.connection-end", "{}", p.ty);
        assert!(p.fields.len() <= MAX_FIELDS);
        for (k, v) in &p.fields {
            if let Val::Str(s) = v {
                assert!(!s.is_empty(), "{k} is empty");
                assert!(within(s, r.message) || within(s, r.program), "{k}={s:?} is not from the record");
            }
        }
        if p.opens == Opens::Message || p.child_queue_id.is_some() {
            assert!(p.queue_id.is_some(), "a message without a queue id: {}", render(p));
        }
        if let Some(q) = p.queue_id {
            assert!(is_queue_id(q) && p.get("queueId") == Some(Val::Str(q)));
        }
        if let Session::Named { id, .. } = p.session {
            assert!(within(id, r.message));
        }
    }

    /// Parses every line of `tests/data/maillog/<name>.log` and compares each with the same
    /// line of `<name>.expected`. With `LIVETAP_BLESS=1` it writes the file instead (then
    /// read the difference before committing it).
    fn check_corpus(name: &str) -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/maillog/");
        let log = std::fs::read_to_string(format!("{dir}{name}.log")).expect("corpus");
        let got: Vec<String> = log
            .lines()
            .map(|line| {
                let r = record(line);
                let p = parse(&r);
                check_invariants(&r, &p);
                render(&p)
            })
            .collect();
        let path = format!("{dir}{name}.expected");
        if std::env::var_os("LIVETAP_BLESS").is_some() {
            std::fs::write(&path, got.join("\n") + "\n").unwrap();
        }
        let expected = std::fs::read_to_string(&path).expect("expected parses");
        let expected: Vec<&str> = expected.lines().collect();
        assert_eq!(expected.len(), got.len(), "{name}: one expected line per log line");
        let lines: Vec<&str> = log.lines().collect();
        for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
            assert_eq!(e, g, "{name}.log line {}: {}", i + 1, lines[i]);
        }
        got
    }

    #[test]
    fn real_corpus_parses_as_expected() {
        let got = check_corpus("postfix-real");
        // The run the corpus records: each scenario's key line is understood.
        for ty in [
            "smtp.connection-start",
            "smtp.connection-end",
            "postfix.client",
            "postfix.message-id",
            "queue.queue-message",
            "delivery.delivered",
            "delivery.dsn-temp-fail",
            "delivery.dsn-perm-fail",
            "delivery.completed",
            "delivery.connect-error",
            "smtp.mailbox-does-not-exist",
            "smtp.relay-not-allowed",
            "auth.failed",
            "tls.handshake",
            "postfix.expired",
            "queue.queue-dsn",
            "postfix.pickup",
            "postfix.postscreen-connect",
            "postfix.postscreen-pregreet",
            "postfix.postscreen-pass",
            "postfix.postscreen-disconnect",
            "smtp.invalid-command",
            "postfix.lost-connection",
            "server.startup",
        ] {
            assert!(got.iter().any(|l| l.split(' ').next() == Some(ty)), "no {ty} in the real corpus");
        }
        // Only the daemons' housekeeping lines are generic.
        let generic: Vec<&String> = got.iter().filter(|l| l.starts_with("postfix.log")).collect();
        assert_eq!(generic.len(), 2, "{generic:#?}");
    }

    #[test]
    fn rare_corpus_parses_as_expected() {
        check_corpus("postfix-rare");
    }

    #[test]
    fn connect_and_disconnect_bound_the_smtpd_session() {
        let p = parse(&rec("postfix/submission/smtpd", "connect from mail.example.org[192.0.2.10]:4711"));
        assert_eq!(p.ty, "smtp.connection-start");
        assert_eq!(p.get("listenerId"), Some(Val::Str("postfix/submission/smtpd")));
        assert_eq!(p.get("hostname"), Some(Val::Str("mail.example.org")));
        assert_eq!(p.get("remoteIp"), Some(Val::Str("192.0.2.10")));
        assert_eq!(p.get("remotePort"), Some(Val::Int(4711)));
        assert_eq!((p.session, p.opens, p.closes), (Session::Process, Opens::Session, false));

        let p = parse(&rec(
            "postfix/smtpd",
            "disconnect from unknown[192.0.2.10] ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4",
        ));
        assert_eq!(p.ty, "smtp.connection-end");
        assert_eq!(p.get("hostname"), None, "`unknown` is no host name");
        assert_eq!(p.get("details"), Some(Val::Str("ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4")));
        assert_eq!(p.get("total"), Some(Val::Int(4)));
        assert!(p.closes && p.session == Session::Process);
    }

    #[test]
    fn rejects_map_by_reason() {
        let cases = [
            (
                "550 5.1.1 <u@d>: Recipient address rejected: User unknown in local recipient table",
                "smtp.mailbox-does-not-exist",
            ),
            ("554 5.7.1 <u@d>: Relay access denied", "smtp.relay-not-allowed"),
            (
                "450 4.2.0 <u@d>: Recipient address rejected: Greylisted for 300 seconds",
                "smtp.rcpt-to-greylisted",
            ),
            (
                "553 5.7.1 <a@d>: Sender address rejected: not owned by user bob",
                "smtp.mail-from-unauthorized",
            ),
            ("553 5.7.1 <a@d>: Sender address rejected: not logged in", "smtp.mail-from-unauthenticated"),
            ("450 4.1.8 <a@d>: Sender address rejected: Domain not found", "smtp.mail-from-not-allowed"),
            (
                "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using bl.example",
                "security.ip-blocked",
            ),
            ("552 5.3.4 Message size exceeds fixed limit", "smtp.message-too-large"),
            ("504 5.5.2 <x>: Helo command rejected: need fully-qualified hostname", "smtp.invalid-ehlo"),
            ("450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]", "postfix.reject"),
        ];
        for (reply, ty) in cases {
            let line = format!("NOQUEUE: reject: RCPT from x.example[192.0.2.1]: {reply}; from=<a@d> to=<u@d> proto=ESMTP helo=<h.example>");
            let p = parse(&rec("postfix/smtpd", &line));
            assert_eq!(p.ty, ty, "{reply}");
            assert_eq!(p.get("code"), Some(Val::Str(&reply[..3])));
            assert_eq!(p.get("from"), Some(Val::Str("a@d")));
            assert_eq!(p.get("to"), Some(Val::Str("u@d")));
            assert_eq!(p.get("domain"), Some(Val::Str("h.example")));
            assert_eq!(p.get("remoteIp"), Some(Val::Str("192.0.2.1")));
            assert_eq!(p.queue_id, None);
            assert_eq!(p.session, Session::Process);
        }
        let p = parse(&rec(
            "postfix/smtpd",
            "NOQUEUE: reject: RCPT from x[192.0.2.1]: 550 5.1.1 <u@d>: Recipient address rejected: User unknown; from=<a@d> to=<u@d> proto=ESMTP helo=<h>",
        ));
        assert_eq!(p.get("dsn"), Some(Val::Str("5.1.1")));
        assert_eq!(p.get("details"), Some(Val::Str("<u@d>: Recipient address rejected: User unknown")));
    }

    #[test]
    fn a_message_opens_at_client_or_pickup_and_closes_at_removed() {
        let p = parse(&rec(
            "postfix/smtpd",
            "0A36399: client=unknown[127.0.0.22], sasl_method=PLAIN, sasl_username=alice@x.test",
        ));
        assert_eq!(
            (p.ty, p.queue_id, p.opens, p.session),
            ("postfix.client", Some("0A36399"), Opens::Message, Session::Process)
        );
        assert_eq!(p.get("accountName"), Some(Val::Str("alice@x.test")));
        assert_eq!(p.get("type"), Some(Val::Str("PLAIN")));
        assert_eq!(p.get("remoteIp"), Some(Val::Str("127.0.0.22")));

        let p = parse(&rec("postfix/pickup", "1C0BB99: uid=0 from=<root>"));
        assert_eq!((p.ty, p.opens, p.get("uid")), ("postfix.pickup", Opens::Message, Some(Val::Int(0))));

        let p = parse(&rec("postfix/qmgr", "1C0BB99: removed"));
        assert_eq!((p.ty, p.closes, p.queue_id), ("delivery.completed", true, Some("1C0BB99")));
        let p = parse(&rec("postfix/postsuper", "1C0BB99: removed"));
        assert_eq!((p.ty, p.closes), ("postfix.removed", true));
        let p = parse(&rec("postfix/cleanup", "1C0BB99: removed (discarded)"));
        assert_eq!((p.ty, p.closes, p.get("reason")), ("postfix.removed", true, Some(Val::Str("discarded"))));
    }

    #[test]
    fn qmgr_lines() {
        let p = parse(&rec("postfix/qmgr", "7DC5B99205F: from=<s@c.test>, size=408, nrcpt=2 (queue active)"));
        assert_eq!(p.ty, "queue.queue-message");
        assert_eq!(p.get("from"), Some(Val::Str("s@c.test")));
        assert_eq!(p.get("size"), Some(Val::Int(408)));
        assert_eq!(p.get("total"), Some(Val::Int(2)));
        let p = parse(&rec("postfix/qmgr", "7DC5B99205F: from=<>, size=2367, nrcpt=1 (queue active)"));
        assert_eq!((p.ty, p.get("from")), ("queue.queue-message", None));
        let p =
            parse(&rec("postfix/qmgr", "7DC5B99205F: from=<a@l.test>, status=expired, returned to sender"));
        assert_eq!((p.ty, p.get("reason")), ("postfix.expired", Some(Val::Str("expired"))));
    }

    #[test]
    fn delivery_statuses() {
        let line = "4F2A1C0: to=<b@x>, orig_to=<c@x>, relay=mx.x[192.0.2.5]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 5B3C)";
        let p = parse(&rec("postfix/smtp", line));
        assert_eq!(p.ty, "delivery.delivered");
        assert_eq!(p.get("to"), Some(Val::Str("b@x")));
        assert_eq!(p.get("origTo"), Some(Val::Str("c@x")));
        assert_eq!(p.get("hostname"), Some(Val::Str("mx.x")));
        assert_eq!(p.get("remoteIp"), Some(Val::Str("192.0.2.5")));
        assert_eq!(p.get("remotePort"), Some(Val::Int(25)));
        assert_eq!(p.get("elapsed"), Some(Val::Int(1200)));
        assert_eq!(p.get("delays"), Some(Val::Str("0.1/0/0.5/0.6")));
        assert_eq!(p.get("dsn"), Some(Val::Str("2.0.0")));
        assert_eq!(p.get("code"), Some(Val::Str("250")));
        assert_eq!(p.get("details"), Some(Val::Str("250 2.0.0 Ok: queued as 5B3C")));
        assert_eq!(p.child_queue_id, None, "a remote server's queue id is not ours");

        for (status, ty) in [
            ("deferred", "delivery.dsn-temp-fail"),
            ("SOFTBOUNCE", "delivery.dsn-temp-fail"),
            ("bounced", "delivery.dsn-perm-fail"),
            ("undeliverable", "postfix.verify"),
            ("frobbed", "postfix.delivery"),
        ] {
            let line = format!("4F2A1C0: to=<b@x>, relay=none, delay=0.02, delays=0/0.02/0/0, dsn=4.4.1, status={status} (connect to h[192.0.2.9]:25: Connection refused)");
            let p = parse(&rec("postfix/smtp", &line));
            assert_eq!(p.ty, ty);
            assert_eq!(p.get("elapsed"), Some(Val::Int(20)));
            assert_eq!(p.get("hostname"), None, "relay=none names no host");
            assert_eq!(p.get("code"), None);
        }
        let p = parse(&rec("postfix/smtp", "4F2A1C0: to=<b@x>, relay=x[192.0.2.5]:25, delay=30, delays=0/0/25/5, dsn=5.1.1, status=bounced (host x[192.0.2.5] said: 550 5.1.1 <b@x>: User unknown (in reply to RCPT TO command))"));
        assert_eq!((p.ty, p.get("code")), ("delivery.dsn-perm-fail", Some(Val::Str("550"))));
    }

    #[test]
    fn children_of_a_message() {
        let p = parse(&rec("postfix/bounce", "7FF0F992060: sender non-delivery notification: 0C66C992079"));
        assert_eq!(
            (p.ty, p.queue_id, p.child_queue_id),
            ("queue.queue-dsn", Some("7FF0F992060"), Some("0C66C992079"))
        );
        assert_eq!(p.get("childQueueId"), Some(Val::Str("0C66C992079")));
        let p = parse(&rec("postfix/local", "7D5E4F3: to=<a@x>, relay=local, delay=0.02, delays=0/0/0/0.02, dsn=2.0.0, status=sent (forwarded as 8E6F5A4)"));
        assert_eq!((p.child_queue_id, p.get("hostname")), (Some("8E6F5A4"), Some(Val::Str("local"))));
        let p = parse(&rec("postfix/smtp", "6C4D3E2: to=<b@x>, relay=127.0.0.1[127.0.0.1]:10024, delay=0.35, delays=0.01/0/0/0.34, dsn=2.0.0, status=sent (250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 7D5E4F3)"));
        assert_eq!(
            p.child_queue_id,
            Some("7D5E4F3"),
            "a loopback content filter reinjects into this Postfix"
        );
    }

    #[test]
    fn sasl_failure_is_auth_failed_at_warn() {
        let p = parse(&rec("postfix/smtpd", "warning: unknown[127.0.0.14]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=alice@x.test"));
        assert_eq!((p.ty, p.level), ("auth.failed", Some(Level::Warn)));
        assert_eq!(p.get("remoteIp"), Some(Val::Str("127.0.0.14")));
        assert_eq!(p.get("accountName"), Some(Val::Str("alice@x.test")));
        assert_eq!(p.get("type"), Some(Val::Str("PLAIN")));
        assert_eq!(p.get("details"), Some(Val::Str("(reason unavailable)")));
        assert_eq!(p.session, Session::Process);
        let p = parse(&rec(
            "postfix/smtpd",
            "warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
        ));
        assert_eq!(
            (p.ty, p.get("details"), p.get("accountName")),
            ("auth.failed", Some(Val::Str("UGFzc3dvcmQ6")), None)
        );
    }

    #[test]
    fn tls_lines() {
        let p = parse(&rec("postfix/smtpd", "Anonymous TLS connection established from unknown[127.0.0.29]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"));
        assert_eq!(
            (p.ty, p.get("version"), p.get("result")),
            ("tls.handshake", Some(Val::Str("TLSv1.3")), Some(Val::Str("Anonymous")))
        );
        assert_eq!(p.get("details"), Some(Val::Str("TLS_AES_256_GCM_SHA384 (256/256 bits)")));
        let p = parse(&rec("postfix/smtp", "Verified TLS connection established to mx.x[192.0.2.5]:25: TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)"));
        assert_eq!((p.ty, p.get("remotePort")), ("delivery.start-tls", Some(Val::Int(25))));
        let p = parse(&rec("postfix/smtpd", "SSL_accept error from unknown[192.0.2.1]: -1"));
        assert_eq!((p.ty, p.get("reason")), ("tls.handshake-error", Some(Val::Str("-1"))));
        let p = parse(&rec(
            "postfix/smtpd",
            "warning: TLS library problem: error:0A000126:SSL routines::unexpected eof while reading:",
        ));
        assert_eq!((p.ty, p.level), ("tls.handshake-error", Some(Level::Warn)));
    }

    #[test]
    fn postscreen_names_its_sessions() {
        let p = parse(&rec("postfix/postscreen", "CONNECT from [127.0.0.25]:37807 to [127.0.0.1]:36951"));
        assert_eq!(p.ty, "postfix.postscreen-connect");
        assert_eq!(p.session, Session::Named { scope: "postscreen", id: "[127.0.0.25]:37807" });
        assert_eq!((p.opens, p.get("localPort")), (Opens::Session, Some(Val::Int(36951))));
        let p = parse(&rec("postfix/postscreen", "NOQUEUE: reject: RCPT from [127.0.0.25]:37807: 550 5.5.1 Protocol error; from=<s@c>, to=<a@l>, proto=ESMTP, helo=<p.test>"));
        assert_eq!(p.ty, "postfix.reject");
        assert_eq!(p.session, Session::Named { scope: "postscreen", id: "[127.0.0.25]:37807" });
        assert_eq!(
            (p.get("from"), p.get("to"), p.get("domain")),
            (Some(Val::Str("s@c")), Some(Val::Str("a@l")), Some(Val::Str("p.test")))
        );
        for line in [
            "DISCONNECT [127.0.0.25]:37807",
            "PASS NEW [127.0.0.25]:37807",
            "PASS OLD [127.0.0.25]:37807",
            "ALLOWLISTED [127.0.0.25]:37807",
        ] {
            let p = parse(&rec("postfix/postscreen", line));
            assert!(p.closes, "{line}");
            assert_eq!(p.session, Session::Named { scope: "postscreen", id: "[127.0.0.25]:37807" });
        }
    }

    #[test]
    fn severity_prefixes_set_the_level_and_keep_the_text() {
        for (line, ty, level) in [
            (
                "warning: database /etc/postfix/x.db is older than source file /etc/postfix/x",
                "postfix.warning",
                Level::Warn,
            ),
            (
                "error: open database /etc/postfix/x.db: No such file or directory",
                "postfix.error",
                Level::Error,
            ),
            ("fatal: no SASL authentication mechanisms", "postfix.fatal", Level::Error),
            ("panic: myfree: corrupt or unallocated memory block", "postfix.panic", Level::Error),
        ] {
            let p = parse(&rec("postfix/trivial-rewrite", line));
            assert_eq!((p.ty, p.level), (ty, Some(level)));
            assert_eq!(p.get("details"), Some(Val::Str(line.split_once(": ").unwrap().1)));
            assert_eq!(p.get("program"), Some(Val::Str("postfix/trivial-rewrite")));
            assert_eq!(p.get("pid"), Some(Val::Int(42)));
        }
        let p = parse(&rec("postfix/qmgr", "warning: C2AD9E8: malformed record type 0"));
        assert_eq!((p.ty, p.queue_id), ("postfix.warning", Some("C2AD9E8")));
    }

    #[test]
    fn unknown_lines_are_generic_and_never_dropped() {
        for (program, message) in [
            ("postfix/postfix-script", "starting the Postfix mail system"),
            ("postfix/smtpd", ""),
            ("postfix/smtpd", "connect from"),
            ("postfix/smtpd", "connect from host.example"),
            ("postfix/smtpd", "disconnect from [192.0.2.1"),
            ("postfix/qmgr", "4F2A1C0: from=<a@b>, size=99999999999999999999999, nrcpt=1 (queue active)"),
            ("postfix/smtp", "4F2A1C0: to=<b@x>, relay=x, delay=1e9, dsn=2.0.0"),
            ("postfix/smtp", "4F2A1C0: to=<b@x"),
            ("postfix/postscreen", "CONNECT from 192.0.2.1:25 to [192.0.2.2]:25"),
            ("postfix/postscreen", "PASS NEW"),
            ("postfix/anvil", "statistics: max"),
            ("postfix/bounce", "4F2A1C0: sender non-delivery notification: "),
            ("postfix/pickup", "4F2A1C0: uid=x from=<a>"),
            ("", "\u{0}\u{1}\u{ff}\u{fffd}: [ ] < > ; = ,"),
            ("postfix/smtpd", "NOQUEUE: reject: RCPT from"),
            ("postfix/smtpd", "NOQUEUE: reject: "),
            // Found by the fuzzer: a child needs a parent's queue id.
            ("postfix/bounce", "NOQUEUE: postmaster reject:* notification: 5B3C2D1"),
            (
                "postfix/local",
                "NOQUEUE: to=<a@x>, relay=local, dsn=2.0.0, status=sent (forwarded as 5B3C2D1)",
            ),
        ] {
            let r = rec(program, message);
            let p = parse(&r);
            check_invariants(&r, &p);
            assert!(p.ty.starts_with("postfix.") || p.ty.contains('.'), "{message:?}");
            if p.ty == "postfix.log" {
                assert_eq!(p.get("details"), (!message.is_empty()).then_some(Val::Str(message.trim_end())));
            }
        }
        let p = parse(&rec("postfix/smtpd", "connect from host.example"));
        assert_eq!((p.ty, p.opens), ("postfix.log", Opens::Nothing), "no peer, no session");
        let p = parse(&rec("postfix/smtpd", "NOQUEUE: reject: "));
        assert_eq!(p.ty, "postfix.reject", "a decision without its text is still a decision");
    }

    #[test]
    fn every_prefix_of_every_corpus_line_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/maillog/");
        for name in ["postfix-real.log", "postfix-rare.log"] {
            let log = std::fs::read_to_string(format!("{dir}{name}")).unwrap();
            for line in log.lines() {
                let r = record(line);
                for end in (0..=r.message.len()).filter(|&i| r.message.is_char_boundary(i)) {
                    let cut = LogRecord { message: &r.message[..end], ..r };
                    check_invariants(&cut, &parse(&cut));
                }
                // Each service's rules applied to every other service's lines.
                for program in
                    ["postfix/smtpd", "postfix/postscreen", "postfix/anvil", "postfix/tlsproxy", "x/smtp"]
                {
                    let other = LogRecord { program, ..r };
                    check_invariants(&other, &parse(&other));
                }
            }
        }
    }

    #[test]
    fn binary_junk_never_panics() {
        // A fixed pseudo-random stream (no dependency, reproducible), cut into messages and
        // programs that mix Postfix's punctuation with arbitrary characters.
        let alphabet: Vec<char> = "<>[]():;,= .-/0123456789ABCDEFzqx\u{0}\u{7f}é\u{fffd}".chars().collect();
        let words = [
            "from=<",
            "to=<",
            "relay=",
            "status=",
            "NOQUEUE: ",
            "4F2A1C0: ",
            "reject: ",
            " from ",
            "client=",
            "CONNECT from ",
            "warning: ",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut msg = String::new();
            for _ in 0..next() % 40 {
                let n = next();
                if n % 4 == 0 {
                    msg.push_str(words[(n / 4) as usize % words.len()]);
                } else {
                    msg.push(alphabet[(n / 4) as usize % alphabet.len()]);
                }
            }
            let program = [
                "postfix/smtpd",
                "postfix/postscreen",
                "postfix/smtp",
                "postfix/qmgr",
                "postfix/anvil",
                "postfix/master",
            ][next() as usize % 6];
            let r = rec(program, &msg);
            check_invariants(&r, &parse(&r));
        }
    }

    #[test]
    fn catalogue_types_are_v015_types_and_the_readme_maps_them() {
        let catalogue = Catalogue::embedded();
        let v015: Vec<&str> = catalogue.event_keys.iter().map(|e| e.name.as_str()).collect();
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = &readme[readme.find("## Postfix and Dovecot hosts").expect("the README section")..];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/maillog/");
        let mut seen = std::collections::BTreeSet::new();
        for name in ["postfix-real.log", "postfix-rare.log"] {
            for line in std::fs::read_to_string(format!("{dir}{name}")).unwrap().lines() {
                seen.insert(parse(&record(line)).ty);
            }
        }
        for ty in seen {
            if !ty.starts_with("postfix.") {
                assert!(v015.contains(&ty), "{ty} is not a v0.15 catalogue type");
            }
            assert!(section.contains(&format!("`{ty}`")), "README's mapping table lacks {ty}");
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(seconds_ms("1.2"), Some(1200));
        assert_eq!(seconds_ms("0.02"), Some(20));
        assert_eq!(seconds_ms("2"), Some(2000));
        assert_eq!(seconds_ms("0.0005"), Some(1));
        assert_eq!(seconds_ms("0.0004"), Some(0));
        assert_eq!(seconds_ms("123456789012345678"), None);
        assert_eq!(seconds_ms("1e3"), None);
        assert_eq!(seconds_ms(""), None);
        assert!(is_queue_id("7DC5B99205F") && is_queue_id("4Vx2Qk5hDFz9Kq3"));
        assert!(
            !is_queue_id("NOQUEUE")
                && !is_queue_id("warning")
                && !is_queue_id("statistics")
                && !is_queue_id("4F2A")
        );
        assert_eq!(split_reply("550 5.1.1 text"), (Some("550"), Some("5.1.1"), "text"));
        assert_eq!(split_reply("5.7.1 text"), (None, Some("5.7.1"), "text"));
        assert_eq!(split_reply("text said: 550 x"), (None, None, "text said: 550 x"));
        assert_eq!(split_reply("5.7.1.2 text"), (None, None, "5.7.1.2 text"));
        assert_eq!(angle("a@b>, size=1"), ("a@b", ", size=1"));
        assert_eq!(angle("a>b@c> x"), ("a>b@c", " x"));
        assert_eq!(angle("unterminated"), ("unterminated", ""));
    }
}
