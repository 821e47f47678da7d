//! The high-water mark: the last sequence known to be durable, kept outside the log.
//!
//! A log can come back shorter than what was written (fjall's journal reads a corrupt
//! record as its end, silently, and the write-ahead log ends at a damaged record). This
//! small fsynced file remembers how far the log was durable, a few milliseconds behind the
//! acknowledgements, so start-up can refuse a log that lost events. Its existence also
//! marks a data directory whose first initialisation completed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::StoreError;

/// Sequence (8 bytes BE) then its CRC32 (4 bytes BE): one small write, one sector.
const RECORD: usize = 12;

pub(super) struct HighWaterMark {
    file: File,
    last: u64,
}

impl HighWaterMark {
    /// Creates the file with mark 0 and makes its existence durable (temp file, fsync,
    /// rename, fsync of the directory), so a crash leaves either no file or a valid one.
    pub(super) fn create(path: &Path) -> Result<HighWaterMark, StoreError> {
        let temp = path.with_extension("new");
        let mut file = File::create(&temp)?;
        file.write_all(&record(0))?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            super::files::sync_dir(dir)?;
        }
        HighWaterMark::open(path)
    }

    pub(super) fn open(path: &Path) -> Result<HighWaterMark, StoreError> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut buf = [0u8; RECORD];
        let bad = || StoreError::BadHighWaterMark { path: path.display().to_string() };
        file.read_exact(&mut buf).map_err(|_| bad())?;
        let last = u64::from_be_bytes(buf[..8].try_into().map_err(|_| bad())?);
        if record(last) != buf {
            return Err(bad());
        }
        Ok(HighWaterMark { file, last })
    }

    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// Records `seq` and fsyncs it; call only once the events up to `seq` are durable.
    pub(super) fn advance(&mut self, seq: u64) -> Result<(), StoreError> {
        if seq <= self.last {
            return Ok(());
        }
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&record(seq))?;
        self.file.sync_data()?;
        self.last = seq;
        Ok(())
    }
}

fn record(seq: u64) -> [u8; RECORD] {
    let mut buf = [0u8; RECORD];
    buf[..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..].copy_from_slice(&crc32fast::hash(&seq.to_be_bytes()).to_be_bytes());
    buf
}
