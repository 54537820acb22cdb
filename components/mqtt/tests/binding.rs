//! `bindings.mqtt3` against the Mosquitto broker at 127.0.0.1:1883 (skipped when it is
//! unreachable, unless `TANDEM_REQUIRE_SERVICES=1`): `create` and reading back with the
//! `topic` metadata, wildcards and the per-request topic, refused events handed over again
//! (`backOffMaxRetries`) or left unacknowledged until the input reconnects, and a broker that
//! is not there.
//!
//! Every binding built here gets a consumer id of its own: the broker disconnects the older
//! of two connections with one client id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tandem_components::bindings::{
    BindingEvent, EventHandler, InputBinding, InvokeRequest, OutputBinding,
};
use tandem_components::conformance::unique_key;
use tandem_components::{Error, Metadata};
use tandem_mqtt::MqttBinding;
use tandem_testkit::services;
use tokio::sync::mpsc;

const ADDR: &str = "127.0.0.1:1883";
const WAIT: Duration = Duration::from_secs(20);

fn metadata(url: &str, consumer: &str, topic: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut md = Metadata::new("mqtt-binding", "binding-tests")
        .with("url", url)
        .with("consumerID", consumer)
        .with("topic", topic);
    for (k, v) in extra {
        md.insert(*k, *v);
    }
    md
}

async fn binding(consumer: &str, topic: &str, extra: &[(&str, &str)]) -> Option<MqttBinding> {
    if !services::require("Mosquitto", ADDR) {
        return None;
    }
    Some(
        MqttBinding::build(&metadata(&format!("tcp://{ADDR}"), consumer, topic, extra))
            .await
            .expect("build"),
    )
}

/// A topic no other test run uses.
fn topic(what: &str) -> String {
    format!("tandem/binding-tests/{}", unique_key(what))
}

/// Records events; refuses those whose data is in `refuse` (each as many times as given).
struct Recorder {
    tx: mpsc::UnboundedSender<BindingEvent>,
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

fn recorder(refuse: &[(&str, usize)]) -> (Arc<Recorder>, mpsc::UnboundedReceiver<BindingEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let refuse = refuse.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect();
    (
        Arc::new(Recorder {
            tx,
            refuse: std::sync::Mutex::new(refuse),
        }),
        rx,
    )
}

async fn next(rx: &mut mpsc::UnboundedReceiver<BindingEvent>) -> BindingEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("handler alive")
}

async fn quiet(rx: &mut mpsc::UnboundedReceiver<BindingEvent>, what: &str) {
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

/// `create` publishes to `topic`; the input hands each message to the app once, with the
/// `topic` metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_read() {
    let t = topic("plain");
    let Some(b) = binding(&unique_key("c"), &t, &[]).await else {
        return;
    };
    assert_eq!(b.operations(), ["create"]);
    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    let resp = b.invoke(create(r#"{"n":1}"#, &[])).await.unwrap();
    assert!(resp.data.is_none());
    let e = next(&mut rx).await;
    assert_eq!(text(&e), r#"{"n":1}"#);
    assert_eq!(e.metadata, HashMap::from([("topic".to_owned(), t.clone())]));
    quiet(&mut rx, "each message once").await;
    sub.close().await;
}

/// The input may subscribe with wildcards; the event says where the message went. A request's
/// `topic` metadata overrides the component's; a wildcard topic needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_and_the_request_topic() {
    let base = topic("wild");
    let Some(reader) = binding(&unique_key("r"), &format!("{base}/+"), &[]).await else {
        return;
    };
    let writer = binding(&unique_key("w"), &format!("{base}/default"), &[])
        .await
        .unwrap();
    let (h, mut rx) = recorder(&[]);
    let sub = reader.read(h).await.unwrap();
    writer
        .invoke(create("to a", &[("topic", &format!("{base}/a"))]))
        .await
        .unwrap();
    let e = next(&mut rx).await;
    assert_eq!(text(&e), "to a");
    assert_eq!(e.metadata["topic"], format!("{base}/a"));
    writer.invoke(create("default", &[])).await.unwrap();
    let e = next(&mut rx).await;
    assert_eq!(text(&e), "default");
    assert_eq!(e.metadata["topic"], format!("{base}/default"));
    let err = reader.invoke(create("nowhere", &[])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    reader
        .invoke(create(
            "from the reader",
            &[("topic", &format!("{base}/b"))],
        ))
        .await
        .unwrap();
    assert_eq!(text(&next(&mut rx).await), "from the reader");
    quiet(&mut rx, "nothing more").await;
    sub.close().await;
}

/// With `backOffMaxRetries`, a refused event is handed over again until the app takes it, and
/// then acknowledged: a later reader of the same session does not get it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_retried() {
    let t = topic("retried");
    let consumer = unique_key("c");
    let Some(b) = binding(&consumer, &t, &[("backOffMaxRetries", "2")]).await else {
        return;
    };
    let (h, mut rx) = recorder(&[("bad", 2)]);
    let sub = b.read(h).await.unwrap();
    let started = Instant::now();
    b.invoke(create("bad", &[])).await.unwrap();
    for _ in 0..3 {
        assert_eq!(text(&next(&mut rx).await), "bad");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "pauses of 0.5 s and 1 s between deliveries"
    );
    quiet(&mut rx, "taken at the third delivery").await;
    sub.close().await;
    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    quiet(&mut rx, "acknowledged, so not sent again").await;
    sub.close().await;
}

/// Without retries (Dapr's default), a refused event stays unacknowledged: the broker sends
/// it again to the next reader of the session, which acknowledges it by taking it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_come_back_after_reconnecting() {
    let t = topic("kept");
    let consumer = unique_key("c");
    let Some(b) = binding(&consumer, &t, &[]).await else {
        return;
    };
    let (h, mut rx) = recorder(&[("kept", 1)]);
    let sub = b.read(h).await.unwrap();
    b.invoke(create("kept", &[])).await.unwrap();
    assert_eq!(text(&next(&mut rx).await), "kept");
    quiet(&mut rx, "no retry by default").await;
    sub.close().await;

    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    let e = next(&mut rx).await;
    assert_eq!(text(&e), "kept");
    assert_eq!(e.metadata["topic"], t);
    quiet(&mut rx, "once").await;
    sub.close().await;

    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    quiet(&mut rx, "acknowledged when taken").await;
    sub.close().await;
}

/// A broker that is not there: building works, `create` fails once the first connection
/// attempt failed, reading waits without failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker() {
    let b = MqttBinding::build(&metadata("tcp://127.0.0.1:1", "c", "t", &[]))
        .await
        .unwrap();
    let started = Instant::now();
    let err = b.invoke(create("x", &[])).await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (h, mut rx) = recorder(&[]);
    let sub = b.read(h).await.unwrap();
    quiet(&mut rx, "nothing to read").await;
    sub.close().await;
}
