//! The connection driver over an in-memory stream (`tokio::io::duplex`), no sockets: its
//! timers (keep alive, the CONNECT deadline) in paused tokio time, and the order of packets
//! that arrive together on two connections, on a one-worker multi-thread runtime where
//! scheduling is deterministic.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_broker::{Anonymous, Broker, BrokerConfig, CloseReason};
use tern_codec::*;
use tern_net::{Listener, NetMetrics, Peer, run_connection};
use tern_testclient::{Client, Read, connect_packet};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A connection to `broker` served by a spawned driver task over an in-memory stream: the
/// workspace's raw client on one end, the driver on the other.
fn open(broker: &Arc<Broker>, version: ProtocolVersion) -> (Client, JoinHandle<CloseReason>) {
    let (io, server) = tokio::io::duplex(64 * 1024);
    let peer = Peer {
        addr: "127.0.0.1:1".parse().unwrap(),
        listener: Listener::Mqtt,
    };
    let driver = tokio::spawn(run_connection(
        broker.clone(),
        Arc::new(NetMetrics::default()),
        peer,
        server,
    ));
    (Client::over(Box::new(io), version), driver)
}

/// Connects with keep alive `ka`; expects a successful CONNACK.
async fn connect(
    broker: &Arc<Broker>,
    version: ProtocolVersion,
    id: &str,
    ka: u16,
) -> (Client, JoinHandle<CloseReason>) {
    let (mut c, driver) = open(broker, version);
    let mut connect = connect_packet(version, id, true);
    connect.keep_alive = ka;
    c.send(Packet::Connect(Box::new(connect))).await;
    assert!(matches!(c.recv().await, Packet::ConnAck(a) if a.code == ReasonCode::SUCCESS));
    (c, driver)
}

/// Sends `bytes` a byte every 100 ms (never the last one) until the broker writes or closes.
async fn trickle(c: &mut Client, bytes: &[u8]) -> Read {
    let mut sent = 0;
    loop {
        match c.read(Duration::from_millis(100)).await {
            Read::Timeout if sent + 1 < bytes.len() => {
                c.send_raw(&bytes[sent..=sent]).await;
                sent += 1;
            }
            Read::Timeout => {}
            other => return other,
        }
    }
}

fn broker(config: BrokerConfig) -> Arc<Broker> {
    Broker::new(config, Box::new(Anonymous { cid: 1 }))
}

fn publish(topic: &str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteString::from(topic),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(b"x"),
    })
}

/// MQTT 5 3.1.2.10: a client silent for 1.5 × its keep alive is closed (v5: DISCONNECT 0x8D),
/// not earlier.
#[tokio::test(start_paused = true)]
async fn keep_alive_timeout_closes_after_one_and_a_half_times() {
    let b = broker(BrokerConfig::default());
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (mut c, driver) = connect(&b, v, &format!("ka-{v}"), 1).await;
        let start = Instant::now();
        let d = c.drain_until_closed(Duration::from_secs(60)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert_eq!(
            d.map(|d| d.reason),
            v.is_v5().then_some(ReasonCode::KEEP_ALIVE_TIMEOUT)
        );
        assert!(matches!(
            driver.await.unwrap(),
            CloseReason::KeepAliveTimeout
        ));
    }
}

/// A packet restarts the keep-alive clock; bytes of a packet that never completes do not: a
/// client trickling one is closed at 1.5 × its keep alive (v5: DISCONNECT 0x8D).
#[tokio::test(start_paused = true)]
async fn only_whole_packets_keep_a_connection_alive() {
    let b = broker(BrokerConfig::default());
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (mut c, _) = connect(&b, v, &format!("trickle-{v}"), 1).await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            c.send(Packet::PingReq).await;
            assert!(matches!(c.recv().await, Packet::PingResp));
        }
        // A PUBLISH announcing 200 bytes, trickled: never complete.
        let mut bytes = vec![0x30, 200, 1];
        bytes.extend(std::iter::repeat_n(b'x', 197));
        let start = Instant::now();
        let d = match trickle(&mut c, &bytes).await {
            Read::Packet(Packet::Disconnect(d)) => Some(d.reason),
            Read::Closed => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(d, v.is_v5().then_some(ReasonCode::KEEP_ALIVE_TIMEOUT));
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }
    let m = &b.metrics;
    assert_eq!(tern_broker::Metrics::get(&m.incomplete_packet_timeouts), 2);
    let closes: std::collections::HashMap<_, _> = m.closes().collect();
    assert_eq!(closes["keep_alive_timeout"], 2);
}

/// A connection that sends no CONNECT, or trickles one that never completes, is closed at
/// `mqtt.connect_timeout`.
#[tokio::test(start_paused = true)]
async fn connect_timeout_closes_silent_and_trickling_connections() {
    let b = broker(BrokerConfig {
        connect_timeout: Duration::from_secs(10),
        ..BrokerConfig::default()
    });
    let (mut c, driver) = open(&b, ProtocolVersion::V311);
    let start = Instant::now();
    assert_eq!(c.drain_until_closed(Duration::from_secs(60)).await, None);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(matches!(driver.await.unwrap(), CloseReason::ConnectTimeout));

    let mut raw = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V311,
            "trickle-connect-with-a-long-client-id",
            true,
        ))),
        ProtocolVersion::V311,
        &mut raw,
    )
    .unwrap();
    let (mut c, _) = open(&b, ProtocolVersion::V311);
    let start = Instant::now();
    assert!(matches!(trickle(&mut c, &raw).await, Read::Closed));
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let m = &b.metrics;
    let closes: std::collections::HashMap<_, _> = m.closes().collect();
    assert_eq!(closes["connect_timeout"], 2);
    assert_eq!(tern_broker::Metrics::get(&m.incomplete_packet_timeouts), 1);
}

/// A SUBSCRIBE on one connection and, right after it, a PUBLISH on another, arriving in the
/// same scheduling round: the subscriber gets the message. tokio's LIFO slot would run the
/// publisher's task first (it was woken last); the publish waits one round (see
/// ARCHITECTURE.md, "Order across connections"). One worker removes the race between workers,
/// but not the scheduler's own periodic turns (its global-queue and LIFO-budget checks), which
/// now and then still run the publisher first: order across connections stays best effort,
/// so the test asks for 9 catches in 10, where without the yield every try misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_subscribe_just_before_a_publish_on_another_connection_catches_it() {
    let b = broker(BrokerConfig::default());
    let mut misses = Vec::new();
    for i in 0..10 {
        let (sub, _) = connect(&b, ProtocolVersion::V311, &format!("race-s{i}"), 0).await;
        let (publ, _) = connect(&b, ProtocolVersion::V311, &format!("race-p{i}"), 0).await;
        let topic = format!("race/{i}");
        let mut both = (BytesMut::new(), BytesMut::new());
        encode(
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: SubscribeProperties::default(),
                filters: vec![(topic.as_str().into(), SubscriptionOptions::default())],
            }),
            ProtocolVersion::V311,
            &mut both.0,
        )
        .unwrap();
        encode(&publish(&topic), ProtocolVersion::V311, &mut both.1).unwrap();
        // Both writes complete without yielding, on the worker (as the I/O driver would wake
        // the two tasks when both sockets became readable): the tasks are woken in this order.
        let (mut sub, _publ) = tokio::spawn(async move {
            let (mut sub, mut publ) = (sub, publ);
            sub.send_raw(&both.0).await;
            publ.send_raw(&both.1).await;
            (sub, publ)
        })
        .await
        .unwrap();
        assert!(matches!(sub.recv().await, Packet::SubAck(_)));
        let got = sub.read(Duration::from_secs(1)).await;
        if !matches!(&got, Read::Packet(Packet::Publish(p)) if *p.topic == *topic) {
            misses.push((i, got));
        }
    }
    assert!(misses.len() <= 1, "missed: {misses:?}");
}

/// What an idle TCP connection's task holds: the driver's future, measured on a real socket's
/// type. Bounded so that the state every idle client carries does not grow unnoticed (the
/// connection's boxed parts and the broker's session are not in it).
#[tokio::test]
async fn an_idle_connection_task_stays_small() {
    let broker = Broker::new(BrokerConfig::default(), Box::new(Anonymous { cid: 1 }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, peer_addr) = listener.accept().await.unwrap();
    let peer = Peer {
        addr: peer_addr,
        listener: Listener::Mqtt,
    };
    let task = run_connection(broker, Arc::new(NetMetrics::default()), peer, server);
    let size = std::mem::size_of_val(&task);
    eprintln!("driver future: {size} bytes");
    // What else an idle connection holds, for the README's accounting (not bounded here).
    eprintln!(
        "Connection {} (in the future), Session {} (SessionState {}), Kick {}, Principal {}, OutBuf {}, TcpStream {}, Sleep {}",
        std::mem::size_of::<tern_broker::Connection>(),
        std::mem::size_of::<tern_broker::session::Session>(),
        std::mem::size_of::<tern_broker::session::SessionState>(),
        std::mem::size_of::<tern_broker::session::Kick>(),
        std::mem::size_of::<tern_broker::Principal>(),
        std::mem::size_of::<tern_broker::out::OutBuf>(),
        std::mem::size_of::<tokio::net::TcpStream>(),
        std::mem::size_of::<tokio::time::Sleep>(),
    );
    // 624 bytes before the driver became a struct with the held-back waits in the
    // connection's boxed `Held`; 504 after; 360 once the keep-alive deadline left the task
    // for the broker's deadline watch. tokio's task cell adds about 100 bytes and rounds up
    // to 128: at most 384 here keeps the cell at 512 bytes (it was 640).
    assert!(size <= 384, "the driver's future grew to {size} bytes");
    drop(task);
    drop(client);
}
