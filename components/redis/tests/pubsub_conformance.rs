//! `pubsub.redis` against the pub/sub conformance suite, on the Redis at 127.0.0.1:6379
//! (skipped when it is unreachable, unless `TANDEM_REQUIRE_SERVICES=1`), plus what only Redis
//! Streams show: Dapr's entry layout, groups created from the start of the stream, a
//! subscriber that dies with messages in hand, trimming, and a connection that goes away.
//!
//! The suite's cases use topics of their own, so they share the server safely. Redelivery
//! settings are short (`processingTimeout` 1 s, `redeliverInterval` 200 ms) so that the
//! `redelivery` case sees its two retries well within its deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_components::Metadata;
use tandem_components::conformance::pubsub::{
    DEADLINE, assert_quiet, collector, handler, publish, publish_req, recv_n, recv_n_within,
    subscribe,
};
use tandem_components::conformance::unique_key;
use tandem_components::pubsub::{Delivery, PubSub};
use tandem_redis::RedisPubSub;
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:6379";

/// Short redelivery timings for tests.
const FAST: [(&str, &str); 2] = [("processingTimeout", "1s"), ("redeliverInterval", "200ms")];

fn metadata(host: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut meta = Metadata::new("redis-pubsub", "conformance").with("redisHost", host);
    for (key, value) in FAST.iter().chain(extra) {
        meta.insert(*key, *value);
    }
    meta
}

async fn pubsub_with(extra: &[(&str, &str)]) -> Option<RedisPubSub> {
    if !services::require("Redis", ADDR) {
        return None;
    }
    Some(
        RedisPubSub::build(&metadata(ADDR, extra))
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

async fn direct() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{ADDR}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

async fn cleanup(topic: &str) {
    let _: () = redis::cmd("DEL")
        .arg(topic)
        .query_async(&mut direct().await)
        .await
        .unwrap();
}

async fn pending_count(topic: &str, group: &str) -> usize {
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(topic)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut direct().await)
        .await
        .unwrap();
    pending.len()
}

fn text(msg: &tandem_components::pubsub::Message) -> String {
    String::from_utf8_lossy(&msg.data).into_owned()
}

/// Entries are written in Dapr's layout (`data`, `metadata` as JSON), and an entry written the
/// way Go daprd writes it (no `contentType`) is delivered with its data and metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daprs_stream_layout() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("redis-layout");
    let mut req = publish_req(&topic, "from tandem");
    req.metadata.insert("traceid".into(), "abc".into());
    ps.publish(req).await.expect("publish");
    let mut conn = direct().await;
    let range: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&topic)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(range.len(), 1);
    let fields = &range[0].1;
    assert_eq!(fields["data"], "from tandem");
    assert_eq!(fields["metadata"], r#"{"traceid":"abc"}"#);

    let _: String = redis::cmd("XADD")
        .arg(&topic)
        .arg("*")
        .arg("data")
        .arg("from daprd")
        .arg("metadata")
        .arg(r#"{"k":"v"}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "layout", 4, h).await;
    // A new group starts at the beginning of the stream (Dapr creates groups from id 0).
    let got = recv_n(&mut rx, 2).await;
    let daprd = got.iter().find(|m| text(m) == "from daprd").unwrap();
    assert_eq!(daprd.metadata["k"], "v");
    assert_eq!(daprd.content_type, None);
    let ours = got.iter().find(|m| text(m) == "from tandem").unwrap();
    assert_eq!(ours.metadata["traceid"], "abc");
    sub.close().await;
    cleanup(&topic).await;
}

/// Closing a subscription with nothing pending removes its consumer from the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_subscriptions_leave_the_group() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("redis-consumers");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "tidy", 4, h).await;
    publish(&ps, &topic, "one").await;
    recv_n(&mut rx, 1).await;
    let mut conn = direct().await;
    let consumers = async |conn: &mut redis::aio::MultiplexedConnection| -> usize {
        let list: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&topic)
            .arg("tidy")
            .query_async(conn)
            .await
            .unwrap();
        list.len()
    };
    assert_eq!(consumers(&mut conn).await, 1);
    sub.close().await;
    assert_eq!(consumers(&mut conn).await, 0);
    cleanup(&topic).await;
}

/// A subscriber that dies with a message in hand (its runtime is torn down mid-handler:
/// nothing of it runs any more) loses the message to another member of the group once
/// `processingTimeout` has passed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_loses_its_message_after_processing_timeout() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("redis-crash");
    let (got_tx, got_rx) = std::sync::mpsc::channel::<Instant>();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let holder_topic = topic.clone();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let kept = rt.block_on(async move {
            let ps = RedisPubSub::build(&metadata(ADDR, &[])).await.unwrap();
            let never = handler(move |_msg| {
                let _ = got_tx.send(Instant::now());
                std::future::pending::<Delivery>()
            });
            let sub = subscribe(&ps, &holder_topic, "crew", 1, never).await;
            let _ = ready_tx.send(());
            tokio::task::spawn_blocking(move || kill_rx.recv())
                .await
                .unwrap()
                .unwrap();
            (ps, sub)
        });
        // The crash: every task of the holder stops where it is; no destructor runs.
        rt.shutdown_background();
        std::mem::forget(kept);
    });
    ready_rx.await.unwrap();
    publish(&ps, &topic, "orphan").await;
    let taken_at = tokio::task::spawn_blocking(move || got_rx.recv_timeout(DEADLINE))
        .await
        .unwrap()
        .expect("the holder got the message");
    kill_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || holder.join())
        .await
        .unwrap()
        .unwrap();

    let (h, mut rx) = collector(Delivery::Ack);
    let rescuer = subscribe(&ps, &topic, "crew", 1, h).await;
    let got = recv_n_within(&mut rx, 1, Duration::from_secs(10)).await;
    let after = taken_at.elapsed();
    assert_eq!(text(&got[0]), "orphan");
    assert!(
        after >= Duration::from_millis(900),
        "taken over only after processingTimeout: {after:?}"
    );
    assert_quiet(&mut rx, "delivered once more, then acknowledged").await;
    rescuer.close().await;
    cleanup(&topic).await;
}

/// A handler slower than `processingTimeout` keeps its message (the claim is renewed while
/// it runs): the other member of the group never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_holder_keeps_its_message() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("redis-slow");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let slow = handler(move |msg| {
        let _ = tx.send(msg);
        async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Delivery::Ack
        }
    });
    let holder = subscribe(&ps, &topic, "crew", 1, slow).await;
    publish(&ps, &topic, "long job").await;
    recv_n(&mut rx, 1).await;
    let (h, mut other) = collector(Delivery::Ack);
    let member = subscribe(&ps, &topic, "crew", 1, h).await;
    holder.close().await;
    assert_quiet(&mut other, "renewed claim, then acknowledged").await;
    assert_eq!(pending_count(&topic, "crew").await, 0, "acknowledged");
    member.close().await;
    cleanup(&topic).await;
}

/// Messages published while the connection is down are delivered once it is back, by the
/// same subscription (its read loop reconnects with backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_survives_a_lost_connection() {
    if !services::require("Redis", ADDR) {
        return;
    }
    let port = quiet_port();
    let target = ADDR.parse().unwrap();
    let proxy = TcpProxy::start(port, target).await.expect("proxy");
    let via_proxy = format!("127.0.0.1:{port}");
    let ps = RedisPubSub::build(&metadata(&via_proxy, &[("dialTimeout", "500ms")]))
        .await
        .expect("build");
    let Some(direct_ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("redis-reconnect");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "survivors", 4, h).await;
    publish(&ps, &topic, "before").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "before");
    // Cut the connection only once "before" is acknowledged (an acknowledgement lost with
    // the connection would rightly bring it back).
    let until = Instant::now() + DEADLINE;
    while pending_count(&topic, "survivors").await > 0 {
        assert!(Instant::now() < until, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.stop();
    publish(&direct_ps, &topic, "while down").await;
    assert!(
        ps.publish(publish_req(&topic, "lost")).await.is_err(),
        "publishing through the broken connection fails"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let proxy = TcpProxy::start(port, target).await.expect("proxy again");
    let got = recv_n_within(&mut rx, 1, DEADLINE).await;
    assert_eq!(text(&got[0]), "while down");
    publish(&ps, &topic, "after").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "after");
    assert_quiet(&mut rx, "each message once").await;
    sub.close().await;
    proxy.stop();
    cleanup(&topic).await;
}

/// A consumer group deleted under a running subscription is created again (from the start
/// of the stream, as Dapr does) and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_is_created_again() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("redis-nogroup");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "phoenix", 4, h).await;
    publish(&ps, &topic, "first").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "first");
    let until = Instant::now() + DEADLINE;
    while pending_count(&topic, "phoenix").await > 0 {
        assert!(Instant::now() < until, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&topic)
        .arg("phoenix")
        .query_async(&mut direct().await)
        .await
        .unwrap();
    publish(&ps, &topic, "second").await;
    let mut got: Vec<String> = recv_n(&mut rx, 2).await.iter().map(text).collect();
    got.sort();
    assert_eq!(
        got,
        ["first", "second"],
        "the new group starts from the beginning"
    );
    sub.close().await;
    cleanup(&topic).await;
}

/// `maxLenApprox` trims the stream on publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_approx_trims() {
    let Some(ps) = pubsub_with(&[("maxLenApprox", "10")]).await else {
        return;
    };
    let topic = unique_key("redis-maxlen");
    for i in 0..500 {
        publish(&ps, &topic, format!("m{i}")).await;
    }
    let len: usize = redis::cmd("XLEN")
        .arg(&topic)
        .query_async(&mut direct().await)
        .await
        .unwrap();
    assert!(len < 500, "trimmed to about 10 (whole nodes): {len}");
    cleanup(&topic).await;
}

/// With redelivery off (`redeliverInterval: 0`), a message answered Retry is not delivered
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_redelivery_when_disabled() {
    let Some(ps) = pubsub_with(&[("redeliverInterval", "0")]).await else {
        return;
    };
    let topic = unique_key("redis-noredeliver");
    let (h, mut rx) = collector(Delivery::Retry);
    let sub = subscribe(&ps, &topic, "once", 1, h).await;
    publish(&ps, &topic, "retry me").await;
    recv_n(&mut rx, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_quiet(&mut rx, "redelivery is off").await;
    sub.close().await;
    cleanup(&topic).await;
}

/// Builds a component for an opt-in backend named by an environment variable (`None`, with a
/// one-line note, when it is unset): TLS and cluster servers are not part of the standard
/// local set-up.
async fn opt_in(
    var: &str,
    settings: impl FnOnce(&str) -> Vec<(String, String)>,
) -> Option<RedisPubSub> {
    let Ok(addr) = std::env::var(var) else {
        eprintln!("skipping: set {var} to run this case");
        return None;
    };
    let mut meta = Metadata::new("redis-pubsub", "conformance");
    for (key, value) in FAST {
        meta.insert(key, value);
    }
    for (key, value) in settings(&addr) {
        meta.insert(key, value);
    }
    Some(RedisPubSub::build(&meta).await.expect("build"))
}

/// The suite over TLS, when `TANDEM_REDIS_TLS` names a TLS-only Redis (`host:port`), with
/// `insecureSkipTLSVerify` (a self-signed test certificate) and `TANDEM_REDIS_TLS_PASSWORD` as
/// `redisPassword` if set.
mod tls {
    use super::*;

    async fn build() -> Option<Arc<dyn PubSub>> {
        let ps = opt_in("TANDEM_REDIS_TLS", |addr| {
            let mut m = vec![
                ("redisHost".to_owned(), addr.to_owned()),
                ("enableTLS".to_owned(), "true".to_owned()),
                ("insecureSkipTLSVerify".to_owned(), "true".to_owned()),
            ];
            if let Ok(pw) = std::env::var("TANDEM_REDIS_TLS_PASSWORD") {
                m.push(("redisPassword".to_owned(), pw));
            }
            m
        })
        .await?;
        Some(Arc::new(ps))
    }

    tandem_components::pubsub_conformance!(build());
}

/// The suite on Redis Cluster, when `TANDEM_REDIS_CLUSTER` lists cluster nodes
/// (`host:port,...`): each topic lives on the node of its slot.
mod cluster {
    use super::*;

    async fn build() -> Option<Arc<dyn PubSub>> {
        let ps = opt_in("TANDEM_REDIS_CLUSTER", |addr| {
            vec![
                ("redisHost".to_owned(), addr.to_owned()),
                ("redisType".to_owned(), "cluster".to_owned()),
            ]
        })
        .await?;
        Some(Arc::new(ps))
    }

    tandem_components::pubsub_conformance!(build());
}
