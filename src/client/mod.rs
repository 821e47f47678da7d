//! The command-line client: `eventline pub`, `sub` and `fetch`, like natscli's, over the raw
//! protocol with eventline's extensions (`APUB`, catch-up `SUB ... FROM`, `FETCH`).
//!
//! [`ops`] builds and checks the ops before anything is sent, [`Client`] is one connection
//! (every wait but "the next live message" under a timeout; the load tool, `crate::bench`,
//! runs on it too), [`mod@format`] turns deliveries into output lines, and the three command
//! functions tie them together. Results go to `out` (stdout), diagnostics to `diag`
//! (stderr); a [`ClientError`] knows its exit code.

mod commands;
mod conn;
mod error;
pub mod format;
pub mod ops;

use std::time::Duration;

pub use commands::{Endpoint, Subscription, fetch, publish, subscribe};
pub use conn::{Ack, CONNECT, Client, Fill};
pub use error::ClientError;
pub use ops::{Conditions, Range};

/// The server the commands talk to unless told otherwise, as natscli's default.
pub const DEFAULT_SERVER: &str = "127.0.0.1:4222";

/// The default limit on each network wait (connecting, a `PONG`, an `+ACK`, the next query
/// result); waiting for live messages has none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
