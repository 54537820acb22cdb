//! `state.mysql`: the state store on MySQL or MariaDB, in Dapr's table layout.
//!
//! Connections: one `mysql_async` pool per component, created at build without connecting.
//! Every operation takes a pooled connection (idle ones are checked for a closed socket first
//! and replaced), so a server that is down makes calls fail with [`Error::Backend`] as soon as
//! the connect fails (within `timeoutInSeconds` at most), and a server that comes back is used
//! again without any restart. The schema and tables are created by the first operation that
//! reaches the server, and retried by every later one until that succeeds.
//!
//! Rows are Dapr's (components-contrib `state/mysql`): `value` is a JSON column holding JSON
//! values as they were given, and anything else as a JSON string of its base64 with
//! `isbinary = 1`, so arbitrary bytes round-trip and rows written by daprd read back the same.
//! Tables are qualified with `schemaName`, so connections need no default database.
//!
//! Concurrency: writes with an ETag are `UPDATE … WHERE eTag = ?` (no row ⇒ mismatch);
//! `first-write` without one is a plain `INSERT` whose duplicate-key error is the mismatch
//! (after removing the row if it has merely expired); other writes are an upsert. Expired rows
//! count as absent everywhere. Sessions run in UTC so that the TIMESTAMP columns mean the same
//! for every sidecar; `expiredate` is computed from the server's clock, rounded up to the next
//! whole second (the column has no fractions), so an item lives at least `ttlInSeconds`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool, PoolConstraints, PoolOpts, Transaction, TxOpts, Value};
use tandem_components::state::{
    BulkGetItem, Concurrency, DeleteRequest, ETag, GetRequest, RequestMetadata, SetRequest,
    StateFeature, StateItem, StateStore, TTL_EXPIRE_TIME_KEY, TransactionOperation,
    TransactionRequest, Transactional, format_expire_time, ttl_from_metadata,
};
use tandem_components::{Error, Metadata, Result};
use tokio::task::JoinHandle;

use crate::conn::{check_ca_file, connect_opts, session_init};
use crate::metadata::{MySqlMetadata, TlsMode};

/// The longest key the `id VARCHAR(255)` column holds, in characters (prefix included).
pub const MAX_KEY_CHARS: usize = 255;
/// Connections per component. Requests are short; this covers bursts of concurrent calls on
/// small machines without letting one sidecar take a server's connection budget.
const MAX_CONNECTIONS: usize = 16;
/// Idle connections above one are closed after this long.
const IDLE_TTL: Duration = Duration::from_secs(60);
/// The expired-row cleanup may take longer than an ordinary call (Dapr allows 10 minutes).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(600);
/// Keys per query of a bulk read (MySQL allows 65535 placeholders; this keeps statements
/// small while answering the usual bulk read in one query).
const BULK_GET_CHUNK: usize = 1000;

/// The `state.mysql` component.
///
/// Built with [`MySqlStateStore::build`]; features `ETAG` and `TTL`, plus transactions.
/// Dropping it stops its cleanup task; pooled connections close once in-flight operations end.
pub struct MySqlStateStore {
    inner: Arc<Inner>,
    cleanup: Option<JoinHandle<()>>,
}

impl fmt::Debug for MySqlStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlStateStore")
            .field("table", &self.inner.sql.table)
            .field("ready", &self.inner.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for MySqlStateStore {
    fn drop(&mut self) {
        if let Some(task) = self.cleanup.take() {
            task.abort();
        }
    }
}

impl MySqlStateStore {
    /// Decodes the metadata (see [`MySqlMetadata`]), checks that a `pemPath` file holds a
    /// certificate, creates the connection pool and starts the cleanup task. Nothing connects
    /// here: a server that is down does not fail the build, and the tables are created by the
    /// first operation that reaches it (the runtime's start-up `ping` normally does).
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = MySqlMetadata::from_metadata(metadata)?;
        if let TlsMode::CustomCa(path) = &settings.tls {
            check_ca_file(path).await?;
        }
        let inner = Arc::new(Inner {
            pool: Pool::new(client_opts(&settings)),
            sql: Sql::new(
                &settings.schema_name,
                &settings.table_name,
                &settings.metadata_table_name,
            ),
            timeout: settings.timeout,
            connect_timeout: settings.connection.dial_timeout,
            ready: AtomicBool::new(false),
            schema_lock: tokio::sync::Mutex::new(()),
        });
        let cleanup = settings.cleanup_interval.map(|every| {
            tracing::debug!(component = %metadata.name, ?every, "state.mysql: expired rows are deleted periodically");
            tokio::spawn(cleanup_loop(Arc::clone(&inner), every))
        });
        Ok(Self { inner, cleanup })
    }
}

/// The client options: the DSN's server, credentials and TLS, a bounded pool whose connections
/// keep their session (no reset on return, so prepared statements stay cached), UTC sessions.
fn client_opts(settings: &MySqlMetadata) -> Opts {
    let mut init = session_init(&settings.connection);
    init.push("SET time_zone = '+00:00'".to_owned());
    let constraints = PoolConstraints::new(1, MAX_CONNECTIONS).unwrap_or_default();
    let pool = PoolOpts::default()
        .with_constraints(constraints)
        .with_reset_connection(false)
        .with_inactive_connection_ttl(IDLE_TTL);
    connect_opts(&settings.connection, &settings.tls, init, pool)
}

#[async_trait]
impl StateStore for MySqlStateStore {
    fn features(&self) -> &'static [StateFeature] {
        &[StateFeature::ETag, StateFeature::Ttl]
    }

    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>> {
        let inner = &*self.inner;
        inner
            .within("get", async {
                let mut conn = inner.conn().await?;
                read_item(&mut conn, &inner.sql, req.key).await
            })
            .await
    }

    async fn set(&self, req: SetRequest) -> Result<()> {
        let inner = &*self.inner;
        inner
            .within("set", async {
                let mut conn = inner.conn().await?;
                apply_set(&mut conn, &inner.sql, &req).await
            })
            .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<()> {
        let inner = &*self.inner;
        inner
            .within("delete", async {
                let mut conn = inner.conn().await?;
                apply_delete(&mut conn, &inner.sql, &req).await
            })
            .await
    }

    /// One query for all the keys (per 1000), answered in the order asked.
    async fn bulk_get(
        &self,
        keys: &[String],
        _metadata: &RequestMetadata,
    ) -> Result<Vec<BulkGetItem>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &*self.inner;
        inner
            .within("bulk get", async {
                let mut conn = inner.conn().await?;
                let mut found = std::collections::HashMap::with_capacity(keys.len());
                for chunk in keys.chunks(BULK_GET_CHUNK) {
                    let stmt = inner.sql.bulk_get(chunk.len());
                    let params: Vec<Value> =
                        chunk.iter().map(|k| Value::from(k.as_str())).collect();
                    let rows: Vec<(String, Vec<u8>, bool, String, Option<i64>)> =
                        conn.exec(stmt, params).await.map_err(db("reading state"))?;
                    for (key, value, is_binary, etag, expires) in rows {
                        found.insert(key, to_item(value, is_binary, etag, expires));
                    }
                }
                let items = keys
                    .iter()
                    .map(|key| {
                        let (item, error) = match found.get(key) {
                            None => (None, None),
                            Some(Ok(item)) => (Some(item.clone()), None),
                            Some(Err(err)) => (None, Some(err.to_string())),
                        };
                        BulkGetItem {
                            key: key.clone(),
                            item,
                            error,
                        }
                    })
                    .collect();
                Ok(items)
            })
            .await
    }

    /// One connection for the batch; writes apply in order and stop at the first error, the
    /// ones before it stay (the contract's bulk semantics; use a transaction for all-or-none).
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<()> {
        let inner = &*self.inner;
        inner
            .within("bulk set", async {
                let mut conn = inner.conn().await?;
                for req in &reqs {
                    apply_set(&mut conn, &inner.sql, req).await?;
                }
                Ok(())
            })
            .await
    }

    /// Like [`Self::bulk_set`]: in order, stops at the first error, earlier deletes stay.
    async fn bulk_delete(&self, reqs: Vec<DeleteRequest>) -> Result<()> {
        let inner = &*self.inner;
        inner
            .within("bulk delete", async {
                let mut conn = inner.conn().await?;
                for req in &reqs {
                    apply_delete(&mut conn, &inner.sql, req).await?;
                }
                Ok(())
            })
            .await
    }

    fn transactional(&self) -> Option<&dyn Transactional> {
        Some(self)
    }

    /// Pings the server, creating the schema and tables first if no call has done so yet.
    async fn ping(&self) -> Result<()> {
        let inner = &*self.inner;
        inner
            .within("ping", async {
                let mut conn = inner.conn().await?;
                conn.ping().await.map_err(db("pinging the server"))
            })
            .await
    }
}

/// One SQL transaction: every operation applies, or (on the first error, ETag mismatches
/// included) none does.
#[async_trait]
impl Transactional for MySqlStateStore {
    async fn multi(&self, req: TransactionRequest) -> Result<()> {
        let inner = &*self.inner;
        inner
            .within("transaction", async {
                let mut conn = inner.conn().await?;
                let mut tx = conn
                    .start_transaction(TxOpts::default())
                    .await
                    .map_err(db("starting a transaction"))?;
                for op in &req.operations {
                    let applied = match op {
                        TransactionOperation::Upsert(set) => {
                            apply_set(&mut tx, &inner.sql, set).await
                        }
                        TransactionOperation::Delete(del) => {
                            apply_delete(&mut tx, &inner.sql, del).await
                        }
                    };
                    if let Err(err) = applied {
                        // Roll back now rather than when the connection is next used, so that
                        // row locks are released at once. A failure here leaves the rollback
                        // to the driver, which performs it before reusing the connection.
                        let _ = tx.rollback().await;
                        return Err(err);
                    }
                }
                tx.commit().await.map_err(db("committing the transaction"))
            })
            .await
    }
}

/// What the store and its cleanup task share.
struct Inner {
    pool: Pool,
    sql: Sql,
    timeout: Duration,
    /// The DSN's `timeout`: a tighter bound on getting a connection.
    connect_timeout: Option<Duration>,
    /// Whether the schema and tables are known to exist.
    ready: AtomicBool,
    /// Serialises the creation of the schema, so that concurrent first calls do it once.
    schema_lock: tokio::sync::Mutex<()>,
}

impl Inner {
    /// Runs `work` within the component's timeout. When the tables turn out to be missing
    /// (a database recreated empty while the sidecar ran), the next call creates them again.
    async fn within<T>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let result = bounded(op, self.timeout, work).await;
        if let Err(Error::Backend(err)) = &result {
            let missing = err
                .downcast_ref::<DbError>()
                .and_then(|e| server_code(&e.source))
                .is_some_and(|code| matches!(code, codes::NO_SUCH_TABLE | codes::UNKNOWN_DATABASE));
            if missing {
                self.ready.store(false, Ordering::Release);
            }
        }
        result
    }

    /// A pooled connection, after making sure the schema and tables exist.
    async fn conn(&self) -> Result<Conn> {
        let getting = self.pool.get_conn();
        let mut conn = match self.connect_timeout {
            Some(limit) => {
                bounded("connecting to the server", limit, async {
                    getting.await.map_err(db("connecting to the server"))
                })
                .await?
            }
            None => getting.await.map_err(db("connecting to the server"))?,
        };
        if !self.ready.load(Ordering::Acquire) {
            let _creating = self.schema_lock.lock().await;
            if !self.ready.load(Ordering::Acquire) {
                ensure_schema(&mut conn, &self.sql).await?;
                self.ready.store(true, Ordering::Release);
            }
        }
        Ok(conn)
    }

    /// Deletes expired rows, unless another sidecar sharing the metadata table did so less
    /// than an interval ago (Dapr's `last-cleanup` row, same query). Returns the number of rows
    /// removed, `None` when skipped.
    async fn cleanup(&self, every: Duration) -> Result<Option<u64>> {
        bounded("cleanup", CLEANUP_TIMEOUT.max(self.timeout), async {
            let mut conn = self.conn().await?;
            let mut tx = conn
                .start_transaction(TxOpts::default())
                .await
                .map_err(db("starting a transaction"))?;
            // Dapr subtracts 100 ms so that its own ticker's jitter never skips a round.
            let gap_ms = u64::try_from(every.as_millis().saturating_sub(100)).unwrap_or(u64::MAX);
            tx.exec_drop(&self.sql.cleanup_claim, (gap_ms,))
                .await
                .map_err(db("claiming the cleanup"))?;
            if tx.affected_rows() == 0 {
                tx.commit().await.map_err(db("committing the cleanup"))?;
                return Ok(None);
            }
            tx.query_drop(&self.sql.cleanup_delete)
                .await
                .map_err(db("deleting expired rows"))?;
            let removed = tx.affected_rows();
            tx.commit().await.map_err(db("committing the cleanup"))?;
            Ok(Some(removed))
        })
        .await
    }
}

/// Runs `work`, failing with a backend error once `limit` has passed.
async fn bounded<T>(
    op: &'static str,
    limit: Duration,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(Error::backend(format!(
            "state.mysql: {op} timed out after {limit:?}"
        ))),
    }
}

/// The periodic cleanup (`cleanupInterval`).
async fn cleanup_loop(inner: Arc<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match inner.cleanup(every).await {
            Ok(Some(removed)) => {
                tracing::debug!(table = %inner.sql.table, removed, "state.mysql: expired rows deleted");
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(table = %inner.sql.table, error = %err, "state.mysql: deleting expired rows failed");
            }
        }
    }
}

/// Creates what is missing: the schema, the state table (or its `expiredate` column, added by
/// Dapr 1.11), the metadata table. Existence is checked first, as Dapr does, so that an
/// account without CREATE privileges works with tables an administrator made.
async fn ensure_schema(conn: &mut Conn, sql: &Sql) -> Result<()> {
    let schema = sql.schema.as_str();
    let exists = |n: Option<i64>| n.unwrap_or(0) > 0;
    let found: Option<i64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?",
            (schema,),
        )
        .await
        .map_err(db("looking up the schema"))?;
    if !exists(found) {
        tracing::info!(schema, "state.mysql: creating the schema");
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS `{schema}` CHARACTER SET utf8mb4"
        ))
        .await
        .map_err(db("creating the schema"))?;
    }

    const TABLE_EXISTS: &str = "SELECT COUNT(*) FROM information_schema.tables \
                                WHERE table_schema = ? AND table_name = ?";
    let found: Option<i64> = conn
        .exec_first(TABLE_EXISTS, (schema, sql.table_name.as_str()))
        .await
        .map_err(db("looking up the state table"))?;
    if !exists(found) {
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(db("reading the server version"))?;
        let collation = key_collation(version.as_deref().unwrap_or_default());
        tracing::info!(table = %sql.table, "state.mysql: creating the state table");
        conn.query_drop(sql.create_table(collation))
            .await
            .map_err(db("creating the state table"))?;
    }
    let found: Option<i64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.columns \
             WHERE table_schema = ? AND table_name = ? AND column_name = 'expiredate'",
            (schema, sql.table_name.as_str()),
        )
        .await
        .map_err(db("looking up the expiredate column"))?;
    if !exists(found) {
        tracing::info!(table = %sql.table, "state.mysql: adding the expiredate column");
        conn.query_drop(format!(
            "ALTER TABLE {} ADD COLUMN expiredate TIMESTAMP NULL",
            sql.table
        ))
        .await
        .map_err(db("adding the expiredate column"))?;
        conn.query_drop(format!(
            "CREATE INDEX expiredate_idx ON {} (expiredate)",
            sql.table
        ))
        .await
        .map_err(db("indexing the expiredate column"))?;
    }

    let found: Option<i64> = conn
        .exec_first(TABLE_EXISTS, (schema, sql.metadata_table_name.as_str()))
        .await
        .map_err(db("looking up the metadata table"))?;
    if !exists(found) {
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             id VARCHAR(255) NOT NULL PRIMARY KEY, value TEXT NOT NULL) DEFAULT CHARSET=utf8mb4",
            sql.meta
        ))
        .await
        .map_err(db("creating the metadata table"))?;
    }
    Ok(())
}

/// A binary collation without trailing-space padding for the `id` column, so that keys are
/// compared exactly (`a`, `A` and `a ` are three keys), whatever the server's default
/// collation (often case-insensitive).
fn key_collation(version: &str) -> &'static str {
    if version.contains("MariaDB") {
        return "utf8mb4_nopad_bin";
    }
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major >= 8 {
        "utf8mb4_0900_bin"
    } else {
        "utf8mb4_bin"
    }
}

/// The statements, with the (validated) names interpolated once.
struct Sql {
    schema: String,
    table_name: String,
    metadata_table_name: String,
    /// `` `schema`.`table` ``
    table: String,
    /// `` `schema`.`metadata table` ``
    meta: String,
    get: String,
    bulk_get_prefix: String,
    upsert: String,
    insert: String,
    update_if_etag: String,
    delete_expired_key: String,
    delete: String,
    delete_if_etag: String,
    cleanup_claim: String,
    cleanup_delete: String,
}

/// A row is live when it has no expiry or its expiry is in the future.
const LIVE: &str = "(expiredate IS NULL OR expiredate > CURRENT_TIMESTAMP)";
/// The expiry of a write: the bound TTL (already rounded up), or NULL (arithmetic on NULL).
const EXPIRY: &str = "CURRENT_TIMESTAMP + INTERVAL ? SECOND";
/// The columns a read returns, in [`to_item`]'s order.
const READ_COLUMNS: &str =
    "value, isbinary, eTag, CAST(UNIX_TIMESTAMP(expiredate) AS SIGNED) AS expires";

impl Sql {
    fn new(schema: &str, table_name: &str, metadata_table_name: &str) -> Self {
        let table = format!("`{schema}`.`{table_name}`");
        let meta = format!("`{schema}`.`{metadata_table_name}`");
        Self {
            get: format!("SELECT {READ_COLUMNS} FROM {table} WHERE id = ? AND {LIVE}"),
            bulk_get_prefix: format!(
                "SELECT id, {READ_COLUMNS} FROM {table} WHERE {LIVE} AND id IN ("
            ),
            upsert: format!(
                "INSERT INTO {table} (id, value, isbinary, eTag, expiredate) \
                 VALUES (?, ?, ?, ?, {EXPIRY}) ON DUPLICATE KEY UPDATE \
                 value = VALUES(value), isbinary = VALUES(isbinary), eTag = VALUES(eTag), \
                 expiredate = VALUES(expiredate)"
            ),
            insert: format!(
                "INSERT INTO {table} (id, value, isbinary, eTag, expiredate) \
                 VALUES (?, ?, ?, ?, {EXPIRY})"
            ),
            update_if_etag: format!(
                "UPDATE {table} SET value = ?, isbinary = ?, eTag = ?, expiredate = {EXPIRY} \
                 WHERE id = ? AND eTag = ? AND {LIVE}"
            ),
            delete_expired_key: format!(
                "DELETE FROM {table} WHERE id = ? \
                 AND expiredate IS NOT NULL AND expiredate <= CURRENT_TIMESTAMP"
            ),
            delete: format!("DELETE FROM {table} WHERE id = ?"),
            delete_if_etag: format!("DELETE FROM {table} WHERE id = ? AND eTag = ? AND {LIVE}"),
            cleanup_claim: format!(
                "INSERT INTO {meta} (id, value) VALUES ('last-cleanup', CURRENT_TIMESTAMP) \
                 ON DUPLICATE KEY UPDATE value = IF(CURRENT_TIMESTAMP > \
                 DATE_ADD(value, INTERVAL ?*1000 MICROSECOND), CURRENT_TIMESTAMP, value)"
            ),
            cleanup_delete: format!(
                "DELETE FROM {table} WHERE expiredate IS NOT NULL \
                 AND expiredate <= CURRENT_TIMESTAMP"
            ),
            schema: schema.to_owned(),
            table_name: table_name.to_owned(),
            metadata_table_name: metadata_table_name.to_owned(),
            table,
            meta,
        }
    }

    /// Dapr's state table, with `id` compared exactly (see [`key_collation`]).
    fn create_table(&self, key_collation: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {key_collation} NOT NULL PRIMARY KEY,
                value JSON NOT NULL,
                isbinary BOOLEAN NOT NULL,
                insertDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                updateDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
                eTag VARCHAR(36) NOT NULL,
                expiredate TIMESTAMP NULL,
                INDEX expiredate_idx (expiredate)
            ) DEFAULT CHARSET=utf8mb4",
            self.table
        )
    }

    /// The bulk read for `n` keys.
    fn bulk_get(&self, n: usize) -> String {
        let mut stmt = String::with_capacity(self.bulk_get_prefix.len() + 2 * n + 1);
        stmt.push_str(&self.bulk_get_prefix);
        for i in 0..n {
            stmt.push_str(if i == 0 { "?" } else { ",?" });
        }
        stmt.push(')');
        stmt
    }
}

/// A connection or an open transaction on one: both run statements and report affected rows.
trait Session: Queryable {
    /// Rows changed by the last statement (matched-but-unchanged rows do not count).
    fn affected(&self) -> u64;
}

impl Session for Conn {
    fn affected(&self) -> u64 {
        self.affected_rows()
    }
}

impl Session for Transaction<'_> {
    fn affected(&self) -> u64 {
        self.affected_rows()
    }
}

/// Runs a statement and returns the number of rows it changed.
async fn exec<S: Session>(
    session: &mut S,
    stmt: &str,
    params: Vec<Value>,
) -> std::result::Result<u64, mysql_async::Error> {
    session.exec_drop(stmt, params).await?;
    Ok(session.affected())
}

async fn read_item(conn: &mut Conn, sql: &Sql, key: &str) -> Result<Option<StateItem>> {
    let row: Option<(Vec<u8>, bool, String, Option<i64>)> = conn
        .exec_first(&sql.get, (key,))
        .await
        .map_err(db("reading state"))?;
    row.map(|(value, is_binary, etag, expires)| to_item(value, is_binary, etag, expires))
        .transpose()
}

fn to_item(
    stored: Vec<u8>,
    is_binary: bool,
    etag: String,
    expires: Option<i64>,
) -> Result<StateItem> {
    let mut metadata = std::collections::HashMap::new();
    if let Some(secs) = expires.and_then(|s| u64::try_from(s).ok()) {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        metadata.insert(TTL_EXPIRE_TIME_KEY.to_owned(), format_expire_time(at));
    }
    Ok(StateItem {
        value: decode_value(stored, is_binary)?,
        etag: Some(ETag::from(etag)),
        metadata,
    })
}

/// Whether `value` can be stored as it is in the JSON column.
fn is_json(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .is_ok_and(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok())
}

/// The stored form of a non-JSON value: a JSON string holding its base64, as Dapr writes
/// (`json.Marshal` of the base64 text).
fn encode_binary(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len().div_ceil(3) * 4 + 2);
    out.push(b'"');
    out.extend_from_slice(BASE64.encode(value).as_bytes());
    out.push(b'"');
    out
}

fn decode_value(stored: Vec<u8>, is_binary: bool) -> Result<Bytes> {
    if !is_binary {
        return Ok(Bytes::from(stored));
    }
    let undecodable = || Error::backend("state.mysql: a binary value is not valid base64 JSON");
    // Base64 needs no JSON escapes, so the common case is the bare quoted text.
    let decoded = match stored.as_slice() {
        [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => BASE64.decode(inner),
        _ => {
            let text: String = serde_json::from_slice(&stored).map_err(|_| undecodable())?;
            BASE64.decode(text.trim())
        }
    };
    decoded.map(Bytes::from).map_err(|_| undecodable())
}

/// The outcome of a conditional statement.
enum Written {
    /// The row was written.
    Done,
    /// The ETag did not match, or `first-write` found a live row.
    Conflict,
}

/// A write with Dapr's concurrency rules, on a connection or inside a transaction.
async fn apply_set<S: Session>(session: &mut S, sql: &Sql, req: &SetRequest) -> Result<()> {
    let chars = req.key.chars().count();
    if chars > MAX_KEY_CHARS {
        return Err(Error::InvalidRequest(format!(
            "state.mysql keys are at most {MAX_KEY_CHARS} characters (key prefix included); \
             this key has {chars}"
        )));
    }
    // Whole seconds, rounded up so that the item lives at least its TTL.
    let ttl = ttl_from_metadata(&req.metadata)?.map(|ttl| ttl.as_secs().saturating_add(1));
    let json = is_json(&req.value);
    let written = match write(session, sql, req, ttl, json).await {
        // The server's JSON check is stricter than serde_json in places (MariaDB limits
        // nesting to 32 levels, for instance): such values are stored as binary instead.
        Err(err) if json && rejected_as_json(&err) => write(session, sql, req, ttl, false).await,
        other => other,
    };
    match written.map_err(db("writing state"))? {
        Written::Done => Ok(()),
        Written::Conflict => Err(Error::ETagMismatch),
    }
}

async fn write<S: Session>(
    session: &mut S,
    sql: &Sql,
    req: &SetRequest,
    ttl: Option<u64>,
    json: bool,
) -> std::result::Result<Written, mysql_async::Error> {
    let value = Value::Bytes(if json {
        req.value.to_vec()
    } else {
        encode_binary(&req.value)
    });
    let new_etag = Value::from(ETag::random().as_str());
    let key = Value::from(req.key.as_str());
    let is_binary = Value::from(!json);
    let expiry = Value::from(ttl);
    if let Some(expected) = &req.etag {
        // The column holds at most 36 ASCII characters (a UUID): anything else cannot match,
        // and comparing it could even fail on a table in a narrower character set.
        let expected = expected.as_str();
        if expected.len() > 36 || !expected.is_ascii() {
            return Ok(Written::Conflict);
        }
        let params = vec![
            value,
            is_binary,
            new_etag,
            expiry,
            key,
            Value::from(expected),
        ];
        let changed = exec(session, &sql.update_if_etag, params).await?;
        return Ok(if changed == 0 {
            Written::Conflict
        } else {
            Written::Done
        });
    }
    let params = vec![key, value, is_binary, new_etag, expiry];
    if req.options.concurrency == Concurrency::LastWrite {
        exec(session, &sql.upsert, params).await?;
        return Ok(Written::Done);
    }
    // first-write: only create.
    match exec(session, &sql.insert, params.clone()).await {
        Ok(_) => return Ok(Written::Done),
        Err(err) if !is_duplicate_key(&err) => return Err(err),
        Err(_) => {}
    }
    // The row may only have expired without having been cleaned up yet: then it is absent.
    let removed = exec(session, &sql.delete_expired_key, vec![params[0].clone()]).await?;
    if removed == 0 {
        return Ok(Written::Conflict);
    }
    match exec(session, &sql.insert, params).await {
        Ok(_) => Ok(Written::Done),
        Err(err) if is_duplicate_key(&err) => Ok(Written::Conflict),
        Err(err) => Err(err),
    }
}

/// A delete: with an ETag it must match the live row; without one it always succeeds.
async fn apply_delete<S: Session>(session: &mut S, sql: &Sql, req: &DeleteRequest) -> Result<()> {
    let key = Value::from(req.key.as_str());
    let Some(expected) = &req.etag else {
        exec(session, &sql.delete, vec![key])
            .await
            .map_err(db("deleting state"))?;
        return Ok(());
    };
    let expected = expected.as_str();
    if expected.len() > 36 || !expected.is_ascii() {
        return Err(Error::ETagMismatch);
    }
    let removed = exec(
        session,
        &sql.delete_if_etag,
        vec![key, Value::from(expected)],
    )
    .await
    .map_err(db("deleting state"))?;
    if removed == 0 {
        return Err(Error::ETagMismatch);
    }
    Ok(())
}

/// MySQL/MariaDB error codes the store reacts to.
mod codes {
    /// `ER_BAD_DB_ERROR` ("Unknown database").
    pub(super) const UNKNOWN_DATABASE: u16 = 1049;
    /// `ER_NO_SUCH_TABLE`.
    pub(super) const NO_SUCH_TABLE: u16 = 1146;
    /// `ER_DUP_ENTRY`.
    pub(super) const DUPLICATE_KEY: u16 = 1062;
    /// `ER_TRUNCATED_WRONG_VALUE_FOR_FIELD` ("Incorrect string value", a table in a narrower
    /// character set).
    pub(super) const INCORRECT_STRING: u16 = 1366;
    /// MySQL's `ER_INVALID_JSON_TEXT`.
    pub(super) const INVALID_JSON: u16 = 3140;
    /// MariaDB's `ER_CONSTRAINT_FAILED` (the JSON column's `JSON_VALID` check).
    pub(super) const CONSTRAINT_FAILED: u16 = 4025;
}

fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(server) => Some(server.code),
        _ => None,
    }
}

fn is_duplicate_key(err: &mysql_async::Error) -> bool {
    server_code(err) == Some(codes::DUPLICATE_KEY)
}

fn rejected_as_json(err: &mysql_async::Error) -> bool {
    matches!(
        server_code(err),
        Some(codes::INCORRECT_STRING | codes::INVALID_JSON | codes::CONSTRAINT_FAILED)
    )
}

/// A driver error with what the store was doing.
#[derive(Debug)]
struct DbError {
    /// What the store was doing, for the message.
    doing: &'static str,
    /// The driver's error (server errors carry their code).
    source: mysql_async::Error,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state.mysql: {} failed: {}", self.doing, self.source)
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn db(doing: &'static str) -> impl FnOnce(mysql_async::Error) -> Error {
    move |source| Error::backend(DbError { doing, source })
}

#[cfg(test)]
mod tests;
