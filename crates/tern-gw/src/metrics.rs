//! The devices layer's counters for `/metrics` (the daemon renders them as `tern_gw_*`): plain
//! atomics, bumped where messages are taken in or refused and where retention runs.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::GwError;

/// How messages came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /gw/devices/{sel}/messages`.
    DevicePost,
    /// POSTed to an HTTP channel's `uri`.
    HttpChannel,
    /// Published to an MQTT channel's topics.
    MqttChannel,
    /// A channel of another protocol.
    OtherChannel,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::DevicePost,
        Route::HttpChannel,
        Route::MqttChannel,
        Route::OtherChannel,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::DevicePost => "device_post",
            Route::HttpChannel => "http_channel",
            Route::MqttChannel => "mqtt_channel",
            Route::OtherChannel => "other_channel",
        }
    }

    /// The route of a channel of protocol `protocol_id`.
    pub fn of_channel(protocol_id: u64) -> Route {
        match crate::types::protocol(protocol_id).map(|p| p.name) {
            Some("http") => Route::HttpChannel,
            Some("mqtt") => Route::MqttChannel,
            _ => Route::OtherChannel,
        }
    }
}

/// Why messages were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `messages_bytes` quota of the account or an account above it is used up.
    Quota,
    /// A bad message (the whole call without `skip_invalid`, the bad ones with it), too many
    /// in one call, or a disabled channel.
    Invalid,
    /// No such device or channel, or the store could not read.
    Other,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Quota, Refusal::Invalid, Refusal::Other];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Quota => "quota",
            Refusal::Invalid => "invalid",
            Refusal::Other => "other",
        }
    }

    fn of(e: &GwError) -> Refusal {
        match e {
            GwError::QuotaExceeded { .. } => Refusal::Quota,
            GwError::Invalid(_) => Refusal::Invalid,
            _ => Refusal::Other,
        }
    }
}

/// The counters. Gauges (devices, channels, stored bytes) are read from the gateway's state
/// at scrape time ([`crate::Gateway::gauges`]).
#[derive(Debug, Default)]
pub struct GwMetrics {
    ingested: [AtomicU64; 4],
    refused: [AtomicU64; 3],
    /// Retention sweeps run.
    pub sweeps: AtomicU64,
    /// Devices (and channel buffers) whose messages past `messages_ttl` a sweep deleted.
    pub expired: AtomicU64,
    /// Devices whose oldest messages a sweep rotated out (`messages_rotate`).
    pub rotated: AtomicU64,
    /// Messages the sweeps deleted, expired or rotated (from the store's counters after the
    /// sweep).
    pub swept_messages: AtomicU64,
    /// Changes other nodes of the cluster made, applied here (`replica.rs`).
    pub remote_applied: AtomicU64,
}

impl GwMetrics {
    /// Messages taken in by `route` (stored where their device keeps messages, published).
    pub fn ingested(&self, route: Route) -> u64 {
        self.ingested[route as usize].load(Ordering::Relaxed)
    }

    /// Messages refused for `reason`.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn note_remote(&self) {
        self.remote_applied.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_ingested(&self, route: Route, n: usize) {
        self.ingested[route as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_refused(&self, reason: Refusal, n: usize) {
        self.refused[reason as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts the outcome of one call that brought `n` messages.
    pub(crate) fn count_call<T>(&self, route: Route, n: usize, done: &Result<T, GwError>) {
        match done {
            Ok(_) => self.count_ingested(route, n),
            Err(e) => self.count_refused(Refusal::of(e), n),
        }
    }
}
