//! What the sidecar records about each API request: the `dapr_http_server_*` and
//! `dapr_grpc_io_server_*` metrics and the API log lines, from one observer per API that the
//! API's single outer service calls before and after the request.
//!
//! Requests are labelled with the route template they match (`/v1.0/state/{store}/{key}`),
//! never with the raw path, so the number of series stays bounded; requests that match no
//! template (invocation through the `dapr-app-id` header) have an empty `path`. Nothing here
//! allocates per request unless API logging is on.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use tandem_api::grpc::service::GrpcObserver as GrpcObserve;
use tandem_api::http::service::Observer;

use crate::api_log::{ApiLogging, GrpcCall as GrpcLog, HttpLog};
use crate::metrics::Metrics;

/// Metrics and API logging of the HTTP API (either may be off).
pub(crate) struct HttpObserver {
    metrics: Option<Arc<Metrics>>,
    logging: Option<ApiLogging>,
    /// Metrics label requests by the API's own route templates (no `pathMatching`, and
    /// `increasedCardinality` on).
    metrics_template: bool,
}

impl HttpObserver {
    /// The observer, or `None` when neither metrics nor API logging are on.
    pub(crate) fn new(metrics: Option<Arc<Metrics>>, logging: Option<ApiLogging>) -> Option<Self> {
        if metrics.is_none() && logging.is_none() {
            return None;
        }
        let metrics_template = metrics
            .as_ref()
            .is_some_and(|m| m.runtime().paths().is_empty() && m.runtime().increased_cardinality());
        Some(Self {
            metrics,
            logging,
            metrics_template,
        })
    }
}

/// The `path` label of a request's metrics.
enum PathLabel {
    /// No label (`""`).
    Empty,
    /// One of the API's route templates.
    Route(&'static str),
    /// The i-th `pathMatching` template.
    Matched(usize),
}

/// One request until its answer.
pub(crate) struct HttpCall {
    start: Instant,
    method: Method,
    path: PathLabel,
    request_bytes: u64,
    log: Option<HttpLog>,
}

impl Observer for HttpObserver {
    type Call = HttpCall;

    fn wants_template(&self) -> bool {
        self.metrics_template || self.logging.is_some_and(|l| l.obfuscate_urls)
    }

    fn begin(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        template: Option<&'static str>,
    ) -> HttpCall {
        let path = match &self.metrics {
            Some(m) if !m.runtime().paths().is_empty() => m
                .runtime()
                .paths()
                .find_index(uri.path())
                .map_or(PathLabel::Empty, PathLabel::Matched),
            Some(_) if self.metrics_template => template.map_or(PathLabel::Empty, PathLabel::Route),
            _ => PathLabel::Empty,
        };
        HttpCall {
            start: Instant::now(),
            method: method.clone(),
            path,
            request_bytes: content_length(headers),
            log: self
                .logging
                .and_then(|l| l.begin_http(uri, headers, template)),
        }
    }

    fn end(&self, call: HttpCall, resp: &Response) {
        let nanos = tandem_runtime::metrics::nanos_since(call.start);
        let response_bytes = axum::body::HttpBody::size_hint(resp.body()).lower();
        if let Some(m) = &self.metrics {
            let path = match call.path {
                PathLabel::Empty => "",
                PathLabel::Route(t) => t,
                PathLabel::Matched(i) => m.runtime().paths().template(i),
            };
            m.record_http(
                &call.method,
                path,
                resp.status().as_u16(),
                nanos,
                (call.request_bytes, response_bytes),
            );
        }
        if let Some(log) = call.log {
            log.end(
                &call.method,
                call.start,
                resp.status().as_u16(),
                response_bytes,
            );
        }
    }
}

fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Metrics and API logging of the gRPC API (either may be off).
pub(crate) struct GrpcObserver {
    metrics: Option<Arc<Metrics>>,
    logging: Option<ApiLogging>,
}

impl GrpcObserver {
    /// The observer, or `None` when neither metrics nor API logging are on.
    pub(crate) fn new(metrics: Option<Arc<Metrics>>, logging: Option<ApiLogging>) -> Option<Self> {
        (metrics.is_some() || logging.is_some()).then_some(Self { metrics, logging })
    }
}

/// One gRPC call until its status.
pub(crate) struct GrpcCall {
    start: Instant,
    /// The method is the URI's path; a clone shares the request's bytes.
    uri: Uri,
    log: Option<GrpcLog>,
}

impl GrpcObserve for GrpcObserver {
    type Call = GrpcCall;

    fn begin(&self, uri: &Uri, headers: &HeaderMap) -> GrpcCall {
        GrpcCall {
            start: Instant::now(),
            uri: uri.clone(),
            log: self.logging.and_then(|l| l.begin_grpc(uri, headers)),
        }
    }

    fn end(&self, call: GrpcCall, code: u32, received: u64, sent: u64) {
        if let Some(m) = &self.metrics {
            m.record_grpc(
                call.uri.path(),
                code,
                tandem_runtime::metrics::nanos_since(call.start),
                received,
                sent,
            );
        }
        if let Some(log) = call.log {
            log.log(code);
        }
    }
}
