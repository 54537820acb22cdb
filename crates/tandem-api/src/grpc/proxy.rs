//! gRPC proxying: any call on the gRPC port to a service other than the Dapr API, carrying
//! `dapr-callee-app-id` (or `dapr-app-id`) metadata, is forwarded to that app's gRPC server —
//! through its sidecar when it is another app — frame for frame, so client, server and
//! bidirectional streams work, and the app's status and trailers come back unchanged.
//!
//! The API token is enforced as for the Dapr service (and not forwarded). Errors of the
//! proxy itself are answered as gRPC statuses rendered from the error table.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body_util::BodyExt;
use tandem_components::BoxError;
use tandem_runtime::Runtime;
use tandem_runtime::invoke::InvokeRequest;
use tonic::Status;

use super::error::to_status;

/// What the proxy needs: the runtime and the API token, if any.
#[derive(Clone)]
pub(super) struct Proxy {
    pub(super) runtime: Arc<Runtime>,
    pub(super) api_token: Option<String>,
}

fn status_response(status: Status) -> Response {
    status.into_http::<Body>()
}

impl Proxy {
    /// Handles one call that no served service matched.
    pub(super) async fn handle(self, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        if let Some(token) = &self.api_token {
            let given = parts
                .headers
                .get("dapr-api-token")
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if given != token.as_bytes() {
                return status_response(Status::unauthenticated(
                    "authentication error: api token mismatch",
                ));
            }
        }
        let target = ["dapr-callee-app-id", "dapr-app-id"]
            .iter()
            .find_map(|k| parts.headers.get(*k).and_then(|v| v.to_str().ok()))
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let Some(target) = target else {
            let service = parts.uri.path().trim_start_matches('/');
            let service = service.split('/').next().unwrap_or_default();
            return status_response(Status::unimplemented(format!(
                "unknown service {service}; to reach another app's gRPC service, call it with \
                 dapr-app-id metadata (failed to proxy request: required metadata \
                 dapr-callee-app-id or dapr-app-id not found)"
            )));
        };
        let method = parts.uri.path().trim_start_matches('/').to_owned();
        let request = InvokeRequest {
            target,
            method,
            query: None,
            verb: http::Method::POST,
            headers: parts.headers,
            body: body.map_err(BoxError::from).boxed_unsync(),
            grpc_proxy: true,
        };
        match self.runtime.invoke.invoke(request).await {
            Ok(resp) => resp.map(Body::new),
            Err(e) => status_response(to_status(e)),
        }
    }
}
