//! The subscription table: declarative resources plus what the app answers on
//! `GET /dapr/subscribe`, started while the app is healthy and stopped while it is not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tandem_components::pubsub::{SubscribeRequest, Subscription};
use tokio::sync::mpsc;

use super::delivery::{AppDelivery, BulkSettings, run_batcher};
use super::routing::Rule;
use crate::app_channel::{AppChannel, empty_body};
use crate::components::{LiveComponents, PubSubEntry};
use crate::lifecycle::Shutdown;
use crate::metadata::{MetadataService, SubscriptionInfo};

/// Messages handed to the app at once per subscription when no other bound is set.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// One subscription, whatever its source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Pub/sub component name.
    pub pubsub: String,
    /// Topic.
    pub topic: String,
    /// Rules `(match, path)` in order; the default route last with an empty match.
    pub rules: Vec<(String, String)>,
    /// Dead-letter topic.
    pub dead_letter: Option<String>,
    /// Subscription metadata (`rawPayload`, …).
    pub metadata: BTreeMap<String, String>,
    /// Bulk subscribe, when enabled.
    pub bulk: Option<(usize, u64)>,
    /// `DECLARATIVE` or `PROGRAMMATIC`.
    pub kind: &'static str,
}

impl SubscriptionSpec {
    /// From a Subscription resource.
    pub fn from_resource(s: &tandem_config::Subscription) -> Self {
        let mut rules: Vec<(String, String)> = s
            .rules
            .iter()
            .map(|r| (r.match_expr.clone(), r.path.clone()))
            .collect();
        if let Some(d) = s.default_route.as_ref().filter(|d| !d.is_empty()) {
            rules.push((String::new(), d.clone()));
        }
        Self {
            pubsub: s.pubsub_name.clone(),
            topic: s.topic.clone(),
            rules,
            dead_letter: s.dead_letter_topic.clone().filter(|t| !t.is_empty()),
            metadata: s.metadata.clone(),
            bulk: s.bulk_subscribe.as_ref().filter(|b| b.enabled).map(|b| {
                (
                    b.max_messages_count.unwrap_or(100) as usize,
                    u64::from(b.max_await_duration_ms.unwrap_or(1000)),
                )
            }),
            kind: "DECLARATIVE",
        }
    }

    /// What the metadata API lists.
    pub fn info(&self) -> SubscriptionInfo {
        SubscriptionInfo {
            pubsub_name: self.pubsub.clone(),
            topic: self.topic.clone(),
            metadata: self.metadata.clone(),
            rules: self.rules.clone(),
            dead_letter_topic: self.dead_letter.clone().unwrap_or_default(),
            kind: self.kind,
        }
    }
}

fn get_ci<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn str_ci(obj: &serde_json::Map<String, Value>, key: &str) -> String {
    get_ci(obj, key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Parses the app's `GET /dapr/subscribe` answer (v1 and v2 shapes, keys case-insensitive).
pub fn parse_programmatic(body: &[u8]) -> Result<Vec<SubscriptionSpec>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid /dapr/subscribe answer: {e}"))?;
    let Value::Array(items) = v else {
        return Err("invalid /dapr/subscribe answer: expected a JSON array".into());
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Object(obj) = item else { continue };
        let mut rules = Vec::new();
        let mut default_route = String::new();
        if let Some(Value::Object(routes)) = get_ci(&obj, "routes") {
            if let Some(Value::Array(list)) = get_ci(routes, "rules") {
                for r in list {
                    if let Value::Object(r) = r {
                        rules.push((str_ci(r, "match"), str_ci(r, "path")));
                    }
                }
            }
            default_route = str_ci(routes, "default");
        }
        if default_route.is_empty() {
            default_route = str_ci(&obj, "route");
        }
        if !default_route.is_empty() {
            rules.push((String::new(), default_route));
        }
        let metadata = match get_ci(&obj, "metadata") {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let bulk = match get_ci(&obj, "bulkSubscribe") {
            Some(Value::Object(b))
                if get_ci(b, "enabled").and_then(Value::as_bool) == Some(true) =>
            {
                Some((
                    get_ci(b, "maxMessagesCount")
                        .and_then(Value::as_u64)
                        .unwrap_or(100) as usize,
                    get_ci(b, "maxAwaitDurationMs")
                        .and_then(Value::as_u64)
                        .unwrap_or(1000),
                ))
            }
            _ => None,
        };
        let spec = SubscriptionSpec {
            pubsub: str_ci(&obj, "pubsubname"),
            topic: str_ci(&obj, "topic"),
            rules,
            dead_letter: Some(str_ci(&obj, "deadLetterTopic")).filter(|t| !t.is_empty()),
            metadata,
            bulk,
            kind: "PROGRAMMATIC",
        };
        if spec.rules.is_empty() {
            tracing::warn!(pubsub = %spec.pubsub, topic = %spec.topic, "subscription has no route; ignored");
            continue;
        }
        out.push(spec);
    }
    Ok(out)
}

/// Asks the app for its subscriptions (`GET /dapr/subscribe`, or `ListTopicSubscriptions`
/// for a gRPC app), retrying a few times (500 ms, doubling).
pub async fn fetch_programmatic(channel: &AppChannel) -> Vec<SubscriptionSpec> {
    let mut delay = Duration::from_millis(500);
    if channel.is_grpc() {
        for attempt in 0..4 {
            match crate::app_channel::grpc::list_subscriptions(channel).await {
                Ok(specs) => return specs,
                Err(e) if attempt < 3 => {
                    tracing::debug!(error = %e, "asking the app for its subscriptions failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => tracing::warn!(error = %e, "no programmatic subscriptions"),
            }
        }
        return Vec::new();
    }
    for attempt in 0..4 {
        let req = Request::get("/dapr/subscribe")
            .header("content-type", "application/json")
            .body(empty_body());
        let Ok(req) = req else { return Vec::new() };
        match channel.send(req, "/dapr/subscribe").await {
            Ok(resp) => {
                let status = resp.response.status().as_u16();
                let body = Limited::new(resp.response.into_body(), 4 << 20)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                if status == 404 {
                    return Vec::new();
                }
                if status != 200 {
                    tracing::warn!(
                        status,
                        "the app answered /dapr/subscribe with an error; no programmatic subscriptions"
                    );
                    return Vec::new();
                }
                return match parse_programmatic(&body) {
                    Ok(specs) => specs,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the app's subscriptions");
                        Vec::new()
                    }
                };
            }
            Err(e) if attempt < 3 => {
                tracing::debug!(error = %e, "GET /dapr/subscribe failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::warn!(error = %e, "GET /dapr/subscribe failed");
            }
        }
    }
    Vec::new()
}

/// Starts and stops the app's subscriptions with its health, and follows component reloads.
pub struct SubscriptionManager {
    pub(crate) components: Arc<LiveComponents>,
    pub(crate) channel: Arc<AppChannel>,
    pub(crate) declarative: tokio::sync::watch::Receiver<Vec<SubscriptionSpec>>,
    pub(crate) max_in_flight: usize,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) tracer: crate::trace::Tracer,
}

/// A running subscription and the component it reads from.
type Running = Option<(Arc<PubSubEntry>, Subscription)>;

impl SubscriptionManager {
    /// Makes `running` (one slot per spec) match the current components: subscriptions on a
    /// removed or replaced pub/sub stop; when `run` is set, specs without a subscription start
    /// on their pub/sub if it exists now.
    async fn sync(&self, specs: &[SubscriptionSpec], running: &mut [Running], run: bool) {
        let set = self.components.snapshot();
        for (spec, slot) in specs.iter().zip(running.iter_mut()) {
            let current = set.pubsub.get(&spec.pubsub);
            let stale = match (&*slot, current) {
                (Some((e, _)), Some(c)) => !Arc::ptr_eq(e, c) || !run,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if stale && let Some((_, sub)) = slot.take() {
                sub.close().await;
            }
            if slot.is_none()
                && run
                && let Some(entry) = current
            {
                match self.start(spec, entry).await {
                    Ok(sub) => *slot = Some((entry.clone(), sub)),
                    Err(e) => {
                        tracing::error!(pubsub = %spec.pubsub, topic = %spec.topic, error = %e, "cannot subscribe")
                    }
                }
            } else if slot.is_none() && run && current.is_none() {
                tracing::error!(pubsub = %spec.pubsub, topic = %spec.topic, "cannot subscribe: pubsub {} is not found", spec.pubsub);
            }
        }
    }

    async fn start(
        &self,
        spec: &SubscriptionSpec,
        entry: &PubSubEntry,
    ) -> Result<Subscription, String> {
        let rules = spec
            .rules
            .iter()
            .map(|(m, p)| Rule::new(m, p))
            .collect::<Result<Vec<_>, _>>()?;
        let raw_payload = spec
            .metadata
            .get("rawPayload")
            .and_then(|v| tandem_components::metadata::parse_bool(v))
            .unwrap_or(false);
        let mut delivery = AppDelivery {
            pubsub_name: spec.pubsub.clone(),
            component: entry.component.clone(),
            rules,
            dead_letter: spec.dead_letter.clone(),
            raw_payload,
            channel: self.channel.clone(),
            bulk: None,
            inbound: entry.policies.inbound.clone(),
            metrics: self.metrics.clone(),
            tracer: self.tracer.clone(),
        };
        let mut max_in_flight = self.max_in_flight;
        let mut batcher = None;
        if let Some((max_messages, max_await_ms)) = spec.bulk {
            let (tx, rx) = mpsc::channel(max_messages.max(1));
            delivery.bulk = Some(tx);
            max_in_flight = max_in_flight.max(max_messages);
            batcher = Some((
                rx,
                BulkSettings {
                    max_messages: max_messages.max(1),
                    max_await: Duration::from_millis(max_await_ms),
                },
            ));
        }
        let delivery = Arc::new(delivery);
        if let Some((rx, settings)) = batcher {
            tokio::spawn(run_batcher(delivery.clone(), rx, settings));
        }
        let metadata: HashMap<String, String> = spec.metadata.clone().into_iter().collect();
        let consumer_group = metadata
            .get("consumerID")
            .filter(|c| !c.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| entry.consumer_group.clone());
        let req = SubscribeRequest {
            topic: spec.topic.clone(),
            metadata,
            consumer_group,
            max_in_flight: max_in_flight.max(1),
        };
        let sub = entry
            .component
            .subscribe(req, delivery)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(pubsub = %spec.pubsub, topic = %spec.topic, "subscribed");
        Ok(sub)
    }

    /// Runs until shutdown: waits for the app, reads its subscriptions once, and keeps them
    /// running exactly while the app is healthy.
    pub async fn run(mut self, metadata: Arc<MetadataService>, shutdown: &Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let mut health = self.channel.health();
        tokio::select! {
            _ = &mut stop => return,
            _ = health.wait_for(|h| *h) => {}
        }
        let mut specs = self.declarative.borrow_and_update().clone();
        let programmatic = fetch_programmatic(&self.channel).await;
        specs.extend(programmatic.iter().cloned());
        let mut running: Vec<Running> = specs.iter().map(|_| None).collect();
        let mut reloads = self.components.watch();
        reloads.borrow_and_update();
        self.sync(&specs, &mut running, true).await;
        // Listed once started: a subscription the metadata API shows is receiving.
        metadata.set_subscriptions(specs.iter().map(SubscriptionSpec::info).collect());
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                changed = reloads.changed() => {
                    if changed.is_err() { break; }
                    reloads.borrow_and_update();
                    self.sync(&specs, &mut running, healthy).await;
                }
                changed = self.declarative.changed() => {
                    if changed.is_err() { break; }
                    let mut next = self.declarative.borrow_and_update().clone();
                    next.extend(programmatic.iter().cloned());
                    // Unchanged subscriptions keep running; the others stop.
                    let mut previous: Vec<(SubscriptionSpec, Running)> =
                        specs.drain(..).zip(running.drain(..)).collect();
                    for spec in &next {
                        let kept = previous.iter().position(|(s, _)| s == spec);
                        running.push(kept.and_then(|i| previous.swap_remove(i).1));
                    }
                    for (spec, slot) in previous {
                        if let Some((_, sub)) = slot {
                            tracing::info!(pubsub = %spec.pubsub, topic = %spec.topic, "unsubscribed: its Subscription changed or was removed");
                            sub.close().await;
                        }
                    }
                    specs = next;
                    self.sync(&specs, &mut running, healthy).await;
                    metadata.set_subscriptions(specs.iter().map(SubscriptionSpec::info).collect());
                }
                changed = health.changed() => {
                    if changed.is_err() { break; }
                    let now = *health.borrow_and_update();
                    if now != healthy {
                        if now {
                            tracing::info!("app is healthy again: resuming subscriptions");
                        } else {
                            tracing::warn!("app is unhealthy: pausing subscriptions");
                        }
                        healthy = now;
                        self.sync(&specs, &mut running, healthy).await;
                    }
                }
            }
        }
        for (_, sub) in running.into_iter().flatten() {
            sub.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programmatic_shapes() {
        let body = br#"[
          {"pubsubname":"pubsub","topic":"orders","route":"/orders"},
          {"pubsubName":"pubsub","Topic":"inventory",
           "routes":{"rules":[{"match":"event.type == \"widget\"","path":"/widgets"}],"default":"/products"},
           "metadata":{"rawPayload":"true"},"deadLetterTopic":"poison",
           "bulkSubscribe":{"enabled":true,"maxMessagesCount":50,"maxAwaitDurationMs":40}},
          {"pubsubname":"pubsub","topic":"noroute"}
        ]"#;
        let specs = parse_programmatic(body).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].rules, vec![(String::new(), "/orders".to_owned())]);
        assert_eq!(specs[1].topic, "inventory");
        assert_eq!(specs[1].rules.len(), 2);
        assert_eq!(specs[1].rules[1], (String::new(), "/products".to_owned()));
        assert_eq!(specs[1].dead_letter.as_deref(), Some("poison"));
        assert_eq!(specs[1].bulk, Some((50, 40)));
        assert_eq!(specs[1].metadata["rawPayload"], "true");
        assert!(parse_programmatic(b"").unwrap().is_empty());
        assert!(parse_programmatic(b"{}").is_err());
    }
}
