//! tern-cluster: cluster mode (issue 17): tern nodes sharing publications, QoS 1/2 messages,
//! retained messages and client ownership through NATS JetStream (README "Cluster mode"; the
//! design is `scale-out.md` §3). The broker core knows only the seam it calls,
//! `tern_broker::Fabric`; this crate implements it.
//!
//! Built so far: QoS 0 on core NATS as `tern.m.<acct>.<topic>`, each node subscribed to the
//! accounts it has subscribers for (and those below them); QoS 1/2 appended to shard stream
//! `TERN_Q_<s>` as `tern.q.<s>.<acct>.<topic>` before the publisher's acknowledgement, and read
//! by every node; retained messages in the KV bucket `tern_ret` under `<acct>.<topic>`, replicated
//! into every node's retained tree; takeover of a client connected to another node; a node cut
//! off from NATS marked unavailable; persistent sessions and wills across nodes (`sessions`);
//! accounts and tokens in KV (`cfg`); `$share` groups across nodes (each message to one member
//! in the cluster, through the member registry in the KV bucket `tern_share`); REST calls that
//! act on another node's session; the devices layer across nodes (`gw`).
//!
//! Layout:
//! - `subject`: [`encode_topic`] and its inverse [`decode_subject`] for the three
//!   [`SubjectKind`]s, [`encode_filter`] (a topic filter as the one or two NATS subjects that
//!   receive at least every matching topic), [`shard_of`] (the stable hash that picks a topic's
//!   shard), and [`SubjectError`], each message saying what is wrong with a subject
//! - `nats`: [`start`] connects, sets up the bucket and the streams, loads the retained
//!   replica, installs the [`NatsFabric`] and runs its tasks (queues out, readers in, connect
//!   notices, the watchdog); [`ClusterMetrics`] are read by the daemon's `/metrics`
//! - `cfg`: accounts and tokens in the KV bucket `tern_cfg` ([`CfgReplica`], installed in the
//!   directory by [`start`]): loaded before the listeners open, then followed; ids that no two
//!   nodes share
//! - `gw`: the devices layer across nodes ([`GwShare`], tern-gw's `GwReplica`, installed by
//!   `Cluster::start_gw`): every shared store op in the stream `TERN_GW`, entities and id
//!   blocks in the KV bucket `tern_gw`
//! - `share`: the `$share` member registry (each node's groups in KV `tern_share`, watched by
//!   every node) and the choice every node computes alike: which node delivers a group's copy

mod cfg;
mod gw;
mod nats;
mod sessions;
mod share;
mod subject;

#[cfg(test)]
mod proptests;

pub use cfg::{CFG_BUCKET, CfgReplica, DeletedHook, ID_BLOCK, ID_LOW, WRITE_TRIES};
pub use gw::{GW_BUCKET, GW_STREAM, GwShare};
pub use nats::{
    Cluster, ClusterConfig, ClusterError, ClusterMetrics, NatsFabric, RETAINED_BUCKET, start,
};
pub use sessions::{NODES_BUCKET, SESSIONS_BUCKET};
pub use share::{HEARTBEAT as SHARE_HEARTBEAT, SHARE_BUCKET, STALE_AFTER as SHARE_STALE_AFTER};
pub use subject::{
    Decoded, LIVE_PREFIX, SHARD_PREFIX, SubjectError, SubjectKind, decode_subject, encode_filter,
    encode_topic, shard_of,
};
