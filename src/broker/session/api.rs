//! The extensions that read the log, in both faces: the typed verbs (`SUB ... FROM`,
//! `FETCH`) and the `$EL.` request API for NATS client libraries.

use std::sync::Arc;

use bytes::Bytes;

use super::Session;
use crate::broker::BrokerError;
use tokio_util::sync::CancellationToken;

use crate::broker::catchup::{self, Sink};
use crate::broker::outbound::Wakes;
use crate::protocol::{ApiRequest, CatchUp as CatchUpRequest, Query, Refusal, Start, Subscribe, api};
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
        self.refuse(started.err())
    }

    /// `FETCH <sid> <filters> [options]`; returns whether to `+OK` in verbose mode.
    pub(super) async fn fetch_verb(&mut self, sid: Bytes, query: Result<Query, Refusal>) -> bool {
        self.settle().await;
        let sink = Sink { outbound: Arc::clone(&self.outbound), sid };
        // The end status goes out on the filters, as typed.
        let end =
            |query: &Query| Bytes::from(query.filters.iter().map(Filter::as_bytes).collect::<Vec<_>>().join(&b","[..]));
        let started = query.map(|query| self.fetch(end(&query), query, sink));
        self.refuse(started.err())
    }

    /// Answers an extension verb that failed with `-NAK '<reason>'` (the connection stays
    /// open); returns whether to `+OK` in verbose mode.
    fn refuse(&self, refusal: Option<Refusal>) -> bool {
        match refusal {
            Some(refusal) => {
                self.replies.nak(&refusal, &mut Wakes::default());
                false
            }
            None => true,
        }
    }

    /// Starts a catch-up subscription delivering to `sink`, its caught-up marker on `marker`.
    async fn catch_up(&mut self, request: CatchUpRequest, sink: Sink, marker: Bytes) -> Result<(), Refusal> {
        if self.catchups.contains_key(&sink.sid) {
            return Err(Refusal::SidInUse(lossy(&sink.sid)));
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
    fn fetch(&self, end: Bytes, query: Query, sink: Sink) {
        tokio::spawn(catchup::fetch(self.broker.log.clone(), query, sink, end));
    }

    /// A `$EL.` request from a NATS client library. Answers go to `reply`: JSON for
    /// `$EL.PUB`, `$EL.SUB` and refusals; events and an end status for `$EL.FETCH` and
    /// `$EL.LAST.<subject>` (on the requester's subscription to `reply`).
    pub(super) async fn api_request(&mut self, request: ApiRequest, reply: Option<Bytes>) -> Result<(), BrokerError> {
        // nats-server acknowledges a `PUB` before routing it, whatever its subject.
        self.acknowledge();
        let (request, reply) = match (request, reply) {
            (ApiRequest::Publish(message), reply) => return self.publish_requested(message, reply).await,
            (request, Some(reply)) => (request, reply),
            // The codec makes the other requests only from messages with a reply.
            (_, None) => return Ok(()),
        };
        // The answer must find the requester's reply subscription, which may still be
        // waiting behind its own stored publishes; and a query must see those publishes.
        self.settle().await;
        let answered = match request {
            ApiRequest::Publish(_) => Ok(None),
            ApiRequest::Subscribe(request) => match request {
                Ok(request) => self.api_subscribe(request).await.map(Some),
                Err(refusal) => Err(refusal),
            },
            ApiRequest::Fetch(query) => query
                .and_then(|query| self.sink_for(&reply).map(|sink| self.fetch(reply.clone(), query, sink)))
                .map(|()| None),
            ApiRequest::Last(last_of) => self.sink_for(&reply).map(|sink| {
                tokio::spawn(catchup::last(self.broker.log.clone(), last_of, sink, reply.clone()));
                None
            }),
        };
        let body = match answered {
            Ok(Some(answer)) => answer,
            Ok(None) => return Ok(()),
            Err(refusal) => api::refused(&refusal),
        };
        self.replies.json(&reply, body, &mut Wakes::default());
        Ok(())
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
