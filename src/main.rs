//! The `eventline` binary: parses arguments, starts things, nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod bench;
mod client;

use clap::{Parser, Subcommand};
use client::{ClientError, Conditions, Endpoint, Range, Subscription};
use eventline::broker::Broker;
use eventline::config::{
    BrokerConfig, Config, DEFAULT_DATA, DEFAULT_DEDUP_WINDOW, DEFAULT_HOST, DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PENDING,
    DEFAULT_MIN_FREE_BYTES, DEFAULT_PING_INTERVAL, DEFAULT_PORT, DEFAULT_RECENT_BYTES, DEFAULT_VOLATILE,
    DEFAULT_WRITE_DEADLINE, DEFAULT_WRITER_SPIN, FsyncPolicy, Limits, ListenerConfig, StoreConfig,
};
use eventline::subject::Filter;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "eventline", version, about = "A NATS-compatible broker that keeps every event")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Load-test any NATS-protocol server (eventline or nats-server).
    Bench(bench::BenchArgs),
    /// Publish one message; with --ack, print its sequence once it is durable.
    ///
    /// Exit code 0 on success, 1 when the server refuses the publish (the reason is on
    /// stderr), 2 on usage and connection errors.
    Pub(PubArgs),
    /// Subscribe: live messages, or with --from the log's events then live ones.
    ///
    /// Results on stdout, one line each; `-- subscribed ...` and `-- caught up at <seq>` on
    /// stderr. Runs until --count messages, Ctrl-C or the server closing the connection (exit
    /// 2). Exit code 1 when the server refuses the start position.
    Sub(SubArgs),
    /// Query the event log once: the matching events in sequence order.
    ///
    /// One line per event, `<seq> <time> <subject> <payload>`, on stdout, then `-- N events`
    /// on stderr. Exit code 1 when the server refuses the query, 2 on usage and connection
    /// errors.
    Fetch(FetchArgs),
}

/// Where the client commands connect.
#[derive(clap::Args)]
struct ServerArgs {
    /// The server's host:port.
    #[arg(long, default_value = client::DEFAULT_SERVER)]
    server: String,
    /// Seconds any network wait may take (connecting, a PONG, an +ACK, the next query result);
    /// waiting for live messages has no limit.
    #[arg(long, default_value_t = client::DEFAULT_TIMEOUT.as_secs_f64(), value_parser = seconds)]
    timeout: f64,
}

#[derive(clap::Args)]
struct PubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Publish with APUB and print `seq=N rev=R` (and ` duplicate`) once the event is durable;
    /// a refused publish prints the reason on stderr and exits with 1.
    #[arg(long)]
    ack: bool,
    /// Refuse unless the subject's last event has this sequence (0: the subject has none).
    /// Needs --ack, which reports the outcome.
    #[arg(long, value_name = "SEQ", requires = "ack")]
    expect_last_subject_seq: Option<u64>,
    /// Deduplicate: a repeat of this id within the dedup window stores nothing and gets the
    /// first copy's sequence. Needs --ack.
    #[arg(long, value_name = "ID", requires = "ack")]
    msg_id: Option<String>,
    /// A literal subject (no wildcards).
    subject: String,
    /// The message body, sent as given.
    payload: String,
}

#[derive(clap::Args)]
struct SubArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// A subject filter (`*` and `>` wildcards allowed).
    filter: String,
    /// Catch up from the log first: a sequence (0 or 1: the beginning), an RFC 3339 time,
    /// `last` (the last event of each subject) or `new`. Prints `<seq> <time> <subject>
    /// <payload>` per event; without it, a live NATS subscription printing `<subject> <payload>`.
    #[arg(long, value_name = "SEQ|TIME|last|new")]
    from: Option<String>,
    /// Exit after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

#[derive(clap::Args)]
struct FetchArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// One or more subject filters.
    #[arg(required = true)]
    filters: Vec<String>,
    /// First sequence to consider.
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<u64>,
    /// Last sequence to consider.
    #[arg(long, value_name = "SEQ")]
    to_seq: Option<u64>,
    /// Events at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Events before this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// At most this many events (the server's default: 10000).
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_HOST)]
    host: String,
    /// Port to listen on; 0 picks a free one (the bound address is printed on stdout).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Data directory (the event log lives here).
    #[arg(long, default_value = DEFAULT_DATA)]
    data: PathBuf,
    /// Largest message payload (headers + body) in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_PAYLOAD)]
    max_payload: usize,
    /// Unsent bytes a connection may have queued before it is cut as a slow consumer.
    #[arg(long, default_value_t = DEFAULT_MAX_PENDING)]
    max_pending: usize,
    /// Seconds between server PINGs to an idle client; two unanswered close it.
    #[arg(long, default_value_t = DEFAULT_PING_INTERVAL.as_secs_f64(), value_parser = seconds)]
    ping_interval: f64,
    /// Seconds a socket write may make no progress before the client is cut as a slow consumer.
    #[arg(long, default_value_t = DEFAULT_WRITE_DEADLINE.as_secs_f64(), value_parser = seconds)]
    write_deadline: f64,
    /// When an acknowledged event is durable: `always` (fsync each batch before its acks),
    /// `interval:<ms>` (fsync every so often; a power loss may take back the last interval)
    /// or `never` (leave it to the OS).
    #[arg(long, default_value = "always", value_parser = fsync_policy)]
    fsync: FsyncPolicy,
    /// Free bytes kept on the data directory's disk: below them, publishes to stored
    /// subjects are refused (`insufficient storage`) while reads and volatile traffic go
    /// on; they are stored again as soon as there is room. 0: no reserve (a full disk then
    /// stops the server).
    #[arg(long, default_value_t = DEFAULT_MIN_FREE_BYTES)]
    min_free_bytes: u64,
    /// Subjects delivered live but never stored (repeatable); `$`-prefixed subjects always are.
    #[arg(long = "volatile", default_value = DEFAULT_VOLATILE, value_parser = filter)]
    volatile: Vec<Filter>,
    /// Seconds within which a repeated `Nats-Msg-Id` is a duplicate.
    #[arg(long, default_value_t = DEFAULT_DEDUP_WINDOW.as_secs_f64(), value_parser = seconds)]
    dedup_window: f64,
    /// Bytes of recently stored events kept in memory for subscribers that follow the log.
    #[arg(long, default_value_t = DEFAULT_RECENT_BYTES)]
    recent_bytes: usize,
    /// Tuning: microseconds the log writer looks for more work before it sleeps (0: none).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = DEFAULT_WRITER_SPIN.as_micros() as u64)]
    writer_spin: u64,
    /// Tuning: let the log's threads write to an idle client socket themselves instead of
    /// waking its writer.
    #[arg(long, value_name = "true|false", default_value_t = true, action = clap::ArgAction::Set)]
    direct_writes: bool,
    /// Log filter: error, warn, info, debug, trace (or a tracing directive).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("eventline: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Pub(args) => return client_exit(runtime.block_on(publish(args))),
        Command::Sub(args) => return client_exit(runtime.block_on(subscribe(args))),
        Command::Fetch(args) => return client_exit(runtime.block_on(fetch(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eventline: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(EnvFilter::try_new(&args.log_level)?).with_writer(std::io::stderr).init();
    // As nats-server's users expect: every connection is a descriptor, so use all we may.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
    let config = args.config();
    let limits = &config.limits;
    if limits.max_payload > limits.max_pending {
        // As nats-server: a message larger than the pending bound could never be delivered.
        return Err(format!(
            "--max-payload ({}) cannot be higher than --max-pending ({})",
            limits.max_payload, limits.max_pending
        )
        .into());
    }
    let listener = TcpListener::bind((config.listener.host.as_str(), config.listener.port)).await?;
    let address: SocketAddr = listener.local_addr()?;
    let fatal = CancellationToken::new();
    let data = config.store.data.clone();
    let broker = Arc::new(Broker::start(config, fatal.clone())?);
    tracing::info!(%address, data = %data.display(), "eventline listening");
    // One stdout line with the bound address, so scripts and tests can find a port-0 server.
    println!("listening on {address}");
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = fatal.cancelled() => {}
        }
    };
    eventline::server::run(listener, broker, stop).await?;
    if fatal.is_cancelled() {
        return Err("stopped: the event log failed (see the log above); no further events were acknowledged".into());
    }
    tracing::info!("stopped");
    Ok(())
}

impl ServeArgs {
    /// The configuration the flags describe.
    fn config(self) -> Config {
        Config {
            listener: ListenerConfig { host: self.host, port: self.port, direct_writes: self.direct_writes },
            limits: Limits {
                max_payload: self.max_payload,
                max_pending: self.max_pending,
                ping_interval: Duration::from_secs_f64(self.ping_interval),
                write_deadline: Duration::from_secs_f64(self.write_deadline),
            },
            store: StoreConfig {
                fsync: self.fsync,
                min_free_bytes: self.min_free_bytes,
                ..StoreConfig::new(self.data)
            },
            broker: BrokerConfig {
                volatile: self.volatile,
                dedup_window: Duration::from_secs_f64(self.dedup_window),
                recent_bytes: self.recent_bytes,
                writer_spin: Duration::from_micros(self.writer_spin),
                ..BrokerConfig::default()
            },
        }
    }
}

/// A client command's outcome as an exit code: 0, 1 when the server refused, 2 otherwise.
fn client_exit(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            if code != 0 {
                eprintln!("eventline: {error}");
            }
            ExitCode::from(code)
        }
    }
}

impl ServerArgs {
    fn endpoint(&self) -> Endpoint {
        Endpoint { server: self.server.clone(), timeout: Duration::from_secs_f64(self.timeout) }
    }
}

async fn publish(args: PubArgs) -> Result<(), ClientError> {
    let conditions = args
        .ack
        .then(|| Conditions { expect_last_subject_seq: args.expect_last_subject_seq, msg_id: args.msg_id.clone() });
    let endpoint = args.server.endpoint();
    client::publish(&endpoint, &args.subject, args.payload.as_bytes(), conditions.as_ref(), &mut std::io::stdout())
        .await
}

async fn subscribe(args: SubArgs) -> Result<(), ClientError> {
    let request = Subscription { filter: args.filter, from: args.from, count: args.count };
    let (mut out, mut diag) = (std::io::stdout(), std::io::stderr());
    client::subscribe(&args.server.endpoint(), &request, &mut out, &mut diag, shutdown_signal()).await
}

async fn fetch(args: FetchArgs) -> Result<(), ClientError> {
    let range =
        Range { from_seq: args.from_seq, to_seq: args.to_seq, since: args.since, until: args.until, limit: args.limit };
    let (mut out, mut diag) = (std::io::stdout(), std::io::stderr());
    client::fetch(&args.server.endpoint(), &args.filters, &range, &mut out, &mut diag).await
}

fn fsync_policy(text: &str) -> Result<FsyncPolicy, String> {
    match text {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        _ => text
            .strip_prefix("interval:")
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
            .ok_or_else(|| format!("`{text}` is not always, never or interval:<milliseconds>")),
    }
}

fn filter(text: &str) -> Result<Filter, String> {
    Filter::new(bytes::Bytes::copy_from_slice(text.as_bytes())).map_err(|e| format!("`{text}`: {e}"))
}

/// A positive number of seconds, as a duration flag takes it.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return interrupt.await.unwrap_or(()),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
