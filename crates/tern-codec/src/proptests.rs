//! Round trips: arbitrary valid packets of each type for each version are encoded, measured and
//! decoded back to the same packet, whole and split at an arbitrary point.
//!
//! "Valid" means what the decoder accepts for that version: 3.x packets carry no properties and
//! only the reasons 3.x can express; 5.0 reasons are those the spec allows in the packet type.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::wire::VAR_INT_MAX;
use crate::*;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V31),
        Just(ProtocolVersion::V311),
        Just(ProtocolVersion::V5)
    ]
}

fn string() -> impl Strategy<Value = ByteString> {
    r"[^\x00]{0,8}".prop_map(ByteString::from)
}

fn opt_string() -> impl Strategy<Value = Option<ByteString>> {
    option::of(string())
}

fn topic_name() -> impl Strategy<Value = ByteString> {
    r"[^\x00+#]{1,12}".prop_map(ByteString::from)
}

fn topic_filter() -> impl Strategy<Value = ByteString> {
    r"[^\x00]{1,12}".prop_map(ByteString::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn opt_binary() -> impl Strategy<Value = Option<Bytes>> {
    option::of(binary())
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((string(), string()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    1..=u16::MAX
}

fn sub_id() -> impl Strategy<Value = u32> {
    1..=VAR_INT_MAX
}

fn opt_nonzero_u16() -> impl Strategy<Value = Option<u16>> {
    option::of(1..=u16::MAX)
}

fn opt_nonzero_u32() -> impl Strategy<Value = Option<u32>> {
    option::of(1..=u32::MAX)
}

fn opt_zero_or_one() -> impl Strategy<Value = Option<u8>> {
    option::of(0..=1u8)
}

/// A reason valid in `packet` for MQTT 5.
fn reason(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = (0..=u8::MAX)
        .map(ReasonCode)
        .filter(|c| packet.allows(*c))
        .collect();
    select(codes)
}

/// A strategy that is the default value for 3.x and `s` for 5.0.
fn v5_only<T: Default + Clone + std::fmt::Debug + 'static>(
    v: ProtocolVersion,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if v.is_v5() {
        s.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        opt_nonzero_u16(),
        opt_nonzero_u32(),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        opt_string(),
        opt_binary(),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, up, am, ad)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                // Authentication Data needs a method.
                authentication_data: if am.is_some() { ad } else { None },
                authentication_method: am,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        opt_zero_or_one(),
        option::of(any::<u32>()),
        opt_string(),
        opt_string(),
        opt_binary(),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        v5_only(v, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        r"[^\x00]{0,23}",
        option::of(will(v)),
        opt_string(),
        opt_binary(),
        v5_only(v, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                let clean_start = match v {
                    // 3.1 needs a client id; 3.1.1 needs clean session without one.
                    ProtocolVersion::V31 => clean_start,
                    ProtocolVersion::V311 => clean_start || client_id.is_empty(),
                    ProtocolVersion::V5 => clean_start,
                };
                let client_id = if v == ProtocolVersion::V31 && client_id.is_empty() {
                    "c".to_owned()
                } else {
                    client_id
                };
                // Before 5.0 a password needs a user name.
                let password = if v.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id: client_id.into(),
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            opt_nonzero_u16(),
            opt_zero_or_one(),
            option::of(any::<bool>()),
            opt_nonzero_u32(),
            opt_string(),
            option::of(any::<u16>()),
            opt_string(),
            user_properties(),
        ),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<u16>()),
            opt_string(),
            opt_string(),
            opt_string(),
            opt_binary(),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, up), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason(PacketType::ConnAck).boxed()
    } else {
        (0..=5u8)
            .prop_filter_map("3.x return code", ReasonCode::from_v3_connack)
            .boxed()
    };
    (any::<bool>(), code, v5_only(v, connack_properties())).prop_map(
        move |(session_present, code, properties)| {
            let session_present = session_present && v != ProtocolVersion::V31;
            Packet::ConnAck(ConnAck {
                session_present,
                code,
                properties,
            })
        },
    )
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        opt_zero_or_one(),
        option::of(any::<u32>()),
        option::of(any::<u16>()),
        opt_string(),
        opt_binary(),
        user_properties(),
        vec(sub_id(), 0..3),
        opt_string(),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, sids, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: sids.into_iter().collect(),
            content_type: ct,
        })
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        prop_oneof![3 => topic_name(), 1 => Just(ByteString::new())],
        packet_id(),
        v5_only(v, publish_properties()),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(
            move |(dup, qos, retain, topic, id, mut properties, payload)| {
                let topic = if topic.is_empty() {
                    if v.is_v5() {
                        // An empty topic stands for a Topic Alias.
                        properties.topic_alias.get_or_insert(1);
                        topic
                    } else {
                        "t".into()
                    }
                } else {
                    topic
                };
                let has_id = qos != QoS::AtMostOnce;
                Publish {
                    dup: dup && has_id,
                    qos,
                    retain,
                    topic,
                    packet_id: has_id.then_some(id),
                    properties,
                    payload: Bytes::from(payload),
                }
            },
        )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (opt_string(), user_properties()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn pub_ack(v: ProtocolVersion, t: PacketType) -> impl Strategy<Value = PubAck> {
    let r = if v.is_v5() {
        reason(t).boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    };
    (packet_id(), r, v5_only(v, ack_properties())).prop_map(|(packet_id, reason, properties)| {
        PubAck {
            packet_id,
            reason,
            properties,
        }
    })
}

fn options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, nl, rap, rh)| {
        if v.is_v5() {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        }
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let props =
        (option::of(sub_id()), user_properties()).prop_map(|(sid, up)| SubscribeProperties {
            subscription_identifier: sid,
            user_properties: up,
        });
    (
        packet_id(),
        v5_only(v, props),
        vec((topic_filter(), options(v)), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let r = if v.is_v5() {
        reason(PacketType::SubAck).boxed()
    } else {
        select(vec![
            ReasonCode(0),
            ReasonCode(1),
            ReasonCode(2),
            ReasonCode(0x80),
        ])
        .boxed()
    };
    (packet_id(), v5_only(v, ack_properties()), vec(r, 0..4)).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        },
    )
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let props =
        user_properties().prop_map(|user_properties| UnsubscribeProperties { user_properties });
    (packet_id(), v5_only(v, props), vec(topic_filter(), 1..4)).prop_map(
        |(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        },
    )
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = v5_only(v, vec(reason(PacketType::UnsubAck), 0..4));
    (packet_id(), v5_only(v, ack_properties()), reasons).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        },
    )
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let props = (
        option::of(any::<u32>()),
        opt_string(),
        user_properties(),
        opt_string(),
    )
        .prop_map(|(sei, rs, up, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        });
    let d = (reason(PacketType::Disconnect), props)
        .prop_map(|(reason, properties)| Disconnect { reason, properties });
    v5_only(v, d).prop_map(Packet::Disconnect)
}

fn auth() -> impl Strategy<Value = Packet> {
    let props = (opt_string(), opt_binary(), opt_string(), user_properties()).prop_map(
        |(am, ad, rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        },
    );
    (reason(PacketType::Auth), props)
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any packet valid for `v`.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let acks = prop_oneof![
        pub_ack(v, PacketType::PubAck).prop_map(Packet::PubAck),
        pub_ack(v, PacketType::PubRec).prop_map(Packet::PubRec),
        pub_ack(v, PacketType::PubRel).prop_map(Packet::PubRel),
        pub_ack(v, PacketType::PubComp).prop_map(Packet::PubComp),
    ];
    let common = prop_oneof![
        connect(v),
        connack(v),
        publish(v).prop_map(Packet::Publish),
        acks,
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v),
    ];
    if v.is_v5() {
        prop_oneof![10 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

/// Encodes, checks the length, decodes whole and split at `split`.
fn check_roundtrip(v: ProtocolVersion, packet: &Packet, split: prop::sample::Index) {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf).unwrap();
    assert_eq!(buf.len(), encoded_len(packet, v));
    let bytes = buf.clone().freeze();

    let decoded = decode(&mut buf, u32::MAX, v).unwrap();
    assert_eq!(decoded.as_ref(), Some(packet));
    assert!(buf.is_empty());

    let at = split.index(bytes.len());
    let mut buf = BytesMut::from(&bytes[..at]);
    assert_eq!(decode(&mut buf, u32::MAX, v).unwrap(), None);
    assert_eq!(buf.len(), at);
    buf.extend_from_slice(&bytes[at..]);
    assert_eq!(
        decode(&mut buf, u32::MAX, v).unwrap().as_ref(),
        Some(packet)
    );

    // The size limit is inclusive of the whole packet.
    let size = u32::try_from(bytes.len()).unwrap();
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, size, v).unwrap().is_some());
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, size - 1, v),
        Err(DecodeError::PacketTooLarge {
            size,
            max: size - 1
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_packet_roundtrips((v, packet) in versioned_packet(), split in any::<prop::sample::Index>()) {
        check_roundtrip(v, &packet, split);
    }

    #[test]
    fn publish_roundtrips(
        (v, p) in version().prop_flat_map(|v| (Just(v), publish(v))),
        split in any::<prop::sample::Index>(),
    ) {
        let mut buf = BytesMut::new();
        encode_publish(&p, v, &mut buf).unwrap();
        assert_eq!(buf.len(), publish_len(&p, v));
        let packet = Packet::Publish(p);
        assert_eq!(buf.len(), encoded_len(&packet, v));
        check_roundtrip(v, &packet, split);
    }

    /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes to a packet
    /// that decodes equal (the fuzz target's property, run briefly on every test run).
    #[test]
    fn arbitrary_bytes(v in version(), bytes in vec(any::<u8>(), 0..64)) {
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(packet)) = decode(&mut buf, u32::MAX, v) {
            let mut out = BytesMut::new();
            encode(&packet, v, &mut out).unwrap();
            let again = decode(&mut out, u32::MAX, v).unwrap();
            assert_eq!(again, Some(packet));
        }
    }
}
