//! The store handle the broker holds, and the writer thread that group-commits.
//!
//! The broker calls [`Store::submit`] from its hot path: that only appends the op to a pending
//! batch under a short mutex and returns a [`Ticket`]. A dedicated thread takes the whole
//! pending batch, applies it in one transaction, syncs it as [`FsyncPolicy`] says, and then
//! advances the durable ticket and wakes every waiter. Many messages share one fsync.
//!
//! A failing write or sync (disk full, I/O error) does not lose anything: the writer keeps
//! every op written since the last successful sync, marks the store failing (an ERROR log
//! line, [`Store::failing`], [`Store::failure`]), and retries with back-off: it asks the
//! backend to [`Backend::recover`] (reopen its files), writes the kept ops again, then syncs.
//! The durable ticket does not move meanwhile, so nothing is acknowledged that is not on disk.
//! While failing (or while more than `max_queued` ops wait), [`Store::accepting`] is false and
//! the broker refuses new work that would add ops; that is what keeps memory bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use crate::devices::{MessageKey, MessageRange, Reader, Visit};
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
    /// Batches count as durable once written; a sync runs about once a second (the ops since
    /// the last sync are what a failing store must keep for its retry).
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
    /// [`Backend::apply`] then [`Backend::sync`]; an engine that can do both in one durable
    /// transaction does (`fsync = "always"`: one commit per batch instead of two).
    fn apply_synced(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.apply(ops)?;
        self.sync()
    }
    /// Makes the backend usable again after `apply` or `sync` failed, rolled back to its last
    /// successful sync; the writer then applies every op since that sync again. Ops are
    /// idempotent when applied again in order, so a rollback to a later point is harmless.
    fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// A handle that reads committed data concurrently with the writer (device message
    /// ranges); `None` for a backend that cannot.
    fn reader(&self) -> Option<Arc<dyn Reader>> {
        None
    }
}

/// Ops that may wait for the writer before [`Store::accepting`] turns false (the broker then
/// refuses new QoS 1/2 messages, persistent sessions and REST changes until the writer caught
/// up). A QoS 1 message to an online persistent subscriber makes three ops (queued, sent,
/// acknowledged), and only the first holds its publisher's PUBACK: a subscriber draining a
/// long outbox adds two ops per message whatever the writer's pace. At the writer's ~2M ops/s
/// (durable fan-in, about 700k msg/s) 100,000 was 50 ms behind, so that a commit delayed by
/// a busy machine closed 3.x publishers; 1,000,000 (about 100 MB of ops) is half a second.
pub const DEFAULT_MAX_QUEUED: u64 = 1_000_000;

/// First and longest wait between two attempts of a failing store.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How many attempts a failing store makes after it was asked to close, before it gives up.
const RETRIES_AT_CLOSE: u32 = 3;
/// With `fsync = never`, kept ops are synced at least this often, so that what the writer must
/// keep for a retry stays small (and a crash loses at most about this much).
const NEVER_SYNC_EVERY: Duration = Duration::from_secs(1);

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
    /// A write or sync failed and has not succeeded since.
    failing: AtomicBool,
    /// Why, while failing (for `/health` and logs).
    failure: Mutex<Option<String>>,
    enabled: bool,
    /// Ops submitted and not yet written successfully (a gauge for metrics).
    queued: AtomicU64,
    /// Above this many queued ops the store stops accepting new work.
    max_queued: u64,
    batches: AtomicU64,
    syncs: AtomicU64,
    /// Failed write or sync attempts.
    write_failures: AtomicU64,
    /// Times the store went from failing back to working.
    recoveries: AtomicU64,
    /// Work refused because the store was not accepting.
    refused: AtomicU64,
}

/// The broker's handle on the store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
    reader: Option<Arc<dyn Reader>>,
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
            shared: Arc::new(Shared::new(false, DEFAULT_MAX_QUEUED)),
            reader: None,
        }
    }

    /// Starts the writer thread over `backend`, accepting new work while at most
    /// [`DEFAULT_MAX_QUEUED`] ops wait.
    pub fn start(backend: Box<dyn Backend>, policy: FsyncPolicy) -> (Store, Writer) {
        Store::start_with(backend, policy, DEFAULT_MAX_QUEUED)
    }

    /// Starts the writer thread over `backend`; [`Store::accepting`] turns false while more
    /// than `max_queued` ops wait.
    pub fn start_with(
        backend: Box<dyn Backend>,
        policy: FsyncPolicy,
        max_queued: u64,
    ) -> (Store, Writer) {
        let shared = Arc::new(Shared::new(true, max_queued));
        let reader = backend.reader();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || writer_loop(thread_shared, backend, policy))
            .map_err(|e| tracing::error!("cannot start the store writer: {e}"))
            .ok();
        (Store { shared, reader }, Writer { thread })
    }

    /// Visits the stored messages of one device in `range` (what the writer committed; a
    /// change is visible once its ticket is durable or applied). Runs a range query in the
    /// backend, never a scan of other devices or of messages outside the range. A disabled
    /// store holds no messages. Blocking: call it off the async workers for large ranges.
    pub fn device_messages(
        &self,
        range: &MessageRange,
        visit: &mut dyn FnMut(MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError> {
        match &self.reader {
            Some(r) => r.device_messages(range, visit),
            None => Ok(()),
        }
    }

    /// The messages that arrived with a sequence of at least `seq`, in arrival order
    /// ([`Reader::messages_since`]; none for a disabled store).
    pub fn messages_since(
        &self,
        seq: u64,
        visit: &mut dyn FnMut(crate::DeviceId, MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError> {
        match &self.reader {
            Some(r) => r.messages_since(seq, visit),
            None => Ok(()),
        }
    }

    /// How many messages and bytes `device` has stored (zero for a disabled store).
    pub fn message_stats(&self, device: u64) -> Result<crate::MessageStats, StoreError> {
        match &self.reader {
            Some(r) => r.message_stats(device),
            None => Ok(crate::MessageStats::default()),
        }
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

    /// The ticket of the last op submitted so far: waiting for it waits for everything
    /// submitted before. Takes the pending lock (for REST answers, not the hot path).
    pub fn submitted(&self) -> Ticket {
        if !self.shared.enabled {
            return 0;
        }
        self.shared.pending.lock().last
    }

    /// Waits until `ticket` is durable. Cancel-safe. While the store is failing this waits
    /// until the writer's retry succeeds (the broker stops acknowledging rather than lose
    /// messages).
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

    /// Waits until `ticket` is durable or the store is failing, whichever comes first; true if
    /// durable. Cancel-safe. A connection whose acknowledgements wait uses it to close rather
    /// than leave its client waiting while the store cannot write.
    pub async fn wait_or_failing(&self, ticket: Ticket) -> bool {
        loop {
            let notified = self.shared.durable_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.durable() >= ticket {
                return true;
            }
            if self.failing() {
                return false;
            }
            notified.await;
        }
    }

    /// True while a write or sync fails: nothing more becomes durable until the writer's
    /// retry succeeds.
    pub fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Relaxed)
    }

    /// Same as [`Store::failing`] (kept for the offline commands).
    pub fn failed(&self) -> bool {
        self.failing()
    }

    /// Why the store is failing (`None` while it works).
    pub fn failure(&self) -> Option<String> {
        if !self.failing() {
            return None;
        }
        self.shared.failure.lock().clone()
    }

    /// Whether new work that adds ops (a QoS 1/2 message, a persistent session, a REST change)
    /// may be accepted: false while the store is failing or more than `max_queued` ops wait.
    /// Two atomic loads; a disabled store always accepts.
    pub fn accepting(&self) -> bool {
        !self.shared.enabled
            || (!self.shared.failing.load(Ordering::Relaxed)
                && self.shared.queued.load(Ordering::Relaxed) <= self.shared.max_queued)
    }

    /// Counts one piece of work refused because the store was not accepting.
    pub fn note_refused(&self) {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed write or sync attempts, recoveries, and refused work so far.
    pub fn failure_stats(&self) -> (u64, u64, u64) {
        (
            self.shared.write_failures.load(Ordering::Relaxed),
            self.shared.recoveries.load(Ordering::Relaxed),
            self.shared.refused.load(Ordering::Relaxed),
        )
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
    fn new(enabled: bool, max_queued: u64) -> Shared {
        Shared {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                last: 0,
                closing: false,
            }),
            work: Condvar::new(),
            durable: AtomicU64::new(0),
            durable_notify: Notify::new(),
            failing: AtomicBool::new(false),
            failure: Mutex::new(None),
            enabled,
            queued: AtomicU64::new(0),
            max_queued,
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

fn writer_loop(shared: Arc<Shared>, mut backend: Box<dyn Backend>, policy: FsyncPolicy) {
    // Every op written since the last successful sync (and, while failing, every op taken
    // since): what a retry writes again. A successful sync empties it.
    let mut kept: Vec<Op> = Vec::new();
    let mut batch: Vec<Op> = Vec::new();
    let mut last_sync = Instant::now();
    // The backend failed and must recover before anything else is written.
    let mut broken = false;
    let mut backoff = RETRY_MIN;
    let mut retries_at_close = 0u32;
    // Ops taken from the pending queue and not yet written successfully (still `queued`).
    let mut unwritten = 0u64;
    let sync_every = match policy {
        FsyncPolicy::Always => None,
        FsyncPolicy::Interval(every) => Some(every),
        FsyncPolicy::Never => Some(NEVER_SYNC_EVERY),
    };
    loop {
        let (last, closing) = {
            let mut p = shared.pending.lock();
            if broken {
                // Back off (only a close cuts the wait short: new ops wake the condvar too),
                // then retry with whatever came.
                let until = Instant::now() + backoff;
                while !p.closing {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    shared.work.wait_for(&mut p, left);
                }
            } else {
                while p.ops.is_empty() && !p.closing {
                    match sync_every {
                        Some(every) if !kept.is_empty() => {
                            let left = every.saturating_sub(last_sync.elapsed());
                            if shared.work.wait_for(&mut p, left).timed_out() {
                                break;
                            }
                        }
                        _ => shared.work.wait(&mut p),
                    }
                }
            }
            std::mem::swap(&mut batch, &mut p.ops);
            (p.last, p.closing)
        };
        let fresh = kept.len();
        unwritten += batch.len() as u64;
        kept.append(&mut batch);
        let result = (|| -> Result<bool, StoreError> {
            // With `always`, a batch is applied and synced in one go.
            let mut synced = false;
            if broken {
                backend.recover()?;
                broken = false;
                if !kept.is_empty() {
                    backend.apply(&kept)?;
                }
            } else if kept.len() > fresh {
                if sync_every.is_none() {
                    backend.apply_synced(&kept[fresh..])?;
                    synced = true;
                } else {
                    backend.apply(&kept[fresh..])?;
                }
            }
            if kept.len() > fresh {
                shared.batches.fetch_add(1, Ordering::Relaxed);
            }
            let sync_now = !kept.is_empty()
                && match sync_every {
                    None => true,
                    Some(every) => closing || last_sync.elapsed() >= every,
                };
            if sync_now {
                if !synced {
                    backend.sync()?;
                }
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                last_sync = Instant::now();
            }
            Ok(sync_now)
        })();
        match result {
            Ok(synced) => {
                shared.queued.fetch_sub(unwritten, Ordering::Relaxed);
                unwritten = 0;
                if synced {
                    kept.clear();
                }
                if shared.failing.load(Ordering::Relaxed) {
                    recovered(&shared);
                    backoff = RETRY_MIN;
                }
                // With `always`, only synced ops count; otherwise written ones do.
                if kept.is_empty() || policy != FsyncPolicy::Always {
                    shared.durable.store(last, Ordering::Release);
                    shared.durable_notify.notify_waiters();
                }
            }
            Err(err) => {
                broken = true;
                fail(&shared, &err, kept.len(), backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
                if closing {
                    retries_at_close += 1;
                    if retries_at_close > RETRIES_AT_CLOSE {
                        tracing::error!(
                            ops = kept.len(),
                            "the store is closing while failing: {} changes were not written",
                            kept.len()
                        );
                        return;
                    }
                    std::thread::sleep(backoff);
                }
                continue;
            }
        }
        if closing && kept.is_empty() && shared.pending.lock().ops.is_empty() {
            return;
        }
    }
}

/// A write or sync failed: the first failure of a run is an ERROR naming the cause; while it
/// goes on, a WARN every 30 attempts.
fn fail(shared: &Shared, err: &StoreError, kept: usize, backoff: Duration) {
    let attempts = shared.write_failures.fetch_add(1, Ordering::Relaxed) + 1;
    let why = err.to_string();
    *shared.failure.lock() = Some(why.clone());
    if !shared.failing.swap(true, Ordering::Relaxed) {
        // Waiters of `wait_or_failing` learn it now.
        shared.durable_notify.notify_waiters();
        tracing::error!(
            error = %why,
            kept,
            "the store cannot write: nothing more is acknowledged and new QoS 1/2 messages, \
             persistent sessions and REST changes are refused until it can; retrying"
        );
    } else if attempts.is_multiple_of(30) {
        // About once a minute at the longest back-off, not at every retry.
        tracing::warn!(error = %why, kept, attempts, retry_in = ?backoff, "the store still cannot write");
    }
}

/// A retry succeeded after failures.
fn recovered(shared: &Shared) {
    shared.failing.store(false, Ordering::Relaxed);
    *shared.failure.lock() = None;
    shared.recoveries.fetch_add(1, Ordering::Relaxed);
    tracing::info!("the store writes again: recovered");
}
