//! A stdout sink's output: whole lines written to livetap's standard output, one write per
//! batch, with the `<N>` syslog-priority prefix journald reads when standard output is a
//! journal stream (sd-daemon(3): `JOURNAL_STREAM` names the stream's device and inode).
//!
//! livetap's own logs go to standard error, so standard output carries the start-up banner
//! and then only sink lines.

use crate::event::Level;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

/// The syslog priority journald records for an event of `level` (sd-daemon(3) prefixes:
/// 3 error, 4 warning, 6 info, 7 debug).
pub fn priority(level: Level) -> &'static [u8] {
    match level {
        Level::Error => b"<3>",
        Level::Warn => b"<4>",
        Level::Info => b"<6>",
        Level::Debug | Level::Trace => b"<7>",
    }
}

/// True when `journal_stream` (the `JOURNAL_STREAM` variable, `device:inode` in decimal) names
/// the file whose device and inode are `dev` and `ino`. Pure, so it is tested without a
/// journal.
pub fn is_journal_stream(journal_stream: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.and_then(|v| v.trim().split_once(':')) else { return false };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

/// True when this process's standard output is the journal stream systemd connected it to.
/// A service whose stdout was redirected elsewhere inherits `JOURNAL_STREAM` anyway, which is
/// why the device and inode are compared rather than the variable's presence.
pub fn stdout_is_journal() -> bool {
    let Ok(var) = std::env::var("JOURNAL_STREAM") else { return false };
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    is_journal_stream(Some(&var), meta.dev(), meta.ino())
}

/// Writes a batch of lines to standard output in one call.
pub fn write_batch(lines: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(lines)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_the_same_file() {
        assert!(is_journal_stream(Some("8:1234"), 8, 1234));
        assert!(!is_journal_stream(Some("8:1234"), 8, 1235));
        assert!(!is_journal_stream(Some("9:1234"), 8, 1234));
        assert!(!is_journal_stream(Some("garbage"), 8, 1234));
        assert!(!is_journal_stream(Some(""), 0, 0));
        assert!(!is_journal_stream(None, 8, 1234));
        assert_eq!(priority(Level::Error), b"<3>");
        assert_eq!(priority(Level::Warn), b"<4>");
        assert_eq!(priority(Level::Info), b"<6>");
        assert_eq!(priority(Level::Trace), b"<7>");
    }
}
