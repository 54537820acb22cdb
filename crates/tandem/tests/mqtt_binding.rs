//! End-to-end: `bindings.mqtt3` through the real binary, against the Mosquitto broker at
//! 127.0.0.1:1883 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `create`
//! over `/v1.0/bindings/{name}` (to the component's topic and to the request's), the input
//! side subscribed with a wildcard delivering each message to the HTTP app (`OPTIONS` probe,
//! `POST /<name>` with the `topic` header), and a message the app refused handed over again
//! until it takes it (`backOffMaxRetries: -1`).

mod common;

use std::time::Duration;

use common::binding::{self, component, events, invoke, redelivered_until_taken, wait_started};
use common::{assert_error, start, tandem};
use serde_json::json;
use tandem_testkit::services;
use tandem_testkit::subscriber::{Answer, Subscriber};

const MOSQUITTO: &str = "127.0.0.1:1883";
const WAIT: Duration = Duration::from_secs(20);

fn binding_yaml(name: &str, topic: &str, consumer: &str) -> String {
    component(
        name,
        "bindings.mqtt3",
        &[
            ("url", &format!("tcp://{MOSQUITTO}")),
            ("topic", topic),
            ("consumerID", consumer),
            ("backOffMaxRetries", "-1"),
        ],
    )
}

/// A name no other test run uses, so that runs sharing the broker never see each other.
fn unique(what: &str) -> String {
    binding::unique("mqtt-binding-e2e", what)
}

#[tokio::test]
async fn create_and_read_back_through_the_app() {
    if !services::require("Mosquitto", MOSQUITTO) {
        return;
    }
    let base = format!("tandem/{}", unique("sensors"));
    let app = Subscriber::start(json!([])).await;
    let sc = start(
        tandem()
            .app_id(&unique("app"))
            .app_port(app.port)
            .resource(
                "sensors.yaml",
                &binding_yaml("sensors", &format!("{base}/+"), &unique("client")),
            )
            .resource(
                "out.yaml",
                &binding_yaml("out", &format!("{base}/default"), &unique("client")),
            ),
    )
    .await;
    // Both: the app answers every OPTIONS probe.
    wait_started(&sc, 2, WAIT).await;

    let resp = invoke(
        &sc,
        "out",
        json!({"operation": "create", "data": {"celsius": 21}}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let got = app
        .wait_for(WAIT, "the message at the app", |r| {
            !events(r, "/sensors").is_empty()
        })
        .await;
    let ev = &events(&got, "/sensors")[0];
    assert_eq!(ev.body, json!({"celsius": 21}));
    assert_eq!(ev.headers["content-type"], "application/json");
    assert_eq!(ev.headers["topic"], format!("{base}/default"));

    // The request's topic wins; the component's own topic has wildcards, so it needs one.
    let resp = invoke(
        &sc,
        "sensors",
        json!({"operation": "create", "data": {"celsius": 22}, "metadata": {"topic": format!("{base}/kitchen")}}),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let got = app
        .wait_for(WAIT, "the second message", |r| {
            events(r, "/sensors").len() >= 2
        })
        .await;
    let ev = &events(&got, "/sensors")[1];
    assert_eq!(ev.body, json!({"celsius": 22}));
    assert_eq!(ev.headers["topic"], format!("{base}/kitchen"));
    let resp = invoke(&sc, "sensors", json!({"operation": "create", "data": 1})).await;
    assert_error(resp, 500, "ERR_INVOKE_OUTPUT_BINDING", "wildcards").await;
    let resp = invoke(&sc, "out", json!({"operation": "get"})).await;
    assert_error(
        resp,
        500,
        "ERR_INVOKE_OUTPUT_BINDING",
        "does not support operation get",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events(&app.received(), "/sensors").len(), 2, "once each");

    // Refused: handed over again until the app takes it, then acknowledged.
    app.answer("/sensors", Answer::Status(500));
    let resp = invoke(&sc, "out", json!({"operation": "create", "data": {"n": 3}})).await;
    assert_eq!(resp.status(), 204);
    redelivered_until_taken(&app, "/sensors", 3, WAIT).await;
}
