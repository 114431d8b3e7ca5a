//! Application messages as the broker routes them, and deliveries to one session.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;
use tern_codec::{PublishProperties, QoS};

/// An account id (flespi `cid`).
pub type Cid = u64;

/// A broker-wide session identifier, used in event topics and the REST API.
pub type SessionId = u64;

/// Microseconds since the Unix epoch. Broker timestamps are unique and strictly increasing.
pub type Micros = u64;

/// One published message, shared by every delivery of it (`Arc<Message>`): the payload and the
/// topic are reference-counted slices of the publisher's receive buffer, never copied.
#[derive(Debug)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// QoS as published (already capped by the broker's maximum QoS).
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// The v5 properties to forward: no Topic Alias and no Subscription Identifiers (both are
    /// per connection).
    pub properties: PublishProperties,
    /// The publisher's account.
    pub cid: Cid,
    /// Publication time, unique per broker (spec §3 `timestamp`).
    pub timestamp: Micros,
    /// Absolute expiry time from the Message Expiry Interval.
    pub expires_at: Option<Micros>,
    /// The publishing session, for No Local. `None` for broker-generated messages.
    pub origin: Option<SessionId>,
}

impl Message {
    /// Whether the message expired at `now`.
    pub fn is_expired(&self, now: Micros) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Seconds left until expiry, rounded up, for the Message Expiry Interval of a delivery.
    pub fn remaining_expiry(&self, now: Micros) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_sub(now);
            u32::try_from(left.div_ceil(1_000_000))
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }

    /// Rough memory cost of the message, for queue budgets.
    pub fn cost(&self) -> usize {
        const OVERHEAD: usize = 96;
        let props: usize = self
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum();
        self.topic.len() + self.payload.len() + props + OVERHEAD
    }

    /// The `timestamp` user property value: unix seconds with a fraction.
    pub fn timestamp_string(&self) -> String {
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
