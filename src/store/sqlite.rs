//! The embedded history backend: one SQLite file (WAL mode) holding events, span summaries, a keyword index (FTS5) and metric samples.
//!
//! Layout and why:
//! - `events` is keyed by the ring position `seq` and holds the exact bytes livetap streamed,
//!   so a trace answer or a resume from disk sends what live clients got.
//! - `spans` holds one summary row per span (first type, first queue id, times, count), so
//!   the traces list reads one small row per span instead of aggregating events.
//! - `span_queue_ids` maps every queue id a span carried to the span (a session can queue
//!   several messages).
//! - `span_keywords` holds each distinct from/to/domain/hostname/remoteIp value of a span
//!   once; the FTS5 table `keywords_fts` indexes it (external content) for word and prefix
//!   search. The store adds and removes its entries itself, in the same statements' loop,
//!   rather than through triggers: a trigger made each keyword four times as expensive.
//! - `metric_names` and `metric_samples` hold the sampled metrics, one row per name per tick.
//!
//! Durability: WAL with `synchronous=NORMAL`. A committed transaction survives a killed
//! process (its frames are in the log file before the commit returns); a power loss may
//! lose the last commits but never corrupts the file. The writer commits one batch per
//! transaction, so a crash loses at most what was not yet committed.
//!
//! Size (file plus log, as [`SqliteStore::size_bytes`] measures it): a prune deletes the
//! oldest spans when the live pages pass 90 % of the bound, down to 80 %; the freed pages stay
//! in the file and the next batches reuse them. The file is created with
//! `auto_vacuum=INCREMENTAL`, so when it is over the bound itself (a lowered bound, a burst
//! the pruner did not keep up with) `PRAGMA incremental_vacuum` and a `TRUNCATE` checkpoint
//! really shrink it.

use super::{
    EventRecord, HistoryStore, MetricKind, MetricPoint, MetricQuery, Page, PruneReport, Retention,
    StoreError, StoreStats, StoredEvent, TraceQuery, TraceSummary, MAX_PAGE_ITEMS,
};
use crate::metrics::query::NameFilter;
use ahash::AHashMap;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id`: "ltap", so another program's SQLite file is never mistaken for
/// a history database (and pruned).
pub const APPLICATION_ID: i64 = 0x6c74_6170;

/// How long a connection waits for another one's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle read connections kept for reuse.
const READER_POOL: usize = 4;

/// Spans or events deleted per prune transaction, so the writer is never held off for long.
const PRUNE_CHUNK: usize = 2000;

/// A size prune starts when the live pages pass this share of `max-bytes` (in percent)…
const SIZE_HIGH_PERCENT: u64 = 90;

/// …and deletes the oldest history until they are under this share, so the freed pages
/// absorb the next batches and it does not run again at once.
const SIZE_LOW_PERCENT: u64 = 80;

/// The write-ahead log is truncated to this size after checkpoints.
const JOURNAL_SIZE_LIMIT: i64 = 16 << 20;

/// Why the SQLite backend failed. Callers above `store/` see it only inside
/// [`StoreError::Backend`], which shows its message unchanged; `SqliteStore::open` returns it
/// as is, so a caller that opened this backend by name can tell the cases apart.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// SQLite itself failed (I/O error, full disk, corrupt file, a lock held too long, …).
    #[error("history database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The directory of the database file could not be created.
    #[error("history file {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database could not be switched to write-ahead logging, which concurrent readers
    /// and the crash guarantees need.
    #[error("history database: cannot switch {path} to WAL (got {mode})")]
    NotWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was written by a newer livetap.
    #[error(
        "history database {path} has schema version {found}; this livetap reads versions up to {supported}"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The file is an SQLite database, but not a livetap history database.
    #[error("{path} is not a livetap history database")]
    NotHistory {
        /// The database file.
        path: PathBuf,
    },
}

/// The backend's errors travel through the generic [`StoreError`] boxed, so nothing above
/// `store/` depends on SQLite's types.
impl From<SqliteError> for StoreError {
    fn from(e: SqliteError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// Lets `?` turn a SQLite failure inside the backend's trait methods into a [`StoreError`].
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        SqliteError::Sqlite(e).into()
    }
}

const SCHEMA: &str = r#"
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    span_id    INTEGER,
    queue_id   TEXT,
    type       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    json       BLOB NOT NULL
);
CREATE INDEX events_by_span ON events(span_id, seq) WHERE span_id IS NOT NULL;
CREATE INDEX events_by_time ON events(created_at, seq);

CREATE TABLE spans (
    span_id    INTEGER PRIMARY KEY,
    first_type TEXT NOT NULL,
    queue_id   TEXT,
    first_at   INTEGER NOT NULL,
    last_at    INTEGER NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    events     INTEGER NOT NULL
);
CREATE INDEX spans_by_first_seq ON spans(first_seq);
CREATE INDEX spans_by_type ON spans(first_type, first_seq);
CREATE INDEX spans_by_first_at ON spans(first_at);

CREATE TABLE span_queue_ids (
    queue_id TEXT NOT NULL,
    span_id  INTEGER NOT NULL,
    PRIMARY KEY (queue_id, span_id)
) WITHOUT ROWID;
CREATE INDEX span_queue_ids_by_span ON span_queue_ids(span_id);

CREATE TABLE span_keywords (
    id      INTEGER PRIMARY KEY,
    span_id INTEGER NOT NULL,
    value   TEXT NOT NULL,
    UNIQUE (span_id, value)
);
CREATE VIRTUAL TABLE keywords_fts USING fts5(value, content='span_keywords', content_rowid='id');

CREATE TABLE metric_names (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL
);
CREATE TABLE metric_samples (
    at      INTEGER NOT NULL,
    name_id INTEGER NOT NULL,
    count   INTEGER,
    value   REAL,
    PRIMARY KEY (at, name_id)
) WITHOUT ROWID;

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The SQLite history store. Writes go through one connection (the writer thread and the
/// pruner take turns on it); queries use a small pool of read connections, which WAL lets
/// run while a batch is being written.
pub struct SqliteStore {
    path: PathBuf,
    write: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

/// A pooled read connection, returned to the pool when dropped.
struct Reader<'a> {
    store: &'a SqliteStore,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut pool = self.store.readers.lock();
            if pool.len() < READER_POOL {
                pool.push(c);
            }
        }
    }
}

/// The code a metric's kind is stored as in `metric_names.kind`.
fn kind_code(kind: MetricKind) -> i64 {
    match kind {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
    }
}

/// The kind stored as `code`; an unknown code reads as a counter.
fn kind_from_code(code: i64) -> MetricKind {
    match code {
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        _ => MetricKind::Counter,
    }
}

/// Sequence numbers and times are stored as SQLite integers (signed 64-bit).
fn seq_to_sql(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::OutOfRange(seq))
}

/// Span ids are producer-chosen `u64`s; they are stored bit for bit as `i64`, which keeps
/// them unique and exact (only their SQL ordering differs above `i64::MAX`, and nothing
/// orders by span id).
fn span_to_sql(span: u64) -> i64 {
    span as i64
}

fn span_from_sql(v: i64) -> u64 {
    v as u64
}

fn seq_from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The FTS5 query for one keyword: a phrase (so punctuation inside the word, as in
/// `example.org`, means "these tokens in a row"), with a prefix star unless exact. `None` for
/// a word with no letters or digits, which would match nothing useful.
fn fts_phrase(text: &str, exact: bool) -> Option<String> {
    if !text.chars().any(char::is_alphanumeric) {
        return None;
    }
    let mut q = String::with_capacity(text.len() + 4);
    q.push('"');
    q.push_str(&text.replace('"', "\"\""));
    q.push('"');
    if !exact {
        q.push('*');
    }
    Some(q)
}

/// The effective `(limit, offset)` of a page request.
fn page_bounds(page: usize, limit: usize) -> (i64, i64) {
    let limit = if limit == 0 { MAX_PAGE_ITEMS } else { limit.min(MAX_PAGE_ITEMS) };
    let offset = page.max(1).saturating_sub(1).saturating_mul(limit);
    (limit as i64, i64::try_from(offset).unwrap_or(i64::MAX))
}

fn stored_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: seq_from_sql(row.get(0)?),
        span_id: row.get::<_, Option<i64>>(1)?.map(span_from_sql),
        event_type: row.get(2)?,
        created_at: row.get(3)?,
        json: Bytes::from(row.get::<_, Vec<u8>>(4)?),
    })
}

/// One span's share of a batch, folded into its summary row in one upsert.
struct SpanAgg {
    first_type: crate::event::TypeName,
    queue_id: Option<Box<str>>,
    first_at: i64,
    last_at: i64,
    first_seq: i64,
    last_seq: i64,
    events: i64,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (and its directory) when missing, and
    /// upgrading its schema when it is older.
    pub fn open(path: &Path) -> Result<SqliteStore, SqliteError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| SqliteError::Io { path: dir.to_path_buf(), source })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        migrate(&conn, path)?;
        // WAL lets queries read while the writer commits, and NORMAL syncs only at
        // checkpoints: a killed process loses nothing committed; a power loss may lose the
        // last commits but leaves a consistent file.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::NotWal { path: path.to_path_buf(), mode });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -8192)?;
        Ok(SqliteStore { path: path.to_path_buf(), write: Mutex::new(conn), readers: Mutex::new(Vec::new()) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk: the database file plus its write-ahead log (the shared-memory index
    /// beside them is a fixed few kilobytes and not counted).
    pub fn size_bytes(&self) -> u64 {
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        len(&self.path) + len(&wal_path(&self.path))
    }

    /// Runs `PRAGMA integrity_check` and returns its messages (`["ok"]` when sound).
    pub fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let r = self.reader()?;
        let mut st = r.prepare("PRAGMA integrity_check")?;
        let rows = st.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )?;
                c.busy_timeout(BUSY_TIMEOUT)?;
                c.pragma_update(None, "query_only", true)?;
                c
            }
        };
        Ok(Reader { store: self, conn: Some(conn) })
    }

    /// Deletes whole spans (their events, keywords and queue ids) selected by `select`, which
    /// must return at most [`PRUNE_CHUNK`] span ids; returns `(spans, events)` removed.
    ///
    /// Each table is cleared with one statement over the chunk's ids rather than one per span:
    /// at a database's size bound every stored event is eventually deleted, so deleting must
    /// cost no more than writing.
    fn delete_spans(&self, select: &str, arg: i64) -> Result<(u64, u64), StoreError> {
        let mut conn = self.write.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<i64> = {
            let mut st = tx.prepare_cached(select)?;
            let rows = st.query_map([arg, PRUNE_CHUNK as i64], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if ids.is_empty() {
            return Ok((0, 0));
        }
        // The ids are integers read from the database, so listing them inline is safe.
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let events = tx.execute(&format!("DELETE FROM events WHERE span_id IN ({list})"), [])? as u64;
        // An external-content FTS5 index is told which rows (with their values) leave.
        tx.execute(
            &format!(
                "INSERT INTO keywords_fts (keywords_fts, rowid, value) \
                 SELECT 'delete', id, value FROM span_keywords WHERE span_id IN ({list})"
            ),
            [],
        )?;
        tx.execute(&format!("DELETE FROM span_keywords WHERE span_id IN ({list})"), [])?;
        tx.execute(&format!("DELETE FROM span_queue_ids WHERE span_id IN ({list})"), [])?;
        tx.execute(&format!("DELETE FROM spans WHERE span_id IN ({list})"), [])?;
        tx.commit()?;
        Ok((ids.len() as u64, events))
    }

    /// Deletes up to [`PRUNE_CHUNK`] span-less events matching `cond` (a condition on
    /// `created_at` or `seq` with one parameter).
    fn delete_loose_events(&self, cond: &str, arg: i64) -> Result<u64, StoreError> {
        let conn = self.write.lock();
        let sql = format!(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE span_id IS NULL AND {cond} ORDER BY seq LIMIT ?2)"
        );
        let n = conn.prepare_cached(&sql)?.execute([arg, PRUNE_CHUNK as i64])?;
        Ok(n as u64)
    }

    /// Deletes up to [`PRUNE_CHUNK`] metric samples taken before `cutoff`.
    fn delete_samples(&self, cutoff: i64) -> Result<u64, StoreError> {
        let conn = self.write.lock();
        let n = conn
            .prepare_cached(
                "DELETE FROM metric_samples WHERE (at, name_id) IN \
                 (SELECT at, name_id FROM metric_samples WHERE at < ?1 ORDER BY at LIMIT ?2)",
            )?
            .execute([cutoff, PRUNE_CHUNK as i64])?;
        Ok(n as u64)
    }

    /// Everything older than `cutoff` by span start (spans, whole, as Stalwart purges them) or
    /// creation (span-less events), chunk by chunk. Going by the start rather than the last
    /// event spares an index that every batch would update.
    fn prune_traces_before(&self, cutoff: i64, report: &mut PruneReport) -> Result<(), StoreError> {
        loop {
            let (spans, events) =
                self.delete_spans("SELECT span_id FROM spans WHERE first_at < ?1 LIMIT ?2", cutoff)?;
            report.spans += spans;
            report.events += events;
            if spans < PRUNE_CHUNK as u64 {
                break;
            }
        }
        loop {
            let n = self.delete_loose_events("created_at < ?1", cutoff)?;
            report.events += n;
            if n < PRUNE_CHUNK as u64 {
                return Ok(());
            }
        }
    }

    /// Everything up to sequence number `cutoff`: spans that started there (whole), and
    /// span-less events.
    fn prune_through_seq(&self, cutoff: i64, report: &mut PruneReport) -> Result<(), StoreError> {
        loop {
            let (spans, events) = self.delete_spans(
                "SELECT span_id FROM spans WHERE first_seq <= ?1 ORDER BY first_seq LIMIT ?2",
                cutoff,
            )?;
            report.spans += spans;
            report.events += events;
            if spans < PRUNE_CHUNK as u64 {
                break;
            }
        }
        loop {
            let n = self.delete_loose_events("seq <= ?1", cutoff)?;
            report.events += n;
            if n < PRUNE_CHUNK as u64 {
                return Ok(());
            }
        }
    }

    /// Returns freed pages to the file system and empties the write-ahead log, so the bytes
    /// on disk follow what was deleted.
    fn shrink(&self) -> Result<(), StoreError> {
        let conn = self.write.lock();
        // The pragma frees one page per step (it answers a row for each), so it is stepped
        // to the end rather than executed once.
        {
            let mut st = conn.prepare_cached("PRAGMA incremental_vacuum")?;
            let mut rows = st.query([])?;
            while rows.next()?.is_some() {}
        }
        // TRUNCATE waits (busy timeout) for readers of older snapshots; when it cannot finish,
        // the log is simply truncated at a later checkpoint.
        let _: (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(())
    }

    fn count(&self, sql: &str) -> Result<u64, StoreError> {
        let r = self.reader()?;
        let n: i64 = r.query_row(sql, [], |row| row.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Bytes the database's live pages take (excluding free pages and the log).
    fn live_bytes(&self) -> Result<u64, StoreError> {
        let conn = self.write.lock();
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
    }

    /// Keeps the database under `max_bytes`:
    /// - when its live pages pass [`SIZE_HIGH_PERCENT`] of the bound, the oldest spans (whole)
    ///   are deleted until they are under [`SIZE_LOW_PERCENT`]. The share of the live pages
    ///   to free is taken as the same share of the stored sequence-number range (events are
    ///   about equally dense along it), so no round counts rows; a few rounds land under it.
    /// - the freed pages stay in the file and new batches reuse them, so a database at its
    ///   bound does not move pages around on every prune. Only when the file itself (plus its
    ///   log) is over the bound, after a lowered bound or a burst, is the log checkpointed and
    ///   the file shrunk (`incremental_vacuum`), which moves pages and costs more.
    fn prune_size(&self, max_bytes: u64, report: &mut PruneReport) -> Result<(), StoreError> {
        let high = max_bytes / 100 * SIZE_HIGH_PERCENT;
        let low = max_bytes / 100 * SIZE_LOW_PERCENT;
        if self.live_bytes()? > high {
            for _ in 0..32 {
                let live = self.live_bytes()?;
                if live <= low {
                    break;
                }
                // At least 1 % per round, so every round makes progress.
                let share = ((live - low) as f64 / live as f64).clamp(0.01, 1.0);
                let range = |sql: &str| -> Result<Option<(i64, i64)>, StoreError> {
                    let r = self.reader()?;
                    let (lo, hi): (Option<i64>, Option<i64>) =
                        r.query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?)))?;
                    Ok(lo.zip(hi))
                };
                if let Some((lo, hi)) = range("SELECT min(seq), max(seq) FROM events")? {
                    let cutoff = lo + ((hi - lo + 1) as f64 * share).ceil() as i64 - 1;
                    self.prune_through_seq(cutoff.clamp(lo, hi), report)?;
                } else if let Some((lo, hi)) = range("SELECT min(at), max(at) FROM metric_samples")? {
                    let cutoff = lo + ((hi - lo + 1) as f64 * share).ceil() as i64;
                    loop {
                        let d = self.delete_samples(cutoff.clamp(lo + 1, hi + 1))?;
                        report.samples += d;
                        if d < PRUNE_CHUNK as u64 {
                            break;
                        }
                    }
                } else {
                    break;
                }
            }
        }
        if self.size_bytes() > max_bytes {
            self.shrink()?;
        }
        Ok(())
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Creates the schema in a new file, checks an existing one, and upgrades older versions
/// (there are none yet: version 1 is the first).
fn migrate(conn: &Connection, path: &Path) -> Result<(), SqliteError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(SqliteError::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        if tables != 0 {
            return Err(SqliteError::NotHistory { path: path.to_path_buf() });
        }
        // Must precede the first table: a file only shrinks after deletes when it was
        // created with auto_vacuum on.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
        return Ok(());
    }
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app != APPLICATION_ID {
        return Err(SqliteError::NotHistory { path: path.to_path_buf() });
    }
    Ok(())
}

impl HistoryStore for SqliteStore {
    fn write_events(&self, batch: &[EventRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut conn = self.write.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut spans: AHashMap<i64, SpanAgg> = AHashMap::new();
        let mut max_seq = -1i64;
        {
            let mut ins_event = tx.prepare_cached(
                "INSERT INTO events (seq, span_id, queue_id, type, created_at, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT(seq) DO NOTHING",
            )?;
            let mut ins_queue = tx
                .prepare_cached("INSERT OR IGNORE INTO span_queue_ids (queue_id, span_id) VALUES (?1, ?2)")?;
            let mut ins_keyword =
                tx.prepare_cached("INSERT OR IGNORE INTO span_keywords (span_id, value) VALUES (?1, ?2)")?;
            let mut ins_fts = tx.prepare_cached("INSERT INTO keywords_fts (rowid, value) VALUES (?1, ?2)")?;
            for r in batch {
                let seq = seq_to_sql(r.seq)?;
                max_seq = max_seq.max(seq);
                let ev = &r.event;
                let span = ev.span_id.map(span_to_sql);
                let queue = r.queue_id.as_deref();
                let added =
                    ins_event.execute(params![seq, span, queue, &*ev.kind, ev.created_at, &ev.json[..]])?;
                let Some(span) = span else { continue };
                for q in &r.span_queue_ids {
                    ins_queue.execute(params![&**q, span])?;
                }
                for k in &r.keywords {
                    if ins_keyword.execute(params![span, &**k])? == 1 {
                        ins_fts.execute(params![tx.last_insert_rowid(), &**k])?;
                    }
                }
                if added == 0 {
                    continue;
                }
                let agg = spans.entry(span).or_insert_with(|| SpanAgg {
                    first_type: ev.kind.clone(),
                    queue_id: None,
                    first_at: ev.created_at,
                    last_at: ev.created_at,
                    first_seq: seq,
                    last_seq: seq,
                    events: 0,
                });
                if seq < agg.first_seq {
                    agg.first_seq = seq;
                    agg.first_type = ev.kind.clone();
                }
                agg.last_seq = agg.last_seq.max(seq);
                agg.first_at = agg.first_at.min(ev.created_at);
                agg.last_at = agg.last_at.max(ev.created_at);
                agg.events += 1;
                if agg.queue_id.is_none() {
                    agg.queue_id = r.queue_id.clone();
                }
            }
            // In an upsert, the unqualified columns of `DO UPDATE SET` are the stored row's
            // values before the update, and `excluded` is this batch's share.
            let mut upsert = tx.prepare_cached(
                "INSERT INTO spans (span_id, first_type, queue_id, first_at, last_at, first_seq, last_seq, events) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT(span_id) DO UPDATE SET \
                   first_type = CASE WHEN excluded.first_seq < first_seq THEN excluded.first_type ELSE first_type END, \
                   queue_id = CASE WHEN queue_id IS NULL OR excluded.first_seq < first_seq \
                                   THEN coalesce(excluded.queue_id, queue_id) ELSE queue_id END, \
                   first_at = min(first_at, excluded.first_at), \
                   last_at = max(last_at, excluded.last_at), \
                   first_seq = min(first_seq, excluded.first_seq), \
                   last_seq = max(last_seq, excluded.last_seq), \
                   events = events + excluded.events",
            )?;
            for (span, a) in &spans {
                upsert.execute(params![
                    span,
                    &*a.first_type,
                    a.queue_id.as_deref(),
                    a.first_at,
                    a.last_at,
                    a.first_seq,
                    a.last_seq,
                    a.events
                ])?;
            }
            if max_seq >= 0 {
                tx.prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?1) \
                     ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                )?
                .execute([max_seq + 1])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn write_metrics(&self, points: &[MetricPoint]) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let mut conn = self.write.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut name_id = tx.prepare_cached(
                "INSERT INTO metric_names (name, kind) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET kind = excluded.kind RETURNING id",
            )?;
            let mut ins = tx.prepare_cached(
                "INSERT OR REPLACE INTO metric_samples (at, name_id, count, value) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for p in points {
                let (kind, count, value): (MetricKind, Option<i64>, Option<f64>) = match p {
                    MetricPoint::Counter { value, .. } => {
                        (MetricKind::Counter, Some(i64::try_from(*value).unwrap_or(i64::MAX)), None)
                    }
                    MetricPoint::Gauge { value, .. } => (MetricKind::Gauge, None, Some(*value)),
                    MetricPoint::Histogram { count, sum, .. } => {
                        (MetricKind::Histogram, Some(i64::try_from(*count).unwrap_or(i64::MAX)), Some(*sum))
                    }
                };
                let id: i64 = name_id.query_row(params![p.name(), kind_code(kind)], |r| r.get(0))?;
                ins.execute(params![p.timestamp(), id, count, value])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn traces(&self, q: &TraceQuery) -> Result<Page<TraceSummary>, StoreError> {
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(t) = &q.event_type {
            // A renamed type is one type under two names (README, catalogue generations): a
            // span stored under either name is listed for both.
            conds.push("s.first_type IN (?, ?)".into());
            args.push(Value::Text(t.clone()));
            let other = crate::event::catalogue::counterpart(t).unwrap_or(t.as_str());
            args.push(Value::Text(other.to_string()));
        }
        if let Some(id) = &q.queue_id {
            // Integer queue ids are stored in canonical form (`42`, not `042`); a text id as
            // sent. Ask for both spellings.
            let canonical = id.trim().parse::<i64>().map_or_else(|_| id.clone(), |n| n.to_string());
            conds.push("s.span_id IN (SELECT span_id FROM span_queue_ids WHERE queue_id IN (?, ?))".into());
            args.push(Value::Text(id.clone()));
            args.push(Value::Text(canonical));
        }
        for k in &q.keywords {
            let Some(phrase) = fts_phrase(&k.text, k.exact) else { continue };
            let exact = if k.exact { " AND k.value = ?" } else { "" };
            conds.push(format!(
                "s.span_id IN (SELECT k.span_id FROM keywords_fts JOIN span_keywords k ON k.id = keywords_fts.rowid \
                 WHERE keywords_fts MATCH ?{exact})"
            ));
            args.push(Value::Text(phrase));
            if k.exact {
                args.push(Value::Text(k.text.clone()));
            }
        }
        if !q.span_ids.is_empty() {
            // Bounded by `MAX_SPAN_IDS`, well under SQLite's 32,766 parameters.
            conds.push(format!("s.span_id IN ({})", vec!["?"; q.span_ids.len()].join(",")));
            args.extend(q.span_ids.iter().map(|&id| Value::Integer(span_to_sql(id))));
        }
        if let Some(t) = q.after {
            conds.push("s.first_at >= ?".into());
            args.push(Value::Integer(t));
        }
        if let Some(t) = q.before {
            conds.push("s.first_at < ?".into());
            args.push(Value::Integer(t));
        }
        let filter = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
        let r = self.reader()?;
        let total: i64 = r
            .prepare(&format!("SELECT count(*) FROM spans s{filter}"))?
            .query_row(params_from_iter(args.iter()), |row| row.get(0))?;
        let (limit, offset) = page_bounds(q.page, q.limit);
        args.push(Value::Integer(limit));
        args.push(Value::Integer(offset));
        let mut st = r.prepare(&format!(
            "SELECT s.span_id, s.first_type, s.queue_id, s.first_at, s.last_at, s.events, s.first_seq, s.last_seq \
             FROM spans s{filter} ORDER BY s.first_seq DESC LIMIT ? OFFSET ?"
        ))?;
        let items = st
            .query_map(params_from_iter(args.iter()), |row| {
                Ok(TraceSummary {
                    id: span_from_sql(row.get(0)?),
                    event_type: row.get(1)?,
                    queue_id: row.get(2)?,
                    started_at: row.get(3)?,
                    ended_at: row.get(4)?,
                    events: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
                    first_event_id: seq_from_sql(row.get(6)?) + 1,
                    last_event_id: seq_from_sql(row.get(7)?) + 1,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { items, total: u64::try_from(total).unwrap_or(0) })
    }

    fn trace(&self, span_id: u64) -> Result<Vec<StoredEvent>, StoreError> {
        let r = self.reader()?;
        let mut st = r.prepare_cached(
            "SELECT seq, span_id, type, created_at, json FROM events WHERE span_id = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([span_to_sql(span_id)], stored_event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn first_events(&self, span_ids: &[u64]) -> Result<Vec<StoredEvent>, StoreError> {
        if span_ids.is_empty() {
            return Ok(Vec::new());
        }
        let r = self.reader()?;
        let mut out = Vec::with_capacity(span_ids.len());
        // A span's summary row knows its first stored event; one query per chunk of ids
        // (a traces page holds at most `MAX_PAGE_ITEMS`), under SQLite's parameter limit.
        for chunk in span_ids.chunks(1_000) {
            let mut st = r.prepare(&format!(
                "SELECT e.seq, e.span_id, e.type, e.created_at, e.json FROM spans s \
                 JOIN events e ON e.seq = s.first_seq WHERE s.span_id IN ({})",
                vec!["?"; chunk.len()].join(",")
            ))?;
            let rows =
                st.query_map(params_from_iter(chunk.iter().map(|&id| span_to_sql(id))), stored_event)?;
            for row in rows {
                out.push(row?);
            }
        }
        Ok(out)
    }

    fn metrics(&self, q: &MetricQuery) -> Result<Page<MetricPoint>, StoreError> {
        let r = self.reader()?;
        let filter = NameFilter::new(q.metrics.iter().map(String::as_str));
        let mut names: AHashMap<i64, (String, MetricKind)> = AHashMap::new();
        {
            let mut st = r.prepare_cached("SELECT id, name, kind FROM metric_names")?;
            let rows = st.query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
            })?;
            for row in rows {
                let (id, name, kind) = row?;
                if filter.matches(&name) {
                    names.insert(id, (name, kind_from_code(kind)));
                }
            }
        }
        if names.is_empty() {
            return Ok(Page { items: Vec::new(), total: 0 });
        }
        let mut conds = vec!["s.at >= ?1".to_string(), "s.at < ?2".to_string()];
        if !filter.is_all() {
            // The ids come from the database as integers, so listing them inline is safe.
            let ids: Vec<String> = names.keys().map(i64::to_string).collect();
            conds.push(format!("s.name_id IN ({})", ids.join(",")));
        }
        let filter_sql = conds.join(" AND ");
        let after = q.after.unwrap_or(i64::MIN);
        let before = q.before.unwrap_or(i64::MAX);
        let total: i64 = r
            .prepare(&format!("SELECT count(*) FROM metric_samples s WHERE {filter_sql}"))?
            .query_row(params![after, before], |row| row.get(0))?;
        let (limit, offset) = page_bounds(q.page, q.limit);
        let mut st = r.prepare(&format!(
            "SELECT s.at, s.name_id, s.count, s.value FROM metric_samples s JOIN metric_names n ON n.id = s.name_id \
             WHERE {filter_sql} ORDER BY s.at, n.name LIMIT ?3 OFFSET ?4"
        ))?;
        let rows = st.query_map(params![after, before, limit, offset], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, Option<f64>>(3)?,
            ))
        })?;
        let mut items = Vec::new();
        for row in rows {
            let (at, id, count, value) = row?;
            let Some((name, kind)) = names.get(&id) else { continue };
            let count = u64::try_from(count.unwrap_or(0)).unwrap_or(0);
            let id = name.clone();
            items.push(match kind {
                MetricKind::Counter => MetricPoint::Counter { id, timestamp: at, value: count },
                MetricKind::Gauge => MetricPoint::Gauge { id, timestamp: at, value: value.unwrap_or(0.0) },
                MetricKind::Histogram => {
                    MetricPoint::Histogram { id, timestamp: at, count, sum: value.unwrap_or(0.0) }
                }
            });
        }
        Ok(Page { items, total: u64::try_from(total).unwrap_or(0) })
    }

    fn events_since_seq(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let Ok(from) = i64::try_from(from_seq) else { return Ok(Vec::new()) };
        let r = self.reader()?;
        let mut st = r.prepare_cached(
            "SELECT seq, span_id, type, created_at, json FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![from, i64::try_from(limit).unwrap_or(i64::MAX)], stored_event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn floor_for_newest(&self, from: u64, until: u64, n: usize) -> Result<Option<u64>, StoreError> {
        let (Ok(from), Ok(until)) = (i64::try_from(from), i64::try_from(until.min(i64::MAX as u64))) else {
            return Ok(None);
        };
        if n == 0 {
            return Ok(None);
        }
        let r = self.reader()?;
        // The n-th and (n+1)-th newest in the range: when the second exists, the first is the
        // floor. Walking the primary key backwards makes this O(n), not a scan of the table.
        let mut st = r.prepare_cached(
            "SELECT seq FROM events WHERE seq >= ?1 AND seq < ?2 ORDER BY seq DESC LIMIT 2 OFFSET ?3",
        )?;
        let seqs: Vec<i64> = st
            .query_map(params![from, until, i64::try_from(n - 1).unwrap_or(i64::MAX)], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok((seqs.len() == 2).then(|| seq_from_sql(seqs[0])))
    }

    fn first_seq_at_or_after(&self, time: i64) -> Result<Option<u64>, StoreError> {
        let r = self.reader()?;
        let seq: Option<i64> = r
            .prepare_cached("SELECT min(seq) FROM events WHERE created_at >= ?1")?
            .query_row([time], |row| row.get(0))?;
        Ok(seq.map(seq_from_sql))
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        let r = self.reader()?;
        let v: Option<i64> =
            r.query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |row| row.get(0)).optional()?;
        Ok(v.map_or(0, seq_from_sql))
    }

    fn prune(&self, retention: &Retention, now: i64) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport { bytes_before: self.size_bytes(), ..PruneReport::default() };
        if retention.trace_max_age_secs > 0 {
            self.prune_traces_before(now.saturating_sub(retention.trace_max_age_secs), &mut report)?;
        }
        if retention.metric_max_age_secs > 0 {
            let cutoff = now.saturating_sub(retention.metric_max_age_secs);
            loop {
                let n = self.delete_samples(cutoff)?;
                report.samples += n;
                if n < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        // Pages freed by age stay in the file for the next batches to reuse; the file shrinks
        // only when it is over the size bound (below).
        if retention.max_bytes > 0 {
            self.prune_size(retention.max_bytes, &mut report)?;
        }
        report.bytes_after = self.size_bytes();
        Ok(report)
    }

    fn disk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.size_bytes())
    }

    fn size_bytes(&self) -> u64 {
        SqliteStore::size_bytes(self)
    }

    fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        SqliteStore::integrity_check(self)
    }

    fn path(&self) -> &Path {
        SqliteStore::path(self)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let r = self.reader()?;
        let (oldest, newest): (Option<i64>, Option<i64>) =
            r.query_row("SELECT min(seq), max(seq) FROM events", [], |row| Ok((row.get(0)?, row.get(1)?)))?;
        drop(r);
        Ok(StoreStats {
            events: self.count("SELECT count(*) FROM events")?,
            spans: self.count("SELECT count(*) FROM spans")?,
            samples: self.count("SELECT count(*) FROM metric_samples")?,
            bytes: self.size_bytes(),
            oldest_seq: oldest.map(seq_from_sql),
            newest_seq: newest.map(seq_from_sql),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::testing::event;
    use crate::event::Catalogue;
    use crate::store::{parse_keywords, HistoryKeys};
    use smallvec::smallvec;
    use std::sync::Arc;

    fn record(seq: u64, ev: crate::event::Event, queue: Option<&str>, keywords: &[&str]) -> EventRecord {
        EventRecord {
            seq,
            event: Arc::new(ev),
            queue_id: queue.map(Box::from),
            span_queue_ids: queue.map(|q| smallvec![Box::from(q)]).unwrap_or_default(),
            keywords: keywords.iter().map(|k| Box::from(*k)).collect(),
        }
    }

    #[test]
    fn schema_is_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/h.sqlite3");
        drop(SqliteStore::open(&path).unwrap());
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.integrity_check().unwrap(), vec!["ok"]);
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        let av: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!((v, av), (SCHEMA_VERSION, 2));
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(conn);
        assert!(matches!(SqliteStore::open(&path), Err(SqliteError::SchemaTooNew { .. })));

        let other = dir.path().join("other.db");
        let c = Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(c);
        assert!(matches!(SqliteStore::open(&other), Err(SqliteError::NotHistory { .. })));
    }

    #[test]
    fn errors_keep_their_message_through_the_generic_error() {
        let e =
            StoreError::from(SqliteError::SchemaTooNew { path: "h.sqlite3".into(), found: 2, supported: 1 });
        assert_eq!(
            e.to_string(),
            "history database h.sqlite3 has schema version 2; this livetap reads versions up to 1"
        );
        let e = StoreError::from(rusqlite::Error::InvalidQuery);
        assert!(matches!(e, StoreError::Backend(_)));
        assert_eq!(e.to_string(), format!("history database: {}", rusqlite::Error::InvalidQuery));
        // The SQLite error is still reachable as the cause, as it was before the wrapping.
        let cause = std::error::Error::source(&e).expect("a cause");
        assert_eq!(cause.to_string(), rusqlite::Error::InvalidQuery.to_string());
    }

    #[test]
    fn writes_summaries_keywords_and_reads_back() {
        let (c, k) = Catalogue::with_keys(1024);
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("h.sqlite3")).unwrap();
        let e1 = event(
            &c,
            &k,
            r#"{"type":"smtp.connection-start","createdAt":100,"data":{"spanId":5,"remoteIp":"10.0.0.5"}}"#,
        );
        let e2 = event(
            &c,
            &k,
            r#"{"type":"smtp.mail-from","createdAt":101,"data":{"spanId":5,"from":"Alice@Example.org","queueId":42}}"#,
        );
        let e3 = event(&c, &k, r#"{"type":"smtp.connection-end","createdAt":103,"data":{"spanId":5}}"#);
        s.write_events(&[
            record(10, e1, None, &["10.0.0.5"]),
            record(11, e2, Some("42"), &["alice@example.org"]),
        ])
        .unwrap();
        // A repeated keyword and a repeated seq are ignored.
        let dup = event(&c, &k, r#"{"type":"smtp.mail-from","createdAt":101,"data":{"spanId":5}}"#);
        s.write_events(&[record(12, e3, None, &["10.0.0.5"]), record(11, dup, None, &[])]).unwrap();

        let page = s.traces(&TraceQuery::default()).unwrap();
        assert_eq!(page.total, 1);
        let t = &page.items[0];
        assert_eq!(
            (t.id, t.event_type.as_str(), t.queue_id.as_deref()),
            (5, "smtp.connection-start", Some("42"))
        );
        assert_eq!(
            (t.started_at, t.ended_at, t.events, t.first_event_id, t.last_event_id),
            (100, 103, 3, 11, 13)
        );
        assert_eq!(s.trace(5).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![10, 11, 12]);
        let find = |f: &str| {
            s.traces(&TraceQuery { keywords: parse_keywords(f), ..TraceQuery::default() }).unwrap().total
        };
        assert_eq!(find("example.org"), 1);
        assert_eq!(find("exam"), 1);
        assert_eq!(find("\"alice@example.org\""), 1);
        assert_eq!(find("\"example.org\""), 0);
        assert_eq!(find("10.0.0.5 alice"), 1);
        assert_eq!(find("10.0.0.6"), 0);
        assert_eq!(find("@@"), 1, "a word without letters or digits does not filter");
        let q = |id: &str| {
            s.traces(&TraceQuery { queue_id: Some(id.into()), ..TraceQuery::default() }).unwrap().total
        };
        assert_eq!((q("42"), q("042"), q("43")), (1, 1, 0));
        assert_eq!(s.next_seq().unwrap(), 13);
        assert_eq!(s.first_seq_at_or_after(101).unwrap(), Some(11));
        assert_eq!(s.first_seq_at_or_after(104).unwrap(), None);
        let st = s.stats().unwrap();
        assert_eq!((st.events, st.spans, st.oldest_seq, st.newest_seq), (3, 1, Some(10), Some(12)));
        let _ = HistoryKeys::resolve(&k);
    }

    #[test]
    fn spans_are_selected_by_id_and_their_first_events_read_in_one_query() {
        let (c, k) = Catalogue::with_keys(1024);
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("h.sqlite3")).unwrap();
        let mut batch = Vec::new();
        for (seq, span) in [(1, 7u64), (2, u64::MAX), (3, 7), (4, 9), (5, u64::MAX)] {
            let json = format!(
                r#"{{"type":"smtp.rcpt-to","createdAt":{seq},"data":{{"spanId":{span},"to":"r{seq}@x"}}}}"#
            );
            batch.push(record(seq, event(&c, &k, &json), Some("1"), &[]));
        }
        s.write_events(&batch).unwrap();
        let ids = |span_ids: Vec<u64>| {
            let page = s.traces(&TraceQuery { span_ids, ..TraceQuery::default() }).unwrap();
            (page.items.iter().map(|t| t.id).collect::<Vec<_>>(), page.total)
        };
        assert_eq!(ids(vec![7, u64::MAX]), (vec![u64::MAX, 7], 2), "newest first");
        assert_eq!(ids(vec![9, 404]), (vec![9], 1));
        assert_eq!(ids(vec![]).1, 3, "no ids: every span");
        let mut firsts = s.first_events(&[u64::MAX, 7, 404]).unwrap();
        firsts.sort_by_key(|e| e.seq);
        assert_eq!(
            firsts.iter().map(|e| (e.seq, e.span_id)).collect::<Vec<_>>(),
            [(1, Some(7)), (2, Some(u64::MAX))]
        );
        assert!(std::str::from_utf8(&firsts[0].json).unwrap().contains("r1@x"));
        assert!(s.first_events(&[]).unwrap().is_empty());
    }

    #[test]
    fn big_span_ids_round_trip() {
        let (c, k) = Catalogue::with_keys(1024);
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("h.sqlite3")).unwrap();
        let e = event(
            &c,
            &k,
            r#"{"type":"delivery.attempt-start","data":{"spanId":18446744073709551615,"queueId":1}}"#,
        );
        assert_eq!(e.span_id, Some(u64::MAX));
        s.write_events(&[record(0, e, Some("1"), &[])]).unwrap();
        assert_eq!(s.traces(&TraceQuery::default()).unwrap().items[0].id, u64::MAX);
        assert_eq!(s.trace(u64::MAX).unwrap().len(), 1);
    }

    #[test]
    fn metric_points_round_trip_with_name_globs() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("h.sqlite3")).unwrap();
        let c = |id: &str, t: i64, v: u64| MetricPoint::Counter { id: id.into(), timestamp: t, value: v };
        s.write_metrics(&[
            c("queue.count", 60, 3),
            MetricPoint::Gauge { id: "server.memory".into(), timestamp: 60, value: 1.5 },
            MetricPoint::Histogram { id: "delivery.total-time".into(), timestamp: 60, count: 2, sum: 30.0 },
        ])
        .unwrap();
        s.write_metrics(&[c("queue.count", 120, 4)]).unwrap();
        let all = s.metrics(&MetricQuery::default()).unwrap();
        assert_eq!(all.total, 4);
        assert_eq!(all.items[0].name(), "delivery.total-time");
        let q = MetricQuery { metrics: vec!["queue.*".into()], after: Some(100), ..MetricQuery::default() };
        assert_eq!(s.metrics(&q).unwrap().items, vec![c("queue.count", 120, 4)]);
        let none = MetricQuery { metrics: vec!["nothing".into()], ..MetricQuery::default() };
        assert_eq!(s.metrics(&none).unwrap().total, 0);
        let paged = s.metrics(&MetricQuery { page: 2, limit: 3, ..MetricQuery::default() }).unwrap();
        assert_eq!((paged.total, paged.items.len()), (4, 1));
    }

    #[test]
    fn fts_phrases_are_quoted() {
        assert_eq!(fts_phrase("a\"b", false).as_deref(), Some("\"a\"\"b\"*"));
        assert_eq!(fts_phrase("x.org", true).as_deref(), Some("\"x.org\""));
        assert_eq!(fts_phrase("..", false), None);
        assert_eq!(page_bounds(0, 0), (MAX_PAGE_ITEMS as i64, 0));
        assert_eq!(page_bounds(3, 20), (20, 40));
    }
}
