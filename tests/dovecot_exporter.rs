//! Dovecot's event exporter against a real Dovecot: livetap is started, a throwaway Dovecot
//! (Debian's `dovecot-imapd`) is started with its `event_exporter` posting to livetap's
//! `/api/livetap/ingest/dovecot`, the test logs in over IMAP with the right and a wrong
//! password, and a subscriber filtered on the Dovecot user receives exactly the expected
//! events; the lines the same Dovecot wrote to its log give the same sessions the same
//! spans. Without a `dovecot` binary the test says so and passes, except in CI (`CI` set),
//! where that is a failure.

mod common;

use common::*;
use livetap::config::PrincipalConfig;
use livetap::ingest::maillog::{dovecot, exporter, LogRecord, Session, Val};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The password of the livetap principal Dovecot's exporter signs in as.
const EXPORTER_PASSWORD: &str = "exporter-secret-42";

/// A Dovecot instance of its own: its own directories, an IMAP listener on a free loopback
/// port, a passwd-file with `alice` (password `secret`), its log in `dovecot.log`, and its
/// event exporter pointed at `exporter_url`. Stopped (SIGTERM to its master, which stops
/// its children) when dropped.
struct Dovecot {
    dir: tempfile::TempDir,
    master: Child,
    imap_port: u16,
}

/// The `dovecot` binary, if installed.
fn dovecot_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("dovecot"))
        .find(|p| p.is_file())
}

/// The output of a small command (`id -un`), trimmed.
fn output_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Dovecot {
    async fn start(binary: &Path, exporter_url: &str) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Dovecot's unprivileged processes must reach the directory.
        set_mode(d, 0o755);
        for sub in ["run", "state", "home"] {
            std::fs::create_dir(d.join(sub)).unwrap();
            set_mode(&d.join(sub), 0o755);
        }
        std::fs::write(d.join("passwd"), "alice:{PLAIN}secret\n").unwrap();
        // As root, Dovecot runs its processes as the users its package created and the mail
        // processes as `dovecot`; as anyone else, everything runs as that user, and the
        // services that chroot by default must not (the config sets `chroot =` for both).
        let root = output_of("id", &["-u"]) == "0";
        let (user, group) = if root {
            ("dovecot".to_string(), "dovecot".to_string())
        } else {
            (output_of("id", &["-un"]), output_of("id", &["-gn"]))
        };
        let uid = output_of("id", &["-u", &user]);
        let gid = output_of("id", &["-g", &user]);
        if root {
            std::os::unix::fs::chown(d.join("home"), Some(uid.parse().unwrap()), Some(gid.parse().unwrap()))
                .unwrap();
        }
        let privileges = if root {
            String::new()
        } else {
            format!("default_internal_user = {user}\ndefault_internal_group = {group}\ndefault_login_user = {user}\n")
        };
        let imap_port = free_port();
        let p = d.display();
        let conf = format!(
            "base_dir = {p}/run
state_dir = {p}/state
log_path = {p}/dovecot.log
instance_name = livetap-test-{imap_port}
{privileges}protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
first_valid_uid = {uid}
first_valid_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {p}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={p}/home/%u
}}
mail_location = maildir:~/Maildir
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
event_exporter livetap {{
  format = json
  format_args = time-rfc3339
  transport = http-post
  transport_args = {exporter_url}
  transport_timeout = 10s
}}
metric livetap {{
  exporter = livetap
  filter = event=auth_request_finished OR event=imap_command_finished OR event=mail_user_session_finished
}}
"
        );
        let conf_path = d.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let stderr = std::fs::File::create(d.join("stderr")).unwrap();
        let master = Command::new(binary)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start dovecot");
        let mut dv = Dovecot { dir, master, imap_port };
        dv.wait_ready().await;
        dv
    }

    /// Waits until the IMAP listener greets, or panics with what Dovecot said.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.master.try_wait() {
                panic!("dovecot exited ({status}):\n{}", self.diagnostics());
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.imap_port)).await {
                let mut lines = BufReader::new(stream).lines();
                if let Ok(Ok(Some(greeting))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
                    assert!(greeting.starts_with("* OK"), "IMAP greeting: {greeting}");
                    return;
                }
            }
            assert!(Instant::now() < deadline, "dovecot did not greet in time:\n{}", self.diagnostics());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let stderr = std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default();
        format!("stderr:\n{stderr}\nlog:\n{}", self.log())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children; SIGKILL would leave them behind.
        let _ = Command::new("kill").arg("-TERM").arg(self.master.id().to_string()).status();
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::time::Instant::now() < deadline {
            if matches!(self.master.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One IMAP conversation over plain TCP: sends `tag command`, reads to the tagged answer.
struct Imap {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<TcpStream>>>,
    write: tokio::io::WriteHalf<TcpStream>,
}

impl Imap {
    async fn connect(port: u16) -> Imap {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to IMAP");
        let (read, write) = tokio::io::split(stream);
        let mut imap = Imap { lines: BufReader::new(read).lines(), write };
        let greeting = imap.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        imap
    }

    async fn line(&mut self) -> String {
        match tokio::time::timeout(DEADLINE, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!("no IMAP line in time: {other:?}"),
        }
    }

    /// The tagged answer's status word (`OK`, `NO`, `BAD`).
    async fn command(&mut self, tag: &str, command: &str) -> String {
        self.write.write_all(format!("{tag} {command}\r\n").as_bytes()).await.unwrap();
        loop {
            let line = self.line().await;
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                return rest.split(' ').next().unwrap_or("").to_string();
            }
        }
    }
}

/// The events of a collected stream whose `accountName` is `user`.
fn of_user<'a>(events: &'a [Value], user: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["data"]["accountName"] == user).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_exporter_events_reach_a_subscriber_filtered_on_the_user() {
    let Some(binary) = dovecot_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("no dovecot binary: CI must install dovecot-imapd (see .ci/run)");
        }
        eprintln!("skipping the Dovecot exporter test: no dovecot binary (apt-get install dovecot-imapd)");
        return;
    };
    let hash = livetap::auth::password::hash_password(EXPORTER_PASSWORD).unwrap();
    let server = start_server(|c| {
        c.principal.push(PrincipalConfig {
            name: "dovecot".into(),
            password_hash: Some(hash),
            permissions: vec!["ingest".into()],
            ..Default::default()
        });
        c.principal.push(PrincipalConfig {
            name: "viewer".into(),
            api_key: Some("viewer-key-0123456789".into()),
            permissions: vec!["tracing-live".into()],
            ..Default::default()
        });
    })
    .await;
    let addr = server.addr;
    let url = format!("http://dovecot:{EXPORTER_PASSWORD}@{addr}/api/livetap/ingest/dovecot");
    let dv = Dovecot::start(&binary, &url).await;

    // `account-name=` is the query key of the catalogue's `accountName`; `carol` is the
    // barrier that says everything Dovecot sent before it has arrived.
    let mut live = SseClient::connect(addr, "/api/livetap/live?account-name=alice,carol", Some(TOKEN)).await;
    assert_eq!(live.status, 200);

    let mut good = Imap::connect(dv.imap_port).await;
    assert_eq!(good.command("a", "LOGIN alice secret").await, "OK");
    assert_eq!(good.command("b", "SELECT INBOX").await, "OK");
    assert_eq!(good.command("c", "LOGOUT").await, "OK");
    let mut bad = Imap::connect(dv.imap_port).await;
    assert_eq!(bad.command("a", "LOGIN alice wrong").await, "NO");
    assert_eq!(bad.command("b", "LOGOUT").await, "OK");

    let expected = ["auth.success", "imap.select", "imap.logout", "imap.connection-end", "auth.failed"];
    let first =
        live.collect_until(DEADLINE, |c| of_user(&c.events, "alice").len() >= expected.len()).await.events;
    assert_eq!(
        of_user(&first, "alice").len(),
        expected.len(),
        "alice's events: {first:#?}\n{}",
        dv.diagnostics()
    );
    // The barrier: carol is no user, so her login fails; once her event is here, every
    // event Dovecot exported before it is too (it posts one at a time, in order).
    let mut carol = Imap::connect(dv.imap_port).await;
    assert_eq!(carol.command("a", "LOGIN carol nope").await, "NO");
    let rest = live.collect_until(DEADLINE, |c| !of_user(&c.events, "carol").is_empty()).await.events;
    assert_eq!(of_user(&rest, "carol").len(), 1, "carol's failure arrives: {rest:#?}");
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    let alice = of_user(&all, "alice");
    let mut types: Vec<&str> = alice.iter().map(|e| e["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(types, want, "exactly these events for alice: {alice:#?}");
    assert_eq!(all.len(), alice.len() + 1, "nothing but alice's and the barrier: {all:#?}");

    let by = |ty: &str| *alice.iter().find(|e| e["type"] == ty).unwrap();
    for e in &alice {
        assert_eq!(e["data"]["remoteIp"], "127.0.0.1", "{e}");
    }
    assert_eq!(by("auth.success")["data"]["type"], "PLAIN");
    assert_eq!(by("auth.failed")["data"]["details"], "authentication failed");
    assert_eq!(by("imap.select")["data"]["mailboxName"], "INBOX");
    assert_eq!(by("imap.select")["data"]["result"], "OK");
    assert!(by("imap.select")["data"]["elapsed"].is_u64(), "{}", by("imap.select"));

    // Spans: the session ids in the log lines of the same logins, hashed as the exporter's
    // `session` field is, name the exporter events' spans (the stream leaves `spanId` out of
    // its JSON, so a `span-id=` subscriber replaying from the start shows who is in which).
    let log = dv.log();
    let mut log_spans = Vec::new();
    for line in log.lines() {
        let rec = LogRecord {
            time: None,
            host: "",
            program: "dovecot",
            pid: None,
            message: line.get(16..).unwrap_or(""),
        };
        let p = dovecot::parse(&rec);
        if p.get("accountName") == Some(Val::Str("alice"))
            && (p.ty == "auth.success" || p.ty == "auth.failed")
        {
            let Session::Named { id, .. } = p.session else { panic!("{line} names its session") };
            log_spans.push((p.ty, exporter::session_span(id)));
        }
    }
    assert_eq!(log_spans.len(), 2, "one login and one failure in the log: {log}");
    for (ty, span) in log_spans {
        let want: &[&str] = if ty == "auth.success" {
            &["auth.success", "imap.select", "imap.logout", "imap.connection-end"]
        } else {
            &["auth.failed"]
        };
        let q = format!("/api/livetap/live?span-id={span}&last-event-id=0&follow=false");
        let mut s = SseClient::connect(addr, &q, Some(TOKEN)).await;
        let got = s.collect_events(want.len(), DEADLINE).await;
        let mut got: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
        got.sort_unstable();
        let mut want = want.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "the span of the log's {ty} session");
    }

    // The endpoint's refusals: bad JSON and a nameless event are 400 with the usual body,
    // no credentials 401, a principal without `ingest` 403.
    let basic = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("dovecot:{EXPORTER_PASSWORD}"));
        format!("Basic {b64}")
    };
    let path = "/api/livetap/ingest/dovecot";
    let json = ("Content-Type", "application/json");
    for (body, says) in [
        (&b"{\"event\":"[..], "not an exporter event"),
        (b"{}", "exporter_include"),
        (b"", "no exporter event"),
    ] {
        let r = request(addr, "POST", path, &[("Authorization", &basic), json], body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        let j = r.json();
        assert_eq!(j["error"], "invalid body");
        assert!(j["detail"].as_str().unwrap().contains(says), "{j}");
    }
    let r = request(addr, "POST", path, &[json], b"{}").await;
    assert_eq!(r.status, 401);
    let r =
        request(addr, "POST", path, &[("Authorization", "Bearer viewer-key-0123456789"), json], b"{}").await;
    assert_eq!(r.status, 403);
    let r = request(addr, "GET", path, &[("Authorization", &basic)], b"").await;
    assert_eq!(r.status, 405);
    // A captured body is accepted as Dovecot sent it.
    let real = include_str!("data/maillog/dovecot-exporter.ndjson").lines().next().unwrap();
    let r = request(addr, "POST", path, &[("Authorization", &basic), json], real.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], 1);

    drop(dv);
    server.shutdown().await;
}
