//! Accounts and tokens across the cluster (issue 17, `scale-out.md` §3.1, §3.6): what one node
//! changes is in force on every node within the time a KV write takes to go round.
//!
//! - The bucket `tern_cfg` (JetStream KV, history 1) holds every account under `acct.<cid>` and
//!   every token under `token.<id>`: the directory's JSON document after one line naming the
//!   node (and its start) that wrote it. A deleted one is a KV delete.
//! - Out: the directory hands every change made on this node to [`CfgReplica`]
//!   (`tern_broker::accounts::DirectoryReplica`), which `try_send`s it into a bounded queue
//!   (`[cluster] queue`); one task writes the queue to the bucket in order (retried with
//!   back-off: while NATS is away until it is back, otherwise [`WRITE_TRIES`] times). Full:
//!   the change is dropped, counted (`tern_cluster_dropped{queue="cfg"}`) and logged; the other
//!   nodes miss it until the next change of that account or token.
//! - In: before the node's listeners open, the bucket's current values are loaded (a watch
//!   with history) and applied to the directory and the store; then what only this node has
//!   (its own bootstrap, or accounts from before cluster mode) is added to the bucket with a
//!   KV create (a key with a value or a delete marker is the cluster's, and wins). The watch
//!   then follows the bucket: each change of another node is applied
//!   (`Directory::apply_remote`, not handed back out) and has the effect a local change has
//!   (tokens deleted, disabled or narrowed and accounts disabled: their connections end with
//!   0x87; accounts deleted: their sessions and retained messages go).
//! - Order: every node applies the bucket in its order, so all end with its last value. While
//!   this node's own write of a key is on its way, what the watch brings of that key from
//!   before it is skipped (the own write comes later and wins; applying the older value would
//!   undo a change for a moment and end connections for nothing).
//! - Ids: `ids.account` and `ids.token` hold the highest id any node reserved. A node reserves
//!   [`ID_BLOCK`] ids at a time with a compare-and-set (KV update on the revision read; a
//!   conflict is retried), above every id it knows, and hands them out from memory; the next
//!   block is reserved in the background when [`ID_LOW`] are left. No two nodes get the same
//!   id. Without ids left (NATS out of reach for long), creations are refused.
//!   Keys are 64 characters from each node's CSPRNG; a key given explicitly to two new tokens
//!   on two nodes at once opens the one with the lower id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tern_broker::Broker;
use tern_broker::accounts::{Directory, DirectoryChange, DirectoryReplica, IdKind, RemoteEffect};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::nats::{ClusterError, ClusterMetrics, kv_bucket, retry_until, until_shutdown};

/// The KV bucket of accounts and tokens.
pub const CFG_BUCKET: &str = "tern_cfg";

/// Ids a node reserves at a time.
pub const ID_BLOCK: u64 = 1024;

/// Ids left at which the next block is reserved.
pub const ID_LOW: u64 = 512;

/// How often a write to the bucket is tried before it is given up (logged, counted).
pub const WRITE_TRIES: u32 = 8;

/// What the cfg part of [`crate::start`] needs.
pub(crate) struct CfgStart<'a> {
    pub js: &'a jetstream::Context,
    pub broker: Arc<Broker>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<ClusterMetrics>,
    pub node: &'a str,
    pub replicas: usize,
    pub queue: usize,
    pub setup_until: tokio::time::Instant,
    pub connect_timeout: Duration,
    pub shutdown: CancellationToken,
    /// Woken when the account tree changes (the QoS 0 interest follows it: `nats.rs`).
    pub interest: Arc<Notify>,
}

/// Sets up the bucket, loads it into the directory, adds what only this node has, reserves
/// ids, installs the replica in the directory and starts the writer, the watch and the id
/// reservations.
pub(crate) async fn start(s: CfgStart<'_>) -> Result<Arc<CfgReplica>, ClusterError> {
    let bucket = retry_until(s.setup_until, "the config bucket", || {
        kv_bucket(s.js, CFG_BUCKET, "tern: accounts and tokens", s.replicas)
    })
    .await?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let origin = format!("{}-{started}", s.node.replace('\n', " "));
    let (tx, rx) = mpsc::channel(s.queue.max(1));
    let replica = Arc::new(CfgReplica {
        tx,
        origin,
        pending: parking_lot::Mutex::new(HashMap::new()),
        ids: parking_lot::Mutex::new(HashMap::new()),
        refill: Notify::new(),
        metrics: s.metrics.clone(),
        deleted: std::sync::OnceLock::new(),
        interest: s.interest.clone(),
    });

    // Everything the cluster has, before any client connects or any REST call is answered.
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| ClusterError::Nats(format!("watch of {CFG_BUCKET}: {e}")))?;
    let stored = bucket
        .status()
        .await
        .map(|st| st.values())
        .map_err(|e| ClusterError::Nats(format!("status of {CFG_BUCKET}: {e}")))?;
    let mut seen = HashSet::new();
    if stored > 0 {
        loop {
            match tokio::time::timeout(s.connect_timeout, watch.next()).await {
                Ok(Some(Ok(entry))) => {
                    let last = entry.delta == 0;
                    seen.insert(entry.key.clone());
                    replica.apply(&s.broker, &s.directory, entry);
                    if last {
                        break;
                    }
                }
                Ok(Some(Err(e))) => return Err(ClusterError::Nats(format!("config watch: {e}"))),
                Ok(None) => break,
                Err(_) => {
                    return Err(ClusterError::Nats(format!(
                        "the accounts and tokens did not load within {:?}",
                        s.connect_timeout
                    )));
                }
            }
        }
    }
    // What only this node has: its bootstrap (top account, master token, anonymous account)
    // or what it had before cluster mode. A create fails when another node wrote the key in
    // the meantime: the watch brings that one.
    let mut added = 0u64;
    for change in s.directory.all_changes() {
        let (key, value) = replica.record(&change);
        if seen.contains(&key) {
            continue;
        }
        let Some(value) = value else { continue };
        match bucket.create(&key, value).await {
            Ok(_) => {
                added += 1;
                s.metrics.cfg_written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) => {}
            Err(e) => {
                s.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %key, error = %e, "cluster: this node's own account or token not added to the config bucket");
            }
        }
    }
    // The first ids, so that a creation right after start has one.
    let (accounts, tokens) = s.directory.max_ids();
    for (kind, floor) in [(IdKind::Account, accounts), (IdKind::Token, tokens)] {
        let block = retry_until(s.setup_until, "an id block", || {
            reserve(&bucket, kind, floor)
        })
        .await?;
        replica.add_ids(kind, block);
    }
    tracing::info!(
        node = %s.node,
        loaded = seen.len(),
        added,
        "cluster: accounts and tokens loaded"
    );
    s.directory.set_replica(replica.clone());

    tokio::spawn(run_writer(
        bucket.clone(),
        rx,
        replica.clone(),
        s.shutdown.clone(),
    ));
    tokio::spawn(run_ids(
        bucket.clone(),
        replica.clone(),
        s.directory.clone(),
        s.shutdown.clone(),
    ));
    tokio::spawn(run_watch(
        s.broker,
        s.directory,
        watch,
        replica.clone(),
        s.shutdown,
    ));
    Ok(replica)
}

/// A key of the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Account(u64),
    Token(u64),
    /// `ids.*`: the id reservations.
    Ids,
}

fn parse_key(key: &str) -> Option<Key> {
    if let Some(cid) = key.strip_prefix("acct.") {
        return cid.parse().ok().map(Key::Account);
    }
    if let Some(id) = key.strip_prefix("token.") {
        return id.parse().ok().map(Key::Token);
    }
    key.starts_with("ids.").then_some(Key::Ids)
}

fn ids_key(kind: IdKind) -> &'static str {
    match kind {
        IdKind::Account => "ids.account",
        IdKind::Token => "ids.token",
    }
}

/// `origin \n json`: what a put writes.
fn envelope(origin: &str, json: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(origin.len() + 1 + json.len());
    b.put_slice(origin.as_bytes());
    b.put_u8(b'\n');
    b.put_slice(json);
    b.freeze()
}

/// The origin and the document of a put.
fn open_envelope(value: &Bytes) -> Option<(&[u8], Bytes)> {
    let nl = value.iter().position(|&b| b == b'\n')?;
    Some((&value[..nl], value.slice(nl + 1..)))
}

/// A change for the writer: the key, and the value of a put (`None`: a delete).
#[derive(Debug)]
struct Write {
    key: String,
    value: Option<Bytes>,
}

/// This node's side of the bucket (see the module).
#[derive(Debug)]
pub struct CfgReplica {
    tx: mpsc::Sender<Write>,
    /// This node and its start: the first line of what it writes.
    origin: String,
    /// Keys with own writes queued or on their way, and how many.
    pending: parking_lot::Mutex<HashMap<String, u32>>,
    /// Reserved ids not handed out yet: blocks of each kind (the next and the last id), in the
    /// order they were reserved.
    ids: parking_lot::Mutex<HashMap<IdKind, VecDeque<(u64, u64)>>>,
    /// Wakes the id reservation task.
    refill: Notify,
    metrics: Arc<ClusterMetrics>,
    /// Called with the accounts another node deleted (set once).
    deleted: std::sync::OnceLock<DeletedHook>,
    /// Woken at every account change (`CfgStart::interest`).
    interest: Arc<Notify>,
}

/// What else goes with accounts another node deleted (the daemon's devices layer).
pub struct DeletedHook(pub Box<DeletedFn>);

/// Called with the ids of the deleted accounts.
pub type DeletedFn = dyn Fn(&[u64]) + Send + Sync;

impl std::fmt::Debug for DeletedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeletedHook")
    }
}

impl DirectoryReplica for CfgReplica {
    fn changed(&self, change: DirectoryChange) {
        if matches!(
            change,
            DirectoryChange::Account { .. } | DirectoryChange::DelAccount(_)
        ) {
            self.interest.notify_one();
        }
        let (key, value) = self.record(&change);
        // Counted as pending before it can be written (and come back), uncounted if dropped.
        let mut pending = self.pending.lock();
        *pending.entry(key.clone()).or_insert(0) += 1;
        if self
            .tx
            .try_send(Write {
                key: key.clone(),
                value,
            })
            .is_err()
        {
            unpend(&mut pending, &key);
            drop(pending);
            self.metrics.dropped_cfg.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = %key, "cluster: config queue full, change not sent to the other nodes");
        }
    }

    fn new_id(&self, kind: IdKind) -> Option<u64> {
        let mut ids = self.ids.lock();
        let blocks = ids.entry(kind).or_default();
        let id = match blocks.front_mut() {
            Some((next, last)) => {
                let id = *next;
                *next += 1;
                if *next > *last {
                    blocks.pop_front();
                }
                Some(id)
            }
            None => None,
        };
        let low = left(blocks) <= ID_LOW;
        drop(ids);
        if low {
            self.refill.notify_one();
        }
        id
    }
}

impl CfgReplica {
    /// Installs what is called with the accounts another node deleted, after their sessions
    /// and retained messages went (once; later calls are refused: `false`).
    pub fn on_accounts_deleted(&self, hook: DeletedHook) -> bool {
        self.deleted.set(hook).is_ok()
    }

    /// The key and the value (`None`: a delete) of a change.
    fn record(&self, change: &DirectoryChange) -> (String, Option<Bytes>) {
        match change {
            DirectoryChange::Account { cid, json } => {
                (format!("acct.{cid}"), Some(envelope(&self.origin, json)))
            }
            DirectoryChange::Token { id, json } => {
                (format!("token.{id}"), Some(envelope(&self.origin, json)))
            }
            DirectoryChange::DelAccount(cid) => (format!("acct.{cid}"), None),
            DirectoryChange::DelToken(id) => (format!("token.{id}"), None),
        }
    }

    /// A block of reserved ids, handed out after what is left of the earlier ones.
    fn add_ids(&self, kind: IdKind, block: (u64, u64)) {
        if block.0 <= block.1 {
            self.ids.lock().entry(kind).or_default().push_back(block);
        }
        self.metrics.cfg_id_blocks.fetch_add(1, Ordering::Relaxed);
    }

    /// Ids of `kind` left.
    fn ids_left(&self, kind: IdKind) -> u64 {
        self.ids.lock().get(&kind).map_or(0, left)
    }

    /// Whether an entry of `key` (`own`: written by this node, as far as can be told) is to be
    /// applied: not while an own write of the key is still to come, which is later in the
    /// bucket's order and wins. A delete carries no origin: while an own write of the key is
    /// on its way, a delete is taken for it (deletes are final: a later own put still wins).
    fn takes(&self, key: &str, own: bool) -> bool {
        let mut pending = self.pending.lock();
        if pending.get(key).is_none_or(|n| *n == 0) {
            return true;
        }
        own && unpend(&mut pending, key) == 0
    }

    /// Applies one entry of the bucket to the directory, and its effect to the broker.
    fn apply(&self, broker: &Broker, directory: &Directory, entry: kv::Entry) {
        let Some(key) = parse_key(&entry.key) else {
            self.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %entry.key, "cluster: unknown key in the config bucket skipped");
            return;
        };
        if key == Key::Ids {
            // The id reservations: read by `reserve`, nothing to apply.
            return;
        }
        let (own, change) = if entry.operation == kv::Operation::Put {
            let Some((origin, json)) = open_envelope(&entry.value) else {
                self.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %entry.key, "cluster: config entry without its origin skipped");
                return;
            };
            let own = origin == self.origin.as_bytes();
            match key {
                Key::Account(cid) => (own, DirectoryChange::Account { cid, json }),
                Key::Token(id) => (own, DirectoryChange::Token { id, json }),
                Key::Ids => return,
            }
        } else {
            match key {
                Key::Account(cid) => (true, DirectoryChange::DelAccount(cid)),
                Key::Token(id) => (true, DirectoryChange::DelToken(id)),
                Key::Ids => return,
            }
        };
        if !self.takes(&entry.key, own) {
            return;
        }
        let account = match &change {
            DirectoryChange::Account { cid, .. } => Some(*cid),
            _ => None,
        };
        match directory.apply_remote(change) {
            Ok(effect) => {
                if let Some(cid) = account {
                    // Its namespace may exist already (a retained message came first).
                    broker.relink_namespace(cid);
                }
                if effect.changed {
                    self.metrics.cfg_applied.fetch_add(1, Ordering::Relaxed);
                    self.interest.notify_one();
                }
                act(broker, &effect);
                if !effect.deleted_accounts.is_empty()
                    && let Some(hook) = self.deleted.get()
                {
                    (hook.0)(&effect.deleted_accounts);
                }
            }
            Err(e) => {
                self.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %entry.key, error = %e, "cluster: config entry not applied");
            }
        }
    }
}

/// Ids left in `blocks`.
fn left(blocks: &VecDeque<(u64, u64)>) -> u64 {
    blocks
        .iter()
        .map(|(next, last)| (last + 1).saturating_sub(*next))
        .sum()
}

/// One pending write of `key` fewer; what is left.
fn unpend(pending: &mut HashMap<String, u32>, key: &str) -> u32 {
    let Some(n) = pending.get_mut(key) else {
        return 0;
    };
    *n = n.saturating_sub(1);
    let left = *n;
    if left == 0 {
        pending.remove(key);
    }
    left
}

/// What a local change makes the REST handlers do, done for a remote one.
fn act(broker: &Broker, effect: &RemoteEffect) {
    if !effect.revoke_tokens.is_empty() {
        let ids: HashSet<u64> = effect.revoke_tokens.iter().copied().collect();
        let n = broker.revoke_tokens(&ids);
        if n > 0 {
            tracing::info!(tokens = ?effect.revoke_tokens, connections = n, "cluster: token changed on another node: disconnected");
        }
    }
    if !effect.revoke_accounts.is_empty() {
        broker.revoke_accounts(&effect.revoke_accounts);
    }
    if !effect.deleted_accounts.is_empty() {
        broker.purge_accounts(&effect.deleted_accounts);
    }
}

/// Reserves the next block of ids of `kind` above `floor` (compare-and-set on `ids.<kind>`;
/// a conflict with another node is tried again). Returns the first and the last id.
async fn reserve(bucket: &kv::Store, kind: IdKind, floor: u64) -> Result<(u64, u64), ClusterError> {
    reserve_key(bucket, ids_key(kind).to_string(), floor).await
}

/// Reserves the next block of ids above `floor` under `key` of `bucket` (compare-and-set; a
/// conflict with another node is tried again). Returns the first and the last id.
pub(crate) async fn reserve_key(
    bucket: &kv::Store,
    key: String,
    floor: u64,
) -> Result<(u64, u64), ClusterError> {
    let key = key.as_str();
    for _ in 0..32 {
        let entry = bucket
            .entry(key)
            .await
            .map_err(|e| ClusterError::Nats(format!("read {key}: {e}")))?;
        let current = entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                std::str::from_utf8(&e.value)
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        let first = current.unwrap_or(0).max(floor) + 1;
        let last = first + ID_BLOCK - 1;
        let value = Bytes::from(last.to_string());
        let done = match &entry {
            Some(e) => bucket.update(key, value, e.revision).await.is_ok(),
            None => bucket.create(key, value).await.is_ok(),
        };
        if done {
            return Ok((first, last));
        }
    }
    Err(ClusterError::Nats(format!(
        "{key}: other nodes kept reserving at the same time"
    )))
}

/// Reserves the next block of a kind whenever few of its ids are left.
async fn run_ids(
    bucket: kv::Store,
    replica: Arc<CfgReplica>,
    directory: Arc<Directory>,
    shutdown: CancellationToken,
) {
    loop {
        for kind in [IdKind::Account, IdKind::Token] {
            let mut wait = Duration::from_millis(100);
            while replica.ids_left(kind) <= ID_LOW {
                let (accounts, tokens) = directory.max_ids();
                let floor = if kind == IdKind::Account {
                    accounts
                } else {
                    tokens
                };
                match reserve(&bucket, kind, floor).await {
                    Ok(block) => replica.add_ids(kind, block),
                    Err(e) => {
                        replica.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cluster: reserving ids failed, retrying");
                        if until_shutdown(
                            async {
                                tokio::time::sleep(wait).await;
                                Some(())
                            },
                            &shutdown,
                        )
                        .await
                        .is_none()
                        {
                            return;
                        }
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        let woken = async {
            replica.refill.notified().await;
            Some(())
        };
        if until_shutdown(woken, &shutdown).await.is_none() {
            return;
        }
    }
}

/// Writes this node's changes to the bucket, in order.
async fn run_writer(
    bucket: kv::Store,
    mut rx: mpsc::Receiver<Write>,
    replica: Arc<CfgReplica>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(w) = until_shutdown(rx.recv(), &shutdown).await else {
            return;
        };
        let mut wait = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            let res = match &w.value {
                Some(v) => bucket
                    .put(&w.key, v.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => bucket.delete(&w.key).await.map_err(|e| e.to_string()),
            };
            tries += 1;
            match res {
                Ok(()) => {
                    replica.metrics.cfg_written.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Without NATS, the write waits for it (the changes behind it queue up, bounded);
                // with NATS, a write that keeps failing is given up.
                Err(e)
                    if (tries < WRITE_TRIES
                        || !replica.metrics.connected.load(Ordering::Relaxed))
                        && !shutdown.is_cancelled() =>
                {
                    tracing::warn!(key = %w.key, error = %e, "cluster: config write failed, retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    replica.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(key = %w.key, error = %e, "cluster: config write failed, given up: the other nodes miss this change");
                    // Nothing of it will come back.
                    unpend(&mut replica.pending.lock(), &w.key);
                    break;
                }
            }
        }
    }
}

/// Applies the other nodes' changes as the bucket's watch brings them.
async fn run_watch(
    broker: Arc<Broker>,
    directory: Arc<Directory>,
    mut watch: kv::Watch,
    replica: Arc<CfgReplica>,
    shutdown: CancellationToken,
) {
    loop {
        match until_shutdown(watch.next(), &shutdown).await {
            None => {
                if !shutdown.is_cancelled() {
                    replica.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "cluster: the config watch ended: changes of other nodes no longer arrive"
                    );
                }
                return;
            }
            Some(Ok(entry)) => replica.apply(&broker, &directory, entry),
            Some(Err(e)) => {
                replica.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster: config watch error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        assert_eq!(parse_key("acct.12"), Some(Key::Account(12)));
        assert_eq!(parse_key("token.7"), Some(Key::Token(7)));
        assert_eq!(parse_key("ids.token"), Some(Key::Ids));
        assert_eq!(parse_key("acct.x"), None);
        assert_eq!(parse_key("other"), None);
    }

    #[test]
    fn envelopes_round_trip() {
        let v = envelope("n1-5", br#"{"id":1}"#);
        let (origin, json) = open_envelope(&v).unwrap();
        assert_eq!(origin, b"n1-5");
        assert_eq!(&json[..], br#"{"id":1}"#);
        assert!(open_envelope(&Bytes::from_static(b"no line")).is_none());
    }

    fn replica(queue: usize) -> (Arc<CfgReplica>, mpsc::Receiver<Write>) {
        let (tx, rx) = mpsc::channel(queue);
        let r = Arc::new(CfgReplica {
            tx,
            origin: "n1-1".into(),
            pending: parking_lot::Mutex::new(HashMap::new()),
            ids: parking_lot::Mutex::new(HashMap::new()),
            refill: Notify::new(),
            metrics: Arc::new(ClusterMetrics::default()),
            deleted: std::sync::OnceLock::new(),
            interest: Arc::new(Notify::new()),
        });
        (r, rx)
    }

    #[test]
    fn ids_come_from_the_reserved_block_only() {
        let (r, _rx) = replica(1);
        assert_eq!(r.new_id(IdKind::Token), None, "nothing reserved yet");
        r.add_ids(IdKind::Token, (100, 102));
        r.add_ids(IdKind::Token, (200, 200));
        assert_eq!(r.ids_left(IdKind::Token), 4);
        assert_eq!(r.new_id(IdKind::Token), Some(100));
        assert_eq!(r.new_id(IdKind::Token), Some(101));
        assert_eq!(r.new_id(IdKind::Token), Some(102));
        assert_eq!(r.new_id(IdKind::Token), Some(200), "then the next block");
        assert_eq!(r.new_id(IdKind::Token), None, "the blocks are used up");
        assert_eq!(r.ids_left(IdKind::Token), 0);
        assert_eq!(
            r.new_id(IdKind::Account),
            None,
            "kinds have their own blocks"
        );
    }

    /// Node 1 writes a token twice while node 2 writes it once in between: node 1 skips what
    /// comes before its last write (its own first write, node 2's) and applies its last one,
    /// the bucket's last value; without pending writes everything is applied.
    #[test]
    fn entries_before_an_own_write_still_to_come_are_skipped() {
        let (r, _rx) = replica(8);
        let json = Bytes::from_static(b"{}");
        let put = DirectoryChange::Token {
            id: 5,
            json: json.clone(),
        };
        r.changed(put.clone());
        r.changed(put);
        assert!(
            !r.takes("token.5", true),
            "own first write: a later one is coming"
        );
        assert!(
            !r.takes("token.5", false),
            "node 2's: older than the own one to come"
        );
        assert!(
            r.takes("token.5", true),
            "own last write: applied (the same value)"
        );
        assert!(
            r.takes("token.5", false),
            "nothing pending: node 2's next one applies"
        );
        assert!(r.takes("token.6", false));
        // A delete on its way: a delete coming back is taken for it.
        r.changed(DirectoryChange::DelToken(7));
        assert!(r.takes("token.7", true));
        assert!(r.pending.lock().is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_leaves_nothing_pending() {
        let (r, mut rx) = replica(1);
        r.changed(DirectoryChange::DelToken(1));
        r.changed(DirectoryChange::DelToken(2));
        assert_eq!(r.metrics.dropped_cfg.load(Ordering::Relaxed), 1);
        assert_eq!(r.pending.lock().get("token.1"), Some(&1));
        assert_eq!(r.pending.lock().get("token.2"), None);
        let w = rx.try_recv().unwrap();
        assert_eq!((w.key.as_str(), w.value), ("token.1", None));
    }
}
