//! MQTT 5 property lists (spec 2.2.2): a Variable Byte Integer length, then identifier/value
//! pairs. One function per property struct; each accepts exactly the identifiers the spec
//! allows in its packet, rejects a second copy of any property but User Property (and, in
//! PUBLISH, Subscription Identifier), and checks value ranges.

use crate::error::DecodeError;
use crate::packet::PacketType;
use crate::properties::id::{self, *};
use crate::properties::*;
use crate::wire::Reader;

/// Reads the property length and calls `apply` for each identifier with a reader positioned at
/// its value. `apply` reads the value or fails with [`not_allowed`].
fn read_list<'a>(
    r: &mut Reader<'a>,
    mut apply: impl FnMut(u8, &mut Reader<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.var_int("property length")?;
    let mut list = r.sub(len as usize, "properties")?;
    while !list.is_empty() {
        // The identifier is a Variable Byte Integer, but every defined one is below 0x80: a
        // first byte with the continuation bit set is an unknown identifier either way.
        let id = list.u8("property identifier")?;
        apply(id, &mut list)?;
    }
    Ok(())
}

/// The error for an identifier a packet does not accept: unknown to the spec, or defined but
/// not allowed there.
fn not_allowed(id: u8, packet: PacketType) -> DecodeError {
    if id::name(id).is_some() {
        DecodeError::PropertyNotAllowed { id, packet }
    } else {
        DecodeError::UnknownProperty { id }
    }
}

/// Stores a property that may appear once.
fn once<T>(slot: &mut Option<T>, value: T, id: u8, packet: PacketType) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { id, packet });
    }
    *slot = Some(value);
    Ok(())
}

fn field(id: u8) -> &'static str {
    id::name(id).unwrap_or("property")
}

/// A byte property whose only values are 0 and 1.
fn flag(r: &mut Reader<'_>, id: u8) -> Result<bool, DecodeError> {
    match r.u8(field(id))? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::InvalidPropertyValue {
            id,
            value: v.into(),
        }),
    }
}

/// A byte property limited to 0 and 1 but kept as a number (Payload Format Indicator, Maximum
/// QoS).
fn zero_or_one(r: &mut Reader<'_>, id: u8) -> Result<u8, DecodeError> {
    flag(r, id).map(u8::from)
}

fn nonzero_u16(r: &mut Reader<'_>, id: u8) -> Result<u16, DecodeError> {
    match r.u16(field(id))? {
        0 => Err(DecodeError::InvalidPropertyValue { id, value: 0 }),
        v => Ok(v),
    }
}

fn nonzero_u32(r: &mut Reader<'_>, id: u8) -> Result<u32, DecodeError> {
    match r.u32(field(id))? {
        0 => Err(DecodeError::InvalidPropertyValue { id, value: 0 }),
        v => Ok(v),
    }
}

/// A Subscription Identifier: 1..=268,435,455 (a four-byte Variable Byte Integer cannot exceed
/// the upper bound).
fn subscription_identifier(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    match r.var_int("Subscription Identifier")? {
        0 => Err(DecodeError::InvalidPropertyValue {
            id: SUBSCRIPTION_IDENTIFIER,
            value: 0,
        }),
        v => Ok(v),
    }
}

fn user_property(r: &mut Reader<'_>, list: &mut UserProperties) -> Result<(), DecodeError> {
    let key = r.string("User Property name")?;
    let value = r.string("User Property value")?;
    list.push((key, value));
    Ok(())
}

pub(super) fn connect(r: &mut Reader<'_>) -> Result<ConnectProperties, DecodeError> {
    const P: PacketType = PacketType::Connect;
    let mut p = ConnectProperties::default();
    read_list(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32(field(id))?, id, P),
        RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero_u16(r, id)?, id, P),
        MAXIMUM_PACKET_SIZE => once(&mut p.maximum_packet_size, nonzero_u32(r, id)?, id, P),
        TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16(field(id))?, id, P),
        REQUEST_RESPONSE_INFORMATION => {
            once(&mut p.request_response_information, flag(r, id)?, id, P)
        }
        REQUEST_PROBLEM_INFORMATION => {
            once(&mut p.request_problem_information, flag(r, id)?, id, P)
        }
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string(field(id))?, id, P),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary(field(id))?, id, P),
        _ => Err(not_allowed(id, P)),
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(p)
}

/// The Will Properties in CONNECT's payload (3.1.3.2); errors name CONNECT.
pub(super) fn will(r: &mut Reader<'_>) -> Result<WillProperties, DecodeError> {
    const P: PacketType = PacketType::Connect;
    let mut p = WillProperties::default();
    read_list(r, |id, r| match id {
        WILL_DELAY_INTERVAL => once(&mut p.will_delay_interval, r.u32(field(id))?, id, P),
        PAYLOAD_FORMAT_INDICATOR => {
            once(&mut p.payload_format_indicator, zero_or_one(r, id)?, id, P)
        }
        MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32(field(id))?, id, P),
        CONTENT_TYPE => once(&mut p.content_type, r.string(field(id))?, id, P),
        RESPONSE_TOPIC => once(&mut p.response_topic, r.string(field(id))?, id, P),
        CORRELATION_DATA => once(&mut p.correlation_data, r.binary(field(id))?, id, P),
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        _ => Err(not_allowed(id, P)),
    })?;
    Ok(p)
}

pub(super) fn connack(r: &mut Reader<'_>) -> Result<ConnAckProperties, DecodeError> {
    const P: PacketType = PacketType::ConnAck;
    let mut p = ConnAckProperties::default();
    read_list(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32(field(id))?, id, P),
        RECEIVE_MAXIMUM => once(&mut p.receive_maximum, nonzero_u16(r, id)?, id, P),
        MAXIMUM_QOS => once(&mut p.maximum_qos, zero_or_one(r, id)?, id, P),
        RETAIN_AVAILABLE => once(&mut p.retain_available, flag(r, id)?, id, P),
        MAXIMUM_PACKET_SIZE => once(&mut p.maximum_packet_size, nonzero_u32(r, id)?, id, P),
        ASSIGNED_CLIENT_IDENTIFIER => once(
            &mut p.assigned_client_identifier,
            r.string(field(id))?,
            id,
            P,
        ),
        TOPIC_ALIAS_MAXIMUM => once(&mut p.topic_alias_maximum, r.u16(field(id))?, id, P),
        REASON_STRING => once(&mut p.reason_string, r.string(field(id))?, id, P),
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            once(&mut p.wildcard_subscription_available, flag(r, id)?, id, P)
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => once(
            &mut p.subscription_identifiers_available,
            flag(r, id)?,
            id,
            P,
        ),
        SHARED_SUBSCRIPTION_AVAILABLE => {
            once(&mut p.shared_subscription_available, flag(r, id)?, id, P)
        }
        SERVER_KEEP_ALIVE => once(&mut p.server_keep_alive, r.u16(field(id))?, id, P),
        RESPONSE_INFORMATION => once(&mut p.response_information, r.string(field(id))?, id, P),
        SERVER_REFERENCE => once(&mut p.server_reference, r.string(field(id))?, id, P),
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string(field(id))?, id, P),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary(field(id))?, id, P),
        _ => Err(not_allowed(id, P)),
    })?;
    Ok(p)
}

pub(super) fn publish(r: &mut Reader<'_>) -> Result<PublishProperties, DecodeError> {
    const P: PacketType = PacketType::Publish;
    let mut p = PublishProperties::default();
    read_list(r, |id, r| match id {
        PAYLOAD_FORMAT_INDICATOR => {
            once(&mut p.payload_format_indicator, zero_or_one(r, id)?, id, P)
        }
        MESSAGE_EXPIRY_INTERVAL => once(&mut p.message_expiry_interval, r.u32(field(id))?, id, P),
        TOPIC_ALIAS => once(&mut p.topic_alias, r.u16(field(id))?, id, P),
        RESPONSE_TOPIC => once(&mut p.response_topic, r.string(field(id))?, id, P),
        CORRELATION_DATA => once(&mut p.correlation_data, r.binary(field(id))?, id, P),
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        // May repeat: a server sends one per matching subscription (3.3.2.3.8).
        SUBSCRIPTION_IDENTIFIER => {
            p.subscription_identifiers.push(subscription_identifier(r)?);
            Ok(())
        }
        CONTENT_TYPE => once(&mut p.content_type, r.string(field(id))?, id, P),
        _ => Err(not_allowed(id, P)),
    })?;
    Ok(p)
}

/// The properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
pub(super) fn ack(r: &mut Reader<'_>) -> Result<AckProperties, DecodeError> {
    let packet = r.packet();
    let mut p = AckProperties::default();
    read_list(r, |id, r| match id {
        REASON_STRING => once(&mut p.reason_string, r.string(field(id))?, id, packet),
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        _ => Err(not_allowed(id, packet)),
    })?;
    Ok(p)
}

pub(super) fn subscribe(r: &mut Reader<'_>) -> Result<SubscribeProperties, DecodeError> {
    const P: PacketType = PacketType::Subscribe;
    let mut p = SubscribeProperties::default();
    read_list(r, |id, r| match id {
        SUBSCRIPTION_IDENTIFIER => once(
            &mut p.subscription_identifier,
            subscription_identifier(r)?,
            id,
            P,
        ),
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        _ => Err(not_allowed(id, P)),
    })?;
    Ok(p)
}

pub(super) fn unsubscribe(r: &mut Reader<'_>) -> Result<UnsubscribeProperties, DecodeError> {
    const P: PacketType = PacketType::Unsubscribe;
    let mut p = UnsubscribeProperties::default();
    read_list(r, |id, r| match id {
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        _ => Err(not_allowed(id, P)),
    })?;
    Ok(p)
}

pub(super) fn disconnect(r: &mut Reader<'_>) -> Result<DisconnectProperties, DecodeError> {
    const P: PacketType = PacketType::Disconnect;
    let mut p = DisconnectProperties::default();
    read_list(r, |id, r| match id {
        SESSION_EXPIRY_INTERVAL => once(&mut p.session_expiry_interval, r.u32(field(id))?, id, P),
        REASON_STRING => once(&mut p.reason_string, r.string(field(id))?, id, P),
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        SERVER_REFERENCE => once(&mut p.server_reference, r.string(field(id))?, id, P),
        _ => Err(not_allowed(id, P)),
    })?;
    Ok(p)
}

pub(super) fn auth(r: &mut Reader<'_>) -> Result<AuthProperties, DecodeError> {
    const P: PacketType = PacketType::Auth;
    let mut p = AuthProperties::default();
    read_list(r, |id, r| match id {
        AUTHENTICATION_METHOD => once(&mut p.authentication_method, r.string(field(id))?, id, P),
        AUTHENTICATION_DATA => once(&mut p.authentication_data, r.binary(field(id))?, id, P),
        REASON_STRING => once(&mut p.reason_string, r.string(field(id))?, id, P),
        USER_PROPERTY => user_property(r, &mut p.user_properties),
        _ => Err(not_allowed(id, P)),
    })?;
    Ok(p)
}
