//! A connection's outbound queue: what fan-out hands to the connection's writer task.
//!
//! Pushing never waits: the queue is bounded in bytes, and a push that would pass the
//! bound closes the connection as a slow consumer instead (nats-server's rule), so one
//! stalled subscriber never slows a publisher or the other subscribers. Items hold shared
//! `Bytes`; the writer encodes a whole batch into one buffer and writes it with one call.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::ServerOp;

/// One message for one subscription. Every field is a handle onto the publisher's buffer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: Bytes,
    pub sid: Bytes,
    pub reply: Option<Bytes>,
    pub headers: Option<Bytes>,
    pub payload: Bytes,
}

impl Delivery {
    /// Bytes this delivery will take on the wire (close enough for the pending bound).
    fn wire_size(&self) -> usize {
        const FRAMING: usize = 32;
        self.subject.len()
            + self.sid.len()
            + self.reply.as_ref().map_or(0, Bytes::len)
            + self.headers.as_ref().map_or(0, Bytes::len)
            + self.payload.len()
            + FRAMING
    }
}

/// Something for the writer to send.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Msg(Delivery),
    Op(ServerOp),
}

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

#[derive(Default)]
struct Pending {
    items: Vec<Outgoing>,
    bytes: usize,
}

/// The queue between fan-out (any task) and one connection's writer task.
pub struct Outbound {
    pending: Mutex<Pending>,
    /// Bytes queued plus bytes the writer has taken but not yet written.
    in_flight: AtomicUsize,
    max_pending: usize,
    wake: Notify,
    closing: CancellationToken,
    close_reason: Mutex<Option<CloseReason>>,
}

impl Outbound {
    pub fn new(max_pending: usize) -> Self {
        Outbound {
            pending: Mutex::new(Pending::default()),
            in_flight: 0.into(),
            max_pending,
            wake: Notify::new(),
            closing: CancellationToken::new(),
            close_reason: Mutex::new(None),
        }
    }

    /// Queues a message; returns false (and drops it) if the connection is closing, or
    /// closes the connection as a slow consumer if the message would pass the byte bound.
    pub fn push_msg(&self, delivery: Delivery) -> bool {
        let size = delivery.wire_size();
        if self.in_flight.load(Ordering::Relaxed) + size > self.max_pending {
            if !self.is_closed() {
                self.close(CloseReason::SlowConsumer);
            }
            return false;
        }
        self.push(Outgoing::Msg(delivery), size)
    }

    /// Queues a protocol op (`PONG`, `+OK`, `-ERR` ...). These are small and answer the
    /// connection's own requests, so they are not held to the slow-consumer bound.
    pub fn push_op(&self, op: ServerOp) -> bool {
        self.push(Outgoing::Op(op), 16)
    }

    fn push(&self, item: Outgoing, size: usize) -> bool {
        if self.closing.is_cancelled() {
            return false;
        }
        self.in_flight.fetch_add(size, Ordering::Relaxed);
        let was_empty = {
            let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.items.push(item);
            pending.bytes += size;
            pending.items.len() == 1
        };
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Moves everything queued into `batch` (swapping buffers, so steady state allocates
    /// nothing) and returns its byte count, to pass to [`Outbound::written`] once sent.
    pub fn take(&self, batch: &mut Vec<Outgoing>) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::swap(&mut pending.items, batch);
        std::mem::take(&mut pending.bytes)
    }

    /// Releases `bytes` from the slow-consumer bound once the writer has sent them.
    pub fn written(&self, bytes: usize) {
        self.in_flight.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Waits until something is queued (may wake spuriously).
    pub async fn ready(&self) {
        self.wake.notified().await;
    }

    /// Starts closing the connection; the first reason given is the one kept.
    pub fn close(&self, reason: CloseReason) {
        let mut current = self.close_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.is_none() {
            *current = Some(reason);
        }
        drop(current);
        self.closing.cancel();
    }

    /// Resolves once [`Outbound::close`] has been called.
    pub async fn closed(&self) {
        self.closing.cancelled().await;
    }

    pub fn is_closed(&self) -> bool {
        self.closing.is_cancelled()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
