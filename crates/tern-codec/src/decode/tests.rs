//! Tests of the fixed header, incremental feeding, size limits and the small packets, and the
//! helpers the per-family tests share.

use bytes::{BufMut, BytesMut};

use crate::*;

/// Decodes `bytes` (one whole packet) and checks that feeding it one byte at a time yields
/// `Ok(None)` without consuming anything until the last byte, then the same packet.
pub(crate) fn decode_ok(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = match decode(&mut buf, u32::MAX, version) {
        Ok(Some(p)) => p,
        other => panic!("{bytes:02x?}: expected a packet, got {other:?}"),
    };
    assert!(buf.is_empty(), "the packet was not consumed exactly");
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.put_u8(*b);
        let result = decode(&mut buf, u32::MAX, version).unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(
                result,
                None,
                "complete after {} of {} bytes",
                i + 1,
                bytes.len()
            );
            assert_eq!(
                buf.len(),
                i + 1,
                "bytes consumed before the packet was complete"
            );
        } else {
            assert_eq!(result.as_ref(), Some(&packet));
            assert!(buf.is_empty());
        }
    }
    packet
}

/// Decodes `bytes` expecting an error, and checks that feeding it byte by byte reaches the
/// same error.
pub(crate) fn decode_err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    let err = match decode(&mut buf, u32::MAX, version) {
        Err(e) => e,
        other => panic!("{bytes:02x?}: expected an error, got {other:?}"),
    };
    let mut buf = BytesMut::new();
    for b in bytes {
        buf.put_u8(*b);
        match decode(&mut buf, u32::MAX, version) {
            Ok(None) => {}
            Ok(Some(p)) => panic!("fed byte by byte, {bytes:02x?} decoded as {p:?}"),
            Err(e) => {
                assert_eq!(e, err, "fed byte by byte");
                return err;
            }
        }
    }
    panic!("fed byte by byte, {bytes:02x?} never failed");
}

/// Decodes `bytes`, re-encodes the packet and expects the same bytes (and `encoded_len` to
/// agree).
pub(crate) fn roundtrip(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let packet = decode_ok(bytes, version);
    let mut buf = BytesMut::new();
    encode(&packet, version, &mut buf).unwrap();
    assert_eq!(&buf[..], bytes, "re-encoding {packet:?}");
    assert_eq!(encoded_len(&packet, version), bytes.len());
    packet
}

const ALL: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

#[test]
fn ping() {
    for v in ALL {
        assert_eq!(roundtrip(&[0xC0, 0x00], v), Packet::PingReq);
        assert_eq!(roundtrip(&[0xD0, 0x00], v), Packet::PingResp);
        let e = decode_err(&[0xC0, 0x01, 0x00], v);
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                packet: PacketType::PingReq,
                extra: 1
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
}

#[test]
fn reserved_packet_types() {
    for v in ALL {
        let e = decode_err(&[0x00, 0x00], v);
        assert_eq!(
            e,
            DecodeError::ReservedPacketType {
                packet_type: 0,
                version: v
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    // AUTH does not exist before MQTT 5.
    for v in [ProtocolVersion::V31, ProtocolVersion::V311] {
        let e = decode_err(&[0xF0, 0x00], v);
        assert_eq!(
            e,
            DecodeError::ReservedPacketType {
                packet_type: 15,
                version: v
            }
        );
    }
}

/// [MQTT-2.1.3-1] for every packet type but PUBLISH and every wrong flag value: rejected on
/// the first byte, before anything else arrives.
#[test]
fn fixed_header_flags() {
    for kind in 1..=15u8 {
        let packet = PacketType::from_u8(kind).unwrap();
        let Some(required) = packet.required_flags() else {
            continue;
        };
        for flags in (0..16u8).filter(|f| *f != required) {
            let mut buf = BytesMut::from(&[kind << 4 | flags][..]);
            let e = decode(&mut buf, u32::MAX, ProtocolVersion::V5).unwrap_err();
            assert_eq!(e, DecodeError::InvalidFlags { packet, flags });
            assert_eq!(e.rule(), Some("MQTT-2.1.3-1"));
            assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        }
    }
}

#[test]
fn disconnect_v3() {
    for v in [ProtocolVersion::V31, ProtocolVersion::V311] {
        assert_eq!(
            roundtrip(&[0xE0, 0x00], v),
            Packet::Disconnect(Disconnect::default())
        );
        let e = decode_err(&[0xE0, 0x01, 0x8E], v);
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                packet: PacketType::Disconnect,
                extra: 1
            }
        );
    }
}

#[test]
fn disconnect_v5_forms() {
    let v = ProtocolVersion::V5;
    // e0 00: normal disconnection, no properties.
    assert_eq!(
        roundtrip(&[0xE0, 0x00], v),
        Packet::Disconnect(Disconnect::default())
    );
    // e0 01 8e: a reason code alone.
    let Packet::Disconnect(d) = roundtrip(&[0xE0, 0x01, 0x8E], v) else {
        panic!()
    };
    assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER);
    assert!(d.properties.is_empty());
    // Normal disconnection spelled out in full re-encodes as e0 00.
    assert_eq!(
        decode_ok(&[0xE0, 0x02, 0x00, 0x00], v),
        Packet::Disconnect(Disconnect::default())
    );
    // With properties.
    #[rustfmt::skip]
    let bytes = [
        0xE0, 0x0A, 0x04, 0x08, 0x11, 0x00, 0x00, 0x00, 0x00, 0x1F, 0x00, 0x00,
    ];
    let Packet::Disconnect(d) = roundtrip(&bytes, v) else {
        panic!()
    };
    assert_eq!(d.reason, ReasonCode::DISCONNECT_WITH_WILL_MESSAGE);
    assert_eq!(d.properties.session_expiry_interval, Some(0));
    assert_eq!(d.properties.reason_string.as_deref(), Some(""));
    let e = decode_err(&[0xE0, 0x01, 0x01], v);
    assert_eq!(
        e,
        DecodeError::InvalidReasonCode {
            packet: PacketType::Disconnect,
            code: 1
        }
    );
    let e = decode_err(&[0xE0, 0x04, 0x00, 0x02, 0x21, 0x00], v);
    assert_eq!(
        e,
        DecodeError::PropertyNotAllowed {
            id: 0x21,
            packet: PacketType::Disconnect
        }
    );
}

#[test]
fn auth_forms() {
    let v = ProtocolVersion::V5;
    assert_eq!(roundtrip(&[0xF0, 0x00], v), Packet::Auth(Auth::default()));
    #[rustfmt::skip]
    let bytes = [
        0xF0, 0x0C, 0x18, 0x0A, 0x15, 0x00, 0x04, b'S', b'C', b'R', b'M', 0x16, 0x00, 0x00,
    ];
    let Packet::Auth(a) = roundtrip(&bytes, v) else {
        panic!()
    };
    assert_eq!(a.reason, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(a.properties.authentication_method.as_deref(), Some("SCRM"));
    assert_eq!(a.properties.authentication_data.as_deref(), Some(&b""[..]));
    // A reason code alone is accepted and re-encoded with an empty property list.
    let Packet::Auth(a) = decode_ok(&[0xF0, 0x01, 0x19], v) else {
        panic!()
    };
    assert_eq!(a.reason, ReasonCode::RE_AUTHENTICATE);
    let e = decode_err(&[0xF0, 0x01, 0x80], v);
    assert_eq!(
        e,
        DecodeError::InvalidReasonCode {
            packet: PacketType::Auth,
            code: 0x80
        }
    );
    let e = decode_err(&[0xF1, 0x00], v);
    assert_eq!(
        e,
        DecodeError::InvalidFlags {
            packet: PacketType::Auth,
            flags: 1
        }
    );
}

/// Several packets in one buffer, the last one incomplete.
#[test]
fn pipelined_packets() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0x30, 0x03, 0x00, 0x01, b't', 0xE0][..]);
    let v = ProtocolVersion::V311;
    assert_eq!(decode(&mut buf, 100, v).unwrap(), Some(Packet::PingReq));
    assert!(matches!(
        decode(&mut buf, 100, v).unwrap(),
        Some(Packet::Publish(_))
    ));
    assert_eq!(decode(&mut buf, 100, v).unwrap(), None);
    assert_eq!(&buf[..], &[0xE0]);
    buf.put_u8(0x00);
    assert_eq!(
        decode(&mut buf, 100, v).unwrap(),
        Some(Packet::Disconnect(Disconnect::default()))
    );
    assert!(buf.is_empty());
    assert_eq!(decode(&mut buf, 100, v).unwrap(), None);
}

/// A large PUBLISH fed one byte at a time.
#[test]
fn incremental_large_publish() {
    let payload = vec![0xABu8; 20_000];
    // Remaining length 20_003: 0xA3 0x9C 0x01.
    let mut bytes = vec![0x30, 0xA3, 0x9C, 0x01, 0x00, 0x01, b't'];
    bytes.extend_from_slice(&payload);
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.put_u8(*b);
        let r = decode(&mut buf, 1 << 20, ProtocolVersion::V311).unwrap();
        if i + 1 < bytes.len() {
            assert!(r.is_none());
        } else {
            let Some(Packet::Publish(p)) = r else {
                panic!()
            };
            assert_eq!(p.payload.len(), 20_000);
        }
    }
}

/// The size limit applies to the whole packet, fixed header included, and is checked as soon
/// as the remaining length is known.
#[test]
fn oversized_header_rejected_early() {
    let v = ProtocolVersion::V311;
    // Two bytes announce a 2 + 127 byte packet.
    let mut buf = BytesMut::from(&[0x30, 0x7F][..]);
    let e = decode(&mut buf, 128, v).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 129,
            max: 128
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // Exactly the limit waits for the body.
    let mut buf = BytesMut::from(&[0x30, 0x7F][..]);
    assert_eq!(decode(&mut buf, 129, v).unwrap(), None);
    assert_eq!(buf.len(), 2);
    // Four bytes announcing the largest packet.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let e = decode(&mut buf, 1 << 20, v).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1 << 20
        }
    );
    // A CONNECT is limited too, before anything of it is read.
    let mut buf = BytesMut::from(&[0x10, 0x80, 0x08][..]);
    let e = decode(&mut buf, 1000, v).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 1027,
            max: 1000
        }
    );
}

#[test]
fn remaining_length_too_long() {
    let v = ProtocolVersion::V5;
    // The fourth length byte still continues: an error without waiting for a fifth.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    let e = decode(&mut buf, u32::MAX, v).unwrap_err();
    assert_eq!(
        e,
        DecodeError::VarIntTooLong {
            field: "remaining length"
        }
    );
    assert_eq!(e.rule(), Some("MQTT-1.5.5-1"));
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Three continuing bytes are just incomplete.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..]);
    assert_eq!(decode(&mut buf, u32::MAX, v).unwrap(), None);
    assert_eq!(buf.len(), 4);
}

#[test]
fn empty_buffer() {
    let mut buf = BytesMut::new();
    assert_eq!(decode(&mut buf, 0, ProtocolVersion::V5).unwrap(), None);
}
