//! The packet model: one set of types for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Version differences live in the decoder and encoder, not here: a 3.1.1 PUBACK is a `PubAck`
//! with reason Success and empty properties; a 3.1.1 CONNACK return code is carried as the
//! equivalent MQTT 5 [`ReasonCode`].

use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;

use crate::properties::*;
use crate::reason::ReasonCode;
use crate::types::{PacketId, ProtocolVersion, QoS, SubscriptionOptions};

/// Control packet types (spec 2.1.2), the high nibble of the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The packet type for the high nibble of the first byte; `None` for the reserved 0.
    pub const fn from_u8(v: u8) -> Option<PacketType> {
        Some(match v {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// True when MQTT 5 allows reason `code` in this packet type (spec 2.4, table 2-6). Packets
    /// without a reason code (CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, PINGRESP) allow
    /// none.
    pub const fn allows(self, code: ReasonCode) -> bool {
        match self {
            PacketType::ConnAck => matches!(
                code.0,
                0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
            ),
            PacketType::PubAck | PacketType::PubRec => {
                matches!(
                    code.0,
                    0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
                )
            }
            PacketType::PubRel | PacketType::PubComp => matches!(code.0, 0x00 | 0x92),
            PacketType::SubAck => matches!(
                code.0,
                0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
            ),
            PacketType::UnsubAck => {
                matches!(code.0, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
            }
            PacketType::Disconnect => matches!(
                code.0,
                0x00 | 0x04
                    | 0x80..=0x83
                    | 0x87
                    | 0x89
                    | 0x8B..=0x90
                    | 0x93..=0xA2
            ),
            PacketType::Auth => matches!(code.0, 0x00 | 0x18 | 0x19),
            PacketType::Connect
            | PacketType::Publish
            | PacketType::Subscribe
            | PacketType::Unsubscribe
            | PacketType::PingReq
            | PacketType::PingResp => false,
        }
    }

    /// The spec's name of the packet type, as written in the spec: `PUBLISH`, `SUBACK`, ...
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        }
    }

    /// The flags (low nibble of the first byte) every packet type but PUBLISH must carry
    /// ([MQTT-2.1.3-1]): 0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the others.
    /// PUBLISH's flags are DUP, QoS and RETAIN; this returns `None` for it.
    pub const fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT (3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1, 3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Seconds; 0 disables keep alive.
    pub keep_alive: u16,
    /// May be empty; the broker decides whether to assign one.
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// The Will Message announced in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNACK (3.2). For 3.x, `code` holds the MQTT 5 equivalent of the return code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH (3.3). `packet_id` is `Some` exactly when `qos` is 1 or 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in MQTT 5 when a Topic Alias is given.
    pub topic: ByteString,
    pub packet_id: Option<PacketId>,
    pub properties: PublishProperties,
    /// A slice of the receive buffer; never copied.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one layout (3.4-3.7). In 3.x the reason is always
/// Success and the properties empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubAck {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: AckProperties,
}

impl PubAck {
    /// A plain acknowledgement with reason Success.
    pub fn new(packet_id: PacketId) -> PubAck {
        PubAck {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }
    }
}

/// SUBSCRIBE (3.8). Never empty ([MQTT-3.8.3-2]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub properties: SubscribeProperties,
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
}

/// SUBACK (3.9): one reason per filter, in order. In 3.x only 0x00, 0x01, 0x02 and 0x80 exist;
/// the encoder writes any failure as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub properties: AckProperties,
    pub reasons: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (3.10). Never empty ([MQTT-3.10.3-2]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub properties: UnsubscribeProperties,
    pub filters: Vec<ByteString>,
}

/// UNSUBACK (3.11). In 3.x there are no reasons on the wire: `reasons` decodes empty and is not
/// encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub properties: AckProperties,
    pub reasons: Vec<ReasonCode>,
}

/// DISCONNECT (3.14). In 3.x it carries nothing: the reason decodes as Normal disconnection.
/// In 5.0 the short forms `e0 00` and `e0 01 <reason>` are valid.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

/// AUTH (3.15), MQTT 5 only. `e0 00`-style short form: `f0 00` means Success with no properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: AuthProperties,
}
