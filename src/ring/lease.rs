//! The sequence lease: keeps event ids unique and increasing across restarts, crashes included.
//!
//! Event ids are ring positions. With a data directory, livetap writes the position up to
//! which ids are *reserved* to `DATA_DIR/sequence` before handing any of them out, a block of
//! [`LEASE_BLOCK`] at a time (written to a temporary file, synced and renamed). A restart
//! starts after the last reservation, so a client resuming with an id from before a crash, or
//! history written before it, never meets the same id twice. A crash skips at most one block
//! of ids, which costs nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Ids reserved per write. At 1,000,000 events per second this is one small write a second.
pub const LEASE_BLOCK: u64 = 1 << 20;

/// The reservation file of one data directory.
#[derive(Debug)]
pub struct SeqLease {
    path: PathBuf,
    reserved: u64,
}

impl SeqLease {
    /// Reads the last reservation in `dir` (0 when there is none) and returns the lease with
    /// the first id this run may use: the later of the reservation and `at_least` (such as the
    /// history store's next sequence number). Nothing is reserved yet; call
    /// [`SeqLease::extend`] before publishing.
    pub fn open(dir: &Path, at_least: u64) -> std::io::Result<(SeqLease, u64)> {
        let path = dir.join("sequence");
        let previous = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold a sequence number; remove it only if no events were kept",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let start = previous.max(at_least);
        Ok((SeqLease { path, reserved: start }, start))
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
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{next}")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself must survive a power cut, or the old reservation comes back.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.reserved = next;
        Ok(())
    }
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
}
