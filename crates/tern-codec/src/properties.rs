//! MQTT 5 properties (spec 2.2.2), one struct per packet type.
//!
//! Every field is optional; `None` (or an empty list) means the property is absent on the wire.
//! The decoder rejects a property that is not allowed in the packet it arrived in, and a second
//! copy of any property other than User Property and (in PUBLISH) Subscription Identifier.
//! For 3.1 and 3.1.1 every property struct is its default and nothing of it is encoded.

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;

/// User Property (0x26) pairs, in the order they appeared. Order is significant and preserved
/// end to end ([MQTT-3.3.2-18]).
pub type UserProperties = Vec<(ByteString, ByteString)>;

/// Property identifiers (spec 2.2.2.2).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

    /// The spec's name of a property identifier, for errors and logs; `None` for an identifier
    /// the spec does not define.
    pub const fn name(id: u8) -> Option<&'static str> {
        Some(match id {
            PAYLOAD_FORMAT_INDICATOR => "Payload Format Indicator",
            MESSAGE_EXPIRY_INTERVAL => "Message Expiry Interval",
            CONTENT_TYPE => "Content Type",
            RESPONSE_TOPIC => "Response Topic",
            CORRELATION_DATA => "Correlation Data",
            SUBSCRIPTION_IDENTIFIER => "Subscription Identifier",
            SESSION_EXPIRY_INTERVAL => "Session Expiry Interval",
            ASSIGNED_CLIENT_IDENTIFIER => "Assigned Client Identifier",
            SERVER_KEEP_ALIVE => "Server Keep Alive",
            AUTHENTICATION_METHOD => "Authentication Method",
            AUTHENTICATION_DATA => "Authentication Data",
            REQUEST_PROBLEM_INFORMATION => "Request Problem Information",
            WILL_DELAY_INTERVAL => "Will Delay Interval",
            REQUEST_RESPONSE_INFORMATION => "Request Response Information",
            RESPONSE_INFORMATION => "Response Information",
            SERVER_REFERENCE => "Server Reference",
            REASON_STRING => "Reason String",
            RECEIVE_MAXIMUM => "Receive Maximum",
            TOPIC_ALIAS_MAXIMUM => "Topic Alias Maximum",
            TOPIC_ALIAS => "Topic Alias",
            MAXIMUM_QOS => "Maximum QoS",
            RETAIN_AVAILABLE => "Retain Available",
            USER_PROPERTY => "User Property",
            MAXIMUM_PACKET_SIZE => "Maximum Packet Size",
            WILDCARD_SUBSCRIPTION_AVAILABLE => "Wildcard Subscription Available",
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => "Subscription Identifier Available",
            SHARED_SUBSCRIPTION_AVAILABLE => "Shared Subscription Available",
            _ => return None,
        })
    }
}

/// CONNECT properties (3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    /// Must not be 0 (3.1.2.11.3: a value of 0 is a Protocol Error).
    pub receive_maximum: Option<u16>,
    /// Must not be 0 (Protocol Error).
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    /// 0 or 1; other values are a Protocol Error.
    pub request_response_information: Option<bool>,
    /// 0 or 1; other values are a Protocol Error.
    pub request_problem_information: Option<bool>,
    pub user_properties: UserProperties,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

/// Will properties inside CONNECT's payload (3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    /// 0 = unspecified bytes, 1 = UTF-8.
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

/// CONNACK properties (3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    /// 0 or 1; absent means 2.
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH properties (3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0 = unspecified bytes, 1 = UTF-8.
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    /// Must not be 0 ([MQTT-3.3.2-8]: 0 is a Topic Alias Invalid error, checked by the broker).
    pub topic_alias: Option<u16>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
    /// Server to client only; each is 1..=268_435_455. A client-sent PUBLISH carrying one is a
    /// Protocol Error ([MQTT-3.3.4-6]), checked by the broker.
    pub subscription_identifiers: SmallVec<[u32; 2]>,
    pub content_type: Option<ByteString>,
}

impl PublishProperties {
    /// No property set, as a constant (for a `static` of empty properties).
    pub const EMPTY: PublishProperties = PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: SmallVec::new_const(),
        content_type: None,
    };

    /// True when no property is set (the encoded property length is 0).
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: a reason string and user
/// properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

impl AckProperties {
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

/// SUBSCRIBE properties (3.8.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 1..=268_435_455; 0 is a Protocol Error.
    pub subscription_identifier: Option<u32>,
    pub user_properties: UserProperties,
}

/// UNSUBSCRIBE properties (3.10.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: UserProperties,
}

/// DISCONNECT properties (3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
    pub server_reference: Option<ByteString>,
}

impl DisconnectProperties {
    /// True when no property is set (the encoded property length is 0).
    pub fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
            && self.server_reference.is_none()
    }
}

/// AUTH properties (3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

impl AuthProperties {
    /// True when no property is set (the encoded property length is 0).
    pub fn is_empty(&self) -> bool {
        self.authentication_method.is_none()
            && self.authentication_data.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
    }
}
