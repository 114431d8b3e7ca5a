//! Device messages (the devices layer's history): range reads on both backends, retention ops,
//! the per-device counters, and stores made before the device tables existed.

mod common;

use bytes::Bytes;
use common::{golden, reference};
use tern_store::{
    Backend, DiskBackend, FsyncPolicy, MemoryBackend, MessageKey, MessageRange, MessageStats, Op,
    STORE_FILE, Store, Visit,
};

fn device(id: u64) -> Op {
    Op::PutDevice {
        id,
        json: Bytes::from(format!("{{\"id\":{id},\"name\":\"d{id}\"}}")),
    }
}

fn append(device: u64, from: i64, n: i64, seq0: u64) -> Op {
    Op::AppendMessages {
        device,
        messages: (0..n)
            .map(|i| {
                let ts = from + i;
                (
                    MessageKey {
                        ts,
                        seq: seq0 + i as u64,
                    },
                    Bytes::from(format!("{{\"timestamp\":{ts}}}")),
                )
            })
            .collect(),
    }
}

/// Reads a range through any reader, up to `count`.
fn read(store: &Store, device: u64, from: i64, to: i64, reverse: bool, count: usize) -> Vec<i64> {
    let mut out = Vec::new();
    store
        .device_messages(
            &MessageRange {
                device,
                from,
                to,
                reverse,
            },
            &mut |k, _| {
                out.push(k.ts);
                if out.len() >= count {
                    Visit::Stop
                } else {
                    Visit::More
                }
            },
        )
        .expect("read");
    out
}

fn ops() -> Vec<Op> {
    vec![
        device(1),
        device(2),
        append(1, 100, 50, 1),
        append(2, 90, 20, 1000),
        // Two messages with the same timestamp: arrival order.
        Op::AppendMessages {
            device: 1,
            messages: vec![
                (
                    MessageKey { ts: 120, seq: 500 },
                    Bytes::from_static(b"{\"second\":1}"),
                ),
                (
                    MessageKey { ts: -5, seq: 501 },
                    Bytes::from_static(b"{\"early\":1}"),
                ),
            ],
        },
        // Messages of a device that does not exist are ignored.
        append(3, 0, 5, 1),
    ]
}

async fn check_reads(store: &Store) {
    assert_eq!(
        read(store, 1, 110, 113, false, 100),
        vec![110, 111, 112, 113]
    );
    assert_eq!(read(store, 1, 110, 113, true, 2), vec![113, 112]);
    assert_eq!(read(store, 1, i64::MIN, i64::MAX, true, 1), vec![149]);
    assert_eq!(read(store, 1, i64::MIN, 100, false, 100), vec![-5, 100]);
    assert_eq!(read(store, 1, 120, 120, false, 100), vec![120, 120]);
    assert_eq!(read(store, 2, 0, 1000, false, 100).len(), 20);
    assert!(read(store, 3, i64::MIN, i64::MAX, false, 100).is_empty());
    assert!(
        read(store, 1, 10, 5, false, 100).is_empty(),
        "from after to"
    );
}

async fn run(backend: Box<dyn Backend>) -> Store {
    let (store, _writer) = Store::start(backend, FsyncPolicy::Always);
    let t = store.submit_all(ops());
    store.wait(t).await;
    check_reads(&store).await;
    check_since(&store);
    store
}

/// What arrived since a sequence: every owner's messages, in arrival order.
fn check_since(store: &Store) {
    let mut seen = Vec::new();
    store
        .messages_since(500, &mut |owner, key, _| {
            seen.push((owner, key.seq));
            Visit::More
        })
        .expect("since");
    let mut expected = vec![(1, 500), (1, 501)];
    expected.extend((1000..1020).map(|seq| (2, seq)));
    assert_eq!(seen, expected);
    let mut first = None;
    store
        .messages_since(1010, &mut |owner, key, json| {
            first = Some((owner, key, json.to_vec()));
            Visit::Stop
        })
        .expect("since");
    assert_eq!(
        first,
        Some((
            2,
            MessageKey { ts: 100, seq: 1010 },
            b"{\"timestamp\":100}".to_vec()
        ))
    );
}

#[tokio::test]
async fn range_reads_on_the_memory_backend() {
    let backend = MemoryBackend::new();
    let store = run(Box::new(backend.clone())).await;
    let t = store.submit(Op::DelMessages {
        device: 1,
        from: 100,
        to: 109,
    });
    store.wait(t).await;
    assert_eq!(
        read(&store, 1, i64::MIN, 111, false, 100),
        vec![-5, 110, 111]
    );
    let snap = backend.load();
    assert_eq!(snap.devices.len(), 2);
    assert_eq!(snap.message_stats.len(), 2);
    assert_eq!(snap.message_stats[0].1.count, 42);
}

#[tokio::test]
async fn range_reads_on_the_disk_backend_match_the_memory_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, _) = DiskBackend::open(dir.path()).expect("open");
    let store = run(Box::new(disk)).await;
    let more = [
        Op::DelMessages {
            device: 1,
            from: 100,
            to: 109,
        },
        Op::TrimMessages {
            device: 2,
            max_bytes: 5 * 17,
        },
        Op::PutTelemetry {
            device: 1,
            json: Bytes::from_static(b"{\"a\":{\"value\":1,\"ts\":2}}"),
        },
        Op::PutGroup {
            id: 9,
            json: Bytes::from_static(b"{\"id\":9}"),
        },
        Op::DelMessageKeys {
            device: 1,
            keys: vec![
                MessageKey { ts: 112, seq: 13 },
                MessageKey { ts: 999, seq: 1 },
            ],
        },
    ];
    let t = store.submit_all(more.clone());
    store.wait(t).await;
    assert_eq!(
        read(&store, 1, i64::MIN, 111, false, 100),
        vec![-5, 110, 111]
    );
    assert_eq!(
        read(&store, 1, 111, 114, false, 100),
        vec![111, 113, 114],
        "112 deleted by key"
    );
    // Rotation keeps the newest messages that fit: 17 bytes each.
    assert_eq!(
        read(&store, 2, 0, 1000, false, 100),
        vec![105, 106, 107, 108, 109]
    );
    store.close();
    drop(store);
    // Let the writer release the directory lock.
    for _ in 0..100 {
        if let Ok(snapshot) = tern_store::load(dir.path()) {
            let mut all = ops();
            all.extend(more);
            assert_eq!(snapshot, reference(&all));
            assert_eq!(
                snapshot.message_stats[1],
                (
                    2,
                    MessageStats {
                        count: 5,
                        bytes: 85
                    }
                )
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the store stayed locked");
}

#[tokio::test]
async fn deleting_a_device_deletes_its_messages() {
    let backend = MemoryBackend::new();
    let store = run(Box::new(backend.clone())).await;
    let t = store.submit(Op::DelDevice { id: 1 });
    store.wait(t).await;
    assert!(read(&store, 1, i64::MIN, i64::MAX, false, 100).is_empty());
    assert_eq!(read(&store, 2, 0, 1000, false, 100).len(), 20);
    assert_eq!(backend.load().message_stats.len(), 1);
}

#[test]
fn a_store_made_before_the_device_tables_opens_and_takes_devices() {
    // The v1 fixture predates the devices layer: its tables are created on the first write.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(golden("v1/tern.redb"), dir.path().join(STORE_FILE)).expect("copy");
    let (mut backend, snapshot) = DiskBackend::open(dir.path()).expect("open v1");
    assert!(snapshot.devices.is_empty() && snapshot.message_stats.is_empty());
    let reader = backend.reader().expect("a reader");
    let mut seen = 0;
    reader
        .device_messages(
            &MessageRange {
                device: 1,
                from: i64::MIN,
                to: i64::MAX,
                reverse: false,
            },
            &mut |_, _| {
                seen += 1;
                Visit::More
            },
        )
        .expect("an absent table reads as empty");
    assert_eq!(seen, 0);
    drop(reader);
    backend.apply(&ops()).expect("apply");
    backend.sync().expect("sync");
    drop(backend);
    let (_, snapshot) = DiskBackend::open(dir.path()).expect("reopen");
    assert_eq!(snapshot.devices.len(), 2);
    assert_eq!(snapshot.message_stats[1].1.count, 20);
}

#[test]
fn gw_store_loads_exactly() {
    let expected = reference(&gw_ops());
    assert_eq!(tern_store::load(&golden("v1-gw")).expect("load"), expected);
}

/// What `tests/golden/v1-gw/tern.redb` holds (format 1 with the device tables). Frozen.
fn gw_ops() -> Vec<Op> {
    let mut all = ops();
    all.push(Op::PutGroup {
        id: 9,
        json: Bytes::from_static(b"{\"id\":9,\"name\":\"fleet\"}"),
    });
    all.push(Op::PutTelemetry {
        device: 1,
        json: Bytes::from_static(b"{\"ident\":{\"value\":\"x\",\"ts\":149}}"),
    });
    all
}

/// A format 1 store (messages in one table in device order) exports as it is, and is converted
/// to format 2's data and index tables when opened for writing: every message reads back as
/// before, the counters hold, and the conversion is durable (a second open finds format 2).
#[tokio::test]
async fn a_format_1_store_is_converted_with_every_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        golden("v1-gw").join(STORE_FILE),
        dir.path().join(STORE_FILE),
    )
    .expect("copy");
    let mut before = Vec::new();
    tern_store::export_dir(dir.path(), &mut before).expect("export of format 1");
    let text = String::from_utf8(before.clone()).expect("UTF-8");
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(r#""kind":"message""#))
            .count(),
        72,
        "{text}"
    );

    let (disk, snapshot) = DiskBackend::open(dir.path()).expect("open and convert");
    assert_eq!(snapshot, reference(&gw_ops()));
    let (store, writer) = Store::start(Box::new(disk), FsyncPolicy::Always);
    check_reads(&store).await;
    assert_eq!(store.message_stats(1).expect("stats").count, 52);
    // Writes after the conversion go to the new tables beside the converted messages.
    let t = store.submit(append(2, 200, 3, 2000));
    store.wait(t).await;
    assert_eq!(read(&store, 2, 0, 1000, false, 100).len(), 23);
    store.close();
    writer.join();

    let mut after = Vec::new();
    tern_store::export_dir(dir.path(), &mut after).expect("export of format 2");
    let after = String::from_utf8(after).expect("UTF-8");
    let messages = |t: &str| {
        t.lines()
            .filter(|l| l.contains(r#""kind":"message""#))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let expected = messages(&text);
    let got = messages(&after);
    assert_eq!(got.len(), 75);
    for line in &expected {
        assert!(got.contains(line), "{line} missing after the conversion");
    }
    let (_, again) = DiskBackend::open(dir.path()).expect("reopen format 2");
    assert_eq!(again.message_stats.len(), snapshot.message_stats.len());
}

#[test]
#[ignore = "writes the committed fixture"]
fn write_gw_golden_file() {
    let out = golden("v1-gw");
    std::fs::create_dir_all(&out).expect("mkdir");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut backend, _) = DiskBackend::open(tmp.path()).expect("create");
    backend.apply(&gw_ops()).expect("apply");
    backend.sync().expect("sync");
    drop(backend);
    let store = tmp.path().join(STORE_FILE);
    let mut db = redb::Database::open(&store).expect("open");
    while db.compact().expect("compact") {}
    drop(db);
    std::fs::copy(&store, out.join(STORE_FILE)).expect("copy");
}

#[tokio::test]
async fn messages_in_later_batches_than_their_device_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, _) = DiskBackend::open(dir.path()).expect("open");
    let (store, _writer) = Store::start(Box::new(disk), FsyncPolicy::Always);
    let t = store.submit(device(1));
    store.wait(t).await;
    let t = store.submit(append(1, 100, 3, 1));
    store.wait(t).await;
    assert_eq!(
        read(&store, 1, i64::MIN, i64::MAX, false, 100),
        vec![100, 101, 102]
    );
    assert_eq!(store.message_stats(1).expect("stats").count, 3);
    let mut docs = Vec::new();
    store
        .device_messages(
            &MessageRange {
                device: 1,
                from: 101,
                to: 101,
                reverse: false,
            },
            &mut |_, json| {
                docs.push(json.to_vec());
                Visit::More
            },
        )
        .expect("read");
    assert_eq!(
        docs,
        vec![b"{\"timestamp\":101}".to_vec()],
        "the document as appended"
    );
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use tern_store::{MemoryBackend, Reader};

    fn arb_key() -> impl Strategy<Value = MessageKey> {
        (-5i64..20, 0u64..4).prop_map(|(ts, seq)| MessageKey { ts, seq })
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..4).prop_map(device),
            (1u64..4).prop_map(|id| Op::DelDevice { id }),
            (
                1u64..4,
                prop::collection::vec((arb_key(), "[a-z]{0,12}"), 0..6)
            )
                .prop_map(|(device, msgs)| Op::AppendMessages {
                    device,
                    messages: msgs
                        .into_iter()
                        .map(|(k, s)| (k, Bytes::from(format!("{{\"v\":\"{s}\"}}"))))
                        .collect(),
                }),
            (1u64..4, -6i64..21, -6i64..21).prop_map(|(device, from, to)| Op::DelMessages {
                device,
                from,
                to
            }),
            (1u64..4, 0u64..200)
                .prop_map(|(device, max_bytes)| Op::TrimMessages { device, max_bytes }),
            (1u64..4, prop::collection::vec(arb_key(), 0..4))
                .prop_map(|(device, keys)| Op::DelMessageKeys { device, keys }),
        ]
    }

    fn all(
        r: &dyn Reader,
        device: u64,
        from: i64,
        to: i64,
        reverse: bool,
    ) -> Vec<(MessageKey, Vec<u8>)> {
        let mut out = Vec::new();
        r.device_messages(
            &MessageRange {
                device,
                from,
                to,
                reverse,
            },
            &mut |k, json| {
                out.push((k, json.to_vec()));
                Visit::More
            },
        )
        .expect("read");
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random device ops in random batches: the disk backend's snapshot, range reads and
        /// counters match the in-memory reference model.
        #[test]
        fn disk_range_reads_match_the_reference_model(
            batches in prop::collection::vec(prop::collection::vec(arb_op(), 0..10), 1..6),
            reads in prop::collection::vec((1u64..4, -6i64..21, -6i64..21, any::<bool>()), 1..8),
        ) {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (mut disk, _) = DiskBackend::open(tmp.path()).expect("open");
            let mut memory = MemoryBackend::new();
            for ops in &batches {
                disk.apply(ops).expect("apply");
                memory.apply(ops).expect("apply");
            }
            let (dr, mr) = (disk.reader().expect("reader"), memory.reader().expect("reader"));
            for (device, from, to, reverse) in reads {
                prop_assert_eq!(
                    all(&*dr, device, from, to, reverse),
                    all(&*mr, device, from, to, reverse)
                );
            }
            for device in 1..4 {
                prop_assert_eq!(
                    dr.message_stats(device).expect("stats"),
                    mr.message_stats(device).expect("stats")
                );
            }
            drop(dr);
            disk.sync().expect("sync");
            drop(disk);
            let all_ops: Vec<Op> = batches.into_iter().flatten().collect();
            prop_assert_eq!(tern_store::load(tmp.path()).expect("load"), reference(&all_ops));
        }
    }
}

#[test]
fn export_and_import_carry_device_messages() {
    let src = tempfile::tempdir().expect("tempdir");
    let (mut disk, _) = DiskBackend::open(src.path()).expect("open");
    disk.apply(&ops()).expect("apply");
    disk.sync().expect("sync");
    drop(disk);
    let mut out = Vec::new();
    tern_store::export_dir(src.path(), &mut out).expect("export");
    let text = String::from_utf8(out.clone()).expect("UTF-8");
    assert!(
        text.contains(r#"{"kind":"message","device":1,"ts":-5,"seq":501,"json":"{\"early\":1}"}"#),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(r#""kind":"message""#))
            .count(),
        72
    );

    let ops = tern_store::import(out.as_slice()).expect("import");
    let dst = tempfile::tempdir().expect("tempdir");
    let (mut disk, _) = DiskBackend::open(dst.path()).expect("open");
    disk.apply(&ops).expect("apply");
    disk.sync().expect("sync");
    let reader = disk.reader().expect("reader");
    let mut seen = Vec::new();
    reader
        .device_messages(
            &MessageRange {
                device: 1,
                from: i64::MIN,
                to: i64::MAX,
                reverse: false,
            },
            &mut |k, json| {
                seen.push((k, json.to_vec()));
                Visit::More
            },
        )
        .expect("read");
    assert_eq!(seen.len(), 52);
    assert_eq!(
        seen[0],
        (MessageKey { ts: -5, seq: 501 }, b"{\"early\":1}".to_vec())
    );
    drop(reader);
    drop(disk);
    assert_eq!(
        tern_store::load(dst.path()).expect("load"),
        tern_store::load(src.path()).expect("load")
    );
}

/// Channel buffers share the message table under `channel_key`: kept only while the channel
/// exists, counted, read by range, exported and imported, and gone with the channel.
async fn channel_buffer_on(backend: Box<dyn Backend>) -> Store {
    let (store, _writer) = Store::start(backend, FsyncPolicy::Always);
    let key = tern_store::channel_key(7);
    let t = store.submit_all([
        append(key, 0, 3, 1), // before the channel exists: ignored
        Op::PutChannel {
            id: 7,
            json: Bytes::from_static(b"{\"id\":7}"),
        },
        device(7),
        append(key, 10, 4, 10),
        append(7, 50, 2, 20),
    ]);
    store.wait(t).await;
    assert_eq!(
        read(&store, key, i64::MIN, i64::MAX, false, 100),
        vec![10, 11, 12, 13]
    );
    assert_eq!(
        read(&store, 7, i64::MIN, i64::MAX, false, 100),
        vec![50, 51]
    );
    assert_eq!(store.message_stats(key).expect("stats").count, 4);
    assert_eq!(tern_store::channel_of(key), Some(7));
    assert_eq!(tern_store::channel_of(7), None);
    store
}

#[tokio::test]
async fn channel_buffers_on_both_backends() {
    let memory = MemoryBackend::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, _) = DiskBackend::open(dir.path()).expect("open");
    let key = tern_store::channel_key(7);
    for store in [
        channel_buffer_on(Box::new(memory.clone())).await,
        channel_buffer_on(Box::new(disk)).await,
    ] {
        let t = store.submit(Op::DelChannel { id: 7 });
        store.wait(t).await;
        assert!(read(&store, key, i64::MIN, i64::MAX, false, 100).is_empty());
        assert_eq!(store.message_stats(key).map(|s| s.count).unwrap_or(0), 0);
        assert_eq!(
            read(&store, 7, i64::MIN, i64::MAX, false, 100),
            vec![50, 51],
            "the device with the same id keeps its messages"
        );
    }
    assert!(memory.load().channels.is_empty());
}

/// Entity logs share the message table under `log_key`: kept only while their device or
/// channel exists, apart from its messages and buffer, and gone with it.
#[tokio::test]
async fn entity_logs_on_both_backends() {
    let memory = MemoryBackend::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, _) = DiskBackend::open(dir.path()).expect("open");
    let dev_log = tern_store::log_key(tern_store::LOG_ORIGIN_DEVICE, 7);
    let chan_log = tern_store::log_key(tern_store::LOG_ORIGIN_CHANNEL, 7);
    for backend in [
        Box::new(memory.clone()) as Box<dyn Backend>,
        Box::new(disk) as Box<dyn Backend>,
    ] {
        let (store, _writer) = Store::start(backend, FsyncPolicy::Always);
        let t = store.submit_all([
            append(dev_log, 0, 2, 1), // before the device exists: ignored
            append(tern_store::log_key(12, 7), 0, 2, 1), // a stream: not kept
            device(7),
            Op::PutChannel {
                id: 7,
                json: Bytes::from_static(b"{\"id\":7}"),
            },
            append(7, 50, 2, 10),
            append(dev_log, 10, 3, 20),
            append(chan_log, 30, 1, 30),
        ]);
        store.wait(t).await;
        assert_eq!(
            read(&store, 7, i64::MIN, i64::MAX, false, 100),
            vec![50, 51]
        );
        assert_eq!(
            read(&store, dev_log, i64::MIN, i64::MAX, false, 100),
            vec![10, 11, 12]
        );
        assert_eq!(
            read(&store, chan_log, i64::MIN, i64::MAX, false, 100),
            vec![30]
        );
        assert!(
            read(
                &store,
                tern_store::log_key(12, 7),
                i64::MIN,
                i64::MAX,
                false,
                100
            )
            .is_empty()
        );
        assert_eq!(store.message_stats(dev_log).expect("stats").count, 3);
        assert_eq!(store.message_stats(7).expect("stats").count, 2);

        let t = store.submit(Op::DelDevice { id: 7 });
        store.wait(t).await;
        assert!(read(&store, dev_log, i64::MIN, i64::MAX, false, 100).is_empty());
        assert_eq!(
            store.message_stats(dev_log).map(|s| s.count).unwrap_or(0),
            0
        );
        assert_eq!(
            read(&store, chan_log, i64::MIN, i64::MAX, false, 100),
            vec![30]
        );
        let t = store.submit(Op::DelChannel { id: 7 });
        store.wait(t).await;
        assert!(read(&store, chan_log, i64::MIN, i64::MAX, false, 100).is_empty());
    }
}

/// An account's REST call and MQTT sessions logs (origin types 1 and 14) are kept only while
/// the account exists, and go with it.
#[tokio::test]
async fn account_logs_on_both_backends() {
    let memory = MemoryBackend::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, _) = DiskBackend::open(dir.path()).expect("open");
    let rest = tern_store::log_key(tern_store::LOG_ORIGIN_CUSTOMER, 5);
    let mqtt = tern_store::log_key(tern_store::LOG_ORIGIN_MQTT, 5);
    let other = tern_store::log_key(tern_store::LOG_ORIGIN_CUSTOMER, 6);
    for backend in [
        Box::new(memory.clone()) as Box<dyn Backend>,
        Box::new(disk) as Box<dyn Backend>,
    ] {
        let (store, _writer) = Store::start(backend, FsyncPolicy::Always);
        let t = store.submit_all([
            append(rest, 0, 1, 1), // before the account exists: ignored
            Op::PutAccount {
                cid: 5,
                json: Bytes::from_static(b"{\"id\":5}"),
            },
            Op::PutAccount {
                cid: 6,
                json: Bytes::from_static(b"{\"id\":6}"),
            },
            append(rest, 10, 2, 10),
            append(mqtt, 20, 1, 20),
            append(other, 30, 1, 30),
        ]);
        store.wait(t).await;
        assert_eq!(
            read(&store, rest, i64::MIN, i64::MAX, false, 100),
            vec![10, 11]
        );
        assert_eq!(read(&store, mqtt, i64::MIN, i64::MAX, false, 100), vec![20]);
        let t = store.submit(Op::DelAccount { cid: 5 });
        store.wait(t).await;
        assert!(read(&store, rest, i64::MIN, i64::MAX, false, 100).is_empty());
        assert!(read(&store, mqtt, i64::MIN, i64::MAX, false, 100).is_empty());
        assert_eq!(store.message_stats(rest).map(|s| s.count).unwrap_or(0), 0);
        assert_eq!(
            read(&store, other, i64::MIN, i64::MAX, false, 100),
            vec![30],
            "another account keeps its log"
        );
    }
}

/// A device's and a channel's logs travel through export and import as message lines under
/// their log keys.
#[test]
fn export_and_import_carry_entity_logs() {
    let dev_log = tern_store::log_key(tern_store::LOG_ORIGIN_DEVICE, 3);
    let chan_log = tern_store::log_key(tern_store::LOG_ORIGIN_CHANNEL, 3);
    let src = tempfile::tempdir().expect("tempdir");
    let (mut disk, _) = DiskBackend::open(src.path()).expect("open");
    disk.apply(&[
        device(3),
        Op::PutChannel {
            id: 3,
            json: Bytes::from_static(b"{\"id\":3}"),
        },
        append(3, 100, 2, 1),
        append(dev_log, 10, 3, 10),
        append(chan_log, 20, 2, 20),
    ])
    .expect("apply");
    disk.sync().expect("sync");
    drop(disk);
    let mut out = Vec::new();
    tern_store::export_dir(src.path(), &mut out).expect("export");
    let ops = tern_store::import(out.as_slice()).expect("import");
    let dst = tempfile::tempdir().expect("tempdir");
    let (mut disk, _) = DiskBackend::open(dst.path()).expect("open");
    disk.apply(&ops).expect("apply");
    disk.sync().expect("sync");
    let reader = disk.reader().expect("reader");
    let count = |key: u64| {
        let mut n = 0;
        reader
            .device_messages(
                &MessageRange {
                    device: key,
                    from: i64::MIN,
                    to: i64::MAX,
                    reverse: false,
                },
                &mut |_, _| {
                    n += 1;
                    Visit::More
                },
            )
            .expect("read");
        n
    };
    assert_eq!((count(3), count(dev_log), count(chan_log)), (2, 3, 2));
    drop(reader);
    drop(disk);
    assert_eq!(
        tern_store::load(dst.path()).expect("load"),
        tern_store::load(src.path()).expect("load")
    );
}

/// A stream's queue and log share the message table under `stream_key` and its log key: kept
/// only while the stream exists, a delivered range removed with one `DelMessages`, gone with
/// the stream, and carried through export and import.
#[tokio::test]
async fn stream_queues_on_both_backends() {
    let memory = MemoryBackend::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, _) = DiskBackend::open(dir.path()).expect("open");
    let queue = tern_store::stream_key(7);
    let log = tern_store::log_key(tern_store::LOG_ORIGIN_STREAM, 7);
    for backend in [
        Box::new(memory.clone()) as Box<dyn Backend>,
        Box::new(disk) as Box<dyn Backend>,
    ] {
        let (store, _writer) = Store::start(backend, FsyncPolicy::Always);
        let t = store.submit_all([
            append(queue, 0, 2, 1), // before the stream exists: ignored
            append(log, 0, 2, 1),
            device(7),
            Op::PutStream {
                id: 7,
                json: Bytes::from_static(b"{\"id\":7}"),
            },
            append(7, 50, 2, 10),
            append(queue, 100, 5, 20),
            append(log, 10, 1, 30),
        ]);
        store.wait(t).await;
        assert_eq!(
            read(&store, queue, i64::MIN, i64::MAX, false, 100),
            vec![100, 101, 102, 103, 104]
        );
        assert_eq!(read(&store, log, i64::MIN, i64::MAX, false, 100), vec![10]);
        let t = store.submit(Op::DelMessages {
            device: queue,
            from: i64::MIN,
            to: 102,
        });
        store.wait(t).await;
        assert_eq!(
            read(&store, queue, i64::MIN, i64::MAX, false, 100),
            vec![103, 104]
        );
        assert_eq!(store.message_stats(queue).expect("stats").count, 2);
        let t = store.submit(Op::DelStream { id: 7 });
        store.wait(t).await;
        assert!(read(&store, queue, i64::MIN, i64::MAX, false, 100).is_empty());
        assert!(read(&store, log, i64::MIN, i64::MAX, false, 100).is_empty());
        assert_eq!(store.message_stats(queue).map(|s| s.count).unwrap_or(0), 0);
        assert_eq!(
            read(&store, 7, i64::MIN, i64::MAX, false, 100),
            vec![50, 51],
            "the device with the same id keeps its messages"
        );
    }
    assert!(memory.load().streams.is_empty());

    // Export and import carry the stream and its queue.
    let src = tempfile::tempdir().expect("tempdir");
    let (mut disk, _) = DiskBackend::open(src.path()).expect("open");
    disk.apply(&[
        Op::PutStream {
            id: 3,
            json: Bytes::from_static(b"{\"id\":3}"),
        },
        append(tern_store::stream_key(3), 10, 3, 10),
    ])
    .expect("apply");
    disk.sync().expect("sync");
    drop(disk);
    let mut out = Vec::new();
    tern_store::export_dir(src.path(), &mut out).expect("export");
    let ops = tern_store::import(out.as_slice()).expect("import");
    let dst = tempfile::tempdir().expect("tempdir");
    let (mut disk, _) = DiskBackend::open(dst.path()).expect("open");
    disk.apply(&ops).expect("apply");
    disk.sync().expect("sync");
    drop(disk);
    let loaded = tern_store::load(dst.path()).expect("load");
    assert_eq!(loaded.streams.len(), 1);
    assert_eq!(loaded, tern_store::load(src.path()).expect("load"));
}
