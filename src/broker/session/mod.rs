//! One client's session: its `CONNECT` options and its subscriptions, driven op by op by
//! its connection's reader task. The NATS ops are here; publishing is in [`publish`] and
//! the extensions that read the log (catch-up, queries, the `$EL.` API) in [`api`].

mod api;
mod publish;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::DropGuard;

use super::append::{Append, Request};
use super::outbound::{Outbound, Wakes};
use super::reply::Replies;
use super::{Broker, BrokerError, Subscription};
use crate::config::SUBSCRIPTION_SWEEP_MIN;
use crate::protocol::{ClientOp, Connect, Info, ServerOp};
use crate::subject::{Filter, matches};

/// A connected client, driven op by op by its connection's reader task.
pub struct Session {
    broker: Arc<Broker>,
    client_id: u64,
    options: Connect,
    outbound: Arc<Outbound>,
    /// Where this client's answers go, shared with its appends in the write path.
    replies: Arc<Replies>,
    subscriptions: HashMap<Bytes, Arc<Subscription>>,
    /// Catch-up subscriptions by sid (a `$EL.SUB` one shares its deliver subscription's
    /// sid); dropping the guard ends the subscription.
    catchups: HashMap<Bytes, DropGuard>,
    /// Size of `subscriptions` at which entries ended by `UNSUB <sid> <max>` are swept out
    /// (they end on other tasks' fan-out paths, which can't touch this map).
    sweep_at: usize,
    /// Appends parsed but not yet handed to the writer (see [`Session::flush`]), and their
    /// payload bytes.
    appends: Vec<Append>,
    append_bytes: usize,
    /// The connections this read's messages were queued for, woken once it is applied.
    wakes: Wakes,
}

impl Session {
    /// Registers a client and queues its `INFO`.
    pub fn new(broker: Arc<Broker>, outbound: Arc<Outbound>, info: impl FnOnce(u64) -> Info) -> Self {
        let client_id = broker.next_client_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        outbound.send_op(&ServerOp::Info(Box::new(info(client_id))));
        let replies = Arc::new(Replies::new(Arc::clone(&broker.router), Arc::clone(&outbound), client_id));
        Session {
            broker,
            client_id,
            options: Connect::default(),
            outbound,
            replies,
            subscriptions: HashMap::new(),
            catchups: HashMap::new(),
            sweep_at: SUBSCRIPTION_SWEEP_MIN,
            appends: Vec::new(),
            append_bytes: 0,
            wakes: Wakes::default(),
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// A subscriber that this client's messages pushed lagging (see `LAGGING_AT_MOST`), if
    /// any since the last call: the connection pauses reading (at most
    /// [`MAX_STALL`](crate::config::MAX_STALL)) to let it drain, as nats-server stalls fast producers, instead
    /// of cutting it off at once.
    pub fn take_lagging(&mut self) -> Option<Arc<Outbound>> {
        self.replies.take_lagging()
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
                self.replies.set_echo(connect.echo);
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
            ClientOp::Request { request, reply } => {
                self.api_request(request, reply).await?;
                false
            }
            ClientOp::CatchUp { sid, catch_up } => self.catch_up_verb(sid, catch_up).await,
            ClientOp::Fetch { sid, query } => self.fetch_verb(sid, query).await,
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
            self.outbound.send_op(&ServerOp::Ok);
        }
        Ok(())
    }

    /// `PING`: `PONG` once everything this client sent before is processed, including its
    /// events in the timeline writer, so a PING/PONG flush means what it means in NATS.
    async fn ping(&mut self) {
        let outbound = Arc::clone(&self.outbound);
        self.in_order(move || outbound.send_op(&ServerOp::Pong)).await;
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
            self.sweep_at = (self.subscriptions.len() * 2).max(SUBSCRIPTION_SWEEP_MIN);
        }
        self.in_order(move || router.activate(&subscription)).await;
        Ok(())
    }

    /// `UNSUB <sid> [max]`; an unknown sid is ignored, as nats-server does. It also ends a
    /// catch-up subscription on that sid.
    async fn unsubscribe(&mut self, sid: &Bytes, max: Option<u64>) {
        self.catchups.remove(sid);
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
        if self.replies.settled() {
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
        if self.replies.settled() {
            return action();
        }
        if let Err(Request::Call(action)) = self.broker.timeline.send(Request::Call(action)).await {
            action();
        }
    }
}

impl Drop for Session {
    /// A closed connection's subscriptions leave the routing table with it (its catch-ups
    /// end with their guards).
    fn drop(&mut self) {
        for subscription in self.subscriptions.values() {
            self.broker.router.unsubscribe(subscription);
        }
    }
}
