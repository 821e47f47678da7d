//! The `--target jetstream` paths against a real nats-server with JetStream, when one is
//! installed (`NATS_SERVER`, else `nats-server` on the PATH or in /usr/sbin); skipped if not.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A nats-server child process with JetStream on a temporary store, killed on drop.
struct NatsServer {
    child: Child,
    addr: String,
    _store: tempfile::TempDir,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server_binary() -> Option<PathBuf> {
    let from_env = std::env::var_os("NATS_SERVER").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("nats-server")).find(|p| p.is_file()));
    from_env.or(on_path).or_else(|| Some(PathBuf::from("/usr/sbin/nats-server"))).filter(|p| p.is_file())
}

/// Starts `nats-server -js` on a free port, or `None` (and a note) if there is none to start.
fn nats_server() -> Option<NatsServer> {
    let Some(binary) = nats_server_binary() else {
        eprintln!("skipped: no nats-server (set NATS_SERVER)");
        return None;
    };
    let store = tempfile::tempdir().expect("temp dir");
    // Bind then drop: the port is free and, for a moment, nobody listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = Command::new(binary)
        .args(["-js", "-sd"])
        .arg(store.path())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let server = NatsServer { child, addr: format!("127.0.0.1:{port}"), _store: store };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&server.addr).is_err() {
        assert!(Instant::now() < deadline, "nats-server is not accepting on {}", server.addr);
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apub_counts_jetstream_pub_acks() {
    let Some(nats) = nats_server() else { return };
    let one = apub::measure(&apub_args(&nats.addr, 100, 1, Target::Jetstream)).await.expect("window 1 runs");
    assert_all_acked(&one, 100);
    let many = apub::measure(&apub_args(&nats.addr, 3000, 64, Target::Jetstream)).await.expect("window 64 runs");
    assert_all_acked(&many, 3000);
    assert_eq!((one.first_seq, many.first_seq), (Some(1), Some(1)), "each run re-creates the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_through_a_jetstream_push_consumer() {
    let Some(nats) = nats_server() else { return };
    for _ in 0..2 {
        let args = ReplayArgs { live: 5_000, ..replay_args(&nats.addr, 20_000, "t.replay", Target::Jetstream) };
        let report = replay::measure(&args).await.expect("replay runs");
        assert_all_replayed(&report, 20_000, 100);
        assert_eq!(report.live.map(|live| live.msgs), Some(5_000), "the consumer follows the stream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_on_a_jetstream_stream_subject() {
    let Some(nats) = nats_server() else { return };
    let args = LatencyArgs {
        common: common(&nats.addr, 32, 200),
        rate: 2000,
        subject: "t.latency".to_owned(),
        target: target(Target::Jetstream),
    };
    let report = latency::measure(&args).await.expect("latency runs");
    assert_eq!((report.received, report.lost, &report.error), (200, 0, &None));
    let mut api = super::super::jetstream::Api::open(&nats.addr, Duration::from_secs(10)).await.expect("api");
    assert_eq!(api.stream_messages("EVENTLINE_TEST").await.expect("stream info"), 200, "stored as well");
}

#[tokio::test]
async fn the_eventline_target_needs_eventline() {
    let Some(nats) = nats_server() else { return };
    let error = apub::measure(&apub_args(&nats.addr, 1, 1, Target::Eventline)).await.expect_err("not eventline");
    assert!(error.to_string().contains("for nats-server use --target jetstream"), "{error}");
    let replay = replay::measure(&replay_args(&nats.addr, 1, "t.r", Target::Eventline)).await.expect_err("no");
    assert!(replay.to_string().contains("is not eventline"), "{replay}");
}
