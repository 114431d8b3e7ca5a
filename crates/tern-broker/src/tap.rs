//! The publish tap: how in-process code (the devices layer's internal MQTT channels,
//! docs/flespi.md#devices) sees what is published, without a session or a socket. One tap may be
//! installed; [`Broker::publish`] hands it every message outside the reserved `flespi/` prefix
//! (so what the tap's owner publishes under `flespi/` never comes back to it), before routing.
//! The tap is called on the publisher's path with broker state borrowed: it must not block nor
//! call back into the broker; it copies what it wants into its own bounded queue.

use std::sync::Arc;

use crate::broker::Broker;
use crate::message::Message;
use crate::topics;

/// Sees publications (see the module).
pub trait PublishTap: Send + Sync + std::fmt::Debug {
    /// Sees `msg`; returns how many copies it could not queue (counted as dropped,
    /// `channel_queue_full`).
    fn published(&self, msg: &Arc<Message>) -> u64;
}

impl Broker {
    /// Installs the publish tap (once; later calls are ignored).
    pub fn set_publish_tap(&self, tap: Arc<dyn PublishTap>) {
        let _ = self.tap.set(tap);
    }

    /// Hands `msg` to the tap, if one is installed and the topic is not reserved.
    pub(crate) fn tap(&self, msg: &Arc<Message>) {
        if let Some(tap) = self.tap.get()
            && !topics::is_reserved(&msg.topic)
        {
            let dropped = tap.published(msg);
            if dropped > 0 {
                self.metrics
                    .dropped_n(crate::metrics::DropReason::ChannelQueueFull, dropped);
            }
        }
    }
}
