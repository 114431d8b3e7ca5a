//! The broker's deadlines: will delay and session expiry of disconnected sessions, the sweep
//! of expired retained messages, and the end of connections whose token expired.
//!
//! A timer names the session and the disconnect it was set for (`disconnected_at`); when it
//! fires, it only acts if the session is still disconnected from that same disconnect, so a
//! reconnect cancels it without bookkeeping.
//!
//! Everything here is measured against the broker's [`Clock`](crate::Clock) and acted on by
//! [`Broker::tick`]: in production [`Broker::run_timers`] calls it when the next deadline
//! comes (tokio time), in tests [`Broker::advance`] moves a manual clock and calls it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::broker::Broker;
use crate::message::Micros;
use crate::session::Session;
use crate::timer_queue::TimerKind;
use crate::topics::session_event;

/// How often expired retained messages are swept.
const RETAINED_SWEEP: Duration = Duration::from_secs(30);

/// How often token `expire` is checked against the clock.
const TOKEN_CHECK: Duration = Duration::from_secs(1);

impl Broker {
    /// Runs the timers on tokio time until the broker shuts down. Spawn once per broker. With
    /// a manual clock it returns at once: [`Broker::advance`] drives the timers then.
    pub async fn run_timers(self: Arc<Self>) {
        if self.clock.is_manual() {
            return;
        }
        loop {
            let now = self.clock.now();
            self.tick(now);
            let wait = match self.timers.next_deadline() {
                Some(at) => Duration::from_micros(at.saturating_sub(now)).min(TOKEN_CHECK),
                None => TOKEN_CHECK,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.timers.notify.notified() => {}
                _ = self.shutdown_token().cancelled() => return,
            }
        }
    }

    /// Moves a manual clock forward by `by` and does what fell due meanwhile, in deadline
    /// order: wills and session ends at their own times, the retained sweep and the token check
    /// at the new time. Returns the new time. For tests in virtual time; on the wall clock it
    /// only does what is due now.
    pub fn advance(&self, by: Duration) -> Micros {
        if !self.clock.is_manual() {
            let now = self.clock.now();
            self.tick(now);
            return now;
        }
        let target = self.clock.now().saturating_add(by.as_micros() as u64);
        // Timers fire at their deadline, so that what they publish is stamped then.
        while let Some(at) = self.timers.next_deadline().filter(|&at| at <= target) {
            let now = self.clock.now();
            if at > now {
                self.clock.advance(Duration::from_micros(at - now));
            }
            self.fire_due(self.clock.now());
        }
        let now = self.clock.now();
        if target > now {
            self.clock.advance(Duration::from_micros(target - now));
        }
        let now = self.clock.now();
        self.tick(now);
        now
    }

    /// Does what is due at `now`: fires the timers, sweeps expired retained messages every
    /// 30 s, ends the connections of tokens that expired (checked once a second).
    pub fn tick(&self, now: Micros) {
        self.fire_due(now);
        if due(&self.timers.last_sweep, now, RETAINED_SWEEP) {
            self.sweep_retained(now);
        }
        // Token `expire` is whole seconds: checked once in each second the timers run.
        let second = now / 1_000_000;
        if self.timers.last_token_check.swap(second, Ordering::AcqRel) != second {
            self.expire_tokens(now);
        }
    }

    /// Ends the live connections of tokens whose `expire` (unix seconds) has passed, as a
    /// refused CONNECT would for a new one: DISCONNECT 0x87 for v5 clients. Each
    /// `(token, expire)` is acted on once.
    fn expire_tokens(&self, now: Micros) {
        let expired: HashSet<(u64, u64)> = self
            .auth
            .expired_tokens(now / 1_000_000)
            .into_iter()
            .collect();
        let new: HashSet<u64> = {
            let mut handled = self.timers.expired_tokens.lock();
            handled.retain(|k| expired.contains(k));
            let new = expired
                .iter()
                .filter(|k| !handled.contains(k))
                .map(|&(id, _)| id)
                .collect();
            handled.extend(expired);
            new
        };
        if new.is_empty() {
            return;
        }
        let n = self.revoke_tokens(&new);
        if n > 0 {
            tracing::info!(
                tokens = new.len(),
                connections = n,
                "token expired: disconnected"
            );
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
        self.session_event(session, session_event::EXPIRED, None);
    }
}

/// Whether `every` has passed since `last` (0: never), recording `now` if so.
fn due(last: &AtomicU64, now: Micros, every: Duration) -> bool {
    let prev = last.load(Ordering::Relaxed);
    if prev != 0 && now.saturating_sub(prev) < every.as_micros() as u64 {
        return false;
    }
    last.compare_exchange(prev, now, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}
