//! Tracing of the gRPC API (on unless `samplingRate` is `"0"`).
//!
//! Every call (the lean unary path, tonic's service, gRPC proxying) gets a span named after
//! its method (`/dapr.proto.runtime.v1.Dapr/GetState`), a child of the caller's
//! `grpc-trace-bin` or `traceparent` metadata; both are rewritten to the span's context, so
//! the handlers propagate it (reads, which hand nothing on, skip the rewrite). Answers other
//! than `InvokeService` carry `grpc-trace-bin`, like daprd's. Invalid `baggage` metadata is
//! refused with `INVALID_ARGUMENT`.
//!
//! [`begin`] runs before the call and [`Call::end`] on the answer, both inside the gRPC API's
//! one outer service ([`super::service`]).

use http::{HeaderMap, Uri};
use tandem_runtime::trace::{Span, SpanKind, SpanName, Tracer, names, valid_baggage};
use tonic::Status;

use super::service::GrpcBody;

/// A traced call waiting for its answer.
pub(super) struct Call {
    span: Span,
    invoke: bool,
    /// The method, kept only when the span is recorded (attributes are worth computing).
    described: Option<String>,
}

/// A call refused for its `baggage` metadata.
pub(super) struct InvalidBaggage;

impl InvalidBaggage {
    /// The answer: `INVALID_ARGUMENT`.
    pub(super) fn answer<B: Default>(self) -> http::Response<B> {
        Status::invalid_argument("invalid baggage header").into_http()
    }
}

/// Starts the span of a call; `Ok(None)` when the call is not traced, `Err` with the answer
/// when its `baggage` is invalid. The call's trace metadata is rewritten to the span's
/// context when the call `propagates` it; a call that does not (a read) leaves it alone.
/// `carried` says whether the metadata holds any trace context or baggage at all: when it
/// does not, the span is a root and nothing is looked up.
pub(super) fn begin(
    tracer: &Tracer,
    uri: &Uri,
    headers: &mut HeaderMap,
    carried: bool,
    propagates: bool,
) -> Result<Option<Call>, InvalidBaggage> {
    if carried
        && headers
            .get_all(&names::BAGGAGE)
            .iter()
            .any(|v| !v.to_str().is_ok_and(valid_baggage))
    {
        return Err(InvalidBaggage);
    }
    let path = uri.path();
    let name = || path.to_owned().into();
    let span = if carried {
        tracer.start_child_of_headers(headers, SpanKind::Client, name)
    } else {
        tracer.start_span(None, None, SpanKind::Client, name)
    };
    if propagates && let Some(span) = &span {
        span.context().inject(headers);
    }
    let Some(span) = span else {
        return Ok(None);
    };
    let described = span.recording().then(|| path.to_owned());
    Ok(Some(Call {
        span,
        invoke: path.ends_with("/InvokeService"),
        described,
    }))
}

impl Call {
    /// Ends the span with the answer and writes `grpc-trace-bin` into it (into a lean
    /// answer's body, which the server writes it from). `code` is the call's status when the
    /// caller knows it; otherwise a trailers-only answer's `grpc-status` is read.
    pub(super) fn end(self, resp: &mut http::Response<GrpcBody>, code: Option<u32>) {
        let Call {
            mut span,
            invoke,
            described,
        } = self;
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
        match code {
            Some(0) => {}
            Some(code) => span.set_error(format!("grpc status {code}")),
            // Errors answered before any message come as trailers-only headers.
            None => {
                if let Some(code) = resp
                    .headers()
                    .get(&super::names::GRPC_STATUS)
                    .filter(|c| c.as_bytes() != b"0")
                {
                    span.set_error(format!(
                        "grpc status {}",
                        String::from_utf8_lossy(code.as_bytes())
                    ));
                }
            }
        }
        if !invoke && !resp.body_mut().carry_trace(*span.context()) {
            resp.headers_mut().insert(
                names::GRPC_TRACE_BIN.clone(),
                span.context().binary_header_value(),
            );
        }
        span.end();
    }
}
