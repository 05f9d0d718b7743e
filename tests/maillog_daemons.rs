//! The real Postfix and Dovecot the mail-log tests run against (issue 24): proves that
//! `common::maillog::MailHost` starts both daemons without systemd, that the issue's traffic
//! leaves the expected lines in their logs and events at Dovecot's exporter, and that stopping
//! leaves no process behind.
//!
//! Needs root, python3 and Debian's postfix and dovecot packages; without them each test says
//! so and returns, except in CI (`CI` set), where CI installs them and their absence fails.

mod common;

use common::maillog::{available, has_line, ExporterCapture, MailHost};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Returns false (after saying why) when the daemons cannot run here outside CI.
fn can_run() -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipping the real Postfix/Dovecot test: {why}");
            false
        }
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_else(|| panic!("no string at {path:?} in {v}"))
}

/// True when the exporter sent an event named `name` whose fields hold every `(key, value)`.
fn has_event(events: &[Value], name: &str, fields: &[(&str, &str)]) -> bool {
    events.iter().any(|e| e["event"] == name && fields.iter().all(|(k, v)| e["fields"][*k] == *v))
}

#[test]
fn issue_traffic_reaches_the_real_logs_and_the_exporter() {
    if !can_run() {
        return;
    }
    let capture = ExporterCapture::start();
    let mut host = MailHost::start(Some(&capture.url)).expect("checked by can_run");
    let t = host.traffic();

    // Postfix: the delivered message went over LMTP to Dovecot.
    let delivered = s(&t, &["delivered", "queue_id"]);
    let to_user = format!("to=<{}>", host.user);
    let sent = [&format!("{delivered}: "), "postfix/lmtp[", to_user.as_str(), "status=sent"];
    host.wait_postfix_log("status=sent for the delivered message", |log| has_line(log, &sent));

    // The unknown user was rejected at RCPT time, from the step's own client address.
    let rejected_ip = format!("[{}]", s(&t, &["rejected", "client_ip"]));
    let reject =
        ["NOQUEUE: reject: RCPT from", rejected_ip.as_str(), "550 5.1.1", "to=<nobody@livetap.test>"];
    // The relay to the closed port was deferred.
    let deferred = s(&t, &["deferred", "queue_id"]);
    let defer = [&format!("{deferred}: "), "to=<someone@deferred.test>", "status=deferred"];
    // The wrong SASL password was logged as a warning with the client's address.
    let sasl_ip = format!("[{}]", s(&t, &["sasl_failed", "client_ip"]));
    let sasl = ["warning:", sasl_ip.as_str(), "SASL PLAIN authentication failed"];
    let postfix = host.wait_postfix_log("the reject, the deferral and the SASL failure", |log| {
        has_line(log, &reject) && has_line(log, &defer) && has_line(log, &sasl)
    });
    // The rejected recipient never got a queue id, and nothing was relayed anywhere else.
    assert!(!has_line(&postfix, &["to=<nobody@livetap.test>", "status="]), "{postfix}");
    assert!(!has_line(&postfix, &["status=sent", "someone@deferred.test"]), "{postfix}");

    // Dovecot: one IMAP login accepted, one refused, each with the client's address.
    let user = format!("user=<{}>", host.user);
    let ok_ip = format!("rip={},", s(&t, &["imap_login", "client_ip"]));
    let bad_ip = format!("rip={},", s(&t, &["imap_login_failed", "client_ip"]));
    let login = ["imap-login: Info: Login:", user.as_str(), ok_ip.as_str()];
    let failed = ["imap-login: Info: Disconnected", "auth failed", user.as_str(), bad_ip.as_str()];
    let msgid = format!("msgid=<{}>", s(&t, &["delivered", "message_id"]));
    let saved = ["lmtp(", msgid.as_str(), "saved mail to INBOX"];
    host.wait_dovecot_log("the two IMAP logins and the LMTP delivery", |log| {
        has_line(log, &login) && has_line(log, &failed) && has_line(log, &saved)
    });

    // The exporter posted JSON events: both logins' verdicts, the IMAP commands and the LMTP
    // delivery of the delivered message.
    let message_id = format!("<{}>", s(&t, &["delivered", "message_id"]));
    let ok_addr = s(&t, &["imap_login", "client_ip"]).to_string();
    let bad_addr = s(&t, &["imap_login_failed", "client_ip"]).to_string();
    let events = capture.wait_events("login, command and delivery events", |ev| {
        has_event(
            ev,
            "auth_request_finished",
            &[("service", "imap"), ("success", "yes"), ("remote_ip", &ok_addr)],
        ) && has_event(
            ev,
            "auth_client_request_finished",
            &[("remote_ip", &bad_addr), ("error", "Authentication failed")],
        ) && has_event(ev, "imap_command_finished", &[("cmd_name", "SELECT"), ("remote_ip", &ok_addr)])
            && has_event(ev, "mail_delivery_finished", &[("message_id", &message_id)])
    });
    assert!(events.iter().all(|e| e.is_object() && e["event"].is_string()), "a body was not an event");
    for r in capture.records() {
        assert_eq!(r["content_type"], "application/json", "{r}");
        assert_eq!(r["path"], "/dovecot", "{r}");
    }
    // The failed SASL login reached Dovecot's auth service too, without `success`.
    let sasl_addr = s(&t, &["sasl_failed", "client_ip"]);
    assert!(events.iter().any(|e| e["event"] == "auth_request_finished"
        && e["fields"]["service"] == "smtp"
        && e["fields"]["remote_ip"] == sasl_addr
        && e["fields"].get("success").is_none()));

    host.stop();
}

#[test]
fn two_hosts_run_side_by_side_and_stop_leaves_no_process() {
    if !can_run() {
        return;
    }
    let a = MailHost::start(None).expect("checked by can_run");
    let b = MailHost::start(None).expect("checked by can_run");
    let ports = |h: &MailHost| [h.smtp_port, h.postscreen_port, h.imap_port, h.pop3_port];
    let all: BTreeSet<u16> = ports(&a).into_iter().chain(ports(&b)).collect();
    assert_eq!(all.len(), 8, "the two hosts share a port: {:?} {:?}", ports(&a), ports(&b));
    assert_ne!(a.dir(), b.dir());

    let mut pids = a.master_pids();
    pids.extend(b.master_pids());
    assert_eq!(pids.len(), 4, "each host has a Postfix and a Dovecot master");
    let children: Vec<u32> = pids.iter().flat_map(|p| children_of(*p)).collect();
    assert!(!children.is_empty(), "the masters started no children");
    assert!(pids.iter().chain(&children).all(|p| running(*p)));
    let dirs = [a.dir().to_path_buf(), b.dir().to_path_buf()];

    drop(a);
    drop(b);
    for p in pids.iter().chain(&children) {
        assert!(!running(*p), "process {p} outlived its host");
    }
    for d in dirs {
        assert!(!d.exists(), "{} was not removed", d.display());
    }
}

/// True when `pid` exists and is not a zombie (an exited daemon whose parent did not reap it).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// The pids whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|child| {
            let stat = std::fs::read_to_string(Path::new("/proc").join(child.to_string()).join("stat"))
                .unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(pid)
        })
        .collect()
}
