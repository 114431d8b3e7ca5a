//! The devices layer (docs/flespi.md#devices) against the real server over real sockets, with its
//! on-disk store: devices, groups, telemetry and messages survive a restart; telemetry topics
//! are retained with the parameter's time. The full REST behaviour is in
//! `crates/tern-api/tests/api/gw.rs`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tern_codec::*;

use crate::support::client::{Read, connect_packet};
use crate::support::http::request;
use crate::support::{Client, QUIET, TestBroker, loopback};

async fn start(dir: &Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::with(move |c| {
        c.store.data_dir = dir;
        c.listeners.http = Some(loopback());
    })
    .await
}

async fn rest(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> Value {
    let auth = format!("Authorization: FlespiToken {}", b.master_key());
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let r = request(b.http(), method, path, &[&auth], &body).await;
    assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    serde_json::from_str(&r.body).expect("JSON")
}

async fn mqtt(b: &TestBroker, id: &str) -> Client {
    let mut c = connect_packet(ProtocolVersion::V5, id, true);
    c.username = Some(b.master_key().into());
    let (client, ack) = Client::connect_with(b.addr, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    client
}

fn prop<'a>(p: &'a Publish, name: &str) -> Option<&'a str> {
    p.properties
        .user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| &**v)
}

#[tokio::test]
async fn devices_messages_and_telemetry_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let created = rest(
        &b,
        "POST",
        "/gw/devices",
        Some(json!({"name": "truck", "device_type_id": 1, "configuration": {"ident": "354"}})),
    )
    .await;
    let id = created["result"][0]["id"].as_u64().unwrap();
    rest(
        &b,
        "POST",
        &format!("/gw/devices/{id}/messages"),
        Some(json!([
            {"timestamp": 1_700_000_000, "speed": 10, "position.latitude": 54.7},
            {"timestamp": "2023-11-14T22:13:21Z", "speed": 11},
        ])),
    )
    .await;
    let group =
        rest(&b, "POST", "/gw/groups", Some(json!({"name": "fleet"}))).await["result"][0]["id"]
            .as_u64()
            .unwrap();
    rest(
        &b,
        "POST",
        &format!("/gw/groups/{group}/devices/{id}"),
        None,
    )
    .await;

    let before = rest(&b, "GET", &format!("/gw/devices/{id}/messages"), None).await;
    assert_eq!(
        before["result"].as_array().map(Vec::len),
        Some(2),
        "{before}"
    );
    assert!(b.shutdown(Duration::from_secs(5)).await);
    let b = start(data.path()).await;

    let list = rest(&b, "GET", "/gw/devices/groups.id=1", None).await;
    assert_eq!(list["result"][0]["name"], "truck");
    let msgs = rest(
        &b,
        "GET",
        &format!("/gw/devices/{id}/messages?data=%7B%22reverse%22%3Atrue%2C%22count%22%3A1%7D"),
        None,
    )
    .await;
    assert_eq!(msgs["result"][0]["speed"], 11);
    assert_eq!(msgs["result"][0]["timestamp"], 1_700_000_001);
    let t = rest(
        &b,
        "GET",
        &format!("/gw/devices/{id}/telemetry/speed"),
        None,
    )
    .await;
    assert_eq!(
        t["result"][0]["telemetry"]["speed"],
        json!({"value": 11, "ts": 1_700_000_001})
    );

    // The retained telemetry topic carries the parameter's time in `timestamp`.
    let mut c = mqtt(&b, "watch").await;
    c.subscribe(
        &format!("flespi/state/gw/devices/{id}/telemetry/+"),
        QoS::AtLeastOnce,
    )
    .await;
    let mut seen = Vec::new();
    while let Read::Packet(Packet::Publish(p)) = c.read(QUIET).await {
        if let Some(pid) = p.packet_id {
            c.send(Packet::PubAck(PubAck::new(pid))).await;
        }
        seen.push(p);
    }
    let speed = seen
        .iter()
        .find(|p| p.topic.ends_with("/telemetry/speed"))
        .expect("speed is retained");
    assert!(speed.retain);
    assert_eq!(&speed.payload[..], b"11");
    assert_eq!(prop(speed, "timestamp"), Some("1700000001.000000"));
    let position = seen
        .iter()
        .find(|p| p.topic.ends_with("/telemetry/position"))
        .expect("position");
    assert_eq!(&position.payload[..], br#"{"latitude":54.7}"#);
}
