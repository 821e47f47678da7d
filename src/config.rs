//! Every setting of the server in one place, grouped by the part of the server that uses
//! it. Each default is a named constant here, documented with why it is what it is.

use std::path::PathBuf;
use std::time::Duration;

/// When an appended event counts as durable, and so when it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync each batch before acknowledging it: acknowledged events survive power loss.
    Always,
    /// Acknowledge once written to the OS and fdatasync every interval: acknowledged events
    /// survive a crash of the process, but a power loss may take the last interval back.
    Interval(Duration),
    /// Acknowledge once written to the OS and leave syncing to it: survives a crash of the
    /// process, not of the machine.
    Never,
}

/// Time between advances of the high-water mark: a damaged log record can hide at most
/// this much of what was acknowledged before a crash, for one small fsync per tick.
pub const DEFAULT_MARK_EVERY: Duration = Duration::from_millis(10);
/// Time between checkpoints (fjall fsynced, write-ahead log segments freed): 1 s measured
/// slower, 25 ms no faster. Short keeps each fjall fsync small (a burst of megabytes would
/// stall the write-ahead log's next fsync behind it) and bounds what start-up replays.
pub const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Block cache. The log is read mostly once, in order (replays), so a large cache buys little.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Memtable size per keyspace: half fjall's 64 MiB default. It bounds the journal replayed
/// at start-up (0.84 s after 10 M events; 0.53 s at 16 MiB), but 16 MiB tables flushed so
/// often that the p99 of stored delivery at 10 k msg/s rose from about 1.2 ms to 2-6 ms.
pub const DEFAULT_MEMTABLE_BYTES: u64 = 32 * 1024 * 1024;

/// The event log's settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where the event log lives.
    pub data: PathBuf,
    pub mark_every: Duration,
    pub checkpoint_every: Duration,
    pub cache_bytes: u64,
    pub memtable_bytes: u64,
}

impl StoreConfig {
    /// The defaults, for the log in `data`.
    pub fn new(data: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data: data.into(),
            mark_every: DEFAULT_MARK_EVERY,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            cache_bytes: DEFAULT_CACHE_BYTES,
            memtable_bytes: DEFAULT_MEMTABLE_BYTES,
        }
    }
}
