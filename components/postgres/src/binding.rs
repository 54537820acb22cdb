//! `bindings.postgresql` (alias `bindings.postgres`): an output binding running the app's SQL.
//!
//! Connection settings are the state store's (see [`PostgresMetadata`]): `connectionString`
//! (or the discrete `host`, `port`, `database`, `user`, `password`), `timeout` (default `20s`:
//! the longest wait for a pooled connection, connecting included), `maxConns`,
//! `connectionMaxIdleTime` and `queryExecMode`. Building does no I/O: the pool connects on
//! first use, calls fail with a backend error while the database is down, and the binding
//! recovers by itself. No tables are created.
//!
//! Operations, as in Dapr:
//!
//! - `exec`: runs request metadata `sql` with the positional parameters in `params` (a JSON
//!   array for `$1`, `$2`, …). The answer has no body and the metadata `rows-affected`.
//!   Without parameters the text is sent as a simple query, so it may hold several
//!   statements (`rows-affected` is then the last one's).
//! - `query`: runs one statement and answers a JSON array of rows, each an array of column
//!   values in column order; see `cells` for how each type is written (`numeric` keeps its
//!   scale, timestamps are RFC 3339 in UTC, `json`/`jsonb` are embedded, `bytea` is base64,
//!   `NULL` is `null`).
//! - `close`: closes the pool; later `exec` and `query` calls fail with
//!   `component is closed`.
//!
//! Both answer the metadata `operation`, `sql`, `start-time`, `end-time` and `duration`. A
//! missing `sql` fails with `required metadata not set: sql`, `params` that is not a JSON
//! array with `invalid metadata property params: …`, and a statement the server rejects with
//! `error executing query: ERROR: <message> (SQLSTATE <code>)`.
//!
//! Statements with parameters are prepared once per connection and reused
//! (`queryExecMode: cache_statement`, the default, up to 64 per connection beyond which they
//! are prepared for the call only); with `describe_exec`, `exec` or `simple_protocol` they go
//! as unnamed statements in one round trip, and then a JSON array parameter is sent as JSON
//! text rather than as an array literal (the placeholder's type is not known beforehand).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Object, Pool};
use serde_json::Value;
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::sql::{OPERATIONS, SqlRequest, SqlStatements, exec_or_query};
use tandem_components::{Error, Metadata, Result};
use tokio::task::JoinHandle;
use tokio_postgres::types::{Kind, ToSql, Type};
use tokio_postgres::{Row, SimpleQueryMessage, Statement};

use crate::cells::{RawCell, TextParam, write_cell};
use crate::db::{new_pool, pool_err, reap_idle};
use crate::metadata::{Layout, PostgresMetadata, QueryExecMode};

/// Statements cached per connection beyond which new ones are prepared for one call only.
const STATEMENT_CACHE_LIMIT: usize = 64;

/// The `bindings.postgresql` component (output only).
pub struct PostgresBinding {
    pool: Pool,
    cache: bool,
    closed: AtomicBool,
    reaper: Option<JoinHandle<()>>,
    component: String,
}

impl fmt::Debug for PostgresBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBinding")
            .field("component", &self.component)
            .field("cache", &self.cache)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresBinding {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.take() {
            reaper.abort();
        }
    }
}

impl PostgresBinding {
    /// Decodes the connection settings and creates the pool without connecting.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let md = PostgresMetadata::from_metadata(metadata, Layout::V1)?;
        let pool = new_pool(&md)?;
        let reaper = md
            .connection_max_idle_time
            .map(|max_idle| tokio::spawn(reap_idle(pool.clone(), max_idle)));
        Ok(Self {
            pool,
            cache: md.query_exec_mode == QueryExecMode::CacheStatement,
            closed: AtomicBool::new(false),
            reaper,
            component: metadata.name.clone(),
        })
    }

    async fn conn(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_err)
    }
}

#[async_trait]
impl SqlStatements for PostgresBinding {
    /// Runs `exec`: the rows affected.
    async fn exec(&self, req: &SqlRequest) -> Result<u64> {
        let conn = self.conn().await?;
        if req.params.is_empty() {
            let messages = conn.simple_query(&req.sql).await.map_err(query_err)?;
            let rows = messages
                .iter()
                .rev()
                .find_map(|m| match m {
                    SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(0);
            return Ok(rows);
        }
        match self.prepare(&conn, &req.sql).await? {
            Some(stmt) => {
                let params = params(&req.params, Some(stmt.params()));
                conn.execute(&stmt, &refs(&params)).await.map_err(query_err)
            }
            None => {
                let params = params(&req.params, None);
                conn.execute_typed(&req.sql, &typed(&params))
                    .await
                    .map_err(query_err)
            }
        }
    }

    /// Runs `query`: the rows as a JSON array of arrays.
    async fn query(&self, req: &SqlRequest) -> Result<Bytes> {
        let conn = self.conn().await?;
        let rows: Vec<Row> = match self.prepare(&conn, &req.sql).await? {
            Some(stmt) => {
                let params = params(&req.params, Some(stmt.params()));
                conn.query(&stmt, &refs(&params)).await.map_err(query_err)?
            }
            None => {
                let params = params(&req.params, None);
                conn.query_typed(&req.sql, &typed(&params))
                    .await
                    .map_err(query_err)?
            }
        };
        let mut out = String::from("[");
        for (r, row) in rows.iter().enumerate() {
            if r > 0 {
                out.push(',');
            }
            out.push('[');
            for (i, column) in row.columns().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let cell: Option<RawCell<'_>> = row.try_get(i).map_err(query_err)?;
                write_cell(&mut out, column.type_(), cell.map(|c| c.0)).map_err(|e| {
                    Error::backend(format!(
                        "error reading result column {}: {e}",
                        column.name()
                    ))
                })?;
            }
            out.push(']');
        }
        out.push(']');
        Ok(Bytes::from(out))
    }
}

impl PostgresBinding {
    /// The prepared statement for `sql` (cached on the connection while the cache has room),
    /// or `None` when statements go unnamed (`queryExecMode` other than the caching ones).
    async fn prepare(&self, conn: &Object, sql: &str) -> Result<Option<Statement>> {
        if !self.cache {
            return Ok(None);
        }
        let cache = &conn.statement_cache;
        let stmt = if cache.size() < STATEMENT_CACHE_LIMIT {
            conn.prepare_cached(sql).await
        } else {
            conn.prepare(sql).await
        };
        stmt.map(Some).map_err(query_err)
    }
}

/// The placeholder type given for unnamed statements: none, so the server infers it.
fn unspecified() -> Type {
    Type::new("unspecified".into(), 0, Kind::Pseudo, String::new())
}

fn params(values: &[Value], types: Option<&[Type]>) -> Vec<TextParam> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| TextParam::new(v, types.and_then(|t| t.get(i))))
        .collect()
}

fn refs(params: &[TextParam]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn typed(params: &[TextParam]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), unspecified()))
        .collect()
}

/// A failed statement, worded as Dapr's binding words it (pgx's form of server errors).
fn query_err(err: tokio_postgres::Error) -> Error {
    match err.as_db_error() {
        Some(db) => Error::backend(format!(
            "error executing query: {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        )),
        None => Error::backend(format!("error executing query: {err}")),
    }
}

#[async_trait]
impl OutputBinding for PostgresBinding {
    fn operations(&self) -> &'static [&'static str] {
        OPERATIONS
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        if req.operation == "close" {
            if !self.closed.swap(true, Ordering::AcqRel) {
                self.pool.close();
                tracing::debug!(component = %self.component, "bindings.postgresql closed");
            }
            return Ok(InvokeResponse::default());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::InvalidRequest("component is closed".into()));
        }
        exec_or_query(self, &req).await
    }
}
