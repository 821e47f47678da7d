//! Test harness: a real eventline server on a port-0 listener, and a raw line client that
//! reads like a telnet session. Every network wait is under [`TIMEOUT`].
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use eventline::broker::Broker;
use eventline::config::{Config, StoreConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any single network wait in a test may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running server on a fresh data directory (removed when the server is dropped),
/// stopped by [`TestServer::stop`] or when the test's runtime ends.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Kept alive for the server's lifetime; `None` when the caller owns the directory.
    _data: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with_config(Config::default()).await
    }

    /// A server with `config`, its data in a new temporary directory.
    pub async fn with_config(config: Config) -> TestServer {
        let data = tempfile::tempdir().expect("temp dir");
        let mut server = TestServer::start_in(data.path(), config).await;
        server._data = Some(data);
        server
    }

    /// A server on the data directory `dir` (e.g. to restart on the same log).
    pub async fn start_in(dir: &std::path::Path, config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = Config { store: StoreConfig { data: dir.to_owned(), ..config.store }, ..config };
        let broker = Arc::new(Broker::start(config, CancellationToken::new()).expect("open the event log"));
        let task = tokio::spawn(eventline::server::run(listener, broker, async {
            let _ = stopped.await;
        }));
        TestServer { addr, _data: None, stop: Some(stop), task }
    }

    /// The `nats://` URL for async-nats.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(TIMEOUT, &mut self.task).await.expect("server stops in time");
        result.expect("server task").expect("server run");
    }
}

/// A raw protocol client: writes lines, reads lines, as a person with telnet would.
pub struct Raw {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    /// Connects and consumes the INFO line.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect_keep_info(addr).await;
        let info = raw.line().await;
        assert!(info.starts_with("INFO {"), "expected INFO, got {info:?}");
        raw
    }

    /// Connects without reading anything.
    pub async fn connect_keep_info(addr: SocketAddr) -> Raw {
        let stream =
            tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        let (read, writer) = stream.into_split();
        Raw { reader: BufReader::new(read), writer }
    }

    /// Connects, sends `CONNECT` with the given JSON and syncs with PING/PONG.
    pub async fn connect_with(addr: SocketAddr, connect_json: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(&format!("CONNECT {connect_json}\r\nPING\r\n")).await;
        raw.expect("PONG").await;
        raw
    }

    /// Connects quietly (`verbose` and `pedantic` off, as client libraries do).
    pub async fn quiet(addr: SocketAddr) -> Raw {
        Raw::connect_with(addr, r#"{"verbose":false,"pedantic":false}"#).await
    }

    pub async fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        tokio::time::timeout(TIMEOUT, self.writer.write_all(bytes)).await.expect("write in time").expect("write");
    }

    /// The next line, without its CRLF, or `None` if the server closed the connection.
    pub async fn try_line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line)).await.expect("a line in time");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    /// The next line, without its CRLF.
    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("a line arrives in time")
            .expect("read");
        assert!(n > 0, "connection closed while a line was expected");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    /// Reads the next line and asserts it equals `expected`.
    pub async fn expect(&mut self, expected: &str) {
        let line = self.line().await;
        assert_eq!(line, expected);
    }

    /// Reads one line per entry and asserts each.
    pub async fn expect_lines(&mut self, lines: &[&str]) {
        for expected in lines {
            self.expect(expected).await;
        }
    }

    /// Sends PING and reads up to its PONG, returning every line before it.
    pub async fn sync(&mut self) -> Vec<String> {
        self.send("PING\r\n").await;
        let mut before = Vec::new();
        loop {
            let line = self.line().await;
            if line == "PONG" {
                return before;
            }
            before.push(line);
        }
    }

    /// Asserts the server closes the connection with nothing more to read.
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(TIMEOUT, self.reader.read_to_end(&mut rest)).await.expect("connection closes in time");
        // A reset instead of a clean FIN also means closed.
        if read.is_ok() {
            assert!(rest.is_empty(), "unexpected bytes before close: {:?}", String::from_utf8_lossy(&rest));
        }
    }

    /// Reads exactly `n` bytes (a payload and its CRLF, say).
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(TIMEOUT, self.reader.read_exact(&mut buf))
            .await
            .expect("bytes arrive in time")
            .expect("read");
        buf
    }

    /// Reads and discards everything until the server closes the connection (a FIN or a
    /// reset), returning how many bytes arrived first.
    pub async fn read_to_close(&mut self) -> usize {
        let mut total = 0;
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let read =
                tokio::time::timeout(TIMEOUT, self.reader.read(&mut chunk)).await.expect("connection closes in time");
            match read {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    }
}

/// Helpers for tests that look below the line level.
impl Raw {
    /// The next line with its line end (`\r\n` or `\n`) kept, to check framing byte for byte.
    pub async fn line_bytes(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(TIMEOUT, self.reader.read_until(b'\n', &mut line))
            .await
            .expect("a line arrives in time")
            .expect("read");
        assert!(n > 0, "connection closed while a line was expected");
        line
    }

    /// Sends `bytes` one byte per write (Nagle off), so the server sees every split point.
    pub async fn send_byte_by_byte(&mut self, bytes: &[u8]) {
        self.writer.as_ref().set_nodelay(true).expect("set TCP_NODELAY");
        for byte in bytes {
            self.send_bytes(std::slice::from_ref(byte)).await;
            tokio::time::timeout(TIMEOUT, self.writer.flush()).await.expect("flush in time").expect("flush");
        }
    }
}

/// A message as a catch-up subscription or a query delivers it: `HMSG <subject> <sid>
/// [reply] <hlen> <total>` read to the exact byte count (a plain `MSG` reads with no
/// headers).
#[derive(Debug, Clone)]
pub struct Hmsg {
    pub subject: String,
    pub sid: String,
    pub reply: Option<String>,
    /// The header block, from `NATS/1.0` through its closing blank line (empty for `MSG`).
    pub headers: String,
    pub payload: Vec<u8>,
}

impl Hmsg {
    /// The status after `NATS/1.0` (`100 Caught Up`, `204 End Of Results`), if any.
    pub fn status(&self) -> Option<&str> {
        let first = self.headers.split("\r\n").next()?;
        first.strip_prefix("NATS/1.0 ").map(str::trim).filter(|status| !status.is_empty())
    }

    /// The first value of header `name` (compared case-insensitively), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// A numeric header, failing the test if it is missing or not a number.
    pub fn number(&self, name: &str) -> u64 {
        let value = self.header(name).unwrap_or_else(|| panic!("no {name} header in {self:?}"));
        value.parse().unwrap_or_else(|_| panic!("{name} is not a number in {self:?}"))
    }

    /// The event's `Nats-Sequence`.
    pub fn seq(&self) -> u64 {
        self.number("Nats-Sequence")
    }
}

/// What the server sends next: a message, or any other line (`PONG`, `+ACK ...`, `-NAK ...`).
#[derive(Debug)]
pub enum Incoming {
    Msg(Hmsg),
    Line(String),
}

/// Helpers for the catch-up and query extensions.
impl Raw {
    /// Connects quietly, announcing header support (as a client of the extensions does).
    pub async fn with_headers(addr: SocketAddr) -> Raw {
        Raw::connect_with(addr, r#"{"verbose":false,"pedantic":false,"headers":true}"#).await
    }

    /// The next message (`HMSG` or `MSG`, payload read to the exact byte) or line.
    pub async fn incoming(&mut self) -> Incoming {
        let line = self.line().await;
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let number = |word: &str| word.parse::<usize>().unwrap_or_else(|_| panic!("bad size in {line:?}"));
        let (header_len, total, reply) = match words.as_slice() {
            ["HMSG", _, _, hlen, total] => (number(hlen), number(total), None),
            ["HMSG", _, _, reply, hlen, total] => (number(hlen), number(total), Some(*reply)),
            ["MSG", _, _, total] => (0, number(total), None),
            ["MSG", _, _, reply, total] => (0, number(total), Some(*reply)),
            _ => return Incoming::Line(line),
        };
        assert!(header_len <= total, "header size past the total in {line:?}");
        let mut body = self.read_exact(total + 2).await;
        assert_eq!(&body[total..], b"\r\n", "message body of {line:?} not followed by CRLF");
        body.truncate(total);
        let payload = body.split_off(header_len);
        let headers = String::from_utf8(body).expect("UTF-8 header block");
        Incoming::Msg(Hmsg {
            subject: words[1].to_owned(),
            sid: words[2].to_owned(),
            reply: reply.map(str::to_owned),
            headers,
            payload,
        })
    }

    /// The next message, failing the test on any other line.
    pub async fn hmsg(&mut self) -> Hmsg {
        match self.incoming().await {
            Incoming::Msg(msg) => msg,
            Incoming::Line(line) => panic!("expected a message, got {line:?}"),
        }
    }

    /// `APUB <subject>` with `payload`; returns the `+ACK`'s sequence.
    pub async fn apub(&mut self, subject: &str, payload: &str) -> u64 {
        self.send(&format!("APUB {subject} {}\r\n{payload}\r\n", payload.len())).await;
        let line = self.line().await;
        ack_seq(&line)
    }

    /// `FETCH <sid> <args>`: the events, then the `204 End Of Results` status that ends them.
    pub async fn fetch(&mut self, sid: &str, args: &str) -> (Vec<Hmsg>, Hmsg) {
        self.send(&format!("FETCH {sid} {args}\r\n")).await;
        let mut events = Vec::new();
        loop {
            let msg = match self.incoming().await {
                Incoming::Msg(msg) => msg,
                Incoming::Line(line) => panic!("FETCH {sid} {args}: expected results, got {line:?}"),
            };
            assert_eq!(msg.sid, sid, "FETCH result on another sid: {msg:?}");
            if msg.status().is_some() {
                assert_eq!(msg.status(), Some("204 End Of Results"), "FETCH {sid} {args}");
                assert!(msg.payload.is_empty(), "status with a payload: {msg:?}");
                return (events, msg);
            }
            events.push(msg);
        }
    }
}

/// The sequence of a `+ACK seq=N rev=R` line, failing the test on anything else.
pub fn ack_seq(line: &str) -> u64 {
    parse_ack(line).0
}

/// The `(seq, rev, duplicate)` of a `+ACK seq=N rev=R[ duplicate]` line.
pub fn parse_ack(line: &str) -> (u64, u64, bool) {
    let rest = line.strip_prefix("+ACK seq=").unwrap_or_else(|| panic!("expected +ACK, got {line:?}"));
    let (seq, rest) = rest.split_once(" rev=").unwrap_or_else(|| panic!("malformed +ACK {line:?}"));
    let (rev, duplicate) = match rest.strip_suffix(" duplicate") {
        Some(rev) => (rev, true),
        None => (rest, false),
    };
    (seq.parse().expect("seq"), rev.parse().expect("rev"), duplicate)
}

/// Runs the real binary, `eventline serve --port 0 --data <data> <extra...>`, and returns
/// it with the address it announced on its first stdout line. Blocking.
pub fn spawn_binary(data: &std::path::Path, extra: &[&str]) -> (std::process::Child, SocketAddr) {
    spawn_command(std::process::Command::new(env!("CARGO_BIN_EXE_eventline")), data, extra)
}

/// [`spawn_binary`] with a command the caller prepared: another build of the binary (a
/// release one, to measure what a debug build is too slow to show), or stderr redirected
/// (to look for panics in it afterwards).
pub fn spawn_command(
    mut command: std::process::Command,
    data: &std::path::Path,
    extra: &[&str],
) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = command
        .args(["serve", "--port", "0", "--log-level", "warn", "--data"])
        .arg(data)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn eventline");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).expect("read the address line");
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        panic!("expected `listening on ADDR`, got {line:?} (did the server refuse to start?)");
    };
    (child, addr.parse().expect("an address"))
}

/// A server process killed (SIGKILL) and reaped when dropped, so a failing test leaves
/// nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// SIGKILL, and waits for the process to be gone (so its files are closed and its lock
    /// released), asserting it was running until then.
    pub fn kill(&mut self) {
        self.0.kill().expect("SIGKILL");
        let status = self.0.wait().expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "running until killed: {status:?}");
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (within [`TIMEOUT`]) for a process started by [`spawn_binary`] to exit.
pub async fn wait_exit(mut child: std::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(TIMEOUT, tokio::task::spawn_blocking(move || child.wait()))
        .await
        .expect("the server exits in time")
        .expect("join")
        .expect("wait")
}

/// The naive NATS matcher (`*` one token, `>` the rest), the oracle for expected results.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let (mut filter, mut subject) = (filter.split('.'), subject.split('.'));
    loop {
        match (filter.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(f), Some(s)) if f == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// An RFC 3339 time (a `Nats-Time-Stamp`) as unix nanoseconds.
pub fn nanos(rfc3339: &str) -> i128 {
    let time: jiff::Timestamp = rfc3339.parse().unwrap_or_else(|e| panic!("bad time {rfc3339:?}: {e}"));
    time.as_nanosecond()
}
