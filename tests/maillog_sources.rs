//! The mail-log sources, run for real in the `livetap` binary: a followed file across rotation
//! by rename and by truncation, a file read from its start, the syslog listener over UDP, TCP
//! (both framings) and a Unix datagram socket, the journal reader restarted after the last
//! entry it read, and the start-up errors with their fixes (a port in use, an unreadable file,
//! no journal).
//!
//! The lines' event types come from the Postfix and Dovecot parsers; the tests look at what
//! every line keeps whatever its type, its text in `details` (the lines are of kinds the
//! parsers do not know), and its time.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A subscriber to every event since the first (`last-event-id=0` replays what was published
/// before it connected).
async fn subscribe(addr: std::net::SocketAddr) -> SseClient {
    let c = SseClient::connect(addr, "/api/livetap/live?last-event-id=0", Some(TOKEN)).await;
    assert_eq!(c.status, 200, "{:?}", c.error_body.as_deref().map(String::from_utf8_lossy));
    c
}

/// The `details` of every event received until one's details is `last` (safety deadline).
async fn details_until(sse: &mut SseClient, got: &mut Vec<String>, last: &str) {
    let c = sse.collect_until(DEADLINE, |c| c.events.iter().any(|e| e["data"]["details"] == last)).await;
    got.extend(c.events.iter().map(|e| e["data"]["details"].as_str().unwrap_or("").to_string()));
    assert!(got.iter().any(|d| d == last), "{last:?} did not arrive; got {got:?}");
}

/// A Postfix-looking log line whose message is `seq=N ...`.
fn line(n: usize, what: &str) -> (String, String) {
    let msg = format!("seq={n} {what}");
    (format!("Dec  7 13:00:{:02} mx postfix/smtpd[{}]: {msg}\n", n % 60, 800 + n), msg)
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Appends lines `range` to `path`, returning their messages.
fn append_lines(path: &Path, range: std::ops::RangeInclusive<usize>, what: &str) -> Vec<String> {
    let mut text = String::new();
    let mut msgs = Vec::new();
    for n in range {
        let (l, m) = line(n, what);
        text.push_str(&l);
        msgs.push(m);
    }
    append(path, &text);
    msgs
}

#[tokio::test]
async fn a_followed_file_arrives_once_in_order_across_rename_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    // Lines written before livetap starts are not read: it starts at the end.
    append_lines(&log, 100..=101, "before the start");
    let lt = Livetap::start(&["--postfix-log", log.to_str().unwrap()]);
    assert!(lt
        .stdout
        .lock()
        .unwrap()
        .contains(&format!("mail log:    file {} (from its end)", log.display())));
    let mut sse = subscribe(lt.addr).await;
    let mut want = append_lines(&log, 1..=5, "rotation test");
    // A line written in two parts arrives whole.
    let (six, msg6) = line(6, "written in two parts");
    append(&log, &six[..20]);
    let mut got = Vec::new();
    details_until(&mut sse, &mut got, &want[4]).await;
    append(&log, &six[20..]);
    want.push(msg6);
    // Rotation by rename: the writer still writes two lines to the old file, then the new
    // file starts.
    let old = dir.path().join("mail.log.1");
    std::fs::rename(&log, &old).unwrap();
    want.extend(append_lines(&old, 7..=8, "after the rename, in the old file"));
    want.extend(append_lines(&log, 9..=10, "in the new file"));
    details_until(&mut sse, &mut got, &want[9]).await;
    // Truncation (logrotate's copytruncate): the file starts again, shorter than what was read.
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    want.extend(append_lines(&log, 11..=11, "after the truncation"));
    details_until(&mut sse, &mut got, &want[10]).await;
    want.extend(append_lines(&log, 12..=13, "after the truncation"));
    // A last line closes the test: whatever arrived before it is all that ever will.
    want.extend(append_lines(&log, 14..=14, "the end"));
    details_until(&mut sse, &mut got, &want[13]).await;
    assert_eq!(got, want, "every line once, in order");
    let s = stats(lt.addr).await;
    assert_eq!((s["accepted"].as_u64(), s["rejected"].as_u64()), (Some(14), Some(0)), "{s}");
}

#[tokio::test]
async fn from_start_reads_prefilled_postfix_and_dovecot_files() {
    let dir = tempfile::tempdir().unwrap();
    let postfix = dir.path().join("mail.log");
    let dovecot = dir.path().join("dovecot.log");
    let mut want = append_lines(&postfix, 1..=300, "from the start");
    // Dovecot's own log_path form: no host, no pid; the record's message is the whole text.
    let dove: Vec<String> =
        (1..=3).map(|n| format!("imap-login: Info: seq={n} a line of Dovecot's own log")).collect();
    append(&dovecot, &dove.iter().map(|m| format!("Dec 07 13:00:00 {m}\n")).collect::<String>());
    let lt = Livetap::start(&[
        "--postfix-log",
        postfix.to_str().unwrap(),
        "--dovecot-log",
        dovecot.to_str().unwrap(),
        "--from-start",
        // The lines' times are read in UTC, whatever this host's zone.
        "--log-utc-offset",
        "UTC",
    ]);
    assert!(lt.stdout.lock().unwrap().contains("(from its start)"));
    let mut sse = subscribe(lt.addr).await;
    let c = sse.collect(303, DEADLINE).await;
    let details = |e: &Value| e["data"]["details"].as_str().unwrap_or("").to_string();
    let from_postfix: Vec<String> =
        c.events.iter().map(details).filter(|d| d.contains("from the start")).collect();
    let from_dovecot: Vec<String> = c.events.iter().map(details).filter(|d| d.contains("Dovecot")).collect();
    assert_eq!(from_postfix, want, "the Postfix file in order");
    // Dovecot's parser may keep less of the line than its whole text; the marker stays.
    assert_eq!(from_dovecot.len(), 3, "{from_dovecot:?}");
    for (n, d) in from_dovecot.iter().enumerate() {
        assert!(d.contains(&format!("seq={} a line of Dovecot's own log", n + 1)), "{from_dovecot:?}");
    }
    assert_eq!(c.events.len(), 303);
    // Lines keep their time: 13:00:NN on 7 December of the year nearest to now.
    let first = c.events.iter().find(|e| details(e) == want[0]).unwrap();
    assert!(first["createdAt"].as_str().unwrap().ends_with("-12-07T13:00:01Z"), "{first}");
    // The file goes on being followed after its end.
    want = append_lines(&postfix, 301..=301, "followed after the start");
    let mut got = Vec::new();
    details_until(&mut sse, &mut got, &want[0]).await;
    assert_eq!(got, want);
}

/// The address a syslog listener of the banner got (`syslog udp://127.0.0.1:40123`).
fn banner_addr(lt: &Livetap, scheme: &str) -> String {
    let out = lt.stdout.lock().unwrap().clone();
    let prefix = format!("syslog {scheme}://");
    out.lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, a)| a.trim().to_string()))
        .unwrap_or_else(|| panic!("no {scheme} listener in the banner: {out}"))
}

#[tokio::test]
async fn syslog_over_udp_tcp_and_a_unix_datagram_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("syslog.sock");
    let unix = format!("unix://{}", sock.display());
    let lt = Livetap::start(&[
        "--syslog-listen",
        "udp://127.0.0.1:0",
        "--syslog-listen",
        "tcp://127.0.0.1:0",
        "--syslog-listen",
        &unix,
        "--log-utc-offset",
        "UTC",
    ]);
    let (udp, tcp) = (banner_addr(&lt, "udp"), banner_addr(&lt, "tcp"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);
    let mut sse = subscribe(lt.addr).await;

    // UDP: RFC 3164 as rsyslog forwards it, RFC 5424 with structured data and a BOM.
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"<22>Dec  7 13:00:00 mx postfix/smtpd[812]: udp 3164\n", &udp).unwrap();
    u.send_to(
        "<22>1 2026-12-07T13:00:01.5Z mx postfix/qmgr 813 - [origin ip=\"192.0.2.1\"] \u{feff}udp 5424"
            .as_bytes(),
        &udp,
    )
    .unwrap();
    // A Unix datagram socket, as a local program's syslog() writes: no host, a trailing NUL.
    let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
    d.send_to(b"<22>Dec  7 13:00:02 postfix/pickup[814]: unix 3164\0", &sock).unwrap();
    d.send_to(b"<22>1 2026-12-07T13:00:03Z mx postfix/cleanup 815 - - unix 5424\nsecond line", &sock)
        .unwrap();
    // TCP, newline framing.
    let mut t = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    t.write_all(b"<22>Dec  7 13:00:04 mx postfix/smtp[816]: tcp newline 3164\n<22>1 2026-12-07T13:00:05Z mx postfix/smtp 816 - - tcp newline 5424\n")
        .await
        .unwrap();
    // TCP, octet counting (RFC 6587), a message with a newline inside.
    let mut o = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    let m1 = "<22>1 2026-12-07T13:00:06Z mx postfix/bounce 817 - - tcp counted 5424\nwith a newline";
    let m2 = "<22>Dec  7 13:00:07 mx postfix/bounce[817]: tcp counted 3164";
    o.write_all(format!("{} {m1}{} {m2}", m1.len(), m2.len()).as_bytes()).await.unwrap();

    let want = [
        ("udp 3164", "2026-12-07T13:00:00Z"),
        ("udp 5424", "2026-12-07T13:00:01Z"),
        ("unix 3164", "2026-12-07T13:00:02Z"),
        ("unix 5424 second line", "2026-12-07T13:00:03Z"),
        ("tcp newline 3164", "2026-12-07T13:00:04Z"),
        ("tcp newline 5424", "2026-12-07T13:00:05Z"),
        ("tcp counted 5424 with a newline", "2026-12-07T13:00:06Z"),
        ("tcp counted 3164", "2026-12-07T13:00:07Z"),
    ];
    let c = sse.collect(want.len(), DEADLINE).await;
    let mut got: Vec<(String, String)> = c
        .events
        .iter()
        .map(|e| {
            // Without its year, which RFC 3164 does not say (it is the one nearest to now).
            let at = e["createdAt"].as_str().unwrap_or("");
            (e["data"]["details"].as_str().unwrap_or("").to_string(), at.get(4..).unwrap_or(at).to_string())
        })
        .collect();
    // Transports race each other; each keeps its own order.
    for transport in ["udp", "unix", "tcp newline", "tcp counted"] {
        let order: Vec<&str> =
            got.iter().map(|(d, _)| d.as_str()).filter(|d| d.starts_with(transport)).collect();
        let expected: Vec<&str> = want.iter().map(|(d, _)| *d).filter(|d| d.starts_with(transport)).collect();
        assert_eq!(order, expected, "{transport}");
    }
    got.sort();
    let mut want: Vec<(String, String)> =
        want.iter().map(|(d, t)| (d.to_string(), t[4..].to_string())).collect();
    want.sort();
    assert_eq!(got, want);
    // The socket file goes with livetap.
    lt.sigterm();
    let mut lt = lt;
    assert!(lt.wait_exit().await.success(), "{}", lt.stderr());
    assert!(!sock.exists());
}

/// Runs the binary with `args` expecting it to stop at start-up; returns its standard error.
async fn fails_to_start(mut cmd: std::process::Command) -> String {
    let mut child = cmd.env("RUST_BACKTRACE", "0").stderr(Stdio::piped()).spawn().expect("spawn livetap");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("livetap did not stop at start-up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "livetap started: {err}");
    err
}

#[tokio::test]
async fn a_port_in_use_stops_livetap_with_the_fix() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for addr in
        [format!("udp://{}", udp.local_addr().unwrap()), format!("tcp://{}", tcp.local_addr().unwrap())]
    {
        let mut cmd = livetap_command(1);
        cmd.args(["--syslog-listen", &addr]);
        let err = fails_to_start(cmd).await;
        assert!(err.contains(&format!("cannot listen on {addr}: the address is already in use")), "{err}");
        assert!(err.contains("Another syslog daemon (rsyslog, syslog-ng)"), "{err}");
    }
    // A bad address is refused before anything starts, with the expected forms.
    let mut cmd = livetap_command(1);
    cmd.args(["--syslog-listen", "udp:127.0.0.1:514"]);
    let err = fails_to_start(cmd).await;
    assert!(err.contains("expected udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH"), "{err}");
}

#[tokio::test]
async fn an_unreadable_log_stops_livetap_with_the_group_to_join() {
    use std::os::unix::fs::PermissionsExt;
    // A directory anyone may enter, holding the binary and the log, so that another user can
    // run the one and be refused the other.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("mail.log");
    std::fs::write(&log, "x\n").unwrap();
    // SAFETY: `geteuid` has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let err = if root {
        // As root every file is readable: run livetap as `nobody`, with no groups, on a file of
        // group root (gid 0) with mode 0640.
        let bin = dir.path().join("livetap");
        std::fs::copy(env!("CARGO_BIN_EXE_livetap"), &bin).unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&log, None, Some(0)).unwrap();
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["--listen", "127.0.0.1:0", "--admin-token", TOKEN, "--postfix-log"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let err = fails_to_start(cmd).await;
        assert!(err.contains("group `root` (mode 0640)"), "{err}");
        assert!(err.contains("usermod -aG root nobody"), "{err}");
        err
    } else {
        // Another user: the file is made unreadable to its owner.
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o000)).unwrap();
        let mut cmd = livetap_command(1);
        cmd.arg("--postfix-log").arg(&log);
        let err = fails_to_start(cmd).await;
        assert!(err.contains("is not readable by its group"), "{err}");
        err
    };
    assert!(err.contains(&format!("cannot read {}: permission denied", log.display())), "{err}");
}

#[tokio::test]
async fn a_host_without_a_journal_stops_livetap_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    // The real journalctl, pointed at an empty journal directory.
    let empty = dir.path().join("journal");
    std::fs::create_dir(&empty).unwrap();
    let config = dir.path().join("livetap.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nkind = \"journal\"\ncommand = [\"journalctl\", \"--directory={}\"]\n",
            empty.display()
        ),
    )
    .unwrap();
    let mut cmd = livetap_command(1);
    cmd.arg("--config").arg(&config);
    let err = fails_to_start(cmd).await;
    assert!(
        err.contains("there is no systemd journal to read (journalctl: \"No journal files were found.\")"),
        "{err}"
    );
    assert!(err.contains("--postfix-log") && err.contains("--syslog-listen"), "{err}");
    // No journalctl at all.
    std::fs::write(&config, "[[source]]\nkind = \"journal\"\ncommand = [\"/nonexistent/journalctl\"]\n")
        .unwrap();
    let mut cmd = livetap_command(1);
    cmd.arg("--config").arg(&config);
    let err = fails_to_start(cmd).await;
    assert!(err.contains("the journal source needs journalctl"), "{err}");
}

/// A stand-in for journalctl: the probe (no `--follow`) finds an empty journal; the first run
/// prints two entries and exits, the second (after the second entry's cursor) one more and
/// exits, the third waits until it is killed. Each run's arguments go to `runs`.
fn fake_journalctl(dir: &Path) -> PathBuf {
    let entry = |n: usize| {
        format!(
            r#"{{"__CURSOR":"c{n}","__REALTIME_TIMESTAMP":"{}000000","_HOSTNAME":"mx","SYSLOG_IDENTIFIER":"postfix/smtpd","SYSLOG_PID":"812","_PID":"812","MESSAGE":"seq={n} from the journal"}}"#,
            1_796_648_400 + n
        )
    };
    let script = format!(
        "#!/bin/sh\n\
         case \" $* \" in *\" --follow \"*) ;; *) exit 0 ;; esac\n\
         echo \"$*\" >> '{runs}'\n\
         case \" $* \" in\n\
         *\" --after-cursor=c2 \"*) printf '%s\\n' '{e3}' ; exit 0 ;;\n\
         *\" --after-cursor=c3 \"*) echo $$ > '{pid}' ; exec sleep 600 ;;\n\
         *) printf '%s\\n' '{e1}' '{e2}' ; exit 3 ;;\n\
         esac\n",
        runs = dir.join("runs").display(),
        pid = dir.join("pid").display(),
        e1 = entry(1),
        e2 = entry(2),
        e3 = entry(3),
    );
    let path = dir.join("fake-journalctl");
    std::fs::write(&path, script).unwrap();
    path
}

#[tokio::test]
async fn the_journal_reader_restarts_after_the_last_entry_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_journalctl(dir.path());
    let config = dir.path().join("livetap.toml");
    std::fs::write(
        &config,
        format!("[[source]]\nkind = \"journal\"\ncommand = [\"sh\", \"{}\"]\n", fake.display()),
    )
    .unwrap();
    let mut lt = Livetap::start(&["--config", config.to_str().unwrap()]);
    assert!(lt
        .stdout
        .lock()
        .unwrap()
        .contains("mail log:    journal (mail facility, through sh, from its end)"));
    let mut sse = subscribe(lt.addr).await;
    let mut got = Vec::new();
    details_until(&mut sse, &mut got, "seq=3 from the journal").await;
    assert_eq!(got, ["seq=1 from the journal", "seq=2 from the journal", "seq=3 from the journal"]);
    // The first run started at the end; each restart after the last entry read.
    let pid_file = dir.path().join("pid");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !pid_file.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no third run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(
        runs[0].contains("--follow --output=json") && runs[0].ends_with("--lines=0 SYSLOG_FACILITY=2"),
        "{runs:?}"
    );
    assert!(runs[1].ends_with("--no-tail --after-cursor=c2 SYSLOG_FACILITY=2"), "{runs:?}");
    assert!(runs[2].ends_with("--no-tail --after-cursor=c3 SYSLOG_FACILITY=2"), "{runs:?}");
    // Entries keep the journal's time.
    let c = SseClient::connect(lt.addr, "/api/livetap/live?last-event-id=0", Some(TOKEN))
        .await
        .collect(3, DEADLINE)
        .await;
    assert_eq!(c.events[0]["createdAt"], "2026-12-07T13:00:01Z");
    assert!(lt.stderr().contains("journalctl stopped; starting it again"), "{}", lt.stderr());
    // At shutdown the running journalctl is killed.
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    lt.sigterm();
    assert!(lt.wait_exit().await.success(), "{}", lt.stderr());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        // Gone, or a zombie waiting for whoever inherited it to reap it.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => break,
            Ok(stat) if stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')) => break,
            Ok(_) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "journalctl {pid} still runs after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The README's config snippet for Postfix and Dovecot hosts is a valid config.
#[test]
fn the_readme_source_snippet_is_a_valid_config() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rest = &readme[readme.find("# Postfix and Dovecot sources").expect("the snippet in README")..];
    let toml: String =
        rest[..rest.find("```").unwrap()].lines().map(|l| format!("{}\n", l.trim_start())).collect();
    let c = livetap::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    c.validate().unwrap();
    assert_eq!(c.source.len(), 2, "{toml}");
}

#[tokio::test]
async fn tcp_syslog_connections_past_the_cap_are_closed() {
    use tokio::io::AsyncReadExt;
    let lt = Livetap::start(&["--syslog-listen", "tcp://127.0.0.1:0"]);
    let tcp = banner_addr(&lt, "tcp");
    let mut sse = subscribe(lt.addr).await;
    // 64 connections are served: each sends a line that arrives.
    let mut open = Vec::new();
    for n in 0..64 {
        let mut c = tokio::net::TcpStream::connect(&tcp).await.unwrap();
        c.write_all(format!("<22>Dec  7 13:00:00 mx postfix/smtpd[1]: seq={n} held open\n").as_bytes())
            .await
            .unwrap();
        open.push(c);
    }
    let mut got = Vec::new();
    let c = sse.collect(64, DEADLINE).await;
    got.extend(c.events.iter().map(|e| e["data"]["details"].as_str().unwrap_or("").to_string()));
    assert_eq!(got.len(), 64, "{got:?}");
    // The next is closed at once, unread.
    let mut extra = tokio::net::TcpStream::connect(&tcp).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(DEADLINE, extra.read(&mut buf)).await.expect("closed by livetap");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // Once one closes, a new connection is served again (retried until the place is free:
    // the closed connection's stream ends on its own schedule).
    drop(open.pop());
    let mut attempts = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    'served: loop {
        let mut c = tokio::net::TcpStream::connect(&tcp).await.unwrap();
        let _ = c.write_all(b"<22>Dec  7 13:00:00 mx postfix/smtpd[1]: after a place was freed\n").await;
        attempts.push(c);
        let more = sse.collect_until(Duration::from_millis(500), |c| !c.events.is_empty()).await;
        for e in &more.events {
            if e["data"]["details"] == "after a place was freed" {
                break 'served;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection was served after one closed");
    }
}
