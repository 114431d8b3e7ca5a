//! Broker counters and gauges as plain atomics. The daemon exports them (Prometheus); tests read
//! them directly. Every queue and every drop has a counter here.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::close::CloseReason;

/// Why a message was not delivered to one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// QoS 0 over a session's soft message budget.
    Qos0Overflow,
    /// QoS 0 for an offline session.
    Offline,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
    /// Expired before it could be sent.
    Expired,
    /// Dropped with a session queue that went past its byte budget.
    QueueOverflow,
    /// The session ended while the message was queued.
    SessionEnded,
    /// Dropped with one of the largest queues when every queue together went past the
    /// broker's budget (`max_total_queued_bytes`), or not queued because it did not fit.
    TotalOverflow,
    /// Not taken by an in-process channel whose queue was full (the publish tap, `tap.rs`).
    ChannelQueueFull,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::Qos0Overflow,
        DropReason::Offline,
        DropReason::TooLarge,
        DropReason::Expired,
        DropReason::QueueOverflow,
        DropReason::SessionEnded,
        DropReason::TotalOverflow,
        DropReason::ChannelQueueFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Qos0Overflow => "qos0_overflow",
            DropReason::Offline => "offline",
            DropReason::TooLarge => "too_large",
            DropReason::Expired => "expired",
            DropReason::QueueOverflow => "queue_overflow",
            DropReason::SessionEnded => "session_ended",
            DropReason::TotalOverflow => "total_overflow",
            DropReason::ChannelQueueFull => "channel_queue_full",
        }
    }
}

/// The broker's counters. Counters only grow; gauges (`i64`) go up and down.
#[derive(Debug)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub sessions: AtomicI64,
    pub subscriptions: AtomicI64,
    pub retained: AtomicI64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Publishes refused (reserved prefix, ACL, invalid) - the `rejected` of
    /// docs/flespi.md#broker-events.
    pub publishes_rejected: AtomicU64,
    /// Deliveries currently queued in session outboxes.
    pub queued: AtomicI64,
    /// Messages in flight towards clients.
    pub inflight: AtomicI64,
    /// Times a publisher stopped reading because a subscriber it publishes to was congested.
    pub backpressure_pauses: AtomicU64,
    /// Pauses that ran out (`session.backpressure_timeout_ms`): the subscriber's queue budgets
    /// decide from then on.
    pub backpressure_timeouts: AtomicU64,
    /// Connections closed at their keep-alive or CONNECT deadline with part of a packet read
    /// and the rest missing (a client trickling bytes is not kept alive by them).
    pub incomplete_packet_timeouts: AtomicU64,
    /// Queues dropped (their clients closed as slow consumers) because every queue together
    /// went past the broker's budget (`max_total_queued_bytes`).
    pub budget_evictions: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    closes: Vec<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            sessions: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            retained: AtomicI64::new(0),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            publishes_rejected: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            inflight: AtomicI64::new(0),
            backpressure_pauses: AtomicU64::new(0),
            backpressure_timeouts: AtomicU64::new(0),
            incomplete_packet_timeouts: AtomicU64::new(0),
            budget_evictions: AtomicU64::new(0),
            drops: Default::default(),
            closes: CloseReason::LABELS
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Metrics {
    pub fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped_n(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    pub fn closed(&self, reason: &CloseReason) {
        if let Some(i) = CloseReason::LABELS
            .iter()
            .position(|l| *l == reason.label())
        {
            self.closes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Close counts by label.
    pub fn closes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CloseReason::LABELS
            .iter()
            .zip(&self.closes)
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn gauge(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }
}
