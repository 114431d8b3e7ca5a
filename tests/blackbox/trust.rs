//! No way around a token's rights (issue 12): wills pass every check a PUBLISH passes, at
//! CONNECT and again when they fire; a publisher cannot forge the broker's `cid`/`timestamp`
//! stamps; a parent account receives its sub-accounts' retained messages on subscribe.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tern_broker::accounts::{Access, AclEntry};
use tern_codec::*;

use crate::accounts::{dir, new_token};
use crate::support::client::{Read, connect_packet, publish_packet, user_property};
use crate::support::{Client, QUIET, TestBroker};

/// A broker that requires tokens.
async fn broker() -> TestBroker {
    TestBroker::with(|c| c.auth.anonymous = false).await
}

fn grant(topic: &str, actions: &[&str]) -> AclEntry {
    AclEntry {
        uri: "mqtt".into(),
        topic: Some(topic.into()),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        rest: Default::default(),
    }
}

/// A CONNECT with this token and a will.
fn with_will(v: ProtocolVersion, id: &str, key: &str, topic: &str, retain: bool) -> Connect {
    let mut c = connect_packet(v, id, true);
    c.username = Some(ByteString::from(key));
    c.will = Some(Will {
        topic: ByteString::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain,
        properties: WillProperties::default(),
    });
    c
}

fn will_mut(c: &mut Connect) -> &mut Will {
    c.will.as_mut().expect("a will")
}

async fn connect_key(b: &TestBroker, v: ProtocolVersion, id: &str, key: &str) -> Client {
    let mut c = connect_packet(v, id, true);
    c.username = Some(ByteString::from(key));
    let (client, ack) = Client::connect_with(b.addr, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    client
}

/// The topics of the PUBLISHes that arrive until the connection is quiet.
async fn topics(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    while let Read::Packet(Packet::Publish(p)) = c.read(QUIET).await {
        if p.qos != QoS::AtMostOnce {
            c.ack(&p).await;
        }
        if !p.topic.starts_with("flespi/log/") {
            out.push(p.topic.to_string());
        }
    }
    out
}

const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::V311, ProtocolVersion::V5];

#[tokio::test]
async fn wills_outside_the_tokens_rights_are_refused_at_connect() {
    let b = broker().await;
    let d = dir(&b);
    let acl = new_token(d, 1, Access::ACL, vec![grant("a/#", &["publish"])]);
    let standard = new_token(d, 1, Access::STANDARD, vec![]);
    let mut watcher = connect_key(&b, ProtocolVersion::V5, "watch", &b.master_key()).await;
    watcher.subscribe("#", QoS::AtLeastOnce).await;
    topics(&mut watcher).await;
    for v in VERSIONS {
        let cases = [
            (&acl.key, "b/outside-the-grant", false),
            (&standard.key, "flespi/state/platform/customer", true),
            (&standard.key, "flespi/log/mqtt/sessions/1/connected", false),
            (
                &standard.key,
                "flespi/rest/delete/platform/tokens/all",
                false,
            ),
        ];
        for (key, topic, retain) in cases {
            let (_c, ack) =
                Client::connect_with(b.addr, with_will(v, "w", key, topic, retain)).await;
            // 3.x has one code for it: 5, not authorized.
            assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED, "{v} {topic}");
        }
        // Inside the grant: accepted, and published when the connection drops.
        let (c, ack) =
            Client::connect_with(b.addr, with_will(v, "w", &acl.key, "a/x", false)).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS, "{v}");
        drop(c);
        assert_eq!(topics(&mut watcher).await, vec!["a/x"], "{v}");
    }
}

#[tokio::test]
async fn a_will_over_the_retained_quota_or_with_a_bad_payload_is_refused() {
    let b = TestBroker::with(|c| {
        c.auth.anonymous = false;
        c.quotas.retained_bytes = 100;
    })
    .await;
    let acc = dir(&b)
        .create_account(1, None, "quota", serde_json::json!({}))
        .unwrap();
    let t = new_token(dir(&b), acc.id, Access::STANDARD, vec![]);
    for (v, code) in [
        (ProtocolVersion::V311, ReasonCode::NOT_AUTHORIZED),
        (ProtocolVersion::V5, ReasonCode::QUOTA_EXCEEDED),
    ] {
        let mut c = with_will(v, "q", &t.key, "r/big", true);
        will_mut(&mut c).payload = Bytes::from(vec![b'x'; 200]);
        let (_c, ack) = Client::connect_with(b.addr, c.clone()).await;
        assert_eq!(ack.code, code, "{v}");
        // Not retained: no quota applies.
        will_mut(&mut c).retain = false;
        let (_c, ack) = Client::connect_with(b.addr, c).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS, "{v}");
    }
    // A payload that says it is UTF-8 must be.
    let mut c = with_will(ProtocolVersion::V5, "utf", &t.key, "r/utf", false);
    will_mut(&mut c).payload = Bytes::from_static(b"\xff\xfe");
    will_mut(&mut c).properties.payload_format_indicator = Some(1);
    let (_c, ack) = Client::connect_with(b.addr, c).await;
    assert_eq!(ack.code, ReasonCode::PAYLOAD_FORMAT_INVALID);
}

#[tokio::test]
async fn a_will_above_the_maximum_qos_is_refused_in_v5_and_downgraded_in_3_1_1() {
    let b = TestBroker::with(|c| {
        c.auth.anonymous = false;
        c.mqtt.max_qos = 1;
    })
    .await;
    let mut watcher = connect_key(&b, ProtocolVersion::V5, "watch", &b.master_key()).await;
    watcher.subscribe("q/#", QoS::AtLeastOnce).await;
    let mut c = with_will(ProtocolVersion::V5, "q2", &b.master_key(), "q/v5", false);
    will_mut(&mut c).qos = QoS::ExactlyOnce;
    let (_c, ack) = Client::connect_with(b.addr, c).await;
    assert_eq!(ack.code, ReasonCode::QOS_NOT_SUPPORTED);
    let mut c = with_will(ProtocolVersion::V311, "q2", &b.master_key(), "q/v3", false);
    will_mut(&mut c).qos = QoS::ExactlyOnce;
    let (c, ack) = Client::connect_with(b.addr, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    drop(c);
    let w = watcher.recv_publish().await;
    assert_eq!((&*w.topic, w.qos), ("q/v3", QoS::AtLeastOnce));
}

/// A will is checked again when it fires, against its token as it is then.
#[tokio::test]
async fn a_revoked_disabled_or_narrowed_token_publishes_no_will() {
    let b = broker().await;
    let d = dir(&b);
    let mut watcher = connect_key(&b, ProtocolVersion::V5, "watch", &b.master_key()).await;
    watcher.subscribe("w/#", QoS::AtLeastOnce).await;

    // Deleted while connected: the broker disconnects the client (0x87), and its will, due
    // at once, is not published.
    let t = new_token(d, 1, Access::STANDARD, vec![]);
    let (mut c, _) = Client::connect_with(
        b.addr,
        with_will(ProtocolVersion::V5, "del", &t.key, "w/deleted", false),
    )
    .await;
    d.delete_token(t.id).unwrap();
    b.broker().revoke_token(t.id);
    let closed = c.expect_closed().await.expect("DISCONNECT");
    assert_eq!(closed.reason, ReasonCode::NOT_AUTHORIZED);

    // Delayed wills, with the token deleted, disabled or narrowed within the delay; and one
    // left alone, which is published.
    let delayed = |id: &str, key: &str, topic: &str| {
        let mut c = with_will(ProtocolVersion::V5, id, key, topic, false);
        c.properties.session_expiry_interval = Some(60);
        will_mut(&mut c).properties.will_delay_interval = Some(1);
        c
    };
    let gone = new_token(d, 1, Access::STANDARD, vec![]);
    let disabled = new_token(d, 1, Access::STANDARD, vec![]);
    let narrowed = new_token(d, 1, Access::STANDARD, vec![]);
    let kept = new_token(d, 1, Access::STANDARD, vec![]);
    let mut clients = Vec::new();
    for (id, t, topic) in [
        ("gone", &gone, "w/gone"),
        ("disabled", &disabled, "w/disabled"),
        ("narrowed", &narrowed, "w/narrowed"),
        ("kept", &kept, "w/kept"),
    ] {
        let (c, ack) = Client::connect_with(b.addr, delayed(id, &t.key, topic)).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        clients.push(c);
    }
    let dropped_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    drop(clients);
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.delete_token(gone.id).unwrap();
    let mut off = disabled.clone();
    off.enabled = false;
    d.update_token(off).unwrap();
    let mut narrow = narrowed.clone();
    narrow.access = Access {
        kind: Access::ACL,
        acl: vec![grant("elsewhere/#", &["publish"])],
    };
    d.update_token(narrow).unwrap();

    let w = watcher.recv_publish().await;
    assert_eq!(&*w.topic, "w/kept", "only the untouched token's will");
    watcher.ack(&w).await;
    // Stamped when published, not at CONNECT.
    let ts: f64 = user_property(&w.properties.user_properties, "timestamp")
        .expect("timestamp")
        .parse()
        .unwrap();
    assert!(
        ts >= dropped_at + 0.9,
        "will stamped at {ts}, dropped at {dropped_at}"
    );
    assert_eq!(topics(&mut watcher).await, Vec::<String>::new());
}

/// The broker's `cid` and `timestamp` stamps replace a publisher's own; with
/// `mqtt.stamp_properties = false` user properties pass unchanged.
#[tokio::test]
async fn a_publisher_cannot_forge_the_stamps() {
    let forged = [("cid", "999"), ("app", "x"), ("timestamp", "1")];
    for stamped in [true, false] {
        let b = TestBroker::with(|c| {
            c.auth.anonymous = false;
            c.mqtt.stamp_properties = stamped;
        })
        .await;
        let key = b.master_key();
        let mut s = connect_key(&b, ProtocolVersion::V5, "s", &key).await;
        s.subscribe("stamp/#", QoS::AtMostOnce).await;
        let mut p = connect_key(&b, ProtocolVersion::V5, "p", &key).await;
        let mut pkt = publish_packet("stamp/1", b"x", QoS::AtMostOnce, true, None);
        pkt.properties.user_properties = forged
            .iter()
            .map(|(k, v)| (ByteString::from(*k), ByteString::from(*v)))
            .collect();
        p.send(Packet::Publish(pkt)).await;
        let m = s.recv_publish().await;
        let count = |k: &str| {
            m.properties
                .user_properties
                .iter()
                .filter(|(key, _)| key == k)
                .count()
        };
        let up = &m.properties.user_properties;
        assert_eq!(user_property(up, "app"), Some("x"));
        if stamped {
            assert_eq!((count("cid"), count("timestamp")), (1, 1), "{up:?}");
            assert_eq!(user_property(up, "cid"), Some("1"));
            let ts: f64 = user_property(up, "timestamp").unwrap().parse().unwrap();
            assert!(ts > 1e9, "{up:?}");
        } else {
            assert_eq!(up.len(), 3, "passed unchanged: {up:?}");
            assert_eq!(user_property(up, "cid"), Some("999"));
        }
        // The retained copy is stored without the forged ones too.
        let mut late = connect_key(&b, ProtocolVersion::V5, "late", &key).await;
        late.subscribe("stamp/#", QoS::AtMostOnce).await;
        let r = late.recv_publish().await;
        assert_eq!(
            r.properties
                .user_properties
                .iter()
                .filter(|(k, _)| k == "cid")
                .count(),
            1,
            "{:?}",
            r.properties.user_properties
        );
    }
}

/// Spec §3: a parent sees its sub-accounts' traffic, retained messages on subscribe too;
/// never a sibling's or a parent's.
#[tokio::test]
async fn a_parent_receives_its_sub_accounts_retained_messages() {
    let b = broker().await;
    let d = dir(&b);
    let a = d
        .create_account(1, None, "A", serde_json::json!({}))
        .unwrap();
    let a1 = d
        .create_account(a.id, None, "A1", serde_json::json!({}))
        .unwrap();
    let sibling = d
        .create_account(1, None, "B", serde_json::json!({}))
        .unwrap();
    let ta = new_token(d, a.id, Access::STANDARD, vec![]);
    let ta1 = new_token(d, a1.id, Access::STANDARD, vec![]);
    let tb = new_token(d, sibling.id, Access::STANDARD, vec![]);
    for (key, topic) in [
        (&ta.key, "r/a"),
        (&ta1.key, "r/a1"),
        (&tb.key, "r/b"),
        (&b.master_key(), "r/top"),
    ] {
        let mut p = connect_key(&b, ProtocolVersion::V311, "pub", key).await;
        p.publish(topic, b"kept", QoS::AtLeastOnce, true).await;
        p.disconnect().await;
    }
    for v in VERSIONS {
        for (key, expected) in [
            (b.master_key(), vec!["r/a", "r/a1", "r/b", "r/top"]),
            (ta.key.clone(), vec!["r/a", "r/a1"]),
            (ta1.key.clone(), vec!["r/a1"]),
        ] {
            let mut s = connect_key(&b, v, "sub", &key).await;
            s.subscribe("r/#", QoS::AtLeastOnce).await;
            let mut got = Vec::new();
            while let Read::Packet(Packet::Publish(m)) = s.read(QUIET).await {
                assert!(m.retain, "{v} {}", m.topic);
                s.ack(&m).await;
                got.push(m.topic.to_string());
            }
            got.sort();
            assert_eq!(got, expected, "{v}");
            s.disconnect().await;
        }
    }
}
