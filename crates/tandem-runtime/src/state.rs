//! The state building block: the only place state API logic lives.
//!
//! Front ends decode requests into these calls; this module finds the store, prefixes keys,
//! runs the component and maps its semantic errors onto the error table.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use tandem_components::Error as ComponentError;
use tandem_components::query::{Query, QueryResponse};
use tandem_components::state::{
    BulkGetItem, Concurrency, Consistency, DeleteRequest, ETag, GetRequest, RequestMetadata,
    SetRequest, StateItem, StateOptions, TransactionOperation, TransactionRequest,
};

use crate::components::{KeyPrefix, LiveComponents, StateEntry};
use crate::error::{ApiError, Detail, ErrorCode};
use crate::metrics::{ComponentFamily, Metrics};
use crate::resiliency::call_component;

const KEY_SEPARATOR: &str = "||";

/// One item of a save request, as decoded by a front end.
#[derive(Clone, Debug, Default)]
pub struct SaveItem {
    /// The key, unprefixed.
    pub key: String,
    /// The bytes to store.
    pub value: Bytes,
    /// Optional ETag for a conditional write.
    pub etag: Option<ETag>,
    /// Item metadata (already merged with request metadata).
    pub metadata: RequestMetadata,
    /// Concurrency and consistency.
    pub options: StateOptions,
}

/// One operation of a transaction, as decoded by a front end.
#[derive(Clone, Debug)]
pub enum TxOperation {
    /// `upsert`.
    Upsert(SaveItem),
    /// `delete`.
    Delete {
        /// The key, unprefixed.
        key: String,
        /// Optional ETag.
        etag: Option<ETag>,
        /// Item metadata.
        metadata: RequestMetadata,
        /// Concurrency and consistency.
        options: StateOptions,
    },
}

/// One key of a bulk delete, as decoded by a front end.
#[derive(Clone, Debug, Default)]
pub struct DeleteItem {
    /// The key, unprefixed.
    pub key: String,
    /// Optional ETag for a conditional delete.
    pub etag: Option<ETag>,
    /// Item metadata.
    pub metadata: RequestMetadata,
    /// Concurrency and consistency.
    pub options: StateOptions,
}

/// The state service.
pub struct StateService {
    components: Arc<LiveComponents>,
    app_id: String,
    metrics: Arc<Metrics>,
}

impl StateService {
    pub(crate) fn new(
        components: Arc<LiveComponents>,
        app_id: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            components,
            app_id,
            metrics,
        }
    }

    /// Awaits a call to store `store`, recording it as `operation`.
    async fn measured<T>(
        &self,
        store: &str,
        operation: &'static str,
        call: impl Future<Output = Result<T, ComponentError>>,
    ) -> Result<T, ComponentError> {
        let start = Instant::now();
        let res = call.await;
        self.metrics
            .component(ComponentFamily::State, store, operation, res.is_ok(), start);
        res
    }

    /// Store `name` of the current component set, with its policies.
    fn store(&self, name: &str) -> Result<Arc<StateEntry>, ApiError> {
        let components = self.components.load();
        if components.state.is_empty() {
            return Err(ApiError::new(
                ErrorCode::StateStoreNotConfigured,
                format!("state store {name} is not configured"),
            )
            .with_info("appID", self.app_id.clone()));
        }
        components.state.get(name).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::StateStoreNotFound,
                format!("state store {name} is not found"),
            )
            .with_info("appID", self.app_id.clone())
        })
    }

    /// Reads one key; `Ok(None)` when missing.
    pub async fn get(
        &self,
        store_name: &str,
        key: &str,
        consistency: &str,
        metadata: &RequestMetadata,
    ) -> Result<Option<StateItem>, ApiError> {
        let entry = self.store(store_name)?;
        let full = KeyBuf::new(store_name, &entry.prefix, key)?;
        let req = GetRequest {
            key: full.as_str(),
            consistency: Consistency::parse(consistency).unwrap_or_default(),
            metadata,
        };
        self.measured(
            store_name,
            "get",
            call_component(entry.outbound(), req, |req| entry.store.get(req)),
        )
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::StateGet,
                format!("fail to get {key} from state store {store_name}: {e}"),
            )
        })
    }

    /// Saves items (one `set`, or a `bulk_set` for several).
    pub async fn save(&self, store_name: &str, items: Vec<SaveItem>) -> Result<(), ApiError> {
        if items.is_empty() {
            return Ok(());
        }
        let entry = self.store(store_name)?;
        let mut reqs = Vec::with_capacity(items.len());
        for item in items {
            reqs.push(self.set_request(store_name, &entry.prefix, item)?);
        }
        let policy = entry.outbound();
        let start = Instant::now();
        let res = if reqs.len() == 1 {
            let req = reqs.pop().unwrap_or_default();
            call_component(policy, req, |req| entry.store.set(req)).await
        } else {
            call_component(policy, reqs, |reqs| entry.store.bulk_set(reqs)).await
        };
        self.metrics.component(
            ComponentFamily::State,
            store_name,
            "set",
            res.is_ok(),
            start,
        );
        res.map_err(|e| {
            let code = match e {
                ComponentError::ETagMismatch => ErrorCode::StateSaveETagMismatch,
                ComponentError::ETagInvalid(_) => ErrorCode::StateSaveETagInvalid,
                _ => ErrorCode::StateSave,
            };
            ApiError::new(
                code,
                format!("failed saving state in state store {store_name}: {e}"),
            )
        })
    }

    fn set_request(
        &self,
        store_name: &str,
        prefix: &KeyPrefix,
        item: SaveItem,
    ) -> Result<SetRequest, ApiError> {
        if item.key.is_empty() {
            return Err(ApiError::new(
                ErrorCode::MalformedRequest,
                "\"key\" is a required field",
            ));
        }
        Ok(SetRequest {
            key: prefixed(store_name, prefix, &item.key)?,
            value: item.value,
            etag: item.etag,
            metadata: item.metadata,
            options: item.options,
        })
    }

    /// Deletes one key.
    pub async fn delete(
        &self,
        store_name: &str,
        key: &str,
        etag: Option<ETag>,
        options: StateOptions,
        metadata: RequestMetadata,
    ) -> Result<(), ApiError> {
        let entry = self.store(store_name)?;
        let req = DeleteRequest {
            key: prefixed(store_name, &entry.prefix, key)?,
            etag,
            metadata,
            options,
        };
        self.measured(
            store_name,
            "delete",
            call_component(entry.outbound(), req, |req| entry.store.delete(req)),
        )
        .await
        .map_err(|e| {
            let code = match e {
                ComponentError::ETagMismatch => ErrorCode::StateDeleteETagMismatch,
                ComponentError::ETagInvalid(_) => ErrorCode::StateDeleteETagInvalid,
                _ => ErrorCode::StateDelete,
            };
            ApiError::new(code, format!("failed deleting state with key {key}: {e}"))
        })
    }

    /// Deletes several keys (gRPC `DeleteBulkState`; HTTP has no such call).
    pub async fn bulk_delete(
        &self,
        store_name: &str,
        items: Vec<DeleteItem>,
    ) -> Result<(), ApiError> {
        let entry = self.store(store_name)?;
        if items.is_empty() {
            return Ok(());
        }
        let mut reqs = Vec::with_capacity(items.len());
        for item in items {
            reqs.push(DeleteRequest {
                key: prefixed(store_name, &entry.prefix, &item.key)?,
                etag: item.etag,
                metadata: item.metadata,
                options: item.options,
            });
        }
        self.measured(
            store_name,
            "bulk_delete",
            call_component(entry.outbound(), reqs, |reqs| entry.store.bulk_delete(reqs)),
        )
        .await
        .map_err(|e| {
            let code = match e {
                ComponentError::ETagMismatch => ErrorCode::StateDeleteETagMismatch,
                ComponentError::ETagInvalid(_) => ErrorCode::StateDeleteETagInvalid,
                _ => ErrorCode::StateBulkDelete,
            };
            ApiError::new(
                code,
                format!("failed deleting state in state store {store_name}: {e}"),
            )
        })
    }

    /// Reads several keys; the answer carries the keys as requested (unprefixed).
    pub async fn bulk_get(
        &self,
        store_name: &str,
        keys: &[String],
        metadata: &RequestMetadata,
    ) -> Result<Vec<BulkGetItem>, ApiError> {
        let entry = self.store(store_name)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys
            .iter()
            .map(|k| prefixed(store_name, &entry.prefix, k))
            .collect::<Result<_, _>>()?;
        let mut items = self
            .measured(
                store_name,
                "bulk_get",
                call_component(entry.outbound(), (), |()| {
                    entry.store.bulk_get(&full, metadata)
                }),
            )
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::StateBulkGet,
                    format!("failed getting state in state store {store_name}: {e}"),
                )
            })?;
        for item in &mut items {
            if let Some(pos) = full.iter().position(|f| *f == item.key) {
                item.key.clone_from(&keys[pos]);
            }
        }
        Ok(items)
    }

    /// Runs a transaction.
    pub async fn transaction(
        &self,
        store_name: &str,
        operations: Vec<TxOperation>,
        metadata: RequestMetadata,
    ) -> Result<(), ApiError> {
        let entry = self.store(store_name)?;
        let Some(tx) = entry.store.transactional() else {
            return Err(ApiError::new(
                ErrorCode::StateTransactionsNotSupported,
                format!("state store {store_name} doesn't support transactions"),
            )
            .with_detail(Detail::Help {
                description: "Check the list of state stores and the features they support",
                url: "https://docs.dapr.io/reference/components-reference/supported-state-stores/",
            })
            .with_detail(resource_info(store_name)));
        };
        if operations.is_empty() {
            return Ok(());
        }
        if let Some(max) = tx.max_operations()
            && operations.len() > max
        {
            return Err(ApiError::new(
                    ErrorCode::StateTooManyTransactions,
                    format!(
                        "the transaction contains {} operations, which is more than what the state store supports: {max}",
                        operations.len()
                    ),
                )
                .with_detail(resource_info(store_name))
                .with_info("currentOpsTransaction", operations.len().to_string())
                .with_info("maxOpsPerTransaction", max.to_string()));
        }
        let mut ops = Vec::with_capacity(operations.len());
        for op in operations {
            ops.push(match op {
                TxOperation::Upsert(item) => TransactionOperation::Upsert(self.set_request(
                    store_name,
                    &entry.prefix,
                    item,
                )?),
                TxOperation::Delete {
                    key,
                    etag,
                    metadata,
                    options,
                } => {
                    if key.is_empty() {
                        return Err(ApiError::new(
                            ErrorCode::MalformedRequest,
                            "\"key\" is a required field",
                        ));
                    }
                    TransactionOperation::Delete(DeleteRequest {
                        key: prefixed(store_name, &entry.prefix, &key)?,
                        etag,
                        metadata,
                        options,
                    })
                }
            });
        }
        let req = TransactionRequest {
            operations: ops,
            metadata,
        };
        self.measured(
            store_name,
            "transaction",
            call_component(entry.outbound(), req, |req| tx.multi(req)),
        )
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::StateTransaction,
                format!("error while executing state transaction: {e}"),
            )
        })
    }
}

impl StateService {
    /// Runs a state query (`QUERY_API`) over this app's keys; result keys come back unprefixed.
    pub async fn query(
        &self,
        store_name: &str,
        document: &[u8],
        metadata: &RequestMetadata,
    ) -> Result<QueryResponse, ApiError> {
        let entry = self.store(store_name)?;
        let Some(querier) = entry.store.querier() else {
            return Err(ApiError::new(
                ErrorCode::StateQueryNotSupported,
                "state store does not support querying",
            )
            .with_detail(resource_info(store_name)));
        };
        let failed = |detail: String| {
            ApiError::new(
                ErrorCode::StateQuery,
                format!("state store {store_name} query failed: {detail}"),
            )
            .with_detail(resource_info(store_name))
        };
        let mut query = Query::parse(document).map_err(|e| failed(e.to_string()))?;
        query.key_prefix = match &entry.prefix {
            KeyPrefix::None => String::new(),
            KeyPrefix::Prefix(p) => format!("{p}{KEY_SEPARATOR}"),
        };
        let mut resp = self
            .measured(
                store_name,
                "query",
                call_component(entry.outbound(), (), |()| querier.query(&query, metadata)),
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        let cut = query.key_prefix.len();
        for item in &mut resp.results {
            item.key.drain(..cut.min(item.key.len()));
        }
        Ok(resp)
    }
}

fn resource_info(store_name: &str) -> Detail {
    Detail::ResourceInfo {
        resource_type: "state",
        resource_name: store_name.to_owned(),
        description: String::new(),
    }
}

/// A prefixed key built on the stack when short, so a read allocates nothing for it.
enum KeyBuf {
    Stack([u8; 160], usize),
    Heap(String),
}

impl KeyBuf {
    fn new(store_name: &str, prefix: &KeyPrefix, key: &str) -> Result<Self, ApiError> {
        let KeyPrefix::Prefix(p) = prefix else {
            return prefixed(store_name, prefix, key).map(KeyBuf::Heap);
        };
        let len = p.len() + KEY_SEPARATOR.len() + key.len();
        if len > 160 || has_separator(key) {
            return prefixed(store_name, prefix, key).map(KeyBuf::Heap);
        }
        let mut buf = [0u8; 160];
        let mut at = 0;
        for part in [p.as_bytes(), KEY_SEPARATOR.as_bytes(), key.as_bytes()] {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(KeyBuf::Stack(buf, len))
    }

    fn as_str(&self) -> &str {
        match self {
            // Built from whole `&str`s, so always UTF-8.
            KeyBuf::Stack(buf, len) => std::str::from_utf8(&buf[..*len]).unwrap_or_default(),
            KeyBuf::Heap(s) => s,
        }
    }
}

/// Whether `key` holds [`KEY_SEPARATOR`]: a scan for its two bytes, where `str::contains`
/// would set up a general substring search for every key read or written.
fn has_separator(key: &str) -> bool {
    key.as_bytes()
        .windows(2)
        .any(|w| w == KEY_SEPARATOR.as_bytes())
}

/// The stored form of `key`: `<prefix>||<key>`, or the key itself with `keyPrefix: none`.
fn prefixed(store_name: &str, prefix: &KeyPrefix, key: &str) -> Result<String, ApiError> {
    if has_separator(key) {
        let msg = format!("input key/keyPrefix '{key}' can't contain '{KEY_SEPARATOR}'");
        return Err(ApiError::new(ErrorCode::StateIllegalKey, msg.clone())
            .with_detail(Detail::BadRequest {
                field: key.to_owned(),
                description: msg,
            })
            .with_detail(resource_info(store_name)));
    }
    Ok(match prefix {
        KeyPrefix::None => key.to_owned(),
        KeyPrefix::Prefix(p) => {
            let mut full = String::with_capacity(p.len() + KEY_SEPARATOR.len() + key.len());
            full.push_str(p);
            full.push_str(KEY_SEPARATOR);
            full.push_str(key);
            full
        }
    })
}

/// Conversions from the gRPC messages.
/// gRPC `StateOptions` (absent: last-write, eventual).
pub fn proto_options(o: Option<common::StateOptions>) -> StateOptions {
    let Some(o) = o else {
        return StateOptions::default();
    };
    StateOptions {
        concurrency: if o.concurrency == 1 {
            Concurrency::FirstWrite
        } else {
            Concurrency::LastWrite
        },
        consistency: if o.consistency == 2 {
            Consistency::Strong
        } else {
            Consistency::Eventual
        },
    }
}

/// A gRPC `Etag`.
pub fn proto_etag(e: Option<common::Etag>) -> Option<ETag> {
    e.map(|e| ETag::from(e.value))
}

/// A gRPC `StateItem` as a save (used by the gRPC API and by gRPC apps' binding answers).
/// Item metadata `contentType: application/json` asks for a JSON value, which is checked.
pub fn save_item_from_proto(item: common::StateItem) -> std::result::Result<SaveItem, ApiError> {
    let json = item
        .metadata
        .get("contentType")
        .is_some_and(|c| c.eq_ignore_ascii_case("application/json"));
    if json {
        serde_json::from_slice::<serde::de::IgnoredAny>(&item.value).map_err(|e| {
            ApiError::malformed(format!(
                "the value of key {} is not JSON although its contentType is application/json: {e}",
                item.key
            ))
        })?;
    }
    Ok(SaveItem {
        key: item.key,
        value: item.value.into(),
        etag: proto_etag(item.etag),
        metadata: item.metadata,
        options: proto_options(item.options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixing() {
        let p = KeyPrefix::Prefix("app".into());
        assert_eq!(prefixed("s", &p, "k").unwrap(), "app||k");
        assert_eq!(prefixed("s", &KeyPrefix::None, "k").unwrap(), "k");
        assert_eq!(KeyBuf::new("s", &p, "k").unwrap().as_str(), "app||k");
        let long = "x".repeat(300);
        assert_eq!(
            KeyBuf::new("s", &p, &long).unwrap().as_str(),
            format!("app||{long}")
        );
        for bad in ["a||b", "||", "a||", "||b", "a|||b"] {
            assert!(KeyBuf::new("s", &p, bad).is_err(), "{bad}");
            assert!(prefixed("s", &KeyPrefix::None, bad).is_err(), "{bad}");
        }
        for good in ["", "|", "a|b", "a|b|c", "|a|"] {
            assert!(KeyBuf::new("s", &p, good).is_ok(), "{good}");
        }
        let err = prefixed("s", &p, "a||b").unwrap_err();
        assert_eq!(err.code, ErrorCode::StateIllegalKey);
        assert_eq!(err.code.code(), "ERR_MALFORMED_REQUEST");
    }
}
