//! Prometheus metrics (`--metrics-port`, `--enable-metrics`), under daprd's metric names.
//!
//! Series are kept in atomics: a request takes a shared read lock to find its series (created
//! once, on the first request with that label set) and then only adds to atomic counters.
//! HTTP requests are labelled with the route template they matched (`/v1.0/state/{store}`),
//! never with the raw path, so the number of series stays bounded; requests that match no
//! template (invocation through the `dapr-app-id` header) have an empty `path`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

/// daprd's default latency buckets, in milliseconds.
pub(crate) const DEFAULT_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0,
    100.0, 130.0, 160.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1000.0, 2000.0, 5000.0,
    10000.0, 20000.0, 50000.0, 100000.0,
];

/// gRPC status code names, as daprd labels them (`grpc_server_status`).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A cumulative histogram over fixed bucket bounds (milliseconds).
pub(crate) struct Histogram {
    bounds: Arc<[f64]>,
    /// One count per bound plus one for `+Inf`; not cumulative (summed when encoded).
    buckets: Box<[AtomicU64]>,
    /// Sum of the observations, in nanoseconds.
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: Arc<[f64]>) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            buckets,
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation of `nanos` nanoseconds.
    pub(crate) fn observe_nanos(&self, nanos: u64) {
        let ms = nanos as f64 / 1e6;
        let i = self.bounds.partition_point(|b| *b < ms);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of one series; `labels` is the
    /// already-encoded label list without braces.
    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format_float(*b),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", format_float(sum));
        let _ = writeln!(
            out,
            "{name}_count{{{labels}}} {}",
            self.count.load(Ordering::Relaxed)
        );
    }
}

fn format_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Escapes a label value for the text format.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct HttpSeries {
    method: &'static str,
    status: u16,
    count: AtomicU64,
    latency: Histogram,
}

/// The sidecar's metrics.
pub(crate) struct Metrics {
    app_id: String,
    bounds: Arc<[f64]>,
    /// Route template → series per method and status.
    http: RwLock<HashMap<Box<str>, Vec<Arc<HttpSeries>>>>,
    /// gRPC method → completed RPCs per status code.
    grpc: RwLock<HashMap<Box<str>, Arc<[AtomicU64; 17]>>>,
    components_loaded: AtomicU64,
}

impl Metrics {
    /// Metrics of app `app_id`; `buckets` are the latency bounds in milliseconds (empty:
    /// daprd's defaults).
    pub(crate) fn new(app_id: &str, buckets: &[f64]) -> Self {
        let mut bounds: Vec<f64> = if buckets.is_empty() {
            DEFAULT_BUCKETS.to_vec()
        } else {
            buckets.iter().copied().filter(|b| b.is_finite()).collect()
        };
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        Self {
            app_id: app_id.to_owned(),
            bounds: bounds.into(),
            http: RwLock::default(),
            grpc: RwLock::default(),
            components_loaded: AtomicU64::new(0),
        }
    }

    /// Sets `dapr_runtime_component_loaded`.
    pub(crate) fn set_components_loaded(&self, n: u64) {
        self.components_loaded.store(n, Ordering::Relaxed);
    }

    /// Records one HTTP request answered with `status` after `nanos` nanoseconds.
    pub(crate) fn record_http(&self, method: &Method, path: &str, status: u16, nanos: u64) {
        let method = method_label(method);
        let find = |list: &Vec<Arc<HttpSeries>>| {
            list.iter()
                .find(|s| s.method == method && s.status == status)
                .cloned()
        };
        let found = {
            let map = self.http.read().unwrap_or_else(|e| e.into_inner());
            map.get(path).and_then(find)
        };
        let series = match found {
            Some(s) => s,
            None => {
                let mut map = self.http.write().unwrap_or_else(|e| e.into_inner());
                let list = map.entry(path.into()).or_default();
                match find(list) {
                    Some(s) => s,
                    None => {
                        let s = Arc::new(HttpSeries {
                            method,
                            status,
                            count: AtomicU64::new(0),
                            latency: Histogram::new(self.bounds.clone()),
                        });
                        list.push(s.clone());
                        s
                    }
                }
            }
        };
        series.count.fetch_add(1, Ordering::Relaxed);
        series.latency.observe_nanos(nanos);
    }

    /// Records one completed gRPC call of `method` (`/package.Service/Method`) with status
    /// `code`.
    pub(crate) fn record_grpc(&self, method: &str, code: u32) {
        let code = usize::try_from(code).ok().filter(|c| *c <= 16).unwrap_or(2);
        let found = {
            let map = self.grpc.read().unwrap_or_else(|e| e.into_inner());
            map.get(method).cloned()
        };
        let counters = match found {
            Some(c) => c,
            None => {
                let mut map = self.grpc.write().unwrap_or_else(|e| e.into_inner());
                map.entry(method.into())
                    .or_insert_with(|| Arc::new(std::array::from_fn(|_| AtomicU64::new(0))))
                    .clone()
            }
        };
        counters[code].fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics in Prometheus text format 0.0.4.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let app = format!("app_id=\"{}\"", escape(&self.app_id));

        let mut http: Vec<(String, Arc<HttpSeries>)> = {
            let map = self.http.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .flat_map(|(path, list)| list.iter().map(|s| (path.to_string(), s.clone())))
                .collect()
        };
        http.sort_by(|a, b| (&a.0, a.1.method, a.1.status).cmp(&(&b.0, b.1.method, b.1.status)));
        let labels = |path: &str, s: &HttpSeries| {
            format!(
                "{app},method=\"{}\",path=\"{}\",status=\"{}\"",
                s.method,
                escape(path),
                s.status
            )
        };
        out.push_str("# HELP dapr_http_server_request_count Number of HTTP requests started in server.\n# TYPE dapr_http_server_request_count counter\n");
        for (path, s) in &http {
            let _ = writeln!(
                out,
                "dapr_http_server_request_count{{{}}} {}",
                labels(path, s),
                s.count.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP dapr_http_server_latency HTTP request end-to-end latency in server.\n# TYPE dapr_http_server_latency histogram\n");
        for (path, s) in &http {
            s.latency
                .encode(&mut out, "dapr_http_server_latency", &labels(path, s));
        }

        let mut grpc: Vec<(String, Arc<[AtomicU64; 17]>)> = {
            let map = self.grpc.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(m, c)| (m.to_string(), c.clone()))
                .collect()
        };
        grpc.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP dapr_grpc_io_server_completed_rpcs Count of RPCs by method and status.\n# TYPE dapr_grpc_io_server_completed_rpcs counter\n");
        for (method, counters) in &grpc {
            for (code, counter) in counters.iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "dapr_grpc_io_server_completed_rpcs{{{app},grpc_server_method=\"{}\",grpc_server_status=\"{}\"}} {n}",
                        escape(method),
                        GRPC_CODES[code]
                    );
                }
            }
        }

        out.push_str("# HELP dapr_runtime_component_loaded The number of successfully loaded components.\n# TYPE dapr_runtime_component_loaded counter\n");
        let _ = writeln!(
            out,
            "dapr_runtime_component_loaded{{{app}}} {}",
            self.components_loaded.load(Ordering::Relaxed)
        );
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

/// The route template a request matched, carried from inside the router to the recording
/// layer outside it.
#[derive(Clone)]
struct Template(MatchedPath);

/// Adds request counting and latency to the HTTP API router.
pub(crate) fn http_layer(router: Router, metrics: Arc<Metrics>) -> Router {
    router
        .route_layer(middleware::from_fn(tag_template))
        .layer(middleware::from_fn_with_state(metrics, record_http))
}

async fn tag_template(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let mut resp = next.run(req).await;
    if let Some(m) = matched {
        resp.extensions_mut().insert(Template(m));
    }
    resp
}

async fn record_http(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let path = resp
        .extensions()
        .get::<Template>()
        .map(|t| t.0.as_str())
        .unwrap_or("");
    metrics.record_http(&method, path, resp.status().as_u16(), nanos);
    resp
}

/// Adds completed-RPC counting to the gRPC API routes.
pub(crate) fn grpc_layer(
    routes: tonic::service::Routes,
    metrics: Arc<Metrics>,
) -> tonic::service::Routes {
    let router = routes
        .into_axum_router()
        .layer(middleware::from_fn_with_state(metrics, record_grpc));
    tonic::service::Routes::from(router)
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Counts an RPC when its status is known: at once for a trailers-only answer, else when the
/// body's trailers go out.
async fn record_grpc(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method: Arc<str> = req.uri().path().into();
    let resp = next.run(req).await;
    if let Some(code) = grpc_status(resp.headers()) {
        metrics.record_grpc(&method, code);
        return resp;
    }
    if !resp.status().is_success() {
        // Not a gRPC answer at all (an HTTP-level error): count it as UNKNOWN.
        metrics.record_grpc(&method, 2);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
            metrics.record_grpc(&method, code);
        }
        frame
    });
    Response::from_parts(parts, axum::body::Body::new(body))
}

/// Serves the metrics on `listener` at any path until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().fallback(move || {
        let body = metrics.encode();
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

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(Arc::from(&[1.0, 5.0, 10.0][..]));
        h.observe_nanos(500_000); // 0.5 ms
        h.observe_nanos(1_000_000); // 1 ms: in le="1"
        h.observe_nanos(7_000_000); // 7 ms
        h.observe_nanos(20_000_000); // 20 ms: only +Inf
        let mut out = String::new();
        h.encode(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"1\"} 2\n\
             x_bucket{a=\"b\",le=\"5\"} 2\n\
             x_bucket{a=\"b\",le=\"10\"} 3\n\
             x_bucket{a=\"b\",le=\"+Inf\"} 4\n\
             x_sum{a=\"b\"} 28.5\n\
             x_count{a=\"b\"} 4\n"
        );
    }

    #[test]
    fn encodes_series_sorted_with_escaped_labels() {
        let m = Metrics::new("my\"app", &[]);
        m.record_http(&Method::GET, "/v1.0/state/{store}/{key}", 204, 3_000_000);
        m.record_http(&Method::GET, "/v1.0/state/{store}/{key}", 204, 3_000_000);
        m.record_http(&Method::POST, "/v1.0/state/{store}", 500, 1);
        m.record_grpc("/dapr.proto.runtime.v1.Dapr/GetState", 0);
        m.record_grpc("/dapr.proto.runtime.v1.Dapr/GetState", 5);
        m.record_grpc("/dapr.proto.runtime.v1.Dapr/GetState", 99);
        m.set_components_loaded(3);
        let text = m.encode();
        let app = "app_id=\"my\\\"app\"";
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines[0],
            format!(
                "dapr_http_server_request_count{{{app},method=\"POST\",path=\"/v1.0/state/{{store}}\",status=\"500\"}} 1"
            )
        );
        assert_eq!(
            lines[1],
            format!(
                "dapr_http_server_request_count{{{app},method=\"GET\",path=\"/v1.0/state/{{store}}/{{key}}\",status=\"204\"}} 2"
            )
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
        for (status, n) in [("OK", 1), ("NOT_FOUND", 1), ("UNKNOWN", 1)] {
            assert!(
                text.contains(&format!(
                    "dapr_grpc_io_server_completed_rpcs{{{app},grpc_server_method=\"/dapr.proto.runtime.v1.Dapr/GetState\",grpc_server_status=\"{status}\"}} {n}\n"
                )),
                "{text}"
            );
        }
        assert!(text.contains(&format!("dapr_runtime_component_loaded{{{app}}} 3\n")));
        assert!(text.contains("# TYPE dapr_http_server_latency histogram\n"));
    }

    #[test]
    fn configured_buckets_are_sorted_and_deduplicated() {
        let m = Metrics::new("a", &[10.0, 1.0, 10.0, f64::INFINITY]);
        assert_eq!(&*m.bounds, &[1.0, 10.0]);
    }
}
