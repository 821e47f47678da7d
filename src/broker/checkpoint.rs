//! The checkpoint thread: keeps the high-water mark close behind the acknowledgements, and
//! makes fjall durable at a steady pace so the write-ahead log can reuse its segments.
//!
//! Acknowledgements never wait for it: they wait only for the write-ahead log's fsync. The
//! mark follows every [`TICK`] (one small fsync), so a damaged log record can hide at most
//! that much of what was acknowledged before a crash. A short checkpoint interval keeps each
//! fjall fsync small (a burst of megabytes would stall the write-ahead log's next fsync
//! behind it) and bounds what start-up replays after a crash.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::store::Store;

/// Time between advances of the high-water mark.
const TICK: Duration = Duration::from_millis(10);
/// Ticks between checkpoints (100 ms; 1 s measured slower, 25 ms no faster).
const TICKS_PER_CHECKPOINT: u64 = 10;

pub(super) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread. If a checkpoint or a mark fails, it sets `failed` and cancels
    /// `fatal`.
    pub(super) fn start(
        store: Arc<Store>,
        failed: Arc<AtomicBool>,
        fatal: CancellationToken,
    ) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = channel::<()>();
        let thread = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
            for tick in 1u64.. {
                let last = matches!(stopped.recv_timeout(TICK), Err(RecvTimeoutError::Disconnected));
                let outcome =
                    if last || tick % TICKS_PER_CHECKPOINT == 0 { store.checkpoint() } else { store.mark_durable() };
                if let Err(failure) = outcome {
                    error!(error = %failure, "cannot checkpoint the log; no more events will be acknowledged");
                    failed.store(true, Ordering::Relaxed);
                    fatal.cancel();
                    return;
                }
                if last {
                    return;
                }
            }
        })?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }

    /// Takes a last checkpoint (so the next start has nothing to replay) and stops.
    pub(super) fn stop(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
