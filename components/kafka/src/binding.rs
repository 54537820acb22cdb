//! `bindings.kafka`: an output binding writing to `publishTopic` and an input binding
//! reading `topics`, on the same settings as `pubsub.kafka`.
//!
//! - **Output**: the one operation `create` publishes the request's data to `publishTopic`,
//!   keyed by the metadata `partitionKey` (else `__key`, else `key`), with every metadata
//!   entry as a header; it returns once the brokers acknowledged the record.
//! - **Input**: reads `topics` (comma-separated) in the consumer group `consumerGroup` (else
//!   `consumerID`, else the app-id) and hands each record to the app with the delivery
//!   metadata of `pubsub.kafka` (`__key`, `__topic`, `__partition`, `__offset`,
//!   `__timestamp`, the headers). Its offset is committed after the app accepted it. A record
//!   the app refused is skipped (with a warning) unless `consumeRetryEnabled: true`, which
//!   delivers it again after `consumeRetryInterval` (Dapr's defaults for bindings). Up to
//!   [`INPUT_IN_FLIGHT`] records are with the app at once, one per partition
//!   (`deliveryOrder: partition`) or per key (`deliveryOrder: key`).

use std::sync::Arc;

use async_trait::async_trait;
use tandem_components::bindings::{
    BindingEvent, EventHandler, InputBinding, InvokeRequest, InvokeResponse, OutputBinding,
};
use tandem_components::pubsub::Subscription;
use tandem_components::{Error, Metadata, Result};

use crate::client::{Outgoing, Producer, Record};
use crate::consumer::{self, Sink, Spec};
use crate::metadata::{KafkaMetadata, Role};

/// The most records of one input binding with the app at once.
pub const INPUT_IN_FLIGHT: usize = 16;

/// The `bindings.kafka` component (input and output).
pub struct KafkaBinding {
    settings: Arc<KafkaMetadata>,
    producer: Arc<Producer>,
    component: Arc<str>,
    group: String,
}

impl std::fmt::Debug for KafkaBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBinding")
            .field("component", &self.component)
            .field("group", &self.group)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl KafkaBinding {
    /// Decodes the metadata (see [`KafkaMetadata`]; `publishTopic` and `topics` are the
    /// binding's own fields) and creates the producer, which connects in the background.
    pub async fn build(metadata: &Metadata) -> Result<Self> {
        let settings = Arc::new(KafkaMetadata::from_metadata(metadata, Role::Binding)?);
        let component: Arc<str> = metadata.name.as_str().into();
        let producer = Arc::new(Producer::new(&settings, component.clone())?);
        let group = settings.binding_group(&metadata.app_id);
        Ok(Self {
            settings,
            producer,
            component,
            group,
        })
    }

    /// The decoded settings.
    pub fn settings(&self) -> &KafkaMetadata {
        &self.settings
    }
}

#[async_trait]
impl OutputBinding for KafkaBinding {
    fn operations(&self) -> &'static [&'static str] {
        &["create"]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        let topic = self.settings.publish_topic.as_deref().ok_or_else(|| {
            Error::InvalidRequest("kafka binding: publishTopic is not set".into())
        })?;
        let out = Outgoing::new(topic, req.data, &req.metadata, &self.settings)?;
        self.producer.send(&out).await?;
        Ok(InvokeResponse::default())
    }
}

#[async_trait]
impl InputBinding for KafkaBinding {
    async fn read(&self, handler: Arc<dyn EventHandler>) -> Result<Subscription> {
        if self.settings.topics.is_empty() {
            tracing::warn!(component = %self.component, "kafka binding: no topics set; the input binding reads nothing");
            let (stop, mut stopped) = Subscription::channel();
            let task = tokio::spawn(async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
            return Ok(Subscription::new(stop, task));
        }
        let spec = Spec {
            topics: self.settings.topics.clone(),
            group: self.group.clone(),
            max_in_flight: INPUT_IN_FLIGHT,
        };
        let sink = Arc::new(EventSink {
            handler,
            settings: self.settings.clone(),
            component: self.component.clone(),
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

/// Hands records to the app as binding events.
struct EventSink {
    handler: Arc<dyn EventHandler>,
    settings: Arc<KafkaMetadata>,
    component: Arc<str>,
}

#[async_trait]
impl Sink for EventSink {
    async fn deliver(&self, record: &Record) -> bool {
        let event = BindingEvent {
            data: record.data(),
            metadata: record.metadata(&self.settings),
        };
        match self.handler.handle(event).await {
            Ok(_) => true,
            Err(why) => {
                tracing::debug!(component = %self.component, topic = %record.topic, partition = record.partition, offset = record.offset, error = %why, "the app did not accept a kafka event");
                false
            }
        }
    }
}
