//! The devices layer across the cluster (issue 17; README "Cluster mode"): devices, groups,
//! channels, streams and webhooks changed on one node in force on every node; device
//! messages, channel buffers and logs stored on one node readable on every node.
//!
//! The seam is tern-gw's `GwReplica`: the devices layer hands it every change it shares as the
//! `tern_store::Op` it submits to its own store, and applies the other nodes' changes through
//! `Gateway::apply_remote`.
//!
//! - **The log**: stream `TERN_GW` (subject `tern.gw.op`, limits retention: `[cluster]
//!   gw_log_max_age`, 7 days by default, oldest dropped; no byte cap, which JetStream would reserve on every replica's disk up
//!   front) holds every shared change of every node in one order,
//!   each with the header `Tern-Origin` (node and start). Out: [`GwShare::changed`]
//!   `try_send`s the encoded op into a bounded queue (`[cluster] queue`; full: dropped,
//!   counted in `tern_cluster_dropped_total{queue="gw"}` and logged); one task appends the
//!   queue in order, up to [`BATCH`] appends awaiting their acks at a time, retrying with
//!   back-off. In: one ordered consumer applies every other node's change in the stream's
//!   order; this node's own changes are skipped (applied when made).
//! - **Entities**: the KV bucket `tern_gw` keeps the last document of each entity
//!   (`device.<id>`, `group.<id>`, `channel.<id>`, `stream.<id>`, `webhook.<id>`; a delete is
//!   a KV delete), written after the entity's change is in the log. A node loads it at start,
//!   before its REST and listeners open: what it missed while away (or all of it, when it is
//!   new). What only this node has (it ran before cluster mode) is added with a KV create.
//! - **Where a node starts reading the log**: the position written with its telemetry (every
//!   change up to it is in its store), when the stream still holds the next one; otherwise
//!   the stream's end when the entities were loaded (a gap is logged: messages stored by other
//!   nodes meanwhile are missing here). Applying a change twice changes nothing.
//! - **Order**: every node applies the log in its order. While this node's own change of an
//!   entity is on its way to the log, earlier changes of that entity by other nodes are
//!   skipped (the own one comes later and wins), so all nodes end with the same document.
//! - **Ids**: `ids.<kind>` in the bucket hold the highest id any node reserved; blocks of
//!   [`crate::ID_BLOCK`] are reserved by compare-and-set, as for accounts (`cfg.rs`).
//! - **One node per external MQTT channel**: the node whose rendezvous hash with the channel
//!   is highest among the nodes beating in `tern_nodes` runs its client; the devices layer is
//!   told when that set changes.
//! - **Trackers on other nodes**: a node writes `link.<root account>.<ident in hex>` = its
//!   name into the bucket when a Teltonika tracker gets its first connection there, and
//!   deletes it (compare-and-set: only while it still names this node) when the last one
//!   closes; every node watches these keys, so a device's `connected` is true on every node
//!   while its tracker is connected to a live node, and a Codec 12 command sent over REST on
//!   any node goes to the node the tracker is connected to (a request on
//!   `tern.node.<name in hex>.cmd.gw`, answered with the result item or the error). A node
//!   deletes the keys naming it when it starts (its connections died with it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tern_gw::replica::CommandFuture;
use tern_gw::{Gateway, GwError, GwKind, GwReplica};
use tern_store::{MessageKey, Op};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::cfg::{ID_LOW, WRITE_TRIES};
use crate::nats::{Cluster, ClusterError, ClusterMetrics, kv_bucket, retry_until, until_shutdown};
use crate::sessions::Sessions;

/// The KV bucket of the devices layer's entities and id reservations.
pub const GW_BUCKET: &str = "tern_gw";
/// The stream of the devices layer's changes.
pub const GW_STREAM: &str = "TERN_GW";
/// Its one subject.
const GW_SUBJECT: &str = "tern.gw.op";
/// Appends awaiting their acks at a time.
const BATCH: usize = 64;
/// The header naming the node (and its start) that made a change.
const ORIGIN_HEADER: &str = "Tern-Origin";

impl Cluster {
    /// Shares the devices layer with the other nodes (see the module): loads what the cluster
    /// has into `gateway`, adds what only this node has, installs the replica and starts the
    /// log's writer and reader. Call after the gateway is made and before the REST API and the
    /// listeners open.
    pub async fn start_gw(&self, gateway: Arc<Gateway>) -> Result<(), ClusterError> {
        let setup_until = tokio::time::Instant::now() + self.connect_timeout;
        let js = &self.js;
        let replicas = self.config.replicas;
        let bucket = retry_until(setup_until, "the devices bucket", || {
            kv_bucket(
                js,
                GW_BUCKET,
                "tern: devices, groups, channels, streams, webhooks",
                replicas,
            )
        })
        .await?;
        let max_age = self.config.gw_log_max_age;
        let config = jetstream::stream::Config {
            name: GW_STREAM.to_string(),
            description: Some("tern: changes of the devices layer".to_string()),
            subjects: vec![GW_SUBJECT.to_string()],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            max_age,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let mut stream = retry_until(setup_until, "the devices log", || async {
            js.get_or_create_stream(config.clone())
                .await
                .map_err(|e| ClusterError::Nats(format!("create stream {GW_STREAM}: {e}")))
        })
        .await?;
        if stream.cached_info().config.max_age != max_age {
            // `[cluster] gw_log_max_age` changed since the stream was made.
            let mut changed = stream.cached_info().config.clone();
            changed.max_age = max_age;
            match js.update_stream(changed).await {
                Ok(_) => tracing::info!(
                    ?max_age,
                    "cluster: the devices log keeps changes for a new time"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: the devices log's max age not changed")
                }
            }
        }
        // The log's end before the entities are read: whatever changes after is read from it.
        let info = stream
            .info()
            .await
            .map_err(|e| ClusterError::Nats(format!("info of {GW_STREAM}: {e}")))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);

        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let origin = format!("{}-{started}", self.node.replace('\n', " "));
        let (tx, rx) = mpsc::channel(self.config.queue.max(1));
        let (link_tx, link_rx) = mpsc::channel(self.config.queue.max(1));
        let share = Arc::new(GwShare {
            tx,
            link_tx,
            links: parking_lot::Mutex::new(HashMap::new()),
            client: self.js.client(),
            origin,
            node: self.node.clone(),
            pending: parking_lot::Mutex::new(HashMap::new()),
            ids: parking_lot::Mutex::new(HashMap::new()),
            refill: Notify::new(),
            metrics: self.metrics.clone(),
            live: parking_lot::Mutex::new(vec![self.node.clone()]),
        });

        // The entities as the cluster has them.
        let seen = load_entities(&bucket, &gateway, &self.metrics, self.connect_timeout).await?;
        // What only this node has.
        let mut added = 0u64;
        for op in gateway.all_entities() {
            let Some((kind, id, Some(json))) = GwKind::of(&op) else {
                continue;
            };
            let key = entity_key(kind, id);
            if seen.contains(&key) {
                continue;
            }
            match bucket.create(&key, json.clone()).await {
                Ok(_) => added += 1,
                Err(e) if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) => {}
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %key, error = %e, "cluster: this node's own device-layer entity not added to the bucket");
                }
            }
        }
        for (kind, floor) in gateway.max_ids() {
            let block = retry_until(setup_until, "an id block", || {
                crate::cfg::reserve_key(&bucket, ids_key(kind), floor)
            })
            .await?;
            share.add_ids(kind, block);
        }
        // Where to read from.
        let stored = gateway.cluster_position();
        let from = if stored > 0 && stored + 1 >= first {
            stored + 1
        } else {
            if stored > 0 {
                tracing::warn!(
                    stored,
                    first,
                    "cluster: the devices log no longer holds what this node missed; entities reloaded, messages stored by other nodes meanwhile are missing here"
                );
            }
            last + 1
        };
        tracing::info!(
            node = %self.node,
            loaded = seen.len(),
            added,
            from,
            "cluster: devices layer loaded"
        );
        share.live_changed(self.sessions.live_nodes());
        // Trackers connected to other nodes; the links this node left when it last stopped go.
        unlink_stale(&bucket, &self.node).await?;
        let links = bucket
            .watch_with_history("link.>")
            .await
            .map_err(|e| ClusterError::Nats(format!("watch of {GW_BUCKET} links: {e}")))?;
        let commands = self
            .js
            .client()
            .subscribe(gw_command_subject(&self.node))
            .await
            .map_err(|e| ClusterError::Nats(format!("subscribe to devices commands: {e}")))?;
        gateway.set_replica(share.clone());
        tokio::spawn(run_writer(
            self.js.clone(),
            bucket.clone(),
            rx,
            share.clone(),
            self.shutdown.clone(),
        ));
        tokio::spawn(run_reader(
            stream,
            from,
            gateway.clone(),
            share.clone(),
            self.shutdown.clone(),
        ));
        tokio::spawn(run_ids(
            bucket.clone(),
            share.clone(),
            gateway.clone(),
            self.shutdown.clone(),
        ));
        tokio::spawn(run_links(
            links,
            gateway.clone(),
            share.clone(),
            self.shutdown.clone(),
        ));
        tokio::spawn(run_link_writer(
            bucket,
            link_rx,
            share.clone(),
            self.shutdown.clone(),
        ));
        tokio::spawn(run_commands(
            commands,
            gateway.clone(),
            share.clone(),
            self.shutdown.clone(),
        ));
        tokio::spawn(run_owners(
            self.sessions.clone(),
            gateway,
            share,
            self.shutdown.clone(),
        ));
        Ok(())
    }
}

/// Reads the bucket's entities into the gateway; the keys seen.
async fn load_entities(
    bucket: &kv::Store,
    gateway: &Gateway,
    metrics: &ClusterMetrics,
    timeout: Duration,
) -> Result<HashSet<String>, ClusterError> {
    let mut seen = HashSet::new();
    let stored = bucket
        .status()
        .await
        .map(|st| st.values())
        .map_err(|e| ClusterError::Nats(format!("status of {GW_BUCKET}: {e}")))?;
    if stored == 0 {
        return Ok(seen);
    }
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| ClusterError::Nats(format!("watch of {GW_BUCKET}: {e}")))?;
    loop {
        match tokio::time::timeout(timeout, watch.next()).await {
            Ok(Some(Ok(entry))) => {
                let last = entry.delta == 0;
                if let Some((kind, id)) = parse_entity_key(&entry.key) {
                    seen.insert(entry.key.clone());
                    let json = (entry.operation == kv::Operation::Put).then_some(entry.value);
                    gateway.apply_remote(kind.op(id, json), 0);
                    metrics.gw_applied.fetch_add(1, Ordering::Relaxed);
                }
                if last {
                    return Ok(seen);
                }
            }
            Ok(Some(Err(e))) => return Err(ClusterError::Nats(format!("devices watch: {e}"))),
            Ok(None) => return Ok(seen),
            Err(_) => {
                return Err(ClusterError::Nats(format!(
                    "the devices layer's entities did not load within {timeout:?}"
                )));
            }
        }
    }
}

fn entity_key(kind: GwKind, id: u64) -> String {
    format!("{}.{id}", kind.name())
}

fn parse_entity_key(key: &str) -> Option<(GwKind, u64)> {
    let (kind, id) = key.split_once('.')?;
    let kind = GwKind::ALL.into_iter().find(|k| k.name() == kind)?;
    Some((kind, id.parse().ok()?))
}

fn ids_key(kind: GwKind) -> String {
    format!("ids.{}", kind.name())
}

/// One change for the writer: the encoded op, and the entity's KV key and document.
#[derive(Debug)]
struct Write {
    payload: Bytes,
    entity: Option<(String, Option<Bytes>)>,
}

/// This node's side of the devices layer's log (see the module).
#[derive(Debug)]
pub struct GwShare {
    tx: mpsc::Sender<Write>,
    /// Tracker links to write (`link.*`): account tree root, ident, up.
    link_tx: mpsc::Sender<(u64, String, bool)>,
    /// Where each tracker is connected, as the bucket says: (root, ident) to node.
    links: parking_lot::Mutex<HashMap<(u64, String), String>>,
    client: async_nats::Client,
    /// This node and its start: the `Tern-Origin` of what it appends.
    origin: String,
    node: String,
    /// Entities with own changes queued or on their way to the log, and how many.
    pending: parking_lot::Mutex<HashMap<(GwKind, u64), u32>>,
    /// Reserved ids not handed out yet, by kind: blocks (the next and the last id).
    ids: parking_lot::Mutex<HashMap<GwKind, VecDeque<(u64, u64)>>>,
    refill: Notify,
    metrics: Arc<ClusterMetrics>,
    /// The nodes beating now, sorted.
    live: parking_lot::Mutex<Vec<String>>,
}

impl GwReplica for GwShare {
    fn changed(&self, op: &Op) {
        let payload = encode_op(op);
        let entity = GwKind::of(op).map(|(kind, id, json)| (kind, id, json.cloned()));
        let mut pending = self.pending.lock();
        if let Some((kind, id, _)) = &entity {
            *pending.entry((*kind, *id)).or_insert(0) += 1;
        }
        let write = Write {
            payload,
            entity: entity
                .as_ref()
                .map(|(kind, id, json)| (entity_key(*kind, *id), json.clone())),
        };
        if self.tx.try_send(write).is_err() {
            if let Some((kind, id, _)) = entity {
                unpend(&mut pending, (kind, id));
            }
            drop(pending);
            self.metrics.dropped_gw.fetch_add(1, Ordering::Relaxed);
            tracing::error!("cluster: devices queue full, a change not sent to the other nodes");
        }
    }

    fn takes(&self, kind: GwKind, id: u64) -> bool {
        self.pending.lock().get(&(kind, id)).is_none_or(|n| *n == 0)
    }

    fn new_id(&self, kind: GwKind) -> Option<u64> {
        let mut ids = self.ids.lock();
        let blocks = ids.entry(kind).or_default();
        let id = blocks.front_mut().map(|(next, last)| {
            let id = *next;
            *next += 1;
            (id, *next > *last)
        });
        if let Some((_, true)) = id {
            blocks.pop_front();
        }
        let low = left(blocks) <= ID_LOW;
        drop(ids);
        if low {
            self.refill.notify_one();
        }
        id.map(|(id, _)| id)
    }

    fn runs_here(&self, channel: u64) -> bool {
        let live = self.live.lock();
        owner(&live, channel).is_none_or(|n| n == self.node)
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn linked(&self, root: u64, ident: &str, up: bool) {
        if self.link_tx.try_send((root, ident.to_owned(), up)).is_err() {
            self.metrics.dropped_gw.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                root,
                ident,
                up,
                "cluster: devices queue full, a tracker connection not told to the other nodes"
            );
        }
    }

    fn linked_elsewhere(&self, root: u64, ident: &str) -> Option<String> {
        let node = self.links.lock().get(&(root, ident.to_owned())).cloned()?;
        (node != self.node && self.live.lock().contains(&node)).then_some(node)
    }

    fn command_on(&self, node: String, device: u64, input: Value) -> CommandFuture {
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        // The command's own timeout, and time to get there and back.
        let wait = Duration::from_secs(input["timeout"].as_u64().unwrap_or(COMMAND_TIMEOUT) + 5);
        Box::pin(async move {
            let request = json!({"device": device, "input": input}).to_string();
            let subject = gw_command_subject(&node);
            match tokio::time::timeout(wait, client.request(subject, request.into())).await {
                Ok(Ok(msg)) => decode_command_answer(&msg.payload),
                Ok(Err(e)) => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    Err(GwError::Unavailable(format!(
                        "device {device}: its tracker's node {node} did not take the command: {e}"
                    )))
                }
                Err(_) => Err(GwError::Unavailable(format!(
                    "device {device}: its tracker's node {node} did not answer within {wait:?}"
                ))),
            }
        })
    }
}

/// Seconds a forwarded command may take when it names no `timeout` (the longest a channel's
/// `command_timeout` defaults to).
const COMMAND_TIMEOUT: u64 = 60;

/// The subject of devices-layer commands to node `node`.
fn gw_command_subject(node: &str) -> String {
    let mut s = crate::sessions::command_subject(node);
    s.push_str(".gw");
    s
}

fn link_key(root: u64, ident: &str) -> String {
    use std::fmt::Write as _;
    let mut key = format!("link.{root}.");
    for b in ident.as_bytes() {
        let _ = write!(key, "{b:02x}");
    }
    key
}

fn parse_link_key(key: &str) -> Option<(u64, String)> {
    let rest = key.strip_prefix("link.")?;
    let (root, hex) = rest.split_once('.')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some((root.parse().ok()?, String::from_utf8(bytes?).ok()?))
}

/// A forwarded command's answer: `{"ok": item}` or `{"error", "message", ...}`.
fn encode_command_answer(result: &Result<Value, GwError>) -> Bytes {
    let v = match result {
        Ok(item) => json!({"ok": item}),
        Err(GwError::NotConnected { name, id }) => {
            json!({"error": "not_connected", "name": name, "id": id})
        }
        Err(GwError::NotFound { id, .. }) => json!({"error": "not_found", "id": id}),
        Err(GwError::Invalid(m)) => json!({"error": "invalid", "message": m}),
        Err(other) => json!({"error": "other", "message": other.to_string()}),
    };
    Bytes::from(v.to_string())
}

fn decode_command_answer(payload: &[u8]) -> Result<Value, GwError> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| {
        GwError::Unavailable(format!("an undecodable answer from another node: {e}"))
    })?;
    if let Some(item) = v.get("ok") {
        return Ok(item.clone());
    }
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Err(match v["error"].as_str() {
        Some("not_connected") => GwError::NotConnected {
            name: text("name"),
            id: v["id"].as_u64().unwrap_or_default(),
        },
        Some("not_found") => GwError::NotFound {
            what: "device",
            id: v["id"].as_u64().unwrap_or_default(),
        },
        Some("invalid") => GwError::Invalid(text("message")),
        _ => GwError::Unavailable(text("message")),
    })
}

impl GwShare {
    fn add_ids(&self, kind: GwKind, block: (u64, u64)) {
        if block.0 <= block.1 {
            self.ids.lock().entry(kind).or_default().push_back(block);
        }
    }

    fn ids_left(&self, kind: GwKind) -> u64 {
        self.ids.lock().get(&kind).map_or(0, left)
    }

    /// Sets the nodes beating now; whether the set changed.
    fn live_changed(&self, live: Vec<String>) -> bool {
        let mut now = self.live.lock();
        if *now == live {
            return false;
        }
        *now = live;
        true
    }
}

/// The node of `live` that runs external channel `channel`: the highest rendezvous hash.
fn owner(live: &[String], channel: u64) -> Option<&str> {
    live.iter()
        .max_by_key(|n| {
            let h = crate::subject::fnv1a(
                crate::subject::fnv1a(crate::subject::FNV_OFFSET, n.as_bytes()),
                &channel.to_be_bytes(),
            );
            // FNV-1a's high bits depend little on its last bytes; the choice compares whole
            // values.
            crate::share::mix(h)
        })
        .map(String::as_str)
}

fn left(blocks: &VecDeque<(u64, u64)>) -> u64 {
    blocks
        .iter()
        .map(|(next, last)| (last + 1).saturating_sub(*next))
        .sum()
}

fn unpend(pending: &mut HashMap<(GwKind, u64), u32>, key: (GwKind, u64)) {
    if let Some(n) = pending.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            pending.remove(&key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The log's record of an op

const PUT: u8 = 1;
const DEL: u8 = 2;
const APPEND: u8 = 3;
const DEL_RANGE: u8 = 4;
const DEL_KEYS: u8 = 5;
const PUT_TELEMETRY: u8 = 6;
const DEL_TELEMETRY: u8 = 7;

fn kind_byte(kind: GwKind) -> u8 {
    match kind {
        GwKind::Device => 1,
        GwKind::Group => 2,
        GwKind::Channel => 3,
        GwKind::Stream => 4,
        GwKind::Webhook => 5,
    }
}

fn kind_of(b: u8) -> Option<GwKind> {
    GwKind::ALL.into_iter().find(|k| kind_byte(*k) == b)
}

/// An op the cluster shares as the log's record: a tag byte, then its fields big-endian;
/// documents and messages as they are (a message with its length before it).
pub(crate) fn encode_op(op: &Op) -> Bytes {
    let mut b = BytesMut::new();
    if let Some((kind, id, json)) = GwKind::of(op) {
        b.put_u8(if json.is_some() { PUT } else { DEL });
        b.put_u8(kind_byte(kind));
        b.put_u64(id);
        if let Some(json) = json {
            b.put_slice(json);
        }
        return b.freeze();
    }
    match op {
        Op::AppendMessages { device, messages } => {
            b.reserve(13 + messages.iter().map(|(_, j)| 20 + j.len()).sum::<usize>());
            b.put_u8(APPEND);
            b.put_u64(*device);
            b.put_u32(messages.len() as u32);
            for (key, json) in messages {
                b.put_i64(key.ts);
                b.put_u64(key.seq);
                b.put_u32(json.len() as u32);
                b.put_slice(json);
            }
        }
        Op::DelMessages { device, from, to } => {
            b.put_u8(DEL_RANGE);
            b.put_u64(*device);
            b.put_i64(*from);
            b.put_i64(*to);
        }
        Op::DelMessageKeys { device, keys } => {
            b.put_u8(DEL_KEYS);
            b.put_u64(*device);
            b.put_u32(keys.len() as u32);
            for key in keys {
                b.put_i64(key.ts);
                b.put_u64(key.seq);
            }
        }
        Op::PutTelemetry { device, json } => {
            b.put_u8(PUT_TELEMETRY);
            b.put_u64(*device);
            b.put_slice(json);
        }
        Op::DelTelemetry { device } => {
            b.put_u8(DEL_TELEMETRY);
            b.put_u64(*device);
        }
        // Not shared (`tern_gw::replica::shared`): an empty record, skipped by every reader.
        _ => {}
    }
    b.freeze()
}

/// The op of a log record; what is wrong with it.
pub(crate) fn decode_op(mut b: Bytes) -> Result<Op, String> {
    fn need(b: &Bytes, n: usize) -> Result<(), String> {
        if b.remaining() < n {
            return Err(format!(
                "record cut short ({} bytes left, {n} needed)",
                b.remaining()
            ));
        }
        Ok(())
    }
    need(&b, 1)?;
    let tag = b.get_u8();
    match tag {
        PUT | DEL => {
            need(&b, 9)?;
            let kind = kind_of(b.get_u8()).ok_or("unknown entity kind")?;
            let id = b.get_u64();
            Ok(kind.op(id, (tag == PUT).then_some(b)))
        }
        APPEND => {
            need(&b, 12)?;
            let device = b.get_u64();
            let n = b.get_u32() as usize;
            let mut messages = Vec::with_capacity(n.min(b.remaining() / 20));
            for _ in 0..n {
                need(&b, 20)?;
                let ts = b.get_i64();
                let seq = b.get_u64();
                let len = b.get_u32() as usize;
                need(&b, len)?;
                messages.push((MessageKey { ts, seq }, b.split_to(len)));
            }
            Ok(Op::AppendMessages { device, messages })
        }
        DEL_RANGE => {
            need(&b, 24)?;
            Ok(Op::DelMessages {
                device: b.get_u64(),
                from: b.get_i64(),
                to: b.get_i64(),
            })
        }
        DEL_KEYS => {
            need(&b, 12)?;
            let device = b.get_u64();
            let n = b.get_u32() as usize;
            need(&b, n.saturating_mul(16))?;
            let keys = (0..n)
                .map(|_| MessageKey {
                    ts: b.get_i64(),
                    seq: b.get_u64(),
                })
                .collect();
            Ok(Op::DelMessageKeys { device, keys })
        }
        PUT_TELEMETRY => {
            need(&b, 8)?;
            let device = b.get_u64();
            Ok(Op::PutTelemetry { device, json: b })
        }
        DEL_TELEMETRY => {
            need(&b, 8)?;
            Ok(Op::DelTelemetry {
                device: b.get_u64(),
            })
        }
        other => Err(format!("unknown record tag {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks

/// Appends this node's changes to the log in order, [`BATCH`] awaiting their acks at a time,
/// then writes the entities among them to the bucket.
async fn run_writer(
    js: jetstream::Context,
    bucket: kv::Store,
    mut rx: mpsc::Receiver<Write>,
    share: Arc<GwShare>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = until_shutdown(rx.recv(), &shutdown).await else {
            return;
        };
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // Sent in order; their acks awaited in order. One that fails is sent again (alone)
        // before the next: order holds across the retries of one node.
        let mut acks = Vec::with_capacity(batch.len());
        for w in &batch {
            acks.push(publish(&js, &share.origin, w.payload.clone()).await);
        }
        for (w, ack) in batch.drain(..).zip(acks) {
            let mut done = match ack {
                Ok(fut) => fut.await.is_ok(),
                Err(_) => false,
            };
            let mut tries = 1;
            let mut wait = Duration::from_millis(100);
            while !done && !shutdown.is_cancelled() {
                if tries >= WRITE_TRIES && share.metrics.connected.load(Ordering::Relaxed) {
                    break;
                }
                share.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                tries += 1;
                done = match publish(&js, &share.origin, w.payload.clone()).await {
                    Ok(fut) => fut.await.is_ok(),
                    Err(_) => false,
                };
            }
            if !done {
                share.metrics.dropped_gw.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "cluster: a devices-layer change could not be appended to the log; the other nodes miss it"
                );
                if let Some(key) = w.entity.as_ref().and_then(|(k, _)| parse_entity_key(k)) {
                    unpend(&mut share.pending.lock(), key);
                }
                continue;
            }
            share.metrics.gw_written.fetch_add(1, Ordering::Relaxed);
            if let Some((key, json)) = w.entity {
                let res = match json {
                    Some(v) => bucket
                        .put(&key, v)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => bucket.delete(&key).await.map_err(|e| e.to_string()),
                };
                if let Err(e) = res {
                    share.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %key, error = %e, "cluster: devices bucket not written (a node that starts later loads the older document)");
                }
            }
        }
    }
}

type AckFuture = jetstream::context::PublishAckFuture;

async fn publish(
    js: &jetstream::Context,
    origin: &str,
    payload: Bytes,
) -> Result<AckFuture, String> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ORIGIN_HEADER, origin);
    js.publish_with_headers(GW_SUBJECT, headers, payload)
        .await
        .map_err(|e| e.to_string())
}

/// Applies the other nodes' changes in the log's order; reopened from the next position after
/// an error.
async fn run_reader(
    stream: jetstream::stream::Stream,
    mut next: u64,
    gateway: Arc<Gateway>,
    share: Arc<GwShare>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(mut messages) = crate::nats::open_reader_retrying(
            &stream,
            next,
            &share.metrics,
            &shutdown,
            "devices log",
        )
        .await
        else {
            return;
        };
        loop {
            let msg = match until_shutdown(messages.next(), &shutdown).await {
                None if shutdown.is_cancelled() => return,
                None => break,
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    share.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, next, "cluster: devices log reader failed, reading again from its next change");
                    break;
                }
            };
            let position = match msg.info() {
                Ok(info) => info.stream_sequence,
                Err(_) => next,
            };
            next = position + 1;
            let own = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(ORIGIN_HEADER))
                .is_some_and(|v| v.as_str() == share.origin);
            let op = match decode_op(msg.payload.clone()) {
                Ok(op) => op,
                Err(e) => {
                    share.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(position, error = %e, "cluster: undecodable devices-layer change skipped");
                    continue;
                }
            };
            let entity = GwKind::of(&op).map(|(kind, id, _)| (kind, id));
            if own {
                if let Some(key) = entity {
                    unpend(&mut share.pending.lock(), key);
                }
            } else {
                // The gateway skips an entity's change while an own change of it is still to
                // come, asked under its lock (`GwReplica::takes`).
                gateway.apply_remote(op, position);
                share.metrics.gw_applied.fetch_add(1, Ordering::Relaxed);
            }
            share.metrics.gw_position.store(position, Ordering::Relaxed);
        }
    }
}

/// Reserves the next block of a kind whenever few of its ids are left.
async fn run_ids(
    bucket: kv::Store,
    share: Arc<GwShare>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) {
    loop {
        for (kind, floor) in gateway.max_ids() {
            let mut wait = Duration::from_millis(100);
            while share.ids_left(kind) <= ID_LOW {
                match crate::cfg::reserve_key(&bucket, ids_key(kind), floor).await {
                    Ok(block) => share.add_ids(kind, block),
                    Err(e) => {
                        share.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cluster: reserving device-layer ids failed, retrying");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = shutdown.cancelled() => return,
                        }
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        tokio::select! {
            () = share.refill.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Writes this node's tracker links to the bucket, in order.
async fn run_link_writer(
    bucket: kv::Store,
    mut rx: mpsc::Receiver<(u64, String, bool)>,
    share: Arc<GwShare>,
    shutdown: CancellationToken,
) {
    while let Some((root, ident, up)) = until_shutdown(rx.recv(), &shutdown).await {
        let key = link_key(root, &ident);
        let res = if up {
            bucket
                .put(&key, Bytes::from(share.node.clone()))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            unlink(&bucket, &key, &share.node).await
        };
        if let Err(e) = res {
            share.metrics.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %key, error = %e, "cluster: a tracker link not written");
        }
    }
}

/// Deletes link `key` while it names `node` (another node's newer link stays).
async fn unlink(bucket: &kv::Store, key: &str, node: &str) -> Result<(), String> {
    let entry = bucket.entry(key).await.map_err(|e| e.to_string())?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put && e.value.as_ref() == node.as_bytes() => {
            bucket
                .delete_expect_revision(key, Some(e.revision))
                .await
                .map_err(|e| e.to_string())
        }
        _ => Ok(()),
    }
}

/// Follows the tracker links of every node.
async fn run_links(
    mut watch: kv::Watch,
    gateway: Arc<Gateway>,
    share: Arc<GwShare>,
    shutdown: CancellationToken,
) {
    loop {
        let entry = match until_shutdown(watch.next(), &shutdown).await {
            None => return,
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                share.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster: tracker links watch error");
                continue;
            }
        };
        let Some((root, ident)) = parse_link_key(&entry.key) else {
            continue;
        };
        if entry.operation == kv::Operation::Put {
            let node = String::from_utf8_lossy(&entry.value).into_owned();
            share.links.lock().insert((root, ident.clone()), node);
        } else {
            share.links.lock().remove(&(root, ident.clone()));
        }
        gateway.links_changed(root, &ident);
    }
}

/// Deletes the tracker links that name this node: left by its last run (its connections died
/// with it). Before its trackers' listeners open.
async fn unlink_stale(bucket: &kv::Store, node: &str) -> Result<u64, ClusterError> {
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| ClusterError::Nats(format!("keys of {GW_BUCKET}: {e}")))?;
    let mut stale = Vec::new();
    while let Some(key) = keys.next().await {
        match key {
            Ok(key) if key.starts_with("link.") => stale.push(key),
            Ok(_) => {}
            Err(e) => return Err(ClusterError::Nats(format!("keys of {GW_BUCKET}: {e}"))),
        }
    }
    let mut gone = 0;
    for key in stale {
        if unlink(bucket, &key, node).await.is_ok() {
            gone += 1;
        }
    }
    Ok(gone)
}

/// Runs the commands other nodes send to trackers connected here.
async fn run_commands(
    mut commands: async_nats::Subscriber,
    gateway: Arc<Gateway>,
    share: Arc<GwShare>,
    shutdown: CancellationToken,
) {
    while let Some(msg) = until_shutdown(commands.next(), &shutdown).await {
        let Some(reply) = msg.reply else {
            continue;
        };
        let request: Value = match serde_json::from_slice(&msg.payload) {
            Ok(v) => v,
            Err(e) => {
                share.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster: undecodable devices command skipped");
                continue;
            }
        };
        let gateway = gateway.clone();
        let client = share.client.clone();
        // A command waits for its tracker's response: each on its own task.
        tokio::spawn(async move {
            let device = request["device"].as_u64().unwrap_or_default();
            let result = gateway.command_here(device, request["input"].clone()).await;
            let _ = client.publish(reply, encode_command_answer(&result)).await;
        });
    }
}

/// Follows which nodes beat, once a second; tells the devices layer when that changed (an
/// external channel's client may move; trackers of a node that went are connected nowhere).
async fn run_owners(
    sessions: Arc<Sessions>,
    gateway: Arc<Gateway>,
    share: Arc<GwShare>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if share.live_changed(sessions.live_nodes()) {
            gateway.owners_changed();
            // Trackers of a node that went (or came back) are connected nowhere (or again).
            let links: Vec<(u64, String)> = share.links.lock().keys().cloned().collect();
            for (root, ident) in links {
                gateway.links_changed(root, &ident);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(op: Op) {
        let encoded = encode_op(&op);
        assert_eq!(decode_op(encoded).expect("decodes"), op);
    }

    #[test]
    fn every_shared_op_round_trips() {
        for kind in GwKind::ALL {
            round_trip(kind.op(42, Some(Bytes::from_static(b"{\"id\":42}"))));
            round_trip(kind.op(42, None));
        }
        round_trip(Op::AppendMessages {
            device: tern_store::channel_key(3),
            messages: vec![
                (MessageKey { ts: -5, seq: 1 }, Bytes::from_static(b"{}")),
                (
                    MessageKey {
                        ts: 1_700_000_000_000_000,
                        seq: u64::MAX,
                    },
                    Bytes::from_static(b"{\"a\":1}"),
                ),
            ],
        });
        round_trip(Op::DelMessages {
            device: 3,
            from: i64::MIN,
            to: i64::MAX,
        });
        round_trip(Op::DelMessageKeys {
            device: 3,
            keys: vec![MessageKey { ts: 1, seq: 2 }, MessageKey { ts: 3, seq: 4 }],
        });
        round_trip(Op::PutTelemetry {
            device: 9,
            json: Bytes::from_static(b"{}"),
        });
        round_trip(Op::DelTelemetry { device: 9 });
    }

    #[test]
    fn cut_or_unknown_records_are_refused() {
        let full = encode_op(&Op::AppendMessages {
            device: 1,
            messages: vec![(
                MessageKey { ts: 1, seq: 1 },
                Bytes::from_static(b"{\"x\":1}"),
            )],
        });
        for cut in 0..full.len() {
            assert!(decode_op(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(decode_op(Bytes::from_static(&[99])).is_err());
        assert!(decode_op(Bytes::from_static(&[PUT, 77, 0, 0, 0, 0, 0, 0, 0, 1])).is_err());
        // A count larger than the record cannot make it allocate that much.
        let mut b = BytesMut::new();
        b.put_u8(DEL_KEYS);
        b.put_u64(1);
        b.put_u32(u32::MAX);
        assert!(decode_op(b.freeze()).is_err());
    }

    #[test]
    fn link_keys_round_trip() {
        for ident in ["356307042441013", "a.b c/#", "ü"] {
            assert_eq!(
                parse_link_key(&link_key(42, ident)),
                Some((42, ident.to_string()))
            );
        }
        assert_eq!(parse_link_key("link.1.zz"), None);
        assert_eq!(parse_link_key("device.1"), None);
    }

    #[test]
    fn command_answers_round_trip() {
        let item = json!({"id": 1, "response": "ok"});
        assert_eq!(
            decode_command_answer(&encode_command_answer(&Ok(item.clone()))),
            Ok(item)
        );
        for e in [
            GwError::NotConnected {
                name: "custom".into(),
                id: 7,
            },
            GwError::NotFound {
                what: "device",
                id: 7,
            },
            GwError::Invalid("bad".into()),
            GwError::Unavailable("later".into()),
        ] {
            assert_eq!(
                decode_command_answer(&encode_command_answer(&Err(e.clone()))),
                Err(e)
            );
        }
    }

    #[test]
    fn entity_keys_parse() {
        assert_eq!(parse_entity_key("device.12"), Some((GwKind::Device, 12)));
        assert_eq!(parse_entity_key("webhook.1"), Some((GwKind::Webhook, 1)));
        assert_eq!(parse_entity_key("ids.device"), None);
        assert_eq!(parse_entity_key("device.x"), None);
        for kind in GwKind::ALL {
            assert_eq!(parse_entity_key(&entity_key(kind, 7)), Some((kind, 7)));
        }
    }

    #[test]
    fn one_live_node_owns_each_channel_and_the_rest_stay_put_when_one_goes() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        let mut moved = 0;
        for channel in 1..200u64 {
            let before = owner(&three, channel).expect("an owner");
            let after = owner(&two, channel).expect("an owner");
            if before != "b" {
                assert_eq!(
                    before, after,
                    "channel {channel} moved though its node stayed"
                );
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0 && moved < 199, "b owned {moved} of 199");
        assert_eq!(owner(&[], 1), None);
    }
}
