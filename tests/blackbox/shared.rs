//! Shared subscriptions: one member per message, random or sticky.

use std::collections::HashMap;

use tern_codec::*;

use crate::support::client::Read;
use crate::support::{Client, QUIET, TestBroker};

async fn drain(c: &mut Client) -> Vec<Publish> {
    let mut out = Vec::new();
    while let Read::Packet(Packet::Publish(p)) = c.read(QUIET).await {
        out.push(p);
    }
    out
}

#[tokio::test]
async fn each_message_goes_to_exactly_one_member() {
    let b = TestBroker::start().await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut members = Vec::new();
        for i in 0..3 {
            let mut m = Client::connect(b.addr, v, &format!("sh-{v}-{i}")).await;
            assert_eq!(
                m.subscribe("$share/g/sh/+", QoS::AtMostOnce).await,
                ReasonCode::GRANTED_QOS_0
            );
            members.push(m);
        }
        let mut plain = Client::connect(b.addr, v, &format!("sh-plain-{v}")).await;
        plain.subscribe("sh/+", QoS::AtMostOnce).await;
        let mut p = Client::connect(b.addr, v, &format!("sh-p-{v}")).await;
        for i in 0..60 {
            p.publish(&format!("sh/{i}"), b"x", QoS::AtMostOnce, false)
                .await;
        }
        p.ping().await;
        let mut total = 0;
        let mut per_member = Vec::new();
        for m in &mut members {
            let got = drain(m).await.len();
            per_member.push(got);
            total += got;
        }
        assert_eq!(
            total, 60,
            "every message to exactly one member: {per_member:?}"
        );
        assert!(
            per_member.iter().all(|&n| n > 0),
            "random choice spreads: {per_member:?}"
        );
        assert_eq!(
            drain(&mut plain).await.len(),
            60,
            "non-shared subscribers get everything"
        );
    }
}

#[tokio::test]
async fn sticky_groups_send_the_same_topic_prefix_to_the_same_member() {
    let b = TestBroker::start().await;
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = Client::connect(b.addr, ProtocolVersion::V5, &format!("sticky-{i}")).await;
        m.subscribe("$share/g:2/dev/#", QoS::AtMostOnce).await;
        members.push(m);
    }
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "sticky-p").await;
    for round in 0..5 {
        for dev in 0..6 {
            p.publish(
                &format!("dev/{dev}/telemetry/{round}"),
                b"x",
                QoS::AtMostOnce,
                false,
            )
            .await;
        }
    }
    p.ping().await;
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for (i, m) in members.iter_mut().enumerate() {
        for msg in drain(m).await {
            total += 1;
            let prefix = msg.topic.split('/').take(2).collect::<Vec<_>>().join("/");
            if let Some(prev) = owner.insert(prefix.clone(), i) {
                assert_eq!(prev, i, "{prefix} went to two members");
            }
        }
    }
    assert_eq!(total, 30);
    assert_eq!(owner.len(), 6);
}

#[tokio::test]
async fn unsubscribe_by_the_full_shared_filter() {
    let b = TestBroker::start().await;
    let mut m = Client::connect(b.addr, ProtocolVersion::V5, "sh-unsub").await;
    m.subscribe("$share/g/u/t", QoS::AtMostOnce).await;
    let id = m.next_id();
    m.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: id,
        properties: Default::default(),
        filters: vec![ByteString::from_static("$share/g/u/t")],
    }))
    .await;
    match m.recv().await {
        Packet::UnsubAck(a) => assert_eq!(a.reasons, vec![ReasonCode::SUCCESS]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "sh-unsub-p").await;
    p.publish("u/t", b"x", QoS::AtMostOnce, false).await;
    m.expect_nothing().await;
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let b = TestBroker::start().await;
    let mut m = Client::connect(b.addr, ProtocolVersion::V5, "sh-nl").await;
    let id = m.next_id();
    m.send(Packet::Subscribe(Subscribe {
        packet_id: id,
        properties: Default::default(),
        filters: vec![(
            ByteString::from_static("$share/g/t"),
            SubscriptionOptions {
                no_local: true,
                ..Default::default()
            },
        )],
    }))
    .await;
    assert_eq!(
        m.expect_closed().await.expect("DISCONNECT").reason,
        ReasonCode::PROTOCOL_ERROR
    );
}

#[tokio::test]
async fn shared_subscriptions_get_no_retained_messages() {
    let b = TestBroker::start().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "sh-ret-p").await;
    p.publish("shr/t", b"r", QoS::AtMostOnce, true).await;
    p.ping().await;
    let mut m = Client::connect(b.addr, ProtocolVersion::V5, "sh-ret").await;
    m.subscribe("$share/g/shr/t", QoS::AtMostOnce).await;
    m.expect_nothing().await;
}
