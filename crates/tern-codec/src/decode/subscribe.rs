//! SUBSCRIBE (3.8), SUBACK (3.9), UNSUBSCRIBE (3.10) and UNSUBACK (3.11).
//!
//! The codec checks what the packet layout defines: at least one filter, no empty filter, the
//! options byte. Whether a filter is well formed (wildcard placement, shared subscriptions) is
//! the topic crate's job, so the broker can answer it per filter in SUBACK.

use crate::decode::{properties, read_reason};
use crate::error::DecodeError;
use crate::packet::{PacketType, SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::properties::{AckProperties, SubscribeProperties, UnsubscribeProperties};
use crate::reason::ReasonCode;
use crate::types::{ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};
use crate::wire::Reader;

pub(super) fn decode_subscribe(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        properties::subscribe(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::with_capacity(1);
    while !r.is_empty() {
        let filter = topic_filter(r)?;
        let options = subscription_options(r.u8("subscription options")?, version)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: PacketType::Subscribe,
        });
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn topic_filter(r: &mut Reader<'_>) -> Result<bytestring::ByteString, DecodeError> {
    let filter = r.string("topic filter")?;
    if filter.is_empty() {
        return Err(DecodeError::EmptyTopicFilter { packet: r.packet() });
    }
    Ok(filter)
}

/// The options byte (3.8.3.1). In 3.x only the QoS bits exist; the rest are reserved.
fn subscription_options(
    byte: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version.is_v5() {
        0b1100_0000
    } else {
        0b1111_1100
    };
    if byte & reserved != 0 {
        return Err(DecodeError::SubscriptionReservedBits {
            options: byte,
            version,
        });
    }
    let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidSubscriptionQoS)?;
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

/// SUBACK: packet id, properties (5.0), one reason per filter. The 3.x return codes are 0, 1,
/// 2 and 0x80.
pub(super) fn decode_suback(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        properties::ack(r)?
    } else {
        AckProperties::default()
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let reason = if version.is_v5() {
            read_reason(r)?
        } else {
            match r.u8("return code")? {
                code @ (0x00..=0x02 | 0x80) => ReasonCode(code),
                code => {
                    return Err(DecodeError::InvalidReasonCode {
                        packet: PacketType::SubAck,
                        code,
                    });
                }
            }
        };
        reasons.push(reason);
    }
    Ok(SubAck {
        packet_id,
        properties,
        reasons,
    })
}

pub(super) fn decode_unsubscribe(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        properties::unsubscribe(r)?
    } else {
        UnsubscribeProperties::default()
    };
    let mut filters = Vec::with_capacity(1);
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: PacketType::Unsubscribe,
        });
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

/// UNSUBACK: the packet id alone in 3.x; properties and one reason per filter in 5.0.
pub(super) fn decode_unsuback(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    if !version.is_v5() {
        return Ok(UnsubAck {
            packet_id,
            properties: AckProperties::default(),
            reasons: Vec::new(),
        });
    }
    let properties = properties::ack(r)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(read_reason(r)?);
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use crate::decode::tests::{decode_err, decode_ok, roundtrip};
    use crate::*;

    /// The 3.1.1 SUBSCRIBE example (3.8.3, table 3.6): "a/b" QoS 1 and "c/d" QoS 2.
    #[test]
    fn subscribe_v311() {
        #[rustfmt::skip]
        let bytes = [
            0x82, 0x0E, // SUBSCRIBE, flags 0010, remaining length 14
            0x00, 0x0A, // packet id 10
            0x00, 0x03, b'a', b'/', b'b', 0x01, // "a/b", QoS 1
            0x00, 0x03, b'c', b'/', b'd', 0x02, // "c/d", QoS 2
        ];
        let Packet::Subscribe(s) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!(s.packet_id, 10);
        assert_eq!(s.filters.len(), 2);
        assert_eq!(
            (&*s.filters[0].0, s.filters[0].1.qos),
            ("a/b", QoS::AtLeastOnce)
        );
        assert_eq!(
            (&*s.filters[1].0, s.filters[1].1.qos),
            ("c/d", QoS::ExactlyOnce)
        );
        roundtrip(&bytes, ProtocolVersion::V311);
        roundtrip(&bytes, ProtocolVersion::V31);
    }

    #[test]
    fn subscribe_v5_options_and_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x82, 0x0B, // SUBSCRIBE, remaining length 11
            0x00, 0x01, // packet id 1
            0x02, 0x0B, 0x2A, // properties: subscription identifier 42
            0x00, 0x03, b'a', b'/', b'#', // "a/#"
            0b0010_1110, // retain handling 2, retain as published, no local, QoS 2
        ];
        let Packet::Subscribe(s) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(s.properties.subscription_identifier, Some(42));
        let o = s.filters[0].1;
        assert_eq!(o.qos, QoS::ExactlyOnce);
        assert!(o.no_local && o.retain_as_published);
        assert_eq!(o.retain_handling, RetainHandling::DoNotSend);
        roundtrip(&bytes, ProtocolVersion::V5);
    }

    fn subscribe(version_v5: bool, options: u8) -> Vec<u8> {
        let mut bytes = vec![0x82, 0x00, 0x00, 0x01];
        if version_v5 {
            bytes.push(0x00);
        }
        bytes.extend_from_slice(&[0x00, 0x01, b'a', options]);
        bytes[1] = (bytes.len() - 2) as u8;
        bytes
    }

    #[test]
    fn subscribe_errors() {
        let (v3, v5) = (ProtocolVersion::V311, ProtocolVersion::V5);
        let e = decode_err(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], v3);
        assert_eq!(
            e,
            DecodeError::InvalidFlags {
                packet: PacketType::Subscribe,
                flags: 0
            }
        );
        let e = decode_err(&[0x83, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], v3);
        assert_eq!(
            e.to_string(),
            "[MQTT-2.1.3-1] invalid fixed header flags 0x3 for SUBSCRIBE"
        );
        // No filters.
        let e = decode_err(&[0x82, 0x02, 0x00, 0x01], v3);
        assert_eq!(
            e,
            DecodeError::NoTopicFilters {
                packet: PacketType::Subscribe
            }
        );
        assert_eq!(e.rule(), Some("MQTT-3.8.3-2"));
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        let e = decode_err(&[0x82, 0x03, 0x00, 0x01, 0x00], v5);
        assert_eq!(
            e,
            DecodeError::NoTopicFilters {
                packet: PacketType::Subscribe
            }
        );
        // QoS 3, reserved bits, retain handling 3.
        let e = decode_err(&subscribe(false, 0x03), v3);
        assert_eq!(e, DecodeError::InvalidSubscriptionQoS);
        assert_eq!(e.rule(), Some("MQTT-3.8.3-4"));
        let e = decode_err(&subscribe(false, 0x04), v3);
        assert_eq!(
            e,
            DecodeError::SubscriptionReservedBits {
                options: 0x04,
                version: v3
            }
        );
        assert_eq!(e.rule(), Some("MQTT-3.8.3-4"));
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        let e = decode_err(&subscribe(true, 0x40), v5);
        assert_eq!(
            e,
            DecodeError::SubscriptionReservedBits {
                options: 0x40,
                version: v5
            }
        );
        assert_eq!(e.rule(), Some("MQTT-3.8.3-5"));
        let e = decode_err(&subscribe(true, 0x03), v5);
        assert_eq!(e, DecodeError::InvalidSubscriptionQoS);
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        let e = decode_err(&subscribe(true, 0x30), v5);
        assert_eq!(e, DecodeError::InvalidRetainHandling);
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        // Empty filter, zero packet id, missing options byte.
        let e = decode_err(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], v3);
        assert_eq!(
            e,
            DecodeError::EmptyTopicFilter {
                packet: PacketType::Subscribe
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::TOPIC_FILTER_INVALID);
        let e = decode_err(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], v3);
        assert_eq!(
            e,
            DecodeError::ZeroPacketId {
                packet: PacketType::Subscribe
            }
        );
        let e = decode_err(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], v3);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::Subscribe,
                field: "subscription options"
            }
        );
        // Subscription Identifier 0 and twice.
        let e = decode_err(
            &[
                0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00,
            ],
            v5,
        );
        assert_eq!(e, DecodeError::InvalidPropertyValue { id: 0x0B, value: 0 });
        let e = decode_err(
            &[
                0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
            ],
            v5,
        );
        assert_eq!(
            e,
            DecodeError::DuplicateProperty {
                id: 0x0B,
                packet: PacketType::Subscribe
            }
        );
    }

    /// 3.1.1 SUBACK example (3.9.3, figure 3.26): granted QoS 0, 2, failure.
    #[test]
    fn suback_v311() {
        let bytes = [0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80];
        let Packet::SubAck(s) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!(
            s.reasons,
            vec![ReasonCode(0), ReasonCode(2), ReasonCode(0x80)]
        );
        roundtrip(&bytes, ProtocolVersion::V311);
        let e = decode_err(&[0x90, 0x03, 0x00, 0x0A, 0x03], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode {
                packet: PacketType::SubAck,
                code: 3
            }
        );
        // A 5.0 failure reason is written as 0x80 for 3.x.
        let packet = Packet::SubAck(SubAck {
            packet_id: 1,
            properties: AckProperties::default(),
            reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        });
        let mut buf = bytes::BytesMut::new();
        encode(&packet, ProtocolVersion::V311, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
    }

    #[test]
    fn suback_v5() {
        let bytes = [0x90, 0x08, 0x00, 0x0A, 0x03, 0x1F, 0x00, 0x00, 0x01, 0xA2];
        let Packet::SubAck(s) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(s.properties.reason_string.as_deref(), Some(""));
        assert_eq!(
            s.reasons,
            vec![
                ReasonCode(1),
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
            ]
        );
        roundtrip(&bytes, ProtocolVersion::V5);
        let e = decode_err(&[0x90, 0x04, 0x00, 0x0A, 0x00, 0x11], ProtocolVersion::V5);
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode {
                packet: PacketType::SubAck,
                code: 0x11
            }
        );
    }

    /// 3.1.1 UNSUBSCRIBE example (3.10.3, figure 3.30).
    #[test]
    fn unsubscribe_v311() {
        #[rustfmt::skip]
        let bytes = [
            0xA2, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x03, b'c', b'/', b'd',
        ];
        let Packet::Unsubscribe(u) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!(
            u.filters,
            vec!["a/b".into(), "c/d".into()] as Vec<ByteString>
        );
        roundtrip(&bytes, ProtocolVersion::V311);
        let e = decode_err(&[0xA2, 0x02, 0x00, 0x0A], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::NoTopicFilters {
                packet: PacketType::Unsubscribe
            }
        );
        assert_eq!(e.rule(), Some("MQTT-3.10.3-2"));
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
        let e = decode_err(
            &[0xA0, 0x05, 0x00, 0x0A, 0x00, 0x01, b'a'],
            ProtocolVersion::V311,
        );
        assert_eq!(
            e,
            DecodeError::InvalidFlags {
                packet: PacketType::Unsubscribe,
                flags: 0
            }
        );
    }

    #[test]
    fn unsubscribe_v5() {
        #[rustfmt::skip]
        let bytes = [
            0xA2, 0x0C, 0x00, 0x0A, 0x06, 0x26, 0x00, 0x01, b'k', 0x00, 0x00, 0x00, 0x01, b'a',
        ];
        let Packet::Unsubscribe(u) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(u.properties.user_properties, vec![("k".into(), "".into())]);
        roundtrip(&bytes, ProtocolVersion::V5);
        let e = decode_err(&[0xA2, 0x03, 0x00, 0x0A, 0x00], ProtocolVersion::V5);
        assert_eq!(
            e,
            DecodeError::NoTopicFilters {
                packet: PacketType::Unsubscribe
            }
        );
    }

    #[test]
    fn unsuback() {
        let bytes = [0xB0, 0x02, 0x00, 0x0A];
        let Packet::UnsubAck(u) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!((u.packet_id, u.reasons.len()), (10, 0));
        roundtrip(&bytes, ProtocolVersion::V311);
        let e = decode_err(&[0xB0, 0x03, 0x00, 0x0A, 0x00], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                packet: PacketType::UnsubAck,
                extra: 1
            }
        );
        let bytes = [0xB0, 0x05, 0x00, 0x0A, 0x00, 0x00, 0x11];
        let Packet::UnsubAck(u) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(
            u.reasons,
            vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
        );
        roundtrip(&bytes, ProtocolVersion::V5);
        let e = decode_err(&[0xB0, 0x04, 0x00, 0x0A, 0x00, 0x01], ProtocolVersion::V5);
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode {
                packet: PacketType::UnsubAck,
                code: 1
            }
        );
    }
}
