//! The cluster seam: how the messages of one node reach the other nodes, and theirs this one
//! (issue 17, `docs/cluster.md` once written; the design is `scale-out.md` §3).
//!
//! A single node has no fabric and pays one relaxed load per publish for it. In cluster mode
//! `tern-cluster` installs one ([`Broker::set_fabric`]): after a publication was routed to this
//! node's sessions, [`Fabric::published`] hands it over (the fabric encodes it and queues it for
//! the other nodes without blocking), and what the other nodes published comes back in through
//! [`Broker::publish_remote`] (routed to this node's sessions only: no taps, no fabric, so
//! nothing goes round twice) and [`Broker::apply_remote_retained`] (the retained replica).
//!
//! Like the taps, the fabric is called on the publisher's path with broker state borrowed: it
//! must not block nor call back into the broker.

use std::sync::Arc;

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::Metrics;

/// The other nodes, as this node's broker sees them (see the module).
pub trait Fabric: Send + Sync + std::fmt::Debug {
    /// `msg` was published on this node and routed here. `durable_retained`: a retained
    /// message (or delete) that the node's own retained store would keep (false for the devices
    /// layer's derived state, which every node republishes from its own records).
    fn published(&self, msg: &Arc<Message>, durable_retained: bool);
}

impl Broker {
    /// Installs the fabric (once; later calls are ignored).
    pub fn set_fabric(&self, fabric: Arc<dyn Fabric>) {
        let _ = self.fabric.set(fabric);
    }

    /// Whether a fabric is installed (cluster mode).
    pub fn is_clustered(&self) -> bool {
        self.fabric.get().is_some()
    }

    /// Routes a message another node published to this node's sessions: no taps (the node it
    /// was published on ran them), no fabric, and the retained tree is left to
    /// [`Broker::apply_remote_retained`]. Returns how many sessions it was queued for.
    pub fn publish_remote(&self, msg: Arc<Message>) -> usize {
        Metrics::add(&self.metrics.messages_in_remote, 1);
        self.route(&msg).sessions
    }

    /// Applies a retained message (an empty payload: a delete) that the cluster's retained
    /// replica holds, to this node's retained tree, without a store write of its own.
    pub fn apply_remote_retained(&self, msg: Arc<Message>) {
        if self.config.retain_available {
            self.set_retained(&msg, false);
        }
    }

    /// Hands a publication of this node to the fabric, if there is one.
    pub(crate) fn to_fabric(&self, msg: &Arc<Message>, durable_retained: bool) {
        if let Some(fabric) = self.fabric.get() {
            fabric.published(msg, durable_retained);
        }
    }
}
