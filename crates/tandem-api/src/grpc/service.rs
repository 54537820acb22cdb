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
use http::{HeaderMap, Uri};
use http_body_util::BodyExt;
use tandem_runtime::trace::Tracer;
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

type UnaryFuture = Pin<Box<dyn Future<Output = (Response, u64)> + Send>>;

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
}

/// Empty (what tonic's trailers-only answers carry).
impl Default for GrpcBody {
    fn default() -> Self {
        Self::unary(UnaryBody {
            data: None,
            trailers: false,
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
    /// Answered before any handler.
    Answered(Option<Response>),
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
        let mut future = GrpcFuture {
            path: Path::Answered(None),
            deadline: grpc_timeout(&parts.headers).map(|t| Box::pin(tokio::time::sleep(t))),
            traced: None,
            // The shared state is kept only when an observer needs it at the end.
            shared: observed.as_ref().map(|_| shared.clone()),
            observed,
            received: None,
        };
        let rpc = unary::served(&parts);
        let propagates = rpc.is_none_or(Rpc::propagates);
        future.traced =
            match trace::begin(&shared.tracer, &parts.uri, &mut parts.headers, propagates) {
                Ok(t) => t,
                Err(refused) => {
                    future.path = Path::Answered(Some(refused.answer()));
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
            future.path = Path::Answered(Some(status.into_http()));
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
        let (mut resp, unary_received) = match &mut this.path {
            Path::Answered(answer) => (
                answer.take().expect("GrpcFuture polled after completion"),
                None,
            ),
            Path::Unary(fut) => match fut.as_mut().poll(cx) {
                Poll::Ready((resp, received)) => (resp, Some(received)),
                Poll::Pending => match expired(&mut this.deadline, cx) {
                    Some(resp) => (resp, None),
                    None => return Poll::Pending,
                },
            },
            Path::Routed(fut) => match Pin::new(&mut **fut).poll(cx) {
                Poll::Ready(Ok(resp)) => (resp.map(GrpcBody::boxed), None),
                Poll::Pending => match expired(&mut this.deadline, cx) {
                    Some(resp) => (resp, None),
                    None => return Poll::Pending,
                },
            },
        };
        this.deadline = None;
        this.path = Path::Answered(None);
        if let Some(t) = this.traced.take() {
            t.end(&mut resp);
        }
        let (Some(shared), Some(call)) = (this.shared.take(), this.observed.take()) else {
            return Poll::Ready(Ok(resp));
        };
        let Some(observer) = &shared.observer else {
            return Poll::Ready(Ok(resp));
        };
        // A trailers-only answer (an error, or anything answered before a handler).
        if let Some(code) = grpc_status(resp.headers()) {
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
        if let Some(received) = unary_received {
            // One message, then `grpc-status: 0`.
            let sent = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
            observer.end(call, 0, received, sent);
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

/// The call's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit, `H` `M` `S`
/// `m` `u` `n`). A malformed value is ignored, as no deadline.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&names::GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = v.split_last()?;
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
    use super::*;

    fn timeout(v: &str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        grpc_timeout(&h)
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
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
