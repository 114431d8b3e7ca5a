//! Sessions over the wire: clean and persistent, queued messages while offline, session
//! present, expiry 0 and the DISCONNECT rules. Expiry over time, and the expiry of queued
//! messages, are tested in virtual time: `crates/tern-broker/tests/core/sessions.rs`.

use tern_codec::*;

use crate::support::client::connect_packet;
use crate::support::{Client, TestBroker};

fn persistent(v: ProtocolVersion, id: &str, expiry: u32) -> Connect {
    let mut c = connect_packet(v, id, false);
    if v == ProtocolVersion::V5 {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

#[tokio::test]
async fn persistent_session_gets_queued_qos1_and_qos2_after_reconnecting() {
    let b = TestBroker::start().await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let id = format!("persist-{v}");
        let (mut s, ack) = Client::connect_with(b.addr, persistent(v, &id, 300)).await;
        assert!(!ack.session_present);
        s.subscribe("p/q1", QoS::AtLeastOnce).await;
        s.subscribe("p/q2", QoS::ExactlyOnce).await;
        s.disconnect().await;

        let mut p = Client::connect(b.addr, v, &format!("persist-pub-{v}")).await;
        p.publish("p/q1", b"one", QoS::AtLeastOnce, false).await;
        p.publish("p/q2", b"two", QoS::ExactlyOnce, false).await;
        p.publish("p/q1", b"zero", QoS::AtMostOnce, false).await; // not queued for offline sessions

        let (mut s, ack) = Client::connect_with(b.addr, persistent(v, &id, 300)).await;
        assert!(ack.session_present);
        let a = s.recv_publish().await;
        assert_eq!((&a.payload[..], a.qos), (&b"one"[..], QoS::AtLeastOnce));
        s.ack(&a).await;
        let c = s.recv_publish().await;
        assert_eq!((&c.payload[..], c.qos), (&b"two"[..], QoS::ExactlyOnce));
        s.ack(&c).await;
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn clean_start_discards_the_old_session() {
    let b = TestBroker::start().await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let id = format!("clean-{v}");
        let (mut s, _) = Client::connect_with(b.addr, persistent(v, &id, 300)).await;
        s.subscribe("c/t", QoS::AtLeastOnce).await;
        s.disconnect().await;
        let (mut s, ack) = Client::connect_with(b.addr, connect_packet(v, &id, true)).await;
        assert!(!ack.session_present);
        let mut p = Client::connect(b.addr, v, &format!("clean-pub-{v}")).await;
        p.publish("c/t", b"x", QoS::AtLeastOnce, false).await;
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn v5_session_expiry_zero_ends_at_disconnect() {
    let b = TestBroker::start().await;
    let (mut s, _) = Client::connect_with(b.addr, persistent(ProtocolVersion::V5, "zero", 0)).await;
    s.subscribe("z/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (_s, ack) = Client::connect_with(b.addr, persistent(ProtocolVersion::V5, "zero", 0)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn disconnect_cannot_set_expiry_after_zero() {
    let b = TestBroker::start().await;
    let (mut s, _) =
        Client::connect_with(b.addr, persistent(ProtocolVersion::V5, "noextend", 0)).await;
    s.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
    }))
    .await;
    let d = s.expect_closed().await.expect("DISCONNECT");
    assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
}
