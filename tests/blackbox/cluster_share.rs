//! `$share` groups across cluster nodes (issue 17): a group with members on several nodes gets
//! each message once in the whole cluster (not once per node), whichever node it was published
//! on, at QoS 0 and QoS 1 (none lost); members on every node get a share; a sticky group keeps
//! every message of one topic with one member across nodes; a member that leaves hands its share
//! to the members that stay; the QoS 1 messages chosen for a node that is killed reach a member
//! on a node that survives; a node whose members are all offline gets no share while another
//! node has a connected member.
//!
//! The nodes learn each other's members through the `tern_share` KV bucket, asynchronously: each
//! test first publishes batches on the group's filter until two batches in a row arrive exactly
//! once (a node that does not know the group yet delivers it to its own members too).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_codec::*;

use crate::support::Client;
use crate::support::QUIET;
use crate::support::client::{Read, connect_packet, publish_packet};
use crate::support::cluster::*;

/// One member of a group: its node, its name and its client.
struct Member {
    node: usize,
    name: String,
    client: Client,
}

/// A member's deliveries: (topic, payload).
type Got = Vec<(String, String)>;

/// Reads what arrived at each member (acknowledging as its QoS requires) until `expected`
/// deliveries arrived in all, or [`CROSS`] passed, then until each member was quiet for
/// [`QUIET`] (a duplicate would come then). Returns each member's deliveries, in order.
async fn collect(cl: &Cluster, members: &mut [Member], expected: usize) -> Vec<Got> {
    let mut got: Vec<Got> = vec![Vec::new(); members.len()];
    let deadline = tokio::time::Instant::now() + CROSS;
    let mut total = 0;
    while total < expected && tokio::time::Instant::now() < deadline {
        for (m, g) in members.iter_mut().zip(got.iter_mut()) {
            total += read_some(cl, m, g, Duration::from_millis(20)).await;
        }
    }
    for (m, g) in members.iter_mut().zip(got.iter_mut()) {
        read_some(cl, m, g, QUIET).await;
    }
    got
}

/// Reads `m`'s deliveries into `g` until none comes for `wait`; returns how many.
async fn read_some(cl: &Cluster, m: &mut Member, g: &mut Got, wait: Duration) -> usize {
    let mut n = 0;
    loop {
        match m.client.read(wait).await {
            Read::Packet(Packet::Publish(p)) => {
                m.client.ack(&p).await;
                // The broker's own session events, for a `#` member.
                if p.topic.starts_with("flespi/") {
                    continue;
                }
                g.push((
                    p.topic.to_string(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
                n += 1;
            }
            Read::Timeout => return n,
            other => panic!("{}: expected PUBLISH, got {other:?}{}", m.name, cl.logs()),
        }
    }
}

/// Publishes `count` messages on `<topic>/<i>` from each node of `from` (payload
/// `<tag>-<node>-<i>`) at `qos` (a QoS 1 publisher gets its PUBACK first).
async fn publish_batch(
    cl: &Cluster,
    from: &[usize],
    topic: &str,
    tag: &str,
    count: usize,
    qos: QoS,
) {
    for &n in from {
        let id = format!("pub-{tag}-{n}");
        let mut p = cl.client(n, ProtocolVersion::V311, &id).await;
        for i in 0..count {
            p.publish(
                &format!("{topic}/{i}"),
                format!("{tag}-{n}-{i}").as_bytes(),
                qos,
                false,
            )
            .await;
        }
        p.disconnect().await;
    }
}

/// How often each payload arrived, over every member.
fn tally(got: &[Got]) -> HashMap<&str, usize> {
    let mut seen = HashMap::new();
    for (_, payload) in got.iter().flatten() {
        *seen.entry(payload.as_str()).or_insert(0) += 1;
    }
    seen
}

/// Publishes batches on `<topic>/settle` from every node of `from` until two batches in a row
/// reach the members exactly once each: every node knows the group's members.
async fn settle(cl: &Cluster, members: &mut [Member], from: &[usize], topic: &str) {
    let deadline = tokio::time::Instant::now() + CROSS * 2;
    let per_node = 10;
    let mut good = 0;
    let mut round = 0;
    while good < 2 {
        round += 1;
        let tag = format!("settle{round}");
        publish_batch(
            cl,
            from,
            &format!("{topic}/settle"),
            &tag,
            per_node,
            QoS::AtMostOnce,
        )
        .await;
        let got = collect(cl, members, per_node * from.len()).await;
        let seen = tally(&got);
        let exact = seen.len() == per_node * from.len()
            && seen.values().all(|&n| n == 1)
            && seen.keys().all(|p| p.starts_with(&tag));
        good = if exact { good + 1 } else { 0 };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group on {topic} did not settle (round {round}: {seen:?}){}",
            cl.logs()
        );
    }
}

/// Connects and subscribes the members, `(node, name)` each, to `filter` at `qos`.
async fn members(cl: &Cluster, filter: &str, qos: QoS, who: &[(usize, &str)]) -> Vec<Member> {
    let mut out = Vec::new();
    for &(node, name) in who {
        let client = cl
            .subscriber(node, ProtocolVersion::V5, name, filter, qos)
            .await;
        out.push(Member {
            node,
            name: name.to_string(),
            client,
        })
    }
    out
}

/// Asserts that every payload of `tags` from `from` nodes (`count` each) arrived exactly once.
fn assert_each_once(
    cl: &Cluster,
    got: &[Got],
    tag: &str,
    from: &[usize],
    count: usize,
    what: &str,
) {
    let seen = tally(got);
    for &n in from {
        for i in 0..count {
            let payload = format!("{tag}-{n}-{i}");
            assert_eq!(
                seen.get(payload.as_str()).copied().unwrap_or(0),
                1,
                "{what}: {payload} must arrive exactly once in the cluster (per member: {:?}){}",
                got.iter().map(Vec::len).collect::<Vec<_>>(),
                cl.logs()
            );
        }
    }
    assert_eq!(
        seen.len(),
        from.len() * count,
        "{what}: nothing else arrives: {seen:?}"
    );
}

/// A plain group with members on two nodes (two on one, one on the other): at QoS 0 and QoS 1,
/// every message published on either node reaches exactly one member in the cluster, none is
/// lost, and the members of both nodes get some.
#[tokio::test]
async fn a_group_across_two_nodes_gets_each_message_once() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let q = qos as u8;
        let filter = format!("$share/g/csh{q}/+/+");
        let mut group = members(
            &cl,
            &filter,
            qos,
            &[
                (A, &format!("m{q}-a1")),
                (A, &format!("m{q}-a2")),
                (B, &format!("m{q}-b1")),
            ],
        )
        .await;
        // A plain subscriber gets every message, on top of the group.
        let mut plain = cl
            .subscriber(
                B,
                ProtocolVersion::V311,
                &format!("plain{q}"),
                &format!("csh{q}/#"),
                qos,
            )
            .await;
        settle(&cl, &mut group, &[A, B], &format!("csh{q}")).await;
        while let Read::Packet(Packet::Publish(p)) = plain.read(QUIET).await {
            plain.ack(&p).await;
        }

        let count = 60;
        publish_batch(&cl, &[A, B], &format!("csh{q}/t"), "msg", count, qos).await;
        let got = collect(&cl, &mut group, 2 * count).await;
        assert_each_once(&cl, &got, "msg", &[A, B], count, &format!("QoS {q}"));
        for node in [A, B] {
            let on_node: usize = group
                .iter()
                .zip(&got)
                .filter(|(m, _)| m.node == node)
                .map(|(_, g)| g.len())
                .sum();
            assert!(
                on_node > 0,
                "QoS {q}: the members on node {node} get a share: {:?}",
                got.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
        // Deliveries keep the subscriber's QoS, and the plain subscriber got all of them.
        let mut plain_got = 0;
        while plain_got < 2 * count {
            let m = cl.recv(&mut plain, "the plain subscriber").await;
            assert_eq!(m.qos, qos);
            plain_got += 1;
        }
        cl.quiet(&mut plain, "the plain subscriber").await;
        for m in group {
            m.client.disconnect().await;
        }
        plain.disconnect().await;
    }
}

/// A sticky group (`$share/s:2/...`: the first two topic levels pick the member) with members
/// on two nodes: every message of one topic, published on either node, goes to the same member
/// in the cluster, and the topics are spread over the members of both nodes.
#[tokio::test]
async fn a_sticky_group_across_nodes_keeps_each_topic_with_one_member() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    let mut group = members(
        &cl,
        "$share/s:2/cst/#",
        QoS::AtLeastOnce,
        &[(A, "st-a1"), (B, "st-b1"), (B, "st-b2")],
    )
    .await;
    settle(&cl, &mut group, &[A, B], "cst/x").await;

    // Topics cst/<k>/<i>: the hashed levels are `cst/<k>`, so each k is one sticky key.
    let (keys, per_key) = (16, 4);
    for n in [A, B] {
        let mut p = cl
            .client(n, ProtocolVersion::V311, &format!("st-pub-{n}"))
            .await;
        for i in 0..per_key {
            for k in 0..keys {
                p.publish(
                    &format!("cst/{k}/{i}"),
                    format!("st-{n}-{k}-{i}").as_bytes(),
                    QoS::AtLeastOnce,
                    false,
                )
                .await;
            }
        }
        p.disconnect().await;
    }
    let got = collect(&cl, &mut group, 2 * keys * per_key).await;
    let seen = tally(&got);
    assert_eq!(
        seen.len(),
        2 * keys * per_key,
        "every message arrives: {seen:?}{}",
        cl.logs()
    );
    assert!(seen.values().all(|&n| n == 1), "each once: {seen:?}");
    // Each key's messages at one member.
    let owner = owners(&cl, &group, &got);
    assert_eq!(owner.len(), keys);
    for node in [A, B] {
        assert!(
            owner
                .values()
                .any(|name| group.iter().any(|m| &m.name == name && m.node == node)),
            "the members on node {node} hold some keys: {owner:?}"
        );
    }
}

/// Three nodes with one member each: all three get a share. The member on the third node
/// leaves (disconnects, its session ends): soon the other two get every message, each exactly
/// once, still both of them.
#[tokio::test]
async fn a_member_that_leaves_hands_its_share_to_the_others() {
    let Some(cl) = Cluster::start(&["n1", "n2", "n3"]).await else {
        return;
    };
    const C: usize = 2;
    let all = [A, B, C];
    let mut group = members(
        &cl,
        "$share/lv/clv/+/+",
        QoS::AtLeastOnce,
        &[(A, "lv-a"), (B, "lv-b"), (C, "lv-c")],
    )
    .await;
    settle(&cl, &mut group, &all, "clv").await;
    let count = 40;
    publish_batch(&cl, &all, "clv/t", "before", count, QoS::AtLeastOnce).await;
    let got = collect(&cl, &mut group, 3 * count).await;
    assert_each_once(&cl, &got, "before", &all, count, "three members");
    assert!(
        got.iter().all(|g| !g.is_empty()),
        "each of the three gets a share: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );

    let leaver = group.pop().expect("three members");
    leaver.client.disconnect().await;
    // Until the other nodes know: batches from every node until two arrive exactly once at
    // the two that stay.
    settle(&cl, &mut group, &all, "clv").await;
    publish_batch(&cl, &all, "clv/t", "after", count, QoS::AtLeastOnce).await;
    let got = collect(&cl, &mut group, 3 * count).await;
    assert_each_once(&cl, &got, "after", &all, count, "two members left");
    assert!(
        got.iter().all(|g| !g.is_empty()),
        "both members that stay get a share: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// Which member got each sticky key (`<first level>/<k>`), checking that no key went to two.
fn owners(cl: &Cluster, group: &[Member], got: &[Got]) -> HashMap<String, String> {
    let mut owner: HashMap<String, String> = HashMap::new();
    for (m, g) in group.iter().zip(got) {
        for (topic, _) in g {
            let key = topic.split('/').take(2).collect::<Vec<_>>().join("/");
            let was = owner.entry(key.clone()).or_insert_with(|| m.name.clone());
            assert_eq!(
                *was,
                m.name,
                "{key}: every message of one sticky key goes to one member{}",
                cl.logs()
            );
        }
    }
    owner
}

/// A sticky group with one member on each of three nodes: when the member of the third node
/// leaves, its keys move to the other two, and the keys of the two that stay do not move.
#[tokio::test]
async fn a_sticky_member_that_leaves_moves_only_its_own_keys() {
    let Some(cl) = Cluster::start(&["n1", "n2", "n3"]).await else {
        return;
    };
    const C: usize = 2;
    let all = [A, B, C];
    let mut group = members(
        &cl,
        "$share/sk:2/csk/#",
        QoS::AtLeastOnce,
        &[(A, "sk-a"), (B, "sk-b"), (C, "sk-c")],
    )
    .await;
    settle(&cl, &mut group, &all, "csk/x").await;
    let keys = 30;
    // Topics csk/<k>/<node>: one message per key from each node.
    let send_keys = |tag: &'static str| {
        let cl = &cl;
        async move {
            for n in all {
                let mut p = cl
                    .client(n, ProtocolVersion::V311, &format!("sk-pub-{tag}-{n}"))
                    .await;
                for k in 0..keys {
                    p.publish(
                        &format!("csk/{k}/{n}"),
                        format!("{tag}-{n}-{k}").as_bytes(),
                        QoS::AtLeastOnce,
                        false,
                    )
                    .await;
                }
                p.disconnect().await;
            }
        }
    };
    send_keys("before").await;
    let got = collect(&cl, &mut group, 3 * keys).await;
    assert_each_once(&cl, &got, "before", &all, keys, "three sticky members");
    let before = owners(&cl, &group, &got);
    assert_eq!(before.len(), keys);
    for m in &group {
        assert!(
            before.values().any(|o| *o == m.name),
            "{} holds some keys: {before:?}",
            m.name
        );
    }

    let leaver = group.pop().expect("three members");
    leaver.client.disconnect().await;
    settle(&cl, &mut group, &all, "csk/x").await;
    send_keys("after").await;
    let got = collect(&cl, &mut group, 3 * keys).await;
    assert_each_once(&cl, &got, "after", &all, keys, "two sticky members");
    let after = owners(&cl, &group, &got);
    assert_eq!(after.len(), keys);
    for (key, was) in &before {
        if *was != leaver.name {
            assert_eq!(
                after.get(key),
                Some(was),
                "{key} stays with {was} when another member leaves"
            );
        }
    }
}

/// Three nodes with one member each; the third node is killed (SIGKILL: it deletes nothing).
/// Its entry in the registry goes stale within seconds and the two nodes left deliver every
/// message again, each exactly once, to both of their members.
#[tokio::test]
async fn a_dead_node_stops_being_chosen() {
    let Some(mut cl) = Cluster::start(&["n1", "n2", "n3"]).await else {
        return;
    };
    const C: usize = 2;
    let mut group = members(
        &cl,
        "$share/dn/cdn/+/+",
        QoS::AtLeastOnce,
        &[(A, "dn-a"), (B, "dn-b"), (C, "dn-c")],
    )
    .await;
    settle(&cl, &mut group, &[A, B, C], "cdn").await;

    let dead = cl.nodes.remove(C);
    dead.daemon.kill().await;
    drop(group.pop());
    // Messages chosen for the dead node are lost until its entry is stale: settle waits that
    // out (bounded).
    settle(&cl, &mut group, &[A, B], "cdn").await;
    let count = 40;
    publish_batch(&cl, &[A, B], "cdn/t", "after", count, QoS::AtLeastOnce).await;
    let got = collect(&cl, &mut group, 2 * count).await;
    assert_each_once(&cl, &got, "after", &[A, B], count, "the two live nodes");
    assert!(
        got.iter().all(|g| !g.is_empty()),
        "both live members get a share: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        cl.nodes[A].daemon.log().contains("went stale"),
        "node A saw the dead node's entry go stale:{}",
        cl.logs()
    );
}

/// Publishes QoS 1 messages `<topic>/<i>` with payload `<tag>-<i>` one after the other (each
/// after the PUBACK of the one before, a few ms apart) until `stop` or the connection is gone;
/// the payload of each one acknowledged goes into `acked`.
async fn publish_until(
    mut c: Client,
    topic: String,
    tag: String,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let payload = format!("{tag}-{i}");
        let id = c.next_id();
        let p = publish_packet(
            &format!("{topic}/{i}"),
            payload.as_bytes(),
            QoS::AtLeastOnce,
            false,
            Some(id),
        );
        if !c.try_send(Packet::Publish(p)).await {
            return;
        }
        match c.read(CROSS * 3).await {
            Read::Packet(Packet::PubAck(a)) if a.packet_id == id => {
                acked.lock().expect("acked").push(payload);
            }
            // Its node was killed (or stalled): this one was not acknowledged.
            _ => return,
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

/// Reads a member's deliveries (acknowledging each) into `got` until its connection is gone,
/// or `stop` once nothing came for a moment.
async fn receive_until(c: Client, got: Arc<Mutex<HashSet<String>>>, stop: Arc<AtomicBool>) {
    receive(c, got, stop, true).await;
}

/// [`receive_until`], acknowledging nothing unless `ack`.
async fn receive(
    mut c: Client,
    got: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
    ack: bool,
) {
    loop {
        match c.read(Duration::from_millis(200)).await {
            Read::Packet(Packet::Publish(p)) => {
                if ack && let Some(id) = p.packet_id {
                    c.send_unchecked(Packet::PubAck(PubAck::new(id))).await;
                }
                got.lock()
                    .expect("got")
                    .insert(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Read::Packet(_) => {}
            Read::Closed => return,
            Read::Timeout if stop.load(Ordering::Relaxed) => return,
            Read::Timeout => {}
        }
    }
}

/// Waits (bounded by `within`) until `done` holds; returns whether it did.
async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

/// A group with one QoS 1 member on node A and one on node B; a publisher on each node keeps
/// publishing sequence-numbered QoS 1 messages; node A is killed (SIGKILL) while they do.
/// Every message a publisher got a PUBACK for reaches a member: the one on A before the kill,
/// or the one on B (the messages chosen for A that its member had not acknowledged are handed
/// over to B once A's registry entry is stale; some may arrive twice).
#[tokio::test]
async fn qos1_messages_chosen_for_a_killed_node_reach_a_surviving_member() {
    chosen_for_a_node_that_goes(Going::Killed).await;
}

/// The same with node A stopped cleanly (SIGTERM): its registry entry is deleted at once, and
/// what its member had not acknowledged is handed over to B's member (MQTT §4.8.2: a shared
/// message whose session ended should go to another member).
#[tokio::test]
async fn qos1_messages_chosen_for_a_stopped_node_reach_a_surviving_member() {
    chosen_for_a_node_that_goes(Going::Stopped).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Going {
    /// `kill -9`.
    Killed,
    /// SIGTERM: a clean stop.
    Stopped,
}

async fn chosen_for_a_node_that_goes(how: Going) {
    let Some(mut cl) = Cluster::pair().await else {
        return;
    };
    let mut group = members(
        &cl,
        "$share/cr/ccr/+/+",
        QoS::AtLeastOnce,
        &[(A, "cr-a"), (B, "cr-b")],
    )
    .await;
    settle(&cl, &mut group, &[A, B], "ccr").await;

    let stop = Arc::new(AtomicBool::new(false));
    // The members read on after the publishers stopped, until the end: a message kept for A
    // after its handover (its append acknowledged a moment after) is handed over at the next
    // expiry tick, and a member that left by then could not get it.
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut got = Vec::new();
    for m in group {
        let set = Arc::new(Mutex::new(HashSet::new()));
        got.push(set.clone());
        receivers.push(tokio::spawn(receive_until(
            m.client,
            set,
            stop_receiving.clone(),
        )));
    }
    let (got_a, got_b) = (got[0].clone(), got[1].clone());
    let mut publishers = Vec::new();
    let mut acked = Vec::new();
    for n in [A, B] {
        let list = Arc::new(Mutex::new(Vec::new()));
        acked.push(list.clone());
        let c = cl
            .client(n, ProtocolVersion::V311, &format!("cr-pub-{n}"))
            .await;
        publishers.push(tokio::spawn(publish_until(
            c,
            format!("ccr/{n}"),
            format!("cr{n}"),
            list,
            stop.clone(),
        )));
    }
    // Both members take part before the kill.
    let both = wait_until(CROSS, || {
        got_a.lock().expect("got").len() >= 20 && got_b.lock().expect("got").len() >= 20
    })
    .await;
    assert!(
        both,
        "both members get messages before the kill{}",
        cl.logs()
    );

    let killed = cl.nodes.remove(A);
    match how {
        Going::Killed => killed.daemon.kill().await,
        Going::Stopped => {
            killed.daemon.signal("TERM");
            let mut daemon = killed.daemon;
            let _ = tokio::time::timeout(CROSS, daemon.child.wait()).await;
        }
    }
    let at_kill = got_a.lock().expect("got").len();
    // B's publisher goes on through the time A's entry takes to go stale, and after.
    let published_after = |n: usize| acked[B].lock().expect("acked").len() >= n;
    let before = acked[B].lock().expect("acked").len();
    let went_on = wait_until(CROSS * 2, || {
        published_after(before + 200) && cl.nodes[0].daemon.log().contains("handed over")
    })
    .await;
    assert!(
        went_on,
        "B's publisher goes on and B hands over what was chosen for A{}",
        cl.logs()
    );
    let more = acked[B].lock().expect("acked").len() + 50;
    assert!(
        wait_until(CROSS, || published_after(more)).await,
        "B's publisher goes on after the handover{}",
        cl.logs()
    );
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        let _ = p.await;
    }

    let acked: Vec<String> = acked
        .iter()
        .flat_map(|l| l.lock().expect("acked").clone())
        .collect();
    let missing = |got_a: &HashSet<String>, got_b: &HashSet<String>| -> Vec<String> {
        acked
            .iter()
            .filter(|p| !got_a.contains(*p) && !got_b.contains(*p))
            .cloned()
            .collect()
    };
    let all_there = wait_until(CROSS * 2, || {
        missing(&got_a.lock().expect("got"), &got_b.lock().expect("got")).is_empty()
    })
    .await;
    let (a, b) = (
        got_a.lock().expect("got").clone(),
        got_b.lock().expect("got").clone(),
    );
    let lost = missing(&a, &b);
    assert!(
        all_there,
        "every acknowledged message reaches a member: {} of {} acknowledged are missing \
         (A's member got {} before the kill, B's {}): {:?}{}",
        lost.len(),
        acked.len(),
        at_kill,
        b.len(),
        &lost[..lost.len().min(20)],
        cl.logs()
    );
    let from_a = acked.iter().filter(|p| p.starts_with("cr0-")).count();
    assert!(
        from_a > 0,
        "A's publisher got acknowledgements before the kill"
    );
    stop_receiving.store(true, Ordering::Relaxed);
    for r in receivers {
        r.abort();
    }
}

/// A persistent member on node A that is offline and a connected member on node B: every
/// message of the group, published on either node, goes to B's member (a node whose members
/// are all offline gets no share while another node has a connected one). A's member, when
/// it comes back, finds none of them queued.
#[tokio::test]
async fn connected_members_on_another_node_are_preferred_to_offline_ones() {
    let Some(cl) = Cluster::pair().await else {
        return;
    };
    let filter = "$share/pf/cpf/+/+";
    let persistent = |id: &str| {
        let mut c = connect_packet(ProtocolVersion::V5, id, false);
        c.properties.session_expiry_interval = Some(3600);
        c
    };
    let (mut offline, _) = Client::connect_with(cl.nodes[A].addr(), persistent("pf-a")).await;
    assert_eq!(
        offline.subscribe(filter, QoS::AtLeastOnce).await,
        ReasonCode(1)
    );
    let mut group = vec![
        Member {
            node: A,
            name: "pf-a".into(),
            client: offline,
        },
        Member {
            node: B,
            name: "pf-b".into(),
            client: cl
                .subscriber(B, ProtocolVersion::V5, "pf-b", filter, QoS::AtLeastOnce)
                .await,
        },
    ];
    settle(&cl, &mut group, &[A, B], "cpf").await;
    offline = group.remove(0).client;
    offline.disconnect().await;

    // Until both nodes know that A's member is offline: QoS 1 batches from both nodes until
    // one arrives whole at B's member (bounded).
    let per_node = 10;
    let deadline = tokio::time::Instant::now() + CROSS * 2;
    let mut round = 0;
    loop {
        round += 1;
        let tag = format!("warm{round}");
        publish_batch(&cl, &[A, B], "cpf/w", &tag, per_node, QoS::AtLeastOnce).await;
        let got = collect(&cl, &mut group, 2 * per_node).await;
        let seen = tally(&got);
        if (0..per_node).all(|i| {
            [A, B]
                .iter()
                .all(|n| seen.contains_key(format!("{tag}-{n}-{i}").as_str()))
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's connected member never got a whole batch (round {round}: {seen:?}){}",
            cl.logs()
        );
    }

    let count = 30;
    publish_batch(&cl, &[A, B], "cpf/t", "pf", count, QoS::AtLeastOnce).await;
    let got = collect(&cl, &mut group, 2 * count).await;
    assert_each_once(&cl, &got, "pf", &[A, B], count, "the connected member on B");

    // A's member comes back: none of them was queued for it.
    let (mut back, ack) = Client::connect_with(cl.nodes[A].addr(), persistent("pf-a")).await;
    assert!(ack.session_present, "A's member resumes its session");
    let mut queued = Vec::new();
    while let Read::Packet(Packet::Publish(p)) = back.read(QUIET).await {
        back.ack(&p).await;
        queued.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert!(
        queued.iter().all(|p| !p.starts_with("pf-")),
        "nothing of the group's messages waited for the offline member: {queued:?}"
    );
    back.disconnect().await;
}

/// Members on three nodes, publishing on the third; node A is killed, then node B, whose
/// member acknowledges nothing (so what was handed over to it from A stays unacknowledged
/// there). Every message acknowledged to the publisher reaches A's member before its kill or
/// C's member: what went from A to B is handed over again, to C.
#[tokio::test]
async fn a_message_handed_over_once_is_handed_over_again_after_a_second_crash() {
    let Some(mut cl) = Cluster::start(&["h1", "h2", "h3"]).await else {
        return;
    };
    let mut group = members(
        &cl,
        "$share/h2/ch2/+/+",
        QoS::AtLeastOnce,
        &[(0, "h2-a"), (1, "h2-b"), (2, "h2-c")],
    )
    .await;
    settle(&cl, &mut group, &[0, 1, 2], "ch2").await;

    let stop = Arc::new(AtomicBool::new(false));
    // The members read on after the publisher stopped, until the end: C's member is the only
    // one left, and what is handed over after that (a message kept for B a moment after B's
    // handover goes at the next expiry tick) needs it connected.
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let got: Vec<Arc<Mutex<HashSet<String>>>> = (0..3)
        .map(|_| Arc::new(Mutex::new(HashSet::new())))
        .collect();
    let mut receivers = Vec::new();
    for (i, m) in group.into_iter().enumerate() {
        // B's member acknowledges nothing.
        let ack = i != 1;
        receivers.push(tokio::spawn(receive(
            m.client,
            got[i].clone(),
            stop_receiving.clone(),
            ack,
        )));
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let publisher = cl.client(2, ProtocolVersion::V311, "h2-pub").await;
    let publishing = tokio::spawn(publish_until(
        publisher,
        "ch2/p".into(),
        "h2".into(),
        acked.clone(),
        stop.clone(),
    ));
    let count = |i: usize| got[i].lock().expect("got").len();
    let logs_of = |cl: &Cluster| cl.logs();
    assert!(
        wait_until(CROSS, || count(0) >= 20 && count(1) >= 20 && count(2) >= 20).await,
        "every member gets messages first{}",
        logs_of(&cl)
    );
    // A dies and its messages are handed over to B and C; then B dies with all of it
    // unacknowledged. Each time C (the last node) logs the node's entry going stale and then
    // a handover, and publishing goes on. (Counting handover lines would not do: what C kept
    // for A after A's handover is handed over at the next expiry tick, a second line that can
    // come after B's kill, before B's entry went stale.)
    for gone in ["A", "B"] {
        let killed = cl.nodes.remove(0);
        let stale = format!("it is chosen no more node={}", killed.name);
        killed.daemon.kill().await;
        let published = acked.lock().expect("acked").len();
        let c = cl.nodes.len() - 1;
        let handed_over = || {
            let log = cl.nodes[c].daemon.log();
            log.lines()
                .skip_while(|l| !l.trim_end().ends_with(&stale))
                .any(|l| l.contains("handed over"))
        };
        assert!(
            wait_until(CROSS * 2, || {
                handed_over() && acked.lock().expect("acked").len() >= published + 50
            })
            .await,
            "C hands over what was kept for {gone}, and publishing goes on{}",
            logs_of(&cl)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = publishing.await;
    let acked: Vec<String> = acked.lock().expect("acked").clone();
    let missing = || -> Vec<String> {
        let (on_a, on_c) = (got[0].lock().expect("got"), got[2].lock().expect("got"));
        acked
            .iter()
            .filter(|p| !on_a.contains(*p) && !on_c.contains(*p))
            .cloned()
            .collect()
    };
    let all_there = wait_until(CROSS * 2, || missing().is_empty()).await;
    let lost = missing();
    assert!(
        all_there,
        "every acknowledged message reaches A's member (before its kill) or C's: {} of {} \
         missing: {:?}{}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)],
        logs_of(&cl)
    );
    stop_receiving.store(true, Ordering::Relaxed);
    for r in receivers {
        r.abort();
    }
}
