//! Publishing: plain `PUB`/`HPUB` (routed at once on a volatile subject, stored first on
//! any other), `APUB` and `$EL.PUB`, and the hand-over of appends to the timeline writer.

use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;

use super::{Session, lossy};
use crate::broker::BrokerError;
use crate::broker::append::{Answer, Append, Publisher, Reply, Request};
use crate::broker::outbound::Wakes;
use crate::config::{REQUEST_APPENDS, REQUEST_BYTES};
use crate::protocol::{Pub, PublishOptions, Refusal, ServerOp};
use crate::subject::{check_subject, is_valid_subject};

impl Session {
    pub(super) async fn publish(&mut self, message: Pub) -> Result<(), BrokerError> {
        self.check_headers(&message)?;
        // A wildcard or empty-token subject must never reach a subscriber (it could not be
        // stored by subject either); only pedantic clients are told.
        let deliverable = is_valid_subject(&message.subject);
        if !deliverable && self.options.pedantic {
            return Err(BrokerError::InvalidPublishSubject);
        }
        // nats-server acknowledges before routing, so `+OK` precedes the client's own echo.
        self.acknowledge();
        if !deliverable {
            return Ok(());
        }
        let no_responders = match &message.reply {
            Some(reply) if self.options.no_responders => self.reply_subscription(reply),
            _ => None,
        };
        if !self.broker.is_volatile(&message.subject) {
            let options = message.publish_options();
            let answer = no_responders.map_or(Answer::Nothing, |sid| Answer::NoResponders { sid });
            self.store(message, options, answer).await;
            return Ok(());
        }
        if self.replies.settled() {
            self.replies.route_live(&message, no_responders.as_ref(), &mut self.wakes);
        } else {
            // Behind this client's own stored publishes, so a reply cannot overtake the
            // event it answers for.
            let replies = Arc::clone(&self.replies);
            self.in_order(move || replies.route_live(&message, no_responders.as_ref(), &mut Wakes::default())).await;
        }
        Ok(())
    }

    /// `APUB`: stored, then answered with `+ACK` or `-NAK`.
    pub(super) async fn publish_acknowledged(&mut self, message: Pub, options: Result<PublishOptions, Refusal>) {
        let options = self.storable(&message).and(options);
        self.store(message, options, Answer::Line).await;
    }

    /// `$EL.PUB.<subject>`: stored, then answered with JSON on `reply`, if any.
    pub(super) async fn publish_requested(&mut self, message: Pub, reply: Option<Bytes>) {
        let options = self.storable(&message).and_then(|()| message.publish_options());
        self.store(message, options, reply.map_or(Answer::Nothing, Answer::Json)).await;
    }

    /// `HPUB` needs a `CONNECT` that enabled headers, as in nats-server.
    fn check_headers(&self, message: &Pub) -> Result<(), BrokerError> {
        match message.headers {
            Some(_) if !self.options.headers => Err(BrokerError::HeadersNotSupported),
            _ => Ok(()),
        }
    }

    /// `+OK` in verbose mode, for a publish (which nats-server acknowledges before routing).
    pub(super) fn acknowledge(&self) {
        if self.options.verbose {
            self.outbound.push_op(&ServerOp::Ok, &mut Wakes::default());
        }
    }

    /// Whether an acknowledged publish's subject can be stored.
    fn storable(&self, message: &Pub) -> Result<(), Refusal> {
        if let Err(reason) = check_subject(&message.subject) {
            Err(Refusal::InvalidSubject(reason))
        } else if self.broker.is_volatile(&message.subject) {
            Err(Refusal::Volatile(lossy(&message.subject)))
        } else {
            Ok(())
        }
    }

    /// Hands a message for a stored subject to the timeline writer, which delivers it once
    /// durable and answers as `answer` says; a refused one is answered in order, and not
    /// stored.
    async fn store(&mut self, message: Pub, options: Result<PublishOptions, Refusal>, answer: Answer) {
        let publisher = Arc::clone(&self.replies);
        let options = match options {
            Ok(options) => options,
            Err(refusal) => {
                if matches!(answer, Answer::Nothing | Answer::NoResponders { .. }) {
                    debug!(client = self.client_id, %refusal, "publish refused");
                    return;
                }
                // Answered after this client's earlier publishes: answers come in publish order.
                self.in_order(move || publisher.answer(&answer, &message, &Err(refusal), 0, &mut Wakes::default()))
                    .await;
                return;
            }
        };
        self.replies.begin();
        let append = Append { message, options, reply: Reply { publisher, answer } };
        self.append_bytes += append.size();
        self.appends.push(append);
        if self.appends.len() >= REQUEST_APPENDS || self.append_bytes >= REQUEST_BYTES {
            self.flush().await;
        }
    }

    /// Hands the appends parsed so far to the timeline writer, in one request, and wakes
    /// the connections this read's volatile messages were queued for. The connection calls
    /// it once it has applied every op of a read, before it waits for more; anything that
    /// must come after the appends in the writer (see `Session::in_order`) calls it first.
    pub async fn flush(&mut self) {
        self.wakes.wake();
        if self.appends.is_empty() {
            return;
        }
        self.append_bytes = 0;
        let appends = std::mem::take(&mut self.appends);
        if let Err(request) = self.broker.timeline.send(Request::Appends(appends)).await {
            let mut wakes = Wakes::default();
            for append in request.into_appends() {
                append.refuse(&Refusal::StorageFailure, &mut wakes);
            }
        }
    }
}
