//! `GET /v1.0/metadata` and `PUT /v1.0/metadata/{key}`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, header};
use serde_json::{Map, Value, json};
use tandem_runtime::metadata::MetadataSnapshot;

use super::body::read;
use super::error::HttpError;
use super::{ApiState, empty};

/// Renders the snapshot with Dapr's field names (omitting empty optional parts as Go does).
pub fn metadata_json(s: &MetadataSnapshot) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(s.id));
    out.insert("runtimeVersion".into(), json!(s.runtime_version));
    if !s.enabled_features.is_empty() {
        out.insert("enabledFeatures".into(), json!(s.enabled_features));
    }
    out.insert(
        "components".into(),
        Value::Array(
            s.components
                .iter()
                .map(|c| {
                    let mut m = Map::new();
                    m.insert("name".into(), json!(c.name));
                    m.insert("type".into(), json!(c.type_name));
                    m.insert("version".into(), json!(c.version));
                    if !c.capabilities.is_empty() {
                        m.insert("capabilities".into(), json!(c.capabilities));
                    }
                    Value::Object(m)
                })
                .collect(),
        ),
    );
    out.insert("extended".into(), json!(s.extended));
    if !s.subscriptions.is_empty() {
        out.insert(
            "subscriptions".into(),
            Value::Array(
                s.subscriptions
                    .iter()
                    .map(|sub| {
                        let mut m = Map::new();
                        m.insert("pubsubname".into(), json!(sub.pubsub_name));
                        m.insert("topic".into(), json!(sub.topic));
                        if !sub.metadata.is_empty() {
                            m.insert("metadata".into(), json!(sub.metadata));
                        }
                        m.insert(
                            "rules".into(),
                            Value::Array(
                                sub.rules
                                    .iter()
                                    .map(|(matcher, path)| json!({"match": matcher, "path": path}))
                                    .collect(),
                            ),
                        );
                        if !sub.dead_letter_topic.is_empty() {
                            m.insert("deadLetterTopic".into(), json!(sub.dead_letter_topic));
                        }
                        m.insert("type".into(), json!(sub.kind));
                        Value::Object(m)
                    })
                    .collect(),
            ),
        );
    }
    if !s.http_endpoints.is_empty() {
        out.insert(
            "httpEndpoints".into(),
            Value::Array(
                s.http_endpoints
                    .iter()
                    .map(|n| json!({"name": n}))
                    .collect(),
            ),
        );
    }
    let app = &s.app_connection;
    let mut conn = Map::new();
    if let Some(port) = app.port {
        conn.insert("port".into(), json!(port));
    }
    conn.insert("protocol".into(), json!(app.protocol));
    conn.insert("channelAddress".into(), json!(app.channel_address));
    if let Some(max) = app.max_concurrency {
        conn.insert("maxConcurrency".into(), json!(max));
    }
    if let Some(h) = &app.health {
        let mut hm = Map::new();
        if let Some(path) = &h.path {
            hm.insert("healthCheckPath".into(), json!(path));
        }
        hm.insert("healthProbeInterval".into(), json!(h.interval));
        hm.insert("healthProbeTimeout".into(), json!(h.timeout));
        hm.insert("healthThreshold".into(), json!(h.threshold));
        conn.insert("health".into(), Value::Object(hm));
    }
    out.insert("appConnectionProperties".into(), Value::Object(conn));
    out.insert(
        "actorRuntime".into(),
        json!({"runtimeStatus": "DISABLED", "placement": ""}),
    );
    Value::Object(out)
}

/// `GET /v1.0/metadata`.
pub(crate) async fn get(State(api): State<ApiState>) -> Response {
    let body =
        serde_json::to_vec(&metadata_json(&api.runtime.metadata.snapshot())).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `PUT /v1.0/metadata/{key}`: the raw body becomes `extended[key]`.
pub(crate) async fn put(
    State(api): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let body = read(&headers, body, api.max_body_size).await?;
    api.runtime
        .metadata
        .set_extended(&key, String::from_utf8_lossy(&body).into_owned());
    Ok(empty())
}
