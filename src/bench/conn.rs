//! One client connection as the load tool sees it: a TCP stream, a large read buffer
//! decoded in place by [`ServerCodec`], and a time limit on every wait.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Decoder;

use super::BenchError;
use crate::protocol::client::{Received, ServerCodec};

/// Sent first on every connection: no `+OK` per op, so acknowledgements don't compete with
/// messages for the read path.
const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"echo\":true}\r\n";

/// Free space guaranteed before each read; small reads mean a syscall per few messages.
const READ_CHUNK: usize = 64 * 1024;

/// What the buffer grows by when it lacks [`READ_CHUNK`]; once the decoded frames are
/// dropped, `reserve` reclaims the same allocation instead of allocating again.
const READ_CAPACITY: usize = 256 * 1024;

/// The client's own guard on one message's size; the server enforces its real limit.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fill {
    /// Bytes arrived; decode them.
    Data,
    /// Nothing arrived before the deadline.
    Idle,
    /// The server closed the connection.
    Closed,
}

pub(super) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    codec: ServerCodec,
    server: String,
    timeout: Duration,
    /// The server's `INFO`, once seen.
    info: Option<Info>,
}

/// The `INFO` fields the tool checks its arguments and the server against.
#[derive(Deserialize, Default)]
struct Info {
    max_payload: Option<usize>,
    /// Present on eventline, which lists its extensions there.
    eventline: Option<serde_json::Value>,
    /// nats-server started with `-js`.
    #[serde(default)]
    jetstream: bool,
}

impl Conn {
    /// Connects, sends `CONNECT`, then `setup` (e.g. a `SUB`) and a `PING`, and waits for the
    /// `PONG`: when this returns, the server has applied `setup`, so a subscription is in
    /// place before anyone publishes.
    pub(super) async fn open(server: &str, wait: Duration, setup: &[u8]) -> Result<Conn, BenchError> {
        Conn::open_with(server, wait, CONNECT, setup).await
    }

    /// As [`Conn::open`], with another `CONNECT` line.
    pub(super) async fn open_with(
        server: &str,
        wait: Duration,
        connect: &[u8],
        setup: &[u8],
    ) -> Result<Conn, BenchError> {
        let stream = timeout(wait, TcpStream::connect(server))
            .await
            .map_err(|_| BenchError::Timeout { server: server.to_owned(), what: "connecting", after: wait })?
            .map_err(|source| BenchError::Connect { server: server.to_owned(), source })?;
        // Latency runs send small batches; Nagle would hold them back.
        stream.set_nodelay(true).map_err(|source| BenchError::Io {
            server: server.to_owned(),
            what: "setting TCP_NODELAY",
            source,
        })?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CAPACITY),
            codec: ServerCodec::new(MAX_PAYLOAD),
            server: server.to_owned(),
            timeout: wait,
            info: None,
        };
        let mut hello = BytesMut::with_capacity(connect.len() + setup.len() + 6);
        hello.put_slice(connect);
        hello.put_slice(setup);
        conn.write(&hello).await?;
        conn.sync().await?;
        Ok(conn)
    }

    /// Writes all of `bytes`, failing if the server does not take them within the timeout.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| self.timed_out("writing"))?
            .map_err(|source| BenchError::Io { server: self.server.clone(), what: "writing", source })
    }

    /// Sends `PING` and waits for its `PONG`. The server processes a connection's ops in
    /// order, so after the `PONG` it has handled (and routed) everything sent before.
    /// Messages that arrive meanwhile are dropped: use it on connections that don't subscribe,
    /// or before their subscription is live.
    pub(super) async fn sync(&mut self) -> Result<(), BenchError> {
        self.write(b"PING\r\n").await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            while let Some(op) = self.decode()? {
                match op {
                    Received::Pong => return Ok(()),
                    Received::Ping => self.write(b"PONG\r\n").await?,
                    Received::Err(text) => return Err(self.refused(&text)),
                    Received::Info(json) => {
                        self.info = Some(serde_json::from_slice::<Info>(&json).unwrap_or_default());
                    }
                    Received::Msg(_) | Received::Ok | Received::Ack { .. } | Received::Nak(_) => {}
                }
            }
            match self.fill_until(deadline).await? {
                Fill::Data => {}
                Fill::Idle => return Err(self.timed_out("waiting for PONG")),
                Fill::Closed => return Err(self.closed("before answering PING")),
            }
        }
    }

    /// Fails with a clear message if the server announced a `max_payload` below `size`;
    /// otherwise it would cut the connection at the first `PUB`.
    pub(super) fn check_payload(&self, size: usize) -> Result<(), BenchError> {
        match self.info.as_ref().and_then(|info| info.max_payload) {
            Some(max) if size > max => {
                Err(BenchError::Usage(format!("--size {size} is over the max_payload {max} of {}", self.server)))
            }
            _ => Ok(()),
        }
    }

    /// Fails with a clear message unless the server's `INFO` announced eventline's extensions.
    pub(super) fn check_eventline(&self) -> Result<(), BenchError> {
        match &self.info {
            Some(Info { eventline: Some(_), .. }) => Ok(()),
            _ => Err(BenchError::Usage(format!(
                "{} is not eventline (its INFO has no \"eventline\" field); for nats-server use --target jetstream",
                self.server
            ))),
        }
    }

    /// Fails with a clear message unless the server's `INFO` says JetStream is enabled.
    pub(super) fn check_jetstream(&self) -> Result<(), BenchError> {
        match &self.info {
            Some(Info { jetstream: true, .. }) => Ok(()),
            _ => Err(BenchError::Usage(format!(
                "{} has no JetStream (its INFO lacks \"jetstream\":true): start nats-server with -js",
                self.server
            ))),
        }
    }

    /// The time limit on each network wait.
    pub(super) fn wait(&self) -> Duration {
        self.timeout
    }

    pub(super) fn server(&self) -> &str {
        &self.server
    }

    /// Decodes the next op already in the buffer, or `None` if it needs more bytes.
    pub(super) fn decode(&mut self) -> Result<Option<Received>, BenchError> {
        self.codec.decode(&mut self.buf).map_err(|source| BenchError::Protocol { server: self.server.clone(), source })
    }

    /// Reads whatever the socket has (at least one byte), waiting at most until `deadline`.
    /// `read_buf` is cancel-safe, so a timed-out read loses nothing.
    pub(super) async fn fill_until(&mut self, deadline: Instant) -> Result<Fill, BenchError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CAPACITY);
        }
        match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Ok(Fill::Idle),
            Ok(Ok(0)) => Ok(Fill::Closed),
            Ok(Ok(_)) => Ok(Fill::Data),
            Ok(Err(source)) => Err(BenchError::Io { server: self.server.clone(), what: "reading", source }),
        }
    }

    pub(super) fn timed_out(&self, what: &'static str) -> BenchError {
        BenchError::Timeout { server: self.server.clone(), what, after: self.timeout }
    }

    pub(super) fn closed(&self, what: &'static str) -> BenchError {
        BenchError::Closed { server: self.server.clone(), what }
    }

    pub(super) fn refused(&self, text: &[u8]) -> BenchError {
        BenchError::Server { server: self.server.clone(), text: String::from_utf8_lossy(text).trim().to_owned() }
    }
}
