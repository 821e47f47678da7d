//! One client's session: its `CONNECT` options and its subscriptions, driven op by op by
//! its connection's reader task. The NATS ops are here; publishing is in [`publish`] and
//! the extensions that read the log (catch-up, queries, the `$EL.` API) in [`api`].

mod api;
mod publish;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::DropGuard;

use super::append::{Append, Publisher, Request};
use super::outbound::{Outbound, Wakes};
use super::reply::Replies;
use super::{Broker, BrokerError, Subscription};
use crate::config::{MAX_QUERIES_PER_CONNECTION, SUBSCRIPTION_SWEEP_MIN};
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
    /// Queries this client may still start ([`MAX_QUERIES_PER_CONNECTION`] at once); each
    /// running one holds a permit.
    queries: Arc<Semaphore>,
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
            queries: Arc::new(Semaphore::new(MAX_QUERIES_PER_CONNECTION)),
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
            ClientOp::Request { request, headers } => {
                if headers && !self.options.headers {
                    return Err(BrokerError::HeadersNotSupported);
                }
                self.api_request(request).await;
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
            self.wakes.wake();
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
        if self.replies.settled() {
            return action();
        }
        // Counted in flight like an append, so that what follows it waits for it too: the
        // append before it may be answered a moment (or a batch) before it runs.
        self.replies.begin();
        let replies = Arc::clone(&self.replies);
        let call: Box<dyn FnOnce() + Send> = Box::new(move || {
            action();
            replies.done();
        });
        if let Err(Request::Call(call)) = self.broker.timeline.send(Request::Call(call)).await {
            call();
        }
    }
}

/// Text for a refusal that quotes what the client sent.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Pending;
    use crate::config::{Config, FsyncPolicy, StoreConfig};
    use crate::protocol::{Pub, PublishOptions};

    /// Queues a call that holds the writer until the returned sender is used or dropped;
    /// the receiver resolves once the writer is held.
    async fn hold(broker: &Broker) -> (std::sync::mpsc::Sender<()>, tokio::sync::oneshot::Receiver<()>) {
        let (entered, writer_held) = tokio::sync::oneshot::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let call = move || {
            let _ = entered.send(());
            let _ = held.recv();
        };
        assert!(broker.timeline.send(Request::Call(Box::new(call))).await.is_ok(), "the writer takes calls");
        (release, writer_held)
    }

    /// Everything queued for the client so far, as text.
    fn sent(outbound: &Outbound) -> String {
        let mut pending = Pending::default();
        outbound.take(&mut pending);
        outbound.sent();
        String::from_utf8_lossy(&pending.encoded).into_owned()
    }

    /// `APUB` then `SUB` then `PING`: the `SUB` waits in the writer behind the publish, and
    /// the `PONG` must wait for the `SUB` even once the publish is answered, or the client
    /// would be told its subscription is in place before it is.
    #[tokio::test]
    async fn an_op_waits_for_a_call_still_queued_after_its_publish_was_answered() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = StoreConfig { fsync: FsyncPolicy::Never, ..StoreConfig::new(dir.path()) };
        let broker =
            Arc::new(Broker::start(Config { store, ..Config::default() }, Default::default()).expect("starts"));
        let outbound = Arc::new(Outbound::new(1 << 20, None));
        let mut session = Session::new(Arc::clone(&broker), Arc::clone(&outbound), |id| broker.info(id, "h", 1, None));
        let quiet = Connect { verbose: false, pedantic: false, ..Connect::default() };
        session.handle(ClientOp::Connect(Box::new(quiet))).await.expect("connects");
        sent(&outbound);

        let (release_first, first_held) = hold(&broker).await;
        first_held.await.expect("the writer is held");
        let message = Pub { subject: Bytes::from_static(b"a"), reply: None, headers: None, payload: Bytes::new() };
        session.handle(ClientOp::Apub(message, Ok(PublishOptions::default()))).await.expect("publishes");
        session.flush().await;
        // A second hold, so that the writer stops between the publish and the SUB's call.
        let (release_second, second_held) = hold(&broker).await;
        let sub = ClientOp::Sub { subject: Bytes::from_static(b"v"), queue: None, sid: Bytes::from_static(b"1") };
        session.handle(sub).await.expect("subscribes");
        release_first.send(()).expect("the writer waits");
        second_held.await.expect("the writer is held again, the publish answered");

        session.handle(ClientOp::Ping).await.expect("pings");
        assert_eq!(sent(&outbound), "+ACK seq=1 rev=1\r\n", "no PONG before the SUB is in place");
        drop(release_second);
        session.settle().await;
        assert_eq!(sent(&outbound), "PONG\r\n");
        assert_eq!(broker.router.matches(b"v").plain.len(), 1, "the subscription is in place");
    }
}
