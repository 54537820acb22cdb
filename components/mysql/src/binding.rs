//! `bindings.mysql`: an output binding running the app's SQL on MySQL or MariaDB.
//!
//! Operations, as in Dapr:
//!
//! - `exec`: runs request metadata `sql` with the positional parameters in `params` (a JSON
//!   array for the `?` placeholders). The answer has no body and the metadata
//!   `rows-affected`. Without parameters the text goes as a plain query (several statements
//!   allowed; `rows-affected` is then the last one's), with parameters as a prepared
//!   statement.
//! - `query`: runs `sql` and answers a JSON array of rows, each an object keyed by column
//!   name; see `cells` for how each type is written (`DECIMAL` as a string, dates as RFC 3339,
//!   binary strings as base64, `NULL` columns left out). A query that returns no rows answers
//!   `null`, as Dapr's binding does.
//! - `close`: closes the pool; later `exec` and `query` calls fail with
//!   `component is closed`.
//!
//! Both answer the metadata `operation`, `sql`, `start-time`, `end-time` and `duration`. A
//! missing `sql` fails with `required metadata not set: sql`, `params` that is not a JSON
//! array with `invalid metadata property params: …`, and a statement the server rejects with
//! `error executing query: Error <code> (<state>): <message>`.
//!
//! Building does no I/O: the pool connects on first use, calls fail with a backend error
//! while the server is down, and the binding recovers by itself when it returns.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mysql_async::prelude::{Protocol, Queryable};
use mysql_async::{
    Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, QueryResult, Row,
};
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::metadata::parse_duration;
use tandem_components::sql::{OPERATIONS, SqlRequest, SqlStatements, exec_or_query};
use tandem_components::{Error, Metadata, Result};

use crate::cells::{param, write_row};
use crate::conn::{check_ca_file, connect_opts, session_init};
use crate::dsn::Dsn;
use crate::metadata::{TlsMode, tls_mode};

/// Connections kept open while idle when `maxIdleConns` is not set (Go's default).
pub const DEFAULT_MAX_IDLE_CONNS: usize = 2;
/// The most connections when `maxOpenConns` is not set.
pub const DEFAULT_MAX_OPEN_CONNS: usize = 100;
/// How long idle connections beyond `maxIdleConns` stay open when `connMaxIdleTime` is not set.
pub const DEFAULT_CONN_MAX_IDLE_TIME: Duration = Duration::from_secs(60);
/// How long getting a connection may take when the DSN sets no `timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The typed settings of a `bindings.mysql` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MySqlBindingMetadata {
    /// `url` (required): the server as a Go MySQL driver DSN
    /// (`user:password@tcp(host:3306)/dbname?allowNativePasswords=true`; `unix(/path)` for a
    /// socket) or a `mysql://user:password@host:3306/dbname` URL. The database named there is
    /// the connection's default database. Driver parameters Tandem honours: `tls` (`true`,
    /// `false`, `skip-verify`, `custom`), `timeout` (connect timeout),
    /// `allowCleartextPasswords`; Go-only ones (`parseTime`, `loc`, `charset`, …) are
    /// accepted and ignored (times are always read as UTC); any other `name=value` is set as a
    /// session variable on every new connection.
    pub url: Dsn,
    /// `pemPath`: a PEM file with the CA certificate(s) the server's certificate must chain
    /// to. Setting it turns TLS on unless the DSN says `tls=false` (Dapr also wants
    /// `tls=custom` in the DSN; Tandem accepts it and does not require it).
    pub pem_path: Option<PathBuf>,
    /// The TLS mode that follows from `pemPath` and the DSN's `tls` parameter.
    pub tls: TlsMode,
    /// `maxIdleConns` (default `2`): connections kept open while idle.
    pub max_idle_conns: usize,
    /// `maxOpenConns` (default `100`): the most connections open at once; calls beyond wait
    /// for a free one.
    pub max_open_conns: usize,
    /// `connMaxLifetime` (default: none): connections are closed this long after they were
    /// opened (whole seconds).
    pub conn_max_lifetime: Option<Duration>,
    /// `connMaxIdleTime` (default `60s`): idle connections beyond `maxIdleConns` are closed
    /// after this long.
    pub conn_max_idle_time: Duration,
}

impl MySqlBindingMetadata {
    /// Decodes and validates the settings; errors name the field, never its value.
    pub fn from_metadata(metadata: &Metadata) -> Result<Self> {
        let raw = metadata
            .get("url")
            .ok_or_else(|| Error::invalid_metadata("url", "missing MySql connection string"))?;
        let url = Dsn::parse(raw).map_err(|e| match e {
            Error::InvalidMetadata { reason, .. } => Error::invalid_metadata("url", reason),
            other => other,
        })?;
        let pem_path = metadata.get("pemPath").map(|p| PathBuf::from(p.trim()));
        let tls = tls_mode(&url, pem_path.as_ref())?;
        let count = |field: &str, default: usize| -> Result<usize> {
            match metadata.get(field) {
                None => Ok(default),
                Some(raw) => match raw.trim().parse::<i64>() {
                    Ok(n) if n > 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
                    Ok(_) => Ok(default),
                    Err(_) => Err(Error::invalid_metadata(field, "expected an integer")),
                },
            }
        };
        let duration = |field: &str| -> Result<Option<Duration>> {
            match metadata.get(field) {
                None => Ok(None),
                Some(raw) => parse_duration(raw)
                    .map(|d| Some(d).filter(|d| !d.is_zero()))
                    .map_err(|_| {
                        Error::invalid_metadata(field, "expected a duration such as 5m or 30s")
                    }),
            }
        };
        let max_open_conns = count("maxOpenConns", DEFAULT_MAX_OPEN_CONNS)?;
        let max_idle_conns = count("maxIdleConns", DEFAULT_MAX_IDLE_CONNS)?.min(max_open_conns);
        Ok(Self {
            url,
            pem_path,
            tls,
            max_idle_conns,
            max_open_conns,
            conn_max_lifetime: duration("connMaxLifetime")?,
            conn_max_idle_time: duration("connMaxIdleTime")?.unwrap_or(DEFAULT_CONN_MAX_IDLE_TIME),
        })
    }
}

/// The `bindings.mysql` component (output only).
pub struct MySqlBinding {
    pool: Pool,
    connect_timeout: Duration,
    closed: AtomicBool,
    component: String,
}

impl fmt::Debug for MySqlBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlBinding")
            .field("component", &self.component)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MySqlBinding {
    /// Decodes the metadata (see [`MySqlBindingMetadata`]), checks that a `pemPath` file holds
    /// a certificate, and creates the pool without connecting.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let md = MySqlBindingMetadata::from_metadata(metadata)?;
        if let TlsMode::CustomCa(path) = &md.tls {
            check_ca_file(path).await?;
        }
        let constraints =
            PoolConstraints::new(md.max_idle_conns, md.max_open_conns).ok_or_else(|| {
                Error::invalid_metadata("maxIdleConns", "must not exceed maxOpenConns")
            })?;
        let pool = PoolOpts::default()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(md.conn_max_idle_time)
            .with_abs_conn_ttl(md.conn_max_lifetime);
        let opts: Opts =
            OptsBuilder::from_opts(connect_opts(&md.url, &md.tls, session_init(&md.url), pool))
                .db_name(md.url.database.clone())
                .into();
        Ok(Self {
            pool: Pool::new(opts),
            connect_timeout: md.url.dial_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            closed: AtomicBool::new(false),
            component: metadata.name.clone(),
        })
    }

    async fn conn(&self) -> Result<Conn> {
        match tokio::time::timeout(self.connect_timeout, self.pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Error::backend(format!(
                "error connecting to the server: {}",
                go_error(&e)
            ))),
            Err(_) => Err(Error::backend(format!(
                "error connecting to the server: timed out after {:?}",
                self.connect_timeout
            ))),
        }
    }
}

#[async_trait]
impl SqlStatements for MySqlBinding {
    /// Runs `exec`: the rows affected.
    async fn exec(&self, req: &SqlRequest) -> Result<u64> {
        let mut conn = self.conn().await?;
        if req.params.is_empty() {
            conn.query_drop(&req.sql).await.map_err(query_err)?;
        } else {
            let params: Vec<_> = req.params.iter().map(param).collect();
            conn.exec_drop(&req.sql, Params::Positional(params))
                .await
                .map_err(query_err)?;
        }
        Ok(conn.affected_rows())
    }

    /// Runs `query`: the first result set as a JSON array of objects (`null` without rows).
    async fn query(&self, req: &SqlRequest) -> Result<Bytes> {
        let mut conn = self.conn().await?;
        let rows = if req.params.is_empty() {
            first_set(conn.query_iter(&req.sql).await.map_err(query_err)?).await?
        } else {
            let params: Vec<_> = req.params.iter().map(param).collect();
            first_set(
                conn.exec_iter(&req.sql, Params::Positional(params))
                    .await
                    .map_err(query_err)?,
            )
            .await?
        };
        if rows.is_empty() {
            return Ok(Bytes::from_static(b"null"));
        }
        let mut out = String::from("[");
        for (i, row) in rows.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let columns = row.columns();
            let values = row.unwrap();
            write_row(&mut out, &columns, &values).map_err(|e| {
                Error::backend(format!("error marshalling query result for query: {e}"))
            })?;
        }
        out.push(']');
        Ok(Bytes::from(out))
    }
}

/// The rows of the first result set; later ones are read and dropped.
async fn first_set<P: Protocol>(mut result: QueryResult<'_, 'static, P>) -> Result<Vec<Row>> {
    let rows: Vec<Row> = result.collect().await.map_err(query_err)?;
    result.drop_result().await.map_err(query_err)?;
    Ok(rows)
}

/// A driver error as Go's MySQL driver words it (`Error 1146 (42S02): Table … doesn't exist`).
fn go_error(err: &mysql_async::Error) -> String {
    match err {
        mysql_async::Error::Server(e) => format!("Error {} ({}): {}", e.code, e.state, e.message),
        other => other.to_string(),
    }
}

fn query_err(err: mysql_async::Error) -> Error {
    Error::backend(format!("error executing query: {}", go_error(&err)))
}

#[async_trait]
impl OutputBinding for MySqlBinding {
    fn operations(&self) -> &'static [&'static str] {
        OPERATIONS
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        if req.operation == "close" {
            if !self.closed.swap(true, Ordering::AcqRel) {
                let pool = self.pool.clone();
                let component = self.component.clone();
                tokio::spawn(async move {
                    if let Err(e) = pool.disconnect().await {
                        tracing::debug!(%component, error = %e, "bindings.mysql: closing the pool");
                    }
                });
            }
            return Ok(InvokeResponse::default());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::InvalidRequest("component is closed".into()));
        }
        exec_or_query(self, &req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Result<MySqlBindingMetadata> {
        let mut m = Metadata::new("db", "app");
        for (k, v) in pairs {
            m.insert(*k, *v);
        }
        MySqlBindingMetadata::from_metadata(&m)
    }

    const URL: &str = "root:secret@tcp(127.0.0.1:3306)/test?allowNativePasswords=true";

    #[test]
    fn settings() {
        let m = md(&[("url", URL)]).unwrap();
        assert_eq!(m.max_idle_conns, 2);
        assert_eq!(m.max_open_conns, 100);
        assert_eq!(m.conn_max_lifetime, None);
        assert_eq!(m.conn_max_idle_time, Duration::from_secs(60));
        assert_eq!(m.tls, TlsMode::Off);
        assert_eq!(m.url.database.as_deref(), Some("test"));

        let m = md(&[
            ("url", URL),
            ("maxIdleConns", "5"),
            ("maxOpenConns", "3"),
            ("connMaxLifetime", "1h"),
            ("connMaxIdleTime", "30s"),
            ("pemPath", "/etc/ca.pem"),
        ])
        .unwrap();
        assert_eq!((m.max_idle_conns, m.max_open_conns), (3, 3));
        assert_eq!(m.conn_max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(m.conn_max_idle_time, Duration::from_secs(30));
        assert_eq!(m.tls, TlsMode::CustomCa("/etc/ca.pem".into()));

        for (pairs, field) in [
            (&[][..], "url"),
            (&[("url", "nonsense(")][..], "url"),
            (
                &[("url", URL), ("maxOpenConns", "many")][..],
                "maxOpenConns",
            ),
            (
                &[("url", URL), ("connMaxLifetime", "soon")][..],
                "connMaxLifetime",
            ),
            (&[("url", "root@tcp(h:3306)/?tls=custom")][..], "pemPath"),
        ] {
            match md(pairs) {
                Err(Error::InvalidMetadata { field: f, reason }) => {
                    assert_eq!(f, field);
                    assert!(!reason.contains("secret"));
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
