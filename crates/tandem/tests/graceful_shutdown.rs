//! End-to-end: graceful shutdown through the real binary. On SIGTERM the sidecar stops taking
//! messages, lets in-flight invocations and deliveries finish (the app can still call its
//! sidecar meanwhile), acknowledges what the app accepted, then exits 0 within
//! `--dapr-graceful-shutdown-seconds`; a delivery still running at the deadline is left
//! unacknowledged with the broker (Redis at 127.0.0.1:6379, skipped when unreachable unless
//! `TANDEM_REQUIRE_SERVICES=1`) and delivered again later.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::pubsub::{Broker, REDIS, component, meta, wait_listed};
use common::{client, start, tandem};
use serde_json::json;
use tandem_testkit::mock_app::MockApp;
use tandem_testkit::subscriber::{Answer, Subscriber};

#[tokio::test]
async fn in_flight_invocation_is_answered_after_sigterm() {
    let app = MockApp::start("slow").await;
    let mut sc = start(
        tandem()
            .app_id("graceful-invoke")
            .app_port(app.port())
            .arg("--dapr-graceful-shutdown-seconds")
            .arg("10"),
    )
    .await;
    let url = sc.url("/v1.0/invoke/graceful-invoke/method/work");
    let call = tokio::spawn(async move {
        client()
            .post(url)
            .header("mock-wait-ms", "1500")
            .body("payload")
            .send()
            .await
    });
    // Let the call reach the app, then ask the sidecar to stop.
    let t0 = Instant::now();
    while !app.requests().iter().any(|r| r.contains("/work")) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the app never got the call"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let base = sc.url("");
    let status = sc.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let resp = call.await.unwrap().expect("the in-flight call was cut off");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["body"], "payload");
    // Gone afterwards.
    assert!(
        client()
            .get(format!("{base}/v1.0/healthz"))
            .send()
            .await
            .is_err()
    );
}

fn redis_pubsub(processing_timeout: &str) -> String {
    component(
        "pubsub.redis",
        &(meta("redisHost", REDIS)
            + &meta("processingTimeout", processing_timeout)
            + &meta("redeliverInterval", "200ms")),
    )
}

/// Pending (delivered, unacknowledged) entries of `stream` for consumer group `group`.
async fn pending(stream: &str, group: &str) -> i64 {
    let mut conn = redis::Client::open(format!("redis://{REDIS}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    groups
        .iter()
        .filter(
            |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
        )
        .map(|g| match g.get("pending") {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        })
        .sum()
}

async fn delete(key: &str) {
    let mut conn = redis::Client::open(format!("redis://{REDIS}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn in_flight_delivery_finishes_and_is_acknowledged() {
    let b = Broker::redis();
    if !b.require() {
        return;
    }
    let topic = b.unique("graceful-ack");
    let app_id = b.app_id("graceful-ack");
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": topic, "route": "/orders"}
    ]))
    .await;
    sub.answer("/orders", Answer::Slow(Duration::from_millis(2500)));
    let mut sc = start(
        tandem()
            .app_id(&app_id)
            .resource("pubsub.yaml", &redis_pubsub("60s"))
            .resource("state.yaml", common::IN_MEMORY)
            .app_port(sub.port)
            .arg("--dapr-graceful-shutdown-seconds")
            .arg("20"),
    )
    .await;
    wait_listed(&sc, 1, Duration::from_secs(20)).await;
    let resp = client()
        .post(sc.url(&format!("/v1.0/publish/pubsub/{topic}")))
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    sub.wait_for(Duration::from_secs(10), "the delivery", |r| !r.is_empty())
        .await;
    let pid = sc.pid;
    let state_url = sc.url("/v1.0/state/statestore");
    // SIGTERM while the app is still working on the message.
    let term = tokio::spawn(async move {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    });
    term.await.unwrap();
    // The app can still call its sidecar while it finishes the delivery.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = client()
        .post(&state_url)
        .json(&json!([{"key": "during-drain", "value": 1}]))
        .send()
        .await
        .expect("the API went away while a delivery was in flight");
    assert_eq!(resp.status(), 204);
    let status = sc.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        sc.log()
    );
    assert_eq!(sub.received_on("/orders").len(), 1);
    assert_eq!(
        pending(&topic, &app_id).await,
        0,
        "the accepted message was not acknowledged before exit; log:\n{}",
        sc.log()
    );
    delete(&topic).await;
}

#[tokio::test]
async fn delivery_past_the_grace_period_stays_with_the_broker() {
    let b = Broker::redis();
    if !b.require() {
        return;
    }
    let topic = b.unique("graceful-late");
    let app_id = b.app_id("graceful-late");
    let subscriptions = json!([{"pubsubname": "pubsub", "topic": topic, "route": "/orders"}]);
    let sub = Subscriber::start(subscriptions.clone()).await;
    sub.answer("/orders", Answer::Slow(Duration::from_secs(30)));
    let mut sc = start(
        tandem()
            .app_id(&app_id)
            .resource("pubsub.yaml", &redis_pubsub("60s"))
            .app_port(sub.port)
            .arg("--dapr-graceful-shutdown-seconds")
            .arg("1"),
    )
    .await;
    wait_listed(&sc, 1, Duration::from_secs(20)).await;
    let resp = client()
        .post(sc.url(&format!("/v1.0/publish/pubsub/{topic}")))
        .json(&json!({"n": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    sub.wait_for(Duration::from_secs(10), "the delivery", |r| !r.is_empty())
        .await;
    let status = sc.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        pending(&topic, &app_id).await,
        1,
        "the unfinished delivery must stay pending with the broker"
    );
    // A new instance of the app gets it again.
    let again = Subscriber::start(subscriptions).await;
    let sc2 = start(
        tandem()
            .app_id(&app_id)
            .resource("pubsub.yaml", &redis_pubsub("1s"))
            .app_port(again.port),
    )
    .await;
    let got = again
        .wait_for(Duration::from_secs(20), "the redelivery", |r| !r.is_empty())
        .await;
    assert_eq!(got[0].body["data"]["n"], 7, "log:\n{}", sc2.log());
    drop(sc2);
    delete(&topic).await;
}
