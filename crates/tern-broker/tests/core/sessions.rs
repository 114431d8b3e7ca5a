//! Session expiry in virtual time (CONNECT and DISCONNECT's Session Expiry Interval, MQTT 5
//! 3.1.2.11, 3.14.2.2.2), and what a session queues while its client is away: in order, less
//! the messages whose Message Expiry Interval ran out, the rest with the time they have left.

use std::time::Duration;

use tern_broker::SessionKey;
use tern_codec::*;

use crate::support::{TestBroker, expiring, persistent, publish_packet};

fn key(id: &str) -> SessionKey {
    SessionKey {
        cid: 1,
        client_id: id.into(),
    }
}

#[test]
fn a_session_ends_when_its_expiry_interval_passes() {
    let b = TestBroker::new();
    let (mut s, _) = b.connect(persistent("expiring", 1));
    s.subscribe("e/t", QoS::AtLeastOnce);
    assert!(s.disconnect(None).is_some());
    b.advance(Duration::from_millis(999));
    assert!(b.broker.session(&key("expiring")).is_some(), "not yet");
    b.advance(Duration::from_millis(1));
    assert!(b.broker.session(&key("expiring")).is_none(), "expired");
    let (_s, ack) = b.connect(persistent("expiring", 1));
    assert!(!ack.session_present, "the session expired");
}

#[test]
fn a_reconnect_keeps_the_session_and_a_new_disconnect_starts_over() {
    let b = TestBroker::new();
    let (c, _) = b.connect(persistent("back", 2));
    c.drop_connection();
    b.advance(Duration::from_millis(1500));
    let (c, ack) = b.connect(persistent("back", 2));
    assert!(ack.session_present);
    c.drop_connection();
    // The first disconnect's deadline (2 s after it) passes: the session stays.
    b.advance(Duration::from_millis(1000));
    assert!(b.broker.session(&key("back")).is_some());
    b.advance(Duration::from_millis(1000));
    assert!(b.broker.session(&key("back")).is_none());
}

#[test]
fn disconnect_may_extend_session_expiry() {
    let b = TestBroker::new();
    let (s, _) = b.connect(persistent("extend", 1));
    assert!(s.disconnect(Some(60)).is_some());
    b.advance(Duration::from_millis(1500));
    let (s, ack) = b.connect(persistent("extend", 60));
    assert!(ack.session_present);
    assert!(s.disconnect(None).is_some());
    b.advance(Duration::from_secs(60));
    assert!(b.broker.session(&key("extend")).is_none());
}

#[test]
fn queued_messages_keep_their_order_and_expire() {
    let b = TestBroker::new();
    let (mut s, _) = b.connect(persistent("order", 60));
    s.subscribe("o/t", QoS::AtLeastOnce);
    assert!(s.disconnect(None).is_some());
    let mut p = b.client("order-pub");
    p.publish(expiring("o/t", b"gone", QoS::AtLeastOnce, false, 1));
    for i in 0..20 {
        p.publish(publish_packet(
            "o/t",
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        ));
    }
    b.advance(Duration::from_millis(1100));
    let (mut s, ack) = b.connect(persistent("order", 60));
    assert!(ack.session_present);
    let got: Vec<String> = s
        .publishes()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("{i}")).collect();
    assert_eq!(got, want);
    s.expect_nothing();
}

#[test]
fn a_queued_message_carries_the_expiry_it_has_left() {
    let b = TestBroker::new();
    let (mut s, _) = b.connect(persistent("left", 60));
    s.subscribe("l/t", QoS::AtLeastOnce);
    assert!(s.disconnect(None).is_some());
    let mut p = b.client("left-pub");
    p.publish(expiring("l/t", b"x", QoS::AtLeastOnce, false, 10));
    b.advance(Duration::from_millis(3500));
    let (mut s, _) = b.connect(persistent("left", 60));
    let got = s.publishes();
    assert_eq!(got.len(), 1);
    // 6.5 s left, rounded up.
    assert_eq!(got[0].properties.message_expiry_interval, Some(7));
}

#[test]
fn advance_on_the_wall_clock_does_what_is_due_and_returns() {
    let b = TestBroker::with_clock(
        tern_broker::BrokerConfig::default(),
        Box::new(tern_broker::Anonymous { cid: 1 }),
        tern_broker::Clock::default(),
    );
    let (c, _) = b.connect(persistent("wall", 60));
    c.drop_connection();
    // The expiry deadline (in 60 s) falls within the hour asked for, but the wall clock does
    // not jump: advance returns at once and the session stays.
    let before = b.now();
    let now = b.advance(Duration::from_secs(3600));
    assert!(now >= before && now < before + 30_000_000);
    assert!(b.broker.session(&key("wall")).is_some());
}

/// Cluster mode resends what a session's former node had in flight (`fabric.rs`): a message
/// a replay routes with the packet id it had there goes out with DUP=1 under that id; the
/// others with DUP=0 and ids that do not meet it.
#[test]
fn replayed_messages_in_flight_elsewhere_go_out_again_with_dup() {
    let b = TestBroker::new();
    let (mut s, _) = b.connect(persistent("dup", 60));
    s.subscribe("d/#", QoS::AtLeastOnce);
    let session = b.broker.session(&key("dup")).unwrap();
    let msg = |payload: &'static str, timestamp| {
        std::sync::Arc::new(tern_broker::Message::plain(
            1,
            "d/t",
            bytes::Bytes::from_static(payload.as_bytes()),
            QoS::AtLeastOnce,
            timestamp,
        ))
    };
    // The next id here would be 1: the one in flight elsewhere keeps it.
    assert!(
        b.broker
            .route_replayed(&session, &msg("again", 10), Some((1, false)))
    );
    assert!(b.broker.route_replayed(&session, &msg("first", 11), None));
    let got = s.publishes();
    let seen: Vec<(&[u8], bool, Option<u16>)> = got
        .iter()
        .map(|p| (&p.payload[..], p.dup, p.packet_id))
        .collect();
    assert_eq!(seen[0], (&b"again"[..], true, Some(1)));
    assert_eq!((seen[1].0, seen[1].1), (&b"first"[..], false));
    assert_ne!(seen[1].2, Some(1), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// A QoS 2 message whose PUBREC the session's former node had (cluster mode) gets its PUBREL
/// again under its packet id, not the PUBLISH ([MQTT-4.4.0-1]); the client's PUBCOMP
/// completes it, and the next message goes out as usual.
#[test]
fn a_replayed_qos2_message_released_elsewhere_gets_its_pubrel_again() {
    let b = TestBroker::new();
    let (mut s, _) = b.connect(persistent("rel", 60));
    s.subscribe("r/#", QoS::ExactlyOnce);
    let session = b.broker.session(&key("rel")).unwrap();
    let msg = |payload: &'static str, timestamp| {
        std::sync::Arc::new(tern_broker::Message::plain(
            1,
            "r/t",
            bytes::Bytes::from_static(payload.as_bytes()),
            QoS::ExactlyOnce,
            timestamp,
        ))
    };
    assert!(
        b.broker
            .route_replayed(&session, &msg("released", 10), Some((7, true)))
    );
    let got = s.recv_all();
    assert!(
        matches!(got.as_slice(), [Packet::PubRel(r)] if r.packet_id == 7),
        "a PUBREL for 7 and no PUBLISH: {got:?}"
    );
    s.send(Packet::PubComp(PubAck::new(7)));
    assert!(b.broker.route_replayed(&session, &msg("next", 11), None));
    let got = s.publishes();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(&got[0].payload[..], b"next");
    assert!(!got[0].dup);
}
