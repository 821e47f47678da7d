//! Runs: consecutive events stored as ONE fjall value, keyed by the first sequence.
//!
//! A per-event key made every append several memtable inserts and every replayed event a
//! separate engine lookup; a run turns a whole batch into a few inserts and lets a replay
//! decode events straight out of one block. The value is a sequence of records
//! `len u32 | event encoding` (see [`Event::encode`]), holding sequences `first`,
//! `first + 1`, ... with no gap. Each record keeps its own checksum over its sequence, so a
//! record read at the wrong position is caught like a flipped bit.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Event, StoreError};

/// Events one run holds at most, so index entries can address them with `u16` offsets.
pub(super) const RUN_EVENTS: usize = 4096;

/// A decoded run: where each record starts, so single events decode without the rest.
pub(super) struct Run {
    first: u64,
    value: Bytes,
    /// Start and end of each record's event encoding within `value`.
    records: Vec<(usize, usize)>,
}

impl Run {
    /// Checks the framing of a stored run (each record's checksum is checked on decode).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming `first` if the records do not tile the value.
    pub(super) fn parse(first: u64, value: Bytes) -> Result<Run, StoreError> {
        let mut records = Vec::new();
        let mut at = 0;
        while at < value.len() {
            let len = value
                .get(at..at + 4)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u32::from_be_bytes)
                .and_then(|len| usize::try_from(len).ok())
                .ok_or(StoreError::Corrupt { seq: first })?;
            let end = at + 4 + len;
            if end > value.len() {
                return Err(StoreError::Corrupt { seq: first });
            }
            records.push((at + 4, end));
            at = end;
        }
        if records.is_empty() {
            return Err(StoreError::Corrupt { seq: first });
        }
        Ok(Run { first, value, records })
    }

    pub(super) fn first(&self) -> u64 {
        self.first
    }

    pub(super) fn last(&self) -> u64 {
        self.first + self.records.len() as u64 - 1
    }

    /// Where each record ends in the value: the run's events can be cut into smaller runs.
    pub(super) fn record_ends(&self) -> impl Iterator<Item = usize> + '_ {
        self.records.iter().map(|&(_, end)| end)
    }

    /// The event at `seq`, if this run holds it.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if its checksum or framing does not hold.
    pub(super) fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        let Some(&(start, end)) = seq.checked_sub(self.first).and_then(|i| self.records.get(usize::try_from(i).ok()?))
        else {
            return Ok(None);
        };
        Event::decode(seq, self.value.slice(start..end)).map(Some)
    }

    /// Every event of the run, in order.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the first event whose checksum or framing does not hold.
    pub(super) fn events(&self) -> Result<Vec<Event>, StoreError> {
        (self.first..=self.last()).map(|seq| self.event(seq)?.ok_or(StoreError::Corrupt { seq })).collect()
    }
}

/// Appends `event` as the next record of a run being built.
pub(super) fn push_record(run: &mut BytesMut, event: &Event) {
    run.reserve(4 + event.encoded_len());
    run.put_u32(u32::try_from(event.encoded_len()).unwrap_or(u32::MAX));
    event.encode(run);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            timestamp: 7,
            revision: seq,
            subject: Bytes::from_static(b"a.b"),
            headers: None,
            payload: Bytes::from(format!("payload {seq}")),
        }
    }

    fn encoded(first: u64, n: u64) -> Bytes {
        let mut run = BytesMut::new();
        for seq in first..first + n {
            push_record(&mut run, &event(seq));
        }
        run.freeze()
    }

    #[test]
    fn holds_exactly_its_consecutive_events() {
        let run = Run::parse(10, encoded(10, 5)).expect("parses");
        assert_eq!((run.first(), run.last()), (10, 14));
        for seq in 10..15 {
            assert_eq!(run.event(seq).expect("decodes"), Some(event(seq)));
        }
        assert_eq!(run.event(9).expect("outside"), None);
        assert_eq!(run.event(15).expect("outside"), None);
    }

    #[test]
    fn a_run_read_under_the_wrong_key_or_cut_short_is_caught() {
        let good = encoded(10, 3);
        let shifted = Run::parse(11, good.clone()).expect("framing holds");
        assert!(matches!(shifted.event(11), Err(StoreError::Corrupt { seq: 11 })));
        for len in [0, 3, good.len() - 1] {
            assert!(Run::parse(10, good.slice(..len)).is_err(), "cut to {len} not caught");
        }
    }
}
