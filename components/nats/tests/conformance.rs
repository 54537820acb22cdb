//! `pubsub.jetstream` against the pub/sub conformance suite, on the NATS server at
//! 127.0.0.1:4222 (JetStream enabled; skipped when it is unreachable, unless
//! `TANDEM_REQUIRE_SERVICES=1`), plus what only JetStream shows: consumers named per group,
//! several sidecars of one group, redelivery after `ackWait` when a member dies, in-progress
//! acknowledgements for slow handlers, `Nats-Msg-Id` deduplication, single-message mode, a
//! server that is down at start-up, token authentication on a server of the test's own.
//!
//! The component never creates streams (as in Dapr), so the tests keep one stream,
//! `TANDEM_CONFORMANCE`, capturing `tandemconf.>`, and the suite runs through [`Prefixed`],
//! which maps each topic `T` of a case to the subject `tandemconf.T` and back.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use tandem_components::conformance::pubsub::{
    DEADLINE, assert_quiet, collector, handler, publish, publish_req, recv_n, recv_n_within,
    subscribe, subscribe_req,
};
use tandem_components::conformance::unique_key;
use tandem_components::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest,
    Subscription,
};
use tandem_components::{Metadata, Result};
use tandem_nats::JetStreamPubSub;
use tandem_nats::pubsub::consumer_name;
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_testkit::services;
use tokio::sync::{OnceCell, mpsc};

const ADDR: &str = "127.0.0.1:4222";
const STREAM: &str = "TANDEM_CONFORMANCE";
const PREFIX: &str = "tandemconf.";

/// A plain JetStream context for setting up and looking at the server.
async fn raw() -> jetstream::Context {
    let client = async_nats::connect(ADDR).await.expect("connect to nats");
    jetstream::new(client)
}

/// Creates the test stream once per test binary, and deletes consumers that earlier runs left
/// behind (older than ten minutes).
async fn stream_ready() {
    static READY: OnceCell<()> = OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let js = raw().await;
            let stream = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: STREAM.into(),
                    subjects: vec![format!("{PREFIX}>")],
                    max_age: Duration::from_secs(600),
                    ..Default::default()
                })
                .await
                .expect("create the test stream");
            use futures_core::Stream as _;
            let mut consumers = stream.consumers();
            let cutoff = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
            let mut stale = Vec::new();
            while let Some(Ok(c)) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut consumers).poll_next(cx)).await
            {
                if c.created < cutoff {
                    stale.push(c.name);
                }
            }
            for name in stale {
                let _ = stream.delete_consumer(&name).await;
            }
        })
        .await;
}

fn metadata(url: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut meta = Metadata::new("jetstream", "conformance").with("natsURL", url);
    for (key, value) in extra {
        meta.insert(*key, *value);
    }
    meta
}

async fn pubsub_with(extra: &[(&str, &str)]) -> Option<JetStreamPubSub> {
    if !services::require("NATS", ADDR) {
        return None;
    }
    stream_ready().await;
    let ps = JetStreamPubSub::build(&metadata(&format!("nats://{ADDR}"), extra))
        .await
        .expect("build");
    // Building connects in the background; the cases expect a connected component.
    let until = Instant::now() + Duration::from_secs(10);
    while ps
        .publish(publish_req("tandemconf.warmup", ""))
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "no connection to nats");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(ps)
}

/// Maps the suite's topics into the test stream's subjects and back.
struct Prefixed(Arc<dyn PubSub>);

struct StripPrefix(Arc<dyn MessageHandler>);

#[async_trait]
impl MessageHandler for StripPrefix {
    async fn handle(&self, mut msg: Message) -> Delivery {
        if let Some(topic) = msg.topic.strip_prefix(PREFIX) {
            msg.topic = topic.to_owned();
        }
        self.0.handle(msg).await
    }
}

#[async_trait]
impl PubSub for Prefixed {
    fn features(&self) -> &'static [PubSubFeature] {
        self.0.features()
    }
    async fn publish(&self, mut req: PublishRequest) -> Result<()> {
        req.topic = format!("{PREFIX}{}", req.topic);
        self.0.publish(req).await
    }
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        let reqs = reqs
            .into_iter()
            .map(|mut r| {
                r.topic = format!("{PREFIX}{}", r.topic);
                r
            })
            .collect();
        self.0.bulk_publish(reqs).await
    }
    async fn subscribe(
        &self,
        mut req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        req.topic = format!("{PREFIX}{}", req.topic);
        self.0.subscribe(req, Arc::new(StripPrefix(handler))).await
    }
}

/// The suite in `parallel` mode (the suite's concurrency case needs more than one message
/// in flight; Dapr's default for JetStream is `single`, tested below).
async fn build() -> Option<Arc<dyn PubSub>> {
    pubsub_with(&[("concurrencyMode", "parallel")])
        .await
        .map(|p| Arc::new(Prefixed(Arc::new(p))) as Arc<dyn PubSub>)
}

tandem_components::pubsub_conformance!(build());

fn text(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.data).into_owned()
}

fn subject(what: &str) -> String {
    format!("{PREFIX}{}", unique_key(what))
}

/// The group's durable consumer exists under `<group>-<topic>`, and `durableName` replaces
/// the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_named_per_group_and_topic() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = subject("ps-naming");
    let (h, _rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "billing", 1, h).await;
    let stream = raw().await.get_stream(STREAM).await.unwrap();
    let name = consumer_name("billing", &topic);
    let info = stream
        .consumer_info(&name)
        .await
        .expect("the group's consumer");
    assert_eq!(info.config.durable_name.as_deref(), Some(name.as_str()));
    assert_eq!(info.config.filter_subject, topic);
    sub.close().await;

    let Some(ps) = pubsub_with(&[("durableName", "fixed")]).await else {
        return;
    };
    let (h, _rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "ignored", 1, h).await;
    stream
        .consumer_info(consumer_name("fixed", &topic))
        .await
        .expect("durableName names the consumer");
    sub.close().await;
}

/// Two components (two sidecars) in one group share the messages; another group gets all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_of_one_group_compete() {
    let (Some(a), Some(b), Some(c)) = (
        pubsub_with(&[("concurrencyMode", "parallel")]).await,
        pubsub_with(&[("concurrencyMode", "parallel")]).await,
        pubsub_with(&[]).await,
    ) else {
        return;
    };
    let topic = subject("ps-sidecars");
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Message)>();
    let member = |id: usize| {
        let tx = tx.clone();
        handler(move |msg| {
            let _ = tx.send((id, msg));
            async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Delivery::Ack
            }
        })
    };
    let s1 = subscribe(&a, &topic, "workers", 2, member(1)).await;
    let s2 = subscribe(&b, &topic, "workers", 2, member(2)).await;
    let (h, mut audit) = collector(Delivery::Ack);
    let s3 = subscribe(&c, &topic, "audit", 1, h).await;
    for i in 0..60 {
        publish(&c, &topic, format!("w-{i}")).await;
    }
    let mut seen = HashSet::new();
    let mut per = [0usize; 3];
    while seen.len() < 60 {
        let (id, msg) = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("all messages")
            .unwrap();
        per[id] += 1;
        assert!(seen.insert(text(&msg)), "{} twice", text(&msg));
    }
    assert!(per[1] > 0 && per[2] > 0, "both sidecars get some: {per:?}");
    assert_eq!(recv_n(&mut audit, 60).await.len(), 60);
    assert_quiet(&mut audit, "each once").await;
    s1.close().await;
    s2.close().await;
    s3.close().await;
}

/// `single` (Dapr's default): one message at a time, in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_mode_is_one_at_a_time_in_order() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = subject("ps-single");
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = {
        let busy = busy.clone();
        handler(move |msg| {
            let now = busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send((now, msg));
            let busy = busy.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Delivery::Ack
            }
        })
    };
    // The runtime's bound is ignored in single mode.
    let sub = subscribe(&ps, &topic, "single", 16, h).await;
    for i in 0..20 {
        publish(&ps, &topic, format!("{i}")).await;
    }
    for i in 0..20 {
        let (others, msg) = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(others, 0, "nothing else in flight");
        assert_eq!(text(&msg), i.to_string(), "in order");
    }
    sub.close().await;
}

/// A backlog waiting for a group drains at full speed in `single` mode: one pull request per
/// message, each answered at once, and the next sent as soon as the handler is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_mode_drains_a_backlog() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = subject("ps-backlog");
    // The group's consumer exists, then the messages wait for it.
    let (h, _) = collector(Delivery::Ack);
    subscribe(&ps, &topic, "backlog", 1, h).await.close().await;
    let total = 300;
    for i in 0..total {
        publish(&ps, &topic, format!("{i}")).await;
    }
    let (h, mut rx) = collector(Delivery::Ack);
    let started = Instant::now();
    let sub = subscribe(&ps, &topic, "backlog", 1, h).await;
    let got = recv_n_within(&mut rx, total, Duration::from_secs(10)).await;
    let texts: Vec<String> = got.iter().map(text).collect();
    let want: Vec<String> = (0..total).map(|i| i.to_string()).collect();
    assert_eq!(texts, want, "all of the backlog, in order");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the backlog took {:?}",
        started.elapsed()
    );
    sub.close().await;
}

/// Retry with `ackWait` set: the negative acknowledgement is delayed by `ackWait` (Dapr's
/// NakWithDelay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_waits_ack_wait_when_set() {
    let Some(ps) = pubsub_with(&[("ackWait", "1s")]).await else {
        return;
    };
    let topic = subject("ps-nakdelay");
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = {
        let calls = calls.clone();
        handler(move |msg| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send((Instant::now(), msg));
            async move {
                if n == 0 {
                    Delivery::Retry
                } else {
                    Delivery::Ack
                }
            }
        })
    };
    let sub = subscribe(&ps, &topic, "nak", 1, h).await;
    publish(&ps, &topic, "later").await;
    let (first, _) = rx.recv().await.unwrap();
    let (second, msg) = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&msg), "later");
    assert!(
        second - first >= Duration::from_millis(900),
        "redelivered after ackWait: {:?}",
        second - first
    );
    sub.close().await;
}

/// A member that took a message and died (it never answers) loses it to the rest of the
/// group once `ackWait` runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_members_message_comes_back_after_ack_wait() {
    let Some(ps) = pubsub_with(&[("ackWait", "1s")]).await else {
        return;
    };
    let topic = subject("ps-dead");
    // Create the group's consumer, then stop the subscription: nothing pulls.
    let (h, _rx) = collector(Delivery::Ack);
    subscribe(&ps, &topic, "team", 1, h).await.close().await;
    publish(&ps, &topic, "orphan").await;

    // The "dead member": pulls the message through the group's consumer, never answers.
    let js = raw().await;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(consumer_name("team", &topic), STREAM)
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let taken = std::future::poll_fn(|cx| {
        use futures_core::Stream as _;
        std::pin::Pin::new(&mut batch).poll_next(cx)
    })
    .await
    .expect("the dead member got it")
    .unwrap();
    assert_eq!(&taken.payload[..], b"orphan");
    let taken_at = Instant::now();

    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "team", 1, h).await;
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(text(&got[0]), "orphan");
    assert!(taken_at.elapsed() >= Duration::from_millis(900));
    sub.close().await;
}

/// A handler slower than `ackWait` is not given a duplicate: the component reports progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handlers_keep_their_message() {
    let Some(ps) = pubsub_with(&[("ackWait", "1s"), ("concurrencyMode", "parallel")]).await else {
        return;
    };
    let topic = subject("ps-slow");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = handler(move |msg| {
        let _ = tx.send(msg);
        async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Delivery::Ack
        }
    });
    let sub = subscribe(&ps, &topic, "slow", 4, h).await;
    publish(&ps, &topic, "slow").await;
    recv_n(&mut rx, 1).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_quiet(&mut rx, "no redelivery while the handler works").await;
    sub.close().await;
}

/// A CloudEvent's `id` becomes `Nats-Msg-Id`: a second publish of the same event within the
/// stream's duplicate window is dropped, as with Dapr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_event_ids_deduplicate() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = subject("ps-dedup");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "dedup", 1, h).await;
    let id = unique_key("event");
    let event = format!(r#"{{"specversion":"1.0","id":"{id}","type":"t","source":"s"}}"#);
    publish(&ps, &topic, event.clone()).await;
    publish(&ps, &topic, event.clone()).await;
    publish(&ps, &topic, "not an event").await;
    publish(&ps, &topic, "not an event").await;
    let got: Vec<String> = recv_n(&mut rx, 3).await.iter().map(text).collect();
    assert_eq!(got.iter().filter(|t| **t == event).count(), 1);
    assert_eq!(got.iter().filter(|t| *t == "not an event").count(), 2);
    assert_quiet(&mut rx, "the duplicate event").await;
    sub.close().await;
}

/// Delivered messages carry Dapr's `Topic` metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_metadata() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = subject("ps-meta");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "meta", 1, h).await;
    publish(&ps, &topic, "x").await;
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(got[0].metadata.get("Topic"), Some(&topic));
    assert_eq!(got[0].topic, topic);
    sub.close().await;
}

/// No stream captures the topic: subscribing fails and says why; publishing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_without_a_stream_are_refused() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("nostream").replace('-', "_");
    let (h, _rx) = collector(Delivery::Ack);
    let err = ps
        .subscribe(subscribe_req(&topic, "g", 1), h)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no jetstream stream"), "{err}");
    assert!(ps.publish(publish_req(&topic, "x")).await.is_err());
    let err = ps
        .publish(publish_req("bad subject", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, tandem_components::Error::InvalidRequest(_)));
}

/// Built while the server is unreachable: building succeeds, publishing fails at once, a
/// subscription made meanwhile attaches once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_at_start_up() {
    if !services::require("NATS", ADDR) {
        return;
    }
    stream_ready().await;
    let port = quiet_port();
    let ps = JetStreamPubSub::build(&metadata(
        &format!("nats://127.0.0.1:{port}"),
        &[("concurrencyMode", "parallel")],
    ))
    .await
    .expect("building does not need the server");
    let topic = subject("ps-late");
    let started = Instant::now();
    assert!(ps.publish(publish_req(&topic, "nobody")).await.is_err());
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "late", 4, h).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "neither publish nor subscribe waits for a server that is down"
    );
    let _proxy = TcpProxy::start(port, ADDR.parse().unwrap()).await.unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        if ps.publish(publish_req(&topic, "hello")).await.is_ok() {
            break;
        }
        assert!(Instant::now() < until, "publishing never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "hello");
    sub.close().await;
}

/// A NATS server of the test's own, with token authentication and JetStream in a temporary
/// directory; killed on drop.
struct OwnServer {
    child: Child,
    port: u16,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub(super) struct Dir(pub(super) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl OwnServer {
    fn start(token: &str) -> Option<Self> {
        let port = quiet_port();
        let dir = std::env::temp_dir().join(unique_key("nats-own"));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .args(["--auth", token])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipping: cannot start nats-server: {e}");
                return None;
            }
        };
        let until = Instant::now() + Duration::from_secs(10);
        while !services::reachable(&format!("127.0.0.1:{port}")) {
            assert!(Instant::now() < until, "own nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            child,
            port,
            _dir: tempdir::Dir(dir),
        })
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `token` authenticates; a wrong token gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authentication() {
    if !services::require("NATS", ADDR) {
        return;
    }
    let Some(server) = OwnServer::start("s3cret") else {
        return;
    };
    let url = format!("nats://127.0.0.1:{}", server.port);
    let admin = async_nats::ConnectOptions::with_token("s3cret".into())
        .connect(url.as_str())
        .await
        .expect("admin connection");
    jetstream::new(admin)
        .create_stream(jetstream::stream::Config {
            name: "AUTH".into(),
            subjects: vec!["auth.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let ps = JetStreamPubSub::build(&metadata(&url, &[("token", "s3cret")]))
        .await
        .unwrap();
    let until = Instant::now() + DEADLINE;
    while ps.publish(publish_req("auth.warmup", "")).await.is_err() {
        assert!(Instant::now() < until, "never connected with the token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, "auth.orders", "g", 1, h).await;
    publish(&ps, "auth.orders", "authorised").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "authorised");
    sub.close().await;

    let wrong = JetStreamPubSub::build(&metadata(&url, &[("token", "guess")]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wrong
            .publish(publish_req("auth.orders", "x"))
            .await
            .is_err()
    );
}

/// Bad metadata fails the build and names the field.
#[tokio::test]
async fn configuration_errors_surface() {
    let err = JetStreamPubSub::build(&metadata("nats://127.0.0.1:1", &[("deliverPolicy", "odd")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("deliverPolicy"), "{err}");
    let err = JetStreamPubSub::build(&Metadata::new("js", "app"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("natsURL"), "{err}");
}
