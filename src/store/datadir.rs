//! The data directory's format version, its migrations and its lock: the one place that opens
//! `data-dir` before anything else (history, id lease, webhook spools, tokens) touches it.
//!
//! **Stamp.** `data-dir/livetap-data.toml` says which format the directory is in
//! (`format = N`), which livetap wrote it, and what the migrations found (the history
//! database's schema version). It is replaced atomically (a temporary file, synced, renamed,
//! and the directory synced), so a crash leaves the old stamp or the new one, never half.
//! A directory without the file is in format 0: the layout livetap used before versions.
//!
//! **Opening** ([`DataDir::open`]), in this order:
//! 1. read the stamp, and refuse a format newer than [`FORMAT`] *before writing anything*,
//!    so a newer livetap's directory is left exactly as it was;
//! 2. take the lock (`data-dir/lock`, `flock` exclusive, non-blocking): a second livetap on the
//!    same directory is refused instead of interleaving its ids and spools with the first's;
//! 3. read the stamp again (another process may have migrated it between 1 and 2) and run the
//!    migrations from its format up to [`FORMAT`], one step at a time, stamping after each, so
//!    an interrupted upgrade resumes at the step it stopped in.
//!
//! **Reading only** ([`inspect`]): `livetap history` and `livetap check-config` read the stamp
//! and refuse a newer format, but neither migrate nor lock, so they work beside a running
//! server.
//!
//! **Adding a format**: bump [`FORMAT`], append a step to [`MIGRATIONS`] (a function from the
//! previous format that changes the files in place and can run again after a crash), and test
//! it on a directory the previous step produced.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The format this build writes and understands (older ones are migrated).
pub const FORMAT: u32 = 1;

/// The stamp's file name inside the data directory.
pub const STAMP_FILE: &str = "livetap-data.toml";

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// The files of format 0 that hold state, read by the first migration to prove they are
/// readable by the user livetap now runs as (a directory first used as root and then by a
/// service user fails here, at start-up, with the file named, instead of later).
const STATE_FILES: [&str; 5] = ["admin-token", "token-key", "sequence", "sequence-used", "unknown-ids"];

/// The directory of the outgoing webhooks' spools (`tap::webhook::spool`).
const WEBHOOK_SPOOLS: &str = "webhooks";

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory was written by a newer livetap.
    #[error(
        "data directory {dir} has format {found}, but this livetap ({version}) knows formats up \
         to {supported}: it was written by a newer livetap. Upgrade livetap, or point --data-dir \
         (data-dir) at another directory; the directory was not modified"
    )]
    Newer {
        /// The directory.
        dir: PathBuf,
        /// The format in its stamp.
        found: u32,
        /// [`FORMAT`].
        supported: u32,
        /// This build's version.
        version: &'static str,
    },
    /// Another process holds the lock.
    #[error(
        "data directory {dir} is in use by another livetap{holder}: stop it first, or give this \
         one another --data-dir"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// ` (pid N)` when the lock file names it, else empty.
        holder: String,
    },
    /// The stamp cannot be understood.
    #[error("{path} is not a valid data-directory stamp ({message}); restore it from a backup, or move the directory aside")]
    BadStamp {
        /// The stamp file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file or directory could not be read, written or created.
    #[error("data directory: {path}: {source} (check that it exists and that livetap's user owns it)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The history database is not one this build can use.
    #[error("data directory: history database {path}: {message}")]
    History {
        /// The database.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

/// What [`DataDir::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The directory was new (missing or empty) and was stamped with [`FORMAT`].
    Created,
    /// The directory was already in [`FORMAT`].
    Current,
    /// The directory was migrated from `from` to [`FORMAT`].
    Migrated {
        /// The format it had.
        from: u32,
    },
}

/// The stamp's contents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stamp {
    /// The directory's format.
    pub format: u32,
    /// The livetap version that wrote the stamp.
    #[serde(default)]
    pub written_by: String,
    /// The history database's schema version (`PRAGMA user_version`) when the stamp was
    /// written, if the database existed: a later migration that must rewrite the history
    /// knows what it starts from without opening it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_schema: Option<i64>,
}

/// An opened, current, locked data directory; the lock is held until this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the `flock`; closing it releases the lock.
    _lock: std::fs::File,
    opened: Opened,
}

impl DataDir {
    /// Opens `dir` for a server (see the module docs): refuses a newer format untouched, takes
    /// the lock, creates and stamps a new directory, and migrates an older one. `history` is
    /// the history database's path when history is on (it may lie outside `dir`).
    pub fn open(dir: &Path, history: Option<&Path>) -> Result<DataDir, DataDirError> {
        // Step 1: nothing is written before a newer format is refused.
        inspect(dir)?;
        let existed = dir.exists();
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock(dir)?;
        // Step 3: under the lock, the stamp read now is the one to migrate from.
        let stamp = read_stamp(dir)?;
        let newer = |found| DataDirError::Newer {
            dir: dir.to_path_buf(),
            found,
            supported: FORMAT,
            version: env!("CARGO_PKG_VERSION"),
        };
        let opened = match stamp {
            Some(s) if s.format > FORMAT => return Err(newer(s.format)),
            Some(s) if s.format == FORMAT => Opened::Current,
            found => {
                let from = found.map_or(0, |s| s.format);
                let fresh = !existed || is_fresh(dir).map_err(io(dir))?;
                migrate(dir, history, from)?;
                if fresh {
                    tracing::info!(dir = %dir.display(), format = FORMAT, "created the data directory");
                    Opened::Created
                } else {
                    tracing::info!(dir = %dir.display(), from, to = FORMAT, "migrated the data directory");
                    Opened::Migrated { from }
                }
            }
        };
        Ok(DataDir { path: dir.to_path_buf(), _lock: lock, opened })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening it did.
    pub fn opened(&self) -> &Opened {
        &self.opened
    }
}

/// The directory's format without changing anything: `None` when it does not exist yet,
/// `Some(0)` when it predates format versions. A newer format than [`FORMAT`] is an error.
/// For readers beside a running server (`livetap history`, `livetap check-config`).
pub fn inspect(dir: &Path) -> Result<Option<u32>, DataDirError> {
    if !dir.exists() {
        return Ok(None);
    }
    let format = read_stamp(dir)?.map_or(0, |s| s.format);
    if format > FORMAT {
        return Err(DataDirError::Newer {
            dir: dir.to_path_buf(),
            found: format,
            supported: FORMAT,
            version: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok(Some(format))
}

/// True when a livetap process holds `dir`'s lock now. Opens the lock file only if it exists,
/// read-only, so asking changes nothing.
pub fn in_use(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(LOCK_FILE)) else { return false };
    // SAFETY: `flock` on a descriptor this function owns; a shared probe that is released at
    // once (and when `f` closes).
    unsafe {
        if libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 {
            libc::flock(f.as_raw_fd(), libc::LOCK_UN);
            false
        } else {
            true
        }
    }
}

/// Reads the stamp; `None` when there is none (format 0).
pub fn read_stamp(dir: &Path) -> Result<Option<Stamp>, DataDirError> {
    let path = dir.join(STAMP_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataDirError::Io { path, source: e }),
    };
    // Keys a newer livetap adds are ignored: only `format` decides what happens next.
    toml::from_str::<Stamp>(&text)
        .map(Some)
        .map_err(|e| DataDirError::BadStamp { path, message: e.message().to_string() })
}

/// Writes the stamp atomically (see the module docs).
pub fn write_stamp(dir: &Path, stamp: &Stamp) -> Result<(), DataDirError> {
    let path = dir.join(STAMP_FILE);
    let tmp = dir.join(format!("{STAMP_FILE}.tmp"));
    let body = toml::to_string(stamp)
        .map_err(|e| DataDirError::BadStamp { path: path.clone(), message: e.to_string() })?;
    let text = format!(
        "# The format of this data directory, written by livetap. Do not edit: a newer livetap\n\
         # migrates it in place, an older one refuses it (README, \"Data directory format\").\n{body}"
    );
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename must survive a power cut, or the old stamp comes back after the migration's
    // changes.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Takes the directory's lock, writing this process's id into the file for the next one's
/// error message.
fn lock(dir: &Path) -> Result<std::fs::File, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: `flock` on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(DataDirError::Io { path, source: err });
        }
        let mut text = String::new();
        let _ = f.read_to_string(&mut text);
        let holder = text.trim().parse::<u32>().map(|p| format!(" (pid {p})")).unwrap_or_default();
        return Err(DataDirError::Locked { dir: dir.to_path_buf(), holder });
    }
    f.set_len(0).map_err(io(&path))?;
    writeln!(f, "{}", std::process::id()).map_err(io(&path))?;
    Ok(f)
}

/// True when `dir` holds nothing but what opening it wrote (the lock).
fn is_fresh(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name != LOCK_FILE {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A migration step from format `N` to `N + 1` (its index in [`MIGRATIONS`] is `N`). It gets
/// the directory and the history database's path, and returns the stamp to write.
type Step = fn(&Path, Option<&Path>) -> Result<Stamp, DataDirError>;

/// The migrations, in order: `MIGRATIONS[n]` turns format `n` into `n + 1`.
const MIGRATIONS: [Step; FORMAT as usize] = [v0_to_v1];

/// Runs the steps from `from` to [`FORMAT`], stamping after each.
fn migrate(dir: &Path, history: Option<&Path>, from: u32) -> Result<(), DataDirError> {
    for n in from..FORMAT {
        let stamp = MIGRATIONS[n as usize](dir, history)?;
        debug_assert_eq!(stamp.format, n + 1);
        write_stamp(dir, &stamp)?;
        tracing::info!(dir = %dir.display(), from = n, to = n + 1, "data directory migration step done");
    }
    Ok(())
}

/// Format 0 to 1: the unversioned layout gets its stamp. Its files keep their names and
/// contents, but each is read to prove it is readable, the webhook spools are listed and
/// opened, and the history database (if any) is checked to be livetap's with a schema this
/// build reads; its schema version is recorded in the stamp, which later migrations start
/// from.
fn v0_to_v1(dir: &Path, history: Option<&Path>) -> Result<Stamp, DataDirError> {
    for name in STATE_FILES {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataDirError::Io { path, source: e }),
        }
    }
    let spools = dir.join(WEBHOOK_SPOOLS);
    if spools.is_dir() {
        for webhook in std::fs::read_dir(&spools).map_err(io(&spools))? {
            let webhook = webhook.map_err(io(&spools))?.path();
            if !webhook.is_dir() {
                continue;
            }
            for segment in std::fs::read_dir(&webhook).map_err(io(&webhook))? {
                let segment = segment.map_err(io(&webhook))?.path();
                // Opening is the check: segments may be large, and the spool reads them
                // itself when the sender starts.
                std::fs::File::open(&segment).map_err(io(&segment))?;
            }
        }
    }
    let default_history = dir.join(crate::store::DEFAULT_FILE_NAME);
    let history = history.unwrap_or(&default_history);
    let history_schema = if history.exists() { Some(history_schema(history)?) } else { None };
    Ok(Stamp { format: 1, written_by: env!("CARGO_PKG_VERSION").into(), history_schema })
}

/// Reads the history database's schema version, checking that it is livetap's and not
/// newer than this build's store reads.
fn history_schema(path: &Path) -> Result<i64, DataDirError> {
    use rusqlite::{Connection, OpenFlags};
    let bad = |message: String| DataDirError::History { path: path.to_path_buf(), message };
    // Read-write without create: a database left by a crash has a write-ahead log to recover,
    // which a read-only connection may be unable to do; reading two pragmas changes nothing,
    // and a file livetap's user cannot write fails here with its name, as the store would.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| bad(format!("cannot open it for reading and writing: {e}")))?;
    let read = |pragma: &str| -> Result<i64, DataDirError> {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))
            .map_err(|e| bad(format!("cannot read it: {e}")))
    };
    let version = read("user_version")?;
    if version == 0 {
        // An empty file: the store creates the schema in it.
        return Ok(0);
    }
    if read("application_id")? != crate::store::sqlite::APPLICATION_ID {
        return Err(bad("it is not a livetap history database: move it aside".into()));
    }
    if version > crate::store::sqlite::SCHEMA_VERSION {
        return Err(bad(format!(
            "its schema version {version} is newer than this livetap reads ({}): upgrade livetap",
            crate::store::sqlite::SCHEMA_VERSION
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format-0 directory as livetap wrote it before versions: the lease, the tokens, a
    /// webhook spool segment and a history database made by the store itself.
    fn format0(dir: &Path) {
        std::fs::write(dir.join("sequence"), "1048576\nstopped-at 12\n").unwrap();
        std::fs::write(dir.join("sequence-used"), "12\n").unwrap();
        std::fs::write(dir.join("admin-token"), "a-token-of-at-least-16").unwrap();
        std::fs::create_dir_all(dir.join("webhooks/ops")).unwrap();
        std::fs::write(dir.join("webhooks/ops/00000000000000000000"), b"x").unwrap();
        let store = crate::store::open_store(
            &crate::store::HistoryConfig::default(),
            &dir.join(crate::store::DEFAULT_FILE_NAME),
        )
        .unwrap();
        drop(store);
    }

    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_new_directory_is_created_and_stamped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        assert_eq!(inspect(&dir).unwrap(), None);
        let d = DataDir::open(&dir, None).unwrap();
        assert_eq!(d.opened(), &Opened::Created);
        let stamp = read_stamp(&dir).unwrap().unwrap();
        assert_eq!((stamp.format, stamp.history_schema), (FORMAT, None));
        assert_eq!(stamp.written_by, env!("CARGO_PKG_VERSION"));
        drop(d);
        // Reopened: nothing to do.
        assert_eq!(DataDir::open(&dir, None).unwrap().opened(), &Opened::Current);
    }

    #[test]
    fn format_0_is_migrated_and_records_the_history_schema() {
        let tmp = tempfile::tempdir().unwrap();
        format0(tmp.path());
        assert_eq!(inspect(tmp.path()).unwrap(), Some(0));
        let before = std::fs::read(tmp.path().join("sequence")).unwrap();
        let d = DataDir::open(tmp.path(), None).unwrap();
        assert_eq!(d.opened(), &Opened::Migrated { from: 0 });
        let stamp = read_stamp(tmp.path()).unwrap().unwrap();
        assert_eq!(stamp.format, 1);
        assert_eq!(stamp.history_schema, Some(crate::store::sqlite::SCHEMA_VERSION));
        // The state files are kept as they were.
        assert_eq!(std::fs::read(tmp.path().join("sequence")).unwrap(), before);
        assert!(tmp.path().join("webhooks/ops/00000000000000000000").exists());
        assert_eq!(inspect(tmp.path()).unwrap(), Some(1));
    }

    #[test]
    fn an_unreadable_state_file_stops_the_migration_with_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where a file is expected cannot be read as one, even by root.
        std::fs::create_dir(tmp.path().join("token-key")).unwrap();
        let e = DataDir::open(tmp.path(), None).unwrap_err();
        assert!(e.to_string().contains("token-key"), "{e}");
        assert!(read_stamp(tmp.path()).unwrap().is_none(), "not stamped after a failed step");
    }

    #[test]
    fn a_foreign_sqlite_file_is_not_taken_for_the_history() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(crate::store::DEFAULT_FILE_NAME);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 3;").unwrap();
        drop(conn);
        let e = DataDir::open(tmp.path(), None).unwrap_err();
        assert!(e.to_string().contains("not a livetap history"), "{e}");
    }

    #[test]
    fn a_newer_format_is_refused_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        format0(tmp.path());
        let stamp = Stamp { format: FORMAT + 1, written_by: "99.0.0".into(), history_schema: Some(7) };
        write_stamp(tmp.path(), &stamp).unwrap();
        let before = snapshot(tmp.path());
        let e = DataDir::open(tmp.path(), None).unwrap_err();
        assert!(matches!(e, DataDirError::Newer { found, supported: FORMAT, .. } if found == FORMAT + 1));
        let text = e.to_string();
        assert!(
            text.contains(&tmp.path().display().to_string()) && text.contains("Upgrade livetap"),
            "{text}"
        );
        assert!(inspect(tmp.path()).is_err());
        assert_eq!(snapshot(tmp.path()), before, "the directory was modified");
        assert!(!tmp.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn a_stamp_with_unknown_keys_still_gives_its_format() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(STAMP_FILE), "format = 1\nwritten-by = \"1.0\"\nfuture = true\n")
            .unwrap();
        assert_eq!(inspect(tmp.path()).unwrap(), Some(1));
        std::fs::write(tmp.path().join(STAMP_FILE), "format = \"one\"\n").unwrap();
        assert!(matches!(inspect(tmp.path()), Err(DataDirError::BadStamp { .. })));
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let first = DataDir::open(tmp.path(), None).unwrap();
        assert!(in_use(tmp.path()));
        let e = DataDir::open(tmp.path(), None).unwrap_err();
        assert!(
            matches!(&e, DataDirError::Locked { holder, .. } if holder.contains(&std::process::id().to_string()))
        );
        // Readers are not refused.
        assert_eq!(inspect(tmp.path()).unwrap(), Some(FORMAT));
        drop(first);
        assert!(!in_use(tmp.path()));
        DataDir::open(tmp.path(), None).unwrap();
    }
}
