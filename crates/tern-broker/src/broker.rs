//! The shared broker: session registry, per-account namespaces (subscription index and retained
//! tree) and routing.
//!
//! Locks, and the order they may be taken in (never the other way round, never across
//! `.await`):
//! - `sessions` (registry) → a session's state
//! - a namespace's `subs` or `retained` → a session's state
//! - the queue budget's `shedding` → `sessions` → a session's state (taken only by a delivery
//!   that does not fit the budget, with no other lock held)
//! - a session's state → `namespaces`, the directory (quota checks) and the store's pending
//!   ops (an op is submitted under the session's lock, so the store sees changes in order)
//!
//! A session's state lock is never held while taking the registry or an index lock; the
//! directory's lock is never taken under `namespaces`. The timer queue, `connections`,
//! `conditions` and `share_members` (taken under a namespace's `subs`) are leaves: nothing is
//! taken under them.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use tern_codec::QoS;
use tern_store::{Op, Store, Ticket};
use tern_topic::{RetainedTree, SharedGroup, SubscriptionIndex, Visitor};
use tokio_util::sync::CancellationToken;

use crate::accounts::{QuotaChain, QuotaDefaults};
use crate::auth::Authenticator;
use crate::budget::QueueBudget;
use crate::config::BrokerConfig;
use crate::filter::{Conditions, LazyPayload};
use crate::message::{Cid, Clock, Delivery, Message, Micros, SessionId};
use crate::metrics::{DropReason, Metrics};
use crate::session::{Push, Session, SessionKey, Subscription, SubscriptionKey};
use crate::timer_queue::Timers;

/// The subscription index's key: one subscription of one session, identified by its
/// [`SubscriptionKey`] (subscription string with its prefixes, and `cid` property), so that one
/// session may hold several subscriptions on the same topic filter with different `$filter`
/// conditions.
#[derive(Debug, Clone)]
pub struct SubKey {
    pub session: Arc<Session>,
    pub identity: SubscriptionKey,
}

impl PartialEq for SubKey {
    fn eq(&self, other: &Self) -> bool {
        self.session.id == other.session.id && self.identity == other.identity
    }
}
impl Eq for SubKey {}
impl std::hash::Hash for SubKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.session.id.hash(state);
        self.identity.hash(state);
    }
}

/// What the subscription index stores per subscription: everything routing needs without
/// touching the session.
#[derive(Debug, Clone)]
pub struct SubEntry {
    /// Granted QoS.
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<u32>,
    /// `$filter` and `cid` conditions, compiled at subscribe time.
    pub conditions: Option<Arc<Conditions>>,
}

impl SubEntry {
    pub fn of(sub: &Subscription) -> SubEntry {
        SubEntry {
            qos: sub.options.qos,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            id: sub.id,
            conditions: sub.conditions.clone(),
        }
    }
}

/// What routing one message did.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    /// Sessions the message was queued for.
    pub sessions: usize,
    /// The store ticket after which every stored copy is durable (0: nothing stored).
    pub ticket: Ticket,
    /// In cluster mode, the fabric ticket after which the cluster has the message (0: nothing
    /// to wait for).
    pub fabric: crate::fabric::FabricTicket,
    /// Connected sessions whose outbox is over the backpressure mark: the publisher should
    /// pause reading until they drained.
    pub pressure: SmallVec<[Arc<Session>; 1]>,
}

/// One account's topic namespace.
#[derive(Debug)]
pub struct Namespace {
    pub cid: Cid,
    pub(crate) subs: RwLock<SubscriptionIndex<SubKey, SubEntry>>,
    pub(crate) retained: RwLock<RetainedTree<Arc<Message>>>,
    /// What the account and every account below it use, for the hierarchical quotas.
    pub usage: Usage,
    /// The namespaces of the ancestor accounts, nearest first (an account never changes its
    /// parent), so that counting a use in every ancestor takes no lookup.
    up: SmallVec<[Arc<Namespace>; 3]>,
}

/// Uses counted against quotas: of one account together with every account below it.
#[derive(Debug, Default)]
pub struct Usage {
    pub sessions: AtomicU64,
    pub subscriptions: AtomicU64,
    /// Bytes of retained messages (topic + payload).
    pub retained_bytes: AtomicU64,
}

impl Namespace {
    fn new(cid: Cid, up: SmallVec<[Arc<Namespace>; 3]>) -> Namespace {
        Namespace {
            cid,
            subs: RwLock::new(SubscriptionIndex::new()),
            retained: RwLock::new(RetainedTree::new()),
            usage: Usage::default(),
            up,
        }
    }

    /// This namespace and its ancestors', nearest first.
    pub fn chain(&self) -> impl Iterator<Item = &Namespace> {
        std::iter::once(self).chain(self.up.iter().map(|n| &**n))
    }

    /// Counts `delta` of one use (`pick` chooses the counter) in this account and every
    /// ancestor.
    pub(crate) fn count(&self, pick: fn(&Usage) -> &AtomicU64, delta: i64) {
        for ns in self.chain() {
            let c = pick(&ns.usage);
            if delta >= 0 {
                c.fetch_add(delta as u64, Ordering::Relaxed);
            } else {
                // Saturating: a counter never wraps below zero.
                let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(delta.unsigned_abs()))
                });
            }
        }
    }

    /// Whether `add` more of one use (`pick`, whose quota `quota` picks) in this account
    /// would take it or an ancestor over its quota. `chain` comes from
    /// [`Authenticator::quota_chain`] for this account; accounts without a namespace use
    /// nothing yet.
    pub(crate) fn over_quota(
        &self,
        chain: &QuotaChain,
        pick: fn(&Usage) -> &AtomicU64,
        quota: fn(&QuotaDefaults) -> u64,
        add: u64,
    ) -> bool {
        chain.iter().any(|(cid, q)| {
            let max = quota(q);
            if max == u64::MAX {
                return false;
            }
            let used = self
                .chain()
                .find(|ns| ns.cid == *cid)
                .map_or(0, |ns| pick(&ns.usage).load(Ordering::Relaxed));
            used.saturating_add(add) > max
        })
    }
}

/// The broker state shared by every connection.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Bytes queued in every outbox, against `config.max_total_queued_bytes`.
    pub queue_budget: QueueBudget,
    pub(crate) auth: Box<dyn Authenticator>,
    sessions: Registry,
    namespaces: RwLock<HashMap<Cid, Arc<Namespace>>>,
    next_session_id: AtomicU64,
    next_conn_id: AtomicU64,
    pub(crate) timers: Timers,
    shutdown: CancellationToken,
    pub(crate) store: Store,
    pub(crate) rest: std::sync::OnceLock<Arc<dyn crate::bridge::RestBridge>>,
    /// The publish tap (`tap.rs`), if installed.
    pub(crate) tap: std::sync::OnceLock<Arc<dyn crate::tap::PublishTap>>,
    /// The trigger tap (`tap.rs`: webhooks), if installed: it sees `flespi/` topics too.
    pub(crate) trigger_tap: std::sync::OnceLock<Arc<dyn crate::tap::PublishTap>>,
    /// The other nodes of a cluster (`fabric.rs`), if this node is in one.
    pub(crate) fabric: std::sync::OnceLock<Arc<dyn crate::fabric::Fabric>>,
    /// Cluster mode: this node lost the cluster (`Broker::set_unavailable`).
    pub(crate) unavailable: AtomicBool,
    /// Members on this node of each shared group, by (namespace, group, filter)
    /// ([`Broker::shared_groups`]); changed only by shared subscribes and unsubscribes.
    pub(crate) share_members: Mutex<HashMap<ShareGroupKey, usize>>,
    /// Which taps want anything now ([`Broker::set_tap_active`], [`Broker::set_trigger_active`]:
    /// bits [`TAP_CHANNELS`], [`TAP_TRIGGERS`]): every publish reads this one byte and nothing
    /// more while no in-process listener exists.
    tap_active: std::sync::atomic::AtomicU8,
    /// The MQTT sessions log (`events.rs`), if installed: sees every session event.
    pub(crate) session_log: std::sync::OnceLock<Arc<dyn crate::events::SessionLog>>,
    /// Conditions in use by the index, by key, so that equal ones are one object.
    conditions: Mutex<HashMap<String, std::sync::Weak<Conditions>>>,
    /// Every live connection's signals, by connection id: shutdown kicks them all, and the
    /// deadline watch (`deadlines.rs`) those that stayed silent too long.
    pub(crate) connections: ConnectionMap,
    /// Zero of the connections' deadline clock ([`Broker::deadline_ms`]).
    pub(crate) deadline_epoch: tokio::time::Instant,
    /// The deadline watch was started (`deadlines.rs`).
    pub(crate) deadlines_watched: AtomicBool,
}

/// Shards of the session registry and of the connection map: a connect locks one shard of
/// each (chosen by the session key's hash, by the connection id), never a broker-wide lock, so
/// connects on different cores do not queue behind each other.
const SHARDS: usize = 32;

/// Every session by its key, in [`SHARDS`] shards each behind its own lock. A shard is a
/// table of the sessions themselves, hashed by the key each session carries, rather than a map
/// from a second copy of the key: one word per session.
pub(crate) struct Registry {
    shards: Box<[Mutex<RegistryShard>]>,
    hasher: std::hash::RandomState,
}

/// One shard of the [`Registry`]: the sessions whose keys hash to it. Held (locked) by the
/// connect handler's takeover step, so that finding and replacing a key's session is one step.
pub(crate) struct RegistryShard {
    table: hashbrown::HashTable<Arc<Session>>,
    hasher: std::hash::RandomState,
}

impl Default for Registry {
    fn default() -> Self {
        let hasher = std::hash::RandomState::new();
        Registry {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(RegistryShard {
                        table: hashbrown::HashTable::new(),
                        hasher: hasher.clone(),
                    })
                })
                .collect(),
            hasher,
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sessions: usize = self.shards.iter().map(|s| s.lock().table.len()).sum();
        f.debug_struct("Registry")
            .field("sessions", &sessions)
            .finish()
    }
}

impl Registry {
    /// The shard of `key`, locked.
    pub fn shard(&self, key: &SessionKey) -> parking_lot::MutexGuard<'_, RegistryShard> {
        let hash = self.hasher.hash_one(key);
        // The high bits: hashbrown uses the low ones for buckets and the top seven for tags.
        self.shards[(hash >> 32) as usize % SHARDS].lock()
    }

    pub fn get(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.shard(key).get(key).cloned()
    }

    /// Adds `session` under its key, replacing (and returning) the one there was.
    pub fn insert(&self, session: Arc<Session>) -> Option<Arc<Session>> {
        self.shard(&session.key).insert(session)
    }

    /// A snapshot of every session, one shard at a time.
    pub fn values(&self) -> Vec<Arc<Session>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().table.iter().cloned());
        }
        all
    }
}

impl RegistryShard {
    pub fn get(&self, key: &SessionKey) -> Option<&Arc<Session>> {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |s| s.key == *key)
    }

    /// Adds `session` under its key, replacing (and returning) the one there was.
    pub fn insert(&mut self, session: Arc<Session>) -> Option<Arc<Session>> {
        let hash = self.hasher.hash_one(&session.key);
        let hasher = &self.hasher;
        match self
            .table
            .entry(hash, |s| s.key == session.key, |s| hasher.hash_one(&s.key))
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), session))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(session);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &SessionKey) -> Option<Arc<Session>> {
        let hash = self.hasher.hash_one(key);
        match self.table.find_entry(hash, |s| s.key == *key) {
            Ok(e) => Some(e.remove().0),
            Err(_) => None,
        }
    }
}

/// One shard of the [`ConnectionMap`]: connection id → its signals.
type KickShard = HashMap<u64, std::sync::Weak<crate::session::Kick>>;

/// Every live connection's signals by connection id, in [`SHARDS`] shards (by id), so that
/// registering a new connection takes no broker-wide lock.
#[derive(Debug)]
pub(crate) struct ConnectionMap {
    shards: Box<[Mutex<KickShard>]>,
}

impl Default for ConnectionMap {
    fn default() -> Self {
        ConnectionMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl ConnectionMap {
    fn shard(&self, id: u64) -> parking_lot::MutexGuard<'_, KickShard> {
        self.shards[id as usize % SHARDS].lock()
    }

    fn all(&self) -> Vec<Arc<crate::session::Kick>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            all.extend(shard.lock().values().filter_map(std::sync::Weak::upgrade));
        }
        all
    }

    /// Kicks every connection whose deadline passed at `now_ms`.
    pub(crate) fn kick_overdue(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            for kick in shard.lock().values().filter_map(std::sync::Weak::upgrade) {
                kick.check_deadline(now_ms);
            }
        }
    }
}

/// A shared group's identity on this node: (namespace, group string, inner filter).
pub(crate) type ShareGroupKey = (Cid, Box<str>, Box<str>);

/// One matching subscription found while routing.
struct Target {
    /// The session's id and whether this is a shared subscription (low bit), copied here so
    /// that sorting the targets reads no session.
    order: u64,
    session: Arc<Session>,
    qos: QoS,
    retain_as_published: bool,
    id: Option<u32>,
    shared: bool,
}

struct Collector<'a> {
    msg: &'a Message,
    /// The broker's fabric: read only when a shared group matches (cluster mode: which node
    /// delivers the group's copy).
    fabric: &'a std::sync::OnceLock<Arc<dyn crate::fabric::Fabric>>,
    /// The namespace being walked (the account whose subscriptions match now).
    ns: Cid,
    payload: LazyPayload<'a>,
    /// Unix seconds, for `now()` in filter expressions.
    now: f64,
    out: &'a mut Vec<Target>,
}

impl Collector<'_> {
    fn passes(&mut self, entry: &SubEntry) -> bool {
        // Equal conditions are one interned object, which remembers its verdict on this
        // message: subscriptions that share them evaluate them once.
        entry
            .conditions
            .as_ref()
            .is_none_or(|c| c.verdict(self.msg, &self.payload, self.now))
    }

    fn push(&mut self, key: &SubKey, entry: &SubEntry, shared: bool) {
        self.out.push(Target {
            order: key.session.id << 1 | u64::from(shared),
            session: key.session.clone(),
            qos: entry.qos,
            retain_as_published: entry.retain_as_published,
            id: entry.id,
            shared,
        });
    }
}

impl Visitor<SubKey, SubEntry> for Collector<'_> {
    fn visit(&mut self, key: &SubKey, entry: &SubEntry) {
        if entry.no_local && self.msg.origin == Some(key.session.id) {
            return;
        }
        if self.passes(entry) {
            self.push(key, entry, false);
        }
    }

    fn visit_shared(&mut self, group: &SharedGroup<SubKey, SubEntry>, topic: &str) {
        // Every member of a group subscribed with the same string, so one member's conditions
        // decide for the group. Prefer a connected member; fall back to any member (its session
        // queues the message).
        let Some((_, first)) = group.members().first() else {
            return;
        };
        if !self.passes(first) {
            return;
        }
        if let Some(fabric) = self.fabric.get() {
            let share = crate::fabric::ShareGroupRef {
                cid: self.ns,
                name: group.name(),
                filter: group.filter(),
                mode: group.mode(),
            };
            if !fabric.share_here(&share, self.msg) {
                // Another node delivers this group's copy.
                return;
            }
        }
        if let Some((key, entry)) = group.pick_where(topic, |k| k.session.is_connected()) {
            self.push(key, entry, true);
        }
    }
}

thread_local! {
    /// Reused per thread so routing a message allocates no target list.
    static TARGETS: std::cell::RefCell<Vec<Target>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Broker {
    /// A broker that keeps nothing across restarts.
    pub fn new(config: BrokerConfig, auth: Box<dyn Authenticator>) -> Arc<Broker> {
        Broker::with_store(config, auth, Store::disabled())
    }

    /// A broker that mirrors its durable state into `store`. Call [`Broker::restore`] with the
    /// store's snapshot before accepting connections.
    pub fn with_store(
        config: BrokerConfig,
        auth: Box<dyn Authenticator>,
        store: Store,
    ) -> Arc<Broker> {
        Broker::with_clock(config, auth, store, Clock::default())
    }

    /// A broker on `clock`: [`Clock::manual`] for tests in virtual time, moved by
    /// [`Broker::advance`] (its [`Broker::run_timers`] then does nothing).
    pub fn with_clock(
        config: BrokerConfig,
        auth: Box<dyn Authenticator>,
        store: Store,
        clock: Clock,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            queue_budget: QueueBudget::new(config.max_total_queued_bytes),
            config,
            clock,
            metrics: Metrics::default(),
            auth,
            sessions: Registry::default(),
            namespaces: RwLock::new(HashMap::new()),
            next_session_id: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
            timers: Timers::default(),
            shutdown: CancellationToken::new(),
            store,
            rest: std::sync::OnceLock::new(),
            tap: std::sync::OnceLock::new(),
            trigger_tap: std::sync::OnceLock::new(),
            fabric: std::sync::OnceLock::new(),
            share_members: Mutex::new(HashMap::new()),
            unavailable: AtomicBool::new(false),
            tap_active: std::sync::atomic::AtomicU8::new(0),
            session_log: std::sync::OnceLock::new(),
            conditions: Mutex::new(HashMap::new()),
            connections: ConnectionMap::default(),
            deadline_epoch: tokio::time::Instant::now(),
            deadlines_watched: AtomicBool::new(false),
        })
    }

    /// The store the broker mirrors its durable state into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Cancelled when the broker shuts down (the accept loops and the timers watch it).
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Shuts down: cancels the token and asks every connection to close (v5 clients are told
    /// 0x8B).
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        for kick in self.connections.all() {
            kick.kick(crate::close::CloseReason::ServerShuttingDown);
        }
    }

    /// Asks every connection to close with `reason`.
    pub(crate) fn kick_all(&self, reason: crate::close::CloseReason) {
        for kick in self.connections.all() {
            kick.kick(reason.clone());
        }
    }

    /// Registers a connection's signals for shutdown.
    pub(crate) fn register_connection(&self, id: u64, kick: &Arc<crate::session::Kick>) {
        self.connections.shard(id).insert(id, Arc::downgrade(kick));
        if self.shutdown.is_cancelled() {
            kick.kick(crate::close::CloseReason::ServerShuttingDown);
        }
    }

    pub(crate) fn unregister_connection(&self, id: u64) {
        self.connections.shard(id).remove(&id);
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_session_id(&self) -> SessionId {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The namespace of `cid`, if it has ever been used.
    pub fn namespace(&self, cid: Cid) -> Option<Arc<Namespace>> {
        self.namespaces.read().get(&cid).cloned()
    }

    /// The namespace of `cid`, created on first use (with its ancestors' namespaces).
    pub fn namespace_or_create(&self, cid: Cid) -> Arc<Namespace> {
        if let Some(ns) = self.namespace(cid) {
            return ns;
        }
        // Outside the namespaces lock: the directory's lock is never taken under it.
        let chain = self.auth.ancestors(cid);
        let mut map = self.namespaces.write();
        // From the top down, so each namespace finds its ancestors' already made.
        let mut up: SmallVec<[Arc<Namespace>; 3]> = SmallVec::new();
        for c in chain.iter().rev() {
            let ns = map
                .entry(*c)
                .or_insert_with(|| Arc::new(Namespace::new(*c, up.clone())))
                .clone();
            up.insert(0, ns);
        }
        match up.first() {
            Some(ns) if ns.cid == cid => ns.clone(),
            _ => map
                .entry(cid)
                .or_insert_with(|| Arc::new(Namespace::new(cid, SmallVec::new())))
                .clone(),
        }
    }

    /// Links the namespace of `cid` to its ancestors' when it was made before the directory
    /// knew the account (cluster mode: another node's retained message of a new account can
    /// arrive before the account does), so that its publications reach its ancestors'
    /// subscribers. Its subscriptions, retained messages and uses move to a new namespace with
    /// the right ancestors (its uses counted in them too). Nothing to do when it is linked.
    pub fn relink_namespace(&self, cid: Cid) {
        let Some(old) = self.namespace(cid) else {
            return;
        };
        let chain = self.auth.ancestors(cid);
        if chain.len() <= old.up.len() + 1 {
            return;
        }
        // The ancestors' namespaces (made as needed), nearest first.
        let above: Vec<Arc<Namespace>> = chain
            .iter()
            .skip(1)
            .map(|c| self.namespace_or_create(*c))
            .collect();
        let mut map = self.namespaces.write();
        let Some(current) = map.get(&cid).cloned() else {
            return;
        };
        if !Arc::ptr_eq(&current, &old) {
            return;
        }
        let ns = Namespace::new(cid, above.iter().cloned().collect());
        *ns.subs.write() = std::mem::take(&mut *old.subs.write());
        *ns.retained.write() = std::mem::take(&mut *old.retained.write());
        let ns = Arc::new(ns);
        // Its uses, counted in its ancestors now too (`count` walks the new chain).
        for pick in [
            (|u: &Usage| &u.sessions) as fn(&Usage) -> &AtomicU64,
            |u: &Usage| &u.subscriptions,
            |u: &Usage| &u.retained_bytes,
        ] {
            ns.count(pick, pick(&old.usage).load(Ordering::Relaxed) as i64);
        }
        map.insert(cid, ns);
        drop(map);
        tracing::info!(
            cid,
            "an account's namespace made before its account was known, linked to its ancestors"
        );
    }

    /// Forgets the namespaces of deleted accounts (after their sessions and retained
    /// messages were removed), so that a new account with a reused id starts afresh.
    pub(crate) fn drop_namespaces(&self, cids: &[Cid]) {
        let mut map = self.namespaces.write();
        for cid in cids {
            map.remove(cid);
        }
    }

    // ---- sessions ------------------------------------------------------------------------

    /// Counts a new session in the metrics and in the quotas of its account and ancestors.
    pub(crate) fn session_added(&self, cid: Cid) {
        Metrics::gauge(&self.metrics.sessions, 1);
        self.namespace_or_create(cid).count(|u| &u.sessions, 1);
    }

    /// Whether the account, or an account above it, may not have another session.
    pub(crate) fn session_quota_full(&self, cid: Cid) -> bool {
        let chain = self.auth.quota_chain(cid);
        !chain.is_empty()
            && self.namespace_or_create(cid).over_quota(
                &chain,
                |u| &u.sessions,
                |q| q.mqtt_sessions,
                1,
            )
    }

    /// Whether one more subscription of account `cid` would take it, or an account above it,
    /// over its `mqtt_subscriptions` quota.
    pub(crate) fn subscription_quota_full(&self, cid: Cid) -> bool {
        let chain = self.auth.quota_chain(cid);
        !chain.is_empty()
            && self.namespace_or_create(cid).over_quota(
                &chain,
                |u| &u.subscriptions,
                |q| q.mqtt_subscriptions,
                1,
            )
    }

    /// The accounts whose subscription index on this node is not empty: a publication of one
    /// of them or of an account below one may have subscribers here (routing reaches the
    /// publisher's namespace and its ancestors').
    pub fn accounts_with_subscriptions(&self) -> Vec<Cid> {
        self.namespaces
            .read()
            .values()
            .filter(|ns| !ns.subs.read().is_empty())
            .map(|ns| ns.cid)
            .collect()
    }

    /// The session with this key, if any.
    pub fn session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions.get(key)
    }

    /// A snapshot of every session.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.values()
    }

    /// Runs `f` with the registry (each call locks the one shard it needs).
    pub(crate) fn with_registry<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        f(&self.sessions)
    }

    /// The registry shard of `key`, locked (the connect handler's takeover step: finding and
    /// replacing the key's session is one step). Lock order: registry shard, then session.
    pub(crate) fn session_shard(
        &self,
        key: &SessionKey,
    ) -> parking_lot::MutexGuard<'_, RegistryShard> {
        self.sessions.shard(key)
    }

    /// Ends a session: removes it from the registry and the index, drops its queue. The will,
    /// if still pending, is the caller's business.
    pub fn end_session(&self, session: &Arc<Session>) {
        {
            let mut reg = self.sessions.shard(&session.key);
            if reg
                .get(&session.key)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                reg.remove(&session.key);
            }
        }
        self.discard_session(session, true);
    }

    /// Marks a session ended and removes its subscriptions from the index. The caller has
    /// already taken it out of the registry. `unstore` deletes it from the store (false when a
    /// new session with the same key already replaced it there).
    pub(crate) fn discard_session(&self, session: &Arc<Session>, unstore: bool) {
        let subs: Vec<Subscription> = {
            let mut st = session.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            session.relieve();
            if st.stored && unstore {
                self.store.submit(Op::DelSession {
                    key: session.key.clone(),
                });
            }
            // Cluster mode: the cluster's record of it (a persistent session, or one with a
            // will) goes too.
            self.session_dirty(&session.key);
            st.stored = false;
            let dropped = st.queue.len() as i64;
            Metrics::gauge(&self.metrics.queued, -dropped);
            self.queue_budget.release(st.queued_bytes);
            Metrics::gauge(&self.metrics.inflight, -(st.inflight.len() as i64));
            self.metrics
                .dropped_n(DropReason::SessionEnded, dropped as u64);
            st.clear_messages();
            st.will = None;
            st.subscriptions.drain().map(|(_, s)| s).collect()
        };
        Metrics::gauge(&self.metrics.sessions, -1);
        if let Some(ns) = self.namespace(session.key.cid) {
            ns.count(|u| &u.sessions, -1);
        }
        self.unindex(session, &subs);
    }

    /// One shared copy of equal conditions (see [`Conditions::key`]).
    fn intern_conditions(&self, c: &Arc<Conditions>) -> Arc<Conditions> {
        let mut map = self.conditions.lock();
        if let Some(shared) = map.get(&c.key).and_then(std::sync::Weak::upgrade) {
            return shared;
        }
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(c.key.clone(), Arc::downgrade(c));
        c.clone()
    }

    /// Removes subscriptions of `session` from its namespace's index.
    pub(crate) fn unindex(&self, session: &Arc<Session>, subs: &[Subscription]) {
        if subs.is_empty() {
            return;
        }
        let Some(ns) = self.namespace(session.key.cid) else {
            return;
        };
        let mut shares_changed = false;
        let mut index = ns.subs.write();
        let had = !index.is_empty();
        for sub in subs {
            let key = SubKey {
                session: session.clone(),
                identity: sub.key.clone(),
            };
            let removed = match &sub.share_group {
                Some(group) => {
                    let removed = index.remove_shared(group, &sub.topic_filter, &key);
                    if removed.is_some() {
                        let left = index
                            .shared_group(group, &sub.topic_filter)
                            .map_or(0, |g| g.members().len());
                        self.count_share_members(ns.cid, group, &sub.topic_filter, left);
                        shares_changed = true;
                    }
                    removed
                }
                None => index.remove(&sub.topic_filter, &key),
            };
            if removed.is_some() {
                Metrics::gauge(&self.metrics.subscriptions, -1);
                ns.count(|u| &u.subscriptions, -1);
            }
        }
        let emptied = had && index.is_empty();
        drop(index);
        if shares_changed {
            self.shares_changed();
        }
        if emptied {
            self.interest_changed();
        }
    }

    /// Adds (or replaces) one subscription of `session` in its namespace's index.
    pub(crate) fn index(&self, session: &Arc<Session>, sub: &Subscription) {
        let ns = self.namespace_or_create(session.key.cid);
        let mut entry = SubEntry::of(sub);
        if let Some(c) = &entry.conditions {
            entry.conditions = Some(self.intern_conditions(c));
        }
        let key = SubKey {
            session: session.clone(),
            identity: sub.key.clone(),
        };
        let (first, old) = {
            let mut index = ns.subs.write();
            let first = index.is_empty();
            let old = match &sub.share_group {
                Some(group) => {
                    let old = index.insert_shared_with_mode(
                        group,
                        sub.share_mode,
                        &sub.topic_filter,
                        key,
                        entry,
                    );
                    if old.is_none() {
                        let members = index
                            .shared_group(group, &sub.topic_filter)
                            .map_or(0, |g| g.members().len());
                        self.count_share_members(ns.cid, group, &sub.topic_filter, members);
                    }
                    old
                }
                None => index.insert(&sub.topic_filter, key, entry),
            };
            (first, old)
        };
        if old.is_none() && sub.share_group.is_some() {
            self.shares_changed();
        }
        if first {
            self.interest_changed();
        }
        if old.is_none() {
            Metrics::gauge(&self.metrics.subscriptions, 1);
            ns.count(|u| &u.subscriptions, 1);
        }
    }

    // ---- routing -------------------------------------------------------------------------

    /// Routes a message to every matching subscription of the publisher's account and its
    /// ancestors, and updates the retained tree.
    pub fn publish(&self, msg: Arc<Message>) -> Routed {
        self.publish_with(msg, true)
    }

    /// [`Broker::publish`] for a retained message derived from state that is durable elsewhere
    /// and republished at every start (the devices layer's `flespi/state/gw/...` items and
    /// telemetry): a retained put is kept in memory only, no store write; a retained delete is
    /// still written, so that a copy stored by an earlier version does not come back.
    pub fn publish_derived(&self, msg: Arc<Message>) -> Routed {
        self.publish_with(msg, false)
    }

    fn publish_with(&self, msg: Arc<Message>, store_retained: bool) -> Routed {
        self.tap(&msg);
        let mut ticket = 0;
        if msg.retain && self.config.retain_available {
            ticket = self.set_retained(&msg, store_retained);
        }
        let routed = self.route(&msg);
        let fabric = self.to_fabric(&msg, store_retained);
        Routed {
            ticket: routed.ticket.max(ticket),
            fabric,
            ..routed
        }
    }

    /// Routes `msg` to this node's matching sessions.
    pub(crate) fn route(&self, msg: &Arc<Message>) -> Routed {
        TARGETS.with(|cell| {
            let mut targets = cell.borrow_mut();
            self.collect_targets(msg, &mut targets);
            let routed = self.push_targets(msg, &mut targets);
            targets.clear();
            routed
        })
    }

    /// Routes `msg` to the non-shared subscriptions of `session` only (a cluster replay).
    pub(crate) fn route_to(&self, session: &Arc<Session>, msg: &Arc<Message>) -> bool {
        TARGETS.with(|cell| {
            let mut targets = cell.borrow_mut();
            self.collect_targets(msg, &mut targets);
            targets.retain(|t| !t.shared && t.session.id == session.id);
            let routed = self.push_targets(msg, &mut targets);
            targets.clear();
            routed.sessions > 0
        })
    }

    /// Whether any subscription of account `cid` or of an account above it matches `topic`
    /// (before `$filter` and `cid` conditions): lets the broker skip building a message that
    /// nobody can receive, such as the session events of every connect and disconnect.
    pub fn has_subscribers(&self, cid: Cid, topic: &str) -> bool {
        struct Any(bool);
        impl<K, V> Visitor<K, V> for Any {
            fn visit(&mut self, _: &K, _: &V) {
                self.0 = true;
            }
            fn visit_shared(&mut self, _: &SharedGroup<K, V>, _: &str) {
                self.0 = true;
            }
        }
        let mut any = Any(false);
        self.walk_chain(cid, |ns| {
            ns.subs.read().for_each_match(topic, &mut any);
            !any.0
        });
        any.0
    }

    /// Calls `f` with the namespace of `cid` and of each ancestor that has one, nearest first,
    /// while it returns true. The account's namespace links its ancestors' (an account never
    /// changes its parent): no directory lookup per message. Without a namespace of its own
    /// yet, the account's chain comes from the directory.
    fn walk_chain(&self, cid: Cid, mut f: impl FnMut(&Namespace) -> bool) {
        if let Some(ns) = self.namespace(cid) {
            if f(&ns) {
                for up in &ns.up {
                    if !f(up) {
                        return;
                    }
                }
            }
            return;
        }
        for cid in self.auth.ancestors(cid) {
            if let Some(ns) = self.namespace(cid)
                && !f(&ns)
            {
                return;
            }
        }
    }

    fn collect_targets(&self, msg: &Message, targets: &mut Vec<Target>) {
        let mut collector = Collector {
            msg,
            fabric: &self.fabric,
            ns: msg.cid,
            payload: LazyPayload::new(&msg.payload),
            now: self.clock.now() as f64 / 1e6,
            out: targets,
        };
        self.walk_chain(msg.cid, |ns| {
            collector.ns = ns.cid;
            ns.subs.read().for_each_match(&msg.topic, &mut collector);
            true
        });
    }

    /// Merges the targets of one session (one delivery carrying every subscription id at the
    /// highest granted QoS, docs/flespi.md#subscribing-and-filter) and pushes the deliveries.
    fn push_targets(&self, msg: &Arc<Message>, targets: &mut [Target]) -> Routed {
        if targets.len() > 1 {
            // Deliveries of one session (overlapping subscriptions) become adjacent.
            targets.sort_unstable_by_key(|t| t.order);
        }
        let mut pushed = 0;
        let mut ticket = 0;
        let mut pressure = SmallVec::new();
        // Room in the broker-wide budget for every delivery of the message at once (they all
        // cost the same): one atomic for the whole fan-out, what merged targets did not use
        // given back at the end. When the budget is short, each delivery takes its own.
        let cost = msg.cost();
        let mut prepaid = targets.len();
        if !cost
            .checked_mul(prepaid)
            .is_some_and(|all| self.queue_budget.reserve(all))
        {
            prepaid = 0;
        }
        let mut i = 0;
        while i < targets.len() {
            let first = &targets[i];
            let mut qos = first.qos;
            let mut rap = first.retain_as_published;
            let mut sub_ids: SmallVec<[u32; 2]> = first.id.into_iter().collect();
            let mut j = i + 1;
            if !first.shared {
                while j < targets.len()
                    && !targets[j].shared
                    && targets[j].session.id == first.session.id
                {
                    qos = qos.max(targets[j].qos);
                    rap |= targets[j].retain_as_published;
                    if let Some(id) = targets[j].id {
                        sub_ids.push(id);
                    }
                    j += 1;
                }
            }
            let delivery = Delivery::new(
                self.share_copy(msg, first.shared),
                qos.min(msg.qos),
                rap && msg.retain,
                sub_ids,
            );
            let paid = prepaid > 0;
            prepaid -= usize::from(paid);
            let (queued, t, congested) = self.push_pressure(&targets[i].session, delivery, paid);
            pushed += usize::from(queued);
            ticket = ticket.max(t);
            if congested {
                pressure.push(targets[i].session.clone());
            }
            i = j;
        }
        self.queue_budget.release(prepaid * cost);
        // Counted once per message, not per delivery (see `fill`).
        Metrics::gauge(&self.metrics.queued, pushed as i64);
        Routed {
            sessions: pushed,
            ticket,
            fabric: 0,
            pressure,
        }
    }

    /// The message a delivery carries: `msg` itself, except for a shared group's QoS 1/2 copy in
    /// cluster mode, which gets its own `Arc` that the fabric watches
    /// ([`crate::fabric::Fabric::share_delivering`]: it is acknowledged once only the fabric
    /// holds it). A single node reads one bool here.
    fn share_copy(&self, msg: &Arc<Message>, shared: bool) -> Arc<Message> {
        if shared
            && msg.qos != QoS::AtMostOnce
            && let Some(fabric) = self.fabric.get()
        {
            let copy = Arc::new(Message::clone(msg));
            fabric.share_delivering(&copy);
            return copy;
        }
        msg.clone()
    }

    /// Delivers `msg` to one member of shared group `name` on `filter` in `cid`'s namespace on
    /// this node, as routing would (a connected member first), without asking the fabric:
    /// the fabric hands over a message chosen for a node that died (`share.rs`). Returns
    /// whether it was queued.
    pub fn deliver_shared(&self, cid: Cid, name: &str, filter: &str, msg: &Arc<Message>) -> bool {
        if msg.is_expired(self.clock.now()) {
            return false;
        }
        let Some(ns) = self.namespace(cid) else {
            return false;
        };
        let target = {
            let index = ns.subs.read();
            let Some(group) = index.shared_group(name, filter) else {
                return false;
            };
            let Some((key, entry)) =
                group.pick_where(&msg.topic, |k: &SubKey| k.session.is_connected())
            else {
                return false;
            };
            Target {
                order: key.session.id << 1 | 1,
                session: key.session.clone(),
                qos: entry.qos,
                retain_as_published: entry.retain_as_published,
                id: entry.id,
                shared: true,
            }
        };
        self.push_targets(msg, &mut [target]).sessions > 0
    }

    /// Pushes one delivery into a session and accounts for the outcome. Returns whether it was
    /// queued and the store ticket that makes it durable (0: nothing to wait for).
    pub(crate) fn push(&self, session: &Session, delivery: Delivery) -> (bool, Ticket) {
        let (queued, ticket, _) = self.push_pressure(session, delivery, false);
        if queued {
            Metrics::gauge(&self.metrics.queued, 1);
        }
        (queued, ticket)
    }

    /// Like [`Broker::push`], and also says whether the session is congested; `prepaid`: the
    /// caller already took room for the delivery in the budget. The caller counts a queued
    /// delivery in the `queued` gauge.
    fn push_pressure(
        &self,
        session: &Session,
        delivery: Delivery,
        prepaid: bool,
    ) -> (bool, Ticket, bool) {
        // Room in the broker-wide budget first: one atomic, unless it is full.
        let cost = delivery.cost();
        if !prepaid && !self.queue_budget.reserve(cost) {
            // A delivery larger than the margin shedding leaves could never fit: it does not
            // get to empty every queue first.
            if cost <= self.queue_budget.shed_target() {
                self.shed_queues(cost);
            }
            if !self.queue_budget.reserve(cost) {
                self.metrics.dropped(DropReason::TotalOverflow);
                session.lock().stats.dropped += 1;
                return (false, 0, false);
            }
        }
        let (outcome, ticket, congested) =
            session.push(delivery, &self.config, &self.store, &self.queue_budget);
        if outcome != Push::Queued {
            self.queue_budget.release(cost);
        }
        let queued = match outcome {
            Push::Queued => true,
            Push::DroppedQos0Overflow => {
                self.metrics.dropped(DropReason::Qos0Overflow);
                false
            }
            Push::DroppedOffline => {
                self.metrics.dropped(DropReason::Offline);
                false
            }
            Push::DroppedEnded => {
                self.metrics.dropped(DropReason::SessionEnded);
                false
            }
            Push::Overflow(dropped) => {
                tracing::warn!(session = %session.key.client_id, cid = session.key.cid, "session queue over its byte budget: queue dropped");
                Metrics::gauge(&self.metrics.queued, -(dropped as i64));
                self.metrics
                    .dropped_n(DropReason::QueueOverflow, dropped as u64 + 1);
                false
            }
        };
        (queued, ticket, congested)
    }

    /// Makes room for `need` bytes when every queue together is at the broker's budget: drops
    /// the largest queues first, their clients closed as slow consumers, until the total is a
    /// margin below the budget. Runs only for a delivery that does not fit (one scan of the
    /// sessions, one at a time), never for the deliveries that do.
    fn shed_queues(&self, need: usize) {
        let budget = &self.queue_budget;
        let _one_at_a_time = budget.shedding.lock();
        if budget.fits(need) {
            // Another delivery shed while this one waited.
            return;
        }
        let target = budget.shed_target();
        let mut largest: Vec<(usize, Arc<Session>)> = self
            .sessions()
            .into_iter()
            .filter_map(|s| {
                let bytes = s.lock().queued_bytes;
                (bytes > 0).then_some((bytes, s))
            })
            .collect();
        largest.sort_unstable_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (_, session) in largest {
            if budget.queued().saturating_add(need) <= target {
                break;
            }
            let (dropped, connected) = {
                let mut st = session.lock();
                let dropped = st.drop_queue(&session.key, &self.store);
                (dropped, st.conn.is_some())
            };
            if dropped.count == 0 {
                continue;
            }
            // Publishers held back by this session may go on: its outbox is empty.
            session.relieve();
            budget.release(dropped.bytes);
            Metrics::gauge(&self.metrics.queued, -(dropped.count as i64));
            self.metrics
                .dropped_n(DropReason::TotalOverflow, dropped.count as u64);
            Metrics::inc(&self.metrics.budget_evictions);
            tracing::warn!(
                session = %session.key.client_id,
                cid = session.key.cid,
                bytes = dropped.bytes,
                messages = dropped.count,
                connected,
                total_limit = budget.limit(),
                "queued bytes over the broker's budget (session.max_total_queued_bytes): the largest queue dropped, its client closed as a slow consumer"
            );
        }
    }

    // ---- retained ------------------------------------------------------------------------

    /// Sets or (empty payload) deletes a retained message; returns the store ticket. With
    /// `store_put` false a set is not written to the store (see [`Broker::publish_derived`]).
    pub(crate) fn set_retained(&self, msg: &Arc<Message>, store_put: bool) -> Ticket {
        let ns = self.namespace_or_create(msg.cid);
        let mut tree = ns.retained.write();
        if msg.payload.is_empty() {
            if let Some(old) = tree.remove(&msg.topic) {
                Metrics::gauge(&self.metrics.retained, -1);
                ns.count(|u| &u.retained_bytes, -(retained_cost(&old) as i64));
                return self.store.submit(Op::DelRetained {
                    cid: msg.cid,
                    topic: msg.topic.clone(),
                });
            }
            0
        } else {
            ns.count(|u| &u.retained_bytes, retained_cost(msg) as i64);
            match tree.insert(&msg.topic, msg.clone()) {
                Some(old) => {
                    ns.count(|u| &u.retained_bytes, -(retained_cost(&old) as i64));
                }
                None => Metrics::gauge(&self.metrics.retained, 1),
            }
            // In cluster mode the cluster's retained bucket is the durable copy (`fabric.rs`).
            if store_put && self.store.enabled() && !self.is_clustered() {
                return self.store.submit(Op::PutRetained { msg: msg.clone() });
            }
            0
        }
    }

    /// Whether a retained message of `payload_len` bytes on `topic` would take account `cid`,
    /// or an account above it, over its retained quota. On the publish path of retained
    /// messages: walks the account's chain without allocating.
    pub fn retained_quota_exceeded(&self, cid: Cid, topic: &str, payload_len: usize) -> bool {
        if payload_len == 0 {
            return false;
        }
        let chain = self.auth.quota_chain(cid);
        if chain.iter().all(|(_, q)| q.retained_bytes == u64::MAX) {
            return false;
        }
        let cost = (topic.len() + payload_len) as u64;
        let ns = self.namespace_or_create(cid);
        // The message it replaces frees its bytes in every account of the chain.
        let replaced = ns
            .retained
            .read()
            .get(topic)
            .map_or(0, |m| retained_cost(m));
        chain.iter().any(|(c, q)| {
            let used = ns
                .chain()
                .find(|n| n.cid == *c)
                .map_or(0, |n| n.usage.retained_bytes.load(Ordering::Relaxed));
            used.saturating_sub(replaced).saturating_add(cost) > q.retained_bytes
        })
    }

    /// Retained messages of `cid`'s namespace matching `filter`, skipping expired ones.
    pub fn retained_matching(&self, cid: Cid, filter: &str, now: Micros) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        if let Some(ns) = self.namespace(cid) {
            ns.retained.read().for_each_match(filter, |_, msg| {
                if !msg.is_expired(now) {
                    out.push(msg.clone());
                }
            });
        }
        out
    }

    /// Retained messages matching `filter` that a subscription of account `cid` receives on
    /// subscribe: its own and its sub-accounts' at any depth
    /// (docs/flespi.md#accounts-and-namespaces: a parent sees its children's traffic), skipping
    /// expired ones. Only namespaces holding retained messages are visited, each checked by its
    /// (short) ancestor chain.
    pub fn retained_for_subscriber(
        &self,
        cid: Cid,
        filter: &str,
        now: Micros,
    ) -> Vec<Arc<Message>> {
        let mut out = self.retained_matching(cid, filter, now);
        let below: Vec<Arc<Namespace>> = self
            .namespaces
            .read()
            .values()
            .filter(|ns| ns.cid != cid && ns.usage.retained_bytes.load(Ordering::Relaxed) > 0)
            .cloned()
            .collect();
        for ns in below {
            if !ns.up.iter().any(|up| up.cid == cid) {
                continue;
            }
            ns.retained.read().for_each_match(filter, |_, msg| {
                if !msg.is_expired(now) {
                    out.push(msg.clone());
                }
            });
        }
        out
    }

    /// Removes expired retained messages from every namespace.
    pub fn sweep_retained(&self, now: Micros) {
        let namespaces: Vec<Arc<Namespace>> = self.namespaces.read().values().cloned().collect();
        for ns in namespaces {
            let mut removed = 0;
            let mut expired = Vec::new();
            ns.retained.write().retain(|_, msg| {
                let keep = !msg.is_expired(now);
                if !keep {
                    removed += 1;
                    ns.count(|u| &u.retained_bytes, -(retained_cost(msg) as i64));
                    expired.push(msg.topic.clone());
                }
                keep
            });
            for topic in expired {
                self.store.submit(Op::DelRetained { cid: ns.cid, topic });
            }
            Metrics::gauge(&self.metrics.retained, -removed);
        }
    }

    /// Builds a broker message (wills, events, REST responses) stamped now.
    pub fn message(
        &self,
        cid: Cid,
        topic: ByteString,
        payload: bytes::Bytes,
        qos: QoS,
        retain: bool,
    ) -> Message {
        let timestamp = self.clock.stamp();
        Message {
            topic,
            payload,
            qos: qos.min(self.config.max_qos),
            retain,
            properties: Default::default(),
            cid,
            timestamp,
            expires_at: None,
            origin: None,
        }
    }
}

/// What a retained message counts against its account's quota.
pub(crate) fn retained_cost(msg: &Message) -> u64 {
    (msg.topic.len() + msg.payload.len()) as u64
}

/// Bit of `tap_active`: the channels' publish tap is on.
const TAP_CHANNELS: u8 = 1;
/// Bit of `tap_active`: the trigger tap is on.
const TAP_TRIGGERS: u8 = 2;

/// The publish tap (`tap.rs`): in-process code that sees what is published.
impl Broker {
    /// Installs the MQTT sessions log (`events.rs`; once, later calls are ignored).
    pub fn set_session_log(&self, log: Arc<dyn crate::events::SessionLog>) {
        let _ = self.session_log.set(log);
    }

    /// Installs the publish tap (once; later calls are ignored).
    pub fn set_publish_tap(&self, tap: Arc<dyn crate::tap::PublishTap>) {
        let _ = self.tap.set(tap);
    }

    /// Turns the tap on (it has listeners) or off; off, a publish does not call it.
    pub fn set_tap_active(&self, active: bool) {
        self.set_tap_bit(TAP_CHANNELS, active);
    }

    /// Installs the trigger tap (once; later calls are ignored): it sees every publication,
    /// `flespi/` topics included, before routing.
    pub fn set_trigger_tap(&self, tap: Arc<dyn crate::tap::PublishTap>) {
        let _ = self.trigger_tap.set(tap);
    }

    /// Turns the trigger tap on (some trigger exists) or off.
    pub fn set_trigger_active(&self, active: bool) {
        self.set_tap_bit(TAP_TRIGGERS, active);
    }

    fn set_tap_bit(&self, bit: u8, on: bool) {
        if on {
            self.tap_active.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.tap_active.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Hands `msg` to the taps that are installed and active: the channels' tap only when the
    /// topic is not reserved, the trigger tap always.
    pub(crate) fn tap(&self, msg: &Arc<Message>) {
        let active = self.tap_active.load(Ordering::Relaxed);
        if active == 0 {
            return;
        }
        if active & TAP_TRIGGERS != 0
            && let Some(tap) = self.trigger_tap.get()
        {
            // The trigger tap counts what it could not queue itself.
            let _ = tap.published(msg);
        }
        if active & TAP_CHANNELS == 0 {
            return;
        }
        if let Some(tap) = self.tap.get()
            && !crate::topics::is_reserved(&msg.topic)
        {
            let dropped = tap.published(msg);
            if dropped > 0 {
                self.metrics
                    .dropped_n(crate::metrics::DropReason::ChannelQueueFull, dropped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Anonymous;

    fn delivery(payload: usize) -> Delivery {
        crate::session::tests::delivery(QoS::AtLeastOnce, payload)
    }

    /// Ten sessions that never take their QoS 1 messages: the total never passes the budget,
    /// and the largest queue goes first.
    #[test]
    fn the_total_budget_drops_the_largest_queues_first() {
        let small = delivery(100).cost();
        let large = delivery(1_000).cost();
        let limit = 40 * large;
        let broker = Broker::new(
            BrokerConfig {
                max_total_queued_bytes: limit,
                ..BrokerConfig::default()
            },
            Box::new(Anonymous { cid: 1 }),
        );
        let sessions: Vec<Arc<Session>> = (0..10)
            .map(|i| {
                let s = Arc::new(Session::new(
                    broker.next_session_id(),
                    SessionKey {
                        cid: 1,
                        client_id: ByteString::from(format!("s{i}")),
                    },
                    false,
                    u32::MAX,
                ));
                broker.with_registry(|reg| reg.insert(s.clone()));
                s
            })
            .collect();
        let mut first_eviction = None;
        for round in 1..=200 {
            // Session 0 takes large messages, the others small ones.
            broker.push(&sessions[0], delivery(1_000));
            for s in &sessions[1..] {
                broker.push(s, delivery(100));
            }
            let total = broker.queue_budget.queued();
            assert!(total <= limit, "round {round}: {total} > {limit}");
            let sum: usize = sessions.iter().map(|s| s.lock().queued_bytes).sum();
            assert_eq!(sum, total, "the counter is the sum of the queues");
            if first_eviction.is_none() && Metrics::get(&broker.metrics.budget_evictions) > 0 {
                first_eviction = Some(round);
                // The largest queue went, and only it: the small ones hold every round's.
                assert_eq!(Metrics::get(&broker.metrics.budget_evictions), 1);
                assert!(sessions[0].lock().queue.len() <= 1);
                for s in &sessions[1..] {
                    assert_eq!(s.lock().queue.len(), round);
                }
            }
        }
        assert!(first_eviction.is_some(), "{small} {large}");
        assert!(broker.metrics.drops(DropReason::TotalOverflow) > 0);
        let queued: usize = sessions.iter().map(|s| s.lock().queue.len()).sum();
        assert_eq!(broker.metrics.queued.load(Ordering::Relaxed), queued as i64);
    }

    /// A fabric for which another node delivers group `away`; it counts its pings.
    #[derive(Debug, Default)]
    struct ShareStub {
        pings: AtomicU64,
        /// The copies the broker made for members ([`Fabric::share_delivering`]).
        copies: Mutex<Vec<Arc<Message>>>,
    }

    impl crate::fabric::Fabric for ShareStub {
        fn published(&self, _: &Arc<Message>, _: bool) -> crate::fabric::FabricTicket {
            0
        }
        fn confirmed(&self) -> crate::fabric::FabricTicket {
            0
        }
        fn wait_confirmed(&self, _: crate::fabric::FabricTicket) -> crate::fabric::FabricWait {
            Box::pin(async {})
        }
        fn connected(&self, _: &SessionKey, _: Micros) {}
        fn share_here(&self, group: &crate::fabric::ShareGroupRef<'_>, _: &Message) -> bool {
            group.name != "away"
        }
        fn shares_changed(&self) {
            self.pings.fetch_add(1, Ordering::Relaxed);
        }
        fn share_delivering(&self, msg: &Arc<Message>) {
            self.copies.lock().push(msg.clone());
        }
    }

    /// The broker counts each shared group's members on this node as they join and leave,
    /// pings the fabric at each change, and delivers a group's copy only where the fabric says.
    #[test]
    fn shared_groups_are_counted_and_routed_where_the_fabric_says() {
        let broker = Broker::new(BrokerConfig::default(), Box::new(Anonymous { cid: 1 }));
        let session = |name: &str| {
            let s = Arc::new(Session::new(
                broker.next_session_id(),
                SessionKey {
                    cid: 1,
                    client_id: ByteString::from(name),
                },
                false,
                u32::MAX,
            ));
            broker.with_registry(|reg| reg.insert(s.clone()));
            s
        };
        let sub = |filter: &str| {
            let options = tern_codec::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            };
            Subscription::parse(SubscriptionKey::new(filter.into(), None), options, None)
                .expect("a valid filter")
        };
        let (s1, s2) = (session("s1"), session("s2"));
        let (here, away) = (sub("$share/here/t/+"), sub("$share/away/t/+"));
        // Before the fabric is installed (a restored session): counted all the same.
        broker.index(&s1, &here);
        let stub = Arc::new(ShareStub::default());
        broker.set_fabric(stub.clone());
        broker.index(&s2, &here);
        broker.index(&s1, &away);
        broker.index(&s1, &away);
        let count = |name: &str, members| crate::fabric::SharedGroupCount {
            cid: 1,
            name: name.into(),
            filter: "t/+".into(),
            members,
            connected: 0,
        };
        let mut groups = broker.shared_groups();
        groups.sort();
        assert_eq!(groups, vec![count("away", 1), count("here", 2)]);
        assert_eq!(
            stub.pings.load(Ordering::Relaxed),
            2,
            "a re-SUBSCRIBE changes no count"
        );

        let msg = Arc::new(Message::plain(
            1,
            "t/1",
            bytes::Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            1,
        ));
        assert_eq!(
            broker.route(&msg).sessions,
            1,
            "one copy for `here`, none for `away`"
        );
        {
            // The group's QoS 1 copy is its own message, which the fabric watches.
            let copies = stub.copies.lock();
            assert_eq!(copies.len(), 1);
            assert!(!Arc::ptr_eq(&copies[0], &msg));
            assert_eq!(copies[0].payload, msg.payload);
        }
        // A message handed over: to a member of `away` here, whatever the fabric says.
        assert!(broker.deliver_shared(1, "away", "t/+", &msg));
        assert_eq!(
            s1.lock().queue.len(),
            1 + usize::from(s2.lock().queue.is_empty())
        );
        assert!(!broker.deliver_shared(1, "none", "t/+", &msg));
        assert_eq!(stub.copies.lock().len(), 2);
        // Nobody is connected here.
        assert!(broker.shared_groups().iter().all(|g| g.connected == 0));

        broker.unindex(&s2, std::slice::from_ref(&here));
        assert_eq!(broker.shared_groups().len(), 2);
        assert!(broker.shared_groups().contains(&count("here", 1)));
        broker.unindex(&s1, &[here, away]);
        assert_eq!(broker.shared_groups(), vec![]);
        assert_eq!(stub.pings.load(Ordering::Relaxed), 4);
    }
}
