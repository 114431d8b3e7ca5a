//! Channel operations (docs/flespi.md#devices): create, change, delete, and the pipeline every
//! channel message goes through, whatever brought it ([`Gateway::channel_messages`]).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tern_broker::Cid;
use tern_store::Op;

use crate::channel::{Channel, ChannelChanges, ident_of};
use crate::{Gateway, GwError, History, MessageQuery, message, publish, telemetry};

/// What [`Gateway::channel_messages`] did with a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Messages kept (published, and handed to their device when there is one).
    pub kept: usize,
    /// The messages dropped (`skip_invalid`), by index, with the reason.
    pub dropped: Vec<(usize, String)>,
}

impl Gateway {
    fn put_channel(&self, c: &Channel) {
        match serde_json::to_vec(c) {
            Ok(json) => {
                self.write(Op::PutChannel {
                    id: c.id,
                    json: Bytes::from(json),
                });
            }
            Err(err) => tracing::error!(id = c.id, %err, "could not serialize a channel"),
        }
    }

    /// A channel's item: an enabled internal MQTT channel counts its subscription as one
    /// connection; HTTP channels hold none; the buffer is not kept yet.
    pub(crate) fn channel_item_of(&self, c: &Channel) -> Value {
        let connections = match self.trackers.connections_count(c.id) {
            Some(n) => n,
            None => u64::from(
                (c.enabled && c.internal_topics().is_some())
                    || self.external_connected.lock().contains(&c.id),
            ),
        };
        let size = self
            .store
            .message_stats(tern_store::channel_key(c.id))
            .map(|s| s.bytes)
            .unwrap_or(0);
        c.item(connections, size, &self.options.trackers.host(&c.base))
    }

    /// Creates a channel (checked by `ChannelInput::into_channel`, its account in the caller's
    /// scope); fails when the `channels` quota is used up; a Teltonika channel gets its port and
    /// listener here (a port in use: refused).
    pub fn create_channel(&self, mut c: Channel) -> Result<Value, GwError> {
        c.check_outbound(self.options.outbound)?;
        let mut st = self.state.lock();
        self.check_count(&st, c.cid, crate::quota::Counted::Channels)?;
        c.id = self.take_id(&mut st, crate::GwKind::Channel)?;
        self.sync_tracker(&st, &mut c)?;
        self.count_in(&mut st, crate::quota::Counted::Channels, c.id, c.cid);
        self.put_channel(&c);
        let item = self.channel_item_of(&c);
        publish::channel_state(&self.broker, c.cid, c.id, None, &item);
        st.channels.insert(c.id, c);
        self.refresh_taps(&st.channels);
        self.external_changed.notify_one();
        Ok(item)
    }

    /// The channel `id`.
    pub fn channel(&self, id: u64) -> Option<Channel> {
        self.state.lock().channels.get(&id).cloned()
    }

    /// The items of the channels of the accounts in `scope`.
    pub fn channels(&self, scope: &[Cid]) -> Vec<Value> {
        let st = self.state.lock();
        st.channels
            .values()
            .filter(|c| scope.contains(&c.cid))
            .map(|c| self.channel_item_of(c))
            .collect()
    }

    pub fn update_channel(
        &self,
        id: u64,
        changes: &ChannelChanges,
        merge: bool,
    ) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let old = st.channels.get(&id).ok_or(GwError::NotFound {
            what: "channel",
            id,
        })?;
        let mut new = changes.apply(old, merge)?;
        new.check_outbound(self.options.outbound)?;
        let old_item = self.channel_item_of(old);
        self.sync_tracker(&st, &mut new)?;
        let item = self.channel_item_of(&new);
        self.put_channel(&new);
        publish::channel_state(&self.broker, new.cid, id, Some(&old_item), &item);
        st.channels.insert(id, new);
        self.refresh_taps(&st.channels);
        self.external_changed.notify_one();
        Ok(item)
    }

    pub fn delete_channel(&self, id: u64) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        self.drop_channel(&mut st, id, true)
            .ok_or(GwError::NotFound {
                what: "channel",
                id,
            })
    }

    /// Takes channel `id` out (quotas, listener, taps, external client, store record;
    /// `shared`: a delete made here, handed to the cluster) and publishes its deletion; its
    /// last item, or `None` when there is no such channel.
    pub(crate) fn drop_channel(
        &self,
        st: &mut crate::State,
        id: u64,
        shared: bool,
    ) -> Option<Value> {
        let c = st.channels.remove(&id)?;
        self.count_out(st, crate::quota::Counted::Channels, id);
        self.forget_key(st, tern_store::channel_key(id));
        self.submit(Op::DelChannel { id }, shared);
        self.stop_tracker(id);
        self.refresh_taps(&st.channels);
        self.external_changed.notify_one();
        let item = self.channel_item_of(&c);
        publish::channel_deleted(&self.broker, c.cid, id, &item);
        Some(item)
    }

    /// Publishes channel `id`'s state after its connection changed (`was`: the item's
    /// `connections_count` before was 1).
    pub(crate) fn republish_channel(&self, id: u64, was: bool) {
        let st = self.state.lock();
        if let Some(c) = st.channels.get(&id) {
            let item = self.channel_item_of(c);
            let mut old = item.clone();
            old["connections_count"] = json!(u64::from(was));
            publish::channel_state(&self.broker, c.cid, id, Some(&old), &item);
        }
    }

    /// Deletes the channels of deleted accounts.
    pub(crate) fn channels_of_accounts_deleted(&self, gone: &[Cid]) {
        let ids: Vec<u64> = {
            let st = self.state.lock();
            st.channels
                .values()
                .filter(|c| gone.contains(&c.cid))
                .map(|c| c.id)
                .collect()
        };
        for id in ids {
            let _ = self.delete_channel(id);
        }
    }

    /// Publishes every channel's state topics (at start).
    pub(crate) fn publish_channels(&self) {
        let st = self.state.lock();
        for c in st.channels.values() {
            publish::channel_state(&self.broker, c.cid, c.id, None, &self.channel_item_of(c));
        }
    }

    /// Reads the buffers of `channels` (`from`/`to` on `server.timestamp`), as device history.
    /// Blocking (store reads).
    pub fn channel_history(&self, channels: &[u64], q: &MessageQuery) -> Result<History, GwError> {
        let keys: Vec<u64> = channels
            .iter()
            .map(|c| tern_store::channel_key(*c))
            .collect();
        self.messages(&keys, q)
    }

    /// Deletes from channel `id`'s buffer (`from`/`to` on `server.timestamp`, `filter`).
    /// Blocking unless the whole buffer goes.
    pub fn delete_channel_messages(&self, id: u64, q: &MessageQuery) -> Result<(), GwError> {
        if !self.state.lock().channels.contains_key(&id) {
            return Err(GwError::NotFound {
                what: "channel",
                id,
            });
        }
        self.delete_range(tern_store::channel_key(id), q)
    }

    /// Waits until everything submitted to the store so far is durable; false when the store
    /// is failing (nothing may be acknowledged then).
    pub async fn settled(&self) -> bool {
        let ticket = self.store.submitted();
        self.store.wait_or_failing(ticket).await
    }

    /// The pipeline of every channel message (docs/flespi.md#devices), for HTTP and MQTT
    /// channels alike: each message is validated (`ident` per `ident_field`, `timestamp` per
    /// `timestamp_field`, default now); with `skip_invalid` false one bad message refuses the
    /// batch (nothing kept), with true the bad ones are dropped and named. The kept ones get
    /// `server.timestamp`, `channel.id`, `protocol.id` and `peer`, are published on
    /// `flespi/message/gw/channels/<id>/<ident>`, and go to the enabled device with that ident
    /// and the channel's protocol in the channel's account tree, if there is one (stored,
    /// published, telemetry, `last_active`, as a posted message). The batch is refused whole
    /// when what it stores (buffer and devices) would take an account past `messages_bytes`.
    /// The caller acknowledges only after [`Gateway::settled`].
    pub fn channel_messages(
        &self,
        channel: u64,
        messages: Vec<Value>,
        peer: &str,
    ) -> Result<Ingested, GwError> {
        let route = crate::metrics::Route::of_channel(
            self.state
                .lock()
                .channels
                .get(&channel)
                .map_or(0, |c| c.protocol_id),
        );
        let n = messages.len();
        let done = self.channel_pipeline(channel, messages, peer);
        match &done {
            Ok(out) => {
                self.metrics.count_ingested(route, out.kept);
                self.metrics
                    .count_refused(crate::metrics::Refusal::Invalid, out.dropped.len());
            }
            Err(_) => self.metrics.count_call(route, n, &done),
        }
        done
    }

    fn channel_pipeline(
        &self,
        channel: u64,
        messages: Vec<Value>,
        peer: &str,
    ) -> Result<Ingested, GwError> {
        let c = self.channel(channel).ok_or(GwError::NotFound {
            what: "channel",
            id: channel,
        })?;
        if !c.enabled {
            return Err(GwError::Invalid(format!("channel {channel} is disabled")));
        }
        if messages.len() > self.options.max_messages_per_post {
            return Err(GwError::Invalid(format!(
                "at most {} messages per call",
                self.options.max_messages_per_post
            )));
        }
        let now = self.now();
        let (ident_field, ts_field) = (c.ident_field(), c.timestamp_field());
        let mut out = Ingested::default();
        let mut kept: Vec<(String, Map<String, Value>)> = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            match validate(m, &ident_field, &ts_field, now) {
                Ok((ident, mut obj)) => {
                    obj.insert("server.timestamp".into(), json!(now));
                    obj.insert("channel.id".into(), json!(c.id));
                    obj.insert("protocol.id".into(), json!(c.protocol_id));
                    obj.insert("peer".into(), json!(peer));
                    kept.push((ident, obj));
                }
                Err(reason) if c.skip_invalid() => out.dropped.push((i, reason)),
                Err(reason) => {
                    return Err(GwError::Invalid(format!("message {i}: {reason}")));
                }
            }
        }
        // Per device, in arrival order.
        let mut per_device: Vec<(u64, Vec<Map<String, Value>>)> = Vec::new();
        {
            let mut st = self.state.lock();
            let root = self.root(c.cid);
            let jsons: Vec<Bytes> = kept
                .iter()
                .map(|(_, obj)| Bytes::from(serde_json::to_vec(obj).unwrap_or_default()))
                .collect();
            self.check_batch_bytes(&st, &c, &kept, &jsons)?;
            // The device of each message (enabled, this protocol, this account tree).
            let devices: Vec<Option<u64>> = kept
                .iter()
                .map(|(ident, _)| {
                    self.device_by_ident(&st, c.protocol_id, ident, root)
                        .filter(|d| d.enabled)
                        .map(|d| d.id)
                })
                .collect();
            // The channel buffer, keyed by `server.timestamp`: every message with
            // `messages_ttl`; without it, a channel whose records are ACKed once kept keeps
            // those with no device (docs/teltonika.md#channel).
            let buffered: Vec<Bytes> = jsons
                .iter()
                .zip(&devices)
                .filter(|(_, d)| c.messages_ttl > 0 || (d.is_none() && c.buffer_ttl() > 0))
                .map(|(json, _)| json.clone())
                .collect();
            if !buffered.is_empty() {
                let ts = message::micros(now);
                let bytes = buffered.iter().map(|j| j.len() as u64).sum();
                let count = buffered.len() as u64;
                let messages = buffered
                    .into_iter()
                    .map(|json| {
                        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                        (tern_store::MessageKey { ts, seq }, json)
                    })
                    .collect();
                let ticket = self.write(Op::AppendMessages {
                    device: tern_store::channel_key(c.id),
                    messages,
                });
                let key = tern_store::channel_key(c.id);
                self.note_append(&mut st, key, c.cid, bytes, count, ticket);
            }
            // The streams that take this channel's messages; one that also takes a message's
            // device gets it from the device path (with its device fields), once.
            if !st.streams.is_empty() {
                let for_streams: Vec<(&Map<String, Value>, &Bytes)> =
                    kept.iter().map(|(_, obj)| obj).zip(&jsons).collect();
                self.queue_for_streams(
                    &mut st,
                    crate::streams::Source::Channel(c.id),
                    &for_streams,
                    &|s, i| devices[i].is_some_and(|d| s.devices.contains(&d)),
                );
            }
            out.kept = kept.len();
            for (((ident, obj), json), device) in kept.into_iter().zip(jsons).zip(devices) {
                publish::channel_message(&self.broker, c.cid, c.id, &ident, json);
                if let Some(id) = device {
                    match per_device.iter_mut().find(|(d, _)| *d == id) {
                        Some((_, list)) => list.push(obj),
                        None => per_device.push((id, vec![obj])),
                    }
                }
            }
        }
        for (id, list) in per_device {
            self.ingest_checked(id, list)?;
        }
        Ok(out)
    }
}

/// One channel message checked: its ident and the object with `ident` and `timestamp` set.
fn validate(
    m: Value,
    ident_field: &str,
    ts_field: &str,
    now: f64,
) -> Result<(String, Map<String, Value>), String> {
    let Value::Object(mut obj) = m else {
        return Err("a message must be a JSON object".into());
    };
    let ident = ident_of(&obj, ident_field)?;
    let ts = match obj.get(ts_field) {
        None | Some(Value::Null) => now,
        Some(v) => message::timestamp_of(v).map_err(|e| format!("`{ts_field}`: {e}"))?,
    };
    obj.insert("ident".into(), json!(ident));
    obj.insert("timestamp".into(), telemetry::number(ts));
    Ok((ident, obj))
}
