//! The network edge: a tokio accept loop and one reader/writer task pair per connection.
//! Everything a connection means is decided in [`crate::broker`]; this layer moves bytes.

mod connection;
mod direct;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::SHUTDOWN_GRACE;

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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    connections.spawn(connection::serve(socket, peer, local, Arc::clone(&broker), stop.child_token()));
                }
                Err(error) => {
                    warn!(%error, "accept failed");
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
