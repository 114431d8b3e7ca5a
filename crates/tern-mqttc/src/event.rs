//! What the client tells its owner: the [`Event`]s, why a connection ended
//! ([`ConnectionError`]), why a publish failed ([`PublishError`]), and the counters
//! ([`ClientMetrics`]). Plain types, shared by the owner's side (`client`) and the task
//! (`session`).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tern_codec::{ByteString, DecodeError, EncodeError, PublishProperties, QoS, ReasonCode};

/// What the client tells its owner, in order.
#[derive(Debug)]
// Messages are most events, moved once into a bounded channel: boxing them would allocate per
// message to shrink the rare others.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// CONNACK with success; subscriptions and unacknowledged publishes are being (re-)sent.
    Connected { session_present: bool },
    /// A PUBLISH from the broker. A QoS 1 message is acknowledged once this event is in the
    /// receiver's channel, or, with `ClientOptions::manual_ack`, when the owner calls
    /// [`Ack::ack`] on `ack`.
    Message {
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
        ack: Option<Ack>,
    },
    /// The broker refused one filter of a SUBSCRIBE (SUBACK failure code).
    SubscribeFailed { filter: String, reason: ReasonCode },
    /// A connection attempt failed before CONNACK (TCP, TLS, refused, timeout); the client
    /// tries again after its back-off. `attempt` counts the failures in a row. Not waited
    /// for: dropped when the event channel is full.
    ConnectFailed {
        reason: ConnectionError,
        attempt: u32,
    },
    /// A connection that had reached CONNACK ended. Unless `reason` is
    /// [`ConnectionError::Closed`], the client reconnects after its back-off.
    Disconnected { reason: ConnectionError },
}

/// Why a connection (or an attempt) ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("no CONNACK within the connect timeout")]
    ConnectTimeout,
    #[error("CONNACK refused: {} (0x{:02x})", .0.name(), .0.0)]
    Refused(ReasonCode),
    #[error("malformed packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("protocol error by the broker: {0}")]
    Protocol(&'static str),
    #[error("no PINGRESP within the keep alive")]
    KeepAliveTimeout,
    #[error("the broker sent DISCONNECT: {} (0x{:02x})", .0.name(), .0.0)]
    ServerDisconnect(ReasonCode),
    #[error("the broker closed the connection")]
    ConnectionLost,
    #[error("closed by the owner")]
    Closed,
}

/// Why a publish did not reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the outgoing queue is full")]
    QueueFull,
    #[error("the client is closed")]
    Closed,
    #[error("the broker refused the message: {} (0x{:02x})", .0.name(), .0.0)]
    Rejected(ReasonCode),
    #[error("QoS 2 is not supported by this client")]
    QoS2,
    #[error("cannot encode the message: {0}")]
    Encode(EncodeError),
}

/// Counters the owner reads (and the daemon will export). Plain atomics, relaxed.
#[derive(Debug, Default)]
pub struct ClientMetrics {
    /// Connections that reached a successful CONNACK.
    pub connects: AtomicU64,
    /// Connection attempts that failed before CONNACK (TCP, TLS, refused, timeout).
    pub connect_failures: AtomicU64,
    /// Connections that ended after CONNACK, for any reason.
    pub disconnects: AtomicU64,
    /// PUBLISH packets received.
    pub messages_in: AtomicU64,
    /// Publishes done: written (QoS 0) or acknowledged with success (QoS 1).
    pub messages_out: AtomicU64,
    /// Publishes the broker refused (PUBACK with an error code) or that could not be encoded.
    pub publish_failures: AtomicU64,
    /// Publishes refused because the outgoing queue was full ([`OverflowPolicy::RejectNew`]).
    pub queue_drops: AtomicU64,
}

impl ClientMetrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            disconnects: get(&self.disconnects),
            messages_in: get(&self.messages_in),
            messages_out: get(&self.messages_out),
            publish_failures: get(&self.publish_failures),
            queue_drops: get(&self.queue_drops),
        }
    }
}

/// The values of [`ClientMetrics`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    pub connects: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub publish_failures: u64,
    pub queue_drops: u64,
}

/// The acknowledgement a QoS 1 message owes its broker, with `ClientOptions::manual_ack`.
/// Acknowledge in the order the messages came (MQTT requires it). An `Ack` of a connection that
/// has since ended does nothing: the broker sends the message again on the next one (with a
/// persistent session).
#[derive(Debug)]
pub struct Ack {
    pub(crate) packet_id: tern_codec::PacketId,
    /// The connection it belongs to.
    pub(crate) generation: u64,
    pub(crate) to: tokio::sync::mpsc::Sender<(u64, tern_codec::PacketId)>,
}

impl Ack {
    /// Sends the PUBACK.
    pub fn ack(self) {
        // The channel holds one slot per packet id: it is never full.
        let _ = self.to.try_send((self.generation, self.packet_id));
    }
}
