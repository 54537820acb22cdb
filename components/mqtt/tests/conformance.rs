//! `pubsub.mqtt3` against the pub/sub conformance suite, on the Mosquitto broker at
//! 127.0.0.1:1883 (skipped when it is unreachable, unless `TANDEM_REQUIRE_SERVICES=1`), plus
//! what only MQTT shows: wildcards, shared subscriptions across sidecars, persistent sessions
//! (messages kept for a sidecar that is away, and a message never acknowledged coming back
//! after a restart), retained messages, QoS 0 and 2, a broker that is down at start-up.
//!
//! Every component built here gets a client id of its own: the broker disconnects the older
//! of two connections with one id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_components::conformance::pubsub::{
    DEADLINE, assert_quiet, collector, handler, publish, publish_req, recv_n, subscribe,
    subscribe_req,
};
use tandem_components::conformance::unique_key;
use tandem_components::pubsub::{Delivery, Message, PubSub};
use tandem_components::{Error, Metadata};
use tandem_mqtt::MqttPubSub;
use tandem_testkit::proxy::{TcpProxy, quiet_port};
use tandem_testkit::services;
use tokio::sync::mpsc;

const ADDR: &str = "127.0.0.1:1883";

fn metadata(url: &str, client_id: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut meta = Metadata::new("mqtt", "conformance")
        .with("url", url)
        .with("consumerID", client_id);
    for (key, value) in extra {
        meta.insert(*key, *value);
    }
    meta
}

/// A connected component with the client id `client_id`.
async fn connected(client_id: &str, extra: &[(&str, &str)]) -> Option<MqttPubSub> {
    if !services::require("Mosquitto", ADDR) {
        return None;
    }
    let ps = MqttPubSub::build(&metadata(&format!("tcp://{ADDR}"), client_id, extra))
        .await
        .expect("build");
    // Building connects in the background; the cases expect a connected component.
    let until = Instant::now() + Duration::from_secs(10);
    while ps
        .publish(publish_req("tandem/conformance/warmup", ""))
        .await
        .is_err()
    {
        assert!(Instant::now() < until, "no connection to mosquitto");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(ps)
}

async fn pubsub_with(extra: &[(&str, &str)]) -> Option<MqttPubSub> {
    connected(&unique_key("client"), extra).await
}

async fn build() -> Option<Arc<dyn PubSub>> {
    pubsub_with(&[])
        .await
        .map(|p| Arc::new(p) as Arc<dyn PubSub>)
}

tandem_components::pubsub_conformance!(build());

/// The suite with QoS 2 (exactly once between client and broker).
mod qos2 {
    use super::*;

    async fn build() -> Option<Arc<dyn PubSub>> {
        pubsub_with(&[("qos", "2")])
            .await
            .map(|p| Arc::new(p) as Arc<dyn PubSub>)
    }

    tandem_components::pubsub_conformance!(build());
}

fn text(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.data).into_owned()
}

/// `+` matches one level, `#` the rest; delivered messages carry the concrete topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let base = unique_key("wild");
    let (h, mut plus) = collector(Delivery::Ack);
    let a = subscribe(&ps, &format!("{base}/+/temp"), "plus", 4, h).await;
    let (h, mut hash) = collector(Delivery::Ack);
    let b = subscribe(&ps, &format!("{base}/#"), "hash", 4, h).await;
    for t in ["k1/temp", "k2/hum", "k2/temp", "k1/temp/deep"] {
        publish(&ps, &format!("{base}/{t}"), t).await;
    }
    let got: HashSet<String> = recv_n(&mut plus, 2)
        .await
        .iter()
        .map(|m| m.topic.clone())
        .collect();
    assert_eq!(
        got,
        HashSet::from([format!("{base}/k1/temp"), format!("{base}/k2/temp")])
    );
    assert_quiet(&mut plus, "+ is one level").await;
    let got: HashSet<String> = recv_n(&mut hash, 4).await.iter().map(text).collect();
    assert_eq!(got.len(), 4, "# gets everything below");
    assert_quiet(&mut hash, "each once").await;
    a.close().await;
    b.close().await;
}

/// Two sidecars (two connections) on `$share/<group>/<topic>` share the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_compete_across_sidecars() {
    let (Some(a), Some(b)) = (pubsub_with(&[]).await, pubsub_with(&[]).await) else {
        return;
    };
    let topic = unique_key("shared");
    let filter = format!("$share/workers/{topic}");
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
    let s1 = subscribe(&a, &filter, "workers", 2, member(1)).await;
    let s2 = subscribe(&b, &filter, "workers", 2, member(2)).await;
    for i in 0..40 {
        publish(&a, &topic, format!("s-{i}")).await;
    }
    let mut seen = HashSet::new();
    let mut per = [0usize; 3];
    while seen.len() < 40 {
        let (id, msg) = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("all messages")
            .unwrap();
        assert_eq!(msg.topic, topic, "the topic without the $share prefix");
        per[id] += 1;
        assert!(seen.insert(text(&msg)), "{} twice", text(&msg));
    }
    assert!(per[1] > 0 && per[2] > 0, "both sidecars get some: {per:?}");
    s1.close().await;
    s2.close().await;
}

/// With `cleanSession: false` the broker keeps what is published while the sidecar is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_keeps_messages_while_away() {
    let client = unique_key("away");
    let Some(ps) = connected(&client, &[]).await else {
        return;
    };
    let topic = unique_key("away-topic");
    let (h, _rx) = collector(Delivery::Ack);
    subscribe(&ps, &topic, "g", 1, h).await.close().await;
    drop(ps);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Some(other) = pubsub_with(&[]).await else {
        return;
    };
    for i in 0..3 {
        publish(&other, &topic, format!("while-away-{i}")).await;
    }
    let Some(ps) = connected(&client, &[]).await else {
        return;
    };
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "g", 4, h).await;
    let got: HashSet<String> = recv_n(&mut rx, 3).await.iter().map(text).collect();
    assert_eq!(got.len(), 3);
    assert_quiet(&mut rx, "each once").await;
    sub.close().await;
    // Leave no session behind.
    drop(ps);
    let _ = connected(&client, &[("cleanSession", "true")]).await;
}

/// A message the app never took is not acknowledged: after a restart of the sidecar (same
/// client id, kept session) the broker delivers it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_come_back_after_a_restart() {
    let client = unique_key("restart");
    let Some(ps) = connected(&client, &[]).await else {
        return;
    };
    let topic = unique_key("restart-topic");
    let (h, mut rx) = collector(Delivery::Retry);
    let sub = subscribe(&ps, &topic, "g", 1, h).await;
    publish(&ps, &topic, "not yet").await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "not yet");
    sub.close().await;
    drop(ps);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let Some(ps) = connected(&client, &[]).await else {
        return;
    };
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "g", 1, h).await;
    assert_eq!(text(&recv_n(&mut rx, 1).await[0]), "not yet");
    sub.close().await;
    drop(ps);
    let _ = connected(&client, &[("cleanSession", "true")]).await;
}

/// `retain` (component or publish metadata): a later subscription gets the last retained
/// message, with `retained: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages() {
    let Some(ps) = pubsub_with(&[]).await else {
        return;
    };
    let topic = unique_key("retained");
    let mut req = publish_req(&topic, "last known");
    req.metadata.insert("retain".into(), "true".into());
    ps.publish(req).await.unwrap();
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "late", 1, h).await;
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(text(&got[0]), "last known");
    assert_eq!(
        got[0].metadata.get("retained").map(String::as_str),
        Some("true")
    );
    publish(&ps, &topic, "live").await;
    let got = recv_n(&mut rx, 1).await;
    assert_eq!(
        got[0].metadata.get("retained").map(String::as_str),
        Some("false")
    );
    sub.close().await;
    // An empty retained message clears it.
    let mut clear = publish_req(&topic, "");
    clear.metadata.insert("retain".into(), "true".into());
    ps.publish(clear).await.unwrap();
    let mut bad = publish_req(&topic, "x");
    bad.metadata.insert("retain".into(), "sometimes".into());
    assert!(matches!(
        ps.publish(bad).await,
        Err(Error::InvalidRequest(_))
    ));
}

/// QoS 0 works end to end (at most once: nothing to acknowledge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_zero_round_trip() {
    let Some(ps) = pubsub_with(&[("qos", "0")]).await else {
        return;
    };
    let topic = unique_key("qos0");
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "g", 4, h).await;
    for i in 0..10 {
        publish(&ps, &topic, format!("{i}")).await;
    }
    assert_eq!(recv_n(&mut rx, 10).await.len(), 10);
    sub.close().await;
}

/// Built while the broker is unreachable: building succeeds, publishing fails at once, a
/// subscription made meanwhile starts once the broker answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_up() {
    if !services::require("Mosquitto", ADDR) {
        return;
    }
    let port = quiet_port();
    let ps = MqttPubSub::build(&metadata(
        &format!("tcp://127.0.0.1:{port}"),
        &unique_key("late"),
        &[("cleanSession", "true")],
    ))
    .await
    .expect("building does not need the broker");
    let topic = unique_key("late-topic");
    let started = Instant::now();
    assert!(ps.publish(publish_req(&topic, "nobody")).await.is_err());
    let (h, mut rx) = collector(Delivery::Ack);
    let sub = subscribe(&ps, &topic, "late", 4, h).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "neither publish nor subscribe waits for a broker that is down"
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

/// Bad metadata fails the build and names the field; bad topics are refused.
#[tokio::test]
async fn configuration_errors_surface() {
    let err = MqttPubSub::build(&metadata("tcp://127.0.0.1:1", "c", &[("qos", "5")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("qos"), "{err}");
    let err = MqttPubSub::build(&metadata("http://h", "c", &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("url"), "{err}");
    let ps = MqttPubSub::build(&metadata("tcp://127.0.0.1:1", "c", &[]))
        .await
        .unwrap();
    let (h, _rx) = collector(Delivery::Ack);
    assert!(matches!(
        ps.subscribe(subscribe_req("a/#/b", "g", 1), h).await,
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        ps.publish(publish_req("a/+", "x")).await,
        Err(Error::InvalidRequest(_))
    ));
}
