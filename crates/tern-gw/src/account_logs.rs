//! The account's own logs (spec flespi-gw §7, docs/flespi.md#logs): every REST call of an
//! account (`GET /platform/customer/logs`, `origin_type` 1, `origin_id` the account) and the
//! events of its MQTT sessions (`GET /mqtt/logs`, `origin_type` 14, `origin_id` the session).
//!
//! Neither may slow what it records. The REST API ([`Gateway::log_rest_call`]) and the broker
//! (the [`SessionLog`] hook, installed only while `logs_ttl` keeps records) hand a record to one
//! bounded queue ([`QUEUE`] records) without waiting; when it is full the record is dropped and
//! counted (`tern_gw_account_logs{event="dropped"}`: the overflow policy is *drop newest*); so
//! is a record that arrives while the store does not accept work (published, not stored). One
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
use serde_json::json;
use tern_broker::{Cid, SessionLog};
use tern_store::{MessageKey, Op};
use tokio::sync::mpsc;

use crate::Gateway;
use crate::logs::{Origin, code};

/// Records waiting for the log task, at most; past it new ones are dropped (counted).
pub const QUEUE: usize = 16_384;
/// Records the log task takes, publishes and writes at once.
pub const BATCH: usize = 512;
/// How long the log task lets records gather after a batch smaller than [`BATCH`]: at most
/// one store op per account log and about 20 wake-ups (and store transactions) a second
/// however busy the REST API.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(50);
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
                        if n < BATCH {
                            tokio::time::sleep(LINGER).await;
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Publishes the REST records of a batch and appends the batch to the store, one op per
    /// account log.
    fn write_account_logs(&self, batch: impl Iterator<Item = Entry>) {
        // While the store does not accept work (a failing disk) records are published only:
        // the store's pending ops must not grow with them (counted as dropped).
        let accepting = self.store.accepting();
        let keep = self.options.logs_ttl > 0 && accepting;
        let mut unstored = 0u64;
        let mut logs: HashMap<u64, Vec<(MessageKey, Bytes)>> = HashMap::new();
        // Whether anyone listens to an account's REST call topic, asked once per batch.
        let mut listened: HashMap<Cid, bool> = HashMap::new();
        for entry in batch {
            let (key, ts, json) = match entry {
                Entry::Rest { ts, call } => {
                    let json = rest_record(ts, &call);
                    let topic = || {
                        format!(
                            "flespi/log/{}/{}/{}",
                            Origin::Customer.path(),
                            call.cid,
                            REST_EVENT.0
                        )
                    };
                    if *listened.entry(call.cid).or_insert_with(|| {
                        // In a cluster its listeners may be on other nodes.
                        self.broker.is_clustered()
                            || self.broker.has_subscribers(call.cid, &topic())
                    }) {
                        crate::publish::log_json(&self.broker, call.cid, topic(), json.clone());
                    }
                    (Origin::Customer.key(call.cid), ts, json)
                }
                Entry::Session { cid, ts, record } => (Origin::MqttSessions.key(cid), ts, record),
            };
            if !keep {
                unstored += u64::from(self.options.logs_ttl > 0);
            } else {
                let key_of = MessageKey {
                    ts: i64::try_from(ts).unwrap_or(i64::MAX),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                };
                logs.entry(key).or_default().push((key_of, json));
            }
        }
        if unstored > 0 {
            self.account_logs
                .metrics
                .dropped
                .fetch_add(unstored, Ordering::Relaxed);
        }
        for (device, messages) in logs {
            self.account_logs
                .metrics
                .stored
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            self.write(Op::AppendMessages { device, messages });
        }
    }
}

/// The JSON record of a REST call, written directly (no intermediate `Value`).
fn rest_record(ts: u64, call: &RestCallLog) -> Bytes {
    use std::fmt::Write;
    let mut out = String::with_capacity(256 + call.uri.len());
    // Strings go through serde_json for their escaping.
    let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let _ = write!(
        out,
        "{{\"timestamp\":{},\"event_code\":{},\"origin_type\":{},\"origin_id\":{},\"host\":{}",
        json!(ts as f64 / 1e6),
        REST_EVENT.1,
        Origin::Customer.origin_type(),
        call.cid,
        text(&call.host),
    );
    if let Some(app) = &call.app {
        let _ = write!(out, ",\"app\":{}", text(app));
    }
    let _ = write!(
        out,
        ",\"method\":{},\"uri\":{},\"token_id\":{},\"http_code\":{},\"transport\":{},\"duration\":{}}}",
        text(&call.method),
        text(&call.uri),
        call.token_id,
        call.http_code,
        text(call.transport),
        json!((call.duration * 1e6).round() / 1e6),
    );
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_newest_and_counts_it() {
        let (tx, mut rx) = mpsc::channel(2);
        let metrics = AccountLogMetrics::default();
        for i in 0..3u8 {
            let entry = Entry::Session {
                cid: 1,
                ts: u64::from(i),
                record: Bytes::from(vec![i]),
            };
            offer(&tx, &metrics, entry);
        }
        assert_eq!(metrics.queued.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.dropped.load(Ordering::Relaxed), 1);
        let mut kept = Vec::new();
        while let Ok(Entry::Session { ts, .. }) = rx.try_recv() {
            kept.push(ts);
        }
        assert_eq!(kept, vec![0, 1], "the oldest stay, the newest went");
    }

    #[test]
    fn a_rest_record_is_json_with_every_field() {
        let call = RestCallLog {
            cid: 7,
            token_id: 9,
            host: "10.0.0.1".into(),
            app: Some("app \"quoted\"".into()),
            method: "GET".into(),
            uri: "/platform/customer?fields=id".into(),
            http_code: 200,
            transport: "http",
            duration: 0.000_123_4,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&rest_record(1_700_000_000_123_456, &call)).expect("JSON");
        assert_eq!(
            v,
            json!({"timestamp": 1_700_000_000.123_456, "event_code": 600, "origin_type": 1,
                "origin_id": 7, "host": "10.0.0.1", "app": "app \"quoted\"", "method": "GET",
                "uri": "/platform/customer?fields=id", "token_id": 9, "http_code": 200,
                "transport": "http", "duration": 0.000_123})
        );
        let bare = RestCallLog { app: None, ..call };
        let v: serde_json::Value = serde_json::from_slice(&rest_record(1, &bare)).expect("JSON");
        assert!(v.get("app").is_none());
    }
}
