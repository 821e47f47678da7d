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
//! Pushing never blocks. A push that takes the pending bytes past `max_pending` closes the
//! connection as a slow consumer (nats-server's rule). Before that, past [`LAGGING_AT_MOST`] (or half the bound),
//! the push reports the subscriber as lagging so the publisher can pause briefly
//! ([`Outbound::wait_drained`]), as nats-server stalls fast producers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ServerOp, encode};

/// Payload size from which a delivery shares the publisher's bytes instead of copying.
pub const SHARE_PAYLOADS_FROM: usize = 16 * 1024;

/// A subscriber holding more than this (or half its bound, if less) counts as lagging:
/// publishers to it pause and replays to it wait until it drains. nats-server pauses at half
/// the bound; pausing earlier keeps memory near what the sockets hold without costing
/// throughput, since a writer drains this much in a few milliseconds.
pub const LAGGING_AT_MOST: usize = 4 * 1024 * 1024;

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
        const KEEP_CAPACITY: usize = 1024 * 1024;
        if self.encoded.capacity() > KEEP_CAPACITY {
            self.encoded = BytesMut::new();
        }
        self.encoded.clear();
        self.shared.clear();
        self.bytes = 0;
    }
}

/// A connection's socket as a thread outside the runtime may write it directly: without
/// blocking, and only while the connection's writer task is idle (see [`Outbound::flush`]).
pub trait DirectWrite: Send + Sync {
    /// Writes what the socket takes now; `WouldBlock` if nothing.
    ///
    /// # Errors
    /// As a non-blocking socket write.
    fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

/// What the writer task has yet to send, and whether it is sending a batch.
#[derive(Default)]
struct Queue {
    pending: Pending,
    /// Between [`Outbound::take`] and [`Outbound::sent`]: a direct write now could
    /// overtake the batch.
    writing: bool,
    direct: Option<Arc<dyn DirectWrite>>,
}

/// The queue between fan-out (any task or thread) and one connection's writer task.
pub struct Outbound {
    queue: Mutex<Queue>,
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
    pub fn new(max_pending: usize) -> Self {
        Outbound {
            queue: Mutex::new(Queue::default()),
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

    /// Queues one `MSG` (or `HMSG` when `headers` is given) for the subscription `sid`.
    pub fn push_msg(
        &self,
        subject: &[u8],
        sid: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &Bytes,
    ) -> Pushed {
        let (pushed, must_flush) = self.push_msg_unwoken(subject, sid, reply, headers, payload);
        if must_flush {
            self.wake.notify_one();
        }
        pushed
    }

    /// Queues like [`Outbound::push_msg`] but leaves the writer asleep; also returns
    /// whether the caller must [`Outbound::flush`] once it has queued the rest (as for
    /// [`Outbound::push_op_unwoken`]).
    pub fn push_msg_unwoken(
        &self,
        subject: &[u8],
        sid: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &Bytes,
    ) -> (Pushed, bool) {
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
            return (Pushed::Dropped, false);
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
            None => (Pushed::Dropped, false),
            Some(was_empty) if held + size > self.lagging_at => (Pushed::Lagging, was_empty),
            Some(was_empty) => (Pushed::Queued, was_empty),
        }
    }

    /// Queues a protocol op (`PONG`, `+OK`, `-ERR` ...). These answer the connection's own
    /// requests, so they are not held to the slow-consumer bound.
    pub fn push_op(&self, op: &ServerOp) -> bool {
        self.push(|pending| encode::server_op(op, &mut pending.encoded))
    }

    /// Queues a protocol op like [`Outbound::push_op`] but leaves the writer asleep;
    /// returns whether the caller must [`Outbound::flush`] once it has queued the rest.
    /// A batch of acks then goes out in one write instead of trickling out as the writer
    /// races the pushes.
    pub fn push_op_unwoken(&self, op: &ServerOp) -> bool {
        self.queue(|pending| encode::server_op(op, &mut pending.encoded)) == Some(true)
    }

    /// Sends what the `_unwoken` pushes queued: straight to the socket if the writer
    /// task is idle and the socket takes it all, so a thread outside the runtime (the
    /// finisher, the timeline writer) answers without waking a runtime worker, a wake-up
    /// that costs tens of microseconds on a virtual machine; otherwise it wakes the
    /// writer task for the rest.
    pub fn flush(&self) {
        let mut queue = self.lock_queue();
        if let Some(direct) = queue.direct.clone().filter(|_| !queue.writing && queue.pending.shared.is_empty()) {
            let pending = &mut queue.pending;
            if let Ok(written) = direct.try_write(&pending.encoded) {
                pending.consume(written);
                self.written(written);
            }
            if pending.is_empty() {
                return;
            }
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Lets fan-out write to the socket directly (see [`Outbound::flush`]).
    pub fn write_directly_to(&self, socket: Arc<dyn DirectWrite>) {
        self.lock_queue().direct = Some(socket);
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `write` on the pending buffers and wakes the writer if they were empty.
    fn push(&self, write: impl FnOnce(&mut Pending)) -> bool {
        let queued = self.queue(write);
        if queued == Some(true) {
            self.wake.notify_one();
        }
        queued.is_some()
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
    /// Until [`Outbound::sent`], nothing is written directly.
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
        // The socket closes with the writer task, not with the last holder of this queue.
        self.lock_queue().direct = None;
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
