//! The broker: sessions, subscriptions, routing and the timeline. No sockets, no parsing.
//!
//! A [`Session`] is one client's view (its options and subscriptions) and is driven by the
//! connection's reader task with typed [`ClientOp`](crate::protocol::ClientOp)s. A message
//! on a volatile subject is routed at once: the [`router`] looks its subject up in the
//! subscription trie and pushes it onto each matching subscriber's [`Outbound`] queue,
//! never waiting for a subscriber. Any other message goes to the [`timeline`] writer, which
//! stores it and routes it the same way once it is durable.

mod append;
mod catchup;
mod cursor;
mod delivery;
mod error;
mod finisher;
mod outbound;
mod recent;
mod reply;
mod router;
mod session;
mod timeline;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::StoreConfig;
use crate::protocol::{DEFAULT_MAX_PAYLOAD, Extensions, Info};
use crate::store::{Store, StoreError};
use crate::subject::Filter;

pub use crate::config::FsyncPolicy;
use cursor::Log;
pub use error::BrokerError;
pub use outbound::{CloseReason, Outbound, Pending, Pushed, SHARE_PAYLOADS_FROM, Wake};
use recent::Recent;
use router::Router;
pub use router::Subscription;
pub use session::Session;
use timeline::Timeline;

/// Default bound on a connection's unsent bytes before it is cut as a slow consumer
/// (nats-server's `max_pending`).
pub const DEFAULT_MAX_PENDING: usize = 64 * 1024 * 1024;
/// Default time between server PINGs on an idle connection (nats-server's `ping_interval`).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(120);
/// Unanswered PINGs after which a connection is closed as stale (nats-server's `max_pings_out`).
pub const MAX_PINGS_OUT: u32 = 2;
/// Default time a socket write may make no progress before the subscriber is cut as a slow
/// consumer (nats-server's `write_deadline`).
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Longest a publisher pauses for one lagging subscriber before going on.
pub const MAX_STALL: Duration = Duration::from_millis(100);

/// The extensions this server speaks, announced in `INFO` (see protocol.md, "Extensions").
pub const EXTENSIONS: [&str; 4] = ["apub", "catch-up", "fetch", "api"];

/// Default bytes of recent batches kept for live readers: a few batches at full load, so a
/// reader keeping up never reads fjall.
pub const DEFAULT_RECENT_BYTES: usize = 8 * 1024 * 1024;

/// Default window within which a repeated `Nats-Msg-Id` is a duplicate (JetStream's).
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Subjects delivered live and never stored, besides every `$`-prefixed subject.
pub const DEFAULT_VOLATILE: &str = "_INBOX.>";

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub server_name: String,
    /// Where the event log lives.
    pub data: PathBuf,
    pub fsync: FsyncPolicy,
    pub dedup_window: Duration,
    /// Filters of subjects that are delivered live but never stored.
    pub volatile: Vec<Filter>,
    pub max_payload: usize,
    pub max_pending: usize,
    pub ping_interval: Duration,
    pub write_deadline: Duration,
    /// Whether the write path may write to an idle connection's socket itself (see the
    /// server's direct writes) instead of waking its writer task.
    pub direct_writes: bool,
    /// Encoded bytes of recently committed batches kept for readers that follow the head.
    pub recent_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            server_name: "eventline".to_owned(),
            data: PathBuf::from("./data"),
            fsync: FsyncPolicy::Always,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            volatile: Filter::new(bytes::Bytes::from_static(DEFAULT_VOLATILE.as_bytes())).into_iter().collect(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_pending: DEFAULT_MAX_PENDING,
            ping_interval: DEFAULT_PING_INTERVAL,
            write_deadline: DEFAULT_WRITE_DEADLINE,
            direct_writes: true,
            recent_bytes: DEFAULT_RECENT_BYTES,
        }
    }
}

/// The shared state of the service.
pub struct Broker {
    config: BrokerConfig,
    server_id: String,
    router: Arc<Router>,
    /// The read side of the log, for readers.
    log: Log,
    timeline: Timeline,
    next_client_id: AtomicU64,
}

impl Broker {
    /// Opens the event log in `config.data` and starts the timeline writer. `fatal` is
    /// cancelled if the log later fails: the process must then stop.
    ///
    /// # Errors
    /// The log cannot be opened, or lost acknowledged events (see [`Store::open`]).
    pub fn start(config: BrokerConfig, fatal: CancellationToken) -> Result<Self, StoreError> {
        // Once the log fails, nothing more is acknowledged and the process stops.
        let failed = Arc::new(AtomicBool::new(false));
        let on_failure = {
            let (failed, fatal) = (Arc::clone(&failed), fatal.clone());
            move |_: &StoreError| {
                failed.store(true, Ordering::Relaxed);
                fatal.cancel();
            }
        };
        let store = Store::open(&StoreConfig::new(&config.data), on_failure)?;
        let router = Arc::new(Router::new());
        let timeline_config = timeline::TimelineConfig {
            fsync: config.fsync,
            dedup_window: config.dedup_window,
            max_batch_bytes: timeline::MAX_BATCH_BYTES.min(config.max_pending / 4),
        };
        let recent = Arc::new(Recent::new(config.recent_bytes));
        let timeline = Timeline::start(
            Arc::clone(&store),
            Arc::clone(&router),
            Arc::clone(&recent),
            &timeline_config,
            failed,
            fatal,
        )?;
        let log = Log { store, recent, head: timeline.head() };
        let server_id: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(22)
            .map(|b| char::from(b).to_ascii_uppercase())
            .collect();
        Ok(Broker { config, server_id, router, log, timeline, next_client_id: AtomicU64::new(1) })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Stops the timeline writer after what is queued and closes the log (fsynced).
    pub async fn stop(&self) {
        self.timeline.stop().await;
    }

    /// The last sequence stored and delivered live.
    pub fn head(&self) -> u64 {
        self.log.head()
    }

    /// Whether messages on `subject` skip the log: `$`-prefixed system subjects and the
    /// configured volatile filters (request/reply inboxes by default).
    pub fn is_volatile(&self, subject: &[u8]) -> bool {
        subject.first() == Some(&b'$') || self.config.volatile.iter().any(|f| f.matches(subject))
    }

    /// The `INFO` a new client receives.
    pub fn info(&self, client_id: u64, host: &str, port: u16, client_ip: Option<String>) -> Info {
        Info {
            server_id: self.server_id.clone(),
            server_name: self.config.server_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            proto: 1,
            host: host.to_owned(),
            port,
            headers: true,
            max_payload: self.config.max_payload,
            client_id,
            client_ip,
            eventline: Extensions { features: EXTENSIONS.iter().map(|&f| f.to_owned()).collect() },
        }
    }
}
