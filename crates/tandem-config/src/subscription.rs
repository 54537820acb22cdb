//! `Subscription` (`dapr.io/v1alpha1` and `dapr.io/v2alpha1`), normalised into one shape (§6.3).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_norway::Value;

use crate::Source;
use crate::de::{self, from_value};
use crate::error::FieldError;

/// A declarative subscription: deliver `topic` of `pubsub_name` to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when set.
    pub namespace: Option<String>,
    /// `spec.pubsubname`.
    pub pubsub_name: String,
    /// `spec.topic`.
    pub topic: String,
    /// `spec.routes.rules` (v2 only), in order: the first matching rule wins.
    pub rules: Vec<RouteRule>,
    /// `spec.routes.default` (v2) or `spec.route` (v1).
    pub default_route: Option<String>,
    /// `spec.deadLetterTopic`.
    pub dead_letter_topic: Option<String>,
    /// `spec.metadata` (values converted to text).
    pub metadata: BTreeMap<String, String>,
    /// `spec.bulkSubscribe`, when present.
    pub bulk_subscribe: Option<BulkSubscribe>,
    /// `scopes`: app-ids the subscription applies to (empty = all).
    pub scopes: Vec<String>,
    /// Where the manifest was read.
    pub source: Source,
}

/// One `routes.rules` entry: deliver to `path` when the CEL expression `match_expr` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// The CEL expression (`event.type == "order.created"`); empty matches every event.
    pub match_expr: String,
    /// The app path.
    pub path: String,
}

/// `spec.bulkSubscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BulkSubscribe {
    /// `enabled`.
    pub enabled: bool,
    /// `maxMessagesCount`; `None` lets the runtime use Dapr's default (100).
    pub max_messages_count: Option<u32>,
    /// `maxAwaitDurationMs`; `None` lets the runtime use Dapr's default (1000).
    pub max_await_duration_ms: Option<u32>,
}

#[derive(Deserialize)]
struct RawSubscription {
    #[serde(default)]
    spec: RawSpec,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    pubsubname: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    /// v1 only.
    #[serde(default)]
    route: Option<String>,
    /// v2 only.
    #[serde(default)]
    routes: RawRoutes,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, Text>,
    #[serde(default)]
    bulk_subscribe: Option<RawBulk>,
}

/// A metadata value written as any scalar.
#[derive(Deserialize)]
struct Text(#[serde(deserialize_with = "de::scalar_string")] String);

#[derive(Deserialize, Default)]
struct RawRoutes {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Deserialize)]
struct RawRule {
    #[serde(default, rename = "match")]
    match_expr: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBulk {
    #[serde(default, deserialize_with = "de::flex_bool")]
    enabled: bool,
    #[serde(default, deserialize_with = "de::opt_int")]
    max_messages_count: Option<u32>,
    #[serde(default, deserialize_with = "de::opt_int")]
    max_await_duration_ms: Option<u32>,
}

/// Decodes a Subscription document; `v2` selects the `dapr.io/v2alpha1` schema.
pub(crate) fn parse(
    value: Value,
    v2: bool,
    name: String,
    namespace: Option<String>,
    source: Source,
) -> Result<Subscription, FieldError> {
    let raw: RawSubscription = from_value(value)?;
    let spec = raw.spec;
    let pubsub_name =
        non_empty(spec.pubsubname).ok_or_else(|| FieldError::required("spec.pubsubname"))?;
    let topic = non_empty(spec.topic).ok_or_else(|| FieldError::required("spec.topic"))?;
    let (rules, default_route) = if v2 {
        let rules = spec
            .routes
            .rules
            .into_iter()
            .map(|r| RouteRule {
                match_expr: r.match_expr,
                path: r.path,
            })
            .collect();
        (rules, non_empty(spec.routes.default))
    } else {
        (Vec::new(), non_empty(spec.route))
    };
    Ok(Subscription {
        name,
        namespace,
        pubsub_name,
        topic,
        rules,
        default_route,
        dead_letter_topic: non_empty(spec.dead_letter_topic),
        metadata: spec.metadata.into_iter().map(|(k, v)| (k, v.0)).collect(),
        bulk_subscribe: spec.bulk_subscribe.map(|b| BulkSubscribe {
            enabled: b.enabled,
            max_messages_count: b.max_messages_count.filter(|n| *n > 0),
            max_await_duration_ms: b.max_await_duration_ms.filter(|n| *n > 0),
        }),
        scopes: raw.scopes,
        source,
    })
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}
