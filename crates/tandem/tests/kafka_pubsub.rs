//! End-to-end: `pubsub.kafka` through the real binary, against a Kafka-compatible broker
//! (tansu at 127.0.0.1:9092 when it answers, else a private one started by the test;
//! skipped when none can be had, unless `TANDEM_REQUIRE_SERVICES=1`): publishing over HTTP
//! with a partition key, delivery with Kafka's metadata as headers, RETRY answered until the
//! component delivers again, consumer groups across sidecar processes, and a broker that is
//! down at start-up.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, client, start, tandem};
use serde_json::{Value, json};
use tandem_runtime::pubsub::delivery::ATTEMPTS;
use tandem_testkit::Sidecar;
use tandem_testkit::kafka::Tansu;
use tandem_testkit::proxy::{TcpProxy, free_port};
use tandem_testkit::subscriber::{Answer, Received, Subscriber};

const WAIT: Duration = Duration::from_secs(30);

/// The component, with a short session timeout (tansu makes a new group wait about half of
/// it) and a short publish deadline.
fn pubsub_yaml(brokers: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.kafka
  version: v1
  metadata:
  - name: brokers
    value: "{brokers}"
  - name: authType
    value: none
  - name: sessionTimeout
    value: 2s
  - name: heartbeatInterval
    value: 300ms
  - name: writeTimeout
    value: 2s
  - name: metadataTimeout
    value: 1s
"#
    )
}

/// A name no other test run uses, so that runs sharing the broker never see each other.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("kafka-e2e-{what}-{}-{nanos}", std::process::id())
}

async fn sidecar(app_id: &str, brokers: &str, sub: Option<&Subscriber>) -> Sidecar {
    let mut b = tandem()
        .app_id(app_id)
        .resource("pubsub.yaml", &pubsub_yaml(brokers));
    if let Some(sub) = sub {
        b = b.arg("--app-port").arg(sub.port.to_string());
    }
    start(b).await
}

/// Waits until the sidecar logged `n` started subscriptions: `subscribe` returns once the
/// group gave the member its partitions, so what is published next reaches it.
async fn wait_subscribed(sc: &Sidecar, n: usize) {
    let until = Instant::now() + WAIT;
    loop {
        let log = sc.log();
        let started = log
            .lines()
            .filter(|l| l.contains(" subscribed") && l.contains("topic="))
            .count();
        if started >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "subscriptions never started; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(sc: &Sidecar, topic: &str, query: &str, body: Value) -> reqwest::Response {
    client()
        .post(sc.url(&format!("/v1.0/publish/pubsub/{topic}{query}")))
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
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    let orders = unique("orders");
    let flaky = unique("flaky");
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": orders, "route": "/orders"},
        {"pubsubname": "pubsub", "topic": flaky, "route": "/flaky"},
    ]))
    .await;
    // More RETRYs than the runtime's in-process attempts: only a delivery by the component
    // (which did not commit the offset) brings the message back for the last ones.
    let retries = ATTEMPTS as usize + 1;
    sub.answer("/flaky", Answer::RetryTimes(retries));
    let sc = sidecar(&unique("app"), broker.brokers(), Some(&sub)).await;
    wait_subscribed(&sc, 2).await;

    let resp = publish(
        &sc,
        &orders,
        "?metadata.partitionKey=order-7&metadata.tenant=acme",
        json!({"orderId": 7}),
    )
    .await;
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
    assert_eq!(ev.headers["__key"], "order-7", "the record key");
    assert_eq!(ev.headers["tenant"], "acme", "metadata travels as a header");
    assert_eq!(ev.headers["__topic"], orders.as_str());
    assert!(ev.headers.contains_key("__offset") && ev.headers.contains_key("__partition"));

    let resp = publish(&sc, &flaky, "", json!({"n": 1})).await;
    assert_eq!(resp.status(), 204);
    let got = sub
        .wait_for(
            WAIT,
            "RETRY until the component delivers again, then success",
            |r| r.iter().filter(|e| e.path == "/flaky").count() > retries,
        )
        .await;
    let attempts: Vec<&Received> = got.iter().filter(|e| e.path == "/flaky").collect();
    let id = &attempts[0].body["id"];
    assert!(
        attempts.iter().all(|e| &e.body["id"] == id),
        "the same event every time"
    );
    // Answered SUCCESS at last: committed, nothing more arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sub.received_on("/flaky").len(),
        retries + 1,
        "delivered until SUCCESS, then no more"
    );
    assert_eq!(sub.received_on("/orders").len(), 1, "the order once");
}

#[tokio::test]
async fn apps_fan_out_and_instances_of_one_app_compete() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    let topic = unique("work");
    let subs = json!([{"pubsubname": "pubsub", "topic": topic, "route": "/work"}]);
    let w1 = Subscriber::start(subs.clone()).await;
    let w2 = Subscriber::start(subs.clone()).await;
    let audit = Subscriber::start(subs).await;
    let workers = unique("workers");
    let s1 = sidecar(&workers, broker.brokers(), Some(&w1)).await;
    wait_subscribed(&s1, 1).await;
    let s2 = sidecar(&workers, broker.brokers(), Some(&w2)).await;
    let s3 = sidecar(&unique("auditor"), broker.brokers(), Some(&audit)).await;
    wait_subscribed(&s2, 1).await;
    wait_subscribed(&s3, 1).await;
    let publisher = sidecar(&unique("publisher"), broker.brokers(), None).await;
    // No key: records go round robin over the topic's partitions, which the two workers
    // share.
    for n in 0..40u64 {
        let resp = publish(&publisher, &topic, "", json!({"n": n})).await;
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
    let port = free_port();
    // The broker runs, but clients reach it only through a proxy that is not there yet.
    let Some(broker) = Tansu::start_with(&[], Some(port)) else {
        return;
    };
    let topic = unique("late");
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": topic, "route": "/late"}]))
            .await;
    let sc = sidecar(&unique("late-app"), broker.brokers(), Some(&sub)).await;
    wait_subscribed(&sc, 1).await;
    let resp = publish(&sc, &topic, "", json!({"n": 0})).await;
    assert_error(resp, 500, "ERR_PUBSUB_PUBLISH_MESSAGE", "kafka").await;

    let target = format!("127.0.0.1:{}", broker.listen_port().unwrap());
    let _proxy = TcpProxy::start(port, target.parse().unwrap())
        .await
        .unwrap();
    // Once the broker answers, publishing works and the subscription attaches by itself.
    let until = Instant::now() + WAIT;
    let mut n = 1u64;
    loop {
        let resp = publish(&sc, &topic, "", json!({"n": n})).await;
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
