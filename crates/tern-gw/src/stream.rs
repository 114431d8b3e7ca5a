//! A stream (docs/flespi.md#streams, spec flespi-gw §6): the stored record, what clients may
//! send, the item the REST API and the state topics show, and the checks of an HTTP stream's
//! `configuration`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tern_expr::Expr;

use crate::error::GwError;

/// The stream protocols tern serves (`GET /gw/stream-protocols/{sel}`): `(id, name, title)`.
pub const STREAM_PROTOCOLS: &[(u64, &str, &str)] = &[
    (1, "http", "HTTP POST of JSON arrays"),
    (2, "mqtt", "MQTT PUBLISH to another broker"),
];

/// The protocol of an HTTP stream.
pub const HTTP: u64 = 1;
/// The protocol of an MQTT stream.
pub const MQTT: u64 = 2;
/// `configuration.topic` of an MQTT stream when not given.
pub const DEFAULT_TOPIC: &str = "flespi/message/gw/devices/%device.id%";

/// `queue_ttl` when not given (flespi's: one day).
pub const DEFAULT_QUEUE_TTL: u64 = 86_400;
/// `queue_max_bytes` when not given (tern's: 100 MiB).
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// `configuration.limit_messages` when not given, and its most.
pub const LIMIT_MESSAGES: u64 = 1000;
/// `configuration.timeout` (seconds) when not given.
pub const DEFAULT_TIMEOUT: u64 = 30;

/// The item of stream protocol `(id, name, title)`.
pub fn protocol_item(p: &(u64, &str, &str)) -> Value {
    json!({"id": p.0, "name": p.1, "title": p.2})
}

/// A stream as stored (the JSON document of `Op::PutStream`), with its sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    pub id: u64,
    pub cid: u64,
    pub name: String,
    pub enabled: bool,
    pub protocol_id: u64,
    /// Seconds a queued message waits at most; older ones are dropped by the retention sweep.
    pub queue_ttl: u64,
    /// Bytes the queue holds at most; past them the oldest go (policy: drop oldest).
    pub queue_max_bytes: u64,
    /// A flespi expression a message must match to be queued (none: every message).
    #[serde(default)]
    pub validate_message: Option<String>,
    pub configuration: Map<String, Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The devices whose messages the stream takes (`/gw/streams/{sel}/devices/{sel}`).
    #[serde(default)]
    pub devices: Vec<u64>,
    /// The channels whose messages the stream takes.
    #[serde(default)]
    pub channels: Vec<u64>,
}

/// Fields a client cannot set.
pub const READ_ONLY: &[&str] = &["id", "cid", "protocol_name", "queue_size", "connected"];

impl Stream {
    pub fn protocol_name(&self) -> Option<&'static str> {
        STREAM_PROTOCOLS
            .iter()
            .find(|p| p.0 == self.protocol_id)
            .map(|p| p.1)
    }

    /// The item: the stored fields, `protocol_name`, and the state.
    pub fn item(&self, queue_size: u64, connected: bool) -> Value {
        json!({
            "id": self.id,
            "cid": self.cid,
            "name": self.name,
            "enabled": self.enabled,
            "protocol_id": self.protocol_id,
            "protocol_name": self.protocol_name(),
            "queue_ttl": self.queue_ttl,
            "queue_max_bytes": self.queue_max_bytes,
            "validate_message": self.validate_message,
            "configuration": self.configuration,
            "metadata": self.metadata,
            "queue_size": queue_size,
            "connected": connected,
        })
    }

    /// The compiled `validate_message`, if any (checked when the stream was made).
    pub fn validator(&self) -> Option<Expr> {
        self.validate_message
            .as_deref()
            .and_then(|e| Expr::parse(e).ok())
    }

    /// `configuration.uri` (checked: an http or https URI).
    pub fn uri(&self) -> &str {
        self.configuration
            .get("uri")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Whether each ident's messages go to their own URL (`%ident%` in the URI).
    pub fn per_ident(&self) -> bool {
        self.uri().contains(IDENT)
    }

    /// `configuration.headers` as `(name, value)` pairs.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.configuration
            .get("headers")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|h| {
                        Some((
                            h.get("name")?.as_str()?.to_string(),
                            h.get("value")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `configuration.ca`: the PEM of the CA an https receiver is checked against.
    pub fn ca(&self) -> Option<&str> {
        self.configuration.get("ca").and_then(Value::as_str)
    }

    fn number(&self, key: &str, default: u64) -> u64 {
        self.configuration
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or(default)
    }

    /// `configuration.timeout`: seconds one POST may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.number("timeout", DEFAULT_TIMEOUT))
    }

    /// `configuration.limit_messages`: the most messages one POST carries.
    pub fn limit_messages(&self) -> usize {
        usize::try_from(self.number("limit_messages", LIMIT_MESSAGES)).unwrap_or(1000)
    }
}

/// The placeholder of a per-ident URI.
pub const IDENT: &str = "%ident%";

/// A new stream (POST /gw/streams).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamInput {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub protocol_id: Option<u64>,
    pub protocol_name: Option<String>,
    pub queue_ttl: Option<u64>,
    pub queue_max_bytes: Option<u64>,
    pub validate_message: Option<String>,
    pub configuration: Option<Map<String, Value>>,
    pub metadata: Option<Map<String, Value>>,
    pub cid: Option<u64>,
}

/// Changes of PUT/PATCH /gw/streams/{sel}.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamChanges {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub queue_ttl: Option<u64>,
    pub queue_max_bytes: Option<u64>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "some_value")]
    pub validate_message: Option<Value>,
    pub configuration: Option<Map<String, Value>>,
    pub metadata: Option<Map<String, Value>>,
}

/// Keeps an explicit `null` apart from an absent field.
fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl StreamInput {
    /// The stream this input describes (id and account filled in here).
    pub fn into_stream(self, cid: u64) -> Result<Stream, GwError> {
        let protocol = match (self.protocol_id, self.protocol_name.as_deref()) {
            (Some(id), _) => STREAM_PROTOCOLS.iter().find(|p| p.0 == id),
            (None, Some(name)) => STREAM_PROTOCOLS.iter().find(|p| p.1 == name),
            (None, None) => {
                return Err(GwError::Invalid(
                    "protocol_id (or protocol_name) is required".into(),
                ));
            }
        }
        .ok_or_else(|| {
            GwError::Invalid("unknown stream protocol; known: 1 (http), 2 (mqtt)".into())
        })?;
        let s = Stream {
            id: 0,
            cid,
            name: self.name.unwrap_or_default(),
            enabled: self.enabled.unwrap_or(true),
            protocol_id: protocol.0,
            queue_ttl: self.queue_ttl.unwrap_or(DEFAULT_QUEUE_TTL),
            queue_max_bytes: self.queue_max_bytes.unwrap_or(DEFAULT_QUEUE_MAX_BYTES),
            validate_message: self.validate_message,
            configuration: self.configuration.unwrap_or_default(),
            metadata: self.metadata.unwrap_or_default(),
            devices: Vec::new(),
            channels: Vec::new(),
        };
        check(&s)?;
        Ok(s)
    }
}

impl StreamChanges {
    /// `stream` with the changes; `merge` (PATCH) merges `configuration` and `metadata`
    /// (RFC 7396).
    pub fn apply(&self, stream: &Stream, merge: bool) -> Result<Stream, GwError> {
        let mut s = stream.clone();
        if let Some(v) = &self.name {
            s.name = v.clone();
        }
        if let Some(v) = self.enabled {
            s.enabled = v;
        }
        if let Some(v) = self.queue_ttl {
            s.queue_ttl = v;
        }
        if let Some(v) = self.queue_max_bytes {
            s.queue_max_bytes = v;
        }
        match &self.validate_message {
            None => {}
            Some(Value::Null) => s.validate_message = None,
            Some(Value::String(e)) => s.validate_message = Some(e.clone()),
            Some(_) => {
                return Err(GwError::Invalid(
                    "validate_message must be a string (an expression) or null".into(),
                ));
            }
        }
        let patch = |old: &Map<String, Value>, new: &Map<String, Value>| {
            if merge {
                crate::device::merged(old, new)
            } else {
                new.clone()
            }
        };
        if let Some(v) = &self.configuration {
            s.configuration = patch(&s.configuration, v);
        }
        if let Some(v) = &self.metadata {
            s.metadata = patch(&s.metadata, v);
        }
        check(&s)?;
        Ok(s)
    }
}

/// The rules every stream keeps.
fn check(s: &Stream) -> Result<(), GwError> {
    if s.name.len() > 255 {
        return Err(GwError::Invalid("name is longer than 255 bytes".into()));
    }
    if let Some(e) = &s.validate_message {
        Expr::parse(e)
            .map_err(|err| GwError::Invalid(format!("validate_message does not parse: {err}")))?;
    }
    match s.protocol_id {
        HTTP => check_http(&s.configuration)?,
        MQTT => check_mqtt(&s.configuration)?,
        _ => {}
    }
    Ok(())
}

impl Stream {
    /// The host the stream connects to, when the configuration names one (not one made of
    /// `%ident%`).
    pub fn target_host(&self) -> Option<String> {
        match self.protocol_id {
            HTTP if !self.uri().contains(IDENT) => check_uri(self.uri())
                .ok()
                .and_then(|u| u.host().map(str::to_string)),
            HTTP => {
                // The host is known unless `%ident%` is in it.
                let u = check_uri(&self.uri().replace(IDENT, "ident")).ok()?;
                let host = u.host()?;
                (!host.contains("ident")).then(|| host.to_string())
            }
            MQTT => self
                .uri()
                .parse::<tern_mqttc::BrokerUri>()
                .ok()
                .map(|u| u.host),
            _ => None,
        }
    }

    /// Refuses a literal target address `policy` forbids ([`crate::outbound`]); a host name is
    /// checked when connecting.
    pub fn check_outbound(&self, policy: crate::outbound::OutboundPolicy) -> Result<(), GwError> {
        match self.target_host() {
            Some(host) => crate::outbound::check_literal(&host, policy)
                .map_err(|e| GwError::Invalid(format!("configuration.uri: {e}"))),
            None => Ok(()),
        }
    }
}

/// An MQTT stream's configuration: `uri` (mqtt or mqtts, host and port), `username`,
/// `password`, `client_id` (strings), `topic` (a `%expr%` template), `qos` (0 or 1), `retain`
/// (boolean), `ca` (PEM); no other key.
fn check_mqtt(conf: &Map<String, Value>) -> Result<(), GwError> {
    let invalid = |m: String| Err(GwError::Invalid(m));
    for (key, v) in conf {
        match key.as_str() {
            "uri" => {}
            "username" | "password" | "client_id" => {
                if !v.is_string() {
                    return invalid(format!("configuration.{key} is a string"));
                }
                if key == "client_id"
                    && v.as_str().is_some_and(|c| c.is_empty() || c.len() > 65_535)
                {
                    return invalid("configuration.client_id is 1 to 65,535 bytes".into());
                }
            }
            "topic" => {
                let Some(t) = v.as_str() else {
                    return invalid("configuration.topic is a string (a %expr% template)".into());
                };
                check_topic_template(t)?;
            }
            "qos" => {
                if !matches!(v.as_u64(), Some(0 | 1)) {
                    return invalid("configuration.qos is 0 or 1".into());
                }
            }
            "retain" => {
                if !v.is_boolean() {
                    return invalid("configuration.retain is a boolean".into());
                }
            }
            "ca" => {
                if !v
                    .as_str()
                    .is_some_and(|p| p.contains("-----BEGIN CERTIFICATE-----"))
                {
                    return invalid(
                        "configuration.ca is the PEM text of the broker's CA certificate".into(),
                    );
                }
            }
            _ => return invalid(format!("configuration.{key}: unknown for mqtt streams")),
        }
    }
    let uri = conf.get("uri").and_then(Value::as_str).ok_or_else(|| {
        GwError::Invalid("configuration.uri (mqtt[s]://host:port) is required".into())
    })?;
    uri.parse::<tern_mqttc::BrokerUri>()
        .map(|_| ())
        .map_err(|e| GwError::Invalid(format!("configuration.uri: {e}")))
}

/// A topic template: it parses, and its constant parts make a valid topic name (no
/// wildcards, not empty).
fn check_topic_template(t: &str) -> Result<tern_expr::Template, GwError> {
    let template = tern_expr::Template::parse(t)
        .map_err(|e| GwError::Invalid(format!("configuration.topic: {e}")))?;
    // Its text (expressions render "null" over an empty message) must make a topic name.
    let text = template.render(&Value::Object(Map::new()), 0.0);
    topic_name_ok(&text).map_err(|why| GwError::Invalid(format!("configuration.topic: {why}")))?;
    Ok(template)
}

/// Whether `topic` is a valid MQTT topic name to publish to.
pub fn topic_name_ok(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("a topic name is not empty");
    }
    if topic.len() > 65_535 {
        return Err("a topic name is at most 65,535 bytes");
    }
    if topic.contains(['+', '#', '\0']) {
        return Err("a topic name has no wildcard (+, #) and no NUL");
    }
    Ok(())
}

/// The topic template of an MQTT stream (`configuration.topic`, checked when the stream was
/// made, or the default).
pub fn topic_template(s: &Stream) -> Result<tern_expr::Template, tern_expr::TemplateError> {
    let t = s
        .configuration
        .get("topic")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_TOPIC);
    tern_expr::Template::parse(t)
}

/// An HTTP stream's configuration: `uri` (http or https, `%ident%` allowed), `headers`
/// (`[{name, value}]`), `ca` (PEM), `timeout` (1 to 300 s), `limit_messages` (1 to 1,000);
/// no other key.
fn check_http(conf: &Map<String, Value>) -> Result<(), GwError> {
    for (key, v) in conf {
        match key.as_str() {
            "uri" => {}
            "headers" => {
                let ok = v.as_array().is_some_and(|list| {
                    list.iter().all(|h| {
                        let name = h.get("name").and_then(Value::as_str);
                        let value = h.get("value").and_then(Value::as_str);
                        name.is_some_and(|n| hyper::header::HeaderName::try_from(n).is_ok())
                            && value
                                .is_some_and(|v| hyper::header::HeaderValue::try_from(v).is_ok())
                    })
                });
                if !ok {
                    return Err(GwError::Invalid(
                        "configuration.headers is an array of {\"name\", \"value\"} strings, valid in HTTP"
                            .into(),
                    ));
                }
            }
            "ca" => {
                if !v
                    .as_str()
                    .is_some_and(|p| p.contains("-----BEGIN CERTIFICATE-----"))
                {
                    return Err(GwError::Invalid(
                        "configuration.ca is the PEM text of the receiver's CA certificate".into(),
                    ));
                }
            }
            "timeout" => {
                if !v.as_u64().is_some_and(|n| (1..=300).contains(&n)) {
                    return Err(GwError::Invalid(
                        "configuration.timeout must be an integer from 1 to 300".into(),
                    ));
                }
            }
            "limit_messages" => {
                if !v
                    .as_u64()
                    .is_some_and(|n| (1..=LIMIT_MESSAGES).contains(&n))
                {
                    return Err(GwError::Invalid(format!(
                        "configuration.limit_messages must be an integer from 1 to {LIMIT_MESSAGES}"
                    )));
                }
            }
            _ => {
                return Err(GwError::Invalid(format!(
                    "configuration.{key}: unknown for http streams"
                )));
            }
        }
    }
    let uri = conf
        .get("uri")
        .and_then(Value::as_str)
        .ok_or_else(|| GwError::Invalid("configuration.uri (http[s]://...) is required".into()))?;
    check_uri(&uri.replace(IDENT, "ident"))
        .map(|_| ())
        .map_err(|e| GwError::Invalid(format!("configuration.uri: {e}")))
}

/// An absolute http or https URI with a host.
fn check_uri(uri: &str) -> Result<hyper::Uri, String> {
    let parsed: hyper::Uri = uri.parse().map_err(|e| format!("`{uri}`: {e}"))?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{uri}`: the scheme must be http or https")),
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(format!("`{uri}`: no host"));
    }
    Ok(parsed)
}

/// The URI one batch goes to: `%ident%` replaced (percent-encoded as a path segment).
pub fn target_uri(uri: &str, ident: Option<&str>) -> Result<hyper::Uri, String> {
    let uri = match ident {
        Some(ident) if uri.contains(IDENT) => uri.replace(IDENT, &encode_segment(ident)),
        _ => uri.to_string(),
    };
    check_uri(&uri)
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Result<Stream, GwError> {
        serde_json::from_value::<StreamInput>(v)
            .map_err(|e| GwError::Invalid(e.to_string()))?
            .into_stream(1)
    }

    #[test]
    fn streams_check_their_input() {
        let s = input(json!({"name": "s", "protocol_name": "http",
            "configuration": {"uri": "http://127.0.0.1:9/post/%ident%", "timeout": 5,
                "headers": [{"name": "x-key", "value": "v"}]}}))
        .expect("valid");
        assert_eq!((s.protocol_id, s.queue_ttl), (HTTP, DEFAULT_QUEUE_TTL));
        assert!(s.per_ident());
        assert_eq!(s.headers(), vec![("x-key".into(), "v".into())]);
        assert_eq!(s.timeout(), std::time::Duration::from_secs(5));
        assert_eq!(
            target_uri(s.uri(), Some("a b")).map(|u| u.to_string()),
            Ok("http://127.0.0.1:9/post/a%20b".into())
        );
        let item = s.item(0, false);
        assert_eq!(item["protocol_name"], "http");
        for bad in [
            json!({"protocol_id": 1}),
            json!({"protocol_id": 1, "configuration": {"uri": "ftp://h/x"}}),
            json!({"protocol_id": 1, "configuration": {"uri": "not a uri"}}),
            json!({"protocol_id": 1, "configuration": {"uri": "http://h/", "x": 1}}),
            json!({"protocol_id": 1, "configuration": {"uri": "http://h/", "timeout": 0}}),
            json!({"protocol_id": 1, "configuration": {"uri": "http://h/", "headers": [{"name": "a b", "value": "v"}]}}),
            json!({"protocol_id": 1, "validate_message": "((", "configuration": {"uri": "http://h/"}}),
            json!({"protocol_id": 9, "configuration": {"uri": "http://h/"}}),
        ] {
            assert!(input(bad.clone()).is_err(), "{bad}");
        }
        let policy_off = crate::outbound::OutboundPolicy {
            private_targets: false,
        };
        assert!(s.check_outbound(policy_off).is_err());
        assert!(s.check_outbound(Default::default()).is_ok());
        let changed = StreamChanges {
            validate_message: Some(Value::Null),
            ..Default::default()
        };
        assert_eq!(
            changed.apply(&s, true).expect("valid").validate_message,
            None
        );
    }

    #[test]
    fn mqtt_streams_check_their_input() {
        let s = input(json!({"protocol_name": "mqtt", "configuration": {
            "uri": "mqtts://broker.example.com:8883", "username": "u", "password": "p",
            "client_id": "c", "topic": "out/%ident%/%{n % 2}%", "qos": 0, "retain": true}}))
        .expect("valid");
        assert_eq!(s.protocol_id, MQTT);
        assert_eq!(s.target_host().as_deref(), Some("broker.example.com"));
        let t = topic_template(&s).expect("template");
        assert_eq!(t.render(&json!({"ident": "a", "n": 3}), 0.0), "out/a/1");
        let d = input(json!({"protocol_id": 2, "configuration": {"uri": "mqtt://10.0.0.1"}}))
            .expect("valid");
        assert_eq!(
            topic_template(&d)
                .expect("default")
                .render(&json!({"device.id": 7}), 0.0),
            "flespi/message/gw/devices/7"
        );
        let off = crate::outbound::OutboundPolicy {
            private_targets: false,
        };
        let refused = d.check_outbound(off).expect_err("private");
        assert!(refused.to_string().contains("private"), "{refused}");
        for (bad, why) in [
            (json!({}), "configuration.uri"),
            (json!({"uri": "http://h"}), "configuration.uri"),
            (json!({"uri": "mqtt://h:0"}), "configuration.uri"),
            (json!({"uri": "mqtt://h", "qos": 2}), "configuration.qos"),
            (
                json!({"uri": "mqtt://h", "topic": "a/%(%"}),
                "configuration.topic",
            ),
            (
                json!({"uri": "mqtt://h", "topic": "a/#"}),
                "configuration.topic",
            ),
            (
                json!({"uri": "mqtt://h", "topic": ""}),
                "configuration.topic",
            ),
            (
                json!({"uri": "mqtt://h", "retain": 1}),
                "configuration.retain",
            ),
            (json!({"uri": "mqtt://h", "ca": "x"}), "configuration.ca"),
            (
                json!({"uri": "mqtt://h", "headers": []}),
                "configuration.headers",
            ),
        ] {
            let err = input(json!({"protocol_id": 2, "configuration": bad.clone()}))
                .expect_err("refused");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        // An expression may hold a '+'; a rendered wildcard is refused when publishing.
        assert!(
            input(json!({"protocol_id": 2, "configuration": {"uri": "mqtt://h", "topic": "a/%{n + 1}%"}}))
                .is_ok()
        );
        assert!(topic_name_ok("a/+").is_err());
        assert!(topic_name_ok("a/b").is_ok());
    }
}
