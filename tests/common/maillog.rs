//! The real Postfix and Dovecot of the mail-log tests (issue 24): `MailHost` starts a throwaway
//! pair with `tests/maillog/daemons.sh` (loopback only, its own directory, no systemd), drives
//! the traffic with `tests/maillog/traffic.py` and stops both daemons when dropped;
//! `ExporterCapture` records what Dovecot's event exporter posts, standing in for livetap.
//!
//! The daemons need root (both masters start as root and drop privileges), Debian's `postfix`,
//! `dovecot-imapd`, `dovecot-lmtpd`, `dovecot-pop3d` and `python3`. Without them a test gets
//! an `Unavailable` error it turns into an early return, except in CI (`CI` set), where CI
//! installs them and their absence is a broken setup: there `MailHost::start` panics.
//!
//! Every wait has a deadline; the daemons' own readiness is checked by `daemons.sh`.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Deadline for `daemons.sh start`/`stop` and for the traffic script (the two failed logins
/// alone take Dovecot's 2 s failure delay each).
pub const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);

/// Deadline for a line to show up in a daemon's log or a record in the exporter capture.
pub const LOG_DEADLINE: Duration = Duration::from_secs(20);

/// The directory of the shell and Python scripts.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("maillog")
}

/// Why the real mail daemons cannot run on this machine.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (the mail-log tests need root, python3 and Debian's postfix, dovecot-imapd, dovecot-lmtpd, \
             dovecot-pop3d: apt-get install postfix dovecot-imapd dovecot-lmtpd dovecot-pop3d)",
            self.0
        )
    }
}

/// What is missing for the real daemons, if anything.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let files = [
        ("/usr/sbin/postfix", "postfix"),
        ("/usr/lib/postfix/sbin/postlogd", "postfix >= 3.4 (postlogd)"),
        ("/usr/sbin/dovecot", "dovecot-core"),
        ("/usr/lib/dovecot/imap", "dovecot-imapd"),
        ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
        ("/usr/lib/dovecot/pop3", "dovecot-pop3d"),
    ];
    for (path, package) in files {
        if !Path::new(path).exists() {
            return Some(format!("{package} is not installed ({path} is missing)"));
        }
    }
    match Command::new("python3").arg("-c").arg("pass").stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("python3 is not available".into()),
    }
}

/// `Ok` when the real daemons can run here. Outside CI a missing piece is an `Err` the test
/// turns into an early return (with an `eprintln!`); in CI it panics, since CI installs them.
pub fn available() -> Result<(), Unavailable> {
    match missing() {
        None => Ok(()),
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("the mail-log tests cannot run in CI: {}", Unavailable(why))
        }
        Some(why) => Err(Unavailable(why)),
    }
}

/// What a finished child process printed.
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Runs `cmd` to completion with piped output, killing it (and panicking) after `deadline`.
pub fn run_with_deadline(mut cmd: Command, what: &str, deadline: Duration) -> Finished {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| {
            panic!("cannot run {what}: {e}");
        });
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for a child") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!("{what} did not finish within {deadline:?}; its stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

/// Reads a pipe to its end on a thread of its own, so neither pipe of a child can fill up.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A running throwaway Postfix and Dovecot pair; both are stopped when it is dropped.
pub struct MailHost {
    /// Every `KEY=VALUE` line `daemons.sh start` printed (SMTP_PORT, IMAP_PORT, POSTFIX_LOG, ...).
    pub vars: BTreeMap<String, String>,
    /// Postfix's smtpd, on 127.0.0.1.
    pub smtp_port: u16,
    /// Postfix's postscreen (in front of another smtpd), on 127.0.0.1.
    pub postscreen_port: u16,
    /// Dovecot's IMAP, on 127.0.0.1.
    pub imap_port: u16,
    /// Dovecot's POP3, on 127.0.0.1.
    pub pop3_port: u16,
    /// Postfix's log file (written by postlogd).
    pub postfix_log: PathBuf,
    /// Dovecot's log file (log_path and info_log_path).
    pub dovecot_log: PathBuf,
    /// The one Dovecot user, e.g. `alice@livetap.test`, who receives the local mail.
    pub user: String,
    /// Its password.
    pub password: String,
    /// False once `stop` ran, so dropping does not stop twice.
    running: bool,
    /// The directory everything lives in; removed after the daemons are stopped (fields drop
    /// after `Drop::drop` ran).
    dir: tempfile::TempDir,
}

impl MailHost {
    /// Starts the pair in a fresh directory and waits until both listen. With `livetap_url`,
    /// Dovecot's event exporter posts JSON events to it. Returns `Err` only when the software
    /// or root is missing outside CI; in CI that panics, and any other failure always panics
    /// (with both daemons' log tails, which `daemons.sh` prints).
    pub fn start(livetap_url: Option<&str>) -> Result<MailHost, Unavailable> {
        available()?;
        Ok(MailHost::start_with(livetap_url, &[]))
    }

    /// `start` with extra environment for `daemons.sh` (its knobs: MAILLOG_QUEUE_LIFETIME,
    /// MAILLOG_RETRY, MAILLOG_GREET_WAIT). Panics on any failure; call `available` first.
    pub fn start_with(livetap_url: Option<&str>, env: &[(&str, &str)]) -> MailHost {
        MailHost::start_in(MailHost::fresh_dir(), livetap_url, env)
    }

    /// A fresh directory for [`MailHost::start_in`]. Its log files will be
    /// [`MailHost::postfix_log_in`] and [`MailHost::dovecot_log_in`], so a reader can be pointed
    /// at them before the daemons start (and livetap's Dovecot exporter URL is known only once
    /// livetap runs).
    pub fn fresh_dir() -> tempfile::TempDir {
        // Short, fixed parent: Unix socket paths (Dovecot's base_dir holds them) are limited to
        // 107 bytes, and TMPDIR may be long.
        tempfile::Builder::new().prefix("livetap-mail.").tempdir_in("/tmp").expect("a temporary directory")
    }

    /// Where Postfix's log will be in a directory made by [`MailHost::fresh_dir`].
    pub fn postfix_log_in(dir: &Path) -> PathBuf {
        dir.join("postfix.log")
    }

    /// Where Dovecot's log will be in a directory made by [`MailHost::fresh_dir`].
    pub fn dovecot_log_in(dir: &Path) -> PathBuf {
        dir.join("dovecot.log")
    }

    /// `start_with` in a directory the caller made with [`MailHost::fresh_dir`] (removed when
    /// the host is dropped). Panics on any failure; call `available` first.
    pub fn start_in(dir: tempfile::TempDir, livetap_url: Option<&str>, env: &[(&str, &str)]) -> MailHost {
        let mut cmd = Command::new("bash");
        cmd.arg(scripts_dir().join("daemons.sh")).arg("start").arg(dir.path());
        if let Some(url) = livetap_url {
            cmd.arg(url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let done = run_with_deadline(cmd, "daemons.sh start", SCRIPT_DEADLINE);
        let vars: BTreeMap<String, String> = done
            .stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // From here on, dropping `host` stops whatever did start.
        let host_vars = vars.clone();
        let get = |k: &str| host_vars.get(k).cloned().unwrap_or_default();
        let port = |k: &str| get(k).parse::<u16>().unwrap_or(0);
        let host = MailHost {
            smtp_port: port("SMTP_PORT"),
            postscreen_port: port("POSTSCREEN_PORT"),
            imap_port: port("IMAP_PORT"),
            pop3_port: port("POP3_PORT"),
            postfix_log: PathBuf::from(get("POSTFIX_LOG")),
            dovecot_log: PathBuf::from(get("DOVECOT_LOG")),
            user: get("USER"),
            password: get("PASSWORD"),
            vars,
            running: true,
            dir,
        };
        assert!(
            done.status.success(),
            "daemons.sh start failed ({}):\n{}\n{}",
            done.status,
            done.stdout,
            done.stderr
        );
        assert!(
            host.smtp_port != 0 && host.imap_port != 0 && !host.user.is_empty(),
            "daemons.sh start printed no ports or user:\n{}",
            done.stdout
        );
        host
    }

    /// The directory the pair lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pids of Postfix's and Dovecot's masters, as their pid files say now.
    pub fn master_pids(&self) -> Vec<u32> {
        let files =
            [self.dir().join("postfix-spool/pid/master.pid"), self.dir().join("dovecot-run/master.pid")];
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    /// Runs `traffic.py` with the base traffic (delivered, rejected, deferred, failed SASL,
    /// IMAP login right and wrong) and returns its JSON report. Panics if a step failed.
    pub fn traffic(&self) -> Value {
        self.run_traffic(false)
    }

    /// `traffic` plus the corpus's extras (relay denied, STARTTLS, authenticated submission,
    /// lost connection, bounce, non-SMTP command, postscreen, sendmail pickup, POP3 logins).
    pub fn traffic_extras(&self) -> Value {
        self.run_traffic(true)
    }

    /// `traffic` plus the named extras only (`non_smtp_command`, `bounced`, ...: the step names
    /// of `traffic.py`), run after the base traffic in the order given.
    pub fn traffic_with(&self, extras: &[&str]) -> Value {
        self.run_traffic_args(false, extras)
    }

    fn run_traffic(&self, extras: bool) -> Value {
        self.run_traffic_args(extras, &[])
    }

    fn run_traffic_args(&self, extras: bool, chosen: &[&str]) -> Value {
        let mut cmd = Command::new("python3");
        cmd.arg(scripts_dir().join("traffic.py"));
        if extras {
            cmd.arg("--extras");
        }
        for step in chosen {
            cmd.arg("--with").arg(step);
        }
        cmd.args(self.vars.iter().map(|(k, v)| format!("{k}={v}")));
        let done = run_with_deadline(cmd, "traffic.py", SCRIPT_DEADLINE);
        assert!(
            done.status.success(),
            "traffic.py failed ({}): {}\nits report so far: {}",
            done.status,
            done.stderr,
            done.stdout
        );
        serde_json::from_str(&done.stdout)
            .unwrap_or_else(|e| panic!("traffic.py printed no JSON ({e}): {}", done.stdout))
    }

    /// Polls Postfix's log until `pred` holds for its whole text, and returns that text;
    /// panics with the log after `LOG_DEADLINE`. Blocking: from async code, call it through
    /// `tokio::task::spawn_blocking` or keep the runtime multi-threaded.
    pub fn wait_postfix_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_file(&self.postfix_log, what, pred)
    }

    /// `wait_postfix_log` for Dovecot's log.
    pub fn wait_dovecot_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_file(&self.dovecot_log, what, pred)
    }

    /// Stops both daemons and waits until every process of theirs exited; panics if
    /// `daemons.sh stop` reports one that would not.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let done = self.run_stop();
        assert!(done.status.success(), "daemons.sh stop failed ({}): {}", done.status, done.stderr);
    }

    fn run_stop(&self) -> Finished {
        let mut cmd = Command::new("bash");
        cmd.arg(scripts_dir().join("daemons.sh")).arg("stop").arg(self.dir());
        run_with_deadline(cmd, "daemons.sh stop", SCRIPT_DEADLINE)
    }
}

impl Drop for MailHost {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let done = self.run_stop();
            if !done.status.success() {
                eprintln!("daemons.sh stop failed ({}): {}", done.status, done.stderr);
            }
        }
    }
}

/// True when some line of `text` contains every one of `parts`.
pub fn has_line(text: &str, parts: &[&str]) -> bool {
    text.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// Polls `path` until `pred` holds for its text; panics with the text after `LOG_DEADLINE`.
fn wait_file(path: &Path, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + LOG_DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < end,
            "no {what} in {} within {LOG_DEADLINE:?}; it holds:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A stand-in HTTP receiver for Dovecot's event exporter (`tests/maillog/capture.py`): every
/// POST is recorded with its path, headers and body. Killed when dropped.
pub struct ExporterCapture {
    /// The URL to give Dovecot (`transport_args`).
    pub url: String,
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl ExporterCapture {
    /// Starts the receiver on a free loopback port and waits until it listens (it prints its
    /// URL once bound). Panics if python3 is missing; call `available` first.
    pub fn start() -> ExporterCapture {
        let dir =
            tempfile::Builder::new().prefix("livetap-capture.").tempdir().expect("a temporary directory");
        let file = dir.path().join("exporter.jsonl");
        let mut child = Command::new("python3")
            .arg(scripts_dir().join("capture.py"))
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start capture.py");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("CAPTURE_URL=") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(LOG_DEADLINE) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("capture.py printed no URL within {LOG_DEADLINE:?}");
            }
        };
        ExporterCapture { url, child, file, _dir: dir }
    }

    /// Every POST so far: `{"path", "content_type", "headers", "body"}` objects.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Every POSTed body parsed as JSON (the exporter's events), in arrival order; a body that
    /// is not JSON becomes `Value::Null` so a test sees it.
    pub fn events(&self) -> Vec<Value> {
        self.records()
            .iter()
            .map(|r| r["body"].as_str().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null))
            .collect()
    }

    /// Polls `events` until `pred` holds; panics with what arrived after `LOG_DEADLINE`.
    pub fn wait_events(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + LOG_DEADLINE;
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            assert!(
                Instant::now() < end,
                "the exporter capture got no {what} within {LOG_DEADLINE:?}; it got:\n{}",
                events.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ExporterCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
