//! The followed-file source: a mail log read like `tail -F` (`--postfix-log`, `--dovecot-log`,
//! `[[source]] kind = "file"`).
//!
//! A follower task reads the file and writes its bytes into an in-process pipe; the other end
//! of the pipe goes through `stage::run_stream` with the mail-log format. The pipe never ends
//! while the source runs, so the stage holds a partial last line until its newline arrives: a
//! line is never cut in two across polls. When the stage cannot publish (the ring is full) the
//! pipe fills and the follower stops reading, so nothing is dropped.
//!
//! It starts at the end of the file (a line being written at that moment is skipped up to its
//! newline), or at its start with `from-start`, logging progress every few seconds. At the end
//! of the file it polls the path every 250 ms, which costs two `stat`s a poll and needs no
//! inotify (nor the `notify` crate): a mail log's lines arrive a few hundred a second at most,
//! and a quarter of a second is well within what a live view needs. A poll notices:
//!
//! - **rotation by rename** (a new inode at the path): the old file is read to its end, and
//!   read again until it has been quiet for a second, since a writer keeps writing to it until
//!   it reopens (rsyslog until logrotate's `postrotate` signal); then the new file is read from
//!   its start. Lines written to the old file after that are not read, as with `tail -F`;
//! - **truncation** (`copytruncate`: the file is shorter than what was read): reading starts
//!   again at offset 0. A file truncated and refilled past the old size within one poll cannot
//!   be told from one that grew;
//! - **a missing file**: it is waited for (with one warning) and read from its start when it
//!   appears.
//!
//! An unfinished last line of a file that is left behind (rotated or truncated) is ended with
//! a newline, so it is not glued to the first line of what follows.

use super::logsource::{unreadable, CatchingUp, LogReporter, SourceError, WarnLimiter};
use super::maillog::format::MailLog;
use super::stage::{run_stream, StreamEnd};
use super::Source;
use crate::hub::Hub;
use std::future::Future;
use std::io::SeekFrom;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, DuplexStream};

/// How often the end of the file and the path are looked at.
const POLL: Duration = Duration::from_millis(250);
/// How many polls a rotated-away file must stay quiet before the new file is read.
const ROTATE_QUIET_POLLS: u32 = 4;
/// The size of one read from the file.
const READ_BYTES: usize = 64 * 1024;
/// The pipe between the follower and the stage: what may be read ahead of parsing.
const PIPE_BYTES: usize = 256 * 1024;
/// How often progress is logged while reading from the start.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A file opened at start-up, and where reading begins.
#[derive(Debug)]
struct Opened {
    file: std::fs::File,
    id: (u64, u64),
    pos: u64,
    len: u64,
    /// Reading begins inside a line (one being written when livetap started): skip to its end.
    skip_partial: bool,
}

/// A log file followed like `tail -F`.
pub struct TailSource {
    path: PathBuf,
    from_start: bool,
    format: MailLog,
    catching_up: Arc<CatchingUp>,
    initial: Option<Opened>,
}

impl TailSource {
    /// Opens `path` now, so that a file livetap may not read is a start-up error naming the
    /// group to join. A file that does not exist yet is not an error: it is waited for.
    pub fn open(
        path: &Path,
        from_start: bool,
        format: MailLog,
        catching_up: Arc<CatchingUp>,
    ) -> Result<TailSource, SourceError> {
        let open_err = |source| SourceError::Open { path: path.to_owned(), source };
        let initial = match std::fs::File::open(path) {
            Ok(file) => {
                let meta = file.metadata().map_err(open_err)?;
                if meta.is_dir() {
                    return Err(SourceError::IsDirectory { path: path.to_owned() });
                }
                let len = meta.len();
                let (pos, skip_partial) = if from_start || !meta.is_file() {
                    (0, false)
                } else {
                    (len, len > 0 && last_byte(&file, len) != Some(b'\n'))
                };
                if from_start && len > 0 {
                    catching_up.start();
                }
                Some(Opened { file, id: (meta.dev(), meta.ino()), pos, len, skip_partial })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(unreadable(path)),
            Err(e) => return Err(open_err(e)),
        };
        Ok(TailSource { path: path.to_owned(), from_start, format, catching_up, initial })
    }

    /// What it reads, for the banner.
    pub fn describe(&self) -> String {
        let how = match (&self.initial, self.from_start) {
            (None, _) => "not there yet: read from its start when it appears",
            (Some(_), true) => "from its start",
            (Some(_), false) => "from its end",
        };
        format!("file {} ({how})", self.path.display())
    }
}

/// The last byte of a file of length `len`.
fn last_byte(file: &std::fs::File, len: u64) -> Option<u8> {
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, len - 1).ok().map(|()| b[0])
}

impl Source for TailSource {
    fn name(&self) -> &'static str {
        "mail-log file"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let TailSource { path, from_start, format, catching_up, initial } = *self;
            let label: Arc<str> = path.display().to_string().into();
            let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
            let follower = Follower::new(path, label.clone(), from_start, initial, catching_up).await;
            let follow = tokio::spawn(follower.run(writer, hub.shutdown_signal()));
            let end = run_stream(hub, reader, format, LogReporter::new(label.clone())).await;
            follow.abort();
            match end {
                StreamEnd::Eof | StreamEnd::Shutdown => {}
                StreamEnd::ReadFailed(e) => {
                    tracing::error!(file = %label, error = %e, "mail-log file source stopped")
                }
                StreamEnd::ParseFailed => {
                    tracing::error!(file = %label, "mail-log file source stopped: parsing failed")
                }
            }
        })
    }
}

/// Reading from the start: how far, and when progress was last logged.
struct Progress {
    total: u64,
    started: Instant,
    logged: Instant,
}

/// The follower task's state.
struct Follower {
    path: PathBuf,
    label: Arc<str>,
    file: Option<tokio::fs::File>,
    /// The followed file's device and inode.
    id: (u64, u64),
    /// The offset of the next read.
    pos: u64,
    skip_partial: bool,
    /// The last byte handed on was not a newline: a line is unfinished.
    open_line: bool,
    /// Polls the old file has stayed quiet since a new file appeared at the path.
    rotated_quiet: u32,
    progress: Option<Progress>,
    catching_up: Arc<CatchingUp>,
    warned_missing: bool,
    open_warn: WarnLimiter,
}

impl Follower {
    async fn new(
        path: PathBuf,
        label: Arc<str>,
        from_start: bool,
        initial: Option<Opened>,
        catching_up: Arc<CatchingUp>,
    ) -> Follower {
        let mut f = Follower {
            path,
            label,
            file: None,
            id: (0, 0),
            pos: 0,
            skip_partial: false,
            open_line: false,
            rotated_quiet: 0,
            progress: None,
            catching_up,
            warned_missing: false,
            open_warn: WarnLimiter::new(Duration::from_secs(60)),
        };
        if let Some(o) = initial {
            let mut file = tokio::fs::File::from_std(o.file);
            if file.seek(SeekFrom::Start(o.pos)).await.is_ok() {
                if from_start && o.len > 0 {
                    let now = Instant::now();
                    tracing::info!(file = %f.label, bytes = o.len, "reading the mail log from its start");
                    f.progress = Some(Progress { total: o.len, started: now, logged: now });
                }
                f.file = Some(file);
                f.id = o.id;
                f.pos = o.pos;
                f.skip_partial = o.skip_partial;
            } else if from_start && o.len > 0 {
                f.catching_up.done();
            }
        }
        f
    }

    /// Follows the file until shutdown, or until the stage stops reading the pipe.
    async fn run(mut self, mut out: DuplexStream, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut buf = vec![0u8; READ_BYTES];
        loop {
            if let Some(file) = self.file.as_mut() {
                match file.read(&mut buf).await {
                    Ok(0) => self.note_progress(true),
                    Ok(n) => {
                        self.pos += n as u64;
                        self.rotated_quiet = 0;
                        if !self.forward(&buf[..n], &mut out).await {
                            return;
                        }
                        self.note_progress(false);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(file = %self.label, error = %e, "reading the mail log failed; opening it again");
                        self.file = None;
                    }
                }
            }
            match self.look_at_path(&mut out).await {
                Some(true) => continue,
                Some(false) => {}
                None => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Hands read bytes to the stage, dropping the rest of a line that was being written when
    /// reading began. False when the stage is gone.
    async fn forward(&mut self, mut data: &[u8], out: &mut DuplexStream) -> bool {
        if self.skip_partial {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    data = &data[i + 1..];
                    self.skip_partial = false;
                }
                None => return true,
            }
        }
        if data.is_empty() {
            return true;
        }
        self.open_line = data.last() != Some(&b'\n');
        out.write_all(data).await.is_ok()
    }

    /// Ends an unfinished line of a file being left behind. False when the stage is gone.
    async fn end_line(&mut self, out: &mut DuplexStream) -> bool {
        if std::mem::take(&mut self.open_line) {
            return out.write_all(b"\n").await.is_ok();
        }
        true
    }

    /// Logs progress while reading from the start; `at_end` when a read found nothing more.
    fn note_progress(&mut self, at_end: bool) {
        let Some(p) = &mut self.progress else { return };
        if at_end || self.pos >= p.total {
            tracing::info!(
                file = %self.label,
                bytes = self.pos,
                secs = p.started.elapsed().as_secs_f64(),
                "read the mail log up to its end; following it"
            );
            self.progress = None;
            self.catching_up.done();
        } else if p.logged.elapsed() >= PROGRESS_EVERY {
            p.logged = Instant::now();
            let percent = (self.pos as f64 / p.total as f64 * 100.0).min(100.0);
            tracing::info!(file = %self.label, read = self.pos, size = p.total, "reading the mail log from its start: {percent:.0} %");
        }
    }

    /// At the end of what there is to read: looks at what the path names now. `Some(true)`
    /// when there is a (new) file to read at once, `Some(false)` to wait a poll, `None` when
    /// the stage is gone.
    async fn look_at_path(&mut self, out: &mut DuplexStream) -> Option<bool> {
        let meta = tokio::fs::metadata(&self.path).await;
        if self.file.is_none() {
            return match meta {
                Ok(_) => Some(self.open_new().await),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !std::mem::replace(&mut self.warned_missing, true) {
                        tracing::warn!(file = %self.label, "the mail log does not exist (yet); waiting for it to appear");
                    }
                    Some(false)
                }
                Err(e) => {
                    if let Some(held_back) = self.open_warn.allow(Instant::now()) {
                        tracing::warn!(file = %self.label, error = %e, held_back, "cannot look at the mail log");
                    }
                    Some(false)
                }
            };
        }
        // Renamed or removed, and nothing new at the path yet: the old file may still grow.
        let Ok(meta) = meta else { return Some(false) };
        if (meta.dev(), meta.ino()) != self.id {
            self.rotated_quiet += 1;
            if self.rotated_quiet < ROTATE_QUIET_POLLS {
                return Some(false);
            }
            let Some(file) = self.open_file().await else { return Some(false) };
            if !self.end_line(out).await {
                return None;
            }
            tracing::info!(file = %self.label, "the mail log was rotated; reading the new file from its start");
            self.take_file(file);
            return Some(true);
        }
        if meta.len() < self.pos {
            if !self.end_line(out).await {
                return None;
            }
            let Some(file) = self.file.as_mut() else { return Some(false) };
            if let Err(e) = file.seek(SeekFrom::Start(0)).await {
                tracing::warn!(file = %self.label, error = %e, "cannot read the truncated mail log again; opening it again");
                self.file = None;
                return Some(false);
            }
            tracing::info!(file = %self.label, "the mail log was truncated; reading it from its start");
            self.pos = 0;
            self.skip_partial = false;
            return Some(true);
        }
        Some(false)
    }

    /// Opens the file now at the path, to read it from its start. False if it cannot be.
    async fn open_new(&mut self) -> bool {
        match self.open_file().await {
            Some(file) => {
                if std::mem::take(&mut self.warned_missing) {
                    tracing::info!(file = %self.label, "the mail log appeared; reading it from its start");
                }
                self.take_file(file);
                true
            }
            None => false,
        }
    }

    /// The file at the path and its identity, or `None` (warned about, rate-limited) if it
    /// cannot be opened.
    async fn open_file(&mut self) -> Option<(tokio::fs::File, (u64, u64))> {
        let opened = match tokio::fs::File::open(&self.path).await {
            Ok(file) => file.metadata().await.map(|m| (file, (m.dev(), m.ino()))),
            Err(e) => Err(e),
        };
        match opened {
            Ok(o) => Some(o),
            Err(e) => {
                if let Some(held_back) = self.open_warn.allow(Instant::now()) {
                    let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        unreadable(&self.path).to_string()
                    } else {
                        e.to_string()
                    };
                    tracing::warn!(file = %self.label, held_back, "cannot open the mail log: {why}");
                }
                None
            }
        }
    }

    /// Follows `file` from its start.
    fn take_file(&mut self, (file, id): (tokio::fs::File, (u64, u64))) {
        self.file = Some(file);
        self.id = id;
        self.pos = 0;
        self.skip_partial = false;
        self.rotated_quiet = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::maillog::format::Framing;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    /// A follower on `path` writing into a pipe: the source's description, the follower's
    /// task, the pipe's other end, and the shutdown switch.
    async fn follow(
        path: &Path,
        from_start: bool,
    ) -> (String, tokio::task::JoinHandle<()>, DuplexStream, tokio::sync::watch::Sender<bool>) {
        let catching_up = Arc::new(CatchingUp::default());
        let mut src =
            TailSource::open(path, from_start, MailLog::new(Framing::Text, 0), catching_up.clone()).unwrap();
        let described = src.describe();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
        let f =
            Follower::new(path.to_owned(), "test".into(), from_start, src.initial.take(), catching_up).await;
        (described, tokio::spawn(f.run(writer, shutdown)), reader, stop)
    }

    /// Reads from the pipe until `want` bytes arrived (bounded wait).
    async fn read_exactly(r: &mut DuplexStream, want: usize) -> String {
        let mut got = vec![0u8; want];
        tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut got))
            .await
            .expect("in time")
            .unwrap();
        String::from_utf8(got).unwrap()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn starts_at_the_end_skipping_a_line_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mail.log");
        append(&p, "old line\nhalf of a li");
        let (described, task, mut r, _stop) = follow(&p, false).await;
        assert!(described.ends_with("(from its end)"), "{described}");
        append(&p, "ne\nnew line\n");
        assert_eq!(read_exactly(&mut r, 9).await, "new line\n");
        task.abort();
    }

    #[tokio::test]
    async fn from_start_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mail.log");
        append(&p, "one\ntwo\n");
        let (_src, task, mut r, _stop) = follow(&p, true).await;
        assert_eq!(read_exactly(&mut r, 8).await, "one\ntwo\n");
        // A rename: the old file still gets a line and an unfinished one, then the new file
        // is read from its start.
        append(&p, "three\n");
        std::fs::rename(&p, dir.path().join("mail.log.1")).unwrap();
        append(&dir.path().join("mail.log.1"), "four\nfiv");
        append(&p, "six\n");
        assert_eq!(read_exactly(&mut r, 19).await, "three\nfour\nfiv\nsix\n");
        // Truncation: read again from offset 0.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(0).unwrap();
        append(&p, "7\n");
        assert_eq!(read_exactly(&mut r, 2).await, "7\n");
        task.abort();
    }

    #[tokio::test]
    async fn waits_for_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("later.log");
        let (described, task, mut r, stop) = follow(&p, false).await;
        assert!(described.contains("not there yet"), "{described}");
        append(&p, "first\n");
        assert_eq!(read_exactly(&mut r, 6).await, "first\n");
        // Shutdown ends the follower, which closes the pipe.
        stop.send(true).unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = TailSource::open(dir.path(), false, MailLog::new(Framing::Text, 0), Default::default());
        assert!(matches!(e, Err(SourceError::IsDirectory { .. })), "{:?}", e.err());
    }
}
