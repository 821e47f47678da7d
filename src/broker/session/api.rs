//! The extensions that read the log, in both faces: the typed verbs (`SUB ... FROM`,
//! `FETCH`) and the `$EL.` request API for NATS client libraries.

use std::sync::Arc;

use bytes::Bytes;

use super::{Session, lossy};
use tokio_util::sync::CancellationToken;

use crate::broker::catchup::{self, Sink};
use crate::broker::outbound::Wakes;
use crate::config::{MAX_CATCHUPS_PER_CONNECTION, MAX_QUERIES_PER_CONNECTION};
use crate::protocol::{ApiRead, ApiRequest, CatchUp as CatchUpRequest, Query, Refusal, Start, Subscribe};
use crate::subject::Filter;

impl Session {
    /// `SUB <filter> <sid> FROM <start>`; returns whether to `+OK` in verbose mode.
    pub(super) async fn catch_up_verb(&mut self, sid: Bytes, request: Result<CatchUpRequest, Refusal>) -> bool {
        let started = match request {
            _ if self.subscriptions.contains_key(&sid) => Err(Refusal::SidInUse(lossy(&sid))),
            Ok(request) => {
                let marker = request.filter.clone().into_bytes();
                self.catch_up(request, Sink { outbound: Arc::clone(&self.outbound), sid }, marker).await
            }
            Err(refusal) => Err(refusal),
        };
        self.refuse(started.err()).await
    }

    /// `FETCH <sid> <filters> [options]`; returns whether to `+OK` in verbose mode.
    pub(super) async fn fetch_verb(&mut self, sid: Bytes, query: Result<Query, Refusal>) -> bool {
        self.settle().await;
        let sink = Sink { outbound: Arc::clone(&self.outbound), sid };
        // The end status goes out on the filters, joined with commas as they were sent.
        let end =
            |query: &Query| Bytes::from(query.filters.iter().map(Filter::as_bytes).collect::<Vec<_>>().join(&b","[..]));
        let started = query.and_then(|query| self.fetch(end(&query), query, sink));
        self.refuse(started.err()).await
    }

    /// Answers an extension verb that failed with `-NAK '<reason>'` (the connection stays
    /// open), after the answers to this client's earlier publishes; returns whether to
    /// `+OK` in verbose mode.
    async fn refuse(&mut self, refusal: Option<Refusal>) -> bool {
        let Some(refusal) = refusal else { return true };
        let replies = Arc::clone(&self.replies);
        self.in_order(move || replies.nak(&refusal, &mut Wakes::default())).await;
        false
    }

    /// Starts a catch-up subscription delivering to `sink`, its caught-up marker on `marker`.
    async fn catch_up(&mut self, request: CatchUpRequest, sink: Sink, marker: Bytes) -> Result<(), Refusal> {
        if self.catchups.contains_key(&sink.sid) {
            return Err(Refusal::SidInUse(lossy(&sink.sid)));
        }
        if self.catchups.len() >= MAX_CATCHUPS_PER_CONNECTION {
            return Err(Refusal::TooManyReaders { kind: "catch-up subscriptions", limit: MAX_CATCHUPS_PER_CONNECTION });
        }
        // Its replay must see this client's own earlier publishes.
        self.settle().await;
        let CatchUpRequest { filter, start } = request;
        let log = &self.broker.log;
        let after = catchup::start_position(log, start, log.head()).await?;
        let cursor = log.cursor(Arc::new([filter.clone()]), after);
        let stop = CancellationToken::new();
        self.catchups.insert(sink.sid.clone(), stop.clone().drop_guard());
        tokio::spawn(catchup::catch_up(cursor, filter, start == Start::LastPerSubject, sink, marker, stop));
        Ok(())
    }

    /// Starts a one-shot query delivering to `sink`, ended by a status on `end`.
    fn fetch(&self, end: Bytes, query: Query, sink: Sink) -> Result<(), Refusal> {
        self.spawn_query(catchup::fetch(self.broker.log.clone(), query, sink, end))
    }

    /// Runs a query holding one of this connection's query permits, if it is not at its
    /// limit.
    fn spawn_query(&self, query: impl Future<Output = ()> + Send + 'static) -> Result<(), Refusal> {
        let turn = Arc::clone(&self.queries)
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManyReaders { kind: "queries", limit: MAX_QUERIES_PER_CONNECTION })?;
        tokio::spawn(async move {
            query.await;
            drop(turn);
        });
        Ok(())
    }

    /// A `$EL.` request from a NATS client library. Answers go to its reply subject: JSON
    /// for `$EL.PUB`, `$EL.SUB` and refusals; events and an end status for `$EL.FETCH` and
    /// `$EL.LAST.<subject>` (on the requester's subscription to the reply subject).
    pub(super) async fn api_request(&mut self, request: ApiRequest) {
        // nats-server acknowledges a `PUB` before routing it, whatever its subject.
        self.acknowledge();
        let (read, reply) = match request {
            ApiRequest::Publish { message, reply } => return self.publish_requested(message, reply).await,
            ApiRequest::Read { read, reply } => (read, reply),
        };
        // The answer must find the requester's reply subscription, which may still be
        // waiting behind its own stored publishes; and a read must see those publishes.
        self.settle().await;
        let started = match read {
            ApiRead::Subscribe(request) => match request {
                Ok(request) => self.api_subscribe(request, &reply).await,
                Err(refusal) => Err(refusal),
            },
            ApiRead::Fetch(query) => query.and_then(|query| {
                let sink = self.sink_for(&reply)?;
                self.fetch(reply.clone(), query, sink)
            }),
            ApiRead::Last(last_of) => self.sink_for(&reply).and_then(|sink| {
                self.spawn_query(catchup::last(self.broker.log.clone(), last_of, sink, reply.clone()))
            }),
        };
        if let Err(refusal) = started {
            self.replies.refuse_json(&reply, &refusal, &mut Wakes::default());
        }
    }

    /// `$EL.SUB`: a catch-up subscription delivering on the requester's subscription to
    /// the request's `deliver` subject, answered on `reply` once started.
    async fn api_subscribe(&mut self, request: Subscribe, reply: &Bytes) -> Result<(), Refusal> {
        let sink = self.sink_for(&request.deliver)?;
        let filter = request.catch_up.filter.clone();
        self.catch_up(request.catch_up, sink, request.deliver).await?;
        self.replies.subscribed(reply, &filter, self.broker.head(), &mut Wakes::default());
        Ok(())
    }

    /// Delivery to this client's own subscription on `subject`.
    fn sink_for(&self, subject: &[u8]) -> Result<Sink, Refusal> {
        let sid = self.reply_subscription(subject).ok_or_else(|| Refusal::NoSubscription(lossy(subject)))?;
        Ok(Sink { outbound: Arc::clone(&self.outbound), sid })
    }
}
