//! The vocabulary of the write path, shared by the session that hands appends over, the
//! timeline writer that admits and stores them, and the delivery that answers them.
//!
//! The storage threads never see session state: each append carries an opaque [`Reply`],
//! whose [`Publisher`] the session implements, and they only pass it along and call it
//! once the append is done.

use std::sync::Arc;

use bytes::Bytes;

use super::outbound::{Outbound, Wakes};
use crate::protocol::{Pub, PublishOptions, Refusal};
use crate::store::Event;

/// One publish to store.
pub(crate) struct Append {
    /// Validated, non-volatile subject.
    pub message: Pub,
    pub options: PublishOptions,
    pub reply: Reply,
}

impl Append {
    /// Payload bytes, headers included.
    pub(crate) fn size(&self) -> usize {
        self.message.payload.len() + self.message.headers.as_ref().map_or(0, Bytes::len)
    }

    /// Answers an append that is not acknowledged (the log failed, or stopped) with
    /// `failure`, which says whether it may have been stored.
    pub(crate) fn refuse(self, failure: &Refusal, wakes: &mut Wakes) {
        self.reply.answer(&self.message, &Err(failure.clone()), 0, wakes);
    }
}

/// How an append went: where it is in the log, or why it is not there.
pub(crate) type Outcome = Result<Stored, Refusal>;

/// A stored append: its sequence and revision, and whether it was a duplicate of an
/// earlier one with the same message id (which stored nothing new).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    pub seq: u64,
    pub revision: u64,
    pub duplicate: bool,
}

/// What the publisher asked to hear about an append.
pub(crate) enum Answer {
    /// A plain `PUB`: nothing (NATS semantics)...
    Nothing,
    /// ...unless the requester wants a `503` on its subscription `sid` when no subscriber
    /// took the message (a request to nobody).
    NoResponders { sid: Bytes },
    /// `APUB`: a `+ACK` or `-NAK` line.
    Line,
    /// `$EL.PUB`: a JSON answer published on this reply subject.
    Json(Bytes),
}

/// The session side of an append, opaque to the storage threads: whose subscriptions skip
/// its event (echo off), where answers go, and how its connection is paced. Implemented
/// by the session (see `reply`); a trait so that the write path cannot reach into a
/// session.
pub(crate) trait Publisher: Send + Sync {
    /// The client whose own subscriptions must not receive this publisher's events.
    fn skips(&self) -> Option<u64>;

    /// Answers one append as `answer` asks; `delivered` counts the subscriptions that took
    /// its event. Whatever it queues is woken with `wakes`, once the batch is done.
    fn answer(&self, answer: &Answer, message: &Pub, outcome: &Outcome, delivered: usize, wakes: &mut Wakes);

    /// A subscriber its event pushed lagging: the publisher's connection pauses to let it
    /// drain (at most `MAX_STALL`), as nats-server stalls fast producers, while the write
    /// path goes on.
    fn paced_by(&self, subscriber: Arc<Outbound>);

    /// One of its appends is answered (or one of its calls has run).
    fn done(&self);
}

/// Where an append's answer goes.
pub(crate) struct Reply {
    pub publisher: Arc<dyn Publisher>,
    pub answer: Answer,
}

impl Reply {
    /// Answers the append (its `message`) and counts it done.
    pub(crate) fn answer(&self, message: &Pub, outcome: &Outcome, delivered: usize, wakes: &mut Wakes) {
        self.publisher.answer(&self.answer, message, outcome, delivered, wakes);
        self.publisher.done();
    }
}

/// What connections hand the timeline writer.
pub(crate) enum Request {
    /// One connection's appends, in its order: as many as one read of its socket held (up
    /// to a bound), so a burst costs the writer one request, not one per message.
    Appends(Vec<Append>),
    /// Run once everything queued before it is stored and delivered: a client's `PONG`,
    /// `SUB` or `UNSUB` that must keep its place after the client's own publishes.
    Call(Box<dyn FnOnce() + Send>),
    /// The `interval` fsync policy's tick.
    Sync,
    /// Finish what is queued before it, then stop (and close the log).
    Stop,
}

impl Request {
    /// Appends and their payload bytes, for the batch bounds.
    pub(crate) fn size(&self) -> (usize, usize) {
        match self {
            Request::Appends(appends) => (appends.len(), appends.iter().map(Append::size).sum()),
            Request::Call(_) | Request::Sync | Request::Stop => (0, 0),
        }
    }

    /// The appends of a request that will not be committed.
    pub(crate) fn into_appends(self) -> Vec<Append> {
        match self {
            Request::Appends(appends) => appends,
            Request::Call(_) | Request::Sync | Request::Stop => Vec::new(),
        }
    }
}

/// An admitted append, waiting for its batch to commit.
pub(crate) struct Admitted {
    pub append: Append,
    pub outcome: Outcome,
}

impl Admitted {
    /// Whether it became a new event (not a duplicate, not refused), to be delivered.
    pub(crate) fn is_new(&self) -> bool {
        matches!(self.outcome, Ok(Stored { duplicate: false, .. }))
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "appends are the common case; boxing them would cost an allocation per event"
)]
pub(crate) enum Completion {
    Append(Admitted),
    /// A client's `PONG`, `SUB` or `UNSUB` that keeps its place after its own publishes.
    Call(Box<dyn FnOnce() + Send>),
}

impl Completion {
    /// The append of a completion that will not be committed, if it is one.
    pub(crate) fn into_append(self) -> Option<Append> {
        match self {
            Completion::Append(admitted) => Some(admitted.append),
            Completion::Call(_) => None,
        }
    }
}

/// A batch written to the log, waiting to be made visible, delivered and answered.
pub(crate) struct Committed {
    /// The last sequence of the log once this batch is in it.
    pub head: u64,
    /// Shared with the writer, which writes them to fjall meanwhile.
    pub events: Arc<Vec<Event>>,
    pub completions: Vec<Completion>,
}
