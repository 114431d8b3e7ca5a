//! MQTT channels (docs/flespi.md#devices) with real publishers and a real remote broker: an
//! internal channel fed by `mosquitto_pub` keeps ingesting after tern restarts on the same data
//! directory; an external channel reaches Debian's Mosquitto over `mqtts://` with a private CA
//! and a password, and comes back after tern restarts. Skipped, with a message, when the
//! Mosquitto programs are not installed. Channel CRUD and each configuration key are tested in
//! `crates/tern-api/tests/api/gw_channels.rs`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::http::request;
use crate::support::mosquitto::{Mosquitto, mosquitto_binary};
use crate::support::{TestBroker, TestCerts, WAIT, loopback};

/// The device type of the MQTT protocol.
const MQTT_TYPE: u64 = 2;

async fn start(dir: &Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::with(move |c| {
        c.store.data_dir = dir;
        c.listeners.http = Some(loopback());
        c.auth.anonymous = false;
    })
    .await
}

async fn call(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Authorization: FlespiToken {}", b.master_key());
    let body = body.map(|v| v.to_string()).unwrap_or_default();
    let r = request(b.http(), method, path, &[&auth], &body).await;
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

async fn rest(b: &TestBroker, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(b, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
}

async fn create(b: &TestBroker, path: &str, item: Value) -> u64 {
    rest(b, "POST", path, Some(item)).await["result"][0]["id"]
        .as_u64()
        .expect("id")
}

async fn messages(b: &TestBroker, device: u64) -> Vec<Value> {
    let v = rest(b, "GET", &format!("/gw/devices/{device}/messages"), None).await;
    v["result"].as_array().expect("result").clone()
}

async fn connections(b: &TestBroker, channel: u64) -> Value {
    let path = format!("/gw/channels/{channel}?fields=connections_count");
    rest(b, "GET", &path, None).await["result"][0]["connections_count"].clone()
}

/// Polls until the channel's `connections_count` is 1.
async fn connected(b: &TestBroker, channel: u64) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while connections(b, channel).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel {channel} did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `mosquitto_pub` with `args`; `None` when it is not installed.
async fn mosquitto_pub(args: &[&str]) -> Option<bool> {
    let status = Command::new("mosquitto_pub")
        .args(args)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(WAIT, status).await {
        Ok(Ok(s)) => Some(s.success()),
        Ok(Err(_)) => None,
        Err(_) => Some(false),
    }
}

/// Publishes `{"n": k}` for k = `first`, `first + 1`, ... with `publish` until the device holds
/// more than `before` messages (a publish made before the channel's subscription reached the
/// broker is lost, so the first ones may be); returns the device's messages.
async fn publish_until_stored(
    b: &TestBroker,
    device: u64,
    before: usize,
    first: u32,
    publish: impl Fn(String) -> Vec<String>,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let mut n = first;
    loop {
        let args = publish(json!({"n": n}).to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(
            mosquitto_pub(&args).await,
            Some(true),
            "mosquitto_pub {args:?}"
        );
        n += 1;
        for _ in 0..10 {
            let got = messages(b, device).await;
            if got.len() > before {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing reached device {device}"
        );
    }
}

#[tokio::test]
async fn an_internal_channel_keeps_ingesting_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let device = create(
        &b,
        "/gw/devices",
        json!({"name": "m", "device_type_id": MQTT_TYPE, "configuration": {"ident": "m1"}}),
    )
    .await;
    let channel = create(
        &b,
        "/gw/channels",
        json!({"name": "trackers", "protocol_name": "mqtt", "configuration":
               {"broker": "internal", "topics": ["trackers/+/data"], "ident_topic_level": 1}}),
    )
    .await;
    let publish = |addr: std::net::SocketAddr, key: String, payload: &str| {
        let port = addr.port().to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            &key,
            "-q",
            "1",
            "-t",
            "trackers/m1/data",
            "-m",
            payload,
        ];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mosquitto_pub(&args).await
        }
    };
    let Some(sent) = publish(b.addr, b.master_key(), r#"{"speed": 1}"#).await else {
        eprintln!("SKIPPED: mosquitto_pub is not installed (Debian mosquitto-clients)");
        return;
    };
    assert!(sent);
    // The tap feeds the channel without a socket: the message is stored once the tap's task
    // ran, shortly after the PUBACK.
    let deadline = tokio::time::Instant::now() + WAIT;
    while messages(&b, device).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing ingested");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = messages(&b, device).await;
    assert_eq!(got[0]["peer"], "mqtt:internal");
    assert_eq!(got[0]["channel.id"], channel);

    assert!(b.shutdown(Duration::from_secs(5)).await);
    let b = start(data.path()).await;
    assert_eq!(connections(&b, channel).await, 1);
    for speed in [2, 3] {
        let sent = publish(b.addr, b.master_key(), &format!(r#"{{"speed": {speed}}}"#)).await;
        assert_eq!(sent, Some(true));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while messages(&b, device).await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ingested after the restart: {:?}",
            messages(&b, device).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let speeds: Vec<Value> = messages(&b, device)
        .await
        .iter()
        .map(|m| m["speed"].clone())
        .collect();
    assert_eq!(speeds, [json!(1), json!(2), json!(3)]);
}

#[tokio::test]
async fn an_external_channel_over_tls_with_a_password_resumes_after_a_restart() {
    let Some(binary) = mosquitto_binary() else {
        eprintln!("SKIPPED: the mosquitto binary is not installed (apt-get install mosquitto)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // tern's development CA and server certificate (for localhost), as the TLS tests use:
    // libmosquitto's OpenSSL accepts them.
    let certs = TestCerts::new();
    let passwd = dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwd)
        .args(["tern", "s3cret"])
        .status()
        .await;
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mosquitto_passwd is not installed");
        return;
    }
    let tls = format!(
        "cafile {}\ncertfile {}\nkeyfile {}",
        certs.files.ca.display(),
        certs.files.server_cert.display(),
        certs.files.server_key.display()
    );
    let broker = Mosquitto::start_in(
        binary,
        dir,
        &format!("allow_anonymous false\npassword_file {{dir}}/passwd\n{tls}"),
    )
    .await
    .expect("mosquitto starts");
    let uri = format!("mqtts://localhost:{}", broker.port);

    let data = tempfile::tempdir().unwrap();
    let b = start(data.path()).await;
    let device = create(
        &b,
        "/gw/devices",
        json!({"name": "e", "device_type_id": MQTT_TYPE, "configuration": {"ident": "e1"}}),
    )
    .await;
    let configuration = |ca: Value| {
        json!({"name": "remote", "protocol_id": 2, "configuration": {
            "broker": {"uri": uri, "username": "tern", "password": "s3cret", "qos": 1, "ca": ca},
            "topics": ["ext/+/data"], "ident_topic_level": 1}})
    };
    let (status, answer) = call(
        &b,
        "POST",
        "/gw/channels",
        Some(configuration(json!("not a certificate"))),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("broker.ca"), "{answer}");
    let channel = create(
        &b,
        "/gw/channels",
        configuration(json!(std::fs::read_to_string(certs.ca()).unwrap())),
    )
    .await;
    connected(&b, channel).await;

    let port = broker.port.to_string();
    let ca = certs.ca().display().to_string();
    let publish = |payload: String| -> Vec<String> {
        [
            "--cafile",
            &ca,
            "-h",
            "localhost",
            "-p",
            &port,
            "-u",
            "tern",
            "-P",
            "s3cret",
            "-q",
            "1",
            "-t",
            "ext/e1/data",
            "-m",
            &payload,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let before = publish_until_stored(&b, device, 0, 0, publish).await;
    for m in &before {
        assert_eq!(m["peer"], "mqtt:external", "{m}");
        assert_eq!(m["channel.id"], channel);
        assert_eq!(m["ident"], "e1");
    }

    // tern restarts: the channel connects again and new messages arrive, after the old ones.
    // What was published while tern was away is kept by the broker (the channel's persistent
    // session) and arrives when it is back.
    assert!(b.shutdown(Duration::from_secs(5)).await);
    for n in 60..63 {
        let args = publish(json!({"n": n}).to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(mosquitto_pub(&args).await, Some(true), "{args:?}");
    }
    let b = start(data.path()).await;
    connected(&b, channel).await;
    // At least once: a message stored just before the shutdown whose acknowledgement had not
    // gone out yet comes again (a duplicate); nothing is lost.
    let ns =
        |list: &[Value]| -> Vec<u64> { list.iter().map(|m| m["n"].as_u64().expect("n")).collect() };
    let before_n = ns(&before);
    let mut offline = Vec::new();
    for _ in 0..250 {
        offline = ns(&messages(&b, device).await);
        if offline.contains(&62) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tail: Vec<u64> = offline[before.len()..]
        .iter()
        .copied()
        .filter(|n| !before_n.contains(n))
        .collect();
    assert_eq!(
        tail,
        vec![60, 61, 62],
        "published while tern was down: {offline:?}"
    );
    assert_eq!(&offline[..before.len()], &before_n[..]);
    let after = publish_until_stored(&b, device, offline.len(), 100, publish).await;
    let n = ns(&after);
    let (old, new) = n.split_at(offline.len());
    assert_eq!(old, &offline[..]);
    assert!(!new.is_empty() && new.iter().all(|n| *n >= 100), "{n:?}");
    assert!(new.is_sorted(), "in order: {n:?}");
    assert!(after.iter().all(|m| m["peer"] == "mqtt:external"));
    drop(broker);
}

/// With `[gw] outbound_private_targets = false` an external channel's broker at a literal
/// loopback address is refused at create and at update (400 naming the rule), and one named
/// `localhost` is created but never connected to: its host is resolved and checked when the
/// client starts, and the refusal is logged.
#[tokio::test]
async fn the_outbound_switch_refuses_loopback_brokers() {
    use crate::gw_streams::{KEY, call, rest};
    use crate::support::process::{Daemon, free_addr};
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
    let channel = |uri: String| {
        json!({"name": "ext", "protocol_name": "mqtt",
            "configuration": {"broker": {"uri": uri}, "topics": ["t/#"]}})
    };
    let (status, v) = call(
        http,
        "POST",
        "/gw/channels",
        Some(channel(format!("mqtt://127.0.0.1:{port}"))),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let reason = v["errors"][0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("loopback") && reason.contains("outbound_private_targets"),
        "{v}"
    );
    let created = rest(
        http,
        "POST",
        "/gw/channels",
        Some(channel(format!("mqtt://localhost:{port}"))),
    )
    .await;
    let id = created["result"][0]["id"].as_u64().expect("channel id");
    assert!(
        d.wait_for_log("external MQTT channel not connected").await,
        "no refusal logged: {}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains("localhost") && log.contains("loopback"),
        "{log}"
    );
    let (status, v) = call(
        http,
        "PATCH",
        &format!("/gw/channels/{id}"),
        Some(json!({"configuration": {"broker": {"uri": format!("mqtt://[::1]:{port}")}}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let item = rest(
        http,
        "GET",
        &format!("/gw/channels/{id}?fields=connections_count"),
        None,
    )
    .await;
    assert_eq!(item["result"][0]["connections_count"], json!(0), "{item}");
    d.kill().await;
}
