//! Every setting of the server in one place, grouped by what it governs: the listener,
//! the limits each connection is held to, the event log, and the broker. Each default is a
//! named constant here, and so is every tuning constant of the layers above `subject` (the
//! tuning section at the end), each documented with why it has its value. Two kinds stay
//! where they are: the subscription trie's cache bounds (the trie is below this module)
//! and limits that are part of a format (a run's event count, bound by its `u16`
//! offsets). A configuration file will load into [`Config`]; today the `serve` flags do.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::subject::Filter;

/// Everything `eventline serve` can be told.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub listener: ListenerConfig,
    pub limits: Limits,
    pub store: StoreConfig,
    pub broker: BrokerConfig,
}

/// Where clients connect, and how the server writes to them.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Loopback unless told otherwise: nothing is exposed by default.
    pub host: String,
    pub port: u16,
    /// Whether the write path may write to an idle connection's socket itself instead of
    /// waking its writer task (see `server::direct`).
    pub direct_writes: bool,
}

/// nats-server's port.
pub const DEFAULT_PORT: u16 = 4222;
pub const DEFAULT_HOST: &str = "127.0.0.1";

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig { host: DEFAULT_HOST.to_owned(), port: DEFAULT_PORT, direct_writes: true }
    }
}

/// What each connection is held to (nats-server's names and defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message payload, headers included.
    pub max_payload: usize,
    /// Unsent bytes a connection may have queued before it is cut as a slow consumer.
    pub max_pending: usize,
    /// Time between server PINGs on an idle connection.
    pub ping_interval: Duration,
    /// Time a socket write may make no progress before the subscriber is cut as a slow
    /// consumer.
    pub write_deadline: Duration,
}

/// Default largest payload (headers + body) of one message: 1 MiB, as nats-server.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Default bound on a connection's unsent bytes (nats-server's `max_pending`).
pub const DEFAULT_MAX_PENDING: usize = 64 * 1024 * 1024;
/// Default time between server PINGs on an idle connection (nats-server's `ping_interval`).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(120);
/// Unanswered PINGs after which a connection is closed as stale (nats-server's `max_pings_out`).
pub const MAX_PINGS_OUT: u32 = 2;
/// Default time a write may make no progress (nats-server's `write_deadline`).
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(10);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_pending: DEFAULT_MAX_PENDING,
            ping_interval: DEFAULT_PING_INTERVAL,
            write_deadline: DEFAULT_WRITE_DEADLINE,
        }
    }
}

/// When an appended event counts as durable, and so when it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync each batch before acknowledging it: acknowledged events survive power loss.
    Always,
    /// Acknowledge once written to the OS and fdatasync every interval: acknowledged events
    /// survive a crash of the process, but a power loss may take the last interval back.
    Interval(Duration),
    /// Acknowledge once written to the OS and leave syncing to it: survives a crash of the
    /// process, not of the machine.
    Never,
}

/// The event log's settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where the event log lives.
    pub data: PathBuf,
    pub fsync: FsyncPolicy,
    /// Time between advances of the high-water mark.
    pub mark_every: Duration,
    /// Time between checkpoints (fjall fsynced, write-ahead log segments freed).
    pub checkpoint_every: Duration,
    /// fjall's block cache.
    pub cache_bytes: u64,
    /// fjall's memtable size, per keyspace.
    pub memtable_bytes: u64,
    /// Free space kept on the data directory's disk: below it, new events are refused.
    pub min_free_bytes: u64,
}

/// The data directory of `eventline serve` when none is given.
pub const DEFAULT_DATA: &str = "./data";
/// Time between advances of the high-water mark: a damaged log record can hide at most
/// this much of what was acknowledged before a crash, for one small fsync per tick.
pub const DEFAULT_MARK_EVERY: Duration = Duration::from_millis(10);
/// Time between checkpoints: 1 s measured slower, 25 ms no faster. Short keeps each fjall
/// fsync small (a burst of megabytes would stall the write-ahead log's next fsync behind
/// it) and bounds what start-up replays after a crash.
pub const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Block cache. The log is read mostly once, in order (replays), so a large cache buys little.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Memtable size per keyspace: half fjall's 64 MiB default. It bounds the journal replayed
/// at start-up (0.84 s after 10 M events; 0.53 s at 16 MiB), but 16 MiB tables flushed so
/// often that the p99 of stored delivery at 10 k msg/s rose from about 1.2 ms to 2-6 ms.
pub const DEFAULT_MEMTABLE_BYTES: u64 = 32 * 1024 * 1024;

/// Free space the log keeps on its disk (see `store::SpaceGuard`): room for fjall to flush
/// a memtable of each keyspace (3 x 32 MiB), compact, and the write-ahead log to add a
/// segment (16 MiB), with room to spare.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

impl StoreConfig {
    /// The defaults, for the log in `data`.
    pub fn new(data: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data: data.into(),
            fsync: FsyncPolicy::Always,
            mark_every: DEFAULT_MARK_EVERY,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            cache_bytes: DEFAULT_CACHE_BYTES,
            memtable_bytes: DEFAULT_MEMTABLE_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::new(DEFAULT_DATA)
    }
}

/// The broker's settings: what is stored, and how the write path and readers work.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub server_name: String,
    /// Filters of subjects that are delivered live but never stored (besides every
    /// `$`-prefixed subject).
    pub volatile: Vec<Filter>,
    /// Window within which a repeated `Nats-Msg-Id` is a duplicate.
    pub dedup_window: Duration,
    /// Encoded bytes of recently committed batches kept for readers that follow the head.
    pub recent_bytes: usize,
    /// How long the timeline writer looks for its next request before it parks its thread
    /// (zero: it parks at once).
    pub writer_spin: Duration,
}

/// Subjects delivered live and never stored by default, besides every `$`-prefixed subject:
/// request/reply inboxes.
pub const DEFAULT_VOLATILE: &str = "_INBOX.>";
/// Default window within which a repeated `Nats-Msg-Id` is a duplicate (JetStream's).
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Default bytes of recent batches kept for live readers: a few batches at full load, so a
/// reader keeping up never reads fjall.
pub const DEFAULT_RECENT_BYTES: usize = 8 * 1024 * 1024;
/// Default look for the writer's next request before parking. A publisher waiting for its
/// acknowledgement sends its next publish about one round trip after the last answer, and
/// waking a parked thread costs about as much again on a virtual machine whose idle CPUs
/// halt (50-100 µs on a 2-core VM); an idle server parks after one such look. Measured by
/// `benches/wakeups.sh`: without it, window-1 acks fall to 0.55x under `never` and 0.87x
/// under `always`.
pub const DEFAULT_WRITER_SPIN: Duration = Duration::from_micros(100);

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            server_name: "eventline".to_owned(),
            volatile: vec![
                Filter::new(Bytes::from_static(DEFAULT_VOLATILE.as_bytes())).unwrap_or_else(|_| Filter::everything()),
            ],
            dedup_window: DEFAULT_DEDUP_WINDOW,
            recent_bytes: DEFAULT_RECENT_BYTES,
            writer_spin: DEFAULT_WRITER_SPIN,
        }
    }
}

// # Tuning
//
// Constants the code is tuned with rather than settings: each has one name, here.

/// Read buffer of a connection; big enough that a publisher's burst is parsed in few reads.
pub const READ_CHUNK: usize = 64 * 1024;
/// Largest single socket write: pending bytes are released from the slow-consumer bound
/// piece by piece, so a subscriber that keeps reading is never judged on bytes it received.
pub const WRITE_PIECE: usize = 64 * 1024;
/// How long a closing connection may take to flush its last ops (an `-ERR`, say).
pub const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for connections to flush what they have queued.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Payload size from which a delivery shares the publisher's bytes instead of copying:
/// copying less costs less than the shared reference count, which the publisher's core and
/// each subscriber's writer core would otherwise bounce between them per message.
pub const SHARE_PAYLOADS_FROM: usize = 16 * 1024;
/// A subscriber holding more than this (or half its bound, if less) counts as lagging:
/// publishers to it pause and readers wait until it drains. nats-server pauses at half the
/// bound; pausing earlier keeps memory near what the sockets hold without costing
/// throughput, since a writer drains this much in a few milliseconds.
pub const LAGGING_AT_MOST: usize = 4 * 1024 * 1024;
/// Longest a publisher's connection pauses, per read, for a subscriber it made lag.
pub const MAX_STALL: Duration = Duration::from_millis(100);
/// A connection's pending buffer keeps an allocation up to this size between batches; a
/// bigger one, left by a burst, is dropped.
pub const PENDING_KEEP_CAPACITY: usize = 1024 * 1024;

/// Appends one connection hands the timeline writer in one request.
pub const REQUEST_APPENDS: usize = 256;
/// Payload bytes after which a connection hands its appends over without waiting for more.
pub const REQUEST_BYTES: usize = 64 * 1024;
/// Requests that may wait for the writer before publishers are held back.
pub const WRITER_QUEUE_REQUESTS: usize = 8192;
/// Appends that may wait for the writer, whatever the requests carrying them (a request
/// holds up to [`REQUEST_APPENDS`]).
pub const WRITER_QUEUE_APPENDS: usize = 8192;
/// Appends after which a writer batch takes no more requests; the rest wait for the next.
pub const WRITER_BATCH_APPENDS: usize = 4096;
/// Payload bytes one writer batch takes at most (and at most a quarter of `max_pending`): a
/// batch is fanned out at once, so one batch alone never makes a subscriber a slow consumer.
pub const WRITER_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Subjects whose last sequence and revision the writer keeps in memory...
pub const WRITER_SUBJECT_CACHE: usize = 100_000;
/// ...and the bytes of those subjects at most, so that long subjects cannot buy memory.
pub const WRITER_SUBJECT_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Handoffs that may wait for the finisher (each batch is two: written, stored) before the
/// writer waits too, so a slow disk holds publishers back instead of piling batches up.
pub const FINISHER_QUEUE_HANDOFFS: usize = 8;

/// Results a query returns at most when it names no limit (protocol.md says so).
pub const DEFAULT_QUERY_LIMIT: u64 = 10_000;
/// Events a reader (catch-up, query) reads per step.
pub const READER_CHUNK: usize = 512;
/// Events one store scan examines before it returns, matching or not, so that a selective
/// filter over a long log still answers in bounded time, and a reader whose client is
/// gone stops within one such chunk (a few milliseconds).
pub const SCAN_BUDGET: usize = 16_384;
/// Store reads (reader chunks) running at once across the server; more wait their turn.
pub const STORE_READERS: usize = 4;
/// Queries (`FETCH`, `$EL.FETCH`, `$EL.LAST`) one connection may have running at once.
pub const MAX_QUERIES_PER_CONNECTION: usize = 16;
/// Catch-up subscriptions one connection may hold at once.
pub const MAX_CATCHUPS_PER_CONNECTION: usize = 1024;
/// Token prefixes of a subject the subject index lists (`a`, `a.b`, ... up to this many
/// tokens), so an event's index cost grows with its subject's length, never its square. A
/// filter with a longer literal prefix reads through the deepest indexed one and matches.
pub const INDEX_PREFIX_TOKENS: usize = 8;
/// Write-ahead log segment size: a batch is at most a few MiB, so a record always fits in a
/// fresh segment. Unit tests use small segments, so a few hundred events fill several.
pub const WAL_SEGMENT_BYTES: u64 = if cfg!(test) { 64 * 1024 } else { 16 * 1024 * 1024 };
/// A run of events stored as one fjall value closes once its encoding passes this many
/// bytes: big enough that per-run costs vanish, small enough that a point read
/// decompresses little.
pub const RUN_BYTES: usize = 16 * 1024;

/// Smallest subscription map a session sweeps for subscriptions ended by `UNSUB <sid> <max>`.
pub const SUBSCRIPTION_SWEEP_MIN: usize = 64;
