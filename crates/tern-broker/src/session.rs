//! Sessions: what the broker remembers about a client between and during connections.
//!
//! A [`Session`] is shared (`Arc`) between the registry, the subscription index (which holds it
//! as the subscriber key) and the connection that currently owns it. Its mutable part,
//! [`SessionState`], sits behind a `parking_lot::Mutex` that is only ever held for short,
//! synchronous steps (push a delivery, take ready deliveries, record an ack) and never across an
//! `.await`: publishers push without waiting, and the owning connection task drains.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytestring::ByteString;
use parking_lot::Mutex;
use tern_codec::{PacketId, QoS, SubscriptionOptions};
use tern_store::{Op, QueuedRecord, Store, Ticket};
use tern_topic::ShareMode;
use tokio::sync::Notify;

use crate::accounts::AclRules;
use crate::budget::QueueBudget;
use crate::close::CloseReason;
use crate::config::BrokerConfig;
use crate::filter::{self, Conditions, FilterError};
use crate::message::{Cid, Delivery, Message, Micros, SessionId};

pub use tern_store::SessionKey;

/// A subscription's identity within its session: the subscription string as the client sent it
/// (`$share/` and `$filter/` prefixes included) and the `cid` user property it came with
/// (docs/flespi.md#subscribing-and-filter: the string with its prefixes and the `cid` property
/// identifies the subscription). UNSUBSCRIBE names it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionKey {
    /// The subscription string.
    pub filter: ByteString,
    /// The `cid` user property of the SUBSCRIBE, if any.
    pub cid: Option<Cid>,
}

impl SubscriptionKey {
    pub fn new(filter: ByteString, cid: Option<Cid>) -> SubscriptionKey {
        SubscriptionKey { filter, cid }
    }

    /// The key as the store keeps it (format v1): the subscription string, plus `\0cid=<n>`
    /// with a `cid` property.
    pub fn to_stored(&self) -> ByteString {
        match self.cid {
            None => self.filter.clone(),
            Some(cid) => ByteString::from(format!("{}\0cid={cid}", self.filter)),
        }
    }

    /// A key from its stored form (see [`SubscriptionKey::to_stored`]).
    pub fn from_stored(stored: &ByteString) -> Result<SubscriptionKey, FilterError> {
        match stored.split_once('\0') {
            None => Ok(SubscriptionKey::new(stored.clone(), None)),
            Some((filter, suffix)) => {
                let cid = suffix
                    .strip_prefix("cid=")
                    .and_then(|n| n.parse::<Cid>().ok())
                    .ok_or_else(|| FilterError::Suffix(suffix.to_string()))?;
                Ok(SubscriptionKey::new(ByteString::from(filter), Some(cid)))
            }
        }
    }
}

/// Keys sort as their stored forms do (views list subscriptions in this order): by subscription
/// string, the one without a `cid` first, then by the `cid` property's decimal text.
impl Ord for SubscriptionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.filter
            .cmp(&other.filter)
            .then_with(|| match (self.cid, other.cid) {
                (Some(a), Some(b)) if a != b => a.to_string().cmp(&b.to_string()),
                (a, b) => a.cmp(&b),
            })
    }
}

impl PartialOrd for SubscriptionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cid {
            None => f.write_str(&self.filter),
            Some(cid) => write!(f, "{} (cid {cid})", self.filter),
        }
    }
}

/// One subscription of a session, under its [`SubscriptionKey`].
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The identity (see [`SubscriptionKey`]); UNSUBSCRIBE names it.
    pub key: SubscriptionKey,
    /// The topic filter the index matches (without `$share/<group>/` and `$filter/<params>/`).
    pub topic_filter: ByteString,
    /// The shared group's identity in the index (`<group>`, or `<group>/$filter/<params>`), if
    /// shared.
    pub share_group: Option<ByteString>,
    /// How the shared group picks a member.
    pub share_mode: ShareMode,
    /// Options with the QoS as granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier (v5).
    pub id: Option<u32>,
    /// `$filter` and `cid` conditions.
    pub conditions: Option<Arc<Conditions>>,
}

impl Subscription {
    /// Builds a subscription from its identity: the subscription string taken apart, the `cid`
    /// property as a condition.
    pub fn parse(
        key: SubscriptionKey,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Result<Subscription, FilterError> {
        let full = &*key.filter;
        let parsed = filter::parse(full)?;
        let mut conditions = parsed.conditions;
        if let Some(cid) = key.cid {
            let c = conditions.get_or_insert_with(Conditions::default);
            c.cids.push(cid);
            c.key.push_str(&format!("\0cid={cid}"));
        }
        let share_group = parsed.share_group.map(|g| {
            // The group's identity includes its conditions: members that filter differently are
            // different groups.
            let prefix_end = full.len() - parsed.topic_filter.len();
            let group = full[SHARE_PREFIX_LEN..prefix_end].trim_end_matches('/');
            if group.len() == g.len() {
                g
            } else {
                ByteString::from(group)
            }
        });
        Ok(Subscription {
            topic_filter: parsed.topic_filter,
            share_group,
            share_mode: parsed.share_mode,
            options,
            id,
            conditions: conditions.filter(|c| !c.is_empty()).map(Arc::new),
            key,
        })
    }

    /// Limits deliveries to the grants of an ACL token (replacing an earlier restriction).
    pub fn restrict(&mut self, rules: Arc<AclRules>) {
        let mut c = self.conditions.as_deref().cloned().unwrap_or_default();
        if let Some(at) = c.key.find("\0acl=") {
            c.key.truncate(at);
        }
        c.key.push_str(&format!("\0acl={:p}", Arc::as_ptr(&rules)));
        c.acl = Some(rules);
        self.conditions = Some(Arc::new(c));
    }

    /// Lifts an ACL restriction.
    pub fn unrestrict(&mut self) {
        if let Some(c) = self.conditions.as_deref().filter(|c| c.acl.is_some()) {
            let mut c = c.clone();
            c.acl = None;
            if let Some(at) = c.key.find("\0acl=") {
                c.key.truncate(at);
            }
            self.conditions = (!c.is_empty()).then(|| Arc::new(c));
        }
    }

    /// The subscription string as the client sent it.
    pub fn topic_string(&self) -> &str {
        &self.key.filter
    }
}

const SHARE_PREFIX_LEN: usize = "$share/".len();

/// Outbox capacity (deliveries) a session keeps however empty its queue; above it, a drained
/// queue gives its memory back (`release_queue_memory`).
const QUEUE_KEEP: usize = 1024;

/// What a QoS 1/2 message in flight towards the client waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// A message sent (or about to be re-sent) to the client and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: PacketId,
    pub delivery: Delivery,
    pub phase: Phase,
}

/// The will of the current or last connection.
#[derive(Debug, Clone)]
pub struct WillSpec {
    pub message: Arc<Message>,
    /// Will Delay Interval in seconds (v5).
    pub delay: u32,
    /// The token of the connection that set it: the will is checked against that token's
    /// rights as they are when it fires (a revoked token publishes nothing).
    pub token_id: Option<u64>,
}

/// The link between a session and the connection that owns it.
#[derive(Debug)]
pub struct ConnLink {
    /// Unique id of the owning connection.
    pub conn_id: u64,
    /// That connection's signals: closing it (takeover, administrative action, slow
    /// consumer) and waking it for deliveries.
    pub kick: Arc<Kick>,
    /// When its CONNECT was accepted (broker clock): the older of two connections of one
    /// client on two cluster nodes gives way (`fabric.rs`).
    pub connected_at: Micros,
}

/// The signals one connection waits for: a request to close it (takeover, administrative
/// action, slow consumer, shutdown) and deliveries queued for its session. One waiter per
/// connection, registered as a waker: the driver polls it without keeping a future.
#[derive(Debug, Default)]
pub struct Kick {
    /// Boxed: set once, at the end of a connection's life, and small until then.
    reason: Mutex<Option<Box<CloseReason>>>,
    deliveries: AtomicBool,
    waker: AtomicWaker,
    /// When the connection is closed for silence: [`Broker::deadline_ms`] milliseconds modulo
    /// 2^31 (0: never), with [`CONNECTED`] set once its CONNECT was accepted (keep alive) and
    /// clear before (the CONNECT deadline). The driver moves it on after each whole packet;
    /// the broker's deadline watch (`deadlines.rs`) kicks the connection once it passed, so
    /// that a connection's task holds no timer of its own. 32 bits, not 64: with them the
    /// `Kick` stays in one 64-byte allocation, one cache line, which the publishers to this
    /// connection's subscriptions write (`deliveries`) and its driver reads.
    ///
    /// [`Broker::deadline_ms`]: crate::Broker::deadline_ms
    deadline: AtomicU32,
}

/// The bit of [`Kick`]'s deadline that says it is a keep-alive deadline.
const CONNECTED: u32 = 1 << 31;
/// The bits of [`Kick`]'s deadline that hold the time.
const DEADLINE_MS: u32 = CONNECTED - 1;
/// How far ahead a deadline may be: half the range of its 31 bits (12.4 days), so that the
/// wrapping comparison tells "passed" from "not yet". A keep alive is at most 27.3 hours
/// (1.5 × 65,535 s); a longer CONNECT timeout is cut to this.
const DEADLINE_HORIZON_MS: u64 = 1 << 30;

thread_local! {
    /// Delivery signals sent from this thread that woke a connection (see
    /// [`Kick::wakes_on_this_thread`]).
    static WAKES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// What woke a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Close, telling the client this.
    Kicked(CloseReason),
    /// Deliveries were queued for the session.
    Deliveries,
}

impl Kick {
    /// Asks the connection to close with `reason`. The first reason wins.
    pub fn kick(&self, reason: CloseReason) {
        let mut slot = self.reason.lock();
        if slot.is_none() {
            *slot = Some(Box::new(reason));
            drop(slot);
            self.waker.wake();
        }
    }

    /// Tells the connection that deliveries are waiting.
    pub fn deliveries(&self) {
        if !self.deliveries.swap(true, Ordering::AcqRel) {
            WAKES.set(WAKES.get().wrapping_add(1));
            self.waker.wake();
        }
    }

    /// How many connections this thread has signalled deliveries to so far (wrapping). The
    /// difference across a synchronous step is how many subscribers that step woke: a
    /// connection driver asks it around handling what it read (see `tern_net::driver`).
    pub fn wakes_on_this_thread() -> u32 {
        WAKES.get()
    }

    /// The pending reason, if the connection was asked to close.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.lock().as_deref().cloned()
    }

    /// The next signal, if one is pending; otherwise `cx` is woken when one arrives. A kick
    /// wins over deliveries. A signal that arrives while nobody polls is kept.
    pub fn poll_signalled(&self, cx: &mut Context<'_>) -> Poll<Signal> {
        // Register first, then look: a signal set after the look wakes the registered waker.
        self.waker.register(cx.waker());
        if let Some(r) = self.reason() {
            return Poll::Ready(Signal::Kicked(r));
        }
        if self.deliveries.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Signal::Deliveries);
        }
        Poll::Pending
    }

    /// Sets when the connection is closed for silence: `after` from `now_ms` on the broker's
    /// deadline clock ([`Broker::deadline_ms`](crate::Broker::deadline_ms)), `None` for never;
    /// `connected` says whether it is the keep alive (close reason 0x8D) or the CONNECT
    /// deadline.
    pub(crate) fn set_deadline(&self, now_ms: u64, after: Option<Duration>, connected: bool) {
        let flag = if connected { CONNECTED } else { 0 };
        let at = after.map_or(0, |after| {
            let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            let at = now_ms.wrapping_add(after.min(DEADLINE_HORIZON_MS - 1)) as u32 & DEADLINE_MS;
            at.max(1)
        });
        self.deadline.store(at | flag, Ordering::Relaxed);
    }

    /// Kicks the connection if its deadline passed at `now_ms`. True if it did (the tests
    /// ask).
    pub(crate) fn check_deadline(&self, now_ms: u64) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        let at = deadline & DEADLINE_MS;
        let late = (now_ms as u32).wrapping_sub(at) & DEADLINE_MS;
        if at == 0 || u64::from(late) >= DEADLINE_HORIZON_MS {
            return false;
        }
        self.kick(if deadline & CONNECTED != 0 {
            CloseReason::KeepAliveTimeout
        } else {
            CloseReason::ConnectTimeout
        });
        true
    }

    /// Waits for the next signal (see [`Kick::poll_signalled`]). Cancel-safe.
    pub async fn signalled(&self) -> Signal {
        std::future::poll_fn(|cx| self.poll_signalled(cx)).await
    }
}

/// A client's session.
pub struct Session {
    pub id: SessionId,
    pub key: SessionKey,
    pub(crate) state: Mutex<SessionState>,
    /// Set while the outbox is over the backpressure mark: publishers pause reading.
    congested: AtomicBool,
    /// Set when a publisher gave up waiting for this session: it no longer holds publishers
    /// back until its outbox drained (then the queue budgets decide).
    exempt: AtomicBool,
    /// Woken (all waiters) when the outbox drained below half the backpressure mark. Made by
    /// the first publisher that waits: most sessions never congest, and the `Notify` (32 bytes)
    /// inline took every `Arc<Session>` into the allocator's next size class (400 → 448 bytes;
    /// with the cell, 384).
    drained: OnceLock<Box<Notify>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish()
    }
}

/// Sessions are compared by identity: the index uses `Arc<Session>` as its subscriber key.
impl PartialEq for Session {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Session {}
impl Hash for Session {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

/// What happened to a delivery pushed into a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; the owner was woken if connected.
    Queued,
    /// Dropped: QoS 0 over the soft message budget.
    DroppedQos0Overflow,
    /// Dropped: QoS 0 for an offline session that does not queue QoS 0.
    DroppedOffline,
    /// Dropped: the session ended.
    DroppedEnded,
    /// The hard byte budget was exceeded: the queue (this many deliveries, plus the one
    /// pushed) was dropped and the owning connection, if any, was kicked as a slow consumer.
    Overflow(usize),
}

/// What dropping a session's outbox removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct DroppedQueue {
    /// Deliveries dropped.
    pub count: usize,
    /// Their bytes (`Delivery::cost`), given back to the broker-wide budget.
    pub bytes: usize,
    /// The store ticket of their `Dequeue` ops (0: none stored).
    pub ticket: Ticket,
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionState {
    /// The connection that owns the session, if connected.
    pub conn: Option<ConnLink>,
    /// Session Expiry Interval in seconds; 0 ends the session when the connection closes,
    /// `u32::MAX` never expires.
    pub expiry_interval: u32,
    /// When the session was last disconnected (unix micros), for expiry.
    pub disconnected_at: Option<Micros>,
    /// Whether the session was started clean (for the REST view).
    pub clean: bool,
    /// Subscriptions by their key (subscription string and `cid` property).
    pub subscriptions: Subscriptions,
    /// Deliveries not yet sent (the outbox).
    pub queue: VecDeque<Delivery>,
    /// Sum of `Delivery::cost` over `queue`.
    pub queued_bytes: usize,
    /// Messages sent to the client and not yet acknowledged, in send order.
    pub inflight: VecDeque<Inflight>,
    /// How many of the first `inflight` entries must be re-sent (after a reconnect).
    pub resend: usize,
    /// Packet ids of QoS 2 messages received from the client whose PUBREL has not arrived.
    pub incoming_qos2: PacketIds,
    /// Last packet id assigned to an outgoing message.
    pub last_packet_id: PacketId,
    /// The will of the current or last connection.
    pub will: Option<WillSpec>,
    /// Set once the session is removed: pushes are dropped.
    pub ended: bool,
    /// Counters for events and the REST view.
    pub stats: SessionStats,
    /// Whether the session is in the store: its QoS 1/2 deliveries, subscriptions and state
    /// changes are submitted as ops, and its end deletes it there.
    pub stored: bool,
    /// Next sequence number of a stored delivery (1-based; 0 means "not stored").
    pub next_seq: u64,
    /// When the session was created (unix micros).
    pub created: Micros,
    /// Address of the current or last connection.
    pub last_peer: Option<std::net::SocketAddr>,
    /// Protocol level of the current or last connection (3, 4 or 5).
    pub last_protocol: u8,
    /// The token of the current or last connection.
    pub token_id: Option<u64>,
    /// Cluster mode: a session adopted from another node holds the deliveries routed to it
    /// here until the replay of what it missed there is queued (fabric.rs), so that old
    /// messages go out before new ones. `None` otherwise.
    pub hold: Option<Box<VecDeque<Delivery>>>,
    /// Cluster mode: deliveries were sent or completed since the fabric's last checkpoint
    /// looked at the session (its cursor may move; fabric.rs). Set once per checkpoint, with
    /// one call to the fabric.
    pub moved: bool,
}

/// A session's subscriptions by full filter string. The map is allocated with the first
/// subscription and freed with the last: many clients (trackers, sensors) only publish, and
/// every session of an idle client is memory the broker holds.
// Boxed on purpose: an empty `Option<Box<_>>` is one word, an empty `HashMap` six.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub struct Subscriptions(Option<Box<HashMap<SubscriptionKey, Subscription>>>);

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &SubscriptionKey) -> Option<&Subscription> {
        self.0.as_ref()?.get(key)
    }

    pub fn get_mut(&mut self, key: &SubscriptionKey) -> Option<&mut Subscription> {
        self.0.as_mut()?.get_mut(key)
    }

    pub fn contains_key(&self, key: &SubscriptionKey) -> bool {
        self.0.as_ref().is_some_and(|m| m.contains_key(key))
    }

    /// Adds or replaces (under the subscription's own key); returns the replaced subscription.
    pub fn insert(&mut self, sub: Subscription) -> Option<Subscription> {
        self.0.get_or_insert_default().insert(sub.key.clone(), sub)
    }

    pub fn remove(&mut self, key: &SubscriptionKey) -> Option<Subscription> {
        let map = self.0.as_mut()?;
        let removed = map.remove(key);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// Keeps the subscriptions `keep` returns true for (it may change them).
    pub fn retain(&mut self, keep: impl FnMut(&SubscriptionKey, &mut Subscription) -> bool) {
        if let Some(map) = self.0.as_mut() {
            map.retain(keep);
            if map.is_empty() {
                self.0 = None;
            }
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &SubscriptionKey> {
        self.0.iter().flat_map(|m| m.keys())
    }

    pub fn values(&self) -> impl Iterator<Item = &Subscription> {
        self.0.iter().flat_map(|m| m.values())
    }

    /// Removes and yields every subscription.
    pub fn drain(&mut self) -> impl Iterator<Item = (SubscriptionKey, Subscription)> + use<> {
        self.0.take().into_iter().flat_map(|m| m.into_iter())
    }
}

/// Packet ids of a session's inbound QoS 2 messages awaiting PUBREL; allocated while there are
/// any (most clients never publish QoS 2).
#[allow(clippy::box_collection)] // one word while empty, as `Subscriptions`
#[derive(Debug, Default)]
pub struct PacketIds(Option<Box<HashSet<PacketId>>>);

impl PacketIds {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &PacketId) -> bool {
        self.0.as_ref().is_some_and(|s| s.contains(id))
    }

    /// True if the id was not there yet.
    pub fn insert(&mut self, id: PacketId) -> bool {
        self.0.get_or_insert_default().insert(id)
    }

    pub fn remove(&mut self, id: &PacketId) -> bool {
        let Some(set) = self.0.as_mut() else {
            return false;
        };
        let removed = set.remove(id);
        if set.is_empty() {
            self.0 = None;
        }
        removed
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    pub fn iter(&self) -> impl Iterator<Item = &PacketId> {
        self.0.iter().flat_map(|s| s.iter())
    }
}

impl FromIterator<PacketId> for PacketIds {
    fn from_iter<I: IntoIterator<Item = PacketId>>(iter: I) -> PacketIds {
        let set: HashSet<PacketId> = iter.into_iter().collect();
        PacketIds((!set.is_empty()).then(|| Box::new(set)))
    }
}

/// Where the connection that attaches to a session comes from (kept in the session for the
/// REST view, events and the store).
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub peer: std::net::SocketAddr,
    pub protocol: tern_codec::ProtocolVersion,
    pub token_id: Option<u64>,
}

impl SessionState {
    /// The IP address of the current or last connection, as text ("" if none).
    pub fn last_ip(&self) -> String {
        self.last_peer
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    }

    /// Records where the owning connection comes from.
    pub(crate) fn set_origin(&mut self, origin: Origin) {
        self.last_peer = Some(origin.peer);
        self.last_protocol = origin.protocol.level();
        self.token_id = origin.token_id;
    }
}

/// Counters kept per session.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStats {
    /// Messages the client published.
    pub published: u64,
    /// Messages delivered to the client.
    pub received: u64,
    /// Messages of the client that were refused.
    pub rejected: u64,
    /// Messages dropped on the way to the client.
    pub dropped: u64,
}

/// The stable public id of the session of `key` ([`Session::public_id`]).
pub fn public_id_of(key: &SessionKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.cid.to_be_bytes().iter().chain(key.client_id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & ((1 << 53) - 1)).max(1)
}

thread_local! {
    /// Set while a replay pushes into a session: its deliveries pass a hold (see
    /// [`SessionState::hold`]).
    static REPLAYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The packet id the message a replay pushes had in flight on the session's former node
    /// ([`Delivery::dup_id`]).
    static REPLAY_DUP: std::cell::Cell<Option<(PacketId, bool)>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with pushes going past every session's hold (a replay's deliveries), marked as
/// sent before under packet id `dup` if it is set (with `true`: and its PUBREC received).
pub(crate) fn replaying<R>(dup: Option<(PacketId, bool)>, f: impl FnOnce() -> R) -> R {
    REPLAYING.set(true);
    REPLAY_DUP.set(dup);
    let out = f();
    REPLAYING.set(false);
    REPLAY_DUP.set(None);
    out
}

/// A message in flight to a client, as the cluster's record of its session keeps it
/// (`fabric.rs`): enough to know it again in a shard stream, and the packet id it went out
/// under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InflightMark {
    /// The message's `timestamp` (unique per publishing node).
    pub timestamp: Micros,
    /// The publisher's account.
    pub cid: Cid,
    pub packet_id: PacketId,
    /// QoS 2: its PUBREC came and its PUBREL went out (a PUBREL is due again, not the PUBLISH).
    pub released: bool,
}

impl SessionState {
    /// Where the session's QoS 1/2 deliveries stand (cluster checkpoints, fabric.rs): the
    /// sequence of the oldest one not yet completed (queued, held or in flight), or the next
    /// sequence when none is pending.
    pub fn pending_low(&self) -> u64 {
        let stored = |d: &Delivery| (d.seq != 0).then_some(d.seq);
        self.queue
            .iter()
            .filter_map(stored)
            .chain(self.inflight.iter().filter_map(|f| stored(&f.delivery)))
            .chain(self.hold.iter().flat_map(|h| h.iter().filter_map(stored)))
            .min()
            .unwrap_or(self.next_seq)
    }

    /// The QoS 1/2 messages in flight to the client, oldest first, at most `max` (cluster
    /// records, fabric.rs).
    pub fn inflight_marks(&self, max: usize) -> Vec<InflightMark> {
        self.inflight
            .iter()
            .take(max)
            .map(|f| InflightMark {
                timestamp: f.delivery.msg.timestamp,
                cid: f.delivery.msg.cid,
                packet_id: f.packet_id,
                released: f.phase == Phase::AwaitPubComp,
            })
            .collect()
    }
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        key: SessionKey,
        clean: bool,
        expiry_interval: u32,
    ) -> Session {
        Session {
            id,
            key,
            state: Mutex::new(SessionState {
                conn: None,
                expiry_interval,
                disconnected_at: None,
                clean,
                subscriptions: Subscriptions::default(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                inflight: VecDeque::new(),
                resend: 0,
                incoming_qos2: PacketIds::default(),
                last_packet_id: 0,
                will: None,
                ended: false,
                stats: SessionStats::default(),
                stored: false,
                next_seq: 1,
                created: crate::message::wall_micros(),
                last_peer: None,
                last_protocol: 0,
                token_id: None,
                hold: None,
                moved: false,
            }),
            congested: AtomicBool::new(false),
            exempt: AtomicBool::new(false),
            drained: OnceLock::new(),
        }
    }

    /// A stable identifier derived from the session key (the same across restarts and safe
    /// as a JSON number): the `<session id>` of event topics and the REST API.
    pub fn public_id(&self) -> u64 {
        public_id_of(&self.key)
    }

    /// Locks the session state for a short synchronous step.
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, SessionState> {
        self.state.lock()
    }

    /// Pushes a delivery into the outbox and wakes the owning connection. For a stored session
    /// a QoS 1/2 delivery is also submitted to the store; the ticket says when it is durable.
    /// The third value says whether the session is now congested (see [`Session::drained`]).
    /// The caller has taken room for the delivery in `budget` (given back unless it is
    /// queued); a queue dropped here gives its bytes back.
    pub fn push(
        &self,
        delivery: Delivery,
        config: &BrokerConfig,
        store: &Store,
        budget: &QueueBudget,
    ) -> (Push, Ticket, bool) {
        let mut st = self.state.lock();
        let (outcome, ticket) = st.push(&self.key, delivery, config, store, budget);
        let connected = st.conn.is_some();
        let over = connected
            && (st.queue.len() >= config.backpressure_messages
                || st.queued_bytes >= config.backpressure_bytes);
        if outcome == Push::Queued
            && let Some(link) = &st.conn
        {
            link.kick.deliveries();
        }
        drop(st);
        let mut congested = false;
        if outcome == Push::Queued && connected && over && !self.exempt.load(Ordering::Relaxed) {
            self.congested.store(true, Ordering::Relaxed);
            congested = true;
        }
        (outcome, ticket, congested)
    }

    /// Whether publishers should pause for this session.
    pub fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Relaxed)
    }

    /// Waits until the session is no longer congested. Cancel-safe.
    pub async fn drained(&self) {
        loop {
            let notified = self
                .drained
                .get_or_init(|| Box::new(Notify::new()))
                .notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Made and enabled before the look: `relieve` turns congestion off before it looks
            // for the `Notify`, so one of the two sees the other (the fences pair up).
            std::sync::atomic::fence(Ordering::SeqCst);
            if !self.is_congested() {
                return;
            }
            notified.await;
        }
    }

    /// A publisher waited too long: stop holding publishers back for this session until it
    /// catches up.
    pub fn exempt_from_backpressure(&self) {
        self.exempt.store(true, Ordering::Relaxed);
        self.relieve();
    }

    /// Called as the outbox shrinks: below half the mark, publishers may go on.
    pub(crate) fn drained_to(&self, queued: usize, bytes: usize, config: &BrokerConfig) {
        if queued <= config.backpressure_messages / 2 && bytes <= config.backpressure_bytes / 2 {
            self.exempt.store(false, Ordering::Relaxed);
            self.relieve();
        }
    }

    /// Releases every publisher waiting for this session.
    pub(crate) fn relieve(&self) {
        if self.congested.swap(false, Ordering::Relaxed) {
            std::sync::atomic::fence(Ordering::SeqCst);
            // Nobody waits if nobody made it.
            if let Some(drained) = self.drained.get() {
                drained.notify_waiters();
            }
        }
    }

    /// Wakes the owning connection (after state changes that may let it send more).
    pub fn wake(&self) {
        if let Some(link) = &self.state.lock().conn {
            link.kick.deliveries();
        }
    }

    /// Whether a connection currently owns the session.
    pub fn is_connected(&self) -> bool {
        self.state.lock().conn.is_some()
    }
}

impl SessionState {
    fn push(
        &mut self,
        key: &SessionKey,
        mut delivery: Delivery,
        config: &BrokerConfig,
        store: &Store,
        budget: &QueueBudget,
    ) -> (Push, Ticket) {
        if self.ended {
            return (Push::DroppedEnded, 0);
        }
        if delivery.qos == QoS::AtMostOnce {
            if self.conn.is_none() && !config.queue_qos0_offline {
                self.stats.dropped += 1;
                return (Push::DroppedOffline, 0);
            }
            if self.queue.len() >= config.max_queued_messages {
                self.stats.dropped += 1;
                return (Push::DroppedQos0Overflow, 0);
            }
        }
        let cost = delivery.cost();
        if self.queued_bytes + cost > config.max_queued_bytes {
            self.stats.dropped += 1;
            let dropped = self.drop_queue(key, store);
            budget.release(dropped.bytes);
            return (Push::Overflow(dropped.count), dropped.ticket);
        }
        if REPLAYING.get()
            && delivery.qos != QoS::AtMostOnce
            && let Some((id, released)) = REPLAY_DUP.get()
        {
            delivery.dup_id = Some(id);
            delivery.dup_released = released && delivery.qos == QoS::ExactlyOnce;
        }
        let mut ticket = 0;
        if self.stored && delivery.qos != QoS::AtMostOnce {
            delivery.seq = self.next_seq;
            self.next_seq += 1;
            ticket = store.submit(Op::Enqueue {
                key: key.clone(),
                entry: QueuedRecord {
                    seq: delivery.seq,
                    msg: delivery.msg.clone(),
                    qos: delivery.qos,
                    retain: delivery.retain,
                    sub_ids: delivery.sub_ids.clone(),
                    inflight: None,
                },
            });
        }
        self.queued_bytes += cost;
        match &mut self.hold {
            Some(held) if !REPLAYING.get() => held.push_back(delivery),
            _ => self.queue.push_back(delivery),
        }
        (Push::Queued, ticket)
    }

    /// The next free packet id for an outgoing message. Ids are handed out in increasing order
    /// (wrapping, skipping 0) and `inflight` is kept in that order, so an id can only still be in
    /// use if it is at the front after a full wrap: walking the front while it collides is enough.
    pub fn next_packet_id(&mut self) -> PacketId {
        let mut id = self.last_packet_id;
        let mut i = 0;
        loop {
            id = id.wrapping_add(1);
            if id == 0 {
                id = 1;
            }
            match self.inflight.get(i) {
                Some(f) if f.packet_id == id => i += 1,
                _ => break,
            }
        }
        self.last_packet_id = id;
        id
    }

    /// Removes the in-flight entry with `packet_id` if it is in `phase`.
    pub fn take_inflight(&mut self, packet_id: PacketId, phase: Phase) -> Option<Inflight> {
        let pos = self
            .inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.phase == phase)?;
        if pos < self.resend {
            self.resend -= 1;
        }
        self.inflight.remove(pos)
    }

    /// Moves the in-flight entry with `packet_id` from `from` to `to`; returns its store
    /// sequence number (0 if not stored), `None` if there is no such entry.
    pub fn advance_inflight(&mut self, packet_id: PacketId, from: Phase, to: Phase) -> Option<u64> {
        let f = self
            .inflight
            .iter_mut()
            .find(|f| f.packet_id == packet_id && f.phase == from)?;
        f.phase = to;
        Some(f.delivery.seq)
    }

    /// Drops the whole outbox and in-flight state (clean start, or a session taken over with a
    /// clean start).
    pub fn clear_messages(&mut self) {
        self.queue.clear();
        if let Some(held) = &mut self.hold {
            held.clear();
        }
        self.queued_bytes = 0;
        self.inflight.clear();
        self.resend = 0;
        self.incoming_qos2.clear();
    }

    /// Drops the whole outbox (a slow consumer: over its own byte budget, or among the largest
    /// when the broker's is exceeded) and kicks the owning connection, if any, as a slow
    /// consumer. Stored deliveries are dequeued in the store. The caller gives the bytes back
    /// to the broker-wide budget.
    pub fn drop_queue(&mut self, key: &SessionKey, store: &Store) -> DroppedQueue {
        let mut dropped = std::mem::take(&mut self.queue);
        if let Some(held) = &mut self.hold {
            dropped.extend(held.drain(..));
        }
        let bytes = std::mem::take(&mut self.queued_bytes);
        self.stats.dropped += dropped.len() as u64;
        let ticket = store.submit_all(dropped.iter().filter(|d| d.seq != 0).map(|d| Op::Dequeue {
            key: key.clone(),
            seq: d.seq,
        }));
        if let Some(link) = &self.conn {
            link.kick.kick(CloseReason::SlowConsumer);
        }
        DroppedQueue {
            count: dropped.len(),
            bytes,
            ticket,
        }
    }

    /// Pops the next queued delivery.
    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(d.cost());
        Some(d)
    }

    /// Gives memory back after a burst: a queue that grew past `QUEUE_KEEP` entries and has
    /// drained to an eighth of its capacity is reallocated to twice its length. Without this a
    /// session would hold its largest backlog's allocation for life (1,000 subscribers that
    /// once lagged by 10,000 messages: 650 MiB).
    pub fn release_queue_memory(&mut self) {
        let cap = self.queue.capacity();
        if cap > QUEUE_KEEP && self.queue.len() < cap / 8 {
            self.queue
                .shrink_to((self.queue.len() * 2).max(QUEUE_KEEP / 4));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::message::Message;
    use smallvec::SmallVec;

    /// Bytes of an `Arc<T>`'s allocation: `T` and the two counters.
    fn arc_bytes<T>() -> usize {
        std::mem::size_of::<T>() + 2 * std::mem::size_of::<usize>()
    }

    /// The `Kick` of a subscriber is written by every publisher to it: with the `Arc`'s
    /// counters it must stay one 64-byte allocation (one cache line).
    #[test]
    fn a_kick_fits_one_cache_line() {
        let arc = arc_bytes::<Kick>();
        assert!(arc <= 64, "Arc<Kick> is {arc} bytes");
    }

    #[test]
    fn a_kick_deadline_passes_on_time_across_the_wrap_and_says_which() {
        let k = Kick::default();
        assert!(!k.check_deadline(u64::MAX), "no deadline: never");
        // Just below the 31-bit wrap and across it.
        let now = (1u64 << 31) - 500;
        k.set_deadline(now, Some(Duration::from_millis(1_000)), false);
        assert!(!k.check_deadline(now + 999));
        assert!(k.check_deadline(now + 1_000));
        assert_eq!(k.reason(), Some(CloseReason::ConnectTimeout));
        let k = Kick::default();
        k.set_deadline(now, Some(Duration::from_millis(98_302_500)), true);
        assert!(!k.check_deadline(now + 98_302_499));
        assert!(k.check_deadline(now + 98_302_500 + 10_000));
        assert_eq!(k.reason(), Some(CloseReason::KeepAliveTimeout));
        // Keep alive 0: none; a CONNECT timeout past the horizon is cut to it.
        let k = Kick::default();
        k.set_deadline(now, None, true);
        assert!(!k.check_deadline(now + (1 << 40)));
        k.set_deadline(now, Some(Duration::MAX), false);
        assert!(!k.check_deadline(now + DEADLINE_HORIZON_MS - 2));
        assert!(k.check_deadline(now + DEADLINE_HORIZON_MS - 1));
    }

    /// Every session, connected or kept offline, is one `Arc<Session>`: with the `Arc`'s two
    /// counters it must stay within the allocator's 384-byte class (mimalloc's classes here
    /// are 320, 384, 448: one field too many costs 64 bytes per session).
    #[test]
    fn a_session_fits_the_384_byte_class() {
        let arc = arc_bytes::<Session>();
        assert!(arc <= 384, "Arc<Session> is {arc} bytes");
    }

    #[test]
    fn subscription_keys_keep_their_stored_form_and_order() {
        let key = |f: &'static str, cid| SubscriptionKey::new(ByteString::from_static(f), cid);
        for k in [
            key("a/#", None),
            key("$share/g/a", Some(5)),
            key("a", Some(0)),
        ] {
            assert_eq!(SubscriptionKey::from_stored(&k.to_stored()).unwrap(), k);
        }
        assert_eq!(&*key("a/#", Some(12)).to_stored(), "a/#\0cid=12");
        assert!(SubscriptionKey::from_stored(&ByteString::from_static("a\0cid=x")).is_err());
        assert!(SubscriptionKey::from_stored(&ByteString::from_static("a\0acl=1")).is_err());
        // As the stored strings sort.
        let mut keys = [
            key("ab", None),
            key("a", Some(9)),
            key("a", Some(10)),
            key("a", None),
        ];
        keys.sort();
        let stored: Vec<ByteString> = keys.iter().map(SubscriptionKey::to_stored).collect();
        let mut sorted = stored.clone();
        sorted.sort();
        assert_eq!(stored, sorted);
        assert_eq!(key("a", Some(9)).to_string(), "a (cid 9)");
    }

    #[test]
    fn a_cid_property_is_a_condition_of_the_subscription() {
        let key = SubscriptionKey::new(ByteString::from_static("t/#"), Some(7));
        let sub = Subscription::parse(key.clone(), SubscriptionOptions::default(), None).unwrap();
        assert_eq!(sub.key, key);
        assert_eq!(sub.topic_string(), "t/#");
        assert_eq!(sub.conditions.as_ref().unwrap().cids[..], [7]);
    }

    /// A delivery of a `size`-byte message on `t` (for tests of queues and budgets).
    pub(crate) fn delivery(qos: QoS, size: usize) -> Delivery {
        Delivery::new(
            Arc::new(Message::plain(1, "t", vec![0u8; size], qos, 1)),
            qos,
            false,
            SmallVec::new(),
        )
    }

    impl Session {
        /// Pushes as the broker does: what the session holds and the new delivery are
        /// counted in the broker-wide budget.
        fn push_test(&self, d: Delivery, cfg: &BrokerConfig) -> Push {
            let budget = QueueBudget::new(usize::MAX);
            budget.force(self.lock().queued_bytes + d.cost());
            self.push(d, cfg, &Store::disabled(), &budget).0
        }
    }

    fn session() -> Session {
        Session::new(
            1,
            SessionKey {
                cid: 1,
                client_id: ByteString::from_static("c"),
            },
            false,
            60,
        )
    }

    #[test]
    fn offline_qos0_is_dropped_unless_configured() {
        let s = session();
        let cfg = BrokerConfig::default();
        assert_eq!(
            s.push_test(delivery(QoS::AtMostOnce, 10), &cfg),
            Push::DroppedOffline
        );
        assert_eq!(
            s.push_test(delivery(QoS::AtLeastOnce, 10), &cfg),
            Push::Queued
        );
        let cfg = BrokerConfig {
            queue_qos0_offline: true,
            ..BrokerConfig::default()
        };
        assert_eq!(
            s.push_test(delivery(QoS::AtMostOnce, 10), &cfg),
            Push::Queued
        );
        assert_eq!(s.lock().queue.len(), 2);
    }

    #[test]
    fn byte_budget_drops_the_queue() {
        let s = session();
        let one = delivery(QoS::AtLeastOnce, 200).cost();
        let cfg = BrokerConfig {
            max_queued_bytes: 3 * one + one / 2,
            ..BrokerConfig::default()
        };
        for _ in 0..3 {
            assert_eq!(
                s.push_test(delivery(QoS::AtLeastOnce, 200), &cfg),
                Push::Queued
            );
        }
        assert_eq!(
            s.push_test(delivery(QoS::AtLeastOnce, 200), &cfg),
            Push::Overflow(3)
        );
        let st = s.lock();
        assert!(st.queue.is_empty());
        assert_eq!(st.queued_bytes, 0);
    }

    #[test]
    fn qos0_soft_budget() {
        let s = session();
        let cfg = BrokerConfig {
            max_queued_messages: 2,
            queue_qos0_offline: true,
            ..BrokerConfig::default()
        };
        assert_eq!(
            s.push_test(delivery(QoS::AtMostOnce, 1), &cfg),
            Push::Queued
        );
        assert_eq!(
            s.push_test(delivery(QoS::AtMostOnce, 1), &cfg),
            Push::Queued
        );
        assert_eq!(
            s.push_test(delivery(QoS::AtMostOnce, 1), &cfg),
            Push::DroppedQos0Overflow
        );
        assert_eq!(
            s.push_test(delivery(QoS::AtLeastOnce, 1), &cfg),
            Push::Queued
        );
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let s = session();
        let mut st = s.lock();
        st.last_packet_id = u16::MAX - 1;
        assert_eq!(st.next_packet_id(), u16::MAX);
        assert_eq!(st.next_packet_id(), 1);
        // id 2 and 3 still in flight from before a wrap
        for id in [2, 3] {
            st.inflight.push_back(Inflight {
                packet_id: id,
                delivery: delivery(QoS::AtLeastOnce, 1),
                phase: Phase::AwaitPubAck,
            });
        }
        assert_eq!(st.next_packet_id(), 4);
    }
}
