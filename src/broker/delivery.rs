//! The second half of the write path: a committed batch is made visible (the head moves),
//! fanned out live in sequence order, and acknowledged. Under `--fsync always` this runs on
//! the finisher thread once the write-ahead log's fsync covers the batch; otherwise on the
//! writer thread right after the commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use super::router::Router;
use super::session::push_no_responders;
use super::timeline::{AckTo, Append, Outcome, outcome_json};
use super::{MAX_STALL, Outbound};
use crate::protocol::{Pub, Refusal, ServerOp};
use crate::store::Event;

/// An admitted append, waiting for its batch to commit.
pub(super) struct Admitted {
    pub append: Append,
    pub outcome: Outcome,
    /// Its event in the batch, if it was stored.
    pub event: Option<usize>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "appends are the common case; boxing them would cost an allocation per event"
)]
pub(super) enum Completion {
    Append(Admitted),
    /// A client's `PONG`, `SUB` or `UNSUB` that keeps its place after its own publishes.
    Call(Box<dyn FnOnce() + Send>),
}

/// A batch written to the log, waiting to be delivered and acknowledged.
pub(super) struct Committed {
    pub head: u64,
    /// Shared with the writer, which writes them to fjall meanwhile (see `Handoff`).
    pub events: Arc<Vec<Event>>,
    pub completions: Vec<Completion>,
}

/// What delivering needs; cheap to clone, so the writer keeps one to answer failures.
#[derive(Clone)]
pub(super) struct Delivery {
    pub router: Arc<Router>,
    pub head: Arc<watch::Sender<u64>>,
    /// For bounded waits on lagging subscribers from a thread outside the runtime.
    pub runtime: tokio::runtime::Handle,
}

impl Delivery {
    /// Publishes the batch's head, fans it out in sequence order, acknowledges, and runs
    /// the calls queued with it. A connection's deliveries and `+ACK` lines of the batch
    /// are all queued before they are sent, so they leave in one write, from this thread if
    /// the connection's writer task is idle (no runtime worker is woken for it).
    pub(super) fn finish(&self, committed: Committed) {
        self.head.send_replace(committed.head);
        let mut stall_budget = MAX_STALL;
        let mut to_wake: Vec<Arc<Outbound>> = Vec::new();
        for completion in committed.completions {
            match completion {
                Completion::Append(admitted) => {
                    let append = &admitted.append;
                    if let Some(event) = admitted.event.and_then(|index| committed.events.get(index)) {
                        self.fan_out(append, event, &mut stall_budget, &mut to_wake);
                    }
                    match &append.ack {
                        AckTo::Line(outbound) => {
                            if outbound.push_op_unwoken(&ack_line(&admitted.outcome)) {
                                to_wake.push(Arc::clone(outbound));
                            }
                        }
                        ack => acknowledge(&self.router, ack, &admitted.outcome),
                    }
                    append.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                Completion::Call(action) => action(),
            }
        }
        for outbound in to_wake {
            outbound.flush();
        }
    }

    /// Delivers a stored message live. A subscriber pushed lagging (see `LAGGING_AT_MOST`)
    /// gets a moment to drain, so a burst written as one batch does not cut off a
    /// subscriber that is merely behind; the waits of one batch add up to at most
    /// `stall_budget` (as a live publisher pauses at most [`MAX_STALL`] per read), so a
    /// stuck subscriber costs the others little before it is cut.
    fn fan_out(&self, append: &Append, event: &Event, stall_budget: &mut Duration, to_wake: &mut Vec<Arc<Outbound>>) {
        let routed = self.router.route_unwoken(&append.message, append.publisher, append.echo, to_wake);
        self.router.offer(event);
        if let Some(lagging) = routed.lagging.filter(|_| !stall_budget.is_zero()) {
            // A subscriber drains only once its writer task is awake.
            for outbound in to_wake.drain(..) {
                outbound.flush();
            }
            let started = std::time::Instant::now();
            let budget = *stall_budget;
            // The timer must be created inside the runtime's context.
            let _ = self.runtime.block_on(async { tokio::time::timeout(budget, lagging.wait_drained()).await });
            *stall_budget = stall_budget.saturating_sub(started.elapsed());
        }
        if routed.delivered == 0 {
            if let (Some((outbound, sid)), Some(reply)) = (&append.no_responders, &append.message.reply) {
                push_no_responders(outbound, reply, sid);
            }
        }
    }

    /// Answers every append of `completions` (and `pending`) with a storage failure: the
    /// log failed, so they are not acknowledged as stored even if they reached the disk.
    pub(super) fn fail(&self, completions: Vec<Completion>, pending: impl IntoIterator<Item = Append>) {
        warn!("answering the current batch with storage failures");
        let appends = completions.into_iter().filter_map(|c| match c {
            Completion::Append(admitted) => Some(admitted.append),
            Completion::Call(_) => None,
        });
        refuse(&self.router, appends.chain(pending));
    }
}

/// Answers appends that were not stored (the log failed, or stopped) with a storage failure.
pub(super) fn refuse(router: &Router, appends: impl IntoIterator<Item = Append>) {
    for append in appends {
        acknowledge(router, &append.ack, &Outcome::Failed);
        append.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Tells the publisher how its append went, as it asked (see [`AckTo`]).
fn acknowledge(router: &Router, ack: &AckTo, outcome: &Outcome) {
    match ack {
        AckTo::Nobody => {}
        AckTo::Line(outbound) => {
            outbound.push_op(&ack_line(outcome));
        }
        AckTo::Reply(subject) => {
            let reply = Pub { subject: subject.clone(), reply: None, headers: None, payload: outcome_json(outcome) };
            router.route(&reply, 0, true);
        }
    }
}

/// The `+ACK` or `-NAK` line answering an `APUB`.
fn ack_line(outcome: &Outcome) -> ServerOp {
    match outcome {
        Outcome::Stored { seq, revision } => ServerOp::Ack { seq: *seq, revision: *revision, duplicate: false },
        Outcome::Duplicate { seq, revision } => ServerOp::Ack { seq: *seq, revision: *revision, duplicate: true },
        Outcome::Rejected(refusal) => ServerOp::Nak(refusal.clone()),
        Outcome::Failed => ServerOp::Nak(Refusal::StorageFailure),
    }
}
