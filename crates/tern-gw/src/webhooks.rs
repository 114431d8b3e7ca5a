//! Webhooks (docs/flespi.md#webhooks, spec flespi-gw §6): create, change, delete, the trigger
//! tap that queues pending calls, and the delivery tasks.
//!
//! - **Triggers.** The broker's trigger tap (`tern_broker::tap`) hands this module every
//!   publication, `flespi/` topics included (the webhooks' own log topics excepted, so a webhook
//!   cannot feed itself). Without an enabled webhook the tap is off: the publish path reads one
//!   byte. With some, a publication costs one read lock and one map lookup by its account;
//!   only the webhooks listening to that account test their filters.
//! - **Groups.** Enabled webhooks of one account sharing a `name` share the load: a publication
//!   that matches goes to one of the members it matches, in turn.
//! - **Pending calls** are queued durably before anything is attempted: the message table
//!   under `tern_store::webhook_key(id)`, one JSON record per call (`topic`, `payload`,
//!   `timestamp`, `cid`, `user_properties`), in arrival order. The queue is bounded by
//!   [`MAX_PENDING`] calls and [`MAX_PENDING_BYTES`] bytes per webhook; past either, a new call
//!   is dropped (policy **drop-newest**), counted (`tern_gw_webhook_calls{outcome="overflow"}`)
//!   and logged by the delivery task (`queue/overflow`). A `kill -9` loses nothing queued: the
//!   task sends it after the restart (at least once).
//! - **Delivery**: one task per enabled webhook takes its oldest call and runs the chain of
//!   steps in order (FIFO). A network error, a timeout or a status >= 500 is retried after 1,
//!   2, 4, 8 and 16 s; after the fifth retry the call is logged (`call/dropped`) and dropped. A
//!   4xx is logged at once (`call/failed`) and the call dropped. Each answered request is
//!   logged with `response_code`, `request_body` and `response` (`call/done`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value, json};
use tern_broker::{Broker, Cid, Message, PublishTap};
use tern_expr::{JsonContext, Payload};
use tern_store::{MessageKey, Op, Snapshot, Store};

use crate::logs::Origin;
use crate::webhook::{Action, Compiled, Step, Webhook};
use crate::{Gateway, GwError, GwKind};

/// Pending calls one webhook holds at most.
pub const MAX_PENDING: u64 = 10_000;
/// Bytes of pending calls one webhook holds at most.
pub const MAX_PENDING_BYTES: u64 = 16 * 1024 * 1024;
/// Retries of a step after a network error, a timeout or a 5xx.
pub const MAX_RETRIES: u32 = 5;
/// The first retry's delay; doubled for each next one.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The most of an answer read, and of `request_body` / `response` in a log record.
const ANSWER_MAX: usize = 64 * 1024;
const LOGGED_MAX: usize = 1024;
/// The webhooks' own log topics, never triggers.
const OWN_LOGS: &str = "flespi/log/platform/webhooks/";

/// Event codes of the webhook log (tern's own; `toolbox/codes` lists them).
pub mod webhook_event {
    /// A step was answered below 400 (`response_code`, `request_body`, `response`, `step`).
    pub const CALL_DONE: (&str, u64) = ("call/done", 410);
    /// A step was answered 4xx, or its `validate` failed with `break`: the call is dropped.
    pub const CALL_FAILED: (&str, u64) = ("call/failed", 411);
    /// A step failed (network error, timeout, 5xx) and is retried (`retry`, `retry_in`).
    pub const CALL_RETRY: (&str, u64) = ("call/retry", 412);
    /// A step still failed after the last retry: the call is dropped.
    pub const CALL_DROPPED: (&str, u64) = ("call/dropped", 413);
    /// Calls were dropped because the pending queue was full (`dropped`).
    pub const QUEUE_OVERFLOW: (&str, u64) = ("queue/overflow", 414);
}

/// Calls by outcome, and the pending queue (for `/metrics`).
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Calls queued by a trigger.
    pub queued: AtomicU64,
    /// Calls whose every step was answered (or skipped).
    pub done: AtomicU64,
    /// Calls dropped on a 4xx or a failed `validate` with `break`.
    pub failed: AtomicU64,
    /// Calls dropped after the last retry.
    pub dropped: AtomicU64,
    /// Step attempts that will be retried.
    pub retries: AtomicU64,
    /// Calls not queued: the webhook's pending queue was full.
    pub overflow: AtomicU64,
    /// Pending calls, all webhooks.
    pub pending: AtomicU64,
}

/// The internal REST call of a `flespi-platform` step: `method` `uri` (a path with query, such
/// as `/gw/devices/all`) with `body`, as a master token of account `cid`; answers the status
/// and the body. The REST API provides it ([`Gateway::set_platform_caller`]).
pub trait PlatformCaller: Send + Sync + std::fmt::Debug {
    fn call(
        &self,
        cid: Cid,
        method: hyper::Method,
        uri: String,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = (u16, Bytes)> + Send>>;
}

/// One enabled webhook as the tap and its task see it.
#[derive(Debug)]
struct Member {
    id: u64,
    cid: Cid,
    compiled: Compiled,
    wake: tokio::sync::Notify,
    pending: AtomicU64,
    bytes: AtomicU64,
    /// Calls dropped by the tap since the task last logged them.
    overflowed: AtomicU64,
}

impl Member {
    /// Whether a trigger takes `msg`; `payload` is parsed the first time a payload filter
    /// needs it (once per publication, whatever the number of webhooks).
    fn matches<'m>(&self, msg: &'m Message, payload: &mut Option<Payload<'m>>, now: f64) -> bool {
        self.compiled.triggers.iter().any(|t| {
            t.cid.unwrap_or(self.cid) == msg.cid
                && tern_topic::matches(&t.topic, &msg.topic)
                && t.payload.as_ref().is_none_or(|expr| {
                    payload
                        .get_or_insert_with(|| Payload::parse(&msg.payload))
                        .matches(expr, now)
                })
        })
    }
}

/// Members sharing an account and a name.
#[derive(Debug)]
struct Group {
    members: Vec<Arc<Member>>,
    next: AtomicUsize,
}

/// What the trigger tap and the gateway share.
#[derive(Debug)]
pub(crate) struct Hooks {
    /// The groups listening to each account.
    by_cid: RwLock<HashMap<Cid, Vec<Arc<Group>>>>,
    store: Store,
    seq: AtomicU64,
    pub(crate) metrics: WebhookMetrics,
}

#[derive(Debug)]
struct Tap(Arc<Hooks>);

impl PublishTap for Tap {
    fn published(&self, msg: &Arc<Message>) -> u64 {
        self.0.published(msg)
    }
}

impl Hooks {
    fn published(&self, msg: &Message) -> u64 {
        if msg.topic.starts_with(OWN_LOGS) {
            return 0;
        }
        let map = self.by_cid.read();
        let Some(groups) = map.get(&msg.cid) else {
            return 0;
        };
        let now = msg.timestamp as f64 / 1e6;
        let text = std::str::from_utf8(&msg.payload).ok();
        let mut parsed: Option<Payload<'_>> = None;
        let mut dropped = 0;
        for g in groups {
            // The members it matches; with several, the group's turn picks one.
            let mut first = None;
            let mut n = 0usize;
            for (i, m) in g.members.iter().enumerate() {
                if m.matches(msg, &mut parsed, now) {
                    first.get_or_insert(i);
                    n += 1;
                }
            }
            let Some(first) = first else {
                continue;
            };
            let chosen = if n == 1 {
                g.members.get(first)
            } else {
                let k = g.next.fetch_add(1, Ordering::Relaxed) % n;
                g.members
                    .iter()
                    .filter(|m| m.matches(msg, &mut parsed, now))
                    .nth(k)
            };
            if let Some(m) = chosen
                && !self.enqueue(m, msg, text)
            {
                dropped += 1;
            }
        }
        dropped
    }

    /// Queues one call for `m`; false when its queue is full (the call is dropped).
    fn enqueue(&self, m: &Member, msg: &Message, text: Option<&str>) -> bool {
        if m.pending.load(Ordering::Relaxed) >= MAX_PENDING
            || m.bytes.load(Ordering::Relaxed) >= MAX_PENDING_BYTES
        {
            m.overflowed.fetch_add(1, Ordering::Relaxed);
            self.metrics.overflow.fetch_add(1, Ordering::Relaxed);
            m.wake.notify_one();
            return false;
        }
        let payload = match text {
            Some(t) => Value::String(t.to_string()),
            None => Value::String(String::from_utf8_lossy(&msg.payload).into_owned()),
        };
        let props: Map<String, Value> = msg
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let record = json!({
            "topic": &*msg.topic,
            "payload": payload,
            "timestamp": msg.timestamp as f64 / 1e6,
            "cid": msg.cid,
            "user_properties": props,
        });
        let json = Bytes::from(record.to_string());
        let len = json.len() as u64;
        let key = MessageKey {
            ts: i64::try_from(msg.timestamp).unwrap_or(i64::MAX),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        };
        self.store.submit(Op::AppendMessages {
            device: tern_store::webhook_key(m.id),
            messages: vec![(key, json)],
        });
        m.pending.fetch_add(1, Ordering::Relaxed);
        m.bytes.fetch_add(len, Ordering::Relaxed);
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        self.metrics.pending.fetch_add(1, Ordering::Relaxed);
        m.wake.notify_one();
        true
    }
}

/// A running delivery task.
#[derive(Debug)]
struct Live {
    webhook: Webhook,
    member: Arc<Member>,
    task: tokio::task::AbortHandle,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The webhooks of the gateway.
#[derive(Debug)]
pub(crate) struct Webhooks {
    records: Mutex<BTreeMap<u64, Webhook>>,
    /// Members by webhook (enabled ones), kept across changes that keep their queue counts.
    members: Mutex<HashMap<u64, Arc<Member>>>,
    live: Mutex<HashMap<u64, Live>>,
    changed: tokio::sync::Notify,
    pub(crate) hooks: Arc<Hooks>,
    platform: std::sync::OnceLock<Arc<dyn PlatformCaller>>,
    /// Pending counts and bytes loaded from the store at start, by webhook.
    loaded: Mutex<HashMap<u64, (u64, u64)>>,
}

impl Webhooks {
    /// The webhooks the store held at start; installs the broker's trigger tap.
    pub(crate) fn load(broker: &Broker, store: &Store, snapshot: &Snapshot) -> Webhooks {
        let mut records = BTreeMap::new();
        for (id, json) in &snapshot.webhooks {
            match serde_json::from_slice::<Webhook>(json) {
                Ok(w) => {
                    records.insert(*id, w);
                }
                Err(err) => tracing::error!(id, %err, "a stored webhook does not decode; skipped"),
            }
        }
        let mut loaded = HashMap::new();
        for (key, stats) in &snapshot.message_stats {
            if let Some(id) = tern_store::webhook_of(*key) {
                loaded.insert(id, (stats.count, stats.bytes));
            }
        }
        let hooks = Arc::new(Hooks {
            by_cid: RwLock::new(HashMap::new()),
            store: store.clone(),
            seq: AtomicU64::new(broker.clock.now().max(1)),
            metrics: WebhookMetrics::default(),
        });
        broker.set_trigger_tap(Arc::new(Tap(hooks.clone())));
        Webhooks {
            records: Mutex::new(records),
            members: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            hooks,
            platform: std::sync::OnceLock::new(),
            loaded: Mutex::new(loaded),
        }
    }
}

impl Gateway {
    /// Installs the internal REST caller of `flespi-platform` steps (once).
    pub fn set_platform_caller(&self, caller: Arc<dyn PlatformCaller>) {
        let _ = self.webhooks.platform.set(caller);
    }

    /// The webhooks' counters.
    pub fn webhook_metrics(&self) -> &WebhookMetrics {
        &self.webhooks.hooks.metrics
    }

    fn put_webhook(&self, w: &Webhook) {
        match serde_json::to_vec(w) {
            Ok(json) => {
                self.write(Op::PutWebhook {
                    id: w.id,
                    json: Bytes::from(json),
                });
            }
            Err(err) => tracing::error!(id = w.id, %err, "could not serialize a webhook"),
        }
    }

    /// Checks that every trigger's `filter.cid` and every step's `cid` is the webhook's account
    /// or one below it.
    fn check_trigger_accounts(&self, w: &Webhook) -> Result<(), GwError> {
        let compiled = w.compile()?;
        for t in &compiled.triggers {
            if let Some(c) = t.cid
                && c != w.cid
                && !self.directory.is_within(c, w.cid)
            {
                return Err(GwError::Invalid(format!(
                    "trigger filter.cid {c} is not account {} or one of its sub-accounts",
                    w.cid
                )));
            }
        }
        for s in &compiled.steps {
            // A literal address the outbound switch refuses is refused now (a host name is
            // checked before each request).
            if let Step::CustomServer { uri, .. } = s
                && let Ok(probe) = crate::webhook::check_http_uri(&uri.render(&Value::Null, 0.0))
                && let Some(host) = probe.host()
            {
                crate::outbound::check_literal(host, self.options.outbound)
                    .map_err(|e| GwError::Invalid(format!("`uri`: {e}")))?;
            }
            if let Step::Platform { cid: Some(c), .. } = s
                && *c != w.cid
                && !self.directory.is_within(*c, w.cid)
            {
                return Err(GwError::Invalid(format!(
                    "flespi-platform cid {c} is not account {} or one of its sub-accounts",
                    w.cid
                )));
            }
        }
        Ok(())
    }

    /// The ids of webhooks are never reused (the counter is stored with the others).
    fn next_webhook_id(&self) -> Result<u64, GwError> {
        let mut st = self.state.lock();
        self.take_id(&mut st, crate::GwKind::Webhook)
    }

    /// Loads the enabled webhooks' triggers into the tap (at start).
    pub(crate) fn load_webhooks(&self) {
        let records = self.webhooks.records.lock();
        let mut st = self.state.lock();
        let past = records.keys().next_back().map_or(1, |k| k + 1);
        st.next_webhook = st.next_webhook.max(past);
        drop(st);
        self.rebuild_triggers(&records);
    }

    /// Creates a webhook in account `cid` from a client's document.
    pub fn create_webhook(&self, doc: &Map<String, Value>, cid: Cid) -> Result<Value, GwError> {
        let mut w = Webhook::from_input(doc, 0, cid)?;
        self.check_trigger_accounts(&w)?;
        w.id = self.next_webhook_id()?;
        let id = w.id;
        let mut records = self.webhooks.records.lock();
        self.put_webhook(&w);
        let item = w.item();
        records.insert(id, w);
        self.rebuild_triggers(&records);
        drop(records);
        self.webhooks.changed.notify_one();
        Ok(item)
    }

    /// The webhook `id`.
    pub fn webhook(&self, id: u64) -> Option<Webhook> {
        self.webhooks.records.lock().get(&id).cloned()
    }

    /// The items of the webhooks of the accounts in `scope`.
    pub fn webhooks(&self, scope: &[Cid]) -> Vec<Value> {
        self.webhooks
            .records
            .lock()
            .values()
            .filter(|w| scope.contains(&w.cid))
            .map(Webhook::item)
            .collect()
    }

    /// Changes webhook `id`: the fields of `doc` replace the item's (`merge`: objects are
    /// merged one level deep, as PATCH does); the result is checked as a new one.
    pub fn update_webhook(
        &self,
        id: u64,
        doc: &Map<String, Value>,
        merge: bool,
    ) -> Result<Value, GwError> {
        let mut records = self.webhooks.records.lock();
        let old = records.get(&id).ok_or(GwError::NotFound {
            what: "webhook",
            id,
        })?;
        let mut item = match old.item() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for (k, v) in doc {
            match (merge, item.get_mut(k), v) {
                (true, Some(Value::Object(cur)), Value::Object(new)) => {
                    for (nk, nv) in new {
                        cur.insert(nk.clone(), nv.clone());
                    }
                }
                _ => {
                    item.insert(k.clone(), v.clone());
                }
            }
        }
        let new = Webhook::from_input(&item, id, old.cid)?;
        self.check_trigger_accounts(&new)?;
        self.put_webhook(&new);
        let answer = new.item();
        records.insert(id, new);
        self.rebuild_triggers(&records);
        drop(records);
        self.webhooks.changed.notify_one();
        Ok(answer)
    }

    /// Deletes a webhook with its pending calls and log.
    pub fn delete_webhook(&self, id: u64) -> Result<Value, GwError> {
        if !self.webhooks.records.lock().contains_key(&id) {
            return Err(GwError::NotFound {
                what: "webhook",
                id,
            });
        }
        self.share(&Op::DelWebhook { id });
        self.remove_webhook(id, false).ok_or(GwError::NotFound {
            what: "webhook",
            id,
        })
    }

    /// Deletes webhook `id` here: its record (from the store too), its task and its counters;
    /// its last item.
    /// `remote`: another node deleted it, applied unless an own change of it is still to come
    /// ([`Gateway::takes_remote`], asked under the records' lock local changes are made under).
    pub(crate) fn remove_webhook(&self, id: u64, remote: bool) -> Option<Value> {
        let mut records = self.webhooks.records.lock();
        if remote && !self.takes_remote(GwKind::Webhook, id) {
            return None;
        }
        let w = records.remove(&id)?;
        self.store.submit(Op::DelWebhook { id });
        self.rebuild_triggers(&records);
        drop(records);
        self.webhooks.live.lock().remove(&id);
        if let Some(m) = self.webhooks.members.lock().remove(&id) {
            self.webhooks
                .hooks
                .metrics
                .pending
                .fetch_sub(m.pending.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.webhooks.changed.notify_one();
        Some(w.item())
    }

    /// Every webhook record (cluster mode's first load).
    pub(crate) fn webhook_records(&self) -> Vec<Webhook> {
        self.webhooks.records.lock().values().cloned().collect()
    }

    /// Puts webhook `w` (changed on another node, its stored document `json`) here, unless an
    /// own change of it is still to come ([`Gateway::takes_remote`]).
    pub(crate) fn install_webhook(&self, w: Webhook, json: Bytes) {
        let id = w.id;
        let mut records = self.webhooks.records.lock();
        if !self.takes_remote(GwKind::Webhook, id) {
            return;
        }
        self.store.submit(Op::PutWebhook { id, json });
        records.insert(id, w);
        self.rebuild_triggers(&records);
        drop(records);
        self.webhooks.changed.notify_one();
    }

    /// Deletes the webhooks of deleted accounts.
    pub(crate) fn webhooks_of_accounts_deleted(&self, gone: &[Cid]) {
        let ids: Vec<u64> = self
            .webhooks
            .records
            .lock()
            .values()
            .filter(|w| gone.contains(&w.cid))
            .map(|w| w.id)
            .collect();
        for id in ids {
            let _ = self.delete_webhook(id);
        }
    }

    /// Recomputes the tap's groups from the enabled webhooks (under the records' lock).
    fn rebuild_triggers(&self, records: &BTreeMap<u64, Webhook>) {
        let mut members = self.webhooks.members.lock();
        let mut loaded = self.webhooks.loaded.lock();
        let mut groups: HashMap<(Cid, String), Vec<Arc<Member>>> = HashMap::new();
        let mut keep = HashMap::new();
        for w in records.values().filter(|w| w.enabled) {
            let Ok(compiled) = w.compile() else {
                tracing::error!(id = w.id, "a stored webhook does not compile; not run");
                continue;
            };
            let (pending, bytes) = match members.get(&w.id) {
                Some(m) => (
                    m.pending.load(Ordering::Relaxed),
                    m.bytes.load(Ordering::Relaxed),
                ),
                None => {
                    let (p, b) = loaded.remove(&w.id).unwrap_or((0, 0));
                    self.webhooks
                        .hooks
                        .metrics
                        .pending
                        .fetch_add(p, Ordering::Relaxed);
                    (p, b)
                }
            };
            // A member keeps its identity while its definition is unchanged (its task runs on).
            let m = match members.get(&w.id) {
                Some(m) if same_definition(&m.compiled, &compiled, m.cid, w.cid) => m.clone(),
                _ => Arc::new(Member {
                    id: w.id,
                    cid: w.cid,
                    compiled,
                    wake: tokio::sync::Notify::new(),
                    pending: AtomicU64::new(pending),
                    bytes: AtomicU64::new(bytes),
                    overflowed: AtomicU64::new(0),
                }),
            };
            groups
                .entry((w.cid, w.name.clone()))
                .or_default()
                .push(m.clone());
            keep.insert(w.id, m);
        }
        // Disabled webhooks keep their pending counts for when they come back.
        for (id, m) in members.iter() {
            if !keep.contains_key(id) {
                loaded.insert(
                    *id,
                    (
                        m.pending.load(Ordering::Relaxed),
                        m.bytes.load(Ordering::Relaxed),
                    ),
                );
                self.webhooks
                    .hooks
                    .metrics
                    .pending
                    .fetch_sub(m.pending.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        *members = keep;
        let mut by_cid: HashMap<Cid, Vec<Arc<Group>>> = HashMap::new();
        for (_, list) in groups {
            let mut cids: Vec<Cid> = list
                .iter()
                .flat_map(|m| {
                    m.compiled
                        .triggers
                        .iter()
                        .map(|t| t.cid.unwrap_or(m.cid))
                        .collect::<Vec<_>>()
                })
                .collect();
            cids.sort_unstable();
            cids.dedup();
            let g = Arc::new(Group {
                members: list,
                next: AtomicUsize::new(0),
            });
            for c in cids {
                by_cid.entry(c).or_default().push(g.clone());
            }
        }
        let active = !by_cid.is_empty();
        *self.webhooks.hooks.by_cid.write() = by_cid;
        self.broker.set_trigger_active(active);
    }

    /// Starts and stops the delivery tasks to match the enabled webhooks.
    fn reconcile_webhooks(&self) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let records = self.webhooks.records.lock().clone();
        let members = self.webhooks.members.lock().clone();
        let mut live = self.webhooks.live.lock();
        live.retain(|id, l| {
            members.get(id).is_some_and(|m| Arc::ptr_eq(m, &l.member))
                && records.get(id).is_some_and(|w| w == &l.webhook)
        });
        for (id, m) in members {
            if live.contains_key(&id) {
                continue;
            }
            let Some(w) = records.get(&id).cloned() else {
                continue;
            };
            let task = tokio::spawn(deliver(me.clone(), w.clone(), m.clone())).abort_handle();
            live.insert(
                id,
                Live {
                    webhook: w,
                    member: m,
                    task,
                },
            );
        }
    }

    /// The task that starts and stops the webhooks' delivery tasks until shutdown (spawn it).
    pub async fn run_webhooks(self: Arc<Self>) {
        let shutdown = self.broker.shutdown_token().clone();
        loop {
            self.reconcile_webhooks();
            tokio::select! {
                () = self.webhooks.changed.notified() => {}
                () = shutdown.cancelled() => {
                    self.webhooks.live.lock().clear();
                    return;
                }
            }
        }
    }

    /// The oldest pending call of webhook `id`. Blocking.
    fn oldest_call(&self, id: u64) -> Result<Option<(MessageKey, Bytes)>, GwError> {
        let mut out = None;
        let range = tern_store::MessageRange {
            device: tern_store::webhook_key(id),
            from: i64::MIN,
            to: i64::MAX,
            reverse: false,
        };
        self.store
            .device_messages(&range, &mut |k, json| {
                out = Some((k, Bytes::copy_from_slice(json)));
                tern_store::Visit::Stop
            })
            .map_err(|e| GwError::Store(e.to_string()))?;
        Ok(out)
    }
}

fn same_definition(a: &Compiled, b: &Compiled, ca: Cid, cb: Cid) -> bool {
    // Compiled forms hold parsed expressions; compare what they were parsed from.
    ca == cb
        && a.triggers.len() == b.triggers.len()
        && a.steps.len() == b.steps.len()
        && format!("{:?}", a.triggers) == format!("{:?}", b.triggers)
        && format!("{:?}", a.steps) == format!("{:?}", b.steps)
}

/// How one attempt of a step ended.
enum Attempt {
    /// Answered: status and body.
    Answered(u16, Bytes),
    /// No answer: why.
    NoAnswer(String),
    /// The outbound switch refuses the target (not retried).
    Refused(String),
}

/// The outbound switch's check of a rendered URI's host (`[gw] outbound_private_targets`):
/// its addresses are resolved and each checked before the request.
async fn allowed(uri: &str, policy: crate::outbound::OutboundPolicy) -> Result<(), String> {
    if policy.private_targets {
        return Ok(());
    }
    let Ok(parsed) = crate::webhook::check_http_uri(uri) else {
        // Refused by the request itself, with its reason.
        return Ok(());
    };
    let host = parsed.host().unwrap_or("");
    let port = parsed
        .port_u16()
        .unwrap_or(if parsed.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    crate::outbound::resolve_allowed(host, port, policy)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn clip(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b.get(..LOGGED_MAX.min(b.len())).unwrap_or_default());
    s.into_owned()
}

/// The template context of a call: its record plus `topics`.
fn context(record: &[u8]) -> Value {
    let mut doc: Map<String, Value> = serde_json::from_slice(record).unwrap_or_default();
    let topics: Vec<Value> = doc
        .get("topic")
        .and_then(Value::as_str)
        .map(|t| t.split('/').map(|l| Value::String(l.into())).collect())
        .unwrap_or_default();
    doc.insert("topics".into(), Value::Array(topics));
    Value::Object(doc)
}

/// A record in webhook `w`'s log.
fn webhook_log(gw: &Gateway, w: &Webhook, event: (&str, u64), fields: Map<String, Value>) {
    gw.log(w.cid, Origin::Webhook, w.id, event, fields);
}

/// Delivers webhook `w`'s pending calls until the task is stopped.
async fn deliver(gw: Arc<Gateway>, w: Webhook, m: Arc<Member>) {
    let clients: Vec<Option<crate::http_stream::HttpsClient>> = m
        .compiled
        .steps
        .iter()
        .map(|s| match s {
            Step::CustomServer { ca, timeout, .. } => Some(crate::http_stream::https_client(
                ca.as_deref(),
                *timeout,
                w.id,
                gw.options.outbound,
            )),
            Step::Platform { .. } => None,
        })
        .collect();
    loop {
        let overflowed = m.overflowed.swap(0, Ordering::Relaxed);
        if overflowed > 0 {
            let mut fields = Map::new();
            fields.insert("dropped".into(), json!(overflowed));
            webhook_log(&gw, &w, webhook_event::QUEUE_OVERFLOW, fields);
        }
        let read = {
            let gw = gw.clone();
            let id = w.id;
            tokio::task::spawn_blocking(move || gw.oldest_call(id)).await
        };
        let (key, record) = match read {
            Ok(Ok(Some(call))) => call,
            Ok(Ok(None)) => {
                m.wake.notified().await;
                gw.settled().await;
                continue;
            }
            Ok(Err(err)) => {
                tracing::error!(webhook = w.id, %err, "could not read the webhook's queue");
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
            Err(_) => return,
        };
        let doc = context(&record);
        let outcome = run_chain(&gw, &w, &m, &clients, &doc).await;
        let metrics = &gw.webhooks.hooks.metrics;
        match outcome {
            Outcome::Done => metrics.done.fetch_add(1, Ordering::Relaxed),
            Outcome::Failed => metrics.failed.fetch_add(1, Ordering::Relaxed),
            Outcome::Dropped => metrics.dropped.fetch_add(1, Ordering::Relaxed),
        };
        let ticket = gw.store.submit(Op::DelMessageKeys {
            device: tern_store::webhook_key(w.id),
            keys: vec![key],
        });
        gw.store.wait(ticket).await;
        m.pending.fetch_sub(1, Ordering::Relaxed);
        m.bytes.fetch_sub(record.len() as u64, Ordering::Relaxed);
        metrics.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Outcome {
    Done,
    Failed,
    Dropped,
}

/// Runs every step of the chain on `doc` with its retries.
async fn run_chain(
    gw: &Arc<Gateway>,
    w: &Webhook,
    m: &Member,
    clients: &[Option<crate::http_stream::HttpsClient>],
    doc: &Value,
) -> Outcome {
    let now = gw.now();
    let ctx = JsonContext::new(doc, now);
    for (i, step) in m.compiled.steps.iter().enumerate() {
        let mut retry = 0u32;
        loop {
            let (attempt, body) = match step {
                Step::CustomServer {
                    method,
                    uri,
                    headers,
                    body,
                    timeout,
                    ..
                } => {
                    let body = body.render_with(&ctx).into_owned();
                    let uri = uri.render_with(&ctx).into_owned();
                    let headers: Vec<(hyper::header::HeaderName, String)> = headers
                        .iter()
                        .map(|(n, v)| (n.clone(), v.render_with(&ctx).into_owned()))
                        .collect();
                    let client = clients.get(i).and_then(Option::as_ref);
                    let attempt = match (client, allowed(&uri, gw.options.outbound).await) {
                        (_, Err(refused)) => Attempt::Refused(refused),
                        (Some(c), Ok(())) => {
                            request(c, method.clone(), &uri, &headers, body.clone(), *timeout).await
                        }
                        (None, Ok(())) => Attempt::NoAnswer("no HTTP client".into()),
                    };
                    (attempt, body)
                }
                Step::Platform {
                    method,
                    uri,
                    body,
                    cid,
                } => {
                    let body = body.render_with(&ctx).into_owned();
                    let uri = uri.render_with(&ctx).into_owned();
                    let attempt = match gw.webhooks.platform.get() {
                        Some(p) => {
                            let (code, answer) = p
                                .call(
                                    cid.unwrap_or(w.cid),
                                    method.clone(),
                                    uri,
                                    Bytes::from(body.clone()),
                                )
                                .await;
                            Attempt::Answered(code, answer)
                        }
                        None => Attempt::NoAnswer("no REST API to call".into()),
                    };
                    (attempt, body)
                }
            };
            let mut fields = Map::new();
            fields.insert("step".into(), json!(i));
            fields.insert("request_body".into(), json!(clip(body.as_bytes())));
            let retryable = match &attempt {
                Attempt::Answered(code, answer) => {
                    fields.insert("response_code".into(), json!(code));
                    fields.insert("response".into(), json!(clip(answer)));
                    if *code >= 500 {
                        true
                    } else if *code >= 400 {
                        webhook_log(gw, w, webhook_event::CALL_FAILED, fields);
                        return Outcome::Failed;
                    } else {
                        match validate(step, *code, answer, now) {
                            None => {
                                webhook_log(gw, w, webhook_event::CALL_DONE, fields);
                                break;
                            }
                            Some(Action::Skip) => {
                                fields.insert("reason".into(), json!("validate failed: skipped"));
                                webhook_log(gw, w, webhook_event::CALL_DONE, fields);
                                break;
                            }
                            Some(Action::Break) => {
                                fields.insert(
                                    "reason".into(),
                                    json!("validate failed: chain stopped"),
                                );
                                webhook_log(gw, w, webhook_event::CALL_FAILED, fields);
                                return Outcome::Failed;
                            }
                            Some(Action::Retry) => {
                                fields.insert("reason".into(), json!("validate failed"));
                                true
                            }
                        }
                    }
                }
                Attempt::NoAnswer(why) => {
                    fields.insert("reason".into(), json!(why));
                    true
                }
                Attempt::Refused(why) => {
                    fields.insert("reason".into(), json!(why));
                    webhook_log(gw, w, webhook_event::CALL_FAILED, fields);
                    return Outcome::Failed;
                }
            };
            debug_assert!(retryable);
            if retry >= MAX_RETRIES {
                webhook_log(gw, w, webhook_event::CALL_DROPPED, fields);
                return Outcome::Dropped;
            }
            let delay = BACKOFF_MIN * 2u32.pow(retry);
            retry += 1;
            fields.insert("retry".into(), json!(retry));
            fields.insert("retry_in".into(), json!(delay.as_secs()));
            webhook_log(gw, w, webhook_event::CALL_RETRY, fields);
            gw.webhooks
                .hooks
                .metrics
                .retries
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
    }
    Outcome::Done
}

/// The action of a failed `validate`, `None` when it passes (or there is none). The
/// expression sees `code` (the status) and `payload` (the answer's text).
fn validate(step: &Step, code: u16, answer: &Bytes, now: f64) -> Option<Action> {
    let Step::CustomServer {
        validate: Some((expr, action)),
        ..
    } = step
    else {
        return None;
    };
    let doc = json!({"code": code, "payload": String::from_utf8_lossy(answer)});
    (!expr.matches(&JsonContext::new(&doc, now))).then_some(*action)
}

/// One request with `timeout` for the whole exchange.
async fn request(
    client: &crate::http_stream::HttpsClient,
    method: hyper::Method,
    uri: &str,
    headers: &[(hyper::header::HeaderName, String)],
    body: String,
    timeout: Duration,
) -> Attempt {
    let uri = match crate::webhook::check_http_uri(uri) {
        Ok(u) => u,
        Err(e) => return Attempt::NoAnswer(format!("uri `{uri}`: {e}")),
    };
    let mut req = hyper::Request::builder().method(method).uri(uri);
    let mut typed = false;
    for (name, value) in headers {
        typed |= name == hyper::header::CONTENT_TYPE;
        req = req.header(name, value.as_str());
    }
    if !typed {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = match req.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => return Attempt::NoAnswer(format!("the request: {e}")),
    };
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), ANSWER_MAX)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, body))) => Attempt::Answered(status, body),
        Ok(Err(e)) => Attempt::NoAnswer(e),
        Err(_) => Attempt::NoAnswer("timeout".into()),
    }
}
