//! The owner's side: [`Client::start`], the [`ClientHandle`] that publishes and closes, the
//! [`Event`]s it receives, the errors and the counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tern_codec::{ByteString, DecodeError, EncodeError, PublishProperties, QoS, ReasonCode};
use tokio::sync::{mpsc, oneshot, watch};

use crate::options::{ClientOptions, OverflowPolicy, Scheme, Subscription};
use crate::session::{Request, Task};
use crate::tls::{TlsConfigError, client_config};

/// What the client tells its owner, in order.
#[derive(Debug)]
pub enum Event {
    /// CONNACK with success; subscriptions and unacknowledged publishes are being (re-)sent.
    Connected { session_present: bool },
    /// A PUBLISH from the broker. A QoS 1 message is acknowledged once this event is in the
    /// receiver's channel.
    Message {
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
    },
    /// The broker refused one filter of a SUBSCRIBE (SUBACK failure code).
    SubscribeFailed { filter: String, reason: ReasonCode },
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

/// Why [`Client::start`] refused the options.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("{0}")]
    Invalid(&'static str),
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

/// Starts clients.
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Checks `options`, spawns the client task on the current tokio runtime (call it inside
    /// one) and returns its handle and its events. The task connects at once and keeps
    /// reconnecting until [`ClientHandle::close`] or until every handle is dropped.
    pub fn start(
        options: ClientOptions,
        subscriptions: Vec<Subscription>,
    ) -> Result<(ClientHandle, mpsc::Receiver<Event>), StartError> {
        if subscriptions.iter().any(|s| s.qos == QoS::ExactlyOnce) {
            return Err(StartError::Invalid("subscriptions are QoS 0 or 1"));
        }
        if subscriptions.iter().any(|s| s.filter.is_empty()) {
            return Err(StartError::Invalid("a subscription filter is empty"));
        }
        if options.max_inflight == 0 || options.queue_size == 0 || options.event_capacity == 0 {
            return Err(StartError::Invalid(
                "max_inflight, queue_size and event_capacity are at least 1",
            ));
        }
        if usize::from(options.max_inflight) + subscriptions.len() >= usize::from(u16::MAX) {
            // Packet ids: every publish in flight and every SUBSCRIBE awaiting SUBACK holds one.
            return Err(StartError::Invalid(
                "max_inflight plus the number of subscriptions must stay below 65,535",
            ));
        }
        if options.max_packet_size == 0 {
            return Err(StartError::Invalid("max_packet_size is at least 1"));
        }
        let tls = match options.uri.scheme {
            Scheme::Mqtt => None,
            Scheme::Mqtts => {
                let name = options
                    .tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| options.uri.host.clone());
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| StartError::ServerName(name))?;
                Some((
                    tokio_rustls::TlsConnector::from(client_config(&options.tls)?),
                    name,
                ))
            }
        };
        let (requests_tx, requests_rx) = mpsc::channel(options.queue_size);
        let (events_tx, events_rx) = mpsc::channel(options.event_capacity);
        let (close_tx, close_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(());
        let metrics = Arc::new(ClientMetrics::default());
        let overflow = options.overflow;
        let task = Task::new(
            options,
            subscriptions,
            tls,
            requests_rx,
            events_tx,
            close_rx,
            metrics.clone(),
            done_tx,
        );
        tokio::spawn(task.run());
        Ok((
            ClientHandle {
                requests: requests_tx,
                close: Arc::new(close_tx),
                done: done_rx,
                metrics,
                overflow,
            },
            events_rx,
        ))
    }
}

/// The owner's handle: publish, close, read the counters. Cheap to clone; the client stops
/// when [`ClientHandle::close`] is called or the last handle is dropped.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    requests: mpsc::Sender<Request>,
    close: Arc<watch::Sender<bool>>,
    done: watch::Receiver<()>,
    metrics: Arc<ClientMetrics>,
    overflow: OverflowPolicy,
}

impl ClientHandle {
    /// Publishes a message and returns once the broker accepted it: QoS 0 when it was written
    /// to the connection, QoS 1 on a successful PUBACK. While disconnected the message waits
    /// in the queue; a QoS 1 message that was sent but not acknowledged before a disconnect is
    /// sent again (DUP) after the reconnect, before any newer one.
    pub async fn publish(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), PublishError> {
        self.publish_with(topic, payload, qos, retain, PublishProperties::default())
            .await
    }

    /// [`ClientHandle::publish`] with MQTT 5 properties (dropped on a 3.1.1 connection).
    pub async fn publish_with(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
    ) -> Result<(), PublishError> {
        if qos == QoS::ExactlyOnce {
            return Err(PublishError::QoS2);
        }
        let (done, result) = oneshot::channel();
        let request = Request {
            publish: tern_codec::Publish {
                dup: false,
                qos,
                retain,
                topic: topic.into(),
                packet_id: None,
                properties,
                payload: payload.into(),
            },
            done,
        };
        match self.overflow {
            OverflowPolicy::Wait => self
                .requests
                .send(request)
                .await
                .map_err(|_| PublishError::Closed)?,
            OverflowPolicy::RejectNew => match self.requests.try_send(request) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    ClientMetrics::inc(&self.metrics.queue_drops);
                    return Err(PublishError::QueueFull);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(PublishError::Closed),
            },
        }
        result.await.unwrap_or(Err(PublishError::Closed))
    }

    /// Sends DISCONNECT (when connected), stops reconnecting and waits until the client task
    /// has ended. Publishes not yet accepted by the broker fail with [`PublishError::Closed`].
    pub async fn close(&self) {
        self.close.send_replace(true);
        let mut done = self.done.clone();
        // The task holds the sender; `changed` fails once it ended.
        while done.changed().await.is_ok() {}
    }

    /// True once the client task has ended.
    pub fn is_closed(&self) -> bool {
        self.done.has_changed().is_err()
    }

    /// The client's counters.
    pub fn metrics(&self) -> &Arc<ClientMetrics> {
        &self.metrics
    }
}
