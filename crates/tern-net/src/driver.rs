//! The connection driver: one task per connection, reading, decoding, handing packets to the
//! broker's [`Connection`], and writing what it encodes.
//!
//! Every branch of the `select!` is cancel-safe: `read_buf` and `write_buf` move bytes only
//! when they complete, the buffers live outside the futures, and the session and kick waits
//! keep their wake-ups. Writes are batched: deliveries accumulate in the connection's output
//! buffer and go out in as few syscalls as the socket allows.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::{Broker, CloseReason, Connection, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};

/// Bytes read per syscall at most.
const READ_CHUNK: usize = 16 * 1024;
/// Deliveries are pulled from the session while fewer than this many bytes wait to be written.
const OUT_FILL_LIMIT: usize = 64 * 1024;
/// Reading stops while more than this many bytes wait to be written (the client is not reading
/// our answers), so a client cannot make the broker buffer without bound.
const OUT_READ_LIMIT: usize = 1024 * 1024;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Where a connection came from, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The listener's name (`mqtt`, `mqtts`, `ws`, `wss`).
    pub listener: &'static str,
}

/// Runs one MQTT connection to completion over a reader and a writer, and returns why it
/// ended.
pub async fn run_connection<R, W>(
    broker: Arc<Broker>,
    peer: Peer,
    mut reader: R,
    mut writer: W,
) -> CloseReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let shutdown = broker.shutdown_token().clone();
    let mut conn = Connection::new(broker.clone(), peer.addr, peer.listener);
    let kick = conn.kick().clone();
    let mut session: Option<Arc<Session>> = None;
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut deadline = Instant::now() + broker.config.connect_timeout;

    let reason = 'conn: loop {
        let read_open = conn.out().len() < OUT_READ_LIMIT;
        let fill_open = session.is_some() && conn.out().len() < OUT_FILL_LIMIT;
        if read_open && rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            reason = kick.kicked() => break 'conn reason,
            _ = shutdown.cancelled() => break 'conn CloseReason::ServerShuttingDown,
            res = writer.write_buf(conn.out()), if !conn.out().is_empty() => {
                if let Err(err) = res {
                    tracing::debug!(peer = %peer.addr, %err, "write failed");
                    break 'conn CloseReason::ConnectionLost;
                }
            }
            res = reader.read_buf(&mut rbuf), if read_open => {
                match res {
                    Ok(0) => break 'conn CloseReason::ConnectionLost,
                    Ok(_) => {}
                    Err(err) => {
                        tracing::debug!(peer = %peer.addr, %err, "read failed");
                        break 'conn CloseReason::ConnectionLost;
                    }
                }
                let was_connected = conn.is_connected();
                if let Err(reason) = process(&mut conn, &mut rbuf) {
                    break 'conn reason;
                }
                if !was_connected && conn.is_connected() {
                    session = conn.session().cloned();
                }
                deadline = match conn.idle_timeout() {
                    Some(idle) => Instant::now() + idle,
                    None if conn.is_connected() => far_future(),
                    None => deadline,
                };
            }
            _ = wait_session(&session), if fill_open => {
                if conn.fill(OUT_FILL_LIMIT) && let Some(s) = &session {
                    // More is ready than fitted: come back after writing.
                    s.wake();
                }
            }
            _ = sleep_until(deadline) => {
                break 'conn if conn.is_connected() { CloseReason::KeepAliveTimeout } else { CloseReason::ConnectTimeout };
            }
        }
    };

    conn.close(&reason);
    if !conn.out().is_empty() {
        let out = conn.out();
        let _ = tokio::time::timeout(CLOSE_FLUSH, writer.write_all_buf(out)).await;
    }
    let _ = tokio::time::timeout(CLOSE_FLUSH, writer.shutdown()).await;
    log_close(&peer, &conn, &reason);
    reason
}

/// Decodes and handles every complete packet in `rbuf`.
fn process(conn: &mut Connection, rbuf: &mut BytesMut) -> Result<(), CloseReason> {
    loop {
        match tern_codec::decode(rbuf, conn.max_packet_size(), conn.protocol()) {
            Ok(Some(packet)) => conn.handle(packet)?,
            Ok(None) => return Ok(()),
            Err(err) => return Err(conn.decode_error(&err)),
        }
    }
}

async fn wait_session(session: &Option<Arc<Session>>) {
    match session {
        Some(s) => s.woken().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn log_close(peer: &Peer, conn: &Connection, reason: &CloseReason) {
    let client = conn
        .session()
        .map(|s| s.key.client_id.to_string())
        .unwrap_or_default();
    match reason {
        CloseReason::ClientDisconnect
        | CloseReason::ConnectionLost
        | CloseReason::ServerShuttingDown => {
            tracing::debug!(peer = %peer.addr, listener = peer.listener, client_id = %client, reason = reason.label(), "connection closed");
        }
        _ => {
            tracing::info!(peer = %peer.addr, listener = peer.listener, client_id = %client, reason = %reason, "connection closed");
        }
    }
}
