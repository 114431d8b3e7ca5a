//! Durable state (issue 5): sessions, subscriptions, queued and retained messages, accounts and
//! tokens survive a restart and a SIGKILL; a damaged or future store is refused and left
//! untouched; export and import. Expiry across a restart is tested in virtual time:
//! `crates/tern-broker/tests/core/restore.rs`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tern_broker::accounts::{Access, Token};
use tern_codec::*;

use crate::support::client::{Read, connect_packet, publish_packet};
use crate::support::process::{Daemon, tern_bin};
use crate::support::{Client, QUIET, TestBroker, WAIT};

fn persistent(v: ProtocolVersion, id: &str, expiry: u32) -> Connect {
    let mut c = connect_packet(v, id, false);
    if v == ProtocolVersion::V5 {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

async fn restart(b: TestBroker, dir: &Path) -> TestBroker {
    assert!(b.shutdown(Duration::from_secs(5)).await);
    let dir = dir.to_path_buf();
    TestBroker::with(move |c| c.store.data_dir = dir).await
}

#[tokio::test]
async fn a_restart_keeps_sessions_subscriptions_retained_accounts_and_tokens() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let b = TestBroker::with({
        let dir = dir.clone();
        move |c| c.store.data_dir = dir
    })
    .await;
    let account = b
        .server()
        .directory()
        .create_account(1, Some(77), "kept", serde_json::json!({"fleet": 3}))
        .unwrap();
    let token = b
        .server()
        .directory()
        .create_token(Token {
            id: 0,
            key: String::new(),
            info: "kept token".into(),
            enabled: true,
            expire: 0,
            ttl: 0,
            created: 0,
            accessed: 0,
            ips: String::new(),
            cid: account.id,
            metadata: serde_json::json!({}),
            access: Access::default(),
        })
        .unwrap();
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (mut s, _) =
            Client::connect_with(b.addr, persistent(v, &format!("keep-{v}"), 3600)).await;
        let opts = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: v == ProtocolVersion::V5,
            ..Default::default()
        };
        let id = (v == ProtocolVersion::V5).then_some(42);
        s.subscribe_with(
            vec![("k/+", opts), ("other/#", SubscriptionOptions::default())],
            id,
        )
        .await;
        s.disconnect().await;
    }
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "keep-pub").await;
    for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        p.publish("k/q", format!("queued-{i}").as_bytes(), qos, false)
            .await;
    }
    let mut retained = publish_packet(
        "s/state",
        b"{\"on\":true}",
        QoS::AtLeastOnce,
        true,
        Some(901),
    );
    retained.properties.content_type = Some(ByteString::from_static("application/json"));
    retained.properties.user_properties = vec![(
        ByteString::from_static("origin"),
        ByteString::from_static("test"),
    )];
    p.send(Packet::Publish(retained)).await;
    p.finish_publish(QoS::AtLeastOnce, Some(901)).await;
    p.disconnect().await;

    let b = restart(b, &dir).await;

    assert_eq!(
        b.server().directory().account(77).map(|a| a.metadata),
        Some(serde_json::json!({"fleet": 3}))
    );
    assert_eq!(
        b.server().directory().token(token.id).map(|t| t.key),
        Some(token.key.clone())
    );
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (mut s, ack) =
            Client::connect_with(b.addr, persistent(v, &format!("keep-{v}"), 3600)).await;
        assert!(ack.session_present, "{v}");
        let mut got = Vec::new();
        while let Read::Packet(Packet::Publish(m)) = s.read(QUIET).await {
            if v == ProtocolVersion::V5 {
                assert_eq!(m.properties.subscription_identifiers.to_vec(), vec![42]);
            }
            got.push((String::from_utf8_lossy(&m.payload).into_owned(), m.qos));
            s.ack(&m).await;
        }
        assert_eq!(
            got,
            vec![
                ("queued-0".to_string(), QoS::AtLeastOnce),
                ("queued-1".to_string(), QoS::ExactlyOnce)
            ],
            "{v}"
        );
        if v == ProtocolVersion::V5 {
            let subs = ack
                .properties
                .user_properties
                .iter()
                .find(|(k, _)| k == "subscriptions")
                .map(|(_, v)| v.to_string())
                .unwrap();
            let subs: serde_json::Value = serde_json::from_str(&subs).unwrap();
            assert_eq!(subs[0]["topic"], "k/+");
            assert_eq!(subs[0]["qos"], 2);
            assert_eq!(subs[0]["no_local"], true);
            assert_eq!(subs[0]["subscription_id"], 42);
        }
    }
    let mut fresh = Client::connect(b.addr, ProtocolVersion::V5, "fresh").await;
    fresh.subscribe("s/state", QoS::AtMostOnce).await;
    let r = fresh.recv_publish().await;
    assert!(r.retain);
    assert_eq!(&r.payload[..], b"{\"on\":true}");
    assert_eq!(
        r.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert!(
        r.properties
            .user_properties
            .iter()
            .any(|(k, v)| k == "origin" && v == "test")
    );
    // The token works over MQTT after the restart.
    let mut c = connect_packet(ProtocolVersion::V5, "tok", true);
    c.username = Some(ByteString::from(token.key.as_str()));
    let (_t, ack) = Client::connect_with(b.addr, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
}

/// A subscriber's persistent session, a QoS 1 stream, SIGKILL in the middle: every message
/// that was PUBACKed is delivered after the restart.
#[tokio::test]
async fn sigkill_loses_no_acknowledged_message() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::spawn(data.path(), &["--anonymous"]).await;
    let (mut s, _) =
        Client::connect_with(d.mqtt, persistent(ProtocolVersion::V5, "crash-sub", 3600)).await;
    s.subscribe("crash/t", QoS::AtLeastOnce).await;
    s.disconnect().await;

    let mut p = Client::connect(d.mqtt, ProtocolVersion::V5, "crash-pub").await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let window = 64u32;
    let mut next = 0u32;
    let mut in_flight = std::collections::HashMap::new();
    let kill_at = tokio::time::Instant::now() + Duration::from_millis(700);
    let mut d = Some(d);
    loop {
        while d.is_some() && in_flight.len() < window as usize {
            next += 1;
            let id = (next % 60_000 + 1) as u16;
            in_flight.insert(id, next);
            p.send(Packet::Publish(publish_packet(
                "crash/t",
                next.to_string().as_bytes(),
                QoS::AtLeastOnce,
                false,
                Some(id),
            )))
            .await;
        }
        if tokio::time::Instant::now() >= kill_at
            && let Some(daemon) = d.take()
        {
            daemon.kill().await;
        }
        match p.read(WAIT).await {
            Read::Packet(Packet::PubAck(a)) => {
                if let Some(n) = in_flight.remove(&a.packet_id) {
                    acked.lock().unwrap().push(n);
                }
            }
            Read::Packet(other) => panic!("unexpected {other:?}"),
            Read::Closed => break,
            Read::Timeout => panic!("no acknowledgement"),
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the stream ran before the kill ({} acked)",
        acked.len()
    );

    let d = Daemon::spawn(data.path(), &["--anonymous"]).await;
    let (mut s, ack) =
        Client::connect_with(d.mqtt, persistent(ProtocolVersion::V5, "crash-sub", 3600)).await;
    assert!(ack.session_present);
    let mut received = std::collections::HashSet::new();
    while let Read::Packet(Packet::Publish(m)) = s.read(Duration::from_secs(2)).await {
        received.insert(String::from_utf8_lossy(&m.payload).parse::<u32>().unwrap());
        s.ack(&m).await;
    }
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|n| !received.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost after SIGKILL, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    d.kill().await;
}

fn snapshot_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_damaged_store_is_refused_and_left_untouched() {
    let data = tempfile::tempdir().unwrap();
    // Write a real store first.
    let d = Daemon::spawn(data.path(), &["--anonymous"]).await;
    let mut p = Client::connect(d.mqtt, ProtocolVersion::V5, "x").await;
    p.publish("r/t", b"kept", QoS::AtLeastOnce, true).await;
    d.kill().await;
    let file = data.path().join(tern_store::STORE_FILE);
    let len = std::fs::metadata(&file).unwrap().len();
    // Truncated.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let before = snapshot_files(data.path());
    let out = tokio::process::Command::new(tern_bin())
        .args([
            "--anonymous",
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt") || err.contains("cannot open the store"),
        "{err}"
    );
    assert_eq!(
        snapshot_files(data.path()),
        before,
        "the files are unchanged"
    );
}

#[tokio::test]
async fn export_and_import_round_trip() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::spawn(data.path(), &["--anonymous"]).await;
    let (mut s, _) =
        Client::connect_with(d.mqtt, persistent(ProtocolVersion::V311, "exp-sub", 0)).await;
    s.subscribe("exp/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = Client::connect(d.mqtt, ProtocolVersion::V5, "exp-pub").await;
    p.publish("exp/r", b"retained", QoS::AtLeastOnce, true)
        .await;
    p.publish("exp/q", b"queued", QoS::AtLeastOnce, false).await;
    let mut sig = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(d.child.id().unwrap().to_string())
        .spawn()
        .unwrap();
    sig.wait().await.unwrap();
    let mut d = d;
    assert!(
        tokio::time::timeout(Duration::from_secs(10), d.child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );

    let export = data.path().join("state.jsonl");
    let out = tokio::process::Command::new(tern_bin())
        .arg("--data-dir")
        .arg(data.path())
        .args(["store", "export", "--out"])
        .arg(&export)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.starts_with("{\"tern_store_export\":1}"));
    assert!(text.contains("exp-sub"));

    let restored = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(tern_bin())
        .arg("--data-dir")
        .arg(restored.path())
        .args(["store", "import"])
        .arg(&export)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Importing twice is refused: the store is not empty any more.
    let again = tokio::process::Command::new(tern_bin())
        .arg("--data-dir")
        .arg(restored.path())
        .args(["store", "import"])
        .arg(&export)
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());

    let d = Daemon::spawn(restored.path(), &["--anonymous"]).await;
    let (mut s, ack) =
        Client::connect_with(d.mqtt, persistent(ProtocolVersion::V311, "exp-sub", 0)).await;
    assert!(ack.session_present);
    // Both went to the session's queue (exp/# matches both).
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = s.recv_publish().await;
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
        s.ack(&m).await;
    }
    assert_eq!(got, vec!["retained", "queued"]);
    let mut r = Client::connect(d.mqtt, ProtocolVersion::V5, "exp-r").await;
    r.subscribe("exp/r", QoS::AtMostOnce).await;
    assert_eq!(
        r.recv_publish().await.payload,
        Bytes::from_static(b"retained")
    );
    d.kill().await;
}

#[tokio::test]
async fn first_start_prints_and_saves_the_master_token() {
    let data = tempfile::tempdir().unwrap();
    let port = crate::support::process::free_port();
    let mut child = tokio::process::Command::new(tern_bin())
        .args([
            "--mqtt",
            &format!("127.0.0.1:{port}"),
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let file = data.path().join("master-token");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no master-token file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(key.len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The key works as a username, and nothing connects without one.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = connect_packet(ProtocolVersion::V5, "first", true);
    c.username = Some(ByteString::from(key.as_str()));
    let (_c, ack) = Client::connect_with(addr, c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    let (_c, ack) =
        Client::connect_with(addr, connect_packet(ProtocolVersion::V5, "nobody", true)).await;
    assert_eq!(ack.code, ReasonCode::NOT_AUTHORIZED);
    child.kill().await.unwrap();
    let mut out = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(out.contains(&format!("master token: {key}")), "{out}");
}

#[tokio::test]
async fn a_store_of_a_future_format_version_is_refused_and_left_untouched() {
    let data = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tern-store/tests/golden/corrupt/future_version_3.redb"
    );
    std::fs::copy(fixture, data.path().join(tern_store::STORE_FILE)).unwrap();
    let before = snapshot_files(data.path());
    let out = tokio::process::Command::new(tern_bin())
        .args([
            "--anonymous",
            "--mqtt",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("format version 3, this tern reads version 2"),
        "{err}"
    );
    assert_eq!(
        snapshot_files(data.path()),
        before,
        "the files are unchanged"
    );
}

async fn tern_cli(data: &Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(tern_bin())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn token_and_account_commands_work_on_the_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let account: serde_json::Value = serde_json::from_str(
        &tern_cli(
            data.path(),
            &["account", "create", "--name", "fleet", "--id", "500"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(account["id"], 500);
    assert!(
        tern_cli(data.path(), &["account", "list"])
            .await
            .contains("\"fleet\"")
    );
    let token: serde_json::Value = serde_json::from_str(
        &tern_cli(
            data.path(),
            &[
                "token",
                "create",
                "--cid",
                "500",
                "--info",
                "cli",
                "--access",
                "acl",
                "--acl",
                "fleet/#:subscribe",
            ],
        )
        .await,
    )
    .unwrap();
    let key = token["key"].as_str().unwrap().to_string();
    assert_eq!(token["access"]["type"], 2);
    assert!(
        tern_cli(data.path(), &["token", "list"])
            .await
            .contains(&key)
    );

    let d = Daemon::spawn(data.path(), &[]).await;
    let mut c = connect_packet(ProtocolVersion::V5, "cli", true);
    c.username = Some(ByteString::from(key.as_str()));
    let (mut conn, ack) = Client::connect_with(d.mqtt, c.clone()).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(
        conn.subscribe("fleet/1", QoS::AtMostOnce).await,
        ReasonCode::GRANTED_QOS_0
    );
    assert_eq!(
        conn.subscribe("other", QoS::AtMostOnce).await,
        ReasonCode::NOT_AUTHORIZED
    );
    // While tern runs, the commands refuse (the data directory is in use), say why, and
    // change nothing. Global options work after the subcommand too.
    let busy = tokio::process::Command::new(tern_bin())
        .args(["token", "list", "--data-dir"])
        .arg(data.path())
        .output()
        .await
        .unwrap();
    assert!(!busy.status.success());
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        stderr.contains("a running tern holds this data directory"),
        "{stderr}"
    );
    d.kill().await;
    let after = tokio::process::Command::new(tern_bin())
        .args(["token", "list", "--data-dir"])
        .arg(data.path())
        .output()
        .await
        .unwrap();
    assert!(after.status.success(), "{after:?}");
    assert!(String::from_utf8_lossy(&after.stdout).contains(&key));

    let id = token["id"].to_string();
    tern_cli(data.path(), &["token", "revoke", &id]).await;
    let d = Daemon::spawn(data.path(), &[]).await;
    let (_conn, ack) = Client::connect_with(d.mqtt, c).await;
    assert_eq!(ack.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    d.kill().await;
}

#[tokio::test]
async fn an_acl_restriction_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let b = TestBroker::with({
        let dir = dir.clone();
        move |c| c.store.data_dir = dir
    })
    .await;
    let grant = tern_broker::accounts::AclEntry {
        uri: "mqtt".into(),
        topic: Some("allowed/#".into()),
        actions: vec!["subscribe".into()],
        rest: Default::default(),
    };
    let token = b
        .server()
        .directory()
        .create_token(Token {
            id: 0,
            key: String::new(),
            info: "acl".into(),
            enabled: true,
            expire: 0,
            ttl: 0,
            created: 0,
            accessed: 0,
            ips: String::new(),
            cid: 1,
            metadata: serde_json::json!({}),
            access: Access {
                kind: Access::ACL,
                acl: vec![grant],
            },
        })
        .unwrap();
    let mut c = persistent(ProtocolVersion::V5, "acl-sess", 3600);
    c.username = Some(ByteString::from(token.key.as_str()));
    let (mut s, _) = Client::connect_with(b.addr, c.clone()).await;
    assert_eq!(
        s.subscribe("#", QoS::AtLeastOnce).await,
        ReasonCode::GRANTED_QOS_1
    );
    s.disconnect().await;
    let b = restart(b, &dir).await;
    // Offline, after the restart: only granted topics are queued.
    let mut p = Client::connect(b.addr, ProtocolVersion::V5, "acl-pub").await;
    p.publish("secret/1", b"no", QoS::AtLeastOnce, false).await;
    p.publish("allowed/1", b"yes", QoS::AtLeastOnce, false)
        .await;
    let (mut s, ack) = Client::connect_with(b.addr, c).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Read::Packet(Packet::Publish(m)) = s.read(QUIET).await {
        got.push(m.topic.to_string());
        s.ack(&m).await;
    }
    assert_eq!(got, vec!["allowed/1"]);
}
