//! The settings of `state.postgresql` (v1 and v2), decoded from a component's `spec.metadata`.
//!
//! Field names, aliases and defaults are Dapr's (components-contrib
//! `state/postgresql/{v1,v2}/metadata.yaml`), so an existing Dapr component YAML works unchanged.
//! Decoding does no I/O: a bad field is reported before any connection is attempted, and errors
//! name the field, never its value (connection strings carry passwords).

use std::fmt;
use std::time::Duration;

use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

use crate::conninfo::ConnParams;

/// Which of Dapr's two table layouts a component uses (`spec.version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `v1` (the default when `spec.version` is empty): JSONB values, `xmin` ETags, query API.
    V1,
    /// `v2`: BYTEA values, UUID ETags.
    V2,
}

/// How statements are sent (`queryExecMode`), as pgx names the modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryExecMode {
    /// `cache_statement` (the default) and `cache_describe`: every statement is prepared once
    /// per connection and reused (one round trip per call).
    #[default]
    CacheStatement,
    /// `describe_exec`, `exec` and `simple_protocol`: nothing is prepared by name; each call
    /// sends its statement as an unnamed one with typed parameters in a single round trip. This
    /// is what connection poolers such as PgBouncer in transaction mode need. Tandem never
    /// interpolates values into SQL text, so `simple_protocol` is served this way too.
    Unprepared,
}

/// The typed settings of a `state.postgresql` (alias `state.postgres`) component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from.
#[derive(Clone)]
pub struct PostgresMetadata {
    /// The table layout chosen by `spec.version` (not a metadata field).
    pub layout: Layout,
    /// `connectionString` (alias `url`; required unless `host` or `hostaddr` is set): where and
    /// as whom to connect, in libpq's keyword/value form
    /// (`host=localhost user=postgres password=example port=5432 database=dapr_test`) or as a
    /// URL (`postgres://user:pass@localhost:5432/dapr_test`). `database` and `dbname` are both
    /// accepted; pgx pool settings (`pool_max_conns`, …) are ignored; other unknown keywords
    /// are set as session parameters (`search_path=app`). The discrete fields `host`,
    /// `hostaddr`, `port`, `database`, `user` and `password` override the string's values.
    /// TLS is not supported by this build: `sslmode` may be `disable`, `allow` or `prefer`
    /// (the last two then connect without TLS). Without a user, the `USER` of the process is
    /// used; without a host, `localhost`.
    pub connection: tokio_postgres::Config,
    /// `timeout` (alias `timeoutInSeconds`, default `20s`, at least `1s`): the longest a single
    /// operation may take, waiting for a pooled connection and connecting included. Connecting
    /// alone is bounded by the connection string's `connect_timeout`, else by the smaller of
    /// `timeout` and 5 seconds, so calls fail promptly while the database is down.
    pub timeout: Duration,
    /// `tableName` (v1 only, default `state`): the state table, optionally schema-qualified
    /// (`public.state`). Letters, digits, `_` and `$` only; PostgreSQL folds it to lower case,
    /// as it does for Dapr. Created when missing.
    pub table_name: String,
    /// `tablePrefix` (v2 only, default empty): prepended to `state` to name the state table;
    /// may carry a schema (`public.`, `app.my_`).
    pub table_prefix: String,
    /// `metadataTableName` (default `dapr_metadata`, may be schema-qualified): the table
    /// holding migration levels and the time of the last expiry cleanup, shared with Dapr.
    pub metadata_table_name: String,
    /// `cleanupInterval` (alias `cleanupIntervalInSeconds`, default `1h`): how often expired
    /// rows (items saved with `ttlInSeconds`) are deleted in the background. `0` or a negative
    /// value disables the deletion; expired items are invisible to reads either way. Several
    /// sidecars sharing the database coordinate through the metadata table, so the deletion
    /// runs about once per interval in total. `None` when disabled.
    pub cleanup_interval: Option<Duration>,
    /// `maxConns` (default `0`): the most connections the component opens. `0` or a negative
    /// value means the greater of 4 and the number of CPUs.
    pub max_conns: usize,
    /// `connectionMaxIdleTime` (default unset): pooled connections unused for this long are
    /// closed. Unset keeps them open.
    pub connection_max_idle_time: Option<Duration>,
    /// `queryExecMode` (default `cache_statement`): `cache_statement`, `cache_describe`,
    /// `describe_exec`, `exec` or `simple_protocol`; see [`QueryExecMode`].
    pub query_exec_mode: QueryExecMode,
    /// `actorStateStore` (default `false`): whether actors keep their state here. Read by the
    /// runtime; validated here.
    pub actor_state_store: bool,
    /// `keyPrefix` (default `appid`): how the runtime prefixes keys (`appid`, `name`,
    /// `namespace`, `none` or a literal). Applied by the runtime, not by the component.
    pub key_prefix: Option<String>,
}

impl fmt::Debug for PostgresMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No connection details: they may hold a password.
        f.debug_struct("PostgresMetadata")
            .field("layout", &self.layout)
            .field("timeout", &self.timeout)
            .field("table_name", &self.table_name)
            .field("table_prefix", &self.table_prefix)
            .field("metadata_table_name", &self.metadata_table_name)
            .field("cleanup_interval", &self.cleanup_interval)
            .field("max_conns", &self.max_conns)
            .field("connection_max_idle_time", &self.connection_max_idle_time)
            .field("query_exec_mode", &self.query_exec_mode)
            .field("actor_state_store", &self.actor_state_store)
            .finish_non_exhaustive()
    }
}

/// Dapr's default for `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Dapr's default for `cleanupInterval`.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
/// Dapr's default for `tableName` (v1).
pub const DEFAULT_TABLE_NAME: &str = "state";
/// Dapr's default for `metadataTableName`.
pub const DEFAULT_METADATA_TABLE_NAME: &str = "dapr_metadata";
/// The longest connection attempt when the connection string sets no `connect_timeout`.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PostgresMetadata {
    /// Decodes and validates the settings for `layout`. Errors are [`Error::InvalidMetadata`]
    /// naming the field, never its value.
    pub fn from_metadata(metadata: &Metadata, layout: Layout) -> Result<Self> {
        let timeout = match first(metadata, &["timeout", "timeoutInSeconds"]) {
            None => DEFAULT_TIMEOUT,
            Some((field, raw)) => parse_duration(raw).map_err(|_| {
                Error::invalid_metadata(field, "expected a duration such as 20s, 500ms or 1m")
            })?,
        };
        if timeout < Duration::from_secs(1) {
            return Err(Error::invalid_metadata("timeout", "must be at least 1s"));
        }
        let connection = connection(metadata, timeout)?;
        let table_name = match layout {
            Layout::V1 => {
                let name = metadata
                    .get("tableName")
                    .unwrap_or(DEFAULT_TABLE_NAME)
                    .trim();
                check_table_name("tableName", name)?;
                name.to_owned()
            }
            Layout::V2 => DEFAULT_TABLE_NAME.to_owned(),
        };
        let table_prefix = match layout {
            Layout::V1 => String::new(),
            Layout::V2 => {
                let prefix = metadata.get("tablePrefix").unwrap_or_default().trim();
                check_table_name("tablePrefix", &format!("{prefix}state"))?;
                prefix.to_owned()
            }
        };
        let metadata_table_name = metadata
            .get("metadataTableName")
            .unwrap_or(DEFAULT_METADATA_TABLE_NAME)
            .trim()
            .to_owned();
        check_table_name("metadataTableName", &metadata_table_name)?;
        let state_table = match layout {
            Layout::V1 => table_name.clone(),
            Layout::V2 => format!("{table_prefix}state"),
        };
        if state_table.eq_ignore_ascii_case(&metadata_table_name) {
            return Err(Error::invalid_metadata(
                "metadataTableName",
                "must differ from the state table",
            ));
        }
        let cleanup_interval = cleanup_interval(metadata)?;
        let max_conns = match metadata.get("maxConns") {
            None => 0,
            Some(raw) => raw
                .trim()
                .parse::<i64>()
                .map_err(|_| Error::invalid_metadata("maxConns", "expected an integer"))?,
        };
        let max_conns = match usize::try_from(max_conns) {
            Ok(n) if n > 0 => n,
            _ => default_max_conns(),
        };
        let connection_max_idle_time = match metadata.get("connectionMaxIdleTime") {
            None => None,
            Some(raw) => Some(parse_duration(raw).map_err(|_| {
                Error::invalid_metadata(
                    "connectionMaxIdleTime",
                    "expected a duration such as 5m or 30s",
                )
            })?)
            .filter(|d| !d.is_zero()),
        };
        let query_exec_mode = match metadata.get("queryExecMode").map(str::trim) {
            None | Some("cache_statement" | "cache_describe") => QueryExecMode::CacheStatement,
            Some("describe_exec" | "exec" | "simple_protocol") => QueryExecMode::Unprepared,
            Some(_) => {
                return Err(Error::invalid_metadata(
                    "queryExecMode",
                    "expected cache_statement, cache_describe, describe_exec, exec or simple_protocol",
                ));
            }
        };
        let actor_state_store = metadata.bool_or("actorStateStore", false)?;
        let key_prefix = metadata.get("keyPrefix").map(str::to_owned);
        Ok(Self {
            layout,
            connection,
            timeout,
            table_name,
            table_prefix,
            metadata_table_name,
            cleanup_interval,
            max_conns,
            connection_max_idle_time,
            query_exec_mode,
            actor_state_store,
            key_prefix,
        })
    }

    /// The state table: `tableName` for v1, `<tablePrefix>state` for v2.
    pub fn state_table(&self) -> String {
        match self.layout {
            Layout::V1 => self.table_name.clone(),
            Layout::V2 => format!("{}state", self.table_prefix),
        }
    }

    /// How long one connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connection
            .get_connect_timeout()
            .copied()
            .unwrap_or(MAX_CONNECT_TIMEOUT)
    }
}

/// The first of `names` that is set, with the name it was found under.
fn first<'a>(metadata: &'a Metadata, names: &[&'static str]) -> Option<(&'static str, &'a str)> {
    names.iter().find_map(|n| metadata.get(n).map(|v| (*n, v)))
}

/// Max(4, CPUs), pgx's default pool size.
fn default_max_conns() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(4)
}

/// The connection string plus the discrete fields that override it.
fn connection(metadata: &Metadata, timeout: Duration) -> Result<tokio_postgres::Config> {
    let string = first(metadata, &["connectionString", "url"]).map(|(_, v)| v);
    let has_host = metadata.get("host").is_some() || metadata.get("hostaddr").is_some();
    if string.is_none() && !has_host {
        return Err(Error::invalid_metadata(
            "connectionString",
            "the field is required (or set host)",
        ));
    }
    let mut params = ConnParams::parse(string.unwrap_or_default())?;
    for (field, keyword) in [
        ("host", "host"),
        ("hostaddr", "hostaddr"),
        ("port", "port"),
        ("database", "dbname"),
        ("user", "user"),
        ("password", "password"),
    ] {
        if let Some(value) = metadata.get(field) {
            params.set(keyword, value.trim());
        }
    }
    if let Some(port) = params.get("port")
        && port
            .split(',')
            .any(|p| !p.is_empty() && p.trim().parse::<u16>().is_err())
    {
        let field = if metadata.get("port").is_some() {
            "port"
        } else {
            "connectionString"
        };
        return Err(Error::invalid_metadata(field, "expected a TCP port number"));
    }
    let default_user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres".to_owned());
    params.into_config(&default_user, timeout.min(MAX_CONNECT_TIMEOUT))
}

/// A table name interpolated into SQL (identifiers cannot be bound): an optional schema and a
/// name, each a plain unquoted identifier, so nothing can be injected.
fn check_table_name(field: &str, name: &str) -> Result<()> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(Error::invalid_metadata(
            field,
            "expected a table name, optionally prefixed by a schema name and a dot",
        ));
    }
    for part in parts {
        let mut chars = part.chars();
        let starts_well = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            return Err(Error::invalid_metadata(
                field,
                "names may contain only letters, digits, underscores and dollar signs, and must \
                 not start with a digit",
            ));
        }
        if part.len() > 63 {
            return Err(Error::invalid_metadata(
                field,
                "names must be at most 63 characters",
            ));
        }
    }
    Ok(())
}

/// `cleanupInterval`: Dapr disables the cleanup for `0` and any negative duration.
fn cleanup_interval(metadata: &Metadata) -> Result<Option<Duration>> {
    let Some((field, raw)) = first(metadata, &["cleanupInterval", "cleanupIntervalInSeconds"])
    else {
        return Ok(Some(DEFAULT_CLEANUP_INTERVAL));
    };
    let raw = raw.trim();
    let (negative, magnitude) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let interval = parse_duration(magnitude)
        .map_err(|_| Error::invalid_metadata(field, "expected a duration such as 10m or 1h"))?;
    Ok((!negative && !interval.is_zero()).then_some(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::new("statestore", "app").with(
            "connectionString",
            "host=localhost user=postgres password=s3cret database=test",
        )
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprs() {
        let md = PostgresMetadata::from_metadata(&meta(), Layout::V1).expect("valid");
        assert_eq!(md.timeout, Duration::from_secs(20));
        assert_eq!(md.table_name, "state");
        assert_eq!(md.state_table(), "state");
        assert_eq!(md.metadata_table_name, "dapr_metadata");
        assert_eq!(md.cleanup_interval, Some(Duration::from_secs(3600)));
        assert!(md.max_conns >= 4);
        assert_eq!(md.connection_max_idle_time, None);
        assert_eq!(md.query_exec_mode, QueryExecMode::CacheStatement);
        assert!(!md.actor_state_store);
        assert_eq!(md.connection.get_dbname(), Some("test"));
        assert_eq!(md.connect_timeout(), Duration::from_secs(5));
        let v2 = PostgresMetadata::from_metadata(&meta(), Layout::V2).expect("valid");
        assert_eq!(v2.table_prefix, "");
        assert_eq!(v2.state_table(), "state");
    }

    #[test]
    fn fields_and_aliases() {
        let m = Metadata::new("s", "app")
            .with("URL", "postgres://u@h/db")
            .with("timeoutInSeconds", "30")
            .with("tableName", "public.my_state")
            .with("tablePrefix", "app.t_")
            .with("metadataTableName", "public.meta")
            .with("cleanupIntervalInSeconds", "600")
            .with("maxConns", "7")
            .with("connectionMaxIdleTime", "5m")
            .with("queryExecMode", "simple_protocol")
            .with("actorStateStore", "true")
            .with("port", "6000")
            .with("password", "pw");
        let md = PostgresMetadata::from_metadata(&m, Layout::V1).expect("valid");
        assert_eq!(md.timeout, Duration::from_secs(30));
        assert_eq!(md.state_table(), "public.my_state");
        assert_eq!(md.metadata_table_name, "public.meta");
        assert_eq!(md.cleanup_interval, Some(Duration::from_secs(600)));
        assert_eq!(md.max_conns, 7);
        assert_eq!(md.connection_max_idle_time, Some(Duration::from_secs(300)));
        assert_eq!(md.query_exec_mode, QueryExecMode::Unprepared);
        assert!(md.actor_state_store);
        assert_eq!(md.connection.get_ports(), &[6000]);
        assert_eq!(md.connection.get_password(), Some(&b"pw"[..]));
        let v2 = PostgresMetadata::from_metadata(&m, Layout::V2).expect("valid");
        assert_eq!(v2.state_table(), "app.t_state");
    }

    #[test]
    fn discrete_fields_without_connection_string() {
        let m = Metadata::new("s", "app")
            .with("host", "127.0.0.1")
            .with("user", "postgres")
            .with("database", "test");
        let md = PostgresMetadata::from_metadata(&m, Layout::V2).expect("valid");
        assert_eq!(md.connection.get_user(), Some("postgres"));
        assert_eq!(md.connection.get_dbname(), Some("test"));
        let err =
            PostgresMetadata::from_metadata(&Metadata::new("s", "a"), Layout::V1).unwrap_err();
        assert_eq!(field_of(err), "connectionString");
    }

    #[test]
    fn cleanup_interval_zero_or_negative_disables() {
        for off in ["0", "0s", "-1", "-1h"] {
            let md =
                PostgresMetadata::from_metadata(&meta().with("cleanupInterval", off), Layout::V1)
                    .expect("valid");
            assert_eq!(md.cleanup_interval, None, "{off}");
        }
    }

    #[test]
    fn bad_values_name_the_field_and_never_echo_the_value() {
        let cases = [
            ("timeout", "hunter2"),
            ("timeout", "500ms"),
            ("tableName", "state; DROP TABLE hunter2"),
            ("tableName", "a.b.hunter2"),
            ("tableName", "1hunter2"),
            ("metadataTableName", "hunter2-x"),
            ("cleanupInterval", "hunter2"),
            ("maxConns", "hunter2"),
            ("connectionMaxIdleTime", "hunter2"),
            ("queryExecMode", "hunter2"),
            ("actorStateStore", "hunter2"),
            ("port", "hunter2"),
            ("connectionString", "host=h password='hunter2"),
            (
                "connectionString",
                "host=h sslmode=verify-full password=hunter2",
            ),
        ];
        for (field, value) in cases {
            let err = PostgresMetadata::from_metadata(&meta().with(field, value), Layout::V1)
                .unwrap_err();
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{field}: {text}");
            assert!(!text.contains("s3cret"), "{field}: {text}");
            assert_eq!(field_of(err), field, "{field}={value}");
        }
        let err = PostgresMetadata::from_metadata(&meta().with("tablePrefix", "x-"), Layout::V2)
            .unwrap_err();
        assert_eq!(field_of(err), "tablePrefix");
        let same = meta().with("tableName", "t").with("metadataTableName", "T");
        assert_eq!(
            field_of(PostgresMetadata::from_metadata(&same, Layout::V1).unwrap_err()),
            "metadataTableName"
        );
    }

    #[test]
    fn debug_hides_the_connection() {
        let md = PostgresMetadata::from_metadata(&meta(), Layout::V1).unwrap();
        assert!(!format!("{md:?}").contains("s3cret"));
    }
}
