//! The broker's settings as plain data. The binary fills this from its config file and CLI;
//! nothing in this crate reads files or the environment.

use std::time::Duration;

use tern_codec::QoS;

/// Settings of the MQTT core. Every number here is a default, not a constant of the protocol.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Highest QoS the broker grants and delivers (docs/flespi.md#publishing: 2 by default, 1
    /// behaves as flespi).
    pub max_qos: QoS,
    /// Largest packet the broker accepts, in bytes (advertised as Maximum Packet Size).
    pub max_packet_size: u32,
    /// How many unacknowledged QoS 1/2 PUBLISH packets a client may have in flight towards the
    /// broker (advertised as Receive Maximum; exceeding it is DISCONNECT 0x93).
    pub receive_maximum: u16,
    /// How many topic aliases a client may use towards the broker (Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// The broker's own cap on outgoing unacknowledged QoS 1/2 messages per session, applied on
    /// top of the client's Receive Maximum.
    pub max_inflight: u16,
    /// Keep alive the broker imposes when a client asks for more (or for 0); `None` accepts
    /// what the client asks. Sent as Server Keep Alive in v5.
    pub max_keep_alive: Option<u16>,
    /// Cap on the session expiry interval a client may ask for, in seconds.
    pub max_session_expiry: u32,
    /// Messages queued for one session before QoS 0 messages are dropped (soft budget).
    pub max_queued_messages: usize,
    /// Bytes queued for one session before the session is closed as a slow consumer and its
    /// queue dropped (hard budget; docs/flespi.md#publishing, 1 GiB as flespi).
    pub max_queued_bytes: usize,
    /// Bytes queued in every session together (the broker's memory budget for outboxes).
    /// Past it, the largest queues are dropped first and their clients closed as slow
    /// consumers. The daemon defaults it to a quarter of the machine's memory.
    pub max_total_queued_bytes: usize,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Whether retained messages are supported (Retain Available).
    pub retain_available: bool,
    /// Largest client id accepted, in bytes.
    pub max_client_id_len: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// Whether every v5 CONNACK echoes the client's own id as Assigned Client Identifier, as
    /// flespi does (docs/flespi.md#connecting-and-authorization). When false, only generated ids
    /// are sent.
    pub echo_client_id: bool,
    /// Whether every v5 delivery carries the broker's `cid` and `timestamp` user properties
    /// after the publisher's own (docs/flespi.md#accounts-and-namespaces). When false, user
    /// properties reach subscribers exactly as published.
    pub stamp_properties: bool,
    /// Whether session events are published (`flespi/log/mqtt/sessions/...`,
    /// docs/flespi.md#broker-events).
    pub session_events: bool,
    /// A connected session with this many queued messages (or `backpressure_bytes`) makes its
    /// publishers pause reading until it drained half of them: backpressure instead of loss.
    pub backpressure_messages: usize,
    pub backpressure_bytes: usize,
    /// How long a publisher waits for congested sessions, in all however many there are,
    /// before they are treated as slow consumers (left to the queue budgets) until they catch
    /// up.
    pub backpressure_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_qos: QoS::ExactlyOnce,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_inflight: 1024,
            max_keep_alive: None,
            max_session_expiry: u32::MAX,
            max_queued_messages: 100_000,
            max_queued_bytes: 1024 * 1024 * 1024,
            max_total_queued_bytes: 1024 * 1024 * 1024,
            queue_qos0_offline: false,
            retain_available: true,
            max_client_id_len: 256,
            connect_timeout: Duration::from_secs(10),
            max_subscriptions_per_session: 10_000,
            echo_client_id: false,
            stamp_properties: true,
            session_events: true,
            backpressure_messages: 10_000,
            backpressure_bytes: 16 * 1024 * 1024,
            backpressure_timeout: Duration::from_secs(1),
        }
    }
}
