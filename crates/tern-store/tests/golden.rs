//! Golden files: a store written by format version 1 must load to exactly what was written, and
//! each kind of damage must be refused with the files left as they were.
//!
//! The fixtures in `tests/golden/` are committed; `write_golden_files` (ignored) made them and
//! is kept to show how. Never regenerate `v1/` for a format change: add `v2/` beside it and keep
//! reading `v1/` (or refusing it by name).

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{files, golden, key, reference};
use smallvec::smallvec;
use tern_codec::{PublishProperties, QoS, RetainHandling, SubscriptionOptions};
use tern_store::{
    DiskBackend, InflightPhase, Message, Op, QueuedRecord, STORE_FILE, SessionRecord, StoreError,
    SubscriptionRecord,
};

/// What `tests/golden/v1/tern.redb` holds. Frozen: the fixture was written from these ops.
fn v1_ops() -> Vec<Op> {
    let will = Arc::new(Message {
        topic: "devices/dev-1/status".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: PublishProperties {
            content_type: Some("text/plain".into()),
            ..Default::default()
        }
        .into(),
        cid: 7,
        timestamp: 1_700_000_000_000_100,
        expires_at: None,
        origin: None,
    });
    let retained = Arc::new(Message {
        topic: "devices/dev-1/config".into(),
        payload: Bytes::from_static(b"golden-retained-payload"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            response_topic: Some("devices/dev-1/config/ack".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01\x02\xff")),
            user_properties: vec![
                ("source".into(), "golden".into()),
                ("source".into(), "twice".into()),
            ],
            content_type: Some("application/json".into()),
            ..Default::default()
        }
        .into(),
        cid: 7,
        timestamp: 1_700_000_000_000_001,
        expires_at: Some(1_700_003_600_000_001),
        origin: None,
    });
    let binary = Arc::new(Message {
        topic: "raw".into(),
        payload: Bytes::from_static(b"\x80\x81 not utf-8 \xfe"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: PublishProperties::default().into(),
        cid: 9,
        timestamp: 1_700_000_000_000_002,
        expires_at: None,
        origin: None,
    });
    let queued = |seq: u64, payload: &'static [u8], inflight| QueuedRecord {
        seq,
        msg: Arc::new(Message {
            topic: "devices/dev-1/cmd".into(),
            payload: Bytes::from_static(payload),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: PublishProperties {
                message_expiry_interval: Some(60),
                ..Default::default()
            }
            .into(),
            cid: 7,
            timestamp: 1_700_000_000_000_200 + seq,
            expires_at: Some(1_700_000_060_000_200 + seq),
            origin: None,
        }),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: smallvec![12, 268_435_455],
        inflight,
    };
    let dev1 = key(7, "dev-1");
    let other = key(9, "dev-1"); // same client id in another account: another session
    vec![
        Op::PutAccount {
            cid: 7,
            json: Bytes::from_static(br#"{"name":"acme","parent":1}"#),
        },
        Op::PutAccount {
            cid: 9,
            json: Bytes::from_static(br#"{"name":"sub"}"#),
        },
        Op::PutToken {
            id: 100,
            json: Bytes::from_static(br#"{"cid":7,"acl":[{"topic":"devices/#"}]}"#),
        },
        Op::PutRetained { msg: retained },
        Op::PutRetained { msg: binary },
        Op::PutSession {
            record: SessionRecord {
                key: dev1.clone(),
                expiry_interval: 86_400,
                disconnected_at: Some(1_700_000_000_000_300),
                will: Some((will, 30)),
                created: 1_700_000_000_000_000,
                token_id: None,
            },
        },
        Op::PutSubscription {
            key: dev1.clone(),
            sub: SubscriptionRecord {
                filter: "devices/dev-1/cmd".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                },
                id: Some(12),
            },
        },
        Op::PutSubscription {
            key: dev1.clone(),
            sub: SubscriptionRecord {
                filter: "$share/workers/jobs/+".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                },
                id: None,
            },
        },
        Op::Enqueue {
            key: dev1.clone(),
            entry: queued(1, b"cmd-1", None),
        },
        Op::Enqueue {
            key: dev1.clone(),
            entry: queued(2, b"cmd-2", None),
        },
        Op::Enqueue {
            key: dev1.clone(),
            entry: queued(3, b"cmd-3", None),
        },
        Op::SetInflight {
            key: dev1.clone(),
            seq: 1,
            packet_id: 5,
            phase: InflightPhase::Released,
        },
        Op::SetInflight {
            key: dev1.clone(),
            seq: 2,
            packet_id: 6,
            phase: InflightPhase::Sent,
        },
        Op::PutIncoming {
            key: dev1.clone(),
            packet_id: 41,
        },
        Op::PutIncoming {
            key: dev1,
            packet_id: 42,
        },
        Op::PutSession {
            record: SessionRecord {
                key: other,
                expiry_interval: u32::MAX,
                disconnected_at: None,
                will: None,
                created: 1_700_000_000_000_400,
                token_id: None,
            },
        },
    ]
}

fn copy_into_temp(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(golden(fixture), dir.path().join(STORE_FILE)).expect("copy fixture");
    dir
}

#[test]
fn v1_store_loads_exactly() {
    let expected = reference(&v1_ops());
    assert_eq!(
        expected.sessions[0].queue[0].inflight,
        Some((5, InflightPhase::Released))
    );

    // Read-only load straight from the committed fixture: nothing is written.
    let before = files(&golden("v1"));
    assert_eq!(tern_store::load(&golden("v1")).expect("load v1"), expected);
    assert_eq!(files(&golden("v1")), before, "load changed the fixture");

    // A full open (as the broker does) of a copy.
    let dir = copy_into_temp("v1/tern.redb");
    let (backend, snapshot) = DiskBackend::open(dir.path()).expect("open v1");
    assert_eq!(snapshot, expected);
    drop(backend);
    assert_eq!(DiskBackend::open(dir.path()).expect("reopen").1, expected);
}

#[test]
fn v1_export_is_stable() {
    let expected = reference(&v1_ops());
    let mut out = Vec::new();
    tern_store::export(&expected, &mut out).expect("export");
    let committed = std::fs::read(golden("v1/export.jsonl")).expect("read export.jsonl");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&committed)
    );
    let ops = tern_store::import(committed.as_slice()).expect("import");
    assert_eq!(reference(&ops), expected);
}

/// Opens a damaged store (copied into a temp dir) and checks it is refused, with the files
/// byte-for-byte as they were, both by `open` and by the read-only `load`.
fn refused(dir: &Path) -> StoreError {
    let before = files(dir);
    let err = DiskBackend::open(dir).expect_err("a damaged store opened");
    assert_eq!(files(dir), before, "a refused store was changed ({err})");
    let again = tern_store::load(dir).expect_err("a damaged store loaded");
    assert_eq!(
        files(dir),
        before,
        "a refused store was changed by load ({again})"
    );
    assert_eq!(err.to_string(), again.to_string());
    err
}

fn assert_corrupt(err: &StoreError, fragment: &str) {
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::Corrupt { .. }),
        "not Corrupt: {text}"
    );
    assert!(
        text.contains(fragment),
        "`{text}` does not mention `{fragment}`"
    );
    assert!(text.contains("left untouched"), "{text}");
}

#[test]
fn truncated_store_is_refused() {
    let dir = copy_into_temp("corrupt/truncated.redb");
    let err = refused(dir.path());
    assert_corrupt(&err, "is corrupt");
}

#[test]
fn empty_store_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(STORE_FILE), b"").expect("write");
    assert_corrupt(&refused(dir.path()), "the file is empty");
}

#[test]
fn future_format_version_is_refused() {
    let dir = copy_into_temp("corrupt/future_version_3.redb");
    let err = refused(dir.path());
    assert!(
        matches!(
            err,
            StoreError::UnsupportedVersion {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("format version 3, this tern reads version 2"),
        "{err}"
    );
}

/// `corrupt/future_version.redb` was written as format 1 contents under a version record of 2,
/// when 2 was a future version. Format 2 only added tables, so it is a valid format 2 store.
#[test]
fn format_1_contents_under_version_2_load() {
    let expected = reference(&v1_ops());
    let dir = copy_into_temp("corrupt/future_version.redb");
    assert_eq!(tern_store::load(dir.path()).expect("load"), expected);
    assert_eq!(DiskBackend::open(dir.path()).expect("open").1, expected);
}

/// A format 1 store opens, is migrated to format 2 (the version record), and its per-entry
/// queue records keep working beside packs written after the migration.
#[test]
fn v1_store_is_migrated_and_keeps_working() {
    use tern_store::Backend;
    let dir = copy_into_temp("v1/tern.redb");
    let (mut backend, snapshot) = DiskBackend::open(dir.path()).expect("open v1");
    let mut ops = v1_ops();
    assert_eq!(snapshot, reference(&ops));
    let dev1 = key(7, "dev-1");
    let more = vec![
        // A format 1 entry acknowledged, another sent; then new entries, as packs.
        Op::Dequeue {
            key: dev1.clone(),
            seq: 1,
        },
        Op::SetInflight {
            key: dev1.clone(),
            seq: 3,
            packet_id: 9,
            phase: InflightPhase::Sent,
        },
        Op::Enqueue {
            key: dev1.clone(),
            entry: ops
                .iter()
                .find_map(|op| match op {
                    Op::Enqueue { entry, .. } if entry.seq == 3 => Some(QueuedRecord {
                        seq: 4,
                        inflight: None,
                        ..entry.clone()
                    }),
                    _ => None,
                })
                .expect("entry 3"),
        },
    ];
    backend.apply(&more).expect("apply");
    backend.sync().expect("sync");
    drop(backend);
    ops.extend(more);
    let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    {
        use redb::ReadableDatabase;
        let db = redb::Database::open(dir.path().join(STORE_FILE)).expect("open");
        let tx = db.begin_read().expect("read");
        let version = tx
            .open_table(meta)
            .expect("meta")
            .get("format_version")
            .expect("get")
            .map(|v| v.value().to_vec());
        assert_eq!(version.as_deref(), Some(2u32.to_be_bytes().as_slice()));
    }
    let (_, snapshot) = DiskBackend::open(dir.path()).expect("reopen");
    assert_eq!(snapshot, reference(&ops));
    let seqs: Vec<u64> = snapshot.sessions[0].queue.iter().map(|q| q.seq).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
}

#[test]
fn garbage_file_is_refused() {
    let dir = copy_into_temp("corrupt/garbage.redb");
    assert_corrupt(&refused(dir.path()), "is corrupt");
}

#[test]
fn damaged_data_page_is_refused() {
    let dir = copy_into_temp("corrupt/damaged_page.redb");
    assert_corrupt(&refused(dir.path()), "is corrupt");
}

#[test]
fn redb_file_of_another_program_is_refused() {
    let dir = copy_into_temp("corrupt/not_tern.redb");
    assert_corrupt(&refused(dir.path()), "not a tern store");
}

#[test]
fn undecodable_record_is_refused() {
    let dir = copy_into_temp("corrupt/bad_record.redb");
    let err = refused(dir.path());
    assert_corrupt(&err, "table queue");
    assert!(err.to_string().contains("unknown record version"), "{err}");
}

/// Any single damaged byte anywhere in the file: refused untouched, or (damage in free space)
/// opened with the same contents. Never a panic, never a silent change.
#[test]
fn any_damaged_byte_is_refused_or_harmless() {
    let good = std::fs::read(golden("v1/tern.redb")).expect("read fixture");
    let expected = reference(&v1_ops());
    let (mut refused_count, mut harmless) = (0, 0);
    for i in 0..97usize {
        let at = (i * 7919 + 13) % good.len();
        let mut bytes = good.clone();
        bytes[at] ^= 0x5a;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(STORE_FILE), &bytes).expect("write");
        let before = files(dir.path());
        match DiskBackend::open(dir.path()) {
            Ok((_, snapshot)) => {
                assert_eq!(
                    snapshot, expected,
                    "byte {at} damaged, store opened with other contents"
                );
                harmless += 1;
            }
            Err(err) => {
                assert_eq!(
                    files(dir.path()),
                    before,
                    "byte {at}: refused store changed ({err})"
                );
                refused_count += 1;
            }
        }
    }
    assert!(
        refused_count > 0 && harmless > 0,
        "{refused_count} refused, {harmless} harmless"
    );
}

// ---------------------------------------------------------------------------------------------
// How the fixtures were made: `cargo test -p tern-store --test golden -- --ignored`.

const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
const QUEUE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("queue");

fn compact(path: &Path) {
    let mut db = redb::Database::open(path).expect("open");
    while db.compact().expect("compact") {}
}

#[test]
#[ignore = "writes the committed fixtures"]
fn write_golden_files() {
    use tern_store::Backend;
    let v1 = golden("v1");
    let corrupt = golden("corrupt");
    std::fs::create_dir_all(&v1).expect("mkdir");
    std::fs::create_dir_all(&corrupt).expect("mkdir");

    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut backend, _) = DiskBackend::open(tmp.path()).expect("create");
    backend.apply(&v1_ops()).expect("apply");
    backend.sync().expect("sync");
    drop(backend);
    let store = tmp.path().join(STORE_FILE);
    compact(&store);
    std::fs::copy(&store, v1.join(STORE_FILE)).expect("copy");
    let good = std::fs::read(&store).expect("read");

    let mut export = Vec::new();
    tern_store::export(&reference(&v1_ops()), &mut export).expect("export");
    std::fs::write(v1.join("export.jsonl"), export).expect("write");

    std::fs::write(corrupt.join("truncated.redb"), &good[..good.len() / 2]).expect("write");

    // A deterministic run of pseudo-random bytes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(corrupt.join("garbage.redb"), garbage).expect("write");

    // Overwrite the bytes of a stored payload: the page checksum no longer matches.
    let needle = b"golden-retained-payload";
    let at = good
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("payload in the file");
    let mut damaged = good.clone();
    damaged[at..at + needle.len()].copy_from_slice(b"XXXXXXXXXXXXXXXXXXXXXXX");
    std::fs::write(corrupt.join("damaged_page.redb"), damaged).expect("write");

    // Valid redb files, wrong content.
    let edit = |name: &str, f: &dyn Fn(&redb::WriteTransaction)| {
        let path = corrupt.join(name);
        std::fs::copy(&store, &path).expect("copy");
        let db = redb::Database::open(&path).expect("open");
        let tx = db.begin_write().expect("tx");
        f(&tx);
        tx.commit().expect("commit");
        drop(db);
        compact(&path);
    };
    edit("future_version.redb", &|tx| {
        tx.open_table(META)
            .expect("meta")
            .insert("format_version", 2u32.to_be_bytes().as_slice())
            .expect("insert");
    });
    edit("bad_record.redb", &|tx| {
        use redb::ReadableTable;
        let mut q = tx.open_table(QUEUE).expect("queue");
        let k = q
            .first()
            .expect("first")
            .map(|(k, _)| k.value().to_vec())
            .expect("a queued entry");
        q.insert(k.as_slice(), [9u8, 1, 2, 3].as_slice())
            .expect("insert");
    });
    let path = corrupt.join("not_tern.redb");
    let _ = std::fs::remove_file(&path);
    let db = redb::Database::create(&path).expect("create");
    let tx = db.begin_write().expect("tx");
    tx.open_table(redb::TableDefinition::<u64, u64>::new("something_else"))
        .expect("table")
        .insert(1, 2)
        .expect("insert");
    tx.commit().expect("commit");
    drop(db);
    compact(&path);
}

/// `corrupt/future_version_3.redb`, added with format 2 (when `future_version.redb`'s 2 became
/// a version this build reads): the v1 fixture with a version record of 3.
/// `cargo test -p tern-store --test golden write_future_version_3 -- --ignored`.
#[test]
#[ignore = "writes a committed fixture"]
fn write_future_version_3() {
    let path = golden("corrupt/future_version_3.redb");
    std::fs::copy(golden("v1/tern.redb"), &path).expect("copy");
    let db = redb::Database::open(&path).expect("open");
    let tx = db.begin_write().expect("tx");
    tx.open_table(META)
        .expect("meta")
        .insert("format_version", 3u32.to_be_bytes().as_slice())
        .expect("insert");
    tx.commit().expect("commit");
    drop(db);
    compact(&path);
}

/// What `tests/golden/v2/tern.redb` holds: the v1 contents, then two more batches that write
/// format 2 queue packs. Frozen: the fixture was written from these batches.
fn v2_batches() -> Vec<Vec<Op>> {
    let dev1 = key(7, "dev-1");
    let template = v1_ops()
        .into_iter()
        .find_map(|op| match op {
            Op::Enqueue { entry, .. } => Some(entry),
            _ => None,
        })
        .expect("a v1 entry");
    let entry = |seq: u64| QueuedRecord {
        seq,
        msg: Arc::new(Message {
            payload: Bytes::from(format!("pack-{seq}")),
            timestamp: 1_700_000_000_001_000 + seq,
            ..(*template.msg).clone()
        }),
        inflight: None,
        ..template.clone()
    };
    let enqueue = |seq: u64| Op::Enqueue {
        key: dev1.clone(),
        entry: entry(seq),
    };
    vec![
        v1_ops(),
        // One pack of six (seqs 4-9).
        (4..=9).map(enqueue).collect(),
        // Its state record: one removed, one sent, one released; a run of two stays per-entry.
        vec![
            Op::Dequeue {
                key: dev1.clone(),
                seq: 4,
            },
            Op::SetInflight {
                key: dev1.clone(),
                seq: 5,
                packet_id: 7,
                phase: InflightPhase::Sent,
            },
            Op::SetInflight {
                key: dev1.clone(),
                seq: 6,
                packet_id: 8,
                phase: InflightPhase::Released,
            },
            enqueue(10),
            enqueue(11),
        ],
    ]
}

#[test]
fn v2_store_loads_exactly() {
    let all: Vec<Op> = v2_batches().concat();
    let expected = reference(&all);
    let seqs: Vec<u64> = expected.sessions[0].queue.iter().map(|q| q.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 8, 9, 10, 11]);
    let before = files(&golden("v2"));
    assert_eq!(tern_store::load(&golden("v2")).expect("load v2"), expected);
    assert_eq!(files(&golden("v2")), before, "load changed the fixture");
    let dir = copy_into_temp("v2/tern.redb");
    assert_eq!(DiskBackend::open(dir.path()).expect("open v2").1, expected);
    // The fixture holds a pack and its state record.
    {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let db = redb::Database::open(dir.path().join(STORE_FILE)).expect("open");
        let tx = db.begin_read().expect("read");
        for table in ["queue_packs", "queue_pack_states"] {
            let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new(table);
            assert_eq!(
                tx.open_table(def).expect(table).len().expect("len"),
                1,
                "{table}"
            );
        }
    }
    let mut out = Vec::new();
    tern_store::export(&expected, &mut out).expect("export");
    let committed = std::fs::read(golden("v2/export.jsonl")).expect("read export.jsonl");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&committed)
    );
}

/// `cargo test -p tern-store --test golden write_v2_golden -- --ignored` (once, with format 2).
#[test]
#[ignore = "writes the committed fixtures"]
fn write_v2_golden() {
    use tern_store::Backend;
    let v2 = golden("v2");
    std::fs::create_dir_all(&v2).expect("mkdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut backend, _) = DiskBackend::open(tmp.path()).expect("create");
    let batches = v2_batches();
    for batch in &batches {
        backend.apply(batch).expect("apply");
    }
    backend.sync().expect("sync");
    drop(backend);
    let store = tmp.path().join(STORE_FILE);
    compact(&store);
    std::fs::copy(&store, v2.join(STORE_FILE)).expect("copy");
    let mut export = Vec::new();
    tern_store::export(&reference(&batches.concat()), &mut export).expect("export");
    std::fs::write(v2.join("export.jsonl"), export).expect("write");
}
