//! What the owner configures: the broker's URI, the CONNECT fields, TLS, timeouts, the
//! reconnect back-off and the bounds of the outgoing side.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tern_codec::{ProtocolVersion, QoS};

/// `mqtt://` (TCP) or `mqtts://` (TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
}

impl Scheme {
    /// 1883 for `mqtt`, 8883 for `mqtts` (the IANA ports).
    pub const fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
        }
    }
}

/// A broker address: `mqtt://host[:port]` or `mqtts://host[:port]`; an IPv6 host is written in
/// brackets (`mqtt://[::1]:1883`). Nothing may follow the port but a single `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUri {
    pub scheme: Scheme,
    /// A host name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
}

/// Why a broker URI does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("broker URI `{0}` has no scheme: expected mqtt://host:port or mqtts://host:port")]
    MissingScheme(String),
    #[error("broker URI scheme `{0}` is not supported: expected mqtt or mqtts")]
    UnsupportedScheme(String),
    #[error("broker URI `{0}` has no host")]
    MissingHost(String),
    #[error("broker URI `{uri}` has a bad port `{port}`: expected 1 to 65535")]
    BadPort { uri: String, port: String },
    #[error("broker URI `{0}` has something after host and port (a path, query or user info)")]
    UnexpectedPart(String),
}

impl FromStr for BrokerUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<BrokerUri, UriError> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| UriError::MissingScheme(uri.to_owned()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
            _ => return Err(UriError::UnsupportedScheme(scheme.to_owned())),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(UriError::UnexpectedPart(uri.to_owned()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UriError::MissingHost(uri.to_owned()))?;
            match after {
                "" => (host, None),
                p => match p.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(UriError::UnexpectedPart(uri.to_owned())),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['[', ']', ':']) && !authority.starts_with('[') {
            return Err(UriError::MissingHost(uri.to_owned()));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(UriError::BadPort {
                        uri: uri.to_owned(),
                        port: p.to_owned(),
                    });
                }
            },
        };
        Ok(BrokerUri {
            scheme,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Which certificate authorities a TLS connection trusts.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's bundle, read from the first of [`SYSTEM_BUNDLES`] that exists.
    #[default]
    System,
    /// The certificates of this PEM text (one CA or several).
    Pem(Vec<u8>),
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::System => f.write_str("System"),
            Roots::Pem(p) => write!(f, "Pem({} bytes)", p.len()),
        }
    }
}

/// Where the system's CA bundle lives on the distributions tern ships for (Debian/Ubuntu,
/// Fedora/RHEL, openSUSE, Alpine), in the order they are tried.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A client certificate (chain, leaf first) and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        write!(f, "ClientCert({} bytes of chain)", self.chain_pem.len())
    }
}

/// TLS of an `mqtts://` connection. The server's certificate is verified against `roots` and
/// the URI's host unless `insecure_skip_verify` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub roots: Roots,
    pub client_cert: Option<ClientCert>,
    /// The name checked against the certificate instead of the URI's host.
    pub server_name: Option<String>,
    /// Accept any server certificate (signatures are still checked). For tests and
    /// self-signed lab brokers only; logged as a warning at start.
    pub insecure_skip_verify: bool,
}

/// The delay between reconnect attempts: `initial`, doubled after each failure up to `max`;
/// with `jitter` each delay is drawn from its upper half, so many clients that lost the same
/// broker do not come back in step. A connection that reached CONNACK starts again at
/// `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            jitter: true,
        }
    }
}

/// What [`crate::ClientHandle::publish`] does when the outgoing queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// The caller waits for room (backpressure); nothing is dropped.
    #[default]
    Wait,
    /// The publish fails at once with [`crate::PublishError::QueueFull`] and is counted in
    /// [`crate::ClientMetrics::queue_drops`].
    RejectNew,
}

/// One subscription, (re-)sent after every CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    /// 0 or 1; the client does not take part in QoS 2.
    pub qos: QoS,
}

impl Subscription {
    pub fn new(filter: impl Into<String>, qos: QoS) -> Subscription {
        Subscription {
            filter: filter.into(),
            qos,
        }
    }
}

/// Everything the client needs; [`ClientOptions::new`] fills in the defaults.
#[derive(Clone)]
pub struct ClientOptions {
    pub uri: BrokerUri,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// Clean Start (5.0) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval in seconds (0: the session ends with the connection).
    pub session_expiry: u32,
    /// Seconds; 0 disables keep alive (no PINGREQ, no PINGRESP check).
    pub keep_alive: u16,
    /// 3.1.1 or 5.0 (the default).
    pub protocol: ProtocolVersion,
    /// Used for `mqtts://` only.
    pub tls: TlsOptions,
    /// TCP connect, TLS handshake and CONNACK together.
    pub connect_timeout: Duration,
    pub backoff: Backoff,
    /// Outbound QoS 1 publishes sent and not yet acknowledged (further limited by the broker's
    /// Receive Maximum). 1 to 65,535.
    pub max_inflight: u16,
    /// Publishes accepted by the handle and not yet sent; at least 1.
    pub queue_size: usize,
    pub overflow: OverflowPolicy,
    /// Events not yet taken by the receiver; when full the client stops reading from the broker.
    pub event_capacity: usize,
    /// The largest packet accepted from the broker (announced in MQTT 5 CONNECT).
    pub max_packet_size: u32,
    /// Inbound QoS 1 messages are acknowledged by the owner ([`crate::Ack`] in each
    /// [`crate::Event::Message`]), e.g. once they are stored, not when the event is taken.
    pub manual_ack: bool,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is never printed.
        f.debug_struct("ClientOptions")
            .field("uri", &self.uri)
            .field("client_id", &self.client_id)
            // A flespi or tern token is a user name: as secret as a password.
            .field("username", &self.username.as_ref().map(|_| "***"))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("clean_start", &self.clean_start)
            .field("session_expiry", &self.session_expiry)
            .field("keep_alive", &self.keep_alive)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("max_inflight", &self.max_inflight)
            .field("queue_size", &self.queue_size)
            .field("overflow", &self.overflow)
            .field("event_capacity", &self.event_capacity)
            .field("max_packet_size", &self.max_packet_size)
            .field("manual_ack", &self.manual_ack)
            .finish()
    }
}

impl ClientOptions {
    /// Options for `uri` with the defaults: MQTT 5, clean start, no session expiry, keep alive
    /// 30 s, connect timeout 10 s, back-off 0.5 s to 60 s with jitter, 64 in flight, a queue of
    /// 1,024 publishes that makes callers wait, 1,024 events, packets up to 1 MiB.
    pub fn new(uri: &str, client_id: impl Into<String>) -> Result<ClientOptions, UriError> {
        Ok(ClientOptions {
            uri: uri.parse()?,
            client_id: client_id.into(),
            username: None,
            password: None,
            clean_start: true,
            session_expiry: 0,
            keep_alive: 30,
            protocol: ProtocolVersion::V5,
            tls: TlsOptions::default(),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_inflight: 64,
            queue_size: 1024,
            overflow: OverflowPolicy::Wait,
            event_capacity: 1024,
            max_packet_size: 1024 * 1024,
            manual_ack: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Result<BrokerUri, UriError> {
        s.parse()
    }

    #[test]
    fn good_uris_parse_with_default_ports() {
        let u = uri("mqtt://broker.example.com").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Mqtt, "broker.example.com", 1883)
        );
        let u = uri("mqtts://broker.example.com/").unwrap();
        assert_eq!((u.scheme, u.port), (Scheme::Mqtts, 8883));
        let u = uri("MQTT://127.0.0.1:1884").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 1884));
        let u = uri("mqtts://[::1]:8884").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8884));
        assert_eq!(u.to_string(), "mqtts://[::1]:8884");
        let u = uri("mqtt://[::1]").unwrap();
        assert_eq!(u.port, 1883);
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        assert!(matches!(
            uri("broker:1883"),
            Err(UriError::MissingScheme(_))
        ));
        assert!(matches!(uri("http://broker"), Err(UriError::UnsupportedScheme(s)) if s == "http"));
        assert!(matches!(uri("mqtt://"), Err(UriError::MissingHost(_))));
        assert!(matches!(uri("mqtt://:1883"), Err(UriError::MissingHost(_))));
        assert!(matches!(uri("mqtt://h:0"), Err(UriError::BadPort { .. })));
        assert!(matches!(
            uri("mqtt://h:70000"),
            Err(UriError::BadPort { .. })
        ));
        assert!(matches!(uri("mqtt://h:x"), Err(UriError::BadPort { .. })));
        assert!(matches!(
            uri("mqtt://h:1883/topic"),
            Err(UriError::UnexpectedPart(_))
        ));
        assert!(matches!(
            uri("mqtt://user:pw@h"),
            Err(UriError::UnexpectedPart(_))
        ));
        assert!(matches!(uri("mqtt://[::1"), Err(UriError::MissingHost(_))));
        assert!(matches!(
            uri("mqtt://[::1]x"),
            Err(UriError::UnexpectedPart(_))
        ));
        assert!(matches!(uri("mqtt://::1"), Err(UriError::MissingHost(_))));
    }

    #[test]
    fn debug_hides_the_password() {
        let mut o = ClientOptions::new("mqtt://h", "c").unwrap();
        o.username = Some("token".into());
        o.password = Some(b"secret".to_vec());
        let debug = format!("{o:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("token"),
            "{debug}"
        );
    }
}
