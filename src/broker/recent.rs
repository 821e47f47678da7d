//! The recently committed batches, kept in memory so that readers following the head
//! (catch-up subscriptions once live, and every later kind of reader) read them here
//! instead of from fjall.
//!
//! The write path pushes each committed batch before it moves the head, so every sequence
//! from the oldest batch held up to the head is here, without a gap. The oldest batches
//! are dropped once the events held pass a byte bound; a reader that fell that far behind
//! reads the store instead.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::Event;
use crate::subject::Filter;

/// Committed batches, oldest first.
pub(super) struct Recent {
    held: Mutex<Held>,
    /// Encoded bytes held at most (the newest batch is kept whatever its size).
    max_bytes: usize,
}

#[derive(Default)]
struct Held {
    batches: VecDeque<Arc<Vec<Event>>>,
    bytes: usize,
}

impl Recent {
    pub(super) fn new(max_bytes: usize) -> Recent {
        Recent { held: Mutex::new(Held::default()), max_bytes }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a committed batch (consecutive sequences, following the last one pushed),
    /// before the head moves past it.
    pub(super) fn push(&self, batch: &Arc<Vec<Event>>) {
        if batch.is_empty() {
            return;
        }
        let size = bytes(batch);
        let mut held = self.held();
        held.batches.push_back(Arc::clone(batch));
        held.bytes += size;
        while held.bytes > self.max_bytes && held.batches.len() > 1 {
            if let Some(oldest) = held.batches.pop_front() {
                held.bytes -= bytes(&oldest);
            }
        }
    }

    /// The events after `after` up to `to` matching any of `filters`, at most `limit`, and
    /// the last sequence examined; `None` if the oldest batch held starts after `after + 1`,
    /// so the store must be read instead. The lock is held only to take the batches.
    pub(super) fn read(&self, filters: &[Filter], after: u64, to: u64, limit: usize) -> Option<(Vec<Event>, u64)> {
        let batches: Vec<Arc<Vec<Event>>> = {
            let held = self.held();
            let first = held.batches.front()?.first()?.seq;
            if first > after + 1 {
                return None;
            }
            held.batches.iter().filter(|batch| batch.last().is_some_and(|last| last.seq > after)).cloned().collect()
        };
        let (mut events, mut examined) = (Vec::new(), after);
        let wanted = batches.iter().flat_map(|batch| batch.iter()).skip_while(|event| event.seq <= after);
        for event in wanted.take_while(|event| event.seq <= to) {
            examined = event.seq;
            if filters.iter().any(|filter| filter.matches(&event.subject)) {
                events.push(event.clone());
                if events.len() == limit {
                    break;
                }
            }
        }
        Some((events, examined))
    }
}

/// The bytes a batch holds, as encoded (close to what it pins in memory).
fn bytes(batch: &[Event]) -> usize {
    batch.iter().map(Event::encoded_len).sum()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> Arc<Vec<Event>> {
        let event = |seq: u64| Event {
            seq,
            timestamp: seq,
            revision: 1,
            subject: Bytes::from(if seq.is_multiple_of(2) { "even" } else { "odd" }),
            headers: None,
            payload: Bytes::from_static(&[0; 100]),
        };
        Arc::new(seqs.map(event).collect())
    }

    fn seqs(read: Option<(Vec<Event>, u64)>) -> Option<(Vec<u64>, u64)> {
        read.map(|(events, examined)| (events.iter().map(|e| e.seq).collect(), examined))
    }

    #[test]
    fn reads_within_what_it_holds_and_refuses_what_it_dropped() {
        let one_batch = bytes(&batch(1..=10));
        let recent = Recent::new(2 * one_batch);
        let everything = [Filter::everything()];
        assert_eq!(seqs(recent.read(&everything, 0, 0, 10)), None, "nothing held yet");
        for first in [1, 11, 21] {
            recent.push(&batch(first..=first + 9));
        }
        assert_eq!(seqs(recent.read(&everything, 0, 30, 100)), None, "1..=10 was dropped");
        assert_eq!(seqs(recent.read(&everything, 10, 13, 100)), Some((vec![11, 12, 13], 13)));
        assert_eq!(seqs(recent.read(&everything, 18, 30, 4)), Some((vec![19, 20, 21, 22], 22)), "across batches");
        let even = [Filter::new(Bytes::from_static(b"even")).expect("filter")];
        assert_eq!(seqs(recent.read(&even, 24, 27, 100)), Some((vec![26], 27)), "examined past the last match");
        assert_eq!(seqs(recent.read(&even, 30, 30, 100)), Some((vec![], 30)), "at the head");
    }
}
