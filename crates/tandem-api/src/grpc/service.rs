//! The gRPC API as one service: what every call goes through before and after its handler.
//!
//! In order: the [`GrpcObserver`] (metrics, API logs) starts its record, tracing starts a span
//! (refusing invalid `baggage`), `spec.api` rules are applied, and the call goes to the lean
//! unary path ([`super::unary`]) or to tonic's generated service and gRPC proxying. A lean
//! unary answer is complete when its handler returns (one message, status OK, or a
//! trailers-only error), so it is recorded without wrapping any body; other answers are
//! recorded when their trailers go out.
//!
//! A caller's `grpc-timeout` bounds the wait for the answer: past it, the handler (or the
//! proxied call) is dropped and the call answers `DEADLINE_EXCEEDED`. A streaming answer that
//! has started is not cut.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Uri};
use http_body_util::BodyExt;
use tandem_runtime::trace::{SpanContext, Tracer};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tower::Service;

use super::error::http_status_error;
use super::unary::{self, Rpc, UnaryBody};
use super::{ApiToken, DaprApi, names, trace};
use crate::allowlist::GrpcFilter;

/// What the sidecar records about each gRPC call (metrics, API logs).
pub trait GrpcObserver: Send + Sync + 'static {
    /// What is kept of a call until its status is known.
    type Call: Send + Unpin + 'static;

    /// Called before anything else sees the call (`uri`'s path is the method,
    /// `/package.Service/Method`).
    fn begin(&self, uri: &Uri, headers: &HeaderMap) -> Self::Call;

    /// Called once with the call's status code and its message bytes in and out.
    fn end(&self, call: Self::Call, code: u32, received: u64, sent: u64);
}

/// Observes nothing.
impl GrpcObserver for () {
    type Call = ();

    fn begin(&self, _: &Uri, _: &HeaderMap) {}

    fn end(&self, (): (), _: u32, _: u64, _: u64) {}
}

pub(super) struct Shared<O> {
    pub(super) api: Arc<DaprApi>,
    pub(super) tracer: Tracer,
    /// `spec.api`'s gRPC rules; checked before anything else, on both paths.
    pub(super) filter: Option<GrpcFilter>,
    pub(super) token: Option<ApiToken>,
    pub(super) observer: Option<O>,
}

/// The gRPC API: tonic's routes and gRPC proxying behind the lean unary path, with tracing
/// and an observer in front.
pub struct GrpcService<O> {
    /// Tonic's generated `Dapr` service, then gRPC proxying for any other service.
    pub(super) routes: Router,
    pub(super) shared: Arc<Shared<O>>,
}

impl<O> Clone for GrpcService<O> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// An answer of the gRPC API.
type Response = http::Response<GrpcBody>;

type UnaryFuture = Pin<Box<dyn Future<Output = (Result<Response, Status>, u64)> + Send>>;

/// The body of a gRPC API answer: a lean unary answer as it was made, any other boxed.
pub struct GrpcBody(Inner);

enum Inner {
    Unary(UnaryBody),
    Boxed(Body),
}

impl GrpcBody {
    pub(super) fn unary(body: UnaryBody) -> Self {
        Self(Inner::Unary(body))
    }

    fn boxed(body: Body) -> Self {
        Self(Inner::Boxed(body))
    }

    /// A lean answer whose `content-type` is in its header map.
    pub(super) fn no_content_type(&mut self) {
        if let Inner::Unary(b) = &mut self.0 {
            b.content_type = false;
        }
    }

    /// Carries the call's span context to the server as `grpc-trace-bin`, when the body is
    /// a lean answer's; false when it must go into the header map instead.
    pub(super) fn carry_trace(&mut self, context: SpanContext) -> bool {
        match &mut self.0 {
            Inner::Unary(b) => {
                b.trace = Some(context);
                true
            }
            Inner::Boxed(_) => false,
        }
    }
}

/// A lean unary answer carries its `content-type` and `grpc-trace-bin`, and ends with
/// `grpc-status: 0`, written from a list.
impl crate::http2::AnswerBody for GrpcBody {
    fn head_fields(&self, enc: &mut crate::http2::hpack::Encoder, dst: &mut bytes::BytesMut) {
        if let Inner::Unary(b) = &self.0 {
            b.head_fields(enc, dst);
        }
    }

    fn fixed_trailers(&self) -> Option<&'static [(http::HeaderName, HeaderValue)]> {
        match &self.0 {
            Inner::Unary(b) => b.fixed_trailers(),
            Inner::Boxed(_) => None,
        }
    }
}

/// Empty (what tonic's trailers-only answers carry).
impl Default for GrpcBody {
    fn default() -> Self {
        Self::unary(UnaryBody {
            data: None,
            trailers: false,
            content_type: false,
            trace: None,
        })
    }
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Unary(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never| match never {}))),
            Inner::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Unary(b) => b.is_end_stream(),
            Inner::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            Inner::Unary(b) => b.size_hint(),
            Inner::Boxed(b) => b.size_hint(),
        }
    }
}

enum Path {
    /// Answered before any handler (boxed: it is rare, and every call's future is kept small),
    /// or done.
    Answered(Option<Box<Response>>),
    /// The lean unary path: the answer and the request message's size.
    Unary(UnaryFuture),
    /// Tonic's service or the proxy.
    Routed(Box<RouteFuture<Infallible>>),
}

impl<O, B> Service<http::Request<B>> for GrpcService<O>
where
    O: GrpcObserver,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GrpcFuture<O>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> GrpcFuture<O> {
        let shared = &self.shared;
        let (mut parts, body) = req.into_parts();
        let observed = shared
            .observer
            .as_ref()
            .map(|o| o.begin(&parts.uri, &parts.headers));
        let metadata = Metadata::read(&parts.headers);
        let mut future = GrpcFuture {
            path: Path::Answered(None),
            deadline: metadata.timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            traced: None,
            // The shared state is kept only when an observer needs it at the end.
            shared: observed.as_ref().map(|_| shared.clone()),
            observed,
            received: None,
        };
        let rpc = unary::served(&parts.method, parts.uri.path(), metadata.plain);
        let propagates = rpc.is_none_or(Rpc::propagates);
        future.traced = match trace::begin(
            &shared.tracer,
            &parts.uri,
            &mut parts.headers,
            metadata.traced,
            propagates,
        ) {
            Ok(t) => t,
            Err(refused) => {
                future.path = Path::Answered(Some(Box::new(refused.answer())));
                return future;
            }
        };
        if let Some(filter) = &shared.filter
            && filter.blocks(parts.uri.path())
        {
            let status = http_status_error(
                501,
                "requested endpoint is not available",
                MetadataMap::new(),
            );
            future.path = Path::Answered(Some(Box::new(status.into_http())));
            return future;
        }
        future.path = match rpc {
            Some(rpc) => Path::Unary(unary_call(shared, rpc, parts, body)),
            None => {
                let req = http::Request::from_parts(parts, Body::new(body));
                let req = if future.observed.is_some() {
                    // Counted as it is read, for the record at the end.
                    let counter = Arc::new(RpcBytes::default());
                    future.received = Some(counter.clone());
                    count_request(req, counter)
                } else {
                    req
                };
                // Boxed: axum's future holds the whole request, and a routed call is rare
                // enough that keeping every call's future small matters more.
                Path::Routed(Box::new(self.routes.call(req)))
            }
        };
        future
    }
}

fn unary_call<O, B>(
    shared: &Arc<Shared<O>>,
    rpc: Rpc,
    parts: http::request::Parts,
    body: B,
) -> UnaryFuture
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let api = shared.api.clone();
    let token = shared.token.clone();
    crate::boxed(|| unary::handle(api, token, rpc, parts, body))
}

/// Bytes seen in each direction of one routed call.
#[derive(Default)]
struct RpcBytes {
    received: AtomicU64,
    sent: AtomicU64,
}

fn count_request(req: http::Request<Body>, counter: Arc<RpcBytes>) -> http::Request<Body> {
    let (parts, body) = req.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(d) = frame.data_ref() {
            counter
                .received
                .fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        frame
    });
    http::Request::from_parts(parts, Body::new(body))
}

/// The answer of one call through [`GrpcService`].
pub struct GrpcFuture<O: GrpcObserver> {
    path: Path,
    /// The caller's `grpc-timeout`: past it, the handler is dropped and the call answers
    /// `DEADLINE_EXCEEDED`.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    traced: Option<trace::Call>,
    observed: Option<O::Call>,
    /// Kept only when an observer needs it at the end.
    shared: Option<Arc<Shared<O>>>,
    /// The request bytes of a routed call, counted as they are read.
    received: Option<Arc<RpcBytes>>,
}

impl<O: GrpcObserver> Future for GrpcFuture<O> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin`: both inner futures are boxed ones.
        let this = self.get_mut();
        // The status, when it is known without reading the answer's headers.
        let (mut resp, unary_received, code) = match &mut this.path {
            Path::Answered(answer) => (
                *answer.take().expect("GrpcFuture polled after completion"),
                None,
                None,
            ),
            Path::Unary(fut) => match fut.as_mut().poll(cx) {
                Poll::Ready((Ok(resp), received)) => (resp, Some(received), Some(0)),
                Poll::Ready((Err(status), received)) => {
                    let code = status.code() as u32;
                    (status.into_http(), Some(received), Some(code))
                }
                Poll::Pending => match expired(&mut this.deadline, cx) {
                    Some(resp) => (resp, None, Some(tonic::Code::DeadlineExceeded as u32)),
                    None => return Poll::Pending,
                },
            },
            Path::Routed(fut) => match Pin::new(&mut **fut).poll(cx) {
                Poll::Ready(Ok(resp)) => (resp.map(GrpcBody::boxed), None, None),
                Poll::Pending => match expired(&mut this.deadline, cx) {
                    Some(resp) => (resp, None, Some(tonic::Code::DeadlineExceeded as u32)),
                    None => return Poll::Pending,
                },
            },
        };
        this.deadline = None;
        this.path = Path::Answered(None);
        if let Some(t) = this.traced.take() {
            t.end(&mut resp, code);
        }
        let (Some(shared), Some(call)) = (this.shared.take(), this.observed.take()) else {
            return Poll::Ready(Ok(resp));
        };
        let Some(observer) = &shared.observer else {
            return Poll::Ready(Ok(resp));
        };
        if let Some(received) = unary_received
            && code == Some(0)
        {
            // One message, then `grpc-status: 0`.
            let sent = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
            observer.end(call, 0, received, sent);
            return Poll::Ready(Ok(resp));
        }
        // A trailers-only answer (an error, or anything answered before a handler).
        if let Some(code) = code.or_else(|| grpc_status(resp.headers())) {
            let received = unary_received
                .or_else(|| {
                    this.received
                        .as_ref()
                        .map(|r| r.received.load(Ordering::Relaxed))
                })
                .unwrap_or(0);
            observer.end(call, code, received, 0);
            return Poll::Ready(Ok(resp));
        }
        if !resp.status().is_success() {
            // Not a gRPC answer at all (an HTTP-level error): count it as UNKNOWN.
            let received = this
                .received
                .as_ref()
                .map_or(0, |r| r.received.load(Ordering::Relaxed));
            observer.end(call, 2, received, 0);
            return Poll::Ready(Ok(resp));
        }
        // Recorded when the trailers go out.
        let bytes = this.received.take().unwrap_or_default();
        let mut pending = Some(call);
        let (parts, body) = resp.into_parts();
        let body = body.map_frame(move |frame| {
            if let Some(d) = frame.data_ref() {
                bytes.sent.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                && let Some(call) = pending.take()
                && let Some(observer) = &shared.observer
            {
                observer.end(
                    call,
                    code,
                    bytes.received.load(Ordering::Relaxed),
                    bytes.sent.load(Ordering::Relaxed),
                );
            }
            frame
        });
        Poll::Ready(Ok(Response::from_parts(
            parts,
            GrpcBody::boxed(Body::new(body)),
        )))
    }
}

/// The `DEADLINE_EXCEEDED` answer once `deadline` has passed.
fn expired(
    deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
) -> Option<Response> {
    deadline
        .as_mut()?
        .as_mut()
        .poll(cx)
        .is_ready()
        .then(|| tonic::Status::deadline_exceeded("the call's grpc-timeout expired").into_http())
}

/// What the gRPC API reads from a call's metadata before its handler, found in one pass over
/// it rather than a hashed lookup per name: a call usually carries a handful of fields, and
/// most carry none of the tracing ones.
pub(super) struct Metadata {
    /// The first `content-type` is gRPC's and the first `grpc-encoding`, if any, is
    /// `identity`: a message the lean unary path can read.
    pub(super) plain: bool,
    /// The first `grpc-timeout`, when it is well-formed.
    pub(super) timeout: Option<Duration>,
    /// Any `traceparent`, `grpc-trace-bin`, `tracestate` or `baggage` field.
    pub(super) traced: bool,
}

impl Metadata {
    pub(super) fn read(headers: &HeaderMap) -> Self {
        let mut content_type: Option<&HeaderValue> = None;
        let mut encoding: Option<&HeaderValue> = None;
        let mut timeout: Option<&HeaderValue> = None;
        let mut traced = false;
        for (name, value) in headers {
            if *name == CONTENT_TYPE {
                content_type.get_or_insert(value);
                continue;
            }
            match name.as_str() {
                "grpc-encoding" => {
                    encoding.get_or_insert(value);
                }
                "grpc-timeout" => {
                    timeout.get_or_insert(value);
                }
                "traceparent" | "grpc-trace-bin" | "tracestate" | "baggage" => traced = true,
                _ => {}
            }
        }
        Metadata {
            plain: content_type.is_some_and(unary::grpc_content_type)
                && encoding.is_none_or(|v| v.as_bytes() == b"identity"),
            timeout: timeout.and_then(grpc_timeout),
            traced,
        }
    }
}

/// A `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit, `H` `M` `S` `m` `u`
/// `n`). A malformed value is ignored, as no deadline.
fn grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let (&unit, digits) = v.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(&names::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use http::HeaderName;

    use super::*;

    fn timeout(v: &str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        Metadata::read(&h).timeout
    }

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "S10"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(Metadata::read(&HeaderMap::new()).timeout, None);
    }

    fn read(fields: &[(&'static str, &'static str)]) -> Metadata {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, HeaderValue::from_static(value));
        }
        Metadata::read(&h)
    }

    #[test]
    fn metadata_is_read_in_one_pass_with_the_first_value_of_each_field() {
        let grpc = ("content-type", "application/grpc");
        assert!(read(&[grpc, ("te", "trailers")]).plain);
        assert!(read(&[("content-type", "application/grpc+proto")]).plain);
        assert!(read(&[grpc, ("grpc-encoding", "identity")]).plain);
        // Compressed, not gRPC, or no content type at all: not for the lean path.
        assert!(!read(&[grpc, ("grpc-encoding", "gzip")]).plain);
        assert!(!read(&[("content-type", "application/json")]).plain);
        assert!(!read(&[("te", "trailers")]).plain);
        // The first value decides, as a lookup would.
        assert!(!read(&[("content-type", "text/plain"), grpc]).plain);
        assert!(
            !read(&[
                grpc,
                ("grpc-encoding", "gzip"),
                ("grpc-encoding", "identity")
            ])
            .plain
        );
        let two = read(&[("grpc-timeout", "2S"), ("grpc-timeout", "1S")]);
        assert_eq!(two.timeout, Some(Duration::from_secs(2)));
        assert!(!two.traced);
        for name in ["traceparent", "grpc-trace-bin", "tracestate", "baggage"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            assert!(Metadata::read(&h).traced, "{name}");
        }
        assert!(!read(&[grpc, ("user-agent", "grpc-python/1.0"), ("x-trace", "1")]).traced);
    }
}
