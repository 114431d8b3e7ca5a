//! The owner's side: [`Client::start`] and the [`ClientHandle`] that publishes and closes.

use std::sync::Arc;

use bytes::Bytes;
use tern_codec::{ByteString, PublishProperties, QoS};
use tokio::sync::{mpsc, oneshot, watch};

use crate::event::{ClientMetrics, Event, PublishError};
use crate::options::{ClientOptions, OverflowPolicy, Scheme, Subscription};
use crate::session::{Request, Task};
use crate::tls::{TlsConfigError, client_config};

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

/// A publish queued by [`ClientHandle::enqueue`]: [`Pending::done`] resolves once the broker
/// accepted it (QoS 0: written; QoS 1: a successful PUBACK) or it failed.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<(), PublishError>>);

impl Pending {
    pub async fn done(self) -> Result<(), PublishError> {
        self.0.await.unwrap_or(Err(PublishError::Closed))
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
        self.queue(topic.into(), payload.into(), qos, retain, properties)
            .await?
            .done()
            .await
    }

    /// Queues a publish and returns once it is in the client's queue (in call order, so
    /// messages queued one after the other are sent in that order), with a [`Pending`] that
    /// resolves as [`ClientHandle::publish`] would. Lets a caller keep many publishes in
    /// flight and still handle their results in order.
    pub async fn enqueue(
        &self,
        topic: impl Into<ByteString>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<Pending, PublishError> {
        self.queue(
            topic.into(),
            payload.into(),
            qos,
            retain,
            PublishProperties::default(),
        )
        .await
    }

    /// Puts one publish in the client's queue by the overflow policy.
    async fn queue(
        &self,
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
    ) -> Result<Pending, PublishError> {
        if qos == QoS::ExactlyOnce {
            return Err(PublishError::QoS2);
        }
        let (done, result) = oneshot::channel();
        let request = Request {
            publish: tern_codec::Publish {
                dup: false,
                qos,
                retain,
                topic,
                packet_id: None,
                properties,
                payload,
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
        Ok(Pending(result))
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
