use thiserror::Error;

/// A failure of the event log. Any write failure is fatal to the process: fjall poisons
/// the database after a failed write or fsync, and an event must never be acknowledged
/// unless it is durable, so the broker stops acknowledging and exits rather than retry.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("event {seq} is corrupt (checksum or framing mismatch)")]
    Corrupt { seq: u64 },
    #[error(
        "the log ends at sequence {head} but the high-water mark records sequence {marked} as durable: \
         refusing to serve a log that lost acknowledged events (restore the data directory from a backup)"
    )]
    LostAcknowledged { head: u64, marked: u64 },
    #[error(
        "the log holds events but the high-water-mark file {path} is missing: refusing to start \
         (restore the file, or move the log away to start empty)"
    )]
    MissingHighWaterMark { path: String },
    #[error("the high-water-mark file {path} is unreadable (torn or corrupt)")]
    BadHighWaterMark { path: String },
    /// Reading the event at `seq` failed (an engine checksum, an I/O error).
    #[error("event {seq} cannot be read: {source}")]
    Unreadable { seq: u64, source: Box<StoreError> },
    #[error("data directory {dir} is in use by another eventline (pid {pid})")]
    InUse { dir: String, pid: String },
    #[error("{path}: {what}: {source}")]
    File { path: String, what: &'static str, source: std::io::Error },
    /// A failure while opening the log, with the file or directory it concerns.
    #[error("cannot open {path}: {source}")]
    Opening { path: String, source: Box<StoreError> },
    /// fjall's journal does not replay. The write-ahead log only covers what came after
    /// the last checkpoint, while fjall's journal holds everything since its last flush,
    /// so it cannot stand in.
    #[error(
        "fjall's journal ({path}) is damaged ({reason}): refusing to start, since events it holds may not be \
         in the write-ahead log (restore the data directory from a backup)"
    )]
    JournalDamaged { path: String, reason: String },
    #[error(
        "fjall lost the message ids of events {first} to {last} (its journal in {path} was damaged) and the write-ahead \
         log no longer holds them, while the dedup window still covers them: refusing to start, since a retried \
         publish would be stored twice (restore the data directory from a backup, or restart with \
         --dedup-window shorter than their age)"
    )]
    DedupLost { path: String, first: u64, last: u64 },
}

impl StoreError {
    /// The event a read failure concerns, if known.
    pub fn seq(&self) -> Option<u64> {
        match self {
            StoreError::Corrupt { seq } | StoreError::Unreadable { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// This failure, named by the file or directory `path` it concerns (unless it names one
    /// already), as start-up reports it.
    #[must_use]
    pub(super) fn opening(self, path: &std::path::Path) -> StoreError {
        match self {
            StoreError::Engine(fjall::Error::JournalRecovery(reason)) => {
                // fjall does not say which journal file; name them all.
                let mut journals: Vec<String> = std::fs::read_dir(path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|file| file.extension().is_some_and(|ext| ext == "jnl"))
                    .map(|file| file.display().to_string())
                    .collect();
                journals.sort();
                let path = if journals.is_empty() { path.display().to_string() } else { journals.join(", ") };
                StoreError::JournalDamaged { path, reason: format!("{reason:?}") }
            }
            StoreError::File { .. }
            | StoreError::Opening { .. }
            | StoreError::JournalDamaged { .. }
            | StoreError::InUse { .. }
            | StoreError::BadHighWaterMark { .. }
            | StoreError::MissingHighWaterMark { .. } => self,
            other => StoreError::Opening { path: path.display().to_string(), source: Box::new(other) },
        }
    }

    /// This failure, as one of reading the event at `seq` (unless it already names one).
    #[must_use]
    pub(super) fn at(self, seq: u64) -> StoreError {
        match self.seq() {
            Some(_) => self,
            None => StoreError::Unreadable { seq, source: Box::new(self) },
        }
    }
}
