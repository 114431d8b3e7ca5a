//! The broker's timer queue: deadlines ordered by time, as plain data. What a timer does when
//! it fires is the broker's business (`timers.rs`); this module knows nothing of the broker.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::message::Micros;
use crate::session::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// Publish the will (Will Delay Interval elapsed).
    Will,
    /// End the session (Session Expiry Interval elapsed).
    Expiry,
}

#[derive(Debug)]
pub(crate) struct Timer {
    pub kind: TimerKind,
    pub session: Arc<Session>,
    pub disconnected_at: Micros,
}

/// The broker's timer queue, ordered by deadline.
#[derive(Debug, Default)]
pub struct Timers {
    queue: Mutex<BTreeMap<(Micros, u64), Timer>>,
    seq: AtomicU64,
    pub(crate) notify: Notify,
    /// When retained messages were last swept (0: never).
    pub(crate) last_sweep: AtomicU64,
    /// The second (unix time) in which token `expire` was last checked.
    pub(crate) last_token_check: AtomicU64,
    /// `(token, expire)` already acted on: a token given a later `expire` is watched again.
    pub(crate) expired_tokens: Mutex<HashSet<(u64, u64)>>,
}

impl Timers {
    pub(crate) fn schedule(
        &self,
        at: Micros,
        kind: TimerKind,
        session: Arc<Session>,
        disconnected_at: Micros,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
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

    pub(crate) fn next_deadline(&self) -> Option<Micros> {
        self.queue.lock().keys().next().map(|(t, _)| *t)
    }

    pub(crate) fn pop_due(&self, now: Micros) -> Vec<Timer> {
        let mut q = self.queue.lock();
        let later = q.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut *q, later);
        due.into_values().collect()
    }
}
