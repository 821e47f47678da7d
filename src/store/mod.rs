//! The event log on fjall: one timeline of events, a subject index, the dedup window.
//! Synchronous and network-free; call it from the timeline writer thread or from
//! `spawn_blocking`, never on a tokio worker.
//!
//! Every batch is first written to the write-ahead log (see `wal`), whose fsync is what an
//! acknowledgement waits for, and then to fjall without an fsync; the store's own
//! checkpoint thread (see `checkpoint`) makes fjall durable and lets the write-ahead log
//! reuse its segments.
//!
//! # The durability protocol
//! One writer thread takes each batch through [`Store::write_ahead`] (into the write-ahead
//! log, in the OS: it survives the process being killed) and then [`Store::commit`] (into
//! fjall, without an fsync: reads find it from then on). [`Store::sync`], from any thread
//! and for every batch written so far at once, fdatasyncs the write-ahead log: those
//! batches survive a power loss. So:
//! - a batch may be acknowledged once `sync` returned after its `write_ahead` (or, under a
//!   policy that does not fsync, once `write_ahead` returned);
//! - it may be shown to readers once `commit` returned;
//! - the checkpoint thread advances the high-water mark only to what `sync` or a checkpoint
//!   made durable, and frees a write-ahead log segment only once fjall holds every event in
//!   it durably, so after a crash start-up finds each acknowledged event in one or the other.
//!
//! Keyspaces (integers big-endian, so keys sort numerically):
//! - `events`: `first seq` -> a run of consecutive events (see `run`): a batch becomes a
//!   few values, not one per event, and appends and replays cost per run, not per event.
//! - `index`: per run, one entry per subject and per token prefix listing its sequences
//!   (see `index`), so a literal subject or prefix replays without scanning the log.
//! - `dedup`: `timestamp msg-id` -> seq, so the dedup window is a range from a time.
//!
//! Reads never look past the head the caller passes in: the writer publishes the head only
//! after a batch is committed.

mod checkpoint;
mod error;
mod event;
mod files;
mod hwm;
mod index;
mod run;
mod space;
mod wal;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode, Slice};

use crate::config::{RUN_BYTES, SCAN_BUDGET, StoreConfig};
use crate::subject::{Filter, matches};

use checkpoint::Checkpointer;
pub use error::StoreError;
pub use event::Event;
use files::{DirLock, create_dir_durably, sync_tree};
use hwm::HighWaterMark;
use index::{RunIndex, be_u64, entry_seqs, is_exact, key_seq, literal_prefix, name_of, seq_range};
use run::{RUN_EVENTS, Run};
pub use space::{Shortage, SpaceGuard};
use wal::{Encoded, Recovered, Wal};

/// A message id remembered for deduplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupEntry {
    pub timestamp: u64,
    pub msg_id: Bytes,
    pub seq: u64,
}

/// A batch written to the write-ahead log by [`Store::write_ahead`], for [`Store::commit`]
/// to write to fjall.
pub struct WrittenAhead(Encoded);

/// One chunk of a read: the matching events, and where the next read starts.
#[derive(Debug, Default)]
pub struct Chunk {
    pub events: Vec<Event>,
    pub next: u64,
}

/// The event log.
pub struct Store {
    db: Database,
    events: Keyspace,
    index: Keyspace,
    dedup: Keyspace,
    high_water: Mutex<HighWaterMark>,
    wal: Mutex<Wal>,
    /// The last sequence written to fjall: what a checkpoint covers.
    committed: AtomicU64,
    /// The last sequence made durable by a sync of the write-ahead log (or by start-up).
    durable: AtomicU64,
    /// The last sequence fjall holds durably: what the last checkpoint covered.
    checkpointed: AtomicU64,
    checkpointer: Mutex<Option<Checkpointer>>,
    /// Events whose message ids fjall lost (a damaged journal it cut short) and the
    /// write-ahead log no longer holds: the broker refuses to start if they are recent
    /// enough to matter to the dedup window.
    lost_dedup: Option<std::ops::RangeInclusive<u64>>,
    /// fjall's directory, to name in refusals.
    log_dir: std::path::PathBuf,
    /// Held for the store's life: no other server may touch the directory meanwhile.
    _lock: DirLock,
}

/// Keys under which the `index` and `dedup` keyspaces record the last sequence they
/// cover, written with every batch. fjall flushes keyspaces separately and cuts a damaged
/// journal short without an error, so one keyspace can lose a tail another kept; start-up
/// compares these with the log's head and rebuilds what is missing. Neither can be a real
/// key: an index key has a non-empty subject before its 0x00, a dedup key a message id
/// after its timestamp.
const INDEX_HEAD: &[u8] = b"\x00";
const DEDUP_HEAD: [u8; 8] = [0xff; 8];

impl Store {
    /// Opens (or creates) the log in `config.data`, replays into fjall what only the
    /// write-ahead log holds, checks the result against the high-water mark, checkpoints it,
    /// and starts the checkpoint thread. If a later checkpoint fails, the thread calls
    /// `on_failure` and stops: nothing more may be acknowledged.
    ///
    /// A directory whose first initialisation never completed (no high-water mark yet) is
    /// treated as empty, so a crash during the very first start cannot leave it unopenable.
    ///
    /// # Errors
    /// Engine and I/O failures; [`StoreError::LostAcknowledged`] if the log ends before the
    /// high-water mark; [`StoreError::Corrupt`] if the last event is corrupt.
    pub fn open(
        config: &StoreConfig,
        on_failure: impl Fn(&StoreError) + Send + Sync + 'static,
    ) -> Result<Arc<Store>, StoreError> {
        let store = Arc::new(Store::recover(config)?);
        let checkpointer = Checkpointer::start(Arc::downgrade(&store), config, Box::new(on_failure))?;
        *store.checkpointer.lock().unwrap_or_else(PoisonError::into_inner) = Some(checkpointer);
        Ok(store)
    }

    /// Stops the checkpoint thread after a last checkpoint, so the next start has nothing
    /// to replay. Call it once the writer has stopped.
    pub fn close(&self) {
        let checkpointer = self.checkpointer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut checkpointer) = checkpointer {
            checkpointer.stop();
        }
    }

    /// [`Store::open`] up to the checkpoint thread.
    fn recover(config: &StoreConfig) -> Result<Store, StoreError> {
        let dir = &config.data;
        create_dir_durably(dir)?;
        let lock = DirLock::acquire(dir)?;
        let log_dir = dir.join("log");
        let wal_dir = dir.join("wal");
        let mark_path = dir.join("high-water-mark");
        let fresh = !mark_path.exists();
        if fresh && log_dir.exists() {
            if holds_events(&log_dir) {
                return Err(StoreError::MissingHighWaterMark { path: mark_path.display().to_string() });
            }
            std::fs::remove_dir_all(&log_dir).map_err(|error| StoreError::from(error).opening(&log_dir))?;
        }
        if fresh && wal_dir.exists() {
            // Appends start only once the mark exists, so this holds no record.
            std::fs::remove_dir_all(&wal_dir).map_err(|error| StoreError::from(error).opening(&wal_dir))?;
        }
        let in_log = |error: fjall::Error| StoreError::from(error).opening(&log_dir);
        let db = Database::builder(&log_dir).cache_size(config.cache_bytes).open().map_err(in_log)?;
        let options = || KeyspaceCreateOptions::default().max_memtable_size(config.memtable_bytes);
        // Runs go to blob files and the tree keeps only keys and pointers, so compaction
        // never rewrites event bytes: on a 2.3 M-event load this halved the bytes written
        // and cut the fsync stalls that background writes cause.
        let events = db
            .keyspace("events", || options().with_kv_separation(Some(KvSeparationOptions::default())))
            .map_err(in_log)?;
        let index = db.keyspace("index", options).map_err(in_log)?;
        let dedup = db.keyspace("dedup", options).map_err(in_log)?;
        let high_water = if fresh {
            db.persist(PersistMode::SyncAll).map_err(in_log)?;
            sync_tree(&log_dir)?;
            HighWaterMark::create(&mark_path).map_err(|error| error.opening(&mark_path))?
        } else {
            HighWaterMark::open(&mark_path).map_err(|error| error.opening(&mark_path))?
        };
        let wal = Wal::open(&wal_dir).map_err(|error| error.opening(&wal_dir))?;
        let mut store = Store {
            db,
            events,
            index,
            dedup,
            high_water: Mutex::new(high_water),
            wal: Mutex::new(wal),
            committed: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            checkpointed: AtomicU64::new(0),
            checkpointer: Mutex::new(None),
            lost_dedup: None,
            log_dir: log_dir.clone(),
            _lock: lock,
        };
        let in_log = |error: StoreError| error.opening(&log_dir);
        store.repair_tails().map_err(in_log)?;
        let recovered = store.lock_wal().recover(store.last_seq().map_err(in_log)?).map_err(|e| e.opening(&wal_dir))?;
        for record in recovered {
            store.replay(record).map_err(|error| error.opening(&wal_dir))?;
        }
        let head = store.last_seq().map_err(in_log)?;
        let marked = store.high_water_mark();
        if head < marked {
            return Err(StoreError::LostAcknowledged { head, marked });
        }
        if head > 0 {
            store.get(head).map_err(in_log)?;
        }
        // A checkpoint of everything recovered, so every segment can be reused.
        store.db.persist(PersistMode::SyncData).map_err(|error| in_log(error.into()))?;
        store.lock_mark().advance(head).map_err(|error| error.opening(&mark_path))?;
        for position in [&store.committed, &store.durable, &store.checkpointed] {
            position.store(head, Ordering::Release);
        }
        store.lock_wal().start(head).map_err(|error| error.opening(&wal_dir))?;
        Ok(store)
    }

    /// Brings the `index` and `dedup` keyspaces up to the `events` keyspace's last sequence
    /// where fjall lost their tail: the index is rebuilt from the events; message ids come
    /// back from the write-ahead log if it still holds them, else the range is noted in
    /// `lost_dedup`. Logs written before the heads were recorded have none, and are trusted.
    fn repair_tails(&mut self) -> Result<(), StoreError> {
        let last = self.last_seq()?;
        let head_of = |keyspace: &Keyspace, key: &[u8]| -> Result<Option<u64>, StoreError> {
            Ok(keyspace.get(key)?.map(|value| be_u64(&value)))
        };
        if let Some(indexed) = head_of(&self.index, INDEX_HEAD)?.filter(|&indexed| indexed < last) {
            tracing::warn!(
                from = indexed + 1,
                to = last,
                "the subject index lost its tail; rebuilding it from the log"
            );
            self.reindex(indexed + 1, last)?;
        }
        if let Some(deduped) = head_of(&self.dedup, &DEDUP_HEAD)?.filter(|&deduped| deduped < last) {
            let records = self.lock_wal().recover(deduped)?;
            if records.first().is_some_and(|record| record.first == deduped + 1) {
                tracing::warn!(
                    from = deduped + 1,
                    to = last,
                    "the dedup window lost its tail; restored from the write-ahead log"
                );
                let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
                for record in records.iter().filter(|record| record.first <= last) {
                    let run = Run::parse(record.first, record.events.clone())?;
                    for entry in &record.dedup {
                        let revision = run.event(entry.seq)?.map(|event| event.revision);
                        batch.insert(&self.dedup, dedup_key(entry), dedup_value(entry.seq, revision));
                    }
                }
                batch.insert(&self.dedup, DEDUP_HEAD, last.to_be_bytes());
                batch.commit()?;
            } else {
                self.lost_dedup = Some(deduped + 1..=last);
            }
        }
        Ok(())
    }

    /// Writes the index entries of the events in `from..=to` again, run by run, as
    /// [`Store::insert`] wrote them.
    fn reindex(&self, from: u64, to: u64) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        for guard in self.events.range(from.to_be_bytes()..=to.to_be_bytes()) {
            let (key, value) = guard.into_inner()?;
            let events = Run::parse(be_u64(&key), Bytes::from(value))?.events()?;
            let mut index = RunIndex::default();
            for event in &events {
                index.add(&event.subject, event.seq, event.revision);
            }
            for (key, value) in index.drain() {
                batch.insert(&self.index, key, value);
            }
        }
        batch.insert(&self.index, INDEX_HEAD, to.to_be_bytes());
        batch.commit()?;
        Ok(())
    }

    /// The events whose message ids were lost with a damaged journal, if any (see
    /// [`Store::open`]).
    pub fn lost_dedup(&self) -> Option<std::ops::RangeInclusive<u64>> {
        self.lost_dedup.clone()
    }

    /// Whether message ids were lost (see [`Store::lost_dedup`]) for events appended at or
    /// after `window_start`: a dedup window starting there would miss them.
    ///
    /// # Errors
    /// [`StoreError::DedupLost`] if so; read failures.
    pub fn check_dedup_window(&self, window_start: u64) -> Result<(), StoreError> {
        let Some(lost) = &self.lost_dedup else { return Ok(()) };
        let newest = self.get(*lost.end())?.map_or(u64::MAX, |event| event.timestamp);
        if newest < window_start {
            return Ok(());
        }
        Err(StoreError::DedupLost { path: self.log_dir.display().to_string(), first: *lost.start(), last: *lost.end() })
    }

    /// Writes a record read back from the write-ahead log into fjall.
    fn replay(&self, record: Recovered) -> Result<(), StoreError> {
        let run = Run::parse(record.first, record.events.clone())?;
        if run.last() != record.first + record.count - 1 {
            return Err(StoreError::Corrupt { seq: record.first });
        }
        let events = run.events()?;
        let ends: Vec<usize> = run.record_ends().collect();
        self.insert(&events, &record.events, &ends, &record.dedup, &[])
    }

    fn lock_wal(&self) -> MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_mark(&self) -> MutexGuard<'_, HighWaterMark> {
        self.high_water.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last sequence in the log (0 when empty); found with one seek, not a scan.
    ///
    /// # Errors
    /// Engine failures.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        match self.events.last_key_value() {
            Some(guard) => {
                let (key, value) = guard.into_inner()?;
                Ok(Run::parse(be_u64(&key), Bytes::from(value))?.last())
            }
            None => Ok(0),
        }
    }

    /// The high-water mark: the log is known to hold every event up to it durably. It is
    /// advanced after the fsyncs, not before each acknowledgement (by the checkpoint
    /// thread), so it may trail the last acknowledgement a little; the
    /// write-ahead log's own checksums cover the events after it.
    pub fn high_water_mark(&self) -> u64 {
        self.lock_mark().last()
    }

    /// Writes `events` (consecutive sequences, subjects already validated) with their index
    /// entries, plus new dedup entries and the removal of expired ones. The events and
    /// their dedup entries go to the write-ahead log as one record, then everything to fjall
    /// as ONE atomic batch. Both reach the OS before this returns (so they survive the
    /// process being killed); call [`Store::sync`] to make them survive a power loss.
    /// Keeping the fsync out of the append lets one fsync cover every batch written while
    /// the previous fsync ran.
    ///
    /// # Errors
    /// Any failure is fatal for the log (fjall poisons the database): stop acknowledging.
    pub fn append(&self, events: &[Event], dedup: &[DedupEntry], expired: &[Slice]) -> Result<(), StoreError> {
        let written = self.write_ahead(events, dedup)?;
        self.commit(events, &written, dedup, expired)
    }

    /// The first half of [`Store::append`]: writes the events and their dedup entries to the
    /// write-ahead log. Once [`Store::sync`] has run they are durable, so the timeline
    /// writer can hand the batch on to be synced while it writes it to fjall.
    ///
    /// # Errors
    /// Fatal, as for [`Store::append`].
    pub fn write_ahead(&self, events: &[Event], dedup: &[DedupEntry]) -> Result<WrittenAhead, StoreError> {
        let mut encoded = Encoded::new(events, dedup);
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            self.lock_wal().append(&mut encoded, first.seq, last.seq)?;
        }
        Ok(WrittenAhead(encoded))
    }

    /// The second half of [`Store::append`]: writes a batch already in the write-ahead log
    /// to fjall, as ONE atomic batch, with the removal of `expired` dedup entries. Reads see
    /// the events once this returns.
    ///
    /// # Errors
    /// Fatal, as for [`Store::append`].
    pub fn commit(
        &self,
        events: &[Event],
        written: &WrittenAhead,
        dedup: &[DedupEntry],
        expired: &[Slice],
    ) -> Result<(), StoreError> {
        self.insert(events, written.0.events(), written.0.ends(), dedup, expired)?;
        if let Some(last) = events.last() {
            self.committed.store(last.seq, Ordering::Release);
        }
        Ok(())
    }

    /// Writes one batch to fjall, cutting `encoded` (the events' run records, each ending
    /// at its entry in `ends`) into runs.
    fn insert(
        &self,
        events: &[Event],
        encoded: &[u8],
        ends: &[usize],
        dedup: &[DedupEntry],
        expired: &[Slice],
    ) -> Result<(), StoreError> {
        // Never leave durability unset: fjall then keeps the batch in its own buffer, and
        // a killed process loses it.
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        let mut index = RunIndex::default();
        let (mut run_start, mut run_events) = (0, 0);
        for (i, (event, &end)) in events.iter().zip(ends).enumerate() {
            index.add(&event.subject, event.seq, event.revision);
            run_events += 1;
            if i + 1 == events.len() || end - run_start >= RUN_BYTES || run_events == RUN_EVENTS {
                let first = event.seq + 1 - run_events as u64;
                batch.insert(&self.events, first.to_be_bytes(), Slice::from(&encoded[run_start..end]));
                for (key, value) in index.drain() {
                    batch.insert(&self.index, key, value);
                }
                (run_start, run_events) = (end, 0);
            }
        }
        for entry in dedup {
            // The revision too, so a duplicate is answered without reading its event (the
            // batch's events are consecutive, so it is found by position).
            let position = events.first().and_then(|first| entry.seq.checked_sub(first.seq));
            let event = position.and_then(|i| events.get(usize::try_from(i).ok()?));
            let revision = event.filter(|event| event.seq == entry.seq).map(|event| event.revision);
            batch.insert(&self.dedup, dedup_key(entry), dedup_value(entry.seq, revision));
        }
        for key in expired {
            batch.remove(&self.dedup, key.clone());
        }
        if let Some(last) = events.last() {
            batch.insert(&self.index, INDEX_HEAD, last.seq.to_be_bytes());
            batch.insert(&self.dedup, DEDUP_HEAD, last.seq.to_be_bytes());
        }
        batch.commit()?;
        Ok(())
    }

    /// fdatasyncs the write-ahead log: every event appended so far becomes durable.
    ///
    /// # Errors
    /// Fatal, as for [`Store::append`].
    pub fn sync(&self) -> Result<(), StoreError> {
        // Outside the lock: appends go on while the disk works.
        let (files, appended) = self.lock_wal().take_unsynced();
        for file in files {
            file.sync_data()?;
        }
        self.durable.fetch_max(appended, Ordering::AcqRel);
        Ok(())
    }

    /// Advances the high-water mark to what the write-ahead log holds durably. Cheaper than
    /// a checkpoint (one small fsync), so it can run often and keep the mark close behind
    /// the acknowledgements.
    fn mark_durable(&self) -> Result<(), StoreError> {
        let durable = self.durable.load(Ordering::Acquire);
        self.lock_mark().advance(durable)
    }

    /// Makes fjall itself durable up to the last append, advances the high-water mark to
    /// it, and lets the write-ahead log reuse the segments that only held events before it
    /// (preparing a new one if none is left to reuse).
    fn checkpoint(&self) -> Result<(), StoreError> {
        let committed = self.committed.load(Ordering::Acquire);
        // Not the mark: it follows the write-ahead log, which may be ahead of fjall.
        if committed <= self.checkpointed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.db.persist(PersistMode::SyncData)?;
        self.checkpointed.store(committed, Ordering::Release);
        self.lock_mark().advance(committed)?;
        let spare = {
            let mut wal = self.lock_wal();
            wal.release(committed);
            wal.spare_path()
        };
        // Without a spare, the writer creates the segment it needs itself; only a failure
        // there, where an event waits for it, is fatal.
        if let Some(path) = spare {
            match wal::Segment::create(&path) {
                Ok(segment) => self.lock_wal().add_spare(segment),
                Err(failure) => {
                    tracing::warn!(error = %failure, "cannot prepare a write-ahead log segment ahead of time");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// The event at `seq`.
    ///
    /// # Errors
    /// Engine failures, or [`StoreError::Corrupt`].
    pub fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        match self.run_at(seq)? {
            Some(run) => run.event(seq),
            None => Ok(None),
        }
    }

    /// The run holding `seq`, if any: one reverse seek.
    fn run_at(&self, seq: u64) -> Result<Option<Run>, StoreError> {
        let Some(guard) = self.events.range(..=seq.to_be_bytes()).next_back() else { return Ok(None) };
        let (key, value) = guard.into_inner()?;
        let run = Run::parse(be_u64(&key), Bytes::from(value))?;
        Ok((run.last() >= seq).then_some(run))
    }

    /// Events matching `filter` with sequences in `from..=to`, in order, at most `limit`.
    /// Uses the subject index when the filter starts with a literal token, and scans the
    /// log otherwise; either way one call examines a bounded number of events, and
    /// [`Chunk::next`] says where to continue (`to + 1` once the range is done).
    ///
    /// # Errors
    /// Engine failures, or [`StoreError::Corrupt`].
    pub fn read(&self, filter: &Filter, from: u64, to: u64, limit: usize) -> Result<Chunk, StoreError> {
        let index = name_of(filter).map(|name| (name, is_exact(filter)));
        self.read_matching(index, |subject| matches(filter.as_bytes(), subject), from, to, limit)
    }

    /// [`Store::read`] for the subjects `wanted` accepts, through the index entries named
    /// (with whether they list exactly the wanted subjects) or by a scan of the log.
    fn read_matching(
        &self,
        index: Option<(Vec<u8>, bool)>,
        wanted: impl Fn(&[u8]) -> bool,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Chunk, StoreError> {
        let mut chunk = Chunk { events: Vec::new(), next: to.saturating_add(1) };
        if from > to || limit == 0 {
            chunk.next = from;
            return Ok(chunk);
        }
        let mut examined = 0;
        // Every event is matched, even one the index named: a damaged index can then only
        // hide events, never serve one under the wrong subject.
        let mut take = |event: Event, chunk: &mut Chunk| {
            examined += 1;
            let seq = event.seq;
            if wanted(&event.subject) {
                chunk.events.push(event);
            }
            if chunk.events.len() >= limit || examined >= SCAN_BUDGET {
                chunk.next = seq + 1;
                return false;
            }
            true
        };
        match index {
            Some((name, exact)) => {
                let listed = if exact { limit.min(SCAN_BUDGET) } else { SCAN_BUDGET };
                let seqs = match self.indexed(&name, from, to, listed) {
                    Ok(seqs) => seqs,
                    // The index only speeds reads up: where it cannot be read, scan the log.
                    Err(error) => {
                        tracing::warn!(%error, from, to, "the subject index cannot be read; scanning the log instead");
                        return self.read_matching(None, wanted, from, to, limit);
                    }
                };
                let mut run: Option<Run> = None;
                for &seq in &seqs {
                    let event = (|| {
                        if run.as_ref().is_none_or(|run| run.last() < seq) {
                            run = self.run_at(seq)?;
                        }
                        run.as_ref().map(|run| run.event(seq)).transpose()?.flatten().ok_or(StoreError::Corrupt { seq })
                    })();
                    match event {
                        Ok(event) => {
                            if !take(event, &mut chunk) {
                                break;
                            }
                        }
                        Err(error) => return up_to_damage(chunk, seq, error),
                    }
                }
                if let (true, Some(&last)) = (seqs.len() == listed, seqs.last()) {
                    chunk.next = chunk.next.min(last + 1);
                }
            }
            None => {
                let start = self.run_at(from).map_err(|error| error.at(from))?.map_or(from, |run| run.first());
                // Runs tile the log, so a run that cannot be read starts where the last ended.
                let mut next = from;
                'runs: for guard in self.events.range(start.to_be_bytes()..=to.to_be_bytes()) {
                    let run = match guard.into_inner() {
                        Ok((key, value)) => Run::parse(be_u64(&key), Bytes::from(value)),
                        Err(error) => Err(error.into()),
                    };
                    let run = match run {
                        Ok(run) => run,
                        Err(error) => return up_to_damage(chunk, next, error),
                    };
                    for seq in run.first().max(from)..=run.last().min(to) {
                        let event = match run.event(seq).and_then(|event| event.ok_or(StoreError::Corrupt { seq })) {
                            Ok(event) => event,
                            Err(error) => return up_to_damage(chunk, seq, error),
                        };
                        next = seq + 1;
                        if !take(event, &mut chunk) {
                            break 'runs;
                        }
                    }
                }
            }
        }
        Ok(chunk)
    }

    /// Events matching any of `filters`, as [`Store::read`] (one event once, however many
    /// filters it matches). When every filter starts with a literal token, each is read
    /// through the index and the results merged, so a query such as `orders.42.>` plus
    /// `payments.42.>` never scans the log; otherwise one scan tries each filter in turn.
    ///
    /// # Errors
    /// Engine failures, or [`StoreError::Corrupt`].
    pub fn read_any(&self, filters: &[Filter], from: u64, to: u64, limit: usize) -> Result<Chunk, StoreError> {
        if let [filter] = filters {
            return self.read(filter, from, to, limit);
        }
        if filters.iter().any(|filter| name_of(filter).is_none()) {
            let wanted = |subject: &[u8]| filters.iter().any(|filter| matches(filter.as_bytes(), subject));
            return self.read_matching(None, wanted, from, to, limit);
        }
        // Each filter's chunk holds all of its events before its own `next`; below the
        // lowest of those, the merge is complete.
        let chunks = filters.iter().map(|filter| self.read(filter, from, to, limit)).collect::<Result<Vec<_>, _>>()?;
        let complete_below = chunks.iter().map(|chunk| chunk.next).min().unwrap_or(from);
        let mut events: Vec<Event> =
            chunks.into_iter().flat_map(|chunk| chunk.events).filter(|event| event.seq < complete_below).collect();
        events.sort_unstable_by_key(|event| event.seq);
        events.dedup_by_key(|event| event.seq);
        let next = match events.get(limit) {
            Some(first_left_out) => first_left_out.seq,
            None => complete_below,
        };
        events.truncate(limit);
        Ok(Chunk { events, next })
    }

    /// The sequences the index lists under `name` (ending in 0x00) in
    /// `from..=to`, at most `limit`, in order.
    fn indexed(&self, name: &[u8], from: u64, to: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        // The entry holding `from` may start before it.
        let start = match self.index.range(seq_range(name, 0, from)).next_back() {
            Some(guard) => key_seq(&guard.key()?),
            None => from,
        };
        let mut seqs = Vec::new();
        for guard in self.index.range(seq_range(name, start, to)) {
            let (key, value) = guard.into_inner()?;
            for (seq, _) in entry_seqs(key_seq(&key), &value) {
                if seq > to || seqs.len() == limit {
                    return Ok(seqs);
                }
                if seq >= from {
                    seqs.push(seq);
                }
            }
        }
        Ok(seqs)
    }

    /// The last `(sequence, revision)` the index lists under `name` at or before `head`.
    fn last_indexed(&self, name: &[u8], head: u64) -> Result<Option<(u64, u64)>, StoreError> {
        match self.index.range(seq_range(name, 0, head)).next_back() {
            Some(guard) => {
                let (key, value) = guard.into_inner()?;
                Ok(entry_seqs(key_seq(&key), &value).take_while(|&(seq, _)| seq <= head).last())
            }
            None => Ok(None),
        }
    }

    /// The last event of `subject` at or before `head`: its sequence and revision.
    ///
    /// # Errors
    /// Engine failures.
    pub fn last_of_subject(&self, subject: &[u8], head: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let mut name = subject.to_vec();
        name.push(0);
        match self.last_indexed(&name, head) {
            Ok(last) => Ok(last),
            Err(error) => {
                tracing::warn!(%error, "the subject index cannot be read; scanning the log instead");
                let scan = |from, to| self.read_matching(None, |event: &[u8]| event == subject, from, to, usize::MAX);
                let last = last_read_backwards(scan, 0, head)?;
                Ok(last.map(|event| (event.seq, event.revision)))
            }
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
        if let (Some(name), true) = (name_of(filter), is_exact(filter))
            && let Ok(last) = self.last_indexed(&name, head)
        {
            return Ok(last.map(|(seq, _)| seq).filter(|&seq| seq > after));
        }
        let last = last_read_backwards(|from, to| self.read(filter, from, to, usize::MAX), after, head)?;
        Ok(last.map(|event| event.seq))
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
            if !subject.split(|&b| b == b'.').any(|token| token == b">")
                && matches(filter.as_bytes(), subject)
                && let Some((seq, _)) = self.last_of_subject(subject, head)?
            {
                last.push(seq);
            }
            cursor = subject_end;
        }
        last.sort_unstable();
        Ok(last)
    }

    /// Dedup entries recorded at or after `timestamp`, oldest first, each with its event's
    /// revision where the entry records it (entries written before it did return `None`).
    ///
    /// # Errors
    /// Engine failures.
    pub fn dedup_since(&self, timestamp: u64) -> Result<Vec<(DedupEntry, Option<u64>)>, StoreError> {
        self.dedup
            .range(timestamp.to_be_bytes()..)
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                let entry = DedupEntry {
                    timestamp: be_u64(&key),
                    msg_id: Bytes::copy_from_slice(key.get(8..).unwrap_or_default()),
                    seq: be_u64(&value),
                };
                Ok((entry, value.get(8..16).map(be_u64)))
            })
            .filter(|entry| !matches!(entry, Ok((DedupEntry { msg_id, .. }, _)) if msg_id.is_empty()))
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

/// The last event `read` finds in `after+1..=head`, reading backwards a bounded chunk at a
/// time.
fn last_read_backwards(
    read: impl Fn(u64, u64) -> Result<Chunk, StoreError>,
    after: u64,
    head: u64,
) -> Result<Option<Event>, StoreError> {
    let mut seq = head;
    while seq > after {
        let from = seq.saturating_sub(SCAN_BUDGET as u64 - 1).max(after + 1);
        let mut chunk = read(from, seq)?;
        if let Some(last) = chunk.events.pop() {
            return Ok(Some(last));
        }
        seq = from - 1;
    }
    Ok(None)
}

fn dedup_key(entry: &DedupEntry) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + entry.msg_id.len());
    key.extend_from_slice(&entry.timestamp.to_be_bytes());
    key.extend_from_slice(&entry.msg_id);
    key
}

/// A dedup entry's value: the event's sequence, and its revision when known.
fn dedup_value(seq: u64, revision: Option<u64>) -> Vec<u8> {
    let mut value = seq.to_be_bytes().to_vec();
    if let Some(revision) = revision {
        value.extend_from_slice(&revision.to_be_bytes());
    }
    value
}

/// A read that met damage at `seq`: the events before it, with the next read starting at
/// it (and failing there), so a reader delivers everything up to the damage and then
/// names it.
fn up_to_damage(mut chunk: Chunk, seq: u64, error: StoreError) -> Result<Chunk, StoreError> {
    if chunk.events.is_empty() {
        return Err(error.at(seq));
    }
    chunk.next = seq;
    Ok(chunk)
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

#[cfg(test)]
mod tests;
