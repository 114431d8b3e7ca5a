//! The in-memory backend: the reference model of what ops mean. Unit tests use it to restart a
//! broker without a disk, and the disk backend is checked against it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use parking_lot::Mutex;
use tern_codec::PacketId;

use crate::devices::{DeviceId, MessageKey, MessageRange, MessageStats, Reader, Visit};
use crate::error::StoreError;
use crate::handle::Backend;
use crate::model::{
    Cid, Message, QueuedRecord, SessionKey, SessionRecord, SessionSnapshot, Snapshot,
    SubscriptionRecord,
};
use crate::op::Op;

/// The state an in-memory store holds.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    pub accounts: BTreeMap<Cid, Bytes>,
    pub tokens: BTreeMap<u64, Bytes>,
    pub retained: BTreeMap<(Cid, ByteString), Arc<Message>>,
    pub sessions: BTreeMap<SessionKey, MemorySession>,
    pub gw_meta: Option<Bytes>,
    pub devices: BTreeMap<DeviceId, Bytes>,
    pub groups: BTreeMap<u64, Bytes>,
    pub channels: BTreeMap<u64, Bytes>,
    pub streams: BTreeMap<u64, Bytes>,
    pub webhooks: BTreeMap<u64, Bytes>,
    pub telemetry: BTreeMap<DeviceId, Bytes>,
    pub messages: BTreeMap<(DeviceId, MessageKey), Bytes>,
    pub message_stats: BTreeMap<DeviceId, MessageStats>,
}

/// One stored session.
#[derive(Debug, Clone)]
pub struct MemorySession {
    pub record: SessionRecord,
    pub subscriptions: BTreeMap<ByteString, SubscriptionRecord>,
    pub queue: BTreeMap<u64, QueuedRecord>,
    pub incoming_qos2: BTreeMap<PacketId, ()>,
}

impl MemoryState {
    /// Applies one op. Ops about a session that does not exist are ignored, as on disk.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutAccount { cid, json } => {
                self.accounts.insert(*cid, json.clone());
            }
            Op::DelAccount { cid } => {
                self.accounts.remove(cid);
                // The account's REST call and MQTT sessions logs go with it.
                for origin in [crate::LOG_ORIGIN_CUSTOMER, crate::LOG_ORIGIN_MQTT] {
                    let log = crate::log_key(origin, *cid);
                    self.message_stats.remove(&log);
                    self.messages.retain(|(d, _), _| *d != log);
                }
            }
            Op::PutToken { id, json } => {
                self.tokens.insert(*id, json.clone());
            }
            Op::DelToken { id } => {
                self.tokens.remove(id);
            }
            Op::PutRetained { msg } => {
                self.retained
                    .insert((msg.cid, msg.topic.clone()), msg.clone());
            }
            Op::DelRetained { cid, topic } => {
                self.retained.remove(&(*cid, topic.clone()));
            }
            Op::PutSession { record } => match self.sessions.get_mut(&record.key) {
                Some(s) => s.record = record.clone(),
                None => {
                    self.sessions.insert(
                        record.key.clone(),
                        MemorySession {
                            record: record.clone(),
                            subscriptions: BTreeMap::new(),
                            queue: BTreeMap::new(),
                            incoming_qos2: BTreeMap::new(),
                        },
                    );
                }
            },
            Op::DelSession { key } => {
                self.sessions.remove(key);
            }
            Op::PutSubscription { key, sub } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.subscriptions.insert(sub.filter.clone(), sub.clone());
                }
            }
            Op::DelSubscription { key, filter } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.subscriptions.remove(filter);
                }
            }
            Op::Enqueue { key, entry } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.queue.insert(entry.seq, entry.clone());
                }
            }
            Op::SetInflight {
                key,
                seq,
                packet_id,
                phase,
            } => {
                if let Some(e) = self
                    .sessions
                    .get_mut(key)
                    .and_then(|s| s.queue.get_mut(seq))
                {
                    e.inflight = Some((*packet_id, *phase));
                }
            }
            Op::Dequeue { key, seq } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.queue.remove(seq);
                }
            }
            Op::ClearQueue { key } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.queue.clear();
                }
            }
            Op::PutIncoming { key, packet_id } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.incoming_qos2.insert(*packet_id, ());
                }
            }
            Op::DelIncoming { key, packet_id } => {
                if let Some(s) = self.sessions.get_mut(key) {
                    s.incoming_qos2.remove(packet_id);
                }
            }
            Op::PutGwMeta { json } => {
                self.gw_meta = Some(json.clone());
            }
            Op::PutDevice { id, json } => {
                self.devices.insert(*id, json.clone());
            }
            Op::DelDevice { id } => {
                self.devices.remove(id);
                self.telemetry.remove(id);
                let log = crate::log_key(crate::LOG_ORIGIN_DEVICE, *id);
                self.message_stats.remove(id);
                self.message_stats.remove(&log);
                self.messages.retain(|(d, _), _| d != id && *d != log);
            }
            Op::PutGroup { id, json } => {
                self.groups.insert(*id, json.clone());
            }
            Op::DelGroup { id } => {
                self.groups.remove(id);
            }
            Op::PutChannel { id, json } => {
                self.channels.insert(*id, json.clone());
            }
            Op::DelChannel { id } => {
                self.channels.remove(id);
                let key = crate::channel_key(*id);
                let log = crate::log_key(crate::LOG_ORIGIN_CHANNEL, *id);
                self.message_stats.remove(&key);
                self.message_stats.remove(&log);
                self.messages.retain(|(d, _), _| *d != key && *d != log);
            }
            Op::PutStream { id, json } => {
                self.streams.insert(*id, json.clone());
            }
            Op::DelStream { id } => {
                self.streams.remove(id);
                let key = crate::stream_key(*id);
                let log = crate::log_key(crate::LOG_ORIGIN_STREAM, *id);
                self.message_stats.remove(&key);
                self.message_stats.remove(&log);
                self.messages.retain(|(d, _), _| *d != key && *d != log);
            }
            Op::PutWebhook { id, json } => {
                self.webhooks.insert(*id, json.clone());
            }
            Op::DelWebhook { id } => {
                self.webhooks.remove(id);
                let key = crate::webhook_key(*id);
                let log = crate::log_key(crate::LOG_ORIGIN_WEBHOOK, *id);
                self.message_stats.remove(&key);
                self.message_stats.remove(&log);
                self.messages.retain(|(d, _), _| *d != key && *d != log);
            }
            Op::PutTelemetry { device, json } => {
                if self.devices.contains_key(device) {
                    self.telemetry.insert(*device, json.clone());
                }
            }
            Op::DelTelemetry { device } => {
                self.telemetry.remove(device);
            }
            Op::AppendMessages { device, messages } => {
                let owner = match crate::KeyOwner::of(*device) {
                    crate::KeyOwner::Channel(channel)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_CHANNEL, channel) => {
                        self.channels.contains_key(&channel)
                    }
                    crate::KeyOwner::Device(id)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_DEVICE, id) => {
                        self.devices.contains_key(&id)
                    }
                    crate::KeyOwner::Stream(stream)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_STREAM, stream) => {
                        self.streams.contains_key(&stream)
                    }
                    crate::KeyOwner::Log(
                        crate::LOG_ORIGIN_CUSTOMER | crate::LOG_ORIGIN_MQTT,
                        cid,
                    ) => self.accounts.contains_key(&cid),
                    crate::KeyOwner::Webhook(webhook)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_WEBHOOK, webhook) => {
                        self.webhooks.contains_key(&webhook)
                    }
                    // Entities the store keeps no record of: nothing would delete their log.
                    crate::KeyOwner::Log(..) => false,
                };
                if !owner {
                    return;
                }
                let stats = self.message_stats.entry(*device).or_default();
                for (key, json) in messages {
                    if let Some(old) = self.messages.insert((*device, *key), json.clone()) {
                        stats.remove(old.len());
                    }
                    stats.add(json.len());
                }
            }
            Op::DelMessages { device, from, to } => {
                if from > to {
                    return;
                }
                let (lo, hi) = bounds(*device, *from, *to);
                let gone: Vec<_> = self.messages.range(lo..=hi).map(|(k, _)| *k).collect();
                self.remove_messages(*device, gone);
            }
            Op::DelMessageKeys { device, keys } => {
                let gone = keys.iter().map(|k| (*device, *k)).collect();
                self.remove_messages(*device, gone);
            }
            Op::TrimMessages { device, max_bytes } => {
                let Some(mut bytes) = self.message_stats.get(device).map(|s| s.bytes) else {
                    return;
                };
                let (lo, hi) = bounds(*device, i64::MIN, i64::MAX);
                let mut gone = Vec::new();
                for (k, v) in self.messages.range(lo..=hi) {
                    if bytes <= *max_bytes {
                        break;
                    }
                    bytes = bytes.saturating_sub(v.len() as u64);
                    gone.push(*k);
                }
                self.remove_messages(*device, gone);
            }
        }
    }

    fn remove_messages(&mut self, device: DeviceId, keys: Vec<(DeviceId, MessageKey)>) {
        for k in keys {
            if let Some(v) = self.messages.remove(&k)
                && let Some(s) = self.message_stats.get_mut(&device)
            {
                s.remove(v.len());
            }
        }
    }

    /// Visits the messages of `range` in its order.
    pub fn read_messages(
        &self,
        range: &MessageRange,
        visit: &mut dyn FnMut(MessageKey, &[u8]) -> Visit,
    ) {
        if range.from > range.to {
            return;
        }
        let (lo, hi) = bounds(range.device, range.from, range.to);
        let mut iter = self.messages.range(lo..=hi);
        loop {
            let next = if range.reverse {
                iter.next_back()
            } else {
                iter.next()
            };
            let Some(((_, key), json)) = next else {
                return;
            };
            if visit(*key, json) == Visit::Stop {
                return;
            }
        }
    }

    /// The state as the broker loads it.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accounts: self.accounts.iter().map(|(k, v)| (*k, v.clone())).collect(),
            tokens: self.tokens.iter().map(|(k, v)| (*k, v.clone())).collect(),
            retained: self.retained.values().cloned().collect(),
            sessions: self
                .sessions
                .values()
                .map(|s| SessionSnapshot {
                    record: s.record.clone(),
                    subscriptions: s.subscriptions.values().cloned().collect(),
                    queue: s.queue.values().cloned().collect(),
                    incoming_qos2: s.incoming_qos2.keys().copied().collect(),
                })
                .collect(),
            gw_meta: self.gw_meta.clone(),
            devices: self.devices.iter().map(|(k, v)| (*k, v.clone())).collect(),
            groups: self.groups.iter().map(|(k, v)| (*k, v.clone())).collect(),
            channels: self.channels.iter().map(|(k, v)| (*k, v.clone())).collect(),
            streams: self.streams.iter().map(|(k, v)| (*k, v.clone())).collect(),
            webhooks: self.webhooks.iter().map(|(k, v)| (*k, v.clone())).collect(),
            telemetry: self
                .telemetry
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            message_stats: self.message_stats.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

fn bounds(
    device: DeviceId,
    from: i64,
    to: i64,
) -> ((DeviceId, MessageKey), (DeviceId, MessageKey)) {
    (
        (device, MessageKey { ts: from, seq: 0 }),
        (
            device,
            MessageKey {
                ts: to,
                seq: u64::MAX,
            },
        ),
    )
}

/// A backend that keeps its state in memory, shared so a test can open it again after a
/// "restart".
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    pub state: Arc<Mutex<MemoryState>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// The stored state, as a restarted broker would load it.
    pub fn load(&self) -> Snapshot {
        self.state.lock().snapshot()
    }
}

impl Backend for MemoryBackend {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        for op in ops {
            st.apply(op);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn reader(&self) -> Option<std::sync::Arc<dyn Reader>> {
        Some(Arc::new(self.clone()))
    }
}

impl Reader for MemoryBackend {
    fn device_messages(
        &self,
        range: &MessageRange,
        visit: &mut dyn FnMut(MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError> {
        self.state.lock().read_messages(range, visit);
        Ok(())
    }

    fn messages_since(
        &self,
        seq: u64,
        visit: &mut dyn FnMut(DeviceId, MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError> {
        let state = self.state.lock();
        let mut since: Vec<_> = state
            .messages
            .iter()
            .filter(|((_, key), _)| key.seq >= seq)
            .collect();
        since.sort_by_key(|((owner, key), _)| (key.seq, *owner, key.ts));
        for ((owner, key), json) in since {
            if visit(*owner, *key, json) == Visit::Stop {
                break;
            }
        }
        Ok(())
    }

    fn message_stats(&self, device: DeviceId) -> Result<MessageStats, StoreError> {
        Ok(self
            .state
            .lock()
            .message_stats
            .get(&device)
            .copied()
            .unwrap_or_default())
    }
}
