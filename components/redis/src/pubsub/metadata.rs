//! The settings of `pubsub.redis`, decoded from a component's `spec.metadata`.
//!
//! The connection fields are the same as `state.redis` ([`RedisMetadata`]: `redisHost`,
//! `redisType`, passwords, TLS, Sentinel, timeouts, …) and are decoded by the same code; this
//! module adds the stream and delivery fields of Dapr's `pubsub/redis/metadata.yaml`. Durations
//! use the Redis components' syntax: a bare integer is milliseconds, anything else a Go
//! duration (`"30s"`).

use std::time::Duration;

use tandem_components::{Error, Metadata, Result};

use crate::metadata::{RedisMetadata, redis_duration};

/// Dapr's default for `processingTimeout`.
pub const DEFAULT_PROCESSING_TIMEOUT: Duration = Duration::from_secs(15);
/// Dapr's default for `redeliverInterval`.
pub const DEFAULT_REDELIVER_INTERVAL: Duration = Duration::from_secs(60);
/// Dapr's default for `queueDepth`.
pub const DEFAULT_QUEUE_DEPTH: usize = 100;
/// Dapr's default for `concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 10;
/// The retry backoff defaults of Dapr's Redis pub/sub (go-redis' own: 8 ms to 512 ms), which
/// differ from the state store's legacy 2 s.
const DEFAULT_MIN_RETRY_INTERVAL: Duration = Duration::from_millis(8);
const DEFAULT_MAX_RETRY_INTERVAL: Duration = Duration::from_millis(512);
/// Upper bound on `queueDepth` and `concurrency`, so that a huge value cannot overflow a
/// semaphore or ask Redis for absurd batches.
const MAX_COUNT: u64 = 1 << 16;

/// The typed settings of a `pubsub.redis` component. Each field's doc comment is the
/// documentation of the metadata field it is decoded from; keys are case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisPubSubMetadata {
    /// The connection: every field of [`RedisMetadata`] except the state-only ones
    /// (`ttlInSeconds`, `queryIndexes`, `actorStateStore`, `keyPrefix`, accepted and ignored).
    /// The retry backoff defaults are Dapr's pub/sub ones: `redisMinRetryInterval` 8 ms,
    /// `redisMaxRetryInterval` 512 ms.
    pub connection: RedisMetadata,
    /// `consumerID` (default: the app-id): the consumer group of subscriptions whose request
    /// names none. The runtime passes the subscription's own `consumerID` (by default this
    /// same value), so each app-id is one group that shares the topic's messages, and every
    /// group gets every message.
    pub consumer_id: String,
    /// `processingTimeout` (default `15s`; `0` disables redelivery): how long a message may
    /// stay pending (delivered, not acknowledged) before another delivery may take it over.
    /// A subscriber still working on a message renews its claim every half of this time, so
    /// only messages whose subscriber died, lost its connection or answered Retry are taken
    /// over.
    pub processing_timeout: Duration,
    /// `redeliverInterval` (default `60s`; `0` disables redelivery): how often each
    /// subscription looks for pending messages older than `processingTimeout` and claims
    /// them (`XPENDING` + `XCLAIM`), whoever held them. A message answered Retry is delivered
    /// again after between `processingTimeout` and `processingTimeout + redeliverInterval`.
    pub redeliver_interval: Duration,
    /// `queueDepth` (default `100`): the most messages one read (`XREADGROUP COUNT`) or one
    /// reclaim page asks for. A subscription never reads more than it has free handler slots
    /// for, so messages wait in Redis (where other members of the group can take them), not
    /// in the sidecar.
    pub queue_depth: usize,
    /// `concurrency` (default `10`): the most messages of one subscription handled at once
    /// (also bounded by the runtime's own in-flight limit, `--app-max-concurrency`).
    pub concurrency: usize,
    /// `maxLenApprox` (optional): trims each stream to about this many entries on every
    /// publish (`XADD ... MAXLEN ~ n`); the oldest go first, read or not. Wins over
    /// `streamTTL` when both are set (as in Dapr).
    pub max_len_approx: Option<u64>,
    /// `streamTTL` (optional): trims entries older than this on every publish
    /// (`XADD ... MINID ~ <now - ttl>`), read or not. Approximate, as Redis trims whole
    /// macro-nodes.
    pub stream_ttl: Option<Duration>,
}

impl RedisPubSubMetadata {
    /// Decodes and validates the settings. Errors are [`Error::InvalidMetadata`] naming the
    /// field, never its value.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let mut connection = RedisMetadata::from_metadata(md)?;
        if md.get("redisMinRetryInterval").is_none() && md.get("maxRetryBackoff").is_none() {
            connection.min_retry_interval = Some(DEFAULT_MIN_RETRY_INTERVAL);
        }
        if md.get("redisMaxRetryInterval").is_none() {
            connection.max_retry_interval = Some(DEFAULT_MAX_RETRY_INTERVAL);
        }
        let consumer_id = md
            .get("consumerID")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or(&md.app_id)
            .to_owned();
        let max_len_approx = match md.get("maxLenApprox") {
            None => None,
            Some(raw) => Some(raw.trim().parse::<u64>().map_err(|_| {
                Error::invalid_metadata("maxLenApprox", "expected a non-negative integer")
            })?)
            .filter(|n| *n > 0),
        };
        Ok(Self {
            connection,
            consumer_id,
            processing_timeout: interval(md, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)?,
            redeliver_interval: interval(md, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)?,
            queue_depth: count(md, "queueDepth", DEFAULT_QUEUE_DEPTH)?.max(1),
            concurrency: match count(md, "concurrency", DEFAULT_CONCURRENCY)? {
                0 => {
                    return Err(Error::invalid_metadata(
                        "concurrency",
                        "must be at least 1 (no message would ever be handled)",
                    ));
                }
                n => n,
            },
            max_len_approx,
            stream_ttl: Some(interval(md, "streamTTL", Duration::ZERO)?).filter(|d| !d.is_zero()),
        })
    }

    /// Whether pending messages are ever taken over (`processingTimeout` and
    /// `redeliverInterval` both non-zero).
    pub fn redelivers(&self) -> bool {
        !self.processing_timeout.is_zero() && !self.redeliver_interval.is_zero()
    }
}

/// A duration where `0` (or a negative value) means "off", returned as zero.
fn interval(md: &Metadata, field: &str, default: Duration) -> Result<Duration> {
    Ok(match redis_duration(md, field)? {
        None => default,
        Some(d) => d.unwrap_or(Duration::ZERO),
    })
}

/// A non-negative count, capped at [`MAX_COUNT`].
fn count(md: &Metadata, field: &str, default: usize) -> Result<usize> {
    let Some(raw) = md.get(field) else {
        return Ok(default);
    };
    let n: u64 = raw
        .trim()
        .parse()
        .map_err(|_| Error::invalid_metadata(field, "expected a non-negative integer"))?;
    Ok(usize::try_from(n.min(MAX_COUNT)).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::new("pubsub", "orders-app").with("redisHost", "localhost:6379")
    }

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidMetadata { field, .. } => field,
            other => panic!("expected InvalidMetadata, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_daprs() {
        let md = RedisPubSubMetadata::from_metadata(&meta()).unwrap();
        assert_eq!(md.consumer_id, "orders-app");
        assert_eq!(md.processing_timeout, Duration::from_secs(15));
        assert_eq!(md.redeliver_interval, Duration::from_secs(60));
        assert_eq!(md.queue_depth, 100);
        assert_eq!(md.concurrency, 10);
        assert_eq!(md.max_len_approx, None);
        assert_eq!(md.stream_ttl, None);
        assert!(md.redelivers());
        assert_eq!(
            md.connection.min_retry_interval,
            Some(Duration::from_millis(8))
        );
        assert_eq!(
            md.connection.max_retry_interval,
            Some(Duration::from_millis(512))
        );
    }

    #[test]
    fn fields_and_their_syntax() {
        let m = meta()
            .with("consumerID", "group-7")
            .with("processingTimeout", "1500")
            .with("redeliverInterval", "2s")
            .with("queueDepth", "5")
            .with("concurrency", "3")
            .with("maxLenApprox", "1000")
            .with("streamTTL", "1h")
            .with("redisMinRetryInterval", "20ms");
        let md = RedisPubSubMetadata::from_metadata(&m).unwrap();
        assert_eq!(md.consumer_id, "group-7");
        assert_eq!(
            md.processing_timeout,
            Duration::from_millis(1500),
            "integers are milliseconds"
        );
        assert_eq!(md.redeliver_interval, Duration::from_secs(2));
        assert_eq!((md.queue_depth, md.concurrency), (5, 3));
        assert_eq!(md.max_len_approx, Some(1000));
        assert_eq!(md.stream_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(
            md.connection.min_retry_interval,
            Some(Duration::from_millis(20))
        );
    }

    #[test]
    fn zero_disables_redelivery() {
        for field in ["processingTimeout", "redeliverInterval"] {
            let md = RedisPubSubMetadata::from_metadata(&meta().with(field, "0")).unwrap();
            assert!(!md.redelivers(), "{field}");
        }
        let md = RedisPubSubMetadata::from_metadata(&meta().with("maxLenApprox", "0")).unwrap();
        assert_eq!(md.max_len_approx, None);
        let md = RedisPubSubMetadata::from_metadata(&meta().with("queueDepth", "0")).unwrap();
        assert_eq!(md.queue_depth, 1);
    }

    #[test]
    fn bad_values_name_the_field() {
        for (field, value) in [
            ("processingTimeout", "soon"),
            ("redeliverInterval", "often"),
            ("queueDepth", "-1"),
            ("concurrency", "many"),
            ("concurrency", "0"),
            ("maxLenApprox", "big"),
            ("streamTTL", "a day"),
            ("redisHost", ""),
        ] {
            let err = RedisPubSubMetadata::from_metadata(&meta().with(field, value)).unwrap_err();
            assert_eq!(field_of(err), field, "{field}={value}");
        }
    }
}
