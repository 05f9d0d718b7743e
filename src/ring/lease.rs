//! The sequence lease: keeps event ids unique and increasing across restarts, crashes included.
//!
//! Event ids are ring positions. With a data directory, livetap writes the position up to
//! which ids are *reserved* to `DATA_DIR/sequence` before handing any of them out, a block of
//! [`LEASE_BLOCK`] at a time (written to a temporary file, synced and renamed). A restart
//! starts after the last reservation, so a client resuming with an id from before a crash, or
//! history written before it, never meets the same id twice.
//!
//! Skipped ids must not be counted as lost events: a resuming client's `gap` frame says how
//! many events it missed. So the lease also records which ids were handed out:
//! - a clean stop writes the first id it did not hand out (`stopped-at N`, the second line of
//!   `DATA_DIR/sequence`), and the next run starts there: nothing is skipped;
//! - while running, the hub writes the first unused id to `DATA_DIR/sequence-used` about once
//!   a second (a hint, not synced: an older value is still a correct lower bound);
//! - after a crash, the ids from that hint up to the reservation may or may not have been
//!   handed out; the range is appended to `DATA_DIR/unknown-ids` and reported as such
//!   ([`SeqLease::unknown_ids`]), so the gap frame says its count is not exact instead of
//!   inventing one.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Ids reserved per write. At 1,000,000 events per second this is one small write a second.
pub const LEASE_BLOCK: u64 = 1 << 20;

/// Most unknown-id ranges kept (one per crash); older ones are dropped, which can only make an
/// old gap's count larger, never smaller.
pub const MAX_UNKNOWN_RANGES: usize = 1024;

/// The reservation file of one data directory.
#[derive(Debug)]
pub struct SeqLease {
    path: PathBuf,
    reserved: u64,
    /// Ranges of ids that earlier runs reserved and may not have handed out (crashes), sorted
    /// and disjoint.
    unknown: Vec<Range<u64>>,
    /// The last value written to `sequence-used`.
    marked: u64,
}

fn invalid(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{} {what}; remove it only if no events were kept", path.display()),
    )
}

/// Writes `text` to `path` through a temporary file and a rename, synced when `sync`.
fn replace_file(path: &Path, text: &str, sync: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        if sync {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        if let Some(dir) = path.parent() {
            // The rename itself must survive a power cut, or the old file comes back.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    Ok(())
}

/// Sorts and merges overlapping or touching ranges.
fn normalise(ranges: &mut Vec<Range<u64>>) {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    *ranges = out;
}

impl SeqLease {
    /// Reads the last reservation in `dir` (0 when there is none) and returns the lease with
    /// the first id this run may use: where a clean stop left off, or else after the last
    /// reservation; in both cases at least `at_least` (such as the history store's next
    /// sequence number). After a crash the ids that may have gone unused are recorded
    /// ([`SeqLease::unknown_ids`]). Nothing is reserved yet; call [`SeqLease::extend`] before
    /// publishing.
    pub fn open(dir: &Path, at_least: u64) -> std::io::Result<(SeqLease, u64)> {
        let path = dir.join("sequence");
        let (previous, stopped_at) = match std::fs::read_to_string(&path) {
            Ok(s) => {
                let mut lines = s.lines();
                let reserved = lines
                    .next()
                    .and_then(|l| l.trim().parse::<u64>().ok())
                    .ok_or_else(|| invalid(&path, "does not hold a sequence number"))?;
                let stopped = match lines.next().map(str::trim) {
                    None | Some("") => None,
                    Some(l) => Some(
                        l.strip_prefix("stopped-at ")
                            .and_then(|n| n.trim().parse::<u64>().ok())
                            .filter(|&n| n <= reserved)
                            .ok_or_else(|| invalid(&path, "has a second line that is not `stopped-at N`"))?,
                    ),
                };
                (reserved, stopped)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
            Err(e) => return Err(e),
        };
        let unknown_path = dir.join("unknown-ids");
        let mut unknown = read_ranges(&unknown_path);
        let start = match stopped_at {
            Some(stopped) => stopped.max(at_least),
            None => {
                let start = previous.max(at_least);
                // The last run crashed (or never wrote a stop): ids from its last hint on may
                // not have been handed out. The hint is only a lower bound of what was.
                let used = std::fs::read_to_string(dir.join("sequence-used"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0)
                    .max(at_least);
                if previous > 0 && used < start {
                    unknown.push(used..start);
                    normalise(&mut unknown);
                    if unknown.len() > MAX_UNKNOWN_RANGES {
                        unknown.drain(..unknown.len() - MAX_UNKNOWN_RANGES);
                    }
                    let text: String = unknown.iter().map(|r| format!("{} {}\n", r.start, r.end)).collect();
                    replace_file(&unknown_path, &text, true)?;
                }
                start
            }
        };
        let mut lease = SeqLease { path, reserved: start, unknown, marked: 0 };
        // Everything below `start` is now accounted for (handed out, or in `unknown-ids`).
        lease.mark_used(start);
        Ok((lease, start))
    }

    /// Ranges of ids that earlier runs may not have handed out (after crashes), sorted and
    /// disjoint: a resume does not count them as missed events, and says its count is not
    /// exact where its gap overlaps them.
    pub fn unknown_ids(&self) -> &[Range<u64>] {
        &self.unknown
    }

    /// Records that every id below `next` was handed out (or accounted for), as a hint for the
    /// next start after a crash. Not synced, and skipped when nothing changed: an older value
    /// is still a correct lower bound.
    pub fn mark_used(&mut self, next: u64) {
        if next == self.marked {
            return;
        }
        if let Some(dir) = self.path.parent() {
            if replace_file(&dir.join("sequence-used"), &format!("{next}\n"), false).is_ok() {
                self.marked = next;
            }
        }
    }

    /// Records a clean stop: ids from `next` on were not handed out, so the next run starts
    /// there. Written synced, with the reservation, so a crash afterwards still finds both.
    pub fn stop(&mut self, next: u64) -> std::io::Result<()> {
        let next = next.min(self.reserved);
        replace_file(&self.path, &format!("{}\nstopped-at {next}\n", self.reserved), true)
    }

    /// The first id not yet reserved.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Makes sure ids up to `head + LEASE_BLOCK / 2` are reserved on disk, writing a new
    /// reservation of `head + LEASE_BLOCK` when they are not. Cheap when nothing is needed.
    pub fn extend(&mut self, head: u64) -> std::io::Result<()> {
        if head.saturating_add(LEASE_BLOCK / 2) <= self.reserved {
            return Ok(());
        }
        let next = head.saturating_add(LEASE_BLOCK);
        // One line: a running hub has no clean stop to report.
        replace_file(&self.path, &format!("{next}\n"), true)?;
        self.reserved = next;
        Ok(())
    }
}

/// Reads `unknown-ids` (`start end` per line); unreadable lines are skipped, since the file
/// only refines gap counts.
fn read_ranges(path: &Path) -> Vec<Range<u64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<Range<u64>> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|n| n.parse::<u64>().ok());
            Some(it.next()??..it.next()??)
        })
        .collect();
    normalise(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_survive_and_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lease, start) = SeqLease::open(dir.path(), 0).unwrap();
        assert_eq!(start, 0);
        lease.extend(0).unwrap();
        assert_eq!(lease.reserved(), LEASE_BLOCK);
        lease.extend(10).unwrap();
        assert_eq!(lease.reserved(), LEASE_BLOCK, "no write while half a block is left");
        lease.extend(LEASE_BLOCK / 2 + 1).unwrap();
        assert_eq!(lease.reserved(), LEASE_BLOCK / 2 + 1 + LEASE_BLOCK);
        // A "crash": the next run starts after everything reserved, even unused ids.
        let (_, start) = SeqLease::open(dir.path(), 5).unwrap();
        assert_eq!(start, LEASE_BLOCK / 2 + 1 + LEASE_BLOCK);
        // A store that knows of later ids wins.
        let (_, start) = SeqLease::open(dir.path(), u64::MAX / 2).unwrap();
        assert_eq!(start, u64::MAX / 2);
        std::fs::write(dir.path().join("sequence"), "garbage").unwrap();
        assert!(SeqLease::open(dir.path(), 0).is_err());
    }

    #[test]
    fn a_clean_stop_skips_nothing_and_a_crash_records_what_it_may_have_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lease, start) = SeqLease::open(dir.path(), 0).unwrap();
        lease.extend(start).unwrap();
        assert!(lease.unknown_ids().is_empty());
        // 1,000 ids handed out, then a clean stop: the next run continues at 1,000.
        lease.stop(1000).unwrap();
        let (mut lease, start) = SeqLease::open(dir.path(), 0).unwrap();
        assert_eq!((start, lease.unknown_ids()), (1000, &[][..]));
        lease.extend(start).unwrap();
        // This run hands out ids up to 1,500 (last hint) and then 2,000, and crashes.
        lease.mark_used(1500);
        let reserved = lease.reserved();
        drop(lease);
        let (lease, start) = SeqLease::open(dir.path(), 0).unwrap();
        assert_eq!(start, reserved);
        assert_eq!(lease.unknown_ids(), std::slice::from_ref(&(1500..reserved)));
        // A history that knows of later ids narrows the unknown range; ranges accumulate.
        let (mut lease, start2) = SeqLease::open(dir.path(), 0).unwrap();
        assert_eq!(start2, start, "no run in between handed anything out");
        lease.extend(start2).unwrap();
        let reserved2 = lease.reserved();
        drop(lease);
        let (lease, _) = SeqLease::open(dir.path(), start2 + 10).unwrap();
        assert_eq!(lease.unknown_ids(), &[1500..reserved, start2 + 10..reserved2][..]);
        // A second line that is not a stop is refused, not guessed at.
        std::fs::write(dir.path().join("sequence"), "100\nsomething\n").unwrap();
        assert!(SeqLease::open(dir.path(), 0).is_err());
        std::fs::write(dir.path().join("sequence"), "100\nstopped-at 200\n").unwrap();
        assert!(SeqLease::open(dir.path(), 0).is_err(), "a stop past the reservation");
    }

    #[test]
    fn ranges_merge() {
        let mut r = vec![5..9, 1..3, 3..4, 8..12, 20..20];
        normalise(&mut r);
        assert_eq!(r, vec![1..4, 5..12]);
    }
}
