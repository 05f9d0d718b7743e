//! One webhook's on-disk spool: append-only segment files of checksummed records, batches
//! closed by "cut" records, an acknowledgement cursor, and the size cap.
//!
//! The tap's thread is the only writer ([`Spool::append_event`], [`Spool::cut`],
//! [`Spool::flush`]); the webhook's sender task reads closed batches from the files
//! ([`read_batch`]) and acknowledges them ([`Spool::ack`]). Both go through one
//! `Mutex<Spool>`, held only for bookkeeping and the writer's appends, never across a request.
//!
//! **Files.** `data-dir/webhooks/<name>/` holds segments named by a 20-digit number
//! (`00000000000000000003.seg`) and `ack`, the cursor: the segment and byte offset of the first
//! batch not yet acknowledged, replaced atomically (write, rename) after each acknowledgement.
//! A record is `len: u32 LE`, `crc32: u32 LE` (of the kind byte and the payload), `kind: u8`,
//! then `len` payload bytes. An event record's payload is its sequence number (`u64 LE`)
//! and its JSON; a cut record's is the time it was cut (Unix milliseconds, `u64 LE`). A batch
//! is every event record after the previous cut up to the next one, so batches are the same
//! on every restart and a resent batch carries the same events (and idempotency key).
//!
//! **Crashes.** At start-up every segment is scanned: a record that is cut short or whose
//! checksum fails ends the segment there and the file is truncated (a torn append after
//! `kill -9` or a power loss); events after the last cut are closed into a batch by a new cut
//! record, so they are sent rather than lost. A new segment starts only right after a cut, so
//! a segment holds whole batches, and one whose batches are all acknowledged is deleted.
//!
//! **Cap.** Past `max-spool-bytes` on disk, the oldest segments are deleted whole (with their
//! unacknowledged batches, counted as dropped); segments are about an eighth of the cap, so at
//! most about that much more than needed is dropped.

use super::Counters;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Record kind: one event.
const EVENT: u8 = 1;
/// Record kind: the end of a batch.
const CUT: u8 = 2;
/// Length, checksum and kind.
const HEADER: usize = 9;
/// Largest record accepted when reading (an event is far smaller; a larger length is damage).
const MAX_RECORD: u32 = 64 << 20;

/// When appended records are forced to disk (`fsync` in a `[[webhook]]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fsync {
    /// After every append group (what the tap's thread took from its queue at once): a power
    /// loss loses at most the events not yet taken from the tap's queue.
    #[default]
    Always,
    /// When a batch is closed: a power loss may also lose the open batch. A crash of livetap
    /// alone loses nothing written (the kernel keeps it).
    Batch,
    /// Never: the kernel writes when it likes. A crash of livetap alone still loses nothing
    /// written; a power loss may lose several seconds.
    Never,
}

/// Batching and size settings of a spool.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Most events in one batch.
    pub max_events: usize,
    /// Most body bytes in one batch (the events' JSON and the format's separators).
    pub max_bytes: usize,
    /// Longest an open batch waits for more events before it is closed.
    pub max_delay: Duration,
    /// Most bytes of segment files on disk.
    pub max_spool_bytes: u64,
    /// When appends reach the disk.
    pub fsync: Fsync,
}

impl SpoolSettings {
    /// Size at which a new segment starts (after the next cut).
    fn segment_bytes(&self) -> u64 {
        (self.max_spool_bytes / 8).clamp(4 << 10, 64 << 20)
    }
}

/// Why a spool could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

/// A segment's bookkeeping.
#[derive(Debug, Clone)]
struct Segment {
    number: u64,
    /// Bytes in the file (what was written; the writer's pending bytes are not counted).
    len: u64,
    /// End of the last cut record written: batches before it can be sent.
    closed: u64,
    /// Events in closed batches.
    events: u64,
    /// Of those, events acknowledged (or skipped).
    acked: u64,
}

/// A closed batch the sender may send next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRef {
    /// Its segment file.
    pub path: PathBuf,
    /// The segment's number.
    pub segment: u64,
    /// Where the batch starts.
    pub offset: u64,
    /// Where the segment's closed batches end (reading stops there at the latest).
    pub closed: u64,
}

/// A batch read from a segment: its events' JSON and ids, where it ends, when it was cut.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events' JSON, one after the other.
    pub data: Vec<u8>,
    /// Each event's sequence number and its bytes in `data`.
    pub events: Vec<(u64, Range<usize>)>,
    /// The offset after the batch's cut record.
    pub end: u64,
    /// When the batch was cut (Unix milliseconds).
    pub cut_ms: u64,
}

impl Batch {
    /// The events' JSON, in order.
    pub fn jsons(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.events.iter().map(|(_, r)| &self.data[r.clone()])
    }

    /// The public ids of its first and last events (`seq + 1`).
    pub fn id_range(&self) -> (u64, u64) {
        let first = self.events.first().map_or(0, |e| e.0 + 1);
        let last = self.events.last().map_or(0, |e| e.0 + 1);
        (first, last)
    }
}

/// What opening a spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Bytes cut off torn or damaged tails.
    pub torn_bytes: u64,
    /// Events after the last cut, closed into a batch.
    pub closed_tail: u64,
    /// Events spooled and not yet acknowledged.
    pub pending_events: u64,
}

/// The spool of one webhook.
pub struct Spool {
    dir: PathBuf,
    settings: SpoolSettings,
    counters: Arc<Counters>,
    /// The active (last) segment, opened for appending.
    file: File,
    segments: VecDeque<Segment>,
    /// Records built but not yet written (one append group).
    pending: Vec<u8>,
    /// A cut in `pending`: the active segment's closed offset and closed events after writing.
    pending_closed: Option<(u64, u64)>,
    /// Events appended since the last cut (written or pending).
    open_events: u64,
    /// Body bytes of the open batch.
    open_bytes: usize,
    /// When the open batch got its first event.
    open_since: Option<Instant>,
    /// Events of closed batches in the active segment, counting pending cuts.
    active_closed_events: u64,
    /// The acknowledgement cursor: segment number and offset.
    cursor: (u64, u64),
    /// Events dropped under the cap since the writer last asked ([`Spool::take_dropped`]).
    dropped_unreported: u64,
    /// Event records in `pending`.
    pending_events: u64,
    /// How many events the format adds bytes for (the separators of a batch).
    per_event_overhead: usize,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn push_record(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// One record read from a segment.
enum Read_ {
    Event(u64, Range<usize>),
    Cut(u64),
    /// Cut short, damaged, or the end of the file.
    End,
}

/// Reads the next record from `r` into `buf` (appending the event JSON to it).
fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<(Read_, u64)> {
    let mut head = [0u8; HEADER];
    if let Err(e) = r.read_exact(&mut head) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok((Read_::End, 0)) } else { Err(e) };
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let kind = head[8];
    if !(8..=MAX_RECORD).contains(&len) || !(kind == EVENT || kind == CUT) {
        return Ok((Read_::End, 0));
    }
    let start = buf.len();
    buf.resize(start + len as usize, 0);
    if let Err(e) = r.read_exact(&mut buf[start..]) {
        buf.truncate(start);
        return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok((Read_::End, 0)) } else { Err(e) };
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(&buf[start..]);
    if h.finalize() != crc {
        buf.truncate(start);
        return Ok((Read_::End, 0));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&buf[start..start + 8]);
    let number = u64::from_le_bytes(n);
    let size = HEADER as u64 + len as u64;
    if kind == CUT {
        buf.truncate(start);
        return Ok((Read_::Cut(number), size));
    }
    // Keep only the JSON: move it over the sequence number.
    buf.copy_within(start + 8.., start);
    buf.truncate(buf.len() - 8);
    Ok((Read_::Event(number, start..buf.len()), size))
}

/// Reads the batch at `at` into `batch` (its buffers are reused). `None` when no complete
/// batch is there (the segment was cut short by the cap meanwhile, or is damaged).
pub fn read_batch(at: &BatchRef, batch: &mut Batch) -> std::io::Result<Option<()>> {
    batch.data.clear();
    batch.events.clear();
    let mut f = File::open(&at.path)?;
    f.seek(SeekFrom::Start(at.offset))?;
    let mut r = BufReader::with_capacity(256 << 10, f.take(at.closed.saturating_sub(at.offset)));
    let mut pos = at.offset;
    loop {
        match read_record(&mut r, &mut batch.data)? {
            (Read_::Event(seq, range), size) => {
                batch.events.push((seq, range));
                pos += size;
            }
            (Read_::Cut(ms), size) => {
                batch.end = pos + size;
                batch.cut_ms = ms;
                return Ok(Some(()));
            }
            (Read_::End, _) => return Ok(None),
        }
    }
}

/// What scanning one segment found.
struct Scan {
    /// End of the last good record.
    valid: u64,
    /// End of the last cut.
    closed: u64,
    /// Events in closed batches.
    events: u64,
    /// Events in closed batches ending at or before `acked_before`.
    acked: u64,
    /// Events after the last cut.
    tail: u64,
}

fn scan(path: &Path, acked_before: u64) -> std::io::Result<Scan> {
    let mut r = BufReader::with_capacity(256 << 10, File::open(path)?);
    let mut s = Scan { valid: 0, closed: 0, events: 0, acked: 0, tail: 0 };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_record(&mut r, &mut buf)? {
            (Read_::Event(..), size) => {
                s.valid += size;
                s.tail += 1;
            }
            (Read_::Cut(_), size) => {
                s.valid += size;
                s.closed = s.valid;
                s.events += s.tail;
                if s.closed <= acked_before {
                    s.acked += s.tail;
                }
                s.tail = 0;
            }
            (Read_::End, _) => return Ok(s),
        }
    }
}

impl Spool {
    /// Takes new batching and size settings (a configuration reload changed the webhook):
    /// the open batch and every closed one stay as they are; the next cut and the cap use
    /// these.
    pub fn set_settings(&mut self, settings: SpoolSettings, per_event_overhead: usize) {
        self.settings = settings;
        self.per_event_overhead = per_event_overhead;
    }

    /// Opens (or creates) the spool in `dir`, repairing what a crash left (see the module
    /// docs). `per_event_overhead` is the body bytes the format adds per event.
    pub fn open(
        dir: &Path,
        settings: SpoolSettings,
        counters: Arc<Counters>,
        per_event_overhead: usize,
    ) -> Result<(Spool, Recovered), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
            if let Ok(n) = stem.parse::<u64>() {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let ack_path = dir.join("ack");
        let cursor = std::fs::read_to_string(&ack_path)
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(str::parse::<u64>);
                Some((it.next()?.ok()?, it.next()?.ok()?))
            })
            .unwrap_or((numbers.first().copied().unwrap_or(0), 0));
        let mut rec = Recovered::default();
        let mut segments = VecDeque::new();
        for n in numbers {
            let path = segment_path(dir, n);
            if n < cursor.0 {
                // Acknowledged entirely before the crash; its deletion did not happen.
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let acked_before = if n == cursor.0 { cursor.1 } else { 0 };
            let s = scan(&path, acked_before).map_err(io_err(&path))?;
            let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            let mut seg =
                Segment { number: n, len: s.valid, closed: s.closed, events: s.events, acked: s.acked };
            if s.valid < len {
                rec.torn_bytes += len - s.valid;
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(s.valid).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            if s.tail > 0 {
                let mut cut = Vec::new();
                push_record(&mut cut, CUT, &[&now_ms().to_le_bytes()]);
                let mut f = OpenOptions::new().append(true).open(&path).map_err(io_err(&path))?;
                f.write_all(&cut).map_err(io_err(&path))?;
                f.sync_data().map_err(io_err(&path))?;
                seg.len += cut.len() as u64;
                seg.closed = seg.len;
                seg.events += s.tail;
                rec.closed_tail += s.tail;
            }
            rec.pending_events += seg.events - seg.acked;
            segments.push_back(seg);
        }
        let mut cursor = cursor;
        match segments.front() {
            Some(first)
                if first.number > cursor.0 || (first.number == cursor.0 && cursor.1 > first.closed) =>
            {
                // The cursor points at a deleted segment or past what survived: start at the
                // oldest batch that is there.
                cursor = (first.number, if first.number == cursor.0 { first.closed } else { 0 });
            }
            _ => {}
        }
        let next = segments.back().map_or(cursor.0, |s| s.number + 1);
        // Appends always go to a fresh segment after a restart: the old ones are closed.
        let path = segment_path(dir, next);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let existing = file.metadata().map_err(io_err(&path))?.len();
        segments.push_back(Segment { number: next, len: existing, closed: existing, events: 0, acked: 0 });
        if segments.len() == 1 && cursor.0 != next {
            cursor = (next, 0);
        }
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            settings,
            counters,
            file,
            segments,
            pending: Vec::with_capacity(64 << 10),
            pending_closed: None,
            open_events: 0,
            open_bytes: 0,
            open_since: None,
            active_closed_events: 0,
            cursor,
            dropped_unreported: 0,
            pending_events: 0,
            per_event_overhead,
        };
        // Segments acknowledged to their end before the crash go now.
        spool.collect()?;
        Ok((spool, rec))
    }

    fn active(&mut self) -> &mut Segment {
        // `open` always leaves one segment and nothing removes the last.
        self.segments.back_mut().expect("a spool always has an active segment")
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum::<u64>() + self.pending.len() as u64
    }

    fn publish_size(&self) {
        self.counters.spooled_bytes.store(self.total_bytes(), Ordering::Relaxed);
    }

    /// Appends one event (its public id is `seq + 1`; `json` is its webhook-shape object),
    /// closing the open batch first when the event would take it past `max-bytes`, and after
    /// it when it reaches `max-events`. Nothing is written until [`Spool::flush`] (or a cut
    /// that starts a new segment).
    pub fn append_event(&mut self, seq: u64, json: &[u8]) -> Result<(), SpoolError> {
        let size = json.len() + self.per_event_overhead;
        if self.open_events > 0 && self.open_bytes + size > self.settings.max_bytes {
            self.cut()?;
        }
        push_record(&mut self.pending, EVENT, &[&seq.to_le_bytes(), json]);
        self.open_events += 1;
        self.open_bytes += size;
        if self.open_since.is_none() {
            self.open_since = Some(Instant::now());
        }
        self.pending_events += 1;
        if self.open_events >= self.settings.max_events as u64 {
            self.cut()?;
        }
        Ok(())
    }

    /// Closes the open batch (if it has events). When the active segment is past its size,
    /// the appends are written and a new segment starts.
    pub fn cut(&mut self) -> Result<(), SpoolError> {
        if self.open_events == 0 {
            return Ok(());
        }
        push_record(&mut self.pending, CUT, &[&now_ms().to_le_bytes()]);
        self.active_closed_events += self.open_events;
        let closed = self.active().len + self.pending.len() as u64;
        self.pending_closed = Some((closed, self.active_closed_events));
        self.open_events = 0;
        self.open_bytes = 0;
        self.open_since = None;
        if closed >= self.settings.segment_bytes() {
            self.write_pending(true)?;
            self.roll()?;
        }
        Ok(())
    }

    /// Closes the open batch when it has waited `max-delay`. True when it did.
    pub fn cut_if_due(&mut self) -> Result<bool, SpoolError> {
        match self.open_since {
            Some(t) if t.elapsed() >= self.settings.max_delay => {
                self.cut()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes what was appended (one write), forces it to disk as the fsync policy says, and
    /// applies the cap. True when a batch was closed, so the sender has something new.
    pub fn flush(&mut self) -> Result<bool, SpoolError> {
        let closed = self.pending_closed.is_some();
        if !self.pending.is_empty() {
            let sync = match self.settings.fsync {
                Fsync::Always => true,
                Fsync::Batch => closed,
                Fsync::Never => false,
            };
            self.write_pending(sync)?;
        }
        self.enforce_cap()?;
        Ok(closed)
    }

    fn write_pending(&mut self, sync: bool) -> Result<(), SpoolError> {
        let number = self.active().number;
        let path = segment_path(&self.dir, number);
        if let Err(e) = self.file.write_all(&self.pending) {
            // A partial write (a full disk) is taken back, so the segment holds whole records
            // and the next flush tries the same records again.
            let len = self.active().len;
            let _ = self.file.set_len(len);
            return Err(io_err(&path)(e));
        }
        if sync {
            self.file.sync_data().map_err(io_err(&path))?;
        }
        let written = self.pending.len() as u64;
        self.pending.clear();
        // Counted once written, so a reader that sees the count knows the events are in the
        // file (in the kernel's hands, and on disk as the fsync policy says).
        self.counters.spooled_events.fetch_add(std::mem::take(&mut self.pending_events), Ordering::Relaxed);
        let pending_closed = self.pending_closed.take();
        let seg = self.active();
        seg.len += written;
        if let Some((closed, events)) = pending_closed {
            seg.closed = closed;
            seg.events = events;
        }
        self.publish_size();
        Ok(())
    }

    /// Starts a new segment (called right after a cut was written).
    fn roll(&mut self) -> Result<(), SpoolError> {
        let next = self.active().number + 1;
        let path = segment_path(&self.dir, next);
        self.file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        self.segments.push_back(Segment { number: next, len: 0, closed: 0, events: 0, acked: 0 });
        self.active_closed_events = 0;
        self.collect()
    }

    /// Deletes the oldest segments while the spool is over its cap, counting their
    /// unacknowledged events as dropped.
    fn enforce_cap(&mut self) -> Result<(), SpoolError> {
        while self.total_bytes() > self.settings.max_spool_bytes && self.segments.len() > 1 {
            let Some(old) = self.segments.pop_front() else { break };
            let dropped = old.events.saturating_sub(old.acked);
            self.dropped_unreported += dropped;
            self.counters.dropped_events.fetch_add(dropped, Ordering::Relaxed);
            if self.cursor.0 <= old.number {
                let next = self.segments.front().map_or(old.number + 1, |s| s.number);
                self.cursor = (next, 0);
                self.write_cursor();
            }
            let path = segment_path(&self.dir, old.number);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        self.publish_size();
        Ok(())
    }

    /// Events dropped under the cap since the last call (for the `telemetry.webhook-error`
    /// event the writer publishes).
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped_unreported)
    }

    /// The next closed batch to send, if any.
    pub fn next_batch(&self) -> Option<BatchRef> {
        let seg = self.segments.iter().find(|s| s.number == self.cursor.0)?;
        (seg.closed > self.cursor.1).then(|| BatchRef {
            path: segment_path(&self.dir, seg.number),
            segment: seg.number,
            offset: self.cursor.1,
            closed: seg.closed,
        })
    }

    /// Marks the batch at `at`, which ends at `end` and holds `events` events, as done
    /// (delivered or refused for good). A batch the cap dropped meanwhile is ignored.
    pub fn ack(&mut self, at: &BatchRef, end: u64, events: u64) {
        if self.cursor != (at.segment, at.offset) {
            return;
        }
        self.cursor.1 = end;
        if let Some(seg) = self.segments.iter_mut().find(|s| s.number == at.segment) {
            seg.acked += events;
        }
        if let Err(e) = self.collect() {
            tracing::warn!(error = %e, "webhook spool: cannot delete an acknowledged segment");
        }
        self.write_cursor();
    }

    /// Deletes acknowledged segments that are no longer written to, moving the cursor on.
    fn collect(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 {
            let front = &self.segments[0];
            if !(self.cursor.0 > front.number
                || (self.cursor.0 == front.number && self.cursor.1 >= front.closed))
            {
                break;
            }
            let number = front.number;
            self.segments.pop_front();
            if self.cursor.0 <= number {
                self.cursor = (self.segments[0].number, 0);
            }
            let path = segment_path(&self.dir, number);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        self.publish_size();
        Ok(())
    }

    /// Replaces the `ack` file. Not forced to disk: an older cursor after a power loss only
    /// means batches sent again, which at-least-once delivery allows.
    fn write_cursor(&self) {
        let tmp = self.dir.join("ack.tmp");
        let text = format!("{} {}\n", self.cursor.0, self.cursor.1);
        let r = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, self.dir.join("ack")));
        if let Err(e) = r {
            tracing::warn!(dir = %self.dir.display(), error = %e, "webhook spool: cannot write the ack cursor");
        }
    }

    /// Segment numbers on disk (tests).
    #[cfg(test)]
    fn segment_numbers(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.number).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_events: usize, max_spool: u64) -> SpoolSettings {
        SpoolSettings {
            max_events,
            max_bytes: 1 << 20,
            max_delay: Duration::from_secs(3600),
            max_spool_bytes: max_spool,
            fsync: Fsync::Always,
        }
    }

    fn open(dir: &Path, s: SpoolSettings) -> (Spool, Recovered) {
        Spool::open(dir, s, Arc::new(Counters::default()), 1).unwrap()
    }

    fn drain(spool: &mut Spool) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        let mut b = Batch::default();
        while let Some(at) = spool.next_batch() {
            read_batch(&at, &mut b).unwrap().expect("a complete batch");
            out.push(b.events.iter().map(|e| e.0).collect());
            spool.ack(&at, b.end, b.events.len() as u64);
        }
        out
    }

    #[test]
    fn batches_are_cut_by_count_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), settings(3, 1 << 30));
        for seq in 0..7 {
            s.append_event(seq, format!("{{\"id\":\"{}\"}}", seq + 1).as_bytes()).unwrap();
        }
        assert!(s.flush().unwrap());
        let mut b = Batch::default();
        let at = s.next_batch().unwrap();
        read_batch(&at, &mut b).unwrap().unwrap();
        assert_eq!(
            b.jsons().collect::<Vec<_>>(),
            [&b"{\"id\":\"1\"}"[..], b"{\"id\":\"2\"}", b"{\"id\":\"3\"}"]
        );
        assert_eq!(b.id_range(), (1, 3));
        assert_eq!(drain(&mut s), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        // The seventh waits in the open batch until a cut.
        s.cut().unwrap();
        s.flush().unwrap();
        assert_eq!(drain(&mut s), vec![vec![6]]);
    }

    #[test]
    fn batches_are_cut_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(1000, 1 << 30);
        st.max_bytes = 25;
        let (mut s, _) = open(dir.path(), st);
        for seq in 0..5 {
            s.append_event(seq, b"0123456789").unwrap();
        }
        s.cut().unwrap();
        s.flush().unwrap();
        // 11 bytes each with the separator: two fit in 25.
        assert_eq!(drain(&mut s), vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn torn_tail_is_cut_and_unclosed_events_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = open(dir.path(), settings(2, 1 << 30));
            for seq in 0..5 {
                s.append_event(seq, b"{\"e\":1}").unwrap();
            }
            s.flush().unwrap();
        }
        // Half a record at the end, as a crash during a write leaves.
        let seg = segment_path(dir.path(), 0);
        let mut half = Vec::new();
        push_record(&mut half, EVENT, &[&9u64.to_le_bytes(), b"{\"torn\":true}"]);
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(&half[..half.len() - 4]).unwrap();
        let (mut s, rec) = open(dir.path(), settings(2, 1 << 30));
        assert_eq!(rec.torn_bytes, (half.len() - 4) as u64);
        assert_eq!(rec.closed_tail, 1);
        assert_eq!(rec.pending_events, 5);
        assert_eq!(drain(&mut s), vec![vec![0, 1], vec![2, 3], vec![4]]);
        // A damaged checksum ends the segment too.
        drop(s);
        let (mut s, _) = open(dir.path(), settings(2, 1 << 30));
        s.append_event(20, b"{\"x\":1}").unwrap();
        s.cut().unwrap();
        s.flush().unwrap();
        let active = segment_path(dir.path(), *s.segment_numbers().last().unwrap());
        drop(s);
        let mut bytes = std::fs::read(&active).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&active, &bytes).unwrap();
        let (mut s, rec) = open(dir.path(), settings(2, 1 << 30));
        assert!(rec.torn_bytes > 0);
        // The cut record was damaged: its event is closed into a batch again.
        assert_eq!(rec.closed_tail, 1);
        assert_eq!(drain(&mut s), vec![vec![20]]);
    }

    #[test]
    fn acknowledged_batches_survive_a_restart_as_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = open(dir.path(), settings(1, 1 << 30));
            for seq in 0..3 {
                s.append_event(seq, b"{}").unwrap();
            }
            s.flush().unwrap();
            let at = s.next_batch().unwrap();
            let mut b = Batch::default();
            read_batch(&at, &mut b).unwrap().unwrap();
            s.ack(&at, b.end, 1);
        }
        let (mut s, rec) = open(dir.path(), settings(1, 1 << 30));
        assert_eq!(rec.pending_events, 2);
        assert_eq!(drain(&mut s), vec![vec![1], vec![2]]);
    }

    #[test]
    fn segments_roll_and_are_deleted_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        // Segments of 64 KiB (an eighth of the cap); batches of 100 events of 1 KiB.
        let (mut s, _) = open(dir.path(), settings(100, 512 << 10));
        let json = vec![b'x'; 1000];
        for seq in 0..300 {
            s.append_event(seq, &json).unwrap();
        }
        s.flush().unwrap();
        assert!(s.segment_numbers().len() >= 3, "{:?}", s.segment_numbers());
        let files = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
                .count()
        };
        assert_eq!(files(), s.segment_numbers().len());
        let batches = drain(&mut s);
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.concat(), (0..300).collect::<Vec<_>>());
        // Everything acknowledged: only the active segment is left.
        assert_eq!(s.segment_numbers().len(), 1);
        assert_eq!(files(), 1);
    }

    #[test]
    fn past_the_cap_the_oldest_batches_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(Counters::default());
        // A cap of 512 KiB: segments of 64 KiB.
        let (mut s, _) = Spool::open(dir.path(), settings(10, 512 << 10), counters.clone(), 1).unwrap();
        let json = vec![b'y'; 1000];
        for seq in 0..2000 {
            s.append_event(seq, &json).unwrap();
            if seq % 50 == 0 {
                s.flush().unwrap();
            }
        }
        s.cut().unwrap();
        s.flush().unwrap();
        assert!(s.total_bytes() <= 512 << 10, "{}", s.total_bytes());
        let dropped = counters.dropped_events.load(Ordering::Relaxed);
        assert!(dropped > 0);
        assert_eq!(s.take_dropped(), dropped);
        assert_eq!(s.take_dropped(), 0);
        let batches = drain(&mut s);
        let kept: Vec<u64> = batches.concat();
        // The newest events are kept, in order, and kept + dropped is everything.
        assert_eq!(kept.len() as u64 + dropped, 2000);
        assert_eq!(*kept.last().unwrap(), 1999);
        assert!(kept.windows(2).all(|w| w[0] + 1 == w[1]));
    }
}
