//! Why a connection ended: one vocabulary for logs, metrics, the REST API and DISCONNECT.

use std::borrow::Cow;
use std::fmt;

use tern_codec::{DecodeError, ReasonCode};

/// The reason a connection was closed, by either side.
///
/// `reason_code` is what a v5 client is told in the server's DISCONNECT (when the server sends
/// one), `label` is the stable name used as a metric label and in log events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT with reason 0x00: the will is discarded.
    ClientDisconnect,
    /// The client sent DISCONNECT 0x04 (disconnect with will message).
    ClientDisconnectWithWill,
    /// The client sent DISCONNECT with an error reason code.
    ClientError(ReasonCode),
    /// The network connection closed or failed without DISCONNECT.
    ConnectionLost,
    /// No CONNECT arrived in time.
    ConnectTimeout,
    /// Nothing arrived within 1.5 times the keep alive.
    KeepAliveTimeout,
    /// Another connection with the same client id took the session over (0x8E).
    SessionTakenOver,
    /// The broker is shutting down (0x8B).
    ServerShuttingDown,
    /// An administrator (or REST call) removed the session (0x98).
    AdministrativeAction,
    /// The connection's token was deleted, disabled or narrowed, or its account disabled
    /// (0x87 not authorized); a reconnect is checked against the token as it is now.
    AccessRevoked,
    /// The session's outbox went past its budget (0x97 quota exceeded).
    SlowConsumer,
    /// The store cannot write (disk full, I/O error): the connection had acknowledgements
    /// waiting for it, or a 3.x client sent a QoS 1/2 PUBLISH (3.x has no way to refuse one; a
    /// v5 client gets PUBACK/PUBREC 0x97 instead and stays connected). Closed rather than left
    /// waiting (v5 DISCONNECT 0x97).
    StoreUnavailable,
    /// Cluster mode: this node lost NATS (or its JetStream quorum) for longer than
    /// `cluster.unavailable_after`, so that the client reconnects to a node that has it. The
    /// v5 DISCONNECT says 0x9C (Use another server): 0x88 (Server unavailable) is a CONNACK
    /// code only, which a new CONNECT gets.
    ClusterUnavailable,
    /// The client sent more unacknowledged QoS 1/2 PUBLISH packets than Receive Maximum (0x93).
    ReceiveMaximumExceeded,
    /// The client sent a packet larger than the broker's Maximum Packet Size (0x95).
    PacketTooLarge,
    /// A malformed packet ([`DecodeError`]) or a broken protocol rule
    /// ([`Violation`](crate::Violation)); `code` is 0x81, 0x82 or a more specific code, `rule`
    /// the MQTT rule it breaks.
    Violation {
        code: ReasonCode,
        rule: Option<&'static str>,
        detail: Cow<'static, str>,
    },
    /// CONNECT was refused; the CONNACK carried `code`.
    ConnectRefused(ReasonCode),
}

impl CloseReason {
    /// The reason code of the DISCONNECT the server sends for this close.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            CloseReason::ClientDisconnect => ReasonCode::NORMAL_DISCONNECTION,
            CloseReason::ClientDisconnectWithWill => ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            CloseReason::ClientError(code) => *code,
            CloseReason::ConnectionLost => ReasonCode::UNSPECIFIED_ERROR,
            CloseReason::ConnectTimeout => ReasonCode::MAXIMUM_CONNECT_TIME,
            CloseReason::KeepAliveTimeout => ReasonCode::KEEP_ALIVE_TIMEOUT,
            CloseReason::SessionTakenOver => ReasonCode::SESSION_TAKEN_OVER,
            CloseReason::ServerShuttingDown => ReasonCode::SERVER_SHUTTING_DOWN,
            CloseReason::AdministrativeAction => ReasonCode::ADMINISTRATIVE_ACTION,
            CloseReason::AccessRevoked => ReasonCode::NOT_AUTHORIZED,
            CloseReason::SlowConsumer => ReasonCode::QUOTA_EXCEEDED,
            CloseReason::StoreUnavailable => ReasonCode::QUOTA_EXCEEDED,
            CloseReason::ClusterUnavailable => ReasonCode::USE_ANOTHER_SERVER,
            CloseReason::ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            CloseReason::PacketTooLarge => ReasonCode::PACKET_TOO_LARGE,
            CloseReason::Violation { code, .. } => *code,
            CloseReason::ConnectRefused(code) => *code,
        }
    }

    /// Stable label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::ClientDisconnectWithWill => "client_disconnect_with_will",
            CloseReason::ClientError(_) => "client_error",
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::KeepAliveTimeout => "keep_alive_timeout",
            CloseReason::SessionTakenOver => "session_taken_over",
            CloseReason::ServerShuttingDown => "server_shutting_down",
            CloseReason::AdministrativeAction => "administrative_action",
            CloseReason::AccessRevoked => "access_revoked",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::StoreUnavailable => "store_unavailable",
            CloseReason::ClusterUnavailable => "cluster_unavailable",
            CloseReason::ReceiveMaximumExceeded => "receive_maximum_exceeded",
            CloseReason::PacketTooLarge => "packet_too_large",
            CloseReason::Violation { code, .. } => match code.0 {
                0x81 => "malformed_packet",
                0x82 => "protocol_error",
                0x84 => "unsupported_protocol_version",
                0x90 => "topic_name_invalid",
                0x94 => "topic_alias_invalid",
                0x9B => "qos_not_supported",
                0x8C => "bad_authentication_method",
                _ => "protocol_violation",
            },
            CloseReason::ConnectRefused(_) => "connect_refused",
        }
    }

    /// Every label, for metric families that want all series present from the start.
    pub const LABELS: &'static [&'static str] = &[
        "client_disconnect",
        "client_disconnect_with_will",
        "client_error",
        "connection_lost",
        "connect_timeout",
        "keep_alive_timeout",
        "session_taken_over",
        "server_shutting_down",
        "administrative_action",
        "access_revoked",
        "slow_consumer",
        "store_unavailable",
        "cluster_unavailable",
        "receive_maximum_exceeded",
        "packet_too_large",
        "malformed_packet",
        "protocol_error",
        "unsupported_protocol_version",
        "topic_name_invalid",
        "topic_alias_invalid",
        "qos_not_supported",
        "bad_authentication_method",
        "protocol_violation",
        "connect_refused",
    ];

    /// Whether the server tells a v5 client why with a DISCONNECT before closing. The client's
    /// own DISCONNECT and a lost connection get none; a refused CONNECT got its CONNACK.
    pub fn server_sends_disconnect(&self) -> bool {
        !matches!(
            self,
            CloseReason::ClientDisconnect
                | CloseReason::ClientDisconnectWithWill
                | CloseReason::ClientError(_)
                | CloseReason::ConnectionLost
                | CloseReason::ConnectRefused(_)
        )
    }

    /// Whether the will message is published for this close ([MQTT-3.1.2-8]: the will is
    /// discarded only on a normal DISCONNECT).
    pub fn publishes_will(&self) -> bool {
        !matches!(
            self,
            CloseReason::ClientDisconnect | CloseReason::ConnectRefused(_)
        )
    }
}

impl From<&DecodeError> for CloseReason {
    fn from(err: &DecodeError) -> CloseReason {
        let code = err.reason_code();
        if code == ReasonCode::PACKET_TOO_LARGE {
            return CloseReason::PacketTooLarge;
        }
        CloseReason::Violation {
            code,
            rule: err.rule(),
            detail: Cow::Owned(err.to_string()),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Violation { code, detail, .. } => write!(
                f,
                "{} ({})",
                self.label(),
                if detail.is_empty() {
                    code.name()
                } else {
                    detail
                }
            ),
            CloseReason::ClientError(code) | CloseReason::ConnectRefused(code) => {
                write!(f, "{} ({})", self.label(), code)
            }
            _ => f.write_str(self.label()),
        }
    }
}
