//! The shared broker: session registry, per-account namespaces (subscription index and retained
//! tree) and routing.
//!
//! Locks, and the order they may be taken in (never the other way round, never across
//! `.await`):
//! - `sessions` (registry) → a session's state
//! - a namespace's `subs` or `retained` → a session's state
//!
//! A session's state lock is never held while taking the registry or an index lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use tern_codec::QoS;
use tern_topic::{RetainedTree, SharedGroup, SubscriptionIndex, Visitor};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::BrokerConfig;
use crate::message::{Cid, Clock, Delivery, Message, Micros, SessionId};
use crate::metrics::{DropReason, Metrics};
use crate::session::{Push, Session, SessionKey, Subscription};
use crate::timers::Timers;

/// What the subscription index stores per subscription: everything routing needs without
/// touching the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    /// Granted QoS.
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<u32>,
}

impl SubEntry {
    pub fn of(sub: &Subscription) -> SubEntry {
        SubEntry {
            qos: sub.options.qos,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            id: sub.id,
        }
    }
}

/// One account's topic namespace.
#[derive(Debug)]
pub struct Namespace {
    pub cid: Cid,
    pub(crate) subs: RwLock<SubscriptionIndex<Arc<Session>, SubEntry>>,
    pub(crate) retained: RwLock<RetainedTree<Arc<Message>>>,
}

impl Namespace {
    fn new(cid: Cid) -> Namespace {
        Namespace {
            cid,
            subs: RwLock::new(SubscriptionIndex::new()),
            retained: RwLock::new(RetainedTree::new()),
        }
    }
}

/// The broker state shared by every connection.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    pub clock: Clock,
    pub metrics: Metrics,
    pub(crate) auth: Box<dyn Authenticator>,
    sessions: Mutex<HashMap<SessionKey, Arc<Session>>>,
    namespaces: RwLock<HashMap<Cid, Arc<Namespace>>>,
    next_session_id: AtomicU64,
    next_conn_id: AtomicU64,
    pub(crate) timers: Timers,
    shutdown: CancellationToken,
}

/// One matching subscription found while routing.
struct Target {
    session: Arc<Session>,
    entry: SubEntry,
    shared: bool,
}

struct Collector<'a> {
    origin: Option<SessionId>,
    out: &'a mut Vec<Target>,
}

impl Visitor<Arc<Session>, SubEntry> for Collector<'_> {
    fn visit(&mut self, session: &Arc<Session>, entry: &SubEntry) {
        if entry.no_local && self.origin == Some(session.id) {
            return;
        }
        self.out.push(Target {
            session: session.clone(),
            entry: *entry,
            shared: false,
        });
    }

    fn visit_shared(&mut self, group: &SharedGroup<Arc<Session>, SubEntry>, topic: &str) {
        // Prefer a connected member; fall back to any member (its session queues the message).
        if let Some((session, entry)) = group.pick_where(topic, |s| s.is_connected()) {
            self.out.push(Target {
                session: session.clone(),
                entry: *entry,
                shared: true,
            });
        }
    }
}

thread_local! {
    /// Reused per thread so routing a message allocates no target list.
    static TARGETS: std::cell::RefCell<Vec<Target>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Broker {
    pub fn new(config: BrokerConfig, auth: Box<dyn Authenticator>) -> Arc<Broker> {
        Arc::new(Broker {
            config,
            clock: Clock::default(),
            metrics: Metrics::default(),
            auth,
            sessions: Mutex::new(HashMap::new()),
            namespaces: RwLock::new(HashMap::new()),
            next_session_id: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
            timers: Timers::default(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Cancelled when the broker shuts down; every connection watches a child of it.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
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

    /// The namespace of `cid`, created on first use.
    pub fn namespace_or_create(&self, cid: Cid) -> Arc<Namespace> {
        if let Some(ns) = self.namespace(cid) {
            return ns;
        }
        self.namespaces
            .write()
            .entry(cid)
            .or_insert_with(|| Arc::new(Namespace::new(cid)))
            .clone()
    }

    // ---- sessions ------------------------------------------------------------------------

    /// The session with this key, if any.
    pub fn session(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.sessions.lock().get(key).cloned()
    }

    /// A snapshot of every session.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    /// Runs `f` with the registry locked (the connect handler's takeover step).
    pub(crate) fn with_registry<R>(
        &self,
        f: impl FnOnce(&mut HashMap<SessionKey, Arc<Session>>) -> R,
    ) -> R {
        f(&mut self.sessions.lock())
    }

    /// Ends a session: removes it from the registry and the index, drops its queue. The will,
    /// if still pending, is the caller's business.
    pub fn end_session(&self, session: &Arc<Session>) {
        {
            let mut reg = self.sessions.lock();
            if reg
                .get(&session.key)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                reg.remove(&session.key);
            }
        }
        self.discard_session(session);
    }

    /// Marks a session ended and removes its subscriptions from the index. The caller has
    /// already taken it out of the registry.
    pub(crate) fn discard_session(&self, session: &Arc<Session>) {
        let subs: Vec<Subscription> = {
            let mut st = session.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            let dropped = st.queue.len() as i64;
            Metrics::gauge(&self.metrics.queued, -dropped);
            Metrics::gauge(&self.metrics.inflight, -(st.inflight.len() as i64));
            self.metrics
                .dropped_n(DropReason::SessionEnded, dropped as u64);
            st.clear_messages();
            st.will = None;
            st.subscriptions.drain().map(|(_, s)| s).collect()
        };
        Metrics::gauge(&self.metrics.sessions, -1);
        self.unindex(session, &subs);
    }

    /// Removes subscriptions of `session` from its namespace's index.
    pub(crate) fn unindex(&self, session: &Arc<Session>, subs: &[Subscription]) {
        if subs.is_empty() {
            return;
        }
        let Some(ns) = self.namespace(session.key.cid) else {
            return;
        };
        let mut index = ns.subs.write();
        for sub in subs {
            let removed = match &sub.share_group {
                Some(group) => index.remove_shared(group, &sub.topic_filter, session),
                None => index.remove(&sub.topic_filter, session),
            };
            if removed.is_some() {
                Metrics::gauge(&self.metrics.subscriptions, -1);
            }
        }
    }

    /// Adds (or replaces) one subscription of `session` in its namespace's index.
    pub(crate) fn index(&self, session: &Arc<Session>, sub: &Subscription) {
        let ns = self.namespace_or_create(session.key.cid);
        let entry = SubEntry::of(sub);
        let old = {
            let mut index = ns.subs.write();
            match &sub.share_group {
                Some(group) => {
                    index.insert_shared(group, &sub.topic_filter, session.clone(), entry)
                }
                None => index.insert(&sub.topic_filter, session.clone(), entry),
            }
        };
        if old.is_none() {
            Metrics::gauge(&self.metrics.subscriptions, 1);
        }
    }

    // ---- routing -------------------------------------------------------------------------

    /// Routes a message to every matching subscription of the publisher's account and its
    /// ancestors, and updates the retained tree. Returns the number of sessions it was pushed to.
    pub fn publish(&self, msg: Arc<Message>) -> usize {
        if msg.retain && self.config.retain_available {
            self.set_retained(&msg);
        }
        TARGETS.with(|cell| {
            let mut targets = cell.borrow_mut();
            self.collect_targets(&msg, &mut targets);
            let n = self.push_targets(&msg, &mut targets);
            targets.clear();
            n
        })
    }

    fn collect_targets(&self, msg: &Message, targets: &mut Vec<Target>) {
        let mut collector = Collector {
            origin: msg.origin,
            out: targets,
        };
        for cid in self.auth.ancestors(msg.cid) {
            if let Some(ns) = self.namespace(cid) {
                ns.subs.read().for_each_match(&msg.topic, &mut collector);
            }
        }
    }

    /// Merges the targets of one session (one delivery carrying every subscription id at the
    /// highest granted QoS, spec §5) and pushes the deliveries.
    fn push_targets(&self, msg: &Arc<Message>, targets: &mut [Target]) -> usize {
        if targets.len() > 1 {
            targets.sort_unstable_by_key(|t| (t.session.id, t.shared));
        }
        let mut pushed = 0;
        let mut i = 0;
        while i < targets.len() {
            let first = &targets[i];
            let mut qos = first.entry.qos;
            let mut rap = first.entry.retain_as_published;
            let mut sub_ids: SmallVec<[u32; 2]> = first.entry.id.into_iter().collect();
            let mut j = i + 1;
            if !first.shared {
                while j < targets.len()
                    && !targets[j].shared
                    && targets[j].session.id == first.session.id
                {
                    qos = qos.max(targets[j].entry.qos);
                    rap |= targets[j].entry.retain_as_published;
                    if let Some(id) = targets[j].entry.id {
                        sub_ids.push(id);
                    }
                    j += 1;
                }
            }
            let delivery = Delivery {
                msg: msg.clone(),
                qos: qos.min(msg.qos),
                retain: rap && msg.retain,
                sub_ids,
            };
            if self.push(&targets[i].session, delivery) {
                pushed += 1;
            }
            i = j;
        }
        pushed
    }

    /// Pushes one delivery into a session and accounts for the outcome.
    pub(crate) fn push(&self, session: &Session, delivery: Delivery) -> bool {
        match session.push(delivery, &self.config) {
            Push::Queued => {
                Metrics::gauge(&self.metrics.queued, 1);
                true
            }
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
            Push::Overflow => {
                tracing::warn!(session = %session.key.client_id, cid = session.key.cid, "session queue over its byte budget: queue dropped");
                self.metrics.dropped(DropReason::QueueOverflow);
                false
            }
        }
    }

    // ---- retained ------------------------------------------------------------------------

    fn set_retained(&self, msg: &Arc<Message>) {
        let ns = self.namespace_or_create(msg.cid);
        let mut tree = ns.retained.write();
        if msg.payload.is_empty() {
            if tree.remove(&msg.topic).is_some() {
                Metrics::gauge(&self.metrics.retained, -1);
            }
        } else if tree.insert(&msg.topic, msg.clone()).is_none() {
            Metrics::gauge(&self.metrics.retained, 1);
        }
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

    /// Removes expired retained messages from every namespace.
    pub fn sweep_retained(&self, now: Micros) {
        let namespaces: Vec<Arc<Namespace>> = self.namespaces.read().values().cloned().collect();
        for ns in namespaces {
            let mut removed = 0;
            ns.retained.write().retain(|_, msg| {
                let keep = !msg.is_expired(now);
                if !keep {
                    removed += 1;
                }
                keep
            });
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
