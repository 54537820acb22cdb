//! Streaming subscriptions (gRPC `SubscribeTopicEventsAlpha1`, §4.5 of the contract): the app
//! opens a stream instead of exposing a port, receives each event on it and answers with the
//! event's id and a verdict.
//!
//! [`Runtime::subscribe_stream`] subscribes to the component like any other subscription; the
//! handler turns each message into a [`StreamEvent`] (the CloudEvent split into its attributes,
//! `data` decoded), hands it to the front end and waits for the verdict given through
//! [`Acker::ack`]: `SUCCESS` acknowledges, `DROP` dead-letters (or acknowledges), `RETRY` leaves
//! the message to the component to deliver again. When the stream ends, events still waiting
//! for a verdict are retried. The subscription is listed by the metadata API with type
//! `STREAMING` while it lives; routing rules do not apply (the path is always `/`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tandem_components::pubsub::{
    Delivery, Message, MessageHandler, PubSub, PublishRequest, SubscribeRequest, Subscription,
};
use tokio::sync::{mpsc, oneshot};

use super::cloudevent::{self, is_json};
use super::delivery::Verdict;
use crate::Runtime;
use crate::error::ApiError;
use crate::metadata::{MetadataService, SubscriptionInfo};

/// What a streaming subscriber asks for (the stream's initial request).
#[derive(Clone, Debug, Default)]
pub struct StreamRequest {
    /// Pub/sub component name.
    pub pubsub: String,
    /// Topic.
    pub topic: String,
    /// Subscription metadata (`rawPayload`, `consumerID`, …).
    pub metadata: HashMap<String, String>,
    /// Dead-letter topic.
    pub dead_letter: Option<String>,
}

/// One event on its way to the streaming subscriber.
#[derive(Clone, Debug, Default)]
pub struct StreamEvent {
    /// CloudEvent `id` (the subscriber acknowledges with it).
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub r#type: String,
    /// `specversion`.
    pub spec_version: String,
    /// `datacontenttype`.
    pub data_content_type: String,
    /// `data` as bytes: JSON text for JSON data, the text of string data, decoded
    /// `data_base64`.
    pub data: Bytes,
    /// The topic.
    pub topic: String,
    /// The pub/sub component.
    pub pubsub_name: String,
    /// Every other attribute (extensions, `traceparent`, `time`, …).
    pub extensions: Map<String, Value>,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Verdict>>>>;

/// Hands verdicts back to the events waiting for them.
#[derive(Clone, Debug)]
pub struct Acker {
    pending: Pending,
}

impl Acker {
    /// Delivers the subscriber's verdict on event `id`; `false` when no event waits for it.
    pub fn ack(&self, id: &str, verdict: Verdict) -> bool {
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        waiting.is_some_and(|tx| tx.send(verdict).is_ok())
    }
}

/// A live streaming subscription. Dropping it stops delivery, retries the events waiting for a
/// verdict and removes it from the metadata API.
pub struct StreamingSubscription {
    events: mpsc::Receiver<StreamEvent>,
    acker: Acker,
    _guard: Guard,
}

impl StreamingSubscription {
    /// Where verdicts go (hand it to the task reading the subscriber's answers).
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// Polls for the next event; `None` once the subscription stopped.
    pub fn poll_event(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<StreamEvent>> {
        self.events.poll_recv(cx)
    }
}

impl std::fmt::Debug for StreamingSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingSubscription")
            .finish_non_exhaustive()
    }
}

struct Guard {
    metadata: Arc<MetadataService>,
    listed: u64,
    pending: Pending,
    _subscription: Subscription,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.metadata.remove_streaming(self.listed);
        // Dropping the senders answers `Retry` to every event still waiting.
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Runtime {
    /// Starts a streaming subscription (the front end validated that pub/sub and topic are
    /// set). Fails like publishing does when the pub/sub does not exist.
    pub async fn subscribe_stream(
        &self,
        req: StreamRequest,
    ) -> Result<StreamingSubscription, ApiError> {
        let entry = self.pubsub.find(&req.pubsub, &req.topic)?;
        let raw_payload = req
            .metadata
            .get("rawPayload")
            .and_then(|v| tandem_components::metadata::parse_bool(v))
            .unwrap_or(false);
        let consumer_group = req
            .metadata
            .get("consumerID")
            .filter(|c| !c.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| entry.consumer_group.clone());
        let (tx, events) = mpsc::channel(self.max_in_flight.max(1));
        let pending: Pending = Arc::default();
        let handler = Arc::new(StreamHandler {
            pubsub_name: req.pubsub.clone(),
            component: entry.component.clone(),
            dead_letter: req.dead_letter.clone().filter(|t| !t.is_empty()),
            raw_payload,
            tx,
            pending: pending.clone(),
        });
        let subscription = entry
            .component
            .subscribe(
                SubscribeRequest {
                    topic: req.topic.clone(),
                    metadata: req.metadata.clone(),
                    consumer_group,
                    max_in_flight: self.max_in_flight.max(1),
                },
                handler,
            )
            .await
            .map_err(|e| {
                ApiError::new(
                    crate::ErrorCode::Generic,
                    format!(
                        "error subscribing to topic {} in pubsub {}: {e}",
                        req.topic, req.pubsub
                    ),
                )
            })?;
        tracing::info!(pubsub = %req.pubsub, topic = %req.topic, "streaming subscription started");
        let listed = self.metadata.add_streaming(SubscriptionInfo {
            pubsub_name: req.pubsub,
            topic: req.topic,
            metadata: req.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            rules: vec![(String::new(), "/".to_owned())],
            dead_letter_topic: req.dead_letter.unwrap_or_default(),
            kind: "STREAMING",
        });
        Ok(StreamingSubscription {
            events,
            acker: Acker {
                pending: pending.clone(),
            },
            _guard: Guard {
                metadata: self.metadata.clone(),
                listed,
                pending,
                _subscription: subscription,
            },
        })
    }
}

struct StreamHandler {
    pubsub_name: String,
    component: Arc<dyn PubSub>,
    dead_letter: Option<String>,
    raw_payload: bool,
    tx: mpsc::Sender<StreamEvent>,
    pending: Pending,
}

impl StreamHandler {
    async fn dead_letter(&self, msg: &Message) -> Delivery {
        let Some(topic) = &self.dead_letter else {
            return Delivery::Ack;
        };
        let req = PublishRequest {
            topic: topic.clone(),
            data: msg.data.clone(),
            content_type: msg.content_type.clone(),
            metadata: msg.metadata.clone(),
        };
        match tokio::time::timeout(Duration::from_secs(30), self.component.publish(req)).await {
            Ok(Ok(())) => Delivery::Ack,
            _ => {
                tracing::warn!(pubsub = %self.pubsub_name, topic = %topic, "dead-letter publish failed; the message will be delivered again");
                Delivery::Retry
            }
        }
    }

    fn forget(&self, id: &str) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

#[async_trait]
impl MessageHandler for StreamHandler {
    async fn handle(&self, msg: Message) -> Delivery {
        let body = if self.raw_payload {
            cloudevent::wrap_raw(&msg.data, &msg.topic, &self.pubsub_name, &msg.metadata)
        } else {
            msg.data.clone()
        };
        let Some(event) = split_event(&body, &msg.topic, &self.pubsub_name) else {
            tracing::warn!(pubsub = %self.pubsub_name, topic = %msg.topic, "message is not a CloudEvent");
            return self.dead_letter(&msg).await;
        };
        if let Some(Value::String(at)) = event.extensions.get("expiration") {
            let probe = Map::from_iter([("expiration".to_owned(), Value::String(at.clone()))]);
            if cloudevent::expired(&probe) {
                tracing::warn!(pubsub = %self.pubsub_name, topic = %msg.topic, "dropping expired message");
                return self.dead_letter(&msg).await;
            }
        }
        let id = event.id.clone();
        let (reply, verdict) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.contains_key(&id) {
                // The same event is already out (a redelivery): let the component retry it later.
                return Delivery::Retry;
            }
            pending.insert(id.clone(), reply);
        }
        if self.tx.send(event).await.is_err() {
            self.forget(&id);
            return Delivery::Retry;
        }
        match verdict.await {
            Ok(Verdict::Success) => Delivery::Ack,
            Ok(Verdict::Drop) => {
                tracing::warn!(pubsub = %self.pubsub_name, topic = %msg.topic, "the subscriber dropped the message");
                self.dead_letter(&msg).await
            }
            Ok(Verdict::Retry) | Err(_) => Delivery::Retry,
        }
    }
}

fn text(raw: Option<&RawValue>) -> String {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
        .unwrap_or_default()
}

/// Splits a CloudEvent into its attributes; `None` if it is not a JSON object.
pub fn split_event(body: &[u8], topic: &str, pubsub: &str) -> Option<StreamEvent> {
    let mut attrs: HashMap<String, &RawValue> = serde_json::from_slice(body).ok()?;
    let mut take = |k: &str| attrs.remove(k);
    let id = text(take("id"));
    let source = text(take("source"));
    let r#type = text(take("type"));
    let spec_version = text(take("specversion"));
    let data_content_type = text(take("datacontenttype"));
    let data_base64 = take("data_base64");
    let data = take("data");
    let event_topic = text(take("topic"));
    let event_pubsub = text(take("pubsubname"));
    let data = if let Some(b64) = data_base64 {
        Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(text(Some(b64)))
                .unwrap_or_default(),
        )
    } else {
        match data {
            None => Bytes::new(),
            Some(raw) if raw.get() == "null" => Bytes::new(),
            Some(raw) if raw.get().starts_with('"') && !is_json(&data_content_type) => {
                Bytes::from(text(Some(raw)))
            }
            Some(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
        }
    };
    let extensions = attrs
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_str::<Value>(v.get()).ok().map(|v| (k, v)))
        .collect();
    Some(StreamEvent {
        id,
        source,
        r#type,
        spec_version,
        data_content_type,
        data,
        topic: if event_topic.is_empty() {
            topic.to_owned()
        } else {
            event_topic
        },
        pubsub_name: if event_pubsub.is_empty() {
            pubsub.to_owned()
        } else {
            event_pubsub
        },
        extensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_into_attributes() {
        let ev = split_event(
            br#"{"id":"1","source":"s","type":"t","specversion":"1.0","datacontenttype":"application/json","data":{"n": 12345678901234567890123},"topic":"orders","pubsubname":"ps","traceparent":"tp"}"#,
            "x",
            "y",
        )
        .unwrap();
        assert_eq!(ev.id, "1");
        assert_eq!(ev.topic, "orders");
        assert_eq!(&ev.data[..], br#"{"n": 12345678901234567890123}"#);
        assert_eq!(ev.extensions["traceparent"], "tp");
        assert!(!ev.extensions.contains_key("data"));

        let text = split_event(
            br#"{"id":"2","datacontenttype":"text/plain","data":"hi"}"#,
            "t",
            "p",
        )
        .unwrap();
        assert_eq!(&text.data[..], b"hi");
        assert_eq!(text.topic, "t");
        let bin = split_event(br#"{"id":"3","data_base64":"AAEC"}"#, "t", "p").unwrap();
        assert_eq!(&bin.data[..], &[0, 1, 2]);
        assert!(split_event(b"nope", "t", "p").is_none());
    }

    #[test]
    fn acks_reach_the_waiting_event() {
        let acker = Acker {
            pending: Arc::default(),
        };
        let (tx, mut rx) = oneshot::channel();
        acker.pending.lock().unwrap().insert("a".into(), tx);
        assert!(!acker.ack("b", Verdict::Success));
        assert!(acker.ack("a", Verdict::Drop));
        assert_eq!(rx.try_recv().unwrap(), Verdict::Drop);
    }
}
