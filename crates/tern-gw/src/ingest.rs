//! Messages posted into a device (docs/flespi.md#devices): checked as a whole first (nothing is
//! kept when one is bad), then stored, published, and applied to telemetry and `last_active`.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tern_store::Op;

use tern_broker::topics::device_event;

use crate::{Device, Gateway, GwError, message, publish, telemetry};

impl Gateway {
    /// Registers messages into device `id` (POST /gw/devices/{sel}/messages): every message is
    /// checked first (nothing is kept when one is bad), then stored (unless `messages_ttl` is
    /// 0), published, and applied to telemetry and `last_active`. Refused whole when storing
    /// them would take the device's account or one above it past `messages_bytes`.
    pub fn post_messages(&self, id: u64, messages: &[Value]) -> Result<(), GwError> {
        let done = self.ingest(id, messages, true);
        self.metrics
            .count_call(crate::metrics::Route::DevicePost, messages.len(), &done);
        done
    }

    /// The device path of §3 for messages posted over REST (`rest`: they get `rest.timestamp`,
    /// and the `messages_bytes` quota is checked here) or brought by a channel (already
    /// carrying its ingest fields; `channel_messages` checked the quota for the whole batch).
    pub(crate) fn ingest(&self, id: u64, messages: &[Value], rest: bool) -> Result<(), GwError> {
        if messages.len() > self.options.max_messages_per_post {
            return Err(GwError::Invalid(format!(
                "at most {} messages per call",
                self.options.max_messages_per_post
            )));
        }
        self.ingest_with(id, rest, |d, now| prepare(d, messages, now, rest))
    }

    /// The device path for messages a channel checked and owns (`channel_messages`): they
    /// carry `ident`, `timestamp` and the ingest fields already and are moved, not copied.
    pub(crate) fn ingest_checked(
        &self,
        id: u64,
        messages: Vec<Map<String, Value>>,
    ) -> Result<(), GwError> {
        self.ingest_with(id, false, move |d, _| Ok(prepare_checked(d, messages)))
    }

    fn ingest_with(
        &self,
        id: u64,
        rest: bool,
        prepare: impl FnOnce(&Device, f64) -> Result<Vec<Prepared>, GwError>,
    ) -> Result<(), GwError> {
        let now = self.now();
        let mut st = self.state.lock();
        let d = st
            .devices
            .get(&id)
            .ok_or(GwError::NotFound { what: "device", id })?
            .clone();
        let prepared = prepare(&d, now)?;
        let d_cid = d.cid;
        let sessions = crate::has_sessions(&d);
        let mut stored = Vec::with_capacity(prepared.len());
        for (ts, obj) in &prepared {
            let json = Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
            let key = tern_store::MessageKey {
                ts: message::micros(*ts),
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
            };
            stored.push((key, json));
        }
        if d.messages_ttl > 0 && !stored.is_empty() {
            let bytes: u64 = stored.iter().map(|(_, j)| j.len() as u64).sum();
            if rest {
                self.check_bytes(&st, &[(d.cid, bytes)])?;
            }
            let ticket = self.write(Op::AppendMessages {
                device: id,
                messages: stored.clone(),
            });
            self.note_append(&mut st, id, d.cid, bytes, stored.len() as u64, ticket);
        }
        // The streams that take this device's messages (before they are acknowledged); no
        // list is built while there are no streams.
        if !st.streams.is_empty() {
            let for_streams: Vec<(&Map<String, Value>, &Bytes)> = prepared
                .iter()
                .zip(&stored)
                .map(|((_, obj), (_, json))| (obj, json))
                .collect();
            self.queue_for_streams(
                &mut st,
                crate::streams::Source::Device(id),
                &for_streams,
                &|_, _| false,
            );
        }
        let tel = st.telemetry.entry(id).or_default();
        let changes = tel.apply_all(prepared.iter().map(|(ts, obj)| (*ts, obj)));
        let tel_changed = !changes.is_empty();
        if tel_changed && d.messages_ttl == 0 {
            // Nothing stored to replay it from after a crash: written with the batch.
            self.store
                .submit(crate::telemetry_ops::telemetry_op(id, Some(tel)));
        }
        for (_, json) in stored {
            publish::message(&self.broker, d.cid, id, json);
        }
        publish::telemetry_changes(&self.broker, d.cid, id, tel, &changes);
        if tel_changed && d.messages_ttl > 0 {
            // Written by the next flush (at most a second away), or replayed from the messages
            // stored with this batch after a crash.
            st.telemetry_dirty.insert(id);
        }
        let last_active = now as u64;
        if !prepared.is_empty() && d.last_active != Some(last_active) {
            let mut new = d;
            new.last_active = Some(last_active);
            self.store_device(&new, false);
            // Once a second per device: `messages_size` from the counters kept here rather
            // than a store read (twice) under the lock.
            let size = st
                .usage
                .key_bytes(id)
                .unwrap_or_else(|| self.messages_size(id));
            let old_item = st.devices.get(&id).map(|o| o.item(self.connected(o), size));
            let item = new.item(self.connected(&new), size);
            publish::state(&self.broker, new.cid, id, old_item.as_ref(), &item);
            st.insert_device(new);
        }
        if !prepared.is_empty() && !sessions && st.online.insert(id) {
            self.log_device(d_cid, id, device_event::CONNECTED, None, None);
        }
        Ok(())
    }
}

/// A message ready to store, with its timestamp in seconds.
type Prepared = (f64, Map<String, Value>);

/// [`prepare`] for a channel's checked messages: only the device fields are added.
fn prepare_checked(d: &Device, messages: Vec<Map<String, Value>>) -> Vec<Prepared> {
    messages
        .into_iter()
        .map(|mut obj| {
            let ts = obj
                .get("timestamp")
                .and_then(|v| message::timestamp_of(v).ok())
                .unwrap_or_default();
            add_device_fields(&mut obj, d);
            (ts, obj)
        })
        .collect()
}

fn add_device_fields(obj: &mut Map<String, Value>, d: &Device) {
    obj.insert("device.id".into(), json!(d.id));
    obj.insert("device.name".into(), json!(d.name));
    obj.insert("device.type.id".into(), json!(d.device_type_id));
}

/// The validate step: every message as it will be stored, with its timestamp in seconds, or the
/// first problem (naming the message). `ident` and `timestamp` default to the device's and
/// `now`; `rest.timestamp` (posted over REST), `device.id`, `device.name` and `device.type.id` are added.
fn prepare(d: &Device, messages: &[Value], now: f64, rest: bool) -> Result<Vec<Prepared>, GwError> {
    let mut prepared = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(obj) = m else {
            return Err(GwError::Invalid(format!(
                "message {i}: a message must be a JSON object"
            )));
        };
        let ts = match obj.get("timestamp") {
            None | Some(Value::Null) => now,
            Some(v) => message::timestamp_of(v)
                .map_err(|e| GwError::Invalid(format!("message {i}: {e}")))?,
        };
        if obj.get("ident").is_some_and(|v| !v.is_string()) {
            return Err(GwError::Invalid(format!(
                "message {i}: ident must be a string"
            )));
        }
        let mut obj = obj.clone();
        obj.entry("ident").or_insert_with(|| json!(d.ident()));
        obj.insert("timestamp".into(), telemetry::number(ts));
        if rest {
            obj.insert("rest.timestamp".into(), json!(now));
        }
        add_device_fields(&mut obj, d);
        prepared.push((ts, obj));
    }
    Ok(prepared)
}
