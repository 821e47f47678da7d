//! Catch-up subscriptions (replay from the log, then live) and one-shot queries: each one
//! [`Cursor`] delivering to a [`Sink`], paced by the subscriber's socket, not by the log.
//!
//! A catch-up reads the history up to the head, then follows it; the first time it stands
//! at the head it sends the caught-up marker, naming the last sequence the history
//! covered. Memory stays bounded whatever the log's size and the publish rate: the cursor
//! reads a chunk at a time, only while the subscriber is not lagging, and a subscriber
//! that falls behind is never cut as a slow consumer; it reads the store until it catches
//! up. A read failure ends the subscription with a `500 Storage Failure` status.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::cursor::{Cursor, Log, blocking};
use super::outbound::{Outbound, Wakes};
use crate::config::READER_CHUNK;
use crate::protocol::{Query, Refusal, Start, headers};
use crate::store::{Event, StoreError};
use crate::subject::Filter;

thread_local! {
    /// The header block being built for one delivery; reused, so a replay allocates nothing
    /// per event for it.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(512));
}

/// Where a catch-up subscription or a query delivers: a connection's outbound queue and
/// the sid of one of its subscriptions.
#[derive(Clone)]
pub(super) struct Sink {
    pub outbound: Arc<Outbound>,
    pub sid: Bytes,
}

impl Sink {
    /// Queues one event as `HMSG <subject>` with its log headers: a request's answer goes
    /// out on the reply subject, which is how client libraries match it; `Nats-Subject`
    /// keeps the event's.
    fn push_event_as(&self, subject: &[u8], event: &Event, wakes: &mut Wakes) {
        SCRATCH.with(|scratch| {
            let mut block = scratch.borrow_mut();
            block.clear();
            headers::event_block(
                &mut block,
                event.headers.as_deref(),
                event.seq,
                event.timestamp,
                &event.subject,
                event.revision,
            );
            self.outbound.push_msg(subject, &self.sid, None, Some(&block), &event.payload, wakes);
        });
    }

    /// Queues events as `HMSG <event subject>`, each once the subscriber is not lagging,
    /// and wakes the writer for them.
    async fn deliver(&self, events: &[Event]) {
        let mut wakes = Wakes::default();
        for event in events {
            if self.outbound.is_lagging() {
                wakes.wake();
                self.pace().await;
            }
            self.push_event_as(&event.subject, event, &mut wakes);
        }
    }

    /// Queues a status message (no payload) such as `100 Caught Up` or `204 End Of Results`.
    fn push_status(&self, subject: &[u8], status: &str, fields: &[(&str, &[u8])]) {
        let mut block = BytesMut::new();
        headers::write(&mut block, Some(status), fields);
        self.outbound.push_msg(subject, &self.sid, None, Some(&block), &Bytes::new(), &mut Wakes::default());
    }

    /// Queues the `500 Storage Failure` status that ends a reader whose read failed,
    /// naming the event that could not be read when it is known.
    fn push_failure(&self, subject: &[u8], error: &StoreError) {
        warn!(%error, "a reader of the log failed");
        match error.seq() {
            Some(seq) => {
                let seq = itoa::Buffer::new().format(seq).to_owned();
                self.push_status(subject, "500 Storage Failure", &[(headers::SEQUENCE, seq.as_bytes())]);
            }
            None => self.push_status(subject, "500 Storage Failure", &[]),
        }
    }

    /// Waits while the subscriber is lagging (or until it closes).
    async fn pace(&self) {
        while self.outbound.is_lagging() && !self.outbound.is_closed() {
            self.outbound.wait_drained().await;
        }
    }

    /// Runs `reader` until it ends, `stop` is cancelled, or the connection closes.
    async fn run_until_closed(&self, stop: &CancellationToken, reader: impl Future<Output = ()>) {
        tokio::select! {
            () = reader => {}
            () = stop.cancelled() => {}
            () = self.outbound.closed() => {}
        }
    }
}

/// The position a catch-up subscription starts after.
///
/// # Errors
/// The refusal for a start past the head, or a failed read of the log.
pub(super) async fn start_position(log: &Log, start: Start, head: u64) -> Result<u64, Refusal> {
    match start {
        Start::Seq(seq) if seq > head + 1 => Err(Refusal::StartBeyondHead { start: seq, head }),
        Start::Seq(seq) => Ok(seq.max(1) - 1),
        Start::New | Start::LastPerSubject => Ok(head),
        Start::Time(time) => {
            let store = Arc::clone(&log.store);
            let first = blocking(move || store.first_at_or_after(time, head)).await;
            first.map(|seq| seq - 1).map_err(|error| Refusal::ReadFailed(error.to_string()))
        }
    }
}

/// A catch-up subscription: with `last_per_subject`, the last event of each matching
/// subject up to the cursor's position first; then everything after it, the history and
/// then live events, with the caught-up marker (on `marker`) in between.
pub(super) async fn catch_up(
    mut cursor: Cursor,
    filter: Filter,
    last_per_subject: bool,
    sink: Sink,
    marker: Bytes,
    stop: CancellationToken,
) {
    let replay = async {
        if last_per_subject {
            let (store, head) = (Arc::clone(cursor.store()), cursor.position());
            let last = blocking(move || {
                let seqs = store.last_per_subject(&filter, head)?;
                seqs.into_iter().filter_map(|seq| store.get(seq).transpose()).collect::<Result<Vec<_>, _>>()
            })
            .await?;
            sink.deliver(&last).await;
        }
        let mut marked = false;
        loop {
            let events = cursor.read(u64::MAX, READER_CHUNK).await?;
            sink.deliver(&events).await;
            if cursor.position() >= cursor.head() {
                if !marked {
                    let last = itoa::Buffer::new().format(cursor.position()).to_owned();
                    sink.push_status(&marker, "100 Caught Up", &[(headers::LAST_SEQUENCE, last.as_bytes())]);
                    marked = true;
                }
                cursor.wait().await;
            }
        }
    };
    sink.run_until_closed(&stop, async {
        let failed: Result<(), StoreError> = replay.await;
        if let Err(error) = failed {
            sink.push_failure(&marker, &error);
        }
    })
    .await;
}

/// Runs a one-shot query: matching events in sequence order, at most `limit`, then a
/// `204 End Of Results` status with the count and the last sequence considered (or
/// `500 Storage Failure` if a read failed), on `end`.
pub(super) async fn fetch(log: Log, query: Query, sink: Sink, end: Bytes) {
    let query = async {
        match fetch_events(&log, &query, &sink).await {
            Ok((count, last)) => {
                let mut numbers = itoa::Buffer::new();
                let count = numbers.format(count).to_owned();
                let last = numbers.format(last).to_owned();
                let fields = [("Eventline-Count", count.as_bytes()), (headers::LAST_SEQUENCE, last.as_bytes())];
                sink.push_status(&end, "204 End Of Results", &fields);
            }
            Err(error) => sink.push_failure(&end, &error),
        }
    };
    sink.run_until_closed(&CancellationToken::new(), query).await;
}

/// Delivers the query's events; returns how many, and the last sequence it considered.
async fn fetch_events(log: &Log, query: &Query, sink: &Sink) -> Result<(u64, u64), StoreError> {
    let head = log.head();
    let mut from = query.from_seq.max(1);
    let mut to = query.to_seq.min(head);
    if let Some(since) = query.since {
        let store = Arc::clone(&log.store);
        from = from.max(blocking(move || store.first_at_or_after(since, head)).await?);
    }
    if let Some(until) = query.until {
        let store = Arc::clone(&log.store);
        to = to.min(blocking(move || store.first_at_or_after(until, head)).await?.saturating_sub(1));
    }
    let mut cursor = log.cursor(query.filters.clone().into(), from - 1);
    let mut count = 0;
    while count < query.limit && cursor.position() < to {
        let want = usize::try_from(query.limit - count).unwrap_or(usize::MAX).min(READER_CHUNK);
        let events = cursor.read(to, want).await?;
        sink.deliver(&events).await;
        count += events.len() as u64;
    }
    Ok((count, cursor.position().min(to)))
}

/// Answers `$EL.LAST.<subject>`: the subject's last event, or a `404 No Messages` status.
pub(super) async fn last(log: Log, subject: Bytes, sink: Sink, reply: Bytes) {
    let (store, head) = (Arc::clone(&log.store), log.head());
    let found = blocking(move || match store.last_of_subject(&subject, head)? {
        Some((seq, _)) => store.get(seq),
        None => Ok(None),
    })
    .await;
    match found {
        Ok(Some(event)) => sink.push_event_as(&reply, &event, &mut Wakes::default()),
        Ok(None) => sink.push_status(&reply, "404 No Messages", &[]),
        Err(error) => sink.push_failure(&reply, &error),
    }
}
