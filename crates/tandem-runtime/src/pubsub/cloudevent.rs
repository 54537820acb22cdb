//! CloudEvents 1.0 envelopes as Dapr builds and reads them (§5.5.1, §5.5.2 of the contract).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The CloudEvent content type.
pub const CLOUDEVENT_CONTENT_TYPE: &str = "application/cloudevents+json";
/// The default event type of published events.
pub const EVENT_TYPE: &str = "com.dapr.event.sent";

/// Everything needed to wrap a published body.
pub struct Envelope<'a> {
    /// The request body.
    pub body: &'a [u8],
    /// The request content type (`text/plain` when absent).
    pub content_type: Option<&'a str>,
    /// Topic.
    pub topic: &'a str,
    /// Pub/sub component name.
    pub pubsub: &'a str,
    /// The publisher's app-id.
    pub source: &'a str,
    /// W3C `traceparent` of the publish.
    pub traceparent: &'a str,
    /// W3C `tracestate`.
    pub tracestate: &'a str,
    /// `metadata.*` of the request (`cloudevent.*` overrides are read from it).
    pub metadata: &'a HashMap<String, String>,
    /// When set, an `expiration` attribute (for components without native TTL).
    pub expiration: Option<SystemTime>,
}

/// Whether a content type carries JSON (`application/json`, `*+json`).
pub fn is_json(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    base == "application/json" || base == "text/json" || base.ends_with("+json")
}

/// Whether a content type is binary (carried as `data_base64`).
pub fn is_binary(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    base == "application/octet-stream"
        || base.contains("protobuf")
        || base.starts_with("image/")
        || base.starts_with("audio/")
        || base.starts_with("video/")
}

fn rfc3339(at: SystemTime, subsec: bool) -> String {
    let mut t = time::OffsetDateTime::from(at);
    if !subsec {
        t = t.replace_nanosecond(0).unwrap_or(t);
    }
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Wraps a body in Dapr's CloudEvent envelope.
pub fn wrap(e: &Envelope<'_>) -> Bytes {
    let ce = |k: &str| {
        e.metadata
            .get(&format!("cloudevent.{k}"))
            .filter(|v| !v.is_empty())
    };
    let content_type = e
        .content_type
        .filter(|c| !c.is_empty())
        .unwrap_or("text/plain");
    let mut m = Map::new();
    m.insert("specversion".into(), "1.0".into());
    m.insert(
        "id".into(),
        ce("id")
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
            .into(),
    );
    let source = if e.source.is_empty() {
        "Dapr"
    } else {
        e.source
    };
    m.insert(
        "source".into(),
        ce("source").map_or(source, |s| s.as_str()).into(),
    );
    m.insert(
        "type".into(),
        ce("type").map_or(EVENT_TYPE, |s| s.as_str()).into(),
    );
    m.insert("datacontenttype".into(), content_type.into());
    if let Some(subject) = ce("subject") {
        m.insert("subject".into(), subject.as_str().into());
    }
    m.insert("topic".into(), e.topic.into());
    m.insert("pubsubname".into(), e.pubsub.into());
    let traceparent = ce("traceparent")
        .or(ce("traceid"))
        .map_or(e.traceparent, |s| s.as_str());
    m.insert("traceid".into(), traceparent.into());
    m.insert("traceparent".into(), traceparent.into());
    m.insert(
        "tracestate".into(),
        ce("tracestate").map_or(e.tracestate, |s| s.as_str()).into(),
    );
    m.insert("time".into(), rfc3339(SystemTime::now(), false).into());
    if let Some(at) = e.expiration {
        m.insert("expiration".into(), rfc3339(at, false).into());
    }
    let mut out = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
    // Append the data attribute by hand so JSON payloads are embedded verbatim (numbers exact,
    // no re-encoding).
    out.pop(); // the closing brace
    if is_binary(content_type) {
        out.extend_from_slice(b",\"data_base64\":");
        let b64 = base64::engine::general_purpose::STANDARD.encode(e.body);
        out.extend_from_slice(&serde_json::to_vec(&b64).unwrap_or_default());
    } else if is_json(content_type) && serde_json::from_slice::<&RawValue>(e.body).is_ok() {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(e.body);
    } else {
        out.extend_from_slice(b",\"data\":");
        let text = String::from_utf8_lossy(e.body);
        out.extend_from_slice(&serde_json::to_vec(&text).unwrap_or_default());
    }
    out.push(b'}');
    Bytes::from(out)
}

/// Completes a ready-made CloudEvent published with `application/cloudevents+json`: keeps its
/// fields, overwrites `topic` and `pubsubname`, fills the absent standard ones.
pub fn complete(body: &[u8], e: &Envelope<'_>) -> Result<Bytes, String> {
    let mut v: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|err| format!("the body is not a JSON object: {err}"))?;
    let absent = |m: &Map<String, Value>, k: &str| m.get(k).is_none_or(Value::is_null);
    v.insert("topic".into(), e.topic.into());
    v.insert("pubsubname".into(), e.pubsub.into());
    if absent(&v, "time") {
        v.insert("time".into(), rfc3339(SystemTime::now(), false).into());
    }
    if absent(&v, "traceid") {
        v.insert("traceid".into(), e.traceparent.into());
        v.insert("traceparent".into(), e.traceparent.into());
    }
    if absent(&v, "tracestate") {
        v.insert("tracestate".into(), e.tracestate.into());
    }
    if absent(&v, "source") {
        v.insert("source".into(), "Dapr".into());
    }
    if absent(&v, "type") {
        v.insert("type".into(), EVENT_TYPE.into());
    }
    if absent(&v, "specversion") {
        v.insert("specversion".into(), "1.0".into());
    }
    if absent(&v, "id") {
        v.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    }
    if let Some(at) = e.expiration {
        v.insert("expiration".into(), rfc3339(at, false).into());
    }
    Ok(Bytes::from(
        serde_json::to_vec(&Value::Object(v)).map_err(|e| e.to_string())?,
    ))
}

/// Wraps a raw-payload message for delivery (`rawPayload=true` subscriptions).
pub fn wrap_raw(
    data: &[u8],
    topic: &str,
    pubsub: &str,
    metadata: &HashMap<String, String>,
) -> Bytes {
    let mut m = Map::new();
    m.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    m.insert("specversion".into(), "1.0".into());
    m.insert("datacontenttype".into(), "application/octet-stream".into());
    m.insert("source".into(), "Dapr".into());
    m.insert("type".into(), EVENT_TYPE.into());
    m.insert("topic".into(), topic.into());
    m.insert("pubsubname".into(), pubsub.into());
    for k in ["traceid", "traceparent", "tracestate"] {
        if let Some(v) = metadata.get(k) {
            m.insert(k.into(), v.as_str().into());
        }
    }
    m.insert(
        "data_base64".into(),
        base64::engine::general_purpose::STANDARD
            .encode(data)
            .into(),
    );
    Bytes::from(serde_json::to_vec(&Value::Object(m)).unwrap_or_default())
}

/// Whether an event's `expiration` lies in the past.
pub fn expired(event: &Map<String, Value>) -> bool {
    let Some(text) = event.get("expiration").and_then(Value::as_str) else {
        return false;
    };
    match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        Ok(at) => at < time::OffsetDateTime::now_utc(),
        Err(_) => false,
    }
}

/// The expiry time for a TTL in seconds.
pub fn expiration_after(ttl: Duration) -> SystemTime {
    SystemTime::now() + ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(
        body: &'a [u8],
        ct: Option<&'a str>,
        meta: &'a HashMap<String, String>,
    ) -> Envelope<'a> {
        Envelope {
            body,
            content_type: ct,
            topic: "orders",
            pubsub: "pubsub",
            source: "app1",
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            tracestate: "",
            metadata: meta,
            expiration: None,
        }
    }

    #[test]
    fn json_text_and_binary_payloads() {
        let meta = HashMap::new();
        let ce: Value = serde_json::from_slice(&wrap(&env(
            br#"{"n":12345678901234567890}"#,
            Some("application/json"),
            &meta,
        )))
        .unwrap();
        assert_eq!(ce["data"]["n"].to_string(), "12345678901234567890");
        assert_eq!(ce["source"], "app1");
        assert_eq!(ce["type"], EVENT_TYPE);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["topic"], "orders");
        assert_eq!(ce["pubsubname"], "pubsub");
        assert_eq!(ce["traceid"], ce["traceparent"]);
        let ce: Value = serde_json::from_slice(&wrap(&env(b"hello", None, &meta))).unwrap();
        assert_eq!(ce["data"], "hello");
        assert_eq!(ce["datacontenttype"], "text/plain");
        let ce: Value =
            serde_json::from_slice(&wrap(&env(b"{bad json", Some("application/json"), &meta)))
                .unwrap();
        assert_eq!(ce["data"], "{bad json");
        let ce: Value = serde_json::from_slice(&wrap(&env(
            &[0, 255],
            Some("application/octet-stream"),
            &meta,
        )))
        .unwrap();
        assert_eq!(ce["data_base64"], "AP8=");
        assert!(ce.get("data").is_none());
    }

    #[test]
    fn overrides_and_completion() {
        let mut meta = HashMap::new();
        meta.insert("cloudevent.id".to_owned(), "my-id".to_owned());
        meta.insert("cloudevent.type".to_owned(), "my.type".to_owned());
        let ce: Value =
            serde_json::from_slice(&wrap(&env(b"1", Some("application/json"), &meta))).unwrap();
        assert_eq!(ce["id"], "my-id");
        assert_eq!(ce["type"], "my.type");
        let done: Value = serde_json::from_slice(
            &complete(
                br#"{"id":"x","source":"s","type":"t","topic":"wrong","data":{}}"#,
                &env(b"", None, &HashMap::new()),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(done["id"], "x");
        assert_eq!(done["source"], "s");
        assert_eq!(done["topic"], "orders");
        assert_eq!(done["specversion"], "1.0");
        assert!(complete(b"[1]", &env(b"", None, &HashMap::new())).is_err());
    }
}
