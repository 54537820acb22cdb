//! `/v1.0/publish/...` and bulk publish.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use percent_encoding::percent_decode_str;
use serde_json::Value;
use tandem_runtime::pubsub::cloudevent::{is_binary, is_json};
use tandem_runtime::pubsub::{BulkEntry, TraceContext};
use tandem_runtime::{ApiError, ErrorCode};

use super::body::{Query, read};
use super::error::{HttpError, error_body};
use super::{ApiState, empty};

fn trace(headers: &HeaderMap) -> TraceContext {
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    TraceContext {
        traceparent: get("traceparent"),
        tracestate: get("tracestate"),
    }
}

/// Splits `<prefix><pubsub>/<topic...>` out of the path (the topic may contain `/`).
fn target(uri: &Uri, prefix: &str) -> (String, String) {
    let rest = uri.path().strip_prefix(prefix).unwrap_or_default();
    let (pubsub, topic) = rest.split_once('/').unwrap_or((rest, ""));
    (
        percent_decode_str(pubsub).decode_utf8_lossy().into_owned(),
        percent_decode_str(topic).decode_utf8_lossy().into_owned(),
    )
}

/// `POST|PUT /v1.0/publish/{pubsub}/{topic...}`.
pub(crate) async fn publish(
    State(api): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let (pubsub, topic) = target(&uri, "/v1.0/publish/");
    let body = read(&headers, body, api.max_body_size).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let q = Query::parse(uri.query());
    api.runtime
        .pubsub
        .publish(
            &pubsub,
            &topic,
            body,
            content_type,
            q.metadata,
            &trace(&headers),
        )
        .await?;
    Ok(empty())
}

fn entries_error(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn decode_entries(body: &[u8]) -> Result<Vec<BulkEntry>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        entries_error(
            ErrorCode::PubSubUnmarshalEvents,
            format!("error when unmarshaling the request for topic: {e}"),
        )
    })?;
    let Value::Array(items) = v else {
        return Err(entries_error(
            ErrorCode::PubSubUnmarshalEvents,
            "error when unmarshaling the request: expected a JSON array",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(obj) = item else {
            return Err(entries_error(
                ErrorCode::PubSubUnmarshalEvents,
                "error when unmarshaling the request: entries must be objects",
            ));
        };
        let get = |k: &str| {
            obj.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        };
        let entry_id = get("entryId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let content_type = get("contentType")
            .and_then(Value::as_str)
            .unwrap_or("application/json")
            .to_owned();
        let metadata: HashMap<String, String> = match get("metadata") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect(),
            _ => HashMap::new(),
        };
        let event = get("event").cloned().unwrap_or(Value::Null);
        let mismatch = || {
            entries_error(
                ErrorCode::PubSubMarshalEnvelope,
                format!(
                    "error when marshaling the event of entry {entry_id}: the event does not match its content type {content_type}"
                ),
            )
        };
        let bytes = if is_binary(&content_type) {
            let Value::String(s) = &event else {
                return Err(mismatch());
            };
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| mismatch())?,
            )
        } else if is_json(&content_type)
            || content_type.eq_ignore_ascii_case("application/cloudevents+json")
        {
            Bytes::from(serde_json::to_vec(&event).map_err(|_| mismatch())?)
        } else {
            let Value::String(s) = event else {
                return Err(mismatch());
            };
            Bytes::from(s)
        };
        out.push(BulkEntry {
            entry_id,
            event: bytes,
            content_type,
            metadata,
        });
    }
    Ok(out)
}

/// `POST|PUT /v1.0/publish/bulk/{pubsub}/{topic...}` (and the alpha1 path).
pub(crate) async fn bulk_publish(
    State(api): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let prefix = if uri.path().starts_with("/v1.0-alpha1/") {
        "/v1.0-alpha1/publish/bulk/"
    } else {
        "/v1.0/publish/bulk/"
    };
    let (pubsub, topic) = target(&uri, prefix);
    let body = read(&headers, body, api.max_body_size).await?;
    let entries = decode_entries(&body)?;
    let q = Query::parse(uri.query());
    match api
        .runtime
        .pubsub
        .bulk_publish(&pubsub, &topic, entries, q.metadata, &trace(&headers))
        .await
    {
        Ok(()) => Ok(empty()),
        Err((err, failed)) if failed.is_empty() => Err(err.into()),
        Err((err, failed)) => {
            tandem_runtime::metrics::record_error_code(err.code);
            let failed_json: Vec<Value> = failed
                .iter()
                .map(|f| serde_json::json!({"entryId": f.entry_id, "error": f.error}))
                .collect();
            let body =
                serde_json::json!({"failedEntries": failed_json, "errorCode": err.code.code()});
            let text = serde_json::to_string(&body).unwrap_or_default();
            let mut resp = (
                StatusCode::from_u16(err.code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                text.clone(),
            )
                .into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::try_from(text) {
                h.insert("metadata.responsedata", v);
            }
            if let Ok(v) =
                HeaderValue::try_from(String::from_utf8_lossy(&error_body(&err)).into_owned())
            {
                h.insert("metadata.error", v);
            }
            Ok(resp)
        }
    }
}
