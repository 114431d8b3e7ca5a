//! Streams (docs/flespi.md#streams, spec flespi-gw §6): create, change, delete, their sources,
//! the durable queue every subscribed message goes to, and the delivery tasks.
//!
//! The queue of stream `id` is the message table under `tern_store::stream_key(id)`, keyed by
//! arrival: the clock's stamp (unique, increasing) as timestamp and the gateway's sequence.
//! A message is queued under the gateway's lock in the same store submission as its source
//! change (`ingest.rs`, `channels.rs`), so the caller's `Gateway::settled` covers it: queued
//! is durable before the source is acknowledged. Bounds: `queue_ttl` (the retention sweep)
//! and `queue_max_bytes` (past it the oldest go: `Op::TrimMessages`, policy drop-oldest);
//! both are logged in the stream's log and counted ([`StreamMetrics`]).
//!
//! Delivery (`http_stream`, `mqtt_stream`): one task per enabled stream, started and stopped by
//! [`Gateway::run_streams`] after each stream change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tern_broker::Cid;
use tern_expr::JsonContext;
use tern_store::{MessageKey, Op};

use crate::logs::Origin;
use crate::stream::{Stream, StreamChanges};
use crate::{Gateway, GwError, State, publish};

/// Event codes of the stream log (tern's own; `toolbox/codes` lists them).
pub mod stream_event {
    /// A POST failed (`reason`, `message_count`, `http_code` when answered), or an MQTT
    /// stream's broker could not be reached or refused a message (`reason`): the messages stay
    /// queued and are tried again after the back-off.
    pub const DELIVERY_FAILED: (&str, u64) = ("delivery/failed", 400);
    /// A POST (an MQTT stream: a batch of PUBLISHes) succeeded after failures
    /// (`message_count`, `ack_latency`).
    pub const DELIVERY_RESUMED: (&str, u64) = ("delivery/resumed", 401);
    /// The queue passed `queue_max_bytes`: its oldest messages were dropped (`queue_max_bytes`).
    pub const QUEUE_OVERFLOW: (&str, u64) = ("queue/overflow", 402);
    /// Queued messages older than `queue_ttl` were dropped (`queue_ttl`).
    pub const QUEUE_EXPIRED: (&str, u64) = ("queue/expired", 403);
    /// Messages that can go nowhere were dropped (`reason`, `message_count`): an ident that
    /// makes no valid URI, a topic template that renders no valid topic name.
    pub const DELIVERY_DROPPED: (&str, u64) = ("delivery/dropped", 404);
}

/// Counters of the streams (for `/metrics`).
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Messages appended to stream queues.
    pub queued: AtomicU64,
    /// Messages delivered (a 200 answer).
    pub delivered: AtomicU64,
    /// POSTs that failed (non-200, timeout, connection error).
    pub failures: AtomicU64,
    /// Times a queue passed `queue_max_bytes` and its oldest messages went.
    pub overflows: AtomicU64,
    /// Times a queue's messages older than `queue_ttl` went.
    pub expiries: AtomicU64,
    /// Messages `validate_message` kept out of a queue.
    pub not_valid: AtomicU64,
}

/// A running delivery task: the stream it was started with, its wake-up and `connected`.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) stream: Stream,
    pub(crate) wake: Arc<tokio::sync::Notify>,
    pub(crate) connected: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a message came from, for the sources of streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Device(u64),
    Channel(u64),
}

impl Gateway {
    /// Logs that a delivery of stream `s` failed (400) and counts it; `http_code` for an
    /// http stream's answer.
    pub(crate) fn stream_failed(
        &self,
        s: &Stream,
        reason: String,
        message_count: usize,
        http_code: Option<u16>,
        retry_in: u64,
    ) {
        self.stream_metrics.failures.fetch_add(1, Ordering::Relaxed);
        let mut fields = Map::new();
        fields.insert("reason".into(), json!(reason));
        fields.insert("message_count".into(), json!(message_count));
        if let Some(code) = http_code {
            fields.insert("http_code".into(), json!(code));
        }
        fields.insert("retry_in".into(), json!(retry_in));
        self.log(
            s.cid,
            Origin::Stream,
            s.id,
            stream_event::DELIVERY_FAILED,
            fields,
        );
    }

    /// Logs that stream `s` delivers again after failures (401).
    pub(crate) fn stream_resumed(&self, s: &Stream, message_count: usize, ack_latency: f64) {
        let mut fields = Map::new();
        fields.insert("message_count".into(), json!(message_count));
        fields.insert("ack_latency".into(), json!(ack_latency));
        self.log(
            s.cid,
            Origin::Stream,
            s.id,
            stream_event::DELIVERY_RESUMED,
            fields,
        );
    }

    /// Logs messages of stream `s` dropped because they can go nowhere (404).
    pub(crate) fn stream_dropped(&self, s: &Stream, reason: String, message_count: usize) {
        let mut fields = Map::new();
        fields.insert("reason".into(), json!(reason));
        fields.insert("message_count".into(), json!(message_count));
        self.log(
            s.cid,
            Origin::Stream,
            s.id,
            stream_event::DELIVERY_DROPPED,
            fields,
        );
    }
}

impl Gateway {
    fn put_stream(&self, s: &Stream) {
        match serde_json::to_vec(s) {
            Ok(json) => {
                self.write(Op::PutStream {
                    id: s.id,
                    json: Bytes::from(json),
                });
            }
            Err(err) => tracing::error!(id = s.id, %err, "could not serialize a stream"),
        }
    }

    /// A stream's item with its state: `queue_size` (bytes queued) and `connected` (the last
    /// POST succeeded).
    pub(crate) fn stream_item_of(&self, s: &Stream) -> Value {
        let size = self
            .store
            .message_stats(tern_store::stream_key(s.id))
            .map(|st| st.bytes)
            .unwrap_or(0);
        let connected = self
            .live
            .lock()
            .get(&s.id)
            .is_some_and(|l| l.connected.load(Ordering::Relaxed));
        s.item(size, connected)
    }

    /// Creates a stream (checked by `StreamInput::into_stream`, its account in the caller's
    /// scope).
    pub fn create_stream(&self, mut s: Stream) -> Result<Value, GwError> {
        s.check_outbound(self.options.outbound)?;
        let mut st = self.state.lock();
        s.id = self.take_id(&mut st, crate::GwKind::Stream)?;
        self.put_stream(&s);
        let item = self.stream_item_of(&s);
        publish::stream_state(&self.broker, s.cid, s.id, None, &item);
        st.validators.insert(s.id, s.validator());
        st.streams.insert(s.id, s);
        self.streams_changed.notify_one();
        Ok(item)
    }

    /// The stream `id`.
    pub fn stream(&self, id: u64) -> Option<Stream> {
        self.state.lock().streams.get(&id).cloned()
    }

    /// The items of the streams of the accounts in `scope`.
    pub fn streams(&self, scope: &[Cid]) -> Vec<Value> {
        let st = self.state.lock();
        st.streams
            .values()
            .filter(|s| scope.contains(&s.cid))
            .map(|s| self.stream_item_of(s))
            .collect()
    }

    pub fn update_stream(
        &self,
        id: u64,
        changes: &StreamChanges,
        merge: bool,
    ) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let old = st
            .streams
            .get(&id)
            .ok_or(GwError::NotFound { what: "stream", id })?;
        let new = changes.apply(old, merge)?;
        new.check_outbound(self.options.outbound)?;
        let old_item = self.stream_item_of(old);
        self.put_stream(&new);
        let item = self.stream_item_of(&new);
        publish::stream_state(&self.broker, new.cid, id, Some(&old_item), &item);
        st.validators.insert(id, new.validator());
        st.streams.insert(id, new);
        self.streams_changed.notify_one();
        Ok(item)
    }

    /// Deletes a stream with its queue and log.
    pub fn delete_stream(&self, id: u64) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        self.drop_stream(&mut st, id, true)
            .ok_or(GwError::NotFound { what: "stream", id })
    }

    /// Takes stream `id` out (its delivery task, store record; `shared`: a delete made here,
    /// handed to the cluster) and publishes its deletion; its last item, or `None` when there
    /// is no such stream.
    pub(crate) fn drop_stream(
        &self,
        st: &mut crate::State,
        id: u64,
        shared: bool,
    ) -> Option<Value> {
        let s = st.streams.remove(&id)?;
        st.validators.remove(&id);
        let item = self.stream_item_of(&s);
        self.live.lock().remove(&id);
        self.submit(Op::DelStream { id }, shared);
        publish::stream_deleted(&self.broker, s.cid, id, &item);
        self.streams_changed.notify_one();
        Some(item)
    }

    /// Adds (or, with `remove`, takes away) `sources` of stream `id`; answers the ids changed.
    pub fn stream_sources(
        &self,
        id: u64,
        devices: bool,
        sources: &[u64],
        remove: bool,
    ) -> Result<Vec<Value>, GwError> {
        let mut st = self.state.lock();
        let mut s = st
            .streams
            .get(&id)
            .cloned()
            .ok_or(GwError::NotFound { what: "stream", id })?;
        let list = if devices {
            &mut s.devices
        } else {
            &mut s.channels
        };
        let mut changed = Vec::new();
        for src in sources {
            let has = list.contains(src);
            if remove && has {
                list.retain(|x| x != src);
                changed.push(json!({"id": src}));
            } else if !remove && !has {
                list.push(*src);
                changed.push(json!({"id": src}));
            }
        }
        list.sort_unstable();
        if !changed.is_empty() {
            self.put_stream(&s);
            st.streams.insert(id, s);
        }
        Ok(changed)
    }

    /// Deletes the streams of deleted accounts.
    pub(crate) fn streams_of_accounts_deleted(&self, gone: &[Cid]) {
        let ids: Vec<u64> = {
            let st = self.state.lock();
            st.streams
                .values()
                .filter(|s| gone.contains(&s.cid))
                .map(|s| s.id)
                .collect()
        };
        for id in ids {
            let _ = self.delete_stream(id);
        }
    }

    /// Publishes every stream's state topics (at start).
    pub(crate) fn publish_streams(&self) {
        let st = self.state.lock();
        for s in st.streams.values() {
            publish::stream_state(&self.broker, s.cid, s.id, None, &self.stream_item_of(s));
        }
    }

    /// Publishes stream `id`'s state after its `connected` changed to `now`.
    pub(crate) fn republish_stream(&self, id: u64, now: bool) {
        let st = self.state.lock();
        if let Some(s) = st.streams.get(&id) {
            let item = self.stream_item_of(s);
            let mut old = item.clone();
            old["connected"] = json!(!now);
            publish::stream_state(&self.broker, s.cid, id, Some(&old), &item);
        }
    }

    /// Queues `messages` (each with its JSON) from `source` on every enabled stream that takes
    /// them, under the gateway's lock (so in submission order with the source's own ops).
    /// `skip` tells a stream to leave a message to another source: a channel message whose
    /// device the stream also takes is queued by the device path, so it is queued once.
    pub(crate) fn queue_for_streams(
        &self,
        st: &mut State,
        source: Source,
        messages: &[(&Map<String, Value>, &Bytes)],
        skip: &dyn Fn(&Stream, usize) -> bool,
    ) {
        if st.streams.is_empty() || messages.is_empty() {
            return;
        }
        let now = self.now();
        let targets: Vec<u64> = st
            .streams
            .values()
            .filter(|s| {
                s.enabled
                    && match source {
                        Source::Device(d) => s.devices.contains(&d),
                        Source::Channel(c) => s.channels.contains(&c),
                    }
            })
            .map(|s| s.id)
            .collect();
        for id in targets {
            let Some(s) = st.streams.get(&id) else {
                continue;
            };
            let validator = st.validators.get(&id).and_then(Option::as_ref);
            let mut queued = Vec::with_capacity(messages.len());
            let mut bytes = 0u64;
            for (i, (obj, json)) in messages.iter().enumerate() {
                if skip(s, i) {
                    continue;
                }
                if let Some(v) = validator {
                    let doc = Value::Object((*obj).clone());
                    if !v.matches(&JsonContext::new(&doc, now)) {
                        self.stream_metrics
                            .not_valid
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                let key = MessageKey {
                    ts: i64::try_from(self.broker.clock.stamp()).unwrap_or(i64::MAX),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                };
                bytes += json.len() as u64;
                queued.push((key, (*json).clone()));
            }
            if queued.is_empty() {
                continue;
            }
            let n = queued.len() as u64;
            let key = tern_store::stream_key(id);
            self.store.submit(Op::AppendMessages {
                device: key,
                messages: queued,
            });
            self.stream_metrics.queued.fetch_add(n, Ordering::Relaxed);
            // The queue's bytes as this gateway counts them (set from the store after each
            // delivery); past `queue_max_bytes` the oldest go.
            let (cid, max) = (s.cid, s.queue_max_bytes);
            let held = st.queue_bytes.entry(id).or_insert(0);
            *held += bytes;
            if max > 0 && *held > max {
                *held = max;
                self.store.submit(Op::TrimMessages {
                    device: key,
                    max_bytes: max,
                });
                self.stream_metrics
                    .overflows
                    .fetch_add(1, Ordering::Relaxed);
                let mut fields = Map::new();
                fields.insert("queue_max_bytes".into(), json!(max));
                self.log(
                    cid,
                    Origin::Stream,
                    id,
                    stream_event::QUEUE_OVERFLOW,
                    fields,
                );
            }
            if let Some(live) = self.live.lock().get(&id) {
                live.wake.notify_one();
            }
        }
    }

    /// Drops queued messages older than each stream's `queue_ttl` (the retention sweep).
    /// Blocking (store reads).
    pub(crate) fn sweep_streams(&self, now: f64) -> u64 {
        let streams: Vec<(u64, Cid, u64)> = {
            let st = self.state.lock();
            st.streams
                .values()
                .map(|s| (s.id, s.cid, s.queue_ttl))
                .collect()
        };
        let mut swept = 0;
        for (id, cid, ttl) in streams {
            let key = tern_store::stream_key(id);
            // What the last sweep deleted is applied by now: the count starts from the store
            // again (else a queue whose receiver is down would seem full after expiries).
            if let Ok(stats) = self.store.message_stats(key) {
                self.state.lock().queue_bytes.insert(id, stats.bytes);
            }
            if ttl == 0 {
                continue;
            }
            let cutoff = crate::message::micros(now - ttl as f64).saturating_sub(1);
            if self.oldest(key, cutoff).is_some() {
                self.store.submit(Op::DelMessages {
                    device: key,
                    from: i64::MIN,
                    to: cutoff,
                });
                self.stream_metrics.expiries.fetch_add(1, Ordering::Relaxed);
                let mut fields = Map::new();
                fields.insert("queue_ttl".into(), json!(ttl));
                self.log(cid, Origin::Stream, id, stream_event::QUEUE_EXPIRED, fields);
                swept += 1;
            }
        }
        swept
    }

    /// Starts, restarts (the stream changed) and stops the delivery tasks to match the
    /// enabled streams.
    pub(crate) fn reconcile_streams(&self) {
        let wanted: HashMap<u64, Stream> = {
            let st = self.state.lock();
            st.streams
                .values()
                .filter(|s| s.enabled && s.protocol_name().is_some())
                .map(|s| (s.id, s.clone()))
                .collect()
        };
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let mut live = self.live.lock();
        live.retain(|id, l| wanted.get(id).is_some_and(|s| same_delivery(&l.stream, s)));
        for (id, s) in wanted {
            if live.contains_key(&id) {
                // Sources or bounds changed: the task keeps running.
                if let Some(l) = live.get_mut(&id) {
                    l.stream = s;
                }
                continue;
            }
            let wake = Arc::new(tokio::sync::Notify::new());
            let connected = Arc::new(AtomicBool::new(false));
            let task = if s.protocol_id == crate::stream::MQTT {
                tokio::spawn(crate::mqtt_stream::run(
                    me.clone(),
                    s.clone(),
                    wake.clone(),
                    connected.clone(),
                ))
                .abort_handle()
            } else {
                tokio::spawn(crate::http_stream::run(
                    me.clone(),
                    s.clone(),
                    wake.clone(),
                    connected.clone(),
                ))
                .abort_handle()
            };
            live.insert(
                id,
                Live {
                    stream: s,
                    wake,
                    connected,
                    task,
                },
            );
        }
    }

    /// The task that starts and stops the streams' delivery tasks until shutdown (spawn it).
    pub async fn run_streams(self: Arc<Self>) {
        let shutdown = self.broker.shutdown_token().clone();
        loop {
            self.reconcile_streams();
            tokio::select! {
                () = self.streams_changed.notified() => {}
                () = shutdown.cancelled() => {
                    self.live.lock().clear();
                    return;
                }
            }
        }
    }

    /// The oldest `limit` messages queued for stream `id`, read on the blocking pool; while
    /// there are none, waits for `wake` (a message queued after the read left a permit, so no
    /// wake-up is lost; it comes when the append is submitted and the reader sees it once
    /// applied). A failed read is logged and tried again after `retry`. `None` when the
    /// runtime is shutting down.
    pub(crate) async fn next_queued(
        self: &Arc<Self>,
        id: u64,
        limit: usize,
        wake: &tokio::sync::Notify,
        retry: std::time::Duration,
    ) -> Option<Vec<(MessageKey, Bytes)>> {
        loop {
            let gw = self.clone();
            match tokio::task::spawn_blocking(move || gw.queued(id, limit)).await {
                Ok(Ok(q)) if q.is_empty() => {
                    wake.notified().await;
                    self.settled().await;
                }
                Ok(Ok(q)) => return Some(q),
                Ok(Err(err)) => {
                    tracing::error!(stream = id, %err, "could not read the stream's queue");
                    tokio::time::sleep(retry).await;
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads up to `limit` of the oldest queued messages of stream `id`. Blocking.
    pub(crate) fn queued(
        &self,
        id: u64,
        limit: usize,
    ) -> Result<Vec<(MessageKey, Bytes)>, GwError> {
        let mut out = Vec::new();
        let range = tern_store::MessageRange {
            device: tern_store::stream_key(id),
            from: i64::MIN,
            to: i64::MAX,
            reverse: false,
        };
        self.store
            .device_messages(&range, &mut |k, json| {
                out.push((k, Bytes::copy_from_slice(json)));
                if out.len() >= limit {
                    tern_store::Visit::Stop
                } else {
                    tern_store::Visit::More
                }
            })
            .map_err(|e| GwError::Store(e.to_string()))?;
        Ok(out)
    }

    /// Removes a delivered batch of stream `id` (a range when it was the oldest run, keys
    /// otherwise) and waits until that is durable, so the next read does not see it.
    pub(crate) async fn dequeue(&self, id: u64, keys: &[MessageKey], contiguous: bool) {
        let key = tern_store::stream_key(id);
        let op = match (contiguous, keys.last()) {
            (_, None) => return,
            (true, Some(last)) => Op::DelMessages {
                device: key,
                from: i64::MIN,
                to: last.ts,
            },
            (false, _) => Op::DelMessageKeys {
                device: key,
                keys: keys.to_vec(),
            },
        };
        let ticket = self.store.submit(op);
        self.store.wait(ticket).await;
        let bytes = self.store.message_stats(key).map(|s| s.bytes).unwrap_or(0);
        self.state.lock().queue_bytes.insert(id, bytes);
        self.stream_metrics
            .delivered
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
    }
}

/// Whether a running task can keep going for `new` (what it sends and where is the same).
fn same_delivery(old: &Stream, new: &Stream) -> bool {
    old.configuration == new.configuration && old.protocol_id == new.protocol_id
}
