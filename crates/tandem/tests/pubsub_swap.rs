//! End-to-end "swap" for pub/sub: one publisher and subscriber scenario runs through the
//! real binary against every pub/sub component, changing only the component YAML, and must
//! see the same deliveries each time.
//!
//! The app subscribes programmatically (`GET /dapr/subscribe`) and declaratively (a
//! `Subscription` resource with a routing rule), and the scenario publishes through the
//! sidecar's HTTP API: JSON and text bodies, a ready-made CloudEvent, a raw (binary) payload
//! to a raw subscription, a bulk publish, an event the app answers with RETRY more often than
//! the runtime retries in process (so that the component must deliver it again), one it
//! answers with DROP, and one with CloudEvent overrides and component metadata in the query.
//!
//! Brokers: `pubsub.in-memory`, `pubsub.sqlite` (always), and `pubsub.redis`,
//! `pubsub.rabbitmq`, `pubsub.jetstream`, `pubsub.mqtt3`, `pubsub.kafka` against the local
//! servers (tansu for Kafka), each skipped when its server is absent unless
//! `TANDEM_REQUIRE_SERVICES=1`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::client;
use common::pubsub::{self, Broker, NATS};
use serde_json::{Value, json};
use tandem_runtime::pubsub::delivery::ATTEMPTS;
use tandem_testkit::kafka::Tansu;
use tandem_testkit::subscriber::{Answer, Received, Subscriber};

/// The raw payload: not UTF-8, not JSON.
const RAW: &[u8] = b"\x00raw\xff\xfe bytes\n";
/// Its base64 form.
const RAW_BASE64: &str = "AHJhd//+IGJ5dGVzCg==";
/// RETRY answers before SUCCESS: one more than the runtime's in-process attempts.
const RETRIES: usize = ATTEMPTS as usize + 1;
/// Routes and how many deliveries each must get.
const ROUTES: &[(&str, usize)] = &[
    ("/plain", 2),
    ("/ce", 1),
    ("/raw", 1),
    ("/bulk", 3),
    ("/retry", RETRIES + 1),
    ("/drop", 1),
    ("/routed", 1),
    ("/routed/special", 1),
];

/// The run's topics and app-id.
struct Names {
    app: String,
    plain: String,
    ce: String,
    raw: String,
    bulk: String,
    retry: String,
    drop: String,
    routed: String,
    /// Prefix of the CloudEvent ids the scenario sets itself.
    ids: String,
}

impl Names {
    fn new(b: &Broker) -> Self {
        Self {
            app: b.app_id("swap"),
            plain: b.unique("plain"),
            ce: b.unique("ce"),
            raw: b.unique("raw"),
            bulk: b.unique("bulk"),
            retry: b.unique("retry"),
            drop: b.unique("drop"),
            routed: b.unique("routed"),
            ids: b.app_id("id"),
        }
    }
}

/// The declarative subscription: a rule on the CloudEvent type, else the default route.
fn declarative(topic: &str) -> String {
    format!(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: routed\nspec:\n  pubsubname: pubsub\n  topic: {topic}\n  routes:\n    rules:\n    - match: event.type == \"swap.special\"\n      path: /routed/special\n    default: /routed\n"
    )
}

/// Runs the scenario against `b` and checks the deliveries; returns the names it used.
async fn scenario(b: &Broker) -> Names {
    let n = Names::new(b);
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": n.plain, "route": "/plain"},
        {"pubsubname": "pubsub", "topic": n.ce, "route": "/ce"},
        {"pubsubname": "pubsub", "topic": n.raw, "route": "/raw", "metadata": {"rawPayload": "true"}},
        {"pubsubname": "pubsub", "topic": n.bulk, "route": "/bulk"},
        {"pubsubname": "pubsub", "topic": n.retry, "route": "/retry"},
        {"pubsubname": "pubsub", "topic": n.drop, "route": "/drop"},
    ]))
    .await;
    sub.answer("/retry", Answer::RetryTimes(RETRIES));
    sub.answer("/drop", Answer::Drop);
    let sc = common::start(
        b.builder(&n.app, "", Some(&sub))
            .resource("subscription.yaml", &declarative(&n.routed)),
    )
    .await;
    b.wait_subscribed(&sc, 7).await;

    let c = client();
    let url = |topic: &str, query: &str| sc.url(&format!("/v1.0/publish/pubsub/{topic}{query}"));
    let mut statuses = Vec::new();
    let mut sent = |what: &str, resp: reqwest::Response| {
        statuses.push((what.to_owned(), resp.status().as_u16()));
    };
    let r = c
        .post(url(&n.plain, ""))
        .json(&json!({"orderId": 7}))
        .send();
    sent("json", r.await.unwrap());
    let r = c
        .post(url(&n.plain, ""))
        .header("content-type", "text/plain")
        .body("hello swap")
        .send();
    sent("text", r.await.unwrap());
    let ready = json!({
        "specversion": "1.0", "id": format!("{}-ce", n.ids), "source": "elsewhere",
        "type": "custom.type", "subject": "s-1", "datacontenttype": "application/json",
        "data": {"x": 1},
    });
    let r = c
        .post(url(&n.ce, ""))
        .header("content-type", "application/cloudevents+json")
        .body(ready.to_string())
        .send();
    sent("cloudevent", r.await.unwrap());
    let r = c
        .post(url(&n.raw, "?metadata.rawPayload=true"))
        .header("content-type", "application/octet-stream")
        .body(RAW)
        .send();
    sent("raw", r.await.unwrap());
    let entries = json!([
        {"entryId": "1", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "2", "event": "two", "contentType": "text/plain"},
        {"entryId": "3", "contentType": "application/cloudevents+json", "event": {
            "specversion": "1.0", "id": format!("{}-bulk", n.ids), "source": "bulk-source",
            "type": "bulk.type", "datacontenttype": "application/json", "data": {"n": 3},
        }},
    ]);
    let r = c
        .post(sc.url(&format!("/v1.0/publish/bulk/pubsub/{}", n.bulk)))
        .json(&entries)
        .send();
    sent("bulk", r.await.unwrap());
    let r = c.post(url(&n.retry, "")).json(&json!({"n": 1})).send();
    sent("retry", r.await.unwrap());
    let r = c.post(url(&n.drop, "")).json(&json!({"n": 2})).send();
    sent("drop", r.await.unwrap());
    // CloudEvent overrides pick the rule; other metadata goes to the component.
    let query = format!(
        "?metadata.cloudevent.type=swap.special&metadata.cloudevent.subject=s-8&metadata.cloudevent.id={}-meta&metadata.cloudevent.source=overridden&metadata.tenant=acme&metadata.ttlInSeconds=600",
        n.ids
    );
    let r = c.post(url(&n.routed, &query)).json(&json!({"n": 8})).send();
    sent("metadata", r.await.unwrap());
    let r = c.post(url(&n.routed, "")).json(&json!({"n": 9})).send();
    sent("default route", r.await.unwrap());
    assert!(
        statuses.iter().all(|(_, s)| *s == 204),
        "{}: every publish answered 204: {statuses:?}; log:\n{}",
        b.name,
        sc.log()
    );

    sub.wait_for(b.wait, "every expected delivery", |got| {
        ROUTES
            .iter()
            .all(|(route, count)| got.iter().filter(|r| r.path == *route).count() >= *count)
    })
    .await;
    // Nothing more may come: the retried event was answered SUCCESS at last, the dropped one
    // was acknowledged, the others were delivered once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = sub.received();
    let summary = summarise(&got, &n);
    let want = expected(&n);
    assert!(
        summary == want,
        "{}: deliveries differ from the expected ones\n got: {}\nwant: {}",
        b.name,
        serde_json::to_string_pretty(&summary).unwrap(),
        serde_json::to_string_pretty(&want).unwrap()
    );
    for r in &got {
        assert_eq!(r.headers["pubsubname"], "pubsub", "{}: {}", b.name, r.path);
    }
    n
}

/// The deliveries per route, each reduced to what every broker must reproduce: attributes
/// that differ from run to run (time, trace context, generated ids) are replaced, and the
/// TTL's `expiration` (present only for brokers without native TTL) is left out.
fn summarise(got: &[Received], n: &Names) -> Value {
    let mut routes: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in got {
        let mut ev = r.body.clone();
        if let Some(obj) = ev.as_object_mut() {
            for k in ["time", "traceid", "traceparent", "tracestate", "expiration"] {
                obj.remove(k);
            }
            let generated = obj
                .get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| !id.starts_with(&n.ids) && id.len() == 36);
            if generated {
                obj.insert("id".into(), json!("<generated>"));
            }
        }
        routes.entry(r.path.clone()).or_default().push(json!({
            "contentType": r.headers.get("content-type"),
            "event": ev,
        }));
    }
    for list in routes.values_mut() {
        list.sort_by_key(|v| v.to_string());
    }
    let mut out = serde_json::Map::new();
    for (route, list) in routes {
        if route == "/retry" {
            // One event, delivered again until SUCCESS.
            let mut distinct = list.clone();
            distinct.dedup();
            out.insert(
                route,
                json!({"deliveries": list.len(), "distinct": distinct}),
            );
        } else {
            out.insert(route, Value::Array(list));
        }
    }
    Value::Object(out)
}

/// A CloudEvent as the sidecar builds it for a publish to `topic` with a generated id.
fn envelope(n: &Names, topic: &str, content_type: &str, data: Value) -> Value {
    json!({
        "contentType": "application/cloudevents+json",
        "event": {
            "id": "<generated>", "source": n.app, "type": "com.dapr.event.sent",
            "specversion": "1.0", "datacontenttype": content_type, "data": data,
            "topic": topic, "pubsubname": "pubsub",
        },
    })
}

/// A ready-made CloudEvent after the sidecar added `topic` and `pubsubname`.
fn kept(ev: Value, topic: &str) -> Value {
    let mut ev = ev;
    ev["topic"] = json!(topic);
    ev["pubsubname"] = json!("pubsub");
    json!({"contentType": "application/cloudevents+json", "event": ev})
}

fn sorted(mut list: Vec<Value>) -> Value {
    list.sort_by_key(|v| v.to_string());
    Value::Array(list)
}

/// What every broker must deliver.
fn expected(n: &Names) -> Value {
    let retry = envelope(n, &n.retry, "application/json", json!({"n": 1}));
    let mut special = envelope(n, &n.routed, "application/json", json!({"n": 8}));
    special["event"]["id"] = json!(format!("{}-meta", n.ids));
    special["event"]["type"] = json!("swap.special");
    special["event"]["subject"] = json!("s-8");
    special["event"]["source"] = json!("overridden");
    json!({
        "/plain": sorted(vec![
            envelope(n, &n.plain, "application/json", json!({"orderId": 7})),
            envelope(n, &n.plain, "text/plain", json!("hello swap")),
        ]),
        "/ce": [kept(json!({
            "specversion": "1.0", "id": format!("{}-ce", n.ids), "source": "elsewhere",
            "type": "custom.type", "subject": "s-1", "datacontenttype": "application/json",
            "data": {"x": 1},
        }), &n.ce)],
        "/raw": [{
            "contentType": "application/cloudevents+json",
            "event": {
                "id": "<generated>", "source": "Dapr", "type": "com.dapr.event.sent",
                "specversion": "1.0", "datacontenttype": "application/octet-stream",
                "data_base64": RAW_BASE64, "topic": n.raw, "pubsubname": "pubsub",
            },
        }],
        "/bulk": sorted(vec![
            envelope(n, &n.bulk, "application/json", json!({"n": 1})),
            envelope(n, &n.bulk, "text/plain", json!("two")),
            kept(json!({
                "specversion": "1.0", "id": format!("{}-bulk", n.ids), "source": "bulk-source",
                "type": "bulk.type", "datacontenttype": "application/json", "data": {"n": 3},
            }), &n.bulk),
        ]),
        "/retry": {"deliveries": RETRIES + 1, "distinct": [retry]},
        "/drop": [envelope(n, &n.drop, "application/json", json!({"n": 2}))],
        "/routed": [envelope(n, &n.routed, "application/json", json!({"n": 9}))],
        "/routed/special": [special],
    })
}

#[tokio::test]
async fn in_memory() {
    scenario(&Broker::in_memory()).await;
}

#[tokio::test]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenario(&Broker::sqlite(&dir.path().join("pubsub.db"))).await;
}

#[tokio::test]
async fn redis() {
    let b = Broker::redis();
    if !b.require() {
        return;
    }
    let n = scenario(&b).await;
    // The topics are streams that would stay in the shared server.
    let mut conn = ::redis::Client::open(format!("redis://{}/", b.addr))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let _: () = ::redis::cmd("DEL")
        .arg(&[
            &n.plain, &n.ce, &n.raw, &n.bulk, &n.retry, &n.drop, &n.routed,
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn rabbitmq() {
    let b = Broker::rabbitmq();
    if b.require() {
        scenario(&b).await;
    }
}

#[tokio::test]
async fn jetstream() {
    let b = Broker::jetstream();
    if b.require() {
        pubsub::nats_stream_ready(NATS).await;
        scenario(&b).await;
    }
}

#[tokio::test]
async fn mqtt3() {
    let b = Broker::mqtt();
    if b.require() {
        scenario(&b).await;
    }
}

#[tokio::test]
async fn kafka() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    scenario(&Broker::kafka(broker.brokers())).await;
}
