//! flespi accounts and tokens (docs/flespi.md#connecting-and-authorization,
//! #accounts-and-namespaces, #publishing, #broker-events): every token form, refusals with their
//! codes, namespaces with sub-accounts, ACL tokens, the reserved prefix, stamped properties,
//! session events, quotas, and bad credentials.

use std::sync::Arc;

use bytes::Bytes;
use tern_broker::accounts::{Access, AclEntry, Directory, Token};
use tern_codec::*;
use tokio::net::TcpSocket;

use crate::support::client::{Read, connect_packet, publish_packet, user_property};
use crate::support::{Client, QUIET, TestBroker};

/// A broker that requires tokens (no anonymous clients).
async fn broker() -> TestBroker {
    TestBroker::with(|c| c.auth.anonymous = false).await
}

pub(crate) fn dir(b: &TestBroker) -> &Arc<Directory> {
    b.server().directory()
}

pub(crate) fn new_token(d: &Directory, cid: u64, kind: u8, acl: Vec<AclEntry>) -> Token {
    d.create_token(Token {
        id: 0,
        key: String::new(),
        info: "test".into(),
        enabled: true,
        expire: 0,
        ttl: 0,
        created: 0,
        accessed: 0,
        ips: String::new(),
        cid,
        metadata: serde_json::json!({}),
        access: Access { kind, acl },
    })
    .unwrap()
}

fn with_user(v: ProtocolVersion, id: &str, user: Option<&str>, pass: Option<&[u8]>) -> Connect {
    let mut c = connect_packet(v, id, true);
    c.username = user.map(ByteString::from);
    c.password = pass.map(Bytes::copy_from_slice);
    c
}

async fn connect_token(b: &TestBroker, v: ProtocolVersion, id: &str, key: &str) -> Client {
    let (c, ack) = Client::connect_with(b.addr, with_user(v, id, Some(key), None)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    c
}

async fn publishes(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    while let Read::Packet(Packet::Publish(p)) = c.read(QUIET).await {
        if !p.topic.starts_with("flespi/") {
            out.push(p.topic.to_string());
        }
    }
    out
}

#[tokio::test]
async fn every_token_form_connects() {
    let b = broker().await;
    let t = new_token(dir(&b), 1, Access::STANDARD, vec![]);
    let id = t.id.to_string();
    let flespi = format!("FlespiToken {}", t.key);
    for v in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        let forms: Vec<(Option<&str>, Option<&[u8]>)> = vec![
            (Some(&t.key), None),
            (Some(&flespi), None),
            (Some(""), Some(t.key.as_bytes())),
            (Some("whatever"), Some(t.key.as_bytes())),
            (Some(&id), Some(&t.key.as_bytes()[..16])),
            (Some(&id), Some(&t.key.as_bytes()[..40])),
        ];
        for (i, (user, pass)) in forms.into_iter().enumerate() {
            let (mut c, ack) =
                Client::connect_with(b.addr, with_user(v, &format!("form-{i}"), user, pass)).await;
            assert_eq!(ack.code, ReasonCode::SUCCESS, "{v} form {i}");
            c.ping().await;
        }
    }
}

#[tokio::test]
async fn refusals_carry_their_codes_in_v5_and_3_1_1() {
    let b = broker().await;
    let d = dir(&b);
    let mut expired = new_token(d, 1, Access::STANDARD, vec![]);
    expired.expire = 1;
    let expired = d.update_token(expired).unwrap();
    let mut disabled = new_token(d, 1, Access::STANDARD, vec![]);
    disabled.enabled = false;
    let disabled = d.update_token(disabled).unwrap();
    let mut wrong_ip = new_token(d, 1, Access::STANDARD, vec![]);
    wrong_ip.ips = "10.*".into();
    let wrong_ip = d.update_token(wrong_ip).unwrap();
    let banned_account = d
        .create_account(1, None, "banned", serde_json::json!({}))
        .unwrap();
    let banned = new_token(d, banned_account.id, Access::STANDARD, vec![]);
    let mut acc = d.account(banned_account.id).unwrap();
    acc.enabled = false;
    d.update_account(acc).unwrap();
    let unknown = "Z".repeat(64);
    let cases = [
        (unknown.as_str(), ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4u8),
        (
            expired.key.as_str(),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            4,
        ),
        (
            disabled.key.as_str(),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            4,
        ),
        (wrong_ip.key.as_str(), ReasonCode::NOT_AUTHORIZED, 5),
        (banned.key.as_str(), ReasonCode::BANNED, 5),
    ];
    for (key, v5_code, v3_code) in cases {
        let (mut c, ack) =
            Client::connect_with(b.addr, with_user(ProtocolVersion::V5, "r", Some(key), None))
                .await;
        assert_eq!(ack.code, v5_code);
        c.expect_closed().await;
        // 3.1.1 return codes on the wire.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        let mut out = BytesMut::new();
        encode(
            &Packet::Connect(Box::new(with_user(
                ProtocolVersion::V311,
                "r3",
                Some(key),
                None,
            ))),
            ProtocolVersion::V311,
            &mut out,
        )
        .unwrap();
        s.write_all(&out).await.unwrap();
        let mut raw = [0u8; 4];
        s.read_exact(&mut raw).await.unwrap();
        assert_eq!(raw, [0x20, 0x02, 0x00, v3_code], "{key}");
    }
    // No credentials without anonymous access: not authorized.
    let (_c, ack) =
        Client::connect_with(b.addr, connect_packet(ProtocolVersion::V5, "anon", true)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED);
}

#[tokio::test]
async fn namespaces_isolate_accounts_and_parents_see_sub_accounts() {
    let b = broker().await;
    let d = dir(&b);
    let a = d
        .create_account(1, None, "A", serde_json::json!({}))
        .unwrap();
    let bb = d
        .create_account(1, None, "B", serde_json::json!({}))
        .unwrap();
    let a1 = d
        .create_account(a.id, None, "A1", serde_json::json!({}))
        .unwrap();
    let ta = new_token(d, a.id, Access::STANDARD, vec![]);
    let tb = new_token(d, bb.id, Access::STANDARD, vec![]);
    let ta1 = new_token(d, a1.id, Access::STANDARD, vec![]);
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        // The same client id in A and B: two sessions, no takeover.
        let mut sa = connect_token(&b, v, "same", &ta.key).await;
        let mut sb = connect_token(&b, v, "same", &tb.key).await;
        let mut sa1 = connect_token(&b, v, "sub", &ta1.key).await;
        for c in [&mut sa, &mut sb, &mut sa1] {
            c.subscribe("t/#", QoS::AtMostOnce).await;
        }
        let mut pa = connect_token(&b, v, "pa", &ta.key).await;
        let mut pb = connect_token(&b, v, "pb", &tb.key).await;
        let mut pa1 = connect_token(&b, v, "pa1", &ta1.key).await;
        pa.publish("t/from-a", b"x", QoS::AtMostOnce, false).await;
        pb.publish("t/from-b", b"x", QoS::AtMostOnce, false).await;
        pa1.publish("t/from-a1", b"x", QoS::AtMostOnce, false).await;
        let mut got_a = publishes(&mut sa).await;
        got_a.sort();
        assert_eq!(
            got_a,
            vec!["t/from-a", "t/from-a1"],
            "A sees its own and A1's traffic ({v})"
        );
        assert_eq!(
            publishes(&mut sb).await,
            vec!["t/from-b"],
            "B sees only B ({v})"
        );
        assert_eq!(
            publishes(&mut sa1).await,
            vec!["t/from-a1"],
            "A1 does not see A ({v})"
        );
        for c in [sa, sb, sa1, pa, pb, pa1] {
            c.disconnect().await;
        }
    }
}

#[tokio::test]
async fn acl_token_subscribed_to_everything_gets_only_its_grants() {
    let b = broker().await;
    let d = dir(&b);
    let grant = |topic: &str, actions: &[&str]| AclEntry {
        uri: "mqtt".into(),
        topic: Some(topic.into()),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        rest: Default::default(),
    };
    let acl = new_token(
        d,
        1,
        Access::ACL,
        vec![
            grant("allowed/#", &["subscribe"]),
            grant("out/+", &["publish"]),
        ],
    );
    let std_token = new_token(d, 1, Access::STANDARD, vec![]);
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut c = connect_token(&b, v, "acl", &acl.key).await;
        // `#` overlaps the grant: allowed, but restricted to it.
        assert_eq!(
            c.subscribe("#", QoS::AtMostOnce).await,
            ReasonCode::GRANTED_QOS_0
        );
        // Outside every grant: refused.
        let refused = if v == ProtocolVersion::V5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode(0x80)
        };
        assert_eq!(c.subscribe("secret/#", QoS::AtMostOnce).await, refused);
        let mut p = connect_token(&b, v, "std", &std_token.key).await;
        for t in ["allowed/1", "secret/1", "other", "allowed/deep/2"] {
            p.publish(t, b"x", QoS::AtMostOnce, false).await;
        }
        let mut got = Vec::new();
        while let Read::Packet(Packet::Publish(m)) = c.read(QUIET).await {
            got.push(m.topic.to_string());
        }
        assert_eq!(
            got,
            vec!["allowed/1", "allowed/deep/2"],
            "{v}: never a topic outside the grants"
        );
        // Publishing: only inside the publish grant.
        let mut watcher = connect_token(&b, v, "watch", &std_token.key).await;
        watcher.subscribe("#", QoS::AtMostOnce).await;
        publishes(&mut watcher).await;
        if v == ProtocolVersion::V5 {
            let pkt = publish_packet("allowed/x", b"no", QoS::AtLeastOnce, false, Some(9));
            c.send(Packet::Publish(pkt)).await;
            assert!(
                matches!(c.recv().await, Packet::PubAck(a) if a.reason == ReasonCode::NOT_AUTHORIZED)
            );
        } else {
            c.publish("allowed/x", b"no", QoS::AtMostOnce, false).await;
        }
        c.publish("out/ok", b"yes", QoS::AtMostOnce, false).await;
        assert_eq!(publishes(&mut watcher).await, vec!["out/ok"], "{v}");
        c.disconnect().await;
        p.disconnect().await;
        watcher.disconnect().await;
    }
}

#[tokio::test]
async fn reserved_prefix_is_refused_and_counted() {
    let b = broker().await;
    let t = new_token(dir(&b), 1, Access::STANDARD, vec![]);
    let mut watcher = connect_token(&b, ProtocolVersion::V5, "w", &t.key).await;
    watcher.subscribe("flespi/message/#", QoS::AtMostOnce).await;
    let before = tern_broker::Metrics::get(&b.broker().metrics.publishes_rejected);
    let mut c5 = connect_token(&b, ProtocolVersion::V5, "c5", &t.key).await;
    c5.send(Packet::Publish(publish_packet(
        "flespi/message/x",
        b"x",
        QoS::AtLeastOnce,
        false,
        Some(1),
    )))
    .await;
    assert!(matches!(c5.recv().await, Packet::PubAck(a) if a.reason == ReasonCode::NOT_AUTHORIZED));
    c5.publish("flespi/message/y", b"x", QoS::AtMostOnce, false)
        .await;
    let mut c3 = connect_token(&b, ProtocolVersion::V311, "c3", &t.key).await;
    c3.publish("flespi/message/z", b"x", QoS::AtLeastOnce, false)
        .await; // acknowledged, dropped
    c3.ping().await;
    watcher.expect_nothing().await;
    assert_eq!(
        tern_broker::Metrics::get(&b.broker().metrics.publishes_rejected) - before,
        3
    );
    c5.ping().await;
}

#[tokio::test]
async fn timestamps_strictly_increase_over_10k_messages_on_one_topic() {
    let b = broker().await;
    let t = new_token(dir(&b), 1, Access::STANDARD, vec![]);
    let mut s = connect_token(&b, ProtocolVersion::V5, "ts-s", &t.key).await;
    s.subscribe("ts/t", QoS::AtMostOnce).await;
    let mut p = connect_token(&b, ProtocolVersion::V5, "ts-p", &t.key).await;
    for _ in 0..10_000 {
        p.send(Packet::Publish(publish_packet(
            "ts/t",
            b"x",
            QoS::AtMostOnce,
            false,
            None,
        )))
        .await;
    }
    let mut last = String::new();
    let mut last_f = 0.0f64;
    for i in 0..10_000 {
        let m = s.recv_publish().await;
        assert_eq!(
            user_property(&m.properties.user_properties, "cid"),
            Some("1")
        );
        let ts = user_property(&m.properties.user_properties, "timestamp")
            .unwrap()
            .to_string();
        let f: f64 = ts.parse().unwrap();
        assert!(
            f > last_f || (f == last_f && ts > last),
            "message {i}: {ts} after {last}"
        );
        last_f = f;
        last = ts;
    }
}

#[tokio::test]
async fn connack_carries_token_and_subscriptions() {
    let b = broker().await;
    let t = new_token(dir(&b), 1, Access::STANDARD, vec![]);
    let mut c = with_user(ProtocolVersion::V5, "board", Some(&t.key), None);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    let (mut conn, ack) = Client::connect_with(b.addr, c.clone()).await;
    let token: serde_json::Value =
        serde_json::from_str(user_property(&ack.properties.user_properties, "token").unwrap())
            .unwrap();
    assert_eq!(token["id"], t.id);
    assert_eq!(token["cid"], 1);
    assert_eq!(token["access"]["type"], 0);
    assert_eq!(
        user_property(&ack.properties.user_properties, "subscriptions"),
        Some("[]")
    );
    conn.subscribe_with(
        vec![(
            "a/+",
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                ..Default::default()
            },
        )],
        Some(12),
    )
    .await;
    conn.disconnect().await;
    let (_conn, ack) = Client::connect_with(b.addr, c).await;
    assert!(ack.session_present);
    let subs: serde_json::Value = serde_json::from_str(
        user_property(&ack.properties.user_properties, "subscriptions").unwrap(),
    )
    .unwrap();
    assert_eq!(
        subs,
        serde_json::json!([{"topic": "a/+", "qos": 1, "no_local": true, "rap": false, "retain_handling": 0, "subscription_id": 12}])
    );
}

#[tokio::test]
async fn session_events_reach_the_account_and_its_ancestors() {
    let b = broker().await;
    let d = dir(&b);
    let a = d
        .create_account(1, None, "A", serde_json::json!({}))
        .unwrap();
    let other = d
        .create_account(1, None, "other", serde_json::json!({}))
        .unwrap();
    let top = d
        .tokens()
        .into_iter()
        .find(|t| t.access.kind == Access::MASTER)
        .unwrap();
    let ta = new_token(d, a.id, Access::STANDARD, vec![]);
    let tother = new_token(d, other.id, Access::STANDARD, vec![]);
    let mut parent = connect_token(&b, ProtocolVersion::V5, "parent", &top.key).await;
    parent
        .subscribe("flespi/log/mqtt/sessions/+/+", QoS::AtMostOnce)
        .await;
    let mut sibling = connect_token(&b, ProtocolVersion::V5, "sibling", &tother.key).await;
    sibling
        .subscribe("flespi/log/mqtt/sessions/+/+", QoS::AtMostOnce)
        .await;
    let c = connect_token(&b, ProtocolVersion::V311, "evented", &ta.key).await;
    // The top account sees every account's events: skip those of the other clients.
    let next_event = |m: &Publish| {
        serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["client_id"] == "evented"
    };
    let mut connected = parent.recv_publish().await;
    while !next_event(&connected) {
        connected = parent.recv_publish().await;
    }
    assert!(
        connected.topic.ends_with("/connected"),
        "{}",
        connected.topic
    );
    let ev: serde_json::Value = serde_json::from_slice(&connected.payload).unwrap();
    assert_eq!(ev["event"], "connected");
    assert_eq!(ev["client_id"], "evented");
    assert_eq!(ev["cid"], a.id);
    assert_eq!(ev["protocol_version"], 4);
    assert_eq!(ev["ip"], "127.0.0.1");
    for key in [
        "timestamp",
        "session_id",
        "clean",
        "published",
        "received",
        "rejected",
        "reason",
    ] {
        assert!(ev.get(key).is_some(), "{key} missing");
    }
    drop(c);
    let mut disconnected = parent.recv_publish().await;
    while !next_event(&disconnected) {
        disconnected = parent.recv_publish().await;
    }
    let ev: serde_json::Value = serde_json::from_slice(&disconnected.payload).unwrap();
    assert_eq!(ev["event"], "disconnected");
    assert_eq!(ev["reason"], "connection_lost");
    let mut seen = Vec::new();
    while let Read::Packet(Packet::Publish(m)) = sibling.read(QUIET).await {
        seen.push(m.topic.to_string());
    }
    assert!(
        seen.iter()
            .all(|t| !t.contains(&ev["session_id"].to_string())),
        "a sibling account sees nothing of A: {seen:?}"
    );
}

#[tokio::test]
async fn account_quotas_refuse_with_0x97() {
    let b = TestBroker::with(|c| {
        c.auth.anonymous = false;
        c.quotas.mqtt_sessions = 2;
        c.quotas.retained_bytes = 100;
    })
    .await;
    // The `[quotas]` defaults apply to every account, the top one included, and the top
    // account's bound everything below it: give the top account (which keeps the broker's
    // own state topics) room of its own, and try the defaults on a sub-account.
    set_limits(&b, 1, |l| {
        l.mqtt_sessions = Some(10);
        l.retained_bytes = Some(1 << 20);
    });
    let acc = dir(&b)
        .create_account(1, None, "quota", serde_json::json!({}))
        .unwrap();
    let t = new_token(dir(&b), acc.id, Access::STANDARD, vec![]);
    let _a = connect_token(&b, ProtocolVersion::V5, "q1", &t.key).await;
    let mut b2 = connect_token(&b, ProtocolVersion::V5, "q2", &t.key).await;
    let (_c, ack) = Client::connect_with(
        b.addr,
        with_user(ProtocolVersion::V5, "q3", Some(&t.key), None),
    )
    .await;
    assert_eq!(ack.code, ReasonCode::QUOTA_EXCEEDED);
    // Retained bytes.
    b2.send(Packet::Publish(publish_packet(
        "r/1",
        &[b'x'; 60],
        QoS::AtLeastOnce,
        true,
        Some(1),
    )))
    .await;
    assert!(matches!(b2.recv().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS));
    b2.send(Packet::Publish(publish_packet(
        "r/2",
        &[b'x'; 60],
        QoS::AtLeastOnce,
        true,
        Some(2),
    )))
    .await;
    assert!(matches!(b2.recv().await, Packet::PubAck(a) if a.reason == ReasonCode::QUOTA_EXCEEDED));
    // Replacing the first one within the quota is fine.
    b2.send(Packet::Publish(publish_packet(
        "r/1",
        &[b'y'; 70],
        QoS::AtLeastOnce,
        true,
        Some(3),
    )))
    .await;
    assert!(matches!(b2.recv().await, Packet::PubAck(a) if a.reason == ReasonCode::SUCCESS));
}

#[tokio::test]
async fn bad_credentials_and_a_login_flood_do_not_disturb_others() {
    let b = broker().await;
    let t = new_token(dir(&b), 1, Access::STANDARD, vec![]);
    let long = "u".repeat(65_535);
    let dash_key = format!("{}-", &t.key[..63]);
    let short = &t.key[..63];
    for user in [long.as_str(), dash_key.as_str(), short] {
        let (_c, ack) = Client::connect_with(
            b.addr,
            with_user(ProtocolVersion::V5, "bad", Some(user), None),
        )
        .await;
        assert!(ack.code.is_error(), "{ack:?}");
    }
    // 10k failed logins from 127.0.0.2 ...
    let addr = b.addr;
    let flood = tokio::spawn(async move {
        let bad = "F".repeat(64);
        let mut refused = 0;
        for i in 0..10_000 {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let stream = sock.connect(addr).await.unwrap();
            let mut c = Client::over(Box::new(stream), ProtocolVersion::V5);
            c.send(Packet::Connect(Box::new(with_user(
                ProtocolVersion::V5,
                &format!("f{i}"),
                Some(&bad),
                None,
            ))))
            .await;
            if let Read::Packet(Packet::ConnAck(a)) = c.read(crate::support::WAIT).await {
                assert!(a.code.is_error());
                refused += 1;
            }
        }
        refused
    });
    // ... while a good client from 127.0.0.1 connects and exchanges messages, several times.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for round in 0..5 {
        let mut good =
            connect_token(&b, ProtocolVersion::V5, &format!("good-{round}"), &t.key).await;
        good.subscribe("g/t", QoS::AtLeastOnce).await;
        good.publish("g/t", b"hi", QoS::AtLeastOnce, false).await;
        let m = good.recv_publish().await;
        assert_eq!(&m.payload[..], b"hi");
        good.ack(&m).await;
        good.disconnect().await;
    }
    assert!(
        !flood.is_finished(),
        "the good client was served during the flood"
    );
    assert_eq!(flood.await.unwrap(), 10_000);
    assert!(
        b.server()
            .directory()
            .metrics
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed)
            > 9_000
    );
}

/// `[[accounts]]`, `[[tokens]]` and `auth.master_token` provision a fresh data directory; the
/// master token also comes from `--master-token` and `TERN_MASTER_TOKEN`.
#[tokio::test]
async fn accounts_and_tokens_from_the_configuration() {
    use crate::support::process::{Daemon, free_addr};
    let dir = tempfile::tempdir().unwrap();
    let master = "M".repeat(64);
    let gateway = "G".repeat(64);
    let file = dir.path().join("tern.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[auth]
master_token = "{master}"

[[accounts]]
id = 1000
name = "fleet"

[[tokens]]
key = "{gateway}"
cid = 1000
info = "gateway"
access = "acl"
acl = [{{ topic = "fleet/#", actions = ["publish", "subscribe"] }}]
"#
        ),
    )
    .unwrap();
    let addr = free_addr();
    let data = dir.path().join("data");
    let d = Daemon::spawn_raw(
        &[
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--mqtt",
            &addr.to_string(),
            "--http",
            "off",
        ],
        &[],
        addr,
    )
    .await;
    let connect = |id: &str, key: &str| {
        let mut c = connect_packet(ProtocolVersion::V5, id, true);
        c.username = Some(ByteString::from(key));
        c
    };
    let (mut m, ack) = Client::connect_with(addr, connect("master", &master)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    let token: serde_json::Value =
        serde_json::from_str(user_property(&ack.properties.user_properties, "token").unwrap())
            .unwrap();
    assert_eq!(
        token["access"]["type"], 1,
        "the configured key is the master token"
    );
    m.subscribe("fleet/#", QoS::AtMostOnce).await;
    let (mut g, ack) = Client::connect_with(addr, connect("gw", &gateway)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(
        g.subscribe("other/#", QoS::AtMostOnce).await,
        ReasonCode::NOT_AUTHORIZED
    );
    g.publish("fleet/1", b"from the sub-account", QoS::AtMostOnce, false)
        .await;
    // The top account sees its sub-account's traffic.
    assert_eq!(&m.recv_publish().await.payload[..], b"from the sub-account");
    assert!(
        !data.join("master-token").exists(),
        "a configured master token is not written out"
    );
    d.kill().await;

    // --master-token and TERN_MASTER_TOKEN on a fresh data directory.
    for from_flag in [true, false] {
        let key = if from_flag {
            "F".repeat(64)
        } else {
            "E".repeat(64)
        };
        let fresh = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let addr_s = addr.to_string();
        let mut args = vec![
            "--data-dir",
            fresh.path().to_str().unwrap(),
            "--mqtt",
            &addr_s,
            "--http",
            "off",
        ];
        let mut env = vec![];
        if from_flag {
            args.extend(["--master-token", key.as_str()]);
        } else {
            env.push(("TERN_MASTER_TOKEN", key.as_str()));
        }
        let d = Daemon::spawn_raw(&args, &env, addr).await;
        let (_c, ack) = Client::connect_with(addr, connect("m2", &key)).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        d.kill().await;
    }
}

/// The quotas of account `cid` set at run time (the top account's limits are otherwise the
/// `[quotas]` defaults).
fn set_limits(b: &TestBroker, cid: u64, f: impl FnOnce(&mut tern_broker::accounts::Limits)) {
    let mut a = dir(b).account(cid).unwrap();
    f(&mut a.limits);
    dir(b).update_account(a).unwrap();
}

async fn publish_retained(c: &mut Client, topic: &str, size: usize, id: u16) -> ReasonCode {
    c.send(Packet::Publish(publish_packet(
        topic,
        &vec![b'x'; size],
        QoS::AtLeastOnce,
        true,
        Some(id),
    )))
    .await;
    match c.recv().await {
        Packet::PubAck(a) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn quotas_count_across_the_tree() {
    let b = broker().await;
    // top (1) → a → a1: the sub-sub-account's use counts against the top account's quotas,
    // though a1's own (defaults) and a's have room.
    let a = dir(&b)
        .create_account(1, None, "a", serde_json::json!({}))
        .unwrap();
    let a1 = dir(&b)
        .create_account(a.id, None, "a1", serde_json::json!({}))
        .unwrap();
    let retained_before = b.broker().namespace(1).map_or(0, |ns| {
        ns.usage
            .retained_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    set_limits(&b, 1, |l| {
        l.mqtt_sessions = Some(2);
        l.mqtt_subscriptions = Some(2);
        // The broker's own state topics already use some of the top account's bytes.
        l.retained_bytes = Some(retained_before + 150);
    });
    let t1 = new_token(dir(&b), a1.id, Access::STANDARD, vec![]);
    let ta = new_token(dir(&b), a.id, Access::STANDARD, vec![]);
    let top = new_token(dir(&b), 1, Access::STANDARD, vec![]);

    // Sessions.
    let mut c1 = connect_token(&b, ProtocolVersion::V5, "s1", &t1.key).await;
    let c2 = connect_token(&b, ProtocolVersion::V5, "s2", &t1.key).await;
    for (id, key) in [("s3", &t1.key), ("sa", &ta.key), ("stop", &top.key)] {
        let (_c, ack) =
            Client::connect_with(b.addr, with_user(ProtocolVersion::V5, id, Some(key), None)).await;
        assert_eq!(ack.code, ReasonCode::QUOTA_EXCEEDED, "{id}");
    }
    // An ended session gives its place back in every account of the chain.
    c2.disconnect().await;
    let mut again = None;
    for _ in 0..50 {
        let (c, ack) = Client::connect_with(
            b.addr,
            with_user(ProtocolVersion::V5, "stop", Some(&top.key), None),
        )
        .await;
        if ack.code == ReasonCode::SUCCESS {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut top_client = again.expect("the top account has room again");

    // Subscriptions: two in a1, then a third anywhere in the tree is over the top's quota.
    assert_eq!(
        c1.subscribe("q/1", QoS::AtMostOnce).await,
        ReasonCode::GRANTED_QOS_0
    );
    assert_eq!(
        c1.subscribe("q/2", QoS::AtMostOnce).await,
        ReasonCode::GRANTED_QOS_0
    );
    assert_eq!(
        c1.subscribe("q/3", QoS::AtMostOnce).await,
        ReasonCode::QUOTA_EXCEEDED
    );
    assert_eq!(
        top_client.subscribe("q/4", QoS::AtMostOnce).await,
        ReasonCode::QUOTA_EXCEEDED
    );
    // Resubscribing to a filter it has is no new subscription.
    assert_eq!(
        c1.subscribe("q/1", QoS::AtLeastOnce).await,
        ReasonCode::GRANTED_QOS_1
    );

    // Retained bytes (topic + payload): 63 + 63 fit in 150, a third does not, in a1 or top.
    assert_eq!(
        publish_retained(&mut c1, "r/1", 60, 1).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_retained(&mut c1, "r/2", 60, 2).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_retained(&mut c1, "r/3", 60, 3).await,
        ReasonCode::QUOTA_EXCEEDED
    );
    assert_eq!(
        publish_retained(&mut top_client, "r/4", 60, 4).await,
        ReasonCode::QUOTA_EXCEEDED
    );
    // Replacing one of a1's within the quota is fine; deleting one frees its bytes above too.
    assert_eq!(
        publish_retained(&mut c1, "r/1", 50, 5).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_retained(&mut c1, "r/2", 0, 6).await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_retained(&mut top_client, "r/4", 60, 7).await,
        ReasonCode::SUCCESS
    );
}

#[tokio::test]
async fn anonymous_clients_land_in_the_anonymous_account() {
    let b = TestBroker::with_listeners(|_| {}).await;
    let anon = dir(&b).anonymous().expect("an anonymous account");
    assert_ne!(anon, 1, "never the top account");
    // REST shows it: a sub-account of the top account named `anonymous`.
    let auth = format!("Authorization: FlespiToken {}", b.master_key());
    let r = crate::support::http::get(
        b.http(),
        "/platform/subaccounts/name=anonymous?fields=id,cid,name",
        &[&auth],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["result"],
        serde_json::json!([{"id": anon, "cid": 1, "name": "anonymous"}])
    );

    let mut top = connect_token(&b, ProtocolVersion::V5, "top", &b.master_key()).await;
    top.subscribe("#", QoS::AtMostOnce).await;
    let mut anon_sub = Client::connect(b.addr, ProtocolVersion::V5, "anon-sub").await;
    anon_sub.subscribe("#", QoS::AtMostOnce).await;
    // Skip what the subscriptions brought along (retained state topics).
    while let Read::Packet(_) = top.read(QUIET).await {}
    while let Read::Packet(_) = anon_sub.read(QUIET).await {}

    // The top account's publish does not reach the anonymous subscriber...
    top.publish("secret/top", b"t", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(publishes(&mut top).await, ["secret/top"]);
    assert!(publishes(&mut anon_sub).await.is_empty());
    // ... while an anonymous publish reaches the top account (a parent sees its children's
    // traffic), stamped with the anonymous account's cid.
    let mut anon_pub = Client::connect(b.addr, ProtocolVersion::V5, "anon-pub").await;
    anon_pub
        .publish("open/a", b"a", QoS::AtLeastOnce, false)
        .await;
    // (The top account also sees the anonymous account's session events.)
    let mut m = top.recv_publish().await;
    while m.topic.starts_with("flespi/") {
        m = top.recv_publish().await;
    }
    assert_eq!(&m.topic[..], "open/a");
    assert_eq!(
        user_property(&m.properties.user_properties, "cid"),
        Some(anon.to_string().as_str())
    );
    assert_eq!(publishes(&mut anon_sub).await, ["open/a"]);
    // REST lists the anonymous sessions in their account.
    let r = crate::support::http::get(
        b.http(),
        "/mqtt/sessions/client_id=anon-*?fields=client_id,cid",
        &[&auth],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let cids: Vec<u64> = v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cid"].as_u64().unwrap())
        .collect();
    assert_eq!(cids, [anon, anon], "{}", r.body);
}

#[tokio::test]
async fn the_anonymous_account_is_created_once_and_kept() {
    let data = tempfile::tempdir().unwrap();
    let dir_path = data.path().to_path_buf();
    let b = TestBroker::with(|c| c.store.data_dir = dir_path.clone()).await;
    let anon = dir(&b).anonymous().unwrap();
    assert!(b.shutdown(std::time::Duration::from_secs(5)).await);
    let b = TestBroker::with(|c| c.store.data_dir = dir_path.clone()).await;
    assert_eq!(
        dir(&b).anonymous(),
        Some(anon),
        "the stored one is found again"
    );
    let named: Vec<_> = dir(&b)
        .accounts()
        .into_iter()
        .filter(|a| a.name == "anonymous")
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].parent, Some(1));
    // Pinned by `auth.anonymous_cid`: that account, created if missing.
    assert!(b.shutdown(std::time::Duration::from_secs(5)).await);
    let b = TestBroker::with(|c| {
        c.store.data_dir = dir_path.clone();
        c.auth.anonymous_cid = Some(4242);
    })
    .await;
    assert_eq!(dir(&b).anonymous(), Some(4242));
    let mut c = Client::connect(b.addr, ProtocolVersion::V5, "pinned").await;
    c.subscribe("p/#", QoS::AtMostOnce).await;
    assert!(
        b.broker()
            .session(&tern_broker::SessionKey {
                cid: 4242,
                client_id: "pinned".into(),
            })
            .is_some()
    );
}
