//! End-to-end: `pubsub.jetstream` through the real binary, against the NATS server at
//! 127.0.0.1:4222 with JetStream (skipped when unreachable, unless
//! `TANDEM_REQUIRE_SERVICES=1`): publishing over HTTP, delivery to the subscriber app, RETRY
//! answered until the server redelivers, consumer groups across sidecar processes, and a
//! server that is down at start-up.
//!
//! The component does not create streams (as in Dapr); the test creates `TANDEM_E2E`, which
//! captures `tandeme2e.>`, and publishes to topics under it.

mod common;

use std::time::Duration;

use common::pubsub::{self, Broker, NATS};
use tandem_testkit::proxy::quiet_port;

/// The broker, with the test stream in place; `None` when the test is skipped.
async fn jetstream() -> Option<Broker> {
    let b = Broker::jetstream();
    if !b.require() {
        return None;
    }
    pubsub::nats_stream_ready(NATS).await;
    Some(b)
}

#[tokio::test]
async fn publish_deliver_and_redeliver_after_retry() {
    let Some(b) = jetstream().await else { return };
    // More RETRYs than the runtime's in-process attempts: only a redelivery by the server
    // (the component's negative acknowledgement) brings the message back for the last ones.
    pubsub::deliver_and_redeliver_after_retry(&b, "", Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn apps_fan_out_and_instances_of_one_app_compete() {
    let Some(b) = jetstream().await else { return };
    let parallel = "  - name: concurrencyMode\n    value: parallel\n";
    pubsub::fan_out_and_compete(&b, parallel).await;
}

#[tokio::test]
async fn server_down_at_start_up() {
    let Some(b) = jetstream().await else { return };
    pubsub::down_at_start_up(
        &b,
        quiet_port(),
        NATS.parse().unwrap(),
        "nats is unreachable",
    )
    .await;
}
