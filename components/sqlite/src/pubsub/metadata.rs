//! The settings of `pubsub.sqlite`, decoded from a component's `spec.metadata`.
//!
//! Decoding does no I/O: a bad field is reported before any file is opened. Errors name the
//! field, never its value (metadata values may be secrets).

use std::time::Duration;

use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

/// The typed settings of a `pubsub.sqlite` component.
///
/// Every field's doc comment is the user-facing documentation of the metadata field it is
/// decoded from. Durations use Go syntax (`500ms`, `1m30s`) or a plain number of seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlitePubSubMetadata {
    /// `connectionString` (required): the database file, as a path (`pubsub.db`,
    /// `~/.tandem/pubsub.db` expanded by the shell, `/var/lib/tandem/pubsub.db`) or a SQLite URI
    /// (`file:pubsub.db?mode=rwc`). The file is created when missing, its folder is not. Every
    /// sidecar process on the machine that names the same file shares the same topics and
    /// consumer groups. In-memory databases (`:memory:`, `mode=memory`) are rejected: they
    /// cannot be shared and lose everything at exit; use `pubsub.in-memory` for that.
    /// Next to the file the component keeps a folder `<file>.bells/` of wake-up sockets, one
    /// per subscribing process.
    pub connection_string: String,
    /// `timeout` (default `20s`): how long one database operation (publish, lease, ack) may
    /// take, waiting for the connection included, before it fails.
    pub timeout: Duration,
    /// `busyTimeout` (default `2s`): how long SQLite waits for the write lock held by another
    /// connection or process sharing the file before failing with "database is locked".
    pub busy_timeout: Duration,
    /// `disableWAL` (default `false`): use the rollback journal instead of write-ahead logging
    /// (commits are then synced with `synchronous=FULL`). Only for filesystems without shared
    /// memory support.
    pub disable_wal: bool,
    /// `processingTimeout` (default `60s`): the lease of a message being handled. A process
    /// handling a message renews its lease every third of this while the handler runs; if the
    /// process dies, the lease runs out and the message is delivered again (to any member of
    /// the group, in any process) at most this long after the death. Must be at least `100ms`.
    pub processing_timeout: Duration,
    /// `redeliverInterval` (default `100ms`): the backoff before a message the app answered
    /// with RETRY becomes visible again. It doubles with every further attempt of that message
    /// up to `maxRedeliverInterval`. Unlike `pubsub.redis`, nothing scans on this interval:
    /// waking up at the due time is a timer set for that time.
    pub redeliver_interval: Duration,
    /// `maxRedeliverInterval` (default `5s`): the cap of the doubling backoff. Must not be
    /// smaller than `redeliverInterval`.
    pub max_redeliver_interval: Duration,
}

/// Default of `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default of `busyTimeout`.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of `processingTimeout`.
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `redeliverInterval`.
pub const DEFAULT_REDELIVER_INTERVAL: Duration = Duration::from_millis(100);
/// Default of `maxRedeliverInterval`.
pub const DEFAULT_MAX_REDELIVER_INTERVAL: Duration = Duration::from_secs(5);
/// Smallest accepted `processingTimeout`: leases are renewed at a third of it.
pub const MIN_PROCESSING_TIMEOUT: Duration = Duration::from_millis(100);

impl SqlitePubSubMetadata {
    /// Decodes and validates the settings. Errors are [`Error::InvalidMetadata`] naming the
    /// field, never its value.
    pub fn from_metadata(metadata: &Metadata) -> Result<Self> {
        let connection_string = metadata.required("connectionString")?.trim().to_owned();
        if is_in_memory(&connection_string) {
            return Err(Error::invalid_metadata(
                "connectionString",
                "must name a database file; in-memory databases cannot be shared (use pubsub.in-memory)",
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
        let disable_wal = metadata.bool_or("disableWAL", false)?;
        let processing_timeout =
            duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)?;
        if processing_timeout < MIN_PROCESSING_TIMEOUT {
            return Err(Error::invalid_metadata(
                "processingTimeout",
                "must be at least 100ms",
            ));
        }
        let redeliver_interval =
            duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)?;
        let max_redeliver_interval = duration(
            metadata,
            "maxRedeliverInterval",
            DEFAULT_MAX_REDELIVER_INTERVAL.max(redeliver_interval),
        )?;
        if max_redeliver_interval < redeliver_interval {
            return Err(Error::invalid_metadata(
                "maxRedeliverInterval",
                "must not be smaller than redeliverInterval",
            ));
        }
        Ok(Self {
            connection_string,
            timeout,
            busy_timeout,
            disable_wal,
            processing_timeout,
            redeliver_interval,
            max_redeliver_interval,
        })
    }

    /// The backoff before redelivering a message after its `attempts`-th delivery (1-based)
    /// was answered with RETRY.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.redeliver_interval
            .saturating_mul(factor)
            .min(self.max_redeliver_interval)
    }
}

/// `:memory:`, `file::memory:`, `file:x?mode=memory`, the `memdb` VFS, or an empty `file:`
/// (SQLite's private temporary database).
fn is_in_memory(cs: &str) -> bool {
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

/// A duration field. Not `Metadata::duration_or`, so the reason stays this component's.
fn duration(metadata: &Metadata, field: &str, default: Duration) -> Result<Duration> {
    match metadata.get(field) {
        None => Ok(default),
        Some(raw) => parse_duration(raw).map_err(|_| {
            Error::invalid_metadata(field, "expected a duration such as 20s, 500ms or 1m")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::new("pubsub", "app").with("connectionString", "pubsub.db")
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let md = SqlitePubSubMetadata::from_metadata(&meta()).expect("valid");
        assert_eq!(
            md,
            SqlitePubSubMetadata {
                connection_string: "pubsub.db".into(),
                timeout: Duration::from_secs(20),
                busy_timeout: Duration::from_secs(2),
                disable_wal: false,
                processing_timeout: Duration::from_secs(60),
                redeliver_interval: Duration::from_millis(100),
                max_redeliver_interval: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn fields_are_case_insensitive() {
        let m = Metadata::new("p", "app")
            .with("CONNECTIONSTRING", "file:x.db?mode=rwc")
            .with("Timeout", "500ms")
            .with("busytimeout", "5")
            .with("disablewal", "true")
            .with("processingtimeout", "2s")
            .with("REDELIVERINTERVAL", "1s")
            .with("maxredeliverinterval", "1m");
        let md = SqlitePubSubMetadata::from_metadata(&m).expect("valid");
        assert_eq!(md.connection_string, "file:x.db?mode=rwc");
        assert_eq!(md.timeout, Duration::from_millis(500));
        assert_eq!(md.busy_timeout, Duration::from_secs(5));
        assert!(md.disable_wal);
        assert_eq!(md.processing_timeout, Duration::from_secs(2));
        assert_eq!(md.redeliver_interval, Duration::from_secs(1));
        assert_eq!(md.max_redeliver_interval, Duration::from_secs(60));
    }

    #[test]
    fn a_large_redeliver_interval_raises_the_default_cap() {
        let md =
            SqlitePubSubMetadata::from_metadata(&meta().with("redeliverInterval", "30s")).unwrap();
        assert_eq!(md.max_redeliver_interval, Duration::from_secs(30));
        assert_eq!(md.retry_delay(3), Duration::from_secs(30));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let md = SqlitePubSubMetadata::from_metadata(&meta()).unwrap();
        assert_eq!(md.retry_delay(1), Duration::from_millis(100));
        assert_eq!(md.retry_delay(2), Duration::from_millis(200));
        assert_eq!(md.retry_delay(3), Duration::from_millis(400));
        assert_eq!(md.retry_delay(10), Duration::from_secs(5));
        assert_eq!(md.retry_delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn bad_fields_are_named_without_their_value() {
        let cases = [
            ("connectionString", ":memory:"),
            ("connectionString", "file:shared?mode=memory&cache=shared"),
            ("timeout", "soon"),
            ("timeout", "0"),
            ("busyTimeout", "2 parsecs"),
            ("disableWAL", "maybe"),
            ("processingTimeout", "10ms"),
            ("processingTimeout", "forever"),
            ("redeliverInterval", "often"),
            ("maxRedeliverInterval", "50ms"),
        ];
        for (field, value) in cases {
            let err = SqlitePubSubMetadata::from_metadata(&meta().with(field, value)).unwrap_err();
            if value.len() > 2 {
                assert!(!err.to_string().contains(value), "{err}");
            }
            assert_eq!(field_of(err), field, "{field}={value}");
        }
        let missing = SqlitePubSubMetadata::from_metadata(&Metadata::new("p", "a")).unwrap_err();
        assert_eq!(field_of(missing), "connectionString");
    }
}
