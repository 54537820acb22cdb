//! Delivering messages to the app, and reading its verdict (§5.5.3–§5.5.5): over HTTP here,
//! over gRPC through [`crate::app_channel::grpc`], with one retry and dead-letter policy.
//!
//! A message is routed, posted, and retried in-process a few times with exponential backoff
//! when the app asks for it (`RETRY`, a non-2xx status other than 404, a transport error).
//! When those retries run out the message goes to the dead-letter topic if one is set
//! (and is acknowledged), otherwise it is left to the component to deliver again later.
//! `DROP`, 404 and unroutable or expired events are acknowledged (dead-lettered if set).
//!
//! When the pub/sub has an inbound `Resiliency` policy, that policy replaces the built-in
//! retries: each attempt runs under its timeout and circuit breaker, `RETRY` answers are
//! retried as its retry policy says, and what is left is handled as above.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tandem_components::pubsub::{Delivery, Message, MessageHandler, PubSub, PublishRequest};
use tokio::sync::{mpsc, oneshot};

use super::cloudevent::{self, CLOUDEVENT_CONTENT_TYPE};
use super::routing::{Rule, route};
use crate::app_channel::{AppChannel, full_body, grpc};
use crate::resiliency::{self, Policy};
use crate::trace::{SpanContext, SpanKind, Tracer};

/// In-process delivery attempts before giving the message back (or dead-lettering it).
pub const ATTEMPTS: u32 = 4;
/// Backoff before the second attempt; doubles each time.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The largest app answer read when deciding a verdict.
const MAX_ANSWER: usize = 1 << 20;

/// The app's verdict on one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Processed.
    Success,
    /// Try again.
    Retry,
    /// Drop (dead-letter when configured).
    Drop,
}

/// Reads a verdict from a status code and body, per the contract's table.
pub fn verdict(status: u16, body: &[u8]) -> Verdict {
    if status == 404 {
        return Verdict::Drop;
    }
    if !(200..300).contains(&status) {
        return Verdict::Retry;
    }
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Success;
    };
    let status = obj
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("status"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or("");
    match status.to_ascii_uppercase().as_str() {
        "" | "SUCCESS" => Verdict::Success,
        "DROP" => Verdict::Drop,
        _ => Verdict::Retry,
    }
}

/// Bulk-subscribe settings of a subscription.
#[derive(Clone, Copy, Debug)]
pub struct BulkSettings {
    /// `maxMessagesCount` (default 100).
    pub max_messages: usize,
    /// `maxAwaitDurationMs` (default 1000).
    pub max_await: Duration,
}

/// Delivers one subscription's messages to the app.
pub struct AppDelivery {
    pub(crate) pubsub_name: String,
    pub(crate) component: Arc<dyn PubSub>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) dead_letter: Option<String>,
    pub(crate) raw_payload: bool,
    pub(crate) channel: Arc<AppChannel>,
    pub(crate) bulk: Option<mpsc::Sender<Pending>>,
    /// The pub/sub's inbound resiliency policy, if any.
    pub(crate) inbound: Option<Arc<Policy>>,
    /// Where deliveries are counted.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Consumer spans.
    pub(crate) tracer: Tracer,
}

/// A message waiting in a bulk batch, with where to send its verdict.
pub struct Pending {
    event: Bytes,
    entry_metadata: HashMap<String, String>,
    path: String,
    topic: String,
    reply: oneshot::Sender<Verdict>,
}

impl AppDelivery {
    fn event_bytes(&self, msg: &Message) -> Bytes {
        if self.raw_payload {
            cloudevent::wrap_raw(&msg.data, &msg.topic, &self.pubsub_name, &msg.metadata)
        } else {
            msg.data.clone()
        }
    }

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
            Ok(Err(e)) => {
                tracing::warn!(pubsub = %self.pubsub_name, topic = %topic, error = %e, "dead-letter publish failed; the message will be delivered again");
                Delivery::Retry
            }
            Err(_) => {
                tracing::warn!(pubsub = %self.pubsub_name, topic = %topic, "dead-letter publish timed out; the message will be delivered again");
                Delivery::Retry
            }
        }
    }

    async fn post(
        &self,
        path: &str,
        body: Bytes,
        content_type: &'static str,
        metadata: &HashMap<String, String>,
        traceparent: Option<&str>,
        topic: &str,
    ) -> Verdict {
        if self.channel.is_grpc() {
            return grpc::topic_event(
                &self.channel,
                &body,
                topic,
                &self.pubsub_name,
                path,
                metadata,
                traceparent,
            )
            .await;
        }
        let mut req = Request::builder().method(Method::POST);
        if let Some(h) = req.headers_mut() {
            for (k, v) in metadata {
                if k.eq_ignore_ascii_case("content-type")
                    || k.eq_ignore_ascii_case("content-length")
                {
                    continue;
                }
                if let (Ok(name), Ok(value)) = (
                    HeaderName::try_from(k.as_str()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    h.insert(name, value);
                }
            }
            if let Ok(v) = HeaderValue::try_from(self.pubsub_name.as_str()) {
                h.insert("pubsubname", v);
            }
            if let Some(tp) = traceparent.and_then(|t| HeaderValue::try_from(t).ok()) {
                h.insert("traceparent", tp);
            }
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
        }
        let Ok(req) = req.body(full_body(body)) else {
            return Verdict::Retry;
        };
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        match self.channel.send(req, &path).await {
            Ok(resp) => {
                let status = resp.response.status().as_u16();
                let body = Limited::new(resp.response.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                verdict(status, &body)
            }
            Err(e) => {
                tracing::debug!(pubsub = %self.pubsub_name, error = %e, "delivery to the app failed");
                Verdict::Retry
            }
        }
    }
}

#[async_trait]
impl MessageHandler for AppDelivery {
    async fn handle(&self, msg: Message) -> Delivery {
        let start = Instant::now();
        let (delivery, status) = self.handle_once(&msg).await;
        self.metrics
            .pubsub_ingress(&self.pubsub_name, &msg.topic, status, status, start);
        delivery
    }
}

impl AppDelivery {
    /// Delivers `msg`; returns what to tell the broker and the outcome's metric label
    /// (`success`, `retry` or `drop`).
    async fn handle_once(&self, msg: &Message) -> (Delivery, &'static str) {
        let body = self.event_bytes(msg);
        // Parse only when something needs the event's fields: CEL rules or an expiration.
        let needs_event = self.rules.iter().any(|r| !r.source.trim().is_empty())
            || memchr_slice(&body, b"\"expiration\"");
        let event: Value = if needs_event || !self.raw_payload {
            match serde_json::from_slice::<Value>(&body) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    tracing::warn!(pubsub = %self.pubsub_name, topic = %msg.topic, "message is not a CloudEvent");
                    return if self.dead_letter.is_some() {
                        (self.dead_letter(msg).await, "drop")
                    } else {
                        (Delivery::Retry, "retry")
                    };
                }
            }
        } else {
            Value::Null
        };
        if let Value::Object(obj) = &event
            && cloudevent::expired(obj)
        {
            tracing::warn!(pubsub = %self.pubsub_name, topic = %msg.topic, "dropping expired message");
            return (self.dead_letter(msg).await, "drop");
        }
        let Some(rule) = route(&self.rules, &event) else {
            tracing::debug!(pubsub = %self.pubsub_name, topic = %msg.topic, "no route matched; dropping the message");
            return (self.dead_letter(msg).await, "drop");
        };
        let traceparent = event
            .get("traceparent")
            .and_then(Value::as_str)
            .map(str::to_owned);
        // The consumer span: a child of the publisher's context carried by the event; the app
        // sees it as its parent.
        let mut span = if self.tracer.enabled() {
            let parent = traceparent.as_deref().and_then(SpanContext::parse);
            let tracestate = event.get("tracestate").and_then(Value::as_str);
            self.tracer
                .start_span(parent.as_ref(), tracestate, SpanKind::Consumer, || {
                    format!("pubsub/{}", msg.topic).into()
                })
        } else {
            None
        };
        if let Some(s) = span.as_mut().filter(|s| s.recording()) {
            s.set_attribute("messaging.system", "pubsub");
            s.set_attribute("messaging.destination.name", msg.topic.clone());
            s.set_attribute("dapr.pubsub", self.pubsub_name.clone());
        }
        let traceparent = match &span {
            Some(s) => Some(s.context().traceparent()),
            None => traceparent,
        };

        let attempt = || async {
            match &self.bulk {
                Some(batcher) => {
                    let (tx, rx) = oneshot::channel();
                    let pending = Pending {
                        event: body.clone(),
                        entry_metadata: msg.metadata.clone(),
                        path: rule.path.clone(),
                        topic: msg.topic.clone(),
                        reply: tx,
                    };
                    if batcher.send(pending).await.is_err() {
                        return None;
                    }
                    Some(rx.await.unwrap_or(Verdict::Retry))
                }
                None => Some(
                    self.post(
                        &rule.path,
                        body.clone(),
                        CLOUDEVENT_CONTENT_TYPE,
                        &msg.metadata,
                        traceparent.as_deref(),
                        &msg.topic,
                    )
                    .await,
                ),
            }
        };
        let verdict = match &self.inbound {
            Some(policy) => policy
                .run_with(policy.breaker(), true, attempt, |v| match v {
                    Some(Verdict::Success) => resiliency::Verdict::Success,
                    Some(Verdict::Drop) | None => resiliency::Verdict::Final,
                    Some(Verdict::Retry) => resiliency::Verdict::Failure(None),
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::debug!(pubsub = %self.pubsub_name, topic = %msg.topic, error = %e, "delivery refused by the inbound policy");
                    Some(Verdict::Retry)
                }),
            None => {
                let mut backoff = FIRST_BACKOFF;
                let mut verdict = None;
                for n in 1..=ATTEMPTS {
                    verdict = attempt().await;
                    if verdict != Some(Verdict::Retry) {
                        break;
                    }
                    if n < ATTEMPTS {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
                verdict
            }
        };
        if let Some(mut span) = span {
            if verdict != Some(Verdict::Success) {
                span.set_error(format!("{verdict:?}"));
            }
            span.end();
        }
        match verdict {
            // The batcher is gone (shutting down).
            None => (Delivery::Retry, "retry"),
            Some(Verdict::Success) => (Delivery::Ack, "success"),
            Some(Verdict::Drop) => {
                tracing::warn!(pubsub = %self.pubsub_name, topic = %msg.topic, "the app dropped the message");
                (self.dead_letter(msg).await, "drop")
            }
            Some(Verdict::Retry) if self.dead_letter.is_some() => {
                (self.dead_letter(msg).await, "retry")
            }
            Some(Verdict::Retry) => (Delivery::Retry, "retry"),
        }
    }
}

fn memchr_slice(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Collects messages of one bulk subscription into batches and posts each batch once.
pub async fn run_batcher(
    delivery: Arc<AppDelivery>,
    mut rx: mpsc::Receiver<Pending>,
    settings: BulkSettings,
) {
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.max_await;
        while batch.len() < settings.max_messages {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        // One POST per distinct route path.
        let mut by_path: HashMap<String, Vec<Pending>> = HashMap::new();
        for p in batch {
            by_path.entry(p.path.clone()).or_default().push(p);
        }
        for (path, entries) in by_path {
            let d = delivery.clone();
            tokio::spawn(async move { post_batch(&d, &path, entries).await });
        }
    }
}

async fn post_batch(d: &AppDelivery, path: &str, entries: Vec<Pending>) {
    let ids: Vec<String> = (0..entries.len())
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let topic = entries.first().map(|p| p.topic.clone()).unwrap_or_default();
    if d.channel.is_grpc() {
        let items: Vec<grpc::BulkEntry<'_>> = entries
            .iter()
            .zip(&ids)
            .map(|(p, id)| grpc::BulkEntry {
                id,
                event: &p.event,
                metadata: &p.entry_metadata,
            })
            .collect();
        let statuses = grpc::bulk_topic_event(
            &d.channel,
            &items,
            &topic,
            &d.pubsub_name,
            path,
            d.raw_payload,
        )
        .await;
        drop(items);
        reply_all(entries, &ids, &statuses);
        return;
    }
    let items: Vec<Value> = entries
        .iter()
        .zip(&ids)
        .map(|(p, id)| {
            let event: Value = if d.raw_payload {
                serde_json::from_slice::<Value>(&p.event)
                    .ok()
                    .and_then(|e| e.get("data_base64").cloned())
                    .unwrap_or(Value::Null)
            } else {
                serde_json::from_slice(&p.event).unwrap_or(Value::Null)
            };
            serde_json::json!({
                "entryId": id,
                "event": event,
                "metadata": p.entry_metadata,
                "contentType": if d.raw_payload { "application/octet-stream" } else { CLOUDEVENT_CONTENT_TYPE },
            })
        })
        .collect();
    let envelope = serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "com.dapr.event.sent.bulk",
        "topic": topic,
        "pubsubname": d.pubsub_name,
        "metadata": {},
        "entries": items,
    });
    let body = Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default());
    let mut req = Request::builder().method(Method::POST);
    if let Some(h) = req.headers_mut() {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::try_from(d.pubsub_name.as_str()) {
            h.insert("pubsubname", v);
        }
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let statuses: HashMap<String, Verdict> = match req.body(full_body(body)) {
        Ok(req) => match d.channel.send(req, &path).await {
            Ok(resp) => {
                let status = resp.response.status().as_u16();
                let body = Limited::new(resp.response.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                bulk_statuses(status, &body, &ids)
            }
            Err(_) => HashMap::new(),
        },
        Err(_) => HashMap::new(),
    };
    reply_all(entries, &ids, &statuses);
}

fn reply_all(entries: Vec<Pending>, ids: &[String], statuses: &HashMap<String, Verdict>) {
    for (p, id) in entries.into_iter().zip(ids) {
        let v = statuses.get(id).copied().unwrap_or(Verdict::Retry);
        let _ = p.reply.send(v);
    }
}

/// Per-entry verdicts of a bulk answer (§5.5.5).
pub fn bulk_statuses(status: u16, body: &[u8], ids: &[String]) -> HashMap<String, Verdict> {
    if status == 404 {
        return ids.iter().map(|id| (id.clone(), Verdict::Drop)).collect();
    }
    if !(200..300).contains(&status) {
        return HashMap::new();
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    if let Some(list) = v.get("statuses").and_then(Value::as_array) {
        for s in list {
            let (Some(id), Some(st)) = (
                s.get("entryId").and_then(Value::as_str),
                s.get("status").and_then(Value::as_str),
            ) else {
                continue;
            };
            if !ids.iter().any(|i| i == id) {
                continue;
            }
            let verdict = match st.to_ascii_uppercase().as_str() {
                "SUCCESS" => Verdict::Success,
                "DROP" => Verdict::Drop,
                _ => Verdict::Retry,
            };
            out.insert(id.to_owned(), verdict);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_contract() {
        assert_eq!(verdict(200, b""), Verdict::Success);
        assert_eq!(verdict(204, b"not json"), Verdict::Success);
        assert_eq!(verdict(200, br#"{"status":"SUCCESS"}"#), Verdict::Success);
        assert_eq!(verdict(200, br#"{"status":""}"#), Verdict::Success);
        assert_eq!(verdict(200, br#"{"status":"RETRY"}"#), Verdict::Retry);
        assert_eq!(verdict(200, br#"{"status":"DROP"}"#), Verdict::Drop);
        assert_eq!(verdict(200, br#"{"status":"whatever"}"#), Verdict::Retry);
        assert_eq!(verdict(404, b""), Verdict::Drop);
        assert_eq!(verdict(500, b""), Verdict::Retry);
        assert_eq!(verdict(302, b""), Verdict::Retry);
    }

    #[test]
    fn bulk_answers() {
        let ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let s = bulk_statuses(200, br#"{"statuses":[{"entryId":"a","status":"SUCCESS"},{"entryId":"b","status":"DROP"},{"entryId":"zz","status":"SUCCESS"}]}"#, &ids);
        assert_eq!(s.get("a"), Some(&Verdict::Success));
        assert_eq!(s.get("b"), Some(&Verdict::Drop));
        assert_eq!(s.get("c"), None);
        assert_eq!(bulk_statuses(404, b"", &ids).len(), 3);
        assert!(bulk_statuses(500, b"", &ids).is_empty());
    }
}
