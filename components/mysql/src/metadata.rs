//! The settings of `state.mysql`, decoded from a component's `spec.metadata`.
//!
//! Field names and defaults are Dapr's (components-contrib `state/mysql`), so an existing Dapr
//! component YAML works unchanged. Decoding does no I/O: a bad field is reported before any
//! connection is attempted. Errors are [`Error::InvalidMetadata`] naming the field, never its
//! value (the connection string holds a password).

use std::path::PathBuf;
use std::time::Duration;

use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

use crate::dsn::{Dsn, TlsParam, is_identifier};

/// The typed settings of a `state.mysql` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MySqlMetadata {
    /// `connectionString` (required): how to reach the server, as a Go MySQL driver DSN
    /// without scheme, the form Dapr uses:
    /// `user:password@tcp(host:3306)/?allowNativePasswords=true&parseTime=true`
    /// (`unix(/path/to.sock)` instead of `tcp(...)` for a socket), or as a URL
    /// `mysql://user:password@host:3306/`. Driver parameters Tandem honours: `tls`
    /// (`true`, `false`, `skip-verify`, `custom`), `timeout` (connect timeout),
    /// `allowCleartextPasswords`. Go-only parameters (`parseTime`, `loc`, `charset`,
    /// `allowNativePasswords`, …) are accepted and ignored; any other `name=value` is set as a
    /// session variable on every new connection, as the Go driver does. The database named in
    /// the DSN does not matter: tables live in `schemaName`.
    pub connection: Dsn,
    /// `schemaName` (default `dapr_state_store`): the database (schema) holding the tables,
    /// created on first use when missing. Letters, digits and underscores only, at most 64.
    pub schema_name: String,
    /// `tableName` (default `state`): the state table, created on first use when missing with
    /// Dapr's columns `id`, `value`, `isbinary`, `insertDate`, `updateDate`, `eTag`,
    /// `expiredate`. Same naming rules as `schemaName`.
    pub table_name: String,
    /// `metadataTableName` (default `dapr_metadata`): the table holding the component's own
    /// bookkeeping (the time of the last expired-row cleanup, shared with other sidecars).
    /// Same naming rules as `schemaName`; must differ from `tableName`.
    pub metadata_table_name: String,
    /// `timeoutInSeconds` (default `20`): how long one operation (read, write, transaction,
    /// ping), getting a connection included, may take before it fails. A value ≤ 0 means the
    /// default, as in Dapr. A Go duration such as `500ms` is accepted too.
    pub timeout: Duration,
    /// `pemPath`: a PEM file with the CA certificate(s) the server's TLS certificate must chain
    /// to (for example Azure Database for MySQL's CA). Setting it turns TLS on (Dapr also needs
    /// `tls=custom` in the DSN; Tandem accepts that and does not require it) unless the DSN
    /// says `tls=false`. The server name is verified against the DSN's host.
    pub pem_path: Option<PathBuf>,
    /// The TLS mode that follows from `pemPath` and the DSN's `tls` parameter.
    pub tls: TlsMode,
    /// `cleanupInterval` (default `1h`): how often a background task deletes expired rows
    /// (items saved with `ttlInSeconds`). Go duration syntax or a number of seconds; `0` or a
    /// negative value disables the task (expired items stay invisible to reads either way).
    /// Several sidecars sharing the table coordinate through the metadata table, so only one
    /// of them cleans per interval. `None` when disabled.
    pub cleanup_interval: Option<Duration>,
    /// `actorStateStore` (default `false`): read by the runtime, which makes this store the
    /// actor state store. The store itself behaves the same either way.
    pub actor_state_store: bool,
    /// `keyPrefix` (default `appid`): read by the runtime, which prefixes keys with the app-id
    /// (`<appid>||<key>`), the component name (`name`), nothing (`none`) or any other fixed
    /// text. Keys, prefix included, are at most 255 characters (the `id` column).
    pub key_prefix: Option<String>,
}

/// How the connection is secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (or a Unix socket).
    Off,
    /// TLS verified against the well-known web root CAs (`tls=true` without `pemPath`).
    WebRoots,
    /// TLS verified against the CA certificate(s) in this file (`pemPath`).
    CustomCa(PathBuf),
    /// TLS without certificate verification (`tls=skip-verify`).
    SkipVerify,
}

/// Dapr's default for `schemaName`.
pub const DEFAULT_SCHEMA_NAME: &str = "dapr_state_store";
/// Dapr's default for `tableName`.
pub const DEFAULT_TABLE_NAME: &str = "state";
/// Dapr's default for `metadataTableName`.
pub const DEFAULT_METADATA_TABLE_NAME: &str = "dapr_metadata";
/// Dapr's default for `timeoutInSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Dapr's default for `cleanupInterval`.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

impl MySqlMetadata {
    /// Decodes and validates the settings.
    pub fn from_metadata(metadata: &Metadata) -> Result<Self> {
        let connection = Dsn::parse(metadata.required("connectionString")?)?;
        let schema_name = identifier(metadata, "schemaName", DEFAULT_SCHEMA_NAME)?;
        let table_name = identifier(metadata, "tableName", DEFAULT_TABLE_NAME)?;
        let metadata_table_name =
            identifier(metadata, "metadataTableName", DEFAULT_METADATA_TABLE_NAME)?;
        if table_name.eq_ignore_ascii_case(&metadata_table_name) {
            return Err(Error::invalid_metadata(
                "metadataTableName",
                "must differ from tableName",
            ));
        }
        let timeout = timeout(metadata)?;
        let pem_path = metadata.get("pemPath").map(|p| PathBuf::from(p.trim()));
        let tls = tls_mode(&connection, pem_path.as_ref())?;
        let cleanup_interval = cleanup_interval(metadata)?;
        let actor_state_store = metadata.bool_or("actorStateStore", false)?;
        let key_prefix = metadata.get("keyPrefix").map(str::to_owned);
        Ok(Self {
            connection,
            schema_name,
            table_name,
            metadata_table_name,
            timeout,
            pem_path,
            tls,
            cleanup_interval,
            actor_state_store,
            key_prefix,
        })
    }
}

/// The TLS mode that follows from the DSN's `tls` parameter and `pemPath`: a CA file turns
/// TLS on unless the DSN says `tls=false`.
pub(crate) fn tls_mode(dsn: &Dsn, pem_path: Option<&PathBuf>) -> Result<TlsMode> {
    Ok(match (dsn.tls, pem_path) {
        (TlsParam::Off, _) => TlsMode::Off,
        (TlsParam::SkipVerify, _) => TlsMode::SkipVerify,
        (TlsParam::Unset | TlsParam::Verify | TlsParam::Custom, Some(pem)) => {
            TlsMode::CustomCa(pem.clone())
        }
        (TlsParam::Verify, None) => TlsMode::WebRoots,
        (TlsParam::Custom, None) => {
            return Err(Error::invalid_metadata(
                "pemPath",
                "the connection string asks for tls=custom, which needs pemPath",
            ));
        }
        (TlsParam::Unset, None) => TlsMode::Off,
    })
}

/// A schema or table name: interpolated into SQL (identifiers cannot be bound), so restricted
/// to letters, digits and underscores, as in Dapr, and to MySQL's 64-character limit.
fn identifier(metadata: &Metadata, field: &str, default: &str) -> Result<String> {
    let name = metadata.get(field).unwrap_or(default).trim();
    if !is_identifier(name) {
        return Err(Error::invalid_metadata(
            field,
            "must contain only letters, digits and underscores",
        ));
    }
    if name.len() > 64 {
        return Err(Error::invalid_metadata(
            field,
            "must be at most 64 characters",
        ));
    }
    Ok(name.to_owned())
}

/// `timeoutInSeconds`: an integer number of seconds, ≤ 0 meaning the default (Dapr), or a Go
/// duration.
fn timeout(metadata: &Metadata) -> Result<Duration> {
    const FIELD: &str = "timeoutInSeconds";
    let Some(raw) = metadata.get(FIELD).map(str::trim) else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let parsed = match raw.parse::<i64>() {
        Ok(secs) if secs <= 0 => Duration::ZERO,
        Ok(secs) => Duration::from_secs(secs.unsigned_abs()),
        Err(_) => parse_duration(raw).map_err(|_| {
            Error::invalid_metadata(FIELD, "expected a whole number of seconds such as 20")
        })?,
    };
    Ok(if parsed.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        parsed
    })
}

/// `cleanupInterval`: Dapr parses it with Go's `time.ParseDuration` and disables the cleanup
/// for any value ≤ 0, so negative durations are accepted here too (and mean "disabled").
fn cleanup_interval(metadata: &Metadata) -> Result<Option<Duration>> {
    const FIELD: &str = "cleanupInterval";
    let Some(raw) = metadata.get(FIELD).map(str::trim) else {
        return Ok(Some(DEFAULT_CLEANUP_INTERVAL));
    };
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
    use crate::dsn::Address;

    const DSN: &str = "root:@tcp(127.0.0.1:3306)/?allowNativePasswords=true&parseTime=true";

    fn meta() -> Metadata {
        Metadata::new("statestore", "app").with("connectionString", DSN)
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprs() {
        let md = MySqlMetadata::from_metadata(&meta()).expect("valid");
        assert_eq!(
            md,
            MySqlMetadata {
                connection: Dsn::parse(DSN).unwrap(),
                schema_name: "dapr_state_store".into(),
                table_name: "state".into(),
                metadata_table_name: "dapr_metadata".into(),
                timeout: Duration::from_secs(20),
                pem_path: None,
                tls: TlsMode::Off,
                cleanup_interval: Some(Duration::from_secs(3600)),
                actor_state_store: false,
                key_prefix: None,
            }
        );
        assert_eq!(
            md.connection.address,
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 3306
            }
        );
    }

    #[test]
    fn every_field_is_read_case_insensitively() {
        let m = Metadata::new("s", "app")
            .with("CONNECTIONSTRING", "mysql://u:p@db:3307/")
            .with("schemaname", "my_schema")
            .with("TableName", "my_state2")
            .with("metadataTableName", "_meta")
            .with("timeoutInSeconds", "5")
            .with("pemPath", "/etc/ssl/ca.pem")
            .with("cleanupInterval", "1h30m")
            .with("actorStateStore", "true")
            .with("keyPrefix", "name");
        let md = MySqlMetadata::from_metadata(&m).expect("valid");
        assert_eq!(md.connection.user.as_deref(), Some("u"));
        assert_eq!(md.schema_name, "my_schema");
        assert_eq!(md.table_name, "my_state2");
        assert_eq!(md.metadata_table_name, "_meta");
        assert_eq!(md.timeout, Duration::from_secs(5));
        assert_eq!(md.pem_path, Some(PathBuf::from("/etc/ssl/ca.pem")));
        assert_eq!(md.tls, TlsMode::CustomCa(PathBuf::from("/etc/ssl/ca.pem")));
        assert_eq!(md.cleanup_interval, Some(Duration::from_secs(5400)));
        assert!(md.actor_state_store);
        assert_eq!(md.key_prefix.as_deref(), Some("name"));
    }

    #[test]
    fn missing_connection_string_names_the_field() {
        let err = MySqlMetadata::from_metadata(&Metadata::new("s", "app")).unwrap_err();
        assert_eq!(field_of(err), "connectionString");
        let blank = Metadata::new("s", "app").with("connectionString", "  ");
        assert_eq!(
            field_of(MySqlMetadata::from_metadata(&blank).unwrap_err()),
            "connectionString"
        );
    }

    #[test]
    fn bad_dsn_is_reported_without_the_password() {
        let m = Metadata::new("s", "app").with("connectionString", "root:hunter2@tcp(db:x)/");
        let err = MySqlMetadata::from_metadata(&m).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(field_of(err), "connectionString");
    }

    #[test]
    fn bad_identifiers_are_rejected_without_echoing_them() {
        for field in ["schemaName", "tableName", "metadataTableName"] {
            for bad in [
                "state; DROP TABLE x",
                "st-ate",
                "`state`",
                "schema.table",
                "ünïcode",
            ] {
                let err = MySqlMetadata::from_metadata(&meta().with(field, bad)).unwrap_err();
                let text = err.to_string();
                assert!(!text.contains(bad), "error echoes the value: {text}");
                assert_eq!(field_of(err), field, "{bad}");
            }
            let long = "x".repeat(65);
            let err = MySqlMetadata::from_metadata(&meta().with(field, &long)).unwrap_err();
            assert_eq!(field_of(err), field);
        }
        let same = meta().with("tableName", "t").with("metadataTableName", "T");
        assert_eq!(
            field_of(MySqlMetadata::from_metadata(&same).unwrap_err()),
            "metadataTableName"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("timeoutInSeconds", "soon"),
            ("cleanupInterval", "hourly"),
            ("actorStateStore", "maybe"),
        ];
        for (field, value) in cases {
            let err = MySqlMetadata::from_metadata(&meta().with(field, value)).unwrap_err();
            assert!(!err.to_string().contains(value), "{err}");
            assert_eq!(field_of(err), field, "{field}={value}");
        }
    }

    #[test]
    fn timeout_forms() {
        let t = |v: &str| {
            MySqlMetadata::from_metadata(&meta().with("timeoutInSeconds", v))
                .unwrap()
                .timeout
        };
        assert_eq!(t("3"), Duration::from_secs(3));
        assert_eq!(t("0"), DEFAULT_TIMEOUT);
        assert_eq!(t("-5"), DEFAULT_TIMEOUT);
        assert_eq!(t("750ms"), Duration::from_millis(750));
    }

    #[test]
    fn cleanup_interval_zero_or_negative_disables() {
        for off in ["0", "0s", "-1", "-1h"] {
            let md =
                MySqlMetadata::from_metadata(&meta().with("cleanupInterval", off)).expect("valid");
            assert_eq!(md.cleanup_interval, None, "{off}");
        }
        let md =
            MySqlMetadata::from_metadata(&meta().with("cleanupInterval", "250ms")).expect("valid");
        assert_eq!(md.cleanup_interval, Some(Duration::from_millis(250)));
    }

    #[test]
    fn tls_modes() {
        let with = |dsn: &str, pem: Option<&str>| {
            let mut m = Metadata::new("s", "a").with("connectionString", dsn);
            if let Some(pem) = pem {
                m.insert("pemPath", pem);
            }
            MySqlMetadata::from_metadata(&m)
        };
        let ca = TlsMode::CustomCa(PathBuf::from("/ca.pem"));
        assert_eq!(with("/", None).unwrap().tls, TlsMode::Off);
        assert_eq!(with("/", Some("/ca.pem")).unwrap().tls, ca);
        assert_eq!(with("/?tls=custom", Some("/ca.pem")).unwrap().tls, ca);
        assert_eq!(with("/?tls=true", Some("/ca.pem")).unwrap().tls, ca);
        assert_eq!(with("/?tls=true", None).unwrap().tls, TlsMode::WebRoots);
        assert_eq!(
            with("/?tls=false", Some("/ca.pem")).unwrap().tls,
            TlsMode::Off
        );
        assert_eq!(
            with("/?tls=skip-verify", None).unwrap().tls,
            TlsMode::SkipVerify
        );
        assert_eq!(field_of(with("/?tls=custom", None).unwrap_err()), "pemPath");
    }
}
