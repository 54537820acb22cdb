//! A lean path for the hot unary RPCs (state, publish, invocation, bindings, secrets).
//!
//! tonic's generated server handles a unary call through its streaming machinery: a decoder
//! with its own 8 KiB buffer, an encoder stream with another, boxed bodies and metadata
//! conversions. For a small request that is most of the sidecar's work outside HTTP/2 itself.
//! Here the request body is read whole (one DATA frame for a small message), decoded with
//! prost in place, handed to the very same [`Dapr`] trait method tonic would call, and the
//! answer is written as one length-prefixed buffer followed by the `grpc-status: 0` trailers.
//! Errors are rendered by [`Status::into_http`], as tonic renders them.
//!
//! Anything this path does not handle goes on to tonic unchanged: other methods, streaming
//! RPCs, compressed messages (`grpc-encoding`), and non-gRPC content types. The API token is
//! checked by the same [`ApiToken`] interceptor as on tonic's path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dapr::dapr::proto::runtime::v1::dapr_server::Dapr;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use tandem_runtime::trace::{SpanContext, names};

use super::service::GrpcBody;
use super::{ApiToken, DaprApi};
use crate::http2::hpack;

/// An answer of this path.
type Response = http::Response<GrpcBody>;

const SERVICE_PREFIX: &str = "/dapr.proto.runtime.v1.Dapr/";

/// The RPCs this path serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rpc {
    GetState,
    GetBulkState,
    SaveState,
    DeleteState,
    DeleteBulkState,
    ExecuteStateTransaction,
    PublishEvent,
    InvokeService,
    InvokeBinding,
    GetSecret,
}

impl Rpc {
    fn from_path(path: &str) -> Option<Self> {
        Some(match path.strip_prefix(SERVICE_PREFIX)? {
            "GetState" => Self::GetState,
            "GetBulkState" => Self::GetBulkState,
            "SaveState" => Self::SaveState,
            "DeleteState" => Self::DeleteState,
            "DeleteBulkState" => Self::DeleteBulkState,
            "ExecuteStateTransaction" => Self::ExecuteStateTransaction,
            "PublishEvent" => Self::PublishEvent,
            "InvokeService" => Self::InvokeService,
            "InvokeBinding" => Self::InvokeBinding,
            "GetSecret" => Self::GetSecret,
            _ => return None,
        })
    }

    /// Whether the call may hand the caller's trace context on (to an app, a broker or a
    /// binding). Reads never do, so tracing leaves their request metadata alone; every other
    /// call keeps the rewrite.
    pub(super) fn propagates(self) -> bool {
        !matches!(self, Self::GetState | Self::GetBulkState | Self::GetSecret)
    }
}

/// The RPC when this path serves a request: a POST of an uncompressed gRPC message
/// (`plain`, see [`super::service::Metadata`]) to one of the listed methods.
pub(super) fn served(method: &Method, path: &str, plain: bool) -> Option<Rpc> {
    if *method != Method::POST || !plain {
        return None;
    }
    Rpc::from_path(path)
}

/// Whether a `content-type` is gRPC's (`application/grpc`, or with `+proto`).
pub(super) fn grpc_content_type(ct: &HeaderValue) -> bool {
    ct.to_str()
        .is_ok_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+proto"))
}

/// Answers one call (an error as its [`Status`], which the caller renders); also returns the
/// size of the request body read.
pub(super) async fn handle<B>(
    api: Arc<DaprApi>,
    token: Option<ApiToken>,
    rpc: Rpc,
    parts: http::request::Parts,
    body: B,
) -> (Result<Response, Status>, u64)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let mut metadata = MetadataMap::from_headers(parts.headers);
    if let Some(mut token) = token {
        match token.call(GrpcRequest::from_parts(
            metadata,
            parts.extensions.clone(),
            (),
        )) {
            Ok(checked) => metadata = checked.into_parts().0,
            Err(status) => return (Err(status), 0),
        }
    }
    let limit = api.max_body_size;
    let message = match read_message(body, limit).await {
        Ok(message) => message,
        Err(status) => return (Err(status), 0),
    };
    let received = message.len() as u64 + 5;
    let call = Call {
        api: &api,
        metadata,
        extensions: parts.extensions,
        message,
        limit,
    };
    let answer = match rpc {
        Rpc::GetState => call.get_state().await,
        Rpc::GetBulkState => call.run(|a, r| a.get_bulk_state(r)).await,
        Rpc::SaveState => call.run(|a, r| a.save_state(r)).await,
        Rpc::DeleteState => call.run(|a, r| a.delete_state(r)).await,
        Rpc::DeleteBulkState => call.run(|a, r| a.delete_bulk_state(r)).await,
        Rpc::ExecuteStateTransaction => call.run(|a, r| a.execute_state_transaction(r)).await,
        Rpc::PublishEvent => call.run(|a, r| a.publish_event(r)).await,
        Rpc::InvokeService => call.run(|a, r| a.invoke_service(r)).await,
        Rpc::InvokeBinding => call.run(|a, r| a.invoke_binding(r)).await,
        Rpc::GetSecret => call.run(|a, r| a.get_secret(r)).await,
    };
    (answer, received)
}

/// Reads the request body: exactly one uncompressed, length-prefixed message of at most
/// `limit` bytes. Answers the statuses tonic answers for the same faults.
async fn read_message<B>(body: B, limit: usize) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let mut data = read_body(body, limit.saturating_add(5))
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => too_large("decoded", None, limit),
            BodyError::Read(e) => Status::internal(format!("error reading the request body: {e}")),
        })?;
    if data.is_empty() {
        return Err(Status::internal("Missing request message."));
    }
    if data.len() < 5 {
        return Err(Status::internal("Unexpected EOF decoding stream."));
    }
    let compressed = data[0];
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    match compressed {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding \
                 was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} \
                 (valid flags are 0 and 1)"
            )));
        }
    }
    if len > limit {
        return Err(too_large("decoded", Some(len), limit));
    }
    let rest = data.len() - 5;
    if rest < len {
        return Err(Status::internal("Unexpected EOF decoding stream."));
    }
    if rest > len {
        return Err(Status::internal(
            "Expected one message in a unary request, got more.",
        ));
    }
    // Past the prefix in place: `split_off` would clone, and a first clone of a buffer
    // allocates a shared count for it.
    data.advance(5);
    Ok(data)
}

enum BodyError {
    TooLarge,
    Read(axum::BoxError),
}

/// The whole body, at most `max` bytes. A small message comes in one DATA frame, which is
/// kept as it is; only a body in several frames is copied into one buffer. The body is read
/// as the server made it (not boxed).
async fn read_body<B>(body: B, max: usize) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            return Err(BodyError::TooLarge);
        }
        if let Some(buf) = joined.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(head) = first.take() {
            let mut buf = BytesMut::with_capacity(total);
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        } else {
            first = Some(data);
        }
    }
    Ok(joined.map(BytesMut::freeze).or(first).unwrap_or_default())
}

pub(super) fn too_large(what: &str, found: Option<usize>, limit: usize) -> Status {
    let found = found
        .map(|n| format!(" found {n} bytes,"))
        .unwrap_or_default();
    Status::out_of_range(format!(
        "Error, {what} message length too large:{found} the limit is: {limit} bytes"
    ))
}

/// One decoded call, ready to run against a trait method.
struct Call<'a> {
    api: &'a DaprApi,
    metadata: MetadataMap,
    extensions: http::Extensions,
    message: Bytes,
    limit: usize,
}

impl<'a> Call<'a> {
    /// Decodes the request as `Q`, calls `method`, and renders its answer.
    async fn run<Q, P, F>(self, method: F) -> Result<Response, Status>
    where
        Q: Message + Default,
        P: Message,
        F: FnOnce(
            &'a DaprApi,
            GrpcRequest<Q>,
        )
            -> Pin<Box<dyn Future<Output = Result<GrpcResponse<P>, Status>> + Send + 'a>>,
    {
        let message = Q::decode(self.message)
            .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))?;
        let request = GrpcRequest::from_parts(self.metadata, self.extensions, message);
        let (metadata, answer, extensions) = method(self.api, request).await?.into_parts();
        let mut response = answer_with(&answer, self.limit)?;
        *response.extensions_mut() = extensions;
        let headers = metadata.into_headers();
        if !headers.is_empty() {
            // The handler's metadata goes out in a header map, and `content-type` with it.
            *response.headers_mut() = headers;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            response.body_mut().no_content_type();
        }
        Ok(response)
    }

    /// `GetState`, with its request read in place and its answer written from the item (see
    /// [`super::state::get_item`]); the request's metadata is dropped unread.
    async fn get_state(self) -> Result<Response, Status> {
        let item = super::state::get_item(&self.api.runtime, &self.message).await?;
        Ok(message_answer(super::state::answer(item, self.limit)?))
    }
}

/// The answer carrying `message`, unless it is over `limit` bytes. Its `content-type` is
/// written by the server from the body (see [`UnaryBody::head_fields`]).
fn answer_with(message: &impl Message, limit: usize) -> Result<Response, Status> {
    let len = message.encoded_len();
    if len > limit {
        return Err(too_large("encoded", Some(len), limit));
    }
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("failed to encode the answer: {e}")))?;
    Ok(message_answer(buf.freeze()))
}

/// The answer carrying one length-prefixed message.
fn message_answer(data: Bytes) -> Response {
    Response::new(GrpcBody::unary(UnaryBody {
        data: Some(data),
        trailers: true,
        content_type: true,
        trace: None,
    }))
}

/// The trailers of an answer that succeeded.
static OK_TRAILERS: [(http::HeaderName, HeaderValue); 1] = [(
    http::HeaderName::from_static("grpc-status"),
    HeaderValue::from_static("0"),
)];

/// A unary answer: one DATA frame, then `grpc-status: 0`; or, empty, the body of a
/// trailers-only answer. The fields of its head that are the same for every answer
/// (`content-type`) or made for each (`grpc-trace-bin`) are carried here and written by the
/// server, without a header map (see [`crate::http2::AnswerBody`]).
pub(super) struct UnaryBody {
    pub(super) data: Option<Bytes>,
    pub(super) trailers: bool,
    /// `content-type: application/grpc`.
    pub(super) content_type: bool,
    /// The call's span, written as `grpc-trace-bin`.
    pub(super) trace: Option<SpanContext>,
}

/// The `content-type` of a lean answer.
static GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

impl UnaryBody {
    /// Writes `content-type` and `grpc-trace-bin` when the answer carries them.
    pub(super) fn head_fields(&self, enc: &mut hpack::Encoder, dst: &mut BytesMut) {
        if self.content_type {
            enc.header(dst, &CONTENT_TYPE, &GRPC_CONTENT_TYPE);
        }
        if let Some(trace) = &self.trace {
            enc.header_bytes(dst, &names::GRPC_TRACE_BIN, &trace.binary_text(), true);
        }
    }

    /// Once the message is out, the trailers, for a server that writes them without polling
    /// (see [`crate::http2::AnswerBody`]).
    pub(super) fn fixed_trailers(&self) -> Option<&'static [(http::HeaderName, HeaderValue)]> {
        (self.data.is_none() && self.trailers).then_some(&OK_TRAILERS[..])
    }
}

impl http_body::Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::with_capacity(1);
            let [(name, value)] = &OK_TRAILERS;
            trailers.insert(name.clone(), value.clone());
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !self.trailers
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Request;
    use dapr::dapr::proto::common::v1::StateItem;
    use dapr::dapr::proto::runtime::v1 as rt;
    use tonic::Code;
    use tower::ServiceExt;

    use super::*;
    use crate::grpc::service::GrpcService;
    use crate::grpc::tests::test_runtime;
    use crate::grpc::{GrpcOptions, routes};

    /// The gRPC routes over a runtime with one in-memory store.
    fn service(token: Option<&str>, max_body_size: usize) -> GrpcService<()> {
        let options = GrpcOptions {
            max_body_size,
            api_token: token.map(str::to_owned),
            ..Default::default()
        };
        routes(test_runtime(), &options)
    }

    fn framed(message: &impl Message, flag: u8) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u8(flag);
        buf.put_u32(message.encoded_len() as u32);
        message.encode(&mut buf).unwrap();
        buf.freeze()
    }

    fn request(method: &str, body: Bytes, headers: &[(&'static str, &'static str)]) -> Request {
        let mut req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("http://localhost{SERVICE_PREFIX}{method}"))
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::from(body)).unwrap()
    }

    /// Sends one call; answers the grpc-status (from the headers of a trailers-only answer,
    /// else from the trailers), the grpc-message and the message bytes.
    async fn call(routes: &GrpcService<()>, req: Request) -> (i32, String, Bytes) {
        let resp = routes.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let data = collected.to_bytes();
        let field = |name: &str| {
            parts
                .headers
                .get(name)
                .or_else(|| trailers.get(name))
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let status = field("grpc-status").expect("grpc-status").parse().unwrap();
        let message = field("grpc-message").unwrap_or_default();
        let message = percent_encoding::percent_decode_str(&message)
            .decode_utf8_lossy()
            .into_owned();
        let data = if data.is_empty() {
            data
        } else {
            data.slice(5..)
        };
        (status, message, data)
    }

    fn save(key: &str, value: &[u8]) -> rt::SaveStateRequest {
        rt::SaveStateRequest {
            store_name: "statestore".into(),
            states: vec![StateItem {
                key: key.into(),
                value: value.to_vec(),
                ..Default::default()
            }],
        }
    }

    fn get(key: &str) -> rt::GetStateRequest {
        rt::GetStateRequest {
            store_name: "statestore".into(),
            key: key.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn state_round_trip_and_errors_from_the_error_table() {
        let routes = service(None, 4 << 20);
        let saved = call(
            &routes,
            request("SaveState", framed(&save("k", &[0, 1, 255]), 0), &[]),
        )
        .await;
        assert_eq!(saved.0, 0, "{}", saved.1);
        let (status, _, data) = call(&routes, request("GetState", framed(&get("k"), 0), &[])).await;
        assert_eq!(status, 0);
        let got = rt::GetStateResponse::decode(data).unwrap();
        assert_eq!(got.data, [0, 1, 255]);
        assert!(!got.etag.is_empty());
        // A store that does not exist: the error table's status, as on tonic's path.
        let mut missing = get("k");
        missing.store_name = "nope".into();
        let (status, message, _) =
            call(&routes, request("GetState", framed(&missing, 0), &[])).await;
        assert_eq!(status, Code::InvalidArgument as i32);
        assert!(message.contains("nope"), "{message}");
    }

    #[tokio::test]
    async fn malformed_frames_are_refused_with_tonics_statuses() {
        let routes = service(None, 64);
        let compressed = call(&routes, request("GetState", framed(&get("k"), 1), &[])).await;
        assert_eq!(compressed.0, Code::Internal as i32);
        assert!(compressed.1.contains("compressed-flag"), "{}", compressed.1);
        let whole = framed(&get("k"), 0);
        let truncated = call(
            &routes,
            request("GetState", whole.slice(..whole.len() - 1), &[]),
        )
        .await;
        assert_eq!(truncated.0, Code::Internal as i32);
        let empty = call(&routes, request("GetState", Bytes::new(), &[])).await;
        assert_eq!(empty.0, Code::Internal as i32);
        let garbage = call(
            &routes,
            request(
                "GetState",
                Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]),
                &[],
            ),
        )
        .await;
        assert_eq!(garbage.0, Code::Internal as i32);
        assert!(garbage.1.contains("decode"), "{}", garbage.1);
        let big = call(
            &routes,
            request("SaveState", framed(&save("k", &[7; 100]), 0), &[]),
        )
        .await;
        assert_eq!(big.0, Code::OutOfRange as i32);
        assert!(big.1.contains("the limit is: 64 bytes"), "{}", big.1);
    }

    #[tokio::test]
    async fn other_calls_go_on_to_tonic() {
        let routes = service(None, 4 << 20);
        // Compressed messages are tonic's to refuse (no compression is enabled).
        let gzip = call(
            &routes,
            request(
                "GetState",
                framed(&get("k"), 1),
                &[("grpc-encoding", "gzip")],
            ),
        )
        .await;
        assert_eq!(gzip.0, Code::Unimplemented as i32);
        assert!(gzip.1.contains("gzip"), "{}", gzip.1);
        // An RPC this path does not serve reaches the generated service.
        let body = framed(&rt::UnregisterActorTimerRequest::default(), 0);
        let timer = call(&routes, request("UnregisterActorTimer", body, &[])).await;
        assert_eq!(timer.0, Code::Unimplemented as i32);
        assert_eq!(
            timer.1,
            "UnregisterActorTimer is not implemented by Tandem yet"
        );
    }

    #[tokio::test]
    async fn the_api_token_is_enforced() {
        let routes = service(Some("secret"), 4 << 20);
        let body = framed(&get("k"), 0);
        let missing = call(&routes, request("GetState", body.clone(), &[])).await;
        assert_eq!(missing.0, Code::Unauthenticated as i32);
        let wrong = call(
            &routes,
            request("GetState", body.clone(), &[("dapr-api-token", "x")]),
        )
        .await;
        assert_eq!(wrong.0, Code::Unauthenticated as i32);
        let right = call(
            &routes,
            request("GetState", body, &[("dapr-api-token", "secret")]),
        )
        .await;
        assert_eq!(right.0, 0, "{}", right.1);
    }
}
