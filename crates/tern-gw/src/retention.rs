//! Retention (docs/flespi.md#devices): messages older than a device's `messages_ttl` and its
//! oldest beyond `messages_rotate` KB go, in a periodic sweep off the ingest path.

use std::sync::Arc;

use tern_store::{MessageRange, Op, Visit};

use crate::{Gateway, Swept, message};

impl Gateway {
    /// One retention pass at `now` (unix seconds): for each device, messages older than
    /// `messages_ttl` go, then the oldest beyond `messages_rotate` KB. Checks cost a point
    /// read per device (its oldest message, its counters); ops are submitted only where
    /// something goes. Blocking (store reads).
    pub fn sweep(&self, now: f64) -> Swept {
        let devices: Vec<(u64, u64, u64)> = {
            let st = self.state.lock();
            st.devices
                .values()
                .map(|d| (d.id, d.messages_ttl, d.messages_rotate))
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

    /// Runs [`Gateway::sweep`] every `retention_interval` until the broker shuts down.
    pub async fn run_retention(self: Arc<Self>) {
        let shutdown = self.broker.shutdown_token().clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.retention_interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let gw = self.clone();
            let now = self.now();
            if let Err(err) = tokio::task::spawn_blocking(move || gw.sweep(now)).await {
                tracing::error!(%err, "the retention sweep failed");
            }
        }
    }
}
