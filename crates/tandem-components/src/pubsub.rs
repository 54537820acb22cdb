//! The pub/sub contract (`pubsub.*` components).
//!
//! Components move opaque bytes: the runtime builds and reads CloudEvent envelopes, routes
//! messages and talks to the app. A component publishes, and for each subscription calls a
//! [`MessageHandler`] with every message of the topic, acknowledging it to the broker only
//! when the handler answers [`Delivery::Ack`]. [`Delivery::Retry`] (or a crash before the
//! answer) makes the component deliver the message again later: at-least-once.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::state::RequestMetadata;

/// A message to publish.
#[derive(Clone, Debug, Default)]
pub struct PublishRequest {
    /// Topic.
    pub topic: String,
    /// Payload (usually a CloudEvent JSON document built by the runtime).
    pub data: Bytes,
    /// Content type of `data`.
    pub content_type: Option<String>,
    /// Request metadata (`ttlInSeconds`, component-specific keys such as `partitionKey`).
    pub metadata: RequestMetadata,
}

/// A message delivered to a subscriber.
#[derive(Clone, Debug, Default)]
pub struct Message {
    /// The topic it was published to (the concrete topic when subscribed with a wildcard).
    pub topic: String,
    /// Payload bytes as published.
    pub data: Bytes,
    /// Content type, when the broker carries one.
    pub content_type: Option<String>,
    /// Broker metadata (headers, properties) carried with the message.
    pub metadata: HashMap<String, String>,
}

/// The subscriber's verdict on one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Processed (or deliberately dropped): acknowledge to the broker.
    Ack,
    /// Not processed: the component delivers it again later.
    Retry,
}

/// Receives messages of one subscription. Called concurrently, up to
/// [`SubscribeRequest::max_in_flight`] messages at a time.
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one message and says whether to acknowledge it.
    async fn handle(&self, msg: Message) -> Delivery;
}

/// What to subscribe to.
#[derive(Clone, Debug, Default)]
pub struct SubscribeRequest {
    /// Topic (may hold wildcards for brokers with `SUBSCRIBE_WILDCARDS`).
    pub topic: String,
    /// Subscription metadata.
    pub metadata: RequestMetadata,
    /// Consumer group: subscribers in one group share the messages (competing consumers);
    /// each group receives every message. The runtime passes `consumerID`, defaulting to the
    /// app-id.
    pub consumer_group: String,
    /// Largest number of messages handed to the handler at once (at least 1).
    pub max_in_flight: usize,
}

/// Behaviours a pub/sub component declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubSubFeature {
    /// Honours per-message `ttlInSeconds` natively.
    MessageTtl,
    /// Topic wildcards in subscriptions.
    SubscribeWildcards,
    /// Native bulk publish.
    BulkPublish,
    /// Native bulk subscribe.
    BulkSubscribe,
}

impl PubSubFeature {
    /// Dapr's capability string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageTtl => "MESSAGE_TTL",
            Self::SubscribeWildcards => "SUBSCRIBE_WILDCARDS",
            Self::BulkPublish => "BULK_PUBSUB",
            Self::BulkSubscribe => "BULK_SUBSCRIBE_IMMEDIATE",
        }
    }
}

/// A running subscription. Dropping it stops delivery; [`Subscription::close`] also waits for
/// the messages being handled to finish.
#[derive(Debug)]
pub struct Subscription {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Subscription {
    /// Wraps a delivery task. The task must watch `stop` (see [`Subscription::channel`]) and
    /// return once it turns `true`, after in-flight handlers finish.
    pub fn new(stop: watch::Sender<bool>, task: JoinHandle<()>) -> Self {
        Self {
            stop,
            task: Some(task),
        }
    }

    /// A fresh stop channel for a delivery task.
    pub fn channel() -> (watch::Sender<bool>, watch::Receiver<bool>) {
        watch::channel(false)
    }

    /// Stops delivering and waits for in-flight messages.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A pub/sub component.
#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    /// The behaviours this component honours.
    fn features(&self) -> &'static [PubSubFeature];

    /// Publishes one message; returns once the broker has accepted it durably (as durable as
    /// the broker is).
    async fn publish(&self, req: PublishRequest) -> Result<()>;

    /// Publishes several messages; one result per message, in order. The default publishes
    /// them one by one.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.publish(req).await);
        }
        out
    }

    /// Starts delivering the messages of `req.topic` to `handler`.
    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription>;
}
