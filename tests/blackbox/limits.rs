//! Limits: max connections, client id length, subscriptions per session.

use tern_codec::*;

use crate::support::client::{Read, connect_packet};
use crate::support::{Client, TestBroker};

#[tokio::test]
async fn max_connections_refuses_the_extra_one() {
    let b = TestBroker::with(|c| c.listeners.max_connections = 3).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(Client::connect(b.addr, ProtocolVersion::V5, &format!("mc-{i}")).await);
    }
    let mut extra = Client::open(b.addr, ProtocolVersion::V5).await;
    extra
        .send(Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V5,
            "mc-extra",
            true,
        ))))
        .await;
    match extra.read(crate::support::WAIT).await {
        Read::Closed => {}
        other => panic!("expected the extra connection to be closed, got {other:?}"),
    }
    for c in &mut held {
        c.ping().await;
    }
    drop(held.pop());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut again = Client::connect(b.addr, ProtocolVersion::V5, "mc-again").await;
    again.ping().await;
}

#[tokio::test]
async fn overlong_client_id_is_refused() {
    let b = TestBroker::with(|c| c.mqtt.max_client_id_len = 16).await;
    let (mut c, ack) = Client::connect_with(
        b.addr,
        connect_packet(ProtocolVersion::V5, &"x".repeat(17), true),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    c.expect_closed().await;
}

#[tokio::test]
async fn subscriptions_per_session_are_capped() {
    let b = TestBroker::with(|c| c.session.max_subscriptions = 2).await;
    let mut c = Client::connect(b.addr, ProtocolVersion::V5, "subcap").await;
    assert_eq!(
        c.subscribe("a", QoS::AtMostOnce).await,
        ReasonCode::GRANTED_QOS_0
    );
    assert_eq!(
        c.subscribe("b", QoS::AtMostOnce).await,
        ReasonCode::GRANTED_QOS_0
    );
    assert_eq!(
        c.subscribe("c", QoS::AtMostOnce).await,
        ReasonCode::QUOTA_EXCEEDED
    );
    // Re-subscribing to an existing filter is not a new subscription.
    assert_eq!(
        c.subscribe("a", QoS::AtLeastOnce).await,
        ReasonCode::GRANTED_QOS_1
    );
}
