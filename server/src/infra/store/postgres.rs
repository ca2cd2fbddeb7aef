//! The shared store: PostgreSQL, for several tandem nodes writing the same documents.
//!
//! Every write is one transaction on a pooled connection (deadpool, tokio-postgres), committed
//! before it is answered; there is no queue of its own (PostgreSQL's group commit batches
//! concurrent commits), so [`Store::flush`] has nothing to wait for.
//!
//! Sids: each document has a counter row in `documents`. An append upserts the row with
//! `last_sid = last_sid + n … RETURNING last_sid`, which locks the row until the transaction
//! ends, then inserts its updates with the sids it got (one statement for the batch). So
//! appends of one document commit one after another, in sid order, from any number of nodes:
//! no sid is skipped or given twice, and a reader that saw sid 41 never later finds a 40 it
//! missed. (A SEQUENCE would hand out numbers that commit in any order.) Compactions lock the
//! same row, so they are serialised with each other and with appends; [`Store::lock`] holds it
//! for as long as its guard lives.
//!
//! Idempotency records: the primary key `(doc, user_id, key)` is the unique constraint; a key
//! with a live record refuses the whole append ([`StoreError::KeyInUse`], rolled back), an
//! expired one is deleted first. The bounds of [`KeyLimits`] are kept with one counter row,
//! `idempotency_totals (next_seq, bytes)`: a keyed append takes the next sequence numbers and
//! adds its answers' bytes there, so every record has a global order (`seq`) and the running
//! byte total before it (`bytes_before`), and "keep the newest `max_keys` records and
//! `max_bytes` bytes" is a delete of two index ranges. That row is locked until commit, so
//! keyed appends (HTTP writes with an `Idempotency-Key`, the rare kind) commit one at a time
//! across all documents; plain appends never touch it. Lock order is always the document row,
//! then the totals row, so these locks cannot deadlock. Expired records are deleted a few at a
//! time by the appends that add records (lookups never see them anyway).
//!
//! Schema: created and migrated at [`PostgresStore::connect`], in one transaction under
//! `pg_advisory_xact_lock`, so nodes starting together do not race; the version is kept in
//! `tandem_schema`. A database whose version is newer than this build's is refused
//! ([`StoreError::UnsupportedSchema`]), never rewritten.
//! - `tandem_schema(version)`: one row.
//! - `documents(doc, last_sid, snapshot_sid, checkpoint_sid, checkpoint_at, pending_authors,
//!   created_at, updated_at)`: one row per document; `last_sid` survives compaction. A row
//!   with `last_sid = 0` (created by a [`Store::lock`] that wrote nothing) is a document never
//!   written.
//! - `updates(doc, sid, data, author, at)`: the log after the snapshot.
//! - `snapshots(doc, sid, data)`: the latest compaction of each document.
//! - `checkpoints(doc, sid, at, authors, data)`: version history.
//! - `idempotency_keys(doc, user_id, key, fingerprint, status, headers, body, sid, at, size,
//!   seq, bytes_before)` and `idempotency_totals(id, next_seq, bytes)`.
//! - `revocations(user_id, at)`: the latest revocation time (unix seconds) per user.
//!
//! Failures: the pool waits at most [`PostgresOptions::wait_timeout`] for a free connection
//! and [`PostgresOptions::connect_timeout`] to open one, so an unreachable database fails
//! fast. Connection-level failures (cannot connect, connection closed, I/O, pool timeout) are
//! [`StoreError::Unavailable`]; a statement the database refused is [`StoreError::Backend`].
//! Nothing is answered as committed unless `COMMIT` succeeded. TLS is not supported by this
//! build (`sslmode=require` fails to connect). PostgreSQL's default `synchronous_commit = on`
//! is what makes a committed append durable.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::inbox::{
    DeliveryState, DueEntry, Grant, InboxLimits, NewNotification, Notification, OutboxRow, ReadMark,
};
use super::{
    Answer, BackendError, CheckpointInfo, Compacted, Compaction, Fingerprint, HistoryMark,
    KeyLimits, KeyRecord, Loaded, Locked, LogEntry, NewKey, NewUpdate, OutboxEvent, Sid, SidRange,
    Since, Snapshot, Store, StoreError,
};
use crate::infra::metrics::Metrics;

/// The schema version this build reads and writes (`tandem_schema.version`).
pub const SCHEMA_VERSION: i64 = 2;

/// The advisory lock taken by schema migrations ("tandem" in ASCII, then 1).
const MIGRATION_LOCK: i64 = 0x7461_6e64_656d_0001;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 2] = [V1, inbox::V2];

const V1: &str = "
CREATE TABLE tandem_schema (
    version BIGINT NOT NULL
);
INSERT INTO tandem_schema (version) VALUES (0);
CREATE TABLE documents (
    doc TEXT PRIMARY KEY,
    last_sid BIGINT NOT NULL,
    snapshot_sid BIGINT NOT NULL DEFAULT 0,
    checkpoint_sid BIGINT NOT NULL DEFAULT 0,
    checkpoint_at BIGINT NOT NULL DEFAULT 0,
    pending_authors TEXT[] NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE updates (
    doc TEXT NOT NULL,
    sid BIGINT NOT NULL,
    data BYTEA NOT NULL,
    author TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (doc, sid)
);
CREATE TABLE snapshots (
    doc TEXT PRIMARY KEY,
    sid BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE TABLE checkpoints (
    doc TEXT NOT NULL,
    sid BIGINT NOT NULL,
    at BIGINT NOT NULL,
    authors TEXT[] NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (doc, sid)
);
CREATE TABLE idempotency_keys (
    doc TEXT NOT NULL,
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint BYTEA NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BYTEA NOT NULL,
    sid BIGINT NOT NULL,
    at BIGINT NOT NULL,
    size BIGINT NOT NULL,
    seq BIGINT NOT NULL UNIQUE,
    bytes_before BIGINT NOT NULL,
    PRIMARY KEY (doc, user_id, key)
);
CREATE INDEX idempotency_keys_at ON idempotency_keys (at);
CREATE INDEX idempotency_keys_bytes ON idempotency_keys (bytes_before);
CREATE TABLE idempotency_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
INSERT INTO idempotency_totals (id, next_seq, bytes) VALUES (1, 1, 0);
CREATE TABLE revocations (
    user_id TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
";

/// Expired idempotency records deleted at most per keyed append, beyond twice its own count.
const EXPIRED_PER_APPEND: i64 = 64;

/// Tuning of [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Where transaction, append, compaction and checkpoint counters are recorded (commit
    /// latency is recorded above the store).
    pub metrics: Metrics,
    /// How long idempotency records live and how many are kept.
    pub keys: KeyLimits,
    /// Most connections this node opens (each running transaction and each [`Store::lock`]
    /// guard holds one).
    pub max_connections: usize,
    /// Longest wait to open a connection (TCP connect, and the whole start-up handshake).
    pub connect_timeout: Duration,
    /// Longest wait for a free pooled connection.
    pub wait_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            metrics: Metrics::new(),
            keys: KeyLimits::default(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(2),
            wait_timeout: Duration::from_secs(2),
        }
    }
}

/// The PostgreSQL store. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    location: String,
    closed: AtomicBool,
    metrics: Metrics,
    keys: KeyLimits,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.inner.location)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `url` without credentials or query: `postgres://host:port[,host:port…]/database`, for logs
/// and errors. A connection string that does not parse keeps only what follows its last `@`
/// (no path or query); one that is not a URL is not shown at all.
pub fn redact(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(config) => describe(&config),
        Err(_) => strip_credentials(url),
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    // One port for every host, or one per host.
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{addr}:{}", port(i)))
            .collect();
    }
    let database = config.get_dbname().unwrap_or("(default database)");
    format!("postgres://{}/{database}", hosts.join(","))
}

fn strip_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a PostgreSQL connection string that does not parse)".to_owned();
    };
    // A password may hold '/' or '?': cut at the last '@' of the whole thing first.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    format!("{scheme}://{}", &rest[..end])
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A sid, time or bound as PostgreSQL's BIGINT (saturating: nothing stored comes near).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether a tokio-postgres error means the connection failed rather than the statement.
fn is_connection_failure(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // connection_exception, admin/crash shutdown, cannot_connect_now, too_many_connections
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A failed statement as a [`StoreError`]: `Unavailable` when the connection failed.
fn classify(e: tokio_postgres::Error) -> StoreError {
    if is_connection_failure(&e) {
        StoreError::Unavailable {
            cause: BackendError::new(e),
        }
    } else {
        StoreError::Backend(BackendError::new(e))
    }
}

/// A pool that could not hand out a connection: closed, or the database is unreachable.
fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Unavailable {
            cause: pool_cause(other),
        },
    }
}

fn pool_cause(e: PoolError) -> BackendError {
    match e {
        PoolError::Backend(e) => BackendError::new(e),
        other => BackendError::new(std::io::Error::other(other.to_string())),
    }
}

fn corrupt(doc: &str, detail: String) -> StoreError {
    StoreError::Corrupt {
        doc: doc.to_owned(),
        detail,
    }
}

/// A stored BIGINT read back as a sid or time (never negative unless corrupt).
fn unsigned(doc: &str, what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(doc, format!("{what} is negative ({v})")))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(classify)
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

async fn query(client: &Object, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(classify)?;
    client.query(&statement, params).await.map_err(classify)
}

async fn query_opt(
    client: &Object,
    sql: &str,
    params: &Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(classify)?;
    client.query_opt(&statement, params).await.map_err(classify)
}

async fn query_one(client: &Object, sql: &str, params: &Params<'_>) -> Result<Row, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(classify)?;
    client.query_one(&statement, params).await.map_err(classify)
}

async fn execute(client: &Object, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(classify)?;
    client.execute(&statement, params).await.map_err(classify)
}

/// A transaction on an owned pooled connection, opened with a plain `BEGIN` (so it can be
/// kept in a [`Locked`] guard). Dropped without [`Tx::commit`] or [`Tx::rollback`] (an error
/// returned early, a cancelled future, a dropped guard), it is rolled back on a spawned task
/// before the connection goes back to the pool; without a runtime, the connection is
/// discarded, which makes the server roll back.
struct Tx {
    /// Some until `commit` or `rollback` takes it.
    client: Option<Object>,
}

impl Tx {
    async fn begin(client: Object, begin: &str) -> Result<Tx, StoreError> {
        let tx = Tx {
            client: Some(client),
        };
        tx.conn().batch_execute(begin).await.map_err(classify)?;
        Ok(tx)
    }

    fn conn(&self) -> &Object {
        // `client` is taken only by `commit`, `rollback` and `drop`, which consume the Tx.
        match &self.client {
            Some(client) => client,
            None => unreachable!("a live Tx holds its connection"),
        }
    }

    /// Commits. `Ok` only when the server confirmed the commit.
    async fn commit(mut self) -> Result<(), StoreError> {
        let Some(client) = self.client.take() else {
            return Err(StoreError::Closed);
        };
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = classify(e);
                if matches!(err, StoreError::Unavailable { .. }) {
                    drop(Object::take(client));
                }
                Err(err)
            }
        }
    }

    async fn rollback(mut self) {
        if let Some(client) = self.client.take() {
            if client.batch_execute("ROLLBACK").await.is_err() {
                drop(Object::take(client));
            }
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Whatever happens to the task, the connection never returns to the pool
                // inside this transaction: `Discard` drops it unless ROLLBACK succeeded.
                let mut discard = Discard(Some(client));
                runtime.spawn(async move {
                    let rolled_back = match &discard.0 {
                        Some(client) => client.batch_execute("ROLLBACK").await.is_ok(),
                        None => false,
                    };
                    if rolled_back {
                        drop(discard.0.take());
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

/// Takes its connection out of the pool and closes it when dropped still holding it.
struct Discard(Option<Object>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, or a
    /// `key=value` connection string), then creates or migrates the schema. Async: call it
    /// inside a tokio runtime.
    ///
    /// Fails with [`StoreError::Open`] when the URL does not parse or the database cannot be
    /// reached or used (within about [`PostgresOptions::connect_timeout`]); its `location` is
    /// [`redact`]ed (host, port and database, never a user or password). Fails with
    /// [`StoreError::UnsupportedSchema`] when the database holds a newer schema than this
    /// build's.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let location = redact(url);
        let open_error = |cause: BackendError| StoreError::Open {
            location: location.clone(),
            cause,
        };
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| open_error(BackendError::new(e)))?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("tandem");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| open_error(BackendError::new(std::io::Error::other(e.to_string()))))?;
        let mut client = pool.get().await.map_err(|e| open_error(pool_cause(e)))?;
        migrate(&mut client).await.map_err(|e| match e {
            StoreError::Backend(cause) | StoreError::Unavailable { cause } => open_error(cause),
            other => other,
        })?;
        drop(client);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                location,
                closed: AtomicBool::new(false),
                metrics: options.metrics,
                keys: options.keys,
            }),
        })
    }

    /// The database, as [`redact`] shows it.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    async fn client(&self) -> Result<Object, StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.inner.pool.get().await.map_err(pool_error)
    }

    async fn begin(&self) -> Result<Tx, StoreError> {
        Tx::begin(self.client().await?, "BEGIN").await
    }
}

/// Creates or upgrades the schema in one transaction, under an advisory lock so nodes that
/// start together take turns (the second finds the work done).
async fn migrate(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(classify)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('tandem_schema') IS NOT NULL", &[])
        .await
        .map_err(classify)?
        .try_get(0)
        .map_err(classify)?;
    let found: i64 = if exists {
        let rows = tx
            .query("SELECT version FROM tandem_schema", &[])
            .await
            .map_err(classify)?;
        match rows.as_slice() {
            [row] => row.try_get(0).map_err(classify)?,
            _ => {
                return Err(StoreError::Backend(BackendError::new(
                    std::io::Error::other(format!(
                        "tandem_schema holds {} rows, not one",
                        rows.len()
                    )),
                )))
            }
        }
    } else {
        0
    };
    if !(0..=SCHEMA_VERSION).contains(&found) {
        // Dropping the transaction rolls it back: nothing was changed.
        return Err(StoreError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return tx.commit().await.map_err(classify);
    }
    for (from, migration) in MIGRATIONS.iter().enumerate() {
        if (from as i64) >= found {
            tx.batch_execute(migration).await.map_err(classify)?;
        }
    }
    tx.execute("UPDATE tandem_schema SET version = $1", &[&SCHEMA_VERSION])
        .await
        .map_err(classify)?;
    tx.commit().await.map_err(classify)
}

/// Entries after `after` and where the document stands, in one statement (one snapshot).
/// Under a document's lock it sees every committed write of the document.
async fn read_since(client: &Object, doc: &str, after: Sid) -> Result<Since, StoreError> {
    let rows = query(
        client,
        "SELECT d.last_sid, d.snapshot_sid, u.sid, u.data, u.author, u.at
         FROM documents d
         LEFT JOIN updates u ON u.doc = d.doc AND u.sid > $2
             AND $2 >= d.snapshot_sid AND $2 <= d.last_sid
         WHERE d.doc = $1
         ORDER BY u.sid",
        &[&doc, &big(after)],
    )
    .await?;
    let (last_sid, snapshot_sid) = match rows.first() {
        Some(row) => (
            unsigned(doc, "last sid", get(row, 0)?)?,
            unsigned(doc, "snapshot sid", get(row, 1)?)?,
        ),
        None => (0, 0),
    };
    if after > last_sid {
        return Ok(Since::Ahead { last_sid });
    }
    if after < snapshot_sid {
        return Ok(Since::Compacted { snapshot_sid });
    }
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(sid) = get::<Option<i64>>(row, 2)? else {
            continue;
        };
        entries.push(LogEntry {
            sid: unsigned(doc, "sid", sid)?,
            update: Bytes::from(get::<Vec<u8>>(row, 3)?),
            author: get(row, 4)?,
            at: unsigned(doc, "time", get(row, 5)?)?,
        });
    }
    check_log(doc, &entries, after, last_sid)?;
    Ok(Since::Updates { entries, last_sid })
}

/// The log read after `after` must run without gaps to `last_sid`.
fn check_log(doc: &str, entries: &[LogEntry], after: Sid, last_sid: Sid) -> Result<(), StoreError> {
    let mut expected = after + 1;
    for entry in entries {
        if entry.sid != expected {
            return Err(corrupt(
                doc,
                format!("log has sid {} where {expected} was expected", entry.sid),
            ));
        }
        expected += 1;
    }
    if expected != last_sid + 1 {
        return Err(corrupt(
            doc,
            format!(
                "log ends at sid {} but the document is at {last_sid}",
                expected - 1
            ),
        ));
    }
    Ok(())
}

/// The writes of one append, inside the caller's transaction: updates with the next sids of
/// `doc`, then the idempotency records. `locked_last` is the document's last sid when the
/// caller already holds its row lock. `events` go to the webhook outbox with the batch's sids.
#[allow(clippy::too_many_arguments)]
async fn append_in(
    tx: &Tx,
    doc: &str,
    updates: &[NewUpdate],
    keys: &[NewKey],
    events: &[OutboxEvent],
    limits: &KeyLimits,
    locked_last: Option<Sid>,
    now_ms: u64,
) -> Result<SidRange, StoreError> {
    let client = tx.conn();
    let range = if updates.is_empty() {
        // Keys only: the document is neither created nor changed, but its row (if any) is
        // locked so the records name the sid that was last when they commit.
        let last = match locked_last {
            Some(last) => last,
            None => match query_opt(
                client,
                "SELECT last_sid FROM documents WHERE doc = $1 FOR UPDATE",
                &[&doc],
            )
            .await?
            {
                Some(row) => unsigned(doc, "last sid", get(&row, 0)?)?,
                None => 0,
            },
        };
        SidRange {
            first: last + 1,
            last,
        }
    } else {
        append_updates(client, doc, updates, now_ms).await?
    };
    if !keys.is_empty() {
        insert_keys(tx, doc, keys, range, updates.len(), limits, now_ms).await?;
    }
    inbox::insert_events(client, doc, range, events, now_ms).await?;
    Ok(range)
}

/// Gives `updates` (at least one) the next sids of `doc` and logs them, in one statement: the
/// counter row's upsert locks it until commit, so appends of `doc` commit in sid order. Run
/// alone (outside a transaction) the statement is its own transaction: one round trip.
async fn append_updates(
    client: &Object,
    doc: &str,
    updates: &[NewUpdate],
    now_ms: u64,
) -> Result<SidRange, StoreError> {
    let n = updates.len() as u64;
    let data: Vec<&[u8]> = updates.iter().map(|u| &u.update[..]).collect();
    let authors: Vec<&str> = updates.iter().map(|u| u.author.as_str()).collect();
    let row = query_one(
        client,
        "WITH counter AS (
             INSERT INTO documents (doc, last_sid, created_at, updated_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (doc) DO UPDATE SET last_sid = documents.last_sid + EXCLUDED.last_sid,
                 updated_at = EXCLUDED.updated_at
             RETURNING last_sid
         ), logged AS (
             INSERT INTO updates (doc, sid, data, author, at)
             SELECT $1, counter.last_sid - $2 + t.i, t.data, t.author, $3
             FROM counter, unnest($4::BYTEA[], $5::TEXT[]) WITH ORDINALITY AS t(data, author, i)
         )
         SELECT last_sid FROM counter",
        &[&doc, &big(n), &big(now_ms), &data, &authors],
    )
    .await?;
    let last = unsigned(doc, "last sid", get(&row, 0)?)?;
    Ok(SidRange {
        first: last + 1 - n,
        last,
    })
}

/// Stores one record per key (see the module docs), refusing a key with a live record, then
/// evicts expired and surplus records.
async fn insert_keys(
    tx: &Tx,
    doc: &str,
    keys: &[NewKey],
    range: SidRange,
    updates: usize,
    limits: &KeyLimits,
    now_ms: u64,
) -> Result<(), StoreError> {
    let client = tx.conn();
    let sizes: Vec<i64> = keys.iter().map(|k| big(k.answer.size() as u64)).collect();
    let added: i64 = sizes.iter().sum();
    let count = keys.len() as i64;
    // The global order of records; locks the totals row until commit (after the document's
    // row, never before it).
    let totals = query_one(
        client,
        "UPDATE idempotency_totals SET next_seq = next_seq + $1, bytes = bytes + $2
         WHERE id = 1 RETURNING next_seq, bytes",
        &[&count, &added],
    )
    .await?;
    let next_seq: i64 = get(&totals, 0)?;
    let total_bytes: i64 = get(&totals, 1)?;
    let expired_before = big(now_ms.saturating_sub(limits.ttl_ms));

    let users: Vec<&str> = keys.iter().map(|k| k.user.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    // An expired record of a key (not evicted yet) makes way; a live one refuses the key.
    execute(
        client,
        "DELETE FROM idempotency_keys WHERE doc = $1 AND at < $2
             AND (user_id, key) IN (SELECT * FROM unnest($3::TEXT[], $4::TEXT[]))",
        &[&doc, &expired_before, &users, &names],
    )
    .await?;

    let fingerprints: Vec<&[u8]> = keys.iter().map(|k| &k.fingerprint[..]).collect();
    let statuses: Vec<i32> = keys.iter().map(|k| i32::from(k.answer.status)).collect();
    let headers = keys
        .iter()
        .map(|k| serde_json::to_string(&k.answer.headers))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| StoreError::Backend(BackendError::new(e)))?;
    let bodies: Vec<&[u8]> = keys.iter().map(|k| &k.answer.body[..]).collect();
    let sids: Vec<i64> = keys
        .iter()
        .map(|k| big(range.first - 1 + k.after.min(updates) as u64))
        .collect();
    let first_seq = next_seq - count;
    let seqs: Vec<i64> = (0..count).map(|i| first_seq + i).collect();
    let mut before = total_bytes - added;
    let bytes_before: Vec<i64> = sizes
        .iter()
        .map(|size| {
            let b = before;
            before += size;
            b
        })
        .collect();
    let inserted = query(
        client,
        "INSERT INTO idempotency_keys
             (doc, user_id, key, fingerprint, status, headers, body, sid, at, size, seq,
              bytes_before)
         SELECT $1, t.user_id, t.key, t.fingerprint, t.status, t.headers, t.body, t.sid, $2,
             t.size, t.seq, t.bytes_before
         FROM unnest($3::TEXT[], $4::TEXT[], $5::BYTEA[], $6::INTEGER[], $7::TEXT[],
                     $8::BYTEA[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[])
             AS t(user_id, key, fingerprint, status, headers, body, sid, size, seq, bytes_before)
         ON CONFLICT (doc, user_id, key) DO NOTHING
         RETURNING user_id, key",
        &[
            &doc,
            &big(now_ms),
            &users,
            &names,
            &fingerprints,
            &statuses,
            &headers,
            &bodies,
            &sids,
            &sizes,
            &seqs,
            &bytes_before,
        ],
    )
    .await?;
    if inserted.len() != keys.len() {
        let mut stored = HashSet::new();
        for row in &inserted {
            stored.insert((get::<String>(row, 0)?, get::<String>(row, 1)?));
        }
        // The first key not stored, or stored for an earlier key of the same batch.
        let mut seen = HashSet::new();
        let refused = keys.iter().find(|k| {
            let id = (k.user.clone(), k.key.clone());
            !seen.insert(id.clone()) || !stored.contains(&id)
        });
        let refused = refused.unwrap_or(&keys[0]);
        return Err(StoreError::KeyInUse {
            doc: doc.to_owned(),
            user: refused.user.clone(),
            key: refused.key.clone(),
        });
    }
    // Beyond the newest `max_keys` records or `max_bytes` bytes, and a few expired ones.
    execute(
        client,
        "DELETE FROM idempotency_keys
         WHERE seq < $1 OR bytes_before < $2 OR seq IN (
             SELECT seq FROM idempotency_keys WHERE at < $3 ORDER BY at LIMIT $4)",
        &[
            &next_seq.saturating_sub(big(limits.max_keys)),
            &total_bytes.saturating_sub(big(limits.max_bytes)),
            &expired_before,
            &(2 * count + EXPIRED_PER_APPEND),
        ],
    )
    .await?;
    Ok(())
}

/// The snapshot, history mark and log of `doc`, inside a REPEATABLE READ transaction.
async fn load(tx: &Tx, doc: &str) -> Result<Option<Loaded>, StoreError> {
    let client = tx.conn();
    let Some(row) = query_opt(
        client,
        "SELECT d.last_sid, d.snapshot_sid, d.checkpoint_sid, d.checkpoint_at,
             d.pending_authors, s.sid, s.data
         FROM documents d LEFT JOIN snapshots s ON s.doc = d.doc
         WHERE d.doc = $1",
        &[&doc],
    )
    .await?
    else {
        return Ok(None);
    };
    let last_sid = unsigned(doc, "last sid", get(&row, 0)?)?;
    let snapshot_sid = unsigned(doc, "snapshot sid", get(&row, 1)?)?;
    if last_sid == 0 && snapshot_sid == 0 {
        // A row a lock created without writing: never written.
        return Ok(None);
    }
    let checkpoint_sid = unsigned(doc, "checkpoint sid", get(&row, 2)?)?;
    let checkpoint_at = unsigned(doc, "checkpoint time", get(&row, 3)?)?;
    let authors: Vec<String> = get(&row, 4)?;
    let snapshot = if snapshot_sid > 0 {
        match (
            get::<Option<i64>>(&row, 5)?,
            get::<Option<Vec<u8>>>(&row, 6)?,
        ) {
            (Some(sid), Some(data)) if sid == big(snapshot_sid) => Some(Snapshot {
                sid: snapshot_sid,
                state: Bytes::from(data),
            }),
            _ => {
                return Err(corrupt(
                    doc,
                    format!("the snapshot at sid {snapshot_sid} is missing"),
                ))
            }
        }
    } else {
        None
    };
    if last_sid < snapshot_sid {
        return Err(corrupt(
            doc,
            format!("the snapshot at sid {snapshot_sid} is past the last sid {last_sid}"),
        ));
    }
    let rows = query(
        client,
        "SELECT sid, data, author, at FROM updates WHERE doc = $1 AND sid > $2 ORDER BY sid",
        &[&doc, &big(snapshot_sid)],
    )
    .await?;
    let mut updates = Vec::with_capacity(rows.len());
    for row in &rows {
        updates.push(LogEntry {
            sid: unsigned(doc, "sid", get(row, 0)?)?,
            update: Bytes::from(get::<Vec<u8>>(row, 1)?),
            author: get(row, 2)?,
            at: unsigned(doc, "time", get(row, 3)?)?,
        });
    }
    check_log(doc, &updates, snapshot_sid, last_sid)?;
    Ok(Some(Loaded {
        snapshot,
        updates,
        last_sid,
        history: HistoryMark {
            last_checkpoint: (checkpoint_sid > 0).then_some((checkpoint_sid, checkpoint_at)),
            authors,
        },
    }))
}

/// A compaction inside the caller's transaction. Compactions of one document take turns on a
/// transaction-scoped advisory lock; the document's row (the counter every append locks) is
/// written last, so appends wait for this compaction only while it commits, not while it
/// writes the snapshot and drops the log (those rows are below `upto`, which no append
/// touches).
async fn compact_in(tx: &Tx, doc: &str, compaction: &Compaction) -> Result<Compacted, StoreError> {
    let client = tx.conn();
    let upto = compaction.upto;
    execute(
        client,
        "SELECT pg_advisory_xact_lock(hashtextextended('tandem.compact:' || $1, 0))",
        &[&doc],
    )
    .await?;
    // Read after the lock: a compaction that committed before it is seen.
    let row = query_opt(
        client,
        "SELECT last_sid, snapshot_sid FROM documents WHERE doc = $1",
        &[&doc],
    )
    .await?;
    let (last_sid, snapshot_sid) = match row {
        Some(row) => (
            unsigned(doc, "last sid", get(&row, 0)?)?,
            unsigned(doc, "snapshot sid", get(&row, 1)?)?,
        ),
        None => (0, 0),
    };
    if last_sid == 0 {
        return Err(StoreError::UnknownDocument(doc.to_owned()));
    }
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
    execute(
        client,
        "INSERT INTO snapshots (doc, sid, data) VALUES ($1, $2, $3)
         ON CONFLICT (doc) DO UPDATE SET sid = EXCLUDED.sid, data = EXCLUDED.data",
        &[&doc, &big(upto), &state],
    )
    .await?;
    let removed = execute(
        client,
        "DELETE FROM updates WHERE doc = $1 AND sid <= $2",
        &[&doc, &big(upto)],
    )
    .await?;
    let checkpoint = match compaction.checkpoint_at {
        Some(at) => {
            execute(
                client,
                "INSERT INTO checkpoints (doc, sid, at, authors, data) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (doc, sid) DO UPDATE SET at = EXCLUDED.at,
                     authors = EXCLUDED.authors, data = EXCLUDED.data",
                &[&doc, &big(upto), &big(at), &compaction.authors, &state],
            )
            .await?;
            execute(
                client,
                "UPDATE documents SET snapshot_sid = $2, checkpoint_sid = $2, checkpoint_at = $3,
                     pending_authors = '{}' WHERE doc = $1",
                &[&doc, &big(upto), &big(at)],
            )
            .await?;
            Some(upto)
        }
        None => {
            execute(
                client,
                "UPDATE documents SET snapshot_sid = $2, pending_authors = $3 WHERE doc = $1",
                &[&doc, &big(upto), &compaction.authors],
            )
            .await?;
            None
        }
    };
    Ok(Compacted {
        removed,
        checkpoint,
    })
}

/// Runs `work` in a transaction and commits it; on error, rolls back.
macro_rules! in_transaction {
    ($tx:ident, $work:expr) => {{
        match $work {
            Ok(value) => $tx.commit().await.map(|()| value),
            Err(e) => {
                $tx.rollback().await;
                Err(e)
            }
        }
    }};
}

/// [`Store::lock`] of the shared store: an open transaction holding the document's row lock.
struct PgLocked {
    store: PostgresStore,
    tx: Tx,
    doc: String,
    last_sid: Sid,
    since: Since,
}

#[async_trait]
impl Locked for PgLocked {
    fn since(&self) -> &Since {
        &self.since
    }

    async fn append_full(
        self: Box<Self>,
        updates: Vec<NewUpdate>,
        keys: Vec<NewKey>,
        events: Vec<OutboxEvent>,
    ) -> Result<SidRange, StoreError> {
        let PgLocked {
            store,
            tx,
            doc,
            last_sid,
            ..
        } = *self;
        if updates.is_empty() && keys.is_empty() {
            // Nothing to write (and a row the lock created goes with the rollback).
            tx.rollback().await;
            return Ok(SidRange {
                first: last_sid + 1,
                last: last_sid,
            });
        }
        let limits = store.inner.keys;
        let range = in_transaction!(
            tx,
            append_in(
                &tx,
                &doc,
                &updates,
                &keys,
                &events,
                &limits,
                Some(last_sid),
                unix_ms()
            )
            .await
        )?;
        store.committed_append(updates.len());
        Ok(range)
    }
}

impl PostgresStore {
    fn committed_append(&self, updates: usize) {
        self.inner.metrics.store_transactions.inc();
        self.inner.metrics.store_appends.add(updates as u64);
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self, doc: &str) -> Result<Option<Loaded>, StoreError> {
        // One snapshot for the row, the snapshot and the log: a concurrent compaction or
        // append cannot tear them apart.
        let tx = Tx::begin(
            self.client().await?,
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )
        .await?;
        in_transaction!(tx, load(&tx, doc).await)
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
        if keys.is_empty() && events.is_empty() {
            // Updates only (the usual batch): one statement, its own transaction.
            let range = append_updates(&self.client().await?, doc, &updates, unix_ms()).await?;
            self.committed_append(updates.len());
            return Ok(range);
        }
        let tx = self.begin().await?;
        let limits = self.inner.keys;
        let range = in_transaction!(
            tx,
            append_in(&tx, doc, &updates, &keys, &events, &limits, None, unix_ms()).await
        )?;
        self.committed_append(updates.len());
        Ok(range)
    }

    async fn idempotency_key(
        &self,
        doc: &str,
        user: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let expired_before = big(unix_ms().saturating_sub(self.inner.keys.ttl_ms));
        let Some(row) = query_opt(
            &client,
            "SELECT fingerprint, status, headers, body, sid, at FROM idempotency_keys
             WHERE doc = $1 AND user_id = $2 AND key = $3 AND at >= $4",
            &[&doc, &user, &key, &expired_before],
        )
        .await?
        else {
            return Ok(None);
        };
        let fingerprint: Fingerprint = get::<Vec<u8>>(&row, 0)?.try_into().map_err(|_| {
            corrupt(
                doc,
                format!("idempotency key {key:?}: fingerprint is not 32 bytes"),
            )
        })?;
        let status = u16::try_from(get::<i32>(&row, 1)?)
            .map_err(|_| corrupt(doc, format!("idempotency key {key:?}: bad status")))?;
        let headers: Vec<(String, String)> = serde_json::from_str(&get::<String>(&row, 2)?)
            .map_err(|e| corrupt(doc, format!("idempotency key {key:?}: headers: {e}")))?;
        Ok(Some(KeyRecord {
            fingerprint,
            answer: Answer {
                status,
                headers,
                body: Bytes::from(get::<Vec<u8>>(&row, 3)?),
            },
            sid: unsigned(doc, "sid", get(&row, 4)?)?,
            at: unsigned(doc, "time", get(&row, 5)?)?,
        }))
    }

    async fn updates_since(&self, doc: &str, sid: Sid) -> Result<Since, StoreError> {
        let client = self.client().await?;
        read_since(&client, doc, sid).await
    }

    async fn compact(&self, doc: &str, compaction: Compaction) -> Result<Compacted, StoreError> {
        let tx = self.begin().await?;
        let done = in_transaction!(tx, compact_in(&tx, doc, &compaction).await)?;
        let metrics = &self.inner.metrics;
        metrics.store_transactions.inc();
        metrics.store_compactions.inc();
        if done.checkpoint.is_some() {
            metrics.store_checkpoints.inc();
        }
        Ok(done)
    }

    async fn checkpoints(&self, doc: &str) -> Result<Vec<CheckpointInfo>, StoreError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT sid, at, authors FROM checkpoints WHERE doc = $1 ORDER BY sid",
            &[&doc],
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok(CheckpointInfo {
                    sid: unsigned(doc, "checkpoint sid", get(row, 0)?)?,
                    at: unsigned(doc, "checkpoint time", get(row, 1)?)?,
                    authors: get(row, 2)?,
                })
            })
            .collect()
    }

    async fn checkpoint(&self, doc: &str, sid: Sid) -> Result<Option<Bytes>, StoreError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT data FROM checkpoints WHERE doc = $1 AND sid = $2",
            &[&doc, &big(sid)],
        )
        .await?;
        row.map(|row| get::<Vec<u8>>(&row, 0).map(Bytes::from))
            .transpose()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write is committed before it is answered: nothing is queued.
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::Release);
        // Idle connections close now; ones in use (a running transaction, a lock guard) close
        // when they are returned.
        self.inner.pool.close();
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn last_sids(&self, docs: &[String]) -> Result<Vec<Sid>, StoreError> {
        let client = self.client().await?;
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let rows = query(
            &client,
            "SELECT COALESCE(d.last_sid, 0)
             FROM unnest($1::TEXT[]) WITH ORDINALITY AS q(doc, i)
             LEFT JOIN documents d ON d.doc = q.doc
             ORDER BY q.i",
            &[&docs],
        )
        .await?;
        rows.iter()
            .zip(docs)
            .map(|(row, doc)| unsigned(doc, "last sid", get(row, 0)?))
            .collect()
    }

    async fn lock(&self, doc: &str, after: Sid) -> Result<Box<dyn Locked>, StoreError> {
        let tx = self.begin().await?;
        let locked = async {
            // Creates the row of a document never written (last sid 0, still "never written"
            // to readers), so there is a row to lock; locks it until the transaction ends.
            let row = query_one(
                tx.conn(),
                "INSERT INTO documents (doc, last_sid, created_at, updated_at)
                 VALUES ($1, 0, $2, $2)
                 ON CONFLICT (doc) DO UPDATE SET last_sid = documents.last_sid
                 RETURNING last_sid",
                &[&doc, &big(unix_ms())],
            )
            .await?;
            let last_sid = unsigned(doc, "last sid", get(&row, 0)?)?;
            // A new statement: sees everything committed before the lock was granted.
            let since = read_since(tx.conn(), doc, after).await?;
            Ok::<_, StoreError>((last_sid, since))
        }
        .await;
        match locked {
            Ok((last_sid, since)) => Ok(Box::new(PgLocked {
                store: self.clone(),
                tx,
                doc: doc.to_owned(),
                last_sid,
                since,
            })),
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn record_revocation(&self, user: &str, at: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        // One statement: committed (durable) when it returns.
        execute(
            &client,
            "INSERT INTO revocations (user_id, at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET at = GREATEST(revocations.at, EXCLUDED.at)",
            &[&user, &big(at)],
        )
        .await?;
        self.inner.metrics.store_transactions.inc();
        Ok(())
    }

    async fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = query(&client, "SELECT user_id, at FROM revocations", &[]).await?;
        rows.iter()
            .map(|row| {
                let user: String = get(row, 0)?;
                let at = unsigned(&user, "revocation time", get(row, 1)?)?;
                Ok((user, at))
            })
            .collect()
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

mod inbox;

#[cfg(test)]
mod tests {
    //! Every test runs on its own new database on the PostgreSQL server named by
    //! `TANDEM_TEST_POSTGRES` (a URL; default `postgres://postgres@127.0.0.1:5432/test`),
    //! dropped at the end, also when the test fails. A server that cannot be reached fails
    //! the tests, saying so: nothing is skipped.

    use std::collections::BTreeMap;
    use std::time::Instant;

    use tokio::net::{TcpListener, TcpStream};

    use super::super::contract::{self, new, snap, upd};
    use super::*;

    const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

    fn server_url() -> String {
        std::env::var("TANDEM_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
    }

    async fn connect_raw(url: &str) -> tokio_postgres::Client {
        let (client, connection) = match tokio_postgres::connect(url, NoTls).await {
            Ok(c) => c,
            Err(e) => panic!(
                "these tests need a PostgreSQL server at {} (set TANDEM_TEST_POSTGRES to \
                 another URL): {e}",
                redact(url)
            ),
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// A new database, dropped (with its connections) when this is dropped.
    struct TestDb {
        name: String,
        url: url::Url,
    }

    impl TestDb {
        async fn new() -> TestDb {
            let name = format!("tandem_t_{:016x}", fastrand::u64(..));
            connect_raw(&server_url())
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let mut url = url::Url::parse(&server_url()).expect("TANDEM_TEST_POSTGRES is a URL");
            url.set_path(&name);
            TestDb { name, url }
        }

        fn url(&self) -> String {
            self.url.to_string()
        }

        /// The database's URL through another port (a proxy).
        fn url_via(&self, port: u16) -> String {
            let mut url = self.url.clone();
            url.set_host(Some("127.0.0.1")).unwrap();
            url.set_port(Some(port)).unwrap();
            url.to_string()
        }

        async fn store(&self) -> PostgresStore {
            self.store_with(PostgresOptions::default()).await
        }

        async fn store_with(&self, options: PostgresOptions) -> PostgresStore {
            PostgresStore::connect(&self.url(), options).await.unwrap()
        }

        async fn sql(&self) -> tokio_postgres::Client {
            connect_raw(&self.url()).await
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Its own thread and runtime: this may run inside (or after) the test's runtime.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    connect_raw(&server_url())
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
                panic!("could not drop the test database {}", self.name);
            }
        }
    }

    // The contract every backend keeps (see `contract.rs`).

    #[tokio::test]
    async fn notifications_are_per_user_paged_and_bounded() {
        let db = TestDb::new().await;
        contract::notifications_are_per_user_paged_and_bounded(&db.store().await).await;
    }

    #[tokio::test]
    async fn grants_comments_and_due_dates_are_kept() {
        let db = TestDb::new().await;
        contract::grants_comments_and_due_dates_are_kept(&db.store().await).await;
    }

    #[tokio::test]
    async fn the_outbox_keeps_order_per_document() {
        let db = TestDb::new().await;
        contract::the_outbox_keeps_order_per_document(&db.store().await).await;
    }

    #[tokio::test]
    async fn unknown_documents_load_as_none() {
        let db = TestDb::new().await;
        contract::unknown_documents_load_as_none(&db.store().await).await;
    }

    #[tokio::test]
    async fn appends_get_gap_free_sids_per_document() {
        let db = TestDb::new().await;
        let store = db.store().await;
        contract::appends_get_gap_free_sids_per_document(&store).await;
        assert_eq!(store.inner.metrics.store_appends.get(), 5);
        assert_eq!(store.inner.metrics.store_transactions.get(), 4);
    }

    #[tokio::test]
    async fn compaction_replaces_the_log_with_a_snapshot() {
        let db = TestDb::new().await;
        contract::compaction_replaces_the_log_with_a_snapshot(&db.store().await).await;
    }

    #[tokio::test]
    async fn bad_compactions_are_refused_without_harm() {
        let db = TestDb::new().await;
        contract::bad_compactions_are_refused_without_harm(&db.store().await).await;
    }

    #[tokio::test]
    async fn checkpoints_are_kept_when_asked() {
        let db = TestDb::new().await;
        let store = db.store().await;
        contract::checkpoints_are_kept_when_asked(&store).await;
        assert_eq!(store.inner.metrics.store_checkpoints.get(), 2);
        assert_eq!(store.inner.metrics.store_compactions.get(), 3);
        // Another node sees the same history.
        let loaded = db.store().await.load("doc").await.unwrap().unwrap();
        assert_eq!(loaded.history.last_checkpoint, Some((12, 2_000)));
    }

    #[tokio::test]
    async fn keys_are_stored_with_their_batch() {
        let db = TestDb::new().await;
        contract::keys_are_stored_with_their_batch(&db.store().await).await;
        contract::check_keys_of_keys_are_stored_with_their_batch(&db.store().await).await;
    }

    #[tokio::test]
    async fn a_live_key_refuses_its_append_and_only_its_append() {
        let db = TestDb::new().await;
        contract::a_live_key_refuses_its_append_and_only_its_append(&db.store().await).await;
    }

    #[tokio::test]
    async fn expired_keys_are_free_again_and_the_oldest_keys_are_evicted() {
        let db = TestDb::new().await;
        let store = db
            .store_with(PostgresOptions {
                keys: KeyLimits {
                    ttl_ms: 60_000,
                    max_keys: 4,
                    max_bytes: 35,
                },
                ..PostgresOptions::default()
            })
            .await;
        let sql = db.sql().await;
        let count: contract::Hook<'_, u64> = Box::new(|_| {
            Box::pin(async {
                let n: i64 = sql
                    .query_one("SELECT COUNT(*) FROM idempotency_keys", &[])
                    .await
                    .unwrap()
                    .get(0);
                n as u64
            })
        });
        let backdate: contract::Hook<'_, ()> = Box::new(|key| {
            Box::pin(async {
                let key = key;
                sql.execute(
                    "UPDATE idempotency_keys SET at = at - 61000
                     WHERE user_id = 'bob' AND key = $1",
                    &[&key],
                )
                .await
                .unwrap();
            })
        });
        contract::expired_keys_are_free_again_and_the_oldest_keys_are_evicted(
            &store, count, backdate,
        )
        .await;
    }

    #[tokio::test]
    async fn a_lock_reads_what_was_committed_and_appends_within_it() {
        let db = TestDb::new().await;
        let store = db.store().await;
        assert!(store.is_shared());
        contract::a_lock_reads_what_was_committed_and_appends_within_it(&store).await;
    }

    #[tokio::test]
    async fn last_sids_answer_in_order() {
        let db = TestDb::new().await;
        contract::last_sids_answer_in_order(&db.store().await).await;
    }

    #[tokio::test]
    async fn revocations_keep_the_latest_time_per_user() {
        let db = TestDb::new().await;
        contract::revocations_keep_the_latest_time_per_user(&db.store().await).await;
        contract::check_revocations(&db.store().await).await;
    }

    #[tokio::test]
    async fn a_closed_store_refuses_everything() {
        let db = TestDb::new().await;
        contract::a_closed_store_refuses_everything(&db.store().await).await;
    }

    #[tokio::test]
    async fn a_gap_in_the_log_is_a_load_error_not_an_empty_document() {
        let db = TestDb::new().await;
        let store = db.store().await;
        for i in 1..=3 {
            store.append("doc", upd(&i.to_string()), "u").await.unwrap();
        }
        let sql = db.sql().await;
        sql.batch_execute("DELETE FROM updates WHERE sid = 2")
            .await
            .unwrap();
        assert!(matches!(
            store.load("doc").await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            store.updates_since("doc", 1).await,
            Err(StoreError::Corrupt { .. })
        ));
        sql.batch_execute("DELETE FROM updates WHERE sid = 3")
            .await
            .unwrap();
        assert!(matches!(
            store.load("doc").await,
            Err(StoreError::Corrupt { .. })
        ));
        sql.batch_execute("UPDATE documents SET snapshot_sid = 1")
            .await
            .unwrap();
        assert!(matches!(
            store.load("doc").await,
            Err(StoreError::Corrupt { .. })
        ));
        sql.batch_execute("DROP TABLE updates").await.unwrap();
        assert!(matches!(
            store.updates_since("doc", 1).await,
            Err(StoreError::Backend(_))
        ));
    }

    // Several nodes on one database.

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_from_two_nodes_get_every_sid_once_and_commit_in_sid_order() {
        let db = TestDb::new().await;
        let nodes = [db.store().await, db.store().await];
        const TASKS: usize = 8;
        const ROUNDS: usize = 15;
        let done = Arc::new(AtomicBool::new(false));
        // A reader on a third connection, following the log as a resuming client would: each
        // answer continues exactly where the last one ended (a sid committed after a higher
        // one would show as a gap here, or as a sid it already passed).
        let reader = tokio::spawn({
            let store = db.store().await;
            let done = Arc::clone(&done);
            async move {
                let mut seen: Vec<(Sid, Bytes)> = Vec::new();
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let after = seen.last().map_or(0, |(sid, _)| *sid);
                    match store.updates_since("doc", after).await.unwrap() {
                        Since::Updates { entries, last_sid } => {
                            assert_eq!(entries.len() as u64, last_sid - after);
                            for (i, e) in entries.into_iter().enumerate() {
                                assert_eq!(e.sid, after + 1 + i as u64);
                                seen.push((e.sid, e.update));
                            }
                        }
                        other => panic!("after {after}: {other:?}"),
                    }
                    if finished {
                        return seen;
                    }
                }
            }
        });
        let mut writers = Vec::new();
        for t in 0..TASKS {
            let store = nodes[t % 2].clone();
            writers.push(tokio::spawn(async move {
                let mut ranges = Vec::new();
                for round in 0..ROUNDS {
                    // Batches of 1 to 3 updates.
                    let n = 1 + (t + round) % 3;
                    let batch = (0..n).map(|i| new(&format!("t{t}r{round}i{i}"))).collect();
                    let range = store.append_batch("doc", batch).await.unwrap();
                    assert_eq!(range.last + 1 - range.first, n as u64);
                    ranges.push((range, t, round));
                }
                ranges
            }));
        }
        let mut owner: BTreeMap<Sid, String> = BTreeMap::new();
        for writer in writers {
            for (range, t, round) in writer.await.unwrap() {
                for (i, sid) in (range.first..=range.last).enumerate() {
                    let previous = owner.insert(sid, format!("t{t}r{round}i{i}"));
                    assert!(previous.is_none(), "sid {sid} given twice");
                }
            }
        }
        done.store(true, Ordering::Release);
        let seen = reader.await.unwrap();
        let total = owner.len() as u64;
        // Every sid 1..=N exactly once, each holding the update it was given for.
        assert_eq!(
            owner.keys().copied().collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>()
        );
        let loaded = nodes[1].load("doc").await.unwrap().unwrap();
        assert_eq!(loaded.last_sid, total);
        for entry in &loaded.updates {
            assert_eq!(entry.update, upd(&owner[&entry.sid]), "sid {}", entry.sid);
        }
        // The reader saw the final log, in order, without ever skipping.
        let seen_sids: Vec<Sid> = seen.iter().map(|(sid, _)| *sid).collect();
        assert_eq!(seen_sids, (1..=total).collect::<Vec<_>>());
        let appended: u64 = nodes
            .iter()
            .map(|n| n.inner.metrics.store_appends.get())
            .sum();
        assert_eq!(appended, total);
    }

    /// Whether `task` is still running after a moment.
    async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
        tokio::time::sleep(Duration::from_millis(300)).await;
        !task.is_finished()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_holds_off_other_nodes_until_released() {
        let db = TestDb::new().await;
        let (a, b) = (db.store().await, db.store().await);
        b.append("doc", upd("b1"), "bob").await.unwrap();
        let guard = a.lock("doc", 0).await.unwrap();
        // What the other node committed is read under the lock.
        let Since::Updates { entries, last_sid } = guard.since() else {
            panic!("{:?}", guard.since());
        };
        assert_eq!(
            (contract::texts(entries), *last_sid),
            (vec![(1, "b1".into())], 1)
        );
        let append = tokio::spawn({
            let b = b.clone();
            async move { b.append("doc", upd("b2"), "bob").await }
        });
        let compact = tokio::spawn({
            let b = b.clone();
            async move { b.compact("doc", snap(1, "s1")).await }
        });
        let lock = tokio::spawn({
            let b = b.clone();
            async move { b.lock("doc", 1).await.map(|_| ()) }
        });
        assert!(still_waiting(&append).await);
        assert!(!compact.is_finished() && !lock.is_finished());
        // Other documents are not held.
        assert_eq!(b.append("other", upd("o1"), "bob").await.unwrap(), 1);
        let range = guard
            .append_with_keys(vec![new("a2")], vec![])
            .await
            .unwrap();
        assert_eq!(range, SidRange { first: 2, last: 2 });
        assert_eq!(append.await.unwrap().unwrap(), 3);
        compact.await.unwrap().unwrap();
        lock.await.unwrap().unwrap();

        // A dropped guard releases too, and writes nothing.
        let guard = a.lock("doc", 3).await.unwrap();
        let append = tokio::spawn({
            let b = b.clone();
            async move { b.append("doc", upd("b4"), "bob").await }
        });
        assert!(still_waiting(&append).await);
        drop(guard);
        let started = Instant::now();
        assert_eq!(append.await.unwrap().unwrap(), 4);
        assert!(started.elapsed() < Duration::from_secs(2));

        // A guard on a document never written holds off its first append.
        let guard = a.lock("fresh", 0).await.unwrap();
        let append = tokio::spawn({
            let b = b.clone();
            async move { b.append("fresh", upd("f1"), "bob").await }
        });
        assert!(still_waiting(&append).await);
        assert_eq!(
            guard.append_with_keys(vec![], vec![]).await.unwrap(),
            SidRange { first: 1, last: 0 }
        );
        assert_eq!(append.await.unwrap().unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compactions_from_two_nodes_take_turns_and_drop_nothing() {
        let db = TestDb::new().await;
        let nodes = [db.store().await, db.store().await];
        let first = (1..=5).map(|i| new(&i.to_string())).collect();
        nodes[0].append_batch("doc", first).await.unwrap();
        let mut appended = 5u64;
        for round in 0..6u64 {
            // Appends from both nodes while both compact the document at once.
            let appends: Vec<_> = (0..4)
                .map(|i| {
                    let store = nodes[i % 2].clone();
                    tokio::spawn(async move {
                        for j in 0..5 {
                            store
                                .append("doc", upd(&format!("r{round}a{i}j{j}")), "u")
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            let last = nodes[0].last_sids(&["doc".to_owned()]).await.unwrap()[0];
            let compactions: Vec<_> = (0..2)
                .map(|n| {
                    let store = nodes[n].clone();
                    // Node 1 compacts further than node 0.
                    let upto = last + n as u64 * 3;
                    tokio::spawn(async move {
                        let r = store.compact("doc", snap(upto, &format!("s{upto}"))).await;
                        (upto, r)
                    })
                })
                .collect();
            for task in appends {
                task.await.unwrap();
            }
            appended += 20;
            let mut done = Vec::new();
            for task in compactions {
                match task.await.unwrap() {
                    (upto, Ok(_)) => done.push(upto),
                    // Refused whole: the other node went further first, or the appends had
                    // not reached node 1's target yet.
                    (_, Err(StoreError::CompactBehindSnapshot { .. }))
                    | (_, Err(StoreError::CompactBeyondLog { .. })) => {}
                    (upto, Err(e)) => panic!("compaction to {upto}: {e}"),
                }
            }
            let loaded = nodes[round as usize % 2]
                .load("doc")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(loaded.last_sid, appended);
            let snapshot = loaded.snapshot.expect("a compaction succeeded");
            // The snapshot is the furthest compaction that committed, and the log holds
            // every sid after it.
            assert_eq!(Some(&snapshot.sid), done.iter().max(), "round {round}");
            assert_eq!(snapshot.state, upd(&format!("s{}", snapshot.sid)));
            assert_eq!(loaded.updates.len() as u64, appended - snapshot.sid);
        }
    }

    // Schema.

    #[tokio::test]
    async fn nodes_starting_together_create_the_schema_once() {
        let db = TestDb::new().await;
        let url = db.url();
        let starts: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    PostgresStore::connect(&url, PostgresOptions::default()).await
                })
            })
            .collect();
        for start in starts {
            start.await.unwrap().unwrap();
        }
        let version: i64 = db
            .sql()
            .await
            .query_one("SELECT version FROM tandem_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_and_left_alone() {
        let db = TestDb::new().await;
        db.store().await.append("doc", upd("1"), "u").await.unwrap();
        let sql = db.sql().await;
        sql.batch_execute("UPDATE tandem_schema SET version = 99")
            .await
            .unwrap();
        let err = PostgresStore::connect(&db.url(), PostgresOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnsupportedSchema {
                    found: 99,
                    supported: SCHEMA_VERSION
                }
            ),
            "{err}"
        );
        let version: i64 = sql
            .query_one("SELECT version FROM tandem_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, 99);
        let rows: i64 = sql
            .query_one("SELECT COUNT(*) FROM updates", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1);
    }

    #[tokio::test]
    async fn a_database_that_is_not_tandems_is_not_taken_over() {
        let db = TestDb::new().await;
        db.sql()
            .await
            .batch_execute("CREATE TABLE documents (id INTEGER)")
            .await
            .unwrap();
        let err = PostgresStore::connect(&db.url(), PostgresOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
    }

    // Opening and connection failures.

    const PASSWORD: &str = "s3cr3t-pa55word";

    fn assert_redacted(err: &StoreError, host: &str, database: &str) {
        let shown = err.to_string();
        assert!(matches!(err, StoreError::Open { .. }), "{shown}");
        assert!(shown.contains(host), "{shown} names {host}");
        assert!(shown.contains(database), "{shown} names {database}");
        assert!(!shown.contains(PASSWORD), "{shown} shows the password");
        assert!(!shown.contains("alice:"), "{shown} shows user:password");
        assert!(!format!("{err:?}").contains(PASSWORD), "{err:?}");
    }

    #[test]
    fn redact_keeps_host_port_and_database_only() {
        let cases = [
            (
                "postgres://alice:s3cr3t-pa55word@db.example:6543/tandem?sslmode=disable",
                "postgres://db.example:6543/tandem",
            ),
            (
                "postgresql://alice@db.example/tandem",
                "postgres://db.example:5432/tandem",
            ),
            (
                "postgres://alice:s3cr3t-pa55word@a:1,b:2/x",
                "postgres://a:1,b:2/x",
            ),
            (
                "host=db.example port=7 dbname=t user=alice password=s3cr3t-pa55word",
                "postgres://db.example:7/t",
            ),
            (
                "postgres://alice:s3cr3t-pa55word@db.example:notaport/x",
                "postgres://db.example:notaport",
            ),
            (
                "postgres://alice:s3cr3t/pa55word@db.example:notaport/x?password=s3cr3t",
                "postgres://db.example:notaport",
            ),
            (
                "postgres://alice:s3cr3t/pa55word@db.example/x",
                "postgres://db.example:5432/x",
            ),
            (
                "password=s3cr3t-pa55word nonsense",
                "(a PostgreSQL connection string that does not parse)",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_to_open_fast_naming_host_and_database_only() {
        // A closed port: refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://alice:{PASSWORD}@127.0.0.1:{port}/somedb");
        let started = Instant::now();
        let err = PostgresStore::connect(&url, PostgresOptions::default())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_redacted(&err, &format!("127.0.0.1:{port}"), "somedb");

        // A server that accepts connections and never answers: the connect timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let url = format!("postgres://alice:{PASSWORD}@127.0.0.1:{port}/somedb");
        let started = Instant::now();
        let err = PostgresStore::connect(&url, PostgresOptions::default())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_redacted(&err, &format!("127.0.0.1:{port}"), "somedb");

        // An unparsable URL.
        let err = PostgresStore::connect(
            &format!("postgres://alice:{PASSWORD}@127.0.0.1:nope/somedb"),
            PostgresOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err}");
        assert!(!err.to_string().contains(PASSWORD), "{err}");
    }

    #[tokio::test]
    async fn a_missing_database_fails_to_open_naming_it_and_not_the_password() {
        let mut url = url::Url::parse(&server_url()).unwrap();
        url.set_path("tandem_no_such_database");
        url.set_password(Some(PASSWORD)).unwrap();
        let err = PostgresStore::connect(url.as_str(), PostgresOptions::default())
            .await
            .unwrap_err();
        let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        assert_redacted(&err, &host, "tandem_no_such_database");
    }

    /// A TCP proxy to the test server that can be cut (listener and connections).
    struct Proxy {
        port: u16,
        accept: tokio::task::JoinHandle<()>,
        conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    }

    impl Proxy {
        async fn start() -> Proxy {
            let target = tokio_postgres::Config::from_str(&server_url()).unwrap();
            let host = match &target.get_hosts()[0] {
                tokio_postgres::config::Host::Tcp(host) => host.clone(),
                other => panic!("the test server must be reached over TCP, not {other:?}"),
            };
            let target = (host, target.get_ports().first().copied().unwrap_or(5432));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
            let accept = tokio::spawn({
                let conns = Arc::clone(&conns);
                async move {
                    while let Ok((mut inbound, _)) = listener.accept().await {
                        let target = target.clone();
                        let conn = tokio::spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        });
                        conns.lock().unwrap().push(conn.abort_handle());
                    }
                }
            });
            Proxy {
                port,
                accept,
                conns,
            }
        }

        /// The database is gone: no new connections, open ones closed.
        async fn cut(&self) {
            self.accept.abort();
            for conn in self.conns.lock().unwrap().drain(..) {
                conn.abort();
            }
            // Let the aborted tasks drop their sockets.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_database_is_unavailable_fast() {
        let db = TestDb::new().await;
        let proxy = Proxy::start().await;
        let store = PostgresStore::connect(&db.url_via(proxy.port), PostgresOptions::default())
            .await
            .unwrap();
        assert_eq!(store.append("doc", upd("1"), "u").await.unwrap(), 1);
        let guard = store.lock("doc", 1).await.unwrap();
        proxy.cut().await;

        let started = Instant::now();
        let unavailable = |r: Result<(), StoreError>| {
            assert!(
                matches!(r, Err(StoreError::Unavailable { .. })),
                "expected Unavailable, got {r:?}"
            );
        };
        // A guard whose connection is gone commits nothing.
        unavailable(
            guard
                .append_with_keys(vec![new("2")], vec![])
                .await
                .map(|_| ()),
        );
        // The pooled connection is closed; then no new one can be made.
        unavailable(store.append("doc", upd("2"), "u").await.map(|_| ()));
        unavailable(store.append("doc", upd("2"), "u").await.map(|_| ()));
        unavailable(store.load("doc").await.map(|_| ()));
        unavailable(store.updates_since("doc", 0).await.map(|_| ()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let err = store.load("doc").await.unwrap_err();
        assert!(err.to_string().contains("retry later"), "{err}");

        // Nothing was committed after the cut.
        let direct = db.store().await;
        assert_eq!(direct.load("doc").await.unwrap().unwrap().last_sid, 1);
        store.close().await.unwrap();
        assert!(matches!(store.load("doc").await, Err(StoreError::Closed)));
    }

    #[tokio::test]
    async fn the_store_opens_through_store_open() {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::infra::config::Config::default_for(dir.path());
        config.database_url = Some(db.url.clone());
        let store = super::super::open(&config, &Metrics::new()).await.unwrap();
        assert!(store.is_shared());
        assert_eq!(store.append("d", upd("x"), "u").await.unwrap(), 1);
        store.close().await.unwrap();
    }
}
