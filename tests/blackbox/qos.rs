//! QoS 0/1/2 flows in both directions, downgrade to the granted QoS, duplicates, max_qos = 1.

use tern_codec::*;

use crate::support::client::publish_packet;
use crate::support::{Client, TestBroker};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

#[tokio::test]
async fn every_qos_pair_is_delivered_at_the_lower_qos() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut s = Client::connect(b.addr, v, &format!("s-{v}-{sub_qos:?}")).await;
            assert_eq!(s.subscribe("q/t", sub_qos).await, ReasonCode(sub_qos as u8));
            let mut p = Client::connect(b.addr, v, &format!("p-{v}-{sub_qos:?}")).await;
            for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                p.publish("q/t", b"m", pub_qos, false).await;
                let got = s.recv_publish().await;
                assert_eq!(
                    got.qos,
                    pub_qos.min(sub_qos),
                    "{v} pub {pub_qos:?} sub {sub_qos:?}"
                );
                assert_eq!(got.packet_id.is_some(), got.qos != QoS::AtMostOnce);
                s.ack(&got).await;
            }
            s.disconnect().await;
        }
    }
}

#[tokio::test]
async fn qos2_duplicate_publish_is_delivered_once() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let mut s = Client::connect(b.addr, v, &format!("dup-s-{v}")).await;
        s.subscribe("dup/t", QoS::ExactlyOnce).await;
        let mut p = Client::connect(b.addr, v, &format!("dup-p-{v}")).await;
        let pkt = publish_packet("dup/t", b"once", QoS::ExactlyOnce, false, Some(7));
        p.send(Packet::Publish(pkt.clone())).await;
        assert!(matches!(p.recv().await, Packet::PubRec(a) if a.packet_id == 7));
        // The client did not see PUBREC (say) and re-sends with DUP.
        let mut again = pkt;
        again.dup = true;
        p.send(Packet::Publish(again)).await;
        assert!(matches!(p.recv().await, Packet::PubRec(a) if a.packet_id == 7));
        p.send(Packet::PubRel(PubAck::new(7))).await;
        assert!(matches!(p.recv().await, Packet::PubComp(a) if a.packet_id == 7));
        let got = s.recv_publish().await;
        s.ack(&got).await;
        s.expect_nothing().await;
    }
}

#[tokio::test]
async fn pubrel_for_unknown_id_gets_pubcomp_packet_identifier_not_found_in_v5() {
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.addr, ProtocolVersion::V5, "rel").await;
    c.send(Packet::PubRel(PubAck::new(99))).await;
    match c.recv().await {
        Packet::PubComp(a) => assert_eq!(a.reason, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

#[tokio::test]
async fn max_qos_1_behaves_as_flespi() {
    let b = TestBroker::with(|c| c.mqtt.max_qos = 1).await;
    let (mut s, ack) = Client::connect_with(
        b.addr,
        crate::support::client::connect_packet(ProtocolVersion::V5, "mq-s", true),
    )
    .await;
    assert_eq!(ack.properties.maximum_qos, Some(1));
    assert_eq!(
        s.subscribe("mq/t", QoS::ExactlyOnce).await,
        ReasonCode::GRANTED_QOS_1
    );
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "mq-p").await;
    // An inbound QoS 2 still completes its handshake ...
    p.publish("mq/t", b"two", QoS::ExactlyOnce, false).await;
    // ... and is delivered at QoS 1.
    let got = s.recv_publish().await;
    assert_eq!(got.qos, QoS::AtLeastOnce);
    s.ack(&got).await;
}

#[tokio::test]
async fn qos1_is_redelivered_until_acknowledged_across_reconnects() {
    let b = TestBroker::start().await;
    for v in VERSIONS {
        let id = format!("redeliver-{v}");
        let mut connect = crate::support::client::connect_packet(v, &id, false);
        if v == ProtocolVersion::V5 {
            connect.properties.session_expiry_interval = Some(60);
        }
        let (mut s, _) = Client::connect_with(b.addr, connect.clone()).await;
        s.subscribe("r/t", QoS::AtLeastOnce).await;
        let mut p = Client::connect(b.addr, v, &format!("redeliver-p-{v}")).await;
        p.publish("r/t", b"keep", QoS::AtLeastOnce, false).await;
        let first = s.recv_publish().await;
        assert!(!first.dup);
        drop(s); // no PUBACK
        let (mut s, ack) = Client::connect_with(b.addr, connect).await;
        assert!(ack.session_present);
        let again = s.recv_publish().await;
        assert!(again.dup, "re-sent with DUP");
        assert_eq!(again.packet_id, first.packet_id);
        assert_eq!(&again.payload[..], b"keep");
        s.ack(&again).await;
        s.expect_nothing().await;
    }
}
