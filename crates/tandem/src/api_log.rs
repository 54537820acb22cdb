//! API logging (`--enable-api-logging`, Configuration `spec.logging.apiLogging`): one `info`
//! line per API call, as daprd writes them — `HTTP API Called` on scope
//! `dapr.runtime.http-info` with `method` (verb and path), `code`, `size`, `duration` (ms) and
//! `useragent`; `gRPC API Called` on scope `dapr.runtime.grpc-info` with `method`, `code`,
//! `duration` and `useragent`. Only the method and path are logged, never headers, queries or
//! bodies.

use std::time::Instant;

use axum::http::{HeaderMap, Method, Uri};

use crate::logging::{GRPC_API_LOG, HTTP_API_LOG};

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

impl ApiLogging {
    /// Starts the log line of an HTTP API call (`None` for an omitted health check).
    /// `template` is the route the request matches, logged instead of the path with
    /// `obfuscateURLs`.
    pub(crate) fn begin_http(
        self,
        uri: &Uri,
        headers: &HeaderMap,
        template: Option<&'static str>,
    ) -> Option<HttpLog> {
        let path = uri.path();
        if self.omit_health_checks && path.starts_with("/v1.0/healthz") {
            return None;
        }
        let path = if self.obfuscate_urls {
            template.unwrap_or_default().to_owned()
        } else {
            path.to_owned()
        };
        Some(HttpLog {
            path,
            useragent: user_agent(headers).to_owned(),
        })
    }
}

/// An HTTP API call being logged.
pub(crate) struct HttpLog {
    path: String,
    useragent: String,
}

impl HttpLog {
    /// Writes the line for the answer.
    pub(crate) fn end(self, verb: &Method, start: Instant, code: u16, size: u64) {
        let duration = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            target: HTTP_API_LOG,
            method = %format_args!("{verb} {}", self.path),
            code,
            size,
            duration,
            useragent = %self.useragent,
            "HTTP API Called"
        );
    }
}

fn user_agent(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

impl ApiLogging {
    /// Starts the log line of a gRPC API call (`None` for an omitted health check).
    pub(crate) fn begin_grpc(self, uri: &Uri, headers: &HeaderMap) -> Option<GrpcCall> {
        let method = uri.path();
        if self.omit_health_checks && method.starts_with("/grpc.health.") {
            return None;
        }
        Some(GrpcCall {
            method: method.to_owned(),
            useragent: user_agent(headers).to_owned(),
            start: Instant::now(),
        })
    }
}

/// A gRPC API call being logged.
pub(crate) struct GrpcCall {
    method: String,
    useragent: String,
    start: Instant,
}

impl GrpcCall {
    /// Writes the line for the call's status.
    pub(crate) fn log(&self, code: u32) {
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
