//! End to end: the load tool against a real eventline server on a port-0 listener.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::fanout::{self, FanoutArgs};
use super::latency::{self, LatencyArgs};
use super::{BenchError, CommonArgs};
use crate::broker::{Broker, BrokerConfig};

/// Starts a server on a temporary data directory; it stops when the returned sender is
/// dropped, and the directory goes with the returned guard.
async fn server(config: BrokerConfig) -> (String, (oneshot::Sender<()>, tempfile::TempDir)) {
    let data = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = BrokerConfig { data: data.path().to_owned(), ..config };
    let broker = Broker::start(config, CancellationToken::new()).expect("open the event log");
    tokio::spawn(crate::server::run(listener, Arc::new(broker), async {
        let _ = stopped.await;
    }));
    (addr, (stop, data))
}

fn common(server: &str, size: usize, count: u64) -> CommonArgs {
    CommonArgs { server: server.to_owned(), size, count, timeout_secs: 10, idle_ms: 2000, json: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_to_every_subscriber() {
    let (addr, _stop) = server(BrokerConfig::default()).await;
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
    let (addr, _stop) = server(BrokerConfig::default()).await;
    let args = LatencyArgs { common: common(&addr, 32, 200), rate: 2000, subject: "t.latency".to_owned() };
    let report = latency::measure(&args).await.expect("latency runs");
    assert_eq!((report.received, report.lost, &report.error), (200, 0, &None));
    let l = report.latency_us.expect("samples");
    assert!(0.0 < l.min && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max);
    // 199 intervals at 2000/s: about 0.1 s.
    assert!(report.send_secs >= 0.09, "sent too fast: {} s", report.send_secs);
}

#[tokio::test]
async fn a_size_over_the_servers_max_payload_is_refused_up_front() {
    let (addr, _stop) = server(BrokerConfig { max_payload: 100, ..BrokerConfig::default() }).await;
    let args = FanoutArgs { common: common(&addr, 101, 1), publishers: 1, subscribers: 1, subject: "t".to_owned() };
    let error = fanout::measure(&args).await.expect_err("too big");
    assert!(matches!(error, BenchError::Usage(_)), "{error}");
    assert!(error.to_string().contains("max_payload 100"), "{error}");
}

#[tokio::test]
async fn latency_needs_room_for_the_stamp() {
    let args = LatencyArgs { common: common("127.0.0.1:1", 7, 1), rate: 1, subject: "t".to_owned() };
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
    assert!(matches!(error, BenchError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(&addr), "{error}");
}
