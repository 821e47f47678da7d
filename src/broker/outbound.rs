//! A connection's outbound queue: what fan-out hands to the connection's writer task.
//!
//! Fan-out encodes each message straight into the subscriber's pending buffer, so the
//! writer only swaps the buffer out and writes it: many messages per syscall, and the
//! bytes counted against the slow-consumer bound are the bytes actually held. Payloads of
//! [`SHARE_PAYLOADS_FROM`] bytes or more are not copied: the buffer keeps a `Bytes` handle
//! to the publisher's read buffer and the writer sends it in place. Small payloads are
//! copied on purpose: copying 1 KiB costs less than the shared reference count, which the
//! publisher's core and each subscriber's writer core would otherwise bounce between them
//! for every message.
//!
//! Pushing never blocks, and never wakes the writer by itself: the pusher collects the
//! queues it filled in [`Wakes`] and wakes each once its batch is queued (a read's worth of
//! messages, or a committed batch of the log), so the writer sends the batch in one write
//! and is woken once per batch. How a writer is woken is the server's choice (see [`Wake`]).
//! A push that takes the pending bytes past `max_pending` closes the connection as a slow
//! consumer (nats-server's rule). Before that, past [`LAGGING_AT_MOST`] (or half the
//! bound), the push reports the subscriber as lagging so the publisher can pause briefly
//! ([`Outbound::wait_drained`]), as nats-server stalls fast producers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{LAGGING_AT_MOST, PENDING_KEEP_CAPACITY, SHARE_PAYLOADS_FROM};
use crate::protocol::{ServerOp, encode};

/// Why a connection closed; logged once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ProtocolError,
    SlowConsumer,
    StaleConnection,
    WriteError,
    ServerShutdown,
}

impl CloseReason {
    /// Whether the writer still sends what is queued (an `-ERR`, say) before closing.
    pub fn flushes(self) -> bool {
        !matches!(self, CloseReason::SlowConsumer | CloseReason::WriteError | CloseReason::ClientClosed)
    }
}

/// The result of queueing a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued, but the subscriber is lagging: slow the publisher down.
    Lagging,
    /// Not queued: the connection is closing (perhaps because of this push).
    Dropped,
}

/// Encoded bytes waiting for the writer, with the large payloads kept by reference:
/// `shared[i].1` goes out right after `encoded[..shared[i].0]`.
#[derive(Default)]
pub struct Pending {
    pub encoded: BytesMut,
    pub shared: Vec<(usize, Bytes)>,
    bytes: usize,
}

impl Pending {
    /// Bytes held, as counted against `max_pending`.
    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Empties the buffers for reuse, dropping an oversized allocation left by a burst.
    /// Drops the first `written` encoded bytes, which went out directly.
    fn consume(&mut self, written: usize) {
        self.encoded.advance(written);
        self.bytes -= written;
    }

    pub fn clear(&mut self) {
        if self.encoded.capacity() > PENDING_KEEP_CAPACITY {
            self.encoded = BytesMut::new();
        }
        self.encoded.clear();
        self.shared.clear();
        self.bytes = 0;
    }
}

/// How a connection's writer learns that something is queued for it. Without one, its
/// writer task is notified; the server layer may install another (for instance one that
/// writes to an idle socket at once, see [`Outbound::write_now`]).
pub trait Wake: Send + Sync {
    /// Called once per batch queued; must not block.
    fn wake(&self, outbound: &Outbound);
}

/// The queues a batch of pushes filled, to wake once the batch is complete. Dropping it
/// wakes them too, so a forgotten wake can delay a message but never strand it.
#[derive(Default)]
pub struct Wakes(Vec<Arc<Outbound>>);

impl Wakes {
    /// Wakes every queue collected so far.
    pub fn wake(&mut self) {
        for outbound in self.0.drain(..) {
            outbound.wake();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake();
    }
}

/// What the writer task has yet to send, and whether it is sending a batch.
#[derive(Default)]
struct Queue {
    pending: Pending,
    /// Between [`Outbound::take`] and [`Outbound::sent`]: a write now could overtake the batch.
    writing: bool,
}

/// The queue between fan-out (any task or thread) and one connection's writer task.
pub struct Outbound {
    queue: Mutex<Queue>,
    /// How the writer is woken; `None`: notify its task.
    waker: Option<Arc<dyn Wake>>,
    /// Bytes queued plus bytes the writer has taken but not yet written.
    held: AtomicUsize,
    max_pending: usize,
    /// Held bytes past which the subscriber counts as lagging (see [`LAGGING_AT_MOST`]).
    lagging_at: usize,
    wake: Notify,
    drained: Notify,
    closing: CancellationToken,
    /// Mirrors `closing` for the per-message check: a plain load, where the token's own
    /// check takes a lock.
    closed: AtomicBool,
    close_reason: Mutex<Option<CloseReason>>,
}

impl Outbound {
    /// A queue bounded by `max_pending` bytes whose writer task is notified when a batch is
    /// queued, or woken by `waker` instead.
    pub fn new(max_pending: usize, waker: Option<Arc<dyn Wake>>) -> Self {
        Outbound {
            queue: Mutex::new(Queue::default()),
            waker,
            held: AtomicUsize::new(0),
            max_pending,
            lagging_at: (max_pending / 2).min(LAGGING_AT_MOST),
            wake: Notify::new(),
            drained: Notify::new(),
            closing: CancellationToken::new(),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
        }
    }

    /// Queues one `MSG` (or `HMSG` when `headers` is given) for the subscription `sid`;
    /// `wakes` gets the queue if the writer must be woken once the batch is complete.
    pub fn push_msg(
        self: &Arc<Self>,
        subject: &[u8],
        sid: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &Bytes,
        wakes: &mut Wakes,
    ) -> Pushed {
        let size = subject.len()
            + sid.len()
            + reply.map_or(0, <[u8]>::len)
            + headers.map_or(0, <[u8]>::len)
            + payload.len()
            + 32;
        let held = self.held.load(Ordering::Relaxed);
        if held + size > self.max_pending {
            if !self.is_closed() {
                self.close(CloseReason::SlowConsumer);
            }
            return Pushed::Dropped;
        }
        let queued = self.queue(|pending| {
            let header_len = headers.map(<[u8]>::len);
            encode::msg_head(&mut pending.encoded, subject, sid, reply, header_len, payload.len());
            if let Some(headers) = headers {
                pending.encoded.put_slice(headers);
            }
            if payload.len() >= SHARE_PAYLOADS_FROM {
                pending.shared.push((pending.encoded.len(), payload.clone()));
            } else {
                pending.encoded.put_slice(payload);
            }
            pending.encoded.put_slice(b"\r\n");
        });
        match queued {
            None => Pushed::Dropped,
            Some(was_empty) => {
                if was_empty {
                    wakes.0.push(Arc::clone(self));
                }
                if held + size > self.lagging_at { Pushed::Lagging } else { Pushed::Queued }
            }
        }
    }

    /// Queues a protocol op (`PONG`, `+OK`, `+ACK` ...) to wake with `wakes`. These answer
    /// the connection's own requests, so they are not held to the slow-consumer bound.
    pub fn push_op(self: &Arc<Self>, op: &ServerOp, wakes: &mut Wakes) {
        if self.queue(|pending| encode::server_op(op, &mut pending.encoded)) == Some(true) {
            wakes.0.push(Arc::clone(self));
        }
    }

    /// Queues a protocol op as [`Outbound::push_op`] and wakes the writer now.
    pub fn send_op(self: &Arc<Self>, op: &ServerOp) {
        self.push_op(op, &mut Wakes::default());
    }

    /// Wakes the writer: through the server's [`Wake`], or by notifying its task.
    fn wake(&self) {
        match &self.waker {
            Some(waker) => waker.wake(self),
            None => self.notify(),
        }
    }

    /// Notifies the writer task that something is queued.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Sends what is queued with `write` (a non-blocking write returning how many bytes it
    /// took) if the writer task is idle, the connection is not closing (its writer task
    /// decides what still goes out) and nothing queued is a shared payload; returns whether
    /// everything went out. For a [`Wake`] that writes to an idle socket itself.
    pub fn write_now(&self, mut write: impl FnMut(&[u8]) -> std::io::Result<usize>) -> bool {
        let mut queue = self.lock_queue();
        if queue.writing || self.is_closed() || !queue.pending.shared.is_empty() {
            return queue.pending.is_empty();
        }
        let pending = &mut queue.pending;
        if let Ok(written) = write(&pending.encoded) {
            pending.consume(written);
            self.written(written);
        }
        pending.is_empty()
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `write` on the pending buffers and counts exactly the bytes it added (the
    /// slow-consumer check before it works from an estimate). Returns whether the
    /// buffers were empty before, or `None` if the connection is closing.
    fn queue(&self, write: impl FnOnce(&mut Pending)) -> Option<bool> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut queue = self.lock_queue();
        let pending = &mut queue.pending;
        let was_empty = pending.is_empty();
        let (encoded, shared) = (pending.encoded.len(), pending.shared.len());
        write(pending);
        let added =
            pending.encoded.len() - encoded + pending.shared[shared..].iter().map(|(_, p)| p.len()).sum::<usize>();
        pending.bytes += added;
        self.held.fetch_add(added, Ordering::Relaxed);
        Some(was_empty)
    }

    /// Swaps everything queued into `batch` (which must be empty), so steady state
    /// allocates nothing. Pass `batch.len()` to [`Outbound::written`] once it is sent.
    /// Until [`Outbound::sent`], [`Outbound::write_now`] writes nothing.
    pub fn take(&self, batch: &mut Pending) {
        let mut queue = self.lock_queue();
        std::mem::swap(&mut queue.pending, batch);
        queue.writing = true;
    }

    /// The writer task has sent (or dropped) the batch it took.
    pub fn sent(&self) {
        self.lock_queue().writing = false;
    }

    /// Releases `bytes` from the bound once the writer has sent them, and wakes publishers
    /// paused on this subscriber when it is no longer lagging.
    pub fn written(&self, bytes: usize) {
        let before = self.held.fetch_sub(bytes, Ordering::Relaxed);
        if before > self.lagging_at && before - bytes <= self.lagging_at {
            self.drained.notify_waiters();
        }
    }

    /// Whether the subscriber is lagging (publishers to it pause, and
    /// catch-up replays wait, until it drains).
    pub fn is_lagging(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.lagging_at
    }

    /// Waits until something is queued (may wake spuriously).
    pub async fn ready(&self) {
        self.wake.notified().await;
    }

    /// Waits until the subscriber is no longer lagging, or is closing.
    pub async fn wait_drained(&self) {
        let drained = self.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if self.held.load(Ordering::Relaxed) <= self.lagging_at || self.is_closed() {
            return;
        }
        tokio::select! {
            () = drained => {}
            () = self.closing.cancelled() => {}
        }
    }

    /// Starts closing the connection; the first reason given is the one kept.
    pub fn close(&self, reason: CloseReason) {
        self.close_reason.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
        self.closed.store(true, Ordering::Release);
        self.closing.cancel();
    }

    /// Resolves once [`Outbound::close`] has been called.
    pub async fn closed(&self) {
        self.closing.cancelled().await;
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts wake-ups instead of waking anything.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(&self, _: &Outbound) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn push(outbound: &Arc<Outbound>, payload: &'static [u8], wakes: &mut Wakes) {
        outbound.push_msg(b"s", b"1", None, None, &Bytes::from_static(payload), wakes);
    }

    #[test]
    fn a_batch_of_pushes_wakes_its_writer_once_when_complete() {
        let woken = Arc::new(Counted::default());
        let outbound = Arc::new(Outbound::new(1 << 20, Some(Arc::clone(&woken) as Arc<dyn Wake>)));
        let mut wakes = Wakes::default();
        for _ in 0..3 {
            push(&outbound, b"x", &mut wakes);
        }
        outbound.push_op(&ServerOp::Pong, &mut wakes);
        assert_eq!(woken.0.load(Ordering::Relaxed), 0, "nothing woken while the batch is queued");
        wakes.wake();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "one wake-up for the whole batch");
        push(&outbound, b"y", &mut wakes);
        drop(wakes);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "the queue was not empty: the writer is already due");
    }

    #[test]
    fn write_now_never_overtakes_the_batch_the_writer_task_holds() {
        let outbound = Arc::new(Outbound::new(1 << 20, None));
        push(&outbound, b"x", &mut Wakes::default());
        let mut batch = Pending::default();
        outbound.take(&mut batch);
        push(&outbound, b"y", &mut Wakes::default());
        assert!(!outbound.write_now(|_| panic!("written while the writer task sends its batch")));
        outbound.written(batch.len());
        outbound.sent();
        let mut written = Vec::new();
        assert!(outbound.write_now(|bytes| {
            written.extend_from_slice(bytes);
            Ok(bytes.len())
        }));
        assert_eq!(written, b"MSG s 1 1\r\ny\r\n");
        assert!(!outbound.is_lagging());
    }
}
