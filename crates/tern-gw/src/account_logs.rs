//! The account's own logs (spec flespi-gw §7, docs/flespi.md#logs): every REST call of an
//! account (`GET /platform/customer/logs`, `origin_type` 1, `origin_id` the account) and the
//! events of its MQTT sessions (`GET /mqtt/logs`, `origin_type` 14, `origin_id` the session).
//!
//! Neither may slow what it records. The REST API ([`Gateway::log_rest_call`]) and the broker
//! (the [`SessionLog`] hook, installed only while `logs_ttl` keeps records) hand a record to one
//! bounded queue ([`QUEUE`] records) without waiting; when it is full the record is dropped and
//! counted (`tern_gw_account_logs{event="dropped"}`: the overflow policy is *drop newest*). One
//! task ([`Gateway::run_account_logs`]) takes up to [`BATCH`] records at a time, publishes the
//! REST records on `flespi/log/platform/customer/<cid>/rest` (the broker already published
//! its session events on `flespi/log/mqtt/sessions/<session id>/<event>`) and appends the
//! batch to the store with one op per account log, under `tern_store::log_key(1, cid)` and
//! `log_key(14, cid)`. Retention is the entity logs' (`logs_ttl`, `logs_max_bytes` per
//! account: the sweep counts these logs with the account's entities).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tern_broker::{Cid, SessionLog};
use tern_store::{MessageKey, Op};
use tokio::sync::mpsc;

use crate::Gateway;
use crate::logs::{Origin, code};

/// Records waiting for the log task, at most; past it new ones are dropped (counted).
pub const QUEUE: usize = 16_384;
/// Records the log task takes, publishes and writes at once.
pub const BATCH: usize = 512;
/// Longest `x-flespi-app` kept (flespi keeps 64 characters).
pub const APP_MAX: usize = 64;

/// The topic event of a REST call record: `flespi/log/platform/customer/<cid>/rest`.
pub const REST_EVENT: (&str, u64) = ("rest", code::REST_CALL);

/// One REST call, as the REST API saw it.
#[derive(Debug, Clone)]
pub struct RestCallLog {
    /// The account the call acted in (`x-flespi-cid`, else the token's).
    pub cid: Cid,
    pub token_id: u64,
    /// The client's address (HTTP) or the MQTT session's (REST over MQTT); empty if unknown.
    pub host: String,
    /// `x-flespi-app`, at most [`APP_MAX`] characters.
    pub app: Option<String>,
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub http_code: u16,
    /// `http`, `https` or `mqtt` (REST over MQTT).
    pub transport: &'static str,
    /// Seconds the call took.
    pub duration: f64,
}

#[derive(Debug)]
enum Entry {
    Rest { ts: u64, call: Box<RestCallLog> },
    Session { cid: Cid, ts: u64, record: Bytes },
}

/// The account logs' counters (`tern_gw_account_logs{event}`).
#[derive(Debug, Default)]
pub struct AccountLogMetrics {
    /// Records queued.
    pub queued: AtomicU64,
    /// Records dropped because the queue was full (or the task gone).
    pub dropped: AtomicU64,
    /// Records appended to the store.
    pub stored: AtomicU64,
}

/// The queue's sending side, set once the task runs.
#[derive(Debug, Default)]
pub(crate) struct AccountLogs {
    tx: std::sync::OnceLock<mpsc::Sender<Entry>>,
    pub(crate) metrics: Arc<AccountLogMetrics>,
}

fn offer(tx: &mpsc::Sender<Entry>, metrics: &AccountLogMetrics, entry: Entry) {
    match tx.try_send(entry) {
        Ok(()) => metrics.queued.fetch_add(1, Ordering::Relaxed),
        Err(_) => metrics.dropped.fetch_add(1, Ordering::Relaxed),
    };
}

/// The broker's hook: session events into the queue.
#[derive(Debug)]
struct SessionHook {
    tx: mpsc::Sender<Entry>,
    metrics: Arc<AccountLogMetrics>,
}

impl SessionLog for SessionHook {
    fn logged(&self, cid: Cid, timestamp: u64, _event: &'static str, record: Bytes) {
        offer(
            &self.tx,
            &self.metrics,
            Entry::Session {
                cid,
                ts: timestamp,
                record,
            },
        );
    }
}

impl Gateway {
    /// Records a REST call in its account's log (docs/flespi.md#logs): queued without waiting,
    /// dropped (and counted) when the queue is full. Nothing happens before
    /// [`Gateway::run_account_logs`] was started.
    pub fn log_rest_call(&self, call: RestCallLog) {
        if let Some(tx) = self.account_logs.tx.get() {
            let ts = self.broker.clock.stamp();
            offer(
                tx,
                &self.account_logs.metrics,
                Entry::Rest {
                    ts,
                    call: Box::new(call),
                },
            );
        }
    }

    /// The account logs' counters.
    pub fn account_log_metrics(&self) -> &AccountLogMetrics {
        &self.account_logs.metrics
    }

    /// Creates the account logs' queue (REST calls from now on, and, while `logs_ttl` keeps
    /// records, the broker's session events) and returns the task that empties it, until the
    /// broker shuts down. Call once.
    pub fn run_account_logs(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        if self.options.logs_ttl > 0 {
            self.broker.set_session_log(Arc::new(SessionHook {
                tx: tx.clone(),
                metrics: self.account_logs.metrics.clone(),
            }));
        }
        let _ = self.account_logs.tx.set(tx);
        let gw = self.clone();
        async move {
            let shutdown = gw.broker.shutdown_token().clone();
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => {
                        if n == 0 {
                            return;
                        }
                        gw.write_account_logs(batch.drain(..));
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Publishes the REST records of a batch and appends the batch to the store, one op per
    /// account log.
    fn write_account_logs(&self, batch: impl Iterator<Item = Entry>) {
        let keep = self.options.logs_ttl > 0;
        let mut logs: HashMap<u64, Vec<(MessageKey, Bytes)>> = HashMap::new();
        for entry in batch {
            let (key, ts, json) = match entry {
                Entry::Rest { ts, call } => {
                    let record = rest_record(ts, &call);
                    let topic = format!(
                        "flespi/log/{}/{}/{}",
                        Origin::Customer.path(),
                        call.cid,
                        REST_EVENT.0
                    );
                    let json = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
                    if self.broker.has_subscribers(call.cid, &topic) {
                        crate::publish::log_json(&self.broker, call.cid, topic, json.clone());
                    }
                    (Origin::Customer.key(call.cid), ts, json)
                }
                Entry::Session { cid, ts, record } => (Origin::MqttSessions.key(cid), ts, record),
            };
            if keep {
                let key_of = MessageKey {
                    ts: i64::try_from(ts).unwrap_or(i64::MAX),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                };
                logs.entry(key).or_default().push((key_of, json));
            }
        }
        for (device, messages) in logs {
            self.account_logs
                .metrics
                .stored
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            self.store.submit(Op::AppendMessages { device, messages });
        }
    }
}

/// The JSON record of a REST call.
fn rest_record(ts: u64, call: &RestCallLog) -> Value {
    let mut r = Map::with_capacity(12);
    r.insert("timestamp".into(), json!(ts as f64 / 1e6));
    r.insert("event_code".into(), json!(REST_EVENT.1));
    r.insert("origin_type".into(), json!(Origin::Customer.origin_type()));
    r.insert("origin_id".into(), json!(call.cid));
    r.insert("host".into(), json!(call.host));
    if let Some(app) = &call.app {
        r.insert("app".into(), json!(app));
    }
    r.insert("method".into(), json!(call.method));
    r.insert("uri".into(), json!(call.uri));
    r.insert("token_id".into(), json!(call.token_id));
    r.insert("http_code".into(), json!(call.http_code));
    r.insert("transport".into(), json!(call.transport));
    r.insert(
        "duration".into(),
        json!((call.duration * 1e6).round() / 1e6),
    );
    Value::Object(r)
}
