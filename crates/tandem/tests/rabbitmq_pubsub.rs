//! End-to-end: `pubsub.rabbitmq` through the real binary, against the RabbitMQ at
//! 127.0.0.1:5672 (skipped when unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): publishing
//! over HTTP, delivery to the subscriber app, RETRY answered until the broker redelivers,
//! consumer groups across sidecar processes, and a broker that is down at start-up.

mod common;

use std::time::Duration;

use common::pubsub::{self, Broker, RABBITMQ};
use tandem_testkit::proxy::quiet_port;

#[tokio::test]
async fn publish_deliver_and_redeliver_after_retry() {
    let b = Broker::rabbitmq();
    if !b.require() {
        return;
    }
    // More RETRYs than the runtime's in-process attempts: only a redelivery by the broker
    // (the component's nack with requeue) can bring the message back for the last ones.
    let run = pubsub::deliver_and_redeliver_after_retry(&b, "", Duration::from_millis(1500)).await;
    assert_eq!(run.order.body["type"], "com.dapr.event.sent");
}

#[tokio::test]
async fn apps_fan_out_and_instances_of_one_app_compete() {
    let b = Broker::rabbitmq();
    if !b.require() {
        return;
    }
    pubsub::fan_out_and_compete(&b, "").await;
}

#[tokio::test]
async fn broker_down_at_start_up() {
    let b = Broker::rabbitmq();
    if !b.require() {
        return;
    }
    pubsub::down_at_start_up(
        &b,
        quiet_port(),
        RABBITMQ.parse().unwrap(),
        "rabbitmq is unreachable",
    )
    .await;
}
