//! Encoding: packets to bytes appended to the caller's buffer.
//!
//! Every packet is measured first, the buffer reserved once, and the bytes written in one pass;
//! payloads are copied into the output buffer once and never staged elsewhere. For 3.1 and 3.1.1
//! only what the version has is written: properties are dropped, reason codes map to the 3.x
//! return codes or disappear. MQTT 5 short forms are used where the spec allows them.
//!
//! The encoder writes what the model says and fails only where the model cannot be put on the
//! wire ([`EncodeError`]); it does not re-check the rules the decoder enforces, so tests can
//! send packets that break them. On error `buf` is left as it was.
//!
//! Layout: this file has the fixed header, the dispatch and the small packets; `connect` has
//! CONNECT and CONNACK, `publish` PUBLISH and its acknowledgements, `subscribe`
//! SUBSCRIBE/UNSUBSCRIBE and their acknowledgements, `properties` the MQTT 5 property lists.

mod connect;
mod outgoing;
mod properties;
mod publish;
mod subscribe;

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::packet::{Auth, Disconnect, Packet, PacketType, Publish};
use crate::reason::ReasonCode;
use crate::types::ProtocolVersion;
use crate::wire::{VAR_INT_MAX, put_var_int, var_int_len};

pub use self::outgoing::{Outgoing, encode_outgoing, encode_outgoing_head, outgoing_len};
use self::properties::{list_len, put_list};

/// Appends `packet`, encoded for a connection of `version`, to `buf`. CONNECT is encoded for
/// the version it carries (`Connect::protocol`), whatever `version` says.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Publish(p) = packet {
        return encode_publish(p, version, buf);
    }
    if matches!(packet, Packet::Auth(_)) && !version.is_v5() {
        return Err(EncodeError::NotInVersion {
            packet: PacketType::Auth,
            version,
        });
    }
    let remaining = body_len(packet, version);
    frame(buf, first_byte(packet), remaining, |buf| {
        write_body(packet, version, buf)
    })
}

/// The number of bytes `encode` writes for `packet` (fixed header included): what a sender
/// compares with the receiver's Maximum Packet Size. For AUTH in 3.x, which cannot be encoded,
/// it is the MQTT 5 length.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let remaining = body_len(packet, version);
    1 + var_int_len(remaining) + remaining
}

/// Appends a PUBLISH: the hot path of fan-out, without going through [`Packet`].
pub fn encode_publish(
    p: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = publish::publish_body_len(p, version);
    frame(buf, publish::first_byte(p), remaining, |buf| {
        publish::write_publish(p, version, buf)
    })
}

/// The number of bytes [`encode_publish`] writes for `p` (fixed header included).
pub fn publish_len(p: &Publish, version: ProtocolVersion) -> usize {
    let remaining = publish::publish_body_len(p, version);
    1 + var_int_len(remaining) + remaining
}

/// Writes the fixed header and the body `write` produces, with one reservation; restores `buf`
/// when `write` fails.
fn frame(
    buf: &mut BytesMut,
    first: u8,
    remaining: usize,
    write: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    if remaining > VAR_INT_MAX as usize {
        return Err(EncodeError::PacketTooLarge { remaining });
    }
    let start = buf.len();
    buf.reserve(1 + var_int_len(remaining) + remaining);
    buf.put_u8(first);
    put_var_int(buf, remaining);
    let body_start = buf.len();
    match write(buf) {
        Ok(()) => {
            debug_assert_eq!(
                buf.len() - body_start,
                remaining,
                "remaining length mismatch"
            );
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// The first byte: packet type and the flags [MQTT-2.1.3-1] requires.
fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(p) => return publish::first_byte(p),
        _ => packet_type.required_flags().unwrap_or(0),
    };
    (packet_type as u8) << 4 | flags
}

/// The remaining length of `packet`.
fn body_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match packet {
        Packet::Connect(c) => connect::connect_body_len(c),
        Packet::ConnAck(c) => connect::connack_body_len(c, version),
        Packet::Publish(p) => publish::publish_body_len(p, version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            publish::ack_body_len(a, version)
        }
        Packet::Subscribe(s) => subscribe::subscribe_body_len(s, version),
        Packet::SubAck(s) => subscribe::suback_body_len(s, version),
        Packet::Unsubscribe(u) => subscribe::unsubscribe_body_len(u, version),
        Packet::UnsubAck(u) => subscribe::unsuback_body_len(u, version),
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => disconnect_body_len(d, version),
        Packet::Auth(a) => auth_body_len(a),
    }
}

fn write_body(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => connect::write_connect(c, buf),
        Packet::ConnAck(c) => connect::write_connack(c, version, buf),
        Packet::Publish(p) => publish::write_publish(p, version, buf),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            publish::write_ack(a, version, buf)
        }
        Packet::Subscribe(s) => subscribe::write_subscribe(s, version, buf),
        Packet::SubAck(s) => subscribe::write_suback(s, version, buf),
        Packet::Unsubscribe(u) => subscribe::write_unsubscribe(u, version, buf),
        Packet::UnsubAck(u) => subscribe::write_unsuback(u, version, buf),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => write_disconnect(d, version, buf),
        Packet::Auth(a) => write_auth(a, buf),
    }
}

/// DISCONNECT: empty in 3.x; in 5.0 `e0 00` for Normal disconnection without properties,
/// the reason alone when there are no properties.
fn disconnect_body_len(d: &Disconnect, version: ProtocolVersion) -> usize {
    if !version.is_v5() {
        0
    } else if d.properties.is_empty() {
        usize::from(d.reason != ReasonCode::NORMAL_DISCONNECTION)
    } else {
        1 + list_len(&d.properties)
    }
}

fn write_disconnect(
    d: &Disconnect,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !version.is_v5() {
        return Ok(());
    }
    if d.properties.is_empty() {
        if d.reason != ReasonCode::NORMAL_DISCONNECTION {
            buf.put_u8(d.reason.0);
        }
        return Ok(());
    }
    buf.put_u8(d.reason.0);
    put_list(&d.properties, buf)
}

/// AUTH: `f0 00` for Success without properties; otherwise the reason and the property list.
fn auth_body_len(a: &Auth) -> usize {
    if a.reason == ReasonCode::SUCCESS && a.properties.is_empty() {
        0
    } else {
        1 + list_len(&a.properties)
    }
}

fn write_auth(a: &Auth, buf: &mut BytesMut) -> Result<(), EncodeError> {
    if a.reason == ReasonCode::SUCCESS && a.properties.is_empty() {
        return Ok(());
    }
    buf.put_u8(a.reason.0);
    put_list(&a.properties, buf)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::*;

    fn encoded(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(packet, version, &mut buf).unwrap();
        assert_eq!(buf.len(), encoded_len(packet, version));
        buf.to_vec()
    }

    #[test]
    fn short_forms() {
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            encoded(&Packet::Disconnect(Disconnect::default()), v5),
            [0xE0, 0x00]
        );
        let d = Disconnect {
            reason: ReasonCode::SESSION_TAKEN_OVER,
            ..Default::default()
        };
        assert_eq!(
            encoded(&Packet::Disconnect(d.clone()), v5),
            [0xE0, 0x01, 0x8E]
        );
        assert_eq!(
            encoded(&Packet::Disconnect(d), ProtocolVersion::V311),
            [0xE0, 0x00]
        );
        assert_eq!(
            encoded(&Packet::PubAck(PubAck::new(5)), v5),
            [0x40, 0x02, 0x00, 0x05]
        );
        let ack = PubAck {
            reason: ReasonCode::QUOTA_EXCEEDED,
            ..PubAck::new(5)
        };
        assert_eq!(
            encoded(&Packet::PubRec(ack.clone()), v5),
            [0x50, 0x03, 0x00, 0x05, 0x97]
        );
        assert_eq!(
            encoded(&Packet::PubRec(ack), ProtocolVersion::V311),
            [0x50, 0x02, 0x00, 0x05]
        );
        assert_eq!(
            encoded(&Packet::PubRel(PubAck::new(5)), v5),
            [0x62, 0x02, 0x00, 0x05]
        );
        assert_eq!(encoded(&Packet::Auth(Auth::default()), v5), [0xF0, 0x00]);
    }

    #[test]
    fn v3_drops_what_the_version_lacks() {
        let v3 = ProtocolVersion::V311;
        let connack = ConnAck {
            session_present: true,
            code: ReasonCode::BANNED,
            properties: ConnAckProperties {
                maximum_qos: Some(1),
                ..Default::default()
            },
        };
        // Banned has no 3.x code of its own: not authorized (5).
        assert_eq!(
            encoded(&Packet::ConnAck(connack.clone()), v3),
            [0x20, 0x02, 0x01, 0x05]
        );
        assert_eq!(
            encoded(&Packet::ConnAck(connack), ProtocolVersion::V31),
            [0x20, 0x02, 0x00, 0x05]
        );
        let unsuback = UnsubAck {
            packet_id: 3,
            properties: AckProperties {
                reason_string: Some("x".into()),
                ..Default::default()
            },
            reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        };
        assert_eq!(
            encoded(&Packet::UnsubAck(unsuback), v3),
            [0xB0, 0x02, 0x00, 0x03]
        );
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: PublishProperties {
                message_expiry_interval: Some(9),
                ..Default::default()
            },
            payload: Bytes::from_static(b"p"),
        };
        assert_eq!(
            encoded(&Packet::Publish(publish), v3),
            [0x30, 0x04, 0x00, 0x01, b't', b'p']
        );
    }

    #[test]
    fn errors_leave_the_buffer_untouched() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let long = "x".repeat(70_000);
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: long.as_str().into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::new(),
        };
        let e = encode_publish(&publish, ProtocolVersion::V5, &mut buf).unwrap_err();
        assert_eq!(
            e,
            EncodeError::FieldTooLong {
                field: "topic name",
                len: 70_000
            }
        );
        assert_eq!(&buf[..], b"prefix");

        let publish = Publish {
            topic: "t".into(),
            qos: QoS::AtLeastOnce,
            ..publish
        };
        let e = encode(
            &Packet::Publish(publish.clone()),
            ProtocolVersion::V5,
            &mut buf,
        );
        assert_eq!(
            e,
            Err(EncodeError::PublishPacketId {
                qos: QoS::AtLeastOnce,
                packet_id: None
            })
        );
        let publish = Publish {
            qos: QoS::AtMostOnce,
            packet_id: Some(1),
            ..publish
        };
        assert!(encode_publish(&publish, ProtocolVersion::V5, &mut buf).is_err());
        let mut props = PublishProperties::default();
        props.subscription_identifiers.push(268_435_456);
        let publish = Publish {
            packet_id: None,
            properties: props,
            ..publish
        };
        assert_eq!(
            encode_publish(&publish, ProtocolVersion::V5, &mut buf),
            Err(EncodeError::VarIntOutOfRange {
                field: "Subscription Identifier",
                value: 268_435_456
            })
        );
        let e = encode(
            &Packet::Auth(Auth::default()),
            ProtocolVersion::V311,
            &mut buf,
        );
        assert_eq!(
            e,
            Err(EncodeError::NotInVersion {
                packet: PacketType::Auth,
                version: ProtocolVersion::V311
            })
        );
        assert_eq!(&buf[..], b"prefix");
    }

    #[test]
    fn packet_too_large() {
        // A zeroed allocation is never touched: the encoder fails before reserving.
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; 268_435_455 - 3]),
        };
        assert_eq!(publish_len(&publish, ProtocolVersion::V311), 268_435_460);
        let mut buf = BytesMut::new();
        let publish = Publish {
            topic: "tt".into(),
            ..publish
        };
        let e = encode_publish(&publish, ProtocolVersion::V311, &mut buf);
        assert_eq!(
            e,
            Err(EncodeError::PacketTooLarge {
                remaining: 268_435_456
            })
        );
        assert!(buf.is_empty());
    }

    /// The payload appears once in the output and the encoder appends after existing bytes.
    #[test]
    fn appends() {
        let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
        encode(&Packet::PingResp, ProtocolVersion::V5, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0xC0, 0x00, 0xD0, 0x00]);
    }
}
