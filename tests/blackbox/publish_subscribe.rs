//! Publish/subscribe: wildcards, `$` topics, comma alternatives, no local, overlapping
//! subscriptions with identifiers, unsubscribe.

use tern_codec::*;

use crate::support::client::user_property;
use crate::support::{Client, TestBroker};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

#[tokio::test]
async fn wildcards_route_to_matching_subscribers_only() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let mut plus = Client::connect(b.addr, v, &format!("plus-{v}")).await;
        let mut hash = Client::connect(b.addr, v, &format!("hash-{v}")).await;
        let mut pubr = Client::connect(b.addr, v, &format!("pub-{v}")).await;
        assert_eq!(
            plus.subscribe("a/+/c", QoS::AtMostOnce).await,
            ReasonCode::GRANTED_QOS_0
        );
        assert_eq!(
            hash.subscribe("a/#", QoS::AtMostOnce).await,
            ReasonCode::GRANTED_QOS_0
        );
        pubr.publish("a/b/c", b"1", QoS::AtMostOnce, false).await;
        pubr.publish("a/b/d", b"2", QoS::AtMostOnce, false).await;
        pubr.publish("a", b"3", QoS::AtMostOnce, false).await;
        let p = plus.recv_publish().await;
        assert_eq!((&*p.topic, &p.payload[..]), ("a/b/c", &b"1"[..]));
        plus.expect_nothing().await;
        for (t, pl) in [("a/b/c", b"1"), ("a/b/d", b"2"), ("a", b"3")] {
            let p = hash.recv_publish().await;
            assert_eq!((&*p.topic, &p.payload[..]), (t, &pl[..]));
        }
    }
}

#[tokio::test]
async fn dollar_topics_need_a_dollar_filter() {
    let b = TestBroker::start().await;
    let mut all = Client::connect(b.addr, ProtocolVersion::V5, "all").await;
    let mut sys = Client::connect(b.addr, ProtocolVersion::V5, "sys").await;
    // Retain handling 2: the broker's retained state topics are not the point here.
    let quiet = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..Default::default()
    };
    all.subscribe_with(vec![("#", quiet), ("+/x", quiet)], None)
        .await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "p").await;
    p.publish("$SYS/x", b"s", QoS::AtMostOnce, false).await;
    assert_eq!(&*sys.recv_publish().await.topic, "$SYS/x");
    // `#` does see the broker's own session events (flespi/log/...), but never `$SYS/x`.
    while let crate::support::client::Read::Packet(Packet::Publish(m)) =
        all.read(crate::support::QUIET).await
    {
        assert!(
            m.topic.starts_with("flespi/log/mqtt/sessions/"),
            "unexpected {}",
            m.topic
        );
    }
}

#[tokio::test]
async fn comma_alternatives_match_each_alternative_and_the_literal_level() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let mut s = Client::connect(b.addr, v, &format!("s-{v}")).await;
        assert_eq!(
            s.subscribe("gw/devices/1,2,3/connected", QoS::AtMostOnce)
                .await,
            ReasonCode::GRANTED_QOS_0
        );
        let mut p = Client::connect(b.addr, v, &format!("p-{v}")).await;
        for id in ["1", "4", "3", "1,2,3"] {
            p.publish(
                &format!("gw/devices/{id}/connected"),
                id.as_bytes(),
                QoS::AtMostOnce,
                false,
            )
            .await;
        }
        for id in ["1", "3", "1,2,3"] {
            assert_eq!(&s.recv_publish().await.payload[..], id.as_bytes());
        }
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_every_identifier() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "overlap").await;
    let opts = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    s.subscribe_with(vec![("t/+", opts(QoS::AtMostOnce))], Some(1))
        .await;
    s.subscribe_with(vec![("t/#", opts(QoS::AtLeastOnce))], Some(2))
        .await;
    s.subscribe_with(vec![("t/x", opts(QoS::AtMostOnce))], None)
        .await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "overlap-pub").await;
    p.publish("t/x", b"hello", QoS::AtLeastOnce, false).await;
    let got = s.recv_publish().await;
    let mut ids = got.properties.subscription_identifiers.to_vec();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(got.qos, QoS::AtLeastOnce, "the highest granted QoS");
    s.ack(&got).await;
    s.expect_nothing().await;
}

#[tokio::test]
async fn v311_overlapping_subscriptions_deliver_once() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V311, "overlap311").await;
    s.subscribe("t/+", QoS::AtMostOnce).await;
    s.subscribe("t/#", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V311, "overlap311-pub").await;
    p.publish("t/x", b"once", QoS::AtMostOnce, false).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"once");
    s.expect_nothing().await;
}

#[tokio::test]
async fn no_local_skips_own_messages() {
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.addr, ProtocolVersion::V5, "nl").await;
    let opts = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: true,
        ..Default::default()
    };
    c.subscribe_with(vec![("nl/t", opts)], None).await;
    c.publish("nl/t", b"mine", QoS::AtMostOnce, false).await;
    c.expect_nothing().await;
    let mut other = Client::connect(b.addr, ProtocolVersion::V5, "nl-other").await;
    other
        .publish("nl/t", b"theirs", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_unknown_filters() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let mut s = Client::connect(b.addr, v, &format!("u-{v}")).await;
        s.subscribe("u/t", QoS::AtMostOnce).await;
        let id = s.next_id();
        s.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: id,
            properties: Default::default(),
            filters: vec![
                ByteString::from_static("u/t"),
                ByteString::from_static("never"),
            ],
        }))
        .await;
        match s.recv().await {
            Packet::UnsubAck(a) => {
                assert_eq!(a.packet_id, id);
                if v == ProtocolVersion::V5 {
                    assert_eq!(
                        a.reasons,
                        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
                    );
                }
            }
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
        let mut p = Client::connect(b.addr, v, &format!("u-pub-{v}")).await;
        p.publish("u/t", b"x", QoS::AtMostOnce, false).await;
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn invalid_filters_are_refused_per_filter() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let mut s = Client::connect(b.addr, v, &format!("bad-{v}")).await;
        let o = SubscriptionOptions::default();
        let ack = s
            .subscribe_with(vec![("a/#/b", o), ("ok/+", o), ("a+", o)], None)
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
        s.ping().await;
    }
}

#[tokio::test]
async fn v5_deliveries_carry_cid_and_timestamp() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "stamp").await;
    s.subscribe("stamp/#", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "stamp-pub").await;
    let mut last = 0.0f64;
    for i in 0..50 {
        p.publish("stamp/t", format!("{i}").as_bytes(), QoS::AtMostOnce, false)
            .await;
    }
    for _ in 0..50 {
        let m = s.recv_publish().await;
        assert!(user_property(&m.properties.user_properties, "cid").is_some());
        let ts: f64 = user_property(&m.properties.user_properties, "timestamp")
            .unwrap()
            .parse()
            .unwrap();
        assert!(ts > last, "timestamps strictly increase");
        last = ts;
    }
}
