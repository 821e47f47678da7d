//! The timeline writer: the one place that allocates sequences and appends to the log.
//!
//! Connections hand it [`Request`]s over a bounded channel (a flood of publishers waits
//! there instead of growing memory), one per read of their socket rather than one per
//! message. Its thread drains whatever is queued, checks each append's conditions (dedup,
//! expected sequences, unchanged-since) against the log plus the batch so far, assigns
//! sequences, and writes ONE batch to the store (to the OS, not yet fsynced). Then the
//! batch is made durable per the fsync policy, fanned out live in sequence order, and only
//! then acknowledged: under `always` by the finisher thread, whose one fsync covers every
//! batch written meanwhile (group commit; see [`super::finisher`]), or by this thread when
//! nothing else is in flight; under `interval` and `never` right away on this thread. So a
//! subscriber never sees an event that a crash could take back (with `always`), and live
//! delivery and replay agree on order. The writer knows appends only as the vocabulary of
//! [`super::append`]: nothing of the sessions they came from.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::append::{Admitted, Append, Committed, Completion, Outcome, Request, Stored};
use super::delivery::Delivery;
use super::finisher::{Finisher, Handoff};
use super::recent::Recent;
use super::router::Router;
use crate::config::{
    Config, FsyncPolicy, WRITER_BATCH_APPENDS, WRITER_BATCH_BYTES, WRITER_QUEUE_APPENDS, WRITER_QUEUE_REQUESTS,
    WRITER_SUBJECT_CACHE, WRITER_SUBJECT_CACHE_BYTES,
};
use crate::essential;
use crate::protocol::Refusal;
use crate::store::{DedupEntry, Event, Shortage, SpaceGuard, Store, StoreError};
use crate::subject::matches;

/// The handle connections use to reach the writer.
#[derive(Clone)]
pub struct Timeline {
    requests: mpsc::Sender<Request>,
    /// One permit per append that may be queued (see [`WRITER_QUEUE_APPENDS`]); the writer gives
    /// them back as it takes requests, and closes it when it stops.
    queued: Arc<Semaphore>,
    head: watch::Receiver<u64>,
    failed: Arc<AtomicBool>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Timeline {
    /// Starts the writer thread over `store`. `fatal` is cancelled if the log fails, so
    /// the process can stop (it must not go on acknowledging).
    ///
    /// # Errors
    /// Reading the dedup window from the store, or spawning the thread.
    pub(crate) fn start(
        store: Arc<Store>,
        router: Arc<Router>,
        recent: Arc<Recent>,
        config: &Config,
        failed: Arc<AtomicBool>,
        fatal: CancellationToken,
    ) -> Result<Timeline, StoreError> {
        let head = store.last_seq()?;
        let last_timestamp = match head {
            0 => 0,
            seq => store.get(seq)?.map_or(0, |event| event.timestamp),
        };
        let (requests, receiver) = mpsc::channel(WRITER_QUEUE_REQUESTS);
        let (head_sender, head_receiver) = watch::channel(head);
        let delivery = Delivery { router, recent, head: Arc::new(head_sender) };
        let finishing = match config.store.fsync {
            FsyncPolicy::Always => Finishing::Finisher(Finisher::start(
                head,
                Arc::clone(&store),
                delivery.clone(),
                Arc::clone(&failed),
                fatal.clone(),
            )?),
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => Finishing::Inline,
        };
        let queued = Arc::new(Semaphore::new(WRITER_QUEUE_APPENDS));
        let mut writer = Writer {
            queued: Arc::clone(&queued),
            // A batch is fanned out at once: alone, it must never make a subscriber a slow
            // consumer.
            max_batch_bytes: WRITER_BATCH_BYTES.min(config.limits.max_pending / 4),
            spin: config.broker.writer_spin,
            store,
            space: SpaceGuard::new(&config.store.data, config.store.min_free_bytes),
            dedup_window: nanos(config.broker.dedup_window),
            head,
            last_timestamp,
            subjects: HashMap::new(),
            subject_bytes: 0,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            dedup_backlog: true,
            failed: Arc::clone(&failed),
            fatal,
            delivery,
            finishing,
        };
        writer.load_dedup_window()?;
        let raise = super::raise_failure(&failed, &writer.fatal);
        let thread = essential::spawn("timeline-writer", move |_| raise(), move || writer.run(receiver))?;
        if let FsyncPolicy::Interval(every) = config.store.fsync {
            // A weak sender: the ticker must not keep the writer alive.
            let ticks = requests.downgrade();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                loop {
                    interval.tick().await;
                    let Some(ticks) = ticks.upgrade() else { break };
                    if ticks.send(Request::Sync).await.is_err() {
                        break;
                    }
                }
            });
        }
        let writer = Arc::new(std::sync::Mutex::new(Some(thread)));
        Ok(Timeline { requests, queued, head: head_receiver, failed, writer })
    }

    /// Lets the writer finish what is queued, stops it and waits until the log is closed.
    pub async fn stop(&self) {
        let _ = self.requests.send(Request::Stop).await;
        let thread = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Queues a request, waiting while the writer's queue is full (backpressure).
    ///
    /// # Errors
    /// The request back, once the writer has stopped.
    pub(crate) async fn send(&self, request: Request) -> Result<(), Request> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(request);
        }
        if let Request::Appends(appends) = &request {
            let count = u32::try_from(appends.len()).unwrap_or(u32::MAX);
            match self.queued.acquire_many(count).await {
                Ok(permits) => permits.forget(),
                Err(_) => return Err(request),
            }
        }
        self.requests.send(request).await.map_err(|rejected| rejected.0)
    }

    /// The head as readers see it: the last sequence stored and fanned out live.
    pub(crate) fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}

struct Writer {
    queued: Arc<Semaphore>,
    max_batch_bytes: usize,
    /// How long to look for the next request before parking (see [`next_request`]).
    spin: Duration,
    store: Arc<Store>,
    /// Refuses new events while the disk is below its free-space reserve.
    space: SpaceGuard,
    dedup_window: u64,
    head: u64,
    last_timestamp: u64,
    /// subject -> (last sequence, revision), for revisions and condition checks.
    subjects: HashMap<Bytes, (u64, u64)>,
    /// The bytes of the subjects in `subjects`.
    subject_bytes: usize,
    /// msg id -> (sequence, revision) within the dedup window, and the ids by time.
    dedup: HashMap<Bytes, (u64, u64)>,
    dedup_order: VecDeque<(u64, Bytes, u64)>,
    /// Whether the store may still hold dedup entries older than the window.
    dedup_backlog: bool,
    failed: Arc<AtomicBool>,
    fatal: CancellationToken,
    delivery: Delivery,
    finishing: Finishing,
}

/// A batch admitted by the writer, to be written to the log.
struct Admission {
    events: Vec<Event>,
    /// The message ids of `events` that carry one.
    dedup: Vec<DedupEntry>,
    completions: Vec<Completion>,
    /// Whether to fsync after writing (an `interval` tick, or the stop).
    sync: bool,
}

/// Where a committed batch is delivered and acknowledged.
enum Finishing {
    /// On the writer thread, right after the commit: `interval` and `never` have no
    /// fsync to wait for, and a thread hop would only add latency.
    Inline,
    /// On the finisher thread, once the write-ahead log's fsync covers it (`always`), while
    /// the writer goes on with the next batch; on the writer thread, after its own fsync,
    /// when there is no next batch to go on with (see [`Writer::commit`]).
    Finisher(Finisher),
}

impl Writer {
    /// Commits batch after batch; each is handed on to be delivered and acknowledged (see
    /// [`Finishing`]) while the next is admitted and committed.
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(WRITER_BATCH_APPENDS);
        while let Some(first) = next_request(&mut receiver, self.spin) {
            let (mut appends, mut bytes) = first.size();
            batch.push(first);
            while appends < WRITER_BATCH_APPENDS && bytes < self.max_batch_bytes {
                match receiver.try_recv() {
                    Ok(request) => {
                        let (more_appends, more_bytes) = request.size();
                        appends += more_appends;
                        bytes += more_bytes;
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.queued.add_permits(appends);
            let stop = batch.iter().any(|request| matches!(request, Request::Stop));
            if self.failed.load(Ordering::Acquire) {
                // A checkpoint or an fsync failed: nothing more is written or acknowledged.
                break;
            }
            let more_queued = !receiver.is_empty();
            if let Err(failure) = self.commit(&mut batch, bytes, more_queued) {
                error!(error = %failure, "the event log failed; no more events will be acknowledged");
                self.failed.store(true, Ordering::Release);
                self.fatal.cancel();
                break;
            }
            if stop {
                break;
            }
        }
        self.queued.close();
        self.stop_finisher();
        // Whatever was queued behind a failure was never written: say so.
        receiver.close();
        let unwritten = batch.drain(..).chain(std::iter::from_fn(|| receiver.try_recv().ok()));
        self.delivery.fail(&Refusal::StorageFailure, Vec::new(), unwritten.flat_map(Request::into_appends));
        self.store.close();
    }

    /// Lets the finisher deliver what it holds and stops it (before anything later is
    /// answered, so a client's answers stay in order).
    fn stop_finisher(&mut self) {
        if let Finishing::Finisher(finisher) = &mut self.finishing {
            finisher.stop();
        }
        self.finishing = Finishing::Inline;
    }

    /// Answers a batch that cannot be committed with `failure`, after everything committed
    /// before it.
    fn fail(&mut self, failure: &Refusal, completions: Vec<Completion>, pending: impl IntoIterator<Item = Append>) {
        self.stop_finisher();
        self.delivery.fail(failure, completions, pending);
    }

    /// Admits one batch of requests, writes it to the log (to the OS; fsynced here only for
    /// an `interval` tick or at the stop) and hands it on to be delivered and acknowledged.
    ///
    /// With a finisher, the batch is handed over as soon as it is in the write-ahead log, so
    /// the finisher's fsync runs while fjall takes the batch; the finisher delivers it once
    /// told that fjall holds it too (reads must find what was delivered). If fjall fails,
    /// that word never comes and the finisher answers the batch with storage failures.
    ///
    /// But when no request is `more_queued` and the finisher holds nothing, this thread
    /// fsyncs, delivers and acknowledges the batch itself: the fsync has nothing to overlap
    /// with, and the hand-over would add a thread wake-up to every ack of a lone publisher.
    fn commit(&mut self, batch: &mut Vec<Request>, bytes: usize, more_queued: bool) -> Result<(), StoreError> {
        let Admission { events, dedup, completions, sync } = self.admit_batch(batch, bytes)?;
        let expired = match self.expire_dedup() {
            Ok(expired) => expired,
            Err(failure) => {
                self.fail(&Refusal::StorageFailure, completions, []);
                return Err(failure);
            }
        };
        // A write-ahead record that fails to write is torn, and start-up never replays a
        // torn record: so far, nothing of the batch is stored.
        let written = match (events.is_empty() && expired.is_empty(), self.store.write_ahead(&events, &dedup)) {
            (true, _) => None,
            (false, Ok(written)) => Some(written),
            (false, Err(failure)) => {
                self.fail(&Refusal::StorageFailure, completions, []);
                return Err(failure);
            }
        };
        let events = Arc::new(events);
        let committed = Committed { head: self.head, events: Arc::clone(&events), completions };
        let store = |store: &Store, sync: bool| {
            if let Some(written) = &written {
                store.commit(&events, written, &dedup, &expired)?;
            }
            if sync {
                store.sync()?;
            }
            Ok(())
        };
        let sync_here = match &self.finishing {
            Finishing::Inline => Some(sync),
            Finishing::Finisher(finisher) if !more_queued && finisher.is_idle() => Some(sync || !events.is_empty()),
            Finishing::Finisher(_) => None,
        };
        if let Some(sync) = sync_here {
            if let Err(failure) = store(&self.store, sync) {
                self.fail(&Refusal::MaybeStored, committed.completions, []);
                return Err(failure);
            }
            if self.failed.load(Ordering::Acquire) {
                // The finisher's fsync or a checkpoint failed meanwhile: acknowledge nothing.
                self.fail(&Refusal::MaybeStored, committed.completions, []);
                return Ok(());
            }
            self.delivery.finish(committed);
        } else if let Finishing::Finisher(finisher) = &self.finishing {
            finisher.send(Handoff::Written(committed));
            store(&self.store, sync)?;
            finisher.send(Handoff::Stored(self.head));
        }
        Ok(())
    }

    /// Checks the conditions of a batch's appends and assigns the admitted ones their
    /// sequences. A failure answers the whole batch with storage failures.
    fn admit_batch(&mut self, batch: &mut Vec<Request>, bytes: usize) -> Result<Admission, StoreError> {
        let room = self.space.admit(bytes as u64);
        if self.subjects.len() > WRITER_SUBJECT_CACHE || self.subject_bytes > WRITER_SUBJECT_CACHE_BYTES {
            self.subjects.clear();
            self.subject_bytes = 0;
        }
        let mut events = Vec::new();
        let mut new_dedup = Vec::new();
        let mut completions = Vec::with_capacity(batch.len());
        let mut sync = false;
        let mut requests = batch.drain(..);
        while let Some(request) = requests.next() {
            match request {
                Request::Appends(appends) => {
                    let mut appends = appends.into_iter();
                    while let Some(append) = appends.next() {
                        let outcome = match self.admit(&append, &events, room) {
                            Ok(outcome) => outcome,
                            Err(failure) => {
                                let rest = requests.flat_map(Request::into_appends);
                                let pending = std::iter::once(append).chain(appends).chain(rest);
                                self.fail(&Refusal::StorageFailure, completions, pending);
                                return Err(failure);
                            }
                        };
                        if let Ok(Stored { seq, revision, duplicate: false }) = outcome {
                            self.record(&append, seq, revision, &mut events, &mut new_dedup);
                        }
                        completions.push(Completion::Append(Admitted { append, outcome }));
                    }
                }
                Request::Call(action) => completions.push(Completion::Call(action)),
                Request::Sync | Request::Stop => sync = true,
            }
        }
        Ok(Admission { events, dedup: new_dedup, completions, sync })
    }

    /// Checks an append's conditions; dedup first, as JetStream does (a duplicate stores
    /// nothing, so it is answered even when the disk has no `room`).
    fn admit(&mut self, append: &Append, batch: &[Event], room: Result<(), Shortage>) -> Result<Outcome, StoreError> {
        let options = &append.options;
        if let Some(&(seq, revision)) = options.msg_id.as_ref().and_then(|id| self.dedup.get(id)) {
            return Ok(Ok(Stored { seq, revision, duplicate: true }));
        }
        if room.is_err() {
            return Ok(Err(Refusal::InsufficientStorage));
        }
        let subject = &append.message.subject;
        if let Some(expected) = options.expected_last_seq.filter(|&expected| expected != self.head) {
            return Ok(Err(Refusal::LastSequence { expected, actual: self.head }));
        }
        let (last_seq, last_revision) = self.last_of_subject(subject)?;
        if let Some(expected) = options.expected_last_subject_seq.filter(|&expected| expected != last_seq) {
            return Ok(Err(Refusal::LastSubjectSequence { expected, actual: last_seq }));
        }
        if let Some(expected) = options.expected_revision.filter(|&expected| expected != last_revision) {
            return Ok(Err(Refusal::Revision { expected, actual: last_revision }));
        }
        if let Some(unchanged) = &options.unchanged_since {
            let committed = self.head - batch.len() as u64;
            for filter in &unchanged.filters {
                let in_batch =
                    batch.iter().rev().find(|e| e.seq > unchanged.after && matches(filter.as_bytes(), &e.subject));
                let actual = match in_batch {
                    Some(event) => Some(event.seq),
                    None => self.store.last_matching(filter, unchanged.after, committed)?,
                };
                if let Some(actual) = actual {
                    let filter = filter.to_string();
                    return Ok(Err(Refusal::Changed { filter, after: unchanged.after, actual }));
                }
            }
        }
        Ok(Ok(Stored { seq: self.head + 1, revision: last_revision + 1, duplicate: false }))
    }

    /// The last sequence and revision of `subject`, counting events admitted but not yet
    /// committed (the cache is only trimmed between batches).
    fn last_of_subject(&mut self, subject: &Bytes) -> Result<(u64, u64), StoreError> {
        if let Some(&last) = self.subjects.get(subject) {
            return Ok(last);
        }
        let last = self.store.last_of_subject(subject, self.head)?.unwrap_or((0, 0));
        self.remember_subject(subject, last);
        Ok(last)
    }

    /// Caches a subject's last sequence and revision under a copy of the subject: it is a
    /// slice of the publisher's read buffer, and a cache entry holding it would keep that
    /// whole buffer (payloads included) alive.
    fn remember_subject(&mut self, subject: &[u8], last: (u64, u64)) {
        match self.subjects.get_mut(subject) {
            Some(known) => *known = last,
            None => {
                self.subject_bytes += subject.len();
                self.subjects.insert(Bytes::copy_from_slice(subject), last);
            }
        }
    }

    /// Assigns an admitted append its place in the log.
    fn record(
        &mut self,
        append: &Append,
        seq: u64,
        revision: u64,
        events: &mut Vec<Event>,
        dedup: &mut Vec<DedupEntry>,
    ) {
        #[cfg(debug_assertions)]
        injected_fault(seq);
        let timestamp =
            nanos(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()).max(self.last_timestamp);
        self.head = seq;
        self.last_timestamp = timestamp;
        let message = &append.message;
        self.remember_subject(&message.subject, (seq, revision));
        if let Some(msg_id) = &append.options.msg_id {
            self.dedup.insert(msg_id.clone(), (seq, revision));
            self.dedup_order.push_back((timestamp, msg_id.clone(), seq));
            dedup.push(DedupEntry { timestamp, msg_id: msg_id.clone(), seq });
        }
        events.push(Event {
            seq,
            timestamp,
            revision,
            subject: message.subject.clone(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        });
    }

    /// Forgets message ids older than the window; returns their store keys to delete.
    fn expire_dedup(&mut self) -> Result<Vec<fjall::Slice>, StoreError> {
        let cutoff = self.last_timestamp.saturating_sub(self.dedup_window);
        while let Some((timestamp, msg_id, seq)) = self.dedup_order.front() {
            if *timestamp >= cutoff {
                break;
            }
            // The id may have been published again since; only forget this occurrence.
            if self.dedup.get(msg_id).is_some_and(|&(current, _)| current == *seq) {
                self.dedup.remove(msg_id);
            }
            self.dedup_order.pop_front();
            self.dedup_backlog = true;
        }
        if !self.dedup_backlog {
            return Ok(Vec::new());
        }
        let expired = self.store.dedup_expired(cutoff, WRITER_BATCH_APPENDS)?;
        self.dedup_backlog = expired.len() == WRITER_BATCH_APPENDS;
        Ok(expired)
    }

    /// Reloads the ids still inside the dedup window, so it survives a restart.
    fn load_dedup_window(&mut self) -> Result<(), StoreError> {
        let now = nanos(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let window_start = now.saturating_sub(self.dedup_window);
        self.store.check_dedup_window(window_start)?;
        for (entry, revision) in self.store.dedup_since(window_start)? {
            let revision = match revision {
                Some(revision) => revision,
                // Entries written before they recorded the revision.
                None => self.store.get(entry.seq)?.map_or(0, |event| event.revision),
            };
            self.dedup.insert(entry.msg_id.clone(), (entry.seq, revision));
            self.dedup_order.push_back((entry.timestamp, entry.msg_id, entry.seq));
        }
        Ok(())
    }
}

/// Waits for the writer's next request; `None` once every sender is gone.
///
/// The writer first looks for the request for up to `spin` (see
/// [`DEFAULT_WRITER_SPIN`](crate::config::DEFAULT_WRITER_SPIN) for why), as Go's scheduler
/// and the LMAX Disruptor's yielding wait do, and yields the CPU between looks: a thread
/// with work gets it, and an idle server parks after one such look.
fn next_request(receiver: &mut mpsc::Receiver<Request>, spin: Duration) -> Option<Request> {
    let looking_since = Instant::now();
    loop {
        match receiver.try_recv() {
            Ok(request) => return Some(request),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if looking_since.elapsed() < spin => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return receiver.blocking_recv(),
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Debug builds only: with `EVENTLINE_FAULT_WRITER_PANIC_AT=N` in the environment, the
/// writer panics as it records sequence N, so a test of the binary can check that a dead
/// writer stops the server.
#[cfg(debug_assertions)]
fn injected_fault(seq: u64) {
    static PANIC_AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = PANIC_AT.get_or_init(|| std::env::var("EVENTLINE_FAULT_WRITER_PANIC_AT").ok()?.parse().ok());
    assert!(*at != Some(seq), "injected fault at sequence {seq}");
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};

    use super::*;
    use crate::broker::Broker;
    use crate::broker::append::{Answer, Publisher, Reply};
    use crate::broker::outbound::{Outbound, Wakes};
    use crate::config::{REQUEST_APPENDS, StoreConfig};
    use crate::protocol::{Pub, PublishOptions};

    /// A publisher that hears nothing: the test counts what the writer stores.
    struct Silent;

    impl Publisher for Silent {
        fn skips(&self) -> Option<u64> {
            None
        }
        fn answer(&self, _: &Answer, _: &Pub, _: &Outcome, _: usize, _: &mut Wakes) {}
        fn paced_by(&self, _: Arc<Outbound>) {}
        fn done(&self) {}
    }

    fn append() -> Append {
        Append {
            message: Pub {
                subject: Bytes::from_static(b"queued"),
                reply: None,
                headers: None,
                payload: Bytes::from_static(b"x"),
            },
            options: PublishOptions::default(),
            reply: Reply { publisher: Arc::new(Silent), answer: Answer::Nothing },
        }
    }

    /// The writer's wait takes a request already queued, and one sent long after it stopped
    /// looking and parked; it ends once the senders are gone.
    #[test]
    fn next_request_takes_queued_and_late_requests_and_ends_with_the_senders() {
        let (sender, mut receiver) = mpsc::channel(4);
        sender.try_send(Request::Sync).expect("room");
        let spin = crate::config::DEFAULT_WRITER_SPIN;
        assert!(matches!(next_request(&mut receiver, spin), Some(Request::Sync)));

        let late = std::thread::spawn(move || {
            std::thread::sleep(spin * 20);
            sender.blocking_send(Request::Stop).expect("the receiver waits");
        });
        assert!(matches!(next_request(&mut receiver, spin), Some(Request::Stop)), "woken from the park");
        late.join().expect("sender thread");
        assert!(next_request(&mut receiver, spin).is_none(), "no sender left");
    }

    fn appends() -> Request {
        Request::Appends((0..REQUEST_APPENDS).map(|_| append()).collect())
    }

    /// Requests carry up to `REQUEST_APPENDS` appends each; the queue is bounded by
    /// appends, not requests, so batching cannot multiply what a stalled writer holds.
    #[tokio::test]
    async fn queued_appends_are_bounded_whatever_the_requests_carrying_them() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let store = StoreConfig { fsync: FsyncPolicy::Never, ..StoreConfig::new(dir.path()) };
        let config = Config { store, ..Config::default() };
        let broker = Broker::start(config, CancellationToken::new()).expect("starts");
        let timeline = &broker.timeline;
        // Hold the writer inside a call until released.
        let (entered, writer_held) = tokio::sync::oneshot::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = move || {
            let _ = entered.send(());
            let _ = held.recv();
        };
        assert!(timeline.send(Request::Call(Box::new(hold))).await.is_ok());
        writer_held.await.expect("the writer runs the call");

        for _ in 0..WRITER_QUEUE_APPENDS / REQUEST_APPENDS {
            assert!(timeline.send(appends()).await.is_ok());
        }
        let mut one_more = std::pin::pin!(timeline.send(appends()));
        let pending = one_more.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending();
        assert!(pending, "a full queue holds the sender back");

        release.send(()).expect("the writer waits");
        assert!(one_more.await.is_ok(), "sent once the writer takes the queue");
        timeline.stop().await;
        assert_eq!(broker.head(), (WRITER_QUEUE_APPENDS + REQUEST_APPENDS) as u64, "every append stored");
    }
}
