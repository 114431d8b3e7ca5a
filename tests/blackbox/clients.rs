//! Real clients against tern: rumqttc (3.1.1 and 5), mosquitto_pub/sub (3.1, 3.1.1, 5),
//! paho-mqtt (Python, 3.1.1 and 5) and gmqtt (Python, 5, with a token).

use std::process::Stdio;
use std::time::Duration;

use tern_codec::{ProtocolVersion, QoS};
use tokio::process::Command;

use crate::support::process::client_script;
use crate::support::{Client, TestBroker, WAIT};

#[tokio::test]
async fn rumqttc_v311_publish_subscribe_qos1() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS as RQoS};
    let b = TestBroker::start().await;
    let mut opts = MqttOptions::new("rumqttc-311", "127.0.0.1", b.addr.port());
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client.subscribe("rq/t", RQoS::AtLeastOnce).await.unwrap();
    let mut published = false;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await.expect("event loop") {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    client
                        .publish("rq/t", RQoS::AtLeastOnce, false, b"from rumqttc".to_vec())
                        .await
                        .unwrap();
                    published = true;
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message in time");
    assert_eq!(&got.payload[..], b"from rumqttc");
    assert_eq!(got.qos, RQoS::AtLeastOnce);
}

#[tokio::test]
async fn rumqttc_v5_publish_subscribe() {
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let b = TestBroker::start().await;
    let mut opts = MqttOptions::new("rumqttc-5", "127.0.0.1", b.addr.port());
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client.subscribe("rq5/t", RQoS::ExactlyOnce).await.unwrap();
    let mut published = false;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await.expect("event loop") {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    client
                        .publish("rq5/t", RQoS::ExactlyOnce, false, b"v5".to_vec())
                        .await
                        .unwrap();
                    published = true;
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message in time");
    assert_eq!(&got.payload[..], b"v5");
    let user = got.properties.expect("properties").user_properties;
    assert!(user.iter().any(|(k, _)| k == "timestamp"));
}

/// Runs mosquitto_sub for one message in the background, publishes with mosquitto_pub, and
/// returns what mosquitto_sub printed.
async fn mosquitto_round_trip(
    b: &TestBroker,
    sub_version: &str,
    pub_version: &str,
    qos: &str,
) -> String {
    let port = b.addr.port().to_string();
    let topic = format!("mosq/{sub_version}/{pub_version}/{qos}");
    let client_id = format!("sub-{sub_version}-{pub_version}-{qos}");
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            sub_version,
            "-q",
            qos,
            "-t",
            &topic,
            "-C",
            "1",
            "-W",
            "5",
            "-v",
        ])
        .args(["-i", &client_id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed (Debian mosquitto-clients)");
    // Wait until the subscription exists: the broker counts it.
    // mosquitto_sub connects anonymously: its session is in the anonymous account.
    let key = b.anonymous_key(&client_id);
    let subscribed = crate::support::eventually(|| {
        b.broker()
            .session(&key)
            .is_some_and(|s| s.lock().subscriptions.keys().any(|k| k.filter == *topic))
    })
    .await;
    if !subscribed {
        let out = sub.wait_with_output().await.unwrap();
        panic!(
            "mosquitto_sub: {:?} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        subscribed,
        "mosquitto_sub did not subscribe: {:?}",
        b.broker()
            .sessions()
            .iter()
            .map(|s| (
                s.key.clone(),
                s.lock().subscriptions.keys().cloned().collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            pub_version,
            "-q",
            qos,
            "-t",
            &topic,
            "-m",
            "hello mosquitto",
        ])
        .status()
        .await
        .expect("mosquitto_pub is installed");
    assert!(status.success(), "mosquitto_pub failed");
    let out = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
        .await
        .expect("mosquitto_sub exits")
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn mosquitto_clients_every_version() {
    // libmosquitto refuses an Assigned Client Identifier it did not ask for: the defaults
    // (mqtt.echo_client_id = false) send it only for generated ids.
    let b = TestBroker::start().await;
    for (sub_v, pub_v, qos) in [
        ("mqttv31", "mqttv311", "1"),
        ("mqttv311", "mqttv31", "2"),
        ("5", "5", "1"),
        ("mqttv311", "5", "0"),
    ] {
        let line = mosquitto_round_trip(&b, sub_v, pub_v, qos).await;
        assert_eq!(line, format!("mosq/{sub_v}/{pub_v}/{qos} hello mosquitto"));
    }
}

/// `mosquitto_sub -V 5 -i ID -c` with the defaults: libmosquitto accepts the CONNACK (no echoed
/// Assigned Client Identifier), and the persistent session keeps a QoS 1 message published
/// while it was away.
#[tokio::test]
async fn mosquitto_v5_own_id_persistent_session_with_defaults() {
    let b = TestBroker::start().await;
    let port = b.addr.port().to_string();
    let session = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "5",
        "-i",
        "mosq-v5-own",
        "-c",
        "-q",
        "1",
        "-t",
        "mosq/v5/own",
    ];
    // First visit: creates the session and its subscription, then leaves with -W.
    let out = Command::new("mosquitto_sub")
        .args(session)
        .args(["-W", "1"])
        .output()
        .await
        .expect("mosquitto_sub is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("rotocol error"),
        "mosquitto_sub -V 5 -i ID -c: {stderr}"
    );
    // mosquitto_sub connects anonymously: its session is in the anonymous account.
    let key = b.anonymous_key("mosq-v5-own");
    let kept = b.broker().session(&key).is_some_and(|s| {
        s.lock()
            .subscriptions
            .keys()
            .any(|k| &*k.filter == "mosq/v5/own")
    });
    assert!(kept, "the persistent session and its subscription are kept");
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-q", "1"])
        .args(["-t", "mosq/v5/own", "-m", "while away"])
        .status()
        .await
        .expect("mosquitto_pub");
    assert!(status.success());
    // Second visit: the queued message arrives.
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new("mosquitto_sub")
            .args(session)
            .args(["-C", "1", "-W", "5"])
            .output(),
    )
    .await
    .expect("mosquitto_sub exits")
    .expect("mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "while away",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn mosquitto_sub_gets_retained_and_raw_client_sees_its_publish() {
    let b = TestBroker::start().await;
    let mut raw = Client::connect(b.addr, ProtocolVersion::V311, "raw-ret").await;
    raw.publish("mosq/retained", b"kept", QoS::AtLeastOnce, true)
        .await;
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.addr.port().to_string(),
            "-t",
            "mosq/retained",
            "-C",
            "1",
            "-W",
            "5",
            "-V",
            "mqttv31",
        ])
        .output()
        .await
        .expect("mosquitto_sub");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kept");
}

async fn paho(b: &TestBroker, version: &str) {
    let port = b.addr.port().to_string();
    let args = ["127.0.0.1", port.as_str(), version];
    client_script("python3", "tests/python/paho_roundtrip.py", &args, WAIT * 6).await;
}

#[tokio::test]
async fn paho_mqtt_v311() {
    let b = TestBroker::start().await;
    paho(&b, "311").await;
}

#[tokio::test]
async fn paho_mqtt_v5() {
    let b = TestBroker::start().await;
    paho(&b, "5").await;
}

/// gmqtt (Gurtam's Python client, MQTT 5) with the master token as its bare user name: CONNACK
/// properties, QoS 2, overlapping subscriptions with both identifiers, `$share`, wills on
/// DISCONNECT 0x04 only, and an unknown token refused (tests/python/gmqtt_flows.py).
#[tokio::test]
async fn gmqtt_flows_with_a_token() {
    let b = TestBroker::with(|c| c.auth.anonymous = false).await;
    let (port, master) = (b.addr.port().to_string(), b.master_key());
    let args = ["127.0.0.1", port.as_str(), master.as_str()];
    let out = client_script("python3", "tests/python/gmqtt_flows.py", &args, WAIT * 12).await;
    assert!(out.trim_end().ends_with("ok"), "gmqtt: {out}");
}
