//! Application messages as the broker routes them, and deliveries to one session.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;
use tern_codec::QoS;
pub use tern_store::{Cid, Message, Micros, SessionId};

/// Broker-side helpers on a [`Message`].
pub trait MessageExt {
    fn is_expired(&self, now: Micros) -> bool;
    fn remaining_expiry(&self, now: Micros) -> Option<u32>;
    fn cost(&self) -> usize;
    fn timestamp_string(&self) -> String;
}

impl MessageExt for Message {
    /// Whether the message expired at `now`.
    fn is_expired(&self, now: Micros) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Seconds left until expiry, rounded up, for the Message Expiry Interval of a delivery.
    fn remaining_expiry(&self, now: Micros) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_sub(now);
            u32::try_from(left.div_ceil(1_000_000))
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }

    /// Rough memory cost of the message, for queue budgets.
    fn cost(&self) -> usize {
        // What one queued delivery really holds: the shared message (counted in full for each
        // session that holds it, as a bound), its Arc, the delivery in the queue (which may be
        // twice its length), and the allocator's share.
        const OVERHEAD: usize =
            std::mem::size_of::<Message>() + 2 * std::mem::size_of::<Delivery>() + 48;
        let props: usize = self
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum();
        self.topic.len() + self.payload.len() + props + OVERHEAD
    }

    /// The `timestamp` user property value: unix seconds with a fraction.
    fn timestamp_string(&self) -> String {
        format_timestamp(self.timestamp)
    }
}

/// Formats microseconds as `seconds.micros` (`1700000000.123456`).
pub fn format_timestamp(ts: Micros) -> String {
    format!("{}.{:06}", ts / 1_000_000, ts % 1_000_000)
}

/// One message on its way to one session: the shared message plus what this subscriber's
/// matching subscriptions decided.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// The QoS of this delivery: the lower of the message's and the highest granted QoS of the
    /// matching subscriptions.
    pub qos: QoS,
    /// The RETAIN flag on the wire.
    pub retain: bool,
    /// Identifiers of every matching subscription of the session that has one.
    pub sub_ids: SmallVec<[u32; 2]>,
    /// Position in the session's stored queue; 0 when the delivery is not stored (QoS 0, or a
    /// session that does not persist).
    pub seq: u64,
}

impl Delivery {
    /// A delivery not (yet) stored.
    pub fn new(msg: Arc<Message>, qos: QoS, retain: bool, sub_ids: SmallVec<[u32; 2]>) -> Delivery {
        Delivery {
            msg,
            qos,
            retain,
            sub_ids,
            seq: 0,
        }
    }
}

impl Delivery {
    pub fn cost(&self) -> usize {
        self.msg.cost()
    }
}

/// The broker clock: wall time in microseconds, made strictly increasing so that every message
/// gets a unique timestamp (flespi clients drop messages whose timestamp does not increase).
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
}

impl Clock {
    /// Current wall time, without the uniqueness guarantee.
    pub fn now(&self) -> Micros {
        wall_micros()
    }

    /// Makes every future stamp greater than `ts` (after loading stored messages, so that
    /// timestamps keep increasing across a restart even if the wall clock went back).
    pub fn advance_to(&self, ts: Micros) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }

    /// A fresh timestamp, greater than every one handed out before.
    pub fn stamp(&self) -> Micros {
        let now = wall_micros();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

/// Wall time in microseconds since the Unix epoch.
pub fn wall_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_strictly_increase() {
        let clock = Clock::default();
        let mut prev = 0;
        for _ in 0..10_000 {
            let ts = clock.stamp();
            assert!(ts > prev);
            prev = ts;
        }
    }

    #[test]
    fn timestamp_format() {
        assert_eq!(format_timestamp(1_700_000_000_000_001), "1700000000.000001");
    }
}
