//! `bindings.redis`: an output binding writing and reading plain Redis strings.
//!
//! The component takes the same connection settings as `state.redis` (see [`RedisMetadata`]:
//! `redisHost`, `redisUsername`, `redisPassword`, `redisDB`, `enableTLS`, `redisType`,
//! `failover`, timeouts, …) and shares its connection handling: building does no I/O, calls
//! fail with a backend error while Redis is down, and the binding recovers by itself.
//!
//! Every operation needs the request metadata `key` (else the call fails with
//! `redis binding: missing key in request metadata`):
//!
//! | Operation | Redis | Answer |
//! |---|---|---|
//! | `create` | `SET key <data>`, then `EXPIRE key <ttl>` when the request carries a TTL | none (204) |
//! | `get` | `GET key`, or `GETDEL key` with metadata `delete: "true"` | the value's bytes; an empty answer (200, no body) when the key does not exist |
//! | `delete` | `DEL key` | none (204) |
//! | `increment` | `INCR key`, then `EXPIRE` when the request carries a TTL | none (204) |
//!
//! `data` is stored as the API received it: over HTTP the request's `data` field JSON-encoded
//! (a JSON string keeps its quotes), over gRPC the raw bytes. The TTL comes from request
//! metadata `ttl` or `ttlInSeconds` (names matched case-insensitively): a positive number of
//! seconds (`"60"`) or a Go duration (`"90s"`, `"1m30s"`, cut to whole seconds). A duration of
//! zero (`"0"`, `"0s"`, or a negative one) expires the key at once, and a number that is zero
//! or negative is refused, as in Dapr. The write and its `EXPIRE` are sent as one `MULTI`/`EXEC`
//! transaction, so a key never stays without the requested expiry.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::metadata::parse_duration;
use tandem_components::{Error, Metadata, Result};

use crate::client::{Client, Idempotence};
use crate::metadata::RedisMetadata;

/// The operations of `bindings.redis`.
pub const OPERATIONS: &[&str] = &["create", "get", "delete", "increment"];

/// The `bindings.redis` component (output only).
pub struct RedisBinding {
    client: Client,
}

impl fmt::Debug for RedisBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBinding")
            .field("client", &self.client)
            .finish()
    }
}

impl RedisBinding {
    /// Decodes the connection settings (see [`RedisMetadata`]) and prepares the connection
    /// without opening it.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = RedisMetadata::from_metadata(metadata)?;
        let client = Client::new(&settings)?;
        tracing::debug!(component = %metadata.name, mode = ?settings.redis_type, sentinel = settings.failover, tls = settings.enable_tls, "bindings.redis ready");
        Ok(Self { client })
    }

    /// `SET` (or `INCR`) and the optional `EXPIRE`, in one transaction.
    async fn write(
        &self,
        what: &'static str,
        key: &str,
        data: Option<&Bytes>,
        ttl: Option<u64>,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        if ttl.is_some() {
            pipe.atomic();
        }
        match data {
            Some(data) => pipe.cmd("SET").arg(key).arg(data.as_ref()).ignore(),
            None => pipe.cmd("INCR").arg(key).ignore(),
        };
        if let Some(secs) = ttl {
            pipe.cmd("EXPIRE").arg(key).arg(secs).ignore();
        }
        let pipe = &pipe;
        self.client
            .run(what, Idempotence::Write, |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await
    }
}

#[async_trait]
impl OutputBinding for RedisBinding {
    fn operations(&self) -> &'static [&'static str] {
        OPERATIONS
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        let key = req
            .metadata
            .get("key")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Error::InvalidRequest("redis binding: missing key in request metadata".into())
            })?;
        match req.operation.as_str() {
            "create" => {
                let ttl = request_ttl(&req.metadata)?;
                self.write("set", key, Some(&req.data), ttl).await?;
                Ok(InvokeResponse::default())
            }
            "increment" => {
                let ttl = request_ttl(&req.metadata)?;
                self.write("increment", key, None, ttl).await?;
                Ok(InvokeResponse::default())
            }
            "delete" => {
                let key = key.as_str();
                self.client
                    .run("delete", Idempotence::Write, |mut conn| async move {
                        redis::cmd("DEL")
                            .arg(key)
                            .query_async::<()>(&mut conn)
                            .await
                    })
                    .await?;
                Ok(InvokeResponse::default())
            }
            "get" => {
                let (command, what, idempotence) =
                    if req.metadata.get("delete").is_some_and(|d| d == "true") {
                        ("GETDEL", "getdel", Idempotence::Write)
                    } else {
                        ("GET", "get", Idempotence::Read)
                    };
                let key = key.as_str();
                let value: Option<Vec<u8>> = self
                    .client
                    .run(what, idempotence, |mut conn| async move {
                        redis::cmd(command).arg(key).query_async(&mut conn).await
                    })
                    .await?;
                Ok(InvokeResponse {
                    data: Some(value.map(Bytes::from).unwrap_or_default()),
                    ..InvokeResponse::default()
                })
            }
            other => Err(Error::InvalidRequest(format!(
                "invalid operation type: {other}"
            ))),
        }
    }
}

/// The expiry in whole seconds asked for by request metadata `ttl` or `ttlInSeconds`: a
/// positive integer number of seconds, or a Go duration (a negative one counts as zero).
pub fn request_ttl(metadata: &HashMap<String, String>) -> Result<Option<u64>> {
    let find = |name: &str| {
        metadata
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let Some(raw) = find("ttl").or_else(|| find("ttlInSeconds")) else {
        return Ok(None);
    };
    // A Go duration first ("0" is one), then an integer number of seconds.
    let (negative, magnitude) = match raw.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, raw.strip_prefix('+').unwrap_or(raw)),
    };
    if (magnitude == "0" || magnitude.ends_with(|c: char| c.is_ascii_alphabetic()))
        && let Ok(d) = parse_duration(magnitude)
    {
        return Ok(Some(if negative { 0 } else { d.as_secs() }));
    }
    match raw.parse::<i64>() {
        Ok(secs) if secs > 0 => Ok(Some(secs.unsigned_abs())),
        Ok(_) => Err(Error::InvalidRequest(
            "ttl value must be higher than zero".into(),
        )),
        Err(_) => Err(Error::InvalidRequest(
            "ttl value must be a valid integer number of seconds or a duration such as 90s".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(pairs: &[(&str, &str)]) -> Result<Option<u64>> {
        let md = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        request_ttl(&md)
    }

    #[test]
    fn ttls_as_dapr_reads_them() {
        assert_eq!(ttl(&[]).unwrap(), None);
        assert_eq!(ttl(&[("ttlInSeconds", "")]).unwrap(), None);
        assert_eq!(ttl(&[("ttlInSeconds", "60")]).unwrap(), Some(60));
        assert_eq!(ttl(&[("TTLINSECONDS", "60")]).unwrap(), Some(60));
        assert_eq!(ttl(&[("ttl", "1m30s")]).unwrap(), Some(90));
        assert_eq!(ttl(&[("ttl", "1500ms")]).unwrap(), Some(1));
        assert_eq!(ttl(&[("ttl", "0")]).unwrap(), Some(0));
        assert_eq!(ttl(&[("ttl", "-5s")]).unwrap(), Some(0));
        // `ttl` wins over `ttlInSeconds`.
        assert_eq!(
            ttl(&[("ttl", "5"), ("ttlInSeconds", "7")]).unwrap(),
            Some(5)
        );
        for bad in ["-1", "abc", "1.5", "5 parsecs"] {
            assert!(
                matches!(ttl(&[("ttlInSeconds", bad)]), Err(Error::InvalidRequest(_))),
                "{bad}"
            );
        }
    }
}
