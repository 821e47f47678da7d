//! `eventline bench fanout`: P publishers -> S subscribers on one subject.
//!
//! Subscribers connect and confirm their `SUB` with PING/PONG before the clock starts.
//! Publishers then write a pre-built batch of `PUB` frames as fast as the socket takes it
//! and finish with PING/PONG, so the publish time includes the server processing it all.
//! Each subscriber counts until it has every message or, once the publishers are done, it
//! has been idle for `--idle-ms`; whatever is missing then is reported as lost.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::receive::{self, Counter};
use super::stats::{Summary, grouped, mb, per_sec, share};
use super::{BenchError, CommonArgs};
use crate::client::{CONNECT, Client};
use eventline::protocol::client::Delivery;

/// Bytes of `PUB` frames per write: big enough that a write is a syscall per ~64 KiB,
/// small enough to stay in cache.
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// Arguments of `eventline bench fanout`.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Publisher connections; `--count` is shared between them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub publishers: u64,
    /// Subscriber connections; each expects every message.
    #[arg(long, default_value_t = 1)]
    pub subscribers: u64,
    /// Subject to publish and subscribe on.
    #[arg(long, default_value = "bench.fanout", value_parser = super::subject)]
    pub subject: String,
}

/// Everything a fanout run measured; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub mode: &'static str,
    pub server: String,
    pub publishers: u64,
    pub subscribers: u64,
    pub size: usize,
    pub count: u64,
    pub subject: String,
    pub publish: Throughput,
    pub per_subscriber: Vec<SubscriberReport>,
    /// Over subscribers; absent when there are none.
    pub sub_msg_per_sec: Option<Summary>,
    pub sub_mb_per_sec: Option<Summary>,
    /// Expected deliveries (count x subscribers) that did not arrive.
    pub lost: u64,
}

/// Messages moved in some time. Publish time runs from the start to the last publisher's
/// final PONG.
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub msgs: u64,
    pub secs: f64,
    pub msg_per_sec: f64,
    pub mb_per_sec: f64,
}

impl Throughput {
    /// `msgs` messages carrying `bytes` of payload in all, moved in `time`.
    pub fn of(msgs: u64, bytes: u64, time: Duration) -> Throughput {
        Throughput {
            msgs,
            secs: time.as_secs_f64(),
            msg_per_sec: per_sec(msgs, time),
            mb_per_sec: mb(per_sec(bytes, time)),
        }
    }

    /// One line of a human-readable report: `label`, the rates, then `what` moved.
    pub fn line(&self, label: &str, what: &str) -> String {
        format!("{label:<9} {:>12} msg/s {:>9.2} MB/s  ({what})\n", grouped(self.msg_per_sec), self.mb_per_sec)
    }
}

/// One subscriber's count; its time runs from the start to its last message.
#[derive(Debug, Serialize)]
pub struct SubscriberReport {
    pub received: u64,
    pub lost: u64,
    pub secs: f64,
    pub msg_per_sec: f64,
    pub mb_per_sec: f64,
    /// Why it stopped early (e.g. cut as a slow consumer), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs the fanout benchmark and prints its report.
///
/// # Errors
/// Setup failures, and any publisher failure (the run is void then). A subscriber that
/// fails after the start is reported with its error and its count instead.
pub async fn run(args: &FanoutArgs) -> Result<(), BenchError> {
    let report = measure(args).await?;
    for (i, sub) in report.per_subscriber.iter().enumerate() {
        if let Some(error) = &sub.error {
            eprintln!("eventline bench: subscriber {}: {error}", i + 1);
        }
    }
    super::print(&report, args.common.json, human)
}

/// Runs the benchmark and returns its figures.
///
/// # Errors
/// As [`run`].
pub async fn measure(args: &FanoutArgs) -> Result<FanoutReport, BenchError> {
    let common = &args.common;
    let (wait, idle) = (common.timeout(), common.idle());
    let sub = format!("SUB {} 1\r\n", args.subject);
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        subscribers.push(Client::open(&common.server, wait, CONNECT, sub.as_bytes()).await?);
    }
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        let conn = Client::connect(&common.server, wait).await?;
        super::check_payload(&conn, common.size)?;
        publishers.push(conn);
    }
    let (frame_len, batch) = batch(&args.subject, common.size, BATCH_BYTES);

    // Dropping a JoinSet aborts its tasks, so an early return leaves nothing running.
    let (done, publishers_done) = watch::channel(false);
    let mut counting = JoinSet::new();
    let expected = common.count;
    for (index, conn) in subscribers.into_iter().enumerate() {
        let done = publishers_done.clone();
        counting.spawn(async move { (index, count(conn, expected, done, idle).await) });
    }
    let start = Instant::now();
    let mut publishing = JoinSet::new();
    for (index, conn) in (0u64..).zip(publishers) {
        let messages = share(common.count, args.publishers, index);
        publishing.spawn(publish(conn, batch.clone(), frame_len, messages));
    }
    let mut published = start;
    while let Some(finished) = publishing.join_next().await {
        published = published.max(finished??);
    }
    done.send_replace(true);
    let mut counts = Vec::new();
    while let Some(counted) = counting.join_next().await {
        counts.push(counted?);
    }
    counts.sort_by_key(|(index, _)| *index);

    let payload = |msgs: u64| msgs * common.size as u64;
    let publish_time = published - start;
    let per_subscriber: Vec<SubscriberReport> = counts
        .into_iter()
        .map(|(_, c)| {
            let time = c.last.map_or(Duration::ZERO, |last| last - start);
            SubscriberReport {
                received: c.received,
                lost: common.count.saturating_sub(c.received),
                secs: time.as_secs_f64(),
                msg_per_sec: per_sec(c.received, time),
                mb_per_sec: mb(per_sec(c.bytes, time)),
                error: c.error,
            }
        })
        .collect();
    let rates: Vec<f64> = per_subscriber.iter().map(|s| s.msg_per_sec).collect();
    let mbs: Vec<f64> = per_subscriber.iter().map(|s| s.mb_per_sec).collect();
    Ok(FanoutReport {
        mode: "fanout",
        server: common.server.clone(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        size: common.size,
        count: common.count,
        subject: args.subject.clone(),
        publish: Throughput::of(common.count, payload(common.count), publish_time),
        lost: per_subscriber.iter().map(|s| s.lost).sum(),
        per_subscriber,
        sub_msg_per_sec: Summary::of(&rates),
        sub_mb_per_sec: Summary::of(&mbs),
    })
}

/// One `PUB` frame for `subject` with a `size`-byte payload, repeated to about `target`
/// bytes (at least one frame). Frames are all the same length, so any prefix of whole
/// frames is itself a valid batch: the last, partial batch is a slice of this one.
pub(super) fn batch(subject: &str, size: usize, target: usize) -> (usize, Bytes) {
    let mut frame = BytesMut::new();
    frame.put_slice(b"PUB ");
    frame.put_slice(subject.as_bytes());
    frame.put_u8(b' ');
    frame.put_slice(itoa::Buffer::new().format(size).as_bytes());
    frame.put_slice(b"\r\n");
    frame.put_bytes(b'x', size);
    frame.put_slice(b"\r\n");
    let frames = (target / frame.len()).max(1);
    let mut batch = BytesMut::with_capacity(frames * frame.len());
    for _ in 0..frames {
        batch.put_slice(&frame);
    }
    (frame.len(), batch.freeze())
}

/// Publishes `count` messages from `batch`, then waits for the PONG of a final PING.
/// Returns when that PONG arrived.
pub(super) async fn publish(
    mut conn: Client,
    batch: Bytes,
    frame_len: usize,
    count: u64,
) -> Result<Instant, BenchError> {
    let per_batch = (batch.len() / frame_len) as u64;
    let mut left = count;
    while left > 0 {
        let frames = left.min(per_batch);
        // `frames` <= per_batch, which came from a usize.
        conn.write(&batch[..frames as usize * frame_len]).await?;
        left -= frames;
    }
    conn.sync().await?;
    Ok(Instant::now())
}

/// What one subscriber counted.
#[derive(Debug)]
struct Counted {
    expected: u64,
    received: u64,
    /// Payload bytes received.
    bytes: u64,
    /// When the read holding the last message returned.
    last: Option<Instant>,
    /// Says when the publishers are done: from then on a quiet spell ends the count.
    done: watch::Receiver<bool>,
    error: Option<String>,
}

/// Counts messages on `conn` until `expected` arrived or, once `done` says the publishers
/// finished, nothing came for `idle`. A failure ends the count and is kept with it.
async fn count(mut conn: Client, expected: u64, done: watch::Receiver<bool>, idle: Duration) -> Counted {
    let mut counted = Counted { expected, received: 0, bytes: 0, last: None, done, error: None };
    if let Err(error) = receive::count(&mut conn, &mut counted, idle, "before all messages arrived").await {
        counted.error = Some(error.to_string());
    }
    counted
}

impl Counter for Counted {
    fn complete(&self) -> bool {
        self.received >= self.expected
    }

    fn count(&mut self, _: &Client, msg: &Delivery, read_at: Instant) -> Result<(), BenchError> {
        self.received += 1;
        self.bytes += msg.payload.len() as u64;
        self.last = Some(read_at);
        Ok(())
    }

    fn quiet(&mut self, _: &Client) -> Result<bool, BenchError> {
        Ok(*self.done.borrow())
    }
}

/// The human-readable report.
fn human(r: &FanoutReport) -> String {
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut out = format!(
        "fanout on {}: {} -> {}, {} msgs of {} B, subject {}\n",
        r.server,
        plural(r.publishers, "publisher"),
        plural(r.subscribers, "subscriber"),
        grouped(r.count as f64),
        r.size,
        r.subject,
    );
    let p = &r.publish;
    out += &p.line("publish:", &format!("{} msgs in {:.3} s", grouped(p.msgs as f64), p.secs));
    for (i, s) in r.per_subscriber.iter().enumerate() {
        out += &format!(
            "sub {:<4}  {:>12} msg/s {:>9.2} MB/s  ({} received, {} lost, last at {:.3} s)\n",
            i + 1,
            grouped(s.msg_per_sec),
            s.mb_per_sec,
            grouped(s.received as f64),
            grouped(s.lost as f64),
            s.secs
        );
    }
    if let (Some(rate), Some(mbs)) = (r.sub_msg_per_sec, r.sub_mb_per_sec) {
        out += &format!(
            "subscribers msg/s: min {}  median {}  max {}\n",
            grouped(rate.min),
            grouped(rate.median),
            grouped(rate.max)
        );
        out += &format!("subscribers MB/s:  min {:.2}  median {:.2}  max {:.2}\n", mbs.min, mbs.median, mbs.max);
    }
    out += &format!(
        "lost: {} of {} expected deliveries\n",
        grouped(r.lost as f64),
        grouped((r.count * r.subscribers) as f64)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_whole_frames() {
        let (frame_len, frames) = batch("a.b", 5, 64);
        assert_eq!(&frames[..frame_len], b"PUB a.b 5\r\nxxxxx\r\n");
        assert_eq!(frame_len, 18);
        assert_eq!(frames.len(), 3 * frame_len);
        assert!(frames.chunks(frame_len).all(|f| f == &frames[..frame_len]));
    }

    #[test]
    fn a_batch_has_at_least_one_frame() {
        let (frame_len, frames) = batch("s", 1000, 64);
        assert_eq!(frames.len(), frame_len);
        assert!(frames.starts_with(b"PUB s 1000\r\n"));
        let (frame_len, frames) = batch("s", 0, 64);
        assert_eq!(&frames[..frame_len], b"PUB s 0\r\n\r\n");
    }
}
