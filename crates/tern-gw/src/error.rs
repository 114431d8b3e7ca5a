//! Why a devices-layer call failed.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GwError {
    /// The input is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// Another device of the same protocol in the same account tree has this ident (400).
    #[error("configuration.ident `{ident}` is already used by device {other} of the same protocol")]
    IdentTaken { ident: String, other: u64 },
    /// The device or group does not exist (any more).
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: u64 },
    /// Moving a device to another account needs it disabled first (400).
    #[error("device {0} must be disabled (enabled=false) before it moves to another account")]
    Enabled(u64),
    /// A command for a device with no open connection (error code 2, as flespi answers).
    #[error("failed to deliver command '{name}' to device: device with id {id} is not connected")]
    NotConnected { name: String, id: u64 },
    /// A new device or channel, or messages to store, would take account `cid` (the item's
    /// account or one above it) past a quota (403).
    #[error("the {quota} quota of account {cid} ({limit}) is used up")]
    QuotaExceeded {
        cid: tern_broker::Cid,
        quota: &'static str,
        limit: u64,
    },
    /// Cluster mode cannot hand out what the call needs now (a new id: NATS out of reach): 503.
    #[error("{0}")]
    Unavailable(String),
    /// The store cannot read (500).
    #[error("the store cannot read: {0}")]
    Store(String),
}
