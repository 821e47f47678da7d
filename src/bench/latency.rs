//! `eventline bench latency`: one publisher at a fixed rate -> one subscriber.
//!
//! Each payload starts with its send time (nanoseconds since an `Instant` shared by both
//! connections, 8 bytes big-endian) and is padded to `--size`. The publisher is paced by
//! 1 ms ticks and sends, per tick, every message due by then, so a late tick is caught up
//! rather than lowering the rate. Latency is the send stamp to the moment the read that
//! completed the message returned: server time plus two loopback hops plus our own read.
//! The stamp is the actual send time, so a publisher that falls behind shows as a lower
//! achieved rate in the report, not as latency.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use clap::Args;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval};

use super::jetstream::Api;
use super::receive::{self, Counter};
pub use super::stats::Percentiles;
use super::stats::{between, grouped, per_sec, since};
use super::{BenchError, CommonArgs, Target, TargetArgs};
use crate::client::{CONNECT, Client};
use eventline::protocol::client::Delivery;

/// The pacer's tick: small enough that a batch per tick is a short burst, large enough
/// that the timer is cheap.
const TICK: Duration = Duration::from_millis(1);

/// Bytes of the send stamp at the start of each payload.
const STAMP: usize = 8;

/// Upper bound on the samples reserved up front; more still fit, by growing.
const RESERVE_SAMPLES: u64 = 1 << 22;

/// Arguments of `eventline bench latency`.
#[derive(Args, Debug, Clone)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Messages per second the publisher sends.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Subject to publish and subscribe on.
    #[arg(long, default_value = "bench.latency", value_parser = super::subject)]
    pub subject: String,
    /// With --target jetstream, a stream capturing --subject is (re-)created first, so every
    /// message is also stored; nats-server still delivers it to the plain subscriber live.
    /// With eventline, a subject is stored unless the server was told it is --volatile.
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Everything a latency run measured; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub mode: &'static str,
    pub target: Target,
    pub server: String,
    pub rate: u64,
    pub size: usize,
    pub count: u64,
    pub subject: String,
    /// Time from the first send to the last, and the rate that achieves.
    pub send_secs: f64,
    pub sent_per_sec: f64,
    pub received: u64,
    pub lost: u64,
    /// Absent when nothing arrived.
    pub latency_us: Option<Percentiles>,
    /// Why the subscriber stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs the latency benchmark and prints its report.
///
/// # Errors
/// Setup and publisher failures, and a `--size` too small to carry the send stamp.
pub async fn run(args: &LatencyArgs) -> Result<(), BenchError> {
    let report = measure(args).await?;
    if let Some(error) = &report.error {
        eprintln!("eventline bench: subscriber: {error}");
    }
    super::print(&report, args.common.json, human)
}

/// Runs the benchmark and returns its figures.
///
/// # Errors
/// As [`run`].
pub async fn measure(args: &LatencyArgs) -> Result<LatencyReport, BenchError> {
    let common = &args.common;
    if common.size < STAMP {
        return Err(BenchError::Usage(
            "latency needs --size of at least 8: each payload carries its send time".to_owned(),
        ));
    }
    if args.target.target == Target::Jetstream {
        let mut api = Api::open(&common.server, common.timeout()).await?;
        api.recreate_stream(&args.target.stream, &args.subject).await?;
    }
    let sub = format!("SUB {} 1\r\n", args.subject);
    let subscriber = Client::open(&common.server, common.timeout(), CONNECT, sub.as_bytes()).await?;
    let publisher = Client::connect(&common.server, common.timeout()).await?;
    super::check_payload(&publisher, common.size)?;

    let base = Instant::now();
    let (done, publisher_done) = watch::channel(false);
    // Dropping a JoinSet aborts its tasks, so an early return leaves nothing running.
    let mut receiving = JoinSet::new();
    receiving.spawn(receive(subscriber, common.count, base, publisher_done, common.idle()));
    let header = format!("PUB {} {}\r\n", args.subject, common.size);
    let mut pacing = JoinSet::new();
    pacing.spawn(pace(publisher, header, common.size, args.rate, common.count, base));
    let send_time = match pacing.join_next().await {
        Some(paced) => paced??,
        None => Duration::ZERO,
    };
    done.send_replace(true);
    let samples = match receiving.join_next().await {
        Some(received) => received?,
        None => Samples::default(),
    };

    let received = samples.nanos.len() as u64;
    Ok(LatencyReport {
        mode: "latency",
        target: args.target.target,
        server: common.server.clone(),
        rate: args.rate,
        size: common.size,
        count: common.count,
        subject: args.subject.clone(),
        send_secs: send_time.as_secs_f64(),
        sent_per_sec: per_sec(common.count.saturating_sub(1), send_time),
        received,
        lost: common.count.saturating_sub(received),
        latency_us: Percentiles::of(samples.nanos),
        error: samples.error,
    })
}

/// Message `i` (from 0) is due `i / rate` seconds after the start: how many are due
/// `elapsed` after it, never more than `count`.
fn due(elapsed: Duration, rate: u64, count: u64) -> u64 {
    let due = elapsed.as_nanos().saturating_mul(u128::from(rate)) / 1_000_000_000 + 1;
    u64::try_from(due).unwrap_or(u64::MAX).min(count)
}

/// Sends `count` stamped messages at `rate`, then syncs with PING/PONG. Returns the time
/// from the first send to the last.
async fn pace(
    mut conn: Client,
    header: String,
    size: usize,
    rate: u64,
    count: u64,
    base: Instant,
) -> Result<Duration, BenchError> {
    let frame = header.len() + size + 2;
    let mut buf = BytesMut::with_capacity(frame * 64);
    let mut ticks = interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut sent = 0;
    let mut last_send = start;
    while sent < count {
        ticks.tick().await;
        let due = due(start.elapsed(), rate, count);
        if due <= sent {
            continue;
        }
        buf.clear();
        for _ in sent..due {
            buf.put_slice(header.as_bytes());
            buf.put_u64(since(base));
            buf.put_bytes(b'x', size - STAMP);
            buf.put_slice(b"\r\n");
        }
        last_send = Instant::now();
        conn.write(&buf).await?;
        sent = due;
    }
    conn.sync().await?;
    Ok(last_send - start)
}

/// The latencies one subscriber measured.
#[derive(Debug, Default)]
struct Samples {
    nanos: Vec<u64>,
    error: Option<String>,
}

/// Collects one latency per stamped message until `expected` arrived or, once `done`
/// says the publisher finished, nothing came for `idle`.
async fn receive(
    mut conn: Client,
    expected: u64,
    base: Instant,
    done: watch::Receiver<bool>,
    idle: Duration,
) -> Samples {
    let capacity = usize::try_from(expected.min(RESERVE_SAMPLES)).unwrap_or(0);
    let mut collecting = Collecting { nanos: Vec::with_capacity(capacity), expected, base, done };
    let error = receive::count(&mut conn, &mut collecting, idle, "before all messages arrived").await.err();
    Samples { nanos: collecting.nanos, error: error.map(|error| error.to_string()) }
}

/// [`Samples`] being collected.
struct Collecting {
    nanos: Vec<u64>,
    expected: u64,
    /// The clock of the send stamps.
    base: Instant,
    /// Says when the publisher is done: from then on a quiet spell ends the count.
    done: watch::Receiver<bool>,
}

impl Counter for Collecting {
    fn complete(&self) -> bool {
        self.nanos.len() as u64 >= self.expected
    }

    fn count(&mut self, _: &Client, msg: &Delivery, read_at: Instant) -> Result<(), BenchError> {
        // Messages without a stamp are someone else's on the same subject.
        if let Some(stamp) = msg.payload.first_chunk::<STAMP>() {
            self.nanos.push(between(self.base, read_at).saturating_sub(u64::from_be_bytes(*stamp)));
        }
        Ok(())
    }

    fn quiet(&mut self, _: &Client) -> Result<bool, BenchError> {
        Ok(*self.done.borrow())
    }
}

/// The human-readable report.
fn human(r: &LatencyReport) -> String {
    let mut out = format!(
        "latency on {}: {} msgs of {} B at {} msg/s, subject {}\n",
        r.server,
        grouped(r.count as f64),
        r.size,
        grouped(r.rate as f64),
        r.subject
    );
    out += &format!("sent:     {} msg/s achieved over {:.3} s\n", grouped(r.sent_per_sec), r.send_secs);
    out += &format!("received: {}, lost {}\n", grouped(r.received as f64), grouped(r.lost as f64));
    if let Some(l) = r.latency_us {
        out += &l.line("latency");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fall_due_at_the_rate() {
        assert_eq!(due(Duration::ZERO, 1000, 10_000), 1);
        assert_eq!(due(Duration::from_micros(999), 1000, 10_000), 1);
        assert_eq!(due(Duration::from_millis(1), 1000, 10_000), 2);
        assert_eq!(due(Duration::from_secs(1), 10_000, 50_000), 10_001);
        assert_eq!(due(Duration::from_secs(100), 10_000, 50_000), 50_000);
        assert_eq!(due(Duration::from_secs(u64::MAX), u64::MAX, u64::MAX), u64::MAX);
    }
}
