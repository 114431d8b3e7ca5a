//! tern-cluster: the seam between one tern node and the cluster of issue 17 (tern nodes sharing
//! state through NATS JetStream).
//!
//! This is only the first part of that seam, and not a cluster yet: nothing here talks to NATS.
//! It holds the encoding every later part relies on, the MQTT topic → NATS subject mapping: QoS 0
//! goes out on core NATS as `tern.m.<acct>.<topic>`, QoS 1 is appended to shard stream `s` as
//! `tern.q.<s>.<acct>.<topic>`, and a retained message is stored in the KV bucket `tern_ret` under
//! `<acct>.<topic>`. The encoding is pure and bijective, so a node receiving a subject recovers the
//! exact topic, account and shard. The `Fabric` trait, its NATS implementation and the client
//! come later.
//!
//! Layout:
//! - `subject`: [`encode_topic`] and its inverse [`decode_subject`] for the three
//!   [`SubjectKind`]s, [`encode_filter`] (a topic filter as the one or two NATS subjects that
//!   receive at least every matching topic), [`shard_of`] (the stable hash that picks a topic's
//!   shard), and [`SubjectError`], each message saying what is wrong with a subject

mod nats;
mod subject;

#[cfg(test)]
mod proptests;

pub use nats::{
    Cluster, ClusterConfig, ClusterError, ClusterMetrics, NatsFabric, RETAINED_BUCKET, start,
};
pub use subject::{
    Decoded, LIVE_PREFIX, SHARD_PREFIX, SubjectError, SubjectKind, decode_subject, encode_filter,
    encode_topic, shard_of,
};
