//! End-to-end: `pubsub.redis` through the real binary, against the Redis at 127.0.0.1:6379
//! (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): publishing over HTTP,
//! delivery to the subscriber app, RETRY answered until the component redelivers, Dapr's
//! stream layout read back with a plain Redis client, consumer groups across sidecar
//! processes, and a Redis that is down at start-up.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, client, start, tandem};
use serde_json::{Value, json};
use tandem_runtime::pubsub::delivery::ATTEMPTS;
use tandem_testkit::Sidecar;
use tandem_testkit::proxy::{TcpProxy, free_port};
use tandem_testkit::services;
use tandem_testkit::subscriber::{Answer, Received, Subscriber};

const REDIS: &str = "127.0.0.1:6379";
const WAIT: Duration = Duration::from_secs(20);

/// The component, with redelivery timings short enough for a test.
fn pubsub_yaml(addr: &str) -> String {
    format!(
        r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - name: redisHost
    value: "{addr}"
  - name: dialTimeout
    value: 1s
  - name: processingTimeout
    value: 1s
  - name: redeliverInterval
    value: 200ms
"#
    )
}

/// A name no other test run uses, so that runs sharing the server never see each other.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("redis-ps-e2e-{what}-{}-{nanos}", std::process::id())
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

/// Waits until the sidecar lists `n` subscriptions (`subscribe` has created the consumer
/// groups by the time it returns).
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
            // The list is published just before the subscriptions start.
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

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

async fn delete(keys: &[&str]) {
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut redis().await)
        .await
        .unwrap();
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
    if !services::require("Redis", REDIS) {
        return;
    }
    let orders = unique("orders");
    let flaky = unique("flaky");
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": orders, "route": "/orders"},
        {"pubsubname": "pubsub", "topic": flaky, "route": "/flaky"},
    ]))
    .await;
    // More RETRYs than the runtime's in-process attempts: only a redelivery by the component
    // (the entry stays pending and is claimed again) can bring the message back.
    let retries = ATTEMPTS as usize + 1;
    sub.answer("/flaky", Answer::RetryTimes(retries));
    let app = unique("app");
    let sc = sidecar(&app, REDIS, Some(&sub)).await;
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
    assert_eq!(ev.body["source"], app.as_str());

    // Dapr's layout: the topic is a stream whose entries carry the CloudEvent in `data`; the
    // app-id is the consumer group, and the delivered event is acknowledged.
    let mut direct = redis().await;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&orders)
        .arg("-")
        .arg("+")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let event: Value = serde_json::from_str(&entries[0].1["data"]).unwrap();
    assert_eq!(event["data"], json!({"orderId": 7}));
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&orders)
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0]["name"],
        redis::Value::BulkString(app.clone().into_bytes())
    );
    let until = Instant::now() + WAIT;
    while groups_pending(&mut direct, &orders).await != 0 {
        assert!(Instant::now() < until, "the order was never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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
    // The entry was idle (pending) since it was read for the first attempt.
    let pending_for = attempts[ATTEMPTS as usize].at - attempts[0].at;
    assert!(
        pending_for >= Duration::from_millis(900),
        "redelivered only after processingTimeout: {pending_for:?}"
    );
    // Answered SUCCESS at last: acknowledged, nothing more arrives.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        sub.received_on("/flaky").len(),
        retries + 1,
        "delivered until SUCCESS, then no more"
    );
    assert_eq!(sub.received_on("/orders").len(), 1, "the order once");
    assert_eq!(groups_pending(&mut direct, &flaky).await, 0);
    delete(&[&orders, &flaky]).await;
}

/// The number of pending entries of the stream's groups, summed.
async fn groups_pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> i64 {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap();
    groups
        .iter()
        .map(|g| match g.get("pending") {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn apps_fan_out_and_instances_of_one_app_compete() {
    if !services::require("Redis", REDIS) {
        return;
    }
    let topic = unique("work");
    let subs = json!([{"pubsubname": "pubsub", "topic": topic, "route": "/work"}]);
    let w1 = Subscriber::start(subs.clone()).await;
    let w2 = Subscriber::start(subs.clone()).await;
    let audit = Subscriber::start(subs).await;
    let workers = unique("workers");
    let s1 = sidecar(&workers, REDIS, Some(&w1)).await;
    let s2 = sidecar(&workers, REDIS, Some(&w2)).await;
    let s3 = sidecar(&unique("auditor"), REDIS, Some(&audit)).await;
    for sc in [&s1, &s2, &s3] {
        wait_subscribed(sc, 1).await;
    }
    let publisher = sidecar(&unique("publisher"), REDIS, None).await;
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
    delete(&[&topic]).await;
}

#[tokio::test]
async fn redis_down_at_start_up() {
    if !services::require("Redis", REDIS) {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let topic = unique("late");
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": topic, "route": "/late"}]))
            .await;
    // The sidecar starts although nothing answers at Redis' address.
    let sc = sidecar(&unique("late-app"), &addr, Some(&sub)).await;
    wait_subscribed(&sc, 1).await;
    let resp = publish(&sc, &topic, json!({"n": 0})).await;
    assert_error(
        resp,
        500,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        "redis publish failed",
    )
    .await;

    let _proxy = TcpProxy::start(port, REDIS.parse().unwrap()).await.unwrap();
    // Once Redis answers, publishing works and the subscription attaches by itself (its read
    // loop creates the consumer group).
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
    delete(&[&topic]).await;
}
