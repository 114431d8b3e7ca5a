//! Flow control: Receive Maximum both ways, Maximum Packet Size both ways, the outbox budget.

use tern_codec::*;

use crate::support::client::{Read, connect_packet, publish_packet, user_property};
use crate::support::{Client, TestBroker};

#[tokio::test]
async fn broker_respects_the_client_receive_maximum() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(ProtocolVersion::V5, "rm-s", true);
    c.properties.receive_maximum = Some(2);
    let (mut s, _) = Client::connect_with(b.addr, c).await;
    s.subscribe("rm/t", QoS::AtLeastOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "rm-p").await;
    for i in 0..5 {
        p.publish("rm/t", format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let a = s.recv_publish().await;
    let b2 = s.recv_publish().await;
    s.expect_nothing().await; // the window is full
    s.ack(&a).await;
    let c3 = s.recv_publish().await;
    assert_eq!(&c3.payload[..], b"2");
    s.expect_nothing().await;
    s.ack(&b2).await;
    s.ack(&c3).await;
    for i in 3..5 {
        let m = s.recv_publish().await;
        assert_eq!(&m.payload[..], format!("{i}").as_bytes());
        s.ack(&m).await;
    }
}

#[tokio::test]
async fn client_exceeding_receive_maximum_gets_0x93() {
    let b = TestBroker::with(|c| c.mqtt.receive_maximum = 3).await;
    let (mut p, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "rm-over", true)).await;
    assert_eq!(ack.properties.receive_maximum, Some(3));
    // QoS 2 publishes without PUBREL stay unacknowledged.
    for id in 1..=4u16 {
        p.send(Packet::Publish(publish_packet(
            "rm/over",
            b"x",
            QoS::ExactlyOnce,
            false,
            Some(id),
        )))
        .await;
    }
    let d = p.expect_closed().await.expect("DISCONNECT");
    assert_eq!(d.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

#[tokio::test]
async fn oversized_outgoing_messages_are_dropped_for_that_client_only() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(ProtocolVersion::V5, "mps-small", true);
    c.properties.maximum_packet_size = Some(128);
    let (mut small, _) = Client::connect_with(b.addr, c).await;
    small.subscribe("mps/t", QoS::AtLeastOnce).await;
    let mut big = Client::connect(b.addr, ProtocolVersion::V5, "mps-big").await;
    big.subscribe("mps/t", QoS::AtLeastOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "mps-p").await;
    p.publish("mps/t", &[7u8; 1000], QoS::AtLeastOnce, false)
        .await;
    p.publish("mps/t", b"small", QoS::AtLeastOnce, false).await;
    let m = small.recv_publish().await;
    assert_eq!(&m.payload[..], b"small", "the large one was skipped");
    small.ack(&m).await;
    let m = big.recv_publish().await;
    assert_eq!(m.payload.len(), 1000);
    big.ack(&m).await;
    assert_eq!(&big.recv_publish().await.payload[..], b"small");
}

/// A message that fits the client's Maximum Packet Size only without the broker's `cid` and
/// `timestamp` user properties is delivered without them (its own properties intact), not
/// dropped; one that does not fit either way is dropped.
#[tokio::test]
async fn stamps_give_way_to_the_maximum_packet_size() {
    let b = TestBroker::start().await;
    let mut c = connect_packet(ProtocolVersion::V5, "mps-stamps", true);
    c.properties.maximum_packet_size = Some(64);
    let (mut sub, _) = Client::connect_with(b.addr, c).await;
    sub.subscribe("mps/s", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "mps-stamps-p").await;
    let mut with_props = publish_packet("mps/s", &[1u8; 20], QoS::AtMostOnce, false, None);
    with_props
        .properties
        .user_properties
        .push(("a".into(), "2".into()));
    p.send(Packet::Publish(with_props)).await;
    // 2 + 7 + 1 + 60 bytes: too large with or without stamps.
    p.publish("mps/s", &[2u8; 60], QoS::AtMostOnce, false).await;
    p.publish("mps/s", &[3u8; 4], QoS::AtMostOnce, false).await;
    let m = sub.recv_publish().await;
    assert_eq!(&m.payload[..], &[1u8; 20]);
    let props: Vec<_> = m
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(props, [("a".to_string(), "2".to_string())]);
    let m = sub.recv_publish().await;
    assert_eq!(&m.payload[..], &[3u8; 4], "the 60-byte one was dropped");
    assert!(user_property(&m.properties.user_properties, "timestamp").is_some());
}

#[tokio::test]
async fn incoming_packet_over_the_maximum_is_refused_with_0x95() {
    let b = TestBroker::with(|c| c.mqtt.max_packet_size = 1024).await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut p = Client::connect(b.addr, v, &format!("mps-in-{v}")).await;
        p.send(Packet::Publish(publish_packet(
            "mps/in",
            &[1u8; 2000],
            QoS::AtMostOnce,
            false,
            None,
        )))
        .await;
        let d = p.expect_closed().await;
        if v == ProtocolVersion::V5 {
            assert_eq!(d.expect("DISCONNECT").reason, ReasonCode::PACKET_TOO_LARGE);
        }
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_past_the_byte_budget() {
    let b = TestBroker::with(|c| c.session.max_queued_bytes = 64 * 1024).await;
    let mut c = connect_packet(ProtocolVersion::V5, "slow", true);
    c.properties.receive_maximum = Some(1);
    let (mut slow, _) = Client::connect_with(b.addr, c).await;
    slow.subscribe("slow/t", QoS::AtLeastOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "slow-p").await;
    for _ in 0..200 {
        p.publish("slow/t", &[0u8; 1024], QoS::AtLeastOnce, false)
            .await;
    }
    // The first message sits unacknowledged; the rest pile up until the budget is exceeded.
    let mut disconnect = None;
    loop {
        match slow.read(crate::support::WAIT).await {
            Read::Packet(Packet::Disconnect(d)) => disconnect = Some(d),
            Read::Packet(_) => {}
            Read::Closed => break,
            Read::Timeout => panic!("slow consumer was not closed"),
        }
    }
    assert_eq!(
        disconnect.expect("DISCONNECT").reason,
        ReasonCode::QUOTA_EXCEEDED
    );
    assert!(
        b.broker()
            .metrics
            .drops(tern_broker::DropReason::QueueOverflow)
            >= 1
    );
    p.ping().await; // the publisher is unaffected
}

#[tokio::test]
async fn qos0_beyond_the_message_budget_is_dropped_and_counted() {
    let b = TestBroker::with(|c| {
        c.session.max_queued_messages = 5;
        c.session.queue_qos0_offline = true;
    })
    .await;
    let mut c = connect_packet(ProtocolVersion::V5, "q0", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = Client::connect_with(b.addr, c.clone()).await;
    s.subscribe("q0/t", QoS::AtMostOnce).await;
    s.disconnect().await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "q0-p").await;
    for i in 0..50 {
        p.publish("q0/t", format!("{i}").as_bytes(), QoS::AtMostOnce, false)
            .await;
    }
    p.ping().await;
    assert_eq!(
        b.broker()
            .metrics
            .drops(tern_broker::DropReason::Qos0Overflow),
        45
    );
    let (mut s, _) = Client::connect_with(b.addr, c).await;
    for i in 0..5 {
        assert_eq!(
            &s.recv_publish().await.payload[..],
            format!("{i}").as_bytes()
        );
    }
    s.expect_nothing().await;
}

#[tokio::test]
async fn backpressure_instead_of_loss_for_a_slow_but_reading_subscriber() {
    let b = TestBroker::with(|c| {
        c.session.max_queued_messages = 1_000;
        c.session.backpressure_messages = 200;
        c.session.backpressure_timeout_ms = 5_000;
    })
    .await;
    let mut s = Client::connect(b.addr, ProtocolVersion::V311, "bp-sub").await;
    s.subscribe("bp/t", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V311, "bp-pub").await;
    let total = 20_000u32;
    let payload = vec![b'x'; 1024];
    // Publish 20 MB of QoS 0 while the subscriber does not read for a while: far more than the
    // socket buffers and the 1,000-message budget hold.
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            let mut body = i.to_be_bytes().to_vec();
            body.extend_from_slice(&payload);
            p.send(Packet::Publish(publish_packet(
                "bp/t",
                &body,
                QoS::AtMostOnce,
                false,
                None,
            )))
            .await;
        }
        p.ping().await;
        p
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut next = 0u32;
    while next < total {
        let m = s.recv_publish().await;
        let n = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
        assert_eq!(n, next, "in order, none lost");
        next += 1;
    }
    publisher.await.unwrap();
    let m = &b.broker().metrics;
    assert_eq!(m.drops(tern_broker::DropReason::Qos0Overflow), 0);
    assert!(
        tern_broker::Metrics::get(&m.backpressure_pauses) > 0,
        "the publisher was paused"
    );
    assert_eq!(tern_broker::Metrics::get(&m.backpressure_timeouts), 0);
}

#[tokio::test]
async fn a_stuck_subscriber_holds_publishers_back_only_briefly() {
    let b = TestBroker::with(|c| {
        c.session.max_queued_messages = 1_000;
        c.session.backpressure_messages = 200;
        c.session.backpressure_timeout_ms = 300;
    })
    .await;
    let mut stuck = Client::connect(b.addr, ProtocolVersion::V311, "stuck").await;
    stuck.subscribe("st/t", QoS::AtMostOnce).await;
    let mut fine = Client::connect(b.addr, ProtocolVersion::V311, "fine").await;
    fine.subscribe("st/other", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V311, "st-pub").await;
    let payload = vec![b'x'; 1024];
    for _ in 0..20_000 {
        p.send(Packet::Publish(publish_packet(
            "st/t",
            &payload,
            QoS::AtMostOnce,
            false,
            None,
        )))
        .await;
    }
    p.publish("st/other", b"still flowing", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&fine.recv_publish().await.payload[..], b"still flowing");
    // The publisher waited for the stuck subscriber, then gave up on it.
    assert!(tern_broker::Metrics::get(&b.broker().metrics.backpressure_timeouts) >= 1);
    // The stuck subscriber's budget decided: QoS 0 beyond it was dropped and counted.
    assert!(
        b.broker()
            .metrics
            .drops(tern_broker::DropReason::Qos0Overflow)
            > 0
    );
    drop(stuck);
}
