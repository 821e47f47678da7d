//! The network edge: a tokio accept loop and one reader/writer task pair per connection.
//! Everything a connection means is decided in [`crate::broker`]; this layer moves bytes.

mod connection;
mod direct;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::SHUTDOWN_GRACE;

/// Failed accepts (out of descriptors, usually), logged at most once per second with how
/// many there were, so a client flood cannot flood the log too.
#[derive(Default)]
struct AcceptRefusals {
    last_logged: Option<Instant>,
    since: u64,
}

impl AcceptRefusals {
    fn note(&mut self, error: &std::io::Error) {
        self.since += 1;
        if self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            warn!(%error, failed = self.since, "cannot accept connections (raise the open files limit?)");
            self.last_logged = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, then closes every
/// connection (flushing what is queued, within a grace period), stops the broker's log
/// writer after what it has queued, and returns.
///
/// # Errors
/// Returns the listener's error if reading the local address fails; accept errors
/// (e.g. out of file descriptors) are logged and retried.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut refusals = AcceptRefusals::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    connections.spawn(connection::serve(socket, peer, local, Arc::clone(&broker), stop.child_token()));
                }
                Err(error) => {
                    refusals.note(&error);
                    // The pending connection stays queued; try again once something closed.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    info!(connections = connections.len(), "shutting down");
    stop.cancel();
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await.is_err() {
        warn!("connections still open after the grace period");
    }
    broker.stop().await;
    Ok(())
}
