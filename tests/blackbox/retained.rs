//! Retained messages: stored, replaced, deleted by an empty payload, sent on subscribe with the
//! retain flag, retain handling 0/1/2, retain as published. Expiry is tested in virtual time:
//! `crates/tern-broker/tests/core/retained.rs`.

use tern_codec::*;

use crate::support::client::publish_packet;
use crate::support::{Client, TestBroker};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

#[tokio::test]
async fn retained_message_is_sent_on_subscribe_and_deleted_by_empty_payload() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let topic = format!("ret/{v}");
        let mut p = Client::connect(b.addr, v, &format!("ret-p-{v}")).await;
        p.publish(&topic, b"first", QoS::AtLeastOnce, true).await;
        p.publish(&topic, b"second", QoS::AtLeastOnce, true).await;
        let mut s = Client::connect(b.addr, v, &format!("ret-s-{v}")).await;
        s.subscribe(&format!("ret/{v}"), QoS::AtLeastOnce).await;
        let got = s.recv_publish().await;
        assert!(got.retain);
        assert_eq!(&got.payload[..], b"second");
        s.ack(&got).await;
        s.expect_nothing().await;

        // Live deliveries to existing subscribers carry retain 0.
        p.publish(&topic, b"live", QoS::AtMostOnce, true).await;
        let live = s.recv_publish().await;
        assert!(!live.retain);

        // Delete, then a new subscriber gets nothing.
        p.publish(&topic, b"", QoS::AtMostOnce, true).await;
        let _ = s.recv_publish().await; // the empty message is forwarded to current subscribers
        let mut s2 = Client::connect(b.addr, v, &format!("ret-s2-{v}")).await;
        s2.subscribe(&topic, QoS::AtMostOnce).await;
        s2.expect_nothing().await;
    }
}

#[tokio::test]
async fn wildcard_subscribe_gets_every_matching_retained_message() {
    let b = TestBroker::start().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "wr-p").await;
    for t in ["w/a", "w/b", "w/c/d", "x/a"] {
        p.publish(t, t.as_bytes(), QoS::AtMostOnce, true).await;
    }
    p.ping().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "wr-s").await;
    s.subscribe("w/#", QoS::AtMostOnce).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        topics.push(s.recv_publish().await.topic.to_string());
    }
    topics.sort();
    assert_eq!(topics, ["w/a", "w/b", "w/c/d"]);
    s.expect_nothing().await;
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    let b = TestBroker::start().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "rh-p").await;
    p.publish("rh/t", b"r", QoS::AtMostOnce, true).await;
    p.ping().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "rh-s").await;
    let o = |rh| SubscriptionOptions {
        retain_handling: rh,
        ..Default::default()
    };
    // 2: never.
    s.subscribe_with(vec![("rh/t", o(RetainHandling::DoNotSend))], None)
        .await;
    s.expect_nothing().await;
    // 1: only if new; the subscription exists now.
    s.subscribe_with(vec![("rh/t", o(RetainHandling::SendIfNew))], None)
        .await;
    s.expect_nothing().await;
    // 1 on a new subscription: sent.
    s.subscribe_with(vec![("rh/+", o(RetainHandling::SendIfNew))], None)
        .await;
    assert!(s.recv_publish().await.retain);
    // 0: always.
    s.subscribe_with(vec![("rh/+", o(RetainHandling::SendAtSubscribe))], None)
        .await;
    assert!(s.recv_publish().await.retain);
}

#[tokio::test]
async fn retain_as_published_keeps_the_flag_on_live_deliveries() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "rap-s").await;
    let o = SubscriptionOptions {
        retain_as_published: true,
        ..Default::default()
    };
    s.subscribe_with(vec![("rap/t", o)], None).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "rap-p").await;
    p.publish("rap/t", b"x", QoS::AtMostOnce, true).await;
    assert!(s.recv_publish().await.retain);
    p.publish("rap/t", b"y", QoS::AtMostOnce, false).await;
    assert!(!s.recv_publish().await.retain);
}

#[tokio::test]
async fn retained_messages_keep_their_v5_properties() {
    let b = TestBroker::start().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "rp-p").await;
    let mut pkt = publish_packet("rp/t", b"{}", QoS::AtMostOnce, true, None);
    pkt.properties.content_type = Some(ByteString::from_static("application/json"));
    pkt.properties.user_properties =
        vec![(ByteString::from_static("k"), ByteString::from_static("v"))];
    p.send(Packet::Publish(pkt)).await;
    p.ping().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "rp-s").await;
    s.subscribe("rp/t", QoS::AtMostOnce).await;
    let got = s.recv_publish().await;
    assert_eq!(
        got.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        got.properties.user_properties[0],
        (ByteString::from_static("k"), ByteString::from_static("v"))
    );
}
