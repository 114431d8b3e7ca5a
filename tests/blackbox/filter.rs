//! `$filter/` subscriptions (docs/flespi.md#subscribing-and-filter, docs/expressions.md): payload
//! and message expressions, cid, modified_since, retained messages, shared groups, bad expressions,
//! unsubscribe.

use tern_codec::*;

use crate::support::client::{Read, publish_packet};
use crate::support::{Client, QUIET, TestBroker};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

async fn payloads(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    while let Read::Packet(Packet::Publish(p)) = c.read(QUIET).await {
        out.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    out
}

#[tokio::test]
async fn payload_filter_on_telemetry() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let mut s = Client::connect(b.addr, v, &format!("pf-{v}")).await;
        let filter = "$filter/payload=position.speed%3E60/gw/devices/+";
        assert_eq!(
            s.subscribe(filter, QoS::AtMostOnce).await,
            ReasonCode::GRANTED_QOS_0
        );
        let mut p = Client::connect(b.addr, v, &format!("pf-p-{v}")).await;
        p.publish(
            "gw/devices/1",
            br#"{"position.speed": 75}"#,
            QoS::AtMostOnce,
            false,
        )
        .await;
        p.publish(
            "gw/devices/2",
            br#"{"position": {"speed": 40}}"#,
            QoS::AtMostOnce,
            false,
        )
        .await;
        p.publish(
            "gw/devices/3",
            br#"{"position": {"speed": 90}}"#,
            QoS::AtMostOnce,
            false,
        )
        .await;
        p.publish("gw/devices/4", b"not json", QoS::AtMostOnce, false)
            .await;
        let m = s.recv_publish().await;
        assert_eq!(&*m.topic, "gw/devices/1", "deliveries carry the real topic");
        assert_eq!(&s.recv_publish().await.topic[..], "gw/devices/3");
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn message_filter_with_topics_and_tonumber() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "mf").await;
    let filter = "$filter/message=(topics%5B1%5D%3D%3D%22kitchen%22)%26%26tonumber(payload)%3C20/temperature/+";
    assert_eq!(
        s.subscribe(filter, QoS::AtMostOnce).await,
        ReasonCode::GRANTED_QOS_0
    );
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "mf-p").await;
    for (room, t) in [
        ("kitchen", "18"),
        ("kitchen", "25"),
        ("hall", "15"),
        ("kitchen", "19.5"),
    ] {
        p.publish(
            &format!("temperature/{room}"),
            t.as_bytes(),
            QoS::AtMostOnce,
            false,
        )
        .await;
    }
    assert_eq!(payloads(&mut s).await, vec!["18", "19.5"]);
}

#[tokio::test]
async fn bare_number_payload_and_user_properties() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "bn").await;
    s.subscribe(
        "$filter/payload=tonumber(payload)%3E14/battery/+",
        QoS::AtMostOnce,
    )
    .await;
    let mut up = Client::connect(b.addr, ProtocolVersion::V5, "up").await;
    up.subscribe(
        "$filter/message=user_properties.unit%3D%3D%22V%22/battery/+",
        QoS::AtMostOnce,
    )
    .await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "bn-p").await;
    p.publish("battery/1", b"13.9", QoS::AtMostOnce, false)
        .await;
    p.publish("battery/2", b"14.2", QoS::AtMostOnce, false)
        .await;
    let mut with_unit = publish_packet("battery/3", b"12", QoS::AtMostOnce, false, None);
    with_unit.properties.user_properties = vec![(
        ByteString::from_static("unit"),
        ByteString::from_static("V"),
    )];
    p.send(Packet::Publish(with_unit)).await;
    assert_eq!(payloads(&mut s).await, vec!["14.2"]);
    assert_eq!(payloads(&mut up).await, vec!["12"]);
}

#[tokio::test]
async fn cid_and_modified_since() {
    let b = TestBroker::start().await;
    // Anonymous clients publish as the anonymous account, a sub-account of the top (1).
    let anon = b
        .server()
        .directory()
        .anonymous()
        .expect("anonymous account");
    let mut own = Client::connect(b.addr, ProtocolVersion::V311, "cid-own").await;
    own.subscribe(&format!("$filter/cid={anon}/c/t"), QoS::AtMostOnce)
        .await;
    let mut other = Client::connect(b.addr, ProtocolVersion::V311, "cid-other").await;
    other.subscribe("$filter/cid=1/c/t", QoS::AtMostOnce).await;
    let mut future = Client::connect(b.addr, ProtocolVersion::V311, "ms-future").await;
    future
        .subscribe("$filter/modified_since=4000000000/c/t", QoS::AtMostOnce)
        .await;
    let mut past = Client::connect(b.addr, ProtocolVersion::V311, "ms-past").await;
    past.subscribe("$filter/modified_since%3E1700000000/c/t", QoS::AtMostOnce)
        .await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V311, "cid-p").await;
    p.publish("c/t", b"x", QoS::AtMostOnce, false).await;
    assert_eq!(payloads(&mut own).await, vec!["x"]);
    assert!(payloads(&mut other).await.is_empty());
    assert!(payloads(&mut future).await.is_empty());
    assert_eq!(payloads(&mut past).await, vec!["x"]);
}

#[tokio::test]
async fn retained_messages_pass_the_same_filter() {
    let b = TestBroker::start().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "rf-p").await;
    for (dev, speed) in [(1, 10), (2, 80), (3, 95)] {
        p.publish(
            &format!("dev/{dev}/state"),
            format!(r#"{{"speed": {speed}}}"#).as_bytes(),
            QoS::AtMostOnce,
            true,
        )
        .await;
    }
    p.ping().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "rf-s").await;
    s.subscribe("$filter/payload=speed%3E50/dev/+/state", QoS::AtMostOnce)
        .await;
    let mut got = Vec::new();
    while let Read::Packet(Packet::Publish(m)) = s.read(QUIET).await {
        assert!(m.retain);
        got.push(m.topic.to_string());
    }
    got.sort();
    assert_eq!(got, vec!["dev/2/state", "dev/3/state"]);
}

#[tokio::test]
async fn shared_group_with_a_filter() {
    let b = TestBroker::start().await;
    let filter = "$share/workers/$filter/payload=level%3E%3D3/alerts/#";
    let mut members = Vec::new();
    for i in 0..2 {
        let mut m = Client::connect(b.addr, ProtocolVersion::V5, &format!("sf-{i}")).await;
        assert_eq!(
            m.subscribe(filter, QoS::AtMostOnce).await,
            ReasonCode::GRANTED_QOS_0
        );
        members.push(m);
    }
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "sf-p").await;
    for level in 0..10 {
        p.publish(
            "alerts/x",
            format!(r#"{{"level": {level}}}"#).as_bytes(),
            QoS::AtMostOnce,
            false,
        )
        .await;
    }
    let mut total = 0;
    for m in &mut members {
        total += payloads(m).await.len();
    }
    assert_eq!(total, 7, "levels 3..=9, each to exactly one member");
}

#[tokio::test]
async fn bad_expression_is_refused_and_the_rest_of_the_subscribe_succeeds() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let mut s = Client::connect(b.addr, v, &format!("bad-{v}")).await;
        let o = SubscriptionOptions::default();
        let ack = s
            .subscribe_with(
                vec![
                    ("$filter/payload=(speed%3E/x/+", o),
                    ("x/ok", o),
                    ("$filter/nonsense=1/x/+", o),
                ],
                None,
            )
            .await;
        let failure = if v == ProtocolVersion::V5 {
            ReasonCode::TOPIC_FILTER_INVALID
        } else {
            ReasonCode(0x80)
        };
        assert_eq!(
            ack.reasons,
            vec![failure, ReasonCode::GRANTED_QOS_0, failure]
        );
        let mut p = Client::connect(b.addr, v, &format!("bad-p-{v}")).await;
        p.publish("x/ok", b"fine", QoS::AtMostOnce, false).await;
        assert_eq!(payloads(&mut s).await, vec!["fine"]);
    }
}

#[tokio::test]
async fn unsubscribe_by_the_full_string_and_two_filters_on_one_topic() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "uf").await;
    let low = "$filter/payload=v%3C10/u/t";
    let high = "$filter/payload=v%3E100/u/t";
    s.subscribe_with(vec![(low, SubscriptionOptions::default())], Some(1))
        .await;
    s.subscribe_with(vec![(high, SubscriptionOptions::default())], Some(2))
        .await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "uf-p").await;
    p.publish("u/t", br#"{"v": 5}"#, QoS::AtMostOnce, false)
        .await;
    p.publish("u/t", br#"{"v": 500}"#, QoS::AtMostOnce, false)
        .await;
    p.publish("u/t", br#"{"v": 50}"#, QoS::AtMostOnce, false)
        .await;
    let a = s.recv_publish().await;
    assert_eq!(a.properties.subscription_identifiers.to_vec(), vec![1]);
    let c = s.recv_publish().await;
    assert_eq!(c.properties.subscription_identifiers.to_vec(), vec![2]);
    s.expect_nothing().await;

    let id = s.next_id();
    s.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: id,
        properties: Default::default(),
        filters: vec![ByteString::from(low)],
    }))
    .await;
    assert!(
        matches!(s.recv().await, Packet::UnsubAck(a) if a.reasons == vec![ReasonCode::SUCCESS])
    );
    p.publish("u/t", br#"{"v": 5}"#, QoS::AtMostOnce, false)
        .await;
    p.publish("u/t", br#"{"v": 500}"#, QoS::AtMostOnce, false)
        .await;
    assert_eq!(payloads(&mut s).await, vec![r#"{"v": 500}"#]);
}

#[tokio::test]
async fn cid_user_property_restricts_the_subscription() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "cidp").await;
    let id = s.next_id();
    s.send(Packet::Subscribe(Subscribe {
        packet_id: id,
        properties: SubscribeProperties {
            subscription_identifier: None,
            user_properties: vec![(
                ByteString::from_static("cid"),
                ByteString::from_static("999"),
            )],
        },
        filters: vec![(
            ByteString::from_static("cp/t"),
            SubscriptionOptions::default(),
        )],
    }))
    .await;
    assert!(
        matches!(s.recv().await, Packet::SubAck(a) if a.reasons == vec![ReasonCode::GRANTED_QOS_0])
    );
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "cidp-p").await;
    p.publish("cp/t", b"from account 1", QoS::AtMostOnce, false)
        .await;
    s.expect_nothing().await;
}
