//! A disk that fills up, with the real binary: the publish that cannot be written is
//! answered with a storage failure, nothing is acknowledged after it, the server exits
//! non-zero, and every event it did acknowledge is in the log, intact.
//!
//! The full disk is a 24 MiB tmpfs (the write-ahead log's first segment takes 16 of them),
//! mounted with `mount`, which needs root (CI runs as root). Where mounting is refused the
//! test says so on stderr and checks nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Raw, parse_ack, spawn_binary, wait_exit};
use eventline::config::StoreConfig;
use eventline::store::Store;
use tempfile::TempDir;

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// `len` characters LZ4 cannot shrink (the disk must really fill), distinct per `seed`.
fn incompressible(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(ALPHABET[(state % 64) as usize])
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

#[tokio::test]
async fn a_full_disk_stops_acknowledgements_and_loses_nothing_acknowledged() {
    let Some(disk) = Tmpfs::mount("24M") else {
        eprintln!("storage_failure: skipped, cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.dir.path().join("data");
    let spawn_data = data.clone();
    let (child, addr) =
        tokio::task::spawn_blocking(move || spawn_binary(&spawn_data, &["--fsync", "always"])).await.expect("spawn");
    let mut raw = Raw::connect(addr).await;

    let mut acked = Vec::new();
    let failure = loop {
        assert!(acked.len() < 1000, "24 MiB never filled up");
        let payload = incompressible(acked.len() as u64, 40_000);
        raw.send(&format!("APUB disk.full {}\r\n{payload}\r\n", payload.len())).await;
        let line = raw.line().await;
        if !line.starts_with("+ACK") {
            break line;
        }
        acked.push((parse_ack(&line).0, payload));
    };
    assert_eq!(failure, "-NAK 'storage failure: the event was not stored'");
    assert!(acked.len() > 10, "the disk filled after only {} events", acked.len());
    raw.expect_closed().await;
    let status = wait_exit(child).await;
    assert_eq!(status.code(), Some(1), "a storage failure is a non-zero exit: {status:?}");

    // The full disk cannot take fjall's recovery; read a copy of the log instead.
    let copy = TempDir::new().expect("temp dir");
    copy_dir(&data, copy.path());
    let store = Store::open(&StoreConfig::new(copy.path()), |_| {}).expect("the log opens after the failure");
    let last_acked = acked.last().map(|(seq, _)| *seq).expect("acks");
    assert!(store.high_water_mark() >= last_acked, "the high-water mark covers every ack");
    for (seq, payload) in &acked {
        let event = store.get(*seq).expect("read").unwrap_or_else(|| panic!("acknowledged seq {seq} is missing"));
        assert_eq!(event.payload, payload.as_bytes(), "payload of acknowledged seq {seq}");
    }
    let last = store.last_seq().expect("last seq");
    for seq in 1..=last {
        assert!(store.get(seq).expect("read").is_some(), "gap at {seq} of 1..={last}");
    }
}
