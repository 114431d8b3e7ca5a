//! What the layers above the broker (the devices layer, `tern-gw`) need beyond
//! [`Broker::message`] and [`Broker::publish`]: a message whose `timestamp` is given rather
//! than stamped by the broker clock.
//!
//! The `timestamp` user property every v5 delivery carries is the message's
//! [`Message::timestamp`], formatted by the delivery path in one number format (seconds with
//! a fraction). A device's telemetry topic must carry the parameter's own time there
//! (docs/flespi.md#devices: TrackIt reads it as the time of the value), so the gateway builds those
//! messages with [`Broker::message_at`]. Such timestamps are not unique and not increasing;
//! nothing in routing or storage relies on that (retained messages are keyed by topic, queued
//! ones by their per-session sequence).

use bytes::Bytes;
use bytestring::ByteString;
use tern_codec::QoS;

use crate::broker::Broker;
use crate::message::{Cid, Message, Micros};

impl Broker {
    /// Like [`Broker::message`], with `timestamp` (microseconds since the Unix epoch) as the
    /// message's time instead of the broker clock's stamp.
    pub fn message_at(
        &self,
        cid: Cid,
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        timestamp: Micros,
    ) -> Message {
        Message {
            timestamp,
            ..self.message(cid, topic, payload, qos, retain)
        }
    }
}
