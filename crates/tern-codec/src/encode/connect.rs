//! CONNECT (3.1) and CONNACK (3.2).

use bytes::{BufMut, BytesMut};

use crate::encode::properties::{list_len, put_list};
use crate::error::EncodeError;
use crate::packet::{ConnAck, Connect};
use crate::types::ProtocolVersion;
use crate::wire::{field_len, put_field};

/// CONNECT is encoded for `c.protocol`: 3.1 as `MQIsdp`/3, 3.1.1 as `MQTT`/4, 5.0 as `MQTT`/5.
pub(super) fn connect_body_len(c: &Connect) -> usize {
    let v5 = c.protocol.is_v5();
    let mut len = field_len(c.protocol.name().as_bytes()) + 1 + 1 + 2;
    if v5 {
        len += list_len(&c.properties);
    }
    len += field_len(c.client_id.as_bytes());
    if let Some(will) = &c.will {
        if v5 {
            len += list_len(&will.properties);
        }
        len += field_len(will.topic.as_bytes()) + field_len(&will.payload);
    }
    if let Some(username) = &c.username {
        len += field_len(username.as_bytes());
    }
    if let Some(password) = &c.password {
        len += field_len(password);
    }
    len
}

pub(super) fn write_connect(c: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    put_field(buf, c.protocol.name().as_bytes(), "protocol name")?;
    buf.put_u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3;
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        put_list(&c.properties, buf)?;
    }
    put_field(buf, c.client_id.as_bytes(), "client identifier")?;
    if let Some(will) = &c.will {
        if v5 {
            put_list(&will.properties, buf)?;
        }
        put_field(buf, will.topic.as_bytes(), "will topic")?;
        put_field(buf, &will.payload, "will payload")?;
    }
    if let Some(username) = &c.username {
        put_field(buf, username.as_bytes(), "user name")?;
    }
    if let Some(password) = &c.password {
        put_field(buf, password, "password")?;
    }
    Ok(())
}

/// CONNACK: flags and return code in 3.x (Session Present is not written for 3.1, where the
/// byte is unused); flags, reason and properties in 5.0.
pub(super) fn connack_body_len(c: &ConnAck, version: ProtocolVersion) -> usize {
    if version.is_v5() {
        2 + list_len(&c.properties)
    } else {
        2
    }
}

pub(super) fn write_connack(
    c: &ConnAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let session_present = c.session_present && version != ProtocolVersion::V31;
    buf.put_u8(u8::from(session_present));
    if version.is_v5() {
        buf.put_u8(c.code.0);
        put_list(&c.properties, buf)
    } else {
        buf.put_u8(c.code.v3_connack_return_code());
        Ok(())
    }
}
