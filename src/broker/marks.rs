//! The high-water mark's own thread, so its fsync overlaps the next batch's commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::store::Store;

/// Records the durable head in the store's high-water mark on a thread of its own, so its
/// fsync can overlap the next batch's commit. Acknowledgements wait for it (the writer's `finish`),
/// so the mark always covers every acknowledged event.
pub(super) struct HighWaterMarks {
    sender: Option<std::sync::mpsc::Sender<u64>>,
    recorded: std::sync::mpsc::Receiver<u64>,
    /// The highest head asked for, and the highest known to be recorded.
    requested: u64,
    done: u64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HighWaterMarks {
    pub(super) fn start(store: Arc<Store>, failed: Arc<AtomicBool>, fatal: CancellationToken) -> std::io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::channel::<u64>();
        let (report, recorded) = std::sync::mpsc::channel::<u64>();
        let thread = std::thread::Builder::new().name("high-water-mark".into()).spawn(move || {
            while let Ok(mut head) = receiver.recv() {
                head = receiver.try_iter().fold(head, u64::max);
                if let Err(failure) = store.mark_acknowledged(head) {
                    error!(error = %failure, "cannot record the high-water mark; no more events will be acknowledged");
                    failed.store(true, Ordering::Relaxed);
                    fatal.cancel();
                    return;
                }
                let _ = report.send(head);
            }
        })?;
        Ok(HighWaterMarks { sender: Some(sender), recorded, requested: 0, done: 0, thread: Some(thread) })
    }

    /// Asks for `head` to be recorded (events up to it are durable).
    pub(super) fn advance(&mut self, head: u64) {
        if let Some(sender) = &self.sender {
            self.requested = self.requested.max(head);
            let _ = sender.send(head);
        }
    }

    /// Waits until `head` (as far as it was asked for) is recorded; false if it never
    /// will be (the mark failed).
    pub(super) fn wait(&mut self, head: u64) -> bool {
        while self.done < head.min(self.requested) {
            match self.recorded.recv() {
                Ok(recorded) => self.done = self.done.max(recorded),
                Err(_) => return false,
            }
        }
        true
    }

    /// Records what is pending and stops, releasing the store.
    pub(super) fn finish(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
