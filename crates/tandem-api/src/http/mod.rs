//! The Dapr HTTP API (default port 3500).
//!
//! One file per building block; each handler extracts, calls the runtime service and renders.
//! Errors are rendered only in [`error`]. Unmatched routes fall through to service invocation,
//! as in Dapr.

mod bindings;
mod body;
pub mod error;
#[cfg(test)]
mod fuzz;
pub(crate) mod h1;
mod health;
mod invoke;
mod json;
pub mod metadata;
mod pubsub;
mod secrets;
pub(crate) mod server;
pub mod service;
mod state;
mod trace;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use http::{StatusCode, header};
use tandem_runtime::Runtime;

use crate::allowlist::{ApiRules, Group, HttpRules};
pub use h1::RequestBody;
pub use server::serve;
use service::{ApiService, Direct, Observer, Templates};

/// Settings of the HTTP API server.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// `--max-body-size` in bytes.
    pub max_body_size: usize,
    /// `DAPR_API_TOKEN`, when set.
    pub api_token: Option<String>,
    /// Configuration `spec.api`.
    pub api_rules: ApiRules,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_body_size: 4 << 20,
            api_token: None,
            api_rules: ApiRules::default(),
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

/// The HTTP API with nothing observed (tracing and the API token as configured).
pub fn router(runtime: Arc<Runtime>, options: &HttpOptions) -> ApiService<()> {
    api(runtime, options, None)
}

/// The HTTP API: the routes, with tracing, the API token and `observer` in front.
/// Endpoints that `spec.api` blocks are not registered.
pub fn api<O: Observer>(
    runtime: Arc<Runtime>,
    options: &HttpOptions,
    observer: Option<O>,
) -> ApiService<O> {
    let tracer = runtime.tracer.clone();
    let (router, templates, direct) = routes(runtime, options);
    let token = options
        .api_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(Arc::<str>::from);
    ApiService::new(router, templates, direct, tracer, token, observer)
}

/// The routes of the API, their templates, and the hot routes served without the router.
fn routes(runtime: Arc<Runtime>, options: &HttpOptions) -> (Router, Templates, Direct) {
    let state = ApiState {
        runtime,
        max_body_size: options.max_body_size,
    };
    let rules = options.api_rules.http();
    let mut r = Routes {
        router: Router::new(),
        templates: Templates::default(),
        rules: &rules,
    };
    const STATE: Group = group("state", "v1");
    const PUBLISH: Group = group("publish", "v1");
    const SECRETS: Group = group("secrets", "v1");
    const METADATA: Group = group("metadata", "v1");
    const HEALTH: Group = group("healthz", "v1");
    r.add(
        STATE,
        "v1.0/state/{storeName}",
        "/v1.0/state/{store}",
        post(state::save).put(state::save),
    );
    r.add(
        group("state", "v1alpha1"),
        "v1.0-alpha1/state/{storeName}/query",
        "/v1.0-alpha1/state/{store}/query",
        post(state::query).put(state::query),
    );
    r.add(
        STATE,
        "v1.0/state/{storeName}/bulk",
        "/v1.0/state/{store}/bulk",
        post(state::bulk)
            .put(state::bulk)
            .get(state::get_reserved)
            .delete(state::delete_reserved),
    );
    r.add(
        STATE,
        "v1.0/state/{storeName}/transaction",
        "/v1.0/state/{store}/transaction",
        post(state::transaction)
            .put(state::transaction)
            .get(state::get_reserved)
            .delete(state::delete_reserved),
    );
    let state_get = r.add(
        STATE,
        "v1.0/state/{storeName}/{key}",
        "/v1.0/state/{store}/{key}",
        get(state::get).delete(state::delete),
    );
    r.add(
        SECRETS,
        "v1.0/secrets/{secretStoreName}/bulk",
        "/v1.0/secrets/{store}/bulk",
        get(secrets::bulk),
    );
    r.add(
        SECRETS,
        "v1.0/secrets/{secretStoreName}/{key}",
        "/v1.0/secrets/{store}/{key}",
        get(secrets::get),
    );
    r.add(
        PUBLISH,
        "v1.0/publish/{pubsubname}/*",
        "/v1.0/publish/{pubsub}/{*topic}",
        post(pubsub::publish).put(pubsub::publish),
    );
    r.add(
        PUBLISH,
        "v1.0/publish/bulk/{pubsubname}/*",
        "/v1.0/publish/bulk/{pubsub}/{*topic}",
        post(pubsub::bulk_publish).put(pubsub::bulk_publish),
    );
    r.add(
        group("publish", "v1alpha1"),
        "v1.0-alpha1/publish/bulk/{pubsubname}/*",
        "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
        post(pubsub::bulk_publish).put(pubsub::bulk_publish),
    );
    r.add(
        group("bindings", "v1"),
        "v1.0/bindings/{name}",
        "/v1.0/bindings/{name}",
        post(bindings::invoke).put(bindings::invoke),
    );
    r.add(
        METADATA,
        "v1.0/metadata",
        "/v1.0/metadata",
        get(metadata::get),
    );
    r.add(
        METADATA,
        "v1.0/metadata/{key}",
        "/v1.0/metadata/{key}",
        put(metadata::put),
    );
    r.add(
        HEALTH,
        "v1.0/healthz",
        "/v1.0/healthz",
        get(health::healthz),
    );
    r.add(
        HEALTH,
        "v1.0/healthz/outbound",
        "/v1.0/healthz/outbound",
        get(health::outbound),
    );
    r.add(
        group("shutdown", "v1"),
        "v1.0/shutdown",
        "/v1.0/shutdown",
        post(health::shutdown),
    );
    let invoke_allowed = rules.allows(group("invoke", "v1"), "v1.0/invoke/*");
    let mut templates = r.templates;
    let router = if invoke_allowed {
        const INVOKE: &str = "/v1.0/invoke/{*rest}";
        templates.add(INVOKE);
        r.router
            .route(INVOKE, any(invoke::handle))
            .fallback(invoke::handle)
            .method_not_allowed_fallback(invoke::handle)
    } else {
        // Without the invocation fallback, unknown routes get Go's plain not-found answer.
        r.router.fallback(not_found)
    };
    let direct = Direct {
        state_get,
        invoke: invoke_allowed,
        state: state.clone(),
    };
    (router.with_state(state), templates, direct)
}

const fn group(name: &'static str, version: &'static str) -> Group {
    Group { name, version }
}

/// The router under construction and the rules deciding which endpoints it gets.
struct Routes<'a> {
    router: Router<ApiState>,
    templates: Templates,
    rules: &'a HttpRules,
}

impl Routes<'_> {
    /// Registers `path` unless `spec.api` blocks it (`dapr_path` is daprd's template, which
    /// the legacy prefix rules are matched against).
    fn add(
        &mut self,
        group: Group,
        dapr_path: &str,
        path: &'static str,
        handler: axum::routing::MethodRouter<ApiState>,
    ) -> bool {
        if !self.rules.allows(group, dapr_path) {
            return false;
        }
        self.router = std::mem::take(&mut self.router).route(path, handler);
        self.templates.add(path);
        true
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "404 page not found\n",
    )
        .into_response()
}

/// Turns Nagle's algorithm off on an accepted connection (a failure only costs latency).
pub(crate) fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "could not set TCP_NODELAY");
    }
}
