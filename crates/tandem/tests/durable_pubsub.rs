//! End-to-end: `pubsub.sqlite`, the embedded durable pub/sub shared by sidecar processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{client, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::Sidecar;
use tandem_testkit::subscriber::Subscriber;

const WAIT: Duration = Duration::from_secs(15);

fn pubsub_yaml(db: &Path) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n",
        db.display()
    )
}

fn orders() -> Value {
    json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}])
}

async fn subscriber_sidecar(app_id: &str, db: &Path, sub: &Subscriber) -> Sidecar {
    let sc = start(
        tandem()
            .app_id(app_id)
            .resource("pubsub.yaml", &pubsub_yaml(db))
            .arg("--app-port")
            .arg(sub.port.to_string()),
    )
    .await;
    for _ in 0..500 {
        let m: Value = client()
            .get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["subscriptions"].as_array().is_some_and(|s| !s.is_empty()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return sc;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no subscription; log:\n{}", sc.log());
}

async fn publish_n(sc: &Sidecar, from: usize, to: usize) {
    for i in from..to {
        let resp = client()
            .post(sc.url("/v1.0/publish/pubsub/orders"))
            .json(&json!({"n": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "publish {i}");
    }
}

fn numbers(received: &[tandem_testkit::subscriber::Received]) -> Vec<u64> {
    let mut n: Vec<u64> = received
        .iter()
        .filter_map(|r| r.body["data"]["n"].as_u64())
        .collect();
    n.sort_unstable();
    n
}

#[tokio::test]
async fn groups_fan_out_and_members_compete_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pubsub.db");
    let w1 = Subscriber::start(orders()).await;
    let w2 = Subscriber::start(orders()).await;
    let audit = Subscriber::start(orders()).await;
    let _s1 = subscriber_sidecar("workers", &db, &w1).await;
    let _s2 = subscriber_sidecar("workers", &db, &w2).await;
    let _s3 = subscriber_sidecar("auditor", &db, &audit).await;
    let publisher = start(
        tandem()
            .app_id("publisher")
            .resource("pubsub.yaml", &pubsub_yaml(&db)),
    )
    .await;
    publish_n(&publisher, 0, 40).await;

    audit
        .wait_for(WAIT, "all 40 orders at the auditor", |r| r.len() >= 40)
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while w1.received().len() + w2.received().len() < 40 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut both = w1.received();
    both.extend(w2.received());
    assert_eq!(
        numbers(&both),
        (0..40).collect::<Vec<u64>>(),
        "each order handled once by the workers group"
    );
    assert_eq!(
        numbers(&audit.received()),
        (0..40).collect::<Vec<u64>>(),
        "the auditor group gets every order"
    );
    assert!(
        !w1.received().is_empty() && !w2.received().is_empty(),
        "both workers took a share: {} / {}",
        w1.received().len(),
        w2.received().len()
    );
}

#[tokio::test]
async fn messages_published_while_the_subscriber_is_down_arrive_later() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pubsub.db");
    let sub = Subscriber::start(orders()).await;
    let mut first = subscriber_sidecar("late", &db, &sub).await;
    assert!(first.terminate().await.success());

    let publisher = start(
        tandem()
            .app_id("publisher")
            .resource("pubsub.yaml", &pubsub_yaml(&db)),
    )
    .await;
    publish_n(&publisher, 0, 5).await;
    let _again = subscriber_sidecar("late", &db, &sub).await;
    let got = sub
        .wait_for(WAIT, "the 5 orders published while down", |r| r.len() >= 5)
        .await;
    assert_eq!(numbers(&got), vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_of_both_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pubsub.db");
    let sub = Subscriber::start(orders()).await;
    let mut receiver = subscriber_sidecar("survivor", &db, &sub).await;
    receiver.kill9().await;

    let mut publisher = start(
        tandem()
            .app_id("publisher")
            .resource("pubsub.yaml", &pubsub_yaml(&db)),
    )
    .await;
    publish_n(&publisher, 0, 10).await;
    publisher.kill9().await;

    let _receiver = subscriber_sidecar("survivor", &db, &sub).await;
    let got = sub
        .wait_for(WAIT, "the 10 acknowledged orders", |r| r.len() >= 10)
        .await;
    let mut n = numbers(&got);
    n.dedup();
    assert_eq!(n, (0..10).collect::<Vec<u64>>());
}
