//! End-to-end: `Resiliency` policies applied by the real binary to service invocation, with an
//! in-process mock app that fails, answers slowly or refuses on request.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, client, start, tandem, tandem_for};
use dapr::dapr::proto::common::v1 as pb_common;
use dapr::dapr::proto::runtime::v1 as pb;
use pb::dapr_client::DaprClient;
use tandem_testkit::Sidecar;
use tandem_testkit::mock_app::MockApp;

const POLICIES: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: res
spec:
  policies:
    timeouts:
      fast: 500ms
    retries:
      three:
        policy: constant
        duration: 50ms
        maxRetries: 3
        matching:
          httpStatusCodes: "500-599"
    circuitBreakers:
      cb:
        maxRequests: 1
        timeout: 1s
        trip: consecutiveFailures >= 2
  targets:
    apps:
      a:
        timeout: fast
        retry: three
      b:
        circuitBreaker: cb
"#;

async fn sidecar(app_id: &str, app: &MockApp) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    start(
        tandem()
            .app_id(app_id)
            .app_port(app.port())
            .name_resolution_db(dir.path().join("nr.db"))
            .resource("resiliency.yaml", POLICIES),
    )
    .await
}

fn count(app: &MockApp, request: &str) -> usize {
    app.invocations().iter().filter(|r| *r == request).count()
}

#[tokio::test]
async fn retries_until_the_app_answers() {
    let app = MockApp::start("a").await;
    let sc = sidecar("a", &app).await;
    let c = client();

    // Two failures, then success: the caller sees only the success, the body replayed whole.
    let resp = c
        .post(sc.url("/v1.0/invoke/a/method/flaky"))
        .header("mock-fail-first", "2")
        .header("content-type", "text/plain")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["body"], "payload");
    assert_eq!(count(&app, "POST /flaky"), 3);

    // More failures than retries: the app's last answer comes back as it is.
    let resp = c
        .get(sc.url("/v1.0/invoke/a/method/down"))
        .header("mock-fail-first", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "planned failure 4");
    assert_eq!(count(&app, "GET /down"), 4);

    // A status outside `matching` is not retried.
    let resp = c
        .get(sc.url("/v1.0/invoke/a/method/missing"))
        .header("mock-status", "404")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(count(&app, "GET /missing"), 1);

    // gRPC callers go through the same policy.
    let mut grpc = grpc_client(&sc).await;
    let mut req = grpc_invoke("a", "grpc-flaky");
    req.metadata_mut()
        .insert("mock-fail-first", "3".parse().unwrap());
    let resp = grpc.invoke_service(req).await.unwrap().into_inner();
    let v: serde_json::Value = serde_json::from_slice(&resp.data.unwrap().value).unwrap();
    assert_eq!(v["body"], "over grpc");
    assert_eq!(count(&app, "POST /grpc-flaky"), 4);
}

async fn grpc_client(sc: &Sidecar) -> DaprClient<tonic::transport::Channel> {
    DaprClient::connect(format!("http://127.0.0.1:{}", sc.grpc_port))
        .await
        .unwrap()
}

/// A POST of `over grpc` to `method` of `app` through the gRPC API.
fn grpc_invoke(app: &str, method: &str) -> tonic::Request<pb::InvokeServiceRequest> {
    tonic::Request::new(pb::InvokeServiceRequest {
        id: app.into(),
        message: Some(pb_common::InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: b"over grpc".to_vec(),
            }),
            content_type: "text/plain".into(),
            http_extension: Some(pb_common::HttpExtension {
                verb: 3, // POST
                querystring: String::new(),
            }),
        }),
    })
}

#[tokio::test]
async fn a_slow_app_times_out() {
    let app = MockApp::start("a").await;
    let sc = sidecar("a", &app).await;
    let started = Instant::now();
    let resp = client()
        .get(sc.url("/v1.0/invoke/a/method/slow"))
        .header("mock-wait-ms", "5000")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_error(
        resp,
        500,
        "ERR_DIRECT_INVOKE",
        "failed to invoke, id: a, err: context deadline exceeded",
    )
    .await;
    // Four attempts of 500 ms each (the timeout is retried too), 50 ms apart.
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_millis(4500),
        "took {took:?}"
    );
    assert_eq!(count(&app, "GET /slow"), 4);

    // Over gRPC the timeout is DEADLINE_EXCEEDED, as daprd answers.
    let mut req = grpc_invoke("a", "slow-grpc");
    req.metadata_mut()
        .insert("mock-wait-ms", "5000".parse().unwrap());
    let err = grpc_client(&sc)
        .await
        .invoke_service(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("context deadline exceeded"),
        "{err:?}"
    );

    // A quick answer is untouched by the timeout.
    let resp = client()
        .get(sc.url("/v1.0/invoke/a/method/quick"))
        .header("mock-wait-ms", "50")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_open_circuit_breaker_fails_fast_then_recovers() {
    let app = MockApp::start("b").await;
    let sc = sidecar("b", &app).await;
    let c = client();
    let call = |status: u16| {
        c.get(sc.url("/v1.0/invoke/b/method/op"))
            .header("mock-status", status.to_string())
            .send()
    };
    // Two failures trip the breaker (`consecutiveFailures >= 2`); no retry policy here.
    assert_eq!(call(500).await.unwrap().status(), 500);
    assert_eq!(call(503).await.unwrap().status(), 503);
    assert_eq!(count(&app, "GET /op"), 2);
    // Open: refused without reaching the app.
    for _ in 0..3 {
        assert_error(
            call(200).await.unwrap(),
            500,
            "ERR_DIRECT_INVOKE",
            "failed to invoke, id: b, err: circuit breaker is open",
        )
        .await;
    }
    assert_eq!(count(&app, "GET /op"), 2);
    // Over gRPC an open breaker is UNKNOWN, as daprd answers.
    let mut req = grpc_invoke("b", "op");
    if let Some(m) = req.get_mut().message.as_mut() {
        m.http_extension = Some(pb_common::HttpExtension {
            verb: 1, // GET
            querystring: String::new(),
        });
    }
    let err = grpc_client(&sc)
        .await
        .invoke_service(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(err.message().contains("circuit breaker is open"), "{err:?}");
    assert_eq!(count(&app, "GET /op"), 2);
    // Another method has its own breaker.
    let other = c
        .get(sc.url("/v1.0/invoke/b/method/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    // After `timeout` (1 s) one trial passes; its success closes the breaker.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call(200).await.unwrap().status(), 200);
    assert_eq!(call(200).await.unwrap().status(), 200);
    assert_eq!(count(&app, "GET /op"), 4);
}

const DOWN_STORE: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: down
spec:
  type: state.redis
  version: v1
  metadata:
  - name: redisHost
    value: "127.0.0.1:1"
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: fine
spec:
  type: state.in-memory
  version: v1
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: downbus
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - name: redisHost
    value: "127.0.0.1:1"
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: stores
spec:
  policies:
    retries:
      twice:
        duration: 10ms
        maxRetries: 2
    circuitBreakers:
      storeCB:
        timeout: 30s
        trip: consecutiveFailures >= 3
    timeouts:
      DefaultStatestoreComponentOutboundTimeoutPolicy: 2s
  targets:
    components:
      down:
        outbound:
          retry: twice
          circuitBreaker: storeCB
      downbus:
        outbound:
          retry: twice
          circuitBreaker: storeCB
"#;

#[tokio::test]
async fn component_calls_run_under_their_outbound_policy() {
    let sc = start(tandem().app_id("s").resource("stores.yaml", DOWN_STORE)).await;
    let c = client();
    // Three failed attempts (one call, two retries) trip the breaker...
    let resp = c.get(sc.url("/v1.0/state/down/k")).send().await.unwrap();
    let body = assert_error(
        resp,
        500,
        "ERR_STATE_GET",
        "fail to get k from state store down",
    )
    .await;
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{body}"
    );
    // ...so the next calls fail fast with daprd's words, for every operation on that store.
    assert_error(
        c.get(sc.url("/v1.0/state/down/k")).send().await.unwrap(),
        500,
        "ERR_STATE_GET",
        "fail to get k from state store down: circuit breaker is open",
    )
    .await;
    assert_error(
        c.post(sc.url("/v1.0/state/down"))
            .json(&serde_json::json!([{"key": "k", "value": 1}]))
            .send()
            .await
            .unwrap(),
        500,
        "ERR_STATE_SAVE",
        "circuit breaker is open",
    )
    .await;
    // Publishing, single and bulk, runs under the pub/sub's own breaker.
    let resp = c
        .post(sc.url("/v1.0/publish/downbus/t"))
        .json(&serde_json::json!({"n": 1}))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 500, "ERR_PUBSUB_PUBLISH_MESSAGE", "").await;
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{body}"
    );
    let resp = c
        .post(sc.url("/v1.0-alpha1/publish/bulk/downbus/t"))
        .json(&serde_json::json!([
            {"entryId": "1", "event": {"n": 1}, "contentType": "application/json"},
            {"entryId": "2", "event": {"n": 2}, "contentType": "application/json"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let text = resp.text().await.unwrap();
    assert!(text.contains("circuit breaker is open"), "{text}");
    assert_error(
        c.post(sc.url("/v1.0/publish/downbus/t"))
            .json(&serde_json::json!({"n": 1}))
            .send()
            .await
            .unwrap(),
        500,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        "circuit breaker is open",
    )
    .await;
    // Another store (under the default timeout only) is unaffected.
    let resp = c
        .post(sc.url("/v1.0/state/fine"))
        .json(&serde_json::json!([{"key": "k", "value": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c.get(sc.url("/v1.0/state/fine/k")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "1");
}

const INBOUND: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: bus
spec:
  type: pubsub.in-memory
  version: v1
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: orders
spec:
  pubsubname: bus
  topic: orders
  routes:
    default: /orders
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: inbound
spec:
  policies:
    retries:
      patient:
        duration: 10ms
        maxRetries: 6
  targets:
    components:
      bus:
        inbound:
          retry: patient
"#;

#[tokio::test]
async fn pubsub_deliveries_run_under_the_inbound_policy() {
    let app = MockApp::start("sub").await;
    let dir = tempfile::tempdir().unwrap();
    let sc =
        start(tandem_for(&app, dir.path().join("nr.db")).resource("inbound.yaml", INBOUND)).await;
    let c = client();
    for _ in 0..500 {
        let m: serde_json::Value = c
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
    // Message metadata travels as headers: the app fails the first six deliveries.
    let resp = c
        .post(sc.url("/v1.0/publish/bus/orders?metadata.mock-fail-first=6"))
        .json(&serde_json::json!({"id": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let started = Instant::now();
    while count(&app, "POST /orders") < 7 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Seven attempts 10 ms apart (the built-in schedule would pause 100, 200, 400 ms and give
    // the message back after four), and none after the success.
    let took = started.elapsed();
    assert_eq!(count(&app, "POST /orders"), 7, "{:?}", app.invocations());
    assert!(took < Duration::from_millis(600), "took {took:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(count(&app, "POST /orders"), 7);
}

const CRON: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: tick
spec:
  type: bindings.cron
  version: v1
  metadata:
  - name: schedule
    value: "@every 2s"
  - name: route
    value: /fail-first-2/tick
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: inbound
spec:
  policies:
    retries:
      quick:
        duration: 10ms
        maxRetries: 5
  targets:
    components:
      tick:
        inbound:
          retry: quick
"#;

#[tokio::test]
async fn input_binding_events_run_under_the_inbound_policy() {
    let app = MockApp::start("cron").await;
    let dir = tempfile::tempdir().unwrap();
    let sc = start(tandem_for(&app, dir.path().join("nr.db")).resource("cron.yaml", CRON)).await;
    let started = Instant::now();
    while count(&app, "POST /fail-first-2/tick") == 0 && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = Instant::now();
    // The first event is refused twice and retried 10 ms apart, well before the next tick.
    while count(&app, "POST /fail-first-2/tick") < 3 && first.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = first.elapsed();
    assert_eq!(
        count(&app, "POST /fail-first-2/tick"),
        3,
        "{:?}\n{}",
        app.requests(),
        sc.log()
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");
}
