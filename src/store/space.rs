//! The free-space reserve: the timeline writer stops taking new events while the disk
//! holding the data directory has less than `--min-free-bytes` free, and takes them again
//! as soon as it has more.
//!
//! Why a reserve and not the disk's own "no space left": a write that fails for lack of
//! space poisons fjall (every later write fails too, until a restart), and fjall's
//! background work (memtable flushes, compactions) needs room of its own to finish what
//! was already accepted. Refusing early keeps every refusal true (nothing of the event was
//! written) and keeps the server serving reads, catch-up and volatile traffic while an
//! operator frees space. The reserve must cover what is written between two checks (at
//! most [`RECHECK_BYTES`]) plus fjall's flushes (a memtable per keyspace) and compactions.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// A check at least this often while batches come in: how soon writing resumes once space
/// is freed.
const RECHECK_EVERY: Duration = Duration::from_millis(50);
/// ...and at least every this many bytes written, so a burst cannot run through the reserve
/// between two checks.
const RECHECK_BYTES: u64 = 4 * 1024 * 1024;

/// Free space below the reserve, in bytes, when last checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortage {
    pub free: u64,
}

/// Watches the free space of the disk holding `dir`; owned by the one thread that writes.
pub struct SpaceGuard {
    dir: PathBuf,
    min_free: u64,
    checked: Option<Instant>,
    written_since: u64,
    shortage: Option<Shortage>,
    /// Whether a failed check was already logged (a disk that cannot say its free space is
    /// written to as if it had room; the log says so once).
    unknown_logged: bool,
}

impl SpaceGuard {
    /// A guard keeping `min_free` bytes free on the disk of `dir` (0: no reserve).
    pub fn new(dir: impl Into<PathBuf>, min_free: u64) -> SpaceGuard {
        SpaceGuard { dir: dir.into(), min_free, checked: None, written_since: 0, shortage: None, unknown_logged: false }
    }

    /// Whether a batch of about `bytes` may be written now. Asks the file system at most
    /// every [`RECHECK_EVERY`] or [`RECHECK_BYTES`], and logs each change of state.
    ///
    /// # Errors
    /// The [`Shortage`] if the disk had less than the reserve free when last checked.
    pub fn admit(&mut self, bytes: u64) -> Result<(), Shortage> {
        if self.min_free == 0 {
            return Ok(());
        }
        let due = self.checked.is_none_or(|checked| checked.elapsed() >= RECHECK_EVERY)
            || self.written_since.saturating_add(bytes) >= RECHECK_BYTES;
        if due {
            self.check();
        }
        match self.shortage {
            Some(shortage) => Err(shortage),
            None => {
                self.written_since = self.written_since.saturating_add(bytes);
                Ok(())
            }
        }
    }

    fn check(&mut self) {
        self.checked = Some(Instant::now());
        self.written_since = 0;
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stats) => stats.f_bavail.saturating_mul(stats.f_frsize),
            Err(error) => {
                if !self.unknown_logged {
                    warn!(%error, dir = %self.dir.display(), "cannot read the free space of the data directory's disk; writing on");
                    self.unknown_logged = true;
                }
                self.shortage = None;
                return;
            }
        };
        let shortage = (free < self.min_free).then_some(Shortage { free });
        match (self.shortage, shortage) {
            (None, Some(_)) => warn!(
                free,
                min_free = self.min_free,
                dir = %self.dir.display(),
                "the data directory's disk is below its free-space reserve: publishes to stored subjects are refused until it has more"
            ),
            (Some(_), None) => {
                info!(free, min_free = self.min_free, "the data directory's disk has room again: publishes are stored")
            }
            _ => {}
        }
        self.shortage = shortage;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_reserve_never_asks_the_disk() {
        let mut guard = SpaceGuard::new("/nonexistent/dir", 0);
        assert_eq!(guard.admit(u64::MAX), Ok(()));
        assert!(guard.checked.is_none());
    }

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_and_a_small_one_admits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut full = SpaceGuard::new(dir.path(), u64::MAX);
        assert!(full.admit(1).is_err());
        let mut roomy = SpaceGuard::new(dir.path(), 1);
        assert_eq!(roomy.admit(1), Ok(()));
    }

    #[test]
    fn the_disk_is_asked_again_after_a_burst_of_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut guard = SpaceGuard::new(dir.path(), 1);
        guard.admit(1).expect("room");
        guard.admit(1).expect("room");
        assert_eq!(guard.written_since, 2, "not checked again within the interval");
        guard.admit(RECHECK_BYTES).expect("room");
        assert_eq!(guard.written_since, RECHECK_BYTES, "a burst of bytes is checked at once");
    }

    #[test]
    fn an_unreadable_disk_is_written_to() {
        let mut guard = SpaceGuard::new("/nonexistent/dir", 1);
        assert_eq!(guard.admit(1), Ok(()));
    }
}
