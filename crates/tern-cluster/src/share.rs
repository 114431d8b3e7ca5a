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
//! - A group that matched here but that the view does not know yet (its first members joined
//!   less than a moment ago) is delivered here: until every node has seen the registry, such a
//!   group may get a message once per node that has members.

use std::collections::HashMap;
use std::sync::Arc;
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

use crate::nats::ClusterError;

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

/// The nodes with members of one group: (node hash, members), by node hash.
type Nodes = SmallVec<[(u64, u32); 4]>;

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
}

impl ShareRegistry {
    fn new(node: &str) -> ShareRegistry {
        ShareRegistry {
            node: node.to_string(),
            node_hash: node_hash(node),
            view: RwLock::new(Arc::new(HashMap::new())),
            dirty: Notify::new(),
        }
    }

    /// Whether this node delivers `msg`'s copy for `group` (a group with members here that
    /// `msg` matched).
    pub fn here(&self, group: &ShareGroupRef<'_>, msg: &Message) -> bool {
        let key = group_key(group.cid, group.name, group.filter);
        let view = self.view.read();
        match view.get(&key) {
            // Not known to the cluster yet: deliver here (see the module).
            None => true,
            Some(nodes) => choose(nodes, key, message_key(group.mode, msg)) == Some(self.node_hash),
        }
    }

    /// This node's groups changed: the writer writes them soon. Never blocks.
    pub fn changed(&self) {
        self.dirty.notify_one();
    }
}

/// Opens (creates on first use) the bucket, loads what it holds into the view and starts the
/// writer and the watcher (ended by `shutdown`).
pub(crate) async fn start(
    js: &jetstream::Context,
    broker: Arc<Broker>,
    node: &str,
    replicas: usize,
    shutdown: CancellationToken,
) -> Result<Arc<ShareRegistry>, ClusterError> {
    let bucket = share_bucket(js, replicas).await?;
    let registry = Arc::new(ShareRegistry::new(node));
    let watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| ClusterError::Nats(format!("watch of {SHARE_BUCKET}: {e}")))?;
    tokio::spawn(run_watch(
        registry.clone(),
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
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = beat.tick() => {}
            () = registry.dirty.notified() => {
                tokio::select! {
                    () = tokio::time::sleep(SETTLE) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
        let mut groups = broker.shared_groups();
        if groups.is_empty() {
            if written {
                written = bucket.delete(&key).await.is_err();
            }
            continue;
        }
        groups.sort_unstable();
        let value = encode_entry(&groups);
        match bucket.put(&key, value.into()).await {
            Ok(_) => written = true,
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
    bucket: kv::Store,
    mut watch: kv::Watch,
    shutdown: CancellationToken,
) {
    let mut entries: HashMap<String, (Instant, Vec<(u64, u32)>)> = HashMap::new();
    let mut expiry = tokio::time::interval(STALE_AFTER / 8);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
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
                        Ok(groups) => {
                            let old = entries.insert(entry.key, (Instant::now(), groups.clone()));
                            old.is_none_or(|(_, g)| g != groups)
                        }
                        Err(e) => {
                            tracing::warn!(key = %entry.key, error = %e, "cluster: undecodable $share entry skipped");
                            entries.remove(&entry.key).is_some()
                        }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => {
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
    }
}

/// The view from every node's entry: (node key, its groups as (group hash, members)).
fn build_view<'a>(
    entries: impl Iterator<Item = (&'a str, &'a Vec<(u64, u32)>)>,
) -> HashMap<u64, Nodes> {
    let mut view: HashMap<u64, Nodes> = HashMap::new();
    for (key, groups) in entries {
        let node = node_hash(&unescape_node(key));
        for &(group, members) in groups {
            if members > 0 {
                view.entry(group).or_default().push((node, members));
            }
        }
    }
    for nodes in view.values_mut() {
        nodes.sort_unstable();
    }
    view
}

/// The node that delivers the message with key `msg` of group `group`: the highest weighted
/// rendezvous score (ties: the higher node hash). `None` without nodes.
pub(crate) fn choose(nodes: &[(u64, u32)], group: u64, msg: u64) -> Option<u64> {
    let base = mix(group ^ mix(msg));
    nodes
        .iter()
        .map(|&(node, members)| {
            // A uniform value in (0, 1) per node; ln(u) / w is the largest for a node with
            // probability proportional to its weight w.
            let u = ((mix(base ^ node) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (u.ln() / f64::from(members.max(1)), node)
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
        ShareMode::Sticky { from, count } => fnv1a(
            FNV_OFFSET ^ 1,
            selected_levels(&msg.topic, from as usize, count as usize).as_bytes(),
        ),
    }
}

/// The text of levels `from..from + count` of `topic` (fewer if the topic is shorter).
fn selected_levels(topic: &str, from: usize, count: usize) -> &str {
    if count == 0 {
        return "";
    }
    let mut levels = topic.split('/');
    let Some(first) = levels.nth(from) else {
        return "";
    };
    // The byte offset of the first selected level, then the end of the last one.
    let start = first.as_ptr() as usize - topic.as_ptr() as usize;
    let mut end = start + first.len();
    for level in levels.take(count - 1) {
        end = level.as_ptr() as usize - topic.as_ptr() as usize + level.len();
    }
    topic.get(start..end).unwrap_or("")
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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// splitmix64's finalizer: every input bit moves every output bit.
fn mix(mut h: u64) -> u64 {
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

/// A node's entry: one line per group, `<cid> <members> <group> <filter>`.
pub(crate) fn encode_entry(groups: &[SharedGroupCount]) -> String {
    let mut out = String::new();
    for g in groups {
        out.push_str(&format!("{} {} ", g.cid, g.members));
        escape_field(&g.name, &mut out);
        out.push(' ');
        escape_field(&g.filter, &mut out);
        out.push('\n');
    }
    out
}

/// A node's entry as (group hash, members) per line.
pub(crate) fn decode_entry(value: &[u8]) -> Result<Vec<(u64, u32)>, String> {
    let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
    let mut groups = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split(' ');
        let (Some(cid), Some(members), Some(name), Some(filter), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(format!("not `<cid> <members> <group> <filter>`: {line:?}"));
        };
        let cid = cid
            .parse::<Cid>()
            .map_err(|e| format!("cid {cid:?}: {e}"))?;
        let members = members
            .parse::<u32>()
            .map_err(|e| format!("members {members:?}: {e}"))?;
        let name = unescape(name, b'%');
        let filter = unescape(filter, b'%');
        groups.push((group_key(cid, &name, &filter), members));
    }
    Ok(groups)
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
        }
    }

    #[test]
    fn entries_round_trip_any_group_and_filter() {
        let groups = vec![
            count(1, "g", "a/+", 2),
            count(7, "g:1:2", "a b/%/\n/#", 1),
            count(u64::MAX, "тест", "/", 3),
        ];
        let decoded = decode_entry(encode_entry(&groups).as_bytes()).unwrap();
        let expected: Vec<_> = groups
            .iter()
            .map(|g| (group_key(g.cid, &g.name, &g.filter), g.members as u32))
            .collect();
        assert_eq!(decoded, expected);
        assert!(decode_entry(b"1 2 g\n").is_err());
        assert!(decode_entry(b"x 2 g f\n").is_err());
        assert_eq!(decode_entry(b"").unwrap(), vec![]);
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
        assert_eq!(selected_levels("a/b/c/d", 0, 2), "a/b");
        assert_eq!(selected_levels("a/b/c/d", 1, 2), "b/c");
        assert_eq!(selected_levels("a/b/c/d", 3, 5), "d");
        assert_eq!(selected_levels("a/b", 2, 1), "");
        assert_eq!(selected_levels("a/b", 0, 0), "");
        assert_eq!(selected_levels("/x", 0, 1), "");
        let msg = |topic: &str, timestamp| Message {
            topic: topic.into(),
            payload: bytes::Bytes::new(),
            qos: tern_codec::QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            cid: 1,
            timestamp,
            expires_at: None,
            origin: None,
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
        let two: Nodes = [(a, 1), (b, 1)].into_iter().collect();
        let three: Nodes = [(a, 1), (b, 1), (c, 2)].into_iter().collect();
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
        let a = vec![(g, 2)];
        let b = vec![(g, 1), (group_key(1, "h", "t"), 0)];
        let view = build_view([("n=2E1", &a), ("n2", &b)].into_iter());
        assert_eq!(view.len(), 1, "a group without members is left out");
        let mut nodes = view[&g].to_vec();
        nodes.sort_unstable();
        let mut expected = vec![(node_hash("n.1"), 2), (node_hash("n2"), 1)];
        expected.sort_unstable();
        assert_eq!(nodes, expected);
    }
}
