//! The client against a real Mosquitto (Debian's `mosquitto`), started by each test on a free
//! loopback port with its own configuration. Skipped, with a message, when it is not installed.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;

use support::*;
use tern_codec::{ProtocolVersion, QoS};
use tern_mqttc::{Client, ClientCert, Roots, Subscription};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

#[tokio::test]
async fn subscribes_receives_and_publishes_qos0_and_qos1() {
    let Some(broker) = Mosquitto::start("allow_anonymous true").await else {
        return;
    };
    for v in VERSIONS {
        let subs = vec![Subscription::new("in/#", QoS::AtLeastOnce)];
        let (handle, mut rx) = Client::start(options(&broker.uri("mqtt"), "c1", v), subs).unwrap();
        assert!(!connected(&mut rx).await);
        // The SUBSCRIBE went out before this PUBLISH on the same connection, so Mosquitto has
        // the subscription when the message arrives.
        handle
            .publish("in/a", "zero", QoS::AtMostOnce, false)
            .await
            .unwrap();
        handle
            .publish("in/b", "one", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let mut got = vec![message(&mut rx).await, message(&mut rx).await];
        got.sort();
        assert_eq!(
            got,
            [
                ("in/a".to_string(), b"zero".to_vec(), QoS::AtMostOnce),
                ("in/b".to_string(), b"one".to_vec(), QoS::AtLeastOnce),
            ],
            "{v}"
        );
        let m = handle.metrics().snapshot();
        assert_eq!(
            (m.connects, m.messages_out, m.messages_in),
            (1, 2, 2),
            "{v}"
        );
        handle.close().await;
        assert!(handle.is_closed());
        assert_eq!(
            handle.publish("in/c", "late", QoS::AtMostOnce, false).await,
            Err(tern_mqttc::PublishError::Closed)
        );
    }
}

#[tokio::test]
async fn a_second_client_publishes_to_the_first() {
    let Some(broker) = Mosquitto::start("allow_anonymous true").await else {
        return;
    };
    let subs = vec![Subscription::new("dev/+/data", QoS::AtLeastOnce)];
    let (sub, mut rx) = Client::start(
        options(&broker.uri("mqtt"), "sub", ProtocolVersion::V5),
        subs,
    )
    .unwrap();
    connected(&mut rx).await;
    // Subscribed once our own publish comes back.
    sub.publish("dev/0/data", "probe", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(message(&mut rx).await.1, b"probe");
    let (publisher, mut prx) = Client::start(
        options(&broker.uri("mqtt"), "pub", ProtocolVersion::V311),
        vec![],
    )
    .unwrap();
    connected(&mut prx).await;
    for i in 0..20 {
        publisher
            .publish(
                format!("dev/{i}/data"),
                format!("{i}"),
                QoS::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
    }
    for i in 0..20 {
        let (topic, payload, qos) = message(&mut rx).await;
        assert_eq!(
            (topic, payload, qos),
            (
                format!("dev/{i}/data"),
                format!("{i}").into_bytes(),
                QoS::AtLeastOnce
            )
        );
    }
    publisher.close().await;
    sub.close().await;
}

#[tokio::test]
async fn username_and_password() {
    let Some(binary) = mosquitto_binary() else {
        eprintln!("SKIPPED: the mosquitto binary is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwd)
        .args(["device", "s3cret"])
        .status()
        .expect("mosquitto_passwd runs");
    assert!(status.success());
    let broker = Mosquitto::start_in(
        binary,
        dir,
        "allow_anonymous false\npassword_file {dir}/passwd",
    )
    .await
    .unwrap();

    let mut o = options(&broker.uri("mqtt"), "good", ProtocolVersion::V5);
    o.username = Some("device".into());
    o.password = Some(b"s3cret".to_vec());
    let (good, mut rx) = Client::start(o, vec![Subscription::new("a", QoS::AtMostOnce)]).unwrap();
    connected(&mut rx).await;
    good.publish("a", "hi", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(message(&mut rx).await.1, b"hi");
    good.close().await;

    for v in VERSIONS {
        let mut o = options(&broker.uri("mqtt"), "bad", v);
        o.username = Some("device".into());
        o.password = Some(b"wrong".to_vec());
        let (bad, _rx) = Client::start(o, vec![]).unwrap();
        // Refused, retried with back-off, never connected.
        eventually(|| bad.metrics().connect_failures.load(Ordering::Relaxed) >= 2).await;
        assert_eq!(bad.metrics().connects.load(Ordering::Relaxed), 0);
        bad.close().await;
    }
}

#[tokio::test]
async fn tls_with_a_ca_pem() {
    let Some(binary) = mosquitto_binary() else {
        eprintln!("SKIPPED: the mosquitto binary is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates();
    let ca = certs.ca.clone();
    write(dir.path(), "ca.pem", &certs.ca);
    write(dir.path(), "server.pem", &certs.server);
    write(dir.path(), "server.key", &certs.server_key);
    let broker = Mosquitto::start_in(
        binary,
        dir,
        "allow_anonymous true\ncafile {dir}/ca.pem\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key",
    )
    .await
    .unwrap();
    let uri = format!("mqtts://localhost:{}", broker.port);

    // Verified against the given CA.
    let mut o = options(&uri, "tls", ProtocolVersion::V5);
    o.tls.roots = Roots::Pem(ca.into_bytes());
    let (c, mut rx) = Client::start(o, vec![Subscription::new("s/#", QoS::AtLeastOnce)]).unwrap();
    connected(&mut rx).await;
    c.publish("s/1", "over tls", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(message(&mut rx).await.1, b"over tls");
    c.close().await;

    // The system roots do not know this CA: every attempt fails.
    let o = options(&uri, "untrusted", ProtocolVersion::V5);
    if let Ok((c, _rx)) = Client::start(o, vec![]) {
        eventually(|| c.metrics().connect_failures.load(Ordering::Relaxed) >= 1).await;
        assert_eq!(c.metrics().connects.load(Ordering::Relaxed), 0);
        c.close().await;
    }

    // Unless verification is turned off explicitly.
    let mut o = options(&uri, "insecure", ProtocolVersion::V311);
    o.tls.roots = Roots::Pem(Vec::new());
    o.tls.insecure_skip_verify = true;
    let (c, mut rx) = Client::start(o, vec![]).unwrap();
    connected(&mut rx).await;
    c.close().await;
}

#[tokio::test]
async fn reconnects_after_the_broker_restarts_and_subscribes_again() {
    let Some(mut broker) = Mosquitto::start("allow_anonymous true").await else {
        return;
    };
    for v in VERSIONS {
        let subs = vec![Subscription::new("r/#", QoS::AtLeastOnce)];
        let (c, mut rx) = Client::start(options(&broker.uri("mqtt"), "r", v), subs).unwrap();
        connected(&mut rx).await;
        c.publish("r/1", "before", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(message(&mut rx).await.1, b"before");

        broker.restart().await;
        next_event(&mut rx, |e| match e {
            tern_mqttc::Event::Disconnected { reason } => Some(reason),
            _ => None,
        })
        .await;
        // Mosquitto without persistence forgot the session; the client subscribes again.
        assert!(!connected(&mut rx).await);
        c.publish("r/2", "after", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(message(&mut rx).await.1, b"after", "{v}");
        let m = c.metrics().snapshot();
        assert_eq!((m.connects, m.disconnects), (2, 1), "{v}");
        c.close().await;
    }
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    let Some(binary) = mosquitto_binary() else {
        eprintln!("SKIPPED: the mosquitto binary is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates();
    write(dir.path(), "ca.pem", &certs.ca);
    write(dir.path(), "server.pem", &certs.server);
    write(dir.path(), "server.key", &certs.server_key);
    let broker = Mosquitto::start_in(
        binary,
        dir,
        "allow_anonymous true\nrequire_certificate true\ncafile {dir}/ca.pem\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key",
    )
    .await
    .unwrap();
    let uri = format!("mqtts://127.0.0.1:{}", broker.port);

    let mut o = options(&uri, "with-cert", ProtocolVersion::V5);
    o.tls.roots = Roots::Pem(certs.ca.clone().into_bytes());
    o.tls.client_cert = Some(ClientCert {
        chain_pem: certs.client.clone().into_bytes(),
        key_pem: certs.client_key.clone().into_bytes(),
    });
    let (c, mut rx) = Client::start(o, vec![Subscription::new("m/#", QoS::AtLeastOnce)]).unwrap();
    connected(&mut rx).await;
    c.publish("m/1", "mutual", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(message(&mut rx).await.1, b"mutual");
    c.close().await;

    // Without one the handshake fails, attempt after attempt.
    let mut o = options(&uri, "without-cert", ProtocolVersion::V5);
    o.tls.roots = Roots::Pem(certs.ca.into_bytes());
    let (c, _rx) = Client::start(o, vec![]).unwrap();
    eventually(|| c.metrics().connect_failures.load(Ordering::Relaxed) >= 2).await;
    assert_eq!(c.metrics().connects.load(Ordering::Relaxed), 0);
    c.close().await;
}

#[test]
fn bad_tls_material_is_refused_at_start() {
    let mut o = tern_mqttc::ClientOptions::new("mqtts://localhost", "c").unwrap();
    o.tls.roots = Roots::Pem(b"not a certificate".to_vec());
    assert!(matches!(
        Client::start(o.clone(), vec![]),
        Err(tern_mqttc::StartError::Tls(
            tern_mqttc::TlsConfigError::NoRoots
        ))
    ));
    o.tls.roots = Roots::Pem(certificates().ca.into_bytes());
    o.tls.client_cert = Some(ClientCert {
        chain_pem: b"junk".to_vec(),
        key_pem: b"junk".to_vec(),
    });
    assert!(matches!(
        Client::start(o.clone(), vec![]),
        Err(tern_mqttc::StartError::Tls(_))
    ));
    o.tls.client_cert = None;
    o.uri = "mqtts://bad host".parse().unwrap();
    assert!(matches!(
        Client::start(o, vec![]),
        Err(tern_mqttc::StartError::ServerName(_))
    ));
}
