//! The connection driver: one task per connection, reading, decoding, handing packets to the
//! broker's [`Connection`], and writing what it encodes.
//!
//! The same driver runs every listener: it takes any reader and writer, so TCP, TLS and
//! WebSocket connections behave identically. Every branch of the `select!` is cancel-safe:
//! `read_buf`, `write_buf` and `flush` move bytes only when they complete, the buffers live
//! outside the futures, and the session and kick waits keep their wake-ups. Writes are batched:
//! deliveries accumulate in the connection's output buffer and go out in as few syscalls (TLS
//! records, WebSocket frames) as the transport allows. Transports that buffer (TLS, WebSocket)
//! are flushed once the output buffer is empty.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::{Broker, CloseReason, Connection, SessionId, Signal};
use tern_store::Ticket;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::accept::Listener;
use crate::metrics::{ConnectedGuard, NetMetrics};

/// The read buffer starts this small, so that idle connections cost little memory, and grows
/// (doubling, up to `READ_CHUNK`) while reads keep filling it.
const READ_FIRST: usize = 512;
/// Bytes read per syscall at most.
const READ_CHUNK: usize = 64 * 1024;
/// Deliveries are pulled from the session while fewer than this many bytes wait to be written.
const OUT_FILL_LIMIT: usize = 64 * 1024;
/// Reading stops while more than this many bytes wait to be written (the client is not reading
/// our answers), so a client cannot make the broker buffer without bound.
const OUT_READ_LIMIT: usize = 1024 * 1024;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How long the server keeps reading (and discarding) after it closed its side; see `linger`.
const LINGER: Duration = Duration::from_secs(1);

/// Where a connection came from, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The listener it arrived on (MQTT over WebSocket arrives on `http`/`https`).
    pub listener: Listener,
}

/// A transport-level reason to close a connection, carried inside an `io::Error` from a
/// transport adapter (a WebSocket text frame, an over-size frame) so that the driver can close
/// with the right [`CloseReason`] instead of a plain lost connection.
#[derive(Debug)]
pub struct TransportClose(pub CloseReason);

impl std::fmt::Display for TransportClose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for TransportClose {}

impl TransportClose {
    /// An `io::Error` that makes the driver close with `reason`.
    pub fn error(reason: CloseReason) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, TransportClose(reason))
    }
}

/// The close reason for a failed read or write.
fn io_close_reason(peer: &Peer, err: &io::Error, what: &str) -> CloseReason {
    if let Some(TransportClose(reason)) = err.get_ref().and_then(|e| e.downcast_ref()) {
        return reason.clone();
    }
    tracing::debug!(peer = %peer.addr, listener = peer.listener.name(), %err, "{what} failed");
    CloseReason::ConnectionLost
}

/// Runs one MQTT connection to completion over a reader and a writer, and returns why it
/// ended.
pub async fn run_connection<R, W>(
    broker: Arc<Broker>,
    metrics: Arc<NetMetrics>,
    peer: Peer,
    mut reader: R,
    mut writer: W,
) -> CloseReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut conn = Connection::new(broker.clone(), peer.addr, peer.listener.name());
    // Kicks (takeover, shutdown, ...) and delivery wake-ups arrive through one signal.
    let kick = conn.kick().clone();
    let mut rbuf = BytesMut::new();
    let mut read_size = READ_FIRST;
    let mut deadline = Instant::now() + broker.config.connect_timeout;
    // Bytes handed to the writer that a buffering transport may still hold.
    let mut unflushed = false;
    // Counts this client under its listener and protocol version once CONNECT is accepted.
    let mut counted: Option<ConnectedGuard<'_>> = None;
    // The congested session being waited for, and until when.
    let mut pressure_deadline: Option<(SessionId, Instant)> = None;
    // Deliveries are ready that did not fit the output buffer yet.
    let mut fill_pending = false;
    // Waits that exist only while needed, boxed so that an idle connection does not carry
    // them: held acknowledgements (until the store is durable) and backpressure.
    let mut acks_wait: Option<(Ticket, Wait)> = None;
    let mut drained_wait: Option<(SessionId, Wait)> = None;
    // One timer for the keep-alive (or CONNECT) deadline and the backpressure wait.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);

    let reason = 'conn: loop {
        if fill_pending && conn.out().len() < OUT_FILL_LIMIT {
            fill_pending = conn.fill(OUT_FILL_LIMIT);
        }
        // Backpressure: while a subscriber this client publishes to is congested, stop
        // reading from it (instead of dropping), for at most `backpressure_timeout` per
        // subscriber.
        let pressure = conn.pressure();
        match &pressure {
            Some(s) if pressure_deadline.is_none_or(|(id, _)| id != s.id) => {
                pressure_deadline =
                    Some((s.id, Instant::now() + broker.config.backpressure_timeout));
                broker
                    .metrics
                    .backpressure_pauses
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let waiting = s.clone();
                drained_wait = Some((s.id, Box::pin(async move { waiting.drained().await })));
            }
            None => {
                pressure_deadline = None;
                drained_wait = None;
            }
            _ => {}
        }
        match conn.ack_wait() {
            Some(t) if acks_wait.as_ref().is_none_or(|(w, _)| *w != t) => {
                let store = broker.store().clone();
                acks_wait = Some((t, Box::pin(async move { store.wait(t).await })));
            }
            None => acks_wait = None,
            _ => {}
        }
        let read_open = conn.out().len() < OUT_READ_LIMIT && pressure.is_none();
        let wake_at = pressure_deadline.map_or(deadline, |(_, at)| at.min(deadline));
        if timer.deadline() != wake_at {
            timer.as_mut().reset(wake_at);
        }
        tokio::select! {
            signal = kick.signalled() => match signal {
                Signal::Kicked(reason) => break 'conn reason,
                Signal::Deliveries => fill_pending = true,
            },
            // Acknowledgements held until the store has what they acknowledge.
            _ = wait_on(&mut acks_wait), if acks_wait.is_some() => {
                acks_wait = None;
                conn.release_acks();
            }
            res = write_or_flush(&mut writer, conn.out()), if unflushed || !conn.out().is_empty() => {
                match res {
                    Ok(Written::Bytes(0)) => break 'conn CloseReason::ConnectionLost,
                    Ok(Written::Bytes(_)) => unflushed = true,
                    Ok(Written::Flushed) => unflushed = false,
                    Err(err) => break 'conn io_close_reason(&peer, &err, "write"),
                }
            }
            res = read_some(&mut reader, &mut rbuf, read_size), if read_open => {
                match res {
                    Ok(Read { bytes: 0, .. }) => break 'conn CloseReason::ConnectionLost,
                    // A read that filled the buffer: the client sends a lot, read more at once.
                    Ok(Read { filled: true, .. }) => read_size = (read_size * 2).min(READ_CHUNK),
                    Ok(_) => {}
                    Err(err) => break 'conn io_close_reason(&peer, &err, "read"),
                }
                let was_connected = conn.is_connected();
                let processed = process(&mut conn, &mut rbuf);
                // A quiet connection gives its read buffer back between reads: idle
                // connections then hold no buffer at all.
                if rbuf.is_empty() && read_size == READ_FIRST {
                    rbuf = BytesMut::new();
                }
                if !was_connected && conn.is_connected() {
                    counted = Some(ConnectedGuard::new(&metrics, peer.listener, conn.protocol()));
                }
                if let Err(reason) = processed {
                    break 'conn reason;
                }
                deadline = match conn.idle_timeout() {
                    Some(idle) => Instant::now() + idle,
                    None if conn.is_connected() => far_future(),
                    None => deadline,
                };
            }
            _ = wait_on(&mut drained_wait), if drained_wait.is_some() => {
                drained_wait = None;
            }
            _ = &mut timer => {
                if Instant::now() >= deadline {
                    break 'conn if conn.is_connected() { CloseReason::KeepAliveTimeout } else { CloseReason::ConnectTimeout };
                }
                // The backpressure wait timed out.
                if let Some(s) = &pressure {
                    conn.give_up_on(s);
                }
            }
        }
    };

    conn.close(&reason);
    if !conn.out().is_empty() {
        let out = conn.out();
        let _ = tokio::time::timeout(CLOSE_FLUSH, writer.write_all_buf(out)).await;
    }
    let _ = tokio::time::timeout(CLOSE_FLUSH, writer.shutdown()).await;
    if reason.server_sends_disconnect() || matches!(reason, CloseReason::ConnectRefused(_)) {
        linger(&mut reader, &mut rbuf).await;
    }
    log_close(&peer, &conn, &reason);
    drop(counted);
    reason
}

/// After the server closed its side, reads and discards what the client still sends until it
/// closes too, for at most [`LINGER`]: closing a socket with unread input makes the kernel send
/// a reset, and a reset can destroy the DISCONNECT (or CONNACK) the client has not read yet.
async fn linger<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) {
    let drain = async {
        loop {
            buf.clear();
            if buf.capacity() < 1024 {
                buf.reserve(READ_FIRST);
            }
            match reader.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// What one call of [`write_or_flush`] did.
enum Written {
    Bytes(usize),
    Flushed,
}

/// Writes what waits in `out`, or, when nothing does, flushes what the transport may still
/// buffer (TLS records, WebSocket frames; a no-op on TCP). Cancel-safe: each call does one
/// cancel-safe operation.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut BytesMut,
) -> io::Result<Written> {
    if out.is_empty() {
        writer.flush().await.map(|()| Written::Flushed)
    } else {
        writer.write_buf(out).await.map(Written::Bytes)
    }
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

/// A boxed wait (see `acks_wait` and `drained_wait`).
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Waits on the boxed future in `slot`; never ready when there is none.
async fn wait_on<K>(slot: &mut Option<(K, Wait)>) {
    match slot {
        Some((_, wait)) => wait.as_mut().await,
        None => std::future::pending().await,
    }
}

/// What one read did.
struct Read {
    bytes: usize,
    /// The read filled all the room there was: more is probably waiting.
    filled: bool,
}

/// Reads what the client sent into `buf`. A connection whose buffer is empty waits on a
/// buffer on the stack of the poll (not in the task), so that an idle connection holds no
/// read buffer at all; a busy one reads straight into `buf`, grown to `size`. Cancel-safe: bytes
/// are only taken when the read completes.
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    size: usize,
) -> io::Result<Read> {
    std::future::poll_fn(|cx| {
        if buf.is_empty() && size <= READ_FIRST {
            let mut stack = [0u8; READ_FIRST];
            let mut rb = ReadBuf::new(&mut stack);
            ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            buf.extend_from_slice(rb.filled());
            return Poll::Ready(Ok(Read {
                bytes: n,
                filled: n == READ_FIRST,
            }));
        }
        if buf.capacity() - buf.len() < READ_FIRST / 2 {
            buf.reserve(size);
        }
        let room = buf.capacity() - buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *reader),
            cx,
            buf
        ))?;
        Poll::Ready(Ok(Read {
            bytes: n,
            filled: n == room,
        }))
    })
    .await
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
            tracing::debug!(peer = %peer.addr, listener = peer.listener.name(), client_id = %client, reason = reason.label(), "connection closed");
        }
        _ => {
            tracing::info!(peer = %peer.addr, listener = peer.listener.name(), client_id = %client, reason = %reason, "connection closed");
        }
    }
}
