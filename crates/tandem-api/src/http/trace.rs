//! Tracing of the HTTP API (on unless `samplingRate` is `"0"`).
//!
//! Like daprd's: every request but the health endpoints gets a span, a child of the caller's
//! `traceparent` when it sent a valid one; the request's `traceparent` is replaced by the
//! span's so that invocation, publish and bindings propagate it; the answer carries a
//! `traceparent` when the handler did not set one. An invalid `baggage` header is refused
//! with 400; a valid one is echoed back.
//!
//! [`begin`] runs before the router and [`Call::end`] on the answer, both inside the API's
//! one outer service ([`super::service`]).

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use tandem_runtime::trace::{Span, SpanKind, SpanName, Tracer, names, valid_baggage};

/// A traced request waiting for its answer.
pub(super) struct Call {
    span: Span,
    baggage: Option<HeaderValue>,
    /// Method and URI, kept only when the span is recorded (attributes are worth computing).
    described: Option<(Method, Uri)>,
}

/// A request refused for its `baggage` header.
pub(super) struct InvalidBaggage;

impl InvalidBaggage {
    /// The answer: 400 with a plain-text reason.
    pub(super) fn answer(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            "invalid baggage header\n",
        )
            .into_response()
    }
}

/// Starts the span of a request (rewriting its `traceparent`); `Ok(None)` when the request
/// is not traced, `Err` with the answer when its `baggage` is invalid.
pub(super) fn begin(
    tracer: &Tracer,
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
) -> Result<Option<Call>, InvalidBaggage> {
    let path = uri.path();
    if path.contains("/healthz") {
        return Ok(None);
    }
    let Ok(baggage) = baggage(headers) else {
        return Err(InvalidBaggage);
    };
    let Some(span) =
        tracer.start_from_headers(headers, SpanKind::Client, || path.to_owned().into())
    else {
        return Ok(None);
    };
    let described = span.recording().then(|| (method.clone(), uri.clone()));
    Ok(Some(Call {
        span,
        baggage,
        described,
    }))
}

impl Call {
    /// Ends the span with the answer and writes `traceparent` (and `baggage`) into it.
    pub(super) fn end(self, resp: &mut Response) {
        let Call {
            mut span,
            baggage,
            described,
        } = self;
        let status = resp.status().as_u16();
        if let Some((method, uri)) = described {
            if let Some(SpanName(name)) = resp.extensions_mut().remove::<SpanName>() {
                span.set_name(name);
            }
            span.set_attribute("dapr.protocol", "http");
            span.set_attribute("dapr.api", format!("{method} {}", uri.path()));
            span.set_attribute("dapr.status_code", status.to_string());
            span.set_attribute("http.request.method", method.as_str());
            span.set_attribute("url.full", uri.to_string());
        }
        if status >= 400 {
            let text = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown");
            span.set_error(format!("Code({status}): {text}"));
        }
        let headers = resp.headers_mut();
        // The span's own `traceparent`, the one written into the request (written again:
        // a copy of the request's would cost more than the few bytes of hex).
        if !headers.contains_key(&names::TRACEPARENT) {
            headers.insert(names::TRACEPARENT.clone(), span.context().header_value());
        }
        if let Some(b) = baggage {
            headers.insert(names::BAGGAGE.clone(), b);
        }
        span.end();
    }
}

/// The request's `baggage` (several headers joined), `Err` when invalid.
fn baggage(headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let mut values = headers.get_all(&names::BAGGAGE).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let joined = match values.next() {
        None => first.clone(),
        Some(second) => {
            let mut all = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                all.push(b',');
                all.extend_from_slice(v.as_bytes());
            }
            HeaderValue::from_bytes(&all).map_err(|_| ())?
        }
    };
    let text = joined.to_str().map_err(|_| ())?;
    if valid_baggage(text) {
        Ok(Some(joined))
    } else {
        Err(())
    }
}
