//! PUBLISH (3.3) and its acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP (3.4-3.7).
//!
//! The hot path: a PUBLISH allocates nothing beyond the packet struct (and the user property
//! list when there is one); topic and payload are slices of the frame.

use crate::decode::{properties, read_reason};
use crate::error::DecodeError;
use crate::packet::{PubAck, Publish};
use crate::properties::{AckProperties, PublishProperties};
use crate::types::{ProtocolVersion, QoS};
use crate::wire::Reader;

const DUP: u8 = 0b1000;
const RETAIN: u8 = 0b0001;

/// The fixed header flags of PUBLISH (3.3.1): DUP, QoS, RETAIN. Checked on the first byte.
pub(super) fn check_flags(flags: u8) -> Result<(), DecodeError> {
    match (flags >> 1) & 0x03 {
        3 => Err(DecodeError::InvalidPublishQoS),
        0 if flags & DUP != 0 => Err(DecodeError::DupOnQoS0),
        _ => Ok(()),
    }
}

pub(super) fn decode_publish(
    r: &mut Reader<'_>,
    flags: u8,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidPublishQoS)?;
    let topic = r.topic_name("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = if version.is_v5() {
        let properties = properties::publish(r)?;
        // An empty topic name stands for the topic of the Topic Alias (3.3.2.1).
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        properties
    } else {
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName {
                field: "topic name",
            });
        }
        PublishProperties::default()
    };
    Ok(Publish {
        dup: flags & DUP != 0,
        qos,
        retain: flags & RETAIN != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. 3.x: the packet id alone. 5.0: a remaining length of 2
/// means Success without properties, 3 a reason without properties.
pub(super) fn decode_ack(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<PubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !version.is_v5() || r.is_empty() {
        return Ok(PubAck::new(packet_id));
    }
    let reason = read_reason(r)?;
    let properties = if r.is_empty() {
        AckProperties::default()
    } else {
        properties::ack(r)?
    };
    Ok(PubAck {
        packet_id,
        reason,
        properties,
    })
}

/// Hand-written PUBLISH and ack layouts from the specs, decoded, checked and re-encoded.
#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::decode::tests::{decode_err, decode_ok, roundtrip};
    use crate::*;

    /// 3.1.1 PUBLISH, QoS 1, retain, topic "a/b", packet id 10, payload "hello" (3.3.2 figure
    /// 3.11 layout).
    #[test]
    fn publish_v311_qos1() {
        #[rustfmt::skip]
        let bytes = [
            0x33, 0x0C, // PUBLISH, QoS 1, retain, remaining length 12
            0x00, 0x03, b'a', b'/', b'b', // topic
            0x00, 0x0A, // packet id 10
            b'h', b'e', b'l', b'l', b'o',
        ];
        let Packet::Publish(p) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!((p.dup, p.qos, p.retain), (false, QoS::AtLeastOnce, true));
        assert_eq!(&*p.topic, "a/b");
        assert_eq!(p.packet_id, Some(10));
        assert_eq!(p.payload, Bytes::from_static(b"hello"));
        roundtrip(&bytes, ProtocolVersion::V311);
        roundtrip(&bytes, ProtocolVersion::V31);
    }

    #[test]
    fn publish_qos0_qos2_dup_empty_payload() {
        roundtrip(&[0x30, 0x03, 0x00, 0x01, b't'], ProtocolVersion::V311);
        let bytes = [0x3C, 0x05, 0x00, 0x01, b't', 0xFF, 0xFF];
        let Packet::Publish(p) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!(
            (p.dup, p.qos, p.packet_id),
            (true, QoS::ExactlyOnce, Some(0xFFFF))
        );
        assert!(p.payload.is_empty());
        roundtrip(&bytes, ProtocolVersion::V311);
    }

    /// A v5 PUBLISH the way a server forwards it: properties including two Subscription
    /// Identifiers and user properties.
    #[test]
    fn publish_v5_with_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x32, 0x1B, // PUBLISH, QoS 1, remaining length 27
            0x00, 0x01, b't', // topic
            0x00, 0x01, // packet id 1
            0x13, // properties length 19
            0x01, 0x01, // payload format indicator 1
            0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry interval 60
            0x0B, 0x05, // subscription identifier 5
            0x0B, 0x80, 0x01, // subscription identifier 128
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
            b'h', b'i', // payload
        ];
        let Packet::Publish(p) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(p.properties.payload_format_indicator, Some(1));
        assert_eq!(p.properties.message_expiry_interval, Some(60));
        assert_eq!(&p.properties.subscription_identifiers[..], &[5, 128]);
        assert_eq!(p.properties.user_properties, vec![("k".into(), "v".into())]);
        assert_eq!(p.payload, Bytes::from_static(b"hi"));
        roundtrip(&bytes, ProtocolVersion::V5);
    }

    /// An empty topic with a Topic Alias is valid in 5.0 only.
    #[test]
    fn publish_topic_alias() {
        let bytes = [0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07];
        let Packet::Publish(p) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(p.topic, "");
        assert_eq!(p.properties.topic_alias, Some(7));
        roundtrip(&bytes, ProtocolVersion::V5);
        let e = decode_err(&[0x30, 0x03, 0x00, 0x00, 0x00], ProtocolVersion::V5);
        assert_eq!(e, DecodeError::EmptyTopicWithoutAlias);
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        let e = decode_err(&[0x30, 0x02, 0x00, 0x00], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::EmptyTopicName {
                field: "topic name"
            }
        );
        assert_eq!(e.rule(), Some("MQTT-4.7.3-1"));
        assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
    }

    /// The payload and the topic are slices of the received frame, not copies.
    #[test]
    fn publish_is_zero_copy() {
        let mut buf =
            bytes::BytesMut::from(&[0x30, 0x07, 0x00, 0x01, b't', b'd', b'a', b't', b'a'][..]);
        let base = buf.as_ptr() as usize;
        let Some(Packet::Publish(p)) = decode(&mut buf, 1024, ProtocolVersion::V311).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4);
        assert_eq!(p.payload.as_ptr() as usize, base + 5);
    }

    #[test]
    fn publish_errors() {
        let v = ProtocolVersion::V311;
        let e = decode_err(&[0x36, 0x03, 0x00, 0x01, b't'], v);
        assert_eq!(e, DecodeError::InvalidPublishQoS);
        assert_eq!(e.rule(), Some("MQTT-3.3.1-4"));
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        let e = decode_err(&[0x38, 0x03, 0x00, 0x01, b't'], v);
        assert_eq!(e, DecodeError::DupOnQoS0);
        assert_eq!(e.rule(), Some("MQTT-3.3.1-2"));
        for wildcard in [b'+', b'#'] {
            let e = decode_err(&[0x30, 0x05, 0x00, 0x03, b'a', b'/', wildcard], v);
            assert_eq!(
                e,
                DecodeError::WildcardInTopicName {
                    field: "topic name"
                }
            );
            assert_eq!(e.rule(), Some("MQTT-3.3.2-2"));
            assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
        }
        let e = decode_err(&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], v);
        assert_eq!(
            e,
            DecodeError::NullCharacter {
                field: "topic name"
            }
        );
        assert_eq!(e.rule(), Some("MQTT-1.5.4-2"));
        let e = decode_err(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28], v);
        assert_eq!(
            e,
            DecodeError::InvalidUtf8 {
                field: "topic name"
            }
        );
        assert_eq!(e.rule(), Some("MQTT-1.5.4-1"));
        let e = decode_err(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], v);
        assert_eq!(
            e,
            DecodeError::ZeroPacketId {
                packet: PacketType::Publish
            }
        );
        assert_eq!(e.rule(), Some("MQTT-2.2.1-3"));
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        // Topic length beyond the remaining length.
        let e = decode_err(&[0x30, 0x03, 0x00, 0x05, b't'], v);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::Publish,
                field: "topic name"
            }
        );
        let e = decode_err(&[0x32, 0x04, 0x00, 0x01, b't', 0x00], v);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::Publish,
                field: "packet identifier"
            }
        );
    }

    #[test]
    fn publish_v5_property_errors() {
        let v = ProtocolVersion::V5;
        let with_props = |props: &[u8]| {
            let mut bytes = vec![
                0x30,
                (4 + props.len()) as u8,
                0x00,
                0x01,
                b't',
                props.len() as u8,
            ];
            bytes.extend_from_slice(props);
            bytes
        };
        let cases: [(&[u8], DecodeError); 6] = [
            (
                &[0x01, 0x02],
                DecodeError::InvalidPropertyValue { id: 0x01, value: 2 },
            ),
            (
                &[0x0B, 0x00],
                DecodeError::InvalidPropertyValue { id: 0x0B, value: 0 },
            ),
            (
                &[0x0B, 0x80, 0x80, 0x80, 0x80],
                DecodeError::VarIntTooLong {
                    field: "Subscription Identifier",
                },
            ),
            (
                &[0x23, 0, 1, 0x23, 0, 2],
                DecodeError::DuplicateProperty {
                    id: 0x23,
                    packet: PacketType::Publish,
                },
            ),
            (
                &[0x11, 0, 0, 0, 1],
                DecodeError::PropertyNotAllowed {
                    id: 0x11,
                    packet: PacketType::Publish,
                },
            ),
            (&[0x00], DecodeError::UnknownProperty { id: 0x00 }),
        ];
        for (props, err) in cases {
            assert_eq!(decode_err(&with_props(props), v), err, "{props:02x?}");
        }
        // A property length running past the remaining length.
        let e = decode_err(&[0x30, 0x04, 0x00, 0x01, b't', 0x05], v);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::Publish,
                field: "properties"
            }
        );
        // The property length is required in 5.0.
        let e = decode_err(&[0x30, 0x03, 0x00, 0x01, b't'], v);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::Publish,
                field: "property length"
            }
        );
    }

    #[test]
    fn acks_v311() {
        for first in [0x40, 0x50, 0x62, 0x70] {
            let bytes = [first, 0x02, 0x12, 0x34];
            let packet = decode_ok(&bytes, ProtocolVersion::V311);
            let ack = match &packet {
                Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => a,
                _ => panic!(),
            };
            assert_eq!(*ack, PubAck::new(0x1234));
            roundtrip(&bytes, ProtocolVersion::V311);
            // 3.x acks have no reason code: a third byte is trailing garbage.
            let e = decode_err(&[first, 0x03, 0x12, 0x34, 0x00], ProtocolVersion::V311);
            assert_eq!(
                e,
                DecodeError::TrailingBytes {
                    packet: packet.packet_type(),
                    extra: 1
                }
            );
            let e = decode_err(&[first, 0x02, 0x00, 0x00], ProtocolVersion::V311);
            assert_eq!(
                e,
                DecodeError::ZeroPacketId {
                    packet: packet.packet_type()
                }
            );
        }
        let e = decode_err(&[0x60, 0x02, 0x00, 0x01], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::InvalidFlags {
                packet: PacketType::PubRel,
                flags: 0
            }
        );
        let e = decode_err(&[0x42, 0x02, 0x00, 0x01], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::InvalidFlags {
                packet: PacketType::PubAck,
                flags: 2
            }
        );
        let e = decode_err(&[0x40, 0x01, 0x00], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::PubAck,
                field: "packet identifier"
            }
        );
    }

    /// v5 short forms: remaining length 2 (Success, no properties) and 3 (reason only), and
    /// the full form with a reason string.
    #[test]
    fn acks_v5() {
        let v = ProtocolVersion::V5;
        assert_eq!(
            decode_ok(&[0x40, 0x02, 0x00, 0x07], v),
            Packet::PubAck(PubAck::new(7))
        );
        roundtrip(&[0x40, 0x02, 0x00, 0x07], v);
        let Packet::PubRec(a) = decode_ok(&[0x50, 0x03, 0x00, 0x07, 0x10], v) else {
            panic!()
        };
        assert_eq!(a.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
        roundtrip(&[0x50, 0x03, 0x00, 0x07, 0x10], v);
        // Success with an empty property list re-encodes to the short form.
        assert_eq!(
            decode_ok(&[0x70, 0x04, 0x00, 0x07, 0x00, 0x00], v),
            Packet::PubComp(PubAck::new(7))
        );
        let bytes = [0x62, 0x08, 0x00, 0x07, 0x92, 0x04, 0x1F, 0x00, 0x01, b'x'];
        let Packet::PubRel(a) = decode_ok(&bytes, v) else {
            panic!()
        };
        assert_eq!(a.reason, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
        assert_eq!(a.properties.reason_string.as_deref(), Some("x"));
        roundtrip(&bytes, v);
        let e = decode_err(&[0x62, 0x03, 0x00, 0x07, 0x10], v);
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode {
                packet: PacketType::PubRel,
                code: 0x10
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        let e = decode_err(&[0x40, 0x03, 0x00, 0x07, 0x92], v);
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode {
                packet: PacketType::PubAck,
                code: 0x92
            }
        );
        let e = decode_err(&[0x40, 0x07, 0x00, 0x07, 0x00, 0x03, 0x0B, 0x01, 0x00], v);
        assert_eq!(
            e,
            DecodeError::PropertyNotAllowed {
                id: 0x0B,
                packet: PacketType::PubAck
            }
        );
    }
}
