//! The publish tap: how in-process code (the devices layer's internal MQTT channels,
//! docs/flespi.md#devices) sees what is published, without a session or a socket. One tap may be
//! installed; `Broker::publish` hands it every message outside the reserved `flespi/` prefix
//! (so what the tap's owner publishes under `flespi/` never comes back to it), before routing.
//! A second one, the trigger tap (`Broker::set_trigger_tap`, the devices layer's webhooks), sees
//! every publication, `flespi/` topics included; each is switched on and off by one bit of one
//! byte that every publish reads, so a broker with neither pays one relaxed load.
//! The tap is called on the publisher's path with broker state borrowed: it must not block nor
//! call back into the broker; it copies what it wants into its own bounded queue.

use std::sync::Arc;

use crate::message::Message;

/// Sees publications (see the module).
pub trait PublishTap: Send + Sync + std::fmt::Debug {
    /// Sees `msg`; returns how many copies it could not queue (counted as dropped,
    /// `channel_queue_full`).
    fn published(&self, msg: &Arc<Message>) -> u64;
}
