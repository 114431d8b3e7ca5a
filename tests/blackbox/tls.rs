//! MQTT over TLS (`mqtts`): rustls and mosquitto clients with the generated CA, TLS 1.2 and
//! 1.3, client certificates off / optional / required, handshake failures and timeouts, and
//! the certificate reload on SIGHUP that leaves live connections alone.

use std::process::Stdio;
use std::time::Duration;

use tern_codec::*;
use tern_net::Listener;
use tokio::process::Command;

use crate::support::client::Read;
use crate::support::process::Daemon;
use crate::support::transport::{self, client_tls, client_tls12};
use crate::support::{Client, TestBroker, TestCerts, WAIT, eventually};

#[tokio::test]
async fn tls_round_trip_with_tcp_v311_and_v5() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let ca = b.test_certs().ca();
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let stream = transport::tls(b.mqtts(), client_tls(&ca, None))
            .await
            .unwrap();
        let mut secure = Client::connect_over(Box::new(stream), v, &format!("tls-{v:?}")).await;
        let mut plain = Client::connect(b.addr, v, &format!("tcp-{v:?}")).await;
        secure.subscribe("tls/in", QoS::AtLeastOnce).await;
        plain.subscribe("tls/out", QoS::AtLeastOnce).await;

        plain
            .publish("tls/in", b"to tls", QoS::AtLeastOnce, false)
            .await;
        let p = secure.recv_publish().await;
        assert_eq!(&p.payload[..], b"to tls");
        secure.ack(&p).await;

        secure
            .publish("tls/out", b"from tls", QoS::ExactlyOnce, false)
            .await;
        let p = plain.recv_publish().await;
        assert_eq!(&p.payload[..], b"from tls");
        plain.ack(&p).await;
        secure.disconnect().await;
        plain.disconnect().await;
    }
}

#[tokio::test]
async fn tls12_and_tls13_are_offered() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let ca = b.test_certs().ca();
    let s12 = transport::tls(b.mqtts(), client_tls12(&ca)).await.unwrap();
    assert_eq!(
        s12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut c = Client::connect_over(Box::new(s12), ProtocolVersion::V5, "tls12").await;
    c.ping().await;
    let s13 = transport::tls(b.mqtts(), client_tls(&ca, None))
        .await
        .unwrap();
    assert_eq!(
        s13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn untrusted_server_and_plain_clients_fail_and_are_counted() {
    let b = TestBroker::with_listeners(|_| {}).await;
    // A client that trusts another CA refuses tern's certificate.
    let other = TestCerts::new();
    assert!(
        transport::tls(b.mqtts(), client_tls(&other.ca(), None))
            .await
            .is_err()
    );
    // Plain MQTT on the TLS port is not a handshake: tern answers with a TLS alert and closes.
    let mut plain = tokio::net::TcpStream::connect(b.mqtts()).await.unwrap();
    let mut connect = bytes::BytesMut::new();
    encode(
        &Packet::Connect(Box::new(crate::support::client::connect_packet(
            ProtocolVersion::V311,
            "plain",
            true,
        ))),
        ProtocolVersion::V311,
        &mut connect,
    )
    .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(&connect).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, plain.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .ok();
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS alert record: {answer:?}"
    );
    let net = b.server().net_metrics().clone();
    assert!(eventually(|| net.tls_failures_total(Listener::Mqtts) >= 2).await);
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let b = TestBroker::with_listeners(|c| c.tls.handshake_timeout = 1).await;
    let mut idle = Client::open(b.mqtts(), ProtocolVersion::V311).await;
    let started = tokio::time::Instant::now();
    assert!(matches!(idle.read(WAIT).await, Read::Closed));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let net = b.server().net_metrics().clone();
    assert!(eventually(|| net.tls_failures_total(Listener::Mqtts) == 1).await);
}

/// A CONNECT over a TLS client; returns the CONNACK or `None` when the server closed the
/// connection (a refused client certificate shows after the handshake in TLS 1.3).
async fn try_connect(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    id: &str,
) -> Option<ConnAck> {
    let stream = transport::tls(addr, config).await.ok()?;
    let mut c = Client::over(Box::new(stream), ProtocolVersion::V5);
    c.send_unchecked(Packet::Connect(Box::new(
        crate::support::client::connect_packet(ProtocolVersion::V5, id, true),
    )))
    .await;
    match c.read(WAIT).await {
        Read::Packet(Packet::ConnAck(ack)) => Some(ack),
        Read::Closed => None,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn required_client_certificate() {
    let certs = std::sync::Arc::new(TestCerts::new());
    let ca = certs.ca();
    let b = TestBroker::start_with(Some(certs.clone()), |c| {
        c.tls.client_ca = Some(ca.clone());
    })
    .await;
    let f = &certs.files;
    assert!(
        try_connect(b.mqtts(), client_tls(&ca, None), "no-cert")
            .await
            .is_none(),
        "a client without a certificate is refused"
    );
    let ack = try_connect(
        b.mqtts(),
        client_tls(&ca, Some((&f.client_cert, &f.client_key))),
        "with-cert",
    )
    .await
    .expect("a client with a certificate connects");
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    // A certificate from another CA is refused too.
    let other = TestCerts::new();
    assert!(
        try_connect(
            b.mqtts(),
            client_tls(
                &ca,
                Some((&other.files.client_cert, &other.files.client_key))
            ),
            "foreign-cert",
        )
        .await
        .is_none()
    );
    // mosquitto with and without a client certificate.
    let port = b.mqtts().port().to_string();
    let ca_s = ca.display().to_string();
    let with = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port, "--cafile", &ca_s])
        .arg("--cert")
        .arg(&f.client_cert)
        .arg("--key")
        .arg(&f.client_key)
        .args(["-t", "mtls/t", "-m", "hi"])
        .output()
        .await
        .expect("mosquitto_pub is installed");
    assert!(
        with.status.success(),
        "mosquitto_pub with a certificate: {}",
        String::from_utf8_lossy(&with.stderr)
    );
    let without = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port, "--cafile", &ca_s])
        .args(["-t", "mtls/t", "-m", "hi"])
        .output()
        .await
        .expect("mosquitto_pub is installed");
    assert!(
        !without.status.success(),
        "mosquitto_pub without a certificate"
    );
}

#[tokio::test]
async fn optional_client_certificate() {
    let certs = std::sync::Arc::new(TestCerts::new());
    let ca = certs.ca();
    let b = TestBroker::start_with(Some(certs.clone()), |c| {
        c.tls.client_ca = Some(ca.clone());
        c.tls.client_auth = Some(tern::config::ClientAuthMode::Optional);
    })
    .await;
    let f = &certs.files;
    assert!(
        try_connect(b.mqtts(), client_tls(&ca, None), "no-cert")
            .await
            .is_some()
    );
    assert!(
        try_connect(
            b.mqtts(),
            client_tls(&ca, Some((&f.client_cert, &f.client_key))),
            "with-cert"
        )
        .await
        .is_some()
    );
}

#[tokio::test]
async fn mosquitto_over_tls_with_the_generated_ca() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let port = b.mqtts().port().to_string();
    let ca = b.test_certs().ca().display().to_string();
    // mosquitto_sub over TLS receives what a TCP client publishes.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port, "--cafile", &ca])
        .args([
            "-V",
            "5",
            "-i",
            "mosq-tls-sub",
            "-t",
            "mtls/down",
            "-C",
            "1",
        ])
        .args(["-W", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed (Debian mosquitto-clients)");
    let key = b.anonymous_key("mosq-tls-sub");
    assert!(
        eventually(|| b
            .broker()
            .session(&key)
            .is_some_and(|s| !s.lock().subscriptions.is_empty()))
        .await,
        "mosquitto_sub subscribed over TLS"
    );
    let mut tcp = Client::connect(b.addr, ProtocolVersion::V311, "mosq-tls-peer").await;
    tcp.subscribe("mtls/up", QoS::AtLeastOnce).await;
    tcp.publish("mtls/down", b"down", QoS::AtLeastOnce, false)
        .await;
    let out = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
        .await
        .expect("mosquitto_sub exits")
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "down");
    // mosquitto_pub over TLS reaches the TCP client.
    let status = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port, "--cafile", &ca])
        .args(["-q", "1", "-t", "mtls/up", "-m", "up"])
        .status()
        .await
        .expect("mosquitto_pub is installed");
    assert!(status.success());
    let p = tcp.recv_publish().await;
    assert_eq!(&p.payload[..], b"up");
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_keeps_live_clients() {
    let data = tempfile::tempdir().unwrap();
    let certs = TestCerts::new();
    // Keep the first CA: renewing replaces ca.pem.
    let old_ca = certs.dir.path().join("old-ca.pem");
    std::fs::copy(certs.ca(), &old_ca).unwrap();
    let old_leaf = std::fs::read(&certs.files.server_cert).unwrap();
    let d = Daemon::spawn_all(data.path(), certs.dir.path(), &["--anonymous"]).await;
    let mqtts = d.mqtts.unwrap();

    let stream = transport::tls(mqtts, client_tls(&old_ca, None))
        .await
        .unwrap();
    let mut live = Client::connect_over(Box::new(stream), ProtocolVersion::V5, "live").await;
    live.subscribe("reload/t", QoS::AtLeastOnce).await;

    certs.renew();
    let new_leaf = std::fs::read(&certs.files.server_cert).unwrap();
    assert_ne!(old_leaf, new_leaf);
    d.signal("HUP");
    assert!(
        d.wait_for_log("certificate reloaded").await,
        "reload logged: {}",
        d.log()
    );

    // New connections get the new certificate: trusted by the new CA only.
    let fresh = transport::tls(mqtts, client_tls(&certs.ca(), None))
        .await
        .expect("the new CA verifies the new certificate");
    let served = fresh.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let expected: Vec<u8> = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(&certs.files.server_cert)
            .unwrap()
            .to_vec()
    };
    assert_eq!(served, expected, "the new certificate is served");
    assert!(
        transport::tls(mqtts, client_tls(&old_ca, None))
            .await
            .is_err(),
        "the old CA no longer verifies"
    );

    // The client connected before the reload is still there and still served.
    live.ping().await;
    let mut fresh = Client::connect_over(Box::new(fresh), ProtocolVersion::V5, "fresh").await;
    fresh
        .publish("reload/t", b"after reload", QoS::AtLeastOnce, false)
        .await;
    let p = live.recv_publish().await;
    assert_eq!(&p.payload[..], b"after reload");
    live.ack(&p).await;

    // A broken file keeps the current certificate.
    std::fs::write(&certs.files.server_key, "garbage").unwrap();
    d.signal("HUP");
    assert!(d.wait_for_log("certificate reload failed").await);
    assert!(
        transport::tls(mqtts, client_tls(&certs.ca(), None))
            .await
            .is_ok()
    );
}
