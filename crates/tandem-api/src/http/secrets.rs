//! `/v1.0/secrets/...`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{Uri, header};

use super::body::Query;
use super::error::HttpError;
use super::{ApiState, empty};

fn json(value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /v1.0/secrets/{store}/{key}`.
pub(crate) async fn get(
    State(api): State<ApiState>,
    Path((store, key)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, HttpError> {
    let q = Query::parse(uri.query());
    let secret = api.runtime.secrets.get(&store, &key, &q.metadata).await?;
    if secret.is_empty() {
        return Ok(empty());
    }
    Ok(json(&secret))
}

/// `GET /v1.0/secrets/{store}/bulk`.
pub(crate) async fn bulk(
    State(api): State<ApiState>,
    Path(store): Path<String>,
    uri: Uri,
) -> Result<Response, HttpError> {
    let q = Query::parse(uri.query());
    let all = api.runtime.secrets.bulk_get(&store, &q.metadata).await?;
    if all.is_empty() {
        return Ok(empty());
    }
    Ok(json(&all))
}
