//! The in-memory backend: the reference model of what ops mean. Unit tests use it to restart a
//! broker without a disk, and the disk backend is checked against it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use parking_lot::Mutex;
use tern_codec::PacketId;

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
        }
    }
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
}
