//! The client against a broker the test plays packet by packet (tern-codec on a loopback
//! socket): what a real broker will not do on demand.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tern_codec::{
    ByteString, Bytes, Packet, ProtocolVersion, PubAck, Publish, PublishProperties, QoS,
    ReasonCode, SubAck,
};
use tern_mqttc::{Client, ConnectionError, Event, OverflowPolicy, PublishError, Subscription};

fn publish(topic: &str, payload: &str, qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from(topic),
        packet_id: id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn disconnected(e: Event) -> Option<ConnectionError> {
    match e {
        Event::Disconnected { reason } => Some(reason),
        _ => None,
    }
}

#[tokio::test]
async fn connect_carries_the_options() {
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let mut o = options(&broker.uri(), "dev-1", ProtocolVersion::V5);
    o.username = Some("user".into());
    o.password = Some(b"pw".to_vec());
    o.keep_alive = 17;
    o.clean_start = false;
    o.session_expiry = 300;
    let (c, _rx) = Client::start(o, vec![]).unwrap();
    let (_conn, connect) = broker.accept().await;
    assert_eq!(connect.client_id, "dev-1");
    assert_eq!(connect.username.as_deref(), Some("user"));
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
    assert_eq!(connect.keep_alive, 17);
    assert!(!connect.clean_start);
    assert_eq!(connect.properties.session_expiry_interval, Some(300));
    c.close().await;
}

#[tokio::test]
async fn unacknowledged_qos1_is_sent_again_with_dup_in_order() {
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let broker = Scripted::bind(v).await;
        let (c, mut rx) = Client::start(options(&broker.uri(), "q", v), vec![]).unwrap();
        let mut conn = broker.accept_connack().await;
        connected(&mut rx).await;
        let sends: Vec<_> = (1..=3)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.publish("out", format!("m{i}"), QoS::AtLeastOnce, false)
                        .await
                })
            })
            .collect();
        // Read the three publishes (in whatever order the tasks queued them), acknowledge none.
        let mut first = Vec::new();
        for _ in 0..3 {
            match conn.read_skip_pings().await {
                Some(Packet::Publish(p)) => {
                    assert!(!p.dup);
                    first.push(p);
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        drop(conn);
        next_event(&mut rx, disconnected).await;

        let mut conn = broker.accept_connack().await;
        for sent in &first {
            match conn.read_skip_pings().await {
                Some(Packet::Publish(p)) => {
                    assert!(p.dup, "{v}: re-sent with DUP");
                    assert_eq!(
                        (&p.payload, p.packet_id),
                        (&sent.payload, sent.packet_id),
                        "{v}: in the order first sent"
                    );
                    conn.send(Packet::PubAck(PubAck::new(p.packet_id.unwrap())))
                        .await;
                }
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        for s in sends {
            s.await.unwrap().unwrap();
        }
        // A new one is not a duplicate.
        let next = tokio::spawn({
            let c = c.clone();
            async move { c.publish("out", "m4", QoS::AtLeastOnce, false).await }
        });
        match conn.read_skip_pings().await {
            Some(Packet::Publish(p)) => {
                assert!(!p.dup);
                conn.send(Packet::PubAck(PubAck::new(p.packet_id.unwrap())))
                    .await;
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        next.await.unwrap().unwrap();
        c.close().await;
    }
}

#[tokio::test]
async fn a_refused_puback_fails_the_publish() {
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let (c, mut rx) =
        Client::start(options(&broker.uri(), "q", ProtocolVersion::V5), vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    let send = tokio::spawn({
        let c = c.clone();
        async move { c.publish("out", "x", QoS::AtLeastOnce, false).await }
    });
    let Some(Packet::Publish(p)) = conn.read_skip_pings().await else {
        panic!("expected PUBLISH");
    };
    let mut ack = PubAck::new(p.packet_id.unwrap());
    ack.reason = ReasonCode::NOT_AUTHORIZED;
    conn.send(Packet::PubAck(ack)).await;
    assert_eq!(
        send.await.unwrap(),
        Err(PublishError::Rejected(ReasonCode::NOT_AUTHORIZED))
    );
    assert_eq!(c.metrics().snapshot().publish_failures, 1);
    c.close().await;
}

#[tokio::test]
async fn a_silent_broker_is_detected_by_keep_alive() {
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let mut o = options(&broker.uri(), "ka", ProtocolVersion::V5);
    o.keep_alive = 1;
    let (c, mut rx) = Client::start(o, vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    // The client pings; the broker never answers.
    assert!(matches!(conn.read().await, Some(Packet::PingReq)));
    let reason = next_event(&mut rx, disconnected).await;
    assert!(
        matches!(reason, ConnectionError::KeepAliveTimeout),
        "{reason}"
    );
    // And it reconnects.
    let _again = broker.accept_connack().await;
    connected(&mut rx).await;
    c.close().await;
}

#[tokio::test]
async fn a_silent_broker_is_detected_while_the_client_keeps_publishing() {
    let broker = Scripted::bind(ProtocolVersion::V311).await;
    let mut o = options(&broker.uri(), "ka", ProtocolVersion::V311);
    o.keep_alive = 1;
    let (c, mut rx) = Client::start(o, vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    // QoS 0 traffic all the time: the client's own sending must not hide the silence.
    let traffic = tokio::spawn({
        let c = c.clone();
        async move {
            loop {
                let _ = c.publish("t", "x", QoS::AtMostOnce, false).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let reading = tokio::spawn(async move {
        // Read everything (so the client's writes never block), answer nothing.
        while conn.read_within(WAIT).await.ok().flatten().is_some() {}
    });
    let reason = next_event(&mut rx, disconnected).await;
    assert!(
        matches!(reason, ConnectionError::KeepAliveTimeout),
        "{reason}"
    );
    traffic.abort();
    reading.abort();
    c.close().await;
}

#[tokio::test]
async fn an_answered_ping_keeps_the_connection() {
    let broker = Scripted::bind(ProtocolVersion::V311).await;
    let mut o = options(&broker.uri(), "ka", ProtocolVersion::V311);
    o.keep_alive = 1;
    let (c, mut rx) = Client::start(o, vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    for _ in 0..3 {
        assert!(matches!(conn.read().await, Some(Packet::PingReq)));
        conn.send(Packet::PingResp).await;
    }
    assert_eq!(c.metrics().snapshot().disconnects, 0);
    c.close().await;
    assert!(matches!(
        conn.read_skip_pings().await,
        Some(Packet::Disconnect(_))
    ));
}

#[tokio::test]
async fn malformed_input_closes_and_reconnects() {
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let (c, mut rx) =
        Client::start(options(&broker.uri(), "m", ProtocolVersion::V5), vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    // Packet type 0 is reserved.
    conn.send_raw(&[0x00, 0x00]).await;
    let reason = next_event(&mut rx, disconnected).await;
    assert!(matches!(reason, ConnectionError::Decode(_)), "{reason}");
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    // A PUBACK for nothing and a QoS 2 PUBLISH it never asked for.
    conn.send(Packet::PubAck(PubAck::new(9))).await;
    conn.send(Packet::Publish(publish(
        "t",
        "x",
        QoS::ExactlyOnce,
        Some(1),
    )))
    .await;
    let reason = next_event(&mut rx, disconnected).await;
    assert!(matches!(reason, ConnectionError::Protocol(_)), "{reason}");
    let _conn = broker.accept_connack().await;
    connected(&mut rx).await;
    c.close().await;
}

#[tokio::test]
async fn subscriptions_are_sent_after_every_connack_and_failures_reported() {
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let subs = vec![
        Subscription::new("ok/#", QoS::AtLeastOnce),
        Subscription::new("denied/#", QoS::AtMostOnce),
    ];
    let (c, mut rx) =
        Client::start(options(&broker.uri(), "s", ProtocolVersion::V5), subs).unwrap();
    for _ in 0..2 {
        let mut conn = broker.accept_connack().await;
        connected(&mut rx).await;
        for _ in 0..2 {
            let Some(Packet::Subscribe(s)) = conn.read_skip_pings().await else {
                panic!("expected SUBSCRIBE");
            };
            let (filter, opts) = &s.filters[0];
            let reason = if filter.starts_with("ok") {
                assert_eq!(opts.qos, QoS::AtLeastOnce);
                ReasonCode::GRANTED_QOS_1
            } else {
                ReasonCode::NOT_AUTHORIZED
            };
            conn.send(Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Default::default(),
                reasons: vec![reason],
            }))
            .await;
        }
        let (filter, reason) = next_event(&mut rx, |e| match e {
            Event::SubscribeFailed { filter, reason } => Some((filter, reason)),
            _ => None,
        })
        .await;
        assert_eq!(
            (filter.as_str(), reason),
            ("denied/#", ReasonCode::NOT_AUTHORIZED)
        );
        // The broker goes away; the client comes back and subscribes again.
    }
    c.close().await;
}

#[tokio::test]
async fn inbound_qos1_is_acknowledged_once_the_owner_has_room() {
    let broker = Scripted::bind(ProtocolVersion::V311).await;
    let mut o = options(&broker.uri(), "in", ProtocolVersion::V311);
    o.event_capacity = 1;
    let (c, mut rx) = Client::start(o, vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    // Take Connected so the channel is empty.
    connected(&mut rx).await;
    for id in 1..=3 {
        conn.send(Packet::Publish(publish(
            "t",
            &format!("{id}"),
            QoS::AtLeastOnce,
            Some(id),
        )))
        .await;
    }
    // The first fills the channel and is acknowledged; the second waits for room.
    assert!(matches!(conn.read().await, Some(Packet::PubAck(a)) if a.packet_id == 1));
    assert!(
        conn.read_within(QUIET).await.is_err(),
        "nothing more is acknowledged while the owner does not take events"
    );
    for id in 1..=3u16 {
        assert_eq!(message(&mut rx).await.1, id.to_string().into_bytes());
    }
    for id in 2..=3 {
        assert!(
            matches!(conn.read_skip_pings().await, Some(Packet::PubAck(a)) if a.packet_id == id)
        );
    }
    assert_eq!(c.metrics().snapshot().messages_in, 3);
    c.close().await;
}

#[tokio::test]
async fn the_outgoing_queue_rejects_when_full_under_reject_new() {
    // A broker that never answers CONNECT: everything stays queued.
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let mut o = options(&broker.uri(), "full", ProtocolVersion::V5);
    o.queue_size = 2;
    o.overflow = OverflowPolicy::RejectNew;
    o.connect_timeout = Duration::from_secs(30);
    let (c, _rx) = Client::start(o, vec![]).unwrap();
    let (_conn, _) = broker.accept().await;
    let sends: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(
                async move { c.publish("t", format!("{i}"), QoS::AtMostOnce, false).await },
            )
        })
        .collect();
    eventually(|| c.metrics().snapshot().queue_drops == 1).await;
    c.close().await;
    let mut results = Vec::new();
    for s in sends {
        results.push(s.await.unwrap());
    }
    results.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        results,
        [
            Err(PublishError::Closed),
            Err(PublishError::Closed),
            Err(PublishError::QueueFull)
        ]
    );
}

#[tokio::test]
async fn what_connack_says_the_broker_does_not_take_fails_without_a_disconnect() {
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let (c, mut rx) =
        Client::start(options(&broker.uri(), "lim", ProtocolVersion::V5), vec![]).unwrap();
    let (mut conn, _) = broker.accept().await;
    let mut connack = tern_codec::ConnAck::default();
    connack.properties.maximum_qos = Some(0);
    connack.properties.retain_available = Some(false);
    connack.properties.maximum_packet_size = Some(64);
    conn.send(Packet::ConnAck(connack)).await;
    connected(&mut rx).await;
    let refused = |r| Err(PublishError::Rejected(r));
    assert_eq!(
        c.publish("t", "x", QoS::AtLeastOnce, false).await,
        refused(ReasonCode::QOS_NOT_SUPPORTED)
    );
    assert_eq!(
        c.publish("t", "x", QoS::AtMostOnce, true).await,
        refused(ReasonCode::RETAIN_NOT_SUPPORTED)
    );
    assert_eq!(
        c.publish("t", vec![0u8; 100], QoS::AtMostOnce, false).await,
        refused(ReasonCode::PACKET_TOO_LARGE)
    );
    c.publish("t", "fits", QoS::AtMostOnce, false)
        .await
        .unwrap();
    let Some(Packet::Publish(p)) = conn.read_skip_pings().await else {
        panic!("expected PUBLISH");
    };
    assert_eq!(&p.payload[..], b"fits");
    let m = c.metrics().snapshot();
    assert_eq!(
        (m.publish_failures, m.messages_out, m.disconnects),
        (3, 1, 0)
    );
    c.close().await;
}

#[tokio::test]
async fn manual_acks_go_out_when_the_owner_says_and_never_on_a_later_connection() {
    let broker = Scripted::bind(ProtocolVersion::V311).await;
    let mut o = options(&broker.uri(), "manual", ProtocolVersion::V311);
    o.manual_ack = true;
    let (c, mut rx) = Client::start(o, vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    for id in 1..=2 {
        conn.send(Packet::Publish(publish(
            "t",
            &format!("{id}"),
            QoS::AtLeastOnce,
            Some(id),
        )))
        .await;
    }
    let mut acks = Vec::new();
    for _ in 0..2 {
        let ack = next_event(&mut rx, |e| match e {
            Event::Message { ack, .. } => Some(ack),
            _ => None,
        })
        .await;
        acks.push(ack.expect("a QoS 1 message carries its Ack"));
    }
    assert!(
        conn.read_within(QUIET).await.is_err(),
        "taking the events acknowledges nothing"
    );
    let second = acks.pop().unwrap();
    acks.pop().unwrap().ack();
    assert!(matches!(conn.read_skip_pings().await, Some(Packet::PubAck(a)) if a.packet_id == 1));
    // The connection ends before the second is acknowledged: its Ack does nothing on the next
    // connection, whose packet id 2 is another message.
    drop(conn);
    disconnected_event(&mut rx).await;
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    second.ack();
    assert!(
        conn.read_within(QUIET).await.is_err(),
        "an Ack of an ended connection is not sent"
    );
    // QoS 0 carries none.
    conn.send(Packet::Publish(publish("t", "q0", QoS::AtMostOnce, None)))
        .await;
    let ack = next_event(&mut rx, |e| match e {
        Event::Message { ack, .. } => Some(ack.is_none()),
        _ => None,
    })
    .await;
    assert!(ack);
    c.close().await;
}

async fn disconnected_event(rx: &mut tokio::sync::mpsc::Receiver<Event>) {
    next_event(rx, disconnected).await;
}

#[tokio::test]
async fn enqueued_publishes_go_in_call_order_and_resolve_on_puback() {
    let broker = Scripted::bind(ProtocolVersion::V5).await;
    let (c, mut rx) =
        Client::start(options(&broker.uri(), "e", ProtocolVersion::V5), vec![]).unwrap();
    let mut conn = broker.accept_connack().await;
    connected(&mut rx).await;
    let mut pending = Vec::new();
    for i in 0..5 {
        pending.push(
            c.enqueue("out", format!("m{i}"), QoS::AtLeastOnce, false)
                .await
                .unwrap(),
        );
    }
    for i in 0..5 {
        match conn.read_skip_pings().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.payload, Bytes::from(format!("m{i}")), "in call order");
                let code = if i == 3 {
                    ReasonCode::NOT_AUTHORIZED
                } else {
                    ReasonCode::SUCCESS
                };
                let mut ack = PubAck::new(p.packet_id.unwrap());
                ack.reason = code;
                conn.send(Packet::PubAck(ack)).await;
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    let mut results = Vec::new();
    for p in pending {
        results.push(p.done().await);
    }
    assert_eq!(
        results,
        vec![
            Ok(()),
            Ok(()),
            Ok(()),
            Err(PublishError::Rejected(ReasonCode::NOT_AUTHORIZED)),
            Ok(())
        ]
    );
    c.close().await;
}

#[tokio::test]
async fn a_failed_connection_attempt_is_an_event() {
    let uri = format!("mqtt://127.0.0.1:{}", free_port());
    let (c, mut rx) = Client::start(options(&uri, "f", ProtocolVersion::V5), vec![]).unwrap();
    let (reason, attempt) = next_event(&mut rx, |e| match e {
        Event::ConnectFailed { reason, attempt } => Some((reason, attempt)),
        _ => None,
    })
    .await;
    assert!(matches!(reason, ConnectionError::Io(_)), "{reason}");
    assert_eq!(attempt, 1);
    c.close().await;
}
