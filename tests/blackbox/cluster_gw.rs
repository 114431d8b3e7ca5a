//! Cluster mode (issue 17): the devices layer across nodes (tern-cluster `gw.rs`). Devices,
//! groups, channels, streams and webhooks made, changed or deleted over REST on one node are so
//! on another, and so is a device's log; device messages posted on one node are read on
//! another with their telemetry and retained topics, and their deletes reach it; an HTTP
//! channel takes messages on any node; a stream pushes, and a webhook fires for, what came in
//! through any node, once; two nodes creating devices at once never hand out the same id; a
//! node killed and started again, or started later, has what changed meanwhile; an external
//! MQTT channel runs on one node at a time.
//!
//! Every node has REST on its own port and the same master token (`support::cluster`).

use std::collections::HashSet;

use serde_json::{Value, json};

use tern_codec::*;

use crate::support::Client;
use crate::support::client::{Read, connect_packet};
use crate::support::cluster::{CROSS, MASTER, RestNode, rest_logs, until};
use crate::support::http;
use crate::support::mosquitto::Mosquitto;
use crate::support::nats::NatsServer;

/// Two REST nodes on one NATS server; `None` without `nats-server`.
async fn pair() -> Option<(NatsServer, RestNode, RestNode)> {
    let nats = NatsServer::start().await?;
    let a = RestNode::start(&nats, "gw-a").await;
    let b = RestNode::start(&nats, "gw-b").await;
    Some((nats, a, b))
}

/// Creates one item at `path` on `node`; its id.
async fn create(node: &RestNode, path: &str, item: Value) -> u64 {
    let v = node.rest("POST", path, &item.to_string()).await;
    v["result"][0]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an id from POST {path}: {v}"))
}

/// The items `GET path` answers on `node` (empty unless 200).
async fn items(node: &RestNode, path: &str) -> Vec<Value> {
    let (status, v) = node.call("GET", path, "").await;
    if status != 200 {
        return Vec::new();
    }
    v["result"].as_array().cloned().unwrap_or_default()
}

async fn device(node: &RestNode, ident: &str) -> u64 {
    create(
        node,
        "/gw/devices",
        json!({"name": ident, "device_type_id": 1, "configuration": {"ident": ident}}),
    )
    .await
}

/// Field `name` of device `id` on `node`.
async fn field(node: &RestNode, id: u64, name: &str) -> Option<Value> {
    items(node, &format!("/gw/devices/{id}"))
        .await
        .first()
        .map(|d| d[name].clone())
}

/// Channel `channel`'s `connections_count` on `node`.
async fn connections(node: &RestNode, channel: u64) -> Option<Value> {
    let path = format!("/gw/channels/{channel}?fields=connections_count");
    items(node, &path)
        .await
        .first()
        .map(|c| c["connections_count"].clone())
}

/// A v5 client of the master token's account on `node`.
async fn master_client(node: &RestNode, id: &str) -> Client {
    let mut c = connect_packet(ProtocolVersion::V5, id, true);
    c.username = Some(ByteString::from(MASTER));
    let (client, ack) = Client::connect_with(node.node.addr(), c).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "{ack:?}");
    client
}

/// Every entity made on A is on B with its fields; changed on B, A has the change; deleted on
/// B, A no longer has it.
#[tokio::test]
async fn devices_groups_channels_streams_and_webhooks_made_on_one_node_are_on_another() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let made = [
        ("/gw/devices", device(&a, "ent-1").await),
        (
            "/gw/groups",
            create(&a, "/gw/groups", json!({"name": "fleet"})).await,
        ),
        (
            "/gw/channels",
            create(
                &a,
                "/gw/channels",
                json!({"name": "in", "protocol_name": "http"}),
            )
            .await,
        ),
        (
            "/gw/streams",
            create(
                &a,
                "/gw/streams",
                json!({"name": "out", "protocol_name": "http",
                       "configuration": {"uri": "http://127.0.0.1:9/"}}),
            )
            .await,
        ),
        (
            "/platform/webhooks",
            create(
                &a,
                "/platform/webhooks",
                json!({"name": "hook", "triggers": [{"topic": "gw/test"}],
                       "configuration": {"type": "custom-server", "uri": "http://127.0.0.1:9/x"}}),
            )
            .await,
        ),
    ];
    for (path, id) in made {
        let on_a = items(&a, &format!("{path}/{id}")).await;
        assert_eq!(on_a.len(), 1, "{path}/{id} on a");
        until(&format!("{path}/{id} on b"), logs, || async {
            items(&b, &format!("{path}/{id}")).await.first() == on_a.first()
        })
        .await;
    }
    // The device's log (its `created` record, stored on A) is read on B.
    let (path, id) = made[0];
    let log_on_a = items(&a, &format!("/gw/devices/{id}/logs")).await;
    assert!(!log_on_a.is_empty(), "a device log on a");
    until("the device's log on b", logs, || async {
        items(&b, &format!("/gw/devices/{id}/logs")).await == log_on_a
    })
    .await;
    // A change on B reaches A.
    b.rest(
        "PATCH",
        &format!("{path}/{id}"),
        &json!({"name": "renamed on b"}).to_string(),
    )
    .await;
    until("the device renamed on b, seen on a", logs, || async {
        items(&a, &format!("{path}/{id}"))
            .await
            .first()
            .map(|d| d["name"].clone())
            == Some(json!("renamed on b"))
    })
    .await;
    // Deletes on B reach A.
    for (path, id) in made {
        b.rest("DELETE", &format!("{path}/{id}"), "").await;
    }
    for (path, id) in made {
        until(
            &format!("{path}/{id} deleted on b, gone on a"),
            logs,
            || async { items(&a, &format!("{path}/{id}")).await.is_empty() },
        )
        .await;
    }
}

/// Messages posted into a device on A are read on B, with B's telemetry taking their values;
/// deleted on B, they are gone on A too.
#[tokio::test]
async fn device_messages_posted_on_one_node_are_read_with_telemetry_on_another() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let id = device(&a, "msg-1").await;
    until("the device on b", logs, || async {
        !items(&b, &format!("/gw/devices/{id}")).await.is_empty()
    })
    .await;
    let batch: Vec<Value> = (1..=5)
        .map(|n| json!({"timestamp": 1_700_000_000 + n, "speed": n * 10, "n": n}))
        .collect();
    a.rest(
        "POST",
        &format!("/gw/devices/{id}/messages"),
        &Value::Array(batch).to_string(),
    )
    .await;
    let on_a = items(&a, &format!("/gw/devices/{id}/messages")).await;
    assert_eq!(on_a.len(), 5, "{on_a:?}");
    until("the 5 messages read on b", logs, || async {
        items(&b, &format!("/gw/devices/{id}/messages")).await == on_a
    })
    .await;
    let t = items(&b, &format!("/gw/devices/{id}/telemetry/speed")).await;
    assert_eq!(
        t[0]["telemetry"]["speed"]["value"],
        50,
        "b's telemetry has the last message's value: {t:?}{}",
        logs()
    );
    // B keeps the retained telemetry and state topics of the device too.
    let mut c = master_client(&b, "sub-b").await;
    c.subscribe(
        &format!("flespi/state/gw/devices/{id}/telemetry/speed"),
        QoS::AtMostOnce,
    )
    .await;
    let m = c.recv_publish().await;
    assert!(m.retain, "{m:?}");
    assert_eq!(&m.payload[..], b"50", "{m:?}");
    c.subscribe(
        &format!("flespi/state/gw/devices/{id}/name"),
        QoS::AtMostOnce,
    )
    .await;
    let m = c.recv_publish().await;
    assert_eq!(&m.payload[..], b"\"msg-1\"", "{m:?}");
    // Posted on B, read on A (both ways).
    b.rest(
        "POST",
        &format!("/gw/devices/{id}/messages"),
        &json!([{"timestamp": 1_700_000_100, "speed": 99}]).to_string(),
    )
    .await;
    until(
        "the message posted on b, read on a with its telemetry",
        logs,
        || async {
            items(&a, &format!("/gw/devices/{id}/telemetry/speed"))
                .await
                .first()
                .map(|t| t["telemetry"]["speed"]["value"].clone())
                == Some(json!(99))
        },
    )
    .await;
    until("the 6 messages on a", logs, || async {
        items(&a, &format!("/gw/devices/{id}/messages")).await.len() == 6
    })
    .await;
    // Deleted on B, gone on A.
    b.rest("DELETE", &format!("/gw/devices/{id}/messages"), "")
        .await;
    until("the messages deleted on b, gone on a", logs, || async {
        items(&a, &format!("/gw/devices/{id}/messages"))
            .await
            .is_empty()
    })
    .await;
}

/// An HTTP channel made on A takes messages posted to its route on B; the device they name
/// has them on A, and the channel's messages are read on either node.
#[tokio::test]
async fn an_http_channel_takes_messages_on_any_node() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let id = device(&a, "chan-1").await;
    let v = a
        .rest(
            "POST",
            "/gw/channels",
            &json!({"name": "in", "protocol_name": "http"}).to_string(),
        )
        .await;
    let channel = v["result"][0]["id"].as_u64().expect("a channel id");
    let uri = v["result"][0]["uri"]
        .as_str()
        .expect("the channel's uri")
        .to_string();
    let route = &uri[uri.find("/gw/channels/").expect("the ingest route")..];
    until("the channel and the device on b", logs, || async {
        !items(&b, &format!("/gw/channels/{channel}"))
            .await
            .is_empty()
            && !items(&b, &format!("/gw/devices/{id}")).await.is_empty()
    })
    .await;
    let r = http::request(
        b.http,
        "POST",
        route,
        &["Content-Type: application/json"],
        &json!([{"ident": "chan-1", "timestamp": 1_700_000_000, "temp": 21.5}]).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "ingest on b: {}", r.body);
    until("the channel's message in the device on a", logs, || async {
        items(&a, &format!("/gw/devices/{id}/messages"))
            .await
            .first()
            .map(|m| m["temp"].clone())
            == Some(json!(21.5))
    })
    .await;
}

/// Two nodes creating devices at the same time hand out different ids, and each lists all.
#[tokio::test]
async fn nodes_creating_devices_at_once_never_share_an_id() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    async fn make(n: &RestNode, tag: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        for i in 0..15 {
            ids.push(device(n, &format!("{tag}-{i}")).await);
        }
        ids
    }
    let (on_a, on_b) = tokio::join!(make(&a, "a"), make(&b, "b"));
    let all: HashSet<u64> = on_a.iter().chain(&on_b).copied().collect();
    assert_eq!(all.len(), 30, "ids handed out twice: {on_a:?} {on_b:?}");
    for node in [&a, &b] {
        until(
            &format!("all 30 devices on {}", node.node.name),
            logs,
            || async {
                let listed: HashSet<u64> = items(node, "/gw/devices/all")
                    .await
                    .iter()
                    .filter_map(|d| d["id"].as_u64())
                    .collect();
                listed == all
            },
        )
        .await;
    }
}

/// Node B killed (`kill -9`) while A makes a device, posts its messages and deletes another
/// device: started again, B has all of it; a node that joins later has the devices.
#[tokio::test]
async fn a_node_restarted_or_started_later_has_what_changed_meanwhile() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let gone = device(&a, "gone").await;
    until(
        "the first device on b",
        || rest_logs(&[&a, &b], &nats),
        || async { !items(&b, &format!("/gw/devices/{gone}")).await.is_empty() },
    )
    .await;
    // Let b write its position in the log (with its telemetry, once a second).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let b = {
        let RestNode { node, .. } = b;
        let crate::support::cluster::Node {
            name,
            daemon,
            _data: data,
        } = node;
        daemon.kill().await;
        let id = device(&a, "made-while-away").await;
        a.rest(
            "POST",
            &format!("/gw/devices/{id}/messages"),
            &json!([{"timestamp": 1_700_000_000, "n": 1}, {"timestamp": 1_700_000_001, "n": 2}])
                .to_string(),
        )
        .await;
        a.rest("DELETE", &format!("/gw/devices/{gone}"), "").await;
        (RestNode::respawn(name, data).await, id)
    };
    let (b, id) = b;
    let logs = || rest_logs(&[&a, &b], &nats);
    // The entities are loaded before REST answers.
    assert_eq!(
        items(&b, &format!("/gw/devices/{id}")).await.len(),
        1,
        "{}",
        logs()
    );
    assert!(
        items(&b, &format!("/gw/devices/{gone}")).await.is_empty(),
        "{}",
        logs()
    );
    until(
        "the messages posted while b was away, on b",
        logs,
        || async { items(&b, &format!("/gw/devices/{id}/messages")).await.len() == 2 },
    )
    .await;
    let c = RestNode::start(&nats, "gw-c").await;
    assert_eq!(
        items(&c, &format!("/gw/devices/{id}")).await.len(),
        1,
        "a node started later has the device:{}",
        rest_logs(&[&a, &b, &c], &nats)
    );
}

/// An external MQTT channel made on A runs its client on one node only: every message
/// published to the remote broker is taken in once (not once per node); killed, that node's
/// channel moves to the other, which takes in what is published then.
#[tokio::test]
async fn an_external_mqtt_channel_runs_on_one_node_and_moves_when_it_dies() {
    let Some(remote) = Mosquitto::start("allow_anonymous true").await else {
        return;
    };
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let id = create(
        &a,
        "/gw/devices",
        json!({"name": "ext", "device_type_id": 2, "configuration": {"ident": "e1"}}),
    )
    .await;
    let channel = create(
        &a,
        "/gw/channels",
        json!({"name": "remote", "protocol_id": 2, "configuration": {
            "broker": {"uri": format!("mqtt://127.0.0.1:{}", remote.port), "qos": 1},
            "topics": ["ext/+/data"], "ident_topic_level": 1}}),
    )
    .await;
    // One node's client connects; which one is the cluster's choice.
    // Each node's view of the others settles within a second or two of their start (a node
    // alone at first runs every channel); then exactly one node runs it, for good.
    let deadline = tokio::time::Instant::now() + CROSS;
    let mut seen = Vec::new();
    let a_owns = loop {
        let (on_a, on_b) = (
            connections(&a, channel).await,
            connections(&b, channel).await,
        );
        seen.push(match (on_a == Some(json!(1)), on_b == Some(json!(1))) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        });
        // The same single owner for the last 2.5 s.
        if seen.len() >= 10
            && seen[seen.len() - 10..].windows(2).all(|w| w[0] == w[1])
            && let Some(Some(a_owns)) = seen.last()
        {
            break *a_owns;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the channel's client not on exactly one node for good: {seen:?}{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let mut publisher = Client::connect(
        std::net::SocketAddr::from(([127, 0, 0, 1], remote.port)),
        ProtocolVersion::V311,
        "pub",
    )
    .await;
    for n in 0..20 {
        let payload = json!({"n": n}).to_string();
        publisher
            .publish("ext/e1/data", payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    for node in [&a, &b] {
        until(
            &format!("20 messages on {}", node.node.name),
            logs,
            || async {
                items(node, &format!("/gw/devices/{id}/messages"))
                    .await
                    .len()
                    == 20
            },
        )
        .await;
    }
    // Taken in once: still 20 a moment later on both.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for node in [&a, &b] {
        assert_eq!(
            items(node, &format!("/gw/devices/{id}/messages"))
                .await
                .len(),
            20,
            "every message once on {}:{}",
            node.node.name,
            logs()
        );
    }
    // The owner dies; the other node runs the channel from then on.
    let (dead, survivor) = if a_owns { (a, b) } else { (b, a) };
    dead.node.daemon.kill().await;
    let logs = || rest_logs(&[&survivor], &nats);
    until(
        "the channel's client connected on the survivor",
        logs,
        || async { connections(&survivor, channel).await == Some(json!(1)) },
    )
    .await;
    for n in 20..25 {
        let payload = json!({"n": n}).to_string();
        publisher
            .publish("ext/e1/data", payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    until(
        "the messages published after the move, on the survivor",
        logs,
        || async {
            items(&survivor, &format!("/gw/devices/{id}/messages"))
                .await
                .len()
                == 25
        },
    )
    .await;
}

/// A stream made on A takes the messages of its device whichever node they came in through:
/// each node pushes what came in through it, and the receiver gets every message once.
#[tokio::test]
async fn a_stream_pushes_messages_that_came_in_through_any_node() {
    use crate::gw_streams::{acknowledged, receiver};
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("received.jsonl");
    let port = crate::support::process::free_addr().port();
    let Some(_rx) = receiver(port, &out, "").await else {
        return;
    };
    let id = device(&a, "pushed").await;
    let stream = create(
        &a,
        "/gw/streams",
        json!({"name": "out", "protocol_name": "http",
               "configuration": {"uri": format!("http://127.0.0.1:{port}/post"), "timeout": 2}}),
    )
    .await;
    a.rest("POST", &format!("/gw/streams/{stream}/devices/{id}"), "")
        .await;
    until("the stream with its device on b", logs, || async {
        items(&b, &format!("/gw/streams/{stream}/devices/all"))
            .await
            .iter()
            .any(|d| d["id"] == json!(id))
    })
    .await;
    for (node, ns) in [(&a, 0..10u64), (&b, 10..20)] {
        let batch: Vec<Value> = ns.map(|n| json!({"n": n})).collect();
        node.rest(
            "POST",
            &format!("/gw/devices/{id}/messages"),
            &Value::Array(batch).to_string(),
        )
        .await;
    }
    until("20 messages acknowledged by the receiver", logs, || async {
        acknowledged(&out).len() >= 20
    })
    .await;
    let mut got = acknowledged(&out);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(acknowledged(&out).len(), 20, "each message once:{}", logs());
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<u64>>());
}

/// A webhook made on A fires once for each publication that matches it, on whichever node
/// the publication was made.
#[tokio::test]
async fn a_webhook_fires_once_per_publication_on_any_node() {
    use crate::webhooks::Receiver;
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let rx = Receiver::start(&[]).await;
    let hook = create(
        &a,
        "/platform/webhooks",
        json!({"name": "hook", "triggers": [{"topic": "hooks/+"}],
               "configuration": {"type": "custom-server", "method": "POST",
                                 "uri": rx.uri("/hook/%topics[1]%"), "body": "%payload%"}}),
    )
    .await;
    until("the webhook on b", logs, || async {
        !items(&b, &format!("/platform/webhooks/{hook}"))
            .await
            .is_empty()
    })
    .await;
    for (node, from) in [(&a, "a"), (&b, "b")] {
        let mut c = master_client(node, &format!("hook-pub-{from}")).await;
        for n in 0..5 {
            c.publish(
                &format!("hooks/{from}"),
                format!("{n}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
        }
    }
    rx.wait(10).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut got: Vec<(String, String)> = rx.got().into_iter().map(|g| (g.path, g.body)).collect();
    got.sort();
    let want: Vec<(String, String)> = ["a", "b"]
        .iter()
        .flat_map(|f| (0..5).map(move |n| (format!("/hook/{f}"), n.to_string())))
        .collect();
    assert_eq!(got, want, "each publication once:{}", logs());
}

/// A Teltonika tracker connected to node A: its device is `connected` on node B too, a
/// command sent over REST on B reaches it through A and B answers with its response, and the
/// result is kept on B; a command queued on B is sent by A and leaves B's queue; once the
/// tracker disconnects, B says so and refuses commands (code 2).
#[tokio::test]
async fn a_command_sent_on_one_node_reaches_a_tracker_connected_to_another() {
    use crate::teltonika::{respond, tracker};
    const IMEI: &str = "356307042441013";
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let v = a
        .rest(
            "POST",
            "/gw/channels",
            &json!({"name": "trackers", "protocol_name": "teltonika"}).to_string(),
        )
        .await;
    let port = v["result"][0]["configuration"]["port"]
        .as_u64()
        .expect("a port") as u16;
    let id = create(
        &a,
        "/gw/devices",
        json!({"name": "fmb", "device_type_id": 14, "configuration": {"ident": IMEI}}),
    )
    .await;
    until("the device on b", logs, || async {
        !items(&b, &format!("/gw/devices/{id}")).await.is_empty()
    })
    .await;
    let task = tokio::spawn(respond(tracker(port, IMEI).await, true));
    until("connected on b", logs, || async {
        field(&b, id, "connected").await == Some(json!(true))
    })
    .await;
    let getinfo = json!([{"name": "custom", "properties": {"text": "getinfo"}}]).to_string();
    let r = b
        .rest("POST", &format!("/gw/devices/{id}/commands"), &getinfo)
        .await;
    let item = &r["result"][0];
    assert_eq!(item["executed"], true, "{r}{}", logs());
    assert_eq!(item["response"], "RE:getinfo", "{r}");
    until("the command's result on b", logs, || async {
        items(&b, &format!("/gw/devices/{id}/commands-result"))
            .await
            .iter()
            .any(|r| r["response"] == "RE:getinfo")
    })
    .await;
    // Queued on B: the node the tracker is connected to sends it, and it leaves B's queue.
    let queued = b
        .rest(
            "POST",
            &format!("/gw/devices/{id}/commands-queue"),
            &json!([{"name": "custom", "properties": {"text": "getver"}}]).to_string(),
        )
        .await;
    let queued_id = queued["result"][0]["id"]
        .as_u64()
        .expect("a queued command id");
    until("the queued command's result on b", logs, || async {
        items(&b, &format!("/gw/devices/{id}/commands-result"))
            .await
            .iter()
            .any(|r| r["id"] == json!(queued_id) && r["response"] == "RE:getver")
    })
    .await;
    until("b's queue empty", logs, || async {
        let (status, v) = b
            .call("GET", &format!("/gw/devices/{id}/commands-queue"), "")
            .await;
        status == 200 && v["result"] == json!([])
    })
    .await;
    task.abort();
    until("disconnected on b", logs, || async {
        field(&b, id, "connected").await == Some(json!(false))
    })
    .await;
    let (status, v) = b
        .call("POST", &format!("/gw/devices/{id}/commands"), &getinfo)
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errors"][0]["code"], 2, "{v}");
}

/// Two nodes changing one device at the same moment end with the same document, round after
/// round: every node applies the devices log in its order, and skips another node's change
/// while its own change of the device is still on its way there.
#[tokio::test]
async fn concurrent_changes_of_one_device_converge_on_every_node() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let id = device(&a, "both").await;
    until("the device on b", logs, || async {
        !items(&b, &format!("/gw/devices/{id}")).await.is_empty()
    })
    .await;
    async fn rename(node: &RestNode, id: u64, name: String) {
        let body = json!({ "name": name }).to_string();
        node.rest("PATCH", &format!("/gw/devices/{id}"), &body)
            .await;
    }
    async fn name(node: &RestNode, id: u64) -> Option<Value> {
        items(node, &format!("/gw/devices/{id}"))
            .await
            .first()
            .map(|d| d["name"].clone())
    }
    for round in 0..15 {
        tokio::join!(
            rename(&a, id, format!("a-{round}")),
            rename(&b, id, format!("b-{round}"))
        );
        // Both nodes answer the same name, one of this round's, for a while.
        let mut same = 0;
        let deadline = tokio::time::Instant::now() + crate::support::cluster::CROSS;
        while same < 6 {
            let (on_a, on_b) = (name(&a, id).await, name(&b, id).await);
            let ours = [json!(format!("a-{round}")), json!(format!("b-{round}"))];
            same = if on_a.is_some()
                && on_a == on_b
                && on_a.as_ref().is_some_and(|n| ours.contains(n))
            {
                same + 1
            } else {
                0
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the nodes disagree: a {on_a:?}, b {on_b:?}{}",
                logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
    }
}

/// The flespi features on top of routing, across nodes: a `$filter` subscription on B gets
/// only the matching messages published on A; a session event of a client connecting to A
/// reaches a subscriber on B; REST over MQTT on B answers with what was made over REST on A.
#[tokio::test]
async fn filter_session_events_and_rest_over_mqtt_across_nodes() {
    let Some((nats, a, b)) = pair().await else {
        return;
    };
    let logs = || rest_logs(&[&a, &b], &nats);
    let mut watcher = master_client(&b, "watch-b").await;
    let filter = "$filter/payload=speed%3E60/cars/+";
    assert_eq!(
        watcher.subscribe(filter, QoS::AtMostOnce).await,
        ReasonCode::GRANTED_QOS_0
    );
    assert_eq!(
        watcher
            .subscribe("flespi/log/mqtt/sessions/+/connected", QoS::AtMostOnce)
            .await,
        ReasonCode::GRANTED_QOS_0
    );
    let mut publisher = master_client(&a, "pub-a").await;
    // Until B's interest reached NATS: a matching message comes through.
    let deadline = tokio::time::Instant::now() + crate::support::cluster::CROSS;
    let mut events = 0;
    loop {
        publisher
            .publish("cars/probe", br#"{"speed": 99}"#, QoS::AtMostOnce, false)
            .await;
        match watcher.read(std::time::Duration::from_millis(100)).await {
            Read::Packet(Packet::Publish(m)) if &m.topic[..] == "cars/probe" => break,
            Read::Packet(Packet::Publish(m)) if m.topic.ends_with("/connected") => events += 1,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "nothing reached b:{}",
                logs()
            ),
        }
    }
    publisher
        .publish("cars/1", br#"{"speed": 30}"#, QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish("cars/2", br#"{"speed": 75}"#, QoS::AtLeastOnce, false)
        .await;
    let _late = master_client(&a, "late-a").await;
    // The filter passed cars/2 only; the connect of late-a on A is an event on B.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + crate::support::cluster::CROSS;
    while !(got.contains(&"cars/2".to_string()) && events > 0) {
        match watcher.read(std::time::Duration::from_millis(200)).await {
            Read::Packet(Packet::Publish(m)) if m.topic.ends_with("/connected") => events += 1,
            Read::Packet(Packet::Publish(m)) => got.push(m.topic.to_string()),
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "b got {got:?} and {events} session events:{}",
                logs()
            ),
        }
    }
    assert!(
        !got.contains(&"cars/1".to_string()),
        "the filter holds: {got:?}"
    );
    // REST over MQTT on B sees a device made on A.
    let id = device(&a, "rest-mqtt").await;
    let mut requester = master_client(&b, "rest-b").await;
    requester.subscribe("replies/#", QoS::AtMostOnce).await;
    let deadline = tokio::time::Instant::now() + crate::support::cluster::CROSS;
    loop {
        let request = tern_codec::Publish {
            properties: PublishProperties {
                response_topic: Some(ByteString::from("replies/dev")),
                ..Default::default()
            },
            ..crate::support::client::publish_packet(
                &format!("flespi/rest/get/gw/devices/{id}?fields=name"),
                b"",
                QoS::AtMostOnce,
                false,
                None,
            )
        };
        requester.send(Packet::Publish(request)).await;
        let r = requester.recv_publish().await;
        let v: Value = serde_json::from_slice(&r.payload).expect("a JSON answer");
        if v["result"] == json!([{"name": "rest-mqtt"}]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "REST over MQTT on b: {v}{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
