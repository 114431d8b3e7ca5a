//! A running tern for the API tests: a broker with a directory (top account 1000 and a master
//! token), the REST router served over HTTP on 127.0.0.1, the REST bridge, and an MQTT TCP
//! listener; an HTTP/1.1 client (hyper) and a raw MQTT client (tern-codec).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tern_api::ApiState;
use tern_broker::accounts::{Directory, DirectoryConfig};
use tern_broker::{Broker, BrokerConfig};
use tern_codec::*;
use tern_gw::{Gateway, GwOptions};
use tern_net::{Acceptor, serve_tcp};
use tern_store::{FsyncPolicy, MemoryBackend, Snapshot, Store};
use tern_testclient::{Client, Read};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

pub const TOP: u64 = 1000;
pub use tern_testclient::{QUIET, WAIT};

/// One running tern.
pub struct Env {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub broker: Arc<Broker>,
    pub directory: Arc<Directory>,
    pub gateway: Arc<Gateway>,
    /// The store of [`Env::start_with_store`] (disabled otherwise).
    pub store: Store,
    pub master: String,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(
            Store::disabled(),
            &Snapshot::default(),
            GwOptions::default(),
            None,
        )
        .await
    }

    /// A tern whose broker, directory and devices layer keep their state in an in-memory
    /// store (`backend`), so that a second `Env` over the same backend is a restart.
    pub async fn start_with_store(backend: &MemoryBackend, gw: GwOptions) -> Env {
        let snapshot = backend.load();
        let (store, _writer) = Store::start(Box::new(backend.clone()), FsyncPolicy::Always);
        Env::start_with(store, &snapshot, gw, None).await
    }

    /// Another tern over the same store, keeping this one's master token (a restart; stop
    /// using this one).
    pub async fn restart(&self, backend: &MemoryBackend, gw: GwOptions) -> Env {
        self.broker.shut_down();
        let snapshot = backend.load();
        let (store, _writer) = Store::start(Box::new(backend.clone()), FsyncPolicy::Always);
        Env::start_with(store, &snapshot, gw, Some(self.master.clone())).await
    }

    async fn start_with(
        store: Store,
        snapshot: &Snapshot,
        gw: GwOptions,
        master: Option<String>,
    ) -> Env {
        let directory = Directory::load(snapshot, store.clone(), DirectoryConfig::default());
        let master = directory
            .bootstrap(TOP, None)
            .expect("bootstrap")
            .map(|t| t.key)
            .or(master)
            .expect("a new master token");
        let broker = if store.enabled() {
            let b = Broker::with_store(
                BrokerConfig::default(),
                Box::new(directory.clone()),
                store.clone(),
            );
            b.restore(snapshot);
            b
        } else {
            Broker::new(BrokerConfig::default(), Box::new(directory.clone()))
        };
        let gateway = Gateway::new(
            broker.clone(),
            directory.clone(),
            store.clone(),
            snapshot,
            gw,
        );
        gateway.publish_all();
        tokio::spawn(gateway.run_mqtt_channels());
        tokio::spawn(gateway.run_account_logs());
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http_addr = http.local_addr().expect("addr");
        // The plain listener, as the daemon tells it (a channel's `uri` names it).
        let mut options = tern_api::ApiOptions::default();
        options.region.http = Some(http_addr);
        let state =
            ApiState::with_options(broker.clone(), directory.clone(), gateway.clone(), options);
        tern_api::install_bridge(&broker, state.clone());
        tern_api::publish_state(&state);
        let app = tern_api::router(state);
        tokio::spawn(async move {
            let _ = axum::serve(
                http,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        let mqtt = TcpListener::bind("127.0.0.1:0").await.expect("bind mqtt");
        let mqtt_addr = mqtt.local_addr().expect("addr");
        tokio::spawn(serve_tcp(
            mqtt,
            Acceptor::new(broker.clone(), 1000, TaskTracker::new()),
        ));
        Env {
            http: http_addr,
            mqtt: mqtt_addr,
            broker,
            directory,
            gateway,
            store,
            master,
        }
    }

    /// A request with the master token.
    pub async fn master(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.call(
            method,
            path,
            Some(&self.master),
            &[],
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// A request with any token, extra headers and raw body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.call_from(None, method, path, key, headers, body).await
    }

    /// Like `call`, from a chosen loopback source address.
    pub async fn call_from(
        &self,
        source: Option<std::net::IpAddr>,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let stream = match source {
            None => TcpStream::connect(self.http).await.expect("connect http"),
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
                socket.connect(self.http).await.expect("connect http")
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(key) = key {
            req = req.header("authorization", format!("FlespiToken {key}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let resp = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// Creates a token and returns its key.
    pub async fn token(&self, item: Value) -> String {
        let r = self.master("POST", "/platform/tokens", Some(item)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["result"][0]["key"]
            .as_str()
            .expect("key")
            .to_string()
    }

    /// Creates a sub-account of `parent` with this id.
    pub async fn subaccount(&self, id: u64, parent: u64, name: &str) {
        let r = self
            .master(
                "POST",
                "/platform/subaccounts",
                Some(json!({"id": id, "cid": parent, "name": name})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// A connected MQTT client with this token.
    pub async fn mqtt(&self, version: ProtocolVersion, client_id: &str, key: &str) -> Mqtt {
        Mqtt::connect(
            self.mqtt,
            version,
            client_id,
            key,
            ConnectProperties::default(),
        )
        .await
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn result(&self) -> Vec<Value> {
        self.json()["result"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no result: {}", self.text()))
    }

    /// The ids of the result items.
    pub fn ids(&self) -> Vec<u64> {
        self.result()
            .iter()
            .map(|v| v["id"].as_u64().expect("id"))
            .collect()
    }

    /// The first error's reason; panics without one.
    pub fn reason(&self) -> String {
        self.json()["errors"][0]["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {}", self.text()))
            .to_string()
    }

    /// Asserts an error answer with this status whose envelope matches.
    pub fn expect_error(&self, status: u16, reason_part: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        let errors = v["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors: {}", self.text()));
        assert!(!errors.is_empty());
        assert!(
            errors
                .iter()
                .all(|e| e["code"].is_u64() && e["reason"].is_string()),
            "{v}"
        );
        assert!(
            errors.iter().any(|e| e["reason"]
                .as_str()
                .is_some_and(|r| r.contains(reason_part))),
            "no reason with `{reason_part}`: {v}"
        );
    }
}

/// An MQTT client for REST-over-MQTT tests: the workspace's raw client (`tern-testclient`)
/// with QoS 1 helpers that set aside deliveries arriving while they wait.
pub struct Mqtt {
    client: Client,
    pub version: ProtocolVersion,
    next_id: u16,
    /// Publishes that arrived while waiting for something else.
    pending: std::collections::VecDeque<Publish>,
}

impl Mqtt {
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        key: &str,
        properties: ConnectProperties,
    ) -> Mqtt {
        let mut connect = connect_packet(version, client_id, key);
        connect.properties = properties;
        Mqtt::open(addr, connect).await
    }

    /// Sends `connect` and expects a successful CONNACK.
    pub async fn open(addr: SocketAddr, connect: Connect) -> Mqtt {
        let (c, code) = Mqtt::handshake(addr, connect).await;
        assert_eq!(code, ReasonCode::SUCCESS, "CONNACK {code:?}");
        c
    }

    /// Sends `connect` and returns the CONNACK's code, whatever it is.
    pub async fn connack_code(addr: SocketAddr, connect: Connect) -> ReasonCode {
        Mqtt::handshake(addr, connect).await.1
    }

    /// Opens a connection, sends `connect` and reads the CONNACK.
    async fn handshake(addr: SocketAddr, connect: Connect) -> (Mqtt, ReasonCode) {
        let mut c = Mqtt {
            client: Client::open(addr, connect.protocol).await,
            version: connect.protocol,
            next_id: 0,
            pending: Default::default(),
        };
        c.send(Packet::Connect(Box::new(connect))).await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => (c, ack.code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A clean DISCONNECT, then waits for the broker to close.
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default())).await;
        while self.recv_within(WAIT).await.is_some() {}
    }

    /// Reads until the connection closes; returns the DISCONNECT reason if one came.
    pub async fn closed(&mut self) -> Option<ReasonCode> {
        let mut reason = None;
        loop {
            match self.recv().await {
                Some(Packet::Disconnect(d)) => reason = Some(d.reason),
                Some(_) => {}
                None => return reason,
            }
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        self.client.send(packet).await;
    }

    /// The next packet within `WAIT`; `None` when the connection closed or nothing came.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        match self.client.read(wait).await {
            Read::Packet(p) => Some(p),
            Read::Closed | Read::Timeout => None,
        }
    }

    /// The next PUBLISH (acknowledged when QoS 1), skipping other packets; `None` if none comes
    /// within `wait`.
    pub async fn publish_within(&mut self, wait: Duration) -> Option<Publish> {
        if let Some(p) = self.pending.pop_front() {
            return Some(p);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await? {
                Packet::Publish(p) => {
                    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                        self.send(Packet::PubAck(PubAck::new(id))).await;
                    }
                    return Some(p);
                }
                _ => continue,
            }
        }
    }

    pub async fn next_publish(&mut self) -> Publish {
        self.publish_within(WAIT).await.expect("a PUBLISH")
    }

    pub async fn expect_nothing(&mut self) {
        if let Some(p) = self.publish_within(QUIET).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    pub async fn subscribe(&mut self, filter: &str) {
        self.next_id += 1;
        let opts = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        let sub = Subscribe {
            packet_id: self.next_id,
            properties: SubscribeProperties::default(),
            filters: vec![(ByteString::from(filter), opts)],
        };
        self.send(Packet::Subscribe(sub)).await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => {
                assert!(ack.reasons.iter().all(|r| r.0 < 0x80), "SUBACK {ack:?}")
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 1 and waits for PUBACK.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        properties: PublishProperties,
    ) {
        self.publish_reason(topic, payload, retain, properties)
            .await;
    }

    /// Publishes at QoS 1 and returns the PUBACK's reason code.
    pub async fn publish_reason(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        properties: PublishProperties,
    ) -> ReasonCode {
        self.next_id += 1;
        let id = self.next_id;
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain,
            topic: ByteString::from(topic),
            packet_id: Some(id),
            properties,
            payload: Bytes::copy_from_slice(payload),
        };
        self.send(Packet::Publish(p)).await;
        loop {
            match self.recv().await {
                Some(Packet::PubAck(a)) if a.packet_id == id => return a.reason,
                Some(Packet::Publish(p)) => {
                    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                        self.send(Packet::PubAck(PubAck::new(id))).await;
                    }
                    self.pending.push_back(p);
                }
                Some(_) => continue,
                None => panic!("no PUBACK"),
            }
        }
    }
}

/// A CONNECT with the token as user name.
pub fn connect_packet(version: ProtocolVersion, client_id: &str, key: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteString::from(client_id),
        will: None,
        username: Some(ByteString::from(key)),
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// The value of a user property.
pub fn user_property<'a>(p: &'a Publish, name: &str) -> Option<&'a str> {
    p.properties
        .user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| &**v)
}

/// Percent-encodes a topic for a path segment (like encodeURIComponent).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
