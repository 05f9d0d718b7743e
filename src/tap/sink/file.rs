//! A file sink's output: a buffered append-only file with rotation by size and by UTC day,
//! numbered rotated files (`path.1` newest … `path.N` oldest, older ones deleted), reopening
//! when the file is deleted or moved from under it, and write errors that are counted and
//! logged once per burst instead of stopping the sink.
//!
//! Everything here runs on the sink's tap thread; nothing blocks ingest. The clock is
//! injectable ([`Clock`]) so the day rotation is unit-tested without waiting for midnight.

use super::Counters;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Where the file sink reads the time: Unix seconds.
pub trait Clock: Send + 'static {
    /// The current time in Unix seconds.
    fn now_secs(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> i64 {
        crate::event::encode::now_secs()
    }
}

/// Seconds in a day: rotation days are UTC days, so they change at 00:00 UTC whatever the
/// host's zone and its daylight-saving shifts.
const DAY: i64 = 86_400;

/// How often (at most) the sink checks that its path still names the file it writes, and
/// retries opening after an error.
const CHECK_SECS: i64 = 1;

/// The buffer in front of the file: flushed when full, on idle and at stop.
const BUFFER: usize = 64 * 1024;

/// What a file sink was configured with (`[[sink]]` with `kind = "file"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    /// The file written to.
    pub path: PathBuf,
    /// Rotate before a write would make the file larger than this (0: never by size).
    pub rotate_bytes: u64,
    /// Rotate when the UTC day changes.
    pub rotate_daily: bool,
    /// Rotated files kept (`path.1` … `path.keep`); 0 deletes the file at rotation.
    pub keep: u32,
    /// `fsync` the file after each flush.
    pub fsync: bool,
}

/// The open file and what is known about it.
struct Open {
    writer: BufWriter<File>,
    /// Device and inode, to notice the path now naming another file (or none).
    id: (u64, u64),
}

/// A rotating, self-healing log file.
pub struct RotatingFile {
    settings: FileSettings,
    clock: Box<dyn Clock>,
    counters: Arc<Counters>,
    name: String,
    open: Option<Open>,
    /// Bytes in the current file (on disk and buffered).
    size: u64,
    /// The UTC day the current file's first line was written on (`None` while it is empty).
    day: Option<i64>,
    /// When the path was last checked, or an open last retried.
    checked_at: i64,
    /// True while writes fail: the first error of a burst is logged, the rest only counted.
    failing: bool,
    /// Lines were buffered since the last flush.
    pending: bool,
}

/// `path.N`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<(File, u64, (u64, u64))> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let m = f.metadata()?;
    Ok((f, m.len(), (m.dev(), m.ino())))
}

impl RotatingFile {
    /// Opens (creating) the file, so an unwritable path is refused at start-up. `name` is the
    /// sink's, for logs.
    pub fn open(
        name: &str,
        settings: FileSettings,
        clock: Box<dyn Clock>,
        counters: Arc<Counters>,
    ) -> std::io::Result<RotatingFile> {
        let (f, len, id) = open_append(&settings.path)?;
        let now = clock.now_secs();
        // A file that already has lines was started on a day we cannot know; its modification
        // time is the best guess, so a restart the next day still rotates yesterday's file.
        let day = if len > 0 {
            let mtime = f.metadata().map(|m| m.mtime()).unwrap_or(now);
            Some(mtime.div_euclid(DAY))
        } else {
            None
        };
        Ok(RotatingFile {
            settings,
            clock,
            counters,
            name: name.to_string(),
            open: Some(Open { writer: BufWriter::with_capacity(BUFFER, f), id }),
            size: len,
            day,
            checked_at: now,
            failing: false,
            pending: false,
        })
    }

    /// Writes one line (newline included). Rotates first when the line would cross
    /// `rotate-bytes` or the day changed. Returns false when it could not be written.
    pub fn write_line(&mut self, line: &[u8]) -> bool {
        let now = self.clock.now_secs();
        if now - self.checked_at >= CHECK_SECS {
            self.checked_at = now;
            self.check_path();
        }
        let today = now.div_euclid(DAY);
        let by_size = self.settings.rotate_bytes > 0
            && self.size > 0
            && self.size + line.len() as u64 > self.settings.rotate_bytes;
        let by_day = self.settings.rotate_daily && self.size > 0 && self.day.is_some_and(|d| d != today);
        if by_size || by_day {
            self.rotate();
        }
        // After an error the file is reopened by the path check above, at most every
        // CHECK_SECS: not once per event while, say, the disk is full.
        if self.open.is_none() {
            return self.failed(None);
        }
        let Some(open) = self.open.as_mut() else { return false };
        match open.writer.write_all(line) {
            Ok(()) => {
                self.size += line.len() as u64;
                if self.day.is_none() {
                    self.day = Some(today);
                }
                self.pending = true;
                true
            }
            Err(e) => {
                // The buffer's state after an error is unknown: start again from a fresh open.
                self.open = None;
                self.failed(Some(e))
            }
        }
    }

    /// Flushes the buffer (and `fsync`s when configured); checks the path when due. Called
    /// when the sink's queue is empty and at stop.
    pub fn flush(&mut self) {
        let now = self.clock.now_secs();
        if let Some(open) = self.open.as_mut() {
            let r = open.writer.flush().and_then(|()| {
                if self.settings.fsync {
                    open.writer.get_ref().sync_data()
                } else {
                    Ok(())
                }
            });
            match r {
                // Only lines that reached the file show that it works again (a buffered write
                // or an empty flush proves nothing on a full disk).
                Ok(()) if self.pending => {
                    self.pending = false;
                    self.recovered();
                }
                Ok(()) => {}
                Err(e) => {
                    self.pending = false;
                    self.open = None;
                    self.failed(Some(e));
                }
            }
        }
        if now - self.checked_at >= CHECK_SECS {
            self.checked_at = now;
            self.check_path();
        }
    }

    /// Reopens when the path no longer names the open file (deleted, or moved away by an
    /// outside log rotator): what is buffered goes to the old file first.
    fn check_path(&mut self) {
        let Some(open) = self.open.as_mut() else {
            // Not open after an error: retry now (at most every CHECK_SECS).
            self.reopen();
            return;
        };
        let same = std::fs::metadata(&self.settings.path).is_ok_and(|m| (m.dev(), m.ino()) == open.id);
        if !same {
            let _ = open.writer.flush();
            tracing::info!(sink = %self.name, path = %self.settings.path.display(), "sink file was moved or deleted; reopening");
            self.open = None;
            self.reopen();
        }
    }

    fn reopen(&mut self) -> bool {
        match open_append(&self.settings.path) {
            Ok((f, len, id)) => {
                self.open = Some(Open { writer: BufWriter::with_capacity(BUFFER, f), id });
                self.size = len;
                self.day = if len > 0 { self.day } else { None };
                true
            }
            Err(e) => {
                self.failed(Some(e));
                false
            }
        }
    }

    /// Closes the current file and shifts the numbered ones: `path.N-1` becomes `path.N`
    /// (replacing the oldest), …, `path` becomes `path.1`; a fresh file is opened at `path`.
    fn rotate(&mut self) {
        if let Some(mut open) = self.open.take() {
            if let Err(e) = open.writer.flush() {
                self.failed(Some(e));
            }
        }
        let path = self.settings.path.clone();
        let result = if self.settings.keep == 0 {
            std::fs::remove_file(&path)
        } else {
            (1..self.settings.keep)
                .rev()
                .try_for_each(|i| match std::fs::rename(numbered(&path, i), numbered(&path, i + 1)) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    r => r,
                })
                .and_then(|()| std::fs::rename(&path, numbered(&path, 1)))
        };
        match result {
            Ok(()) => {
                self.counters.rotations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed(Some(e));
            }
        }
        self.size = 0;
        self.day = None;
        self.reopen();
    }

    /// Counts a failure and logs it if it starts a burst. Always false (for `write_line`).
    fn failed(&mut self, e: Option<std::io::Error>) -> bool {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing {
            self.failing = true;
            let error = e.map_or_else(|| "the file is not open".to_string(), |e| e.to_string());
            tracing::error!(sink = %self.name, path = %self.settings.path.display(), %error,
                "sink cannot write its file; events are dropped and counted until it can");
        }
        false
    }

    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!(sink = %self.name, path = %self.settings.path.display(), "sink writes its file again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    /// A clock the test moves.
    struct TestClock(Arc<AtomicI64>);
    impl Clock for TestClock {
        fn now_secs(&self) -> i64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    /// A fresh directory for one test, removed when the guard drops.
    fn dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("livetap-sink-{tag}-")).tempdir().unwrap()
    }

    fn sink(path: &Path, rotate_bytes: u64, daily: bool, keep: u32, now: &Arc<AtomicI64>) -> RotatingFile {
        let settings =
            FileSettings { path: path.into(), rotate_bytes, rotate_daily: daily, keep, fsync: false };
        RotatingFile::open("t", settings, Box::new(TestClock(now.clone())), Arc::new(Counters::default()))
            .unwrap()
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_by_day_at_utc_midnight() {
        let guard = dir("day");
        let d = guard.path();
        let path = d.join("x.log");
        // 2026-12-07T23:59:58Z.
        let now = Arc::new(AtomicI64::new(1_796_687_998));
        let mut f = sink(&path, 0, true, 5, &now);
        assert!(f.write_line(b"a\n"));
        now.fetch_add(1, Ordering::Relaxed);
        assert!(f.write_line(b"b\n"));
        f.flush();
        assert_eq!(read(&path), "a\nb\n", "same day, same file");
        now.fetch_add(1, Ordering::Relaxed); // 00:00:00 on the 8th.
        assert!(f.write_line(b"c\n"));
        f.flush();
        assert_eq!(read(&numbered(&path, 1)), "a\nb\n");
        assert_eq!(read(&path), "c\n");
        assert_eq!(f.counters.rotations.load(Ordering::Relaxed), 1);
        // A day with no events rotates nothing; the next write on a later day does, once.
        now.fetch_add(3 * DAY, Ordering::Relaxed);
        assert!(f.write_line(b"d\n"));
        assert!(f.write_line(b"e\n"));
        f.flush();
        assert_eq!(read(&numbered(&path, 2)), "a\nb\n");
        assert_eq!(read(&numbered(&path, 1)), "c\n");
        assert_eq!(read(&path), "d\ne\n");
        assert_eq!(f.counters.rotations.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rotates_by_size_before_crossing_and_keeps_n() {
        let guard = dir("size");
        let d = guard.path();
        let path = d.join("x.log");
        let now = Arc::new(AtomicI64::new(0));
        let mut f = sink(&path, 10, false, 2, &now);
        for l in ["1234\n", "5678\n", "abcd\n", "efgh\n", "ijkl\n", "0123456789abc\n", "z\n"] {
            assert!(f.write_line(l.as_bytes()));
        }
        f.flush();
        // Files: [1234 5678] [abcd efgh] [ijkl] [0123456789abc] (a line longer than the limit
        // gets a file of its own) [z]; two rotated ones are kept.
        assert_eq!(read(&path), "z\n");
        assert_eq!(read(&numbered(&path, 1)), "0123456789abc\n");
        assert_eq!(read(&numbered(&path, 2)), "ijkl\n");
        assert!(!numbered(&path, 3).exists());
        assert_eq!(f.counters.rotations.load(Ordering::Relaxed), 4);
        // keep = 0: the rotated content is deleted.
        let path0 = d.join("y.log");
        let mut g = sink(&path0, 4, false, 0, &now);
        assert!(g.write_line(b"abc\n"));
        assert!(g.write_line(b"def\n"));
        g.flush();
        assert_eq!(read(&path0), "def\n");
        assert!(!numbered(&path0, 1).exists());
    }

    #[test]
    fn reopens_a_deleted_file_and_continues_an_existing_one() {
        let guard = dir("reopen");
        let d = guard.path();
        let path = d.join("x.log");
        std::fs::write(&path, "old\n").unwrap();
        let now = Arc::new(AtomicI64::new(100));
        let mut f = sink(&path, 0, false, 1, &now);
        assert!(f.write_line(b"a\n"));
        f.flush();
        assert_eq!(read(&path), "old\na\n", "appends to what is there");
        std::fs::rename(&path, d.join("moved")).unwrap();
        now.fetch_add(CHECK_SECS, Ordering::Relaxed);
        assert!(f.write_line(b"b\n"));
        f.flush();
        assert_eq!(read(&path), "b\n", "a fresh file at the path");
        assert_eq!(read(&d.join("moved")), "old\na\n");
        std::fs::remove_file(&path).unwrap();
        now.fetch_add(CHECK_SECS, Ordering::Relaxed);
        f.flush();
        assert!(f.write_line(b"c\n"));
        f.flush();
        assert_eq!(read(&path), "c\n");
        assert_eq!(f.counters.errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn errors_are_counted_and_the_sink_recovers() {
        let guard = dir("err");
        let d = guard.path();
        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("x.log");
        let now = Arc::new(AtomicI64::new(100));
        let mut f = sink(&path, 0, false, 1, &now);
        // The directory disappears and a plain file takes its name: the path cannot be opened.
        std::fs::remove_dir_all(&sub).unwrap();
        std::fs::write(&sub, "in the way").unwrap();
        now.fetch_add(CHECK_SECS, Ordering::Relaxed);
        assert!(!f.write_line(b"lost\n"));
        assert!(!f.write_line(b"lost\n"));
        assert!(f.counters.errors.load(Ordering::Relaxed) >= 2);
        std::fs::remove_file(&sub).unwrap();
        std::fs::create_dir(&sub).unwrap();
        now.fetch_add(CHECK_SECS, Ordering::Relaxed);
        assert!(f.write_line(b"back\n"));
        f.flush();
        assert_eq!(read(&path), "back\n");
    }

    #[test]
    fn a_full_disk_is_one_burst_of_errors() {
        // `/dev/full` takes an open and refuses every write with ENOSPC.
        let now = Arc::new(AtomicI64::new(100));
        let mut f = sink(Path::new("/dev/full"), 0, false, 1, &now);
        for round in 1..=3u64 {
            assert!(f.write_line(b"buffered\n"), "a buffered write succeeds");
            f.flush();
            assert!(f.failing, "round {round}");
            assert_eq!(f.counters.errors.load(Ordering::Relaxed), round);
            // The next path check reopens the file; an empty flush is no recovery.
            now.fetch_add(CHECK_SECS, Ordering::Relaxed);
            f.flush();
            assert!(f.open.is_some() && f.failing);
        }
    }
}
