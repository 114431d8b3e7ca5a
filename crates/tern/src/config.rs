//! The daemon's configuration: embedded defaults, the TOML file, `TERN_*` environment
//! overrides and command-line overrides, in that order (each later layer wins), then the
//! mapping onto the crates' plain settings.
//!
//! Every error names where the bad value came from and the key: the file and line
//! (`tern.toml:12: key `mqtt.max_qos`: ...`), the environment variable or the command-line
//! option. A configuration that names a certificate file checks that the file loads.
//!
//! Environment overrides: `TERN_<SECTION>_<KEY>=value`, e.g. `TERN_LISTENERS_MQTT=0.0.0.0:1883`,
//! `TERN_TLS_CERT=/certs/server.pem`, `TERN_MQTT_MAX_QOS=1`. A value is read as a TOML value
//! when it is one (numbers, booleans) and as a string otherwise. Variables whose first word is
//! not a section are ignored (container platforms set `TERN_PORT` and the like); an unknown key
//! inside a known section is an error. `TERN_LOG` (a tracing filter) and `TERN_CONFIG` (the
//! file) are not overrides.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tern_broker::BrokerConfig;
use tern_codec::QoS;
use tern_net::{ClientAuth, TlsError, TlsFiles, WsSettings};

/// The whole configuration file. Every key is optional; missing keys take the defaults below,
/// which are also what `tern` runs with when given no file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: Listeners,
    pub tls: Tls,
    pub websocket: Websocket,
    pub http: Http,
    pub mqtt: Mqtt,
    pub session: SessionSection,
    pub auth: Auth,
    pub store: Store,
    pub log: Log,
    pub metrics: Metrics,
    pub quotas: Quotas,
    /// The devices layer (`/gw/...`).
    pub gw: Gw,
    /// Accounts to create at start if missing (`[[accounts]]`).
    pub accounts: Vec<AccountSpec>,
    /// Tokens to create (or update) at start, by key (`[[tokens]]`).
    pub tokens: Vec<TokenSpec>,
    /// Cluster mode (`[cluster]`): off while `nats` is empty.
    pub cluster: Cluster,
}

/// `[cluster]`: tern nodes sharing publications and retained messages through NATS (issue 17,
/// first slice; README "Cluster mode").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// NATS server URLs, e.g. `["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]`. Empty: a
    /// single node, no NATS.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster. Empty: the host name.
    pub node: String,
    /// Replicas of the JetStream KV bucket of retained messages and of the QoS 1/2 shard
    /// streams (at most the NATS servers; 3 in a 3-server NATS cluster).
    pub replicas: usize,
    /// QoS 1/2 shard streams (`TERN_Q_0` ..): a topic's messages stay in one, in order.
    pub shards: u32,
    /// Seconds the shard streams keep a message.
    pub stream_max_age: u64,
    /// Seconds the devices log (`TERN_GW`) keeps a change: how long a node may be away and
    /// still get the device messages stored meanwhile.
    pub gw_log_max_age: u64,
    /// Messages each outgoing queue (live, retained) holds; full: the newest is dropped and
    /// counted (`tern_cluster_dropped_total{queue}`).
    pub queue: usize,
    /// Seconds to wait for NATS at start before giving up.
    pub connect_timeout: u64,
    /// Seconds NATS (or its JetStream quorum) may be out of reach before this node closes its
    /// clients (v5: DISCONNECT 0x9C), refuses CONNECT with 0x88 and answers `/health` 503, so
    /// that a load balancer moves them; 0:
    /// never.
    pub unavailable_after: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            nats: Vec::new(),
            node: String::new(),
            replicas: 1,
            shards: 4,
            stream_max_age: 3_600,
            gw_log_max_age: 7 * 86_400,
            queue: 65_536,
            connect_timeout: 10,
            unavailable_after: 10,
        }
    }
}

/// `[quotas]`: per-account limits (an account's own `limits` override them). Each bounds an
/// account together with every account below it, the top account included.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// MQTT sessions (0x97 past it).
    pub mqtt_sessions: u64,
    /// Subscriptions of all sessions together (`session.max_subscriptions` bounds each one).
    pub mqtt_subscriptions: u64,
    /// Bytes of retained messages (topic + payload).
    pub retained_bytes: u64,
    /// Accounts below the account.
    pub subaccounts: u64,
    /// Tokens.
    pub tokens: u64,
    /// Devices (`/gw/devices`).
    pub devices: u64,
    /// Channels (`/gw/channels`).
    pub channels: u64,
    /// Bytes of stored device messages and channel buffers (the stored JSON).
    pub messages_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        let d = tern_broker::accounts::QuotaDefaults::default();
        Quotas {
            mqtt_sessions: d.mqtt_sessions,
            mqtt_subscriptions: d.mqtt_subscriptions,
            retained_bytes: d.retained_bytes,
            subaccounts: d.subaccounts,
            tokens: d.tokens,
            devices: d.devices,
            channels: d.channels,
            messages_bytes: d.messages_bytes,
        }
    }
}

/// One `[[accounts]]` entry: created at start if no account has this id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    pub id: u64,
    pub name: String,
    /// The parent account; the top account by default.
    #[serde(default)]
    pub parent: Option<u64>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub mqtt_sessions: Option<u64>,
    #[serde(default)]
    pub retained_bytes: Option<u64>,
}

/// One `[[tokens]]` entry: created at start, or updated if a token with this key exists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// 64 letters and digits.
    pub key: String,
    /// The account; the top account by default.
    #[serde(default)]
    pub cid: Option<u64>,
    #[serde(default)]
    pub info: String,
    /// `standard` (default), `master` or `acl`.
    #[serde(default = "standard")]
    pub access: String,
    /// For `acl` tokens: `[{ topic = "a/#", actions = ["publish", "subscribe"] }]`.
    #[serde(default)]
    pub acl: Vec<AclSpec>,
    #[serde(default)]
    pub expire: u64,
    #[serde(default)]
    pub ttl: u64,
    #[serde(default)]
    pub ips: String,
}

/// One MQTT grant of an `acl` token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    pub topic: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

fn standard() -> String {
    "standard".into()
}

/// `[listeners]`: where tern accepts connections (docs/flespi.md#listeners). `"off"` disables a
/// listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// MQTT over TCP.
    #[serde(deserialize_with = "listen_addr")]
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS; on only when a certificate is configured.
    #[serde(deserialize_with = "listen_addr")]
    pub mqtts: Option<SocketAddr>,
    /// HTTP: `/health`, `/metrics`, the REST API, and MQTT over WebSocket on any path.
    #[serde(deserialize_with = "listen_addr")]
    pub http: Option<SocketAddr>,
    /// The same over TLS; on only when a certificate is configured.
    #[serde(deserialize_with = "listen_addr")]
    pub https: Option<SocketAddr>,
    /// Cap on live connections over every listener.
    pub max_connections: usize,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            mqtt: Some(SocketAddr::from(([0, 0, 0, 0], 1883))),
            mqtts: Some(SocketAddr::from(([0, 0, 0, 0], 8883))),
            http: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            max_connections: 100_000,
        }
    }
}

/// Parses a listen address: `IP:PORT`, or `"off"` (or empty) for none.
pub fn parse_listen_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| {
        format!(
            "`{t}` is not a listen address such as \"0.0.0.0:1883\" or \"[::]:1883\" (\"off\" disables the listener)"
        )
    })
}

fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen_addr(&s).map_err(serde::de::Error::custom)
}

/// A path where an empty string means "not set".
fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then(|| PathBuf::from(s)))
}

/// `[tls]`: the certificate for `mqtts` and `https`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain, leaf first. Setting it turns `mqtts` and `https` on.
    #[serde(deserialize_with = "opt_path")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[serde(deserialize_with = "opt_path")]
    pub key: Option<PathBuf>,
    /// PEM CA certificates that sign client certificates.
    #[serde(deserialize_with = "opt_path")]
    pub client_ca: Option<PathBuf>,
    /// `off`, `optional` or `required`; unset: `required` when `client_ca` is set, else `off`.
    pub client_auth: Option<ClientAuthMode>,
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_timeout: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: None,
            key: None,
            client_ca: None,
            client_auth: None,
            handshake_timeout: 10,
        }
    }
}

/// `tls.client_auth`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    Off,
    Optional,
    Required,
}

impl Tls {
    /// The client certificate policy in force.
    pub fn client_auth(&self) -> ClientAuth {
        match (self.client_auth, &self.client_ca) {
            (Some(ClientAuthMode::Off), _) | (None, None) => ClientAuth::Off,
            (Some(ClientAuthMode::Optional), _) => ClientAuth::Optional,
            (Some(ClientAuthMode::Required), _) | (None, Some(_)) => ClientAuth::Required,
        }
    }

    /// The files to load, when a certificate is configured.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.cert.clone()?,
            key: self.key.clone()?,
            client_ca: self.client_ca.clone(),
            client_auth: self.client_auth(),
        })
    }
}

/// `[websocket]`: MQTT over WebSocket on the HTTP listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Websocket {
    /// Largest WebSocket message (all its frames) accepted, bytes; larger closes the client
    /// (packet too large). At least `mqtt.max_packet_size`.
    pub max_message_size: usize,
}

impl Default for Websocket {
    fn default() -> Self {
        Websocket {
            max_message_size: WsSettings::default().max_message_size,
        }
    }
}

/// `[http]`: what the HTTP listeners tell browser apps.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// `[http.region]`.
    pub region: Region,
}

/// `[http.region]`: what `GET /auth/regions` answers behind a proxy (docs/flespi.md#browser-apps).
/// Each unset key is built from the request's `Host` on the listener that was asked.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Region {
    /// The REST API's base URL, with scheme: `https://broker.example.com`.
    #[serde(deserialize_with = "opt_string")]
    pub rest: Option<String>,
    /// MQTT over WebSocket, `host:port` without scheme: `broker.example.com:443`.
    #[serde(deserialize_with = "opt_string")]
    pub mqtt_ws: Option<String>,
    /// MQTT over TCP, `host:port`: `broker.example.com:1883`.
    #[serde(deserialize_with = "opt_string")]
    pub mqtt: Option<String>,
}

/// A string where an empty one means "not set".
fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim();
    Ok((!t.is_empty()).then(|| t.to_string()))
}

/// Why `value` is not a `host:port` (no scheme, no path).
fn check_host_port(value: &str) -> Result<(), String> {
    let bad = || {
        format!("`{value}` is not host:port (no scheme, no path), e.g. \"broker.example.com:443\"")
    };
    if value.contains("://") || value.contains('/') || value.contains('@') {
        return Err(bad());
    }
    let authority: axum::http::uri::Authority = value.parse().map_err(|_| bad())?;
    if authority.host().is_empty() || authority.port_u16().is_none() {
        return Err(bad());
    }
    Ok(())
}

/// Why `value` is not an absolute `http(s)://host[:port]` URL.
fn check_base_url(value: &str) -> Result<(), String> {
    let bad = || {
        format!("`{value}` is not an absolute URL with scheme, e.g. \"https://broker.example.com\"")
    };
    let uri: axum::http::Uri = value.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    let userinfo = uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if !scheme_ok || !host_ok || userinfo {
        return Err(bad());
    }
    Ok(())
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve Prometheus metrics at `/metrics` on the HTTP listeners.
    pub enabled: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { enabled: true }
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
    /// Add the `cid` and `timestamp` user properties to every v5 delivery (flespi,
    /// docs/flespi.md#accounts-and-namespaces).
    pub stamp_properties: bool,
    /// Publish session events on `flespi/log/mqtt/sessions/<id>/<event>`
    /// (docs/flespi.md#broker-events).
    pub session_events: bool,
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
            stamp_properties: b.stamp_properties,
            session_events: b.session_events,
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
    /// Bytes queued in every session together; past it the largest queues are dropped first
    /// and their clients closed as slow consumers (0x97). Unset: a quarter of the memory
    /// available to tern (see [`default_total_queued_bytes`]).
    pub max_total_queued_bytes: Option<usize>,
    pub queue_qos0_offline: bool,
    pub max_subscriptions: usize,
    /// Queued messages (or bytes) of a connected session at which its publishers pause
    /// reading until it drained half (backpressure instead of loss).
    pub backpressure_messages: usize,
    pub backpressure_bytes: usize,
    /// Milliseconds a publisher waits for congested sessions (in all, however many) before
    /// treating them as slow consumers (left to the queue budgets) until they catch up.
    pub backpressure_timeout_ms: u64,
}

impl Default for SessionSection {
    fn default() -> Self {
        let b = BrokerConfig::default();
        SessionSection {
            max_expiry: b.max_session_expiry,
            max_queued_messages: b.max_queued_messages,
            max_queued_bytes: b.max_queued_bytes,
            max_total_queued_bytes: None,
            queue_qos0_offline: b.queue_qos0_offline,
            max_subscriptions: b.max_subscriptions_per_session,
            backpressure_messages: b.backpressure_messages,
            backpressure_bytes: b.backpressure_bytes,
            backpressure_timeout_ms: b.backpressure_timeout.as_millis() as u64,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Let clients without credentials in, with standard rights, into the anonymous account:
    /// the top account's sub-account named `anonymous`, created on the first start.
    pub anonymous: bool,
    /// Pins the anonymous account's id instead (created as above with this id if missing);
    /// never the top account.
    pub anonymous_cid: Option<u64>,
    /// The id of the top account created on the first start.
    pub top_cid: u64,
    /// The master token's key (64 letters and digits). When unset, tern generates one on the
    /// first start, prints it once and writes it to `<data_dir>/master-token`.
    pub master_token: Option<String>,
    /// Failed logins allowed from one address in a burst, then per second.
    pub failed_login_burst: u32,
    pub failed_login_per_sec: f64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            anonymous: false,
            anonymous_cid: None,
            top_cid: 1,
            master_token: None,
            failed_login_burst: 20,
            failed_login_per_sec: 2.0,
        }
    }
}

/// `[gw]`: the devices layer (docs/flespi.md#devices).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gw {
    /// Most device messages one `GET /gw/devices/{sel}/messages` answers (a truncated answer
    /// says so in `warnings`).
    pub max_messages_per_call: usize,
    /// Most messages one `POST /gw/devices/{sel}/messages` may carry.
    pub max_messages_per_post: usize,
    /// History reads running at once (each holds up to `max_messages_per_call` messages);
    /// more wait for a turn.
    pub max_concurrent_reads: usize,
    /// Seconds between two retention sweeps (`messages_ttl`, `messages_rotate`).
    pub retention_interval: u64,
    /// A device is `connected` while its last message came within this many seconds.
    pub inactivity_timeout: u64,
    /// Ports a Teltonika channel without `configuration.port` takes one from: `"lo-hi"`.
    pub channel_ports: String,
    /// Address Teltonika channel listeners bind; default: the host of the MQTT listener.
    pub channel_bind: Option<IpAddr>,
    /// Host named in Teltonika channels' `uri` (`host:port`); default: the bind address.
    pub public_host: Option<String>,
    /// Tracker connections on this node, all channels together.
    pub max_channel_connections: usize,
    /// Seconds command results (`commands-result`) are kept.
    pub commands_ttl: u64,
    /// Seconds log records are kept (entity logs, and each account's REST call and MQTT
    /// sessions logs); 0: published, not stored.
    pub logs_ttl: u64,
    /// Bytes of log records kept per account; past it the oldest go at the next retention
    /// sweep. 0: no cap.
    pub logs_max_bytes: u64,
    /// Whether streams, webhooks and external MQTT brokers may target loopback, private,
    /// link-local, CGNAT and other non-public addresses. On by default (local receivers
    /// work); off, a literal address there is refused at create/update (400) and a host name
    /// is checked once resolved, at connect time.
    pub outbound_private_targets: bool,
}

impl Default for Gw {
    fn default() -> Self {
        let d = tern_gw::GwOptions::default();
        Gw {
            max_messages_per_call: d.max_messages_per_call,
            max_messages_per_post: d.max_messages_per_post,
            max_concurrent_reads: d.max_concurrent_reads,
            retention_interval: d.retention_interval.as_secs(),
            inactivity_timeout: d.inactivity_timeout,
            channel_ports: format!("{}-{}", d.trackers.range.0, d.trackers.range.1),
            channel_bind: None,
            public_host: None,
            max_channel_connections: d.trackers.max_connections,
            commands_ttl: d.commands_ttl,
            logs_ttl: d.logs_ttl,
            logs_max_bytes: d.logs_max_bytes,
            outbound_private_targets: d.outbound.private_targets,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    pub data_dir: PathBuf,
    /// Keep sessions, queues, retained messages, accounts and tokens on disk. Off: nothing
    /// survives a restart (the master token is then new at every start unless configured).
    pub enabled: bool,
    /// `always` (every batch synced before it is acknowledged), `interval:<ms>` or `never`.
    pub fsync: String,
    /// Changes waiting for the store's writer beyond which new work that adds changes (QoS 1/2
    /// messages, persistent sessions, subscriptions of stored sessions, REST changes) is
    /// refused until it caught up; a failing store refuses it anyway.
    pub max_queued_ops: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            data_dir: PathBuf::from("./data"),
            enabled: true,
            fsync: "always".into(),
            max_queued_ops: tern_store::DEFAULT_MAX_QUEUED,
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

/// A configuration error, located where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `environment variable NAME`, or `command line option --flag`.
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

/// Where an override came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An environment variable (its name).
    Env(String),
    /// A command-line option (e.g. `--mqtt`).
    Cli(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Cli(flag) => write!(f, "command line option {flag}"),
        }
    }
}

/// One value set over the file: `key` is `section.key`, `value` the raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

impl Override {
    /// A command-line override.
    pub fn cli(flag: &'static str, key: &str, value: impl Into<String>) -> Override {
        Override {
            key: key.to_string(),
            value: value.into(),
            origin: Origin::Cli(flag),
        }
    }

    /// The values to try, in order: the text as a TOML value when it is one, then as a string.
    fn candidates(&self) -> Vec<toml::Value> {
        let mut out = Vec::with_capacity(2);
        if let Ok(mut t) = toml::from_str::<toml::Table>(&format!("v = {}", self.value))
            && let Some(v) = t.remove("v")
            && !v.is_str()
        {
            out.push(v);
        }
        out.push(toml::Value::String(self.value.clone()));
        out
    }
}

/// The sections of the file (the fields of [`Config`]), read from its `Deserialize`
/// implementation so that the list cannot drift.
pub fn sections() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Fields(Option<&'static [&'static str]>);
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("fields only"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(de::Error::custom("fields only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    static SECTIONS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    SECTIONS.get_or_init(|| {
        let mut f = Fields(None);
        let _ = Config::deserialize(&mut f);
        f.0.unwrap_or(&[])
    })
}

/// The overrides among environment variables: `TERN_<SECTION>_<KEY>`, sorted by name.
pub fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut out: Vec<Override> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("TERN_")?.to_ascii_lowercase();
            let section = sections().iter().find(|s| {
                rest.len() > s.len() + 1 && rest.starts_with(*s) && rest.as_bytes()[s.len()] == b'_'
            })?;
            let key = nested_key(section, &rest[section.len() + 1..]);
            Some(Override {
                key,
                value,
                origin: Origin::Env(name),
            })
        })
        .collect();
    out.sort_by_key(|o| o.origin.to_string());
    out
}

/// The tables inside sections, whose keys an environment variable names after the table's
/// name: `TERN_HTTP_REGION_REST` is `http.region.rest`.
const SUBTABLES: &[(&str, &str)] = &[("http", "region")];

/// `section.key`, or `section.table.key` when `key` starts with a table of [`SUBTABLES`].
fn nested_key(section: &str, key: &str) -> String {
    for (s, table) in SUBTABLES {
        if *s == section
            && let Some(rest) = key.strip_prefix(table).and_then(|r| r.strip_prefix('_'))
            && !rest.is_empty()
        {
            return format!("{section}.{table}.{rest}");
        }
    }
    format!("{section}.{key}")
}

/// The layers a configuration came from, to say where a bad value was set.
#[derive(Debug)]
struct Layers<'a> {
    file: &'a str,
    src: &'a str,
    origins: HashMap<String, Origin>,
}

impl Layers<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        if let Some(origin) = self.origins.get(key) {
            return ConfigError {
                file: origin.to_string(),
                line: None,
                key: Some(key.to_string()),
                message,
            };
        }
        ConfigError {
            file: self.file.to_string(),
            line: find_dotted_key_line(self.src, key),
            key: Some(key.to_string()),
            message,
        }
    }

    /// Whether `key` was set anywhere (file or override).
    fn is_set(&self, key: &str) -> bool {
        self.origins.contains_key(key) || find_dotted_key_line(self.src, key).is_some()
    }
}

impl Config {
    /// Reads and checks a configuration file (certificate files included).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::resolve(Some(path), &[])
    }

    /// Parses and checks configuration text; `file` names it in errors. Files it names are
    /// not read.
    pub fn parse(src: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(src).map_err(|e| locate_toml_error(src, file, &e))?;
        let layers = Layers {
            file,
            src,
            origins: HashMap::new(),
        };
        config.validate(&layers)?;
        Ok(config)
    }

    /// The configuration tern runs with: the defaults, then `path` when given, then the
    /// `overrides` in order (environment first, command line last). Checks every value and
    /// loads the certificate files it names.
    pub fn resolve(path: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        let (file, src) = match path {
            Some(p) => {
                let file = p.display().to_string();
                let src = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    file: file.clone(),
                    line: None,
                    key: None,
                    message: format!("cannot read: {e}"),
                })?;
                (file, src)
            }
            None => ("(defaults)".to_string(), String::new()),
        };
        let mut config: Config =
            toml::from_str(&src).map_err(|e| locate_toml_error(&src, &file, &e))?;
        let mut layers = Layers {
            file: &file,
            src: &src,
            origins: HashMap::new(),
        };
        if !overrides.is_empty() {
            let mut table: toml::Table =
                toml::from_str(&src).map_err(|e| locate_toml_error(&src, &file, &e))?;
            for o in overrides {
                config = apply_override(&mut table, o)?;
                layers.origins.insert(o.key.clone(), o.origin.clone());
            }
        }
        config.validate(&layers)?;
        config.check_files(&layers)?;
        Ok(config)
    }

    fn validate(&self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| Err(layers.error(key, message));
        for (i, url) in self.cluster.nats.iter().enumerate() {
            let rest = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"))
                .unwrap_or(url);
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return fail(
                    &format!("cluster.nats.{i}"),
                    format!("{url:?} is not a NATS server address (nats://host:port)"),
                );
            }
        }
        if !self.cluster.nats.is_empty() {
            if self.cluster.replicas == 0 || self.cluster.replicas > 5 {
                return fail(
                    "cluster.replicas",
                    "must be 1 to 5 (JetStream's limit)".into(),
                );
            }
            if self.cluster.shards == 0 || self.cluster.shards > 1024 {
                return fail("cluster.shards", "must be 1 to 1024".into());
            }
            if self.cluster.stream_max_age == 0 {
                return fail("cluster.stream_max_age", "must be at least 1 second".into());
            }
            if self.cluster.gw_log_max_age == 0 {
                return fail("cluster.gw_log_max_age", "must be at least 1 second".into());
            }
            if self.cluster.queue == 0 {
                return fail("cluster.queue", "must be at least 1".into());
            }
        }
        if self.mqtt.max_qos > 2 {
            return fail(
                "mqtt.max_qos",
                format!("must be 0, 1 or 2, not {}", self.mqtt.max_qos),
            );
        }
        if self.mqtt.max_packet_size < 64 {
            return fail("mqtt.max_packet_size", "must be at least 64 bytes".into());
        }
        if self.mqtt.receive_maximum == 0 {
            return fail("mqtt.receive_maximum", "must be at least 1".into());
        }
        if self.mqtt.max_inflight == 0 {
            return fail("mqtt.max_inflight", "must be at least 1".into());
        }
        if let Some(total) = self.session.max_total_queued_bytes
            && total < self.mqtt.max_packet_size as usize
        {
            return fail(
                "session.max_total_queued_bytes",
                format!(
                    "must be at least mqtt.max_packet_size ({}), not {total}",
                    self.mqtt.max_packet_size
                ),
            );
        }
        if self.listeners.max_connections == 0 {
            return fail("listeners.max_connections", "must be at least 1".into());
        }
        if port_range(&self.gw.channel_ports).is_none() {
            return fail(
                "gw.channel_ports",
                format!(
                    "must be \"lo-hi\" with 1 <= lo <= hi <= 65535, not {:?}",
                    self.gw.channel_ports
                ),
            );
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) && tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err()
        {
            return fail(
                "log.level",
                format!("`{}` is not a log level or filter", self.log.level),
            );
        }
        if (self.websocket.max_message_size as u64) < u64::from(self.mqtt.max_packet_size) {
            return fail(
                "websocket.max_message_size",
                format!(
                    "must be at least mqtt.max_packet_size ({}), not {}",
                    self.mqtt.max_packet_size, self.websocket.max_message_size
                ),
            );
        }
        if let Err(e) = self.store.fsync.parse::<tern_store::FsyncPolicy>() {
            return fail("store.fsync", e);
        }
        if self.store.max_queued_ops == 0 {
            return fail("store.max_queued_ops", "must be at least 1".into());
        }
        if let Some(key) = &self.auth.master_token
            && let Err(e) = tern_broker::accounts::check_key(key)
        {
            return fail("auth.master_token", e.to_string());
        }
        match self.auth.anonymous_cid {
            Some(0) => return fail("auth.anonymous_cid", "must not be 0".into()),
            Some(cid) if cid == self.auth.top_cid => {
                return fail(
                    "auth.anonymous_cid",
                    format!(
                        "must not be the top account ({cid}): anonymous clients get an account of their own"
                    ),
                );
            }
            _ => {}
        }
        let region = &self.http.region;
        if let Some(rest) = &region.rest
            && let Err(e) = check_base_url(rest)
        {
            return fail("http.region.rest", e);
        }
        for (key, value) in [
            ("http.region.mqtt_ws", &region.mqtt_ws),
            ("http.region.mqtt", &region.mqtt),
        ] {
            if let Some(v) = value
                && let Err(e) = check_host_port(v)
            {
                return fail(key, e);
            }
        }
        self.validate_accounts(layers)?;
        self.validate_tls(layers)?;
        self.validate_listeners(layers)
    }

    fn validate_accounts(&self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let mut ids = vec![self.auth.top_cid];
        for (i, a) in self.accounts.iter().enumerate() {
            if ids.contains(&a.id) {
                return Err(layers.error(
                    &format!("accounts.{i}.id"),
                    format!("account {} is defined twice (or is the top account)", a.id),
                ));
            }
            if let Some(p) = a.parent
                && !ids.contains(&p)
            {
                return Err(layers.error(
                    &format!("accounts.{i}.parent"),
                    format!("account {p} is not defined before account {}", a.id),
                ));
            }
            ids.push(a.id);
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if let Err(e) = tern_broker::accounts::check_key(&t.key) {
                return Err(layers.error(&format!("tokens.{i}.key"), e.to_string()));
            }
            if !matches!(t.access.as_str(), "standard" | "master" | "acl") {
                return Err(layers.error(
                    &format!("tokens.{i}.access"),
                    format!("`{}` is not standard, master or acl", t.access),
                ));
            }
            if let Some(cid) = t.cid
                && !ids.contains(&cid)
            {
                return Err(layers.error(
                    &format!("tokens.{i}.cid"),
                    format!("account {cid} is not defined"),
                ));
            }
        }
        Ok(())
    }

    /// The fsync policy of the store.
    pub fn fsync(&self) -> tern_store::FsyncPolicy {
        self.store
            .fsync
            .parse()
            .unwrap_or(tern_store::FsyncPolicy::Always)
    }

    /// How the accounts directory authenticates.
    pub fn directory(&self) -> tern_broker::accounts::DirectoryConfig {
        tern_broker::accounts::DirectoryConfig {
            anonymous: self.auth.anonymous,
            quotas: tern_broker::accounts::QuotaDefaults {
                mqtt_sessions: self.quotas.mqtt_sessions,
                mqtt_subscriptions: self.quotas.mqtt_subscriptions,
                retained_bytes: self.quotas.retained_bytes,
                subaccounts: self.quotas.subaccounts,
                tokens: self.quotas.tokens,
                devices: self.quotas.devices,
                channels: self.quotas.channels,
                messages_bytes: self.quotas.messages_bytes,
            },
            failed_login_burst: self.auth.failed_login_burst,
            failed_login_per_sec: self.auth.failed_login_per_sec,
        }
    }

    fn validate_tls(&self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let tls = &self.tls;
        match (&tls.cert, &tls.key) {
            (Some(_), None) => return Err(layers.error("tls.cert", "needs tls.key too")),
            (None, Some(_)) => return Err(layers.error("tls.key", "needs tls.cert too")),
            _ => {}
        }
        if tls.client_auth() != ClientAuth::Off && tls.client_ca.is_none() {
            return Err(layers.error(
                "tls.client_auth",
                format!(
                    "\"{}\" needs tls.client_ca (the CA that signs client certificates)",
                    tls.client_auth().name()
                ),
            ));
        }
        if tls.handshake_timeout == 0 {
            return Err(layers.error("tls.handshake_timeout", "must be at least 1 second"));
        }
        if tls.cert.is_none() {
            // A TLS listener asked for on the command line without a certificate is a mistake;
            // in a file it is the documented default that waits for a certificate.
            for key in ["listeners.mqtts", "listeners.https"] {
                if matches!(layers.origins.get(key), Some(Origin::Cli(_))) && self.tls_listener(key)
                {
                    return Err(layers.error(key, "needs a certificate: set tls.cert and tls.key"));
                }
            }
        }
        Ok(())
    }

    fn tls_listener(&self, key: &str) -> bool {
        match key {
            "listeners.mqtts" => self.listeners.mqtts.is_some(),
            _ => self.listeners.https.is_some(),
        }
    }

    fn validate_listeners(&self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let active = self.active_listeners();
        for (i, (name, addr)) in active.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = active[..i].iter().find(|(_, a)| a == addr) {
                let key = format!("listeners.{name}");
                let key = if layers.is_set(&key) {
                    key
                } else {
                    format!("listeners.{other}")
                };
                return Err(layers.error(
                    &key,
                    format!("{addr} is used by both listeners.{other} and listeners.{name}"),
                ));
            }
        }
        Ok(())
    }

    /// The listeners that will run, by name, with their configured addresses.
    pub fn active_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let tls = self.tls.cert.is_some();
        [
            ("mqtt", self.listeners.mqtt),
            ("mqtts", self.listeners.mqtts.filter(|_| tls)),
            ("http", self.listeners.http),
            ("https", self.listeners.https.filter(|_| tls)),
        ]
        .into_iter()
        .filter_map(|(name, addr)| Some((name, addr?)))
        .collect()
    }

    /// Loads the certificate files, so that a missing or unusable file stops tern at start.
    fn check_files(&self, layers: &Layers<'_>) -> Result<(), ConfigError> {
        let Some(files) = self.tls.files() else {
            return Ok(());
        };
        tern_net::tls::server_config(&files)
            .map(|_| ())
            .map_err(|err| {
                let key = match &err {
                    TlsError::Read { path, .. }
                    | TlsError::NoCertificate { path }
                    | TlsError::NoKey { path }
                    | TlsError::Pem { path, .. }
                    | TlsError::ClientCa { path, .. } => {
                        if *path == files.cert {
                            "tls.cert"
                        } else if *path == files.key {
                            "tls.key"
                        } else {
                            "tls.client_ca"
                        }
                    }
                    TlsError::MissingClientCa { .. } => "tls.client_auth",
                    TlsError::Unusable { .. } => "tls.key",
                };
                layers.error(key, err.to_string())
            })
    }

    /// The TLS handshake timeout.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls.handshake_timeout.max(1))
    }

    /// The WebSocket transport's limits.
    pub fn websocket(&self) -> WsSettings {
        WsSettings {
            max_message_size: self.websocket.max_message_size,
        }
    }

    /// The devices layer's settings.
    pub fn gw(&self) -> tern_gw::GwOptions {
        tern_gw::GwOptions {
            max_messages_per_call: self.gw.max_messages_per_call,
            max_messages_per_post: self.gw.max_messages_per_post,
            max_concurrent_reads: self.gw.max_concurrent_reads,
            retention_interval: Duration::from_secs(self.gw.retention_interval.max(1)),
            inactivity_timeout: self.gw.inactivity_timeout,
            trackers: tern_gw::TrackerPorts {
                bind: self.gw.channel_bind.unwrap_or_else(|| {
                    self.listeners
                        .mqtt
                        .or(self.listeners.mqtts)
                        .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip())
                }),
                range: port_range(&self.gw.channel_ports).unwrap_or((20100, 20999)),
                public_host: self.gw.public_host.clone(),
                max_connections: self.gw.max_channel_connections,
            },
            commands_ttl: self.gw.commands_ttl,
            logs_ttl: self.gw.logs_ttl,
            logs_max_bytes: self.gw.logs_max_bytes,
            outbound: tern_gw::outbound::OutboundPolicy {
                private_targets: self.gw.outbound_private_targets,
            },
        }
    }

    /// The broker core's settings.
    /// Cluster mode's settings, or `None` for a single node (`cluster.nats` empty).
    pub fn cluster(&self) -> Option<tern_cluster::ClusterConfig> {
        if self.cluster.nats.is_empty() {
            return None;
        }
        let node = if self.cluster.node.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        } else {
            self.cluster.node.clone()
        };
        Some(tern_cluster::ClusterConfig {
            nats: self.cluster.nats.clone(),
            node: if node.is_empty() { "tern".into() } else { node },
            replicas: self.cluster.replicas,
            queue: self.cluster.queue,
            shards: self.cluster.shards,
            stream_max_age: Duration::from_secs(self.cluster.stream_max_age),
            gw_log_max_age: Duration::from_secs(self.cluster.gw_log_max_age),
            unavailable_after: (self.cluster.unavailable_after > 0)
                .then(|| Duration::from_secs(self.cluster.unavailable_after)),
        })
    }

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
            max_total_queued_bytes: self
                .session
                .max_total_queued_bytes
                .unwrap_or_else(default_total_queued_bytes),
            queue_qos0_offline: self.session.queue_qos0_offline,
            retain_available: self.mqtt.retain_available,
            max_client_id_len: self.mqtt.max_client_id_len,
            connect_timeout: Duration::from_secs(self.mqtt.connect_timeout.max(1)),
            max_subscriptions_per_session: self.session.max_subscriptions,
            echo_client_id: self.mqtt.echo_client_id,
            stamp_properties: self.mqtt.stamp_properties,
            session_events: self.mqtt.session_events,
            backpressure_messages: self.session.backpressure_messages.max(2),
            backpressure_bytes: self.session.backpressure_bytes.max(2),
            backpressure_timeout: Duration::from_millis(self.session.backpressure_timeout_ms),
        }
    }
}

/// Used when `session.max_total_queued_bytes` is unset: a quarter of the memory tern may use,
/// the smaller of the machine's (`MemTotal` in `/proc/meminfo`) and its cgroup's limit
/// (`/sys/fs/cgroup/memory.max`, cgroup v2: a container's memory limit); 1 GiB where neither
/// can be read. Queue accounting counts a message once per session that holds it, so the
/// memory really used stays below this.
pub fn default_total_queued_bytes() -> usize {
    const FALLBACK: usize = 1 << 30;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    available_memory(meminfo.as_deref(), cgroup.as_deref()).map_or(FALLBACK, |m| (m / 4).max(1))
}

/// Bytes of memory from `/proc/meminfo` (`MemTotal: N kB`) and a cgroup v2 `memory.max`
/// (a number, or `max` for none): the smaller one known.
fn available_memory(meminfo: Option<&str>, cgroup_max: Option<&str>) -> Option<usize> {
    let total = meminfo.and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<usize>()
            .ok()?
            .checked_mul(1024)
    });
    let limit = cgroup_max.and_then(|c| c.trim().parse::<usize>().ok());
    match (total, limit) {
        (Some(t), Some(l)) => Some(t.min(l)),
        (t, l) => t.or(l),
    }
}

/// Sets one override in the table and deserializes the result; on failure the error names the
/// override. Each candidate value is tried; the last failure is reported.
fn apply_override(table: &mut toml::Table, o: &Override) -> Result<Config, ConfigError> {
    let fail = |message: String| ConfigError {
        file: o.origin.to_string(),
        line: None,
        key: Some(o.key.clone()),
        message,
    };
    let (tables, key) = o
        .key
        .rsplit_once('.')
        .ok_or_else(|| fail("not a `section.key` name".into()))?;
    let mut last = String::new();
    for value in o.candidates() {
        let mut t = table.clone();
        let mut sec = &mut t;
        for name in tables.split('.') {
            let entry = sec
                .entry(name)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(inner) = entry.as_table_mut() else {
                return Err(fail(format!("`{tables}` is not a table in the file")));
            };
            sec = inner;
        }
        sec.insert(key.to_string(), value);
        match toml::Value::Table(t.clone()).try_into::<Config>() {
            Ok(config) => {
                *table = t;
                return Ok(config);
            }
            Err(err) => last = clean_message(err.message()),
        }
    }
    Err(fail(last))
}

/// A serde message without toml's location suffix.
fn clean_message(message: &str) -> String {
    let m = message.trim();
    m.split("\nin `").next().unwrap_or(m).trim().to_string()
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

/// The line (1-based) where the dotted `key` is set, if it is: `mqtt.max_qos` under `[mqtt]`,
/// `http.region.rest` under `[http.region]`.
fn find_dotted_key_line(src: &str, key: &str) -> Option<usize> {
    let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
    find_key_line(src, section, name)
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

/// `"lo-hi"` (or one port) as an inclusive range of ports.
fn port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo > 0 && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<Override> {
        env_overrides(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.listeners.mqtt, Some("0.0.0.0:1883".parse().unwrap()));
        assert_eq!(c.listeners.http, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.mqtt.max_qos, 2);
        assert_eq!(c.store.data_dir, PathBuf::from("./data"));
        assert!(c.metrics.enabled);
        // No certificate: the TLS listeners stay off.
        let names: Vec<_> = c.active_listeners().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["mqtt", "http"]);
    }

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let src = include_str!("../../../config/tern.toml");
        let c = Config::parse(src, "config/tern.toml").unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn the_anonymous_account_is_never_the_top_account() {
        let err = Config::parse("[auth]\nanonymous = true\nanonymous_cid = 1\n", "tern.toml")
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("auth.anonymous_cid"));
        assert!(err.message.contains("top account"), "{err}");
        let c = Config::parse("[auth]\nanonymous_cid = 5\n", "tern.toml").unwrap();
        assert_eq!(c.auth.anonymous_cid, Some(5));
        assert_eq!(Config::default().auth.anonymous_cid, None);
    }

    #[test]
    fn outbound_private_targets_is_a_gw_switch() {
        assert!(Config::default().gw().outbound.private_targets);
        let c = Config::parse("[gw]\noutbound_private_targets = false\n", "t.toml").unwrap();
        assert!(!c.gw().outbound.private_targets);
        let err =
            Config::parse("[gw]\n\noutbound_private_targets = \"no\"\n", "t.toml").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert_eq!(
            err.key.as_deref(),
            Some("gw.outbound_private_targets"),
            "{err}"
        );
    }

    #[test]
    fn cluster_settings_and_their_errors() {
        let c = Config::parse("", "t.toml").unwrap();
        assert!(c.cluster().is_none(), "no NATS: a single node");
        let c = Config::parse(
            "[cluster]\nnats = [\"nats://10.0.0.1:4222\", \"nats://10.0.0.2:4222\"]\nnode = \"n1\"\nshards = 8\n",
            "t.toml",
        )
        .unwrap();
        let cl = c.cluster().expect("cluster mode");
        assert_eq!(cl.nats.len(), 2);
        assert_eq!((cl.node.as_str(), cl.shards, cl.replicas), ("n1", 8, 1));
        assert_eq!(cl.unavailable_after, Some(Duration::from_secs(10)));
        assert_eq!(cl.gw_log_max_age, Duration::from_secs(7 * 86_400));
        for (text, key, line) in [
            (
                "[cluster]\nnats = [\"nats://a:1\"]\ngw_log_max_age = 0\n",
                "cluster.gw_log_max_age",
                3,
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\n\nreplicas = 9\n",
                "cluster.replicas",
                4,
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nshards = 0\n",
                "cluster.shards",
                3,
            ),
            (
                "[cluster]\nnats = [\"nats://a:1\"]\nqueue = 0\n",
                "cluster.queue",
                3,
            ),
        ] {
            let err = Config::parse(text, "t.toml").unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
            assert_eq!(err.line, Some(line), "{err}");
        }
        let err = Config::parse("[cluster]\nnats = [\"nats://\"]\n", "t.toml").unwrap_err();
        assert!(
            err.to_string().contains("not a NATS server address"),
            "{err}"
        );
        let err = Config::parse("[cluster]\nretained_replicas = 1\n", "t.toml").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }

    #[test]
    fn sections_are_the_config_fields() {
        assert_eq!(
            sections(),
            [
                "listeners",
                "tls",
                "websocket",
                "http",
                "mqtt",
                "session",
                "auth",
                "store",
                "log",
                "metrics",
                "quotas",
                "gw",
                "accounts",
                "tokens",
                "cluster"
            ]
        );
    }

    #[test]
    fn region_overrides() {
        let src = "[http.region]\nrest = \"https://broker.example.com\"\nmqtt_ws = \"broker.example.com:443\"\n";
        let c = Config::parse(src, "tern.toml").unwrap();
        assert_eq!(
            c.http.region.rest.as_deref(),
            Some("https://broker.example.com")
        );
        assert_eq!(
            c.http.region.mqtt_ws.as_deref(),
            Some("broker.example.com:443")
        );
        assert_eq!(c.http.region.mqtt, None);

        let err = Config::parse(
            "[http.region]\n\nrest = \"broker.example.com\"\n",
            "tern.toml",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("http.region.rest"));
        assert!(err.message.contains("absolute URL"), "{err}");
        for bad in ["wss://h:1", "h", "h:1/mqtt"] {
            let err = Config::parse(&format!("[http.region]\nmqtt_ws = \"{bad}\"\n"), "t.toml")
                .unwrap_err();
            assert_eq!(err.line, Some(2), "{bad}");
            assert_eq!(err.key.as_deref(), Some("http.region.mqtt_ws"), "{bad}");
        }
        let err = Config::parse("[http.region]\nbogus = 1\n", "t.toml").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.key.as_deref(), Some("http.region.bogus"));

        let o = env(&[
            ("TERN_HTTP_REGION_MQTT_WS", "tern.example.org:9005"),
            ("TERN_HTTP_REGION_MQTT", "tern.example.org:1883"),
        ]);
        assert_eq!(o[0].key, "http.region.mqtt");
        assert_eq!(o[1].key, "http.region.mqtt_ws");
        let c = Config::resolve(None, &o).unwrap();
        assert_eq!(
            c.http.region.mqtt_ws.as_deref(),
            Some("tern.example.org:9005")
        );
        assert_eq!(c.http.region.mqtt.as_deref(), Some("tern.example.org:1883"));
        let err = Config::resolve(
            None,
            &env(&[("TERN_HTTP_REGION_REST", "ftp://tern.example.org")]),
        )
        .unwrap_err();
        assert_eq!(err.file, "environment variable TERN_HTTP_REGION_REST");
        assert_eq!(err.key.as_deref(), Some("http.region.rest"));
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
        assert!(
            err.message.contains("`localhost` is not a listen address"),
            "{err}"
        );
    }

    #[test]
    fn off_disables_a_listener() {
        let c = Config::parse("[listeners]\nmqtt = \"off\"\nhttp = \"\"\n", "x.toml").unwrap();
        assert_eq!(c.listeners.mqtt, None);
        assert_eq!(c.listeners.http, None);
    }

    #[test]
    fn out_of_range_value() {
        let err = Config::parse("[mqtt]\nmax_qos = 3\n", "x.toml").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.key.as_deref(), Some("mqtt.max_qos"));
    }

    #[test]
    fn total_queue_budget() {
        let c = Config::parse("[session]\nmax_total_queued_bytes = 1048576\n", "x.toml").unwrap();
        assert_eq!(c.broker().max_total_queued_bytes, 1 << 20);
        let err = Config::parse(
            "[mqtt]\nmax_packet_size = 4096\n\n[session]\nmax_total_queued_bytes = 100\n",
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(err.file, "x.toml");
        assert_eq!(err.line, Some(5));
        assert_eq!(err.key.as_deref(), Some("session.max_total_queued_bytes"));
        let err =
            Config::parse("[session]\nmax_total_queued_bytes = \"lots\"\n", "x.toml").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.key.as_deref(), Some("session.max_total_queued_bytes"));
        // Unset: a quarter of the memory, whatever the machine.
        assert!(Config::default().broker().max_total_queued_bytes > 0);
    }

    #[test]
    fn available_memory_is_the_smaller_of_ram_and_cgroup() {
        let meminfo = "MemTotal:        8038288 kB\nMemFree:  123 kB\n";
        assert_eq!(
            available_memory(Some(meminfo), None),
            Some(8_038_288 * 1024)
        );
        assert_eq!(
            available_memory(Some(meminfo), Some("max\n")),
            Some(8_038_288 * 1024)
        );
        assert_eq!(
            available_memory(Some(meminfo), Some("536870912\n")),
            Some(536_870_912)
        );
        assert_eq!(available_memory(None, Some("536870912")), Some(536_870_912));
        assert_eq!(available_memory(Some("garbage"), None), None);
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let err = Config::parse("[tls]\ncert = \"a.pem\"\n", "x.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.toml:2: key `tls.cert`: needs tls.key too"
        );
        let err = Config::parse("[tls]\nclient_auth = \"required\"\n", "x.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.toml:2: key `tls.client_auth`: \"required\" needs tls.client_ca (the CA that signs client certificates)"
        );
    }

    #[test]
    fn client_auth_defaults_to_required_with_a_ca() {
        let c = Config::parse("[tls]\nclient_ca = \"ca.pem\"\n", "x.toml").unwrap();
        assert_eq!(c.tls.client_auth(), ClientAuth::Required);
        let c = Config::parse(
            "[tls]\nclient_ca = \"ca.pem\"\nclient_auth = \"optional\"\n",
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.tls.client_auth(), ClientAuth::Optional);
        assert_eq!(Tls::default().client_auth(), ClientAuth::Off);
    }

    #[test]
    fn two_listeners_on_one_address() {
        let err = Config::parse(
            "[listeners]\nmqtt = \"127.0.0.1:7000\"\nhttp = \"127.0.0.1:7000\"\n",
            "x.toml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.toml:3: key `listeners.http`: 127.0.0.1:7000 is used by both listeners.mqtt and listeners.http"
        );
    }

    #[test]
    fn websocket_message_must_hold_a_packet() {
        let err = Config::parse("[mqtt]\nmax_packet_size = 4194304\n", "x.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.toml: key `websocket.max_message_size`: must be at least mqtt.max_packet_size (4194304), not 2097152"
        );
    }

    #[test]
    fn env_names_map_to_keys() {
        let o = env(&[
            ("TERN_LISTENERS_MQTT", "127.0.0.1:1"),
            ("TERN_MQTT_MAX_QOS", "1"),
            ("TERN_LOG", "debug"),
            ("TERN_CONFIG", "/etc/tern.toml"),
            ("TERN_PORT", "tcp://10.0.0.1:1883"),
            ("TERN_SERVICE_HOST", "10.0.0.1"),
            ("HOME", "/root"),
        ]);
        let keys: Vec<_> = o.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["listeners.mqtt", "mqtt.max_qos"]);
    }

    #[test]
    fn env_overrides_the_file_and_cli_overrides_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[mqtt]\nmax_qos = 2\n[log]\nlevel = \"warn\"\n").unwrap();
        let mut o = env(&[
            ("TERN_MQTT_MAX_QOS", "1"),
            ("TERN_LOG_LEVEL", "debug"),
            ("TERN_AUTH_ANONYMOUS", "true"),
            ("TERN_STORE_DATA_DIR", "/var/lib/tern"),
        ]);
        o.push(Override::cli("--log-level", "log.level", "error"));
        let c = Config::resolve(Some(&path), &o).unwrap();
        assert_eq!(c.mqtt.max_qos, 1);
        assert_eq!(c.log.level, "error");
        assert!(c.auth.anonymous);
        assert_eq!(c.store.data_dir, PathBuf::from("/var/lib/tern"));
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = Config::resolve(None, &env(&[("TERN_MQTT_MAX_QOS", "7")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable TERN_MQTT_MAX_QOS: key `mqtt.max_qos`: must be 0, 1 or 2, not 7"
        );
        let err = Config::resolve(None, &env(&[("TERN_MQTT_BOGUS", "1")])).unwrap_err();
        assert_eq!(err.file, "environment variable TERN_MQTT_BOGUS");
        assert!(err.message.contains("unknown field `bogus`"), "{err}");
        let err = Config::resolve(None, &env(&[("TERN_LISTENERS_MQTT", "nowhere")])).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "environment variable TERN_LISTENERS_MQTT: key `listeners.mqtt`: `nowhere` is not a listen address"
            ),
            "{err}"
        );
        let err = Config::resolve(None, &env(&[("TERN_MQTT_MAX_QOS", "high")])).unwrap_err();
        assert!(
            err.message.contains("invalid type: string \"high\""),
            "{err}"
        );
    }

    #[test]
    fn cli_tls_listener_without_certificate() {
        let err = Config::resolve(
            None,
            &[Override::cli(
                "--mqtts",
                "listeners.mqtts",
                "127.0.0.1:8883",
            )],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "command line option --mqtts: key `listeners.mqtts`: needs a certificate: set tls.cert and tls.key"
        );
    }

    #[test]
    fn missing_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[tls]\ncert = \"/nonexistent/server.pem\"\nkey = \"/nonexistent/server.key\"\n",
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: key `tls.cert`: cannot read /nonexistent/server.pem: No such file or directory (os error 2)",
                path.display()
            )
        );
    }
}
