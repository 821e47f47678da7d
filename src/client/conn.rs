//! One connection to a NATS-protocol server, for the command-line client and the load tool
//! (`crate::bench`) alike: a TCP stream, a large read buffer decoded in place by
//! [`ServerCodec`], server `PING`s answered before the next read, and a time limit on every
//! wait that has one.
//!
//! Two ways to read: [`Client::next`] waits for the next op; a hot loop instead drains what
//! one read brought with [`Client::try_next`] (no await, no allocation beyond the codec's)
//! and reads again with [`Client::fill`], so it knows when each read returned.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Decoder;

use super::ClientError;
use eventline::protocol::client::{Received, ServerCodec};

/// The usual `CONNECT`: no `+OK` per op (acknowledgements would compete with messages for
/// the read path), subjects checked here rather than by the server, and headers on, since
/// catch-up events carry their sequence and time in headers. Echo is on, the default.
pub const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n";

/// Free space guaranteed before each read; small reads mean a syscall per few messages.
const READ_CHUNK: usize = 64 * 1024;

/// What the buffer grows by when it lacks [`READ_CHUNK`]; once the decoded frames are
/// dropped, `reserve` reclaims the same allocation instead of allocating again.
const READ_CAPACITY: usize = 256 * 1024;

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

/// What one [`Client::fill`] brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Bytes arrived; take the ops with [`Client::try_next`].
    Data,
    /// Nothing arrived before the deadline.
    Idle,
    /// The server closed the connection.
    Closed,
}

/// The fields of the server's `INFO` that a client checks its requests against.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerInfo {
    /// The largest payload the server accepts, if it says.
    pub max_payload: Option<usize>,
    /// Present on eventline, which lists its extensions there.
    #[serde(default)]
    eventline: Option<serde_json::Value>,
    /// nats-server started with `-js`.
    #[serde(default)]
    pub jetstream: bool,
}

impl ServerInfo {
    /// Whether the server is eventline, with its extensions (`APUB`, `SUB ... FROM`, `$EL`).
    pub fn is_eventline(&self) -> bool {
        self.eventline.is_some()
    }
}

/// One connection to one server (see the module documentation).
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    codec: ServerCodec,
    server: String,
    timeout: Duration,
    /// The server's latest `INFO`.
    info: Option<ServerInfo>,
    /// Ops that arrived while [`Client::sync`] waited for its `PONG`, in order.
    pending: VecDeque<Received>,
    /// A `PING` was decoded; its `PONG` goes out before the next read.
    pong_owed: bool,
}

impl Client {
    /// Connects with [`CONNECT`] and waits for the `PONG` of a `PING`, each step within
    /// `wait`; `wait` is also the limit of every later bounded wait.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Timeout`] or what the server said.
    pub async fn connect(server: &str, wait: Duration) -> Result<Client, ClientError> {
        Client::open(server, wait, CONNECT, b"").await
    }

    /// Connects, sends `connect` (a `CONNECT` line) and `setup` (e.g. a `SUB`) in one write,
    /// then syncs: when this returns, the server has applied `setup`, so a subscription is
    /// in place before anyone publishes.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn open(server: &str, wait: Duration, connect: &[u8], setup: &[u8]) -> Result<Client, ClientError> {
        let stream = timeout(wait, TcpStream::connect(server))
            .await
            .map_err(|_| ClientError::Timeout { server: server.to_owned(), what: "connecting", after: wait })?
            .map_err(|source| ClientError::Connect { server: server.to_owned(), source })?;
        // Requests and latency runs send small writes; Nagle would hold them back.
        stream.set_nodelay(true).map_err(|source| ClientError::Io {
            server: server.to_owned(),
            what: "setting TCP_NODELAY",
            source,
        })?;
        let mut client = Client {
            stream,
            buf: BytesMut::with_capacity(READ_CAPACITY),
            codec: ServerCodec::new(MAX_PAYLOAD),
            server: server.to_owned(),
            timeout: wait,
            info: None,
            pending: VecDeque::new(),
            pong_owed: false,
        };
        let mut hello = BytesMut::with_capacity(connect.len() + setup.len());
        hello.put_slice(connect);
        hello.put_slice(setup);
        client.write(&hello).await?;
        client.sync().await?;
        Ok(client)
    }

    /// The `host:port` this client talks to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The limit on each bounded wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When a wait that started now must end.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The server's `INFO`, once seen (always, after [`Client::open`] against a NATS server).
    pub fn info(&self) -> Option<&ServerInfo> {
        self.info.as_ref()
    }

    /// Writes all of `bytes` (an op, or a pre-built batch of them) within the timeout.
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
    /// message routed). Deliveries arriving meanwhile are kept for [`Client::next`] and
    /// [`Client::try_next`].
    ///
    /// # Errors
    /// [`ClientError::Refused`] on a `-NAK`, [`ClientError::Server`] on a `-ERR`, or a
    /// timeout or connection error.
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        self.write(b"PING\r\n").await?;
        let deadline = self.deadline();
        loop {
            while let Some(op) = self.decode()? {
                match op {
                    Received::Pong => return Ok(()),
                    Received::Nak(reason) => return Err(ClientError::Refused(lossy(&reason))),
                    Received::Err(text) => return Err(self.server_error(&text)),
                    Received::Info(_) | Received::Ok => {}
                    other => self.pending.push_back(other),
                }
            }
            self.fill_or_fail(Some(deadline), "waiting for PONG").await?;
        }
    }

    /// Sends an `APUB` op (see [`super::ops::publish`]) and waits for its answer.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the reason of a `-NAK`, or a timeout or connection error.
    pub async fn publish_acknowledged(&mut self, op: &[u8]) -> Result<Ack, ClientError> {
        self.write(op).await?;
        let deadline = self.deadline();
        loop {
            match self.next(Some(deadline), "waiting for +ACK").await? {
                Received::Ack { seq, revision, duplicate } => return Ok(Ack { seq, revision, duplicate }),
                Received::Nak(reason) => return Err(ClientError::Refused(lossy(&reason))),
                Received::Err(text) => return Err(self.server_error(&text)),
                _ => {}
            }
        }
    }

    /// The next op from the server other than `PING` (answered), `PONG`, `+OK` and `INFO`
    /// (kept for [`Client::info`]); waits until `deadline`, or without a limit when it is
    /// `None`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] naming `what`, [`ClientError::Closed`], or a read error.
    pub async fn next(&mut self, deadline: Option<Instant>, what: &'static str) -> Result<Received, ClientError> {
        loop {
            if let Some(op) = self.try_next()? {
                return Ok(op);
            }
            self.fill_or_fail(deadline, what).await?;
        }
    }

    /// As [`Client::next`], but only from what is already read: `None` when the buffer
    /// holds no whole op, and then [`Client::fill`] reads more.
    ///
    /// # Errors
    /// [`ClientError::Protocol`] if the server sent something undecodable.
    // Inlined into the hot loop: otherwise each op (160 bytes) is copied out twice.
    #[inline(always)]
    pub fn try_next(&mut self) -> Result<Option<Received>, ClientError> {
        if let Some(op) = self.pending.pop_front() {
            return Ok(Some(op));
        }
        loop {
            match self.decode()? {
                Some(Received::Pong | Received::Ok | Received::Info(_)) => {}
                op => return Ok(op),
            }
        }
    }

    /// Reads whatever the socket has (at least one byte), waiting at most until `deadline`
    /// (without a limit when it is `None`); first answers any `PING` decoded since the last
    /// read. `read_buf` is cancel-safe, so a timed-out or cancelled read loses nothing.
    ///
    /// # Errors
    /// [`ClientError::Io`] on a read error; a timeout or error writing the `PONG`.
    pub async fn fill(&mut self, deadline: Option<Instant>) -> Result<Fill, ClientError> {
        if self.pong_owed {
            self.write(b"PONG\r\n").await?;
            self.pong_owed = false;
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CAPACITY);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let read = match deadline {
            Some(deadline) => match timeout_at(deadline, read).await {
                Ok(read) => read,
                Err(_) => return Ok(Fill::Idle),
            },
            None => read.await,
        };
        match read {
            Ok(0) => Ok(Fill::Closed),
            Ok(_) => Ok(Fill::Data),
            Err(source) => Err(ClientError::Io { server: self.server.clone(), what: "reading", source }),
        }
    }

    /// [`ClientError::Timeout`] on this connection, naming what it waited for.
    pub fn timed_out(&self, what: &'static str) -> ClientError {
        ClientError::Timeout { server: self.server.clone(), what, after: self.timeout }
    }

    /// [`ClientError::Closed`] on this connection; `what` completes "closed the connection".
    pub fn closed(&self, what: &'static str) -> ClientError {
        ClientError::Closed { server: self.server.clone(), what }
    }

    /// [`ClientError::Server`] for the text of a `-ERR`.
    pub fn server_error(&self, text: &[u8]) -> ClientError {
        ClientError::Server { server: self.server.clone(), text: lossy(text) }
    }

    /// Reads once; a timeout or a close is an error naming `what`.
    async fn fill_or_fail(&mut self, deadline: Option<Instant>, what: &'static str) -> Result<(), ClientError> {
        match self.fill(deadline).await? {
            Fill::Data => Ok(()),
            Fill::Idle => Err(self.timed_out(what)),
            Fill::Closed => Err(self.closed(what)),
        }
    }

    /// The next op in the buffer, any kind but `PING` (noted for [`Client::fill`] to answer);
    /// an `INFO` is also kept for [`Client::info`].
    #[inline(always)]
    fn decode(&mut self) -> Result<Option<Received>, ClientError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(Received::Ping)) => self.pong_owed = true,
                Ok(Some(Received::Info(json))) => {
                    self.keep_info(&json);
                    return Ok(Some(Received::Info(json)));
                }
                Ok(op) => return Ok(op),
                Err(source) => return Err(ClientError::Protocol { server: self.server.clone(), source }),
            }
        }
    }

    #[cold]
    fn keep_info(&mut self, json: &[u8]) {
        self.info = Some(serde_json::from_slice(json).unwrap_or_default());
    }
}

pub(super) fn lossy(text: &[u8]) -> String {
    String::from_utf8_lossy(text).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// A scripted server on port 0: it sends `info`, takes everything up to the client's
    /// first `PING`, then answers with `answer`. Yields the socket and what the client sent.
    async fn fake_server(info: &'static [u8], answer: &'static [u8]) -> (String, JoinHandle<(TcpStream, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let server = tokio::spawn(async move {
            let mut socket = listener.accept().await.expect("accept").0;
            socket.write_all(info).await.expect("write INFO");
            let hello = read_until(&mut socket, b"PING\r\n").await;
            socket.write_all(answer).await.expect("write the answer");
            (socket, hello)
        });
        (addr, server)
    }

    /// Reads from `socket` until what it received ends with `end`; returns all of it.
    async fn read_until(socket: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        while !got.ends_with(end) {
            let mut chunk = [0; 1024];
            let n = timeout(WAIT, socket.read(&mut chunk)).await.expect("in time").expect("read");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn open_sends_connect_and_setup_then_keeps_what_came_before_the_pong() {
        let info = b"INFO {\"max_payload\":100,\"eventline\":{}}\r\n";
        let (addr, server) = fake_server(info, b"MSG a 1 2\r\nhi\r\n+OK\r\nPONG\r\n").await;
        let mut client = Client::open(&addr, WAIT, CONNECT, b"SUB a 1\r\n").await.expect("open");
        let (_socket, hello) = server.await.expect("server");
        assert_eq!(hello, [CONNECT, b"SUB a 1\r\nPING\r\n"].concat());
        let info = client.info().expect("INFO seen");
        assert_eq!((info.max_payload, info.is_eventline(), info.jetstream), (Some(100), true, false));
        let Ok(Some(Received::Msg(msg))) = client.try_next() else { panic!("the MSG before the PONG is kept") };
        assert_eq!((&msg.subject[..], &msg.payload[..]), (&b"a"[..], &b"hi"[..]));
        assert_eq!(client.try_next().expect("decodes"), None);
    }

    #[tokio::test]
    async fn a_ping_is_answered_before_the_next_read() {
        let (addr, server) = fake_server(b"INFO {}\r\n", b"PONG\r\nPING\r\nMSG a 1 1\r\nx\r\n").await;
        let mut client = Client::connect(&addr, WAIT).await.expect("connect");
        let op = client.next(Some(client.deadline()), "waiting for MSG").await.expect("next");
        assert!(matches!(op, Received::Msg(_)), "{op:?}");
        assert!(!client.info().expect("INFO seen").is_eventline());
        let (mut socket, _) = server.await.expect("server");
        let pong = tokio::spawn(async move { read_until(&mut socket, b"PONG\r\n").await });
        // This read sends the PONG first; the server then closes the connection.
        assert_eq!(client.fill(Some(client.deadline())).await.expect("fill"), Fill::Closed);
        assert_eq!(pong.await.expect("the server got its PONG"), b"PONG\r\n");
    }

    #[tokio::test]
    async fn a_quiet_read_is_idle_and_a_quiet_next_a_timeout() {
        let (addr, server) = fake_server(b"", b"PONG\r\n").await;
        let mut client = Client::connect(&addr, WAIT).await.expect("connect");
        let _socket = server.await.expect("server");
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(client.fill(Some(soon)).await.expect("fill"), Fill::Idle);
        let error = client.next(Some(soon), "waiting for nothing").await.expect_err("times out");
        assert!(matches!(error, ClientError::Timeout { what: "waiting for nothing", .. }), "{error}");
    }
}
