//! What producers and consumers share: librdkafka log routing, the partitioner, the
//! producer, and the conversions between Dapr metadata and Kafka records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Partitioner, Producer as _, ProducerContext, ThreadedProducer,
};
use tandem_components::{Error, Result};
use tokio::sync::oneshot;

use crate::metadata::KafkaMetadata;

/// Publish metadata naming the record key (Dapr's).
pub(crate) const PARTITION_KEY: &str = "partitionKey";
/// Publish metadata naming the record key, and the delivery metadata holding it (Dapr's).
pub(crate) const KEY_METADATA: &str = "__key";
/// Publish metadata naming the record key (Tandem; after `partitionKey` and `__key`).
pub(crate) const KEY: &str = "key";
/// Publish metadata choosing the partition (Dapr's).
pub(crate) const PARTITION_NUMBER: &str = "partitionNumber";
/// Delivery metadata: the record's offset.
pub(crate) const OFFSET_METADATA: &str = "__offset";
/// Delivery metadata: the record's topic.
pub(crate) const TOPIC_METADATA: &str = "__topic";
/// Delivery metadata: the record's partition.
pub(crate) const PARTITION_METADATA: &str = "__partition";
/// Delivery metadata: the record's timestamp (Unix milliseconds).
pub(crate) const TIMESTAMP_METADATA: &str = "__timestamp";

/// How long an identical librdkafka warning stays quiet after it was logged.
const LOG_QUIET: Duration = Duration::from_secs(60);

/// Routes librdkafka's logs and errors to `tracing`, tagged with the component, and keeps a
/// broker that is down from flooding the log: an identical line is repeated at most once a
/// minute.
pub(crate) struct LogContext {
    component: Arc<str>,
    recent: Mutex<HashMap<String, Instant>>,
}

impl LogContext {
    pub(crate) fn new(component: Arc<str>) -> Self {
        Self {
            component,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `line` was not logged within [`LOG_QUIET`] (and remembers it). Lines that
    /// differ only in numbers (ports, "after 3ms", counters) count as identical.
    fn fresh(&self, line: &str) -> bool {
        let line: String = line.chars().filter(|c| !c.is_ascii_digit()).collect();
        let line = line.as_str();
        let Ok(mut recent) = self.recent.lock() else {
            return true;
        };
        let now = Instant::now();
        if recent.len() > 256 {
            recent.retain(|_, at| now.duration_since(*at) < LOG_QUIET);
        }
        match recent.get(line) {
            Some(at) if now.duration_since(*at) < LOG_QUIET => false,
            _ => {
                recent.insert(line.to_owned(), now);
                true
            }
        }
    }

    /// Logs a warning about the broker connection, at most once a minute per text.
    pub(crate) fn warn(&self, what: &str) {
        if self.fresh(what) {
            tracing::warn!(component = %self.component, "kafka: {what}");
        } else {
            tracing::debug!(component = %self.component, "kafka: {what}");
        }
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => self.warn(&format!("{fac}: {message}")),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::debug!(component = %self.component, "librdkafka {fac}: {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::trace!(component = %self.component, "librdkafka {fac}: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.warn(&format!("{error}: {reason}"));
    }
}

/// Chooses partitions as daprd's client does for keyed records (Sarama's hash partitioner:
/// FNV-1a of the key), so that one key lands on one partition whichever of the two
/// published it; records without a key go round robin over the available partitions.
pub(crate) struct DaprPartitioner {
    next: AtomicU32,
}

impl DaprPartitioner {
    pub(crate) fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
        }
    }
}

/// Sarama's `HashPartitioner`: the 32-bit FNV-1a hash read as a signed integer, modulo the
/// partition count, made non-negative.
pub(crate) fn sarama_partition(key: &[u8], partitions: i32) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in key {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    ((hash as i32) % partitions).abs()
}

impl Partitioner for DaprPartitioner {
    fn partition(
        &self,
        _topic: &str,
        key: Option<&[u8]>,
        partition_cnt: i32,
        is_partition_available: impl Fn(i32) -> bool,
    ) -> i32 {
        if partition_cnt <= 0 {
            return rdkafka::producer::PARTITION_UA;
        }
        if let Some(key) = key {
            return sarama_partition(key, partition_cnt);
        }
        let start = (self.next.fetch_add(1, Ordering::Relaxed) % partition_cnt as u32) as i32;
        (0..partition_cnt)
            .map(|i| (start + i) % partition_cnt)
            .find(|p| is_partition_available(*p))
            .unwrap_or(start)
    }
}

/// The producer's context: logs, delivery reports to the waiting publisher, the partitioner.
pub(crate) struct ProducerCtx {
    log: LogContext,
    partitioner: DaprPartitioner,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ProducerContext<DaprPartitioner> for ProducerCtx {
    type DeliveryOpaque = Box<oneshot::Sender<KafkaResult<()>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Self::DeliveryOpaque) {
        let _ = waiter.send(match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        });
    }

    fn get_custom_partitioner(&self) -> Option<&DaprPartitioner> {
        Some(&self.partitioner)
    }
}

/// A record ready to be published.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) key: Option<String>,
    pub(crate) partition: Option<i32>,
    pub(crate) headers: OwnedHeaders,
    /// `None` for a tombstone (data `null`, as daprd).
    pub(crate) payload: Option<Bytes>,
}

impl Outgoing {
    /// A record for `topic` from Dapr publish data and metadata: the key from
    /// `partitionKey` (else `__key`, else `key`), the partition from `partitionNumber`, and
    /// every metadata entry as a header (unless `excludeHeaderMetaRegex` matches its name).
    pub(crate) fn new(
        topic: &str,
        data: Bytes,
        metadata: &HashMap<String, String>,
        settings: &KafkaMetadata,
    ) -> Result<Self> {
        if topic.is_empty() {
            return Err(Error::InvalidRequest(
                "a kafka topic must not be empty".into(),
            ));
        }
        if metadata.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("valueSchemaType") && !v.eq_ignore_ascii_case("none")
        }) {
            return Err(Error::InvalidRequest(
                "valueSchemaType: schema registries (Avro) are not supported by Tandem".into(),
            ));
        }
        let key = [PARTITION_KEY, KEY_METADATA, KEY]
            .iter()
            .find_map(|k| metadata.get(*k))
            .cloned();
        let partition = match metadata.get(PARTITION_NUMBER) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| {
                        Error::InvalidRequest(
                            "partitionNumber: expected a non-negative partition number".into(),
                        )
                    })?,
            ),
        };
        let mut headers = OwnedHeaders::new_with_capacity(metadata.len());
        for (name, value) in metadata {
            if settings
                .exclude_header_meta
                .as_ref()
                .is_some_and(|re| re.is_match(name))
            {
                continue;
            }
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let payload = (data.as_ref() != b"null").then_some(data);
        Ok(Self {
            topic: topic.to_owned(),
            key,
            partition,
            headers,
            payload,
        })
    }
}

/// The component's producer: one librdkafka client with its own polling thread.
pub(crate) struct Producer {
    inner: ThreadedProducer<ProducerCtx, DaprPartitioner>,
    write_timeout: Duration,
}

impl Producer {
    /// Creates the client; it connects in the background, so a broker that is down does not
    /// fail this.
    pub(crate) fn new(settings: &KafkaMetadata, component: Arc<str>) -> Result<Self> {
        let ctx = ProducerCtx {
            log: LogContext::new(component),
            partitioner: DaprPartitioner::new(),
        };
        let inner = settings
            .producer_config()
            .create_with_context(ctx)
            .map_err(|e| Error::backend(format!("cannot create the kafka producer: {e}")))?;
        Ok(Self {
            inner,
            write_timeout: settings.write_timeout,
        })
    }

    /// Enqueues one record; the receiver answers once the broker acknowledged it (or it
    /// failed). Waits while librdkafka's queue is full.
    pub(crate) async fn enqueue(
        &self,
        out: &Outgoing,
    ) -> Result<oneshot::Receiver<KafkaResult<()>>> {
        let (tx, rx) = oneshot::channel();
        let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(&out.topic, Box::new(tx))
            .headers(out.headers.clone());
        if let Some(p) = &out.payload {
            record = record.payload(p.as_ref());
        }
        if let Some(k) = &out.key {
            record = record.key(k.as_bytes());
        }
        if let Some(n) = out.partition {
            record = record.partition(n);
        }
        let until = Instant::now() + self.write_timeout;
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(rx),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < until =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(publish_error(e)),
            }
        }
    }

    /// Publishes one record and waits for the broker's acknowledgement (`writeTimeout` at
    /// most).
    pub(crate) async fn send(&self, out: &Outgoing) -> Result<()> {
        let rx = self.enqueue(out).await?;
        settle(rx).await
    }

    /// Asks the brokers about `topic`, which creates it where the broker auto-creates
    /// topics (what daprd's client does too). Blocking: call it off the async workers.
    pub(crate) fn touch_topic(&self, topic: &str, timeout: Duration) -> KafkaResult<()> {
        self.inner
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map(|_| ())
    }
}

/// Waits for a delivery report.
pub(crate) async fn settle(rx: oneshot::Receiver<KafkaResult<()>>) -> Result<()> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(publish_error(e)),
        Err(_) => Err(Error::backend("kafka producer closed")),
    }
}

fn publish_error(e: KafkaError) -> Error {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => Error::backend(
            "kafka: the brokers did not acknowledge the message in time (writeTimeout); are they reachable?",
        ),
        KafkaError::MessageProduction(
            code @ (RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize),
        ) => Error::InvalidRequest(format!(
            "kafka: the message is too large ({code}); see maxMessageBytes"
        )),
        other => Error::backend(format!("kafka: {other}")),
    }
}

/// A record received by a consumer, detached from librdkafka.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) payload: Option<Bytes>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) headers: Vec<(String, Bytes)>,
}

impl Record {
    pub(crate) fn from_message(topic: Arc<str>, m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(Bytes::copy_from_slice).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(Bytes::copy_from_slice),
            payload: m.payload().map(Bytes::copy_from_slice),
            timestamp: m.timestamp().to_millis(),
            headers,
        }
    }

    /// The payload as Dapr delivers it: a tombstone (no value) is `null`.
    pub(crate) fn data(&self) -> Bytes {
        self.payload
            .clone()
            .unwrap_or_else(|| Bytes::from_static(b"null"))
    }

    /// Dapr's delivery metadata: `__key`, `__offset`, `__topic`, `__partition`,
    /// `__timestamp` and every header not excluded by `excludeHeaderMetaRegex`; key and
    /// header values URL-escaped with `escapeHeaders`.
    pub(crate) fn metadata(&self, settings: &KafkaMetadata) -> HashMap<String, String> {
        let text = |b: &[u8]| {
            if settings.escape_headers {
                query_escape(b)
            } else {
                String::from_utf8_lossy(b).into_owned()
            }
        };
        let mut md = HashMap::with_capacity(self.headers.len() + 5);
        if let Some(k) = &self.key {
            md.insert(KEY_METADATA.to_owned(), text(k));
        }
        md.insert(OFFSET_METADATA.to_owned(), self.offset.to_string());
        md.insert(TOPIC_METADATA.to_owned(), self.topic.to_string());
        md.insert(PARTITION_METADATA.to_owned(), self.partition.to_string());
        if let Some(ts) = self.timestamp {
            md.insert(TIMESTAMP_METADATA.to_owned(), ts.to_string());
        }
        for (name, value) in &self.headers {
            if settings
                .exclude_header_meta
                .as_ref()
                .is_some_and(|re| re.is_match(name))
            {
                continue;
            }
            md.insert(name.clone(), text(value));
        }
        md
    }
}

/// Go's `url.QueryEscape`: unreserved bytes stay, space becomes `+`, the rest `%XX`.
pub(crate) fn query_escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether a consumer error only says that a subscribed topic does not exist (yet).
pub(crate) fn unknown_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_components::Metadata;

    use crate::metadata::Role;

    fn settings(pairs: &[(&str, &str)]) -> KafkaMetadata {
        let mut md = Metadata::new("kafka", "app")
            .with("brokers", "localhost:9092")
            .with("authType", "none");
        for (k, v) in pairs {
            md.insert(*k, *v);
        }
        KafkaMetadata::from_metadata(&md, Role::PubSub).unwrap()
    }

    #[test]
    fn repeated_warnings_are_throttled() {
        let log = LogContext::new("kafka".into());
        assert!(log.fresh("Connect to 127.0.0.1:9092 failed (after 0ms)"));
        assert!(!log.fresh("Connect to 127.0.0.1:9093 failed (after 12ms)"));
        assert!(log.fresh("SASL authentication failed"));
    }

    #[test]
    fn keys_partition_like_sarama() {
        // Sarama: int32(fnv32a(key)) % n, negated when negative.
        assert_eq!(sarama_partition(b"", 4), (0x811c9dc5u32 as i32 % 4).abs());
        for key in [&b"order-1"[..], b"a", b"\xff\xfe", b"customer-42"] {
            let p = sarama_partition(key, 7);
            assert!((0..7).contains(&p));
            assert_eq!(p, sarama_partition(key, 7), "stable");
        }
        // Known value: fnv1a32("a") = 0xe40c292c.
        assert_eq!(
            sarama_partition(b"a", 1000),
            (0xe40c292cu32 as i32 % 1000).abs()
        );
    }

    #[test]
    fn keyless_records_go_round_robin() {
        let p = DaprPartitioner::new();
        let got: Vec<i32> = (0..8)
            .map(|_| p.partition("t", None, 4, |_| true))
            .collect();
        assert_eq!(got, [0, 1, 2, 3, 0, 1, 2, 3]);
        let skip_two = p.partition("t", None, 4, |p| p != 0);
        assert_eq!(skip_two, 1, "unavailable partitions are skipped");
        assert_eq!(
            p.partition("t", Some(b"k"), 4, |_| true),
            sarama_partition(b"k", 4)
        );
    }

    #[test]
    fn outgoing_records() {
        let s = settings(&[("excludeHeaderMetaRegex", "^rawPayload$")]);
        let md: HashMap<String, String> = [
            ("partitionKey", "order-1"),
            ("key", "ignored"),
            ("partitionNumber", "2"),
            ("rawPayload", "true"),
            ("tenant", "acme"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let out = Outgoing::new("t", Bytes::from_static(b"{}"), &md, &s).unwrap();
        assert_eq!(out.key.as_deref(), Some("order-1"));
        assert_eq!(out.partition, Some(2));
        let names: Vec<&str> = out.headers.iter().map(|h| h.key).collect();
        assert!(names.contains(&"tenant") && names.contains(&"partitionKey"));
        assert!(!names.contains(&"rawPayload"), "excluded by the regex");

        let only_key: HashMap<String, String> =
            [("key".to_owned(), "k".to_owned())].into_iter().collect();
        let out = Outgoing::new("t", Bytes::from_static(b"null"), &only_key, &s).unwrap();
        assert_eq!(out.key.as_deref(), Some("k"));
        assert!(out.payload.is_none(), "null is a tombstone");

        let bad: HashMap<String, String> = [("partitionNumber".to_owned(), "-1".to_owned())]
            .into_iter()
            .collect();
        assert!(matches!(
            Outgoing::new("t", Bytes::new(), &bad, &s),
            Err(Error::InvalidRequest(_))
        ));
        let avro: HashMap<String, String> = [("valueSchemaType".to_owned(), "Avro".to_owned())]
            .into_iter()
            .collect();
        assert!(Outgoing::new("t", Bytes::new(), &avro, &s).is_err());
        assert!(Outgoing::new("", Bytes::new(), &HashMap::new(), &s).is_err());
    }

    #[test]
    fn delivery_metadata() {
        let r = Record {
            topic: "orders".into(),
            partition: 3,
            offset: 17,
            key: Some(Bytes::from_static(b"k 1/\xc3\xa9")),
            payload: None,
            timestamp: Some(1_700_000_000_000),
            headers: vec![
                ("tenant".into(), Bytes::from_static(b"a b")),
                ("skip".into(), Bytes::from_static(b"x")),
            ],
        };
        assert_eq!(r.data().as_ref(), b"null");
        let md = r.metadata(&settings(&[("excludeHeaderMetaRegex", "^skip$")]));
        assert_eq!(md["__key"], "k 1/é");
        assert_eq!(md["__offset"], "17");
        assert_eq!(md["__topic"], "orders");
        assert_eq!(md["__partition"], "3");
        assert_eq!(md["__timestamp"], "1700000000000");
        assert_eq!(md["tenant"], "a b");
        assert!(!md.contains_key("skip"));
        let md = r.metadata(&settings(&[("escapeHeaders", "true")]));
        assert_eq!(md["__key"], "k+1%2F%C3%A9");
        assert_eq!(md["tenant"], "a+b");
    }
}
