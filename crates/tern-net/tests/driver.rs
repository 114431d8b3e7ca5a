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
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The client's end of a connection served by the driver.
struct Client {
    io: DuplexStream,
    buf: BytesMut,
    version: ProtocolVersion,
    driver: JoinHandle<CloseReason>,
}

impl Client {
    /// Opens a connection to `broker`, served by a spawned driver task.
    fn open(broker: &Arc<Broker>, version: ProtocolVersion) -> Client {
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
        Client {
            io,
            buf: BytesMut::new(),
            version,
            driver,
        }
    }

    async fn connect(broker: &Arc<Broker>, version: ProtocolVersion, id: &str, ka: u16) -> Client {
        let mut c = Client::open(broker, version);
        c.send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive: ka,
            client_id: ByteString::from(id),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })))
        .await;
        assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
        c
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, self.version, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    /// The next packet; `None` when the broker closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, u32::MAX >> 4, self.version).unwrap() {
                return Some(p);
            }
            if self.io.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// Reads until the broker closes; returns its DISCONNECT, if it sent one.
    async fn closed(&mut self) -> Option<Disconnect> {
        let mut last = None;
        while let Some(p) = self.recv().await {
            if let Packet::Disconnect(d) = p {
                last = Some(d);
            }
        }
        last
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
        let mut c = Client::connect(&b, v, &format!("ka-{v}"), 1).await;
        let start = Instant::now();
        let d = c.closed().await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert_eq!(
            d.map(|d| d.reason),
            v.is_v5().then_some(ReasonCode::KEEP_ALIVE_TIMEOUT)
        );
        assert!(matches!(
            c.driver.await.unwrap(),
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
        let mut c = Client::connect(&b, v, &format!("trickle-{v}"), 1).await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            c.send(&Packet::PingReq).await;
            assert_eq!(c.recv().await, Some(Packet::PingResp));
        }
        // A PUBLISH announcing 200 bytes, trickled a byte every 100 ms: never complete.
        let mut bytes = vec![0x30, 200, 1];
        bytes.extend(std::iter::repeat_n(b'x', 197));
        let start = Instant::now();
        let mut sent = 0;
        let d = loop {
            tokio::select! {
                p = c.recv() => break p,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    c.io.write_all(&bytes[sent..=sent]).await.unwrap();
                    sent += 1;
                }
            }
        };
        let d = match d {
            Some(Packet::Disconnect(d)) => Some(d.reason),
            None => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(d, v.is_v5().then_some(ReasonCode::KEEP_ALIVE_TIMEOUT));
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        assert!(sent < bytes.len());
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
    let mut c = Client::open(&b, ProtocolVersion::V311);
    let start = Instant::now();
    assert_eq!(c.closed().await, None);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(matches!(
        c.driver.await.unwrap(),
        CloseReason::ConnectTimeout
    ));

    let mut raw = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 0,
            client_id: ByteString::from("trickle-connect-with-a-long-client-id"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })),
        ProtocolVersion::V311,
        &mut raw,
    )
    .unwrap();
    let mut c = Client::open(&b, ProtocolVersion::V311);
    let start = Instant::now();
    let mut sent = 0;
    loop {
        tokio::select! {
            p = c.recv() => {
                assert_eq!(p, None);
                break;
            }
            // Never the last byte.
            _ = tokio::time::sleep(Duration::from_millis(100)), if sent + 1 < raw.len() => {
                c.io.write_all(&raw[sent..=sent]).await.unwrap();
                sent += 1;
            }
        }
    }
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let m = &b.metrics;
    let closes: std::collections::HashMap<_, _> = m.closes().collect();
    assert_eq!(closes["connect_timeout"], 2);
    assert_eq!(tern_broker::Metrics::get(&m.incomplete_packet_timeouts), 1);
}

/// A SUBSCRIBE on one connection and, right after it, a PUBLISH on another, arriving in the
/// same scheduling round: the subscriber gets the message. tokio's LIFO slot would run the
/// publisher's task first (it was woken last); the publish waits one round (see
/// ARCHITECTURE.md, "Order across connections"). One worker makes the order deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_subscribe_just_before_a_publish_on_another_connection_catches_it() {
    let b = broker(BrokerConfig::default());
    for i in 0..10 {
        let mut sub = Client::connect(&b, ProtocolVersion::V311, &format!("race-s{i}"), 0).await;
        let publ = Client::connect(&b, ProtocolVersion::V311, &format!("race-p{i}"), 0).await;
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
        let (mut sub_io, mut publ_io) = (sub.io, publ.io);
        let (sub_io, _publ_io) = tokio::spawn(async move {
            sub_io.write_all(&both.0).await.unwrap();
            publ_io.write_all(&both.1).await.unwrap();
            (sub_io, publ_io)
        })
        .await
        .unwrap();
        sub.io = sub_io;
        assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
        let got = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await;
        assert!(
            matches!(&got, Ok(Some(Packet::Publish(p))) if *p.topic == *topic),
            "try {i}: {got:?}"
        );
    }
}
