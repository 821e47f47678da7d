//! `eventline bench fsync`: how long the disk under a directory takes to fdatasync a small
//! overwrite, the way the write-ahead log syncs (a record written over a zero-filled
//! segment, then `fdatasync`). No server is involved: this is the floor under every
//! `--fsync always` acknowledgement, so `bench apub` figures can be read against the disk
//! they were measured on.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::BenchError;
use super::stats::Percentiles;

/// Bytes of the zero-filled file the records overwrite, as a write-ahead log segment.
const SEGMENT: u64 = 1024 * 1024;

/// Arguments of `eventline bench fsync`.
#[derive(Args, Debug, Clone)]
pub struct FsyncArgs {
    /// Directory on the disk to measure (e.g. the broker's --data); a file is created in it
    /// and removed again.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// fdatasyncs to time.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Bytes overwritten before each fdatasync.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub size: u64,
    /// Print one JSON object line instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

/// Everything an fsync run measured; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct FsyncReport {
    pub mode: &'static str,
    pub dir: String,
    pub count: u64,
    pub size: u64,
    /// Time of each fdatasync alone (the write before it is not counted).
    pub fdatasync_us: Option<Percentiles>,
}

/// Runs the probe on a blocking thread and prints its report.
///
/// # Errors
/// The file cannot be created, written or synced.
pub async fn run(args: FsyncArgs) -> Result<(), BenchError> {
    let json = args.json;
    let report = tokio::task::spawn_blocking(move || measure(&args)).await??;
    super::print(&report, json, human)
}

/// Times `count` fdatasyncs, each after overwriting `size` bytes further along the file.
///
/// # Errors
/// As [`run`].
pub fn measure(args: &FsyncArgs) -> Result<FsyncReport, BenchError> {
    let disk = |source| BenchError::Disk { dir: args.dir.display().to_string(), source };
    // Unnamed where the OS allows it, and removed when dropped either way.
    let mut file: File = tempfile::tempfile_in(&args.dir).map_err(disk)?;
    std::io::copy(&mut std::io::repeat(0).take(SEGMENT), &mut file).map_err(disk)?;
    file.sync_all().map_err(disk)?;

    let record = vec![b'r'; usize::try_from(args.size).unwrap_or(usize::MAX)];
    let mut nanos = Vec::with_capacity(usize::try_from(args.count).unwrap_or(0));
    let mut offset = 0;
    for _ in 0..args.count {
        if offset + args.size > SEGMENT {
            offset = 0;
        }
        file.write_all_at(&record, offset).map_err(disk)?;
        offset += args.size;
        let started = Instant::now();
        file.sync_data().map_err(disk)?;
        nanos.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(FsyncReport {
        mode: "fsync",
        dir: args.dir.display().to_string(),
        count: args.count,
        size: args.size,
        fdatasync_us: Percentiles::of(nanos),
    })
}

fn human(r: &FsyncReport) -> String {
    let mut out = format!("fsync in {}: {} fdatasyncs, each after a {} B overwrite\n", r.dir, r.count, r.size);
    if let Some(l) = r.fdatasync_us {
        out += &l.line("fdatasync");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_every_fdatasync_and_leaves_nothing_behind() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        // More records than fit in the file, so the offset wraps around.
        let args = FsyncArgs { dir: dir.path().to_owned(), count: 5, size: SEGMENT / 2, json: true };
        let report = measure(&args).expect("measures");
        assert_eq!((report.mode, report.count, report.size), ("fsync", 5, SEGMENT / 2));
        let latency = report.fdatasync_us.expect("five samples");
        assert!(latency.min > 0.0 && latency.min <= latency.p50 && latency.p50 <= latency.max);
        let left = std::fs::read_dir(dir.path()).expect("lists").count();
        assert_eq!(left, 0, "the probe file is removed");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let args = FsyncArgs { dir: PathBuf::from("/nonexistent/eventline"), count: 1, size: 256, json: false };
        let error = measure(&args).expect_err("no such directory").to_string();
        assert!(error.starts_with("disk probe in /nonexistent/eventline: "), "{error}");
    }
}
