//! Restart without sockets: a broker mirrors its state into an in-memory store, a second
//! broker restores from it, and the client finds its session, subscriptions, queued and
//! in-flight messages (re-sent with DUP and the same packet id) and retained messages.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_broker::{Anonymous, Broker, BrokerConfig, CloseReason, Connection};
use tern_codec::*;
use tern_store::{FsyncPolicy, MemoryBackend, Store, Writer};

fn broker(backend: &MemoryBackend) -> (Arc<Broker>, Store, Writer) {
    let (store, writer) = Store::start(Box::new(backend.clone()), FsyncPolicy::Always);
    let broker = Broker::with_store(
        BrokerConfig::default(),
        Box::new(Anonymous { cid: 1 }),
        store.clone(),
    );
    (broker, store, writer)
}

fn connect(broker: &Arc<Broker>, id: &str, clean: bool) -> (Connection, ConnAck) {
    let mut conn = Connection::new(broker.clone(), "127.0.0.1:1".parse().unwrap(), "test");
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: clean,
        keep_alive: 0,
        client_id: ByteString::from(id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: Some(300),
            ..Default::default()
        },
    };
    conn.handle(Packet::Connect(Box::new(connect))).unwrap();
    let ack = match drain(&mut conn).remove(0) {
        Packet::ConnAck(a) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    (conn, ack)
}

/// Decodes everything the connection wrote.
fn drain(conn: &mut Connection) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut buf: BytesMut = conn.out().take_all();
    while let Some(p) = decode(&mut buf, u32::MAX >> 4, ProtocolVersion::V5).unwrap() {
        out.push(p);
    }
    out
}

fn publish(
    conn: &mut Connection,
    topic: &str,
    payload: &'static [u8],
    qos: QoS,
    retain: bool,
    id: u16,
) {
    conn.handle(Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: ByteString::from(topic),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }))
    .unwrap();
}

#[tokio::test]
async fn a_restarted_broker_keeps_sessions_queues_inflight_and_retained() {
    let backend = MemoryBackend::new();
    let (b1, store1, writer1) = broker(&backend);

    let (mut sub, _) = connect(&b1, "sub", true);
    sub.handle(Packet::Subscribe(Subscribe {
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
    }))
    .unwrap();
    assert!(matches!(drain(&mut sub)[0], Packet::SubAck(_)));

    let (mut publ, _) = connect(&b1, "pub", true);
    publish(&mut publ, "t/a", b"one", QoS::AtLeastOnce, false, 1);
    // The subscriber receives "one" but never acknowledges it: it stays in flight.
    sub.fill(1 << 20);
    let first = match drain(&mut sub).remove(0) {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    sub.close(&CloseReason::ConnectionLost);
    drop(sub);
    publish(&mut publ, "t/b", b"two", QoS::AtLeastOnce, false, 2);
    publish(&mut publ, "t/c", b"three", QoS::ExactlyOnce, false, 3);
    publish(&mut publ, "r/x", b"kept", QoS::AtMostOnce, true, 0);
    // The publisher's acknowledgements wait for the store.
    assert!(store1.flush(Duration::from_secs(5)).await);
    publ.release_acks();
    let acks = drain(&mut publ);
    assert!(
        acks.iter()
            .any(|p| matches!(p, Packet::PubAck(a) if a.packet_id == 2))
    );
    assert!(
        acks.iter()
            .any(|p| matches!(p, Packet::PubRec(a) if a.packet_id == 3))
    );
    assert!(store1.flush(Duration::from_secs(5)).await);
    drop(publ);
    store1.close();
    writer1.join();

    // "Restart".
    let snapshot = backend.load();
    let (b2, store2, writer2) = broker(&backend);
    let restored = b2.restore(&snapshot);
    assert_eq!(restored.sessions, 2, "{restored:?}");
    assert_eq!(restored.subscriptions, 1);
    assert_eq!(restored.inflight, 1);
    assert_eq!(restored.queued, 2);
    assert_eq!(restored.retained, 1);

    let (mut sub, ack) = connect(&b2, "sub", false);
    assert!(ack.session_present);
    sub.fill(1 << 20);
    let got: Vec<Publish> = drain(&mut sub)
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
        sub.handle(Packet::PubAck(PubAck::new(p.packet_id.unwrap())))
            .unwrap();
    }
    assert!(store2.flush(Duration::from_secs(5)).await);
    let after = backend.load();
    let stored_sub = after
        .sessions
        .iter()
        .find(|s| &*s.record.key.client_id == "sub")
        .unwrap();
    assert!(stored_sub.queue.is_empty(), "{:?}", stored_sub.queue);
    assert_eq!(after.retained.len(), 1);

    // Retained message comes back on subscribe.
    let (mut other, _) = connect(&b2, "other", true);
    other
        .handle(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: SubscribeProperties::default(),
            filters: vec![(
                ByteString::from_static("r/#"),
                SubscriptionOptions::default(),
            )],
        }))
        .unwrap();
    other.fill(1 << 20);
    let packets = drain(&mut other);
    assert!(
        packets
            .iter()
            .any(|p| matches!(p, Packet::Publish(m) if m.retain && &m.payload[..] == b"kept"))
    );
    store2.close();
    writer2.join();
}

#[tokio::test]
async fn clean_sessions_are_never_stored() {
    let backend = MemoryBackend::new();
    let (b, store, writer) = broker(&backend);
    let mut conn = Connection::new(b.clone(), "127.0.0.1:1".parse().unwrap(), "test");
    let mut c = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 0,
        client_id: ByteString::from_static("clean"),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    conn.handle(Packet::Connect(Box::new(c.clone()))).unwrap();
    assert!(store.flush(Duration::from_secs(5)).await);
    assert!(backend.load().sessions.is_empty());
    conn.close(&CloseReason::ClientDisconnect);
    // A persistent 3.1.1 session is.
    c.clean_start = false;
    c.client_id = ByteString::from_static("kept");
    let mut conn = Connection::new(b.clone(), "127.0.0.1:1".parse().unwrap(), "test");
    conn.handle(Packet::Connect(Box::new(c))).unwrap();
    assert!(store.flush(Duration::from_secs(5)).await);
    assert_eq!(backend.load().sessions.len(), 1);
    store.close();
    writer.join();
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
    let (b, store, writer) = broker(&backend);
    let restored = b.restore(&backend.load());
    assert_eq!(restored.sessions, 0);
    assert_eq!(restored.expired_sessions, 1);
    assert!(store.flush(Duration::from_secs(5)).await);
    assert!(backend.load().sessions.is_empty());
    store.close();
    writer.join();
}

/// Session expiry counts from the disconnect, across a restart: a session whose interval runs
/// out after the restart ends then, a longer one stays.
#[tokio::test]
async fn session_expiry_runs_across_a_restart() {
    use crate::support::{TestBroker, persistent};
    let backend = MemoryBackend::new();
    let b1 = TestBroker::stored(&backend, crate::support::START);
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
    use crate::support::{TestBroker, expiring, persistent, publish_packet};
    let backend = MemoryBackend::new();
    let b1 = TestBroker::stored(&backend, crate::support::START);
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
