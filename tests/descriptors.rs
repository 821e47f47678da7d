//! File descriptors, with the real binary: a connection costs one, the soft open-files
//! limit is raised to the hard one at start-up, and running out of descriptors delays new
//! connections (logged at most once a second) without disturbing the ones being served.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, Raw, TIMEOUT, spawn_command};

/// `eventline serve` on a fresh data directory under `sh -c "ulimit ...; exec ..."`, with
/// stderr piped; returns the process and its address.
fn serve_with_ulimit(ulimit: &str, data: &std::path::Path) -> (KillOnDrop, SocketAddr) {
    let mut command = Command::new("sh");
    let script = format!("ulimit {ulimit} && exec \"$0\" \"$@\"");
    command.args(["-c", &script, env!("CARGO_BIN_EXE_eventline")]).stderr(Stdio::piped());
    let (child, addr) = spawn_command(command, data, &[]);
    (KillOnDrop(child), addr)
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/<pid>/fd").count()
}

/// The soft and hard "Max open files" of a process.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/<pid>/limits");
    let line = limits.lines().find(|line| line.starts_with("Max open files")).expect("open files line");
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[3].to_owned(), words[4].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_costs_one_descriptor_and_the_soft_limit_is_raised() {
    const CONNECTIONS: usize = 100;
    let data = tempfile::tempdir().expect("temp dir");
    let (server, addr) = serve_with_ulimit("-Sn 256", data.path());
    let pid = server.0.id();
    let (soft, hard) = open_files_limits(pid);
    assert_eq!(soft, hard, "the soft open-files limit is raised to the hard one");
    let before = open_descriptors(pid);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(Raw::quiet(addr).await);
    }
    let during = open_descriptors(pid);
    assert!(
        (CONNECTIONS..CONNECTIONS + 5).contains(&(during - before)),
        "{CONNECTIONS} connections took {} descriptors",
        during - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_new_connections_wait_and_served_ones_go_on() {
    let data = tempfile::tempdir().expect("temp dir");
    // Both limits, so start-up cannot raise them: about 40 descriptors for everything.
    let (mut server, addr) = serve_with_ulimit("-n 64", data.path());
    let mut stderr = server.0.stderr.take().expect("stderr");
    let started = Instant::now();
    let mut healthy = Raw::quiet(addr).await;
    // Connect until the server stops accepting: a connection that gets no INFO within a
    // moment is queued by the kernel, waiting for a descriptor.
    let mut served = Vec::new();
    let waiting = loop {
        assert!(served.len() < 100, "the limit of 64 descriptors never bit");
        let mut raw = Raw::connect_keep_info(addr).await;
        match tokio::time::timeout(Duration::from_millis(500), raw.line()).await {
            Ok(info) => {
                assert!(info.starts_with("INFO"), "{info}");
                served.push(raw);
            }
            Err(_) => break raw,
        }
    };
    // The connections already served are not disturbed.
    for _ in 0..5 {
        assert_eq!(healthy.sync().await, Vec::<String>::new());
        assert!(healthy.apub("fd.still", "ok").await > 0);
    }
    // Descriptors come back: the waiting connection is taken.
    served.truncate(served.len().saturating_sub(5));
    let mut waiting = waiting;
    let info = waiting.line().await;
    assert!(info.starts_with("INFO"), "{info}");
    drop((served, waiting, healthy));
    let elapsed = started.elapsed();
    drop(server);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).expect("stderr");
    let logged = log.lines().filter(|line| line.contains("cannot accept connections")).count();
    assert!(logged >= 1, "the refusal is logged: {log}");
    let most = elapsed.as_secs() as usize + 1;
    assert!(logged <= most, "logged {logged} times in {elapsed:?}: at most once a second");
    assert!(elapsed < TIMEOUT * 3);
}
