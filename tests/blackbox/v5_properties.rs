//! MQTT 5 properties end to end: user properties in order, response topic and correlation
//! data, payload format and content type, message expiry, request problem information.

use bytes::Bytes;
use tern_codec::*;

use crate::support::client::{connect_packet, publish_packet};
use crate::support::{Client, TestBroker};

#[tokio::test]
async fn publish_properties_are_forwarded() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "props-s").await;
    s.subscribe("props/t", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "props-p").await;
    let mut pkt = publish_packet("props/t", "héllo".as_bytes(), QoS::AtMostOnce, false, None);
    pkt.properties.payload_format_indicator = Some(1);
    pkt.properties.content_type = Some(ByteString::from_static("text/plain"));
    pkt.properties.response_topic = Some(ByteString::from_static("reply/here"));
    pkt.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01corr"));
    pkt.properties.message_expiry_interval = Some(3600);
    pkt.properties.user_properties = vec![
        (ByteString::from_static("b"), ByteString::from_static("2")),
        (ByteString::from_static("a"), ByteString::from_static("1")),
        (ByteString::from_static("b"), ByteString::from_static("3")),
    ];
    p.send(Packet::Publish(pkt)).await;
    let got = s.recv_publish().await;
    let pr = &got.properties;
    assert_eq!(pr.payload_format_indicator, Some(1));
    assert_eq!(pr.content_type.as_deref(), Some("text/plain"));
    assert_eq!(pr.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(pr.correlation_data.as_deref(), Some(&b"\x00\x01corr"[..]));
    let expiry = pr.message_expiry_interval.expect("expiry");
    assert!((3599..=3600).contains(&expiry));
    let user: Vec<(&str, &str)> = pr
        .user_properties
        .iter()
        .map(|(k, v)| (&**k, &**v))
        .collect();
    assert_eq!(
        &user[..3],
        &[("b", "2"), ("a", "1"), ("b", "3")],
        "in order, duplicates kept"
    );
}

/// Stamps follow the publisher's user properties by default; `mqtt.stamp_properties = false`
/// forwards them exactly as published, retained and live deliveries alike.
#[tokio::test]
async fn stamp_properties_can_be_turned_off() {
    for stamped in [true, false] {
        let b = TestBroker::with(|c| c.mqtt.stamp_properties = stamped).await;
        let mut p = Client::connect(b.addr, ProtocolVersion::V5, "stamp-p").await;
        let mut pkt = publish_packet("stamp/r", b"kept", QoS::AtLeastOnce, true, Some(1));
        pkt.properties.user_properties =
            vec![(ByteString::from_static("a"), ByteString::from_static("2"))];
        p.send(Packet::Publish(pkt.clone())).await;
        p.recv().await;
        let mut s = Client::connect(b.addr, ProtocolVersion::V5, "stamp-s").await;
        s.subscribe("stamp/+", QoS::AtMostOnce).await;
        let retained = s.recv_publish().await;
        pkt.topic = ByteString::from_static("stamp/live");
        pkt.retain = false;
        pkt.packet_id = Some(2);
        p.send(Packet::Publish(pkt)).await;
        let live = s.recv_publish().await;
        for m in [retained, live] {
            let keys: Vec<&str> = m
                .properties
                .user_properties
                .iter()
                .map(|(k, _)| &**k)
                .collect();
            let want: &[&str] = if stamped {
                &["a", "cid", "timestamp"]
            } else {
                &["a"]
            };
            assert_eq!(keys, want, "stamp_properties = {stamped}, {}", m.topic);
        }
    }
}

#[tokio::test]
async fn v5_properties_reach_v311_subscribers_as_plain_messages() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V311, "mix-s").await;
    s.subscribe("mix/t", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "mix-p").await;
    let mut pkt = publish_packet("mix/t", b"x", QoS::AtMostOnce, false, None);
    pkt.properties.user_properties =
        vec![(ByteString::from_static("k"), ByteString::from_static("v"))];
    p.send(Packet::Publish(pkt)).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"x");
}

#[tokio::test]
async fn invalid_utf8_payload_with_format_indicator_is_refused() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "pfi-s").await;
    s.subscribe("pfi/t", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "pfi-p").await;
    let mut pkt = publish_packet("pfi/t", &[0xff, 0xfe], QoS::AtLeastOnce, false, Some(3));
    pkt.properties.payload_format_indicator = Some(1);
    p.send(Packet::Publish(pkt)).await;
    match p.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, ReasonCode::PAYLOAD_FORMAT_INVALID),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    s.expect_nothing().await;
}

#[tokio::test]
async fn subscription_identifier_from_a_client_publish_is_a_protocol_error() {
    let b = TestBroker::start().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "sid-p").await;
    let mut pkt = publish_packet("sid/t", b"x", QoS::AtMostOnce, false, None);
    pkt.properties.subscription_identifiers.push(5);
    p.send(Packet::Publish(pkt)).await;
    assert_eq!(
        p.expect_closed().await.expect("DISCONNECT").reason,
        ReasonCode::PROTOCOL_ERROR
    );
}

#[tokio::test]
async fn request_problem_information_false_omits_reason_strings() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(ProtocolVersion::V5, "rpi", true);
    c.properties.request_problem_information = Some(false);
    let (mut conn, _) = Client::connect_with(b.addr, c).await;
    let mut pkt = publish_packet("rpi/t", b"x", QoS::AtMostOnce, false, None);
    pkt.properties.subscription_identifiers.push(1);
    conn.send(Packet::Publish(pkt)).await;
    let d = conn.expect_closed().await.expect("DISCONNECT");
    assert!(d.properties.reason_string.is_none());

    let (mut conn, _) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "rpi2", true)).await;
    let mut pkt = publish_packet("rpi/t", b"x", QoS::AtMostOnce, false, None);
    pkt.properties.subscription_identifiers.push(1);
    conn.send(Packet::Publish(pkt)).await;
    let d = conn.expect_closed().await.expect("DISCONNECT");
    assert!(d.properties.reason_string.is_some());
}

#[tokio::test]
async fn request_response_correlation_round_trip() {
    let b = TestBroker::start().await;
    let mut responder = Client::connect(b.addr, ProtocolVersion::V5, "resp").await;
    responder.subscribe("svc/req", QoS::AtMostOnce).await;
    let mut requester = Client::connect(b.addr, ProtocolVersion::V5, "req").await;
    requester.subscribe("svc/resp/req", QoS::AtMostOnce).await;
    let mut pkt = publish_packet("svc/req", b"ping", QoS::AtMostOnce, false, None);
    pkt.properties.response_topic = Some(ByteString::from_static("svc/resp/req"));
    pkt.properties.correlation_data = Some(Bytes::from_static(b"42"));
    requester.send(Packet::Publish(pkt)).await;
    let req = responder.recv_publish().await;
    let mut answer = publish_packet(
        req.properties.response_topic.as_deref().unwrap(),
        b"pong",
        QoS::AtMostOnce,
        false,
        None,
    );
    answer.properties.correlation_data = req.properties.correlation_data.clone();
    responder.send(Packet::Publish(answer)).await;
    let resp = requester.recv_publish().await;
    assert_eq!(
        resp.properties.correlation_data.as_deref(),
        Some(&b"42"[..])
    );
}
