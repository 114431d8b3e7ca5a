//! Durable throughput (issue 20): QoS 1 publishes from several connections to an offline
//! persistent session are group-committed (one queue pack per session and batch) and
//! acknowledged only once durable. SIGKILL while commits are in progress loses nothing that was
//! acknowledged: after a restart on the same data directory the session gets every acknowledged
//! message, each publisher's in the order it published them (duplicates allowed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_codec::*;

use crate::support::client::{Read, connect_packet, publish_packet};
use crate::support::process::Daemon;
use crate::support::{Client, WAIT};

const PUBLISHERS: u32 = 4;
/// Unacknowledged messages per publisher: enough that every commit holds many.
const WINDOW: usize = 64;

fn persistent(id: &str) -> Connect {
    let mut c = connect_packet(ProtocolVersion::V5, id, false);
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// Publishes `p:n` for n = 1, 2, ... on `dur/<p>` with `WINDOW` in flight until the broker goes
/// away; records each n acknowledged.
async fn publish_until_killed(mut c: Client, p: u32, acked: Arc<Mutex<Vec<u32>>>) {
    let mut next = 0u32;
    let mut in_flight = HashMap::new();
    let topic = format!("dur/{p}");
    // Once a write fails (the broker is gone), only read what it acknowledged before.
    let mut writing = true;
    loop {
        while writing && in_flight.len() < WINDOW {
            next += 1;
            let id = (next % 60_000 + 1) as u16;
            in_flight.insert(id, next);
            let payload = format!("{p}:{next}");
            writing = c
                .try_send(Packet::Publish(publish_packet(
                    &topic,
                    payload.as_bytes(),
                    QoS::AtLeastOnce,
                    false,
                    Some(id),
                )))
                .await;
        }
        match c.read(WAIT).await {
            Read::Packet(Packet::PubAck(a)) => {
                assert!(!a.reason.is_error(), "refused: {a:?}");
                if let Some(n) = in_flight.remove(&a.packet_id) {
                    acked.lock().unwrap().push(n);
                }
            }
            Read::Packet(other) => panic!("unexpected {other:?}"),
            Read::Closed => return,
            Read::Timeout => panic!("no acknowledgement"),
        }
    }
}

#[tokio::test]
async fn sigkill_during_group_commits_to_an_offline_session_loses_no_acknowledged_message() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::spawn(data.path(), &["--anonymous"]).await;
    let (mut s, _) = Client::connect_with(d.mqtt, persistent("dur-sub")).await;
    s.subscribe("dur/+", QoS::AtLeastOnce).await;
    s.disconnect().await;

    let acked: Vec<Arc<Mutex<Vec<u32>>>> = (0..PUBLISHERS).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let c = Client::connect(d.mqtt, ProtocolVersion::V5, &format!("dur-pub-{p}")).await;
        tasks.push(tokio::spawn(publish_until_killed(
            c,
            p,
            acked[p as usize].clone(),
        )));
    }
    // Kill once the stream is well under way: commits follow each other back to back.
    let total = || acked.iter().map(|a| a.lock().unwrap().len()).sum::<usize>();
    let started = tokio::time::Instant::now();
    while total() < 5_000 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill().await;
    for t in tasks {
        t.await.unwrap();
    }
    let acked: Vec<Vec<u32>> = acked.iter().map(|a| a.lock().unwrap().clone()).collect();
    let count: usize = acked.iter().map(Vec::len).sum();
    assert!(
        count >= 1_000,
        "the stream ran before the kill ({count} acked)"
    );

    let d = Daemon::spawn(data.path(), &["--anonymous"]).await;
    let (mut s, ack) = Client::connect_with(d.mqtt, persistent("dur-sub")).await;
    assert!(ack.session_present);
    // Each publisher's messages in the order they arrived (first arrival of each number).
    let mut received: Vec<Vec<u32>> = vec![Vec::new(); PUBLISHERS as usize];
    let mut seen: Vec<std::collections::HashSet<u32>> =
        vec![Default::default(); PUBLISHERS as usize];
    while let Read::Packet(Packet::Publish(m)) = s.read(Duration::from_secs(3)).await {
        let text = String::from_utf8_lossy(&m.payload).to_string();
        let (p, n) = text.split_once(':').unwrap();
        let (p, n): (usize, u32) = (p.parse().unwrap(), n.parse().unwrap());
        assert_eq!(m.topic.as_ref(), format!("dur/{p}"));
        if seen[p].insert(n) {
            received[p].push(n);
        }
        s.ack(&m).await;
    }
    for p in 0..PUBLISHERS as usize {
        let lost: Vec<u32> = acked[p]
            .iter()
            .copied()
            .filter(|n| !seen[p].contains(n))
            .collect();
        assert!(
            lost.is_empty(),
            "publisher {p}: {} of {} acknowledged messages lost after SIGKILL, e.g. {:?}",
            lost.len(),
            acked[p].len(),
            &lost[..lost.len().min(10)]
        );
        assert!(
            received[p].windows(2).all(|w| w[0] < w[1]),
            "publisher {p}: messages out of order after the restart"
        );
    }
    d.kill().await;
}
