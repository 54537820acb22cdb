//! Prometheus metrics (`--metrics-port`, `--enable-metrics`), under daprd's metric names.
//!
//! Series are kept in atomics: a request finds its series without a lock (created once, on the
//! first request with that label set) and then only adds to atomic counters. What labels an
//! HTTP request is decided in [`crate::observe`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use axum::response::IntoResponse;
use tandem_runtime::Runtime;
use tandem_runtime::metrics::{
    Family, Histogram, Metrics as RuntimeMetrics, Series, grpc_code_name,
};

/// One HTTP server series: requests and their latency.
type HttpSeries = Histogram;

/// The three series an `OK` call of one gRPC method adds to, found with one lookup instead
/// of three; `None` when one of the families was full when the method was first seen.
type GrpcOkSeries = Option<[Arc<Series<Histogram>>; 3]>;

/// The sidecar's metrics: the API servers' own, plus the runtime's.
pub(crate) struct Metrics {
    runtime: Arc<RuntimeMetrics>,
    /// (method, path, status) → requests and latency.
    http: Family<HttpSeries>,
    http_request_bytes: Histogram,
    http_response_bytes: Histogram,
    /// (method, status) → completed RPCs and their latency.
    grpc: Family<Histogram>,
    grpc_received: Family<Histogram>,
    grpc_sent: Family<Histogram>,
    /// method → its `OK` latency, received and sent series (the same series as in the three
    /// families above, which are what is exported).
    grpc_ok: Family<GrpcOkSeries>,
    components_loaded: AtomicU64,
    /// When the process started, in seconds since the Unix epoch.
    start_time: f64,
}

impl Metrics {
    /// The API servers' metrics next to the runtime's `runtime` metrics.
    pub(crate) fn new(runtime: Arc<RuntimeMetrics>) -> Self {
        Self {
            runtime,
            http: Family::new(&["method", "path", "status"]),
            http_request_bytes: Histogram::sizes(),
            http_response_bytes: Histogram::sizes(),
            grpc: Family::new(&["grpc_server_method", "grpc_server_status"]),
            grpc_received: Family::new(&["grpc_server_method"]),
            grpc_sent: Family::new(&["grpc_server_method"]),
            grpc_ok: Family::new(&["grpc_server_method"]),
            components_loaded: AtomicU64::new(0),
            start_time: crate::process::start_time(),
        }
    }

    /// The runtime's metrics (and the Configuration's `spec.metric`).
    pub(crate) fn runtime(&self) -> &RuntimeMetrics {
        &self.runtime
    }

    /// Sets `dapr_runtime_component_loaded`.
    pub(crate) fn set_components_loaded(&self, n: u64) {
        self.components_loaded.store(n, Ordering::Relaxed);
    }

    /// Records one HTTP request answered with `status` after `nanos` nanoseconds.
    pub(crate) fn record_http(
        &self,
        method: &Method,
        path: &str,
        status: u16,
        nanos: u64,
        sizes: (u64, u64),
    ) {
        let method = if self.runtime.exclude_verbs() {
            ""
        } else {
            method_label(method)
        };
        let status = axum::http::StatusCode::from_u16(status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let bounds = self.runtime.bounds();
        if let Some(s) = self.http.get(&[method, path, status.as_str()], || {
            Histogram::latency(bounds.clone())
        }) {
            s.value.observe(nanos);
        }
        self.http_request_bytes.observe(sizes.0);
        self.http_response_bytes.observe(sizes.1);
    }

    /// Records one completed gRPC call of `method` (`/package.Service/Method`) with status
    /// `code`, its duration and its message bytes in and out.
    pub(crate) fn record_grpc(
        &self,
        method: &str,
        code: u32,
        nanos: u64,
        received: u64,
        sent: u64,
    ) {
        if code == 0
            && let Some(ok) = self.grpc_ok.get(&[method], || self.grpc_ok_series(method))
            && let Some([latency, rx, tx]) = &ok.value
        {
            latency.value.observe(nanos);
            rx.value.observe(received);
            tx.value.observe(sent);
            return;
        }
        let code = grpc_code_name(i32::try_from(code).unwrap_or(2));
        let bounds = self.runtime.bounds();
        if let Some(s) = self
            .grpc
            .get(&[method, code], || Histogram::latency(bounds.clone()))
        {
            s.value.observe(nanos);
        }
        if let Some(s) = self.grpc_received.get(&[method], Histogram::sizes) {
            s.value.observe(received);
        }
        if let Some(s) = self.grpc_sent.get(&[method], Histogram::sizes) {
            s.value.observe(sent);
        }
    }

    /// The `OK` latency series of `method` and its message size series; `None` when a family
    /// is full.
    fn grpc_ok_series(&self, method: &str) -> GrpcOkSeries {
        let bounds = self.runtime.bounds();
        Some([
            self.grpc.get(&[method, grpc_code_name(0)], || {
                Histogram::latency(bounds.clone())
            })?,
            self.grpc_received.get(&[method], Histogram::sizes)?,
            self.grpc_sent.get(&[method], Histogram::sizes)?,
        ])
    }

    /// The metrics in Prometheus text format 0.0.4.
    pub(crate) fn encode(&self, runtime: Option<&Runtime>) -> String {
        let mut out = String::new();
        let mut enc = self.runtime.encoder(&mut out);
        enc.counts(
            "dapr_http_server_request_count",
            "Number of HTTP requests started in server.",
            &[],
            &self.http,
        );
        enc.histograms(
            "dapr_http_server_latency",
            "HTTP request end-to-end latency in server.",
            &[],
            &self.http,
        );
        if self.runtime.increased_cardinality() {
            enc.counts(
                "dapr_http_server_response_count",
                "The number of HTTP responses.",
                &[],
                &self.http,
            );
        }
        enc.histogram(
            "dapr_http_server_request_bytes",
            "HTTP request body size if set as ContentLength (uncompressed) in server.",
            &self.http_request_bytes,
        );
        enc.histogram(
            "dapr_http_server_response_bytes",
            "HTTP response body size (uncompressed) in server.",
            &self.http_response_bytes,
        );
        enc.counts(
            "dapr_grpc_io_server_completed_rpcs",
            "Count of RPCs by method and status.",
            &[],
            &self.grpc,
        );
        enc.histograms(
            "dapr_grpc_io_server_server_latency",
            "Time between the first byte received and the last byte sent, in milliseconds.",
            &[],
            &self.grpc,
        );
        enc.histograms(
            "dapr_grpc_io_server_received_bytes_per_rpc",
            "Bytes received per RPC.",
            &[],
            &self.grpc_received,
        );
        enc.histograms(
            "dapr_grpc_io_server_sent_bytes_per_rpc",
            "Bytes sent per RPC.",
            &[],
            &self.grpc_sent,
        );
        enc.counter(
            "dapr_runtime_component_loaded",
            "The number of successfully loaded components.",
            &[],
            self.components_loaded.load(Ordering::Relaxed),
        );
        self.runtime.encode(&mut enc);
        if let Some(rt) = runtime {
            self.runtime.encode_resiliency(&mut enc, &rt.resiliency);
        }
        drop(enc);
        crate::process::encode(&mut out, self.start_time);
        out
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Serves the metrics on `listener` at any path until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().fallback(move || {
        let body = metrics.encode(Some(&runtime));
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                )],
                body,
            )
                .into_response()
        }
    });
    tandem_api::http::serve(listener, router, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(app: &str, spec: &tandem_config::MetricSpec) -> Metrics {
        Metrics::new(Arc::new(
            RuntimeMetrics::new(app, None, spec).expect("metrics"),
        ))
    }

    #[test]
    fn encodes_series_sorted_with_escaped_labels() {
        let m = metrics("my\"app", &Default::default());
        m.record_http(
            &Method::GET,
            "/v1.0/state/{store}/{key}",
            204,
            3_000_000,
            (0, 0),
        );
        m.record_http(
            &Method::GET,
            "/v1.0/state/{store}/{key}",
            204,
            3_000_000,
            (0, 0),
        );
        m.record_http(&Method::POST, "/v1.0/state/{store}", 500, 1, (2000, 10));
        // The first OK call finds its series, the second its cached ones: both count.
        m.record_grpc("/dapr.proto.runtime.v1.Dapr/GetState", 0, 1, 10, 20);
        m.record_grpc("/dapr.proto.runtime.v1.Dapr/GetState", 0, 1, 10, 20);
        m.record_grpc("/dapr.proto.runtime.v1.Dapr/GetState", 5, 1, 10, 20);
        m.record_grpc("/dapr.proto.runtime.v1.Dapr/GetState", 99, 1, 10, 20);
        m.set_components_loaded(3);
        let text = m.encode(None);
        let app = "app_id=\"my\\\"app\"";
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("dapr_http_server_request_count"))
            .collect();
        assert_eq!(
            lines,
            [
                format!(
                    "dapr_http_server_request_count{{{app},method=\"GET\",path=\"/v1.0/state/{{store}}/{{key}}\",status=\"204\"}} 2"
                ),
                format!(
                    "dapr_http_server_request_count{{{app},method=\"POST\",path=\"/v1.0/state/{{store}}\",status=\"500\"}} 1"
                ),
            ]
        );
        assert!(text.contains(&format!(
            "dapr_http_server_latency_bucket{{{app},method=\"GET\",path=\"/v1.0/state/{{store}}/{{key}}\",status=\"204\",le=\"2\"}} 0\n"
        )));
        assert!(text.contains(&format!(
            "dapr_http_server_latency_bucket{{{app},method=\"GET\",path=\"/v1.0/state/{{store}}/{{key}}\",status=\"204\",le=\"3\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "dapr_http_server_latency_sum{{{app},method=\"GET\",path=\"/v1.0/state/{{store}}/{{key}}\",status=\"204\"}} 6\n"
        )));
        assert!(
            text.contains(&format!(
                "dapr_http_server_request_bytes_bucket{{{app},le=\"2048\"}} 3\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "dapr_http_server_request_bytes_bucket{{{app},le=\"1024\"}} 2\n"
            )),
            "{text}"
        );
        for (status, n) in [("OK", 2), ("NOT_FOUND", 1), ("UNKNOWN", 1)] {
            assert!(
                text.contains(&format!(
                    "dapr_grpc_io_server_completed_rpcs{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\",grpc_server_status=\"{status}\"}} {n}\n"
                )),
                "{text}"
            );
        }
        assert!(text.contains(&format!(
            "dapr_grpc_io_server_sent_bytes_per_rpc_sum{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\"}} 80\n"
        )), "{text}");
        assert!(text.contains(&format!(
            "dapr_grpc_io_server_received_bytes_per_rpc_count{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\"}} 4\n"
        )), "{text}");
        assert!(text.contains(&format!("dapr_runtime_component_loaded{{{app}}} 3\n")));
        assert!(text.contains("# TYPE dapr_http_server_latency histogram\n"));
        assert!(text.contains("# TYPE dapr_http_server_response_count counter\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
    }

    #[test]
    fn excluded_verbs_leave_the_method_empty() {
        let spec = tandem_config::MetricSpec {
            http: tandem_config::MetricHttpSpec {
                exclude_verbs: true,
                increased_cardinality: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let m = metrics("a", &spec);
        m.record_http(&Method::GET, "", 200, 1, (0, 0));
        let text = m.encode(None);
        assert!(text.contains(
            "dapr_http_server_request_count{app_id=\"a\",method=\"\",path=\"\",status=\"200\"} 1\n"
        ), "{text}");
        assert!(!text.contains("dapr_http_server_response_count"));
    }
}
