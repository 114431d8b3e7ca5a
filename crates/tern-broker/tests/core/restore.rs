//! Restart without sockets: a broker mirrors its state into an in-memory store, a second
//! broker restores from it, and the client finds its session, subscriptions, queued and
//! in-flight messages (re-sent with DUP and the same packet id) and retained messages; expiry
//! counts across the restart.

use std::time::Duration;

use tern_broker::CloseReason;
use tern_codec::*;
use tern_store::MemoryBackend;

use crate::support::{
    START, TestBroker, connect_packet, expiring, persistent, publish_packet, publish_with_id,
};

#[tokio::test]
async fn a_restarted_broker_keeps_sessions_queues_inflight_and_retained() {
    let backend = MemoryBackend::new();
    let b1 = TestBroker::stored(&backend, START);

    let (mut sub, _) = b1.connect(persistent("sub", 300));
    sub.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            user_properties: vec![],
        },
        filters: vec![(
            ByteString::from_static("t/#"),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    }));
    assert!(matches!(sub.recv_all()[0], Packet::SubAck(_)));

    let (mut publ, _) = b1.connect(persistent("pub", 300));
    publ.send(Packet::Publish(publish_with_id(
        "t/a",
        b"one",
        QoS::AtLeastOnce,
        false,
        1,
    )));
    // The subscriber receives "one" but never acknowledges it: it stays in flight.
    let first = match sub.recv_all().remove(0) {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    sub.close(CloseReason::ConnectionLost);
    drop(sub);
    publ.send(Packet::Publish(publish_with_id(
        "t/b",
        b"two",
        QoS::AtLeastOnce,
        false,
        2,
    )));
    publ.send(Packet::Publish(publish_with_id(
        "t/c",
        b"three",
        QoS::ExactlyOnce,
        false,
        3,
    )));
    publ.send(Packet::Publish(publish_packet(
        "r/x",
        b"kept",
        QoS::AtMostOnce,
        true,
    )));
    // The publisher's acknowledgements wait for the store.
    b1.flush().await;
    let acks = publ.recv_all();
    assert!(
        acks.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id == 2))
    );
    assert!(
        acks.iter()
            .any(|p| matches!(p, Packet::PubRec(a) if a.packet_id == 3))
    );
    b1.flush().await;
    drop(publ);
    let stopped = b1.now();
    b1.stop().await;

    // "Restart".
    let b2 = TestBroker::stored(&backend, stopped);
    let restored = &b2.restored;
    assert_eq!(restored.sessions, 2, "{restored:?}");
    assert_eq!(restored.subscriptions, 1);
    assert_eq!(restored.inflight, 1);
    assert_eq!(restored.queued, 2);
    assert_eq!(restored.retained, 1);

    let (mut sub, ack) = b2.connect(persistent("sub", 300));
    assert!(ack.session_present);
    let got: Vec<Publish> = sub
        .recv_all()
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    assert_eq!(got.len(), 3);
    assert!(got[0].dup, "the in-flight message is re-sent with DUP");
    assert_eq!(got[0].packet_id, first.packet_id, "with the same packet id");
    assert_eq!(&got[0].payload[..], b"one");
    assert_eq!(&got[1].payload[..], b"two");
    assert_eq!(&got[2].payload[..], b"three");
    assert_eq!(got[2].qos, QoS::AtLeastOnce, "granted QoS 1");
    for p in &got {
        assert_eq!(p.properties.subscription_identifiers.to_vec(), vec![7]);
    }
    // Acknowledge everything; the store's queue empties.
    for p in &got {
        sub.send(Packet::PubAck(PubAck::new(p.packet_id.unwrap())));
    }
    b2.flush().await;
    let after = backend.load();
    let stored_sub = after
        .sessions
        .iter()
        .find(|s| &*s.record.key.client_id == "sub")
        .unwrap();
    assert!(stored_sub.queue.is_empty(), "{:?}", stored_sub.queue);
    assert_eq!(after.retained.len(), 1);

    // Retained message comes back on subscribe.
    let mut other = b2.client("other");
    let retained = other.subscribe("r/#", QoS::AtMostOnce);
    assert!(
        retained
            .iter()
            .any(|m| m.retain && &m.payload[..] == b"kept")
    );
    b2.stop().await;
}

#[tokio::test]
async fn clean_sessions_are_never_stored() {
    let backend = MemoryBackend::new();
    let b = TestBroker::stored(&backend, START);
    let (c, _) = b.connect(connect_packet(ProtocolVersion::V311, "clean", true));
    b.flush().await;
    assert!(backend.load().sessions.is_empty());
    assert!(c.disconnect(None).is_some());
    // A persistent 3.1.1 session is.
    let (_c, _) = b.connect(connect_packet(ProtocolVersion::V311, "kept", false));
    b.flush().await;
    assert_eq!(backend.load().sessions.len(), 1);
    b.stop().await;
}

#[tokio::test]
async fn expired_sessions_are_dropped_at_restore() {
    let backend = MemoryBackend::new();
    {
        let mut st = backend.state.lock();
        st.apply(&tern_store::Op::PutSession {
            record: tern_store::SessionRecord {
                key: tern_store::SessionKey {
                    cid: 1,
                    client_id: ByteString::from_static("old"),
                },
                expiry_interval: 10,
                disconnected_at: Some(1_000_000),
                will: None,
                created: 0,
                token_id: None,
            },
        });
    }
    let b = TestBroker::stored(&backend, START);
    assert_eq!(b.restored.sessions, 0);
    assert_eq!(b.restored.expired_sessions, 1);
    b.flush().await;
    assert!(backend.load().sessions.is_empty());
    b.stop().await;
}

/// Session expiry counts from the disconnect, across a restart: a session whose interval runs
/// out after the restart ends then, a longer one stays.
#[tokio::test]
async fn session_expiry_runs_across_a_restart() {
    let backend = MemoryBackend::new();
    let b1 = TestBroker::stored(&backend, START);
    for (id, expiry) in [("short", 1), ("long", 3600)] {
        let (mut s, _) = b1.connect(persistent(id, expiry));
        s.subscribe("e/t", QoS::AtLeastOnce);
        assert!(s.disconnect(None).is_some());
    }
    let stopped = b1.now();
    b1.stop().await;
    // Back after half a second.
    let b2 = TestBroker::stored(&backend, stopped + 500_000);
    b2.advance(Duration::from_millis(499));
    let key = |id: &str| tern_broker::SessionKey {
        cid: 1,
        client_id: id.into(),
    };
    assert!(b2.broker.session(&key("short")).is_some(), "not yet");
    b2.advance(Duration::from_millis(1));
    assert!(b2.broker.session(&key("short")).is_none(), "expired");
    let (_l, ack) = b2.connect(persistent("long", 3600));
    assert!(ack.session_present);
    b2.flush().await;
    let stored: Vec<String> = backend
        .load()
        .sessions
        .iter()
        .map(|s| s.record.key.client_id.to_string())
        .collect();
    assert_eq!(stored, ["long"]);
}

/// A queued message whose Message Expiry Interval ran out while the broker was down is not
/// delivered after the restart; the others are, in order.
#[tokio::test]
async fn queued_messages_expire_across_a_restart() {
    let backend = MemoryBackend::new();
    let b1 = TestBroker::stored(&backend, START);
    let (mut s, _) = b1.connect(persistent("keep", 3600));
    s.subscribe("k/+", QoS::ExactlyOnce);
    assert!(s.disconnect(None).is_some());
    let mut p = b1.client("keep-pub");
    p.publish(publish_packet("k/q", b"queued-0", QoS::AtLeastOnce, false));
    p.publish(expiring("k/q", b"expires", QoS::AtLeastOnce, false, 1));
    p.publish(publish_packet("k/q", b"queued-1", QoS::ExactlyOnce, false));
    let stopped = b1.now();
    b1.stop().await;
    let b2 = TestBroker::stored(&backend, stopped + 1_100_000);
    let (mut s, ack) = b2.connect(persistent("keep", 3600));
    assert!(ack.session_present);
    let got: Vec<(String, QoS)> = s
        .publishes()
        .iter()
        .map(|m| (String::from_utf8_lossy(&m.payload).into_owned(), m.qos))
        .collect();
    assert_eq!(
        got,
        [
            ("queued-0".to_string(), QoS::AtLeastOnce),
            ("queued-1".to_string(), QoS::ExactlyOnce)
        ]
    );
}

/// A subscription's `cid` property is part of its key: stored as `<filter>\0cid=<n>` (store
/// format v1), it restores to the same key, with the same condition, and UNSUBSCRIBE with that
/// property removes it.
#[tokio::test]
async fn a_subscription_with_a_cid_property_restores_under_the_same_key() {
    let backend = MemoryBackend::new();
    let b1 = TestBroker::stored(&backend, START);
    let (mut sub, _) = b1.connect(persistent("sub", 300));
    let cid = |n: &'static str| vec![(ByteString::from_static("cid"), ByteString::from_static(n))];
    let filter = |f: &'static str| {
        (
            ByteString::from_static(f),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )
    };
    sub.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: SubscribeProperties {
            subscription_identifier: None,
            user_properties: cid("999"),
        },
        filters: vec![filter("t/#")],
    }));
    sub.send(Packet::Subscribe(Subscribe {
        packet_id: 2,
        properties: SubscribeProperties::default(),
        filters: vec![filter("u/#")],
    }));
    assert_eq!(sub.recv_all().len(), 2);
    b1.flush().await;
    let stored: Vec<String> = backend.load().sessions[0]
        .subscriptions
        .iter()
        .map(|s| s.filter.to_string())
        .collect();
    assert_eq!(stored, ["t/#\0cid=999", "u/#"]);
    sub.close(CloseReason::ConnectionLost);
    drop(sub);
    let stopped = b1.now();
    b1.stop().await;

    let b2 = TestBroker::stored(&backend, stopped);
    assert_eq!(b2.restored.subscriptions, 2);
    let (mut sub, ack) = b2.connect(persistent("sub", 300));
    assert!(ack.session_present);
    // Account 1 publishes: `t/#` is limited to account 999 and gets nothing, `u/#` gets it.
    let mut publ = b2.client("pub");
    publ.publish(publish_packet("t/a", b"x", QoS::AtMostOnce, false));
    publ.publish(publish_packet("u/a", b"y", QoS::AtMostOnce, false));
    let got: Vec<String> = sub
        .publishes()
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    assert_eq!(got, ["u/a"]);
    // UNSUBSCRIBE names the subscription with its `cid` property.
    sub.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        properties: UnsubscribeProperties {
            user_properties: cid("999"),
        },
        filters: vec![ByteString::from_static("t/#")],
    }));
    match &sub.recv_all()[..] {
        [Packet::UnsubAck(a)] => assert_eq!(a.reasons, [ReasonCode::SUCCESS]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    b2.flush().await;
    let stored: Vec<String> = backend.load().sessions[0]
        .subscriptions
        .iter()
        .map(|s| s.filter.to_string())
        .collect();
    assert_eq!(stored, ["u/#"]);
    b2.stop().await;
}
