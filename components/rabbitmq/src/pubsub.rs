//! `pubsub.rabbitmq`: topics are exchanges, consumer groups are queues, on Dapr's layout.
//!
//! # Topology (as daprd declares it)
//!
//! - Each topic is an exchange named after the topic, of kind `exchangeKind` (`fanout` by
//!   default), `durable` and auto-deleted per `deletedWhenUnused`. Publishing declares it
//!   (once per channel) before the first message.
//! - Each subscription declares the queue `<consumerID>-<topic>` (or the subscription's
//!   `queueName`) and binds it to the topic's exchange, once per `routingKey` (comma-separated;
//!   none means the empty key). Subscriptions of one consumer group share the queue, so they
//!   compete for its messages; every group has its own queue, so each gets every message.
//! - Queue arguments: `x-queue-type` (`classic` unless the subscription says `queueType:
//!   quorum`), `x-max-length` / `x-max-length-bytes` (`maxLen` / `maxLenBytes`, component or
//!   subscription), `x-max-priority` (subscription `maxPriority`), `x-single-active-consumer`
//!   (subscription `singleActiveConsumer`), and with `enableDeadLetter` an
//!   `x-dead-letter-exchange` `dlx-<queue>` (a durable fanout exchange) bound to the lazy,
//!   durable queue `dlq-<queue>`. The broker dead-letters what expires (TTL) or overflows
//!   `maxLen`; messages the app fails go to the subscription's `deadLetterTopic` through the
//!   runtime.
//!
//! # Delivery
//!
//! - **Publish** waits for the broker's publisher confirm: `Ok` means the broker took the
//!   message (persisted first if `deliveryMode: 2` and the queues are durable). Publish
//!   metadata: `routingKey`, `ttlInSeconds` (or `ttl`; per-message expiration, else the
//!   component's `ttlInSeconds`), `priority`, `contentType`, `messageID`, `correlationID`,
//!   `type`. Messages go out with AMQP content type `contentType`, else the request's, else
//!   `text/plain` (daprd's). Publish metadata is not carried as headers (as daprd).
//! - **At least once.** A message is acknowledged only after the handler answered
//!   [`Delivery::Ack`]; [`Delivery::Retry`] (or a handler that panics) is a `basic.nack` with
//!   requeue, so the broker delivers it again: Tandem's runtime has already retried with
//!   backoff before answering Retry, and handles dead-letter topics itself, so the component
//!   never drops a message the app did not take (`requeueInFailure` has no effect). With
//!   `autoAck: true` the broker forgets each message as it sends it: at most once.
//! - **Concurrency.** Up to the subscription's in-flight bound (one with `concurrencyMode:
//!   single`), each message on its own task. The broker's prefetch (`basic.qos`) is
//!   `prefetchCount`, or the in-flight bound when that is 0; per-message TTLs are exact then,
//!   since no message waits inside the sidecar (feature `MESSAGE_TTL`).
//! - **Connection loss.** One connection per component, re-opened in the background after
//!   `reconnectWaitSeconds` with backoff ([`crate::link`]). While it is down publishing fails
//!   at once; subscriptions wait, then declare their queue again and resume. Messages in
//!   flight when it broke are redelivered by the broker.
//! - **Stopping** a subscription cancels its consumer at once, waits for the messages being
//!   handled and settles them, then closes its channel (which returns prefetched messages to
//!   the queue).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, PublisherConfirm};
use tandem_components::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest,
    Subscription,
};
use tandem_components::{Error, Metadata, Result};
use tokio::sync::OwnedSemaphorePermit;

use crate::consumer::{Reader, Source, Words};
use crate::link::{Link, Lost, Publisher};
use crate::message::{lookup, short, with_request_properties};
use crate::metadata::{ConcurrencyMode, ExchangeKind, RabbitMetadata};

/// Largest in-flight bound (and prefetch) of one subscription: AMQP's prefetch is 16 bits.
const MAX_IN_FLIGHT: usize = u16::MAX as usize;

/// The `pubsub.rabbitmq` component. See the module documentation for its semantics.
///
/// Built with [`RabbitPubSub::build`], which never waits for the broker. Subscriptions keep
/// the connection open after the component itself is dropped, until they stop.
pub struct RabbitPubSub {
    settings: Arc<RabbitMetadata>,
    link: Arc<Link>,
    component: Arc<str>,
}

impl fmt::Debug for RabbitPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitPubSub")
            .field("component", &self.component)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RabbitPubSub {
    /// Decodes the metadata (see [`RabbitMetadata`]) and starts connecting in the background.
    /// A broker that is down does not fail the build: publishing fails and subscriptions wait
    /// until it answers.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = Arc::new(RabbitMetadata::from_metadata(metadata)?);
        let link = Link::start(Arc::new(settings.link_settings()), metadata.name.clone());
        Ok(Self {
            settings,
            link,
            component: metadata.name.as_str().into(),
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &RabbitMetadata {
        &self.settings
    }

    /// Sends one message and waits for its confirm, on a fresh channel once if the broker
    /// closed the publishing channel (for example after an exchange was auto-deleted).
    async fn send(&self, out: &Outgoing) -> Result<()> {
        let live = self.link.live(self.settings.connect_timeout).await?;
        let mut publisher = live.publisher();
        let mut retried = false;
        loop {
            let failure = match live.guard(send_one(&publisher, out, &self.settings)).await {
                Ok(confirm) => match live.guard(confirm).await {
                    Ok(Confirmation::Nack(_)) => return Err(nacked()),
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                },
                Err(e) => e,
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

/// A message ready to go out.
struct Outgoing {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
    data: Bytes,
}

impl Outgoing {
    fn new(req: PublishRequest, settings: &RabbitMetadata) -> Result<Self> {
        if req.topic.is_empty() || req.topic.len() > 255 {
            return Err(Error::InvalidRequest(
                "a rabbitmq topic (exchange name) must be 1 to 255 bytes long".into(),
            ));
        }
        let md = &req.metadata;
        let routing_key = lookup(md, "routingKey").unwrap_or("");
        if routing_key.len() > 255 {
            return Err(Error::InvalidRequest(
                "routingKey must be at most 255 bytes long".into(),
            ));
        }
        let content_type = lookup(md, "contentType")
            .or(req.content_type.as_deref())
            .unwrap_or("text/plain");
        let mut props = BasicProperties::default().with_content_type(short(content_type));
        if settings.delivery_mode > 0 {
            props = props.with_delivery_mode(settings.delivery_mode);
        }
        let props = with_request_properties(props, md, settings.default_ttl)?;
        Ok(Self {
            exchange: req.topic.into(),
            routing_key: routing_key.into(),
            properties: props,
            data: req.data,
        })
    }
}

/// Declares the exchange if this channel has not yet, then publishes.
async fn send_one(
    publisher: &Publisher,
    out: &Outgoing,
    settings: &RabbitMetadata,
) -> lapin::Result<PublisherConfirm> {
    if !publisher.declared(out.exchange.as_str()) {
        declare_exchange(
            &publisher.channel,
            out.exchange.clone(),
            settings.exchange_kind,
            settings.durable,
            settings.deleted_when_unused,
        )
        .await?;
        publisher.mark_declared(out.exchange.as_str());
    }
    publisher
        .channel
        .basic_publish(
            out.exchange.clone(),
            out.routing_key.clone(),
            BasicPublishOptions::default(),
            &out.data,
            out.properties.clone(),
        )
        .await
}

async fn declare_exchange(
    channel: &Channel,
    name: ShortString,
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
) -> lapin::Result<()> {
    channel
        .exchange_declare(
            name,
            kind.lapin(),
            ExchangeDeclareOptions {
                durable,
                auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

fn nacked() -> Error {
    Error::backend("the broker did not accept the message (negative publisher confirm)")
}

#[async_trait]
impl PubSub for RabbitPubSub {
    fn features(&self) -> &'static [PubSubFeature] {
        &[PubSubFeature::MessageTtl]
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        let out = Outgoing::new(req, &self.settings)?;
        self.send(&out).await
    }

    /// Pipelined: every message is sent, then every confirm awaited; a message whose send
    /// failed is tried again alone.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        enum Slot {
            Done(Result<()>),
            Sent(Outgoing, PublisherConfirm, Lost),
            Again(Outgoing),
        }
        let live = self.link.live(self.settings.connect_timeout).await;
        let publisher = live.as_ref().ok().map(|l| (l, l.publisher()));
        let mut slots = Vec::with_capacity(reqs.len());
        for req in reqs {
            let out = match Outgoing::new(req, &self.settings) {
                Ok(out) => out,
                Err(e) => {
                    slots.push(Slot::Done(Err(e)));
                    continue;
                }
            };
            slots.push(match &publisher {
                Some((live, p)) => match live.guard(send_one(p, &out, &self.settings)).await {
                    Ok(confirm) => Slot::Sent(out, confirm, live.lost()),
                    Err(_) => Slot::Again(out),
                },
                None => Slot::Again(out),
            });
        }
        let mut results = Vec::with_capacity(slots.len());
        for slot in slots {
            results.push(match slot {
                Slot::Done(r) => r,
                Slot::Sent(out, confirm, lost) => match lost.guard(confirm).await {
                    Ok(Confirmation::Nack(_)) => Err(nacked()),
                    Ok(_) => Ok(()),
                    Err(_) => self.send(&out).await,
                },
                Slot::Again(out) => self.send(&out).await,
            });
        }
        results
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        let plan = Arc::new(Plan::new(&self.settings, &req)?);
        // Return once the queue is bound, so that what is published next reaches it.
        Reader {
            link: self.link.clone(),
            component: self.component.clone(),
            queue: plan.queue.as_str().into(),
            words: &WORDS,
            reconnect_wait: self.settings.reconnect_wait,
            in_flight: plan.in_flight,
            source: Topology {
                settings: self.settings.clone(),
                plan,
                handler,
            },
        }
        .start(self.settings.connect_timeout)
        .await
    }
}

/// What one subscription declares and how much it takes at once.
#[derive(Debug)]
struct Plan {
    topic: String,
    queue: String,
    bindings: Vec<String>,
    queue_args: FieldTable,
    /// With `enableDeadLetter`: the dead-letter exchange, its queue and that queue's arguments.
    dead_letter: Option<(String, String, FieldTable)>,
    in_flight: usize,
    prefetch: u16,
}

impl Plan {
    fn new(settings: &RabbitMetadata, req: &SubscribeRequest) -> Result<Self> {
        let md = &req.metadata;
        if req.topic.is_empty() || req.topic.len() > 255 {
            return Err(Error::InvalidRequest(
                "a rabbitmq topic (exchange name) must be 1 to 255 bytes long".into(),
            ));
        }
        let queue = match lookup(md, "queueName") {
            Some(q) => q.to_owned(),
            None => {
                let group = Some(req.consumer_group.trim())
                    .filter(|g| !g.is_empty())
                    .or(settings.consumer_id.as_deref())
                    .ok_or_else(|| {
                        Error::InvalidRequest(
                            "consumerID is required for subscriptions without a queueName".into(),
                        )
                    })?;
                format!("{group}-{}", req.topic)
            }
        };
        if queue.len() > 250 {
            // dlq-/dlx- prefixes must fit in 255 bytes too.
            return Err(Error::InvalidRequest(
                "the queue name (<consumerID>-<topic> or queueName) must be at most 250 bytes long"
                    .into(),
            ));
        }
        let bindings = lookup(md, "routingKey")
            .unwrap_or("")
            .split(',')
            .map(str::to_owned)
            .collect();

        let mut base = FieldTable::default();
        if let Some(n) = settings.max_len {
            base.insert("x-max-length".into(), AMQPValue::LongLongInt(n));
        }
        if let Some(n) = settings.max_len_bytes {
            base.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(n));
        }
        let dead_letter = settings.enable_dead_letter.then(|| {
            let mut args = base.clone();
            args.insert("x-queue-mode".into(), AMQPValue::LongString("lazy".into()));
            (format!("dlx-{queue}"), format!("dlq-{queue}"), args)
        });
        let mut args = base;
        if let Some((dlx, _, _)) = &dead_letter {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        if let Some(v) = lookup(md, "maxPriority") {
            let p: u64 = v.trim().parse().map_err(|_| {
                Error::InvalidRequest("maxPriority: expected a non-negative integer".into())
            })?;
            args.insert(
                "x-max-priority".into(),
                AMQPValue::ShortShortUInt(p.min(255) as u8),
            );
        }
        let queue_type = match lookup(md, "queueType").map(str::trim) {
            None | Some("classic") => "classic",
            Some("quorum") => "quorum",
            Some(_) => {
                return Err(Error::InvalidRequest(
                    "invalid queue type: expected classic or quorum".into(),
                ));
            }
        };
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.into()),
        );
        if lookup(md, "singleActiveConsumer")
            .and_then(tandem_components::metadata::parse_bool)
            .unwrap_or(false)
        {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        for (key, arg) in [
            ("maxLenBytes", "x-max-length-bytes"),
            ("maxLen", "x-max-length"),
        ] {
            if let Some(v) = lookup(md, key) {
                let n: i64 = v.trim().parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    Error::InvalidRequest(format!("{key}: expected a non-negative integer"))
                })?;
                args.insert(arg.into(), AMQPValue::LongLongInt(n));
            }
        }

        let in_flight = match settings.concurrency {
            ConcurrencyMode::Single => 1,
            ConcurrencyMode::Parallel => req.max_in_flight.clamp(1, MAX_IN_FLIGHT),
        };
        let prefetch = match settings.prefetch_count {
            0 => in_flight as u16,
            n => n,
        };
        Ok(Self {
            topic: req.topic.clone(),
            queue,
            bindings,
            queue_args: args,
            dead_letter,
            in_flight,
            prefetch,
        })
    }
}

/// The log messages of subscriptions.
static WORDS: Words = Words {
    deferred: "rabbitmq is unreachable; the subscription attaches when it answers",
    refused: "rabbitmq refused the subscription's queue or binding",
    again: "rabbitmq consumer ended; subscribing again",
    consuming: "consuming",
    attached_again: Some("rabbitmq subscription attached again"),
    not_yet: "subscription not attached yet; it keeps trying in the background",
};

/// What one subscription declares and how it hands messages to the handler.
struct Topology {
    settings: Arc<RabbitMetadata>,
    plan: Arc<Plan>,
    handler: Arc<dyn MessageHandler>,
}

impl Source for Topology {
    /// Exchange, dead-letter exchange and queue, queue, bindings, prefetch, consumer.
    async fn attach(&self, channel: &Channel) -> lapin::Result<Consumer> {
        let s = &self.settings;
        let plan = &self.plan;
        declare_exchange(
            channel,
            plan.topic.as_str().into(),
            s.exchange_kind,
            s.durable,
            s.deleted_when_unused,
        )
        .await?;
        if let Some((dlx, dlq, dlq_args)) = &plan.dead_letter {
            // The dead-letter exchange and queue are always durable, as in daprd.
            declare_exchange(
                channel,
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                true,
                s.deleted_when_unused,
            )
            .await?;
            channel
                .queue_declare(
                    dlq.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        auto_delete: s.deleted_when_unused,
                        ..Default::default()
                    },
                    dlq_args.clone(),
                )
                .await?;
            channel
                .queue_bind(
                    dlq.as_str().into(),
                    dlx.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_declare(
                plan.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: s.durable,
                    auto_delete: s.deleted_when_unused,
                    ..Default::default()
                },
                plan.queue_args.clone(),
            )
            .await?;
        for key in &plan.bindings {
            channel
                .queue_bind(
                    plan.queue.as_str().into(),
                    plan.topic.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        if !s.auto_ack {
            channel
                .basic_qos(plan.prefetch, BasicQosOptions::default())
                .await?;
        }
        channel
            .basic_consume(
                plan.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: s.auto_ack,
                    ..Default::default()
                },
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
        tokio::spawn(handle(
            delivery,
            self.plan.topic.clone(),
            self.handler.clone(),
            self.settings.clone(),
            (permit, lost),
        ));
    }
}

/// Hands one message to the handler and settles it with the broker.
async fn handle(
    delivery: lapin::message::Delivery,
    topic: String,
    handler: Arc<dyn MessageHandler>,
    settings: Arc<RabbitMetadata>,
    (_permit, lost): (OwnedSemaphorePermit, Lost),
) {
    let lapin::message::Delivery {
        data,
        properties,
        acker,
        ..
    } = delivery;
    let metadata = if settings.publish_properties_to_metadata {
        properties_to_metadata(&properties)
    } else {
        HashMap::new()
    };
    let msg = Message {
        topic,
        data: Bytes::from(data),
        content_type: properties.content_type().as_ref().map(|c| c.to_string()),
        metadata,
    };
    let verdict = CatchUnwind(handler.handle(msg))
        .await
        .unwrap_or(Delivery::Retry);
    if settings.auto_ack {
        return;
    }
    let settled = match verdict {
        Delivery::Ack => lost.guard(acker.ack(BasicAckOptions::default())).await,
        Delivery::Retry => {
            lost.guard(acker.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            }))
            .await
        }
    };
    if let Err(e) = settled {
        tracing::debug!(error = %e, "could not settle a message; the broker delivers it again");
    }
}

/// The AMQP properties daprd passes on with `publishMessagePropertiesToMetadata`.
fn properties_to_metadata(p: &BasicProperties) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (key, value) in [
        ("metadata.messageid", p.message_id()),
        ("metadata.correlationid", p.correlation_id()),
        ("metadata.type", p.kind()),
        ("metadata.contenttype", p.content_type()),
    ] {
        if let Some(v) = value.as_ref().filter(|v| !v.as_str().is_empty()) {
            out.insert(key.to_owned(), v.to_string());
        }
    }
    if let Some(headers) = p.headers() {
        for (name, value) in headers {
            let text = match value {
                AMQPValue::LongString(s) => s.to_string(),
                AMQPValue::ShortString(s) => s.to_string(),
                AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
                AMQPValue::Boolean(b) => b.to_string(),
                AMQPValue::ShortShortInt(n) => n.to_string(),
                AMQPValue::ShortShortUInt(n) => n.to_string(),
                AMQPValue::ShortInt(n) => n.to_string(),
                AMQPValue::ShortUInt(n) => n.to_string(),
                AMQPValue::LongInt(n) => n.to_string(),
                AMQPValue::LongUInt(n) => n.to_string(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::Float(n) => n.to_string(),
                AMQPValue::Double(n) => n.to_string(),
                AMQPValue::Timestamp(n) => n.to_string(),
                AMQPValue::Void => continue,
                other => format!("{other:?}"),
            };
            out.insert(format!("metadata.{name}"), text);
        }
    }
    out
}

/// Runs a handler's future, turning a panic into `None` (the message is then requeued).
struct CatchUnwind<'a>(Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>);

impl Future for CatchUnwind<'_> {
    type Output = Option<Delivery>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Some(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> RabbitMetadata {
        let mut md = Metadata::new("rabbit", "app");
        for (k, v) in pairs {
            md.insert(*k, *v);
        }
        RabbitMetadata::from_metadata(&md).unwrap()
    }

    fn sub(topic: &str, group: &str, meta: &[(&str, &str)], in_flight: usize) -> SubscribeRequest {
        SubscribeRequest {
            topic: topic.into(),
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            consumer_group: group.into(),
            max_in_flight: in_flight,
        }
    }

    fn arg<'a>(t: &'a FieldTable, k: &str) -> Option<&'a AMQPValue> {
        t.inner().get(k)
    }

    #[test]
    fn queue_names_follow_dapr() {
        let s = settings(&[]);
        let p = Plan::new(&s, &sub("orders", "app1", &[], 4)).unwrap();
        assert_eq!(p.queue, "app1-orders");
        assert_eq!(p.bindings, [""]);
        assert_eq!(p.prefetch, 4);
        assert_eq!(
            arg(&p.queue_args, "x-queue-type"),
            Some(&AMQPValue::LongString("classic".into()))
        );
        let p = Plan::new(&s, &sub("orders", "app1", &[("queueName", "mine")], 4)).unwrap();
        assert_eq!(p.queue, "mine");
        let s = settings(&[("consumerID", "fallback")]);
        let p = Plan::new(&s, &sub("orders", "", &[], 4)).unwrap();
        assert_eq!(p.queue, "fallback-orders");
        assert!(Plan::new(&settings(&[]), &sub("orders", "", &[], 4)).is_err());
    }

    #[test]
    fn queue_arguments() {
        let s = settings(&[
            ("enableDeadLetter", "true"),
            ("maxLen", "100"),
            ("prefetchCount", "7"),
            ("concurrencyMode", "single"),
        ]);
        let p = Plan::new(
            &s,
            &sub(
                "t",
                "g",
                &[
                    ("routingKey", "a.b,c.#"),
                    ("maxPriority", "300"),
                    ("queueType", "quorum"),
                    ("singleActiveConsumer", "true"),
                    ("maxLenBytes", "2048"),
                ],
                16,
            ),
        )
        .unwrap();
        assert_eq!(p.bindings, ["a.b", "c.#"]);
        assert_eq!(p.in_flight, 1, "single");
        assert_eq!(p.prefetch, 7);
        let a = &p.queue_args;
        assert_eq!(arg(a, "x-max-length"), Some(&AMQPValue::LongLongInt(100)));
        assert_eq!(
            arg(a, "x-max-length-bytes"),
            Some(&AMQPValue::LongLongInt(2048))
        );
        assert_eq!(
            arg(a, "x-max-priority"),
            Some(&AMQPValue::ShortShortUInt(255))
        );
        assert_eq!(
            arg(a, "x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            arg(a, "x-single-active-consumer"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(
            arg(a, "x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("dlx-g-t".into()))
        );
        let (dlx, dlq, dlq_args) = p.dead_letter.as_ref().unwrap();
        assert_eq!((dlx.as_str(), dlq.as_str()), ("dlx-g-t", "dlq-g-t"));
        assert_eq!(
            arg(dlq_args, "x-queue-mode"),
            Some(&AMQPValue::LongString("lazy".into()))
        );
        assert_eq!(
            arg(dlq_args, "x-max-length"),
            Some(&AMQPValue::LongLongInt(100))
        );
        assert!(Plan::new(&s, &sub("t", "g", &[("queueType", "stream")], 1)).is_err());
        assert!(Plan::new(&s, &sub("t", "g", &[("maxPriority", "high")], 1)).is_err());
    }

    #[test]
    fn outgoing_properties() {
        let s = settings(&[("deliveryMode", "2"), ("ttlInSeconds", "60")]);
        let req = |meta: &[(&str, &str)]| PublishRequest {
            topic: "t".into(),
            data: Bytes::from_static(b"x"),
            content_type: Some("application/cloudevents+json".into()),
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let out = Outgoing::new(req(&[]), &s).unwrap();
        let p = &out.properties;
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/cloudevents+json")
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.expiration().as_ref().map(|e| e.as_str()),
            Some("60000"),
            "the component's default TTL"
        );
        let out = Outgoing::new(
            req(&[
                ("ttlInSeconds", "2"),
                ("routingKey", "k"),
                ("priority", "9"),
                ("contentType", "text/csv"),
                ("messageID", "m1"),
                ("correlationID", "c1"),
                ("type", "kind"),
            ]),
            &s,
        )
        .unwrap();
        let p = &out.properties;
        assert_eq!(out.routing_key.as_str(), "k");
        assert_eq!(p.expiration().as_ref().map(|e| e.as_str()), Some("2000"));
        assert_eq!(*p.priority(), Some(9));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("text/csv")
        );
        assert_eq!(p.message_id().as_ref().map(|c| c.as_str()), Some("m1"));
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("c1"));
        assert_eq!(p.kind().as_ref().map(|c| c.as_str()), Some("kind"));
        assert!(matches!(
            Outgoing::new(req(&[("ttlInSeconds", "soon")]), &s),
            Err(Error::InvalidRequest(_))
        ));
        let plain = Outgoing::new(
            PublishRequest {
                topic: "t".into(),
                ..Default::default()
            },
            &settings(&[]),
        )
        .unwrap();
        assert_eq!(
            plain.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain"),
            "daprd's default"
        );
        assert_eq!(*plain.properties.delivery_mode(), None);
        assert_eq!(*plain.properties.expiration(), None);
    }

    #[test]
    fn properties_become_metadata_when_asked() {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        headers.insert("n".into(), AMQPValue::LongInt(3));
        let p = BasicProperties::default()
            .with_message_id("m".into())
            .with_content_type("text/plain".into())
            .with_headers(headers);
        let md = properties_to_metadata(&p);
        assert_eq!(md["metadata.messageid"], "m");
        assert_eq!(md["metadata.contenttype"], "text/plain");
        assert_eq!(md["metadata.tenant"], "acme");
        assert_eq!(md["metadata.n"], "3");
        assert!(!md.contains_key("metadata.correlationid"));
    }
}
