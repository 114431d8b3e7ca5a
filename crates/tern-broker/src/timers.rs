//! Deadlines of disconnected sessions: will delay and session expiry.
//!
//! A timer names the session and the disconnect it was set for (`disconnected_at`); when it
//! fires, it only acts if the session is still disconnected from that same disconnect, so a
//! reconnect cancels it without bookkeeping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::broker::Broker;
use crate::message::{Micros, wall_micros};
use crate::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// Publish the will (Will Delay Interval elapsed).
    Will,
    /// End the session (Session Expiry Interval elapsed).
    Expiry,
}

#[derive(Debug)]
struct Timer {
    kind: TimerKind,
    session: Arc<Session>,
    disconnected_at: Micros,
}

/// The broker's timer queue, ordered by deadline.
#[derive(Debug, Default)]
pub struct Timers {
    queue: Mutex<BTreeMap<(Micros, u64), Timer>>,
    seq: std::sync::atomic::AtomicU64,
    notify: Notify,
}

impl Timers {
    pub(crate) fn schedule(
        &self,
        at: Micros,
        kind: TimerKind,
        session: Arc<Session>,
        disconnected_at: Micros,
    ) {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut q = self.queue.lock();
        let first = q.keys().next().is_none_or(|(t, _)| at < *t);
        q.insert(
            (at, seq),
            Timer {
                kind,
                session,
                disconnected_at,
            },
        );
        drop(q);
        if first {
            self.notify.notify_one();
        }
    }

    fn next_deadline(&self) -> Option<Micros> {
        self.queue.lock().keys().next().map(|(t, _)| *t)
    }

    fn pop_due(&self, now: Micros) -> Vec<Timer> {
        let mut q = self.queue.lock();
        let later = q.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut *q, later);
        due.into_values().collect()
    }

    /// Number of pending timers (for tests and metrics).
    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often expired retained messages are swept.
const RETAINED_SWEEP: Duration = Duration::from_secs(30);

impl Broker {
    /// Runs the timers until the broker shuts down. Spawn once per broker.
    pub async fn run_timers(self: Arc<Self>) {
        let mut last_sweep = wall_micros();
        loop {
            let now = wall_micros();
            self.fire_due(now);
            if now.saturating_sub(last_sweep) >= RETAINED_SWEEP.as_micros() as u64 {
                self.sweep_retained(now);
                last_sweep = now;
            }
            let wait = match self.timers.next_deadline() {
                Some(at) => Duration::from_micros(at.saturating_sub(now)).min(RETAINED_SWEEP),
                None => RETAINED_SWEEP,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.timers.notify.notified() => {}
                _ = self.shutdown_token().cancelled() => return,
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn fire_due(&self, now: Micros) {
        for timer in self.timers.pop_due(now) {
            match timer.kind {
                TimerKind::Will => self.fire_will(&timer.session, timer.disconnected_at),
                TimerKind::Expiry => self.fire_expiry(&timer.session, timer.disconnected_at),
            }
        }
    }

    fn fire_will(&self, session: &Arc<Session>, disconnected_at: Micros) {
        let will = {
            let mut st = session.lock();
            if st.conn.is_some() || st.disconnected_at != Some(disconnected_at) {
                return;
            }
            let will = st.will.take();
            if will.is_some() && st.stored {
                // The stored record must not carry a will that was already sent.
                self.persist_session(session, &mut st);
            }
            will
        };
        if let Some(will) = will {
            self.publish_will(will);
        }
    }

    fn fire_expiry(&self, session: &Arc<Session>, disconnected_at: Micros) {
        let will = {
            let mut st = session.lock();
            if st.conn.is_some() || st.disconnected_at != Some(disconnected_at) || st.ended {
                return;
            }
            st.will.take()
        };
        tracing::debug!(client_id = %session.key.client_id, cid = session.key.cid, "session expired");
        self.end_session(session);
        // The will is sent when the session ends, if its delay has not passed yet.
        if let Some(will) = will {
            self.publish_will(will);
        }
        self.session_event(session, "expired", None);
    }
}
