//! Catch-up subscriptions (replay from the log, then live) and one-shot queries.
//!
//! A catch-up subscription is one cursor over the log, as in rumqttd: it reads from the
//! store up to the head, and once there it is switched to live delivery under a lock that
//! the timeline writer's fan-out also takes, so no event can fall between the two. While it
//! replays, live events are kept in a bounded buffer; when the buffer overflows, or when a
//! live subscriber falls behind (its outbound queue lagging (see `LAGGING_AT_MOST`)), it simply goes
//! back to reading the store from the last sequence it delivered. Nothing is skipped,
//! nothing is delivered twice, and memory stays bounded whatever the log's size and the
//! publish rate: the subscriber is never cut as a slow consumer for being behind.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tracing::warn;

use super::outbound::{Outbound, Pushed, Wakes};
use crate::protocol::{Query, Refusal, Start, headers};
use crate::store::{Event, Store, StoreError};
use crate::subject::Filter;

/// Events read from the store per step of a replay.
const CHUNK: usize = 512;
/// Live events held while a subscription is still replaying; past it, it reads them from
/// the store instead.
const BUFFER_LIMIT: usize = 4096;

thread_local! {
    /// The header block being built for one delivery; reused, so a replay allocates nothing
    /// per event for it.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::with_capacity(512));
}

/// Where a catch-up subscription or a query delivers: a connection's outbound queue and
/// the sid of one of its subscriptions.
#[derive(Clone)]
pub(super) struct Sink {
    pub outbound: Arc<Outbound>,
    pub sid: Bytes,
}

impl Sink {
    /// Queues one event as `HMSG <event subject>` with its log headers.
    fn push_event(&self, event: &Event, wakes: &mut Wakes) -> Pushed {
        self.push_event_as(&event.subject, event, wakes)
    }

    /// Queues one event as `HMSG <subject>`: a request's answer goes out on the reply
    /// subject, which is how client libraries match it; `Nats-Subject` keeps the event's.
    fn push_event_as(&self, subject: &[u8], event: &Event, wakes: &mut Wakes) -> Pushed {
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
            self.outbound.push_msg(subject, &self.sid, None, Some(&block), &event.payload, wakes)
        })
    }

    /// Queues a status message (no payload) such as `100 Caught Up` or `204 End Of Results`.
    fn push_status(&self, subject: &[u8], status: &str, fields: &[(&str, &[u8])], wakes: &mut Wakes) {
        let mut block = BytesMut::new();
        headers::write(&mut block, Some(status), fields);
        self.outbound.push_msg(subject, &self.sid, None, Some(&block), &Bytes::new(), wakes);
    }
}

/// One catch-up subscription, shared by its replay task and the writer's fan-out.
pub struct CatchUp {
    id: u64,
    pub(super) filter: Filter,
    pub(super) sink: Sink,
    /// The subject of the caught-up marker (the filter, or the `$`-API deliver subject).
    marker_subject: Bytes,
    state: Mutex<State>,
    wake: Notify,
    closed: AtomicBool,
}

impl PartialEq for CatchUp {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

struct State {
    /// Delivering straight from fan-out (true) or replaying from the store (false).
    live: bool,
    /// Live events offered while replaying, in sequence order.
    buffer: VecDeque<Event>,
    /// The buffer dropped events: read the store again before going live.
    overflowed: bool,
    /// The last sequence delivered (or skipped as not wanted).
    delivered: u64,
}

impl CatchUp {
    pub(super) fn new(id: u64, filter: Filter, sink: Sink, marker_subject: Bytes, delivered: u64) -> Self {
        CatchUp {
            id,
            filter,
            sink,
            marker_subject,
            state: Mutex::new(State { live: false, buffer: VecDeque::new(), overflowed: false, delivered }),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets where the cursor starts, once known (the subscription is registered for fan-out
    /// before the head is read, so nothing appended in between is missed).
    pub(super) fn start_after(&self, delivered: u64) {
        self.state().delivered = delivered;
    }

    /// Called by the timeline writer for each committed event matching the filter, in
    /// sequence order.
    pub(super) fn offer(&self, event: &Event, wakes: &mut Wakes) {
        let mut state = self.state();
        if event.seq <= state.delivered {
            return;
        }
        if state.live {
            if self.sink.outbound.is_lagging() {
                // Behind: stop here and let the replay task fetch the rest from the store.
                state.live = false;
                state.overflowed = true;
                drop(state);
                self.wake.notify_one();
                return;
            }
            self.sink.push_event(event, wakes);
            state.delivered = event.seq;
        } else if state.buffer.len() < BUFFER_LIMIT {
            state.buffer.push_back(event.clone());
        } else {
            state.overflowed = true;
            state.buffer.clear();
        }
    }

    /// Ends the subscription: its task stops and fan-out skips it.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.sink.outbound.is_closed()
    }

    /// The replay task: store reads up to the head, handover, live, and back to the store
    /// whenever it falls behind. Ends when closed or when the connection goes.
    pub(super) async fn run(self: Arc<Self>, store: Arc<Store>, head: impl Fn() -> u64, last_per_subject: bool) {
        if last_per_subject {
            if let Err(error) = self.deliver_last_per_subject(&store, head()).await {
                warn!(%error, "catch-up subscription failed to read the log");
                return;
            }
        }
        let mut marked = false;
        while !self.is_closed() {
            if let Err(error) = self.replay(&store, &head).await {
                warn!(%error, "catch-up subscription failed to read the log");
                return;
            }
            if self.is_closed() || !self.go_live(&mut marked) {
                continue;
            }
            // Live until fan-out knocks it back to replaying (or it closes).
            let knocked_back = self.wake.notified();
            tokio::pin!(knocked_back);
            knocked_back.as_mut().enable();
            if self.state().live && !self.is_closed() {
                tokio::select! {
                    () = knocked_back => {}
                    () = self.sink.outbound.closed() => {}
                }
            }
        }
    }

    /// Delivers the last event of each matching subject (up to `head`), then continues
    /// from `head`.
    async fn deliver_last_per_subject(&self, store: &Arc<Store>, head: u64) -> Result<(), StoreError> {
        let (reader, filter) = (Arc::clone(store), self.filter.clone());
        let last = blocking(move || {
            let seqs = reader.last_per_subject(&filter, head)?;
            seqs.into_iter().filter_map(|seq| reader.get(seq).transpose()).collect::<Result<Vec<_>, _>>()
        })
        .await?;
        for event in &last {
            self.pace().await;
            self.sink.push_event(event, &mut Wakes::default());
        }
        self.state().delivered = head;
        Ok(())
    }

    /// Reads and delivers from the store until the head (as it moves) is reached.
    async fn replay(&self, store: &Arc<Store>, head: &impl Fn() -> u64) -> Result<(), StoreError> {
        loop {
            self.pace().await;
            let from = self.state().delivered + 1;
            let to = head();
            if from > to || self.is_closed() {
                return Ok(());
            }
            let (reader, filter) = (Arc::clone(store), self.filter.clone());
            let chunk = blocking(move || reader.read(&filter, from, to, CHUNK)).await?;
            for event in &chunk.events {
                self.pace().await;
                self.sink.push_event(event, &mut Wakes::default());
            }
            self.state().delivered = chunk.next - 1;
        }
    }

    /// Switches to live delivery if nothing is missing; false if the buffer overflowed
    /// and the store must be read again. Sends the caught-up marker the first time, naming
    /// the last sequence history covered: not the head, which may already name events the
    /// fan-out has yet to offer (they come after the marker).
    fn go_live(&self, marked: &mut bool) -> bool {
        let mut state = self.state();
        if std::mem::take(&mut state.overflowed) {
            state.buffer.clear();
            return false;
        }
        while let Some(event) = state.buffer.pop_front() {
            if event.seq > state.delivered {
                self.sink.push_event(&event, &mut Wakes::default());
                state.delivered = event.seq;
            }
        }
        if !*marked {
            let last = itoa::Buffer::new().format(state.delivered).to_owned();
            let last = [(headers::LAST_SEQUENCE, last.as_bytes())];
            self.sink.push_status(&self.marker_subject, "100 Caught Up", &last, &mut Wakes::default());
            *marked = true;
        }
        state.live = true;
        true
    }

    /// Waits while the subscriber is lagging: the replay is paced by
    /// the socket, not by the log.
    async fn pace(&self) {
        while self.sink.outbound.is_lagging() && !self.is_closed() {
            self.sink.outbound.wait_drained().await;
        }
    }
}

/// Runs a one-shot query: matching events in sequence order, at most `limit`, then a
/// `204 End Of Results` status with the count (or `400` with the reason if it failed).
pub(super) async fn fetch(store: Arc<Store>, head: u64, query: Query, sink: Sink, end: Bytes) {
    let result = fetch_events(&store, head, &query, &sink).await;
    let mut numbers = itoa::Buffer::new();
    match result {
        Ok((count, last)) => {
            let count = numbers.format(count).to_owned();
            let last = numbers.format(last).to_owned();
            sink.push_status(
                &end,
                "204 End Of Results",
                &[("Eventline-Count", count.as_bytes()), (headers::LAST_SEQUENCE, last.as_bytes())],
                &mut Wakes::default(),
            );
        }
        Err(error) => {
            warn!(%error, "query failed to read the log");
            sink.push_status(&end, "500 Storage Failure", &[], &mut Wakes::default());
        }
    }
}

/// Delivers the query's events; returns how many, and the last sequence it considered.
async fn fetch_events(store: &Arc<Store>, head: u64, query: &Query, sink: &Sink) -> Result<(u64, u64), StoreError> {
    let mut from = query.from_seq.max(1);
    let mut to = query.to_seq.min(head);
    if let Some(since) = query.since {
        let reader = Arc::clone(store);
        from = from.max(blocking(move || reader.first_at_or_after(since, head)).await?);
    }
    if let Some(until) = query.until {
        let reader = Arc::clone(store);
        to = to.min(blocking(move || reader.first_at_or_after(until, head)).await?.saturating_sub(1));
    }
    let mut count = 0;
    let filters: Arc<[Filter]> = query.filters.clone().into();
    while from <= to && count < query.limit {
        let (reader, filters) = (Arc::clone(store), Arc::clone(&filters));
        let want = usize::try_from(query.limit - count).unwrap_or(usize::MAX).min(CHUNK);
        let chunk = blocking(move || reader.read_any(&filters, from, to, want)).await?;
        for event in &chunk.events {
            while sink.outbound.is_lagging() && !sink.outbound.is_closed() {
                sink.outbound.wait_drained().await;
            }
            sink.push_event(event, &mut Wakes::default());
            count += 1;
        }
        from = chunk.next;
    }
    Ok((count, to.min(from.saturating_sub(1))))
}

/// Runs store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Io(std::io::Error::other(format!("log read task failed: {join}")))),
    }
}

/// Where a catch-up subscription's cursor starts: the last sequence counted as delivered.
///
/// # Errors
/// A reason for the client when the start is past the head, or the log failed.
pub(super) async fn initial_delivered(store: &Arc<Store>, start: Start, head: u64) -> Result<u64, Refusal> {
    match start {
        Start::Seq(seq) if seq > head + 1 => Err(Refusal::StartBeyondHead { start: seq, head }),
        Start::Seq(seq) => Ok(seq.max(1) - 1),
        Start::New | Start::LastPerSubject => Ok(head),
        Start::Time(time) => {
            let reader = Arc::clone(store);
            let first = blocking(move || reader.first_at_or_after(time, head)).await;
            first.map(|seq| seq - 1).map_err(|error| Refusal::ReadFailed(error.to_string()))
        }
    }
}

/// Answers `$EL.LAST.<subject>`: the subject's last event, or a `404 No Messages` status.
pub(super) async fn last(store: Arc<Store>, head: u64, subject: Bytes, sink: Sink, reply: Bytes) {
    let reader = Arc::clone(&store);
    let wanted = subject.clone();
    let found = blocking(move || match reader.last_of_subject(&wanted, head)? {
        Some((seq, _)) => reader.get(seq),
        None => Ok(None),
    })
    .await;
    match found {
        Ok(Some(event)) => {
            sink.push_event_as(&reply, &event, &mut Wakes::default());
        }
        Ok(None) => sink.push_status(&reply, "404 No Messages", &[], &mut Wakes::default()),
        Err(error) => {
            warn!(%error, "get-last failed to read the log");
            sink.push_status(&reply, "500 Storage Failure", &[], &mut Wakes::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Pending;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            timestamp: 1_700_000_000_000_000_000,
            revision: seq,
            subject: Bytes::from_static(b"a.b"),
            headers: None,
            payload: Bytes::from_static(b"x"),
        }
    }

    /// The `Nats-Sequence` of each delivered event, and where the caught-up marker came
    /// with its `Nats-Last-Sequence`.
    fn delivered(outbound: &Outbound) -> (Vec<u64>, Option<(usize, u64)>) {
        let mut pending = Pending::default();
        outbound.take(&mut pending);
        let text = String::from_utf8(pending.encoded.to_vec()).expect("utf-8");
        let (mut seqs, mut marker) = (Vec::new(), None);
        for line in text.lines() {
            let number = |prefix: &str| line.strip_prefix(prefix).map(|n| n.parse::<u64>().expect("number"));
            if let Some(seq) = number("Nats-Sequence: ") {
                seqs.push(seq);
            } else if let Some(last) = number("Nats-Last-Sequence: ") {
                marker = Some((seqs.len(), last));
            }
        }
        (seqs, marker)
    }

    /// The head moves before the writer's fan-out offers the new events, so a replay can
    /// finish at 5 and go live while the head already reads 10: events 6 to 10 then come
    /// after the marker, which must not claim them.
    #[test]
    fn the_marker_names_what_came_before_it_even_when_the_head_ran_ahead() {
        let outbound = Arc::new(Outbound::new(1 << 20, None));
        let sink = Sink { outbound: Arc::clone(&outbound), sid: Bytes::from_static(b"1") };
        let filter = Filter::new(Bytes::from_static(b">")).expect("filter");
        let catch_up = CatchUp::new(1, filter, sink, Bytes::from_static(b">"), 5);
        let mut marked = false;
        assert!(catch_up.go_live(&mut marked));
        for seq in 6..=10 {
            catch_up.offer(&event(seq), &mut Wakes::default());
        }
        let (seqs, marker) = delivered(&outbound);
        assert_eq!((seqs, marker), ((6..=10).collect(), Some((0, 5))));
    }
}
