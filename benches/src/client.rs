//! A lean MQTT client: the CONNECT/CONNACK handshake and SUBSCRIBE, encoded by `tern-codec`.
//!
//! After the handshake the scenario owns the socket and its read buffer ([`Conn`]) and drives it
//! with non-blocking reads and writes; see `flow`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use tern_codec::{
    Connect, ConnectProperties, Packet, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscribeProperties, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How every client of a run connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub broker: SocketAddr,
    pub version: ProtocolVersion,
    /// Seconds; 0 disables keep alive, so idle subscribers need no PINGREQ.
    pub keep_alive: u16,
    /// Clean Session (3.1.1) / Clean Start (5.0). Off, the broker keeps the session after the
    /// connection: with a durable store, that is what makes it write QoS 1/2 messages down.
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval, seconds, when the session is kept.
    pub session_expiry: u32,
    /// Bound on connecting and on the CONNACK.
    pub timeout: Duration,
    /// The CONNECT user name (tern: a token); none connects anonymously.
    pub username: Option<String>,
}

/// A connected client: its socket and the bytes already read past the CONNACK.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub version: ProtocolVersion,
    /// The broker's Receive Maximum (MQTT 5 CONNACK); 65,535 when it sets none.
    pub receive_maximum: u16,
    /// CONNACK's session present flag.
    pub session_present: bool,
}

/// Connects, from `source` when given (a loopback address other than the broker's, so a storm
/// of connections is not limited to one address's ephemeral ports), and completes the
/// handshake.
pub async fn connect(
    opts: &ConnectOptions,
    client_id: &str,
    source: Option<IpAddr>,
) -> Result<Conn> {
    tokio::time::timeout(opts.timeout, connect_inner(opts, client_id, source))
        .await
        .with_context(|| format!("no CONNACK within {:?}", opts.timeout))?
}

async fn connect_inner(
    opts: &ConnectOptions,
    client_id: &str,
    source: Option<IpAddr>,
) -> Result<Conn> {
    let socket = if opts.broker.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.set_reuseaddr(true)?;
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    let mut stream = socket
        .connect(opts.broker)
        .await
        .with_context(|| format!("connecting to {}", opts.broker))?;
    // We batch our own writes; Nagle would only add latency.
    stream.set_nodelay(true)?;

    let v5 = opts.version.is_v5();
    let connect = Packet::Connect(Box::new(Connect {
        protocol: opts.version,
        clean_start: opts.clean_start,
        keep_alive: opts.keep_alive,
        client_id: client_id.into(),
        will: None,
        username: opts.username.as_deref().map(Into::into),
        password: None,
        properties: ConnectProperties {
            // Let the broker's own inflight cap decide how much it sends us.
            receive_maximum: v5.then_some(u16::MAX),
            session_expiry_interval: (v5 && !opts.clean_start).then_some(opts.session_expiry),
            ..ConnectProperties::default()
        },
    }));
    let mut out = BytesMut::new();
    tern_codec::encode(&connect, opts.version, &mut out)?;
    stream.write_all(&out).await?;

    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    loop {
        if let Some(packet) = tern_codec::decode(&mut rbuf, u32::MAX, opts.version)? {
            let Packet::ConnAck(ack) = packet else {
                bail!("expected CONNACK, got {}", packet.packet_type());
            };
            if ack.code != ReasonCode::SUCCESS {
                bail!("CONNACK refused the connection: {:?}", ack.code);
            }
            return Ok(Conn {
                stream,
                rbuf,
                version: opts.version,
                receive_maximum: ack.properties.receive_maximum.unwrap_or(u16::MAX),
                session_present: ack.session_present,
            });
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            bail!("connection closed before CONNACK");
        }
    }
}

/// SUBSCRIBE with packet id 1 for `filters` at `qos`, encoded.
pub fn subscribe_packet(filters: &[String], qos: QoS, version: ProtocolVersion) -> Result<Vec<u8>> {
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: SubscribeProperties::default(),
        filters: filters
            .iter()
            .map(|f| (f.as_str().into(), options))
            .collect(),
    });
    let mut out = BytesMut::new();
    tern_codec::encode(&packet, version, &mut out)?;
    Ok(out.to_vec())
}
