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
