//! The devices layer's periodic work (docs/flespi.md#devices), off the ingest path: retention
//! (messages older than a device's `messages_ttl` and its oldest beyond `messages_rotate` KB
//! go) and the activity check (a device silent for `inactivity_timeout` is `disconnected`).
//! Both take `now`, so tests run them without sleeping.

use std::sync::Arc;

use std::time::Duration;

use tern_broker::topics::device_event;
use tern_store::{MessageRange, Op, Visit};

use crate::{Gateway, Swept, message, publish};

/// How often devices are checked for falling silent (`disconnected`).
pub const ACTIVITY_EVERY: Duration = Duration::from_secs(5);

impl Gateway {
    /// One retention pass at `now` (unix seconds): for each device, messages older than
    /// `messages_ttl` go, then the oldest beyond `messages_rotate` KB. Checks cost a point
    /// read per device (its oldest message, its counters); ops are submitted only where
    /// something goes. Blocking (store reads).
    pub fn sweep(&self, now: f64) -> Swept {
        // Devices, then channel buffers (their keys in the message table; `messages_ttl` only).
        let devices: Vec<(u64, u64, u64)> = {
            let st = self.state.lock();
            st.devices
                .values()
                .map(|d| (d.id, d.messages_ttl, d.messages_rotate))
                .chain(
                    st.channels
                        .values()
                        .map(|c| (tern_store::channel_key(c.id), c.messages_ttl, 0)),
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
        if swept != Swept::default() {
            tracing::info!(
                expired = swept.expired,
                rotated = swept.rotated,
                "device message retention"
            );
        }
        swept
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
                publish::log(
                    &self.broker,
                    d.cid,
                    *id,
                    device_event::DISCONNECTED,
                    None,
                    None,
                );
            }
        }
        silent.len()
    }

    /// Runs [`Gateway::retention_pass`] every `retention_interval` and [`Gateway::check_activity`]
    /// every [`ACTIVITY_EVERY`] until the broker shuts down.
    pub async fn run_retention(self: Arc<Self>) {
        let shutdown = self.broker.shutdown_token().clone();
        let mut sweep = tokio::time::interval(self.options.retention_interval);
        let mut activity = tokio::time::interval(ACTIVITY_EVERY);
        sweep.tick().await;
        loop {
            tokio::select! {
                _ = sweep.tick() => {
                    self.retention_pass(self.now()).await;
                }
                _ = activity.tick() => {
                    self.check_activity(self.now());
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
