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
            // Written now with everything else pending, so that a replay after a crash starts
            // after the messages that carried what was deleted.
            st.telemetry_dirty.insert(id);
            self.flush_locked(&mut st);
        }
        Ok(left)
    }

    /// Writes the telemetry of every device whose telemetry changed since the last flush,
    /// with the arrival sequence the replay starts from.
    pub fn flush_telemetry(&self) {
        let mut st = self.state.lock();
        self.flush_locked(&mut st);
    }

    fn flush_locked(&self, st: &mut State) {
        if st.telemetry_dirty.is_empty() {
            return;
        }
        // Device messages take their sequence and update telemetry under this lock: every
        // one below `seq` is in the documents written here.
        let seq = self.seq.load(std::sync::atomic::Ordering::Relaxed);
        let dirty = std::mem::take(&mut st.telemetry_dirty);
        let mut ops = Vec::with_capacity(dirty.len());
        for id in dirty {
            if !st.devices.contains_key(&id) {
                continue;
            }
            match st.telemetry.get(&id) {
                Some(t) if !t.is_empty() => ops.push(Op::PutTelemetry {
                    device: id,
                    json: Bytes::from(serde_json::to_vec(&t.to_json(None)).unwrap_or_default()),
                }),
                _ => ops.push(Op::DelTelemetry { device: id }),
            }
        }
        if !ops.is_empty() {
            self.store.submit_all(ops);
        }
        st.telemetry_seq = Some(seq);
        self.put_counters(st);
    }
}
