//! The state store contract (`state.*` components).
//!
//! Keys reaching a store are already prefixed by the runtime (`<appid>||<key>`); stores treat
//! them as opaque. Values are raw bytes. Optional abilities are reached through accessors
//! ([`StateStore::transactional`]) so that what a store declares is what it implements.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

/// Per-request metadata (`metadata.*` query parameters, item `metadata`).
pub type RequestMetadata = HashMap<String, String>;

/// The request metadata key holding a time-to-live in seconds.
pub const TTL_METADATA_KEY: &str = "ttlInSeconds";
/// The response metadata key holding the expiry time (RFC 3339) of an item with a TTL.
pub const TTL_EXPIRE_TIME_KEY: &str = "ttlExpireTime";

/// An entity tag: an opaque version string.
///
/// Backed by [`Bytes`] so that handing it to an HTTP header costs no copy.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ETag(Bytes);

impl ETag {
    /// A fresh random (UUID v4) ETag, the format of the embedded stores.
    pub fn random() -> Self {
        Self::from(uuid::Uuid::new_v4().to_string())
    }

    /// The ETag as text.
    pub fn as_str(&self) -> &str {
        // Constructed only from `String`/`&str`, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The ETag's bytes, cheap to clone.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<String> for ETag {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&str> for ETag {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ETag({:?})", self.as_str())
    }
}

/// Write concurrency: `first-write` makes every write conditional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// The last write wins unless an ETag is given (the default).
    #[default]
    LastWrite,
    /// A write without an ETag succeeds only if the key does not exist.
    FirstWrite,
}

impl Concurrency {
    /// Parses Dapr's spelling; empty means the default.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "" | "last-write" => Some(Self::LastWrite),
            "first-write" => Some(Self::FirstWrite),
            _ => None,
        }
    }
}

/// Read/write consistency hint passed to the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Eventual consistency (the default).
    #[default]
    Eventual,
    /// Strong consistency.
    Strong,
}

impl Consistency {
    /// Parses Dapr's spelling; empty means the default.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "" | "eventual" => Some(Self::Eventual),
            "strong" => Some(Self::Strong),
            _ => None,
        }
    }
}

/// Options of a write or delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateOptions {
    /// `first-write` or `last-write`.
    pub concurrency: Concurrency,
    /// `eventual` or `strong`.
    pub consistency: Consistency,
}

/// A single-key read.
#[derive(Clone, Copy, Debug)]
pub struct GetRequest<'a> {
    /// The (prefixed) key.
    pub key: &'a str,
    /// Consistency hint.
    pub consistency: Consistency,
    /// Request metadata.
    pub metadata: &'a RequestMetadata,
}

/// A stored value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateItem {
    /// The raw stored bytes.
    pub value: Bytes,
    /// The current ETag, for stores with the `ETAG` feature.
    pub etag: Option<ETag>,
    /// Response metadata such as `ttlExpireTime`.
    pub metadata: HashMap<String, String>,
}

/// A write.
#[derive(Clone, Debug, Default)]
pub struct SetRequest {
    /// The (prefixed) key.
    pub key: String,
    /// The bytes to store.
    pub value: Bytes,
    /// When set, the write succeeds only if the stored ETag matches.
    pub etag: Option<ETag>,
    /// Request metadata (`ttlInSeconds`, `contentType`, …).
    pub metadata: RequestMetadata,
    /// Concurrency and consistency.
    pub options: StateOptions,
}

/// A delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteRequest {
    /// The (prefixed) key.
    pub key: String,
    /// When set, the delete succeeds only if the stored ETag matches.
    pub etag: Option<ETag>,
    /// Request metadata.
    pub metadata: RequestMetadata,
    /// Concurrency and consistency.
    pub options: StateOptions,
}

/// One key of a bulk read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BulkGetItem {
    /// The key as requested.
    pub key: String,
    /// The value, or `None` when the key does not exist (or failed).
    pub item: Option<StateItem>,
    /// A per-key error message.
    pub error: Option<String>,
}

/// One operation of a transaction.
#[derive(Clone, Debug)]
pub enum TransactionOperation {
    /// Insert or update.
    Upsert(SetRequest),
    /// Delete.
    Delete(DeleteRequest),
}

impl TransactionOperation {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Self::Upsert(r) => &r.key,
            Self::Delete(r) => &r.key,
        }
    }
}

/// An atomic batch of writes and deletes.
#[derive(Clone, Debug, Default)]
pub struct TransactionRequest {
    /// The operations, applied in order, all or none.
    pub operations: Vec<TransactionOperation>,
    /// Request metadata for the whole transaction.
    pub metadata: RequestMetadata,
}

/// Behaviours a state store declares, reported by the metadata API as capabilities.
///
/// `TRANSACTIONAL` and `QUERY_API` are not listed here: they follow from the accessors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFeature {
    /// Conditional writes and deletes with ETags, and `first-write`.
    ETag,
    /// Per-item time-to-live (`ttlInSeconds`).
    Ttl,
    /// Deleting every key with a prefix.
    DeleteWithPrefix,
    /// Partition keys.
    PartitionKey,
    /// Key pattern listing.
    KeysLike,
}

impl StateFeature {
    /// Dapr's capability string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ETag => "ETAG",
            Self::Ttl => "TTL",
            Self::DeleteWithPrefix => "DELETE_WITH_PREFIX",
            Self::PartitionKey => "PARTITION_KEY",
            Self::KeysLike => "KEYS_LIKE",
        }
    }
}

/// A state store component, built once from its metadata and shared as `Arc<dyn StateStore>`.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The behaviours this store honours.
    fn features(&self) -> &'static [StateFeature];

    /// Reads one key; `Ok(None)` when it does not exist (or has expired).
    async fn get(&self, req: GetRequest<'_>) -> Result<Option<StateItem>>;

    /// Writes one key.
    async fn set(&self, req: SetRequest) -> Result<()>;

    /// Deletes one key. Deleting a missing key without an ETag succeeds.
    async fn delete(&self, req: DeleteRequest) -> Result<()>;

    /// Reads several keys. The default reads them one by one, in order.
    async fn bulk_get(
        &self,
        keys: &[String],
        metadata: &RequestMetadata,
    ) -> Result<Vec<BulkGetItem>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let req = GetRequest {
                key,
                consistency: Consistency::default(),
                metadata,
            };
            let (item, error) = match self.get(req).await {
                Ok(item) => (item, None),
                Err(err) => (None, Some(err.to_string())),
            };
            out.push(BulkGetItem {
                key: key.clone(),
                item,
                error,
            });
        }
        Ok(out)
    }

    /// Writes several keys. The default writes them one by one and stops at the first error.
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<()> {
        for req in reqs {
            self.set(req).await?;
        }
        Ok(())
    }

    /// Deletes several keys. The default deletes them one by one and stops at the first error.
    async fn bulk_delete(&self, reqs: Vec<DeleteRequest>) -> Result<()> {
        for req in reqs {
            self.delete(req).await?;
        }
        Ok(())
    }

    /// The transaction ability, when the store has one.
    fn transactional(&self) -> Option<&dyn Transactional> {
        None
    }

    /// The query ability (`QUERY_API`), when the store has one.
    fn querier(&self) -> Option<&dyn crate::query::Querier> {
        None
    }

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Atomic multi-key writes (`TRANSACTIONAL`).
#[async_trait]
pub trait Transactional: Send + Sync {
    /// The largest number of operations one transaction may hold, if limited.
    fn max_operations(&self) -> Option<usize> {
        None
    }

    /// Applies every operation, or none of them.
    async fn multi(&self, req: TransactionRequest) -> Result<()>;
}

/// The capability strings of a store, as `GET /v1.0/metadata` lists them.
pub fn capabilities(store: &dyn StateStore) -> Vec<&'static str> {
    let features = store.features();
    let mut caps: Vec<&'static str> = features.iter().map(|f| f.as_str()).collect();
    let transactional = store.transactional().is_some();
    if transactional {
        caps.push("TRANSACTIONAL");
    }
    if store.querier().is_some() {
        caps.push("QUERY_API");
    }
    if transactional && features.contains(&StateFeature::ETag) {
        caps.push("ACTOR");
    }
    caps
}

/// Reads `ttlInSeconds` from request metadata.
///
/// `Ok(None)` when absent or not positive (no expiry); an error when it is not an integer.
pub fn ttl_from_metadata(metadata: &RequestMetadata) -> Result<Option<Duration>> {
    let Some(raw) = metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TTL_METADATA_KEY))
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let secs: i64 = raw.trim().parse().map_err(|_| {
        Error::InvalidRequest(format!(
            "incorrect value for metadata '{TTL_METADATA_KEY}': expected an integer number of seconds"
        ))
    })?;
    if secs < -1 {
        return Err(Error::InvalidRequest(format!(
            "incorrect value for metadata '{TTL_METADATA_KEY}': must be -1 or greater"
        )));
    }
    Ok((secs > 0).then(|| Duration::from_secs(secs as u64)))
}

/// Formats an expiry time the way Dapr reports `ttlExpireTime` (RFC 3339, UTC).
pub fn format_expire_time(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Checks a write against the stored ETag, per Dapr's concurrency rules.
///
/// `current` is the stored item's ETag (`None` when the key does not exist).
pub fn check_etag(
    current: Option<&ETag>,
    requested: Option<&ETag>,
    concurrency: Concurrency,
) -> Result<()> {
    match (requested, current) {
        (Some(want), Some(have)) if want == have => Ok(()),
        (Some(_), _) => Err(Error::ETagMismatch),
        (None, Some(_)) if concurrency == Concurrency::FirstWrite => Err(Error::ETagMismatch),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        let mut m = RequestMetadata::new();
        assert_eq!(ttl_from_metadata(&m).unwrap(), None);
        m.insert("ttlInSeconds".into(), "5".into());
        assert_eq!(ttl_from_metadata(&m).unwrap(), Some(Duration::from_secs(5)));
        m.insert("ttlInSeconds".into(), "-1".into());
        assert_eq!(ttl_from_metadata(&m).unwrap(), None);
        m.insert("ttlInSeconds".into(), "soon".into());
        assert!(ttl_from_metadata(&m).is_err());
    }

    #[test]
    fn etag_rules() {
        let a = ETag::from("a");
        let b = ETag::from("b");
        assert!(check_etag(Some(&a), Some(&a), Concurrency::LastWrite).is_ok());
        assert!(check_etag(Some(&a), Some(&b), Concurrency::LastWrite).is_err());
        assert!(check_etag(None, Some(&b), Concurrency::LastWrite).is_err());
        assert!(check_etag(Some(&a), None, Concurrency::LastWrite).is_ok());
        assert!(check_etag(Some(&a), None, Concurrency::FirstWrite).is_err());
        assert!(check_etag(None, None, Concurrency::FirstWrite).is_ok());
    }
}
