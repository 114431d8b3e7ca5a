//! The broker-wide budget of queued bytes (`BrokerConfig::max_total_queued_bytes`): every
//! session outbox together, on top of each session's own `max_queued_bytes`.
//!
//! The hot path is one atomic: a delivery takes room for its cost ([`QueueBudget::reserve`],
//! a compare-and-swap that never lets the total pass the limit) and gives it back when it
//! leaves the outbox (sent, expired, dropped; once per batch). Only a delivery that does not
//! fit does more: `Broker::shed_queues` drops the largest queues, one scan of the sessions
//! off the delivery path, until the total is comfortably below the limit again.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Bytes queued in every outbox, against the broker-wide limit.
#[derive(Debug)]
pub struct QueueBudget {
    queued: AtomicUsize,
    limit: usize,
    /// Held while the largest queues are being dropped: one scan at a time.
    pub(crate) shedding: Mutex<()>,
}

impl QueueBudget {
    pub fn new(limit: usize) -> QueueBudget {
        QueueBudget {
            queued: AtomicUsize::new(0),
            limit,
            shedding: Mutex::new(()),
        }
    }

    /// Bytes queued now (the sum of every session's `queued_bytes`).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Where shedding stops: a margin below the limit (1/32 of it), so that the deliveries
    /// right after a shed do not scan again.
    pub(crate) fn shed_target(&self) -> usize {
        self.limit - self.limit / 32
    }

    /// Whether `n` more bytes would fit.
    pub(crate) fn fits(&self, n: usize) -> bool {
        self.queued().saturating_add(n) <= self.limit
    }

    /// Takes room for `n` bytes; false, taking nothing, if the total would pass the limit.
    pub(crate) fn reserve(&self, n: usize) -> bool {
        // One atomic add, not a compare-and-swap loop: many publishers reserve at once on the
        // hot path, and a loop retries under that contention. An add that went past the limit
        // is taken back; it can only make a concurrent reservation fail, never let the
        // admitted total pass the limit.
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) <= self.limit {
            return true;
        }
        self.queued.fetch_sub(n, Ordering::Relaxed);
        false
    }

    /// Counts `n` bytes whatever the limit (outboxes restored from the store: the next
    /// delivery that does not fit sheds).
    pub(crate) fn force(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back `n` bytes that left an outbox.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        debug_assert!(before >= n, "released {n} of {before} queued bytes");
        if before < n {
            // Never wrap below zero (a counting error must not refuse every delivery after).
            self.queued.fetch_add(n - before, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_never_passes_the_limit() {
        let b = QueueBudget::new(100);
        assert!(b.reserve(60));
        assert!(!b.reserve(41));
        assert_eq!(b.queued(), 60);
        assert!(b.reserve(40));
        assert!(!b.fits(1));
        b.release(50);
        assert_eq!(b.queued(), 50);
        assert!(b.fits(50));
        b.force(100);
        assert_eq!(b.queued(), 150);
        assert!(!b.reserve(1));
        assert_eq!(b.shed_target(), 97);
    }
}
