//! Log sinks (`[[sink]]`): taps that write the events their query selects to a file (with
//! rotation) or to standard output (journald-friendly), as NDJSON or as one-line text.
//!
//! A sink is a [`Tap`]: its query is compiled into the matcher's index like a live
//! subscriber's, its events arrive on its own thread, and a slow disk fills only its own queue
//! (events past it are dropped for that sink and counted in the tap statistics), never ingest.
//! The NDJSON line of an event is exactly the JSON a live subscriber of `/api/livetap/live`
//! gets in its `data:` (the event's wire bytes in the sink's dialect, encoded once per event
//! per dialect and shared with the streams), so a file and a stream with the same query hold
//! the same events in the same order, byte for byte. The text line is `text.rs`'s.
//!
//! Every sink's counters (events written, bytes, rotations, errors) are in the tap statistics
//! ([`Tap::counters`]), and from there in the live metrics (`/metrics`, the metrics stream) as
//! `livetap.sink.<name>.<counter>` (`hub/own.rs`).

pub mod file;
pub mod stdout;
pub mod text;

use super::{Tap, TapCounters, TapEvent};
use crate::event::dialect::WireForm;
use crate::hub::Hub;
use file::{FileSettings, RotatingFile, SystemClock};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One `[[sink]]` table. Keys that belong to the other kind are refused by
/// [`SinkConfig::validate`], unknown keys by the TOML parser (with their line).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SinkConfig {
    /// A unique name: letters, digits, `-` and `_` (it names the tap and the metrics).
    pub name: String,
    /// `file` or `stdout`.
    pub kind: SinkKind,
    /// The events written, in the live query language's pair form (`level=error`,
    /// `event=auth.*`); empty for every event.
    #[serde(default)]
    pub query: String,
    /// `ndjson` (the default) or `text`.
    #[serde(default)]
    pub format: SinkFormat,
    /// The JSON dialect of NDJSON lines: `full` (the default, `/api/livetap/live`'s),
    /// `classic` (`/api/telemetry/traces/live`'s) or a registered one such as `v016`.
    #[serde(default)]
    pub dialect: Option<String>,
    /// The file written (`kind = "file"`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Rotate before the file would grow past this many bytes (`kind = "file"`; a number, or
    /// a string such as `"100MiB"`; unset: no size rotation).
    #[serde(default)]
    pub rotate_bytes: Option<Size>,
    /// Rotate when the UTC date changes (`kind = "file"`).
    #[serde(default)]
    pub rotate_daily: Option<bool>,
    /// Rotated files kept, `path.1` (newest) to `path.N` (`kind = "file"`; default 7).
    #[serde(default)]
    pub keep: Option<u32>,
    /// `fsync` the file at every flush (`kind = "file"`; default false).
    #[serde(default)]
    pub fsync: Option<bool>,
    /// The `<N>` priority prefix for journald (`kind = "stdout"`): `auto` (the default: when
    /// standard output is the journal), `always` or `never`.
    #[serde(default)]
    pub journal_priority: Option<JournalPriority>,
    /// Events the sink's queue holds before newer ones are dropped for it (default 65536).
    #[serde(default)]
    pub queue: Option<usize>,
}

/// Where a sink writes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// A file, rotated.
    File,
    /// livetap's standard output.
    Stdout,
}

/// How a sink writes one event.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SinkFormat {
    /// One JSON object per line.
    #[default]
    Ndjson,
    /// One readable line (`text.rs`).
    Text,
}

/// When a stdout sink prefixes lines with a syslog priority.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum JournalPriority {
    /// When `JOURNAL_STREAM` names standard output.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// A byte size: a number, or a string with a `KiB`/`MiB`/`GiB` (or `K`/`M`/`G`) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    /// Parses `"100MiB"`, `"64 KiB"`, `"1G"`, `"4096"`.
    pub fn parse(s: &str) -> Option<Size> {
        let s = s.trim();
        let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n: u64 = s[..at].parse().ok()?;
        let mul = match s[at..].trim() {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mul).map(Size)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of bytes or a size such as \"100MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).ok_or_else(|| E::custom(format!("`{v}`: expected a size such as \"100MiB\"")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Default `keep`.
pub const DEFAULT_KEEP: u32 = 7;

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The configuration is inconsistent.
    #[error("[[sink]] `{name}`: {message}")]
    Invalid {
        /// The sink.
        name: String,
        /// What is wrong, and what to do.
        message: String,
    },
    /// The file cannot be opened for writing.
    #[error("[[sink]] `{name}`: cannot write {path}: {error}; {fix}")]
    Open {
        /// The sink.
        name: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
        /// What to do about it.
        fix: String,
    },
    /// The dialect is not registered.
    #[error("[[sink]] `{name}`: unknown dialect `{dialect}` (full, classic, v016 or v016-object)")]
    Dialect {
        /// The sink.
        name: String,
        /// The dialect named.
        dialect: String,
    },
}

impl SinkConfig {
    /// Checks one table: the name's alphabet, the keys its kind needs and the keys it must
    /// not have.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = self.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && self.name.len() <= 64
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!(
                "name `{}` must start with a letter and hold only letters, digits, '-' and '_' (at most 64)",
                self.name
            ));
        }
        if self.queue.is_some_and(|q| !(1..=1 << 24).contains(&q)) {
            return Err("queue must be between 1 and 16777216".into());
        }
        if self.format == SinkFormat::Text && self.dialect.is_some() {
            return Err("dialect is for format = \"ndjson\"; remove it for a text sink".into());
        }
        match self.kind {
            SinkKind::File => {
                if self.path.as_ref().map_or(true, |p| p.as_os_str().is_empty()) {
                    return Err("kind = \"file\" needs path = \"/var/log/livetap/events.log\"".into());
                }
                if self.journal_priority.is_some() {
                    return Err("journal-priority is for kind = \"stdout\"".into());
                }
                if self.keep.is_some_and(|k| k > 10_000) {
                    return Err("keep must be at most 10000".into());
                }
                if self.rotate_bytes.is_some_and(|s| s.0 < 1024) {
                    return Err("rotate-bytes must be at least 1024".into());
                }
            }
            SinkKind::Stdout => {
                let file_only = [
                    ("path", self.path.is_some()),
                    ("rotate-bytes", self.rotate_bytes.is_some()),
                    ("rotate-daily", self.rotate_daily.is_some()),
                    ("keep", self.keep.is_some()),
                    ("fsync", self.fsync.is_some()),
                ];
                if let Some((key, _)) = file_only.iter().find(|(_, set)| *set) {
                    return Err(format!("{key} is for kind = \"file\"; a stdout sink has none"));
                }
            }
        }
        Ok(())
    }

    /// The file settings of a file sink.
    fn file_settings(&self) -> Option<FileSettings> {
        Some(FileSettings {
            path: self.path.clone()?,
            rotate_bytes: self.rotate_bytes.map_or(0, |s| s.0),
            rotate_daily: self.rotate_daily.unwrap_or(false),
            keep: self.keep.unwrap_or(DEFAULT_KEEP),
            fsync: self.fsync.unwrap_or(false),
        })
    }
}

/// Checks every `[[sink]]` table, and that names and file paths are unique. Called by
/// `Config::validate`.
pub fn validate_all(sinks: &[SinkConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    let mut paths = std::collections::HashSet::new();
    for s in sinks {
        s.validate().map_err(|m| format!("`{}`: {m}", s.name))?;
        if !names.insert(s.name.as_str()) {
            return Err(format!("two sinks are named `{}`", s.name));
        }
        if let Some(p) = &s.path {
            if !paths.insert(p.as_path()) {
                return Err(format!("`{}`: {} is written by two sinks", s.name, p.display()));
            }
        }
    }
    Ok(())
}

/// A sink's counters, shared between its thread (the only writer, `Relaxed`) and the stats
/// and metrics readers (`Relaxed`: each is a plain tally, read on its own).
#[derive(Debug, Default)]
pub struct Counters {
    /// Events written (handed to the file's buffer or to standard output).
    pub events: AtomicU64,
    /// Bytes written, newlines and prefixes included.
    pub bytes: AtomicU64,
    /// Rotations done.
    pub rotations: AtomicU64,
    /// Failed writes, opens, flushes and rotations (each event lost to one counts once).
    pub errors: AtomicU64,
}

impl TapCounters for Counters {
    fn readings(&self) -> Vec<(&'static str, u64)> {
        self.array().to_vec()
    }
}

impl Counters {
    /// The counters as `(name, value)` pairs, for the tap statistics and the metrics.
    pub fn array(&self) -> [(&'static str, u64); 4] {
        [
            ("events", self.events.load(Ordering::Relaxed)),
            ("bytes", self.bytes.load(Ordering::Relaxed)),
            ("rotations", self.rotations.load(Ordering::Relaxed)),
            ("errors", self.errors.load(Ordering::Relaxed)),
        ]
    }
}

/// Where a sink's lines go.
enum Output {
    File(RotatingFile),
    /// Standard output; the flag says whether lines get a journald priority prefix.
    Stdout(bool),
}

/// A running sink.
pub struct Sink {
    /// The tap's name, `sink:<name>`.
    name: String,
    /// The sink's name, for logs.
    sink_name: String,
    query: String,
    format: SinkFormat,
    form: WireForm,
    queue: usize,
    output: Output,
    counters: Arc<Counters>,
    line: Vec<u8>,
    scratch: Vec<u8>,
    batch: Vec<u8>,
    /// True while standard output fails: the first error of a burst is logged.
    failing: bool,
    /// Events dropped for the sink since its last lag warning, and when that was.
    lagged_since_log: u64,
    lag_logged_at: Option<std::time::Instant>,
}

/// The least time between two warnings that a sink fell behind.
const LAG_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The fix for a file that cannot be opened.
fn open_fix(path: &Path, e: &std::io::Error) -> String {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // ENOTDIR and EISDIR by number: their `ErrorKind`s are newer than the supported Rust.
    match (e.kind(), e.raw_os_error()) {
        (std::io::ErrorKind::NotFound, _) => {
            format!("create the directory first (mkdir -p {}), or choose another path", dir.display())
        }
        (std::io::ErrorKind::PermissionDenied, _) => format!(
            "let the user livetap runs as write {} and {} (chown or chmod), or choose a path in a directory it owns",
            path.display(),
            dir.display()
        ),
        (_, Some(libc::ENOTDIR)) => {
            format!("a part of {} is a file, not a directory: choose another path", dir.display())
        }
        (_, Some(libc::EISDIR)) => {
            format!("{} is a directory: name a file inside it, such as {}/livetap.log", path.display(), path.display())
        }
        _ => "check the path, the disk and the permissions, or choose another path".to_string(),
    }
}

impl Sink {
    /// Builds a sink from its table: opens its file (so an unwritable path stops livetap at
    /// start-up with the fix) and picks its dialect among `dialects`' forms.
    pub fn new(config: &SinkConfig, dialects: &crate::event::dialect::Dialects) -> Result<Sink, SinkError> {
        config.validate().map_err(|message| SinkError::Invalid { name: config.name.clone(), message })?;
        let dialect = config.dialect.as_deref().unwrap_or("full");
        let form = dialects
            .get(dialect)
            .ok_or_else(|| SinkError::Dialect { name: config.name.clone(), dialect: dialect.to_string() })?;
        let counters = Arc::new(Counters::default());
        let output = match (config.kind, config.file_settings()) {
            (SinkKind::File, Some(settings)) => {
                let path = settings.path.clone();
                let f = RotatingFile::open(&config.name, settings, Box::new(SystemClock), counters.clone())
                    .map_err(|error| SinkError::Open {
                    name: config.name.clone(),
                    fix: open_fix(&path, &error),
                    path: path.clone(),
                    error,
                })?;
                // Rotation renames files in the directory: check now that it can. Without
                // rotation only the file itself is written (which may then be a device).
                let rotates = config.rotate_bytes.is_some() || config.rotate_daily == Some(true);
                probe_dir(&path, rotates).map_err(|error| SinkError::Open {
                    name: config.name.clone(),
                    fix: open_fix(&path, &error),
                    path: path.clone(),
                    error,
                })?;
                Output::File(f)
            }
            (SinkKind::File, None) => {
                return Err(SinkError::Invalid { name: config.name.clone(), message: "needs a path".into() })
            }
            (SinkKind::Stdout, _) => Output::Stdout(match config.journal_priority.unwrap_or_default() {
                JournalPriority::Auto => stdout::stdout_is_journal(),
                JournalPriority::Always => true,
                JournalPriority::Never => false,
            }),
        };
        Ok(Sink {
            name: format!("sink:{}", config.name),
            sink_name: config.name.clone(),
            query: config.query.clone(),
            format: config.format,
            form,
            queue: config.queue.unwrap_or(65_536),
            output,
            counters,
            line: Vec::with_capacity(1024),
            scratch: Vec::new(),
            batch: Vec::new(),
            failing: false,
            lagged_since_log: 0,
            lag_logged_at: None,
        })
    }

    /// Appends `ev`'s line (newline included) to `self.line`.
    fn render(&mut self, ev: &TapEvent) {
        self.line.clear();
        if let Output::Stdout(true) = self.output {
            self.line.extend_from_slice(stdout::priority(ev.event.level));
        }
        match self.format {
            SinkFormat::Ndjson => {
                // The wire bytes start with the comma that separates events in a frame.
                let wire = self.form.wire(&ev.event);
                self.line.extend_from_slice(wire.get(1..).unwrap_or_default());
            }
            SinkFormat::Text => text::write_line(&ev.event, &mut self.line, &mut self.scratch),
        }
        self.line.push(b'\n');
    }
}

/// Creates and removes a file beside `path`, so a directory livetap cannot write into (for
/// rotation's renames) is refused at start-up.
fn probe_dir(path: &Path, rotates: bool) -> std::io::Result<()> {
    if !rotates {
        return Ok(());
    }
    let mut probe = path.as_os_str().to_owned();
    probe.push(format!(".livetap-probe-{}", std::process::id()));
    let probe = PathBuf::from(probe);
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

impl Tap for Sink {
    fn name(&self) -> &str {
        &self.name
    }

    fn query(&self) -> &str {
        &self.query
    }

    fn queue_capacity(&self) -> usize {
        self.queue
    }

    fn counters(&self) -> Option<Arc<dyn TapCounters>> {
        Some(self.counters.clone())
    }

    fn deliver(&mut self, events: &[TapEvent]) {
        self.batch.clear();
        for ev in events {
            self.render(ev);
            match &mut self.output {
                Output::File(f) => {
                    if f.write_line(&self.line) {
                        self.counters.events.fetch_add(1, Ordering::Relaxed);
                        self.counters.bytes.fetch_add(self.line.len() as u64, Ordering::Relaxed);
                    }
                }
                Output::Stdout(_) => self.batch.extend_from_slice(&self.line),
            }
        }
        if let Output::Stdout(_) = self.output {
            match stdout::write_batch(&self.batch) {
                Ok(()) => {
                    self.counters.events.fetch_add(events.len() as u64, Ordering::Relaxed);
                    self.counters.bytes.fetch_add(self.batch.len() as u64, Ordering::Relaxed);
                    if self.failing {
                        self.failing = false;
                        tracing::info!(sink = %self.sink_name, "sink writes standard output again");
                    }
                }
                Err(e) => {
                    self.counters.errors.fetch_add(events.len() as u64, Ordering::Relaxed);
                    if !self.failing {
                        self.failing = true;
                        tracing::error!(sink = %self.sink_name, error = %e,
                            "sink cannot write standard output; events are dropped and counted until it can");
                    }
                }
            }
            self.batch.clear();
        }
    }

    fn lagged(&mut self, n: u64) {
        // Once per burst: an overloaded sink lags at every drain, and the stats count it all.
        self.lagged_since_log += n;
        let now = std::time::Instant::now();
        if self.lag_logged_at.map_or(true, |t| now.duration_since(t) >= LAG_LOG_EVERY) {
            tracing::warn!(sink = %self.sink_name, dropped = self.lagged_since_log,
                "sink fell behind; events were dropped for it (counted in the tap stats)");
            self.lagged_since_log = 0;
            self.lag_logged_at = Some(now);
        }
    }

    fn idle(&mut self) {
        if let Output::File(f) = &mut self.output {
            f.flush();
        }
    }

    fn stop(&mut self) {
        self.idle();
    }
}

/// Builds every configured sink (opening their files) and adds them to `hub` as taps. Called
/// by `Server::start` before the sources start, so the sinks see every event.
pub async fn start(hub: &Arc<Hub>) -> Result<(), std::io::Error> {
    for config in &hub.config.sink {
        let sink = Sink::new(config, &hub.dialects).map_err(std::io::Error::other)?;
        match &sink.output {
            Output::File(_) => {
                tracing::info!(sink = %config.name, path = %config.path.as_deref().unwrap_or(Path::new("")).display(),
                    query = %config.query, "writing events to a file")
            }
            Output::Stdout(prefix) => {
                tracing::info!(sink = %config.name, query = %config.query, journal_priority = prefix,
                    "writing events to standard output")
            }
        }
        hub.add_tap(Box::new(sink)).await.map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// The sinks a reload will start, replace and remove, each new or changed one already built
/// (its file opened): made by [`prepare_reload`] before the reload changes anything, so a
/// sink that cannot open leaves the whole running configuration as it was.
pub struct SinkPlan {
    /// Sinks to remove, by name.
    removed: Vec<String>,
    /// `(replaces a running one, name, the built sink)`.
    built: Vec<(bool, String, Sink)>,
}

/// Builds every sink of `new` that is not running unchanged in `old` (opening its file and
/// checking its query) and lists the ones to remove. Changes nothing.
pub fn prepare_reload(
    hub: &Arc<Hub>,
    old: &[SinkConfig],
    new: &[SinkConfig],
) -> Result<SinkPlan, std::io::Error> {
    let mut built = Vec::new();
    for config in new {
        match old.iter().find(|o| o.name == config.name) {
            Some(o) if o == config => {}
            previous => {
                let sink = Sink::new(config, &hub.dialects).map_err(std::io::Error::other)?;
                crate::query::parse_pairs(&config.query, &hub.keys, &hub.current().query_limits())
                    .map_err(|e| std::io::Error::other(format!("sink `{}`: query: {e}", config.name)))?;
                built.push((previous.is_some(), config.name.clone(), sink));
            }
        }
    }
    let removed =
        old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)).map(|o| o.name.clone()).collect();
    Ok(SinkPlan { removed, built })
}

/// Puts a [`SinkPlan`] in force: a removed sink's tap writes what it was queued, flushes and
/// closes its file; an added one starts; a changed one is replaced in one index generation
/// (each event is written by exactly one of the two, the old one finishing before the new
/// one's first line), so a file both name is written in order. Returns what changed.
pub async fn commit_reload(hub: &Arc<Hub>, plan: SinkPlan) -> Result<Vec<String>, std::io::Error> {
    let mut changes = Vec::new();
    for name in plan.removed {
        hub.remove_tap(&format!("sink:{name}")).await.map_err(std::io::Error::other)?;
        tracing::info!(sink = %name, "sink removed");
        changes.push(format!("removed sink {name}"));
    }
    for (changed, name, sink) in plan.built {
        if changed {
            hub.replace_tap(&format!("sink:{name}"), Box::new(sink)).await.map_err(std::io::Error::other)?;
            changes.push(format!("changed sink {name}"));
        } else {
            hub.add_tap(Box::new(sink)).await.map_err(std::io::Error::other)?;
            changes.push(format!("added sink {name}"));
        }
        tracing::info!(sink = %name, "sink started");
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<SinkConfig>, String> {
        #[derive(Deserialize)]
        struct T {
            sink: Vec<SinkConfig>,
        }
        toml::from_str::<T>(toml_text).map(|t| t.sink).map_err(|e| e.to_string())
    }

    #[test]
    fn tables_parse_and_validate() {
        let s = parse(
            r#"
            [[sink]]
            name = "errors"
            kind = "file"
            path = "/var/log/livetap/errors.log"
            query = "level=error"
            format = "text"
            rotate-bytes = "10MiB"
            rotate-daily = true
            keep = 3

            [[sink]]
            name = "journal"
            kind = "stdout"
            "#,
        )
        .unwrap();
        assert_eq!(s[0].rotate_bytes, Some(Size(10 << 20)));
        assert_eq!(s[0].file_settings().unwrap().keep, 3);
        assert_eq!(s[1].format, SinkFormat::Ndjson);
        validate_all(&s).unwrap();
        assert_eq!(Size::parse("4096"), Some(Size(4096)));
        assert_eq!(Size::parse("64 KiB"), Some(Size(65536)));
        assert_eq!(Size::parse("1G"), Some(Size(1 << 30)));
        assert_eq!(Size::parse("1T"), None);
        assert_eq!(Size::parse("MiB"), None);
    }

    #[test]
    fn bad_tables_are_refused_with_their_line_or_the_fix() {
        let e = parse("[[sink]]\nname = \"a\"\nkind = \"syslog\"\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("syslog"), "{e}");
        let e = parse("[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"/x\"\nrotate = 5\n").unwrap_err();
        assert!(e.contains("line 5") && e.contains("rotate"), "{e}");
        let e = parse("[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"/x\"\nrotate-bytes = \"9X\"\n")
            .unwrap_err();
        assert!(e.contains("line 5"), "{e}");
        let cases = [
            ("name = \"a b\"\nkind = \"stdout\"", "must start with a letter"),
            ("name = \"a\"\nkind = \"file\"", "needs path"),
            ("name = \"a\"\nkind = \"stdout\"\npath = \"/x\"", "path is for kind = \"file\""),
            ("name = \"a\"\nkind = \"stdout\"\nkeep = 2", "keep is for kind"),
            (
                "name = \"a\"\nkind = \"file\"\npath = \"/x\"\njournal-priority = \"always\"",
                "journal-priority",
            ),
            ("name = \"a\"\nkind = \"file\"\npath = \"/x\"\nrotate-bytes = 10", "at least 1024"),
            ("name = \"a\"\nkind = \"stdout\"\nformat = \"text\"\ndialect = \"full\"", "dialect is for"),
        ];
        for (body, want) in cases {
            let s = parse(&format!("[[sink]]\n{body}\n")).unwrap();
            let e = validate_all(&s).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
        let two =
            parse("[[sink]]\nname = \"a\"\nkind = \"stdout\"\n[[sink]]\nname = \"a\"\nkind = \"stdout\"\n")
                .unwrap();
        assert!(validate_all(&two).unwrap_err().contains("two sinks are named"));
    }

    #[test]
    fn an_unwritable_path_is_refused_with_the_fix() {
        let dialects = crate::event::dialect::Dialects::default();
        let guard = tempfile::tempdir().unwrap();
        let base = guard.path();
        let mut c = parse("[[sink]]\nname = \"a\"\nkind = \"file\"\npath = \"/x\"\n").unwrap().remove(0);
        c.path = Some(base.join("missing/dir/x.log"));
        let e = Sink::new(&c, &dialects).err().unwrap().to_string();
        assert!(e.contains("mkdir -p") && e.contains("missing/dir"), "{e}");
        std::fs::write(base.join("file"), "").unwrap();
        c.path = Some(base.join("file/x.log"));
        let e = Sink::new(&c, &dialects).err().unwrap().to_string();
        assert!(e.contains("is a file, not a directory"), "{e}");
        c.path = Some(base.to_path_buf());
        let e = Sink::new(&c, &dialects).err().unwrap().to_string();
        assert!(e.contains("is a directory"), "{e}");
        c.dialect = Some("nope".into());
        c.path = Some(base.join("ok.log"));
        let e = Sink::new(&c, &dialects).err().unwrap().to_string();
        assert!(e.contains("unknown dialect `nope`"), "{e}");
    }
}
