//! End-to-end: `bindings.rabbitmq` through the real binary, against the RabbitMQ at
//! 127.0.0.1:5672 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `create`
//! over `/v1.0/bindings/{name}` with metadata, the input side delivering each message to the
//! HTTP app (`OPTIONS` probe, `POST /<name>` with the message's headers), and a message the
//! app refused delivered again until it takes it.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, client, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::Sidecar;
use tandem_testkit::services;
use tandem_testkit::subscriber::{Answer, Received, Subscriber};

const RABBITMQ: &str = "127.0.0.1:5672";
const WAIT: Duration = Duration::from_secs(20);

fn binding_yaml(name: &str, queue: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: bindings.rabbitmq
  version: v1
  metadata:
  - name: host
    value: "amqp://guest:guest@{RABBITMQ}"
  - name: queueName
    value: "{queue}"
  - name: deleteWhenUnused
    value: "true"
  - name: reconnectWaitInSeconds
    value: "1"
"#
    )
}

/// A name no other test run uses, so that runs sharing the broker never see each other.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("rabbit-binding-e2e-{what}-{}-{nanos}", std::process::id())
}

/// Waits until the sidecar logged a started input binding (reading from the queue).
async fn wait_started(sc: &Sidecar) {
    let until = Instant::now() + WAIT;
    loop {
        let log = sc.log();
        if log.contains("input binding started") {
            return;
        }
        assert!(
            Instant::now() < until,
            "the input binding never started; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn invoke(sc: &Sidecar, name: &str, body: Value) -> reqwest::Response {
    client()
        .post(sc.url(&format!("/v1.0/bindings/{name}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Events delivered to `path` (the `OPTIONS` probe has no body).
fn events(got: &[Received], path: &str) -> Vec<Received> {
    got.iter()
        .filter(|r| r.path == path && !r.body.is_null())
        .cloned()
        .collect()
}

#[tokio::test]
async fn create_and_read_back_through_the_app() {
    if !services::require("RabbitMQ", RABBITMQ) {
        return;
    }
    let queue = unique("orders");
    let app = Subscriber::start(json!([])).await;
    let sc = start(
        tandem()
            .app_id(&unique("app"))
            .app_port(app.port)
            .resource("orders.yaml", &binding_yaml("orders", &queue)),
    )
    .await;
    wait_started(&sc).await;

    let resp = invoke(
        &sc,
        "orders",
        json!({"operation": "create", "data": {"orderId": 7}, "metadata": {"tenant": "acme", "ttlInSeconds": "60"}}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let got = app
        .wait_for(WAIT, "the message at the app", |r| {
            !events(r, "/orders").is_empty()
        })
        .await;
    let ev = &events(&got, "/orders")[0];
    assert_eq!(ev.body, json!({"orderId": 7}));
    assert_eq!(ev.headers["content-type"], "application/json");
    assert_eq!(ev.headers["tenant"], "acme");
    assert_eq!(ev.headers["ttlinseconds"], "60");

    let resp = invoke(&sc, "orders", json!({"operation": "get"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "does not support operation get",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events(&app.received(), "/orders").len(), 1, "once");

    // Refused: back to the queue and delivered again until the app takes it.
    app.answer("/orders", Answer::Status(500));
    let resp = invoke(
        &sc,
        "orders",
        json!({"operation": "create", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let refused = |r: &[Received]| {
        events(r, "/orders")
            .iter()
            .filter(|e| e.body["n"] == 2)
            .count()
    };
    app.wait_for(WAIT, "three refusals", |r| refused(r) >= 3)
        .await;
    app.answer("/orders", Answer::Success);
    let switched = Instant::now();
    // The first delivery after the switch is accepted and acknowledged; no more follow.
    app.wait_for(WAIT, "a delivery after the switch", |r| {
        events(r, "/orders")
            .iter()
            .any(|e| e.body["n"] == 2 && e.at > switched)
    })
    .await;
    let total = refused(&app.received());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(refused(&app.received()), total, "acknowledged once taken");
}
