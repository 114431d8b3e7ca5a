//! The in-process harness: a broker on a manual clock and test clients that drive a
//! [`Connection`] with packets, as the connection driver would, without sockets. Time moves only
//! when a test calls [`TestBroker::advance`], which fires what fell due at once, so whole
//! protocol exchanges with wills, expiry and delays run in virtual time.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_broker::{
    Anonymous, Authenticator, Broker, BrokerConfig, Clock, CloseReason, Connection, Micros,
    Restored, Signal,
};
use tern_codec::*;
use tern_store::{FsyncPolicy, MemoryBackend, Store, Writer};

/// Where every manual clock starts: 2026-01-01T00:00:00Z.
pub const START: Micros = 1_767_225_600_000_000;

/// A broker on a manual clock, optionally mirroring into an in-memory store.
pub struct TestBroker {
    pub broker: Arc<Broker>,
    pub store: Store,
    writer: Option<Writer>,
    /// What [`TestBroker::stored`] restored.
    pub restored: Restored,
}

impl TestBroker {
    /// A broker of one anonymous account (cid 1) that stores nothing.
    pub fn new() -> TestBroker {
        TestBroker::with(BrokerConfig::default(), Box::new(Anonymous { cid: 1 }))
    }

    pub fn with(config: BrokerConfig, auth: Box<dyn Authenticator>) -> TestBroker {
        TestBroker::with_clock(config, auth, Clock::manual(START))
    }

    /// A broker on `clock` (a manual one: its [`Clock::share`] may drive the authenticator).
    pub fn with_clock(
        config: BrokerConfig,
        auth: Box<dyn Authenticator>,
        clock: Clock,
    ) -> TestBroker {
        let broker = Broker::with_clock(config, auth, Store::disabled(), clock);
        TestBroker {
            broker,
            store: Store::disabled(),
            writer: None,
            restored: Restored::default(),
        }
    }

    /// A broker mirroring into `backend` (`fsync = always`), its clock at `now`; restored from
    /// what `backend` holds.
    pub fn stored(backend: &MemoryBackend, now: Micros) -> TestBroker {
        let (store, writer) = Store::start(Box::new(backend.clone()), FsyncPolicy::Always);
        let broker = Broker::with_clock(
            BrokerConfig::default(),
            Box::new(Anonymous { cid: 1 }),
            store.clone(),
            Clock::manual(now),
        );
        let restored = broker.restore(&backend.load());
        TestBroker {
            broker,
            store,
            writer: Some(writer),
            restored,
        }
    }

    /// Moves the clock forward by `by`, firing the timers that fell due on the way.
    pub fn advance(&self, by: Duration) -> Micros {
        self.broker.advance(by)
    }

    pub fn now(&self) -> Micros {
        self.broker.clock.now()
    }

    /// Waits until the store has everything submitted so far.
    pub async fn flush(&self) {
        assert!(
            self.store.flush(Duration::from_secs(5)).await,
            "store flush"
        );
    }

    /// Flushes and stops the store (a clean shutdown).
    pub async fn stop(mut self) {
        self.flush().await;
        self.store.close();
        if let Some(w) = self.writer.take() {
            w.join();
        }
    }

    /// Connects a v5 client with a clean start.
    pub fn client(&self, id: &str) -> Client {
        let (c, ack) = self.connect(connect_packet(ProtocolVersion::V5, id, true));
        assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
        c
    }

    /// Connects with `connect`; the CONNACK is what the broker answered.
    pub fn connect(&self, connect: Connect) -> (Client, ConnAck) {
        let mut c = Client {
            version: connect.protocol,
            conn: Connection::new(self.broker.clone(), "127.0.0.1:1".parse().unwrap(), "test"),
            closed: None,
            pending: Vec::new(),
        };
        c.send(Packet::Connect(Box::new(connect)));
        let mut got = c.recv_all().into_iter();
        let ack = match got.next() {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        // What a resumed session had queued follows the CONNACK.
        c.pending = got.collect();
        (c, ack)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.store.close();
        if let Some(w) = self.writer.take() {
            w.join();
        }
    }
}

/// A client talking to the broker through a [`Connection`], with no socket between.
pub struct Client {
    pub conn: Connection,
    version: ProtocolVersion,
    /// Why the connection closed, once it did.
    pub closed: Option<CloseReason>,
    /// Packets received and not yet looked at.
    pending: Vec<Packet>,
}

impl Client {
    /// Hands `packet` to the connection; a packet that ends the connection (DISCONNECT, a
    /// protocol error) closes it as the driver would.
    pub fn send(&mut self, packet: Packet) {
        assert!(self.closed.is_none(), "send on a closed connection");
        if let Err(reason) = self.conn.handle(packet) {
            self.close(reason);
        }
    }

    /// Closes the connection with `reason`, as the driver does when it ends.
    pub fn close(&mut self, reason: CloseReason) {
        self.conn.close(&reason);
        self.closed = Some(reason);
    }

    /// The network connection is lost (no DISCONNECT).
    pub fn drop_connection(mut self) {
        self.close(CloseReason::ConnectionLost);
    }

    /// A normal DISCONNECT (with `expiry`, a new Session Expiry Interval).
    pub fn disconnect(mut self, expiry: Option<u32>) -> Option<CloseReason> {
        self.send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: DisconnectProperties {
                session_expiry_interval: expiry,
                ..Default::default()
            },
        }));
        self.closed.take()
    }

    /// Everything the broker has for this client now: acknowledgements, and deliveries the
    /// driver would pull from the outbox. A kick closes the connection, as in the driver.
    pub fn recv_all(&mut self) -> Vec<Packet> {
        if self.closed.is_none() {
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(Signal::Kicked(reason)) = self.conn.kick().poll_signalled(&mut cx) {
                self.close(reason);
            } else {
                self.conn.release_acks();
                self.conn.fill(1 << 20);
            }
        }
        let mut out = std::mem::take(&mut self.pending);
        let mut buf: BytesMut = self.conn.out().take_all();
        while let Some(p) = decode(&mut buf, u32::MAX >> 4, self.version).unwrap() {
            out.push(p);
        }
        out
    }

    /// The PUBLISH packets among what the broker has for this client now, acknowledged.
    pub fn publishes(&mut self) -> Vec<Publish> {
        let got: Vec<Publish> = self
            .recv_all()
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect();
        for p in &got {
            self.ack(p);
        }
        got
    }

    /// Asserts that the broker has nothing for this client.
    pub fn expect_nothing(&mut self) {
        let got = self.recv_all();
        assert!(got.is_empty(), "expected nothing, got {got:?}");
    }

    /// Acknowledges a delivery (PUBACK, or PUBREC then PUBCOMP).
    pub fn ack(&mut self, p: &Publish) {
        let Some(id) = p.packet_id else { return };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(PubAck::new(id))),
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(PubAck::new(id)));
                self.recv_all();
                self.send(Packet::PubComp(PubAck::new(id)));
            }
        }
    }

    /// Subscribes to `filter` and checks the SUBACK; returns retained messages it brought.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<Publish> {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: SubscribeProperties::default(),
            filters: vec![(
                ByteString::from(filter),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        }));
        let mut got = Vec::new();
        let mut acked = false;
        for p in self.recv_all() {
            match p {
                Packet::SubAck(a) => {
                    assert!(a.reasons.iter().all(|r| r.0 < 0x80), "{a:?}");
                    acked = true;
                }
                Packet::Publish(p) => got.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(acked, "no SUBACK");
        for p in &got {
            self.ack(p);
        }
        got
    }

    /// Publishes, and takes what the broker answered at once (an acknowledgement, unless it
    /// waits for the store).
    pub fn publish(&mut self, p: Publish) -> Vec<Packet> {
        self.send(Packet::Publish(p));
        self.recv_all()
    }
}

/// A CONNECT of `version` (keep alive 0).
pub fn connect_packet(version: ProtocolVersion, id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 0,
        client_id: ByteString::from(id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A v5 CONNECT keeping the session for `expiry` seconds.
pub fn persistent(id: &str, expiry: u32) -> Connect {
    let mut c = connect_packet(ProtocolVersion::V5, id, false);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

/// A PUBLISH (packet id 1 for QoS 1/2).
pub fn publish_packet(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Publish {
    publish_with_id(topic, payload, qos, retain, 1)
}

/// A PUBLISH with packet id `id` for QoS 1/2.
pub fn publish_with_id(topic: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: ByteString::from(topic),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A PUBLISH whose Message Expiry Interval is `secs`.
pub fn expiring(topic: &str, payload: &[u8], qos: QoS, retain: bool, secs: u32) -> Publish {
    let mut p = publish_packet(topic, payload, qos, retain);
    p.properties.message_expiry_interval = Some(secs);
    p
}
