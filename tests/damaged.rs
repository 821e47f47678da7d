//! A data directory damaged on disk, served by the real binary: readers that meet the
//! damage end with a `500 Storage Failure` status naming the event, never silently.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{Incoming, KillOnDrop, Raw, spawn_binary};
use eventline::config::StoreConfig;
use eventline::store::{Event, Store};

/// Events written before the damage, on `damaged.<seq % 5>`.
const EVENTS: u64 = 200;
/// The event whose stored bytes are damaged; on `damaged.0`.
const DAMAGED: u64 = 100;

/// 2,000 bytes that do not compress, so they are found verbatim in fjall's files.
fn payload(seq: u64) -> Vec<u8> {
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..2_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Writes the events one batch each with a memtable small enough that fjall moves them to
/// table and blob files, as a long-running log would have.
fn write_log(dir: &Path) {
    let config = StoreConfig { memtable_bytes: 64 * 1024, ..StoreConfig::new(dir) };
    let store = Store::open(&config, |_| {}).expect("open");
    for seq in 1..=EVENTS {
        let event = Event {
            seq,
            timestamp: seq,
            revision: seq.div_ceil(5),
            subject: Bytes::from(format!("damaged.{}", seq % 5)),
            headers: None,
            payload: Bytes::from(payload(seq)),
        };
        store.append(&[event], &[], &[]).expect("append");
        store.sync().expect("sync");
    }
    store.close();
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            if entry.file_type().expect("file type").is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Flips one byte inside the damaged event's payload in the blob file that holds it.
fn damage(dir: &Path) -> Vec<PathBuf> {
    let needle = payload(DAMAGED);
    let mut damaged = Vec::new();
    for path in
        files(&dir.join("log")).into_iter().filter(|path| path.parent().is_some_and(|dir| dir.ends_with("blobs")))
    {
        let mut bytes = std::fs::read(&path).expect("read");
        if let Some(at) = bytes.windows(needle.len()).position(|window| window == needle) {
            bytes[at + 20] ^= 0x01;
            std::fs::write(&path, &bytes).expect("write");
            damaged.push(path);
        }
    }
    damaged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_that_meets_a_damaged_event_ends_with_a_storage_failure_naming_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    write_log(&data);
    let damaged = damage(&data);
    assert!(!damaged.is_empty(), "the event's bytes were found in a file of the log: {:?}", files(&data));

    let (server, addr) = tokio::task::spawn_blocking(move || spawn_binary(&data, &[])).await.expect("join");
    let _server = KillOnDrop(server);
    let mut raw = Raw::with_headers(addr).await;
    let expected: Vec<u64> = (5..DAMAGED).step_by(5).collect();
    for request in ["SUB damaged.0 1 FROM 0", "FETCH 2 damaged.0", "FETCH 3 >", "SUB > 4 FROM 90"] {
        raw.send(&format!("{request}\r\n")).await;
        let (delivered, failure) = until_status(&mut raw).await;
        let wanted: Vec<u64> = match request {
            "FETCH 3 >" => (1..DAMAGED).collect(),
            "SUB > 4 FROM 90" => (90..DAMAGED).collect(),
            _ => expected.clone(),
        };
        assert_eq!(delivered, wanted, "{request}: every event before the damaged one");
        assert_eq!(failure.status(), Some("500 Storage Failure"), "{request}");
        assert_eq!(failure.seq(), DAMAGED, "{request}: the status names the damaged event");
    }
    // The subscriptions are over: a later live event on their subjects is not delivered.
    raw.send("APUB damaged.0 4\r\nlive\r\n").await;
    let after = raw.sync().await;
    assert_eq!(after, vec![format!("+ACK seq={} rev={}", EVENTS + 1, EVENTS / 5 + 1)]);
}

/// The sequences delivered up to the first status message, and that status.
async fn until_status(raw: &mut Raw) -> (Vec<u64>, common::Hmsg) {
    let mut delivered = Vec::new();
    loop {
        match raw.incoming().await {
            Incoming::Msg(msg) if msg.status().is_none() => delivered.push(msg.seq()),
            Incoming::Msg(msg) => return (delivered, msg),
            Incoming::Line(line) => panic!("unexpected line {line:?}"),
        }
    }
}
