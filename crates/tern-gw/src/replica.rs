//! Cluster mode's seam of the devices layer (issue 17, README "Cluster mode"): devices,
//! groups, channels, streams and webhooks changed on one node in force on every node, and
//! device messages, channel buffers and logs stored on one node readable on every node.
//!
//! `tern-cluster` installs a [`GwReplica`] once ([`Gateway::set_replica`]); without one
//! (single-node mode) nothing here runs. The seam is the store's: every change this node makes
//! that the cluster shares is handed to the replica as the [`Op`] it submits to its own store
//! ([`shared`] says which), under the gateway's lock and in the order of the store. What other
//! nodes changed comes back through [`Gateway::apply_remote`], which submits the op to this
//! node's store and brings the layer's memory (records, the ident index, telemetry, quotas,
//! listeners, taps and delivery tasks) in line, but hands nothing back to the replica and
//! publishes nothing: the node that made a change published it, and the cluster routes its
//! publications everywhere.
//!
//! What each node keeps for itself: stream queues and webhook pending calls (a message is
//! queued, and pushed out, by the node it came in through), Codec 12 command queues (the node
//! holding the tracker's connection), telemetry documents (every node derives them from the
//! device messages it applies) and `last_active` (likewise). External MQTT channels run their
//! client on one node only ([`GwReplica::runs_here`]).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tern_broker::Cid;
use tern_store::{KeyOwner, Op};

use crate::{Channel, Device, Gateway, Group, GwError, State, Stream, Telemetry, Webhook, quota};

/// What a new id is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GwKind {
    Device,
    Group,
    Channel,
    Stream,
    Webhook,
}

impl GwKind {
    pub const ALL: [GwKind; 5] = [
        GwKind::Device,
        GwKind::Group,
        GwKind::Channel,
        GwKind::Stream,
        GwKind::Webhook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GwKind::Device => "device",
            GwKind::Group => "group",
            GwKind::Channel => "channel",
            GwKind::Stream => "stream",
            GwKind::Webhook => "webhook",
        }
    }

    /// The entity an op puts or deletes (`None`: not an entity op).
    pub fn of(op: &Op) -> Option<(GwKind, u64, Option<&Bytes>)> {
        Some(match op {
            Op::PutDevice { id, json } => (GwKind::Device, *id, Some(json)),
            Op::DelDevice { id } => (GwKind::Device, *id, None),
            Op::PutGroup { id, json } => (GwKind::Group, *id, Some(json)),
            Op::DelGroup { id } => (GwKind::Group, *id, None),
            Op::PutChannel { id, json } => (GwKind::Channel, *id, Some(json)),
            Op::DelChannel { id } => (GwKind::Channel, *id, None),
            Op::PutStream { id, json } => (GwKind::Stream, *id, Some(json)),
            Op::DelStream { id } => (GwKind::Stream, *id, None),
            Op::PutWebhook { id, json } => (GwKind::Webhook, *id, Some(json)),
            Op::DelWebhook { id } => (GwKind::Webhook, *id, None),
            _ => return None,
        })
    }

    /// The put (`Some` document) or delete of entity `id`.
    pub fn op(self, id: u64, json: Option<Bytes>) -> Op {
        match (self, json) {
            (GwKind::Device, Some(json)) => Op::PutDevice { id, json },
            (GwKind::Device, None) => Op::DelDevice { id },
            (GwKind::Group, Some(json)) => Op::PutGroup { id, json },
            (GwKind::Group, None) => Op::DelGroup { id },
            (GwKind::Channel, Some(json)) => Op::PutChannel { id, json },
            (GwKind::Channel, None) => Op::DelChannel { id },
            (GwKind::Stream, Some(json)) => Op::PutStream { id, json },
            (GwKind::Stream, None) => Op::DelStream { id },
            (GwKind::Webhook, Some(json)) => Op::PutWebhook { id, json },
            (GwKind::Webhook, None) => Op::DelWebhook { id },
        }
    }
}

/// Where this node's devices-layer changes go, and where its new ids come from (cluster mode).
pub trait GwReplica: Send + Sync + std::fmt::Debug {
    /// A change made on this node, as submitted to its store (called under the gateway's lock,
    /// in store order: it must not block).
    fn changed(&self, op: &Op);
    /// Whether another node's change of entity `id` of `kind` is applied here: not while an
    /// own change of it is still to come in the log (later there, it wins on every node).
    /// Asked under the lock this node's own changes of the entity are made under, so that none
    /// slips in between the answer and the apply.
    fn takes(&self, kind: GwKind, id: u64) -> bool;
    /// An id of `kind` that no node has handed out or will hand out; `None` when none can be
    /// had now (the creation is refused with [`GwError::Unavailable`]).
    fn new_id(&self, kind: GwKind) -> Option<u64>;
    /// Whether this node runs the client of external MQTT channel `id` (one node of the
    /// cluster does; [`Gateway::owners_changed`] says when the answer may have changed).
    fn runs_here(&self, channel: u64) -> bool;
    /// This node's name in the cluster.
    fn node(&self) -> &str;
    /// A Teltonika tracker of account tree `root` with `ident` got its first connection here
    /// (`up`), or its last one here closed.
    fn linked(&self, root: Cid, ident: &str, up: bool);
    /// The live node other than this one where a tracker of `root` with `ident` is connected.
    fn linked_elsewhere(&self, root: Cid, ident: &str) -> Option<String>;
    /// Runs `POST /gw/devices/{device}/commands` with `input` (a `CommandInput` as JSON) on
    /// `node` (where the device's tracker is connected): its result item, or its error.
    fn command_on(&self, node: String, device: u64, input: Value) -> CommandFuture;
}

/// What [`GwReplica::command_on`] answers.
pub type CommandFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, GwError>> + Send>>;

/// Whether the cluster shares `op`: entity puts and deletes; messages appended to a device's
/// history, a channel's buffer or a log, and deletes of a device's or channel's messages;
/// telemetry a client deleted. Stream queues, webhook calls and command queues are each
/// node's own.
pub fn shared(op: &Op) -> bool {
    match op {
        Op::AppendMessages { device, .. }
        | Op::DelMessages { device, .. }
        | Op::DelMessageKeys { device, .. } => shared_key(*device),
        Op::PutTelemetry { .. } | Op::DelTelemetry { .. } => true,
        other => GwKind::of(other).is_some(),
    }
}

/// A device's own history, its command queue and results, a channel's buffer or a log (not a
/// stream's queue or a webhook's calls).
fn shared_key(key: u64) -> bool {
    match KeyOwner::of(key) {
        KeyOwner::Device(id) => {
            id == key || key == tern_store::commands_key(id) || key == tern_store::queue_key(id)
        }
        KeyOwner::Channel(_) | KeyOwner::Log(..) => true,
        KeyOwner::Stream(_) | KeyOwner::Webhook(_) => false,
    }
}

impl Gateway {
    /// Installs the replica (once; later calls are refused: `false`).
    pub fn set_replica(&self, replica: Arc<dyn GwReplica>) -> bool {
        self.replica.set(replica).is_ok()
    }

    /// Submits `op` to the store, and hands it to the replica when the cluster shares it.
    pub(crate) fn write(&self, op: Op) -> tern_store::Ticket {
        self.share(&op);
        self.store.submit(op)
    }

    /// Submits `op` to the store; `shared`: and hands it to the cluster ([`Gateway::write`]).
    pub(crate) fn submit(&self, op: Op, shared: bool) -> tern_store::Ticket {
        if shared {
            self.write(op)
        } else {
            self.store.submit(op)
        }
    }

    /// Hands `op` to the replica when the cluster shares it (its store write is the caller's).
    pub(crate) fn share(&self, op: &Op) {
        if let Some(r) = self.replica.get()
            && shared(op)
        {
            r.changed(op);
        }
    }

    /// The next id of `kind`: from the replica in cluster mode, else from the stored counter.
    pub(crate) fn take_id(&self, st: &mut State, kind: GwKind) -> Result<u64, GwError> {
        if let Some(r) = self.replica.get() {
            let id = r.new_id(kind).ok_or_else(|| {
                GwError::Unavailable(format!(
                    "no {} id can be reserved in the cluster now; try again",
                    kind.name()
                ))
            })?;
            let counter = self.counter(st, kind);
            *counter = (*counter).max(id + 1);
            self.put_counters(st);
            return Ok(id);
        }
        let counter = self.counter(st, kind);
        let id = (*counter).max(1);
        *counter = id + 1;
        self.put_counters(st);
        Ok(id)
    }

    fn counter<'a>(&self, st: &'a mut State, kind: GwKind) -> &'a mut u64 {
        match kind {
            GwKind::Device => &mut st.next_device,
            GwKind::Group => &mut st.next_group,
            GwKind::Channel => &mut st.next_channel,
            GwKind::Stream => &mut st.next_stream,
            GwKind::Webhook => &mut st.next_webhook,
        }
    }

    /// The highest id of each kind this node knows (0: none), for the cluster's id blocks.
    pub fn max_ids(&self) -> Vec<(GwKind, u64)> {
        let webhooks = self
            .webhook_records()
            .iter()
            .map(|w| w.id)
            .max()
            .unwrap_or(0);
        let mut st = self.state.lock();
        GwKind::ALL
            .into_iter()
            .map(|k| {
                let held = match k {
                    GwKind::Device => st.devices.keys().next_back().copied(),
                    GwKind::Group => st.groups.keys().next_back().copied(),
                    GwKind::Channel => st.channels.keys().next_back().copied(),
                    GwKind::Stream => st.streams.keys().next_back().copied(),
                    GwKind::Webhook => Some(webhooks),
                };
                let counter = self.counter(&mut st, k).saturating_sub(1);
                (k, held.unwrap_or(0).max(counter))
            })
            .collect()
    }

    /// Every entity as the put the store keeps (devices, groups, channels, streams, webhooks).
    pub fn all_entities(&self) -> Vec<Op> {
        let mut out = Vec::new();
        {
            let st = self.state.lock();
            let mut put = |kind: GwKind, id: u64, json: serde_json::Result<Vec<u8>>| {
                if let Ok(json) = json {
                    out.push(kind.op(id, Some(Bytes::from(json))));
                }
            };
            for (id, d) in &st.devices {
                put(GwKind::Device, *id, serde_json::to_vec(d));
            }
            for (id, g) in &st.groups {
                put(GwKind::Group, *id, serde_json::to_vec(g));
            }
            for (id, c) in &st.channels {
                put(GwKind::Channel, *id, serde_json::to_vec(c));
            }
            for (id, s) in &st.streams {
                put(GwKind::Stream, *id, serde_json::to_vec(s));
            }
        }
        for w in self.webhook_records() {
            if let Ok(json) = serde_json::to_vec(&w) {
                out.push(GwKind::Webhook.op(w.id, Some(Bytes::from(json))));
            }
        }
        out
    }

    /// The position in the cluster's log of devices-layer changes up to which this node's
    /// store holds every change (0: none), as written with the telemetry.
    pub fn cluster_position(&self) -> u64 {
        self.state.lock().cluster_flushed
    }

    /// The replica's answer to which node runs an external channel may have changed (a node
    /// came or went): external clients start or stop here.
    pub fn owners_changed(&self) {
        self.external_changed.notify_one();
    }

    /// In cluster mode, this node's name (what an MQTT stream's client id ends with).
    pub(crate) fn node_suffix(&self) -> Option<&str> {
        self.replica.get().map(|r| r.node())
    }

    /// In cluster mode, the live node other than this one where a tracker of `root` with
    /// `ident` is connected, with the replica that reaches it.
    pub(crate) fn linked_elsewhere(
        &self,
        root: Cid,
        ident: &str,
    ) -> Option<(String, Arc<dyn GwReplica>)> {
        let r = self.replica.get()?;
        r.linked_elsewhere(root, ident).map(|n| (n, r.clone()))
    }

    /// Tells the cluster that a tracker got its first connection here, or lost its last one.
    pub(crate) fn share_link(&self, root: Cid, ident: &str, up: bool) {
        if let Some(r) = self.replica.get() {
            r.linked(root, ident, up);
        }
    }

    /// A tracker of `root` with `ident` connected to another node or left it: this node's
    /// retained state of its device follows (`connected`).
    pub fn links_changed(&self, root: Cid, ident: &str) {
        let st = self.state.lock();
        if let Some(d) = self.device_by_ident(&st, crate::types::TELTONIKA, ident, root) {
            let item = self.item_of(d);
            crate::publish::quietly(|| {
                crate::publish::state(&self.broker, d.cid, d.id, None, &item)
            });
        }
    }

    /// Whether another node's change of an entity is applied here ([`GwReplica::takes`]);
    /// the caller holds the lock the entity's local changes are made under.
    pub(crate) fn takes_remote(&self, kind: GwKind, id: u64) -> bool {
        self.replica.get().is_none_or(|r| r.takes(kind, id))
    }

    /// Whether this node runs external MQTT channel `id`'s client (always without a cluster).
    pub(crate) fn runs_here(&self, channel: u64) -> bool {
        self.replica.get().is_none_or(|r| r.runs_here(channel))
    }

    /// Applies a change another node made (see the module), at `position` in the cluster's
    /// log (0: from the entity snapshot, not the log). Ops the cluster does not share are
    /// ignored.
    pub fn apply_remote(&self, op: Op, position: u64) {
        if !shared(&op) {
            return;
        }
        crate::publish::quietly(|| self.apply_quietly(op));
        if position > 0 {
            let mut st = self.state.lock();
            st.cluster_applied = st.cluster_applied.max(position);
        }
    }

    /// [`Gateway::apply_remote`] with the publications kept to this node's retained tree.
    fn apply_quietly(&self, op: Op) {
        if let Some((kind, id, json)) = GwKind::of(&op) {
            let json = json.cloned();
            if kind == GwKind::Webhook {
                // Under the webhooks' own lock (`install_webhook`, `remove_webhook`).
                self.remote_webhook(id, json);
            } else {
                let mut st = self.state.lock();
                if !self.takes_remote(kind, id) {
                    return;
                }
                match kind {
                    GwKind::Device => self.remote_device(&mut st, id, json),
                    GwKind::Group => self.remote_group(&mut st, id, json),
                    GwKind::Channel => self.remote_channel(&mut st, id, json),
                    GwKind::Stream => self.remote_stream(&mut st, id, json),
                    GwKind::Webhook => {}
                }
            }
            self.metrics.note_remote();
        } else {
            match op {
                Op::AppendMessages { device, messages } => self.remote_messages(device, messages),
                Op::DelMessages { device, from, to }
                    if device == tern_store::queue_key(tern_store::device_of(device)) =>
                {
                    self.store.submit(op);
                    self.remote_unqueued(tern_store::device_of(device), from, to);
                }
                Op::DelMessages { device, .. } | Op::DelMessageKeys { device, .. } => {
                    let whole = matches!(
                        op,
                        Op::DelMessages {
                            from: i64::MIN,
                            to: i64::MAX,
                            ..
                        }
                    );
                    let mut st = self.state.lock();
                    let ticket = self.store.submit(op);
                    if whole {
                        self.forget_key(&mut st, device);
                    } else {
                        // Counted again from the store by the sweep after this is durable.
                        self.note_delete(&mut st, device, 0, 0, ticket);
                    }
                }
                Op::PutTelemetry { device, json } => {
                    let doc = serde_json::from_slice::<Value>(&json).unwrap_or_default();
                    self.remote_telemetry(device, Telemetry::from_json(&doc), Some(json));
                }
                Op::DelTelemetry { device } => {
                    self.remote_telemetry(device, Telemetry::default(), None);
                }
                _ => {}
            }
            self.metrics.note_remote();
        }
    }

    /// Telemetry a client deleted on another node: what is left of it (`json`: stored as it
    /// is; `None`: nothing is left).
    fn remote_telemetry(&self, device: u64, left: Telemetry, json: Option<Bytes>) {
        let mut st = self.state.lock();
        let Some(cid) = st.devices.get(&device).map(|d| d.cid) else {
            return;
        };
        let gone: Vec<String> = st
            .telemetry
            .get(&device)
            .map(|t| {
                t.iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| left.get(k).is_none())
                    .collect()
            })
            .unwrap_or_default();
        for k in &gone {
            crate::publish::telemetry(&self.broker, cid, device, k, None);
        }
        match json {
            Some(json) => {
                st.telemetry.insert(device, left);
                self.store.submit(Op::PutTelemetry { device, json });
            }
            None => {
                st.telemetry.remove(&device);
                self.store.submit(Op::DelTelemetry { device });
            }
        }
    }

    fn remote_device(&self, st: &mut State, id: u64, json: Option<Bytes>) {
        let Some(json) = json else {
            self.drop_device(st, id, false);
            return;
        };
        let mut new = match serde_json::from_slice::<Device>(&json) {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(id, %err, "cluster: a device from another node does not decode; skipped");
                return;
            }
        };
        new.id = id;
        let old_item = st.devices.get(&id).map(|d| (d.cid, self.item_of(d)));
        match st.devices.get(&id) {
            None => self.count_in(st, quota::Counted::Devices, id, new.cid),
            Some(old) => {
                // `last_active` is each node's own (from the messages it applied).
                new.last_active = new.last_active.max(old.last_active);
                if crate::has_sessions(old)
                    && old.enabled
                    && (!new.enabled || new.ident() != old.ident())
                {
                    let (cid, ident) = (old.cid, old.ident().to_owned());
                    self.kick_tracker(st, cid, &ident);
                }
                if old.cid != new.cid {
                    // Checked where it moved; counted here whatever the quota says now.
                    if self.move_usage(st, id, new.cid).is_err() {
                        self.count_out(st, quota::Counted::Devices, id);
                        self.count_in(st, quota::Counted::Devices, id, new.cid);
                    }
                }
            }
        }
        match serde_json::to_vec(&new) {
            Ok(doc) => {
                self.store.submit(Op::PutDevice {
                    id,
                    json: Bytes::from(doc),
                });
            }
            Err(_) => {
                self.store.submit(Op::PutDevice { id, json });
            }
        }
        let item = self.item_of(&new);
        match old_item {
            Some((cid, old)) if cid != new.cid => {
                // Moved: the old namespace loses the device's topics, the new one gets them.
                let params: Vec<String> = st
                    .telemetry
                    .get(&id)
                    .map(|t| t.iter().map(|(k, _)| k.clone()).collect())
                    .unwrap_or_default();
                crate::publish::deleted(&self.broker, cid, id, &old, &params);
                crate::publish::state(&self.broker, new.cid, id, None, &item);
                if let Some(t) = st.telemetry.get(&id) {
                    for (k, p) in t.iter() {
                        crate::publish::telemetry(
                            &self.broker,
                            new.cid,
                            id,
                            k,
                            Some((&p.value, p.ts)),
                        );
                    }
                }
            }
            old => crate::publish::state(
                &self.broker,
                new.cid,
                id,
                old.as_ref().map(|(_, o)| o),
                &item,
            ),
        }
        st.insert_device(new);
    }

    fn remote_group(&self, st: &mut State, id: u64, json: Option<Bytes>) {
        match json {
            None => {
                st.groups.remove(&id);
                self.store.submit(Op::DelGroup { id });
            }
            Some(json) => match serde_json::from_slice::<Group>(&json) {
                Ok(g) => {
                    st.groups.insert(id, g);
                    self.store.submit(Op::PutGroup { id, json });
                }
                Err(err) => {
                    tracing::warn!(id, %err, "cluster: a group from another node does not decode; skipped")
                }
            },
        }
    }

    fn remote_channel(&self, st: &mut State, id: u64, json: Option<Bytes>) {
        match json {
            None => {
                self.drop_channel(st, id, false);
                return;
            }
            Some(json) => {
                let mut c = match serde_json::from_slice::<Channel>(&json) {
                    Ok(c) => c,
                    Err(err) => {
                        tracing::warn!(id, %err, "cluster: a channel from another node does not decode; skipped");
                        return;
                    }
                };
                c.id = id;
                if !st.channels.contains_key(&id) {
                    self.count_in(st, quota::Counted::Channels, id, c.cid);
                }
                // A tracker channel listens on every node, on the port its document names; a
                // node where that port is taken logs it and serves the channel elsewhere.
                let mut probe = c.clone();
                if let Err(err) = self.sync_tracker(st, &mut probe) {
                    tracing::warn!(channel = id, %err, "cluster: a channel changed on another node has no listener here");
                }
                self.store.submit(Op::PutChannel { id, json });
                let old = st.channels.get(&id).map(|o| self.channel_item_of(o));
                let item = self.channel_item_of(&c);
                crate::publish::channel_state(&self.broker, c.cid, id, old.as_ref(), &item);
                st.channels.insert(id, c);
            }
        }
        self.refresh_taps(&st.channels);
        self.external_changed.notify_one();
    }

    fn remote_stream(&self, st: &mut State, id: u64, json: Option<Bytes>) {
        match json {
            None => {
                self.drop_stream(st, id, false);
                return;
            }
            Some(json) => match serde_json::from_slice::<Stream>(&json) {
                Ok(mut s) => {
                    s.id = id;
                    st.validators.insert(id, s.validator());
                    self.store.submit(Op::PutStream { id, json });
                    let old = st.streams.get(&id).map(|o| self.stream_item_of(o));
                    let item = self.stream_item_of(&s);
                    crate::publish::stream_state(&self.broker, s.cid, id, old.as_ref(), &item);
                    st.streams.insert(id, s);
                }
                Err(err) => {
                    tracing::warn!(id, %err, "cluster: a stream from another node does not decode; skipped");
                    return;
                }
            },
        }
        self.streams_changed.notify_one();
    }

    fn remote_webhook(&self, id: u64, json: Option<Bytes>) {
        match json {
            None => {
                self.remove_webhook(id, true);
            }
            Some(json) => match serde_json::from_slice::<Webhook>(&json) {
                Ok(mut w) => {
                    w.id = id;
                    self.install_webhook(w, json);
                }
                Err(err) => {
                    tracing::warn!(id, %err, "cluster: a webhook from another node does not decode; skipped")
                }
            },
        }
    }

    /// Messages another node stored: kept here too, counted, and (a device's) applied to its
    /// telemetry and `last_active`; neither published nor queued for streams (the node they
    /// came in through did that).
    fn remote_messages(&self, key: u64, messages: Vec<(tern_store::MessageKey, Bytes)>) {
        if messages.is_empty() {
            return;
        }
        let of = tern_store::device_of(key);
        if key == tern_store::queue_key(of) {
            self.remote_queued(of, &messages);
            self.store.submit(Op::AppendMessages {
                device: key,
                messages,
            });
            return;
        }
        let mut st = self.state.lock();
        let bytes: u64 = messages.iter().map(|(_, j)| j.len() as u64).sum();
        let count = messages.len() as u64;
        // Counted (`messages_bytes`) as the node that stored them counted them: a device's
        // history and a channel's buffer; its telemetry from a device's history only.
        let owner_cid = match KeyOwner::of(key) {
            KeyOwner::Device(id) if id == key => st.devices.get(&id).map(|d| d.cid),
            KeyOwner::Channel(id) => st.channels.get(&id).map(|c| c.cid),
            _ => None,
        };
        let device = match KeyOwner::of(key) {
            KeyOwner::Device(id) if id == key && st.devices.contains_key(&id) => Some(id),
            _ => None,
        };
        let parsed: Vec<(f64, serde_json::Map<String, Value>)> = match device {
            Some(_) => messages
                .iter()
                .filter_map(|(k, json)| match serde_json::from_slice::<Value>(json) {
                    Ok(Value::Object(obj)) => {
                        let ts = obj
                            .get("timestamp")
                            .and_then(|v| crate::message::timestamp_of(v).ok())
                            .unwrap_or(k.ts as f64 / 1e6);
                        Some((ts, obj))
                    }
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let ticket = self.store.submit(Op::AppendMessages {
            device: key,
            messages,
        });
        if let Some(cid) = owner_cid {
            self.note_append(&mut st, key, cid, bytes, count, ticket);
        }
        let Some(id) = device else {
            return;
        };
        let cid = owner_cid.unwrap_or_default();
        let tel = st.telemetry.entry(id).or_default();
        let changes = tel.apply_all(parsed.iter().map(|(ts, obj)| (*ts, obj)));
        crate::publish::telemetry_changes(&self.broker, cid, id, tel, &changes);
        if !changes.is_empty() {
            st.telemetry_dirty.insert(id);
        }
        let now = self.now() as u64;
        if let Some(d) = st.devices.get(&id)
            && d.last_active.is_none_or(|t| t < now)
        {
            let old = self.item_of(d);
            let mut d = d.clone();
            d.last_active = Some(now);
            self.store_device(&d, false);
            let item = self.item_of(&d);
            crate::publish::state(&self.broker, d.cid, id, Some(&old), &item);
            st.insert_device(d);
        }
        if st.devices.get(&id).is_some_and(|d| !crate::has_sessions(d)) {
            st.online.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_ops_the_cluster_shares() {
        let put = Op::PutDevice {
            id: 1,
            json: Bytes::from_static(b"{}"),
        };
        assert!(shared(&put));
        assert!(shared(&Op::DelWebhook { id: 3 }));
        let append = |device| Op::AppendMessages {
            device,
            messages: Vec::new(),
        };
        assert!(shared(&append(7)));
        assert!(shared(&append(tern_store::channel_key(7))));
        assert!(shared(&append(tern_store::log_key(1, 7))));
        assert!(!shared(&append(tern_store::stream_key(7))));
        assert!(!shared(&append(tern_store::webhook_key(7))));
        // Command queues and results are every node's: the node a tracker connects to sends.
        assert!(shared(&append(tern_store::queue_key(7))));
        assert!(shared(&append(tern_store::commands_key(7))));
        assert!(!shared(&Op::PutGwMeta { json: Bytes::new() }));
        assert!(!shared(&Op::TrimMessages {
            device: 7,
            max_bytes: 1
        }));
    }

    #[test]
    fn entity_ops_round_trip_through_their_kind() {
        for kind in GwKind::ALL {
            let put = kind.op(9, Some(Bytes::from_static(b"{}")));
            let (k, id, json) = GwKind::of(&put).expect("an entity op");
            assert_eq!(
                (k, id, json.map(|j| j.as_ref())),
                (kind, 9, Some(&b"{}"[..]))
            );
            let del = kind.op(9, None);
            assert_eq!(
                GwKind::of(&del).map(|(k, id, j)| (k, id, j.is_none())),
                Some((kind, 9, true))
            );
        }
    }
}
