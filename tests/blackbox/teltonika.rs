//! Teltonika channels (docs/teltonika.md) against the real server over real sockets: trackers
//! (a raw TCP client here, and the shared fake tracker `tests/tools/teltonika_tracker.py`) send
//! the vectors of `tests/data/teltonika/`; what is ACKed is stored, published and in telemetry;
//! bad input is refused with nothing stored; `connected` follows the TCP connection; commands
//! go out and their answers come back; ACKed records survive `kill -9`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use serde_json::{Value, json};
use tern_codec::*;
use tern_teltonika::{
    AvlCodec, AvlPacket, CommandType, Frame, FrameDecoder, Gps, IoElement, IoValue, Record,
    encode_avl, encode_codec12,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{Read, connect_packet};
use crate::support::http::request;
use crate::support::process::{Daemon, free_addr};
use crate::support::{Client, TestBroker, loopback};

const IMEI: &str = "356307042441013";
/// Fields the pipeline adds to every message (docs/teltonika.md#messages).
const INGEST: &[&str] = &[
    "server.timestamp",
    "channel.id",
    "protocol.id",
    "peer",
    "device.id",
    "device.name",
    "device.type.id",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (name, bytes, expectation) of the vectors in `tests/data/teltonika/`.
fn vectors() -> Vec<(String, Vec<u8>, Value)> {
    let dir = repo().join("tests/data/teltonika");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)
        .expect("tests/data/teltonika")
        .flatten()
    {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("hex") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.trim();
        let bytes = (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap())
                .unwrap();
        out.push((name, bytes, json));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() > 10, "the vectors are there");
    out
}

async fn start(dir: &Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::with(move |c| {
        c.store.data_dir = dir;
        c.listeners.http = Some(loopback());
    })
    .await
}

async fn call(
    http: std::net::SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Authorization: FlespiToken {key}");
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let r = request(http, method, path, &[&auth], &body).await;
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

async fn rest(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(b.http(), &b.master_key(), method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

/// A Teltonika channel (accepting unknown IMEIs, keeping its buffer) and its port.
async fn channel(b: &TestBroker) -> (u64, u16) {
    let c = rest(
        b,
        "POST",
        "/gw/channels",
        Some(json!({"name": "trackers", "protocol_name": "teltonika", "messages_ttl": 3600})),
    )
    .await;
    let item = &c["result"][0];
    let port = item["configuration"]["port"].as_u64().expect("a port") as u16;
    assert_eq!(item["uri"], format!("127.0.0.1:{port}"));
    assert_eq!(item["protocol_id"], 14);
    (item["id"].as_u64().unwrap(), port)
}

async fn device(b: &TestBroker, ident: &str) -> u64 {
    let d = rest(
        b,
        "POST",
        "/gw/devices",
        Some(json!({"name": "fmb", "device_type_id": 14, "configuration": {"ident": ident}})),
    )
    .await;
    d["result"][0]["id"].as_u64().unwrap()
}

/// A tracker: connected and through the handshake.
pub(crate) async fn tracker(port: u16, imei: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut hello = vec![0u8, imei.len() as u8];
    hello.extend_from_slice(imei.as_bytes());
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer))
        .await
        .expect("a handshake answer")
        .unwrap();
    assert_eq!(answer[0], 1, "{imei} accepted");
    s
}

/// The 4-byte ACK, or None when the connection closed first.
async fn ack(s: &mut TcpStream) -> Option<u32> {
    let mut b = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b)).await {
        Ok(Ok(_)) => Some(u32::from_be_bytes(b)),
        Ok(Err(_)) => None,
        Err(_) => panic!("neither an ACK nor a close in 10 s"),
    }
}

/// A frame of `n` Codec 8E records from `first_ms`, a second apart.
fn frame(n: u64, first_ms: u64) -> BytesMut {
    let packet = AvlPacket {
        codec: AvlCodec::Codec8Extended,
        records: (0..n)
            .map(|i| Record {
                timestamp_ms: first_ms + i * 1000,
                priority: 1,
                gps: Gps {
                    longitude: 252_790_000,
                    latitude: 546_870_000,
                    altitude: 100,
                    angle: 90,
                    satellites: 8,
                    speed: 40 + i as u16,
                },
                event_io_id: 0,
                generation_type: None,
                io: vec![IoElement {
                    id: 66,
                    value: IoValue::U16(12_000 + i as u16),
                }],
            })
            .collect(),
    };
    let mut out = BytesMut::new();
    encode_avl(&packet, &mut out);
    out
}

async fn messages(b: &TestBroker, path: &str) -> Vec<Value> {
    rest(b, "GET", path, None).await["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn subscriber(b: &TestBroker, id: &str, filters: &[&str]) -> Client {
    let mut c = connect_packet(ProtocolVersion::V5, id, true);
    c.username = Some(b.master_key().into());
    let (mut client, ack) = Client::connect_with(b.addr, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    for f in filters {
        client.subscribe(f, QoS::AtMostOnce).await;
    }
    client
}

/// The publications `c` gets within a short while.
async fn drain(c: &mut Client) -> Vec<Publish> {
    let mut out = Vec::new();
    while let Read::Packet(Packet::Publish(p)) = c.read(Duration::from_millis(700)).await {
        out.push(p);
    }
    out
}

/// Every stored message equals its expected one plus the ingest fields.
fn same_message(stored: &Value, expected: &Value, name: &str) {
    let (s, e) = (stored.as_object().unwrap(), expected.as_object().unwrap());
    for (k, v) in e {
        match (s.get(k), v) {
            // 1562760414 and 1562760414.0 are one JSON number.
            (Some(Value::Number(a)), Value::Number(b)) => {
                assert_eq!(a.as_f64(), b.as_f64(), "{name}: `{k}`")
            }
            (got, _) => assert_eq!(got, Some(v), "{name}: `{k}`"),
        }
    }
    for k in s.keys() {
        assert!(
            e.contains_key(k) || INGEST.contains(&k.as_str()),
            "{name}: unexpected `{k}`"
        );
    }
}

#[tokio::test]
async fn every_vector_is_acked_stored_published_and_in_telemetry() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let (ch, port) = channel(&b).await;
    let id = device(&b, IMEI).await;
    let mut sub = subscriber(
        &b,
        "watch",
        &[
            "flespi/message/gw/devices/+",
            "flespi/message/gw/channels/+/+",
        ],
    )
    .await;
    let mut checked = 0;
    for (name, bytes, v) in vectors() {
        let avl = v["transport"] != "udp"
            && v["ack"].is_u64()
            && v["decoded"]["records"].is_array()
            && !name.starts_with("bad_");
        if !avl {
            continue;
        }
        rest(&b, "DELETE", &format!("/gw/devices/{id}/messages"), None).await;
        rest(
            &b,
            "DELETE",
            &format!("/gw/devices/{id}/telemetry/all"),
            None,
        )
        .await;
        let mut s = tracker(port, v["ident"].as_str().unwrap_or(IMEI)).await;
        s.write_all(&bytes).await.unwrap();
        assert_eq!(
            ack(&mut s).await,
            v["ack"].as_u64().map(|n| n as u32),
            "{name}"
        );
        let expected = v["messages"].as_array().unwrap();
        let stored = messages(&b, &format!("/gw/devices/{id}/messages")).await;
        assert_eq!(stored.len(), expected.len(), "{name}");
        let mut stored_sorted = stored.clone();
        stored_sorted.sort_by(|a, b| {
            a["timestamp"]
                .as_f64()
                .partial_cmp(&b["timestamp"].as_f64())
                .unwrap()
        });
        let mut expected_sorted = expected.clone();
        expected_sorted.sort_by(|a, b| {
            a["timestamp"]
                .as_f64()
                .partial_cmp(&b["timestamp"].as_f64())
                .unwrap()
        });
        for (st, ex) in stored_sorted.iter().zip(&expected_sorted) {
            same_message(st, ex, &name);
            assert_eq!(st["channel.id"], ch);
            assert_eq!(st["protocol.id"], 14);
            assert_eq!(st["device.id"], id);
        }
        let got = drain(&mut sub).await;
        let on_device = got
            .iter()
            .filter(|p| *p.topic == format!("flespi/message/gw/devices/{id}"))
            .count();
        let on_channel = got
            .iter()
            .filter(|p| *p.topic == format!("flespi/message/gw/channels/{ch}/{IMEI}"))
            .count();
        assert_eq!(
            (on_device, on_channel),
            (expected.len(), expected.len()),
            "{name}"
        );
        // Telemetry holds the newest record's values.
        let newest = expected_sorted.last().unwrap();
        let tel = rest(&b, "GET", &format!("/gw/devices/{id}/telemetry/all"), None).await;
        let tel = &tel["result"][0]["telemetry"];
        for (k, v) in newest.as_object().unwrap() {
            if k.starts_with("position.") || k == "timestamp" {
                continue;
            }
            assert_eq!(&tel[k]["value"], v, "{name}: telemetry {k}");
        }
        checked += 1;
    }
    assert!(checked >= 5, "{checked} vectors checked");
    // An unknown IMEI: its records reach only the channel buffer and the channel topic.
    let before = messages(&b, &format!("/gw/devices/{id}/messages"))
        .await
        .len();
    let mut s = tracker(port, "356307042441099").await;
    s.write_all(&frame(3, 1_700_000_000_000)).await.unwrap();
    assert_eq!(ack(&mut s).await, Some(3));
    let got = drain(&mut sub).await;
    assert_eq!(
        got.iter()
            .filter(|p| *p.topic == format!("flespi/message/gw/channels/{ch}/356307042441099"))
            .count(),
        3
    );
    assert!(
        got.iter()
            .all(|p| !p.topic.starts_with("flespi/message/gw/devices/"))
    );
    assert_eq!(
        messages(&b, &format!("/gw/devices/{id}/messages"))
            .await
            .len(),
        before
    );
    let buffered = messages(&b, &format!("/gw/channels/{ch}/messages")).await;
    assert!(
        buffered
            .iter()
            .filter(|m| m["ident"] == "356307042441099")
            .count()
            == 3
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_nothing_stored_and_others_unaffected() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let (ch, port) = channel(&b).await;
    let id = device(&b, IMEI).await;
    let mut logs = subscriber(&b, "logs", &[&format!("flespi/log/gw/channels/{ch}/#")]).await;
    // A healthy tracker stays connected throughout.
    let other = "356307042441777";
    let other_id = device(&b, other).await;
    let mut good = tracker(port, other).await;
    let mut refused = 0;
    for (name, bytes, v) in vectors() {
        if !name.starts_with("bad_") || v["transport"] == "udp" {
            continue;
        }
        let mut s = tracker(port, IMEI).await;
        s.write_all(&bytes).await.unwrap();
        // `bad_truncated` is cut short: the tracker closes its side.
        if name == "bad_truncated" {
            s.shutdown().await.unwrap();
        }
        assert_eq!(ack(&mut s).await, None, "{name}: no ACK, closed");
        refused += 1;
        good.write_all(&frame(1, 1_700_000_000_000 + refused * 10_000))
            .await
            .unwrap();
        assert_eq!(
            ack(&mut good).await,
            Some(1),
            "{name}: the other tracker is unaffected"
        );
    }
    assert!(refused >= 6, "{refused} bad vectors");
    assert!(
        messages(&b, &format!("/gw/devices/{id}/messages"))
            .await
            .is_empty()
    );
    assert_eq!(
        messages(&b, &format!("/gw/devices/{other_id}/messages"))
            .await
            .len(),
        refused as usize
    );
    // A bad IMEI is answered 00.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"\x00\x0512345").await.unwrap();
    let mut answer = [9u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], 0);
    // The channel log: every connection accepted, identified, closed (4 for bad frames).
    let got = drain(&mut logs).await;
    let records: Vec<Value> = got
        .iter()
        .map(|p| serde_json::from_slice(&p.payload).unwrap())
        .collect();
    let closed4 = records
        .iter()
        .filter(|r| r["event_code"] == 102 && r["close_code"] == 4)
        .count();
    assert!(closed4 >= refused as usize - 1, "{records:?}");
    assert!(
        records
            .iter()
            .any(|r| r["event_code"] == 100 && r["host"].is_string())
    );
    assert!(
        records
            .iter()
            .any(|r| r["event_code"] == 101 && r["ident"] == IMEI)
    );
    assert!(
        records
            .iter()
            .any(|r| r["event_code"] == 102
                && r["reason"].as_str().is_some_and(|s| s.contains("CRC"))),
        "a close names what was wrong: {records:?}"
    );
    // The metrics count what happened.
    let m = request(b.http(), "GET", "/metrics", &[], "").await.body;
    let value = |line: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{line}` in {m}"))
    };
    assert_eq!(value("tern_teltonika_refused_total{kind=\"crc\"}"), 1.0);
    assert_eq!(value("tern_teltonika_records_total "), refused as f64);
    assert_eq!(value("tern_teltonika_frames_total "), refused as f64);
    assert_eq!(
        value("tern_teltonika_ack_latency_seconds_count "),
        refused as f64
    );
    assert_eq!(
        value("tern_teltonika_ack_latency_seconds_bucket{le=\"+Inf\"}"),
        refused as f64
    );
    assert_eq!(
        value("tern_teltonika_connections "),
        1.0,
        "the healthy tracker"
    );
}

#[tokio::test]
async fn connected_follows_the_connection_with_logs_and_the_connections_list() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let (ch, port) = channel(&b).await;
    let id = device(&b, IMEI).await;
    let mut sub = subscriber(&b, "dev", &[&format!("flespi/log/gw/devices/{id}/+")]).await;
    let connected = |v: &Value| v["result"][0]["connected"].as_bool();
    assert_eq!(
        connected(&rest(&b, "GET", &format!("/gw/devices/{id}"), None).await),
        Some(false)
    );
    let mut s = tracker(port, IMEI).await;
    s.write_all(&frame(2, 1_700_000_000_000)).await.unwrap();
    assert_eq!(ack(&mut s).await, Some(2));
    assert_eq!(
        connected(&rest(&b, "GET", &format!("/gw/devices/{id}"), None).await),
        Some(true)
    );
    let list = rest(&b, "GET", &format!("/gw/channels/{ch}/connections"), None).await;
    assert_eq!(list["result"][0]["ident"], IMEI);
    assert_eq!(list["result"][0]["msgs"], 2);
    let item = rest(&b, "GET", &format!("/gw/channels/{ch}"), None).await;
    assert_eq!(item["result"][0]["connections_count"], 1);
    // A second connection with the same IMEI closes the first (12); still connected.
    let mut second = tracker(port, IMEI).await;
    assert_eq!(ack(&mut s).await, None);
    second
        .write_all(&frame(1, 1_700_000_100_000))
        .await
        .unwrap();
    assert_eq!(ack(&mut second).await, Some(1));
    assert_eq!(
        connected(&rest(&b, "GET", &format!("/gw/devices/{id}"), None).await),
        Some(true)
    );
    drop(second);
    let mut disconnected = false;
    for _ in 0..50 {
        if connected(&rest(&b, "GET", &format!("/gw/devices/{id}"), None).await) == Some(false) {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(disconnected);
    let events: Vec<(String, Value)> = drain(&mut sub)
        .await
        .into_iter()
        .map(|p| {
            (
                p.topic.to_string(),
                serde_json::from_slice(&p.payload).unwrap(),
            )
        })
        .collect();
    let connects = events
        .iter()
        .filter(|(t, _)| t.ends_with("/connected"))
        .count();
    let disconnects: Vec<&Value> = events
        .iter()
        .filter(|(t, _)| t.ends_with("/disconnected"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(connects, 1, "{events:?}");
    assert_eq!(disconnects.len(), 1, "{events:?}");
    assert_eq!(disconnects[0]["event_code"], 301);
    assert_eq!(disconnects[0]["msgs"], 1);
    // A disabled device's tracker is refused (and an enabled one kicked when disabled).
    let mut s = tracker(port, IMEI).await;
    rest(
        &b,
        "PATCH",
        &format!("/gw/devices/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(ack(&mut s).await, None, "kicked");
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&[0, 15]).await.unwrap();
    s.write_all(IMEI.as_bytes()).await.unwrap();
    let mut answer = [9u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], 0, "refused");
    // Disabling the channel closes its listener.
    rest(
        &b,
        "PATCH",
        &format!("/gw/channels/{ch}"),
        Some(json!({"enabled": false})),
    )
    .await;
    let mut closed = false;
    for _ in 0..50 {
        if !teltonika_listens(port).await {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the listener is gone");
}

/// Whether a Teltonika channel answers on `port`. A connection refused says no; so does one
/// that is not the channel's: the port, free again, may be in this machine's ephemeral range,
/// where a connect can meet itself (TCP simultaneous open: the kernel picks the destination
/// port as the source port) or another test's listener, neither of which answers an IMEI.
async fn teltonika_listens(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.local_addr().ok() == s.peer_addr().ok() {
        return false;
    }
    if s.write_all(&[0, 15]).await.is_err() || s.write_all(IMEI.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = [9u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut answer)).await,
        Ok(Ok(_)) if answer[0] <= 1
    )
}

#[tokio::test]
async fn ports_are_checked_and_kept() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let (_, port) = channel(&b).await;
    // The same port for another channel: 400 naming it.
    let (status, v) = call(
        b.http(),
        &b.master_key(),
        "POST",
        "/gw/channels",
        Some(json!({"name": "x", "protocol_name": "teltonika", "configuration": {"port": port}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains(&port.to_string()), "{v}");
    // A port another process holds: 400.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().port();
    let (status, v) = call(
        b.http(),
        &b.master_key(),
        "POST",
        "/gw/channels",
        Some(json!({"name": "y", "protocol_name": "teltonika", "configuration": {"port": busy}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    // Unknown keys and UDP are refused.
    for conf in [
        json!({"nope": 1}),
        json!({"udp": true}),
        json!({"port": 70000}),
    ] {
        let (status, v) = call(
            b.http(),
            &b.master_key(),
            "POST",
            "/gw/channels",
            Some(json!({"name": "z", "protocol_name": "teltonika", "configuration": conf})),
        )
        .await;
        assert_eq!(status, 400, "{v}");
    }
    // A device type `teltonika` needs an IMEI.
    let (status, _) = call(
        b.http(),
        &b.master_key(),
        "POST",
        "/gw/devices",
        Some(json!({"device_type_id": 14, "configuration": {"ident": "abc"}})),
    )
    .await;
    assert_eq!(status, 400);
    // The protocol and its message parameters.
    let p = rest(
        &b,
        "GET",
        "/gw/channel-protocols/14?fields=name,message_parameters",
        None,
    )
    .await;
    assert_eq!(p["result"][0]["name"], "teltonika");
    let names: HashSet<&str> = p["result"][0]["message_parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for n in [
        "external.powersource.voltage",
        "gsm.operator.code",
        "position.valid",
    ] {
        assert!(names.contains(n), "{n}");
    }
}

/// Answers every Codec 12 command on `s` with `RE:<command>`, and keeps ACKing frames.
pub(crate) async fn respond(mut s: TcpStream, answer: bool) {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Frame::Codec12(c))) if c.kind == CommandType::Command => {
                if answer {
                    let mut out = BytesMut::new();
                    let text = format!("RE:{}", c.payload_text());
                    encode_codec12(CommandType::Response, text.as_bytes(), &mut out);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => return,
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn wait_connected(b: &TestBroker, ch: u64, imei: &str) {
    for _ in 0..100 {
        let list = rest(b, "GET", &format!("/gw/channels/{ch}/connections"), None).await;
        if list["result"]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["ident"] == imei))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{imei} never connected");
}

#[tokio::test]
async fn commands_round_trip_time_out_and_wait_in_the_queue() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let (ch, port) = channel(&b).await;
    let id = device(&b, IMEI).await;
    let getinfo = json!([{"name": "custom", "properties": {"text": "getinfo"}}]);
    // Not connected: error code 2 at once.
    let (status, v) = call(
        b.http(),
        &b.master_key(),
        "POST",
        &format!("/gw/devices/{id}/commands"),
        Some(getinfo.clone()),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errors"][0]["code"], 2, "{v}");
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("is not connected")
    );
    // Connected and answering.
    let s = tracker(port, IMEI).await;
    let task = tokio::spawn(respond(s, true));
    wait_connected(&b, ch, IMEI).await;
    let r = rest(
        &b,
        "POST",
        &format!("/gw/devices/{id}/commands"),
        Some(getinfo.clone()),
    )
    .await;
    let item = &r["result"][0];
    assert_eq!(item["executed"], true, "{r}");
    assert_eq!(item["response"], "RE:getinfo");
    assert_eq!(item["device_id"], id);
    assert_eq!(item["ident"], IMEI);
    let r = rest(
        &b,
        "POST",
        &format!("/gw/devices/{id}/commands"),
        Some(json!([
            {"name": "codec12", "properties": {"payload": "getver", "crlf": false}},
            {"name": "custom", "properties": {"hex": "676574696f"}}
        ])),
    )
    .await;
    assert_eq!(r["result"][0]["response"], "RE:getver");
    assert_eq!(r["result"][1]["response"], "RE:getio");
    task.abort();
    // Connected and silent: executed false, "timeout".
    let s = tracker(port, IMEI).await;
    let task = tokio::spawn(respond(s, false));
    wait_connected(&b, ch, IMEI).await;
    let r = rest(
        &b,
        "POST",
        &format!("/gw/devices/{id}/commands"),
        Some(json!([{"name": "custom", "properties": {"text": "getinfo"}, "timeout": 1}])),
    )
    .await;
    assert_eq!(r["result"][0]["executed"], false, "{r}");
    assert_eq!(r["result"][0]["reason"], "timeout");
    task.abort();
    // Results are kept.
    let results = messages(&b, &format!("/gw/devices/{id}/commands-result")).await;
    assert_eq!(results.len(), 4, "{results:?}");
    // Queued while disconnected, delivered on connect.
    let mut tries = 0;
    while rest(&b, "GET", &format!("/gw/devices/{id}"), None).await["result"][0]["connected"]
        == true
    {
        tries += 1;
        assert!(tries < 50);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let q = rest(
        &b,
        "POST",
        &format!("/gw/devices/{id}/commands-queue"),
        Some(json!([{"name": "custom", "properties": {"text": "setdigout 1"}, "ttl": 600}])),
    )
    .await;
    let qid = q["result"][0]["id"].as_u64().unwrap();
    assert_eq!(
        messages(&b, &format!("/gw/devices/{id}/commands-queue"))
            .await
            .len(),
        1
    );
    let s = tracker(port, IMEI).await;
    let task = tokio::spawn(respond(s, true));
    let mut delivered = None;
    for _ in 0..100 {
        let results = messages(&b, &format!("/gw/devices/{id}/commands-result/{qid}")).await;
        if let Some(r) = results.first() {
            delivered = Some(r.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = delivered.expect("the queued command was delivered");
    assert_eq!(delivered["response"], "RE:setdigout 1");
    assert!(
        messages(&b, &format!("/gw/devices/{id}/commands-queue"))
            .await
            .is_empty()
    );
    task.abort();
    // A queued command can be canceled.
    let q = rest(
        &b,
        "POST",
        &format!("/gw/devices/{id}/commands-queue"),
        Some(json!({"name": "custom", "properties": {"text": "cpureset"}})),
    )
    .await;
    let qid = q["result"][0]["id"].as_u64().unwrap();
    let gone = rest(
        &b,
        "DELETE",
        &format!("/gw/devices/{id}/commands-queue/{qid}"),
        None,
    )
    .await;
    assert_eq!(gone["result"][0]["id"], qid);
}

/// The shared fake tracker's `respond` and `send --bad` modes against a real channel.
#[tokio::test]
async fn the_shared_fake_tracker_works_against_a_channel() {
    let tool = repo().join("tests/tools/teltonika_tracker.py");
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let (ch, port) = channel(&b).await;
    let id = device(&b, IMEI).await;
    let port_s = port.to_string();
    let mut respond = tokio::process::Command::new("python3")
        .arg(&tool)
        .args([
            "respond",
            "--port",
            &port_s,
            "--imei",
            IMEI,
            "--duration",
            "20",
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    wait_connected(&b, ch, IMEI).await;
    for text in ["getinfo", "getver"] {
        let r = rest(
            &b,
            "POST",
            &format!("/gw/devices/{id}/commands"),
            Some(json!({"name": "custom", "properties": {"text": text}})),
        )
        .await;
        assert_eq!(r["result"][0]["executed"], true, "{text}: {r}");
        assert!(
            r["result"][0]["response"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
    }
    let _ = respond.kill().await;
    for bad in [
        "crc", "count2", "truncate", "oversize", "imei", "codec", "preamble", "trickle",
    ] {
        let out = tokio::process::Command::new("python3")
            .arg(&tool)
            .args([
                "send",
                "--port",
                &port_s,
                "--imei",
                "356307042441555",
                "--bad",
                bad,
            ])
            .output()
            .await
            .expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "--bad {bad}: {text}");
    }
    let out = tokio::process::Command::new("python3")
        .arg(&tool)
        .args([
            "load",
            "--port",
            &port_s,
            "--trackers",
            "20",
            "--packets",
            "3",
            "--records",
            "5",
        ])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn acked_records_survive_kill_9_and_the_port_is_kept() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let key = "K".repeat(64);
    let args = ["--http", http_s.as_str(), "--master-token", key.as_str()];
    let d = Daemon::spawn(data.path(), &args).await;
    let (status, c) = call(
        http,
        &key,
        "POST",
        "/gw/channels",
        Some(json!({"name": "t", "protocol_name": "teltonika"})),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    let port = c["result"][0]["configuration"]["port"].as_u64().unwrap() as u16;
    let (status, dv) = call(
        http,
        &key,
        "POST",
        "/gw/devices",
        Some(json!({"device_type_id": 14, "configuration": {"ident": IMEI}})),
    )
    .await;
    assert_eq!(status, 200, "{dv}");
    let id = dv["result"][0]["id"].as_u64().unwrap();
    let mut s = tracker(port, IMEI).await;
    let mut acked = 0;
    for i in 0..20u64 {
        s.write_all(&frame(5, 1_700_000_000_000 + i * 10_000))
            .await
            .unwrap();
        acked += ack(&mut s).await.unwrap();
    }
    // The telemetry as the last ACKed record left it: tern writes it at most once a second,
    // so the kill below most likely comes before that and the restart replays it.
    let telemetry = format!("/gw/devices/{id}/telemetry/all");
    let (status, before) = call(http, &key, "GET", &telemetry, None).await;
    assert_eq!(status, 200, "{before}");
    let last_ts = (1_700_000_000_000u64 + 19 * 10_000 + 4 * 1000) as f64 / 1000.0;
    assert_eq!(
        before["result"][0]["telemetry"]["timestamp"]["value"].as_f64(),
        Some(last_ts),
        "{before}"
    );
    // One more frame, half sent: never ACKed, never stored.
    let half = frame(5, 1_800_000_000_000);
    s.write_all(&half[..half.len() / 2]).await.unwrap();
    d.kill().await;
    let d = Daemon::spawn(data.path(), &args).await;
    let (status, v) = call(
        http,
        &key,
        "GET",
        &format!("/gw/devices/{id}/messages"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"].as_array().unwrap().len(), acked as usize);
    let (status, after) = call(http, &key, "GET", &telemetry, None).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before, "telemetry after kill -9 and restart");
    // The channel listens on the same port again.
    let mut s = tracker(port, IMEI).await;
    s.write_all(&frame(1, 1_900_000_000_000)).await.unwrap();
    assert_eq!(ack(&mut s).await, Some(1));
    d.kill().await;
}

#[tokio::test]
async fn deleting_the_channel_disconnects_its_devices() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let (ch, port) = channel(&b).await;
    let id = device(&b, IMEI).await;
    let mut s = tracker(port, IMEI).await;
    s.write_all(&frame(1, 1_700_000_000_000)).await.unwrap();
    assert_eq!(ack(&mut s).await, Some(1));
    let connected = |v: Value| v["result"][0]["connected"].as_bool();
    assert_eq!(
        connected(rest(&b, "GET", &format!("/gw/devices/{id}"), None).await),
        Some(true)
    );
    rest(&b, "DELETE", &format!("/gw/channels/{ch}"), None).await;
    assert_eq!(ack(&mut s).await, None, "closed with the channel");
    let mut off = false;
    for _ in 0..50 {
        if connected(rest(&b, "GET", &format!("/gw/devices/{id}"), None).await) == Some(false) {
            off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(off, "the device is disconnected once its channel is gone");
}

#[tokio::test]
async fn without_messages_ttl_only_unknown_imeis_are_kept_in_the_channel() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let c = rest(
        &b,
        "POST",
        "/gw/channels",
        Some(json!({"name": "t", "protocol_name": "teltonika"})),
    )
    .await;
    let ch = c["result"][0]["id"].as_u64().unwrap();
    assert_eq!(c["result"][0]["messages_ttl"], 0);
    let port = c["result"][0]["configuration"]["port"].as_u64().unwrap() as u16;
    let id = device(&b, IMEI).await;
    let mut known = tracker(port, IMEI).await;
    known.write_all(&frame(2, 1_700_000_000_000)).await.unwrap();
    assert_eq!(ack(&mut known).await, Some(2));
    let mut unknown = tracker(port, "356307042441099").await;
    unknown
        .write_all(&frame(3, 1_700_000_000_000))
        .await
        .unwrap();
    assert_eq!(ack(&mut unknown).await, Some(3));
    assert_eq!(
        messages(&b, &format!("/gw/devices/{id}/messages"))
            .await
            .len(),
        2
    );
    let buffered = messages(&b, &format!("/gw/channels/{ch}/messages")).await;
    assert_eq!(buffered.len(), 3, "{buffered:?}");
    assert!(buffered.iter().all(|m| m["ident"] == "356307042441099"));
}
