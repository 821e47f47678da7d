//! The subscriber side of a run, shared by `fanout`, `latency` and `replay`: count the
//! messages arriving on one connection, one read's worth at a time, each stamped with when
//! the read that brought it returned.

use std::time::Duration;

use tokio::time::Instant;

use super::BenchError;
use crate::client::{Client, Fill};
use eventline::protocol::client::{Delivery, Received};

/// What a mode does with the messages its subscriber receives.
pub(super) trait Counter {
    /// True once everything expected has arrived.
    fn complete(&self) -> bool;
    /// Takes one message from `conn`, brought by the read that returned at `read_at`.
    fn count(&mut self, conn: &Client, msg: &Delivery, read_at: Instant) -> Result<(), BenchError>;
    /// Nothing arrived for the wait: `Ok(true)` ends the count, `Ok(false)` waits again.
    fn quiet(&mut self, conn: &Client) -> Result<bool, BenchError>;
}

/// Hands every message arriving on `conn` to `counter` until it is complete, or until it
/// ends a quiet spell of `wait`. A `-ERR` or `-NAK` fails the count, and so does the server
/// closing the connection (`closed` completes "closed the connection").
pub(super) async fn count(
    conn: &mut Client,
    counter: &mut impl Counter,
    wait: Duration,
    closed: &'static str,
) -> Result<(), BenchError> {
    let mut read_at = Instant::now();
    while !counter.complete() {
        match conn.try_next()? {
            Some(Received::Msg(msg)) => counter.count(conn, &msg, read_at)?,
            Some(Received::Err(text)) => return Err(conn.server_error(&text).into()),
            Some(Received::Nak(text)) => return Err(BenchError::nak(conn, &text)),
            Some(_) => {}
            None => match conn.fill(Some(Instant::now() + wait)).await? {
                Fill::Data => read_at = Instant::now(),
                Fill::Idle if counter.quiet(conn)? => return Ok(()),
                Fill::Idle => {}
                Fill::Closed => return Err(conn.closed(closed).into()),
            },
        }
    }
    Ok(())
}
