//! Resident memory of the real binary after load: nothing long-lived may keep a slice of
//! a client's read buffer, or large payloads stay resident after their publisher is gone.

mod common;

use common::{KillOnDrop, Raw, spawn_binary};

/// Resident set size of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("a number of KiB") * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_on_many_subjects_do_not_stay_resident() {
    const EVENTS: usize = 200;
    const PAYLOAD: usize = 1024 * 1024 - 1024;
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().to_owned();
    let (server, addr) = tokio::task::spawn_blocking(move || spawn_binary(&dir, &[])).await.expect("join");
    let server = KillOnDrop(server);
    let pid = server.0.id();
    let mut raw = Raw::quiet(addr).await;
    raw.apub("warm.up", "x").await;
    let before = rss(pid);
    let payload = "p".repeat(PAYLOAD);
    for i in 0..EVENTS {
        raw.apub(&format!("large.{i}"), &payload).await;
    }
    drop(raw);
    // A fresh connection's round trip: the publisher's connection is gone by now.
    Raw::quiet(addr).await.sync().await;
    let after = rss(pid);
    let grown = after.saturating_sub(before);
    eprintln!("resident: {} MiB before, {} MiB after", before >> 20, after >> 20);
    // The store's memtables and caches, and the recent events kept for live readers, may
    // hold some of it; the 200 MiB published may not stay.
    assert!(grown < 100 << 20, "resident memory grew by {} MiB after {EVENTS} MiB published", grown >> 20);
}
