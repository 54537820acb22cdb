//! `pubsub.kafka`: topics are Kafka topics, consumer groups are Kafka consumer groups.
//!
//! # Publishing
//!
//! A publish returns once the brokers acknowledged the record (`producerRequiredAcks`,
//! `writeTimeout` at most). The record key is the `partitionKey` metadata (else `__key`,
//! else `key`); `partitionNumber` picks the partition; every metadata entry is also sent as
//! a header, as daprd does. Keyed records land on the partition daprd's client would choose
//! (FNV-1a of the key), records without a key go round robin. Data `null` publishes a
//! tombstone. Bulk publishing sends every record before waiting for the acknowledgements
//! (`BULK_PUBSUB`).
//!
//! # Subscribing
//!
//! Each subscription is a member of its consumer group: `consumerGroup` when the component
//! sets it, else the group the runtime passes (`consumerID`, default the app-id). Members of
//! one group share the topic's partitions; every group gets every record. The topic is
//! created if the brokers auto-create topics (a metadata request, as daprd's client makes).
//! `subscribe` returns once the group gave this member its partitions, so what is published
//! afterwards reaches the group even with `initialOffset: newest`.
//!
//! A record is handed to the handler with metadata `__key`, `__topic`, `__partition`,
//! `__offset`, `__timestamp` and its headers; its offset is committed only after the
//! handler answered [`Delivery::Ack`]. [`Delivery::Retry`] delivers it again after
//! `consumeRetryInterval` (doubling up to 5 s), in process, and nothing after it in its
//! partition is handed out meanwhile (`deliveryOrder: partition`, the default) or nothing of
//! its key (`deliveryOrder: key`). The details are in [`crate::consumer`].

use std::sync::Arc;

use async_trait::async_trait;
use tandem_components::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PubSubFeature, PublishRequest, SubscribeRequest,
    Subscription,
};
use tandem_components::{Error, Metadata, Result};

use crate::client::{Outgoing, Producer, Record, settle};
use crate::consumer::{self, Sink, Spec};
use crate::metadata::{KafkaMetadata, Role};

/// The `pubsub.kafka` component. See the module documentation for its semantics.
///
/// Built with [`KafkaPubSub::build`], which never waits for the brokers.
pub struct KafkaPubSub {
    settings: Arc<KafkaMetadata>,
    producer: Arc<Producer>,
    component: Arc<str>,
}

impl std::fmt::Debug for KafkaPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPubSub")
            .field("component", &self.component)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KafkaPubSub {
    /// Decodes the metadata (see [`KafkaMetadata`]) and creates the producer, which connects
    /// in the background: brokers that are down do not fail the build; publishing fails
    /// after `writeTimeout` and subscriptions attach when they answer.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = Arc::new(KafkaMetadata::from_metadata(metadata, Role::PubSub)?);
        let component: Arc<str> = metadata.name.as_str().into();
        let producer = Arc::new(Producer::new(&settings, component.clone())?);
        Ok(Self {
            settings,
            producer,
            component,
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &KafkaMetadata {
        &self.settings
    }
}

#[async_trait]
impl PubSub for KafkaPubSub {
    fn features(&self) -> &'static [PubSubFeature] {
        &[PubSubFeature::BulkPublish]
    }

    async fn publish(&self, req: PublishRequest) -> Result<()> {
        let out = Outgoing::new(&req.topic, req.data, &req.metadata, &self.settings)?;
        self.producer.send(&out).await
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Vec<Result<()>> {
        let mut waiting = Vec::with_capacity(reqs.len());
        for req in reqs {
            let queued = match Outgoing::new(&req.topic, req.data, &req.metadata, &self.settings) {
                Ok(out) => self.producer.enqueue(&out).await,
                Err(e) => Err(e),
            };
            waiting.push(queued);
        }
        let mut results = Vec::with_capacity(waiting.len());
        for w in waiting {
            results.push(match w {
                Ok(rx) => settle(rx).await,
                Err(e) => Err(e),
            });
        }
        results
    }

    async fn subscribe(
        &self,
        req: SubscribeRequest,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription> {
        if req.metadata.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("valueSchemaType") && !v.eq_ignore_ascii_case("none")
        }) {
            return Err(Error::InvalidRequest(
                "valueSchemaType: schema registries (Avro) are not supported by Tandem".into(),
            ));
        }
        let group = self
            .settings
            .consumer_group
            .clone()
            .unwrap_or(req.consumer_group);
        let spec = Spec {
            topics: vec![req.topic],
            group,
            max_in_flight: req.max_in_flight,
        };
        let sink = Arc::new(HandlerSink {
            handler,
            settings: self.settings.clone(),
        });
        consumer::start(
            self.settings.clone(),
            self.component.clone(),
            self.producer.clone(),
            spec,
            sink,
        )
        .await
    }
}

/// Hands records to a pub/sub handler as messages.
struct HandlerSink {
    handler: Arc<dyn MessageHandler>,
    settings: Arc<KafkaMetadata>,
}

#[async_trait]
impl Sink for HandlerSink {
    async fn deliver(&self, record: &Record) -> bool {
        let msg = Message {
            topic: record.topic.to_string(),
            data: record.data(),
            content_type: None,
            metadata: record.metadata(&self.settings),
        };
        self.handler.handle(msg).await == Delivery::Ack
    }
}
