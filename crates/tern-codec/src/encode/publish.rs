//! PUBLISH (3.3) and PUBACK, PUBREC, PUBREL, PUBCOMP (3.4-3.7).

use bytes::{BufMut, BytesMut};

use crate::encode::properties::{list_len, put_list};
use crate::error::EncodeError;
use crate::packet::{PacketType, PubAck, Publish};
use crate::reason::ReasonCode;
use crate::types::{ProtocolVersion, QoS};
use crate::wire::{field_len, put_field};

/// Type, DUP, QoS and RETAIN.
pub(super) fn first_byte(p: &Publish) -> u8 {
    (PacketType::Publish as u8) << 4
        | u8::from(p.dup) << 3
        | (p.qos as u8) << 1
        | u8::from(p.retain)
}

pub(super) fn publish_body_len(p: &Publish, version: ProtocolVersion) -> usize {
    let mut len = field_len(p.topic.as_bytes()) + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        len += 2;
    }
    if version.is_v5() {
        len += list_len(&p.properties);
    }
    len
}

pub(super) fn write_publish(
    p: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_field(buf, p.topic.as_bytes(), "topic name")?;
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, None) => {}
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => buf.put_u16(id),
        (qos, packet_id) => return Err(EncodeError::PublishPacketId { qos, packet_id }),
    }
    if version.is_v5() {
        put_list(&p.properties, buf)?;
    }
    buf.put_slice(&p.payload);
    Ok(())
}

/// 3.x: the packet id. 5.0: the packet id alone for Success without properties, the reason
/// alone without properties, else reason and properties.
pub(super) fn ack_body_len(a: &PubAck, version: ProtocolVersion) -> usize {
    if !version.is_v5() {
        2
    } else if a.properties.is_empty() {
        if a.reason == ReasonCode::SUCCESS {
            2
        } else {
            3
        }
    } else {
        3 + list_len(&a.properties)
    }
}

pub(super) fn write_ack(
    a: &PubAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(a.packet_id);
    if !version.is_v5() || (a.properties.is_empty() && a.reason == ReasonCode::SUCCESS) {
        return Ok(());
    }
    buf.put_u8(a.reason.0);
    if a.properties.is_empty() {
        Ok(())
    } else {
        put_list(&a.properties, buf)
    }
}
