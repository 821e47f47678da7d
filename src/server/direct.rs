//! Direct writes: a connection's writer is woken by writing to its socket at once, from
//! the thread that queued the bytes, when its writer task is idle.
//!
//! The write path's threads (the timeline writer, the finisher) answer and deliver from
//! outside the runtime. Handing each batch to the connection's writer task costs a wake-up
//! of a runtime worker, tens of microseconds on a virtual machine whose idle CPUs halt; a
//! non-blocking write of what fits in the socket buffer costs less. Whatever the socket
//! does not take, and anything queued while the writer task is busy, goes to the task as
//! usual. Only for plain TCP: a TLS stream cannot be written from two places. Measured by
//! `benches/wakeups.sh`: without it, window-1 acks fall to 0.77x under `never` and 0.90x
//! under `always`, and the stored-delivery p99 at 10 k msg/s rises by a quarter.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpStream;

use crate::broker::{Outbound, Wake};

/// The connection's own socket (no second descriptor), for [`Outbound::write_now`]:
/// tokio's non-blocking `try_write` works from any thread.
pub(super) struct DirectWrite {
    socket: Mutex<Option<Arc<TcpStream>>>,
}

impl DirectWrite {
    pub(super) fn of(socket: Arc<TcpStream>) -> DirectWrite {
        DirectWrite { socket: Mutex::new(Some(socket)) }
    }

    /// Lets go of the socket, so it closes with the connection rather than with the last
    /// holder of its queue.
    pub(super) fn close(&self) {
        self.socket.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl Wake for DirectWrite {
    fn wake(&self, outbound: &Outbound) {
        let socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        let written = socket.as_ref().is_some_and(|socket| outbound.write_now(|bytes| socket.try_write(bytes)));
        if !written {
            outbound.notify();
        }
    }
}
