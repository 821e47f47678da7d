//! The data directory as an operator meets it: one server per directory, and start-up
//! refusals that name the file at fault. Each test runs the real binary.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};

use common::{KillOnDrop, Raw, spawn_binary};

/// Servers started at the same moment on one empty directory.
const RACERS: usize = 20;
/// Acknowledged events published to the one that serves.
const EVENTS: usize = 200;

/// `eventline serve` on `data`, with stdout and stderr piped.
fn serve(data: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_eventline"))
        .args(["serve", "--port", "0", "--log-level", "warn", "--fsync", "always", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn eventline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_starts_on_one_directory_leave_one_server_and_every_acknowledged_event() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let children: Vec<_> = (0..RACERS).map(|_| KillOnDrop(serve(&data))).collect();
    // Each racer either announces its address or exits; read all first lines at once.
    let outcomes = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|mut child| {
                let mut line = String::new();
                let stdout = child.0.stdout.take().expect("stdout");
                std::io::BufReader::new(stdout).read_line(&mut line).expect("stdout");
                (child, line.trim().strip_prefix("listening on ").map(str::to_owned))
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    let (serving, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(_, addr)| addr.is_some());
    assert_eq!(serving.len(), 1, "exactly one of {RACERS} simultaneous servers serves");
    let (winner, addr) = serving.into_iter().next().expect("one server");
    let addr = addr.expect("its address").parse().expect("an address");

    // Publish while the refused ones are still exiting: none may touch the winner's files.
    let mut raw = Raw::quiet(addr).await;
    let mut acked = Vec::new();
    for i in 0..EVENTS {
        acked.push(raw.apub("race.events", &format!("event-{i}")).await);
    }
    for (mut child, _) in refused {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
        let status = child.0.wait().expect("wait");
        assert!(!status.success(), "a refused server exits non-zero: {status:?}");
        let expected =
            format!("data directory {} is in use by another eventline (pid {})", data.display(), winner.0.id());
        assert!(stderr.contains(&expected), "stderr names the directory and the holder: {stderr:?}");
    }
    drop(winner);

    let (restarted, addr) =
        tokio::task::spawn_blocking(move || spawn_binary(&data, &["--fsync", "always"])).await.expect("join");
    let _restarted = KillOnDrop(restarted);
    let mut raw = Raw::with_headers(addr).await;
    let (events, _) = raw.fetch("1", &format!("race.events limit={}", EVENTS + 1)).await;
    let seqs: Vec<u64> = events.iter().map(common::Hmsg::seq).collect();
    assert_eq!(seqs, acked, "every acknowledged event survives, in order");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.payload, format!("event-{i}").into_bytes());
    }
}

/// Runs `eventline serve` on `data` expecting it to refuse to start; returns its stderr.
fn refusal(data: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_eventline"))
        .args(["serve", "--port", "0", "--log-level", "error", "--data"])
        .arg(data)
        .output()
        .expect("run eventline");
    assert!(!output.status.success(), "the server refused to start");
    assert!(output.stdout.is_empty(), "it never listened: {:?}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8(output.stderr).expect("utf-8")
}

#[test]
fn a_data_directory_that_is_a_file_is_named() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    std::fs::write(&data, b"not a directory").expect("write");
    let stderr = refusal(&data);
    assert!(stderr.contains(&format!("{}: is not a directory", data.display())), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_named_with_what_to_do() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let dir = data.clone();
    let (server, addr) = tokio::task::spawn_blocking(move || spawn_binary(&dir, &[])).await.expect("join");
    let server = KillOnDrop(server);
    let mut raw = Raw::quiet(addr).await;
    let marker = "journal-marker-".repeat(20);
    for _ in 0..20 {
        raw.apub("journal.events", &marker).await;
    }
    drop(server);
    let journal = std::fs::read_dir(data.join("log"))
        .expect("log dir")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "jnl"))
        .expect("a journal file");
    let mut bytes = std::fs::read(&journal).expect("read");
    let at = bytes.windows(marker.len()).position(|window| window == marker.as_bytes()).expect("an event in it");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&journal, &bytes).expect("write");
    let stderr = refusal(&data);
    assert!(stderr.contains(&format!("fjall's journal ({}) is damaged", journal.display())), "{stderr}");
    assert!(stderr.contains("restore the data directory from a backup"), "{stderr}");
}
