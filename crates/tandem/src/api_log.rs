//! API logging (`--enable-api-logging`, Configuration `spec.logging.apiLogging`): one `info`
//! line per API call, as daprd writes them — `HTTP API Called` on scope
//! `dapr.runtime.http-info` with `method` (verb and path), `code`, `size`, `duration` (ms) and
//! `useragent`; `gRPC API Called` on scope `dapr.runtime.grpc-info` with `method`, `code`,
//! `duration` and `useragent`. Only the method and path are logged, never headers, queries or
//! bodies.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use http_body_util::BodyExt;

use crate::logging::{GRPC_API_LOG, HTTP_API_LOG};
use crate::metrics::Template;

/// What API logging does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApiLogging {
    /// `obfuscateURLs`: log the route template instead of the path.
    pub(crate) obfuscate_urls: bool,
    /// `omitHealthChecks`: skip `/v1.0/healthz` calls.
    pub(crate) omit_health_checks: bool,
}

impl ApiLogging {
    /// The settings from the flag (which wins when given) and the Configuration.
    pub(crate) fn from_config(
        flag: Option<bool>,
        spec: &tandem_config::ApiLoggingSpec,
    ) -> Option<Self> {
        flag.unwrap_or(spec.enabled).then_some(Self {
            obfuscate_urls: spec.obfuscate_urls,
            omit_health_checks: spec.omit_health_checks,
        })
    }
}

/// Adds API logging to the HTTP API router.
pub(crate) fn http_layer(router: Router, logging: ApiLogging) -> Router {
    router
        .route_layer(middleware::from_fn(crate::metrics::tag_template))
        .layer(middleware::from_fn_with_state(Arc::new(logging), log_http))
}

fn user_agent(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn log_http(State(cfg): State<Arc<ApiLogging>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if cfg.omit_health_checks && path.starts_with("/v1.0/healthz") {
        return next.run(req).await;
    }
    let start = Instant::now();
    let verb = req.method().clone();
    let raw = (!cfg.obfuscate_urls).then(|| path.to_owned());
    let useragent = user_agent(req.headers()).to_owned();
    let resp = next.run(req).await;
    let duration = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let path = match &raw {
        Some(p) => p.as_str(),
        None => resp
            .extensions()
            .get::<Template>()
            .map(Template::as_str)
            .unwrap_or(""),
    };
    let size = axum::body::HttpBody::size_hint(resp.body()).lower();
    tracing::info!(
        target: HTTP_API_LOG,
        method = %format_args!("{verb} {path}"),
        code = resp.status().as_u16(),
        size,
        duration,
        useragent = %useragent,
        "HTTP API Called"
    );
    resp
}

/// Adds API logging to the gRPC API routes.
pub(crate) fn grpc_layer(
    routes: tonic::service::Routes,
    logging: ApiLogging,
) -> tonic::service::Routes {
    let router = routes
        .into_axum_router()
        .layer(middleware::from_fn_with_state(Arc::new(logging), log_grpc));
    tonic::service::Routes::from(router)
}

fn grpc_code(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

struct GrpcCall {
    method: String,
    useragent: String,
    start: Instant,
}

impl GrpcCall {
    fn log(&self, code: u32) {
        let duration = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            target: GRPC_API_LOG,
            method = %self.method,
            code,
            duration,
            useragent = %self.useragent,
            "gRPC API Called"
        );
    }
}

async fn log_grpc(State(cfg): State<Arc<ApiLogging>>, req: Request, next: Next) -> Response {
    let method = req.uri().path();
    if cfg.omit_health_checks && method.starts_with("/grpc.health.") {
        return next.run(req).await;
    }
    let call = GrpcCall {
        method: method.to_owned(),
        useragent: user_agent(req.headers()).to_owned(),
        start: Instant::now(),
    };
    let resp = next.run(req).await;
    if let Some(code) = grpc_code(resp.headers()) {
        call.log(code);
        return resp;
    }
    if !resp.status().is_success() {
        call.log(2);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
            call.log(code);
        }
        frame
    });
    Response::from_parts(parts, axum::body::Body::new(body))
}
