//! Cluster mode (issue 17): accounts and tokens changed over REST on one node are in force on
//! every node (the KV bucket `tern_cfg`). A token created on one node opens a CONNECT on
//! another; deleted, it ends the connections made with it everywhere and is refused everywhere;
//! its ACL changed on one node restricts its clients on the others; a sub-account created on
//! one node is listed by the others, and deleted, its clients are closed everywhere; a node
//! started later, or restarted after changes, has them all before it lets anyone in; changes
//! made while NATS is down arrive once it is back; two nodes creating tokens at the same time
//! never hand out the same id.
//!
//! Every node has REST on its own port and the same configured master token; the harness is
//! `support::cluster`.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tern_codec::*;

use crate::support::Client;
use crate::support::client::{Read, connect_packet};
use crate::support::cluster::{CROSS, MASTER, Node, RestNode, rest_logs as logs, until};
use crate::support::http;
use crate::support::nats::NatsServer;

impl RestNode {
    /// Creates a token (`body` as POST takes it); its id and key.
    async fn new_token(&self, body: Value) -> (u64, String) {
        let v = self
            .rest("POST", "/platform/tokens", &body.to_string())
            .await;
        let t = &v["result"][0];
        let id = t["id"].as_u64().expect("a token id");
        let key = t["key"].as_str().expect("a token key").to_string();
        (id, key)
    }

    /// Creates a sub-account named `name`; its id.
    async fn new_subaccount(&self, name: &str) -> u64 {
        let body = json!({ "name": name }).to_string();
        let v = self.rest("POST", "/platform/subaccounts", &body).await;
        v["result"][0]["id"].as_u64().expect("the new account's id")
    }

    /// The ids of the sub-accounts the master token sees.
    async fn subaccounts(&self) -> Vec<u64> {
        let v = self.rest("GET", "/platform/subaccounts/all", "").await;
        ids(&v)
    }

    /// The `tern_gw_devices` gauge of the node.
    async fn devices(&self) -> u64 {
        let m = http::get(self.http, "/metrics", &[]).await;
        m.body
            .lines()
            .find_map(|l| l.strip_prefix("tern_gw_devices "))
            .and_then(|v| v.trim().parse().ok())
            .expect("tern_gw_devices in /metrics")
    }

    /// The ids of the tokens the master token sees.
    async fn tokens(&self) -> Vec<u64> {
        let v = self.rest("GET", "/platform/tokens/all", "").await;
        ids(&v)
    }
}

fn ids(v: &Value) -> Vec<u64> {
    v["result"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Two nodes, `a` and `b`, on one NATS server; `None` without `nats-server`.
async fn pair() -> Option<(NatsServer, RestNode, RestNode)> {
    let nats = NatsServer::start().await?;
    let a = RestNode::start(&nats, "cfg-a").await;
    let b = RestNode::start(&nats, "cfg-b").await;
    Some((nats, a, b))
}

/// A CONNECT (v5) with `key` as the username: the client and the CONNACK code.
async fn connect_key(node: &RestNode, id: &str, key: &str) -> (Client, ReasonCode) {
    let mut c = connect_packet(ProtocolVersion::V5, id, true);
    c.username = Some(ByteString::from(key));
    let (client, ack) = Client::connect_with(node.node.addr(), c).await;
    (client, ack.code)
}

/// Connects with `key` until the node accepts it (the token reached it); fails after
/// [`CROSS`]. Attempts are spaced so that the node's limit on failed logins stays far away.
async fn connect_when_known(
    node: &RestNode,
    id: &str,
    key: &str,
    all: &[&RestNode],
    nats: &NatsServer,
) -> Client {
    let deadline = tokio::time::Instant::now() + CROSS;
    loop {
        let (c, code) = connect_key(node, id, key).await;
        if code == ReasonCode::SUCCESS {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} still refuses the token ({code:?}) after {CROSS:?}:{}",
            node.node.name,
            logs(all, nats)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads until the node closes the connection; the DISCONNECT reason it sent. Fails unless
/// that happens within [`CROSS`].
async fn closed_within(c: &mut Client, what: &str, logs: impl Fn() -> String) -> ReasonCode {
    let deadline = tokio::time::Instant::now() + CROSS;
    let mut reason = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.read(left).await {
            Read::Closed => return reason.expect("a DISCONNECT before the close"),
            Read::Packet(Packet::Disconnect(d)) => reason = Some(d.reason),
            Read::Packet(_) => {}
            Read::Timeout => panic!("{what}: still connected after {CROSS:?}:{}", logs()),
        }
    }
}

/// A token created over REST on node A lets a client in on node B, which publishes and
/// subscribes there with it.
#[tokio::test]
async fn a_token_made_on_one_node_connects_on_another() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let (_, key) = a.new_token(json!({"info": "made on a"})).await;
    let mut c = connect_when_known(&b, "on-b", &key, &[&a, &b], &nats).await;
    assert_eq!(
        c.subscribe("cfg/made/#", QoS::AtLeastOnce).await,
        ReasonCode::GRANTED_QOS_1
    );
    c.publish("cfg/made/x", b"hello", QoS::AtMostOnce, false)
        .await;
    let m = loop {
        match c.read(CROSS).await {
            Read::Packet(Packet::Publish(m)) if !m.topic.starts_with("flespi/") => break m,
            Read::Packet(Packet::Publish(m)) => c.ack(&m).await,
            other => panic!("expected its own message back, got {other:?}"),
        }
    };
    assert_eq!(m.payload, Bytes::from_static(b"hello"));
}

/// A token deleted on node A closes the connection made with it on node B (0x87), and node B
/// refuses it from then on.
#[tokio::test]
async fn a_token_deleted_on_one_node_disconnects_and_is_refused_on_another() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let (id, key) = a.new_token(json!({"info": "to delete"})).await;
    let mut c = connect_when_known(&b, "doomed", &key, &[&a, &b], &nats).await;
    a.rest("DELETE", &format!("/platform/tokens/{id}"), "")
        .await;
    let reason = closed_within(&mut c, "the client of the deleted token on b", || {
        logs(&[&a, &b], &nats)
    })
    .await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    let (_, code) = connect_key(&b, "doomed-again", &key).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "refused on b");
    let (_, code) = connect_key(&a, "doomed-on-a", &key).await;
    assert_eq!(code, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "refused on a");
}

/// An ACL token narrowed on node A: its client on node B is closed (0x87, as on the node where
/// the change was made), and reconnected there it has only the rights left.
#[tokio::test]
async fn an_acl_narrowed_on_one_node_restricts_its_client_on_another() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let entry =
        |topic: &str| json!({"uri": "mqtt", "topic": topic, "actions": ["publish", "subscribe"]});
    let (id, key) = a
        .new_token(json!({
            "info": "acl",
            "access": {"type": 2, "acl": [entry("acl/a/#"), entry("acl/b/#")]}
        }))
        .await;
    let mut c = connect_when_known(&b, "acl-client", &key, &[&a, &b], &nats).await;
    assert_eq!(
        c.subscribe("acl/b/#", QoS::AtLeastOnce).await,
        ReasonCode::GRANTED_QOS_1
    );
    let patch = json!({"access": {"type": 2, "acl": [entry("acl/a/#")]}});
    a.rest(
        "PATCH",
        &format!("/platform/tokens/{id}"),
        &patch.to_string(),
    )
    .await;
    let reason = closed_within(&mut c, "the client of the narrowed token on b", || {
        logs(&[&a, &b], &nats)
    })
    .await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    let (mut c, code) = connect_key(&b, "acl-client", &key).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    assert_eq!(
        c.subscribe("acl/b/#", QoS::AtLeastOnce).await,
        ReasonCode::NOT_AUTHORIZED,
        "acl/b/# was taken away"
    );
    assert_eq!(
        c.subscribe("acl/a/#", QoS::AtLeastOnce).await,
        ReasonCode::GRANTED_QOS_1
    );
}

/// A sub-account created on node A is listed on node B, and a token of it works there;
/// deleted on node A, it is gone from node B, its client there is closed and the device made in
/// it on node B goes with it.
#[tokio::test]
async fn a_subaccount_made_on_one_node_is_listed_and_deleted_on_another() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let cid = a.new_subaccount("sub-on-a").await;
    let all = || logs(&[&a, &b], &nats);
    until("the sub-account listed on b", all, || async {
        b.subaccounts().await.contains(&cid)
    })
    .await;
    let (_, key) = a.new_token(json!({"info": "sub", "cid": cid})).await;
    let mut c = connect_when_known(&b, "sub-client", &key, &[&a, &b], &nats).await;
    let device = json!({"name": "truck", "device_type_id": 1, "configuration": {"ident": "35"}});
    b.rest_in(Some(cid), "POST", "/gw/devices", &device.to_string())
        .await;
    assert_eq!(b.devices().await, 1);

    a.rest("DELETE", &format!("/platform/subaccounts/{cid}"), "")
        .await;
    closed_within(&mut c, "the sub-account's client on b", all).await;
    until("the device gone from b", all, || async {
        b.devices().await == 0
    })
    .await;
    assert!(!b.subaccounts().await.contains(&cid), "gone from b");
    let (_, code) = connect_key(&b, "sub-client", &key).await;
    assert_ne!(code, ReasonCode::SUCCESS, "its token went with it");
}

/// A node started after accounts and tokens were made elsewhere has them before it accepts
/// its first connection: no waiting.
#[tokio::test]
async fn a_node_started_later_has_what_was_made_before() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let (token_id, key) = a.new_token(json!({"info": "early"})).await;
    let cid = a.new_subaccount("early-sub").await;
    // Node B has them: they are in the bucket.
    let all = || logs(&[&a, &b], &nats);
    until("the sub-account listed on b", all, || async {
        b.subaccounts().await.contains(&cid)
    })
    .await;

    let c = RestNode::start(&nats, "cfg-c").await;
    let (_, code) = connect_key(&c, "late", &key).await;
    assert_eq!(
        code,
        ReasonCode::SUCCESS,
        "the token works at once on the new node:{}",
        logs(&[&a, &b, &c], &nats)
    );
    assert!(c.subaccounts().await.contains(&cid));
    assert!(c.tokens().await.contains(&token_id));
    // Its own new token gets an id of its own, and works on the first node.
    let (own_id, own_key) = c.new_token(json!({"info": "made on c"})).await;
    assert_ne!(own_id, token_id);
    connect_when_known(&a, "from-c", &own_key, &[&a, &b, &c], &nats).await;
}

/// Two nodes creating tokens at the same time hand out different ids, and each node ends with
/// every token.
#[tokio::test]
async fn nodes_creating_tokens_at_once_never_share_an_id() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    const EACH: usize = 10;
    async fn make(n: &RestNode, tag: &str) -> Vec<u64> {
        let body: Vec<Value> = (0..EACH)
            .map(|i| json!({"info": format!("{tag}{i}")}))
            .collect();
        let v = n
            .rest("POST", "/platform/tokens", &Value::from(body).to_string())
            .await;
        ids(&v)
    }
    let (from_a, from_b) = tokio::join!(make(&a, "a"), make(&b, "b"));
    assert_eq!((from_a.len(), from_b.len()), (EACH, EACH));
    let mut all: Vec<u64> = from_a.iter().chain(&from_b).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2 * EACH, "distinct ids: {from_a:?} {from_b:?}");
    for n in [&a, &b] {
        until(
            &format!("every token on {}", n.node.name),
            || logs(&[&a, &b], &nats),
            || async {
                let have = n.tokens().await;
                all.iter().all(|id| have.contains(id))
            },
        )
        .await;
    }
}

/// A sub-account disabled on node A closes its client on node B (0x87) and node B refuses its
/// token then (0x8A, banned); a quota lowered on node A holds on node B. Node B counts what it
/// applied.
#[tokio::test]
async fn an_account_disabled_or_limited_on_one_node_is_so_on_another() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let all = || logs(&[&a, &b], &nats);
    let cid = a.new_subaccount("limited").await;
    let (_, key) = a.new_token(json!({"info": "limited", "cid": cid})).await;
    let mut c = connect_when_known(&b, "limited-1", &key, &[&a, &b], &nats).await;

    a.rest(
        "PATCH",
        &format!("/platform/subaccounts/{cid}"),
        r#"{"enabled":false}"#,
    )
    .await;
    let reason = closed_within(&mut c, "the disabled account's client on b", all).await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    let (_, code) = connect_key(&b, "limited-1", &key).await;
    assert_eq!(code, ReasonCode::BANNED);

    // Enabled again, with room for one session.
    a.rest(
        "PATCH",
        &format!("/platform/subaccounts/{cid}"),
        r#"{"enabled":true,"limits":{"mqtt_sessions":1}}"#,
    )
    .await;
    let _first = connect_when_known(&b, "limited-1", &key, &[&a, &b], &nats).await;
    let (_, code) = connect_key(&b, "limited-2", &key).await;
    assert_eq!(
        code,
        ReasonCode::QUOTA_EXCEEDED,
        "one session at most:{}",
        all()
    );

    let m = http::get(b.http, "/metrics", &[]).await;
    let applied = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("tern_cluster_cfg_applied_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(applied >= 4, "b applied a's changes: {}", m.body);
    assert!(
        m.body
            .contains("tern_cluster_dropped_total{queue=\"cfg\"} 0"),
        "{}",
        m.body
    );
}

/// A node down while tokens are deleted and created elsewhere has the changes as soon as it is
/// back, although its own store still had the deleted token.
#[tokio::test]
async fn a_node_restarted_has_what_changed_while_it_was_down() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let (gone_id, gone_key) = a
        .new_token(json!({"info": "deleted while b is down"}))
        .await;
    connect_when_known(&b, "before", &gone_key, &[&a, &b], &nats).await;

    let RestNode {
        node: Node {
            name,
            daemon,
            _data: data,
        },
        ..
    } = b;
    daemon.kill().await;
    a.rest("DELETE", &format!("/platform/tokens/{gone_id}"), "")
        .await;
    let (_, new_key) = a.new_token(json!({"info": "made while b is down"})).await;

    let b = RestNode::respawn(name, data).await;
    let (_, code) = connect_key(&b, "after", &gone_key).await;
    assert_eq!(
        code,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        "the deleted token is refused at once:{}",
        logs(&[&a, &b], &nats)
    );
    let (_, code) = connect_key(&b, "after-new", &new_key).await;
    assert_eq!(code, ReasonCode::SUCCESS, "the new token works at once");
    assert!(!b.tokens().await.contains(&gone_id));
}

/// Changes made on node A while NATS is down reach node B once NATS is back: a token made then
/// connects on node B, and a token deleted then closes its client on node B.
#[tokio::test]
async fn changes_made_while_nats_is_down_arrive_when_it_is_back() {
    let Some((mut nats, a, b)) = pair().await else {
        return;
    };
    let (old_id, old_key) = a
        .new_token(json!({"info": "deleted during the outage"}))
        .await;
    let mut c = connect_when_known(&b, "outage", &old_key, &[&a, &b], &nats).await;

    nats.kill();
    a.rest("DELETE", &format!("/platform/tokens/{old_id}"), "")
        .await;
    let (_, new_key) = a.new_token(json!({"info": "made during the outage"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await;

    // Back: the writes waited for NATS, and node B's watch resumes.
    let reason = closed_within(&mut c, "the deleted token's client on b", || {
        logs(&[&a, &b], &nats)
    })
    .await;
    assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
    connect_when_known(&b, "outage-new", &new_key, &[&a, &b], &nats).await;
}

/// A parent account's subscriber on node B gets the QoS 0 messages a sub-account publishes on
/// node A (a parent sees its children's traffic): node B's interest covers the accounts below
/// the ones its subscribers are in, a sub-account made after the subscription included.
#[tokio::test]
async fn a_parents_subscriber_gets_qos0_of_a_sub_account_made_later_on_another_node() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let (mut parent, code) = connect_key(&b, "parent", MASTER).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    assert_eq!(
        parent.subscribe("kids/#", QoS::AtMostOnce).await,
        ReasonCode::SUCCESS
    );
    let kid = a.new_subaccount("kid").await;
    let v = a
        .rest_in(
            Some(kid),
            "POST",
            "/platform/tokens",
            &json!({"info": "kid"}).to_string(),
        )
        .await;
    let key = v["result"][0]["key"]
        .as_str()
        .expect("a token key")
        .to_string();
    let mut child = connect_when_known(&a, "child", &key, &[&a, &b], &nats).await;
    // QoS 0 until one arrives (the interest and the new account reach node B meanwhile).
    let deadline = tokio::time::Instant::now() + CROSS;
    loop {
        child
            .publish("kids/x", b"from a kid", QoS::AtMostOnce, false)
            .await;
        match parent.read(Duration::from_millis(100)).await {
            Read::Packet(Packet::Publish(m)) if m.topic == "kids/x" => {
                assert_eq!(&m.payload[..], b"from a kid");
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "the parent on b never got the kid's QoS 0 from a:{}",
                logs(&[&a, &b], &nats)
            ),
        }
    }
}
