//! MQTT over WebSocket on the HTTP listeners: the upgrade on any path, subprotocols, frames
//! (a packet across frames, packets sharing a frame, text and over-size frames), real clients
//! (MQTT.js on `/` and `/mqtt`, paho-mqtt) over ws and wss, and MQTT behaving the same on all
//! four listeners, shutdown included.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tern_codec::*;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::client::{connect_packet, publish_packet, user_property};
use crate::support::process::{Daemon, client_script};
use crate::support::transport::{self, Transport};
use crate::support::{Client, TestBroker, TestCerts, WAIT, eventually, http};

#[tokio::test]
async fn subprotocol_answer_is_one_that_was_offered() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let cases: [(Option<&str>, Option<&str>); 6] = [
        (Some("mqtt"), Some("mqtt")),
        (Some("mqttv3.1"), Some("mqttv3.1")),
        (Some("mqttv3.1, mqtt"), Some("mqtt")),
        (Some("foo,mqttv3.1"), Some("mqttv3.1")),
        (None, None),
        (Some("graphql-ws"), None),
    ];
    for (offer, answer) in cases {
        let res = http::upgrade(b.http(), "/mqtt", offer).await;
        assert_eq!(res.status, 101, "offer {offer:?}");
        assert_eq!(
            res.header("sec-websocket-protocol"),
            answer,
            "offer {offer:?}"
        );
        assert_eq!(
            res.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "RFC 6455 sample key"
        );
    }
    let res = http::raw(
        b.http(),
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        true,
    )
    .await;
    assert_eq!(res.status, 426);
    assert_eq!(res.header("sec-websocket-version"), Some("13"));
}

#[tokio::test]
async fn any_path_carries_mqtt() {
    let b = TestBroker::with_listeners(|_| {}).await;
    for (i, path) in ["/", "/mqtt", "/ws/some/deep/path?token=x", "/health"]
        .into_iter()
        .enumerate()
    {
        for protocols in [&["mqtt"][..], &[]] {
            let io = transport::ws_tcp(b.http(), path, protocols).await;
            let mut c = Client::connect_over(
                io,
                ProtocolVersion::V5,
                &format!("path-{i}-{}", protocols.len()),
            )
            .await;
            c.ping().await;
            c.disconnect().await;
        }
    }
}

/// A WebSocket client that controls every frame.
struct RawWs {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl RawWs {
    async fn open(addr: std::net::SocketAddr, version: ProtocolVersion) -> RawWs {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        RawWs {
            ws,
            buf: BytesMut::new(),
            version,
        }
    }

    fn encode(&self, packets: &[Packet]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for p in packets {
            encode(p, self.version, &mut out).unwrap();
        }
        out.to_vec()
    }

    async fn send(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next MQTT packet, or the close frame that ended the connection.
    async fn next(&mut self) -> Result<Packet, Option<CloseFrame>> {
        loop {
            if let Some(p) = decode(&mut self.buf, u32::MAX >> 4, self.version).unwrap() {
                return Ok(p);
            }
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("in time")
            {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Close(frame))) => return Err(frame),
                Some(Ok(other)) => panic!("unexpected {other:?}"),
                Some(Err(e)) => panic!("websocket error {e}"),
                None => return Err(None),
            }
        }
    }

    async fn packet(&mut self) -> Packet {
        self.next().await.expect("a packet")
    }
}

#[tokio::test]
async fn a_packet_spans_frames_and_a_frame_holds_packets() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let mut ws = RawWs::open(b.http(), ProtocolVersion::V5).await;
    let connect = ws.encode(&[Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "frames",
        true,
    )))]);
    // CONNECT in three frames, one of them a single byte.
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[..1])))
        .await;
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[1..5])))
        .await;
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[5..])))
        .await;
    assert!(matches!(ws.packet().await, Packet::ConnAck(a) if a.code == ReasonCode::SUCCESS));

    // SUBSCRIBE, PUBLISH (QoS 1, to itself) and PINGREQ in one frame.
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(
            "frames/t".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    });
    let publish = Packet::Publish(publish_packet(
        "frames/t",
        b"in one frame",
        QoS::AtLeastOnce,
        false,
        Some(2),
    ));
    let frame = ws.encode(&[subscribe, publish, Packet::PingReq]);
    ws.send(Message::Binary(frame.into())).await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match ws.packet().await {
            Packet::SubAck(_) => seen.push("suback"),
            Packet::PubAck(a) if a.packet_id == 2 => seen.push("puback"),
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], b"in one frame");
                seen.push("publish");
            }
            Packet::PingResp => seen.push("pingresp"),
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["pingresp", "puback", "publish", "suback"]);
}

#[tokio::test]
async fn a_text_frame_closes_the_client_with_a_protocol_error() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let mut ws = RawWs::open(b.http(), ProtocolVersion::V5).await;
    let connect = ws.encode(&[Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "texter",
        true,
    )))]);
    ws.send(Message::Binary(connect.into())).await;
    assert!(matches!(ws.packet().await, Packet::ConnAck(_)));
    ws.send(Message::text("PINGREQ, please")).await;
    match ws.packet().await {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let close = ws.next().await.expect_err("closed").expect("close frame");
    assert_eq!(close.code, CloseCode::Unsupported);
    let m = b
        .broker()
        .metrics
        .closes()
        .find(|(l, _)| *l == "protocol_error");
    assert!(
        eventually(|| b
            .broker()
            .metrics
            .closes()
            .any(|(l, n)| l == "protocol_error" && n >= 1))
        .await,
        "{m:?}"
    );
}

#[tokio::test]
async fn an_over_size_message_closes_the_client() {
    let b = TestBroker::with_listeners(|c| {
        c.mqtt.max_packet_size = 1024;
        c.websocket.max_message_size = 2048;
    })
    .await;
    let mut ws = RawWs::open(b.http(), ProtocolVersion::V5).await;
    let connect = ws.encode(&[Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V5,
        "big",
        true,
    )))]);
    ws.send(Message::Binary(connect.into())).await;
    assert!(matches!(ws.packet().await, Packet::ConnAck(_)));
    // Many small packets in one message still count as one message.
    let pings = ws.encode(&vec![Packet::PingReq; 1500]);
    assert!(pings.len() > 2048);
    ws.send(Message::Binary(pings.into())).await;
    match ws.packet().await {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::PACKET_TOO_LARGE),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    let close = ws.next().await.expect_err("closed").expect("close frame");
    assert_eq!(close.code, CloseCode::Size);
}

#[tokio::test]
async fn tcp_to_websocket_and_back() {
    let b = TestBroker::with_listeners(|_| {}).await;
    for t in [Transport::Ws, Transport::Wss] {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let tag = format!("{t:?}-{v:?}");
            let mut ws =
                Client::connect_over(transport::open(&b, t).await, v, &format!("ws-{tag}")).await;
            let mut tcp = Client::connect(b.addr, v, &format!("tcp-{tag}")).await;
            ws.subscribe(&format!("{tag}/down"), QoS::AtLeastOnce).await;
            tcp.subscribe(&format!("{tag}/up"), QoS::AtLeastOnce).await;
            tcp.publish(
                &format!("{tag}/down"),
                b"tcp to ws",
                QoS::AtLeastOnce,
                false,
            )
            .await;
            let p = ws.recv_publish().await;
            assert_eq!(&p.payload[..], b"tcp to ws");
            ws.ack(&p).await;
            ws.publish(&format!("{tag}/up"), b"ws to tcp", QoS::ExactlyOnce, false)
                .await;
            let p = tcp.recv_publish().await;
            assert_eq!(&p.payload[..], b"ws to tcp");
            tcp.ack(&p).await;
            ws.disconnect().await;
            tcp.disconnect().await;
        }
    }
}

#[tokio::test]
async fn mqtt_behaves_the_same_on_every_listener() {
    let b = TestBroker::with_listeners(|_| {}).await;
    // The clients are anonymous: they publish as the anonymous account.
    let anon = b
        .server()
        .directory()
        .anonymous()
        .expect("anonymous account")
        .to_string();
    for t in Transport::ALL {
        let id = format!("same-{t:?}");
        let mut c =
            Client::connect_over(transport::open(&b, t).await, ProtocolVersion::V5, &id).await;
        let mut peer = Client::connect(b.addr, ProtocolVersion::V5, &format!("{id}-peer")).await;
        c.subscribe(&format!("{id}/down/+"), QoS::ExactlyOnce).await;
        peer.subscribe(&format!("{id}/up/+"), QoS::ExactlyOnce)
            .await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            peer.publish(&format!("{id}/down/{i}"), b"down", qos, false)
                .await;
            let p = c.recv_publish().await;
            assert_eq!((p.qos, &p.payload[..]), (qos, &b"down"[..]), "{t:?}");
            assert!(user_property(&p.properties.user_properties, "timestamp").is_some());
            assert_eq!(
                user_property(&p.properties.user_properties, "cid"),
                Some(anon.as_str())
            );
            c.ack(&p).await;

            c.publish(&format!("{id}/up/{i}"), b"up", qos, false).await;
            let p = peer.recv_publish().await;
            assert_eq!((p.qos, &p.payload[..]), (qos, &b"up"[..]), "{t:?}");
            peer.ack(&p).await;
        }
        // A takeover reaches the old connection whatever its transport.
        let mut again = Client::connect(b.addr, ProtocolVersion::V5, &id).await;
        let d = c.expect_closed().await.expect("DISCONNECT");
        assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER, "{t:?}");
        again.ping().await;
    }
}

#[tokio::test]
async fn http_requests_and_websockets_share_the_port() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let io = transport::ws_tcp(b.http(), "/", &["mqtt"]).await;
    let mut c = Client::connect_over(io, ProtocolVersion::V311, "shared-port").await;
    let health = http::get(b.http(), "/health", &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(http::get(b.http(), "/no/such/route", &[]).await.status, 404);
    c.ping().await;
}

async fn mqttjs(url: &str, version: &str, ca: Option<&std::path::Path>) {
    let ca = ca.map(|p| p.display().to_string());
    let mut args = vec![url, version];
    args.extend(ca.as_deref());
    client_script("node", "tests/node/mqttjs_roundtrip.js", &args, WAIT * 6).await;
}

#[tokio::test]
async fn mqttjs_over_ws_without_a_path_and_on_mqtt() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let port = b.http().port();
    for version in ["3", "4", "5"] {
        // No path: MQTT.js requests `/`.
        mqttjs(&format!("ws://127.0.0.1:{port}"), version, None).await;
        mqttjs(&format!("ws://127.0.0.1:{port}/mqtt"), version, None).await;
    }
}

#[tokio::test]
async fn mqttjs_over_wss_with_the_generated_ca() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let port = b.https().port();
    let ca = b.test_certs().ca();
    for version in ["4", "5"] {
        mqttjs(&format!("wss://127.0.0.1:{port}"), version, Some(&ca)).await;
        mqttjs(&format!("wss://127.0.0.1:{port}/mqtt"), version, Some(&ca)).await;
    }
}

async fn paho_ws(host: &str, port: u16, version: &str, path: &str, ca: Option<&std::path::Path>) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/paho_websockets.py"
    );
    let mut cmd = Command::new("python3");
    cmd.args([script, host, &port.to_string(), version, path]);
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.kill_on_drop(true).output())
        .await
        .expect("paho script finishes")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "paho-mqtt websockets {path} v{version}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn paho_over_ws_and_wss() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let ca = b.test_certs().ca();
    for version in ["311", "5"] {
        paho_ws("127.0.0.1", b.http().port(), version, "/mqtt", None).await;
        paho_ws("127.0.0.1", b.http().port(), version, "/", None).await;
        paho_ws("localhost", b.https().port(), version, "/mqtt", Some(&ca)).await;
    }
}

#[tokio::test]
async fn sigterm_under_traffic_on_every_listener() {
    let data = tempfile::tempdir().unwrap();
    let certs = TestCerts::new();
    let mut d = Daemon::spawn_all(data.path(), certs.dir.path(), &["--anonymous"]).await;
    let ca = certs.ca();
    let addr_of = |t: Transport| match t {
        Transport::Tcp => d.mqtt,
        Transport::Tls => d.mqtts.unwrap(),
        Transport::Ws => d.http.unwrap(),
        Transport::Wss => d.https.unwrap(),
    };
    let mut readers = Vec::new();
    for t in Transport::ALL {
        for i in 0..2 {
            let io = transport::connect(t, addr_of(t), Some(&ca)).await;
            let mut c =
                Client::connect_over(io, ProtocolVersion::V5, &format!("sig-{t:?}-{i}")).await;
            c.subscribe("sig/#", QoS::AtLeastOnce).await;
            // Wait for the first message, then keep reading until the broker closes.
            readers.push(tokio::spawn(async move {
                let first = c.recv_publish().await;
                c.ack(&first).await;
                (t, c.drain_until_closed(Duration::from_secs(15)).await)
            }));
        }
    }
    // Publishers on every listener keep the traffic going.
    let mut publishers = Vec::new();
    for t in Transport::ALL {
        let io = transport::connect(t, addr_of(t), Some(&ca)).await;
        let mut p = Client::connect_over(io, ProtocolVersion::V5, &format!("sig-pub-{t:?}")).await;
        publishers.push(tokio::spawn(async move {
            for i in 0..20_000u32 {
                let qos = if i % 2 == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                let id = (qos == QoS::AtLeastOnce).then(|| (i % 60_000 + 1) as u16);
                if !p
                    .try_send(Packet::Publish(publish_packet(
                        &format!("sig/{t:?}/{i}"),
                        b"load",
                        qos,
                        false,
                        id,
                    )))
                    .await
                {
                    break;
                }
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    d.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(12), d.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status}: {}", d.log());
    assert!(started.elapsed() < Duration::from_secs(11));
    for r in readers {
        let (t, disconnect) = r.await.unwrap();
        let disconnect = disconnect.unwrap_or_else(|| panic!("{t:?}: no DISCONNECT: {}", d.log()));
        assert_eq!(disconnect.reason, ReasonCode::SERVER_SHUTTING_DOWN, "{t:?}");
    }
    for p in publishers {
        p.abort();
    }
}

#[tokio::test]
async fn large_and_small_payloads_interleave_intact_on_every_listener() {
    // Payloads from SHARE_PAYLOAD_FROM up are written from the message's own bytes as
    // separate segments of a vectored write; around the threshold, and mixed with small ones,
    // every receiver must still get every byte in order.
    let b = TestBroker::with_listeners(|_| {}).await;
    let sizes = [
        0usize, 10, 1023, 1024, 1025, 3000, 7, 65_536, 1, 200_000, 64, 5000,
    ];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| (0..*n).map(|j| (i * 31 + j * 7) as u8).collect())
        .collect();
    let mut receivers = Vec::new();
    for t in Transport::ALL {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let id = format!("big-{t:?}-{version}");
            let mut c = Client::connect_over(transport::open(&b, t).await, version, &id).await;
            c.subscribe("big/+", QoS::AtLeastOnce).await;
            receivers.push((format!("{t:?} {version}"), c));
        }
    }
    let mut publisher = Client::connect(b.addr, ProtocolVersion::V5, "big-pub").await;
    for (i, p) in payloads.iter().enumerate() {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher.publish(&format!("big/{i}"), p, qos, false).await;
    }
    for (name, c) in &mut receivers {
        for (i, want) in payloads.iter().enumerate() {
            let p = c.recv_publish().await;
            assert_eq!(&*p.topic, format!("big/{i}"), "{name}");
            assert!(p.payload[..] == want[..], "{name}: payload {i} differs");
            c.ack(&p).await;
        }
        c.expect_nothing().await;
    }
}

/// MQTT.js as flespi-io-js and MQTT Board use it, on one HTTP port for REST and MQTT over
/// WebSocket with `FlespiToken <key>`: routing by Subscription Identifier, the resumed session's
/// subscriptions in CONNACK, REST over HTTP and over MQTT (tests/node/flespi_style.js).
#[tokio::test]
async fn mqttjs_like_flespi_io_js_and_mqtt_board() {
    let b = TestBroker::with_listeners(|c| c.auth.anonymous = false).await;
    let (port, master) = (b.http().port().to_string(), b.master_key());
    let args = [port.as_str(), master.as_str()];
    let out = client_script("node", "tests/node/flespi_style.js", &args, WAIT * 8).await;
    assert!(
        out.trim_end().ends_with("ok"),
        "flespi-style MQTT.js: {out}"
    );
}

/// A REST path typed as the seed writes selectors, unencoded (`curl -g`), reaches the API: it
/// answers as for the encoded path, and a selector that does not parse gets the JSON error
/// envelope, never hyper's bare 400.
#[tokio::test]
async fn unencoded_selectors_reach_the_rest_api() {
    let b = TestBroker::with_listeners(|c| c.auth.anonymous = false).await;
    let auth = format!("Authorization: FlespiToken {}", b.master_key());
    let encoded = http::get(
        b.http(),
        "/platform/tokens/%7Bid%20%3E%200%7D?fields=id",
        &[&auth],
    )
    .await;
    assert_eq!(encoded.status, 200, "{}", encoded.body);
    let raw = http::get(b.http(), "/platform/tokens/{id > 0}?fields=id", &[&auth]).await;
    assert_eq!(raw.status, 200, "{}", raw.body);
    assert_eq!(raw.body, encoded.body);
    let less = http::get(
        b.http(),
        "/platform/tokens/{id < 1000000}?fields=id",
        &[&auth],
    )
    .await;
    assert_eq!(less.body, encoded.body);
    let bad = http::get(b.http(), "/platform/tokens/{id <}", &[&auth]).await;
    assert_eq!(bad.status, 400);
    let v: serde_json::Value = serde_json::from_str(&bad.body).expect("a JSON envelope");
    assert!(v["errors"][0]["reason"].is_string(), "{v}");
}
