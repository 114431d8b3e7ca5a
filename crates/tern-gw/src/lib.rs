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
//! - `channel`: the channel record, inputs, item, and how a message's ident is read;
//!   `channels`: channel operations and the pipeline of every channel message
//! - `types`: the device types and protocols tern knows (the one list)
//! - `message`: posted messages (timestamps), history read parameters and filters
//! - `telemetry`: per-parameter `{value, ts}`, the late-message rule, `position`, the LRU cap
//! - `ingest`: messages posted into a device; `history`: reading and deleting them;
//!   `telemetry_ops`: reading and deleting telemetry; `groups`: group operations;
//!   `retention`: the retention sweep and the activity check (`connected`/`disconnected`)
//! - the crate root: the `Gateway`, its state, and the device operations
//! - `publish`: the `flespi/state|log|message/gw/devices/...` and `.../gw/channels/...`
//!   publications
//! - `mqtt_channels`: internal MQTT channels (the broker's publish tap and their task);
//!   `mqtt_external`: MQTT channels on other brokers (`tern-mqttc` clients)
//! - `logs`: entity log records (`Gateway::log`); `account_logs`: the account's REST call
//!   log and MQTT sessions log (a bounded queue and the task that writes it)
//! - `trackers`: Teltonika channels (their listeners, admission, `connected`, logs);
//!   `commands`: Codec 12 commands, their queue and results
//! - `stream`: the stream record, inputs, item; `streams`: stream operations, sources and the
//!   durable queue; `http_stream`: the delivery task of an http stream
//! - `webhook`: the webhook record, its checks and compiled triggers and steps; `webhooks`:
//!   webhook operations, the trigger tap, the durable pending calls and the delivery tasks
//! - `quota`: the `devices`, `channels` and `messages_bytes` quotas and what each account tree
//!   uses; `metrics`: the counters `/metrics` shows
//! - `replica`: cluster mode's seam (`GwReplica`): the store ops the cluster shares, and
//!   `Gateway::apply_remote` for those of other nodes
//! - `error`: `GwError`

pub mod account_logs;
pub mod channel;
mod channels;
pub mod commands;
pub mod device;
pub mod error;
pub mod group;
mod groups;
mod history;
mod http_stream;
mod ingest;
pub mod logs;
pub mod message;
pub mod metrics;
mod mqtt_channels;
mod mqtt_external;
mod mqtt_stream;
pub mod outbound;
pub mod publish;
mod quota;
pub mod replica;
mod retention;
pub mod stream;
pub mod streams;
pub mod telemetry;
mod telemetry_ops;
mod trackers;
pub mod types;
pub mod webhook;
pub mod webhooks;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tern_broker::accounts::Directory;
use tern_broker::topics::device_event;
use tern_broker::{Broker, Cid};
use tern_store::{Op, Snapshot, Store};

pub use channel::{Channel, ChannelChanges, ChannelInput};
pub use channels::Ingested;
pub use commands::CommandInput;
pub use device::{Device, DeviceChanges, DeviceInput};
pub use error::GwError;
pub use group::{Group, GroupChanges, GroupInput};
pub use message::{DeleteData, MessageQuery, MessagesData};
pub use replica::{GwKind, GwReplica};
pub use stream::{Stream, StreamChanges, StreamInput};
pub use telemetry::Telemetry;
pub use trackers::{ACK_BUCKETS, TrackerMetrics, TrackerPorts};
pub use webhook::Webhook;
pub use webhooks::{PlatformCaller, WebhookMetrics};

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
    /// History reads (and filtered deletes) running at once; more wait for a turn
    /// ([`Gateway::reading`]). Each holds up to `max_messages_per_call` messages.
    pub max_concurrent_reads: usize,
    /// Where Teltonika channel listeners bind and which ports they take.
    pub trackers: TrackerPorts,
    /// Seconds command results are kept (`commands-result`).
    pub commands_ttl: u64,
    /// Seconds entity log records are kept (0: not stored, only published).
    pub logs_ttl: u64,
    /// Bytes of log records kept per account, all its logs together (its devices', channels',
    /// streams', REST calls' and MQTT sessions'); past it the oldest go at the next retention
    /// sweep (0: no cap).
    pub logs_max_bytes: u64,
    /// Whether streams, webhooks and external brokers may target private, loopback and other
    /// non-public addresses (`[gw] outbound_private_targets`, [`outbound`]).
    pub outbound: outbound::OutboundPolicy,
}

impl Default for GwOptions {
    fn default() -> Self {
        GwOptions {
            max_messages_per_call: 100_000,
            retention_interval: Duration::from_secs(3600),
            inactivity_timeout: 600,
            max_messages_per_post: 10_000,
            max_concurrent_reads: 8,
            trackers: TrackerPorts::default(),
            commands_ttl: 30 * 86_400,
            logs_ttl: 30 * 86_400,
            logs_max_bytes: 64 * 1024 * 1024,
            outbound: outbound::OutboundPolicy::default(),
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
    /// Entities whose log records went (older than `logs_ttl`, or past `logs_max_bytes`).
    pub logs: u64,
    /// Streams whose queued messages older than `queue_ttl` went.
    pub streams: u64,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<u64, Device>,
    /// Devices by (protocol, ident): the ident lookups of every channel message and handshake
    /// (several account trees may use one ident). Kept by `insert_device`/`remove_device`.
    idents: HashMap<(u64, String), Vec<u64>>,
    telemetry: HashMap<u64, Telemetry>,
    groups: BTreeMap<u64, Group>,
    channels: BTreeMap<u64, Channel>,
    streams: BTreeMap<u64, Stream>,
    /// Each stream's compiled `validate_message`.
    validators: HashMap<u64, Option<tern_expr::Expr>>,
    /// Each stream's queued bytes as counted here (added on append, set from the store after
    /// each delivery), for `queue_max_bytes` without a store read on the ingest path.
    queue_bytes: HashMap<u64, u64>,
    /// Devices whose `connected` transition was announced and not yet its end (the activity
    /// check publishes `disconnected` when they fall silent).
    online: HashSet<u64>,
    next_device: u64,
    next_group: u64,
    next_channel: u64,
    next_stream: u64,
    next_webhook: u64,
    /// What each account tree uses, for the quotas.
    usage: quota::Usage,
    /// Devices whose telemetry changed since it was last written (`telemetry_ops.rs`: written
    /// at most once a second, replayed from the stored messages after a crash).
    telemetry_dirty: HashSet<u64>,
    /// Every device message with an arrival sequence below this is in the stored telemetry
    /// (kept in the devices layer's record beside the id counters).
    telemetry_seq: Option<u64>,
    /// A flush is writing its documents chunk by chunk: nothing else may move
    /// `telemetry_seq` past the devices it took and has not written yet.
    telemetry_flushing: bool,
    /// Cluster mode: the position in the cluster's log of the last change applied here
    /// (`replica.rs`), and the one written with the telemetry (every change up to it is in
    /// this node's store and its telemetry documents).
    cluster_applied: u64,
    cluster_flushed: u64,
}

impl State {
    /// Adds or replaces a device, keeping the ident index.
    fn insert_device(&mut self, d: Device) {
        let key = (d.protocol_id(), d.ident().to_owned());
        if let Some(old) = self.devices.get(&d.id) {
            let old_key = (old.protocol_id(), old.ident().to_owned());
            if old_key == key {
                self.devices.insert(d.id, d);
                return;
            }
            self.unindex(d.id, &old_key);
        }
        self.idents.entry(key).or_default().push(d.id);
        self.devices.insert(d.id, d);
    }

    /// Removes a device, keeping the ident index.
    fn remove_device(&mut self, id: u64) -> Option<Device> {
        let d = self.devices.remove(&id)?;
        self.unindex(id, &(d.protocol_id(), d.ident().to_owned()));
        Some(d)
    }

    fn unindex(&mut self, id: u64, key: &(u64, String)) {
        if let Some(ids) = self.idents.get_mut(key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.idents.remove(key);
            }
        }
    }

    /// The devices of protocol `protocol` with `ident`, any account.
    fn with_ident<'a>(&'a self, protocol: u64, ident: &str) -> impl Iterator<Item = &'a Device> {
        self.idents
            .get(&(protocol, ident.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.devices.get(id))
    }
}

/// The devices layer. Cheap to share (`Arc<Gateway>`).
#[derive(Debug)]
pub struct Gateway {
    /// This gateway (for the tasks it starts).
    me: std::sync::Weak<Gateway>,
    broker: Arc<Broker>,
    directory: Arc<Directory>,
    store: Store,
    pub options: GwOptions,
    /// Counters for `/metrics`.
    pub metrics: metrics::GwMetrics,
    state: Mutex<State>,
    /// Turns for history reads (`max_concurrent_reads`).
    reads: tokio::sync::Semaphore,
    /// Arrival sequence of messages (ties of one timestamp keep arrival order). Starts at the
    /// wall clock in microseconds, so it keeps increasing across restarts.
    seq: AtomicU64,
    /// The internal MQTT channels' subscriptions, shared with the broker's publish tap.
    taps: Arc<mqtt_channels::Taps>,
    /// The external MQTT channels' clients, by channel.
    external: Mutex<HashMap<u64, mqtt_external::External>>,
    /// External MQTT channels whose client is connected.
    external_connected: Mutex<HashSet<u64>>,
    /// Wakes the channel task to start or stop external clients after a channel change.
    external_changed: tokio::sync::Notify,
    /// Teltonika channels' listeners and connections.
    trackers: trackers::Trackers,
    /// Queued Codec 12 commands.
    queues: commands::Queues,
    /// The streams' delivery tasks, by stream (`streams.rs`).
    live: Mutex<HashMap<u64, streams::Live>>,
    /// Wakes the streams task to start or stop delivery tasks after a stream change.
    streams_changed: tokio::sync::Notify,
    /// The streams' counters.
    pub stream_metrics: streams::StreamMetrics,
    /// The account logs' queue (`account_logs.rs`: REST calls and MQTT session events).
    account_logs: account_logs::AccountLogs,
    /// The webhooks (`webhooks.rs`).
    webhooks: webhooks::Webhooks,
    /// Cluster mode's replica (`replica.rs`), installed once.
    replica: std::sync::OnceLock<Arc<dyn replica::GwReplica>>,
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
                    state.insert_device(d);
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
        for (id, json) in &snapshot.channels {
            match serde_json::from_slice::<Channel>(json) {
                Ok(c) => {
                    state.channels.insert(*id, c);
                }
                Err(err) => tracing::error!(id, %err, "a stored channel does not decode; skipped"),
            }
        }
        for (id, json) in &snapshot.streams {
            match serde_json::from_slice::<Stream>(json) {
                Ok(s) => {
                    state.validators.insert(*id, s.validator());
                    state.streams.insert(*id, s);
                }
                Err(err) => tracing::error!(id, %err, "a stored stream does not decode; skipped"),
            }
        }
        for (key, stats) in &snapshot.message_stats {
            if let Some(id) = tern_store::stream_of(*key) {
                state.queue_bytes.insert(id, stats.bytes);
            }
        }
        for (id, json) in &snapshot.telemetry {
            if let Ok(doc) = serde_json::from_slice::<Value>(json) {
                state.telemetry.insert(*id, Telemetry::from_json(&doc));
            }
        }
        // Ids are never reused: the counters are stored, and at least past every id held.
        let meta: Value = snapshot
            .gw_meta
            .as_ref()
            .and_then(|j| serde_json::from_slice(j).ok())
            .unwrap_or_default();
        let stored = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(1);
        state.next_device =
            stored("next_device").max(state.devices.keys().next_back().map_or(1, |k| k + 1));
        state.next_group =
            stored("next_group").max(state.groups.keys().next_back().map_or(1, |k| k + 1));
        state.next_channel =
            stored("next_channel").max(state.channels.keys().next_back().map_or(1, |k| k + 1));
        state.next_stream =
            stored("next_stream").max(state.streams.keys().next_back().map_or(1, |k| k + 1));
        state.next_webhook = stored("next_webhook");
        state.telemetry_seq = meta.get("telemetry_seq").and_then(Value::as_u64);
        state.cluster_flushed = meta.get("cluster_seq").and_then(Value::as_u64).unwrap_or(0);
        state.cluster_applied = state.cluster_flushed;
        replay_telemetry(&store, &mut state);
        let webhooks = webhooks::Webhooks::load(&broker, &store, snapshot);
        let now = broker.clock.now() / 1_000_000;
        state.online = state
            .devices
            .values()
            .filter(|d| {
                !d.device_type()
                    .and_then(|t| types::protocol(t.protocol_id))
                    .is_some_and(|p| p.sessions)
                    && d.last_active
                        .is_some_and(|t| now.saturating_sub(t) < options.inactivity_timeout)
            })
            .map(|d| d.id)
            .collect();
        let seq = broker.clock.now().max(1);
        let gw = Arc::new_cyclic(|me| Gateway {
            me: me.clone(),
            broker,
            directory,
            store,
            reads: tokio::sync::Semaphore::new(options.max_concurrent_reads.max(1)),
            options,
            metrics: metrics::GwMetrics::default(),
            state: Mutex::new(state),
            seq: AtomicU64::new(seq),
            taps: Arc::default(),
            external: Mutex::new(HashMap::new()),
            external_connected: Mutex::new(HashSet::new()),
            external_changed: tokio::sync::Notify::new(),
            trackers: trackers::Trackers::default(),
            queues: commands::Queues::default(),
            live: Mutex::new(HashMap::new()),
            streams_changed: tokio::sync::Notify::new(),
            stream_metrics: streams::StreamMetrics::default(),
            account_logs: account_logs::AccountLogs::default(),
            webhooks,
            replica: std::sync::OnceLock::new(),
        });
        {
            // The replay of a crash starts here until the first flush moves it: written before
            // any message can arrive (a store made before telemetry was deferred has none).
            let mut st = gw.state.lock();
            if st.telemetry_seq.is_none() {
                st.telemetry_seq = Some(seq);
                gw.put_counters(&st);
            }
        }
        gw.load_webhooks();
        gw.load_queues();
        gw.refresh_taps(&gw.state.lock().channels);
        gw.load_usage(&mut gw.state.lock(), &snapshot.message_stats);
        gw
    }

    /// Waits for a turn to read history (at most `max_concurrent_reads` at once, so memory
    /// stays bounded however many clients ask); hold the permit while reading.
    pub async fn reading(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.reads.acquire().await.ok()
    }

    fn now(&self) -> f64 {
        self.broker.clock.now() as f64 / 1e6
    }

    /// A device of a protocol with sessions is connected while its connection is open; any
    /// other while its last message came within `inactivity_timeout`.
    fn connected(&self, d: &Device) -> bool {
        if has_sessions(d) {
            let root = self.root(d.cid);
            return self.trackers.linked(root, d.ident())
                || self.linked_elsewhere(root, d.ident()).is_some();
        }
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
        self.publish_channels();
        self.publish_streams();
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
        st.with_ident(d.protocol_id(), d.ident())
            .find(|o| o.id != d.id && self.root(o.cid) == root)
            .map(|o| o.id)
    }

    /// The device of protocol `protocol` with `ident` in the account tree of `root`.
    fn device_by_ident<'a>(
        &self,
        st: &'a State,
        protocol: u64,
        ident: &str,
        root: Cid,
    ) -> Option<&'a Device> {
        st.with_ident(protocol, ident)
            .find(|d| self.root(d.cid) == root)
    }

    /// Stores the id counters (after an id was taken).
    fn put_counters(&self, st: &State) {
        let json = json!({
            "next_device": st.next_device,
            "next_group": st.next_group,
            "next_channel": st.next_channel,
            "next_stream": st.next_stream,
            "next_webhook": st.next_webhook,
            "telemetry_seq": st.telemetry_seq,
            "cluster_seq": st.cluster_flushed,
        });
        self.store.submit(Op::PutGwMeta {
            json: Bytes::from(json.to_string()),
        });
    }

    /// Stores device `d` and hands it to the cluster (a change of its record).
    fn put_device(&self, d: &Device) {
        self.store_device(d, true);
    }

    /// Stores device `d`; `share`: and hands it to the cluster (not for `last_active`, which
    /// every node keeps from the messages it applies).
    fn store_device(&self, d: &Device, share: bool) {
        match serde_json::to_vec(d) {
            Ok(json) => {
                let op = Op::PutDevice {
                    id: d.id,
                    json: Bytes::from(json),
                };
                self.submit(op, share);
            }
            Err(err) => tracing::error!(id = d.id, %err, "could not serialize a device"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Devices

    /// Creates a device (checked by [`DeviceInput::into_device`], its account in the caller's
    /// scope); fails if its ident is taken or the `devices` quota is used up.
    pub fn create_device(&self, mut d: Device) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        if let Some(other) = self.ident_owner(&st, &d) {
            return Err(GwError::IdentTaken {
                ident: d.ident().to_string(),
                other,
            });
        }
        self.check_count(&st, d.cid, quota::Counted::Devices)?;
        d.id = self.take_id(&mut st, GwKind::Device)?;
        self.count_in(&mut st, quota::Counted::Devices, d.id, d.cid);
        self.put_device(&d);
        let item = self.item_of(&d);
        publish::state(&self.broker, d.cid, d.id, None, &item);
        self.log_device(d.cid, d.id, device_event::CREATED, Some(&item), None);
        st.insert_device(d);
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
        if has_sessions(old) && old.enabled && (!new.enabled || new.ident() != old.ident()) {
            // Its tracker may not stay connected as a disabled or other device.
            let (cid, ident) = (old.cid, old.ident().to_owned());
            self.kick_tracker(&st, cid, &ident);
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
            self.log_device(
                new.cid,
                id,
                device_event::UPDATED,
                Some(&item),
                old_item.as_ref(),
            );
        }
        st.insert_device(new);
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
        self.move_usage(&mut st, id, cid)?;
        // The old namespace loses the device's topics; the new one gets them all.
        let old_item = self.item_of(&old);
        let params: Vec<String> = st
            .telemetry
            .get(&id)
            .map(|t| t.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        publish::deleted(&self.broker, old.cid, id, &old_item, &params);
        self.log_device(old.cid, id, device_event::DELETED, None, Some(&old_item));
        self.put_device(&new);
        let item = self.item_of(&new);
        publish::state(&self.broker, cid, id, None, &item);
        self.log_device(cid, id, device_event::CREATED, Some(&item), None);
        if let Some(t) = st.telemetry.get(&id) {
            for (k, p) in t.iter() {
                publish::telemetry(&self.broker, cid, id, k, Some((&p.value, p.ts)));
            }
        }
        st.insert_device(new);
        Ok(item)
    }

    /// Deletes device `id` with its messages and telemetry; returns its last item.
    pub fn delete_device(&self, id: u64) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let (cid, item) = self
            .drop_device(&mut st, id, true)
            .ok_or(GwError::NotFound { what: "device", id })?;
        self.log_device(cid, id, device_event::DELETED, None, Some(&item));
        Ok(item)
    }

    /// Takes device `id` out (its tracker, commands, quotas, telemetry, store record; `shared`:
    /// a delete made here, handed to the cluster) and publishes its deletion; its account and
    /// last item, or `None` when there is no such device.
    fn drop_device(&self, st: &mut State, id: u64, shared: bool) -> Option<(Cid, Value)> {
        let d = st.remove_device(id)?;
        st.online.remove(&id);
        if has_sessions(&d) {
            self.kick_tracker(st, d.cid, d.ident());
            self.drop_commands(id);
        }
        self.count_out(st, quota::Counted::Devices, id);
        self.forget_key(st, id);
        let item = self.item_of(&d);
        self.submit(Op::DelDevice { id }, shared);
        let params: Vec<String> = st
            .telemetry
            .remove(&id)
            .map(|t| t.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        st.telemetry_dirty.remove(&id);
        publish::deleted(&self.broker, d.cid, id, &item, &params);
        Some((d.cid, item))
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
        self.channels_of_accounts_deleted(gone);
        self.streams_of_accounts_deleted(gone);
        self.webhooks_of_accounts_deleted(gone);
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
}

/// Whether `d`'s protocol holds connections (its `connected` comes from them).
fn has_sessions(d: &Device) -> bool {
    types::protocol(d.protocol_id()).is_some_and(|p| p.sessions)
}

/// Applies to telemetry the stored device messages that came after the telemetry was last
/// written (a crash, or a kill, since the last flush: `telemetry_ops.rs`), so that telemetry
/// after a restart reflects every stored message. They are applied in arrival order, as they
/// were; a message applies only where it is at least as new as the parameter, so applying one
/// twice changes nothing. The devices they touch are written at the next flush.
fn replay_telemetry(store: &Store, state: &mut State) {
    let Some(since) = state.telemetry_seq else {
        return;
    };
    let started = std::time::Instant::now();
    let mut replayed = 0u64;
    let result = store.messages_since(since, &mut |owner, key, json| {
        if tern_store::KeyOwner::of(owner) != tern_store::KeyOwner::Device(owner) {
            return tern_store::Visit::More;
        }
        if !state.devices.contains_key(&owner) {
            return tern_store::Visit::More;
        }
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(json) else {
            return tern_store::Visit::More;
        };
        let ts = obj
            .get("timestamp")
            .and_then(|v| message::timestamp_of(v).ok())
            .unwrap_or(key.ts as f64 / 1e6);
        let changes = state.telemetry.entry(owner).or_default().apply(&obj, ts);
        if !changes.is_empty() {
            state.telemetry_dirty.insert(owner);
        }
        replayed += 1;
        tern_store::Visit::More
    });
    match result {
        Ok(()) if replayed > 0 => tracing::info!(
            messages = replayed,
            devices = state.telemetry_dirty.len(),
            took = ?started.elapsed(),
            "telemetry replayed from the messages stored after it was last written"
        ),
        Ok(()) => {}
        Err(err) => {
            tracing::error!(%err, "telemetry replay failed; telemetry may miss the last second")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: u64, ident: &str, device_type_id: u64) -> Device {
        serde_json::from_value(json!({
            "id": id, "cid": 1, "name": "", "enabled": true,
            "configuration": {"ident": ident}, "device_type_id": device_type_id,
            "messages_ttl": 0, "messages_rotate": 0, "metadata": {}, "groups": []
        }))
        .expect("device")
    }

    #[test]
    fn the_ident_index_follows_inserts_changes_and_removals() {
        let mut st = State::default();
        st.insert_device(device(1, "a", 1));
        st.insert_device(device(2, "a", 2));
        st.insert_device(device(3, "a", 1));
        let ids = |st: &State, p: u64, i: &str| -> Vec<u64> {
            let mut v: Vec<u64> = st.with_ident(p, i).map(|d| d.id).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ids(&st, 1, "a"), [1, 3]);
        assert_eq!(ids(&st, 2, "a"), [2]);
        // A changed ident moves in the index; an unchanged one stays once.
        st.insert_device(device(3, "b", 1));
        st.insert_device(device(1, "a", 1));
        assert_eq!(ids(&st, 1, "a"), [1]);
        assert_eq!(ids(&st, 1, "b"), [3]);
        assert!(st.remove_device(1).is_some());
        assert!(ids(&st, 1, "a").is_empty());
        assert!(!st.idents.contains_key(&(1, "a".to_owned())));
        assert!(st.remove_device(1).is_none());
    }
}
