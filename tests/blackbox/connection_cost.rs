//! What an idle connection gives back and gets again: a connection releases its read and write
//! buffers once nothing is pending, and takes new ones when bytes arrive; every listener runs
//! one accept loop per worker thread.

use bytes::BytesMut;
use tern_codec::*;

use crate::support::client::publish_packet;
use crate::support::{Client, TestBroker};

/// A subscriber and a publisher that went idle (buffers released after their last write and
/// read) still carry a large packet, then a burst of small ones sent in one write, then a
/// large one again, whole and in order, both ways.
async fn idle_then_large_and_burst(version: ProtocolVersion) {
    let b = TestBroker::start().await;
    let tag = if version.is_v5() { "v5" } else { "v311" };
    let mut sub = Client::connect(b.addr, version, &format!("idle-sub-{tag}")).await;
    let mut publ = Client::connect(b.addr, version, &format!("idle-pub-{tag}")).await;
    let topic = format!("idle/{tag}");
    assert_eq!(
        sub.subscribe(&topic, QoS::AtLeastOnce).await,
        ReasonCode::GRANTED_QOS_1
    );
    // A round trip each: the broker wrote its last answer, so both connections are idle.
    sub.ping().await;
    publ.ping().await;

    // A packet far larger than the first read and than any buffer an idle connection holds
    // (200 KiB: several reads on the way in, a shared payload segment on the way out).
    let large: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    publ.publish(&topic, &large, QoS::AtLeastOnce, false).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.payload.len(), large.len());
    assert!(
        got.payload[..] == large[..],
        "the large payload arrived changed"
    );
    sub.ack(&got).await;

    // A burst: 500 QoS 1 publishes in one write.
    let mut burst = BytesMut::new();
    for i in 0..500u16 {
        let p = publish_packet(
            &topic,
            format!("burst-{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            Some(i + 1),
        );
        encode(&Packet::Publish(p), version, &mut burst).unwrap();
    }
    publ.send_raw(&burst).await;
    let mut acked = 0;
    while acked < 500 {
        match publ.recv().await {
            Packet::PubAck(a) => {
                acked += 1;
                assert_eq!(a.packet_id, acked, "PUBACKs out of order");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    for i in 0..500 {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], format!("burst-{i}").as_bytes());
        sub.ack(&p).await;
    }

    // Idle again, then large again.
    sub.ping().await;
    publ.ping().await;
    publ.publish(&topic, &large, QoS::AtMostOnce, false).await;
    let got = sub.recv_publish().await;
    assert!(
        got.payload[..] == large[..],
        "the second large payload arrived changed"
    );
}

#[tokio::test]
async fn an_idle_connection_takes_a_large_packet_and_a_burst_v311() {
    idle_then_large_and_burst(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn an_idle_connection_takes_a_large_packet_and_a_burst_v5() {
    idle_then_large_and_burst(ProtocolVersion::V5).await;
}

/// On a runtime with four workers the listener runs four accept loops; 200 clients connecting
/// at once all get their CONNACK, their own session, and their messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_connections_across_accept_loops() {
    assert_eq!(tern_net::accept::accept_loops(), 4);
    let b = TestBroker::start().await;
    let addr = b.addr;
    let clients: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let version = if i % 2 == 0 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                let mut c = Client::connect(addr, version, &format!("loops-{i}")).await;
                assert_eq!(
                    c.subscribe(&format!("loops/{i}"), QoS::AtMostOnce).await,
                    ReasonCode::GRANTED_QOS_0
                );
                c
            })
        })
        .collect();
    let mut subs = Vec::new();
    for c in clients {
        subs.push(c.await.unwrap());
    }
    assert_eq!(b.broker().sessions().len(), 200);
    let mut publ = Client::connect(addr, ProtocolVersion::V5, "loops-pub").await;
    for i in 0..200 {
        publ.publish(
            &format!("loops/{i}"),
            format!("m{i}").as_bytes(),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
    }
}
