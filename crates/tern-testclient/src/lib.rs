//! tern-testclient: the raw MQTT client of the workspace's tests (a dev-dependency only). It
//! encodes and decodes with tern-codec, so tests control every byte, and runs over any
//! transport ([`Io`]: TCP, TLS, WebSocket, an in-memory stream).
//!
//! Layout: [`Client`] (connect, send, read with a deadline, subscribe, publish, acknowledge),
//! [`Read`], and packet builders with the usual defaults.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio::io::{AsyncRead, AsyncWrite};

/// How long a test waits for something that must come.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to conclude that nothing comes.
pub const QUIET: Duration = Duration::from_millis(300);

/// A byte stream a client runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T> Io for T where T: AsyncRead + AsyncWrite + Unpin + Send {}

/// A raw-packet MQTT client.
pub struct Client {
    stream: Box<dyn Io>,
    buf: BytesMut,
    pub version: ProtocolVersion,
    next_id: u16,
}

/// What reading from the broker produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per read, in tests
pub enum Read {
    Packet(Packet),
    /// The broker closed the connection.
    Closed,
    /// Nothing arrived in time.
    Timeout,
}

/// A CONNECT for `client_id` with the usual defaults.
pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: ByteString::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A PUBLISH with the usual defaults.
pub fn publish_packet(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    packet_id: Option<u16>,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: ByteString::from(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("version", &self.version)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens a TCP connection without sending anything.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).ok();
        Client::over(Box::new(stream), version)
    }

    /// A client over an open transport, without sending anything.
    pub fn over(stream: Box<dyn Io>, version: ProtocolVersion) -> Client {
        Client {
            stream,
            buf: BytesMut::new(),
            version,
            next_id: 0,
        }
    }

    /// Connects over an open transport and expects a successful CONNACK.
    pub async fn connect_over(
        stream: Box<dyn Io>,
        version: ProtocolVersion,
        client_id: &str,
    ) -> Client {
        let mut c = Client::over(stream, version);
        c.send(Packet::Connect(Box::new(connect_packet(
            version, client_id, true,
        ))))
        .await;
        match c.recv().await {
            Packet::ConnAck(ack) => {
                assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK refused: {ack:?}");
                c
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and expects a successful CONNACK.
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Client {
        let (c, ack) = Client::connect_with(addr, connect_packet(version, client_id, true)).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK refused: {ack:?}");
        c
    }

    /// Sends `connect` and returns the CONNACK, whatever it says.
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Client, ConnAck) {
        let mut c = Client::open(addr, connect.protocol).await;
        c.send(Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet id for this client's own packets.
    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Sends a packet; returns false when the write failed.
    pub async fn try_send(&mut self, packet: Packet) -> bool {
        let mut out = BytesMut::new();
        encode(&packet, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Reads until the broker closes the connection, acknowledging QoS 1 deliveries on the
    /// way (so traffic keeps flowing); returns the DISCONNECT the broker sent, if any.
    pub async fn drain_until_closed(&mut self, wait: Duration) -> Option<Disconnect> {
        let mut disconnect = None;
        loop {
            match self.read(wait).await {
                Read::Closed => return disconnect,
                Read::Timeout => panic!("the broker did not close the connection"),
                Read::Packet(Packet::Disconnect(d)) => disconnect = Some(d),
                Read::Packet(Packet::Publish(p)) => {
                    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                        self.send_unchecked(Packet::PubAck(PubAck::new(id))).await;
                    }
                }
                Read::Packet(_) => {}
            }
        }
    }

    /// Sends a packet; a write error is ignored (the broker may already have closed).
    pub async fn send_unchecked(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, self.version, &mut out).expect("encode");
        self.send_raw(&out).await;
    }

    /// Sends raw bytes; a write error is ignored (the broker may already have closed).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Reads the next packet, waiting at most `wait`.
    pub async fn read(&mut self, wait: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match decode(&mut self.buf, u32::MAX >> 4, self.version) {
                Ok(Some(p)) => return Read::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("broker sent an undecodable packet: {e}"),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics if none arrives in time or the connection closes.
    pub async fn recv(&mut self) -> Packet {
        match self.read(WAIT).await {
            Read::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// The next PUBLISH; panics on anything else.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for a short while.
    pub async fn expect_nothing(&mut self) {
        match self.read(QUIET).await {
            Read::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection; returns the DISCONNECT it sent, if any.
    pub async fn expect_closed(&mut self) -> Option<Disconnect> {
        let mut disconnect = None;
        loop {
            match self.read(WAIT).await {
                Read::Closed => return disconnect,
                Read::Timeout => panic!("the broker did not close the connection"),
                Read::Packet(Packet::Disconnect(d)) => disconnect = Some(d),
                Read::Packet(_) => {}
            }
        }
    }

    /// Subscribes to one filter and returns the SUBACK reason.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> ReasonCode {
        let opts = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        let ack = self.subscribe_with(vec![(filter, opts)], None).await;
        ack.reasons[0]
    }

    /// Sends SUBSCRIBE and returns the SUBACK.
    pub async fn subscribe_with(
        &mut self,
        filters: Vec<(&str, SubscriptionOptions)>,
        id: Option<u32>,
    ) -> SubAck {
        let packet_id = self.next_id();
        let properties = SubscribeProperties {
            subscription_identifier: id,
            user_properties: vec![],
        };
        let filters = filters
            .into_iter()
            .map(|(f, o)| (ByteString::from(f), o))
            .collect();
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            filters,
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                ack
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.next_id());
        self.send(Packet::Publish(publish_packet(
            topic, payload, qos, retain, packet_id,
        )))
        .await;
        self.finish_publish(qos, packet_id).await;
    }

    /// Completes the QoS flow of a PUBLISH already sent.
    pub async fn finish_publish(&mut self, qos: QoS, packet_id: Option<u16>) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(a) => assert_eq!(Some(a.packet_id), packet_id),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv().await {
                    Packet::PubRec(a) => assert_eq!(Some(a.packet_id), packet_id),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                let id = packet_id.expect("qos 2 has an id");
                self.send(Packet::PubRel(PubAck::new(id))).await;
                match self.recv().await {
                    Packet::PubComp(a) => assert_eq!(a.packet_id, id),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Acknowledges a received PUBLISH as its QoS requires (PUBACK, or PUBREC→PUBREL→PUBCOMP).
    pub async fn ack(&mut self, p: &Publish) {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(Packet::PubAck(PubAck::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(Packet::PubRec(PubAck::new(id))).await;
                match self.recv().await {
                    Packet::PubRel(r) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(Packet::PubComp(PubAck::new(id))).await;
            }
            _ => {}
        }
    }

    /// Sends DISCONNECT (normal) and closes.
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        let _ = self.stream.shutdown().await;
    }

    /// Round-trips a PINGREQ: proves the connection is alive and everything sent before it
    /// was processed.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        loop {
            match self.recv().await {
                Packet::PingResp => return,
                Packet::Publish(_) => continue,
                other => panic!("expected PINGRESP, got {other:?}"),
            }
        }
    }
}

/// The value of a user property, if present.
pub fn user_property<'a>(props: &'a UserProperties, key: &str) -> Option<&'a str> {
    props.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
}
