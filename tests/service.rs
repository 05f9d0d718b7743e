//! livetap as a service, with the real binary: the `sd_notify` messages it sends to a socket
//! the test binds (readiness, watchdog keep-alives, reload, stopping; path and abstract
//! sockets), its logs (`--log-format json`, the journald text form, the start-up line), the
//! packaged default config (`packaging/livetap.toml`, and every example in it), the manual
//! pages and completions it writes, and `systemd-analyze verify` on the packaged unit.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A livetap process started by this file's tests, killed on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` (stdout piped, stderr piped unless the caller set it) and waits for the
    /// banner's `listening on` address.
    fn spawn(mut cmd: Command, pipe_stderr: bool) -> Proc {
        if pipe_stderr {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn livetap");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let log = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no banner; stderr: {}", stderr.lock().unwrap());
            }
        };
        Proc { child, addr, stderr }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
    }

    /// Waits (with the deadline) for the process to exit successfully.
    fn wait_success(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "exit status {st:?}; stderr: {}", self.stderr());
                return;
            }
            assert!(Instant::now() < deadline, "livetap did not exit; stderr: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.stderr().contains(needle) {
            assert!(Instant::now() < deadline, "no `{needle}` on stderr: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Receives notification datagrams until one satisfies `pred`, returning every message read
/// (the last one matched). Fails at the deadline.
fn recv_until(sock: &UnixDatagram, what: &str, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what}; messages so far: {seen:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = pred(&msg);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("no {what} before the deadline; messages so far: {seen:?}")
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// The `KEY=value` assignments of one message.
fn has(msg: &str, assignment: &str) -> bool {
    msg.lines().any(|l| l == assignment)
}

#[test]
fn sd_notify_ready_watchdog_reload_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut cmd = livetap_command(1);
    // 100 ms: a keep-alive every 50 ms.
    cmd.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "100000").env_remove("WATCHDOG_PID");
    cmd.env_remove("JOURNAL_STREAM");
    let mut lt = Proc::spawn(cmd, true);

    // READY=1 comes first, with the address in its status.
    let first = recv_until(&sock, "READY=1", |m| has(m, "READY=1"));
    assert_eq!(first.len(), 1, "READY=1 was not the first message: {first:?}");
    assert!(first[0].contains(&format!("STATUS=listening on http://{}", lt.addr)), "{first:?}");

    // Keep-alives, more than one.
    let mut watchdogs = 0;
    recv_until(&sock, "two WATCHDOG=1", |m| {
        watchdogs += usize::from(m == "WATCHDOG=1");
        watchdogs >= 2
    });

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
    lt.signal(libc::SIGHUP);
    let reload = recv_until(&sock, "RELOADING=1", |m| has(m, "RELOADING=1"));
    let msg = reload.last().unwrap();
    let usec = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {msg:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{msg:?}");
    let after = recv_until(&sock, "READY=1 after the reload", |m| has(m, "READY=1"));
    assert!(after.last().unwrap().contains("STATUS=reloaded"), "{after:?}");

    // The pipeline stays alive after the reload: keep-alives go on.
    recv_until(&sock, "WATCHDOG=1 after the reload", |m| m == "WATCHDOG=1");

    lt.signal(libc::SIGTERM);
    recv_until(&sock, "STOPPING=1", |m| has(m, "STOPPING=1"));
    lt.wait_success();
    // The reload and the shutdown are logged even at the default `warn`.
    let err = lt.stderr();
    assert!(err.contains("reloaded"), "{err}");
    assert!(err.contains("shutting down"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn sd_notify_reaches_an_abstract_socket_and_no_watchdog_without_watchdog_usec() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("livetap-service-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let mut cmd = livetap_command(1);
    cmd.env("NOTIFY_SOCKET", format!("@{name}")).env_remove("WATCHDOG_USEC").env_remove("JOURNAL_STREAM");
    let mut lt = Proc::spawn(cmd, true);
    recv_until(&sock, "READY=1", |m| has(m, "READY=1"));
    lt.signal(libc::SIGTERM);
    // Without WATCHDOG_USEC no keep-alive is sent: the next message is STOPPING=1.
    let rest = recv_until(&sock, "STOPPING=1", |m| has(m, "STOPPING=1"));
    assert_eq!(rest.len(), 1, "messages between READY=1 and STOPPING=1: {rest:?}");
    lt.wait_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_start_up_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("in.sock");
    let mut cmd = livetap_command(1);
    cmd.args(["--log-format", "json", "--log-level", "info", "--ingest-socket"]).arg(&sock);
    cmd.args(["--syslog-listen", "udp://127.0.0.1:0"]).env_remove("JOURNAL_STREAM");
    let mut lt = Proc::spawn(cmd, true);
    lt.wait_stderr("livetap started");
    assert_eq!(request(lt.addr, "GET", "/healthz", &[], b"").await.status, 200);
    lt.signal(libc::SIGTERM);
    lt.wait_success();

    let err = lt.stderr();
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{err}")))
        .collect();
    assert!(lines.len() >= 3, "{err}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(), "{l}");
    }
    let started: Vec<&Value> = lines.iter().filter(|l| l["message"] == "livetap started").collect();
    assert_eq!(started.len(), 1, "one start-up line: {err}");
    let s = started[0];
    assert_eq!(s["level"], "INFO");
    assert_eq!(s["target"], "livetap::service");
    assert_eq!(s["http"], format!("http://{}", lt.addr));
    assert_eq!(s["ndjson_socket"], sock.display().to_string());
    let syslog = s["syslog"].as_str().unwrap();
    assert!(syslog.contains("udp://127.0.0.1:"), "{s}");
    assert!(s["sources"].as_str().unwrap().contains("ndjson socket"), "{s}");
    assert_eq!(s["sinks"], "[\"none\"]");
    assert_eq!(s["webhooks"], "[\"none\"]");
    assert!(lines.iter().any(|l| l["message"].as_str().unwrap().contains("shutting down")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_text_lines_carry_a_priority_and_no_timestamp_and_the_token_is_not_printed() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let data = dir.path().join("data");
    // As systemd starts it: stdout and stderr are one stream to journald, named by
    // JOURNAL_STREAM. The default level (warn), where the start-up line must show anyway, and
    // no configured token: one is generated and kept in the data directory, and must not
    // reach the journal.
    let mut child = Command::new(env!("CARGO_BIN_EXE_livetap"))
        .args(["--listen", "127.0.0.1:0", "--matcher-threads", "1", "--data-dir"])
        .arg(&data)
        .env_remove("LIVETAP_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let addr: SocketAddr = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("livetap started") {
            if let Some(rest) = text.split("listening on http://").nth(1) {
                break rest.lines().next().unwrap().trim().parse().unwrap();
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("no banner and start-up line: {text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = request(addr, "GET", "/healthz", &[], b"").await.status;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    assert_eq!(status, 200);
    assert!(exit.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let started = text.lines().find(|l| l.contains("livetap started")).unwrap();
    // `<6>` is info; then the level and the target, no timestamp before them.
    assert!(started.starts_with("<6> INFO livetap::service: livetap started"), "{started:?}");
    assert!(started.contains(&format!("http=http://{addr}")), "{started:?}");
    assert!(text.lines().any(|l| l.starts_with("<6> INFO livetap::service: shutting down")), "{text}");
    assert!(!text.contains('\x1b'), "colours under journald: {text:?}");
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    assert!(!text.contains(token.trim()), "the admin token reached the journal: {text}");
    assert!(text.contains("admin-token; not printed to the journal"), "{text}");
}

/// The repository's `packaging/` directory.
fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_config_runs_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = packaging().join("livetap.toml");
    let sock = dir.path().join("ingest.sock");
    let mut cmd = livetap_command(1);
    // The packaged paths (/var/lib/livetap, /run/livetap) belong to the package; the flags
    // move them into the test's directory and everything else is the file's.
    cmd.arg("--config").arg(&config).arg("--data-dir").arg(dir.path()).arg("--ingest-socket").arg(&sock);
    cmd.env_remove("JOURNAL_STREAM");
    let mut lt = Proc::spawn(cmd, true);
    assert_eq!(request(lt.addr, "GET", "/healthz", &[], b"").await.status, 200);
    assert!(sock.exists());
    lt.wait_stderr("livetap started");
    lt.signal(libc::SIGTERM);
    lt.wait_success();
}

#[test]
fn every_example_in_the_packaged_config_is_valid_when_uncommented() {
    let text = std::fs::read_to_string(packaging().join("livetap.toml")).unwrap();
    // Settings are commented out as `# key = …` or `# [table]` directly under a prose
    // comment; prose lines never look like an assignment or a table header.
    let looks_like_setting = |s: &str| {
        let s = s.trim_start();
        s.starts_with('[')
            || s.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
    };
    let mut uncommented = String::new();
    let mut examples = 0;
    for line in text.lines() {
        match line.strip_prefix("# ") {
            Some(rest) if looks_like_setting(rest) => {
                examples += 1;
                uncommented.push_str(rest);
            }
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    assert!(examples >= 10, "the examples were not found ({examples}):\n{uncommented}");
    let config = livetap::Config::from_toml(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    config.validate().unwrap();
    assert_eq!(config.source.len(), 2);
    assert_eq!(config.principal.len(), 1);
    assert_eq!(config.sink.len(), 1);
    assert!(config.tls.is_some() && config.admin_token.is_some() && config.webhook_key.is_some());
    // As shipped (all examples commented out) it is valid too.
    let shipped = livetap::Config::from_toml(&text).unwrap();
    shipped.validate().unwrap();
    assert_eq!(shipped.data_dir.as_deref(), Some(Path::new("/var/lib/livetap")));
}

#[test]
fn man_pages_and_completions_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_livetap")).arg("man").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["livetap.1", "livetap-history.1", "livetap-history-traces.1", "livetap-hash-password.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page} is not a manual page");
    }
    let top = std::fs::read_to_string(dir.path().join("livetap.1")).unwrap();
    assert!(top.contains("log\\-format"), "livetap.1 does not document --log-format");
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.lines().any(|l| l.ends_with("livetap.1")), "{listed}");
    for (shell, needle) in
        [("bash", "_livetap()"), ("zsh", "#compdef livetap"), ("fish", "complete -c livetap")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_livetap")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(needle), "{shell} completion lacks {needle:?}");
        assert!(script.contains("completions"), "{shell} completion does not know the subcommands");
    }
}

/// `systemd-analyze`, or `None` when it is missing outside CI (with `CI` set, a failure).
fn systemd_analyze() -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze is missing (apt-get install systemd)");
        eprintln!("systemd-analyze is missing: the unit file is not verified (apt-get install systemd)");
    }
    found
}

#[test]
fn the_unit_file_verifies_and_its_exposure_is_at_most_2() {
    let Some(analyze) = systemd_analyze() else { return };
    let unit = std::fs::read_to_string(packaging().join("livetap.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/livetap --config /etc/livetap/livetap.toml"));
    // `verify` checks that ExecStart's binary exists: the unit is checked with the path of the
    // binary this test built. Its manual page is not installed here (`--man=no`); the package
    // test verifies the installed unit with it.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("livetap.service");
    std::fs::write(&copy, unit.replace("/usr/bin/livetap", env!("CARGO_BIN_EXE_livetap"))).unwrap();
    let out = Command::new(&analyze).args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let score = exposure(&analyze, &copy);
    assert!(score <= 2.0, "exposure {score} above 2.0");
}

/// The overall exposure `systemd-analyze security --offline=true` gives `unit` (no running
/// systemd needed).
fn exposure(analyze: &Path, unit: &Path) -> f64 {
    let out =
        Command::new(analyze).args(["security", "--offline=true", "--no-pager"]).arg(unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let value = line.split(": ").nth(1).and_then(|v| v.split_whitespace().next()).unwrap();
    value.parse().unwrap_or_else(|_| panic!("bad exposure line {line:?}"))
}
