//! Bit flips in a copy of a data directory holding known acknowledged events, served by the
//! real binary. Every trial must end in one of three ways: the server refuses to start with
//! a message naming the file; it serves every event correctly; or it reports the damaged
//! range (a `500 Storage Failure` naming the event, after every event before it) and serves
//! every other event correctly. A wrong or missing event served without a word, a lower
//! head, a forgotten message id or a hang fails the test, naming the file, the offset and
//! the bit. Each failing class has its own assertion, the worst first (silent loss; hangs
//! and crashes; failures that do not say where; refusals that do not name the damaged
//! file), after a summary of every class per kind of file.
//!
//! Two fixtures hold the same events: part written through the store library with small
//! memtables (so fjall has table and blob files), the rest published with `APUB` to the
//! binary, which is then stopped with SIGTERM (everything checkpointed) in one and with
//! SIGKILL right after the last acknowledgement in the other (the last events only in the
//! write-ahead log and fjall's journal, the high-water mark possibly behind them).
//!
//! `BIT_FLIP_TRIALS` sets the number of trials (default [`DEFAULT_TRIALS`]); `BIT_FLIP_SEED`
//! replays a run's choices of file, offset and bits. The fixtures are rebuilt on each run,
//! so a replay flips the same places in files whose bytes may differ a little (timestamps,
//! and what the killed server had written when it died).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Hmsg, Incoming, KillOnDrop, Raw, parse_ack, spawn_binary};
use eventline::config::StoreConfig;
use eventline::store::{Event, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Trials in a default run: about 35 s of a debug build on two cores, fixtures included
/// (a trial that serves takes about half a second, a refusal a tenth of that).
const DEFAULT_TRIALS: usize = 80;
/// Events written through the store library, before the binary starts on the log.
const LIBRARY_EVENTS: u64 = 1_200;
/// Every event of a fixture; those after [`LIBRARY_EVENTS`] are published with `APUB`.
const EVENTS: u64 = 3_000;
/// `APUB`s sent before reading their acknowledgements, so batches hold several events.
const PIPELINE: u64 = 50;
/// Subjects, each with a literal first token, so a fetch of one reads the subject index.
const SUBJECTS: [&str; 5] = ["orders.eu", "orders.us", "payments.eu", "audit.log", "users.signup"];
/// A dedup window no run outlasts: a message id forgotten by a trial is then damage.
const DEDUP_WINDOW: &str = "86400";
/// Longest a damaged data directory may take to start or refuse.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the checks of a trial that started may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// Ranges of sequences printed for one finding.
const RANGES_SHOWN: usize = 12;

/// An acknowledged event as published: what every trial must serve back.
struct Known {
    seq: u64,
    subject: &'static str,
    revision: u64,
    headers: Option<Vec<u8>>,
    payload: Vec<u8>,
    msg_id: Option<String>,
}

/// A number that looks random but depends only on `seq` (splitmix64).
fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every event of a fixture. Payloads do not compress (so fjall stores them verbatim) and
/// every seventh is over fjall's 1 KiB separation threshold, so blob files hold events
/// too; every third has a header block, and every fourth published one a message id.
fn oracle() -> Vec<Known> {
    let mut revisions = [0u64; SUBJECTS.len()];
    (1..=EVENTS)
        .map(|seq| {
            let which = usize::try_from(mix(seq) % SUBJECTS.len() as u64).expect("small");
            revisions[which] += 1;
            let len = if seq % 7 == 0 { 1_100 + mix(seq) % 1_500 } else { 8 + mix(seq) % 400 };
            let mut state = mix(seq ^ 0x5555) | 1;
            let payload = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            Known {
                seq,
                subject: SUBJECTS[which],
                revision: revisions[which],
                headers: (seq % 3 == 0)
                    .then(|| format!("NATS/1.0\r\nTrace: t-{seq}-{:x}\r\nOrigin: bit-flip\r\n\r\n", mix(seq)).into()),
                payload,
                msg_id: (seq > LIBRARY_EVENTS && seq % 4 == 1).then(|| format!("m-{seq}")),
            }
        })
        .collect()
}

/// Writes the first [`LIBRARY_EVENTS`] in batches of one to three, each synced, with a
/// memtable small enough that fjall moves them to table and blob files.
fn write_library_part(dir: &Path, known: &[Known]) {
    let config = StoreConfig { memtable_bytes: 64 * 1024, ..StoreConfig::new(dir) };
    let store = Store::open(&config, |_| {}).expect("open");
    // An hour ago, so the binary's own timestamps (now) come after these.
    let start = jiff::Timestamp::now().as_nanosecond() - 3_600 * 1_000_000_000;
    let start = u64::try_from(start).expect("after 1970");
    let mut seq = 1;
    while seq <= LIBRARY_EVENTS {
        let last = (seq + seq % 3).min(LIBRARY_EVENTS);
        let batch: Vec<Event> = known[usize::try_from(seq - 1).expect("small")..usize::try_from(last).expect("small")]
            .iter()
            .map(|event| Event {
                seq: event.seq,
                timestamp: start + event.seq * 1_000,
                revision: event.revision,
                subject: Bytes::from_static(event.subject.as_bytes()),
                headers: event.headers.clone().map(Bytes::from),
                payload: Bytes::from(event.payload.clone()),
            })
            .collect();
        store.append(&batch, &[], &[]).expect("append");
        store.sync().expect("sync");
        seq = last + 1;
    }
    store.close();
}

/// The `APUB` of `event`, with its header block and message id.
fn apub(event: &Known) -> Vec<u8> {
    let headers = event.headers.as_deref().unwrap_or_default();
    let total = headers.len() + event.payload.len();
    let mut line = match event.headers {
        Some(_) => format!("APUB {} {} {total}", event.subject, headers.len()),
        None => format!("APUB {} {total}", event.subject),
    };
    if let Some(id) = &event.msg_id {
        write!(line, " msg-id={id}").expect("write to a string");
    }
    [line.as_bytes(), b"\r\n", headers, &event.payload, b"\r\n"].concat()
}

/// Publishes the events after [`LIBRARY_EVENTS`] to the binary, [`PIPELINE`] at a time,
/// and checks each acknowledgement.
async fn publish_rest(addr: SocketAddr, known: &[Known]) {
    let mut raw = Raw::with_headers(addr).await;
    let rest = &known[usize::try_from(LIBRARY_EVENTS).expect("small")..];
    for chunk in rest.chunks(usize::try_from(PIPELINE).expect("small")) {
        raw.send_bytes(&chunk.iter().flat_map(apub).collect::<Vec<u8>>()).await;
        for event in chunk {
            let ack = raw.line().await;
            assert_eq!(parse_ack(&ack), (event.seq, event.revision, false), "{ack}");
        }
    }
}

/// How a fixture's server was stopped.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

/// A data directory to damage, held in memory.
struct Fixture {
    stop: Stop,
    dirs: Vec<PathBuf>,
    files: Vec<FixtureFile>,
    /// What the pristine copy serves for each sequence (index `seq - 1`), checked against
    /// the oracle once: trials compare byte for byte, timestamps included.
    served: Vec<Hmsg>,
    /// The high-water mark the fixture was left with.
    mark: u64,
}

struct FixtureFile {
    /// Relative to the data directory.
    path: PathBuf,
    /// The path with every number replaced by `*`: `log/keyspaces/*/tables/*`.
    kind: String,
    len: usize,
    /// The file up to its last nonzero byte: write-ahead log segments are 16 MiB, mostly
    /// zeros, so the rest is written as a hole.
    used: Vec<u8>,
}

impl FixtureFile {
    /// A write-ahead log segment, whose flips mostly go where its records are.
    fn is_segment(&self) -> bool {
        self.path.starts_with("wal")
    }

    /// How likely a flip is to land in this file when files are weighted by size.
    fn weight(&self) -> usize {
        if self.is_segment() { self.used.len() } else { self.len }
    }
}

impl Fixture {
    /// Builds a fixture from `library_part` (a copy of the log the library wrote).
    async fn build(stop: Stop, library_part: &Path, known: &[Known]) -> Fixture {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path().join("data");
        copy_dir(library_part, &data);
        let spawned = data.clone();
        let (child, addr) =
            tokio::task::spawn_blocking(move || spawn_binary(&spawned, &["--dedup-window", DEDUP_WINDOW]))
                .await
                .expect("join");
        let mut child = KillOnDrop(child);
        publish_rest(addr, known).await;
        match stop {
            Stop::Term => {
                let status =
                    Command::new("kill").args(["-s", "TERM", &child.0.id().to_string()]).status().expect("run kill");
                assert!(status.success());
            }
            Stop::Kill => child.0.kill().expect("SIGKILL"),
        }
        let status = exit_within(&mut child.0, START_TIMEOUT).expect("the server exits in time");
        match stop {
            Stop::Term => assert!(status.success(), "clean stop: {status:?}"),
            Stop::Kill => assert_eq!(status.signal(), Some(9), "{status:?}"),
        }
        let mut fixture = Fixture { stop, dirs: Vec::new(), files: Vec::new(), served: Vec::new(), mark: 0 };
        fixture.load(&data);
        let mark = std::fs::read(data.join("high-water-mark")).expect("the mark");
        fixture.mark = u64::from_be_bytes(mark[..8].try_into().expect("8 bytes"));
        let pristine = root.path().join("pristine");
        fixture.write(&pristine, None);
        fixture.served = fixture.serve_pristine(&pristine, known).await;
        fixture
    }

    /// Reads every directory and file (but the lock, which holds only a pid) under `data`.
    fn load(&mut self, data: &Path) {
        let mut pending = vec![data.to_owned()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
                let path = entry.path();
                let relative = path.strip_prefix(data).expect("under data").to_owned();
                if entry.file_type().expect("file type").is_dir() {
                    self.dirs.push(relative);
                    pending.push(path);
                } else if relative != Path::new("lock") {
                    let bytes = std::fs::read(&path).expect("read");
                    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
                    self.files.push(FixtureFile {
                        kind: starred(&relative.display().to_string()),
                        path: relative,
                        len: bytes.len(),
                        used: bytes[..used].to_vec(),
                    });
                }
            }
        }
        self.dirs.sort();
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
    }

    /// Writes the fixture to `dir` (zero tails as holes), with `damage` applied.
    fn write(&self, dir: &Path, damage: Option<&Damage>) {
        std::fs::create_dir_all(dir).expect("create the data directory");
        for sub in &self.dirs {
            std::fs::create_dir_all(dir.join(sub)).expect("create a directory");
        }
        for (index, file) in self.files.iter().enumerate() {
            let path = dir.join(&file.path);
            std::fs::write(&path, &file.used).expect("write a file");
            let out = std::fs::OpenOptions::new().write(true).open(&path).expect("reopen a file");
            out.set_len(file.len as u64).expect("set the file's length");
            let flips = damage.filter(|damage| damage.file == index).map_or(&[][..], |damage| &damage.flips);
            for flip in flips {
                let byte = file.used.get(flip.offset).copied().unwrap_or(0) ^ (1 << flip.bit);
                out.write_all_at(&[byte], flip.offset as u64).expect("flip a bit");
            }
        }
    }

    /// Serves the undamaged fixture once and checks every event against the oracle.
    async fn serve_pristine(&self, dir: &Path, known: &[Known]) -> Vec<Hmsg> {
        let spawned = dir.to_owned();
        let (child, addr) =
            tokio::task::spawn_blocking(move || spawn_binary(&spawned, &["--dedup-window", DEDUP_WINDOW]))
                .await
                .expect("join");
        let _child = KillOnDrop(child);
        let mut raw = Raw::with_headers(addr).await;
        let (events, end) = raw.fetch("1", &format!("> limit={}", EVENTS + 10)).await;
        assert_eq!(end.number("Nats-Last-Sequence"), EVENTS, "{:?}: the head", self.stop);
        assert_eq!(events.len(), known.len(), "{:?}: every event", self.stop);
        for (msg, event) in events.iter().zip(known) {
            assert_eq!(msg.seq(), event.seq, "{:?}", self.stop);
            assert_eq!(msg.subject, event.subject, "{:?}: subject of {}", self.stop, event.seq);
            assert_eq!(msg.payload, event.payload, "{:?}: payload of {}", self.stop, event.seq);
            assert_eq!(msg.number("Eventline-Revision"), event.revision, "{:?}: revision of {}", self.stop, event.seq);
            let own = event.headers.as_deref().map_or(&b"NATS/1.0\r\n"[..], |block| &block[..block.len() - 2]);
            assert!(msg.headers.as_bytes().starts_with(own), "{:?}: headers of {}: {msg:?}", self.stop, event.seq);
        }
        events
    }

    /// Where each kind of file is, for choosing one uniformly.
    fn kinds(&self) -> BTreeMap<&str, Vec<usize>> {
        let mut kinds: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, file) in self.files.iter().enumerate().filter(|(_, file)| file.len > 0) {
            kinds.entry(&file.kind).or_default().push(index);
        }
        kinds
    }
}

/// `text` with every run of digits replaced by `*`: `log/keyspaces/*/tables/*`.
fn starred(text: &str) -> String {
    let mut starred = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_digit() {
            starred.push(c);
        } else if !starred.ends_with('*') {
            starred.push('*');
        }
    }
    starred
}

/// Copies the data directory `from` to `to`, but for the server's lock file.
fn copy_dir(from: &Path, to: &Path) {
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        std::fs::create_dir_all(to.join(&relative)).expect("create dir");
        for entry in std::fs::read_dir(from.join(&relative)).expect("read dir").flatten() {
            let path = relative.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                pending.push(path);
            } else if path != Path::new("lock") {
                std::fs::copy(from.join(&path), to.join(&path)).expect("copy");
            }
        }
    }
}

/// One bit flipped.
struct Flip {
    offset: usize,
    bit: u8,
}

/// The flips of one trial, all in one file of one fixture.
struct Damage {
    fixture: usize,
    file: usize,
    flips: Vec<Flip>,
}

impl Damage {
    fn describe(&self, fixtures: &[Arc<Fixture>]) -> String {
        let fixture = &fixtures[self.fixture];
        let file = &fixture.files[self.file];
        let flips: Vec<String> =
            self.flips.iter().map(|flip| format!("offset {} bit {}", flip.offset, flip.bit)).collect();
        format!(
            "{:?} fixture, {} ({} of {} bytes used): {}",
            fixture.stop,
            file.path.display(),
            file.used.len(),
            file.len,
            flips.join(", ")
        )
    }
}

/// Picks a trial's damage. Even trials go round the (fixture, kind of file) pairs, so
/// every kind is damaged in every fixture; odd trials pick a fixture, then a file weighted
/// by its size (a segment's used part). Usually one bit, now and then two to four within a
/// few bytes.
fn choose(trial: usize, fixtures: &[Arc<Fixture>], rng: &mut StdRng) -> Damage {
    let (fixture, file) = if trial.is_multiple_of(2) {
        let pairs: Vec<(usize, Vec<usize>)> = fixtures
            .iter()
            .enumerate()
            .flat_map(|(f, fixture)| fixture.kinds().into_values().map(move |files| (f, files)))
            .collect();
        let (f, files) = &pairs[(trial / 2) % pairs.len()];
        (*f, files[rng.random_range(0..files.len())])
    } else {
        let f = rng.random_range(0..fixtures.len());
        let total: usize = fixtures[f].files.iter().map(FixtureFile::weight).sum();
        let mut at = rng.random_range(0..total);
        let file = fixtures[f]
            .files
            .iter()
            .position(|file| {
                let inside = at < file.weight();
                at = at.saturating_sub(file.weight());
                inside
            })
            .expect("a file holds every byte");
        (f, file)
    };
    let chosen = &fixtures[fixture].files[file];
    // A tenth of a segment's flips (and all in a segment of zeros) go anywhere in it.
    let range = if chosen.is_segment() && !chosen.used.is_empty() && rng.random_ratio(9, 10) {
        chosen.used.len()
    } else {
        chosen.len
    };
    let first = rng.random_range(0..range);
    let count = if rng.random_ratio(3, 4) { 1 } else { rng.random_range(2..=4) };
    let flips = (0..count)
        .map(|i| {
            let offset = if i == 0 { first } else { (first + rng.random_range(0..16)).min(range - 1) };
            Flip { offset, bit: rng.random_range(0..8) }
        })
        .collect();
    Damage { fixture, file, flips }
}

/// Polls `child` until it exits, for at most `timeout`.
fn exit_within(child: &mut std::process::Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What starting the binary on a damaged copy did.
enum Started {
    Listening(KillOnDrop, SocketAddr),
    Exited(ExitStatus),
    Hung,
}

/// Starts the binary on `data`, its stderr going to `log`, and waits for its address line
/// or its exit. Blocking.
fn start(data: &Path, log: &Path) -> Started {
    let child = Command::new(env!("CARGO_BIN_EXE_eventline"))
        .args(["serve", "--port", "0", "--log-level", "warn", "--dedup-window", DEDUP_WINDOW, "--data"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("a file for stderr"))
        .spawn()
        .expect("spawn eventline");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    // A thread reads the line, so a server that neither announces nor exits is caught.
    let (line_sender, line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = line_sender.send(line);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let Ok(line) = line.recv_timeout(START_TIMEOUT) else { return Started::Hung };
    if let Some(addr) = line.trim().strip_prefix("listening on ") {
        return Started::Listening(child, addr.parse().expect("an address"));
    }
    match exit_within(&mut child.0, START_TIMEOUT) {
        Some(status) => Started::Exited(status),
        None => Started::Hung,
    }
}

/// Whether a refusal's message names the damaged file.
enum Names {
    DamagedOne,
    AnotherOne,
    Nothing,
}

/// How a trial ended.
enum Outcome {
    Correct,
    /// Every event served correctly but these, each named by a `500 Storage Failure`.
    Reported(BTreeSet<u64>),
    Refused(Names, String),
    /// Exited at start on a panic or a signal.
    Crashed(String),
    /// Wrong, missing or extra events, a lower head, a forgotten message id: what differed.
    Silent(Vec<String>),
    /// A `500 Storage Failure` without `Nats-Sequence`: the damaged range is not known.
    Unnamed(Vec<String>),
    /// An `APUB` refused after a start that served.
    ApubRefused(String),
    Hung(String),
    /// The process exited while it was being checked.
    Died(String),
}

impl Outcome {
    fn class(&self) -> &'static str {
        match self {
            Outcome::Correct => "served correctly",
            Outcome::Reported(_) => "reported the damaged range",
            Outcome::Refused(Names::DamagedOne, _) => "refused naming the damaged file",
            Outcome::Refused(Names::AnotherOne, _) => "refused naming another file",
            Outcome::Refused(Names::Nothing, _) => "refused without naming a file",
            Outcome::Crashed(_) => "crashed at start",
            Outcome::Silent(_) => "SILENT LOSS/CORRUPTION",
            Outcome::Unnamed(_) => "storage failure naming no event",
            Outcome::ApubRefused(_) => "APUB refused after start",
            Outcome::Hung(_) => "hung",
            Outcome::Died(_) => "died while serving",
        }
    }

    fn detail(&self) -> String {
        match self {
            Outcome::Correct => String::new(),
            Outcome::Reported(seqs) => format!("damaged: {}", ranges(seqs.iter().copied())),
            Outcome::Refused(_, message)
            | Outcome::Crashed(message)
            | Outcome::ApubRefused(message)
            | Outcome::Hung(message)
            | Outcome::Died(message) => message.clone(),
            Outcome::Silent(issues) | Outcome::Unnamed(issues) => issues.join("; "),
        }
    }
}

/// `1-4, 7, 9-10`, cut after [`RANGES_SHOWN`] ranges (with the count of them all) so a
/// trial that lost most of the log still prints a readable line.
fn ranges(seqs: impl IntoIterator<Item = u64>) -> String {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut count = 0;
    for seq in seqs {
        count += 1;
        match out.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => out.push((seq, seq)),
        }
    }
    let mut parts: Vec<String> =
        out.iter().take(RANGES_SHOWN).map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    if out.len() > RANGES_SHOWN {
        parts.push(format!("... ({count} events in {} ranges)", out.len()));
    }
    parts.join(", ")
}

/// What the checks of a started server found, kept as they go so a check cut short by a
/// hang or a crash still reports what it saw before.
#[derive(Default)]
struct Findings {
    silent: Vec<String>,
    reported: BTreeSet<u64>,
    unnamed: Vec<String>,
    apub_refused: Option<String>,
}

type Shared = Arc<Mutex<Findings>>;

fn note(findings: &Shared, what: impl FnOnce(&mut Findings)) {
    what(&mut findings.lock().expect("findings"));
}

/// Runs one trial: writes the damaged copy, starts the binary on it and classifies.
async fn run_trial(trial_dir: &Path, fixture: Arc<Fixture>, damage: &Damage, known: Arc<Vec<Known>>) -> Outcome {
    let data = trial_dir.join("data");
    let log = trial_dir.join("stderr");
    fixture.write(&data, Some(damage));
    let (spawned, spawned_log) = (data.clone(), log.clone());
    let started = tokio::task::spawn_blocking(move || start(&spawned, &spawned_log)).await.expect("join");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let (mut server, addr) = match started {
        Started::Listening(server, addr) => (server, addr),
        Started::Hung => return Outcome::Hung(format!("no address within {START_TIMEOUT:?}: {}", stderr().trim())),
        Started::Exited(status) => {
            return refusal(status, &stderr(), &data, &data.join(&fixture.files[damage.file].path));
        }
    };
    let findings = Shared::default();
    let mut checks = tokio::spawn(check(addr, fixture, known, findings.clone()));
    let checked = tokio::time::timeout(CHECK_TIMEOUT, &mut checks).await;
    checks.abort();
    let exited = server.0.try_wait().expect("wait");
    drop(server);
    let findings = std::mem::take(&mut *findings.lock().expect("findings"));
    if !findings.silent.is_empty() {
        return Outcome::Silent(findings.silent);
    }
    let cut_short = match checked {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(panic_message(failure)),
        Err(_) => Some(format!("checks not done within {CHECK_TIMEOUT:?}")),
    };
    if let Some(status) = exited {
        return Outcome::Died(format!("{status}: {}; {}", cut_short.unwrap_or_default(), stderr().trim()));
    }
    if let Some(why) = cut_short {
        return Outcome::Hung(why);
    }
    if !findings.unnamed.is_empty() {
        return Outcome::Unnamed(findings.unnamed);
    }
    if let Some(line) = findings.apub_refused {
        return Outcome::ApubRefused(line);
    }
    if findings.reported.is_empty() { Outcome::Correct } else { Outcome::Reported(findings.reported) }
}

fn panic_message(failure: tokio::task::JoinError) -> String {
    match failure.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(failure) => failure.to_string(),
    }
}

/// Classifies a server that exited before announcing its address.
fn refusal(status: ExitStatus, stderr: &str, data: &Path, damaged: &Path) -> Outcome {
    let message = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default().trim().to_owned();
    if let Some(signal) = status.signal() {
        return Outcome::Crashed(format!("killed by signal {signal}: {message}"));
    }
    if let Some(at) = stderr.find("panicked at") {
        let panic: Vec<&str> = stderr[at..].lines().take_while(|line| !line.starts_with("note:")).collect();
        return Outcome::Crashed(format!("{status}: {}", panic.join(" ")));
    }
    if status.success() {
        return Outcome::Crashed(format!("exited with success without serving: {}", stderr.trim()));
    }
    // fjall does not say which of its files failed: naming the directory holding the
    // damaged file is as precise as the message can be.
    let named = |path: &Path| {
        let path = path.display().to_string();
        [": ", " ", ")", ","].iter().any(|end| message.contains(&format!("{path}{end}")))
    };
    let names = if damaged.ancestors().take_while(|dir| *dir != data).any(named) {
        Names::DamagedOne
    } else if message.contains(&format!("{}/", data.display())) {
        Names::AnotherOne
    } else {
        Names::Nothing
    };
    Outcome::Refused(names, message)
}

/// Everything a started server must do: serve every event (scanning the log and through
/// the subject index) as the pristine copy did, or name the damaged ones; remember every
/// message id; and append the next event at the head + 1 with the subject's next revision.
async fn check(addr: SocketAddr, fixture: Arc<Fixture>, known: Arc<Vec<Known>>, findings: Shared) {
    let mut raw = Raw::with_headers(addr).await;
    let all: Vec<u64> = (1..=EVENTS).collect();
    read_filter(&mut raw, ">", &all, &fixture.served, &findings).await;
    for subject in SUBJECTS {
        let seqs: Vec<u64> = known.iter().filter(|event| event.subject == subject).map(|event| event.seq).collect();
        read_filter(&mut raw, subject, &seqs, &fixture.served, &findings).await;
    }

    let repeats: Vec<&Known> = known.iter().filter(|event| event.msg_id.is_some()).collect();
    raw.send_bytes(&repeats.iter().flat_map(|event| apub(event)).collect::<Vec<u8>>()).await;
    let mut forgotten = Vec::new();
    for event in &repeats {
        let line = raw.line().await;
        if line.starts_with("-NAK") {
            note(&findings, |f| f.apub_refused = Some(format!("a repeat of {:?}: {line}", event.msg_id)));
            return;
        }
        if !line.starts_with("+ACK") || parse_ack(&line) != (event.seq, event.revision, true) {
            let id = event.msg_id.as_deref().unwrap_or_default();
            let wanted = format!("+ACK seq={} rev={} duplicate", event.seq, event.revision);
            forgotten.push(format!("{id} got {line:?}, not {wanted:?}"));
        }
    }
    if !forgotten.is_empty() {
        let (count, all) = (forgotten.len(), repeats.len());
        forgotten.truncate(3);
        let examples = forgotten.join(", ");
        note(&findings, |f| {
            f.silent.push(format!("{count} of {all} repeated message ids not deduplicated: {examples}"))
        });
    }

    let subject = SUBJECTS[0];
    let revision = known.iter().filter(|event| event.subject == subject).count() as u64 + 1;
    let next =
        Known { seq: EVENTS + 1, subject, revision, headers: None, payload: b"after the flip".to_vec(), msg_id: None };
    raw.send_bytes(&apub(&next)).await;
    let line = raw.line().await;
    if line.starts_with("-NAK") {
        note(&findings, |f| f.apub_refused = Some(format!("the next event: {line}")));
        return;
    }
    if !line.starts_with("+ACK") || parse_ack(&line) != (next.seq, next.revision, false) {
        let wanted = format!("+ACK seq={} rev={}", next.seq, next.revision);
        note(&findings, |f| f.silent.push(format!("the next APUB got {line:?}, not {wanted:?}")));
        return;
    }
    let (events, _) = raw.fetch("2", &format!("{subject} from-seq={}", next.seq)).await;
    if events.len() != 1 || events[0].payload != next.payload || events[0].seq() != next.seq {
        note(&findings, |f| f.silent.push(format!("the next event read back as {events:?}")));
    }
}

/// Fetches `filter` from the start, and again after each damaged event named, and checks
/// that it serves exactly `expected` (sorted sequences) as the pristine copy did, but for
/// the named ones.
async fn read_filter(raw: &mut Raw, filter: &str, expected: &[u64], served: &[Hmsg], findings: &Shared) {
    let mut from = 1;
    let mut delivered: Vec<u64> = Vec::new();
    let mut reported = BTreeSet::new();
    // Below this, every event was either delivered or named.
    let mut complete_below = u64::MAX;
    loop {
        raw.send(&format!("FETCH 1 {filter} from-seq={from} limit={}\r\n", EVENTS + 10)).await;
        let this_fetch = delivered.len();
        let end = loop {
            match raw.incoming().await {
                Incoming::Msg(msg) if msg.status().is_none() => {
                    let seq = msg.header("Nats-Sequence").and_then(|seq| seq.parse::<u64>().ok()).unwrap_or(0);
                    if let Some(difference) = differs(&msg, seq, served) {
                        note(findings, |f| f.silent.push(format!("{filter}: event {seq} served {difference}")));
                    }
                    delivered.push(seq);
                }
                Incoming::Msg(msg) => break msg,
                Incoming::Line(line) => {
                    note(findings, |f| f.silent.push(format!("FETCH {filter}: {line:?} among the results")));
                    return;
                }
            }
        };
        match (end.status(), end.header("Nats-Sequence").and_then(|seq| seq.parse::<u64>().ok())) {
            (Some("204 End Of Results"), _) => {
                let last = end.header("Nats-Last-Sequence").unwrap_or_default();
                if from <= EVENTS && last != EVENTS.to_string() {
                    note(findings, |f| f.silent.push(format!("FETCH {filter}: ended at {last:?}, not {EVENTS}")));
                }
                break;
            }
            (Some("500 Storage Failure"), Some(seq)) if seq >= from => {
                if let Some(&past) = delivered[this_fetch..].iter().find(|&&delivered| delivered >= seq) {
                    note(findings, |f| {
                        f.silent.push(format!("FETCH {filter}: {past} delivered before damage at {seq}"))
                    });
                }
                reported.insert(seq);
                from = seq + 1;
            }
            (Some("500 Storage Failure"), None) => {
                let headers = end.headers.clone();
                note(findings, |f| f.unnamed.push(format!("FETCH {filter} from-seq={from}: {headers:?}")));
                complete_below = delivered.last().map_or(from, |&seq| seq + 1);
                break;
            }
            _ => {
                let headers = end.headers.clone();
                note(findings, |f| f.silent.push(format!("FETCH {filter} from-seq={from} ended with {headers:?}")));
                return;
            }
        }
    }
    if delivered.windows(2).any(|pair| pair[0] >= pair[1]) {
        note(findings, |f| f.silent.push(format!("FETCH {filter}: out of order: {delivered:?}")));
    }
    let delivered: BTreeSet<u64> = delivered.into_iter().collect();
    let wanted: BTreeSet<u64> = expected.iter().copied().collect();
    let missing: Vec<u64> =
        wanted.difference(&delivered).copied().filter(|seq| !reported.contains(seq) && *seq < complete_below).collect();
    let extra: Vec<u64> = delivered.difference(&wanted).copied().collect();
    if !missing.is_empty() {
        note(findings, |f| f.silent.push(format!("FETCH {filter}: missing without a report: {}", ranges(missing))));
    }
    if !extra.is_empty() {
        note(findings, |f| f.silent.push(format!("FETCH {filter}: not expected: {}", ranges(extra))));
    }
    note(findings, |f| f.reported.extend(reported));
}

/// How `msg` differs from what the pristine copy served as `seq`, if it does.
fn differs(msg: &Hmsg, seq: u64, served: &[Hmsg]) -> Option<String> {
    let Some(pristine) = seq.checked_sub(1).and_then(|i| served.get(usize::try_from(i).ok()?)) else {
        return Some(format!("with a sequence never acknowledged: {:?}", msg.headers));
    };
    let mut differences = Vec::new();
    if msg.subject != pristine.subject {
        differences.push(format!("on subject {:?}, not {:?}", msg.subject, pristine.subject));
    }
    if msg.headers != pristine.headers {
        differences.push(format!("with headers {:?}, not {:?}", msg.headers, pristine.headers));
    }
    if msg.payload != pristine.payload {
        let at = msg.payload.iter().zip(&pristine.payload).position(|(a, b)| a != b);
        differences.push(format!(
            "with a payload of {} bytes, not {} (first difference at {at:?})",
            msg.payload.len(),
            pristine.payload.len()
        ));
    }
    (!differences.is_empty()).then(|| differences.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_is_refused_naming_the_file_or_served_correctly_or_reported_never_silent() {
    let trials = std::env::var("BIT_FLIP_TRIALS").map_or(DEFAULT_TRIALS, |n| n.parse().expect("BIT_FLIP_TRIALS"));
    let seed = std::env::var("BIT_FLIP_SEED").map_or_else(|_| rand::random(), |n| n.parse().expect("BIT_FLIP_SEED"));
    eprintln!("bit flip: {trials} trials, seed {seed} (BIT_FLIP_SEED={seed} replays the choices)");
    let began = Instant::now();
    let known = Arc::new(oracle());
    let root = tempfile::tempdir().expect("temp dir");
    let library = root.path().join("library");
    let (written, written_known) = (library.clone(), known.clone());
    tokio::task::spawn_blocking(move || write_library_part(&written, &written_known)).await.expect("join");
    let mut fixtures = Vec::new();
    for stop in [Stop::Term, Stop::Kill] {
        let fixture = Fixture::build(stop, &library, &known).await;
        eprintln!("{stop:?} fixture: high-water mark {} of {EVENTS} events", fixture.mark);
        for file in &fixture.files {
            eprintln!("  {:<40} {:>9} bytes, {:>8} used", file.path.display(), file.len, file.used.len());
        }
        fixtures.push(Arc::new(fixture));
    }
    eprintln!("fixtures built in {:.1?}", began.elapsed());

    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcomes: Vec<(String, String, Outcome)> = Vec::new();
    for trial in 0..trials {
        let damage = choose(trial, &fixtures, &mut rng);
        let trial_dir = root.path().join(format!("trial-{trial}"));
        let outcome = run_trial(&trial_dir, fixtures[damage.fixture].clone(), &damage, known.clone()).await;
        let _ = std::fs::remove_dir_all(&trial_dir);
        let file = &fixtures[damage.fixture].files[damage.file];
        let described = damage.describe(&fixtures);
        if !matches!(outcome, Outcome::Correct) {
            eprintln!("trial {trial}: {described}: {}: {}", outcome.class(), outcome.detail());
        }
        outcomes.push((format!("{:?} {}", fixtures[damage.fixture].stop, file.kind), described, outcome));
    }
    let elapsed = began.elapsed();

    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for (kind, _, outcome) in &outcomes {
        *by_class.entry(outcome.class()).or_default() += 1;
        *by_kind.entry(kind).or_default().entry(outcome.class()).or_default() += 1;
    }
    eprintln!("bit flip summary: {trials} trials in {elapsed:.1?}, seed {seed}");
    for (class, count) in &by_class {
        eprintln!("  {count:>5}  {class}");
    }
    for (kind, classes) in &by_kind {
        let counts: Vec<String> = classes.iter().map(|(class, count)| format!("{class} {count}")).collect();
        eprintln!("  {kind}: {}", counts.join(", "));
    }
    let mut messages: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, outcome) in &outcomes {
        if let Outcome::Refused(..) | Outcome::Crashed(_) = outcome {
            let message = outcome.detail().replace(&root.path().display().to_string(), "<tmp>");
            *messages.entry(format!("{}: {}", outcome.class(), starred(&message))).or_default() += 1;
        }
    }
    for (message, count) in &messages {
        eprintln!("  {count:>5}  {message}");
    }

    let failing = |classes: &[&str]| -> Vec<String> {
        outcomes
            .iter()
            .filter(|(_, _, outcome)| classes.contains(&outcome.class()))
            .map(|(_, described, outcome)| format!("{described}: {}: {}", outcome.class(), outcome.detail()))
            .collect()
    };
    let silent = failing(&["SILENT LOSS/CORRUPTION"]);
    assert!(silent.is_empty(), "served wrong or missing events silently (seed {seed}):\n{}", silent.join("\n"));
    let stuck = failing(&["hung", "died while serving", "crashed at start"]);
    assert!(stuck.is_empty(), "hung, died or crashed (seed {seed}):\n{}", stuck.join("\n"));
    let unnamed = failing(&["storage failure naming no event", "APUB refused after start"]);
    assert!(unnamed.is_empty(), "a failure that does not say where (seed {seed}):\n{}", unnamed.join("\n"));
    let refusals = failing(&["refused without naming a file", "refused naming another file"]);
    assert!(
        refusals.is_empty(),
        "refused to start without naming the damaged file (seed {seed}):\n{}",
        refusals.join("\n")
    );
}
