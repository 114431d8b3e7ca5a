//! Topic aliases both ways.

use tern_codec::*;

use crate::support::client::{connect_packet, publish_packet};
use crate::support::{Client, TestBroker};

#[tokio::test]
async fn client_aliases_are_resolved() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "ta-s").await;
    s.subscribe("ta/#", QoS::AtMostOnce).await;
    let (mut p, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "ta-p", true)).await;
    assert!(ack.properties.topic_alias_maximum.unwrap_or(0) >= 2);
    let mut first = publish_packet("ta/one", b"1", QoS::AtMostOnce, false, None);
    first.properties.topic_alias = Some(1);
    p.send(Packet::Publish(first)).await;
    let mut by_alias = publish_packet("", b"2", QoS::AtMostOnce, false, None);
    by_alias.properties.topic_alias = Some(1);
    p.send(Packet::Publish(by_alias)).await;
    // Re-map alias 1 to another topic.
    let mut remap = publish_packet("ta/two", b"3", QoS::AtMostOnce, false, None);
    remap.properties.topic_alias = Some(1);
    p.send(Packet::Publish(remap)).await;
    let mut again = publish_packet("", b"4", QoS::AtMostOnce, false, None);
    again.properties.topic_alias = Some(1);
    p.send(Packet::Publish(again)).await;
    for (t, pl) in [
        ("ta/one", "1"),
        ("ta/one", "2"),
        ("ta/two", "3"),
        ("ta/two", "4"),
    ] {
        let m = s.recv_publish().await;
        assert_eq!((&*m.topic, &m.payload[..]), (t, pl.as_bytes()));
        assert_eq!(
            m.properties.topic_alias, None,
            "the subscriber did not allow aliases"
        );
    }
}

#[tokio::test]
async fn unknown_or_out_of_range_alias_is_an_error() {
    let b = TestBroker::start().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "ta-bad").await;
    let mut unknown = publish_packet("", b"x", QoS::AtMostOnce, false, None);
    unknown.properties.topic_alias = Some(5);
    p.send(Packet::Publish(unknown)).await;
    assert_eq!(
        p.expect_closed().await.expect("DISCONNECT").reason,
        ReasonCode::PROTOCOL_ERROR
    );

    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "ta-bad2").await;
    let mut big = publish_packet("ta/x", b"x", QoS::AtMostOnce, false, None);
    big.properties.topic_alias = Some(u16::MAX);
    p.send(Packet::Publish(big)).await;
    assert_eq!(
        p.expect_closed().await.expect("DISCONNECT").reason,
        ReasonCode::TOPIC_ALIAS_INVALID
    );
}

#[tokio::test]
async fn broker_assigns_aliases_within_the_client_maximum() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(ProtocolVersion::V5, "ta-out", true);
    c.properties.topic_alias_maximum = Some(2);
    let (mut s, _) = Client::connect_with(b.addr, c).await;
    s.subscribe("out/#", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "ta-out-p").await;
    for t in ["out/a", "out/a", "out/b", "out/c", "out/b"] {
        p.publish(t, t.as_bytes(), QoS::AtMostOnce, false).await;
    }
    // First use: topic plus a new alias; later: alias only; beyond the maximum: plain topic.
    let mut known = std::collections::HashMap::new();
    for t in ["out/a", "out/a", "out/b", "out/c", "out/b"] {
        let m = s.recv_publish().await;
        assert_eq!(&m.payload[..], t.as_bytes());
        match (m.topic.is_empty(), m.properties.topic_alias) {
            (false, Some(alias)) => {
                assert!((1..=2).contains(&alias));
                known.insert(alias, m.topic.to_string());
            }
            (true, Some(alias)) => assert_eq!(known.get(&alias).map(String::as_str), Some(t)),
            (false, None) => assert_eq!(&*m.topic, t),
            (true, None) => panic!("empty topic without alias"),
        }
    }
    assert_eq!(known.len(), 2);
}
