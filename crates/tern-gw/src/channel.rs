//! A channel (docs/flespi.md#devices): the stored record, what clients may send, the item the
//! REST API and the state topics show, and how it reads a message's ident and timestamp.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GwError;
use crate::types::{Protocol, protocol, protocol_named};

/// Seconds a channel whose records are ACKed once kept (Teltonika) keeps the messages of
/// idents with no device when its `messages_ttl` is 0.
pub const UNKNOWN_IDENT_TTL: u64 = 86_400;

/// A channel as stored (the JSON document of `Op::PutChannel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub id: u64,
    pub cid: u64,
    pub name: String,
    pub enabled: bool,
    pub protocol_id: u64,
    pub configuration: Map<String, Value>,
    /// Seconds messages stay in the channel buffer (by `server.timestamp`); 0: not kept.
    pub messages_ttl: u64,
    /// The random credential of the HTTP ingest route (part of `uri`).
    pub secret: String,
    /// The REST base (`https://host:port`) the channel was created through: `uri` starts there.
    pub base: String,
}

/// Fields a client cannot set.
pub const READ_ONLY: &[&str] = &[
    "id",
    "cid",
    "protocol_name",
    "uri",
    "connections_count",
    "messages_size",
];

impl Channel {
    pub fn protocol(&self) -> Option<&'static Protocol> {
        protocol(self.protocol_id)
    }

    /// `<base>/gw/channels/<id>/ingest/<secret>` for HTTP channels, `<tracker_host>:<port>`
    /// for Teltonika ones; null for MQTT ones.
    pub fn uri(&self, tracker_host: &str) -> Value {
        match self.protocol().map(|p| p.name) {
            Some("http") => json!(format!(
                "{}/gw/channels/{}/ingest/{}",
                self.base, self.id, self.secret
            )),
            Some("teltonika") if self.tracker_port() != 0 => {
                json!(format!("{tracker_host}:{}", self.tracker_port()))
            }
            _ => Value::Null,
        }
    }

    /// Seconds the channel buffer keeps messages: `messages_ttl`; when that is 0, a channel of a
    /// protocol with sessions (its records are ACKed once kept) still keeps the messages of
    /// idents with no device for [`UNKNOWN_IDENT_TTL`].
    pub fn buffer_ttl(&self) -> u64 {
        if self.messages_ttl > 0 {
            self.messages_ttl
        } else if self.protocol().is_some_and(|p| p.sessions) {
            UNKNOWN_IDENT_TTL
        } else {
            0
        }
    }

    /// A Teltonika channel's `configuration.port` (0: none yet).
    pub fn tracker_port(&self) -> u16 {
        self.configuration
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0)
    }

    fn seconds(&self, key: &str, default: u64) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.configuration
                .get(key)
                .and_then(Value::as_u64)
                .unwrap_or(default),
        )
    }

    /// A Teltonika channel's limits (docs/teltonika.md#channel-and-device-type).
    pub fn tracker_options(&self) -> tern_net::teltonika::TeltonikaOptions {
        let d = tern_net::teltonika::TeltonikaOptions::default();
        let number = |key: &str, default: u64| {
            self.configuration
                .get(key)
                .and_then(Value::as_u64)
                .unwrap_or(default)
        };
        tern_net::teltonika::TeltonikaOptions {
            max_connections: usize::try_from(number("max_connections", d.max_connections as u64))
                .unwrap_or(d.max_connections),
            max_packet_size: u32::try_from(number("max_packet_size", u64::from(d.max_packet_size)))
                .unwrap_or(d.max_packet_size),
            handshake_timeout: self.seconds("handshake_timeout", d.handshake_timeout.as_secs()),
            frame_timeout: self.seconds("frame_timeout", d.frame_timeout.as_secs()),
            inactivity_timeout: self.seconds("inactivity_timeout", d.inactivity_timeout.as_secs()),
            command_queue: d.command_queue,
        }
    }

    /// A Teltonika channel's `configuration.command_timeout` (default 15 s).
    pub fn command_timeout(&self) -> std::time::Duration {
        self.seconds("command_timeout", 15)
    }

    /// A Teltonika channel's `configuration.accept_unknown` (default true).
    pub fn accept_unknown(&self) -> bool {
        self.configuration
            .get("accept_unknown")
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }

    /// The item: the stored fields, `protocol_name`, `uri`, and the state.
    pub fn item(&self, connections_count: u64, messages_size: u64, tracker_host: &str) -> Value {
        json!({
            "id": self.id,
            "cid": self.cid,
            "name": self.name,
            "enabled": self.enabled,
            "protocol_id": self.protocol_id,
            "protocol_name": self.protocol().map(|p| p.name),
            "configuration": self.configuration,
            "messages_ttl": self.messages_ttl,
            "uri": self.uri(tracker_host),
            "connections_count": connections_count,
            "messages_size": messages_size,
        })
    }

    fn text(&self, key: &str, default: &'static str) -> String {
        self.configuration
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    }

    /// `configuration.ident_field` (default `ident`).
    pub fn ident_field(&self) -> String {
        self.text("ident_field", "ident")
    }

    /// `configuration.timestamp_field` (default `timestamp`).
    pub fn timestamp_field(&self) -> String {
        self.text("timestamp_field", "timestamp")
    }

    /// `configuration.skip_invalid` (default false).
    pub fn skip_invalid(&self) -> bool {
        self.configuration
            .get("skip_invalid")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// An MQTT channel on tern's own broker: its topic filters.
    pub fn internal_topics(&self) -> Option<Vec<String>> {
        if self.protocol().map(|p| p.name) != Some("mqtt") {
            return None;
        }
        if self
            .configuration
            .get("broker")
            .is_some_and(|b| b.as_str() != Some("internal"))
        {
            return None;
        }
        let topics = self.configuration.get("topics")?.as_array()?;
        Some(
            topics
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        )
    }

    /// `configuration.ident_topic_level` (0-based).
    pub fn ident_topic_level(&self) -> Option<usize> {
        self.configuration
            .get("ident_topic_level")
            .and_then(Value::as_u64)
            .and_then(|l| usize::try_from(l).ok())
    }

    /// `configuration.json_path`: dot-separated keys to the array inside a posted object.
    pub fn json_path(&self) -> Option<String> {
        self.configuration
            .get("json_path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
    }
}

/// A new channel (POST /gw/channels).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub protocol_id: Option<u64>,
    pub protocol_name: Option<String>,
    pub configuration: Option<Map<String, Value>>,
    pub messages_ttl: Option<u64>,
    pub cid: Option<u64>,
}

/// Changes of PUT/PATCH /gw/channels/{sel}.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelChanges {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub configuration: Option<Map<String, Value>>,
    pub messages_ttl: Option<u64>,
}

impl ChannelInput {
    /// The channel this input describes (id, account, secret and base filled in here).
    pub fn into_channel(self, cid: u64, secret: String, base: String) -> Result<Channel, GwError> {
        let protocol = match (self.protocol_id, self.protocol_name.as_deref()) {
            (Some(id), _) => protocol(id),
            (None, Some(name)) => protocol_named(name),
            (None, None) => {
                return Err(GwError::Invalid(
                    "protocol_id (or protocol_name) is required".into(),
                ));
            }
        }
        .ok_or_else(|| {
            let known: Vec<String> = crate::types::PROTOCOLS
                .iter()
                .map(|p| format!("{} ({})", p.id, p.name))
                .collect();
            GwError::Invalid(format!("unknown protocol; known: {}", known.join(", ")))
        })?;
        let c = Channel {
            id: 0,
            cid,
            name: self.name.unwrap_or_default(),
            enabled: self.enabled.unwrap_or(true),
            protocol_id: protocol.id,
            configuration: self.configuration.unwrap_or_default(),
            messages_ttl: self.messages_ttl.unwrap_or(0),
            secret,
            base,
        };
        check(&c)?;
        Ok(c)
    }
}

impl ChannelChanges {
    /// `channel` with the changes; `merge` (PATCH) merges `configuration` (RFC 7396).
    pub fn apply(&self, channel: &Channel, merge: bool) -> Result<Channel, GwError> {
        let mut c = channel.clone();
        if let Some(v) = &self.name {
            c.name = v.clone();
        }
        if let Some(v) = self.enabled {
            c.enabled = v;
        }
        if let Some(v) = &self.configuration {
            c.configuration = if merge {
                crate::device::merged(&c.configuration, v)
            } else {
                v.clone()
            };
        }
        if let Some(v) = self.messages_ttl {
            c.messages_ttl = v;
        }
        check(&c)?;
        Ok(c)
    }
}

/// The rules every channel keeps.
fn check(c: &Channel) -> Result<(), GwError> {
    if c.name.len() > 255 {
        return Err(GwError::Invalid("name is longer than 255 bytes".into()));
    }
    let conf = &c.configuration;
    for key in ["ident_field", "timestamp_field", "json_path"] {
        if conf.get(key).is_some_and(|v| !v.is_string()) {
            return Err(GwError::Invalid(format!(
                "configuration.{key} must be a string"
            )));
        }
    }
    if conf.get("skip_invalid").is_some_and(|v| !v.is_boolean()) {
        return Err(GwError::Invalid(
            "configuration.skip_invalid must be a boolean".into(),
        ));
    }
    match c.protocol().map(|p| p.name) {
        Some("mqtt") => check_mqtt(conf)?,
        Some("teltonika") => check_teltonika(conf)?,
        _ => {}
    }
    Ok(())
}

/// A Teltonika channel's configuration: known keys only, numbers in their ranges.
fn check_teltonika(conf: &Map<String, Value>) -> Result<(), GwError> {
    const NUMBERS: &[(&str, u64, u64)] = &[
        ("port", 0, 65535),
        ("max_connections", 1, 1_000_000),
        ("max_packet_size", 3, 1 << 20),
        ("handshake_timeout", 1, 86_400),
        ("frame_timeout", 1, 86_400),
        ("inactivity_timeout", 1, 86_400 * 7),
        ("command_timeout", 1, 86_400),
    ];
    for (key, v) in conf {
        if let Some((_, lo, hi)) = NUMBERS.iter().find(|(k, _, _)| k == key) {
            if !v.as_u64().is_some_and(|n| (*lo..=*hi).contains(&n)) {
                return Err(GwError::Invalid(format!(
                    "configuration.{key} must be an integer from {lo} to {hi}"
                )));
            }
        } else if key == "accept_unknown" || key == "udp" {
            if !v.is_boolean() {
                return Err(GwError::Invalid(format!(
                    "configuration.{key} must be a boolean"
                )));
            }
        } else {
            return Err(GwError::Invalid(format!(
                "configuration.{key}: unknown for teltonika channels"
            )));
        }
    }
    if conf.get("udp") == Some(&Value::Bool(true)) {
        return Err(GwError::Invalid(
            "configuration.udp: UDP is not supported yet (docs/teltonika.md)".into(),
        ));
    }
    Ok(())
}

/// An MQTT channel's configuration: `broker` `"internal"` (the default) or an external broker
/// object, `topics` a non-empty array of filters (outside `flespi/` and `$` on tern itself), and
/// `ident_topic_level` (0-based) if any.
fn check_mqtt(conf: &Map<String, Value>) -> Result<(), GwError> {
    match conf.get("broker") {
        None => {}
        Some(Value::String(s)) if s == "internal" => {}
        Some(Value::Object(broker)) => {
            crate::mqtt_external::client_options(0, broker).map_err(GwError::Invalid)?;
            crate::mqtt_external::qos_of(broker).map_err(GwError::Invalid)?;
        }
        Some(_) => {
            return Err(GwError::Invalid(
                "configuration.broker: \"internal\" or {uri, username, password, client_id, qos}"
                    .into(),
            ));
        }
    }
    let Some(Value::Array(topics)) = conf.get("topics") else {
        return Err(GwError::Invalid(
            "configuration.topics (an array of topic filters) is required".into(),
        ));
    };
    if topics.is_empty() {
        return Err(GwError::Invalid("configuration.topics is empty".into()));
    }
    for t in topics {
        let Some(f) = t.as_str() else {
            return Err(GwError::Invalid(
                "configuration.topics: every filter is a string".into(),
            ));
        };
        tern_topic::validate_topic_filter(f)
            .map_err(|e| GwError::Invalid(format!("configuration.topics: `{f}`: {e}")))?;
        let internal = !matches!(conf.get("broker"), Some(Value::Object(_)));
        if internal && (f.starts_with("flespi/") || f.starts_with('$')) {
            return Err(GwError::Invalid(format!(
                "configuration.topics: `{f}`: a channel cannot subscribe to flespi/ or $ topics"
            )));
        }
    }
    if conf
        .get("ident_topic_level")
        .is_some_and(|v| v.as_u64().is_none())
    {
        return Err(GwError::Invalid(
            "configuration.ident_topic_level must be a non-negative integer".into(),
        ));
    }
    Ok(())
}

/// Why one message of a channel was refused.
pub type Refusal = String;

/// The ident of message `m` per `ident_field`: a non-empty string (numbers are written out)
/// that can be one topic level (no `/`, `+`, `#`, control characters).
pub fn ident_of(m: &Map<String, Value>, field: &str) -> Result<String, Refusal> {
    let ident = match m.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(format!("`{field}` must be a string")),
        None => return Err(format!("no `{field}`")),
    };
    if ident.is_empty() || ident.len() > 255 {
        return Err(format!("`{field}` must have 1 to 255 bytes"));
    }
    if ident
        .chars()
        .any(|ch| matches!(ch, '/' | '+' | '#') || ch.is_control())
    {
        return Err(format!(
            "`{field}` must not contain `/`, `+`, `#` or control characters"
        ));
    }
    Ok(ident)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Result<Channel, GwError> {
        serde_json::from_value::<ChannelInput>(v)
            .expect("input")
            .into_channel(1, "s".into(), "http://h:1".into())
    }

    #[test]
    fn channels_check_their_input() {
        let c = input(json!({"name": "c", "protocol_name": "http"})).expect("valid");
        assert_eq!(c.protocol_id, 1);
        assert_eq!(c.ident_field(), "ident");
        assert!(!c.skip_invalid());
        assert!(input(json!({"name": "c"})).is_err());
        assert!(input(json!({"protocol_id": 9})).is_err());
        assert!(input(json!({"protocol_id": 1, "configuration": {"skip_invalid": 1}})).is_err());
        let item = c.item(0, 0, "h");
        assert_eq!(item["uri"], "http://h:1/gw/channels/0/ingest/s");
        assert_eq!(item["protocol_name"], "http");
    }

    #[test]
    fn idents_are_one_topic_level() {
        let m = |v: Value| v.as_object().cloned().expect("object");
        assert_eq!(
            ident_of(&m(json!({"ident": "a1"})), "ident"),
            Ok("a1".into())
        );
        assert_eq!(ident_of(&m(json!({"imei": 35})), "imei"), Ok("35".into()));
        assert!(ident_of(&m(json!({"ident": "a/b"})), "ident").is_err());
        assert!(ident_of(&m(json!({"ident": ""})), "ident").is_err());
        assert!(ident_of(&m(json!({})), "ident").is_err());
    }
}
