//! The disk backend against the reference model (`MemoryState`), across reopens; and its
//! handling of the data directory and of space.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{du, key, msg, reference};
use proptest::prelude::*;
use tern_codec::QoS;
use tern_store::{
    Backend, DiskBackend, FsyncPolicy, Op, QueuedRecord, STORE_FILE, SessionRecord, Snapshot, Store,
};

fn session(cid: u64, id: &str) -> Op {
    Op::PutSession {
        record: SessionRecord {
            key: key(cid, id),
            expiry_interval: 60,
            disconnected_at: None,
            will: None,
            created: 1,
            token_id: None,
        },
    }
}

fn enqueue(cid: u64, id: &str, seq: u64) -> Op {
    Op::Enqueue {
        key: key(cid, id),
        entry: QueuedRecord {
            seq,
            msg: msg(
                cid,
                "t",
                b"0123456789012345678901234567890123456789012345678901234567890123",
                seq,
            ),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Default::default(),
            inflight: None,
        },
    }
}

fn reopen(dir: &std::path::Path) -> (DiskBackend, Snapshot) {
    DiskBackend::open(dir).expect("reopen")
}

#[test]
fn creates_the_directory_private_and_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data/nested");
    let (backend, snapshot) = DiskBackend::open(&dir).expect("open");
    assert_eq!(snapshot, Snapshot::default());
    assert_eq!(
        std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777,
        0o700
    );
    assert!(dir.join(STORE_FILE).is_file());
    assert_eq!(backend.path(), dir.join(STORE_FILE));
}

#[test]
fn a_second_opener_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_backend, _) = DiskBackend::open(tmp.path()).expect("open");
    let err = DiskBackend::open(tmp.path()).expect_err("opened twice");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    assert!(tern_store::load(tmp.path()).is_err());
}

#[test]
fn a_leftover_of_an_interrupted_creation_is_replaced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("tern.redb.new"), b"half-made").expect("write");
    let (_backend, snapshot) = DiskBackend::open(tmp.path()).expect("open");
    assert_eq!(snapshot, Snapshot::default());
    assert!(!tmp.path().join("tern.redb.new").exists());
}

#[test]
fn del_session_removes_everything_of_that_session_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut b, _) = DiskBackend::open(tmp.path()).expect("open");
    // "a" is a prefix of "ab" in bytes: the length prefix keeps their ranges apart.
    let mut ops = vec![session(1, "a"), session(1, "ab"), session(2, "a")];
    for id in ["a", "ab"] {
        ops.push(enqueue(1, id, 1));
        ops.push(Op::PutIncoming {
            key: key(1, id),
            packet_id: 3,
        });
    }
    ops.push(enqueue(2, "a", 1));
    ops.push(Op::DelSession { key: key(1, "a") });
    ops.push(Op::ClearQueue { key: key(2, "a") });
    // Ignored: the session is gone.
    ops.push(enqueue(1, "a", 2));
    b.apply(&ops).expect("apply");
    b.sync().expect("sync");
    drop(b);
    let (_b, snap) = reopen(tmp.path());
    assert_eq!(snap, reference(&ops));
    assert_eq!(snap.sessions.len(), 2);
    assert_eq!(snap.sessions[0].record.key, key(1, "ab"));
    assert_eq!(snap.sessions[0].queue.len(), 1);
    assert!(snap.sessions[1].queue.is_empty());
}

#[test]
fn origin_is_not_stored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut b, _) = DiskBackend::open(tmp.path()).expect("open");
    let mut m = (*msg(1, "t", b"x", 5)).clone();
    m.origin = Some(77);
    b.apply(&[Op::PutRetained {
        msg: std::sync::Arc::new(m),
    }])
    .expect("apply");
    drop(b);
    assert_eq!(reopen(tmp.path()).1.retained[0].origin, None);
}

/// Through the `Store` handle and its writer thread with `fsync = always`, then restart.
#[tokio::test]
async fn store_handle_over_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (backend, _) = DiskBackend::open(tmp.path()).expect("open");
    let (store, writer) = Store::start(Box::new(backend), FsyncPolicy::Always);
    let mut ops = vec![session(1, "dev")];
    ops.extend((1..=500).map(|seq| enqueue(1, "dev", seq)));
    ops.extend((1..=250).map(|seq| Op::Dequeue {
        key: key(1, "dev"),
        seq,
    }));
    let mut last = 0;
    for op in ops.iter().cloned() {
        last = store.submit(op);
    }
    tokio::time::timeout(Duration::from_secs(30), store.wait(last))
        .await
        .expect("durable");
    let (batches, syncs) = store.stats();
    assert_eq!(batches, syncs, "always: one sync per batch");
    store.close();
    writer.join();
    let (_b, snap) = reopen(tmp.path());
    assert_eq!(snap, reference(&ops));
    assert_eq!(snap.sessions[0].queue.len(), 250);
}

/// The queue pattern (append at the head, delete at the tail) reuses pages: 100k messages
/// through a window of 1000 keep the file small. A drained backlog is compacted away.
#[test]
fn space_stays_proportional_to_live_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut b, _) = DiskBackend::open(tmp.path()).expect("open");
    b.apply(&[session(1, "dev")]).expect("apply");
    let window = 1000;
    let mut max = 0;
    for batch in 0..(100_000 / 100) {
        let mut ops = Vec::new();
        for i in 0..100u64 {
            let seq = batch * 100 + i + 1;
            ops.push(enqueue(1, "dev", seq));
            if seq > window {
                ops.push(Op::Dequeue {
                    key: key(1, "dev"),
                    seq: seq - window,
                });
            }
        }
        b.apply(&ops).expect("apply");
        if batch % 50 == 0 {
            b.sync().expect("sync");
            max = max.max(du(tmp.path()));
        }
    }
    // ~1000 live entries of ~170 bytes: well under a megabyte with the B-tree's overhead.
    assert!(
        max < 2 << 20,
        "file grew to {max} bytes for 1000 live entries"
    );

    // A backlog of 50k (~10 MB), then drained: compaction gives the space back.
    let ops: Vec<Op> = (200_001..250_001)
        .map(|seq| enqueue(1, "dev", seq))
        .collect();
    b.apply(&ops).expect("apply");
    b.sync().expect("sync");
    let full = du(tmp.path());
    b.apply(&[Op::ClearQueue { key: key(1, "dev") }])
        .expect("apply");
    b.sync().expect("sync");
    assert!(b.reclaim().expect("reclaim"), "nothing reclaimed");
    let empty = du(tmp.path());
    eprintln!(
        "100k through a 1000 window: at most {max} bytes; 50k backlog {full} bytes, drained and compacted {empty}"
    );
    assert!(
        full > 8 << 20 && empty < 1 << 20,
        "{full} bytes with the backlog, {empty} after draining"
    );
    drop(b);
    assert!(reopen(tmp.path()).1.sessions[0].queue.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random batches of ops give the same state on disk as in the reference model, whatever
    /// the batching, with reopens (and so full verification and reload) in between.
    #[test]
    fn disk_matches_the_reference_model(
        batches in prop::collection::vec(
            (prop::collection::vec(common::arb::op(), 0..12), any::<bool>(), any::<bool>()),
            1..10,
        )
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut b, _) = DiskBackend::open(tmp.path()).expect("open");
        let mut all = Vec::new();
        for (ops, sync, reopen_after) in batches {
            b.apply(&ops).expect("apply");
            all.extend(ops);
            if sync {
                b.sync().expect("sync");
            }
            if reopen_after {
                drop(b);
                let (nb, snap) = reopen(tmp.path());
                prop_assert_eq!(snap, reference(&all));
                b = nb;
            }
        }
        drop(b);
        prop_assert_eq!(reopen(tmp.path()).1, reference(&all));
    }
}

/// An entry whose session record is missing cannot come from any op: refused as damage.
#[test]
fn an_orphan_entry_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(DiskBackend::open(tmp.path()).expect("create"));
    let path = tmp.path().join(STORE_FILE);
    {
        let db = redb::Database::open(&path).expect("open");
        let tx = db.begin_write().expect("tx");
        let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("incoming");
        let mut key = 5u64.to_be_bytes().to_vec();
        key.extend_from_slice(&[0, 1, b'x', 0, 9]);
        tx.open_table(def)
            .expect("table")
            .insert(key.as_slice(), [].as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    let before = common::files(tmp.path());
    let err = DiskBackend::open(tmp.path()).expect_err("opened");
    assert!(err.to_string().contains("table incoming"), "{err}");
    assert!(
        err.to_string().contains("session that does not exist"),
        "{err}"
    );
    assert_eq!(common::files(tmp.path()), before);
}

/// What the broker does to a persistent session's queue (format 2 packs): seqs that only grow,
/// many enqueued per batch, sent and removed in any order, in the batch that enqueued them or
/// later, a queue cleared now and then; two sessions interleaved.
#[derive(Debug, Clone)]
enum QueueStep {
    Enqueue(u8, u8),
    Sent(u8, u16),
    Released(u8, u16),
    Dequeue(u8, u16),
    Clear(u8),
    EndBatch { sync: bool, reopen: bool },
}

fn queue_step() -> impl Strategy<Value = QueueStep> {
    prop_oneof![
        6 => (0u8..2, 1u8..40).prop_map(|(s, n)| QueueStep::Enqueue(s, n)),
        3 => (0u8..2, any::<u16>()).prop_map(|(s, i)| QueueStep::Sent(s, i)),
        1 => (0u8..2, any::<u16>()).prop_map(|(s, i)| QueueStep::Released(s, i)),
        4 => (0u8..2, any::<u16>()).prop_map(|(s, i)| QueueStep::Dequeue(s, i)),
        1 => (0u8..2).prop_map(QueueStep::Clear),
        3 => (any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(sync, reopen)| QueueStep::EndBatch { sync, reopen }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn broker_queue_patterns_match_the_reference_model(
        steps in prop::collection::vec(queue_step(), 1..80)
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut b, _) = DiskBackend::open(tmp.path()).expect("open");
        let ids = ["s0", "s1"];
        let mut all = vec![session(1, ids[0]), session(1, ids[1])];
        let mut batch = all.clone();
        let mut next = [1u64, 1];
        // Seqs the reference model holds per session (sent or not).
        let mut live: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for step in steps {
            match step {
                QueueStep::Enqueue(s, n) => {
                    let s = usize::from(s);
                    for _ in 0..n {
                        batch.push(enqueue(1, ids[s], next[s]));
                        live[s].push(next[s]);
                        next[s] += 1;
                    }
                }
                QueueStep::Sent(s, i) | QueueStep::Released(s, i) => {
                    let s_ = usize::from(s);
                    if !live[s_].is_empty() {
                        let seq = live[s_][usize::from(i) % live[s_].len()];
                        let phase = if matches!(step, QueueStep::Sent(..)) {
                            tern_store::InflightPhase::Sent
                        } else {
                            tern_store::InflightPhase::Released
                        };
                        batch.push(Op::SetInflight { key: key(1, ids[s_]), seq, packet_id: i, phase });
                    }
                }
                QueueStep::Dequeue(s, i) => {
                    let s = usize::from(s);
                    if !live[s].is_empty() {
                        let seq = live[s].remove(usize::from(i) % live[s].len());
                        batch.push(Op::Dequeue { key: key(1, ids[s]), seq });
                    }
                }
                QueueStep::Clear(s) => {
                    let s = usize::from(s);
                    live[s].clear();
                    batch.push(Op::ClearQueue { key: key(1, ids[s]) });
                }
                QueueStep::EndBatch { sync, reopen: again } => {
                    b.apply(&batch).expect("apply");
                    all.append(&mut batch);
                    if sync {
                        b.sync().expect("sync");
                    }
                    if again {
                        drop(b);
                        let (nb, snap) = reopen(tmp.path());
                        prop_assert_eq!(snap, reference(&all));
                        b = nb;
                    }
                }
            }
        }
        b.apply(&batch).expect("apply");
        all.append(&mut batch);
        drop(b);
        prop_assert_eq!(reopen(tmp.path()).1, reference(&all));
    }
}
