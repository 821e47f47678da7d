//! One client's session: its `CONNECT` options and its subscriptions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use tracing::debug;

use super::timeline::{AckTo, Append, Request};
use super::{Broker, BrokerError, Outbound, Subscription};
use crate::protocol::{ClientOp, Connect, Info, Pub, ServerOp, publish_options};
use crate::subject::{Filter, is_valid_subject, matches};

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
    /// Events this client handed to the timeline writer that are not yet delivered.
    in_flight: Arc<AtomicUsize>,
}

/// Requests on `$EL.PUB.<subject>` store a message on `<subject>` and answer with JSON.
const PUBLISH_API: &[u8] = b"$EL.PUB.";

/// Queues the 503 status nats-server sends a requester whose request reached nobody.
pub(super) fn push_no_responders(outbound: &Outbound, reply: &[u8], sid: &[u8]) {
    outbound.push_msg(reply, sid, None, Some(NO_RESPONDERS_HEADER), &Bytes::new());
}

/// A `$`-API error body, shaped like JetStream's.
fn error_json(code: u16, description: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "description": description}})
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
            in_flight: Arc::new(AtomicUsize::new(0)),
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
    pub async fn handle(&mut self, op: ClientOp) -> Result<(), BrokerError> {
        let acknowledge = match op {
            ClientOp::Ping => {
                self.ping().await;
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
                self.publish(message).await?;
                false
            }
            ClientOp::Apub(message, options) => {
                self.publish_acknowledged(message, &options).await;
                false
            }
            ClientOp::Sub { subject, queue, sid } => {
                self.subscribe(subject, queue, sid).await?;
                true
            }
            ClientOp::Unsub { sid, max } => {
                self.unsubscribe(&sid, max).await;
                true
            }
        };
        if acknowledge && self.options.verbose {
            self.outbound.push_op(&ServerOp::Ok);
        }
        Ok(())
    }

    /// `PING`: `PONG` once everything this client sent before is processed, including its
    /// events in the timeline writer, so a PING/PONG flush means what it means in NATS.
    async fn ping(&mut self) {
        let outbound = Arc::clone(&self.outbound);
        self.in_order(move || {
            outbound.push_op(&ServerOp::Pong);
        })
        .await;
    }

    async fn publish(&mut self, message: Pub) -> Result<(), BrokerError> {
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
        if let Some(stored) = message.subject.strip_prefix(PUBLISH_API) {
            let ack = message.reply.clone().map_or(AckTo::Nobody, AckTo::Reply);
            let message = Pub { subject: message.subject.slice_ref(stored), reply: None, ..message };
            self.store(message, Bytes::new(), ack).await;
            return Ok(());
        }
        if !self.broker.is_volatile(&message.subject) {
            self.store(message, Bytes::new(), AckTo::Nobody).await;
            return Ok(());
        }
        let routed = self.broker.router.route(&message, self.client_id, self.options.echo);
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

    /// `APUB`: stored, then answered with `+ACK` or `-NAK`.
    async fn publish_acknowledged(&mut self, message: Pub, options: &Bytes) {
        let nak = |reason: String| ServerOp::Nak(reason);
        if !is_valid_subject(&message.subject) {
            self.outbound.push_op(&nak("invalid subject: wildcards and empty tokens cannot be stored".to_owned()));
        } else if self.broker.is_volatile(&message.subject) {
            let subject = String::from_utf8_lossy(&message.subject);
            self.outbound.push_op(&nak(format!("subject {subject} is volatile: it is delivered but never stored")));
        } else {
            self.store(message, options.clone(), AckTo::Line(Arc::clone(&self.outbound))).await;
        }
    }

    /// Hands a message for a stored subject to the timeline writer, which delivers it once
    /// durable and answers `ack`. A condition that does not parse refuses the message.
    async fn store(&mut self, message: Pub, line_options: Bytes, ack: AckTo) {
        let options = match publish_options(&line_options, message.headers.as_deref()) {
            Ok(options) => options,
            Err(reason) => {
                match &ack {
                    AckTo::Line(outbound) => {
                        outbound.push_op(&ServerOp::Nak(reason));
                    }
                    AckTo::Reply(subject) => self.reply_json(subject, &error_json(400, &reason)),
                    AckTo::Nobody => debug!(client = self.client_id, %reason, "publish refused"),
                }
                return;
            }
        };
        // The 503 must not overtake the events before it, so the writer sends it after fan-out.
        let no_responders = match &message.reply {
            Some(reply) if self.options.no_responders => {
                self.reply_subscription(reply).map(|sid| (Arc::clone(&self.outbound), sid))
            }
            _ => None,
        };
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::AcqRel);
        let publisher = self.client_id;
        let append = Append { message, options, publisher, echo: self.options.echo, ack, no_responders, in_flight };
        if self.broker.timeline.send(Request::Append(Box::new(append))).await.is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.outbound.push_op(&ServerOp::Nak("storage failure: the event log is not accepting writes".to_owned()));
        }
    }

    /// Publishes a JSON reply (a `$`-API answer) on a volatile subject.
    fn reply_json(&self, subject: &Bytes, body: &serde_json::Value) {
        let reply =
            Pub { subject: subject.clone(), reply: None, headers: None, payload: Bytes::from(body.to_string()) };
        self.broker.router.route(&reply, self.client_id, true);
    }

    /// Answers a request nobody can take with a 503 status message on the requester's own
    /// subscription to its reply subject, so the client fails fast instead of timing out.
    fn send_no_responders(&self, reply: &Bytes) {
        if let Some(sid) = self.reply_subscription(reply) {
            push_no_responders(&self.outbound, reply, &sid);
        }
    }

    /// The sid of this client's own (non-queue) subscription matching `reply`, as
    /// nats-server picks it for the no-responders status. Looked up in the session's own
    /// table, which also holds subscriptions still waiting for their turn in the writer.
    fn reply_subscription(&self, reply: &[u8]) -> Option<Bytes> {
        self.subscriptions
            .values()
            .find(|s| s.queue.is_none() && !s.is_exhausted() && matches(s.filter.as_bytes(), reply))
            .map(|s| s.sid.clone())
    }

    async fn subscribe(&mut self, subject: Bytes, queue: Option<Bytes>, sid: Bytes) -> Result<(), BrokerError> {
        let filter = Filter::new(subject).map_err(|_| BrokerError::InvalidSubject)?;
        if self.subscriptions.get(&sid).is_some_and(|existing| !existing.is_exhausted()) {
            // nats-server keeps the first subscription of a sid and ignores the repeat.
            return Ok(());
        }
        let router = Arc::clone(&self.broker.router);
        let outbound = Arc::clone(&self.outbound);
        let subscription =
            router.subscription(self.client_id, sid.clone(), filter, queue, self.options.headers, outbound);
        self.subscriptions.insert(sid, Arc::clone(&subscription));
        if self.subscriptions.len() >= self.sweep_at {
            self.subscriptions.retain(|_, s| !s.is_exhausted());
            self.sweep_at = (self.subscriptions.len() * 2).max(MIN_SWEEP);
        }
        self.in_order(move || router.activate(&subscription)).await;
        Ok(())
    }

    /// `UNSUB <sid> [max]`; an unknown sid is ignored, as nats-server does.
    async fn unsubscribe(&mut self, sid: &Bytes, max: Option<u64>) {
        let Some(subscription) = self.subscriptions.get(sid).cloned() else { return };
        if max.is_none_or(|max| max == 0) {
            self.subscriptions.remove(sid);
        }
        let router = Arc::clone(&self.broker.router);
        self.in_order(move || router.unsubscribe_after(&subscription, max)).await;
    }

    /// Runs `action` (a change to what this client receives, or its `PONG`) after every
    /// event this client has handed to the timeline writer is delivered, so the client's
    /// ops keep their order as in NATS: `PUB` then `UNSUB` still delivers the message, and
    /// `PUB` then `SUB` does not. With nothing in flight it runs at once.
    async fn in_order(&self, action: impl FnOnce() + Send + 'static) {
        let action: Box<dyn FnOnce() + Send> = Box::new(action);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return action();
        }
        if let Err(Request::Call(action)) = self.broker.timeline.send(Request::Call(action)).await {
            action();
        }
    }
}

impl Drop for Session {
    /// A closed connection's subscriptions leave the routing table with it.
    fn drop(&mut self) {
        for subscription in self.subscriptions.values() {
            self.broker.router.unsubscribe(subscription);
        }
    }
}
