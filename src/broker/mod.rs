//! The broker: sessions, subscriptions, routing, the timeline and its readers. No sockets,
//! no parsing.
//!
//! A [`Session`] is one client's view (its options and subscriptions) and is driven by the
//! connection's reader task with typed [`ClientOp`](crate::protocol::ClientOp)s. A message
//! on a volatile subject is routed at once: the `router` looks its subject up in the
//! subscription trie and pushes it onto each matching subscriber's [`Outbound`] queue,
//! never waiting for a subscriber. Any other message becomes an `append` for the
//! `timeline` writer, which stores it; `delivery` then routes it the same way and
//! answers the publisher through its `reply` handle. Readers of the log (catch-up
//! subscriptions, queries) are each a `cursor` over the store and the `recent` batches.

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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::protocol::{Extensions, Info};
use crate::store::{Store, StoreError};

use cursor::Log;
pub use error::BrokerError;
pub use outbound::{CloseReason, Outbound, Pending, Pushed, Wake};
use recent::Recent;
use router::Router;
pub use router::Subscription;
pub use session::Session;
use timeline::Timeline;

/// What a failure of the log does, wherever it is found (a write, an fsync, a checkpoint,
/// an essential thread's death): nothing more is acknowledged (`failed`) and the process
/// stops (`fatal`).
fn raise_failure(failed: &Arc<AtomicBool>, fatal: &CancellationToken) -> impl Fn() + Send + Sync + 'static {
    let (failed, fatal) = (Arc::clone(failed), fatal.clone());
    move || {
        failed.store(true, Ordering::Release);
        fatal.cancel();
    }
}

/// The extensions this server speaks, announced in `INFO` (see protocol.md, "Extensions").
pub const EXTENSIONS: [&str; 4] = ["apub", "catch-up", "fetch", "api"];

/// The shared state of the service.
pub struct Broker {
    config: Config,
    server_id: String,
    router: Arc<Router>,
    /// The read side of the log, for readers.
    log: Log,
    timeline: Timeline,
    next_client_id: AtomicU64,
}

impl Broker {
    /// Opens the event log in `config.store.data` and starts the timeline writer. `fatal`
    /// is cancelled if the log later fails: the process must then stop.
    ///
    /// # Errors
    /// The log cannot be opened, or lost acknowledged events (see [`Store::open`]).
    pub fn start(config: Config, fatal: CancellationToken) -> Result<Self, StoreError> {
        // Once the log fails, nothing more is acknowledged and the process stops.
        let failed = Arc::new(AtomicBool::new(false));
        let raise = raise_failure(&failed, &fatal);
        let store = Store::open(&config.store, move |_: &StoreError| raise())?;
        let router = Arc::new(Router::new());
        let recent = Arc::new(Recent::new(config.broker.recent_bytes));
        let (writer_store, writer_router) = (Arc::clone(&store), Arc::clone(&router));
        let timeline = Timeline::start(writer_store, writer_router, Arc::clone(&recent), &config, failed, fatal)?;
        let log = Log { store, recent, head: timeline.head() };
        let server_id: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(22)
            .map(|b| char::from(b).to_ascii_uppercase())
            .collect();
        Ok(Broker { config, server_id, router, log, timeline, next_client_id: AtomicU64::new(1) })
    }

    pub fn config(&self) -> &Config {
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
        subject.first() == Some(&b'$') || self.config.broker.volatile.iter().any(|f| f.matches(subject))
    }

    /// The `INFO` a new client receives.
    pub fn info(&self, client_id: u64, host: &str, port: u16, client_ip: Option<String>) -> Info {
        Info {
            server_id: self.server_id.clone(),
            server_name: self.config.broker.server_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            proto: 1,
            host: host.to_owned(),
            port,
            headers: true,
            max_payload: self.config.limits.max_payload,
            client_id,
            client_ip,
            eventline: Extensions { features: EXTENSIONS.iter().map(|&f| f.to_owned()).collect() },
        }
    }
}
