//! tern-store: what survives a restart.
//!
//! The broker keeps its live state in memory and mirrors every change that must survive a
//! restart as an [`Op`] submitted to the [`Store`]. A writer thread applies the pending ops in
//! one transaction per batch (group commit) and syncs them per [`FsyncPolicy`]; a QoS 1/2
//! PUBLISH is acknowledged only once the ticket of its ops is durable. At start the broker loads
//! a [`Snapshot`] and rebuilds sessions, queues and retained messages from it.
//!
//! Layout:
//! - `model`: messages, session keys and the stored records
//! - `op`: the changes the broker submits
//! - `devices`: device messages, channel buffers and entity logs (range-read tables) and the
//!   devices layer's records
//! - `handle`: the `Store` handle, the `Backend` trait and the group-commit writer thread
//! - `memory`: the in-memory backend (reference model, used by tests)
//! - `disk`: the on-disk backend (redb): open, verify, load, apply, sync
//! - `format`: the on-disk format: key layouts and record encodings (version 1)
//! - `fault`: a backend wrapper that fails on demand (tests of a failing disk)
//! - `export`: the JSON Lines export and import (`tern store export` / `import`)
//! - `error`: store errors

mod devices;
mod disk;
mod error;
mod export;
mod fault;
mod format;
mod handle;
mod memory;
mod model;
mod op;

pub use devices::{
    CHANNEL_KEY_BIT, COMMANDS_KEY_BIT, QUEUE_KEY_BIT, STREAM_KEY_BIT, WEBHOOK_KEY_BIT, channel_key,
    channel_of, commands_key, device_of, queue_key, stream_key, stream_of, webhook_key, webhook_of,
};
pub use devices::{DeviceId, DeviceMessage, MessageKey, MessageRange, MessageStats, Reader, Visit};
pub use devices::{
    KeyOwner, LOG_KEY_BIT, LOG_ORIGIN_BITS, LOG_ORIGIN_CHANNEL, LOG_ORIGIN_CUSTOMER,
    LOG_ORIGIN_DEVICE, LOG_ORIGIN_MQTT, LOG_ORIGIN_STREAM, LOG_ORIGIN_WEBHOOK, log_key, log_of,
};
pub use disk::{DiskBackend, STORE_FILE, export_dir, load};
pub use error::StoreError;
pub use export::{EXPORT_VERSION, export, import};
pub use fault::{FaultSwitch, FaultyBackend};
pub use format::FORMAT_VERSION;
/// A whole message (topic, payload, flags, account, timestamp, expiry, v5 properties) as one
/// versioned record: the retained record of the store, also what the cluster sends between
/// nodes (`tern-cluster`), so one encoding serves both.
pub use format::{
    FormatError, decode_retained as decode_message_record, encode_retained as encode_message_record,
};
/// A session's record and a subscription's, as the store keeps them: also what the cluster
/// keeps of a persistent session (`tern-cluster`).
pub use format::{
    decode_session as decode_session_record, decode_subscription as decode_subscription_record,
    encode_session as encode_session_record, encode_subscription as encode_subscription_record,
};
pub use handle::{Backend, DEFAULT_MAX_QUEUED, FsyncPolicy, Store, Ticket, Writer};
pub use memory::{MemoryBackend, MemorySession, MemoryState};
pub use model::*;
pub use op::Op;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn group_commit_advances_the_durable_ticket() {
        let backend = MemoryBackend::new();
        let (store, writer) = Store::start(Box::new(backend.clone()), FsyncPolicy::Always);
        let mut last = 0;
        for id in 0..100 {
            last = store.submit(Op::PutToken {
                id,
                json: bytes::Bytes::from_static(b"{}"),
            });
        }
        assert_eq!(last, 100);
        tokio::time::timeout(Duration::from_secs(5), store.wait(last))
            .await
            .expect("durable");
        assert_eq!(backend.load().tokens.len(), 100);
        store.close();
        writer.join();
    }

    #[tokio::test]
    async fn disabled_store_is_always_durable() {
        let store = Store::disabled();
        assert!(!store.enabled());
        assert_eq!(store.submit(Op::DelToken { id: 1 }), 0);
        store.wait(0).await;
        assert_eq!(store.durable(), Ticket::MAX);
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("always".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval:50".parse::<FsyncPolicy>(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(50)))
        );
        assert!("interval:0".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }

    fn token(id: u64) -> Op {
        Op::PutToken {
            id,
            json: bytes::Bytes::from_static(b"{}"),
        }
    }

    /// Polls `f` for up to 5 s.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    async fn failing_store_keeps_and_retries(sync_only: bool, policy: FsyncPolicy) {
        let backend = MemoryBackend::new();
        let switch = FaultSwitch::new();
        let faulty = FaultyBackend::new(Box::new(backend.clone()), switch.clone());
        let (store, writer) = Store::start_with(Box::new(faulty), policy, 50);
        let first = store.submit(token(1));
        tokio::time::timeout(Duration::from_secs(5), store.wait(first))
            .await
            .expect("durable before the failure");
        assert!(store.accepting());

        if sync_only {
            switch.fail_syncs();
        } else {
            switch.fail();
        }
        let mut last = 0;
        for id in 2..=40 {
            last = store.submit(token(id));
        }
        assert!(eventually(|| store.failing()).await, "the failure is seen");
        assert!(!store.accepting(), "a failing store accepts no new work");
        assert!(store.failure().is_some_and(|w| w.contains("space")));
        if policy == FsyncPolicy::Always {
            // Nothing after the failure counts as durable.
            assert!(store.durable() < last);
            assert!(
                tokio::time::timeout(Duration::from_millis(200), store.wait(last))
                    .await
                    .is_err()
            );
        }
        // The writer keeps retrying, with back-off.
        let before = switch.failures();
        assert!(eventually(|| switch.failures() > before + 1).await);

        switch.heal();
        tokio::time::timeout(Duration::from_secs(10), store.wait(last))
            .await
            .expect("durable after recovery");
        assert!(eventually(|| !store.failing()).await);
        assert!(store.accepting());
        assert_eq!(store.failure(), None);
        let (failures, recoveries, _) = store.failure_stats();
        assert!(failures >= 2 && recoveries == 1);
        assert_eq!(backend.load().tokens.len(), 40, "no op was dropped");
        assert!(eventually(|| store.queued() == 0).await);
        store.close();
        writer.join();
    }

    #[tokio::test]
    async fn a_failing_write_is_kept_and_retried_until_it_succeeds() {
        failing_store_keeps_and_retries(false, FsyncPolicy::Always).await;
    }

    #[tokio::test]
    async fn a_failing_sync_is_kept_and_retried_until_it_succeeds() {
        failing_store_keeps_and_retries(true, FsyncPolicy::Always).await;
    }

    #[tokio::test]
    async fn a_failing_store_with_fsync_interval_recovers() {
        failing_store_keeps_and_retries(true, FsyncPolicy::Interval(Duration::from_millis(20)))
            .await;
    }

    #[tokio::test]
    async fn a_backlog_over_the_limit_stops_accepting() {
        let switch = FaultSwitch::new();
        let faulty = FaultyBackend::new(Box::new(MemoryBackend::new()), switch.clone());
        let (store, writer) = Store::start_with(Box::new(faulty), FsyncPolicy::Always, 10);
        switch.fail();
        for id in 0..5 {
            store.submit(token(id));
        }
        assert!(eventually(|| store.failing()).await);
        switch.heal();
        assert!(eventually(|| !store.failing() && store.queued() == 0).await);
        assert!(store.accepting());
        // Ops over the limit while the writer cannot keep up turn acceptance off.
        switch.fail();
        let last = store.submit_all((100..120).map(token));
        assert!(!store.accepting());
        assert!(store.queued() <= 25);
        switch.heal();
        tokio::time::timeout(Duration::from_secs(10), store.wait(last))
            .await
            .expect("durable after recovery");
        assert!(eventually(|| store.accepting()).await);
        store.close();
        writer.join();
    }

    #[tokio::test]
    async fn closing_a_store_that_keeps_failing_ends() {
        let switch = FaultSwitch::new();
        let faulty = FaultyBackend::new(Box::new(MemoryBackend::new()), switch.clone());
        let (store, writer) = Store::start(Box::new(faulty), FsyncPolicy::Always);
        switch.fail();
        store.submit(token(1));
        assert!(eventually(|| store.failing()).await);
        store.close();
        // The writer gives up after a few attempts instead of blocking shutdown forever.
        let joined = tokio::task::spawn_blocking(move || writer.join());
        tokio::time::timeout(Duration::from_secs(30), joined)
            .await
            .expect("the writer ends")
            .expect("join");
    }

    #[tokio::test]
    async fn a_disk_store_recovers_by_reopening_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (disk, _) = DiskBackend::open(dir.path()).expect("open");
        let switch = FaultSwitch::new();
        let faulty = FaultyBackend::new(Box::new(disk), switch.clone());
        let (store, writer) = Store::start(Box::new(faulty), FsyncPolicy::Always);
        let t = store.submit(token(1));
        store.wait(t).await;
        // A write that goes through and a sync that fails: redb must be reopened (rolled back
        // to the last sync) and the batch written again.
        switch.fail_syncs();
        let mut last = 0;
        for id in 2..=30 {
            last = store.submit(token(id));
        }
        assert!(eventually(|| store.failing()).await);
        switch.heal();
        tokio::time::timeout(Duration::from_secs(10), store.wait(last))
            .await
            .expect("durable after recovery");
        store.close();
        writer.join();
        let snapshot = load(dir.path()).expect("load");
        assert_eq!(snapshot.tokens.len(), 30);
    }
}
