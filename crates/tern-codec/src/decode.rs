//! Decoding: bytes from the connection's buffer to whole packets.
//!
//! [`decode`] reads the fixed header first and checks the packet size against the receiver's
//! limit before it waits for the body, so an oversized packet is refused after at most five
//! bytes. Only when the whole packet is buffered is it split off, frozen and parsed; strings and
//! payloads are slices of that frame.
//!
//! Layout: this file has the fixed header, the dispatch and the packets without a family
//! (PINGREQ, PINGRESP, DISCONNECT, AUTH); `connect` and `connack` have CONNECT and CONNACK,
//! `publish` PUBLISH and its acknowledgements, `subscribe` SUBSCRIBE/UNSUBSCRIBE and their acknowledgements,
//! `properties` the MQTT 5 property lists.

mod connack;
mod connect;
mod properties;
mod publish;
mod subscribe;

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::{Auth, Disconnect, Packet, PacketType};
use crate::properties::{AuthProperties, DisconnectProperties};
use crate::reason::ReasonCode;
use crate::types::ProtocolVersion;
use crate::wire::{Reader, parse_var_int};

/// The most `decode` reserves in `buf` for the rest of an incomplete packet.
const RESERVE_STEP: usize = 64 * 1024;

/// Decodes one packet from the front of `buf`.
///
/// - `Ok(None)`: the packet is not complete yet; nothing is consumed (capacity for up to 64 KiB
///   more of the packet may be reserved). Call again when more bytes have arrived.
/// - `Ok(Some(packet))`: exactly that packet's bytes were taken from `buf`.
/// - `Err(_)`: a protocol violation; the connection must be closed (what is left in `buf` is
///   then unspecified). A packet whose fixed header announces more than `max_packet_size` bytes
///   (fixed header included; pass `u32::MAX` for no limit) fails as soon as the header is
///   complete. The first byte's type and flags are checked as soon as it arrives.
///
/// `version` is the connection's negotiated version. CONNECT ignores it and decodes the version
/// it announces (`MQIsdp`/3, `MQTT`/4, `MQTT`/5).
pub fn decode(
    buf: &mut BytesMut,
    max_packet_size: u32,
    version: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FixedHeader::parse(buf, version)? else {
        return Ok(None);
    };
    let size = header.header_len + header.remaining;
    // At most 5 + 268,435,455 bytes, so this fits a u32.
    let size_u32 = u32::try_from(size).unwrap_or(u32::MAX);
    if size_u32 > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: size_u32,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        // Make room for the rest of the packet, but only a bounded step at a time: a peer
        // must not make us allocate a large buffer by sending a header alone.
        buf.reserve((size - buf.len()).min(RESERVE_STEP));
        return Ok(None);
    }
    let frame = buf.split_to(size).freeze();
    decode_frame(&header, &frame, version).map(Some)
}

/// The first byte and the remaining length (spec 2.1).
#[derive(Debug, Clone, Copy)]
struct FixedHeader {
    packet_type: PacketType,
    flags: u8,
    /// 1 + the length of the remaining-length integer.
    header_len: usize,
    remaining: usize,
}

impl FixedHeader {
    /// Parses the fixed header at the front of `buf`; `Ok(None)` until it is complete. The type
    /// and flags are checked on the first byte alone.
    fn parse(buf: &[u8], version: ProtocolVersion) -> Result<Option<FixedHeader>, DecodeError> {
        let Some((&first, rest)) = buf.split_first() else {
            return Ok(None);
        };
        let (packet_type, flags) = check_first_byte(first, version)?;
        let Some((remaining, len)) = parse_var_int(rest, "remaining length")? else {
            return Ok(None);
        };
        Ok(Some(FixedHeader {
            packet_type,
            flags,
            header_len: 1 + len,
            remaining: remaining as usize,
        }))
    }
}

/// Splits the first byte into a packet type and flags, rejecting reserved types and flags that
/// break [MQTT-2.1.3-1] (and, for PUBLISH, QoS 3 and DUP on QoS 0).
fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(PacketType, u8), DecodeError> {
    let (kind, flags) = (first >> 4, first & 0x0F);
    let packet_type = match PacketType::from_u8(kind) {
        Some(PacketType::Auth) if !version.is_v5() => None,
        t => t,
    }
    .ok_or(DecodeError::ReservedPacketType {
        packet_type: kind,
        version,
    })?;
    match packet_type.required_flags() {
        Some(required) if flags != required => {
            return Err(DecodeError::InvalidFlags {
                packet: packet_type,
                flags,
            });
        }
        Some(_) => {}
        None => publish::check_flags(flags)?,
    }
    Ok((packet_type, flags))
}

fn decode_frame(
    header: &FixedHeader,
    frame: &Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(frame, header.header_len, header.packet_type);
    let packet = match header.packet_type {
        PacketType::Connect => Packet::Connect(Box::new(connect::decode_connect(&mut r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack::decode_connack(&mut r, version)?),
        PacketType::Publish => {
            Packet::Publish(publish::decode_publish(&mut r, header.flags, version)?)
        }
        PacketType::PubAck => Packet::PubAck(publish::decode_ack(&mut r, version)?),
        PacketType::PubRec => Packet::PubRec(publish::decode_ack(&mut r, version)?),
        PacketType::PubRel => Packet::PubRel(publish::decode_ack(&mut r, version)?),
        PacketType::PubComp => Packet::PubComp(publish::decode_ack(&mut r, version)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe::decode_subscribe(&mut r, version)?),
        PacketType::SubAck => Packet::SubAck(subscribe::decode_suback(&mut r, version)?),
        PacketType::Unsubscribe => {
            Packet::Unsubscribe(subscribe::decode_unsubscribe(&mut r, version)?)
        }
        PacketType::UnsubAck => Packet::UnsubAck(subscribe::decode_unsuback(&mut r, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(decode_disconnect(&mut r, version)?),
        PacketType::Auth => Packet::Auth(decode_auth(&mut r)?),
    };
    r.finish()?;
    Ok(packet)
}

/// Reads a reason code and checks that MQTT 5 allows it in the reader's packet type.
pub(crate) fn read_reason(r: &mut Reader<'_>) -> Result<ReasonCode, DecodeError> {
    let code = ReasonCode(r.u8("reason code")?);
    if r.packet().allows(code) {
        Ok(code)
    } else {
        Err(DecodeError::InvalidReasonCode {
            packet: r.packet(),
            code: code.0,
        })
    }
}

/// DISCONNECT (3.14). Empty in 3.x. In 5.0 a remaining length of 0 means Normal disconnection
/// without properties and 1 a reason code without properties.
fn decode_disconnect(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Disconnect, DecodeError> {
    if !version.is_v5() || r.is_empty() {
        return Ok(Disconnect::default());
    }
    let reason = read_reason(r)?;
    let properties = if r.is_empty() {
        DisconnectProperties::default()
    } else {
        properties::disconnect(r)?
    };
    Ok(Disconnect { reason, properties })
}

/// AUTH (3.15), MQTT 5 only. A remaining length of 0 means Success without properties; a
/// reason code alone is accepted as well.
fn decode_auth(r: &mut Reader<'_>) -> Result<Auth, DecodeError> {
    if r.is_empty() {
        return Ok(Auth::default());
    }
    let reason = read_reason(r)?;
    let properties = if r.is_empty() {
        AuthProperties::default()
    } else {
        properties::auth(r)?
    };
    Ok(Auth { reason, properties })
}

#[cfg(test)]
mod tests;
