//! `bindings.kafka` on a Kafka-compatible broker (tansu: the one at 127.0.0.1:9092 when it
//! answers, else a private one per test; skipped when none can be started, unless
//! `TANDEM_REQUIRE_SERVICES=1`): `create` and reading back, refused events skipped or
//! delivered again, and what a binding without `publishTopic` or `topics` does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tandem_components::bindings::{
    BindingEvent, EventHandler, InputBinding, InvokeRequest, OutputBinding,
};
use tandem_components::conformance::unique_key;
use tandem_components::{Error, Metadata};
use tandem_kafka::KafkaBinding;
use tandem_testkit::kafka::Tansu;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

fn metadata(brokers: &str, extra: &[(&str, &str)]) -> Metadata {
    let mut md = Metadata::new("kafka-binding", "binding-tests")
        .with("brokers", brokers)
        .with("authType", "none")
        .with("sessionTimeout", "2s")
        .with("heartbeatInterval", "300ms");
    for (k, v) in extra {
        md.insert(*k, *v);
    }
    md
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
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
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

/// `create` writes to `publishTopic` with the key and headers; the input reads `topics`
/// and hands each record over with Dapr's metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_read() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    let a = unique_key("kbind-a");
    let b = unique_key("kbind-b");
    let topics = format!("{a}, {b}");
    let binding = KafkaBinding::build(&metadata(
        broker.brokers(),
        &[
            ("publishTopic", &a),
            ("topics", &topics),
            ("consumerGroup", &unique_key("g")),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(binding.operations(), ["create"]);
    let (h, mut rx) = recorder(&[]);
    let sub = binding.read(h).await.unwrap();
    let resp = binding
        .invoke(create(
            r#"{"n":1}"#,
            &[("partitionKey", "k1"), ("tenant", "acme")],
        ))
        .await
        .unwrap();
    assert!(resp.data.is_none());
    let e = next(&mut rx).await;
    assert_eq!(text(&e), r#"{"n":1}"#);
    assert_eq!(e.metadata["__key"], "k1");
    assert_eq!(e.metadata["tenant"], "acme");
    assert_eq!(e.metadata["__topic"], a);
    // The second topic of `topics` is read too.
    let other = KafkaBinding::build(&metadata(broker.brokers(), &[("publishTopic", &b)]))
        .await
        .unwrap();
    other
        .invoke(create("to b", &[("key", "k2")]))
        .await
        .unwrap();
    let e = next(&mut rx).await;
    assert_eq!(text(&e), "to b");
    assert_eq!(e.metadata["__topic"], b);
    assert_eq!(e.metadata["__key"], "k2");
    quiet(&mut rx, "each record once").await;
    sub.close().await;
}

/// By default (Dapr's `consumeRetryEnabled: false` for bindings) a refused event is skipped;
/// with `consumeRetryEnabled: true` it comes back until the app takes it, before the next
/// one of its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events() {
    let Some(broker) = Tansu::shared_or_start() else {
        return;
    };
    for retry in [false, true] {
        let topic = unique_key("kbind-refused");
        let mut extra = vec![
            ("publishTopic", topic.as_str()),
            ("topics", topic.as_str()),
            ("consumeRetryInterval", "50ms"),
        ];
        if retry {
            extra.push(("consumeRetryEnabled", "true"));
        }
        let binding = KafkaBinding::build(&metadata(broker.brokers(), &extra))
            .await
            .unwrap();
        let (h, mut rx) = recorder(&[("bad", 2)]);
        let sub = binding.read(h).await.unwrap();
        for data in ["bad", "good"] {
            binding
                .invoke(create(data, &[("partitionNumber", "0")]))
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        let expected: &[&str] = if retry {
            &["bad", "bad", "bad", "good"]
        } else {
            &["bad", "good"]
        };
        while got.len() < expected.len() {
            got.push(text(&next(&mut rx).await));
        }
        assert_eq!(got, expected, "consumeRetryEnabled: {retry}");
        quiet(&mut rx, "nothing more").await;
        sub.close().await;
    }
}

/// Without `publishTopic`, `create` is refused; without `topics`, reading reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics() {
    let binding = KafkaBinding::build(&metadata("127.0.0.1:1", &[]))
        .await
        .unwrap();
    let err = binding.invoke(create("x", &[])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    assert!(err.to_string().contains("publishTopic"), "{err}");
    let (h, mut rx) = recorder(&[]);
    let sub = binding.read(h).await.unwrap();
    quiet(&mut rx, "no topics").await;
    sub.close().await;
    let err = KafkaBinding::build(&metadata("127.0.0.1:1", &[("authType", "awsiam")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("authType"), "{err}");
}
