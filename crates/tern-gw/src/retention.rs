//! The devices layer's periodic work (docs/flespi.md#devices), off the ingest path: retention
//! (messages older than a device's `messages_ttl` and its oldest beyond `messages_rotate` KB
//! go; entity log records older than `logs_ttl`, and an account's oldest past `logs_max_bytes`,
//! go) and the activity check (a device silent for `inactivity_timeout` is `disconnected`).
//! Both take `now`, so tests run them without sleeping.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tern_broker::Cid;
use tern_broker::topics::device_event;
use tern_store::{MessageRange, Op, Visit};

use crate::logs::Origin;
use crate::{Gateway, Swept, message, publish};

/// How often devices are checked for falling silent (`disconnected`).
pub const ACTIVITY_EVERY: Duration = Duration::from_secs(5);

impl Gateway {
    /// One retention pass at `now` (unix seconds): for each device, messages older than
    /// `messages_ttl` go, then the oldest beyond `messages_rotate` KB. Checks cost a point
    /// read per device (its oldest message, its counters); ops are submitted only where
    /// something goes. Blocking (store reads).
    pub fn sweep(&self, now: f64) -> Swept {
        self.sweep_commands(now);
        // Devices, then channel buffers (their keys in the message table; `messages_ttl` only).
        let devices: Vec<(u64, u64, u64)> = {
            let st = self.state.lock();
            st.devices
                .values()
                .map(|d| (d.id, d.messages_ttl, d.messages_rotate))
                .chain(
                    st.channels
                        .values()
                        .map(|c| (tern_store::channel_key(c.id), c.buffer_ttl(), 0)),
                )
                .collect()
        };
        let mut swept = Swept::default();
        for (id, ttl, rotate) in devices {
            if ttl > 0 {
                let cutoff = message::micros(now - ttl as f64).saturating_sub(1);
                let mut oldest = None;
                let range = MessageRange {
                    device: id,
                    from: i64::MIN,
                    to: cutoff,
                    reverse: false,
                };
                let read = self.store.device_messages(&range, &mut |k, _| {
                    oldest = Some(k.ts);
                    Visit::Stop
                });
                if read.is_ok() && oldest.is_some() {
                    self.store.submit(Op::DelMessages {
                        device: id,
                        from: i64::MIN,
                        to: cutoff,
                    });
                    swept.expired += 1;
                }
            }
            if rotate > 0 {
                let max_bytes = rotate.saturating_mul(1024);
                if self
                    .store
                    .message_stats(id)
                    .is_ok_and(|s| s.bytes > max_bytes)
                {
                    self.store.submit(Op::TrimMessages {
                        device: id,
                        max_bytes,
                    });
                    swept.rotated += 1;
                }
            }
        }
        swept.logs = self.sweep_logs(now);
        swept.streams = self.sweep_streams(now);
        if swept != Swept::default() {
            tracing::info!(
                expired = swept.expired,
                rotated = swept.rotated,
                logs = swept.logs,
                "device message retention"
            );
        }
        swept
    }

    /// Log retention at `now`: each device's, channel's and stream's records, and each
    /// account's REST call and MQTT sessions records, older than `logs_ttl` go, then, per
    /// account past `logs_max_bytes`, the oldest records of all its logs together.
    /// Returns how many entities lost records.
    fn sweep_logs(&self, now: f64) -> u64 {
        let keys: Vec<(Cid, u64)> = {
            let st = self.state.lock();
            st.devices
                .values()
                .map(|d| (d.cid, Origin::Device.key(d.id)))
                .chain(
                    st.channels
                        .values()
                        .map(|c| (c.cid, Origin::Channel.key(c.id))),
                )
                .chain(
                    st.streams
                        .values()
                        .map(|s| (s.cid, Origin::Stream.key(s.id))),
                )
                .collect()
        };
        // Every account's REST call log and MQTT sessions log (`account_logs.rs`).
        let keys: Vec<(Cid, u64)> = keys
            .into_iter()
            .chain(self.directory.accounts().into_iter().flat_map(|a| {
                [
                    (a.id, Origin::Customer.key(a.id)),
                    (a.id, Origin::MqttSessions.key(a.id)),
                ]
            }))
            .collect();
        let ttl = self.options.logs_ttl;
        let mut touched = HashSet::new();
        if ttl > 0 {
            let cutoff = message::micros(now - ttl as f64).saturating_sub(1);
            for (_, key) in &keys {
                if self.oldest(*key, cutoff).is_some() {
                    self.store.submit(Op::DelMessages {
                        device: *key,
                        from: i64::MIN,
                        to: cutoff,
                    });
                    touched.insert(*key);
                }
            }
        }
        let max = self.options.logs_max_bytes;
        if max > 0 {
            let mut accounts: HashMap<Cid, Vec<u64>> = HashMap::new();
            for (cid, key) in keys {
                accounts.entry(cid).or_default().push(key);
            }
            for keys in accounts.values() {
                touched.extend(self.cap_logs(keys, max));
            }
        }
        touched.len() as u64
    }

    /// The timestamp of the oldest record under `key` at or before `to`.
    pub(crate) fn oldest(&self, key: u64, to: i64) -> Option<i64> {
        let mut oldest = None;
        let range = MessageRange {
            device: key,
            from: i64::MIN,
            to,
            reverse: false,
        };
        let read = self.store.device_messages(&range, &mut |k, _| {
            oldest = Some(k.ts);
            Visit::Stop
        });
        read.ok().and(oldest)
    }

    /// Deletes the oldest records of the logs `keys` (one account's) until at most `max`
    /// bytes remain; returns the keys that lost records. Reads each log newest first, no
    /// further than `max` bytes (no log keeps more), so memory stays bounded by the cap.
    fn cap_logs(&self, keys: &[u64], max: u64) -> Vec<u64> {
        let total: u64 = keys
            .iter()
            .map(|k| self.store.message_stats(*k).map_or(0, |s| s.bytes))
            .sum();
        if total <= max {
            return Vec::new();
        }
        // The newest records of every log, (ts, seq, bytes), newest first.
        let mut newest: Vec<(i64, u64, u64)> = Vec::new();
        for key in keys {
            let mut bytes = 0u64;
            let range = MessageRange {
                device: *key,
                from: i64::MIN,
                to: i64::MAX,
                reverse: true,
            };
            let read = self.store.device_messages(&range, &mut |k, json| {
                bytes += json.len() as u64;
                newest.push((k.ts, k.seq, json.len() as u64));
                if bytes > max {
                    Visit::Stop
                } else {
                    Visit::More
                }
            });
            if read.is_err() {
                return Vec::new();
            }
        }
        newest.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = 0u64;
        let Some(cutoff) = newest.iter().find_map(|(ts, _, len)| {
            kept += len;
            (kept > max).then_some(*ts)
        }) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for key in keys {
            if self.oldest(*key, cutoff).is_some() {
                self.store.submit(Op::DelMessages {
                    device: *key,
                    from: i64::MIN,
                    to: cutoff,
                });
                gone.push(*key);
            }
        }
        gone
    }

    /// Devices that fell silent at `now` (unix seconds): no message for
    /// `inactivity_timeout`. Each gets its `connected` property set to false (state topics) and
    /// a `disconnected` log record. Returns how many.
    pub fn check_activity(&self, now: f64) -> usize {
        let mut st = self.state.lock();
        let now = now.max(0.0) as u64;
        let silent: Vec<u64> = st
            .online
            .iter()
            .copied()
            .filter(|id| {
                st.devices.get(id).is_none_or(|d| {
                    d.last_active
                        .is_none_or(|t| now.saturating_sub(t) >= self.options.inactivity_timeout)
                })
            })
            .collect();
        for id in &silent {
            st.online.remove(id);
            if let Some(d) = st.devices.get(id) {
                let size = self.messages_size(*id);
                let (was, is) = (d.item(true, size), d.item(false, size));
                publish::state(&self.broker, d.cid, *id, Some(&was), &is);
                self.log_device(d.cid, *id, device_event::DISCONNECTED, None, None);
            }
        }
        silent.len()
    }

    /// Runs [`Gateway::retention_pass`] every `retention_interval`, [`Gateway::check_activity`]
    /// every [`ACTIVITY_EVERY`] and [`Gateway::flush_telemetry`] every second (and once more at
    /// shutdown) until the broker shuts down.
    pub async fn run_retention(self: Arc<Self>) {
        let shutdown = self.broker.shutdown_token().clone();
        let mut sweep = tokio::time::interval(self.options.retention_interval);
        let mut activity = tokio::time::interval(ACTIVITY_EVERY);
        let mut telemetry = tokio::time::interval(crate::telemetry_ops::FLUSH_EVERY);
        telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        loop {
            tokio::select! {
                _ = sweep.tick() => {
                    self.retention_pass(self.now()).await;
                }
                _ = activity.tick() => {
                    self.check_activity(self.now());
                }
                _ = telemetry.tick() => self.flush_telemetry().await,
                _ = shutdown.cancelled() => {
                    self.flush_telemetry().await;
                    return;
                }
            }
        }
    }
}
