//! Entity logs (docs/flespi.md#devices, spec flespi-gw §7): every log record of the devices
//! layer goes through [`Gateway::log`], which keeps it in the store's message table under the
//! entity's log key (`tern_store::log_key`) and publishes it on
//! `flespi/log/<api>/<origin>/<id>/<event>` in the entity's account namespace.
//!
//! A record: `timestamp`, `event_code`, `origin_type`, `origin_id`, then the event's own fields.
//! Records are read back like device messages ([`Gateway::logs`], `data` [`LogsData`]), expire
//! after `logs_ttl` and, past `logs_max_bytes` per account, oldest first (the retention sweep),
//! and go with their entity.
//!
//! [`CODES`] is the one table of every event code tern logs; `GET /const/values?names=toolbox%2Fcodes`
//! serves it ([`toolbox_codes`]).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tern_broker::Cid;
use tern_broker::topics::device_event;
use tern_store::{MessageKey, Op};

use crate::{Gateway, GwError, History, MessageQuery, MessagesData, publish};

/// The kind of entity a log record belongs to, with flespi's `origin_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Device,
    Channel,
    Stream,
    Webhook,
    /// The account's REST calls (`GET /platform/customer/logs`; the id is the account).
    Customer,
    /// The account's MQTT session events (`GET /mqtt/logs`; stored under the account).
    MqttSessions,
}

impl Origin {
    /// flespi's `origin_type`.
    pub fn origin_type(self) -> u64 {
        match self {
            Origin::Device => tern_store::LOG_ORIGIN_DEVICE,
            Origin::Channel => tern_store::LOG_ORIGIN_CHANNEL,
            Origin::Stream => tern_store::LOG_ORIGIN_STREAM,
            Origin::Webhook => 36,
            Origin::Customer => tern_store::LOG_ORIGIN_CUSTOMER,
            Origin::MqttSessions => tern_store::LOG_ORIGIN_MQTT,
        }
    }

    /// The `<api>/<origin>` part of the log topic.
    pub fn path(self) -> &'static str {
        match self {
            Origin::Device => "gw/devices",
            Origin::Channel => "gw/channels",
            Origin::Stream => "gw/streams",
            Origin::Webhook => "platform/webhooks",
            Origin::Customer => "platform/customer",
            Origin::MqttSessions => "mqtt/sessions",
        }
    }

    /// The message-table key of entity `id`'s log.
    pub fn key(self, id: u64) -> u64 {
        tern_store::log_key(self.origin_type(), id)
    }
}

/// Every `event_code` tern logs. flespi's where known (100-102, 300/301, 330/333/334), tern's
/// own otherwise; [`CODES`] describes each.
pub mod code {
    /// A device item was created (tern's).
    pub const CREATED: u64 = 1;
    /// A device item was changed (tern's).
    pub const UPDATED: u64 = 2;
    /// A device item was deleted (tern's).
    pub const DELETED: u64 = 3;
    /// A channel accepted a connection (flespi's).
    pub const CONNECTION_ACCEPTED: u64 = 100;
    /// A device identified itself on a channel connection (flespi's).
    pub const DEVICE_IDENTIFIED: u64 = 101;
    /// A channel connection closed, with a `close_code` (flespi's).
    pub const CONNECTION_CLOSED: u64 = 102;
    /// A device connected (flespi's).
    pub const CONNECTED: u64 = 300;
    /// A device disconnected (flespi's).
    pub const DISCONNECTED: u64 = 301;
    /// A command was queued for a device (flespi's).
    pub const COMMAND_QUEUED: u64 = 330;
    /// A device answered a command (tern's).
    pub const COMMAND_PROCESSED: u64 = 332;
    /// A queued command expired before it was delivered (flespi's).
    pub const COMMAND_EXPIRED: u64 = 333;
    /// A command was sent to the device (flespi's).
    pub const COMMAND_DELIVERED: u64 = 334;
    /// A queued command was canceled (tern's).
    pub const COMMAND_CANCELED: u64 = 335;
    /// A REST call of the account (tern's; `GET /platform/customer/logs`).
    pub const REST_CALL: u64 = 600;
    /// An MQTT session connected (tern's; `GET /mqtt/logs`).
    pub const SESSION_CONNECTED: u64 = tern_broker::topics::session_event::CONNECTED_CODE;
    /// An MQTT session's connection ended, with `reason` (tern's).
    pub const SESSION_DISCONNECTED: u64 = tern_broker::topics::session_event::DISCONNECTED_CODE;
    /// A disconnected MQTT session expired (tern's).
    pub const SESSION_EXPIRED: u64 = tern_broker::topics::session_event::EXPIRED_CODE;
}

/// The `close_code` of a [`code::CONNECTION_CLOSED`] record (flespi's numbers; the channel's
/// own in `tern_net::teltonika::close_code`).
pub mod close_code {
    use tern_net::teltonika::close_code as net;

    pub const NORMAL: u64 = net::NORMAL as u64;
    pub const PROTOCOL_VIOLATION: u64 = net::PROTOCOL_VIOLATION as u64;
    pub const SERVER_SHUTDOWN: u64 = net::SHUTDOWN as u64;
    pub const CHANNEL_UPDATED: u64 = net::CHANNEL_UPDATED as u64;
    pub const IDENT_COLLISION: u64 = net::IDENT_COLLISION as u64;
    pub const INACTIVITY_TIMEOUT: u64 = net::INACTIVITY as u64;
    pub const DEVICE_DISABLED: u64 = net::DEVICE_DISABLED as u64;
}

/// Event codes of the channel connection log (flespi's).
pub mod channel_event {
    use super::code;

    /// A TCP connection was accepted (`host`).
    pub const ACCEPTED: (&str, u64) = ("connection/accepted", code::CONNECTION_ACCEPTED);
    /// The device identified itself (`ident`).
    pub const IDENTIFIED: (&str, u64) = ("connection/identified", code::DEVICE_IDENTIFIED);
    /// The connection closed (`close_code`, `ident`, `duration`, `msgs`, `recv`, `send`).
    pub const CLOSED: (&str, u64) = ("connection/closed", code::CONNECTION_CLOSED);
}

/// How a Toolbox colours a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Notice,
    Warning,
    Alert,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Alert => "alert",
        }
    }
}

/// The entity list of `toolbox/codes` a code belongs to (`base`: every entity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Base,
    Devices,
    Channels,
    Streams,
    /// The account's REST calls.
    Customer,
    /// MQTT sessions.
    Mqtt,
    Webhooks,
}

impl Entity {
    fn as_str(self) -> &'static str {
        match self {
            Entity::Base => "base",
            Entity::Devices => "devices",
            Entity::Channels => "channels",
            Entity::Streams => "streams",
            Entity::Customer => "customer",
            Entity::Mqtt => "mqtt",
            Entity::Webhooks => "webhooks",
        }
    }
}

/// One event code: what it means, and the extra field whose values it names (`close_code`).
#[derive(Debug, Clone, Copy)]
pub struct CodeInfo {
    pub code: u64,
    pub description: &'static str,
    pub severity: Severity,
    pub entity: Entity,
    /// The field the record carries beside the code, with a description of each value.
    pub extra: Option<(&'static str, &'static [ExtraCode])>,
}

/// One value of a code's extra field: the value, what it means, its severity.
pub type ExtraCode = (u64, &'static str, Severity);

const fn info(
    code: u64,
    description: &'static str,
    severity: Severity,
    entity: Entity,
) -> CodeInfo {
    CodeInfo {
        code,
        description,
        severity,
        entity,
        extra: None,
    }
}

/// The close codes of [`code::CONNECTION_CLOSED`].
const CLOSE_CODES: &[ExtraCode] = &[
    (close_code::NORMAL, "normal close", Severity::Info),
    (
        close_code::PROTOCOL_VIOLATION,
        "protocol violation",
        Severity::Warning,
    ),
    (
        close_code::SERVER_SHUTDOWN,
        "server shutdown",
        Severity::Notice,
    ),
    (
        close_code::CHANNEL_UPDATED,
        "channel updated",
        Severity::Notice,
    ),
    (
        close_code::IDENT_COLLISION,
        "ident collision",
        Severity::Alert,
    ),
    (
        close_code::INACTIVITY_TIMEOUT,
        "inactivity timeout",
        Severity::Notice,
    ),
    (
        close_code::DEVICE_DISABLED,
        "device disabled",
        Severity::Notice,
    ),
];

/// Every event code tern logs (docs/flespi.md#devices lists the same).
pub const CODES: &[CodeInfo] = &[
    info(code::CREATED, "item created", Severity::Info, Entity::Base),
    info(code::UPDATED, "item updated", Severity::Info, Entity::Base),
    info(
        code::DELETED,
        "item deleted",
        Severity::Notice,
        Entity::Base,
    ),
    info(
        code::CONNECTION_ACCEPTED,
        "connection accepted",
        Severity::Info,
        Entity::Channels,
    ),
    info(
        code::DEVICE_IDENTIFIED,
        "device identified",
        Severity::Info,
        Entity::Channels,
    ),
    CodeInfo {
        code: code::CONNECTION_CLOSED,
        description: "connection closed",
        severity: Severity::Notice,
        entity: Entity::Channels,
        extra: Some(("close_code", CLOSE_CODES)),
    },
    info(
        code::CONNECTED,
        "device connected",
        Severity::Info,
        Entity::Devices,
    ),
    info(
        code::DISCONNECTED,
        "device disconnected",
        Severity::Notice,
        Entity::Devices,
    ),
    info(
        code::COMMAND_QUEUED,
        "command queued",
        Severity::Info,
        Entity::Devices,
    ),
    info(
        code::COMMAND_PROCESSED,
        "command processed (response received)",
        Severity::Info,
        Entity::Devices,
    ),
    info(
        code::COMMAND_EXPIRED,
        "command expired",
        Severity::Warning,
        Entity::Devices,
    ),
    info(
        code::COMMAND_DELIVERED,
        "command delivered",
        Severity::Info,
        Entity::Devices,
    ),
    info(
        code::COMMAND_CANCELED,
        "command canceled",
        Severity::Notice,
        Entity::Devices,
    ),
    info(
        crate::streams::stream_event::DELIVERY_FAILED.1,
        "stream delivery failed (kept, retried after the back-off)",
        Severity::Warning,
        Entity::Streams,
    ),
    info(
        crate::streams::stream_event::DELIVERY_RESUMED.1,
        "stream delivery resumed",
        Severity::Info,
        Entity::Streams,
    ),
    info(
        crate::streams::stream_event::QUEUE_OVERFLOW.1,
        "stream queue overflow (oldest dropped)",
        Severity::Alert,
        Entity::Streams,
    ),
    info(
        crate::streams::stream_event::QUEUE_EXPIRED.1,
        "stream queue expired (older than queue_ttl dropped)",
        Severity::Warning,
        Entity::Streams,
    ),
    info(
        crate::streams::stream_event::DELIVERY_DROPPED.1,
        "stream messages dropped (no valid URI or topic for them)",
        Severity::Warning,
        Entity::Streams,
    ),
    info(
        code::REST_CALL,
        "REST API call",
        Severity::Info,
        Entity::Customer,
    ),
    info(
        code::SESSION_CONNECTED,
        "MQTT session connected",
        Severity::Info,
        Entity::Mqtt,
    ),
    info(
        code::SESSION_DISCONNECTED,
        "MQTT session disconnected",
        Severity::Notice,
        Entity::Mqtt,
    ),
    info(
        code::SESSION_EXPIRED,
        "MQTT session expired",
        Severity::Notice,
        Entity::Mqtt,
    ),
    info(
        crate::webhooks::webhook_event::CALL_DONE.1,
        "webhook request answered",
        Severity::Info,
        Entity::Webhooks,
    ),
    info(
        crate::webhooks::webhook_event::CALL_FAILED.1,
        "webhook request refused (4xx or validate failed): call dropped",
        Severity::Warning,
        Entity::Webhooks,
    ),
    info(
        crate::webhooks::webhook_event::CALL_RETRY.1,
        "webhook request failed (network, timeout or 5xx): retried after the back-off",
        Severity::Notice,
        Entity::Webhooks,
    ),
    info(
        crate::webhooks::webhook_event::CALL_DROPPED.1,
        "webhook request failed after the last retry: call dropped",
        Severity::Alert,
        Entity::Webhooks,
    ),
    info(
        crate::webhooks::webhook_event::QUEUE_OVERFLOW.1,
        "webhook pending queue full: new calls dropped",
        Severity::Alert,
        Entity::Webhooks,
    ),
];

/// The `toolbox/codes` value (spec flespi-gw §7): `codes` by number and the codes of each
/// entity.
pub fn toolbox_codes() -> Value {
    let mut codes = Map::new();
    let mut entities = Map::new();
    for name in [
        "base", "devices", "channels", "streams", "webhooks", "customer", "mqtt",
    ] {
        entities.insert(name.into(), json!([]));
    }
    for c in CODES {
        let mut entry = json!({
            "code": c.code,
            "description": c.description,
            "severity": c.severity.as_str(),
            "entity": c.entity.as_str(),
        });
        if let Some((name, values)) = c.extra {
            let extra: Map<String, Value> = values
                .iter()
                .map(|(v, d, s)| {
                    (
                        v.to_string(),
                        json!({"description": d, "severity": s.as_str()}),
                    )
                })
                .collect();
            entry["extra_name"] = json!(name);
            entry["extra_codes"] = Value::Object(extra);
        }
        codes.insert(c.code.to_string(), entry);
        if let Some(Value::Array(list)) = entities.get_mut(c.entity.as_str()) {
            list.push(json!(c.code));
        }
    }
    json!({"codes": codes, "entities": entities})
}

/// The code of a device item event (`created`, `updated`, `deleted`, `connected`,
/// `disconnected`).
pub fn device_code(event: &str) -> u64 {
    match event {
        device_event::CREATED => code::CREATED,
        device_event::UPDATED => code::UPDATED,
        device_event::CONNECTED => code::CONNECTED,
        device_event::DISCONNECTED => code::DISCONNECTED,
        _ => code::DELETED,
    }
}

/// The `data` of `GET /gw/{devices,channels}/{sel}/logs`: as message history reads, on the
/// record `timestamp`. Keys tern does not implement (the Toolbox's `item_type`) are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogsData {
    pub from: Option<f64>,
    pub to: Option<f64>,
    pub count: Option<u64>,
    #[serde(default)]
    pub reverse: bool,
    pub fields: Option<String>,
    pub filter: Option<String>,
}

impl LogsData {
    pub fn query(&self) -> Result<MessageQuery, GwError> {
        MessagesData {
            from: self.from,
            to: self.to,
            count: self.count,
            reverse: self.reverse,
            fields: self.fields.clone(),
            filter: self.filter.clone(),
        }
        .query()
    }
}

impl Gateway {
    /// Logs `event` (`code`) of entity `id` of account `cid` with the event's own `fields`:
    /// stored under the entity's log key (unless `logs_ttl` is 0; timestamp now, the
    /// gateway's arrival sequence for ties) and published. Takes no gateway lock, so callers
    /// may hold the state lock (the record then reaches the store in order with the change).
    pub fn log(
        &self,
        cid: Cid,
        origin: Origin,
        id: u64,
        (event, code): (&str, u64),
        fields: Map<String, Value>,
    ) {
        // A stamp, not the bare time: records of one instant stay apart and in order, so a
        // reader paging from the last timestamp it saw misses none.
        let now = self.broker.clock.stamp();
        let mut record = Map::with_capacity(fields.len() + 4);
        record.insert("timestamp".into(), json!(now as f64 / 1e6));
        record.insert("event_code".into(), json!(code));
        record.insert("origin_type".into(), json!(origin.origin_type()));
        record.insert("origin_id".into(), json!(id));
        record.extend(fields);
        let record = Value::Object(record);
        if self.options.logs_ttl > 0 {
            let key = MessageKey {
                ts: i64::try_from(now).unwrap_or(i64::MAX),
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
            };
            match serde_json::to_vec(&record) {
                Ok(json) => {
                    self.write(Op::AppendMessages {
                        device: origin.key(id),
                        messages: vec![(key, Bytes::from(json))],
                    });
                }
                Err(err) => tracing::error!(id, %err, "could not serialize a log record"),
            }
        }
        let topic = format!("flespi/log/{}/{id}/{event}", origin.path());
        publish::log_record(&self.broker, cid, topic, &record);
    }

    /// Logs a device item event with `new` (the item after) and/or `old` (before).
    pub(crate) fn log_device(
        &self,
        cid: Cid,
        id: u64,
        event: &str,
        new: Option<&Value>,
        old: Option<&Value>,
    ) {
        let mut fields = Map::new();
        if let Some(new) = new {
            fields.insert("new".into(), new.clone());
        }
        if let Some(old) = old {
            fields.insert("old".into(), old.clone());
        }
        self.log(cid, Origin::Device, id, (event, device_code(event)), fields);
    }

    /// Reads the logs of entities `ids` of `origin`, as device history (`from`/`to` on the
    /// record `timestamp`). Blocking (store reads).
    pub fn logs(&self, origin: Origin, ids: &[u64], q: &MessageQuery) -> Result<History, GwError> {
        let keys: Vec<u64> = ids.iter().map(|id| origin.key(*id)).collect();
        self.messages(&keys, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_described_once_and_close_codes_are_listed() {
        let v = toolbox_codes();
        let codes = v["codes"].as_object().expect("codes");
        assert_eq!(codes.len(), CODES.len(), "no code twice");
        for c in [1, 2, 3, 100, 101, 102, 300, 301, 330, 332, 333, 334, 335] {
            let entry = &codes[&c.to_string()];
            assert!(entry["description"].is_string(), "{c}");
            assert!(entry["severity"].is_string(), "{c}");
        }
        let closed = &codes["102"];
        assert_eq!(closed["extra_name"], "close_code");
        let extra = closed["extra_codes"].as_object().expect("extra_codes");
        let mut keys: Vec<u64> = extra.keys().filter_map(|k| k.parse().ok()).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![0, 4, 7, 8, 12, 17, 23]);
        assert_eq!(v["entities"]["base"], json!([1, 2, 3]));
        assert_eq!(v["entities"]["channels"], json!([100, 101, 102]));
        assert_eq!(v["entities"]["streams"], json!([400, 401, 402, 403, 404]));
        assert_eq!(v["entities"]["webhooks"], json!([410, 411, 412, 413, 414]));
        assert_eq!(v["entities"]["customer"], json!([600]));
        assert_eq!(v["entities"]["mqtt"], json!([700, 701, 702]));
    }

    #[test]
    fn logs_data_ignores_keys_tern_does_not_implement() {
        let d: LogsData =
            serde_json::from_value(json!({"count": 2, "reverse": true, "item_type": 11}))
                .expect("parses");
        assert_eq!((d.count, d.reverse), (Some(2), true));
        assert!(d.query().is_ok());
    }
}
