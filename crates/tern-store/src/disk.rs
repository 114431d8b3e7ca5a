//! The on-disk backend: one redb file, `<data dir>/tern.redb`, one table per kind of record
//! (key layouts and records in `format`).
//!
//! Opening never changes a store it cannot read. The file is first opened through a
//! copy-on-write overlay ([`Overlay`]): redb's crash recovery and full integrity check run there,
//! every record is decoded, and only when all of that succeeds is the real file opened for
//! writing (which repeats the same recovery). A truncated or garbled file, a file that is not a
//! tern store, or a store of another format version is refused with the file byte-for-byte as it
//! was.
//!
//! Durability: [`Backend::apply`] commits each batch as one redb transaction without an fsync
//! (`Durability::None`); [`Backend::sync`] commits an empty transaction with
//! `Durability::Immediate`, which makes every earlier commit durable with one fsync. So
//! `fsync = always` costs one fsync per batch and `interval`/`never` none per batch. A crash
//! loses at most the batches after the last sync, whole: redb rolls back to the last durable
//! commit. Because that holds for a process crash too (not only for power loss), a batch is
//! committed durably anyway when nothing was for a second (`MAX_NON_DURABLE`).
//!
//! Device messages (and channel buffers, logs, stream queues, webhook calls: everything keyed by
//! `MessageKey`) are two tables since format 2: `message_data` holds each document under
//! `seq | owner | ts`, so the messages of one commit, whatever their devices, are appended at
//! the right edge of the tree; `message_index` holds an empty value under `owner | ts | seq`, the
//! order reads and deletes go in. Format 1 kept the documents in the index order itself, which
//! made every commit rewrite a leaf and its branch pages per device (copy-on-write): ~4 KB
//! written per ~500-byte tracker record at 1,000 devices, against ~2 KB now. A format 1 store is
//! converted when it is opened for writing ([`migrate_messages`]).
//!
//! Space: redb reuses freed pages, so a queue that is filled and drained does not grow the file.
//! When more than half of a large file is free (after a backlog drained), the file is compacted:
//! at open, and from the writer at most once a minute.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};
use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, Table,
    TableDefinition, TableError, TableHandle, WriteTransaction,
};

use crate::devices::{self, MessageKey, MessageRange, MessageStats, Reader, Visit};
use crate::error::StoreError;
use crate::format::{self, FORMAT_VERSION, FormatError, MAGIC, OLDEST_FORMAT_VERSION};
use crate::handle::Backend;
use crate::model::{QueuedRecord, SessionKey, SessionSnapshot, Snapshot};
use crate::op::Op;

/// The store file inside the data directory.
pub const STORE_FILE: &str = "tern.redb";
/// Where a new store is initialised before it is renamed into place, so a crash during
/// creation never leaves a half-made `tern.redb`.
const NEW_FILE: &str = "tern.redb.new";

type Bin = &'static [u8];
const META: TableDefinition<&str, Bin> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<Bin, Bin> = TableDefinition::new("accounts");
const TOKENS: TableDefinition<Bin, Bin> = TableDefinition::new("tokens");
const RETAINED: TableDefinition<Bin, Bin> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<Bin, Bin> = TableDefinition::new("sessions");
const SUBSCRIPTIONS: TableDefinition<Bin, Bin> = TableDefinition::new("subscriptions");
const QUEUE: TableDefinition<Bin, Bin> = TableDefinition::new("queue");
const INCOMING: TableDefinition<Bin, Bin> = TableDefinition::new("incoming");
// Format 2: the deliveries a batch enqueues to one session, as one value (`format::pack_key`),
// and the state of a pack whose entries were sent or removed. Absent from format 1 stores.
const QUEUE_PACKS: TableDefinition<Bin, Bin> = TableDefinition::new("queue_packs");
const QUEUE_PACK_STATES: TableDefinition<Bin, Bin> = TableDefinition::new("queue_pack_states");
// The devices layer (tern-gw). Stores made before these tables existed open as they are: a
// missing table reads as empty and the first write transaction creates it.
const GW_META: TableDefinition<&str, Bin> = TableDefinition::new("gw_meta");
const GW_META_KEY: &str = "meta";
const DEVICES: TableDefinition<Bin, Bin> = TableDefinition::new("devices");
const GROUPS: TableDefinition<Bin, Bin> = TableDefinition::new("groups");
const CHANNELS: TableDefinition<Bin, Bin> = TableDefinition::new("channels");
const STREAMS: TableDefinition<Bin, Bin> = TableDefinition::new("streams");
const WEBHOOKS: TableDefinition<Bin, Bin> = TableDefinition::new("webhooks");
const TELEMETRY: TableDefinition<Bin, Bin> = TableDefinition::new("telemetry");
/// Format 1's message table (documents under `owner | ts | seq`); converted at open.
const MESSAGES_V1: TableDefinition<Bin, Bin> = TableDefinition::new("device_messages");
/// Message documents under `seq | owner | ts` ([`devices::data_key`]).
const MESSAGE_DATA: TableDefinition<Bin, Bin> = TableDefinition::new("message_data");
/// Empty values under `owner | ts | seq` ([`devices::message_key`]): the order of reads.
const MESSAGE_INDEX: TableDefinition<Bin, Bin> = TableDefinition::new("message_index");
/// Messages a format 1 store's conversion moves per transaction.
const MIGRATE_CHUNK: usize = 50_000;
const MESSAGE_STATS: TableDefinition<Bin, Bin> = TableDefinition::new("device_message_stats");

const META_MAGIC: &str = "magic";
const META_VERSION: &str = "format_version";

/// redb's page cache for the open store: at most this much, filled as pages are read or
/// written (a busy devices layer touches a leaf per device and batch; a broker alone, few).
/// Every page a commit writes goes into it while it has room, in a buffer of its own, so until
/// it is full each written page is memory the process faults in and the kernel zeroes: with
/// 256 MiB that was 38% of the writer's time over the first 1.2M messages queued to an offline
/// session (fsync always), 4% with 32 MiB, and that fan-in to an offline session ran 1.2-2.2x
/// faster. The devices layer's working set fits (1,000 trackers' histories ingested at the
/// same rate with either size), a page not in it is read from the OS's page cache, and a
/// 1,000-message window read out of a million costs 2.5% more than with 256 MiB.
const CACHE_BYTES: usize = 32 << 20;
/// Compact automatically only files at least this large.
const RECLAIM_MIN_FILE: u64 = 64 << 20;
/// How often the writer considers compacting.
const RECLAIM_EVERY: Duration = Duration::from_secs(60);
/// A non-durable redb commit does not survive even a process crash (the header still names
/// the last durable commit), so with `fsync = never` a crash would lose everything since the
/// start. A batch commit is made durable when the last durable one is older than this: at most
/// one fsync a second, and `never` loses at most about a second to a process crash.
const MAX_NON_DURABLE: Duration = Duration::from_secs(1);

/// The on-disk store. Holds an exclusive lock on the data directory while open.
#[derive(Debug)]
pub struct DiskBackend {
    /// `None` only between a failure and a successful [`Backend::recover`]. Shared with the
    /// readers of device messages ([`Backend::reader`]): they take the lock for reading for
    /// one read transaction; only compaction and recovery take it for writing.
    db: Arc<RwLock<Option<Database>>>,
    path: PathBuf,
    /// `flock` on the data directory (redb locks the file itself too): a second tern on the
    /// same directory is refused before it reads anything, and nothing is added to the
    /// directory to take it.
    _lock: File,
    last_reclaim_check: Instant,
    last_durable: Instant,
    /// The queue batch's buffers, kept from one commit to the next.
    scratch: Scratch,
}

impl DiskBackend {
    /// Opens the store in `dir`, creating the directory (mode 0700) and an empty store if
    /// missing, and returns it with everything it holds. A store that cannot be read is refused
    /// and left untouched.
    pub fn open(dir: &Path) -> Result<(DiskBackend, Snapshot), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let lock = lock(dir)?;
        let path = dir.join(STORE_FILE);
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(dir, &path)?,
            Err(e) => return Err(io_err(&path)(e)),
        }
        let snapshot = verify(&path)?;
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open(&path)
            .map_err(|e| open_error(&path, e))?;
        if check_meta(&path, &db)? < FORMAT_VERSION {
            migrate_messages(&db)?;
        }
        let mut backend = DiskBackend {
            db: Arc::new(RwLock::new(Some(db))),
            path,
            _lock: lock,
            last_reclaim_check: Instant::now(),
            last_durable: Instant::now(),
            scratch: Scratch::default(),
        };
        backend.reclaim_if(1 << 20)?;
        Ok((backend, snapshot))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<MappedRwLockReadGuard<'_, Database>, StoreError> {
        RwLockReadGuard::try_map(self.db.read(), Option::as_ref)
            .map_err(|_| StoreError::Engine("the store file is closed after a failure".into()))
    }

    /// Compacts the file if more than half of it is free space; true if it did.
    pub fn reclaim(&mut self) -> Result<bool, StoreError> {
        self.reclaim_if(0)
    }

    fn reclaim_if(&mut self, min_file: u64) -> Result<bool, StoreError> {
        self.last_reclaim_check = Instant::now();
        let len = fs::metadata(&self.path).map_err(io_err(&self.path))?.len();
        if len < min_file {
            return Ok(false);
        }
        let tx = self.db()?.begin_write().map_err(engine)?;
        let free = tx.stats().map_err(engine)?.fragmented_bytes();
        tx.abort().map_err(engine)?;
        if free.saturating_mul(2) <= len {
            return Ok(false);
        }
        let started = Instant::now();
        let mut guard = self.db.write();
        let db = guard
            .as_mut()
            .ok_or_else(|| StoreError::Engine("the store file is closed after a failure".into()))?;
        while db.compact().map_err(engine)? {}
        drop(guard);
        let after = fs::metadata(&self.path).map_err(io_err(&self.path))?.len();
        tracing::info!(before = len, after, took = ?started.elapsed(), "store compacted");
        Ok(true)
    }
}

impl DiskBackend {
    /// Applies `ops` in one transaction: durable when `synced` (or when no durable commit came
    /// for `MAX_NON_DURABLE`), else made durable by the next `sync`, as the fsync policy says.
    fn commit(&mut self, ops: &[Op], synced: bool) -> Result<(), StoreError> {
        let mut tx = self.db()?.begin_write().map_err(engine)?;
        let durable = synced || self.last_durable.elapsed() >= MAX_NON_DURABLE;
        if !durable {
            tx.set_durability(Durability::None).map_err(engine)?;
        }
        {
            let fail = |e| match e {
                Fail::Engine(e) => e,
                Fail::Encode(e) => StoreError::Record {
                    what: "op",
                    detail: e.0,
                },
                Fail::Corrupt(e) => StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: e.0,
                },
            };
            let mut tables = Tables::open(&tx, std::mem::take(&mut self.scratch))?;
            for op in ops {
                tables.apply(op).map_err(fail)?;
            }
            tables.finish().map_err(fail)?;
            self.scratch = std::mem::take(&mut tables.scratch);
        }
        tx.commit().map_err(engine)?;
        if durable {
            self.last_durable = Instant::now();
        }
        if self.last_reclaim_check.elapsed() >= RECLAIM_EVERY {
            self.reclaim_if(RECLAIM_MIN_FILE)?;
        }
        Ok(())
    }
}

impl Backend for DiskBackend {
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.commit(ops, false)
    }

    fn apply_synced(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        self.commit(ops, true)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        // An empty durable commit persists every non-durable commit before it: one fsync.
        let mut tx = self.db()?.begin_write().map_err(engine)?;
        tx.set_durability(Durability::Immediate).map_err(engine)?;
        tx.commit().map_err(engine)?;
        self.last_durable = Instant::now();
        Ok(())
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        // After an I/O error redb refuses every later transaction until the database is
        // reopened; reopening runs its recovery, back to the last durable commit. The
        // directory lock stays held throughout.
        drop(self.db.write().take());
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .open(&self.path)
            .map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Io(source)) => StoreError::Io {
                    path: self.path.clone(),
                    source,
                },
                other => StoreError::Engine(other.to_string()),
            })?;
        check_meta(&self.path, &db)?;
        *self.db.write() = Some(db);
        self.last_durable = Instant::now();
        Ok(())
    }

    fn reader(&self) -> Option<Arc<dyn Reader>> {
        Some(Arc::new(DiskReader {
            db: self.db.clone(),
        }))
    }
}

impl Drop for DiskBackend {
    /// Closes the file even while readers still hold the shared handle (a store closed and
    /// reopened in the same process): their later reads fail as closed.
    fn drop(&mut self) {
        drop(self.db.write().take());
    }
}

/// Reads device messages in redb read transactions, beside the writer thread.
#[derive(Debug)]
struct DiskReader {
    db: Arc<RwLock<Option<Database>>>,
}

impl Reader for DiskReader {
    fn device_messages(
        &self,
        range: &MessageRange,
        visit: &mut dyn FnMut(MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError> {
        if range.from > range.to {
            return Ok(());
        }
        let guard = self.db.read();
        let db = guard
            .as_ref()
            .ok_or_else(|| StoreError::Engine("the store file is closed after a failure".into()))?;
        let tx = db.begin_read().map_err(engine)?;
        let (Some(index), Some(data)) = (
            read_table(&tx, MESSAGE_INDEX)?,
            read_table(&tx, MESSAGE_DATA)?,
        ) else {
            return Ok(());
        };
        let (lo, hi) = devices::message_bounds(range.device, range.from, range.to);
        let mut iter = index.range(lo.as_slice()..=hi.as_slice()).map_err(engine)?;
        loop {
            let next = if range.reverse {
                iter.next_back()
            } else {
                iter.next()
            };
            let Some(item) = next else {
                return Ok(());
            };
            let (k, _) = item.map_err(engine)?;
            let ik = <[u8; 24]>::try_from(k.value())
                .map_err(|_| StoreError::Engine("a message index key is not 24 bytes".into()))?;
            let (_, key) = devices::decode_message_key(&ik).map_err(StoreError::Engine)?;
            let Some(v) = data
                .get(devices::data_key(&ik).as_slice())
                .map_err(engine)?
            else {
                return Err(StoreError::Engine(format!(
                    "device {} message at {}: indexed but not stored",
                    range.device, key.ts
                )));
            };
            let json = record_json(v.value()).ok_or_else(|| {
                StoreError::Engine(format!(
                    "device {} message at {}: unknown record version",
                    range.device, key.ts
                ))
            })?;
            if visit(key, json) == Visit::Stop {
                return Ok(());
            }
        }
    }

    fn messages_since(
        &self,
        seq: u64,
        visit: &mut dyn FnMut(u64, MessageKey, &[u8]) -> Visit,
    ) -> Result<(), StoreError> {
        let guard = self.db.read();
        let db = guard
            .as_ref()
            .ok_or_else(|| StoreError::Engine("the store file is closed after a failure".into()))?;
        let tx = db.begin_read().map_err(engine)?;
        let Some(data) = read_table(&tx, MESSAGE_DATA)? else {
            return Ok(());
        };
        let mut from = [0u8; 24];
        from[..8].copy_from_slice(&seq.to_be_bytes());
        for item in data.range(from.as_slice()..).map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            let dk = <[u8; 24]>::try_from(k.value())
                .map_err(|_| StoreError::Engine("a message data key is not 24 bytes".into()))?;
            let (owner, key) = devices::decode_data_key(&dk).map_err(StoreError::Engine)?;
            let json = record_json(v.value()).ok_or_else(|| {
                StoreError::Engine(format!(
                    "message {} of {owner}: unknown record version",
                    key.seq
                ))
            })?;
            if visit(owner, key, json) == Visit::Stop {
                break;
            }
        }
        Ok(())
    }

    fn message_stats(&self, device: u64) -> Result<MessageStats, StoreError> {
        let guard = self.db.read();
        let db = guard
            .as_ref()
            .ok_or_else(|| StoreError::Engine("the store file is closed after a failure".into()))?;
        let tx = db.begin_read().map_err(engine)?;
        let Some(table) = read_table(&tx, MESSAGE_STATS)? else {
            return Ok(MessageStats::default());
        };
        match table
            .get(format::id_key(device).as_slice())
            .map_err(engine)?
        {
            Some(v) => format::decode_stats(v.value()).map_err(StoreError::Engine),
            None => Ok(MessageStats::default()),
        }
    }
}

/// Loads the store in `dir` without changing anything (for `tern store export`): the same
/// checks as [`DiskBackend::open`], run on the overlay only. Fails if another process has the
/// store open.
pub fn load(dir: &Path) -> Result<Snapshot, StoreError> {
    let _lock = lock(dir)?;
    verify(&dir.join(STORE_FILE))
}

/// Writes the store in `dir` as an export (`tern store export`): what [`load`] reads, then
/// every device message, streamed in key order (never all in memory). Reads only, with the
/// same checks as [`load`].
pub fn export_dir(dir: &Path, out: &mut dyn std::io::Write) -> Result<(), StoreError> {
    let _lock = lock(dir)?;
    let path = dir.join(STORE_FILE);
    let io = |e: io::Error| StoreError::Io {
        path: path.clone(),
        source: e,
    };
    verify_with(&path, |db, snapshot| {
        crate::export::export(&snapshot, &mut &mut *out).map_err(io)?;
        let tx = db.begin_read().map_err(engine)?;
        let corrupt = |table: &str, detail: String| StoreError::Corrupt {
            path: path.clone(),
            detail: format!("table {table}: {detail}"),
        };
        let mut write = |table: &str, k: &[u8], v: &[u8]| -> Result<(), StoreError> {
            let (device, key) = devices::decode_message_key(k).map_err(|e| corrupt(table, e))?;
            let json =
                unversioned(v).map_err(|e| corrupt(table, format!("device {device}: {e}")))?;
            crate::export::export_message(device, key, &json, &mut *out).map_err(io)
        };
        // A format 1 store (exports read without converting): its one table.
        if let Some(table) = read_table(&tx, MESSAGES_V1)? {
            for item in table.iter().map_err(engine)? {
                let (k, v) = item.map_err(engine)?;
                write("device_messages", k.value(), v.value())?;
            }
        }
        if let (Some(index), Some(data)) = (
            read_table(&tx, MESSAGE_INDEX)?,
            read_table(&tx, MESSAGE_DATA)?,
        ) {
            for item in index.iter().map_err(engine)? {
                let (k, _) = item.map_err(engine)?;
                let ik = <[u8; 24]>::try_from(k.value())
                    .map_err(|_| corrupt("message_index", "a key is not 24 bytes".into()))?;
                let v = data
                    .get(devices::data_key(&ik).as_slice())
                    .map_err(engine)?
                    .ok_or_else(|| {
                        corrupt("message_data", "an indexed message is missing".into())
                    })?;
                write("message_data", &ik, v.value())?;
            }
        }
        out.flush().map_err(io)
    })
}

/// Why applying an op failed: the engine, an op that cannot be encoded (a client id over 64
/// KiB), or a stored record that does not decode.
enum Fail {
    Engine(StoreError),
    Encode(FormatError),
    Corrupt(FormatError),
}

impl From<FormatError> for Fail {
    fn from(e: FormatError) -> Fail {
        Fail::Encode(e)
    }
}

impl<E: Into<redb::Error>> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail::Engine(engine(e))
    }
}

/// The tables of one write transaction.
struct Tables<'t> {
    accounts: Table<'t, Bin, Bin>,
    tokens: Table<'t, Bin, Bin>,
    retained: Table<'t, Bin, Bin>,
    sessions: Table<'t, Bin, Bin>,
    subscriptions: Table<'t, Bin, Bin>,
    queue: Table<'t, Bin, Bin>,
    incoming: Table<'t, Bin, Bin>,
    packs: Table<'t, Bin, Bin>,
    pack_states: Table<'t, Bin, Bin>,
    /// What this batch does to session queues before it is written (`finish`).
    batch: QueueBatch,
    /// Buffers for the batch, from the commit before.
    scratch: Scratch,
    gw_meta: Table<'t, &'static str, Bin>,
    devices: Table<'t, Bin, Bin>,
    groups: Table<'t, Bin, Bin>,
    channels: Table<'t, Bin, Bin>,
    streams: Table<'t, Bin, Bin>,
    webhooks: Table<'t, Bin, Bin>,
    telemetry: Table<'t, Bin, Bin>,
    message_index: Table<'t, Bin, Bin>,
    message_data: Table<'t, Bin, Bin>,
    message_stats: Table<'t, Bin, Bin>,
    /// Sessions looked up (or put, or deleted) in this batch: a fan-in batch names the same
    /// few sessions again and again.
    known: HashMap<SessionKey, Option<Rc<[u8]>>>,
}

/// Runs of fewer consecutive deliveries than this are written as per-entry `queue` records: a
/// lone message (a broker at low rate, one delivery per commit) then costs one record in one
/// table, patched in place when sent, as in format 1, instead of a pack plus a state record.
const PACK_MIN: usize = 4;

/// The buffers one commit's queue batch fills, kept for the next commit. A busy writer
/// otherwise grows fresh ones in every commit, and the allocator hands it freshly faulted (and
/// zeroed) pages each time: with fsync always, that was over half of the writer's time under a
/// fan-in to an offline session. Bounded: at most [`SCRATCH_LISTS`] lists of up to
/// [`SCRATCH_LIST_MAX`] entries, buffers of up to [`SCRATCH_BYTES_MAX`].
#[derive(Default)]
struct Scratch {
    /// Emptied per-session append lists.
    entries: Vec<Vec<Pending>>,
    /// A pack's value and state record, being encoded.
    value: Vec<u8>,
    state: Vec<u8>,
}

const SCRATCH_LISTS: usize = 64;
const SCRATCH_LIST_MAX: usize = 1 << 16;
const SCRATCH_BYTES_MAX: usize = 8 << 20;

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("lists", &self.entries.len())
            .field("value", &self.value.capacity())
            .finish()
    }
}

impl Scratch {
    /// Keeps an emptied append list for the next batch, within the bounds.
    fn keep_list(&mut self, mut list: Vec<Pending>) {
        if self.entries.len() < SCRATCH_LISTS && list.capacity() <= SCRATCH_LIST_MAX {
            list.clear();
            self.entries.push(list);
        }
    }

    fn keep_bytes(slot: &mut Vec<u8>, mut buf: Vec<u8>) {
        if buf.capacity() <= SCRATCH_BYTES_MAX {
            buf.clear();
            *slot = buf;
        }
    }
}

/// What one batch does to session queues, kept in memory until [`Tables::finish`].
#[derive(Default)]
struct QueueBatch {
    /// Per session key: deliveries enqueued above every stored seq, by seq.
    appends: HashMap<Rc<[u8]>, Appends>,
    /// States of stored packs read or changed in this batch, by pack key.
    states: BTreeMap<Vec<u8>, PackState>,
}

struct Appends {
    /// The highest seq the session had stored when the batch first enqueued to it.
    stored_max: Option<u64>,
    /// In seq order.
    entries: Vec<Pending>,
}

struct Pending {
    record: QueuedRecord,
    /// Dequeued in the same batch: never written.
    removed: bool,
}

/// A stored pack's state record, being changed.
struct PackState {
    count: u32,
    /// The record as it will be written (`format::pack_state_len(count)` bytes).
    bytes: Vec<u8>,
    removed: u32,
    dirty: bool,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t WriteTransaction, scratch: Scratch) -> Result<Tables<'t>, StoreError> {
        Ok(Tables {
            accounts: tx.open_table(ACCOUNTS).map_err(engine)?,
            tokens: tx.open_table(TOKENS).map_err(engine)?,
            retained: tx.open_table(RETAINED).map_err(engine)?,
            sessions: tx.open_table(SESSIONS).map_err(engine)?,
            subscriptions: tx.open_table(SUBSCRIPTIONS).map_err(engine)?,
            queue: tx.open_table(QUEUE).map_err(engine)?,
            incoming: tx.open_table(INCOMING).map_err(engine)?,
            packs: tx.open_table(QUEUE_PACKS).map_err(engine)?,
            pack_states: tx.open_table(QUEUE_PACK_STATES).map_err(engine)?,
            batch: QueueBatch::default(),
            scratch,
            gw_meta: tx.open_table(GW_META).map_err(engine)?,
            devices: tx.open_table(DEVICES).map_err(engine)?,
            groups: tx.open_table(GROUPS).map_err(engine)?,
            channels: tx.open_table(CHANNELS).map_err(engine)?,
            streams: tx.open_table(STREAMS).map_err(engine)?,
            webhooks: tx.open_table(WEBHOOKS).map_err(engine)?,
            telemetry: tx.open_table(TELEMETRY).map_err(engine)?,
            message_index: tx.open_table(MESSAGE_INDEX).map_err(engine)?,
            message_data: tx.open_table(MESSAGE_DATA).map_err(engine)?,
            message_stats: tx.open_table(MESSAGE_STATS).map_err(engine)?,
            known: HashMap::new(),
        })
    }

    /// The session's key prefix if the session exists: ops on a missing session are ignored,
    /// as in `MemoryState::apply`.
    fn session(&mut self, key: &SessionKey) -> Result<Option<Rc<[u8]>>, Fail> {
        if let Some(known) = self.known.get(key) {
            return Ok(known.clone());
        }
        let sk = format::session_key(key)?;
        let found = self
            .sessions
            .get(sk.as_slice())?
            .is_some()
            .then(|| Rc::from(sk));
        self.known.insert(key.clone(), found.clone());
        Ok(found)
    }

    /// Applies one op with the meaning `MemoryState::apply` gives it.
    fn apply(&mut self, op: &Op) -> Result<(), Fail> {
        match op {
            Op::PutAccount { cid, json } => {
                self.accounts
                    .insert(format::id_key(*cid).as_slice(), json.as_ref())?;
            }
            Op::DelAccount { cid } => {
                self.accounts.remove(format::id_key(*cid).as_slice())?;
                // The account's REST call and MQTT sessions logs go with it.
                self.drop_messages(crate::log_key(crate::LOG_ORIGIN_CUSTOMER, *cid))?;
                self.drop_messages(crate::log_key(crate::LOG_ORIGIN_MQTT, *cid))?;
            }
            Op::PutToken { id, json } => {
                self.tokens
                    .insert(format::id_key(*id).as_slice(), json.as_ref())?;
            }
            Op::DelToken { id } => {
                self.tokens.remove(format::id_key(*id).as_slice())?;
            }
            Op::PutRetained { msg } => {
                let key = format::retained_key(msg.cid, &msg.topic);
                self.retained
                    .insert(key.as_slice(), format::encode_retained(msg)?.as_slice())?;
            }
            Op::DelRetained { cid, topic } => {
                self.retained
                    .remove(format::retained_key(*cid, topic).as_slice())?;
            }
            Op::PutSession { record } => {
                let sk = format::session_key(&record.key)?;
                self.sessions
                    .insert(sk.as_slice(), format::encode_session(record)?.as_slice())?;
                self.known.insert(record.key.clone(), Some(Rc::from(sk)));
            }
            Op::DelSession { key } => {
                let sk = format::session_key(key)?;
                self.sessions.remove(sk.as_slice())?;
                self.clear_queue(&sk)?;
                for table in [&mut self.subscriptions, &mut self.incoming] {
                    clear_prefix(table, &sk)?;
                }
                self.known.insert(key.clone(), None);
            }
            Op::PutSubscription { key, sub } => {
                if let Some(sk) = self.session(key)? {
                    let k = format::session_child_key(&sk, sub.filter.as_bytes());
                    self.subscriptions
                        .insert(k.as_slice(), format::encode_subscription(sub).as_slice())?;
                }
            }
            Op::DelSubscription { key, filter } => {
                if let Some(sk) = self.session(key)? {
                    self.subscriptions
                        .remove(format::session_child_key(&sk, filter.as_bytes()).as_slice())?;
                }
            }
            Op::Enqueue { key, entry } => {
                if let Some(sk) = self.session(key)? {
                    self.enqueue(sk, entry)?;
                }
            }
            Op::SetInflight {
                key,
                seq,
                packet_id,
                phase,
            } => {
                if let Some(sk) = self.session(key)? {
                    let state = format::inflight_bytes(Some((*packet_id, *phase)));
                    self.set_entry_state(&sk, *seq, state)?;
                }
            }
            Op::Dequeue { key, seq } => {
                if let Some(sk) = self.session(key)? {
                    self.set_entry_state(&sk, *seq, [format::PACK_REMOVED, 0, 0])?;
                }
            }
            Op::ClearQueue { key } => {
                if let Some(sk) = self.session(key)? {
                    self.clear_queue(&sk)?;
                }
            }
            Op::PutIncoming { key, packet_id } => {
                if let Some(sk) = self.session(key)? {
                    let k = format::session_child_key(&sk, &packet_id.to_be_bytes());
                    self.incoming.insert(k.as_slice(), [].as_slice())?;
                }
            }
            Op::DelIncoming { key, packet_id } => {
                if let Some(sk) = self.session(key)? {
                    self.incoming.remove(
                        format::session_child_key(&sk, &packet_id.to_be_bytes()).as_slice(),
                    )?;
                }
            }
            Op::PutGwMeta { json } => {
                self.gw_meta
                    .insert(GW_META_KEY, versioned(json).as_slice())?;
            }
            Op::PutDevice { id, json } => {
                self.devices
                    .insert(format::id_key(*id).as_slice(), versioned(json).as_slice())?;
            }
            Op::DelDevice { id } => {
                let k = format::id_key(*id);
                self.devices.remove(k.as_slice())?;
                self.telemetry.remove(k.as_slice())?;
                self.drop_messages(*id)?;
                self.drop_messages(crate::log_key(crate::LOG_ORIGIN_DEVICE, *id))?;
            }
            Op::PutGroup { id, json } => {
                self.groups
                    .insert(format::id_key(*id).as_slice(), versioned(json).as_slice())?;
            }
            Op::DelGroup { id } => {
                self.groups.remove(format::id_key(*id).as_slice())?;
            }
            Op::PutChannel { id, json } => {
                self.channels
                    .insert(format::id_key(*id).as_slice(), versioned(json).as_slice())?;
            }
            Op::DelChannel { id } => {
                self.channels.remove(format::id_key(*id).as_slice())?;
                self.drop_messages(crate::channel_key(*id))?;
                self.drop_messages(crate::log_key(crate::LOG_ORIGIN_CHANNEL, *id))?;
            }
            Op::PutStream { id, json } => {
                self.streams
                    .insert(format::id_key(*id).as_slice(), versioned(json).as_slice())?;
            }
            Op::DelStream { id } => {
                self.streams.remove(format::id_key(*id).as_slice())?;
                self.drop_messages(crate::stream_key(*id))?;
                self.drop_messages(crate::log_key(crate::LOG_ORIGIN_STREAM, *id))?;
            }
            Op::PutWebhook { id, json } => {
                self.webhooks
                    .insert(format::id_key(*id).as_slice(), versioned(json).as_slice())?;
            }
            Op::DelWebhook { id } => {
                self.webhooks.remove(format::id_key(*id).as_slice())?;
                self.drop_messages(crate::webhook_key(*id))?;
                self.drop_messages(crate::log_key(crate::LOG_ORIGIN_WEBHOOK, *id))?;
            }
            Op::PutTelemetry { device, json } => {
                let k = format::id_key(*device);
                if self.devices.get(k.as_slice())?.is_some() {
                    self.telemetry
                        .insert(k.as_slice(), versioned(json).as_slice())?;
                }
            }
            Op::DelTelemetry { device } => {
                self.telemetry.remove(format::id_key(*device).as_slice())?;
            }
            Op::AppendMessages { device, messages } => {
                let k = format::id_key(*device);
                let owner = match crate::KeyOwner::of(*device) {
                    crate::KeyOwner::Channel(channel)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_CHANNEL, channel) => self
                        .channels
                        .get(format::id_key(channel).as_slice())?
                        .is_some(),
                    crate::KeyOwner::Device(id)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_DEVICE, id) => {
                        self.devices.get(format::id_key(id).as_slice())?.is_some()
                    }
                    crate::KeyOwner::Stream(stream)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_STREAM, stream) => self
                        .streams
                        .get(format::id_key(stream).as_slice())?
                        .is_some(),
                    crate::KeyOwner::Log(
                        crate::LOG_ORIGIN_CUSTOMER | crate::LOG_ORIGIN_MQTT,
                        cid,
                    ) => self.accounts.get(format::id_key(cid).as_slice())?.is_some(),
                    crate::KeyOwner::Webhook(webhook)
                    | crate::KeyOwner::Log(crate::LOG_ORIGIN_WEBHOOK, webhook) => self
                        .webhooks
                        .get(format::id_key(webhook).as_slice())?
                        .is_some(),
                    // Entities the store keeps no record of: nothing would delete their log.
                    crate::KeyOwner::Log(..) => false,
                };
                if !owner {
                    return Ok(());
                }
                let mut stats = self.stats(*device)?;
                for (key, json) in messages {
                    let mk = devices::message_key(*device, *key);
                    self.message_index.insert(mk.as_slice(), [].as_slice())?;
                    let value = versioned(json);
                    if let Some(old) = self
                        .message_data
                        .insert(devices::data_key(&mk).as_slice(), value.as_slice())?
                    {
                        stats.remove(old.value().len().saturating_sub(1));
                    }
                    stats.add(json.len());
                }
                self.message_stats
                    .insert(k.as_slice(), format::encode_stats(&stats).as_slice())?;
            }
            Op::DelMessages { device, from, to } => {
                if from <= to {
                    let (lo, hi) = devices::message_bounds(*device, *from, *to);
                    self.remove_messages(*device, lo, hi, None)?;
                }
            }
            Op::DelMessageKeys { device, keys } => {
                let mut stats = self.stats(*device)?;
                let mut removed = false;
                for key in keys {
                    let mk = devices::message_key(*device, *key);
                    self.message_index.remove(mk.as_slice())?;
                    if let Some(old) = self
                        .message_data
                        .remove(devices::data_key(&mk).as_slice())?
                    {
                        stats.remove(old.value().len().saturating_sub(1));
                        removed = true;
                    }
                }
                if removed {
                    self.message_stats.insert(
                        format::id_key(*device).as_slice(),
                        format::encode_stats(&stats).as_slice(),
                    )?;
                }
            }
            Op::TrimMessages { device, max_bytes } => {
                let (lo, hi) = devices::message_bounds(*device, i64::MIN, i64::MAX);
                self.remove_messages(*device, lo, hi, Some(*max_bytes))?;
            }
        }
        Ok(())
    }

    // ---- session queues (format 2: packs; format 1 per-entry records still read and written)
    //
    // A delivery lives in exactly one place: a pack (while its state there is not removed) or
    // a per-entry record of the `queue` table. Enqueues above every seq stored for the session
    // (the broker's only kind: seqs grow) collect in `batch.appends` and are written by
    // `finish` as one pack per run of consecutive seqs (`PACK_MIN` or more; shorter runs as
    // per-entry records), so a batch costs one B-tree insert per session instead of one per
    // delivery; an entry sent or removed within the same batch is
    // changed in memory (removed ones are never written). Any other enqueue (a seq at or below
    // what is stored: only from tests and imports) replaces the entry as a per-entry record.
    // State changes of stored pack entries collect in `batch.states` and are written once per
    // pack by `finish`, which deletes a pack once every entry is removed.

    fn enqueue(&mut self, sk: Rc<[u8]>, entry: &QueuedRecord) -> Result<(), Fail> {
        if !self.batch.appends.contains_key(&sk) {
            let stored_max = self.stored_max(&sk)?;
            self.batch.appends.insert(
                sk.clone(),
                Appends {
                    stored_max,
                    entries: self.scratch.entries.pop().unwrap_or_default(),
                },
            );
        }
        if let Some(app) = self.batch.appends.get_mut(&sk)
            && app.stored_max.is_none_or(|max| entry.seq > max)
        {
            let pending = Pending {
                record: entry.clone(),
                removed: false,
            };
            match app.entries.last() {
                Some(last) if last.record.seq >= entry.seq => {
                    match app
                        .entries
                        .binary_search_by_key(&entry.seq, |p| p.record.seq)
                    {
                        Ok(i) => app.entries[i] = pending,
                        Err(i) => app.entries.insert(i, pending),
                    }
                }
                _ => app.entries.push(pending),
            }
            return Ok(());
        }
        // At or below what is stored: the new entry replaces the stored one.
        self.pack_entry_state(&sk, entry.seq, [format::PACK_REMOVED, 0, 0])?;
        let k = format::session_child_key(&sk, &entry.seq.to_be_bytes());
        self.queue
            .insert(k.as_slice(), format::encode_queued(entry)?.as_slice())?;
        Ok(())
    }

    /// Sets the in-flight bytes of an entry, or removes it (`PACK_REMOVED`); nothing if the
    /// session has no entry `seq`.
    fn set_entry_state(&mut self, sk: &Rc<[u8]>, seq: u64, state: [u8; 3]) -> Result<(), Fail> {
        let removed = state[0] == format::PACK_REMOVED;
        if let Some(app) = self.batch.appends.get_mut(sk)
            && app.stored_max.is_none_or(|max| seq > max)
        {
            if let Ok(i) = app.entries.binary_search_by_key(&seq, |p| p.record.seq) {
                let p = &mut app.entries[i];
                if removed {
                    p.removed = true;
                } else if !p.removed {
                    p.record.inflight = Some((
                        u16::from_be_bytes([state[1], state[2]]),
                        if state[0] == 2 {
                            crate::model::InflightPhase::Released
                        } else {
                            crate::model::InflightPhase::Sent
                        },
                    ));
                }
            }
            return Ok(());
        }
        if self.pack_entry_state(sk, seq, state)? {
            return Ok(());
        }
        let k = format::session_child_key(sk, &seq.to_be_bytes());
        if removed {
            self.queue.remove(k.as_slice())?;
        } else {
            let value = self.queue.get(k.as_slice())?.map(|v| v.value().to_vec());
            if let Some(mut value) = value {
                format::check_queued_header(&value).map_err(Fail::Corrupt)?;
                value[format::INFLIGHT_AT..format::INFLIGHT_END].copy_from_slice(&state);
                self.queue.insert(k.as_slice(), value.as_slice())?;
            }
        }
        Ok(())
    }

    /// If a stored pack holds entry `seq` (not removed): sets its state to `state` and returns
    /// true.
    fn pack_entry_state(&mut self, sk: &[u8], seq: u64, state: [u8; 3]) -> Result<bool, Fail> {
        let Some((key, first)) = self.pack_of(sk, seq)? else {
            return Ok(false);
        };
        if !self.batch.states.contains_key(&key) {
            let (_, count) = format::decode_pack_rest(&key[sk.len()..]).map_err(Fail::Corrupt)?;
            let loaded = self
                .pack_states
                .get(key.as_slice())?
                .map(|v| v.value().to_vec());
            let st = match loaded {
                Some(bytes) => {
                    if bytes.len() != format::pack_state_len(count) {
                        return Err(Fail::Corrupt(FormatError(format!(
                            "queue pack state of {} bytes for {count} entries",
                            bytes.len()
                        ))));
                    }
                    let removed = (0..count as usize)
                        .filter(|i| bytes[format::pack_state_at(*i)] == format::PACK_REMOVED)
                        .count() as u32;
                    PackState {
                        count,
                        bytes,
                        removed,
                        dirty: false,
                    }
                }
                None => {
                    let mut bytes = vec![0u8; format::pack_state_len(count)];
                    bytes[0] = format::RECORD_V1;
                    PackState {
                        count,
                        bytes,
                        removed: 0,
                        dirty: false,
                    }
                }
            };
            self.batch.states.insert(key.clone(), st);
        }
        let Some(st) = self.batch.states.get_mut(&key) else {
            return Ok(false);
        };
        let at = format::pack_state_at((seq - first) as usize);
        if st.bytes[at] == format::PACK_REMOVED {
            return Ok(false);
        }
        if state[0] == format::PACK_REMOVED {
            st.removed += 1;
        }
        st.bytes[at..at + 3].copy_from_slice(&state);
        st.dirty = true;
        Ok(true)
    }

    /// The key and first seq of the stored pack whose range holds `seq`, if any: the last pack
    /// key at or below `session | seq | u32::MAX`, checked in the batch's states first.
    fn pack_of(&mut self, sk: &[u8], seq: u64) -> Result<Option<(Vec<u8>, u64)>, Fail> {
        let hi = format::pack_key(sk, seq, u32::MAX);
        let contains = |k: &[u8]| -> Result<Option<u64>, Fail> {
            if !k.starts_with(sk) {
                return Ok(None);
            }
            let (first, count) = format::decode_pack_rest(&k[sk.len()..]).map_err(Fail::Corrupt)?;
            Ok((seq >= first && seq - first < u64::from(count)).then_some(first))
        };
        if let Some((k, _)) = self.batch.states.range(..=hi.clone()).next_back()
            && let Some(first) = contains(k)?
        {
            return Ok(Some((k.clone(), first)));
        }
        let found = match self.packs.range(sk..=hi.as_slice())?.next_back() {
            Some(item) => Some(item?.0.value().to_vec()),
            None => None,
        };
        Ok(match found {
            Some(k) => contains(&k)?.map(|first| (k, first)),
            None => None,
        })
    }

    /// The highest seq the session has stored (packs or per-entry records), if any.
    fn stored_max(&self, sk: &[u8]) -> Result<Option<u64>, Fail> {
        let end = format::prefix_end(sk);
        let last = |table: &Table<'_, Bin, Bin>| -> Result<Option<Vec<u8>>, Fail> {
            let item = match &end {
                Some(end) => table.range(sk..end.as_slice())?.next_back(),
                None => table.range(sk..)?.next_back(),
            };
            Ok(match item {
                Some(item) => Some(item?.0.value().to_vec()),
                None => None,
            })
        };
        let mut max = None;
        if let Some(k) = last(&self.packs)? {
            let (first, count) = format::decode_pack_rest(&k[sk.len()..]).map_err(Fail::Corrupt)?;
            max = Some(first + u64::from(count) - 1);
        }
        if let Some(k) = last(&self.queue)? {
            let seq = format::decode_seq(&k[sk.len()..]).map_err(Fail::Corrupt)?;
            max = max.max(Some(seq));
        }
        Ok(max)
    }

    /// Removes every queued delivery of a session: stored, and pending in this batch.
    fn clear_queue(&mut self, sk: &[u8]) -> Result<(), Fail> {
        self.batch.appends.remove(sk);
        self.batch.states.retain(|k, _| !k.starts_with(sk));
        for table in [&mut self.queue, &mut self.packs, &mut self.pack_states] {
            clear_prefix(table, sk)?;
        }
        Ok(())
    }

    /// Writes what the batch did to session queues: each session's appends as one pack per
    /// run of consecutive seqs (entries removed in the batch left out), then each changed
    /// pack's state (or the pack deleted, once every entry is removed).
    fn finish(&mut self) -> Result<(), Fail> {
        let mut value = std::mem::take(&mut self.scratch.value);
        let mut state = std::mem::take(&mut self.scratch.state);
        let appends = std::mem::take(&mut self.batch.appends);
        for (sk, app) in &appends {
            // Runs of consecutive seqs among the entries not removed in the batch (a removed
            // entry breaks a run: the seqs either side of it are not consecutive).
            let entries = &app.entries;
            let mut start = 0;
            while start < entries.len() {
                if entries[start].removed {
                    start += 1;
                    continue;
                }
                let mut end = start + 1;
                while end < entries.len()
                    && !entries[end].removed
                    && entries[end].record.seq == entries[end - 1].record.seq + 1
                    && end - start < u32::MAX as usize
                {
                    end += 1;
                }
                let run = &entries[start..end];
                start = end;
                if run.len() < PACK_MIN {
                    for p in run {
                        let k = format::session_child_key(sk, &p.record.seq.to_be_bytes());
                        self.queue
                            .insert(k.as_slice(), format::encode_queued(&p.record)?.as_slice())?;
                    }
                    continue;
                }
                format::pack_start(&mut value);
                state.clear();
                for p in run {
                    format::put_pack_entry(&mut value, &p.record)?;
                    if p.record.inflight.is_some() && state.is_empty() {
                        state.push(format::RECORD_V1);
                        state.resize(format::pack_state_len(run.len() as u32), 0);
                    }
                }
                if !state.is_empty() {
                    for (i, p) in run.iter().enumerate() {
                        let at = format::pack_state_at(i);
                        state[at..at + 3]
                            .copy_from_slice(&format::inflight_bytes(p.record.inflight));
                    }
                }
                let key = format::pack_key(sk, run[0].record.seq, run.len() as u32);
                self.packs.insert(key.as_slice(), value.as_slice())?;
                if !state.is_empty() {
                    self.pack_states.insert(key.as_slice(), state.as_slice())?;
                }
            }
        }
        for (_, app) in appends {
            self.scratch.keep_list(app.entries);
        }
        Scratch::keep_bytes(&mut self.scratch.value, value);
        Scratch::keep_bytes(&mut self.scratch.state, state);
        let states = std::mem::take(&mut self.batch.states);
        for (key, st) in &states {
            if !st.dirty {
                continue;
            }
            if st.removed >= st.count {
                self.packs.remove(key.as_slice())?;
                self.pack_states.remove(key.as_slice())?;
            } else {
                self.pack_states
                    .insert(key.as_slice(), st.bytes.as_slice())?;
            }
        }
        Ok(())
    }

    /// Deletes every message under message-table key `key`, with its counters.
    fn drop_messages(&mut self, key: u64) -> Result<(), Fail> {
        self.message_stats.remove(format::id_key(key).as_slice())?;
        let (lo, hi) = devices::message_bounds(key, i64::MIN, i64::MAX);
        for item in self.message_index.range(lo.as_slice()..=hi.as_slice())? {
            let (k, _) = item?;
            let ik = index_key(k.value())?;
            self.message_data
                .remove(devices::data_key(&ik).as_slice())?;
        }
        self.message_index
            .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
        Ok(())
    }

    fn stats(&self, device: u64) -> Result<MessageStats, Fail> {
        match self.message_stats.get(format::id_key(device).as_slice())? {
            Some(v) => format::decode_stats(v.value()).map_err(|e| Fail::Corrupt(FormatError(e))),
            None => Ok(MessageStats::default()),
        }
    }

    /// Removes a device's messages between two keys, oldest first; with `keep`, only until at
    /// most that many bytes remain.
    fn remove_messages(
        &mut self,
        device: u64,
        lo: [u8; 24],
        hi: [u8; 24],
        keep: Option<u64>,
    ) -> Result<(), Fail> {
        let mut stats = self.stats(device)?;
        if stats.count == 0 {
            return Ok(());
        }
        let mut gone = Vec::new();
        for item in self.message_index.range(lo.as_slice()..=hi.as_slice())? {
            if keep.is_some_and(|max| stats.bytes <= max) {
                break;
            }
            let (k, _) = item?;
            let ik = index_key(k.value())?;
            if let Some(v) = self
                .message_data
                .remove(devices::data_key(&ik).as_slice())?
            {
                stats.remove(v.value().len().saturating_sub(1));
            }
            gone.push(ik);
        }
        for k in &gone {
            self.message_index.remove(k.as_slice())?;
        }
        if !gone.is_empty() {
            self.message_stats.insert(
                format::id_key(device).as_slice(),
                format::encode_stats(&stats).as_slice(),
            )?;
        }
        Ok(())
    }
}

/// Table `def` of a read transaction; `None` when the store has never written it.
fn read_table(
    tx: &redb::ReadTransaction,
    def: TableDefinition<Bin, Bin>,
) -> Result<Option<redb::ReadOnlyTable<Bin, Bin>>, StoreError> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(engine(e)),
    }
}

/// The JSON document of a stored record, without copying it; `None` for an unknown record
/// version.
fn record_json(v: &[u8]) -> Option<&[u8]> {
    match v.split_first() {
        Some((&format::RECORD_V1, json)) => Some(json),
        _ => None,
    }
}

/// A message-index key read back from the table.
fn index_key(k: &[u8]) -> Result<[u8; 24], Fail> {
    <[u8; 24]>::try_from(k).map_err(|_| {
        Fail::Corrupt(FormatError(format!(
            "a message index key of {} bytes, expected 24",
            k.len()
        )))
    })
}

/// Converts a format 1 store's messages (one table in `owner | ts | seq` order) to format 2's
/// data and index tables, [`MIGRATE_CHUNK`] messages per transaction (so memory stays bounded
/// on a large store, and a crash halfway resumes where the last commit left off), then drops
/// the old table and records format 2, durably.
fn migrate_messages(db: &Database) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut moved = 0usize;
    loop {
        let tx = db.begin_write().map_err(engine)?;
        let done = {
            let mut old = match tx.open_table(MESSAGES_V1) {
                Ok(t) => Some(t),
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(engine(e)),
            };
            let mut chunk = Vec::new();
            if let Some(old) = &old {
                for item in old.iter().map_err(engine)?.take(MIGRATE_CHUNK) {
                    let (k, v) = item.map_err(engine)?;
                    chunk.push((k.value().to_vec(), v.value().to_vec()));
                }
            }
            let mut index = tx.open_table(MESSAGE_INDEX).map_err(engine)?;
            let mut data = tx.open_table(MESSAGE_DATA).map_err(engine)?;
            for (k, v) in &chunk {
                let ik = <[u8; 24]>::try_from(k.as_slice()).map_err(|_| {
                    StoreError::Engine(format!(
                        "format 1 message key of {} bytes, expected 24",
                        k.len()
                    ))
                })?;
                index.insert(ik.as_slice(), [].as_slice()).map_err(engine)?;
                data.insert(devices::data_key(&ik).as_slice(), v.as_slice())
                    .map_err(engine)?;
                if let Some(old) = &mut old {
                    old.remove(ik.as_slice()).map_err(engine)?;
                }
            }
            moved += chunk.len();
            chunk.len() < MIGRATE_CHUNK
        };
        if done {
            tx.delete_table(MESSAGES_V1).map_err(engine)?;
            let mut meta = tx.open_table(META).map_err(engine)?;
            meta.insert(META_VERSION, FORMAT_VERSION.to_be_bytes().as_slice())
                .map_err(engine)?;
            drop(meta);
        }
        tx.commit().map_err(engine)?;
        if done {
            tracing::info!(messages = moved, took = ?started.elapsed(), "store converted to format {FORMAT_VERSION}");
            return Ok(());
        }
    }
}

/// A JSON document behind the record version byte.
fn versioned(json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(json.len() + 1);
    v.push(format::RECORD_V1);
    v.extend_from_slice(json);
    v
}

/// The JSON document of a versioned record.
fn unversioned(v: &[u8]) -> Result<Bytes, FormatError> {
    match v.split_first() {
        Some((&format::RECORD_V1, json)) => Ok(Bytes::copy_from_slice(json)),
        Some((other, _)) => Err(FormatError(format!("unknown record version {other}"))),
        None => Err(FormatError("empty record".into())),
    }
}

/// Deletes every key that starts with `prefix`.
fn clear_prefix(table: &mut Table<'_, Bin, Bin>, prefix: &[u8]) -> Result<(), Fail> {
    match format::prefix_end(prefix) {
        Some(end) => table.retain_in(prefix..end.as_slice(), |_, _| false)?,
        None => table.retain_in(prefix.., |_, _| false)?,
    }
    Ok(())
}

/// Creates an empty store: initialised under a temporary name, synced, then renamed into
/// place (and the directory synced), so `tern.redb` is always a whole store.
fn create(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let tmp = dir.join(NEW_FILE);
    // A leftover of a creation that crashed: never renamed, so never used.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    {
        let db = Builder::new()
            .create(&tmp)
            .map_err(|e| open_error(&tmp, e))?;
        let tx = db.begin_write().map_err(engine)?;
        {
            let mut meta = tx.open_table(META).map_err(engine)?;
            meta.insert(META_MAGIC, MAGIC).map_err(engine)?;
            meta.insert(META_VERSION, FORMAT_VERSION.to_be_bytes().as_slice())
                .map_err(engine)?;
        }
        drop(Tables::open(&tx, Scratch::default())?);
        tx.commit().map_err(engine)?;
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Takes the exclusive lock that keeps a second tern away from the store.
fn lock(path: &Path) -> Result<File, StoreError> {
    let file = File::open(path).map_err(io_err(path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Engine(format!(
            "{} is in use by another process",
            path.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(io_err(path)(e)),
    }
}

/// Opens the store through a copy-on-write overlay, runs redb's recovery and full integrity
/// check there, checks the identity and version and decodes every record. Nothing is written
/// to the file.
fn verify(path: &Path) -> Result<Snapshot, StoreError> {
    verify_with(path, |_, snapshot| Ok(snapshot))
}

/// [`verify`], then `then` on the verified (overlay) database and its snapshot.
fn verify_with<T>(
    path: &Path,
    then: impl FnOnce(&Database, Snapshot) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Err(corrupt("the file is empty".into()));
    }
    let overlay = Overlay::new(file, len);
    let os_failure = overlay.os_failure.clone();
    // redb checks every page checksum here and reports damage as an error, but it has internal
    // assertions too: a panic while reading a damaged file is a refusal, not a crash.
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<T, StoreError> {
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create_with_backend(overlay)
            .map_err(|e| open_error(path, e))?;
        check_meta(path, &db)?;
        let snapshot = read_snapshot(path, &db)?;
        then(&db, snapshot)
    }));
    if let Some(e) = os_failure.lock().take() {
        return Err(io_err(path)(e));
    }
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(corrupt(format!(
                "the storage engine failed reading it ({what})"
            )))
        }
    }
}

/// Checks the store's identity and format version. Returns the version found: this build's,
/// or an older one it converts when opening for writing ([`migrate_messages`]: format 2's
/// message tables; format 1's per-entry queue records stay valid beside format 2's queue packs).
fn check_meta(path: &Path, db: &impl ReadableDatabase) -> Result<u32, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let tx = db.begin_read().map_err(engine)?;
    let meta = match tx.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(corrupt(
                "not a tern store (a redb file without tern's meta table)".into(),
            ));
        }
        Err(e) => return Err(corrupt(format!("meta table: {e}"))),
    };
    let magic = meta
        .get(META_MAGIC)
        .map_err(engine)?
        .map(|v| v.value().to_vec());
    if magic.as_deref() != Some(MAGIC) {
        return Err(corrupt(
            "not a tern store (no tern identity in the meta table)".into(),
        ));
    }
    let version = meta
        .get(META_VERSION)
        .map_err(engine)?
        .map(|v| v.value().to_vec());
    let found = match version.as_deref().map(<[u8; 4]>::try_from) {
        Some(Ok(b)) => u32::from_be_bytes(b),
        _ => {
            return Err(corrupt(
                "the format version record is missing or malformed".into(),
            ));
        }
    };
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
        return Err(StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok(found)
}

/// Reads and decodes every record.
fn read_snapshot(path: &Path, db: &impl ReadableDatabase) -> Result<Snapshot, StoreError> {
    let corrupt = |table: &str, key: &[u8], e: FormatError| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("table {table}, key {}: {e}", hex(key)),
    };
    let tx = db.begin_read().map_err(engine)?;
    let open = |def: TableDefinition<Bin, Bin>| {
        tx.open_table(def).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("table {}: {e}", def.name()),
        })
    };
    let mut snap = Snapshot::default();
    for (def, out) in [(ACCOUNTS, &mut snap.accounts), (TOKENS, &mut snap.tokens)] {
        for item in open(def)?.iter().map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            let id =
                format::decode_id_key(k.value()).map_err(|e| corrupt(def.name(), k.value(), e))?;
            out.push((id, Bytes::copy_from_slice(v.value())));
        }
    }
    for item in open(RETAINED)?.iter().map_err(engine)? {
        let (k, v) = item.map_err(engine)?;
        let fail = |e| corrupt("retained", k.value(), e);
        let (cid, topic) = format::decode_retained_key(k.value()).map_err(fail)?;
        let msg = format::decode_retained(Bytes::copy_from_slice(v.value())).map_err(fail)?;
        if msg.cid != cid || msg.topic != topic {
            return Err(fail(FormatError(
                "the message does not match its key".into(),
            )));
        }
        snap.retained.push(Arc::new(msg));
    }
    // The devices layer's tables, absent from stores made before it: empty then.
    let optional = |def: TableDefinition<Bin, Bin>| match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("table {}: {e}", def.name()),
        }),
    };
    for (def, out) in [
        (DEVICES, &mut snap.devices),
        (GROUPS, &mut snap.groups),
        (CHANNELS, &mut snap.channels),
        (STREAMS, &mut snap.streams),
        (WEBHOOKS, &mut snap.webhooks),
        (TELEMETRY, &mut snap.telemetry),
    ] {
        let Some(table) = optional(def)? else {
            continue;
        };
        for item in table.iter().map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            let fail = |e| corrupt(def.name(), k.value(), e);
            let id = format::decode_id_key(k.value()).map_err(fail)?;
            out.push((id, unversioned(v.value()).map_err(fail)?));
        }
    }
    match tx.open_table(GW_META) {
        Ok(table) => {
            if let Some(v) = table.get(GW_META_KEY).map_err(engine)? {
                snap.gw_meta = Some(
                    unversioned(v.value())
                        .map_err(|e| corrupt("gw_meta", GW_META_KEY.as_bytes(), e))?,
                );
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("table gw_meta: {e}"),
            });
        }
    }
    if let Some(table) = optional(MESSAGE_STATS)? {
        for item in table.iter().map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            let fail = |e| corrupt("device_message_stats", k.value(), e);
            let id = format::decode_id_key(k.value()).map_err(fail)?;
            let stats = format::decode_stats(v.value()).map_err(|e| fail(FormatError(e)))?;
            snap.message_stats.push((id, stats));
        }
    }
    // Sessions by their key bytes, to attach subscriptions, queue and incoming ids.
    let mut sessions: BTreeMap<Vec<u8>, SessionSnapshot> = BTreeMap::new();
    for item in open(SESSIONS)?.iter().map_err(engine)? {
        let (k, v) = item.map_err(engine)?;
        let fail = |e| corrupt("sessions", k.value(), e);
        let (key, rest) = format::decode_session_prefix(k.value()).map_err(fail)?;
        if !rest.is_empty() {
            return Err(fail(FormatError(format!(
                "{} bytes after the session key",
                rest.len()
            ))));
        }
        let record =
            format::decode_session(key, Bytes::copy_from_slice(v.value())).map_err(fail)?;
        let s = SessionSnapshot {
            record,
            subscriptions: Vec::new(),
            queue: Vec::new(),
            incoming_qos2: Vec::new(),
        };
        sessions.insert(k.value().to_vec(), s);
    }
    for item in open(SUBSCRIPTIONS)?.iter().map_err(engine)? {
        let (k, v) = item.map_err(engine)?;
        let fail = |e| corrupt("subscriptions", k.value(), e);
        let (session, rest) = owner(&mut sessions, k.value()).map_err(fail)?;
        let filter = format::decode_filter(rest).map_err(fail)?;
        let value = Bytes::copy_from_slice(v.value());
        session
            .subscriptions
            .push(format::decode_subscription(filter, value).map_err(fail)?);
    }
    for item in open(QUEUE)?.iter().map_err(engine)? {
        let (k, v) = item.map_err(engine)?;
        let fail = |e| corrupt("queue", k.value(), e);
        let (session, rest) = owner(&mut sessions, k.value()).map_err(fail)?;
        let seq = format::decode_seq(&rest).map_err(fail)?;
        let value = Bytes::copy_from_slice(v.value());
        session
            .queue
            .push(format::decode_queued(seq, value).map_err(fail)?);
    }
    // Format 2's packs (absent from format 1 stores), with their states.
    let mut pack_states: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    if let Some(table) = optional(QUEUE_PACK_STATES)? {
        for item in table.iter().map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            pack_states.insert(k.value().to_vec(), v.value().to_vec());
        }
    }
    if let Some(table) = optional(QUEUE_PACKS)? {
        for item in table.iter().map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            let fail = |e| corrupt("queue_packs", k.value(), e);
            let (session, rest) = owner(&mut sessions, k.value()).map_err(fail)?;
            let (first, count) = format::decode_pack_rest(&rest).map_err(fail)?;
            let state = pack_states.remove(k.value());
            let value = Bytes::copy_from_slice(v.value());
            format::decode_pack(first, count, value, state.as_deref(), &mut session.queue)
                .map_err(fail)?;
        }
    }
    if let Some((k, _)) = pack_states.first_key_value() {
        return Err(corrupt(
            "queue_pack_states",
            k,
            FormatError("the state of a queue pack that does not exist".into()),
        ));
    }
    for s in sessions.values_mut() {
        // Per-entry records (format 1, or entries replaced) and packs, in seq order.
        if !s.queue.is_sorted_by_key(|q| q.seq) {
            s.queue.sort_by_key(|q| q.seq);
        }
    }
    for item in open(INCOMING)?.iter().map_err(engine)? {
        let (k, v) = item.map_err(engine)?;
        let fail = |e| corrupt("incoming", k.value(), e);
        let (session, rest) = owner(&mut sessions, k.value()).map_err(fail)?;
        if !v.value().is_empty() {
            return Err(fail(FormatError("unexpected value".into())));
        }
        session
            .incoming_qos2
            .push(format::decode_packet_id(&rest).map_err(fail)?);
    }
    // The length prefix orders keys by client id length first; the snapshot is in
    // `SessionKey` order, like `MemoryState::snapshot`.
    snap.sessions = sessions.into_values().collect();
    snap.sessions
        .sort_by(|a, b| a.record.key.cmp(&b.record.key));
    Ok(snap)
}

/// The session a per-session key belongs to, and the rest of the key. Keys are in order, so
/// each session's entries arrive in filter, seq or packet id order.
fn owner<'a>(
    sessions: &'a mut BTreeMap<Vec<u8>, SessionSnapshot>,
    key: &[u8],
) -> Result<(&'a mut SessionSnapshot, Bytes), FormatError> {
    let (session, rest) = format::decode_session_prefix(key)?;
    let sk = format::session_key(&session)?;
    match sessions.get_mut(&sk) {
        Some(s) => Ok((s, rest)),
        None => Err(FormatError(
            "belongs to a session that does not exist".into(),
        )),
    }
}

fn hex(b: &[u8]) -> String {
    const SHOWN: usize = 48;
    let mut s: String = b.iter().take(SHOWN).map(|x| format!("{x:02x}")).collect();
    if b.len() > SHOWN {
        s.push_str("...");
    }
    s
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn engine(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(e.into().to_string())
}

/// Errors of opening a store file: damage is `Corrupt`, a second opener is refused.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            StoreError::Engine(format!("{} is in use by another process", path.display()))
        }
        redb::DatabaseError::UpgradeRequired(v) => corrupt(format!(
            "the storage engine's file format {v} is not the one this tern reads"
        )),
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
            corrupt(format!("unreadable: {source}"))
        }
        other => corrupt(other.to_string()),
    }
}

/// A read-only view of the store file that takes writes in memory, in 4 KiB blocks. redb's
/// recovery and integrity check write (the allocator state, the header); here those writes
/// never reach the file.
#[derive(Debug)]
struct Overlay {
    file: File,
    state: Mutex<OverlayState>,
    /// An operating system error reading the file (as opposed to a read past its end, which
    /// is damage): reported as I/O, not as corruption.
    os_failure: Arc<Mutex<Option<io::Error>>>,
}

#[derive(Debug)]
struct OverlayState {
    len: u64,
    /// Bytes of the file still visible (a shrink hides the rest for good).
    base_len: u64,
    blocks: HashMap<u64, Box<[u8]>>,
}

const BLOCK: u64 = 4096;

impl Overlay {
    fn new(file: File, len: u64) -> Overlay {
        Overlay {
            file,
            state: Mutex::new(OverlayState {
                len,
                base_len: len,
                blocks: Default::default(),
            }),
            os_failure: Default::default(),
        }
    }

    /// Reads `out.len()` bytes of the file at `offset`, zeros past `base_len`.
    fn read_base(&self, base_len: u64, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let from_file = base_len.saturating_sub(offset).min(out.len() as u64) as usize;
        let (head, tail) = out.split_at_mut(from_file);
        if !head.is_empty()
            && let Err(e) = self.file.read_exact_at(head, offset)
        {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.os_failure.lock().get_or_insert(e);
            return Err(copy);
        }
        tail.fill(0);
        Ok(())
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.state.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let st = self.state.lock();
        if offset
            .checked_add(out.len() as u64)
            .is_none_or(|end| end > st.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let block = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(out.len() - done);
            match st.blocks.get(&block) {
                Some(b) => out[done..done + n].copy_from_slice(&b[within..within + n]),
                None => self.read_base(st.base_len, at, &mut out[done..done + n])?,
            }
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut st = self.state.lock();
        if len < st.len {
            st.blocks.retain(|b, _| b * BLOCK < len);
            if let Some(b) = st.blocks.get_mut(&(len / BLOCK)) {
                b[(len % BLOCK) as usize..].fill(0);
            }
            st.base_len = st.base_len.min(len);
        }
        st.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut st = self.state.lock();
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let block = at / BLOCK;
            let within = (at % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(data.len() - done);
            if !st.blocks.contains_key(&block) {
                let mut b = vec![0u8; BLOCK as usize].into_boxed_slice();
                self.read_base(st.base_len, block * BLOCK, &mut b)?;
                st.blocks.insert(block, b);
            }
            if let Some(b) = st.blocks.get_mut(&block) {
                b[within..within + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
        }
        st.len = st.len.max(offset + data.len() as u64);
        Ok(())
    }
}
