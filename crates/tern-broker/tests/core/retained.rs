//! Retained messages in virtual time: one whose Message Expiry Interval passed is no longer
//! sent to new subscribers, and the periodic sweep removes it from the tree.

use std::time::Duration;

use tern_codec::*;

use crate::support::{TestBroker, expiring};

#[test]
fn a_retained_message_expires() {
    let b = TestBroker::new();
    let mut p = b.client("exp-p");
    p.publish(expiring("exp/t", b"short", QoS::AtMostOnce, true, 1));
    p.publish(expiring("exp/u", b"long", QoS::AtMostOnce, true, 100));
    let mut s = b.client("exp-s1");
    let got = s.subscribe("exp/u", QoS::AtMostOnce);
    // flespi does not count the interval down on delivery of a retained message (docs/flespi.md#publishing).
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.message_expiry_interval, Some(100));
    b.advance(Duration::from_millis(999));
    let mut s = b.client("exp-s2");
    assert_eq!(s.subscribe("exp/t", QoS::AtMostOnce).len(), 1, "not yet");
    b.advance(Duration::from_millis(1));
    let mut s = b.client("exp-s3");
    assert!(s.subscribe("exp/t", QoS::AtMostOnce).is_empty(), "expired");
    s.expect_nothing();
    let mut s = b.client("exp-s4");
    assert_eq!(s.subscribe("exp/#", QoS::AtMostOnce).len(), 1);
}

#[test]
fn the_sweep_removes_expired_retained_messages() {
    let b = TestBroker::new();
    // The first sweep runs on the first tick; the next one 30 s later.
    b.advance(Duration::ZERO);
    let mut p = b.client("sw-p");
    p.publish(expiring("sw/t", b"short", QoS::AtMostOnce, true, 1));
    p.publish(expiring("sw/u", b"long", QoS::AtMostOnce, true, 100));
    let kept = |b: &TestBroker| -> Vec<String> {
        // At time 0 nothing counts as expired: this lists what the tree still holds.
        b.broker
            .retained_matching(1, "sw/#", 0)
            .iter()
            .map(|m| m.topic.to_string())
            .collect()
    };
    b.advance(Duration::from_secs(29));
    assert_eq!(kept(&b).len(), 2, "expired but not swept yet");
    b.advance(Duration::from_secs(1));
    assert_eq!(kept(&b), ["sw/u"]);
}
