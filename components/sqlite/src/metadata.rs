//! The settings of `state.sqlite`, decoded from a component's `spec.metadata`.
//!
//! Field names and defaults are Dapr's (components-contrib `state/sqlite/metadata.yaml`), so an
//! existing Dapr component YAML works unchanged. Decoding does no I/O: a bad field is reported
//! before any file is opened.

use std::time::Duration;

use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

/// The typed settings of a `state.sqlite` (alias `state.sqlite3`) component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteMetadata {
    /// `connectionString` (required): where the database lives. Either a file path
    /// (`data.db`, `/var/lib/tandem/state.db`; the file is created when missing, its folder is
    /// not), a SQLite URI DSN (`file:data.db?mode=rwc`), or `:memory:` for a database that lives
    /// only as long as the component (not shared with any other process).
    pub connection_string: String,
    /// `timeout` (default `20s`): how long a single operation (read, write, transaction, ping)
    /// may take, waiting for a connection included, before it fails. Go duration syntax
    /// (`500ms`, `1m`) or a number of seconds; must be greater than zero.
    pub timeout: Duration,
    /// `busyTimeout` (default `2s`): how long SQLite waits for a lock held by another
    /// connection or process (for example another sidecar sharing the file) before giving up
    /// with "database is locked". `0` fails at once.
    pub busy_timeout: Duration,
    /// `disableWAL` (default `false`): use SQLite's rollback journal instead of write-ahead
    /// logging. Set it when the database file is on a network filesystem, where WAL's shared
    /// memory does not work. Writes are then synced with `synchronous=FULL`.
    pub disable_wal: bool,
    /// `tableName` (default `state`): the table holding the state. Letters, digits and
    /// underscores only, not starting with a digit or `sqlite_`. Created when missing.
    pub table_name: String,
    /// `metadataTableName` (default `metadata`): the table holding the component's own
    /// bookkeeping (schema level, last cleanup time). Same naming rules as `tableName`, and it
    /// must differ from it.
    pub metadata_table_name: String,
    /// `cleanupInterval` (default `0s`, disabled): how often a background task deletes expired
    /// rows (items saved with `ttlInSeconds`) from the table. `0` or a negative value disables
    /// the task; expired items are invisible to reads either way, they just keep their space
    /// until overwritten. `None` when disabled.
    pub cleanup_interval: Option<Duration>,
}

/// Dapr's default for `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Dapr's default for `busyTimeout`.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Dapr's default for `tableName`.
pub const DEFAULT_TABLE_NAME: &str = "state";
/// Dapr's default for `metadataTableName`.
pub const DEFAULT_METADATA_TABLE_NAME: &str = "metadata";

impl SqliteMetadata {
    /// Decodes and validates the settings. Errors are [`Error::InvalidMetadata`] naming the
    /// field, never its value.
    pub fn from_metadata(metadata: &Metadata) -> Result<Self> {
        let connection_string = metadata.required("connectionString")?.trim().to_owned();
        let timeout = duration(metadata, "timeout", DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(Error::invalid_metadata(
                "timeout",
                "must be greater than zero",
            ));
        }
        let busy_timeout = duration(metadata, "busyTimeout", DEFAULT_BUSY_TIMEOUT)?;
        let disable_wal = metadata.bool_or("disableWAL", false)?;
        let table_name = identifier(metadata, "tableName", DEFAULT_TABLE_NAME)?;
        let metadata_table_name =
            identifier(metadata, "metadataTableName", DEFAULT_METADATA_TABLE_NAME)?;
        if table_name.eq_ignore_ascii_case(&metadata_table_name) {
            return Err(Error::invalid_metadata(
                "metadataTableName",
                "must differ from tableName",
            ));
        }
        let cleanup_interval = cleanup_interval(metadata)?;
        Ok(Self {
            connection_string,
            timeout,
            busy_timeout,
            disable_wal,
            table_name,
            metadata_table_name,
            cleanup_interval,
        })
    }

    /// Whether the connection string names a database that exists only inside this process
    /// (`:memory:`, `file::memory:`, `mode=memory`, the `memdb` VFS, or SQLite's private
    /// temporary database `file:`). Such a database cannot be shared between connections, so the
    /// store then uses a single connection.
    pub fn is_in_memory(&self) -> bool {
        let cs = self.connection_string.as_str();
        if cs == ":memory:" {
            return true;
        }
        let Some(uri) = cs.strip_prefix("file:") else {
            return false;
        };
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let path = path.split('#').next().unwrap_or_default();
        path.is_empty()
            || path == ":memory:"
            || query.split('&').any(|param| {
                param.eq_ignore_ascii_case("mode=memory") || param.eq_ignore_ascii_case("vfs=memdb")
            })
    }
}

/// A duration field. Not `Metadata::duration_or`: its error reason quotes the value, and
/// metadata values may be secrets.
fn duration(metadata: &Metadata, field: &str, default: Duration) -> Result<Duration> {
    match metadata.get(field) {
        None => Ok(default),
        Some(raw) => parse_duration(raw).map_err(|_| {
            Error::invalid_metadata(field, "expected a duration such as 20s, 500ms or 1m")
        }),
    }
}

/// A table name: interpolated into SQL (SQLite cannot bind identifiers), so restricted to a
/// plain identifier to rule out injection.
fn identifier(metadata: &Metadata, field: &str, default: &str) -> Result<String> {
    let name = metadata.get(field).unwrap_or(default).trim();
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid_metadata(
            field,
            "must contain only letters, digits and underscores, and not start with a digit",
        ));
    }
    if name.len() > 128 {
        return Err(Error::invalid_metadata(
            field,
            "must be at most 128 characters",
        ));
    }
    if name.len() >= 7 && name[..7].eq_ignore_ascii_case("sqlite_") {
        return Err(Error::invalid_metadata(
            field,
            "names starting with sqlite_ are reserved by SQLite",
        ));
    }
    Ok(name.to_owned())
}

/// `cleanupInterval`: Dapr parses it with Go's `time.ParseDuration` and disables the cleanup
/// for any value ≤ 0, so negative durations are accepted here too (and mean "disabled").
fn cleanup_interval(metadata: &Metadata) -> Result<Option<Duration>> {
    const FIELD: &str = "cleanupInterval";
    let Some(raw) = metadata.get(FIELD) else {
        return Ok(None);
    };
    let raw = raw.trim();
    let (negative, magnitude) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let interval = parse_duration(magnitude)
        .map_err(|_| Error::invalid_metadata(FIELD, "expected a duration such as 10m or 1h"))?;
    Ok((!negative && !interval.is_zero()).then_some(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::new("statestore", "app").with("connectionString", "data.db")
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprs() {
        let md = SqliteMetadata::from_metadata(&meta()).expect("valid");
        assert_eq!(
            md,
            SqliteMetadata {
                connection_string: "data.db".into(),
                timeout: Duration::from_secs(20),
                busy_timeout: Duration::from_secs(2),
                disable_wal: false,
                table_name: "state".into(),
                metadata_table_name: "metadata".into(),
                cleanup_interval: None,
            }
        );
    }

    #[test]
    fn every_field_is_read_case_insensitively() {
        let m = Metadata::new("s", "app")
            .with("CONNECTIONSTRING", "file:x.db?mode=rwc")
            .with("timeout", "500ms")
            .with("busytimeout", "5")
            .with("disableWal", "true")
            .with("tableName", "my_state2")
            .with("metadataTableName", "_meta")
            .with("cleanupInterval", "1h30m");
        let md = SqliteMetadata::from_metadata(&m).expect("valid");
        assert_eq!(md.connection_string, "file:x.db?mode=rwc");
        assert_eq!(md.timeout, Duration::from_millis(500));
        assert_eq!(md.busy_timeout, Duration::from_secs(5));
        assert!(md.disable_wal);
        assert_eq!(md.table_name, "my_state2");
        assert_eq!(md.metadata_table_name, "_meta");
        assert_eq!(md.cleanup_interval, Some(Duration::from_secs(5400)));
    }

    #[test]
    fn missing_connection_string_names_the_field() {
        let err = SqliteMetadata::from_metadata(&Metadata::new("s", "app")).unwrap_err();
        assert_eq!(field_of(err), "connectionString");
        let blank = Metadata::new("s", "app").with("connectionString", "  ");
        assert_eq!(
            field_of(SqliteMetadata::from_metadata(&blank).unwrap_err()),
            "connectionString"
        );
    }

    #[test]
    fn bad_table_names_are_rejected_without_echoing_them() {
        for bad in [
            "state; DROP TABLE x",
            "st-ate",
            "1state",
            "\"state\"",
            "sqlite_master",
            "schema.table",
        ] {
            let err = SqliteMetadata::from_metadata(&meta().with("tableName", bad)).unwrap_err();
            let text = err.to_string();
            assert!(!text.contains(bad), "error echoes the value: {text}");
            assert_eq!(field_of(err), "tableName", "{bad}");
        }
        let err =
            SqliteMetadata::from_metadata(&meta().with("metadataTableName", "m m")).unwrap_err();
        assert_eq!(field_of(err), "metadataTableName");
        let same = meta().with("tableName", "t").with("metadataTableName", "T");
        assert_eq!(
            field_of(SqliteMetadata::from_metadata(&same).unwrap_err()),
            "metadataTableName"
        );
    }

    #[test]
    fn bad_durations_and_booleans_name_the_field() {
        let cases = [
            ("timeout", "soon"),
            ("timeout", "0s"),
            ("busyTimeout", "2 parsecs"),
            ("cleanupInterval", "hourly"),
            ("disableWAL", "maybe"),
        ];
        for (field, value) in cases {
            let err = SqliteMetadata::from_metadata(&meta().with(field, value)).unwrap_err();
            assert!(!err.to_string().contains(value), "{err}");
            assert_eq!(field_of(err), field, "{field}={value}");
        }
    }

    #[test]
    fn cleanup_interval_zero_or_negative_disables() {
        for off in ["0", "0s", "-1", "-1h"] {
            let md =
                SqliteMetadata::from_metadata(&meta().with("cleanupInterval", off)).expect("valid");
            assert_eq!(md.cleanup_interval, None, "{off}");
        }
        let md =
            SqliteMetadata::from_metadata(&meta().with("cleanupInterval", "250ms")).expect("valid");
        assert_eq!(md.cleanup_interval, Some(Duration::from_millis(250)));
    }

    #[test]
    fn in_memory_detection() {
        let with = |cs: &str| {
            SqliteMetadata::from_metadata(&Metadata::new("s", "a").with("connectionString", cs))
                .unwrap()
                .is_in_memory()
        };
        assert!(with(":memory:"));
        assert!(with("file::memory:"));
        assert!(with("file::memory:?cache=shared"));
        assert!(with("file:db1?mode=memory&cache=shared"));
        assert!(with("file:/db?vfs=memdb"));
        assert!(!with("data.db"));
        assert!(!with("file:data.db?mode=rwc"));
        assert!(!with("/tmp/memory.db"));
    }
}
