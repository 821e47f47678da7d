//! One client's session: its `CONNECT` options and its subscriptions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

use super::{Broker, BrokerError, Outbound, Subscription};
use crate::protocol::{ClientOp, Connect, Info, Pub, ServerOp};
use crate::subject::{Filter, is_valid_subject};

/// The status header nats-server sends to a requester when nobody listens on the subject.
const NO_RESPONDERS_HEADER: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// A connected client, driven op by op by its connection's reader task.
pub struct Session {
    broker: Arc<Broker>,
    client_id: u64,
    options: Connect,
    outbound: Arc<Outbound>,
    subscriptions: HashMap<Bytes, Arc<Subscription>>,
    /// Size of `subscriptions` at which entries ended by `UNSUB <sid> <max>` are swept out
    /// (they end on other tasks' fan-out paths, which can't touch this map).
    sweep_at: usize,
    /// A subscriber this session's publishing pushed past half its bound.
    lagging: Option<Arc<Outbound>>,
}

/// Smallest subscription map that is swept for ended subscriptions.
const MIN_SWEEP: usize = 64;

impl Session {
    /// Registers a client and queues its `INFO`.
    pub fn new(broker: Arc<Broker>, outbound: Arc<Outbound>, info: impl FnOnce(u64) -> Info) -> Self {
        let client_id = broker.next_client_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        outbound.push_op(&ServerOp::Info(Box::new(info(client_id))));
        Session {
            broker,
            client_id,
            options: Connect::default(),
            outbound,
            subscriptions: HashMap::new(),
            sweep_at: MIN_SWEEP,
            lagging: None,
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// A subscriber that this client's messages pushed past half its bound, if any since
    /// the last call: the connection pauses reading (at most [`super::MAX_STALL`]) to let
    /// it drain, as nats-server stalls fast producers, instead of cutting it off at once.
    pub fn take_lagging(&mut self) -> Option<Arc<Outbound>> {
        self.lagging.take()
    }

    /// Applies one op. In verbose mode a successful op is answered with `+OK`.
    ///
    /// # Errors
    /// A [`BrokerError`] whose text the caller sends as `-ERR`; it says whether the
    /// connection must close.
    pub fn handle(&mut self, op: ClientOp) -> Result<(), BrokerError> {
        let acknowledge = match op {
            ClientOp::Ping => {
                self.outbound.push_op(&ServerOp::Pong);
                false
            }
            ClientOp::Pong => false,
            ClientOp::Connect(connect) => {
                if connect.protocol.is_some_and(|p| p > 1) {
                    return Err(BrokerError::InvalidClientProtocol);
                }
                if connect.no_responders && !connect.headers {
                    return Err(BrokerError::NoRespondersNeedsHeaders);
                }
                self.options = *connect;
                true
            }
            ClientOp::Pub(message) => {
                self.publish(message)?;
                false
            }
            ClientOp::Sub { subject, queue, sid } => {
                self.subscribe(subject, queue, sid)?;
                true
            }
            ClientOp::Unsub { sid, max } => {
                self.unsubscribe(&sid, max);
                true
            }
        };
        if acknowledge && self.options.verbose {
            self.outbound.push_op(&ServerOp::Ok);
        }
        Ok(())
    }

    fn publish(&mut self, message: Pub) -> Result<(), BrokerError> {
        if message.headers.is_some() && !self.options.headers {
            return Err(BrokerError::HeadersNotSupported);
        }
        // A wildcard or empty-token subject must never reach a subscriber (it could not be
        // stored by subject either); only pedantic clients are told.
        let deliverable = is_valid_subject(&message.subject);
        if !deliverable && self.options.pedantic {
            return Err(BrokerError::InvalidPublishSubject);
        }
        // nats-server acknowledges before routing, so `+OK` precedes the client's own echo.
        if self.options.verbose {
            self.outbound.push_op(&ServerOp::Ok);
        }
        if !deliverable {
            return Ok(());
        }
        let routed = self.broker.route(&message, self.client_id, self.options.echo);
        if routed.lagging.is_some() {
            self.lagging = routed.lagging;
        }
        if routed.delivered == 0 && self.options.no_responders {
            if let Some(reply) = &message.reply {
                self.send_no_responders(reply);
            }
        }
        Ok(())
    }

    /// Answers a request nobody can take with a 503 status message on the requester's own
    /// (non-queue) subscription to its reply subject, so the client fails fast instead of
    /// timing out.
    fn send_no_responders(&self, reply: &Bytes) {
        let matches = self.broker.matches(reply);
        if let Some(sub) = matches.plain.iter().find(|s| s.client_id == self.client_id) {
            self.outbound.push_msg(reply, &sub.sid, None, Some(NO_RESPONDERS_HEADER), &Bytes::new());
        }
    }

    fn subscribe(&mut self, subject: Bytes, queue: Option<Bytes>, sid: Bytes) -> Result<(), BrokerError> {
        let filter = Filter::new(subject).map_err(|_| BrokerError::InvalidSubject)?;
        if self.subscriptions.get(&sid).is_some_and(|existing| !existing.is_exhausted()) {
            // nats-server keeps the first subscription of a sid and ignores the repeat.
            return Ok(());
        }
        let subscription = Arc::new(Subscription {
            id: self.broker.next_subscription_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            client_id: self.client_id,
            sid: sid.clone(),
            filter,
            queue,
            headers: self.options.headers,
            outbound: Arc::clone(&self.outbound),
            max: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(0),
        });
        self.broker.subscriptions.insert(&subscription.filter, subscription.queue.as_ref(), Arc::clone(&subscription));
        self.subscriptions.insert(sid, subscription);
        if self.subscriptions.len() >= self.sweep_at {
            self.subscriptions.retain(|_, s| !s.is_exhausted());
            self.sweep_at = (self.subscriptions.len() * 2).max(MIN_SWEEP);
        }
        Ok(())
    }

    /// `UNSUB <sid> [max]`: with `max`, the subscription ends after `max` deliveries in all
    /// (at once if it already had them); an unknown sid is ignored, as nats-server does.
    fn unsubscribe(&mut self, sid: &Bytes, max: Option<u64>) {
        let Some(subscription) = self.subscriptions.get(sid) else { return };
        if let Some(max) = max.filter(|&max| max > 0) {
            subscription.max.store(max, std::sync::atomic::Ordering::Relaxed);
            if !subscription.is_exhausted() {
                return;
            }
        }
        if let Some(subscription) = self.subscriptions.remove(sid) {
            self.broker.subscriptions.remove(&subscription.filter, subscription.queue.as_ref(), &subscription);
        }
    }
}

impl Drop for Session {
    /// A closed connection's subscriptions leave the routing table with it.
    fn drop(&mut self) {
        for subscription in self.subscriptions.values() {
            self.broker.subscriptions.remove(&subscription.filter, subscription.queue.as_ref(), subscription);
        }
    }
}
