//! End-to-end: `pubsub.mqtt3` through the real binary, against the Mosquitto broker at
//! 127.0.0.1:1883 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): publishing
//! over HTTP, delivery to the subscriber app, RETRY answered until the component redelivers,
//! wildcard subscriptions, shared subscriptions across sidecar processes, and a broker that
//! is down at start-up.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, client, start, tandem};
use serde_json::{Value, json};
use tandem_runtime::pubsub::delivery::ATTEMPTS;
use tandem_testkit::Sidecar;
use tandem_testkit::proxy::{TcpProxy, free_port};
use tandem_testkit::services;
use tandem_testkit::subscriber::{Answer, Received, Subscriber};

const MOSQUITTO: &str = "127.0.0.1:1883";
const WAIT: Duration = Duration::from_secs(20);

/// Each sidecar gets a client id of its own (`{uuid}`), and a clean session so that the
/// broker keeps nothing once the test is over.
fn pubsub_yaml(addr: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.mqtt3
  version: v1
  metadata:
  - name: url
    value: "tcp://{addr}"
  - name: consumerID
    value: "{{uuid}}"
  - name: cleanSession
    value: "true"
"#
    )
}

/// A name no other test run uses.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("mqtt-e2e-{what}-{}-{nanos}", std::process::id())
}

async fn sidecar(app_id: &str, addr: &str, sub: Option<&Subscriber>) -> Sidecar {
    let mut b = tandem()
        .app_id(app_id)
        .resource("pubsub.yaml", &pubsub_yaml(addr));
    if let Some(sub) = sub {
        b = b.arg("--app-port").arg(sub.port.to_string());
    }
    start(b).await
}

/// Waits until the sidecar lists `n` subscriptions (their filters are then subscribed on the
/// broker: `subscribe` returns after the SUBACK).
async fn wait_subscribed(sc: &Sidecar, n: usize) {
    let until = Instant::now() + WAIT;
    loop {
        let m: Value = client()
            .get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["subscriptions"].as_array().is_some_and(|s| s.len() >= n) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        assert!(
            Instant::now() < until,
            "subscriptions never appeared; log:\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish(sc: &Sidecar, topic: &str, body: Value) -> reqwest::Response {
    client()
        .post(sc.url(&format!("/v1.0/publish/pubsub/{topic}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn numbers(received: &[Received]) -> Vec<u64> {
    let mut n: Vec<u64> = received
        .iter()
        .filter_map(|r| r.body["data"]["n"].as_u64())
        .collect();
    n.sort_unstable();
    n
}

#[tokio::test]
async fn publish_deliver_and_redeliver_after_retry() {
    if !services::require("Mosquitto", MOSQUITTO) {
        return;
    }
    let orders = unique("orders");
    let flaky = unique("flaky");
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": orders, "route": "/orders"},
        {"pubsubname": "pubsub", "topic": flaky, "route": "/flaky"},
    ]))
    .await;
    // More RETRYs than the runtime's in-process attempts: the component's own redelivery
    // (MQTT 3 brokers redeliver only on reconnection) brings the message back for the last.
    let retries = ATTEMPTS as usize + 1;
    sub.answer("/flaky", Answer::RetryTimes(retries));
    let sc = sidecar(&unique("app"), MOSQUITTO, Some(&sub)).await;
    wait_subscribed(&sc, 2).await;

    let resp = publish(&sc, &orders, json!({"orderId": 7})).await;
    assert_eq!(resp.status(), 204, "log:\n{}", sc.log());
    let got = sub
        .wait_for(WAIT, "the order event", |r| {
            r.iter().any(|e| e.path == "/orders")
        })
        .await;
    let ev = got.iter().find(|e| e.path == "/orders").unwrap();
    assert_eq!(ev.headers["content-type"], "application/cloudevents+json");
    assert_eq!(ev.body["data"], json!({"orderId": 7}));
    assert_eq!(ev.body["topic"], orders.as_str());
    assert_eq!(ev.body["pubsubname"], "pubsub");

    let resp = publish(&sc, &flaky, json!({"n": 1})).await;
    assert_eq!(resp.status(), 204);
    let got = sub
        .wait_for(
            WAIT,
            "RETRY until the component redelivers, then success",
            |r| r.iter().filter(|e| e.path == "/flaky").count() > retries,
        )
        .await;
    let attempts: Vec<&Received> = got.iter().filter(|e| e.path == "/flaky").collect();
    let id = &attempts[0].body["id"];
    assert!(
        attempts.iter().all(|e| &e.body["id"] == id),
        "the same event every time"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sub.received_on("/flaky").len(),
        retries + 1,
        "delivered until SUCCESS, then no more"
    );
    assert_eq!(sub.received_on("/orders").len(), 1, "the order once");
}

#[tokio::test]
async fn wildcard_subscription() {
    if !services::require("Mosquitto", MOSQUITTO) {
        return;
    }
    let base = unique("sensors");
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": format!("{base}/+/temp"), "route": "/temp"},
    ]))
    .await;
    let sc = sidecar(&unique("wild"), MOSQUITTO, Some(&sub)).await;
    wait_subscribed(&sc, 1).await;
    for (n, room) in ["kitchen", "hall"].iter().enumerate() {
        let resp = publish(&sc, &format!("{base}/{room}/temp"), json!({"n": n})).await;
        assert_eq!(resp.status(), 204);
    }
    let resp = publish(&sc, &format!("{base}/kitchen/humidity"), json!({"n": 9})).await;
    assert_eq!(resp.status(), 204);
    sub.wait_for(WAIT, "both temperatures", |r| r.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(numbers(&sub.received()), [0, 1], "humidity is not matched");
}

#[tokio::test]
async fn shared_subscriptions_across_sidecars() {
    if !services::require("Mosquitto", MOSQUITTO) {
        return;
    }
    let topic = unique("work");
    let shared = json!([{"pubsubname": "pubsub", "topic": format!("$share/workers/{topic}"), "route": "/work"}]);
    let w1 = Subscriber::start(shared.clone()).await;
    let w2 = Subscriber::start(shared).await;
    let audit =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": topic, "route": "/work"}]))
            .await;
    let workers = unique("workers");
    let s1 = sidecar(&workers, MOSQUITTO, Some(&w1)).await;
    let s2 = sidecar(&workers, MOSQUITTO, Some(&w2)).await;
    let s3 = sidecar(&unique("auditor"), MOSQUITTO, Some(&audit)).await;
    for sc in [&s1, &s2, &s3] {
        wait_subscribed(sc, 1).await;
    }
    let publisher = sidecar(&unique("publisher"), MOSQUITTO, None).await;
    for n in 0..40u64 {
        let resp = publish(&publisher, &topic, json!({"n": n})).await;
        assert_eq!(resp.status(), 204, "publish {n}");
    }
    audit
        .wait_for(WAIT, "all 40 at the auditor", |r| r.len() >= 40)
        .await;
    let until = Instant::now() + WAIT;
    while w1.received().len() + w2.received().len() < 40 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut both = w1.received();
    both.extend(w2.received());
    let all: Vec<u64> = (0..40).collect();
    assert_eq!(
        numbers(&both),
        all,
        "each message handled once by the workers"
    );
    assert_eq!(
        numbers(&audit.received()),
        all,
        "the auditor gets every one"
    );
    assert!(
        !w1.received().is_empty() && !w2.received().is_empty(),
        "both workers take a share: {} / {}",
        w1.received().len(),
        w2.received().len()
    );
}

#[tokio::test]
async fn broker_down_at_start_up() {
    if !services::require("Mosquitto", MOSQUITTO) {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let topic = unique("late");
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": topic, "route": "/late"}]))
            .await;
    let sc = sidecar(&unique("late-app"), &addr, Some(&sub)).await;
    wait_subscribed(&sc, 1).await;
    let resp = publish(&sc, &topic, json!({"n": 0})).await;
    assert_error(
        resp,
        500,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        "mqtt broker is unreachable",
    )
    .await;

    let _proxy = TcpProxy::start(port, MOSQUITTO.parse().unwrap())
        .await
        .unwrap();
    let until = Instant::now() + WAIT;
    let mut n = 1u64;
    loop {
        let resp = publish(&sc, &topic, json!({"n": n})).await;
        if resp.status() == 204 && !sub.received_on("/late").is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "never recovered; log:\n{}",
            sc.log()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
