//! The second half of the write path: a committed batch is made visible (the head moves),
//! fanned out live in sequence order, and answered. Under `--fsync always` this runs on
//! the finisher thread once the write-ahead log's fsync covers the batch, or on the writer
//! thread after its own fsync when nothing else is in flight; otherwise on the writer
//! thread right after the commit.
//!
//! Nothing here waits for a subscriber: pushes only queue, and a subscriber pushed past
//! its lagging mark paces the publisher's own connection (see
//! [`Publisher::paced_by`](super::append::Publisher::paced_by)), not the log.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::warn;

use super::append::{Admitted, Append, Committed, Completion};
use super::outbound::Wakes;
use super::recent::Recent;
use super::router::Router;
use crate::protocol::Refusal;

/// What delivering needs; cheap to clone, so the writer keeps one to answer failures.
#[derive(Clone)]
pub(super) struct Delivery {
    pub router: Arc<Router>,
    /// Where readers find the batch (see [`Recent`]), before the head moves past it.
    pub recent: Arc<Recent>,
    pub head: Arc<watch::Sender<u64>>,
}

impl Delivery {
    /// Makes the batch visible to readers (the recent batches, then the head), fans it out
    /// live in sequence order, answers, and runs the calls queued with it. A connection's
    /// deliveries and answers of the batch are all queued before its writer is woken, once,
    /// so they leave in one write.
    pub(super) fn finish(&self, committed: Committed) {
        self.recent.push(&committed.events);
        self.head.send_replace(committed.head);
        let mut wakes = Wakes::default();
        for completion in committed.completions {
            match completion {
                Completion::Append(admitted) => {
                    let Admitted { append, outcome } = &admitted;
                    let delivered = if admitted.is_new() {
                        let publisher = &append.reply.publisher;
                        let routed = self.router.route(&append.message, publisher.skips(), &mut wakes);
                        if let Some(subscriber) = routed.lagging {
                            publisher.paced_by(subscriber);
                        }
                        routed.delivered
                    } else {
                        0
                    };
                    append.reply.answer(&append.message, outcome, delivered, &mut wakes);
                }
                Completion::Call(action) => action(),
            }
        }
        wakes.wake();
    }

    /// Answers every append of `completions` (and `pending`) with `failure`: the log
    /// failed, so they are not acknowledged even if they reached the disk, and `failure`
    /// says whether they may have ([`Refusal::MaybeStored`]) or cannot have.
    pub(super) fn fail(
        &self,
        failure: &Refusal,
        completions: Vec<Completion>,
        pending: impl IntoIterator<Item = Append>,
    ) {
        let mut wakes = Wakes::default();
        let mut refused = 0;
        for append in completions.into_iter().filter_map(Completion::into_append).chain(pending) {
            append.refuse(failure, &mut wakes);
            refused += 1;
        }
        if refused > 0 {
            warn!(%failure, refused, "publishes answered with a storage failure");
        }
    }
}
