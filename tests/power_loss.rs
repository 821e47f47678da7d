//! Power loss: the real binary runs on a FUSE filesystem that keeps only what was fsynced
//! (see `lazyfs`), is killed with SIGKILL, the power is cut, and the restarted server must
//! serve every event it acknowledged under `--fsync always`, whether the cut comes right
//! after the very first start (when the data directory itself is new) or after checkpoints
//! and earlier cuts. A `--fsync never` control must lose acknowledged events, proving the
//! filesystem can show a loss. Skipped where FUSE cannot be mounted.

mod common;
mod lazyfs;

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{KillOnDrop, Raw, TIMEOUT, ack_seq};
use lazyfs::LazyFs;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Unacknowledged `APUB`s each connection keeps in flight.
const WINDOW: usize = 32;
/// Acknowledgements to collect before a cut.
const ACKS: usize = 300;
/// How long publishing goes on before a cut that comes "later": a few of the store's
/// 100 ms checkpoint intervals, so that checkpoints (fjall fsynced, write-ahead log
/// segments freed and prepared) happen while events are acknowledged.
const ROUND_TIME: Duration = Duration::from_millis(350);

/// The mounted filesystem, or `None` (and a message) where this machine has no FUSE.
fn mount_or_skip() -> Option<LazyFs> {
    match LazyFs::mount() {
        Ok(fs) => Some(fs),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// `dir`'s entries made durable, as a program does it: open the directory, fsync it.
fn fsync_dir(dir: &Path) {
    std::fs::File::open(dir).and_then(|dir| dir.sync_all()).expect("fsync a directory");
}

/// The binary, serving on a port-0 listener; killed when dropped (if still running).
struct Server {
    child: KillOnDrop,
    addr: SocketAddr,
}

impl Server {
    /// Starts `eventline serve --port 0 --data <data> --fsync <fsync>`, its stderr going
    /// to `log`; `Err` with that stderr if it exits instead of announcing its address.
    async fn start(data: &Path, fsync: &str, log: &Path) -> Result<Server, String> {
        let (data, fsync, log) = (data.to_owned(), fsync.to_owned(), log.to_owned());
        let started = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_eventline"))
                .args(["serve", "--port", "0", "--log-level", "warn", "--fsync", &fsync, "--data"])
                .arg(&data)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).expect("server log file"))
                .spawn()
                .expect("spawn eventline");
            let mut line = String::new();
            let stdout = child.stdout.take().expect("stdout");
            std::io::BufReader::new(stdout).read_line(&mut line).expect("read the address line");
            match line.trim().strip_prefix("listening on ") {
                Some(addr) => Ok(Server { child: KillOnDrop(child), addr: addr.parse().expect("an address") }),
                None => {
                    let status = child.wait().expect("wait");
                    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                    Err(format!("{status}: {}", stderr.trim()))
                }
            }
        });
        tokio::time::timeout(TIMEOUT, started).await.expect("the server starts or exits in time").expect("spawn task")
    }

    /// SIGKILL, and waits for the process to be gone (so no file on the mount is open).
    async fn kill(mut self) {
        tokio::task::spawn_blocking(move || self.child.kill()).await.expect("killed");
    }
}

/// One acknowledged event.
#[derive(Debug, Clone)]
struct Acked {
    seq: u64,
    subject: String,
    payload: String,
}

/// Publishes on `power.<tag>` with up to [`WINDOW`] unacknowledged `APUB`s until the
/// server goes away, counting each `+ACK` in `acks` and waking `progress`.
async fn publish_until_killed(
    addr: SocketAddr,
    tag: String,
    acks: Arc<AtomicUsize>,
    progress: Arc<Notify>,
) -> Vec<Acked> {
    let stream =
        tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let info = next_line(&mut reader).await.expect("INFO");
    assert!(info.starts_with("INFO "), "got {info:?}");
    write.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n").await.expect("CONNECT");
    assert_eq!(next_line(&mut reader).await.as_deref(), Some("PONG"));

    let subject = format!("power.{tag}");
    let mut acked = Vec::new();
    let mut pending = std::collections::VecDeque::new();
    for n in 0.. {
        if pending.len() < WINDOW {
            // Unique, and of varying length.
            let payload = format!("{tag}-n{n} {}", "x".repeat(n % 97));
            let apub = format!("APUB {subject} {}\r\n{payload}\r\n", payload.len());
            if write.write_all(apub.as_bytes()).await.is_err() {
                break;
            }
            pending.push_back(payload);
            continue;
        }
        let Some(answer) = next_line(&mut reader).await else { break };
        let payload = pending.pop_front().expect("an ack answers a pending APUB");
        acked.push(Acked { seq: ack_seq(&answer), subject: subject.clone(), payload });
        acks.fetch_add(1, Ordering::Relaxed);
        progress.notify_one();
    }
    acked
}

/// The next line without its CRLF, or `None` once the server has gone (EOF or reset).
async fn next_line(reader: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    let mut line = String::new();
    match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await.expect("a line or the close in time") {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

/// Publishes on `connections` connections until [`ACKS`] acknowledgements have arrived and
/// `at_least` has passed, then kills the server mid-stream; returns what was acknowledged.
async fn publish_and_kill(server: Server, round: usize, connections: usize, at_least: Duration) -> Vec<Acked> {
    let started = Instant::now();
    let acks = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let tasks: Vec<_> = (0..connections)
        .map(|conn| {
            let tag = format!("r{round}k{conn}");
            tokio::spawn(publish_until_killed(server.addr, tag, Arc::clone(&acks), Arc::clone(&progress)))
        })
        .collect();
    while acks.load(Ordering::Relaxed) < ACKS {
        tokio::time::timeout(TIMEOUT, progress.notified()).await.expect("acks keep coming");
    }
    // A wait for checkpoints to happen, not a synchronisation: publishing goes on meanwhile.
    tokio::time::sleep_until((started + at_least).into()).await;
    server.kill().await;
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(tokio::time::timeout(TIMEOUT, task).await.expect("publisher ends").expect("publisher task"));
    }
    acked
}

/// What a server restarted after a cut made of the acknowledged events.
enum Restart {
    /// It exited instead of serving, with this stderr.
    Refused(String),
    /// It serves; `lost` acknowledged events are missing or different, of `served` events.
    Served { server: Server, lost: usize, served: usize },
}

/// Restarts on `data` and compares what it serves with `acked`.
async fn restart(data: &Path, fsync: &str, log: &Path, acked: &[Acked]) -> Restart {
    let server = match Server::start(data, fsync, log).await {
        Ok(server) => server,
        Err(why) => return Restart::Refused(why),
    };
    let served = fetch_all(server.addr).await;
    let lost = acked
        .iter()
        .filter(|acked| {
            !served
                .get(&acked.seq)
                .is_some_and(|(subject, payload)| *subject == acked.subject && *payload == acked.payload)
        })
        .count();
    Restart::Served { server, lost, served: served.len() }
}

/// Every event on `power.>`, by sequence, with `FETCH` in pages.
async fn fetch_all(addr: SocketAddr) -> HashMap<u64, (String, String)> {
    const PAGE: usize = 5000;
    let mut client = Raw::with_headers(addr).await;
    let mut served = HashMap::new();
    let mut from = 1;
    loop {
        let (events, _) = client.fetch("q", &format!("power.> from-seq={from} limit={PAGE}")).await;
        let page = events.len();
        for event in events {
            from = event.seq() + 1;
            let payload = String::from_utf8(event.payload.clone()).expect("UTF-8 payload");
            served.insert(event.seq(), (event.subject, payload));
        }
        if page < PAGE {
            return served;
        }
    }
}

/// Fails unless the restart served every acknowledged event; returns the server.
fn expect_none_lost(case: &str, acked: usize, restart: Restart) -> Server {
    match restart {
        Restart::Refused(why) => {
            panic!("{case}: {acked} acknowledged, the restart after the cut refused to start: {why}")
        }
        Restart::Served { server, lost, served } => {
            eprintln!("{case}: {acked} acknowledged, {lost} lost; the restarted server serves {served} events");
            assert_eq!(lost, 0, "{case}: {lost} of {acked} acknowledged events lost (the restart serves {served})");
            server
        }
    }
}

/// A power cut soon after the very first start, which created the data directory: the
/// directory's own entry, `wal/` and every file the acknowledgements depend on must have
/// been made durable before the first acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_soon_after_the_first_start_keeps_every_acknowledged_event() {
    let Some(mut fs) = mount_or_skip() else { return };
    let logs = tempfile::tempdir().expect("temp dir");
    let (data, log) = (fs.path().join("data"), logs.path().join("server.log"));
    let server = Server::start(&data, "always", &log).await.expect("the first start");
    let acked = publish_and_kill(server, 0, 1, Duration::ZERO).await;
    fs.power_cut();
    let server =
        expect_none_lost("cut after the first start", acked.len(), restart(&data, "always", &log, &acked).await);
    server.kill().await;
}

/// As above, with the data directory created (and its entry fsynced) beforehand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_soon_after_the_first_start_in_an_existing_directory_keeps_every_acknowledged_event() {
    let Some(mut fs) = mount_or_skip() else { return };
    let logs = tempfile::tempdir().expect("temp dir");
    let (data, log) = (fs.path().join("data"), logs.path().join("server.log"));
    std::fs::create_dir(&data).expect("mkdir data");
    fsync_dir(fs.path());
    let server = Server::start(&data, "always", &log).await.expect("the first start");
    let acked = publish_and_kill(server, 0, 1, Duration::ZERO).await;
    fs.power_cut();
    let server = expect_none_lost(
        "cut after the first start, data/ made beforehand",
        acked.len(),
        restart(&data, "always", &log, &acked).await,
    );
    server.kill().await;
}

/// Rounds of publishing through checkpoints, each ended by a kill and a cut; every event
/// acknowledged in any round must survive every later cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_cuts_after_checkpoints_keep_every_acknowledged_event() {
    const ROUNDS: usize = 3;
    let Some(mut fs) = mount_or_skip() else { return };
    let logs = tempfile::tempdir().expect("temp dir");
    let (data, log) = (fs.path().join("data"), logs.path().join("server.log"));
    let mut acked = Vec::new();
    let mut server = Server::start(&data, "always", &log).await.expect("the first start");
    for round in 0..ROUNDS {
        acked.extend(publish_and_kill(server, round, 2, ROUND_TIME).await);
        fs.power_cut();
        let case = format!("round {round} of repeated cuts");
        server = expect_none_lost(&case, acked.len(), restart(&data, "always", &log, &acked).await);
    }
    server.kill().await;
}

/// Starts a server on a data directory whose tree the test itself makes durable once the
/// server has created it (as a machine that ran before would have), publishes through
/// checkpoints, kills, cuts, and restarts: the loss measured is only that of file data
/// not fsynced.
async fn cut_on_a_durable_tree(fs: &mut LazyFs, fsync: &str) -> (usize, Restart) {
    let logs = tempfile::tempdir().expect("temp dir");
    let (data, log) = (fs.path().join("data"), logs.path().join("server.log"));
    let server = Server::start(&data, fsync, &log).await.expect("the first start");
    let mut client = Raw::quiet(server.addr).await;
    let mut acked = Vec::new();
    for n in 0..20 {
        let payload = format!("before the sync {n}");
        let seq = client.apub("power.warm", &payload).await;
        acked.push(Acked { seq, subject: "power.warm".into(), payload });
    }
    fs.sync_directories();
    acked.extend(publish_and_kill(server, 0, 1, ROUND_TIME).await);
    fs.power_cut();
    (acked.len(), restart(&data, fsync, &log, &acked).await)
}

/// With the tree durable, `--fsync always` loses nothing: the filesystem reports no loss
/// where every acknowledgement waited for its fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_durable_tree_fsync_always_loses_nothing() {
    let Some(mut fs) = mount_or_skip() else { return };
    let (acked, restart) = cut_on_a_durable_tree(&mut fs, "always").await;
    expect_none_lost("durable tree, --fsync always", acked, restart).kill().await;
}

/// The control: `--fsync never` acknowledges before any fsync, and only the checkpoints
/// (every 100 ms, fjall fsynced) make events durable, so a cut while publishing must lose
/// the events acknowledged since the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_durable_tree_fsync_never_loses_acknowledged_events() {
    let Some(mut fs) = mount_or_skip() else { return };
    match cut_on_a_durable_tree(&mut fs, "never").await {
        (acked, Restart::Refused(why)) => panic!("control: {acked} acknowledged, the restart refused to start: {why}"),
        (acked, Restart::Served { server, lost, served }) => {
            eprintln!(
                "control, durable tree, --fsync never: {acked} acknowledged, {lost} lost; the restarted server serves {served} events"
            );
            assert!(lost > 0, "control: no loss seen of {acked} events acknowledged without an fsync");
            server.kill().await;
        }
    }
}

/// The filesystem itself: file data and directory entries survive a cut only once
/// fsynced, a directory is fsynced the way programs do it (open, fsync), a rename is
/// durable with its directory, and flock works.
#[test]
fn the_filesystem_keeps_only_what_was_fsynced() {
    let Some(mut fs) = mount_or_skip() else { return };
    let root: PathBuf = fs.path().to_owned();
    let (kept, lost) = (root.join("kept"), root.join("lost"));
    let write = |path: &Path, text: &str, sync: bool| {
        let mut file = std::fs::File::create(path).expect("create");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
        if sync {
            file.sync_data().expect("fdatasync");
        }
    };
    std::fs::create_dir(&kept).expect("mkdir");
    fsync_dir(&root);
    std::fs::create_dir(&lost).expect("mkdir");
    write(&kept.join("synced"), "durable", true);
    write(&kept.join("unsynced"), "not durable", false);
    write(&kept.join("old"), "old", true);
    write(&kept.join("new"), "new", true);
    fsync_dir(&kept);
    write(&kept.join("unlisted"), "synced, but its entry is not", true);
    std::fs::OpenOptions::new()
        .append(true)
        .open(kept.join("synced"))
        .and_then(|mut file| std::io::Write::write_all(&mut file, b" and more"))
        .expect("append");
    std::fs::rename(kept.join("new"), kept.join("old")).expect("rename over a file");
    assert_eq!(std::fs::read_to_string(kept.join("old")).expect("read"), "new");

    let flock = |inner: &[&str]| {
        Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "3"])
            .arg(kept.join("synced"))
            .args(inner)
            .status()
    };
    match flock(&["true"]) {
        Ok(status) => {
            assert!(status.success(), "flock on the filesystem: {status}");
            let path = kept.join("synced");
            let nested =
                flock(&["flock", "--nonblock", "--conflict-exit-code", "3", path.to_str().expect("path"), "true"]);
            assert_eq!(nested.expect("flock").code(), Some(3), "a second flock on a locked file must conflict");
        }
        Err(error) => eprintln!("flock(1) not run: {error}"),
    }

    fs.power_cut();
    let read = |name: &str| std::fs::read_to_string(kept.join(name)).ok();
    assert!(!lost.exists(), "a directory whose entry was never fsynced survived");
    assert_eq!(read("synced").as_deref(), Some("durable"), "the unsynced append must be gone");
    assert_eq!(read("unsynced").as_deref(), Some(""), "a file whose data was never fsynced is empty");
    assert_eq!(read("unlisted"), None, "a file whose entry was never fsynced survived");
    assert_eq!((read("old").as_deref(), read("new").as_deref()), (Some("old"), Some("new")), "unsynced rename");

    std::fs::rename(kept.join("new"), kept.join("old")).expect("rename over a file");
    fsync_dir(&kept);
    fs.power_cut();
    assert_eq!((read("old").as_deref(), read("new")), (Some("new"), None), "a rename made durable by its directory");
}
