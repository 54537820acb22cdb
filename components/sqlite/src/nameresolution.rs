//! `nameresolution.sqlite`: a shared SQLite file as the registry of running sidecars, for
//! service invocation on one machine without any other infrastructure.
//!
//! Every sidecar opens the same database file, writes one row for itself (registration id,
//! `host:port` of its internal listener, app-id, namespace, last heartbeat in Unix seconds) and
//! refreshes the heartbeat every `updateInterval`. A row whose heartbeat is older than three
//! intervals counts as dead and is not returned; rows older than `cleanupInterval` are deleted.
//! A graceful shutdown deletes the row at once. The layout is Dapr's (`hosts` table with
//! `registration_id`, `address`, `app_id`, `namespace`, `last_update`, a unique index on
//! `address`, and the `nr-migrations` key in the metadata table), so the file looks familiar;
//! interoperating with Go daprd through it is not a goal (daprd speaks gRPC on its internal
//! port, Tandem speaks HTTP).
//!
//! Threads: SQLite calls block, so each one runs on tokio's blocking pool (`spawn_blocking`)
//! under `timeout`. One connection serves the resolver: lookups are rare because the runtime
//! caches them, and heartbeats are one small write every few seconds.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tandem_components::nameresolution::{Instance, NameResolver, ResolveRequest};
use tandem_components::{Error, Metadata, Result};
use tokio::task::JoinHandle;

/// Dapr's default `updateInterval`.
pub const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_secs(5);
/// Dapr's default `timeout` for the name resolver (lower than the state store's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Dapr's default `busyTimeout` for the name resolver.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_millis(800);
/// Dapr's default `cleanupInterval`.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
/// How many missed heartbeats make an instance dead.
pub const MISSED_HEARTBEATS: u32 = 3;

/// The settings of `nameresolution.sqlite`, from the Configuration's
/// `spec.nameResolution.configuration` (Dapr's field names and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteNameResolutionMetadata {
    /// `connectionString` (required): the shared database file (created when missing, its
    /// folder is not), or a SQLite `file:` URI. `:memory:` works but only within one process.
    pub connection_string: String,
    /// `updateInterval` (default `5s`, at least `1s`): how often the heartbeat is written. An
    /// instance whose heartbeat is older than three intervals is considered dead.
    pub update_interval: Duration,
    /// `timeout` (default `1s`): how long one database operation may take.
    pub timeout: Duration,
    /// `busyTimeout` (default `800ms`): how long SQLite waits for a lock held by another
    /// sidecar sharing the file.
    pub busy_timeout: Duration,
    /// `tableName` (default `hosts`): the registry table. Letters, digits and underscores.
    pub table_name: String,
    /// `metadataTableName` (default `metadata`): the bookkeeping table. Same rules.
    pub metadata_table_name: String,
    /// `cleanupInterval` (default `1h`; `0` disables): rows whose heartbeat is older than this
    /// are deleted (when this sidecar registers, and then periodically).
    pub cleanup_interval: Option<Duration>,
    /// `disableWAL` (default `false`): use the rollback journal (network filesystems).
    pub disable_wal: bool,
}

impl SqliteNameResolutionMetadata {
    /// Decodes and validates the settings; errors name the field, never its value.
    pub fn from_metadata(metadata: &Metadata) -> Result<Self> {
        let connection_string = metadata.required("connectionString")?.trim().to_owned();
        let update_interval = duration(metadata, "updateInterval", DEFAULT_UPDATE_INTERVAL)?;
        if update_interval < Duration::from_secs(1) {
            return Err(Error::invalid_metadata(
                "updateInterval",
                "must be at least 1s",
            ));
        }
        let timeout = duration(metadata, "timeout", DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(Error::invalid_metadata(
                "timeout",
                "must be greater than zero",
            ));
        }
        let busy_timeout = duration(metadata, "busyTimeout", DEFAULT_BUSY_TIMEOUT)?;
        let cleanup = match metadata
            .get("cleanupInterval")
            .or(metadata.get("cleanupIntervalInSeconds"))
        {
            None => DEFAULT_CLEANUP_INTERVAL,
            Some(raw) => parse(raw, "cleanupInterval")?,
        };
        let table_name = identifier(metadata, "tableName", "hosts")?;
        let metadata_table_name = identifier(metadata, "metadataTableName", "metadata")?;
        if table_name.eq_ignore_ascii_case(&metadata_table_name) {
            return Err(Error::invalid_metadata(
                "metadataTableName",
                "must differ from tableName",
            ));
        }
        Ok(Self {
            connection_string,
            update_interval,
            timeout,
            busy_timeout,
            table_name,
            metadata_table_name,
            cleanup_interval: (!cleanup.is_zero()).then_some(cleanup),
            disable_wal: metadata.bool_or("disableWAL", false)?,
        })
    }

    fn is_in_memory(&self) -> bool {
        let cs = self.connection_string.as_str();
        cs == ":memory:"
            || cs.starts_with("file::memory:")
            || (cs.starts_with("file:") && cs.contains("mode=memory"))
    }

    /// Heartbeats older than this many seconds are dead.
    fn stale_after_secs(&self) -> i64 {
        i64::try_from((self.update_interval * MISSED_HEARTBEATS).as_secs()).unwrap_or(i64::MAX)
    }
}

fn parse(raw: &str, field: &str) -> Result<Duration> {
    tandem_components::metadata::parse_duration(raw)
        .map_err(|_| Error::invalid_metadata(field, "expected a duration such as 5s, 500ms or 1m"))
}

fn duration(metadata: &Metadata, field: &str, default: Duration) -> Result<Duration> {
    metadata
        .get(field)
        .map_or(Ok(default), |raw| parse(raw, field))
}

/// A table name: interpolated into SQL (identifiers cannot be bound), so restricted to a plain
/// identifier.
fn identifier(metadata: &Metadata, field: &str, default: &str) -> Result<String> {
    let name = metadata.get(field).unwrap_or(default).trim();
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 128 {
        return Err(Error::invalid_metadata(
            field,
            "must contain only letters, digits and underscores, and not start with a digit",
        ));
    }
    Ok(name.to_owned())
}

/// The `nameresolution.sqlite` resolver. Dropping it stops its heartbeat (the row then expires
/// after three intervals); [`NameResolver::unregister`] removes the row at once.
pub struct SqliteNameResolver {
    inner: Arc<Inner>,
    registration: Mutex<Option<Registration>>,
}

struct Inner {
    settings: SqliteNameResolutionMetadata,
    conn: Mutex<Connection>,
}

struct Registration {
    id: String,
    address: String,
    heartbeat: JoinHandle<()>,
}

impl fmt::Debug for SqliteNameResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteNameResolver")
            .field("table", &self.inner.settings.table_name)
            .finish_non_exhaustive()
    }
}

impl Drop for SqliteNameResolver {
    fn drop(&mut self) {
        if let Some(r) = lock(&self.registration).take() {
            r.heartbeat.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn db(e: rusqlite::Error) -> Error {
    Error::backend(e)
}

impl SqliteNameResolver {
    /// Decodes the settings (see [`SqliteNameResolutionMetadata`]), opens the database and
    /// creates the tables when missing, all within `timeout` (at least a few seconds for the
    /// first open, which may wait for another sidecar creating the same file).
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = SqliteNameResolutionMetadata::from_metadata(metadata)?;
        if settings.is_in_memory() {
            tracing::warn!(
                "name resolution uses an in-memory SQLite database: other sidecars cannot find this one"
            );
        }
        let open_timeout = settings.timeout.max(Duration::from_secs(5));
        let s = settings.clone();
        let opening = tokio::task::spawn_blocking(move || open(&s));
        let conn = match tokio::time::timeout(open_timeout, opening).await {
            Ok(joined) => joined.map_err(Error::backend)??,
            Err(_) => {
                return Err(Error::backend(format!(
                    "opening the name-resolution database timed out after {open_timeout:?}"
                )));
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                conn: Mutex::new(conn),
            }),
            registration: Mutex::new(None),
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &SqliteNameResolutionMetadata {
        &self.inner.settings
    }
}

fn open(settings: &SqliteNameResolutionMetadata) -> Result<Connection> {
    let conn = Connection::open_with_flags(&settings.connection_string, OpenFlags::default())
        .map_err(db)?;
    conn.busy_timeout(settings.busy_timeout).map_err(db)?;
    if !settings.is_in_memory() {
        let wanted = if settings.disable_wal {
            "DELETE"
        } else {
            "WAL"
        };
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", wanted, |row| row.get(0))
            .map_err(db)?;
        // A heartbeat lost in an OS crash is rewritten five seconds later: NORMAL is plenty.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
    }
    let t = &settings.table_name;
    let m = &settings.metadata_table_name;
    let schema = format!(
        "CREATE TABLE IF NOT EXISTS {t} (
            registration_id TEXT NOT NULL PRIMARY KEY,
            address TEXT NOT NULL,
            app_id TEXT NOT NULL,
            namespace TEXT NOT NULL,
            last_update INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX IF NOT EXISTS {t}_address_idx ON {t} (address);
        CREATE INDEX IF NOT EXISTS {t}_last_update_idx ON {t} (last_update);
        CREATE INDEX IF NOT EXISTS {t}_app_id_idx ON {t} (app_id, namespace);
        CREATE TABLE IF NOT EXISTS {m} (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL);
        INSERT OR IGNORE INTO {m} (key, value) VALUES ('nr-migrations', '1');"
    );
    let mut conn = conn;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    tx.execute_batch(&schema).map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(conn)
}

impl Inner {
    /// Runs `f` on the connection on the blocking pool, under `timeout`.
    async fn run<T, F>(self: &Arc<Self>, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &SqliteNameResolutionMetadata) -> rusqlite::Result<T>
            + Send
            + 'static,
    {
        let me = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let conn = lock(&me.conn);
            f(&conn, &me.settings)
        });
        match tokio::time::timeout(self.settings.timeout, task).await {
            Ok(Ok(res)) => res.map_err(db),
            Ok(Err(join)) => Err(Error::backend(join)),
            Err(_) => Err(Error::backend(format!(
                "name resolution: {what} timed out after {:?}",
                self.settings.timeout
            ))),
        }
    }

    async fn upsert(self: &Arc<Self>, id: String, instance: Instance) -> Result<()> {
        self.run("register", move |conn, s| {
            let now = now_secs();
            conn.execute(
                &format!(
                    "REPLACE INTO {} (registration_id, address, app_id, namespace, last_update) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    s.table_name
                ),
                params![
                    id,
                    instance.address,
                    instance.app_id,
                    instance.namespace,
                    now
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Refreshes the heartbeat; `false` when the row is gone (deleted by someone else's
    /// cleanup after a long pause, or taken over by another registration of the address).
    async fn heartbeat(self: &Arc<Self>, id: String, address: String) -> Result<bool> {
        self.run("heartbeat", move |conn, s| {
            let n = conn.execute(
                &format!(
                    "UPDATE {} SET last_update = ?1 WHERE registration_id = ?2 AND address = ?3",
                    s.table_name
                ),
                params![now_secs(), id, address],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn cleanup(self: &Arc<Self>) -> Result<usize> {
        let Some(every) = self.settings.cleanup_interval else {
            return Ok(0);
        };
        let keep = i64::try_from(every.as_secs())
            .unwrap_or(i64::MAX)
            .max(self.settings.stale_after_secs());
        self.run("cleanup", move |conn, s| {
            conn.execute(
                &format!("DELETE FROM {} WHERE last_update < ?1", s.table_name),
                params![now_secs().saturating_sub(keep)],
            )
        })
        .await
    }
}

async fn heartbeat_loop(inner: Arc<Inner>, id: String, instance: Instance) {
    let every = inner.settings.update_interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cleanup = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        match inner.heartbeat(id.clone(), instance.address.clone()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(address = %instance.address, "name resolution: registration was lost; registering again");
                if let Err(e) = inner.upsert(id.clone(), instance.clone()).await {
                    tracing::warn!(error = %e, "name resolution: registering again failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "name resolution: heartbeat failed"),
        }
        if let Some(every) = inner.settings.cleanup_interval
            && last_cleanup.elapsed() >= every
        {
            last_cleanup = tokio::time::Instant::now();
            if let Err(e) = inner.cleanup().await {
                tracing::debug!(error = %e, "name resolution: cleanup failed");
            }
        }
    }
}

#[async_trait]
impl NameResolver for SqliteNameResolver {
    async fn register(&self, instance: &Instance) -> Result<()> {
        self.unregister().await?;
        let id = uuid::Uuid::new_v4().to_string();
        self.inner.upsert(id.clone(), instance.clone()).await?;
        if let Err(e) = self.inner.cleanup().await {
            tracing::debug!(error = %e, "name resolution: cleanup failed");
        }
        let heartbeat = tokio::spawn(heartbeat_loop(
            Arc::clone(&self.inner),
            id.clone(),
            instance.clone(),
        ));
        let previous = lock(&self.registration).replace(Registration {
            id,
            address: instance.address.clone(),
            heartbeat,
        });
        if let Some(p) = previous {
            p.heartbeat.abort();
        }
        tracing::info!(app_id = %instance.app_id, address = %instance.address, "registered in SQLite name resolution");
        Ok(())
    }

    async fn resolve(&self, request: ResolveRequest<'_>) -> Result<Vec<String>> {
        let app_id = request.app_id.to_owned();
        let namespace = request.namespace.to_owned();
        self.inner
            .run("resolve", move |conn, s| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT address FROM {} \
                     WHERE app_id = ?1 AND namespace = ?2 AND last_update > ?3 \
                     ORDER BY address",
                    s.table_name
                ))?;
                let since = now_secs().saturating_sub(s.stale_after_secs());
                let rows = stmt.query_map(params![app_id, namespace, since], |r| r.get(0))?;
                rows.collect()
            })
            .await
    }

    async fn unregister(&self) -> Result<()> {
        let Some(r) = lock(&self.registration).take() else {
            return Ok(());
        };
        r.heartbeat.abort();
        self.inner
            .run("unregister", move |conn, s| {
                conn.execute(
                    &format!(
                        "DELETE FROM {} WHERE registration_id = ?1 AND address = ?2",
                        s.table_name
                    ),
                    params![r.id, r.address],
                )?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_validation() {
        let m = Metadata::new("nr", "a").with("connectionString", "x.db");
        let s = SqliteNameResolutionMetadata::from_metadata(&m).unwrap();
        assert_eq!(s.update_interval, DEFAULT_UPDATE_INTERVAL);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.table_name, "hosts");
        assert_eq!(s.cleanup_interval, Some(DEFAULT_CLEANUP_INTERVAL));
        assert_eq!(s.stale_after_secs(), 15);

        let bad = |k: &str, v: &str| {
            let m = Metadata::new("nr", "a")
                .with("connectionString", "x.db")
                .with(k, v);
            match SqliteNameResolutionMetadata::from_metadata(&m) {
                Err(Error::InvalidMetadata { field, .. }) => field,
                other => panic!("{k}={v}: {other:?}"),
            }
        };
        assert_eq!(bad("updateInterval", "500ms"), "updateInterval");
        assert_eq!(bad("updateInterval", "soon"), "updateInterval");
        assert_eq!(bad("tableName", "drop table"), "tableName");
        assert_eq!(bad("metadataTableName", "HOSTS"), "metadataTableName");
        assert!(SqliteNameResolutionMetadata::from_metadata(&Metadata::new("nr", "a")).is_err());

        let m = Metadata::new("nr", "a")
            .with("connectionString", "x.db")
            .with("cleanupInterval", "0");
        assert_eq!(
            SqliteNameResolutionMetadata::from_metadata(&m)
                .unwrap()
                .cleanup_interval,
            None
        );
    }
}
