//! Durable storage of documents: an append-only update log per document, snapshots that
//! compact it, and version-history checkpoints.
//!
//! [`Store`] is the interface the document registry uses; [`sqlite::SqliteStore`] is the
//! embedded implementation (the default), [`postgres::PostgresStore`] the one several nodes
//! share (`--database-url`). The trait is object-safe (`Arc<dyn Store>`), and [`open`] picks
//! the backend at startup.
//!
//! Semantics every implementation keeps:
//! - Each document's log entries carry a sid (sequence number) assigned by the store: 1, 2, 3…
//!   strictly increasing, without gaps, never reused (compaction does not reset it).
//! - An append returns only once its update is durable: a crash right after loses nothing.
//! - [`Store::load`] returns `Ok(None)` only for a document that was never written. Any failure
//!   to read is an `Err`, so a caller never mistakes real data for a new, empty document.
//! - [`Store::compact`] replaces the log up to a sid by a snapshot of the document at that sid;
//!   `updates_since` an older sid then answers [`Since::Compacted`]. When to compact and when
//!   to keep a checkpoint is decided above the store (the document layer); the store only keeps
//!   what it is given, so every backend behaves alike.
//!
//! What the store assumes about its writers: each document has one writer at a time on a
//! node, its owner task, which sends one append of a document after another (never two at
//! once) and compacts only with none of that document's appends in flight. `SqliteStore`
//! relies on this for compaction (the snapshot must hold exactly the state at `upto`) and is
//! one node's store. A store shared by several nodes must not: it assigns each append its sids
//! inside the transaction that stores it (a per-document counter row locked until commit, so
//! commit order is sid order), and serialises compactions of one document itself.
//!
//! Several nodes on one store ([`Store::is_shared`]): [`Store::lock`] holds one document's
//! writes (appends and compactions, from every node) while a caller reads what was committed
//! and decides a conditional write; [`Store::last_sids`] tells a node, in one query, where the
//! documents it serves stand. A shared store fails with [`StoreError::Unavailable`] when the
//! database cannot be reached (retry later), and with [`StoreError::Backend`] when the database
//! refused a statement.
//!
//! Idempotency keys ([`Store::append_with_keys`], [`Store::idempotency_key`]): a write
//! request that carries a key is stored together with a [`KeyRecord`] (the key, a fingerprint
//! of the request, and the answer it got), in the same transaction as the updates it made, so
//! after any crash either both are durable or neither is. What every backend keeps:
//! - A record is found by `(doc, user, key)`, and a key has at most one live record: an append
//!   carrying a key that already has one is refused whole ([`StoreError::KeyInUse`]), so two
//!   writers (two nodes) racing on one key cannot both commit. A shared backend enforces this
//!   with a unique constraint checked inside the append's transaction, not by a read before it;
//!   keys live in the store, never only in one node's memory.
//! - A record lives at least [`KeyLimits::ttl_ms`] (24 h) and is then expired: lookups no
//!   longer see it and its key may be used again. Records are bounded ([`KeyLimits`]): at most
//!   `max_keys` records and `max_bytes` bytes of answers in all; beyond that the oldest records
//!   go first, even before 24 h. Eviction happens in the transactions that add records.
//! - A lookup sees exactly the committed records: a record it does not see was not committed
//!   when the lookup began.
//!
//! Architecture invariant: the store treats updates, snapshots and answers as opaque bytes. It
//! knows nothing of Yjs, of the engine, of HTTP, or of connections.

pub mod inbox;
pub mod postgres;
pub mod sqlite;
mod sqlite_inbox;

#[cfg(test)]
mod contract;

use crate::infra::config::{Config, StorageConfig};
use crate::infra::metrics::Metrics;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use inbox::{
    DeliveryState, DueEntry, Grant, InboxLimits, NewNotification, Notification, OutboxEvent,
    OutboxRow, ReadMark,
};

/// A per-document sequence number. The first update of a document is sid 1; 0 means "nothing
/// yet".
pub type Sid = u64;

/// One stored update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sid.
    pub sid: Sid,
    /// The encoded Yjs update (v1), as appended.
    pub update: Bytes,
    /// Who sent it (a user id).
    pub author: String,
    /// When it was committed, unix milliseconds.
    pub at: u64,
}

/// An update to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpdate {
    /// The encoded Yjs update.
    pub update: Bytes,
    /// Who sent it.
    pub author: String,
}

/// The sids given to a batch appended with [`Store::append_batch`]: `first..=last`, contiguous.
/// A batch of keys only (no updates) gets `first = last + 1`, `last` the document's last sid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidRange {
    /// The first update's sid.
    pub first: Sid,
    /// The last update's sid.
    pub last: Sid,
}

/// What identifies one request among those that reuse a key: a SHA-256 digest, computed above
/// the store (the store only compares them).
pub type Fingerprint = [u8; 32];

/// The answer a request with an idempotency key got, replayed to its retries. Opaque to the
/// store: a status, headers and a body as the layer above rendered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Headers that belong to the answer (e.g. `etag`), lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// Bytes the record takes, as counted against [`KeyLimits::max_bytes`].
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// An idempotency key to store with a batch ([`Store::append_with_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The user the key belongs to.
    pub user: String,
    /// The key, as the client sent it.
    pub key: String,
    /// The fingerprint of the request that used it first.
    pub fingerprint: Fingerprint,
    /// The answer that request got.
    pub answer: Answer,
    /// Where the request's write stands in the batch: its sid is the sid of the batch's
    /// `after`-th update (counting from 1), or, when 0, the document's last sid before the
    /// batch (a write that changed nothing, such as a stale conditional write).
    pub after: usize,
}

/// A stored idempotency key ([`Store::idempotency_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The fingerprint of the request that used it first.
    pub fingerprint: Fingerprint,
    /// The answer that request got.
    pub answer: Answer,
    /// The sid of its write (see [`NewKey::after`]).
    pub sid: Sid,
    /// When it was stored, unix milliseconds.
    pub at: u64,
}

/// How long idempotency records live and how many are kept (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// A record expires this long after it was stored (milliseconds; 24 h).
    pub ttl_ms: u64,
    /// At most this many records in all (100,000); the oldest are evicted first.
    pub max_keys: u64,
    /// At most this many bytes of answers in all (256 MiB; [`Answer::size`]); the oldest
    /// records are evicted first.
    pub max_bytes: u64,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            ttl_ms: 24 * 60 * 60 * 1000,
            max_keys: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

/// A document's full state at one sid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The sid the state includes everything up to.
    pub sid: Sid,
    /// The encoded state (a Yjs update holding the whole document).
    pub state: Bytes,
}

/// Everything needed to rebuild a document: apply `snapshot` (if any), then `updates` in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The latest snapshot, if the document was ever compacted.
    pub snapshot: Option<Snapshot>,
    /// Log entries after the snapshot, in sid order, without gaps.
    pub updates: Vec<LogEntry>,
    /// The document's latest sid (the last update's, or the snapshot's when the log is empty).
    pub last_sid: Sid,
    /// Where version history stands: the last checkpoint, and the authors of the updates
    /// compacted since it (as the last [`Compaction`] left them).
    pub history: HistoryMark,
}

/// Where a document's version history stands, as stored by the last compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryMark {
    /// The last checkpoint's sid and time (unix milliseconds), if any.
    pub last_checkpoint: Option<(Sid, u64)>,
    /// Authors of the updates folded into the snapshot since that checkpoint, sorted.
    pub authors: Vec<String>,
}

/// What [`Store::compact`] stores. The caller decides (the store keeps no policy): the snapshot
/// replaces the log up to `upto`; with `checkpoint_at`, the same state is also kept as a
/// version-history checkpoint made at that time, crediting `authors`; without, `authors` is
/// kept as the [`HistoryMark`] the next load returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// The sid the state includes everything up to.
    pub upto: Sid,
    /// The encoded state at `upto`.
    pub state: Bytes,
    /// Users whose updates went in since the last checkpoint, up to `upto`, sorted.
    pub authors: Vec<String>,
    /// Keep a checkpoint at `upto`, made at this time (unix milliseconds).
    pub checkpoint_at: Option<u64>,
}

impl Loaded {
    /// Bytes held in the log after the snapshot (for [`CompactionPolicy::is_due`]).
    pub fn log_bytes(&self) -> u64 {
        self.updates.iter().map(|e| e.update.len() as u64).sum()
    }
}

/// The answer of [`Store::updates_since`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Every entry after the requested sid, in order (empty when up to date).
    Updates {
        /// The entries.
        entries: Vec<LogEntry>,
        /// The document's latest sid.
        last_sid: Sid,
    },
    /// The requested sid is older than the retained log: do a full sync instead.
    Compacted {
        /// The oldest sid `updates_since` can still answer from.
        snapshot_sid: Sid,
    },
    /// The requested sid is newer than anything stored (a client from another store, or a
    /// forged sid).
    Ahead {
        /// The document's latest sid.
        last_sid: Sid,
    },
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Log entries removed.
    pub removed: u64,
    /// The sid of the version-history checkpoint kept, when one was due.
    pub checkpoint: Option<Sid>,
}

/// A version-history checkpoint (its state is read with [`Store::checkpoint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The sid the checkpoint's state includes everything up to.
    pub sid: Sid,
    /// When it was kept, unix milliseconds.
    pub at: u64,
    /// Users whose updates went in since the previous checkpoint, sorted.
    pub authors: Vec<String>,
}

/// A failure below the store (SQLite, I/O, a network database), shared cheaply so one
/// failed group commit can answer every request in it.
#[derive(Clone)]
pub struct BackendError(Arc<dyn std::error::Error + Send + Sync>);

impl BackendError {
    /// Wraps any error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        BackendError(Arc::new(e))
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened or created at this location.
    #[error("cannot open the store at {location}: {cause}")]
    Open {
        /// The path or URL (without credentials).
        location: String,
        /// The cause (shown in the message, so not also chained as a source: it would print
        /// twice).
        cause: BackendError,
    },
    /// The stored schema is a version this build does not read.
    #[error("the store's schema version {found} is not supported (this build reads version {supported})")]
    UnsupportedSchema {
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A read or write failed in the database (the database answered, and refused it).
    #[error("storage failure: {0}")]
    Backend(#[from] BackendError),
    /// The database is unreachable (cannot connect, connection lost, no pooled connection
    /// free in time, I/O); retry later. An append that fails so was not reported committed,
    /// but may have been (like a lost ack).
    #[error("the database is unreachable; retry later: {cause}")]
    Unavailable {
        /// The connection-level failure.
        cause: BackendError,
    },
    /// Stored data contradicts itself (a gap in a log, a missing snapshot).
    #[error("document {doc:?} is corrupt in storage: {detail}")]
    Corrupt {
        /// The document.
        doc: String,
        /// What is wrong.
        detail: String,
    },
    /// An operation that needs an existing document named one never written.
    #[error("document {0:?} does not exist")]
    UnknownDocument(String),
    /// A compaction named a sid the document has not reached.
    #[error("cannot compact {doc:?} up to sid {upto}: its last sid is {last_sid}")]
    CompactBeyondLog {
        /// The document.
        doc: String,
        /// The requested sid.
        upto: Sid,
        /// The document's last sid.
        last_sid: Sid,
    },
    /// A compaction older than the document's current snapshot.
    #[error(
        "cannot compact {doc:?} up to sid {upto}: it already has a snapshot at {snapshot_sid}"
    )]
    CompactBehindSnapshot {
        /// The document.
        doc: String,
        /// The requested sid.
        upto: Sid,
        /// The current snapshot's sid.
        snapshot_sid: Sid,
    },
    /// An append of zero updates.
    #[error("an append needs at least one update")]
    EmptyAppend,
    /// An append carried an idempotency key that already has a live record; nothing of the
    /// append was stored.
    #[error("idempotency key {key:?} of {user:?} on {doc:?} is already stored")]
    KeyInUse {
        /// The document.
        doc: String,
        /// The key's user.
        user: String,
        /// The key.
        key: String,
    },
    /// The store was closed, or its writer stopped after a fatal error.
    #[error("the store is closed")]
    Closed,
    /// The configuration names a backend this build does not drive.
    #[error("{flag} is set, but this build of tandem cannot use it yet: {what}")]
    BackendUnavailable {
        /// The flag that asked for it.
        flag: &'static str,
        /// What is missing.
        what: &'static str,
    },
}

/// Durable document storage. Object-safe: the server holds an `Arc<dyn Store>`.
///
/// Idempotency records are part of the contract (see the module docs): a backend stores them
/// in the transaction of the append that carries them, refuses a second live record of a key
/// inside that transaction (a unique constraint, so it holds across nodes), keeps them
/// [`KeyLimits`], and answers [`Store::idempotency_key`] from committed data only.
///
/// Cancellation: dropping an append's future after it was queued does not withdraw the
/// update; it may still be committed (durable but unacknowledged, like a lost ack).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Everything stored for `doc`; `Ok(None)` only if it was never written.
    async fn load(&self, doc: &str) -> Result<Option<Loaded>, StoreError>;

    /// Appends one update and returns its sid once it is durable.
    async fn append(&self, doc: &str, update: Bytes, author: &str) -> Result<Sid, StoreError>;

    /// Appends several updates of one document atomically; returns their contiguous sids once
    /// durable.
    async fn append_batch(
        &self,
        doc: &str,
        updates: Vec<NewUpdate>,
    ) -> Result<SidRange, StoreError> {
        self.append_with_keys(doc, updates, Vec::new()).await
    }

    /// Appends `updates` and stores `keys` (the idempotency records of the requests that made
    /// them) in one transaction: once this returns `Ok`, all of it is durable; on `Err`, none
    /// of it is stored. A key that already has a live record fails the whole append with
    /// [`StoreError::KeyInUse`] (other appends committed with it are not affected). `updates`
    /// may be empty when `keys` is not (requests that changed nothing); such a batch does not
    /// create the document. Evicts expired and surplus records ([`KeyLimits`]).
    async fn append_with_keys(
        &self,
        doc: &str,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
    ) -> Result<SidRange, StoreError> {
        self.append_full(doc, updates, keys, Vec::new()).await
    }

    /// [`Store::append_with_keys`], and `events` written to the webhook outbox in the same
    /// transaction (each row gets the batch's sids). Events of a batch without updates are
    /// written with `first = last + 1`.
    async fn append_full(
        &self,
        doc: &str,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
        events: Vec<OutboxEvent>,
    ) -> Result<SidRange, StoreError>;

    /// The live (committed, not expired, not evicted) record of `user`'s `key` on `doc`.
    async fn idempotency_key(
        &self,
        doc: &str,
        user: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// The log entries after `sid` (see [`Since`]).
    async fn updates_since(&self, doc: &str, sid: Sid) -> Result<Since, StoreError>;

    /// Stores the compaction's state as the document's snapshot at `upto`, deletes log entries
    /// up to it, and keeps a checkpoint when asked (see [`Compaction`]).
    async fn compact(&self, doc: &str, compaction: Compaction) -> Result<Compacted, StoreError>;

    /// The document's version-history checkpoints, oldest first.
    async fn checkpoints(&self, doc: &str) -> Result<Vec<CheckpointInfo>, StoreError>;

    /// The state kept by the checkpoint at `sid`, if there is one.
    async fn checkpoint(&self, doc: &str, sid: Sid) -> Result<Option<Bytes>, StoreError>;

    /// Waits until every write queued before this call is durable.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Flushes, then stops the store; later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;

    /// Whether several nodes may share this store (PostgreSQL: true; SQLite: false).
    fn is_shared(&self) -> bool;

    /// The last sid of each of `docs` (0 for a document never written), in the order given.
    /// One query.
    async fn last_sids(&self, docs: &[String]) -> Result<Vec<Sid>, StoreError>;

    /// Takes `doc`'s write lock: until the returned guard appends (and commits) or is dropped,
    /// no other append or compaction of `doc` commits, on any node. The guard also holds what
    /// was committed after `after` (read under the lock), so the caller can bring its replica
    /// up to date before deciding a conditional write.
    ///
    /// A shared store holds a database transaction (and one pooled connection) for as long as
    /// the guard lives: keep it short, and never wait for another write of `doc` while holding
    /// it. A one-node store ([`Store::is_shared`] false) relies on the owner task being the
    /// document's only writer: its guard excludes nothing.
    async fn lock(&self, doc: &str, after: Sid) -> Result<Box<dyn Locked>, StoreError>;

    /// Records that `user`'s tokens issued at or before `at` (unix seconds) are revoked.
    /// Durable once it returns; a later time for the same user replaces an earlier one, an
    /// earlier time is ignored.
    async fn record_revocation(&self, user: &str, at: u64) -> Result<(), StoreError>;

    /// Every recorded revocation `(user, at)`, the latest time per user, in no particular
    /// order. (Used at start and while the live broadcast is down.)
    async fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Stores `items` (ids from each user's counter) and writes `events` to the outbox, in one
    /// transaction; then keeps each user's newest [`InboxLimits::per_user`], none older than
    /// [`InboxLimits::ttl_ms`] before the newest one's time. Returns the stored notifications in the order given.
    async fn add_notifications(
        &self,
        items: Vec<NewNotification>,
        events: Vec<(String, OutboxEvent)>,
        limits: InboxLimits,
    ) -> Result<Vec<Notification>, StoreError>;

    /// `user`'s notifications with ids below `before` (all when `None`), newest first, at
    /// most `limit`.
    async fn notifications(
        &self,
        user: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// `user`'s notifications with ids above `after`, oldest first, at most `limit`.
    async fn notifications_after(
        &self,
        user: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// How many of `user`'s notifications are unread.
    async fn unread(&self, user: &str) -> Result<u64, StoreError>;

    /// Marks notifications of `user` read; answers how many stay unread.
    async fn mark_read(&self, user: &str, mark: ReadMark) -> Result<u64, StoreError>;

    /// Remembers that `grant.user` holds a token with this pattern and role (a later expiry
    /// for the same user, pattern and role replaces an earlier one).
    async fn record_grant(&self, grant: Grant) -> Result<(), StoreError>;

    /// Every grant recorded for `user`.
    async fn grants(&self, user: &str) -> Result<Vec<Grant>, StoreError>;

    /// Remembers that `author` wrote the comment `field` of `doc` (first time only).
    async fn record_comment(
        &self,
        doc: &str,
        field: &str,
        author: &str,
        at: u64,
    ) -> Result<(), StoreError>;

    /// The comments of `doc` and their authors `(field, author)`, oldest first.
    async fn comments(&self, doc: &str) -> Result<Vec<(String, String)>, StoreError>;

    /// Indexes `doc`'s due date (replacing the previous one; a new value is reminded again),
    /// or removes it with `None`.
    async fn set_due(&self, doc: &str, entry: Option<DueEntry>) -> Result<(), StoreError>;

    /// Due dates not reminded yet that fall before `until` (unix ms), earliest first.
    async fn due_before(&self, until: u64, limit: u32) -> Result<Vec<DueEntry>, StoreError>;

    /// Marks `doc`'s due date reminded, if its value is still `value`.
    async fn mark_reminded(&self, doc: &str, value: &str) -> Result<(), StoreError>;

    /// Writes `events` about `doc` to the outbox (not tied to a change: presence).
    async fn push_events(&self, doc: &str, events: Vec<OutboxEvent>) -> Result<(), StoreError>;

    /// Claims up to `limit` deliveries: for each `(endpoint, doc)` whose oldest pending row is
    /// due at `now` and not leased, that row, leased until `lease_until`. A head of kind
    /// [`inbox::BATCH`] never attempted absorbs the never-attempted batch rows right after it
    /// (payloads joined by `\n`, `last_sid` extended). A row is never claimed while an older
    /// pending row of its `(endpoint, doc)` exists, so one document's events go out in order.
    async fn outbox_claim(
        &self,
        now: u64,
        lease_until: u64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError>;

    /// A claimed row was delivered: it is deleted.
    async fn outbox_done(&self, id: u64) -> Result<(), StoreError>;

    /// A claimed row's attempt failed: retried at `next_at`, or dead with `dead`.
    async fn outbox_failed(
        &self,
        id: u64,
        next_at: u64,
        error: &str,
        dead: bool,
    ) -> Result<(), StoreError>;

    /// Rows in `state`, oldest first, at most `limit`.
    async fn outbox_list(
        &self,
        state: DeliveryState,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError>;

    /// Makes row `id` pending again, due now, attempts reset; false if there is no such row.
    async fn outbox_replay(&self, id: u64, now: u64) -> Result<bool, StoreError>;

    /// How many rows are pending and dead.
    async fn outbox_counts(&self) -> Result<(u64, u64), StoreError>;
}

/// A document's write lock, taken by [`Store::lock`]. Dropping it releases the lock without
/// writing anything.
#[async_trait]
pub trait Locked: Send {
    /// What was committed after the `after` given to [`Store::lock`] (as
    /// [`Store::updates_since`] answers it), read under the lock.
    fn since(&self) -> &Since;

    /// Appends within the lock (like [`Store::append_with_keys`], same rules; `updates` may be
    /// empty when `keys` is not), commits, and releases the lock. Both may be empty: then it
    /// only releases, and answers `first = last + 1` with `last` the document's last sid.
    async fn append_with_keys(
        self: Box<Self>,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
    ) -> Result<SidRange, StoreError> {
        self.append_full(updates, keys, Vec::new()).await
    }

    /// [`Locked::append_with_keys`] with outbox `events` in the same transaction (see
    /// [`Store::append_full`]).
    async fn append_full(
        self: Box<Self>,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
        events: Vec<OutboxEvent>,
    ) -> Result<SidRange, StoreError>;
}

/// Opens the embedded store in `data_dir`, recording into `metrics`. Blocking (SQLite opens
/// files): call it at startup, from `spawn_blocking`, or in tests.
pub fn open_embedded(
    data_dir: &std::path::Path,
    metrics: &Metrics,
) -> Result<Arc<dyn Store>, StoreError> {
    open_embedded_with(data_dir, metrics, sqlite::DEFAULT_COMMIT_WINDOW)
}

/// [`open_embedded`] with this commit window (`--commit-window`).
pub fn open_embedded_with(
    data_dir: &std::path::Path,
    metrics: &Metrics,
    commit_window: std::time::Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    let options = sqlite::SqliteOptions {
        metrics: metrics.clone(),
        commit_window,
        ..sqlite::SqliteOptions::default()
    };
    Ok(Arc::new(sqlite::SqliteStore::open(data_dir, options)?))
}

/// Opens the store the configuration names: the embedded SQLite database (opened on the
/// blocking pool) or PostgreSQL at `--database-url` (connected, schema created or migrated;
/// an unreachable database fails within a few seconds with [`StoreError::Open`]).
pub async fn open(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, StoreError> {
    match config.storage() {
        StorageConfig::Embedded { data_dir } => {
            let metrics = metrics.clone();
            let window = config.commit_window;
            tokio::task::spawn_blocking(move || open_embedded_with(&data_dir, &metrics, window))
                .await
                .map_err(|e| StoreError::Open {
                    location: config.data_dir.display().to_string(),
                    cause: BackendError::new(std::io::Error::other(e.to_string())),
                })?
        }
        StorageConfig::Postgres { url } => {
            let options = postgres::PostgresOptions {
                metrics: metrics.clone(),
                ..postgres::PostgresOptions::default()
            };
            Ok(Arc::new(
                postgres::PostgresStore::connect(url.as_str(), options).await?,
            ))
        }
    }
}
