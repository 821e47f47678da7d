//! End to end: the load tool against a real eventline server on a port-0 listener.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::apub::{self, ApubArgs};
use super::fanout::{self, FanoutArgs};
use super::latency::{self, LatencyArgs};
use super::replay::{self, ReplayArgs};
use super::{BenchError, CommonArgs, Target, TargetArgs};
use crate::client::ClientError;
use eventline::broker::Broker;
use eventline::config::{BrokerConfig, Config, Limits, StoreConfig};
use eventline::subject::Filter;

mod jetstream;

/// Starts a server on a temporary data directory; it stops when the returned sender is
/// dropped, and the directory goes with the returned guard.
async fn server(config: Config) -> (String, (oneshot::Sender<()>, tempfile::TempDir)) {
    let data = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = Config { store: StoreConfig::new(data.path()), ..config };
    let broker = Broker::start(config, CancellationToken::new()).expect("open the event log");
    tokio::spawn(eventline::server::run(listener, Arc::new(broker), async {
        let _ = stopped.await;
    }));
    (addr, (stop, data))
}

fn common(server: &str, size: usize, count: u64) -> CommonArgs {
    CommonArgs { server: server.to_owned(), size, count, timeout_secs: 10, idle_ms: 2000, json: false }
}

fn target(target: Target) -> TargetArgs {
    TargetArgs { target, stream: "EVENTLINE_TEST".to_owned() }
}

fn apub_args(server: &str, count: u64, window: u64, on: Target) -> ApubArgs {
    ApubArgs { common: common(server, 128, count), target: target(on), window, subject: "t.apub".to_owned() }
}

fn replay_args(server: &str, count: u64, subject: &str, on: Target) -> ReplayArgs {
    ReplayArgs { common: common(server, 100, count), target: target(on), subject: subject.to_owned(), live: 0 }
}

/// Checks an apub run that acknowledged `count` publishes into an otherwise idle stream.
fn assert_all_acked(report: &apub::ApubReport, count: u64) {
    assert_eq!((report.acked, report.duplicates), (count, 0));
    let (first, last) = (report.first_seq.expect("first seq"), report.last_seq.expect("last seq"));
    assert_eq!(last - first + 1, count, "one sequence per publish");
    assert!(report.msg_per_sec > 0.0 && report.mb_per_sec > 0.0);
    let l = report.ack_latency_us.expect("samples");
    assert!(0.0 < l.min && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
}

/// Checks a replay run of `count` events of `size` bytes.
fn assert_all_replayed(report: &replay::ReplayReport, count: u64, size: usize) {
    assert_eq!((report.replayed, report.load.msgs), (count, count));
    assert!(report.load.msg_per_sec > 0.0 && report.msg_per_sec > 0.0);
    assert!((report.mb_per_sec - report.msg_per_sec * size as f64 / 1e6).abs() < 1e-6);
    assert!(0.0 < report.first_msg_ms && report.first_msg_ms <= report.secs * 1e3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_to_every_subscriber() {
    let (addr, _stop) = server(Config::default()).await;
    let args =
        FanoutArgs { common: common(&addr, 64, 10_001), publishers: 2, subscribers: 3, subject: "t.fanout".to_owned() };
    let report = fanout::measure(&args).await.expect("fanout runs");
    assert_eq!(report.lost, 0);
    assert_eq!(report.per_subscriber.len(), 3);
    for sub in &report.per_subscriber {
        assert_eq!((sub.received, sub.lost, &sub.error), (10_001, 0, &None));
        assert!(sub.msg_per_sec > 0.0 && sub.mb_per_sec > 0.0);
    }
    assert_eq!(report.publish.msgs, 10_001);
    assert!(report.sub_msg_per_sec.is_some_and(|s| s.min <= s.median && s.median <= s.max));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_measures_every_message() {
    let (addr, _stop) = server(Config::default()).await;
    let args = LatencyArgs {
        common: common(&addr, 32, 200),
        rate: 2000,
        subject: "t.latency".to_owned(),
        target: target(Target::Eventline),
    };
    let report = latency::measure(&args).await.expect("latency runs");
    assert_eq!((report.received, report.lost, &report.error), (200, 0, &None));
    let l = report.latency_us.expect("samples");
    assert!(0.0 < l.min && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max);
    // 199 intervals at 2000/s: about 0.1 s.
    assert!(report.send_secs >= 0.09, "sent too fast: {} s", report.send_secs);
}

#[tokio::test]
async fn a_size_over_the_servers_max_payload_is_refused_up_front() {
    let (addr, _stop) =
        server(Config { limits: Limits { max_payload: 100, ..Limits::default() }, ..Config::default() }).await;
    let args = FanoutArgs { common: common(&addr, 101, 1), publishers: 1, subscribers: 1, subject: "t".to_owned() };
    let error = fanout::measure(&args).await.expect_err("too big");
    assert!(matches!(error, BenchError::Usage(_)), "{error}");
    assert!(error.to_string().contains("max_payload 100"), "{error}");
}

#[tokio::test]
async fn latency_needs_room_for_the_stamp() {
    let args = LatencyArgs {
        common: common("127.0.0.1:1", 7, 1),
        rate: 1,
        subject: "t".to_owned(),
        target: target(Target::Eventline),
    };
    assert!(matches!(latency::measure(&args).await, Err(BenchError::Usage(_))));
}

#[tokio::test]
async fn an_unreachable_server_is_a_connect_error() {
    // Bind then drop: the port is free and, for a moment, nobody listens on it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local addr").to_string();
    drop(listener);
    let args = FanoutArgs { common: common(&addr, 8, 1), publishers: 1, subscribers: 1, subject: "t".to_owned() };
    let error = fanout::measure(&args).await.expect_err("nobody listens");
    assert!(matches!(error, BenchError::Client(ClientError::Connect { .. })), "{error}");
    assert!(error.to_string().contains(&addr), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apub_acknowledges_every_publish_one_at_a_time_or_in_a_window() {
    let (addr, _stop) = server(Config::default()).await;
    let one = apub::measure(&apub_args(&addr, 200, 1, Target::Eventline)).await.expect("window 1 runs");
    assert_all_acked(&one, 200);
    assert_eq!(one.first_seq, Some(1));
    let many = apub::measure(&apub_args(&addr, 3000, 64, Target::Eventline)).await.expect("window 64 runs");
    assert_all_acked(&many, 3000);
    assert_eq!(many.first_seq, Some(201), "after the first run's events");
}

#[tokio::test]
async fn apub_to_a_volatile_subject_is_a_nak() {
    let volatile = Filter::new(bytes::Bytes::from_static(b"t.>")).expect("filter");
    let (addr, _stop) = server(Config {
        broker: BrokerConfig { volatile: vec![volatile], ..BrokerConfig::default() },
        ..Config::default()
    })
    .await;
    let error = apub::measure(&apub_args(&addr, 10, 4, Target::Eventline)).await.expect_err("volatile");
    assert!(matches!(error, BenchError::Nak { .. }), "{error}");
    assert!(error.to_string().contains("volatile"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_every_stored_event_from_the_start() {
    let (addr, _stop) = server(Config::default()).await;
    // Another subject's events in between must not count.
    apub::measure(&apub_args(&addr, 50, 8, Target::Eventline)).await.expect("apub runs");
    let args = ReplayArgs { live: 5_000, ..replay_args(&addr, 20_000, "t.replay", Target::Eventline) };
    let report = replay::measure(&args).await.expect("replay");
    assert_all_replayed(&report, 20_000, 100);
    let live = report.live.expect("a live phase");
    assert!(live.msgs == 5_000 && live.msg_per_sec > 0.0, "{live:?}");
    let again = replay::measure(&replay_args(&addr, 10, "t.replay", Target::Eventline)).await.expect_err("not empty");
    assert!(again.to_string().contains("already holds events (the last is seq 25050)"), "{again}");
}

#[tokio::test]
async fn the_jetstream_target_needs_jetstream() {
    let (addr, _stop) = server(Config::default()).await;
    let error = apub::measure(&apub_args(&addr, 1, 1, Target::Jetstream)).await.expect_err("no JetStream");
    assert!(matches!(error, BenchError::Usage(_)), "{error}");
    assert!(error.to_string().contains("start nats-server with -js"), "{error}");
}
