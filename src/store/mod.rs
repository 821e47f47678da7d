//! The event log on fjall: one timeline of events, a subject index, the dedup window.
//! Synchronous and network-free; call it from the timeline writer thread or from
//! `spawn_blocking`, never on a tokio worker.
//!
//! Keyspaces (integers big-endian, so keys sort numerically):
//! - `events`: `seq` -> [`Event`] encoding. Appends go to the end; range scans are cheap.
//! - `index`: `subject 0x00 seq` -> revision, and for each proper prefix of the subject
//!   `prefix.> 0x00 seq` -> empty. A literal subject or a literal prefix (`orders.42.>`) is
//!   then one range scan in sequence order, and "last event of S" is one reverse seek.
//!   (Subjects cannot contain 0x00 or a `>` token, so the two kinds never collide.)
//! - `dedup`: `timestamp msg-id` -> seq, so the dedup window is a range from a time.
//!
//! Reads never look past the head the caller passes in: the writer publishes the head only
//! after a batch is committed, and a batch's keys become visible one by one.

mod error;
mod event;
mod hwm;

use std::path::Path;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};

use crate::subject::{Filter, matches};

pub use error::StoreError;
pub use event::Event;
use hwm::HighWaterMark;

/// A message id remembered for deduplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupEntry {
    pub timestamp: u64,
    pub msg_id: Bytes,
    pub seq: u64,
}

/// How a committed batch reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync before the commit returns: the batch survives power loss.
    Sync,
    /// Written to the OS before the commit returns: survives the process being killed,
    /// not a power loss until the next [`Store::sync`].
    Buffered,
}

/// One chunk of a read: the matching events, and where the next read starts.
#[derive(Debug, Default)]
pub struct Chunk {
    pub events: Vec<Event>,
    pub next: u64,
}

/// Block cache. The log is read mostly once, in order (replays), so a large cache buys little.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Memtable size per keyspace: half fjall's 64 MiB default. Smaller ones (16 MiB, with the
/// minimum journal) cut memory further but made flushes and compaction stall the writer for
/// 100+ ms on two cores; at this size the p99 of stored delivery stays under 1 ms.
const MEMTABLE_BYTES: u64 = 32 * 1024 * 1024;

/// Events examined by one scan before it returns, matching or not, so that a selective
/// filter over a long log still answers in bounded time.
const SCAN_BUDGET: usize = 65_536;

/// The event log.
pub struct Store {
    db: Database,
    events: Keyspace,
    index: Keyspace,
    dedup: Keyspace,
    high_water: Mutex<HighWaterMark>,
}

impl Store {
    /// Opens (or creates) the log in `dir` and checks it against the high-water mark.
    ///
    /// A directory whose first initialisation never completed (no high-water mark yet) is
    /// treated as empty, so a crash during the very first start cannot leave it unopenable.
    ///
    /// # Errors
    /// Engine and I/O failures; [`StoreError::LostAcknowledged`] if the log ends before the
    /// last acknowledged sequence; [`StoreError::Corrupt`] if the last event is corrupt.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let log_dir = dir.join("log");
        let mark_path = dir.join("high-water-mark");
        let fresh = !mark_path.exists();
        if fresh && log_dir.exists() {
            if holds_events(&log_dir) {
                return Err(StoreError::MissingHighWaterMark { path: mark_path.display().to_string() });
            }
            std::fs::remove_dir_all(&log_dir)?;
        }
        let db = Database::builder(&log_dir).cache_size(CACHE_BYTES).open()?;
        let options = || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
        let events = db.keyspace("events", options)?;
        let index = db.keyspace("index", options)?;
        let dedup = db.keyspace("dedup", options)?;
        let high_water = if fresh {
            db.persist(PersistMode::SyncAll)?;
            HighWaterMark::create(&mark_path)?
        } else {
            HighWaterMark::open(&mark_path)?
        };
        let store = Store { db, events, index, dedup, high_water: Mutex::new(high_water) };
        let head = store.last_seq()?;
        let acknowledged = store.acknowledged();
        if head < acknowledged {
            return Err(StoreError::LostAcknowledged { head, acknowledged });
        }
        if head > 0 {
            store.get(head)?;
        }
        Ok(store)
    }

    /// The last sequence in the log (0 when empty); found with one seek, not a scan.
    ///
    /// # Errors
    /// Engine failures.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        match self.events.last_key_value() {
            Some(guard) => Ok(be_u64(&guard.key()?)),
            None => Ok(0),
        }
    }

    /// The last sequence recorded as acknowledged-durable.
    pub fn acknowledged(&self) -> u64 {
        self.high_water.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last()
    }

    /// Writes `events` (consecutive sequences, subjects already validated) with their index
    /// entries, plus new dedup entries and the removal of expired ones, as ONE atomic batch.
    ///
    /// # Errors
    /// Any failure is fatal for the log (fjall poisons the database): stop acknowledging.
    pub fn append(
        &self,
        events: &[Event],
        dedup: &[DedupEntry],
        expired: &[Slice],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let persist = match durability {
            Durability::Sync => PersistMode::SyncData,
            Durability::Buffered => PersistMode::Buffer,
        };
        let mut batch = self.db.batch().durability(Some(persist));
        let mut buffer = BytesMut::with_capacity(events.iter().map(Event::encoded_len).sum());
        for event in events {
            event.encode(&mut buffer);
            let value = buffer.split().freeze();
            batch.insert(&self.events, event.seq.to_be_bytes(), Slice::from(value));
            batch.insert(&self.index, index_key(&event.subject, event.seq), event.revision.to_be_bytes());
            for prefix in prefixes(&event.subject) {
                batch.insert(&self.index, prefix_key(prefix, event.seq), []);
            }
        }
        for entry in dedup {
            let mut key = Vec::with_capacity(8 + entry.msg_id.len());
            key.extend_from_slice(&entry.timestamp.to_be_bytes());
            key.extend_from_slice(&entry.msg_id);
            batch.insert(&self.dedup, key, entry.seq.to_be_bytes());
        }
        for key in expired {
            batch.remove(&self.dedup, key.clone());
        }
        batch.commit()?;
        Ok(())
    }

    /// fdatasyncs everything written so far (the `interval` fsync policy's tick).
    ///
    /// # Errors
    /// Fatal, as for [`Store::append`].
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    /// Records that every event up to `seq` is durable and acknowledged (fsynced).
    ///
    /// # Errors
    /// Fatal, as for [`Store::append`].
    pub fn mark_acknowledged(&self, seq: u64) -> Result<(), StoreError> {
        self.high_water.lock().unwrap_or_else(std::sync::PoisonError::into_inner).advance(seq)
    }

    /// The event at `seq`.
    ///
    /// # Errors
    /// Engine failures, or [`StoreError::Corrupt`].
    pub fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.events.get(seq.to_be_bytes())?.map(|value| Event::decode(seq, Bytes::from(value))).transpose()
    }

    /// Events matching `filter` with sequences in `from..=to`, in order, at most `limit`.
    /// Uses the subject index when the filter starts with a literal token, and scans the
    /// log otherwise; either way one call examines a bounded number of events, and
    /// [`Chunk::next`] says where to continue (`to + 1` once the range is done).
    ///
    /// # Errors
    /// Engine failures, or [`StoreError::Corrupt`].
    pub fn read(&self, filter: &Filter, from: u64, to: u64, limit: usize) -> Result<Chunk, StoreError> {
        let mut chunk = Chunk { events: Vec::new(), next: to.saturating_add(1) };
        if from > to || limit == 0 {
            chunk.next = from;
            return Ok(chunk);
        }
        let wanted = |event: &Event| matches(filter.as_bytes(), &event.subject);
        let mut examined = 0;
        let mut take = |seq: u64, event: Event, chunk: &mut Chunk| {
            examined += 1;
            if wanted(&event) {
                chunk.events.push(event);
            }
            if chunk.events.len() >= limit || examined >= SCAN_BUDGET {
                chunk.next = seq + 1;
                return false;
            }
            true
        };
        match index_prefix(filter) {
            Some(prefix) => {
                // The index gives the sequences; where they are dense (a busy subject), one
                // range scan of the log beats a point lookup per event.
                let exact = filter.is_literal() || is_prefix_filter(filter);
                let wanted_seqs = if exact { limit.min(SCAN_BUDGET) } else { SCAN_BUDGET };
                let seqs = self
                    .index
                    .range(seq_range(&prefix, from, to))
                    .take(wanted_seqs)
                    .map(|guard| Ok(index_seq(&guard.key()?)))
                    .collect::<Result<Vec<u64>, StoreError>>()?;
                let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else { return Ok(chunk) };
                if last - first < 4 * seqs.len() as u64 {
                    for guard in self.events.range(first.to_be_bytes()..=last.to_be_bytes()) {
                        let (key, value) = guard.into_inner()?;
                        let seq = be_u64(&key);
                        if seqs.binary_search(&seq).is_ok()
                            && !take(seq, Event::decode(seq, Bytes::from(value))?, &mut chunk)
                        {
                            break;
                        }
                    }
                } else {
                    for &seq in &seqs {
                        let event = self.get(seq)?.ok_or(StoreError::Corrupt { seq })?;
                        if !take(seq, event, &mut chunk) {
                            break;
                        }
                    }
                }
                if seqs.len() == wanted_seqs {
                    chunk.next = chunk.next.min(last + 1);
                }
            }
            None => {
                for guard in self.events.range(from.to_be_bytes()..=to.to_be_bytes()) {
                    let (key, value) = guard.into_inner()?;
                    let seq = be_u64(&key);
                    if !take(seq, Event::decode(seq, Bytes::from(value))?, &mut chunk) {
                        break;
                    }
                }
            }
        }
        Ok(chunk)
    }

    /// The last event of `subject` at or before `head`: its sequence and revision.
    ///
    /// # Errors
    /// Engine failures.
    pub fn last_of_subject(&self, subject: &[u8], head: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let mut key = subject.to_vec();
        key.push(0);
        match self.index.range(seq_range(&key, 0, head)).next_back() {
            Some(guard) => {
                let (key, value) = guard.into_inner()?;
                Ok(Some((index_seq(&key), be_u64(&value))))
            }
            None => Ok(None),
        }
    }

    /// The highest sequence in `after+1..=head` whose subject matches `filter`, if any:
    /// the check behind "reject if anything matching these filters was appended after P".
    ///
    /// # Errors
    /// Engine failures, or [`StoreError::Corrupt`].
    pub fn last_matching(&self, filter: &Filter, after: u64, head: u64) -> Result<Option<u64>, StoreError> {
        if after >= head {
            return Ok(None);
        }
        let exact = filter.is_literal() || is_prefix_filter(filter);
        if let (Some(prefix), true) = (index_prefix(filter), exact) {
            let last = self.index.range(seq_range(&prefix, after + 1, head)).next_back();
            return last.map(|guard| Ok(index_seq(&guard.key()?))).transpose();
        }
        let mut seq = head;
        while seq > after {
            let from = seq.saturating_sub(SCAN_BUDGET as u64 - 1).max(after + 1);
            let chunk = self.read(filter, from, seq, usize::MAX)?;
            if let Some(last) = chunk.events.last() {
                return Ok(Some(last.seq));
            }
            seq = from - 1;
        }
        Ok(None)
    }

    /// The first sequence whose timestamp is at or after `timestamp` (or `head + 1`), by
    /// binary search: timestamps never decrease along the log.
    ///
    /// # Errors
    /// Engine failures, or [`StoreError::Corrupt`].
    pub fn first_at_or_after(&self, timestamp: u64, head: u64) -> Result<u64, StoreError> {
        let (mut low, mut high) = (1, head + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            let event = self.get(mid)?.ok_or(StoreError::Corrupt { seq: mid })?;
            if event.timestamp < timestamp {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }

    /// The last sequence (at or before `head`) of every subject matching `filter`, sorted.
    ///
    /// # Errors
    /// Engine failures.
    pub fn last_per_subject(&self, filter: &Filter, head: u64) -> Result<Vec<u64>, StoreError> {
        let literal_prefix = literal_prefix(filter);
        let mut last = Vec::new();
        let mut cursor = literal_prefix.to_vec();
        loop {
            let Some(guard) = self.index.range(cursor.clone()..).next() else { break };
            let key = guard.key()?;
            if !key.starts_with(literal_prefix) {
                break;
            }
            let subject = &key[..key.len().saturating_sub(9)];
            let mut subject_end = subject.to_vec();
            subject_end.push(1);
            if !subject.split(|&b| b == b'.').any(|token| token == b">") && matches(filter.as_bytes(), subject) {
                if let Some((seq, _)) = self.last_of_subject(subject, head)? {
                    last.push(seq);
                }
            }
            cursor = subject_end;
        }
        last.sort_unstable();
        Ok(last)
    }

    /// Dedup entries recorded at or after `timestamp`, oldest first.
    ///
    /// # Errors
    /// Engine failures.
    pub fn dedup_since(&self, timestamp: u64) -> Result<Vec<DedupEntry>, StoreError> {
        self.dedup
            .range(timestamp.to_be_bytes()..)
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                Ok(DedupEntry {
                    timestamp: be_u64(&key),
                    msg_id: Bytes::copy_from_slice(key.get(8..).unwrap_or_default()),
                    seq: be_u64(&value),
                })
            })
            .collect()
    }

    /// Keys of dedup entries older than `timestamp`, at most `limit`, for removal in the
    /// next append batch.
    ///
    /// # Errors
    /// Engine failures.
    pub fn dedup_expired(&self, timestamp: u64, limit: usize) -> Result<Vec<Slice>, StoreError> {
        self.dedup.range(..timestamp.to_be_bytes()).take(limit).map(|guard| Ok(guard.key()?)).collect()
    }
}

/// Whether a log directory without a high-water mark holds events. A crash during the very
/// first start leaves a log that may not even open, but never one with events: the mark is
/// created before anything is appended. So such a log is wiped, and any other is refused.
fn holds_events(log_dir: &Path) -> bool {
    let Ok(db) = Database::builder(log_dir).open() else { return false };
    if !db.keyspace_exists("events") {
        return false;
    }
    let events = db.keyspace("events", KeyspaceCreateOptions::default);
    events.is_ok_and(|events| events.first_key_value().is_some())
}

/// A big-endian u64 from the first 8 bytes (event keys, dedup timestamps and values).
fn be_u64(bytes: &[u8]) -> u64 {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// The sequence at the end of an index key (`subject 0x00 seq`).
fn index_seq(key: &[u8]) -> u64 {
    be_u64(&key[key.len().saturating_sub(8)..])
}

fn index_key(subject: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(subject.len() + 9);
    key.extend_from_slice(subject);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn prefix_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 11);
    key.extend_from_slice(prefix);
    key.put_slice(b".>");
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Every proper token prefix of a subject: `a.b.c` -> `a`, `a.b`.
fn prefixes(subject: &[u8]) -> impl Iterator<Item = &[u8]> {
    subject.iter().enumerate().filter(|&(_, &b)| b == b'.').map(|(i, _)| &subject[..i])
}

/// The literal tokens before the first wildcard, with their trailing dot (`orders.*.x` ->
/// `orders.`), or the whole subject for a literal filter.
fn literal_prefix(filter: &Filter) -> &[u8] {
    let bytes = filter.as_bytes();
    let mut end = 0;
    for token in bytes.split(|&b| b == b'.') {
        if token == b"*" || token == b">" {
            return &bytes[..end];
        }
        end += token.len() + 1;
    }
    bytes
}

/// `prefix.>` with no other wildcard.
fn is_prefix_filter(filter: &Filter) -> bool {
    let bytes = filter.as_bytes();
    bytes.ends_with(b".>") && literal_prefix(filter).len() == bytes.len() - 1
}

/// The index key prefix (with its 0x00) that covers every subject `filter` can match, if
/// the filter starts with a literal token: the literal itself, or `literal-prefix.>`.
fn index_prefix(filter: &Filter) -> Option<Vec<u8>> {
    if filter.is_literal() {
        let mut key = filter.as_bytes().to_vec();
        key.push(0);
        return Some(key);
    }
    let prefix = literal_prefix(filter);
    let prefix = prefix.strip_suffix(b".")?;
    let mut key = prefix.to_vec();
    key.extend_from_slice(b".>");
    key.push(0);
    Some(key)
}

/// Index keys under `prefix` (which ends in 0x00) with sequences in `from..=to`.
fn seq_range(prefix: &[u8], from: u64, to: u64) -> std::ops::RangeInclusive<Vec<u8>> {
    let mut start = prefix.to_vec();
    start.extend_from_slice(&from.to_be_bytes());
    let mut end = prefix.to_vec();
    end.extend_from_slice(&to.to_be_bytes());
    start..=end
}

#[cfg(test)]
mod tests;
