//! The one reader of the timeline: a cursor that reads the events matching its filters in
//! sequence order, from the store up to the head, then waits for the head to move and
//! reads on, served from the [`Recent`] batches while it keeps up (as rumqttd's readers
//! do). Catch-up subscriptions and queries are cursors; consumers and webhooks will be.
//!
//! Replay and live are one code path: a read never goes past the head it saw, the head
//! moves only once the store and the recent batches both hold everything up to it, and
//! the position advances only over what was read. So nothing falls between the history
//! and the live events, nothing comes twice, and a reader that falls behind (or starts
//! far back) simply reads the store until it catches up. The write path knows nothing of
//! cursors: it pushes each batch to [`Recent`] and moves the head.

use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

use super::recent::Recent;
use crate::config::STORE_READERS;
use crate::store::{Event, Store, StoreError};
use crate::subject::Filter;

/// The read side of the timeline: what every cursor reads from.
#[derive(Clone)]
pub(crate) struct Log {
    pub store: Arc<Store>,
    pub recent: Arc<Recent>,
    /// The last sequence committed and visible to readers.
    pub head: watch::Receiver<u64>,
}

impl Log {
    pub(crate) fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A cursor over the events matching any of `filters`, positioned after `after`.
    pub(crate) fn cursor(&self, filters: Arc<[Filter]>, after: u64) -> Cursor {
        Cursor { log: self.clone(), filters, position: after }
    }
}

/// A reader's position in the timeline.
pub(crate) struct Cursor {
    log: Log,
    filters: Arc<[Filter]>,
    /// The last sequence read (delivered, or passed over as not matching).
    position: u64,
}

impl Cursor {
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// The store it reads, for a reader's own lookups.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.log.store
    }

    /// The head as last seen; [`Cursor::wait`] waits for it to move.
    pub(crate) fn head(&self) -> u64 {
        self.log.head()
    }

    /// The next matching events after the position, up to `to` (at most the head) and at
    /// most `limit`, in order: from the recent batches when they still hold the position,
    /// else from the store (a bounded read, off the async workers). The position advances
    /// over everything examined, so an empty read may still move it; it stays put only at
    /// `to`.
    ///
    /// # Errors
    /// A store read failure (a corrupt or unreadable event); the position stays before it.
    pub(crate) async fn read(&mut self, to: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let to = to.min(self.head());
        if self.position >= to {
            return Ok(Vec::new());
        }
        let (events, examined) = match self.log.recent.read(&self.filters, self.position, to, limit) {
            Some(read) => read,
            None => {
                let (store, filters, from) =
                    (Arc::clone(&self.log.store), Arc::clone(&self.filters), self.position + 1);
                let chunk = blocking(move || store.read_any(&filters, from, to, limit)).await?;
                (chunk.events, chunk.next - 1)
            }
        };
        self.position = examined;
        Ok(events)
    }

    /// Waits until the head moves past the position.
    pub(crate) async fn wait(&mut self) {
        let position = self.position;
        // The sender lives as long as the broker; if it is gone, so is every wait.
        let _ = self.log.head.wait_for(|&head| head > position).await;
    }
}

/// Store reads running at once, server-wide: readers past it wait their turn, so many
/// queries cannot take every core (or hundreds of blocking threads) from the write path.
static STORE_READS: Semaphore = Semaphore::const_new(STORE_READERS);

/// Runs store work off the async workers, at most [`STORE_READERS`] at once. A reader
/// dropped while it waits (its client gone) never starts; one already running finishes
/// its bounded chunk (see [`SCAN_BUDGET`](crate::config::SCAN_BUDGET)).
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let _turn = STORE_READS.acquire().await;
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Io(std::io::Error::other(format!("log read task failed: {join}")))),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::config::StoreConfig;

    /// Events `first..first + n`, on `a.<seq % 3>`, payload `tag`.
    fn events(first: u64, n: u64, tag: &'static str) -> Vec<Event> {
        (first..first + n)
            .map(|seq| Event {
                seq,
                timestamp: seq,
                revision: 1,
                subject: Bytes::from(format!("a.{}", seq % 3)),
                headers: None,
                payload: Bytes::from_static(tag.as_bytes()),
            })
            .collect()
    }

    /// The write path, as far as readers can tell: the store, then the recent batches,
    /// then the head. The recent copy is tagged `recent` (the store's is `store`), so the
    /// test sees which one served each event.
    struct Writer {
        store: Arc<Store>,
        recent: Arc<Recent>,
        head: watch::Sender<u64>,
    }

    impl Writer {
        fn append(&self, n: u64) {
            let first = *self.head.borrow() + 1;
            self.store.append(&events(first, n, "store"), &[], &[]).expect("appends");
            self.recent.push(&Arc::new(events(first, n, "recent")));
            self.head.send_replace(first + n - 1);
        }
    }

    fn log(dir: &std::path::Path, recent_bytes: usize) -> (Writer, Log) {
        let store = Store::open(&StoreConfig::new(dir), |_| {}).expect("opens");
        let recent = Arc::new(Recent::new(recent_bytes));
        let (head, receiver) = watch::channel(0);
        (Writer { store: Arc::clone(&store), recent: Arc::clone(&recent), head }, Log { store, recent, head: receiver })
    }

    /// Appends land between every two reads, including right as the cursor reaches the head
    /// (the replay-to-live handover): every matching event comes once, in order; history
    /// comes from the store, and once the cursor keeps up, from the recent batches.
    #[tokio::test]
    async fn appends_during_the_handover_are_read_once_in_order() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (writer, log) = log(dir.path(), 1 << 20);
        // History only the store holds, as after a restart.
        writer.store.append(&events(1, 1_000, "store"), &[], &[]).expect("appends");
        writer.head.send_replace(1_000);
        let filter: Arc<[Filter]> = Arc::new([Filter::new(Bytes::from_static(b"a.1")).expect("filter")]);
        let mut cursor = log.cursor(filter, 0);
        let mut read = Vec::new();
        loop {
            read.extend(cursor.read(u64::MAX, 50).await.expect("reads"));
            if cursor.position() < cursor.head() {
                // Forced in between two reads of the history.
                writer.append(7);
            } else if cursor.head() < 1_300 {
                // At the head: the next append comes while the cursor waits for it.
                tokio::join!(cursor.wait(), async { writer.append(7) });
            } else {
                break;
            }
        }
        let seqs: Vec<u64> = read.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (1..=seqs[seqs.len() - 1]).filter(|seq| seq % 3 == 1).collect();
        assert_eq!(seqs, expected, "gapless, no duplicate, in order");
        assert!(read[..300].iter().all(|e| e.payload == "store"), "history from the store");
        assert!(read[read.len() - 20..].iter().all(|e| e.payload == "recent"), "live from the recent batches");
    }

    /// A cursor that falls behind what the recent batches hold reads the store again.
    #[tokio::test]
    async fn a_cursor_behind_the_recent_batches_reads_the_store() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (writer, log) = log(dir.path(), 1_000);
        let mut cursor = log.cursor(Arc::new([Filter::everything()]), 0);
        writer.append(10);
        assert_eq!(cursor.read(u64::MAX, 100).await.expect("reads").len(), 10);
        for _ in 0..20 {
            writer.append(10);
        }
        let behind = cursor.read(u64::MAX, 1_000).await.expect("reads");
        assert_eq!(behind.first().map(|e| (e.seq, &e.payload[..])), Some((11, &b"store"[..])));
        assert_eq!(cursor.position(), 210);
        assert!(cursor.read(u64::MAX, 1_000).await.expect("reads").is_empty(), "at the head");
    }
}
