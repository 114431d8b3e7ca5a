//! SUBSCRIBE (3.8), SUBACK (3.9), UNSUBSCRIBE (3.10) and UNSUBACK (3.11).

use bytes::{BufMut, BytesMut};

use crate::encode::properties::{list_len, put_list};
use crate::error::EncodeError;
use crate::packet::{SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::types::{ProtocolVersion, SubscriptionOptions};
use crate::wire::{field_len, put_field};

pub(super) fn subscribe_body_len(s: &Subscribe, version: ProtocolVersion) -> usize {
    let filters: usize = s
        .filters
        .iter()
        .map(|(f, _)| field_len(f.as_bytes()) + 1)
        .sum();
    2 + filters
        + if version.is_v5() {
            list_len(&s.properties)
        } else {
            0
        }
}

/// The options byte (3.8.3.1); 3.x has only the QoS bits.
fn options_byte(o: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let qos = o.qos as u8;
    if !version.is_v5() {
        return qos;
    }
    qos | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

pub(super) fn write_subscribe(
    s: &Subscribe,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id);
    if version.is_v5() {
        put_list(&s.properties, buf)?;
    }
    for (filter, options) in &s.filters {
        put_field(buf, filter.as_bytes(), "topic filter")?;
        buf.put_u8(options_byte(options, version));
    }
    Ok(())
}

pub(super) fn suback_body_len(s: &SubAck, version: ProtocolVersion) -> usize {
    2 + s.reasons.len()
        + if version.is_v5() {
            list_len(&s.properties)
        } else {
            0
        }
}

/// In 3.x every failure is written as 0x80, the only failure return code.
pub(super) fn write_suback(
    s: &SubAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(s.packet_id);
    if version.is_v5() {
        put_list(&s.properties, buf)?;
        for reason in &s.reasons {
            buf.put_u8(reason.0);
        }
    } else {
        for reason in &s.reasons {
            buf.put_u8(if reason.is_error() { 0x80 } else { reason.0 });
        }
    }
    Ok(())
}

pub(super) fn unsubscribe_body_len(u: &Unsubscribe, version: ProtocolVersion) -> usize {
    let filters: usize = u.filters.iter().map(|f| field_len(f.as_bytes())).sum();
    2 + filters
        + if version.is_v5() {
            list_len(&u.properties)
        } else {
            0
        }
}

pub(super) fn write_unsubscribe(
    u: &Unsubscribe,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id);
    if version.is_v5() {
        put_list(&u.properties, buf)?;
    }
    for filter in &u.filters {
        put_field(buf, filter.as_bytes(), "topic filter")?;
    }
    Ok(())
}

/// 3.x UNSUBACK is the packet id alone.
pub(super) fn unsuback_body_len(u: &UnsubAck, version: ProtocolVersion) -> usize {
    if version.is_v5() {
        2 + list_len(&u.properties) + u.reasons.len()
    } else {
        2
    }
}

pub(super) fn write_unsuback(
    u: &UnsubAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.put_u16(u.packet_id);
    if version.is_v5() {
        put_list(&u.properties, buf)?;
        for reason in &u.reasons {
            buf.put_u8(reason.0);
        }
    }
    Ok(())
}
