//! The client task: connect, run one connection until it ends, back off, again, until closed.
//!
//! What outlives a connection lives in [`Task`]: the QoS 1 publishes sent and not acknowledged
//! (re-sent with DUP, in order, after the next CONNACK), the packet id counter, the channels.
//! What belongs to one connection lives in [`Conn`]: the socket halves, the read and write
//! buffers, the events decoded and not yet handed to the owner, the SUBSCRIBEs awaiting SUBACK,
//! the keep-alive deadlines. [`Conn::run`] is one `select!` over cancel-safe waits whose state
//! is in those fields.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tern_codec::{
    ByteString, ConnAck, Connect, ConnectProperties, Disconnect, PacketId, ProtocolVersion,
    Publish, QoS, ReasonCode, Subscribe, SubscribeProperties, SubscriptionOptions, decode, encode,
    encode_publish, publish_len,
};
use tern_codec::{Packet, PubAck};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::event::{Ack, ClientMetrics, ConnectionError, Event, PublishError};
use crate::options::{Backoff, ClientOptions, Subscription};

/// A byte stream the client runs over: TCP or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T> Stream for T where T: AsyncRead + AsyncWrite + Unpin + Send {}

/// Past this many bytes waiting to be written, no new publish is taken from the queue.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// How long a closing client tries to write its DISCONNECT.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

type Done = oneshot::Sender<Result<(), PublishError>>;

/// A publish on its way from the handle to the task.
#[derive(Debug)]
pub(crate) struct Request {
    pub publish: Publish,
    pub done: Done,
}

/// A QoS 1 publish sent and not yet acknowledged.
#[derive(Debug)]
struct Inflight {
    publish: Publish,
    done: Done,
}

pub(crate) struct Task {
    options: ClientOptions,
    subscriptions: Vec<Subscription>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Event>,
    close: watch::Receiver<bool>,
    metrics: Arc<ClientMetrics>,
    inflight: VecDeque<Inflight>,
    next_id: PacketId,
    /// With `manual_ack`: the owner's acknowledgements, `(connection, packet id)`.
    acks: mpsc::Receiver<(u64, PacketId)>,
    acks_to: mpsc::Sender<(u64, PacketId)>,
    /// Counts connections, so an acknowledgement of an ended one is not sent on the next.
    generation: u64,
    /// Dropped when the task ends: what [`crate::ClientHandle::close`] waits for.
    _done: watch::Sender<()>,
}

/// Resolves once the owner closed the client or dropped every handle.
async fn closed(close: &mut watch::Receiver<bool>) {
    let _ = close.wait_for(|c| *c).await;
}

impl Task {
    #[allow(clippy::too_many_arguments)] // the channels of one task, wired once by `Client::start`
    pub(crate) fn new(
        options: ClientOptions,
        subscriptions: Vec<Subscription>,
        tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
        requests: mpsc::Receiver<Request>,
        events: mpsc::Sender<Event>,
        close: watch::Receiver<bool>,
        metrics: Arc<ClientMetrics>,
        done: watch::Sender<()>,
    ) -> Task {
        // One slot per packet id: an `Ack` never finds it full.
        let (acks_to, acks) = mpsc::channel(usize::from(u16::MAX));
        Task {
            options,
            subscriptions,
            tls,
            requests,
            events,
            close,
            metrics,
            inflight: VecDeque::new(),
            next_id: 0,
            acks,
            acks_to,
            generation: 0,
            _done: done,
        }
    }

    pub(crate) async fn run(mut self) {
        let uri = self.options.uri.to_string();
        let client_id = self.options.client_id.clone();
        let mut failures: u32 = 0;
        loop {
            tracing::info!(%uri, %client_id, attempt = failures + 1, "MQTT client connecting");
            let attempt = tokio::select! {
                biased;
                _ = closed(&mut self.close) => break,
                r = timeout(self.options.connect_timeout, connect(&self.options, &self.tls)) => {
                    r.unwrap_or(Err(ConnectionError::ConnectTimeout))
                }
            };
            match attempt {
                Ok((stream, rbuf, connack)) => {
                    failures = 0;
                    ClientMetrics::inc(&self.metrics.connects);
                    tracing::info!(%uri, %client_id, session_present = connack.session_present,
                        "MQTT client connected");
                    let reason = self.session(stream, rbuf, connack).await;
                    ClientMetrics::inc(&self.metrics.disconnects);
                    let closing = matches!(reason, ConnectionError::Closed);
                    if closing {
                        tracing::info!(%uri, %client_id, "MQTT client closed");
                    } else {
                        tracing::warn!(%uri, %client_id, error = %reason, "MQTT client disconnected");
                    }
                    self.emit(Event::Disconnected { reason }).await;
                    if closing {
                        break;
                    }
                }
                Err(e) => {
                    ClientMetrics::inc(&self.metrics.connect_failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(%uri, %client_id, error = %e, attempt = failures,
                        "MQTT client connect failed");
                    // The owner learns why (e.g. to log it); never waited for.
                    let _ = self.events.try_send(Event::ConnectFailed {
                        reason: e,
                        attempt: failures,
                    });
                }
            }
            let delay = backoff_delay(&self.options.backoff, failures);
            tracing::debug!(%uri, %client_id, delay_ms = delay.as_millis() as u64, "MQTT client backing off");
            tokio::select! {
                biased;
                _ = closed(&mut self.close) => break,
                _ = sleep(delay) => {}
            }
        }
        // Everything not accepted by the broker fails with `Closed` as its sender drops.
        self.inflight.clear();
        self.requests.close();
        while self.requests.try_recv().is_ok() {}
    }

    /// Hands an event to the owner, waiting for room unless the client is closed meanwhile. An
    /// owner that dropped the receiver gets nothing.
    async fn emit(&mut self, event: Event) {
        tokio::select! {
            biased;
            _ = self.events.send(event) => {}
            _ = closed(&mut self.close) => {}
        }
    }

    /// A packet id not used by any publish in flight nor by `taken` (SUBSCRIBEs awaiting
    /// SUBACK). There is always one: `Client::start` keeps `max_inflight` plus the
    /// subscriptions below 65,535.
    fn next_packet_id(&mut self, taken: &HashMap<PacketId, String>) -> PacketId {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            if !taken.contains_key(&id)
                && !self
                    .inflight
                    .iter()
                    .any(|i| i.publish.packet_id == Some(id))
            {
                return id;
            }
        }
    }

    /// Runs one connection until it ends; returns why.
    async fn session(
        &mut self,
        stream: Box<dyn Stream>,
        rbuf: BytesMut,
        connack: ConnAck,
    ) -> ConnectionError {
        let (reader, writer) = tokio::io::split(stream);
        let keep_alive = connack
            .properties
            .server_keep_alive
            .unwrap_or(self.options.keep_alive);
        let receive_max = connack.properties.receive_maximum.unwrap_or(u16::MAX);
        self.generation += 1;
        // Acknowledgements still queued belong to the connection that ended.
        while self.acks.try_recv().is_ok() {}
        let mut conn = Conn {
            reader,
            writer,
            rbuf,
            wbuf: BytesMut::new(),
            needs_flush: false,
            written: Vec::new(),
            pending: VecDeque::new(),
            subacks: HashMap::new(),
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(keep_alive.into())),
            next_ping: Instant::now(),
            next_ping_rx: Instant::now() + Duration::from_secs(keep_alive.into()),
            pong_deadline: None,
            version: self.options.protocol,
            max_packet_size: self.options.max_packet_size,
            inflight_limit: usize::from(self.options.max_inflight.min(receive_max)),
            limits: BrokerLimits {
                maximum_qos: match connack.properties.maximum_qos {
                    Some(0) => QoS::AtMostOnce,
                    _ => QoS::AtLeastOnce,
                },
                retain_available: connack.properties.retain_available.unwrap_or(true),
                maximum_packet_size: connack
                    .properties
                    .maximum_packet_size
                    .map_or(usize::MAX, |m| m as usize),
            },
        };
        conn.pending.push_back((
            Event::Connected {
                session_present: connack.session_present,
            },
            None,
        ));
        match self.start_session(&mut conn) {
            Ok(()) => conn.run(self).await,
            Err(e) => e,
        }
    }

    /// After CONNACK: one SUBSCRIBE per filter (so a SUBACK failure names its filter), then
    /// every unacknowledged publish again with DUP, in the order they were first sent.
    fn start_session(&mut self, conn: &mut Conn) -> Result<(), ConnectionError> {
        conn.touch();
        for sub in self.subscriptions.clone() {
            let packet_id = self.next_packet_id(&conn.subacks);
            let subscribe = Subscribe {
                packet_id,
                properties: SubscribeProperties::default(),
                filters: vec![(
                    ByteString::from(sub.filter.as_str()),
                    SubscriptionOptions {
                        qos: sub.qos,
                        ..SubscriptionOptions::default()
                    },
                )],
            };
            encode(&Packet::Subscribe(subscribe), conn.version, &mut conn.wbuf)?;
            conn.subacks.insert(packet_id, sub.filter);
        }
        if !self.inflight.is_empty() {
            tracing::info!(
                count = self.inflight.len(),
                "MQTT client re-sending unacknowledged publishes"
            );
        }
        for i in self.inflight.iter_mut() {
            i.publish.dup = true;
            encode_publish(&i.publish, conn.version, &mut conn.wbuf)?;
        }
        Ok(())
    }

    /// Encodes a publish from the queue: QoS 1 goes in flight, QoS 0 completes once written.
    fn take_request(&mut self, conn: &mut Conn, request: Request) {
        let Request { mut publish, done } = request;
        // What the broker said in CONNACK it does not take would cost the connection.
        let refused = if publish.qos > conn.limits.maximum_qos {
            Some(ReasonCode::QOS_NOT_SUPPORTED)
        } else if publish.retain && !conn.limits.retain_available {
            Some(ReasonCode::RETAIN_NOT_SUPPORTED)
        } else if publish_len(&publish, conn.version) > conn.limits.maximum_packet_size {
            Some(ReasonCode::PACKET_TOO_LARGE)
        } else {
            None
        };
        if let Some(reason) = refused {
            ClientMetrics::inc(&self.metrics.publish_failures);
            let _ = done.send(Err(PublishError::Rejected(reason)));
            return;
        }
        if publish.qos == QoS::AtLeastOnce {
            publish.packet_id = Some(self.next_packet_id(&conn.subacks));
        }
        if let Err(e) = encode_publish(&publish, conn.version, &mut conn.wbuf) {
            ClientMetrics::inc(&self.metrics.publish_failures);
            let _ = done.send(Err(PublishError::Encode(e)));
            return;
        }
        conn.touch();
        if publish.qos == QoS::AtLeastOnce {
            self.inflight.push_back(Inflight { publish, done });
        } else {
            conn.written.push(done);
        }
    }

    /// PUBACK: the oldest publish with that id leaves the window.
    fn on_puback(&mut self, ack: PubAck) {
        let Some(at) = self
            .inflight
            .iter()
            .position(|i| i.publish.packet_id == Some(ack.packet_id))
        else {
            tracing::debug!(
                packet_id = ack.packet_id,
                "MQTT client: PUBACK for no publish in flight"
            );
            return;
        };
        let Some(done) = self.inflight.remove(at) else {
            return;
        };
        let result = if ack.reason.is_error() {
            ClientMetrics::inc(&self.metrics.publish_failures);
            Err(PublishError::Rejected(ack.reason))
        } else {
            ClientMetrics::inc(&self.metrics.messages_out);
            Ok(())
        };
        let _ = done.done.send(result);
    }
}

/// TCP, TLS, CONNECT, CONNACK. Returns the stream, what was read past CONNACK and the CONNACK.
async fn connect(
    o: &ClientOptions,
    tls: &Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
) -> Result<(Box<dyn Stream>, BytesMut, ConnAck), ConnectionError> {
    let tcp = TcpStream::connect((o.uri.host.as_str(), o.uri.port)).await?;
    tcp.set_nodelay(true)?;
    let mut stream: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some((connector, name)) => Box::new(
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(ConnectionError::Tls)?,
        ),
    };
    let v5 = o.protocol.is_v5();
    let connect = Connect {
        protocol: o.protocol,
        clean_start: o.clean_start,
        keep_alive: o.keep_alive,
        client_id: ByteString::from(o.client_id.as_str()),
        will: None,
        username: o.username.as_deref().map(ByteString::from),
        password: o.password.clone().map(Into::into),
        properties: ConnectProperties {
            session_expiry_interval: (v5 && o.session_expiry > 0).then_some(o.session_expiry),
            maximum_packet_size: v5.then_some(o.max_packet_size),
            ..ConnectProperties::default()
        },
    };
    let mut out = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), o.protocol, &mut out)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        if let Some(packet) = decode(&mut rbuf, o.max_packet_size, o.protocol)? {
            let Packet::ConnAck(connack) = packet else {
                return Err(ConnectionError::Protocol(
                    "[MQTT-3.2.0-1] the first packet from the server is not CONNACK",
                ));
            };
            if connack.code.is_error() {
                return Err(ConnectionError::Refused(connack.code));
            }
            return Ok((stream, rbuf, connack));
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(ConnectionError::ConnectionLost);
        }
    }
}

/// What one wait of a connection produced.
#[allow(clippy::large_enum_variant)] // one per wait, moved once, never stored
enum Step {
    Close,
    /// An event went to the owner; the packet id to acknowledge, if any.
    Delivered(Option<PacketId>),
    Read,
    Wrote,
    Flushed,
    Request(Request),
    Timer,
    /// The owner acknowledged a message (`manual_ack`): connection, packet id.
    Ack(u64, PacketId),
}

/// One connection's state.
struct Conn {
    reader: ReadHalf<Box<dyn Stream>>,
    writer: WriteHalf<Box<dyn Stream>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Everything was written; a TLS stream may still hold a record.
    needs_flush: bool,
    /// QoS 0 publishes in `wbuf`, done once it is written and flushed.
    written: Vec<Done>,
    /// Events decoded and not yet taken by the owner's channel, each with the packet id to
    /// acknowledge once it is. While any wait, the client does not read: backpressure.
    pending: VecDeque<(Event, Option<PacketId>)>,
    /// SUBSCRIBEs awaiting SUBACK: packet id → filter.
    subacks: HashMap<PacketId, String>,
    keep_alive: Option<Duration>,
    /// When a PINGREQ is due: keep alive after the last packet sent, or after the last packet
    /// received (a client that only publishes QoS 0 would otherwise never find out that the
    /// broker went silent).
    next_ping: Instant,
    /// Keep alive after the last packet received.
    next_ping_rx: Instant,
    /// When a PINGRESP is overdue.
    pong_deadline: Option<Instant>,
    version: ProtocolVersion,
    max_packet_size: u32,
    inflight_limit: usize,
    limits: BrokerLimits,
}

/// What an MQTT 5 broker announced in CONNACK about the publishes it takes (3.1.1: no limits).
struct BrokerLimits {
    maximum_qos: QoS,
    retain_available: bool,
    /// Bytes, the whole packet.
    maximum_packet_size: usize,
}

impl Conn {
    /// Something was queued for writing: the keep-alive clock starts again.
    fn touch(&mut self) {
        if let Some(k) = self.keep_alive {
            self.next_ping = Instant::now() + k;
        }
    }

    /// The next keep-alive deadline, if any applies now. While events wait for the owner
    /// nothing is read, so a missing PINGRESP proves nothing and only PINGREQ is due.
    fn deadline(&self) -> Option<Instant> {
        self.keep_alive?;
        match self.pong_deadline {
            Some(_) if !self.pending.is_empty() => None,
            Some(d) => Some(d),
            None => Some(self.next_ping.min(self.next_ping_rx)),
        }
    }

    async fn run(&mut self, task: &mut Task) -> ConnectionError {
        match self.drive(task).await {
            Ok(()) => ConnectionError::Closed,
            Err(e) => e,
        }
    }

    async fn drive(&mut self, task: &mut Task) -> Result<(), ConnectionError> {
        // CONNACK's buffer may already hold packets.
        self.read_packets(task)?;
        loop {
            match self.wait(task).await? {
                Step::Close => {
                    self.disconnect().await;
                    return Ok(());
                }
                Step::Delivered(ack) => {
                    if let Some(packet_id) = ack {
                        let puback = Packet::PubAck(PubAck::new(packet_id));
                        encode(&puback, self.version, &mut self.wbuf)?;
                        self.touch();
                    }
                    if let (Some(k), Some(d)) = (self.keep_alive, self.pong_deadline) {
                        // Time spent waiting for the owner does not count against the broker.
                        self.pong_deadline = Some(d.max(Instant::now() + k));
                    }
                    self.read_packets(task)?;
                }
                Step::Read => self.read_packets(task)?,
                Step::Flushed => {
                    for done in self.written.drain(..) {
                        ClientMetrics::inc(&task.metrics.messages_out);
                        let _ = done.send(Ok(()));
                    }
                }
                Step::Wrote => {}
                Step::Ack(generation, packet_id) => {
                    if generation == task.generation {
                        let puback = Packet::PubAck(PubAck::new(packet_id));
                        encode(&puback, self.version, &mut self.wbuf)?;
                        self.touch();
                    }
                }
                Step::Request(request) => task.take_request(self, request),
                Step::Timer => {
                    if self.pong_deadline.is_some() {
                        return Err(ConnectionError::KeepAliveTimeout);
                    }
                    encode(&Packet::PingReq, self.version, &mut self.wbuf)?;
                    self.touch();
                    self.pong_deadline = self.keep_alive.map(|k| Instant::now() + k);
                }
            }
        }
    }

    /// The one wait of a connection: whichever of its sources is ready first. Every branch is
    /// cancel-safe; what it produced is in `self` or in the returned step.
    async fn wait(&mut self, task: &mut Task) -> Result<Step, ConnectionError> {
        let can_take =
            task.inflight.len() < self.inflight_limit && self.wbuf.len() < WRITE_HIGH_WATER;
        let deadline = self.deadline();
        let writing = !self.wbuf.is_empty() || self.needs_flush;
        let Conn {
            reader,
            writer,
            rbuf,
            wbuf,
            pending,
            ..
        } = self;
        let step = tokio::select! {
            biased;
            _ = closed(&mut task.close) => Step::Close,
            permit = task.events.reserve(), if !pending.is_empty() => {
                let Some((event, ack)) = pending.pop_front() else { return Ok(Step::Wrote) };
                // A receiver that is gone takes nothing; the message is still acknowledged.
                if let Ok(permit) = permit {
                    permit.send(event);
                }
                Step::Delivered(ack)
            }
            r = reader.read_buf(rbuf), if pending.is_empty() => {
                if r? == 0 {
                    return Err(ConnectionError::ConnectionLost);
                }
                Step::Read
            }
            w = async {
                if wbuf.is_empty() {
                    writer.flush().await.map(|()| Step::Flushed)
                } else {
                    writer.write_buf(wbuf).await.map(|_| Step::Wrote)
                }
            }, if writing => w?,
            request = task.requests.recv(), if can_take => match request {
                Some(request) => Step::Request(request),
                // Every handle was dropped: the close signal ends the task next.
                None => Step::Wrote,
            },
            Some((generation, packet_id)) = task.acks.recv() => Step::Ack(generation, packet_id),
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Step::Timer,
        };
        match step {
            Step::Wrote if self.wbuf.is_empty() => self.needs_flush = true,
            Step::Flushed => self.needs_flush = false,
            _ => {}
        }
        Ok(step)
    }

    /// Decodes and handles whole packets while no event waits for the owner.
    fn read_packets(&mut self, task: &mut Task) -> Result<(), ConnectionError> {
        while self.pending.is_empty() {
            let Some(packet) = decode(&mut self.rbuf, self.max_packet_size, self.version)? else {
                return Ok(());
            };
            // Any packet shows the broker is alive.
            self.pong_deadline = None;
            if let Some(k) = self.keep_alive {
                self.next_ping_rx = Instant::now() + k;
            }
            self.on_packet(task, packet)?;
        }
        Ok(())
    }

    fn on_packet(&mut self, task: &mut Task, packet: Packet) -> Result<(), ConnectionError> {
        match packet {
            Packet::Publish(p) => {
                if p.qos == QoS::ExactlyOnce {
                    return Err(ConnectionError::Protocol(
                        "[MQTT-3.8.4-6] QoS 2 PUBLISH on subscriptions of at most QoS 1",
                    ));
                }
                if p.topic.is_empty() {
                    return Err(ConnectionError::Protocol(
                        "[MQTT-3.3.2-12] Topic Alias used though the client allows none",
                    ));
                }
                ClientMetrics::inc(&task.metrics.messages_in);
                let mut ack = p.packet_id.filter(|_| p.qos == QoS::AtLeastOnce);
                // With manual acknowledgements the owner sends the PUBACK, not the delivery.
                let owner_ack = match ack {
                    Some(packet_id) if task.options.manual_ack => {
                        ack = None;
                        Some(Ack {
                            packet_id,
                            generation: task.generation,
                            to: task.acks_to.clone(),
                        })
                    }
                    _ => None,
                };
                self.pending.push_back((
                    Event::Message {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos,
                        retain: p.retain,
                        properties: p.properties,
                        ack: owner_ack,
                    },
                    ack,
                ));
            }
            Packet::PubAck(ack) => task.on_puback(ack),
            Packet::SubAck(ack) => {
                let Some(filter) = self.subacks.remove(&ack.packet_id) else {
                    return Err(ConnectionError::Protocol(
                        "[MQTT-3.9.3] SUBACK for no SUBSCRIBE awaiting one",
                    ));
                };
                match ack.reasons.first() {
                    Some(&reason) if reason.is_error() => {
                        tracing::warn!(%filter, reason = reason.name(), "MQTT client subscription refused");
                        self.pending
                            .push_back((Event::SubscribeFailed { filter, reason }, None));
                    }
                    Some(_) => tracing::debug!(%filter, "MQTT client subscribed"),
                    None => {
                        return Err(ConnectionError::Protocol(
                            "[MQTT-3.9.3-1] SUBACK without a return code",
                        ));
                    }
                }
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => return Err(ConnectionError::ServerDisconnect(d.reason)),
            Packet::UnsubAck(_) => {}
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Auth(_) => {
                return Err(ConnectionError::Protocol(
                    "a packet a server does not send to this client (CONNECT, CONNACK after the first, QoS 2 flow, SUBSCRIBE, UNSUBSCRIBE, PINGREQ or AUTH)",
                ));
            }
        }
        Ok(())
    }

    /// A normal DISCONNECT after what was already queued, within a short deadline.
    async fn disconnect(&mut self) {
        let _ = encode(
            &Packet::Disconnect(Disconnect {
                reason: ReasonCode::NORMAL_DISCONNECTION,
                ..Disconnect::default()
            }),
            self.version,
            &mut self.wbuf,
        );
        let wbuf = &mut self.wbuf;
        let writer = &mut self.writer;
        let _ = timeout(CLOSE_WRITE, async {
            writer.write_all_buf(wbuf).await?;
            writer.flush().await?;
            writer.shutdown().await
        })
        .await;
    }
}

/// The delay after `failures` failed attempts in a row (0 after a connection that reached
/// CONNACK): `initial` doubled per failure up to `max`, with jitter a random point in the
/// upper half.
pub(crate) fn backoff_delay(backoff: &Backoff, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let full = backoff
        .initial
        .saturating_mul(1u32 << exp)
        .min(backoff.max)
        .max(Duration::from_millis(1));
    if !backoff.jitter {
        return full;
    }
    // A random u64 without another dependency: the hasher's keys are random per instance.
    let random = RandomState::new().hash_one(failures);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random % nanos.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: false,
        };
        let d: Vec<_> = (0..6).map(|f| backoff_delay(&b, f).as_millis()).collect();
        assert_eq!(d, [100, 100, 200, 400, 800, 1000]);
        assert_eq!(backoff_delay(&b, u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: true,
        };
        for f in 0..50 {
            let full = backoff_delay(&Backoff { jitter: false, ..b }, f);
            let d = backoff_delay(&b, f);
            assert!(d >= full / 2 && d <= full, "{d:?} for {full:?}");
        }
    }
}
