//! The embedded store: one SQLite database (WAL mode) under the data directory.
//!
//! Writes go through one dedicated writer thread fed by a bounded queue. The thread takes
//! every request waiting in the queue (up to a batch limit), applies them in ONE transaction,
//! commits with `synchronous = FULL` (the WAL is fsync'd before the commit returns), and only
//! then answers each request. So many concurrent appends share one fsync (group commit), and an
//! answered append is durable.
//!
//! Every document has at most one batch in flight, so when many documents each write a little
//! (a keystroke now and then), their requests trickle in one at a time and would each get a
//! transaction of their own: the fixed cost of a commit (locks, WAL frames, fsync) paid per
//! keystroke. So, while several documents are writing, the writer commits at most once per
//! [`SqliteOptions::commit_window`] ([`DEFAULT_COMMIT_WINDOW`]): a request that arrives less
//! than a window after the previous commit began waits, with whatever else arrives, until the
//! window has passed (the writer sleeps once rather than waking for each request), unless it
//! already holds [`SqliteOptions::linger_updates`] updates. A request after a quiet spell
//! commits at once, and so does every request while only one document writes (it has one batch
//! in flight: nothing could join it, and waiting would hold it to one commit per window); a
//! flush or a close taken with the batch does not wait. Acks still follow the commit that
//! holds their update.
//!
//! The pages a commit writes are its cost per update once commits are shared: a keystroke's
//! row in `updates` (clustered by document) lands on that document's own page, so a commit of
//! ten documents' keystrokes would write ten pages. Small appends therefore go to
//! `recent_updates`, kept in the order written (one page holds many documents' keystrokes),
//! and move into `updates` in bulk when it holds [`Recent::MOVE_ROWS`] rows; reads take a
//! document's log from both.
//!
//! Reads (`load`, `updates_since`, checkpoints) run on tokio's blocking pool over a small pool
//! of read-only connections; WAL lets them proceed while the writer commits, and each read
//! runs in one transaction so it sees a consistent state.
//!
//! Tables:
//! - `docs(id, doc, last_sid, snapshot_sid, checkpoint_sid, checkpoint_at, pending_authors, …)`:
//!   one row per document ever written; `last_sid` survives compaction so sids are never reused.
//!   The other tables refer to a document by its integer `id`.
//! - `updates(doc_id, sid, data, author, at)`: the log after the snapshot, clustered by
//!   `(doc_id, sid)` (`WITHOUT ROWID`: one b-tree insert per appended update).
//! - `recent_updates(seq, doc_id, sid, data, author, at)`: more of the log, small appends in
//!   the order they were written, moved into `updates` in bulk (see above); no index, it is
//!   kept small and scanned.
//! - `snapshots(doc_id, sid, data)`: the latest compaction of each document.
//! - `checkpoints(doc_id, sid, at, authors, data)`: version history.
//! - `idempotency_keys(id, doc, user, key, fingerprint, status, headers, body, sid, at, size,
//!   bytes_before)`: the records of requests that carried an `Idempotency-Key`, inserted by
//!   the append that stores their updates (same transaction). Keyed by document name, not
//!   `docs.id`, so a request that changed nothing does not create its document. `id` orders
//!   them oldest first; `bytes_before` is the running total of answer bytes before the record,
//!   so "keep the newest N records / B bytes" is one range delete each.
//! - `revocations(user, at)`: the latest revocation time (unix seconds) of each user.
//!
//! One node's store: [`Store::lock`] excludes nothing (the document's owner task is its only
//! writer), and [`Store::is_shared`] is false.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::inbox::{
    DeliveryState, DueEntry, Grant, InboxLimits, NewNotification, Notification, OutboxRow, ReadMark,
};
use super::{
    BackendError, CheckpointInfo, Compacted, Compaction, Fingerprint, HistoryMark, KeyLimits,
    KeyRecord, Loaded, Locked, LogEntry, NewKey, NewUpdate, OutboxEvent, Sid, SidRange, Since,
    Snapshot, Store, StoreError,
};
use crate::infra::metrics::Metrics;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "tandem.sqlite3";

/// The schema version this build reads and writes (`PRAGMA user_version`; 0 is a new file).
/// Version 1 was a pre-release layout keyed by document name; version 2 had no
/// `revocations` table (migrated by creating it).
/// Version 3 had no `recent_updates` table (migrated by creating it).
const SCHEMA_VERSION: i64 = 4;

/// Versions this build opens and migrates to [`SCHEMA_VERSION`] (0: a new file).
const MIGRATES_FROM: [i64; 4] = [0, 2, 3, SCHEMA_VERSION];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS docs (
    id INTEGER PRIMARY KEY,
    doc TEXT NOT NULL UNIQUE,
    last_sid INTEGER NOT NULL,
    snapshot_sid INTEGER NOT NULL DEFAULT 0,
    checkpoint_sid INTEGER NOT NULL DEFAULT 0,
    checkpoint_at INTEGER NOT NULL DEFAULT 0,
    pending_authors TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS updates (
    doc_id INTEGER NOT NULL,
    sid INTEGER NOT NULL,
    data BLOB NOT NULL,
    author TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (doc_id, sid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recent_updates (
    seq INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL,
    sid INTEGER NOT NULL,
    data BLOB NOT NULL,
    author TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    doc_id INTEGER PRIMARY KEY,
    sid INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    doc_id INTEGER NOT NULL,
    sid INTEGER NOT NULL,
    at INTEGER NOT NULL,
    authors TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (doc_id, sid)
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    id INTEGER PRIMARY KEY,
    doc TEXT NOT NULL,
    user TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    sid INTEGER NOT NULL,
    at INTEGER NOT NULL,
    size INTEGER NOT NULL,
    bytes_before INTEGER NOT NULL,
    UNIQUE (doc, user, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_at ON idempotency_keys (at);
CREATE INDEX IF NOT EXISTS idempotency_keys_bytes ON idempotency_keys (bytes_before);
CREATE TABLE IF NOT EXISTS revocations (
    user TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox_users (
    user TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    user TEXT NOT NULL,
    id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    doc TEXT NOT NULL,
    field TEXT NOT NULL,
    from_user TEXT,
    at INTEGER NOT NULL,
    excerpt TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grants (
    user TEXT NOT NULL,
    pattern TEXT NOT NULL,
    role TEXT NOT NULL,
    expires_at INTEGER,
    issued_at INTEGER NOT NULL,
    PRIMARY KEY (user, pattern, role)
);
CREATE TABLE IF NOT EXISTS comments (
    doc TEXT NOT NULL,
    field TEXT NOT NULL,
    author TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (doc, field)
);
CREATE TABLE IF NOT EXISTS due_dates (
    doc TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    assignee TEXT,
    reminded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS due_dates_at ON due_dates (reminded, due_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    doc TEXT NOT NULL,
    kind TEXT NOT NULL,
    first_sid INTEGER NOT NULL,
    last_sid INTEGER NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_key ON outbox (endpoint, doc, state, id);
";

/// The default [`SqliteOptions::commit_window`]. It applies only while several documents
/// write (see the module doc), so it delays a durability ack by at most this much, never
/// fan-out to other clients (which does not wait for the commit on one node).
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(20);

/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 4;

/// Tuning of [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Capacity of the writer's queue, in requests. When it is full, appends wait for room
    /// (backpressure: the connection that sent the update stops reading until its update is
    /// queued), rather than failing or buffering without bound.
    pub queue_capacity: usize,
    /// Most requests committed in one transaction.
    pub max_batch: usize,
    /// A batch stops taking more requests once it holds this many bytes of updates and
    /// snapshots (it always takes at least one request).
    pub max_batch_bytes: usize,
    /// Shortest time from the start of one commit to the start of the next while requests
    /// keep coming (see the module doc); zero commits whatever is waiting at once.
    pub commit_window: Duration,
    /// A batch that already holds this many updates commits without waiting for the window.
    pub linger_updates: usize,
    /// Where commit latency and group-commit counters are recorded.
    pub metrics: Metrics,
    /// How long idempotency records live and how many are kept.
    pub keys: KeyLimits,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            queue_capacity: 4096,
            max_batch: 1024,
            max_batch_bytes: 16 << 20,
            commit_window: DEFAULT_COMMIT_WINDOW,
            linger_updates: 256,
            metrics: Metrics::new(),
            keys: KeyLimits::default(),
        }
    }
}

/// The embedded SQLite store. Cheap to clone; every clone shares one writer thread.
///
/// When the last clone is dropped the writer commits what is queued and stops; call
/// [`Store::close`] to wait for that.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    requests: mpsc::Sender<Request>,
    queue_capacity: usize,
    readers: Readers,
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    metrics: Metrics,
    keys: KeyLimits,
}

/// Group-commit counters of one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Updates appended.
    pub appends: u64,
}

#[derive(Debug)]
enum Request {
    Append {
        doc: String,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
        events: Vec<OutboxEvent>,
        queued: Instant,
        reply: oneshot::Sender<Result<SidRange, StoreError>>,
    },
    /// Notification and outbox writes ([`super::sqlite_inbox`]), run in the batch's
    /// transaction under a savepoint of their own.
    Run {
        job: Job,
        reply: oneshot::Sender<Result<Ran, StoreError>>,
    },
    Compact {
        doc: String,
        compaction: Compaction,
        reply: oneshot::Sender<Result<Compacted, StoreError>>,
    },
    Revoke {
        user: String,
        at: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Test only: the writer says it has taken this request, then blocks until released.
    #[cfg(test)]
    Hold {
        taken: oneshot::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    },
}

impl Request {
    /// Updates it appends.
    fn updates(&self) -> usize {
        match self {
            Request::Append { updates, .. } => updates.len(),
            _ => 0,
        }
    }

    /// Whether its batch may wait for the commit window: not a flush or a close (which want
    /// what is queued committed now), nor the test hook.
    fn may_linger(&self) -> bool {
        match self {
            Request::Flush { .. } | Request::Close { .. } => false,
            #[cfg(test)]
            Request::Hold { .. } => false,
            _ => true,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Request::Append { updates, keys, .. } => {
                updates.iter().map(|u| u.update.len()).sum::<usize>()
                    + keys.iter().map(|k| k.answer.size()).sum::<usize>()
            }
            Request::Compact { compaction, .. } => compaction.state.len(),
            _ => 0,
        }
    }

    fn fail(self, err: StoreError) {
        // A requester that went away does not need its answer.
        match self {
            Request::Append { reply, .. } => drop(reply.send(Err(err))),
            Request::Compact { reply, .. } => drop(reply.send(Err(err))),
            Request::Run { reply, .. } => drop(reply.send(Err(err))),
            Request::Revoke { reply, .. } | Request::Flush { reply } | Request::Close { reply } => {
                drop(reply.send(Err(err)))
            }
            #[cfg(test)]
            Request::Hold { .. } => {}
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(BackendError::new(e))
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn open_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Open {
        location: path.display().to_string(),
        cause: BackendError::new(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and starts the writer thread.
    ///
    /// Blocking: call it at startup or from `spawn_blocking`. Fails if the directory cannot be
    /// created, the file is not a SQLite database, WAL mode cannot be enabled, or the schema is
    /// newer than this build.
    pub fn open(data_dir: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(open_error(
                data_dir,
                std::io::Error::other("it is not a directory (--data-dir names a directory)"),
            ));
        }
        std::fs::create_dir_all(data_dir).map_err(|e| open_error(data_dir, e))?;
        let path = data_dir.join(DB_FILE);
        let conn = open_writer(&path)?;
        let readers = Readers {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
        };
        // Prove a reader can open now, so a broken setup fails here and not on first load.
        let first_reader = readers.open().map_err(|e| match e {
            StoreError::Backend(b) => StoreError::Open {
                location: path.display().to_string(),
                cause: b,
            },
            other => other,
        })?;
        readers.put(first_reader);

        let recent = Recent::read(&conn).map_err(|e| open_error(&path, e))?;
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let writer = Writer {
            conn,
            requests: rx,
            max_batch: options.max_batch.max(1),
            max_batch_bytes: options.max_batch_bytes.max(1),
            commit_window: options.commit_window,
            linger_updates: options.linger_updates.max(1),
            active: Active::default(),
            recent,
            docs: HashMap::new(),
            metrics: options.metrics.clone(),
            keys: options.keys,
        };
        let handle = std::thread::Builder::new()
            .name("tandem-store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| open_error(&path, e))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                requests: tx,
                queue_capacity: options.queue_capacity.max(1),
                readers,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(handle)),
                metrics: options.metrics,
                keys: options.keys,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Requests waiting in the writer's queue.
    pub fn queued(&self) -> usize {
        self.inner.queue_capacity - self.inner.requests.capacity()
    }

    /// Group-commit counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            transactions: self.inner.metrics.store_transactions.get(),
            appends: self.inner.metrics.store_appends.get(),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Queues `request` (waiting for room when the queue is full) and awaits its answer.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        let (reply, answer) = oneshot::channel();
        // Full queue: wait. This is the store's backpressure on its callers.
        self.inner
            .requests
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` in the writer's next transaction (under a savepoint of its own).
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, u64) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let job: JobFn = Box::new(move |conn, now| f(conn, now).map(|v| Box::new(v) as Ran));
        let ran = self
            .call(|reply| Request::Run {
                job: Job(Mutex::new(Some(job))),
                reply,
            })
            .await?;
        ran.downcast::<T>().map(|v| *v).map_err(|_| {
            StoreError::Backend(BackendError::new(std::io::Error::other(
                "internal: mismatched job answer",
            )))
        })
    }

    /// Runs `f` on a pooled read connection on the blocking pool.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|e| {
                StoreError::Backend(BackendError::new(std::io::Error::other(e.to_string())))
            })?
    }

    /// Test only: blocks the writer until the returned sender is used or dropped. When this
    /// returns, the writer is blocked and the queue holds only requests sent afterwards.
    #[cfg(test)]
    pub(crate) async fn hold_writer(&self) -> std::sync::mpsc::Sender<()> {
        let (release_tx, release) = std::sync::mpsc::channel();
        let (taken, taken_rx) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Hold { taken, release })
            .await
            .expect("writer running");
        taken_rx.await.expect("writer took the hold");
        release_tx
    }
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let err = |e: rusqlite::Error| open_error(path, e);
    let mut conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_error(
            path,
            std::io::Error::other(format!("cannot enable WAL mode (journal_mode is {mode})")),
        ));
    }
    // FULL: the WAL is fsync'd at every commit, so a committed (acknowledged) append survives
    // power loss and kill -9.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if !MIGRATES_FROM.contains(&version) {
        return Err(StoreError::UnsupportedSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(SCHEMA).map_err(err)?;
    // One node's store: no other node delivers its webhooks, so leases of a process that was
    // killed mid-delivery end now rather than after their minute.
    tx.execute(
        "UPDATE outbox SET lease_until = 0 WHERE lease_until > 0",
        [],
    )
    .map_err(err)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(conn)
}

/// A small pool of read connections.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        // The pool holds no invariant a panic could break; recover from poisoning.
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = f(&mut conn);
        self.put(conn);
        result
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    requests: mpsc::Receiver<Request>,
    max_batch: usize,
    max_batch_bytes: usize,
    commit_window: Duration,
    linger_updates: usize,
    /// Documents that appended lately: the window is worth waiting only when there are
    /// several.
    active: Active,
    /// What `recent_updates` holds, to know when to move it into `updates`.
    recent: Recent,
    /// The `docs` rows of documents written lately, as of the last commit: this thread is the
    /// file's only writer, so a batch need not read them again (one lookup per document per
    /// commit otherwise). Emptied when a commit fails.
    docs: HashMap<String, DocState>,
    metrics: Metrics,
    keys: KeyLimits,
}

/// The rows of `recent_updates`, counted by the writer.
///
/// Small appends (a keystroke or a few) go to `recent_updates`, where rows are kept in the
/// order they were written, so the appends of many documents in one commit share a page; the
/// writer moves them into `updates` (clustered by document) in bulk once there are enough,
/// writing each document's page once per move instead of once per commit. Readers read both.
#[derive(Debug, Default, Clone, Copy)]
struct Recent {
    rows: usize,
    bytes: usize,
}

impl Recent {
    /// Appends of at least this many updates, or bytes, go straight to `updates`: they fill
    /// pages of their own.
    const DIRECT_UPDATES: usize = 16;
    const DIRECT_BYTES: usize = 4096;
    /// The table is moved into `updates` once it holds this many rows or bytes (every read of a
    /// document's log scans it: it stays small).
    const MOVE_ROWS: usize = 1024;
    const MOVE_BYTES: usize = 1 << 20;

    /// Whether an append of `updates` goes to `recent_updates`.
    fn takes(updates: &[NewUpdate]) -> bool {
        updates.len() < Self::DIRECT_UPDATES
            && updates.iter().map(|u| u.update.len()).sum::<usize>() < Self::DIRECT_BYTES
    }

    fn add(&mut self, updates: &[NewUpdate]) {
        self.rows += updates.len();
        self.bytes += updates.iter().map(|u| u.update.len()).sum::<usize>();
    }

    fn full(&self) -> bool {
        self.rows >= Self::MOVE_ROWS || self.bytes >= Self::MOVE_BYTES
    }

    /// What the table holds, read at start.
    fn read(conn: &Connection) -> Result<Recent, StoreError> {
        let (rows, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM recent_updates",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Recent {
            rows: usize::try_from(rows).unwrap_or(0),
            bytes: usize::try_from(bytes).unwrap_or(0),
        })
    }

    /// Moves every row into `updates`, in the transaction `tx`.
    fn move_all(tx: &Connection) -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO updates (doc_id, sid, data, author, at)
             SELECT doc_id, sid, data, author, at FROM recent_updates ORDER BY doc_id, sid",
        )?
        .execute([])?;
        tx.prepare_cached("DELETE FROM recent_updates")?
            .execute([])?;
        Ok(())
    }
}

/// The documents that appended within the last [`Active::SPAN`], and when each last did.
///
/// Waiting out the commit window pays only when other documents' writes can join the
/// commit: one document has at most one batch in flight, so a lone writer gains nothing from
/// the wait and would be held to one commit per window.
#[derive(Default)]
struct Active {
    seen: HashMap<String, Instant>,
    pruned: Option<Instant>,
}

impl Active {
    /// How long a document counts as active after its last append: a few keystrokes' time
    /// at an everyday typing pace.
    const SPAN: Duration = Duration::from_millis(250);

    /// Records the documents `batch` appends to, and forgets those quiet for a span.
    fn saw(&mut self, batch: &[Request], now: Instant) {
        for request in batch {
            if let Request::Append { doc, .. } = request {
                match self.seen.get_mut(doc.as_str()) {
                    Some(at) => *at = now,
                    None => drop(self.seen.insert(doc.clone(), now)),
                }
            }
        }
        let due = match self.pruned {
            Some(at) => now.saturating_duration_since(at) >= Self::SPAN,
            None => true,
        };
        if due {
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < Self::SPAN);
            self.pruned = Some(now);
        }
    }

    /// Whether more than one document appended within the span (as of the last prune).
    fn several(&self) -> bool {
        self.seen.len() > 1
    }
}

/// Per-batch view of one document touched by an append or compaction.
struct DocState {
    id: i64,
    last_sid: Sid,
    dirty: bool,
}

/// What a batch being gathered holds.
struct Group {
    bytes: usize,
    updates: usize,
    /// No request in it asks to be committed at once.
    linger: bool,
}

/// A request's result inside a batch, sent once the batch commits.
enum Answer {
    Append(Result<SidRange, StoreError>),
    Compact(Result<Compacted, StoreError>),
    Ran(Result<Ran, StoreError>),
    Done,
}

/// What a [`Request::Run`] job answers (downcast by its caller).
pub(super) type Ran = Box<dyn std::any::Any + Send>;

/// A write job run by the writer thread inside its transaction, with the batch's time.
type JobFn = Box<dyn FnOnce(&Connection, u64) -> Result<Ran, StoreError> + Send>;

/// A [`JobFn`], taken once.
pub(super) struct Job(Mutex<Option<JobFn>>);

impl Job {
    fn take(&self) -> Option<JobFn> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Writer {
    /// At most this many `docs` rows are kept between commits (beyond it, only the last
    /// commit's).
    const KEPT_DOCS: usize = 4096;

    fn run(mut self) {
        let mut batch: Vec<Request> = Vec::with_capacity(self.max_batch);
        let mut closing = false;
        // A request that must not join the batch being gathered (the test hook): it starts
        // the next round.
        let mut next: Option<Request> = None;
        // When the previous commit began.
        let mut last_commit: Option<Instant> = None;
        while !closing {
            let first = match next.take() {
                Some(r) => r,
                None => match self.requests.blocking_recv() {
                    Some(r) => r,
                    None => break,
                },
            };
            #[cfg(test)]
            let first = match first {
                Request::Hold { taken, release } => {
                    let _ = taken.send(());
                    // Blocks until released; released or dropped makes no difference.
                    let _ = release.recv();
                    continue;
                }
                other => other,
            };
            let mut group = Group {
                bytes: first.bytes(),
                updates: first.updates(),
                linger: first.may_linger(),
            };
            batch.push(first);
            // Take whatever else is already waiting: this is the group in group commit.
            self.take_waiting(&mut batch, &mut group, &mut next);
            // Commits close together: sleep out the rest of the window (one wake-up, not one
            // per request), then take what arrived meanwhile.
            let now = Instant::now();
            self.active.saw(&batch, now);
            let wait = last_commit
                .map(|at| (at + self.commit_window).saturating_duration_since(now))
                .unwrap_or_default();
            if group.linger
                && self.active.several()
                && !wait.is_zero()
                && group.updates < self.linger_updates
                && next.is_none()
                && batch.len() < self.max_batch
                && group.bytes < self.max_batch_bytes
            {
                std::thread::sleep(wait);
                self.take_waiting(&mut batch, &mut group, &mut next);
                self.active.saw(&batch, Instant::now());
            }
            // Requests after a Close are refused; the Close itself is answered after commit.
            if let Some(i) = batch
                .iter()
                .position(|r| matches!(r, Request::Close { .. }))
            {
                closing = true;
                for late in batch.drain(i + 1..) {
                    late.fail(StoreError::Closed);
                }
                if let Some(late) = next.take() {
                    late.fail(StoreError::Closed);
                }
            }
            last_commit = Some(Instant::now());
            self.commit(&mut batch);
        }
        // Refuse anything still queued, then close the connection.
        self.requests.close();
        while let Ok(late) = self.requests.try_recv() {
            late.fail(StoreError::Closed);
        }
        drop(self.conn);
    }

    /// Moves the requests waiting in the queue into `batch`, within the batch limits.
    fn take_waiting(
        &mut self,
        batch: &mut Vec<Request>,
        group: &mut Group,
        next: &mut Option<Request>,
    ) {
        while next.is_none() && batch.len() < self.max_batch && group.bytes < self.max_batch_bytes {
            match self.requests.try_recv() {
                #[cfg(test)]
                Ok(r @ Request::Hold { .. }) => *next = Some(r),
                Ok(r) => {
                    group.bytes += r.bytes();
                    group.updates += r.updates();
                    group.linger &= r.may_linger();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
    }

    /// Applies `batch` in one transaction and answers every request in it.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let now_ms = unix_ms();
        let mut recent = self.recent;
        let mut docs = std::mem::take(&mut self.docs);
        let result = (|| -> Result<Vec<Answer>, StoreError> {
            let mut tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut answers = Vec::with_capacity(batch.len());
            let mut keyed = false;
            for request in batch.iter() {
                let answer = match request {
                    Request::Append {
                        doc,
                        updates,
                        keys,
                        events,
                        ..
                    } if keys.is_empty() => {
                        let range = append(&tx, &mut docs, doc, updates, now_ms, &mut recent)?;
                        super::sqlite_inbox::insert_events(&tx, doc, range, events, now_ms)?;
                        Answer::Append(Ok(range))
                    }
                    Request::Run { job, .. } => {
                        // A savepoint, so a failed job undoes only itself.
                        let sp = tx.savepoint()?;
                        let outcome = job
                            .take()
                            .map_or_else(|| Err(StoreError::Closed), |f| f(&sp, now_ms));
                        if outcome.is_ok() {
                            sp.commit()?;
                        }
                        Answer::Ran(outcome)
                    }
                    Request::Append {
                        doc,
                        updates,
                        keys,
                        events,
                        ..
                    } => {
                        // A savepoint, so a refused key undoes its own append only.
                        let before = docs.get(doc).map(|d| (d.last_sid, d.dirty));
                        let sp = tx.savepoint()?;
                        let outcome =
                            append_keyed(&sp, &mut docs, doc, updates, now_ms, &mut recent)
                                .and_then(|range| {
                                    insert_keys(&sp, doc, keys, range, &self.keys, now_ms)?;
                                    super::sqlite_inbox::insert_events(
                                        &sp, doc, range, events, now_ms,
                                    )?;
                                    Ok(range)
                                });
                        match outcome {
                            Ok(range) => {
                                sp.commit()?;
                                keyed = true;
                                Answer::Append(Ok(range))
                            }
                            Err(e @ StoreError::KeyInUse { .. }) => {
                                drop(sp);
                                match before {
                                    Some((last_sid, dirty)) => {
                                        if let Some(d) = docs.get_mut(doc) {
                                            d.last_sid = last_sid;
                                            d.dirty = dirty;
                                        }
                                    }
                                    // First touched by this append: read again next time
                                    // (a row it created is gone with the savepoint).
                                    None => drop(docs.remove(doc)),
                                }
                                Answer::Append(Err(e))
                            }
                            Err(other) => return Err(other),
                        }
                    }
                    Request::Compact {
                        doc, compaction, ..
                    } => {
                        // A savepoint, so one failed compaction does not undo the batch.
                        let sp = tx.savepoint()?;
                        let outcome = compact(&sp, &mut docs, doc, compaction, now_ms);
                        if outcome.is_ok() {
                            sp.commit()?;
                        }
                        Answer::Compact(outcome)
                    }
                    Request::Revoke { user, at, .. } => {
                        tx.prepare_cached(
                            "INSERT INTO revocations (user, at) VALUES (?1, ?2)
                             ON CONFLICT (user) DO UPDATE SET at = max(at, excluded.at)",
                        )?
                        .execute(params![user, at])?;
                        Answer::Done
                    }
                    _ => Answer::Done,
                };
                answers.push(answer);
            }
            write_back(&tx, &docs, now_ms)?;
            if keyed {
                evict_keys(&tx, &self.keys, now_ms)?;
            }
            if recent.full() {
                Recent::move_all(&tx)?;
                recent = Recent::default();
            }
            tx.commit()?;
            Ok(answers)
        })();

        match result {
            Ok(answers) => {
                // Rows of appends refused under a savepoint are counted too: the count only
                // decides when to move the table, and a move takes whatever is there.
                self.recent = recent;
                if docs.len() > Self::KEPT_DOCS {
                    docs.retain(|_, state| state.dirty);
                }
                for state in docs.values_mut() {
                    state.dirty = false;
                }
                self.docs = docs;
                self.metrics.store_transactions.inc();
                for (request, answer) in batch.drain(..).zip(answers) {
                    self.answer(request, answer);
                }
            }
            Err(err) => {
                tracing::error!(cause = %err, requests = batch.len(), "store commit failed");
                for request in batch.drain(..) {
                    request.fail(err.clone());
                }
            }
        }
    }

    fn answer(&self, request: Request, answer: Answer) {
        match (request, answer) {
            (
                Request::Append {
                    updates,
                    queued,
                    reply,
                    ..
                },
                Answer::Append(outcome),
            ) => {
                if outcome.is_ok() {
                    self.metrics.store_appends.add(updates.len() as u64);
                }
                self.metrics.commit_latency.observe(queued.elapsed());
                let _ = reply.send(outcome);
            }
            (Request::Run { reply, .. }, Answer::Ran(outcome)) => {
                let _ = reply.send(outcome);
            }
            (Request::Compact { reply, .. }, Answer::Compact(outcome)) => {
                if let Ok(done) = &outcome {
                    self.metrics.store_compactions.inc();
                    if done.checkpoint.is_some() {
                        self.metrics.store_checkpoints.inc();
                    }
                }
                let _ = reply.send(outcome);
            }
            (
                Request::Revoke { reply, .. } | Request::Flush { reply } | Request::Close { reply },
                _,
            ) => {
                let _ = reply.send(Ok(()));
            }
            (request, _) => request.fail(StoreError::Backend(BackendError::new(
                std::io::Error::other("internal: mismatched store answer"),
            ))),
        }
    }
}

/// The batch's view of `doc`, read from `docs` unless the writer kept it. With `create`, a
/// document never written gets its row (last sid 0) so the rest of the batch can refer to it.
fn doc_state<'a>(
    tx: &Connection,
    docs: &'a mut HashMap<String, DocState>,
    doc: &str,
    create: bool,
    now_ms: u64,
) -> Result<Option<&'a mut DocState>, StoreError> {
    if !docs.contains_key(doc) {
        let row: Option<(i64, Sid)> = tx
            .prepare_cached("SELECT id, last_sid FROM docs WHERE doc = ?1")?
            .query_row([doc], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (id, last_sid) = match (row, create) {
            (Some(row), _) => row,
            (None, true) => {
                tx.prepare_cached(
                    "INSERT INTO docs (doc, last_sid, created_at, updated_at) VALUES (?1, 0, ?2, ?2)",
                )?
                .execute(params![doc, now_ms])?;
                (tx.last_insert_rowid(), 0)
            }
            (None, false) => return Ok(None),
        };
        docs.insert(
            doc.to_owned(),
            DocState {
                id,
                last_sid,
                dirty: false,
            },
        );
    }
    Ok(docs.get_mut(doc))
}

/// Rows per statement of [`MANY_ROWS`].
const ROWS_PER_INSERT: usize = 32;

/// One statement inserting [`ROWS_PER_INSERT`] rows into `updates`.
static MANY_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let rows: Vec<String> = (0..ROWS_PER_INSERT)
        .map(|i| {
            let p = i * 5;
            format!(
                "(?{}, ?{}, ?{}, ?{}, ?{})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        })
        .collect();
    format!(
        "INSERT INTO updates (doc_id, sid, data, author, at) VALUES {}",
        rows.join(", ")
    )
});

/// Appends `updates` to the log of `doc`: small appends to `recent_updates`, counted in
/// `recent` (see [`Recent`]), others to `updates`, [`ROWS_PER_INSERT`] rows to a statement
/// (one statement's fixed cost, its run, cursor and reset, then counts once for all of them).
fn append(
    tx: &Connection,
    docs: &mut HashMap<String, DocState>,
    doc: &str,
    updates: &[NewUpdate],
    now_ms: u64,
    recent: &mut Recent,
) -> Result<SidRange, StoreError> {
    let Some(state) = doc_state(tx, docs, doc, true, now_ms)? else {
        return Err(StoreError::UnknownDocument(doc.to_owned()));
    };
    let first = state.last_sid + 1;
    let small = Recent::takes(updates);
    let mut rest = updates;
    if small {
        recent.add(updates);
    } else {
        let mut many = tx.prepare_cached(&MANY_ROWS)?;
        while let Some((chunk, tail)) = rest.split_first_chunk::<ROWS_PER_INSERT>() {
            for (i, update) in chunk.iter().enumerate() {
                state.last_sid += 1;
                let at = i * 5;
                many.raw_bind_parameter(at + 1, state.id)?;
                many.raw_bind_parameter(at + 2, state.last_sid)?;
                many.raw_bind_parameter(at + 3, &update.update[..])?;
                many.raw_bind_parameter(at + 4, &update.author)?;
                many.raw_bind_parameter(at + 5, now_ms)?;
            }
            many.raw_execute()?;
            rest = tail;
        }
    }
    let mut insert = tx.prepare_cached(if small {
        "INSERT INTO recent_updates (doc_id, sid, data, author, at) VALUES (?1, ?2, ?3, ?4, ?5)"
    } else {
        "INSERT INTO updates (doc_id, sid, data, author, at) VALUES (?1, ?2, ?3, ?4, ?5)"
    })?;
    for update in rest {
        state.last_sid += 1;
        insert.execute(params![
            state.id,
            state.last_sid,
            &update.update[..],
            update.author,
            now_ms
        ])?;
    }
    state.dirty = true;
    Ok(SidRange {
        first,
        last: state.last_sid,
    })
}

/// The append of a request that carries idempotency keys (`updates` may then be empty): the
/// updates as [`append`] stores them; [`insert_keys`] then stores the records. Run inside a
/// savepoint: on error the caller rolls back.
fn append_keyed(
    tx: &Connection,
    docs: &mut HashMap<String, DocState>,
    doc: &str,
    updates: &[NewUpdate],
    now_ms: u64,
    recent: &mut Recent,
) -> Result<SidRange, StoreError> {
    let range = if updates.is_empty() {
        // Nothing to log: the document is neither created nor touched.
        let last = doc_state(tx, docs, doc, false, now_ms)?.map_or(0, |d| d.last_sid);
        SidRange {
            first: last + 1,
            last,
        }
    } else {
        append(tx, docs, doc, updates, now_ms, recent)?
    };
    Ok(range)
}

/// One record per key of an append that stored `range` (empty when it changed nothing),
/// refused with [`StoreError::KeyInUse`] when the key has a live record.
fn insert_keys(
    tx: &Connection,
    doc: &str,
    keys: &[NewKey],
    range: SidRange,
    limits: &KeyLimits,
    now_ms: u64,
) -> Result<(), StoreError> {
    let count = (range.last + 1 - range.first) as usize;
    for key in keys {
        let sid = range.first - 1 + key.after.min(count) as u64;
        insert_key(
            tx,
            doc,
            key,
            sid,
            now_ms,
            now_ms.saturating_sub(limits.ttl_ms),
        )?;
    }
    Ok(())
}

fn insert_key(
    tx: &Connection,
    doc: &str,
    key: &NewKey,
    sid: Sid,
    now_ms: u64,
    expired_before: u64,
) -> Result<(), StoreError> {
    // An expired record of the key (not evicted yet) makes way; a live one refuses the key.
    tx.prepare_cached(
        "DELETE FROM idempotency_keys WHERE doc = ?1 AND user = ?2 AND key = ?3 AND at < ?4",
    )?
    .execute(params![doc, key.user, key.key, expired_before])?;
    let headers = serde_json::to_string(&key.answer.headers)
        .map_err(|e| StoreError::Backend(BackendError::new(e)))?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys
                 (doc, user, key, fingerprint, status, headers, body, sid, at, size, bytes_before)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, COALESCE(
                 (SELECT bytes_before + size FROM idempotency_keys ORDER BY id DESC LIMIT 1), 0))
             ON CONFLICT (doc, user, key) DO NOTHING",
        )?
        .execute(params![
            doc,
            key.user,
            key.key,
            &key.fingerprint[..],
            key.answer.status,
            headers,
            &key.answer.body[..],
            sid,
            now_ms,
            key.answer.size() as u64,
        ])?;
    if inserted == 1 {
        Ok(())
    } else {
        Err(StoreError::KeyInUse {
            doc: doc.to_owned(),
            user: key.user.clone(),
            key: key.key.clone(),
        })
    }
}

/// Deletes expired records, then the oldest beyond the count and byte bounds.
fn evict_keys(tx: &Connection, limits: &KeyLimits, now_ms: u64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM idempotency_keys WHERE at < ?1")?
        .execute([now_ms.saturating_sub(limits.ttl_ms)])?;
    tx.prepare_cached(
        "DELETE FROM idempotency_keys
         WHERE id <= (SELECT MAX(id) FROM idempotency_keys) - ?1",
    )?
    .execute([limits.max_keys])?;
    tx.prepare_cached(
        "DELETE FROM idempotency_keys WHERE bytes_before < (
             SELECT bytes_before + size FROM idempotency_keys ORDER BY id DESC LIMIT 1) - ?1",
    )?
    .execute([limits.max_bytes])?;
    Ok(())
}

/// The live record of a key (see [`Store::idempotency_key`]).
fn lookup_key(
    conn: &mut Connection,
    doc: &str,
    user: &str,
    key: &str,
    expired_before: u64,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT fingerprint, status, headers, body, sid, at FROM idempotency_keys
             WHERE doc = ?1 AND user = ?2 AND key = ?3 AND at >= ?4",
        )?
        .query_row(params![doc, user, key, expired_before], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, u16>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Sid>(4)?,
                r.get::<_, u64>(5)?,
            ))
        })
        .optional()?;
    let Some((fingerprint, status, headers, body, sid, at)) = row else {
        return Ok(None);
    };
    let corrupt = |detail: String| StoreError::Corrupt {
        doc: doc.to_owned(),
        detail,
    };
    let fingerprint: Fingerprint = fingerprint.try_into().map_err(|_| {
        corrupt(format!(
            "idempotency key {key:?}: fingerprint is not 32 bytes"
        ))
    })?;
    let headers: Vec<(String, String)> = serde_json::from_str(&headers)
        .map_err(|e| corrupt(format!("idempotency key {key:?}: headers: {e}")))?;
    Ok(Some(KeyRecord {
        fingerprint,
        answer: super::Answer {
            status,
            headers,
            body: Bytes::from(body),
        },
        sid,
        at,
    }))
}

fn write_back(
    tx: &Connection,
    docs: &HashMap<String, DocState>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut update =
        tx.prepare_cached("UPDATE docs SET last_sid = ?2, updated_at = ?3 WHERE id = ?1")?;
    for state in docs.values().filter(|s| s.dirty) {
        update.execute(params![state.id, state.last_sid, now_ms])?;
    }
    Ok(())
}

fn compact(
    tx: &Connection,
    docs: &mut HashMap<String, DocState>,
    doc: &str,
    compaction: &Compaction,
    now_ms: u64,
) -> Result<Compacted, StoreError> {
    let upto = compaction.upto;
    let (id, last_sid) = doc_state(tx, docs, doc, false, now_ms)?
        .map(|state| (state.id, state.last_sid))
        .ok_or_else(|| StoreError::UnknownDocument(doc.to_owned()))?;
    let snapshot_sid: Sid = tx
        .prepare_cached("SELECT snapshot_sid FROM docs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    if upto > last_sid {
        return Err(StoreError::CompactBeyondLog {
            doc: doc.to_owned(),
            upto,
            last_sid,
        });
    }
    if upto == 0 || upto < snapshot_sid {
        return Err(StoreError::CompactBehindSnapshot {
            doc: doc.to_owned(),
            upto,
            snapshot_sid,
        });
    }
    let state = &compaction.state[..];
    tx.prepare_cached(
        "INSERT INTO snapshots (doc_id, sid, data) VALUES (?1, ?2, ?3)
         ON CONFLICT (doc_id) DO UPDATE SET sid = excluded.sid, data = excluded.data",
    )?
    .execute(params![id, upto, state])?;
    let removed = tx
        .prepare_cached("DELETE FROM updates WHERE doc_id = ?1 AND sid <= ?2")?
        .execute(params![id, upto])? as u64
        + tx.prepare_cached("DELETE FROM recent_updates WHERE doc_id = ?1 AND sid <= ?2")?
            .execute(params![id, upto])? as u64;
    let authors = serde_json::to_string(&compaction.authors)
        .map_err(|e| StoreError::Backend(BackendError::new(e)))?;
    let checkpoint = match compaction.checkpoint_at {
        Some(at) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO checkpoints (doc_id, sid, at, authors, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, upto, at, authors, state])?;
            tx.prepare_cached(
                "UPDATE docs SET snapshot_sid = ?2, checkpoint_sid = ?2, checkpoint_at = ?3,
                 pending_authors = '[]' WHERE id = ?1",
            )?
            .execute(params![id, upto, at])?;
            Some(upto)
        }
        None => {
            tx.prepare_cached(
                "UPDATE docs SET snapshot_sid = ?2, pending_authors = ?3 WHERE id = ?1",
            )?
            .execute(params![id, upto, authors])?;
            None
        }
    };
    Ok(Compacted {
        removed,
        checkpoint,
    })
}

/// A document's row as readers need it.
struct DocRow {
    id: i64,
    last_sid: Sid,
    snapshot_sid: Sid,
    checkpoint_sid: Sid,
    checkpoint_at: u64,
    pending_authors: String,
}

/// The row of `doc`, or `None` if it was never written.
fn doc_row(tx: &Connection, doc: &str) -> Result<Option<DocRow>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT id, last_sid, snapshot_sid, checkpoint_sid, checkpoint_at, pending_authors
             FROM docs WHERE doc = ?1",
        )?
        .query_row([doc], |r| {
            Ok(DocRow {
                id: r.get(0)?,
                last_sid: r.get(1)?,
                snapshot_sid: r.get(2)?,
                checkpoint_sid: r.get(3)?,
                checkpoint_at: r.get(4)?,
                pending_authors: r.get(5)?,
            })
        })
        .optional()?)
}

/// Reads the log entries of `doc` with `sid > after`, checking they run without gaps to its
/// last sid.
fn read_log(
    tx: &Connection,
    doc: &str,
    row: &DocRow,
    after: Sid,
) -> Result<Vec<LogEntry>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT sid, data, author, at FROM updates WHERE doc_id = ?1 AND sid > ?2
         UNION ALL
         SELECT sid, data, author, at FROM recent_updates WHERE doc_id = ?1 AND sid > ?2
         ORDER BY sid",
    )?;
    let rows = stmt.query_map(params![row.id, after], |r| {
        Ok(LogEntry {
            sid: r.get(0)?,
            update: Bytes::from(r.get::<_, Vec<u8>>(1)?),
            author: r.get(2)?,
            at: r.get(3)?,
        })
    })?;
    let mut entries = Vec::with_capacity(usize::try_from(row.last_sid - after).unwrap_or(0));
    let mut expected = after + 1;
    for entry in rows {
        let entry = entry?;
        if entry.sid != expected {
            return Err(StoreError::Corrupt {
                doc: doc.to_owned(),
                detail: format!("log has sid {} where {expected} was expected", entry.sid),
            });
        }
        expected += 1;
        entries.push(entry);
    }
    if expected != row.last_sid + 1 {
        return Err(StoreError::Corrupt {
            doc: doc.to_owned(),
            detail: format!(
                "log ends at sid {} but the document is at {}",
                expected - 1,
                row.last_sid
            ),
        });
    }
    Ok(entries)
}

fn load(conn: &mut Connection, doc: &str) -> Result<Option<Loaded>, StoreError> {
    // One read transaction: a concurrent compaction cannot tear snapshot and log apart.
    let tx = conn.transaction()?;
    let Some(row) = doc_row(&tx, doc)? else {
        return Ok(None);
    };
    let snapshot = if row.snapshot_sid > 0 {
        let stored: Option<(Sid, Vec<u8>)> = tx
            .prepare_cached("SELECT sid, data FROM snapshots WHERE doc_id = ?1")?
            .query_row([row.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match stored {
            Some((sid, data)) if sid == row.snapshot_sid => Some(Snapshot {
                sid,
                state: Bytes::from(data),
            }),
            _ => {
                return Err(StoreError::Corrupt {
                    doc: doc.to_owned(),
                    detail: format!("the snapshot at sid {} is missing", row.snapshot_sid),
                })
            }
        }
    } else {
        None
    };
    if row.last_sid < row.snapshot_sid {
        return Err(StoreError::Corrupt {
            doc: doc.to_owned(),
            detail: format!(
                "the snapshot at sid {} is past the last sid {}",
                row.snapshot_sid, row.last_sid
            ),
        });
    }
    let updates = read_log(&tx, doc, &row, row.snapshot_sid)?;
    let authors: Vec<String> =
        serde_json::from_str(&row.pending_authors).map_err(|e| StoreError::Corrupt {
            doc: doc.to_owned(),
            detail: format!("pending authors: {e}"),
        })?;
    Ok(Some(Loaded {
        snapshot,
        updates,
        last_sid: row.last_sid,
        history: HistoryMark {
            last_checkpoint: (row.checkpoint_sid > 0)
                .then_some((row.checkpoint_sid, row.checkpoint_at)),
            authors,
        },
    }))
}

fn updates_since(conn: &mut Connection, doc: &str, since: Sid) -> Result<Since, StoreError> {
    let tx = conn.transaction()?;
    let Some(row) = doc_row(&tx, doc)? else {
        return Ok(if since == 0 {
            Since::Updates {
                entries: Vec::new(),
                last_sid: 0,
            }
        } else {
            Since::Ahead { last_sid: 0 }
        });
    };
    if since > row.last_sid {
        return Ok(Since::Ahead {
            last_sid: row.last_sid,
        });
    }
    if since < row.snapshot_sid {
        return Ok(Since::Compacted {
            snapshot_sid: row.snapshot_sid,
        });
    }
    let entries = read_log(&tx, doc, &row, since)?;
    Ok(Since::Updates {
        entries,
        last_sid: row.last_sid,
    })
}

fn checkpoints(conn: &mut Connection, doc: &str) -> Result<Vec<CheckpointInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.sid, c.at, c.authors FROM checkpoints c JOIN docs d ON d.id = c.doc_id
         WHERE d.doc = ?1 ORDER BY c.sid",
    )?;
    let rows = stmt.query_map([doc], |r| {
        Ok((
            r.get::<_, Sid>(0)?,
            r.get::<_, u64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (sid, at, authors) = row?;
        let authors: Vec<String> =
            serde_json::from_str(&authors).map_err(|e| StoreError::Corrupt {
                doc: doc.to_owned(),
                detail: format!("checkpoint {sid} authors: {e}"),
            })?;
        out.push(CheckpointInfo { sid, at, authors });
    }
    Ok(out)
}

fn checkpoint(conn: &mut Connection, doc: &str, sid: Sid) -> Result<Option<Bytes>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT c.data FROM checkpoints c JOIN docs d ON d.id = c.doc_id
             WHERE d.doc = ?1 AND c.sid = ?2",
        )?
        .query_row(params![doc, sid], |r| r.get::<_, Vec<u8>>(0))
        .optional()?
        .map(Bytes::from))
}

fn last_sids(conn: &mut Connection, docs: &[String]) -> Result<Vec<Sid>, StoreError> {
    let names =
        serde_json::to_string(docs).map_err(|e| StoreError::Backend(BackendError::new(e)))?;
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(d.last_sid, 0) FROM json_each(?1) j LEFT JOIN docs d ON d.doc = j.value
         ORDER BY j.key",
    )?;
    let sids = stmt
        .query_map([names], |r| r.get::<_, Sid>(0))?
        .collect::<Result<Vec<Sid>, _>>()?;
    Ok(sids)
}

fn revocations(conn: &mut Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT user, at FROM revocations")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// [`Store::lock`] of the one-node store: the owner task is the document's only writer, so
/// the guard excludes nothing; it carries `updates_since(after)` and appends as usual.
struct SqliteLocked {
    store: SqliteStore,
    doc: String,
    since: Since,
}

#[async_trait]
impl Locked for SqliteLocked {
    fn since(&self) -> &Since {
        &self.since
    }

    async fn append_full(
        self: Box<Self>,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
        events: Vec<OutboxEvent>,
    ) -> Result<SidRange, StoreError> {
        if !updates.is_empty() || !keys.is_empty() {
            return self
                .store
                .append_full(&self.doc, updates, keys, events)
                .await;
        }
        // Only a release: answer the document's last sid.
        let last = match &self.since {
            Since::Updates { last_sid, .. } | Since::Ahead { last_sid } => *last_sid,
            Since::Compacted { .. } => {
                let docs = vec![self.doc.clone()];
                self.store
                    .last_sids(&docs)
                    .await?
                    .first()
                    .copied()
                    .unwrap_or(0)
            }
        };
        Ok(SidRange {
            first: last + 1,
            last,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self, doc: &str) -> Result<Option<Loaded>, StoreError> {
        let doc = doc.to_owned();
        self.read(move |conn| load(conn, &doc)).await
    }

    async fn append(&self, doc: &str, update: Bytes, author: &str) -> Result<Sid, StoreError> {
        let range = self
            .append_batch(
                doc,
                vec![NewUpdate {
                    update,
                    author: author.to_owned(),
                }],
            )
            .await?;
        Ok(range.last)
    }

    async fn append_full(
        &self,
        doc: &str,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
        events: Vec<OutboxEvent>,
    ) -> Result<SidRange, StoreError> {
        if updates.is_empty() && keys.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        let doc = doc.to_owned();
        self.call(|reply| Request::Append {
            doc,
            updates,
            keys,
            events,
            queued: Instant::now(),
            reply,
        })
        .await
    }

    async fn idempotency_key(
        &self,
        doc: &str,
        user: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (doc, user, key) = (doc.to_owned(), user.to_owned(), key.to_owned());
        let expired_before = unix_ms().saturating_sub(self.inner.keys.ttl_ms);
        self.read(move |conn| lookup_key(conn, &doc, &user, &key, expired_before))
            .await
    }

    async fn updates_since(&self, doc: &str, sid: Sid) -> Result<Since, StoreError> {
        let doc = doc.to_owned();
        self.read(move |conn| updates_since(conn, &doc, sid)).await
    }

    async fn compact(&self, doc: &str, compaction: Compaction) -> Result<Compacted, StoreError> {
        let doc = doc.to_owned();
        self.call(|reply| Request::Compact {
            doc,
            compaction,
            reply,
        })
        .await
    }

    async fn checkpoints(&self, doc: &str) -> Result<Vec<CheckpointInfo>, StoreError> {
        let doc = doc.to_owned();
        self.read(move |conn| checkpoints(conn, &doc)).await
    }

    async fn checkpoint(&self, doc: &str, sid: Sid) -> Result<Option<Bytes>, StoreError> {
        let doc = doc.to_owned();
        self.read(move |conn| checkpoint(conn, &doc, sid)).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.call(|reply| Request::Flush { reply }).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .requests
            .send(Request::Close { reply })
            .await
            .is_ok()
        {
            answer.await.map_err(|_| StoreError::Closed)??;
        }
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            // The thread has answered Close, so it is about to return; joining is brief.
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .ok();
        }
        self.inner
            .readers
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn last_sids(&self, docs: &[String]) -> Result<Vec<Sid>, StoreError> {
        if docs.is_empty() {
            self.check_open()?;
            return Ok(Vec::new());
        }
        let docs = docs.to_vec();
        self.read(move |conn| last_sids(conn, &docs)).await
    }

    async fn lock(&self, doc: &str, after: Sid) -> Result<Box<dyn Locked>, StoreError> {
        let since = self.updates_since(doc, after).await?;
        Ok(Box::new(SqliteLocked {
            store: self.clone(),
            doc: doc.to_owned(),
            since,
        }))
    }

    async fn record_revocation(&self, user: &str, at: u64) -> Result<(), StoreError> {
        let user = user.to_owned();
        self.call(|reply| Request::Revoke { user, at, reply }).await
    }

    async fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(revocations).await
    }

    async fn add_notifications(
        &self,
        items: Vec<NewNotification>,
        events: Vec<(String, OutboxEvent)>,
        limits: InboxLimits,
    ) -> Result<Vec<Notification>, StoreError> {
        self.inbox_add(items, events, limits).await
    }

    async fn notifications(
        &self,
        user: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.inbox_list(user, before, limit).await
    }

    async fn notifications_after(
        &self,
        user: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.inbox_after(user, after, limit).await
    }

    async fn unread(&self, user: &str) -> Result<u64, StoreError> {
        self.inbox_unread(user).await
    }

    async fn mark_read(&self, user: &str, mark: ReadMark) -> Result<u64, StoreError> {
        self.inbox_mark(user, mark).await
    }

    async fn record_grant(&self, grant: Grant) -> Result<(), StoreError> {
        self.grant_record(grant).await
    }

    async fn grants(&self, user: &str) -> Result<Vec<Grant>, StoreError> {
        self.grant_list(user).await
    }

    async fn record_comment(
        &self,
        doc: &str,
        field: &str,
        author: &str,
        at: u64,
    ) -> Result<(), StoreError> {
        self.comment_record(doc, field, author, at).await
    }

    async fn comments(&self, doc: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.comment_list(doc).await
    }

    async fn set_due(&self, doc: &str, entry: Option<DueEntry>) -> Result<(), StoreError> {
        self.due_set(doc, entry).await
    }

    async fn due_before(&self, until: u64, limit: u32) -> Result<Vec<DueEntry>, StoreError> {
        self.due_list(until, limit).await
    }

    async fn mark_reminded(&self, doc: &str, value: &str) -> Result<(), StoreError> {
        self.due_reminded(doc, value).await
    }

    async fn push_events(&self, doc: &str, events: Vec<OutboxEvent>) -> Result<(), StoreError> {
        self.outbox_push(doc, events).await
    }

    async fn outbox_claim(
        &self,
        now: u64,
        lease_until: u64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.outbox_take(now, lease_until, limit).await
    }

    async fn outbox_done(&self, id: u64) -> Result<(), StoreError> {
        self.outbox_delete(id).await
    }

    async fn outbox_failed(
        &self,
        id: u64,
        next_at: u64,
        error: &str,
        dead: bool,
    ) -> Result<(), StoreError> {
        self.outbox_fail(id, next_at, error, dead).await
    }

    async fn outbox_list(
        &self,
        state: DeliveryState,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.outbox_rows(state, limit).await
    }

    async fn outbox_replay(&self, id: u64, now: u64) -> Result<bool, StoreError> {
        self.outbox_again(id, now).await
    }

    async fn outbox_counts(&self) -> Result<(u64, u64), StoreError> {
        self.outbox_count().await
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::{self, key, new, snap, texts, upd};
    use super::*;

    fn options() -> SqliteOptions {
        SqliteOptions::default()
    }

    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(dir, options()).unwrap()
    }

    /// Waits until `n` requests sit in the writer's queue (the writer is held, so they stay).
    async fn until_queued(store: &SqliteStore, n: usize) {
        while store.queued() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn notifications_are_per_user_paged_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        contract::notifications_are_per_user_paged_and_bounded(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn grants_comments_and_due_dates_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        contract::grants_comments_and_due_dates_are_kept(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn the_outbox_keeps_order_per_document() {
        let dir = tempfile::tempdir().unwrap();
        contract::the_outbox_keeps_order_per_document(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn unknown_documents_load_as_none() {
        let dir = tempfile::tempdir().unwrap();
        contract::unknown_documents_load_as_none(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn appends_get_gap_free_sids_per_document() {
        let dir = tempfile::tempdir().unwrap();
        contract::appends_get_gap_free_sids_per_document(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let release = store.hold_writer().await;
        let docs = ["x", "y", "z"];
        let mut tasks = Vec::new();
        for i in 0..300usize {
            let store = store.clone();
            let doc = docs[i % docs.len()];
            tasks.push(tokio::spawn(async move {
                let sid = store
                    .append(doc, upd(&format!("{doc}{i}")), "u")
                    .await
                    .unwrap();
                (doc, sid)
            }));
        }
        until_queued(&store, 300).await;
        release.send(()).unwrap();
        let mut sids: HashMap<&str, Vec<Sid>> = HashMap::new();
        for task in tasks {
            let (doc, sid) = task.await.unwrap();
            sids.entry(doc).or_default().push(sid);
        }
        // Every document got exactly 1..=100, no gap, no duplicate.
        for doc in docs {
            let mut got = sids.remove(doc).unwrap();
            got.sort_unstable();
            assert_eq!(got, (1..=100).collect::<Vec<_>>(), "{doc}");
            let loaded = store.load(doc).await.unwrap().unwrap();
            assert_eq!(loaded.last_sid, 100);
            assert_eq!(loaded.updates.len(), 100);
        }
        // All 300 were waiting when the writer resumed: one transaction took them all.
        assert_eq!(
            store.stats(),
            StoreStats {
                transactions: 1,
                appends: 300
            }
        );
        assert_eq!(store.inner.metrics.commit_latency.count(), 300);
    }

    /// Appends `n` updates `"{doc}{from}"`.. to `doc`, as a document's commit batch does.
    async fn batch(
        store: &SqliteStore,
        doc: &str,
        from: usize,
        n: usize,
    ) -> Result<SidRange, StoreError> {
        let updates = (from..from + n)
            .map(|i| new(&format!("{doc}{i}")))
            .collect();
        store
            .append_full(doc, updates, Vec::new(), Vec::new())
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_of_many_documents_share_one_commit_with_their_own_sids() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // Each document already holds a different number of updates.
        let docs: [&'static str; 4] = ["a", "b", "c", "d"];
        for (i, doc) in docs.iter().enumerate() {
            batch(&store, doc, 0, i + 1).await.unwrap();
        }
        let before = store.stats();
        let release = store.hold_writer().await;
        let mut tasks = Vec::new();
        // Two batches per document, interleaved with the other documents' batches.
        for round in 0..2 {
            for (i, &doc) in docs.iter().enumerate() {
                let task_store = store.clone();
                let from = i + 1 + round * 3;
                tasks.push(tokio::spawn(async move {
                    let store = task_store;
                    (doc, round, batch(&store, doc, from, 3).await.unwrap())
                }));
                until_queued(&store, tasks.len()).await;
            }
        }
        release.send(()).unwrap();
        for task in tasks {
            let (doc, round, range) = task.await.unwrap();
            let i = docs.iter().position(|d| *d == doc).unwrap() as Sid;
            let first = i + 2 + round as Sid * 3;
            assert_eq!(
                range,
                SidRange {
                    first,
                    last: first + 2
                },
                "{doc} round {round}"
            );
        }
        // One transaction for all eight batches.
        let after = store.stats();
        assert_eq!(after.transactions - before.transactions, 1);
        assert_eq!(after.appends - before.appends, 24);
        // Every log is gap-free, in the order its batches were sent.
        for (i, doc) in docs.iter().enumerate() {
            let loaded = store.load(doc).await.unwrap().unwrap();
            let n = i + 1 + 6;
            assert_eq!(loaded.last_sid, n as Sid);
            let want: Vec<(Sid, String)> = (0..n)
                .map(|k| (k as Sid + 1, format!("{doc}{k}")))
                .collect();
            assert_eq!(texts(&loaded.updates), want, "{doc}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_every_batch_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for doc in ["a", "b", "c"] {
            batch(&store, doc, 0, 1).await.unwrap();
        }
        // On the writer's connection: an update "b-poison" makes its transaction fail.
        store
            .write(|conn, _| {
                conn.execute_batch(
                    "CREATE TEMP TRIGGER poison BEFORE INSERT ON main.updates
                     WHEN NEW.data = CAST('b-poison' AS BLOB)
                     BEGIN SELECT RAISE(ABORT, 'poisoned'); END;
                     CREATE TEMP TRIGGER poison_recent BEFORE INSERT ON main.recent_updates
                     WHEN NEW.data = CAST('b-poison' AS BLOB)
                     BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let before = store.stats();
        let release = store.hold_writer().await;
        let mut tasks = Vec::new();
        for (doc, text) in [("a", "a1"), ("b", "b1"), ("b", "b-poison"), ("c", "c1")] {
            let task_store = store.clone();
            tasks.push(tokio::spawn(async move {
                task_store
                    .append_full(doc, vec![new(text)], Vec::new(), Vec::new())
                    .await
            }));
            until_queued(&store, tasks.len()).await;
        }
        release.send(()).unwrap();
        // No batch of that commit is answered as durable, whichever document it is of.
        for task in tasks {
            let outcome = task.await.unwrap();
            assert!(
                matches!(outcome, Err(StoreError::Backend(_))),
                "{outcome:?}"
            );
        }
        assert_eq!(store.stats().appends, before.appends);
        // Nothing of it was stored, and the next appends continue without a gap.
        for doc in ["a", "b", "c"] {
            let loaded = store.load(doc).await.unwrap().unwrap();
            assert_eq!(texts(&loaded.updates), vec![(1, format!("{doc}0"))]);
            let next = batch(&store, doc, 5, 1).await.unwrap();
            assert_eq!(next, SidRange { first: 2, last: 2 });
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_close_together_wait_for_the_commit_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_window(dir.path(), Duration::from_secs(3));
        // The first write after a quiet spell commits at once.
        let started = Instant::now();
        batch(&store, "a", 0, 1).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        // Writes of other documents right after it wait for the window and share a commit.
        let before = store.stats();
        let mut tasks = Vec::new();
        for doc in ["b", "c", "d"] {
            let store = store.clone();
            tasks.push(tokio::spawn(async move { batch(&store, doc, 0, 1).await }));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), SidRange { first: 1, last: 1 });
        }
        assert_eq!(store.stats().transactions - before.transactions, 1);
        // A flush does not wait for the window.
        batch(&store, "a", 1, 1).await.unwrap();
        let started = Instant::now();
        store.flush().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        store.close().await.unwrap();
    }

    fn open_with_window(dir: &Path, commit_window: Duration) -> SqliteStore {
        SqliteStore::open(
            dir,
            SqliteOptions {
                commit_window,
                ..options()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_lone_writer_is_not_held_to_the_commit_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_window(dir.path(), Duration::from_secs(3));
        // One document writing batch after batch (one in flight, as its task does): nothing
        // could share its commits, so none waits for the window.
        let started = Instant::now();
        for i in 0..5 {
            batch(&store, "a", i, 1).await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(store.stats().transactions, 5);
        store.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_callers_wait() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path(),
            SqliteOptions {
                queue_capacity: 2,
                ..options()
            },
        )
        .unwrap();
        let release = store.hold_writer().await;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for i in 0..5 {
            let store = store.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let sid = store.append("d", upd(&i.to_string()), "u").await;
                done_tx.send(sid.unwrap()).unwrap();
            });
        }
        until_queued(&store, 2).await;
        // The queue is full and the writer is held: nobody has been answered, and the queue
        // never grew beyond its capacity.
        assert_eq!(store.queued(), 2);
        assert!(done_rx.try_recv().is_err());
        release.send(()).unwrap();
        let mut sids = Vec::new();
        for _ in 0..5 {
            sids.push(done_rx.recv().await.unwrap());
        }
        sids.sort_unstable();
        assert_eq!(sids, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            for i in 1..=20 {
                store
                    .append("doc", upd(&format!("u{i}")), "u")
                    .await
                    .unwrap();
            }
            // Dropped without close: the acknowledged appends are already committed.
        }
        let store = open(dir.path());
        let loaded = store.load("doc").await.unwrap().unwrap();
        assert_eq!(loaded.last_sid, 20);
        assert_eq!(texts(&loaded.updates)[19], (20, "u20".into()));
        // Sids continue where they stopped.
        assert_eq!(store.append("doc", upd("u21"), "u").await.unwrap(), 21);
        store.close().await.unwrap();

        let store = open(dir.path());
        assert_eq!(store.load("doc").await.unwrap().unwrap().last_sid, 21);
    }

    #[tokio::test]
    async fn an_acknowledged_append_is_committed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!(store.append("doc", upd("hello"), "u").await.unwrap(), 1);
        // Read with an unrelated connection while the store is still running, as a restarted
        // process would after kill -9: the row is in the committed WAL.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let (sid, data): (u64, Vec<u8>) = conn
            .query_row(
                "SELECT u.sid, u.data FROM recent_updates u JOIN docs d ON d.id = u.doc_id
                 WHERE d.doc = 'doc'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((sid, data.as_slice()), (1, &b"hello"[..]));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        std::mem::forget(store);
    }

    /// Rows in each table: (`updates`, `recent_updates`).
    fn rows(store: &SqliteStore) -> (i64, i64) {
        let conn = Connection::open(store.path()).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        (count("updates"), count("recent_updates"))
    }

    #[tokio::test]
    async fn small_appends_wait_in_recent_updates_and_move_in_bulk() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // A keystroke each into three documents: they share `recent_updates`.
        for (i, doc) in ["a", "b", "c"].iter().enumerate() {
            store.append(doc, upd(&i.to_string()), "u").await.unwrap();
        }
        assert_eq!(rows(&store), (0, 3));
        // A large append goes straight to `updates`, and reads join both tables in sid order.
        let many: Vec<NewUpdate> = (0..Recent::DIRECT_UPDATES)
            .map(|i| NewUpdate {
                update: upd(&format!("m{i}")),
                author: "u".to_owned(),
            })
            .collect();
        store.append_batch("a", many).await.unwrap();
        store.append("a", upd("last"), "u").await.unwrap();
        assert_eq!(rows(&store), (16, 4));
        let loaded = store.load("a").await.unwrap().unwrap();
        let sids: Vec<Sid> = loaded.updates.iter().map(|e| e.sid).collect();
        assert_eq!(sids, (1..=18).collect::<Vec<_>>());
        assert_eq!(loaded.updates[17].update, upd("last"));
        // Reopened, the writer counts what waits, and moves it all once the table is full.
        store.close().await.unwrap();
        let store = open(dir.path());
        let mut writes = tokio::task::JoinSet::new();
        for i in 4..Recent::MOVE_ROWS {
            let store = store.clone();
            writes.spawn(async move { store.append(&format!("d{i}"), upd("x"), "u").await });
        }
        while let Some(sid) = writes.join_next().await {
            assert_eq!(sid.unwrap().unwrap(), 1);
        }
        assert_eq!(rows(&store), (16 + Recent::MOVE_ROWS as i64, 0));
        let since = store.updates_since("b", 0).await.unwrap();
        let Since::Updates { entries, last_sid } = since else {
            panic!("expected updates, got {since:?}");
        };
        assert_eq!((last_sid, texts(&entries)), (1, vec![(1, "1".to_owned())]));
        // A compaction removes a document's rows from both tables.
        store.append("a", upd("after"), "u").await.unwrap();
        let done = store.compact("a", snap(19, "s")).await.unwrap();
        assert_eq!(done.removed, 19);
        assert_eq!(store.load("a").await.unwrap().unwrap().updates.len(), 0);
    }

    #[tokio::test]
    async fn a_large_append_stores_every_row_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append("a", upd("first"), "u").await.unwrap();
        // Two full statements of rows and a remainder, each row with its own author.
        let n = 2 * ROWS_PER_INSERT + 5;
        let many: Vec<NewUpdate> = (0..n)
            .map(|i| NewUpdate {
                update: upd(&format!("m{i}")),
                author: format!("user{i}"),
            })
            .collect();
        let range = store.append_batch("a", many).await.unwrap();
        assert_eq!((range.first, range.last), (2, n as Sid + 1));
        let loaded = store.load("a").await.unwrap().unwrap();
        let got: Vec<(Sid, Bytes, String)> = loaded
            .updates
            .iter()
            .map(|e| (e.sid, e.update.clone(), e.author.clone()))
            .collect();
        let mut want = vec![(1, upd("first"), "u".to_owned())];
        want.extend((0..n).map(|i| (i as Sid + 2, upd(&format!("m{i}")), format!("user{i}"))));
        assert_eq!(got, want);
        assert_eq!(loaded.last_sid, n as Sid + 1);
    }

    #[tokio::test]
    async fn compaction_replaces_the_log_with_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        contract::compaction_replaces_the_log_with_a_snapshot(&store).await;
        assert_eq!(store.stats().appends, 11);
    }

    #[tokio::test]
    async fn bad_compactions_are_refused_without_harm() {
        let dir = tempfile::tempdir().unwrap();
        contract::bad_compactions_are_refused_without_harm(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_compaction_does_not_undo_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append("doc", upd("1"), "u").await.unwrap();
        let release = store.hold_writer().await;
        let a = tokio::spawn({
            let store = store.clone();
            async move { store.append("doc", upd("2"), "u").await }
        });
        until_queued(&store, 1).await;
        let bad = tokio::spawn({
            let store = store.clone();
            async move { store.compact("doc", snap(99, "s")).await }
        });
        until_queued(&store, 2).await;
        let good = tokio::spawn({
            let store = store.clone();
            async move { store.compact("doc", snap(2, "s2")).await }
        });
        until_queued(&store, 3).await;
        release.send(()).unwrap();
        assert_eq!(a.await.unwrap().unwrap(), 2);
        assert!(bad.await.unwrap().is_err());
        assert_eq!(good.await.unwrap().unwrap().removed, 2);
        assert_eq!(store.stats().transactions, 2);
        let loaded = store.load("doc").await.unwrap().unwrap();
        assert_eq!(loaded.snapshot.unwrap().sid, 2);
    }

    #[tokio::test]
    async fn checkpoints_are_kept_when_asked_and_the_history_mark_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        contract::checkpoints_are_kept_when_asked(&store).await;
        assert_eq!(store.inner.metrics.store_checkpoints.get(), 2);
        assert_eq!(store.inner.metrics.store_compactions.get(), 3);
        store.close().await.unwrap();
        let again = open(dir.path());
        let loaded = again.load("doc").await.unwrap().unwrap();
        assert_eq!(
            loaded.history,
            HistoryMark {
                last_checkpoint: Some((12, 2_000)),
                authors: Vec::new(),
            }
        );
    }

    #[tokio::test]
    async fn a_gap_in_the_log_is_a_load_error_not_an_empty_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 1..=3 {
            store.append("doc", upd(&i.to_string()), "u").await.unwrap();
        }
        let conn = Connection::open(store.path()).unwrap();
        conn.execute("DELETE FROM recent_updates WHERE sid = 2", [])
            .unwrap();
        assert!(matches!(
            store.load("doc").await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.updates_since("doc", 1).await,
            Err(StoreError::Corrupt { .. })
        ));
        conn.execute("DELETE FROM recent_updates WHERE sid = 3", [])
            .unwrap();
        // The tail is missing: the log no longer reaches last_sid.
        assert!(matches!(
            store.load("doc").await,
            Err(StoreError::Corrupt { .. })
        ));
        conn.execute("UPDATE docs SET snapshot_sid = 1", [])
            .unwrap();
        assert!(matches!(
            store.load("doc").await,
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_missing_table_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append("doc", upd("1"), "u").await.unwrap();
        let conn = Connection::open(store.path()).unwrap();
        conn.execute("DROP TABLE recent_updates", []).unwrap();
        assert!(matches!(
            store.load("doc").await,
            Err(StoreError::Backend(_))
        ));
    }

    #[test]
    fn opening_an_unusable_location_fails() {
        let dir = tempfile::tempdir().unwrap();
        // The data dir path runs through a regular file.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = SqliteStore::open(&file.join("data"), options()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        // The database file is not a database.
        let garbage = dir.path().join("garbage");
        std::fs::create_dir(&garbage).unwrap();
        std::fs::write(garbage.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = SqliteStore::open(&garbage, options()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        // The database file is a directory.
        let dir_db = dir.path().join("dirdb");
        std::fs::create_dir_all(dir_db.join(DB_FILE)).unwrap();
        assert!(SqliteStore::open(&dir_db, options()).is_err());
    }

    #[test]
    fn another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), options()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        for version in [1, 99] {
            conn.pragma_update(None, "user_version", version).unwrap();
            let err = SqliteStore::open(dir.path(), options()).unwrap_err();
            assert!(
                matches!(err, StoreError::UnsupportedSchema { found, supported: SCHEMA_VERSION } if found == version),
                "{err}"
            );
        }
    }

    /// A store file holding one update ("1" in "doc"), turned by `downgrade` into what an
    /// older version left, and a connection to it.
    async fn older_file(downgrade: &str) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append("doc", upd("1"), "u").await.unwrap();
        store.close().await.unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(downgrade).unwrap();
        (dir, conn)
    }

    #[tokio::test]
    async fn a_version_2_database_gets_the_revocations_table() {
        // What version 2 left: no revocations table.
        let (dir, conn) = older_file("DROP TABLE revocations; PRAGMA user_version = 2;").await;
        let store = open(dir.path());
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(store.load("doc").await.unwrap().unwrap().last_sid, 1);
        store.record_revocation("ann", 7).await.unwrap();
        assert_eq!(store.revocations().await.unwrap(), vec![("ann".into(), 7)]);
    }

    #[tokio::test]
    async fn a_version_3_database_gets_the_recent_updates_table() {
        // What version 3 left: every update in `updates`, no `recent_updates`.
        let (dir, conn) = older_file(
            "INSERT INTO updates (doc_id, sid, data, author, at)
               SELECT doc_id, sid, data, author, at FROM recent_updates;
             DROP TABLE recent_updates;
             PRAGMA user_version = 3;",
        )
        .await;
        let store = open(dir.path());
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        store.append("doc", upd("2"), "u").await.unwrap();
        let loaded = store.load("doc").await.unwrap().unwrap();
        assert_eq!(
            texts(&loaded.updates),
            vec![(1, "1".to_owned()), (2, "2".to_owned())]
        );
    }

    #[tokio::test]
    async fn close_flushes_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let pending: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.append("doc", upd(&i.to_string()), "u").await })
            })
            .collect();
        store.flush().await.unwrap();
        for task in pending {
            task.await.unwrap().unwrap();
        }
        store.close().await.unwrap();
        store.close().await.unwrap();
        assert!(matches!(
            store.append("doc", upd("late"), "u").await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(store.load("doc").await, Err(StoreError::Closed)));
        assert!(matches!(store.flush().await, Err(StoreError::Closed)));
        let store = open(dir.path());
        assert_eq!(store.load("doc").await.unwrap().unwrap().last_sid, 50);
    }

    #[tokio::test]
    async fn the_store_is_usable_as_a_trait_object() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(open(dir.path()));
        assert_eq!(store.append("d", upd("x"), "u").await.unwrap(), 1);
        assert_eq!(store.load("d").await.unwrap().unwrap().last_sid, 1);
    }

    #[tokio::test]
    async fn keys_are_stored_with_their_batch_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        // Dropped without close: what was answered is committed.
        contract::keys_are_stored_with_their_batch(&open(dir.path())).await;
        contract::check_keys_of_keys_are_stored_with_their_batch(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn a_live_key_refuses_its_append_and_only_its_append_in_sequence() {
        let dir = tempfile::tempdir().unwrap();
        contract::a_live_key_refuses_its_append_and_only_its_append(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn a_lock_reads_what_was_committed_and_appends_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(!store.is_shared());
        contract::a_lock_reads_what_was_committed_and_appends_within_it(&store).await;
    }

    #[tokio::test]
    async fn last_sids_answer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        contract::last_sids_answer_in_order(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn revocations_keep_the_latest_time_per_user_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        contract::revocations_keep_the_latest_time_per_user(&open(dir.path())).await;
        contract::check_revocations(&open(dir.path())).await;
    }

    #[tokio::test]
    async fn a_closed_store_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        contract::a_closed_store_refuses_everything(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_key_refuses_its_append_and_only_its_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .append_with_keys("doc", vec![new("1")], vec![key("ann", "k", 1)])
            .await
            .unwrap();
        store
            .append_with_keys("new", vec![], vec![key("ann", "k", 0)])
            .await
            .unwrap();
        // One transaction: a refused key undoes its own append, nothing else.
        let release = store.hold_writer().await;
        let send = |doc: &'static str, update: &'static str, keys: Vec<NewKey>| {
            let store = store.clone();
            tokio::spawn(async move { store.append_with_keys(doc, vec![new(update)], keys).await })
        };
        let refused = send(
            "doc",
            "dup",
            vec![key("ann", "fresh", 1), key("ann", "k", 1)],
        );
        until_queued(&store, 1).await;
        let plain = send("doc", "2", vec![]);
        until_queued(&store, 2).await;
        let keyed = send("doc", "3", vec![key("ann", "fresh", 1)]);
        until_queued(&store, 3).await;
        // The document's row is created inside the refused append: gone with it.
        let refused_new = send("new", "dup", vec![key("ann", "k", 1)]);
        until_queued(&store, 4).await;
        let first_new = send("new", "n1", vec![]);
        until_queued(&store, 5).await;
        let transactions = store.stats().transactions;
        release.send(()).unwrap();
        assert!(matches!(
            refused.await.unwrap(),
            Err(StoreError::KeyInUse { ref key, .. }) if key == "k"
        ));
        assert_eq!(
            plain.await.unwrap().unwrap(),
            SidRange { first: 2, last: 2 }
        );
        assert_eq!(
            keyed.await.unwrap().unwrap(),
            SidRange { first: 3, last: 3 }
        );
        assert!(refused_new.await.unwrap().is_err());
        assert_eq!(
            first_new.await.unwrap().unwrap(),
            SidRange { first: 1, last: 1 }
        );
        assert_eq!(store.stats().transactions, transactions + 1);
        let loaded = store.load("doc").await.unwrap().unwrap();
        assert_eq!(
            texts(&loaded.updates),
            vec![(1, "1".into()), (2, "2".into()), (3, "3".into())]
        );
        // "fresh" is the record of the append that got it in, not of the refused one.
        let fresh = store.idempotency_key("doc", "ann", "fresh").await.unwrap();
        assert_eq!(fresh.unwrap().sid, 3);
        let loaded = store.load("new").await.unwrap().unwrap();
        assert_eq!(texts(&loaded.updates), vec![(1, "n1".into())]);
        store.close().await.unwrap();
        let store = open(dir.path());
        assert_eq!(store.load("new").await.unwrap().unwrap().last_sid, 1);
    }

    #[tokio::test]
    async fn expired_keys_are_free_again_and_the_oldest_keys_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path(),
            SqliteOptions {
                keys: KeyLimits {
                    ttl_ms: 60_000,
                    max_keys: 4,
                    max_bytes: 35,
                },
                ..options()
            },
        )
        .unwrap();
        let conn = Arc::new(Mutex::new(Connection::open(store.path()).unwrap()));
        let count: contract::Hook<'_, u64> = Box::new(|_| {
            let conn = Arc::clone(&conn);
            Box::pin(async move {
                let conn = conn.lock().unwrap();
                conn.query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0))
                    .unwrap()
            })
        });
        let backdate: contract::Hook<'_, ()> = Box::new(|key| {
            let conn = Arc::clone(&conn);
            Box::pin(async move {
                let conn = conn.lock().unwrap();
                conn.execute(
                    "UPDATE idempotency_keys SET at = at - 61000 WHERE user = 'bob' AND key = ?1",
                    [key],
                )
                .unwrap();
            })
        });
        contract::expired_keys_are_free_again_and_the_oldest_keys_are_evicted(
            &store, count, backdate,
        )
        .await;
    }
}
