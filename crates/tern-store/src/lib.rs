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
//! - `handle`: the `Store` handle, the `Backend` trait and the group-commit writer thread
//! - `memory`: the in-memory backend (reference model, used by tests)
//! - `disk`: the on-disk backend (redb): open, verify, load, apply, sync
//! - `format`: the on-disk format: key layouts and record encodings (version 1)
//! - `export`: the JSON Lines export and import (`tern store export` / `import`)
//! - `error`: store errors

mod disk;
mod error;
mod export;
mod format;
mod handle;
mod memory;
mod model;
mod op;

pub use disk::{DiskBackend, STORE_FILE, load};
pub use error::StoreError;
pub use export::{EXPORT_VERSION, export, import};
pub use format::FORMAT_VERSION;
pub use handle::{Backend, FsyncPolicy, Store, Ticket, Writer};
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
}
