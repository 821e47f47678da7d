use std::time::Duration;

use thiserror::Error;

use eventline::protocol::ProtocolError;

/// The exit code of a command the server refused (`-NAK`, a failed query).
pub const EXIT_REFUSED: u8 = 1;
/// The exit code of a usage, connection or protocol error (clap's usage errors exit 2 too).
pub const EXIT_ERROR: u8 = 2;

/// Why a client command failed. Each message names the server and the step, since the
/// person reading it is looking at a terminal or a script's output, not at the code.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {server}: {source}")]
    Connect { server: String, source: std::io::Error },
    #[error("timed out after {}s {what} ({server})", after.as_secs_f64())]
    Timeout { server: String, what: &'static str, after: Duration },
    #[error("{what} failed ({server}): {source}")]
    Io { server: String, what: &'static str, source: std::io::Error },
    #[error("{server} closed the connection {what}")]
    Closed { server: String, what: &'static str },
    /// `-ERR`: the server found the request itself wrong.
    #[error("{server} sent -ERR {text}")]
    Server { server: String, text: String },
    #[error("cannot decode what {server} sent: {source}")]
    Protocol { server: String, source: ProtocolError },
    /// The arguments cannot make a valid op; nothing was sent.
    #[error("invalid arguments: {0}")]
    Usage(String),
    /// The server understood and said no: a `-NAK` reason, or a query's failure status.
    #[error("refused: {0}")]
    Refused(String),
    /// Standard output is gone (`eventline sub ... | head -1`): a normal way to stop.
    #[error("standard output is closed")]
    OutputClosed,
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl ClientError {
    /// The process exit code: [`EXIT_REFUSED`] for a refusal, 0 when the reader of our
    /// output went away, [`EXIT_ERROR`] for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused(_) => EXIT_REFUSED,
            ClientError::OutputClosed => 0,
            _ => EXIT_ERROR,
        }
    }
}

impl From<std::io::Error> for ClientError {
    /// Errors writing results or diagnostics (network errors carry their server instead).
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            ClientError::OutputClosed
        } else {
            ClientError::Output(error)
        }
    }
}
