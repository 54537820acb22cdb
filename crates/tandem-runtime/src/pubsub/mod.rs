//! The pub/sub building block.
//!
//! - Publishing ([`PubSubService`]): wraps bodies in CloudEvents ([`cloudevent`]), applies
//!   `rawPayload`, TTL and `cloudevent.*` overrides, and hands bytes to the component.
//! - Subscribing ([`subscriptions`]): merges declarative and programmatic subscriptions, starts
//!   them while the app is healthy and stops them while it is not.
//! - Delivering ([`delivery`]): routes each message with CEL rules ([`routing`]), posts it to
//!   the app, and turns the app's answer into ack, retry or dead-letter.
//! - Streaming ([`streaming`]): subscriptions opened by the app over a gRPC stream
//!   (`SubscribeTopicEventsAlpha1`), acknowledged event by event on that stream.

pub mod cloudevent;
pub mod delivery;
pub mod routing;
pub mod streaming;
pub mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tandem_components::pubsub::{PubSubFeature, PublishRequest};

use crate::components::{LiveComponents, PubSubEntry};
use crate::error::{ApiError, Detail, ErrorCode};
use crate::metrics::Metrics;
use crate::resiliency::{Verdict, call_component, component_verdict};
use crate::trace::{Span, SpanContext, SpanKind, Tracer};
use cloudevent::{CLOUDEVENT_CONTENT_TYPE, Envelope};

/// W3C trace context of a publish request.
#[derive(Clone, Debug, Default)]
pub struct TraceContext {
    /// `traceparent`, when the caller sent one.
    pub traceparent: Option<String>,
    /// `tracestate`.
    pub tracestate: Option<String>,
}

/// One entry of a bulk publish.
#[derive(Clone, Debug, Default)]
pub struct BulkEntry {
    /// `entryId`.
    pub entry_id: String,
    /// The event bytes (JSON text for JSON content types, decoded bytes for binary ones).
    pub event: Bytes,
    /// `contentType`.
    pub content_type: String,
    /// Entry metadata (merged with the request's).
    pub metadata: HashMap<String, String>,
}

/// A failed bulk-publish entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedEntry {
    /// `entryId`.
    pub entry_id: String,
    /// Why.
    pub error: String,
}

/// The pub/sub service (publishing side).
pub struct PubSubService {
    components: Arc<LiveComponents>,
    app_id: String,
    metrics: Arc<Metrics>,
    pub(crate) tracer: Tracer,
}

impl PubSubService {
    pub(crate) fn new(
        components: Arc<LiveComponents>,
        app_id: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            components,
            app_id,
            metrics,
            tracer: Tracer::off(),
        }
    }

    /// A producer span for one published message, child of the caller's context; the
    /// returned context (the span's, when tracing is on) goes into the CloudEvent.
    fn producer(
        &self,
        pubsub: &str,
        topic: &str,
        trace: &TraceContext,
    ) -> (Option<Span>, Option<TraceContext>) {
        if !self.tracer.enabled() {
            return (None, None);
        }
        let parent = trace.traceparent.as_deref().and_then(SpanContext::parse);
        let span = self.tracer.start_span(
            parent.as_ref(),
            trace.tracestate.as_deref(),
            SpanKind::Producer,
            || format!("/v1.0/publish/{pubsub}/{topic}").into(),
        );
        let Some(mut span) = span else {
            return (None, None);
        };
        if span.recording() {
            span.set_attribute("messaging.system", "pubsub");
            span.set_attribute("messaging.destination.name", topic);
            span.set_attribute("dapr.pubsub", pubsub);
        }
        let ctx = TraceContext {
            traceparent: Some(span.context().traceparent()),
            tracestate: trace.tracestate.clone(),
        };
        (Some(span), Some(ctx))
    }

    pub(crate) fn find(&self, name: &str, topic: &str) -> Result<Arc<PubSubEntry>, ApiError> {
        let components = self.components.load();
        if components.pubsub.is_empty() {
            return Err(ApiError::new(
                ErrorCode::PubSubNotConfigured,
                format!("pubsub {name} is not configured"),
            )
            .with_info("appID", self.app_id.clone()));
        }
        if name.is_empty() {
            return Err(
                ApiError::new(ErrorCode::PubSubEmpty, "pubsub name is empty")
                    .with_info("appID", self.app_id.clone()),
            );
        }
        let entry = components.pubsub.get(name).cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::PubSubNotFound,
                format!("pubsub {name} is not found"),
            )
            .with_info("appID", self.app_id.clone())
        })?;
        if topic.is_empty() {
            return Err(ApiError::new(
                ErrorCode::TopicNameEmpty,
                format!("topic is empty in pubsub {name}"),
            )
            .with_info("appID", self.app_id.clone()));
        }
        Ok(entry)
    }

    /// Publishes one message.
    pub async fn publish(
        &self,
        pubsub: &str,
        topic: &str,
        body: Bytes,
        content_type: Option<&str>,
        metadata: HashMap<String, String>,
        trace: &TraceContext,
    ) -> Result<(), ApiError> {
        let entry = self.find(pubsub, topic)?;
        let raw = raw_payload(&metadata)?;
        let (span, own) = self.producer(pubsub, topic, trace);
        let trace = own.as_ref().unwrap_or(trace);
        let data = self.envelope(
            &entry,
            pubsub,
            topic,
            body,
            content_type,
            &metadata,
            trace,
            raw,
        )?;
        let content_type = if raw {
            content_type.map(str::to_owned)
        } else {
            Some(CLOUDEVENT_CONTENT_TYPE.to_owned())
        };
        let req = PublishRequest {
            topic: topic.to_owned(),
            data,
            content_type,
            metadata,
        };
        let policy = entry.policies.outbound.as_deref();
        let start = Instant::now();
        let result = call_component(policy, req, |req| entry.component.publish(req)).await;
        self.metrics
            .pubsub_egress(pubsub, topic, result.is_ok(), start);
        let result = result.map_err(|e| publish_error(pubsub, topic, &e.to_string()));
        if let Some(mut span) = span {
            if let Err(e) = &result {
                span.set_error(e.message.clone());
            }
            span.end();
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn envelope(
        &self,
        entry: &PubSubEntry,
        pubsub: &str,
        topic: &str,
        body: Bytes,
        content_type: Option<&str>,
        metadata: &HashMap<String, String>,
        trace: &TraceContext,
        raw: bool,
    ) -> Result<Bytes, ApiError> {
        if raw {
            return Ok(body);
        }
        let generated;
        let traceparent = match &trace.traceparent {
            Some(t) => t.as_str(),
            None => {
                generated = crate::trace::new_traceparent();
                &generated
            }
        };
        let native_ttl = entry
            .component
            .features()
            .contains(&PubSubFeature::MessageTtl);
        let expiration = if native_ttl {
            None
        } else {
            ttl(metadata)?.map(cloudevent::expiration_after)
        };
        let env = Envelope {
            body: &body,
            content_type,
            topic,
            pubsub,
            source: &self.app_id,
            traceparent,
            tracestate: trace.tracestate.as_deref().unwrap_or_default(),
            metadata,
            expiration,
        };
        let is_ce = content_type.is_some_and(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case(CLOUDEVENT_CONTENT_TYPE)
        });
        if is_ce {
            cloudevent::complete(&body, &env).map_err(|e| {
                ApiError::new(
                    ErrorCode::PubSubCloudEventsSer,
                    format!("cannot create cloudevent: {e}"),
                )
                .with_detail(resource(pubsub, "cannot create cloudevent"))
                .with_info("pubsubName", pubsub)
                .with_info("topic", topic)
            })
        } else {
            Ok(cloudevent::wrap(&env))
        }
    }

    /// Publishes several messages; on failure returns the failed entries (and the error).
    pub async fn bulk_publish(
        &self,
        pubsub: &str,
        topic: &str,
        entries: Vec<BulkEntry>,
        metadata: HashMap<String, String>,
        trace: &TraceContext,
    ) -> Result<(), (ApiError, Vec<FailedEntry>)> {
        let entry = self.find(pubsub, topic).map_err(|e| (e, Vec::new()))?;
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if e.entry_id.is_empty() || !seen.insert(e.entry_id.as_str()) {
                return Err((
                    ApiError::new(
                        ErrorCode::PubSubMarshalEvents,
                        "entryId is duplicated or not present for entry",
                    )
                    .with_info("pubsubName", pubsub)
                    .with_info("topic", topic),
                    Vec::new(),
                ));
            }
        }
        let raw = raw_payload(&metadata).map_err(|e| (e, Vec::new()))?;
        let mut ids = Vec::with_capacity(entries.len());
        let mut reqs = Vec::with_capacity(entries.len());
        let mut spans = Vec::new();
        for e in entries {
            let (span, own) = if raw {
                (None, None)
            } else {
                self.producer(pubsub, topic, trace)
            };
            spans.extend(span);
            let trace = own.as_ref().unwrap_or(trace);
            let mut meta = e.metadata.clone();
            for (k, v) in &metadata {
                meta.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let data = self
                .envelope(
                    &entry,
                    pubsub,
                    topic,
                    e.event,
                    Some(&e.content_type),
                    &meta,
                    trace,
                    raw,
                )
                .map_err(|err| (err, Vec::new()))?;
            ids.push(e.entry_id);
            reqs.push(PublishRequest {
                topic: topic.to_owned(),
                data,
                content_type: Some(if raw {
                    e.content_type
                } else {
                    CLOUDEVENT_CONTENT_TYPE.to_owned()
                }),
                metadata: meta,
            });
        }
        let start = Instant::now();
        let events = reqs.len();
        let results = match &entry.policies.outbound {
            None => entry.component.bulk_publish(reqs).await,
            // Like daprd, a batch with a failed entry is published again whole.
            Some(policy) => {
                let n = reqs.len();
                policy
                    .run_with(
                        policy.breaker(),
                        true,
                        || entry.component.bulk_publish(reqs.clone()),
                        |results: &Vec<Result<(), tandem_components::Error>>| {
                            let verdicts = results.iter().map(component_verdict);
                            verdicts.fold(Verdict::Success, |all, v| match (all, v) {
                                (Verdict::Failure(c), _) | (_, Verdict::Failure(c)) => {
                                    Verdict::Failure(c)
                                }
                                (Verdict::Final, _) | (_, Verdict::Final) => Verdict::Final,
                                _ => Verdict::Success,
                            })
                        },
                    )
                    .await
                    .unwrap_or_else(|e| {
                        (0..n)
                            .map(|_| Err(tandem_components::Error::backend(e)))
                            .collect()
                    })
            }
        };
        for span in spans {
            span.end();
        }
        let failed: Vec<FailedEntry> = ids
            .into_iter()
            .zip(results)
            .filter_map(|(id, r)| {
                r.err().map(|e| FailedEntry {
                    entry_id: id,
                    error: e.to_string(),
                })
            })
            .collect();
        self.metrics
            .pubsub_egress_bulk(pubsub, topic, failed.is_empty(), events, start);
        if failed.is_empty() {
            return Ok(());
        }
        let first = failed[0].error.clone();
        Err((publish_error(pubsub, topic, &first), failed))
    }
}

fn resource(pubsub: &str, description: &str) -> Detail {
    Detail::ResourceInfo {
        resource_type: "pubsub",
        resource_name: pubsub.to_owned(),
        description: description.to_owned(),
    }
}

fn publish_error(pubsub: &str, topic: &str, err: &str) -> ApiError {
    let msg = format!("error when publishing to topic {topic} in pubsub {pubsub}: {err}");
    ApiError::new(ErrorCode::PubSubPublishMessage, msg.clone())
        .with_detail(resource(pubsub, &msg))
        .with_info("topic", topic)
        .with_info("pubsubName", pubsub)
}

fn raw_payload(metadata: &HashMap<String, String>) -> Result<bool, ApiError> {
    match metadata.get("rawPayload") {
        None => Ok(false),
        Some(v) => tandem_components::metadata::parse_bool(v).ok_or_else(|| {
            ApiError::new(
                ErrorCode::PubSubRequestMetadata,
                "failed deserializing metadata: rawPayload must be a boolean",
            )
        }),
    }
}

fn ttl(metadata: &HashMap<String, String>) -> Result<Option<std::time::Duration>, ApiError> {
    if let Some(v) = metadata.get("ttlInSeconds") {
        return v
            .trim()
            .parse::<u64>()
            .map(|s| Some(std::time::Duration::from_secs(s)))
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::PubSubRequestMetadata,
                    "ttlInSeconds must be a non-negative integer",
                )
            });
    }
    if let Some(v) = metadata.get("ttl") {
        return tandem_components::metadata::parse_duration(v)
            .map(Some)
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::PubSubRequestMetadata,
                    "ttl must be a duration or a number of seconds",
                )
            });
    }
    Ok(None)
}
