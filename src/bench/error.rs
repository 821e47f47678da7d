use std::time::Duration;

use thiserror::Error;

use crate::protocol::ProtocolError;

/// Why a benchmark run failed. Each message names the server and the step, since the
/// person reading it is usually looking at a script's output, not at the code.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("cannot connect to {server}: {source}")]
    Connect { server: String, source: std::io::Error },
    #[error("timed out after {}s {what} ({server})", after.as_secs_f64())]
    Timeout { server: String, what: &'static str, after: Duration },
    #[error("{what} failed ({server}): {source}")]
    Io { server: String, what: &'static str, source: std::io::Error },
    #[error("{server} closed the connection {what}")]
    Closed { server: String, what: &'static str },
    #[error("{server} sent -ERR {text}")]
    Server { server: String, text: String },
    #[error("{server} refused with -NAK '{text}'")]
    Nak { server: String, text: String },
    #[error("{server}: JetStream request {request} failed: {description} (code {code})")]
    JetStream { server: String, request: String, code: u64, description: String },
    #[error("{what} ({server})")]
    Failed { server: String, what: String },
    #[error("cannot decode what {server} sent: {source}")]
    Protocol { server: String, source: ProtocolError },
    #[error("invalid arguments: {0}")]
    Usage(String),
    #[error("cannot write the JSON report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a benchmark task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
