//! `eventline bench replay`: load N events on one subject, then time one subscriber
//! replaying all of them from the start of the log.
//!
//! Load: one connection writes N plain `PUB`s as fast as the socket takes them. On
//! eventline, a final PING/PONG returns once all are stored (a non-volatile subject is
//! stored before it is delivered). On JetStream the stream is deleted and re-created first
//! (file storage, capturing just `--subject`), and loading ends when `$JS.API.STREAM.INFO`
//! counts N messages. The load time is reported too: it is the unacknowledged publish
//! throughput into the log.
//!
//! Replay: on eventline, `SUB <subject> 1 FROM 1` on a fresh connection, counting `HMSG`s
//! that carry `Nats-Sequence`; on JetStream, a subscription to an inbox, then an ephemeral
//! push consumer delivering the whole stream there (`ack_policy` none, instant replay, no
//! flow control). The clock starts as the request is sent and stops at the read that
//! brought the N-th event; time to first message is to the read that brought the first.
//!
//! Live, with `--live M`: once the replay is done (on eventline, once the caught-up marker
//! came), M more events are published as in the load, and the same subscriber counts them
//! as they arrive: the throughput of a reader that has caught up and follows the head. Its
//! clock runs from the first live publish to the read that brought the M-th event.

use clap::Args;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fanout::{self, Throughput};
use super::jetstream::{self, Api};
use super::receive::{self, Counter};
use super::stats::{grouped, mb, per_sec};
use super::{BenchError, CommonArgs, Target, TargetArgs};
use crate::client::{CONNECT, Client};
use eventline::protocol::client::Delivery;
use eventline::protocol::headers;

/// The status eventline sends once a catch-up subscription has replayed the log.
const CAUGHT_UP: u16 = 100;

/// Arguments of `eventline bench replay`.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Subject to load and replay. On eventline it must hold no events yet (the replay
    /// starts at sequence 1): give each run its own subject, or a fresh data directory.
    #[arg(long, default_value = "bench.replay", value_parser = super::subject)]
    pub subject: String,
    /// Events to publish once the replay is done, delivered live to the same subscriber.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub live: u64,
}

/// Everything a replay run measured; `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub mode: &'static str,
    pub target: Target,
    pub server: String,
    pub subject: String,
    pub size: usize,
    pub count: u64,
    /// Loading the events: from the first `PUB` until the server holds them all.
    pub load: Throughput,
    /// Events replayed (all of `count`: anything else fails the run).
    pub replayed: u64,
    /// From the replay request to the read that brought the first event.
    pub first_msg_ms: f64,
    /// From the replay request to the read that brought the last event.
    pub secs: f64,
    pub msg_per_sec: f64,
    pub mb_per_sec: f64,
    /// With `--live`: the events published after the replay, as the subscriber got them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Throughput>,
}

/// Runs the replay benchmark and prints its report.
///
/// # Errors
/// Setup failures; an eventline subject that already holds events; a load that the
/// server does not store in full; a replay that stops before N events.
pub async fn run(args: &ReplayArgs) -> Result<(), BenchError> {
    let report = measure(args).await?;
    super::print(&report, args.common.json, human)
}

/// Runs the benchmark and returns its figures.
///
/// # Errors
/// As [`run`].
pub async fn measure(args: &ReplayArgs) -> Result<ReplayReport, BenchError> {
    let common = &args.common;
    let (server, wait, stream) = (common.server.as_str(), common.timeout(), args.target.stream.as_str());
    let target = args.target.target;
    if common.count == 0 {
        return Err(BenchError::Usage("replay needs --count of at least 1".to_owned()));
    }
    let mut api = Api::open(server, wait).await?;
    match target {
        Target::Eventline => holds_nothing(&mut api, &args.subject).await?,
        Target::Jetstream => api.recreate_stream(stream, &args.subject).await?,
    }

    let publisher = Client::connect(server, wait).await?;
    super::check_payload(&publisher, common.size)?;
    let (frame_len, batch) = fanout::batch(&args.subject, common.size, fanout::BATCH_BYTES);
    let start = Instant::now();
    let mut loaded = fanout::publish(publisher, batch.clone(), frame_len, common.count).await?;
    if target == Target::Jetstream {
        api.wait_stored(stream, common.count).await?;
        loaded = Instant::now();
    }
    let load_time = loaded - start;

    let count = common.count;
    // Dropping a JoinSet aborts its tasks, so an early return leaves nothing running.
    let mut counting = JoinSet::new();
    let started = match target {
        Target::Eventline => {
            let mut conn = Client::connect(server, wait).await?;
            let started = Instant::now();
            conn.write(format!("SUB {} 1 FROM 1\r\n", args.subject).as_bytes()).await?;
            counting.spawn(replayed(conn, count, target));
            started
        }
        Target::Jetstream => {
            let deliver = format!("{}.replay", jetstream::inbox());
            let conn = Client::open(server, wait, CONNECT, format!("SUB {deliver} 1\r\n").as_bytes()).await?;
            // Counted meanwhile, so the first deliveries don't wait in the socket for the
            // consumer's creation to be answered.
            let started = Instant::now();
            counting.spawn(replayed(conn, count, target));
            api.create_consumer(stream, &deliver).await?;
            started
        }
    };
    let (counted, subscriber) = match counting.join_next().await {
        Some(counted) => counted??,
        None => return Err(BenchError::Usage("no replay ran".to_owned())),
    };
    let live = match args.live {
        0 => None,
        live => Some(follow(server, wait, subscriber, target, live, (frame_len, batch)).await?),
    };

    let first = counted.first.unwrap_or(counted.last);
    let time = counted.last - started;
    Ok(ReplayReport {
        mode: "replay",
        target,
        server: common.server.clone(),
        subject: args.subject.clone(),
        size: common.size,
        count,
        load: Throughput::of(count, count * common.size as u64, load_time),
        replayed: counted.received,
        first_msg_ms: (first - started).as_secs_f64() * 1e3,
        secs: time.as_secs_f64(),
        msg_per_sec: per_sec(counted.received, time),
        mb_per_sec: mb(per_sec(counted.bytes, time)),
        live,
    })
}

/// The live phase: on eventline, waits for the caught-up marker; then publishes `live`
/// more events and times their arrival at `subscriber`.
async fn follow(
    server: &str,
    wait: std::time::Duration,
    mut subscriber: Client,
    target: Target,
    live: u64,
    (frame_len, batch): (usize, bytes::Bytes),
) -> Result<Throughput, BenchError> {
    if target == Target::Eventline {
        receive::count(&mut subscriber, &mut CaughtUp(false), wait, "before the caught-up marker").await?;
    }
    let publisher = Client::connect(server, wait).await?;
    let mut counted = Counted::new(target, live);
    counted.caught_up = true;
    let counting = tokio::spawn(async move {
        receive::count(&mut subscriber, &mut counted, wait, "while following the log").await.map(|()| counted)
    });
    let start = Instant::now();
    fanout::publish(publisher, batch, frame_len, live).await?;
    let counted = counting.await.map_err(|e| BenchError::Usage(format!("the live count failed: {e}")))??;
    Ok(Throughput::of(counted.received, counted.bytes, counted.last - start))
}

/// Waits for eventline's caught-up marker.
struct CaughtUp(bool);

impl Counter for CaughtUp {
    fn complete(&self) -> bool {
        self.0
    }

    fn count(&mut self, _: &Client, msg: &Delivery, _: Instant) -> Result<(), BenchError> {
        self.0 |= jetstream::status(msg.headers.as_deref()) == Some(CAUGHT_UP);
        Ok(())
    }

    fn quiet(&mut self, conn: &Client) -> Result<bool, BenchError> {
        Err(BenchError::failed(conn, "no caught-up marker after the replay".to_owned()))
    }
}

/// Fails unless `subject` holds no events on eventline: the replay from sequence 1 would
/// count them too. Asks `$EL.LAST.<subject>`, answered by the last event or a 404 status.
async fn holds_nothing(api: &mut Api, subject: &str) -> Result<(), BenchError> {
    super::check_eventline(api.conn())?;
    let last = api.request(&format!("$EL.LAST.{subject}"), b"").await?;
    if jetstream::status(last.headers.as_deref()) == Some(404) {
        return Ok(());
    }
    let seq = last.headers.as_deref().and_then(|h| headers::value(h, headers::SEQUENCE));
    let what = match seq {
        Some(seq) => format!(
            "subject {subject} already holds events (the last is seq {}): a replay from 1 would count them \
             too; use another --subject or a fresh data directory",
            String::from_utf8_lossy(seq)
        ),
        None => format!("unexpected answer to $EL.LAST.{subject}: {}", String::from_utf8_lossy(&last.payload)),
    };
    Err(BenchError::failed(api.conn(), what))
}

/// What the replaying subscriber counted.
#[derive(Debug)]
struct Counted {
    target: Target,
    /// Past the caught-up marker: events are live, and the marker is no surprise.
    caught_up: bool,
    expected: u64,
    received: u64,
    /// Payload bytes received.
    bytes: u64,
    /// When the reads holding the first and the last event returned.
    first: Option<Instant>,
    last: Instant,
}

impl Counted {
    fn new(target: Target, expected: u64) -> Counted {
        Counted { target, caught_up: false, expected, received: 0, bytes: 0, first: None, last: Instant::now() }
    }
}

/// Counts replayed events on `conn` until `expected` arrived; fails if nothing arrives for
/// the connection's timeout, or if eventline says it caught up before `expected`.
async fn replayed(mut conn: Client, expected: u64, target: Target) -> Result<(Counted, Client), BenchError> {
    let mut counted = Counted::new(target, expected);
    let wait = conn.timeout();
    receive::count(&mut conn, &mut counted, wait, "during the replay").await?;
    Ok((counted, conn))
}

impl Counter for Counted {
    fn complete(&self) -> bool {
        self.received >= self.expected
    }

    fn count(&mut self, conn: &Client, msg: &Delivery, read_at: Instant) -> Result<(), BenchError> {
        let h = msg.headers.as_deref();
        let event = match self.target {
            Target::Eventline => h.and_then(|h| headers::value(h, headers::SEQUENCE)).is_some(),
            // Status messages (heartbeats, flow control) are not events.
            Target::Jetstream => jetstream::status(h).is_none(),
        };
        if event {
            self.received += 1;
            self.bytes += msg.payload.len() as u64;
            self.first.get_or_insert(read_at);
            self.last = read_at;
        } else if self.target == Target::Eventline && !self.caught_up && jetstream::status(h) == Some(CAUGHT_UP) {
            let what = format!("the replay caught up after {} of {} events", self.received, self.expected);
            return Err(BenchError::failed(conn, what));
        }
        Ok(())
    }

    fn quiet(&mut self, conn: &Client) -> Result<bool, BenchError> {
        let what = format!(
            "the replay stalled: {} of {} events, then nothing for {} s",
            self.received,
            self.expected,
            conn.timeout().as_secs_f64()
        );
        Err(BenchError::failed(conn, what))
    }
}

/// The human-readable report.
fn human(r: &ReplayReport) -> String {
    let how = match r.target {
        Target::Eventline => "eventline SUB ... FROM 1",
        Target::Jetstream => "JetStream push consumer",
    };
    let mut out = format!(
        "replay on {} ({how}): {} events of {} B, subject {}\n",
        r.server,
        grouped(r.count as f64),
        r.size,
        r.subject
    );
    let l = &r.load;
    out += &l.line("load:", &format!("{} plain PUBs stored in {:.3} s", grouped(l.msgs as f64), l.secs));
    let replay = Throughput { msgs: r.replayed, secs: r.secs, msg_per_sec: r.msg_per_sec, mb_per_sec: r.mb_per_sec };
    let what =
        format!("{} events in {:.3} s, first after {:.2} ms", grouped(r.replayed as f64), r.secs, r.first_msg_ms);
    out += &replay.line("replay:", &what);
    if let Some(l) = &r.live {
        let what = format!("{} events published after the replay, in {:.3} s", grouped(l.msgs as f64), l.secs);
        out += &l.line("live:", &what);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_well() {
        let report = ReplayReport {
            mode: "replay",
            target: Target::Jetstream,
            server: "s:1".to_owned(),
            subject: "r".to_owned(),
            size: 128,
            count: 1000,
            load: Throughput { msgs: 1000, secs: 0.5, msg_per_sec: 2000.0, mb_per_sec: 0.256 },
            replayed: 1000,
            first_msg_ms: 1.5,
            secs: 0.25,
            msg_per_sec: 4000.0,
            mb_per_sec: 0.512,
            live: Some(Throughput { msgs: 10, secs: 0.01, msg_per_sec: 1000.0, mb_per_sec: 0.128 }),
        };
        let text = human(&report);
        assert!(text.contains("JetStream push consumer"), "{text}");
        assert!(text.contains("2,000 msg/s"), "{text}");
        assert!(text.contains("first after 1.50 ms"), "{text}");
        assert!(text.contains("live:            1,000 msg/s"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["target"], "jetstream");
        assert_eq!(json["load"]["msg_per_sec"], 2000.0);
    }
}
