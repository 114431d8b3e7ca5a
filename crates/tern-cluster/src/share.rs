//! `$share` groups across nodes (issue 17; `scale-out.md` §3.5): each message of a shared group
//! goes to one member in the whole cluster, not one per node.
//!
//! Every node routes every publication (the publisher's node its own, the others what they read
//! from NATS), so no message needs to carry a decision: every node computes the same one.
//!
//! - The registry: KV bucket `tern_share`, one key per node (its name, escaped), whose value
//!   lists the node's groups with their member counts, one line each:
//!   `<cid> <members> <group> <filter>` (group and filter with `%`, space and control bytes as
//!   `%HH`). A node writes its key when its groups change (a shared SUBSCRIBE, UNSUBSCRIBE or
//!   session end: [`tern_broker::Fabric::shares_changed`] wakes the writer, which reads
//!   `Broker::shared_groups` after [`SETTLE`]) and again every [`HEARTBEAT`], and deletes it when
//!   it has no group left or shuts down.
//! - Every node watches the whole bucket. An entry not refreshed for [`STALE_AFTER`] (a node that
//!   died or lost NATS) no longer counts; the bucket's `max_age` ([`BUCKET_MAX_AGE`]) removes it
//!   from NATS later. The view: for each group (a 64-bit hash of account, group and filter), the
//!   nodes with members and how many.
//! - The choice ([`ShareRegistry::here`]): weighted rendezvous hashing over the group's nodes in
//!   the view, keyed by the group and the message. A plain group's message key is the message's
//!   identity as every node sees it (the publishing node's timestamp, unique per node, the
//!   account and the topic); a sticky group's is the hash of its topic levels, so a topic stays
//!   with one node (and there with one member) while the membership holds. A node's weight is
//!   its member count, so each member gets about an equal share. A change of membership moves
//!   only the messages (the sticky topics) of the node that came or went.
//!   Connected members first: each line also says how many of the node's members are
//!   connected, and when any node of the group has connected members, only those nodes are
//!   chosen, weighted by their connected members (a single node prefers a connected member the
//!   same way); when none has, every node with members is, by its members.
//! - A group that matched here but that the view does not know yet (its first members joined
//!   less than a moment ago) is delivered here: until every node has seen the registry, such a
//!   group may get a message once per node that has members.
//!
//! QoS 1/2 across a node's crash (the handover). Every node with members of a group routes
//! every message of it and computes every choice, so the others know what was chosen for a
//! node that dies before its members acknowledged it:
//! - Remembering: a QoS 1/2 message chosen for another node is noted while routing
//!   ([`ShareRegistry::here`] into a per-thread list, taken right after the routing) and kept,
//!   by reference (its `Arc`), under that node with its shard stream position: the reader's
//!   for a message of another node, the append's acknowledgement for one published here.
//!   Bounded ([`ShareRegistry`]'s `limit`, `[cluster] queue`): a message that does not fit is
//!   not kept and counted (`tern_cluster_dropped_total{queue="share"}`).
//! - Acknowledging: the broker gives each QoS 1/2 copy it queues here for a member its own
//!   `Arc` ([`tern_broker::Fabric::share_delivering`]); the copy is done once only this module
//!   holds it (acknowledged, or dropped by its session). Every beat the writer checks the
//!   copies noted since its last mark: once all are done, every message up to the shard stream
//!   positions this node had routed at that mark is done here, and those positions go into the
//!   node's entry (`cursor <s0> <s1> …`). The other nodes then forget what they kept for it
//!   up to there. Copies beyond the limit are not watched (counted as above): a cursor may
//!   pass them.
//! - Handing over: when a node's entry goes stale (it died or lost NATS), the others choose
//!   again, among the nodes left in the view, for each message they kept for it; the node
//!   chosen delivers it to one of its members (`tern_cluster_share_redelivered_total`).
//!   Members may see a message twice (QoS 1 allows it); a message acknowledged to its
//!   publisher and chosen for the dead node is not lost while some node kept it. A node whose
//!   entry is deleted (it stopped cleanly, or its last member left) is handed over the same
//!   way, at once: a shared message whose session ended should go to another member (MQTT
//!   §4.8.2). Every node that kept a handed-over message keeps it again for the node that
//!   delivers it now, until [`HANDED_DONE`] of that node's cursor changes went by (a mark
//!   taken after the delivery completed), so a second crash hands it over again.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use parking_lot::RwLock;
use smallvec::SmallVec;
use tern_broker::{Broker, Cid, Message, ShareGroupRef, SharedGroupCount};
use tern_topic::ShareMode;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::nats::{ClusterError, ClusterMetrics};
use crate::sessions::Positions;
use crate::subject::{FNV_OFFSET, fnv1a};

/// The KV bucket of the shared groups' members, by node.
pub const SHARE_BUCKET: &str = "tern_share";

/// How often a node with groups writes its entry again, unchanged or not.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// An entry not written for this long no longer counts (its node died or lost NATS).
pub const STALE_AFTER: Duration = Duration::from_secs(4);

/// How long the writer waits after a change for more before it writes (one write for a burst
/// of subscribes).
pub const SETTLE: Duration = Duration::from_millis(20);

/// How long NATS keeps an entry that is not written again.
pub const BUCKET_MAX_AGE: Duration = Duration::from_secs(60);

/// One node of a group in the view: its hash, its members and how many are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NodeMembers {
    pub node: u64,
    pub members: u32,
    pub connected: u32,
}

/// The nodes with members of one group, by node hash.
type Nodes = SmallVec<[NodeMembers; 4]>;

/// A node's groups: (group hash, members, connected) each.
type Groups = Vec<(u64, u32, u32)>;

/// A node's entry as decoded.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    groups: Groups,
    /// What the node has done up to, per shard (see the module).
    cursor: Option<Vec<u64>>,
    /// When the node's process started (Unix µs): a new one kept nothing of the last one's.
    start: Option<u64>,
}

/// A group as a node with members of it knows it: enough to choose again and to deliver.
#[derive(Debug)]
pub(crate) struct GroupInfo {
    key: u64,
    cid: Cid,
    name: Box<str>,
    filter: Box<str>,
    mode: ShareMode,
}

/// A QoS 1/2 message chosen for another node, noted while routing (see the module).
#[derive(Debug)]
pub(crate) struct Chosen {
    /// The routed message's address: the notes of one routing are taken by it.
    msg: usize,
    node: u64,
    group: GroupInfo,
}

thread_local! {
    /// The choices of other nodes noted by the routing running on this thread.
    static CHOSEN: RefCell<Vec<Chosen>> = const { RefCell::new(Vec::new()) };
}

/// The notes the routing of `msg` on this thread left (and drops any other, left by a routing
/// whose notes nobody took).
pub(crate) fn take_chosen(msg: &Arc<Message>) -> Vec<Chosen> {
    let ptr = Arc::as_ptr(msg) as usize;
    CHOSEN.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_empty() {
            return Vec::new();
        }
        let mut all = std::mem::take(&mut *c);
        all.retain(|n| n.msg == ptr);
        all
    })
}

/// A message kept for another node until it says its members are done with it.
#[derive(Debug)]
struct Kept {
    group: GroupInfo,
    msg: Arc<Message>,
}

/// What this node keeps for one other node.
#[derive(Debug, Default)]
struct KeptFor {
    /// The start of its process that the kept messages were chosen for.
    start: Option<u64>,
    /// Its last cursor (per shard): what it has done up to.
    cursor: Option<Vec<u64>>,
    /// By (shard, stream sequence).
    kept: BTreeMap<(u32, u64), SmallVec<[Kept; 1]>>,
    /// Messages handed over to it (chosen for a node that went before), each with the
    /// changes of its cursor seen since: its position in the streams is older than its
    /// delivery there, so its cursor says nothing of it; once [`HANDED_DONE`] changes went by,
    /// a mark taken after the delivery has been completed.
    handed: Vec<(Kept, u8)>,
}

/// Cursor changes of a node after which a message handed over to it is done there: its
/// writer publishes a mark only once the one before is done, a change takes at least a beat,
/// and the nodes see a node go away within a fraction of a beat of each other, so the third
/// change published after the handover here comes from a mark taken after the delivery there.
const HANDED_DONE: u8 = 3;

/// The handover's state (see the module).
#[derive(Debug, Default)]
struct Handover {
    nodes: HashMap<u64, KeptFor>,
    /// Messages kept, over every node.
    total: usize,
}

/// The copies queued here for members, and the mark the cursor moves to once they are done.
#[derive(Debug, Default)]
struct Tracker {
    /// Copies queued since the last mark.
    current: Vec<Arc<Message>>,
    /// The positions at the last mark and the copies queued before it, not yet done.
    mark: Option<(Vec<u64>, Vec<Arc<Message>>)>,
    /// The positions of the last mark whose copies were all done.
    done: Option<Vec<u64>>,
}

/// Which nodes deliver which group's messages (see the module).
#[derive(Debug)]
pub struct ShareRegistry {
    /// This node's name and its hash.
    node: String,
    node_hash: u64,
    /// Group hash → nodes with members, as of the last change of the bucket (or expiry).
    view: RwLock<Arc<HashMap<u64, Nodes>>>,
    /// Wakes the writer: this node's groups changed.
    dirty: Notify,
    /// Messages kept for other nodes.
    handover: parking_lot::Mutex<Handover>,
    /// This node's copies for its members.
    tracker: parking_lot::Mutex<Tracker>,
    /// Messages kept at most, and copies watched at most (`[cluster] queue`).
    limit: usize,
    /// When this process started (Unix µs), in its entry.
    start: u64,
    /// Where this node's shard stream readers are (shared with `sessions.rs`).
    positions: Positions,
    metrics: Arc<ClusterMetrics>,
}

impl ShareRegistry {
    fn new(
        node: &str,
        limit: usize,
        positions: Positions,
        metrics: Arc<ClusterMetrics>,
    ) -> ShareRegistry {
        ShareRegistry {
            node: node.to_string(),
            node_hash: node_hash(node),
            view: RwLock::new(Arc::new(HashMap::new())),
            dirty: Notify::new(),
            handover: parking_lot::Mutex::new(Handover::default()),
            tracker: parking_lot::Mutex::new(Tracker::default()),
            limit: limit.max(1),
            start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            positions,
            metrics,
        }
    }

    /// Whether this node delivers `msg`'s copy for `group` (a group with members here that
    /// `msg` matched). A QoS 1/2 message chosen for another node is noted for
    /// [`take_chosen`].
    pub fn here(&self, group: &ShareGroupRef<'_>, msg: &Message) -> bool {
        let key = group_key(group.cid, group.name, group.filter);
        let chosen = {
            let view = self.view.read();
            match view.get(&key) {
                // Not known to the cluster yet: deliver here (see the module).
                None => return true,
                Some(nodes) => choose(nodes, key, message_key(group.mode, msg)),
            }
        };
        match chosen {
            Some(node) if node == self.node_hash => true,
            Some(node) => {
                if msg.qos != tern_codec::QoS::AtMostOnce {
                    let note = Chosen {
                        msg: msg as *const Message as usize,
                        node,
                        group: GroupInfo {
                            key,
                            cid: group.cid,
                            name: group.name.into(),
                            filter: group.filter.into(),
                            mode: group.mode,
                        },
                    };
                    CHOSEN.with(|c| {
                        let mut c = c.borrow_mut();
                        // Notes nobody took (a routing off the reader's and publisher's paths)
                        // do not pile up.
                        if c.len() >= 4096 {
                            c.clear();
                        }
                        c.push(note);
                    });
                }
                false
            }
            None => false,
        }
    }

    /// This node's groups changed: the writer writes them soon. Never blocks.
    pub fn changed(&self) {
        self.dirty.notify_one();
    }

    /// A copy for a member of this node was queued (see the module). Never blocks for long.
    pub fn delivering(&self, msg: &Arc<Message>) {
        let mut t = self.tracker.lock();
        if t.current.len() >= self.limit {
            drop(t);
            self.metrics.dropped_share.fetch_add(1, Ordering::Relaxed);
            return;
        }
        t.current.push(msg.clone());
    }

    /// Keeps `msg`, at `seq` of shard stream `shard`, for the nodes it was chosen for.
    pub(crate) fn keep(&self, shard: u32, seq: u64, msg: &Arc<Message>, chosen: Vec<Chosen>) {
        let mut h = self.handover.lock();
        for c in chosen {
            if h.total >= self.limit {
                self.metrics.dropped_share.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let kept = h.nodes.entry(c.node).or_default();
            if kept
                .cursor
                .as_ref()
                .and_then(|c| c.get(shard as usize))
                .is_some_and(|&done| done >= seq)
            {
                // Its members are done with it already.
                continue;
            }
            kept.kept.entry((shard, seq)).or_default().push(Kept {
                group: c.group,
                msg: msg.clone(),
            });
            h.total += 1;
        }
        self.metrics
            .share_kept
            .store(h.total as u64, Ordering::Relaxed);
    }

    /// A node's entry was written: what it has done up to (its cursor) is forgotten. A node
    /// that started again (a new `start`) kept nothing of its last process: what was kept for
    /// that one is returned, to hand over.
    fn node_seen(&self, node: u64, start: Option<u64>, cursor: Option<Vec<u64>>) -> Vec<Kept> {
        let mut h = self.handover.lock();
        let h = &mut *h;
        let kept = h.nodes.entry(node).or_default();
        let mut restarted = Vec::new();
        if kept.start.is_some() && start != kept.start {
            restarted = std::mem::take(&mut kept.kept)
                .into_values()
                .flatten()
                .chain(std::mem::take(&mut kept.handed).into_iter().map(|(k, _)| k))
                .collect();
            kept.cursor = None;
            h.total -= restarted.len();
        }
        kept.start = start;
        let Some(cursor) = cursor else {
            self.metrics
                .share_kept
                .store(h.total as u64, Ordering::Relaxed);
            return restarted;
        };
        let mut forgotten = 0;
        if kept.cursor.as_ref() != Some(&cursor) && !kept.handed.is_empty() {
            let before = kept.handed.len();
            kept.handed.retain_mut(|(_, seen)| {
                *seen += 1;
                *seen < HANDED_DONE
            });
            forgotten += before - kept.handed.len();
        }
        for (shard, &done) in cursor.iter().enumerate() {
            let shard = shard as u32;
            let upto: Vec<(u32, u64)> = kept
                .kept
                .range((shard, 0)..=(shard, done))
                .map(|(k, _)| *k)
                .collect();
            for k in upto {
                if let Some(v) = kept.kept.remove(&k) {
                    forgotten += v.len();
                }
            }
        }
        kept.cursor = Some(cursor);
        h.total -= forgotten;
        self.metrics
            .share_kept
            .store(h.total as u64, Ordering::Relaxed);
        restarted
    }

    /// What was kept for `node` is taken: to hand over (`Some`) or dropped.
    fn take_kept(&self, node: u64) -> Vec<Kept> {
        let mut h = self.handover.lock();
        let Some(kept) = h.nodes.remove(&node) else {
            return Vec::new();
        };
        let out: Vec<Kept> = kept
            .kept
            .into_values()
            .flatten()
            .chain(kept.handed.into_iter().map(|(k, _)| k))
            .collect();
        h.total -= out.len();
        self.metrics
            .share_kept
            .store(h.total as u64, Ordering::Relaxed);
        out
    }

    /// The nodes (hashes) something is kept for.
    fn kept_nodes(&self) -> Vec<u64> {
        self.handover
            .lock()
            .nodes
            .iter()
            .filter(|(_, k)| !k.kept.is_empty() || !k.handed.is_empty())
            .map(|(n, _)| *n)
            .collect()
    }

    /// Hands over what was kept for `node`, which went away (or started again): each message
    /// goes to the node the view chooses now without `node`; this node delivers those it
    /// chose.
    fn hand_over(&self, broker: &Broker, node: u64, kept: Vec<Kept>) {
        if kept.is_empty() {
            return;
        }
        let view = self.view.read().clone();
        let (mut here, mut elsewhere, mut dropped) = (0u64, 0u64, 0u64);
        for k in kept {
            let chosen = view.get(&k.group.key).and_then(|nodes| {
                let others: Nodes = nodes.iter().filter(|n| n.node != node).copied().collect();
                choose(&others, k.group.key, message_key(k.group.mode, &k.msg))
            });
            match chosen {
                Some(n) if n == self.node_hash => {
                    if broker.deliver_shared(k.group.cid, &k.group.name, &k.group.filter, &k.msg) {
                        here += 1;
                    } else {
                        dropped += 1;
                    }
                }
                Some(n) => {
                    // Kept again, for the node that delivers it now, until it is done there.
                    if self.keep_handed(n, k) {
                        elsewhere += 1;
                    } else {
                        dropped += 1;
                    }
                }
                None => dropped += 1,
            }
        }
        self.metrics
            .share_redelivered
            .fetch_add(here, Ordering::Relaxed);
        self.metrics
            .dropped_share
            .fetch_add(dropped, Ordering::Relaxed);
        tracing::warn!(
            delivered_here = here,
            other_nodes = elsewhere,
            dropped,
            "cluster: a node with $share members went away; its unacknowledged QoS 1/2 messages handed over"
        );
    }

    /// Keeps `k`, handed over to `node`, until it is done there (within the limit).
    fn keep_handed(&self, node: u64, k: Kept) -> bool {
        let mut h = self.handover.lock();
        if h.total >= self.limit {
            return false;
        }
        h.nodes.entry(node).or_default().handed.push((k, 0));
        h.total += 1;
        self.metrics
            .share_kept
            .store(h.total as u64, Ordering::Relaxed);
        true
    }

    /// This node's cursor for its entry: the positions of the last mark whose copies are all
    /// done; a new mark is taken once the last one is done.
    fn progress(&self) -> Option<Vec<u64>> {
        let mut t = self.tracker.lock();
        let t = &mut *t;
        if let Some((at, batch)) = &mut t.mark {
            // Done: only this tracker holds the copy (its delivery completed or was dropped).
            batch.retain(|m| Arc::strong_count(m) > 1);
            if batch.is_empty() {
                t.done = Some(std::mem::take(at));
                t.mark = None;
            }
        }
        if t.mark.is_none() {
            // The positions first: every copy of a message up to them was queued before they
            // were read, so it is in `current` now.
            let at = self
                .positions
                .iter()
                .map(|p| p.load(Ordering::Acquire))
                .collect();
            t.mark = Some((at, std::mem::take(&mut t.current)));
        }
        t.done.clone()
    }
}

/// What [`start`] needs.
pub(crate) struct ShareStart<'a> {
    pub js: &'a jetstream::Context,
    pub broker: Arc<Broker>,
    pub node: &'a str,
    pub replicas: usize,
    /// Messages kept for other nodes at most, and copies watched at most.
    pub limit: usize,
    pub positions: Positions,
    pub metrics: Arc<ClusterMetrics>,
    pub shutdown: CancellationToken,
}

/// Opens (creates on first use) the bucket, loads what it holds into the view and starts the
/// writer and the watcher (ended by `shutdown`).
pub(crate) async fn start(s: ShareStart<'_>) -> Result<Arc<ShareRegistry>, ClusterError> {
    let ShareStart {
        js,
        broker,
        node,
        replicas,
        limit,
        positions,
        metrics,
        shutdown,
    } = s;
    let bucket = share_bucket(js, replicas).await?;
    let registry = Arc::new(ShareRegistry::new(node, limit, positions, metrics));
    let watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| ClusterError::Nats(format!("watch of {SHARE_BUCKET}: {e}")))?;
    tokio::spawn(run_watch(
        registry.clone(),
        broker.clone(),
        bucket.clone(),
        watch,
        shutdown.clone(),
    ));
    tokio::spawn(run_writer(registry.clone(), broker, bucket, shutdown));
    Ok(registry)
}

/// The bucket: history 1, entries kept [`BUCKET_MAX_AGE`]. Created as its stream, like the
/// retained bucket (nats-server 2.9 does not answer async-nats's bucket creation).
async fn share_bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, ClusterError> {
    crate::nats::kv_bucket_aged(
        js,
        SHARE_BUCKET,
        "tern: members of $share groups, by node",
        replicas,
        BUCKET_MAX_AGE,
    )
    .await
}

/// Writes this node's entry when its groups change and every [`HEARTBEAT`]; deletes it when
/// the node has no group left and at shutdown. A failed write is tried again at the next beat.
async fn run_writer(
    registry: Arc<ShareRegistry>,
    broker: Arc<Broker>,
    bucket: kv::Store,
    shutdown: CancellationToken,
) {
    let key = node_key(&registry.node);
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether NATS holds an entry of this node (as far as the last write knows).
    let mut written = true;
    // The last value written: a change that changes nothing (a connect of a session without
    // shared subscriptions) is not written until the next beat.
    let mut last = String::new();
    loop {
        let beat_due = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = beat.tick() => true,
            () = registry.dirty.notified() => {
                tokio::select! {
                    () = tokio::time::sleep(SETTLE) => {}
                    () = shutdown.cancelled() => break,
                }
                false
            }
        };
        let mut groups = broker.shared_groups();
        if groups.is_empty() {
            if written {
                written = bucket.delete(&key).await.is_err();
                last.clear();
            }
            continue;
        }
        groups.sort_unstable();
        let cursor = if beat_due {
            registry.progress()
        } else {
            registry.tracker.lock().done.clone()
        };
        let value = encode_entry(&groups, registry.start, cursor.as_deref());
        if !beat_due && value == last {
            continue;
        }
        match bucket.put(&key, value.clone().into()).await {
            Ok(_) => {
                written = true;
                last = value;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: writing this node's $share groups failed");
            }
        }
    }
    // Gone from every group at once, rather than after STALE_AFTER.
    let _ = tokio::time::timeout(Duration::from_secs(2), bucket.delete(&key)).await;
}

/// Follows the bucket into the view; drops entries not written for [`STALE_AFTER`]. A watch
/// that ends (NATS lost the consumer) is opened again, and the bucket's current values come
/// first again.
async fn run_watch(
    registry: Arc<ShareRegistry>,
    broker: Arc<Broker>,
    bucket: kv::Store,
    mut watch: kv::Watch,
    shutdown: CancellationToken,
) {
    let mut entries: HashMap<String, (Instant, Groups)> = HashMap::new();
    let mut expiry = tokio::time::interval(STALE_AFTER / 8);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut stale = false;
        // Nodes whose entry was deleted (they stopped, or their last member left).
        let mut gone = None;
        let changed = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = expiry.tick() => {
                let now = Instant::now();
                let before = entries.len();
                entries.retain(|node, (seen, _)| {
                    let fresh = now.duration_since(*seen) < STALE_AFTER;
                    if !fresh {
                        tracing::warn!(node = %node, "cluster: a node's $share entry went stale; it is chosen no more");
                    }
                    fresh
                });
                stale = true;
                entries.len() != before
            }
            next = watch.next() => match next {
                None => {
                    tracing::warn!("cluster: $share registry watch ended; watching again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(HEARTBEAT) => {}
                    }
                    match bucket.watch_with_history(">").await {
                        Ok(w) => watch = w,
                        Err(e) => tracing::warn!(error = %e, "cluster: $share registry watch not opened"),
                    }
                    false
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cluster: $share registry watch error");
                    false
                }
                Some(Ok(entry)) => match entry.operation {
                    kv::Operation::Put => match decode_entry(&entry.value) {
                        Ok(Entry { groups, cursor, start }) => {
                            let node = node_hash(&unescape_node(&entry.key));
                            if node != registry.node_hash {
                                let restarted = registry.node_seen(node, start, cursor);
                                registry.hand_over(&broker, node, restarted);
                            }
                            let old = entries.insert(entry.key, (Instant::now(), groups.clone()));
                            old.is_none_or(|(_, g)| g != groups)
                        }
                        Err(e) => {
                            tracing::warn!(key = %entry.key, error = %e, "cluster: undecodable $share entry skipped");
                            entries.remove(&entry.key).is_some()
                        }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => {
                        // It stopped, or its last member left: what its members had not
                        // acknowledged goes to the members left ([MQTT-4.8.2]: a shared
                        // message whose session ended SHOULD go to another member), once the
                        // view is without it.
                        let node = node_hash(&unescape_node(&entry.key));
                        if node != registry.node_hash {
                            gone = Some(node);
                        }
                        entries.remove(&entry.key).is_some()
                    }
                },
            },
        };
        if changed {
            let view = build_view(
                entries
                    .iter()
                    .map(|(node, (_, groups))| (node.as_str(), groups)),
            );
            *registry.view.write() = Arc::new(view);
        }
        if let Some(node) = gone {
            let kept = registry.take_kept(node);
            registry.hand_over(&broker, node, kept);
        }
        if stale {
            // What is kept for a node that is no longer in the view (stale, or gone before
            // its message was kept) is handed over, with the view without it.
            let live: std::collections::HashSet<u64> = entries
                .keys()
                .map(|k| node_hash(&unescape_node(k)))
                .collect();
            for node in registry.kept_nodes() {
                if !live.contains(&node) {
                    let kept = registry.take_kept(node);
                    registry.hand_over(&broker, node, kept);
                }
            }
        }
    }
}

/// The view from every node's entry: (node key, its groups as (group hash, members,
/// connected)).
fn build_view<'a>(entries: impl Iterator<Item = (&'a str, &'a Groups)>) -> HashMap<u64, Nodes> {
    let mut view: HashMap<u64, Nodes> = HashMap::new();
    for (key, groups) in entries {
        let node = node_hash(&unescape_node(key));
        for &(group, members, connected) in groups {
            if members > 0 {
                view.entry(group).or_default().push(NodeMembers {
                    node,
                    members,
                    connected: connected.min(members),
                });
            }
        }
    }
    for nodes in view.values_mut() {
        nodes.sort_unstable();
    }
    view
}

/// The node that delivers the message with key `msg` of group `group`: among the nodes with
/// connected members if there are any, weighted by those, else among all by their members,
/// the highest weighted rendezvous score (ties: the higher node hash). `None` without nodes.
pub(crate) fn choose(nodes: &[NodeMembers], group: u64, msg: u64) -> Option<u64> {
    let base = mix(group ^ mix(msg));
    let any_connected = nodes.iter().any(|n| n.connected > 0);
    nodes
        .iter()
        .filter_map(|n| {
            let weight = if any_connected {
                n.connected
            } else {
                n.members
            };
            (weight > 0 || !any_connected).then_some((n.node, weight))
        })
        .map(|(node, weight)| {
            // A uniform value in (0, 1) per node; ln(u) / w is the largest for a node with
            // probability proportional to its weight w.
            let u = ((mix(base ^ node) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (u.ln() / f64::from(weight.max(1)), node)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, node)| node)
}

/// The key of a message for the choice: what every node sees the same (see the module).
pub(crate) fn message_key(mode: ShareMode, msg: &Message) -> u64 {
    match mode {
        ShareMode::Random => {
            let h = fnv1a(FNV_OFFSET, &msg.timestamp.to_le_bytes());
            let h = fnv1a(h, &msg.cid.to_le_bytes());
            fnv1a(h, msg.topic.as_bytes())
        }
        // The hash a single node's sticky pick uses: the same levels, the same key.
        ShareMode::Sticky { from, count } => tern_topic::sticky_hash(&msg.topic, from, count),
    }
}

/// A group's identity across nodes: a hash of its account, group string and filter.
pub(crate) fn group_key(cid: Cid, name: &str, filter: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, &cid.to_le_bytes());
    let h = fnv1a(h, name.as_bytes());
    // A byte no group string holds between the two, so ("a", "b/c") and ("a/b", "c") differ.
    let h = fnv1a(h, &[0]);
    mix(fnv1a(h, filter.as_bytes()))
}

fn node_hash(node: &str) -> u64 {
    mix(fnv1a(FNV_OFFSET ^ 2, node.as_bytes()))
}

/// splitmix64's finalizer: every input bit moves every output bit.
pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A node name as a KV key: ASCII letters, digits, `_` and `-` kept, every other byte `=HH`.
fn node_key(node: &str) -> String {
    let mut key = String::with_capacity(node.len());
    for &b in node.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            key.push(char::from(b));
        } else {
            key.push('=');
            key.push(char::from(HEX[usize::from(b >> 4)]));
            key.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    if key.is_empty() {
        // A KV key cannot be empty.
        key.push('=');
    }
    key
}

/// The node name of a key ([`node_key`]'s inverse; a malformed escape is kept as it is: the
/// name only feeds the node's hash, which must match what that node computes of its own name).
fn unescape_node(key: &str) -> String {
    if key == "=" {
        return String::new();
    }
    unescape(key, b'=')
}

fn unescape(s: &str, esc: u8) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == esc
            && let Some(v) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A group string or filter in an entry line: `%`, space and control bytes as `%HH`.
fn escape_field(s: &str, out: &mut String) {
    for c in s.chars() {
        if c == '%' || c == ' ' || c.is_control() {
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        } else {
            out.push(c);
        }
    }
}

/// The first word of an entry's cursor line.
const CURSOR: &str = "cursor ";
/// The first word of an entry's start line.
const START: &str = "start ";

/// A node's entry: one line per group, `<cid> <members> <group> <filter> <connected>`, then
/// `start <Unix µs>` (when its process started), then its cursor, if it has one:
/// `cursor <s0> <s1> …` (a stream sequence per shard).
pub(crate) fn encode_entry(
    groups: &[SharedGroupCount],
    start: u64,
    cursor: Option<&[u64]>,
) -> String {
    let mut out = String::new();
    for g in groups {
        out.push_str(&format!("{} {} ", g.cid, g.members));
        escape_field(&g.name, &mut out);
        out.push(' ');
        escape_field(&g.filter, &mut out);
        out.push_str(&format!(" {}\n", g.connected));
    }
    out.push_str(&format!("{START}{start}\n"));
    if let Some(cursor) = cursor {
        out.push_str(CURSOR);
        let seqs: Vec<String> = cursor.iter().map(u64::to_string).collect();
        out.push_str(&seqs.join(" "));
        out.push('\n');
    }
    out
}

/// A node's entry as (group hash, members, connected) per line, and its cursor. A line
/// without its connected count (an earlier writer) counts every member as connected.
pub(crate) fn decode_entry(value: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
    let mut groups = Vec::new();
    let mut cursor = None;
    let mut start = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix(START) {
            start = Some(
                rest.parse::<u64>()
                    .map_err(|e| format!("start {rest:?}: {e}"))?,
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix(CURSOR) {
            let seqs = rest
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().map_err(|e| format!("cursor {s:?}: {e}")))
                .collect::<Result<Vec<u64>, String>>()?;
            cursor = Some(seqs);
            continue;
        }
        let mut fields = line.split(' ');
        let (Some(cid), Some(members), Some(name), Some(filter), connected, None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(format!(
                "not `<cid> <members> <group> <filter> <connected>`: {line:?}"
            ));
        };
        let cid = cid
            .parse::<Cid>()
            .map_err(|e| format!("cid {cid:?}: {e}"))?;
        let members = members
            .parse::<u32>()
            .map_err(|e| format!("members {members:?}: {e}"))?;
        let connected = match connected {
            Some(c) => c
                .parse::<u32>()
                .map_err(|e| format!("connected {c:?}: {e}"))?,
            None => members,
        };
        let name = unescape(name, b'%');
        let filter = unescape(filter, b'%');
        groups.push((group_key(cid, &name, &filter), members, connected));
    }
    Ok(Entry {
        groups,
        cursor,
        start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(cid: Cid, name: &str, filter: &str, members: usize) -> SharedGroupCount {
        SharedGroupCount {
            cid,
            name: name.into(),
            filter: filter.into(),
            members,
            connected: members / 2,
        }
    }

    fn nm(node: u64, members: u32, connected: u32) -> NodeMembers {
        NodeMembers {
            node,
            members,
            connected,
        }
    }

    #[test]
    fn entries_round_trip_any_group_and_filter() {
        let groups = vec![
            count(1, "g", "a/+", 2),
            count(7, "g:1:2", "a b/%/\n/#", 1),
            count(u64::MAX, "тест", "/", 3),
        ];
        let expected: Vec<_> = groups
            .iter()
            .map(|g| {
                (
                    group_key(g.cid, &g.name, &g.filter),
                    g.members as u32,
                    g.connected as u32,
                )
            })
            .collect();
        let decoded = decode_entry(encode_entry(&groups, 5, None).as_bytes()).unwrap();
        assert_eq!(
            decoded,
            Entry {
                groups: expected.clone(),
                cursor: None,
                start: Some(5)
            }
        );
        let decoded = decode_entry(encode_entry(&groups, 6, Some(&[7, 0, 9])).as_bytes()).unwrap();
        assert_eq!(
            decoded,
            Entry {
                groups: expected,
                cursor: Some(vec![7, 0, 9]),
                start: Some(6)
            }
        );
        assert!(decode_entry(b"1 2 g\n").is_err());
        assert!(decode_entry(b"x 2 g f\n").is_err());
        assert!(decode_entry(b"cursor 1 x\n").is_err());
        assert!(decode_entry(b"start x\n").is_err());
        // An earlier writer's line: every member counts as connected.
        assert_eq!(
            decode_entry(b"1 2 g f\n").unwrap().groups,
            vec![(group_key(1, "g", "f"), 2, 2)]
        );
        assert_eq!(decode_entry(b"").unwrap(), Entry::default());
    }

    fn message(topic: &str, qos: tern_codec::QoS) -> Arc<Message> {
        Arc::new(Message::plain(
            1,
            topic,
            bytes::Bytes::from_static(b"x"),
            qos,
            1,
        ))
    }

    fn registry(shards: usize, limit: usize) -> ShareRegistry {
        let positions: Positions = (0..shards)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect();
        ShareRegistry::new("me", limit, positions, Arc::default())
    }

    fn chosen_for(node: u64) -> Vec<Chosen> {
        vec![Chosen {
            msg: 0,
            node,
            group: GroupInfo {
                key: group_key(1, "g", "t"),
                cid: 1,
                name: "g".into(),
                filter: "t".into(),
                mode: ShareMode::Random,
            },
        }]
    }

    /// What is kept for a node goes once its cursor passes it; what is past its cursor is not
    /// kept; a node that started again gets what was kept for its last process handed over;
    /// the limit holds.
    #[test]
    fn kept_messages_follow_the_nodes_cursor_and_start() {
        let r = registry(2, 4);
        let x = node_hash("x");
        let msg = message("t", tern_codec::QoS::AtLeastOnce);
        assert!(r.node_seen(x, Some(1), None).is_empty());
        for seq in 1..=3 {
            r.keep(0, seq, &msg, chosen_for(x));
        }
        r.keep(1, 1, &msg, chosen_for(x));
        r.keep(1, 2, &msg, chosen_for(x));
        assert_eq!(r.handover.lock().total, 4, "the limit");
        assert_eq!(r.metrics.dropped_share.load(Ordering::Relaxed), 1);
        assert!(r.node_seen(x, Some(1), Some(vec![2, 0])).is_empty());
        assert_eq!(r.handover.lock().total, 2, "shard 0 up to 2 is done");
        r.keep(0, 2, &msg, chosen_for(x));
        assert_eq!(r.handover.lock().total, 2, "past the cursor: not kept");
        assert_eq!(r.node_seen(x, Some(9), None).len(), 2, "x started again");
        assert_eq!(r.handover.lock().total, 0);
        r.keep(0, 1, &msg, chosen_for(x));
        assert_eq!(r.take_kept(x).len(), 1);
        assert_eq!(r.metrics.share_kept.load(Ordering::Relaxed), 0);
    }

    /// A message handed over to a node is kept for it until its cursor changed
    /// `HANDED_DONE` times, whatever positions the cursor names (the message's own position is
    /// older than its delivery there); a cursor written again unchanged does not count; if the
    /// node goes first, the message is handed over again.
    #[test]
    fn handed_over_messages_wait_for_cursor_changes() {
        let r = registry(1, 8);
        let y = node_hash("y");
        assert!(r.node_seen(y, Some(1), Some(vec![100])).is_empty());
        let kept = |msg| Kept {
            group: chosen_for(y).remove(0).group,
            msg,
        };
        assert!(r.keep_handed(y, kept(message("t", tern_codec::QoS::AtLeastOnce))));
        assert_eq!(r.handover.lock().total, 1);
        r.node_seen(y, Some(1), Some(vec![100]));
        assert_eq!(
            r.handover.lock().total,
            1,
            "an unchanged cursor does not count"
        );
        r.node_seen(y, Some(1), Some(vec![101]));
        r.node_seen(y, Some(1), Some(vec![102]));
        assert_eq!(r.handover.lock().total, 1, "two changes are not enough");
        r.node_seen(y, Some(1), Some(vec![103]));
        assert_eq!(r.handover.lock().total, 0, "done after the third");
        // Kept again, then the node goes: it is handed over once more.
        assert!(r.keep_handed(y, kept(message("t", tern_codec::QoS::AtLeastOnce))));
        assert_eq!(r.take_kept(y).len(), 1);
        assert_eq!(r.metrics.share_kept.load(Ordering::Relaxed), 0);
    }

    /// The cursor moves to the positions of a mark once every copy queued before it is done
    /// (held by nobody but the tracker).
    #[test]
    fn the_cursor_waits_for_the_copies_before_its_mark() {
        let r = registry(1, 8);
        r.positions[0].store(5, Ordering::Release);
        let copy = message("t", tern_codec::QoS::AtLeastOnce);
        r.delivering(&copy);
        assert_eq!(r.progress(), None, "the first mark is taken");
        r.positions[0].store(9, Ordering::Release);
        assert_eq!(r.progress(), None, "its copy is still queued");
        drop(copy);
        assert_eq!(r.progress(), Some(vec![5]));
        assert_eq!(
            r.progress(),
            Some(vec![9]),
            "nothing queued after the first mark"
        );
    }

    #[test]
    fn nodes_with_connected_members_are_chosen_first() {
        let (a, b, c) = (node_hash("a"), node_hash("b"), node_hash("c"));
        let group = group_key(1, "g", "t/#");
        // a: offline members only; b and c connected ones: a never gets a message.
        let view: Nodes = [nm(a, 5, 0), nm(b, 1, 1), nm(c, 2, 1)]
            .into_iter()
            .collect();
        let mut per = HashMap::new();
        for m in 0..2000u64 {
            *per.entry(choose(&view, group, m).unwrap()).or_insert(0u32) += 1;
        }
        assert!(!per.contains_key(&a), "{per:?}");
        // Weighted by connected members: 1:1.
        assert!((800..1200).contains(&per[&b]), "{per:?}");
        // Nobody connected: every node, by its members.
        let offline: Nodes = [nm(a, 1, 0), nm(b, 1, 0)].into_iter().collect();
        let chosen: std::collections::HashSet<_> = (0..200u64)
            .filter_map(|m| choose(&offline, group, m))
            .collect();
        assert_eq!(chosen.len(), 2);
    }

    #[test]
    fn node_keys_are_kv_keys_and_invert() {
        for node in ["tern-1", "a.b", "host name/1", "", "=", "тест"] {
            let key = node_key(node);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)),
                "{key}"
            );
            assert_eq!(unescape_node(&key), node);
        }
    }

    #[test]
    fn group_keys_tell_groups_apart() {
        assert_ne!(group_key(1, "a", "b/c"), group_key(1, "a/b", "c"));
        assert_ne!(group_key(1, "g", "t"), group_key(2, "g", "t"));
        assert_ne!(group_key(1, "g", "t"), group_key(1, "g:1", "t"));
    }

    #[test]
    fn sticky_keys_read_the_selected_levels_only() {
        let msg = |topic: &str, timestamp| {
            Message::plain(
                1,
                topic,
                bytes::Bytes::new(),
                tern_codec::QoS::AtMostOnce,
                timestamp,
            )
        };
        let sticky = ShareMode::Sticky { from: 0, count: 2 };
        assert_eq!(
            message_key(sticky, &msg("a/b/c", 1)),
            message_key(sticky, &msg("a/b/d", 2))
        );
        assert_ne!(
            message_key(sticky, &msg("a/b/c", 1)),
            message_key(sticky, &msg("a/x/c", 1))
        );
        assert_ne!(
            message_key(ShareMode::Random, &msg("a/b", 1)),
            message_key(ShareMode::Random, &msg("a/b", 2))
        );
    }

    #[test]
    fn rendezvous_spreads_by_weight_and_moves_only_what_it_must() {
        let (a, b, c) = (node_hash("a"), node_hash("b"), node_hash("c"));
        let group = group_key(1, "g", "t/#");
        let two: Nodes = [nm(a, 1, 1), nm(b, 1, 1)].into_iter().collect();
        let three: Nodes = [nm(a, 1, 1), nm(b, 1, 1), nm(c, 2, 2)]
            .into_iter()
            .collect();
        assert_eq!(choose(&[], group, 1), None);
        let mut per = HashMap::new();
        for m in 0..4000u64 {
            let before = choose(&two, group, m).unwrap();
            let after = choose(&three, group, m).unwrap();
            // A new node only takes messages; it never moves one between the others.
            assert!(after == before || after == c, "{m}");
            *per.entry(after).or_insert(0u32) += 1;
        }
        // Weights 1:1:2 (within a wide margin).
        assert!((800..1200).contains(&per[&a]), "{per:?}");
        assert!((800..1200).contains(&per[&b]), "{per:?}");
        assert!((1700..2300).contains(&per[&c]), "{per:?}");
        // The same view and key: the same node, whatever the order the nodes are listed in.
        let reversed: Nodes = three.iter().rev().copied().collect();
        for m in 0..100u64 {
            assert_eq!(choose(&three, group, m), choose(&reversed, group, m));
        }
    }

    #[test]
    fn the_view_counts_each_node_with_members() {
        let g = group_key(1, "g", "t");
        let a = vec![(g, 2, 1)];
        let b = vec![(g, 1, 1), (group_key(1, "h", "t"), 0, 0)];
        let view = build_view([("n=2E1", &a), ("n2", &b)].into_iter());
        assert_eq!(view.len(), 1, "a group without members is left out");
        let mut nodes = view[&g].to_vec();
        nodes.sort_unstable();
        let mut expected = vec![nm(node_hash("n.1"), 2, 1), nm(node_hash("n2"), 1, 1)];
        expected.sort_unstable();
        assert_eq!(nodes, expected);
    }
}
