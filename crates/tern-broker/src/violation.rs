//! The protocol rules the broker enforces beyond the codec: each [`Violation`] names the rule it
//! breaks (the MQTT conformance statement `MQTT-x.y.z-n`, or the MQTT 5.0 section where the
//! standard has no numbered statement), the reason code of the server's DISCONNECT, and the
//! message a v5 client gets as its Reason String (when it asked for problem information).
//!
//! Malformed packets are the codec's ([`tern_codec::DecodeError`]); both become
//! [`CloseReason::Violation`].

use std::borrow::Cow;

use tern_codec::{PacketType, ReasonCode};

use crate::close::CloseReason;

/// A packet that breaks a rule of MQTT: the connection is closed (v5: DISCONNECT with
/// [`Violation::reason_code`] and the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The first packet of a connection is not CONNECT; closed without an answer.
    #[error("{0:?} before CONNECT")]
    BeforeConnect(PacketType),
    #[error("second CONNECT")]
    SecondConnect,
    /// CONNACK, SUBACK, PINGRESP and the like travel from the server only.
    #[error("{0:?} is not sent by clients")]
    ServerPacket(PacketType),
    /// No enhanced authentication method is supported, so no AUTH exchange can be in progress.
    #[error("AUTH without an authentication method")]
    AuthWithoutMethod,
    #[error("PUBLISH from a client carries a Subscription Identifier")]
    SubscriptionIdFromClient,
    #[error("Response Topic is not a valid topic name")]
    ResponseTopicInvalid,
    /// A retained PUBLISH while `retain_available` is off (CONNACK said so).
    #[error("retain is not supported")]
    RetainNotSupported,
    #[error("PUBLISH without topic name or topic alias")]
    NoTopic,
    #[error("topic alias {alias} outside 1..={max}")]
    TopicAliasOutOfRange { alias: u16, max: u16 },
    #[error("topic alias {0} was never set")]
    TopicAliasUnknown(u16),
    #[error("No Local on a shared subscription")]
    NoLocalOnShared,
    /// A session that had expiry 0 cannot be given one on DISCONNECT.
    #[error("Session Expiry Interval set on DISCONNECT after CONNECT had 0")]
    SessionExpiryAfterZero,
    /// MQTT travels in binary WebSocket frames.
    #[error("text WebSocket frame: MQTT travels in binary frames")]
    WebSocketText,
    /// The WebSocket framing itself is broken (RFC 6455); no MQTT rule applies.
    #[error("WebSocket protocol error: {0}")]
    WebSocketProtocol(String),
}

impl Violation {
    /// The rule broken, as the MQTT standard numbers it.
    pub fn rule(&self) -> Option<&'static str> {
        Some(match self {
            Violation::BeforeConnect(_) => "MQTT-3.1.0-1",
            Violation::SecondConnect => "MQTT-3.1.0-2",
            Violation::ServerPacket(_) => "MQTT-2.1.2",
            Violation::AuthWithoutMethod => "MQTT-4.12.0-1",
            Violation::SubscriptionIdFromClient => "MQTT-3.3.4-6",
            Violation::ResponseTopicInvalid => "MQTT-3.3.2-14",
            Violation::RetainNotSupported => "MQTT5 3.3.1.3",
            Violation::NoTopic | Violation::TopicAliasUnknown(_) => "MQTT5 3.3.2.3.4",
            Violation::TopicAliasOutOfRange { .. } => "MQTT-3.3.2-9",
            Violation::NoLocalOnShared => "MQTT-3.8.3-4",
            Violation::SessionExpiryAfterZero => "MQTT-3.14.2-2",
            Violation::WebSocketText => "MQTT-6.0.0-1",
            Violation::WebSocketProtocol(_) => return None,
        })
    }

    /// The reason code of the server's DISCONNECT.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Violation::AuthWithoutMethod => ReasonCode::BAD_AUTHENTICATION_METHOD,
            Violation::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            Violation::TopicAliasOutOfRange { .. } => ReasonCode::TOPIC_ALIAS_INVALID,
            Violation::WebSocketProtocol(_) => ReasonCode::MALFORMED_PACKET,
            _ => ReasonCode::PROTOCOL_ERROR,
        }
    }
}

impl From<Violation> for CloseReason {
    fn from(v: Violation) -> CloseReason {
        CloseReason::Violation {
            code: v.reason_code(),
            rule: v.rule(),
            detail: Cow::Owned(v.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_keeps_code_rule_and_message() {
        let reason = CloseReason::from(Violation::TopicAliasOutOfRange { alias: 9, max: 8 });
        assert_eq!(
            reason,
            CloseReason::Violation {
                code: ReasonCode::TOPIC_ALIAS_INVALID,
                rule: Some("MQTT-3.3.2-9"),
                detail: Cow::Borrowed("topic alias 9 outside 1..=8"),
            }
        );
        assert_eq!(reason.label(), "topic_alias_invalid");
        let reason = CloseReason::from(Violation::SecondConnect);
        assert_eq!(reason.reason_code(), ReasonCode::PROTOCOL_ERROR);
        assert_eq!(reason.to_string(), "protocol_error (second CONNECT)");
    }
}
