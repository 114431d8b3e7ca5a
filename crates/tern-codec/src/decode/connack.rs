//! CONNACK (3.2), decoded by clients (our tests and load generator).

use crate::decode::{properties, read_reason};
use crate::error::DecodeError;
use crate::packet::{ConnAck, PacketType};
use crate::properties::ConnAckProperties;
use crate::reason::ReasonCode;
use crate::types::ProtocolVersion;
use crate::wire::Reader;

/// Acknowledge Flags, then the reason (5.0) or return code (3.x), then properties (5.0). In
/// 3.1 the flags byte is unused and Session Present does not exist.
pub(super) fn decode_connack(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connect acknowledge flags")?;
    let session_present = match version {
        ProtocolVersion::V31 => false,
        _ if flags & 0xFE != 0 => return Err(DecodeError::ConnAckReservedFlags { flags }),
        _ => flags & 0x01 != 0,
    };
    if !version.is_v5() {
        let rc = r.u8("return code")?;
        let code = ReasonCode::from_v3_connack(rc).ok_or(DecodeError::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code: rc,
        })?;
        return Ok(ConnAck {
            session_present,
            code,
            properties: ConnAckProperties::default(),
        });
    }
    let code = read_reason(r)?;
    let properties = properties::connack(r)?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use crate::decode::tests::{decode_err, decode_ok, roundtrip};
    use crate::*;

    /// CONNACK of 3.1.1 (3.2): session present, return code 0; and the return codes 1-5.
    #[test]
    fn connack_v311() {
        let bytes = [0x20, 0x02, 0x01, 0x00];
        let Packet::ConnAck(c) = decode_ok(&bytes, ProtocolVersion::V311) else {
            panic!()
        };
        assert!(c.session_present);
        assert_eq!(c.code, ReasonCode::SUCCESS);
        roundtrip(&bytes, ProtocolVersion::V311);
        for (rc, code) in [
            (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
            (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
            (3, ReasonCode::SERVER_UNAVAILABLE),
            (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            (5, ReasonCode::NOT_AUTHORIZED),
        ] {
            let bytes = [0x20, 0x02, 0x00, rc];
            let Packet::ConnAck(c) = decode_ok(&bytes, ProtocolVersion::V311) else {
                panic!()
            };
            assert_eq!(c.code, code);
            roundtrip(&bytes, ProtocolVersion::V311);
        }
        let e = decode_err(&[0x20, 0x02, 0x00, 0x06], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: 6
            }
        );
        let e = decode_err(&[0x20, 0x02, 0x02, 0x00], ProtocolVersion::V311);
        assert_eq!(e, DecodeError::ConnAckReservedFlags { flags: 2 });
        assert_eq!(e.rule(), Some("MQTT-3.2.2-1"));
        let e = decode_err(&[0x20, 0x03, 0x00, 0x00, 0x00], ProtocolVersion::V311);
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                packet: PacketType::ConnAck,
                extra: 1
            }
        );
    }

    /// In 3.1 the first CONNACK byte is unused.
    #[test]
    fn connack_v31() {
        let Packet::ConnAck(c) = decode_ok(&[0x20, 0x02, 0x00, 0x02], ProtocolVersion::V31) else {
            panic!()
        };
        assert!(!c.session_present);
        assert_eq!(c.code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        roundtrip(&[0x20, 0x02, 0x00, 0x02], ProtocolVersion::V31);
    }

    #[test]
    fn connack_v5() {
        #[rustfmt::skip]
        let bytes = [
            0x20, 0x0F, // CONNACK, remaining length 15
            0x00, 0x00, // no session, success
            0x0C, // properties length 12
            0x12, 0x00, 0x02, b'i', b'd', // assigned client identifier
            0x13, 0x00, 0x3C, // server keep alive 60
            0x24, 0x01, // maximum QoS 1
            0x25, 0x00, // retain not available
        ];
        let Packet::ConnAck(c) = decode_ok(&bytes, ProtocolVersion::V5) else {
            panic!()
        };
        assert_eq!(c.properties.maximum_qos, Some(1));
        assert_eq!(c.properties.retain_available, Some(false));
        assert_eq!(
            c.properties.assigned_client_identifier.as_deref(),
            Some("id")
        );
        assert_eq!(c.properties.server_keep_alive, Some(60));
        roundtrip(&bytes, ProtocolVersion::V5);
        // Unsupported protocol version, no properties.
        roundtrip(&[0x20, 0x03, 0x00, 0x84, 0x00], ProtocolVersion::V5);
        let e = decode_err(&[0x20, 0x03, 0x00, 0x10, 0x00], ProtocolVersion::V5);
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code: 0x10
            }
        );
        let e = decode_err(
            &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
            ProtocolVersion::V5,
        );
        assert_eq!(e, DecodeError::InvalidPropertyValue { id: 0x24, value: 2 });
        let e = decode_err(
            &[0x20, 0x05, 0x00, 0x00, 0x02, 0x2A, 0x05],
            ProtocolVersion::V5,
        );
        assert_eq!(e, DecodeError::InvalidPropertyValue { id: 0x2A, value: 5 });
        let e = decode_err(
            &[0x20, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01],
            ProtocolVersion::V5,
        );
        assert_eq!(
            e,
            DecodeError::PropertyNotAllowed {
                id: 0x23,
                packet: PacketType::ConnAck
            }
        );
        // The property length is required in a v5 CONNACK.
        let e = decode_err(&[0x20, 0x02, 0x00, 0x00], ProtocolVersion::V5);
        assert_eq!(
            e,
            DecodeError::Truncated {
                packet: PacketType::ConnAck,
                field: "property length"
            }
        );
    }
}
