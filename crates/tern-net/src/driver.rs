//! The connection driver: one task per connection, reading, decoding, handing packets to the
//! broker's [`Connection`], and writing what it encodes.
//!
//! The same driver runs every listener: it takes any byte stream, so TCP, TLS and
//! WebSocket connections behave identically. Every branch of the `select!` is cancel-safe:
//! `read_buf`, `write_buf` and `flush` move bytes only when they complete, the buffers live
//! outside the futures, and the session and kick waits keep their wake-ups. Writes are batched:
//! deliveries accumulate in the connection's output buffer and go out in as few syscalls (TLS
//! records, WebSocket frames) as the transport allows. Transports that buffer (TLS, WebSocket)
//! are flushed once the output buffer is empty.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::out::OutBuf;
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
fn io_close_reason(conn: &Connection, err: &io::Error, what: &str) -> CloseReason {
    if let Some(TransportClose(reason)) = err.get_ref().and_then(|e| e.downcast_ref()) {
        return reason.clone();
    }
    tracing::debug!(peer = %conn.peer(), listener = conn.listener(), %err, "{what} failed");
    CloseReason::ConnectionLost
}

/// What woke the driver (see `run_connection`'s wait).
enum Event {
    Kicked(CloseReason),
    /// Deliveries wait and the output buffer has room: fill it.
    Fill,
    AcksDurable,
    Wrote(io::Result<Written>),
    Read(io::Result<Read>),
    Drained,
    Timer,
}

/// Runs one MQTT connection to completion over a byte stream, and returns why it
/// ended.
///
/// The connection's task is what an idle client costs, so its state is kept small: the wait
/// polls the socket, the kick signal (a registered waker) and the timer directly instead of
/// holding a future per source, the waits that exist only while needed (held
/// acknowledgements, backpressure) are boxed, and the closing steps run boxed.
pub fn run_connection<S>(
    broker: Arc<Broker>,
    metrics: Arc<NetMetrics>,
    peer: Peer,
    stream: S,
) -> impl Future<Output = CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let listener = peer.listener;
    let mut conn = Connection::new(broker, peer.addr, listener.name());
    let mut stream = stream;
    // An async block, not an async fn: an async fn keeps its arguments twice (as arguments
    // and as the locals they are moved into), and this state is what every idle client costs.
    async move {
        let mut rbuf = BytesMut::new();
        let mut read_size = READ_FIRST;
        let mut deadline = Instant::now() + conn.broker().config.connect_timeout;
        // Bytes handed to the writer that a buffering transport may still hold.
        let mut unflushed = false;
        // Counts this client under its listener and protocol version once CONNECT is accepted.
        let mut counted: Option<ConnectedGuard<'_>> = None;
        // Until when a pause for congested subscribers may last: one deadline for the whole
        // pause, whichever and however many subscribers cause it.
        let mut pressure_deadline: Option<Instant> = None;
        // Deliveries are ready that did not fit the output buffer yet.
        let mut fill_pending = false;
        // Waits that exist only while needed, boxed so that an idle connection does not carry
        // them: held acknowledgements (until the store is durable) and backpressure.
        let mut acks_wait: Option<(Ticket, Wait)> = None;
        let mut drained_wait: Option<(SessionId, Wait)> = None;
        // One timer for the keep-alive (or CONNECT) deadline and the backpressure wait.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        // Reads and writes take turns at being looked at first, so neither starves the other.
        let mut read_first = false;
        // Bytes were read and wait to be processed; true if they woke this task and the client
        // is not streaming (then a PUBLISH among them lets other woken tasks go first).
        let mut received: Option<bool> = None;
        // Only tokio's multi-thread scheduler polls the last-woken task first (its LIFO slot);
        // the current-thread one keeps wake-up order by itself.
        let lifo = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);

        let reason = 'conn: loop {
            if let Some(woken) = received.take() {
                // A PUBLISH that woke this task waits one scheduling round: the tasks woken by
                // the same batch of socket events run first. tokio polls the last-woken task
                // first (its LIFO slot), which would otherwise reverse the kernel's order
                // between, say, a SUBSCRIBE on another connection and this PUBLISH sent right
                // after it, and the new subscriber would miss it. (Here, at the top of the
                // loop, the wait adds nothing to the task's size.)
                if woken && rbuf.first().is_some_and(|b| b >> 4 == 3) {
                    tokio::task::yield_now().await;
                }
                let was_connected = conn.is_connected();
                let processed = process(&mut conn, &mut rbuf);
                // A quiet connection gives its read buffer back between reads: idle
                // connections then hold no buffer at all.
                if rbuf.is_empty() && read_size == READ_FIRST {
                    rbuf = BytesMut::new();
                }
                if !was_connected && conn.is_connected() {
                    counted = Some(ConnectedGuard::new(&metrics, listener, conn.protocol()));
                }
                // Keep alive counts whole packets, not bytes (MQTT 5 [MQTT-3.1.2-22]: "does not
                // receive an MQTT Control Packet"): a client trickling a packet that never
                // completes is not kept alive by it, and the CONNECT deadline stands until a
                // CONNECT is accepted.
                match processed {
                    Err(reason) => break 'conn reason,
                    Ok(false) => {}
                    Ok(true) => {
                        deadline = match conn.idle_timeout() {
                            Some(idle) => Instant::now() + idle,
                            None if conn.is_connected() => far_future(),
                            None => deadline,
                        };
                    }
                }
            }
            if fill_pending && conn.out().len() < OUT_FILL_LIMIT {
                fill_pending = conn.fill(OUT_FILL_LIMIT);
            }
            // Backpressure: while subscribers this client publishes to are congested, stop
            // reading from it (instead of dropping), for at most `backpressure_timeout` in
            // all: the pause waits for each of them in turn, against one deadline, so that N
            // congested subscribers do not hold the publisher N times as long.
            let pressure = conn.pressure();
            match &pressure {
                Some(s) if drained_wait.as_ref().is_none_or(|(id, _)| *id != s.id) => {
                    if pressure_deadline.is_none() {
                        let broker = conn.broker();
                        pressure_deadline =
                            Some(Instant::now() + broker.config.backpressure_timeout);
                        broker
                            .metrics
                            .backpressure_pauses
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
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
                    let store = conn.broker().store().clone();
                    acks_wait = Some((
                        t,
                        Box::pin(async move {
                            store.wait_or_failing(t).await;
                        }),
                    ));
                }
                None => acks_wait = None,
                _ => {}
            }
            let read_open = conn.out().len() < OUT_READ_LIMIT && pressure.is_none();
            let wake_at = pressure_deadline.map_or(deadline, |at| at.min(deadline));
            if timer.deadline() != wake_at {
                timer.as_mut().reset(wake_at);
            }
            read_first = !read_first;
            // How many times the wait below was polled: more than once means this task slept
            // and was woken.
            let mut polls = 0u8;
            // Every source is polled in place; each poll is cancel-safe (bytes move only when a
            // read or write completes, signals are kept until taken).
            let event = std::future::poll_fn(|cx| {
                polls = polls.saturating_add(1);
                // Kicks (takeover, shutdown, ...) and delivery wake-ups arrive through one
                // signal. A kick wins over everything; deliveries only mark the outbox for
                // filling, and wake the loop by themselves only when nothing else is ready:
                // under load publishers signal again faster than this client is written to,
                // and its writes must not wait behind that.
                match conn.kick().poll_signalled(cx) {
                    Poll::Ready(Signal::Kicked(reason)) => {
                        return Poll::Ready(Event::Kicked(reason));
                    }
                    Poll::Ready(Signal::Deliveries) => fill_pending = true,
                    Poll::Pending => {}
                }
                // Acknowledgements held until the store has what they acknowledge.
                if let Some((_, wait)) = &mut acks_wait
                    && wait.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Event::AcksDurable);
                }
                let write = unflushed || !conn.out().is_empty();
                for turn in [read_first, !read_first] {
                    if turn && read_open {
                        if let Poll::Ready(r) =
                            poll_read_some(&mut stream, &mut rbuf, read_size, cx)
                        {
                            return Poll::Ready(Event::Read(r));
                        }
                    } else if !turn
                        && write
                        && let Poll::Ready(r) = poll_write_or_flush(&mut stream, conn.out(), cx)
                    {
                        return Poll::Ready(Event::Wrote(r));
                    }
                }
                if let Some((_, wait)) = &mut drained_wait
                    && wait.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Event::Drained);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                if fill_pending && conn.out().len() < OUT_FILL_LIMIT {
                    return Poll::Ready(Event::Fill);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Kicked(reason) => break 'conn reason,
                Event::Fill => {}
                Event::AcksDurable => {
                    acks_wait = None;
                    // The store cannot write: close (v5 DISCONNECT 0x97) rather than leave the
                    // client waiting for acknowledgements; what it sent is written when the
                    // store recovers, and what was not acknowledged it sends again.
                    let store = conn.broker().store();
                    if store.failing() && conn.ack_wait().is_some_and(|t| t > store.durable()) {
                        break 'conn CloseReason::StoreUnavailable;
                    }
                    conn.release_acks();
                }
                Event::Wrote(res) => match res {
                    Ok(Written::Bytes(0)) => break 'conn CloseReason::ConnectionLost,
                    Ok(Written::Bytes(_)) => unflushed = true,
                    Ok(Written::Flushed) => unflushed = false,
                    Err(err) => break 'conn io_close_reason(&conn, &err, "write"),
                },
                Event::Read(res) => {
                    match res {
                        Ok(Read { bytes: 0, .. }) => break 'conn CloseReason::ConnectionLost,
                        // A read that filled the buffer: the client sends a lot, read more at once.
                        Ok(Read { filled: true, .. }) => {
                            read_size = (read_size * 2).min(READ_CHUNK)
                        }
                        Ok(_) => {}
                        Err(err) => break 'conn io_close_reason(&conn, &err, "read"),
                    }
                    // Processed at the top of the loop (see `received`). A client whose reads
                    // never filled the first buffer is not streaming: it is the one whose
                    // PUBLISH may race a SUBSCRIBE sent just before it.
                    received = Some(lifo && polls > 1 && read_size == READ_FIRST);
                }
                Event::Drained => drained_wait = None,
                Event::Timer => {
                    if Instant::now() >= deadline {
                        if !rbuf.is_empty() {
                            // Part of a packet arrived and the rest did not in time (a
                            // trickling client, or one that stopped mid-packet).
                            conn.broker()
                                .metrics
                                .incomplete_packet_timeouts
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        break 'conn if conn.is_connected() {
                            CloseReason::KeepAliveTimeout
                        } else {
                            CloseReason::ConnectTimeout
                        };
                    }
                    // The pause ran out: every subscriber still congested is left to its
                    // queue budgets until it catches up.
                    if pressure_deadline.is_some_and(|at| Instant::now() >= at) {
                        conn.give_up_on_congested();
                    }
                }
            }
        };

        // The closing steps run boxed: their timers and futures would otherwise take room in
        // every connection's task for its whole life.
        Box::pin(close_out(&mut conn, &mut stream, &mut rbuf, &reason)).await;
        log_close(&conn, listener, &reason);
        drop(counted);
        reason
    }
}

/// Closes the connection: the broker's side, the last packets flushed, the socket shut down,
/// and a short linger when the server told the client why.
async fn close_out<S>(
    conn: &mut Connection,
    stream: &mut S,
    rbuf: &mut BytesMut,
    reason: &CloseReason,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.close(reason);
    if !conn.out().is_empty() {
        let out = conn.out();
        let _ = tokio::time::timeout(CLOSE_FLUSH, stream.write_all_buf(out)).await;
    }
    let _ = tokio::time::timeout(CLOSE_FLUSH, stream.shutdown()).await;
    if reason.server_sends_disconnect() || matches!(reason, CloseReason::ConnectRefused(_)) {
        linger(stream, rbuf).await;
    }
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
/// buffer (TLS records, WebSocket frames; a no-op on TCP). Cancel-safe: bytes leave `out`
/// only when a write completes.
fn poll_write_or_flush<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &mut OutBuf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Written>> {
    if out.is_empty() {
        Pin::new(writer)
            .poll_flush(cx)
            .map_ok(|()| Written::Flushed)
    } else {
        tokio_util::io::poll_write_buf(Pin::new(writer), cx, out).map_ok(Written::Bytes)
    }
}

/// Decodes and handles every complete packet in `rbuf`; true if there was at least one.
fn process(conn: &mut Connection, rbuf: &mut BytesMut) -> Result<bool, CloseReason> {
    let mut any = false;
    loop {
        match tern_codec::decode(rbuf, conn.max_packet_size(), conn.protocol()) {
            Ok(Some(packet)) => {
                any = true;
                conn.handle(packet)?
            }
            Ok(None) => return Ok(any),
            Err(err) => return Err(conn.decode_error(&err)),
        }
    }
}

/// A boxed wait (see `acks_wait` and `drained_wait`).
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What one read did.
struct Read {
    bytes: usize,
    /// The read filled all the room there was: more is probably waiting.
    filled: bool,
}

/// Reads what the client sent into `buf`. A connection whose buffer is empty reads into a
/// buffer on the stack of the poll (not in the task), so that an idle connection holds no
/// read buffer at all; a busy one reads straight into `buf`, grown to `size`. Cancel-safe:
/// bytes are only taken when the read completes.
fn poll_read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    size: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Read>> {
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
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(reader), cx, buf))?;
    Poll::Ready(Ok(Read {
        bytes: n,
        filled: n == room,
    }))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn log_close(conn: &Connection, listener: Listener, reason: &CloseReason) {
    let client = conn
        .session()
        .map(|s| s.key.client_id.to_string())
        .unwrap_or_default();
    let peer = conn.peer();
    match reason {
        CloseReason::ClientDisconnect
        | CloseReason::ConnectionLost
        | CloseReason::ServerShuttingDown => {
            tracing::debug!(peer = %peer, listener = listener.name(), client_id = %client, reason = reason.label(), "connection closed");
        }
        _ => {
            tracing::info!(peer = %peer, listener = listener.name(), client_id = %client, reason = %reason, "connection closed");
        }
    }
}
