//! `/v1.0/healthz`, `/v1.0/healthz/outbound` and `POST /v1.0/shutdown`.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use http::{HeaderMap, Uri};
use tandem_runtime::{ApiError, ErrorCode};

use super::body::Query;
use super::error::HttpError;
use super::{ApiState, empty};

/// `GET /v1.0/healthz[?appid=]`.
pub(crate) async fn healthz(State(api): State<ApiState>, uri: Uri) -> Result<Response, HttpError> {
    let rt = &api.runtime;
    if !rt.readiness.ready() {
        return Err(
            ApiError::new(ErrorCode::HealthNotReady, "dapr is not ready: [runtime]").into(),
        );
    }
    if Query::parse(uri.query())
        .appid
        .is_some_and(|appid| appid != rt.app_id)
    {
        return Err(
            ApiError::new(ErrorCode::HealthAppIdNotMatch, "dapr app-id does not match").into(),
        );
    }
    Ok(empty())
}

/// `GET /v1.0/healthz/outbound`.
pub(crate) async fn outbound(State(api): State<ApiState>) -> Result<Response, HttpError> {
    if !api.runtime.readiness.outbound_ready() {
        return Err(ApiError::new(
            ErrorCode::OutboundHealthNotReady,
            "dapr outbound is not ready",
        )
        .into());
    }
    Ok(empty())
}

/// `POST /v1.0/shutdown`: 204 now, then a graceful stop (or an immediate exit 1 with
/// `dapr-force-shutdown: true`).
pub(crate) async fn shutdown(State(api): State<ApiState>, headers: HeaderMap) -> Response {
    let forced = headers
        .get("dapr-force-shutdown")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if forced {
        api.runtime.shutdown.force(Duration::from_millis(100));
    } else {
        api.runtime.shutdown.trigger();
    }
    empty()
}
