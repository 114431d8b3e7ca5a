//! The NATS side of cluster mode (issue 17; `scale-out.md` §3.2): QoS 0 publications go to the
//! other nodes over core NATS, QoS 1 and 2 ones are stored once in JetStream shard streams
//! before the publisher's acknowledgement, and retained messages live in the JetStream KV
//! bucket `tern_ret`, replicated into every node's retained tree.
//!
//! - QoS 1/2: [`NatsFabric::published`] gives the message the next fabric ticket and queues it
//!   (bounded, `[cluster] queue`) for one task that appends it to stream `TERN_Q_<s>` (subject
//!   `tern.q.<s>.<acct>.<topic>`, `s` = [`crate::shard_of`] the account and topic, so one
//!   topic keeps its order) with a `Nats-Msg-Id` (node, start, ticket: a retried append is
//!   deduplicated) and up to [`DURABLE_INFLIGHT`] appends waiting for their JetStream ack.
//!   Acks are taken in order; each moves the confirmed ticket on, which releases the held
//!   PUBACKs and PUBRECs (`tern_broker::fabric`). A failed append is retried with back-off, so
//!   during a JetStream leader election the acknowledgements wait (backpressure, not errors).
//!   A full queue: the message goes the QoS 0 way instead and is counted
//!   (`tern_cluster_dropped{queue="durable"}`), acknowledged without waiting.
//!   Every node reads every shard with an ordered consumer from the moment it started and
//!   routes what other nodes appended (header `Tern-Node`) to its sessions.
//!
//! - Out: [`NatsFabric::published`] encodes a message (`tern_store`'s message record, the
//!   subject from [`encode_topic`]) on the publisher's path and `try_send`s it into one of two
//!   bounded queues (`[cluster] queue` each). Full: the newest is dropped and counted
//!   (`tern_cluster_dropped{queue}`), never waited for. One task publishes the live queue on
//!   core NATS; another applies the retained queue to the KV bucket in order (a put, or a
//!   delete for an empty payload).
//! - In: one subscription to `tern.m.>` per node (the connection has `no_echo`, so a node
//!   never gets its own publications back): each message is decoded and routed to this node's
//!   sessions by `Broker::publish_remote`. Every node receives every publication; the local
//!   index decides (interest per filter is a later step).
//! - Retained: a watch of the whole bucket (its current values first) applies every put and
//!   delete to this node's tree (`Broker::apply_remote_retained`); the node's own writes come
//!   back through it too, which is harmless (the same value again).
//!
//! Not yet here (later steps of issue 17): QoS 1 stored once in shard streams and acknowledged
//! after JetStream, sessions and takeover across nodes, wills after a node crash, `$share`
//! across nodes, accounts and tokens in KV, REST over the whole cluster, health on quorum.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tern_broker::fabric::Adoption;
use tern_broker::{Broker, Fabric, FabricTicket, FabricWait, Message, Micros, SessionKey};
use tern_codec::QoS;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::sessions::{NODES_BUCKET, Positions, SESSIONS_BUCKET, Sessions, SessionsSetup};
use crate::subject::{SubjectKind, decode_subject, encode_topic, shard_of};

/// The KV bucket of retained messages.
pub const RETAINED_BUCKET: &str = "tern_ret";

/// Appends to the shard streams waiting for their JetStream ack at most (below async-nats's
/// own limit of 5,000, so that an append never waits for a permit while acks are not read).
pub const DURABLE_INFLIGHT: usize = 1024;

/// How long a shard stream reader may receive nothing before it checks that the stream has
/// nothing more for it.
const READER_IDLE_CHECK: Duration = Duration::from_secs(3);

/// The header that names the node a stream message was published on.
const NODE_HEADER: &str = "Tern-Node";

/// `[cluster]` as the daemon hands it over.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`), tried in this order: the node's own server
    /// first, so that a partition that cuts a machine off takes its tern node and its NATS
    /// server together. The client fails over to the next one that answers.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster (the NATS connection name, logs).
    pub node: String,
    /// Replicas of the retained bucket and of the shard streams (1 for a single NATS server,
    /// 3 in a 3-server cluster).
    pub replicas: usize,
    /// Messages each outgoing queue holds at most.
    pub queue: usize,
    /// QoS 1/2 shard streams (`TERN_Q_0` ..).
    pub shards: u32,
    /// How long the shard streams keep a message.
    pub stream_max_age: Duration,
    /// How long the devices log (`TERN_GW`, `gw.rs`) keeps a change.
    pub gw_log_max_age: Duration,
    /// How long NATS (or its JetStream quorum) may be out of reach before this node closes its
    /// clients (v5: DISCONNECT 0x9C) and answers `/health` 503; `None`: never.
    pub unavailable_after: Option<Duration>,
}

/// What the cluster counts (read by the daemon's `/metrics`).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Connected to a NATS server now.
    pub connected: AtomicBool,
    /// Publications sent to the other nodes.
    pub sent: AtomicU64,
    /// Publications of other nodes received.
    pub received: AtomicU64,
    /// Received messages that did not decode (counted and skipped).
    pub undecodable: AtomicU64,
    /// Dropped because the live queue was full.
    pub dropped_live: AtomicU64,
    /// Dropped because the retained queue was full.
    pub dropped_retained: AtomicU64,
    /// QoS 1/2 messages sent the QoS 0 way because the durable queue was full.
    pub dropped_durable: AtomicU64,
    /// QoS 1/2 messages appended to a shard stream (JetStream acknowledged).
    pub stored: AtomicU64,
    /// Appends retried after an error or a missing ack.
    pub store_retries: AtomicU64,
    /// The last confirmed fabric ticket.
    pub confirmed: AtomicU64,
    /// Sessions ended here because their client connected to another node.
    pub takeovers: AtomicU64,
    /// Times this node marked itself unavailable.
    pub unavailable_total: AtomicU64,
    /// Retained puts and deletes written to the bucket.
    pub retained_written: AtomicU64,
    /// Retained puts and deletes applied from the bucket's watch.
    pub retained_applied: AtomicU64,
    /// Failed NATS operations (publish, KV write; logged).
    pub errors: AtomicU64,
    /// Persistent sessions resumed here from the cluster's record (`sessions.rs`).
    pub sessions_adopted: AtomicU64,
    /// Messages queued by the replays of resumed sessions.
    pub sessions_replayed: AtomicU64,
    /// Sessions this node gave up because another node's record of them was newer.
    pub sessions_lost: AtomicU64,
    /// Session record writes and deletes (checkpoints included).
    pub session_writes: AtomicU64,
    /// Session changes not queued for the record writer because its queue was full (the
    /// next checkpoint writes every session's record instead).
    pub dropped_sessions: AtomicU64,
    /// Wills of clients whose node died, published by this node.
    pub wills_published: AtomicU64,
    /// Account and token changes of this node written to the config bucket.
    pub cfg_written: AtomicU64,
    /// Account and token changes of other nodes applied here.
    pub cfg_applied: AtomicU64,
    /// Account and token changes not sent because the config queue was full.
    pub dropped_cfg: AtomicU64,
    /// Blocks of account or token ids reserved.
    pub cfg_id_blocks: AtomicU64,
    /// `$share` QoS 1/2 messages of a node that went away delivered here (`share.rs`).
    pub share_redelivered: AtomicU64,
    /// `$share` QoS 1/2 messages not kept for another node (the limit), copies not watched,
    /// and kept messages dropped (their node stopped, or no member to hand them to).
    pub dropped_share: AtomicU64,
    /// `$share` QoS 1/2 messages kept for other nodes now.
    pub share_kept: AtomicU64,
    /// Devices-layer changes of this node appended to the `TERN_GW` stream (`gw.rs`).
    pub gw_written: AtomicU64,
    /// Devices-layer changes of other nodes applied here.
    pub gw_applied: AtomicU64,
    /// Devices-layer changes not sent because the queue was full, or given up after retries.
    pub dropped_gw: AtomicU64,
    /// The last position of the `TERN_GW` stream applied here.
    pub gw_position: AtomicU64,
    /// Accounts whose QoS 0 messages this node takes from the other nodes now.
    pub interest_accounts: AtomicU64,
}

/// One message for the other nodes: its subject (or KV key) and its record.
#[derive(Debug)]
struct Out {
    subject: String,
    record: Bytes,
    /// A retained delete (empty payload): the KV key is deleted.
    delete: bool,
}

/// One QoS 1/2 message for the shard streams.
#[derive(Debug)]
struct Durable {
    ticket: FabricTicket,
    subject: String,
    record: Bytes,
    /// `$share` groups chose other nodes for it: kept for them once its stream position is
    /// known (`share.rs`).
    keep: Option<Box<Keep>>,
}

/// A message of this node to keep for other nodes once appended at a position of `shard`.
#[derive(Debug)]
struct Keep {
    shard: u32,
    msg: Arc<Message>,
    chosen: Vec<crate::share::Chosen>,
}

/// The fabric the broker calls (see the module).
#[derive(Debug)]
pub struct NatsFabric {
    live: mpsc::Sender<Out>,
    retained: mpsc::Sender<Out>,
    durable: mpsc::Sender<Durable>,
    /// The last ticket given out; taken with the queue's send under this lock, so that the
    /// queue holds tickets in order.
    next: parking_lot::Mutex<FabricTicket>,
    confirmed: watch::Sender<FabricTicket>,
    shards: std::num::NonZeroU32,
    metrics: Arc<ClusterMetrics>,
    node: String,
    /// Persistent sessions across nodes, set once at start.
    sessions: std::sync::OnceLock<Arc<Sessions>>,
    /// `$share` groups across nodes (`share.rs`).
    share: Arc<crate::share::ShareRegistry>,
    /// Wakes the QoS 0 interest task ([`run_interest`]).
    interest: Arc<tokio::sync::Notify>,
}

impl NatsFabric {
    /// The last fabric ticket given out.
    pub(crate) fn issued(&self) -> FabricTicket {
        *self.next.lock()
    }
}

/// The first tokens of a connect notice: `tern.s.<acct>.<client id in lowercase hex>`.
pub const SESSION_PREFIX: &str = "tern.s.";

impl Fabric for NatsFabric {
    fn published(&self, msg: &Arc<Message>, durable_retained: bool) -> FabricTicket {
        let Ok(record) = tern_store::encode_message_record(msg) else {
            // Only a message too large for the record's lengths fails here; such a message
            // cannot have been accepted from a client.
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            return 0;
        };
        let record = Bytes::from(record);
        if msg.retain && durable_retained {
            let mut key = String::new();
            encode_topic(SubjectKind::RetainedKey, msg.cid, &msg.topic, &mut key);
            let out = Out {
                subject: key,
                record: record.clone(),
                delete: msg.payload.is_empty(),
            };
            if self.retained.try_send(out).is_err() {
                self.metrics
                    .dropped_retained
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut subject = String::with_capacity(LIVE_CAPACITY);
        if msg.qos != QoS::AtMostOnce {
            let shard = shard_of(msg.cid, &msg.topic, self.shards);
            encode_topic(SubjectKind::Shard(shard), msg.cid, &msg.topic, &mut subject);
            // The routing just before this call noted the groups that chose another node.
            let chosen = crate::share::take_chosen(msg);
            let keep = (!chosen.is_empty()).then(|| {
                Box::new(Keep {
                    shard,
                    msg: msg.clone(),
                    chosen,
                })
            });
            let mut next = self.next.lock();
            let ticket = *next + 1;
            match self.durable.try_send(Durable {
                ticket,
                subject,
                record: record.clone(),
                keep,
            }) {
                Ok(()) => {
                    *next = ticket;
                    return ticket;
                }
                Err(_) => {
                    drop(next);
                    self.metrics.dropped_durable.fetch_add(1, Ordering::Relaxed);
                    subject = String::with_capacity(LIVE_CAPACITY);
                }
            }
        }
        encode_topic(SubjectKind::Live, msg.cid, &msg.topic, &mut subject);
        let out = Out {
            subject,
            record,
            delete: false,
        };
        if self.live.try_send(out).is_err() {
            self.metrics.dropped_live.fetch_add(1, Ordering::Relaxed);
        }
        0
    }

    fn confirmed(&self) -> FabricTicket {
        self.metrics.confirmed.load(Ordering::Acquire)
    }

    fn share_here(&self, group: &tern_broker::ShareGroupRef<'_>, msg: &Message) -> bool {
        self.share.here(group, msg)
    }

    fn shares_changed(&self) {
        self.share.changed();
    }

    fn interest_changed(&self) {
        self.interest.notify_one();
    }

    fn share_delivering(&self, msg: &Arc<Message>) {
        self.share.delivering(msg);
    }

    fn connected(&self, key: &SessionKey, at: Micros) {
        // A member that connects may change its groups' connected counts.
        self.share.changed();
        let subject = notice_subject(key);
        let out = Out {
            subject,
            record: Bytes::from(format!("{at} {}", self.node)),
            delete: false,
        };
        if self.live.try_send(out).is_err() {
            self.metrics.dropped_live.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn adopt(&self, key: &SessionKey) -> Option<Adoption> {
        self.sessions.get()?.adopt(key)
    }

    fn cluster_sessions(
        &self,
        cids: &[tern_broker::Cid],
    ) -> Vec<tern_broker::fabric::ClusterSession> {
        self.sessions
            .get()
            .map(|s| s.cluster_sessions(cids))
            .unwrap_or_default()
    }

    fn remove_session(&self, key: &SessionKey) {
        let mut record = REMOVE_NOTICE.to_vec();
        record.extend_from_slice(self.node.as_bytes());
        let out = Out {
            subject: notice_subject(key),
            record: Bytes::from(record),
            delete: false,
        };
        if self.live.try_send(out).is_err() {
            self.metrics.dropped_live.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(sessions) = self.sessions.get() {
            sessions.remove(key);
        }
    }

    fn session_changed(&self, key: &SessionKey) {
        // A persistent member that disconnects may change its groups' connected counts.
        self.share.changed();
        if let Some(sessions) = self.sessions.get() {
            sessions.changed(key);
        }
    }

    fn deliveries_moved(&self, key: &SessionKey) {
        if let Some(sessions) = self.sessions.get() {
            sessions.deliveries_moved(key);
        }
    }

    fn change_remote(
        &self,
        key: &SessionKey,
        change: tern_broker::fabric::RemoteChange,
    ) -> tern_broker::fabric::RemoteCall {
        match self.sessions.get() {
            Some(sessions) => Box::pin(sessions.clone().change(key.clone(), change)),
            None => {
                let n = change.len();
                Box::pin(std::future::ready(vec![
                    tern_broker::fabric::RemoteOutcome::Unanswered;
                    n
                ]))
            }
        }
    }

    fn wait_confirmed(&self, ticket: FabricTicket) -> FabricWait {
        let mut rx = self.confirmed.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|c| *c >= ticket).await;
        })
    }
}

/// A live subject's usual size: one allocation for most topics.
const LIVE_CAPACITY: usize = 96;

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no NATS server in [cluster] nats")]
    NoServers,
    #[error("cannot connect to NATS ({servers}): {source}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
    #[error("NATS: {0}")]
    Nats(String),
}

/// A running cluster membership: the fabric is installed in the broker, the tasks run until
/// `shutdown`.
#[derive(Debug)]
pub struct Cluster {
    pub metrics: Arc<ClusterMetrics>,
    pub node: String,
    /// Accounts and tokens across the cluster (`cfg.rs`).
    pub cfg: Arc<crate::cfg::CfgReplica>,
    /// What [`Cluster::start_gw`] needs: the devices layer starts after the broker's seam.
    pub(crate) js: jetstream::Context,
    pub(crate) config: ClusterConfig,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) connect_timeout: Duration,
}

/// Connects to NATS, sets up the retained bucket, loads the retained replica, installs the
/// fabric in `broker` and starts the tasks (ended by `shutdown`). Fails when no NATS server
/// answers within `connect_timeout`.
pub async fn start(
    broker: Arc<Broker>,
    directory: Arc<tern_broker::accounts::Directory>,
    config: ClusterConfig,
    shutdown: CancellationToken,
    connect_timeout: Duration,
) -> Result<Cluster, ClusterError> {
    if config.nats.is_empty() {
        return Err(ClusterError::NoServers);
    }
    let metrics = Arc::new(ClusterMetrics::default());
    let events = metrics.clone();
    let node = config.node.clone();
    // Bumped at every (re)connect: the shard stream readers open their consumers again then
    // (a restarted NATS server may have lost them, and async-nats's ordered consumer does not
    // say so).
    let (connects_tx, connects) = watch::channel(0u64);
    let connects_tx = Arc::new(connects_tx);
    let options = async_nats::ConnectOptions::new()
        .name(format!("tern {}", config.node))
        .no_echo()
        // The configured order, not a shuffle: a node on the majority side of a partition must
        // not sit on a minority server (the cluster fault tests saw it lose JetStream then).
        .retain_servers_order()
        .connection_timeout(connect_timeout)
        .event_callback(move |event| {
            let metrics = events.clone();
            let node = node.clone();
            let connects = connects_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics.connected.store(true, Ordering::Relaxed);
                        connects.send_modify(|n| *n += 1);
                        tracing::info!(node = %node, "cluster: connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        metrics.connected.store(false, Ordering::Relaxed);
                        tracing::warn!(node = %node, "cluster: disconnected from NATS");
                    }
                    other => tracing::info!(node = %node, event = %other, "cluster: NATS event"),
                }
            }
        });
    let servers = config.nats.join(",");
    let client = options
        .connect(config.nats.as_slice())
        .await
        .map_err(|source| ClusterError::Connect {
            servers: servers.clone(),
            source,
        })?;
    metrics.connected.store(true, Ordering::Relaxed);
    let js = jetstream::new(client.clone());
    // A NATS cluster that is still forming has no peers to place replicas on yet ("no suitable
    // peers for placement"): the setup is retried until `connect_timeout` is spent.
    let setup_until = tokio::time::Instant::now() + connect_timeout;
    let bucket = retry_until(setup_until, "the retained bucket", || {
        retained_bucket(&js, config.replicas)
    })
    .await?;

    // The replica first, so that a subscriber connecting right after start finds what the
    // cluster retains: the watch delivers every current value, then the changes.
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| ClusterError::Nats(format!("watch of {RETAINED_BUCKET}: {e}")))?;
    let stored = bucket
        .status()
        .await
        .map(|s| s.values())
        .map_err(|e| ClusterError::Nats(format!("status of {RETAINED_BUCKET}: {e}")))?;
    // The last value of every key (deletes included) comes first; `delta` counts what is left
    // of that snapshot.
    let mut loaded = 0u64;
    if stored > 0 {
        loop {
            match tokio::time::timeout(connect_timeout, watch.next()).await {
                Ok(Some(Ok(entry))) => {
                    let last = entry.delta == 0;
                    apply_entry(&broker, &metrics, entry);
                    loaded += 1;
                    if last {
                        break;
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(ClusterError::Nats(format!("retained watch: {e}")));
                }
                Ok(None) => break,
                Err(_) => {
                    return Err(ClusterError::Nats(format!(
                        "the retained replica did not load within {connect_timeout:?}"
                    )));
                }
            }
        }
    }
    tracing::info!(node = %config.node, retained = loaded, "cluster: retained replica loaded");
    // Accounts and tokens (cfg.rs): loaded before any client connects, then followed.
    let interest = Arc::new(tokio::sync::Notify::new());
    let cfg = crate::cfg::start(crate::cfg::CfgStart {
        js: &js,
        broker: broker.clone(),
        directory: directory.clone(),
        metrics: metrics.clone(),
        node: &config.node,
        replicas: config.replicas,
        queue: config.queue,
        setup_until,
        connect_timeout,
        shutdown: shutdown.clone(),
        interest: interest.clone(),
    })
    .await?;

    let notices = client
        .subscribe(format!("{SESSION_PREFIX}>"))
        .await
        .map_err(|e| ClusterError::Nats(format!("subscribe: {e}")))?;

    // The shard streams and this node's reader of each, from now on.
    let shards =
        std::num::NonZeroU32::new(config.shards.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let mut readers = Vec::new();
    for shard in 0..shards.get() {
        let mut stream = retry_until(setup_until, "a shard stream", || {
            shard_stream(&js, shard, &config)
        })
        .await?;
        // This node reads what is appended from now on: the sequence after the last one.
        let last = stream
            .info()
            .await
            .map(|i| i.state.last_sequence)
            .map_err(|e| ClusterError::Nats(format!("info of {}: {e}", stream_name(shard))))?;
        readers.push((stream, last + 1));
    }

    // Where each shard stream reader is (persistent sessions' cursors, `$share` handover).
    let positions: Positions = readers
        .iter()
        .map(|(_, next)| AtomicU64::new(next - 1))
        .collect();
    let share = retry_until(setup_until, "the $share registry", || {
        crate::share::start(crate::share::ShareStart {
            js: &js,
            broker: broker.clone(),
            node: &config.node,
            replicas: config.replicas,
            limit: config.queue.max(1),
            positions: positions.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        })
    })
    .await?;

    let queue = config.queue.max(1);
    let (live_tx, live_rx) = mpsc::channel(queue);
    let (ret_tx, ret_rx) = mpsc::channel(queue);
    let (durable_tx, durable_rx) = mpsc::channel(queue);
    let (confirmed_tx, _) = watch::channel(0);
    let fabric = Arc::new(NatsFabric {
        live: live_tx,
        retained: ret_tx,
        durable: durable_tx,
        next: parking_lot::Mutex::new(0),
        confirmed: confirmed_tx,
        shards,
        metrics: metrics.clone(),
        node: config.node.clone(),
        sessions: std::sync::OnceLock::new(),
        share,
        interest: interest.clone(),
    });

    // Persistent sessions: their records and the node heartbeats, loaded before the fabric is
    // installed (sessions restored from this node's store are left to the records first).
    let sessions_bucket = retry_until(setup_until, "the sessions bucket", || {
        kv_bucket(
            &js,
            SESSIONS_BUCKET,
            "tern: persistent sessions of every account",
            config.replicas,
        )
    })
    .await?;
    let nodes_bucket = retry_until(setup_until, "the nodes bucket", || {
        kv_bucket(&js, NODES_BUCKET, "tern: node heartbeats", config.replicas)
    })
    .await?;
    let sessions = Sessions::start(
        SessionsSetup {
            node: config.node.clone(),
            broker: broker.clone(),
            bucket: sessions_bucket,
            nodes: nodes_bucket,
            streams: readers.iter().map(|(s, _)| s.clone()).collect(),
            positions: positions.clone(),
            fabric: Arc::downgrade(&fabric),
            client: client.clone(),
            metrics: metrics.clone(),
        },
        connect_timeout,
        shutdown.clone(),
    )
    .await
    .map_err(ClusterError::Nats)?;
    let _ = fabric.sessions.set(sessions.clone());
    let share = fabric.share.clone();
    broker.set_fabric(fabric.clone());

    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    tokio::spawn(run_durable_out(
        js.clone(),
        durable_rx,
        fabric,
        format!("{}-{started}", config.node),
        config.node.clone(),
        shutdown.clone(),
    ));
    if let Some(after) = config.unavailable_after {
        tokio::spawn(run_watchdog(
            broker.clone(),
            js.clone(),
            after,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(run_notices(
        broker.clone(),
        notices,
        config.node.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    for (shard, (stream, next)) in readers.into_iter().enumerate() {
        tokio::spawn(run_reader(
            broker.clone(),
            share.clone(),
            stream,
            next,
            (positions.clone(), shard),
            connects.clone(),
            config.node.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    tokio::spawn(run_live_out(
        client.clone(),
        live_rx,
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(run_retained_out(
        bucket,
        ret_rx,
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(run_interest(
        broker.clone(),
        directory,
        client.clone(),
        interest.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(run_watch(broker, watch, metrics.clone(), shutdown.clone()));
    let shutdown_all = shutdown.clone();
    {
        let client = client.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // What the live queue's task published is in the client's buffer: send it.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        });
    }
    Ok(Cluster {
        metrics,
        node: config.node.clone(),
        cfg,
        js,
        config,
        sessions,
        shutdown: shutdown_all,
        connect_timeout,
    })
}

/// The retained bucket: created on first use, history 1, `replicas` copies. Created as its
/// stream (what `create_key_value` would make), since async-nats's bucket creation first reads
/// the account's JetStream info in a shape that nats-server 2.9 does not answer with.
async fn retained_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    kv_bucket(
        js,
        RETAINED_BUCKET,
        "tern: retained messages of every account",
        replicas,
    )
    .await
}

/// KV bucket `name`: created on first use, history 1, `replicas` copies. Created as its
/// stream (what `create_key_value` would make), since async-nats's bucket creation first reads
/// the account's JetStream info in a shape that nats-server 2.9 does not answer with.
pub(crate) async fn kv_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    kv_bucket_aged(js, name, description, replicas, Duration::ZERO).await
}

/// [`kv_bucket`] whose entries NATS forgets `max_age` after their last write (zero: never).
pub(crate) async fn kv_bucket_aged(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    // Two nodes starting together may both create it: the same config, so the second one
    // succeeds too (or finds it).
    if let Err(e) = js.get_or_create_stream(config).await {
        return Err(ClusterError::Nats(format!("create bucket {name}: {e}")));
    }
    js.get_key_value(name)
        .await
        .map_err(|e| ClusterError::Nats(format!("open bucket {name}: {e}")))
}

/// Runs `step` until it succeeds or `until` passes (back-off 100 ms doubling to 2 s); the last
/// error then.
pub(crate) async fn retry_until<T, F, Fut>(
    until: tokio::time::Instant,
    what: &str,
    mut step: F,
) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClusterError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() + wait < until => {
                tracing::warn!(error = %e, "cluster: setting up {what} failed, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

fn stream_name(shard: u32) -> String {
    format!("TERN_Q_{shard}")
}

/// Shard stream `shard`: created on first use (limits retention, `stream_max_age`).
async fn shard_stream(
    js: &jetstream::Context,
    shard: u32,
    config: &ClusterConfig,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let name = stream_name(shard);
    js.get_or_create_stream(jetstream::stream::Config {
        name: name.clone(),
        description: Some(format!("tern: QoS 1/2 messages of shard {shard}")),
        subjects: vec![format!("{}{shard}.>", crate::subject::SHARD_PREFIX)],
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas.max(1),
        max_age: config.stream_max_age,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Nats(format!("create stream {name}: {e}")))
}

/// An append to a shard stream in flight: the message and the wait for its JetStream ack
/// (`Some(stream sequence)`: stored).
type Pending = (
    Durable,
    std::pin::Pin<Box<dyn Future<Output = Option<u64>> + Send>>,
);

/// Appends the durable queue to the shard streams, [`DURABLE_INFLIGHT`] at a time, and moves
/// the confirmed ticket on as their acks arrive, in order. A failed append is sent again with
/// the same message id (JetStream drops the duplicate) after a back-off, until it is stored;
/// the tickets after it wait (backpressure while JetStream elects a leader).
async fn run_durable_out(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Durable>,
    fabric: Arc<NatsFabric>,
    id_prefix: String,
    node: String,
    shutdown: CancellationToken,
) {
    let appender = Appender {
        js,
        id_prefix,
        node,
    };
    let mut pending: VecDeque<Pending> = VecDeque::new();
    loop {
        let room = pending.len() < DURABLE_INFLIGHT;
        let front = async {
            match pending.front_mut() {
                Some((_, ack)) => ack.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            seq = front => {
                let Some((d, _)) = pending.pop_front() else { continue };
                let mut seq = seq;
                if seq.is_none() {
                    // What waits behind it was sent about when it was and is likely to fail
                    // the same way: send it all again now (the same ids, so what did land is
                    // not stored twice), not each one after the ack timeout of the one before.
                    for (behind, wait) in pending.iter_mut() {
                        if let Ok(ack) = appender.append(behind).await {
                            *wait = Box::pin(async move { ack.await.ok().map(|a| a.sequence) });
                        }
                    }
                    // Shut down while retrying: what is unconfirmed was not acknowledged, and
                    // its publishers send it again.
                    seq = appender.retry(&d, &fabric.metrics, &shutdown).await;
                    if seq.is_none() {
                        return;
                    }
                }
                if let (Some(keep), Some(seq)) = (d.keep, seq) {
                    fabric.share.keep(keep.shard, seq, &keep.msg, keep.chosen);
                }
                stored(&fabric, d.ticket);
            }
            next = rx.recv(), if room => {
                let Some(d) = next else { return };
                match appender.append(&d).await {
                    Ok(ack) => {
                        let wait = Box::pin(async move { ack.await.ok().map(|a| a.sequence) });
                        pending.push_back((d, wait));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: append to a shard stream failed, retrying");
                        // Confirmed in order: it goes behind the pending ones as a failed wait.
                        pending.push_back((d, Box::pin(async { None })));
                    }
                }
            }
        }
    }
}

/// Appends to the shard streams with this node's message ids and header.
struct Appender {
    js: jetstream::Context,
    id_prefix: String,
    node: String,
}

impl Appender {
    async fn append(
        &self,
        d: &Durable,
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        let message = jetstream::message::PublishMessage::build()
            .payload(d.record.clone())
            .message_id(format!("{}-{}", self.id_prefix, d.ticket))
            .header(NODE_HEADER, self.node.as_str());
        self.js.send_publish(d.subject.clone(), message).await
    }

    /// Appends `d` until JetStream acknowledges it (back-off 50 ms doubling to 2 s; the same
    /// message id, so a first append that did land is not stored twice): its stream sequence;
    /// `None` on shutdown.
    async fn retry(
        &self,
        d: &Durable,
        metrics: &ClusterMetrics,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        let mut wait = Duration::from_millis(50);
        loop {
            metrics.store_retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return None,
            }
            wait = (wait * 2).min(Duration::from_secs(2));
            let Ok(ack) = self.append(d).await else {
                continue;
            };
            let acked = tokio::select! {
                r = ack => r.ok(),
                () = shutdown.cancelled() => return None,
            };
            if let Some(ack) = acked {
                return Some(ack.sequence);
            }
        }
    }
}

/// Every ticket up to `ticket` is stored: release the acknowledgements waiting for them.
fn stored(fabric: &NatsFabric, ticket: FabricTicket) {
    fabric.metrics.stored.fetch_add(1, Ordering::Relaxed);
    fabric.metrics.confirmed.store(ticket, Ordering::Release);
    fabric.confirmed.send_replace(ticket);
}

/// Watches this node's link to the cluster: once a second, whether the NATS connection is up
/// and JetStream answers (the retained bucket's stream info) from a leader that sees its
/// quorum ([`has_quorum`]). Out of reach for `after` in a row: the node is marked unavailable
/// (`Broker::set_unavailable`: clients closed with DISCONNECT 0x9C, CONNECT refused with
/// 0x88, `/health` 503) until the cluster answers again.
async fn run_watchdog(
    broker: Arc<Broker>,
    js: jetstream::Context,
    after: Duration,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let reachable = metrics.connected.load(Ordering::Relaxed)
            && tokio::time::timeout(
                Duration::from_secs(2),
                js.get_stream(format!("KV_{RETAINED_BUCKET}")),
            )
            .await
            .is_ok_and(|r| r.is_ok_and(|s| has_quorum(s.cached_info())));
        let now = tokio::time::Instant::now();
        if reachable {
            out_since = None;
            if broker.is_unavailable() {
                broker.set_unavailable(false);
                tracing::warn!("cluster: NATS and JetStream answer again; accepting clients");
            }
            continue;
        }
        let since = *out_since.get_or_insert(now);
        if now.duration_since(since) >= after && !broker.is_unavailable() {
            metrics.unavailable_total.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                after = ?after,
                "cluster: NATS or its JetStream quorum out of reach; closing clients (0x9C) until it answers"
            );
            broker.set_unavailable(true);
        }
    }
}

/// Whether the stream's leader, which answered its info, sees a quorum: itself and its current
/// peers are more than half of the group. A leader cut off on the minority side of a partition
/// still answers the info from its own state, so an answer alone is not enough.
fn has_quorum(info: &jetstream::stream::Info) -> bool {
    let Some(cluster) = &info.cluster else {
        return true;
    };
    let current = cluster
        .replicas
        .iter()
        .filter(|p| p.current && !p.offline)
        .count();
    2 * (1 + current) > 1 + cluster.replicas.len()
}

/// Connect notices of other nodes: a client that connected there gives way here.
async fn run_notices(
    broker: Arc<Broker>,
    mut sub: async_nats::Subscriber,
    node: String,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(msg) = until_shutdown(sub.next(), &shutdown).await else {
            return;
        };
        // A removal (REST DELETE on another node): `remove <node>`.
        if let Some(from) = msg.payload.strip_prefix(REMOVE_NOTICE) {
            let key = msg
                .subject
                .strip_prefix(SESSION_PREFIX)
                .ok_or_else(|| "not a notice".to_string())
                .and_then(crate::sessions::parse_kv_key);
            match key {
                Ok(key) if from != node.as_bytes() => {
                    if let Some(session) = broker.session(&key) {
                        broker.remove_session(&session);
                        tracing::info!(client_id = %key.client_id, cid = key.cid, "cluster: session removed over REST on another node");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subject = %msg.subject, error = %e, "cluster: undecodable removal notice skipped");
                }
            }
            continue;
        }
        match decode_notice(&msg.subject, &msg.payload) {
            Ok((key, at, from)) => {
                if from != node && broker.take_over_remote(&key, at, from < node) {
                    metrics.takeovers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client_id = %key.client_id, cid = key.cid, node = %from, "cluster: client connected to another node, session taken over");
                }
            }
            Err(e) => {
                metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %msg.subject, error = %e, "cluster: undecodable connect notice skipped");
            }
        }
    }
}

/// The payload of a removal notice starts so, the node's name follows.
const REMOVE_NOTICE: &[u8] = b"remove ";

/// The subject of a connect notice: `tern.s.<acct>.<client id in lowercase hex>` (a client id
/// may hold any character, `+` and `#` included, so it is not spelled as a topic).
fn notice_subject(key: &SessionKey) -> String {
    format!("{SESSION_PREFIX}{}", crate::sessions::kv_key(key))
}

/// A connect notice: the session key from the subject, `<at> <node>` from the payload.
fn decode_notice(subject: &str, payload: &[u8]) -> Result<(SessionKey, Micros, String), String> {
    let tail = subject
        .strip_prefix(SESSION_PREFIX)
        .ok_or("not a connect notice")?;
    let key = crate::sessions::parse_kv_key(tail)?;
    let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
    let (at, from) = text.split_once(' ').ok_or("no node in the notice")?;
    let at = at.parse::<Micros>().map_err(|e| e.to_string())?;
    Ok((key, at, from.to_string()))
}

/// Routes what other nodes appended to one shard stream to this node's sessions. The reader is
/// an ordered consumer from `next` (the stream's next sequence when the node started); when it
/// fails, or the client reconnects (NATS restarted and lost the ephemeral consumer), it is
/// created again from the sequence after the last one read, so nothing appended meanwhile is
/// skipped.
#[allow(clippy::too_many_arguments)]
async fn run_reader(
    broker: Arc<Broker>,
    share: Arc<crate::share::ShareRegistry>,
    stream: jetstream::stream::Stream,
    mut next: u64,
    position: (Positions, usize),
    mut connects: watch::Receiver<u64>,
    node: String,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(mut messages) =
            open_reader_retrying(&stream, next, &metrics, &shutdown, "shard stream").await
        else {
            return;
        };
        connects.mark_unchanged();
        // A consumer whose server died (a stream leader killed) may go quiet without an error:
        // when nothing arrived for a while, the stream is asked whether there is more, and the
        // reader is opened again if there is.
        let mut idle = tokio::time::interval(READER_IDLE_CHECK);
        idle.reset();
        let mut got = false;
        loop {
            let item = tokio::select! {
                m = messages.next() => m,
                changed = connects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::info!(next, "cluster: reconnected to NATS, reading the shard stream again from its next message");
                    break;
                }
                _ = idle.tick() => {
                    if std::mem::take(&mut got) {
                        continue;
                    }
                    let mut probe = stream.clone();
                    let behind = tokio::time::timeout(READER_IDLE_CHECK, probe.info())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .is_some_and(|i| i.state.last_sequence >= next);
                    if behind {
                        metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(next, "cluster: shard stream reader stalled behind the stream, reading again from its next message");
                        break;
                    }
                    continue;
                }
                () = shutdown.cancelled() => return,
            };
            got = true;
            let msg = match item {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, next, "cluster: shard stream reader failed, reading again from its next message");
                    break;
                }
                None => break,
            };
            if let Ok(info) = msg.info() {
                next = info.stream_sequence + 1;
            }
            let own = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(NODE_HEADER))
                .is_some_and(|v| v.as_str() == node);
            // A message of this node's own was routed here before it was appended.
            if !own
                && let Some((routed, chosen)) =
                    route_remote(&broker, &metrics, &msg.subject, msg.payload.clone(), false)
                && !chosen.is_empty()
            {
                // `$share` groups chose other nodes for it: kept for them (`share.rs`).
                share.keep(position.1 as u32, next - 1, &routed, chosen);
            }
            // Routed (or this node's own): persistent sessions' cursors may pass it.
            position.0[position.1].store(next - 1, Ordering::Release);
        }
    }
}

/// [`open_reader`] until it opens (back-off from 100 ms to 5 s; each failure counted and
/// logged as `what`'s); `None` once `shutdown` is cancelled.
pub(crate) async fn open_reader_retrying(
    stream: &jetstream::stream::Stream,
    from: u64,
    metrics: &ClusterMetrics,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<jetstream::consumer::pull::Ordered> {
    let mut wait = Duration::from_millis(100);
    loop {
        match open_reader(stream, from).await {
            Ok(m) => return Some(m),
            Err(e) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, stream = %stream.cached_info().config.name, "cluster: {what} reader not created, retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// An ordered consumer of `stream` from sequence `from` on.
pub(crate) async fn open_reader(
    stream: &jetstream::stream::Stream,
    from: u64,
) -> Result<jetstream::consumer::pull::Ordered, String> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            // Pull requests of 2 s, so missed heartbeats (a restarted NATS server that lost
            // the consumer) are noticed within seconds, not after half a minute.
            max_expires: Duration::from_secs(2),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// The next item of `next`, or `None` once `shutdown` is cancelled: every task's loop.
pub(crate) async fn until_shutdown<T>(
    next: impl Future<Output = Option<T>>,
    shutdown: &CancellationToken,
) -> Option<T> {
    tokio::select! {
        item = next => item,
        () = shutdown.cancelled() => None,
    }
}

/// Routes a message another node published (a live or shard stream subject, `live`) to this
/// node's sessions; one that does not decode is counted and skipped. Returns the message and
/// the `$share` groups that chose another node for it (`share.rs`).
fn route_remote(
    broker: &Broker,
    metrics: &ClusterMetrics,
    subject: &str,
    payload: Bytes,
    live: bool,
) -> Option<(Arc<Message>, Vec<crate::share::Chosen>)> {
    match decode_on(subject, payload, live) {
        Ok(m) => {
            metrics.received.fetch_add(1, Ordering::Relaxed);
            let m = Arc::new(m);
            broker.publish_remote(m.clone());
            let chosen = crate::share::take_chosen(&m);
            Some((m, chosen))
        }
        Err(e) => {
            metrics.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %subject, error = %e, "cluster: undecodable message skipped");
            None
        }
    }
}

/// Publishes the live queue on core NATS.
async fn run_live_out(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Out>,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(out) = until_shutdown(rx.recv(), &shutdown).await else {
            return;
        };
        match client.publish(out.subject, out.record).await {
            Ok(()) => {
                metrics.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster: publish to NATS failed");
            }
        }
    }
}

/// Writes the retained queue to the bucket, in order.
async fn run_retained_out(
    bucket: kv::Store,
    mut rx: mpsc::Receiver<Out>,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(out) = until_shutdown(rx.recv(), &shutdown).await else {
            return;
        };
        let res = if out.delete {
            bucket.delete(&out.subject).await.map_err(|e| e.to_string())
        } else {
            bucket
                .put(&out.subject, out.record)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match res {
            Ok(()) => {
                metrics.retained_written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %out.subject, error = %e, "cluster: retained write failed");
            }
        }
    }
}

/// Routes what the other nodes publish to this node's sessions.
/// Keeps this node's QoS 0 interest: one core NATS subscription `tern.m.<acct>.>` for every
/// account whose publications may have subscribers here (an account with subscriptions on this
/// node, and every account below it: a publication is routed to its account's namespace and its
/// ancestors'), so that the other nodes' QoS 0 messages come only where they can be delivered.
/// Recomputed when an account's index gets its first or loses its last subscription, when the
/// account tree changes, and every [`INTEREST_EVERY`]. One subscription per account: each
/// message arrives once. A first subscriber's SUBACK may go out before NATS has the new
/// interest: QoS 0 published elsewhere in that moment does not reach it (QoS 1/2 travels the
/// shard streams, which every node reads).
async fn run_interest(
    broker: Arc<Broker>,
    directory: Arc<tern_broker::accounts::Directory>,
    client: async_nats::Client,
    interest: Arc<tokio::sync::Notify>,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    let mut subscribed: HashMap<tern_broker::Cid, CancellationToken> = HashMap::new();
    loop {
        let mut want = std::collections::HashSet::new();
        for cid in broker.accounts_with_subscriptions() {
            want.insert(cid);
            want.extend(directory.descendants(cid));
        }
        subscribed.retain(|cid, stop| {
            let keep = want.contains(cid);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for cid in want {
            if subscribed.contains_key(&cid) {
                continue;
            }
            let subject = format!("{}{cid}.>", crate::subject::LIVE_PREFIX);
            match client.subscribe(subject).await {
                Ok(sub) => {
                    let stop = shutdown.child_token();
                    tokio::spawn(run_inbound(
                        broker.clone(),
                        sub,
                        metrics.clone(),
                        stop.clone(),
                    ));
                    subscribed.insert(cid, stop);
                }
                Err(e) => {
                    // Tried again at the next round.
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(cid, error = %e, "cluster: QoS 0 interest of an account not subscribed");
                }
            }
        }
        metrics
            .interest_accounts
            .store(subscribed.len() as u64, Ordering::Relaxed);
        tokio::select! {
            () = interest.notified() => {}
            () = tokio::time::sleep(INTEREST_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// How often the QoS 0 interest is recomputed without a reason (a missed wake-up).
const INTEREST_EVERY: Duration = Duration::from_secs(2);

async fn run_inbound(
    broker: Arc<Broker>,
    mut sub: async_nats::Subscriber,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let Some(msg) = until_shutdown(sub.next(), &shutdown).await else {
            return;
        };
        route_remote(&broker, &metrics, &msg.subject, msg.payload, true);
    }
}

/// A live (`live`) or shard stream message: the record, checked against its subject (the
/// account and topic must agree).
pub(crate) fn decode_on(subject: &str, payload: Bytes, live: bool) -> Result<Message, String> {
    let d = decode_subject(subject).map_err(|e| e.to_string())?;
    let kind_ok = match d.kind {
        SubjectKind::Live => live,
        SubjectKind::Shard(_) => !live,
        SubjectKind::RetainedKey => false,
    };
    if !kind_ok {
        return Err("unexpected kind of subject".into());
    }
    let m = tern_store::decode_message_record(payload).map_err(|e| e.to_string())?;
    if m.cid != d.acct || *m.topic != *d.topic {
        return Err("record and subject disagree".into());
    }
    Ok(m)
}

/// Applies the bucket's changes to this node's retained tree.
async fn run_watch(
    broker: Arc<Broker>,
    mut watch: kv::Watch,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        match until_shutdown(watch.next(), &shutdown).await {
            None => return,
            Some(Ok(entry)) => apply_entry(&broker, &metrics, entry),
            Some(Err(e)) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster: retained watch error");
            }
        }
    }
}

/// One change of the retained bucket: a put carries the message record; a delete or purge only
/// the key, which says the account and topic.
fn apply_entry(broker: &Broker, metrics: &ClusterMetrics, entry: kv::Entry) {
    let msg = match entry.operation {
        kv::Operation::Put => tern_store::decode_message_record(entry.value)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let d = decode_subject(&entry.key).map_err(|e| e.to_string())?;
                if m.cid != d.acct || *m.topic != *d.topic {
                    return Err("record and key disagree".into());
                }
                Ok(m)
            }),
        kv::Operation::Delete | kv::Operation::Purge => decode_subject(&entry.key)
            .map_err(|e| e.to_string())
            .map(|d| deleted(d.acct, d.topic)),
    };
    match msg {
        Ok(m) => {
            metrics.retained_applied.fetch_add(1, Ordering::Relaxed);
            broker.apply_remote_retained(Arc::new(m));
        }
        Err(e) => {
            metrics.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %entry.key, error = %e, "cluster: undecodable retained entry skipped");
        }
    }
}

/// The delete of a retained message: an empty retained payload on its topic.
fn deleted(cid: u64, topic: String) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::new(),
        qos: tern_codec::QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        cid,
        timestamp: 0,
        expires_at: None,
        origin: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_notices_round_trip_any_client_id() {
        for id in ["c1", "a/b", "+#*> .=", "тест", "x"] {
            let key = SessionKey {
                cid: 42,
                client_id: id.into(),
            };
            let subject = notice_subject(&key);
            assert!(subject.starts_with("tern.s.42."), "{subject}");
            assert!(
                subject[SESSION_PREFIX.len()..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.'),
                "{subject}"
            );
            let (back, at, node) = decode_notice(&subject, b"17 n2").unwrap();
            assert_eq!(back, key);
            assert_eq!((at, node.as_str()), (17, "n2"));
        }
        assert!(decode_notice("tern.s.1.6", b"1 n").is_err());
        assert!(decode_notice("tern.s.1.zz", b"1 n").is_err());
        assert!(decode_notice("tern.s.1.61", b"1").is_err());
        assert!(decode_notice("tern.m.1.61", b"1 n").is_err());
    }
}
