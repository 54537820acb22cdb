//! Calling a gRPC app (`--app-protocol grpc` / `grpcs`) through the `AppCallback` services,
//! with the same semantics as the HTTP app channel:
//!
//! - service invocation → `OnInvoke`, the answer turned back into an HTTP-shaped response
//!   (status from the gRPC code, a JSON `Status` body on errors) as daprd does for HTTP callers;
//! - pub/sub → `ListTopicSubscriptions`, `OnTopicEvent`, `OnBulkTopicEvent` (falling back to
//!   `AppCallbackAlpha/OnBulkTopicEventAlpha1` when the app does not implement it);
//! - health probes → `AppCallbackHealthCheck/HealthCheck`.
//!
//! Calls ride the channel's pooled HTTP/2 client (one multiplexed connection), so there is no
//! per-call connection set-up.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, ResponseFuture};
use rt::app_callback_alpha_client::AppCallbackAlphaClient;
use rt::app_callback_client::AppCallbackClient;
use rt::app_callback_health_check_client::AppCallbackHealthCheckClient;
use serde_json::{Map, Value};
use tandem_components::BoxError;
use tonic::Code;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use super::{AppBody, AppChannel, AppError, Connector};
use crate::pubsub::delivery::Verdict;
use crate::pubsub::streaming::{StreamEvent, split_event};
use crate::pubsub::subscriptions::SubscriptionSpec;

/// tonic's transport: the app channel's pooled hyper client.
#[derive(Clone)]
pub(crate) struct Transport {
    client: Client<Connector, AppBody>,
}

impl tower::Service<Request<tonic::body::Body>> for Transport {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        self.client
            .request(req.map(|b| b.map_err(|s| Box::new(s) as BoxError).boxed_unsync()))
    }
}

fn origin(ch: &AppChannel) -> Uri {
    ch.base_url()
        .parse()
        .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1"))
}

fn transport(ch: &AppChannel) -> Transport {
    Transport {
        client: ch.client().clone(),
    }
}

fn callback(ch: &AppChannel) -> AppCallbackClient<Transport> {
    let limit = ch.options().max_message_size;
    AppCallbackClient::with_origin(transport(ch), origin(ch))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// A request carrying the API token and `metadata` (content type and length left out).
fn request<T>(ch: &AppChannel, msg: T, metadata: &HashMap<String, String>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let md = req.metadata_mut();
    for (k, v) in metadata {
        insert_ascii(md, k, v.as_bytes());
    }
    if let Some(token) = ch.token() {
        insert_ascii(md, "dapr-api-token", token.as_bytes());
    }
    req
}

/// Headers gRPC owns or that describe the HTTP hop, never copied into gRPC metadata.
fn reserved(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "content-length"
            | "host"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "user-agent"
            | "proxy-connection"
            | "accept-encoding"
    ) || name.starts_with("grpc-")
        || name.starts_with(':')
}

fn insert_ascii(md: &mut MetadataMap, key: &str, value: &[u8]) {
    let key = key.to_ascii_lowercase();
    if reserved(&key) || key.ends_with("-bin") {
        return;
    }
    if let (Ok(k), Ok(v)) = (
        MetadataKey::from_bytes(key.as_bytes()),
        MetadataValue::try_from(value),
    ) {
        md.append(k, v);
    }
}

/// The HTTP status daprd answers for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn verb(method: &http::Method) -> common::http_extension::Verb {
    use common::http_extension::Verb;
    match *method {
        http::Method::GET => Verb::Get,
        http::Method::HEAD => Verb::Head,
        http::Method::POST => Verb::Post,
        http::Method::PUT => Verb::Put,
        http::Method::DELETE => Verb::Delete,
        http::Method::CONNECT => Verb::Connect,
        http::Method::OPTIONS => Verb::Options,
        http::Method::TRACE => Verb::Trace,
        http::Method::PATCH => Verb::Patch,
        _ => Verb::None,
    }
}

/// An invocation answered by a gRPC app, in HTTP terms.
pub struct InvokeAnswer {
    /// 200, or the HTTP status of the app's gRPC error code.
    pub status: StatusCode,
    /// Content type and the app's response metadata.
    pub headers: HeaderMap,
    /// The response data, or the JSON `Status` of an error.
    pub body: Bytes,
    /// The app's gRPC code and message when it answered with an error.
    pub grpc_status: Option<(i32, String)>,
}

/// Calls `OnInvoke` with an HTTP-shaped request: `path_and_query` gives the method and
/// query string, the body becomes `data`, the headers become metadata.
pub async fn invoke(
    ch: &AppChannel,
    req: Request<AppBody>,
    path_and_query: &str,
) -> Result<InvokeAnswer, AppError> {
    let _permit = ch.admit().await?;
    let (parts, body) = req.into_parts();
    let limit = ch.options().max_message_size;
    let data = collect_limited(body, limit).await?;
    let sent = data.len() as u64;
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let message = common::InvokeRequest {
        method: path.trim_start_matches('/').to_owned(),
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: data.into(),
        }),
        content_type,
        http_extension: Some(common::HttpExtension {
            verb: verb(&parts.method) as i32,
            querystring: query.to_owned(),
        }),
    };
    let mut grpc_req = tonic::Request::new(message);
    let md = grpc_req.metadata_mut();
    for (name, value) in &parts.headers {
        insert_ascii(md, name.as_str(), value.as_bytes());
    }
    if let Some(token) = ch.token() {
        md.insert("dapr-api-token", token_value(token));
    }
    let start = std::time::Instant::now();
    let answer = callback(ch).on_invoke(grpc_req).await;
    if let Some(m) = ch.metrics() {
        let (code, received) = match &answer {
            Ok(r) => (0, r.get_ref().data.as_ref().map_or(0, |d| d.value.len())),
            Err(s) => (s.code() as i32, 0),
        };
        m.grpc_client(
            "/dapr.proto.runtime.v1.AppCallback/OnInvoke",
            code,
            sent,
            received as u64,
            start,
        );
    }
    Ok(match answer {
        Ok(resp) => {
            let (md, resp, _) = resp.into_parts();
            let mut headers = metadata_headers(&md);
            if !resp.content_type.is_empty()
                && let Ok(v) = HeaderValue::from_str(&resp.content_type)
            {
                headers.insert(http::header::CONTENT_TYPE, v);
            }
            InvokeAnswer {
                status: StatusCode::OK,
                headers,
                body: resp.data.map(|d| Bytes::from(d.value)).unwrap_or_default(),
                grpc_status: None,
            }
        }
        Err(status) => {
            let mut headers = metadata_headers(status.metadata());
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let body = serde_json::json!({
                "code": status.code() as i32,
                "message": status.message(),
                "details": [],
            });
            InvokeAnswer {
                status: http_status(status.code()),
                headers,
                body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
                grpc_status: Some((status.code() as i32, status.message().to_owned())),
            }
        }
    })
}

/// Reads a whole request body, refusing more than `limit` bytes.
async fn collect_limited(mut body: AppBody, limit: usize) -> Result<Bytes, AppError> {
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| AppError::Transport(format!("reading the request body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let len = first.as_ref().map_or(0, Bytes::len) + rest.len() + chunk.len();
        if len > limit {
            return Err(AppError::Transport(format!(
                "the request body exceeds {limit} bytes"
            )));
        }
        match &first {
            None => first = Some(chunk),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

fn token_value(token: &HeaderValue) -> tonic::metadata::AsciiMetadataValue {
    MetadataValue::try_from(token.as_bytes())
        .unwrap_or_else(|_| MetadataValue::from_static("invalid"))
}

/// The app's response metadata as HTTP headers (gRPC's own keys left out).
fn metadata_headers(md: &MetadataMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in md.clone().into_headers() {
        let Some(name) = name else { continue };
        if reserved(name.as_str()) || name.as_str().ends_with("-bin") {
            continue;
        }
        out.append::<HeaderName>(name, value);
    }
    out
}

fn verdict_of(status: i32) -> Verdict {
    use rt::topic_event_response::TopicEventResponseStatus as S;
    match S::try_from(status) {
        Ok(S::Success) => Verdict::Success,
        Ok(S::Drop) => Verdict::Drop,
        _ => Verdict::Retry,
    }
}

fn to_struct(map: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The `TopicEventRequest` of an event (also what streaming subscribers receive).
pub fn topic_event_request(ev: StreamEvent, path: &str) -> rt::TopicEventRequest {
    rt::TopicEventRequest {
        id: ev.id,
        source: ev.source,
        r#type: ev.r#type,
        spec_version: ev.spec_version,
        data_content_type: ev.data_content_type,
        data: ev.data.into(),
        topic: ev.topic,
        pubsub_name: ev.pubsub_name,
        path: path.to_owned(),
        extensions: Some(to_struct(ev.extensions)),
    }
}

/// Delivers one CloudEvent with `OnTopicEvent` and reads the verdict: the response status,
/// `Unimplemented` ⇒ drop, any other error ⇒ retry.
pub(crate) async fn topic_event(
    ch: &AppChannel,
    event: &[u8],
    topic: &str,
    pubsub: &str,
    path: &str,
    metadata: &HashMap<String, String>,
    traceparent: Option<&str>,
) -> Verdict {
    let Some(ev) = split_event(event, topic, pubsub) else {
        return Verdict::Retry;
    };
    let _permit = match ch.admit().await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(pubsub, topic, error = %e, "delivery to the app failed");
            return Verdict::Retry;
        }
    };
    let mut req = request(ch, topic_event_request(ev, path), metadata);
    // The consumer span's context, as daprd sends it: W3C and binary forms.
    if let Some(ctx) = traceparent.and_then(crate::trace::SpanContext::parse) {
        let md = req.metadata_mut();
        insert_ascii(md, "traceparent", ctx.traceparent().as_bytes());
        md.insert_bin(
            "grpc-trace-bin",
            tonic::metadata::MetadataValue::from_bytes(&ctx.binary()),
        );
    }
    let start = std::time::Instant::now();
    let answer = callback(ch).on_topic_event(req).await;
    if let Some(m) = ch.metrics() {
        let code = answer.as_ref().map_or_else(|s| s.code() as i32, |_| 0);
        m.grpc_client(
            "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent",
            code,
            event.len() as u64,
            0,
            start,
        );
    }
    match answer {
        Ok(resp) => verdict_of(resp.into_inner().status),
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::warn!(
                pubsub,
                topic,
                "the app does not implement OnTopicEvent; dropping the message"
            );
            Verdict::Drop
        }
        Err(status) => {
            tracing::debug!(pubsub, topic, error = %status, "the app failed to process the event");
            Verdict::Retry
        }
    }
}

/// One entry of a bulk delivery.
pub(crate) struct BulkEntry<'a> {
    pub(crate) id: &'a str,
    pub(crate) event: &'a [u8],
    pub(crate) metadata: &'a HashMap<String, String>,
}

/// Delivers a batch with `OnBulkTopicEvent` (or `OnBulkTopicEventAlpha1`); per-entry
/// verdicts, missing entries absent (⇒ retry). `Unimplemented` by both ⇒ all dropped.
pub(crate) async fn bulk_topic_event(
    ch: &AppChannel,
    entries: &[BulkEntry<'_>],
    topic: &str,
    pubsub: &str,
    path: &str,
    raw_payload: bool,
) -> HashMap<String, Verdict> {
    let items = entries
        .iter()
        .filter_map(|e| {
            use rt::topic_event_bulk_request_entry::Event;
            let (event, content_type) = if raw_payload {
                let raw = split_event(e.event, topic, pubsub)?.data;
                (Event::Bytes(raw.into()), "application/octet-stream")
            } else {
                let ev = split_event(e.event, topic, pubsub)?;
                (
                    Event::CloudEvent(rt::TopicEventCeRequest {
                        id: ev.id,
                        source: ev.source,
                        r#type: ev.r#type,
                        spec_version: ev.spec_version,
                        data_content_type: ev.data_content_type,
                        data: ev.data.into(),
                        extensions: Some(to_struct(ev.extensions)),
                    }),
                    super::super::pubsub::cloudevent::CLOUDEVENT_CONTENT_TYPE,
                )
            };
            Some(rt::TopicEventBulkRequestEntry {
                entry_id: e.id.to_owned(),
                content_type: content_type.to_owned(),
                metadata: e.metadata.clone(),
                event: Some(event),
            })
        })
        .collect();
    let envelope = rt::TopicEventBulkRequest {
        id: uuid::Uuid::new_v4().to_string(),
        entries: items,
        metadata: HashMap::new(),
        topic: topic.to_owned(),
        pubsub_name: pubsub.to_owned(),
        r#type: "com.dapr.event.sent.bulk".to_owned(),
        path: path.to_owned(),
    };
    let _permit = match ch.admit().await {
        Ok(p) => p,
        Err(_) => return HashMap::new(),
    };
    let none = HashMap::new();
    let mut answer = callback(ch)
        .on_bulk_topic_event(request(ch, envelope.clone(), &none))
        .await;
    if matches!(&answer, Err(s) if s.code() == Code::Unimplemented) {
        let limit = ch.options().max_message_size;
        #[allow(deprecated)] // daprd's fallback for apps built before OnBulkTopicEvent.
        let alpha = AppCallbackAlphaClient::with_origin(transport(ch), origin(ch))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
            .on_bulk_topic_event_alpha1(request(ch, envelope, &none))
            .await;
        answer = alpha;
    }
    match answer {
        Ok(resp) => resp
            .into_inner()
            .statuses
            .into_iter()
            .filter(|s| entries.iter().any(|e| e.id == s.entry_id))
            .map(|s| (s.entry_id, verdict_of(s.status)))
            .collect(),
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::warn!(
                pubsub,
                topic,
                "the app does not implement bulk topic events; dropping the batch"
            );
            entries
                .iter()
                .map(|e| (e.id.to_owned(), Verdict::Drop))
                .collect()
        }
        Err(status) => {
            tracing::debug!(pubsub, topic, error = %status, "the app failed to process the batch");
            HashMap::new()
        }
    }
}

/// The app's programmatic subscriptions (`ListTopicSubscriptions`); `Unimplemented` means
/// none.
pub(crate) async fn list_subscriptions(ch: &AppChannel) -> Result<Vec<SubscriptionSpec>, String> {
    let none = HashMap::new();
    match callback(ch)
        .list_topic_subscriptions(request(ch, (), &none))
        .await
    {
        Ok(resp) => Ok(resp
            .into_inner()
            .subscriptions
            .into_iter()
            .map(subscription_spec)
            .collect()),
        Err(status) if status.code() == Code::Unimplemented => Ok(Vec::new()),
        Err(status) => Err(format!(
            "ListTopicSubscriptions failed: {} ({:?})",
            status.message(),
            status.code()
        )),
    }
}

fn subscription_spec(s: rt::TopicSubscription) -> SubscriptionSpec {
    let mut rules: Vec<(String, String)> = Vec::new();
    if let Some(routes) = s.routes {
        rules.extend(routes.rules.into_iter().map(|r| (r.r#match, r.path)));
        if !routes.default.is_empty() {
            rules.push((String::new(), routes.default));
        }
    }
    if rules.is_empty() {
        // No routes: every event goes to OnTopicEvent with an empty path.
        rules.push((String::new(), String::new()));
    }
    SubscriptionSpec {
        pubsub: s.pubsub_name,
        topic: s.topic,
        rules,
        dead_letter: Some(s.dead_letter_topic).filter(|t| !t.is_empty()),
        metadata: s.metadata.into_iter().collect(),
        bulk: s.bulk_subscribe.filter(|b| b.enabled).map(|b| {
            (
                usize::try_from(b.max_messages_count)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(100),
                u64::try_from(b.max_await_duration_ms)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(1000),
            )
        }),
        kind: "PROGRAMMATIC",
    }
}

/// The input bindings a gRPC app wants (`ListInputBindings`, asked once).
pub(crate) async fn list_input_bindings(ch: &AppChannel) -> Result<Vec<String>, String> {
    let none = HashMap::new();
    match callback(ch)
        .list_input_bindings(request(ch, (), &none))
        .await
    {
        Ok(resp) => Ok(resp.into_inner().bindings),
        Err(status) if status.code() == Code::Unimplemented => Ok(Vec::new()),
        Err(status) => Err(format!(
            "ListInputBindings failed: {} ({:?})",
            status.message(),
            status.code()
        )),
    }
}

/// Delivers one input-binding event with `OnBindingEvent`; the app's answer, or why it failed.
pub(crate) async fn binding_event(
    ch: &AppChannel,
    name: &str,
    event: tandem_components::bindings::BindingEvent,
) -> Result<rt::BindingEventResponse, String> {
    let _permit = ch.admit().await.map_err(|e| e.to_string())?;
    let msg = rt::BindingEventRequest {
        name: name.to_owned(),
        data: event.data.into(),
        metadata: event.metadata.clone(),
    };
    let none = HashMap::new();
    callback(ch)
        .on_binding_event(request(ch, msg, &none))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| {
            format!(
                "the app failed to process the event of input binding {name}: {} ({:?})",
                status.message(),
                status.code()
            )
        })
}

/// One `AppCallbackHealthCheck/HealthCheck` probe (no API token, like HTTP probes): its
/// status code, `DEADLINE_EXCEEDED` when it took longer than `timeout`.
pub(crate) async fn health_check(ch: &AppChannel, timeout: Duration) -> Code {
    let mut client = AppCallbackHealthCheckClient::with_origin(transport(ch), origin(ch));
    match tokio::time::timeout(timeout, client.health_check(tonic::Request::new(()))).await {
        Ok(Ok(_)) => Code::Ok,
        Ok(Err(status)) => status.code(),
        Err(_) => Code::DeadlineExceeded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_daprds_http_statuses() {
        assert_eq!(http_status(Code::Ok), StatusCode::OK);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(Code::Aborted), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(Code::Cancelled), StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn subscriptions_without_routes_get_an_empty_path() {
        let spec = subscription_spec(rt::TopicSubscription {
            pubsub_name: "ps".into(),
            topic: "t".into(),
            ..Default::default()
        });
        assert_eq!(spec.rules, vec![(String::new(), String::new())]);
        let spec = subscription_spec(rt::TopicSubscription {
            pubsub_name: "ps".into(),
            topic: "t".into(),
            routes: Some(rt::TopicRoutes {
                rules: vec![rt::TopicRule {
                    r#match: "event.type == \"x\"".into(),
                    path: "/x".into(),
                }],
                default: "/d".into(),
            }),
            bulk_subscribe: Some(rt::BulkSubscribeConfig {
                enabled: true,
                max_messages_count: 0,
                max_await_duration_ms: 20,
            }),
            ..Default::default()
        });
        assert_eq!(spec.rules.len(), 2);
        assert_eq!(spec.rules[1], (String::new(), "/d".to_owned()));
        assert_eq!(spec.bulk, Some((100, 20)));
    }

    #[test]
    fn reserved_headers_stay_out_of_metadata() {
        let mut md = MetadataMap::new();
        insert_ascii(&mut md, "Content-Type", b"text/plain");
        insert_ascii(&mut md, "grpc-timeout", b"1S");
        insert_ascii(&mut md, "X-Custom", b"v");
        insert_ascii(&mut md, "trace-bin", b"v");
        assert_eq!(md.len(), 1);
        assert_eq!(md.get("x-custom").and_then(|v| v.to_str().ok()), Some("v"));
    }
}
