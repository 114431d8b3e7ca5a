//! SIGKILL in the middle of a stream of writes loses no acknowledged entry and never damages
//! the store.
//!
//! The parent re-runs this test binary as a child (`crash_child`, selected by an environment
//! variable) that opens the store through `Store::start(.., FsyncPolicy::Always)` and enqueues
//! numbered entries for one session in batches of varying size, printing `acked N` once entry
//! N is durable. The parent kills it with SIGKILL mid-stream, reopens the store and checks that
//! the session's queue is exactly `1..=M` for some `M` at least the last acknowledged number:
//! nothing acknowledged lost, no batch half-applied. Each round adds a session to the same
//! store, so later rounds also reopen after earlier crashes.
//!
//! Odd rounds run with `FsyncPolicy::Never`, where an acknowledgement promises nothing: there
//! the store must still reopen cleanly with a queue that is a whole prefix, and keep what was
//! written more than a second before the kill (the backend commits durably at least once a
//! second).

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{key, msg};
use tern_codec::QoS;
use tern_store::{DiskBackend, FsyncPolicy, Op, QueuedRecord, SessionRecord, Store};

const DIR_VAR: &str = "TERN_STORE_CRASH_DIR";
const ROUND_VAR: &str = "TERN_STORE_CRASH_ROUND";
const ROUNDS: u64 = 5;

fn policy(round: u64) -> FsyncPolicy {
    if round.is_multiple_of(2) {
        FsyncPolicy::Always
    } else {
        FsyncPolicy::Never
    }
}

fn client_id(round: u64) -> String {
    format!("round-{round}")
}

/// The child: writes until killed (or 30 s pass).
#[test]
fn crash_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(DIR_VAR), std::env::var(ROUND_VAR)) else {
        return; // not running as a child
    };
    let round: u64 = round.parse().expect("round");
    let (backend, _) = DiskBackend::open(dir.as_ref()).expect("child open");
    let (store, _writer) = Store::start(Box::new(backend), policy(round));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let k = key(1, &client_id(round));
        let record = SessionRecord {
            key: k.clone(),
            expiry_interval: 3600,
            disconnected_at: None,
            will: None,
            created: round,
            token_id: None,
        };
        store.wait(store.submit(Op::PutSession { record })).await;
        let started = Instant::now();
        let mut seq = 0u64;
        // (ticket, last seq) of batches not yet reported durable.
        let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
        while started.elapsed() < Duration::from_secs(30) {
            let n = 1 + seq % 50;
            let ops: Vec<Op> = (0..n)
                .map(|_| {
                    seq += 1;
                    Op::Enqueue {
                        key: k.clone(),
                        entry: QueuedRecord {
                            seq,
                            msg: msg(1, "crash/test", b"0123456789abcdef0123456789abcdef", seq),
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            sub_ids: Default::default(),
                            inflight: None,
                        },
                    }
                })
                .collect();
            pending.push_back((store.submit_all(ops), seq));
            // Keep a few batches in flight so the writer groups them, as under load.
            while pending.len() > 3 || pending.front().is_some_and(|(t, _)| *t <= store.durable()) {
                let Some((ticket, last)) = pending.pop_front() else {
                    break;
                };
                store.wait(ticket).await;
                println!("acked {last}");
            }
            if policy(round) == FsyncPolicy::Always {
                tokio::task::yield_now().await;
            } else {
                // Nothing waits on an fsync here: pace the writes to keep the store small.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
}

/// Reads the child's acknowledgements until it is time to kill it; returns the last number
/// acknowledged and, for `never`, the last one acknowledged within 100 ms of the first.
fn read_until_kill(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    round: u64,
) -> (u64, u64) {
    let target = 200 + round * 700;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut acked, mut acked_early) = (0u64, 0u64);
    let mut first_ack: Option<Instant> = None;
    for line in lines {
        let line = line.expect("child output");
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().expect("number");
            let first = *first_ack.get_or_insert_with(Instant::now);
            if first.elapsed() < Duration::from_millis(100) {
                acked_early = acked;
            }
        }
        let done = match (policy(round), first_ack) {
            (FsyncPolicy::Always, _) => acked >= target,
            (_, Some(first)) => first.elapsed() >= Duration::from_millis(2500),
            (_, None) => false,
        };
        if done || Instant::now() > deadline {
            break;
        }
    }
    (acked, acked_early)
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut survived = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DIR_VAR, tmp.path())
            .env(ROUND_VAR, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Kill at a different point each round, after some entries were acknowledged; with
        // `never`, 2.5 s after the first, so that durable commits have happened.
        let (mut acked, acked_early) = read_until_kill(&mut lines, round);
        // A little later, so the kill lands at no particular point of a batch.
        let jitter = u64::from(Instant::now().elapsed().subsec_nanos() % 5000);
        std::thread::sleep(Duration::from_micros(jitter));
        child.kill().expect("SIGKILL");
        // Acknowledgements printed before the kill still count.
        for line in lines {
            if let Some(n) = line.expect("child output").strip_prefix("acked ") {
                acked = n.parse().expect("number");
            }
        }
        child.wait().expect("reap child");
        assert!(acked > 0, "round {round}: the child acknowledged nothing");

        let (backend, snapshot) =
            DiskBackend::open(tmp.path()).expect("the store reopens cleanly after SIGKILL");
        drop(backend);
        let queue_of = |r: u64| {
            snapshot
                .sessions
                .iter()
                .find(|s| s.record.key == key(1, &client_id(r)))
                .map(|s| s.queue.iter().map(|q| q.seq).collect::<Vec<u64>>())
        };
        let seqs = queue_of(round).expect("the session survived");
        let stored = seqs.len() as u64;
        assert!(
            seqs.iter().copied().eq(1..=stored),
            "round {round}: the queue has gaps"
        );
        let (promised, what) = match policy(round) {
            FsyncPolicy::Always => (acked, "acknowledged"),
            _ => (acked_early, "written over a second before the kill"),
        };
        assert!(
            stored >= promised,
            "round {round}: {promised} {what}, only {stored} stored"
        );
        survived.push((round, acked, stored));
        // Earlier rounds are unchanged.
        for (r, _, n) in &survived {
            let len = queue_of(*r).map(|q| q.len() as u64);
            assert_eq!(len, Some(*n), "round {r} changed after a later crash");
        }
    }
    eprintln!("(round, acknowledged, stored): {survived:?}");
}
