//! A PUBLISH written straight from a stored message's parts, adjusted for one receiver, without
//! building a [`Publish`](crate::Publish): a broker fans one message out to many subscribers,
//! and each copy differs only in a few fields.

use bytes::{BufMut, BytesMut};

use crate::encode::properties::{PropertyList, Writer, list_len, put_list};
use crate::error::EncodeError;
use crate::packet::PacketType;
use crate::properties::PublishProperties;
use crate::properties::id::*;
use crate::types::{PacketId, ProtocolVersion, QoS};
use crate::wire::{VAR_INT_MAX, check_field, field_len, put_field, put_var_int, var_int_len};

/// One receiver's PUBLISH of a message.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when `topic_alias` stands for a topic the receiver already knows.
    pub topic: &'a str,
    /// `Some` exactly when `qos` is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// The message's properties; their Topic Alias, Subscription Identifiers and Message
    /// Expiry Interval are replaced by the fields below.
    pub properties: &'a PublishProperties,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_identifiers: &'a [u32],
    /// User properties written after the message's own, in this order.
    pub extra_user_properties: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
}

/// The v5 property list of an [`Outgoing`].
struct Props<'o, 'a>(&'o Outgoing<'a>);

impl PropertyList for Props<'_, '_> {
    fn body_len(&self) -> usize {
        let o = self.0;
        let p = o.properties;
        let opt_str = |s: &Option<bytestring::ByteString>| s.as_ref().map_or(0, |s| 3 + s.len());
        p.payload_format_indicator.map_or(0, |_| 2)
            + o.message_expiry_interval.map_or(0, |_| 5)
            + opt_str(&p.content_type)
            + opt_str(&p.response_topic)
            + p.correlation_data.as_ref().map_or(0, |b| 3 + b.len())
            + o.subscription_identifiers
                .iter()
                .map(|v| 1 + var_int_len(*v as usize))
                .sum::<usize>()
            + o.topic_alias.map_or(0, |_| 3)
            + p.user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + o.extra_user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let o = self.0;
        let p = o.properties;
        w.byte(PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
        w.u32(MESSAGE_EXPIRY_INTERVAL, o.message_expiry_interval);
        w.str(CONTENT_TYPE, &p.content_type)?;
        w.str(RESPONSE_TOPIC, &p.response_topic)?;
        w.bin(CORRELATION_DATA, &p.correlation_data)?;
        for v in o.subscription_identifiers {
            w.var_int(SUBSCRIPTION_IDENTIFIER, *v)?;
        }
        w.u16(TOPIC_ALIAS, o.topic_alias);
        w.users(&p.user_properties)?;
        for (k, v) in o.extra_user_properties {
            w.user(k, v)?;
        }
        Ok(())
    }
}

fn body_len(o: &Outgoing<'_>, version: ProtocolVersion) -> usize {
    let mut len = field_len(o.topic.as_bytes()) + o.payload.len();
    if o.qos != QoS::AtMostOnce {
        len += 2;
    }
    if version.is_v5() {
        len += list_len(&Props(o));
    }
    len
}

/// The bytes [`encode_outgoing`] writes (fixed header included).
pub fn outgoing_len(o: &Outgoing<'_>, version: ProtocolVersion) -> usize {
    let remaining = body_len(o, version);
    1 + var_int_len(remaining) + remaining
}

/// Appends the PUBLISH to `buf`. For 3.1 and 3.1.1 the properties are left out.
pub fn encode_outgoing(
    o: &Outgoing<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.reserve(outgoing_len(o, version));
    encode_outgoing_head(o, version, buf)?;
    buf.put_slice(o.payload);
    Ok(())
}

/// Appends the PUBLISH to `buf` up to its payload: the caller sends the `o.payload.len()`
/// payload bytes right after (say, as a shared buffer in a vectored write, so that a large
/// payload is never copied per receiver). Nothing is appended on error.
pub fn encode_outgoing_head(
    o: &Outgoing<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = body_len(o, version);
    if remaining > VAR_INT_MAX as usize {
        return Err(EncodeError::PacketTooLarge { remaining });
    }
    let first = (PacketType::Publish as u8) << 4
        | u8::from(o.dup) << 3
        | (o.qos as u8) << 1
        | u8::from(o.retain);
    let start = buf.len();
    buf.reserve(1 + var_int_len(remaining) + remaining - o.payload.len());
    buf.put_u8(first);
    put_var_int(buf, remaining);
    let result = (|| {
        check_field(o.topic.len(), "topic name")?;
        put_field(buf, o.topic.as_bytes(), "topic name")?;
        match (o.qos, o.packet_id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => buf.put_u16(id),
            (qos, packet_id) => return Err(EncodeError::PublishPacketId { qos, packet_id }),
        }
        if version.is_v5() {
            put_list(&Props(o), buf)?;
        }
        Ok(())
    })();
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Publish, decode};
    use bytes::Bytes;
    use bytestring::ByteString;

    /// Writing an Outgoing gives the same bytes as the Publish it describes.
    #[test]
    fn same_bytes_as_the_equivalent_publish() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(99),
            topic_alias: Some(9),
            response_topic: Some(ByteString::from_static("r/t")),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![(ByteString::from_static("a"), ByteString::from_static("1"))],
            subscription_identifiers: Default::default(),
            content_type: Some(ByteString::from_static("text/plain")),
        };
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let o = Outgoing {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "a/b",
                packet_id: Some(7),
                properties: &props,
                message_expiry_interval: Some(42),
                topic_alias: Some(3),
                subscription_identifiers: &[1, 300],
                extra_user_properties: &[("cid", "5"), ("timestamp", "1.5")],
                payload: b"hello",
            };
            let mut expected_props = props.clone();
            expected_props.message_expiry_interval = Some(42);
            expected_props.topic_alias = Some(3);
            expected_props.subscription_identifiers = [1, 300].into_iter().collect();
            expected_props
                .user_properties
                .push((ByteString::from_static("cid"), ByteString::from_static("5")));
            expected_props.user_properties.push((
                ByteString::from_static("timestamp"),
                ByteString::from_static("1.5"),
            ));
            let p = Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: ByteString::from_static("a/b"),
                packet_id: Some(7),
                properties: if version.is_v5() {
                    expected_props
                } else {
                    PublishProperties::default()
                },
                payload: Bytes::from_static(b"hello"),
            };
            let mut a = BytesMut::new();
            encode_outgoing(&o, version, &mut a).unwrap();
            let mut b = BytesMut::new();
            crate::encode_publish(&p, version, &mut b).unwrap();
            assert_eq!(a, b, "{version}");
            assert_eq!(outgoing_len(&o, version), a.len());
            let mut head = BytesMut::new();
            encode_outgoing_head(&o, version, &mut head).unwrap();
            head.extend_from_slice(o.payload);
            assert_eq!(head, a, "head and payload: {version}");
            let decoded = decode(&mut a, u32::MAX >> 4, version).unwrap().unwrap();
            assert_eq!(decoded, crate::Packet::Publish(p));
        }
    }
}
