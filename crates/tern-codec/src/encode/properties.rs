//! MQTT 5 property lists (spec 2.2.2): each struct measures itself and writes its properties in
//! ascending identifier order (User Properties in their own order); the list is prefixed with
//! its length.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::EncodeError;
use crate::properties::id::{self, *};
use crate::properties::*;
use crate::wire::{VAR_INT_MAX, check_field, put_field, put_var_int, var_int_len};

/// A property list.
pub(super) trait PropertyList {
    /// The length of the properties, without the length prefix.
    fn body_len(&self) -> usize;
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;
}

/// The length of a property list with its Variable Byte Integer prefix.
pub(super) fn list_len(list: &impl PropertyList) -> usize {
    let n = list.body_len();
    var_int_len(n) + n
}

/// Writes the length prefix and the properties.
pub(super) fn put_list(list: &impl PropertyList, buf: &mut BytesMut) -> Result<(), EncodeError> {
    // The list is shorter than the remaining length, which the caller has checked.
    put_var_int(buf, list.body_len());
    list.write(&mut Writer(buf))
}

// ---- lengths: identifier byte + value ----

fn byte_len<T>(v: &Option<T>) -> usize {
    if v.is_some() { 2 } else { 0 }
}

fn u16_len(v: &Option<u16>) -> usize {
    if v.is_some() { 3 } else { 0 }
}

fn u32_len(v: &Option<u32>) -> usize {
    if v.is_some() { 5 } else { 0 }
}

fn str_len(v: &Option<ByteString>) -> usize {
    v.as_ref().map_or(0, |s| 3 + s.len())
}

fn bin_len(v: &Option<Bytes>) -> usize {
    v.as_ref().map_or(0, |b| 3 + b.len())
}

fn users_len(v: &UserProperties) -> usize {
    v.iter().map(|(k, v)| 5 + k.len() + v.len()).sum()
}

// ---- writing ----

pub(super) struct Writer<'a>(&'a mut BytesMut);

fn name(id: u8) -> &'static str {
    id::name(id).unwrap_or("property")
}

impl Writer<'_> {
    pub(super) fn byte(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.0.put_u8(id);
            self.0.put_u8(v);
        }
    }

    pub(super) fn flag(&mut self, id: u8, v: Option<bool>) {
        self.byte(id, v.map(u8::from));
    }

    pub(super) fn u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.0.put_u8(id);
            self.0.put_u16(v);
        }
    }

    pub(super) fn u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.0.put_u8(id);
            self.0.put_u32(v);
        }
    }

    pub(super) fn var_int(&mut self, id: u8, v: u32) -> Result<(), EncodeError> {
        if v > VAR_INT_MAX {
            return Err(EncodeError::VarIntOutOfRange {
                field: name(id),
                value: v,
            });
        }
        self.0.put_u8(id);
        put_var_int(self.0, v as usize);
        Ok(())
    }

    pub(super) fn str(&mut self, id: u8, v: &Option<ByteString>) -> Result<(), EncodeError> {
        match v {
            Some(s) => self.field(id, s.as_bytes()),
            None => Ok(()),
        }
    }

    pub(super) fn bin(&mut self, id: u8, v: &Option<Bytes>) -> Result<(), EncodeError> {
        match v {
            Some(b) => self.field(id, b),
            None => Ok(()),
        }
    }

    pub(super) fn field(&mut self, id: u8, bytes: &[u8]) -> Result<(), EncodeError> {
        check_field(bytes.len(), name(id))?;
        self.0.put_u8(id);
        put_field(self.0, bytes, name(id))
    }

    pub(super) fn users(&mut self, v: &UserProperties) -> Result<(), EncodeError> {
        for (k, v) in v {
            self.user(k, v)?;
        }
        Ok(())
    }

    pub(super) fn user(&mut self, k: &str, v: &str) -> Result<(), EncodeError> {
        check_field(k.len(), "User Property name")?;
        check_field(v.len(), "User Property value")?;
        self.0.put_u8(USER_PROPERTY);
        put_field(self.0, k.as_bytes(), "User Property name")?;
        put_field(self.0, v.as_bytes(), "User Property value")
    }
}

impl PropertyList for ConnectProperties {
    fn body_len(&self) -> usize {
        u32_len(&self.session_expiry_interval)
            + u16_len(&self.receive_maximum)
            + u32_len(&self.maximum_packet_size)
            + u16_len(&self.topic_alias_maximum)
            + byte_len(&self.request_response_information)
            + byte_len(&self.request_problem_information)
            + users_len(&self.user_properties)
            + str_len(&self.authentication_method)
            + bin_len(&self.authentication_data)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w.str(AUTHENTICATION_METHOD, &self.authentication_method)?;
        w.bin(AUTHENTICATION_DATA, &self.authentication_data)?;
        w.flag(
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        w.flag(
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        w.u16(RECEIVE_MAXIMUM, self.receive_maximum);
        w.u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        w.users(&self.user_properties)?;
        w.u32(MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        Ok(())
    }
}

impl PropertyList for WillProperties {
    fn body_len(&self) -> usize {
        u32_len(&self.will_delay_interval)
            + byte_len(&self.payload_format_indicator)
            + u32_len(&self.message_expiry_interval)
            + str_len(&self.content_type)
            + str_len(&self.response_topic)
            + bin_len(&self.correlation_data)
            + users_len(&self.user_properties)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.byte(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        w.u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w.str(CONTENT_TYPE, &self.content_type)?;
        w.str(RESPONSE_TOPIC, &self.response_topic)?;
        w.bin(CORRELATION_DATA, &self.correlation_data)?;
        w.u32(WILL_DELAY_INTERVAL, self.will_delay_interval);
        w.users(&self.user_properties)
    }
}

impl PropertyList for ConnAckProperties {
    fn body_len(&self) -> usize {
        u32_len(&self.session_expiry_interval)
            + u16_len(&self.receive_maximum)
            + byte_len(&self.maximum_qos)
            + byte_len(&self.retain_available)
            + u32_len(&self.maximum_packet_size)
            + str_len(&self.assigned_client_identifier)
            + u16_len(&self.topic_alias_maximum)
            + str_len(&self.reason_string)
            + users_len(&self.user_properties)
            + byte_len(&self.wildcard_subscription_available)
            + byte_len(&self.subscription_identifiers_available)
            + byte_len(&self.shared_subscription_available)
            + u16_len(&self.server_keep_alive)
            + str_len(&self.response_information)
            + str_len(&self.server_reference)
            + str_len(&self.authentication_method)
            + bin_len(&self.authentication_data)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w.str(ASSIGNED_CLIENT_IDENTIFIER, &self.assigned_client_identifier)?;
        w.u16(SERVER_KEEP_ALIVE, self.server_keep_alive);
        w.str(AUTHENTICATION_METHOD, &self.authentication_method)?;
        w.bin(AUTHENTICATION_DATA, &self.authentication_data)?;
        w.str(RESPONSE_INFORMATION, &self.response_information)?;
        w.str(SERVER_REFERENCE, &self.server_reference)?;
        w.str(REASON_STRING, &self.reason_string)?;
        w.u16(RECEIVE_MAXIMUM, self.receive_maximum);
        w.u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        w.byte(MAXIMUM_QOS, self.maximum_qos);
        w.flag(RETAIN_AVAILABLE, self.retain_available);
        w.users(&self.user_properties)?;
        w.u32(MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        w.flag(
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        w.flag(
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        w.flag(
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        Ok(())
    }
}

impl PropertyList for PublishProperties {
    fn body_len(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        byte_len(&self.payload_format_indicator)
            + u32_len(&self.message_expiry_interval)
            + u16_len(&self.topic_alias)
            + str_len(&self.response_topic)
            + bin_len(&self.correlation_data)
            + users_len(&self.user_properties)
            + self
                .subscription_identifiers
                .iter()
                .map(|v| 1 + var_int_len(*v as usize))
                .sum::<usize>()
            + str_len(&self.content_type)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        if self.is_empty() {
            return Ok(());
        }
        w.byte(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        w.u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w.str(CONTENT_TYPE, &self.content_type)?;
        w.str(RESPONSE_TOPIC, &self.response_topic)?;
        w.bin(CORRELATION_DATA, &self.correlation_data)?;
        for v in &self.subscription_identifiers {
            w.var_int(SUBSCRIPTION_IDENTIFIER, *v)?;
        }
        w.u16(TOPIC_ALIAS, self.topic_alias);
        w.users(&self.user_properties)
    }
}

impl PropertyList for AckProperties {
    fn body_len(&self) -> usize {
        str_len(&self.reason_string) + users_len(&self.user_properties)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.str(REASON_STRING, &self.reason_string)?;
        w.users(&self.user_properties)
    }
}

impl PropertyList for SubscribeProperties {
    fn body_len(&self) -> usize {
        self.subscription_identifier
            .map_or(0, |v| 1 + var_int_len(v as usize))
            + users_len(&self.user_properties)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        if let Some(v) = self.subscription_identifier {
            w.var_int(SUBSCRIPTION_IDENTIFIER, v)?;
        }
        w.users(&self.user_properties)
    }
}

impl PropertyList for UnsubscribeProperties {
    fn body_len(&self) -> usize {
        users_len(&self.user_properties)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.users(&self.user_properties)
    }
}

impl PropertyList for DisconnectProperties {
    fn body_len(&self) -> usize {
        u32_len(&self.session_expiry_interval)
            + str_len(&self.reason_string)
            + users_len(&self.user_properties)
            + str_len(&self.server_reference)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w.str(SERVER_REFERENCE, &self.server_reference)?;
        w.str(REASON_STRING, &self.reason_string)?;
        w.users(&self.user_properties)
    }
}

impl PropertyList for AuthProperties {
    fn body_len(&self) -> usize {
        str_len(&self.authentication_method)
            + bin_len(&self.authentication_data)
            + str_len(&self.reason_string)
            + users_len(&self.user_properties)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.str(AUTHENTICATION_METHOD, &self.authentication_method)?;
        w.bin(AUTHENTICATION_DATA, &self.authentication_data)?;
        w.str(REASON_STRING, &self.reason_string)?;
        w.users(&self.user_properties)
    }
}
