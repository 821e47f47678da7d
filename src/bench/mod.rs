//! The `eventline bench` load tool: end-to-end runs against any NATS-protocol server
//! (eventline or nats-server), so the two can be compared with the same client.
//!
//! It speaks the raw protocol over TCP through [`crate::client::Client`], the command-line
//! client's connection, rather than through a client library, so what is measured is the
//! server, not a client's buffering or its own task hops: one tokio task per connection,
//! 64 KiB+ reads drained in place with [`Client::try_next`], publishers writing a pre-built
//! batch of `PUB` frames over and over.
//! - [`fanout`]: P publishers -> S subscribers on one subject; throughput and loss.
//! - [`latency`]: one publisher at a fixed rate -> one subscriber; publish-to-receive latency.
//! - [`apub`]: acknowledged publishes from one connection, at most `--window` in flight;
//!   ack throughput and round-trip latency.
//! - [`replay`]: loads N events on one subject, then times one subscriber replaying them all.
//! - [`fsync`]: no server; the fdatasync latency of a disk, the floor under an acknowledged
//!   publish with `--fsync always`.
//!
//! `apub`, `replay` and `latency` take `--target eventline|jetstream`: eventline's own
//! extensions (`APUB`, `SUB ... FROM`), or nats-server's JetStream API (a file-storage stream,
//! publish acks on a reply inbox, a push consumer), so both logs are measured by one client.
//!
//! Results go to stdout (human-readable, or one JSON line with `--json`); errors to stderr.

pub mod apub;
mod error;
pub mod fanout;
pub mod fsync;
mod jetstream;
pub mod latency;
mod receive;
pub mod replay;
mod stats;
#[cfg(test)]
mod tests;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::client::Client;

pub use error::BenchError;

/// Arguments of `eventline bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Mode,
}

/// What to measure.
#[derive(Subcommand, Debug)]
pub enum Mode {
    /// P publishers -> S subscribers on one subject: publish and delivery msg/s, and loss.
    Fanout(fanout::FanoutArgs),
    /// One publisher at a fixed rate -> one subscriber: publish-to-receive latency.
    Latency(latency::LatencyArgs),
    /// Acknowledged publishes from one connection, at most --window unacknowledged.
    Apub(apub::ApubArgs),
    /// Load N events on one subject, then replay them all to one subscriber.
    Replay(replay::ReplayArgs),
    /// No server: fdatasync latency of the disk under --dir (the floor of an acked publish).
    Fsync(fsync::FsyncArgs),
}

/// Which server's storage path a mode drives.
#[derive(ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// eventline's extensions: `APUB` answered `+ACK`, `SUB <subject> <sid> FROM <start>`.
    Eventline,
    /// nats-server's JetStream: a file-storage stream, `PubAck` replies, a push consumer.
    Jetstream,
}

/// Options of the modes that write into a log.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The server's storage path to use.
    #[arg(long, value_enum, default_value_t = Target::Eventline)]
    pub target: Target,
    /// With --target jetstream: the stream each run deletes and re-creates (file storage,
    /// capturing just --subject).
    #[arg(long, default_value = "EVENTLINE_BENCH", value_parser = stream_name)]
    pub stream: String,
}

/// Options every mode has.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub server: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages to publish in total.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Seconds any one network wait (connect, write, PONG) may take before the run fails.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
    /// Once the publishers are done, subscribers stop after this many milliseconds
    /// without a message; what has not arrived by then counts as lost.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_ms: u64,
    /// Print one JSON object line instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

impl CommonArgs {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
}

/// Runs a benchmark and prints its report on stdout.
///
/// # Errors
/// A [`BenchError`]: the server cannot be reached, a network wait timed out, the server
/// refused an op (`-ERR`) or closed a publisher's connection, or the arguments conflict.
pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    match args.mode {
        Mode::Fanout(args) => fanout::run(&args).await?,
        Mode::Latency(args) => latency::run(&args).await?,
        Mode::Apub(args) => apub::run(&args).await?,
        Mode::Replay(args) => replay::run(&args).await?,
        Mode::Fsync(args) => fsync::run(args).await?,
    }
    Ok(())
}

/// Prints a report on stdout: one JSON line with `--json`, else the human-readable text.
fn print<R: Serialize>(report: &R, json: bool, human: fn(&R) -> String) -> Result<(), BenchError> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", human(report));
    }
    Ok(())
}

/// Fails with a clear message if the server announced a `max_payload` below `size`;
/// otherwise it would cut the connection at the first `PUB`.
fn check_payload(conn: &Client, size: usize) -> Result<(), BenchError> {
    match conn.info().and_then(|info| info.max_payload) {
        Some(max) if size > max => {
            Err(BenchError::Usage(format!("--size {size} is over the max_payload {max} of {}", conn.server())))
        }
        _ => Ok(()),
    }
}

/// Fails with a clear message unless the server's `INFO` announced eventline's extensions.
fn check_eventline(conn: &Client) -> Result<(), BenchError> {
    if conn.info().is_some_and(|info| info.is_eventline()) {
        return Ok(());
    }
    Err(BenchError::Usage(format!(
        "{} is not eventline (its INFO has no \"eventline\" field); for nats-server use --target jetstream",
        conn.server()
    )))
}

/// Fails with a clear message unless the server's `INFO` says JetStream is enabled.
fn check_jetstream(conn: &Client) -> Result<(), BenchError> {
    if conn.info().is_some_and(|info| info.jetstream) {
        return Ok(());
    }
    Err(BenchError::Usage(format!(
        "{} has no JetStream (its INFO lacks \"jetstream\":true): start nats-server with -js",
        conn.server()
    )))
}

/// Clap parser for `--subject`: a literal subject that fits in one `PUB` line.
fn subject(text: &str) -> Result<String, String> {
    if text.is_empty() || text.bytes().any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>') {
        return Err("a subject is non-empty, without blanks or wildcards".to_owned());
    }
    Ok(text.to_owned())
}

/// Clap parser for `--stream`: a JetStream stream name (one subject token, no path separators).
fn stream_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.bytes().any(|b| b.is_ascii_whitespace() || b".*>/\\".contains(&b)) {
        return Err("a stream name is non-empty, without blanks, '.', '*', '>' or path separators".to_owned());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod args_tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|cli| cli.bench)
    }

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fanout_takes_its_options() {
        let args = parse(&[
            "fanout",
            "--server",
            "127.0.0.1:5000",
            "--publishers",
            "2",
            "--subscribers",
            "4",
            "--size",
            "16",
            "--count",
            "1000",
            "--subject",
            "a.b",
            "--json",
        ]);
        let Ok(BenchArgs { mode: Mode::Fanout(f) }) = args else { panic!("not a fanout: {args:?}") };
        assert_eq!(f.common.server, "127.0.0.1:5000");
        assert_eq!((f.publishers, f.subscribers, f.common.size, f.common.count), (2, 4, 16, 1000));
        assert_eq!(f.subject, "a.b");
        assert!(f.common.json);
    }

    #[test]
    fn fanout_defaults() {
        let args = parse(&["fanout"]);
        let Ok(BenchArgs { mode: Mode::Fanout(f) }) = args else { panic!("not a fanout: {args:?}") };
        assert_eq!((f.publishers, f.subscribers), (1, 1));
        assert_eq!(f.subject, "bench.fanout");
        assert_eq!(f.common.timeout(), Duration::from_secs(10));
        assert_eq!(f.common.idle(), Duration::from_secs(2));
        assert!(!f.common.json);
    }

    #[test]
    fn latency_takes_its_options() {
        let args = parse(&["latency", "--rate", "10000", "--size", "128", "--count", "50000"]);
        let Ok(BenchArgs { mode: Mode::Latency(l) }) = args else { panic!("not a latency: {args:?}") };
        assert_eq!((l.rate, l.common.size, l.common.count), (10_000, 128, 50_000));
        assert_eq!(l.subject, "bench.latency");
    }

    #[test]
    fn latency_defaults_to_eventline() {
        let args = parse(&["latency"]);
        let Ok(BenchArgs { mode: Mode::Latency(l) }) = args else { panic!("not a latency: {args:?}") };
        assert_eq!(l.target.target, Target::Eventline);
        let args = parse(&["latency", "--target", "jetstream", "--stream", "S"]);
        let Ok(BenchArgs { mode: Mode::Latency(l) }) = args else { panic!("not a latency: {args:?}") };
        assert_eq!((l.target.target, l.target.stream.as_str()), (Target::Jetstream, "S"));
    }

    #[test]
    fn apub_takes_its_options() {
        let args = parse(&["apub", "--size", "128", "--count", "5000", "--window", "256", "--target", "jetstream"]);
        let Ok(BenchArgs { mode: Mode::Apub(a) }) = args else { panic!("not an apub: {args:?}") };
        assert_eq!((a.common.size, a.common.count, a.window), (128, 5000, 256));
        assert_eq!((a.target.target, a.target.stream.as_str()), (Target::Jetstream, "EVENTLINE_BENCH"));
        assert_eq!(a.subject, "bench.apub");
        let args = parse(&["apub"]);
        let Ok(BenchArgs { mode: Mode::Apub(a) }) = args else { panic!("not an apub: {args:?}") };
        assert_eq!((a.window, a.target.target), (1, Target::Eventline));
    }

    #[test]
    fn replay_takes_its_options() {
        let args = parse(&["replay", "--count", "1000000", "--size", "128", "--subject", "r.1", "--json"]);
        let Ok(BenchArgs { mode: Mode::Replay(r) }) = args else { panic!("not a replay: {args:?}") };
        assert_eq!((r.common.count, r.common.size, r.subject.as_str()), (1_000_000, 128, "r.1"));
        assert!(r.common.json);
        assert_eq!(r.target.target, Target::Eventline);
    }

    #[test]
    fn fsync_takes_its_options() {
        let args = parse(&["fsync", "--dir", "/var/lib/eventline", "--count", "500", "--size", "4096", "--json"]);
        let Ok(BenchArgs { mode: Mode::Fsync(f) }) = args else { panic!("not an fsync: {args:?}") };
        assert_eq!((f.dir.to_str(), f.count, f.size, f.json), (Some("/var/lib/eventline"), 500, 4096, true));
        let args = parse(&["fsync"]);
        let Ok(BenchArgs { mode: Mode::Fsync(f) }) = args else { panic!("not an fsync: {args:?}") };
        assert_eq!((f.dir.to_str(), f.count, f.size), (Some("."), 2000, 256));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["fanout", "--publishers", "0"][..],
            &["fanout", "--subject", "a.*"],
            &["fanout", "--subject", "a b"],
            &["fanout", "--subject", ""],
            &["fanout", "--count", "-1"],
            &["fanout", "--timeout-secs", "0"],
            &["latency", "--rate", "0"],
            &["latency", "--publishers", "2"],
            &["latency", "--target", "kafka"],
            &["apub", "--window", "0"],
            &["apub", "--stream", "a.b"],
            &["apub", "--stream", ""],
            &["replay", "--window", "2"],
            &["replay", "--subject", "r.>"],
            &["fsync", "--count", "0"],
            &["fsync", "--size", "0"],
            &["fsync", "--size", "65537"],
            &["fsync", "--server", "127.0.0.1:4222"],
            &["nothing"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
