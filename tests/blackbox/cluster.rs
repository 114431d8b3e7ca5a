//! Cluster mode (issue 17): tern nodes (real processes) sharing one NATS server. A PUBLISH
//! accepted on one node reaches the matching subscribers of every other node at their own
//! granted QoS (QoS 0 on core NATS; QoS 1/2 through the JetStream shard streams, in order within
//! a topic); retained messages are replicated to every node through a JetStream KV bucket,
//! deletions too, and a node started later sees them; no node delivers a message twice to one
//! subscriber; the topic, the MQTT 5 properties and the broker's `cid`/`timestamp` stamps of the
//! original publish survive the hop; after a NATS restart the nodes deliver across again.
//!
//! The harness (nodes, probes) is `support::cluster`.

use std::time::Duration;

use tern_codec::*;

use crate::support::Client;
use crate::support::client::{publish_packet, user_property};
use crate::support::cluster::*;
use crate::support::http;
use crate::support::nats::NatsServer;

/// The harness itself: the NATS server answers `/healthz` and runs JetStream in its own store
/// directory, and accepts NATS clients.
#[tokio::test]
async fn nats_server_fixture_runs_jetstream_on_loopback() {
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    assert!(nats.url().starts_with("nats://127.0.0.1:"));
    assert!(nats.healthy().await);
    let jsz = http::get(nats.monitor, "/jsz", &[]).await;
    assert_eq!(jsz.status, 200, "{jsz:?}");
    let store = nats.store_dir();
    assert!(
        jsz.body.contains(&*store.to_string_lossy()),
        "JetStream on, in {}: {}",
        store.display(),
        jsz.body
    );
    // A client gets the server's INFO first.
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(nats.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(CROSS, s.read(&mut buf))
        .await
        .expect("INFO in time")
        .unwrap();
    let info = String::from_utf8_lossy(&buf[..n]);
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(info.contains("\"jetstream\":true"), "{info}");
}

/// The harness again: a restart keeps the ports and the store directory.
#[tokio::test]
async fn nats_server_fixture_restarts_on_the_same_port() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let url = nats.url();
    nats.kill();
    assert!(tokio::net::TcpStream::connect(nats.addr).await.is_err());
    nats.restart().await;
    assert_eq!(nats.url(), url);
    assert!(nats.healthy().await);
}

/// QoS 0 and QoS 1 both ways between two nodes, to 3.1.1 and 5.0 subscribers, each at the
/// minimum of the published QoS and its granted QoS; the publisher gets its PUBACK.
#[tokio::test]
async fn qos0_and_qos1_cross_node() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    for (from, to) in [(1, 0), (0, 1)] {
        let tag = format!("{from}to{to}");
        let (v3, v5, q1) = (ProtocolVersion::V311, ProtocolVersion::V5, QoS::AtLeastOnce);
        let mut s3 = cl
            .subscriber(to, v3, &format!("s3-{tag}"), "cl/#", q1)
            .await;
        let mut s5 = cl
            .subscriber(to, v5, &format!("s5-{tag}"), "cl/#", q1)
            .await;
        let mut s0 = cl
            .subscriber(to, v5, &format!("s0-{tag}"), "cl/+", QoS::AtMostOnce)
            .await;
        cl.ready(
            from,
            &format!("cl/{PROBE}"),
            &mut [&mut s3, &mut s5, &mut s0],
        )
        .await;

        let mut p = cl
            .client(from, ProtocolVersion::V311, &format!("p-{tag}"))
            .await;
        p.publish("cl/x", b"zero", QoS::AtMostOnce, false).await;
        // Waits for the PUBACK.
        p.publish("cl/x", b"one", QoS::AtLeastOnce, false).await;

        for (s, granted, name) in [
            (&mut s3, QoS::AtLeastOnce, "3.1.1 QoS 1"),
            (&mut s5, QoS::AtLeastOnce, "5.0 QoS 1"),
            (&mut s0, QoS::AtMostOnce, "5.0 QoS 0"),
        ] {
            let mut got = Vec::new();
            for _ in 0..2 {
                let m = cl.recv(s, &format!("{tag} {name}")).await;
                assert_eq!(m.topic, "cl/x", "{tag} {name}");
                assert!(!m.retain && !m.dup, "{tag} {name}: {m:?}");
                got.push((m.payload.to_vec(), m.qos));
            }
            // Both paths may not keep the order between QoS 0 and QoS 1.
            got.sort();
            assert_eq!(
                got,
                vec![
                    (b"one".to_vec(), granted.min(QoS::AtLeastOnce)),
                    (b"zero".to_vec(), QoS::AtMostOnce),
                ],
                "{tag} {name}"
            );
            cl.quiet(s, &format!("{tag} {name}")).await;
        }
    }
}

/// A retained message set on one node is returned to a later SUBSCRIBE on another; an empty
/// retained publish deletes it everywhere; a node started afterwards sees the current set.
#[tokio::test]
async fn retained_replicated_and_deleted() {
    let Some(mut cl) = Cluster::pair().await else {
        return;
    };
    let mut p = cl.client(B, ProtocolVersion::V311, "ret-pub").await;
    p.publish("rt/k", b"v1", QoS::AtLeastOnce, true).await;

    let got = cl
        .retained_until(A, "rt/#", "retained from B on A", |g| !g.is_empty())
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].topic, "rt/k");
    assert_eq!(&got[0].payload[..], b"v1");
    assert!(got[0].retain, "the retain flag is set: {:?}", got[0]);

    // An empty retained payload deletes it, on A too.
    p.publish("rt/k", b"", QoS::AtLeastOnce, true).await;
    cl.retained_until(A, "rt/#", "deletion from B on A", |g| g.is_empty())
        .await;

    // A second retained message; a third node started after it (and after the deletion)
    // gets exactly that one.
    p.publish("rt/k2", b"v2", QoS::AtLeastOnce, true).await;
    cl.retained_until(A, "rt/#", "second retained on A", |g| !g.is_empty())
        .await;
    let c = cl.add("n3").await;
    let got = cl
        .retained_until(c, "rt/#", "retained on a node started later", |g| {
            !g.is_empty()
        })
        .await;
    let got: Vec<_> = got
        .iter()
        .map(|m| (m.topic.to_string(), m.payload.to_vec(), m.retain))
        .collect();
    assert_eq!(got, vec![("rt/k2".to_string(), b"v2".to_vec(), true)]);
}

/// A subscriber on each of two nodes, 100 QoS 1 messages published on one of them: each
/// subscriber gets each message exactly once, in order (no echo of a node's own publications
/// back through NATS).
#[tokio::test]
async fn no_echo_no_duplicates() {
    const N: u32 = 100;
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    let q1 = QoS::AtLeastOnce;
    let mut sa = cl
        .subscriber(A, ProtocolVersion::V5, "seq-sa", "seq/#", q1)
        .await;
    let mut sb = cl
        .subscriber(B, ProtocolVersion::V311, "seq-sb", "seq/#", q1)
        .await;
    cl.ready(A, &format!("seq/{PROBE}"), &mut [&mut sa, &mut sb])
        .await;

    let mut p = cl.client(A, ProtocolVersion::V311, "seq-pub").await;
    for i in 0..N {
        p.publish("seq/n", i.to_string().as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    for (s, name) in [(&mut sa, "same node"), (&mut sb, "other node")] {
        for i in 0..N {
            let m = cl.recv(s, &format!("{name}: message {i}")).await;
            assert_eq!(m.topic, "seq/n");
            assert_eq!(
                String::from_utf8_lossy(&m.payload),
                i.to_string(),
                "{name}: each message once, in order"
            );
            assert_eq!(m.qos, QoS::AtLeastOnce, "{name}");
        }
    }
    cl.quiet(&mut sa, "same node after 100").await;
    cl.quiet(&mut sb, "other node after 100").await;
}

/// Topics whose bytes the subject encoding escapes arrive on the other node unchanged.
#[tokio::test]
async fn topics_that_need_escaping() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    let mut s = cl
        .subscriber(A, ProtocolVersion::V5, "esc-sub", "#", QoS::AtLeastOnce)
        .await;
    cl.ready(B, &format!("esc/{PROBE}"), &mut [&mut s]).await;

    let topics = [
        "a b/c d",
        "spBv1.0/x.y",
        "st*r/*",
        "gt>/>",
        "eq=/=2E/=",
        "тест/ü",
        "/a//b",
        "trailing/",
        "/",
        "tab\there",
        "comma,/semi;colon",
        "A-Z_0-9",
    ];
    let mut p = cl.client(B, ProtocolVersion::V5, "esc-pub").await;
    for (i, t) in topics.iter().enumerate() {
        p.publish(t, i.to_string().as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    // QoS 1 keeps the order within a topic only (each topic's shard stream), so compare sets.
    let mut want: Vec<(String, String)> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i.to_string()))
        .collect();
    let mut got = Vec::new();
    for t in &topics {
        let m = cl
            .recv(
                &mut s,
                &format!("{} of {}, say {t:?}", got.len() + 1, topics.len()),
            )
            .await;
        got.push((
            m.topic.to_string(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        ));
    }
    want.sort();
    got.sort();
    assert_eq!(got, want);
    cl.quiet(&mut s, "after the escaped topics").await;
}

/// The MQTT 5 properties of a PUBLISH survive the hop, and the `cid` and `timestamp` stamps on
/// the other node are those a subscriber on the publishing node gets.
#[tokio::test]
async fn v5_properties_cross_node() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    let (v5, q1) = (ProtocolVersion::V5, QoS::AtLeastOnce);
    let mut remote = cl.subscriber(A, v5, "pr-remote", "pr/#", q1).await;
    let mut local = cl.subscriber(B, v5, "pr-local", "pr/#", q1).await;
    cl.ready(B, &format!("pr/{PROBE}"), &mut [&mut remote, &mut local])
        .await;

    let mut p = cl.client(B, ProtocolVersion::V5, "pr-pub").await;
    let mut pkt = publish_packet("pr/t", "ünï".as_bytes(), QoS::AtLeastOnce, false, Some(7));
    pkt.properties.user_properties = vec![
        (ByteString::from_static("b"), ByteString::from_static("2")),
        (ByteString::from_static("a"), ByteString::from_static("1")),
        (ByteString::from_static("b"), ByteString::from_static("3")),
    ];
    pkt.properties.content_type = Some(ByteString::from_static("text/plain"));
    pkt.properties.response_topic = Some(ByteString::from_static("pr/reply"));
    pkt.properties.correlation_data = Some(bytes::Bytes::from_static(b"\x00corr\xff"));
    pkt.properties.payload_format_indicator = Some(1);
    pkt.properties.message_expiry_interval = Some(3600);
    p.send(Packet::Publish(pkt)).await;
    p.finish_publish(QoS::AtLeastOnce, Some(7)).await;

    let l = cl.recv(&mut local, "on the publishing node").await;
    let r = cl.recv(&mut remote, "on the other node").await;
    assert_eq!(r.topic, "pr/t");
    assert_eq!(&r.payload[..], "ünï".as_bytes());
    let props = &r.properties;
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.response_topic.as_deref(), Some("pr/reply"));
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(&b"\x00corr\xff"[..])
    );
    assert_eq!(props.payload_format_indicator, Some(1));
    let expiry = props
        .message_expiry_interval
        .expect("the message expiry interval survives");
    assert!(
        (3000..=3600).contains(&expiry),
        "the remaining lifetime: {expiry}"
    );
    let user = &props.user_properties;
    assert_eq!(
        user.iter()
            .take(3)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["b=2", "a=1", "b=3"],
        "the publisher's user properties, in order: {user:?}"
    );
    let keys: Vec<&str> = user.iter().map(|(k, _)| &**k).collect();
    assert_eq!(keys, ["b", "a", "b", "cid", "timestamp"], "stamped once");
    let cid = user_property(&props.user_properties, "cid");
    assert_eq!(cid, Some(&*ANON_CID.to_string()), "the publisher's account");
    let ts = user_property(&props.user_properties, "timestamp");
    assert_eq!(
        ts,
        user_property(&l.properties.user_properties, "timestamp"),
        "the original publish's arrival time, as on the publishing node"
    );
    assert_eq!(cid, user_property(&l.properties.user_properties, "cid"));
    // The local delivery carries the same properties.
    assert_eq!(l.properties.content_type, r.properties.content_type);
    assert_eq!(l.properties.correlation_data, r.properties.correlation_data);
}

/// The NATS server is killed and a new one starts on the same port and store directory: the
/// nodes reconnect and cross-node delivery works again.
#[tokio::test]
async fn node_survives_nats_restart() {
    let Some(mut cl) = Cluster::pair().await else {
        return;
    };
    let mut s = cl
        .subscriber(A, ProtocolVersion::V311, "rs-sub", "rs/#", QoS::AtLeastOnce)
        .await;
    cl.ready(B, &format!("rs/{PROBE}"), &mut [&mut s]).await;
    let mut p = cl.client(B, ProtocolVersion::V311, "rs-pub").await;
    p.publish("rs/x", b"before", QoS::AtLeastOnce, false).await;
    let m = cl.recv(&mut s, "QoS 1 before the NATS restart").await;
    assert_eq!((&*m.topic, &m.payload[..]), ("rs/x", &b"before"[..]));

    cl.nats.restart().await;
    // QoS 0: the nodes reconnect and resubscribe on their own; probes tell when.
    cl.ready(B, &format!("rs/{PROBE}"), &mut [&mut s]).await;
    // QoS 1: the shard streams survived in the store directory; the nodes consume them again.
    p.publish("rs/x", b"after", QoS::AtLeastOnce, false).await;
    let m = cl.recv(&mut s, "QoS 1 after the NATS restart").await;
    assert_eq!((&*m.topic, &m.payload[..]), ("rs/x", &b"after"[..]));
    // The clients of both nodes stayed connected throughout.
    s.ping().await;
    p.ping().await;
}

/// The same client id connecting to another node takes the session over: the older connection
/// is closed with 0x8E (3.1.1: closed) and the newer one keeps working, there and across.
#[tokio::test]
async fn takeover_across_nodes() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    for (v, id) in [(ProtocolVersion::V5, "tk5"), (ProtocolVersion::V311, "tk3")] {
        let mut old = cl.client(A, v, id).await;
        let mut new = cl.client(B, v, id).await;
        let d = old.drain_until_closed(CROSS).await;
        if v == ProtocolVersion::V5 {
            assert_eq!(
                d.map(|d| d.reason),
                Some(ReasonCode::SESSION_TAKEN_OVER),
                "{id} on node A{}",
                cl.logs()
            );
        }
        new.ping().await;
        // The newer connection is not taken over in turn by the notice of the older one.
        cl.quiet(&mut new, "the newer connection").await;
        new.ping().await;
    }
}

/// QoS 2 across nodes: the publisher's exchange completes on its node, the subscriber on the
/// other node gets the message at QoS 2 once.
#[tokio::test]
async fn qos2_cross_node() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    let mut s = cl
        .subscriber(A, ProtocolVersion::V5, "q2-sub", "q2/#", QoS::ExactlyOnce)
        .await;
    cl.ready(B, &format!("q2/{PROBE}"), &mut [&mut s]).await;
    let mut p = cl.client(B, ProtocolVersion::V5, "q2-pub").await;
    p.publish("q2/x", b"exactly", QoS::ExactlyOnce, false).await;
    let m = cl.recv(&mut s, "QoS 2 across nodes").await;
    assert_eq!(
        (&*m.topic, &m.payload[..], m.qos),
        ("q2/x", &b"exactly"[..], QoS::ExactlyOnce)
    );
    cl.quiet(&mut s, "after the QoS 2 message").await;
}

/// A node that loses NATS for longer than `unavailable_after` closes its clients (v5:
/// DISCONNECT 0x9C Use another server; 0x88 is not a DISCONNECT code), refuses CONNECT with
/// 0x88 (3.1.1: return code 3) and answers /health 503; once NATS is back
/// it takes clients again.
#[tokio::test]
async fn node_without_nats_moves_its_clients() {
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let http = crate::support::process::free_addr();
    let http_arg = http.to_string();
    let node = Node::start_with(
        &nats,
        "lone",
        "unavailable_after = 1\n",
        &["--http", &http_arg],
    )
    .await;
    let health = || async { http::get(http, "/health", &[]).await };
    assert_eq!(health().await.status, 200);
    let mut c = Client::connect(node.addr(), ProtocolVersion::V5, "moved").await;

    nats.kill();
    let d = c.drain_until_closed(CROSS).await;
    assert_eq!(
        d.map(|d| d.reason),
        Some(ReasonCode::USE_ANOTHER_SERVER),
        "{}",
        node.daemon.log()
    );
    let h = health().await;
    assert_eq!(h.status, 503);
    assert!(h.body.contains("cluster_unavailable"), "{}", h.body);
    let metrics = http::get(http, "/metrics", &[]).await.body;
    for line in [
        "tern_cluster_unavailable 1",
        "tern_cluster_nats_connected 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    // The codec reads the 3.1.1 return code 3 as 0x88.
    for (v, code) in [
        (ProtocolVersion::V5, ReasonCode::SERVER_UNAVAILABLE),
        (ProtocolVersion::V311, ReasonCode::SERVER_UNAVAILABLE),
    ] {
        let (_, ack) = Client::connect_with(
            node.addr(),
            tern_testclient::connect_packet(v, "refused", true),
        )
        .await;
        assert_eq!(ack.code, code, "{v:?}");
    }

    nats.restart().await;
    let deadline = tokio::time::Instant::now() + CROSS;
    while health().await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not take clients again:{}",
            node.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut back = Client::connect(node.addr(), ProtocolVersion::V5, "moved").await;
    back.ping().await;
    let metrics = http::get(http, "/metrics", &[]).await.body;
    for line in [
        "tern_cluster_unavailable 0",
        "tern_cluster_unavailable_periods_total 1",
        "tern_cluster_nats_connected 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

/// QoS 0 goes only to the nodes with subscribers of its account (NATS interest): node B,
/// without any, takes none of node A's QoS 0 messages; once a client subscribes on B, they
/// reach it; once it leaves, B takes none again.
#[tokio::test]
async fn qos0_reaches_only_nodes_with_subscribers_of_its_account() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    let metric = |n: usize, name: &str| {
        let http = cl.nodes[n].daemon.http.expect("the node's HTTP listener");
        let name = name.to_string();
        async move {
            let body = http::get(http, "/metrics", &[]).await.body;
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in the metrics"))
        }
    };
    let mut local = cl
        .subscriber(A, ProtocolVersion::V5, "int-a", "int/#", QoS::AtMostOnce)
        .await;
    let mut p = cl.client(A, ProtocolVersion::V311, "int-p").await;
    for i in 0..100 {
        p.publish(&format!("int/before/{i}"), b"x", QoS::AtMostOnce, false)
            .await;
    }
    for _ in 0..100 {
        cl.recv(&mut local, "A's own subscriber").await;
    }
    assert_eq!(
        metric(B, "tern_cluster_interest_accounts").await,
        0,
        "B has no subscriber{}",
        cl.logs()
    );
    assert_eq!(
        metric(B, "tern_cluster_messages_received_total").await,
        0,
        "B takes none of A's QoS 0 messages{}",
        cl.logs()
    );
    let mut remote = cl
        .subscriber(B, ProtocolVersion::V5, "int-b", "int/#", QoS::AtMostOnce)
        .await;
    cl.ready(A, &format!("int/{PROBE}"), &mut [&mut remote, &mut local])
        .await;
    p.publish("int/after", b"y", QoS::AtMostOnce, false).await;
    let m = cl.recv(&mut remote, "B's subscriber").await;
    assert_eq!(m.topic, "int/after");
    assert!(metric(B, "tern_cluster_interest_accounts").await >= 1);
    remote.disconnect().await;
    // B lets go of the account: what A publishes then is not received there.
    let deadline = tokio::time::Instant::now() + CROSS;
    while metric(B, "tern_cluster_interest_accounts").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B keeps its interest after its last subscriber left{}",
            cl.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = metric(B, "tern_cluster_messages_received_total").await;
    for i in 0..100 {
        p.publish(&format!("int/gone/{i}"), b"x", QoS::AtMostOnce, false)
            .await;
    }
    for _ in 0..100 {
        cl.recv(&mut local, "A's own subscriber").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(B, "tern_cluster_messages_received_total").await,
        received,
        "B takes none of A's QoS 0 messages once its subscriber left{}",
        cl.logs()
    );
}
