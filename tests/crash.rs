//! Crash safety of the real binary with `--fsync always`: connections pipeline `APUB`s,
//! the server is killed with SIGKILL mid-stream, and the log left on disk must hold every
//! acknowledged event with its payload, with sequences gapless from 1 and no event twice.
//! The log is read back with the store library between the kill and the restart; the
//! restarted server must then go on from the log's head and remember the message ids.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{KillOnDrop, Raw, TIMEOUT, parse_ack, spawn_binary};
use eventline::config::StoreConfig;
use eventline::store::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Kill/verify/restart cycles in one test.
const CYCLES: usize = 6;
/// Publishing connections per cycle.
const CONNECTIONS: usize = 4;
/// Unacknowledged `APUB`s each connection keeps in flight.
const WINDOW: usize = 64;
/// Acknowledgements (all connections together) after which the server is killed.
const ACKS_PER_CYCLE: usize = 500;

/// The binary, serving on a port-0 listener; killed when dropped (if still running).
struct Server {
    child: KillOnDrop,
    addr: SocketAddr,
}

impl Server {
    /// Starts `eventline serve --port 0 --data <dir> --fsync always` and reads the address
    /// it announces on stdout.
    async fn spawn(data: &Path) -> Server {
        let data = data.to_owned();
        let started = tokio::task::spawn_blocking(move || {
            let (child, addr) = spawn_binary(&data, &["--fsync", "always"]);
            Server { child: KillOnDrop(child), addr }
        });
        tokio::time::timeout(TIMEOUT, started).await.expect("the server starts in time").expect("spawn task")
    }

    /// SIGKILL, and waits for the process to be gone (so its lock on the log is released).
    async fn kill(mut self) {
        tokio::task::spawn_blocking(move || self.child.kill()).await.expect("killed");
    }
}

/// One acknowledged event.
#[derive(Debug, Clone)]
struct Acked {
    seq: u64,
    revision: u64,
    subject: String,
    payload: String,
    msg_id: Option<String>,
}

/// What one connection did before the server died.
#[derive(Default)]
struct Published {
    acked: Vec<Acked>,
    /// Every payload written, acknowledged or not.
    sent: Vec<String>,
}

/// Everything known about the log across cycles.
#[derive(Default)]
struct Ledger {
    acked: Vec<Acked>,
    sent: HashSet<String>,
}

fn apub(subject: &str, options: &str, payload: &str) -> String {
    format!("APUB {subject} {} {options}\r\n{payload}\r\n", payload.len())
}

/// Publishes on `crash.k<conn>` with up to [`WINDOW`] unacknowledged `APUB`s until the
/// server goes away, counting each `+ACK` in `acks` and waking `progress`.
async fn publish_until_killed(
    addr: SocketAddr,
    cycle: usize,
    conn: usize,
    acks: Arc<AtomicUsize>,
    progress: Arc<Notify>,
) -> Published {
    let stream =
        tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let info = next_line(&mut reader).await.expect("INFO");
    assert!(info.starts_with("INFO "), "got {info:?}");
    write.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n").await.expect("CONNECT");
    assert_eq!(next_line(&mut reader).await.as_deref(), Some("PONG"));

    let subject = format!("crash.k{conn}");
    let mut published = Published::default();
    let mut pending: VecDeque<(String, String)> = VecDeque::new();
    let mut n = 0usize;
    loop {
        let mut burst = String::new();
        while pending.len() < WINDOW {
            let msg_id = format!("c{cycle}-k{conn}-n{n}");
            // Unique and of varying length.
            let payload = format!("{msg_id} {}", "x".repeat(n % 97));
            burst.push_str(&apub(&subject, &format!("msg-id={msg_id}"), &payload));
            published.sent.push(payload.clone());
            pending.push_back((msg_id, payload));
            n += 1;
        }
        if !burst.is_empty() && write.write_all(burst.as_bytes()).await.is_err() {
            return published;
        }
        let Some(answer) = next_line(&mut reader).await else { return published };
        let (seq, revision, duplicate) = parse_ack(&answer);
        assert!(!duplicate, "a fresh msg id was taken for a duplicate: {answer}");
        let (msg_id, payload) = pending.pop_front().expect("an ack answers a pending APUB");
        published.acked.push(Acked { seq, revision, subject: subject.clone(), payload, msg_id: Some(msg_id) });
        acks.fetch_add(1, Ordering::Relaxed);
        progress.notify_one();
    }
}

/// The next line without its CRLF, or `None` once the server has gone (EOF or reset).
async fn next_line(reader: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    let mut line = String::new();
    match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await.expect("a line or the close in time") {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

/// Reads the log in `dir` (the server is dead) and checks it against `ledger`; returns its
/// last sequence.
fn verify_log(dir: &Path, ledger: &Ledger) -> u64 {
    let store = Store::open(&StoreConfig::new(dir), |_| {}).expect("the log opens after a crash");
    let last = store.last_seq().expect("last seq");
    let max_acked = ledger.acked.iter().map(|a| a.seq).max().unwrap_or(0);
    assert!(last >= max_acked, "the log ends at {last}, but seq {max_acked} was acknowledged");
    // Acknowledgements wait for the high-water mark, so it covers every acknowledged event.
    assert!(store.high_water_mark() >= max_acked, "high-water mark {} < acked {max_acked}", store.high_water_mark());

    // Gapless from 1, every event one that was sent, none twice, revisions counting per subject.
    let mut seen = HashSet::new();
    let mut revisions: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut timestamp = 0;
    for seq in 1..=last {
        let event = store.get(seq).expect("read").unwrap_or_else(|| panic!("gap: seq {seq} of 1..={last} is missing"));
        assert_eq!(event.seq, seq);
        let payload = String::from_utf8(event.payload.to_vec()).expect("utf-8 payload");
        assert!(ledger.sent.contains(&payload), "seq {seq} holds {payload:?}, which was never sent");
        assert!(seen.insert(payload.clone()), "seq {seq} holds {payload:?} a second time");
        let revision = revisions.entry(event.subject.to_vec()).or_insert(0);
        *revision += 1;
        assert_eq!(event.revision, *revision, "revision of seq {seq}");
        assert!(event.timestamp >= timestamp, "timestamps go back at seq {seq}");
        timestamp = event.timestamp;
    }
    assert!(store.get(last + 1).expect("read").is_none());

    // Every acknowledged event is where its ack said, with its payload.
    for acked in &ledger.acked {
        let event = store.get(acked.seq).expect("read").expect("an acknowledged event is in the log");
        assert_eq!(event.payload, acked.payload.as_bytes(), "payload of acknowledged seq {}", acked.seq);
        assert_eq!(event.subject, acked.subject.as_bytes(), "subject of acknowledged seq {}", acked.seq);
        assert_eq!(event.revision, acked.revision, "revision of acknowledged seq {}", acked.seq);
    }
    last
}

/// One cycle's publishers until `ACKS_PER_CYCLE` acks, then SIGKILL.
async fn publish_and_kill(server: Server, cycle: usize) -> Vec<Published> {
    let acks = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|conn| {
            tokio::spawn(publish_until_killed(server.addr, cycle, conn, Arc::clone(&acks), Arc::clone(&progress)))
        })
        .collect();
    while acks.load(Ordering::Relaxed) < ACKS_PER_CYCLE {
        tokio::time::timeout(TIMEOUT, progress.notified()).await.expect("acks keep coming");
    }
    server.kill().await;
    let mut results = Vec::new();
    for task in tasks {
        results.push(tokio::time::timeout(TIMEOUT, task).await.expect("publisher ends").expect("publisher task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_event_survives_sigkill_and_the_log_stays_gapless() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let data: PathBuf = dir.path().join("data");
    let mut ledger = Ledger::default();
    let mut server = Server::spawn(&data).await;

    for cycle in 0..CYCLES {
        for published in publish_and_kill(server, cycle).await {
            ledger.sent.extend(published.sent);
            ledger.acked.extend(published.acked);
        }
        let snapshot = std::mem::take(&mut ledger);
        let (last, returned) = tokio::task::spawn_blocking({
            let data = data.clone();
            move || (verify_log(&data, &snapshot), snapshot)
        })
        .await
        .expect("verify");
        ledger = returned;

        // The restarted server goes on from the head, and remembers the message ids.
        server = Server::spawn(&data).await;
        let mut client = Raw::quiet(server.addr).await;
        let probe = format!("crash.probe.{cycle}");
        let payload = format!("probe {cycle}");
        client.send(&apub(&probe, "", &payload)).await;
        let (seq, revision, _) = parse_ack(&client.line().await);
        assert_eq!((seq, revision), (last + 1, 1), "cycle {cycle}: the first APUB after the restart");
        ledger.sent.insert(payload.clone());
        ledger.acked.push(Acked { seq, revision, subject: probe, payload, msg_id: None });
        let recent: Vec<Acked> = ledger.acked.iter().rev().filter(|a| a.msg_id.is_some()).take(8).cloned().collect();
        for acked in recent {
            let msg_id = acked.msg_id.as_deref().unwrap_or_default();
            client.send(&apub(&acked.subject, &format!("msg-id={msg_id}"), "retry after the crash")).await;
            assert_eq!(
                client.line().await,
                format!("+ACK seq={} rev={} duplicate", acked.seq, acked.revision),
                "msg id {msg_id} after the restart"
            );
        }
    }
    // A final kill and check covers the last cycle's probe and retries.
    server.kill().await;
    let last = tokio::task::spawn_blocking(move || verify_log(&data, &ledger)).await.expect("verify");
    assert!(last as usize >= CYCLES * (ACKS_PER_CYCLE + 1), "the log holds {last} events");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
}
