//! End-to-end: distributed tracing through the real binary.
//!
//! A small collector in the test receives the spans over OTLP/HTTP (protobuf), OTLP/gRPC and
//! Zipkin v2 JSON. Checked: an invocation app → sidecar A → sidecar B → app B is one trace
//! with the right parent links across both sidecars; a publish → delivery trace; a gRPC call
//! continuing the caller's `traceparent` or `grpc-trace-bin`; and `samplingRate: "0"`, which
//! exports nothing and creates no `traceparent`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::post;
use common::{client, start, tandem, tandem_for};
use dapr::dapr::proto::runtime::v1 as pb;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde_json::{Value, json};
use tandem_runtime::trace::export::otlp;
use tandem_runtime::trace::{SpanContext, hex};
use tandem_testkit::mock_app::MockApp;
use tandem_testkit::subscriber::Subscriber;

const WAIT: Duration = Duration::from_secs(15);
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One span as the collector saw it, whatever the protocol.
#[derive(Clone, Debug)]
struct Seen {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: String,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Seen>>>,
}

impl Collector {
    fn push_otlp(&self, req: otlp::ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    otlp::any_value::Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Seen {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        kind: match s.kind {
                            2 => "SERVER",
                            3 => "CLIENT",
                            4 => "PRODUCER",
                            5 => "CONSUMER",
                            _ => "OTHER",
                        }
                        .to_owned(),
                    });
                }
            }
        }
    }

    fn push_zipkin(&self, body: &[u8]) {
        let list: Vec<Value> = serde_json::from_slice(body).expect("zipkin JSON array");
        let mut spans = self.spans.lock().unwrap();
        for s in list {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            spans.push(Seen {
                service: s["localEndpoint"]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                name: text("name"),
                trace_id: text("traceId"),
                span_id: text("id"),
                parent: text("parentId"),
                kind: text("kind"),
            });
        }
    }

    fn spans(&self) -> Vec<Seen> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a span matches `pred`.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return s;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no span {what}; got {:#?}", self.spans());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn otlp_http(State(c): State<Collector>, headers: HeaderMap, body: Bytes) -> &'static str {
    assert_eq!(headers["content-type"], "application/x-protobuf");
    c.push_otlp(otlp::ExportTraceServiceRequest::decode(body).expect("OTLP protobuf"));
    ""
}

async fn zipkin(State(c): State<Collector>, body: Bytes) -> &'static str {
    c.push_zipkin(&body);
    ""
}

/// OTLP/gRPC `Export`: one length-prefixed message in, an empty answer and `grpc-status: 0`
/// trailers out.
async fn otlp_grpc(State(c): State<Collector>, body: Bytes) -> http::Response<Body> {
    assert!(body.len() >= 5 && body[0] == 0, "a gRPC frame");
    c.push_otlp(otlp::ExportTraceServiceRequest::decode(&body[5..]).expect("OTLP protobuf"));
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .with_trailers(async move { Some(Ok(trailers)) });
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(Body::new(body))
        .unwrap()
}

/// Starts the collector; answers its address (`127.0.0.1:<port>`).
async fn collector() -> (Collector, String) {
    let c = Collector::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(otlp_http))
        .route("/api/v2/spans", post(zipkin))
        .route(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            post(otlp_grpc),
        )
        .with_state(c.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (c, addr)
}

/// A Configuration file with `tracing` as given (YAML, indented under `spec:`).
fn config(dir: &std::path::Path, name: &str, tracing: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: tracing\nspec:\n  tracing:\n{tracing}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn otel(addr: &str, protocol: &str) -> String {
    format!(
        "    samplingRate: \"1\"\n    otel:\n      endpointAddress: \"{addr}\"\n      protocol: {protocol}\n      isSecure: false\n"
    )
}

fn ids(tp: &str) -> (String, String) {
    let sc = SpanContext::parse(tp).unwrap_or_else(|| panic!("invalid traceparent {tp:?}"));
    (hex(&sc.trace_id), hex(&sc.span_id))
}

#[tokio::test]
async fn invocation_across_two_sidecars_is_one_trace() {
    let (collector, addr) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nr.db");
    let cfg = config(dir.path(), "config.yaml", &otel(&addr, "http"));
    let app_b = MockApp::start("b").await;
    let _b = start(tandem_for(&app_b, &db).arg("--config").arg(&cfg)).await;
    let a = start(
        tandem()
            .app_id("a")
            .name_resolution_db(&db)
            .arg("--config")
            .arg(&cfg),
    )
    .await;

    let resp = client()
        .post(a.url("/v1.0/invoke/b/method/items/7"))
        .header("traceparent", CALLER)
        .header("tracestate", "vendor=x")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answered = resp.headers()["traceparent"].to_str().unwrap().to_owned();
    let v: Value = resp.json().await.unwrap();
    let at_app = v["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert_eq!(v["headers"]["tracestate"], "vendor=x");
    let (caller_trace, caller_span) = ids(CALLER);
    let (app_trace, app_parent) = ids(&at_app);
    assert_eq!(
        app_trace, caller_trace,
        "app B continues the caller's trace"
    );

    let span_a = collector
        .wait_for("from sidecar a", |s| s.service == "a")
        .await;
    let span_b = collector
        .wait_for("from sidecar b", |s| s.service == "b")
        .await;
    assert_eq!(span_a.name, "CallLocal/b/items/7");
    assert_eq!(span_a.kind, "CLIENT");
    assert_eq!(span_a.trace_id, caller_trace);
    assert_eq!(
        span_a.parent, caller_span,
        "A's span is a child of the caller"
    );
    assert_eq!(span_b.name, "CallLocal/b/items/7");
    assert_eq!(span_b.kind, "SERVER");
    assert_eq!(span_b.trace_id, caller_trace);
    assert_eq!(span_b.parent, span_a.span_id, "B's span is a child of A's");
    assert_eq!(
        app_parent, span_b.span_id,
        "app B's parent is B's server span"
    );
    // The caller gets A's span back.
    assert_eq!(ids(&answered), (caller_trace, span_a.span_id.clone()));
}

#[tokio::test]
async fn publish_and_delivery_are_one_trace_over_otlp_grpc() {
    let (collector, addr) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "config.yaml", &otel(&addr, "grpc"));
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]))
            .await;
    let sc = start(
        tandem()
            .app_id("shop")
            .resource(
                "pubsub.yaml",
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.in-memory\n  version: v1\n",
            )
            .arg("--app-port")
            .arg(sub.port.to_string())
            .arg("--config")
            .arg(&cfg),
    )
    .await;
    // Wait for the subscription.
    for _ in 0..500 {
        let m: Value = client()
            .get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["subscriptions"].as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // No traceparent from the caller: the sidecar starts the trace (sampling rate 1).
    let resp = client()
        .post(sc.url("/v1.0/publish/pubsub/orders"))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (trace_id, api_span) = ids(resp.headers()["traceparent"].to_str().unwrap());
    let got = sub.wait_for(WAIT, "the event", |r| !r.is_empty()).await;
    let delivered = got[0].headers["traceparent"].clone();
    let (delivered_trace, consumer_span) = ids(&delivered);
    assert_eq!(delivered_trace, trace_id);
    let ce = &got[0].body;
    assert_eq!(ce["traceid"], ce["traceparent"]);
    let (ce_trace, producer_span) = ids(ce["traceparent"].as_str().unwrap());
    assert_eq!(ce_trace, trace_id);

    let api = collector
        .wait_for("of the publish call", |s| s.span_id == api_span)
        .await;
    assert_eq!(api.name, "/v1.0/publish/pubsub/orders");
    assert_eq!(api.parent, "");
    let producer = collector
        .wait_for("producer", |s| s.span_id == producer_span)
        .await;
    assert_eq!(producer.kind, "PRODUCER");
    assert_eq!(producer.parent, api_span);
    let consumer = collector
        .wait_for("consumer", |s| s.span_id == consumer_span)
        .await;
    assert_eq!(consumer.name, "pubsub/orders");
    assert_eq!(consumer.kind, "CONSUMER");
    assert_eq!(consumer.trace_id, trace_id);
    assert_eq!(consumer.parent, producer_span);
    assert_eq!(consumer.service, "shop");

    // The same over gRPC, with no trace metadata either: the call's own span starts the
    // trace, and the delivery continues it.
    let mut c = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let resp = c
        .publish_event(pb::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            data: br#"{"n":2}"#.to_vec(),
            data_content_type: "application/json".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let bin = resp
        .metadata()
        .get_bin("grpc-trace-bin")
        .expect("grpc-trace-bin");
    let answered = SpanContext::from_binary(bin.as_encoded_bytes()).unwrap();
    let got = sub.wait_for(WAIT, "the gRPC event", |r| r.len() > 1).await;
    let (delivered_trace, _) = ids(&got[1].headers["traceparent"]);
    assert_eq!(delivered_trace, hex(&answered.trace_id));
    assert_ne!(delivered_trace, trace_id);
    let (ce_trace, producer_span) = ids(got[1].body["traceparent"].as_str().unwrap());
    assert_eq!(ce_trace, delivered_trace);
    let api = collector
        .wait_for("of the gRPC publish", |s| {
            s.span_id == hex(&answered.span_id)
        })
        .await;
    assert_eq!(api.name, "/dapr.proto.runtime.v1.Dapr/PublishEvent");
    assert_eq!(api.parent, "");
    let producer = collector
        .wait_for("gRPC producer", |s| s.span_id == producer_span)
        .await;
    assert_eq!(producer.parent, hex(&answered.span_id));
}

#[tokio::test]
async fn grpc_calls_continue_the_callers_trace_over_zipkin() {
    let (collector, addr) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "config.yaml",
        &format!(
            "    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: \"http://{addr}/api/v2/spans\"\n"
        ),
    );
    let sc = start(
        tandem()
            .app_id("zip")
            .resource("statestore.yaml", common::IN_MEMORY)
            .arg("--config")
            .arg(&cfg),
    )
    .await;
    let mut c = DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap();
    let get = |meta: (&'static str, &str)| {
        let mut req = tonic::Request::new(pb::GetStateRequest {
            store_name: "statestore".into(),
            key: "k".into(),
            ..Default::default()
        });
        req.metadata_mut().insert(meta.0, meta.1.parse().unwrap());
        req
    };
    // traceparent metadata.
    let resp = c.get_state(get(("traceparent", CALLER))).await.unwrap();
    let bin = resp
        .metadata()
        .get_bin("grpc-trace-bin")
        .expect("grpc-trace-bin");
    let answered = SpanContext::from_binary(bin.as_encoded_bytes()).unwrap();
    let (caller_trace, caller_span) = ids(CALLER);
    assert_eq!(hex(&answered.trace_id), caller_trace);
    let span = collector
        .wait_for("of GetState", |s| s.parent == caller_span)
        .await;
    assert_eq!(span.name, "/dapr.proto.runtime.v1.Dapr/GetState");
    assert_eq!(span.trace_id, caller_trace);
    assert_eq!(span.span_id, hex(&answered.span_id));
    assert_eq!(span.service, "zip");

    // grpc-trace-bin (binary metadata, base64 on the wire).
    let parent =
        SpanContext::parse("00-11111111111111111111111111111111-2222222222222222-01").unwrap();
    let mut req = get(("x-unused", "1"));
    req.metadata_mut().insert_bin(
        "grpc-trace-bin",
        tonic::metadata::MetadataValue::from_bytes(&{
            let mut raw = [0u8; 29];
            raw[2..18].copy_from_slice(&parent.trace_id);
            raw[18] = 1;
            raw[19..27].copy_from_slice(&parent.span_id);
            raw[27] = 2;
            raw[28] = 1;
            raw
        }),
    );
    c.get_state(req).await.unwrap();
    let span = collector
        .wait_for("continuing grpc-trace-bin", |s| {
            s.parent == "2222222222222222"
        })
        .await;
    assert_eq!(span.trace_id, "11111111111111111111111111111111");

    // An invalid traceparent is ignored (a new trace), never an error.
    c.get_state(get(("traceparent", "00-zz-1-01")))
        .await
        .unwrap();
}

/// A sidecar for the app `app_id` (a mock app) exporting to the Zipkin collector at `addr`
/// with `samplingRate: rate`; its files go under `dir`.
async fn zipkin_sidecar(
    dir: &std::path::Path,
    app_id: &str,
    rate: &str,
    addr: &str,
) -> (MockApp, tandem_testkit::Sidecar) {
    let file = config(
        dir,
        &format!("{app_id}.yaml"),
        &format!(
            "    samplingRate: \"{rate}\"\n    zipkin:\n      endpointAddress: \"http://{addr}/api/v2/spans\"\n"
        ),
    );
    let app = MockApp::start(app_id).await;
    let sc = start(
        tandem()
            .app_id(app_id)
            .app_port(app.port())
            .name_resolution_db(dir.join(format!("{app_id}-nr.db")))
            .arg("--config")
            .arg(&file),
    )
    .await;
    (app, sc)
}

#[tokio::test]
async fn sampling_rate_zero_exports_nothing_and_creates_no_traceparent() {
    let (collector, addr) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (_app, sc) = zipkin_sidecar(dir.path(), "quiet", "0", &addr).await;
    let resp = client()
        .get(sc.url("/v1.0/invoke/quiet/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("traceparent").is_none());
    let v: Value = resp.json().await.unwrap();
    assert!(v["headers"].get("traceparent").is_none(), "{v}");
    // A caller's traceparent passes through untouched.
    let v: Value = client()
        .get(sc.url("/v1.0/invoke/quiet/method/x"))
        .header("traceparent", CALLER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["traceparent"], CALLER);

    // The same calls with sampling on are exported: the collector works, and nothing came
    // from the sidecar above.
    let (_app2, sc2) = zipkin_sidecar(dir.path(), "loud", "1", &addr).await;
    let resp = client()
        .get(sc2.url("/v1.0/invoke/loud/method/x"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("traceparent").is_some());
    collector
        .wait_for("from loud", |s| s.service == "loud")
        .await;
    // Batches leave within half a second; give the quiet sidecar twice as long.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        collector.spans().iter().all(|s| s.service != "quiet"),
        "{:#?}",
        collector.spans()
    );
}

#[tokio::test]
async fn spans_still_queued_at_shutdown_are_exported_before_exit() {
    let (collector, addr) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let (_app, mut sc) = zipkin_sidecar(dir.path(), "brief", "1", &addr).await;
    let resp = client()
        .get(sc.url("/v1.0/invoke/brief/method/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Stop at once, well inside the half-second batch window of that call's spans.
    let status = sc.terminate().await;
    assert!(status.success(), "{status:?}");
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.service == "brief" && s.name == "CallLocal/brief/x"),
        "the call's spans were lost at shutdown: {spans:#?}"
    );
}

#[tokio::test]
async fn invalid_baggage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "c.yaml", "    samplingRate: \"1\"\n");
    let sc = start(tandem().app_id("bag").arg("--config").arg(&cfg)).await;
    let resp = client()
        .get(sc.url("/v1.0/metadata"))
        .header("baggage", "not valid")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client()
        .get(sc.url("/v1.0/metadata"))
        .header("baggage", "user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["baggage"], "user=alice");
    assert!(resp.headers().get("traceparent").is_some());
}

#[tokio::test]
async fn input_binding_events_carry_a_bindings_span() {
    let (collector, addr) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "config.yaml",
        &format!(
            "    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: \"http://{addr}/api/v2/spans\"\n"
        ),
    );
    let app = Subscriber::start(json!([])).await;
    let _sc = start(
        tandem()
            .app_id("cron-app")
            .app_port(app.port)
            .resource(
                "tick.yaml",
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: tick\nspec:\n  type: bindings.cron\n  version: v1\n  metadata:\n  - name: schedule\n    value: \"@every 1s\"\n",
            )
            .arg("--config")
            .arg(&cfg),
    )
    .await;
    let got = app
        .wait_for(WAIT, "a cron event", |got| {
            got.iter()
                .any(|r| r.path == "/tick" && r.headers.contains_key("traceparent"))
        })
        .await;
    let event = got
        .iter()
        .find(|r| r.path == "/tick" && r.headers.contains_key("traceparent"))
        .unwrap();
    let (trace_id, span_id) = ids(&event.headers["traceparent"]);
    let span = collector
        .wait_for("of the binding event", |s| s.span_id == span_id)
        .await;
    assert_eq!(span.name, "bindings/tick");
    assert_eq!(span.trace_id, trace_id);
    assert_eq!(span.service, "cron-app");
}
