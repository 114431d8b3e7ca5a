//! The NATS side of cluster mode, first slice (issue 17; `scale-out.md` §3.2 "QoS 0" and
//! "Retained"): every publication goes to the other nodes over core NATS, and retained
//! messages live in the JetStream KV bucket `tern_ret`, replicated into every node's retained
//! tree.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tern_broker::{Broker, Fabric, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::subject::{SubjectKind, decode_subject, encode_topic};

/// The KV bucket of retained messages.
pub const RETAINED_BUCKET: &str = "tern_ret";

/// `[cluster]` as the daemon hands it over.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:port`); the client fails over between them.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster (the NATS connection name, logs).
    pub node: String,
    /// Replicas of the retained bucket (1 for a single NATS server, 3 in a 3-server cluster).
    pub retained_replicas: usize,
    /// Messages each outgoing queue holds at most.
    pub queue: usize,
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
    /// Retained puts and deletes written to the bucket.
    pub retained_written: AtomicU64,
    /// Retained puts and deletes applied from the bucket's watch.
    pub retained_applied: AtomicU64,
    /// Failed NATS operations (publish, KV write; logged).
    pub errors: AtomicU64,
}

/// One message for the other nodes: its subject (or KV key) and its record.
#[derive(Debug)]
struct Out {
    subject: String,
    record: Bytes,
    /// A retained delete (empty payload): the KV key is deleted.
    delete: bool,
}

/// The fabric the broker calls (see the module).
#[derive(Debug)]
pub struct NatsFabric {
    live: mpsc::Sender<Out>,
    retained: mpsc::Sender<Out>,
    metrics: Arc<ClusterMetrics>,
}

impl Fabric for NatsFabric {
    fn published(&self, msg: &Arc<Message>, durable_retained: bool) {
        let Ok(record) = tern_store::encode_message_record(msg) else {
            // Only a message too large for the record's lengths fails here; such a message
            // cannot have been accepted from a client.
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            return;
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
        encode_topic(SubjectKind::Live, msg.cid, &msg.topic, &mut subject);
        let out = Out {
            subject,
            record,
            delete: false,
        };
        if self.live.try_send(out).is_err() {
            self.metrics.dropped_live.fetch_add(1, Ordering::Relaxed);
        }
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
}

/// Connects to NATS, sets up the retained bucket, loads the retained replica, installs the
/// fabric in `broker` and starts the tasks (ended by `shutdown`). Fails when no NATS server
/// answers within `connect_timeout`.
pub async fn start(
    broker: Arc<Broker>,
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
    let options = async_nats::ConnectOptions::new()
        .name(format!("tern {}", config.node))
        .no_echo()
        .connection_timeout(connect_timeout)
        .event_callback(move |event| {
            let metrics = events.clone();
            let node = node.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics.connected.store(true, Ordering::Relaxed);
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
    let bucket = retained_bucket(&js, config.retained_replicas).await?;

    // The replica first, so that a subscriber connecting right after start finds what the
    // cluster retains: the watch delivers every current value, then the changes.
    let mut watch = bucket
        .watch_all()
        .await
        .map_err(|e| ClusterError::Nats(format!("watch of {RETAINED_BUCKET}: {e}")))?;
    let pending = bucket
        .status()
        .await
        .map(|s| s.values())
        .map_err(|e| ClusterError::Nats(format!("status of {RETAINED_BUCKET}: {e}")))?;
    let mut loaded = 0u64;
    while loaded < pending {
        match tokio::time::timeout(connect_timeout, watch.next()).await {
            Ok(Some(Ok(entry))) => {
                apply_entry(&broker, &metrics, entry);
                loaded += 1;
            }
            Ok(Some(Err(e))) => return Err(ClusterError::Nats(format!("retained watch: {e}"))),
            Ok(None) | Err(_) => break,
        }
    }
    tracing::info!(node = %config.node, retained = loaded, "cluster: retained replica loaded");

    let inbound = client
        .subscribe(format!("{}>", crate::subject::LIVE_PREFIX))
        .await
        .map_err(|e| ClusterError::Nats(format!("subscribe: {e}")))?;

    let queue = config.queue.max(1);
    let (live_tx, live_rx) = mpsc::channel(queue);
    let (ret_tx, ret_rx) = mpsc::channel(queue);
    broker.set_fabric(Arc::new(NatsFabric {
        live: live_tx,
        retained: ret_tx,
        metrics: metrics.clone(),
    }));

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
    tokio::spawn(run_inbound(
        broker.clone(),
        inbound,
        metrics.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(run_watch(broker, watch, metrics.clone(), shutdown.clone()));
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
        node: config.node,
    })
}

/// The retained bucket: created on first use, history 1, `replicas` copies. Created as its
/// stream (what `create_key_value` would make), since async-nats's bucket creation first reads
/// the account's JetStream info in a shape that nats-server 2.9 does not answer with.
async fn retained_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(RETAINED_BUCKET).await {
        return Ok(store);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{RETAINED_BUCKET}"),
        description: Some("tern: retained messages of every account".to_string()),
        subjects: vec![format!("$KV.{RETAINED_BUCKET}.>")],
        max_messages_per_subject: 1,
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
        return Err(ClusterError::Nats(format!(
            "create bucket {RETAINED_BUCKET}: {e}"
        )));
    }
    js.get_key_value(RETAINED_BUCKET)
        .await
        .map_err(|e| ClusterError::Nats(format!("open bucket {RETAINED_BUCKET}: {e}")))
}

/// Publishes the live queue on core NATS.
async fn run_live_out(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Out>,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let out = tokio::select! {
            out = rx.recv() => out,
            () = shutdown.cancelled() => None,
        };
        let Some(out) = out else { return };
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
        let out = tokio::select! {
            out = rx.recv() => out,
            () = shutdown.cancelled() => None,
        };
        let Some(out) = out else { return };
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
async fn run_inbound(
    broker: Arc<Broker>,
    mut sub: async_nats::Subscriber,
    metrics: Arc<ClusterMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            msg = sub.next() => msg,
            () = shutdown.cancelled() => None,
        };
        let Some(msg) = msg else { return };
        match decode_live(&msg.subject, msg.payload) {
            Ok(m) => {
                metrics.received.fetch_add(1, Ordering::Relaxed);
                broker.publish_remote(Arc::new(m));
            }
            Err(e) => {
                metrics.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %msg.subject, error = %e, "cluster: undecodable message skipped");
            }
        }
    }
}

/// A live message: the record, checked against its subject (the account and topic must agree).
fn decode_live(subject: &str, payload: Bytes) -> Result<Message, String> {
    let d = decode_subject(subject).map_err(|e| e.to_string())?;
    if d.kind != SubjectKind::Live {
        return Err("not a live subject".into());
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
        let entry = tokio::select! {
            entry = watch.next() => entry,
            () = shutdown.cancelled() => None,
        };
        match entry {
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
