//! Persistent sessions across nodes (issue 17; `scale-out.md` §3.3, §3.4): a session resumes
//! on whichever node its client connects to, and the will of a client whose node died is
//! published by another node.
//!
//! - **The record.** Every persistent session of a node has a record in the KV bucket
//!   `tern_sess` under `<acct>.<client id in hex>` ([`kv_key`]): the owning node, when its
//!   client connected there, whether it is connected, the session's own record (expiry,
//!   disconnected at, will, created, token) and subscriptions in `tern_store`'s encodings, and
//!   one **cursor** per shard stream, and the messages in flight to its client
//!   ([`InflightMark`]s). A node writes its sessions' records when their durable state changes
//!   ([`Fabric::session_changed`]) and, once a second ([`CHECKPOINT_EVERY`]), the cursors and
//!   in-flight lists of the sessions whose deliveries were sent or completed since
//!   ([`Fabric::deliveries_moved`]; an idle session is not read), each write a
//!   compare-and-set on the revision it last saw: a node
//!   that finds a newer owner's write there gives the session up (it was taken over while this
//!   node was cut off). Every node follows the bucket (a replica in memory).
//! - **The cursor** of shard `s` is a sequence of stream `TERN_Q_<s>` such that every QoS 1/2
//!   message at or below it that matched the session was completed (acknowledged by its
//!   client, or dropped): replaying the stream from the cursor on delivers everything the
//!   session may still owe, duplicates allowed. This node's shard readers publish how far they
//!   routed ([`Positions`]); a message published on this node was routed here before it was
//!   appended. So when, at some moment, the readers stood at `P` and the session's next
//!   delivery sequence was `tail`, every matching message up to `P` is among the session's
//!   deliveries before `tail`; once every delivery before `tail` is completed (the session's
//!   oldest pending one is at or past `tail`), `P` is a cursor. A checkpoint takes such
//!   candidates and promotes them as the session's acknowledgements catch up.
//! - **Resume elsewhere.** A client that connects with Clean Start 0 to a node that does not
//!   hold its session gets it made from the replica's record ([`Fabric::adopt`]): session
//!   present, its subscriptions, deliveries held; the node claims the record, waits until what
//!   it published itself is in the streams, replays each shard from the record's cursor to the
//!   stream's last sequence into the session, then releases the hold. Messages in flight on
//!   the old node are among those replayed: those the record lists go out again with DUP=1
//!   under their packet ids (known by their `timestamp` and account), the others as new
//!   deliveries. The old node, told by the connect notice, ends its copy.
//! - **REST on a session held elsewhere** ([`Fabric::change_remote`]): the node asks the
//!   session's owner on `tern.node.<name in hex>.cmd` to change its subscriptions
//!   ([`Broker::change_here`]); when no node holds it (its owner is dead, or answers that it
//!   does not have it), it changes the record itself, compare-and-set.
//! - **Node liveness and wills.** Every node writes a heartbeat to KV bucket `tern_nodes` each
//!   second. A record whose owner has not beaten for [`DEAD_AFTER`] (or this node's own record
//!   of a session it no longer holds, after a restart) is an orphan: any node marks it
//!   disconnected, publishes its will once its delay has passed, and deletes it once its
//!   session expired, each step a compare-and-set so one node does it.
//! - **At start**, a session restored from the node's own store is dropped if the cluster has
//!   a record of it (the record decides), and kept, its record written, if not (a node that
//!   ran alone before joins the cluster with its sessions).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tern_broker::fabric::{
    Adoption, ClusterSession, RemoteChange, RemoteOutcome, SessionCheckpoint, SessionImage,
};
use tern_broker::session::{InflightMark, Session, WillSpec};
use tern_broker::subscriptions::SubscribeError;
use tern_broker::{Broker, Fabric, Micros, SessionKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::nats::{ClusterMetrics, NatsFabric, open_reader, until_shutdown};

/// The KV bucket of persistent sessions.
pub const SESSIONS_BUCKET: &str = "tern_sess";
/// The KV bucket of node heartbeats.
pub const NODES_BUCKET: &str = "tern_nodes";
/// How often cursors are checkpointed and the janitor looks for orphans.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often a node writes its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is dead (microseconds).
pub const DEAD_AFTER: Micros = 3_000_000;
/// Cursor candidates kept per session: more pending ones wait for the oldest.
const CANDIDATES: usize = 8;
/// Session changes waiting for the writer; more set a full rescan.
const CHANGES: usize = 4096;
/// The version byte of a session record (1: without the in-flight list, still read).
const RECORD_VERSION: u8 = 3;

/// How far this node's reader of each shard stream has routed (the last sequence).
pub type Positions = Arc<[AtomicU64]>;

/// The KV key of a session: `<acct>.<client id in lowercase hex>` (a client id may hold any
/// character, so it is not spelled as subject tokens).
pub fn kv_key(key: &SessionKey) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(21 + 2 * key.client_id.len());
    let _ = write!(out, "{}.", key.cid);
    for b in key.client_id.as_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The session key of a KV key made by [`kv_key`].
pub fn parse_kv_key(text: &str) -> Result<SessionKey, String> {
    let (cid, hex) = text.split_once('.').ok_or("no client id")?;
    let cid = cid.parse::<u64>().map_err(|e| e.to_string())?;
    if hex.len() % 2 != 0 {
        return Err("odd hex length".into());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| e.to_string())?;
    let client_id = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    Ok(SessionKey {
        cid,
        client_id: client_id.into(),
    })
}

/// A session as the cluster keeps it (see the module).
#[derive(Debug, Clone)]
pub struct Record {
    pub owner: String,
    /// When its client's CONNECT was accepted on the owner (the owner's clock).
    pub at: Micros,
    pub connected: bool,
    /// Address and protocol level of its current or last connection (for REST).
    pub ip: String,
    pub protocol: u8,
    pub cursors: Vec<u64>,
    /// The QoS 1/2 messages in flight to its client at the last write, oldest first: a node
    /// that resumes the session sends them again with DUP=1 under these packet ids.
    pub inflight: Vec<InflightMark>,
    pub image: SessionImage,
}

impl Record {
    /// `version | owner | at | connected | ip | protocol | cursors | inflight |
    /// session record | subscriptions` (version 1 had no `inflight`; version 2 no `released`
    /// flag in it).
    pub fn encode(&self) -> Result<Bytes, String> {
        let session =
            tern_store::encode_session_record(&self.image.record).map_err(|e| e.to_string())?;
        let mut b =
            BytesMut::with_capacity(64 + session.len() + 32 * self.image.subscriptions.len());
        b.put_u8(RECORD_VERSION);
        put_bytes(&mut b, self.owner.as_bytes())?;
        b.put_u64(self.at);
        b.put_u8(u8::from(self.connected));
        put_bytes(&mut b, self.ip.as_bytes())?;
        b.put_u8(self.protocol);
        b.put_u32(u32::try_from(self.cursors.len()).map_err(|e| e.to_string())?);
        for c in &self.cursors {
            b.put_u64(*c);
        }
        b.put_u32(u32::try_from(self.inflight.len()).map_err(|e| e.to_string())?);
        for m in &self.inflight {
            b.put_u64(m.timestamp);
            b.put_u64(m.cid);
            b.put_u16(m.packet_id);
            b.put_u8(u8::from(m.released));
        }
        put_bytes(&mut b, &session)?;
        b.put_u32(u32::try_from(self.image.subscriptions.len()).map_err(|e| e.to_string())?);
        for sub in &self.image.subscriptions {
            put_bytes(&mut b, sub.filter.as_bytes())?;
            put_bytes(&mut b, &tern_store::encode_subscription_record(sub))?;
        }
        Ok(b.freeze())
    }

    /// The record of `key` from its value.
    pub fn decode(key: SessionKey, mut v: Bytes) -> Result<Record, String> {
        let version = get_u8(&mut v)?;
        if !(1..=RECORD_VERSION).contains(&version) {
            return Err("unknown session record version".into());
        }
        let owner = String::from_utf8(get_bytes(&mut v)?.to_vec()).map_err(|e| e.to_string())?;
        let at = get_u64(&mut v)?;
        let connected = get_u8(&mut v)? != 0;
        let ip = String::from_utf8(get_bytes(&mut v)?.to_vec()).map_err(|e| e.to_string())?;
        let protocol = get_u8(&mut v)?;
        let n = get_u32(&mut v)? as usize;
        if n > v.remaining() / 8 {
            return Err("cursor count past the end".into());
        }
        let cursors = (0..n).map(|_| get_u64(&mut v)).collect::<Result<_, _>>()?;
        let mut inflight = Vec::new();
        if version >= 2 {
            let n = get_u32(&mut v)? as usize;
            if n > v.remaining() / 18 {
                return Err("in-flight count past the end".into());
            }
            inflight.reserve(n);
            for _ in 0..n {
                inflight.push(InflightMark {
                    timestamp: get_u64(&mut v)?,
                    cid: get_u64(&mut v)?,
                    packet_id: get_u16(&mut v)?,
                    released: version >= 3 && get_u8(&mut v)? != 0,
                });
            }
        }
        let record = tern_store::decode_session_record(key, get_bytes(&mut v)?)
            .map_err(|e| e.to_string())?;
        let n = get_u32(&mut v)? as usize;
        if n > v.remaining() / 8 {
            return Err("subscription count past the end".into());
        }
        let mut subscriptions = Vec::with_capacity(n);
        for _ in 0..n {
            let filter =
                bytestring::ByteString::try_from(get_bytes(&mut v)?).map_err(|e| e.to_string())?;
            let sub = tern_store::decode_subscription_record(filter, get_bytes(&mut v)?)
                .map_err(|e| e.to_string())?;
            subscriptions.push(sub);
        }
        if v.has_remaining() {
            return Err("bytes after the session record".into());
        }
        Ok(Record {
            owner,
            at,
            connected,
            ip,
            protocol,
            cursors,
            inflight,
            image: SessionImage {
                record,
                subscriptions,
            },
        })
    }

    /// Whether its session expired by `now` (disconnected longer than its expiry interval).
    fn expired(&self, now: Micros) -> bool {
        let r = &self.image.record;
        match (self.connected, r.disconnected_at) {
            (false, Some(at)) if r.expiry_interval != u32::MAX => {
                at.saturating_add(u64::from(r.expiry_interval) * 1_000_000) <= now
            }
            _ => false,
        }
    }
}

fn put_bytes(b: &mut BytesMut, bytes: &[u8]) -> Result<(), String> {
    b.put_u32(u32::try_from(bytes.len()).map_err(|e| e.to_string())?);
    b.put_slice(bytes);
    Ok(())
}

fn need(v: &Bytes, n: usize) -> Result<(), String> {
    if v.remaining() < n {
        return Err("session record cut short".into());
    }
    Ok(())
}

fn get_u8(v: &mut Bytes) -> Result<u8, String> {
    need(v, 1)?;
    Ok(v.get_u8())
}

fn get_u16(v: &mut Bytes) -> Result<u16, String> {
    need(v, 2)?;
    Ok(v.get_u16())
}

fn get_u32(v: &mut Bytes) -> Result<u32, String> {
    need(v, 4)?;
    Ok(v.get_u32())
}

fn get_u64(v: &mut Bytes) -> Result<u64, String> {
    need(v, 8)?;
    Ok(v.get_u64())
}

fn get_bytes(v: &mut Bytes) -> Result<Bytes, String> {
    let n = get_u32(v)? as usize;
    need(v, n)?;
    Ok(v.split_to(n))
}

/// Where one of this node's sessions stands in the streams (see the module).
#[derive(Debug)]
struct Track {
    /// When its client connected here.
    at: Micros,
    /// The cursors the record holds.
    floor: Vec<u64>,
    /// `(tail, positions)`: positions that become the floor once the session's oldest pending
    /// delivery is at or past `tail`.
    candidates: VecDeque<(u64, Vec<u64>)>,
    /// The value last written (nothing to write while it is the same).
    written: Option<Bytes>,
}

/// A failed compare-and-set write.
enum WriteError {
    /// Someone else wrote the key since the revision this node saw.
    Conflict,
    Other(String),
}

/// Persistent sessions of the cluster as this node sees and keeps them (see the module).
pub(crate) struct Sessions {
    node: String,
    broker: Arc<Broker>,
    bucket: kv::Store,
    nodes: kv::Store,
    streams: Vec<jetstream::stream::Stream>,
    positions: Positions,
    fabric: Weak<NatsFabric>,
    /// The bucket as last seen: key → (revision, record).
    replica: parking_lot::Mutex<HashMap<String, (u64, Arc<Record>)>>,
    /// Node → its last heartbeat (its clock).
    heartbeats: parking_lot::Mutex<HashMap<String, Micros>>,
    tracked: parking_lot::Mutex<HashMap<SessionKey, Track>>,
    /// Sessions whose deliveries moved since the last checkpoint (the only ones it reads;
    /// at most one entry per session).
    moved: parking_lot::Mutex<HashSet<SessionKey>>,
    changes: mpsc::Sender<SessionKey>,
    /// The change queue overflowed: the next checkpoint writes every session's record.
    rescan: AtomicBool,
    /// Requests to this node (REST changes of its sessions made on other nodes).
    client: async_nats::Client,
    metrics: Arc<ClusterMetrics>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What [`Sessions::start`] needs.
pub(crate) struct SessionsSetup {
    pub node: String,
    pub broker: Arc<Broker>,
    pub bucket: kv::Store,
    pub nodes: kv::Store,
    pub streams: Vec<jetstream::stream::Stream>,
    pub positions: Positions,
    pub fabric: Weak<NatsFabric>,
    pub client: async_nats::Client,
    pub metrics: Arc<ClusterMetrics>,
}

impl Sessions {
    /// Loads the bucket into the replica (its current values), drops this node's own copies
    /// of sessions restored from its store (the cluster's records decide: a client resumes
    /// from them, and the janitor handles the wills of those not resumed), and starts the
    /// writer, the replica's watch, the heartbeat and the janitor.
    pub(crate) async fn start(
        setup: SessionsSetup,
        load_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Sessions>, String> {
        let (tx, rx) = mpsc::channel(CHANGES);
        let sessions = Arc::new(Sessions {
            node: setup.node,
            broker: setup.broker,
            bucket: setup.bucket,
            nodes: setup.nodes,
            streams: setup.streams,
            positions: setup.positions,
            fabric: setup.fabric,
            replica: parking_lot::Mutex::new(HashMap::new()),
            heartbeats: parking_lot::Mutex::new(HashMap::new()),
            tracked: parking_lot::Mutex::new(HashMap::new()),
            moved: parking_lot::Mutex::new(HashSet::new()),
            changes: tx,
            rescan: AtomicBool::new(false),
            client: setup.client,
            metrics: setup.metrics,
        });
        let commands = sessions
            .client
            .subscribe(command_subject(&sessions.node))
            .await
            .map_err(|e| format!("subscribe to the node's commands: {e}"))?;
        let watch = load(&sessions.bucket, load_timeout, |e| sessions.apply(e)).await?;
        let beats = load(&sessions.nodes, load_timeout, |e| sessions.beat(e)).await?;
        // The records decide where sessions live; a copy restored from this node's store may
        // be stale (taken over elsewhere) and misses what was published while it was down. A
        // session the cluster has no record of (this node ran alone before) is kept, and its
        // record written.
        let mut kept = Vec::new();
        for session in sessions.broker.sessions() {
            if !session.lock().stored {
                continue;
            }
            let known = sessions.replica.lock().contains_key(&kv_key(&session.key));
            if !known {
                kept.push(session.key.clone());
            } else if sessions.broker.forget_session(&session.key) {
                tracing::debug!(client_id = %session.key.client_id, cid = session.key.cid, "cluster: restored session left to the cluster's record");
            }
        }
        sessions.heartbeat().await;
        tokio::spawn(sessions.clone().run_writer(rx, shutdown.clone()));
        for key in kept {
            tracing::info!(client_id = %key.client_id, cid = key.cid, "cluster: a session of this node's store joins the cluster");
            sessions.changed(&key);
        }
        tokio::spawn(sessions.clone().run_watch(watch, beats, shutdown.clone()));
        tokio::spawn(sessions.clone().run_commands(commands, shutdown.clone()));
        tokio::spawn(sessions.clone().run_heartbeat(shutdown));
        Ok(sessions)
    }

    fn positions_now(&self) -> Vec<u64> {
        self.positions
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .collect()
    }

    /// See [`Fabric::session_changed`]: a session seen for the first time starts from the
    /// readers' positions now (it was just made: nothing before matched it).
    pub(crate) fn changed(&self, key: &SessionKey) {
        self.track(key);
        if self.changes.try_send(key.clone()).is_err() {
            // Full: the next checkpoint writes every session's record.
            self.metrics
                .dropped_sessions
                .fetch_add(1, Ordering::Relaxed);
            self.rescan.store(true, Ordering::Relaxed);
        }
    }

    /// Starts tracking `key`'s session if this node does not yet.
    fn track(&self, key: &SessionKey) {
        let mut tracked = self.tracked.lock();
        if !tracked.contains_key(key) {
            let floor = self.positions_now();
            tracked.insert(
                key.clone(),
                Track {
                    at: 0,
                    floor,
                    candidates: VecDeque::new(),
                    written: None,
                },
            );
        }
    }

    /// See [`Fabric::deliveries_moved`]: the next checkpoint reads the session.
    pub(crate) fn deliveries_moved(&self, key: &SessionKey) {
        self.moved.lock().insert(key.clone());
    }

    /// See [`Fabric::cluster_sessions`]: the replica's records of accounts `cids`.
    pub(crate) fn cluster_sessions(&self, cids: &[tern_broker::Cid]) -> Vec<ClusterSession> {
        self.replica
            .lock()
            .values()
            .filter(|(_, rec)| cids.contains(&rec.image.record.key.cid))
            .map(|(_, rec)| ClusterSession {
                image: rec.image.clone(),
                connected: rec.connected,
                ip: rec.ip.clone(),
                protocol: rec.protocol,
            })
            .collect()
    }

    /// See [`Fabric::remove_session`]: deletes the record as this node last saw it (its node,
    /// told by the removal notice, ends the session and deletes a newer one).
    pub(crate) fn remove(self: &Arc<Self>, key: &SessionKey) {
        let k = kv_key(key);
        let Some((rev, _)) = self.replica.lock().get(&k).cloned() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.delete_record(&k, rev).await;
        });
    }

    /// Deletes record `k` if it is still at revision `rev`; whether it was.
    async fn delete_record(&self, k: &str, rev: u64) -> bool {
        match self.bucket.delete_expect_revision(k, Some(rev)).await {
            Ok(()) => {
                self.replica.lock().remove(k);
                self.metrics.session_writes.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // Someone else wrote it since: theirs now.
                tracing::debug!(key = %k, error = %e, "cluster: session record not deleted");
                false
            }
        }
    }

    /// See [`Fabric::adopt`].
    pub(crate) fn adopt(self: &Arc<Self>, key: &SessionKey) -> Option<Adoption> {
        let k = kv_key(key);
        let (rev, rec) = self.replica.lock().get(&k).cloned()?;
        let now = self.broker.clock.now();
        if rec.expired(now) {
            return None;
        }
        self.tracked.lock().insert(
            key.clone(),
            Track {
                at: 0,
                floor: rec.cursors.clone(),
                candidates: VecDeque::new(),
                written: None,
            },
        );
        self.metrics
            .sessions_adopted
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(client_id = %key.client_id, cid = key.cid, from = %rec.owner, "cluster: session resumed from the cluster's record");
        let this = self.clone();
        let image = rec.image.clone();
        Some(Adoption {
            image,
            last_packet_id: rec.inflight.last().map_or(0, |m| m.packet_id),
            start: Box::new(move |session| {
                tokio::spawn(this.replay(session, rec, rev));
            }),
        })
    }

    /// Claims an adopted session's record, replays what it missed into it and releases its
    /// hold (see the module).
    async fn replay(self: Arc<Self>, session: Arc<Session>, rec: Arc<Record>, rev: u64) {
        let key = session.key.clone();
        let k = kv_key(&key);
        if let Some(view) = self.broker.session_image(&key) {
            let at = view.connected_at.unwrap_or(0);
            if let Some(t) = self.tracked.lock().get_mut(&key) {
                t.at = at;
            }
            let claim = Record {
                owner: self.node.clone(),
                at,
                connected: view.connected_at.is_some(),
                ip: view.ip,
                protocol: view.protocol,
                cursors: rec.cursors.clone(),
                // Still owed again with DUP: kept until this node's own checkpoint.
                inflight: rec.inflight.clone(),
                image: view.image,
            };
            // Lost to a newer claim: the session ended here. Not written (NATS errors): the
            // replay goes on, and the next checkpoint writes the record.
            if !self.claim(&key, &k, claim, rev).await && session.lock().ended {
                return;
            }
        }
        // What this node published before the session was indexed here is in the streams
        // first: the replay reaches it.
        if let Some(fabric) = self.fabric.upgrade() {
            let issued = fabric.issued();
            if issued > fabric.confirmed() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), fabric.wait_confirmed(issued))
                        .await;
            }
        }
        // What the former node had sent and not seen acknowledged goes out again with DUP=1,
        // under its packet id. What else it may have sent (published before its client left
        // it, or before this adoption when it died with the client connected: the record's
        // marks are up to a second old) goes out with DUP=1 under a new id; what was published
        // after the client left was never sent: DUP=0.
        let maybe_sent_until = if rec.connected {
            self.broker.clock.now()
        } else {
            rec.image.record.disconnected_at.unwrap_or(0)
        };
        let mut marks: HashMap<(Micros, tern_broker::Cid), (u16, bool)> = rec
            .inflight
            .iter()
            .map(|m| ((m.timestamp, m.cid), (m.packet_id, m.released)))
            .collect();
        let mut replayed = 0u64;
        for (shard, stream) in self.streams.iter().enumerate() {
            let from = rec.cursors.get(shard).copied().unwrap_or(0) + 1;
            match self
                .replay_shard(&session, stream, from, &mut marks, maybe_sent_until)
                .await
            {
                Ok(n) => replayed += n,
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(client_id = %key.client_id, shard, error = %e, "cluster: replay of a shard stream failed; the session may miss messages of it");
                }
            }
            if session.lock().ended {
                break;
            }
        }
        self.metrics
            .sessions_replayed
            .fetch_add(replayed, Ordering::Relaxed);
        self.broker.release_hold(&session);
        tracing::info!(client_id = %key.client_id, cid = key.cid, replayed, "cluster: session replay done");
        self.changed(&key);
    }

    /// Replays `stream` from sequence `from` to its last sequence now into `session`; returns
    /// how many messages were queued.
    async fn replay_shard(
        &self,
        session: &Arc<Session>,
        stream: &jetstream::stream::Stream,
        from: u64,
        marks: &mut HashMap<(Micros, tern_broker::Cid), (u16, bool)>,
        maybe_sent_until: Micros,
    ) -> Result<u64, String> {
        let mut stream = stream.clone();
        let last = tokio::time::timeout(Duration::from_secs(5), stream.info())
            .await
            .map_err(|_| "stream info timed out".to_string())?
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        if from > last {
            return Ok(0);
        }
        let mut messages = open_reader(&stream, from).await?;
        let mut queued = 0;
        loop {
            let msg = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => return Err("the replay consumer ended".into()),
                Err(_) => return Err("the replay consumer stalled".into()),
            };
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(last);
            match crate::nats::decode_on(&msg.subject, msg.payload.clone(), false) {
                Ok(m) => {
                    let dup = marks
                        .remove(&(m.timestamp, m.cid))
                        .or_else(|| (m.timestamp <= maybe_sent_until).then_some((0, false)));
                    if self.broker.route_replayed(session, &Arc::new(m), dup) {
                        queued += 1;
                    }
                }
                Err(e) => {
                    self.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cluster: undecodable message skipped in a replay");
                }
            }
            if seq >= last || session.lock().ended {
                return Ok(queued);
            }
            // A long backlog waits for the client, as publishers do.
            if session.is_congested() {
                let _ = tokio::time::timeout(Duration::from_secs(5), session.drained()).await;
            }
        }
    }

    /// Writes `record` over revision `rev`; on a conflict, gives the session up if the newer
    /// write is another node's with a later connection, else writes again over it.
    async fn claim(&self, key: &SessionKey, k: &str, record: Record, mut rev: u64) -> bool {
        let Ok(value) = record.encode() else {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        for _ in 0..3 {
            match self.write(k, value.clone(), Some(rev)).await {
                Ok(new) => {
                    self.wrote(key, k, new, record, value);
                    return true;
                }
                Err(WriteError::Conflict) => match self.fresh(k, key).await {
                    Some((_, other)) if other.owner != self.node && other.at > record.at => {
                        self.give_up(key, &other.owner);
                        return false;
                    }
                    Some((r, _)) => rev = r,
                    None => rev = 0,
                },
                Err(WriteError::Other(e)) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %k, error = %e, "cluster: session record write failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        false
    }

    /// `record` (encoded: `value`) is in the bucket at revision `rev`.
    fn wrote(&self, key: &SessionKey, k: &str, rev: u64, record: Record, value: Bytes) {
        self.replica
            .lock()
            .insert(k.to_string(), (rev, Arc::new(record)));
        if let Some(t) = self.tracked.lock().get_mut(key) {
            t.written = Some(value);
        }
    }

    /// The session went to `owner`: this node's copy ends.
    fn give_up(&self, key: &SessionKey, owner: &str) {
        self.tracked.lock().remove(key);
        if self.broker.forget_session(key) {
            self.metrics.sessions_lost.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client_id = %key.client_id, cid = key.cid, owner = %owner, "cluster: session owned by another node since; this node's copy ends");
        }
    }

    /// The record of `k` as the bucket has it now.
    async fn fresh(&self, k: &str, key: &SessionKey) -> Option<(u64, Arc<Record>)> {
        let entry = self.bucket.entry(k).await.ok()??;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let rec = Record::decode(key.clone(), entry.value).ok()?;
        Some((entry.revision, Arc::new(rec)))
    }

    /// A compare-and-set put: over revision `rev` (0: the key must not exist, or be deleted).
    async fn write(&self, k: &str, value: Bytes, rev: Option<u64>) -> Result<u64, WriteError> {
        let res = match rev {
            Some(0) | None => self.bucket.create(k, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    WriteError::Conflict
                } else {
                    WriteError::Other(e.to_string())
                }
            }),
            Some(rev) => self.bucket.update(k, value, rev).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    WriteError::Conflict
                } else {
                    WriteError::Other(e.to_string())
                }
            }),
        };
        if res.is_ok() {
            self.metrics.session_writes.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    /// Brings the record of `key` up to date with its session here (or deletes it: the session
    /// ended here, or a client connected here with Clean Start).
    async fn sync(&self, key: &SessionKey) {
        let k = kv_key(key);
        // The readers' positions before the session is read (see the module).
        let positions = self.positions_now();
        let Some(view) = self.broker.session_image(key) else {
            self.tracked.lock().remove(key);
            let Some((rev, rec)) = self.replica.lock().get(&k).cloned() else {
                return;
            };
            let here = self.broker.session(key).is_some_and(|s| s.is_connected());
            if rec.owner == self.node || here {
                self.delete_record(&k, rev).await;
            }
            return;
        };
        if view.holding {
            return;
        }
        // The cursors move with the write too: a session that received nothing since (the
        // checkpoint does not read it) starts a later resume from here, not from its last
        // acknowledgement.
        if let Some(t) = self.tracked.lock().get_mut(key) {
            advance(t, &view, &positions);
        }
        self.write_view(key, &k, view).await;
    }

    /// Writes the record of a session of this node if it changed.
    async fn write_view(&self, key: &SessionKey, k: &str, view: SessionCheckpoint) {
        let (record, value) = {
            let mut tracked = self.tracked.lock();
            let Some(t) = tracked.get_mut(key) else {
                return;
            };
            if let Some(at) = view.connected_at {
                t.at = at;
            }
            let record = Record {
                owner: self.node.clone(),
                at: t.at,
                connected: view.connected_at.is_some(),
                ip: view.ip,
                protocol: view.protocol,
                cursors: t.floor.clone(),
                inflight: view.inflight,
                image: view.image,
            };
            let Ok(value) = record.encode() else {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if t.written.as_ref() == Some(&value) {
                return;
            }
            (record, value)
        };
        let rev = self.replica.lock().get(k).map_or(0, |(rev, _)| *rev);
        match self.write(k, value.clone(), Some(rev)).await {
            Ok(new) => self.wrote(key, k, new, record, value),
            Err(WriteError::Conflict) => match self.fresh(k, key).await {
                Some((_, other)) if other.owner != self.node && other.at > record.at => {
                    self.give_up(key, &other.owner);
                }
                found => {
                    // Ours after all (or gone): the next checkpoint writes over it.
                    let mut replica = self.replica.lock();
                    match found {
                        Some((r, rec)) => {
                            replica.insert(k.to_string(), (r, rec));
                        }
                        None => {
                            replica.remove(k);
                        }
                    }
                }
            },
            Err(WriteError::Other(e)) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %k, error = %e, "cluster: session record write failed");
            }
        }
    }

    /// Moves the cursors of the sessions whose deliveries moved since the last checkpoint on
    /// as far as their acknowledgements allow, and writes the records that changed. A
    /// session whose deliveries did not move is not read: an idle one costs nothing (its
    /// cursor stays where its last acknowledgement left it, and a resume replays the stream
    /// from there).
    async fn checkpoint(&self) {
        // The readers' positions before any session is read (see the module).
        let positions = self.positions_now();
        if self.rescan.swap(false, Ordering::Relaxed) {
            // Changes were dropped: every session's record is brought up to date (here, not
            // through the queue, which may overflow again).
            for s in self.broker.sessions() {
                if s.lock().stored {
                    self.track(&s.key);
                    self.sync(&s.key).await;
                }
            }
        }
        let keys: Vec<SessionKey> = std::mem::take(&mut *self.moved.lock())
            .into_iter()
            .collect();
        for key in keys {
            // Read first in any case: deliveries that move from now on tell this node again.
            let view = self.broker.session_checkpoint(&key);
            if !self.tracked.lock().contains_key(&key) {
                continue;
            }
            let Some(view) = view else {
                self.sync(&key).await;
                continue;
            };
            if view.holding {
                // A replay runs: the next checkpoint looks again.
                self.moved.lock().insert(key);
                continue;
            }
            if let Some(t) = self.tracked.lock().get_mut(&key) {
                advance(t, &view, &positions);
            }
            self.write_view(&key, &kv_key(&key), view).await;
        }
    }

    async fn run_writer(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<SessionKey>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                key = rx.recv() => match key {
                    Some(key) => self.sync(&key).await,
                    None => return,
                },
                _ = tick.tick() => {
                    self.checkpoint().await;
                    self.janitor().await;
                }
                () = shutdown.cancelled() => {
                    // The last acknowledgements of a stopping node count.
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.checkpoint()).await;
                    return;
                }
            }
        }
    }

    /// One change of the sessions bucket into the replica.
    fn apply(&self, entry: kv::Entry) {
        let mut replica = self.replica.lock();
        match entry.operation {
            kv::Operation::Put => {
                let decoded =
                    parse_kv_key(&entry.key).and_then(|key| Record::decode(key, entry.value));
                match decoded {
                    Ok(rec) => {
                        let newer = replica
                            .get(&entry.key)
                            .is_none_or(|(rev, _)| *rev < entry.revision);
                        if newer {
                            replica.insert(entry.key, (entry.revision, Arc::new(rec)));
                        }
                    }
                    Err(e) => {
                        self.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %entry.key, error = %e, "cluster: undecodable session record skipped");
                    }
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                if replica
                    .get(&entry.key)
                    .is_some_and(|(rev, _)| *rev < entry.revision)
                {
                    replica.remove(&entry.key);
                }
            }
        }
    }

    /// One heartbeat into the liveness map.
    fn beat(&self, entry: kv::Entry) {
        let at = std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|t| t.parse::<Micros>().ok());
        let mut beats = self.heartbeats.lock();
        match (entry.operation, at) {
            (kv::Operation::Put, Some(at)) => {
                beats.insert(entry.key, at);
            }
            _ => {
                beats.remove(&entry.key);
            }
        }
    }

    async fn run_watch(
        self: Arc<Self>,
        mut sessions: kv::Watch,
        mut beats: kv::Watch,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                e = sessions.next() => match e {
                    Some(Ok(entry)) => self.apply(entry),
                    Some(Err(e)) => {
                        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cluster: sessions watch error");
                    }
                    None => return,
                },
                e = beats.next() => match e {
                    Some(Ok(entry)) => self.beat(entry),
                    Some(Err(e)) => {
                        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cluster: heartbeat watch error");
                    }
                    None => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn heartbeat(&self) {
        let now = self.broker.clock.now();
        if let Err(e) = self
            .nodes
            .put(&self.node, Bytes::from(now.to_string()))
            .await
        {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cluster: heartbeat not written");
        }
    }

    async fn run_heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while until_shutdown(async { Some(tick.tick().await) }, &shutdown)
            .await
            .is_some()
        {
            self.heartbeat().await;
        }
    }

    /// See [`Fabric::change_remote`]: asks the node that holds `key`'s session to apply
    /// `change`; when no node holds it (its node is dead, or does not have it), changes the
    /// record (compare-and-set: a node that claimed it meanwhile is asked instead).
    pub(crate) async fn change(
        self: Arc<Self>,
        key: SessionKey,
        change: RemoteChange,
    ) -> Vec<RemoteOutcome> {
        let n = change.len();
        let k = kv_key(&key);
        for _ in 0..3 {
            let Some((rev, rec)) = self.replica.lock().get(&k).cloned() else {
                // Gone meanwhile: as a single node answers for a session that ended.
                return vec![RemoteOutcome::Unchanged; n];
            };
            let now = self.broker.clock.now();
            if rec.owner != self.node && !self.dead(&rec.owner, now) {
                match self.ask(&rec.owner, &key, &change).await {
                    Ok(Some(outcomes)) if outcomes.len() == n => return outcomes,
                    Ok(Some(_)) => return vec![RemoteOutcome::Unanswered; n],
                    // Not held there (or its node is gone): the record changes.
                    Ok(None) | Err(AskError::NoResponders) => {}
                    Err(AskError::Failed(e)) => {
                        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(client_id = %key.client_id, node = %rec.owner, error = %e, "cluster: the node holding a session did not apply a REST change");
                        return vec![RemoteOutcome::Unanswered; n];
                    }
                }
            }
            let mut next = (*rec).clone();
            let outcomes = change_record(&mut next, &change, &|sub, existing, replaces| {
                let RemoteChange::Subscribe { token_id, .. } = &change else {
                    return None;
                };
                self.broker
                    .check_record_subscription(key.cid, sub, *token_id, existing, replaces)
            });
            let Ok(value) = next.encode() else {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                return vec![RemoteOutcome::Unanswered; n];
            };
            match self.write(&k, value, Some(rev)).await {
                Ok(new) => {
                    self.replica.lock().insert(k, (new, Arc::new(next)));
                    tracing::info!(client_id = %key.client_id, cid = key.cid, "cluster: REST changed the record of a session no node holds");
                    return outcomes;
                }
                Err(WriteError::Conflict) => {
                    let found = self.fresh(&k, &key).await;
                    let mut replica = self.replica.lock();
                    match found {
                        Some(found) => replica.insert(k.clone(), found),
                        None => replica.remove(&k),
                    };
                }
                Err(WriteError::Other(e)) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %k, error = %e, "cluster: session record write failed");
                    return vec![RemoteOutcome::Unanswered; n];
                }
            }
        }
        vec![RemoteOutcome::Unanswered; n]
    }

    /// Asks node `node` to apply `change` to `key`'s session: its outcomes, or `None` if
    /// it does not hold the session.
    async fn ask(
        &self,
        node: &str,
        key: &SessionKey,
        change: &RemoteChange,
    ) -> Result<Option<Vec<RemoteOutcome>>, AskError> {
        let payload = encode_change(key, change).map_err(AskError::Failed)?;
        let request = self.client.request(command_subject(node), payload);
        match tokio::time::timeout(ASK_TIMEOUT, request).await {
            Err(_) => Err(AskError::Failed(format!(
                "no answer within {ASK_TIMEOUT:?}"
            ))),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(AskError::NoResponders)
            }
            Ok(Err(e)) => Err(AskError::Failed(e.to_string())),
            Ok(Ok(msg)) => decode_answer(msg.payload).map_err(AskError::Failed),
        }
    }

    /// Applies the changes other nodes' REST asks for to this node's sessions, and answers.
    async fn run_commands(
        self: Arc<Self>,
        mut commands: async_nats::Subscriber,
        shutdown: CancellationToken,
    ) {
        while let Some(msg) = until_shutdown(commands.next(), &shutdown).await {
            let Some(reply) = msg.reply else {
                continue;
            };
            let (key, change) = match decode_change(msg.payload) {
                Ok(decoded) => decoded,
                Err(e) => {
                    self.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cluster: undecodable session change skipped");
                    continue;
                }
            };
            let outcomes = self.broker.change_here(&key, &change);
            if outcomes.is_some() {
                tracing::info!(client_id = %key.client_id, cid = key.cid, "cluster: a session of this node changed over REST on another node");
            }
            if let Err(e) = self
                .client
                .publish(reply, encode_answer(outcomes.as_deref()))
                .await
            {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster: answer to a session change not sent");
            }
        }
    }

    /// The nodes beating now (this one included), sorted.
    pub(crate) fn live_nodes(&self) -> Vec<String> {
        let now = self.broker.clock.now();
        let mut live: Vec<String> = self
            .heartbeats
            .lock()
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) <= DEAD_AFTER)
            .map(|(name, _)| name.clone())
            .collect();
        if !live.contains(&self.node) {
            live.push(self.node.clone());
        }
        live.sort_unstable();
        live
    }

    /// Whether node `name` stopped beating.
    fn dead(&self, name: &str, now: Micros) -> bool {
        self.heartbeats
            .lock()
            .get(name)
            .is_none_or(|at| now.saturating_sub(*at) > DEAD_AFTER)
    }

    /// Takes care of orphaned records (see the module): marks them disconnected, publishes
    /// their wills when due and deletes them when their session expired.
    async fn janitor(&self) {
        let now = self.broker.clock.now();
        let orphans: Vec<(String, u64, Arc<Record>)> = {
            let replica = self.replica.lock();
            let tracked = self.tracked.lock();
            replica
                .iter()
                .filter(|(k, (_, rec))| {
                    if rec.owner == self.node {
                        parse_kv_key(k).is_ok_and(|key| {
                            !tracked.contains_key(&key) && self.broker.session(&key).is_none()
                        })
                    } else {
                        self.dead(&rec.owner, now)
                    }
                })
                .map(|(k, (rev, rec))| (k.clone(), *rev, rec.clone()))
                .collect()
        };
        for (k, rev, rec) in orphans {
            let r = &rec.image.record;
            if rec.connected {
                // Its node died with the client connected: disconnected now.
                let mut next = (*rec).clone();
                next.connected = false;
                next.image.record.disconnected_at = Some(now);
                self.rewrite(&k, rev, next).await;
                continue;
            }
            if rec.expired(now) {
                if self.delete_record(&k, rev).await
                    && let Some((msg, delay)) = &r.will
                {
                    self.publish_will(msg.clone(), *delay, r.token_id, &rec);
                }
                continue;
            }
            if let (Some((msg, delay)), Some(at)) = (&r.will, r.disconnected_at)
                && at.saturating_add(u64::from(*delay) * 1_000_000) <= now
            {
                let mut next = (*rec).clone();
                next.image.record.will = None;
                if self.rewrite(&k, rev, next).await {
                    self.publish_will(msg.clone(), *delay, r.token_id, &rec);
                }
            }
        }
    }

    /// A compare-and-set rewrite of an orphan's record; whether this node won.
    async fn rewrite(&self, k: &str, rev: u64, rec: Record) -> bool {
        let Ok(value) = rec.encode() else {
            return false;
        };
        match self.write(k, value, Some(rev)).await {
            Ok(new) => {
                self.replica
                    .lock()
                    .insert(k.to_string(), (new, Arc::new(rec)));
                true
            }
            Err(_) => false,
        }
    }

    fn publish_will(
        &self,
        message: Arc<tern_broker::Message>,
        delay: u32,
        token_id: Option<u64>,
        rec: &Record,
    ) {
        self.metrics.wills_published.fetch_add(1, Ordering::Relaxed);
        tracing::info!(client_id = %rec.image.record.key.client_id, owner = %rec.owner, topic = %message.topic, "cluster: will of a client whose node is gone published");
        self.broker.publish_will(WillSpec {
            message,
            delay,
            token_id,
        });
    }
}

/// How long REST waits for the node that holds a session to apply a change.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// The subject of requests to node `node`: `tern.node.<its name in lowercase hex>.cmd` (a
/// node name may hold dots).
pub(crate) fn command_subject(node: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(14 + 2 * node.len());
    out.push_str("tern.node.");
    for b in node.as_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out.push_str(".cmd");
    out
}

/// A change request: `op | session key | items`, op 1 (subscribe: `token flag | token |
/// count | (filter, subscription record)*`) or 2 (unsubscribe: `count | filter*`).
fn encode_change(key: &SessionKey, change: &RemoteChange) -> Result<Bytes, String> {
    let mut b = BytesMut::with_capacity(64 + 64 * change.len());
    let count = |n: usize| u32::try_from(n).map_err(|e| e.to_string());
    match change {
        RemoteChange::Subscribe {
            subscriptions,
            token_id,
        } => {
            b.put_u8(1);
            put_bytes(&mut b, kv_key(key).as_bytes())?;
            b.put_u8(u8::from(token_id.is_some()));
            b.put_u64(token_id.unwrap_or(0));
            b.put_u32(count(subscriptions.len())?);
            for sub in subscriptions {
                put_bytes(&mut b, sub.filter.as_bytes())?;
                put_bytes(&mut b, &tern_store::encode_subscription_record(sub))?;
            }
        }
        RemoteChange::Unsubscribe { filters } => {
            b.put_u8(2);
            put_bytes(&mut b, kv_key(key).as_bytes())?;
            b.put_u32(count(filters.len())?);
            for f in filters {
                put_bytes(&mut b, f.as_bytes())?;
            }
        }
    }
    Ok(b.freeze())
}

fn decode_change(mut v: Bytes) -> Result<(SessionKey, RemoteChange), String> {
    let op = get_u8(&mut v)?;
    let key = std::str::from_utf8(&get_bytes(&mut v)?)
        .map_err(|e| e.to_string())
        .and_then(parse_kv_key)?;
    let filter =
        |v: &mut Bytes| bytestring::ByteString::try_from(get_bytes(v)?).map_err(|e| e.to_string());
    let change = match op {
        1 => {
            let has_token = get_u8(&mut v)? != 0;
            let token = get_u64(&mut v)?;
            let n = get_u32(&mut v)? as usize;
            if n > v.remaining() / 8 {
                return Err("subscription count past the end".into());
            }
            let mut subscriptions = Vec::with_capacity(n);
            for _ in 0..n {
                let f = filter(&mut v)?;
                subscriptions.push(
                    tern_store::decode_subscription_record(f, get_bytes(&mut v)?)
                        .map_err(|e| e.to_string())?,
                );
            }
            RemoteChange::Subscribe {
                subscriptions,
                token_id: has_token.then_some(token),
            }
        }
        2 => {
            let n = get_u32(&mut v)? as usize;
            if n > v.remaining() / 4 {
                return Err("filter count past the end".into());
            }
            let filters = (0..n).map(|_| filter(&mut v)).collect::<Result<_, _>>()?;
            RemoteChange::Unsubscribe { filters }
        }
        _ => return Err("unknown change".into()),
    };
    if v.has_remaining() {
        return Err("bytes after the change".into());
    }
    Ok((key, change))
}

/// The answer to a change: `1` (the session is not here), or `0 | count | outcome*`.
fn encode_answer(outcomes: Option<&[RemoteOutcome]>) -> Bytes {
    let Some(outcomes) = outcomes else {
        return Bytes::from_static(&[1]);
    };
    let mut b = BytesMut::with_capacity(5 + outcomes.len());
    b.put_u8(0);
    b.put_u32(outcomes.len() as u32);
    for o in outcomes {
        b.put_u8(match o {
            RemoteOutcome::Done => 0,
            RemoteOutcome::Unchanged => 1,
            RemoteOutcome::Invalid => 2,
            RemoteOutcome::Unanswered => 3,
            RemoteOutcome::Refused(SubscribeError::NotAuthorized) => 10,
            RemoteOutcome::Refused(SubscribeError::QuotaExceeded) => 11,
            RemoteOutcome::Refused(SubscribeError::StoreRefusing) => 12,
            RemoteOutcome::Refused(SubscribeError::TakenOver) => 13,
        });
    }
    b.freeze()
}

fn decode_answer(mut v: Bytes) -> Result<Option<Vec<RemoteOutcome>>, String> {
    if get_u8(&mut v)? == 1 {
        return Ok(None);
    }
    let n = get_u32(&mut v)? as usize;
    need(&v, n)?;
    let outcomes = (0..n)
        .map(|_| match v.get_u8() {
            0 => Ok(RemoteOutcome::Done),
            1 => Ok(RemoteOutcome::Unchanged),
            2 => Ok(RemoteOutcome::Invalid),
            3 => Ok(RemoteOutcome::Unanswered),
            10 => Ok(RemoteOutcome::Refused(SubscribeError::NotAuthorized)),
            11 => Ok(RemoteOutcome::Refused(SubscribeError::QuotaExceeded)),
            12 => Ok(RemoteOutcome::Refused(SubscribeError::StoreRefusing)),
            13 => Ok(RemoteOutcome::Refused(SubscribeError::TakenOver)),
            other => Err(format!("unknown outcome {other}")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(outcomes))
}

/// What refuses a subscription added to a record (`existing` subscriptions in it, `replaces`:
/// one of them has its key): an outcome, or `None` to add it.
type RecordCheck<'a> =
    dyn Fn(&tern_store::SubscriptionRecord, usize, bool) -> Option<RemoteOutcome> + 'a;

/// Applies a change to a record no node holds (as the node would: a subscription replaces
/// the one with its key; `check` refuses what the node's REST would); the outcome of each
/// item.
fn change_record(
    rec: &mut Record,
    change: &RemoteChange,
    check: &RecordCheck<'_>,
) -> Vec<RemoteOutcome> {
    let subs = &mut rec.image.subscriptions;
    let outcomes = match change {
        RemoteChange::Subscribe { subscriptions, .. } => subscriptions
            .iter()
            .map(|sub| {
                let replaces = subs.iter().any(|s| s.filter == sub.filter);
                if let Some(refused) = check(sub, subs.len(), replaces) {
                    return refused;
                }
                subs.retain(|s| s.filter != sub.filter);
                subs.push(sub.clone());
                RemoteOutcome::Done
            })
            .collect(),
        RemoteChange::Unsubscribe { filters } => filters
            .iter()
            .map(|f| {
                let before = subs.len();
                subs.retain(|s| s.filter != *f);
                if subs.len() < before {
                    RemoteOutcome::Done
                } else {
                    RemoteOutcome::Unchanged
                }
            })
            .collect(),
    };
    subs.sort_by(|a, b| a.filter.cmp(&b.filter));
    outcomes
}

/// Why a node did not answer a change.
enum AskError {
    /// Nobody listens on its subject: the node is gone.
    NoResponders,
    Failed(String),
}

/// Promotes the candidates the session's acknowledgements reached, and adds `positions` as a
/// new candidate (or as the floor when nothing is pending).
fn advance(t: &mut Track, view: &SessionCheckpoint, positions: &[u64]) {
    while let Some((tail, p)) = t.candidates.front() {
        if view.low < *tail {
            break;
        }
        t.floor = p.clone();
        t.candidates.pop_front();
    }
    if view.low >= view.tail {
        t.floor = positions.to_vec();
        t.candidates.clear();
        return;
    }
    let room = t.candidates.len() < CANDIDATES;
    match t.candidates.back_mut() {
        // Nothing was pushed since: the later positions hold for the same tail.
        Some((tail, p)) if *tail == view.tail => *p = positions.to_vec(),
        _ if room => t.candidates.push_back((view.tail, positions.to_vec())),
        _ => {}
    }
}

/// Loads a bucket's current values through `apply` (its watch with history, until the last
/// one of the snapshot) and returns the watch, which goes on with the changes.
async fn load(
    bucket: &kv::Store,
    timeout: Duration,
    mut apply: impl FnMut(kv::Entry),
) -> Result<kv::Watch, String> {
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| format!("watch: {e}"))?;
    let stored = bucket
        .status()
        .await
        .map(|s| s.values())
        .map_err(|e| format!("status: {e}"))?;
    if stored == 0 {
        return Ok(watch);
    }
    loop {
        match tokio::time::timeout(timeout, watch.next()).await {
            Ok(Some(Ok(entry))) => {
                let last = entry.delta == 0;
                apply(entry);
                if last {
                    return Ok(watch);
                }
            }
            Ok(Some(Err(e))) => return Err(format!("watch: {e}")),
            Ok(None) => return Ok(watch),
            Err(_) => return Err(format!("the bucket did not load within {timeout:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_store::{SessionRecord, SubscriptionRecord};

    fn key(id: &str) -> SessionKey {
        SessionKey {
            cid: 7,
            client_id: id.into(),
        }
    }

    #[test]
    fn kv_keys_round_trip_any_client_id() {
        for id in ["", "a", "a.b*>#+ /ü", "tern-0123"] {
            let k = kv_key(&key(id));
            assert!(k.starts_with("7."));
            assert!(!k[2..].contains('.'));
            assert_eq!(parse_kv_key(&k).unwrap(), key(id));
        }
        assert!(parse_kv_key("x.00").is_err());
        assert!(parse_kv_key("7.0").is_err());
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let rec = Record {
            owner: "n1".into(),
            at: 42,
            connected: true,
            ip: "10.0.0.1".into(),
            protocol: 5,
            cursors: vec![1, 0, 99],
            inflight: vec![
                InflightMark {
                    timestamp: 1_700_000_000_000_001,
                    cid: 7,
                    packet_id: 65535,
                    released: false,
                },
                InflightMark {
                    timestamp: 1_700_000_000_000_002,
                    cid: 7,
                    packet_id: 1,
                    released: true,
                },
            ],
            image: SessionImage {
                record: SessionRecord {
                    key: key("c"),
                    expiry_interval: 600,
                    disconnected_at: Some(5),
                    will: None,
                    created: 3,
                    token_id: Some(9),
                },
                subscriptions: vec![SubscriptionRecord {
                    filter: "a/#".into(),
                    options: Default::default(),
                    id: Some(4),
                }],
            },
        };
        let v = rec.encode().unwrap();
        let back = Record::decode(key("c"), v.clone()).unwrap();
        assert_eq!(back.owner, "n1");
        assert_eq!((back.at, back.connected), (42, true));
        assert_eq!((back.ip.as_str(), back.protocol), ("10.0.0.1", 5));
        assert_eq!(back.cursors, vec![1, 0, 99]);
        assert_eq!(back.inflight, rec.inflight);
        assert_eq!(back.image.record, rec.image.record);
        assert_eq!(back.image.subscriptions, rec.image.subscriptions);
        for cut in 0..v.len() {
            assert!(
                Record::decode(key("c"), v.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = v.to_vec();
        longer.push(0);
        assert!(Record::decode(key("c"), Bytes::from(longer)).is_err());
    }

    #[test]
    fn version_1_records_still_decode() {
        let rec = Record {
            owner: "n1".into(),
            at: 1,
            connected: false,
            ip: String::new(),
            protocol: 4,
            cursors: vec![3],
            inflight: Vec::new(),
            image: view(0, 0).image,
        };
        let v2 = rec.encode().unwrap();
        // Version 1: the same without the in-flight count.
        let cut = 1 + 4 + 2 + 8 + 1 + 4 + 1 + 4 + 8;
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&v2[1..cut]);
        v1.extend_from_slice(&v2[cut + 4..]);
        let back = Record::decode(key("c"), Bytes::from(v1)).unwrap();
        assert_eq!(back.cursors, vec![3]);
        assert!(back.inflight.is_empty());
        assert_eq!(back.image.record, rec.image.record);
    }

    fn sub(filter: &str, qos: u8) -> SubscriptionRecord {
        SubscriptionRecord {
            filter: filter.into(),
            options: tern_codec::SubscriptionOptions {
                qos: tern_codec::QoS::from_u8(qos).unwrap(),
                ..Default::default()
            },
            id: None,
        }
    }

    #[test]
    fn changes_and_answers_round_trip() {
        let changes = [
            RemoteChange::Subscribe {
                subscriptions: vec![sub("a/#", 1), sub("$share/g/b\0cid=5", 0)],
                token_id: Some(12),
            },
            RemoteChange::Subscribe {
                subscriptions: Vec::new(),
                token_id: None,
            },
            RemoteChange::Unsubscribe {
                filters: vec!["a/#".into(), "x".into()],
            },
        ];
        for change in changes {
            let v = encode_change(&key("c.d"), &change).unwrap();
            let (k, back) = decode_change(v.clone()).unwrap();
            assert_eq!(k, key("c.d"));
            assert_eq!(back, change);
            for cut in 0..v.len() {
                assert!(decode_change(v.slice(..cut)).is_err(), "cut at {cut}");
            }
        }
        let outcomes = [
            RemoteOutcome::Done,
            RemoteOutcome::Unchanged,
            RemoteOutcome::Invalid,
            RemoteOutcome::Unanswered,
            RemoteOutcome::Refused(SubscribeError::NotAuthorized),
            RemoteOutcome::Refused(SubscribeError::QuotaExceeded),
            RemoteOutcome::Refused(SubscribeError::StoreRefusing),
            RemoteOutcome::Refused(SubscribeError::TakenOver),
        ];
        let back = decode_answer(encode_answer(Some(&outcomes))).unwrap();
        assert_eq!(back.as_deref(), Some(&outcomes[..]));
        assert_eq!(decode_answer(encode_answer(None)).unwrap(), None);
        assert!(decode_answer(Bytes::from_static(&[0, 0, 0, 0, 2, 0])).is_err());
        assert_eq!(command_subject("n.1"), "tern.node.6e2e31.cmd");
    }

    #[test]
    fn a_record_no_node_holds_changes_as_its_node_would() {
        let mut rec = Record {
            owner: "gone".into(),
            at: 1,
            connected: false,
            ip: String::new(),
            protocol: 5,
            cursors: vec![],
            inflight: Vec::new(),
            image: view(0, 0).image,
        };
        rec.image.subscriptions = vec![sub("b", 0)];
        let any = |_: &tern_store::SubscriptionRecord, _: usize, _: bool| None;
        let added = change_record(
            &mut rec,
            &RemoteChange::Subscribe {
                subscriptions: vec![sub("a", 1), sub("b", 2)],
                token_id: None,
            },
            &any,
        );
        assert_eq!(added, vec![RemoteOutcome::Done; 2]);
        assert_eq!(rec.image.subscriptions, vec![sub("a", 1), sub("b", 2)]);
        // What the node's REST refuses is not added: here a new one past two per session.
        let full = |_: &tern_store::SubscriptionRecord, existing: usize, replaces: bool| {
            (!replaces && existing >= 2)
                .then_some(RemoteOutcome::Refused(SubscribeError::QuotaExceeded))
        };
        let refused = change_record(
            &mut rec,
            &RemoteChange::Subscribe {
                subscriptions: vec![sub("c", 1), sub("a", 0)],
                token_id: None,
            },
            &full,
        );
        assert_eq!(
            refused,
            vec![
                RemoteOutcome::Refused(SubscribeError::QuotaExceeded),
                RemoteOutcome::Done
            ]
        );
        assert_eq!(rec.image.subscriptions, vec![sub("a", 0), sub("b", 2)]);
        let removed = change_record(
            &mut rec,
            &RemoteChange::Unsubscribe {
                filters: vec!["b".into(), "c".into()],
            },
            &any,
        );
        assert_eq!(removed, vec![RemoteOutcome::Done, RemoteOutcome::Unchanged]);
        assert_eq!(rec.image.subscriptions, vec![sub("a", 0)]);
    }

    fn view(low: u64, tail: u64) -> SessionCheckpoint {
        SessionCheckpoint {
            image: SessionImage {
                record: SessionRecord {
                    key: key("c"),
                    expiry_interval: 0,
                    disconnected_at: None,
                    will: None,
                    created: 0,
                    token_id: None,
                },
                subscriptions: Vec::new(),
            },
            connected_at: None,
            low,
            tail,
            holding: false,
            inflight: Vec::new(),
            ip: String::new(),
            protocol: 4,
        }
    }

    #[test]
    fn cursors_move_only_past_completed_deliveries() {
        let mut t = Track {
            at: 0,
            floor: vec![10],
            candidates: VecDeque::new(),
            written: None,
        };
        // Deliveries 1..5 pending: positions 20 wait for them.
        advance(&mut t, &view(1, 5), &[20]);
        assert_eq!(t.floor, vec![10]);
        // Nothing new pushed: the same candidate takes the later positions.
        advance(&mut t, &view(2, 5), &[25]);
        assert_eq!(t.floor, vec![10]);
        assert_eq!(t.candidates.len(), 1);
        // 5..8 pushed, 1..4 still not all done.
        advance(&mut t, &view(4, 8), &[30]);
        assert_eq!(t.floor, vec![10]);
        // Everything before 5 done: the first candidate is the floor.
        advance(&mut t, &view(6, 8), &[31]);
        assert_eq!(t.floor, vec![25]);
        // Nothing pending: the positions now.
        advance(&mut t, &view(9, 9), &[40]);
        assert_eq!(t.floor, vec![40]);
        assert!(t.candidates.is_empty());
    }
}
