//! One client connection: this task reads and parses, a spawned writer task writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, interval_at};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::broker::{Broker, CloseReason, MAX_PINGS_OUT, Outbound, Outgoing, Session};
use crate::protocol::codec::ClientCodec;
use crate::protocol::{ClientOp, ProtocolError, ServerOp, encode};

/// Read buffer size; big enough that a publisher's burst is parsed in few reads.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes the writer encodes before it writes, so a large backlog is sent in bounded pieces.
const WRITE_CHUNK: usize = 64 * 1024;
/// How long a closing connection may take to flush its last ops (an `-ERR`, say).
const FLUSH_GRACE: Duration = Duration::from_secs(2);

pub(super) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    // Small messages must not wait for Nagle; the writer already coalesces.
    let _ = socket.set_nodelay(true);
    let (read, write) = socket.into_split();
    let config = broker.config().clone();
    let outbound = Arc::new(Outbound::new(config.max_pending));
    let host = local.ip().to_string();
    let mut session = Session::new(Arc::clone(&broker), Arc::clone(&outbound), |client_id| {
        broker.info(client_id, &host, local.port(), Some(peer.ip().to_string()))
    });
    let conn_id = session.client_id();
    info!(conn_id, %peer, "connection opened");
    let writer = tokio::spawn(write_loop(write, Arc::clone(&outbound)));
    let reason = read_loop(read, &mut session, &outbound, &shutdown, &config).await;
    outbound.close(reason);
    drop(session);
    let _ = writer.await;
    let reason = outbound.close_reason().unwrap_or(reason);
    info!(conn_id, %peer, ?reason, "connection closed");
}

async fn read_loop(
    mut read: OwnedReadHalf,
    session: &mut Session,
    outbound: &Outbound,
    shutdown: &CancellationToken,
    config: &crate::broker::BrokerConfig,
) -> CloseReason {
    let mut codec = ClientCodec::new(config.max_payload);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut ping = interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    let mut pings_out = 0;
    let mut active = false;
    loop {
        // Apply every whole op already buffered before waiting again.
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(op)) => {
                    active = true;
                    if op == ClientOp::Pong {
                        pings_out = 0;
                    }
                    if let Err(error) = session.handle(op) {
                        outbound.push_op(ServerOp::Err(error.wire_text()));
                        if error.closes_connection() {
                            return CloseReason::ProtocolError;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => return protocol_failure(&error, outbound),
            }
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
            buffer.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = read.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => return CloseReason::ClientClosed,
                Ok(_) => {}
            },
            () = outbound.closed() => return outbound.close_reason().unwrap_or(CloseReason::ServerShutdown),
            () = shutdown.cancelled() => return CloseReason::ServerShutdown,
            _ = ping.tick() => {
                // Like nats-server, only an idle client is pinged.
                if std::mem::take(&mut active) {
                    continue;
                }
                if pings_out >= MAX_PINGS_OUT {
                    outbound.push_op(ServerOp::Err("Stale Connection"));
                    return CloseReason::StaleConnection;
                }
                outbound.push_op(ServerOp::Ping);
                pings_out += 1;
            }
        }
    }
}

fn protocol_failure(error: &ProtocolError, outbound: &Outbound) -> CloseReason {
    debug!(%error, "protocol error");
    match error {
        ProtocolError::Io(_) => CloseReason::ClientClosed,
        _ => {
            outbound.push_op(ServerOp::Err(error.wire_text()));
            CloseReason::ProtocolError
        }
    }
}

/// Sends what fan-out queues, many messages per write, until the connection closes.
async fn write_loop(mut write: OwnedWriteHalf, outbound: Arc<Outbound>) {
    let mut batch = Vec::new();
    let mut buffer = BytesMut::with_capacity(WRITE_CHUNK * 2);
    loop {
        let closing = outbound.is_closed();
        if !closing {
            tokio::select! {
                () = outbound.ready() => {}
                () = outbound.closed() => {}
            }
        }
        if outbound.is_closed() && !outbound.close_reason().is_some_and(CloseReason::flushes) {
            break;
        }
        let bytes = outbound.take(&mut batch);
        let sent = if outbound.is_closed() {
            tokio::time::timeout(FLUSH_GRACE, send(&mut write, &mut batch, &mut buffer)).await.unwrap_or(Ok(()))
        } else {
            tokio::select! {
                sent = send(&mut write, &mut batch, &mut buffer) => sent,
                // A slow consumer is cut while its writer is still blocked on the socket.
                () = outbound.closed() => Ok(()),
            }
        };
        outbound.written(bytes);
        if sent.is_err() {
            outbound.close(CloseReason::WriteError);
        }
        if closing || sent.is_err() {
            break;
        }
    }
    let _ = write.shutdown().await;
}

async fn send(write: &mut OwnedWriteHalf, batch: &mut Vec<Outgoing>, buffer: &mut BytesMut) -> std::io::Result<()> {
    for item in batch.drain(..) {
        match item {
            Outgoing::Msg(m) => {
                encode::msg(buffer, &m.subject, &m.sid, m.reply.as_deref(), m.headers.as_deref(), &m.payload)
            }
            Outgoing::Op(op) => encode::server_op(&op, buffer),
        }
        if buffer.len() >= WRITE_CHUNK {
            write.write_all_buf(buffer).await?;
        }
    }
    write.write_all_buf(buffer).await
}
