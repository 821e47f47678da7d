//! The checkpoint thread: keeps the high-water mark close behind the write-ahead log's
//! fsyncs, and makes fjall durable at a steady pace so the write-ahead log can reuse its
//! segments.
//!
//! Acknowledgements never wait for it: they wait only for the write-ahead log's fsync (see
//! [`Store::sync`]). The mark follows every `mark_every` (one small fsync); a checkpoint
//! every `checkpoint_every` keeps each fjall fsync small and bounds what start-up replays
//! after a crash.

use std::sync::Weak;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;

use tracing::error;

use super::{Store, StoreError};
use crate::config::StoreConfig;
use crate::essential;

/// The running thread; stopping it takes a last checkpoint.
pub(super) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread over `store`; it ends when the store is dropped or stopped. If a
    /// checkpoint or a mark fails, it calls `on_failure` and ends: fjall is poisoned then,
    /// and nothing more may be acknowledged.
    pub(super) fn start(
        store: Weak<Store>,
        config: &StoreConfig,
        on_failure: Box<dyn Fn(&StoreError) + Send + Sync>,
    ) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = channel::<()>();
        let tick = config.mark_every;
        let ticks_per_checkpoint = (config.checkpoint_every.as_nanos() / tick.as_nanos().max(1)).max(1);
        let on_failure = std::sync::Arc::new(on_failure);
        let on_death = {
            let on_failure = std::sync::Arc::clone(&on_failure);
            move |panic: &str| {
                on_failure(&StoreError::Io(std::io::Error::other(format!("checkpoint panicked: {panic}"))))
            }
        };
        let thread = essential::spawn("checkpoint", on_death, move || {
            for tick_number in 1u128.. {
                let last = matches!(stopped.recv_timeout(tick), Err(RecvTimeoutError::Disconnected));
                let Some(store) = store.upgrade() else { return };
                let checkpoint = last || tick_number % ticks_per_checkpoint == 0;
                let outcome = if checkpoint { store.checkpoint() } else { store.mark_durable() };
                if let Err(failure) = outcome {
                    error!(error = %failure, "cannot checkpoint the log; no more events will be acknowledged");
                    on_failure(&failure);
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
