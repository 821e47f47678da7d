//! One connection as the command-line client sees it: a TCP stream, a read buffer decoded
//! by [`ServerCodec`], server `PING`s answered on the way, and a time limit on every wait
//! that has one. The same shape as the load tool's connection (`crate::bench`), with the
//! extension answers (`+ACK`, `-NAK`) and without its throughput tuning.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Decoder;

use super::ClientError;
use crate::protocol::client::{Received, ServerCodec};

/// Sent first: no `+OK` per op, subjects checked here rather than by the server, and
/// headers on, since catch-up events carry their sequence and time in headers.
const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n";

/// The client's own guard on one message's size; the server enforces its real limit.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// What an `APUB` was answered with once its event was durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub revision: u64,
    /// The message id was seen within the dedup window: nothing new was stored, and `seq`
    /// is the first copy's.
    pub duplicate: bool,
}

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    codec: ServerCodec,
    server: String,
    timeout: Duration,
    /// Ops that arrived while [`Client::sync`] waited for its `PONG`, in order.
    pending: VecDeque<Received>,
}

impl Client {
    /// Connects, sends `CONNECT` and waits for the `PONG` of a `PING`, each step within
    /// `wait`; `wait` is also the limit of every later bounded wait.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Timeout`] or what the server said.
    pub async fn connect(server: &str, wait: Duration) -> Result<Client, ClientError> {
        let stream = timeout(wait, TcpStream::connect(server))
            .await
            .map_err(|_| ClientError::Timeout { server: server.to_owned(), what: "connecting", after: wait })?
            .map_err(|source| ClientError::Connect { server: server.to_owned(), source })?;
        stream.set_nodelay(true).map_err(|source| ClientError::Io {
            server: server.to_owned(),
            what: "setting TCP_NODELAY",
            source,
        })?;
        let mut client = Client {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            codec: ServerCodec::new(MAX_PAYLOAD),
            server: server.to_owned(),
            timeout: wait,
            pending: VecDeque::new(),
        };
        client.write(CONNECT).await?;
        client.sync().await?;
        Ok(client)
    }

    /// The `host:port` this client talks to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Writes all of `bytes` within the timeout.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] or [`ClientError::Io`].
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| self.timed_out("writing"))?
            .map_err(|source| ClientError::Io { server: self.server.clone(), what: "writing", source })
    }

    /// Sends `PING` and waits for its `PONG`: the server handles a connection's ops in order,
    /// so once it answers, everything sent before is applied (a subscription is in place, a
    /// message routed). Deliveries arriving meanwhile are kept for [`Client::next`].
    ///
    /// # Errors
    /// [`ClientError::Refused`] on a `-NAK`, [`ClientError::Server`] on a `-ERR`, or a
    /// timeout or connection error.
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        self.write(b"PING\r\n").await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.receive(Some(deadline), "waiting for PONG").await? {
                Received::Pong => return Ok(()),
                Received::Nak(reason) => return Err(ClientError::Refused(lossy(&reason))),
                Received::Err(text) => return Err(self.refused(&text)),
                Received::Info(_) | Received::Ok => {}
                other => self.pending.push_back(other),
            }
        }
    }

    /// Sends an `APUB` op (see [`super::ops::publish`]) and waits for its answer.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the reason of a `-NAK`, or a timeout or connection error.
    pub async fn publish_acknowledged(&mut self, op: &[u8]) -> Result<Ack, ClientError> {
        self.write(op).await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next(Some(deadline), "waiting for +ACK").await? {
                Received::Ack { seq, revision, duplicate } => return Ok(Ack { seq, revision, duplicate }),
                Received::Nak(reason) => return Err(ClientError::Refused(lossy(&reason))),
                Received::Err(text) => return Err(self.refused(&text)),
                _ => {}
            }
        }
    }

    /// The next op from the server other than `PING` (answered here), `PONG`, `+OK` and
    /// `INFO`; waits until `deadline`, or without a limit when it is `None`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] naming `what`, [`ClientError::Closed`], or a read error.
    pub async fn next(&mut self, deadline: Option<Instant>, what: &'static str) -> Result<Received, ClientError> {
        if let Some(op) = self.pending.pop_front() {
            return Ok(op);
        }
        loop {
            match self.receive(deadline, what).await? {
                Received::Pong | Received::Ok | Received::Info(_) => {}
                op => return Ok(op),
            }
        }
    }

    /// The next decoded op, any kind but `PING`.
    async fn receive(&mut self, deadline: Option<Instant>, what: &'static str) -> Result<Received, ClientError> {
        loop {
            let decoded = self.codec.decode(&mut self.buf);
            match decoded.map_err(|source| ClientError::Protocol { server: self.server.clone(), source })? {
                Some(Received::Ping) => self.write(b"PONG\r\n").await?,
                Some(op) => return Ok(op),
                None => self.fill(deadline, what).await?,
            }
        }
    }

    /// Reads at least one byte. `read_buf` is cancel-safe, so a cancelled wait loses nothing.
    async fn fill(&mut self, deadline: Option<Instant>, what: &'static str) -> Result<(), ClientError> {
        self.buf.reserve(8 * 1024);
        let read = self.stream.read_buf(&mut self.buf);
        let read = match deadline {
            Some(deadline) => timeout_at(deadline, read).await.map_err(|_| self.timed_out(what))?,
            None => read.await,
        };
        match read {
            Ok(0) => Err(ClientError::Closed { server: self.server.clone(), what }),
            Ok(_) => Ok(()),
            Err(source) => Err(ClientError::Io { server: self.server.clone(), what: "reading", source }),
        }
    }

    /// When a wait that started now must end.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn timed_out(&self, what: &'static str) -> ClientError {
        ClientError::Timeout { server: self.server.clone(), what, after: self.timeout }
    }

    fn refused(&self, text: &[u8]) -> ClientError {
        ClientError::Server { server: self.server.clone(), text: lossy(text) }
    }
}

fn lossy(text: &[u8]) -> String {
    String::from_utf8_lossy(text).trim().to_owned()
}
