use thiserror::Error;

use crate::client::{Client, ClientError};

/// Why a benchmark run failed. Each message names the server and the step, since the
/// person reading it is usually looking at a script's output, not at the code.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The connection failed: connecting, a read or write, a timeout, a close, an
    /// undecodable op, or a `-ERR` from the server.
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{server} refused with -NAK '{text}'")]
    Nak { server: String, text: String },
    #[error("{server}: JetStream request {request} failed: {description} (code {code})")]
    JetStream { server: String, request: String, code: u64, description: String },
    #[error("{what} ({server})")]
    Failed { server: String, what: String },
    /// The arguments conflict with each other or with the server's `INFO`.
    #[error("invalid arguments: {0}")]
    Usage(String),
    #[error("cannot write the JSON report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("disk probe in {dir}: {source}")]
    Disk { dir: String, source: std::io::Error },
    #[error("a benchmark task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl BenchError {
    /// [`BenchError::Nak`] for the reason of a `-NAK` on `conn`.
    pub(super) fn nak(conn: &Client, text: &[u8]) -> BenchError {
        BenchError::Nak { server: conn.server().to_owned(), text: String::from_utf8_lossy(text).into_owned() }
    }

    /// [`BenchError::Failed`] on `conn`.
    pub(super) fn failed(conn: &Client, what: String) -> BenchError {
        BenchError::Failed { server: conn.server().to_owned(), what }
    }
}
