//! The three commands. Each checks its arguments (building the op) before it connects, so a
//! usage error never touches the network.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use super::conn::lossy;
use super::format::{self, Status};
use super::{Client, ClientError, Conditions, Range, ops};
use eventline::protocol::client::Received;

/// The sid of the one subscription or query a command opens.
const SID: u64 = 1;

/// Where to connect and how long any bounded wait may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub server: String,
    pub timeout: Duration,
}

impl Endpoint {
    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.server, self.timeout).await
    }
}

/// What `eventline sub` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    /// A catch-up start (sequence, RFC 3339 time, `last` or `new`); `None` for a plain,
    /// live-only NATS subscription.
    pub from: Option<String>,
    /// Stop after this many messages or events.
    pub count: Option<u64>,
}

/// `eventline pub`: without `conditions` a plain `PUB` followed by a `PING`/`PONG`, so it has
/// been handled (and stored, for a stored subject) before this returns; with them an `APUB`
/// whose `+ACK` is printed to `out` as `seq=N rev=R[ duplicate]`.
///
/// # Errors
/// [`ClientError::Refused`] with the server's reason on a `-NAK`; usage, connection and
/// timeout errors otherwise.
pub async fn publish(
    endpoint: &Endpoint,
    subject: &str,
    payload: &[u8],
    conditions: Option<&Conditions>,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let op = ops::publish(subject, payload, conditions)?;
    let mut client = endpoint.connect().await?;
    if conditions.is_none() {
        client.write(&op).await?;
        return client.sync().await;
    }
    let ack = client.publish_acknowledged(&op).await?;
    writeln!(out, "{}", format::ack_line(&ack))?;
    out.flush()?;
    Ok(())
}

/// `eventline sub`: subscribes (once the server confirms, `-- subscribed to <filter>` goes to
/// `diag`), then prints one line per message, `<subject> <payload>`, or with a start
/// position one per event, `<seq> <time> <subject> <payload>`, with the caught-up marker on
/// `diag`. Runs until `count` messages, until `stop` resolves, or until the connection ends.
///
/// # Errors
/// [`ClientError::Refused`] if the server refuses the catch-up (a start past the head);
/// [`ClientError::Closed`] if the server closes the connection first.
pub async fn subscribe(
    endpoint: &Endpoint,
    request: &Subscription,
    out: &mut impl Write,
    diag: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let op = ops::subscribe(&request.filter, SID, request.from.as_deref())?;
    let mut client = endpoint.connect().await?;
    client.write(op.as_bytes()).await?;
    client.sync().await?;
    match &request.from {
        Some(from) => writeln!(diag, "-- subscribed to {} from {from}", request.filter)?,
        None => writeln!(diag, "-- subscribed to {}", request.filter)?,
    }
    diag.flush()?;
    let mut seen = 0;
    tokio::pin!(stop);
    while request.count.is_none_or(|count| seen < count) {
        let op = tokio::select! {
            op = client.next(None, "while subscribed") => op?,
            () = &mut stop => return Ok(()),
        };
        let delivery = match op {
            Received::Msg(delivery) => delivery,
            Received::Nak(reason) => return Err(ClientError::Refused(lossy(&reason))),
            Received::Err(text) => return Err(client.server_error(&text)),
            _ => continue,
        };
        let line = if request.from.is_none() {
            format::live_line(&delivery)
        } else if let Some(status) = format::status(&delivery) {
            report(diag, &status)?;
            continue;
        } else {
            format::event_line(&delivery)
        };
        writeln!(out, "{line}")?;
        out.flush()?;
        seen += 1;
    }
    Ok(())
}

/// `eventline fetch`: one query; prints one line per event, `<seq> <time> <subject>
/// <payload>`, and at the `204 End Of Results` status `-- N events` on `diag`.
///
/// # Errors
/// [`ClientError::Refused`] on a `-NAK` or a failure status; a timeout if the server goes
/// quiet for longer than the endpoint's timeout.
pub async fn fetch(
    endpoint: &Endpoint,
    filters: &[String],
    range: &Range,
    out: &mut impl Write,
    diag: &mut impl Write,
) -> Result<(), ClientError> {
    let op = ops::fetch(SID, filters, range)?;
    let mut client = endpoint.connect().await?;
    client.write(op.as_bytes()).await?;
    let mut count = 0u64;
    loop {
        let deadline = client.deadline();
        let delivery = match client.next(Some(deadline), "waiting for query results").await? {
            Received::Msg(delivery) => delivery,
            Received::Nak(reason) => return Err(ClientError::Refused(lossy(&reason))),
            Received::Err(text) => return Err(client.server_error(&text)),
            _ => continue,
        };
        match format::status(&delivery) {
            Some(Status { code: 204, .. }) => {
                writeln!(diag, "-- {count} event{}", if count == 1 { "" } else { "s" })?;
                diag.flush()?;
                return Ok(());
            }
            Some(status) => return Err(ClientError::Refused(format!("{} {}", status.code, status.description))),
            None => {
                writeln!(out, "{}", format::event_line(&delivery))?;
                out.flush()?;
                count += 1;
            }
        }
    }
}

/// A status on a catch-up subscription, as a diagnostic line.
fn report(diag: &mut impl Write, status: &Status) -> Result<(), ClientError> {
    match (status.code, status.last_seq) {
        (100, Some(seq)) => writeln!(diag, "-- caught up at {seq}")?,
        (code, _) => writeln!(diag, "-- status {code} {}", status.description)?,
    }
    diag.flush()?;
    Ok(())
}
