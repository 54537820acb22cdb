//! End-to-end: `bindings.kafka` through the real binary, against a Kafka-compatible broker
//! (tansu at 127.0.0.1:9092 when it answers, else a private one started by the test;
//! skipped when none can be had, unless `TANDEM_REQUIRE_SERVICES=1`): `create` over
//! `/v1.0/bindings/{name}` with a key and headers, the input side delivering each record to
//! the HTTP app (`OPTIONS` probe, `POST /<name>` with Kafka's metadata as headers), and an
//! event the app refused delivered again with `consumeRetryEnabled: true`.

mod common;

use std::time::{Duration, Instant};

use common::binding::{self, component, invoke, wait_started};
use common::{assert_error, start, tandem};
use serde_json::json;
use tandem_testkit::kafka::Tansu;
use tandem_testkit::subscriber::{Answer, Received, Subscriber};

const WAIT: Duration = Duration::from_secs(30);

fn binding_yaml(name: &str, brokers: &str, topic: &str, extra: &[(&str, &str)]) -> String {
    let group = format!("{topic}-group");
    let mut metadata = vec![
        ("brokers", brokers),
        ("authType", "none"),
        ("publishTopic", topic),
        ("topics", topic),
        ("consumerGroup", group.as_str()),
        ("sessionTimeout", "2s"),
        ("heartbeatInterval", "300ms"),
    ];
    metadata.extend_from_slice(extra);
    component(name, "bindings.kafka", &metadata)
}

/// A name no other test run uses, so that runs sharing the broker never see each other.
fn unique(what: &str) -> String {
    binding::unique("kafka-binding-e2e", what)
}

/// Deliveries of records (the `OPTIONS` probe carries no Kafka metadata).
fn events(got: &[Received], path: &str) -> Vec<Received> {
    got.iter()
        .filter(|r| r.path == path && r.headers.contains_key("__topic"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn create_and_read_back_through_the_app() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    let topic = unique("orders");
    let app = Subscriber::start(json!([])).await;
    let sc = start(tandem().app_id(&unique("app")).app_port(app.port).resource(
        "orders.yaml",
        &binding_yaml("orders", broker.brokers(), &topic, &[]),
    ))
    .await;
    // `read` returns once the group gave the member its partitions, so what is written next
    // reaches it.
    wait_started(&sc, 1, WAIT).await;

    let resp = invoke(
        &sc,
        "orders",
        json!({"operation": "create", "data": {"orderId": 7}, "metadata": {"partitionKey": "order-7", "tenant": "acme"}}),
    )
    .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let got = app
        .wait_for(WAIT, "the record at the app", |r| {
            !events(r, "/orders").is_empty()
        })
        .await;
    let ev = &events(&got, "/orders")[0];
    assert_eq!(ev.body, json!({"orderId": 7}));
    assert_eq!(ev.headers["content-type"], "application/json");
    assert_eq!(ev.headers["__key"], "order-7");
    assert_eq!(ev.headers["tenant"], "acme");
    assert_eq!(ev.headers["__topic"], topic.as_str());
    assert!(ev.headers.contains_key("__offset") && ev.headers.contains_key("__partition"));

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
}

#[tokio::test]
async fn refused_events_come_back_with_consume_retry() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    let strict = unique("strict");
    let lenient = unique("lenient");
    let app = Subscriber::start(json!([])).await;
    let sc = start(
        tandem()
            .app_id(&unique("app"))
            .app_port(app.port)
            .resource(
                "strict.yaml",
                &binding_yaml(
                    "strict",
                    broker.brokers(),
                    &strict,
                    &[
                        ("consumeRetryEnabled", "true"),
                        ("consumeRetryInterval", "100ms"),
                    ],
                ),
            )
            .resource(
                "lenient.yaml",
                &binding_yaml("lenient", broker.brokers(), &lenient, &[]),
            ),
    )
    .await;
    wait_started(&sc, 2, WAIT).await;
    // After the OPTIONS probes, which must succeed for the bindings to start.
    app.answer("/strict", Answer::Status(500));
    app.answer("/lenient", Answer::Status(500));
    for name in ["strict", "lenient"] {
        let resp = invoke(
            &sc,
            name,
            json!({"operation": "create", "data": {"n": 1}, "metadata": {"partitionNumber": "0"}}),
        )
        .await;
        assert!(resp.status().is_success(), "{name}: {}", resp.status());
    }
    // Refused: `strict` delivers it again and again, `lenient` (Dapr's default for bindings)
    // skips it.
    app.wait_for(WAIT, "three refusals of the strict event", |r| {
        events(r, "/strict").len() >= 3
    })
    .await;
    assert_eq!(events(&app.received(), "/lenient").len(), 1, "skipped");
    app.answer("/strict", Answer::Success);
    let until = Instant::now() + WAIT;
    loop {
        let before = events(&app.received(), "/strict").len();
        tokio::time::sleep(Duration::from_millis(700)).await;
        if events(&app.received(), "/strict").len() == before {
            break;
        }
        assert!(Instant::now() < until, "the strict event keeps coming");
    }
    // Taken: committed, and the next record of the partition follows.
    let resp = invoke(
        &sc,
        "strict",
        json!({"operation": "create", "data": {"n": 2}, "metadata": {"partitionNumber": "0"}}),
    )
    .await;
    assert!(resp.status().is_success());
    let got = app
        .wait_for(WAIT, "the next strict event", |r| {
            events(r, "/strict").iter().any(|e| e.body["n"] == 2)
        })
        .await;
    let after: Vec<&Received> = got
        .iter()
        .filter(|e| e.path == "/strict" && e.body["n"] == 2)
        .collect();
    assert_eq!(after.len(), 1);
}
