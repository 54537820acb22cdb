//! The pub/sub conformance suite.
//!
//! Use [`crate::pubsub_conformance!`] in a component crate's tests. Every case works on topics
//! and consumer groups of its own ([`super::unique_key`]), so the cases can run in parallel
//! against one shared broker. Cases wait for conditions with a deadline instead of sleeping;
//! the only fixed waits are the short "nothing more arrives" windows ([`QUIET`]) that check
//! for duplicates and stray deliveries.
//!
//! The helpers ([`handler`], [`collector`], [`recv_n`], …) are public so component crates can
//! write their own extra cases in the same style.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};

use super::unique_key;
use crate::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest,
    Subscription,
};

/// How long a case waits for an expected delivery before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How long a case watches for deliveries that must not happen (duplicates, stray messages).
pub const QUIET: Duration = Duration::from_millis(300);

/// Expands to one test per conformance case. `$build` is an async expression yielding
/// `Option<Arc<dyn PubSub>>`; `None` skips the case (backend unreachable).
#[macro_export]
macro_rules! pubsub_conformance {
    ($build:expr) => {
        $crate::pubsub_conformance!(@cases $build;
            round_trip, fan_out, competing_consumers, redelivery, concurrency, large_message,
            bulk_publish, close_stops_delivery, ttl, volume);
    };
    (@cases $build:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(pubsub) = $build.await {
                    $crate::conformance::pubsub::$case(pubsub).await;
                }
            }
        )*
    };
}

/// A [`MessageHandler`] made of an async closure.
struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> MessageHandler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Delivery> + Send + 'static,
{
    async fn handle(&self, msg: Message) -> Delivery {
        (self.0)(msg).await
    }
}

/// Wraps an async closure as a handler.
pub fn handler<F, Fut>(f: F) -> Arc<dyn MessageHandler>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Delivery> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// A handler that forwards every message to the returned channel and answers `verdict`.
pub fn collector(verdict: Delivery) -> (Arc<dyn MessageHandler>, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = handler(move |msg| {
        let _ = tx.send(msg);
        async move { verdict }
    });
    (h, rx)
}

/// A subscription request.
pub fn subscribe_req(topic: &str, group: &str, max_in_flight: usize) -> SubscribeRequest {
    SubscribeRequest {
        topic: topic.to_owned(),
        metadata: Default::default(),
        consumer_group: group.to_owned(),
        max_in_flight,
    }
}

/// A publish request with `data` and nothing else.
pub fn publish_req(topic: &str, data: impl Into<Bytes>) -> PublishRequest {
    PublishRequest {
        topic: topic.to_owned(),
        data: data.into(),
        ..Default::default()
    }
}

/// Subscribes or panics.
pub async fn subscribe(
    pubsub: &dyn PubSub,
    topic: &str,
    group: &str,
    max_in_flight: usize,
    handler: Arc<dyn MessageHandler>,
) -> Subscription {
    pubsub
        .subscribe(subscribe_req(topic, group, max_in_flight), handler)
        .await
        .expect("subscribe")
}

/// Publishes `data` or panics.
pub async fn publish(pubsub: &dyn PubSub, topic: &str, data: impl Into<Bytes>) {
    pubsub
        .publish(publish_req(topic, data))
        .await
        .expect("publish");
}

/// Receives `n` messages within [`DEADLINE`], or panics saying how many arrived.
pub async fn recv_n(rx: &mut mpsc::UnboundedReceiver<Message>, n: usize) -> Vec<Message> {
    recv_n_within(rx, n, DEADLINE).await
}

/// Receives `n` messages within `deadline`, or panics saying how many arrived.
pub async fn recv_n_within(
    rx: &mut mpsc::UnboundedReceiver<Message>,
    n: usize,
    deadline: Duration,
) -> Vec<Message> {
    let until = tokio::time::Instant::now() + deadline;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(msg)) => out.push(msg),
            Ok(None) => panic!("handler dropped after {} of {n} messages", out.len()),
            Err(_) => panic!(
                "only {} of {n} messages arrived within {deadline:?}",
                out.len()
            ),
        }
    }
    out
}

/// Panics if a message arrives within [`QUIET`].
pub async fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<Message>, what: &str) {
    if let Ok(Some(msg)) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!(
            "{what}: unexpected delivery of {:?}",
            String::from_utf8_lossy(&msg.data)
        );
    }
}

fn text(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.data).into_owned()
}

fn texts(msgs: &[Message]) -> HashSet<String> {
    msgs.iter().map(text).collect()
}

/// Data, content type and metadata survive the trip (where the broker carries the latter two),
/// binary bytes included, and each message arrives once.
pub async fn round_trip(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-roundtrip");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&*pubsub, &topic, "roundtrip", 4, h).await;

    let binary: &[u8] = &[0, 1, 2, 0x9f, 0xff, 0xfe, b'\n', b'{'];
    let mut bin_req = publish_req(&topic, Bytes::copy_from_slice(binary));
    bin_req.content_type = Some("application/octet-stream".into());
    bin_req
        .metadata
        .insert("conformance-key".into(), "some value".into());
    pubsub.publish(bin_req).await.expect("publish binary");
    let json = br#"{"specversion":"1.0","data":{"n":1,"s":"\u00fcnic\u00f8de"}}"#;
    let mut json_req = publish_req(&topic, Bytes::from_static(json));
    json_req.content_type = Some("application/cloudevents+json".into());
    pubsub.publish(json_req).await.expect("publish json");

    let got = recv_n(&mut rx, 2).await;
    let bin = got
        .iter()
        .find(|m| m.data.as_ref() == binary)
        .expect("the binary message arrives byte for byte");
    let js = got
        .iter()
        .find(|m| m.data.as_ref() == json)
        .expect("the JSON message arrives byte for byte");
    for (msg, ct) in [
        (bin, "application/octet-stream"),
        (js, "application/cloudevents+json"),
    ] {
        assert_eq!(msg.topic, topic, "delivered with its topic");
        if let Some(got) = &msg.content_type {
            assert_eq!(got, ct, "content type round trip");
        }
    }
    if let Some(value) = bin.metadata.get("conformance-key") {
        assert_eq!(value, "some value", "metadata round trip");
    }
    assert_quiet(&mut rx, "each message once").await;
    sub.close().await;
}

/// Every consumer group receives every message.
pub async fn fan_out(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-fanout");
    let (ha, mut rxa) = collector(Delivery::Ack);
    let (hb, mut rxb) = collector(Delivery::Ack);
    let a = subscribe(&*pubsub, &topic, "group-a", 4, ha).await;
    let b = subscribe(&*pubsub, &topic, "group-b", 4, hb).await;
    let sent: HashSet<String> = (0..20).map(|i| format!("fan-{i}")).collect();
    for data in &sent {
        publish(&*pubsub, &topic, data.clone()).await;
    }
    assert_eq!(texts(&recv_n(&mut rxa, 20).await), sent, "group a gets all");
    assert_eq!(texts(&recv_n(&mut rxb, 20).await), sent, "group b gets all");
    assert_quiet(&mut rxa, "group a: each message once").await;
    assert_quiet(&mut rxb, "group b: each message once").await;
    a.close().await;
    b.close().await;
}

/// Two subscriptions in one group share the messages: each is handled exactly once in total,
/// and both get some.
pub async fn competing_consumers(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-compete");
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Message)>();
    let member = |id: usize| {
        let tx = tx.clone();
        handler(move |msg| {
            let _ = tx.send((id, msg));
            // A little work, so that one member cannot take everything.
            async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Delivery::Ack
            }
        })
    };
    let s1 = subscribe(&*pubsub, &topic, "shared", 1, member(1)).await;
    let s2 = subscribe(&*pubsub, &topic, "shared", 1, member(2)).await;
    const N: usize = 100;
    for i in 0..N {
        publish(&*pubsub, &topic, format!("c-{i}")).await;
    }
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut per_member = [0usize; 3];
    let mut seen = HashSet::new();
    while seen.len() < N {
        let (id, msg) = tokio::time::timeout_at(until, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} messages arrived", seen.len()))
            .expect("handlers alive");
        per_member[id] += 1;
        assert!(seen.insert(text(&msg)), "{} handled twice", text(&msg));
    }
    if let Ok(Some((id, msg))) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("member {id} handled {} again", text(&msg));
    }
    assert!(
        per_member[1] > 0 && per_member[2] > 0,
        "both members get a share: {per_member:?}"
    );
    s1.close().await;
    s2.close().await;
}

/// Retry, Retry, Ack: the message is handled exactly three times.
pub async fn redelivery(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-retry");
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = {
        let calls = Arc::clone(&calls);
        handler(move |msg| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = tx.send(msg);
            async move {
                if n < 3 {
                    Delivery::Retry
                } else {
                    Delivery::Ack
                }
            }
        })
    };
    let sub = subscribe(&*pubsub, &topic, "retry", 1, h).await;
    publish(&*pubsub, &topic, "again").await;
    let got = recv_n(&mut rx, 3).await;
    assert!(got.iter().all(|m| m.data.as_ref() == b"again"));
    assert_quiet(&mut rx, "acknowledged after the third attempt").await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    sub.close().await;
}

/// A handler stuck on one message does not hold back the next one (max_in_flight ≥ 2).
pub async fn concurrency(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-concurrency");
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = {
        let gate = Arc::clone(&gate);
        handler(move |msg| {
            let gate = Arc::clone(&gate);
            let stuck = msg.data.as_ref() == b"stuck";
            if stuck {
                let _ = started_tx.send(msg);
            } else {
                let _ = tx.send(msg);
            }
            async move {
                if stuck {
                    let _ = gate.acquire().await;
                }
                Delivery::Ack
            }
        })
    };
    let sub = subscribe(&*pubsub, &topic, "concurrency", 4, h).await;
    publish(&*pubsub, &topic, "stuck").await;
    recv_n(&mut started, 1).await;
    publish(&*pubsub, &topic, "free").await;
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(text(&got[0]), "free", "delivered while the first is stuck");
    gate.add_permits(1);
    sub.close().await;
    assert_quiet(&mut started, "the stuck message was acknowledged").await;
}

/// A 1 MiB message arrives intact.
pub async fn large_message(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-large");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&*pubsub, &topic, "large", 1, h).await;
    let data: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    publish(&*pubsub, &topic, data.clone()).await;
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(got[0].data.len(), data.len());
    assert!(got[0].data.as_ref() == data.as_slice(), "payload intact");
    sub.close().await;
}

/// `bulk_publish` answers one Ok per message and every message arrives.
pub async fn bulk_publish(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-bulk");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&*pubsub, &topic, "bulk", 8, h).await;
    let sent: Vec<String> = (0..25).map(|i| format!("bulk-{i}")).collect();
    let reqs = sent
        .iter()
        .map(|d| publish_req(&topic, d.clone()))
        .collect();
    let results = pubsub.bulk_publish(reqs).await;
    assert_eq!(results.len(), sent.len(), "one result per message");
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "message {i}: {r:?}");
    }
    let got = recv_n(&mut rx, sent.len()).await;
    assert_eq!(texts(&got), sent.into_iter().collect::<HashSet<_>>());
    assert_quiet(&mut rx, "each message once").await;
    sub.close().await;
}

/// After `close()` (which waits for the message being handled) or a drop, a subscription
/// receives nothing more, while another group still does.
pub async fn close_stops_delivery(pubsub: Arc<dyn PubSub>) {
    let topic = unique_key("ps-close");
    let (ho, mut observer) = collector(Delivery::Ack);
    let obs = subscribe(&*pubsub, &topic, "observer", 4, ho).await;

    // close(): waits for the in-flight handler.
    let finished = Arc::new(AtomicUsize::new(0));
    let (tx, mut closing) = mpsc::unbounded_channel();
    let h = {
        let finished = Arc::clone(&finished);
        handler(move |msg| {
            let _ = tx.send(msg);
            let finished = Arc::clone(&finished);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Delivery::Ack
            }
        })
    };
    let closed = subscribe(&*pubsub, &topic, "closing", 4, h).await;
    let (hd, mut dropping) = collector(Delivery::Ack);
    let dropped = subscribe(&*pubsub, &topic, "dropping", 4, hd).await;

    publish(&*pubsub, &topic, "before").await;
    recv_n(&mut closing, 1).await;
    recv_n(&mut dropping, 1).await;
    recv_n(&mut observer, 1).await;
    closed.close().await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "close() waits for the message being handled"
    );
    drop(dropped);

    publish(&*pubsub, &topic, "after").await;
    let got = recv_n(&mut observer, 1).await;
    assert_eq!(text(&got[0]), "after");
    assert_quiet(&mut closing, "closed subscription").await;
    assert_quiet(&mut dropping, "dropped subscription").await;
    obs.close().await;
}

/// With `MESSAGE_TTL`: a message whose `ttlInSeconds` runs out before it can be delivered is
/// never delivered; one with time left is.
pub async fn ttl(pubsub: Arc<dyn PubSub>) {
    if !pubsub.features().contains(&PubSubFeature::MessageTtl) {
        return;
    }
    let topic = unique_key("ps-ttl");
    // One slot, taken by a message the handler holds until the short TTL has run out.
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = {
        let gate = Arc::clone(&gate);
        handler(move |msg| {
            let gate = Arc::clone(&gate);
            let hold = msg.data.as_ref() == b"hold";
            let _ = tx.send(msg);
            async move {
                if hold {
                    let _ = gate.acquire().await;
                }
                Delivery::Ack
            }
        })
    };
    let sub = subscribe(&*pubsub, &topic, "ttl", 1, h).await;
    publish(&*pubsub, &topic, "hold").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "hold");
    let with_ttl = |data: &'static str, secs: &str| {
        let mut req = publish_req(&topic, data);
        req.metadata.insert("ttlInSeconds".into(), secs.into());
        req
    };
    pubsub
        .publish(with_ttl("expires", "1"))
        .await
        .expect("publish with ttl");
    pubsub
        .publish(with_ttl("lives", "600"))
        .await
        .expect("publish with ttl");
    // The one unavoidable wait: past the TTL of "expires".
    tokio::time::sleep(Duration::from_millis(1300)).await;
    gate.add_permits(1);
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(text(&got[0]), "lives", "the expired message is skipped");
    assert_quiet(&mut rx, "expired message").await;
    sub.close().await;
}

/// 10 000 messages published concurrently all arrive, none twice.
pub async fn volume(pubsub: Arc<dyn PubSub>) {
    const N: usize = 10_000;
    const PUBLISHERS: usize = 50;
    let topic = unique_key("ps-volume");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&*pubsub, &topic, "volume", 32, h).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let pubsub = Arc::clone(&pubsub);
            let topic = topic.clone();
            tokio::spawn(async move {
                for i in (p..N).step_by(PUBLISHERS) {
                    pubsub
                        .publish(publish_req(&topic, i.to_string()))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen = vec![0u32; N];
    let mut unique = 0;
    while unique < N {
        let msg = tokio::time::timeout_at(until, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {unique} of {N} messages arrived"))
            .expect("handler alive");
        let i: usize = text(&msg).parse().expect("a number");
        seen[i] += 1;
        if seen[i] == 1 {
            unique += 1;
        }
    }
    for p in publishers {
        p.await.expect("publisher task");
    }
    assert_quiet(&mut rx, "no extra deliveries").await;
    let dups: HashMap<usize, u32> = seen
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 1)
        .map(|(i, n)| (i, *n))
        .collect();
    assert!(
        dups.is_empty(),
        "duplicates with every message acked: {dups:?}"
    );
    sub.close().await;
}
