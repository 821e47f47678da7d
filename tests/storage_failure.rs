//! A disk that fills up, with the real binary. With the free-space reserve, the server
//! refuses new events (truly: none is in the log afterwards), goes on serving reads and
//! volatile traffic, and stores events again soon after space is freed. Without it (the
//! disk itself runs out), each publish that cannot be written is answered with a storage
//! failure that is true (`not stored` only if the event is not in the log after a
//! restart), nothing is acknowledged after it, the server exits non-zero, and every event
//! it did acknowledge is in the log, intact. And a writer thread that dies stops the
//! server.
//!
//! The full disk is a 24 MiB tmpfs (the write-ahead log's first segment takes 16 of them),
//! mounted with `mount`, which needs root (CI runs as root). Where mounting is refused the
//! test says so on stderr and checks nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::{KillOnDrop, Raw, parse_ack, spawn_binary, spawn_command, wait_exit};
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

/// Publishing connections filling the disk at once, so failures meet batches in every
/// state (queued, written ahead, being synced).
const PUBLISHERS: usize = 4;

/// What one publisher was told: its acknowledged events, and the answer that ended it
/// (none if the server stopped before answering, as it may for a publish it had not yet
/// read) with the payload it refused.
struct Told {
    acked: Vec<(u64, String)>,
    refused: (Option<String>, String),
}

async fn publish_until_refused(addr: std::net::SocketAddr, publisher: usize) -> Told {
    let mut raw = Raw::connect(addr).await;
    let mut acked = Vec::new();
    loop {
        assert!(acked.len() < 1000, "24 MiB never filled up");
        let payload = incompressible((publisher * 1000 + acked.len()) as u64, 40_000);
        raw.send(&format!("APUB disk.full {}\r\n{payload}\r\n", payload.len())).await;
        match raw.try_line().await {
            Some(line) if line.starts_with("+ACK") => acked.push((parse_ack(&line).0, payload)),
            Some(line) => {
                raw.expect_closed().await;
                return Told { acked, refused: (Some(line), payload) };
            }
            None => return Told { acked, refused: (None, payload) },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledgements_and_every_answer_is_true() {
    let Some(disk) = Tmpfs::mount("24M") else {
        eprintln!("storage_failure: skipped, cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.dir.path().join("data");
    let spawn_data = data.clone();
    let (child, addr) =
        tokio::task::spawn_blocking(move || spawn_binary(&spawn_data, &["--fsync", "always", "--min-free-bytes", "0"]))
            .await
            .expect("spawn");
    let publishers: Vec<_> = (0..PUBLISHERS).map(|i| tokio::spawn(publish_until_refused(addr, i))).collect();
    let mut told = Vec::new();
    for publisher in publishers {
        told.push(publisher.await.expect("publisher"));
    }
    let status = wait_exit(child).await;
    assert_eq!(status.code(), Some(1), "a storage failure is a non-zero exit: {status:?}");
    assert!(told.iter().map(|t| t.acked.len()).sum::<usize>() > 10, "the disk filled too soon");
    let answers: Vec<_> = told.iter().map(|t| t.refused.0.clone()).collect();
    assert!(answers.iter().any(Option::is_some), "some publisher was told of the failure: {answers:?}");

    // The full disk cannot take fjall's recovery; read a copy of the log instead.
    let copy = TempDir::new().expect("temp dir");
    copy_dir(&data, copy.path());
    let store = Store::open(&StoreConfig::new(copy.path()), |_| {}).expect("the log opens after the failure");
    let last = store.last_seq().expect("last seq");
    let mut stored = std::collections::HashSet::new();
    for seq in 1..=last {
        let event = store.get(seq).expect("read").unwrap_or_else(|| panic!("gap at {seq} of 1..={last}"));
        stored.insert(String::from_utf8(event.payload.to_vec()).expect("utf-8"));
    }
    let last_acked = told.iter().flat_map(|t| t.acked.iter().map(|(seq, _)| *seq)).max().expect("acks");
    assert!(store.high_water_mark() >= last_acked, "the high-water mark covers every ack");
    for Told { acked, refused: (answer, payload) } in &told {
        for (seq, payload) in acked {
            let event = store.get(*seq).expect("read").unwrap_or_else(|| panic!("acknowledged seq {seq} is missing"));
            assert_eq!(event.payload, payload.as_bytes(), "payload of acknowledged seq {seq}");
        }
        match answer.as_deref() {
            Some("-NAK 'storage failure: the event was not stored'") => {
                assert!(!stored.contains(payload), "an event refused as not stored is in the log");
            }
            Some("-NAK 'storage failure: the event may have been stored'") | None => {}
            Some(other) => panic!("unexpected answer {other:?}"),
        }
    }
}

/// Free bytes of the disk holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let stats = rustix::fs::statvfs(path).expect("statvfs");
    stats.f_bavail * stats.f_frsize
}

/// Below the reserve, publishes are refused as not stored and the server keeps serving
/// reads and volatile subjects; once space is freed, publishes are stored again within
/// 5 s; after a restart, the log holds every acknowledged event and no refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_writes_pause_reads_go_on_and_writing_resumes_once_space_is_freed() {
    // Room for the write-ahead log to prepare a 16 MiB segment, as the default reserve has.
    const RESERVE: u64 = 24 << 20;
    let Some(disk) = Tmpfs::mount("96M") else {
        eprintln!("storage_failure: skipped, cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.dir.path().join("data");
    let spawn_data = data.clone();
    let (child, addr) = tokio::task::spawn_blocking(move || {
        spawn_binary(&spawn_data, &["--fsync", "always", "--min-free-bytes", &RESERVE.to_string()])
    })
    .await
    .expect("spawn");
    let mut server = KillOnDrop(child);
    // Leave about 2 MiB above the reserve: room for some 50 events of 40 kB.
    let ballast = disk.dir.path().join("ballast");
    let room = free_bytes(disk.dir.path()).checked_sub(RESERVE + (2 << 20)).expect("the tmpfs has room for ballast");
    std::fs::write(&ballast, vec![0xa5u8; usize::try_from(room).expect("size")]).expect("write the ballast");

    let mut raw = Raw::with_headers(addr).await;
    let mut acked = Vec::new();
    loop {
        assert!(acked.len() < 1000, "the reserve was never reached");
        let payload = incompressible(acked.len() as u64, 40_000);
        raw.send(&format!("APUB disk.reserve {}\r\n{payload}\r\n", payload.len())).await;
        let line = raw.line().await;
        if line.starts_with("+ACK") {
            acked.push((parse_ack(&line).0, payload));
            continue;
        }
        assert_eq!(line, "-NAK 'insufficient storage: the event was not stored'");
        break;
    }
    assert!(acked.len() > 10, "the reserve was reached too soon: {} acked", acked.len());

    // Still serving: the connection is open and answers, reads return every stored event,
    // volatile subjects are delivered, and more publishes are refused the same way.
    raw.send("SUB _INBOX.reserve 9\r\nPUB _INBOX.reserve 5\r\nhello\r\n").await;
    assert_eq!(raw.hmsg().await.payload, b"hello");
    let (events, _) = raw.fetch("1", "disk.reserve limit=1000").await;
    assert_eq!(events.len(), acked.len(), "every acknowledged event is readable");
    for (event, (seq, payload)) in events.iter().zip(&acked) {
        assert_eq!((event.seq(), event.payload.as_slice()), (*seq, payload.as_bytes()));
    }
    for i in 0..3 {
        let payload = incompressible(10_000 + i, 40_000);
        raw.send(&format!("APUB disk.reserve {}\r\n{payload}\r\n", payload.len())).await;
        assert_eq!(raw.line().await, "-NAK 'insufficient storage: the event was not stored'");
    }

    // Space freed: writing resumes within 5 s.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let freed = std::time::Instant::now();
    let resumed = loop {
        assert!(freed.elapsed() < std::time::Duration::from_secs(5), "writing did not resume within 5 s");
        let payload = incompressible(20_000 + freed.elapsed().as_millis() as u64, 1_000);
        raw.send(&format!("APUB disk.reserve {}\r\n{payload}\r\n", payload.len())).await;
        let line = raw.line().await;
        if line.starts_with("+ACK") {
            break (parse_ack(&line).0, payload);
        }
        assert_eq!(line, "-NAK 'insufficient storage: the event was not stored'");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(resumed.0, acked.last().expect("acks").0 + 1, "no refused event took a sequence");
    acked.push(resumed);

    server.kill();
    let store = Store::open(&StoreConfig::new(&data), |_| {}).expect("the log opens");
    // Every sequence is an acknowledged event: no refused one is in the log.
    assert_eq!(store.last_seq().expect("last seq"), acked.len() as u64);
    for (seq, payload) in &acked {
        let event = store.get(*seq).expect("read").unwrap_or_else(|| panic!("acknowledged seq {seq} is missing"));
        assert_eq!(event.payload, payload.as_bytes(), "payload of acknowledged seq {seq}");
    }
}

/// A timeline writer that dies (a panic, injected in debug builds) stops the server with a
/// non-zero code and says why, instead of leaving a process that acknowledges nothing.
#[tokio::test]
async fn a_dead_writer_thread_ends_the_process_with_a_clear_message() {
    let data = TempDir::new().expect("temp dir");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_eventline"));
    command.env("EVENTLINE_FAULT_WRITER_PANIC_AT", "4").stderr(std::process::Stdio::piped());
    let (mut child, addr) = spawn_command(command, data.path(), &[]);
    let mut stderr = child.stderr.take().expect("stderr");
    let mut raw = Raw::connect(addr).await;
    for seq in 1..=3 {
        raw.send(&format!("APUB writer.dies 2\r\n{seq:02}\r\n")).await;
        assert_eq!(parse_ack(&raw.line().await).0, seq);
    }
    raw.send("APUB writer.dies 2\r\n04\r\n").await;
    let status = wait_exit(child).await;
    assert!(!status.success(), "a dead writer is a non-zero exit: {status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).expect("stderr");
    assert!(log.contains("an essential thread died") && log.contains("timeline-writer"), "names the thread: {log}");
    assert!(log.contains("eventline: stopped: the event log failed"), "says it stopped: {log}");
}
