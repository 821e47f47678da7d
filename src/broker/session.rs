//! One client's session: its `CONNECT` options and its subscriptions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use tracing::debug;

use super::catchup::{self, CatchUp, Sink};
use super::delivery::refuse;
use super::router::Router;
use super::timeline::{AckTo, Append, MAX_REQUEST_APPENDS, MAX_REQUEST_BYTES, Request};
use super::{Broker, BrokerError, Outbound, Subscription};
use crate::protocol::{
    ApiRequest, CatchUp as CatchUpRequest, ClientOp, Connect, Info, Pub, PublishOptions, Query, Refusal, ServerOp,
    Start, Subscribe, api,
};
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
    /// Catch-up subscriptions by sid (a `$EL.SUB` one shares its deliver subscription's sid).
    catchups: HashMap<Bytes, Arc<CatchUp>>,
    /// Size of `subscriptions` at which entries ended by `UNSUB <sid> <max>` are swept out
    /// (they end on other tasks' fan-out paths, which can't touch this map).
    sweep_at: usize,
    /// A subscriber this session's publishing pushed lagging (see `LAGGING_AT_MOST`).
    lagging: Option<Arc<Outbound>>,
    /// Events this client handed to the timeline writer that are not yet delivered,
    /// counting those still in `appends`.
    in_flight: Arc<AtomicUsize>,
    /// Appends parsed but not yet handed to the writer (see [`Session::flush`]), and their
    /// payload bytes.
    appends: Vec<Append>,
    append_bytes: usize,
}

/// Routes a volatile message now; returns a subscriber it pushed lagging (see `LAGGING_AT_MOST`).
/// With `no_responders` (the requester's reply sid), a message nobody took is answered 503.
fn route_live(
    router: &Router,
    outbound: &Outbound,
    message: &Pub,
    client_id: u64,
    echo: bool,
    no_responders: Option<Bytes>,
) -> Option<Arc<Outbound>> {
    let routed = router.route(message, client_id, echo);
    if let (0, Some(sid), Some(reply)) = (routed.delivered, no_responders, &message.reply) {
        push_no_responders(outbound, reply, &sid);
    }
    routed.lagging
}

/// Publishes a JSON reply (a `$EL.` answer) on a volatile subject.
fn reply_json(router: &Router, client_id: u64, subject: &Bytes, body: Bytes) {
    let reply = Pub { subject: subject.clone(), reply: None, headers: None, payload: body };
    router.route(&reply, client_id, true);
}

/// Queues the 503 status nats-server sends a requester whose request reached nobody.
pub(super) fn push_no_responders(outbound: &Outbound, reply: &[u8], sid: &[u8]) {
    outbound.push_msg(reply, sid, None, Some(NO_RESPONDERS_HEADER), &Bytes::new());
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
            catchups: HashMap::new(),
            sweep_at: MIN_SWEEP,
            lagging: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            appends: Vec::new(),
            append_bytes: 0,
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// A subscriber that this client's messages pushed lagging (see `LAGGING_AT_MOST`), if any since
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
                self.publish_acknowledged(message, options).await;
                false
            }
            ClientOp::CatchUp { sid, catch_up } => {
                let started = match catch_up {
                    _ if self.subscriptions.contains_key(&sid) => Err(Refusal::SidInUse(lossy(&sid))),
                    Ok(catch_up) => {
                        let marker = catch_up.filter.clone().into_bytes();
                        self.catch_up(catch_up, Sink { outbound: Arc::clone(&self.outbound), sid }, marker).await
                    }
                    Err(refusal) => Err(refusal),
                };
                self.refuse(started.err())
            }
            ClientOp::Fetch { sid, query } => {
                self.settle().await;
                let sink = Sink { outbound: Arc::clone(&self.outbound), sid };
                // The end status goes out on the filters, as typed.
                let end =
                    |query: &Query| query.filters.iter().map(Filter::as_bytes).collect::<Vec<_>>().join(&b","[..]);
                let started = query.map(|query| self.fetch(Bytes::from(end(&query)), query, sink));
                self.refuse(started.err())
            }
            ClientOp::Request { request, reply } => {
                // nats-server acknowledges before routing, as for any `PUB`.
                if self.options.verbose {
                    self.outbound.push_op(&ServerOp::Ok);
                }
                self.api_request(request, reply).await;
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
        if !self.broker.is_volatile(&message.subject) {
            let options = message.publish_options();
            self.store(message, options, AckTo::Nobody).await;
            return Ok(());
        }
        let no_responders = match &message.reply {
            Some(reply) if self.options.no_responders => self.reply_subscription(reply),
            _ => None,
        };
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let lagging = route_live(
                &self.broker.router,
                &self.outbound,
                &message,
                self.client_id,
                self.options.echo,
                no_responders,
            );
            self.lagging = lagging.or(self.lagging.take());
        } else {
            // Behind this client's own stored publishes, so a reply cannot overtake the
            // event it answers for.
            let (router, outbound) = (Arc::clone(&self.broker.router), Arc::clone(&self.outbound));
            let (client_id, echo) = (self.client_id, self.options.echo);
            self.in_order(move || {
                route_live(&router, &outbound, &message, client_id, echo, no_responders);
            })
            .await;
        }
        Ok(())
    }

    /// `APUB`: stored, then answered with `+ACK` or `-NAK`.
    async fn publish_acknowledged(&mut self, message: Pub, options: Result<PublishOptions, Refusal>) {
        let options = if !is_valid_subject(&message.subject) {
            Err(Refusal::InvalidSubject)
        } else if self.broker.is_volatile(&message.subject) {
            Err(Refusal::Volatile(lossy(&message.subject)))
        } else {
            options
        };
        self.store(message, options, AckTo::Line(Arc::clone(&self.outbound))).await;
    }

    /// `$EL.PUB.<subject>`: stored, then answered with JSON on `reply`, if any.
    async fn publish_requested(&mut self, message: Pub, reply: Option<Bytes>) {
        let options = if self.broker.is_volatile(&message.subject) {
            Err(Refusal::Volatile(lossy(&message.subject)))
        } else {
            message.publish_options()
        };
        self.store(message, options, reply.map_or(AckTo::Nobody, AckTo::Reply)).await;
    }

    /// Hands a message for a stored subject to the timeline writer, which delivers it once
    /// durable and answers `ack`; a refused one is answered in order, and not stored.
    async fn store(&mut self, message: Pub, options: Result<PublishOptions, Refusal>, ack: AckTo) {
        let options = match options {
            Ok(options) => options,
            Err(reason) => {
                match ack {
                    AckTo::Line(_) => self.nak_in_order(reason).await,
                    AckTo::Reply(subject) => {
                        let router = Arc::clone(&self.broker.router);
                        let (client_id, body) = (self.client_id, api::refused(&reason));
                        self.in_order(move || reply_json(&router, client_id, &subject, body)).await;
                    }
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
        self.append_bytes += append.size();
        self.appends.push(append);
        if self.appends.len() >= MAX_REQUEST_APPENDS || self.append_bytes >= MAX_REQUEST_BYTES {
            self.flush().await;
        }
    }

    /// Hands the appends parsed so far to the timeline writer, in one request. The
    /// connection calls it once it has applied every op of a read, before it waits for
    /// more; anything that must come after them in the writer (see [`Session::in_order`])
    /// calls it first.
    pub async fn flush(&mut self) {
        if self.appends.is_empty() {
            return;
        }
        self.append_bytes = 0;
        let appends = std::mem::take(&mut self.appends);
        if let Err(request) = self.broker.timeline.send(Request::Appends(appends)).await {
            refuse(&self.broker.router, request.into_appends());
        }
    }

    /// Refuses an `APUB` after the answers to this client's earlier ones: a connection's
    /// answers come in the order of its publishes.
    async fn nak_in_order(&mut self, reason: Refusal) {
        let outbound = Arc::clone(&self.outbound);
        self.in_order(move || {
            outbound.push_op(&ServerOp::Nak(reason));
        })
        .await;
    }

    /// Publishes a JSON reply (a `$EL.` answer) on a volatile subject.
    fn reply_json(&self, subject: &Bytes, body: Bytes) {
        reply_json(&self.broker.router, self.client_id, subject, body);
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

    /// `UNSUB <sid> [max]`; an unknown sid is ignored, as nats-server does. It also ends a
    /// catch-up subscription on that sid.
    async fn unsubscribe(&mut self, sid: &Bytes, max: Option<u64>) {
        if let Some(catchup) = self.catchups.remove(sid) {
            self.broker.router.remove_catchup(&catchup);
        }
        let Some(subscription) = self.subscriptions.get(sid).cloned() else { return };
        if max.is_none_or(|max| max == 0) {
            self.subscriptions.remove(sid);
        }
        let router = Arc::clone(&self.broker.router);
        self.in_order(move || router.unsubscribe_after(&subscription, max)).await;
    }

    /// Waits until every event this client handed to the timeline writer is stored and
    /// delivered, so a replay or query it sends next sees its own earlier publishes.
    async fn settle(&mut self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return;
        }
        let (done, settled) = tokio::sync::oneshot::channel();
        self.in_order(move || {
            let _ = done.send(());
        })
        .await;
        let _ = settled.await;
    }

    /// Runs `action` (a change to what this client receives, or its `PONG`) after every
    /// event this client has handed to the timeline writer is delivered, so the client's
    /// ops keep their order as in NATS: `PUB` then `UNSUB` still delivers the message, and
    /// `PUB` then `SUB` does not. With nothing in flight it runs at once.
    async fn in_order(&mut self, action: impl FnOnce() + Send + 'static) {
        self.flush().await;
        let action: Box<dyn FnOnce() + Send> = Box::new(action);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return action();
        }
        if let Err(Request::Call(action)) = self.broker.timeline.send(Request::Call(action)).await {
            action();
        }
    }

    /// Answers an extension request that failed with `-NAK '<reason>'` (the connection
    /// stays open); returns whether to `+OK` in verbose mode.
    fn refuse(&self, reason: Option<Refusal>) -> bool {
        match reason {
            Some(reason) => {
                self.outbound.push_op(&ServerOp::Nak(reason));
                false
            }
            None => true,
        }
    }

    /// Starts a catch-up subscription delivering to `sink`. It is registered for fan-out
    /// before the head is read, so nothing appended in between can be missed.
    async fn catch_up(&mut self, request: CatchUpRequest, sink: Sink, marker: Bytes) -> Result<(), Refusal> {
        if self.catchups.contains_key(&sink.sid) {
            return Err(Refusal::SidInUse(lossy(&sink.sid)));
        }
        self.settle().await;
        let sid = sink.sid.clone();
        let CatchUpRequest { filter, start } = request;
        let catchup = Arc::new(CatchUp::new(self.broker.router.next_id(), filter, sink, marker, 0));
        self.broker.router.add_catchup(&catchup);
        let head = self.broker.head();
        match catchup::initial_delivered(&self.broker.store, start, head).await {
            Ok(delivered) => catchup.start_after(delivered),
            Err(reason) => {
                self.broker.router.remove_catchup(&catchup);
                return Err(reason);
            }
        }
        self.catchups.insert(sid, Arc::clone(&catchup));
        let timeline = self.broker.timeline.clone();
        let store = Arc::clone(&self.broker.store);
        tokio::spawn(catchup.run(store, move || timeline.head(), start == Start::LastPerSubject));
        Ok(())
    }

    /// Starts a one-shot query delivering to `sink`, ended by a status on `end`.
    fn fetch(&self, end: Bytes, query: Query, sink: Sink) {
        let store = Arc::clone(&self.broker.store);
        tokio::spawn(catchup::fetch(store, self.broker.head(), query, sink, end));
    }

    /// A `$EL.` request from a NATS client library. Answers go to `reply`: JSON for
    /// `$EL.PUB`, `$EL.SUB` and refusals; events and an end status for `$EL.FETCH` and
    /// `$EL.LAST.<subject>` (on the requester's subscription to `reply`).
    async fn api_request(&mut self, request: ApiRequest, reply: Option<Bytes>) {
        let (request, reply) = match (request, reply) {
            (ApiRequest::Publish(message), reply) => return self.publish_requested(message, reply).await,
            (request, Some(reply)) => (request, reply),
            // The codec makes the other requests only from messages with a reply.
            (_, None) => return,
        };
        // The answer must find the requester's reply subscription, which may still be
        // waiting behind its own stored publishes; and a query must see those publishes.
        self.settle().await;
        let result = match request {
            ApiRequest::Publish(_) => Ok(None),
            ApiRequest::Subscribe(request) => match request {
                Ok(request) => self.api_subscribe(request).await.map(Some),
                Err(refusal) => Err(refusal),
            },
            ApiRequest::Fetch(query) => query
                .and_then(|query| self.sink_for(&reply).map(|sink| self.fetch(reply.clone(), query, sink)))
                .map(|()| None),
            ApiRequest::Last(last_of) => self.sink_for(&reply).map(|sink| {
                let (store, head) = (Arc::clone(&self.broker.store), self.broker.head());
                tokio::spawn(catchup::last(store, head, last_of, sink, reply.clone()));
                None
            }),
        };
        match result {
            Ok(Some(answer)) => self.reply_json(&reply, answer),
            Ok(None) => {}
            Err(refusal) => self.reply_json(&reply, api::refused(&refusal)),
        }
    }

    /// `$EL.SUB`: a catch-up subscription delivering on the requester's subscription to
    /// the request's `deliver` subject.
    async fn api_subscribe(&mut self, request: Subscribe) -> Result<Bytes, Refusal> {
        let sink = self.sink_for(&request.deliver)?;
        let filter = request.catch_up.filter.clone();
        self.catch_up(request.catch_up, sink, request.deliver).await?;
        Ok(api::subscribed(&filter, self.broker.head()))
    }

    /// Delivery to this client's own subscription on `subject`.
    fn sink_for(&self, subject: &[u8]) -> Result<Sink, Refusal> {
        let sid = self.reply_subscription(subject).ok_or_else(|| Refusal::NoSubscription(lossy(subject)))?;
        Ok(Sink { outbound: Arc::clone(&self.outbound), sid })
    }
}

/// Text for a refusal that quotes what the client sent.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Drop for Session {
    /// A closed connection's subscriptions leave the routing table with it.
    fn drop(&mut self) {
        for catchup in self.catchups.values() {
            self.broker.router.remove_catchup(catchup);
        }
        for subscription in self.subscriptions.values() {
            self.broker.router.unsubscribe(subscription);
        }
    }
}
