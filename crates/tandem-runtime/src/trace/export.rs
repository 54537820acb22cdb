//! Span export: OTLP over HTTP (protobuf) or gRPC, Zipkin v2 JSON, stdout.
//!
//! The exporter is written here on purpose rather than taken from the `opentelemetry` SDK
//! crates: those bring their own runtime glue, a second HTTP/gRPC client stack and a large
//! dependency tree, all for what is, on the wire, one protobuf message posted in batches.
//! The few OTLP messages are declared below with prost (already used for the Dapr API), and
//! the requests go through hyper, like every other outbound call of the sidecar.
//!
//! Spans reach [`spawn`]'s task through a bounded channel: [`super::Span::end`] never waits,
//! and when the queue is full (the collector is slow or down) spans are dropped and counted.
//! The task batches what arrives within a short window, posts the batch to every sink under
//! the configured timeout, and logs a failure once per failure streak.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Settings, Sink, SpanData, SpanKind, hex};

/// Spans waiting for export at most; more are dropped.
pub const QUEUE: usize = 2048;
/// Spans per export request at most.
pub const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for company.
pub const BATCH_WINDOW: Duration = Duration::from_millis(500);

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A request to export every span queued so far; answered once they are sent.
pub(crate) type FlushRequest = oneshot::Sender<()>;

/// Starts the export task; the returned senders feed it spans and flush requests.
pub(crate) fn spawn(settings: Settings) -> (mpsc::Sender<SpanData>, mpsc::Sender<FlushRequest>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (flush_tx, flush_rx) = mpsc::channel(4);
    tokio::spawn(run(Exporter::new(settings), rx, flush_rx));
    (tx, flush_tx)
}

async fn run(
    mut exporter: Exporter,
    mut rx: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<FlushRequest>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            span = rx.recv() => match span {
                Some(span) => batch.push(span),
                None => break,
            },
            Some(done) = flushes.recv() => {
                flush(&mut exporter, &mut rx, &mut batch, done).await;
                continue;
            }
        }
        let deadline = Instant::now() + BATCH_WINDOW;
        let mut closed = false;
        let mut flushed = false;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = tokio::time::timeout_at(deadline, rx.recv()) => match next {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                },
                Some(done) = flushes.recv() => {
                    flush(&mut exporter, &mut rx, &mut batch, done).await;
                    flushed = true;
                    break;
                }
            }
        }
        if !flushed {
            exporter.export(&batch).await;
            batch.clear();
        }
        if closed {
            break;
        }
    }
}

/// Exports `batch` and everything already queued behind it, then answers `done`.
async fn flush(
    exporter: &mut Exporter,
    rx: &mut mpsc::Receiver<SpanData>,
    batch: &mut Vec<SpanData>,
    done: FlushRequest,
) {
    while let Ok(span) = rx.try_recv() {
        batch.push(span);
    }
    for chunk in batch.chunks(MAX_BATCH) {
        exporter.export(chunk).await;
    }
    batch.clear();
    let _ = done.send(());
}

struct Exporter {
    settings: Settings,
    http1: Client<Connector, Full<Bytes>>,
    http2: Client<Connector, Full<Bytes>>,
    failing: Vec<bool>,
}

fn connector(http2: bool) -> Connector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_native_roots() {
        Ok(b) => b,
        Err(err) => {
            tracing::warn!(%err, "no system root certificates; TLS to trace collectors will fail");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default TLS versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
        }
    }
    .https_or_http();
    if http2 {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    }
}

impl Exporter {
    fn new(settings: Settings) -> Self {
        let http1 = Client::builder(TokioExecutor::new()).build(connector(false));
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector(true));
        let failing = vec![false; settings.sinks.len()];
        Self {
            settings,
            http1,
            http2,
            failing,
        }
    }

    async fn export(&mut self, spans: &[SpanData]) {
        let mut otlp = None;
        for i in 0..self.settings.sinks.len() {
            let sink = &self.settings.sinks[i];
            let result = match sink {
                Sink::Stdout => {
                    stdout(spans, &self.settings.resource);
                    Ok(())
                }
                Sink::Zipkin { url } => {
                    let body = zipkin_json(spans, &self.settings.resource);
                    self.post(false, url, "application/json", &[], body).await
                }
                Sink::OtlpHttp { url, headers } => {
                    let body = otlp
                        .get_or_insert_with(|| otlp_request(spans, &self.settings.resource))
                        .clone();
                    self.post(false, url, "application/x-protobuf", headers, body)
                        .await
                }
                Sink::OtlpGrpc { url, headers } => {
                    let msg = otlp
                        .get_or_insert_with(|| otlp_request(spans, &self.settings.resource))
                        .clone();
                    let mut framed = BytesMut::with_capacity(msg.len() + 5);
                    framed.put_u8(0);
                    framed.put_u32(msg.len() as u32);
                    framed.extend_from_slice(&msg);
                    let url = format!(
                        "{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                        url.trim_end_matches('/')
                    );
                    self.post(true, &url, "application/grpc", headers, framed.freeze())
                        .await
                }
            };
            match result {
                Ok(()) => {
                    if std::mem::take(&mut self.failing[i]) {
                        tracing::info!(sink = sink_name(sink), "trace export recovered");
                    }
                }
                Err(err) => {
                    if !std::mem::replace(&mut self.failing[i], true) {
                        tracing::warn!(sink = sink_name(sink), %err, "trace export failed; spans are dropped until it recovers");
                    } else {
                        tracing::debug!(sink = sink_name(sink), %err, "trace export failed");
                    }
                }
            }
        }
    }

    async fn post(
        &self,
        grpc: bool,
        url: &str,
        content_type: &'static str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<(), String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type);
        if grpc {
            req = req.header(header::TE, "trailers");
        }
        if let Some(h) = req.headers_mut() {
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::try_from(k.to_ascii_lowercase()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    h.insert(k, v);
                }
            }
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let client = if grpc { &self.http2 } else { &self.http1 };
        let call = async {
            let resp = client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            let status = resp.status();
            let mut grpc_status = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            if let Some(t) = collected.trailers()
                && let Some(v) = t.get("grpc-status").and_then(|v| v.to_str().ok())
            {
                grpc_status = Some(v.to_owned());
            }
            if !status.is_success() {
                return Err(format!("collector answered {status}"));
            }
            match grpc_status.as_deref() {
                Some("0") | None if !grpc => Ok(()),
                Some("0") => Ok(()),
                Some(code) => Err(format!("collector answered grpc-status {code}")),
                None => Err("collector answered without grpc-status".to_owned()),
            }
        };
        tokio::time::timeout(self.settings.timeout, call)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

fn sink_name(sink: &Sink) -> &'static str {
    match sink {
        Sink::Stdout => "stdout",
        Sink::Zipkin { .. } => "zipkin",
        Sink::OtlpHttp { .. } => "otlp-http",
        Sink::OtlpGrpc { .. } => "otlp-grpc",
    }
}

fn stdout(spans: &[SpanData], resource: &[(String, String)]) {
    use std::io::Write as _;
    let service = resource.first().map_or("", |(_, v)| v.as_str());
    let mut out = std::io::stdout().lock();
    for s in spans {
        let mut v = zipkin_span(s, service);
        if let Value::Object(o) = &mut v {
            o.insert("exporter".into(), "tracing".into());
        }
        let _ = writeln!(out, "{v}");
    }
}

fn zipkin_kind(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
        SpanKind::Producer => "PRODUCER",
        SpanKind::Consumer => "CONSUMER",
    }
}

fn zipkin_span(s: &SpanData, service: &str) -> Value {
    let mut tags = Map::new();
    for (k, v) in &s.attributes {
        tags.insert((*k).to_owned(), Value::String(v.clone()));
    }
    if let Some(e) = &s.error {
        tags.insert("otel.status_code".into(), "ERROR".into());
        tags.insert("error".into(), Value::String(e.clone()));
    }
    let mut span = json!({
        "traceId": hex(&s.context.trace_id),
        "id": hex(&s.context.span_id),
        "name": s.name,
        "kind": zipkin_kind(s.kind),
        "timestamp": s.start / 1000,
        "duration": (s.end.saturating_sub(s.start) / 1000).max(1),
        "localEndpoint": {"serviceName": service},
        "tags": tags,
    });
    if let (Some(p), Value::Object(o)) = (&s.parent, &mut span) {
        o.insert("parentId".into(), Value::String(hex(p)));
    }
    span
}

/// The Zipkin v2 JSON body for `spans`.
pub fn zipkin_json(spans: &[SpanData], resource: &[(String, String)]) -> Bytes {
    let service = resource.first().map_or("", |(_, v)| v.as_str());
    let list: Vec<Value> = spans.iter().map(|s| zipkin_span(s, service)).collect();
    Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
}

/// The OTLP `ExportTraceServiceRequest` for `spans`, encoded.
pub fn otlp_request(spans: &[SpanData], resource: &[(String, String)]) -> Bytes {
    let kv = |k: &str, v: &str| otlp::KeyValue {
        key: k.to_owned(),
        value: Some(otlp::AnyValue {
            value: Some(otlp::any_value::Value::StringValue(v.to_owned())),
        }),
    };
    let req = otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource {
                attributes: resource.iter().map(|(k, v)| kv(k, v)).collect(),
                dropped_attributes_count: 0,
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope {
                    name: "tandem".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                spans: spans
                    .iter()
                    .map(|s| otlp::Span {
                        trace_id: s.context.trace_id.to_vec(),
                        span_id: s.context.span_id.to_vec(),
                        trace_state: s.tracestate.clone().unwrap_or_default(),
                        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
                        flags: u32::from(s.context.flags) | 0x100,
                        name: s.name.to_string(),
                        kind: s.kind as i32,
                        start_time_unix_nano: s.start,
                        end_time_unix_nano: s.end,
                        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                        status: Some(match &s.error {
                            Some(e) => otlp::Status {
                                message: e.clone(),
                                code: 2,
                            },
                            None => otlp::Status::default(),
                        }),
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    Bytes::from(req.encode_to_vec())
}

/// The OTLP trace messages this exporter writes (`opentelemetry.proto.collector.trace.v1`,
/// `trace.v1`, `resource.v1`, `common.v1`), fields as numbered by the OTLP protocol.
#[allow(missing_docs)]
pub mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "2")]
        pub dropped_attributes_count: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
            #[prost(double, tag = "4")]
            DoubleValue(f64),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
        #[prost(string, tag = "5")]
        pub name: String,
        /// `SpanKind`: 2 server, 3 client, 4 producer, 5 consumer.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// `StatusCode`: 0 unset, 1 ok, 2 error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {}
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::trace::SpanContext;

    fn span() -> SpanData {
        SpanData {
            context: SpanContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .unwrap(),
            parent: Some([1, 2, 3, 4, 5, 6, 7, 8]),
            tracestate: None,
            name: Cow::Borrowed("CallLocal/b/m"),
            kind: SpanKind::Server,
            start: 1_000_000_000,
            end: 1_002_000_000,
            attributes: vec![("dapr.protocol", "http".into())],
            error: None,
        }
    }

    #[test]
    fn otlp_decodes_back() {
        let resource = [("service.name".to_owned(), "a".to_owned())];
        let bytes = otlp_request(&[span()], &resource);
        let req = otlp::ExportTraceServiceRequest::decode(bytes).unwrap();
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(hex(&s.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex(&s.parent_span_id), "0102030405060708");
        assert_eq!(s.name, "CallLocal/b/m");
        assert_eq!(s.kind, 2);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 2_000_000);
    }

    #[test]
    fn zipkin_shape() {
        let body = zipkin_json(&[span()], &[("service.name".into(), "a".into())]);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v[0]["parentId"], "0102030405060708");
        assert_eq!(v[0]["kind"], "SERVER");
        assert_eq!(v[0]["duration"], 2000);
        assert_eq!(v[0]["localEndpoint"]["serviceName"], "a");
    }
}
