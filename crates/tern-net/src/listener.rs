//! The listener names: which of the four listeners a connection arrived on, as configured and
//! as labelled in the metrics.

use std::fmt;

/// The four listeners of docs/flespi.md#listeners, named as in the configuration file. MQTT over
/// WebSocket arrives on `http` and `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// MQTT over TCP (default 1883).
    Mqtt,
    /// MQTT over TLS (default 8883).
    Mqtts,
    /// HTTP: the REST router and MQTT over WebSocket (default 8080).
    Http,
    /// HTTPS: the same over TLS (default 8443).
    Https,
}

impl Listener {
    pub const ALL: [Listener; 4] = [
        Listener::Mqtt,
        Listener::Mqtts,
        Listener::Http,
        Listener::Https,
    ];

    /// The configuration key and metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Listener::Mqtt => "mqtt",
            Listener::Mqtts => "mqtts",
            Listener::Http => "http",
            Listener::Https => "https",
        }
    }

    /// Whether connections are wrapped in TLS.
    pub const fn is_tls(self) -> bool {
        matches!(self, Listener::Mqtts | Listener::Https)
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
