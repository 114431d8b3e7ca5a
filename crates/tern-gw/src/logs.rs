//! Entity logs (docs/flespi.md#devices, spec flespi-gw §7): every log record of the devices
//! layer goes through [`Gateway::log`], which publishes it on
//! `flespi/log/<api>/<origin>/<id>/<event>` in the entity's account namespace.
//!
//! A record: `timestamp`, `event_code`, `origin_type`, `origin_id`, then the event's own fields.

use serde_json::{Map, Value, json};
use tern_broker::Cid;

use crate::{Gateway, publish};

/// The kind of entity a log record belongs to, with flespi's `origin_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Device,
    Channel,
    Stream,
    Webhook,
}

impl Origin {
    /// flespi's `origin_type`.
    pub fn origin_type(self) -> u64 {
        match self {
            Origin::Device => 11,
            Origin::Channel => 9,
            Origin::Stream => 12,
            Origin::Webhook => 36,
        }
    }

    /// The `<api>/<origin>` part of the log topic.
    pub fn path(self) -> &'static str {
        match self {
            Origin::Device => "gw/devices",
            Origin::Channel => "gw/channels",
            Origin::Stream => "gw/streams",
            Origin::Webhook => "platform/webhooks",
        }
    }
}

/// Event codes of the channel connection log (flespi's).
pub mod channel_event {
    /// A TCP connection was accepted (`host`).
    pub const ACCEPTED: (&str, u64) = ("connection/accepted", 100);
    /// The device identified itself (`ident`).
    pub const IDENTIFIED: (&str, u64) = ("connection/identified", 101);
    /// The connection closed (`close_code`, `ident`, `duration`, `msgs`, `recv`, `send`).
    pub const CLOSED: (&str, u64) = ("connection/closed", 102);
}

impl Gateway {
    /// Logs `event` (`code`) of entity `id` of account `cid` with the event's own `fields`.
    pub fn log(
        &self,
        cid: Cid,
        origin: Origin,
        id: u64,
        (event, code): (&str, u64),
        fields: Map<String, Value>,
    ) {
        let mut record = Map::with_capacity(fields.len() + 4);
        record.insert("timestamp".into(), json!(self.now()));
        record.insert("event_code".into(), json!(code));
        record.insert("origin_type".into(), json!(origin.origin_type()));
        record.insert("origin_id".into(), json!(id));
        record.extend(fields);
        let topic = format!("flespi/log/{}/{id}/{event}", origin.path());
        publish::log_record(&self.broker, cid, topic, &Value::Object(record));
    }
}
