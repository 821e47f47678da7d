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
use std::sync::{Mutex, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
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

/// The queue between fan-out (any task or thread) and one connection's writer task.
pub struct Outbound {
    pending: Mutex<Pending>,
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
            pending: Mutex::new(Pending::default()),
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
        let queued = self.push(|pending| {
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
            false => Pushed::Dropped,
            true if held + size > self.lagging_at => Pushed::Lagging,
            true => Pushed::Queued,
        }
    }

    /// Queues a protocol op (`PONG`, `+OK`, `-ERR` ...). These answer the connection's own
    /// requests, so they are not held to the slow-consumer bound.
    pub fn push_op(&self, op: &ServerOp) -> bool {
        self.push(|pending| encode::server_op(op, &mut pending.encoded))
    }

    /// Runs `write` on the pending buffers and counts exactly the bytes it added (the
    /// slow-consumer check before it works from an estimate).
    fn push(&self, write: impl FnOnce(&mut Pending)) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let was_empty = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let was_empty = pending.is_empty();
            let (encoded, shared) = (pending.encoded.len(), pending.shared.len());
            write(&mut pending);
            let added =
                pending.encoded.len() - encoded + pending.shared[shared..].iter().map(|(_, p)| p.len()).sum::<usize>();
            pending.bytes += added;
            self.held.fetch_add(added, Ordering::Relaxed);
            was_empty
        };
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Swaps everything queued into `batch` (which must be empty), so steady state
    /// allocates nothing. Pass `batch.len()` to [`Outbound::written`] once it is sent.
    pub fn take(&self, batch: &mut Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *pending, batch);
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
