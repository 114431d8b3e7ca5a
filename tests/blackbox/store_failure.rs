//! A store that cannot write (issue 12, item 3): refused work with its reason codes, `/health`
//! and REST 503, bounded pending changes, then recovery without a restart and every
//! acknowledged message delivered. Failures are injected through the store's fault switch
//! (no root needed), and once for real on a full tmpfs when the test runs as root.
//! REST changes are durable before 200 (item 4): `kill -9` right after the answer keeps them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tern::ServerOptions;
use tern_codec::*;
use tern_store::FaultSwitch;

use crate::support::client::{Read, connect_packet, publish_packet};
use crate::support::http::{self, HttpResponse};
use crate::support::process::{Daemon, free_addr};
use crate::support::{Client, QUIET, TestBroker, WAIT, loopback};

fn persistent(v: ProtocolVersion, id: &str, key: Option<&str>) -> Connect {
    let mut c = connect_packet(v, id, false);
    if v == ProtocolVersion::V5 {
        c.properties.session_expiry_interval = Some(3600);
    }
    c.username = key.map(ByteString::from);
    c
}

fn with_key(v: ProtocolVersion, id: &str, key: Option<&str>) -> Connect {
    let mut c = connect_packet(v, id, true);
    c.username = key.map(ByteString::from);
    c
}

/// What became of one QoS 1 PUBLISH.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Refused(ReasonCode),
    /// No answer in time: the PUBACK waits for the store.
    Waiting,
    Closed,
}

async fn publish_qos1(c: &mut Client, topic: &str, payload: &[u8], wait: Duration) -> Outcome {
    let pid = c.next_id();
    c.send_unchecked(Packet::Publish(publish_packet(
        topic,
        payload,
        QoS::AtLeastOnce,
        false,
        Some(pid),
    )))
    .await;
    loop {
        match c.read(wait).await {
            Read::Packet(Packet::PubAck(a)) if a.packet_id == pid => {
                return if a.reason == ReasonCode::SUCCESS {
                    Outcome::Acked
                } else {
                    Outcome::Refused(a.reason)
                };
            }
            Read::Packet(Packet::Disconnect(_)) | Read::Closed => return Outcome::Closed,
            Read::Packet(_) => {}
            Read::Timeout => return Outcome::Waiting,
        }
    }
}

/// Every message of a resumed persistent session until it is quiet, acknowledged.
async fn drain(c: &mut Client) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    loop {
        match c.read(Duration::from_secs(1)).await {
            Read::Packet(Packet::Publish(p)) => {
                got.insert(String::from_utf8_lossy(&p.payload).into_owned());
                c.ack(&p).await;
            }
            Read::Packet(_) => {}
            Read::Timeout | Read::Closed => return got,
        }
    }
}

async fn rest(addr: SocketAddr, key: &str, method: &str, path: &str, body: &str) -> HttpResponse {
    let auth = format!("Authorization: FlespiToken {key}");
    http::request(
        addr,
        method,
        path,
        &[&auth, "Content-Type: application/json"],
        body,
    )
    .await
}

/// Polls `/health` until it answers `status`.
async fn health_becomes(addr: SocketAddr, status: u16, within: Duration) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let h = http::get(addr, "/health", &[]).await;
        if h.status == status || tokio::time::Instant::now() >= deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks everything a client sees while the store cannot write: `/health`, the metric, REST
/// 503, v5 0x97 for QoS 1 and 2, 3.x publishers closed, persistent sessions refused.
async fn check_refusals(mqtt: SocketAddr, http_addr: SocketAddr, key: Option<&str>) {
    let h = health_becomes(http_addr, 503, WAIT).await;
    assert_eq!(h.status, 503, "/health while the store fails: {}", h.body);
    assert!(h.body.contains("store_failing"), "{}", h.body);
    assert!(h.body.contains("No space left"), "names why: {}", h.body);
    // Browser apps see the status (docs/flespi.md#browser-apps).
    assert_eq!(h.header("access-control-allow-origin"), Some("*"));
    let m = http::get(http_addr, "/metrics", &[]).await;
    assert!(m.body.contains("tern_store_failing 1"), "{}", m.body);

    if let Some(key) = key {
        let r = rest(
            http_addr,
            key,
            "POST",
            "/platform/tokens",
            r#"{"info":"x"}"#,
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.body);
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON envelope");
        assert_eq!(body["errors"][0]["code"], 503, "{}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert!(r.body.contains("store"), "{}", r.body);
    }

    // v5: refused with 0x97, the connection stays.
    let mut v5 = Client::connect_with(mqtt, with_key(ProtocolVersion::V5, "refused5", key))
        .await
        .0;
    assert_eq!(
        publish_qos1(&mut v5, "d/refused", b"r", WAIT).await,
        Outcome::Refused(ReasonCode::QUOTA_EXCEEDED)
    );
    let pid = v5.next_id();
    v5.send(Packet::Publish(publish_packet(
        "d/refused",
        b"r2",
        QoS::ExactlyOnce,
        false,
        Some(pid),
    )))
    .await;
    match v5.recv().await {
        Packet::PubRec(a) => assert_eq!(a.reason, ReasonCode::QUOTA_EXCEEDED),
        other => panic!("expected PUBREC 0x97, got {other:?}"),
    }
    v5.ping().await;

    // 3.1.1: no way to refuse a PUBLISH, so the client is closed instead of left waiting.
    let mut v3 = Client::connect_with(mqtt, with_key(ProtocolVersion::V311, "refused3", key))
        .await
        .0;
    assert_eq!(
        publish_qos1(&mut v3, "d/refused", b"r", WAIT).await,
        Outcome::Closed
    );

    // New persistent sessions: v5 0x97, 3.1.1 return code 3 (server unavailable).
    let (_, ack) = Client::connect_with(mqtt, persistent(ProtocolVersion::V5, "new5", key)).await;
    assert_eq!(ack.code, ReasonCode::QUOTA_EXCEEDED);
    let (_, ack) = Client::connect_with(mqtt, persistent(ProtocolVersion::V311, "new3", key)).await;
    assert_eq!(ack.code, ReasonCode::SERVER_UNAVAILABLE);
    // A clean session still connects and QoS 0 still flows.
    let mut clean = Client::connect_with(mqtt, with_key(ProtocolVersion::V5, "clean", key))
        .await
        .0;
    clean.publish("d/qos0", b"q", QoS::AtMostOnce, false).await;
    clean.ping().await;
}

#[tokio::test]
async fn a_failing_store_refuses_new_work_stays_bounded_and_recovers_losing_nothing() {
    let switch = FaultSwitch::new();
    let options = ServerOptions {
        store_faults: Some(switch.clone()),
        ..Default::default()
    };
    let b = TestBroker::start_opts(None, options, |c| c.listeners.http = Some(loopback())).await;
    let store = b.broker().store().clone();

    // An offline persistent subscriber: every QoS 1 message is stored for it.
    let (mut sink, ack) =
        Client::connect_with(b.addr, persistent(ProtocolVersion::V5, "sink", None)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(sink.subscribe("d/#", QoS::AtLeastOnce).await, ReasonCode(1));
    sink.disconnect().await;
    // A connected persistent session, to subscribe during the failure.
    let (mut other, _) =
        Client::connect_with(b.addr, persistent(ProtocolVersion::V5, "other", None)).await;

    let mut publisher = Client::connect(b.addr, ProtocolVersion::V5, "pub").await;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let payload = format!("m{i}");
        assert_eq!(
            publish_qos1(&mut publisher, "d/x", payload.as_bytes(), WAIT).await,
            Outcome::Acked
        );
        acked.insert(payload);
    }

    switch.fail();
    // Taken before the failure is known: never acknowledged while the store cannot write; the
    // client is closed (DISCONNECT 0x97) rather than left waiting.
    let pid = publisher.next_id();
    publisher
        .send(Packet::Publish(publish_packet(
            "d/x",
            b"held",
            QoS::AtLeastOnce,
            false,
            Some(pid),
        )))
        .await;
    let mut closed_with = None;
    loop {
        match publisher.read(WAIT).await {
            Read::Packet(Packet::Disconnect(d)) => closed_with = Some(d.reason),
            Read::Packet(Packet::PubAck(a)) => panic!("acknowledged while failing: {a:?}"),
            Read::Packet(_) => {}
            Read::Closed => break,
            Read::Timeout => panic!("a publisher waiting for the store was left waiting"),
        }
    }
    assert_eq!(closed_with, Some(ReasonCode::QUOTA_EXCEEDED));
    assert!(store.failing());

    check_refusals(b.addr, b.http(), Some(&b.master_key())).await;
    assert_eq!(
        other.subscribe("e/#", QoS::AtLeastOnce).await,
        ReasonCode::QUOTA_EXCEEDED,
        "a stored session's new subscription is refused"
    );

    // Bounded: a publisher that keeps sending adds nothing to what waits for the store.
    let queued = store.queued();
    let mut v5 = Client::connect(b.addr, ProtocolVersion::V5, "flood").await;
    for _ in 0..2_000 {
        assert_eq!(
            publish_qos1(&mut v5, "d/x", &[0u8; 512], WAIT).await,
            Outcome::Refused(ReasonCode::QUOTA_EXCEEDED)
        );
    }
    assert!(
        store.queued() <= queued,
        "pending ops grew from {queued} to {}",
        store.queued()
    );

    // Space returns: the writer's retry succeeds, no restart.
    switch.heal();
    let h = health_becomes(b.http(), 200, Duration::from_secs(10)).await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert!(!store.failing());
    let m = http::get(b.http(), "/metrics", &[]).await;
    assert!(m.body.contains("tern_store_failing 0"), "{}", m.body);
    assert!(
        m.body.contains("tern_store_recoveries_total 1"),
        "{}",
        m.body
    );
    let r = rest(
        b.http(),
        &b.master_key(),
        "POST",
        "/platform/tokens",
        r#"{"info":"after"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, ack) =
        Client::connect_with(b.addr, persistent(ProtocolVersion::V5, "new5", None)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(
        publish_qos1(&mut v5, "d/x", b"after", WAIT).await,
        Outcome::Acked
    );
    acked.insert("after".into());

    let (mut sink, ack) =
        Client::connect_with(b.addr, persistent(ProtocolVersion::V5, "sink", None)).await;
    assert!(ack.session_present);
    let got = drain(&mut sink).await;
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
}

/// A tmpfs mounted for one test, unmounted (lazily, so a busy mount cannot stay) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Fills the file system of `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xA5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk, byte by byte (up to one chunk).
    for _ in 0..chunk.len() {
        if f.write_all(&chunk[..1]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_disk_is_refused_loudly_and_recovers_when_space_returns() {
    if !is_root() {
        println!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(base.path(), "8m") else {
        println!("skipped: cannot mount a tmpfs here");
        return;
    };
    let data = mount.0.join("data");
    let http_addr = free_addr();
    let daemon = Daemon::spawn(&data, &["--http", &http_addr.to_string()]).await;
    let key = std::fs::read_to_string(data.join("master-token"))
        .expect("master token")
        .trim()
        .to_string();
    let key = Some(key.as_str());

    let (mut sink, ack) =
        Client::connect_with(daemon.mqtt, persistent(ProtocolVersion::V5, "sink", key)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(sink.subscribe("d/#", QoS::AtLeastOnce).await, ReasonCode(1));
    sink.disconnect().await;

    let mut acked = BTreeSet::new();
    let mut publisher =
        Client::connect_with(daemon.mqtt, with_key(ProtocolVersion::V5, "pub", key))
            .await
            .0;
    let payload_pad = "p".repeat(2048);
    for i in 0..200 {
        let payload = format!("m{i}-{payload_pad}");
        let outcome = publish_qos1(&mut publisher, "d/x", payload.as_bytes(), WAIT).await;
        assert_eq!(outcome, Outcome::Acked);
        acked.insert(format!("m{i}"));
    }
    let filler = fill(&mount.0);
    // Publish until the store runs out of space: acknowledged ones are kept.
    let mut failed = false;
    for i in 200..20_000 {
        let payload = format!("m{i}-{payload_pad}");
        match publish_qos1(&mut publisher, "d/x", payload.as_bytes(), WAIT).await {
            Outcome::Acked => {
                acked.insert(format!("m{i}"));
            }
            Outcome::Refused(code) => {
                assert_eq!(code, ReasonCode::QUOTA_EXCEEDED);
                failed = true;
                break;
            }
            Outcome::Closed => {
                failed = true;
                break;
            }
            Outcome::Waiting => panic!("a publisher was left waiting: {}", daemon.log()),
        }
    }
    assert!(failed, "the store never ran out of space");
    println!(
        "{} messages acknowledged before the disk was full",
        acked.len()
    );
    assert!(
        daemon.wait_for_log("ERROR").await && daemon.log().contains("the store cannot write"),
        "an ERROR line says why: {}",
        daemon.log()
    );
    check_refusals(daemon.mqtt, http_addr, key).await;

    // Bounded memory: refused messages are not kept.
    let pid = daemon.child.id().expect("running");
    let before = rss_kib(pid);
    let mut flood = Client::connect_with(daemon.mqtt, with_key(ProtocolVersion::V5, "flood", key))
        .await
        .0;
    for _ in 0..5_000 {
        assert_eq!(
            publish_qos1(&mut flood, "d/x", payload_pad.as_bytes(), WAIT).await,
            Outcome::Refused(ReasonCode::QUOTA_EXCEEDED)
        );
    }
    let after = rss_kib(pid);
    println!("RSS {before} KiB before 5,000 refused messages, {after} KiB after");
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB while refusing 10 MB of messages"
    );

    // Space returns.
    std::fs::remove_file(&filler).expect("free space");
    let h = health_becomes(http_addr, 200, Duration::from_secs(15)).await;
    assert_eq!(h.status, 200, "{}: {}", h.body, daemon.log());
    assert!(daemon.log().contains("recovered"), "{}", daemon.log());
    assert_eq!(
        publish_qos1(&mut flood, "d/x", b"after-x", WAIT).await,
        Outcome::Acked
    );
    acked.insert("after".into());

    let (mut sink, ack) =
        Client::connect_with(daemon.mqtt, persistent(ProtocolVersion::V5, "sink", key)).await;
    assert!(ack.session_present);
    let got: BTreeSet<String> = drain(&mut sink)
        .await
        .into_iter()
        .map(|p| p.split('-').next().unwrap_or_default().to_string())
        .collect();
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    daemon.kill().await;
    drop(mount);
}

/// The master token the process tests configure (`--master-token`).
const MASTER: &str = "K";

/// One REST change per run, `kill -9` right after its 200, then a restart checks it stayed.
/// A REST change that must answer 200; the id of the first item of its result (0 if none).
async fn changed(addr: SocketAddr, key: &str, method: &str, path: &str, body: &str) -> u64 {
    let r = rest(addr, key, method, path, body).await;
    assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["result"][0]["id"].as_u64().unwrap_or(0)
}

/// How many items a REST GET finds (0 for an error answer).
async fn found(addr: SocketAddr, key: &str, path: &str) -> usize {
    let r = rest(addr, key, "GET", path, "").await;
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["result"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn rest_changes_survive_kill_9_right_after_their_answer() {
    const RUNS: usize = 10;
    let data = tempfile::tempdir().unwrap();
    let key = MASTER.repeat(64);
    let start = |http_addr: SocketAddr| {
        let dir = data.path().to_path_buf();
        let key = key.clone();
        async move {
            let http = http_addr.to_string();
            Daemon::spawn(&dir, &["--http", &http, "--master-token", &key]).await
        }
    };
    let mut http_addr = free_addr();
    let mut daemon = start(http_addr).await;
    let restart = |d: Daemon| async move {
        d.kill().await;
        let addr = free_addr();
        (start(addr).await, addr)
    };
    for run in 0..RUNS {
        // A token created, then kept.
        let id = changed(
            http_addr,
            &key,
            "POST",
            "/platform/tokens",
            &format!(r#"{{"info":"run {run}"}}"#),
        )
        .await;
        (daemon, http_addr) = restart(daemon).await;
        let path = format!("/platform/tokens/{id}");
        assert_eq!(
            found(http_addr, &key, &path).await,
            1,
            "run {run}: token {id} lost"
        );

        // The same token deleted (revoked), and still gone.
        changed(http_addr, &key, "DELETE", &path, "").await;
        (daemon, http_addr) = restart(daemon).await;
        assert_eq!(
            found(http_addr, &key, &path).await,
            0,
            "run {run}: deleted token {id} is back"
        );

        // A sub-account created.
        let body = format!(r#"{{"name":"run {run}"}}"#);
        let cid = changed(http_addr, &key, "POST", "/platform/subaccounts", &body).await;
        (daemon, http_addr) = restart(daemon).await;
        let path = format!("/platform/subaccounts/{cid}");
        assert_eq!(
            found(http_addr, &key, &path).await,
            1,
            "run {run}: sub-account {cid} lost"
        );

        // A retained message.
        let body = format!(r#"{{"topic":"kept/{run}","payload":"v{run}","retained":true}}"#);
        changed(http_addr, &key, "POST", "/mqtt/messages", &body).await;
        (daemon, http_addr) = restart(daemon).await;
        let path = format!("/mqtt/messages/kept%2F{run}");
        assert_eq!(
            found(http_addr, &key, &path).await,
            1,
            "run {run}: retained kept/{run} lost"
        );
    }
    daemon.kill().await;
}

#[tokio::test]
async fn a_revoked_token_stays_revoked_after_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let http_addr = free_addr();
    let key = MASTER.repeat(64);
    let daemon = Daemon::spawn(
        data.path(),
        &["--http", &http_addr.to_string(), "--master-token", &key],
    )
    .await;
    let r = rest(
        http_addr,
        &key,
        "POST",
        "/platform/tokens",
        r#"{"info":"robot"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let created: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let id = created["result"][0]["id"].as_u64().unwrap();
    let robot = created["result"][0]["key"].as_str().unwrap().to_string();
    // Let the creation settle, so only the deletion races the kill.
    tokio::time::sleep(QUIET).await;
    let r = rest(
        http_addr,
        &key,
        "DELETE",
        &format!("/platform/tokens/{id}"),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    daemon.kill().await;
    let daemon = Daemon::spawn(data.path(), &[]).await;
    let (_, ack) = Client::connect_with(
        daemon.mqtt,
        with_key(ProtocolVersion::V5, "robot", Some(&robot)),
    )
    .await;
    assert_ne!(
        ack.code,
        ReasonCode::SUCCESS,
        "a revoked token connects after kill -9"
    );
    daemon.kill().await;
}
