//! tern's outbound MQTT client (`tern-mqttc`) against tern itself: the remote broker of an
//! MQTT channel or stream may be another tern. Token login, QoS 0 and 1 both ways, TLS with
//! the development CA, and a restart of the remote broker (its own tests in
//! `crates/tern-mqttc/tests/` cover Mosquitto and a scripted broker).

use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_codec::*;
use tern_mqttc::{Client, ClientHandle, ClientOptions, Event, Roots, Subscription};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::support::{Client as RawClient, TestBroker, WAIT, eventually};

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

fn options(uri: &str, client_id: &str, v: ProtocolVersion) -> ClientOptions {
    let mut o = ClientOptions::new(uri, client_id).unwrap();
    o.protocol = v;
    o.backoff.initial = Duration::from_millis(50);
    o.backoff.max = Duration::from_millis(500);
    o
}

async fn next_event<T>(
    rx: &mut mpsc::Receiver<Event>,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    timeout(WAIT * 2, async {
        loop {
            if let Some(t) = pick(rx.recv().await.expect("the client task ended")) {
                return t;
            }
        }
    })
    .await
    .expect("the expected event did not come in time")
}

async fn connected(rx: &mut mpsc::Receiver<Event>) {
    next_event(rx, |e| matches!(e, Event::Connected { .. }).then_some(())).await;
}

async fn message(rx: &mut mpsc::Receiver<Event>) -> (String, Vec<u8>, QoS) {
    next_event(rx, |e| match e {
        Event::Message {
            topic,
            payload,
            qos,
            ..
        } => Some((topic.to_string(), payload.to_vec(), qos)),
        _ => None,
    })
    .await
}

/// Waits until the subscriber's subscription is in place: its own probe comes back.
async fn probe(c: &ClientHandle, rx: &mut mpsc::Receiver<Event>, topic: &str) {
    c.publish(topic, "probe", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    let (t, p, _) = message(rx).await;
    assert_eq!((t.as_str(), &p[..]), (topic, &b"probe"[..]));
}

#[tokio::test]
async fn bridges_in_and_out_with_a_token() {
    let b = TestBroker::with(|c| c.auth.anonymous = false).await;
    let uri = format!("mqtt://{}", b.addr);
    for v in VERSIONS {
        let mut o = options(&uri, &format!("sub-{v}"), v);
        o.username = Some(b.master_key());
        let subs = vec![Subscription::new("dev/+/data", QoS::AtLeastOnce)];
        let (sub, mut rx) = Client::start(o, subs).unwrap();
        connected(&mut rx).await;
        probe(&sub, &mut rx, "dev/probe/data").await;

        let mut o = options(&uri, &format!("pub-{v}"), v);
        o.username = Some(b.master_key());
        let (publisher, mut prx) = Client::start(o, vec![]).unwrap();
        connected(&mut prx).await;
        publisher
            .publish("dev/1/data", "q0", QoS::AtMostOnce, false)
            .await
            .unwrap();
        publisher
            .publish("dev/2/data", "q1", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let mut got = vec![message(&mut rx).await, message(&mut rx).await];
        got.sort();
        assert_eq!(
            got,
            [
                ("dev/1/data".into(), b"q0".to_vec(), QoS::AtMostOnce),
                ("dev/2/data".into(), b"q1".to_vec(), QoS::AtLeastOnce),
            ],
            "{v}"
        );
        assert_eq!(publisher.metrics().snapshot().messages_out, 2);
        publisher.close().await;
        sub.close().await;

        // An unknown token is refused; the client keeps trying and never connects.
        let mut o = options(&uri, &format!("bad-{v}"), v);
        o.username = Some("x".repeat(64));
        let (bad, _rx) = Client::start(o, vec![]).unwrap();
        eventually(|| bad.metrics().connect_failures.load(Ordering::Relaxed) >= 2).await;
        assert_eq!(bad.metrics().connects.load(Ordering::Relaxed), 0);
        bad.close().await;
    }
}

#[tokio::test]
async fn tls_with_the_development_ca() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let ca = std::fs::read(b.test_certs().ca()).unwrap();
    let uri = format!("mqtts://localhost:{}", b.mqtts().port());
    for v in VERSIONS {
        let mut o = options(&uri, &format!("tls-{v}"), v);
        o.tls.roots = Roots::Pem(ca.clone());
        let (c, mut rx) =
            Client::start(o, vec![Subscription::new("tls/#", QoS::AtLeastOnce)]).unwrap();
        connected(&mut rx).await;
        probe(&c, &mut rx, "tls/probe").await;
        let mut raw = RawClient::connect(b.addr, v, &format!("raw-{v}")).await;
        raw.publish("tls/x", b"from tcp", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(message(&mut rx).await.1, b"from tcp");
        raw.disconnect().await;
        c.close().await;
    }
}

#[tokio::test]
async fn reconnects_after_the_broker_restarts() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let b = TestBroker::with({
        let dir = dir.clone();
        move |c| c.store.data_dir = dir
    })
    .await;
    let addr = b.addr;
    let subs = vec![Subscription::new("r/#", QoS::AtLeastOnce)];
    let (c, mut rx) = Client::start(
        options(&format!("mqtt://{addr}"), "r", ProtocolVersion::V5),
        subs,
    )
    .unwrap();
    connected(&mut rx).await;
    probe(&c, &mut rx, "r/before").await;

    assert!(b.shutdown(Duration::from_secs(5)).await);
    let reason = next_event(&mut rx, |e| match e {
        Event::Disconnected { reason } => Some(reason),
        _ => None,
    })
    .await;
    // tern says why (v5 DISCONNECT 0x8B, server shutting down).
    assert!(
        matches!(
            reason,
            tern_mqttc::ConnectionError::ServerDisconnect(ReasonCode::SERVER_SHUTTING_DOWN)
        ),
        "{reason}"
    );
    let b = TestBroker::with(move |c| {
        c.store.data_dir = dir;
        c.listeners.mqtt = Some(addr);
    })
    .await;
    connected(&mut rx).await;
    // The subscription was sent again: a message from another client arrives.
    probe(&c, &mut rx, "r/after").await;
    let mut raw = RawClient::connect(b.addr, ProtocolVersion::V311, "raw").await;
    raw.publish("r/x", b"again", QoS::AtLeastOnce, false).await;
    assert_eq!(message(&mut rx).await.1, b"again");
    raw.disconnect().await;
    let m = c.metrics().snapshot();
    assert_eq!((m.connects, m.disconnects), (2, 1));
    c.close().await;
}
