//! HTTP streams (docs/flespi.md#streams) against a real `tern` process and a Python receiver
//! (`tests/python/stream_receiver.py`, flespi's http-stream-receiver shape): every message
//! arrives at least once and in order through a 500 and a timeout, a non-200 keeps the batch,
//! and what was queued survives `kill -9` while the receiver is down. Waits are bounded polls;
//! nothing asserts on time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::Client;
use crate::support::QUIET;
use crate::support::client::{Read, connect_packet};
use crate::support::http::request;
use crate::support::process::{Daemon, free_addr};
use tern_codec::{Packet, ProtocolVersion, PubAck, QoS, ReasonCode};

pub(crate) const KEY: &str = "SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS";

pub(crate) async fn call(
    http: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Authorization: FlespiToken {KEY}");
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let r = request(http, method, path, &[&auth], &body).await;
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

pub(crate) async fn rest(http: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(http, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

/// A receiver on `port` answering by `plan`, writing what it got to `out`; `None` (the test
/// is skipped) when python3 is missing.
pub(crate) async fn receiver(port: u16, out: &Path, plan: &str) -> Option<Child> {
    receiver_with(port, out, plan, &[]).await
}

/// [`receiver`] with more arguments (`--cert`, `--key`: https).
async fn receiver_with(port: u16, out: &Path, plan: &str, more: &[String]) -> Option<Child> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/stream_receiver.py"
    );
    let Ok(mut child) = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string(), "--plan", plan, "--hang", "6"])
        .arg("--out")
        .arg(out)
        .args(more)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    else {
        eprintln!("SKIPPED: python3 is not installed");
        return None;
    };
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the receiver starts");
    assert_eq!(ready.ok().flatten().as_deref(), Some("ready"));
    Some(child)
}

/// The requests the receiver got: `(status it answered, path, the `n` of each message)`.
fn received(out: &Path) -> Vec<(String, String, Vec<u64>)> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| {
            assert_eq!(r["content_type"], "application/json", "{r}");
            let ns = r["messages"]
                .as_array()
                .expect("a JSON array")
                .iter()
                .map(|m| m["n"].as_u64().expect("n"))
                .collect();
            (
                r["status"].as_str().unwrap_or("").to_string(),
                r["path"].as_str().unwrap_or("").to_string(),
                ns,
            )
        })
        .collect()
}

/// The `n`s the receiver acknowledged (answered 200), in arrival order.
pub(crate) fn acknowledged(out: &Path) -> Vec<u64> {
    received(out)
        .into_iter()
        .filter(|(status, _, _)| status == "200")
        .flat_map(|(_, _, ns)| ns)
        .collect()
}

/// Polls until the receiver has acknowledged `n` messages (bounded: 60 s).
async fn wait_acknowledged(out: &Path, n: usize) -> Vec<u64> {
    for _ in 0..600 {
        let got = acknowledged(out);
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the receiver got {:?}", received(out));
}

/// Polls until the receiver got `n` requests (bounded: 60 s).
async fn wait_requests(out: &Path, n: usize) {
    for _ in 0..600 {
        if received(out).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the receiver got {:?}", received(out));
}

/// The retained state topics of stream `id` (`flespi/state/gw/streams/<id>` and its
/// properties), by topic, as a master-token MQTT client sees them.
pub(crate) async fn stream_state(
    mqtt: SocketAddr,
    id: u64,
) -> std::collections::BTreeMap<String, Value> {
    let mut c = connect_packet(ProtocolVersion::V5, "state-watch", true);
    c.username = Some(KEY.into());
    let (mut client, ack) = Client::connect_with(mqtt, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    let mut seen = std::collections::BTreeMap::new();
    for filter in [
        format!("flespi/state/gw/streams/{id}"),
        format!("flespi/state/gw/streams/{id}/+"),
    ] {
        client.subscribe(&filter, QoS::AtLeastOnce).await;
        while let Read::Packet(Packet::Publish(p)) = client.read(QUIET).await {
            if let Some(pid) = p.packet_id {
                client.send(Packet::PubAck(PubAck::new(pid))).await;
            }
            // A topic's retained copy comes first; a live change of the state may follow
            // it (retain 0 on a plain subscription) and is the newer value.
            assert!(p.retain || seen.contains_key(&*p.topic), "{p:?}");
            seen.insert(
                p.topic.to_string(),
                serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
            );
        }
    }
    seen
}

fn out_file(dir: &Path) -> PathBuf {
    dir.join("received.jsonl")
}

/// A stream to `uri`, a device `ident` (HTTP protocol) taken by the stream; their ids.
async fn stream_and_device(http: SocketAddr, uri: &str, ident: &str) -> (u64, u64) {
    let s = rest(
        http,
        "POST",
        "/gw/streams",
        Some(json!({"name": "out", "protocol_name": "http",
            "configuration": {"uri": uri, "timeout": 2}})),
    )
    .await;
    let stream = s["result"][0]["id"].as_u64().expect("stream id");
    assert_eq!(s["result"][0]["queue_ttl"], 86_400);
    let d = rest(
        http,
        "POST",
        "/gw/devices",
        Some(json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}})),
    )
    .await;
    let device = d["result"][0]["id"].as_u64().expect("device id");
    let added = rest(
        http,
        "POST",
        &format!("/gw/streams/{stream}/devices/{device}"),
        None,
    )
    .await;
    assert_eq!(added["result"], json!([{"id": device}]));
    (stream, device)
}

pub(crate) async fn post(http: SocketAddr, device: u64, ns: std::ops::Range<u64>) {
    let batch: Vec<Value> = ns.map(|n| json!({"n": n})).collect();
    rest(
        http,
        "POST",
        &format!("/gw/devices/{device}/messages"),
        Some(Value::Array(batch)),
    )
    .await;
}

/// An express-style receiver (`POST /post`).
#[tokio::test]
async fn every_message_arrives_in_order_through_a_500_and_a_timeout() {
    in_order_through_a_500_and_a_timeout("/post").await;
}

/// An aiohttp-style receiver (`POST /`).
#[tokio::test]
async fn every_message_arrives_in_order_at_the_root_through_a_500_and_a_timeout() {
    in_order_through_a_500_and_a_timeout("/").await;
}

async fn in_order_through_a_500_and_a_timeout(path: &str) {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(data.path(), &["--http", &http_s, "--master-token", KEY]).await;
    let port = free_addr().port();
    let out = out_file(data.path());
    let Some(_rx) = receiver(port, &out, "200,500,hang").await else {
        return;
    };
    let uri = format!("http://127.0.0.1:{port}{path}");
    let (stream, device) = stream_and_device(http, &uri, "s1").await;
    // An HTTP channel taking the same device's messages, also a source of the stream: what
    // reaches the stream both ways is sent once.
    let c = rest(
        http,
        "POST",
        "/gw/channels",
        Some(json!({"name": "in", "protocol_name": "http"})),
    )
    .await;
    let channel = c["result"][0]["id"].as_u64().unwrap();
    let ingest = c["result"][0]["uri"].as_str().unwrap().to_string();
    let ingest_path = &ingest[ingest.find("/gw/").unwrap()..];
    rest(
        http,
        "POST",
        &format!("/gw/streams/{stream}/channels/{channel}"),
        None,
    )
    .await;

    post(http, device, 0..5).await;
    wait_requests(&out, 1).await; // answered 200
    post(http, device, 5..10).await;
    wait_requests(&out, 2).await; // answered 500: kept
    let via_channel: Vec<Value> = (10..15).map(|n| json!({"ident": "s1", "n": n})).collect();
    let r = request(
        http,
        "POST",
        ingest_path,
        &[],
        &Value::Array(via_channel).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    post(http, device, 15..20).await;
    let got = wait_acknowledged(&out, 20).await;
    assert_eq!(got, (0..20).collect::<Vec<u64>>(), "all, once, in order");

    let requests = received(&out);
    assert_eq!(requests[1].0, "500");
    assert_eq!(requests[2].0, "hang");
    // A batch that was not acknowledged is sent again, from its first message.
    assert_eq!(requests[2].2.first(), requests[1].2.first());
    assert_eq!(requests[3].2.first(), requests[1].2.first());
    assert!(requests.iter().all(|r| r.1 == path));

    // The failures are in the stream's log, and the queue is empty.
    let logs = rest(http, "GET", &format!("/gw/streams/{stream}/logs"), None).await;
    let reasons: Vec<String> = logs["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event_code"] == 400)
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "the receiver answered 500".to_string(),
            "timeout".to_string()
        ]
    );
    let mut size = None;
    for _ in 0..100 {
        let s = rest(http, "GET", &format!("/gw/streams/{stream}"), None).await;
        size = s["result"][0]["queue_size"].as_u64();
        if size == Some(0) && s["result"][0]["connected"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(size, Some(0));
    let metrics = request(http, "GET", "/metrics", &[], "").await.body;
    for line in [
        "tern_gw_stream_messages_total{event=\"delivered\"} 20",
        "tern_gw_stream_messages_total{event=\"failures\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    d.kill().await;
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_logged_and_counted() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(data.path(), &["--http", &http_s, "--master-token", KEY]).await;
    // Nothing listens there yet: the queue fills.
    let port = free_addr().port();
    let uri = format!("http://127.0.0.1:{port}/post");
    let (stream, device) = stream_and_device(http, &uri, "full").await;
    rest(
        http,
        "PATCH",
        &format!("/gw/streams/{stream}"),
        Some(json!({"queue_max_bytes": 1000})),
    )
    .await;
    for i in 0..10 {
        post(http, device, i * 3..i * 3 + 3).await;
    }
    let s = rest(http, "GET", &format!("/gw/streams/{stream}"), None).await;
    let size = s["result"][0]["queue_size"].as_u64().unwrap();
    assert!(size > 0 && size <= 1000, "{s}");
    let logs = rest(http, "GET", &format!("/gw/streams/{stream}/logs"), None).await;
    let overflows = logs["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event_code"] == 402 && r["queue_max_bytes"] == 1000)
        .count();
    assert!(overflows >= 1, "{logs}");
    let metrics = request(http, "GET", "/metrics", &[], "").await.body;
    assert!(
        !metrics
            .lines()
            .any(|l| l == "tern_gw_stream_messages_total{event=\"overflows\"} 0"),
        "{metrics}"
    );
    let state = stream_state(d.mqtt, stream).await;
    assert_eq!(
        state[&format!("flespi/state/gw/streams/{stream}/connected")],
        false
    );
    assert_eq!(
        state[&format!("flespi/state/gw/streams/{stream}")]["name"],
        "out"
    );
    // What is left is the newest, delivered in order once the receiver is up.
    let out = out_file(data.path());
    let Some(_rx) = receiver(port, &out, "").await else {
        return;
    };
    let mut got = Vec::new();
    for _ in 0..900 {
        got = acknowledged(&out);
        if got.last() == Some(&29) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.last(), Some(&29), "{:?}", received(&out));
    assert!(got.len() < 30, "the oldest were dropped: {got:?}");
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gap: {got:?}"
    );
    let topic = format!("flespi/state/gw/streams/{stream}/connected");
    let mut connected = Value::Null;
    for _ in 0..100 {
        connected = stream_state(d.mqtt, stream).await[&topic].clone();
        if connected == true {
            break;
        }
    }
    assert_eq!(connected, true);
    d.kill().await;
}

#[tokio::test]
async fn queued_messages_survive_kill_9_while_the_receiver_is_down() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let args = ["--http", http_s.as_str(), "--master-token", KEY];
    let d = Daemon::spawn(data.path(), &args).await;
    // Nothing listens there yet.
    let port = free_addr().port();
    let uri = format!("http://127.0.0.1:{port}/");
    let (stream, device) = stream_and_device(http, &uri, "k9").await;
    rest(
        http,
        "PATCH",
        &format!("/gw/streams/{stream}"),
        Some(json!({"configuration": {"limit_messages": 7}})),
    )
    .await;
    for i in 0..4 {
        // Each POST is answered once its messages are durable, queue included.
        post(http, device, i * 10..i * 10 + 10).await;
    }
    let s = rest(http, "GET", &format!("/gw/streams/{stream}"), None).await;
    assert!(s["result"][0]["queue_size"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["result"][0]["connected"], false);
    d.kill().await;

    let out = out_file(data.path());
    let Some(_rx) = receiver(port, &out, "").await else {
        return;
    };
    let d = Daemon::spawn(data.path(), &args).await;
    let got = wait_acknowledged(&out, 40).await;
    assert_eq!(got, (0..40).collect::<Vec<u64>>(), "all, in order");
    assert!(received(&out).iter().all(|r| r.1 == "/" && r.2.len() <= 7));
    d.kill().await;
}

#[tokio::test]
async fn bad_streams_are_refused_and_validate_message_filters() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(data.path(), &["--http", &http_s, "--master-token", KEY]).await;
    for (bad, why) in [
        (json!({"uri": "not a uri"}), "configuration.uri"),
        (json!({"uri": "ftp://127.0.0.1/x"}), "configuration.uri"),
        (
            json!({"uri": "http://127.0.0.1/", "color": "red"}),
            "configuration.color",
        ),
        (
            json!({"uri": "http://127.0.0.1/", "timeout": 0}),
            "configuration.timeout",
        ),
    ] {
        let (status, v) = call(
            http,
            "POST",
            "/gw/streams",
            Some(json!({"protocol_id": 1, "configuration": bad})),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        let reason = v["errors"][0]["reason"].as_str().unwrap_or("");
        assert!(reason.contains(why), "{v}");
    }
    let (status, v) = call(
        http,
        "POST",
        "/gw/streams",
        Some(json!({"protocol_id": 1, "validate_message": "n >", "configuration": {"uri": "http://127.0.0.1/"}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["errors"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("validate_message"),
        "{v}"
    );
    let protocols = rest(http, "GET", "/gw/stream-protocols/all", None).await;
    assert_eq!(
        protocols["result"],
        json!([{"id": 1, "name": "http", "title": "HTTP POST of JSON arrays"},
            {"id": 2, "name": "mqtt", "title": "MQTT PUBLISH to another broker"}])
    );

    // Only matching messages are queued, and with %ident% each ident has its own URL.
    let port = free_addr().port();
    let out = out_file(data.path());
    let Some(_rx) = receiver(port, &out, "").await else {
        return;
    };
    let uri = format!("http://127.0.0.1:{port}/post/%ident%");
    let (stream, device) = stream_and_device(http, &uri, "v1").await;
    rest(
        http,
        "PATCH",
        &format!("/gw/streams/{stream}"),
        Some(json!({"validate_message": "n % 2 == 0"})),
    )
    .await;
    post(http, device, 0..10).await;
    let got = wait_acknowledged(&out, 5).await;
    assert_eq!(got, vec![0, 2, 4, 6, 8]);
    assert!(received(&out).iter().all(|r| r.1 == "/post/v1"));
    d.kill().await;
}

#[tokio::test]
async fn an_https_receiver_is_checked_against_the_streams_ca() {
    let data = tempfile::tempdir().unwrap();
    let certs = data.path().join("certs");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["certs", "dev", "--out"])
        .arg(&certs)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(
        data.path().join("data").as_path(),
        &["--http", &http_s, "--master-token", KEY],
    )
    .await;
    let port = free_addr().port();
    let out = out_file(data.path());
    let more = [
        "--cert".to_string(),
        certs.join("server.pem").display().to_string(),
        "--key".to_string(),
        certs.join("server.key").display().to_string(),
    ];
    let Some(_rx) = receiver_with(port, &out, "", &more).await else {
        return;
    };
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let uri = format!("https://127.0.0.1:{port}/post");
    let (stream, device) = stream_and_device(http, &uri, "tls").await;
    // The system's CAs do not know the receiver's: refused, logged, kept.
    post(http, device, 0..3).await;
    let mut failed = Value::Null;
    for _ in 0..300 {
        let logs = rest(http, "GET", &format!("/gw/streams/{stream}/logs"), None).await;
        if let Some(r) = logs["result"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["event_code"] == 400))
        {
            failed = r.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed["message_count"], 3, "{failed}");
    assert!(received(&out).is_empty());
    rest(
        http,
        "PATCH",
        &format!("/gw/streams/{stream}"),
        Some(json!({"configuration": {"ca": ca}})),
    )
    .await;
    assert_eq!(wait_acknowledged(&out, 3).await, vec![0, 1, 2]);
    d.kill().await;
}
