//! The listeners' counters, as plain atomics beside the broker's own (`tern_broker::Metrics`).
//! The daemon reads both at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tern_codec::ProtocolVersion;

use crate::listener::Listener;

const LISTENERS: usize = Listener::ALL.len();
const VERSIONS: usize = 3;

/// Every MQTT protocol version, in metric-label order.
pub const PROTOCOL_VERSIONS: [ProtocolVersion; VERSIONS] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

/// The metric label of a protocol version.
pub fn version_label(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    }
}

fn version_index(version: ProtocolVersion) -> usize {
    match version {
        ProtocolVersion::V31 => 0,
        ProtocolVersion::V311 => 1,
        ProtocolVersion::V5 => 2,
    }
}

/// Counters by listener (and protocol version, for MQTT clients).
#[derive(Debug, Default)]
pub struct NetMetrics {
    accepted: [AtomicU64; LISTENERS],
    refused: [AtomicU64; LISTENERS],
    tls_failures: [AtomicU64; LISTENERS],
    connected: [[AtomicI64; VERSIONS]; LISTENERS],
    connects: [[AtomicU64; VERSIONS]; LISTENERS],
}

impl NetMetrics {
    pub(crate) fn accepted(&self, l: Listener) {
        self.accepted[l.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, l: Listener) {
        self.refused[l.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tls_failed(&self, l: Listener) {
        self.tls_failures[l.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Sockets accepted on `l` (before the connection limit and any handshake).
    pub fn accepted_total(&self, l: Listener) -> u64 {
        self.accepted[l.index()].load(Ordering::Relaxed)
    }

    /// Sockets closed at once on `l` because the connection limit was reached.
    pub fn refused_total(&self, l: Listener) -> u64 {
        self.refused[l.index()].load(Ordering::Relaxed)
    }

    /// TLS handshakes on `l` that failed or timed out.
    pub fn tls_failures_total(&self, l: Listener) -> u64 {
        self.tls_failures[l.index()].load(Ordering::Relaxed)
    }

    /// MQTT clients connected now (CONNECT accepted) on `l` with `version`.
    pub fn connected(&self, l: Listener, version: ProtocolVersion) -> i64 {
        self.connected[l.index()][version_index(version)].load(Ordering::Relaxed)
    }

    /// CONNECTs accepted so far on `l` with `version`.
    pub fn connects_total(&self, l: Listener, version: ProtocolVersion) -> u64 {
        self.connects[l.index()][version_index(version)].load(Ordering::Relaxed)
    }
}

impl NetMetrics {
    /// A CONNECT was accepted on `l` with `version`: counted, and connected until
    /// [`NetMetrics::disconnected`].
    pub(crate) fn connect_accepted(&self, l: Listener, version: ProtocolVersion) {
        let v = version_index(version);
        self.connects[l.index()][v].fetch_add(1, Ordering::Relaxed);
        self.connected[l.index()][v].fetch_add(1, Ordering::Relaxed);
    }

    /// A client counted by [`NetMetrics::connect_accepted`] is gone.
    pub(crate) fn disconnected(&self, l: Listener, version: ProtocolVersion) {
        self.connected[l.index()][version_index(version)].fetch_sub(1, Ordering::Relaxed);
    }
}
