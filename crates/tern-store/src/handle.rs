//! The store handle the broker holds, and the writer thread that group-commits.
//!
//! The broker calls [`Store::submit`] from its hot path: that only appends the op to a pending
//! batch under a short mutex and returns a [`Ticket`]. A dedicated thread takes the whole
//! pending batch, applies it in one transaction, syncs it as [`FsyncPolicy`] says, and then
//! advances the durable ticket and wakes every waiter. Many messages share one fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use crate::error::StoreError;
use crate::op::Op;

/// Position in the stream of submitted ops. An op with ticket `t` is durable once
/// [`Store::durable`] is at least `t`. Ticket 0 means "nothing to wait for".
pub type Ticket = u64;

/// When the writer syncs to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every batch is synced before it counts as durable (default).
    Always,
    /// Batches count as durable once written; a sync runs at most this often.
    Interval(Duration),
    /// Never sync explicitly (the OS decides).
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => match other.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(FsyncPolicy::Interval(Duration::from_millis(ms))),
                _ => Err(format!(
                    "`{other}` is not always, never or interval:<milliseconds>"
                )),
            },
        }
    }
}

/// A storage engine: applies batches atomically and loads what it holds.
pub trait Backend: Send + 'static {
    /// Applies a batch of ops as one transaction, without necessarily syncing it.
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes everything applied so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;
}

#[derive(Debug)]
struct Pending {
    ops: Vec<Op>,
    /// Ticket of the last op in `ops`.
    last: Ticket,
    closing: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    work: Condvar,
    durable: AtomicU64,
    durable_notify: Notify,
    failed: AtomicBool,
    enabled: bool,
    /// Ops waiting to be written (a gauge for metrics).
    queued: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
}

/// The broker's handle on the store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// The writer thread of an open store; join it at shutdown after [`Store::close`].
#[derive(Debug)]
pub struct Writer {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Waits for the writer to finish its last batch.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// A store that keeps nothing: `submit` is a no-op and everything is durable at once. The
    /// broker checks [`Store::enabled`] and skips building ops entirely.
    pub fn disabled() -> Store {
        Store {
            shared: Arc::new(Shared::new(false)),
        }
    }

    /// Starts the writer thread over `backend`.
    pub fn start(backend: Box<dyn Backend>, policy: FsyncPolicy) -> (Store, Writer) {
        let shared = Arc::new(Shared::new(true));
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || writer_loop(thread_shared, backend, policy))
            .map_err(|e| tracing::error!("cannot start the store writer: {e}"))
            .ok();
        (Store { shared }, Writer { thread })
    }

    /// Whether ops are kept at all.
    pub fn enabled(&self) -> bool {
        self.shared.enabled
    }

    /// Queues one op for the next batch and returns its ticket.
    pub fn submit(&self, op: Op) -> Ticket {
        if !self.shared.enabled {
            return 0;
        }
        let mut p = self.shared.pending.lock();
        p.ops.push(op);
        p.last += 1;
        let t = p.last;
        let first = p.ops.len() == 1;
        drop(p);
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if first {
            self.shared.work.notify_one();
        }
        t
    }

    /// Queues several ops, applied in order in one batch; returns the ticket of the last.
    pub fn submit_all(&self, ops: impl IntoIterator<Item = Op>) -> Ticket {
        if !self.shared.enabled {
            return 0;
        }
        let mut p = self.shared.pending.lock();
        let before = p.ops.len();
        p.ops.extend(ops);
        let added = (p.ops.len() - before) as u64;
        p.last += added;
        let t = p.last;
        drop(p);
        if added > 0 {
            self.shared.queued.fetch_add(added, Ordering::Relaxed);
            if before == 0 {
                self.shared.work.notify_one();
            }
        }
        t
    }

    /// The highest ticket that is durable.
    pub fn durable(&self) -> Ticket {
        if !self.shared.enabled {
            return Ticket::MAX;
        }
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Waits until `ticket` is durable. Cancel-safe. Never returns if the store failed (the
    /// broker stops acknowledging rather than lose messages).
    pub async fn wait(&self, ticket: Ticket) {
        loop {
            let notified = self.shared.durable_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.durable() >= ticket {
                return;
            }
            notified.await;
        }
    }

    /// True once a write failed: nothing more is acknowledged.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Ops submitted and not yet written.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Batches written and syncs done so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.shared.batches.load(Ordering::Relaxed),
            self.shared.syncs.load(Ordering::Relaxed),
        )
    }

    /// Asks the writer to write what is pending, sync, and stop.
    pub fn close(&self) {
        if !self.shared.enabled {
            return;
        }
        self.shared.pending.lock().closing = true;
        self.shared.work.notify_one();
    }

    /// Waits until everything submitted so far is durable, at most `deadline`.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let target = self.shared.pending.lock().last;
        tokio::time::timeout(deadline, self.wait(target))
            .await
            .is_ok()
    }
}

impl Shared {
    fn new(enabled: bool) -> Shared {
        Shared {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                last: 0,
                closing: false,
            }),
            work: Condvar::new(),
            durable: AtomicU64::new(0),
            durable_notify: Notify::new(),
            failed: AtomicBool::new(false),
            enabled,
            queued: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        }
    }
}

fn writer_loop(shared: Arc<Shared>, mut backend: Box<dyn Backend>, policy: FsyncPolicy) {
    let mut batch: Vec<Op> = Vec::new();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        let (last, closing) = {
            let mut p = shared.pending.lock();
            while p.ops.is_empty() && !p.closing {
                match policy {
                    FsyncPolicy::Interval(every) if unsynced => {
                        let left = every.saturating_sub(last_sync.elapsed());
                        if shared.work.wait_for(&mut p, left).timed_out() {
                            break;
                        }
                    }
                    _ => shared.work.wait(&mut p),
                }
            }
            std::mem::swap(&mut batch, &mut p.ops);
            (p.last, p.closing)
        };
        if !batch.is_empty() {
            let n = batch.len() as u64;
            if let Err(err) = backend.apply(&batch) {
                fail(&shared, &err);
                return;
            }
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared.queued.fetch_sub(n, Ordering::Relaxed);
            batch.clear();
            unsynced = true;
        }
        let sync_now = match policy {
            FsyncPolicy::Always => unsynced,
            FsyncPolicy::Interval(every) => unsynced && (closing || last_sync.elapsed() >= every),
            FsyncPolicy::Never => closing && unsynced,
        };
        if sync_now {
            if let Err(err) = backend.sync() {
                fail(&shared, &err);
                return;
            }
            shared.syncs.fetch_add(1, Ordering::Relaxed);
            last_sync = Instant::now();
            unsynced = false;
        }
        // With `always`, only synced batches count; otherwise written ones do.
        if !unsynced || policy != FsyncPolicy::Always {
            shared.durable.store(last, Ordering::Release);
            shared.durable_notify.notify_waiters();
        }
        if closing && shared.pending.lock().ops.is_empty() {
            return;
        }
    }
}

fn fail(shared: &Shared, err: &StoreError) {
    tracing::error!(%err, "the store failed: nothing more is acknowledged");
    shared.failed.store(true, Ordering::Relaxed);
}
