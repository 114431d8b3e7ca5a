//! Reading, deleting and writing a device's telemetry (docs/flespi.md#devices).
//!
//! Telemetry changes with every message, but a device's document is written to the store at
//! most once per [`FLUSH_EVERY`] (the retention task calls [`Gateway::flush_telemetry`], and
//! once more at shutdown), not with each batch: at 1,000 trackers a frame each 200 ms that was a
//! document write per frame. What a crash loses is replayed at the next start from the
//! messages stored since the last flush (`replay_telemetry` in `lib.rs`): the flush records the
//! arrival sequence below which every device message is in the written telemetry. Devices that
//! store no messages (`messages_ttl` 0) have nothing to replay from and are written with their
//! batch as before.

use bytes::Bytes;
use serde_json::{Value, json};
use tern_store::Op;

use crate::telemetry::Telemetry;
use crate::{Gateway, GwError, State, publish};

/// How often changed telemetry is written.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Gateway {
    /// `{"<param>": {"value", "ts"}}` of device `id`; `names` picks some (`None`: all).
    pub fn telemetry(&self, id: u64, names: Option<&[String]>) -> Option<Value> {
        let st = self.state.lock();
        st.devices.get(&id)?;
        Some(
            st.telemetry
                .get(&id)
                .map_or_else(|| json!({}), |t| t.to_json(names)),
        )
    }

    /// Deletes telemetry parameters of device `id` (`None`: all); returns what is left.
    pub fn delete_telemetry(&self, id: u64, names: Option<&[String]>) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let cid = st
            .devices
            .get(&id)
            .ok_or(GwError::NotFound { what: "device", id })?
            .cid;
        let Some(t) = st.telemetry.get_mut(&id) else {
            return Ok(json!({}));
        };
        let gone = t.remove(names);
        for k in &gone {
            publish::telemetry(&self.broker, cid, id, k, None);
        }
        let left = t.to_json(None);
        if !gone.is_empty() {
            // The other nodes of a cluster take what is left as it is.
            self.share(&telemetry_op(id, st.telemetry.get(&id)));
            // Written now with everything else pending, so that a replay after a crash starts
            // after the messages that carried what was deleted.
            st.telemetry_dirty.insert(id);
            self.flush_locked(&mut st);
        }
        Ok(left)
    }

    /// Writes the telemetry of every device whose telemetry changed since the last flush,
    /// then the arrival sequence the replay starts from. The documents are made [`FLUSH_CHUNK`]
    /// devices at a time, yielding between chunks, so that ingest never waits for the whole
    /// flush on the state lock (1,000 documents took that lock for tens of milliseconds).
    pub async fn flush_telemetry(&self) {
        let (dirty, seq, applied) = {
            let mut st = self.state.lock();
            if st.telemetry_dirty.is_empty() {
                // Changes of other nodes that touched no telemetry: their position moves on.
                if st.cluster_applied > st.cluster_flushed && !st.telemetry_flushing {
                    st.cluster_flushed = st.cluster_applied;
                    self.put_counters(&st);
                }
                return;
            }
            // Device messages take their sequence and update telemetry under this lock:
            // every one below `seq` is in the documents written below (or in newer ones).
            let seq = self.seq.load(std::sync::atomic::Ordering::Relaxed);
            let dirty: Vec<u64> = std::mem::take(&mut st.telemetry_dirty)
                .into_iter()
                .collect();
            st.telemetry_flushing = true;
            (dirty, seq, st.cluster_applied)
        };
        for chunk in dirty.chunks(FLUSH_CHUNK) {
            let ops = {
                let st = self.state.lock();
                telemetry_ops(&st, chunk)
            };
            if !ops.is_empty() {
                self.store.submit_all(ops);
            }
            tokio::task::yield_now().await;
        }
        let mut st = self.state.lock();
        st.telemetry_flushing = false;
        // A synchronous flush (a telemetry delete) may have recorded a later point already.
        if st.telemetry_seq.is_none_or(|s| s < seq) || st.cluster_flushed < applied {
            st.telemetry_seq = Some(st.telemetry_seq.unwrap_or(0).max(seq));
            st.cluster_flushed = st.cluster_flushed.max(applied);
            self.put_counters(&st);
        }
    }

    /// [`Gateway::flush_telemetry`] in one go under the lock already held (a telemetry delete:
    /// rare, and the replay must start after what it deleted).
    fn flush_locked(&self, st: &mut State) {
        let seq = self.seq.load(std::sync::atomic::Ordering::Relaxed);
        let dirty: Vec<u64> = std::mem::take(&mut st.telemetry_dirty)
            .into_iter()
            .collect();
        let ops = telemetry_ops(st, &dirty);
        if !ops.is_empty() {
            self.store.submit_all(ops);
        }
        // While a flush is halfway, the devices it took are not written yet: the point stays
        // where it is (a crash then replays a little more).
        if !st.telemetry_flushing {
            st.telemetry_seq = Some(seq);
            st.cluster_flushed = st.cluster_applied;
            self.put_counters(st);
        }
    }
}

/// Devices' telemetry documents flushed at once.
const FLUSH_CHUNK: usize = 64;

/// The write of each device's telemetry (a delete once it is empty); devices gone are skipped.
fn telemetry_ops(st: &State, ids: &[u64]) -> Vec<Op> {
    let mut ops = Vec::with_capacity(ids.len());
    for id in ids {
        if !st.devices.contains_key(id) {
            continue;
        }
        ops.push(telemetry_op(*id, st.telemetry.get(id)));
    }
    ops
}

/// The write of device `id`'s telemetry `t`: its document, or a delete once it is empty.
pub(crate) fn telemetry_op(id: u64, t: Option<&Telemetry>) -> Op {
    match t {
        Some(t) if !t.is_empty() => Op::PutTelemetry {
            device: id,
            json: Bytes::from(serde_json::to_vec(&t.to_json(None)).unwrap_or_default()),
        },
        _ => Op::DelTelemetry { device: id },
    }
}
