//! The broker: subscriptions and routing. No sockets, no parsing.
//!
//! A [`Session`] is one client's view (its options and subscriptions) and is driven by the
//! connection's reader task with typed [`ClientOp`](crate::protocol::ClientOp)s. Publishing
//! looks the subject up in the shared [`Sublist`] and pushes a [`Delivery`] onto each
//! matching subscriber's [`Outbound`] queue; nothing on that path waits for a subscriber.

mod error;
mod outbound;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;

use crate::protocol::{DEFAULT_MAX_PAYLOAD, Extensions, Info, Pub};
use crate::subject::{Filter, Matches, Sublist};

pub use error::BrokerError;
pub use outbound::{CloseReason, Outbound, Pending, Pushed, SHARE_PAYLOADS_FROM};
pub use session::Session;

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

/// Settings the broker applies to every connection.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub server_name: String,
    pub max_payload: usize,
    pub max_pending: usize,
    pub ping_interval: Duration,
    pub write_deadline: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            server_name: "eventline".to_owned(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_pending: DEFAULT_MAX_PENDING,
            ping_interval: DEFAULT_PING_INTERVAL,
            write_deadline: DEFAULT_WRITE_DEADLINE,
        }
    }
}

/// The shared state of the service.
pub struct Broker {
    config: BrokerConfig,
    server_id: String,
    subscriptions: Sublist<Arc<Subscription>>,
    next_client_id: AtomicU64,
    next_subscription_id: AtomicU64,
}

/// One `SUB` of one client. Compared by identity: two `SUB`s with the same subject are
/// two subscriptions.
pub struct Subscription {
    id: u64,
    client_id: u64,
    sid: Bytes,
    filter: Filter,
    queue: Option<Bytes>,
    /// Whether the subscriber's client negotiated headers; if not, they are stripped.
    headers: bool,
    outbound: Arc<Outbound>,
    /// Deliveries after which the subscription ends (`UNSUB <sid> <max>`); `u64::MAX` = none.
    max: AtomicU64,
    delivered: AtomicU64,
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Subscription {
    /// Counts one delivery against the `UNSUB` limit; false once the limit is used up.
    fn take_delivery(&self) -> bool {
        self.delivered.fetch_add(1, Ordering::Relaxed) < self.max.load(Ordering::Relaxed)
    }

    fn is_exhausted(&self) -> bool {
        self.delivered.load(Ordering::Relaxed) >= self.max.load(Ordering::Relaxed)
    }
}

/// What routing one message did: how many subscriptions took it, and a subscriber that is
/// lagging (past half its bound), which the publisher should give a moment to drain.
#[derive(Default)]
pub(crate) struct Routed {
    delivered: usize,
    lagging: Option<Arc<Outbound>>,
}

impl Routed {
    fn note(&mut self, sub: &Subscription, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.delivered += 1,
            Pushed::Lagging => {
                self.delivered += 1;
                self.lagging = Some(Arc::clone(&sub.outbound));
            }
            Pushed::Dropped => {}
        }
    }
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Self {
        let server_id: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(22)
            .map(|b| char::from(b).to_ascii_uppercase())
            .collect();
        Broker {
            config,
            server_id,
            subscriptions: Sublist::new(),
            next_client_id: AtomicU64::new(1),
            next_subscription_id: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
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
            eventline: Extensions::default(),
        }
    }

    /// Delivers a message to every matching subscription, echo rules applied.
    fn route(&self, message: &Pub, publisher: u64, echo: bool) -> Routed {
        let matches = self.matches(&message.subject);
        let deliverable = |sub: &Subscription| echo || sub.client_id != publisher;
        let mut routed = Routed::default();
        for sub in matches.plain.iter().filter(|s| deliverable(s)) {
            routed.note(sub, self.deliver(sub, message));
        }
        for group in &matches.groups {
            if let Some((sub, pushed)) = self.deliver_to_one(&group.members, message, &deliverable) {
                routed.note(sub, pushed);
            }
        }
        routed
    }

    /// Picks a random member of a queue group (as nats-server does), moving on to the next
    /// one if that member can't take it.
    fn deliver_to_one<'a>(
        &self,
        members: &'a [Arc<Subscription>],
        message: &Pub,
        deliverable: &dyn Fn(&Subscription) -> bool,
    ) -> Option<(&'a Arc<Subscription>, Pushed)> {
        let start = rand::rng().random_range(0..members.len().max(1));
        (0..members.len())
            .map(|i| &members[(start + i) % members.len()])
            .filter(|sub| deliverable(sub))
            .map(|sub| (sub, self.deliver(sub, message)))
            .find(|(_, pushed)| *pushed != Pushed::Dropped)
    }

    fn deliver(&self, sub: &Arc<Subscription>, message: &Pub) -> Pushed {
        if !sub.take_delivery() {
            return Pushed::Dropped;
        }
        let headers = if sub.headers { message.headers.as_deref() } else { None };
        let pushed =
            sub.outbound.push_msg(&message.subject, &sub.sid, message.reply.as_deref(), headers, &message.payload);
        if sub.is_exhausted() {
            self.subscriptions.remove(&sub.filter, sub.queue.as_ref(), sub);
        }
        pushed
    }

    /// The subscriptions matching `subject`.
    fn matches(&self, subject: &[u8]) -> Arc<Matches<Arc<Subscription>>> {
        self.subscriptions.matches(subject)
    }
}
