//! `bindings.rabbitmq` against the RabbitMQ at 127.0.0.1:5672 (guest/guest; skipped when it is
//! unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `create` and reading back, the message's
//! AMQP properties, refused events returned to the queue and delivered again, queue TTL and
//! priorities, a queue declared with other flags, and a broker that is not there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use tandem_components::bindings::{
    BindingEvent, EventHandler, InputBinding, InvokeRequest, OutputBinding,
};
use tandem_components::conformance::unique_key;
use tandem_components::{Error, Metadata};
use tandem_rabbitmq::RabbitBinding;
use tandem_testkit::services;

const ADDR: &str = "127.0.0.1:5672";
const URI: &str = "amqp://guest:guest@127.0.0.1:5672";
const WAIT: Duration = Duration::from_secs(20);

fn metadata(queue: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut md = Metadata::new("rabbit-binding", "binding-tests")
        .with("host", URI)
        .with("queueName", queue)
        .with("reconnectWaitInSeconds", "1");
    for (k, v) in extra {
        md.insert(*k, *v);
    }
    md
}

async fn binding(queue: &str, extra: &[(&str, &str)]) -> Option<RabbitBinding> {
    if !services::require("RabbitMQ", ADDR) {
        return None;
    }
    Some(
        RabbitBinding::build(&metadata(queue, extra))
            .await
            .expect("build"),
    )
}

/// A plain AMQP connection, to look at queues from outside and to remove them afterwards.
async fn raw() -> Connection {
    Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("connect to rabbitmq")
}

async fn delete_queue(queue: &str) {
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "OK".into()).await;
}

/// Records events; refuses those whose data is in `refuse` (each as many times as given).
struct Recorder {
    tx: tokio::sync::mpsc::UnboundedSender<BindingEvent>,
    refuse: std::sync::Mutex<HashMap<String, usize>>,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: BindingEvent) -> Result<Option<Bytes>, String> {
        let data = String::from_utf8_lossy(&event.data).into_owned();
        let _ = self.tx.send(event);
        let mut refuse = self.refuse.lock().unwrap();
        match refuse.get_mut(&data) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err("the app refused it".into())
            }
            _ => Ok(None),
        }
    }
}

type Events = tokio::sync::mpsc::UnboundedReceiver<BindingEvent>;

fn recorder(refuse: &[(&str, usize)]) -> (Arc<Recorder>, Events) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let refuse = refuse.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect();
    (
        Arc::new(Recorder {
            tx,
            refuse: std::sync::Mutex::new(refuse),
        }),
        rx,
    )
}

async fn next(rx: &mut Events) -> BindingEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("handler alive")
}

async fn quiet(rx: &mut Events, what: &str) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(700), rx.recv()).await {
        panic!("{what}: unexpected {:?}", String::from_utf8_lossy(&e.data));
    }
}

fn create(data: &str, meta: &[(&str, &str)]) -> InvokeRequest {
    InvokeRequest {
        operation: "create".into(),
        data: Bytes::copy_from_slice(data.as_bytes()),
        metadata: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn text(e: &BindingEvent) -> String {
    String::from_utf8_lossy(&e.data).into_owned()
}

/// `create` publishes to the queue; the input hands each message to the app once, with its
/// headers as metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_read() {
    let queue = unique_key("rbind");
    let Some(b) = binding(&queue, &[]).await else {
        return;
    };
    assert_eq!(b.operations(), ["create"]);
    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    let resp = b
        .invoke(create(r#"{"n":1}"#, &[("tenant", "acme"), ("a key", "v")]))
        .await
        .unwrap();
    assert!(resp.data.is_none());
    let e = next(&mut rx).await;
    assert_eq!(text(&e), r#"{"n":1}"#);
    assert_eq!(e.metadata["tenant"], "acme");
    assert_eq!(e.metadata["a+key"], "v", "keys escaped as daprd does");
    for n in 2..=5 {
        b.invoke(create(&n.to_string(), &[])).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(text(&next(&mut rx).await));
    }
    assert_eq!(got, ["2", "3", "4", "5"], "one at a time, in queue order");
    quiet(&mut rx, "each message once").await;
    sub.close().await;
    delete_queue(&queue).await;
}

/// What `create` puts on the wire: persistence, content type, expiration, priority, ids,
/// headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_properties() {
    let queue = unique_key("rbind-props");
    let Some(b) = binding(
        &queue,
        &[("maxPriority", "10"), ("contentType", "text/csv")],
    )
    .await
    else {
        return;
    };
    b.invoke(create(
        "payload",
        &[
            ("ttlInSeconds", "60"),
            ("priority", "7"),
            ("messageID", "m-1"),
            ("correlationID", "c-1"),
            ("type", "order"),
            ("tenant", "acme"),
        ],
    ))
    .await
    .unwrap();
    b.invoke(create("plain", &[("contentType", "application/json")]))
        .await
        .unwrap();
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let get = |ch: lapin::Channel, q: String| async move {
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message in the queue")
    };
    let m = get(ch.clone(), queue.clone()).await;
    assert_eq!(m.delivery.data, b"payload");
    let p = &m.delivery.properties;
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("text/csv")
    );
    assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
    assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("order"));
    assert_eq!(
        p.headers().as_ref().unwrap().inner().get("tenant"),
        Some(&AMQPValue::LongString("acme".into()))
    );
    let m = get(ch.clone(), queue.clone()).await;
    assert_eq!(
        m.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("application/json")
    );
    let _ = conn.close(200, "OK".into()).await;
    delete_queue(&queue).await;
}

/// A refused event goes back to the queue and comes again until the app takes it; only then
/// is it acknowledged. An event refused when the input stops stays in the queue for the next
/// reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_delivered_again() {
    let queue = unique_key("rbind-refused");
    let Some(b) = binding(&queue, &[]).await else {
        return;
    };
    let (h, mut rx) = recorder(&[("bad", 2)]);
    let sub = b.read(h).await.unwrap();
    for data in ["bad", "good"] {
        b.invoke(create(data, &[])).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(text(&next(&mut rx).await));
    }
    assert_eq!(got, ["bad", "bad", "bad", "good"]);
    quiet(&mut rx, "taken events are acknowledged").await;
    sub.close().await;

    // Refused by a reader that then stops: still there for the next one.
    let (h, mut rx) = recorder(&[("kept", usize::MAX)]);
    let sub = b.read(h).await.unwrap();
    b.invoke(create("kept", &[])).await.unwrap();
    assert_eq!(text(&next(&mut rx).await), "kept");
    sub.close().await;
    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    let e = next(&mut rx).await;
    assert_eq!(text(&e), "kept");
    quiet(&mut rx, "acknowledged once taken").await;
    sub.close().await;
    delete_queue(&queue).await;
}

/// `prefetchCount` above 1 puts several events with the app at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_count_delivers_concurrently() {
    struct Slow {
        running: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
        done: tokio::sync::mpsc::UnboundedSender<()>,
    }
    #[async_trait]
    impl EventHandler for Slow {
        async fn handle(&self, _: BindingEvent) -> Result<Option<Bytes>, String> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.running.fetch_sub(1, SeqCst);
            let _ = self.done.send(());
            Ok(None)
        }
    }
    let queue = unique_key("rbind-prefetch");
    let Some(b) = binding(&queue, &[("prefetchCount", "4")]).await else {
        return;
    };
    for n in 0..8 {
        b.invoke(create(&n.to_string(), &[])).await.unwrap();
    }
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let slow = Arc::new(Slow {
        running: Default::default(),
        most: Default::default(),
        done: tx,
    });
    let sub = b.read(slow.clone()).await.unwrap();
    for _ in 0..8 {
        tokio::time::timeout(WAIT, done.recv()).await.unwrap();
    }
    sub.close().await;
    assert_eq!(slow.most.load(std::sync::atomic::Ordering::SeqCst), 4);
    delete_queue(&queue).await;
}

/// The queue's TTL (`ttlInSeconds`) and a message's own (`ttlInSeconds` on `create`) discard
/// what waited too long; `maxPriority` makes urgent messages overtake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_priority() {
    let short_lived = unique_key("rbind-ttl");
    let Some(b) = binding(&short_lived, &[("ttlInSeconds", "1")]).await else {
        return;
    };
    b.invoke(create("expires", &[])).await.unwrap();
    let prioritised = unique_key("rbind-prio");
    let p = binding(&prioritised, &[("maxPriority", "10")])
        .await
        .unwrap();
    p.invoke(create("stale", &[("ttlInSeconds", "1")]))
        .await
        .unwrap();
    p.invoke(create("low", &[("priority", "1")])).await.unwrap();
    p.invoke(create("high", &[("priority", "9")]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    quiet(&mut rx, "expired by the queue's TTL").await;
    b.invoke(create("fresh", &[])).await.unwrap();
    assert_eq!(text(&next(&mut rx).await), "fresh");
    sub.close().await;

    let (h, mut rx) = recorder(&[]);
    let sub = p.read(h).await.unwrap();
    assert_eq!(text(&next(&mut rx).await), "high");
    assert_eq!(text(&next(&mut rx).await), "low");
    quiet(&mut rx, "the stale message expired").await;
    sub.close().await;
    delete_queue(&short_lived).await;
    delete_queue(&prioritised).await;
}

/// A queue that exists with other flags: `create` and reading fail with the broker's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_with_other_flags_is_refused() {
    let queue = unique_key("rbind-flags");
    let Some(durable) = binding(&queue, &[("durable", "true")]).await else {
        return;
    };
    durable.invoke(create("x", &[])).await.unwrap();
    let other = binding(&queue, &[]).await.unwrap();
    let err = other.invoke(create("y", &[])).await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("durable"), "{err}");
    let (h, _rx) = recorder(&[]);
    let err = other.read(h).await.unwrap_err();
    assert!(err.to_string().contains(&queue), "{err}");
    delete_queue(&queue).await;
}

/// A broker that is not there: building works, `create` fails within the connection
/// timeout, reading waits without failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker() {
    let md = metadata("q", &[("host", "amqp://guest:guest@127.0.0.1:1")]);
    let b = RabbitBinding::build(&md).await.unwrap();
    let started = std::time::Instant::now();
    let err = b.invoke(create("x", &[])).await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    quiet(&mut rx, "nothing to read").await;
    sub.close().await;
}
