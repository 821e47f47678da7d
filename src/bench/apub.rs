//! `eventline bench apub`: acknowledged publishes from one connection, at most `--window`
//! sent and not yet acknowledged.
//!
//! eventline: `APUB <subject> <size>` frames, each answered `+ACK seq=N rev=R` once durable
//! (with `--fsync always`, after the batch holding it was fsynced); a connection's acks come
//! in publish order. JetStream: the stream is deleted and re-created first (file storage,
//! capturing just `--subject`), then `PUB <subject> <inbox>.<n> <size>` frames, each answered
//! by a `PubAck` JSON message on `<inbox>.<n>`, received by a subscription to `<inbox>.*`.
//!
//! Whenever acks arrive, the window is refilled in one write. An ack's latency runs from just
//! before the write that sent its publish to the return of the read that brought the ack.
//! Throughput is acks over the time from the first send to the last ack.

use bytes::{BufMut, BytesMut};
use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use super::jetstream::{self, Api, PubAck};
use super::stats::{Percentiles, grouped, mb, per_sec, since};
use super::{BenchError, CommonArgs, Target, TargetArgs};
use crate::client::{Client, Fill};
use eventline::protocol::client::{Delivery, Received};

/// Arguments of `eventline bench apub`.
#[derive(Args, Debug, Clone)]
pub struct ApubArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Most publishes in flight: sent and not yet acknowledged.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
    /// Subject to publish on (stored: not volatile on eventline).
    #[arg(long, default_value = "bench.apub", value_parser = super::subject)]
    pub subject: String,
}

/// Everything an apub run measured; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct ApubReport {
    pub mode: &'static str,
    pub target: Target,
    pub server: String,
    pub subject: String,
    pub size: usize,
    pub count: u64,
    pub window: u64,
    /// Acknowledged publishes (all of `count`: anything else fails the run).
    pub acked: u64,
    /// Of them, acks that said the message was a duplicate (none unless a server dedups).
    pub duplicates: u64,
    /// Log sequences of the first and last acknowledged publish.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// From the first send to the last ack.
    pub secs: f64,
    pub msg_per_sec: f64,
    pub mb_per_sec: f64,
    /// Publish-to-ack round trips.
    pub ack_latency_us: Option<Percentiles>,
}

/// Runs the apub benchmark and prints its report.
///
/// # Errors
/// Setup failures, a refused publish (`-NAK`, a JetStream error ack, `-ERR`), a closed
/// connection, or an ack that does not come within the timeout.
pub async fn run(args: &ApubArgs) -> Result<(), BenchError> {
    let report = measure(args).await?;
    super::print(&report, args.common.json, human)
}

/// Runs the benchmark and returns its figures.
///
/// # Errors
/// As [`run`].
pub async fn measure(args: &ApubArgs) -> Result<ApubReport, BenchError> {
    let common = &args.common;
    let wait = common.timeout();
    let (conn, inbox) = match args.target.target {
        Target::Eventline => {
            let conn = Client::connect(&common.server, wait).await?;
            super::check_eventline(&conn)?;
            (conn, None)
        }
        Target::Jetstream => {
            let mut api = Api::open(&common.server, wait).await?;
            api.recreate_stream(&args.target.stream, &args.subject).await?;
            let inbox = jetstream::inbox();
            let setup = format!("SUB {inbox}.* 1\r\n");
            (Client::open(&common.server, wait, jetstream::CONNECT, setup.as_bytes()).await?, Some(inbox))
        }
    };
    super::check_payload(&conn, common.size)?;
    let mut run = Run {
        conn,
        inbox,
        stamps: Vec::with_capacity(usize::try_from(common.count.min(1 << 24)).unwrap_or(0)),
        nanos: Vec::with_capacity(usize::try_from(common.count.min(1 << 24)).unwrap_or(0)),
        acked: 0,
        duplicates: 0,
        first_seq: None,
        last_seq: None,
    };
    let (start, end) = run.go(&args.subject, common.size, common.count, args.window).await?;
    let time = end - start;
    Ok(ApubReport {
        mode: "apub",
        target: args.target.target,
        server: common.server.clone(),
        subject: args.subject.clone(),
        size: common.size,
        count: common.count,
        window: args.window,
        acked: run.acked,
        duplicates: run.duplicates,
        first_seq: run.first_seq,
        last_seq: run.last_seq,
        secs: time.as_secs_f64(),
        msg_per_sec: per_sec(run.acked, time),
        mb_per_sec: mb(per_sec(run.acked * common.size as u64, time)),
        ack_latency_us: Percentiles::of(run.nanos),
    })
}

/// One publisher's state.
struct Run {
    conn: Client,
    /// JetStream's reply inbox prefix; `None` for eventline.
    inbox: Option<String>,
    /// Send time of publish `n` (nanoseconds since the run's base).
    stamps: Vec<u64>,
    /// Round trip of each ack, in arrival order.
    nanos: Vec<u64>,
    acked: u64,
    duplicates: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

impl Run {
    /// Publishes `count` messages keeping at most `window` unacknowledged; returns when the
    /// first was sent and when the last ack arrived.
    async fn go(
        &mut self,
        subject: &str,
        size: usize,
        count: u64,
        window: u64,
    ) -> Result<(Instant, Instant), BenchError> {
        let eventline_header = format!("APUB {subject} {size}\r\n");
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut numbers = itoa::Buffer::new();
        let base = Instant::now();
        let mut sent: u64 = 0;
        // When the read that brought the buffered ops returned, as an instant and as a stamp.
        let (mut read_at, mut arrived) = (base, 0);
        while self.acked < count {
            buf.clear();
            let now = since(base);
            while sent < count && sent - self.acked < window {
                match &self.inbox {
                    None => buf.put_slice(eventline_header.as_bytes()),
                    Some(inbox) => {
                        buf.put_slice(b"PUB ");
                        buf.put_slice(subject.as_bytes());
                        buf.put_u8(b' ');
                        buf.put_slice(inbox.as_bytes());
                        buf.put_u8(b'.');
                        buf.put_slice(numbers.format(sent).as_bytes());
                        buf.put_u8(b' ');
                        buf.put_slice(numbers.format(size).as_bytes());
                        buf.put_slice(b"\r\n");
                    }
                }
                buf.put_bytes(b'x', size);
                buf.put_slice(b"\r\n");
                self.stamps.push(now);
                sent += 1;
            }
            if !buf.is_empty() {
                self.conn.write(&buf).await?;
            }
            // Wait for at least one more ack, then refill the window.
            let before = self.acked;
            loop {
                while let Some(op) = self.conn.try_next()? {
                    self.take(op, arrived)?;
                }
                if self.acked > before {
                    break;
                }
                match self.conn.fill(Some(self.conn.deadline())).await? {
                    Fill::Data => (read_at, arrived) = (Instant::now(), since(base)),
                    Fill::Idle => return Err(self.conn.timed_out("waiting for a publish ack").into()),
                    Fill::Closed => return Err(self.conn.closed("before acknowledging every publish").into()),
                }
            }
        }
        Ok((base, read_at))
    }

    /// Handles one op from the server; `arrived` is when the read holding it returned.
    fn take(&mut self, op: Received, arrived: u64) -> Result<(), BenchError> {
        match op {
            Received::Ack { seq, duplicate, .. } if self.inbox.is_none() => {
                // eventline acks a connection's APUBs in order: this is publish number `acked`.
                let sent = self.stamps.get(self.acked as usize).copied().ok_or_else(|| self.unexpected("+ACK"))?;
                self.ack(seq, duplicate, arrived.saturating_sub(sent));
            }
            Received::Msg(msg) if self.inbox.is_some() => {
                let index = self.publish_index(&msg).ok_or_else(|| self.unexpected("message"))?;
                if jetstream::status(msg.headers.as_deref()) == Some(503) {
                    let what = "publish answered 503 no responders: no stream captures the subject";
                    return Err(BenchError::failed(&self.conn, what.to_owned()));
                }
                let ack: PubAck = serde_json::from_slice(&msg.payload)?;
                match (ack.error, ack.seq) {
                    (Some(error), _) => {
                        return Err(BenchError::JetStream {
                            server: self.conn.server().to_owned(),
                            request: "publish".to_owned(),
                            code: error.code,
                            description: error.description,
                        });
                    }
                    (None, Some(seq)) => {
                        let sent = self.stamps[index];
                        self.ack(seq, ack.duplicate, arrived.saturating_sub(sent));
                    }
                    (None, None) => return Err(self.unexpected("PubAck without seq")),
                }
            }
            Received::Nak(text) => return Err(BenchError::nak(&self.conn, &text)),
            Received::Err(text) => return Err(self.conn.server_error(&text).into()),
            _ => {}
        }
        Ok(())
    }

    fn ack(&mut self, seq: u64, duplicate: bool, nanos: u64) {
        self.acked += 1;
        self.duplicates += u64::from(duplicate);
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
        self.nanos.push(nanos);
    }

    /// The publish number a JetStream ack answers: its subject is `<inbox>.<n>`, n sent.
    fn publish_index(&self, msg: &Delivery) -> Option<usize> {
        let rest = msg.subject.strip_prefix(self.inbox.as_deref()?.as_bytes())?.strip_prefix(b".")?;
        let index: usize = std::str::from_utf8(rest).ok()?.parse().ok()?;
        (index < self.stamps.len()).then_some(index)
    }

    fn unexpected(&self, what: &str) -> BenchError {
        BenchError::failed(&self.conn, format!("unexpected {what}: it answers no publish in flight"))
    }
}

/// The human-readable report.
fn human(r: &ApubReport) -> String {
    let target = match r.target {
        Target::Eventline => "eventline APUB",
        Target::Jetstream => "JetStream publish",
    };
    let mut out = format!(
        "apub on {} ({target}): {} msgs of {} B, window {}, subject {}\n",
        r.server,
        grouped(r.count as f64),
        r.size,
        r.window,
        r.subject
    );
    out += &format!(
        "acked:  {:>12} msg/s {:>9.2} MB/s  ({} acks in {:.3} s, {} duplicates, seq {}..{})\n",
        grouped(r.msg_per_sec),
        r.mb_per_sec,
        grouped(r.acked as f64),
        r.secs,
        r.duplicates,
        r.first_seq.map_or("-".to_owned(), |s| s.to_string()),
        r.last_seq.map_or("-".to_owned(), |s| s.to_string()),
    );
    if let Some(l) = r.ack_latency_us {
        out += &l.line("ack round trip");
    }
    out
}
