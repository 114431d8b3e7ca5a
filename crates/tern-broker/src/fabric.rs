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

use std::pin::Pin;
use std::sync::Arc;

use crate::broker::Broker;
use crate::close::CloseReason;
use crate::message::{Message, Micros};
use crate::session::SessionKey;

/// A position in the fabric's stream of durable publications (QoS 1/2 messages stored by the
/// cluster): a publisher's acknowledgement waits until the fabric confirmed it. 0: nothing to
/// wait for.
pub type FabricTicket = u64;

/// A wait for the fabric, boxed: it exists only while an acknowledgement is held.
pub type FabricWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The other nodes, as this node's broker sees them (see the module).
pub trait Fabric: Send + Sync + std::fmt::Debug {
    /// `msg` was published on this node and routed here. `durable_retained`: a retained
    /// message (or delete) that the node's own retained store would keep (false for the devices
    /// layer's derived state, which every node republishes from its own records). Returns the
    /// ticket the publisher's acknowledgement waits for (0: none).
    fn published(&self, msg: &Arc<Message>, durable_retained: bool) -> FabricTicket;

    /// Every ticket up to this one is confirmed (stored by the cluster).
    fn confirmed(&self) -> FabricTicket;

    /// Ready once `ticket` is confirmed.
    fn wait_confirmed(&self, ticket: FabricTicket) -> FabricWait;

    /// A client connected on this node at `at` (broker clock): a connection of the same
    /// client on another node must give way ([`Broker::take_over_remote`] there).
    fn connected(&self, key: &SessionKey, at: Micros);
}

impl Broker {
    /// Installs the fabric (once; later calls are ignored).
    pub fn set_fabric(&self, fabric: Arc<dyn Fabric>) {
        let _ = self.fabric.set(fabric);
    }

    /// Cluster mode: marks this node unavailable (it lost NATS or its JetStream quorum for too
    /// long) or available again. Unavailable, every connection is closed (v5: DISCONNECT 0x9C
    /// Use another server; 0x88 is a CONNACK code only), new CONNECTs are refused with 0x88
    /// (Server unavailable) and `/health` answers 503, so that a load
    /// balancer moves the clients to a node that has the cluster.
    pub fn set_unavailable(&self, unavailable: bool) {
        let was = self
            .unavailable
            .swap(unavailable, std::sync::atomic::Ordering::AcqRel);
        if unavailable && !was {
            self.kick_all(CloseReason::ClusterUnavailable);
        }
    }

    /// Whether this node is marked unavailable ([`Broker::set_unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        self.unavailable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a fabric is installed (cluster mode).
    pub fn is_clustered(&self) -> bool {
        self.fabric.get().is_some()
    }

    /// Routes a message another node published to this node's sessions: no taps (the node it
    /// was published on ran them), no fabric, and the retained tree is left to
    /// [`Broker::apply_remote_retained`]. Returns how many sessions it was queued for.
    pub fn publish_remote(&self, msg: Arc<Message>) -> usize {
        self.route(&msg).sessions
    }

    /// Applies a retained message (an empty payload: a delete) that the cluster's retained
    /// replica holds, to this node's retained tree, without a store write of its own.
    pub fn apply_remote_retained(&self, msg: Arc<Message>) {
        if self.config.retain_available {
            self.set_retained(&msg, false);
        }
    }

    /// Another node accepted a CONNECT of `key` at `at`: a connection of the same client here
    /// that is older closes with 0x8E (Session taken over), and its session ends here: the
    /// client's session lives on the node it connected to last. Ties of `at` go to the node
    /// whose name sorts first (`remote_first`). Returns whether one was taken over.
    pub fn take_over_remote(&self, key: &SessionKey, at: Micros, remote_first: bool) -> bool {
        let Some(session) = self.session(key) else {
            return false;
        };
        let (kick, since) = {
            let st = session.lock();
            match &st.conn {
                Some(link) => (Some(link.kick.clone()), link.connected_at),
                None => (None, 0),
            }
        };
        if kick.is_some() && (since > at || (since == at && !remote_first)) {
            // The connection here is the newer one: the other node gives way.
            return false;
        }
        self.end_session(&session);
        if let Some(kick) = kick {
            kick.kick(CloseReason::SessionTakenOver);
        }
        true
    }

    /// Tells the fabric, if there is one, that `key` connected here at `at`.
    pub(crate) fn connected_to_fabric(&self, key: &SessionKey, at: Micros) {
        if let Some(fabric) = self.fabric.get() {
            fabric.connected(key, at);
        }
    }

    /// Hands a publication of this node to the fabric, if there is one; returns the ticket its
    /// acknowledgement waits for.
    pub(crate) fn to_fabric(&self, msg: &Arc<Message>, durable_retained: bool) -> FabricTicket {
        match self.fabric.get() {
            Some(fabric) => fabric.published(msg, durable_retained),
            None => 0,
        }
    }

    /// Every fabric ticket up to this one is confirmed (all of them without a fabric).
    pub(crate) fn fabric_confirmed(&self) -> FabricTicket {
        self.fabric.get().map_or(u64::MAX, |f| f.confirmed())
    }

    /// Ready once the fabric confirmed `ticket` (at once without a fabric).
    pub(crate) fn fabric_wait(&self, ticket: FabricTicket) -> Option<FabricWait> {
        let fabric = self.fabric.get()?;
        (ticket > fabric.confirmed()).then(|| fabric.wait_confirmed(ticket))
    }
}
