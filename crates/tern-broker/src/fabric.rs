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
//!
//! Shared subscriptions across nodes: every node routes every publication, so each node asks
//! the fabric, for each `$share` group the message matched here, whether this node delivers
//! the group's copy ([`Fabric::share_here`]); the fabric answers the same on every node (one
//! node per message and group). The broker keeps the count of members of each group on this
//! node ([`Broker::shared_groups`]) and pings the fabric when it changes
//! ([`Fabric::shares_changed`]), so that the fabric can tell the other nodes, with how many of
//! them are connected. A group's QoS 1/2 copy for a member here gets its own `Arc`, shown to the
//! fabric ([`Fabric::share_delivering`]), which so learns when the member acknowledged it; and
//! [`Broker::deliver_shared`] delivers a message the fabric hands over from a node that died.
//! Without a fabric none of this runs: a group's choice reads no more than before.

use std::pin::Pin;
use std::sync::Arc;

use tern_store::{SessionRecord, SubscriptionRecord};

use crate::broker::{Broker, RegistryShard};
use crate::close::CloseReason;
use crate::message::{Cid, Message, Micros};
use crate::session::{
    ConnLink, InflightMark, Origin, Session, SessionKey, Subscription, SubscriptionKey, WillSpec,
};
use tern_topic::ShareMode;

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

    /// Whether this node delivers `msg`'s copy for `group`, a shared group with members on
    /// this node that `msg` matched (on the node it was published on and on every node that
    /// routes it from the fabric). The fabric must answer so that one node in the cluster
    /// delivers it. The default: every node delivers (each picks among its own members).
    fn share_here(&self, group: &ShareGroupRef<'_>, msg: &Message) -> bool {
        let _ = (group, msg);
        true
    }

    /// The members of a shared group on this node changed (a member joined or left): the
    /// fabric reads [`Broker::shared_groups`] later, off this path. The default does nothing.
    fn shares_changed(&self) {}

    /// An account's subscription index on this node got its first subscription, or lost its
    /// last one ([`Broker::accounts_with_subscriptions`] says which have some now). Never blocks.
    fn interest_changed(&self) {}

    /// Every ticket up to this one is confirmed (stored by the cluster).
    fn confirmed(&self) -> FabricTicket;

    /// Ready once `ticket` is confirmed.
    fn wait_confirmed(&self, ticket: FabricTicket) -> FabricWait;

    /// A client connected on this node at `at` (broker clock): a connection of the same
    /// client on another node must give way ([`Broker::take_over_remote`] there).
    fn connected(&self, key: &SessionKey, at: Micros);

    /// A client resumes (Clean Start 0) a session this node does not hold: the cluster's
    /// image of it, if the cluster keeps one. The broker makes the session from it, holding
    /// what is routed to it, and calls [`Adoption::start`] with it: the fabric then replays
    /// what the session missed ([`Broker::route_replayed`]) and releases the hold
    /// ([`Broker::release_hold`]). Called with the client's registry shard locked: it must
    /// not wait.
    fn adopt(&self, _key: &SessionKey) -> Option<Adoption> {
        None
    }

    /// The durable state of a persistent session of this node changed (connected,
    /// disconnected, subscribed, unsubscribed, its will) or it ended, or a client connected
    /// with Clean Start (whose earlier session, wherever it is, ends): the fabric reads it
    /// again with [`Broker::session_image`]. Must not block.
    fn session_changed(&self, _key: &SessionKey) {}

    /// REST removes `key`'s session, which another node holds or held: that node ends it
    /// (DISCONNECT 0x98 to a connected client) and the cluster's record goes.
    fn remove_session(&self, _key: &SessionKey) {}

    /// The sessions of accounts `cids` that the cluster keeps (persistent ones, and those
    /// with a will), as last written by their nodes: the REST API of any node lists them.
    fn cluster_sessions(&self, _cids: &[Cid]) -> Vec<ClusterSession> {
        Vec::new()
    }

    // ---- `$share` QoS 1/2 across a node's crash (tern-cluster's share.rs) ----

    /// A shared group's QoS 1/2 copy was made for one member of this node: `msg` is its own
    /// `Arc`, held by that member's delivery until its client acknowledged it (or the session
    /// dropped it), so that the fabric can tell when every copy it saw is done. Called on the
    /// routing path with broker state borrowed: it must not block. The default does nothing.
    fn share_delivering(&self, _msg: &Arc<Message>) {}

    // Checkpoints of this node's sessions, and REST changes of sessions other nodes hold.

    /// QoS 1/2 deliveries of `key`'s session were sent or completed since the fabric last
    /// read it with [`Broker::session_checkpoint`]: its cursor may move. Called once until
    /// then, on the connection's path: must not block.
    fn deliveries_moved(&self, _key: &SessionKey) {}

    /// REST changes the subscriptions of `key`'s session, which another node holds or held
    /// (it is not on this node): the node that holds it applies `change`
    /// ([`Broker::change_here`] there), or, when no node holds it, the cluster's record
    /// changes. One outcome per item of `change`.
    fn change_remote(&self, _key: &SessionKey, change: RemoteChange) -> RemoteCall {
        let n = change.len();
        Box::pin(std::future::ready(vec![RemoteOutcome::Unanswered; n]))
    }
}

/// A REST change of the subscriptions of a session another node holds
/// ([`Fabric::change_remote`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteChange {
    /// Add (or replace) these, checked against the rights of token `token_id` (the caller's)
    /// on the node that holds the session, as `POST /mqtt/sessions/{sel}/subscriptions` does.
    Subscribe {
        subscriptions: Vec<SubscriptionRecord>,
        token_id: Option<u64>,
    },
    /// Remove the subscriptions of these keys (their stored form, [`SubscriptionKey::to_stored`]).
    Unsubscribe {
        filters: Vec<bytestring::ByteString>,
    },
}

impl RemoteChange {
    /// Adds `subs` (as the caller's REST built them), checked against token `token_id`.
    pub fn subscribe(subs: &[Subscription], token_id: Option<u64>) -> RemoteChange {
        RemoteChange::Subscribe {
            subscriptions: subs.iter().map(crate::persist::sub_record).collect(),
            token_id,
        }
    }

    /// Removes the subscriptions of `keys`.
    pub fn unsubscribe(keys: &[SubscriptionKey]) -> RemoteChange {
        RemoteChange::Unsubscribe {
            filters: keys.iter().map(SubscriptionKey::to_stored).collect(),
        }
    }

    /// How many items it has (one outcome each).
    pub fn len(&self) -> usize {
        match self {
            RemoteChange::Subscribe { subscriptions, .. } => subscriptions.len(),
            RemoteChange::Unsubscribe { filters } => filters.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one item of a [`RemoteChange`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// Added (or already there), or removed.
    Done,
    /// Nothing to do: the session ended, or it has no such subscription.
    Unchanged,
    /// Refused as a client's SUBSCRIBE would be.
    Refused(crate::subscriptions::SubscribeError),
    /// The subscription does not parse (it did on the calling node: another version).
    Invalid,
    /// The node that holds the session did not answer, or the record could not be written.
    Unanswered,
}

/// The answer of [`Fabric::change_remote`], boxed: it exists only while REST waits for it.
pub type RemoteCall = Pin<Box<dyn Future<Output = Vec<RemoteOutcome>> + Send>>;

/// A session as the cluster's record has it (see [`Fabric::cluster_sessions`]).
#[derive(Debug, Clone)]
pub struct ClusterSession {
    pub image: SessionImage,
    pub connected: bool,
    /// Address and protocol level of its current or last connection.
    pub ip: String,
    pub protocol: u8,
}

/// A persistent session as the cluster keeps it: enough to make it again on any node.
#[derive(Debug, Clone)]
pub struct SessionImage {
    pub record: SessionRecord,
    pub subscriptions: Vec<SubscriptionRecord>,
}

/// The fabric's answer to [`Fabric::adopt`].
pub struct Adoption {
    pub image: SessionImage,
    /// The last packet id its former node sent (new deliveries here take the ids after it,
    /// so that a message sent again under its old id does not meet a new one).
    pub last_packet_id: tern_codec::PacketId,
    /// Called once with the session made from the image, its subscriptions indexed.
    pub start: Box<dyn FnOnce(Arc<Session>) + Send>,
}

impl std::fmt::Debug for Adoption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adoption")
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

/// An adopted session's subscriptions to index and its start, after the registry shard is
/// unlocked.
pub(crate) struct Adopted {
    subs: Vec<Subscription>,
    start: Box<dyn FnOnce(Arc<Session>) + Send>,
}

/// A persistent session of this node as [`Broker::session_image`] reads it.
#[derive(Debug, Clone)]
pub struct SessionCheckpoint {
    pub image: SessionImage,
    /// When its connection's CONNECT was accepted; `None` while disconnected.
    pub connected_at: Option<Micros>,
    /// The sequence of its oldest QoS 1/2 delivery not yet completed (queued, held or in
    /// flight), or `tail` when none is pending.
    pub low: u64,
    /// The sequence its next QoS 1/2 delivery gets: every delivery pushed before this view
    /// was taken is completed once `low` reaches `tail`.
    pub tail: u64,
    /// Its deliveries are held (a replay is running).
    pub holding: bool,
    /// Its QoS 1/2 messages in flight to the client, oldest first (at most [`MAX_MARKS`]).
    pub inflight: Vec<InflightMark>,
    /// Address and protocol level of its current or last connection.
    pub ip: String,
    pub protocol: u8,
}

/// In-flight messages a session's checkpoint names at most (the oldest; the others are
/// replayed as new deliveries): 18 bytes each in its record.
pub const MAX_MARKS: usize = 1024;

/// A shared group as [`Fabric::share_here`] sees it: `$share/<name>/<filter>` in account
/// `cid`'s namespace (the subscribers' account, which may be an ancestor of the publisher's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareGroupRef<'a> {
    pub cid: Cid,
    /// The whole group string, e.g. `g:2`.
    pub name: &'a str,
    /// The inner filter, without `$share/<name>/`.
    pub filter: &'a str,
    pub mode: ShareMode,
}

/// A shared group with members on this node ([`Broker::shared_groups`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedGroupCount {
    pub cid: Cid,
    pub name: Box<str>,
    pub filter: Box<str>,
    /// Members on this node (sessions, connected or not), at least 1.
    pub members: usize,
    /// Of them, those with a connection now.
    pub connected: usize,
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

    /// Tells the fabric, if there is one, that the durable state of `key`'s session changed.
    pub(crate) fn session_dirty(&self, key: &SessionKey) {
        if let Some(fabric) = self.fabric.get() {
            fabric.session_changed(key);
        }
    }

    /// The cluster's image of `key`'s session, if there is a fabric and it keeps one.
    pub(crate) fn adoption(&self, key: &SessionKey) -> Option<Adoption> {
        self.fabric.get()?.adopt(key)
    }

    /// Makes the session of a connecting client from the cluster's image (the client's
    /// registry shard `reg` is locked): its subscriptions and creation time come from the
    /// image, everything about the connection from the CONNECT. Its deliveries are held until
    /// the fabric's replay releases them. The will of the connection it had elsewhere is not
    /// sent: the session resumed.
    pub(crate) fn adopt(
        &self,
        reg: &mut RegistryShard,
        adoption: Adoption,
        key: SessionKey,
        expiry: u32,
        (link, origin): (ConnLink, Origin),
        will: Option<WillSpec>,
    ) -> (Arc<Session>, Adopted) {
        let Adoption {
            image,
            last_packet_id,
            start,
        } = adoption;
        let cid = key.cid;
        let session = Arc::new(Session::new(self.next_session_id(), key, false, expiry));
        let mut subs = Vec::with_capacity(image.subscriptions.len());
        {
            let mut st = session.lock();
            st.created = image.record.created;
            st.last_packet_id = last_packet_id;
            st.hold = Some(Box::default());
            for sub in &image.subscriptions {
                let parsed = SubscriptionKey::from_stored(&sub.filter)
                    .and_then(|key| Subscription::parse(key, sub.options, sub.id));
                match parsed {
                    Ok(s) => {
                        st.subscriptions.insert(s.clone());
                        subs.push(s);
                    }
                    Err(err) => {
                        tracing::warn!(filter = %sub.filter, %err, "cluster: a subscription of an adopted session no longer parses; dropped");
                    }
                }
            }
            st.set_origin(origin);
            st.conn = Some(link);
            st.will = will;
            self.persist_session(&session, &mut st);
        }
        reg.insert(session.clone());
        self.session_added(cid);
        (session, Adopted { subs, start })
    }

    /// Indexes an adopted session's subscriptions (its deliveries are held) and starts the
    /// fabric's replay.
    pub(crate) fn adopted(&self, session: &Arc<Session>, adopted: Adopted) {
        for sub in &adopted.subs {
            self.index(session, sub);
        }
        (adopted.start)(session.clone());
    }

    /// A persistent session of this node as the cluster keeps it, with where its deliveries
    /// stand; `None` if there is none (or it is not stored).
    pub fn session_image(&self, key: &SessionKey) -> Option<SessionCheckpoint> {
        self.read_session_image(key, false)
    }

    fn read_session_image(&self, key: &SessionKey, checkpoint: bool) -> Option<SessionCheckpoint> {
        let session = self.session(key)?;
        let mut st = session.lock();
        if checkpoint {
            // Deliveries that move from now on tell the fabric again.
            st.moved = false;
        }
        // A session that is not stored counts while it has a will (its node may die).
        if st.ended || !(st.stored || st.will.is_some()) {
            return None;
        }
        let mut subscriptions: Vec<SubscriptionRecord> = st
            .subscriptions
            .values()
            .map(crate::persist::sub_record)
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        Some(SessionCheckpoint {
            image: SessionImage {
                record: crate::persist::record(&session, &st),
                subscriptions,
            },
            connected_at: st.conn.as_ref().map(|c| c.connected_at),
            low: st.pending_low(),
            tail: st.next_seq,
            holding: st.hold.is_some(),
            inflight: st.inflight_marks(MAX_MARKS),
            ip: st.last_ip(),
            protocol: st.last_protocol,
        })
    }

    /// Routes a message a replay found to `session` only, past its hold, as routing would
    /// have when it was published (its non-shared subscriptions, their conditions, No
    /// Local). `dup`: the packet id it was in flight under on the session's former node; it
    /// goes out again under that id with DUP=1, or (`true`: a QoS 2 message whose PUBREC that
    /// node had) its PUBREL does. Returns whether it was queued.
    pub fn route_replayed(
        &self,
        session: &Arc<Session>,
        msg: &Arc<Message>,
        dup: Option<(tern_codec::PacketId, bool)>,
    ) -> bool {
        if msg.is_expired(self.clock.now()) {
            return false;
        }
        crate::session::replaying(dup, || self.route_to(session, msg))
    }

    /// Releases an adopted session's hold: what was routed to it during the replay goes out
    /// after what the replay queued.
    pub fn release_hold(&self, session: &Arc<Session>) {
        let mut st = session.lock();
        if let Some(held) = st.hold.take() {
            st.queue.extend(*held);
        }
        drop(st);
        session.wake();
    }

    /// Ends this node's copy of `key`'s session without its will: the cluster gave the
    /// session to another node (its record there is newer). A connection on it closes with
    /// 0x8E (Session taken over).
    pub fn forget_session(&self, key: &SessionKey) -> bool {
        let Some(session) = self.session(key) else {
            return false;
        };
        let kick = session.lock().conn.as_ref().map(|l| l.kick.clone());
        self.end_session(&session);
        if let Some(kick) = kick {
            kick.kick(CloseReason::SessionTakenOver);
        }
        true
    }

    /// The REST views of the sessions of accounts `cids` that the cluster keeps and this node
    /// does not hold (connected to another node, or offline since), with their subscriptions;
    /// empty on a single node. Queue sizes and counters live on their node: 0 here.
    pub fn cluster_session_views(
        &self,
        cids: &[Cid],
    ) -> Vec<(crate::SessionView, Vec<crate::SubscriptionView>)> {
        let Some(fabric) = self.fabric.get() else {
            return Vec::new();
        };
        fabric
            .cluster_sessions(cids)
            .into_iter()
            .filter(|r| self.session(&r.image.record.key).is_none())
            .map(|r| {
                let rec = &r.image.record;
                let subs: Vec<crate::SubscriptionView> = r
                    .image
                    .subscriptions
                    .iter()
                    .filter_map(|s| {
                        SubscriptionKey::from_stored(&s.filter)
                            .and_then(|k| Subscription::parse(k, s.options, s.id))
                            .ok()
                    })
                    .map(|s| s.view())
                    .collect();
                let expires = match (r.connected, rec.disconnected_at) {
                    (false, Some(at)) if rec.expiry_interval != u32::MAX => {
                        Some((at + u64::from(rec.expiry_interval) * 1_000_000) as f64 / 1e6)
                    }
                    _ => None,
                };
                let view = crate::SessionView {
                    id: crate::session::public_id_of(&rec.key),
                    client_id: rec.key.client_id.to_string(),
                    cid: rec.key.cid,
                    connected: r.connected,
                    clean: false,
                    ip: r.ip,
                    expires,
                    expiry_interval: rec.expiry_interval,
                    size: 0,
                    queued: 0,
                    protocol_version: r.protocol,
                    subscriptions: subs.len() as u64,
                    stats: Default::default(),
                };
                (view, subs)
            })
            .collect()
    }

    /// Every shared group with members on this node, with their count, in no particular order
    /// (what a fabric tells the other nodes, see [`Fabric::shares_changed`]).
    pub fn shared_groups(&self) -> Vec<SharedGroupCount> {
        let mut groups: Vec<SharedGroupCount> = self
            .share_members
            .lock()
            .iter()
            .map(|((cid, name, filter), &members)| SharedGroupCount {
                cid: *cid,
                name: name.clone(),
                filter: filter.clone(),
                members,
                connected: 0,
            })
            .collect();
        // The connected members, from the index (`share_members` is a leaf lock, so it is
        // read first and let go).
        for g in &mut groups {
            if let Some(ns) = self.namespace(g.cid) {
                let index = ns.subs.read();
                g.connected = index.shared_group(&g.name, &g.filter).map_or(0, |group| {
                    group
                        .members()
                        .iter()
                        .filter(|(k, _)| k.session.is_connected())
                        .count()
                });
            }
        }
        groups
    }

    /// Records that shared group `name` on `filter` in `cid`'s namespace has `members` members
    /// here now. Called with the namespace's index locked for writing, so that the counts of one
    /// group are recorded in the order the index changed.
    pub(crate) fn count_share_members(&self, cid: Cid, name: &str, filter: &str, members: usize) {
        let mut counts = self.share_members.lock();
        if members == 0 {
            counts.remove(&(cid, Box::from(name), Box::from(filter)));
        } else {
            counts.insert((cid, name.into(), filter.into()), members);
        }
    }

    /// Tells the fabric, if there is one, that the members of a shared group here changed.
    pub(crate) fn shares_changed(&self) {
        if let Some(fabric) = self.fabric.get() {
            fabric.shares_changed();
        }
    }

    pub(crate) fn interest_changed(&self) {
        if let Some(fabric) = self.fabric.get() {
            fabric.interest_changed();
        }
    }

    /// Removes a session that another node holds (see [`Fabric::remove_session`]); nothing on a
    /// single node.
    pub fn remove_cluster_session(&self, key: &SessionKey) {
        if let Some(fabric) = self.fabric.get() {
            fabric.remove_session(key);
        }
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

    // Checkpoints of this node's sessions, and REST changes of sessions other nodes hold.

    /// [`Broker::session_image`] for the fabric's checkpoint: from now on, deliveries of the
    /// session that move tell the fabric again ([`Fabric::deliveries_moved`]).
    pub fn session_checkpoint(&self, key: &SessionKey) -> Option<SessionCheckpoint> {
        self.read_session_image(key, true)
    }

    /// Tells the fabric that deliveries of `key`'s session were sent or completed.
    pub(crate) fn deliveries_moved(&self, key: &SessionKey) {
        if let Some(fabric) = self.fabric.get() {
            fabric.deliveries_moved(key);
        }
    }

    /// REST changes the subscriptions of `key`'s session, which another node holds or held
    /// (see [`Fabric::change_remote`]); every item unanswered on a single node.
    pub async fn change_cluster_session(
        &self,
        key: &SessionKey,
        change: RemoteChange,
    ) -> Vec<RemoteOutcome> {
        match self.fabric.get() {
            Some(fabric) => fabric.change_remote(key, change).await,
            None => vec![RemoteOutcome::Unanswered; change.len()],
        }
    }

    /// Applies a change another node's REST asked for to `key`'s session here, as this
    /// node's REST would ([`Broker::add_subscription`], [`Broker::remove_subscription`]);
    /// `None` if this node does not hold the session.
    pub fn change_here(
        &self,
        key: &SessionKey,
        change: &RemoteChange,
    ) -> Option<Vec<RemoteOutcome>> {
        let session = self.session(key)?;
        if session.lock().ended {
            return None;
        }
        let outcomes = match change {
            RemoteChange::Subscribe {
                subscriptions,
                token_id,
            } => {
                let rights = token_id.and_then(|id| self.auth.token_rights(id));
                subscriptions
                    .iter()
                    .map(|rec| {
                        let parsed = SubscriptionKey::from_stored(&rec.filter)
                            .and_then(|k| Subscription::parse(k, rec.options, rec.id));
                        let Ok(sub) = parsed else {
                            return RemoteOutcome::Invalid;
                        };
                        let by = crate::subscriptions::Subscriber::Admin;
                        match self.subscribe(&session, sub, rights.as_ref(), by) {
                            Ok((is_new, sub)) => {
                                if is_new || session.lock().subscriptions.contains_key(&sub.key) {
                                    RemoteOutcome::Done
                                } else {
                                    RemoteOutcome::Unchanged
                                }
                            }
                            Err(e) => RemoteOutcome::Refused(e),
                        }
                    })
                    .collect()
            }
            RemoteChange::Unsubscribe { filters } => filters
                .iter()
                .map(|f| match SubscriptionKey::from_stored(f) {
                    Ok(k) if self.remove_subscription(&session, &k) => RemoteOutcome::Done,
                    Ok(_) => RemoteOutcome::Unchanged,
                    Err(_) => RemoteOutcome::Invalid,
                })
                .collect(),
        };
        Some(outcomes)
    }

    /// For a subscription added to the cluster's record of a session no node holds (its node
    /// is dead): what this node's REST would answer for it, short of the session itself: it
    /// parses, the caller's token (`token_id`) allows it, and a new one (`existing`: the
    /// subscriptions the record has, `replaces`: it has this one) fits the per-session limit
    /// and the account tree's quota as this node counts it. `None`: it may be added.
    pub fn check_record_subscription(
        &self,
        cid: Cid,
        rec: &SubscriptionRecord,
        token_id: Option<u64>,
        existing: usize,
        replaces: bool,
    ) -> Option<RemoteOutcome> {
        let parsed = SubscriptionKey::from_stored(&rec.filter)
            .and_then(|k| Subscription::parse(k, rec.options, rec.id));
        let Ok(mut sub) = parsed else {
            return Some(RemoteOutcome::Invalid);
        };
        if let Some(rights) = token_id.and_then(|id| self.auth.token_rights(id))
            && !sub.authorize(&rights)
        {
            return Some(RemoteOutcome::Refused(
                crate::subscriptions::SubscribeError::NotAuthorized,
            ));
        }
        if !replaces
            && (existing >= self.config.max_subscriptions_per_session
                || self.subscription_quota_full(cid))
        {
            return Some(RemoteOutcome::Refused(
                crate::subscriptions::SubscribeError::QuotaExceeded,
            ));
        }
        None
    }
}
