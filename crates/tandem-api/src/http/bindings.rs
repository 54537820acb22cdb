//! `POST|PUT /v1.0/bindings/{name}`: output bindings.
//!
//! Body `{"data": <any JSON>, "metadata": {...}, "operation": "..."}` (field names matched
//! case-insensitively, as Go decodes them). `data` reaches the binding JSON-encoded, exactly as
//! written (a JSON string stays a quoted string). The answer is the binding's bytes (200, JSON
//! content type unless the binding names one) or 204, with each response metadata entry as a
//! `metadata.<key>` header.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::value::RawValue;
use tandem_components::bindings::InvokeRequest;
use tandem_runtime::{ApiError, ErrorCode};

use super::body::read;
use super::error::HttpError;
use super::{ApiState, empty};

fn field<'a>(obj: &HashMap<String, &'a RawValue>, name: &str) -> Option<&'a RawValue> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .filter(|v| v.get() != "null")
}

/// Decodes the request body into an [`InvokeRequest`].
pub(crate) fn decode(body: &Bytes) -> Result<InvokeRequest, ApiError> {
    let obj: HashMap<String, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("failed deserializing HTTP body: {e}")))?;
    let data = match obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("data"))
        .map(|(_, v)| *v)
    {
        Some(raw) => super::json::value_bytes(body, Some(raw)),
        None => Bytes::from_static(b"null"),
    };
    let metadata: HashMap<String, String> = match field(&obj, "metadata") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| {
            ApiError::malformed(format!("failed deserializing HTTP body: metadata: {e}"))
        })?,
        None => HashMap::new(),
    };
    let operation: String = match field(&obj, "operation") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| {
            ApiError::malformed(format!("failed deserializing HTTP body: operation: {e}"))
        })?,
        None => String::new(),
    };
    Ok(InvokeRequest {
        operation,
        data,
        metadata,
    })
}

/// `POST|PUT /v1.0/bindings/{name}`.
pub(crate) async fn invoke(
    State(api): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let body = read(&headers, body, api.max_body_size).await?;
    let mut req = decode(&body)?;
    if let Some(b) = headers.get(tandem_runtime::trace::BAGGAGE)
        && !b.to_str().is_ok_and(tandem_runtime::trace::valid_baggage)
    {
        return Err(HttpError(ApiError::new(
            ErrorCode::MalformedRequest,
            "invalid baggage header",
        )));
    }
    for h in ["traceparent", "tracestate", "baggage"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
            req.metadata.insert(h.to_owned(), v.to_owned());
        }
    }
    let resp = api.runtime.bindings.invoke(&name, req).await?;
    let mut out = match resp.data {
        Some(data) => {
            let mut r = Response::new(Body::from(data));
            let ct = resp
                .content_type
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or(HeaderValue::from_static("application/json"));
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
            r
        }
        None => empty(),
    };
    for (k, v) in resp.metadata {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(format!("metadata.{k}")),
            HeaderValue::try_from(v),
        ) {
            out.headers_mut().append(name, value);
        }
    }
    if out.status() != StatusCode::NO_CONTENT {
        *out.status_mut() = StatusCode::OK;
    }
    Ok(out.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_like_go() {
        let body = Bytes::from_static(
            br#"{"Data":"text","METADATA":{"key":"k"},"operation":"create","other":1}"#,
        );
        let req = decode(&body).unwrap();
        assert_eq!(req.data.as_ref(), br#""text""#);
        assert_eq!(req.metadata["key"], "k");
        assert_eq!(req.operation, "create");
        let req = decode(&Bytes::from_static(br#"{"operation":"get"}"#)).unwrap();
        assert_eq!(req.data.as_ref(), b"null");
        assert!(decode(&Bytes::from_static(b"not json")).is_err());
        assert!(decode(&Bytes::from_static(br#"{"metadata":{"a":1}}"#)).is_err());
    }
}
