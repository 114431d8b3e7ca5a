//! tern-mqttc: tern's outbound MQTT client, the one the MQTT channel uses to take data in from
//! another broker (bridging inward: subscribe, turn each PUBLISH into messages) and the MQTT
//! streams will use to push data out (bridging outward: QoS 0/1 publishes).
//!
//! It is built on `tern-codec`, not on a client crate: the broker's own codec (one packet model
//! for 3.1.1 and 5.0, fuzzed) decodes what a remote broker sends, so the binary carries one MQTT
//! implementation, and no client crate's TLS features can bring aws-lc into the build: TLS is
//! rustls on ring, as for the listeners.
//!
//! [`Client::start`] spawns one task that owns the socket (TCP, or TLS for `mqtts://`) and
//! returns a [`ClientHandle`] and a bounded receiver of [`Event`]s. The task connects, sends
//! the subscriptions (again after every reconnect), and reconnects with back-off until
//! [`ClientHandle::close`]; every attempt and failure is logged (never the credentials).
//!
//! - Inbound: a QoS 1 message is acknowledged once its event is in the owner's channel; while
//!   that channel is full the client stops reading, so a slow owner slows the remote broker
//!   down (backpressure, not loss). Reading stops for everything, PUBACKs of outbound publishes
//!   included.
//! - Outbound: [`ClientHandle::publish`] returns when the message was written (QoS 0) or
//!   acknowledged (QoS 1); what an MQTT 5 broker refuses in CONNACK (Maximum QoS, Retain
//!   Available, Maximum Packet Size) fails the publish, not the connection. At most
//!   `max_inflight` QoS 1 publishes (and the broker's Receive Maximum) are in flight; those not
//!   acknowledged before a disconnect are sent again with DUP after the reconnect, in order,
//!   before newer ones (with a clean start too: at least once).
//! - The outgoing queue: publishes accepted by the handle and not yet sent, `queue_size` at
//!   most; they wait there while the client is disconnected. When it is full the
//!   [`OverflowPolicy`] applies: `Wait` (the default) makes the caller wait, `RejectNew` fails
//!   the publish with [`PublishError::QueueFull`] and counts it in
//!   [`ClientMetrics::queue_drops`].
//! - Keep alive: a PINGREQ when nothing was sent, or nothing received, for the keep alive (the
//!   broker's Server Keep Alive wins); no packet from the broker within one more keep alive
//!   closes the connection ([`ConnectionError::KeepAliveTimeout`]) and the client reconnects.
//! - Malformed input is the codec's `DecodeError`, a packet a broker must not send a
//!   [`ConnectionError::Protocol`]: the connection closes with it and the client reconnects.
//! - Events: `Connected` after each CONNACK, `Message`, `SubscribeFailed` per refused filter,
//!   `Disconnected` when a connection that reached CONNACK ends. Failed attempts are logged and
//!   counted ([`ClientMetrics::connect_failures`]), not sent as events.
//!
//! Layout:
//! - `options`: [`ClientOptions`], the broker URI ([`BrokerUri`], [`UriError`]), TLS, back-off,
//!   overflow policy, subscriptions
//! - `tls`: the rustls client configuration (ring; system bundle or a CA PEM; client
//!   certificate; `insecure_skip_verify` for tests)
//! - `client`: [`Client::start`], [`ClientHandle`]
//! - `event`: [`Event`], the errors, [`ClientMetrics`]
//! - `session`: the client task: connect, one connection's `select!` loop, back-off

mod client;
mod event;
mod options;
mod session;
mod tls;

pub use client::{Client, ClientHandle, Pending, StartError};
pub use event::{Ack, ClientMetrics, ConnectionError, Event, MetricsSnapshot, PublishError};
pub use options::{
    Backoff, BrokerUri, ClientCert, ClientOptions, OverflowPolicy, Roots, SYSTEM_BUNDLES, Scheme,
    Subscription, TlsOptions, UriError,
};
pub use tern_codec::{ByteString, Bytes, ProtocolVersion, PublishProperties, QoS, ReasonCode};
pub use tls::{TlsConfigError, client_config as tls_client_config};
