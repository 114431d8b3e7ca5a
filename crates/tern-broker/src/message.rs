//! Application messages as the broker routes them, and deliveries to one session.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;
use tern_codec::QoS;
pub use tern_store::{Cid, Message, Micros, SessionId, format_timestamp};

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
    /// Cluster mode: the packet id this message had in flight to the client on the node that
    /// held its session before (`fabric.rs`). It goes out again under that id with DUP=1
    /// ([MQTT-4.4.0-1]); `Some(0)`: it may have gone out there under an id not known, so it
    /// goes out with DUP=1 under a new id ("might be re-delivery", MQTT 3.3.1.1); `None` for
    /// a first delivery.
    pub dup_id: Option<tern_codec::PacketId>,
    /// With `dup_id`, a QoS 2 message whose PUBREC the former node had: a PUBREL goes out
    /// under that id, not the PUBLISH again ([MQTT-4.4.0-1]).
    pub dup_released: bool,
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
            dup_id: None,
            dup_released: false,
        }
    }
}

impl Delivery {
    pub fn cost(&self) -> usize {
        self.msg.cost()
    }
}

// `Message::cost` counts a delivery as `tern_store::DELIVERY_SIZE` bytes.
const _: () = assert!(std::mem::size_of::<Delivery>() <= tern_store::DELIVERY_SIZE);

/// The broker clock: wall time in microseconds, made strictly increasing so that every message
/// gets a unique timestamp (flespi clients drop messages whose timestamp does not increase).
///
/// Every deadline of the broker (will delay, session expiry, message and retained expiry, token
/// expiry) is measured against [`Clock::now`]. A manual clock ([`Clock::manual`]) stands still
/// until [`Clock::advance`] moves it, so tests run whole exchanges in virtual time; the broker's
/// [`Broker::advance`](crate::Broker::advance) moves it and fires what fell due. Reading the
/// wall clock costs one branch more (the manual time is `None`).
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
    /// The manual time, shared by [`Clock::share`]; `None` reads the wall clock.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// A manual clock standing at `start` (microseconds since the epoch).
    pub fn manual(start: Micros) -> Clock {
        Clock {
            last: AtomicU64::new(0),
            manual: Some(Arc::new(AtomicU64::new(start))),
        }
    }

    /// A clock reading the same time as this one (a manual one moves with it), with stamps of
    /// its own: the account directory's clock.
    pub fn share(&self) -> Clock {
        Clock {
            last: AtomicU64::new(0),
            manual: self.manual.clone(),
        }
    }

    /// Whether this clock only moves by [`Clock::advance`].
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Moves a manual clock forward by `by` and returns the new time; the wall clock cannot be
    /// moved (it returns the current time).
    pub fn advance(&self, by: std::time::Duration) -> Micros {
        let by = by.as_micros() as u64;
        match &self.manual {
            Some(t) => t.fetch_add(by, Ordering::AcqRel).saturating_add(by),
            None => wall_micros(),
        }
    }

    /// Current time, without the uniqueness guarantee.
    pub fn now(&self) -> Micros {
        match &self.manual {
            None => wall_micros(),
            Some(t) => t.load(Ordering::Acquire),
        }
    }

    /// Makes every future stamp greater than `ts` (after loading stored messages, so that
    /// timestamps keep increasing across a restart even if the wall clock went back).
    pub fn advance_to(&self, ts: Micros) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }

    /// A fresh timestamp, greater than every one handed out before.
    pub fn stamp(&self) -> Micros {
        let now = self.now();
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
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual(1_000_000);
        let shared = clock.share();
        assert!(clock.is_manual());
        assert_eq!(clock.now(), 1_000_000);
        assert_eq!(clock.advance(std::time::Duration::from_secs(2)), 3_000_000);
        assert_eq!(clock.now(), 3_000_000);
        assert_eq!(shared.now(), 3_000_000);
        // Stamps stay unique while the clock stands still.
        assert_eq!(clock.stamp(), 3_000_000);
        assert_eq!(clock.stamp(), 3_000_001);
        assert!(!Clock::default().is_manual());
    }
}
