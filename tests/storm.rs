//! A storm of hostile input against the real binary. For `STORM_SECS` seconds (default
//! [`DEFAULT_STORM_SECS`]; `STORM_SECS=300` is the full five minutes) [`STORMERS`] connections
//! write random and mutated input: random bytes, mutated valid ops, huge byte counts (some
//! followed by less data and a stall), deep subjects, odd extension options, `$EL.` requests
//! with odd JSON, malformed header blocks, odd `CONNECT` JSON, and whole-log reads from
//! connections that leave at once; [`STUCK_READERS`] more subscribe to everything (live, or
//! catching up from the start) and never read. Meanwhile a healthy client PINGs every 10 ms
//! on its own connection. The server must, always:
//!
//! - not panic (no `panicked` in its stderr) nor exit, and never close the healthy client;
//! - within 30 s of the storm's clients leaving, go idle (under 5 % of one core over a 1 s
//!   window), and answer an `APUB` on a new connection sent as soon as they have left.
//!
//! And with `STORM_GOALS=1` (the issue's goals; timing and memory figures, which vary with
//! the machine and the build, so `cargo test` prints them without asserting them):
//!
//! - answer the healthy client's PINGs with a p99 round trip of at most 10 ms during the storm;
//! - have its RSS back within twice what it was before the storm, within those 30 s;
//! - answer that `APUB` within 100 ms.
//!
//! Every figure is printed whether the test passes or not, and every requirement that failed
//! is named in one failure message, so one run shows the whole picture.
//!
//! Environment:
//! - `STORM_GOALS`: assert the figures above too.
//! - `STORM_SECS`: the storm's length in seconds.
//! - `STORM_SEED`: replays a storm. The seed is printed at the start. Each connection draws
//!   its input from a generator seeded from it (by task and connection number), so a replay
//!   sends the same input; how far each connection gets before the server cuts it, and when,
//!   still depends on timing.
//! - `EVENTLINE_BIN`: the server binary to run instead of the debug build cargo made for this
//!   test, e.g. `EVENTLINE_BIN=target/release/eventline` after `cargo build --release`. A debug
//!   server is several times slower; the latency thresholds are meant for a release one.
//!
//! The storm's tasks share the test's single runtime thread, so the storm never takes more
//! than one of the machine's two cores from the server; the healthy client and the
//! measurements run on threads of their own, so the storm's tasks cannot delay them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use common::{KillOnDrop, Raw, spawn_command};
use eventline::protocol::MAX_CONTROL_LINE;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Long enough for the storm to build up a backlog and a log worth reading, short enough
/// for the whole test to take well under a minute in a debug build when the server passes.
const DEFAULT_STORM_SECS: u64 = 20;
/// Connections writing hostile input; each starts over on a new connection whenever the
/// server closes it.
const STORMERS: usize = 40;
/// Connections that subscribe to everything and then never read their socket.
const STUCK_READERS: usize = 8;
/// A stormer pauses up to this long after each write: forty of them then make a storm of a
/// few thousand writes a second, not a benchmark of the test's own thread.
const MAX_PAUSE_MS: u64 = 10;
/// A stormer's connection ends after at most this many writes (if the server has not ended
/// it first), so subscriptions and queries come and go.
const MAX_WRITES_PER_CONNECTION: u32 = 200;
/// How long a stuck reader holds its subscription without reading before it leaves and
/// starts over, and how long a connection that announced more bytes than it sent stays.
const STUCK_MS: std::ops::Range<u64> = 2_000..10_000;
const STALL_MS: std::ops::Range<u64> = 500..3_000;
/// A connect or a write that takes longer than this gives up on that connection (the server
/// may be pausing it, as it pauses publishers to a lagging subscriber).
const NETWORK_PATIENCE: Duration = Duration::from_secs(5);

/// The healthy client's PING period, and the p99 round trip required of the server.
const PING_EVERY: Duration = Duration::from_millis(10);
const PING_P99_MAX: Duration = Duration::from_millis(10);
/// The healthy client's connection counts as broken when a PONG takes longer than this.
const PONG_PATIENCE: Duration = Duration::from_secs(30);

/// After the storm's clients leave, the server has this long to go idle and shrink.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// CPU use is measured over windows this long; idle is under [`IDLE_CPU`] of one core.
const WINDOW: Duration = Duration::from_secs(1);
const IDLE_CPU: f64 = 0.05;
/// The RSS after the storm may be at most this many times the one before it.
const RSS_GROWTH_MAX: u64 = 2;
/// The `APUB` sent as soon as the storm's clients have left is acknowledged within this.
const APUB_WITHIN: Duration = Duration::from_millis(100);
/// Clock ticks per second in `/proc/<pid>/stat` (Linux's `USER_HZ`, 100 on x86 and ARM).
const TICKS_PER_SECOND: f64 = 100.0;

#[tokio::test]
async fn a_storm_of_hostile_input_leaves_the_server_responsive_and_lean() {
    let storm_for = Duration::from_secs(env_number("STORM_SECS").unwrap_or(DEFAULT_STORM_SECS));
    let seed = env_number("STORM_SEED").unwrap_or_else(|| rand::rng().random());
    let binary =
        std::env::var_os("EVENTLINE_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_eventline")), PathBuf::from);
    eprintln!("storm: {storm_for:?} against {}, seed {seed} (STORM_SEED={seed} replays it)", binary.display());

    // Default settings, as a deployment runs; stderr to a file, to look for panics in.
    let data = tempfile::tempdir().expect("temp dir");
    let stderr_file = tempfile::NamedTempFile::new().expect("temp file");
    let mut command = Command::new(&binary);
    command.stderr(stderr_file.reopen().expect("reopen the stderr file"));
    let data_path = data.path().to_owned();
    let (child, addr) =
        tokio::task::spawn_blocking(move || spawn_command(command, &data_path, &[])).await.expect("join");
    let pid = child.id();
    let mut server = KillOnDrop(child);

    // Warm-up: the write path, the log and a query have all run once before the baseline.
    let mut client = Raw::with_headers(addr).await;
    for i in 0..5 {
        client.apub(&format!("warm.{i}"), "warm-up").await;
    }
    let (events, _) = client.fetch("1", "warm.>").await;
    assert_eq!(events.len(), 5, "the warm-up events are in the log");
    drop(client);
    let before = Memory::of(pid).expect("the server runs");

    let stop_pinging = Arc::new(AtomicBool::new(false));
    let pinger = std::thread::spawn({
        let stop = Arc::clone(&stop_pinging);
        move || Pings::measure(addr, &stop)
    });
    // A window of PINGs before the storm: the quiet round trip to compare with.
    tokio::time::sleep(WINDOW).await;

    let storm =
        Arc::new(Storm { addr, stop: CancellationToken::new(), tasks: TaskTracker::new(), stats: Stats::default() });
    let cpu_at_start = cpu_ticks(pid).expect("the server runs");
    let own_cpu_at_start = cpu_ticks(std::process::id()).expect("this process runs");
    let storm_started = Instant::now();
    for task in 0..STORMERS + STUCK_READERS {
        let rng = StdRng::seed_from_u64(seed ^ (task as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let storm_for_task = Arc::clone(&storm);
        let stop = storm.stop.clone();
        if task < STORMERS {
            storm.tasks.spawn(stop.run_until_cancelled_owned(stormer(storm_for_task, rng)));
        } else {
            storm.tasks.spawn(stop.run_until_cancelled_owned(stuck_reader(storm_for_task, rng)));
        }
    }
    tokio::time::sleep(storm_for).await;
    storm.stop.cancel();
    storm.tasks.close();
    storm.tasks.wait().await;
    // Every storm connection is closed now: the clients have left.
    let left = Instant::now();
    let storm_cpu = cpu_ticks(pid).map(|ticks| share_of_a_core(ticks - cpu_at_start, left - storm_started));
    let own_cpu =
        cpu_ticks(std::process::id()).map(|ticks| share_of_a_core(ticks - own_cpu_at_start, left - storm_started));
    let peak = Memory::of(pid);
    stop_pinging.store(true, Ordering::Relaxed);

    let goals = std::env::var_os("STORM_GOALS").is_some();
    let settling = std::thread::spawn(move || Settling::watch(pid, before.rss_kb, goals));
    let apub = apub_round_trip(addr).await;
    let settled =
        tokio::task::spawn_blocking(move || settling.join().expect("the settling watch panicked")).await.expect("join");
    let pings = tokio::task::spawn_blocking(move || pinger.join().expect("the pinger panicked")).await.expect("join");
    let after = Memory::of(pid);
    let exited = server.0.try_wait().expect("try_wait");
    let stderr = std::fs::read_to_string(stderr_file.path()).expect("read the server's stderr");

    // The figures, then every requirement that failed.
    let quiet = pings.round_trips(..storm_started);
    let stormy = pings.round_trips(storm_started..left);
    let stats = &storm.stats;
    let mut report = vec![
        format!("seed {seed}, storm {storm_for:?}, binary {}", binary.display()),
        format!(
            "storm: {} connections, {} of them cut by the server, {} connects failed, {} MB written",
            stats.connections.load(Ordering::Relaxed),
            stats.cut.load(Ordering::Relaxed),
            stats.refused.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed) / 1_000_000,
        ),
        format!("PING before the storm: {}", quiet.summary()),
        format!("PING during the storm: {}", stormy.summary()),
        format!("CPU during the storm: server {}, this test {}", shown(&storm_cpu, cores), shown(&own_cpu, cores)),
        format!("memory before the storm: {before}"),
        format!("memory at the end of the storm: {}", shown(&peak, Memory::to_string)),
        format!("after the clients left: {}", settled.summary()),
        format!("memory at the end: {}", shown(&after, Memory::to_string)),
        format!("APUB right after the clients left: {}", shown(&apub, |taken| format!("+ACK after {taken:?}"))),
    ];
    let mut failures = Vec::new();
    if let Some(status) = exited {
        failures.push(format!("the server exited: {status}"));
    }
    let panics = panics(&stderr);
    if !panics.is_empty() {
        failures.push(format!("the server panicked {} times: {:?}", panics.len(), &panics[..panics.len().min(3)]));
    }
    if let Some(broken) = &pings.broken {
        failures.push(format!("the healthy client's connection broke: {broken}"));
    }
    match stormy.percentile(0.99) {
        Some(p99) if p99 <= PING_P99_MAX || !goals => {}
        Some(p99) => failures.push(format!("PING p99 during the storm is {p99:?}, over {PING_P99_MAX:?}")),
        None => failures.push("no PING was answered during the storm".to_owned()),
    }
    failures.extend(settled.failures(goals));
    match &apub {
        Ok(taken) if *taken < APUB_WITHIN || !goals => {}
        Ok(taken) => failures.push(format!("the APUB after the storm took {taken:?}, over {APUB_WITHIN:?}")),
        Err(error) => failures.push(format!("the APUB after the storm failed: {error}")),
    }
    report.push(format!("server stderr: {} lines", stderr.lines().count()));
    let report = report.join("\n  ");
    eprintln!("storm report:\n  {report}");
    assert!(failures.is_empty(), "storm: {}\n  {report}", failures.join("; "));
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// The healthy client's PING round trips, each with the moment its PING was sent, and why
/// its connection broke, if it did.
struct Pings {
    round_trips: Vec<(Instant, Duration)>,
    broken: Option<String>,
}

impl Pings {
    /// PINGs every [`PING_EVERY`] on a connection of its own until `stop`, on a thread of
    /// its own. A round trip that runs past the period delays the next PING rather than
    /// queueing PINGs behind it, so each one measures the server, not the backlog.
    fn measure(addr: SocketAddr, stop: &AtomicBool) -> Pings {
        let mut pings = Pings { round_trips: Vec::new(), broken: None };
        if let Err(error) = pings.ping_until(addr, stop) {
            pings.broken = Some(error);
        }
        pings
    }

    fn ping_until(&mut self, addr: SocketAddr, stop: &AtomicBool) -> Result<(), String> {
        let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        stream.set_read_timeout(Some(PONG_PATIENCE)).map_err(|e| format!("read timeout: {e}"))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| format!("clone: {e}"))?);
        let mut writer = stream;
        let mut line = String::new();
        let mut next_line = |line: &mut String| -> Result<(), String> {
            line.clear();
            match reader.read_line(line) {
                Ok(0) => Err("the server closed the connection".to_owned()),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("read: {e}")),
            }
        };
        next_line(&mut line)?;
        if !line.starts_with("INFO ") {
            return Err(format!("expected INFO, got {line:?}"));
        }
        let mut send = |bytes: &[u8]| writer.write_all(bytes).map_err(|e| format!("write: {e}"));
        send(b"CONNECT {\"verbose\":false}\r\n")?;
        let mut due = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            send(b"PING\r\n")?;
            loop {
                next_line(&mut line)?;
                match line.trim_end() {
                    "PONG" => break,
                    "PING" => send(b"PONG\r\n")?,
                    "+OK" => {}
                    other => return Err(format!("unexpected {other:?}")),
                }
            }
            self.round_trips.push((sent, sent.elapsed()));
            due = (due + PING_EVERY).max(Instant::now());
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        Ok(())
    }

    /// The round trips of the PINGs sent in `range`, sorted.
    fn round_trips(&self, range: impl std::ops::RangeBounds<Instant>) -> RoundTrips {
        let mut sorted: Vec<Duration> =
            self.round_trips.iter().filter(|(sent, _)| range.contains(sent)).map(|&(_, rtt)| rtt).collect();
        sorted.sort();
        RoundTrips(sorted)
    }
}

/// Sorted round trips.
struct RoundTrips(Vec<Duration>);

impl RoundTrips {
    /// The nearest-rank percentile (`q` in 0..=1), if there are any.
    fn percentile(&self, q: f64) -> Option<Duration> {
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len().max(1));
        self.0.get(rank - 1).copied()
    }

    fn summary(&self) -> String {
        let ms = |q: f64| self.percentile(q).map_or("-".to_owned(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3));
        format!("{} PINGs, p50 {}, p99 {}, max {}", self.0.len(), ms(0.5), ms(0.99), ms(1.0))
    }
}

/// The server's memory, from `/proc/<pid>/status`, in kB.
struct Memory {
    rss_kb: u64,
    /// The peak RSS since the server started.
    peak_kb: u64,
    /// Heap and other private memory, versus file pages mapped in: a heap that stays large
    /// after the storm is the allocator keeping what was freed, or memory still in use.
    anon_kb: u64,
    file_kb: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Memory, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("status: {e}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("no {name} in /proc/{pid}/status (has the server exited?)"))
        };
        Ok(Memory {
            rss_kb: field("VmRSS")?,
            peak_kb: field("VmHWM")?,
            anon_kb: field("RssAnon")?,
            file_kb: field("RssFile")?,
        })
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |kb: u64| kb as f64 / 1024.0;
        write!(
            f,
            "RSS {:.1} MiB ({:.1} anonymous, {:.1} file), peak {:.1} MiB",
            mb(self.rss_kb),
            mb(self.anon_kb),
            mb(self.file_kb),
            mb(self.peak_kb)
        )
    }
}

/// The server's CPU time so far (all threads, user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("stat: {e}"))?;
    // The command name, in parentheses, may hold spaces: count fields after it. utime and
    // stime are fields 14 and 15; the state, field 3, is the first after the name.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    if fields.first() == Some(&"Z") {
        return Err("the server has exited".to_owned());
    }
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (field(11), field(12)) {
        (Some(user), Some(system)) => Ok(user + system),
        _ => Err(format!("unexpected /proc/{pid}/stat: {stat:?}")),
    }
}

fn share_of_a_core(ticks: u64, over: Duration) -> f64 {
    ticks as f64 / TICKS_PER_SECOND / over.as_secs_f64()
}

/// How the server settled after the storm's clients left: its CPU use and RSS per
/// [`WINDOW`], and when it first was idle and first back within [`RSS_GROWTH_MAX`] times its
/// RSS before the storm.
struct Settling {
    rss_before_kb: u64,
    /// Each window's share of a core and the RSS at its end.
    windows: Vec<(f64, u64)>,
    idle_after: Option<Duration>,
    lean_after: Option<Duration>,
    error: Option<String>,
}

impl Settling {
    /// Watches the server for up to [`SETTLE_WITHIN`], stopping early once it has been idle
    /// and, if the memory goal is asserted (`goals`), lean.
    fn watch(pid: u32, rss_before_kb: u64, goals: bool) -> Settling {
        let started = Instant::now();
        let mut settling =
            Settling { rss_before_kb, windows: Vec::new(), idle_after: None, lean_after: None, error: None };
        let result = (|| -> Result<(), String> {
            let mut ticks = cpu_ticks(pid)?;
            while started.elapsed() < SETTLE_WITHIN
                && (settling.idle_after.is_none() || goals && settling.lean_after.is_none())
            {
                let window_started = Instant::now();
                std::thread::sleep(WINDOW);
                let now = cpu_ticks(pid)?;
                let cpu = share_of_a_core(now - ticks, window_started.elapsed());
                ticks = now;
                let rss_kb = Memory::of(pid)?.rss_kb;
                settling.windows.push((cpu, rss_kb));
                if cpu < IDLE_CPU {
                    settling.idle_after.get_or_insert(started.elapsed());
                }
                if rss_kb <= RSS_GROWTH_MAX * rss_before_kb {
                    settling.lean_after.get_or_insert(started.elapsed());
                }
            }
            Ok(())
        })();
        settling.error = result.err();
        settling
    }

    fn summary(&self) -> String {
        let when =
            |after: Option<Duration>| after.map_or("never".to_owned(), |d| format!("after {:.1} s", d.as_secs_f64()));
        let windows: Vec<String> = self
            .windows
            .iter()
            .map(|(cpu, rss_kb)| format!("{:.0}% {:.0} MiB", cpu * 100.0, *rss_kb as f64 / 1024.0))
            .collect();
        let error = self.error.as_ref().map_or(String::new(), |error| format!(" (watch failed: {error})"));
        format!(
            "idle {}, RSS within {RSS_GROWTH_MAX}x {}{error}; CPU and RSS per {WINDOW:?}: [{}]",
            when(self.idle_after),
            when(self.lean_after),
            windows.join(", ")
        )
    }

    /// What failed, if anything; the memory goal only if `goals`.
    fn failures(&self, goals: bool) -> Vec<String> {
        if let Some(error) = &self.error {
            return vec![format!("the server could not be watched settling: {error}")];
        }
        let mut failures = Vec::new();
        let (last_cpu, last_rss_kb) = self.windows.last().copied().unwrap_or_default();
        if self.idle_after.is_none() {
            failures.push(format!(
                "CPU not idle (under {:.0}% of a core over {WINDOW:?}) within {SETTLE_WITHIN:?} of the clients leaving: \
                 {:.0}% in the last window",
                IDLE_CPU * 100.0,
                last_cpu * 100.0
            ));
        }
        if goals && self.lean_after.is_none() {
            failures.push(format!(
                "RSS not back within {RSS_GROWTH_MAX}x of its {} kB before the storm within {SETTLE_WITHIN:?}: \
                 {last_rss_kb} kB at the end ({:.1}x)",
                self.rss_before_kb,
                last_rss_kb as f64 / self.rss_before_kb as f64
            ));
        }
        failures
    }
}

/// An `APUB` on a new connection: the time from sending it to its `+ACK` (the connection
/// and its `INFO` are not counted), or why there was none within [`SETTLE_WITHIN`].
async fn apub_round_trip(addr: SocketAddr) -> Result<Duration, String> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let (read, mut write) = stream.into_split();
        let mut read = tokio::io::BufReader::new(read);
        let mut line = String::new();
        read.read_line(&mut line).await.map_err(|e| format!("read INFO: {e}"))?;
        let sent = Instant::now();
        write
            .write_all(b"CONNECT {\"verbose\":false}\r\nAPUB storm.after 5\r\nafter\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        line.clear();
        read.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
        if !line.starts_with("+ACK ") {
            return Err(format!("expected +ACK, got {line:?}"));
        }
        Ok(sent.elapsed())
    };
    tokio::time::timeout(SETTLE_WITHIN, attempt).await.unwrap_or_else(|_| Err(format!("no +ACK in {SETTLE_WITHIN:?}")))
}

/// The panics in a server's stderr, each as its first line (which thread, where) and the
/// next (what). A panic in a task that the runtime caught counts too: it is a bug all the
/// same, and the log line reporting the failed task is not counted again.
fn panics(stderr: &str) -> Vec<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    (0..lines.len())
        .filter(|&i| lines[i].contains("panicked at"))
        .map(|i| lines[i..lines.len().min(i + 2)].join(" "))
        .collect()
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")))
}

/// A measurement for the report, or why there is none.
fn shown<T>(value: &Result<T, String>, show: impl Fn(&T) -> String) -> String {
    value.as_ref().map_or_else(Clone::clone, show)
}

fn cores(share: &f64) -> String {
    format!("{:.0}% of a core", share * 100.0)
}

// ---------------------------------------------------------------------------------------------
// The storm's clients
// ---------------------------------------------------------------------------------------------

/// What the storm's tasks share: where to connect, when to stop, every task they start
/// (to wait for all of them to be gone) and what they did.
struct Storm {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    /// Connections the server closed (seen by their reader).
    cut: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
}

impl Storm {
    /// A new connection, or `None` (after a pause, so a refusing server is not hammered).
    async fn connect(&self) -> Option<TcpStream> {
        match tokio::time::timeout(NETWORK_PATIENCE, TcpStream::connect(self.addr)).await {
            Ok(Ok(stream)) => {
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                Some(stream)
            }
            _ => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
        }
    }

    async fn send(&self, write: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<(), ()> {
        match tokio::time::timeout(NETWORK_PATIENCE, write.write_all(bytes)).await {
            Ok(Ok(())) => {
                self.stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// Keeps `stream` open, unread and unwritten, for `ms` milliseconds (or until the storm
    /// ends), without holding up the task that hands it over.
    fn hold(&self, stream: TcpStream, ms: u64) {
        self.tasks.spawn(self.stop.clone().run_until_cancelled_owned(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop(stream);
        }));
    }
}

/// Connection after connection, each with its own generator drawn from `rng`: one in ten
/// sends a whole-log read and leaves at once; the others write hostile input, a generator
/// picked per write, while reading and discarding whatever the server sends.
async fn stormer(storm: Arc<Storm>, mut rng: StdRng) {
    loop {
        let mut rng = StdRng::seed_from_u64(rng.random());
        let Some(mut stream) = storm.connect().await else { continue };
        if rng.random_ratio(1, 10) {
            // Sent or not, the connection is dropped (closed) at once.
            let _ = storm.send(&mut stream, &whole_log_read(&mut rng)).await;
            continue;
        }
        let (mut read, mut write) = stream.into_split();
        let writes = rng.random_range(1..=MAX_WRITES_PER_CONNECTION);
        let writing = async {
            storm.send(&mut write, &preamble(&mut rng)).await.ok()?;
            for _ in 0..writes {
                let &(_, generate, then) =
                    GENERATORS.choose_weighted(&mut rng, |&(weight, ..)| weight).expect("weights");
                storm.send(&mut write, &generate(&mut rng)).await.ok()?;
                if then == Then::Stall {
                    return Some(rng.random_range(STALL_MS));
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..=MAX_PAUSE_MS))).await;
            }
            None
        };
        let stall = tokio::select! {
            () = discard(&mut read) => {
                storm.stats.cut.fetch_add(1, Ordering::Relaxed);
                None
            }
            stall = writing => stall,
        };
        if let Some(ms) = stall {
            storm.hold(read.reunite(write).expect("the halves of one stream"), ms);
        }
    }
}

/// Connection after connection that subscribes to everything (live, catching up from the
/// start, or through `$EL.SUB`) and never reads: the server must bound what it keeps for it.
async fn stuck_reader(storm: Arc<Storm>, mut rng: StdRng) {
    loop {
        let mut rng = StdRng::seed_from_u64(rng.random());
        let Some(mut stream) = storm.connect().await else { continue };
        let mut subscribe = preamble(&mut rng);
        subscribe.extend(if rng.random_ratio(1, 4) { whole_log_read(&mut rng) } else { wide_subscription(&mut rng) });
        if storm.send(&mut stream, &subscribe).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(rng.random_range(STUCK_MS))).await;
        }
    }
}

/// Reads and drops everything until the server closes the connection.
async fn discard(read: &mut OwnedReadHalf) {
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(1..) = read.read(&mut buffer).await {}
}

// ---------------------------------------------------------------------------------------------
// Generators: each returns the bytes of one write
// ---------------------------------------------------------------------------------------------

type Generator = fn(&mut StdRng) -> Vec<u8>;

/// What a stormer does after a write: go on, or leave the connection stalled (held open,
/// sending nothing more) and start over on a new one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Next,
    Stall,
}

/// The stormers' generators and their weights.
const GENERATORS: &[(u32, Generator, Then)] = &[
    (12, random_bytes, Then::Next),
    (20, mutated, Then::Next),
    (5, huge_count, Then::Next),
    (1, stalled_payload, Then::Stall),
    (8, deep_publish, Then::Next),
    (4, wide_subscription, Then::Next),
    (8, odd_fetch, Then::Next),
    (8, api_request, Then::Next),
    (10, bad_header_publish, Then::Next),
    (5, odd_connect, Then::Next),
    (18, stored_publish, Then::Next),
];

/// Room for a subject or a filter list in a control line, leaving enough for the verb and
/// the other arguments of the ops that carry it.
const ROOM: usize = MAX_CONTROL_LINE - 40;
const TOKEN_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Bytes that mean something to the parsers, for mutations to put in.
const SIGNIFICANT: &[u8] = b" \t\r\n.*>$0123456789-:=,{}[]\"\\\x00\xff";

/// One control line with its CRLF.
fn line(text: impl AsRef<[u8]>) -> Vec<u8> {
    [text.as_ref(), b"\r\n"].concat()
}

/// A control line, then `payload` and its CRLF.
fn op(text: impl AsRef<[u8]>, payload: &[u8]) -> Vec<u8> {
    [text.as_ref(), b"\r\n", payload, b"\r\n"].concat()
}

/// Random bytes for payloads, made once and cut from at random: generating them per write
/// would make the test's own thread (a debug build) rather than the pauses set the storm's pace.
static NOISE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut noise = vec![0; 1024 * 1024];
    StdRng::seed_from_u64(0).fill(&mut noise[..]);
    noise
});

/// Up to `most` random bytes (`most` at most 1 MiB).
fn payload(rng: &mut StdRng, most: usize) -> Vec<u8> {
    let len = rng.random_range(0..=most);
    let at = rng.random_range(0..=NOISE.len() - len);
    NOISE[at..at + len].to_vec()
}

fn sid(rng: &mut StdRng) -> u32 {
    rng.random_range(1..100)
}

/// A subject the log stores, from a small set, so subjects have histories.
fn stored_subject(rng: &mut StdRng) -> String {
    let kind = ["orders", "users", "hdr", "stall"].choose(rng).expect("kinds");
    match rng.random_range(0..3) {
        0 => format!("{kind}.{}.{}", rng.random_range(0..8), rng.random_range(0..8)),
        _ => format!("{kind}.{}", rng.random_range(0..64)),
    }
}

fn filter(rng: &mut StdRng) -> String {
    match rng.random_range(0..3) {
        0 => stored_subject(rng),
        _ => [">", "orders.>", "orders.*", "*.1", "*.*.>", "users.7", "hdr.>", "*"]
            .choose(rng)
            .expect("filters")
            .to_string(),
    }
}

fn start(rng: &mut StdRng) -> &'static str {
    let starts = ["0", "1", "last", "new", "2026-01-01T00:00:00Z", "999999999999", "-1", "yesterday", "LAST"];
    starts.choose(rng).expect("starts")
}

/// Random bytes, half the time after a real verb so they reach its argument parser.
fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    let most = *[16, 512, 8192, 65536].choose(rng).expect("sizes");
    let mut bytes = payload(rng, most);
    if rng.random_bool(0.5) {
        let verbs = ["PUB ", "HPUB ", "APUB ", "SUB ", "UNSUB ", "FETCH ", "CONNECT ", "PING", "MSG ", "pub ", "Sub "];
        bytes.splice(0..0, verbs.choose(rng).expect("verbs").bytes());
    }
    bytes
}

/// A valid op with one to four byte flips, insertions, deletions, truncations or copies.
fn mutated(rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = valid_op(rng);
    for _ in 0..rng.random_range(1..=4) {
        if bytes.is_empty() {
            bytes.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..6) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes[at] = *SIGNIFICANT.choose(rng).expect("bytes"),
            2 => {
                let inserted = payload(rng, 16);
                bytes.splice(at..at, inserted);
            }
            3 => {
                let end = rng.random_range(at..=bytes.len());
                bytes.drain(at..end);
            }
            4 => bytes.truncate(at),
            _ => {
                let end = rng.random_range(at..=bytes.len().min(at + 64));
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
        }
    }
    bytes
}

fn valid_op(rng: &mut StdRng) -> Vec<u8> {
    let subject = stored_subject(rng);
    let sid = sid(rng);
    let body = payload(rng, 64);
    let len = body.len();
    match rng.random_range(0..12) {
        0 => op(format!("PUB {subject} {len}"), &body),
        1 => op(format!("PUB {subject} in.{sid} {len}"), &body),
        2 => {
            let headers = format!("NATS/1.0\r\nNats-Msg-Id: m{sid}\r\n\r\n");
            let total = headers.len() + len;
            op(format!("HPUB {subject} {} {total}", headers.len()), &[headers.as_bytes(), &body].concat())
        }
        3 => op(format!("APUB {subject} {len} msg-id=m{sid} expect-subject-seq={}", rng.random_range(0..50)), &body),
        4 => op(format!("APUB {subject} {len} unchanged-since={}:orders.>,orders.*", rng.random_range(0..500)), &body),
        5 => line(format!("SUB {} {sid}", filter(rng))),
        6 => line(format!("SUB {} q{sid} {sid}", filter(rng))),
        7 => line(format!("SUB {} {sid} FROM {}", filter(rng), start(rng))),
        8 => line(format!("UNSUB {sid} {}", rng.random_range(0..5))),
        9 => line(format!("FETCH {sid} {},{} from-seq=1 to-seq=100 limit=10", filter(rng), filter(rng))),
        10 => api_request(rng),
        _ => line(["PING", "PONG", r#"CONNECT {"verbose":false,"headers":true}"#].choose(rng).expect("ops")),
    }
}

/// A byte count far too large, negative, or not a number.
fn huge_count(rng: &mut StdRng) -> Vec<u8> {
    let lines = [
        "PUB a 999999999999",
        "HPUB a 10 99999999",
        "PUB a 18446744073709551616",
        "PUB a -1",
        "HPUB a 99999999 10",
        "APUB a 99999999999999999999",
        "APUB a 1048577",
        "APUB a 10 5",
        "HPUB a 1048576 1048577",
        "PUB a 1048576 1048576",
        "APUB a 0 0 0",
        "PUB a 0x10",
        "PUB a 1e9",
        "PUB a +5",
        "APUB a 5 expect-seq=99999999999999999999999",
    ];
    line(lines.choose(rng).expect("lines"))
}

/// A publish announcing up to the 1 MiB limit and sending less; the stormer then leaves the
/// connection stalled, so the server holds a partial payload it may never get.
fn stalled_payload(rng: &mut StdRng) -> Vec<u8> {
    let subject = stored_subject(rng);
    let announced = 1024 * 1024;
    let verb = match rng.random_range(0..4) {
        0 => format!("APUB {subject} {announced}"),
        1 => format!("PUB {subject} {announced}"),
        2 => format!("HPUB {subject} 12 {announced}"),
        _ => format!("APUB {subject} 12 {announced}"),
    };
    let sent = payload(rng, 64 * 1024);
    [line(verb), sent].concat()
}

/// A subject of 1,000 to 2,000 tokens that fits in `room` bytes.
fn deep_subject(rng: &mut StdRng, room: usize) -> String {
    let tokens = rng.random_range(1000..=2000);
    let widest = ((room + 1) / tokens).saturating_sub(1).clamp(1, 3);
    let mut subject = String::with_capacity(room);
    for i in 0..tokens {
        if i > 0 {
            subject.push('.');
        }
        for _ in 0..rng.random_range(1..=widest) {
            subject.push(*TOKEN_CHARS.choose(rng).expect("chars") as char);
        }
    }
    subject
}

/// A deep subject published (with `APUB`, `PUB` or `HPUB`) to be stored, or a deep filter
/// read from the log.
fn deep_publish(rng: &mut StdRng) -> Vec<u8> {
    let subject = deep_subject(rng, ROOM);
    let body = payload(rng, 256);
    let len = body.len();
    match rng.random_range(0..4) {
        0 => op(format!("APUB {subject} {len}"), &body),
        1 => op(format!("PUB {subject} {len}"), &body),
        2 => op(format!("HPUB {subject} 12 {}", 12 + len), &[b"NATS/1.0\r\n\r\n", &body[..]].concat()),
        _ => {
            let filter: Vec<&str> =
                subject.split('.').map(|token| if rng.random_ratio(1, 8) { "*" } else { token }).collect();
            let filter = format!("{}.>", filter.join("."));
            let sid = sid(rng);
            line(if rng.random_bool(0.5) {
                format!("FETCH {sid} {filter}")
            } else {
                format!("SUB {filter} {sid} FROM 0")
            })
        }
    }
}

/// A subscription to everything: live, in a queue group, or catching up.
fn wide_subscription(rng: &mut StdRng) -> Vec<u8> {
    let sid = sid(rng);
    line(match rng.random_range(0..5) {
        0 => format!("SUB > {sid}"),
        1 => format!("SUB > {sid} FROM 0"),
        2 => format!("SUB > q{sid} {sid}"),
        3 => format!("SUB > {sid} FROM last"),
        _ => format!("SUB *.> {sid} FROM 1"),
    })
}

/// A read of the whole log: `FETCH`, catch-up, or the same through the `$EL.` API.
fn whole_log_read(rng: &mut StdRng) -> Vec<u8> {
    let api = |subject: &str, body: &str| op(format!("PUB {subject} in.1 {}", body.len()), body.as_bytes());
    match rng.random_range(0..4) {
        0 => line("FETCH 1 > limit=999999999"),
        1 => line("SUB > 1 FROM 0"),
        2 => [line("SUB in.1 1"), api("$EL.FETCH", r#"{"filters":[">"],"limit":999999999}"#)].concat(),
        _ => [line("SUB in.1 1"), api("$EL.SUB", r#"{"filter":">","start":0,"deliver":"in.1"}"#)].concat(),
    }
}

/// `FETCH` with odd filters (invalid, or hundreds of them) and odd options (huge limits,
/// times out of range or not times, unknown options, malformed pairs).
fn odd_fetch(rng: &mut StdRng) -> Vec<u8> {
    let options = [
        "limit=999999999",
        "limit=0",
        "limit=18446744073709551615",
        "limit=18446744073709551616",
        "limit=-1",
        "limit=",
        "from-seq=0",
        "from-seq=18446744073709551615",
        "to-seq=0",
        "to-seq=18446744073709551615",
        "since=1970-01-01T00:00:00Z",
        "since=0000-01-01T00:00:00Z",
        "since=9999-12-31T23:59:59.999999999Z",
        "until=1970-01-01T00:00:00Z",
        "until=2554-07-21T23:34:33.709551615Z",
        "until=2554-07-21T23:34:33.709551616Z",
        "since=1969-12-31T23:59:59.999999999Z",
        "since=2026-02-30T25:61:61Z",
        "since=2026-01-01T00:00:00+23:59",
        "since=-002026-01-01T00:00:00Z",
        "since=now",
        "until=",
        "since=2026-01-01",
        "colour=red",
        "limit",
        "=",
        "limit==5",
        "from-seq=1=2",
    ];
    let filters = match rng.random_range(0..4) {
        0 => ">".to_owned(),
        1 => {
            let room = rng.random_range(100..ROOM - 200);
            let mut filters = filter(rng);
            while filters.len() < room {
                filters.push(',');
                filters.push_str(&filter(rng));
            }
            filters
        }
        2 => filter(rng),
        _ => ["a..b", ",", ">.a", "", "orders.>,,>", ".", "a.>.b", "*>"].choose(rng).expect("filters").to_string(),
    };
    let mut text = format!("FETCH {} {filters}", sid(rng));
    for _ in 0..rng.random_range(0..=4) {
        text.push(' ');
        text.push_str(options.choose(rng).expect("options"));
    }
    line(text)
}

/// A `$EL.` request with odd JSON, usually after subscribing to its reply subject so the
/// answers have somewhere to go.
fn api_request(rng: &mut StdRng) -> Vec<u8> {
    let sid = sid(rng);
    let inbox = format!("in.{sid}");
    let (subject, body) = match rng.random_range(0..5) {
        0 => ("$EL.FETCH".to_owned(), odd_fetch_json(rng)),
        1 => ("$EL.SUB".to_owned(), odd_subscribe_json(rng, &inbox)),
        2 => (format!("$EL.LAST.{}", filter(rng)), Vec::new()),
        3 => (format!("$EL.PUB.{}", filter(rng)), payload(rng, 64)),
        _ => (["$EL.FETCH", "$EL.SUB"].choose(rng).expect("subjects").to_string(), odd_json(rng)),
    };
    let mut bytes = if rng.random_ratio(4, 5) { line(format!("SUB {inbox} {sid}")) } else { Vec::new() };
    bytes.extend(op(format!("PUB {subject} {inbox} {}", body.len()), &body));
    bytes
}

fn odd_fetch_json(rng: &mut StdRng) -> Vec<u8> {
    let filters = [r#"[">"]"#, "[]", r#"">""#, "[1,2]", r#"[">",">",">"]"#, r#"["a..b"]"#, "[null]", r#"["orders.>"]"#];
    let options = [
        r#""limit":999999999"#,
        r#""limit":-1"#,
        r#""limit":1e300"#,
        r#""limit":"10""#,
        r#""from_seq":18446744073709551615"#,
        r#""from_seq":18446744073709551616"#,
        r#""to_seq":0"#,
        r#""since":"0000-01-01T00:00:00Z""#,
        r#""until":"9999-12-31T23:59:59Z""#,
        r#""since":12"#,
        r#""since":null"#,
        r#""until":"1970-01-01T00:00:00Z""#,
        r#""filters":[">"]"#,
    ];
    let mut body = format!(r#"{{"filters":{}"#, filters.choose(rng).expect("filters"));
    for _ in 0..rng.random_range(0..=3) {
        body.push(',');
        body.push_str(options.choose(rng).expect("options"));
    }
    body.push('}');
    body.into_bytes()
}

fn odd_subscribe_json(rng: &mut StdRng, inbox: &str) -> Vec<u8> {
    let filters = [r#"">""#, r#""*.>""#, r#""a..b""#, "1", "null", r#"[">"]"#, r#""orders.>""#];
    let starts = [
        "0",
        r#""0""#,
        "-1",
        "1e99",
        r#""last""#,
        r#""new""#,
        r#""9999-12-31T23:59:59Z""#,
        "{}",
        "null",
        "true",
        r#""18446744073709551616""#,
        "99999999999",
    ];
    let deliver = match rng.random_range(0..6) {
        0 => format!(r#""{}""#, "x".repeat(rng.random_range(1000..100_000))),
        1 => format!(r#""{}""#, deep_subject(rng, ROOM)),
        2 => [r#""""#, r#"">""#, r#""*""#, r#""a..b""#, "null"].choose(rng).expect("delivers").to_string(),
        _ => format!(r#""{inbox}""#),
    };
    let filter = filters.choose(rng).expect("filters");
    let start = starts.choose(rng).expect("starts");
    format!(r#"{{"filter":{filter},"start":{start},"deliver":{deliver}}}"#).into_bytes()
}

/// JSON of the wrong shape: deep nesting, huge strings, many keys, invalid text.
fn odd_json(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..7) {
        0 => {
            let depth = rng.random_range(100..100_000);
            ["[".repeat(depth), "]".repeat(depth)].concat().into_bytes()
        }
        1 => {
            let depth = rng.random_range(100..50_000);
            [r#"{"a":"#.repeat(depth), "}".repeat(depth)].concat().into_bytes()
        }
        2 => format!(r#"{{"filters":["{}"]}}"#, "a".repeat(rng.random_range(1000..500_000))).into_bytes(),
        3 => payload(rng, 4096),
        4 => {
            let keys: Vec<String> = (0..rng.random_range(100..20_000)).map(|i| format!(r#""k{i}":{i}"#)).collect();
            format!("{{{}}}", keys.join(",")).into_bytes()
        }
        5 => format!(r#"{{"filters":[{}]}}"#, vec![r#"">""#; rng.random_range(100..50_000)].join(",")).into_bytes(),
        _ => {
            let odd: &[&[u8]] = &[
                b"",
                b"null",
                b"[]",
                b"{}",
                b"\"x\"",
                b"1e999",
                b"{\"filters\":",
                b"{\"filters\":[\"\\ud800\"]}",
                b"{\"filters\":[\">\"]}}}",
                b"\xef\xbb\xbf{}",
                b"{\"filters\":[\"\xff\xfe\"]}",
                b"{\"filters\":[\">\"],\"filters\":[\">\"]}",
            ];
            odd.choose(rng).expect("bodies").to_vec()
        }
    }
}

/// `HPUB`, `APUB` or `$EL.PUB` with a malformed header block, sometimes with a header size
/// that cuts the block short.
fn bad_header_publish(rng: &mut StdRng) -> Vec<u8> {
    let block = odd_header_block(rng);
    let body = payload(rng, 64);
    let header_len = if rng.random_ratio(1, 4) { rng.random_range(0..=block.len()) } else { block.len() };
    let total = block.len() + body.len();
    let subject = stored_subject(rng);
    let text = match rng.random_range(0..3) {
        0 => format!("HPUB {subject} {header_len} {total}"),
        1 => format!("APUB {subject} {header_len} {total}"),
        _ => format!("HPUB $EL.PUB.{subject} in.1 {header_len} {total}"),
    };
    op(text, &[block, body].concat())
}

fn odd_header_block(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => format!("NATS/1.0\r\nNats-Msg-Id: {}\r\n\r\n", "m".repeat(rng.random_range(1000..200_000))).into_bytes(),
        1 => {
            let headers: String = (0..rng.random_range(100..20_000)).map(|i| format!("X-{i}: v\r\n")).collect();
            format!("NATS/1.0\r\n{headers}\r\n").into_bytes()
        }
        2 => payload(rng, 256),
        _ => {
            let blocks: &[&[u8]] = &[
                b"NATS/1.0\r\n\r\n",
                b"NATS/1.0 100 Caught Up\r\nNats-Last-Sequence: 1\r\n\r\n",
                b"NATS/1.0 204\r\n\r\n",
                b"NATS/1.0 500 Storage Failure\r\nNats-Sequence: 1\r\n\r\n",
                b"NATS/2.0\r\n\r\n",
                b"nats/1.0\r\n\r\n",
                b"",
                b"NATS/1.0\r\nNats-Expected-Last-Sequence: abc\r\n\r\n",
                b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 99999999999999999999999\r\n\r\n",
                b"NATS/1.0\r\nEventline-Unchanged-Since: x\r\n\r\n",
                b"NATS/1.0\r\nEventline-Unchanged-Since: 1 a..b >.a\r\n\r\n",
                b"NATS/1.0\r\nEventline-Unchanged-Since: 18446744073709551615 >\r\n\r\n",
                b"NATS/1.0\r\nEventline-Expected-Revision: -1\r\n\r\n",
                b"NATS/1.0\r\nNo-Colon-Line\r\n\r\n",
                b"NATS/1.0\r\n: empty name\r\n\r\n",
                b"NATS/1.0\nbare: lf\n\n",
                b"NATS/1.0\r\nX: a\r\n",
                b"NATS/1.0",
                b"\r\n\r\n",
                b"NATS/1.0\r\nNats-Msg-Id:\r\n\r\n",
                b"NATS/1.0\r\nNats-Msg-Id: \xff\xfe\r\n\r\n",
            ];
            blocks.choose(rng).expect("blocks").to_vec()
        }
    }
}

/// `CONNECT` with deeply nested, huge, wrongly typed or malformed JSON.
fn odd_connect(rng: &mut StdRng) -> Vec<u8> {
    let json = match rng.random_range(0..5) {
        0 => {
            let depth = rng.random_range(100..(MAX_CONTROL_LINE - 20) / 2);
            ["[".repeat(depth), "]".repeat(depth)].concat().into_bytes()
        }
        1 => format!(r#"{{"name":"{}"}}"#, "n".repeat(rng.random_range(100..4200))).into_bytes(),
        2 => payload(rng, 200),
        3 => {
            let mut json = br#"{"verbose":false,"pedantic":false,"headers":true,"name":"storm"}"#.to_vec();
            let at = rng.random_range(0..json.len());
            json[at] = *SIGNIFICANT.choose(rng).expect("bytes");
            json
        }
        _ => {
            let odd: &[&[u8]] = &[
                br#"{"verbose":"yes"}"#,
                br#"{"verbose":1}"#,
                br#"{"protocol":2}"#,
                br#"{"protocol":-1}"#,
                br#"{"protocol":1e400}"#,
                br#"{"protocol":"1"}"#,
                br#"{"headers":1}"#,
                br#"{"no_responders":true}"#,
                br#"{"no_responders":true,"headers":true,"verbose":false}"#,
                b"[]",
                b"null",
                br#""str""#,
                b"42",
                br#"{"verbose":false}}}"#,
                br#"{"verbose":false"#,
                br#"{"verbose":false,"verbose":true}"#,
                br#"{"lang":"\ud800"}"#,
                br#"{"echo":null}"#,
                b"",
                br#"{"name":{"a":[1,2,{}]}}"#,
                br#"{"verbose":false,"pedantic":true,"echo":false}"#,
                br#"{"user":"a","pass":"b","auth_token":"c","jwt":"d","nkey":"e","sig":"f"}"#,
                b"{\"name\":\"\xff\"}",
            ];
            odd.choose(rng).expect("connects").to_vec()
        }
    };
    line([&b"CONNECT "[..], &json].concat())
}

/// What a stormer sends first on a new connection: nothing (verbose and pedantic stay on),
/// an odd `CONNECT`, or usually a client library's (quiet, with headers).
fn preamble(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => Vec::new(),
        1 => odd_connect(rng),
        _ => line(r#"CONNECT {"verbose":false,"pedantic":false,"headers":true}"#),
    }
}

/// Valid publishes of up to 64 KiB to stored subjects, so the log grows and the whole-log
/// reads have something to read.
fn stored_publish(rng: &mut StdRng) -> Vec<u8> {
    let subject = stored_subject(rng);
    let most = *[16, 256, 4096, 65536].choose(rng).expect("sizes");
    let body = payload(rng, most);
    let len = body.len();
    match rng.random_range(0..3) {
        0 => op(format!("PUB {subject} {len}"), &body),
        1 => op(format!("APUB {subject} {len}"), &body),
        _ => {
            let headers = b"NATS/1.0\r\nStorm: 1\r\n\r\n";
            op(format!("HPUB {subject} {} {}", headers.len(), headers.len() + len), &[&headers[..], &body].concat())
        }
    }
}
