//! End-to-end: publishing, subscriptions and delivery to an HTTP app, through the real binary.

mod common;

use std::time::Duration;

use common::{assert_error, client, start, tandem};
use serde_json::{Value, json};
use tandem_testkit::subscriber::{Answer, Subscriber};

const PUBSUB: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.in-memory\n  version: v1\n";
const WAIT: Duration = Duration::from_secs(10);

async fn sidecar_for(sub: &Subscriber, extra: &[(&str, &str)]) -> tandem_testkit::Sidecar {
    let mut b = tandem()
        .app_id("sub-app")
        .resource("pubsub.yaml", PUBSUB)
        .arg("--app-port")
        .arg(sub.port.to_string());
    for (name, yaml) in extra {
        b = b.resource(name, yaml);
    }
    start(b).await
}

async fn wait_subscribed(sc: &tandem_testkit::Sidecar, n: usize) {
    for _ in 0..500 {
        let m: Value = client()
            .get(sc.url("/v1.0/metadata"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m["subscriptions"].as_array().is_some_and(|s| s.len() >= n) {
            // Give the component a moment to attach the subscription.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("subscriptions never appeared; log:\n{}", sc.log());
}

async fn publish(
    sc: &tandem_testkit::Sidecar,
    path: &str,
    body: &str,
    content_type: &str,
) -> reqwest::Response {
    client()
        .post(sc.url(path))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn publish_wraps_a_cloudevent_and_delivers_it() {
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]))
            .await;
    let sc = sidecar_for(&sub, &[]).await;
    wait_subscribed(&sc, 1).await;
    let resp = client()
        .post(sc.url("/v1.0/publish/pubsub/orders"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&json!({"orderId": 7, "big": 12345678901234567890u64}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let got = sub
        .wait_for(WAIT, "the order event", |r| !r.is_empty())
        .await;
    let ev = &got[0];
    assert_eq!(ev.path, "/orders");
    assert_eq!(ev.headers["content-type"], "application/cloudevents+json");
    assert_eq!(ev.headers["pubsubname"], "pubsub");
    let ce = &ev.body;
    assert_eq!(
        ce["data"],
        json!({"orderId": 7, "big": 12345678901234567890u64})
    );
    assert_eq!(ce["source"], "sub-app");
    assert_eq!(ce["type"], "com.dapr.event.sent");
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["topic"], "orders");
    assert_eq!(ce["pubsubname"], "pubsub");
    // The sidecar continues the caller's trace with a span of its own.
    common::assert_child_of(
        &ce["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    assert_eq!(ce["traceid"], ce["traceparent"]);
    assert!(ce["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(ce["time"].is_string());

    // Text bodies become string data; ready-made CloudEvents keep their fields.
    publish(
        &sc,
        "/v1.0/publish/pubsub/orders",
        "plain words",
        "text/plain",
    )
    .await;
    let ready = json!({"specversion": "1.0", "id": "my-id", "source": "elsewhere", "type": "custom.type", "data": {"x": 1}});
    publish(
        &sc,
        "/v1.0/publish/pubsub/orders",
        &ready.to_string(),
        "application/cloudevents+json",
    )
    .await;
    let got = sub.wait_for(WAIT, "three events", |r| r.len() >= 3).await;
    let text = got
        .iter()
        .find(|r| r.body["data"] == "plain words")
        .expect("text event");
    assert_eq!(text.body["datacontenttype"], "text/plain");
    let custom = got
        .iter()
        .find(|r| r.body["id"] == "my-id")
        .expect("ready-made event");
    assert_eq!(custom.body["source"], "elsewhere");
    assert_eq!(custom.body["type"], "custom.type");
    assert_eq!(custom.body["topic"], "orders");
    assert_eq!(custom.body["pubsubname"], "pubsub");
}

#[tokio::test]
async fn routing_rules_declarative_and_programmatic() {
    let sub = Subscriber::start(json!([{
        "pubsubname": "pubsub", "topic": "inventory",
        "routes": {"rules": [{"match": "event.data.kind == \"widget\"", "path": "/widgets"}], "default": "/products"}
    }]))
    .await;
    let declarative = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: audit\nspec:\n  pubsubname: pubsub\n  topic: audit\n  routes:\n    rules:\n    - match: event.type == \"urgent\"\n      path: /audit/urgent\n    default: /audit\n";
    let sc = sidecar_for(&sub, &[("sub.yaml", declarative)]).await;
    wait_subscribed(&sc, 2).await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/inventory",
        r#"{"kind":"widget"}"#,
        "application/json",
    )
    .await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/inventory",
        r#"{"kind":"gadget"}"#,
        "application/json",
    )
    .await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/audit?metadata.cloudevent.type=urgent",
        "{}",
        "application/json",
    )
    .await;
    publish(&sc, "/v1.0/publish/pubsub/audit", "{}", "application/json").await;
    sub.wait_for(WAIT, "four routed events", |r| r.len() >= 4)
        .await;
    assert_eq!(sub.received_on("/widgets").len(), 1);
    assert_eq!(sub.received_on("/products").len(), 1);
    assert_eq!(sub.received_on("/audit/urgent").len(), 1);
    assert_eq!(sub.received_on("/audit").len(), 1);
    let m: Value = client()
        .get(sc.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = m["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"DECLARATIVE") && kinds.contains(&"PROGRAMMATIC"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn retry_drop_404_and_dead_letters() {
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": "flaky", "route": "/flaky"},
        {"pubsubname": "pubsub", "topic": "dropped", "route": "/dropped", "deadLetterTopic": "dlq"},
        {"pubsubname": "pubsub", "topic": "gone", "route": "/gone"},
        {"pubsubname": "pubsub", "topic": "dlq", "route": "/dlq"},
    ]))
    .await;
    sub.answer("/flaky", Answer::RetryTimes(2));
    sub.answer("/dropped", Answer::Drop);
    sub.answer("/gone", Answer::Status(404));
    let sc = sidecar_for(&sub, &[]).await;
    wait_subscribed(&sc, 4).await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/flaky",
        r#"{"n":1}"#,
        "application/json",
    )
    .await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/dropped",
        r#"{"n":2}"#,
        "application/json",
    )
    .await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/gone",
        r#"{"n":3}"#,
        "application/json",
    )
    .await;
    sub.wait_for(WAIT, "the third delivery of the flaky event", |r| {
        r.iter().filter(|e| e.path == "/flaky").count() >= 3
    })
    .await;
    sub.wait_for(WAIT, "the dead-lettered event", |r| {
        r.iter().any(|e| e.path == "/dlq")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        sub.received_on("/flaky").len(),
        3,
        "RETRY twice, then delivered a third time, and no more"
    );
    assert_eq!(sub.received_on("/dropped").len(), 1, "DROP is not retried");
    assert_eq!(sub.received_on("/gone").len(), 1, "404 is not retried");
    let dlq = sub.received_on("/dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].body["data"], json!({"n": 2}));
    assert_eq!(
        dlq[0].body["topic"], "dropped",
        "the original event is forwarded as it was"
    );
}

#[tokio::test]
async fn a_slow_handler_does_not_hold_back_others() {
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": "slow", "route": "/slow"},
        {"pubsubname": "pubsub", "topic": "fast", "route": "/fast"},
    ]))
    .await;
    sub.answer("/slow", Answer::Slow(Duration::from_secs(3)));
    let sc = sidecar_for(&sub, &[]).await;
    wait_subscribed(&sc, 2).await;
    publish(&sc, "/v1.0/publish/pubsub/slow", "1", "application/json").await;
    for i in 0..5 {
        publish(
            &sc,
            "/v1.0/publish/pubsub/slow",
            &i.to_string(),
            "application/json",
        )
        .await;
        publish(
            &sc,
            "/v1.0/publish/pubsub/fast",
            &i.to_string(),
            "application/json",
        )
        .await;
    }
    let start = std::time::Instant::now();
    sub.wait_for(
        Duration::from_secs(2),
        "fast events while slow ones are stuck",
        |r| r.iter().filter(|e| e.path == "/fast").count() == 5,
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
    sub.wait_for(
        Duration::from_secs(2),
        "slow events handled concurrently",
        |r| r.iter().filter(|e| e.path == "/slow").count() == 6,
    )
    .await;
}

#[tokio::test]
async fn raw_payload_and_bulk() {
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": "raw", "route": "/raw", "metadata": {"rawPayload": "true"}},
        {"pubsubname": "pubsub", "topic": "many", "route": "/many", "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 200}},
    ]))
    .await;
    sub.answer("/many", Answer::BulkSuccess);
    let sc = sidecar_for(&sub, &[]).await;
    wait_subscribed(&sc, 2).await;
    let resp = publish(
        &sc,
        "/v1.0/publish/pubsub/raw?metadata.rawPayload=true",
        "raw-bytes",
        "application/octet-stream",
    )
    .await;
    assert_eq!(resp.status(), 204);
    let raw = sub
        .wait_for(WAIT, "the raw event", |r| {
            r.iter().any(|e| e.path == "/raw")
        })
        .await;
    let raw = raw.iter().find(|e| e.path == "/raw").unwrap();
    assert_eq!(raw.body["data_base64"], "cmF3LWJ5dGVz");
    assert_eq!(raw.body["datacontenttype"], "application/octet-stream");

    let entries: Vec<Value> = (0..5)
        .map(|i| json!({"entryId": format!("e{i}"), "event": {"i": i}, "contentType": "application/json"}))
        .collect();
    let resp = client()
        .post(sc.url("/v1.0/publish/bulk/pubsub/many"))
        .json(&entries)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let got = sub
        .wait_for(WAIT, "a bulk delivery", |r| {
            r.iter()
                .filter(|e| e.path == "/many")
                .map(|e| e.body["entries"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
                >= 5
        })
        .await;
    let batch = got.iter().find(|e| e.path == "/many").unwrap();
    assert_eq!(batch.body["type"], "com.dapr.event.sent.bulk");
    assert!(
        batch.body["entries"].as_array().unwrap().len() > 1,
        "several events in one request: {:?}",
        batch.body
    );
    assert_eq!(batch.body["entries"][0]["event"]["topic"], "many");

    let dup = json!([{"entryId": "a", "event": 1, "contentType": "application/json"}, {"entryId": "a", "event": 2, "contentType": "application/json"}]);
    let resp = client()
        .post(sc.url("/v1.0-alpha1/publish/bulk/pubsub/many"))
        .json(&dup)
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "ERR_PUBSUB_EVENTS_SER", "entryId").await;
}

#[tokio::test]
async fn publish_errors() {
    let none = start(tandem()).await;
    let resp = publish(&none, "/v1.0/publish/pubsub/t", "{}", "application/json").await;
    assert_error(
        resp,
        400,
        "ERR_PUBSUB_NOT_CONFIGURED",
        "pubsub pubsub is not configured",
    )
    .await;

    let sc = start(tandem().resource("pubsub.yaml", PUBSUB)).await;
    let resp = publish(&sc, "/v1.0/publish/nope/t", "{}", "application/json").await;
    let body = assert_error(
        resp,
        404,
        "ERR_PUBSUB_NOT_FOUND",
        "pubsub nope is not found",
    )
    .await;
    assert_eq!(body["details"][0]["reason"], "DAPR_PUBSUB_NOT_FOUND");
    let resp = publish(
        &sc,
        "/v1.0/publish/pubsub/t?metadata.rawPayload=maybe",
        "{}",
        "application/json",
    )
    .await;
    assert_error(resp, 400, "ERR_PUBSUB_REQUEST_METADATA", "rawPayload").await;
    let resp = publish(
        &sc,
        "/v1.0/publish/pubsub/t",
        "[1]",
        "application/cloudevents+json",
    )
    .await;
    assert_error(
        resp,
        500,
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
        "cannot create cloudevent",
    )
    .await;
    let resp = publish(&sc, "/v1.0/publish/pubsub/a/b/c", "{}", "application/json").await;
    assert_eq!(resp.status(), 204, "topics may contain slashes");
}

#[tokio::test]
async fn unhealthy_app_stops_receiving_and_resumes() {
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": "h", "route": "/h"}])).await;
    let sc = start(
        tandem()
            .app_id("health-app")
            .resource("pubsub.yaml", PUBSUB)
            .arg("--app-port")
            .arg(sub.port.to_string())
            .arg("--enable-app-health-check")
            .arg("--app-health-probe-interval")
            .arg("1")
            .arg("--app-health-threshold")
            .arg("1"),
    )
    .await;
    wait_subscribed(&sc, 1).await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/h",
        r#"{"n":1}"#,
        "application/json",
    )
    .await;
    sub.wait_for(WAIT, "the first event", |r| r.len() == 1)
        .await;
    sub.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish(
        &sc,
        "/v1.0/publish/pubsub/h",
        r#"{"n":2}"#,
        "application/json",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sub.received_on("/h").len(),
        1,
        "no delivery while unhealthy"
    );
    sub.set_healthy(true);
    // The next probe (within a second) resumes the subscription; in-memory pub/sub keeps no
    // backlog for a group with no member, so publish until one arrives.
    let deadline = std::time::Instant::now() + WAIT;
    while sub.received_on("/h").len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery after the app recovered; log:\n{}",
            sc.log()
        );
        publish(
            &sc,
            "/v1.0/publish/pubsub/h",
            r#"{"n":3}"#,
            "application/json",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sc.log().contains("resuming subscriptions"), "{}", sc.log());
}
