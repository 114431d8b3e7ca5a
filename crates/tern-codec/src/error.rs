//! Decode and encode errors.
//!
//! A [`DecodeError`] is a protocol violation by the peer: its text names the spec rule it breaks
//! (the MQTT 5.0 normative statement, `[MQTT-x.y.z-n]`, or the section where the spec states the
//! rule without a number) and [`DecodeError::reason_code`] gives the MQTT 5 reason code for the
//! DISCONNECT (or CONNACK) that answers it. After any decode error the connection must be closed.
//!
//! An [`EncodeError`] means the model cannot be put on the wire (a string longer than 65,535
//! bytes, a packet longer than 268,435,455 bytes...). The encoder does not re-check the rules the
//! decoder enforces, so tests can send packets that break them.

use crate::packet::PacketType;
use crate::reason::ReasonCode;
use crate::types::{PacketId, ProtocolVersion, QoS};

/// A received packet that breaks the protocol. Variants are grouped by where they occur.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    // ---- framing (spec 2.1) ----
    /// The fixed header announces a packet larger than the receiver's Maximum Packet Size. Raised
    /// as soon as the fixed header is complete, before the body is buffered. The rule quoted is
    /// the client's ([MQTT-3.2.2-15]); a server sending too large a packet breaks
    /// [MQTT-3.1.2-24].
    #[error(
        "[MQTT-3.2.2-15] packet of {size} bytes exceeds the maximum packet size of {max} bytes"
    )]
    PacketTooLarge { size: u32, max: u32 },
    /// A Variable Byte Integer whose fourth byte still has the continuation bit set.
    #[error("[MQTT-1.5.5-1] {field}: variable byte integer longer than 4 bytes")]
    VarIntTooLong { field: &'static str },
    /// Packet type 0, or 15 (AUTH) before MQTT 5.
    #[error("[MQTT 2.1.2] packet type {packet_type} is reserved in MQTT {version}")]
    ReservedPacketType {
        packet_type: u8,
        version: ProtocolVersion,
    },
    /// Fixed header flags other than those the packet type requires.
    #[error("[MQTT-2.1.3-1] invalid fixed header flags {flags:#x} for {packet}")]
    InvalidFlags { packet: PacketType, flags: u8 },
    /// The remaining length ends before a field of the packet.
    #[error("[MQTT 2.1.4] {packet} ends before its {field}: remaining length too short")]
    Truncated {
        packet: PacketType,
        field: &'static str,
    },
    /// Bytes left over after the last field of the packet.
    #[error(
        "[MQTT 2.1.4] {packet} has {extra} bytes after its last field: remaining length too long"
    )]
    TrailingBytes { packet: PacketType, extra: usize },

    // ---- data types (spec 1.5) ----
    /// A UTF-8 Encoded String that is not well-formed UTF-8 (surrogates included).
    #[error("[MQTT-1.5.4-1] {field}: invalid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// A UTF-8 Encoded String containing U+0000.
    #[error("[MQTT-1.5.4-2] {field}: contains the null character U+0000")]
    NullCharacter { field: &'static str },

    // ---- CONNECT (3.1) ----
    /// A protocol name other than `MQTT` and `MQIsdp`. Carries the level byte that followed it.
    #[error("[MQTT-3.1.2-1] unknown protocol name (protocol level {level})")]
    UnknownProtocolName { level: u8 },
    /// A known protocol name with a level this codec does not speak (`MQIsdp` other than 3,
    /// `MQTT` other than 4 and 5). The broker answers CONNACK 0x84 / return code 1.
    #[error("[MQTT-3.1.2-2] unsupported protocol level {level}")]
    UnsupportedProtocolVersion { level: u8 },
    /// The reserved bit 0 of the Connect Flags is set (3.1.1 and 5.0).
    #[error("[MQTT-3.1.2-3] reserved bit 0 of the CONNECT flags is set")]
    ConnectReservedFlag,
    /// The Will QoS is 3.
    #[error("[MQTT-3.1.2-12] will QoS 3")]
    InvalidWillQoS,
    /// The Will Flag is 0 but the Will QoS is not.
    #[error("[MQTT-3.1.2-11] will QoS {qos} without the will flag")]
    WillQoSWithoutWill { qos: u8 },
    /// The Will Flag is 0 but Will Retain is set.
    #[error("[MQTT-3.1.2-13] will retain without the will flag")]
    WillRetainWithoutWill,
    /// The Password Flag is set without the User Name Flag (3.1.1; allowed in 5.0, and in 3.1
    /// the password is ignored as brokers have always done).
    #[error("[MQTT-3.1.2-22] password without user name in MQTT {version}")]
    PasswordWithoutUsername { version: ProtocolVersion },
    /// An empty Client Identifier where the version forbids it: 3.1.1 with Clean Session 0, and
    /// 3.1 always. The broker answers CONNACK return code 2 (identifier rejected) in `version`.
    #[error(
        "[MQTT-3.1.3-8] empty client identifier not allowed in MQTT {version} with clean session {clean_start}"
    )]
    ClientIdNotValid {
        version: ProtocolVersion,
        clean_start: bool,
    },
    /// Authentication Data without an Authentication Method.
    #[error("[MQTT 3.1.2.11.10] authentication data without an authentication method")]
    AuthDataWithoutMethod,

    // ---- CONNACK (3.2) ----
    /// Bits 7-1 of the Connect Acknowledge Flags are not 0.
    #[error("[MQTT-3.2.2-1] reserved CONNACK flags {flags:#04x}")]
    ConnAckReservedFlags { flags: u8 },

    // ---- PUBLISH (3.3) and topics (4.7) ----
    /// Both QoS bits of a PUBLISH are set.
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    InvalidPublishQoS,
    /// DUP set on a QoS 0 PUBLISH.
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// A Topic Name (of a PUBLISH or a Will) containing `+` or `#`.
    #[error("[MQTT-3.3.2-2] {field} contains a wildcard character")]
    WildcardInTopicName { field: &'static str },
    /// An empty Topic Name where no Topic Alias can stand for it (3.x PUBLISH, Will Topic).
    #[error("[MQTT-4.7.3-1] empty {field}")]
    EmptyTopicName { field: &'static str },
    /// An MQTT 5 PUBLISH with an empty Topic Name and no Topic Alias.
    #[error("[MQTT 3.3.2.1] PUBLISH with an empty topic name and no topic alias")]
    EmptyTopicWithoutAlias,

    // ---- SUBSCRIBE, UNSUBSCRIBE (3.8, 3.10) ----
    /// A SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    #[error("[{}] {packet} without topic filters", no_filters_rule(.packet))]
    NoTopicFilters { packet: PacketType },
    /// An empty Topic Filter.
    #[error("[MQTT-4.7.3-1] empty topic filter in {packet}")]
    EmptyTopicFilter { packet: PacketType },
    /// Subscription options with QoS 3.
    #[error("[MQTT-3.8.3-4] subscription options with QoS 3")]
    InvalidSubscriptionQoS,
    /// Reserved bits of the subscription options set (bits 7-2 in 3.x, 7-6 in 5.0).
    #[error("[{}] reserved bits set in subscription options {options:#04x}", reserved_bits_rule(.version))]
    SubscriptionReservedBits {
        options: u8,
        version: ProtocolVersion,
    },
    /// Retain Handling 3.
    #[error("[MQTT 3.8.3.1] retain handling 3")]
    InvalidRetainHandling,

    // ---- packet identifiers (2.2.1) ----
    /// A packet identifier of 0.
    #[error("[MQTT-2.2.1-3] packet identifier 0 in {packet}")]
    ZeroPacketId { packet: PacketType },

    // ---- properties (2.2.2) ----
    /// A property identifier the spec does not define.
    #[error("[MQTT 2.2.2.2] unknown property identifier {id:#04x}")]
    UnknownProperty { id: u8 },
    /// A property the spec does not allow in this packet (or in the Will properties of CONNECT).
    #[error("[MQTT 2.2.2.2] property {id:#04x} ({}) not allowed in {packet}", property_name(.id))]
    PropertyNotAllowed { id: u8, packet: PacketType },
    /// A second copy of a property that may appear once.
    #[error("[MQTT 2.2.2.2] property {id:#04x} ({}) included more than once in {packet}", property_name(.id))]
    DuplicateProperty { id: u8, packet: PacketType },
    /// A property value outside its range: Receive Maximum, Maximum Packet Size or Subscription
    /// Identifier 0; a byte property limited to 0 and 1 (Payload Format Indicator, Maximum QoS,
    /// Request Problem/Response Information, the `*_available` flags) with another value.
    #[error("[MQTT {}] property {id:#04x} ({}) has the invalid value {value}", property_section(.id), property_name(.id))]
    InvalidPropertyValue { id: u8, value: u32 },

    // ---- reason codes (2.4) ----
    /// A reason code the packet type does not allow, or a 3.x CONNACK return code above 5 or
    /// SUBACK return code other than 0, 1, 2 and 0x80.
    #[error("[MQTT 2.4] invalid reason code {code:#04x} in {packet}")]
    InvalidReasonCode { packet: PacketType, code: u8 },
}

fn property_name(id: &u8) -> &'static str {
    crate::properties::id::name(*id).unwrap_or("unknown")
}

/// The section that states a property's range, for [`DecodeError::InvalidPropertyValue`].
fn property_section(id: &u8) -> &'static str {
    use crate::properties::id::*;
    match *id {
        PAYLOAD_FORMAT_INDICATOR => "3.3.2.3.2",
        SUBSCRIPTION_IDENTIFIER => "3.8.2.1.2",
        RECEIVE_MAXIMUM => "3.1.2.11.3",
        MAXIMUM_PACKET_SIZE => "3.1.2.11.4",
        REQUEST_RESPONSE_INFORMATION => "3.1.2.11.6",
        REQUEST_PROBLEM_INFORMATION => "3.1.2.11.7",
        MAXIMUM_QOS => "3.2.2.3.4",
        RETAIN_AVAILABLE => "3.2.2.3.5",
        WILDCARD_SUBSCRIPTION_AVAILABLE => "3.2.2.3.11",
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => "3.2.2.3.12",
        SHARED_SUBSCRIPTION_AVAILABLE => "3.2.2.3.13",
        _ => "2.2.2.2",
    }
}

fn no_filters_rule(packet: &PacketType) -> &'static str {
    match packet {
        PacketType::Subscribe => "MQTT-3.8.3-2",
        _ => "MQTT-3.10.3-2",
    }
}

fn reserved_bits_rule(version: &ProtocolVersion) -> &'static str {
    if version.is_v5() {
        "MQTT-3.8.3-5"
    } else {
        "MQTT-3.8.3-4"
    }
}

fn qos_number(qos: &QoS) -> u8 {
    *qos as u8
}

impl DecodeError {
    /// The MQTT 5 reason code for the DISCONNECT (or, for CONNECT, the CONNACK) that answers the
    /// error. Follows spec 4.13: "Malformed Packet" when the packet cannot be parsed, "Protocol
    /// Error" when it parses but carries data the protocol does not allow.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            UnknownProtocolName { .. } | UnsupportedProtocolVersion { .. } => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            ClientIdNotValid { .. } => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            WildcardInTopicName { .. } | EmptyTopicName { .. } => ReasonCode::TOPIC_NAME_INVALID,
            EmptyTopicFilter { .. } => ReasonCode::TOPIC_FILTER_INVALID,
            AuthDataWithoutMethod
            | EmptyTopicWithoutAlias
            | NoTopicFilters { .. }
            | InvalidSubscriptionQoS
            | InvalidRetainHandling
            | ZeroPacketId { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. } => ReasonCode::PROTOCOL_ERROR,
            VarIntTooLong { .. }
            | ReservedPacketType { .. }
            | InvalidFlags { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | InvalidUtf8 { .. }
            | NullCharacter { .. }
            | ConnectReservedFlag
            | InvalidWillQoS
            | WillQoSWithoutWill { .. }
            | WillRetainWithoutWill
            | PasswordWithoutUsername { .. }
            | ConnAckReservedFlags { .. }
            | InvalidPublishQoS
            | DupOnQoS0
            | SubscriptionReservedBits { .. }
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. } => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// The normative statement the error breaks, as the spec numbers it (`"MQTT-2.1.3-1"`);
    /// `None` for rules the spec states without a number (the Display text then names the
    /// section). Numbers are MQTT 5.0's, except [MQTT-3.1.2-22] and [MQTT-3.1.3-8] (3.1.1 only)
    /// and [MQTT-3.8.3-4] (3.1.1).
    pub fn rule(&self) -> Option<&'static str> {
        use DecodeError::*;
        Some(match self {
            PacketTooLarge { .. } => "MQTT-3.2.2-15",
            VarIntTooLong { .. } => "MQTT-1.5.5-1",
            InvalidFlags { .. } => "MQTT-2.1.3-1",
            InvalidUtf8 { .. } => "MQTT-1.5.4-1",
            NullCharacter { .. } => "MQTT-1.5.4-2",
            UnknownProtocolName { .. } => "MQTT-3.1.2-1",
            UnsupportedProtocolVersion { .. } => "MQTT-3.1.2-2",
            ConnectReservedFlag => "MQTT-3.1.2-3",
            InvalidWillQoS => "MQTT-3.1.2-12",
            WillQoSWithoutWill { .. } => "MQTT-3.1.2-11",
            WillRetainWithoutWill => "MQTT-3.1.2-13",
            PasswordWithoutUsername { .. } => "MQTT-3.1.2-22",
            ClientIdNotValid { .. } => "MQTT-3.1.3-8",
            ConnAckReservedFlags { .. } => "MQTT-3.2.2-1",
            InvalidPublishQoS => "MQTT-3.3.1-4",
            DupOnQoS0 => "MQTT-3.3.1-2",
            WildcardInTopicName { .. } => "MQTT-3.3.2-2",
            EmptyTopicName { .. } | EmptyTopicFilter { .. } => "MQTT-4.7.3-1",
            NoTopicFilters { packet } => no_filters_rule(packet),
            InvalidSubscriptionQoS => "MQTT-3.8.3-4",
            SubscriptionReservedBits { version, .. } => reserved_bits_rule(version),
            ZeroPacketId { .. } => "MQTT-2.2.1-3",
            ReservedPacketType { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | AuthDataWithoutMethod
            | EmptyTopicWithoutAlias
            | InvalidRetainHandling
            | UnknownProperty { .. }
            | PropertyNotAllowed { .. }
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | InvalidReasonCode { .. } => return None,
        })
    }
}

/// A packet the model describes but the wire format cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455, the largest Variable Byte Integer.
    #[error("[MQTT 2.1.4] remaining length {remaining} exceeds 268435455")]
    PacketTooLarge { remaining: usize },
    /// A UTF-8 string or binary field longer than 65,535 bytes.
    #[error("[MQTT 1.5.4] {field} of {len} bytes exceeds 65535")]
    FieldTooLong { field: &'static str, len: usize },
    /// A Subscription Identifier above 268,435,455.
    #[error("[MQTT 3.3.2.3.8] {field} {value} exceeds 268435455")]
    VarIntOutOfRange { field: &'static str, value: u32 },
    /// A PUBLISH whose packet identifier does not match its QoS: QoS 1 and 2 need one, QoS 0
    /// must not have one.
    #[error("[MQTT-2.2.1-2] PUBLISH with QoS {} and packet identifier {packet_id:?}", qos_number(.qos))]
    PublishPacketId {
        qos: QoS,
        packet_id: Option<PacketId>,
    },
    /// A packet type the version does not have (AUTH before MQTT 5).
    #[error("[MQTT 2.1.2] {packet} does not exist in MQTT {version}")]
    NotInVersion {
        packet: PacketType,
        version: ProtocolVersion,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error whose rule is numbered starts its text with that rule in brackets, so logs,
    /// `rule()` and the spec agree.
    #[test]
    fn display_starts_with_rule() {
        let samples = [
            DecodeError::PacketTooLarge { size: 10, max: 5 },
            DecodeError::VarIntTooLong {
                field: "remaining length",
            },
            DecodeError::InvalidFlags {
                packet: PacketType::Subscribe,
                flags: 3,
            },
            DecodeError::InvalidUtf8 {
                field: "topic name",
            },
            DecodeError::NullCharacter {
                field: "topic name",
            },
            DecodeError::UnknownProtocolName { level: 4 },
            DecodeError::UnsupportedProtocolVersion { level: 6 },
            DecodeError::ConnectReservedFlag,
            DecodeError::InvalidWillQoS,
            DecodeError::WillQoSWithoutWill { qos: 1 },
            DecodeError::WillRetainWithoutWill,
            DecodeError::PasswordWithoutUsername {
                version: ProtocolVersion::V311,
            },
            DecodeError::ClientIdNotValid {
                version: ProtocolVersion::V311,
                clean_start: false,
            },
            DecodeError::ConnAckReservedFlags { flags: 2 },
            DecodeError::InvalidPublishQoS,
            DecodeError::DupOnQoS0,
            DecodeError::WildcardInTopicName {
                field: "topic name",
            },
            DecodeError::EmptyTopicName {
                field: "topic name",
            },
            DecodeError::EmptyTopicFilter {
                packet: PacketType::Subscribe,
            },
            DecodeError::NoTopicFilters {
                packet: PacketType::Subscribe,
            },
            DecodeError::NoTopicFilters {
                packet: PacketType::Unsubscribe,
            },
            DecodeError::InvalidSubscriptionQoS,
            DecodeError::SubscriptionReservedBits {
                options: 0x40,
                version: ProtocolVersion::V5,
            },
            DecodeError::SubscriptionReservedBits {
                options: 0x04,
                version: ProtocolVersion::V311,
            },
            DecodeError::ZeroPacketId {
                packet: PacketType::PubAck,
            },
        ];
        for e in samples {
            let rule = e.rule().expect("numbered rule");
            assert!(e.to_string().starts_with(&format!("[{rule}] ")), "{e}");
        }
        let unnumbered = [
            DecodeError::ReservedPacketType {
                packet_type: 0,
                version: ProtocolVersion::V5,
            },
            DecodeError::Truncated {
                packet: PacketType::Publish,
                field: "topic name",
            },
            DecodeError::TrailingBytes {
                packet: PacketType::PingReq,
                extra: 1,
            },
            DecodeError::AuthDataWithoutMethod,
            DecodeError::EmptyTopicWithoutAlias,
            DecodeError::InvalidRetainHandling,
            DecodeError::UnknownProperty { id: 0x7F },
            DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet: PacketType::Connect,
            },
            DecodeError::DuplicateProperty {
                id: 0x21,
                packet: PacketType::Connect,
            },
            DecodeError::InvalidPropertyValue { id: 0x21, value: 0 },
            DecodeError::InvalidReasonCode {
                packet: PacketType::PubRel,
                code: 0x10,
            },
        ];
        for e in unnumbered {
            assert_eq!(e.rule(), None);
            assert!(e.to_string().starts_with("[MQTT "), "{e}");
        }
    }

    #[test]
    fn display_examples() {
        assert_eq!(
            DecodeError::InvalidFlags {
                packet: PacketType::Subscribe,
                flags: 3
            }
            .to_string(),
            "[MQTT-2.1.3-1] invalid fixed header flags 0x3 for SUBSCRIBE"
        );
        assert_eq!(
            DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet: PacketType::Connect
            }
            .to_string(),
            "[MQTT 2.2.2.2] property 0x23 (Topic Alias) not allowed in CONNECT"
        );
    }
}
