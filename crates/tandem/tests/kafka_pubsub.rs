//! End-to-end: `pubsub.kafka` through the real binary, against a Kafka-compatible broker
//! (tansu at 127.0.0.1:9092 when it answers, else a private one started by the test;
//! skipped when none can be had, unless `TANDEM_REQUIRE_SERVICES=1`): publishing over HTTP
//! with a partition key, delivery with Kafka's metadata as headers, RETRY answered until the
//! component delivers again, consumer groups across sidecar processes, and a broker that is
//! down at start-up.

mod common;

use std::time::Duration;

use common::pubsub::{self, Broker};
use tandem_testkit::kafka::Tansu;
use tandem_testkit::proxy::quiet_port;

#[tokio::test]
async fn publish_deliver_and_redeliver_after_retry() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    let b = Broker::kafka(broker.brokers());
    // More RETRYs than the runtime's in-process attempts: only a delivery by the component
    // (which did not commit the offset) brings the message back for the last ones.
    let run = pubsub::deliver_and_redeliver_after_retry(
        &b,
        "?metadata.partitionKey=order-7&metadata.tenant=acme",
        Duration::from_millis(1500),
    )
    .await;
    let ev = &run.order;
    assert_eq!(ev.headers["__key"], "order-7", "the record key");
    assert_eq!(ev.headers["tenant"], "acme", "metadata travels as a header");
    assert_eq!(ev.headers["__topic"], run.orders.as_str());
    assert!(ev.headers.contains_key("__offset") && ev.headers.contains_key("__partition"));
}

#[tokio::test]
async fn apps_fan_out_and_instances_of_one_app_compete() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    // No key: records go round robin over the topic's partitions, which the two workers
    // share.
    pubsub::fan_out_and_compete(&Broker::kafka(broker.brokers()), "").await;
}

#[tokio::test]
async fn broker_down_at_start_up() {
    let port = quiet_port();
    // The broker runs, but clients reach it only through a proxy that is not there yet.
    let Some(broker) = Tansu::start_with(&[], Some(port)) else {
        return;
    };
    let target = format!("127.0.0.1:{}", broker.listen_port().unwrap());
    pubsub::down_at_start_up(
        &Broker::kafka(broker.brokers()),
        port,
        target.parse().unwrap(),
        "kafka",
    )
    .await;
}
