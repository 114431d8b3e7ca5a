//! The connections' silence deadlines: the CONNECT deadline (`mqtt.connect_timeout`) and the
//! keep alive (1.5 × the client's Keep Alive, [MQTT-3.1.2-24]), watched for all connections by
//! one task instead of a timer in each connection's task.
//!
//! A connection's deadline is one atomic in its [`Kick`](crate::session::Kick), in milliseconds
//! of [`Broker::deadline_ms`]: set when the connection is made, moved on by its driver after
//! every whole packet (a relaxed store, no timer to re-arm). Every [`WATCH_EVERY`] the watch goes
//! through the connection map and kicks the connections whose deadline passed, with
//! `KeepAliveTimeout` (v5: DISCONNECT 0x8D) or `ConnectTimeout`; the driver closes them as it
//! closes any kicked connection. So a silent client is closed between its deadline and
//! [`WATCH_EVERY`] after it. An idle connection's task holds no `Sleep` (112 bytes, and an
//! entry in tokio's timer wheel), which took its task into tokio's next allocation size
//! (README, Performance: "Issue 20, round of 2026-12-05").
//!
//! The watch starts with the first connection (inside a tokio runtime) and ends with the
//! broker's shutdown or when the broker is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::broker::Broker;

/// How often the watch looks at every connection's deadline: how late, at most, a silent
/// connection is closed.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

impl Broker {
    /// Milliseconds on the connections' deadline clock (tokio's clock, so that tests in paused
    /// time move it; zero at the broker's start).
    pub fn deadline_ms(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.deadline_epoch);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts the deadline watch once per broker, if a tokio runtime is at hand.
    pub(crate) fn watch_deadlines(self: &Arc<Self>) {
        if self.deadlines_watched.load(Ordering::Relaxed)
            || self.deadlines_watched.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.deadlines_watched.store(false, Ordering::Release);
            return;
        };
        let broker = Arc::downgrade(self);
        let shutdown = self.shutdown_token().clone();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                let now = broker.deadline_ms();
                broker.connections.kick_overdue(now);
            }
        });
    }
}
