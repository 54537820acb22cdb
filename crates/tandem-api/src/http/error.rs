//! The one place an [`ApiError`] becomes an HTTP response.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tandem_runtime::error::{ApiError, Detail, Shape};

/// An [`ApiError`] on its way out over HTTP.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

fn detail_json(d: &Detail) -> Value {
    match d {
        Detail::ErrorInfo { reason, metadata } => json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "dapr.io",
            "metadata": if metadata.is_empty() { Value::Null } else { json!(metadata) },
        }),
        Detail::ResourceInfo {
            resource_type,
            resource_name,
            description,
        } => json!({
            "@type": "type.googleapis.com/google.rpc.ResourceInfo",
            "resource_type": resource_type,
            "resource_name": resource_name,
            "owner": "",
            "description": description,
        }),
        Detail::BadRequest { field, description } => json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [{"field": field, "description": description}],
        }),
        Detail::Help { description, url } => json!({
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{"description": description, "url": url}],
        }),
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(rename = "errorCode")]
    error_code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Vec<Value>>,
}

/// Renders the error body per Dapr's two shapes.
pub fn error_body(e: &ApiError) -> Bytes {
    let rich = e.code.shape() == Shape::Rich && !e.details.is_empty();
    let body = Body {
        error_code: e.code.code(),
        message: &e.message,
        details: rich.then(|| e.details.iter().map(detail_json).collect()),
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        tracing::debug!(code = self.0.code.code(), message = %self.0.message, "api error");
        tandem_runtime::metrics::record_error_code(self.0.code);
        let mut resp = (status, error_body(&self.0)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
