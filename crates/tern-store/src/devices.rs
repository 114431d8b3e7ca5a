//! The devices layer's records (tern-gw, docs/flespi.md#devices): device, group and telemetry
//! documents kept like accounts and tokens (versioned JSON, loaded at start), and device
//! messages, which are not loaded at start: an ordered table keyed by
//! `(device id, timestamp, arrival sequence)` read by range ([`Reader`]), so a device with a
//! million messages answers a window or its last message without scanning the rest.
//!
//! Per device, the store keeps how many messages and bytes it holds ([`MessageStats`], updated
//! in the same transaction as the messages): `messages_size` and the `messages_rotate` rule
//! read it without a scan, and it is loaded at start.

use std::fmt;

use bytes::Bytes;

use crate::error::StoreError;

/// A device id (`/gw/devices` item `id`).
pub type DeviceId = u64;

/// Channel buffers (`/gw/channels` `messages_ttl`) share the message table and its stats with
/// devices: a channel's key there is its id with this bit set (device ids never reach it).
pub const CHANNEL_KEY_BIT: u64 = 1 << 62;

/// The message-table key of channel `id`'s buffer.
pub fn channel_key(id: u64) -> DeviceId {
    id | CHANNEL_KEY_BIT
}

/// The channel whose buffer `key` is, if it is a channel's.
pub fn channel_of(key: DeviceId) -> Option<u64> {
    (key & CHANNEL_KEY_BIT != 0).then_some(key & !CHANNEL_KEY_BIT)
}

/// A device's Codec 12 command results (`commands-result`) share the message table too, keyed
/// by the device id with this bit set.
pub const COMMANDS_KEY_BIT: u64 = 1 << 60;

/// A device's queued commands (`commands-queue`), keyed by the device id with this bit set.
pub const QUEUE_KEY_BIT: u64 = 1 << 59;

/// The message-table key of device `id`'s command results.
pub fn commands_key(id: u64) -> DeviceId {
    id | COMMANDS_KEY_BIT
}

/// The message-table key of device `id`'s command queue.
pub fn queue_key(id: u64) -> DeviceId {
    id | QUEUE_KEY_BIT
}

/// The device a device-owned key belongs to (its messages, command results or queue).
pub fn device_of(key: DeviceId) -> u64 {
    key & !(COMMANDS_KEY_BIT | QUEUE_KEY_BIT)
}

/// A stream's queue (tern-gw `streams`, docs/flespi.md#streams): the messages waiting to be
/// pushed out, keyed by the stream id with this bit set (device ids never reach it). Its
/// entries are keyed in arrival order (the gateway's sequence as timestamp), so a delivered
/// batch goes with one `Op::DelMessages` range.
pub const STREAM_KEY_BIT: u64 = 1 << 58;

/// The message-table key of stream `id`'s queue.
pub fn stream_key(id: u64) -> DeviceId {
    id | STREAM_KEY_BIT
}

/// The stream whose queue `key` is, if it is a stream's (never a channel's or a log's).
pub fn stream_of(key: DeviceId) -> Option<u64> {
    (key & (CHANNEL_KEY_BIT | LOG_KEY_BIT | STREAM_KEY_BIT) == STREAM_KEY_BIT)
        .then_some(key & !STREAM_KEY_BIT)
}

/// A webhook's pending calls (tern-gw `webhooks`, docs/flespi.md#webhooks): the publications
/// that triggered it and are not yet delivered, keyed by the webhook id with this bit set, in
/// arrival order like a stream's queue.
pub const WEBHOOK_KEY_BIT: u64 = 1 << 57;

/// The message-table key of webhook `id`'s pending calls.
pub fn webhook_key(id: u64) -> DeviceId {
    id | WEBHOOK_KEY_BIT
}

/// The webhook whose pending calls `key` holds, if it is a webhook's.
pub fn webhook_of(key: DeviceId) -> Option<u64> {
    (key & (CHANNEL_KEY_BIT | LOG_KEY_BIT | STREAM_KEY_BIT | WEBHOOK_KEY_BIT) == WEBHOOK_KEY_BIT)
        .then_some(key & !WEBHOOK_KEY_BIT)
}

/// Entity logs (tern-gw `logs`, docs/flespi.md#devices) share the message table and its stats
/// too: a log's key has this bit set, the entity's `origin_type` in the [`LOG_ORIGIN_BITS`]
/// bits below it, and the entity's id in the rest. It never has [`CHANNEL_KEY_BIT`], and device
/// ids never reach it.
pub const LOG_KEY_BIT: u64 = 1 << 61;

/// How many bits below [`LOG_KEY_BIT`] hold the `origin_type` (flespi's go up to 41).
pub const LOG_ORIGIN_BITS: u32 = 8;

const LOG_ID_BITS: u32 = 61 - LOG_ORIGIN_BITS;
const LOG_ID_MASK: u64 = (1 << LOG_ID_BITS) - 1;
const LOG_ORIGIN_MASK: u64 = (1 << LOG_ORIGIN_BITS) - 1;

/// The message-table key of the log of entity `id` of `origin_type` (11 device, 9 channel, ...).
/// Ids are counters far below 2^53; an id or origin above its bits is masked (never produced).
pub fn log_key(origin_type: u64, id: u64) -> DeviceId {
    LOG_KEY_BIT | (origin_type & LOG_ORIGIN_MASK) << LOG_ID_BITS | (id & LOG_ID_MASK)
}

/// The `(origin_type, id)` whose log `key` is, if it is a log's.
pub fn log_of(key: DeviceId) -> Option<(u64, u64)> {
    (key & (LOG_KEY_BIT | CHANNEL_KEY_BIT) == LOG_KEY_BIT)
        .then_some(((key >> LOG_ID_BITS) & LOG_ORIGIN_MASK, key & LOG_ID_MASK))
}

/// The `origin_type` of device logs (flespi's).
pub const LOG_ORIGIN_DEVICE: u64 = 11;
/// The `origin_type` of channel logs (flespi's).
pub const LOG_ORIGIN_CHANNEL: u64 = 9;
/// The `origin_type` of stream logs (flespi's).
pub const LOG_ORIGIN_STREAM: u64 = 12;
/// The `origin_type` of an account's REST call log (flespi's `customer`; the id is the
/// account's).
pub const LOG_ORIGIN_CUSTOMER: u64 = 1;
/// The `origin_type` of an account's MQTT sessions log (flespi's; the id is the account's).
pub const LOG_ORIGIN_MQTT: u64 = 14;
/// The `origin_type` of webhook logs (flespi's).
pub const LOG_ORIGIN_WEBHOOK: u64 = 36;

/// What a message-table key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOwner {
    Device(u64),
    /// A channel's buffer.
    Channel(u64),
    /// A stream's queue.
    Stream(u64),
    /// A webhook's pending calls.
    Webhook(u64),
    /// The log of an entity: `(origin_type, id)`.
    Log(u64, u64),
}

impl KeyOwner {
    /// Who owns message-table key `key`.
    pub fn of(key: DeviceId) -> KeyOwner {
        if let Some(channel) = channel_of(key) {
            KeyOwner::Channel(channel)
        } else if let Some((origin, id)) = log_of(key) {
            KeyOwner::Log(origin, id)
        } else if let Some(stream) = stream_of(key) {
            KeyOwner::Stream(stream)
        } else if let Some(webhook) = webhook_of(key) {
            KeyOwner::Webhook(webhook)
        } else {
            KeyOwner::Device(device_of(key))
        }
    }
}

/// Where a device message sorts: its `timestamp` in microseconds (signed: messages may
/// predate 1970), then its arrival sequence (ties in arrival order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageKey {
    pub ts: i64,
    pub seq: u64,
}

/// One stored device message: its key and its JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMessage {
    pub key: MessageKey,
    pub json: Bytes,
}

/// How many messages a device has stored and their bytes (the JSON documents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageStats {
    pub count: u64,
    pub bytes: u64,
}

impl MessageStats {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
    }

    pub(crate) fn remove(&mut self, bytes: usize) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes as u64);
    }
}

/// A range read of one device's messages: `from..=to` on the timestamp (microseconds), oldest
/// first or, with `reverse`, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRange {
    pub device: DeviceId,
    pub from: i64,
    pub to: i64,
    pub reverse: bool,
}

/// What a reader's visitor says after each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    More,
    Stop,
}

/// Reads what the writer thread committed, concurrently with it (a redb read transaction, or
/// the memory backend's lock). Obtained from [`crate::Backend::reader`]; [`crate::Store`]
/// exposes it.
pub trait Reader: Send + Sync + fmt::Debug {
    /// Visits the messages of `range` in its order until the visitor says stop.
    fn device_messages(
        &self,
        range: &MessageRange,
        visit: &mut dyn FnMut(MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError>;

    /// How many messages and bytes `device` has stored (a point lookup).
    fn message_stats(&self, device: DeviceId) -> Result<MessageStats, StoreError>;

    /// Visits the messages (of every owner: devices, buffers, logs, queues) whose arrival
    /// sequence is at least `seq`, in arrival order, until the visitor says stop: what came in
    /// since a point (the devices layer replays them into telemetry after a crash).
    fn messages_since(
        &self,
        seq: u64,
        visit: &mut dyn FnMut(DeviceId, MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError>;
}

/// The key of a device message in the message index (and, in format 1, of the message table):
/// `device (u64) | ts (i64, sign flipped) | seq (u64)`, all big-endian, so keys sort by
/// device, then time, then arrival.
pub(crate) fn message_key(device: DeviceId, key: MessageKey) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&device.to_be_bytes());
    k[8..16].copy_from_slice(&ts_bytes(key.ts));
    k[16..].copy_from_slice(&key.seq.to_be_bytes());
    k
}

/// Where the document of the message indexed under `index_key` ([`message_key`]) is kept in
/// the message data table: `seq | device | ts`, the same three words with the arrival sequence
/// first. Sequences grow with arrival, so a batch of new messages of many devices lands at the
/// right edge of the data table (a few fresh pages) instead of in one leaf per device; only the
/// small index entries go to each device's range.
pub(crate) fn data_key(index_key: &[u8; 24]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&index_key[16..]);
    k[8..].copy_from_slice(&index_key[..16]);
    k
}

/// The owner and key of a message-data key ([`data_key`]).
pub(crate) fn decode_data_key(k: &[u8; 24]) -> Result<(DeviceId, MessageKey), String> {
    let mut index = [0u8; 24];
    index[..16].copy_from_slice(&k[8..]);
    index[16..].copy_from_slice(&k[..8]);
    decode_message_key(&index)
}

fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The first and last possible keys of `device` between two timestamps.
pub(crate) fn message_bounds(device: DeviceId, from: i64, to: i64) -> ([u8; 24], [u8; 24]) {
    (
        message_key(device, MessageKey { ts: from, seq: 0 }),
        message_key(
            device,
            MessageKey {
                ts: to,
                seq: u64::MAX,
            },
        ),
    )
}

pub(crate) fn decode_message_key(k: &[u8]) -> Result<(DeviceId, MessageKey), String> {
    let b = <[u8; 24]>::try_from(k).map_err(|_| format!("{} bytes, expected 24", k.len()))?;
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(w)
    };
    Ok((
        word(0),
        MessageKey {
            ts: (word(8) ^ (1 << 63)) as i64,
            seq: word(16),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_collide_with_no_device_or_channel_key() {
        for id in [0u64, 1, 7, 1 << 20, (1 << 53) - 1] {
            for origin in [LOG_ORIGIN_DEVICE, LOG_ORIGIN_CHANNEL, 12, 36] {
                let key = log_key(origin, id);
                assert_eq!(log_of(key), Some((origin, id)));
                assert_eq!(channel_of(key), None, "not a channel's buffer");
                assert_ne!(key, id, "not device {id}");
                assert_ne!(key, channel_key(id));
                assert_eq!(KeyOwner::of(key), KeyOwner::Log(origin, id));
            }
            assert_ne!(
                log_key(LOG_ORIGIN_DEVICE, id),
                log_key(LOG_ORIGIN_CHANNEL, id)
            );
            assert_eq!(log_of(id), None);
            assert_eq!(log_of(channel_key(id)), None);
            assert_eq!(KeyOwner::of(id), KeyOwner::Device(id));
            assert_eq!(KeyOwner::of(channel_key(id)), KeyOwner::Channel(id));
            assert_eq!(KeyOwner::of(stream_key(id)), KeyOwner::Stream(id));
            assert_eq!(KeyOwner::of(webhook_key(id)), KeyOwner::Webhook(id));
            assert_eq!(webhook_of(webhook_key(id)), Some(id));
            for other in [
                id,
                channel_key(id),
                stream_key(id),
                queue_key(id),
                commands_key(id),
            ] {
                assert_eq!(webhook_of(other), None);
            }
            assert_eq!(webhook_of(log_key(LOG_ORIGIN_WEBHOOK, id)), None);
            assert_eq!(
                KeyOwner::of(log_key(LOG_ORIGIN_WEBHOOK, id)),
                KeyOwner::Log(LOG_ORIGIN_WEBHOOK, id)
            );
            assert_eq!(stream_of(id), None);
            assert_eq!(stream_of(channel_key(id)), None);
            assert_eq!(stream_of(commands_key(id)), None);
            assert_eq!(stream_of(queue_key(id)), None);
            for origin in [LOG_ORIGIN_DEVICE, LOG_ORIGIN_CHANNEL, LOG_ORIGIN_STREAM, 36] {
                assert_eq!(stream_of(log_key(origin, id)), None);
            }
            assert_eq!(
                KeyOwner::of(log_key(LOG_ORIGIN_STREAM, id)),
                KeyOwner::Log(LOG_ORIGIN_STREAM, id)
            );
        }
        // A device's and its log's messages never share a range.
        let (lo, hi) = message_bounds(5, i64::MIN, i64::MAX);
        let log = message_key(log_key(LOG_ORIGIN_DEVICE, 5), MessageKey { ts: 0, seq: 0 });
        assert!(log < lo || log > hi);
    }

    #[test]
    fn keys_sort_by_device_then_time_then_arrival() {
        let k = |d, ts, seq| message_key(d, MessageKey { ts, seq });
        assert!(k(1, -5, 9) < k(1, 0, 0));
        assert!(k(1, 0, 0) < k(1, 0, 1));
        assert!(k(1, i64::MAX, u64::MAX) < k(2, i64::MIN, 0));
        let (d, key) = decode_message_key(&k(7, -3, 4)).expect("decodes");
        assert_eq!((d, key), (7, MessageKey { ts: -3, seq: 4 }));
        // The data key leads with the arrival sequence and converts back.
        assert!(data_key(&k(9, 5, 1)) < data_key(&k(1, 0, 2)));
        assert_eq!(
            data_key(&k(7, -3, 4)),
            [&4u64.to_be_bytes()[..], &k(7, -3, 4)[..16]].concat()[..]
        );
    }
}
