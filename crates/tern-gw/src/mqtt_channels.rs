//! MQTT channels on tern's own broker (`configuration.broker = "internal"`,
//! docs/flespi.md#devices): the broker's publish tap (`tern_broker::tap`) copies every
//! publication of a channel's account that matches one of its `topics` into a bounded queue
//! (full: the message is dropped and counted, [`Gateway::mqtt_channel_drops`] and the broker's
//! `channel_queue_full` drops in `/metrics`); one task turns
//! each into channel messages (payload: a JSON object or array; ident from
//! `ident_topic_level` or `ident_field`) and hands them to [`Gateway::channel_messages`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;
use serde_json::Value;
use tern_broker::{Cid, Message, PublishTap};
use tokio::sync::mpsc;

use crate::Gateway;

/// Publications waiting for the channel task; more are dropped (and counted).
pub const QUEUE: usize = 4096;

/// One internal MQTT channel's subscription: its account and filters.
#[derive(Debug, Clone)]
pub(crate) struct TapSub {
    pub channel: u64,
    pub cid: Cid,
    pub filters: Vec<String>,
}

/// What the tap and the gateway share.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    pub subs: RwLock<Vec<TapSub>>,
    /// How many `subs` there are: the tap runs on every publisher's path, and without an
    /// internal MQTT channel (the usual case) it returns after one relaxed load, without
    /// touching the lock's shared counter.
    pub count: AtomicUsize,
    pub dropped: AtomicU64,
}

#[derive(Debug)]
struct Tap {
    taps: Arc<Taps>,
    tx: mpsc::Sender<(u64, Arc<Message>)>,
}

impl PublishTap for Tap {
    fn published(&self, msg: &Arc<Message>) -> u64 {
        if self.taps.count.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let mut dropped = 0;
        let subs = self.taps.subs.read();
        for s in subs.iter() {
            let wanted =
                s.cid == msg.cid && s.filters.iter().any(|f| tern_topic::matches(f, &msg.topic));
            // Full: dropped (counted); the publisher never waits for a channel.
            if wanted && self.tx.try_send((s.channel, msg.clone())).is_err() {
                self.taps.dropped.fetch_add(1, Ordering::Relaxed);
                dropped += 1;
            }
        }
        dropped
    }
}

impl Gateway {
    /// Recomputes the tap's subscriptions from the channels (after any channel change).
    pub(crate) fn refresh_taps(&self, channels: &std::collections::BTreeMap<u64, crate::Channel>) {
        let subs = channels
            .values()
            .filter(|c| c.enabled)
            .filter_map(|c| {
                c.internal_topics().map(|filters| TapSub {
                    channel: c.id,
                    cid: c.cid,
                    filters,
                })
            })
            .collect();
        let mut slot = self.taps.subs.write();
        *slot = subs;
        self.taps.count.store(slot.len(), Ordering::Relaxed);
        self.broker.set_tap_active(!slot.is_empty());
    }

    /// Publications an internal MQTT channel dropped because its queue was full.
    pub fn mqtt_channel_drops(&self) -> u64 {
        self.taps.dropped.load(Ordering::Relaxed)
    }

    /// Installs the publish tap now, and returns the task that feeds the internal MQTT
    /// channels and starts and stops the external ones' clients until shutdown (spawn it).
    pub fn run_mqtt_channels(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        self.broker.set_publish_tap(Arc::new(Tap {
            taps: self.taps.clone(),
            tx,
        }));
        let gw = self.clone();
        async move {
            gw.reconcile_external();
            let shutdown = gw.broker.shutdown_token().clone();
            loop {
                tokio::select! {
                    got = rx.recv() => match got {
                        Some((channel, msg)) => gw.mqtt_message(channel, &msg),
                        None => return,
                    },
                    () = gw.external_changed.notified() => gw.reconcile_external(),
                    _ = shutdown.cancelled() => {
                        // Dropping the handles stops the external clients.
                        gw.external.lock().clear();
                        return;
                    }
                }
            }
        }
    }

    /// One publication into channel `channel`.
    fn mqtt_message(&self, channel: u64, msg: &Message) {
        self.mqtt_payload(channel, &msg.topic, &msg.payload, "mqtt:internal");
    }

    /// One MQTT message (internal or external) into channel `channel`: a JSON object or array;
    /// the ident from `ident_topic_level` (written into `ident_field`) or `ident_field`.
    pub(crate) fn mqtt_payload(&self, channel: u64, topic: &str, payload: &[u8], peer: &str) {
        let Some(c) = self.channel(channel) else {
            return;
        };
        let messages = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Array(list)) => list,
            Ok(v @ Value::Object(_)) => vec![v],
            _ => {
                tracing::debug!(channel, topic, "not a JSON object or array; skipped");
                return;
            }
        };
        let messages = match c.ident_topic_level() {
            None => messages,
            Some(level) => {
                let Some(ident) = topic.split('/').nth(level) else {
                    tracing::debug!(channel, topic, level, "no ident level; skipped");
                    return;
                };
                let field = c.ident_field();
                messages
                    .into_iter()
                    .map(|mut m| {
                        if let Value::Object(obj) = &mut m {
                            obj.insert(field.clone(), Value::String(ident.to_string()));
                        }
                        m
                    })
                    .collect()
            }
        };
        if let Err(err) = self.channel_messages(channel, messages, peer) {
            tracing::debug!(channel, topic, %err, "channel messages refused");
        }
    }
}
