//! The Dapr HTTP API (default port 3500).
//!
//! One file per building block; each handler extracts, calls the runtime service and renders.
//! Errors are rendered only in [`error`]. Unmatched routes fall through to service invocation,
//! as in Dapr.

mod bindings;
mod body;
pub mod error;
mod health;
mod invoke;
mod json;
pub mod metadata;
mod pubsub;
mod secrets;
mod state;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::serve::ListenerExt;
use http::{Method, StatusCode, Uri, header};
use tandem_runtime::Runtime;
use tokio::net::TcpListener;

/// Settings of the HTTP API server.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// `--max-body-size` in bytes.
    pub max_body_size: usize,
    /// `DAPR_API_TOKEN`, when set.
    pub api_token: Option<String>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_body_size: 4 << 20,
            api_token: None,
        }
    }
}

/// What every handler receives.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) max_body_size: usize,
}

pub(crate) fn empty() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The HTTP API as an axum router.
pub fn router(runtime: Arc<Runtime>, options: &HttpOptions) -> Router {
    let state = ApiState {
        runtime,
        max_body_size: options.max_body_size,
    };
    let router = Router::new()
        .route("/v1.0/state/{store}", post(state::save).put(state::save))
        .route(
            "/v1.0-alpha1/state/{store}/query",
            post(state::query).put(state::query),
        )
        .route(
            "/v1.0/state/{store}/bulk",
            post(state::bulk)
                .put(state::bulk)
                .get(state::get_reserved)
                .delete(state::delete_reserved),
        )
        .route(
            "/v1.0/state/{store}/transaction",
            post(state::transaction)
                .put(state::transaction)
                .get(state::get_reserved)
                .delete(state::delete_reserved),
        )
        .route(
            "/v1.0/state/{store}/{key}",
            get(state::get).delete(state::delete),
        )
        .route("/v1.0/secrets/{store}/bulk", get(secrets::bulk))
        .route("/v1.0/secrets/{store}/{key}", get(secrets::get))
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(pubsub::publish).put(pubsub::publish),
        )
        .route(
            "/v1.0/publish/bulk/{pubsub}/{*topic}",
            post(pubsub::bulk_publish).put(pubsub::bulk_publish),
        )
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
            post(pubsub::bulk_publish).put(pubsub::bulk_publish),
        )
        .route(
            "/v1.0/bindings/{name}",
            post(bindings::invoke).put(bindings::invoke),
        )
        .route("/v1.0/metadata", get(metadata::get))
        .route("/v1.0/metadata/{key}", put(metadata::put))
        .route("/v1.0/healthz", get(health::healthz))
        .route("/v1.0/healthz/outbound", get(health::outbound))
        .route("/v1.0/shutdown", post(health::shutdown))
        .route("/v1.0/invoke/{*rest}", any(invoke::handle))
        .fallback(invoke::handle)
        .method_not_allowed_fallback(invoke::handle)
        .with_state(state);
    match &options.api_token {
        Some(token) if !token.is_empty() => router.layer(middleware::from_fn_with_state(
            Arc::<str>::from(token.as_str()),
            api_token,
        )),
        _ => router,
    }
}

/// Enforces `DAPR_API_TOKEN`: every request but the two health GETs carries
/// `dapr-api-token`, which is removed before the request goes further.
async fn api_token(State(token): State<Arc<str>>, mut req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get("dapr-api-token")
        .is_some_and(|v| v.as_bytes() == token.as_bytes());
    if !ok && !exempt(req.method(), req.uri()) {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            "invalid api token\n",
        )
            .into_response();
    }
    req.headers_mut().remove("dapr-api-token");
    next.run(req).await
}

fn exempt(method: &Method, uri: &Uri) -> bool {
    method == Method::GET
        && matches!(
            uri.path().trim_matches('/'),
            "v1.0/healthz" | "v1.0/healthz/outbound"
        )
}

/// Turns Nagle's algorithm off on an accepted connection (a failure only costs latency).
pub(crate) fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY");
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c) until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Answers are written in one go; Nagle would hold an HTTP/2 frame until the client's
    // delayed ACK (tens of milliseconds), so every accepted socket sends at once.
    axum::serve(listener.tap_io(no_delay), router)
        .with_graceful_shutdown(shutdown)
        .await
}
