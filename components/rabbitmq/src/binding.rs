//! `bindings.rabbitmq`: an output binding publishing to one queue and an input binding
//! reading it, on the component's one AMQP connection.
//!
//! - **Queue.** `queueName` is declared (created if missing) with `durable`,
//!   `deleteWhenUnused`, `exclusive`, `ttlInSeconds` (`x-message-ttl`) and `maxPriority`
//!   (`x-max-priority`) before the first publish and before reading, and again after each
//!   reconnection.
//! - **Output.** The one operation `create` publishes the request's data to the queue through
//!   the default exchange and returns once the broker confirmed it (publisher confirms). The
//!   message is persistent (`deliveryMode`), has the content type `contentType` (the
//!   request's `contentType` metadata wins) and carries every request metadata entry as a
//!   header. Request metadata `ttlInSeconds` (or `ttl`) sets its expiration, `priority` its
//!   priority (0 to 255), `messageID`, `correlationID` and `type` the AMQP properties of those
//!   names. A queue deleted meanwhile is declared again and the message published once more;
//!   a message the broker could still not route fails the request.
//! - **Input.** Each message is handed to the app with its string headers as metadata (keys
//!   URL-query-escaped, as daprd does). It is acknowledged only after the app accepted it; a
//!   message the app refused (or that failed to reach it) is returned to the queue
//!   (`basic.nack` with requeue) and delivered again, after a pause that grows while the app
//!   keeps refusing (0.1 s doubling up to 5 s; daprd requeues at once). Up to `prefetchCount`
//!   events (at least one) are with the app at once.
//! - **Connection loss.** Publishing fails at once while the broker is unreachable; the input
//!   waits, declares the queue again and resumes. Messages in flight when the connection broke
//!   are redelivered by the broker.
//! - **Stopping** the input cancels its consumer, waits for the events with the app and
//!   settles them, then closes its channel, which returns prefetched messages to the queue.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use tandem_components::bindings::{
    BindingEvent, EventHandler, InputBinding, InvokeRequest, InvokeResponse, OutputBinding,
};
use tandem_components::pubsub::Subscription;
use tandem_components::{Error, Metadata, Result};
use tokio::sync::OwnedSemaphorePermit;

use crate::consumer::{Reader, Source, Words};
use crate::link::{Link, Live, Lost, Publisher};
use crate::message::{lookup, short, with_request_properties};
use crate::metadata::RabbitBindingMetadata;

/// The pause before a refused event goes back to the queue, doubling while the app keeps
/// refusing, up to [`MAX_REQUEUE_PAUSE`].
const FIRST_REQUEUE_PAUSE: Duration = Duration::from_millis(100);
const MAX_REQUEUE_PAUSE: Duration = Duration::from_secs(5);

/// The `bindings.rabbitmq` component (input and output). See the module documentation.
///
/// Built with [`RabbitBinding::build`], which never waits for the broker.
pub struct RabbitBinding {
    settings: Arc<RabbitBindingMetadata>,
    link: Arc<Link>,
    component: Arc<str>,
    queue: Arc<QueueSpec>,
}

impl fmt::Debug for RabbitBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBinding")
            .field("component", &self.component)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RabbitBinding {
    /// Decodes the metadata (see [`RabbitBindingMetadata`]) and starts connecting in the
    /// background. A broker that is down does not fail the build: `create` fails and the
    /// input waits until it answers.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = Arc::new(RabbitBindingMetadata::from_metadata(metadata)?);
        let link = Link::start(Arc::new(settings.link_settings()), metadata.name.clone());
        Ok(Self {
            queue: Arc::new(QueueSpec::new(&settings)),
            settings,
            link,
            component: metadata.name.as_str().into(),
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &RabbitBindingMetadata {
        &self.settings
    }
}

/// The queue and how it is declared.
struct QueueSpec {
    name: ShortString,
    options: QueueDeclareOptions,
    args: FieldTable,
}

impl QueueSpec {
    fn new(s: &RabbitBindingMetadata) -> Self {
        let mut args = FieldTable::default();
        if let Some(ttl) = s.queue_ttl {
            let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        }
        if let Some(p) = s.max_priority {
            args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(p));
        }
        Self {
            name: s.queue_name.as_str().into(),
            options: QueueDeclareOptions {
                durable: s.durable,
                auto_delete: s.delete_when_unused,
                exclusive: s.exclusive,
                ..Default::default()
            },
            args,
        }
    }

    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        channel
            .queue_declare(self.name.clone(), self.options, self.args.clone())
            .await
            .map(|_| ())
    }
}

/// The AMQP properties of a `create` request.
fn properties(req: &InvokeRequest, s: &RabbitBindingMetadata) -> Result<BasicProperties> {
    let md = &req.metadata;
    let content_type = lookup(md, "contentType").unwrap_or(&s.content_type);
    let props = BasicProperties::default()
        .with_content_type(short(content_type))
        .with_delivery_mode(s.delivery_mode);
    let mut props = with_request_properties(props, md, None)?;
    if !md.is_empty() {
        let mut headers = FieldTable::default();
        for (k, v) in md {
            headers.insert(short(k), AMQPValue::LongString(v.as_str().into()));
        }
        props = props.with_headers(headers);
    }
    Ok(props)
}

/// How one publish attempt ended.
enum Sent {
    Confirmed,
    /// The broker could not route it: the queue is gone.
    Returned,
    /// The broker refused it (negative confirm).
    Nacked,
    Failed(lapin::Error),
}

impl RabbitBinding {
    /// Declares the queue if this channel has not yet, publishes and waits for the confirm.
    async fn send_once(
        &self,
        live: &Live,
        publisher: &Publisher,
        props: &BasicProperties,
        data: &[u8],
    ) -> Sent {
        let queue = &self.queue;
        if !publisher.declared(queue.name.as_str()) {
            if let Err(e) = live.guard(queue.declare(&publisher.channel)).await {
                return Sent::Failed(e);
            }
            publisher.mark_declared(queue.name.as_str());
        }
        let confirm = match live
            .guard(publisher.channel.basic_publish(
                "".into(),
                queue.name.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                data,
                props.clone(),
            ))
            .await
        {
            Ok(c) => c,
            Err(e) => return Sent::Failed(e),
        };
        match live.guard(confirm).await {
            Ok(Confirmation::Ack(Some(_))) => Sent::Returned,
            Ok(Confirmation::Nack(_)) => Sent::Nacked,
            Ok(_) => Sent::Confirmed,
            Err(e) => Sent::Failed(e),
        }
    }
}

#[async_trait]
impl OutputBinding for RabbitBinding {
    fn operations(&self) -> &'static [&'static str] {
        &["create"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        let props = properties(&req, &self.settings)?;
        let live = self.link.live(self.settings.connect_timeout).await?;
        let mut publisher = live.publisher();
        let mut retried = false;
        loop {
            let failure = match self.send_once(&live, &publisher, &props, &req.data).await {
                Sent::Confirmed => return Ok(InvokeResponse::default()),
                Sent::Nacked => {
                    return Err(Error::backend(
                        "the broker did not accept the message (negative publisher confirm)",
                    ));
                }
                Sent::Returned if retried => {
                    return Err(Error::backend(format!(
                        "rabbitmq could not route the message to queue {}",
                        self.queue.name
                    )));
                }
                Sent::Returned => {
                    // Deleted since it was declared here (auto-delete, exclusive, by hand).
                    tracing::debug!(component = %self.component, queue = %self.queue.name, "the queue is gone; declaring it again");
                    publisher.forget_declared(self.queue.name.as_str());
                    retried = true;
                    continue;
                }
                Sent::Failed(e) => e,
            };
            if !live.connected() {
                self.link.report_broken();
                return Err(Error::backend(failure));
            }
            if retried || publisher.channel.status().connected() {
                return Err(Error::backend(failure));
            }
            tracing::debug!(component = %self.component, error = %failure, "publishing channel closed by the broker; retrying on a new one");
            retried = true;
            publisher = live.reopen_publisher(&publisher).await?;
        }
    }
}

#[async_trait]
impl InputBinding for RabbitBinding {
    async fn read(&self, handler: Arc<dyn EventHandler>) -> Result<Subscription> {
        let in_flight = usize::from(self.settings.prefetch_count.max(1));
        Reader {
            link: self.link.clone(),
            component: self.component.clone(),
            queue: self.queue.name.as_str().into(),
            words: &WORDS,
            reconnect_wait: self.settings.reconnect_wait,
            in_flight,
            source: Input {
                queue: self.queue.clone(),
                prefetch: in_flight as u16,
                component: self.component.clone(),
                handler,
                refusals: Arc::new(AtomicU32::new(0)),
            },
        }
        .start(self.settings.connect_timeout)
        .await
    }
}

/// The log messages of the input.
static WORDS: Words = Words {
    deferred: "rabbitmq is unreachable; the input binding starts reading when it answers",
    refused: "rabbitmq refused the binding's queue",
    again: "rabbitmq consumer ended; reading again",
    consuming: "reading",
    attached_again: None,
    not_yet: "input binding not reading yet; it keeps trying in the background",
};

/// What the input reads and how it hands events to the app.
struct Input {
    queue: Arc<QueueSpec>,
    prefetch: u16,
    component: Arc<str>,
    handler: Arc<dyn EventHandler>,
    /// Refusals in a row, for the pause before a refused event goes back to the queue.
    refusals: Arc<AtomicU32>,
}

impl Source for Input {
    /// Queue, prefetch, consumer.
    async fn attach(&self, channel: &Channel) -> lapin::Result<Consumer> {
        self.queue.declare(channel).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        channel
            .basic_consume(
                self.queue.name.clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    fn dispatch(
        &self,
        delivery: lapin::message::Delivery,
        permit: OwnedSemaphorePermit,
        lost: Lost,
    ) {
        tokio::spawn(deliver(
            delivery,
            self.handler.clone(),
            self.refusals.clone(),
            self.component.clone(),
            (permit, lost),
        ));
    }
}

/// Hands one message to the app, then acknowledges it, or returns it to the queue after a
/// pause when the app did not take it.
async fn deliver(
    delivery: lapin::message::Delivery,
    handler: Arc<dyn EventHandler>,
    refusals: Arc<AtomicU32>,
    component: Arc<str>,
    (_permit, lost): (OwnedSemaphorePermit, Lost),
) {
    let lapin::message::Delivery {
        data,
        properties,
        acker,
        ..
    } = delivery;
    let event = BindingEvent {
        data: Bytes::from(data),
        metadata: headers_to_metadata(&properties),
    };
    let settled = match handler.handle(event).await {
        Ok(_) => {
            refusals.store(0, Ordering::Relaxed);
            lost.guard(acker.ack(BasicAckOptions::default())).await
        }
        Err(why) => {
            let n = refusals.fetch_add(1, Ordering::Relaxed);
            let pause = FIRST_REQUEUE_PAUSE
                .saturating_mul(1 << n.min(6))
                .min(MAX_REQUEUE_PAUSE);
            tracing::debug!(component = %component, error = %why, retry_in = ?pause, "the app did not accept a rabbitmq event; it goes back to the queue");
            tokio::time::sleep(pause).await;
            lost.guard(acker.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            }))
            .await
        }
    };
    if let Err(e) = settled {
        tracing::debug!(component = %component, error = %e, "could not settle a message; the broker delivers it again");
    }
}

/// The message's string headers, keys escaped as URL query parameters (as daprd, so that
/// they can travel as HTTP headers).
fn headers_to_metadata(p: &BasicProperties) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(headers) = p.headers() {
        for (name, value) in headers {
            let text = match value {
                AMQPValue::LongString(s) => s.to_string(),
                AMQPValue::ShortString(s) => s.to_string(),
                _ => continue,
            };
            out.insert(query_escape(name.as_str()), text);
        }
    }
    out
}

/// Escapes `s` as a URL query component: letters, digits and `-_.~` stay, a space becomes
/// `+`, every other byte `%XX`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> RabbitBindingMetadata {
        let mut md = Metadata::new("rabbit", "app")
            .with("host", "amqp://guest:guest@localhost:5672")
            .with("queueName", "q");
        for (k, v) in pairs {
            md.insert(*k, *v);
        }
        RabbitBindingMetadata::from_metadata(&md).unwrap()
    }

    fn create(meta: &[(&str, &str)]) -> InvokeRequest {
        InvokeRequest {
            operation: "create".into(),
            data: Bytes::from_static(b"x"),
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn queue_declaration() {
        let q = QueueSpec::new(&settings(&[]));
        assert_eq!(q.name.as_str(), "q");
        assert!(!q.options.durable && !q.options.auto_delete && !q.options.exclusive);
        assert!(q.args.inner().is_empty());
        let q = QueueSpec::new(&settings(&[
            ("durable", "true"),
            ("deleteWhenUnused", "true"),
            ("exclusive", "true"),
            ("ttlInSeconds", "60"),
            ("maxPriority", "300"),
        ]));
        assert!(q.options.durable && q.options.auto_delete && q.options.exclusive);
        assert_eq!(
            q.args.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(60_000))
        );
        assert_eq!(
            q.args.inner().get("x-max-priority"),
            Some(&AMQPValue::ShortShortUInt(255))
        );
    }

    #[test]
    fn create_properties() {
        let s = settings(&[]);
        let p = properties(&create(&[]), &s).unwrap();
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent, as daprd");
        assert_eq!(*p.expiration(), None);
        assert!(p.headers().is_none());
        let p = properties(
            &create(&[
                ("ttlInSeconds", "2"),
                ("priority", "300"),
                ("contentType", "application/json"),
                ("messageID", "m1"),
                ("correlationID", "c1"),
                ("type", "kind"),
                ("tenant", "acme"),
            ]),
            &settings(&[("contentType", "text/csv"), ("deliveryMode", "1")]),
        )
        .unwrap();
        assert_eq!(p.expiration().as_ref().map(|e| e.as_str()), Some("2000"));
        assert_eq!(*p.priority(), Some(255));
        assert_eq!(*p.delivery_mode(), Some(1));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(p.message_id().as_ref().map(|c| c.as_str()), Some("m1"));
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("c1"));
        assert_eq!(p.kind().as_ref().map(|c| c.as_str()), Some("kind"));
        let headers = p.headers().as_ref().unwrap();
        assert_eq!(
            headers.inner().get("tenant"),
            Some(&AMQPValue::LongString("acme".into()))
        );
        let p = properties(&create(&[]), &settings(&[("contentType", "text/csv")])).unwrap();
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("text/csv"),
            "the component's contentType"
        );
        for bad in [("ttlInSeconds", "soon"), ("priority", "high")] {
            assert!(matches!(
                properties(&create(&[bad]), &s),
                Err(Error::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn headers_become_metadata() {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        headers.insert("a key/x".into(), AMQPValue::LongString("v".into()));
        headers.insert("n".into(), AMQPValue::LongInt(3));
        let md = headers_to_metadata(&BasicProperties::default().with_headers(headers));
        assert_eq!(md["tenant"], "acme");
        assert_eq!(md["a+key%2Fx"], "v");
        assert!(!md.contains_key("n"), "only string headers, as daprd");
        assert_eq!(query_escape("Ab9-_.~ é"), "Ab9-_.~+%C3%A9");
    }
}
