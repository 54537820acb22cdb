//! `state.sqlite`: the state store on an embedded SQLite database.
//!
//! Threads: SQLite calls block, so every operation runs on tokio's blocking pool
//! (`spawn_blocking`) and the async workers only wait. Connections are opened once at build:
//! one writer behind an async mutex (SQLite admits one writer at a time anyway, and queueing
//! writers in-process keeps them off SQLite's sleep-and-retry busy handler) and a few
//! `query_only` readers handed out by a semaphore, so in WAL mode reads never wait for writes.
//! No lock is held across an `.await` except the writer's async mutex, whose guard travels into
//! the blocking task. An in-memory database cannot be shared between connections, so it gets
//! the writer only.
//!
//! Durability: with WAL (the default) commits use `synchronous=NORMAL`: a commit is written
//! into the WAL file before `set` returns, but not fsynced. That survives the death of the
//! process (`kill -9`, panic, OOM kill) because the data is in the OS page cache; only an OS
//! crash or power loss can lose the last transactions, and never corrupts the file.
//! `disableWAL=true` uses the rollback journal with `synchronous=FULL` (fsync on every commit).
//!
//! Writes run in `BEGIN IMMEDIATE` transactions: the write lock is taken up front, so the ETag
//! check and the write see the same state even when other processes share the file, and a lock
//! conflict waits `busyTimeout` instead of failing half-way.
//!
//! Rows are Dapr's: JSON values are stored as text, anything else base64 with `is_binary`;
//! `expiration_time` is UTC text (`YYYY-MM-DD HH:MM:SS.SSS`), compared as text with the current
//! time, which also orders correctly against the second-precision timestamps Dapr writes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tandem_components::query::{Querier, Query, QueryResponse, evaluate};
use tandem_components::state::{
    BulkGetItem, DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest, StateFeature,
    StateItem, StateStore, TTL_EXPIRE_TIME_KEY, TransactionOperation, TransactionRequest,
    Transactional, check_etag, format_expire_time, ttl_from_metadata,
};
use tandem_components::{BoxError, Error, Metadata, Result};
use time::format_description::BorrowedFormatItem;
use time::macros::{datetime, format_description};
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::metadata::SqliteMetadata;

/// Reader connections of a file database. Reads are short; a few cover two cores with room for
/// a slow disk.
const READERS: usize = 4;
/// Prepared statements kept per connection (the store uses fewer than ten).
const STATEMENT_CACHE: usize = 16;

/// The `state.sqlite` component (also registered as `state.sqlite3`).
///
/// Built with [`SqliteStateStore::build`]; features `ETAG` and `TTL`, plus transactions.
/// Dropping it stops its cleanup task and closes the database once in-flight operations end.
pub struct SqliteStateStore {
    inner: Arc<Inner>,
    cleanup: Option<JoinHandle<()>>,
}

impl fmt::Debug for SqliteStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStateStore")
            .field("table", &self.inner.sql.table)
            .field("in_memory", &self.inner.readers.is_none())
            .finish_non_exhaustive()
    }
}

impl Drop for SqliteStateStore {
    fn drop(&mut self) {
        if let Some(task) = self.cleanup.take() {
            task.abort();
        }
    }
}

impl SqliteStateStore {
    /// Decodes the metadata (see [`SqliteMetadata`]), opens the database, sets the journal
    /// mode, creates the tables when missing and starts the cleanup task when
    /// `cleanupInterval` is set. Everything happens within `timeout`.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = SqliteMetadata::from_metadata(metadata)?;
        let timeout = settings.timeout;
        let cleanup_every = settings.cleanup_interval;
        let sql = Sql::new(&settings.table_name, &settings.metadata_table_name);
        let opening = tokio::task::spawn_blocking(move || open_all(&settings));
        let (writer, readers) = match tokio::time::timeout(timeout, opening).await {
            Ok(joined) => joined.map_err(Error::backend)??,
            Err(_) => return Err(timed_out("open", timeout)),
        };
        let readers = (!readers.is_empty()).then(|| Readers {
            permits: Arc::new(Semaphore::new(readers.len())),
            idle: Arc::new(Mutex::new(readers)),
        });
        let inner = Arc::new(Inner {
            sql,
            timeout,
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            readers,
        });
        tracing::debug!(component = %metadata.name, "state.sqlite ready");
        let cleanup = cleanup_every.map(|every| {
            tracing::info!(component = %metadata.name, ?every, "state.sqlite: expired rows are deleted periodically");
            tokio::spawn(cleanup_loop(Arc::clone(&inner), every))
        });
        Ok(Self { inner, cleanup })
    }
}

#[async_trait]
impl StateStore for SqliteStateStore {
    fn features(&self) -> &'static [StateFeature] {
        &[StateFeature::ETag, StateFeature::Ttl]
    }

    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>> {
        let key = req.key.to_owned();
        self.inner
            .read("get", move |conn, sql| {
                read_item(conn, sql, &key, &Now::new().text)
            })
            .await
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        self.inner
            .write("set", move |conn, sql| {
                let tx = immediate(conn)?;
                apply_set(&tx, sql, &req, &Now::new())?;
                tx.commit().db()
            })
            .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        self.inner
            .write("delete", move |conn, sql| {
                let tx = immediate(conn)?;
                apply_delete(&tx, sql, &req, &Now::new())?;
                tx.commit().db()
            })
            .await
    }

    /// All keys in one blocking call and one read transaction (a consistent snapshot).
    async fn bulk_get(
        &self,
        keys: &[String],
        _metadata: &RequestMetadata,
    ) -> Result<Vec<BulkGetItem>> {
        let keys = keys.to_vec();
        self.inner
            .read("bulk get", move |conn, sql| {
                let tx = conn.unchecked_transaction().db()?;
                let now = Now::new();
                let items = keys
                    .into_iter()
                    .map(|key| {
                        let (item, error) = match read_item(&tx, sql, &key, &now.text) {
                            Ok(item) => (item, None),
                            Err(err) => (None, Some(err.to_string())),
                        };
                        BulkGetItem { key, item, error }
                    })
                    .collect();
                Ok(items)
            })
            .await
    }

    /// One transaction and one commit for the batch, with the contract's semantics: writes
    /// apply in order and stop at the first error, the ones before it stay.
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<()> {
        self.inner
            .write("bulk set", move |conn, sql| {
                let tx = immediate(conn)?;
                let now = Now::new();
                let outcome = reqs
                    .iter()
                    .try_for_each(|req| apply_set(&tx, sql, req, &now));
                let committed = tx.commit().db();
                outcome.and(committed)
            })
            .await
    }

    /// Like [`Self::bulk_set`]: one commit, stops at the first error, earlier deletes stay.
    async fn bulk_delete(&self, reqs: Vec<DeleteRequest>) -> Result<()> {
        self.inner
            .write("bulk delete", move |conn, sql| {
                let tx = immediate(conn)?;
                let now = Now::new();
                let outcome = reqs
                    .iter()
                    .try_for_each(|req| apply_delete(&tx, sql, req, &now));
                let committed = tx.commit().db();
                outcome.and(committed)
            })
            .await
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    fn querier(&self) -> Option<&dyn Querier> {
        Some(self)
    }

    async fn ping(&self) -> Result<()> {
        self.inner
            .read("ping", |conn, _| {
                conn.query_row("SELECT 1", [], |_| Ok(())).db()
            })
            .await
    }
}

/// Queries scan the JSON rows under the app's key prefix on a reader connection and filter,
/// sort and paginate them in process ([`tandem_components::query::evaluate`]).
#[async_trait]
impl Querier for SqliteStateStore {
    async fn query(&self, query: &Query, _metadata: &RequestMetadata) -> Result<QueryResponse> {
        let prefix = query.key_prefix.clone();
        let rows = self
            .inner
            .read("query", move |conn, sql| {
                let mut stmt = conn.prepare_cached(&sql.scan).db()?;
                let upper = format!("{prefix}\u{10FFFF}");
                let mut rows = stmt.query(params![prefix, upper, Now::new().text]).db()?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().db()? {
                    let key: String = row.get(0).db()?;
                    let value = Bytes::copy_from_slice(row.get_ref(1).db()?.as_bytes().db()?);
                    let etag: String = row.get(2).db()?;
                    out.push((key, value, Some(ETag::from(etag))));
                }
                Ok(out)
            })
            .await?;
        evaluate(query, rows)
    }
}

#[async_trait]
impl Transactional for SqliteStateStore {
    async fn multi(&self, req: TransactionRequest) -> Result<()> {
        self.inner
            .write("transaction", move |conn, sql| {
                // Dropping `tx` on any error rolls every operation back.
                let tx = immediate(conn)?;
                let now = Now::new();
                for op in &req.operations {
                    match op {
                        TransactionOperation::Upsert(set) => apply_set(&tx, sql, set, &now)?,
                        TransactionOperation::Delete(del) => apply_delete(&tx, sql, del, &now)?,
                    }
                }
                tx.commit().db()
            })
            .await
    }
}

/// What the store and its cleanup task share.
struct Inner {
    sql: Sql,
    timeout: Duration,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    /// `None` for an in-memory database: everything goes through the writer.
    readers: Option<Readers>,
}

struct Readers {
    /// As many permits as connections, so a holder of a permit always finds one idle.
    permits: Arc<Semaphore>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

/// A reader connection checked out of the pool; returns itself when dropped, which happens on
/// the blocking thread once the work is done, even when the caller stopped waiting.
struct ReadLease {
    conn: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(&self.idle).push(conn);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The vector is only pushed to and popped from; a panic cannot leave it inconsistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Runs `work` on the writer connection in the blocking pool, within `timeout` (waiting for
    /// the writer included). On timeout the work still finishes in the background (SQLite
    /// cannot be abandoned mid-statement) and its outcome is unknown to the caller, as with any
    /// database client.
    async fn write<T, F>(self: &Arc<Self>, op: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Sql) -> Result<T> + Send + 'static,
    {
        let this = Arc::clone(self);
        let run = async move {
            let mut conn = Arc::clone(&this.writer).lock_owned().await;
            tokio::task::spawn_blocking(move || work(&mut conn, &this.sql))
                .await
                .map_err(Error::backend)?
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(op, self.timeout)),
        }
    }

    /// Runs `work` on a reader connection (the writer for in-memory databases), like
    /// [`Inner::write`].
    async fn read<T, F>(self: &Arc<Self>, op: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Sql) -> Result<T> + Send + 'static,
    {
        let Some(readers) = &self.readers else {
            return self.write(op, move |conn, sql| work(conn, sql)).await;
        };
        let this = Arc::clone(self);
        let permits = Arc::clone(&readers.permits);
        let idle = Arc::clone(&readers.idle);
        let run = async move {
            let permit = permits.acquire_owned().await.map_err(Error::backend)?;
            let conn = lock(&idle).pop();
            let lease = ReadLease {
                conn,
                idle,
                _permit: permit,
            };
            tokio::task::spawn_blocking(move || {
                let conn = lease
                    .conn
                    .as_ref()
                    .ok_or_else(|| Error::backend("sqlite reader pool is empty"))?;
                work(conn, &this.sql)
            })
            .await
            .map_err(Error::backend)?
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(op, self.timeout)),
        }
    }

    /// Deletes expired rows, unless another process sharing the file did so less than ~an
    /// interval ago (Dapr's `last-cleanup-<table>` row in the metadata table). Returns the number
    /// of rows removed, `None` when skipped.
    async fn cleanup(self: &Arc<Self>, every: Duration) -> Result<Option<usize>> {
        // A little slack so that jitter of our own ticker never skips a round.
        let min_gap_ms = every.as_secs_f64() * 900.0;
        self.write("cleanup", move |conn, sql| {
            let tx = immediate(conn)?;
            let now = Now::new();
            let claimed = tx
                .prepare_cached(&sql.cleanup_claim)
                .db()?
                .execute(params![sql.cleanup_key, now.text, min_gap_ms])
                .db()?;
            if claimed == 0 {
                return Ok(None);
            }
            let removed = tx
                .prepare_cached(&sql.cleanup_delete)
                .db()?
                .execute(params![now.text])
                .db()?;
            tx.commit().db()?;
            Ok(Some(removed))
        })
        .await
    }
}

/// The periodic cleanup, started only when the user set `cleanupInterval`.
async fn cleanup_loop(inner: Arc<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match inner.cleanup(every).await {
            Ok(Some(removed)) => {
                tracing::debug!(table = %inner.sql.table, removed, "state.sqlite: expired rows deleted");
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(table = %inner.sql.table, error = %err, "state.sqlite: deleting expired rows failed");
            }
        }
    }
}

/// The statements, with the (validated) table names interpolated once.
struct Sql {
    table: String,
    get: String,
    live_etag: String,
    upsert: String,
    delete: String,
    scan: String,
    cleanup_key: String,
    cleanup_claim: String,
    cleanup_delete: String,
    schema: String,
}

impl Sql {
    fn new(table: &str, meta: &str) -> Self {
        const LIVE: &str = "(expiration_time IS NULL OR expiration_time > ?2)";
        Self {
            table: table.to_owned(),
            get: format!(
                "SELECT value, is_binary, etag, expiration_time FROM {table} WHERE key = ?1 AND {LIVE}"
            ),
            live_etag: format!("SELECT etag FROM {table} WHERE key = ?1 AND {LIVE}"),
            upsert: format!(
                "INSERT INTO {table} (key, value, is_binary, etag, expiration_time, update_time) \
                 VALUES (?1, ?2, ?3, ?4, ?5, CURRENT_TIMESTAMP) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 is_binary = excluded.is_binary, etag = excluded.etag, \
                 expiration_time = excluded.expiration_time, update_time = excluded.update_time"
            ),
            delete: format!("DELETE FROM {table} WHERE key = ?1"),
            // JSON rows whose key starts with ?1 (range scan on the primary key).
            scan: format!(
                "SELECT key, value, etag FROM {table} WHERE key >= ?1 AND key < ?2 \
                 AND is_binary = 0 AND (expiration_time IS NULL OR expiration_time > ?3)"
            ),
            cleanup_key: format!("last-cleanup-{table}"),
            cleanup_claim: format!(
                "INSERT INTO {meta} (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value \
                 WHERE julianday({meta}.value) IS NULL \
                 OR (julianday(excluded.value) - julianday({meta}.value)) * 86400000.0 >= ?3"
            ),
            cleanup_delete: format!(
                "DELETE FROM {table} WHERE expiration_time IS NOT NULL AND expiration_time <= ?1"
            ),
            // Dapr's schema (components-contrib state/sqlite migrations), created when missing.
            // `migrations` = 1 tells Dapr's own migrator the state table already exists, so
            // daprd can open a file Tandem created.
            schema: format!(
                "CREATE TABLE IF NOT EXISTS {meta} (
                    key TEXT NOT NULL PRIMARY KEY,
                    value TEXT NOT NULL
                );
                CREATE TABLE IF NOT EXISTS {table} (
                    key TEXT NOT NULL PRIMARY KEY,
                    value TEXT NOT NULL,
                    is_binary BOOLEAN NOT NULL,
                    etag TEXT NOT NULL,
                    expiration_time TIMESTAMP DEFAULT NULL,
                    update_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
                );
                CREATE INDEX IF NOT EXISTS idx_{table}_expiration_time ON {table} (expiration_time);
                INSERT OR IGNORE INTO {meta} (key, value) VALUES ('migrations', '1');"
            ),
        }
    }
}

/// Opens the writer (and the readers for a file database), sets the journal mode and creates
/// the schema.
fn open_all(settings: &SqliteMetadata) -> Result<(Connection, Vec<Connection>)> {
    let in_memory = settings.is_in_memory();
    let mut writer = open_connection(settings).context("opening the database")?;
    if !in_memory {
        let wanted = if settings.disable_wal {
            "DELETE"
        } else {
            "WAL"
        };
        let mode: String = writer
            .pragma_update_and_check(None, "journal_mode", wanted, |row| row.get(0))
            .context("setting the journal mode")?;
        if !mode.eq_ignore_ascii_case(wanted) {
            // For example WAL on a filesystem without shared memory, or leaving WAL while
            // another process has the file open. The database still works, with that mode.
            tracing::warn!(wanted, actual = %mode, "state.sqlite: journal mode not applied");
        }
    }
    let tx = immediate(&mut writer).context("creating the tables")?;
    let sql = Sql::new(&settings.table_name, &settings.metadata_table_name);
    tx.execute_batch(&sql.schema)
        .context("creating the tables")?;
    tx.commit().context("creating the tables")?;

    let mut readers = Vec::new();
    if !in_memory {
        for _ in 0..READERS {
            let reader = open_connection(settings).context("opening the database")?;
            reader
                .pragma_update(None, "query_only", true)
                .context("opening the database")?;
            readers.push(reader);
        }
    }
    Ok((writer, readers))
}

fn open_connection(settings: &SqliteMetadata) -> rusqlite::Result<Connection> {
    // The default flags include SQLITE_OPEN_URI, so `file:` DSNs are honoured; parameters
    // SQLite does not know (such as the Go driver's `_pragma=`) are ignored by SQLite itself.
    let conn = Connection::open_with_flags(&settings.connection_string, OpenFlags::default())?;
    conn.busy_timeout(settings.busy_timeout)?;
    // NORMAL is durable against process crashes in WAL mode (see the module doc); the
    // rollback journal needs FULL for the same guarantee.
    let synchronous = if settings.disable_wal {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn immediate(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .db()
}

/// The ETag of the live (present and not expired) row for `key`.
fn live_etag(conn: &Connection, sql: &Sql, key: &str, now: &str) -> Result<Option<ETag>> {
    let mut stmt = conn.prepare_cached(&sql.live_etag).db()?;
    let mut rows = stmt.query(params![key, now]).db()?;
    match rows.next().db()? {
        Some(row) => Ok(Some(ETag::from(row.get::<_, String>(0).db()?))),
        None => Ok(None),
    }
}

fn read_item(conn: &Connection, sql: &Sql, key: &str, now: &str) -> Result<Option<StateItem>> {
    let mut stmt = conn.prepare_cached(&sql.get).db()?;
    let mut rows = stmt.query(params![key, now]).db()?;
    let Some(row) = rows.next().db()? else {
        return Ok(None);
    };
    let is_binary: bool = row.get(1).db()?;
    let stored = row.get_ref(0).db()?.as_bytes().db()?;
    let value = if is_binary {
        Bytes::from(BASE64.decode(stored).db()?)
    } else {
        Bytes::copy_from_slice(stored)
    };
    let etag: String = row.get(2).db()?;
    let mut metadata = HashMap::new();
    let expires = row.get_ref(3).db()?.as_str_or_null().ok().flatten();
    if let Some(at) = expires.and_then(parse_stamp) {
        metadata.insert(TTL_EXPIRE_TIME_KEY.to_owned(), format_expire_time(at));
    }
    Ok(Some(StateItem {
        value,
        etag: Some(ETag::from(etag)),
        metadata,
    }))
}

/// A write inside an open transaction, with the in-memory store's concurrency rules.
fn apply_set(conn: &Connection, sql: &Sql, req: &SetRequest, now: &Now) -> Result<()> {
    let expires = ttl_from_metadata(&req.metadata)?.map(|ttl| now.plus(ttl));
    let current = live_etag(conn, sql, &req.key, &now.text)?;
    check_etag(current.as_ref(), req.etag.as_ref(), req.options.concurrency)?;
    let (value, is_binary) = encode_value(&req.value);
    let etag = ETag::random();
    conn.prepare_cached(&sql.upsert)
        .db()?
        .execute(params![req.key, value, is_binary, etag.as_str(), expires])
        .db()?;
    Ok(())
}

/// A delete inside an open transaction: with an ETag it must match the live row; without one
/// it always succeeds.
fn apply_delete(conn: &Connection, sql: &Sql, req: &DeleteRequest, now: &Now) -> Result<()> {
    if req.etag.is_some() {
        let current = live_etag(conn, sql, &req.key, &now.text)?;
        check_etag(current.as_ref(), req.etag.as_ref(), req.options.concurrency)?;
    }
    conn.prepare_cached(&sql.delete)
        .db()?
        .execute(params![req.key])
        .db()?;
    Ok(())
}

/// JSON text is stored as is (readable with `sqlite3`, and what Dapr stores); anything else,
/// including text that is not JSON, as base64 so that every byte round-trips.
fn encode_value(value: &[u8]) -> (Cow<'_, str>, bool) {
    if let Ok(text) = std::str::from_utf8(value)
        && serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
    {
        return (Cow::Borrowed(text), false);
    }
    (Cow::Owned(BASE64.encode(value)), true)
}

/// The current time, taken once per operation.
struct Now {
    at: OffsetDateTime,
    text: String,
}

const STAMP: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]");
/// Accepts SQLite's `CURRENT_TIMESTAMP` form (what Dapr writes) and any fraction.
const STAMP_IN: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]");
/// Expiry times are clamped here: beyond it the text format would need more digits.
const LATEST: OffsetDateTime = datetime!(9999-12-31 23:59:59.999 UTC);

impl Now {
    fn new() -> Self {
        let at = OffsetDateTime::now_utc();
        Self {
            text: stamp(at),
            at,
        }
    }

    /// The expiry text of an item written now with `ttl`.
    fn plus(&self, ttl: Duration) -> String {
        let at = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| self.at.checked_add(ttl))
            .map_or(LATEST, |at| at.min(LATEST));
        stamp(at)
    }
}

fn stamp(at: OffsetDateTime) -> String {
    at.format(STAMP).unwrap_or_default()
}

fn parse_stamp(text: &str) -> Option<SystemTime> {
    PrimitiveDateTime::parse(text.trim(), STAMP_IN)
        .ok()
        .map(|at| SystemTime::from(at.assume_utc()))
}

fn timed_out(op: &'static str, after: Duration) -> Error {
    Error::backend(format!("sqlite {op} timed out after {after:?}"))
}

/// Converts backend errors into [`Error::Backend`].
trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T, E: Into<BoxError>> Db<T> for std::result::Result<T, E> {
    fn db(self) -> Result<T> {
        self.map_err(Error::backend)
    }
}

/// Adds what was being done to a backend error, keeping it as the source.
trait Context<T> {
    fn context(self, what: &'static str) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &'static str) -> Result<T> {
        self.map_err(|err| {
            Error::backend(ContextError {
                what,
                source: err.into(),
            })
        })
    }
}

#[derive(Debug)]
struct ContextError {
    what: &'static str,
    source: BoxError,
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state.sqlite: {}: {}", self.what, self.source)
    }
}

impl std::error::Error for ContextError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Command, Stdio};

    use tandem_components::state::{Concurrency, StateOptions};

    use super::*;

    /// Set in the child process of `survives_kill_9` only.
    const KILL_CHILD_DB: &str = "TANDEM_SQLITE_KILL_CHILD_DB";

    fn file_meta(path: &Path) -> Metadata {
        Metadata::new("statestore", "test")
            .with("connectionString", path.to_str().expect("utf-8 temp path"))
    }

    fn set_req(key: &str, value: &[u8]) -> SetRequest {
        SetRequest {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(value),
            ..Default::default()
        }
    }

    async fn get(store: &SqliteStateStore, key: &str) -> Option<StateItem> {
        let meta = RequestMetadata::new();
        store
            .get(GetRequest {
                key,
                consistency: Default::default(),
                metadata: &meta,
            })
            .await
            .expect("get")
    }

    /// A row as stored, read with a connection of its own.
    fn raw_row(path: &Path, key: &str) -> Option<(String, bool, String, Option<String>)> {
        let conn = Connection::open(path).expect("open");
        conn.query_row(
            "SELECT value, is_binary, etag, expiration_time FROM state WHERE key = ?1",
            [key],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .ok()
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_reopen_with_value_etag_and_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStateStore::build(&file_meta(&path)).await.unwrap();
        store.set(set_req("plain", br#"{"n":1}"#)).await.unwrap();
        let mut with_ttl = set_req("ttl", b"\"t\"");
        with_ttl
            .metadata
            .insert("ttlInSeconds".into(), "100".into());
        store.set(with_ttl).await.unwrap();
        let before = get(&store, "plain").await.unwrap();
        let ttl_before = get(&store, "ttl").await.unwrap();
        drop(store);

        let store = SqliteStateStore::build(&file_meta(&path)).await.unwrap();
        let after = get(&store, "plain").await.expect("value survives a reopen");
        assert_eq!(after.value.as_ref(), br#"{"n":1}"#);
        assert_eq!(after.etag, before.etag, "etag survives a reopen");
        assert!(after.metadata.is_empty(), "{:?}", after.metadata);

        let ttl_after = get(&store, "ttl").await.unwrap();
        assert_eq!(ttl_after.etag, ttl_before.etag);
        let expire = ttl_after
            .metadata
            .get(TTL_EXPIRE_TIME_KEY)
            .expect("ttlExpireTime reported");
        let expire = OffsetDateTime::parse(expire, &time::format_description::well_known::Rfc3339)
            .expect("ttlExpireTime is RFC 3339");
        let left = expire - OffsetDateTime::now_utc();
        assert!(
            left > time::Duration::seconds(90) && left <= time::Duration::seconds(100),
            "ttlExpireTime is about 100s ahead: {left}"
        );
    }

    /// A `set` that returned Ok is on disk even when the process is killed with SIGKILL right
    /// after: no destructor, no checkpoint, no close.
    #[test]
    fn survives_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("killed.db");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "state::tests::kill_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_DB, &path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the test binary");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut etag = None;
        for line in stdout.lines() {
            let line = line.unwrap();
            // libtest prints the test's name on the same line first.
            if let Some((_, rest)) = line.split_once("KILL-CHILD-READY ") {
                etag = Some(rest.trim().to_owned());
                break;
            }
        }
        let etag = etag.expect("the child wrote and reported its etag");
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SqliteStateStore::build(&file_meta(&path)).await.unwrap();
            let item = get(&store, "k")
                .await
                .expect("the acknowledged set survived");
            assert_eq!(item.value.as_ref(), b"\"v\"");
            assert_eq!(item.etag.unwrap().as_str(), etag);
            let tx_item = get(&store, "tx").await.expect("the transaction survived");
            assert_eq!(tx_item.value.as_ref(), &[0u8, 1, 2][..]);
        });
    }

    /// The writer half of `survives_kill_9`; does nothing unless started by it.
    #[tokio::test]
    #[ignore = "child process of survives_kill_9"]
    async fn kill_child() {
        let Some(path) = std::env::var_os(KILL_CHILD_DB) else {
            return;
        };
        let store = SqliteStateStore::build(&file_meta(Path::new(&path)))
            .await
            .unwrap();
        store.set(set_req("k", b"\"v\"")).await.unwrap();
        store
            .multi(TransactionRequest {
                operations: vec![TransactionOperation::Upsert(set_req("tx", &[0, 1, 2]))],
                metadata: Default::default(),
            })
            .await
            .unwrap();
        let etag = get(&store, "k").await.unwrap().etag.unwrap();
        println!("KILL-CHILD-READY {etag}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_as_text_everything_else_base64() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStateStore::build(&file_meta(&path)).await.unwrap();
        let binary: &[u8] = &[0, 159, 146, 150, 255, b'{'];
        let cases: [(&str, &[u8], bool); 5] = [
            ("json", br#" {"a": [1, "x"]} "#, false),
            ("json-string", "\"ünïcode\"".as_bytes(), false),
            ("binary", binary, true),
            ("not-json", b"hello", true),
            ("empty", b"", true),
        ];
        for (key, value, _) in cases {
            store.set(set_req(key, value)).await.unwrap();
        }
        for (key, value, is_binary) in cases {
            let (stored, flag, _, _) = raw_row(&path, key).expect("row exists");
            assert_eq!(flag, is_binary, "{key}: is_binary");
            let expected = if is_binary {
                BASE64.encode(value)
            } else {
                String::from_utf8(value.to_vec()).unwrap()
            };
            assert_eq!(stored, expected, "{key}: stored text");
            assert_eq!(
                get(&store, key).await.unwrap().value.as_ref(),
                value,
                "{key}"
            );
        }
    }

    #[tokio::test]
    async fn bad_metadata_is_refused_naming_the_field() {
        let err = SqliteStateStore::build(&Metadata::new("s", "app"))
            .await
            .unwrap_err();
        assert_eq!(field_of(err), "connectionString");

        let dir = tempfile::tempdir().unwrap();
        let meta = file_meta(&dir.path().join("x.db"));
        let err = SqliteStateStore::build(&meta.clone().with("tableName", "x; DROP TABLE y"))
            .await
            .unwrap_err();
        assert_eq!(field_of(err), "tableName");
        let err = SqliteStateStore::build(&meta.clone().with("timeout", "a while"))
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("a while"), "{err}");
        assert_eq!(field_of(err), "timeout");
        assert!(
            !dir.path().join("x.db").exists(),
            "metadata is checked before the file is created"
        );
    }

    #[tokio::test]
    async fn unopenable_file_is_a_backend_error() {
        let dir = tempfile::tempdir().unwrap();
        let meta = file_meta(&dir.path().join("no-such-dir").join("x.db"));
        match SqliteStateStore::build(&meta).await {
            Err(Error::Backend(err)) => {
                assert!(err.to_string().contains("opening the database"), "{err}")
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_memory_database_works_and_is_private() {
        let meta = Metadata::new("s", "app").with("connectionString", ":memory:");
        let store = SqliteStateStore::build(&meta).await.unwrap();
        assert!(store.inner.readers.is_none(), "one connection for :memory:");
        store.ping().await.unwrap();
        store.set(set_req("a", b"1")).await.unwrap();
        let etag = get(&store, "a").await.unwrap().etag;
        let mut update = set_req("a", b"2");
        update.etag = etag;
        store
            .multi(TransactionRequest {
                operations: vec![
                    TransactionOperation::Upsert(update),
                    TransactionOperation::Upsert(set_req("b", &[0xff])),
                ],
                metadata: Default::default(),
            })
            .await
            .unwrap();
        assert_eq!(get(&store, "a").await.unwrap().value.as_ref(), b"2");
        assert_eq!(get(&store, "b").await.unwrap().value.as_ref(), &[0xff][..]);
        let items = store
            .bulk_get(&["b".into(), "zz".into()], &RequestMetadata::new())
            .await
            .unwrap();
        assert_eq!(items[0].item.as_ref().unwrap().value.as_ref(), &[0xff][..]);
        assert!(items[1].item.is_none());

        let other = SqliteStateStore::build(&meta).await.unwrap();
        assert!(
            get(&other, "a").await.is_none(),
            "each :memory: store is its own"
        );
    }

    /// Rows the way Dapr writes them (second-precision `CURRENT_TIMESTAMP` text).
    fn insert_dapr_rows(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "INSERT INTO state (key, value, is_binary, etag, expiration_time) VALUES
                ('expired', '\"old\"', 0, 'e1', '2000-01-01 00:00:00'),
                ('future', '\"new\"', 0, 'e2', '9999-01-01 00:00:00'),
                ('forever', '\"always\"', 0, 'e3', NULL);",
        )
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cleanup_interval_deletes_expired_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let meta = file_meta(&path).with("cleanupInterval", "100ms");
        let store = SqliteStateStore::build(&meta).await.unwrap();
        insert_dapr_rows(&path);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while raw_row(&path, "expired").is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the expired row was not cleaned up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(raw_row(&path, "future").is_some(), "a live row stays");
        assert!(
            raw_row(&path, "forever").is_some(),
            "a row without ttl stays"
        );
        let conn = Connection::open(&path).unwrap();
        let last: String = conn
            .query_row(
                "SELECT value FROM metadata WHERE key = 'last-cleanup-state'",
                [],
                |row| row.get(0),
            )
            .expect("the cleanup is recorded in the metadata table");
        assert!(parse_stamp(&last).is_some(), "{last}");
        drop(store);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_cleanup_expired_rows_stay_but_are_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStateStore::build(&file_meta(&path)).await.unwrap();
        assert!(
            store.cleanup.is_none(),
            "no timer unless cleanupInterval is set"
        );
        insert_dapr_rows(&path);
        assert!(
            get(&store, "expired").await.is_none(),
            "expired rows are filtered"
        );
        let future = get(&store, "future").await.expect("live row");
        assert_eq!(future.value.as_ref(), b"\"new\"");
        assert_eq!(future.etag.unwrap().as_str(), "e2");
        assert!(
            future
                .metadata
                .get(TTL_EXPIRE_TIME_KEY)
                .is_some_and(|t| t.starts_with("9999-01-01T00:00:00")),
            "{:?}",
            future.metadata
        );
        // An expired row counts as absent for ETags and first-write.
        let mut stale = set_req("expired", b"1");
        stale.etag = Some(ETag::from("e1"));
        assert!(matches!(store.set(stale).await, Err(Error::ETagMismatch)));
        let mut first = set_req("expired", b"2");
        first.options = StateOptions {
            concurrency: Concurrency::FirstWrite,
            ..Default::default()
        };
        store
            .set(first)
            .await
            .expect("first-write over an expired row");
        assert_eq!(get(&store, "expired").await.unwrap().value.as_ref(), b"2");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(raw_row(&path, "future").is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_database_times_out_as_backend_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let meta = file_meta(&path)
            .with("timeout", "200ms")
            .with("busyTimeout", "1s");
        let store = SqliteStateStore::build(&meta).await.unwrap();
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let started = std::time::Instant::now();
        match store.set(set_req("k", b"1")).await {
            Err(Error::Backend(err)) => assert!(err.to_string().contains("timed out"), "{err}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(900));
        blocker.execute_batch("COMMIT").unwrap();
        store.set(set_req("k", b"2")).await.expect("works again");
        assert_eq!(get(&store, "k").await.unwrap().value.as_ref(), b"2");
    }

    #[test]
    fn wal_and_rollback_journal_modes() {
        let dir = tempfile::tempdir().unwrap();
        for (disable, mode, sync) in [(false, "wal", 1), (true, "delete", 2)] {
            let path = dir.path().join(format!("{mode}.db"));
            let meta = file_meta(&path).with("disableWAL", disable.to_string());
            let settings = SqliteMetadata::from_metadata(&meta).unwrap();
            let (writer, readers) = open_all(&settings).unwrap();
            assert_eq!(readers.len(), READERS);
            let actual: String = writer
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(actual, mode);
            let synchronous: i64 = writer
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(synchronous, sync, "synchronous for {mode}");
        }
    }

    #[test]
    fn custom_table_names_and_daprs_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let meta = file_meta(&path)
            .with("tableName", "app_state")
            .with("metadataTableName", "app_meta");
        let settings = SqliteMetadata::from_metadata(&meta).unwrap();
        drop(open_all(&settings).unwrap());
        // Opening again is harmless (tables exist).
        let (writer, _) = open_all(&settings).unwrap();
        let columns: Vec<(String, String, bool, Option<String>, bool)> = writer
            .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('app_state')")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected = [
            ("key", "TEXT", true, None, true),
            ("value", "TEXT", true, None, false),
            ("is_binary", "BOOLEAN", true, None, false),
            ("etag", "TEXT", true, None, false),
            ("expiration_time", "TIMESTAMP", false, Some("NULL"), false),
            (
                "update_time",
                "TIMESTAMP",
                true,
                Some("CURRENT_TIMESTAMP"),
                false,
            ),
        ];
        assert_eq!(columns.len(), expected.len());
        for (got, want) in columns.iter().zip(expected) {
            assert_eq!(
                (
                    got.0.as_str(),
                    got.1.as_str(),
                    got.2,
                    got.3.as_deref(),
                    got.4
                ),
                want
            );
        }
        let level: String = writer
            .query_row(
                "SELECT value FROM app_meta WHERE key = 'migrations'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(level, "1");
    }

    #[test]
    fn expiry_text_sorts_and_parses() {
        let now = Now::new();
        let soon = now.plus(Duration::from_millis(1500));
        assert!(soon > now.text, "{soon} after {}", now.text);
        assert_eq!(soon.len(), "2024-01-01 00:00:00.000".len());
        assert!(
            now.plus(Duration::from_secs(u64::MAX))
                .starts_with("9999-12-31 23:59:59")
        );
        let parsed = parse_stamp(&soon).unwrap();
        let ahead = parsed.duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_millis(1000) && ahead <= Duration::from_millis(1500));
        assert!(parse_stamp("2000-01-01 00:00:00").is_some(), "Dapr's form");
        assert!(parse_stamp("yesterday").is_none());
    }
}
