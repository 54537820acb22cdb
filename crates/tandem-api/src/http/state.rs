//! `/v1.0/state/...`: extract, call [`tandem_runtime::state::StateService`], render.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::value::RawValue;
use tandem_components::state::{Concurrency, Consistency, ETag, StateOptions};
use tandem_runtime::ErrorCode;
use tandem_runtime::state::{SaveItem, TxOperation};
use tandem_runtime::{ApiError, Runtime};

use super::body::{Query, read};
use super::error::HttpError;
use super::json::{RawBulkGet, RawItem, RawItems, RawTransaction, value_bytes};
use super::{ApiState, empty};

type Result<T> = std::result::Result<T, HttpError>;

fn options(concurrency: &str, consistency: &str) -> StateOptions {
    StateOptions {
        concurrency: Concurrency::parse(concurrency).unwrap_or_default(),
        consistency: Consistency::parse(consistency).unwrap_or_default(),
    }
}

fn save_item(
    body: &Bytes,
    item: RawItem<'_>,
    query_meta: &std::collections::HashMap<String, String>,
) -> SaveItem {
    let mut metadata = item.metadata;
    for (k, v) in query_meta {
        metadata.insert(k.clone(), v.clone());
    }
    SaveItem {
        value: value_bytes(body, item.value),
        key: item.key,
        etag: item.etag.map(ETag::from),
        metadata,
        options: options(&item.concurrency, &item.consistency),
    }
}

/// `GET /v1.0/state/{store}/{key}`: the hot read path. Store and key are sliced out of the
/// request path (decoded only when escaped) rather than extracted into new strings.
pub(crate) async fn get(State(api): State<ApiState>, uri: Uri) -> Result<Response> {
    let rest = uri.path().strip_prefix("/v1.0/state/").unwrap_or_default();
    let (store, key) = rest.split_once('/').unwrap_or((rest, ""));
    let store = percent_decode_str(store).decode_utf8_lossy();
    let key = percent_decode_str(key).decode_utf8_lossy();
    get_key(&api.runtime, &store, &key, &uri).await
}

async fn get_key(rt: &Runtime, store: &str, key: &str, uri: &Uri) -> Result<Response> {
    let q = Query::parse(uri.query());
    let Some(item) = rt
        .state
        .get(store, key, &q.consistency, &q.metadata)
        .await?
    else {
        return Ok(empty());
    };
    let mut resp = Response::new(Body::from(item.value));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = item
        .etag
        .and_then(|etag| HeaderValue::from_maybe_shared(etag.bytes().clone()).ok())
    {
        headers.insert(header::ETAG, v);
    }
    for (k, v) in item.metadata {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(format!("metadata.{k}")),
            HeaderValue::try_from(v),
        ) {
            headers.insert(name, value);
        }
    }
    Ok(resp)
}

/// `POST|PUT /v1.0/state/{store}`.
pub(crate) async fn save(
    State(api): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read(&headers, body, api.max_body_size).await?;
    let items: RawItems<'_> = serde_json::from_slice(&body).map_err(ApiError::malformed)?;
    let q = Query::parse(uri.query());
    let items: Vec<SaveItem> = items
        .0
        .into_iter()
        .map(|i| save_item(&body, i, &q.metadata))
        .collect();
    api.runtime.state.save(&store, items).await?;
    Ok(empty())
}

/// `DELETE /v1.0/state/{store}/{key}`.
pub(crate) async fn delete(
    State(api): State<ApiState>,
    Path((store, key)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    delete_key(&api.runtime, &store, &key, &uri, &headers).await
}

async fn delete_key(
    rt: &Runtime,
    store: &str,
    key: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response> {
    let q = Query::parse(uri.query());
    let etag = headers
        .get(header::IF_MATCH)
        .map(|v| ETag::from(String::from_utf8_lossy(v.as_bytes()).into_owned()));
    rt.state
        .delete(
            store,
            key,
            etag,
            options(&q.concurrency, &q.consistency),
            q.metadata,
        )
        .await?;
    Ok(empty())
}

#[derive(Serialize)]
struct BulkItemOut<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a std::collections::HashMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Stored bytes as embedded JSON. Values that are not JSON (written raw over gRPC) become a
/// JSON string (or base64 text if not UTF-8) rather than an empty response as in Dapr.
fn embed(value: &[u8]) -> Option<Box<RawValue>> {
    if let Ok(raw) = serde_json::from_slice::<&RawValue>(value) {
        return Some(raw.to_owned());
    }
    let text = match std::str::from_utf8(value) {
        Ok(s) => serde_json::to_string(s).ok()?,
        Err(_) => {
            use base64::Engine;
            serde_json::to_string(&base64::engine::general_purpose::STANDARD.encode(value)).ok()?
        }
    };
    RawValue::from_string(text).ok()
}

/// `POST|PUT /v1.0/state/{store}/bulk`.
pub(crate) async fn bulk(
    State(api): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read(&headers, body, api.max_body_size).await?;
    let req: RawBulkGet = serde_json::from_slice(&body).map_err(ApiError::malformed)?;
    let mut metadata = req.metadata;
    metadata.extend(Query::parse(uri.query()).metadata);
    let items = api
        .runtime
        .state
        .bulk_get(&store, &req.keys, &metadata)
        .await?;
    let out: Vec<BulkItemOut<'_>> = items
        .iter()
        .map(|i| BulkItemOut {
            key: &i.key,
            data: i.item.as_ref().and_then(|it| embed(&it.value)),
            etag: i
                .item
                .as_ref()
                .and_then(|it| it.etag.as_ref())
                .map(ETag::as_str),
            metadata: i
                .item
                .as_ref()
                .map(|it| &it.metadata)
                .filter(|m| !m.is_empty()),
            error: i.error.as_deref().filter(|e| !e.is_empty()),
        })
        .collect();
    let json = serde_json::to_vec(&out).map_err(|e| {
        ApiError::new(
            ErrorCode::StateBulkGet,
            format!("failed encoding the answer: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// `POST|PUT /v1.0/state/{store}/transaction`.
pub(crate) async fn transaction(
    State(api): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read(&headers, body, api.max_body_size).await?;
    let tx: RawTransaction<'_> = serde_json::from_slice(&body).map_err(ApiError::malformed)?;
    let q = Query::parse(uri.query());
    let mut metadata = tx.metadata;
    metadata.extend(q.metadata.clone());
    let mut ops = Vec::with_capacity(tx.operations.len());
    for op in tx.operations {
        ops.push(match op.operation.as_str() {
            "upsert" => TxOperation::Upsert(save_item(&body, op.request, &q.metadata)),
            "delete" => TxOperation::Delete {
                options: options(&op.request.concurrency, &op.request.consistency),
                key: op.request.key,
                etag: op.request.etag.map(ETag::from),
                metadata: op.request.metadata,
            },
            other => {
                return Err(ApiError::new(
                    ErrorCode::NotSupportedStateOperation,
                    format!("operation type {other} not supported"),
                )
                .into());
            }
        });
    }
    api.runtime.state.transaction(&store, ops, metadata).await?;
    Ok(empty())
}

/// `GET /v1.0/state/{store}/bulk` and `/transaction` read the key named so.
pub(crate) async fn get_reserved(
    State(api): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
) -> Result<Response> {
    let key = reserved_key(&uri);
    get_key(&api.runtime, &store, key, &uri).await
}

/// `DELETE /v1.0/state/{store}/bulk` and `/transaction` delete the key named so.
pub(crate) async fn delete_reserved(
    State(api): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response> {
    let key = reserved_key(&uri);
    delete_key(&api.runtime, &store, key, &uri, &headers).await
}

fn reserved_key(uri: &Uri) -> &'static str {
    if uri.path().trim_end_matches('/').ends_with("/bulk") {
        "bulk"
    } else {
        "transaction"
    }
}

#[derive(Serialize)]
struct QueryItemOut<'a> {
    key: &'a str,
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'a str>,
}

#[derive(Serialize)]
struct QueryOut<'a> {
    results: Vec<QueryItemOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

/// `POST|PUT /v1.0-alpha1/state/{store}/query`.
pub(crate) async fn query(
    State(api): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read(&headers, body, api.max_body_size).await?;
    let q = Query::parse(uri.query());
    let resp = api.runtime.state.query(&store, &body, &q.metadata).await?;
    if resp.results.is_empty() {
        return Ok(empty());
    }
    let out = QueryOut {
        results: resp
            .results
            .iter()
            .map(|r| QueryItemOut {
                key: &r.key,
                data: embed(&r.data),
                etag: r.etag.as_ref().map(ETag::as_str),
            })
            .collect(),
        token: resp.token.as_deref(),
    };
    let json = serde_json::to_vec(&out).map_err(|e| {
        ApiError::new(
            ErrorCode::StateQuery,
            format!("failed encoding the answer: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}
