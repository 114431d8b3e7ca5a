//! Overload: what congested subscribers cost a publisher, and the broker-wide queue budget.
//! Clients that send a packet so slowly that it never completes are tested in paused time:
//! `crates/tern-net/tests/driver.rs`.

use std::time::{Duration, Instant};

use tern_codec::*;

use crate::support::client::connect_packet;
use crate::support::{Client, TestBroker, http, loopback};

/// A v5 subscriber that takes one QoS 1 message and never acknowledges it: everything after
/// the first waits in its outbox.
async fn stuck_subscriber(b: &TestBroker, id: &str, filter: &str) -> Client {
    let mut c = connect_packet(ProtocolVersion::V5, id, true);
    c.properties.receive_maximum = Some(1);
    let (mut s, _) = Client::connect_with(b.addr, c).await;
    s.subscribe(filter, QoS::AtLeastOnce).await;
    s
}

/// Five congested subscribers hold a publisher back for one `backpressure_timeout_ms`, not five
/// of them, and a healthy subscriber of the same topic gets every message meanwhile.
#[tokio::test]
async fn congested_subscribers_hold_a_publisher_back_once_not_once_each() {
    const TIMEOUT_MS: u64 = 800;
    const STUCK: usize = 5;
    let b = TestBroker::with(|c| {
        c.session.backpressure_messages = 5;
        c.session.backpressure_timeout_ms = TIMEOUT_MS;
    })
    .await;
    let mut stuck = Vec::new();
    for i in 0..STUCK {
        stuck.push(stuck_subscriber(&b, &format!("bpn-stuck-{i}"), "bpn/t").await);
    }
    let mut healthy = Client::connect(b.addr, ProtocolVersion::V311, "bpn-healthy").await;
    healthy.subscribe("bpn/t", QoS::AtMostOnce).await;
    let mut p = Client::connect(b.addr, ProtocolVersion::V311, "bpn-pub").await;

    let total = 30u32;
    let started = Instant::now();
    // QoS 1, each acknowledged before the next is sent: a message read while the publisher
    // is held back waits in its socket, not in a buffer the broker already read.
    for i in 0..total {
        p.publish("bpn/t", &i.to_be_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    for i in 0..total {
        let m = healthy.recv_publish().await;
        assert_eq!(&m.payload[..], &i.to_be_bytes(), "in order, none lost");
    }
    let elapsed = started.elapsed();
    let m = &b.broker().metrics;
    assert!(
        tern_broker::Metrics::get(&m.backpressure_pauses) > 0,
        "the stuck subscribers congested"
    );
    // Once per congested subscriber would be 5 × 0.8 s at least; once for all of them, 0.8 s.
    assert!(
        elapsed < Duration::from_millis(3 * TIMEOUT_MS),
        "the publisher was held back {elapsed:?}"
    );
    drop(stuck);
}

/// The `tern_queued_bytes` gauge from `/metrics`.
async fn queued_bytes(b: &TestBroker) -> f64 {
    let res = http::get(b.http(), "/metrics", &[]).await;
    assert_eq!(res.status, 200);
    metric(&res.body, "tern_queued_bytes")
}

fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{series} is not a number"))
}

/// Subscribers that never read cannot take the broker past `session.max_total_queued_bytes`:
/// the largest queues are dropped first and their clients closed as slow consumers (0x97);
/// the smaller ones stay connected.
#[tokio::test]
async fn the_total_queue_budget_drops_the_largest_queues_first() {
    const BUDGET: usize = 256 * 1024;
    let b = TestBroker::with(|c| {
        c.listeners.http = Some(loopback());
        c.mqtt.max_packet_size = 64 * 1024;
        c.session.max_total_queued_bytes = Some(BUDGET);
        // No backpressure: only the budgets decide.
        c.session.backpressure_messages = 1_000_000;
        c.session.backpressure_bytes = 1 << 30;
    })
    .await;
    // Two large queues (every message) and eight small ones (small messages only).
    let mut big = Vec::new();
    for i in 0..2 {
        big.push(stuck_subscriber(&b, &format!("tb-big-{i}"), "tb/#").await);
    }
    let mut small = Vec::new();
    for i in 0..8 {
        small.push(stuck_subscriber(&b, &format!("tb-small-{i}"), "tb/small/#").await);
    }
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "tb-pub").await;
    // About 16 KB a round: the first large queue goes at round 17, the second at round 25;
    // the small ones together stay under the budget until round 46.
    for round in 0..36 {
        p.publish("tb/big/x", &[1u8; 4096], QoS::AtLeastOnce, false)
            .await;
        p.publish("tb/small/x", &[2u8; 256], QoS::AtLeastOnce, false)
            .await;
        if round % 5 == 4 {
            let queued = queued_bytes(&b).await;
            assert!(
                queued <= BUDGET as f64,
                "round {round}: {queued} bytes queued, over the budget"
            );
            assert!(queued > 0.0);
        }
    }
    for mut s in big {
        let d = s.expect_closed().await.expect("DISCONNECT");
        assert_eq!(d.reason, ReasonCode::QUOTA_EXCEEDED);
    }
    for s in &mut small {
        // The one message in flight, then nothing: still connected.
        s.ping().await;
    }
    let m = &b.broker().metrics;
    assert!(tern_broker::Metrics::get(&m.budget_evictions) >= 2);
    assert!(m.drops(tern_broker::DropReason::TotalOverflow) > 0);
    let res = http::get(b.http(), "/metrics", &[]).await;
    assert!(metric(&res.body, "tern_queue_budget_evictions_total") >= 2.0);
    assert!(metric(&res.body, "tern_queued_bytes") <= BUDGET as f64);
    p.ping().await; // the publisher is unaffected
}
