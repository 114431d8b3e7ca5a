//! The daemon's configuration: TOML file, embedded defaults, and the mapping onto the crates'
//! plain settings. Errors name the file, the line and the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tern_broker::BrokerConfig;
use tern_codec::QoS;

/// The whole configuration file. Every key is optional; missing keys take the defaults below,
/// which are also what `tern` runs with when given no file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: Listeners,
    pub mqtt: Mqtt,
    pub session: SessionSection,
    pub auth: Auth,
    pub store: Store,
    pub log: Log,
}

/// `[listeners]`: where tern accepts connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// MQTT over TCP.
    pub mqtt: Option<SocketAddr>,
    /// Cap on live connections over every listener.
    pub max_connections: usize,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            mqtt: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            max_connections: 100_000,
        }
    }
}

/// `[mqtt]`: protocol limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    pub max_qos: u8,
    pub max_packet_size: u32,
    pub receive_maximum: u16,
    pub topic_alias_maximum: u16,
    pub max_inflight: u16,
    /// Seconds; 0 accepts what clients ask.
    pub max_keep_alive: u16,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    pub max_client_id_len: usize,
    pub retain_available: bool,
    /// Echo the client's own id as Assigned Client Identifier in every v5 CONNACK (flespi).
    pub echo_client_id: bool,
}

impl Default for Mqtt {
    fn default() -> Self {
        let b = BrokerConfig::default();
        Mqtt {
            max_qos: b.max_qos as u8,
            max_packet_size: b.max_packet_size,
            receive_maximum: b.receive_maximum,
            topic_alias_maximum: b.topic_alias_maximum,
            max_inflight: b.max_inflight,
            max_keep_alive: b.max_keep_alive.unwrap_or(0),
            connect_timeout: b.connect_timeout.as_secs(),
            max_client_id_len: b.max_client_id_len,
            retain_available: b.retain_available,
            echo_client_id: b.echo_client_id,
        }
    }
}

/// `[session]`: session limits and queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    /// Cap on the Session Expiry Interval, seconds (4294967295 = never expires).
    pub max_expiry: u32,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub queue_qos0_offline: bool,
    pub max_subscriptions: usize,
}

impl Default for SessionSection {
    fn default() -> Self {
        let b = BrokerConfig::default();
        SessionSection {
            max_expiry: b.max_session_expiry,
            max_queued_messages: b.max_queued_messages,
            max_queued_bytes: b.max_queued_bytes,
            queue_qos0_offline: b.queue_qos0_offline,
            max_subscriptions: b.max_subscriptions_per_session,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Let clients without credentials in, as account `anonymous_cid`.
    pub anonymous: bool,
    pub anonymous_cid: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            anonymous: false,
            anonymous_cid: 1,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    pub data_dir: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&src, &file)
    }

    /// Parses and checks configuration text; `file` names it in errors.
    pub fn parse(src: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(src).map_err(|e| locate_toml_error(src, file, &e))?;
        config.validate(src, file)?;
        Ok(config)
    }

    fn validate(&self, src: &str, file: &str) -> Result<(), ConfigError> {
        let fail = |section: &str, key: &str, message: String| {
            let line = find_key_line(src, section, key);
            Err(ConfigError {
                file: file.to_string(),
                line,
                key: Some(format!("{section}.{key}")),
                message,
            })
        };
        if self.mqtt.max_qos > 2 {
            return fail(
                "mqtt",
                "max_qos",
                format!("must be 0, 1 or 2, not {}", self.mqtt.max_qos),
            );
        }
        if self.mqtt.max_packet_size < 64 {
            return fail(
                "mqtt",
                "max_packet_size",
                "must be at least 64 bytes".into(),
            );
        }
        if self.mqtt.receive_maximum == 0 {
            return fail("mqtt", "receive_maximum", "must be at least 1".into());
        }
        if self.mqtt.max_inflight == 0 {
            return fail("mqtt", "max_inflight", "must be at least 1".into());
        }
        if self.listeners.max_connections == 0 {
            return fail("listeners", "max_connections", "must be at least 1".into());
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) && tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err()
        {
            return fail(
                "log",
                "level",
                format!("`{}` is not a log level or filter", self.log.level),
            );
        }
        Ok(())
    }

    /// The broker core's settings.
    pub fn broker(&self) -> BrokerConfig {
        BrokerConfig {
            max_qos: QoS::from_u8(self.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce),
            max_packet_size: self.mqtt.max_packet_size,
            receive_maximum: self.mqtt.receive_maximum,
            topic_alias_maximum: self.mqtt.topic_alias_maximum,
            max_inflight: self.mqtt.max_inflight,
            max_keep_alive: (self.mqtt.max_keep_alive > 0).then_some(self.mqtt.max_keep_alive),
            max_session_expiry: self.session.max_expiry,
            max_queued_messages: self.session.max_queued_messages,
            max_queued_bytes: self.session.max_queued_bytes,
            queue_qos0_offline: self.session.queue_qos0_offline,
            retain_available: self.mqtt.retain_available,
            max_client_id_len: self.mqtt.max_client_id_len,
            connect_timeout: Duration::from_secs(self.mqtt.connect_timeout.max(1)),
            max_subscriptions_per_session: self.session.max_subscriptions,
            echo_client_id: self.mqtt.echo_client_id,
        }
    }
}

/// Turns a toml/serde error into file, line and key.
fn locate_toml_error(src: &str, file: &str, err: &toml::de::Error) -> ConfigError {
    let (line, key) = match err.span() {
        Some(span) => {
            let line = src[..span.start.min(src.len())].matches('\n').count() + 1;
            (Some(line), key_at_line(src, line))
        }
        None => (None, None),
    };
    ConfigError {
        file: file.to_string(),
        line,
        key,
        message: err.message().trim().to_string(),
    }
}

/// The dotted key defined on `line` (1-based): the nearest `[table]` above plus the key left of
/// `=`, or the table itself for a header line.
fn key_at_line(src: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, text) in src.lines().enumerate() {
        let t = text.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if i + 1 == line {
            if t.starts_with('[') {
                return Some(table);
            }
            let key = t.split('=').next()?.trim();
            if key.is_empty() {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}

/// The line (1-based) where `section.key` is set, if it is.
fn find_key_line(src: &str, section: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    for (i, text) in src.lines().enumerate() {
        let t = text.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if table == section && t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.listeners.mqtt, Some("0.0.0.0:1883".parse().unwrap()));
        assert_eq!(c.mqtt.max_qos, 2);
        assert_eq!(c.store.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = Config::parse("[mqtt]\nmax_qos = 1\nbogus = 3\n", "tern.toml").unwrap_err();
        assert_eq!(err.file, "tern.toml");
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("mqtt.bogus"));
        assert!(err.message.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Config::parse("[mqtt]\n\nmax_packet_size = \"big\"\n", "tern.toml").unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("mqtt.max_packet_size"));
        assert!(
            err.to_string()
                .starts_with("tern.toml:3: key `mqtt.max_packet_size`: "),
            "{err}"
        );
    }

    #[test]
    fn bad_address() {
        let err = Config::parse("[listeners]\nmqtt = \"localhost\"\n", "x.toml").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.key.as_deref(), Some("listeners.mqtt"));
    }

    #[test]
    fn out_of_range_value() {
        let err = Config::parse("[mqtt]\nmax_qos = 3\n", "x.toml").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.key.as_deref(), Some("mqtt.max_qos"));
    }
}
