//! The internal listener (`--dapr-internal-grpc-port`): where other Tandem sidecars deliver
//! service invocations for this sidecar's app.
//!
//! The protocol is plain HTTP/1.1 (h2c accepted too), described in
//! [`tandem_runtime::invoke`]; the handler hands each request to
//! [`tandem_runtime::invoke::InvokeService::handle_internal`] and streams the app's answer
//! back. Errors are rendered by [`crate::http::error`], like every other API error. Daprd's
//! gRPC `ServiceInvocation` service is not served here: Go daprd sidecars cannot call a
//! Tandem sidecar, nor the other way round.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use http_body_util::BodyExt;
use tandem_components::BoxError;
use tandem_runtime::Runtime;
use tokio::net::TcpListener;

use crate::http::error::HttpError;

/// The internal API as an axum router: every path and verb is an invocation.
pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new().fallback(handle).with_state(runtime)
}

async fn handle(State(runtime): State<Arc<Runtime>>, req: Request) -> Response {
    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
    match runtime.invoke.handle_internal(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => HttpError(e).into_response(),
    }
}

/// Serves the internal API on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener.tap_io(crate::http::no_delay), router(runtime))
        .with_graceful_shutdown(shutdown)
        .await
}
