//! Reading and deleting a device's telemetry (docs/flespi.md#devices).

use bytes::Bytes;
use serde_json::{Value, json};
use tern_store::Op;

use crate::{Gateway, GwError, publish};

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
        if !gone.is_empty() {
            if t.is_empty() {
                self.store.submit(Op::DelTelemetry { device: id });
            } else {
                self.store.submit(Op::PutTelemetry {
                    device: id,
                    json: Bytes::from(serde_json::to_vec(&t.to_json(None)).unwrap_or_default()),
                });
            }
        }
        Ok(t.to_json(None))
    }
}
