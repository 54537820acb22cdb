//! End-to-end: `pubsub.mqtt3` through the real binary, against the Mosquitto broker at
//! 127.0.0.1:1883 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): publishing
//! over HTTP, delivery to the subscriber app, RETRY answered until the component redelivers,
//! wildcard subscriptions, shared subscriptions across sidecar processes, and a broker that
//! is down at start-up.

mod common;

use std::time::Duration;

use common::pubsub::{self, Broker, MOSQUITTO, numbers, publish};
use serde_json::json;
use tandem_testkit::proxy::quiet_port;
use tandem_testkit::subscriber::Subscriber;

#[tokio::test]
async fn publish_deliver_and_redeliver_after_retry() {
    let b = Broker::mqtt();
    if !b.require() {
        return;
    }
    // More RETRYs than the runtime's in-process attempts: the component's own redelivery
    // (MQTT 3 brokers redeliver only on reconnection) brings the message back for the last.
    pubsub::deliver_and_redeliver_after_retry(&b, "", Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn wildcard_subscription() {
    let b = Broker::mqtt();
    if !b.require() {
        return;
    }
    let base = b.unique("sensors");
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": format!("{base}/+/temp"), "route": "/temp"},
    ]))
    .await;
    let sc = b.sidecar(&b.app_id("wild"), Some(&sub)).await;
    b.wait_subscribed(&sc, 1).await;
    for (n, room) in ["kitchen", "hall"].iter().enumerate() {
        let resp = publish(&sc, &format!("{base}/{room}/temp"), json!({"n": n})).await;
        assert_eq!(resp.status(), 204);
    }
    let resp = publish(&sc, &format!("{base}/kitchen/humidity"), json!({"n": 9})).await;
    assert_eq!(resp.status(), 204);
    sub.wait_for(b.wait, "both temperatures", |r| r.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(numbers(&sub.received()), [0, 1], "humidity is not matched");
}

#[tokio::test]
async fn shared_subscriptions_across_sidecars() {
    let b = Broker::mqtt();
    if !b.require() {
        return;
    }
    let topic = b.unique("work");
    let shared = json!([{"pubsubname": "pubsub", "topic": format!("$share/workers/{topic}"), "route": "/work"}]);
    let w1 = Subscriber::start(shared.clone()).await;
    let w2 = Subscriber::start(shared).await;
    let audit =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": topic, "route": "/work"}]))
            .await;
    let workers = b.app_id("workers");
    let s1 = b.sidecar(&workers, Some(&w1)).await;
    let s2 = b.sidecar(&workers, Some(&w2)).await;
    let s3 = b.sidecar(&b.app_id("auditor"), Some(&audit)).await;
    for sc in [&s1, &s2, &s3] {
        b.wait_subscribed(sc, 1).await;
    }
    let publisher = b.sidecar(&b.app_id("publisher"), None).await;
    pubsub::publish_numbers(&publisher, &topic, 40).await;
    pubsub::assert_shared_and_fanned_out(&w1, &w2, &audit, 40, b.wait).await;
}

#[tokio::test]
async fn broker_down_at_start_up() {
    let b = Broker::mqtt();
    if !b.require() {
        return;
    }
    pubsub::down_at_start_up(
        &b,
        quiet_port(),
        MOSQUITTO.parse().unwrap(),
        "mqtt broker is unreachable",
    )
    .await;
}
