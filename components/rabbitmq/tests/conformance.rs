//! `pubsub.rabbitmq` against the pub/sub conformance suite, on the RabbitMQ at 127.0.0.1:5672
//! (guest/guest; skipped when it is unreachable, unless `TANDEM_REQUIRE_SERVICES=1`), plus
//! what only a broker shows: topology shared with daprd's naming, routing keys, dead-letter
//! queues, a broker that goes away and comes back, a broker that is down at start-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_components::conformance::pubsub::{
    DEADLINE, assert_quiet, collector, handler, publish, publish_req, recv_n, recv_n_within,
    subscribe, subscribe_req,
};
use tandem_components::conformance::unique_key;
use tandem_components::pubsub::{Delivery, Message, PubSub};

use tandem_components::{Error, Metadata};
use tandem_rabbitmq::RabbitPubSub;
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:5672";

fn metadata(url: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut meta = Metadata::new("rabbitmq", "conformance").with("connectionString", url);
    for (key, value) in extra {
        meta.insert(*key, *value);
    }
    meta
}

async fn pubsub_with(extra: &[(&str, &str)]) -> Option<RabbitPubSub> {
    if !services::require("RabbitMQ", ADDR) {
        return None;
    }
    Some(
        RabbitPubSub::build(&metadata(&format!("amqp://guest:guest@{ADDR}"), extra))
            .await
            .expect("build"),
    )
}

async fn build() -> Option<Arc<dyn PubSub>> {
    pubsub_with(&[])
        .await
        .map(|p| Arc::new(p) as Arc<dyn PubSub>)
}

tandem_components::pubsub_conformance!(build());

/// The suite with persistent messages and a topic exchange whose subscriptions bind `#`.
mod durable_topology {
    use super::*;

    async fn build() -> Option<Arc<dyn PubSub>> {
        pubsub_with(&[("deliveryMode", "2"), ("exchangeKind", "topic")])
            .await
            .map(|p| Arc::new(p) as Arc<dyn PubSub>)
    }

    // A topic exchange routes on the key; every subscription here binds `#` (all keys).
    struct AllKeys(Arc<dyn PubSub>);

    #[async_trait::async_trait]
    impl PubSub for AllKeys {
        fn features(&self) -> &'static [tandem_components::pubsub::PubSubFeature] {
            self.0.features()
        }
        async fn publish(
            &self,
            req: tandem_components::pubsub::PublishRequest,
        ) -> tandem_components::Result<()> {
            self.0.publish(req).await
        }
        async fn bulk_publish(
            &self,
            reqs: Vec<tandem_components::pubsub::PublishRequest>,
        ) -> Vec<tandem_components::Result<()>> {
            self.0.bulk_publish(reqs).await
        }
        async fn subscribe(
            &self,
            mut req: tandem_components::pubsub::SubscribeRequest,
            handler: Arc<dyn tandem_components::pubsub::MessageHandler>,
        ) -> tandem_components::Result<tandem_components::pubsub::Subscription> {
            req.metadata.insert("routingKey".into(), "#".into());
            self.0.subscribe(req, handler).await
        }
    }

    async fn build_all_keys() -> Option<Arc<dyn PubSub>> {
        build()
            .await
            .map(|p| Arc::new(AllKeys(p)) as Arc<dyn PubSub>)
    }

    tandem_components::pubsub_conformance!(build_all_keys());
}

fn text(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.data).into_owned()
}

/// Queues are named `<consumerID>-<topic>` (daprd's naming): a plain AMQP declaration of that
/// name finds the queue with the message waiting in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_named_like_daprs() {
    let Some(ps) = pubsub_with(&[("deletedWhenUnused", "false")]).await else {
        return;
    };
    let topic = unique_key("ps-naming");
    let group = unique_key("grp");
    // Subscribe, then stop: the queue stays (deletedWhenUnused: false) and keeps collecting.
    let (h, _rx) = collector(Delivery::Ack);
    subscribe(&ps, &topic, &group, 1, h).await.close().await;
    publish(&ps, &topic, "waiting").await;

    let (conn, ch) = raw_channel().await;
    let queue = format!("{group}-{topic}");
    let q = ch
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("the queue exists under daprd's name");
    assert_eq!(q.message_count(), 1);
    let _ = conn.close(200, "OK".into()).await;
    remove(&queue, &topic).await;
}

/// With a `direct` exchange, a subscription only gets the routing keys it bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_keys_select_messages() {
    let Some(ps) = pubsub_with(&[("exchangeKind", "direct")]).await else {
        return;
    };
    let topic = unique_key("ps-routing");
    let (h, mut rx) = collector(Delivery::Ack);
    let mut req = subscribe_req(&topic, "router", 4);
    req.metadata.insert("routingKey".into(), "red,green".into());
    let sub = ps.subscribe(req, h).await.unwrap();
    for key in ["red", "blue", "green"] {
        let mut req = publish_req(&topic, key);
        req.metadata.insert("routingKey".into(), key.into());
        ps.publish(req).await.unwrap();
    }
    let mut got: Vec<String> = recv_n(&mut rx, 2).await.iter().map(text).collect();
    got.sort();
    assert_eq!(got, ["green", "red"]);
    assert_quiet(&mut rx, "blue is not bound").await;
    sub.close().await;
}

/// With `enableDeadLetter`, what expires in the queue lands in `dlq-<queue>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dead_lettered() {
    let Some(ps) = pubsub_with(&[("enableDeadLetter", "true")]).await else {
        return;
    };
    let topic = unique_key("ps-dlx");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = {
        let gate = gate.clone();
        handler(move |msg| {
            let gate = gate.clone();
            let _ = tx.send(msg);
            async move {
                let _ = gate.acquire().await;
                Delivery::Ack
            }
        })
    };
    let sub = subscribe(&ps, &topic, "dl", 1, h).await;
    publish(&ps, &topic, "hold").await;
    recv_n(&mut rx, 1).await;
    let mut req = publish_req(&topic, "expires");
    req.metadata.insert("ttlInSeconds".into(), "1".into());
    ps.publish(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    gate.add_permits(1);
    assert_quiet(&mut rx, "the expired message is not delivered").await;
    sub.close().await;

    // The broker dead-lettered it when it reached the queue's head.
    let (conn, ch) = raw_channel().await;
    let dlq = format!("dlq-dl-{topic}");
    let until = Instant::now() + DEADLINE;
    let got = loop {
        let got = ch
            .basic_get(dlq.as_str().into(), Default::default())
            .await
            .expect("the dead-letter queue exists");
        if let Some(got) = got {
            break got;
        }
        assert!(Instant::now() < until, "nothing in {dlq}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.delivery.data, b"expires");
    let _ = ch
        .queue_delete(dlq.as_str().into(), Default::default())
        .await;
    let _ = ch
        .exchange_delete(
            format!("dlx-dl-{topic}").as_str().into(),
            Default::default(),
        )
        .await;
    let _ = conn.close(200, "OK".into()).await;
}

/// A plain AMQP connection for looking at the broker.
async fn raw_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(
        &format!("amqp://guest:guest@{ADDR}"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect to rabbitmq");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Deletes what a test declared with `deletedWhenUnused: false`.
async fn remove(queue: &str, exchange: &str) {
    let (conn, ch) = raw_channel().await;
    let _ = ch.queue_delete(queue.into(), Default::default()).await;
    let _ = ch
        .exchange_delete(exchange.into(), Default::default())
        .await;
    let _ = conn.close(200, "OK".into()).await;
}

/// Publishing to a topic whose exchange was auto-deleted after this component declared it
/// works: the component declares it again on a fresh channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_deleted_behind_the_publishers_back() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("ps-autodelete");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "first", 1, h).await;
    publish(&ps, &topic, "one").await;
    recv_n(&mut rx, 1).await;
    // The last queue goes, so the auto-delete exchange goes with it.
    sub.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&ps, &topic, "into the void").await;
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "second", 1, h).await;
    publish(&ps, &topic, "two").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "two");
    sub.close().await;
}

/// A handler that panics does not lose the message: it is requeued and delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gets_the_message_again() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("ps-panic");
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = {
        let calls = calls.clone();
        handler(move |msg| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send(msg);
            async move {
                if n == 0 {
                    panic!("handler bug (expected by the test)");
                }
                Delivery::Ack
            }
        })
    };
    let sub = subscribe(&ps, &topic, "panics", 1, h).await;
    publish(&ps, &topic, "fragile").await;
    let got = recv_n(&mut rx, 2).await;
    assert!(got.iter().all(|m| text(m) == "fragile"));
    assert_quiet(&mut rx, "acknowledged the second time").await;
    sub.close().await;
}

/// `autoAck`: the broker forgets each message as it sends it, so Retry cannot bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_ack_is_at_most_once() {
    let Some(ps) = pubsub_with(&[("autoAck", "true")]).await else {
        return;
    };
    let topic = unique_key("ps-autoack");
    let (h, mut rx) = collector(Delivery::Retry);
    let sub = subscribe(&ps, &topic, "auto", 4, h).await;
    publish(&ps, &topic, "once").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "once");
    assert_quiet(&mut rx, "not redelivered with autoAck").await;
    sub.close().await;
}

/// The broker goes away (the proxy in front of it stops) and comes back: publishing fails
/// while it is away, then works again; the subscription resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_goes_away_and_comes_back() {
    if !services::require("RabbitMQ", ADDR) {
        return;
    }
    let port = quiet_port();
    let target = ADDR.parse().unwrap();
    let proxy = TcpProxy::start(port, target).await.unwrap();
    let ps = RabbitPubSub::build(&metadata(
        &format!("amqp://guest:guest@127.0.0.1:{port}"),
        &[
            ("reconnectWaitSeconds", "200ms"),
            ("deletedWhenUnused", "false"),
        ],
    ))
    .await
    .unwrap();
    let topic = unique_key("ps-outage");
    let group = unique_key("outage");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, &group, 4, h).await;
    publish(&ps, &topic, "before").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "before");

    proxy.stop();
    // Publishing fails promptly while the broker is unreachable.
    let until = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match ps.publish(publish_req(&topic, "lost?")).await {
            Err(e) => break e,
            Ok(()) if Instant::now() < until => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(()) => panic!("publishing kept succeeding with the broker unreachable"),
        }
    };
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    let started = Instant::now();
    assert!(ps.publish(publish_req(&topic, "down")).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fails at once while down: {:?}",
        started.elapsed()
    );

    let _proxy = TcpProxy::start(port, target).await.unwrap();
    // Back: publishing succeeds again, and the subscription has re-attached to its queue.
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
    // "before" may come again: its acknowledgement can be lost with the connection. A
    // "lost?" may come too: one the broker took just before the connection broke.
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
    remove(&format!("{group}-{topic}"), &topic).await;
}

/// Built while the broker is down: building succeeds, publishing fails, a subscription made
/// meanwhile attaches once the broker answers and receives what is published then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_up() {
    if !services::require("RabbitMQ", ADDR) {
        return;
    }
    let port = quiet_port();
    let ps = RabbitPubSub::build(&metadata(
        &format!("amqp://guest:guest@127.0.0.1:{port}"),
        &[("reconnectWaitSeconds", "200ms")],
    ))
    .await
    .expect("building does not need the broker");
    let topic = unique_key("ps-late");
    assert!(ps.publish(publish_req(&topic, "nobody")).await.is_err());
    let (h, mut rx) = collector(Delivery::Ack);
    let started = Instant::now();
    let sub = subscribe(&ps, &topic, "late", 4, h).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "subscribe does not wait for a broker that is down"
    );

    let _proxy = TcpProxy::start(port, ADDR.parse().unwrap()).await.unwrap();
    let until = Instant::now() + DEADLINE;
    // Publish until the re-attached subscription sees one (the first publishes may come
    // before its queue exists).
    let got = loop {
        let _ = ps.publish(publish_req(&topic, "hello")).await;
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            break msg;
        }
        assert!(Instant::now() < until, "the subscription never attached");
    };
    assert_eq!(text(&got), "hello");
    sub.close().await;
}

/// Bad metadata fails the build and names the field; a refused queue declaration fails
/// `subscribe` (here: the same queue name with another queue type).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_surface() {
    let err = RabbitPubSub::build(&metadata("amqp://x", &[("exchangeKind", "nope")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exchangeKind"), "{err}");
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("ps-refused");
    let (h, _rx) = collector(Delivery::Ack);
    let first = subscribe(&ps, &topic, "clash", 1, h).await;
    let (h, _rx2) = collector(Delivery::Ack);
    let mut req = subscribe_req(&topic, "clash", 1);
    req.metadata.insert("maxPriority".into(), "5".into());
    let err = ps.subscribe(req, h).await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    // The first subscription is unaffected (the refusal closed only the second's channel).
    publish(&ps, &topic, "still fine").await;
    first.close().await;
}
