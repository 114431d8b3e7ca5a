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
use tern_broker::{Broker, CloseReason, Connection, Kick, Signal};
use tern_codec::ProtocolVersion;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::accept::Listener;
use crate::metrics::NetMetrics;

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
/// A read that woke at most this many subscribers lets them write before its acknowledgements
/// go out (see `run_connection`).
const DELIVER_FIRST_MAX: u32 = 2;
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

/// What woke the driver (see [`Driver::poll_event`]).
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
/// The connection's task is what an idle client costs, so its state is kept small: a
/// [`Driver`] and nothing else. The wait polls the socket and the kick signal (a registered
/// waker) in place instead of holding a future per source; the keep-alive and CONNECT
/// deadlines are the broker's deadline watch's (tern-broker's `deadlines.rs`: the connection
/// is kicked when one passes), and the waits that exist only while needed (held
/// acknowledgements, backpressure and its timer) are boxed, as are the closing steps.
pub fn run_connection<S>(
    broker: Arc<Broker>,
    metrics: Arc<NetMetrics>,
    peer: Peer,
    stream: S,
) -> impl Future<Output = CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = Connection::new(broker, peer.addr, peer.listener.name());
    let mut driver = Driver::new(conn, stream, metrics, peer.listener);
    // An async block, not an async fn, and the driver built before it and used in place: a
    // value moved into a local inside the future would be kept twice (as the captured value
    // and as the local), and this state is what every idle client costs.
    async move {
        let reason = loop {
            if let Some(woken) = driver.received.take() {
                // A PUBLISH that woke this task waits one scheduling round: the tasks woken by
                // the same batch of socket events run first. tokio polls the last-woken task
                // first (its LIFO slot), which would otherwise reverse the kernel's order
                // between, say, a SUBSCRIBE on another connection and this PUBLISH sent right
                // after it, and the new subscriber would miss it. (Here, at the top of the
                // loop, the wait adds nothing to the task's size.)
                if woken && driver.rbuf.first().is_some_and(|b| b >> 4 == 3) {
                    tokio::task::yield_now().await;
                }
                let wakes = Kick::wakes_on_this_thread();
                if let Err(reason) = driver.on_received() {
                    break reason;
                }
                // Deliveries before acknowledgements: what was read woke a subscriber or two,
                // which sit in this worker's LIFO slot, and this client is not streaming. One
                // more round lets them write the message before this task writes its PUBACK:
                // that write wakes the client's thread, which on a busy machine takes the core
                // while the delivery waits (the latency profile in the README). Not after a
                // streaming read, nor for a fan-out to many: there the publisher's window
                // would wait on every subscriber's write.
                let woke = Kick::wakes_on_this_thread().wrapping_sub(wakes);
                if woken && (1..=DELIVER_FIRST_MAX).contains(&woke) && !driver.conn.out().is_empty()
                {
                    tokio::task::yield_now().await;
                }
            }
            driver.prepare();
            let event = std::future::poll_fn(|cx| driver.poll_event(cx)).await;
            let next = match event {
                Event::Kicked(reason) => Err(driver.on_kicked(reason)),
                Event::Fill => Ok(()),
                Event::AcksDurable => driver.conn.acks_durable(),
                Event::Wrote(res) => driver.on_wrote(res),
                Event::Read(res) => driver.on_read(res),
                Event::Drained => Ok(()),
                Event::Timer => driver.on_timer(),
            };
            if let Err(reason) = next {
                break reason;
            }
        };
        // The closing steps run boxed: their timers and futures would otherwise take room in
        // every connection's task for its whole life.
        Box::pin(close_out(
            &mut driver.conn,
            &mut driver.stream,
            &mut driver.rbuf,
            &reason,
        ))
        .await;
        log_close(&driver.conn, driver.listener, &reason);
        reason
    }
}

/// One connection's driver: the transport, the read buffer, the broker's [`Connection`] (with
/// its output buffer) and the little state the wait needs. One method per event.
struct Driver<S> {
    conn: Connection,
    stream: S,
    rbuf: BytesMut,
    metrics: Arc<NetMetrics>,
    /// The protocol version this client is counted under (with its listener) once CONNECT is
    /// accepted, until the driver is dropped.
    counted: Option<ProtocolVersion>,
    /// Until when a pause for congested subscribers may last: one deadline for the whole
    /// pause, whichever and however many subscribers cause it. Boxed, made at the first pause
    /// and kept for the next ones (a publisher that paused once pauses again): most
    /// connections never pause, and a `Sleep` is 112 bytes.
    pressure: Option<Pin<Box<Sleep>>>,
    /// A pause is on: `pressure` holds its deadline.
    pausing: bool,
    /// Bytes to read per syscall: grows while reads fill the buffer, back to the first size
    /// after a small read.
    read_size: u32,
    /// The last read filled all the room it had: the client is streaming.
    read_filled: bool,
    listener: Listener,
    /// Bytes handed to the writer that a buffering transport may still hold.
    unflushed: bool,
    /// Deliveries are ready that did not fit the output buffer yet.
    fill_pending: bool,
    /// Reads and writes take turns at being looked at first, so neither starves the other.
    read_first: bool,
    /// Reading pauses: the output buffer is full or subscribers are congested.
    read_open: bool,
    /// Only tokio's multi-thread scheduler polls the last-woken task first (its LIFO slot);
    /// the current-thread one keeps wake-up order by itself.
    lifo: bool,
    /// How many times the current wait was polled: more than once means this task slept and
    /// was woken.
    polls: u8,
    /// Bytes were read and wait to be processed; true if they woke this task and the client
    /// is not streaming (then a PUBLISH among them lets other woken tasks go first).
    received: Option<bool>,
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(conn: Connection, stream: S, metrics: Arc<NetMetrics>, listener: Listener) -> Self {
        Driver {
            conn,
            stream,
            rbuf: BytesMut::new(),
            metrics,
            counted: None,
            pressure: None,
            pausing: false,
            read_size: READ_FIRST as u32,
            read_filled: false,
            listener,
            unflushed: false,
            fill_pending: false,
            read_first: false,
            read_open: true,
            lifo: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread),
            polls: 0,
            received: None,
        }
    }

    /// Bytes arrived: decodes and handles every complete packet.
    fn on_received(&mut self) -> Result<(), CloseReason> {
        let conn = &mut self.conn;
        let was_connected = conn.is_connected();
        let processed = process(conn, &mut self.rbuf);
        // A connection gives its read buffer back once it has handled everything and the last
        // read did not fill it (the client has paused): idle connections hold no buffer at all,
        // also after a burst. A client that streams keeps its buffer between reads.
        // (Replaced even with no capacity left: an emptied buffer may still hold a share of
        // the allocation its packets were split from.)
        if self.rbuf.is_empty() && !self.read_filled {
            self.rbuf = BytesMut::new();
        }
        if !was_connected && conn.is_connected() {
            self.metrics
                .connect_accepted(self.listener, conn.protocol());
            self.counted = Some(conn.protocol());
        }
        // Keep alive counts whole packets, not bytes (MQTT 5 [MQTT-3.1.2-22]: "does not
        // receive an MQTT Control Packet"): a client trickling a packet that never completes
        // is not kept alive by it, and the CONNECT deadline stands until a CONNECT is accepted.
        if processed? {
            conn.packet_received();
        }
        Ok(())
    }

    /// Before each wait: fills the output buffer, decides whether to read, starts or ends the
    /// backpressure timer.
    fn prepare(&mut self) {
        if self.fill_pending && self.conn.out().len() < OUT_FILL_LIMIT {
            self.fill_pending = self.conn.fill(OUT_FILL_LIMIT);
        }
        // Everything went out and nothing waits to be encoded: give the write buffer back, so
        // that an idle connection holds none (the next packet takes a new one).
        if !self.fill_pending {
            self.conn.out().release();
        }
        // Backpressure: while subscribers this client publishes to are congested, stop
        // reading from it (instead of dropping), for at most `backpressure_timeout` in all:
        // the pause waits for each of them in turn, against one deadline, so that N congested
        // subscribers do not hold the publisher N times as long.
        let paused = self.conn.paused();
        if !paused {
            self.pausing = false;
        } else if !self.pausing {
            self.pausing = true;
            let broker = self.conn.broker();
            let until = Instant::now() + broker.config.backpressure_timeout;
            match &mut self.pressure {
                Some(timer) => timer.as_mut().reset(until),
                None => self.pressure = Some(Box::pin(tokio::time::sleep_until(until))),
            }
            broker
                .metrics
                .backpressure_pauses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.read_open = self.conn.out().len() < OUT_READ_LIMIT && !paused;
        self.read_first = !self.read_first;
        self.polls = 0;
    }

    /// The wait: polls every source in place; each poll is cancel-safe (bytes move only when
    /// a read or write completes, signals are kept until taken).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        self.polls = self.polls.saturating_add(1);
        // Kicks (takeover, shutdown, ...) and delivery wake-ups arrive through one signal. A
        // kick wins over everything; deliveries only mark the outbox for filling, and wake the
        // loop by themselves only when nothing else is ready: under load publishers signal
        // again faster than this client is written to, and its writes must not wait behind
        // that.
        match self.conn.kick().poll_signalled(cx) {
            Poll::Ready(Signal::Kicked(reason)) => return Poll::Ready(Event::Kicked(reason)),
            Poll::Ready(Signal::Deliveries) => self.fill_pending = true,
            Poll::Pending => {}
        }
        // Acknowledgements held until the store has what they acknowledge.
        if self.conn.poll_acks_durable(cx).is_ready() {
            return Poll::Ready(Event::AcksDurable);
        }
        let write = self.unflushed || !self.conn.out().is_empty();
        for turn in [self.read_first, !self.read_first] {
            if turn && self.read_open {
                if let Poll::Ready(r) =
                    poll_read_some(&mut self.stream, &mut self.rbuf, self.read_size, cx)
                {
                    return Poll::Ready(Event::Read(r));
                }
            } else if !turn
                && write
                && let Poll::Ready(r) = poll_write_or_flush(&mut self.stream, self.conn.out(), cx)
            {
                return Poll::Ready(Event::Wrote(r));
            }
        }
        if self.conn.poll_drained(cx).is_ready() {
            return Poll::Ready(Event::Drained);
        }
        if self.pausing
            && let Some(pressure) = &mut self.pressure
            && pressure.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::Timer);
        }
        if self.fill_pending && self.conn.out().len() < OUT_FILL_LIMIT {
            return Poll::Ready(Event::Fill);
        }
        Poll::Pending
    }

    /// A write (or flush) completed.
    fn on_wrote(&mut self, res: io::Result<Written>) -> Result<(), CloseReason> {
        match res {
            Ok(Written::Bytes(0)) => return Err(CloseReason::ConnectionLost),
            Ok(Written::Bytes(_)) => self.unflushed = true,
            Ok(Written::Flushed) => self.unflushed = false,
            Err(err) => return Err(io_close_reason(&self.conn, &err, "write")),
        }
        Ok(())
    }

    /// A read completed; the bytes are processed at the top of the loop (see `received`).
    fn on_read(&mut self, res: io::Result<Read>) -> Result<(), CloseReason> {
        match res {
            Ok(Read { bytes: 0, .. }) => return Err(CloseReason::ConnectionLost),
            // A read that filled the buffer: the client sends a lot, read more at once.
            Ok(Read { filled: true, .. }) => {
                self.read_size = (self.read_size * 2).min(READ_CHUNK as u32);
                self.read_filled = true;
            }
            Ok(Read { bytes, .. }) => {
                self.read_filled = false;
                // A small read: the client is quiet again, and its next read goes to the
                // stack (see `poll_read_some`) instead of a buffer of the burst's size.
                if bytes <= READ_FIRST {
                    self.read_size = READ_FIRST as u32;
                }
            }
            Err(err) => return Err(io_close_reason(&self.conn, &err, "read")),
        }
        // A client whose reads never filled the first buffer is not streaming: it is the one
        // whose PUBLISH may race a SUBSCRIBE sent just before it.
        self.received = Some(self.lifo && self.polls > 1 && self.read_size == READ_FIRST as u32);
        Ok(())
    }

    /// The connection was kicked: the reason it closes with. A keep-alive or CONNECT deadline
    /// that passed with part of a packet read is counted (a trickling client, or one that
    /// stopped mid-packet).
    fn on_kicked(&mut self, reason: CloseReason) -> CloseReason {
        if matches!(
            reason,
            CloseReason::KeepAliveTimeout | CloseReason::ConnectTimeout
        ) && !self.rbuf.is_empty()
        {
            self.conn
                .broker()
                .metrics
                .incomplete_packet_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        reason
    }

    /// The backpressure pause ran out: every subscriber still congested is left to its queue
    /// budgets until it catches up.
    fn on_timer(&mut self) -> Result<(), CloseReason> {
        self.conn.give_up_on_congested();
        Ok(())
    }
}

impl<S> Drop for Driver<S> {
    fn drop(&mut self) {
        if let Some(version) = self.counted {
            self.metrics.disconnected(self.listener, version);
        }
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
    size: u32,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Read>> {
    let size = size as usize;
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
