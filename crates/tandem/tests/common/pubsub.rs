//! Shared parts of the pub/sub end-to-end tests: each broker's component YAML and naming,
//! sidecars with a subscriber app, waiting until subscriptions are attached, publishing, and
//! the scenarios that every broker runs (deliver and redeliver after RETRY, fan-out with
//! competing instances, broker down at start-up).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_runtime::pubsub::delivery::ATTEMPTS;
use tandem_testkit::proxy::TcpProxy;
use tandem_testkit::subscriber::{Answer, Received, Subscriber};
use tandem_testkit::{Sidecar, SidecarBuilder, services};

use super::{assert_error, client, start, tandem};

/// The Redis the tests share.
pub const REDIS: &str = "127.0.0.1:6379";
/// The RabbitMQ the tests share.
pub const RABBITMQ: &str = "127.0.0.1:5672";
/// The NATS server (with JetStream) the tests share.
pub const NATS: &str = "127.0.0.1:4222";
/// The Mosquitto the tests share.
pub const MOSQUITTO: &str = "127.0.0.1:1883";

/// The JetStream stream the tests publish into: it captures [`NATS_SUBJECTS`].
pub const NATS_STREAM: &str = "TANDEM_E2E";
/// The subjects of [`NATS_STREAM`]; topics of NATS tests start with `tandeme2e.`.
pub const NATS_SUBJECTS: &str = "tandeme2e.>";

/// How a test tells that a sidecar's subscriptions are attached.
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    /// `GET /v1.0/metadata` lists them (the component's `subscribe` has returned by then).
    Metadata,
    /// The sidecar logged them as started (`subscribed … topic=…`): Kafka's `subscribe`
    /// returns once the group gave the member its partitions, which comes after the metadata
    /// lists the subscription.
    Log,
}

/// A pub/sub backend as the end-to-end tests use it.
#[derive(Clone, Debug)]
pub struct Broker {
    /// The name used in messages.
    pub name: &'static str,
    /// Where the component reaches the backend (`host:port`, or a database file).
    pub addr: String,
    /// The component YAML (named `pubsub`) for a backend at an address, with extra metadata
    /// lines (`  - name: …\n    value: …\n`).
    pub yaml: fn(&str, &str) -> String,
    /// Start of topic names (app-ids are topic names with dots replaced by dashes).
    pub prefix: &'static str,
    /// How long a delivery may take.
    pub wait: Duration,
    /// How to tell that subscriptions are attached.
    pub ready: Ready,
    /// Whether the backend is a server reached over the network (else it is embedded).
    pub remote: bool,
}

/// A pub/sub component named `pubsub` of type `type_name` with `metadata` lines.
pub fn component(type_name: &str, metadata: &str) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: {type_name}\n  version: v1\n"
    );
    if !metadata.is_empty() {
        yaml.push_str("  metadata:\n");
        yaml.push_str(metadata);
    }
    yaml
}

/// One metadata line pair of a component.
pub fn meta(name: &str, value: &str) -> String {
    format!("  - name: {name}\n    value: \"{value}\"\n")
}

fn redis_yaml(addr: &str, extra: &str) -> String {
    // Redelivery timings short enough for a test.
    let m = meta("redisHost", addr)
        + &meta("dialTimeout", "1s")
        + &meta("processingTimeout", "1s")
        + &meta("redeliverInterval", "200ms");
    component("pubsub.redis", &(m + extra))
}

fn rabbitmq_yaml(addr: &str, extra: &str) -> String {
    let m = meta("connectionString", &format!("amqp://guest:guest@{addr}"))
        + &meta("reconnectWaitSeconds", "200ms");
    component("pubsub.rabbitmq", &(m + extra))
}

fn jetstream_yaml(addr: &str, extra: &str) -> String {
    component(
        "pubsub.jetstream",
        &(meta("natsURL", &format!("nats://{addr}")) + extra),
    )
}

fn mqtt_yaml(addr: &str, extra: &str) -> String {
    // Each sidecar gets a client id of its own, and a clean session so that the broker keeps
    // nothing once the test is over.
    let m = meta("url", &format!("tcp://{addr}"))
        + &meta("consumerID", "{uuid}")
        + &meta("cleanSession", "true");
    component("pubsub.mqtt3", &(m + extra))
}

fn kafka_yaml(brokers: &str, extra: &str) -> String {
    // A short session timeout (tansu makes a new group wait about half of it) and a short
    // publish deadline.
    let m = meta("brokers", brokers)
        + &meta("authType", "none")
        + &meta("sessionTimeout", "2s")
        + &meta("heartbeatInterval", "300ms")
        + &meta("writeTimeout", "2s")
        + &meta("metadataTimeout", "1s");
    component("pubsub.kafka", &(m + extra))
}

fn sqlite_yaml(path: &str, extra: &str) -> String {
    component("pubsub.sqlite", &(meta("connectionString", path) + extra))
}

fn in_memory_yaml(_: &str, extra: &str) -> String {
    component("pubsub.in-memory", extra)
}

impl Broker {
    /// `pubsub.redis` against the shared Redis.
    pub fn redis() -> Self {
        Self::shared("Redis", REDIS, redis_yaml, "redis-ps-e2e-")
    }

    /// `pubsub.rabbitmq` against the shared RabbitMQ.
    pub fn rabbitmq() -> Self {
        Self::shared("RabbitMQ", RABBITMQ, rabbitmq_yaml, "rabbit-e2e-")
    }

    /// `pubsub.jetstream` against the shared NATS server; topics under `tandeme2e.`.
    pub fn jetstream() -> Self {
        Self::shared("NATS", NATS, jetstream_yaml, "tandeme2e.")
    }

    /// `pubsub.mqtt3` against the shared Mosquitto.
    pub fn mqtt() -> Self {
        Self::shared("Mosquitto", MOSQUITTO, mqtt_yaml, "mqtt-e2e-")
    }

    /// `pubsub.kafka` against `brokers`.
    pub fn kafka(brokers: &str) -> Self {
        Self {
            name: "Kafka",
            addr: brokers.to_owned(),
            yaml: kafka_yaml,
            prefix: "kafka-e2e-",
            wait: Duration::from_secs(30),
            ready: Ready::Log,
            remote: true,
        }
    }

    /// `pubsub.sqlite` in the database file `db`.
    pub fn sqlite(db: &Path) -> Self {
        Self {
            name: "SQLite",
            addr: db.display().to_string(),
            yaml: sqlite_yaml,
            prefix: "sqlite-e2e-",
            wait: Duration::from_secs(15),
            ready: Ready::Metadata,
            remote: false,
        }
    }

    /// `pubsub.in-memory`.
    pub fn in_memory() -> Self {
        Self {
            name: "in-memory",
            addr: String::new(),
            yaml: in_memory_yaml,
            prefix: "memory-e2e-",
            wait: Duration::from_secs(15),
            ready: Ready::Metadata,
            remote: false,
        }
    }

    fn shared(
        name: &'static str,
        addr: &str,
        yaml: fn(&str, &str) -> String,
        prefix: &'static str,
    ) -> Self {
        Self {
            name,
            addr: addr.to_owned(),
            yaml,
            prefix,
            wait: Duration::from_secs(20),
            ready: Ready::Metadata,
            remote: true,
        }
    }

    /// The same component against another address (a proxy, a private server).
    pub fn at(&self, addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            ..self.clone()
        }
    }

    /// Whether the backend answers at its address; otherwise the test is skipped (or fails
    /// when `TANDEM_REQUIRE_SERVICES=1`).
    pub fn require(&self) -> bool {
        !self.remote || services::require(self.name, &self.addr)
    }

    /// The component YAML for this backend, with extra metadata lines.
    pub fn yaml(&self, extra: &str) -> String {
        (self.yaml)(&self.addr, extra)
    }

    /// A topic name no other test run uses, so that runs sharing a server never see each
    /// other.
    pub fn unique(&self, what: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("{}{what}-{}-{nanos}", self.prefix, std::process::id())
    }

    /// An app-id no other test run uses.
    pub fn app_id(&self, what: &str) -> String {
        self.unique(what).replace('.', "-")
    }

    /// A sidecar builder with the component (and extra metadata lines), for the app `sub`.
    pub fn builder(&self, app_id: &str, extra: &str, sub: Option<&Subscriber>) -> SidecarBuilder {
        let mut b = tandem()
            .app_id(app_id)
            .resource("pubsub.yaml", &self.yaml(extra));
        if let Some(sub) = sub {
            b = b.app_port(sub.port);
        }
        b
    }

    /// A running sidecar with the component, for the app `sub`.
    pub async fn sidecar(&self, app_id: &str, sub: Option<&Subscriber>) -> Sidecar {
        start(self.builder(app_id, "", sub)).await
    }

    /// A running sidecar with the component and extra metadata lines.
    pub async fn sidecar_with(
        &self,
        app_id: &str,
        extra: &str,
        sub: Option<&Subscriber>,
    ) -> Sidecar {
        start(self.builder(app_id, extra, sub)).await
    }

    /// Waits until `n` subscriptions of the sidecar are attached.
    pub async fn wait_subscribed(&self, sc: &Sidecar, n: usize) {
        match self.ready {
            Ready::Metadata => wait_listed(sc, n, self.wait).await,
            Ready::Log => wait_logged(sc, n, self.wait).await,
        }
    }
}

/// Waits until the sidecar's metadata lists `n` subscriptions.
pub async fn wait_listed(sc: &Sidecar, n: usize, within: Duration) {
    let until = Instant::now() + within;
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

/// Waits until the sidecar logged `n` started subscriptions.
pub async fn wait_logged(sc: &Sidecar, n: usize, within: Duration) {
    let until = Instant::now() + within;
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

/// Publishes `body` as JSON to `topic` on the component `pubsub`.
pub async fn publish(sc: &Sidecar, topic: &str, body: Value) -> reqwest::Response {
    publish_query(sc, topic, "", body).await
}

/// Publishes `body` as JSON with a query string (`?metadata.…`).
pub async fn publish_query(
    sc: &Sidecar,
    topic: &str,
    query: &str,
    body: Value,
) -> reqwest::Response {
    client()
        .post(sc.url(&format!("/v1.0/publish/pubsub/{topic}{query}")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The `data.n` numbers of deliveries, sorted.
pub fn numbers(received: &[Received]) -> Vec<u64> {
    let mut n: Vec<u64> = received
        .iter()
        .filter_map(|r| r.body["data"]["n"].as_u64())
        .collect();
    n.sort_unstable();
    n
}

/// What [`deliver_and_redeliver_after_retry`] leaves for broker-specific checks.
pub struct RetryRun {
    /// The subscriber app.
    pub sub: Subscriber,
    /// Its sidecar.
    pub sidecar: Sidecar,
    /// The sidecar's app-id.
    pub app_id: String,
    /// The topic of the order event.
    pub orders: String,
    /// The topic answered with RETRY.
    pub flaky: String,
    /// The order event as delivered.
    pub order: Received,
    /// Every delivery of the RETRY-answered event, in order.
    pub attempts: Vec<Received>,
}

/// Publishes an order (`{"orderId": 7}`, with `order_query` appended to the publish URL) and
/// checks its delivery as a CloudEvent; then publishes to a topic whose app answers RETRY
/// more often than the runtime retries in process, so that only a redelivery by the
/// component brings it back, and checks that it comes until SUCCESS and no more after
/// `settle`.
pub async fn deliver_and_redeliver_after_retry(
    b: &Broker,
    order_query: &str,
    settle: Duration,
) -> RetryRun {
    let orders = b.unique("orders");
    let flaky = b.unique("flaky");
    let sub = Subscriber::start(json!([
        {"pubsubname": "pubsub", "topic": orders, "route": "/orders"},
        {"pubsubname": "pubsub", "topic": flaky, "route": "/flaky"},
    ]))
    .await;
    let retries = ATTEMPTS as usize + 1;
    sub.answer("/flaky", Answer::RetryTimes(retries));
    let app_id = b.app_id("app");
    let sc = b.sidecar(&app_id, Some(&sub)).await;
    b.wait_subscribed(&sc, 2).await;

    let resp = publish_query(&sc, &orders, order_query, json!({"orderId": 7})).await;
    assert_eq!(resp.status(), 204, "log:\n{}", sc.log());
    let got = sub
        .wait_for(b.wait, "the order event", |r| {
            r.iter().any(|e| e.path == "/orders")
        })
        .await;
    let order = got.iter().find(|e| e.path == "/orders").unwrap().clone();
    assert_eq!(
        order.headers["content-type"],
        "application/cloudevents+json"
    );
    assert_eq!(order.body["data"], json!({"orderId": 7}));
    assert_eq!(order.body["topic"], orders.as_str());
    assert_eq!(order.body["pubsubname"], "pubsub");

    let resp = publish(&sc, &flaky, json!({"n": 1})).await;
    assert_eq!(resp.status(), 204);
    let got = sub
        .wait_for(
            b.wait,
            "RETRY until the component delivers again, then success",
            |r| r.iter().filter(|e| e.path == "/flaky").count() > retries,
        )
        .await;
    let attempts: Vec<Received> = got.into_iter().filter(|e| e.path == "/flaky").collect();
    let id = &attempts[0].body["id"];
    assert!(
        attempts.iter().all(|e| &e.body["id"] == id),
        "the same event every time"
    );
    // Answered SUCCESS at last: acknowledged, nothing more arrives.
    tokio::time::sleep(settle).await;
    assert_eq!(
        sub.received_on("/flaky").len(),
        retries + 1,
        "delivered until SUCCESS, then no more"
    );
    assert_eq!(sub.received_on("/orders").len(), 1, "the order once");
    RetryRun {
        sub,
        sidecar: sc,
        app_id,
        orders,
        flaky,
        order,
        attempts,
    }
}

/// Two instances of one app (with `worker_extra` metadata lines) share a topic's messages,
/// and another app gets every one. Returns the topic.
pub async fn fan_out_and_compete(b: &Broker, worker_extra: &str) -> String {
    let topic = b.unique("work");
    let subs = json!([{"pubsubname": "pubsub", "topic": topic, "route": "/work"}]);
    let w1 = Subscriber::start(subs.clone()).await;
    let w2 = Subscriber::start(subs.clone()).await;
    let audit = Subscriber::start(subs).await;
    let workers = b.app_id("workers");
    // The first worker settles in before the second joins (Kafka rebalances otherwise).
    let s1 = b.sidecar_with(&workers, worker_extra, Some(&w1)).await;
    b.wait_subscribed(&s1, 1).await;
    let s2 = b.sidecar_with(&workers, worker_extra, Some(&w2)).await;
    let s3 = b.sidecar(&b.app_id("auditor"), Some(&audit)).await;
    b.wait_subscribed(&s2, 1).await;
    b.wait_subscribed(&s3, 1).await;
    let publisher = b.sidecar(&b.app_id("publisher"), None).await;
    // No key: Kafka spreads the records over the topic's partitions, which the workers share.
    publish_numbers(&publisher, &topic, 40).await;
    assert_shared_and_fanned_out(&w1, &w2, &audit, 40, b.wait).await;
    topic
}

/// Publishes `{"n": 0}` … `{"n": count - 1}`, each answered 204.
pub async fn publish_numbers(sc: &Sidecar, topic: &str, count: u64) {
    for n in 0..count {
        let resp = publish(sc, topic, json!({"n": n})).await;
        assert_eq!(resp.status(), 204, "publish {n}");
    }
}

/// The two workers handled each of `0..count` once between them (both took a share), and
/// the auditor got every one.
pub async fn assert_shared_and_fanned_out(
    w1: &Subscriber,
    w2: &Subscriber,
    audit: &Subscriber,
    count: usize,
    within: Duration,
) {
    audit
        .wait_for(within, &format!("all {count} at the auditor"), |r| {
            r.len() >= count
        })
        .await;
    let until = Instant::now() + within;
    while w1.received().len() + w2.received().len() < count && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut both = w1.received();
    both.extend(w2.received());
    let all: Vec<u64> = (0..count as u64).collect();
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

/// A sidecar starts while nothing answers at `127.0.0.1:<port>` (where the component is
/// pointed); publishing fails with `error` in the message. Then a proxy to `target` opens
/// there, and publishing works and the subscription attaches by itself. Returns the topic.
pub async fn down_at_start_up(b: &Broker, port: u16, target: SocketAddr, error: &str) -> String {
    let down = b.at(&format!("127.0.0.1:{port}"));
    let topic = b.unique("late");
    let sub =
        Subscriber::start(json!([{"pubsubname": "pubsub", "topic": topic, "route": "/late"}]))
            .await;
    let sc = down.sidecar(&b.app_id("late-app"), Some(&sub)).await;
    down.wait_subscribed(&sc, 1).await;
    let resp = publish(&sc, &topic, json!({"n": 0})).await;
    assert_error(resp, 500, "ERR_PUBSUB_PUBLISH_MESSAGE", error).await;

    let _proxy = TcpProxy::start(port, target).await.unwrap();
    let until = Instant::now() + b.wait;
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
    topic
}

/// Makes sure the JetStream stream of the tests exists on the server at `addr` (the
/// component does not create streams, as in Dapr). A server just started may accept
/// connections before it serves them (it resets them while JetStream starts), so this tries
/// again for a while.
pub async fn nats_stream_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let made = async {
            let client = async_nats::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            async_nats::jetstream::new(client)
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: NATS_STREAM.into(),
                    subjects: vec![NATS_SUBJECTS.into()],
                    max_age: Duration::from_secs(600),
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|e| format!("create the test stream: {e}"))
        };
        match made.await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("NATS at {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
