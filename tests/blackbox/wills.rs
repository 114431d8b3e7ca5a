//! Wills over the wire: published on abnormal close, discarded on DISCONNECT, sent on
//! DISCONNECT 0x04, retained. Will Delay Interval (its delay, cancelled by a reconnect, sent
//! when the session ends) is tested in virtual time: `crates/tern-broker/tests/core/wills.rs`.

use std::time::Duration;

use bytes::Bytes;
use tern_codec::*;

use crate::support::client::connect_packet;
use crate::support::{Client, TestBroker};

fn with_will(v: ProtocolVersion, id: &str, topic: &str, delay: Option<u32>) -> Connect {
    let mut c = connect_packet(v, id, true);
    c.will = Some(Will {
        topic: ByteString::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        },
    });
    c
}

#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    let b = TestBroker::start().await;
    for v in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        let topic = format!("will/{v}");
        let mut s = Client::connect(b.addr, v, &format!("will-s-{v}")).await;
        s.subscribe(&topic, QoS::AtLeastOnce).await;
        let (c, _) =
            Client::connect_with(b.addr, with_will(v, &format!("will-c-{v}"), &topic, None)).await;
        drop(c);
        let w = s.recv_publish().await;
        assert_eq!(&w.payload[..], b"gone");
        s.ack(&w).await;
    }
}

#[tokio::test]
async fn normal_disconnect_discards_the_will_and_0x04_sends_it() {
    let b = TestBroker::start().await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V5, "wd-s").await;
    s.subscribe("wd/#", QoS::AtMostOnce).await;
    let (c, _) =
        Client::connect_with(b.addr, with_will(ProtocolVersion::V5, "wd-1", "wd/1", None)).await;
    c.disconnect().await;
    s.expect_nothing().await;
    let (mut c, _) =
        Client::connect_with(b.addr, with_will(ProtocolVersion::V5, "wd-2", "wd/2", None)).await;
    c.send(Packet::Disconnect(Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        properties: Default::default(),
    }))
    .await;
    assert_eq!(&s.recv_publish().await.topic[..], "wd/2");
}

#[tokio::test]
async fn will_retain_is_stored() {
    let b = TestBroker::start().await;
    let mut c = with_will(ProtocolVersion::V311, "wr-1", "wr/state", None);
    c.will.as_mut().unwrap().retain = true;
    let (conn, _) = Client::connect_with(b.addr, c).await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V311, "wr-s").await;
    s.subscribe("wr/state", QoS::AtMostOnce).await;
    let w = s.recv_publish().await;
    assert!(w.retain);
    assert_eq!(&w.payload[..], b"gone");
}
