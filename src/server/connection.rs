//! One client connection: this task reads and parses, a spawned writer task writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::{Instant, interval_at};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::direct::DirectWrite;
use crate::broker::{Broker, CloseReason, Outbound, Pending, Session, Wake};
use crate::config::{Config, FLUSH_GRACE, MAX_PINGS_OUT, MAX_STALL, READ_CHUNK, WRITE_PIECE};
use crate::protocol::codec::ClientCodec;
use crate::protocol::{ClientOp, ProtocolError, ServerOp};

pub(super) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    // Small messages must not wait for Nagle; the writer already coalesces.
    let _ = socket.set_nodelay(true);
    let config = broker.config().clone();
    // One descriptor, shared by the reader, the writer task and direct writes.
    let socket = Arc::new(socket);
    let direct = config.listener.direct_writes.then(|| Arc::new(DirectWrite::of(Arc::clone(&socket))));
    let waker = direct.clone().map(|direct| direct as Arc<dyn Wake>);
    let outbound = Arc::new(Outbound::new(config.limits.max_pending, waker));
    let host = local.ip().to_string();
    let mut session = Session::new(Arc::clone(&broker), Arc::clone(&outbound), |client_id| {
        broker.info(client_id, &host, local.port(), Some(peer.ip().to_string()))
    });
    let conn_id = session.client_id();
    info!(conn_id, %peer, "connection opened");
    let writer = tokio::spawn(write_loop(Arc::clone(&socket), Arc::clone(&outbound), config.limits.write_deadline));
    let reason = read_loop(&socket, &mut session, &outbound, &shutdown, &config).await;
    // What the client published before it went is still stored, as nats-server routes it.
    session.flush().await;
    outbound.close(reason);
    drop(session);
    let _ = writer.await;
    if let Some(direct) = direct {
        direct.close();
    }
    let reason = outbound.close_reason().unwrap_or(reason);
    info!(conn_id, %peer, ?reason, "connection closed");
}

async fn read_loop(
    socket: &TcpStream,
    session: &mut Session,
    outbound: &Arc<Outbound>,
    shutdown: &CancellationToken,
    config: &Config,
) -> CloseReason {
    let mut codec = ClientCodec::new(config.limits.max_payload);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let ping_interval = config.limits.ping_interval;
    let mut ping = interval_at(Instant::now() + ping_interval, ping_interval);
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
                    if let Err(error) = session.handle(op).await {
                        outbound.send_op(&ServerOp::Err(error.wire_text()));
                        if error.closes_connection() {
                            return CloseReason::ProtocolError;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => return protocol_failure(&error, outbound),
            }
        }
        session.flush().await;
        if let Some(subscriber) = session.take_lagging() {
            tokio::select! {
                _ = tokio::time::timeout(MAX_STALL, subscriber.wait_drained()) => {}
                () = outbound.closed() => return outbound.close_reason().unwrap_or(CloseReason::ServerShutdown),
                () = shutdown.cancelled() => return CloseReason::ServerShutdown,
            }
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
            buffer.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = read_some(socket, &mut buffer) => match read {
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
                    outbound.send_op(&ServerOp::Err("Stale Connection"));
                    return CloseReason::StaleConnection;
                }
                outbound.send_op(&ServerOp::Ping);
                pings_out += 1;
            }
        }
    }
}

/// Reads what the socket has into `buffer`: the number of bytes, 0 at the end.
async fn read_some(socket: &TcpStream, buffer: &mut BytesMut) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read_buf(buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            read => return read,
        }
    }
}

/// Writes all of `bytes` (the socket is shared, so through `&TcpStream`).
async fn write_all(socket: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn protocol_failure(error: &ProtocolError, outbound: &Arc<Outbound>) -> CloseReason {
    debug!(%error, "protocol error");
    match error {
        ProtocolError::Io(_) => CloseReason::ClientClosed,
        _ => {
            outbound.send_op(&ServerOp::Err(error.wire_text()));
            CloseReason::ProtocolError
        }
    }
}

/// Sends what fan-out queues, many messages per write, until the connection closes. A
/// write that makes no progress for `deadline` (a piece of [`WRITE_PIECE`] bytes not taken
/// by the socket in that time) cuts the connection as a slow consumer.
async fn write_loop(socket: Arc<TcpStream>, outbound: Arc<Outbound>, deadline: Duration) {
    let mut batch = Pending::default();
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
        outbound.take(&mut batch);
        let limit = if outbound.is_closed() { FLUSH_GRACE } else { deadline };
        let mut released = 0;
        let sent = {
            let sending = send(&socket, &batch, &outbound, &mut released, limit);
            tokio::pin!(sending);
            loop {
                tokio::select! {
                    sent = &mut sending => break sent,
                    () = outbound.closed(), if !outbound.is_closed() => {}
                }
                // A slow consumer is cut while its writer is still blocked on the socket; any
                // other close lets the batch finish, so the stream is never cut mid-message.
                if !outbound.close_reason().is_some_and(CloseReason::flushes) {
                    break Ok(());
                }
            }
        };
        // Whatever an aborted send did not write is released too: the batch is gone.
        outbound.written(batch.len() - released);
        batch.clear();
        outbound.sent();
        match sent {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => outbound.close(CloseReason::SlowConsumer),
            Err(_) => outbound.close(CloseReason::WriteError),
        }
        if closing || outbound.close_reason().is_some_and(|reason| !reason.flushes()) {
            break;
        }
    }
    // The end of what the server sends; the descriptor closes once the reader is done too.
    let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
}

/// Writes one batch: the encoded bytes, with the shared large payloads in their places,
/// in pieces of at most [`WRITE_PIECE`] bytes, each released from the pending bound as soon
/// as it is written (as nats-server counts pending bytes), so a subscriber that keeps
/// reading is never judged on bytes it already received. A piece the socket does not take
/// within `limit` fails the send with `TimedOut`.
async fn send(
    socket: &TcpStream,
    batch: &Pending,
    outbound: &Outbound,
    released: &mut usize,
    limit: Duration,
) -> std::io::Result<()> {
    let mut written = 0;
    let shared = batch.shared.iter().map(|(offset, payload)| (*offset, &payload[..]));
    for (offset, payload) in shared.chain([(batch.encoded.len(), &[][..])]) {
        for piece in batch.encoded[written..offset].chunks(WRITE_PIECE).chain(payload.chunks(WRITE_PIECE)) {
            match tokio::time::timeout(limit, write_all(socket, piece)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no progress within the deadline"));
                }
            }
            outbound.written(piece.len());
            *released += piece.len();
        }
        written = offset;
    }
    Ok(())
}
