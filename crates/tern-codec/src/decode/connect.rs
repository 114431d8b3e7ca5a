//! CONNECT (3.1).

use crate::decode::properties;
use crate::error::DecodeError;
use crate::packet::{Connect, Will};
use crate::properties::{ConnectProperties, WillProperties};
use crate::types::{ProtocolVersion, QoS};
use crate::wire::Reader;

/// Connect Flags (3.1.2.3).
mod flag {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

/// CONNECT announces its own version: protocol name and level.
pub(super) fn decode_connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let protocol = decode_protocol(r)?;
    let flags = r.u8("connect flags")?;
    // 3.1 predates the reserved bit rule; brokers have always ignored the bit there.
    if flags & flag::RESERVED != 0 && protocol != ProtocolVersion::V31 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & flag::CLEAN_START != 0;
    let will_qos_bits = (flags >> flag::WILL_QOS_SHIFT) & 0x03;
    let will_retain = flags & flag::WILL_RETAIN != 0;
    let has_will = flags & flag::WILL != 0;
    if has_will {
        if will_qos_bits == 3 {
            return Err(DecodeError::InvalidWillQoS);
        }
    } else if will_qos_bits != 0 {
        return Err(DecodeError::WillQoSWithoutWill { qos: will_qos_bits });
    } else if will_retain {
        return Err(DecodeError::WillRetainWithoutWill);
    }
    let has_username = flags & flag::USERNAME != 0;
    let has_password = flags & flag::PASSWORD != 0;
    if has_password && !has_username && protocol == ProtocolVersion::V311 {
        return Err(DecodeError::PasswordWithoutUsername { version: protocol });
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if protocol.is_v5() {
        properties::connect(r)?
    } else {
        ConnectProperties::default()
    };

    // Payload (3.1.3): Client Identifier, Will, User Name, Password, in this order.
    let client_id = r.string("client identifier")?;
    if client_id.is_empty() {
        let rejected = match protocol {
            ProtocolVersion::V31 => true,
            ProtocolVersion::V311 => !clean_start,
            ProtocolVersion::V5 => false,
        };
        if rejected {
            return Err(DecodeError::ClientIdNotValid {
                version: protocol,
                clean_start,
            });
        }
    }
    let will = if has_will {
        let properties = if protocol.is_v5() {
            properties::will(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.topic_name("will topic")?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName {
                field: "will topic",
            });
        }
        let payload = r.binary("will payload")?;
        let qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidWillQoS)?;
        Some(Will {
            topic,
            payload,
            qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let mut password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };
    // MQTT 3.1 clients sometimes send a password without a user name; like other brokers we
    // read it and ignore it.
    if !has_username && protocol == ProtocolVersion::V31 {
        password = None;
    }
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Protocol Name and Protocol Level (3.1.2.1, 3.1.2.2).
fn decode_protocol(r: &mut Reader<'_>) -> Result<ProtocolVersion, DecodeError> {
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    match (&name[..], level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V311),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        (b"MQIsdp", 3) => Ok(ProtocolVersion::V31),
        (b"MQTT" | b"MQIsdp", _) => Err(DecodeError::UnsupportedProtocolVersion { level }),
        _ => Err(DecodeError::UnknownProtocolName { level }),
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use crate::decode::tests::{decode_err, decode_ok, roundtrip};
    use crate::*;

    /// The variable header of the MQTT 3.1.1 CONNECT example (3.1.2.10, figure 3.6: "MQTT",
    /// level 4, keep alive 10) with a client id, a will and a user name.
    #[test]
    fn connect_v311_with_will_and_user() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x1F, // CONNECT, remaining length 31
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol name, level 4
            0b1010_1110, // user name, will retain, will QoS 1, will, clean session
            0x00, 0x0A, // keep alive 10
            0x00, 0x03, b'c', b'i', b'd', // client id
            0x00, 0x03, b'a', b'/', b'b', // will topic
            0x00, 0x03, b'b', b'y', b'e', // will payload
            0x00, 0x04, b'u', b's', b'e', b'r', // user name
        ];
        let Packet::Connect(c) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(c.protocol, ProtocolVersion::V311);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 10);
        assert_eq!(&*c.client_id, "cid");
        let will = c.will.as_ref().unwrap();
        assert_eq!((&*will.topic, &will.payload[..]), ("a/b", &b"bye"[..]));
        assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password, None);
        roundtrip(&bytes, ProtocolVersion::V311);
    }

    /// MQTT 3.1: protocol name "MQIsdp", level 3, with user name and password.
    #[test]
    fn connect_v31() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x1A, // CONNECT, remaining length 26
            0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, // protocol name, level 3
            0b1100_0010, // user name, password, clean session
            0x00, 0x3C, // keep alive 60
            0x00, 0x02, b'c', b'1', // client id
            0x00, 0x02, b'u', b'1', // user name
            0x00, 0x04, b'p', b'w', b'd', 0xFF, // password (binary)
        ];
        let Packet::Connect(c) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!(c.protocol, ProtocolVersion::V31);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.username.as_deref(), Some("u1"));
        assert_eq!(c.password.as_deref(), Some(&b"pwd\xFF"[..]));
        roundtrip(&bytes, ProtocolVersion::V31);
    }

    /// 3.1 allows client ids of up to 23 bytes; brokers accept longer ones and so do we.
    #[test]
    fn connect_v31_long_client_id() {
        let id = "a-client-identifier-longer-than-23-bytes";
        let packet = Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V31,
            clean_start: true,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }));
        let mut buf = BytesMut::new();
        encode(&packet, ProtocolVersion::V31, &mut buf).unwrap();
        assert_eq!(&buf[2..10], b"\x00\x06MQIsdp");
        assert_eq!(decode_ok(&buf, ProtocolVersion::V31), packet);
    }

    /// MQTT 5 CONNECT with properties, will properties and a password without a user name
    /// (allowed in 5.0).
    #[test]
    fn connect_v5_with_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x30, // CONNECT, remaining length 48
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // protocol name, level 5
            0b0101_0100, // password, will QoS 2, will
            0x00, 0x1E, // keep alive 30
            0x0F, // properties length 15
            0x11, 0x00, 0x00, 0x0E, 0x10, // session expiry interval 3600
            0x21, 0x00, 0x14, // receive maximum 20
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
            0x00, 0x00, // empty client id
            0x07, // will properties length 7
            0x01, 0x01, // payload format indicator 1
            0x18, 0x00, 0x00, 0x00, 0x05, // will delay interval 5
            0x00, 0x01, b't', // will topic
            0x00, 0x02, b'h', b'i', // will payload
            0x00, 0x03, 0x01, 0x02, 0x03, // password
        ];
        let Packet::Connect(c) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert_eq!(c.protocol, ProtocolVersion::V5);
        assert!(!c.clean_start);
        assert_eq!(c.client_id, "");
        assert_eq!(c.properties.session_expiry_interval, Some(3600));
        assert_eq!(c.properties.receive_maximum, Some(20));
        assert_eq!(c.properties.user_properties, vec![("k".into(), "v".into())]);
        let will = c.will.as_ref().unwrap();
        assert_eq!(will.qos, QoS::ExactlyOnce);
        assert_eq!(will.properties.will_delay_interval, Some(5));
        assert_eq!(will.properties.payload_format_indicator, Some(1));
        assert_eq!(c.username, None);
        assert_eq!(c.password, Some(Bytes::from_static(&[1, 2, 3])));
        roundtrip(&bytes, ProtocolVersion::V5);
    }

    /// A minimal v3.1.1 CONNECT with `flags` and `payload` after the keep alive.
    fn connect_v311(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x00];
        body.extend_from_slice(payload);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        bytes
    }

    #[test]
    fn connect_errors() {
        let v = ProtocolVersion::V311;
        let cid = [0x00, 0x01, b'c'];
        let e = decode_err(&connect_v311(0x03, &cid), v);
        assert_eq!(e, DecodeError::ConnectReservedFlag);
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        let e = decode_err(&connect_v311(0x02 | 0x08, &cid), v);
        assert_eq!(e, DecodeError::WillQoSWithoutWill { qos: 1 });
        assert_eq!(e.rule(), Some("MQTT-3.1.2-11"));
        let e = decode_err(&connect_v311(0x02 | 0x20, &cid), v);
        assert_eq!(e, DecodeError::WillRetainWithoutWill);
        assert_eq!(e.rule(), Some("MQTT-3.1.2-13"));
        let e = decode_err(&connect_v311(0x02 | 0x04 | 0x18, &cid), v);
        assert_eq!(e, DecodeError::InvalidWillQoS);
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        let e = decode_err(&connect_v311(0x02 | 0x40, &[0, 1, b'c', 0, 1, b'p']), v);
        assert_eq!(e, DecodeError::PasswordWithoutUsername { version: v });
        assert_eq!(e.rule(), Some("MQTT-3.1.2-22"));
        // [MQTT-3.1.3-8]: empty client id with clean session 0 -> identifier rejected.
        let e = decode_err(&connect_v311(0x00, &[0, 0]), v);
        assert_eq!(
            e,
            DecodeError::ClientIdNotValid {
                version: v,
                clean_start: false
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        // ...and allowed with clean session 1.
        assert!(matches!(
            decode_ok(&connect_v311(0x02, &[0, 0]), v),
            Packet::Connect(_)
        ));
        // Will topic with a wildcard, and empty.
        let e = decode_err(&connect_v311(0x06, &[0, 1, b'c', 0, 1, b'#', 0, 0]), v);
        assert_eq!(
            e,
            DecodeError::WildcardInTopicName {
                field: "will topic"
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
        let e = decode_err(&connect_v311(0x06, &[0, 1, b'c', 0, 0, 0, 0]), v);
        assert_eq!(
            e,
            DecodeError::EmptyTopicName {
                field: "will topic"
            }
        );
        // Trailing bytes after the payload, and a truncated payload.
        let e = decode_err(&connect_v311(0x02, &[0, 1, b'c', 0xFF]), v);
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                packet: PacketType::Connect,
                extra: 1
            }
        );
        let e = decode_err(&connect_v311(0x82, &[0, 1, b'c', 0, 5, b'u']), v);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::Connect,
                field: "user name"
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }

    #[test]
    fn connect_v31_quirks() {
        let v31 = |flags: u8, payload: &[u8]| {
            let mut body = b"\x00\x06MQIsdp\x03".to_vec();
            body.extend_from_slice(&[flags, 0, 0]);
            body.extend_from_slice(payload);
            let mut bytes = vec![0x10, body.len() as u8];
            bytes.extend(body);
            bytes
        };
        // The reserved bit is ignored and a password without a user name is dropped.
        let Packet::Connect(c) =
            decode_ok(&v31(0x43, &[0, 1, b'c', 0, 1, b'p']), ProtocolVersion::V31)
        else {
            panic!()
        };
        assert_eq!((c.username, c.password), (None, None));
        // An empty client id is rejected whatever the clean session flag.
        let e = decode_err(&v31(0x02, &[0, 0]), ProtocolVersion::V31);
        assert_eq!(
            e,
            DecodeError::ClientIdNotValid {
                version: ProtocolVersion::V31,
                clean_start: true
            }
        );
    }

    #[test]
    fn connect_protocol_errors() {
        let with_name = |name: &[u8], level: u8| {
            let mut body = vec![0, name.len() as u8];
            body.extend_from_slice(name);
            body.extend_from_slice(&[level, 0x02, 0, 0, 0, 1, b'c']);
            let mut bytes = vec![0x10, body.len() as u8];
            bytes.extend(body);
            bytes
        };
        let e = decode_err(&with_name(b"MQTT", 6), ProtocolVersion::V5);
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion { level: 6 });
        assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(e.rule(), Some("MQTT-3.1.2-2"));
        let e = decode_err(&with_name(b"MQIsdp", 4), ProtocolVersion::V5);
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion { level: 4 });
        let e = decode_err(&with_name(b"MQTT", 3), ProtocolVersion::V5);
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion { level: 3 });
        let e = decode_err(&with_name(b"HTTP", 4), ProtocolVersion::V5);
        assert_eq!(e, DecodeError::UnknownProtocolName { level: 4 });
        assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    }

    /// Builds a v5 CONNECT whose property list is `props`.
    fn connect_v5_props(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00];
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(&[0, 1, b'c']);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        bytes
    }

    #[test]
    fn connect_v5_property_errors() {
        let v = ProtocolVersion::V5;
        let cases: [(&[u8], DecodeError, ReasonCode); 10] = [
            (
                &[0x21, 0, 0],
                DecodeError::InvalidPropertyValue { id: 0x21, value: 0 },
                ReasonCode::PROTOCOL_ERROR,
            ),
            (
                &[0x27, 0, 0, 0, 0],
                DecodeError::InvalidPropertyValue { id: 0x27, value: 0 },
                ReasonCode::PROTOCOL_ERROR,
            ),
            (
                &[0x17, 2],
                DecodeError::InvalidPropertyValue { id: 0x17, value: 2 },
                ReasonCode::PROTOCOL_ERROR,
            ),
            (
                &[0x19, 7],
                DecodeError::InvalidPropertyValue { id: 0x19, value: 7 },
                ReasonCode::PROTOCOL_ERROR,
            ),
            (
                &[0x21, 0, 1, 0x21, 0, 2],
                DecodeError::DuplicateProperty {
                    id: 0x21,
                    packet: PacketType::Connect,
                },
                ReasonCode::PROTOCOL_ERROR,
            ),
            (
                &[0x23, 0, 1],
                DecodeError::PropertyNotAllowed {
                    id: 0x23,
                    packet: PacketType::Connect,
                },
                ReasonCode::MALFORMED_PACKET,
            ),
            (
                &[0x7F, 0],
                DecodeError::UnknownProperty { id: 0x7F },
                ReasonCode::MALFORMED_PACKET,
            ),
            (
                &[0x16, 0, 1, 9],
                DecodeError::AuthDataWithoutMethod,
                ReasonCode::PROTOCOL_ERROR,
            ),
            (
                &[0x11, 0, 0],
                DecodeError::Truncated {
                    packet: PacketType::Connect,
                    field: "Session Expiry Interval",
                },
                ReasonCode::MALFORMED_PACKET,
            ),
            (
                &[0x26, 0, 1, b'k', 0, 1, 0],
                DecodeError::NullCharacter {
                    field: "User Property value",
                },
                ReasonCode::MALFORMED_PACKET,
            ),
        ];
        for (props, err, code) in cases {
            let e = decode_err(&connect_v5_props(props), v);
            assert_eq!(e, err, "{props:02x?}");
            assert_eq!(e.reason_code(), code, "{e}");
        }
        // User properties repeat and keep their order.
        let bytes = connect_v5_props(&[0x26, 0, 1, b'a', 0, 1, b'1', 0x26, 0, 1, b'a', 0, 1, b'2']);
        let Packet::Connect(c) = decode_ok(&bytes, v) else {
            panic!()
        };
        assert_eq!(
            c.properties.user_properties,
            vec![("a".into(), "1".into()), ("a".into(), "2".into())]
        );
        roundtrip(&bytes, v);
    }

    /// A property length that runs past the end of the packet.
    #[test]
    fn connect_v5_property_length_too_long() {
        let mut bytes = connect_v5_props(&[]);
        bytes[12] = 0x10;
        let e = decode_err(&bytes, ProtocolVersion::V5);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::Connect,
                field: "properties"
            }
        );
    }
}
