//! The client commands as a user runs them: a real `eventline serve --port 0` and
//! `eventline pub` / `sub` / `fetch` processes, checked by their stdout lines, stderr and exit
//! codes. Every wait on a process is bounded by [`TIMEOUT`]; a process still running then is
//! killed and the test fails.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_eventline");
const TIMEOUT: Duration = Duration::from_secs(15);

/// `eventline serve --port 0` on a fresh data directory, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(BIN)
            .args(["serve", "--port", "0", "--log-level", "warn", "--data"])
            .arg(data.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn eventline serve");
        let lines = line_reader(child.stdout.take().expect("stdout"));
        let first = lines.recv_timeout(TIMEOUT).expect("the server prints its address in time");
        let addr = first.strip_prefix("listening on ").expect("`listening on ADDR`").to_owned();
        Server { child, addr, _data: data }
    }

    /// Runs `eventline <command> --server <addr> <args>` to completion.
    fn run(&self, command: &str, args: &[&str]) -> Output {
        wait(self.spawn(command, args))
    }

    /// Starts `eventline <command> --server <addr> <args>` with its output piped.
    fn spawn(&self, command: &str, args: &[&str]) -> Child {
        Command::new(BIN)
            .args([command, "--server", &self.addr])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn eventline")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command printed, and its exit code.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn assert_success(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }
}

/// The lines `pipe` produces, read on a thread so the caller can wait with a timeout.
fn line_reader(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for `child` to exit and collects its output, killing it after [`TIMEOUT`].
fn wait(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(output) => {
            let output = output.expect("wait for the command");
            Output {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("eventline (pid {pid}) did not exit within {TIMEOUT:?}");
        }
    }
}

/// A running command whose stderr is read line by line (to learn when it is subscribed);
/// stdout is collected when it exits.
struct Running {
    child: Child,
    stderr: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn new(mut child: Child) -> Running {
        let stderr = line_reader(child.stderr.take().expect("stderr"));
        Running { child, stderr, seen: Vec::new() }
    }

    /// Waits until a stderr line starts with `prefix` and returns it.
    fn expect_stderr(&mut self, prefix: &str) -> String {
        loop {
            match self.stderr.recv_timeout(TIMEOUT) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no stderr line starting with {prefix:?} in time; saw {:?}", self.seen);
                }
            }
        }
    }

    fn finish(self) -> Output {
        let Running { child, stderr, mut seen } = self;
        let mut output = wait(child);
        // The reader ends at the pipe's end, which came with the exit.
        while let Ok(line) = stderr.recv_timeout(TIMEOUT) {
            seen.push(line);
        }
        output.stderr = seen.join("\n");
        output
    }
}

/// `<seq> <time> <subject> <payload>`, checking that the time is an RFC 3339 UTC time.
fn event(line: &str) -> (u64, String, String) {
    let mut words = line.splitn(4, ' ');
    let (seq, time, subject, payload) = (words.next(), words.next(), words.next(), words.next());
    let seq = seq.and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no sequence in {line:?}"));
    let time = time.unwrap_or_default();
    assert!(time.len() > 20 && time.contains('T') && time.ends_with('Z'), "time {time:?} in {line:?}");
    (seq, subject.unwrap_or_default().to_owned(), payload.unwrap_or_default().to_owned())
}

fn events(output: &Output) -> Vec<(u64, String, String)> {
    output.lines().into_iter().map(event).collect()
}

fn owned(events: &[(u64, &str, &str)]) -> Vec<(u64, String, String)> {
    events.iter().map(|&(seq, subject, payload)| (seq, subject.to_owned(), payload.to_owned())).collect()
}

#[test]
fn pub_ack_prints_sequence_and_revision() {
    let server = Server::start();
    let want = [("orders.1", "seq=1 rev=1"), ("orders.1", "seq=2 rev=2"), ("orders.2", "seq=3 rev=1")];
    for (subject, line) in want {
        let output = server.run("pub", &["--ack", subject, "created"]);
        output.assert_success();
        assert_eq!(output.lines(), [line], "{output:?}");
    }
}

#[test]
fn conflicting_expectation_exits_1_with_the_reason_on_stderr() {
    let server = Server::start();
    let first = server.run("pub", &["--ack", "--expect-last-subject-seq", "0", "account.7", "opened"]);
    assert_eq!(first.assert_success().lines(), ["seq=1 rev=1"]);

    let conflict = server.run("pub", &["--ack", "--expect-last-subject-seq", "0", "account.7", "opened again"]);
    assert_eq!(conflict.code, Some(1), "{conflict:?}");
    assert_eq!(conflict.stdout, "", "{conflict:?}");
    assert!(conflict.stderr.contains("wrong last subject sequence: expected 0, actual 1"), "{conflict:?}");

    let next = server.run("pub", &["--ack", "--expect-last-subject-seq", "1", "account.7", "closed"]);
    assert_eq!(next.assert_success().lines(), ["seq=2 rev=2"]);
}

#[test]
fn repeated_msg_id_prints_duplicate() {
    let server = Server::start();
    let first = server.run("pub", &["--ack", "--msg-id", "order-42", "orders.42", "created"]);
    assert_eq!(first.assert_success().lines(), ["seq=1 rev=1"]);
    let again = server.run("pub", &["--ack", "--msg-id", "order-42", "orders.42", "created"]);
    assert_eq!(again.assert_success().lines(), ["seq=1 rev=1 duplicate"]);
    let other = server.run("pub", &["--ack", "--msg-id", "order-43", "orders.42", "created"]);
    assert_eq!(other.assert_success().lines(), ["seq=2 rev=2"]);
}

#[test]
fn sub_from_zero_replays_in_order_then_goes_live() {
    let server = Server::start();
    for (subject, payload) in [("shop.orders", "one"), ("shop.stock", "two\nlines"), ("other.x", "skip")] {
        server.run("pub", &["--ack", subject, payload]).assert_success();
    }
    server.run("pub", &["--ack", "shop.orders", "three"]).assert_success();

    let replay = server.run("sub", &["shop.>", "--from", "0", "--count", "3"]);
    replay.assert_success();
    let want = [(1, "shop.orders", "one"), (2, "shop.stock", "two\\nlines"), (4, "shop.orders", "three")];
    assert_eq!(events(&replay), owned(&want), "{replay:?}");

    // One more than the log holds: the last comes live, after the caught-up marker (stderr).
    let mut sub = Running::new(server.spawn("sub", &["shop.>", "--from", "2", "--count", "3"]));
    assert_eq!(sub.expect_stderr("-- caught up"), "-- caught up at 4");
    server.run("pub", &["shop.stock", "live"]).assert_success();
    let output = sub.finish();
    output.assert_success();
    let want = [(2, "shop.stock", "two\\nlines"), (4, "shop.orders", "three"), (5, "shop.stock", "live")];
    assert_eq!(events(&output), owned(&want), "{output:?}");
}

#[test]
fn sub_from_beyond_the_head_exits_1() {
    let server = Server::start();
    let output = server.run("sub", &["a.>", "--from", "99", "--count", "1"]);
    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(output.stderr.contains("start sequence 99 is beyond the head 0"), "{output:?}");
}

#[test]
fn fetch_honours_limits_ranges_and_filters() {
    let server = Server::start();
    for n in 1..=5 {
        let subject = format!("sensor.{}", n % 2);
        server.run("pub", &["--ack", &subject, &format!("reading {n}")]).assert_success();
    }
    let seqs = |output: &Output| events(output).into_iter().map(|(seq, _, _)| seq).collect::<Vec<_>>();

    let limited = server.run("fetch", &["sensor.>", "--limit", "2"]);
    assert_eq!(seqs(limited.assert_success()), [1, 2]);
    assert_eq!(limited.stderr.trim(), "-- 2 events");

    let ranged = server.run("fetch", &["sensor.>", "--from-seq", "2", "--to-seq", "4"]);
    assert_eq!(seqs(ranged.assert_success()), [2, 3, 4]);

    let one_subject = server.run("fetch", &["sensor.0"]);
    let want = [(2, "sensor.0", "reading 2"), (4, "sensor.0", "reading 4")];
    assert_eq!(events(one_subject.assert_success()), owned(&want));

    let both = server.run("fetch", &["sensor.0", "sensor.1", "--from-seq", "3", "--limit", "2"]);
    assert_eq!(seqs(both.assert_success()), [3, 4]);

    let later = server.run("fetch", &["sensor.>", "--since", "2500-01-01T00:00:00Z"]);
    assert_eq!(later.assert_success().stdout, "");
    assert_eq!(later.stderr.trim(), "-- 0 events");
}

#[test]
fn plain_pub_reaches_a_live_sub_and_is_stored_before_exit() {
    let server = Server::start();
    let mut sub = Running::new(server.spawn("sub", &["greet.*", "--count", "1"]));
    sub.expect_stderr("-- subscribed to greet.*");
    let published = server.run("pub", &["greet.joe", "hello world"]);
    assert_eq!(published.assert_success().stdout, "");
    let output = sub.finish();
    assert_eq!(output.assert_success().lines(), ["greet.joe hello world"]);

    // The PUB was handled before `pub` exited: it is already in the log.
    let stored = server.run("fetch", &["greet.>"]);
    assert_eq!(events(stored.assert_success()), owned(&[(1, "greet.joe", "hello world")]));
}

#[test]
fn usage_and_connection_errors_exit_2() {
    let server = Server::start();
    let cases: [(&str, &[&str]); 6] = [
        ("pub", &["--msg-id", "x", "a", "payload"]),
        ("pub", &["--expect-last-subject-seq", "1", "a", "payload"]),
        ("pub", &["a.*", "payload"]),
        ("sub", &["a", "--from", "yesterday"]),
        ("sub", &["a", "--count", "0"]),
        ("fetch", &["a", "--since", "tomorrow"]),
    ];
    for (command, args) in cases {
        let output = server.run(command, args);
        assert_eq!(output.code, Some(2), "{command} {args:?}: {output:?}");
        assert_eq!(output.stdout, "", "{command} {args:?}");
    }
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let closed = wait(
        Command::new(BIN)
            .args(["pub", "--server", &format!("127.0.0.1:{port}"), "a", "x"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    assert_eq!(closed.code, Some(2), "{closed:?}");
    assert!(closed.stderr.contains("cannot connect"), "{closed:?}");
}
