//! End-to-end: `pubsub.redis` through the real binary, against the Redis at 127.0.0.1:6379
//! (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): publishing over HTTP,
//! delivery to the subscriber app, RETRY answered until the component redelivers, Dapr's
//! stream layout read back with a plain Redis client, consumer groups across sidecar
//! processes, and a Redis that is down at start-up.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::pubsub::{self, Broker, REDIS};
use serde_json::{Value, json};
use tandem_runtime::pubsub::delivery::ATTEMPTS;
use tandem_testkit::proxy::quiet_port;

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

/// The number of pending entries of the stream's groups, summed.
async fn groups_pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> i64 {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
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
async fn publish_deliver_and_redeliver_after_retry() {
    let b = Broker::redis();
    if !b.require() {
        return;
    }
    // More RETRYs than the runtime's in-process attempts: only a redelivery by the component
    // (the entry stays pending and is claimed again) can bring the message back.
    let run = pubsub::deliver_and_redeliver_after_retry(&b, "", Duration::from_millis(2000)).await;
    assert_eq!(run.order.body["source"], run.app_id.as_str());

    // The entry was idle (pending) since it was read for the first attempt.
    let pending_for = run.attempts[ATTEMPTS as usize].at - run.attempts[0].at;
    assert!(
        pending_for >= Duration::from_millis(900),
        "redelivered only after processingTimeout: {pending_for:?}"
    );

    // Dapr's layout: the topic is a stream whose entries carry the CloudEvent in `data`; the
    // app-id is the consumer group, and the delivered events are acknowledged.
    let mut direct = redis().await;
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&run.orders)
        .arg("-")
        .arg("+")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let event: Value = serde_json::from_str(&entries[0].1["data"]).unwrap();
    assert_eq!(event["data"], json!({"orderId": 7}));
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&run.orders)
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        groups[0]["name"],
        redis::Value::BulkString(run.app_id.clone().into_bytes())
    );
    let until = Instant::now() + b.wait;
    while groups_pending(&mut direct, &run.orders).await != 0 {
        assert!(Instant::now() < until, "the order was never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(groups_pending(&mut direct, &run.flaky).await, 0);
    delete(&[&run.orders, &run.flaky]).await;
}

#[tokio::test]
async fn apps_fan_out_and_instances_of_one_app_compete() {
    let b = Broker::redis();
    if !b.require() {
        return;
    }
    let topic = pubsub::fan_out_and_compete(&b, "").await;
    delete(&[&topic]).await;
}

#[tokio::test]
async fn redis_down_at_start_up() {
    let b = Broker::redis();
    if !b.require() {
        return;
    }
    // Once Redis answers, publishing works and the subscription attaches by itself (its read
    // loop creates the consumer group).
    let topic = pubsub::down_at_start_up(
        &b,
        quiet_port(),
        REDIS.parse().unwrap(),
        "redis publish failed",
    )
    .await;
    delete(&[&topic]).await;
}
