//! The data both the broker and the store speak about: messages, session keys, and the
//! records of sessions and subscriptions.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;
use tern_codec::{PacketId, PublishProperties, QoS, SubscriptionOptions};

/// An account id (flespi `cid`).
pub type Cid = u64;

/// Microseconds since the Unix epoch.
pub type Micros = u64;

/// A broker-wide session identifier (runtime only; on disk sessions are keyed by
/// [`SessionKey`]).
pub type SessionId = u64;

/// A message's v5 properties, boxed, and nothing at all when there are none (every 3.1.1
/// message and most v5 ones): a queued message is 160 bytes smaller than with the properties
/// inline, and a broker holding a million queued messages faults in that much less memory.
/// Reads see the properties (empty ones when there are none); a write boxes them first.
#[derive(Clone, Default)]
pub struct Props(Option<Box<PublishProperties>>);

static NO_PROPS: PublishProperties = PublishProperties::EMPTY;

impl From<PublishProperties> for Props {
    fn from(p: PublishProperties) -> Props {
        if p.is_empty() {
            Props(None)
        } else {
            Props(Some(Box::new(p)))
        }
    }
}

impl std::ops::Deref for Props {
    type Target = PublishProperties;
    fn deref(&self) -> &PublishProperties {
        self.0.as_deref().unwrap_or(&NO_PROPS)
    }
}

impl std::ops::DerefMut for Props {
    fn deref_mut(&mut self) -> &mut PublishProperties {
        self.0.get_or_insert_with(Box::default)
    }
}

/// Equal when the properties are: none and empty ones are the same.
impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        **self == **other
    }
}

impl Eq for Props {}

impl std::fmt::Debug for Props {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// One published message, shared by every delivery of it (`Arc<Message>`): the payload and the
/// topic are reference-counted slices of the publisher's receive buffer, never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// QoS as published (already capped by the broker's maximum QoS).
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// The v5 properties to forward: no Topic Alias and no Subscription Identifiers (both are
    /// per connection).
    pub properties: Props,
    /// The publisher's account.
    pub cid: Cid,
    /// Publication time, unique per broker (docs/flespi.md#accounts-and-namespaces `timestamp`).
    pub timestamp: Micros,
    /// Absolute expiry time from the Message Expiry Interval.
    pub expires_at: Option<Micros>,
    /// The publishing session, for No Local. `None` for broker-generated messages and after a
    /// restart.
    pub origin: Option<SessionId>,
}

impl Message {
    /// A message of account `cid` on `topic`, not retained, without properties, expiry or
    /// publishing session: what tests and the broker's own publications start from.
    pub fn plain(
        cid: Cid,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        timestamp: Micros,
    ) -> Message {
        Message {
            topic: ByteString::from(topic),
            payload: payload.into(),
            qos,
            retain: false,
            properties: Props::default(),
            cid,
            timestamp,
            expires_at: None,
            origin: None,
        }
    }

    /// Whether the message expired at `now`.
    pub fn is_expired(&self, now: Micros) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Seconds left until expiry, rounded up, for the Message Expiry Interval of a delivery.
    pub fn remaining_expiry(&self, now: Micros) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_sub(now);
            u32::try_from(left.div_ceil(1_000_000))
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }

    /// Rough memory cost of the message, for queue budgets.
    pub fn cost(&self) -> usize {
        // What one queued delivery really holds: the shared message (counted in full for each
        // session that holds it, as a bound), its Arc, the delivery in the queue (which may be
        // twice its length), and the allocator's share.
        const OVERHEAD: usize = std::mem::size_of::<Message>() + 2 * DELIVERY_SIZE + 48;
        let props: usize = self
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum();
        let boxed = if self.properties.0.is_some() {
            std::mem::size_of::<PublishProperties>() + 16
        } else {
            0
        };
        self.topic.len() + self.payload.len() + props + boxed + OVERHEAD
    }

    /// The `timestamp` user property value: unix seconds with a fraction.
    pub fn timestamp_string(&self) -> String {
        format_timestamp(self.timestamp)
    }
}

/// The size of the broker's record of one delivery in a session's queue (`tern_broker::Delivery`:
/// the `Arc<Message>`, QoS, retain flag, subscription ids and queue position), for
/// [`Message::cost`]. The broker asserts at compile time that its record is no larger.
pub const DELIVERY_SIZE: usize = 48;

/// Formats microseconds as `seconds.micros` (`1700000000.123456`).
pub fn format_timestamp(ts: Micros) -> String {
    format!("{}.{:06}", ts / 1_000_000, ts % 1_000_000)
}

/// Sessions are identified by account and client id (docs/flespi.md#connecting-and-authorization):
/// the same client id in two accounts are two unrelated sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub cid: Cid,
    pub client_id: ByteString,
}

/// The stored part of a persistent session (expiry interval above 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub key: SessionKey,
    /// Session Expiry Interval in seconds (`u32::MAX` never expires).
    pub expiry_interval: u32,
    /// When the session was last disconnected; `None` while connected (after a crash, the
    /// restart time counts as the disconnect).
    pub disconnected_at: Option<Micros>,
    /// The will of the current or last connection, with its delay in seconds.
    pub will: Option<(Arc<Message>, u32)>,
    /// When the session was created.
    pub created: Micros,
    /// The token of the connection that last owned the session: after a restart its rights
    /// (ACL grants) still restrict the session's subscriptions until a client connects again.
    pub token_id: Option<u64>,
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The full filter string as subscribed (prefixes included); it identifies the
    /// subscription.
    pub filter: ByteString,
    /// Options with the QoS as granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier.
    pub id: Option<u32>,
}

/// What an in-flight message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightPhase {
    /// Sent at QoS 1 or 2; waiting for PUBACK or PUBREC.
    Sent,
    /// QoS 2: PUBREC received, PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// A QoS 1/2 delivery queued for (or in flight to) a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    /// Per-session sequence number: the queue order and the key of this entry.
    pub seq: u64,
    pub msg: Arc<Message>,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag of this delivery.
    pub retain: bool,
    pub sub_ids: SmallVec<[u32; 2]>,
    /// Set once sent: the packet id and phase, so a restart re-sends with DUP and the same id.
    pub inflight: Option<(PacketId, InflightPhase)>,
}

/// Everything stored about one persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub record: SessionRecord,
    pub subscriptions: Vec<SubscriptionRecord>,
    /// In `seq` order.
    pub queue: Vec<QueuedRecord>,
    /// Packet ids of QoS 2 messages received from the client, PUBREL not yet seen.
    pub incoming_qos2: Vec<PacketId>,
}

/// The whole stored state, as loaded at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Accounts as JSON documents, by cid (the accounts layer owns the schema).
    pub accounts: Vec<(Cid, Bytes)>,
    /// Tokens as JSON documents, by token id.
    pub tokens: Vec<(u64, Bytes)>,
    /// Retained messages (each carries its account in `cid`).
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<SessionSnapshot>,
    /// The devices layer's own record (its id counters), if written.
    pub gw_meta: Option<Bytes>,
    /// Devices as JSON documents, by id (tern-gw owns the schema).
    pub devices: Vec<(u64, Bytes)>,
    /// Device groups as JSON documents, by id.
    pub groups: Vec<(u64, Bytes)>,
    /// Channels as JSON documents, by id.
    pub channels: Vec<(u64, Bytes)>,
    /// Streams as JSON documents, by id.
    pub streams: Vec<(u64, Bytes)>,
    /// Webhooks as JSON documents, by id.
    pub webhooks: Vec<(u64, Bytes)>,
    /// Each device's telemetry document.
    pub telemetry: Vec<(u64, Bytes)>,
    /// How many messages and bytes each device has stored (the messages themselves are read
    /// by range, never loaded).
    pub message_stats: Vec<(u64, crate::devices::MessageStats)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format() {
        assert_eq!(format_timestamp(1_700_000_000_000_001), "1700000000.000001");
    }

    /// A queued message is mostly this struct in its `Arc`: 128 bytes and the Arc's 16 keep it
    /// in the allocator's 144-160 byte class (it was 280 with the properties inline).
    #[test]
    fn a_message_without_properties_is_small() {
        let size = std::mem::size_of::<Message>();
        eprintln!("Message: {size} bytes");
        assert!(size <= 128, "Message grew to {size} bytes");
    }

    #[test]
    fn props_box_only_what_is_set() {
        let none = Props::from(PublishProperties::default());
        assert!(none.0.is_none());
        assert!(none.is_empty());
        let mut set = Props::from(PublishProperties {
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        });
        assert!(set.0.is_some());
        assert_eq!(set.content_type.as_deref(), Some("text/plain"));
        set.content_type = None;
        // Boxed but empty equals none at all.
        assert_eq!(set, none);
        assert_eq!(*set, PublishProperties::default());
        let mut written = none.clone();
        written.message_expiry_interval = Some(5);
        assert_eq!(written.message_expiry_interval, Some(5));
    }
}
