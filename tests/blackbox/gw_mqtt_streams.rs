//! MQTT streams (docs/flespi.md#streams, spec flespi-gw §6 "mqtt") against a real `tern`
//! process and a real Mosquitto (Debian's `mosquitto`, started by the test on a free port),
//! read back with `mosquitto_sub`: every message arrives once per PUBLISH, in order, on its
//! template topic; the queue holds while the broker is down and drains when it is back; what
//! was queued survives `kill -9`; TLS with a private CA; bad configurations are 400s; and the
//! `[gw] outbound_private_targets` switch refuses loopback targets (a literal address at
//! create, `localhost` at connect time, logged) for MQTT and HTTP streams. Skipped, with a
//! message, when the Mosquitto programs are not installed. Waits are bounded polls.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::gw_streams::{KEY, call, post, rest, stream_state};
use crate::support::TestCerts;
use crate::support::mosquitto::Mosquitto;
use crate::support::process::{Daemon, free_addr};

/// What a `mosquitto_sub -v` printed: one `topic payload` line per message.
struct Subscriber {
    _child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Subscribes to `out/#` and `topics` (QoS 1, a persistent session `sub`) on `port` with
    /// `more` arguments (TLS); `None` when mosquitto_sub is missing.
    async fn start(port: u16, more: &[String], topics: &[&str]) -> Option<Subscriber> {
        let Ok(mut child) = Command::new("mosquitto_sub")
            .args(["-h", "localhost", "-p", &port.to_string()])
            .args(["-q", "1", "-c", "-i", "sub", "-t", "out/#", "-v"])
            .args(topics.iter().flat_map(|t| ["-t", t]))
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        else {
            eprintln!("SKIPPED: mosquitto_sub is not installed (Debian mosquitto-clients)");
            return None;
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let into = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                into.lock().expect("lines").push(line);
            }
        });
        let sub = Subscriber {
            _child: child,
            lines,
        };
        // Subscribed once a probe comes back.
        for _ in 0..100 {
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "localhost", "-p", &port.to_string()])
                .args(["-q", "1", "-t", "out/probe", "-m", "probe"])
                .args(more)
                .status()
                .await;
            if sub.lines().iter().any(|l| l == "out/probe probe") {
                return Some(sub);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("mosquitto_sub did not subscribe");
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The stream's messages: `(topic, n)`, probes left out.
    fn messages(&self) -> Vec<(String, u64)> {
        self.lines()
            .iter()
            .filter(|l| !l.starts_with("out/probe "))
            .filter_map(|l| {
                let (topic, payload) = l.split_once(' ')?;
                let v: Value = serde_json::from_str(payload).ok()?;
                Some((topic.to_string(), v["n"].as_u64()?))
            })
            .collect()
    }

    /// Polls (bounded: 60 s) until `n` distinct messages arrived; the `n`s in first-arrival
    /// order (a message sent again after a reconnect is counted once: at least once).
    async fn wait(&self, n: usize) -> Vec<u64> {
        let mut firsts = Vec::new();
        for _ in 0..600 {
            firsts.clear();
            for (_, m) in self.messages() {
                if !firsts.contains(&m) {
                    firsts.push(m);
                }
            }
            if firsts.len() >= n {
                return firsts;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the subscriber got {:?}", self.lines());
    }
}

/// An MQTT stream with `configuration` and a device `ident` it takes; their ids.
async fn stream_and_device(http: SocketAddr, configuration: Value, ident: &str) -> (u64, u64) {
    let s = rest(
        http,
        "POST",
        "/gw/streams",
        Some(json!({"name": "bridge", "protocol_name": "mqtt", "configuration": configuration})),
    )
    .await;
    let stream = s["result"][0]["id"].as_u64().expect("stream id");
    assert_eq!(s["result"][0]["protocol_id"], 2);
    let d = rest(
        http,
        "POST",
        "/gw/devices",
        Some(json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}})),
    )
    .await;
    let device = d["result"][0]["id"].as_u64().expect("device id");
    rest(
        http,
        "POST",
        &format!("/gw/streams/{stream}/devices/{device}"),
        None,
    )
    .await;
    (stream, device)
}

/// The stream's log records with event code `code`.
async fn logged(http: SocketAddr, stream: u64, code: u64) -> Vec<Value> {
    let logs = rest(http, "GET", &format!("/gw/streams/{stream}/logs"), None).await;
    logs["result"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["event_code"] == code)
        .cloned()
        .collect()
}

/// Polls (bounded: 60 s) until the stream logged a record with `code`; the first.
async fn wait_logged(http: SocketAddr, stream: u64, code: u64) -> Value {
    for _ in 0..600 {
        if let Some(r) = logged(http, stream, code).await.into_iter().next() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no record {code} in {}",
        rest(http, "GET", &format!("/gw/streams/{stream}/logs"), None).await
    );
}

/// The stream's `(queue_size, connected)`.
async fn state(http: SocketAddr, stream: u64) -> (u64, Value) {
    let s = rest(http, "GET", &format!("/gw/streams/{stream}"), None).await;
    (
        s["result"][0]["queue_size"].as_u64().expect("queue_size"),
        s["result"][0]["connected"].clone(),
    )
}

/// Polls (bounded: 30 s) until the queue is empty and the stream connected.
async fn wait_drained(http: SocketAddr, stream: u64) {
    let mut last = (0, Value::Null);
    for _ in 0..300 {
        last = state(http, stream).await;
        if last == (0, json!(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {stream}: {last:?}");
}

/// Mosquitto with persistence (a subscriber's session and its queued messages outlive a
/// restart once saved, every second).
async fn mosquitto() -> Option<Mosquitto> {
    Mosquitto::start(
        "allow_anonymous true\npersistence true\npersistence_location {dir}/\nautosave_interval 1",
    )
    .await
}

/// Polls until Mosquitto saved its database (the subscriber's session is in it).
async fn saved(m: &Mosquitto) {
    let db = m.path("mosquitto.db");
    let before = std::fs::metadata(&db).and_then(|d| d.modified()).ok();
    for _ in 0..100 {
        let now = std::fs::metadata(&db).and_then(|d| d.modified()).ok();
        if now.is_some() && now != before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mosquitto did not save its database");
}

#[tokio::test]
async fn every_message_arrives_in_order_on_its_topic_through_a_broker_restart() {
    let Some(mut broker) = mosquitto().await else {
        return;
    };
    let Some(sub) = Subscriber::start(broker.port, &[], &[]).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(data.path(), &["--http", &http_s, "--master-token", KEY]).await;
    let (stream, device) = stream_and_device(
        http,
        json!({"uri": broker.uri("mqtt"), "topic": "out/%ident%/%device.id%", "qos": 1}),
        "m1",
    )
    .await;
    post(http, device, 0..300).await;
    assert_eq!(sub.wait(300).await, (0..300).collect::<Vec<u64>>());
    let topic = format!("out/m1/{device}");
    assert!(sub.messages().iter().all(|(t, _)| *t == topic));
    wait_drained(http, stream).await;

    // The broker goes away: the queue holds, the stream says so and logs why.
    saved(&broker).await;
    broker.stop().await;
    post(http, device, 300..400).await;
    let failed = wait_logged(http, stream, 400).await;
    assert!(
        failed["reason"].as_str().unwrap_or("").contains("broker"),
        "{failed}"
    );
    let mut st = state(http, stream).await;
    for _ in 0..100 {
        if st.1 == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        st = state(http, stream).await;
    }
    assert!(st.0 > 0, "queued while the broker is down: {st:?}");
    assert_eq!(st.1, false);
    assert_eq!(
        stream_state(d.mqtt, stream).await[&format!("flespi/state/gw/streams/{stream}/connected")],
        false
    );

    // Back: the queue drains, in order after what came before.
    broker.restart().await;
    assert_eq!(sub.wait(400).await, (0..400).collect::<Vec<u64>>());
    wait_drained(http, stream).await;
    let resumed = wait_logged(http, stream, 401).await;
    assert!(resumed["message_count"].as_u64() > Some(0), "{resumed}");
    assert!(resumed["ack_latency"].is_number(), "{resumed}");
    d.kill().await;
}

#[tokio::test]
async fn queued_messages_survive_kill_9_while_the_broker_is_down() {
    let Some(mut broker) = mosquitto().await else {
        return;
    };
    broker.stop().await;
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let args = ["--http", http_s.as_str(), "--master-token", KEY];
    let d = Daemon::spawn(data.path(), &args).await;
    // QoS 0 and the default topic: a message leaves the queue once written.
    let (stream, device) =
        stream_and_device(http, json!({"uri": broker.uri("mqtt"), "qos": 0}), "k9").await;
    for i in 0..5 {
        post(http, device, i * 10..i * 10 + 10).await;
    }
    let (size, connected) = state(http, stream).await;
    assert!(size > 0);
    assert_eq!(connected, false);
    d.kill().await;

    broker.restart().await;
    let Some(sub) = Subscriber::start(broker.port, &[], &["flespi/#"]).await else {
        return;
    };
    let d = Daemon::spawn(data.path(), &args).await;
    assert_eq!(sub.wait(50).await, (0..50).collect::<Vec<u64>>());
    let topic = format!("flespi/message/gw/devices/{device}");
    assert!(sub.messages().iter().all(|(t, _)| *t == topic));
    wait_drained(http, stream).await;
    d.kill().await;
}

#[tokio::test]
async fn a_tls_broker_is_checked_against_the_streams_ca() {
    // tern's development CA and server certificate (for localhost): libmosquitto's OpenSSL
    // accepts them.
    let certs = TestCerts::new();
    let ca = certs.ca();
    let Some(broker) = Mosquitto::start(&format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}",
        ca.display(),
        certs.files.server_cert.display(),
        certs.files.server_key.display()
    ))
    .await
    else {
        return;
    };
    let tls = ["--cafile".to_string(), ca.display().to_string()];
    let Some(sub) = Subscriber::start(broker.port, &tls, &[]).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(data.path(), &["--http", &http_s, "--master-token", KEY]).await;
    let uri = format!("mqtts://localhost:{}", broker.port);
    let (stream, device) =
        stream_and_device(http, json!({"uri": uri, "topic": "out/tls/%n%"}), "t1").await;
    // The system's CAs do not know the broker's: refused, logged, kept.
    post(http, device, 0..3).await;
    let failed = wait_logged(http, stream, 400).await;
    assert!(
        failed["reason"].as_str().unwrap_or("").contains("TLS"),
        "{failed}"
    );
    assert!(sub.messages().is_empty());
    assert!(state(http, stream).await.0 > 0);
    rest(
        http,
        "PATCH",
        &format!("/gw/streams/{stream}"),
        Some(json!({"configuration": {"ca": std::fs::read_to_string(&ca).unwrap()}})),
    )
    .await;
    assert_eq!(sub.wait(3).await, vec![0, 1, 2]);
    let topics: Vec<String> = sub.messages().into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["out/tls/0", "out/tls/1", "out/tls/2"]);
    wait_drained(http, stream).await;
    d.kill().await;
}

#[tokio::test]
async fn bad_mqtt_streams_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn(data.path(), &["--http", &http_s, "--master-token", KEY]).await;
    for (bad, why) in [
        (json!({}), "configuration.uri"),
        (json!({"uri": "http://127.0.0.1:1883"}), "configuration.uri"),
        (
            json!({"uri": "mqtt://127.0.0.1:99999"}),
            "configuration.uri",
        ),
        (
            json!({"uri": "mqtt://127.0.0.1", "qos": 2}),
            "configuration.qos",
        ),
        (
            json!({"uri": "mqtt://127.0.0.1", "topic": "a/%device.id"}),
            "configuration.topic",
        ),
        (
            json!({"uri": "mqtt://127.0.0.1", "topic": "a/%(%"}),
            "configuration.topic",
        ),
        (
            json!({"uri": "mqtt://127.0.0.1", "topic": "a/+/%ident%"}),
            "configuration.topic",
        ),
        (
            json!({"uri": "mqtt://127.0.0.1", "ca": "nope"}),
            "configuration.ca",
        ),
        (
            json!({"uri": "mqtt://127.0.0.1", "color": "red"}),
            "configuration.color",
        ),
    ] {
        let (status, v) = call(
            http,
            "POST",
            "/gw/streams",
            Some(json!({"protocol_name": "mqtt", "configuration": bad})),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {v}");
        let reason = v["errors"][0]["reason"].as_str().unwrap_or("");
        assert!(reason.contains(why), "{bad}: {v}");
    }
    let protocols = rest(http, "GET", "/gw/stream-protocols/all", None).await;
    let names: Vec<&str> = protocols["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["http", "mqtt"]);
    d.kill().await;
}

/// With `[gw] outbound_private_targets = false`: a literal loopback target is a 400 at create
/// and update; `localhost` passes the create and is refused when connecting, logged, its
/// messages kept.
#[tokio::test]
async fn the_outbound_switch_refuses_loopback_targets() {
    let data = tempfile::tempdir().unwrap();
    let http = free_addr();
    let http_s = http.to_string();
    let d = Daemon::spawn_env(
        data.path(),
        &["--http", &http_s, "--master-token", KEY],
        &[("TERN_GW_OUTBOUND_PRIVATE_TARGETS", "false")],
    )
    .await;
    let port = free_addr().port();
    for (protocol, uri) in [
        ("http", format!("http://127.0.0.1:{port}/post")),
        ("http", format!("http://[::ffff:127.0.0.1]:{port}/")),
        ("mqtt", format!("mqtt://127.0.0.1:{port}")),
        ("mqtt", format!("mqtt://[::1]:{port}")),
    ] {
        let (status, v) = call(
            http,
            "POST",
            "/gw/streams",
            Some(json!({"protocol_name": protocol, "configuration": {"uri": uri}})),
        )
        .await;
        assert_eq!(status, 400, "{uri}: {v}");
        let reason = v["errors"][0]["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("loopback") && reason.contains("outbound_private_targets"),
            "{uri}: {v}"
        );
    }
    for (protocol, uri) in [
        ("http", format!("http://localhost:{port}/post")),
        ("mqtt", format!("mqtt://localhost:{port}")),
    ] {
        let (stream, device) = {
            let s = rest(
                http,
                "POST",
                "/gw/streams",
                Some(json!({"protocol_name": protocol, "configuration": {"uri": uri}})),
            )
            .await;
            let stream = s["result"][0]["id"].as_u64().unwrap();
            let d = rest(
                http,
                "POST",
                "/gw/devices",
                Some(json!({"name": protocol, "device_type_id": 1,
                    "configuration": {"ident": protocol}})),
            )
            .await;
            let device = d["result"][0]["id"].as_u64().unwrap();
            rest(
                http,
                "POST",
                &format!("/gw/streams/{stream}/devices/{device}"),
                None,
            )
            .await;
            (stream, device)
        };
        post(http, device, 0..2).await;
        let failed = wait_logged(http, stream, 400).await;
        let reason = failed["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains("localhost") && reason.contains("loopback"),
            "{uri}: {failed}"
        );
        let (size, connected) = state(http, stream).await;
        assert!(size > 0, "{uri}: kept");
        assert_eq!(connected, false);
        // Changing it to a literal loopback address is refused too.
        let (status, v) = call(
            http,
            "PATCH",
            &format!("/gw/streams/{stream}"),
            Some(json!({"configuration": {"uri": uri.replace("localhost", "127.0.0.1")}})),
        )
        .await;
        assert_eq!(status, 400, "{v}");
    }
    d.kill().await;
}
