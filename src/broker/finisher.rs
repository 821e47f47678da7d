//! Under `--fsync always`, the finisher thread makes committed batches durable, then
//! delivers and acknowledges them.
//!
//! Every acknowledgement waits for the fsync of the write-ahead log. The writer hands a batch
//! over as soon as it is in the write-ahead log and writes it to fjall while the finisher
//! fsyncs, so the two costs overlap; the finisher delivers the batch once the writer says
//! fjall holds it too. The finisher takes every batch queued for it, so one fsync covers
//! all the batches written while the previous one ran: the busier the log, the bigger the
//! group. A batch with nothing queued behind it, arriving while the finisher holds
//! nothing, is not handed over at all: the writer fsyncs and delivers it itself, sparing a
//! lone publisher's ack the thread wake-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use tokio_util::sync::CancellationToken;
use tracing::error;

use super::append::Committed;
use super::delivery::Delivery;
use super::raise_failure;
use crate::config::FINISHER_QUEUE_HANDOFFS;
use crate::essential;
use crate::protocol::Refusal;
use crate::store::Store;

/// What the timeline writer tells the finisher, in this order for each batch.
pub(super) enum Handoff {
    /// A batch is in the write-ahead log (to the OS, not yet fsynced).
    Written(Committed),
    /// fjall holds every event up to this sequence, so reads find them once delivered.
    Stored(u64),
}

pub(super) struct Finisher {
    sender: Option<SyncSender<Handoff>>,
    /// Batches handed over and not yet delivered.
    in_hand: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
    delivery: Delivery,
}

impl Finisher {
    /// Starts the thread over a log whose last event is `head`. If an fsync fails, it sets
    /// `failed`, cancels `fatal`, and answers that group and every later batch with storage
    /// failures.
    pub(super) fn start(
        head: u64,
        store: Arc<Store>,
        delivery: Delivery,
        failed: Arc<AtomicBool>,
        fatal: CancellationToken,
    ) -> std::io::Result<Finisher> {
        let (sender, receiver) = sync_channel(FINISHER_QUEUE_HANDOFFS);
        let thread_delivery = delivery.clone();
        let in_hand = Arc::new(AtomicUsize::new(0));
        let delivered = Arc::clone(&in_hand);
        let raise = raise_failure(&failed, &fatal);
        let thread = essential::spawn(
            "finisher",
            move |_| raise(),
            move || {
                run(head, &store, &thread_delivery, &receiver, &failed, &fatal, &delivered);
            },
        )?;
        Ok(Finisher { sender: Some(sender), in_hand, thread: Some(thread), delivery })
    }

    /// Whether every batch handed over is delivered, so the writer may deliver the next one
    /// itself without overtaking any.
    pub(super) fn is_idle(&self) -> bool {
        self.in_hand.load(Ordering::Acquire) == 0
    }

    /// Hands over a batch or the word that fjall holds it, waiting while the queue is full.
    pub(super) fn send(&self, handoff: Handoff) {
        if matches!(handoff, Handoff::Written(_)) {
            self.in_hand.fetch_add(1, Ordering::AcqRel);
        }
        let refused = match &self.sender {
            Some(sender) => sender.send(handoff).err().map(|refused| refused.0),
            None => Some(handoff),
        };
        if let Some(Handoff::Written(batch)) = refused {
            // In the write-ahead log already; the finisher stopped because the log failed.
            self.delivery.fail(&Refusal::MaybeStored, batch.completions, []);
        }
    }

    /// Waits until everything handed over is delivered (or, without word that fjall holds
    /// it, answered with storage failures), then stops the thread.
    pub(super) fn stop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    head: u64,
    store: &Store,
    delivery: &Delivery,
    receiver: &Receiver<Handoff>,
    failed: &AtomicBool,
    fatal: &CancellationToken,
    in_hand: &AtomicUsize,
) {
    // Everything before the writer started is durable and in fjall.
    let (mut durable, mut stored) = (head, head);
    // Batches handed over and not yet delivered, oldest first.
    let mut group: Vec<Committed> = Vec::new();
    let take = |handoff, group: &mut Vec<Committed>, stored: &mut u64| match handoff {
        Handoff::Written(batch) => group.push(batch),
        Handoff::Stored(seq) => *stored = seq,
    };
    loop {
        if group.is_empty() {
            match receiver.recv() {
                Ok(handoff) => take(handoff, &mut group, &mut stored),
                Err(_) => return,
            }
        }
        for handoff in receiver.try_iter() {
            take(handoff, &mut group, &mut stored);
        }
        let Some(head) = group.last().map(|batch| batch.head) else { continue };
        // A group of calls only (no new events) needs no fsync.
        let synced = if head > durable { store.sync() } else { Ok(()) };
        // Once the log failed anywhere (here, in the writer, in a checkpoint), nothing more
        // is acknowledged, even what this fsync made durable.
        if let Err(failure) = &synced {
            error!(error = %failure, "cannot make the log durable; no more events will be acknowledged");
        }
        if synced.is_err() || failed.load(Ordering::Acquire) {
            failed.store(true, Ordering::Release);
            fatal.cancel();
            let rest = receiver.iter().filter_map(|handoff| match handoff {
                Handoff::Written(batch) => Some(batch),
                Handoff::Stored(_) => None,
            });
            for batch in group.into_iter().chain(rest) {
                delivery.fail(&Refusal::MaybeStored, batch.completions, []);
            }
            return;
        }
        durable = head;
        // What the writer hands over meanwhile waits for the next group.
        let mut next = Vec::new();
        while stored < head {
            match receiver.recv() {
                Ok(handoff) => take(handoff, &mut next, &mut stored),
                Err(_) => {
                    // The writer stopped before fjall had them: never acknowledge them.
                    for batch in group.into_iter().chain(next) {
                        delivery.fail(&Refusal::MaybeStored, batch.completions, []);
                    }
                    return;
                }
            }
        }
        for batch in std::mem::replace(&mut group, next) {
            delivery.finish(batch);
            in_hand.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;
    use crate::broker::append::Completion;
    use crate::broker::recent::Recent;
    use crate::broker::router::Router;
    use crate::config::StoreConfig;

    /// The writer delivers a batch itself only while the finisher is idle; a batch still
    /// being delivered must keep it busy, or the writer's next batch could overtake it.
    #[test]
    fn busy_until_every_batch_handed_over_is_delivered() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = Store::open(&StoreConfig::new(dir.path()), |_| {}).expect("opens");
        let recent = Arc::new(Recent::new(1 << 20));
        let delivery = Delivery { router: Arc::new(Router::new()), recent, head: Arc::new(watch::channel(0).0) };
        let failed = Arc::new(AtomicBool::new(false));
        let mut finisher = Finisher::start(0, store, delivery, failed, CancellationToken::new()).expect("starts");
        assert!(finisher.is_idle(), "nothing handed over yet");

        let (entered, delivering) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = move || {
            let _ = entered.send(());
            let _ = held.recv();
        };
        let batch =
            Committed { head: 0, events: Arc::new(Vec::new()), completions: vec![Completion::Call(Box::new(hold))] };
        finisher.send(Handoff::Written(batch));
        assert!(!finisher.is_idle(), "handed over, not delivered");
        delivering.recv().expect("the finisher delivers the batch");
        assert!(!finisher.is_idle(), "still delivering");

        release.send(()).expect("the call waits");
        finisher.stop();
        assert!(finisher.is_idle(), "delivered");
    }
}
