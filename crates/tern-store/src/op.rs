//! Changes the broker asks the store to make durable, in order.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::devices::{DeviceId, MessageKey};
use crate::model::{
    Cid, InflightPhase, Message, QueuedRecord, SessionKey, SessionRecord, SubscriptionRecord,
};
use tern_codec::PacketId;

/// One change to the stored state. Ops are applied in the order they were submitted; a batch
/// of them is one atomic transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutAccount {
        cid: Cid,
        json: Bytes,
    },
    DelAccount {
        cid: Cid,
    },
    PutToken {
        id: u64,
        json: Bytes,
    },
    DelToken {
        id: u64,
    },
    /// Sets the retained message of `msg.cid` / `msg.topic`.
    PutRetained {
        msg: Arc<Message>,
    },
    DelRetained {
        cid: Cid,
        topic: ByteString,
    },
    /// Creates or replaces a session's record (not its subscriptions or queue).
    PutSession {
        record: SessionRecord,
    },
    /// Deletes a session with its subscriptions, queue and incoming QoS 2 ids.
    DelSession {
        key: SessionKey,
    },
    PutSubscription {
        key: SessionKey,
        sub: SubscriptionRecord,
    },
    DelSubscription {
        key: SessionKey,
        filter: ByteString,
    },
    /// Appends a delivery to a session's queue.
    Enqueue {
        key: SessionKey,
        entry: QueuedRecord,
    },
    /// Records that a queued delivery was sent with `packet_id`, or moved to `phase`.
    SetInflight {
        key: SessionKey,
        seq: u64,
        packet_id: PacketId,
        phase: InflightPhase,
    },
    /// Removes a delivery (acknowledged, expired or dropped).
    Dequeue {
        key: SessionKey,
        seq: u64,
    },
    /// Removes every queued delivery of a session (queue dropped).
    ClearQueue {
        key: SessionKey,
    },
    PutIncoming {
        key: SessionKey,
        packet_id: PacketId,
    },
    DelIncoming {
        key: SessionKey,
        packet_id: PacketId,
    },
    /// Replaces the devices layer's own record (its id counters), a JSON document.
    PutGwMeta {
        json: Bytes,
    },
    /// Creates or replaces a device document (tern-gw; the devices layer owns the schema).
    PutDevice {
        id: DeviceId,
        json: Bytes,
    },
    /// Deletes a device with its telemetry, messages, log and their stats.
    DelDevice {
        id: DeviceId,
    },
    PutGroup {
        id: u64,
        json: Bytes,
    },
    DelGroup {
        id: u64,
    },
    /// A channel of the devices layer (its JSON document, tern-gw owns the schema).
    PutChannel {
        id: u64,
        json: Bytes,
    },
    /// Deletes a channel with its buffer and log.
    DelChannel {
        id: u64,
    },
    /// A stream of the devices layer (its JSON document, tern-gw owns the schema).
    PutStream {
        id: u64,
        json: Bytes,
    },
    /// Deletes a stream with its queue and log.
    DelStream {
        id: u64,
    },
    /// A webhook (`/platform/webhooks`; its JSON document, tern-gw owns the schema).
    PutWebhook {
        id: u64,
        json: Bytes,
    },
    /// Deletes a webhook with its pending calls and log.
    DelWebhook {
        id: u64,
    },
    /// Replaces a device's telemetry document.
    PutTelemetry {
        device: DeviceId,
        json: Bytes,
    },
    DelTelemetry {
        device: DeviceId,
    },
    /// Appends messages to a device's history, a channel's buffer (`channel_key`) or an entity's
    /// log (`log_key`) or a stream's queue (`stream_key`); ignored when the device, channel or
    /// stream does not exist, and for logs of
    /// entities the store keeps no record of.
    AppendMessages {
        device: DeviceId,
        messages: Vec<(MessageKey, Bytes)>,
    },
    /// Deletes a device's messages with timestamps in `from..=to` (microseconds).
    DelMessages {
        device: DeviceId,
        from: i64,
        to: i64,
    },
    /// Deletes some messages of a device, by key (a delete with a filter).
    DelMessageKeys {
        device: DeviceId,
        keys: Vec<MessageKey>,
    },
    /// Deletes a device's oldest messages until at most `max_bytes` remain
    /// (`messages_rotate`).
    TrimMessages {
        device: DeviceId,
        max_bytes: u64,
    },
}
