//! What both layouts share: the connection pool, statement execution, the lazy schema set-up,
//! time limits, error mapping and the background tasks.
//!
//! Building a store does no I/O. The pool connects on first use; the first call that gets a
//! connection also creates or migrates the tables (see [`crate::migrations`]), guarded by a
//! once-cell that stays empty when that fails, so the next call tries again. While the
//! database is down, calls fail with [`Error::Backend`] as soon as the connection attempt does
//! (refused at once, or after the connect timeout) and never later than `timeout`; when it
//! comes back, the pool simply connects again.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tandem_components::{Error, Result};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use crate::metadata::{PostgresMetadata, QueryExecMode};
use crate::migrations::{self, Schema};

/// A parameter with its declared type: statements are prepared (or sent unnamed) with
/// explicit types, so the server never has to guess and no extra round trip is needed.
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Statements kept per connection beyond which query-API statements (whose text depends on
/// the query's shape) are no longer cached.
const QUERY_CACHE_LIMIT: usize = 64;

/// The pool, the settings and the readiness of one component.
pub(crate) struct Db {
    pool: Pool,
    pub(crate) timeout: Duration,
    cache: bool,
    schema: Schema,
    ready: OnceCell<()>,
    pub(crate) component: String,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("component", &self.component)
            .field("table", &self.schema.state_table())
            .field("ready", &self.ready.initialized())
            .finish_non_exhaustive()
    }
}

impl Db {
    /// A pool that connects lazily; no I/O happens here.
    pub(crate) fn new(component: &str, md: &PostgresMetadata) -> Result<Self> {
        Ok(Self {
            pool: new_pool(md)?,
            timeout: md.timeout,
            cache: md.query_exec_mode == QueryExecMode::CacheStatement,
            schema: Schema::from_metadata(md),
            ready: OnceCell::new(),
            component: component.to_owned(),
        })
    }

    /// Runs `work` within `timeout`; `op` names it in the error.
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::backend(format!(
                "postgresql {op} timed out after {:?}",
                self.timeout
            ))),
        }
    }

    /// A pooled connection on which the schema is known to be in place.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        let mut object = self.pool.get().await.map_err(pool_err)?;
        if !self.ready.initialized() {
            self.ready
                .get_or_try_init(|| async {
                    migrations::run(&mut object, &self.schema).await?;
                    tracing::info!(component = %self.component, table = %self.schema.state_table(), "state.postgresql: tables ready");
                    Ok::<(), Error>(())
                })
                .await?;
        }
        Ok(Conn {
            object,
            cache: self.cache,
        })
    }

    /// Deletes expired rows unless this or another sidecar did so less than an interval ago
    /// (Dapr's `last-cleanup…` row in the metadata table). Returns the rows deleted, `None`
    /// when skipped.
    pub(crate) async fn cleanup(&self, every: Duration) -> Result<Option<u64>> {
        self.timed("cleanup", async {
            let conn = self.conn().await?;
            let gap_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX) - 100;
            let claimed = conn
                .execute(&self.schema.cleanup_claim(), &[(&gap_ms, Type::INT8)])
                .await?;
            if claimed == 0 {
                return Ok(None);
            }
            let removed = conn.execute(&self.schema.cleanup_delete(), &[]).await?;
            Ok(Some(removed))
        })
        .await
    }
}

/// A pool that connects lazily (no I/O here), bounded by `maxConns`, whose waits and
/// connection attempts are bounded by `timeout` (connecting also by the connect timeout).
pub(crate) fn new_pool(md: &PostgresMetadata) -> Result<Pool> {
    let manager = Manager::from_config(
        md.connection.clone(),
        NoTls,
        ManagerConfig {
            // `is_closed` only: a connection the server or network dropped is noticed by its
            // connection task and discarded here.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let connect = md.connect_timeout().min(md.timeout);
    Pool::builder(manager)
        .max_size(md.max_conns)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(md.timeout))
        .create_timeout(Some(connect))
        .recycle_timeout(Some(connect))
        .build()
        .map_err(Error::backend)
}

/// Closes the pool's connections unused for longer than `max_idle`.
pub(crate) fn close_idle(pool: &Pool, max_idle: Duration) {
    pool.retain(|_, metrics| metrics.last_used() < max_idle);
}

/// Closes pooled connections unused for `connectionMaxIdleTime`, checking every half of it
/// (at least every second), so a connection lives at most 1.5 times that unused; runs until
/// aborted.
pub(crate) async fn reap_idle(pool: Pool, max_idle: Duration) {
    let every = (max_idle / 2).max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        close_idle(&pool, max_idle);
    }
}

/// A pooled connection plus the statement policy.
pub(crate) struct Conn {
    object: Object,
    cache: bool,
}

impl Conn {
    /// Starts a transaction; dropping it unfinished rolls back.
    pub(crate) async fn transaction(&mut self) -> Result<Tx<'_>> {
        let cache = self.cache.then(|| Arc::clone(&self.object.statement_cache));
        let tx = self.object.transaction().await.map_err(db_err)?;
        Ok(Tx { tx, cache })
    }

    /// The statement runner outside any transaction.
    pub(crate) fn session(&self) -> Session<'_> {
        Session {
            client: &self.object,
            cache: self.cache.then(|| &*self.object.statement_cache),
        }
    }

    /// See [`Session::query`].
    pub(crate) async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        self.session().query(sql, params).await
    }

    /// See [`Session::query_shaped`].
    pub(crate) async fn query_shaped(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        self.session().query_shaped(sql, params).await
    }

    /// See [`Session::execute`].
    pub(crate) async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        self.session().execute(sql, params).await
    }
}

/// An open transaction on a pooled connection.
pub(crate) struct Tx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    cache: Option<Arc<deadpool_postgres::StatementCache>>,
}

impl Tx<'_> {
    /// The statement runner inside the transaction.
    pub(crate) fn session(&self) -> Session<'_> {
        Session {
            client: self.tx.client(),
            cache: self.cache.as_deref(),
        }
    }

    /// Commits.
    pub(crate) async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(db_err)
    }
}

/// Runs statements on one connection (inside a transaction or not), prepared and cached per
/// connection, or unnamed when `queryExecMode` asks for that.
#[derive(Clone, Copy)]
pub(crate) struct Session<'a> {
    client: &'a tokio_postgres::Client,
    cache: Option<&'a deadpool_postgres::StatementCache>,
}

impl Session<'_> {
    async fn statement(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<tokio_postgres::Statement> {
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        match self.cache {
            Some(cache) => cache.prepare_typed(self.client, sql, &types).await,
            None => self.client.prepare_typed(sql, &types).await,
        }
        .map_err(db_err)
    }

    /// Runs a statement returning rows.
    pub(crate) async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        if self.cache.is_none() {
            return self.client.query_typed(sql, params).await.map_err(db_err);
        }
        let stmt = self.statement(sql, params).await?;
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        self.client.query(&stmt, &values).await.map_err(db_err)
    }

    /// Like [`Session::query`] for statements built per request (the query API): cached only
    /// while the connection's cache is small, so arbitrary query shapes cannot grow it
    /// without bound.
    pub(crate) async fn query_shaped(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        match self.cache {
            Some(cache) if cache.size() >= QUERY_CACHE_LIMIT => {
                Session {
                    client: self.client,
                    cache: None,
                }
                .query(sql, params)
                .await
            }
            _ => self.query(sql, params).await,
        }
    }

    /// Runs a statement, returning the number of rows it changed.
    pub(crate) async fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        if self.cache.is_none() {
            return self.client.execute_typed(sql, params).await.map_err(db_err);
        }
        let stmt = self.statement(sql, params).await?;
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
        self.client.execute(&stmt, &values).await.map_err(db_err)
    }
}

/// A driver error as a backend error (its text names no metadata value).
pub(crate) fn db_err(err: tokio_postgres::Error) -> Error {
    Error::backend(err)
}

pub(crate) fn pool_err(err: deadpool_postgres::PoolError) -> Error {
    Error::backend(err)
}

/// Truncates to whole seconds, as Dapr reports `ttlExpireTime` (RFC 3339 without fractions).
pub(crate) fn whole_seconds(at: SystemTime) -> SystemTime {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => at,
    }
}

/// The background tasks of a store: the expiry cleanup and the idle-connection reaper. They
/// stop when the store is dropped.
#[derive(Debug, Default)]
pub(crate) struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts what the settings ask for.
    pub(crate) fn start(db: &Arc<Db>, md: &PostgresMetadata) -> Self {
        let mut tasks = Vec::new();
        if let Some(every) = md.cleanup_interval {
            tasks.push(tokio::spawn(cleanup_loop(Arc::clone(db), every)));
        }
        if let Some(max_idle) = md.connection_max_idle_time {
            tasks.push(tokio::spawn(reap_idle(db.pool.clone(), max_idle)));
        }
        Self { tasks }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The periodic deletion of expired rows, as Dapr's garbage collector does it.
async fn cleanup_loop(db: Arc<Db>, every: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match db.cleanup(every).await {
            Ok(Some(removed)) => {
                tracing::debug!(component = %db.component, removed, "state.postgresql: expired rows deleted");
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(component = %db.component, error = %err, "state.postgresql: deleting expired rows failed");
            }
        }
    }
}
