//! Issue 24 end to end: the real `livetap` binary follows the real Postfix's and Dovecot's log
//! files and takes Dovecot's event exporter, while the traffic runs against both
//! daemons; live subscribers filtered the way an admin filters receive exactly the events
//! they should, in order, and nothing else; the derived metrics add up.
//!
//! One daemon pair and one livetap serve the whole file (one test function), in this order:
//!
//! 1. livetap starts first, with `--postfix-log` and `--dovecot-log` naming files that do not
//!    exist yet (a followed file that is missing is waited for and read from its start when it
//!    appears), and with a principal Dovecot's exporter signs in as. It must run first: the
//!    exporter's URL holds livetap's address, and Dovecot reads it when it starts.
//! 2. The daemons start, exporting to `POST /api/livetap/ingest/dovecot` with Basic
//!    credentials in the URL (the only ones Dovecot's HTTP client can send).
//! 3. An unfiltered subscriber waits until both start-up lines arrived, so the filtered
//!    subscribers, opened next, see traffic only.
//! 4. The traffic: `traffic.py`'s base steps (delivered, rejected, deferred, failed SASL, IMAP
//!    login right and wrong) and its `non_smtp_command` step.
//! 5. Quiescence, without a sleep: the unfiltered subscriber has every expected event; then one
//!    more SMTP session and one IMAP connection from addresses no filter selects are made, and
//!    once their events arrived, every line the daemons wrote before them has been published.
//! 6. A sentinel event per subscriber, made to match that subscriber's filter alone, is
//!    ingested over NDJSON. The ring is ordered, so what a subscriber received before its
//!    sentinel is everything its filter selected: it is checked exactly.
//!
//! Expectations are partial orders: events of one session, message or Dovecot process come in
//! the order they were written, while lines of different processes and the two sources (the
//! log files, polled, and the exporter, pushed) interleave as they happen to.

mod common;

use common::maillog::{available, MailHost};
use common::{ingest, Livetap, SseClient, DEADLINE, TOKEN};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

/// The password of the principal Dovecot's exporter signs in as.
const EXPORTER_PASSWORD: &str = "exporter-secret-24";

/// The type of the sentinel events (outside the catalogue: no daemon writes it).
const SENTINEL: &str = "e2e.sentinel";

/// The SMTP client address of the quiescence barrier (no step uses it).
const BARRIER_SMTP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 99);

/// The IMAP client address of the quiescence barrier.
const BARRIER_IMAP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 98);

// ---------------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------------

/// One expected event: its type, the `data` values it must have (a subset of its keys), the
/// keys it must not have, its level when that matters, and the expected events that must
/// have arrived before it.
#[derive(Debug, Clone)]
struct Exp {
    ty: &'static str,
    has: Vec<(&'static str, Value)>,
    lacks: Vec<&'static str>,
    level: Option<&'static str>,
    after: Vec<usize>,
}

/// An expected event of type `ty`.
fn ev(ty: &'static str) -> Exp {
    Exp { ty, has: Vec::new(), lacks: Vec::new(), level: None, after: Vec::new() }
}

impl Exp {
    /// `data[key]` must be `value`.
    fn has(mut self, key: &'static str, value: impl Into<Value>) -> Exp {
        self.has.push((key, value.into()));
        self
    }

    /// `data` must not have `key`.
    fn lacks(mut self, key: &'static str) -> Exp {
        self.lacks.push(key);
        self
    }

    /// The event's level must be `level`.
    fn level(mut self, level: &'static str) -> Exp {
        self.level = Some(level);
        self
    }

    fn matches(&self, e: &Value) -> bool {
        e["type"] == self.ty
            && self.level.map_or(true, |l| e["level"] == l)
            && self.has.iter().all(|(k, v)| e["data"][*k] == *v)
            && self.lacks.iter().all(|k| e["data"].get(*k).is_none())
    }

    fn describe(&self) -> String {
        let mut s = self.ty.to_string();
        if let Some(l) = self.level {
            let _ = write!(s, " level={l}");
        }
        for (k, v) in &self.has {
            let _ = write!(s, " {k}={v}");
        }
        for k in &self.lacks {
            let _ = write!(s, " !{k}");
        }
        s
    }
}

/// What one subscriber must receive: a partial order of expected events.
struct Plan {
    name: &'static str,
    query: String,
    items: Vec<Exp>,
}

impl Plan {
    fn new(name: &'static str, query: impl Into<String>) -> Plan {
        Plan { name, query: query.into(), items: Vec::new() }
    }

    /// Adds `e`, which must come after the expected events `after`; returns its index.
    fn add(&mut self, mut e: Exp, after: &[usize]) -> usize {
        e.after.extend_from_slice(after);
        self.items.push(e);
        self.items.len() - 1
    }

    /// Adds `es` in this order, the first after `after`; returns their indexes.
    fn chain(&mut self, after: &[usize], es: Vec<Exp>) -> Vec<usize> {
        let mut prev: Vec<usize> = after.to_vec();
        let mut out = Vec::new();
        for e in es {
            let i = self.add(e, &prev);
            prev = vec![i];
            out.push(i);
        }
        out
    }

    /// Assigns received events to expectations in arrival order: each event takes the first
    /// unassigned expectation it matches whose predecessors are assigned. Returns which event
    /// took each expectation and the events that took none.
    fn assign(&self, events: &[Value]) -> (Vec<Option<usize>>, Vec<usize>) {
        let mut taken: Vec<Option<usize>> = vec![None; self.items.len()];
        let mut stray = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let slot = (0..self.items.len()).find(|&j| {
                taken[j].is_none()
                    && self.items[j].after.iter().all(|&a| taken[a].is_some())
                    && self.items[j].matches(e)
            });
            match slot {
                Some(j) => taken[j] = Some(i),
                None => stray.push(i),
            }
        }
        (taken, stray)
    }

    /// The expected events `events` (any superset) do not hold in order, described.
    fn missing_in(&self, events: &[Value]) -> String {
        let (taken, _) = self.assign(events);
        let mut r = String::new();
        for (j, t) in taken.iter().enumerate() {
            if t.is_none() {
                let _ = writeln!(
                    r,
                    "  {} #{j}: {} (after {:?})",
                    self.name,
                    self.items[j].describe(),
                    self.items[j].after
                );
            }
        }
        r
    }

    /// True when `events` (any superset) hold every expected event, in order.
    fn complete_in(&self, events: &[Value]) -> bool {
        self.assign(events).0.iter().all(Option::is_some)
    }

    /// Panics, with a report, unless `events` are exactly the expected ones in an allowed
    /// order. Returns the event that took each expectation.
    fn check_exact<'e>(&self, events: &'e [Value]) -> Vec<&'e Value> {
        let (taken, stray) = self.assign(events);
        if stray.is_empty() && taken.iter().all(Option::is_some) {
            return taken.iter().map(|t| &events[t.expect("all taken")]).collect();
        }
        let mut r =
            format!("subscriber {} ({}) did not get exactly what it should.\n", self.name, self.query);
        r += "received:\n";
        for (i, e) in events.iter().enumerate() {
            let mark = if stray.contains(&i) { "UNEXPECTED" } else { "ok" };
            let _ = writeln!(r, "  [{i}] {mark}: {} {} {}", e["type"], e["level"], e["data"]);
        }
        r += "expected and not received (or not in order):\n";
        for (j, t) in taken.iter().enumerate() {
            if t.is_none() {
                let _ = writeln!(r, "  #{j} {} (after {:?})", self.items[j].describe(), self.items[j].after);
            }
        }
        panic!("{r}");
    }
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

/// A subscriber's stream with what it received so far.
struct Sub {
    plan: Plan,
    client: SseClient,
}

/// Reads trace frames from `client` into `seen` until `done(seen)` holds; panics with what
/// arrived at the deadline. A `lagged` frame fails: nothing may be lost here.
async fn read_until(
    client: &mut SseClient,
    seen: &mut Vec<Value>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) {
    read_until_or(client, seen, what, done, |_| String::new()).await
}

/// [`read_until`], with `missing(seen)` saying what is still missing when the deadline passes.
async fn read_until_or(
    client: &mut SseClient,
    seen: &mut Vec<Value>,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
    missing: impl Fn(&[Value]) -> String,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(f) = client.next_frame(left).await else {
            let got: Vec<String> =
                seen.iter().map(|e| format!("  {} {} {}", e["type"], e["level"], e["data"])).collect();
            panic!(
                "{what}: not there within {DEADLINE:?} (stream ended: {}).\n{}received:\n{}",
                client.eof,
                missing(seen),
                got.join("\n")
            );
        };
        match f.event.as_str() {
            "trace" => {
                let events: Vec<Value> = serde_json::from_str(&f.data)
                    .unwrap_or_else(|e| panic!("trace data is not a JSON array ({e}): {}", f.data));
                seen.extend(events);
            }
            "ping" => {}
            other => panic!("{what}: unexpected SSE event {other:?}: {}", f.data),
        }
    }
}

/// Opens a live stream on livetap's own endpoint with the admin token.
async fn subscribe(addr: SocketAddr, query: &str) -> SseClient {
    let c = SseClient::connect(addr, &format!("/api/livetap/live?{query}"), Some(TOKEN)).await;
    assert_eq!(
        c.status,
        200,
        "GET /api/livetap/live?{query}: {:?}",
        c.error_body.as_deref().map(String::from_utf8_lossy)
    );
    c
}

/// The events a subscriber received before its sentinel (whose `data.sentinel` is its name).
async fn until_sentinel(sub: &mut Sub) -> Vec<Value> {
    let name = sub.plan.name;
    let mut seen = Vec::new();
    let is_mine = |e: &Value| e["type"] == SENTINEL && e["data"]["sentinel"] == name;
    read_until(&mut sub.client, &mut seen, &format!("the sentinel of {name}"), |s| s.iter().any(is_mine))
        .await;
    let at = seen.iter().position(is_mine).expect("found above");
    seen.truncate(at);
    seen
}

/// Reads `/api/livetap/live/metrics` frames until `done` holds for the latest one (by id),
/// and returns it; panics with the last frame at the deadline.
async fn metrics_until(
    addr: SocketAddr,
    names: &str,
    done: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let mut c = SseClient::connect(
        addr,
        &format!("/api/livetap/live/metrics?metrics={names}&interval=1"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(c.status, 200, "{:?}", c.error_body.as_deref().map(String::from_utf8_lossy));
    let deadline = Instant::now() + DEADLINE;
    let mut last = BTreeMap::new();
    loop {
        if done(&last) {
            return last;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(f) = c.next_frame(left).await else {
            panic!("the metrics never reached what the traffic implies within {DEADLINE:?}; last frame: {last:?}");
        };
        if f.event == "metrics" {
            let samples: Vec<Value> = serde_json::from_str(&f.data).expect("a metrics frame is a JSON array");
            last =
                samples.into_iter().map(|s| (s["id"].as_str().unwrap_or_default().to_string(), s)).collect();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemons' side
// ---------------------------------------------------------------------------------------

/// The Argon2 hash of `password`, from `livetap hash-password` (killed after the deadline).
fn hash_password(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livetap"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run livetap hash-password");
    {
        use std::io::Write as _;
        // Dropping stdin at the end of this block closes it: the password is one line.
        let mut stdin = child.stdin.take().expect("piped stdin");
        writeln!(stdin, "{password}").expect("write the password");
    }
    let end = std::time::Instant::now() + DEADLINE;
    while child.try_wait().expect("wait for hash-password").is_none() {
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("livetap hash-password did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("livetap hash-password");
    assert!(out.status.success(), "hash-password: {}", String::from_utf8_lossy(&out.stderr));
    let hash = String::from_utf8(out.stdout).expect("UTF-8").trim().to_string();
    assert!(hash.starts_with("$argon2"), "hash-password printed {hash:?}");
    hash
}

/// Connects to 127.0.0.1:`port` from `from`, reads lines until one satisfies `greeting`,
/// sends `bye` and reads until one satisfies `closed` (or the server closes).
async fn short_session(port: u16, from: Ipv4Addr, greeting: &str, bye: &str, closed: &str) {
    let session = async {
        let sock = tokio::net::TcpSocket::new_v4().expect("a socket");
        sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).expect("bind a loopback source address");
        let stream = sock.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.expect("connect");
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Some(l) = lines.next_line().await.expect("read") {
            if l.starts_with(greeting) {
                break;
            }
        }
        w.write_all(bye.as_bytes()).await.expect("write");
        while let Some(l) = lines.next_line().await.expect("read") {
            if l.starts_with(closed) {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, session).await.expect("a short session within the deadline");
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_else(|| panic!("no string at {path:?} in {v}"))
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

/// A sentinel for the subscriber `name`: an event of a type no daemon writes, with `data`
/// (and `level`) chosen to match that subscriber's filter and no other's.
fn sentinel(name: &str, level: &str, data: Value) -> Value {
    let mut data = data;
    data["sentinel"] = json!(name);
    json!({"type": SENTINEL, "level": level, "data": data})
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_postfix_and_dovecot_traffic_reaches_filtered_subscribers_exactly() {
    if let Err(why) = available() {
        eprintln!("skipping the real Postfix/Dovecot end-to-end test: {why}");
        return;
    }

    // 1. livetap, following two files that do not exist yet.
    let dir = MailHost::fresh_dir();
    let postfix_log = MailHost::postfix_log_in(dir.path());
    let dovecot_log = MailHost::dovecot_log_in(dir.path());
    let conf_dir = tempfile::tempdir().expect("a temporary directory");
    let conf = conf_dir.path().join("livetap.toml");
    std::fs::write(
        &conf,
        format!(
            "[[principal]]\nname = \"dovecot\"\npassword-hash = \"{}\"\npermissions = [\"ingest\"]\n",
            hash_password(EXPORTER_PASSWORD)
        ),
    )
    .expect("write the config");
    let arg = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    let (conf_arg, pf_arg, dc_arg) = (arg(&conf), arg(&postfix_log), arg(&dovecot_log));
    let lt = Livetap::start(&["-c", &conf_arg, "--postfix-log", &pf_arg, "--dovecot-log", &dc_arg]);
    let addr = lt.addr;
    let banner = lt.stdout.lock().unwrap().clone();
    for f in [&pf_arg, &dc_arg] {
        assert!(banner.contains(f.as_str()), "the banner does not name {f}:\n{banner}");
    }
    let mut all = subscribe(addr, "").await;
    let mut seen: Vec<Value> = Vec::new();

    // 2. The daemons, with Dovecot's exporter posting to livetap.
    let url = format!("http://dovecot:{EXPORTER_PASSWORD}@{addr}/api/livetap/ingest/dovecot");
    let mut host = tokio::task::block_in_place(|| MailHost::start_in(dir, Some(&url), &[]));
    assert_eq!(host.postfix_log, postfix_log);
    assert_eq!(host.dovecot_log, dovecot_log);
    let user = host.user.clone();

    // 3. Both daemons' start-up lines are in: what follows is traffic.
    read_until(&mut all, &mut seen, "Postfix's and Dovecot's start-up events", |s| {
        s.iter().filter(|e| e["type"] == "server.startup").count() >= 2
    })
    .await;
    seen.clear();

    let ip = |step: &str| match step {
        "delivered" => "127.0.0.11",
        "deferred" => "127.0.0.13",
        "sasl_failed" => "127.0.0.14",
        "imap_login" => "127.0.0.15",
        "imap_login_failed" => "127.0.0.16",
        "non_smtp_command" => "127.0.0.30",
        _ => unreachable!("{step}"),
    };
    let deferred_to = "someone@deferred.test";

    // The live subscribers, each filtered as the issue asks, opened before the traffic.
    let mut live: Vec<Sub> = Vec::new();
    for (name, query) in [
        // A client's session and, through the span link, its message's later events.
        ("remote-ip", format!("remote-ip={}", ip("delivered"))),
        ("to", format!("to={deferred_to}")),
        // Warnings and worse, without span following: a warning's session (its connect and
        // disconnect, at info) would be followed otherwise.
        ("level", "level=warn&follow=false".to_string()),
        // Every event naming the Dovecot user, from both daemons and both Dovecot paths;
        // without following, so that the set is "the events that name the user".
        ("account-name", format!("account-name={user}&follow=false")),
        // An IMAP client: its Dovecot session from the log (whose disconnect line names no
        // address, and arrives through the span) and from the exporter.
        ("imap-remote-ip", format!("remote-ip={}", ip("imap_login"))),
    ] {
        let client = subscribe(addr, &query).await;
        live.push(Sub { plan: Plan::new(name, query), client });
    }

    // 4. The traffic.
    let since = now_secs() - 1;
    let t = tokio::task::block_in_place(|| host.traffic_with(&["non_smtp_command"]));
    for (step, want) in [
        ("delivered", "127.0.0.11"),
        ("deferred", "127.0.0.13"),
        ("sasl_failed", "127.0.0.14"),
        ("imap_login", "127.0.0.15"),
        ("imap_login_failed", "127.0.0.16"),
        ("non_smtp_command", "127.0.0.30"),
    ] {
        assert_eq!(s(&t, &[step, "client_ip"]), want, "traffic.py's source address of {step}");
    }
    let q1 = s(&t, &["delivered", "queue_id"]).to_string();
    let q2 = s(&t, &["deferred", "queue_id"]).to_string();
    let msgid1 = s(&t, &["delivered", "message_id"]).to_string();
    let msgid2 = s(&t, &["deferred", "message_id"]).to_string();
    let from1 = s(&t, &["delivered", "from"]).to_string();

    // The expectations, from the mapping tables in README.md ("Postfix and Dovecot hosts").
    let delivered_message = |p: &mut Plan, after: &[usize]| {
        p.chain(
            after,
            vec![
                ev("postfix.message-id").has("queueId", q1.as_str()).has("id", msgid1.as_str()),
                ev("queue.queue-message").has("queueId", q1.as_str()).has("from", from1.as_str()),
                ev("delivery.delivered")
                    .has("queueId", q1.as_str())
                    .has("to", user.as_str())
                    .has("code", "250")
                    .has("dsn", "2.0.0"),
                ev("delivery.completed").has("queueId", q1.as_str()),
            ],
        )
    };
    // The exporter's view of the IMAP session: SELECT, then LOGOUT and the session's end, which
    // Dovecot finishes in either order (the LOGOUT command's event can end as the session is
    // torn down; its recorded exporter bodies show both orders).
    let imap_session = |p: &mut Plan, ip: &str| {
        let select = p.add(ev("imap.select").has("remoteIp", ip).has("mailboxName", "INBOX"), &[]);
        p.add(ev("imap.logout").has("remoteIp", ip), &[select]);
        p.add(ev("imap.connection-end").has("remoteIp", ip), &[select]);
    };
    let deferral = || {
        ev("delivery.dsn-temp-fail").has("queueId", q2.as_str()).has("to", deferred_to).has("dsn", "4.4.1")
    };
    let sasl_warning = || {
        ev("auth.failed")
            .level("warn")
            .has("remoteIp", ip("sasl_failed"))
            .has("accountName", user.as_str())
            .has("type", "PLAIN")
    };
    for sub in &mut live {
        let p = &mut sub.plan;
        match p.name {
            "remote-ip" => {
                let ip11 = ip("delivered");
                let session = p.chain(
                    &[],
                    vec![
                        ev("smtp.connection-start").has("remoteIp", ip11).has("listenerId", "postfix/smtpd"),
                        // The message is born in the session and names it as its parent.
                        ev("postfix.client").has("remoteIp", ip11).has("queueId", q1.as_str()),
                        ev("smtp.connection-end").has("remoteIp", ip11).has("total", 5),
                    ],
                );
                delivered_message(p, &[session[1]]);
            }
            "to" => {
                p.add(deferral(), &[]);
            }
            "level" => {
                p.add(sasl_warning(), &[]);
                p.add(
                    ev("smtp.invalid-command")
                        .level("warn")
                        .has("remoteIp", ip("non_smtp_command"))
                        .has("contents", "GET / HTTP/1.0"),
                    &[],
                );
            }
            "account-name" => {
                let u = user.as_str();
                // Postfix's log: the failed SASL login.
                p.add(sasl_warning(), &[]);
                // Dovecot's log: the passdb's verdict on the SASL attempt, the LMTP delivery,
                // the IMAP login and its logout, the failed IMAP login.
                p.add(
                    ev("dovecot.auth-lookup")
                        .has("remoteIp", ip("sasl_failed"))
                        .has("details", "Password mismatch"),
                    &[],
                );
                p.add(
                    ev("message-ingest.ham")
                        .has("accountName", u)
                        .has("msgid", format!("<{msgid1}>"))
                        .has("mailboxName", "INBOX"),
                    &[],
                );
                p.chain(
                    &[],
                    vec![
                        ev("auth.success").has("remoteIp", ip("imap_login")).lacks("listenerId"),
                        ev("imap.connection-end").has("reason", "Logged out"),
                    ],
                );
                p.chain(
                    &[],
                    vec![
                        ev("dovecot.auth-lookup")
                            .has("remoteIp", ip("imap_login_failed"))
                            .has("details", "Password mismatch"),
                        ev("auth.failed").has("remoteIp", ip("imap_login_failed")).lacks("listenerId"),
                    ],
                );
                // The exporter: the auth service's verdicts (SASL and both IMAP logins), the
                // login process's view of the IMAP logins, the LMTP delivery and its user
                // session, the IMAP session's commands and end.
                // Postfix's own line reports the SMTP login, so Dovecot's verdict on it stays
                // Dovecot's event (not a second `auth.failed`).
                p.add(
                    ev("dovecot.auth_request_finished")
                        .has("remoteIp", ip("sasl_failed"))
                        .has("listenerId", "smtp"),
                    &[],
                );
                p.add(ev("dovecot.mail_user_session_finished").has("protocol", "lmtp").has("to", u), &[]);
                p.add(
                    ev("message-ingest.ham")
                        .has("accountName", u)
                        .has("msgid", format!("<{msgid1}>"))
                        .has("from", from1.as_str())
                        .lacks("mailboxName"),
                    &[],
                );
                p.add(ev("auth.success").has("remoteIp", ip("imap_login")).has("listenerId", "imap"), &[]);
                p.add(
                    ev("dovecot.auth_client_request_finished")
                        .has("remoteIp", ip("imap_login"))
                        .lacks("error"),
                    &[],
                );
                imap_session(p, ip("imap_login"));
                p.add(
                    ev("auth.failed").has("remoteIp", ip("imap_login_failed")).has("listenerId", "imap"),
                    &[],
                );
                p.add(
                    ev("dovecot.auth_client_request_finished")
                        .has("remoteIp", ip("imap_login_failed"))
                        .has("error", "Authentication failed"),
                    &[],
                );
            }
            "imap-remote-ip" => {
                let ip15 = ip("imap_login");
                // The log: the login opens the Dovecot session, whose disconnect line (no
                // address in it) comes through the span.
                p.chain(
                    &[],
                    vec![
                        ev("auth.success").has("remoteIp", ip15).lacks("listenerId"),
                        ev("imap.connection-end").has("reason", "Logged out").lacks("remoteIp"),
                    ],
                );
                // The exporter.
                p.add(ev("auth.success").has("remoteIp", ip15).has("listenerId", "imap"), &[]);
                p.add(ev("dovecot.auth_client_request_finished").has("remoteIp", ip15), &[]);
                imap_session(p, ip15);
            }
            other => unreachable!("{other}"),
        }
    }
    // The replayed subscriber's plan (opened once the traffic is in, with `since=`: its queue
    // ids did not exist before).
    let mut by_queue = Plan::new("queue-id", format!("queue-id={q1},{q2}&since={since}"));
    let c1 =
        by_queue.add(ev("postfix.client").has("queueId", q1.as_str()).has("remoteIp", ip("delivered")), &[]);
    delivered_message(&mut by_queue, &[c1]);
    by_queue.chain(
        &[],
        vec![
            ev("postfix.client").has("queueId", q2.as_str()).has("remoteIp", ip("deferred")),
            ev("postfix.message-id").has("queueId", q2.as_str()).has("id", msgid2.as_str()),
            ev("queue.queue-message").has("queueId", q2.as_str()),
            deferral(),
        ],
    );

    // 5. Quiescence: the unfiltered stream has every expected event ...
    read_until_or(
        &mut all,
        &mut seen,
        "every expected event on the unfiltered stream",
        |s| live.iter().all(|sub| sub.plan.complete_in(s)) && by_queue.complete_in(s),
        |s| {
            let plans = live.iter().map(|sub| &sub.plan).chain([&by_queue]);
            format!("expected and not received:\n{}", plans.map(|p| p.missing_in(s)).collect::<String>())
        },
    )
    .await;
    // ... and, after the barrier sessions' lines, everything written before them.
    short_session(host.smtp_port, BARRIER_SMTP_IP, "220 ", "QUIT\r\n", "221").await;
    short_session(host.imap_port, BARRIER_IMAP_IP, "* OK", "b LOGOUT\r\n", "b OK").await;
    let (smtp_barrier, imap_barrier) = (BARRIER_SMTP_IP.to_string(), BARRIER_IMAP_IP.to_string());
    read_until(&mut all, &mut seen, "the barrier sessions' ends", |s| {
        s.iter().any(|e| e["type"] == "smtp.connection-end" && e["data"]["remoteIp"] == smtp_barrier.as_str())
            && s.iter().any(|e| e["data"]["remoteIp"] == imap_barrier.as_str())
    })
    .await;

    // The message's link to its session: the session's span, followed, gives the session and
    // the message (replayed, since the span id is known only now).
    let client_event = seen
        .iter()
        .find(|e| e["type"] == "postfix.client" && e["data"]["queueId"] == q1.as_str())
        .expect("the delivered message's client= event");
    let session_span = client_event["data"]["parentSpanId"]
        .as_u64()
        .unwrap_or_else(|| panic!("the message's first event names no parentSpanId: {client_event}"));
    let mut by_span = Plan::new("span-id", format!("span-id={session_span}&since={since}"));
    let ip11 = ip("delivered");
    let session = by_span.chain(
        &[],
        vec![
            ev("smtp.connection-start").has("remoteIp", ip11),
            ev("postfix.client").has("queueId", q1.as_str()).has("parentSpanId", session_span),
            ev("smtp.connection-end").has("remoteIp", ip11),
        ],
    );
    delivered_message(&mut by_span, &[session[1]]);

    let mut replayed = Vec::new();
    for plan in [by_queue, by_span] {
        let client = subscribe(addr, &plan.query).await;
        replayed.push(Sub { plan, client });
    }

    // 6. The sentinels, one per subscriber, in one body; the span's last (it carries the
    // session's span id, which no other subscriber follows any more).
    let sentinels = [
        sentinel("remote-ip", "info", json!({"remoteIp": ip("delivered")})),
        sentinel("to", "info", json!({"to": deferred_to})),
        sentinel("level", "warn", json!({})),
        sentinel("account-name", "info", json!({"accountName": user})),
        sentinel("imap-remote-ip", "info", json!({"remoteIp": ip("imap_login")})),
        sentinel("queue-id", "info", json!({"queueId": q1})),
        sentinel("span-id", "info", json!({"spanId": session_span})),
    ];
    let r = ingest(addr, &common::ndjson(&sentinels)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], sentinels.len(), "{}", r.text());

    let mut results: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    for sub in live.iter_mut().chain(replayed.iter_mut()) {
        let got = until_sentinel(sub).await;
        sub.plan.check_exact(&got);
        results.insert(sub.plan.name, got);
    }

    // The span link, precisely: only the message's first event names the session.
    let a = &results["remote-ip"];
    let linked: Vec<&Value> = a.iter().filter(|e| e["data"].get("parentSpanId").is_some()).collect();
    assert_eq!(linked.len(), 1, "one event names the session as its parent: {linked:?}");
    assert_eq!(linked[0]["type"], "postfix.client");
    assert_eq!(linked[0]["data"]["parentSpanId"], session_span);
    // The delivery's elapsed is Postfix's `delay` in milliseconds; the message's end carries
    // its time in the queue, a whole number of seconds in milliseconds.
    let delivered = a.iter().find(|e| e["type"] == "delivery.delivered").expect("checked");
    assert!(delivered["data"]["elapsed"].is_u64(), "{delivered}");
    let completed = a.iter().find(|e| e["type"] == "delivery.completed").expect("checked");
    let total_ms = completed["data"]["elapsed"].as_u64().unwrap_or_else(|| panic!("no elapsed: {completed}"));
    assert_eq!(total_ms % 1000, 0, "{completed}");

    // The metrics the traffic implies: no SMTP or IMAP session open any more, the deferred
    // message still queued, one message through the queue (delivery.total-time) and two
    // queued (message.size, with their sizes).
    let sizes: i64 = results["queue-id"]
        .iter()
        .filter(|e| e["type"] == "queue.queue-message")
        .map(|e| e["data"]["size"].as_i64().unwrap_or_else(|| panic!("no size: {e}")))
        .sum();
    let names =
        "smtp.active-connections,imap.active-connections,queue.count,delivery.total-time,message.size";
    let num =
        |m: &BTreeMap<String, Value>, name: &str, field: &str| m.get(name).and_then(|v| v[field].as_f64());
    let m = metrics_until(addr, names, |m| {
        num(m, "delivery.total-time", "count") == Some(1.0)
            && num(m, "message.size", "count") == Some(2.0)
            && num(m, "queue.count", "value") == Some(1.0)
            && num(m, "smtp.active-connections", "value") == Some(0.0)
            && num(m, "imap.active-connections", "value") == Some(0.0)
    })
    .await;
    assert_eq!(num(&m, "delivery.total-time", "sum"), Some(total_ms as f64), "{m:?}");
    assert_eq!(num(&m, "message.size", "sum"), Some(sizes as f64), "{m:?}");

    drop(live);
    drop(replayed);
    drop(all);
    tokio::task::block_in_place(|| host.stop());
    drop(lt);
}
