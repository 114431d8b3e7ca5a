//! Device message history in the store (tern-gw's messages): appending through the `Store`
//! (group commit, redb, `fsync = never` so the disk's sync time does not hide the engine), and
//! range reads out of one device's 1,000,000 stored messages: a 1,000-message window from the
//! middle, and the last message (`reverse`, `count` 1). Setup writes the million in batches of
//! 10,000 (a few seconds).

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tern_store::{DiskBackend, FsyncPolicy, MessageKey, MessageRange, Op, Store, Visit};

const DEVICE: u64 = 1;
const STORED: i64 = 1_000_000;
const T0: i64 = 1_700_000_000_000_000;

/// A telematics-sized message (~150 bytes of JSON), one per second.
fn message(i: i64) -> (MessageKey, Bytes) {
    let json = format!(
        "{{\"ident\":\"354\",\"timestamp\":{},\"position.latitude\":54.{:06},\"position.longitude\":25.{:06},\"position.speed\":{},\"battery.voltage\":12.{},\"device.id\":1}}",
        (T0 / 1_000_000) + i,
        i % 1_000_000,
        (i * 7) % 1_000_000,
        i % 120,
        i % 10
    );
    (
        MessageKey {
            ts: T0 + i * 1_000_000,
            seq: i as u64,
        },
        Bytes::from(json),
    )
}

fn append(store: &Store, rt: &tokio::runtime::Runtime, from: i64, n: i64) {
    let t = store.submit(Op::AppendMessages {
        device: DEVICE,
        messages: (from..from + n).map(message).collect(),
    });
    rt.block_on(store.wait(t));
}

fn read(store: &Store, from: i64, to: i64, reverse: bool, count: usize) -> usize {
    let mut n = 0usize;
    let mut bytes = 0usize;
    store
        .device_messages(
            &MessageRange {
                device: DEVICE,
                from,
                to,
                reverse,
            },
            &mut |_, json| {
                n += 1;
                bytes += json.len();
                if n >= count { Visit::Stop } else { Visit::More }
            },
        )
        .expect("read");
    black_box(bytes);
    n
}

fn device_messages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, _) = DiskBackend::open(dir.path()).expect("open");
    let (store, writer) = Store::start(Box::new(disk), FsyncPolicy::Never);
    let t = store.submit(Op::PutDevice {
        id: DEVICE,
        json: Bytes::from_static(b"{}"),
    });
    rt.block_on(store.wait(t));
    let started = Instant::now();
    for batch in 0..STORED / 10_000 {
        append(&store, &rt, batch * 10_000, 10_000);
    }
    eprintln!(
        "setup: {STORED} messages stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut g = c.benchmark_group("device_messages");
    g.throughput(Throughput::Elements(1000));
    let mut next = STORED;
    g.bench_function("append 1000 (one op, until written)", |b| {
        b.iter_batched(
            || {
                let from = next;
                next += 1000;
                from
            },
            |from| append(&store, &rt, from, 1000),
            BatchSize::SmallInput,
        )
    });
    let mid = T0 + (STORED / 2) * 1_000_000;
    g.bench_function("read a 1000-message window of 1M", |b| {
        b.iter(|| {
            let n = read(&store, mid, mid + 999 * 1_000_000, false, usize::MAX);
            assert_eq!(n, 1000);
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("read the last message of 1M", |b| {
        b.iter(|| assert_eq!(read(&store, i64::MIN, i64::MAX, true, 1), 1))
    });
    g.finish();
    store.close();
    writer.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = device_messages
}
criterion_main!(benches);
