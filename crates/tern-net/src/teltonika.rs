//! The TCP side of a Teltonika channel (docs/teltonika.md): the listener, one task per tracker
//! connection, the IMEI handshake, frames in order, the record ACK only once the records are
//! stored, Codec 12 commands out and their responses in, the timeouts and the close codes.
//!
//! What the records become (device lookup, storage, publication, logs) is the business of the
//! layer above, behind [`TrackerSink`]; this module only owns the sockets. One
//! [`TeltonikaChannel`] serves one channel's listener:
//!
//! - **Handshake**: a valid IMEI within `handshake_timeout`, then [`TrackerSink::admit`]; the
//!   answer byte `01` or `00` (and close). At `max_connections` the IMEI is refused.
//! - **One connection per IMEI**: a newly admitted connection closes the older one (close code
//!   12, ident collision); commands go to the newest.
//! - **Frames** are handled one at a time, in order: an AVL frame's records go to
//!   [`TrackerSink::store`], and the 4-byte ACK (the record count) is written only when that
//!   resolves; a failure sends no ACK and closes, so the tracker sends the records again. A bad
//!   frame (preamble, length, CRC, counts, codec) closes without an ACK (code 4); a frame not
//!   complete within `frame_timeout`, or no byte for `inactivity_timeout`, closes (code 17).
//! - **Commands**: [`TeltonikaChannel::send_command`] queues a command for an IMEI's connection
//!   (bounded; full = refused); it is written only when no ACK is owed and no other command is
//!   outstanding; the next Codec 12 response answers it ([`CommandReply`]). A command not
//!   answered within its own timeout stops being outstanding (its reply says so); a command whose
//!   caller stopped waiting before it was written is not sent.
//! - Every accepted connection, identification and close is reported ([`TrackerEvent`]) for the
//!   channel log (events 100, 101, 102 with the close code and counters).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tern_teltonika::{
    AvlPacket, ChannelAction, Codec12, CommandType, DecodeError, Frame, FrameDecoder,
    HandshakeAnswer, Imei, decode_imei, encode_ack, encode_command,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The channel's close codes (docs/teltonika.md#state-and-logs).
pub mod close_code {
    /// The tracker closed, or a partial frame was dropped at its close.
    pub const NORMAL: u8 = 0;
    /// Protocol violation: a bad handshake or frame.
    pub const PROTOCOL_VIOLATION: u8 = tern_teltonika::CLOSE_PROTOCOL_VIOLATION;
    /// The server shuts down.
    pub const SHUTDOWN: u8 = 7;
    /// The channel was updated (its port moved), disabled or deleted.
    pub const CHANNEL_UPDATED: u8 = 8;
    /// A newer connection with the same IMEI.
    pub const IDENT_COLLISION: u8 = 12;
    /// No byte for `inactivity_timeout`, or a frame not complete within `frame_timeout`.
    pub const INACTIVITY: u8 = 17;
    /// The device is disabled or deleted.
    pub const DEVICE_DISABLED: u8 = 23;
}

/// A channel's limits (docs/teltonika.md#channel-and-device-type; every number a default).
#[derive(Debug, Clone)]
pub struct TeltonikaOptions {
    pub max_connections: usize,
    /// The largest data field of a frame, bytes.
    pub max_packet_size: u32,
    pub handshake_timeout: Duration,
    /// From a frame's first byte to its last.
    pub frame_timeout: Duration,
    /// Without a byte from the tracker.
    pub inactivity_timeout: Duration,
    /// Commands queued per connection.
    pub command_queue: usize,
}

impl Default for TeltonikaOptions {
    fn default() -> Self {
        TeltonikaOptions {
            max_connections: 10_000,
            max_packet_size: tern_teltonika::DEFAULT_MAX_PACKET_SIZE,
            handshake_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(60),
            inactivity_timeout: Duration::from_secs(600),
            command_queue: 16,
        }
    }
}

/// What the layer above says of an IMEI at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Answer `00` and close with this code (e.g. [`close_code::DEVICE_DISABLED`]).
    Reject(u8),
}

/// A frame's records could not be kept: no ACK, the connection closes, the tracker resends.
#[derive(Debug, Clone, thiserror::Error)]
#[error("records not stored: {0}")]
pub struct StoreFailed(pub String);

/// Resolves when a frame's records are durable (or kept in the channel buffer).
pub type StoreFuture = Pin<Box<dyn Future<Output = Result<(), StoreFailed>> + Send>>;

/// What happened on a connection, for the channel log.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerEvent {
    /// Event 100: a TCP connection was accepted.
    Accepted { peer: SocketAddr },
    /// Event 101: the tracker sent an IMEI that was admitted.
    Identified { peer: SocketAddr, imei: String },
    /// Bad input (docs/teltonika.md#bad-input): what it was (`DecodeError::kind`, or
    /// `handshake_timeout`, `frame_timeout`, `truncated`), before the connection closes.
    Refused {
        peer: SocketAddr,
        imei: Option<String>,
        kind: &'static str,
        error: String,
    },
    /// A frame's records were stored and ACKed, `latency` after the frame was whole.
    Acked { records: u32, latency: Duration },
    /// Event 102: the connection closed.
    Closed {
        peer: SocketAddr,
        imei: Option<String>,
        close_code: u8,
        /// Seconds the connection lasted.
        duration: f64,
        /// AVL records received and acknowledged.
        msgs: u64,
        recv: u64,
        send: u64,
    },
}

/// The layer above a Teltonika channel: admits IMEIs, stores records, takes command responses,
/// and hears what happened. Calls come from connection tasks and must not block.
pub trait TrackerSink: Send + Sync + 'static {
    fn admit(&self, imei: &Imei, peer: SocketAddr) -> Admission;
    /// The records of one valid AVL frame, in order; the ACK waits for the returned future.
    fn store(&self, imei: &Imei, peer: SocketAddr, packet: AvlPacket) -> StoreFuture;
    fn event(&self, event: TrackerEvent);
}

/// A Codec 12 command for one connection ([`TeltonikaChannel::send_command`]).
#[derive(Debug)]
pub struct Command {
    /// The command's payload (text, or raw bytes).
    pub payload: Bytes,
    /// How long the command stays outstanding once written; no other command goes meanwhile.
    pub timeout: Duration,
    /// Where the answer goes. Dropped without an answer when the connection closes first.
    pub reply: oneshot::Sender<CommandReply>,
}

/// What became of a written command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandReply {
    /// The device's Codec 12 response.
    Response(Codec12),
    /// No response within the command's timeout.
    Timeout,
}

/// A command could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the device is not connected")]
    NotConnected,
    #[error("the device's command queue is full")]
    QueueFull,
}

/// One open connection, as [`TeltonikaChannel::connections`] lists it.
#[derive(Debug, Clone)]
pub struct TrackerConnection {
    pub id: u64,
    pub imei: String,
    pub peer: SocketAddr,
    /// Unix seconds.
    pub since: f64,
    pub msgs: u64,
}

/// A connection's handle in the channel's registry.
#[derive(Debug)]
struct Handle {
    id: u64,
    peer: SocketAddr,
    since: f64,
    msgs: Arc<AtomicU64>,
    commands: mpsc::Sender<Command>,
    kick: Arc<Kick>,
}

/// A request to close one connection, with its close code (first one wins).
#[derive(Debug, Default)]
struct Kick {
    code: Mutex<Option<u8>>,
    notify: Notify,
}

impl Kick {
    fn kick(&self, code: u8) {
        let mut slot = self.code.lock();
        if slot.is_none() {
            *slot = Some(code);
            drop(slot);
            self.notify.notify_one();
        }
    }

    fn code(&self) -> Option<u8> {
        *self.code.lock()
    }
}

/// One Teltonika channel's connections.
pub struct TeltonikaChannel {
    sink: Arc<dyn TrackerSink>,
    options: TeltonikaOptions,
    by_imei: Mutex<HashMap<String, Handle>>,
    open: AtomicUsize,
    next_id: AtomicU64,
    stop: CancellationToken,
    /// The close code of [`TeltonikaChannel::close`].
    stop_code: Mutex<u8>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for TeltonikaChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeltonikaChannel")
            .field("options", &self.options)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl TeltonikaChannel {
    pub fn new(sink: Arc<dyn TrackerSink>, options: TeltonikaOptions) -> Arc<TeltonikaChannel> {
        Arc::new(TeltonikaChannel {
            sink,
            options,
            by_imei: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stop: CancellationToken::new(),
            stop_code: Mutex::new(close_code::CHANNEL_UPDATED),
            tasks: TaskTracker::new(),
        })
    }

    /// Accepts connections on `listener` until [`TeltonikaChannel::close`] or `shutdown`. The
    /// listener is shared so that a channel whose settings change can hand it to its successor
    /// (both accept on it for a moment; the port never closes).
    pub async fn serve(self: Arc<Self>, listener: Arc<TcpListener>, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.stop.cancelled() => break,
                _ = shutdown.cancelled() => {
                    self.close(close_code::SHUTDOWN);
                    break;
                }
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "teltonika accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            self.tasks
                .spawn(async move { this.connection(stream, peer).await });
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Closes the listener and every connection with `code` (channel updated or deleted, or
    /// shutdown).
    pub fn close(&self, code: u8) {
        *self.stop_code.lock() = code;
        self.stop.cancel();
        for handle in self.by_imei.lock().values() {
            handle.kick.kick(code);
        }
    }

    fn stop_code(&self) -> u8 {
        *self.stop_code.lock()
    }

    /// Closes the connection of `imei`, if any (its device was disabled or deleted: code 23).
    pub fn disconnect(&self, imei: &str, code: u8) -> bool {
        match self.by_imei.lock().get(imei) {
            Some(handle) => {
                handle.kick.kick(code);
                true
            }
            None => false,
        }
    }

    /// Queues a Codec 12 command for the connection of `imei`; its answer comes on
    /// `command.reply`.
    pub fn send_command(&self, imei: &str, command: Command) -> Result<(), CommandError> {
        let map = self.by_imei.lock();
        let handle = map.get(imei).ok_or(CommandError::NotConnected)?;
        handle.commands.try_send(command).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => CommandError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => CommandError::NotConnected,
        })
    }

    /// The open, identified connections.
    pub fn connections(&self) -> Vec<TrackerConnection> {
        let mut list: Vec<TrackerConnection> = self
            .by_imei
            .lock()
            .iter()
            .map(|(imei, h)| TrackerConnection {
                id: h.id,
                imei: imei.clone(),
                peer: h.peer,
                since: h.since,
                msgs: h.msgs.load(Ordering::Relaxed),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// TCP connections open now, identified or not.
    pub fn connections_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Serves one tracker connection on any byte stream (the listener's TCP connections; tests
    /// drive it over an in-memory pipe, with the clock paused, to check the timeouts without
    /// waiting for them).
    pub async fn connection<S>(self: Arc<Self>, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.sink.event(TrackerEvent::Accepted { peer });
        let mut conn = Conn {
            channel: &self,
            stream,
            peer,
            rbuf: BytesMut::new(),
            imei: None,
            started: Instant::now(),
            msgs: Arc::new(AtomicU64::new(0)),
            recv: 0,
            send: 0,
        };
        let code = conn.run().await;
        let _ = conn.stream.shutdown().await;
        let imei = conn.imei.take();
        if let Some(imei) = &imei {
            let mut map = self.by_imei.lock();
            if map
                .get(imei.as_str())
                .is_some_and(|h| Arc::ptr_eq(&h.msgs, &conn.msgs))
            {
                map.remove(imei.as_str());
            }
        }
        tracing::debug!(peer = %peer, imei = imei.as_ref().map(|i| i.as_str()), close_code = code, "teltonika connection closed");
        self.sink.event(TrackerEvent::Closed {
            peer,
            imei: imei.map(|i| i.as_str().to_owned()),
            close_code: code,
            duration: conn.started.elapsed().as_secs_f64(),
            msgs: conn.msgs.load(Ordering::Relaxed),
            recv: conn.recv,
            send: conn.send,
        });
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One tracker connection.
struct Conn<'a, S> {
    channel: &'a TeltonikaChannel,
    stream: S,
    peer: SocketAddr,
    rbuf: BytesMut,
    imei: Option<Imei>,
    started: Instant,
    msgs: Arc<AtomicU64>,
    recv: u64,
    send: u64,
}

/// Why reading stopped.
enum ReadEnd {
    Closed,
    TimedOut,
    Failed,
    Kicked(u8),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<'_, S> {
    /// Runs the connection; returns its close code.
    async fn run(&mut self) -> u8 {
        let opts = self.channel.options.clone();
        let kick = Arc::new(Kick::default());
        // The handshake.
        let deadline = Instant::now() + opts.handshake_timeout;
        let imei = loop {
            match decode_imei(&mut self.rbuf) {
                Ok(Some(imei)) => break imei,
                Ok(None) => {}
                Err(err) => return self.refuse(&err).await,
            }
            match self.read(deadline, &kick).await {
                Ok(()) => {}
                Err(ReadEnd::TimedOut) => {
                    self.refused(
                        None,
                        "handshake_timeout",
                        "no full handshake in time".into(),
                    );
                    let _ = self.write(&[HandshakeAnswer::Reject.byte()]).await;
                    return close_code::PROTOCOL_VIOLATION;
                }
                Err(end) => return self.ended(end),
            }
        };
        let at_limit = self.channel.open.load(Ordering::Relaxed) > opts.max_connections;
        let admission = if at_limit {
            Admission::Reject(close_code::NORMAL)
        } else {
            self.channel.sink.admit(&imei, self.peer)
        };
        if let Admission::Reject(code) = admission {
            let _ = self.write(&[HandshakeAnswer::Reject.byte()]).await;
            return code;
        }
        // One connection per IMEI: the older one goes.
        let (commands_tx, mut commands) = mpsc::channel(opts.command_queue.max(1));
        {
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let handle = Handle {
                id: self.channel.next_id.fetch_add(1, Ordering::Relaxed),
                peer: self.peer,
                since,
                msgs: self.msgs.clone(),
                commands: commands_tx,
                kick: kick.clone(),
            };
            if let Some(old) = self
                .channel
                .by_imei
                .lock()
                .insert(imei.as_str().to_owned(), handle)
            {
                old.kick.kick(close_code::IDENT_COLLISION);
            }
        }
        self.imei = Some(imei.clone());
        self.channel.sink.event(TrackerEvent::Identified {
            peer: self.peer,
            imei: imei.as_str().to_owned(),
        });
        if self.write(&[HandshakeAnswer::Accept.byte()]).await.is_err() {
            return close_code::NORMAL;
        }

        let decoder = FrameDecoder::new(opts.max_packet_size);
        // The command written and not yet answered: when it times out, and where the answer goes.
        let mut outstanding: Option<(Instant, oneshot::Sender<CommandReply>)> = None;
        // When the first byte of the frame being received arrived.
        let mut frame_started: Option<Instant> = None;
        loop {
            // Every whole frame first, in order.
            loop {
                match decoder.decode(&mut self.rbuf) {
                    Ok(Some(Frame::Avl(packet))) => {
                        let whole = Instant::now();
                        let count = packet.ack_count();
                        let stored = self.channel.sink.store(&imei, self.peer, packet);
                        let stored = tokio::select! {
                            r = stored => r,
                            _ = kick.notify.notified() => return kick.code().unwrap_or(close_code::NORMAL),
                        };
                        if let Err(err) = stored {
                            tracing::warn!(peer = %self.peer, imei = %imei, %err, "teltonika records not stored: no ACK");
                            return close_code::NORMAL;
                        }
                        self.msgs.fetch_add(u64::from(count), Ordering::Relaxed);
                        let mut ack = BytesMut::with_capacity(4);
                        encode_ack(count, &mut ack);
                        if self.write(&ack).await.is_err() {
                            return close_code::NORMAL;
                        }
                        self.channel.sink.event(TrackerEvent::Acked {
                            records: count,
                            latency: whole.elapsed(),
                        });
                    }
                    Ok(Some(Frame::Codec12(r))) if r.kind == CommandType::Response => {
                        if let Some((_, reply)) = outstanding.take() {
                            let _ = reply.send(CommandReply::Response(r));
                        } else {
                            tracing::debug!(peer = %self.peer, imei = %imei, "teltonika response with no command outstanding: dropped");
                        }
                    }
                    Ok(Some(other)) => {
                        tracing::debug!(peer = %self.peer, imei = %imei, frame = ?other, "teltonika frame a tracker does not send: dropped");
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(peer = %self.peer, imei = %imei, %err, "teltonika bad frame");
                        self.refused(Some(&imei), err.kind(), err.to_string());
                        return close_code::PROTOCOL_VIOLATION;
                    }
                }
            }
            if outstanding
                .as_ref()
                .is_some_and(|(until, _)| *until <= Instant::now())
                && let Some((_, reply)) = outstanding.take()
            {
                let _ = reply.send(CommandReply::Timeout);
            }
            // No ACK is owed here: a command may go if none is outstanding.
            let now = Instant::now();
            let mut deadline = now + opts.inactivity_timeout;
            if self.rbuf.is_empty() {
                frame_started = None;
            } else {
                // Part of a frame: the rest must come within `frame_timeout` of its first byte
                // (a slow but complete frame is a normal frame).
                let started = *frame_started.get_or_insert(now);
                deadline = deadline.min(started + opts.frame_timeout);
            }
            let command_wait = outstanding.as_ref().map(|(until, _)| *until);
            tokio::select! {
                biased;
                _ = kick.notify.notified() => return kick.code().unwrap_or(close_code::NORMAL),
                _ = self.channel.stop.cancelled() => return self.channel.stop_code(),
                cmd = commands.recv(), if outstanding.is_none() => {
                    let Some(cmd) = cmd else { continue };
                    if cmd.reply.is_closed() {
                        // Nobody waits for it any more (its caller gave up): not sent.
                        continue;
                    }
                    let mut frame = BytesMut::new();
                    encode_command(&cmd.payload, &mut frame);
                    if self.write(&frame).await.is_err() {
                        return close_code::NORMAL;
                    }
                    outstanding = Some((Instant::now() + cmd.timeout, cmd.reply));
                }
                _ = sleep_until_opt(command_wait) => {
                    if let Some((_, reply)) = outstanding.take() {
                        let _ = reply.send(CommandReply::Timeout);
                    }
                }
                r = read_some(&mut self.stream, &mut self.rbuf, deadline) => match r {
                    Ok(n) => self.recv += n as u64,
                    Err(ReadEnd::TimedOut) => {
                        if !self.rbuf.is_empty() {
                            let text = format!("frame not complete within frame_timeout: {} bytes dropped", self.rbuf.len());
                            self.refused(Some(&imei), "frame_timeout", text);
                        }
                        return close_code::INACTIVITY;
                    }
                    Err(ReadEnd::Closed) if !self.rbuf.is_empty() => {
                        tracing::debug!(peer = %self.peer, imei = %imei, "teltonika tracker closed mid-frame: partial frame dropped");
                        let text = format!("closed inside a frame: {} bytes dropped", self.rbuf.len());
                        self.refused(Some(&imei), "truncated", text);
                        return close_code::NORMAL;
                    }
                    Err(end) => return self.ended(end),
                },
            }
        }
    }

    fn refused(&self, imei: Option<&Imei>, kind: &'static str, error: String) {
        self.channel.sink.event(TrackerEvent::Refused {
            peer: self.peer,
            imei: imei.map(|i| i.as_str().to_owned()),
            kind,
            error,
        });
    }

    /// A bad handshake: answer `00`, close with code 4.
    async fn refuse(&mut self, err: &DecodeError) -> u8 {
        tracing::debug!(peer = %self.peer, %err, "teltonika handshake refused");
        self.refused(None, err.kind(), err.to_string());
        let _ = self.write(&[HandshakeAnswer::Reject.byte()]).await;
        match err.action() {
            ChannelAction::DropPartial => close_code::NORMAL,
            _ => close_code::PROTOCOL_VIOLATION,
        }
    }

    fn ended(&self, end: ReadEnd) -> u8 {
        match end {
            ReadEnd::Closed | ReadEnd::Failed => close_code::NORMAL,
            ReadEnd::TimedOut => close_code::INACTIVITY,
            ReadEnd::Kicked(code) => code,
        }
    }

    async fn read(&mut self, deadline: Instant, kick: &Kick) -> Result<(), ReadEnd> {
        tokio::select! {
            _ = kick.notify.notified() => Err(ReadEnd::Kicked(kick.code().unwrap_or(close_code::NORMAL))),
            _ = self.channel.stop.cancelled() => Err(ReadEnd::Kicked(self.channel.stop_code())),
            r = read_some(&mut self.stream, &mut self.rbuf, deadline) => {
                let n = r?;
                self.recv += n as u64;
                Ok(())
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.send += bytes.len() as u64;
        Ok(())
    }
}

/// Reads what arrived, until `deadline`. The buffer never holds more than one frame's worth
/// beyond what was decoded: the decoder refuses a length above `max_packet_size` from the
/// frame's first 8 bytes.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    deadline: Instant,
) -> Result<usize, ReadEnd> {
    if rbuf.capacity() - rbuf.len() < 512 {
        rbuf.reserve(4096);
    }
    match tokio::time::timeout_at(deadline, stream.read_buf(rbuf)).await {
        Err(_) => Err(ReadEnd::TimedOut),
        Ok(Ok(0)) => Err(ReadEnd::Closed),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) => Err(ReadEnd::Failed),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
