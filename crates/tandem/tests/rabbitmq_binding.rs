//! End-to-end: `bindings.rabbitmq` through the real binary, against the RabbitMQ at
//! 127.0.0.1:5672 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `create`
//! over `/v1.0/bindings/{name}` with metadata, the input side delivering each message to the
//! HTTP app (`OPTIONS` probe, `POST /<name>` with the message's headers), and a message the
//! app refused delivered again until it takes it.

mod common;

use std::time::Duration;

use common::binding::{self, component, events, invoke, redelivered_until_taken, wait_started};
use common::{assert_error, start, tandem};
use serde_json::json;
use tandem_testkit::services;
use tandem_testkit::subscriber::{Answer, Subscriber};

const RABBITMQ: &str = "127.0.0.1:5672";
const WAIT: Duration = Duration::from_secs(20);

fn binding_yaml(name: &str, queue: &str) -> String {
    component(
        name,
        "bindings.rabbitmq",
        &[
            ("host", &format!("amqp://guest:guest@{RABBITMQ}")),
            ("queueName", queue),
            ("deleteWhenUnused", "true"),
            ("reconnectWaitInSeconds", "1"),
        ],
    )
}

/// A name no other test run uses, so that runs sharing the broker never see each other.
fn unique(what: &str) -> String {
    binding::unique("rabbit-binding-e2e", what)
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
    wait_started(&sc, 1, WAIT).await;

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
    // The first delivery after the switch is accepted and acknowledged; no more follow.
    redelivered_until_taken(&app, "/orders", 2, WAIT).await;
}
