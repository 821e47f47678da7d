//! The `eventline` binary: parses arguments, starts things, nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use eventline::broker::{
    Broker, BrokerConfig, DEFAULT_DEDUP_WINDOW, DEFAULT_MAX_PENDING, DEFAULT_PING_INTERVAL, DEFAULT_VOLATILE,
    DEFAULT_WRITE_DEADLINE, FsyncPolicy,
};
use eventline::protocol::DEFAULT_MAX_PAYLOAD;
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
    Bench(eventline::bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the bound address is printed on stdout).
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// Data directory (the event log lives here).
    #[arg(long, default_value = "./data")]
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
    /// Subjects delivered live but never stored (repeatable); `$`-prefixed subjects always are.
    #[arg(long = "volatile", default_value = DEFAULT_VOLATILE, value_parser = filter)]
    volatile: Vec<Filter>,
    /// Seconds within which a repeated `Nats-Msg-Id` is a duplicate.
    #[arg(long, default_value_t = DEFAULT_DEDUP_WINDOW.as_secs_f64(), value_parser = seconds)]
    dedup_window: f64,
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
        Command::Bench(args) => runtime.block_on(eventline::bench::run(args)),
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
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    let address: SocketAddr = listener.local_addr()?;
    let fatal = CancellationToken::new();
    let broker = Arc::new(Broker::start(
        BrokerConfig {
            data: args.data.clone(),
            fsync: args.fsync,
            volatile: args.volatile,
            dedup_window: Duration::from_secs_f64(args.dedup_window),
            max_payload: args.max_payload,
            max_pending: args.max_pending,
            ping_interval: Duration::from_secs_f64(args.ping_interval),
            write_deadline: Duration::from_secs_f64(args.write_deadline),
            ..BrokerConfig::default()
        },
        fatal.clone(),
    )?);
    tracing::info!(%address, data = %args.data.display(), "eventline listening");
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
