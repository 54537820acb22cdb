//! `pubsub.kafka` against the pub/sub conformance suite on a Kafka-compatible broker (tansu:
//! the one at 127.0.0.1:9092 when it answers, else a private one per test; skipped when none
//! can be started, unless `TANDEM_REQUIRE_SERVICES=1`).

use std::sync::Arc;

use async_trait::async_trait;
use tandem_components::conformance::unique_key;
use tandem_components::pubsub::{
    MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest, Subscription,
};
use tandem_components::{Metadata, Result};
use tandem_kafka::KafkaPubSub;
use tandem_testkit::kafka::Tansu;

/// A component together with the broker it talks to, which lives as long as the component.
/// Its consumer groups get a suffix of their own, so that cases running at the same time,
/// and earlier runs on a long-lived broker, never share a group (tansu has been seen to
/// leave a group stuck after concurrent joins for different topics).
struct OnBroker {
    inner: KafkaPubSub,
    suffix: String,
    _broker: Tansu,
}

#[async_trait]
impl PubSub for OnBroker {
    fn features(&self) -> &'static [PubSubFeature] {
        self.inner.features()
    }
    async fn publish(&self, req: PublishRequest) -> Result<()> {
        self.inner.publish(req).await
    }
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        self.inner.bulk_publish(reqs).await
    }
    async fn subscribe(
        &self,
        mut req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        req.consumer_group = format!("{}-{}", req.consumer_group, self.suffix);
        self.inner.subscribe(req, handler).await
    }
}

/// Metadata for `brokers` with a short session timeout (tansu makes a new group wait about
/// half of it before assigning partitions).
fn metadata(brokers: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut md = Metadata::new("kafka", "conformance")
        .with("brokers", brokers)
        .with("authType", "none")
        .with("sessionTimeout", "2s")
        .with("heartbeatInterval", "300ms");
    for (k, v) in extra {
        md.insert(*k, *v);
    }
    md
}

async fn build_with(extra: &[(&str, &str)]) -> Option<Arc<dyn PubSub>> {
    let broker = Tansu::shared_or_start()?;
    let inner = KafkaPubSub::build(&metadata(broker.brokers(), extra))
        .await
        .expect("build");
    Some(Arc::new(OnBroker {
        inner,
        suffix: unique_key("g"),
        _broker: broker,
    }))
}

async fn build() -> Option<Arc<dyn PubSub>> {
    build_with(&[]).await
}

// Dapr's defaults: `initialOffset: newest`, one message at a time per partition.
tandem_components::pubsub_conformance!(build());

/// The suite with `deliveryOrder: key` and `initialOffset: oldest`.
mod key_order {
    use super::*;

    async fn build() -> Option<Arc<dyn PubSub>> {
        build_with(&[("deliveryOrder", "key"), ("initialOffset", "oldest")]).await
    }

    tandem_components::pubsub_conformance!(build());
}

// ---------------------------------------------------------------------------------------
// What only Kafka shows: keys, partitions, headers, ordering, offsets, authentication,
// brokers that are down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tandem_components::Error;
use tandem_components::conformance::pubsub::{
    DEADLINE, assert_quiet, collector, handler, publish, publish_req, recv_n, recv_n_within,
    subscribe, subscribe_req,
};
use tandem_components::pubsub::{Delivery, Message};
use tandem_testkit::proxy::{TcpProxy, quiet_port};

fn text(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.data).into_owned()
}

fn with_meta(topic: &str, data: &str, meta: &[(&str, &str)]) -> PublishRequest {
    let mut req = publish_req(topic, data.to_owned());
    for (k, v) in meta {
        req.metadata.insert((*k).to_owned(), (*v).to_owned());
    }
    req
}

async fn kafka(extra: &[(&str, &str)]) -> Option<(KafkaPubSub, Tansu)> {
    let broker = Tansu::shared_or_start()?;
    let ps = KafkaPubSub::build(&metadata(broker.brokers(), extra))
        .await
        .expect("build");
    Some((ps, broker))
}

/// The record key comes from `partitionKey` (or `key`), `partitionNumber` picks the
/// partition, metadata travels as headers, and deliveries carry Dapr's `__` metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_partitions_and_headers() {
    let Some((ps, _broker)) = kafka(&[]).await else {
        return;
    };
    let topic = unique_key("kafka-keys");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, &unique_key("g"), 4, h).await;
    for data in ["a", "b", "c"] {
        ps.publish(with_meta(
            &topic,
            data,
            &[("partitionKey", "order-7"), ("tenant", "acme")],
        ))
        .await
        .unwrap();
    }
    ps.publish(with_meta(
        &topic,
        "pinned",
        &[("key", "k2"), ("partitionNumber", "2")],
    ))
    .await
    .unwrap();
    let got = recv_n(&mut rx, 4).await;
    let keyed: Vec<&Message> = got.iter().filter(|m| text(m) != "pinned").collect();
    for m in &keyed {
        assert_eq!(m.metadata["__key"], "order-7");
        assert_eq!(m.metadata["tenant"], "acme", "metadata arrives as headers");
        assert_eq!(
            m.metadata["partitionKey"], "order-7",
            "daprd sends it as a header too"
        );
        assert_eq!(m.metadata["__topic"], topic);
        assert!(m.metadata["__offset"].parse::<i64>().is_ok());
        assert!(m.metadata["__timestamp"].parse::<i64>().unwrap() > 1_600_000_000_000);
        assert_eq!(m.topic, topic);
    }
    let partition = &keyed[0].metadata["__partition"];
    assert!(
        keyed
            .iter()
            .all(|m| &m.metadata["__partition"] == partition),
        "one key, one partition"
    );
    let order: Vec<String> = keyed.iter().map(|m| text(m)).collect();
    assert_eq!(order, ["a", "b", "c"], "in order within the key");
    let pinned = got.iter().find(|m| text(m) == "pinned").unwrap();
    assert_eq!(pinned.metadata["__partition"], "2");
    assert_eq!(pinned.metadata["__key"], "k2");
    let bad = ps
        .publish(with_meta(&topic, "x", &[("partitionNumber", "many")]))
        .await
        .unwrap_err();
    assert!(matches!(bad, Error::InvalidRequest(_)), "{bad:?}");
    sub.close().await;
}

/// Data `null` publishes a tombstone, which is delivered as `null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones() {
    let Some((ps, _broker)) = kafka(&[]).await else {
        return;
    };
    let topic = unique_key("kafka-tombstone");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, &unique_key("g"), 1, h).await;
    ps.publish(with_meta(&topic, "null", &[("partitionKey", "gone")]))
        .await
        .unwrap();
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(got[0].data.as_ref(), b"null");
    assert_eq!(got[0].metadata["__key"], "gone");
    sub.close().await;
}

/// Tracks how many handlers run at once, overall and per partition.
#[derive(Default)]
struct Gauge {
    now: Mutex<HashMap<String, usize>>,
    max_per_partition: AtomicUsize,
    total: AtomicUsize,
    max_total: AtomicUsize,
}

impl Gauge {
    fn enter(&self, partition: &str) {
        let mut now = self.now.lock().unwrap();
        let n = now.entry(partition.to_owned()).or_default();
        *n += 1;
        self.max_per_partition.fetch_max(*n, Ordering::SeqCst);
        let t = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_total.fetch_max(t, Ordering::SeqCst);
    }
    fn leave(&self, partition: &str) {
        *self.now.lock().unwrap().get_mut(partition).unwrap() -= 1;
        self.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Per-key sequence numbers arrive in order.
fn assert_in_order_per_key(got: &[Message]) {
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in got {
        let (key, n) = text(m)
            .split_once(':')
            .map(|(k, n)| (k.to_owned(), n.parse::<i64>().unwrap()))
            .unwrap();
        let prev = last.insert(key.clone(), n).unwrap_or(-1);
        assert!(n > prev, "{key}: {n} after {prev}");
    }
}

/// `deliveryOrder: partition` (the default): one message at a time per partition, in
/// offset order, while different partitions are handled in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_handled_in_order() {
    let Some((ps, _broker)) = kafka(&[]).await else {
        return;
    };
    let topic = unique_key("kafka-order");
    let gauge = Arc::new(Gauge::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = {
        let gauge = gauge.clone();
        handler(move |msg: Message| {
            let gauge = gauge.clone();
            let tx = tx.clone();
            async move {
                let p = msg.metadata["__partition"].clone();
                gauge.enter(&p);
                tokio::time::sleep(Duration::from_millis(3)).await;
                gauge.leave(&p);
                let _ = tx.send(msg);
                Delivery::Ack
            }
        })
    };
    let sub = subscribe(&ps, &topic, &unique_key("g"), 16, h).await;
    const N: usize = 120;
    let reqs = (0..N)
        .map(|i| {
            let key = format!("key{}", i % 6);
            with_meta(&topic, &format!("{key}:{i}"), &[("partitionKey", &key)])
        })
        .collect();
    assert!(ps.bulk_publish(reqs).await.iter().all(|r| r.is_ok()));
    let got = recv_n(&mut rx, N).await;
    assert_in_order_per_key(&got);
    assert_eq!(
        gauge.max_per_partition.load(Ordering::SeqCst),
        1,
        "never two messages of one partition at once"
    );
    assert!(
        gauge.max_total.load(Ordering::SeqCst) > 1,
        "partitions run in parallel"
    );
    sub.close().await;
}

/// `deliveryOrder: key`: one partition's messages are handled in parallel, each key's in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_runs_a_partition_in_parallel() {
    let Some((ps, _broker)) = kafka(&[("deliveryOrder", "key")]).await else {
        return;
    };
    let topic = unique_key("kafka-keyorder");
    let gauge = Arc::new(Gauge::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = {
        let gauge = gauge.clone();
        handler(move |msg: Message| {
            let gauge = gauge.clone();
            let tx = tx.clone();
            async move {
                let key = msg.metadata["__key"].clone();
                gauge.enter(&key);
                tokio::time::sleep(Duration::from_millis(10)).await;
                gauge.leave(&key);
                let _ = tx.send(msg);
                Delivery::Ack
            }
        })
    };
    let sub = subscribe(&ps, &topic, &unique_key("g"), 8, h).await;
    const N: usize = 40;
    let reqs = (0..N)
        .map(|i| {
            let key = format!("key{}", i % 4);
            with_meta(
                &topic,
                &format!("{key}:{i}"),
                &[("partitionKey", &key), ("partitionNumber", "0")],
            )
        })
        .collect();
    assert!(ps.bulk_publish(reqs).await.iter().all(|r| r.is_ok()));
    let got = recv_n(&mut rx, N).await;
    assert!(got.iter().all(|m| m.metadata["__partition"] == "0"));
    assert_in_order_per_key(&got);
    assert_eq!(
        gauge.max_per_partition.load(Ordering::SeqCst),
        1,
        "never two messages of one key at once"
    );
    assert!(
        gauge.max_total.load(Ordering::SeqCst) > 1,
        "keys of one partition run in parallel"
    );
    sub.close().await;
}

/// A message answered Retry comes back before anything after it in its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_holds_back_its_partition() {
    let Some((ps, _broker)) = kafka(&[]).await else {
        return;
    };
    let topic = unique_key("kafka-holdback");
    let failures = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = {
        let failures = failures.clone();
        handler(move |msg: Message| {
            let first = text(&msg) == "first";
            let _ = tx.send(msg);
            let retry = first && failures.fetch_add(1, Ordering::SeqCst) < 2;
            async move {
                if retry {
                    Delivery::Retry
                } else {
                    Delivery::Ack
                }
            }
        })
    };
    let sub = subscribe(&ps, &topic, &unique_key("g"), 8, h).await;
    for data in ["first", "second"] {
        ps.publish(with_meta(&topic, data, &[("partitionNumber", "0")]))
            .await
            .unwrap();
    }
    let got: Vec<String> = recv_n(&mut rx, 4).await.iter().map(text).collect();
    assert_eq!(got, ["first", "first", "first", "second"]);
    assert_quiet(&mut rx, "each settled once").await;
    sub.close().await;
}

/// Offsets are committed after Ack only: a new member of the group continues after the
/// acknowledged messages, and gets again what was answered Retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_follow_the_verdicts() {
    let Some((ps, _broker)) = kafka(&[]).await else {
        return;
    };
    let topic = unique_key("kafka-commit");
    let group = unique_key("g");
    // First member: acknowledges "ok-*", keeps answering Retry to "later".
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = handler(move |msg: Message| {
        let later = text(&msg) == "later";
        let _ = tx.send(msg);
        async move {
            if later {
                Delivery::Retry
            } else {
                Delivery::Ack
            }
        }
    });
    let sub = subscribe(&ps, &topic, &group, 4, h).await;
    for i in 0..5 {
        ps.publish(with_meta(
            &topic,
            &format!("ok-{i}"),
            &[("partitionNumber", "1")],
        ))
        .await
        .unwrap();
    }
    ps.publish(with_meta(&topic, "later", &[("partitionNumber", "1")]))
        .await
        .unwrap();
    let got = recv_n(&mut rx, 7).await;
    assert!(got.iter().filter(|m| text(m) == "later").count() >= 2);
    sub.close().await;

    // Second member of the same group: starts at "later", never sees the acknowledged ones.
    ps.publish(with_meta(&topic, "after", &[("partitionNumber", "1")]))
        .await
        .unwrap();
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, &group, 4, h).await;
    let got: Vec<String> = recv_n(&mut rx, 2).await.iter().map(text).collect();
    assert_eq!(got, ["later", "after"]);
    assert_quiet(&mut rx, "acknowledged messages stay acknowledged").await;
    sub.close().await;
}

/// A new group with `initialOffset: newest` starts after what the topic holds; with
/// `oldest` it reads everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_offset() {
    let Some((newest, broker)) = kafka(&[]).await else {
        return;
    };
    let oldest = KafkaPubSub::build(&metadata(broker.brokers(), &[("initialOffset", "oldest")]))
        .await
        .unwrap();
    let topic = unique_key("kafka-initial");
    publish(&newest, &topic, "old").await;
    let (h, mut from_newest) = collector(Delivery::Ack);
    let a = subscribe(&newest, &topic, &unique_key("g"), 4, h).await;
    let (h, mut from_oldest) = collector(Delivery::Ack);
    let b = subscribe(&oldest, &topic, &unique_key("g"), 4, h).await;
    publish(&newest, &topic, "new").await;
    assert_eq!(text(&recv_n(&mut from_newest, 1).await[0]), "new");
    let got: Vec<String> = recv_n(&mut from_oldest, 2).await.iter().map(text).collect();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&"old".to_owned()) && got.contains(&"new".to_owned()));
    assert_quiet(&mut from_newest, "newest skips the backlog").await;
    a.close().await;
    b.close().await;
}

/// `consumeRetryEnabled: false`: a failed message is skipped (daprd's behaviour), and its
/// offset committed with the next ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_messages_are_skipped_without_retries() {
    let Some((ps, _broker)) = kafka(&[("consumeRetryEnabled", "false")]).await else {
        return;
    };
    let topic = unique_key("kafka-skip");
    let group = unique_key("g");
    let (h, mut rx) = collector(Delivery::Retry);
    let sub = subscribe(&ps, &topic, &group, 1, h).await;
    for data in ["bad", "worse"] {
        ps.publish(with_meta(&topic, data, &[("partitionNumber", "0")]))
            .await
            .unwrap();
    }
    let got: Vec<String> = recv_n(&mut rx, 2).await.iter().map(text).collect();
    assert_eq!(got, ["bad", "worse"]);
    assert_quiet(&mut rx, "not delivered again").await;
    sub.close().await;
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, &group, 1, h).await;
    assert_quiet(&mut rx, "skipped offsets were committed").await;
    sub.close().await;
}

/// SASL settings reach librdkafka (SCRAM needs the OpenSSL build), and a failed
/// authentication is an error for the publisher within `writeTimeout`, not a hang. (tansu
/// 0.6's SASL handshake refuses every client, so a successful login cannot be shown here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_failures_are_errors() {
    let Some(broker) = Tansu::start() else {
        return;
    };
    for mechanism in ["SHA-512", "SHA-256", "PLAINTEXT"] {
        let ps = KafkaPubSub::build(&metadata(
            broker.brokers(),
            &[
                ("authType", "password"),
                ("saslUsername", "tandem"),
                ("saslPassword", "s3cret"),
                ("saslMechanism", mechanism),
                ("disableTls", "true"),
                ("writeTimeout", "2s"),
            ],
        ))
        .await
        .unwrap();
        let started = Instant::now();
        let err = ps
            .publish(publish_req(&unique_key("kafka-sasl"), "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Backend(_)), "{mechanism}: {err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{mechanism}: {:?}",
            started.elapsed()
        );
    }
}

/// Built while the broker is unreachable: building works, publishing fails after
/// `writeTimeout`, `subscribe` returns promptly; once the broker answers, the subscription
/// attaches by itself and publishing works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_up() {
    let port = quiet_port();
    let Some(broker) = Tansu::start_with(&[], Some(port)) else {
        return;
    };
    let ps = KafkaPubSub::build(&metadata(
        broker.brokers(),
        &[("writeTimeout", "1s"), ("metadataTimeout", "1s")],
    ))
    .await
    .expect("building does not need the broker");
    let topic = unique_key("kafka-late");
    let err = ps.publish(publish_req(&topic, "nobody")).await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    let (h, mut rx) = collector(Delivery::Ack);
    let started = Instant::now();
    let sub = subscribe(&ps, &topic, &unique_key("g"), 4, h).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "subscribe does not wait for brokers that are down: {:?}",
        started.elapsed()
    );
    let target = format!("127.0.0.1:{}", broker.listen_port().unwrap());
    let _proxy = TcpProxy::start(port, target.parse().unwrap())
        .await
        .unwrap();
    let until = Instant::now() + DEADLINE;
    let got = loop {
        let _ = ps.publish(publish_req(&topic, "hello")).await;
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            break msg;
        }
        assert!(Instant::now() < until, "the subscription never attached");
    };
    assert_eq!(text(&got), "hello");
    sub.close().await;
}

/// The broker goes away (its proxy stops) and comes back: publishing fails meanwhile and
/// recovers; the subscription resumes where it was, losing nothing that was acknowledged to
/// the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_goes_away_and_comes_back() {
    let port = quiet_port();
    let Some(broker) = Tansu::start_with(&[], Some(port)) else {
        return;
    };
    let target = format!("127.0.0.1:{}", broker.listen_port().unwrap())
        .parse()
        .unwrap();
    let proxy = TcpProxy::start(port, target).await.unwrap();
    let ps = KafkaPubSub::build(&metadata(
        broker.brokers(),
        &[("writeTimeout", "2s"), ("metadataTimeout", "1s")],
    ))
    .await
    .unwrap();
    let topic = unique_key("kafka-outage");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, &unique_key("g"), 4, h).await;
    publish(&ps, &topic, "before").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "before");

    proxy.stop();
    let err = ps.publish(publish_req(&topic, "lost?")).await;
    assert!(err.is_err(), "publishing fails while the broker is away");

    let _proxy = TcpProxy::start(port, target).await.unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        match ps.publish(publish_req(&topic, "after")).await {
            Ok(()) => break,
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("publishing did not recover: {e}"),
        }
    }
    // "lost?" may arrive (it failed for the publisher, but may have reached the broker);
    // "before" may come again only if its commit was lost.
    let until = Instant::now() + DEADLINE;
    loop {
        let got = recv_n_within(&mut rx, 1, until - Instant::now()).await;
        match text(&got[0]).as_str() {
            "after" => break,
            "before" | "lost?" => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    sub.close().await;
}

/// Bad metadata fails the build and names the field; a subscription needs a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_surface() {
    let err = KafkaPubSub::build(&metadata("127.0.0.1:1", &[("authType", "oidc")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("authType"), "{err}");
    let err = KafkaPubSub::build(&metadata("127.0.0.1:1", &[("initialOffset", "latest")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("initialOffset"), "{err}");
    let ps = KafkaPubSub::build(&metadata("127.0.0.1:1", &[]))
        .await
        .unwrap();
    let (h, _rx) = collector(Delivery::Ack);
    let err = ps
        .subscribe(subscribe_req("t", "", 1), h)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("consumer group"), "{err}");
    let mut req = subscribe_req("t", "g", 1);
    req.metadata.insert("valueSchemaType".into(), "Avro".into());
    let (h, _rx) = collector(Delivery::Ack);
    assert!(ps.subscribe(req, h).await.is_err());
}
