//! Wills in virtual time (CONNECT's Will Delay Interval, MQTT 5 3.1.3.2.2): a delayed will is
//! sent when its delay passes, not before; a reconnect within the delay cancels it; a session
//! that ends first sends it then.

use std::time::Duration;

use bytes::Bytes;
use tern_codec::*;

use crate::support::{TestBroker, persistent};

/// A persistent v5 CONNECT with a QoS 0 will on `topic`, delayed by `delay` seconds.
fn with_will(id: &str, topic: &str, delay: Option<u32>, expiry: u32) -> Connect {
    let mut c = persistent(id, expiry);
    c.will = Some(Will {
        topic: ByteString::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        },
    });
    c
}

fn topics(got: &[Publish]) -> Vec<&str> {
    got.iter().map(|p| &*p.topic).collect()
}

#[test]
fn a_delayed_will_is_sent_when_the_delay_passes() {
    let b = TestBroker::new();
    let mut s = b.client("wdl-s");
    s.subscribe("wdl/#", QoS::AtMostOnce);
    let (c, _) = b.connect(with_will("wdl-1", "wdl/1", Some(1), 60));
    c.drop_connection();
    s.expect_nothing();
    b.advance(Duration::from_millis(999));
    s.expect_nothing();
    let fired = b.advance(Duration::from_millis(1));
    let got = s.publishes();
    assert_eq!(topics(&got), ["wdl/1"]);
    assert_eq!(&got[0].payload[..], b"gone");
    // Stamped when it fired, not when the client left.
    let ts = got[0]
        .properties
        .user_properties
        .iter()
        .find(|(k, _)| k == "timestamp")
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .unwrap();
    assert!(ts * 1e6 >= fired as f64 - 1.0, "{ts} vs {fired}");
    // Sent once.
    b.advance(Duration::from_secs(120));
    s.expect_nothing();
}

#[test]
fn a_reconnect_within_the_delay_cancels_the_will() {
    let b = TestBroker::new();
    let mut s = b.client("wdl-s");
    s.subscribe("wdl/#", QoS::AtMostOnce);
    let (c, _) = b.connect(with_will("wdl-2", "wdl/2", Some(2), 60));
    c.drop_connection();
    b.advance(Duration::from_millis(300));
    let mut again = with_will("wdl-2", "wdl/2", None, 60);
    again.will = None;
    let (_c, ack) = b.connect(again);
    assert!(ack.session_present);
    b.advance(Duration::from_millis(2200));
    s.expect_nothing();
    b.advance(Duration::from_secs(120));
    s.expect_nothing();
}

#[test]
fn a_will_is_sent_when_the_session_ends_before_the_delay() {
    let b = TestBroker::new();
    let mut s = b.client("wse-s");
    s.subscribe("wse/#", QoS::AtMostOnce);
    let (c, _) = b.connect(with_will("wse-1", "wse/1", Some(100), 1));
    c.drop_connection();
    s.expect_nothing();
    b.advance(Duration::from_millis(999));
    s.expect_nothing();
    b.advance(Duration::from_millis(1));
    assert_eq!(topics(&s.publishes()), ["wse/1"]);
    let key = tern_broker::SessionKey {
        cid: 1,
        client_id: "wse-1".into(),
    };
    assert!(b.broker.session(&key).is_none(), "the session ended");
}

#[test]
fn a_will_without_delay_is_sent_at_once_and_a_normal_disconnect_discards_it() {
    let b = TestBroker::new();
    let mut s = b.client("wn-s");
    s.subscribe("wn/#", QoS::AtMostOnce);
    let (c, _) = b.connect(with_will("wn-1", "wn/1", None, 60));
    c.drop_connection();
    assert_eq!(topics(&s.publishes()), ["wn/1"]);
    let (c, _) = b.connect(with_will("wn-2", "wn/2", Some(5), 60));
    assert!(c.disconnect(None).is_some());
    b.advance(Duration::from_secs(10));
    s.expect_nothing();
}

#[test]
fn a_takeover_within_the_delay_cancels_the_first_disconnects_will() {
    // The second connection's own delayed will then runs from its own disconnect.
    let b = TestBroker::new();
    let mut s = b.client("wt-s");
    s.subscribe("wt/#", QoS::AtMostOnce);
    let (c, _) = b.connect(with_will("wt-1", "wt/1", Some(2), 60));
    c.drop_connection();
    b.advance(Duration::from_secs(1));
    let (c, ack) = b.connect(with_will("wt-1", "wt/again", Some(2), 60));
    assert!(ack.session_present);
    c.drop_connection();
    b.advance(Duration::from_millis(1500));
    s.expect_nothing();
    b.advance(Duration::from_millis(500));
    assert_eq!(topics(&s.publishes()), ["wt/again"]);
}
