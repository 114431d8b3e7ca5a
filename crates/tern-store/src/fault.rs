//! Failures on demand, for tests of a failing disk without root: [`FaultyBackend`] wraps a
//! backend and, while its [`FaultSwitch`] is on, fails every write, sync and recovery with
//! the error a full disk gives (`ENOSPC`), without touching the backend underneath.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::StoreError;
use crate::handle::Backend;
use crate::op::Op;

/// Turns the failures of a [`FaultyBackend`] on and off. Cheap to clone; all clones share
/// the switch.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch {
    inner: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    on: AtomicBool,
    /// When on, fail only `sync` (the batch is written, the fsync fails).
    sync_only: AtomicBool,
    failures: AtomicU64,
}

impl FaultSwitch {
    pub fn new() -> FaultSwitch {
        FaultSwitch::default()
    }

    /// Every write, sync and recovery fails from now on.
    pub fn fail(&self) {
        self.inner.sync_only.store(false, Ordering::SeqCst);
        self.inner.on.store(true, Ordering::SeqCst);
    }

    /// Writes succeed but every sync (and recovery) fails from now on.
    pub fn fail_syncs(&self) {
        self.inner.sync_only.store(true, Ordering::SeqCst);
        self.inner.on.store(true, Ordering::SeqCst);
    }

    /// Everything works again.
    pub fn heal(&self) {
        self.inner.on.store(false, Ordering::SeqCst);
    }

    pub fn is_failing(&self) -> bool {
        self.inner.on.load(Ordering::SeqCst)
    }

    /// Calls that failed so far.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::SeqCst)
    }

    fn check(&self, sync: bool) -> Result<(), StoreError> {
        let s = &self.inner;
        if s.on.load(Ordering::SeqCst) && (sync || !s.sync_only.load(Ordering::SeqCst)) {
            s.failures.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Io {
                path: "injected".into(),
                source: std::io::Error::from_raw_os_error(28), // ENOSPC
            });
        }
        Ok(())
    }
}

/// A backend that fails on demand (see [`FaultSwitch`]).
pub struct FaultyBackend {
    inner: Box<dyn Backend>,
    switch: FaultSwitch,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("switch", &self.switch)
            .finish_non_exhaustive()
    }
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn Backend>, switch: FaultSwitch) -> FaultyBackend {
        FaultyBackend { inner, switch }
    }
}

impl Backend for FaultyBackend {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.switch.check(false)?;
        self.inner.apply(ops)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.switch.check(true)?;
        self.inner.sync()
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        self.switch.check(true)?;
        self.inner.recover()
    }

    fn reader(&self) -> Option<std::sync::Arc<dyn crate::devices::Reader>> {
        self.inner.reader()
    }
}
