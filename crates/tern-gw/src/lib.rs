//! tern-gw: the devices layer of the flespi API (docs/flespi.md#devices),
//! above the broker and independent of HTTP. The REST API (`tern-api`'s `gw_*` handlers) calls
//! the [`Gateway`]; the gateway keeps its records in the store and publishes through the
//! broker's in-process API (`Broker::message`, `Broker::message_at`, `Broker::publish`).
//!
//! - Devices, groups and telemetry live in memory (loaded from the store's `Snapshot` at start)
//!   and are mirrored into the store as versioned JSON records (`Op::PutDevice`, ...).
//! - Device messages are never held in memory: each POST appends them to the store
//!   (`Op::AppendMessages`), and reads are range queries in the store
//!   (`Store::device_messages`).
//! - Retention (`messages_ttl`, `messages_rotate`) runs in [`Gateway::sweep`], called by the
//!   task [`Gateway::run_retention`] every `retention_interval`, never on the ingest path.
//!
//! One lock (`Gateway::state`, parking_lot) guards the records; it is never held across
//! `.await` nor while reading message history. Store ops and MQTT publications of one change
//! are made under it, so the store and subscribers see the changes of a device in order. Lock
//! order: the gateway's lock, then the broker's and the store's (neither calls back here).
//!
//! Layout:
//! - `device`: the device record, inputs and item
//! - `group`: groups
//! - `types`: the device types and protocols tern knows (the one list)
//! - `message`: posted messages (timestamps), history read parameters and filters
//! - `telemetry`: per-parameter `{value, ts}`, the late-message rule, `position`, the LRU cap
//! - `publish`: the `flespi/state|log|message/gw/devices/...` publications
//! - `error`: `GwError`

pub mod device;
pub mod error;
pub mod group;
pub mod message;
pub mod publish;
pub mod telemetry;
pub mod types;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tern_broker::accounts::Directory;
use tern_broker::topics::device_event;
use tern_broker::{Broker, Cid};
use tern_store::{MessageRange, Op, Snapshot, Store, Visit};

pub use device::{Device, DeviceChanges, DeviceInput};
pub use error::GwError;
pub use group::{Group, GroupChanges, GroupInput};
pub use message::{DeleteData, MessageQuery, MessagesData};
pub use telemetry::Telemetry;

/// Settings of the devices layer. Every number is a default, not part of the protocol.
#[derive(Debug, Clone)]
pub struct GwOptions {
    /// Most messages one history read answers (a truncated answer says so).
    pub max_messages_per_call: usize,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// A device is `connected` while its last message arrived within this many seconds.
    pub inactivity_timeout: u64,
    /// Most messages one POST may carry.
    pub max_messages_per_post: usize,
}

impl Default for GwOptions {
    fn default() -> Self {
        GwOptions {
            max_messages_per_call: 100_000,
            retention_interval: Duration::from_secs(3600),
            inactivity_timeout: 600,
            max_messages_per_post: 10_000,
        }
    }
}

/// What a history read found.
#[derive(Debug, Default)]
pub struct History {
    pub messages: Vec<Value>,
    /// The answer stopped at `max_messages_per_call`.
    pub truncated: bool,
}

/// What one retention sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Devices whose messages older than `messages_ttl` were deleted.
    pub expired: u64,
    /// Devices whose oldest messages were rotated out by `messages_rotate`.
    pub rotated: u64,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<u64, Device>,
    telemetry: HashMap<u64, Telemetry>,
    groups: BTreeMap<u64, Group>,
    next_device: u64,
    next_group: u64,
}

/// The devices layer. Cheap to share (`Arc<Gateway>`).
#[derive(Debug)]
pub struct Gateway {
    broker: Arc<Broker>,
    directory: Arc<Directory>,
    store: Store,
    pub options: GwOptions,
    state: Mutex<State>,
    /// Arrival sequence of messages (ties of one timestamp keep arrival order). Starts at the
    /// wall clock in microseconds, so it keeps increasing across restarts.
    seq: AtomicU64,
}

impl Gateway {
    /// The devices layer over what the store held at start.
    pub fn new(
        broker: Arc<Broker>,
        directory: Arc<Directory>,
        store: Store,
        snapshot: &Snapshot,
        options: GwOptions,
    ) -> Arc<Gateway> {
        let mut state = State::default();
        for (id, json) in &snapshot.devices {
            match serde_json::from_slice::<Device>(json) {
                Ok(d) => {
                    state.devices.insert(*id, d);
                }
                Err(err) => tracing::error!(id, %err, "a stored device does not decode; skipped"),
            }
        }
        for (id, json) in &snapshot.groups {
            match serde_json::from_slice::<Group>(json) {
                Ok(g) => {
                    state.groups.insert(*id, g);
                }
                Err(err) => tracing::error!(id, %err, "a stored group does not decode; skipped"),
            }
        }
        for (id, json) in &snapshot.telemetry {
            if let Ok(doc) = serde_json::from_slice::<Value>(json) {
                state.telemetry.insert(*id, Telemetry::from_json(&doc));
            }
        }
        state.next_device = state.devices.keys().next_back().map_or(1, |k| k + 1);
        state.next_group = state.groups.keys().next_back().map_or(1, |k| k + 1);
        let seq = broker.clock.now().max(1);
        Arc::new(Gateway {
            broker,
            directory,
            store,
            options,
            state: Mutex::new(state),
            seq: AtomicU64::new(seq),
        })
    }

    fn now(&self) -> f64 {
        self.broker.clock.now() as f64 / 1e6
    }

    fn connected(&self, d: &Device) -> bool {
        let now = self.now() as u64;
        d.last_active
            .is_some_and(|t| now.saturating_sub(t) < self.options.inactivity_timeout)
    }

    fn messages_size(&self, id: u64) -> u64 {
        self.store.message_stats(id).map(|s| s.bytes).unwrap_or(0)
    }

    fn item_of(&self, d: &Device) -> Value {
        d.item(self.connected(d), self.messages_size(d.id))
    }

    /// Publishes every device's state and telemetry topics (at start: retained messages may
    /// not have survived, and devices may have changed while tern was down).
    pub fn publish_all(&self) {
        let st = self.state.lock();
        for d in st.devices.values() {
            publish::state(&self.broker, d.cid, d.id, None, &self.item_of(d));
            if let Some(t) = st.telemetry.get(&d.id) {
                for (k, p) in t.iter() {
                    publish::telemetry(&self.broker, d.cid, d.id, k, Some((&p.value, p.ts)));
                }
            }
        }
    }

    /// The root of `cid`'s account tree (ident uniqueness is per protocol and tree).
    fn root(&self, cid: Cid) -> Cid {
        self.directory.ancestors(cid).last().copied().unwrap_or(cid)
    }

    /// Another device with `d`'s ident and protocol in `d`'s account tree.
    fn ident_owner(&self, st: &State, d: &Device) -> Option<u64> {
        let root = self.root(d.cid);
        st.devices
            .values()
            .find(|o| {
                o.id != d.id
                    && o.ident() == d.ident()
                    && o.protocol_id() == d.protocol_id()
                    && self.root(o.cid) == root
            })
            .map(|o| o.id)
    }

    fn put_device(&self, d: &Device) {
        match serde_json::to_vec(d) {
            Ok(json) => {
                self.store.submit(Op::PutDevice {
                    id: d.id,
                    json: Bytes::from(json),
                });
            }
            Err(err) => tracing::error!(id = d.id, %err, "could not serialize a device"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Devices

    /// Creates a device (checked by [`DeviceInput::into_device`], its account in the caller's
    /// scope); fails if its ident is taken.
    pub fn create_device(&self, mut d: Device) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        if let Some(other) = self.ident_owner(&st, &d) {
            return Err(GwError::IdentTaken {
                ident: d.ident().to_string(),
                other,
            });
        }
        d.id = st.next_device;
        st.next_device += 1;
        self.put_device(&d);
        let item = self.item_of(&d);
        publish::state(&self.broker, d.cid, d.id, None, &item);
        publish::log(
            &self.broker,
            d.cid,
            d.id,
            device_event::CREATED,
            Some(&item),
            None,
        );
        st.devices.insert(d.id, d);
        Ok(item)
    }

    /// Every device of the accounts in `scope`, as selectors see them: the item with
    /// `protocol_name`, `device_type_name`, `telemetry.<param>` (the value) and `groups.id`.
    pub fn selector_views(&self, scope: &[Cid]) -> Vec<Value> {
        let scope: HashSet<Cid> = scope.iter().copied().collect();
        let st = self.state.lock();
        st.devices
            .values()
            .filter(|d| scope.contains(&d.cid))
            .map(|d| {
                let mut v = self.item_of(d);
                let t = d.device_type();
                v["protocol_name"] = json!(t.map(|t| t.protocol_name));
                v["device_type_name"] = json!(t.map(|t| t.name));
                v["telemetry"] = st
                    .telemetry
                    .get(&d.id)
                    .map_or_else(|| json!({}), Telemetry::values);
                v["groups"] = Value::Array(d.groups.iter().map(|g| json!({"id": g})).collect());
                v
            })
            .collect()
    }

    /// The item of device `id`; with `telemetry`, its whole telemetry under `telemetry`.
    pub fn device_item(&self, id: u64, telemetry: bool) -> Option<Value> {
        let st = self.state.lock();
        let d = st.devices.get(&id)?;
        let mut v = self.item_of(d);
        if telemetry {
            v["telemetry"] = st
                .telemetry
                .get(&id)
                .map_or_else(|| json!({}), |t| t.to_json(None));
        }
        Some(v)
    }

    /// The device record `id`.
    pub fn device(&self, id: u64) -> Option<Device> {
        self.state.lock().devices.get(&id).cloned()
    }

    /// Changes device `id` (PUT, or PATCH with `merge`).
    pub fn update_device(
        &self,
        id: u64,
        changes: &DeviceChanges,
        merge: bool,
    ) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let old = st
            .devices
            .get(&id)
            .ok_or(GwError::NotFound { what: "device", id })?;
        let new = changes.apply(old, merge)?;
        if let Some(other) = self.ident_owner(&st, &new) {
            return Err(GwError::IdentTaken {
                ident: new.ident().to_string(),
                other,
            });
        }
        Ok(self.replace(&mut st, new))
    }

    /// Stores and publishes a changed device; returns its item.
    fn replace(&self, st: &mut State, new: Device) -> Value {
        let id = new.id;
        let old_item = st.devices.get(&id).map(|d| self.item_of(d));
        let item = self.item_of(&new);
        if old_item.as_ref() != Some(&item) || st.devices.get(&id) != Some(&new) {
            self.put_device(&new);
            publish::state(&self.broker, new.cid, id, old_item.as_ref(), &item);
            publish::log(
                &self.broker,
                new.cid,
                id,
                device_event::UPDATED,
                Some(&item),
                old_item.as_ref(),
            );
        }
        st.devices.insert(id, new);
        item
    }

    /// Moves a disabled device to account `cid` (already checked to be in scope).
    pub fn move_device(&self, id: u64, cid: Cid) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let old = st
            .devices
            .get(&id)
            .ok_or(GwError::NotFound { what: "device", id })?
            .clone();
        if old.enabled {
            return Err(GwError::Enabled(id));
        }
        if old.cid == cid {
            return Ok(self.item_of(&old));
        }
        let mut new = old.clone();
        new.cid = cid;
        if let Some(other) = self.ident_owner(&st, &new) {
            return Err(GwError::IdentTaken {
                ident: new.ident().to_string(),
                other,
            });
        }
        // The old namespace loses the device's topics; the new one gets them all.
        let old_item = self.item_of(&old);
        let params: Vec<String> = st
            .telemetry
            .get(&id)
            .map(|t| t.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        publish::deleted(&self.broker, old.cid, id, &old_item, &params);
        publish::log(
            &self.broker,
            old.cid,
            id,
            device_event::DELETED,
            None,
            Some(&old_item),
        );
        self.put_device(&new);
        let item = self.item_of(&new);
        publish::state(&self.broker, cid, id, None, &item);
        publish::log(
            &self.broker,
            cid,
            id,
            device_event::CREATED,
            Some(&item),
            None,
        );
        if let Some(t) = st.telemetry.get(&id) {
            for (k, p) in t.iter() {
                publish::telemetry(&self.broker, cid, id, k, Some((&p.value, p.ts)));
            }
        }
        st.devices.insert(id, new);
        Ok(item)
    }

    /// Deletes device `id` with its messages and telemetry; returns its last item.
    pub fn delete_device(&self, id: u64) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let d = st
            .devices
            .remove(&id)
            .ok_or(GwError::NotFound { what: "device", id })?;
        let item = self.item_of(&d);
        self.store.submit(Op::DelDevice { id });
        let params: Vec<String> = st
            .telemetry
            .remove(&id)
            .map(|t| t.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        publish::deleted(&self.broker, d.cid, id, &item, &params);
        publish::log(
            &self.broker,
            d.cid,
            id,
            device_event::DELETED,
            None,
            Some(&item),
        );
        Ok(item)
    }

    /// Deletes the devices of deleted accounts.
    pub fn accounts_deleted(&self, gone: &[Cid]) {
        let ids: Vec<u64> = {
            let st = self.state.lock();
            st.devices
                .values()
                .filter(|d| gone.contains(&d.cid))
                .map(|d| d.id)
                .collect()
        };
        for id in ids {
            let _ = self.delete_device(id);
        }
        let mut st = self.state.lock();
        let groups: Vec<u64> = st
            .groups
            .values()
            .filter(|g| gone.contains(&g.cid))
            .map(|g| g.id)
            .collect();
        for id in groups {
            st.groups.remove(&id);
            self.store.submit(Op::DelGroup { id });
        }
    }

    // -----------------------------------------------------------------------------------------
    // Messages

    /// Registers messages into device `id` (POST /gw/devices/{sel}/messages): every message is
    /// checked first (nothing is kept when one is bad), then stored (unless `messages_ttl` is
    /// 0), published, and applied to telemetry and `last_active`.
    pub fn post_messages(&self, id: u64, messages: &[Value]) -> Result<(), GwError> {
        if messages.len() > self.options.max_messages_per_post {
            return Err(GwError::Invalid(format!(
                "at most {} messages per call",
                self.options.max_messages_per_post
            )));
        }
        let now = self.now();
        let mut st = self.state.lock();
        let d = st
            .devices
            .get(&id)
            .ok_or(GwError::NotFound { what: "device", id })?
            .clone();
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
            let mut obj: Map<String, Value> = obj.clone();
            if let Some(v) = obj.get("ident")
                && !v.is_string()
            {
                return Err(GwError::Invalid(format!(
                    "message {i}: ident must be a string"
                )));
            }
            obj.entry("ident").or_insert_with(|| json!(d.ident()));
            obj.insert("timestamp".into(), telemetry::number(ts));
            obj.insert("rest.timestamp".into(), json!(now));
            obj.insert("device.id".into(), json!(d.id));
            obj.insert("device.name".into(), json!(d.name));
            obj.insert("device.type.id".into(), json!(d.device_type_id));
            prepared.push((ts, obj));
        }
        let mut stored = Vec::with_capacity(prepared.len());
        let mut touched: Vec<String> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let tel = st.telemetry.entry(id).or_default();
        for (ts, obj) in &prepared {
            let json = Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
            let key = tern_store::MessageKey {
                ts: message::micros(*ts),
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
            };
            stored.push((key, json));
            let changes = tel.apply(obj, *ts);
            for k in changes.updated {
                removed.retain(|r| *r != k);
                if !touched.contains(&k) {
                    touched.push(k);
                }
            }
            for k in changes.removed {
                touched.retain(|t| *t != k);
                removed.push(k);
            }
        }
        if d.messages_ttl > 0 && !stored.is_empty() {
            self.store.submit(Op::AppendMessages {
                device: id,
                messages: stored.clone(),
            });
        }
        if !touched.is_empty() || !removed.is_empty() {
            let doc = tel.to_json(None);
            self.store.submit(Op::PutTelemetry {
                device: id,
                json: Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()),
            });
        }
        for (_, json) in stored {
            publish::message(&self.broker, d.cid, id, json);
        }
        for k in &touched {
            if let Some(p) = tel.get(k) {
                publish::telemetry(&self.broker, d.cid, id, k, Some((&p.value, p.ts)));
            }
        }
        for k in &removed {
            publish::telemetry(&self.broker, d.cid, id, k, None);
        }
        let last_active = now as u64;
        if !prepared.is_empty() && d.last_active != Some(last_active) {
            let mut new = d;
            new.last_active = Some(last_active);
            self.put_device(&new);
            let old_item = st.devices.get(&id).map(|o| self.item_of(o));
            let item = self.item_of(&new);
            publish::state(&self.broker, new.cid, id, old_item.as_ref(), &item);
            st.devices.insert(id, new);
        }
        Ok(())
    }

    /// Reads the history of `devices` (in that order): a range query per device, `count`
    /// across them all, at most `max_messages_per_call`. Blocking (store reads): call it off
    /// the async workers.
    pub fn messages(&self, devices: &[u64], q: &MessageQuery) -> Result<History, GwError> {
        let max = self.options.max_messages_per_call;
        let wanted = q
            .count
            .map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
        let limit = wanted.min(max);
        let now = self.now();
        let mut out = History::default();
        for &device in devices {
            if out.messages.len() >= limit {
                break;
            }
            let range = MessageRange {
                device,
                from: q.from,
                to: q.to,
                reverse: q.reverse,
            };
            let mut bad = 0u64;
            self.store
                .device_messages(&range, &mut |_, json| {
                    let Ok(msg) = serde_json::from_slice::<Value>(json) else {
                        bad += 1;
                        return Visit::More;
                    };
                    if !q.passes(&msg, now) {
                        return Visit::More;
                    }
                    if out.messages.len() >= limit {
                        out.truncated = wanted > max;
                        return Visit::Stop;
                    }
                    out.messages.push(q.project(msg));
                    Visit::More
                })
                .map_err(|e| GwError::Store(e.to_string()))?;
            if bad > 0 {
                tracing::warn!(
                    device,
                    bad,
                    "stored device messages that do not decode were skipped"
                );
            }
        }
        Ok(out)
    }

    /// Deletes the messages of `id` in the query's range (`from..=to`); with a filter, only
    /// those that pass it (read first, then deleted by key). Blocking with a filter (store
    /// reads).
    pub fn delete_messages(&self, id: u64, q: &MessageQuery) -> Result<(), GwError> {
        if !self.state.lock().devices.contains_key(&id) {
            return Err(GwError::NotFound { what: "device", id });
        }
        if q.filter.is_empty() {
            self.store.submit(Op::DelMessages {
                device: id,
                from: q.from,
                to: q.to,
            });
            return Ok(());
        }
        let now = self.now();
        let mut keys = Vec::new();
        let range = MessageRange {
            device: id,
            from: q.from,
            to: q.to,
            reverse: false,
        };
        self.store
            .device_messages(&range, &mut |key, json| {
                if serde_json::from_slice::<Value>(json).is_ok_and(|m| q.passes(&m, now)) {
                    keys.push(key);
                }
                Visit::More
            })
            .map_err(|e| GwError::Store(e.to_string()))?;
        for chunk in keys.chunks(10_000) {
            self.store.submit(Op::DelMessageKeys {
                device: id,
                keys: chunk.to_vec(),
            });
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Telemetry

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

    // -----------------------------------------------------------------------------------------
    // Groups

    fn put_group(&self, g: &Group) {
        if let Ok(json) = serde_json::to_vec(g) {
            self.store.submit(Op::PutGroup {
                id: g.id,
                json: Bytes::from(json),
            });
        }
    }

    pub fn create_group(&self, input: GroupInput, cid: Cid) -> Value {
        let mut st = self.state.lock();
        let g = Group {
            id: st.next_group,
            cid,
            name: input.name.unwrap_or_default(),
            metadata: input.metadata.unwrap_or_default(),
        };
        st.next_group += 1;
        self.put_group(&g);
        let item = g.item();
        st.groups.insert(g.id, g);
        item
    }

    /// The groups of the accounts in `scope`.
    pub fn groups(&self, scope: &[Cid]) -> Vec<Value> {
        let st = self.state.lock();
        st.groups
            .values()
            .filter(|g| scope.contains(&g.cid))
            .map(Group::item)
            .collect()
    }

    pub fn update_group(
        &self,
        id: u64,
        changes: &GroupChanges,
        merge: bool,
    ) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let g = st
            .groups
            .get(&id)
            .ok_or(GwError::NotFound { what: "group", id })?;
        let new = changes.apply(g, merge);
        self.put_group(&new);
        let item = new.item();
        st.groups.insert(id, new);
        Ok(item)
    }

    /// Deletes group `id`; its devices leave it.
    pub fn delete_group(&self, id: u64) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let g = st
            .groups
            .remove(&id)
            .ok_or(GwError::NotFound { what: "group", id })?;
        self.store.submit(Op::DelGroup { id });
        let members: Vec<Device> = st
            .devices
            .values()
            .filter(|d| d.groups.contains(&id))
            .cloned()
            .collect();
        for mut d in members {
            d.groups.retain(|x| *x != id);
            self.put_device(&d);
            st.devices.insert(d.id, d);
        }
        Ok(g.item())
    }

    /// Adds (or with `remove`, takes out) devices to group `group`; returns the devices
    /// changed, as `{"id"}` items.
    pub fn assign(&self, group: u64, devices: &[u64], remove: bool) -> Result<Vec<Value>, GwError> {
        let mut st = self.state.lock();
        if !st.groups.contains_key(&group) {
            return Err(GwError::NotFound {
                what: "group",
                id: group,
            });
        }
        let mut done = Vec::new();
        for id in devices {
            let Some(mut d) = st.devices.get(id).cloned() else {
                continue;
            };
            let member = d.groups.contains(&group);
            if remove && member {
                d.groups.retain(|g| *g != group);
            } else if !remove && !member {
                d.groups.push(group);
            } else {
                continue;
            }
            self.put_device(&d);
            done.push(json!({"id": d.id}));
            st.devices.insert(d.id, d);
        }
        Ok(done)
    }

    // -----------------------------------------------------------------------------------------
    // Retention

    /// One retention pass at `now` (unix seconds): for each device, messages older than
    /// `messages_ttl` go, then the oldest beyond `messages_rotate` KB. Checks cost a point
    /// read per device (its oldest message, its counters); ops are submitted only where
    /// something goes. Blocking (store reads).
    pub fn sweep(&self, now: f64) -> Swept {
        let devices: Vec<(u64, u64, u64)> = {
            let st = self.state.lock();
            st.devices
                .values()
                .map(|d| (d.id, d.messages_ttl, d.messages_rotate))
                .collect()
        };
        let mut swept = Swept::default();
        for (id, ttl, rotate) in devices {
            if ttl > 0 {
                let cutoff = message::micros(now - ttl as f64).saturating_sub(1);
                let mut oldest = None;
                let range = MessageRange {
                    device: id,
                    from: i64::MIN,
                    to: cutoff,
                    reverse: false,
                };
                let read = self.store.device_messages(&range, &mut |k, _| {
                    oldest = Some(k.ts);
                    Visit::Stop
                });
                if read.is_ok() && oldest.is_some() {
                    self.store.submit(Op::DelMessages {
                        device: id,
                        from: i64::MIN,
                        to: cutoff,
                    });
                    swept.expired += 1;
                }
            }
            if rotate > 0 {
                let max_bytes = rotate.saturating_mul(1024);
                if self
                    .store
                    .message_stats(id)
                    .is_ok_and(|s| s.bytes > max_bytes)
                {
                    self.store.submit(Op::TrimMessages {
                        device: id,
                        max_bytes,
                    });
                    swept.rotated += 1;
                }
            }
        }
        if swept != Swept::default() {
            tracing::info!(
                expired = swept.expired,
                rotated = swept.rotated,
                "device message retention"
            );
        }
        swept
    }

    /// Runs [`Gateway::sweep`] every `retention_interval` until the broker shuts down.
    pub async fn run_retention(self: Arc<Self>) {
        let shutdown = self.broker.shutdown_token().clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.retention_interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let gw = self.clone();
            let now = self.now();
            if let Err(err) = tokio::task::spawn_blocking(move || gw.sweep(now)).await {
                tracing::error!(%err, "the retention sweep failed");
            }
        }
    }
}
