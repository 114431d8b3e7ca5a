//! Cluster mode (issue 17): persistent sessions and wills across nodes. A persistent session
//! resumes on another node (session present, its subscriptions, every message acknowledged to
//! its publishers delivered) after a clean disconnect and after `kill -9` of its node; a Clean
//! Start on another node ends it everywhere; the will of a client whose node was killed is
//! published by a node that is still up. The harness is `support::cluster`.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::*;

use crate::support::client::{Read, connect_packet};
use crate::support::cluster::*;
use crate::support::http;
use crate::support::nats::NatsServer;
use crate::support::process::{Daemon, free_addr};
use crate::support::{Client, QUIET};

/// The master token of every node of [`pair`].
const MASTER: &str = "C1usterSess10nsMasterT0ken0123456789abcdefABCDEF0123456789abcdef";

/// How long a resumed session gets to deliver its backlog.
const BACKLOG: Duration = Duration::from_secs(20);

/// A CONNECT of a persistent session (MQTT 5, expiry an hour).
fn persistent(id: &str) -> Connect {
    let mut c = connect_packet(ProtocolVersion::V5, id, false);
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// Connects a persistent session to node `n`; returns the client and CONNACK's session
/// present flag.
async fn resume(cluster: &Cluster, n: usize, id: &str) -> (Client, bool) {
    let (c, ack) = Client::connect_with(cluster.nodes[n].addr(), persistent(id)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{id} connects to node {n}");
    (c, ack.session_present)
}

/// Reads PUBLISHes (acknowledging them) until every payload of `want` was seen; probes and
/// the broker's own events are skipped. Fails after [`BACKLOG`] with what is missing.
async fn receive_all(cluster: &Cluster, c: &mut Client, want: &BTreeSet<String>, what: &str) {
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + BACKLOG;
    while !want.is_subset(&got) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.read(left).await {
            Read::Packet(Packet::Publish(m)) => {
                c.ack(&m).await;
                if !is_probe(&m) {
                    got.insert(String::from_utf8_lossy(&m.payload).into_owned());
                }
            }
            other => panic!(
                "{what}: got {other:?} while still missing {:?}{}",
                want.difference(&got).collect::<Vec<_>>(),
                cluster.logs()
            ),
        }
    }
}

/// Publishes `payloads` at QoS 1 on `topic` from a client of node `n`, each acknowledged.
async fn publish_all(cluster: &Cluster, n: usize, id: &str, topic: &str, payloads: &[String]) {
    let mut p = cluster.client(n, ProtocolVersion::V311, id).await;
    for m in payloads {
        p.publish(topic, m.as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    p.disconnect().await;
}

fn batch(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A NATS server and two nodes, [`A`] and [`B`], with their HTTP listeners (`/metrics`).
async fn pair() -> Option<Cluster> {
    let nats = NatsServer::start().await?;
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let addr = free_addr();
        let args = ["--http", &addr.to_string(), "--master-token", MASTER];
        let mut node = Node::start_with(&nats, name, "", &args).await;
        node.daemon.http = Some(addr);
        nodes.push(node);
    }
    Some(Cluster { nodes, nats })
}

/// Waits until node `n`'s REST session listing (`/mqtt/sessions/all`'s `result`) satisfies
/// `done`; fails with it after [`CROSS`].
async fn listing_on(
    cluster: &Cluster,
    n: usize,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) {
    let addr = cluster.nodes[n]
        .daemon
        .http
        .expect("the node's HTTP listener");
    let auth = format!("Authorization: FlespiToken {MASTER}");
    let deadline = tokio::time::Instant::now() + CROSS;
    loop {
        let r = http::get(addr, "/mqtt/sessions/all", &[&auth]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        if body["result"].as_array().is_some_and(|all| done(all)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {n}: {what}: {}{}",
            r.body,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `n` lists session `client_id` with `subscriptions` subscriptions: the
/// cluster's record of it, written by the node that holds it, reached `n`.
async fn known_on(cluster: &Cluster, n: usize, client_id: &str, subscriptions: u64) {
    let what = format!("lists {client_id} with {subscriptions} subscriptions");
    listing_on(cluster, n, &what, |all| {
        all.iter().any(|s| {
            s["client_id"] == client_id && s["subscriptions"].as_u64() == Some(subscriptions)
        })
    })
    .await;
}

/// A session that disconnected from node A resumes on node B: session present, its
/// subscription still there, and the messages published while it was away (on either node)
/// delivered; node A keeps no copy that would deliver them again.
#[tokio::test]
async fn persistent_session_moves_after_disconnect() {
    let Some(cluster) = pair().await else {
        return;
    };
    let (mut s, present) = resume(&cluster, A, "mover").await;
    assert!(!present);
    assert_eq!(s.subscribe("mv/#", QoS::AtLeastOnce).await, ReasonCode(1));
    cluster.ready(B, "mv/~probe~", &mut [&mut s]).await;
    known_on(&cluster, B, "mover", 1).await;
    s.disconnect().await;

    let early = batch("early", 20);
    publish_all(&cluster, A, "mv-pa", "mv/a", &early[..10]).await;
    publish_all(&cluster, B, "mv-pb", "mv/b", &early[10..]).await;

    let (mut s, present) = resume(&cluster, B, "mover").await;
    assert!(
        present,
        "the session resumes on the other node{}",
        cluster.logs()
    );
    receive_all(
        &cluster,
        &mut s,
        &early.iter().cloned().collect(),
        "backlog on B",
    )
    .await;

    // Its subscription came along: new messages from both nodes arrive live.
    let late = batch("late", 10);
    publish_all(&cluster, A, "mv-pa2", "mv/a", &late[..5]).await;
    publish_all(&cluster, B, "mv-pb2", "mv/b", &late[5..]).await;
    receive_all(
        &cluster,
        &mut s,
        &late.iter().cloned().collect(),
        "live on B",
    )
    .await;
    s.disconnect().await;
}

/// `kill -9` of the node a persistent session is connected to: the client reconnects to
/// another node and gets every message whose PUBACK its publishers received, those it had
/// not acknowledged yet and those published while it was away (duplicates allowed).
#[tokio::test]
async fn persistent_session_resumes_after_its_node_is_killed() {
    let Some(mut cluster) = pair().await else {
        return;
    };
    let (mut s, _) = resume(&cluster, A, "survivor").await;
    assert_eq!(s.subscribe("kl/#", QoS::AtLeastOnce).await, ReasonCode(1));
    cluster.ready(B, "kl/~probe~", &mut [&mut s]).await;
    known_on(&cluster, B, "survivor", 1).await;

    // Received but never acknowledged: in flight when the node dies.
    let before = batch("before", 10);
    publish_all(&cluster, B, "kl-p1", "kl/t", &before).await;
    let mut seen = 0;
    while seen < before.len() {
        match s.read(CROSS).await {
            Read::Packet(Packet::Publish(m)) if is_probe(&m) => s.ack(&m).await,
            Read::Packet(Packet::Publish(_)) => seen += 1,
            other => panic!("before the kill: {other:?}{}", cluster.logs()),
        }
    }

    let node = cluster.nodes.remove(A);
    node.daemon.kill().await;
    drop(s);

    // Published while the client has no node.
    let during = batch("during", 10);
    // The surviving node is now index 0.
    publish_all(&cluster, 0, "kl-p2", "kl/t", &during).await;

    let (mut s, present) = resume(&cluster, 0, "survivor").await;
    assert!(
        present,
        "the session resumes on the surviving node{}",
        cluster.logs()
    );
    let want: BTreeSet<String> = before.iter().chain(&during).cloned().collect();
    receive_all(&cluster, &mut s, &want, "after the kill").await;
    s.disconnect().await;
}

/// A Clean Start on another node ends the session there too: a later resume finds none.
#[tokio::test]
async fn clean_start_elsewhere_ends_the_session() {
    let Some(cluster) = pair().await else {
        return;
    };
    let (mut s, _) = resume(&cluster, A, "cleaner").await;
    s.subscribe("cl/#", QoS::AtLeastOnce).await;
    known_on(&cluster, B, "cleaner", 1).await;
    s.disconnect().await;

    let mut fresh = connect_packet(ProtocolVersion::V5, "cleaner", true);
    fresh.properties.session_expiry_interval = Some(0);
    let (c, ack) = Client::connect_with(cluster.nodes[B].addr(), fresh).await;
    assert!(!ack.session_present);
    c.disconnect().await;

    // Give the delete a moment to reach every replica, then resume anywhere: nothing.
    let deadline = tokio::time::Instant::now() + CROSS;
    for n in [A, B] {
        loop {
            let (c, present) = resume(&cluster, n, "cleaner").await;
            if !present {
                c.disconnect().await;
                break;
            }
            // A replica that has not seen the delete yet resumed it: end it again.
            drop(c);
            let mut fresh = connect_packet(ProtocolVersion::V5, "cleaner", true);
            fresh.properties.session_expiry_interval = Some(0);
            let (c, _) = Client::connect_with(cluster.nodes[B].addr(), fresh).await;
            c.disconnect().await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {n} still resumes the session{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The will of a client connected to a node that is killed is published by the node that is
/// left, for a persistent session and for a clean one.
#[tokio::test]
async fn will_published_after_its_node_is_killed() {
    let Some(mut cluster) = pair().await else {
        return;
    };
    let mut watcher = cluster
        .subscriber(
            B,
            ProtocolVersion::V5,
            "will-watch",
            "wl/#",
            QoS::AtLeastOnce,
        )
        .await;
    cluster.ready(A, "wl/~probe~", &mut [&mut watcher]).await;
    for (id, expiry) in [("will-p", 600), ("will-c", 0)] {
        let mut c = connect_packet(ProtocolVersion::V5, id, expiry == 0);
        c.properties.session_expiry_interval = Some(expiry);
        c.will = Some(Will {
            topic: ByteString::from(format!("wl/{id}")),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        let (w, ack) = Client::connect_with(cluster.nodes[A].addr(), c).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS);
        std::mem::forget(w);
    }
    known_on(&cluster, B, "will-p", 0).await;
    known_on(&cluster, B, "will-c", 0).await;
    let node = cluster.nodes.remove(A);
    node.daemon.kill().await;

    let mut wills = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while wills.len() < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watcher.read(left).await {
            Read::Packet(Packet::Publish(m)) => {
                watcher.ack(&m).await;
                if m.topic.starts_with("wl/will-") {
                    assert_eq!(&m.payload[..], b"gone");
                    assert!(wills.insert(m.topic.to_string()), "{} twice", m.topic);
                }
            }
            other => panic!(
                "waiting for the wills: {other:?}, got {wills:?}{}",
                cluster.logs()
            ),
        }
    }
    // Once each.
    loop {
        match watcher.read(QUIET).await {
            Read::Timeout => break,
            Read::Packet(Packet::Publish(m)) => {
                watcher.ack(&m).await;
                assert!(!m.topic.starts_with("wl/will-"), "{} again", m.topic);
            }
            other => panic!("after the wills: {other:?}"),
        }
    }
}

/// A client still connected to node A connects again to node B (MQTT 3.1.1, clean session 0):
/// node A closes the old connection, node B resumes the session with what node A had not
/// delivered yet, and from then on only node B delivers.
#[tokio::test]
async fn live_session_taken_over_by_another_node() {
    let Some(cluster) = pair().await else {
        return;
    };
    let old_connect = connect_packet(ProtocolVersion::V311, "hopper", false);
    let (mut old, _) = Client::connect_with(cluster.nodes[A].addr(), old_connect.clone()).await;
    old.subscribe("hp/#", QoS::AtLeastOnce).await;
    cluster.ready(B, "hp/~probe~", &mut [&mut old]).await;
    known_on(&cluster, B, "hopper", 1).await;

    // Queued on node A behind a client that does not read.
    let waiting = batch("waiting", 10);
    publish_all(&cluster, B, "hp-p1", "hp/t", &waiting).await;

    let (mut new, ack) = Client::connect_with(cluster.nodes[B].addr(), old_connect).await;
    assert!(ack.session_present, "resumed on node B{}", cluster.logs());
    receive_all(
        &cluster,
        &mut new,
        &waiting.iter().cloned().collect(),
        "after the takeover",
    )
    .await;
    // The old connection was closed by node A.
    loop {
        match old.read(CROSS).await {
            Read::Closed => break,
            Read::Packet(Packet::Publish(_)) => {}
            other => panic!("the old connection: {other:?}{}", cluster.logs()),
        }
    }
    // Live again, from both nodes, to the new connection only.
    let after = batch("after", 6);
    publish_all(&cluster, A, "hp-p2", "hp/t", &after[..3]).await;
    publish_all(&cluster, B, "hp-p3", "hp/t", &after[3..]).await;
    receive_all(
        &cluster,
        &mut new,
        &after.iter().cloned().collect(),
        "after, live",
    )
    .await;
    new.disconnect().await;
}

/// REST on any node lists the sessions of every node: one connected to node A and one that
/// left it, with their subscriptions, from node B.
#[tokio::test]
async fn rest_lists_the_sessions_of_every_node() {
    let Some(cluster) = pair().await else {
        return;
    };
    let (mut online, _) = resume(&cluster, A, "ls-online").await;
    online.subscribe("ls/on/#", QoS::AtLeastOnce).await;
    let (mut offline, _) = resume(&cluster, A, "ls-offline").await;
    offline.subscribe("ls/off/+", QoS::AtMostOnce).await;
    offline.disconnect().await;

    let http_b = cluster.nodes[B]
        .daemon
        .http
        .expect("node B's HTTP listener");
    let auth = format!("Authorization: FlespiToken {MASTER}");
    let deadline = tokio::time::Instant::now() + CROSS;
    loop {
        let r = http::get(http_b, "/mqtt/sessions/all", &[&auth]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let find = |id: &str| {
            body["result"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["client_id"] == id)
                .cloned()
        };
        if let (Some(on), Some(off)) = (find("ls-online"), find("ls-offline"))
            && off["connected"] == false
        {
            assert_eq!(on["connected"], true, "{on}");
            assert_eq!(on["subscriptions"], 1, "{on}");
            assert!(
                off["expires"].is_number(),
                "an offline session expires: {off}"
            );
            assert_eq!(off["protocol_version"], 5, "{off}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node B's /mqtt/sessions/all: {}{}",
            r.body,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http::get(http_b, "/mqtt/sessions/all/subscriptions/all", &[&auth]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for topic in ["ls/on/#", "ls/off/+"] {
        assert!(r.body.contains(topic), "{topic} in {}", r.body);
    }
    online.disconnect().await;
}

/// A node that ran alone (no `[cluster]`) joins a cluster with the persistent sessions of its
/// store: a client resumes its session on another node of the cluster, subscription included.
#[tokio::test]
async fn a_node_that_ran_alone_brings_its_sessions() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("tern.toml");
    let base = format!("[auth]\nanonymous = true\nanonymous_cid = {ANON_CID}\n");
    std::fs::write(&config, &base).expect("write the configuration");
    let config_arg = config.to_str().expect("utf-8 path").to_string();
    let alone = Daemon::spawn(data.path(), &["--config", &config_arg, "--anonymous"]).await;
    let (mut s, _) = Client::connect_with(alone.mqtt, persistent("settler")).await;
    assert_eq!(s.subscribe("st/#", QoS::AtLeastOnce).await, ReasonCode(1));
    s.disconnect().await;
    // A clean stop writes everything down.
    let mut alone = alone;
    alone.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), alone.child.wait())
        .await
        .expect("the node stops in time")
        .expect("its exit status");
    assert!(status.success(), "{status}: {}", alone.log());

    // The same data directory, now in cluster mode, and a second node.
    std::fs::write(
        &config,
        format!(
            "{base}\n[cluster]\nnats = [\"{}\"]\nnode = \"joined\"\nreplicas = 1\n",
            nats.url()
        ),
    )
    .expect("write the configuration");
    let addr = free_addr();
    let joined = Daemon::spawn(
        data.path(),
        &[
            "--config",
            &config_arg,
            "--anonymous",
            "--http",
            &addr.to_string(),
            "--master-token",
            MASTER,
        ],
    )
    .await;
    let other_http = free_addr();
    let mut other = Node::start_with(
        &nats,
        "other",
        "",
        &["--http", &other_http.to_string(), "--master-token", MASTER],
    )
    .await;
    other.daemon.http = Some(other_http);
    let mut joined_node = Node {
        name: "joined".into(),
        daemon: joined,
        _data: data,
    };
    joined_node.daemon.http = Some(addr);
    let cluster = Cluster {
        nodes: vec![joined_node, other],
        nats,
    };
    known_on(&cluster, A, "settler", 1).await;

    let (mut s, present) = resume(&cluster, B, "settler").await;
    assert!(
        present,
        "the session of the node that ran alone resumes elsewhere{}",
        cluster.logs()
    );
    let msgs = batch("settled", 3);
    publish_all(&cluster, A, "st-pub", "st/x", &msgs).await;
    receive_all(
        &cluster,
        &mut s,
        &msgs.iter().cloned().collect(),
        "on the other node",
    )
    .await;
    s.disconnect().await;
}

/// REST DELETE on node B of a session connected to node A: node A disconnects its client
/// (0x98) and the session is gone everywhere.
#[tokio::test]
async fn rest_deletes_a_session_held_by_another_node() {
    let Some(cluster) = pair().await else {
        return;
    };
    let (mut c, _) = resume(&cluster, A, "doomed").await;
    c.subscribe("dm/#", QoS::AtLeastOnce).await;
    known_on(&cluster, B, "doomed", 1).await;

    let http_b = cluster.nodes[B]
        .daemon
        .http
        .expect("node B's HTTP listener");
    let auth = format!("Authorization: FlespiToken {MASTER}");
    let r = http::request(http_b, "DELETE", "/mqtt/sessions/all", &[&auth], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("doomed"), "{}", r.body);

    match c.read(CROSS).await {
        Read::Packet(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::ADMINISTRATIVE_ACTION, "{d:?}");
        }
        other => panic!("node A's client: {other:?}{}", cluster.logs()),
    }
    // Gone from every node's listing, and nothing to resume.
    for n in [A, B] {
        listing_on(&cluster, n, "doomed is gone", |all| {
            all.iter().all(|s| s["client_id"] != "doomed")
        })
        .await;
    }
    let (c, present) = resume(&cluster, B, "doomed").await;
    assert!(!present, "the removed session does not resume");
    c.disconnect().await;
}

/// Reads PUBLISHes without acknowledging them until `n` that are not probes came; returns
/// them.
async fn unacknowledged(cluster: &Cluster, c: &mut Client, n: usize, what: &str) -> Vec<Publish> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.read(CROSS).await {
            Read::Packet(Packet::Publish(m)) if is_probe(&m) => c.ack(&m).await,
            Read::Packet(Packet::Publish(m)) => got.push(m),
            other => panic!("{what}: {other:?} after {}{}", got.len(), cluster.logs()),
        }
    }
    got
}

/// A persistent session `id` on node A subscribed to `<prefix>/#` at QoS 1, known to node B,
/// that received five messages published on node B and acknowledged none: the client and
/// those messages.
async fn in_flight_on_a(cluster: &Cluster, id: &str, prefix: &str) -> (Client, Vec<Publish>) {
    let (mut s, _) = resume(cluster, A, id).await;
    let filter = format!("{prefix}/#");
    assert_eq!(s.subscribe(&filter, QoS::AtLeastOnce).await, ReasonCode(1));
    cluster
        .ready(B, &format!("{prefix}/{PROBE}"), &mut [&mut s])
        .await;
    known_on(cluster, B, id, 1).await;
    let topic = format!("{prefix}/t");
    let publisher = format!("{id}-p1");
    publish_all(cluster, B, &publisher, &topic, &batch("sent", 5)).await;
    let sent = unacknowledged(cluster, &mut s, 5, "in flight on A").await;
    assert!(sent.iter().all(|m| !m.dup), "first deliveries: {sent:?}");
    (s, sent)
}

/// What a resumed session must get again.
struct Owed<'a> {
    /// In flight (never acknowledged) on the former node when it last wrote the session's
    /// record: again with DUP=1 under the packet ids they had there.
    sent: &'a [Publish],
    /// Sent by the former node after that, not acknowledged: again with DUP=1 (any id).
    late: &'a [Publish],
    /// Published while the client was away: DUP=0, unless `away_may_be_dup` (its node died
    /// with the client connected: what was published before the surviving node took the
    /// session over may have gone out, "might be re-delivery").
    away: &'a [String],
    away_may_be_dup: bool,
}

/// Reads until every payload `owed` lists came, acknowledging each, and checks its DUP flag
/// and packet id.
async fn resent_then_new(cluster: &Cluster, c: &mut Client, owed: Owed<'_>) {
    let payload_of = |m: &Publish| String::from_utf8_lossy(&m.payload).into_owned();
    let mut want_dup: std::collections::BTreeMap<String, u16> = owed
        .sent
        .iter()
        .map(|m| {
            let id = m.packet_id.expect("a QoS 1 delivery has a packet id");
            (payload_of(m), id)
        })
        .collect();
    let mut want_late: BTreeSet<String> = owed.late.iter().map(payload_of).collect();
    let mut want_new: BTreeSet<String> = owed.away.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + BACKLOG;
    while !want_dup.is_empty() || !want_late.is_empty() || !want_new.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = match c.read(left).await {
            Read::Packet(Packet::Publish(m)) => m,
            other => panic!(
                "still missing {want_dup:?} and {want_new:?}: {other:?}{}",
                cluster.logs()
            ),
        };
        c.ack(&m).await;
        if is_probe(&m) {
            continue;
        }
        let payload = String::from_utf8_lossy(&m.payload).into_owned();
        if let Some(id) = want_dup.remove(&payload) {
            assert!(m.dup, "{payload} was in flight: DUP=1 ({m:?})");
            assert_eq!(m.packet_id, Some(id), "{payload} keeps its packet id");
        } else if want_late.remove(&payload) {
            assert!(m.dup, "{payload} went out before the crash: DUP=1 ({m:?})");
        } else if want_new.remove(&payload) {
            assert!(
                owed.away_may_be_dup || !m.dup,
                "{payload} is a first delivery: DUP=0 ({m:?})"
            );
        }
    }
}

/// A QoS 1 subscriber on node A receives messages and acknowledges none, then disconnects
/// and resumes on node B: node B sends them again with DUP=1 under their packet ids, and
/// what was published while the client was away with DUP=0.
#[tokio::test]
async fn inflight_resent_with_dup_on_another_node() {
    let Some(cluster) = pair().await else {
        return;
    };
    let (s, sent) = in_flight_on_a(&cluster, "duper", "dp").await;
    s.disconnect().await;
    // The record written at the disconnect (with what was in flight) reached node B.
    listing_on(&cluster, B, "duper is offline", |all| {
        all.iter()
            .any(|s| s["client_id"] == "duper" && s["connected"] == false)
    })
    .await;

    let away = batch("away", 3);
    publish_all(&cluster, A, "dp-p2", "dp/t", &away).await;
    let (mut s, present) = resume(&cluster, B, "duper").await;
    assert!(present, "resumed on node B{}", cluster.logs());
    let owed = Owed {
        sent: &sent,
        late: &[],
        away: &away,
        away_may_be_dup: false,
    };
    resent_then_new(&cluster, &mut s, owed).await;
    s.disconnect().await;
    // Every session change reached the record writers (none dropped from their queues).
    for n in [A, B] {
        let http = cluster.nodes[n]
            .daemon
            .http
            .expect("the node's HTTP listener");
        let metrics = http::get(http, "/metrics", &[]).await.body;
        let line = r#"tern_cluster_dropped_total{queue="sessions"} 0"#;
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} in:
{metrics}"
        );
    }
}

/// The same after `kill -9` of node A: what node A last wrote of the session (here at a
/// SUBSCRIBE, after the messages went out) tells the surviving node what was in flight; what
/// node A sent after that and right before its death comes again with DUP=1 too.
#[tokio::test]
async fn inflight_resent_with_dup_after_its_node_is_killed() {
    let Some(mut cluster) = pair().await else {
        return;
    };
    let (mut s, sent) = in_flight_on_a(&cluster, "dup-kill", "dk").await;
    // A change of the session writes its record now, with what is in flight.
    assert_eq!(
        s.subscribe("dk-more/#", QoS::AtLeastOnce).await,
        ReasonCode(1)
    );
    known_on(&cluster, B, "dup-kill", 2).await;
    // Sent after that record write, not acknowledged, and node A dies at once.
    publish_all(&cluster, B, "dk-p3", "dk/t", &batch("late", 3)).await;
    let late = unacknowledged(&cluster, &mut s, 3, "sent late on A").await;

    let node = cluster.nodes.remove(A);
    node.daemon.kill().await;
    drop(s);
    let away = batch("away", 3);
    publish_all(&cluster, 0, "dk-p2", "dk/t", &away).await;
    let (mut s, present) = resume(&cluster, 0, "dup-kill").await;
    assert!(present, "resumed on the surviving node{}", cluster.logs());
    let owed = Owed {
        sent: &sent,
        late: &late,
        away: &away,
        away_may_be_dup: true,
    };
    resent_then_new(&cluster, &mut s, owed).await;
    s.disconnect().await;
}

/// POSTs `body` to (or DELETEs) `path` on node `n`'s REST API with the master token;
/// returns the answer's `result`, failing on anything but 200.
async fn rest(cluster: &Cluster, n: usize, method: &str, path: &str, body: &str) -> String {
    let addr = cluster.nodes[n]
        .daemon
        .http
        .expect("the node's HTTP listener");
    let auth = format!("Authorization: FlespiToken {MASTER}");
    let r = http::request(addr, method, path, &[&auth], body).await;
    assert_eq!(
        r.status,
        200,
        "{method} {path}: {}{}",
        r.body,
        cluster.logs()
    );
    r.body
}

/// POSTs a QoS 1 subscription to `topic` for session `client_id` through node `n`'s REST API
/// and checks that the answer lists it, as a single node's does.
async fn rest_subscribe(cluster: &Cluster, n: usize, client_id: &str, topic: &str) {
    let path = format!("/mqtt/sessions/client_id={client_id}/subscriptions");
    let body = format!(r#"[{{"topic":"{topic}","qos":1}}]"#);
    let added = rest(cluster, n, "POST", &path, &body).await;
    assert!(added.contains(&format!(r#""topic":"{topic}""#)), "{added}");
    assert!(added.contains(r#""qos":1"#), "{added}");
}

/// REST on node B adds a subscription to a session connected to node A: messages published
/// on either node reach the client on node A; REST DELETE on node B removes it again, and
/// they stop. The answers are a single node's.
#[tokio::test]
async fn rest_changes_subscriptions_of_a_session_on_another_node() {
    let Some(cluster) = pair().await else {
        return;
    };
    let (mut s, _) = resume(&cluster, A, "rs-target").await;
    // A witness on node A that keeps the subscription throughout.
    let mut w = cluster
        .subscriber(
            A,
            ProtocolVersion::V5,
            "rs-witness",
            "rs/#",
            QoS::AtLeastOnce,
        )
        .await;
    known_on(&cluster, B, "rs-target", 0).await;

    rest_subscribe(&cluster, B, "rs-target", "rs/#").await;
    known_on(&cluster, B, "rs-target", 1).await;
    for (n, payload) in [(B, "from-b"), (A, "from-a")] {
        publish_all(&cluster, n, "rs-pub", "rs/x", &[payload.to_string()]).await;
        let m = cluster
            .recv(&mut s, "the subscription added on node B")
            .await;
        assert_eq!(&m.payload[..], payload.as_bytes());
        assert_eq!(m.qos, QoS::AtLeastOnce);
        let m = cluster.recv(&mut w, "the witness").await;
        assert_eq!(&m.payload[..], payload.as_bytes());
    }

    let removed = rest(
        &cluster,
        B,
        "DELETE",
        "/mqtt/sessions/client_id=rs-target/subscriptions/all",
        "",
    )
    .await;
    assert!(removed.contains(r#""topic":"rs/#""#), "{removed}");
    publish_all(&cluster, B, "rs-pub", "rs/x", &["after".to_string()]).await;
    // Node A routed it (its witness has it), and not to the session.
    let m = cluster.recv(&mut w, "the witness, after the DELETE").await;
    assert_eq!(&m.payload[..], b"after");
    cluster.quiet(&mut s, "after the DELETE on node B").await;
    known_on(&cluster, B, "rs-target", 0).await;
    s.disconnect().await;
    w.disconnect().await;
}

/// REST on node B adds a subscription to a session whose node was killed: the cluster's
/// record changes, and the session resumes with it.
#[tokio::test]
async fn rest_subscribes_a_session_whose_node_is_dead() {
    let Some(mut cluster) = pair().await else {
        return;
    };
    let (s, _) = resume(&cluster, A, "rs-orphan").await;
    known_on(&cluster, B, "rs-orphan", 0).await;
    let node = cluster.nodes.remove(A);
    node.daemon.kill().await;
    drop(s);

    rest_subscribe(&cluster, 0, "rs-orphan", "ro/#").await;
    known_on(&cluster, 0, "rs-orphan", 1).await;
    let (mut s, present) = resume(&cluster, 0, "rs-orphan").await;
    assert!(present, "resumed{}", cluster.logs());
    publish_all(&cluster, 0, "ro-pub", "ro/x", &["kept".to_string()]).await;
    let m = cluster
        .recv(&mut s, "the subscription added to the record")
        .await;
    assert_eq!(&m.payload[..], b"kept");
    s.disconnect().await;
}
