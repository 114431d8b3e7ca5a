//! Test support: a real Mosquitto on a free loopback port, a scripted broker built on
//! tern-codec (for what a real broker will not do on demand: forget to acknowledge, stay
//! silent, send garbage), certificates, and bounded waits for events.

#![allow(dead_code)]

mod mosquitto;

use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{ConnAck, Packet, ProtocolVersion, decode, encode};
use tern_mqttc::{ClientOptions, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

// `scripted.rs` uses none of it.
#[allow(unused_imports)]
pub use mosquitto::*;

/// How long a test waits for something that must come.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to conclude that nothing comes.
pub const QUIET: Duration = Duration::from_millis(300);

/// Options for a test: fast back-off, short connect timeout.
pub fn options(uri: &str, client_id: &str, version: ProtocolVersion) -> ClientOptions {
    let mut o = ClientOptions::new(uri, client_id).unwrap();
    o.protocol = version;
    o.backoff.initial = Duration::from_millis(50);
    o.backoff.max = Duration::from_millis(500);
    o.connect_timeout = Duration::from_secs(5);
    o
}

/// The next event that `pick` accepts (others are skipped), within [`WAIT`].
pub async fn next_event<T>(
    rx: &mut mpsc::Receiver<Event>,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("the client task ended");
            if let Some(t) = pick(event) {
                return t;
            }
        }
    })
    .await
    .expect("the expected event did not come in time")
}

pub async fn connected(rx: &mut mpsc::Receiver<Event>) -> bool {
    next_event(rx, |e| match e {
        Event::Connected { session_present } => Some(session_present),
        _ => None,
    })
    .await
}

/// The next message's topic and payload.
pub async fn message(rx: &mut mpsc::Receiver<Event>) -> (String, Vec<u8>, tern_codec::QoS) {
    next_event(rx, |e| match e {
        Event::Message {
            topic,
            payload,
            qos,
            ..
        } => Some((topic.to_string(), payload.to_vec(), qos)),
        _ => None,
    })
    .await
}

/// Polls `f` until it is true, within [`WAIT`].
pub async fn eventually(mut f: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the condition did not become true in time")
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A broker played by the test, one packet at a time, on a loopback port.
pub struct Scripted {
    pub listener: TcpListener,
    pub version: ProtocolVersion,
}

/// One connection accepted by [`Scripted`].
pub struct ScriptedConn {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Scripted {
    pub async fn bind(version: ProtocolVersion) -> Scripted {
        Scripted {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            version,
        }
    }

    pub fn uri(&self) -> String {
        format!("mqtt://{}", self.listener.local_addr().unwrap())
    }

    /// Accepts the next connection and reads its CONNECT (without answering).
    pub async fn accept(&self) -> (ScriptedConn, tern_codec::Connect) {
        let (stream, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("the client connects in time")
            .unwrap();
        let mut conn = ScriptedConn {
            stream,
            buf: BytesMut::new(),
            version: self.version,
        };
        match conn.read().await {
            Some(Packet::Connect(c)) => (conn, *c),
            other => panic!("expected CONNECT, got {other:?}"),
        }
    }

    /// Accepts the next connection and answers its CONNECT with success.
    pub async fn accept_connack(&self) -> ScriptedConn {
        let (mut conn, _) = self.accept().await;
        conn.send(Packet::ConnAck(ConnAck::default())).await;
        conn
    }
}

impl ScriptedConn {
    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, self.version, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet within [`WAIT`]; `None` when the client closed the connection.
    pub async fn read(&mut self) -> Option<Packet> {
        self.read_within(WAIT).await.expect("a packet in time")
    }

    /// The next packet; `Err` when nothing came within `wait`.
    pub async fn read_within(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        timeout(wait, async {
            loop {
                if let Some(p) = decode(&mut self.buf, u32::MAX, self.version).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .map_err(|_| ())
    }

    /// The next packet that is not PINGREQ.
    pub async fn read_skip_pings(&mut self) -> Option<Packet> {
        loop {
            match self.read().await {
                Some(Packet::PingReq) => continue,
                other => return other,
            }
        }
    }
}
