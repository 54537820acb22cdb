//! The tracing layer of the gRPC API (installed unless `samplingRate` is `"0"`).
//!
//! Every call (the lean unary path, tonic's service, gRPC proxying) gets a span named after
//! its method (`/dapr.proto.runtime.v1.Dapr/GetState`), a child of the caller's
//! `grpc-trace-bin` or `traceparent` metadata; both are rewritten to the span's context, so
//! the handlers propagate it. Answers other than `InvokeService` carry `grpc-trace-bin`, like
//! daprd's. Invalid `baggage` metadata is refused with `INVALID_ARGUMENT`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tandem_runtime::trace::{BAGGAGE, GRPC_TRACE_BIN, SpanKind, SpanName, Tracer, valid_baggage};
use tonic::Status;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Traces every call of `inner`.
#[derive(Clone)]
pub(super) struct TraceGrpc<S> {
    pub(super) tracer: Tracer,
    pub(super) inner: S,
}

impl<S> tower::Service<Request> for TraceGrpc<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> BoxFuture {
        let bad_baggage = req
            .headers()
            .get_all(BAGGAGE)
            .iter()
            .any(|v| !v.to_str().is_ok_and(valid_baggage));
        if bad_baggage {
            let status = Status::invalid_argument("invalid baggage header");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path();
        let invoke = path.ends_with("/InvokeService");
        let span = self
            .tracer
            .start_from_headers(&mut parts.headers, SpanKind::Client, || {
                path.to_owned().into()
            });
        let described = span
            .as_ref()
            .filter(|s| s.recording())
            .map(|_| parts.uri.path().to_owned());
        let fut = self.inner.call(Request::from_parts(parts, body));
        let Some(mut span) = span else {
            return Box::pin(fut);
        };
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(method) = described {
                if let Some(SpanName(name)) = resp.extensions_mut().remove::<SpanName>() {
                    span.set_name(name);
                }
                span.set_attribute("dapr.protocol", "grpc");
                span.set_attribute("rpc.system", "grpc");
                if let Some((service, _)) = method.trim_start_matches('/').split_once('/') {
                    span.set_attribute("rpc.service", service.to_owned());
                }
                span.set_attribute("dapr.api", method);
            }
            // Errors answered before any message come as trailers-only headers.
            if let Some(code) = resp
                .headers()
                .get("grpc-status")
                .filter(|c| c.as_bytes() != b"0")
            {
                span.set_error(format!(
                    "grpc status {}",
                    String::from_utf8_lossy(code.as_bytes())
                ));
            }
            if !invoke {
                resp.headers_mut()
                    .insert(GRPC_TRACE_BIN, span.context().binary_header_value());
            }
            span.end();
            Ok(resp)
        })
    }
}
