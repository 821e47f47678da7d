//! Under `--fsync always`, the finisher thread makes committed batches durable, then
//! delivers and acknowledges them.
//!
//! Every acknowledgement waits for the fsync of the write-ahead log. The writer only writes
//! batches to the OS and goes on admitting; the finisher takes every batch queued for it,
//! so one fsync covers all the batches written while the previous one ran: the busier the
//! log, the bigger the group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use tokio_util::sync::CancellationToken;
use tracing::error;

use super::delivery::{Committed, Delivery};
use crate::store::Store;

/// Batches that may wait for the finisher before the writer waits too, so a slow disk or
/// delivery holds publishers back instead of piling batches (up to `MAX_BATCH_BYTES` of
/// payload each) up in memory; meanwhile the writer's own queue fills, and its next batch
/// takes all of it.
const QUEUE_DEPTH: usize = 4;

pub(super) struct Finisher {
    sender: Option<SyncSender<Committed>>,
    thread: Option<std::thread::JoinHandle<()>>,
    delivery: Delivery,
}

impl Finisher {
    /// Starts the thread. If an fsync fails, it sets `failed`, cancels `fatal`, and answers
    /// that group and every later batch with storage failures.
    pub(super) fn start(
        store: Arc<Store>,
        delivery: Delivery,
        failed: Arc<AtomicBool>,
        fatal: CancellationToken,
    ) -> std::io::Result<Finisher> {
        let (sender, receiver) = sync_channel(QUEUE_DEPTH);
        let thread_delivery = delivery.clone();
        let thread = std::thread::Builder::new()
            .name("finisher".into())
            .spawn(move || run(&store, &thread_delivery, &receiver, &failed, &fatal))?;
        Ok(Finisher { sender: Some(sender), thread: Some(thread), delivery })
    }

    /// Hands over a committed batch, waiting while the queue is full.
    pub(super) fn send(&self, committed: Committed) {
        let refused = match &self.sender {
            Some(sender) => sender.send(committed).err().map(|refused| refused.0),
            None => Some(committed),
        };
        if let Some(committed) = refused {
            self.delivery.fail(committed.completions, None);
        }
    }

    /// Waits until everything handed over is delivered, then stops the thread.
    pub(super) fn stop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    store: &Store,
    delivery: &Delivery,
    receiver: &Receiver<Committed>,
    failed: &AtomicBool,
    fatal: &CancellationToken,
) {
    let mut durable = 0;
    while let Ok(first) = receiver.recv() {
        let group: Vec<Committed> = std::iter::once(first).chain(receiver.try_iter()).collect();
        let head = group.iter().map(|batch| batch.head).max().unwrap_or(0);
        // A group of calls only (no new events) needs no fsync.
        let synced = if head > durable { store.sync() } else { Ok(()) };
        if let Err(failure) = synced {
            error!(error = %failure, "cannot make the log durable; no more events will be acknowledged");
            failed.store(true, Ordering::Relaxed);
            fatal.cancel();
            for batch in group.into_iter().chain(receiver.iter()) {
                delivery.fail(batch.completions, None);
            }
            return;
        }
        durable = head;
        for batch in group {
            delivery.finish(batch);
        }
    }
}
