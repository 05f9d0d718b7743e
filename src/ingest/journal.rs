//! The journal source: the systemd journal's mail entries, read from `journalctl --follow
//! --output=json` run as a child process (`--journal`, `[[source]] kind = "journal"`).
//!
//! **Which entries.** Postfix and Dovecot log through syslog with the `mail` facility by
//! default (`syslog_facility` in both), which the journal keeps as `SYSLOG_FACILITY=2`; that
//! match selects them. journalctl cannot match identifiers by pattern, and Postfix's are open
//! ended (`postfix/smtpd`, `postfix/submission/smtpd`, `postfix-out/qmgr` for a second
//! instance), so the facility is the one filter that takes them all. Other programs logging to
//! the mail facility (OpenDKIM, SpamAssassin) come too, as generic events.
//!
//! **Where it starts.** At the end (`--lines=0`) by default; with `from-start` at the oldest
//! entry the journal keeps (`--no-tail`), with `since` at that time. It reads `--output=json`
//! with only the fields a record needs (`--output-fields`); `__CURSOR` comes with every entry.
//!
//! **Restarts.** When journalctl exits (it is killed, the journal is rotated under it) it is
//! started again after a pause that doubles from one second to a minute, and resets once a
//! run lasted a minute. The cursor of the last entry read is passed back
//! (`--after-cursor`), so an entry is neither lost nor read twice across a restart.
//!
//! **Start-up.** Before anything runs, `journalctl --lines=0` is probed, so a missing
//! journalctl, a host without a journal and a user who may not read the system journal are
//! start-up errors saying what to do. At shutdown journalctl is killed.

use super::logsource::{current_user, JournalConfig, LogReporter, SourceError, WarnLimiter};
use super::maillog::format::MailLog;
use super::stage::{run_stream, StreamEnd};
use super::Source;
use crate::hub::Hub;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, ReadBuf};
use tokio::process::Command;

/// The journal match for the mail facility.
const MAIL_FACILITY: &str = "SYSLOG_FACILITY=2";
/// The fields a record is made of (`frame::parse_journal`); journalctl adds `__CURSOR` and the
/// timestamps itself.
const FIELDS: &str = "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_COMM,_HOSTNAME";
/// How long the start-up probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the first run of journalctl starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// After the newest entry (`--lines=0`).
    End,
    /// At the oldest entry kept (`--no-tail`).
    Oldest,
    /// At a time (`--since`).
    Since(String),
}

/// The journal, followed through journalctl.
pub struct JournalSource {
    program: String,
    base: Vec<String>,
    start: Start,
    format: MailLog,
}

impl JournalSource {
    /// Probes journalctl (or the configured stand-in) and returns the source, or the start-up
    /// error saying what to do.
    pub async fn start(config: &JournalConfig, format: MailLog) -> Result<JournalSource, SourceError> {
        let (program, base) = match config.command.as_deref() {
            Some([program, base @ ..]) => (program.clone(), base.to_vec()),
            _ => ("journalctl".to_string(), Vec::new()),
        };
        let start = match (&config.since, config.from_start) {
            (Some(s), _) => Start::Since(s.clone()),
            (None, true) => Start::Oldest,
            (None, false) => Start::End,
        };
        probe(&program, &base).await?;
        Ok(JournalSource { program, base, start, format })
    }

    /// What it reads, for the banner.
    pub fn describe(&self) -> String {
        let from = match &self.start {
            Start::End => "from its end".to_string(),
            Start::Oldest => "from its oldest entry".to_string(),
            Start::Since(s) => format!("since {s}"),
        };
        format!("journal (mail facility, through {}, {from})", self.program)
    }
}

/// The arguments of one run of journalctl: after `cursor` when there is one, else from
/// `start`.
fn follow_args(start: &Start, cursor: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["--follow", "--output=json", "--all", FIELDS].map(String::from).to_vec();
    match (cursor, start) {
        (Some(c), _) => args.extend(["--no-tail".to_string(), format!("--after-cursor={c}")]),
        (None, Start::End) => args.push("--lines=0".into()),
        (None, Start::Oldest) => args.push("--no-tail".into()),
        (None, Start::Since(s)) => args.extend(["--no-tail".to_string(), format!("--since={s}")]),
    }
    args.push(MAIL_FACILITY.into());
    args
}

/// Runs `journalctl --lines=0` once and reads what it says about the journal.
async fn probe(program: &str, base: &[String]) -> Result<(), SourceError> {
    let child = Command::new(program)
        .args(base)
        .args(["--no-pager", "--lines=0", MAIL_FACILITY])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SourceError::JournalMissing { program: program.to_string(), source })?;
    let out = match tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(SourceError::JournalFailed { status: "not waited for".into(), detail: e.to_string() })
        }
        Err(_) => {
            return Err(SourceError::JournalFailed {
                status: "no answer".into(),
                detail: format!("`{program} --lines=0` did not finish within {} s", PROBE_TIMEOUT.as_secs()),
            })
        }
    };
    classify(out.status.success(), &out.status.to_string(), &String::from_utf8_lossy(&out.stderr))
}

/// What journalctl's exit and its standard error say about the journal.
fn classify(success: bool, status: &str, stderr: &str) -> Result<(), SourceError> {
    let line = |needle: &str| stderr.lines().find(|l| l.contains(needle)).map(|l| l.trim().to_string());
    if let Some(detail) = line("No journal files were found") {
        return Err(SourceError::NoJournal { detail });
    }
    if let Some(detail) = line("insufficient permissions").or_else(|| line("not seeing messages from")) {
        return Err(SourceError::JournalDenied { user: current_user(), detail });
    }
    if !success {
        let detail = stderr.trim();
        let detail = if detail.is_empty() { "(nothing on standard error)" } else { detail };
        return Err(SourceError::JournalFailed { status: status.to_string(), detail: detail.to_string() });
    }
    Ok(())
}

/// The pause before restarting journalctl: one second, doubling to a minute, back to one
/// second after a run that lasted a minute.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_FIRST }
    }

    /// The pause after a run that lasted `ran`.
    fn after(&mut self, ran: Duration) -> Duration {
        if ran >= BACKOFF_MAX {
            self.next = BACKOFF_FIRST;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        pause
    }
}

impl Source for JournalSource {
    fn name(&self) -> &'static str {
        "journal"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut cursor: Option<String> = None;
            let mut backoff = Backoff::new();
            let mut shutdown = hub.shutdown_signal();
            let mut spawn_warn = WarnLimiter::new(Duration::from_secs(300));
            loop {
                let started = Instant::now();
                let args = follow_args(&self.start, cursor.as_deref());
                let spawned = Command::new(&self.program)
                    .args(&self.base)
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn();
                match spawned {
                    Err(e) => {
                        if let Some(held_back) = spawn_warn.allow(Instant::now()) {
                            tracing::warn!(program = %self.program, error = %e, held_back, "cannot start journalctl");
                        }
                    }
                    Ok(mut child) => {
                        if let Some(stderr) = child.stderr.take() {
                            tokio::spawn(relay_stderr(stderr));
                        }
                        let Some(stdout) = child.stdout.take() else { return };
                        let mut reader = CursorTracker::new(stdout, cursor.take());
                        let end = run_stream(
                            hub.clone(),
                            &mut reader,
                            self.format.clone(),
                            LogReporter::new("journal"),
                        )
                        .await;
                        cursor = reader.cursor;
                        if matches!(end, StreamEnd::Shutdown) {
                            let _ = child.kill().await;
                            return;
                        }
                        if let StreamEnd::ReadFailed(e) = &end {
                            tracing::warn!(error = %e, "reading journalctl's output failed");
                        }
                        // Its output ended: it is exiting, or is made to.
                        let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                            Ok(Ok(s)) => s.to_string(),
                            _ => {
                                let _ = child.kill().await;
                                "killed: it closed its output but did not exit".to_string()
                            }
                        };
                        tracing::warn!(%status, "journalctl stopped; starting it again");
                    }
                }
                let pause = backoff.after(started.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}

/// Logs what journalctl says on its standard error, a line at a time, rate-limited.
async fn relay_stderr(stderr: tokio::process::ChildStderr) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut limit = WarnLimiter::new(Duration::from_secs(10));
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(held_back) = limit.allow(Instant::now()) {
            tracing::warn!(held_back, "journalctl: {line}");
        }
    }
}

/// How much of each line's start is kept to find its cursor: journalctl writes `__CURSOR`
/// first, and a cursor is about 140 bytes.
const HEAD_BYTES: usize = 512;

/// Passes journalctl's output through unchanged, noting the `__CURSOR` of the last complete
/// line, where the next run starts.
struct CursorTracker<R> {
    inner: R,
    /// The start of the line being read.
    head: Vec<u8>,
    /// The cursor of the last complete line that had one.
    cursor: Option<String>,
}

impl<R> CursorTracker<R> {
    fn new(inner: R, cursor: Option<String>) -> CursorTracker<R> {
        CursorTracker { inner, head: Vec::with_capacity(HEAD_BYTES), cursor }
    }

    /// Looks at bytes that were just read.
    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (part, ended) = match memchr::memchr(b'\n', data) {
                Some(i) => (&data[..i], Some(i + 1)),
                None => (data, None),
            };
            let room = HEAD_BYTES - self.head.len();
            self.head.extend_from_slice(&part[..part.len().min(room)]);
            match ended {
                Some(next) => {
                    if let Some(c) = cursor_of(&self.head) {
                        let kept = self.cursor.get_or_insert_with(String::new);
                        kept.clear();
                        kept.push_str(c);
                    }
                    self.head.clear();
                    data = &data[next..];
                }
                None => return,
            }
        }
    }
}

/// The `__CURSOR` value at the start of a journal JSON line.
fn cursor_of(head: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"__CURSOR\":\"";
    let at = memchr::memmem::find(head, KEY)? + KEY.len();
    let len = memchr::memchr2(b'"', b'\\', &head[at..])?;
    (head[at + len] == b'"').then(|| std::str::from_utf8(&head[at..at + len]).ok()).flatten()
}

impl<R: AsyncRead + Unpin> AsyncRead for CursorTracker<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let filled = buf.filled();
            this.scan(&filled[before..]);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn arguments_of_each_run() {
        let tail = |a: Vec<String>| a[4..].to_vec();
        assert_eq!(tail(follow_args(&Start::End, None)), ["--lines=0", MAIL_FACILITY]);
        assert_eq!(tail(follow_args(&Start::Oldest, None)), ["--no-tail", MAIL_FACILITY]);
        assert_eq!(
            tail(follow_args(&Start::Since("today".into()), None)),
            ["--no-tail", "--since=today", MAIL_FACILITY]
        );
        // A restart continues after the last entry read, whatever the first run's start.
        for start in [Start::End, Start::Oldest, Start::Since("-1h".into())] {
            assert_eq!(
                tail(follow_args(&start, Some("s=1;i=2"))),
                ["--no-tail", "--after-cursor=s=1;i=2", MAIL_FACILITY]
            );
        }
        assert_eq!(follow_args(&Start::End, None)[..4], ["--follow", "--output=json", "--all", FIELDS]);
    }

    #[test]
    fn restart_pauses_double_and_reset_after_a_long_run() {
        let mut b = Backoff::new();
        let quick = Duration::from_millis(10);
        let pauses: Vec<u64> = (0..8).map(|_| b.after(quick).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.after(Duration::from_secs(61)).as_secs(), 1);
        assert_eq!(b.after(quick).as_secs(), 2);
    }

    #[test]
    fn what_journalctl_says_at_start() {
        // The real messages of systemd 252's journalctl.
        let e = classify(true, "exit status: 0", "No journal files were found.\n").unwrap_err().to_string();
        assert!(e.contains("there is no systemd journal") && e.contains("--postfix-log"), "{e}");
        let e = classify(
            true,
            "exit status: 0",
            "No journal files were opened due to insufficient permissions.\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("usermod -aG systemd-journal") && e.contains("(or adm)"), "{e}");
        let hint = "Hint: You are currently not seeing messages from other users and the system.\n      \
                    Users in groups 'adm', 'systemd-journal' can see all messages.\n";
        let e = classify(true, "exit status: 0", hint).unwrap_err().to_string();
        assert!(e.contains(&format!("as user {}", current_user())) && e.contains("systemd-journal"), "{e}");
        let e = classify(false, "exit status: 1", "Failed to add match 'X': Invalid argument\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status: 1") && e.contains("Invalid argument"), "{e}");
        assert!(classify(false, "exit status: 1", "")
            .unwrap_err()
            .to_string()
            .contains("nothing on standard error"));
        assert!(classify(true, "exit status: 0", "").is_ok());
    }

    #[tokio::test]
    async fn a_missing_journalctl_is_a_start_up_error() {
        let config = JournalConfig {
            command: Some(vec!["/nonexistent/journalctl".into()]),
            ..JournalConfig::default()
        };
        let format = MailLog::new(crate::ingest::maillog::format::Framing::Journal, 0);
        let e = JournalSource::start(&config, format).await.err().unwrap().to_string();
        assert!(e.contains("needs journalctl") && e.contains("/nonexistent/journalctl"), "{e}");
    }

    #[tokio::test]
    async fn the_cursor_of_the_last_complete_line_is_kept() {
        let text = concat!(
            "{\"__CURSOR\":\"s=a;i=1\",\"MESSAGE\":\"one\"}\n",
            "{\"MESSAGE\":\"no cursor\"}\n",
            "{\"__CURSOR\":\"s=a;i=3\",\"MESSAGE\":\"three\"}\n",
            "{\"__CURSOR\":\"s=a;i=4\",\"MESSAGE\":\"cut o",
        );
        for step in [1, 3, 17, 4096] {
            let mut r = CursorTracker::new(Chunks(text.as_bytes(), step), None);
            let mut out = Vec::new();
            let mut buf = vec![0u8; step];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, text.as_bytes());
            // The unfinished last line does not count: the next run reads it again.
            assert_eq!(r.cursor.as_deref(), Some("s=a;i=3"), "reads of {step}");
        }
        assert_eq!(cursor_of(b"{\"__CURSOR\":\"x\\\"y\"}"), None);
        assert_eq!(cursor_of(b"{\"__CURSOR\":\"unterminated"), None);
    }

    /// A reader giving `.1` bytes at a time.
    struct Chunks<'a>(&'a [u8], usize);

    impl AsyncRead for Chunks<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.1.min(self.0.len()).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Poll::Ready(Ok(()))
        }
    }
}
